//! `edge-hub` tests, one binary: the store (ingest, summaries, change feed, cohorts, devices,
//! withdrawals and merged numbers), the audit repository, the fleet inventory cache, the admin
//! API driven in-process through its axum router, `/metrics`, and the sync server over QUIC on
//! loopback.
//!
//! The helpers in [`common`] build a hub on a temporary directory and send one request to the
//! admin router, answering (status, JSON).

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// A conformance suite: each named test function, taking `&mut Backend`, runs against both
/// backends of the module that invokes this (`embedded::` and `postgres::` tests of the same
/// name; `Backend::postgres()` is `None`, after a note, where PostgreSQL cannot be reached
/// outside CI).
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[test]
                fn $name() {
                    super::$name(&mut super::Backend::embedded());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    if let Some(mut b) = super::Backend::postgres() {
                        super::$name(&mut b);
                    }
                }
            )*
        }
    };
}

mod admin;
mod admin_auth;
mod audit;
mod common;
mod inventory;
mod metrics;
mod store;
mod sync;
