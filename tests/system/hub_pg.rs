//! The hub on PostgreSQL with the real binaries (issue 18): `edge-provision hub --database`,
//! `edge-hub migrate`, offline ingest killed with SIGKILL and run again, a unit's cold sync
//! across a SIGKILL of the hub, the feed checked for holes and duplicates in the database, and
//! PostgreSQL restarted under the running hub, and a clear error with a non-zero exit when the
//! database cannot be reached.
//!
//! Each test makes its own database on `postgres://postgres@127.0.0.1:5432` (psql) and drops
//! it. Without a server the tests are skipped with a note, except in CI (`CI=true`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use kerbside_tests::bin;
use kerbside_tests::fleet::{wait_for, Fleet};

/// A throwaway database. It holds a share of [`CLUSTER`] for its whole life, so the one test
/// that stops and restarts PostgreSQL (which takes the lock alone) never does so under another
/// test's hub: the tests of this file run in parallel in one process.
struct Db {
    name: String,
    _cluster: Cluster,
}

/// Shared by every test that uses the cluster; taken alone by the test that restarts it.
static CLUSTER: RwLock<()> = RwLock::new(());

#[allow(dead_code)] // held for its drop
enum Cluster {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

fn psql(db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", db])
        .args(["-v", "ON_ERROR_STOP=1", "-Atc", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Db {
    /// A database on a cluster other tests may use at the same time.
    fn create() -> Option<Db> {
        Db::create_with(Cluster::Shared(
            CLUSTER.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }

    /// A database on a cluster no other test uses until this one is dropped: for a test that
    /// stops PostgreSQL.
    fn create_alone() -> Option<Db> {
        Db::create_with(Cluster::Alone(
            CLUSTER.write().unwrap_or_else(|e| e.into_inner()),
        ))
    }

    fn create_with(cluster: Cluster) -> Option<Db> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kerbside_sys_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        match psql("postgres", &format!("CREATE DATABASE {name}")) {
            Ok(_) => Some(Db {
                name,
                _cluster: cluster,
            }),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("PostgreSQL on 127.0.0.1:5432 is required in CI: {e}")
            }
            Err(e) => {
                eprintln!("note: PostgreSQL system test skipped: {e}");
                None
            }
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    fn q(&self, sql: &str) -> String {
        psql(&self.name, sql).unwrap()
    }

    fn n(&self, sql: &str) -> u64 {
        self.q(sql).parse().unwrap()
    }

    /// The feed holds exactly positions oldest..=head, each once.
    fn assert_feed_whole(&self) -> u64 {
        let head = self.n("SELECT head FROM feed_head");
        let (count, distinct) = (
            self.n("SELECT count(*) FROM feed"),
            self.n("SELECT count(DISTINCT seq) FROM feed"),
        );
        let min = self.n("SELECT coalesce(min(seq), 1) FROM feed");
        let max = self.n("SELECT coalesce(max(seq), 0) FROM feed");
        assert_eq!((count, distinct), (head, head), "one entry per position");
        assert_eq!((min, max), (1, head), "no hole, nothing past the head");
        head
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Stop or start the local PostgreSQL cluster (Debian's pg_ctlcluster; after `start`, wait
/// until it answers); `false` (with a note) where that is not possible here.
fn pg_cluster(action: &str) -> bool {
    let ok = Command::new("sh")
        .args([
            "-c",
            &format!("v=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1) && [ -n \"$v\" ] && pg_ctlcluster \"$v\" main {action}"),
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("note: cannot {action} PostgreSQL here (pg_ctlcluster); that step is skipped");
        return false;
    }
    action != "start"
        || wait_for(Duration::from_secs(30), || {
            Ok(psql("postgres", "SELECT 1").is_ok())
        })
        .is_ok()
}

fn hub_toml(f: &Fleet) -> std::path::PathBuf {
    f.hub_dir.join("hub.toml")
}

fn edge_hub(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(bin("edge-hub").unwrap())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn a_hub_on_postgres_ingests_and_syncs_across_kill_9() {
    // This test stops PostgreSQL part-way: no other test may be using it then.
    let Some(db) = Db::create_alone() else { return };
    let secret = "pw-0f-the-test-db-1234";
    let tmp = tempfile::tempdir().unwrap();
    let pw = tmp.path().join("db.pass");
    std::fs::write(&pw, format!("{secret}\n")).unwrap();
    let mut f = Fleet::with_hub_args(&[
        "--database",
        &db.url(),
        "--database-password-file",
        pw.to_str().unwrap(),
    ])
    .unwrap();
    let toml = std::fs::read_to_string(hub_toml(&f)).unwrap();
    assert!(toml.contains("backend = \"postgres\""), "{toml}");
    assert!(!toml.contains(secret), "the password is not in hub.toml");

    // Migrations: applied once, then nothing to do.
    let out = edge_hub(&["migrate"], &hub_toml(&f));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("applied 1, 2, 3, 4, 5, 6, 7"),
        "{text}"
    );
    let out = edge_hub(&["migrate"], &hub_toml(&f));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("nothing to apply"), "{text}");

    // An offline ingest killed with SIGKILL leaves whole chunks; run again, it completes with
    // every patient once in the feed.
    const N: u32 = 10_000;
    let data = f.synth("a.ndjson", N, 5).unwrap();
    let mut child = Command::new(bin("edge-hub").unwrap())
        .arg("ingest")
        .arg("--config")
        .arg(hub_toml(&f))
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut killed_mid_way = false;
    while t.elapsed() < Duration::from_secs(60) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if db.n("SELECT head FROM feed_head") > 0 {
            child.kill().unwrap();
            killed_mid_way = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    let partial = db.assert_feed_whole();
    eprintln!("ingest killed mid-way: {killed_mid_way}, {partial} feed entries committed");
    f.ingest_offline(&data).unwrap();
    assert_eq!(db.assert_feed_whole(), u64::from(N), "each patient once");
    assert_eq!(
        db.n("SELECT count(*) FROM patient_current WHERE NOT withdrawn"),
        u64::from(N)
    );

    // A unit's cold sync with the hub killed (SIGKILL) and restarted part-way.
    let u = f.enrol("LAS-AMB-0001", &[]).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    if let Err(e) = wait_for(
        Duration::from_secs(60),
        || Ok(f.records(u).unwrap_or(0) > 0),
    ) {
        panic!(
            "{e}\n--- unit log\n{}\n--- hub log\n{}",
            f.unit_log(u),
            f.hub_log()
        );
    }
    let at_kill = f.records(u).unwrap_or(0);
    f.stop_hub(true).unwrap();
    f.start_hub().unwrap();
    f.wait_records(u, u64::from(N), Duration::from_secs(120))
        .unwrap();
    eprintln!("hub killed with the unit at {at_kill} of {N} records; it caught up");
    // The unit's record at the hub (a device row in the database, not a file).
    wait_for(Duration::from_secs(20), || {
        Ok(db.n("SELECT count(*) FROM device WHERE id = 'LAS-AMB-0001'") == 1)
    })
    .unwrap();
    assert_eq!(db.assert_feed_whole(), u64::from(N));

    // Audit of record in the database: reads on the unit are uploaded into `audit_event`,
    // each once, and "who accessed patient X" answers from there.
    let nhs = kerbside_tests::fleet::nhs_numbers(&data).unwrap();
    let tok = f
        .clinician_token(0xA0D17, "555000111222", "PARAMEDIC, Test")
        .unwrap();
    for p in &nhs[..5] {
        let (code, body) = kerbside_tests::fleet::lookup(&f.units[u].lan, &tok, p, &[]).unwrap();
        assert_eq!(code, 200, "{body}");
    }
    let reads_of = |p: &str| {
        db.n(&format!(
            "SELECT count(*) FROM audit_event WHERE device = 'LAS-AMB-0001' AND patient = '{p}'"
        ))
    };
    wait_for(Duration::from_secs(30), || Ok(reads_of(&nhs[0]) == 1))
        .unwrap_or_else(|e| panic!("{e}\n--- hub log\n{}", f.hub_log()));
    wait_for(Duration::from_secs(30), || Ok(reads_of(&nhs[4]) == 1)).unwrap();
    assert_eq!(
        db.n("SELECT count(*) FROM audit_device WHERE device = 'LAS-AMB-0001'"),
        1
    );
    let (code, body) = f
        .admin("GET", &format!("/admin/audit?patient={}", nhs[0]), None)
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("555000111222"), "{body}");

    // PostgreSQL stopped under the running hub and started again: while it is down the unit
    // answers from what it holds (and audits it); the hub reconnects by itself, and a change
    // ingested afterwards reaches the unit. The stall is measured.
    if pg_cluster("stop") {
        let down = Instant::now();
        let (code, _) = kerbside_tests::fleet::lookup(&f.units[u].lan, &tok, &nhs[6], &[]).unwrap();
        assert_eq!(
            code, 200,
            "the unit answers while the hub's database is down"
        );
        let more = f.synth("b.ndjson", N + 10, 5).unwrap();
        let text = std::fs::read_to_string(&more).unwrap();
        let last10: String = text
            .lines()
            .skip(N as usize)
            .map(|l| format!("{l}\n"))
            .collect();
        let (code, body) = f.admin("POST", "/admin/ingest", Some(&last10)).unwrap();
        assert_ne!(code, 200, "no ingest without the database: {body}");
        assert!(pg_cluster("start"), "PostgreSQL starts again");
        let up = Instant::now();
        let mut answer = (0, String::new());
        wait_for(Duration::from_secs(60), || {
            answer = f.admin("POST", "/admin/ingest", Some(&last10))?;
            Ok(answer.0 == 200)
        })
        .unwrap_or_else(|e| panic!("{e}: {answer:?}\n{}", f.hub_log()));
        let ingested = up.elapsed();
        f.wait_records(u, u64::from(N) + 10, Duration::from_secs(60))
            .unwrap();
        eprintln!(
            "PostgreSQL down {:?}; once it answered, the hub took an ingest after {ingested:?} and the unit had the change {:?} after that",
            up - down,
            up.elapsed() - ingested
        );
        assert_eq!(db.assert_feed_whole(), u64::from(N) + 10);
        // Audit still reaches the database after its restart, including the read made while
        // it was down.
        let (code, _) = kerbside_tests::fleet::lookup(&f.units[u].lan, &tok, &nhs[5], &[]).unwrap();
        assert_eq!(code, 200);
        wait_for(Duration::from_secs(60), || {
            Ok(reads_of(&nhs[5]) == 1 && reads_of(&nhs[6]) == 1)
        })
        .unwrap();
    }
    let log = f.hub_log();
    assert!(
        log.contains("Postgres"),
        "the hub says which store it serves from: {log}"
    );
    assert!(!log.contains(secret), "the password is never logged");
    f.stop_unit(u, false).unwrap();
    f.stop_hub(false).unwrap();
}

#[test]
fn an_unreachable_database_is_a_clear_error_and_a_non_zero_exit() {
    let f =
        Fleet::with_hub_args(&["--database", "postgres://postgres@127.0.0.1:1/kerbside"]).unwrap();
    for args in [&["serve"][..], &["migrate"][..]] {
        let t = Instant::now();
        let out = edge_hub(args, &hub_toml(&f));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("cannot connect to the database"),
            "{args:?}: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{args:?} took {:?}",
            t.elapsed()
        );
    }
}

/// The other hub of a two-hub test: its bundle and address, swapped into the [`Fleet`] to start,
/// stop or call it with the fleet's helpers.
struct OtherHub {
    dir: std::path::PathBuf,
    admin: String,
    quic: String,
    child: Option<std::process::Child>,
}

impl OtherHub {
    /// A second hub bundle of `f`'s fleet (`hub-b`), on the same database, on ports of its own.
    fn provision(f: &Fleet, db: &Db) -> OtherHub {
        let b = OtherHub {
            dir: f.path("hub-b"),
            admin: format!("127.0.0.1:{}", kerbside_tests::fleet::tcp_port().unwrap()),
            quic: format!("127.0.0.1:{}", kerbside_tests::fleet::udp_port().unwrap()),
            child: None,
        };
        kerbside_tests::fleet::run_ok(
            Command::new(bin("edge-provision").unwrap())
                .args(["hub", "--fleet"])
                .arg(&f.fleet)
                .args([
                    "--name",
                    "127.0.0.1",
                    "--listen",
                    &b.quic,
                    "--admin",
                    &b.admin,
                ])
                .args(["--database", &db.url(), "--out"])
                .arg(&b.dir),
        )
        .unwrap();
        b
    }

    /// Make `f` address this hub (and this hold the one `f` addressed); call again to swap back.
    fn swap(&mut self, f: &mut Fleet) {
        std::mem::swap(&mut self.dir, &mut f.hub_dir);
        std::mem::swap(&mut self.admin, &mut f.admin);
        std::mem::swap(&mut self.quic, &mut f.hub_quic);
        std::mem::swap(&mut self.child, &mut f.hub);
    }
}

/// Several hubs on one database (issue 18 item 4): a unit enrolled with two hubs syncs from the
/// first; the first is killed (SIGKILL) and the unit resumes from its cursor on the second,
/// which has every change the first wrote (one feed) and receives the unit's audit (one
/// repository); then the other way round.
#[test]
fn a_unit_fails_over_between_two_hubs_on_one_database() {
    let Some(db) = Db::create() else { return };
    let mut f = Fleet::with_hub_args(&["--database", &db.url()]).unwrap();
    let mut b = OtherHub::provision(&f, &db);
    let out = edge_hub(&["migrate"], &hub_toml(&f));
    assert!(out.status.success());
    const N: u32 = 300;
    let data = f.synth("a.ndjson", N + 20, 9).unwrap();
    let text = std::fs::read_to_string(&data).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first = f.path("first.ndjson");
    std::fs::write(&first, lines[..N as usize].join("\n") + "\n").unwrap();
    f.ingest_offline(&first).unwrap();

    // Enrolled with both hubs, one --hub-name for both.
    let b_quic = b.quic.clone();
    let u = f.enrol("LAS-AMB-0001", &["--hub", &b_quic]).unwrap();
    let toml = std::fs::read_to_string(f.units[u].dir.join("edge.toml")).unwrap();
    assert!(toml.contains(&b_quic), "both hubs in edge.toml: {toml}");
    f.start_hub().unwrap();
    b.swap(&mut f);
    f.start_hub().unwrap();
    b.swap(&mut f);
    f.start_unit(u).unwrap();
    f.wait_records(u, u64::from(N), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", f.unit_log(u)));
    let on = |f: &Fleet| {
        f.status(u).unwrap()["hub"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert!(on(&f).contains(&f.hub_quic), "on the first hub: {}", on(&f));

    // The first hub dies; a change ingested through the second reaches the unit there.
    f.stop_hub(true).unwrap();
    let killed = Instant::now();
    b.swap(&mut f);
    let more = lines[N as usize..(N + 10) as usize].join("\n") + "\n";
    let (code, body) = f.admin("POST", "/admin/ingest", Some(&more)).unwrap();
    assert_eq!(code, 200, "{body}");
    f.wait_records(u, u64::from(N) + 10, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", f.unit_log(u)));
    eprintln!(
        "first hub killed: the unit had the second hub's change {:?} later",
        killed.elapsed()
    );
    assert!(
        on(&f).contains(&f.hub_quic),
        "on the second hub: {}",
        on(&f)
    );
    let row = f.device_row("LAS-AMB-0001").unwrap();
    assert_eq!(row["connected"], true, "{row}");

    // A read on the unit is audited through the second hub, once.
    let nhs = kerbside_tests::fleet::nhs_numbers(&data).unwrap();
    let tok = f
        .clinician_token(0xFA11, "555000111333", "PARAMEDIC, Failover")
        .unwrap();
    let (code, _) = kerbside_tests::fleet::lookup(&f.units[u].lan, &tok, &nhs[0], &[]).unwrap();
    assert_eq!(code, 200);
    let reads = || {
        db.n(&format!(
            "SELECT count(*) FROM audit_event WHERE device = 'LAS-AMB-0001' AND patient = '{}'",
            nhs[0]
        ))
    };
    wait_for(Duration::from_secs(30), || Ok(reads() == 1)).unwrap();

    // And back: the first hub returns, the second dies.
    b.swap(&mut f);
    f.start_hub().unwrap();
    b.swap(&mut f);
    f.stop_hub(true).unwrap();
    b.swap(&mut f);
    let last = lines[(N + 10) as usize..].join("\n") + "\n";
    let (code, body) = f.admin("POST", "/admin/ingest", Some(&last)).unwrap();
    assert_eq!(code, 200, "{body}");
    f.wait_records(u, u64::from(N) + 20, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}", f.unit_log(u)));
    assert!(
        on(&f).contains(&f.hub_quic),
        "back on the first hub: {}",
        on(&f)
    );
    assert_eq!(db.assert_feed_whole(), u64::from(N) + 20);
    assert_eq!(reads(), 1, "the read stored once");
    f.stop_unit(u, false).unwrap();
    f.stop_hub(false).unwrap();
}

/// Faults on PostgreSQL (issue 18 item 7): a hub killed (SIGKILL) while a unit uploads a large
/// audit backlog loses no event and stores none twice; a hub killed during an admin-API ingest
/// leaves whole chunks only, and the same ingest sent again completes with each patient once.
#[test]
fn kill_9_during_audit_upload_and_admin_ingest_loses_nothing_on_postgres() {
    let Some(db) = Db::create() else { return };
    let mut f = Fleet::with_hub_args(&["--database", &db.url()]).unwrap();
    const N: u32 = 2_000;
    let data = f.synth("a.ndjson", N, 13).unwrap();
    f.ingest_offline(&data).unwrap();
    let u = f.enrol("LAS-AMB-0001", &[]).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, u64::from(N), Duration::from_secs(60))
        .unwrap();

    // The hub goes away; the crew keeps reading: a backlog of audit events on the unit.
    f.stop_hub(false).unwrap();
    let nhs = kerbside_tests::fleet::nhs_numbers(&data).unwrap();
    let reads = 1_500usize;
    for (k, chunk) in nhs
        .iter()
        .cycle()
        .take(reads)
        .collect::<Vec<_>>()
        .chunks(10)
        .enumerate()
    {
        let tok = f
            .clinician_token(0xB0_0000 + k as u128, "555000111777", "PARAMEDIC, Backlog")
            .unwrap();
        for p in chunk {
            let (code, body) =
                kerbside_tests::fleet::lookup(&f.units[u].lan, &tok, p, &[]).unwrap();
            assert_eq!(code, 200, "{body}");
        }
    }
    let pending = f.status(u).unwrap()["audit_pending"].as_u64().unwrap_or(0);
    assert!(
        pending >= reads as u64,
        "{pending} events waiting for the hub"
    );
    let stored = || db.n("SELECT count(*) FROM audit_event WHERE device = 'LAS-AMB-0001'");
    let before = stored();

    // The hub returns and is killed as soon as the upload has begun.
    f.start_hub().unwrap();
    let t = Instant::now();
    while stored() == before && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    f.stop_hub(true).unwrap();
    let at_kill = stored();
    eprintln!(
        "hub killed with {} of {pending} backlog events stored",
        at_kill - before
    );
    f.start_hub().unwrap();
    wait_for(Duration::from_secs(60), || {
        Ok(f.status(u)?["audit_pending"].as_u64() == Some(0))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", f.unit_log(u)));
    let last_seq = f.status(u).unwrap()["audit_uploaded_seq"].as_u64().unwrap();
    assert_eq!(
        stored(),
        last_seq,
        "every event of the unit stored, each once"
    );
    let (code, body) = f
        .admin("GET", "/admin/audit/verify?device=LAS-AMB-0001", None)
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["chain_ok"], true, "{v}");
    assert_eq!(v["gaps"].as_array().map(Vec::len), Some(0), "{v}");

    // An admin-API ingest killed part-way: whole chunks or nothing; sent again, complete.
    const M: u32 = 10_000;
    let more = f.synth("b.ndjson", N + M, 13).unwrap();
    let text = std::fs::read_to_string(&more).unwrap();
    let body: String = text
        .lines()
        .skip(N as usize)
        .map(|l| format!("{l}\n"))
        .collect();
    let head0 = db.n("SELECT head FROM feed_head");
    let admin = f.admin.clone();
    let token = f.fleet_token.clone();
    let send = {
        let body = body.clone();
        std::thread::spawn(move || {
            kerbside_tests::fleet::http_with(
                "POST",
                &format!("http://{admin}/admin/ingest"),
                Some(&body),
                &[("Authorization", &format!("Bearer {token}"))],
            )
        })
    };
    let t = Instant::now();
    while db.n("SELECT head FROM feed_head") == head0 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    f.stop_hub(true).unwrap();
    let _ = send.join();
    let partial = db.assert_feed_whole() - head0;
    eprintln!("admin ingest killed with {partial} of {M} feed entries committed");
    assert!(partial < u64::from(M), "killed part-way ({partial})");
    f.start_hub().unwrap();
    let (code, answer) = f.admin("POST", "/admin/ingest", Some(&body)).unwrap();
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        db.assert_feed_whole(),
        head0 + u64::from(M),
        "each new patient once"
    );
    assert_eq!(
        db.n("SELECT count(*) FROM patient_current WHERE NOT withdrawn"),
        u64::from(N + M)
    );
    f.wait_records(u, u64::from(N + M), Duration::from_secs(120))
        .unwrap();
    f.stop_unit(u, false).unwrap();
    f.stop_hub(false).unwrap();
}

/// Hubs on one database decide on one CRL, token deny list and inventory (issue 18 item 2):
/// hub B's own files are stale copies taken before the unit was enrolled, and only hub A reads
/// the fleet directory. B still admits the unit (the database's inventory lists it); the unit
/// is revoked and an operator's tokens revoked in the fleet directory while A is down; when A
/// starts it offers the newer files to the database, and B — where the unit is connected —
/// closes the unit's connection and refuses the operator, though its own files never changed.
#[test]
fn a_revocation_reaching_one_hub_reaches_every_hub_on_the_database() {
    let Some(db) = Db::create() else { return };
    let mut f = Fleet::with_hub_args(&["--database", &db.url()]).unwrap();
    let mut b = OtherHub::provision(&f, &db);
    // Hub B reads stale copies of the fleet's files, taken now.
    let stale = f.path("hub-b-stale");
    std::fs::create_dir_all(&stale).unwrap();
    let b_toml = b.dir.join("hub.toml");
    let mut text = std::fs::read_to_string(&b_toml).unwrap();
    for name in ["crl.pem", "inventory.json", "token-denylist.cbor"] {
        std::fs::copy(f.fleet.join(name), stale.join(name)).unwrap();
        let from = f.fleet.join(name).display().to_string();
        assert!(text.contains(&from), "{name} in hub.toml: {text}");
        text = text.replace(&from, &stale.join(name).display().to_string());
    }
    std::fs::write(&b_toml, text).unwrap();
    let stale_crl = std::fs::read(stale.join("crl.pem")).unwrap();
    assert!(edge_hub(&["migrate"], &hub_toml(&f)).status.success());
    let data = f.synth("a.ndjson", 50, 11).unwrap();
    f.ingest_offline(&data).unwrap();
    let b_quic = b.quic.clone();
    let u = f.enrol("LAS-AMB-0007", &["--hub", &b_quic]).unwrap();

    // A offers the fleet's files (the unit now in the inventory), then stops; the unit
    // connects to B, whose own inventory file does not list it.
    f.start_hub().unwrap();
    wait_for(Duration::from_secs(30), || {
        Ok(db.n("SELECT count(*) FROM fleet_document") == 3)
    })
    .unwrap();
    f.stop_hub(false).unwrap();
    b.swap(&mut f);
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 50, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", f.unit_log(u), f.hub_log()));
    assert_eq!(f.device_row("LAS-AMB-0007").unwrap()["connected"], true);
    let (code, body) = f.admin("GET", "/admin/alerts", None).unwrap();
    assert_eq!(code, 200, "the privacy officer is let in: {body}");

    // Revoked in the fleet directory, which only A reads; A is down.
    let crl_before = db.n("SELECT version FROM fleet_document WHERE kind = 'crl'");
    kerbside_tests::fleet::run_ok(
        Command::new(bin("edge-provision").unwrap())
            .args(["revoke", "--fleet"])
            .arg(&f.fleet)
            .args(["--device-id", "LAS-AMB-0007"]),
    )
    .unwrap();
    kerbside_tests::fleet::run_ok(
        Command::new(bin("edge-provision").unwrap())
            .args(["token-revoke", "--fleet"])
            .arg(&f.fleet)
            .args(["--operator-id", "IG-0001"]),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        f.device_row("LAS-AMB-0007").unwrap()["connected"],
        true,
        "nothing has told B yet"
    );

    // A starts: B closes the unit's connection and refuses the revoked operator.
    b.swap(&mut f);
    f.start_hub().unwrap();
    let t = Instant::now();
    b.swap(&mut f);
    wait_for(Duration::from_secs(30), || {
        let row = f.device_row("LAS-AMB-0007")?;
        Ok(row["connected"] == false && row["revoked"] == true)
    })
    .unwrap_or_else(|e| panic!("{e}: still connected at B: {}", f.hub_log()));
    eprintln!(
        "revocation through hub A's files → closed at hub B: {:?}",
        t.elapsed()
    );
    assert!(
        db.n("SELECT version FROM fleet_document WHERE kind = 'crl'") > crl_before,
        "the newer CRL is the database's"
    );
    wait_for(Duration::from_secs(30), || {
        let (code, _) = f.admin("GET", "/admin/alerts", None)?;
        Ok(code == 401 || code == 403)
    })
    .unwrap_or_else(|e| panic!("{e}: the revoked operator still let in at B"));
    // Its reconnections are refused at both hubs.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(f.device_row("LAS-AMB-0007").unwrap()["connected"], false);
    let log = f.hub_log();
    assert!(
        log.contains("the fleet CRL from the database is in force"),
        "{log}"
    );
    // B's own files never changed.
    assert_eq!(std::fs::read(stale.join("crl.pem")).unwrap(), stale_crl);
    f.stop_unit(u, false).unwrap();
    f.stop_hub(false).unwrap();
    b.swap(&mut f);
    f.stop_hub(false).unwrap();
}
