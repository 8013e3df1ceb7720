//! `edge-daemon`: the Kerbside unit daemon that runs on each ambulance unit and ED triage kiosk.
//!
//! It keeps the unit's cohort of critical summaries current over QUIC from the hub, serves them
//! to the crew's tablets on the vehicle LAN whether or not the link is up, records every access
//! in a tamper-evident audit journal, and obeys the supervisor board. Subcommands that later
//! issues fill in say so and exit non-zero.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc malloc: a LAN lookup spent about a fifth of its CPU in glibc's
/// allocator (BENCHMARKS.md, issue 17), and its per-thread arenas kept freed memory resident.
/// The `system-allocator` feature leaves glibc's malloc in place, for heap profilers that
/// interpose it (`heaptrack`; BENCHMARKS.md, issue 17).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// The demo moved to its own binary: `cargo run --release -p kerbside -- demo`. This one
    /// says so and exits (the unit daemon no longer links the hub).
    #[command(hide = true, disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        _args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    edge_daemon::allocator::tune();
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
        Command::Demo { .. } => {
            eprintln!(
                "edge-daemon demo: the demo moved to its own binary, which runs a hub and a unit in one process: cargo run --release -p kerbside -- demo (or target/release/kerbside demo)"
            );
            std::process::exit(2);
        }
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
    edge_runtime::tls::install_default_provider();
    let cfg = edge_runtime::UnitConfig::load(config)?;
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
