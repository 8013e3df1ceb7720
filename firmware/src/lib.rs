//! Supervisor MCU logic and the host<->MCU link protocol (filled by the supervisor issue).
#![no_std]
#![forbid(unsafe_code)]
