//! The hub's audit repository: every access event uploaded by every unit, stored durably
//! before it is acknowledged, idempotent on (device, seq), with each device's hash chain and
//! sequence continuity checked on arrival and on demand. Breaks and gaps are stored and
//! reported, never dropped or "repaired".
//!
//! sled trees in the hub's database:
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `audit_events` | device id ‖ 0 ‖ seq (u64 BE) | the event (CBOR) |
//! | `audit_index` | `P` NHS ‖ 0 ‖ time ‖ device ‖ 0 ‖ seq, `S` staff id ‖ 0 ‖ time ‖ device ‖ 0 ‖ seq, `a` time ‖ device ‖ 0 ‖ seq (break-glass and alerts) | empty |
//! | `audit_devices` | device id | [`DeviceAudit`] |
//!
//! `time` is the event's `recorded` (8 bytes, order-preserving), so "who accessed patient X",
//! "what did staff member Y do" and the alert review list are read newest first straight off the
//! index, one page at a time from an opaque cursor ([`AuditRepo::query_page`],
//! [`AuditRepo::alerts_page`]), never loading the whole repository. Databases written before
//! these time-ordered entries (with `p` / `s` entries in device order) are indexed again once,
//! when the repository is opened.

use std::collections::HashMap;
use std::sync::Mutex;

use edge_proto::audit::{AuditEvent, Hash32, GENESIS};
use edge_proto::cbor;
use edge_proto::ids::DeviceId;
use edge_proto::nhs::NhsNumber;
use edge_proto::time::UnixMillis;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

use crate::store::StoreError;

/// What the hub knows of one device's audit trail.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceAudit {
    /// Events stored.
    pub events: u64,
    /// The highest seq stored.
    pub last_seq: u64,
    /// The hash of the event at `last_seq`.
    pub last_hash: Option<Hash32>,
    /// Problems found on arrival (chain breaks, gaps, conflicting replays), newest last.
    pub problems: Vec<String>,
}

/// The outcome of storing one upload.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// Every event up to this seq is durably stored.
    pub upto_seq: u64,
    pub new: u64,
    pub duplicates: u64,
    pub problems: Vec<String>,
    /// New (not replayed) conveyances among the events: the hub may push their patients to
    /// ED kiosks ([`crate::prefetch`]).
    pub conveyances: Vec<AuditEvent>,
}

fn ekey(device: &str, seq: u64) -> Vec<u8> {
    let mut k = device.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// An order-preserving encoding of a time (the sign bit flipped, big-endian).
fn tbytes(t: UnixMillis) -> [u8; 8] {
    ((t.0 as u64) ^ (1u64 << 63)).to_be_bytes()
}

/// The prefix of a patient's (`kind = b'p'`) or staff member's (`b's'`) time-ordered entries.
fn who_prefix(kind: u8, who: &str) -> Vec<u8> {
    let mut k = vec![kind.to_ascii_uppercase()];
    k.extend_from_slice(who.as_bytes());
    k.push(0);
    k
}

/// The prefix of the alert review list's entries.
const ALERT_PREFIX: &[u8] = b"a";

/// Marks a database whose time-ordered index entries are complete.
const INDEX_V2_DONE: &[u8] = b"~index-v2";

fn ikey(prefix: &[u8], recorded: UnixMillis, device: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&tbytes(recorded));
    k.extend_from_slice(&ekey(device, seq));
    k
}

pub(crate) fn is_alert(e: &AuditEvent) -> bool {
    use edge_proto::audit::AuditAction;
    matches!(e.action, AuditAction::BreakGlass | AuditAction::Alert)
}

fn index_event(batch: &mut sled::Batch, dev: &str, e: &AuditEvent) {
    if let Some(p) = &e.patient {
        let k = ikey(&who_prefix(b'p', &p.as_digits()), e.recorded, dev, e.seq);
        batch.insert(k, &[][..]);
    }
    if let Some(s) = &e.staff_id {
        batch.insert(ikey(&who_prefix(b's', s), e.recorded, dev, e.seq), &[][..]);
    }
    if is_alert(e) {
        batch.insert(ikey(ALERT_PREFIX, e.recorded, dev, e.seq), &[][..]);
    }
}

/// One page of events, newest first, and the cursor of the next page (none when this was the
/// last).
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<AuditEvent>,
    pub next_cursor: Option<String>,
}

/// A cursor that is not one this repository handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cursor is not one a previous page of this list returned")]
pub struct BadCursor;

/// Decode an opaque page cursor (hex of the position after a list's prefix).
fn decode_cursor(c: &str) -> Result<Vec<u8>, BadCursor> {
    if c.len() > 512 || !c.len().is_multiple_of(2) {
        return Err(BadCursor);
    }
    let bytes = c.as_bytes();
    let nibble = |b: u8| -> Result<u8, BadCursor> {
        match b {
            b'0'..=b'9' => Ok(b - b'0'),
            b'a'..=b'f' => Ok(b - b'a' + 10),
            _ => Err(BadCursor),
        }
    };
    let mut out = Vec::with_capacity(bytes.len() / 2);
    for pair in bytes.chunks(2) {
        out.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
    }
    // time (8) ‖ device ‖ 0 ‖ seq (8): at least 18 bytes.
    if out.len() < 18 {
        return Err(BadCursor);
    }
    Ok(out)
}

fn encode_cursor(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: "audit".into(),
        why: e.to_string(),
    }
}

/// The audit repository: one interface, two backends (the hub's sled database, or the
/// PostgreSQL database several hubs share: [`crate::pg::PgStore`]'s `audit_*` methods). The
/// rules of an upload ([`plan_upload`]) and of verification ([`Verifier`]) are shared; only
/// storage differs.
#[derive(Debug)]
pub struct AuditRepo {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Sled(SledAudit),
    Pg(std::sync::Arc<crate::pg::PgStore>),
}

/// Which time-ordered list a page is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List<'a> {
    /// Events about a patient (NHS number digits).
    Patient(&'a str),
    /// Events by a staff member.
    Staff(&'a str),
    /// Break-glass accesses and security alerts from every unit.
    Alerts,
}

impl List<'_> {
    fn prefix(&self) -> Vec<u8> {
        match self {
            List::Patient(p) => who_prefix(b'p', p),
            List::Staff(s) => who_prefix(b's', s),
            List::Alerts => ALERT_PREFIX.to_vec(),
        }
    }
}

/// A position in a time-ordered list: the entry a page ended on. Its cursor is the same on
/// both backends (hex of time ‖ device ‖ 0 ‖ seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub recorded: UnixMillis,
    pub device: String,
    pub seq: u64,
}

impl Position {
    pub fn of(e: &AuditEvent) -> Position {
        Position {
            recorded: e.recorded,
            device: e.device_id.as_str().to_owned(),
            seq: e.seq,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut k = tbytes(self.recorded).to_vec();
        k.extend_from_slice(&ekey(&self.device, self.seq));
        k
    }

    /// The cursor a page hands out.
    pub fn cursor(&self) -> String {
        encode_cursor(&self.bytes())
    }

    /// Parse a cursor handed out by [`Position::cursor`].
    pub fn parse(c: &str) -> Result<Position, BadCursor> {
        let b = decode_cursor(c)?;
        let (t, rest) = b.split_at(8);
        let (dev, seq) = rest.split_at(rest.len() - 8);
        let dev = dev.strip_suffix(&[0]).ok_or(BadCursor)?;
        let device = std::str::from_utf8(dev).map_err(|_| BadCursor)?.to_owned();
        let t = u64::from_be_bytes(t.try_into().map_err(|_| BadCursor)?) ^ (1u64 << 63);
        let seq = u64::from_be_bytes(seq.try_into().map_err(|_| BadCursor)?);
        Ok(Position {
            recorded: UnixMillis(t as i64),
            device,
            seq,
        })
    }
}

/// What an upload stores, decided from what is already stored for its seqs (`stored`: seq →
/// hash of the stored event; events accepted here are added to it). Updates the device's
/// summary `d`. Returns the events to store, the replayed ones (already stored, identical),
/// and the outcome. The same rules on both backends.
pub fn plan_upload<'a>(
    d: &mut DeviceAudit,
    device: &DeviceId,
    events: &'a [AuditEvent],
    stored: &mut HashMap<u64, Hash32>,
) -> (Vec<&'a AuditEvent>, Vec<&'a AuditEvent>, Stored) {
    let mut out = Stored {
        upto_seq: d.last_seq,
        ..Stored::default()
    };
    let (mut new, mut replayed) = (Vec::new(), Vec::new());
    let problem = |d: &mut DeviceAudit, out: &mut Stored, p: String| {
        if d.problems.len() < 1_000 {
            d.problems.push(p.clone());
        }
        out.problems.push(p);
    };
    for e in events {
        if e.device_id != *device {
            problem(
                d,
                &mut out,
                format!("seq {}: event of another device refused", e.seq),
            );
            continue;
        }
        if let Some(old) = stored.get(&e.seq) {
            if *old == e.hash {
                out.duplicates += 1;
                replayed.push(e);
            } else {
                problem(
                    d,
                    &mut out,
                    format!(
                        "seq {}: a different event was already stored (kept the first)",
                        e.seq
                    ),
                );
            }
            out.upto_seq = out.upto_seq.max(e.seq);
            continue;
        }
        if !e.hash_ok() {
            problem(
                d,
                &mut out,
                format!("seq {}: hash does not match its content", e.seq),
            );
        }
        if e.seq == d.last_seq + 1 {
            if e.prev_hash != d.last_hash.unwrap_or(GENESIS) {
                problem(
                    d,
                    &mut out,
                    format!("seq {}: chain broken (prev_hash does not match)", e.seq),
                );
            }
        } else if e.seq > d.last_seq + 1 {
            let msg = format!("gap: seq {} to {} missing", d.last_seq + 1, e.seq - 1);
            problem(d, &mut out, msg);
        }
        stored.insert(e.seq, e.hash);
        new.push(e);
        if e.seq > d.last_seq {
            d.last_seq = e.seq;
            d.last_hash = Some(e.hash);
        }
        d.events += 1;
        out.new += 1;
        if e.action == edge_proto::audit::AuditAction::Convey && out.conveyances.len() < 1_000 {
            out.conveyances.push(e.clone());
        }
        out.upto_seq = out.upto_seq.max(e.seq);
    }
    (new, replayed, out)
}

/// Re-verification of one device's trail, fed its events in seq order.
#[derive(Debug, Default)]
pub struct Verifier {
    count: u64,
    first: Option<u64>,
    last: u64,
    prev: Option<Hash32>,
    gaps: Vec<Value>,
    breaks: Vec<u64>,
}

impl Verifier {
    pub fn push(&mut self, e: &AuditEvent) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(e.seq);
            if e.seq != 1 {
                self.gaps.push(json!({"from": 1, "to": e.seq - 1}));
            }
            if e.seq == 1 && e.prev_hash != GENESIS {
                self.breaks.push(e.seq);
            }
        } else if e.seq != self.last + 1 {
            self.gaps
                .push(json!({"from": self.last + 1, "to": e.seq - 1}));
        } else if self.prev.is_some_and(|p| p != e.prev_hash) {
            self.breaks.push(e.seq);
        }
        if !e.hash_ok() {
            self.breaks.push(e.seq);
        }
        self.prev = Some(e.hash);
        self.last = e.seq;
    }

    pub fn finish(mut self, device: &str, problems: Vec<String>) -> Value {
        self.breaks.sort_unstable();
        self.breaks.dedup();
        json!({
            "device_id": device,
            "events": self.count,
            "first_seq": self.first,
            "last_seq": if self.count > 0 { Some(self.last) } else { None },
            "gaps": self.gaps,
            "breaks": self.breaks,
            "chain_ok": self.breaks.is_empty(),
            "problems_on_arrival": problems,
        })
    }
}

impl AuditRepo {
    /// The repository in the hub's sled database.
    pub fn open(db: &sled::Db) -> Result<AuditRepo, StoreError> {
        Ok(AuditRepo {
            backend: Backend::Sled(SledAudit::open(db)?),
        })
    }

    /// The repository in the PostgreSQL database (shared by every hub on it).
    pub fn postgres(store: std::sync::Arc<crate::pg::PgStore>) -> AuditRepo {
        AuditRepo {
            backend: Backend::Pg(store),
        }
    }

    /// Which backend holds the repository ("embedded" or "postgres").
    pub fn backend(&self) -> &'static str {
        match &self.backend {
            Backend::Sled(_) => "embedded",
            Backend::Pg(_) => "postgres",
        }
    }

    /// A device's audit summary.
    pub fn device(&self, device: &str) -> Result<DeviceAudit, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.device(device),
            Backend::Pg(p) => p.audit_device(device),
        }
    }

    /// Store an upload from `device` (the authenticated unit). Events of another device are
    /// refused. Durable before returning; each event stored once whichever hub receives it.
    pub fn store(&self, device: &DeviceId, events: &[AuditEvent]) -> Result<Stored, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.store(device, events),
            Backend::Pg(p) => p.audit_store(device, events),
        }
    }

    /// Seal `e` as the next event of `device`'s own chain (the hub's: fetches it answered) and
    /// store it, atomically: hubs sharing a database, even under one name, append to the
    /// chain in turn.
    pub fn append(&self, device: &DeviceId, e: AuditEvent) -> Result<Stored, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.append(device, e),
            Backend::Pg(p) => p.audit_append(device, e),
        }
    }

    /// Events about a patient (`kind = b'p'`, NHS digits) or by a staff member (`b's'`),
    /// newest first, at most `limit`.
    pub fn query(&self, kind: u8, who: &str, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let list = if kind == b's' {
            List::Staff(who)
        } else {
            List::Patient(who)
        };
        Ok(self.list_page(list, None, limit)?.events)
    }

    /// One page of [`AuditRepo::query`]: at most `limit` events, newest first, after `cursor`
    /// (the previous page's `next_cursor`). Reads only the entries of this page.
    pub fn query_page(
        &self,
        kind: u8,
        who: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Result<Page, BadCursor>, StoreError> {
        let list = if kind == b's' {
            List::Staff(who)
        } else {
            List::Patient(who)
        };
        self.cursor_page(list, cursor, limit)
    }

    /// One page of the alert review list (break-glass accesses and security alerts from every
    /// unit), newest first, after `cursor`.
    pub fn alerts_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Result<Page, BadCursor>, StoreError> {
        self.cursor_page(List::Alerts, cursor, limit)
    }

    fn cursor_page(
        &self,
        list: List<'_>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Result<Page, BadCursor>, StoreError> {
        let after = match cursor.map(Position::parse).transpose() {
            Ok(p) => p,
            Err(b) => return Ok(Err(b)),
        };
        self.list_page(list, after.as_ref(), limit).map(Ok)
    }

    /// At most `limit` events of `list`, newest first, older than `after`.
    fn list_page(
        &self,
        list: List<'_>,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let limit = limit.max(1);
        let mut events = match &self.backend {
            Backend::Sled(s) => s.page(list, after, limit + 1)?,
            Backend::Pg(p) => p.audit_page(list, after, limit + 1)?,
        };
        let more = events.len() > limit;
        events.truncate(limit);
        let next_cursor = if more {
            events.last().map(|e| Position::of(e).cursor())
        } else {
            None
        };
        Ok(Page {
            events,
            next_cursor,
        })
    }

    /// Re-verify a device's whole stored trail: continuity from its first seq and the chain.
    /// One stored event, if the repository holds it.
    pub fn event(&self, device: &str, seq: u64) -> Result<Option<AuditEvent>, StoreError> {
        match &self.backend {
            Backend::Sled(s) => s
                .events
                .get(ekey(device, seq))?
                .map(|v| cbor::from_slice(&v).map_err(corrupt))
                .transpose(),
            Backend::Pg(p) => p.audit_event(device, seq),
        }
    }

    pub fn verify(&self, device: &str) -> Result<Value, StoreError> {
        let mut v = Verifier::default();
        match &self.backend {
            Backend::Sled(s) => s.each_of_device(device, |e| v.push(&e))?,
            Backend::Pg(p) => p.audit_each_of_device(device, &mut |e| v.push(&e))?,
        }
        Ok(v.finish(device, self.device(device)?.problems))
    }

    /// Every event recorded at or after `since`, at most `limit` (sled: in device and seq
    /// order; PostgreSQL: in time order).
    pub fn since(&self, since: UnixMillis, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.each_between(since, UnixMillis(i64::MAX), |e| {
            out.push(e);
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Call `f` with every event recorded in `[since, until)`, one at a time (nothing is
    /// collected: an export of the whole repository holds a page of events in memory at most),
    /// until `f` returns false.
    pub fn each_between(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        mut f: impl FnMut(AuditEvent) -> bool,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sled(s) => s.each_between(since, until, f),
            Backend::Pg(p) => p.audit_each_between(since, until, &mut f),
        }
    }
}

/// The repository in the hub's sled database.
#[derive(Debug)]
struct SledAudit {
    db: sled::Db,
    events: sled::Tree,
    index: sled::Tree,
    devices: sled::Tree,
    write: Mutex<()>,
}

impl SledAudit {
    fn open(db: &sled::Db) -> Result<SledAudit, StoreError> {
        let repo = SledAudit {
            db: db.clone(),
            events: db.open_tree("audit_events")?,
            index: db.open_tree("audit_index")?,
            devices: db.open_tree("audit_devices")?,
            write: Mutex::new(()),
        };
        repo.reindex_if_needed()?;
        Ok(repo)
    }

    /// Build the time-ordered index entries of a database written before them (once).
    fn reindex_if_needed(&self) -> Result<(), StoreError> {
        if self.index.get(INDEX_V2_DONE)?.is_some() {
            return Ok(());
        }
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for kv in self.events.iter() {
            let (k, v) = kv?;
            let e: AuditEvent = cbor::from_slice(&v).map_err(corrupt)?;
            let dev_len = k.iter().position(|b| *b == 0).unwrap_or(k.len());
            let dev = String::from_utf8_lossy(&k[..dev_len]).into_owned();
            index_event(&mut batch, &dev, &e);
            n += 1;
            if n.is_multiple_of(10_000) {
                self.index.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        batch.insert(INDEX_V2_DONE, &[][..]);
        self.index.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    fn device(&self, device: &str) -> Result<DeviceAudit, StoreError> {
        match self.devices.get(device.as_bytes())? {
            None => Ok(DeviceAudit::default()),
            Some(v) => cbor::from_slice(&v).map_err(corrupt),
        }
    }

    fn store(&self, device: &DeviceId, events: &[AuditEvent]) -> Result<Stored, StoreError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        self.store_locked(device, events)
    }

    fn append(&self, device: &DeviceId, mut e: AuditEvent) -> Result<Stored, StoreError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let d = self.device(device.as_str())?;
        e.seal(d.last_seq + 1, d.last_hash.unwrap_or(GENESIS))
            .map_err(corrupt)?;
        self.store_locked(device, std::slice::from_ref(&e))
    }

    /// [`SledAudit::store`] with the write lock held.
    fn store_locked(&self, device: &DeviceId, events: &[AuditEvent]) -> Result<Stored, StoreError> {
        let dev = device.as_str();
        let mut d = self.device(dev)?;
        let mut stored = HashMap::new();
        // Only a seq at or below the highest stored can be stored already (the device summary
        // commits with its events): a live unit's uploads, all above it, read nothing back.
        for e in events
            .iter()
            .filter(|e| e.device_id == *device && e.seq <= d.last_seq)
        {
            if stored.contains_key(&e.seq) {
                continue;
            }
            if let Some(old) = self.load(&ekey(dev, e.seq))? {
                stored.insert(e.seq, old.hash);
            }
        }
        let (new, replayed, out) = plan_upload(&mut d, device, events, &mut stored);
        let mut ev_batch = sled::Batch::default();
        let mut ix_batch = sled::Batch::default();
        for e in new {
            ev_batch.insert(ekey(dev, e.seq), cbor::to_vec(e).map_err(corrupt)?);
            index_event(&mut ix_batch, dev, e);
        }
        // Re-index a replayed event: a database written before the three trees were committed
        // in one transaction may hold the event without its index entries (killed between two
        // trees' writes), and a replay is the moment to make "who accessed patient X" whole
        // again. Idempotent.
        for e in replayed {
            index_event(&mut ix_batch, dev, e);
        }
        // The events, their index entries and the device summary commit together: a hub killed
        // mid-write must never keep an event that "who accessed patient X" cannot find (a replay
        // would then count it a duplicate and never index it).
        let summary = cbor::to_vec(&d).map_err(corrupt)?;
        (&self.events, &self.index, &self.devices)
            .transaction(|(ev, ix, dv)| {
                ev.apply_batch(&ev_batch)?;
                ix.apply_batch(&ix_batch)?;
                dv.insert(dev.as_bytes(), summary.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => StoreError::from(e),
                TransactionError::Abort(()) => corrupt("audit transaction aborted"),
            })?;
        self.db.flush()?;
        Ok(out)
    }

    fn load(&self, key: &[u8]) -> Result<Option<AuditEvent>, StoreError> {
        self.events
            .get(key)?
            .map(|v| cbor::from_slice(&v).map_err(corrupt))
            .transpose()
    }

    /// At most `limit` events of `list`, newest first, older than `after`.
    fn page(
        &self,
        list: List<'_>,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let prefix = list.prefix();
        let iter = match after {
            Some(p) => {
                let mut end = prefix.clone();
                end.extend_from_slice(&p.bytes());
                self.index.range(prefix.clone()..end)
            }
            None => self.index.scan_prefix(&prefix),
        };
        let mut out = Vec::new();
        for kv in iter.rev() {
            let (k, _) = kv?;
            if !k.starts_with(&prefix) || k.len() < prefix.len() + 8 {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            if let Some(e) = self.load(&k[prefix.len() + 8..])? {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn each_of_device(
        &self,
        device: &str,
        mut f: impl FnMut(AuditEvent),
    ) -> Result<(), StoreError> {
        let mut prefix = device.as_bytes().to_vec();
        prefix.push(0);
        for kv in self.events.scan_prefix(&prefix) {
            let (_, v) = kv?;
            f(cbor::from_slice(&v).map_err(corrupt)?);
        }
        Ok(())
    }

    fn each_between(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        mut f: impl FnMut(AuditEvent) -> bool,
    ) -> Result<(), StoreError> {
        for kv in self.events.iter() {
            let (_, v) = kv?;
            let e: AuditEvent = cbor::from_slice(&v).map_err(corrupt)?;
            if e.recorded >= since && e.recorded < until && !f(e) {
                break;
            }
        }
        Ok(())
    }
}

/// An event as the admin API shows it.
pub fn event_json(e: &AuditEvent) -> Value {
    let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("recorded".into(), json!(e.recorded.to_rfc3339()));
        m.insert("patient".into(), json!(e.patient.map(|p| p.as_digits())));
        m.insert("purpose".into(), json!(e.purpose.as_str()));
    }
    v
}

/// An event as a FHIR R4 `AuditEvent` (for `GET /admin/audit/export`).
pub fn event_fhir(e: &AuditEvent) -> Value {
    use edge_proto::audit::{AuditAction, AuditOutcome};
    let (subtype, action) = match e.action {
        AuditAction::Read | AuditAction::BreakGlass => ("read", "R"),
        AuditAction::Convey => ("update", "E"),
        AuditAction::Search => ("search-type", "E"),
        AuditAction::Login => ("login", "E"),
        AuditAction::Alert => ("alert", "E"),
    };
    let outcome = match e.outcome {
        AuditOutcome::Ok => "0",
        AuditOutcome::NotFound => "4",
        AuditOutcome::Denied => "4",
        AuditOutcome::Error => "8",
    };
    let mut entity = Vec::new();
    if let Some(p) = &e.patient {
        entity.push(json!({
            "what": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": p.as_digits()}},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
        }));
    }
    json!({
        "resourceType": "AuditEvent",
        "id": e.event_id,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": action,
        "recorded": e.recorded.to_rfc3339(),
        "outcome": outcome,
        "outcomeDesc": e.outcome_reason,
        "purposeOfEvent": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": e.purpose.as_str()}]}],
        "agent": [{
            "who": {"identifier": {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": e.staff_id}, "display": e.staff_name},
            "requestor": true,
            "role": e.role.map(|r| vec![json!({"text": r.to_string()})]).unwrap_or_default(),
        }],
        "source": {
            "observer": {"display": e.device_id.as_str()},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]
        },
        "entity": entity,
        "extension": [
            {"url": "https://kerbside.example/fhir/audit-seq", "valueUnsignedInt": e.seq},
            {"url": "https://kerbside.example/fhir/audit-offline", "valueBoolean": e.offline},
            {"url": "https://kerbside.example/fhir/audit-hash", "valueString": e.hash.to_string()}
        ]
    })
}

/// Parse an NHS number for a query (400 on failure).
pub fn parse_patient(s: &str) -> Option<NhsNumber> {
    NhsNumber::parse(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::audit::{
        AccessData, AuditAction, AuditOutcome, ClientInfo, Purpose, AUDIT_SCHEMA,
    };
    use edge_proto::ids::StaffRole;

    fn chain(n: u64) -> Vec<AuditEvent> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let mut e = AuditEvent {
                    schema: AUDIT_SCHEMA,
                    event_id: edge_proto::audit::uuid_from_bytes([seq as u8; 16]),
                    device_id: DeviceId::parse("LAS-AMB-0001").unwrap(),
                    seq: 0,
                    prev_hash: GENESIS,
                    hash: Hash32::default(),
                    recorded: UnixMillis(1_700_000_000_000 + seq as i64),
                    clock_offset_ms: 0,
                    action: AuditAction::Read,
                    outcome: AuditOutcome::Ok,
                    outcome_reason: None,
                    staff_id: Some("555000111222".into()),
                    staff_name: None,
                    role: Some(StaffRole::Clinical),
                    org_ods: None,
                    auth: None,
                    purpose: Purpose::Treat,
                    break_glass_reason: None,
                    patient: Some(NhsNumber::parse("9990000018").unwrap()),
                    data: AccessData::default(),
                    client: ClientInfo::default(),
                    incident_ref: None,
                    offline: false,
                };
                e.seal(seq, prev).unwrap();
                prev = e.hash;
                e
            })
            .collect()
    }

    #[test]
    fn a_replay_re_indexes_an_event_stored_without_its_index_entries() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let repo = AuditRepo::open(&db).unwrap();
        let dev = DeviceId::parse("LAS-AMB-0001").unwrap();
        let events = chain(4);
        let out = repo.store(&dev, &events).unwrap();
        assert_eq!((out.new, out.upto_seq), (4, 4));
        assert_eq!(repo.query(b'p', "9990000018", 100).unwrap().len(), 4);
        // What a hub killed between two trees' writes (before they shared one transaction) left
        // behind: events 3 and 4 stored, their index entries not.
        let index = db.open_tree("audit_index").unwrap();
        for e in &events[2..] {
            let t = e.recorded;
            index
                .remove(ikey(
                    &who_prefix(b'p', "9990000018"),
                    t,
                    "LAS-AMB-0001",
                    e.seq,
                ))
                .unwrap();
            index
                .remove(ikey(
                    &who_prefix(b's', "555000111222"),
                    t,
                    "LAS-AMB-0001",
                    e.seq,
                ))
                .unwrap();
        }
        assert_eq!(repo.query(b'p', "9990000018", 100).unwrap().len(), 2);
        // The unit, never acknowledged, uploads them again.
        let out = repo.store(&dev, &events[2..]).unwrap();
        assert_eq!((out.new, out.duplicates, out.upto_seq), (0, 2, 4));
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(repo.query(b'p', "9990000018", 100).unwrap().len(), 4);
        assert_eq!(repo.query(b's', "555000111222", 100).unwrap().len(), 4);
        assert_eq!(repo.verify("LAS-AMB-0001").unwrap()["chain_ok"], true);
    }
}
