//! `edge-hub`: the hub's command line (`synth`, `ingest`, `migrate`, `serve`).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge_hub::store::ParsedChunk;
use kerbside_synth as synth;

/// mimalloc rather than glibc malloc: an ingest spent about 40 % of the hub's CPU in glibc's
/// allocator (parsing each bundle into a JSON tree and mapping it allocates a great deal;
/// BENCHMARKS.md "Hub ingest into PostgreSQL"), as the unit's LAN lookups did before it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::io::BufRead as _;

#[derive(Debug, Parser)]
#[command(
    name = "edge-hub",
    version,
    about = "Kerbside hub: FHIR ingest, summary assembly, change feed, cohorts, QUIC sync server, audit repository, admin API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write deterministic synthetic Londoners as FHIR R4 NDJSON (one Bundle per line).
    Synth {
        /// How many patients (each gets a distinct NHS number from the 999 test range).
        #[arg(long, value_name = "N")]
        patients: u64,
        /// The seed: the same seed always writes byte-identical output.
        #[arg(long, value_name = "S")]
        seed: u64,
        /// Output file, or `-` for standard output.
        #[arg(long, value_name = "FILE.ndjson")]
        out: PathBuf,
        /// Source organisations per patient (the GP practice counts as one), 1 to 8.
        #[arg(long, value_name = "K", default_value_t = 2)]
        sources: usize,
        /// The day the data is "as of" (YYYY-MM-DD): every date is on or before it.
        #[arg(long, value_name = "DATE", default_value = synth::DEFAULT_AS_OF)]
        as_of: String,
        /// Worker threads (default: the machine's cores). The output does not depend on it.
        #[arg(long, value_name = "T")]
        threads: Option<usize>,
    },
    /// Ingest FHIR R4 Bundles (JSON or NDJSON) into the hub's store while it is not running.
    Ingest {
        /// The hub configuration written by `edge-provision hub`.
        #[arg(long, value_name = "hub.toml")]
        config: PathBuf,
        /// Bundle or NDJSON files.
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// A feed named in hub.toml's `[[feeds]]` (its source and snapshot setting apply).
        #[arg(long, value_name = "NAME")]
        feed: Option<String>,
        /// The feed's organisation (ODS code, or system|value): items whose bundle names no
        /// organisation of its own (no Provenance, no recorder/author…, no document custodian)
        /// are filed under it.
        #[arg(long, value_name = "ODS")]
        source: Option<String>,
        /// Every bundle is the source's full record of the patient: items a later bundle no
        /// longer holds are withdrawn from every unit.
        #[arg(long)]
        snapshot: bool,
    },
    /// Bring the PostgreSQL schema named in hub.toml's `[store]` up to this binary's version
    /// (`serve` does this too, at start). Safe to run while other hubs serve from the database:
    /// migrations only add, under an advisory lock.
    Migrate {
        /// The hub configuration written by `edge-provision hub`.
        #[arg(long, value_name = "hub.toml")]
        config: PathBuf,
    },
    /// Run the hub: QUIC sync server and admin API.
    Serve {
        /// The hub configuration written by `edge-provision hub`.
        #[arg(long, value_name = "hub.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Synth {
            patients,
            seed,
            out,
            sources,
            as_of,
            threads,
        } => match run_synth(patients, seed, &out, sources, &as_of, threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edge-hub synth: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ingest {
            config,
            files,
            feed,
            source,
            snapshot,
        } => match run_ingest(
            &config,
            &files,
            &edge_hub::admin::IngestQuery {
                feed,
                source,
                snapshot: snapshot.then_some(true),
            },
        ) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(3),
            Err(e) => {
                eprintln!("edge-hub ingest: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Migrate { config } => match run_migrate(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edge-hub migrate: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve { config } => {
            init_logs();
            match run_serve(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("edge-hub serve: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .init();
}

fn load_config(path: &std::path::Path) -> anyhow::Result<edge_runtime::HubConfig> {
    let cfg = edge_runtime::HubConfig::load(path)?;
    cfg.check_files()?;
    Ok(cfg)
}

/// Offline ingest: returns Ok(false) when some bundles were rejected (exit 3).
fn run_ingest(
    config: &std::path::Path,
    files: &[PathBuf],
    q: &edge_hub::admin::IngestQuery,
) -> anyhow::Result<bool> {
    let cfg = load_config(config)?;
    let opts = edge_hub::admin::feed_options(&cfg, q).map_err(anyhow::Error::msg)?;
    private_data_dir(&cfg.data_dir)?;
    // The store, and the ingest log beside it (the console's Feeds view shows offline ingests
    // too).
    let (store, log): (
        std::sync::Arc<dyn edge_hub::store::FeedStore>,
        edge_hub::ingest_log::IngestLog,
    ) = match cfg.store.backend {
        edge_runtime::config::StoreBackend::Embedded => {
            let s = edge_hub::store::HubStore::open_with_cache(
                &cfg.data_dir,
                edge_hub::store::INGEST_CACHE_BYTES,
            )
            .with_context(|| {
                format!(
                    "cannot open the hub store in {} (a running hub holds it: use POST /admin/ingest instead)",
                    cfg.data_dir.display()
                )
            })?;
            let log = edge_hub::ingest_log::IngestLog::open(s.db())?;
            (std::sync::Arc::new(s), log)
        }
        edge_runtime::config::StoreBackend::Postgres => {
            let s = std::sync::Arc::new(edge_hub::pg::PgStore::connect(
                &edge_hub::pg::PgOptions::from_config(&cfg.store)?,
            )?);
            (s.clone(), edge_hub::ingest_log::IngestLog::Pg(s))
        }
    };
    let started = Instant::now();
    let mut accepted = 0;
    let mut rejected = 0;
    let mut warnings = 0;
    for file in files {
        let name = file.display().to_string();
        let (a, r, w, report) = ingest_file(&*store, file, &name, &opts)?;
        accepted += a;
        rejected += r;
        warnings += w;
        let label = serde_json::json!({"feed": q.feed, "source": q.source, "snapshot": q.snapshot, "file": name});
        let mut entry =
            edge_hub::ingest_log::entry(edge_hub::server::now(), None, "offline", &label, &report);
        entry["rejected_total"] = r.into();
        if let Err(e) = log.record(&entry) {
            eprintln!("edge-hub ingest: warning: cannot keep {name}'s report for the console: {e}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{{\"accepted\": {accepted}, \"rejected\": {rejected}, \"warnings\": {warnings}, \"seconds\": {secs:.2}}}");
    eprintln!(
        "edge-hub ingest: {accepted} bundles accepted, {rejected} rejected in {secs:.1} s ({:.0}/s); {} patients held",
        accepted as f64 / secs.max(1e-9),
        store.patient_count()?
    );
    drop(store);
    drop(log);
    if let Err(e) = edge_hub::perms::secure_data_dir(&cfg.data_dir) {
        eprintln!(
            "edge-hub ingest: warning: cannot narrow the permissions under {}: {e}",
            cfg.data_dir.display()
        );
    }
    Ok(rejected == 0)
}

/// Ingest one file, NDJSON streamed [`edge_hub::store::INGEST_CHUNK`] lines at a time (memory
/// bounded by a chunk whatever the file's size) or one JSON bundle; rejections and warnings
/// printed by line. Returns (accepted, rejected, warnings) and the whole file's report for the
/// ingest log (its first rejected lines and warnings; the counts are whole).
fn ingest_file(
    store: &dyn edge_hub::store::FeedStore,
    file: &std::path::Path,
    name: &str,
    opts: &edge_proto::fhir::ingest::IngestOptions,
) -> anyhow::Result<(u64, u64, u64, edge_hub::store::IngestReport)> {
    let open = || File::open(file).with_context(|| format!("cannot read {}", file.display()));
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let mut counts = (0u64, 0u64, 0u64);
    // The whole file's report for the ingest log: the counts, and the first lines.
    let mut whole = edge_hub::store::IngestReport::default();
    let keep = edge_hub::server::RECENT_INGEST_LINES;
    let mut emit = |report: &edge_hub::store::IngestReport, counts: &mut (u64, u64, u64)| {
        whole.accepted += report.accepted;
        whole.changed += report.changed;
        whole.warnings_total += report.warnings_total;
        let room = keep.saturating_sub(whole.rejected.len());
        whole
            .rejected
            .extend(report.rejected.iter().take(room).cloned());
        let room = keep.saturating_sub(whole.warnings.len());
        whole
            .warnings
            .extend(report.warnings.iter().take(room).cloned());
        for r in &report.rejected {
            match r.entry {
                Some(e) => eprintln!(
                    "edge-hub ingest: {name}: line {}: entry {e} rejected alone: {}",
                    r.line, r.error
                ),
                None => eprintln!(
                    "edge-hub ingest: {name}: line {}: rejected: {}",
                    r.line, r.error
                ),
            }
        }
        for w in &report.warnings {
            eprintln!(
                "edge-hub ingest: {name}: line {}: warning: {}",
                w.line, w.warning
            );
        }
        if report.warnings_total > report.warnings.len() as u64 {
            eprintln!(
                "edge-hub ingest: {name}: {} more warnings not listed",
                report.warnings_total - report.warnings.len() as u64
            );
        }
        counts.0 += report.accepted;
        counts.1 += report.rejected.len() as u64;
        counts.2 += report.warnings_total;
    };
    // NDJSON when the first non-empty line is a JSON value of its own; otherwise one bundle.
    let ndjson = {
        let mut first = String::new();
        let mut r = io::BufReader::new(open()?);
        loop {
            first.clear();
            if r.read_line(&mut first)? == 0 || !first.trim().is_empty() {
                break;
            }
        }
        first.trim().is_empty()
            || serde_json::from_str::<serde::de::IgnoredAny>(first.trim()).is_ok()
    };
    if !ndjson {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let report = store.ingest(
            [(1, text.as_str())],
            edge_hub::server::now(),
            2,
            opts,
            &mut |_, _| {},
        )?;
        emit(&report, &mut counts);
        let (a, r, w) = counts;
        return Ok((a, r, w, whole));
    }
    // A reader thread reads and parses chunk n + 1 while this one commits chunk n; the channel
    // holds one parsed chunk, so at most three are in memory whatever the file's size.
    let reader = io::BufReader::with_capacity(1 << 20, open()?);
    let chunk_lines = store.ingest_chunk_lines();
    let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<(ParsedChunk, u64, u64)>>(1);
    let counts = std::thread::scope(|scope| -> anyhow::Result<(u64, u64, u64)> {
        scope.spawn(move || read_and_parse(reader, file, opts, chunk_lines, &tx));
        let mut last = Instant::now();
        for item in rx {
            let (chunk, line_no, read) = item?;
            let mut report = edge_hub::store::IngestReport::default();
            store.commit_parsed(chunk, edge_hub::server::now(), &mut report)?;
            emit(&report, &mut counts);
            if last.elapsed().as_millis() >= 500 {
                last = Instant::now();
                eprintln!(
                    "edge-hub ingest: {name}: {line_no} lines read ({}% of the file), {} accepted",
                    read * 100 / size.max(1),
                    counts.0
                );
            }
        }
        store.flush()?;
        eprintln!("edge-hub ingest: {name}: done, {} accepted", counts.0);
        Ok(counts)
    })?;
    let (a, r, w) = counts;
    Ok((a, r, w, whole))
}

/// The reader side of [`ingest_file`]: chunks of `chunk_lines` non-empty lines, parsed, sent
/// with the last line number and the bytes read so far. Stops when the receiver is gone.
fn read_and_parse(
    mut reader: impl std::io::BufRead,
    file: &std::path::Path,
    opts: &edge_proto::fhir::ingest::IngestOptions,
    chunk_lines: usize,
    tx: &std::sync::mpsc::SyncSender<anyhow::Result<(ParsedChunk, u64, u64)>>,
) {
    let mut chunk: Vec<(u64, String)> = Vec::with_capacity(chunk_lines);
    let (mut line_no, mut read) = (0u64, 0u64);
    loop {
        let mut line = String::new();
        let n = match reader.read_line(&mut line) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Err(
                    anyhow::Error::new(e).context(format!("cannot read {}", file.display()))
                ));
                return;
            }
        };
        read += n as u64;
        if n > 0 {
            line_no += 1;
            if !line.trim().is_empty() {
                chunk.push((line_no, line));
            }
        }
        if chunk.len() >= chunk_lines || (n == 0 && !chunk.is_empty()) {
            let lines: Vec<(u64, &str)> = chunk.iter().map(|(l, t)| (*l, t.trim_end())).collect();
            let parsed = ParsedChunk::parse(&lines, edge_hub::server::now(), 2, opts);
            drop(lines);
            chunk.clear();
            if tx.send(Ok((parsed, line_no, read))).is_err() {
                return;
            }
        }
        if n == 0 {
            return;
        }
    }
}

/// `edge-hub migrate`: the PostgreSQL schema up to this binary's version.
fn run_migrate(config: &std::path::Path) -> anyhow::Result<()> {
    let cfg = load_config(config)?;
    if cfg.store.backend == edge_runtime::config::StoreBackend::Embedded {
        println!(
            "the embedded store (in {}) has no schema to migrate",
            cfg.data_dir.display()
        );
        return Ok(());
    }
    let out = edge_hub::pg::migrate(&edge_hub::pg::PgOptions::from_config(&cfg.store)?)?;
    if out.applied.is_empty() {
        println!("schema at version {}: nothing to apply", out.version);
    } else {
        println!(
            "schema at version {}: applied {}",
            out.version,
            out.applied
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !out.unknown.is_empty() {
        eprintln!(
            "edge-hub migrate: note: the database has migrations this binary does not know ({:?}): a newer hub applied them; they only add, so this hub still runs",
            out.unknown
        );
    }
    Ok(())
}

/// Create the data folder 0700 and narrow what is under it (folders 0700, files 0600).
fn private_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    edge_hub::perms::create_private_dir(dir)
        .with_context(|| format!("cannot create the hub's data folder {}", dir.display()))?;
    edge_hub::perms::secure_data_dir(dir).with_context(|| {
        format!(
            "cannot make the hub's data folder {} private (0700 folders, 0600 files)",
            dir.display()
        )
    })?;
    Ok(())
}

fn run_serve(config: &std::path::Path) -> anyhow::Result<()> {
    edge_runtime::tls::install_default_provider();
    let cfg = load_config(config)?;
    private_data_dir(&cfg.data_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let mut hub = edge_hub::server::Hub::open(cfg)?;
        // The admin API identifies every caller: no operator key, no hub.
        let auth = std::sync::Arc::new(edge_hub::operator::AdminAuth::load(
            &hub.config,
            hub.denylist.clone(),
        )?);
        let endpoint = edge_hub::server::sync_endpoint(&mut hub)?;
        let admin_addr = hub
            .config
            .admin
            .socket_addr()
            .context("the admin address must be an IP:PORT")?;
        anyhow::ensure!(
            admin_addr.ip().is_loopback(),
            "the admin API is plain HTTP and may only listen on a loopback address ({admin_addr} is not); put it behind the operator VPN's TLS proxy or use 127.0.0.1"
        );
        let retention_ms = i64::try_from(hub.config.sync.withdrawal_retention_s)
            .unwrap_or(i64::MAX / 2000)
            .saturating_mul(1000);
        let hub = std::sync::Arc::new(hub);
        if let Some(db) = hub.shared.clone() {
            // Hubs sharing a database: offer this hub's fleet files, then take the database's
            // CRL, deny list and inventory before the first unit is let in.
            let h = hub.clone();
            tokio::task::spawn_blocking(move || h.fleet_docs.step(&h, &db))
                .await
                .context("the first fleet-document step")?;
        }
        if let Err(e) = edge_hub::perms::secure_data_dir(&hub.config.data_dir) {
            tracing::warn!(error = %e, "cannot narrow the permissions of the hub's data folder");
        }
        check_crl(&hub, &auth);
        let listener = tokio::net::TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("cannot listen for the admin API on {admin_addr}"))?;
        tracing::info!(
            sync = %endpoint.local_addr()?,
            admin = %admin_addr,
            patients = hub.store.patient_count()?,
            head = hub.store.head()?,
            store = ?hub.config.store.backend,
            "edge-hub serving"
        );
        // CRL reload, CRL freshness, data-folder modes and feed compaction, periodically (the
        // deny list is re-read by the sync server's revocation watch).
        {
            let hub = hub.clone();
            let auth = auth.clone();
            tokio::spawn(async move {
                let every = hub.config.tls.crl_reload_s.clamp(1, 3600);
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(every));
                loop {
                    tick.tick().await;
                    if let Some(r) = &hub.reloader {
                        match r.reload() {
                            Ok(s) => tracing::debug!(revoked = s.revoked_serials, "CRL reloaded"),
                            Err(e) => tracing::warn!(error = %e, "cannot reload the CRL; keeping the previous one"),
                        }
                    }
                    check_crl(&hub, &auth);
                    if let Err(e) = edge_hub::perms::secure_data_dir(&hub.config.data_dir) {
                        tracing::warn!(error = %e, "cannot narrow the permissions of the hub's data folder");
                    }
                    let store = hub.store.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        store.compact(edge_hub::server::now(), retention_ms)
                    })
                    .await;
                }
            });
        }
        tokio::spawn(edge_hub::server::serve_sync(hub.clone(), endpoint.clone()));
        edge_hub::history::spawn_sampler(hub.clone()).context("cannot open the units' history")?;
        let state = edge_hub::admin::AdminState::open(hub.clone(), auth.clone())
            .context("cannot open the operator log")?;
        let app = edge_hub::admin::admin_router(state);
        let shutdown = async {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .ok();
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
                }
            }
            #[cfg(not(unix))]
            {
                let _ = ctrl_c.await;
            }
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .context("admin API")?;
        tracing::info!("edge-hub stopping: closing unit connections");
        endpoint.close(0u32.into(), b"hub shutting down");
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), endpoint.wait_idle()).await;
        hub.store.flush()?;
        Ok(())
    })
}

/// Read the CRL's `nextUpdate`; warn (once per reload) when it has passed.
fn check_crl(hub: &edge_hub::server::Hub, auth: &edge_hub::operator::AdminAuth) {
    // The CRL in force: the database's copy when hubs share one, else the file.
    let st = match &hub.reloader {
        Some(r) => auth.check_crl_in_force(
            r.crl_in_force().map_err(|e| e.to_string()),
            &hub.config.tls.crl,
            edge_hub::server::now(),
        ),
        None => auth.check_crl(&hub.config.tls.crl, edge_hub::server::now()),
    };
    if st.expired {
        tracing::warn!(
            crl = %hub.config.tls.crl.display(),
            next_update = %st.next_update.map(|t| t.to_rfc3339()).unwrap_or_default(),
            "the fleet CRL is past its nextUpdate: re-sign it with `edge-provision crl` (GET /admin/alerts lists this; kerbside_hub_crl_expired = 1)"
        );
    } else if let Some(e) = st.error {
        tracing::warn!(error = %e, "cannot read the CRL's nextUpdate");
    }
}

fn run_synth(
    patients: u64,
    seed: u64,
    out: &PathBuf,
    sources: usize,
    as_of: &str,
    threads: Option<usize>,
) -> anyhow::Result<()> {
    let cfg = synth::Config::new(patients, seed, sources, Some(as_of))?;
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let started = Instant::now();
    let every = 100_000u64;
    let mut next_report = every;
    let mut progress = |done: u64| {
        if done >= next_report && patients >= 2 * every {
            eprintln!(
                "edge-hub synth: {done} / {patients} patients ({:.0}%), {:.1} s",
                done as f64 * 100.0 / patients as f64,
                started.elapsed().as_secs_f64()
            );
            next_report = (done / every + 1) * every;
        }
    };
    let to_stdout = out.as_os_str() == "-";
    let stats = if to_stdout {
        let stdout = io::stdout();
        let mut w = BufWriter::with_capacity(1 << 20, stdout.lock());
        let stats = synth::write_ndjson(&cfg, &mut w, threads, &mut progress)
            .context("cannot write to standard output")?;
        w.flush().context("cannot write to standard output")?;
        stats
    } else {
        let file = File::create(out).with_context(|| {
            format!(
                "cannot create {}: check the folder exists and is writable",
                out.display()
            )
        })?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let stats = synth::write_ndjson(&cfg, &mut w, threads, &mut progress)
            .with_context(|| format!("cannot write {}", out.display()))?;
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", out.display()))?;
        // Only a regular file can be made durable; /dev/null and pipes refuse fsync.
        if file.metadata().map(|m| m.is_file()).unwrap_or(false) {
            file.sync_all()
                .with_context(|| format!("cannot write {}", out.display()))?;
        }
        stats
    };
    let secs = started.elapsed().as_secs_f64();
    let kinds: Vec<String> = synth::RESOURCE_TYPES
        .iter()
        .zip(stats.resources)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    eprintln!(
        "edge-hub synth: wrote {} patients ({:.1} MB) to {} in {secs:.2} s ({:.0} patients/s): {}",
        stats.patients,
        stats.bytes as f64 / 1e6,
        if to_stdout {
            "standard output".to_owned()
        } else {
            out.display().to_string()
        },
        stats.patients as f64 / secs.max(1e-9),
        kinds.join(", ")
    );
    Ok(())
}
