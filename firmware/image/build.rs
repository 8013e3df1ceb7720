//! Puts the board's `memory.x` where cortex-m-rt's `link.x` finds it. Both boards' regions are the
//! image's budget (64 KiB flash, 16 KiB RAM), not the chip's size: an image over budget does not
//! link.
use std::path::PathBuf;

fn main() {
    let qemu = std::env::var_os("CARGO_FEATURE_QEMU").is_some();
    let g474 = std::env::var_os("CARGO_FEATURE_G474").is_some();
    let memory = match (qemu, g474) {
        (true, false) => "memory-qemu.x",
        (false, true) => "memory-g474.x",
        _ => {
            println!("cargo::error=choose exactly one board: --features qemu or --features g474");
            return;
        }
    };
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        println!("cargo::error=OUT_DIR not set");
        return;
    };
    if let Err(e) = std::fs::copy(memory, out.join("memory.x")) {
        println!("cargo::error=cannot copy {memory}: {e}");
        return;
    }
    println!("cargo::rustc-link-search={}", out.display());
    println!("cargo::rerun-if-changed=memory-qemu.x");
    println!("cargo::rerun-if-changed=memory-g474.x");
    println!("cargo::rerun-if-changed=build.rs");
}
