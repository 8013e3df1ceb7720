//! The Kerbside supervisor board, from the Linux host's side.
//!
//! - [`pins`]: the pin map and electrical constants, one source of truth per board revision
//!   (the board is described in `hw/README.md`).
//! - [`link`]: [`SerialLink`](link::SerialLink), the driver the daemon uses to talk to the
//!   supervisor over a serial device, a pty or any byte stream.
//! - [`sim`]: [`SimBoard`](sim::SimBoard), the real firmware logic on a virtual clock with
//!   scripted vehicle scenarios, plus a wall-clock [`runner`](sim::runner) over a pty or an
//!   in-process channel; the `hw-sim` binary wraps it for whole-system tests.
//! - [`serial`] and [`channel`]: byte plumbing (raw ttys, ptys, in-process duplex channels).
#![forbid(unsafe_code)]

pub mod channel;
pub mod link;
pub mod pins;
pub mod serial;
pub mod sim;

pub use link::{Event, LinkError, LinkOptions, SerialLink};
pub use sim::SimBoard;
