//! What the supervisor task reports: the supervisor's identity and own status, and the
//! daemon's view of the link ([`SupervisorStatus`], the `"supervisor"` part of `/v1/status`),
//! shared with the LAN API through a [`SupervisorStatusCell`].
//!
//! The pure policy ([`super::policy::Policy`]) keeps the [`SupervisorStatus`] up to date; the
//! driver publishes it into the cell whenever the policy reports a change.

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// The supervisor's identity, from its `Hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct McuInfo {
    /// Link protocol version.
    pub protocol_version: u8,
    /// Board revision code (`hw::pins`).
    pub board_rev: u8,
    /// Firmware version, `major.minor.patch`.
    pub firmware: String,
}

/// The supervisor's own status (its answer to `GetStatus`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct McuStatusView {
    /// Coarse state (`Running`, `OffDelay`, `ShutdownPending`, ...).
    pub state: String,
    /// Debounced ignition.
    pub ignition_on: bool,
    /// Supply voltage in millivolts.
    pub supply_mv: u16,
    /// Fault bits (0x01 watchdog, 0x02 low battery, 0x04 tamper, 0x08 certificate expired,
    /// 0x10 watchdog limit).
    pub faults: u8,
    /// Watchdog power cycles in the last hour.
    pub power_cycles_last_hour: u8,
    /// Why the supervisor last cut host power, if it has since it started.
    pub last_shutdown: Option<String>,
}

/// What the daemon knows about the supervisor, for `/v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SupervisorStatus {
    /// `none`, `serial` or `sim`.
    pub mode: String,
    /// The serial device, if any.
    pub device: Option<String>,
    /// The device is open.
    pub link_up: bool,
    /// The supervisor answered our hello on the open link.
    pub connected: bool,
    /// Why the link is down or what last went wrong (`None` while connected and healthy).
    pub fault: Option<String>,
    /// Times the link was opened.
    pub link_opens: u64,
    /// Failed opens and lost links.
    pub link_failures: u64,
    /// The supervisor's hello.
    pub mcu: Option<McuInfo>,
    /// The supervisor's last status report.
    pub mcu_status: Option<McuStatusView>,
    /// The last message from the supervisor.
    pub last_event: Option<String>,
    /// When it arrived (RFC 3339).
    pub last_event_at: Option<String>,
    /// Ignition, as last reported.
    pub ignition_on: Option<bool>,
    /// A power failure is being handled: writes are stopped.
    pub power_fail: bool,
    /// Power failures announced.
    pub power_fails: u64,
    /// Power restorations announced.
    pub power_restores: u64,
    /// Milliseconds from the last `PowerFail` to our acknowledgement.
    pub last_power_fail_ack_ms: Option<u64>,
    /// Why a shutdown was requested, once it has been.
    pub shutdown_requested: Option<String>,
    /// The `flushed` flag of the shutdown acknowledgement, once sent.
    pub shutdown_acked: Option<bool>,
    /// The last low-battery reading the supervisor reported.
    pub low_battery_mv: Option<u16>,
    /// The enclosure was opened (the supervisor said `Tamper`).
    pub tamper_seen: bool,
    /// The data key was destroyed and the supervisor told `Zeroized`.
    pub zeroized: bool,
    /// Failed crypto-shred attempts.
    pub shred_failures: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Frames from the supervisor that failed to decode.
    pub bad_frames: u64,
    /// Messages the supervisor never acknowledged.
    pub undelivered: u64,
}

/// Shared, cheap-to-clone view of [`SupervisorStatus`].
#[derive(Clone, Debug, Default)]
pub struct SupervisorStatusCell(Arc<Mutex<SupervisorStatus>>);

impl SupervisorStatusCell {
    /// A snapshot.
    pub fn get(&self) -> SupervisorStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut SupervisorStatus) -> R) -> R {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// Replace the whole status (the driver publishing the policy's view).
    pub(crate) fn set(&self, status: &SupervisorStatus) {
        self.update(|s| s.clone_from(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_serialises_for_v1_status() {
        let s = SupervisorStatus {
            mode: "serial".into(),
            connected: true,
            tamper_seen: true,
            ..SupervisorStatus::default()
        };
        let v = serde_json::to_value(&s).ok();
        let v = v.as_ref();
        assert_eq!(v.and_then(|v| v["mode"].as_str()), Some("serial"));
        assert_eq!(v.and_then(|v| v["connected"].as_bool()), Some(true));
        assert_eq!(v.and_then(|v| v["tamper_seen"].as_bool()), Some(true));
        assert!(v.is_some_and(|v| v["fault"].is_null()));
    }

    #[test]
    fn the_cell_shares_one_status() {
        let a = SupervisorStatusCell::default();
        let b = a.clone();
        b.set(&SupervisorStatus {
            heartbeats_sent: 3,
            ..SupervisorStatus::default()
        });
        assert_eq!(a.get().heartbeats_sent, 3);
        a.update(|s| s.bad_frames += 1);
        assert_eq!(b.get().bad_frames, 1);
    }
}
