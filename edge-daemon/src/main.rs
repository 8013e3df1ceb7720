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
        Command::Run { .. } => not_yet("run"),
        Command::Demo { .. } => not_yet("demo"),
    }
}

fn not_yet(what: &str) -> anyhow::Result<()> {
    eprintln!("edge-daemon {what}: not yet available in this build");
    std::process::exit(2)
}
