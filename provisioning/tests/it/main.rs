//! Integration tests for `edge-provision`, in one test binary:
//!
//! - [`handshake`]: real rustls handshakes over real QUIC (quinn) on loopback between a hub
//!   endpoint built with `tls::hub_server_config` and units built with `tls::unit_client_config`.
//! - [`cli`]: the `edge-provision` binary: the workshop flow, refusals, bad input.
//! - [`tokens`]: shift tokens minted by the fleet and verified as a unit would.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod common;
mod handshake;
mod tokens;
