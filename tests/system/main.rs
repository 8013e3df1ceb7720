//! Whole-system tests: one integration-test binary with a module per area.
