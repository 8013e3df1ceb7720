//! The audit repository on PostgreSQL (schema `migrations/0002_audit.sql`): the same rules as
//! the sled repository ([`crate::audit::plan_upload`], [`crate::audit::Verifier`]), shared by
//! every hub on the database.
//!
//! An upload takes the device's `audit_device` row `FOR UPDATE` first (inserting it if new), so
//! two hubs storing events of one device — a unit that failed over and replays its unacknowledged
//! batch — take turns; each sees what the other committed, and `(device, seq)` is the primary key
//! besides. Every event is stored exactly once whichever hub receives it.

use std::collections::HashMap;

use edge_proto::audit::{AuditEvent, Hash32};
use edge_proto::cbor;
use edge_proto::ids::DeviceId;
use edge_proto::time::UnixMillis;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{block_on, client, client_mut, i64_of, pg, u64_of, PgStore};
use crate::audit::{corrupt, is_alert, plan_upload, DeviceAudit, List, Position, Stored};
use crate::store::StoreError;

/// Events read per round trip when walking a device's trail or a date range.
const PAGE: i64 = 2_000;

fn hash_of(b: &[u8]) -> Result<Hash32, StoreError> {
    <[u8; 32]>::try_from(b)
        .map(Hash32)
        .map_err(|_| corrupt("a stored hash is not 32 bytes"))
}

fn device_of(r: &Row) -> Result<DeviceAudit, StoreError> {
    Ok(DeviceAudit {
        events: u64_of(r.get(0)),
        last_seq: u64_of(r.get(1)),
        last_hash: r.get::<_, Option<&[u8]>>(2).map(hash_of).transpose()?,
        problems: r.get(3),
    })
}

fn event_of(r: &Row, col: usize) -> Result<AuditEvent, StoreError> {
    cbor::from_slice(r.get::<_, &[u8]>(col)).map_err(corrupt)
}

impl PgStore {
    /// One stored event, if the repository holds it.
    pub fn audit_event(&self, device: &str, seq: u64) -> Result<Option<AuditEvent>, StoreError> {
        let c = self.conn()?;
        let row = block_on(client(&c).query_opt(
            "SELECT body FROM audit_event WHERE device = $1 AND seq = $2",
            &[&device, &i64::try_from(seq).unwrap_or(i64::MAX)],
        ))
        .map_err(pg)?;
        row.map(|r| event_of(&r, 0)).transpose()
    }

    /// Store a review of an event unless it has one; `true` when stored.
    pub fn review_insert(&self, device: &str, seq: u64, review: &[u8]) -> Result<bool, StoreError> {
        let c = self.conn()?;
        let n = block_on(client(&c).execute(
            "INSERT INTO audit_review (device, seq, review) VALUES ($1, $2, $3) \
             ON CONFLICT (device, seq) DO NOTHING",
            &[&device, &i64::try_from(seq).unwrap_or(i64::MAX), &review],
        ))
        .map_err(pg)?;
        Ok(n == 1)
    }

    /// The reviews of these events (those that have one).
    pub fn reviews_of(
        &self,
        keys: &[(String, u64)],
    ) -> Result<Vec<(String, u64, Vec<u8>)>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let devices: Vec<&str> = keys.iter().map(|(d, _)| d.as_str()).collect();
        let seqs: Vec<i64> = keys
            .iter()
            .map(|(_, s)| i64::try_from(*s).unwrap_or(i64::MAX))
            .collect();
        let c = self.conn()?;
        let rows = block_on(client(&c).query(
            "SELECT r.device, r.seq, r.review FROM audit_review r \
             JOIN unnest($1::text[], $2::int8[]) AS k(device, seq) ON r.device = k.device AND r.seq = k.seq",
            &[&devices, &seqs],
        ))
        .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                    r.get::<_, Vec<u8>>(2),
                )
            })
            .collect())
    }

    /// A device's audit summary (empty for a device never heard from).
    pub fn audit_device(&self, device: &str) -> Result<DeviceAudit, StoreError> {
        let c = self.conn()?;
        let row = block_on(client(&c).query_opt(
            "SELECT events, last_seq, last_hash, problems FROM audit_device WHERE device = $1",
            &[&device],
        ))
        .map_err(pg)?;
        row.map(|r| device_of(&r))
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Store an upload from `device`, in one transaction under the device's row lock.
    pub fn audit_store(
        &self,
        device: &DeviceId,
        events: &[AuditEvent],
    ) -> Result<Stored, StoreError> {
        self.audit_tx(device, &mut |_| Ok(events.to_vec()))
    }

    /// Seal `e` as the next event of `device`'s chain and store it, under the device's row
    /// lock: hubs sharing the database (and a name) append to one chain in turn.
    pub fn audit_append(&self, device: &DeviceId, e: AuditEvent) -> Result<Stored, StoreError> {
        let mut e = Some(e);
        self.audit_tx(device, &mut |d| {
            let mut e = e.take().ok_or_else(|| corrupt("sealed twice"))?;
            e.seal(
                d.last_seq + 1,
                d.last_hash.unwrap_or(edge_proto::audit::GENESIS),
            )
            .map_err(corrupt)?;
            Ok(vec![e])
        })
    }

    /// One upload transaction: lock the device's row, take the events `make` gives for the
    /// summary as stored, apply [`plan_upload`], insert, update the summary, commit.
    fn audit_tx(
        &self,
        device: &DeviceId,
        make: &mut dyn FnMut(&DeviceAudit) -> Result<Vec<AuditEvent>, StoreError>,
    ) -> Result<Stored, StoreError> {
        let dev = device.as_str();
        let mut c = self.conn()?;
        let tx = block_on(client_mut(&mut c).transaction()).map_err(pg)?;
        block_on(tx.execute(
            "INSERT INTO audit_device (device, events, last_seq, last_hash, problems) \
             VALUES ($1, 0, 0, NULL, '{}') ON CONFLICT (device) DO NOTHING",
            &[&dev],
        ))
        .map_err(pg)?;
        let row = block_on(tx.query_one(
            "SELECT events, last_seq, last_hash, problems FROM audit_device \
             WHERE device = $1 FOR UPDATE",
            &[&dev],
        ))
        .map_err(pg)?;
        let mut d = device_of(&row)?;
        let events = make(&d)?;
        let seqs: Vec<i64> = events
            .iter()
            .filter(|e| e.device_id == *device)
            .map(|e| i64_of(e.seq))
            .collect();
        let mut stored = HashMap::new();
        for r in block_on(tx.query(
            "SELECT seq, hash FROM audit_event WHERE device = $1 AND seq = ANY($2)",
            &[&dev, &seqs],
        ))
        .map_err(pg)?
        {
            stored.insert(u64_of(r.get(0)), hash_of(r.get::<_, &[u8]>(1))?);
        }
        let (new, _replayed, out) = plan_upload(&mut d, device, &events, &mut stored);
        if !new.is_empty() {
            let mut seq = Vec::with_capacity(new.len());
            let mut recorded = Vec::with_capacity(new.len());
            let mut patient: Vec<Option<String>> = Vec::with_capacity(new.len());
            let mut staff: Vec<Option<String>> = Vec::with_capacity(new.len());
            let mut alert = Vec::with_capacity(new.len());
            let mut hash: Vec<&[u8]> = Vec::with_capacity(new.len());
            let mut body = Vec::with_capacity(new.len());
            for e in &new {
                seq.push(i64_of(e.seq));
                recorded.push(e.recorded.0);
                patient.push(e.patient.map(|p| p.as_digits()));
                staff.push(e.staff_id.clone());
                alert.push(is_alert(e));
                hash.push(&e.hash.0);
                body.push(cbor::to_vec(e).map_err(corrupt)?);
            }
            let params: [&(dyn ToSql + Sync); 8] = [
                &dev, &seq, &recorded, &patient, &staff, &alert, &hash, &body,
            ];
            block_on(tx.execute(
                "INSERT INTO audit_event (device, seq, recorded, patient, staff, alert, hash, body) \
                 SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], \
                 $6::boolean[], $7::bytea[], $8::bytea[])",
                &params,
            ))
            .map_err(pg)?;
        }
        let last_hash: Option<&[u8]> = d.last_hash.as_ref().map(|h| &h.0[..]);
        block_on(tx.execute(
            "UPDATE audit_device SET events = $2, last_seq = $3, last_hash = $4, problems = $5 \
             WHERE device = $1",
            &[
                &dev,
                &i64_of(d.events),
                &i64_of(d.last_seq),
                &last_hash,
                &d.problems,
            ],
        ))
        .map_err(pg)?;
        block_on(tx.commit()).map_err(pg)?;
        Ok(out)
    }

    /// At most `limit` events of `list`, newest first, older than `after`.
    pub fn audit_page(
        &self,
        list: List<'_>,
        after: Option<&Position>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (filter, who): (&str, Option<&str>) = match list {
            List::Patient(p) => ("patient = $1", Some(p)),
            List::Staff(s) => ("staff = $1", Some(s)),
            List::Alerts => ("alert AND $1::text IS NULL", None),
        };
        let c = self.conn()?;
        let order = "ORDER BY recorded DESC, device DESC, seq DESC LIMIT $2";
        let rows = match after {
            None => block_on(client(&c).query(
                &format!("SELECT body FROM audit_event WHERE {filter} {order}"),
                &[&who, &limit],
            )),
            Some(p) => block_on(client(&c).query(
                &format!(
                    "SELECT body FROM audit_event WHERE {filter} \
                     AND (recorded, device, seq) < ($3, $4, $5) {order}"
                ),
                &[&who, &limit, &p.recorded.0, &p.device, &i64_of(p.seq)],
            )),
        }
        .map_err(pg)?;
        rows.iter().map(|r| event_of(r, 0)).collect()
    }

    /// Call `f` with every event of `device` in seq order, a page at a time.
    pub fn audit_each_of_device(
        &self,
        device: &str,
        f: &mut dyn FnMut(AuditEvent),
    ) -> Result<(), StoreError> {
        let c = self.conn()?;
        let mut after = 0i64;
        loop {
            let rows = block_on(client(&c).query(
                "SELECT seq, body FROM audit_event WHERE device = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3",
                &[&device, &after, &PAGE],
            ))
            .map_err(pg)?;
            for r in &rows {
                after = r.get(0);
                f(event_of(r, 1)?);
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    /// Call `f` with every event recorded in `[since, until)`, in time order, a page at a time,
    /// until it returns false.
    pub fn audit_each_between(
        &self,
        since: UnixMillis,
        until: UnixMillis,
        f: &mut dyn FnMut(AuditEvent) -> bool,
    ) -> Result<(), StoreError> {
        let c = self.conn()?;
        let mut after: Option<(i64, String, i64)> = None;
        loop {
            let rows = match &after {
                None => block_on(client(&c).query(
                    "SELECT recorded, device, seq, body FROM audit_event \
                     WHERE recorded >= $1 AND recorded < $2 \
                     ORDER BY recorded, device, seq LIMIT $3",
                    &[&since.0, &until.0, &PAGE],
                )),
                Some((t, d, s)) => block_on(client(&c).query(
                    "SELECT recorded, device, seq, body FROM audit_event \
                     WHERE recorded < $2 AND (recorded, device, seq) > ($4, $5, $6) \
                     AND recorded >= $1 ORDER BY recorded, device, seq LIMIT $3",
                    &[&since.0, &until.0, &PAGE, t, d, s],
                )),
            }
            .map_err(pg)?;
            for r in &rows {
                after = Some((r.get(0), r.get(1), r.get(2)));
                if !f(event_of(r, 3)?) {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }
}

impl PgStore {
    /// Append an operator-log entry (its JSON); durable on return.
    pub fn oplog_append(&self, entry: &[u8]) -> Result<(), StoreError> {
        let json: serde_json::Value = serde_json::from_slice(entry).map_err(corrupt)?;
        let at = edge_runtime::clock::wall_now().0;
        let c = self.conn()?;
        block_on(client(&c).execute(
            "INSERT INTO operator_log (at, entry) VALUES ($1, $2)",
            &[&at, &tokio_postgres::types::Json(&json)],
        ))
        .map_err(pg)?;
        Ok(())
    }

    /// At most `limit` entries (id and JSON), newest first, older than `before`.
    pub fn oplog_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let before = before.map_or(i64::MAX, i64_of);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.conn()?;
        let rows = block_on(client(&c).query(
            "SELECT id, entry FROM operator_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[&before, &limit],
        ))
        .map_err(pg)?;
        rows.iter()
            .map(|r| {
                let v: tokio_postgres::types::Json<serde_json::Value> = r.get(1);
                Ok((u64_of(r.get(0)), serde_json::to_vec(&v.0).map_err(corrupt)?))
            })
            .collect()
    }

    /// How many entries the operator log holds.
    pub fn oplog_len(&self) -> Result<usize, StoreError> {
        let c = self.conn()?;
        let n: i64 = block_on(client(&c).query_one("SELECT count(*) FROM operator_log", &[]))
            .map_err(pg)?
            .get(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }
}
