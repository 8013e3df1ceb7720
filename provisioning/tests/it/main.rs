//! Integration tests for `edge-provision`, in one test binary:
//!
//! - [`handshake`]: real rustls handshakes over real QUIC (quinn) on loopback between a hub
//!   endpoint built with `tls::hub_server_config` and units built with `tls::unit_client_config`;
//!   and in-memory rustls handshakes showing that the hub's certificate and units' LAN
//!   certificates cannot stand in for each other (`tls::lan_client_config`).
//! - [`cli`]: the `edge-provision` binary: the workshop flow, refusals, bad input.
//! - [`tokens`]: shift tokens minted by the fleet and verified as a unit would; operator tokens
//!   verified as the hub would; the signed token deny list (`token-revoke`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod common;
mod handshake;
mod tokens;
