//! `edge-hub` tests, one binary: the store (ingest, summaries, change feed, cohorts, devices,
//! withdrawals and merged numbers), the audit repository, the fleet inventory cache, the admin
//! API driven in-process through its axum router, `/metrics`, and the sync server over QUIC on
//! loopback.
//!
//! The helpers in [`common`] build a hub on a temporary directory and send one request to the
//! admin router, answering (status, JSON).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod admin_auth;
mod audit;
mod common;
mod inventory;
mod metrics;
mod store;
mod sync;
