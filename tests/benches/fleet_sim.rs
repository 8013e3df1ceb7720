//! Fleet simulation: one hub (the real sans-IO `HubSession`s over a `MemFeed`) and N units
//! (real `UnitSession`s over `MemStore`s), in process, with cohorts, a cold sync, live changes
//! pushed to connected units, and audit uploads whose chains the hub verifies. Reports hub CPU
//! time and memory per unit, and checks every unit converged to its cohort.
//!
//! `cargo bench -p kerbside-tests --bench fleet_sim [-- UNITS] [--postgres]` (default 500 units,
//! 20,000 patients). With `--postgres` the hub's sessions read the real PostgreSQL store
//! (`edge_hub::pg::PgStore`, a database of its own on `postgres://postgres@127.0.0.1:5432`,
//! dropped afterwards; `KERBSIDE_TEST_PG` names another server) instead of the in-memory feed:
//! patients go in through the hub's own ingest and live changes are re-ingested bundles.
//!
//! `cargo bench -p kerbside-tests --bench fleet_sim -- --catchup [PATIENTS]` (default 909,090,
//! always on PostgreSQL): the day-offline catch-up. PATIENTS go into the PostgreSQL store, ten
//! units with three-district cohorts cold-sync, then a day's churn (1 % of patients changed)
//! is ingested while they are away, and each unit catches up from its cursor. Reports the
//! hub's time per unit for both, and the extrapolation to 7.5 million patients.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use edge_proto::assemble::from_contribution;
use edge_proto::audit::*;
use edge_proto::fhir::ingest::parse_bundle_json;
use edge_proto::ids::{CohortSpec, DeviceId, PostcodeDistrict, StaffRole};
use edge_proto::model::Summary;
use edge_proto::sync::{
    apply_to, in_cohort, CurrentRecord, FeedBody, HubConfig, HubFeed, HubSession, MemFeed,
    MemStore, SyncState, UnitConfig, UnitEvent, UnitProfile, UnitSession,
};
use edge_proto::time::UnixMillis;
use ring::signature::{Ed25519KeyPair, KeyPair};

fn cpu_s() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

struct Unit {
    hub: HubSession,
    unit: UnitSession,
    store: MemStore,
    cohort: Vec<CohortSpec>,
}

/// Unit `i` (`LAS-AMB-000i`) with `cohort`: its hub session and its own session and cache.
fn new_unit(i: usize, cohort: Vec<CohortSpec>, key: &Arc<Ed25519KeyPair>, pk: &[u8]) -> Unit {
    let id = DeviceId::parse(&format!("LAS-AMB-{i:04}")).unwrap_or_else(|_| unreachable!());
    Unit {
        hub: HubSession::new(
            UnitProfile {
                device_id: id.clone(),
                cohort: cohort.clone(),
            },
            key.clone(),
            HubConfig {
                window_batches: 8,
                ..HubConfig::default()
            },
        ),
        unit: UnitSession::new(id, SyncState::default(), pk, UnitConfig::default()),
        store: MemStore::default(),
        cohort,
    }
}

/// Move messages both ways and apply batches until nothing moves. Returns hub CPU seconds
/// spent inside hub calls (approximated by wall time inside them on this single thread).
fn pump(
    u: &mut Unit,
    feed: &dyn HubFeed,
    now: UnixMillis,
    hub_time: &mut f64,
) -> anyhow::Result<()> {
    loop {
        let mut moved = false;
        while let Some(m) = u.unit.poll_transmit() {
            moved = true;
            let t = Instant::now();
            u.hub.handle_message(now, m, feed)?;
            *hub_time += t.elapsed().as_secs_f64();
        }
        while let Some(m) = u.hub.poll_transmit() {
            moved = true;
            u.unit.handle_message(now, m)?;
        }
        while let Some(ev) = u.unit.poll_event() {
            moved = true;
            if let UnitEvent::Apply(a) = ev {
                let report = match apply_to(&mut u.store, &a) {
                    Ok(r) => r,
                    Err(e) => match e {},
                };
                u.unit.batch_applied(a.batch_no, &report)?;
            }
        }
        if !moved {
            return Ok(());
        }
    }
}

/// A database of its own for the `--postgres` run, dropped at the end.
struct BenchDb {
    name: String,
    admin: String,
}

impl BenchDb {
    fn psql(url: &str, sql: &str) -> anyhow::Result<()> {
        let st = std::process::Command::new("psql")
            .args([url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql])
            .status()?;
        anyhow::ensure!(st.success(), "psql {sql}: {st}");
        Ok(())
    }

    fn create() -> anyhow::Result<BenchDb> {
        let admin = std::env::var("KERBSIDE_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("kerbside_fleet_sim_{}", std::process::id());
        BenchDb::psql(&admin, &format!("CREATE DATABASE {name}"))?;
        Ok(BenchDb { name, admin })
    }

    fn url(&self) -> String {
        let root = self
            .admin
            .rsplit_once('/')
            .map_or(self.admin.as_str(), |(r, _)| r);
        format!("{root}/{}", self.name)
    }
}

impl Drop for BenchDb {
    fn drop(&mut self) {
        let _ = BenchDb::psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// The hub's feed under test: in memory, or the PostgreSQL store.
enum Feed {
    Mem(MemFeed),
    Pg {
        store: Box<edge_hub::pg::PgStore>,
        _db: BenchDb,
    },
}

impl Feed {
    fn hub(&self) -> &dyn HubFeed {
        match self {
            Feed::Mem(m) => m,
            Feed::Pg { store, .. } => &**store,
        }
    }

    /// Ingest bundles (PostgreSQL: through the hub's ingest; in memory: as assembled
    /// summaries).
    fn ingest(&mut self, lines: &[String], now: UnixMillis) -> anyhow::Result<Vec<Summary>> {
        use edge_hub::store::FeedStore;
        match self {
            Feed::Mem(m) => {
                let mut out = Vec::new();
                for line in lines {
                    let s = from_contribution(&parse_bundle_json(line)?, now);
                    m.upsert_summary(&s)?;
                    out.push(s);
                }
                Ok(out)
            }
            Feed::Pg { store: p, .. } => {
                let text = lines.join("\n");
                let store: &dyn FeedStore = &**p;
                let report = store.ingest(
                    edge_hub::admin::bundles(&text),
                    now,
                    1,
                    &Default::default(),
                    &mut |_, _| {},
                )?;
                anyhow::ensure!(report.rejected.is_empty(), "{:?}", report.rejected);
                let mut out = Vec::new();
                for line in lines {
                    out.push(from_contribution(&parse_bundle_json(line)?, now));
                }
                Ok(out)
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    if let Some(i) = std::env::args().position(|a| a == "--catchup") {
        let patients = std::env::args()
            .nth(i + 1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(909_090u32);
        return catchup(patients);
    }
    let units_n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(500);
    let on_pg = std::env::args().any(|a| a == "--postgres");
    let patients = 20_000u32;
    let dir = tempfile::tempdir()?;
    let path = kerbside_tests::synth(dir.path(), patients, 11, 2)?;
    let text = std::fs::read_to_string(&path)?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut feed = if on_pg {
        let db = BenchDb::create()?;
        let store = edge_hub::pg::PgStore::connect(&edge_hub::pg::PgOptions::new(db.url()))?;
        Feed::Pg {
            store: Box::new(store),
            _db: db,
        }
    } else {
        Feed::Mem(MemFeed::new())
    };
    let t = Instant::now();
    let mut summaries = feed.ingest(&lines, UnixMillis(1))?;
    let load_s = t.elapsed().as_secs_f64();
    let districts: Vec<PostcodeDistrict> = summaries
        .iter()
        .filter_map(|s| {
            s.patient
                .postcode
                .as_deref()
                .and_then(PostcodeDistrict::of_postcode)
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("keygen"))?;
    let key =
        Arc::new(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("key"))?);
    let pk = key.public_key().as_ref().to_vec();
    let now = UnixMillis(1_800_000_000_000);

    let rss0 = rss_mib();
    let cpu0 = cpu_s();
    let mut units: Vec<Unit> = (0..units_n)
        .map(|i| {
            let cohort = if i % 10 == 0 {
                vec![CohortSpec::Flagged]
            } else {
                let picks: Vec<PostcodeDistrict> = (0..3)
                    .map(|k| districts[(i * 7 + k * 13) % districts.len()].clone())
                    .collect();
                vec![CohortSpec::Postcode(picks), CohortSpec::Flagged]
            };
            new_unit(i, cohort, &key, &pk)
        })
        .collect();
    // Cold sync of every unit.
    let mut hub_time = 0.0;
    let t = Instant::now();
    for u in &mut units {
        pump(u, feed.hub(), now, &mut hub_time)?;
    }
    let cold_s = t.elapsed().as_secs_f64();
    let cold_hub = hub_time;
    // Live changes: 1,000 new versions pushed to every connected unit.
    let t = Instant::now();
    hub_time = 0.0;
    let t_ingest = Instant::now();
    match &mut feed {
        Feed::Mem(m) => {
            let len = summaries.len();
            for k in 0..1_000usize {
                let s = &mut summaries[(k * 17) % len];
                s.version += 1;
                s.assembled_at = now;
                m.upsert_summary(s)?;
            }
        }
        Feed::Pg { .. } => {
            let len = lines.len();
            let changed: Vec<String> = (0..1_000usize)
                .map(|k| lines[(k * 17) % len].replacen("\"given\":[\"", "\"given\":[\"Z", 1))
                .collect();
            feed.ingest(&changed, now)?;
        }
    }
    let change_ingest_s = t_ingest.elapsed().as_secs_f64();
    for u in &mut units {
        let t0 = Instant::now();
        u.hub.notify_new_changes(now, feed.hub())?;
        hub_time += t0.elapsed().as_secs_f64();
        pump(u, feed.hub(), now, &mut hub_time)?;
    }
    let live_s = t.elapsed().as_secs_f64();
    let live_hub = hub_time;
    // Audit: 20 events per unit, chained on the unit, verified at the hub.
    let t = Instant::now();
    for (i, u) in units.iter().enumerate() {
        let mut prev = GENESIS;
        let mut evs = Vec::new();
        for seq in 1..=20u64 {
            let mut e = AuditEvent {
                schema: AUDIT_SCHEMA,
                event_id: uuid_from_bytes([seq as u8; 16]),
                device_id: u.unit.device_id().clone(),
                seq: 0,
                prev_hash: Hash32::default(),
                hash: Hash32::default(),
                recorded: now,
                clock_offset_ms: 0,
                action: AuditAction::Read,
                outcome: AuditOutcome::Ok,
                outcome_reason: None,
                staff_id: Some(format!("5550{i:08}")),
                staff_name: None,
                role: Some(StaffRole::Clinical),
                org_ods: None,
                auth: None,
                purpose: Purpose::Treat,
                break_glass_reason: None,
                patient: Some(summaries[(i + seq as usize) % summaries.len()].nhs_number),
                data: AccessData::default(),
                client: ClientInfo::default(),
                incident_ref: None,
                offline: false,
            };
            e.seal(seq, prev)?;
            prev = e.hash;
            evs.push(e);
        }
        verify_chain(&evs, 1, GENESIS)?;
    }
    let audit_s = t.elapsed().as_secs_f64();
    let cpu = cpu_s() - cpu0;
    let rss = rss_mib() - rss0;
    // Every unit equals the hub's current view of its cohort.
    let mut current: Vec<CurrentRecord> = Vec::new();
    let mut seen = BTreeSet::new();
    for s in &summaries {
        if seen.insert(s.nhs_number) {
            if let Some(c) = feed.hub().get(&s.nhs_number)? {
                current.push(c);
            }
        }
    }
    let mut records = 0usize;
    for u in &units {
        let want: BTreeSet<_> = current
            .iter()
            .filter(|c| matches!(c.body, FeedBody::Record(_)) && in_cohort(&u.cohort, &c.meta))
            .map(|c| (c.meta.nhs, c.version))
            .collect();
        let have: BTreeSet<_> = u
            .store
            .records
            .iter()
            .map(|(n, r)| (*n, r.version))
            .collect();
        anyhow::ensure!(want == have, "unit {} did not converge", u.unit.device_id());
        records += have.len();
    }
    let backend = if on_pg {
        "PostgreSQL store (edge_hub::pg::PgStore)"
    } else {
        "in-memory feed"
    };
    println!(
        "Fleet simulation: {units_n} units, {patients} patients, in process (sans-IO sessions), hub feed: {backend}\n"
    );
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| records held across the fleet after cold sync | {records} ({:.0} per unit) |",
        records as f64 / units_n as f64
    );
    println!(
        "| loading the feed ({} bundles) | {load_s:.2} s |",
        lines.len()
    );
    println!("| ingesting 1,000 changed bundles | {change_ingest_s:.2} s |");
    println!("| cold sync of every unit | {cold_s:.2} s wall, hub sessions {cold_hub:.2} s ({:.1} ms per unit) |", cold_hub * 1000.0 / units_n as f64);
    println!("| 1,000 live changes pushed to every unit | {live_s:.2} s wall, hub {live_hub:.2} s ({:.2} ms per unit) |", live_hub * 1000.0 / units_n as f64);
    println!("| audit: 20 events per unit chained and verified | {audit_s:.2} s |");
    println!("| process CPU (hub + units, everything above) | {cpu:.1} s |");
    println!("| memory growth (hub sessions + units' in-memory caches) | {rss:.0} MiB ({:.2} MiB per unit) |", rss / units_n as f64);
    println!("| every unit equals the hub's view of its cohort | yes |");
    Ok(())
}

/// Stream `path` into the store `chunk` lines at a time (progress on stderr).
fn ingest_file(
    store: &dyn edge_hub::store::FeedStore,
    path: &std::path::Path,
    now: UnixMillis,
) -> anyhow::Result<u64> {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(std::fs::File::open(path)?).lines();
    let mut done = 0u64;
    let t = Instant::now();
    loop {
        let chunk: Vec<String> = lines.by_ref().take(2_000).collect::<Result<_, _>>()?;
        if chunk.is_empty() {
            return Ok(done);
        }
        let text = chunk.join("\n");
        let r = store.ingest(
            edge_hub::admin::bundles(&text),
            now,
            1,
            &Default::default(),
            &mut |_, _| {},
        )?;
        anyhow::ensure!(r.rejected.is_empty(), "{:?}", r.rejected);
        done += chunk.len() as u64;
        if done % 100_000 < 2_000 {
            eprintln!(
                "fleet_sim --catchup: ingested {done} patients ({:.0}/s)",
                done as f64 / t.elapsed().as_secs_f64()
            );
        }
    }
}

/// A unit that was offline for a day of 1 % churn catches up (see the module docs).
fn catchup(patients: u32) -> anyhow::Result<()> {
    use edge_hub::store::FeedStore;
    const UNITS: usize = 10;
    let dir = tempfile::tempdir()?;
    let path = kerbside_tests::synth(dir.path(), patients, 11, 2)?;
    let db = BenchDb::create()?;
    let store = edge_hub::pg::PgStore::connect(&edge_hub::pg::PgOptions::new(db.url()))?;
    let t = Instant::now();
    ingest_file(&store, &path, UnixMillis(1))?;
    let load_s = t.elapsed().as_secs_f64();
    let everyone = store.current_metas(
        &edge_proto::sync::CohortFilter {
            specs: &[CohortSpec::All],
            critical_only: false,
        },
        None,
        usize::MAX,
    )?;
    let districts: Vec<PostcodeDistrict> = everyone
        .iter()
        .filter_map(|m| m.meta.postcode_district.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    drop(everyone);
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("keygen"))?;
    let key =
        Arc::new(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("key"))?);
    let pk = key.public_key().as_ref().to_vec();
    let now = UnixMillis(1_800_000_000_000);
    let mut units: Vec<Unit> = (0..UNITS)
        .map(|i| {
            let picks: Vec<PostcodeDistrict> = (0..3)
                .map(|k| districts[(i * 7 + k * 13) % districts.len()].clone())
                .collect();
            let cohort = vec![CohortSpec::Postcode(picks), CohortSpec::Flagged];
            new_unit(i, cohort, &key, &pk)
        })
        .collect();
    let mut cold = 0.0;
    for u in &mut units {
        pump(u, &store, now, &mut cold)?;
    }
    let held: usize = units.iter().map(|u| u.store.records.len()).sum();
    let sent_before: Vec<(u64, u64)> = units
        .iter()
        .map(|u| {
            (
                u.hub.progress().records_sent,
                u.hub.progress().record_bytes_sent,
            )
        })
        .collect();
    // A day's churn while the units are away: 1 % of patients, each a changed bundle.
    let churn: Vec<String> = {
        use std::io::BufRead;
        std::io::BufReader::new(std::fs::File::open(&path)?)
            .lines()
            .step_by(100)
            .map(|l| l.map(|l| l.replacen("\"given\":[\"", "\"given\":[\"Z", 1)))
            .collect::<Result<_, _>>()?
    };
    let head0 = store.head()?;
    let t = Instant::now();
    let text = churn.join("\n");
    let r = (&store as &dyn FeedStore).ingest(
        edge_hub::admin::bundles(&text),
        now,
        1,
        &Default::default(),
        &mut |_, _| {},
    )?;
    anyhow::ensure!(r.rejected.is_empty(), "{:?}", r.rejected);
    let churn_s = t.elapsed().as_secs_f64();
    let changes = store.head()? - head0;
    // Each unit comes back and catches up from its cursor.
    let mut catch = 0.0;
    let t = Instant::now();
    for u in &mut units {
        let t0 = Instant::now();
        u.hub.notify_new_changes(now, &store)?;
        catch += t0.elapsed().as_secs_f64();
        pump(u, &store, now, &mut catch)?;
    }
    let catch_wall = t.elapsed().as_secs_f64();
    let (mut recs, mut bytes) = (0u64, 0u64);
    for (u, (r0, b0)) in units.iter().zip(&sent_before) {
        recs += u.hub.progress().records_sent - r0;
        bytes += u.hub.progress().record_bytes_sent - b0;
    }
    // Every unit equals the hub's view of its cohort.
    for u in &units {
        let f = edge_proto::sync::CohortFilter {
            specs: &u.cohort,
            critical_only: false,
        };
        let want: BTreeSet<_> = store
            .current_metas(&f, None, usize::MAX)?
            .into_iter()
            .map(|m| (m.meta.nhs, m.version))
            .collect();
        let have: BTreeSet<_> = u
            .store
            .records
            .iter()
            .map(|(n, r)| (*n, r.version))
            .collect();
        anyhow::ensure!(want == have, "unit {} did not converge", u.unit.device_id());
    }
    let per_unit_ms = catch * 1000.0 / UNITS as f64;
    let scale = 7_500_000.0 / f64::from(patients);
    println!("Catch-up after a day offline: {patients} patients on PostgreSQL, {UNITS} units (three postcode districts + flagged each)\n");
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| loading {patients} patients (hub ingest, one chunk after another) | {load_s:.1} s ({:.0}/s) |", f64::from(patients) / load_s);
    println!(
        "| records held after cold sync | {held} ({:.0} per unit) |",
        held as f64 / UNITS as f64
    );
    println!(
        "| cold sync, hub time | {:.2} s ({:.0} ms per unit) |",
        cold,
        cold * 1000.0 / UNITS as f64
    );
    println!(
        "| the day's churn: {} changed bundles ingested | {churn_s:.2} s, {changes} feed entries |",
        churn.len()
    );
    println!("| catch-up of every unit | {catch_wall:.2} s wall; hub {catch:.2} s = {per_unit_ms:.0} ms per unit |");
    println!(
        "| sent in the catch-up | {:.0} records, {:.0} KiB per unit |",
        recs as f64 / UNITS as f64,
        bytes as f64 / 1024.0 / UNITS as f64
    );
    println!("| extrapolated to 7.5 M patients (×{scale:.2}: 75,000 changes a day) | ≈ {:.1} s of hub time per unit |", per_unit_ms * scale / 1000.0);
    println!("| every unit equals the hub's view of its cohort | yes |");
    Ok(())
}
