//! `kerbside demo`: a whole small fleet on this machine, in one process — a fresh fleet CA,
//! a hub loaded with synthetic Londoners, one enrolled unit syncing from it over QUIC (mutual
//! TLS, loopback), the LAN API and kiosk page, and a clinician's shift token. Typing `h` and
//! Enter takes the demo hub offline (and back), to see how the unit behaves without a link.
//! `--ingest FILE` adds hand-written FHIR bundles after the synthetic load (the browser tests'
//! cases: DNACPR, conflicts, restricted items, deceased and redirected records…).

use std::io::BufRead;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use edge_hub::server::{make_endpoint, serve_sync, Hub};
use edge_proto::ids::{CohortSpec, DeviceId, StaffRole, UnitRole};
use edge_proto::model::SectionStatus;
use edge_proto::nhs::NhsNumber;
use edge_provision::fleet::{EnrolPlan, Fleet, HubPlan, InitOptions, TokenRequest};
use edge_runtime::HostPort;

use edge_daemon::sync::now;

fn free_udp() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_tcp() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn say(s: &str) {
    eprintln!("demo: {s}");
}

/// The feed organisation of `--ingest` files: collection bundles that name no organisation are
/// filed under it (as a hub feed with `source = "Y03124"` would).
const INGEST_DEFAULT_SOURCE: &str = "Y03124";

/// Run the demo until Ctrl-C. `ingest`: FHIR bundle files (one Bundle, or NDJSON) loaded into
/// the hub after the synthetic Londoners.
pub fn run(
    patients: u32,
    seed: u64,
    lan: SocketAddr,
    dir: Option<PathBuf>,
    ingest: &[PathBuf],
) -> anyhow::Result<()> {
    edge_runtime::tls::install_default_provider();
    anyhow::ensure!(
        lan.ip().is_loopback(),
        "--lan must be a loopback address for the demo (it serves plain HTTP)"
    );
    // Read the extra files first, so a wrong path fails before anything is provisioned.
    let extra = ingest
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("--ingest: cannot read {}", p.display()))
                .map(|text| (p.clone(), text))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    TcpListener::bind(lan).with_context(|| {
        format!("cannot listen on {lan}: is something else using it? choose another with --lan")
    })?;
    let (dir, temporary) = match dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("kerbside-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let t0 = Instant::now();

    // The fleet: CA, hub bundle, one vehicle unit, tokens.
    let fleet_dir = dir.join("fleet");
    if !fleet_dir.join("inventory.json").exists() {
        Fleet::init(
            &fleet_dir,
            &InitOptions {
                org: "Kerbside demo fleet".into(),
                force: false,
            },
            now(),
        )?;
    }
    let mut fleet = Fleet::open(&fleet_dir)?;
    let hub_quic = HostPort::parse(&format!("127.0.0.1:{}", free_udp()?))?;
    let admin = HostPort::parse(&format!("127.0.0.1:{}", free_tcp()?))?;
    let mut hub_cfg = fleet.make_hub_bundle(
        &HubPlan {
            name: "127.0.0.1".into(),
            listen: hub_quic.clone(),
            admin: admin.clone(),
            out: dir.join("hub"),
            force: true,
            store: Default::default(),
        },
        now(),
    )?;
    // The console's unit history every 10 s rather than every 5 min, so its charts fill while
    // someone looks at the demo.
    hub_cfg.sync.history_every_s = 10;
    let device = DeviceId::parse("LAS-DEMO-0001")?;
    let unit_dir = dir.join("unit");
    fleet.enrol(
        &EnrolPlan {
            device_id: device.clone(),
            role: UnitRole::Vehicle,
            hub: hub_quic.clone(),
            hub_name: "127.0.0.1".into(),
            more_hubs: Vec::new(),
            lan: HostPort::parse(&lan.to_string())?,
            lan_names: vec!["127.0.0.1".into(), "localhost".into()],
            callsign: Some("DEMO 1".into()),
            site: None,
            cohorts: vec![CohortSpec::All],
            supervisor: Default::default(),
            replace: true,
            force: true,
            out: unit_dir.clone(),
        },
        now(),
    )?;
    let (token, _) = fleet.mint_token(
        &TokenRequest {
            staff_id: "555000111222".into(),
            staff_name: "DEMO, Paramedic".into(),
            role: StaffRole::Clinical,
            device: None,
            hours: 12,
            org: None,
        },
        now(),
    )?;
    // Operator tokens for the hub's console and admin API, one per role.
    let mut operators = Vec::new();
    for (id, name, role) in [
        (
            "OPS-DEMO",
            "DEMO, Fleet engineer",
            edge_proto::token::OperatorRole::Fleet,
        ),
        (
            "IG-DEMO",
            "DEMO, Privacy officer",
            edge_proto::token::OperatorRole::Privacy,
        ),
    ] {
        let (t, _) = fleet.mint_operator_token(
            &edge_provision::fleet::OperatorRequest {
                operator_id: id.into(),
                name: name.into(),
                role,
                hours: 8,
            },
            now(),
        )?;
        operators.push(t);
    }
    drop(fleet);
    // The demo serves plain HTTP on loopback (allowed there), so a browser needs no CA.
    let edge_toml = unit_dir.join("edge.toml");
    let text = std::fs::read_to_string(&edge_toml)?;
    std::fs::write(&edge_toml, text.replacen("tls = true", "tls = false", 1))?;
    let unit_cfg = edge_runtime::UnitConfig::load(&edge_toml)?;
    say(&format!(
        "fleet CA, hub and unit provisioned in {}",
        dir.display()
    ));

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir_for_banner = dir.clone();
    rt.block_on(async move {
        let dir = dir_for_banner;
        // The hub, loaded with synthetic Londoners.
        let hub = Arc::new(Hub::open(hub_cfg.clone())?);
        if hub.store.patient_count()? < u64::from(patients) {
            let cfg = kerbside_synth::Config::new(u64::from(patients), seed, 3, None)?;
            let mut buf = Vec::new();
            let mut last = Instant::now();
            kerbside_synth::write_ndjson(&cfg, &mut buf, 2, &mut |n| {
                if last.elapsed() > Duration::from_millis(500) {
                    last = Instant::now();
                    say(&format!("synthesising Londoners: {n} / {patients}"));
                }
            })?;
            let text = String::from_utf8(buf)?;
            let store = hub.store.clone();
            let report = tokio::task::spawn_blocking(move || {
                let lines = edge_hub::admin::bundles(&text);
                let total = lines.len();
                let mut last = Instant::now();
                store.ingest(lines, now(), 2, &Default::default(), &mut |seen, _| {
                    if last.elapsed() > Duration::from_millis(500) {
                        last = Instant::now();
                        say(&format!("hub ingesting FHIR bundles: {seen} / {total}"));
                    }
                })
            })
            .await??;
            say(&format!("hub loaded {} patients", report.accepted));
            log_offline(
                &hub,
                serde_json::json!({"file": "synthetic Londoners (kerbside-synth)"}),
                &report,
            )?;
        }
        for (path, text) in extra {
            let store = hub.store.clone();
            let report = tokio::task::spawn_blocking(move || {
                let opts = edge_proto::fhir::ingest::IngestOptions {
                    default_source: Some(edge_proto::ids::SourceId::parse(
                        INGEST_DEFAULT_SOURCE,
                    )?),
                    ..Default::default()
                };
                let lines = edge_hub::admin::bundles(&text);
                anyhow::Ok(store.ingest(lines, now(), 2, &opts, &mut |_, _| {})?)
            })
            .await??;
            let name = path.display();
            log_offline(
                &hub,
                serde_json::json!({"source": INGEST_DEFAULT_SOURCE, "file": name.to_string()}),
                &report,
            )?;
            for r in &report.rejected {
                let entry = r.entry.map(|e| format!(" entry {e}")).unwrap_or_default();
                say(&format!("{name}: line {}{entry} rejected: {}", r.line, r.error));
            }
            for w in &report.warnings {
                say(&format!("{name}: line {}: {}", w.line, w.warning));
            }
            if report.warnings_total > report.warnings.len() as u64 {
                say(&format!(
                    "{name}: {} more warnings",
                    report.warnings_total - report.warnings.len() as u64
                ));
            }
            say(&format!(
                "hub ingested {name}: {} bundles accepted, {} rejected",
                report.accepted,
                report.rejected.iter().filter(|r| r.entry.is_none()).count()
            ));
        }
        let samples = samples(&hub, 400)?;
        let (endpoint, _reloader) = make_endpoint(&hub.config)?;
        let mut sync_task = Some(tokio::spawn(serve_sync(hub.clone(), endpoint.clone())));
        let mut endpoint = Some(endpoint);
        let admin_addr = hub.config.admin.socket_addr().context("admin address")?;
        let admin_listener = tokio::net::TcpListener::bind(admin_addr).await?;
        let admin_hub = hub.clone();
        tokio::spawn(async move {
            let _ = axum::serve(admin_listener, edge_hub::admin::router(admin_hub)).await;
        });
        edge_hub::history::spawn_sampler(hub.clone())?;

        // The unit.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let unit = tokio::spawn(edge_daemon::daemon::run(unit_cfg, async move {
            let _ = stop_rx.await;
        }));
        let want = u64::from(patients);
        let started = Instant::now();
        let mut last = Instant::now();
        loop {
            let body = http_get(lan, "/v1/status").await.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let n = v["records"].as_u64().unwrap_or(0);
            if n >= want && v["caught_up"] == true {
                say(&format!(
                    "unit synced {n} summaries over QUIC in {:.1} s",
                    started.elapsed().as_secs_f64()
                ));
                break;
            }
            if last.elapsed() > Duration::from_millis(700) {
                last = Instant::now();
                say(&format!("unit syncing: {n} / {want} summaries"));
            }
            if started.elapsed() > Duration::from_secs(600) || unit.is_finished() {
                anyhow::bail!("the unit did not sync; run with RUST_LOG=info to see why");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        print_banner(lan, &token, &samples, &dir, t0.elapsed());
        print_console(&admin_addr, &operators);

        // Keys: h = hub offline/online; Ctrl-C = stop.
        let (key_tx, mut key_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if key_tx.send(line.trim().to_owned()).is_err() {
                    break;
                }
            }
        });
        let ctrl_c = edge_daemon::daemon::stop_signal();
        tokio::pin!(ctrl_c);
        loop {
            tokio::select! {
                _ = &mut ctrl_c => break,
                Some(k) = key_rx.recv() => {
                    if k.eq_ignore_ascii_case("h") {
                        if let Some(ep) = endpoint.take() {
                            ep.close(0u32.into(), b"demo hub offline");
                            if let Some(t) = sync_task.take() { t.abort(); }
                            println!("demo: the hub is OFFLINE. Cached lookups still answer (with \"link\": \"down\" and their age); an uncached NHS number answers 404 not_cached at once. Type h and Enter to bring it back.");
                        } else {
                            match make_endpoint(&hub_cfg) {
                                Ok((ep, _)) => {
                                    sync_task = Some(tokio::spawn(serve_sync(hub.clone(), ep.clone())));
                                    endpoint = Some(ep);
                                    println!("demo: the hub is back ONLINE; the unit reconnects within seconds.");
                                }
                                Err(e) => println!("demo: cannot bring the hub back: {e:#}"),
                            }
                        }
                    } else if !k.is_empty() {
                        println!("demo: type h and Enter to take the hub offline or bring it back; Ctrl-C to stop.");
                    }
                }
            }
        }
        say("stopping");
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), unit).await;
        if let Some(ep) = endpoint {
            ep.close(0u32.into(), b"demo over");
        }
        anyhow::Ok(())
    })?;
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

/// A few NHS numbers worth looking at: (number, what is interesting about it).
fn samples(hub: &Hub, scan: usize) -> anyhow::Result<Vec<(NhsNumber, String)>> {
    let mut out: Vec<(NhsNumber, String)> = Vec::new();
    let mut have = std::collections::BTreeSet::new();
    let mut seen = 0;
    let mut stem = 999_000_000u32;
    while seen < scan && stem < 999_999_999 && out.len() < 5 {
        stem += 1;
        let Some(n) = NhsNumber::from_nine_digits(stem) else {
            continue;
        };
        let Some(s) = hub.store.summary(&n)? else {
            continue;
        };
        seen += 1;
        let kind = if !s.resuscitation.entries.is_empty() || !s.care_plans.entries.is_empty() {
            "resuscitation decision or care plan"
        } else if s.allergies.entries.iter().any(|a| a.criticality.is_some()) {
            "allergies"
        } else if s.allergies.status == SectionStatus::NoneKnown {
            "no known allergies (recorded)"
        } else if s.allergies.status == SectionStatus::NoInformation {
            "no allergy information (not the same as none)"
        } else {
            continue;
        };
        if have.insert(kind) {
            out.push((n, kind.to_owned()));
        }
    }
    Ok(out)
}

/// The console's address and the demo's operator tokens.
fn print_console(admin: &std::net::SocketAddr, operators: &[String]) {
    println!("  Fleet and privacy console (hub):  http://{admin}/console");
    println!("  Operator tokens for it (8 hours), fleet engineer then privacy officer:");
    for t in operators {
        println!("  OPERATOR_TOKEN={t}");
    }
    println!();
}

fn print_banner(
    lan: SocketAddr,
    token: &str,
    samples: &[(NhsNumber, String)],
    dir: &std::path::Path,
    took: Duration,
) {
    let url = format!("http://{lan}");
    let first = samples
        .first()
        .map(|(n, _)| n.as_digits())
        .unwrap_or_else(|| "9990000018".into());
    println!();
    println!(
        "Kerbside demo is running ({:.0} s to set up). Files: {}",
        took.as_secs_f64(),
        dir.display()
    );
    println!();
    println!("  Kiosk / tablet page:  {url}/   (sign in with the token below)");
    println!("  Unit status:          curl -s {url}/v1/status");
    println!();
    println!("A clinician's shift token (12 hours). Paste this line into your shell first:");
    println!();
    println!("  export TOKEN={token}");
    println!();
    println!("Patients to try:");
    for (n, what) in samples {
        println!("  {}  {what}", n.as_digits());
    }
    println!();
    println!("Ready to paste:");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" {url}/v1/patients/{first}");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" '{url}/fhir/Patient/$summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{first}'");
    println!(
        "  curl -s -H \"Authorization: Bearer $TOKEN\" '{url}/v1/search?family=smith&postcode=SE1'"
    );
    println!("  curl -s -o /dev/null -w '%{{http_code}}\\n' {url}/v1/patients/{first}      # no token: 401");
    println!();
    println!(
        "Offline: type  h  and Enter to take the demo hub offline; the unit keeps answering from"
    );
    println!(
        "its cache (\"link\": \"down\" in every answer and in /v1/status), and an NHS number it"
    );
    println!("does not hold answers 404 not_cached at once. Type h again to bring the hub back.");
    println!("Ctrl-C stops the demo.");
    println!();
}

/// A tiny loopback HTTP GET (the demo's own readiness checks).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).into_owned();
    Ok(text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

/// Keep a load the demo made before its hub served in the hub's ingest log, as an offline
/// `edge-hub ingest` run is (the console's Feeds view).
fn log_offline(
    hub: &Hub,
    label: serde_json::Value,
    report: &edge_hub::store::IngestReport,
) -> anyhow::Result<()> {
    let entry = edge_hub::ingest_log::entry(now(), None, "offline", &label, report);
    Ok(hub.ingest_log.record(&entry)?)
}
