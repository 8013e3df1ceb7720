//! What the unit knows about itself, shared between the sync task and the LAN API
//! (`GET /v1/status`).

use std::sync::Mutex;

use edge_proto::ids::{DeviceId, UnitRole};
use edge_proto::time::UnixMillis;
use serde::Serialize;

/// The link to the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    Up,
    Down,
}

/// Live facts the sync task updates.
#[derive(Debug, Clone)]
pub struct Live {
    pub link: Link,
    /// A baseline is under way: the cache is partial until it finishes.
    pub rebaselining: bool,
    /// Everything the hub had has been applied.
    pub caught_up: bool,
    pub cursor: u64,
    pub last_sync_at: Option<UnixMillis>,
    pub cache_as_of: Option<UnixMillis>,
    pub hub_offset_ms: i64,
    pub last_error: Option<String>,
    pub connects: u64,
    /// Connections the stall watchdog closed (work outstanding, the hub silent).
    pub link_stalls: u64,
    pub batches_applied: u64,
    pub records_received: u64,
    pub audit_pending: u64,
    pub audit_uploaded_seq: u64,
    /// UDP bytes received from the hub over all connections (QUIC overhead included).
    pub link_bytes_received: u64,
    /// Problems the audit journal found when it was opened (reported, never dropped).
    pub audit_problems: Vec<String>,
    /// When the certificate the unit presents to the hub expires.
    pub cert_not_after: Option<UnixMillis>,
    /// When the hub last renewed it over the sync.
    pub cert_renewed_at: Option<UnixMillis>,
    /// Why the last renewal failed (refused by the hub, or a bad answer), until one succeeds.
    pub cert_renewal_error: Option<String>,
    /// Records the hub pushed to this ED kiosk because a crew is bringing the patient in.
    pub prefetched: u64,
    /// The last batch could not be written because the unit's disk is full; the sync waits for
    /// room and resumes by itself.
    pub disk_full: bool,
    /// The hub the link is with (its name and address), or the one being tried while down.
    pub hub: Option<String>,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            link: Link::Down,
            rebaselining: false,
            caught_up: false,
            cursor: 0,
            last_sync_at: None,
            cache_as_of: None,
            hub_offset_ms: 0,
            last_error: None,
            connects: 0,
            link_stalls: 0,
            batches_applied: 0,
            records_received: 0,
            audit_pending: 0,
            audit_uploaded_seq: 0,
            link_bytes_received: 0,
            audit_problems: Vec::new(),
            cert_not_after: None,
            cert_renewed_at: None,
            cert_renewal_error: None,
            prefetched: 0,
            disk_full: false,
            hub: None,
        }
    }
}

/// The unit's status.
#[derive(Debug)]
pub struct Status {
    pub device_id: DeviceId,
    pub role: UnitRole,
    live: Mutex<Live>,
}

/// The `/v1/status` body.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    pub device_id: String,
    pub role: String,
    pub link: Link,
    /// The hub the link is with, or the one being tried while the link is down (`NAME
    /// (HOST:PORT)`); a unit with several hubs moves between them.
    pub hub: Option<String>,
    pub last_sync_at: Option<String>,
    pub cursor: u64,
    pub records: usize,
    pub audit_pending: u64,
    pub audit_uploaded_seq: u64,
    pub cache_as_of: Option<String>,
    pub caught_up: bool,
    pub rebaselining: bool,
    pub hub_offset_ms: i64,
    pub last_error: Option<String>,
    pub connects: u64,
    pub link_stalls: u64,
    pub records_received: u64,
    pub link_bytes_received: u64,
    pub audit_problems: Vec<String>,
    pub cert_expires_at: Option<String>,
    pub cert_renewed_at: Option<String>,
    pub cert_renewal_error: Option<String>,
    pub prefetched: u64,
    /// The unit's disk: whether the sync has stopped on a full disk, and the bytes free.
    pub storage: StorageView,
}

/// `/v1/status`'s `storage`.
#[derive(Debug, Clone, Serialize)]
pub struct StorageView {
    /// The sync stopped because the disk is full; lookups keep answering from the cache.
    pub disk_full: bool,
    /// Bytes free on the filesystem holding the unit's data (`null` if it cannot be read).
    pub free_bytes: Option<u64>,
}

impl Status {
    pub fn new(device_id: DeviceId, role: UnitRole) -> Self {
        Status {
            device_id,
            role,
            live: Mutex::new(Live::default()),
        }
    }

    /// Change the live facts.
    pub fn update<R>(&self, f: impl FnOnce(&mut Live) -> R) -> R {
        let mut l = self.live.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut l)
    }

    pub fn live(&self) -> Live {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn link(&self) -> Link {
        self.live().link
    }

    /// The JSON view, with the number of cached records and the bytes free on the data disk.
    pub fn view(&self, records: usize, free_bytes: Option<u64>) -> StatusView {
        let l = self.live();
        StatusView {
            device_id: self.device_id.as_str().to_owned(),
            role: self.role.to_string(),
            link: l.link,
            hub: l.hub,
            last_sync_at: l.last_sync_at.map(UnixMillis::to_rfc3339),
            cursor: l.cursor,
            records,
            audit_pending: l.audit_pending,
            audit_uploaded_seq: l.audit_uploaded_seq,
            cache_as_of: l.cache_as_of.map(UnixMillis::to_rfc3339),
            caught_up: l.caught_up,
            rebaselining: l.rebaselining,
            hub_offset_ms: l.hub_offset_ms,
            last_error: l.last_error,
            connects: l.connects,
            link_stalls: l.link_stalls,
            records_received: l.records_received,
            link_bytes_received: l.link_bytes_received,
            audit_problems: l.audit_problems,
            cert_expires_at: l.cert_not_after.map(UnixMillis::to_rfc3339),
            cert_renewed_at: l.cert_renewed_at.map(UnixMillis::to_rfc3339),
            cert_renewal_error: l.cert_renewal_error,
            prefetched: l.prefetched,
            storage: StorageView {
                disk_full: l.disk_full,
                free_bytes,
            },
        }
    }
}
