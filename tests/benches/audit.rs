//! Audit benchmarks:
//!
//! 1. Journal append latency at 200 accesses/s with fsync (the journal the daemon uses, on this
//!    machine's disk), p50/p99 — and with 64 concurrent writers (group commit).
//! 2. Upload of a 100,000-event backlog to the real hub over QUIC (loopback), events/s.
//!
//! `cargo bench -p kerbside-tests --bench audit [-- EVENTS]`

use std::time::{Duration, Instant};

use edge_daemon::journal::{Journal, JournalConfig};
use edge_proto::audit::*;
use edge_proto::ids::{DeviceId, StaffRole};
use edge_proto::time::UnixMillis;
use kerbside_tests::fleet::{wait_for, Fleet};

fn event(dev: &DeviceId, i: u64) -> AuditEvent {
    AuditEvent {
        schema: AUDIT_SCHEMA,
        event_id: uuid_from_bytes((u128::from(i) << 8).to_be_bytes()),
        device_id: dev.clone(),
        seq: 0,
        prev_hash: Hash32::default(),
        hash: Hash32::default(),
        recorded: UnixMillis(kerbside_tests::fleet::now_ms()),
        clock_offset_ms: 0,
        action: AuditAction::Read,
        outcome: AuditOutcome::Ok,
        outcome_reason: None,
        staff_id: Some("555000111222".into()),
        staff_name: Some("PARAMEDIC, Test".into()),
        role: Some(StaffRole::Clinical),
        org_ods: None,
        auth: Some("0123456789abcdef0123456789abcdef".into()),
        purpose: Purpose::Treat,
        break_glass_reason: None,
        patient: edge_proto::nhs::NhsNumber::from_nine_digits(999_000_001 + (i % 5000) as u32),
        data: AccessData {
            version: Some(3),
            cache_age_s: Some(12),
            interface: Some("lan".into()),
            asked_nhs: None,
            ..AccessData::default()
        },
        client: ClientInfo::default(),
        incident_ref: None,
        offline: true,
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Runtime::new()?;
    let dev = DeviceId::parse("LAS-AMB-BENCH")?;

    // 1. Paced appends at 200/s for 10 s.
    let tmp = tempfile::tempdir()?;
    let (j, _) = Journal::open(JournalConfig::new(tmp.path().join("journal")))?;
    let mut lat = Vec::new();
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for i in 0..2_000 {
            tick.tick().await;
            let t = Instant::now();
            j.append(event(&dev, i)).await?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        anyhow::Ok(())
    })?;
    let (p50, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    // 64 concurrent writers.
    let tmp2 = tempfile::tempdir()?;
    let (j2, _) = Journal::open(JournalConfig::new(tmp2.path().join("journal")))?;
    let t = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..64u64 {
            let (j2, dev) = (j2.clone(), dev.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..100 {
                    j2.append(event(&dev, w * 1000 + i)).await?;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })?;
    let conc_rate = 6_400.0 / t.elapsed().as_secs_f64();
    let st = j2.status();

    // 2. A backlog of n events uploaded to the real hub.
    let mut f = Fleet::new()?;
    let u = f.enrol("LAS-AMB-BENCH", &[])?;
    let data = f.synth("a.ndjson", 10, 1)?;
    f.ingest_offline(&data)?;
    let data_dir = f.units[u].dir.join("data");
    let jdir = data_dir.join("journal");
    {
        // Sealed with the journal key the daemon will open (`data/keys/journal`), exactly as
        // the daemon writes its own journal: events the daemon cannot open would never upload.
        let jkeys = data_dir.join("keys").join("journal");
        let (jsealer, _) = edge_daemon::seal::Sealer::open_or_create(
            &jkeys,
            &edge_daemon::seal::FileKeyStore::new(jkeys.join("kek")),
        )?;
        let (j, _) = Journal::open_with_cipher(
            JournalConfig {
                disk_budget_bytes: 4 << 30,
                ..JournalConfig::new(&jdir)
            },
            std::sync::Arc::new(edge_daemon::seal::JournalSealer(jsealer)),
        )?;
        rt.block_on(async {
            let mut tasks = Vec::new();
            for w in 0..64u64 {
                let (j, dev) = (j.clone(), dev.clone());
                tasks.push(tokio::spawn(async move {
                    let mut i = w;
                    while i < n {
                        j.append(event(&dev, i)).await?;
                        i += 64;
                    }
                    anyhow::Ok(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        })?;
        rt.block_on(j.close());
    }
    f.start_hub()?;
    let t = Instant::now();
    f.start_unit(u)?;
    wait_for(Duration::from_secs(600), || {
        Ok(f.status(u)?["audit_pending"] == 0)
    })?;
    let up_s = t.elapsed().as_secs_f64();
    let (code, body) = f.admin("GET", "/admin/audit/verify?device=LAS-AMB-BENCH", None)?;
    anyhow::ensure!(code == 200, "verify: {body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;

    println!("Audit benchmark\n");
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| journal append at 200/s with fsync, p50 / p99 | {p50:.2} ms / {p99:.2} ms |");
    println!(
        "| journal append, 64 concurrent writers (group commit) | {conc_rate:.0} events/s, {:.1} events per fsync |",
        st.appends as f64 / st.fsyncs.max(1) as f64
    );
    println!(
        "| upload of a {n}-event backlog to the hub (QUIC, loopback, durable at the hub) | {up_s:.1} s, {:.0} events/s (incl. daemon start) |",
        n as f64 / up_s
    );
    println!(
        "| hub verification of the uploaded chain | {} events, chain_ok {} , gaps {} |",
        v["events"], v["chain_ok"], v["gaps"]
    );
    Ok(())
}
