//! Kerbside supervisor MCU logic and the host<->MCU link protocol.
//!
//! `no_std`, allocation-free (`heapless` buffers), no `unsafe`, no I/O and no clock reads: every
//! function takes the time as an argument. The thin MCU binary (executor, interrupts, HAL pin
//! types) lives outside the host build and only shuttles values between the pins, [`board`],
//! [`supervisor`] and [`link`].
//!
//! - [`supervisor`]: the state machine, `Supervisor::step(now_ms, &Inputs) -> Outputs`.
//! - [`config`]: validated timings and thresholds.
//! - [`watchdog`]: the hourly power-cycle limit.
//! - [`tamper`]: the persisted tamper latch and the backup-domain trait.
//! - [`leds`]: LED patterns derived from state.
//! - [`board`]: `embedded-hal` 1.0 pin and ADC adapters.
//! - [`proto`]: messages, framing (COBS + CRC-16) and the streaming decoder.
//! - [`link`]: sequence numbers, acknowledgements and retransmission, shared with the host driver.
//!
//! See `docs/supervisor.md` for the behaviour table and the wire format.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod board;
pub mod config;
pub mod leds;
pub mod link;
pub mod proto;
pub mod supervisor;
pub mod tamper;
pub mod watchdog;

pub use config::{Config, ConfigError, Settings};
pub use proto::frame::{Frame, FrameDecoder};
pub use proto::{DecodeError, HostToMcu, McuToHost};
pub use supervisor::{Inputs, Outputs, State, Supervisor};

/// This firmware's version, reported in the MCU hello.
pub const FW_VERSION: proto::FwVersion = proto::FwVersion {
    major: 0,
    minor: 1,
    patch: 0,
};
