//! The boards behind [`crate::app::Platform`]: exactly one is compiled in.
//!
//! - `qemu` ([`qemu`]): QEMU's mps2-an386, with the harness UART; the CI runs it.
//! - `g474` (`g474`): the real board, revision B's STM32G474 with the pin map of `hw::pins`;
//!   the CI builds it.

#[cfg(feature = "g474")]
pub mod g474;
#[cfg(feature = "qemu")]
pub mod qemu;

#[cfg(feature = "g474")]
pub use g474::{main, on_panic};
#[cfg(feature = "qemu")]
pub use qemu::{main, on_panic};

#[cfg(all(feature = "qemu", feature = "g474"))]
compile_error!("choose one board: --features qemu or --features g474");
