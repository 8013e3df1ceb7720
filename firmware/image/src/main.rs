//! The Kerbside supervisor MCU image: cortex-m-rt start-up, the panic handler, and one board
//! layer (`--features qemu` or `--features g474`) under the `firmware` crate's logic.
//!
//! The logic (`Supervisor::step`, the link `Endpoint`, `firmware::board::Board`) is the host-tested
//! `firmware` crate, unchanged; this binary only gives it pins, link bytes, a clock, a watchdog
//! and a backup domain ([`app::Platform`]). See `docs/supervisor.md` (the image, the boards,
//! flashing).
#![no_std]
#![no_main]

mod app;
mod board;
#[cfg(feature = "qemu")]
mod harness;

use cortex_m_rt::entry;

#[entry]
fn main() -> ! {
    board::main()
}

/// A panic resets the MCU into the safe state: the host's power stays as it was (on stays on, held
/// through start-up), the key share is not touched, nothing is shredded.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    board::on_panic(info)
}
