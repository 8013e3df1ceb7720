//! The unit daemon's allocator settings (mimalloc is its global allocator, `src/main.rs`).

/// mimalloc's `mi_option_purge_delay`. `libmimalloc-sys` names the options around it but not
/// this one; in the mimalloc it builds (v2 and v3 headers alike) it is the option just before
/// `mi_option_use_numa_nodes`. `tests/allocator.rs` checks that it reads back mimalloc's
/// default (1,000 ms in the v3 that `libmimalloc-sys` builds) before it is set, so a
/// renumbering fails the tests, not the unit.
pub const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t =
    libmimalloc_sys::mi_option_use_numa_nodes - 1;

/// Freed pages go back to the OS at once rather than after mimalloc's default second. During a
/// cold fill the allocator otherwise kept ≈ 50 MiB of freed pages resident at 909,090 records
/// — half the unit's peak, and growing with the fill's length — for ≈ 5 % of the fill's CPU
/// (BENCHMARKS.md, issue 17, eighth step).
pub const PURGE_DELAY_MS: std::ffi::c_long = 0;

/// Apply the settings; called first thing in `main`. `MIMALLOC_PURGE_DELAY` in the
/// environment, if set, wins (mimalloc reads it itself).
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: `mi_option_set` accepts any option number and value (it ignores an option it
    // does not know). It is not documented as thread-safe: `tune` is called first thing in
    // `main`, before any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
}

/// The current value of a mimalloc option (for the tests and the log).
pub fn option(option: libmimalloc_sys::mi_option_t) -> std::ffi::c_long {
    // SAFETY: `mi_option_get` accepts any option number (0 for one it does not know).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_get(option)
    }
}
