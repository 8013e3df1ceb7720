//! `edge-hub`: the upstream hub of the Kerbside edge cache.
//!
//! The hub ingests FHIR R4 feeds from London's regional exchanges, assembles each patient's
//! critical summary, keeps the change feed, serves units over QUIC with mutual TLS (the sync
//! server), keeps what it knows of each unit, and answers the admin API. It is a thin driver
//! around the sans-IO state machines in `edge-proto`; only this crate and `edge-daemon` know
//! tokio, quinn and sled.
//!
//! * [`store`] — sled storage: summaries, change feed, devices; implements `HubFeed`.
//! * [`server`] — the QUIC sync server: one `HubSession` per unit connection, live push.
//! * [`admin`] — the admin HTTP API.
//! * [`operator`] — operator tokens, roles, Host/Origin and body-type checks of the admin API.
//! * [`oplog`] — the operator log: every admin call with the operator's identity.
//! * [`audit`] — the audit repository: uploads from units, chain checks, queries, export.
//! * [`perms`] — the hub's data folder kept private (0700 folders, 0600 files).
//! * [`denylist`] — the fleet's token deny list, one copy for the fetch gate, the admin API and units.
//! * [`inventory`] — the fleet inventory, cached and re-read only when the file changes.
//! * [`metrics`] — `/metrics` on the admin listener (Prometheus / OpenMetrics text).
//!
//! Synthetic data (`edge-hub synth`) is the `kerbside-synth` crate.

pub mod admin;
pub mod audit;
pub mod console;
pub mod denylist;
pub mod fleet_docs;
pub mod history;
pub mod ingest_log;
pub mod inventory;
pub mod metrics;
pub mod operator;
pub mod oplog;
pub mod perms;
pub mod pg;
pub mod prefetch;
pub mod renewal;
pub mod review;
pub mod server;
pub mod store;
