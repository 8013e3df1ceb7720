//! Benchmarks for edge-proto (filled in by the foundation issue).
fn main() {}
