//! Kerbside whole-system test support: helpers that start the real binaries on loopback.
