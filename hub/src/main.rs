//! `edge-hub`: the hub's command line (`synth`, `ingest`, `serve`).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge_hub::synth;

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
        Command::Ingest { .. } => not_yet("ingest"),
        Command::Serve { .. } => not_yet("serve"),
    }
}

fn not_yet(what: &str) -> ExitCode {
    eprintln!("edge-hub {what}: not yet available in this build");
    ExitCode::from(2)
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
