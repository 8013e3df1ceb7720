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
        /// Also load these FHIR bundles (a JSON Bundle or NDJSON, one Bundle a line) into the
        /// demo hub after the synthetic patients; repeatable. Bundles naming no organisation
        /// are filed under Y03124.
        #[arg(long, value_name = "FILE")]
        ingest: Vec<PathBuf>,
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
        Command::Demo {
            patients,
            seed,
            lan,
            dir,
            ingest,
        } => {
            init_logs_quiet();
            if let Err(e) = edge_daemon::demo::run(patients, seed, lan, dir, &ingest) {
                eprintln!("edge-daemon demo: error: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn init_logs_quiet() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
    edge_provision::tls::install_default_provider();
    let cfg = edge_provision::UnitConfig::load(config)?;
    cfg.check_files()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(edge_daemon::daemon::run(
        cfg,
        edge_daemon::daemon::stop_signal(),
    ))
}
