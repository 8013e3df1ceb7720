//! Whole-system tests: one integration-test binary with a module per area. Each test starts the
//! real release binaries (built once by `kerbside_tests::bin`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin_auth;
mod audit;
mod corpus;
mod disk_full;
mod foundation;
mod hub_pg;
mod lan;
mod lan_limits;
mod prefetch;
mod renewal;
mod revocation;
mod security;
mod supervisor;
mod sync;
mod sync_bad;
mod torture;
