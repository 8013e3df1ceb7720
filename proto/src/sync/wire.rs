//! The sync protocol's wire messages (CBOR, one per frame, see [`super::frame`]).
//!
//! Unit → hub: [`ToHub`]; hub → unit: [`ToUnit`]. Every message belongs to one QUIC stream
//! ([`StreamKind`]): the pull stream carries the hello, the welcome, batches, acknowledgements
//! and `Live`; on-demand fetches travel on their own stream so a bulk catch-up never delays one.
//!
//! Forward compatibility: enums that may grow decode unknown values into a catch-all, and the
//! protocol version in [`Hello`] / [`Welcome`] (also the ALPN) is checked by both ends.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::{CohortSpec, DeviceId};
use crate::nhs::NhsNumber;
use crate::time::UnixMillis;

/// An immutable byte string (a CBOR summary, a signature), cheap to clone so the hub can hand
/// one record to many sessions. Encoded as a CBOR byte string. Its `Debug` shows only the
/// length: record bytes are clinical content and never reach a log.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Bytes(Arc<[u8]>);

impl Bytes {
    pub fn new(v: impl Into<Arc<[u8]>>) -> Self {
        Bytes(v.into())
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v.into())
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.into())
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes(len={})", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
            // Some encoders write bytes as an array of integers; accept it, bounded by the frame.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
                let mut v = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(Bytes::from(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Why a record left a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u8", into = "u8")]
pub enum WithdrawReason {
    /// The patient objected to sharing: sent to every unit.
    Objection,
    /// The record no longer belongs to this unit's cohort (moved, no longer flagged).
    CohortExit,
    /// The hub deleted the record (e.g. entered in error): sent to every unit.
    Deleted,
    /// The record was retired and merged into another patient's (a superseded NHS number): its
    /// number now redirects to the replacement, which carries it in `former_nhs_numbers`.
    Merged,
    /// A reason a newer hub knows; still a withdrawal. The code is kept so signatures verify.
    Other(u8),
}

impl From<u8> for WithdrawReason {
    fn from(v: u8) -> Self {
        match v {
            1 => WithdrawReason::Objection,
            2 => WithdrawReason::CohortExit,
            3 => WithdrawReason::Deleted,
            4 => WithdrawReason::Merged,
            n => WithdrawReason::Other(n),
        }
    }
}

impl From<WithdrawReason> for u8 {
    fn from(r: WithdrawReason) -> u8 {
        match r {
            WithdrawReason::Objection => 1,
            WithdrawReason::CohortExit => 2,
            WithdrawReason::Deleted => 3,
            WithdrawReason::Merged => 4,
            WithdrawReason::Other(n) => n,
        }
    }
}

/// One change in a batch.
///
/// `seq` is the feed sequence number of the version concerned (in a baseline, the sequence
/// number of the record's current version); `version` is the summary's hub version. For one
/// patient, versions rise with every entry of the feed, withdrawals included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Store this version (CBOR summary bytes).
    Upsert {
        seq: u64,
        nhs: NhsNumber,
        version: u64,
        record: Bytes,
    },
    /// Remove the patient's record.
    Withdraw {
        seq: u64,
        nhs: NhsNumber,
        version: u64,
        reason: WithdrawReason,
    },
    /// Baselines only: the unit already holds exactly this version; keep it (no bytes move).
    Keep {
        seq: u64,
        nhs: NhsNumber,
        version: u64,
    },
}

impl Change {
    pub fn nhs(&self) -> &NhsNumber {
        match self {
            Change::Upsert { nhs, .. }
            | Change::Withdraw { nhs, .. }
            | Change::Keep { nhs, .. } => nhs,
        }
    }
    pub fn seq(&self) -> u64 {
        match self {
            Change::Upsert { seq, .. }
            | Change::Withdraw { seq, .. }
            | Change::Keep { seq, .. } => *seq,
        }
    }
    pub fn version(&self) -> u64 {
        match self {
            Change::Upsert { version, .. }
            | Change::Withdraw { version, .. }
            | Change::Keep { version, .. } => *version,
        }
    }
    /// Approximate encoded size in bytes (for batch sizing).
    pub fn wire_size(&self) -> usize {
        match self {
            Change::Upsert { record, .. } => 48 + record.len(),
            _ => 48,
        }
    }
}

/// A position in a baseline: pass 0 sends critical records, pass 1 all the others; within a
/// pass, records go in NHS-number order. Ordered by (pass, nhs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BaselineKey {
    pub pass: u8,
    pub nhs: NhsNumber,
}

/// What a batch covers. The unit accepts a batch only where it continues exactly from the
/// unit's own position, so its cursor never regresses and never skips.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchKind {
    /// Feed sequence numbers `first_seq..=last_seq`, all examined; `changes` are the ones that
    /// concern this unit (possibly none). `first_seq` is the unit's cursor + 1.
    Feed { first_seq: u64, last_seq: u64 },
    /// Part of baseline `epoch`: every cohort record with a key in `(after, through]`.
    Baseline {
        epoch: u64,
        after: Option<BaselineKey>,
        through: BaselineKey,
    },
    /// Baseline `epoch` is complete: evict every record it did not send or keep, and set the
    /// cursor to `snapshot_seq` (the feed head when the baseline began).
    BaselineDone { epoch: u64, snapshot_seq: u64 },
}

/// A signed batch of changes (one Ed25519 signature over the kind and the changes' digests,
/// see [`super::sign`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Numbered from 1 on each connection; acknowledged by number.
    pub batch_no: u64,
    pub kind: BatchKind,
    pub changes: Vec<Change>,
    pub signature: Bytes,
}

/// A baseline the unit has started and not finished (durable on the unit, sent in its hello).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineProgress {
    pub epoch: u64,
    /// Feed head when the baseline began; the cursor after it.
    pub snapshot_seq: u64,
    /// The cohort the baseline sends.
    pub cohort: Vec<CohortSpec>,
    /// The last key applied, or `None` before the first batch.
    pub resume_after: Option<BaselineKey>,
}

/// A record the unit received in a baseline at a version newer than the baseline's snapshot:
/// the catch-up after the baseline need not send it again (nor, on resume, pass 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub nhs: NhsNumber,
    pub version: u64,
    /// The feed sequence number of that version; forgotten once the cursor passes it.
    pub seq: u64,
}

/// The most [`Held`] entries a unit keeps and sends (beyond, the hub simply re-sends).
pub const MAX_HELD: usize = 4_096;

/// The unit's opening message: where its durable cache stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u16,
    pub device_id: DeviceId,
    /// The last feed sequence number the cache reflects (0: none).
    pub cursor: u64,
    /// The baseline generation the cache's records belong to (0: none yet).
    pub epoch: u64,
    /// The cohort the cache reflects at `cursor` (empty: the hub may assume nothing is held).
    pub cohort: Vec<CohortSpec>,
    /// An unfinished baseline, to resume.
    pub baseline: Option<BaselineProgress>,
    /// Versions received past the last baseline's snapshot, not yet passed by the cursor.
    #[serde(default)]
    pub held: Vec<Held>,
    /// A small health summary for the fleet view (software and firmware versions, supervisor,
    /// backlog). Absent from units before it existed; a hub before it ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Box<UnitHealth>>,
    /// The pull-stream codecs this unit can read besides deflate, by name (`"zstd"`; see
    /// [`super::compress`]). Absent from units before zstd (the hub then sends deflate); a hub
    /// before it ignores it and sends deflate, which the unit tells apart by itself. Names, not
    /// an enum, so a newer unit's list never fails an older hub's decode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compression: Vec<String>,
}

/// What a unit reports about itself when it connects (`Hello::health`). Every field has a
/// default, so a newer unit's summary with fields this hub does not know still decodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnitHealth {
    /// The unit daemon's version (`edge-daemon --version`).
    pub software: String,
    /// The supervisor's firmware version, `major.minor.patch`, from its hello on the host
    /// link (`None`: no supervisor has answered since the daemon started).
    pub firmware: Option<String>,
    /// The supervisor's board revision code.
    pub board_rev: Option<u8>,
    /// The supervisor link: `none`, `serial` or `sim`.
    pub supervisor_mode: String,
    /// The supervisor answered on its link.
    pub supervisor_connected: bool,
    /// What is wrong with the supervisor link, if anything.
    pub supervisor_fault: Option<String>,
    /// The supervisor's fault bits (0x01 watchdog, 0x02 low battery, 0x04 tamper, 0x08
    /// certificate expired, 0x10 watchdog limit), from its last status.
    pub supervisor_faults: Option<u8>,
    /// Why the supervisor last cut host power, if it has.
    pub last_shutdown: Option<String>,
    /// Cohort records held.
    pub records: u64,
    /// Audit events on the unit not yet acknowledged by a hub.
    pub audit_backlog: u64,
    /// The highest sequence number in the unit's audit journal (`None` from units before it
    /// was reported): with what it has stored, the hub knows the backlog exactly, whatever
    /// acknowledgements were lost.
    pub audit_last_seq: Option<u64>,
    /// The cache's disk is full: updates cannot be saved.
    pub disk_full: bool,
}

/// Why the hub re-baselines a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RebaselineReason {
    /// The unit holds nothing yet.
    Cold,
    /// The unit's cursor is older than the feed's compaction horizon.
    Horizon,
    /// The unit's cohort changed: only the difference moves (kept records are named, not sent).
    CohortChanged,
    /// The unit's cursor is beyond the hub's head (the hub's feed was rebuilt).
    CursorAhead,
    /// Continuing a baseline interrupted by a drop.
    Resume,
    #[serde(other)]
    Other,
}

/// How the hub will bring the unit up to date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Feed batches from `from_seq` (the unit's cursor + 1).
    Incremental { from_seq: u64 },
    /// A (possibly resumed) baseline, then feed batches from `snapshot_seq + 1`.
    Rebaseline {
        epoch: u64,
        snapshot_seq: u64,
        cohort: Vec<CohortSpec>,
        resume_after: Option<BaselineKey>,
        reason: RebaselineReason,
    },
}

/// The hub's answer to a hello (and, mid-connection, a switch to a new baseline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol_version: u16,
    /// The hub's clock when it answered: units show freshness in hub time.
    pub hub_time: UnixMillis,
    pub head_seq: u64,
    pub mode: SyncMode,
}

/// The answer to an on-demand fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchOutcome {
    /// The current version, signed on its own (see [`super::sign::sign_fetched`]).
    Found {
        version: u64,
        record: Bytes,
        signature: Bytes,
    },
    NotFound,
    /// The patient objected or the record was deleted: drop any copy.
    Withdrawn,
    /// The hub fetched nothing: the request's shift token or purpose did not pass, or the
    /// device or staff member is past the hard fetch ceiling. Nothing was read.
    Refused {
        reason: FetchRefusal,
    },
}

/// Why the hub refused an on-demand fetch (see [`FetchOutcome::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchRefusal {
    /// The fetch carried no shift token.
    NoToken,
    /// The token does not verify (signature, shape, expiry, wrong kind).
    BadToken,
    /// The token is bound to another unit than the connection's certificate.
    WrongUnit,
    /// The token (or its staff member) is on the fleet's deny list.
    DeniedToken,
    /// The token's role may not read summaries.
    Role,
    /// The device or the staff member is past the hard fetch ceiling.
    OverCeiling,
    /// The hub cannot record its audit event for the fetch, so it serves nothing.
    AuditUnavailable,
    /// A reason a newer hub knows.
    #[serde(other)]
    Other,
}

impl FetchRefusal {
    /// The reason as a short snake_case string (logs, audit `outcome_reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            FetchRefusal::NoToken => "no_token",
            FetchRefusal::BadToken => "bad_token",
            FetchRefusal::WrongUnit => "wrong_unit",
            FetchRefusal::DeniedToken => "denied_token",
            FetchRefusal::Role => "role",
            FetchRefusal::OverCeiling => "fetch_ceiling",
            FetchRefusal::AuditUnavailable => "audit_unavailable",
            FetchRefusal::Other => "other",
        }
    }
}

/// A shift token as carried by a fetch (the compact form the LAN received). Its `Debug` never
/// shows the token: it is a bearer credential.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BearerToken(pub String);

impl BearerToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BearerToken(len={})", self.0.len())
    }
}

/// The longest shift token a fetch may carry (bytes); longer ones are refused unread.
pub const MAX_FETCH_TOKEN_BYTES: usize = 4_096;

/// Why the hub refused a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The hub does not speak the unit's protocol version.
    UnsupportedVersion,
    /// The hub has no such unit (not enrolled, or removed).
    UnknownUnit,
    /// The hello names another device than the unit's certificate.
    DeviceMismatch,
    /// A message broke the protocol (out of order, over a limit).
    BadRequest,
    /// The hub is busy; retry later with back-off.
    Overloaded,
    /// The hub failed (storage); retry later with back-off.
    Internal,
    #[serde(other)]
    Other,
}

/// Unit → hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToHub {
    Hello(Hello),
    /// Batches up to and including `upto_batch` are applied durably.
    Ack {
        upto_batch: u64,
    },
    /// Fetch one patient's current summary (outside the cohort, typically), on behalf of the
    /// staff member whose shift token asked, for `purpose`. The hub verifies the token (and
    /// its unit binding against the connection's certificate), applies its fetch budget and
    /// records its own access event; a fetch without a valid token fetches nothing.
    Fetch {
        request_id: u64,
        nhs: NhsNumber,
        #[serde(default)]
        token: BearerToken,
        #[serde(default)]
        purpose: crate::audit::Purpose,
    },
    /// Audit events from the unit's journal, in sequence order, on the audit stream. The hub
    /// stores them durably (idempotent on device and seq) before acknowledging.
    Audit {
        events: Vec<crate::audit::AuditEvent>,
    },
    /// Renew this unit's operational certificate: the hub re-issues the certificate the unit
    /// presented on this connection (same key, same identity and cohorts, a new 7-day validity)
    /// with the fleet's renewal CA, unless the unit is revoked, wiped or not yet due. The
    /// request is authenticated by the connection itself: the TLS handshake proved the unit
    /// holds its current key. Answered with [`ToUnit::Certificate`] or
    /// [`ToUnit::RenewalRefused`].
    Renew,
}

/// Hub → unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToUnit {
    Welcome(Welcome),
    Batch(Batch),
    /// Everything up to the feed head has been sent; new changes will be pushed.
    Live {
        head_seq: u64,
    },
    Fetched {
        request_id: u64,
        outcome: FetchOutcome,
    },
    Refused {
        code: RefusalCode,
        message: String,
    },
    /// The fleet orders this unit wiped (stolen, decommissioned): destroy the cache's data key
    /// now. Audit upload continues on its own stream so pending events still arrive.
    Wipe {
        reason: String,
    },
    /// Audit events up to and including `upto_seq` are stored durably at the hub; `problems`
    /// names any chain break or gap the hub found (they are stored and reported, not dropped).
    AuditAck {
        upto_seq: u64,
        #[serde(default)]
        problems: Vec<String>,
    },
    /// The fleet's signed shift-token deny list (the raw bytes of `token-denylist.cbor`, as
    /// signed by the fleet's token key): sent after the welcome and again whenever the hub
    /// takes a newer one. The unit verifies it itself before honouring it.
    DenyList {
        list: Bytes,
    },
    /// A renewed operational certificate: DER, the unit's certificate first, then the renewal
    /// CA (the chain the unit presents from its next connection).
    Certificate {
        chain: Vec<Bytes>,
    },
    /// The hub will not renew the unit's certificate now (`why` for the unit's log).
    RenewalRefused {
        why: String,
    },
    /// An ED kiosk's pre-fetch, pushed by the hub because an ambulance crew said they are
    /// bringing this patient in (their audited conveyance, after their own audited read): the
    /// current version, signed as a fetch answer is ([`super::sign::sign_fetched`]). The kiosk
    /// keeps it as an on-demand copy (same expiry); the hub recorded its own access event first.
    Prefetched {
        nhs: NhsNumber,
        version: u64,
        record: Bytes,
        signature: Bytes,
    },
}

/// Certificates in one [`ToUnit::Certificate`], at most.
pub const MAX_CHAIN: usize = 4;

/// The most audit events in one upload message.
pub const MAX_AUDIT_BATCH: usize = 4_000;

/// Which QUIC stream a message travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Hello, welcome, batches, acks, live, refusals: one ordered stream.
    Pull,
    /// On-demand fetch requests and answers.
    Fetch,
    /// Audit upload and its acknowledgements.
    Audit,
}

impl ToHub {
    pub fn stream(&self) -> StreamKind {
        match self {
            ToHub::Fetch { .. } => StreamKind::Fetch,
            ToHub::Audit { .. } => StreamKind::Audit,
            _ => StreamKind::Pull,
        }
    }
}

impl ToUnit {
    pub fn stream(&self) -> StreamKind {
        match self {
            ToUnit::Fetched { .. } => StreamKind::Fetch,
            ToUnit::AuditAck { .. } => StreamKind::Audit,
            _ => StreamKind::Pull,
        }
    }
    /// A refusal (what a hub sends a unit it will not serve, before closing).
    pub fn refused(code: RefusalCode, message: impl Into<String>) -> Self {
        ToUnit::Refused {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod health_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The hello as units sent it before the health summary existed.
    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct OldHello {
        protocol_version: u16,
        device_id: DeviceId,
        cursor: u64,
        epoch: u64,
        cohort: Vec<CohortSpec>,
        baseline: Option<BaselineProgress>,
        #[serde(default)]
        held: Vec<Held>,
    }

    fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    #[test]
    fn a_hello_with_or_without_health_decodes_on_old_and_new_peers() {
        let device_id = DeviceId::parse("amb-0042").unwrap();
        let old = OldHello {
            protocol_version: 1,
            device_id: device_id.clone(),
            cursor: 7,
            epoch: 2,
            cohort: Vec::new(),
            baseline: None,
            held: Vec::new(),
        };
        // An old unit's hello reaches a new hub: no health.
        let h: Hello = ciborium::from_reader(&cbor(&old)[..]).unwrap();
        assert_eq!((h.cursor, h.epoch, &h.health), (7, 2, &None));
        // A new unit's hello without health is byte-for-byte the old one.
        assert_eq!(cbor(&h), cbor(&old));
        // A new unit's hello with health reaches an old hub: the rest is read as before.
        let health = UnitHealth {
            software: "0.1.0".into(),
            firmware: Some("1.2.3".into()),
            board_rev: Some(2),
            supervisor_mode: "serial".into(),
            supervisor_connected: true,
            records: 909_090,
            audit_backlog: 12,
            ..UnitHealth::default()
        };
        let with = Hello {
            health: Some(Box::new(health.clone())),
            compression: vec!["zstd".into(), "codec-from-2030".into()],
            ..h
        };
        let back: OldHello = ciborium::from_reader(&cbor(&with)[..]).unwrap();
        assert_eq!(back, old);
        let back: Hello = ciborium::from_reader(&cbor(&with)[..]).unwrap();
        assert_eq!(back.health, Some(Box::new(health)));
        // The codec list survives, and a name this hub does not know is simply not chosen.
        assert_eq!(
            crate::sync::PullCompression::choose(&back.compression),
            crate::sync::PullCompression::Zstd
        );
        assert_eq!(
            crate::sync::PullCompression::choose(&["codec-from-2030".to_owned()]),
            crate::sync::PullCompression::Deflate
        );
        // A later unit's health with a field this hub does not know still decodes.
        #[derive(Serialize)]
        struct Later {
            software: String,
            firmware: Option<String>,
            battery_cycles: u32,
        }
        let later = Later {
            software: "9.0.0".into(),
            firmware: None,
            battery_cycles: 4,
        };
        let got: UnitHealth = ciborium::from_reader(&cbor(&later)[..]).unwrap();
        assert_eq!(got.software, "9.0.0");
    }

    /// A frame body is exactly one message: bytes after it are refused, and a message decodes
    /// the same with the decoder the frames use as with `ciborium`, which wrote it.
    #[test]
    fn a_frame_body_is_one_message_and_nothing_after_it() {
        use crate::sync::frame::{decode_body, FrameError};
        let m = ToUnit::AuditAck {
            upto_seq: 42,
            problems: vec!["gap at 7".into()],
        };
        let body = cbor(&m);
        assert_eq!(decode_body::<ToUnit>(&body).unwrap(), m);
        let back: ToUnit = ciborium::from_reader(&body[..]).unwrap();
        assert_eq!(back, m);
        let mut longer = body.clone();
        longer.extend_from_slice(&[0xf6, 0xf6, 0xf6]);
        match decode_body::<ToUnit>(&longer) {
            Err(FrameError::Malformed(why)) => assert!(why.contains("3 trailing bytes"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(decode_body::<ToUnit>(&body[..body.len() - 1]).is_err());
    }
}
