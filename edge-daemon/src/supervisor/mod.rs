//! The daemon's side of the supervisor board: heartbeats, LEDs, and obeying the supervisor's
//! power-fail, shutdown and tamper demands (`docs/supervisor.md`, "The daemon side").
//!
//! The daemon implements [`SupervisorActions`] (flush, stop writes, crypto-shred, health, LED
//! state) and runs [`run_supervisor`] (or [`Supervisor::run`]) as a task on its own runtime.
//!
//! * [`policy`] — what to do and when, pure: [`policy::Policy::step`] takes the monotonic time
//!   in milliseconds and an event (a frame received, the link lost, a flush done, a timer) and
//!   returns actions (send a hello, heartbeat or acknowledgement, start a flush, destroy the
//!   data key, stop the daemon, log, report). No clock reads, no I/O: tested in virtual time.
//! * `driver` — the async task that owns the serial link (or the in-process simulated board),
//!   feeds the policy and carries out its actions, with time from an
//!   [`edge_runtime::clock::Clock`] ([`Supervisor`], [`run_supervisor`], [`SupervisorActions`]).
//! * [`status`] — what is reported in `/v1/status` ([`SupervisorStatus`] in a
//!   [`SupervisorStatusCell`]).
//!
//! The supervisor being unreachable is never fatal: the link is reopened with back-off forever
//! and the reason is shown in [`SupervisorStatus::fault`] (`/v1/status`).

mod driver;
pub mod policy;
pub mod status;

pub use driver::{
    run_supervisor, LinkSource, SimOptions, Supervisor, SupervisorActions, SupervisorError,
};
pub use firmware::proto::{Health, HostFaults, LinkState, ShutdownReason};
pub use hw::sim::script::Command as SimCommand;
pub use policy::{
    power_fail_ack_window, shutdown_plan, Backoff, ShutdownPlan, SupervisorExit, SupervisorOptions,
};
pub use status::{McuInfo, McuStatusView, SupervisorStatus, SupervisorStatusCell};
