//! The firmware's one integration-test binary: scenarios for every row of the behaviour table,
//! golden wire bytes, decoder robustness, link reliability, board adapters and property tests.

mod board;
mod config;
mod decoder;
mod golden;
mod harness;
mod link;
mod props;
mod scenarios;
