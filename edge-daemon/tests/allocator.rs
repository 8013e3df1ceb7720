//! The purge-delay option the daemon sets is the one mimalloc reads as its purge delay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use edge_daemon::allocator::{option, tune, MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS};

#[test]
fn the_purge_delay_option_is_mimallocs_and_takes_the_daemons_value() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        eprintln!("MIMALLOC_PURGE_DELAY is set: the default cannot be checked");
        return;
    }
    // mimalloc v3's defaults (src/options.c): purge delay 1,000 ms; its neighbour reads as its.
    assert_eq!(option(MI_OPTION_PURGE_DELAY), 1_000, "not the purge delay");
    assert_eq!(option(libmimalloc_sys::mi_option_use_numa_nodes), 0);
    tune();
    assert_eq!(option(MI_OPTION_PURGE_DELAY), PURGE_DELAY_MS);
}
