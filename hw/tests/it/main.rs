//! The hw crate's one integration-test binary: pin map and hold-up sizing, the simulated board
//! through the real framing, the serial driver over in-process channels and a pty, and the
//! `hw-sim` binary end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness helpers outside #[test] fns

mod daemon;
mod hw_sim;
mod link;
mod pins;
mod sim;
