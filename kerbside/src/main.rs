//! `kerbside`: the whole system on one machine, for a first look and for the kiosk's browser
//! tests. `kerbside demo` runs a fleet CA, a hub and one unit in one process; the production
//! binaries are `edge-hub` (the hub), `edge-daemon` (each unit) and `edge-provision` (the fleet
//! CA), and none of them links this crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod demo;

/// Kerbside on one machine: the critical part of the shared care record, synced to a unit and
/// shown on the kiosk page, offline or not.
#[derive(Debug, Parser)]
#[command(name = "kerbside", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Demo {
            patients,
            seed,
            lan,
            dir,
            ingest,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            if let Err(e) = demo::run(patients, seed, lan, dir, &ingest) {
                eprintln!("kerbside demo: error: {e:#}");
                std::process::exit(1);
            }
        }
    }
}
