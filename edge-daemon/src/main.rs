//! `edge-daemon`: the Kerbside unit daemon that runs on each ambulance unit and ED triage kiosk.
//!
//! It keeps the unit's cohort of critical summaries current over QUIC from the hub, serves them
//! to the crew's tablets on the vehicle LAN whether or not the link is up, records every access
//! in a tamper-evident audit journal, and obeys the supervisor board. Subcommands that later
//! issues fill in say so and exit non-zero.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Kerbside unit daemon: the critical part of the shared care record, on the vehicle, offline.
#[derive(Debug, Parser)]
#[command(name = "edge-daemon", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the unit from its enrolment bundle (`edge.toml` written by `edge-provision enrol`).
    Run {
        /// Path to the unit's `edge.toml`.
        #[arg(long)]
        config: PathBuf,
    },
    /// Bring up a whole small fleet on this machine: fleet CA, a hub loaded with synthetic
    /// Londoners, one unit syncing over QUIC on loopback, and the LAN API and kiosk page.
    Demo {
        /// Number of synthetic patients the demo hub is loaded with.
        #[arg(long, default_value_t = 10_000)]
        patients: u32,
        /// Seed for the synthetic data (same seed, same Londoners).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Address the LAN API and kiosk page listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        lan: SocketAddr,
        /// Folder for the demo fleet (default: a fresh temporary folder).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logs();
            if let Err(e) = run(&config) {
                eprintln!("edge-daemon run: error: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Demo { .. } => not_yet("demo"),
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(config: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::sync::Arc;
    edge_provision::tls::install_default_provider();
    let cfg = edge_provision::UnitConfig::load(config)?;
    cfg.check_files()?;
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    let keys_dir = cfg.data_dir.join("keys");
    let keystore = edge_daemon::seal::FileKeyStore::new(keys_dir.join("kek"));
    let (sealer, key_state) = edge_daemon::seal::Sealer::open_or_create(&keys_dir, &keystore)
        .context("cannot open the unit's data key")?;
    let (cache, opened) =
        edge_daemon::cache::Cache::open(&cfg.data_dir, Arc::new(sealer), key_state)?;
    let cache = Arc::new(cache);
    let status = Arc::new(edge_daemon::status::Status::new(
        cfg.device_id.clone(),
        cfg.role,
    ));
    let jcfg = edge_daemon::journal::JournalConfig::for_unit(&cfg.data_dir, &cfg.audit);
    let (journal, recovery) =
        edge_daemon::journal::Journal::open(jcfg).context("cannot open the audit journal")?;
    if !recovery.is_clean() {
        tracing::error!(
            problems = recovery.problems.len(),
            "the audit journal has problems (kept on disk, reported to the hub)"
        );
    }
    status.update(|l| {
        l.audit_pending = journal.pending();
        l.audit_uploaded_seq = journal.uploaded_seq();
    });
    let token_key = edge_provision::keys::load_ed25519_public(&cfg.keys.token_verify)
        .context("cannot load the shift-token verification key")?;
    let state = cache.state()?;
    status.update(|l| l.cursor = state.cursor);
    tracing::info!(
        device = %cfg.device_id,
        records = cache.len(),
        cursor = state.cursor,
        opened = ?opened,
        "edge-daemon starting"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let (client, fetcher) =
            edge_daemon::sync::SyncClient::new(cfg.clone(), cache.clone(), status.clone())?;
        let listener = edge_daemon::lan::bind(&cfg).await?;
        tracing::info!(lan = %listener.local_addr()?, tls = cfg.lan.tls, "LAN API listening");
        tokio::spawn(client.run());
        let app = edge_daemon::lan::router(edge_daemon::lan::AppState {
            cache: cache.clone(),
            status: status.clone(),
            fetcher,
            config: Arc::new(cfg.clone()),
            token_key: Arc::new(token_key),
            audit: edge_daemon::access::Auditor::new(
                Some(journal.clone()),
                cfg.device_id.clone(),
                status.clone(),
            ),
        });
        let lan = edge_daemon::lan::serve(listener, app, &cfg);
        let stop = async {
            let ctrl_c = tokio::signal::ctrl_c();
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = ctrl_c => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
            }
        };
        tokio::select! {
            r = lan => r?,
            _ = stop => tracing::info!("edge-daemon stopping"),
        }
        cache.flush()?;
        Ok(())
    })
}

fn not_yet(what: &str) -> anyhow::Result<()> {
    eprintln!("edge-daemon {what}: not yet available in this build");
    std::process::exit(2)
}
