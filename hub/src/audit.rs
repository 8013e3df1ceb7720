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
//! | `audit_index` | `p` NHS ‖ 0 ‖ device ‖ 0 ‖ seq, or `s` staff id ‖ 0 ‖ device ‖ 0 ‖ seq | empty |
//! | `audit_devices` | device id | [`DeviceAudit`] |

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
}

/// The audit repository.
#[derive(Debug)]
pub struct AuditRepo {
    db: sled::Db,
    events: sled::Tree,
    index: sled::Tree,
    devices: sled::Tree,
    write: Mutex<()>,
}

fn ekey(device: &str, seq: u64) -> Vec<u8> {
    let mut k = device.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn ikey(kind: u8, who: &str, device: &str, seq: u64) -> Vec<u8> {
    let mut k = vec![kind];
    k.extend_from_slice(who.as_bytes());
    k.push(0);
    k.extend_from_slice(&ekey(device, seq));
    k
}

fn index_event(batch: &mut sled::Batch, dev: &str, e: &AuditEvent) {
    if let Some(p) = &e.patient {
        batch.insert(ikey(b'p', &p.as_digits(), dev, e.seq), &[][..]);
    }
    if let Some(s) = &e.staff_id {
        batch.insert(ikey(b's', s, dev, e.seq), &[][..]);
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: "audit".into(),
        why: e.to_string(),
    }
}

impl AuditRepo {
    /// Open the repository in the hub's database.
    pub fn open(db: &sled::Db) -> Result<AuditRepo, StoreError> {
        Ok(AuditRepo {
            db: db.clone(),
            events: db.open_tree("audit_events")?,
            index: db.open_tree("audit_index")?,
            devices: db.open_tree("audit_devices")?,
            write: Mutex::new(()),
        })
    }

    /// A device's audit summary.
    pub fn device(&self, device: &str) -> Result<DeviceAudit, StoreError> {
        match self.devices.get(device.as_bytes())? {
            None => Ok(DeviceAudit::default()),
            Some(v) => cbor::from_slice(&v).map_err(corrupt),
        }
    }

    /// Store an upload from `device` (the authenticated unit). Events of another device are
    /// refused. Durable before returning.
    pub fn store(&self, device: &DeviceId, events: &[AuditEvent]) -> Result<Stored, StoreError> {
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let dev = device.as_str();
        let mut d = self.device(dev)?;
        let mut out = Stored {
            upto_seq: d.last_seq,
            ..Stored::default()
        };
        let mut ev_batch = sled::Batch::default();
        let mut ix_batch = sled::Batch::default();
        let problem = |d: &mut DeviceAudit, out: &mut Stored, p: String| {
            if d.problems.len() < 1_000 {
                d.problems.push(p.clone());
            }
            out.problems.push(p);
        };
        for e in events {
            if e.device_id != *device {
                problem(
                    &mut d,
                    &mut out,
                    format!("seq {}: event of another device refused", e.seq),
                );
                continue;
            }
            let k = ekey(dev, e.seq);
            if let Some(old) = self.events.get(&k)? {
                let old: AuditEvent = cbor::from_slice(&old).map_err(corrupt)?;
                if old.hash == e.hash {
                    out.duplicates += 1;
                    // Re-index a replayed event: a database written before the three trees
                    // were committed in one transaction may hold the event without its index
                    // entries (killed between two trees' writes), and a replay is the moment
                    // to make "who accessed patient X" whole again. Idempotent.
                    index_event(&mut ix_batch, dev, e);
                } else {
                    problem(
                        &mut d,
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
                    &mut d,
                    &mut out,
                    format!("seq {}: hash does not match its content", e.seq),
                );
            }
            if e.seq == d.last_seq + 1 {
                if e.prev_hash != d.last_hash.unwrap_or(GENESIS) {
                    problem(
                        &mut d,
                        &mut out,
                        format!("seq {}: chain broken (prev_hash does not match)", e.seq),
                    );
                }
            } else if e.seq > d.last_seq + 1 {
                let msg = format!("gap: seq {} to {} missing", d.last_seq + 1, e.seq - 1);
                problem(&mut d, &mut out, msg);
            }
            let bytes = cbor::to_vec(e).map_err(corrupt)?;
            ev_batch.insert(k, bytes);
            index_event(&mut ix_batch, dev, e);
            if e.seq > d.last_seq {
                d.last_seq = e.seq;
                d.last_hash = Some(e.hash);
            }
            d.events += 1;
            out.new += 1;
            out.upto_seq = out.upto_seq.max(e.seq);
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

    /// Events about a patient (`kind = b'p'`, NHS digits) or by a staff member (`b's'`),
    /// newest first, at most `limit`.
    pub fn query(&self, kind: u8, who: &str, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let mut prefix = vec![kind];
        prefix.extend_from_slice(who.as_bytes());
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.index.scan_prefix(&prefix) {
            let (k, _) = kv?;
            if let Some(e) = self.load(&k[prefix.len()..])? {
                out.push(e);
            }
        }
        out.sort_by(|a, b| b.recorded.cmp(&a.recorded).then(b.seq.cmp(&a.seq)));
        out.truncate(limit);
        Ok(out)
    }

    /// Re-verify a device's whole stored trail: continuity from its first seq and the chain.
    pub fn verify(&self, device: &str) -> Result<Value, StoreError> {
        let mut prefix = device.as_bytes().to_vec();
        prefix.push(0);
        let mut count = 0u64;
        let mut first = None;
        let mut last = 0u64;
        let mut prev: Option<Hash32> = None;
        let mut gaps = Vec::new();
        let mut breaks = Vec::new();
        for kv in self.events.scan_prefix(&prefix) {
            let (_, v) = kv?;
            let e: AuditEvent = cbor::from_slice(&v).map_err(corrupt)?;
            count += 1;
            if first.is_none() {
                first = Some(e.seq);
                if e.seq != 1 {
                    gaps.push(json!({"from": 1, "to": e.seq - 1}));
                }
                if e.seq == 1 && e.prev_hash != GENESIS {
                    breaks.push(e.seq);
                }
            } else if e.seq != last + 1 {
                gaps.push(json!({"from": last + 1, "to": e.seq - 1}));
            } else if prev.is_some_and(|p| p != e.prev_hash) {
                breaks.push(e.seq);
            }
            if !e.hash_ok() {
                breaks.push(e.seq);
            }
            prev = Some(e.hash);
            last = e.seq;
        }
        breaks.sort_unstable();
        breaks.dedup();
        Ok(json!({
            "device_id": device,
            "events": count,
            "first_seq": first,
            "last_seq": if count > 0 { Some(last) } else { None },
            "gaps": gaps,
            "breaks": breaks,
            "chain_ok": breaks.is_empty(),
            "problems_on_arrival": self.device(device)?.problems,
        }))
    }

    /// Every event recorded at or after `since`, in device and seq order, for export.
    pub fn since(&self, since: UnixMillis, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let mut out = Vec::new();
        for kv in self.events.iter() {
            let (_, v) = kv?;
            let e: AuditEvent = cbor::from_slice(&v).map_err(corrupt)?;
            if e.recorded >= since {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
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
        for seq in [3u64, 4] {
            repo.index
                .remove(ikey(b'p', "9990000018", "LAS-AMB-0001", seq))
                .unwrap();
            repo.index
                .remove(ikey(b's', "555000111222", "LAS-AMB-0001", seq))
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
