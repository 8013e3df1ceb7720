//! Cold sync benchmark: N summaries hub → unit on loopback with the real binaries (real QUIC,
//! mutual TLS, durable sled writes on the unit), next to the floor: the same number of bytes
//! sent raw over one QUIC stream between the same certificates.
//!
//! `cargo bench -p kerbside-tests --bench sync [-- PATIENTS]` (default 100,000). Prints a
//! Markdown table for BENCHMARKS.md. `KERBSIDE_BATCH=N` sets the hub's records per sync batch
//! (`[sync] batch_records_max`, default 500).

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_provision::config::{HubConfig, UnitConfig};
use kerbside_tests::fleet::{peak_rss_kib, Fleet};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let mut f = Fleet::new()?;
    let u = f.enrol("LAS-AMB-BENCH", &[])?;
    // KERBSIDE_BATCH=N: the hub's records per sync batch (`[sync] batch_records_max`).
    if let Ok(b) = std::env::var("KERBSIDE_BATCH") {
        let p = f.hub_dir.join("hub.toml");
        let text = std::fs::read_to_string(&p)?;
        let text = match text.find("batch_records_max") {
            Some(_) => text
                .lines()
                .map(|l| {
                    if l.starts_with("batch_records_max") {
                        format!("batch_records_max = {b}")
                    } else {
                        l.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
            None => format!("{text}\n[sync]\nbatch_records_max = {b}\n"),
        };
        std::fs::write(&p, text)?;
        eprintln!("hub batch_records_max = {b}");
    }
    let t = Instant::now();
    let data = f.synth("bench.ndjson", u32::try_from(n)?, 7)?;
    eprintln!("synth {n}: {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    f.ingest_offline(&data)?;
    let ingest_s = t.elapsed().as_secs_f64();
    eprintln!("ingest {n}: {ingest_s:.1} s");
    f.start_hub()?;
    let t = Instant::now();
    f.start_unit(u)?;
    let took = f.wait_records(u, n, Duration::from_secs(600))?;
    // Ready means searchable too: the baseline finished (its search postings are built then).
    kerbside_tests::fleet::wait_for(Duration::from_secs(600), || {
        let s = f.status(u)?;
        Ok(s["rebaselining"] == false && s["caught_up"] == true)
    })?;
    let secs = t.elapsed().as_secs_f64().max(took.as_secs_f64());
    let status = f.status(u)?;
    let wire = status["link_bytes_received"].as_u64().unwrap_or(0);
    let pid = f.units[u].child.as_ref().map(|c| c.id()).unwrap_or(0);
    let rss = peak_rss_kib(pid).unwrap_or(0);
    let hub_pid = f.hub.as_ref().map(|c| c.id()).unwrap_or(0);
    let hub_rss = peak_rss_kib(hub_pid).unwrap_or(0);
    let unit_cpu = cpu_seconds(pid);
    let hub_cpu = cpu_seconds(hub_pid);
    f.stop_unit(u, false)?;
    f.stop_hub(false)?;
    // What the cache takes on disk (allocated blocks), beside the summaries' own CBOR bytes.
    let disk = allocated_bytes(&f.units[u].dir.join("data").join("cache.sled"));
    let cbor = cbor_bytes(&data)?;

    // The floor: the same bytes over one QUIC stream, same certificates, same loopback.
    let floor_s = raw_quic(&f, wire.max(1))?;

    let rate = n as f64 / secs;
    println!("Cold sync benchmark: {n} summaries (edge-hub synth --seed 7), loopback\n");
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| hub ingest (offline, FHIR NDJSON → summaries + feed) | {ingest_s:.1} s ({:.0} bundles/s) |", n as f64 / ingest_s);
    println!("| cold sync hub → unit, durable on the unit and searchable (baseline finished) | {secs:.2} s |");
    println!("| summaries per second | {rate:.0} |");
    println!(
        "| bytes on the wire (UDP, hub → unit) per summary | {:.0} B |",
        wire as f64 / n as f64
    );
    println!("| unit peak RSS | {:.0} MiB |", rss as f64 / 1024.0);
    println!(
        "| unit cache on disk (allocated) | {:.0} MiB, {:.0} B per summary, {:.2} × the summaries' CBOR ({:.0} B each) |",
        disk as f64 / 1_048_576.0,
        disk as f64 / n as f64,
        disk as f64 / cbor.max(1) as f64,
        cbor as f64 / n as f64
    );
    println!("| hub peak RSS | {:.0} MiB |", hub_rss as f64 / 1024.0);
    println!("| CPU time: unit / hub (incl. start-up) | {unit_cpu:.2} s / {hub_cpu:.2} s |");
    println!(
        "| floor: the same {:.1} MB raw over one QUIC stream | {floor_s:.2} s ({:.0} summaries/s equivalent) |",
        wire as f64 / 1e6,
        n as f64 / floor_s
    );
    println!("| cold sync ÷ floor | {:.1} × |", secs / floor_s);
    Ok(())
}

/// User + system CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Bytes allocated on disk under `dir` (st_blocks × 512), recursively.
fn allocated_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => total += allocated_bytes(&p),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

/// The summed CBOR size of the summaries the hub assembles from `file` (one bundle a line).
fn cbor_bytes(file: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::BufRead as _;
    let mut total = 0u64;
    for line in std::io::BufReader::new(std::fs::File::open(file)?).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let c = edge_proto::fhir::ingest::parse_bundle_json(&line)?;
        let s = edge_proto::assemble::from_contribution(&c, edge_proto::time::UnixMillis(0));
        total += edge_proto::cbor::encode_summary(&s)?.len() as u64;
    }
    Ok(total)
}

fn raw_quic(f: &Fleet, bytes: u64) -> anyhow::Result<f64> {
    edge_provision::tls::install_default_provider();
    let hub_cfg = HubConfig::load(&f.hub_dir.join("hub.toml"))?;
    let unit_cfg = UnitConfig::load(&f.units[0].dir.join("edge.toml"))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (server_tls, _r) = edge_provision::tls::hub_server_config(&hub_cfg)?;
        let server =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server_tls)?));
        let ep = quinn::Endpoint::server(server, "127.0.0.1:0".parse()?)?;
        let addr = ep.local_addr()?;
        let sender = tokio::spawn(async move {
            let conn = ep
                .accept()
                .await
                .ok_or_else(|| anyhow::anyhow!("no connection"))?
                .await?;
            let (mut send, mut recv) = conn.accept_bi().await?;
            let mut one = [0u8; 1];
            recv.read_exact(&mut one).await?;
            let chunk = vec![0x5au8; 1 << 20];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                send.write_all(&chunk[..n]).await?;
                left -= n as u64;
            }
            send.finish()?;
            conn.closed().await;
            anyhow::Ok(())
        });
        let client_tls = edge_provision::tls::unit_client_config(&unit_cfg)?;
        let mut cep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        cep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
            QuicClientConfig::try_from(client_tls)?,
        )));
        let conn = cep.connect(addr, "127.0.0.1")?.await?;
        let t = Instant::now();
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&[1]).await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while let Some(n) = recv.read(&mut buf).await? {
            got += n as u64;
        }
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(got == bytes, "received {got} of {bytes}");
        conn.close(0u32.into(), b"done");
        let _ = sender.await;
        Ok(secs)
    })
}
