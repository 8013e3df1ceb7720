//! The firmware's one integration-test binary: scenarios for every row of the behaviour table,
//! golden wire bytes, decoder robustness, link reliability, board adapters and property tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness helpers outside #[test] fns

mod board;
mod config;
mod decoder;
mod golden;
mod harness;
mod link;
mod props;
mod scenarios;
