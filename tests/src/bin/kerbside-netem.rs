//! `kerbside-netem`: the UDP impairment proxy ([`kerbside_tests::proxy`]) as a command for
//! scripts and manual runs. Put it between a unit and the hub: point the unit at `--listen`, give
//! the hub's QUIC port as `--upstream`. Commands on standard input drive it while it runs; every
//! answer and the final counters are JSON lines on standard output, logs go to standard error.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kerbside_tests::proxy::{
    parse_duration, parse_flap_range, Blackout, Direction, Flap, Impairment, Proxy, ProxyConfig,
    RateLimit, RATE_QUEUE_MS_DEFAULT, REORDER_HOLD_MS_DEFAULT,
};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

/// Emulate a flaky 4G link between a unit and the hub: a seeded UDP proxy with loss, delay and
/// jitter, reordering, duplication, a rate limit and blackouts.
///
/// Loss, delay, jitter, reorder, duplicate and rate apply to each direction separately (so
/// `--delay-ms 75` gives a 150 ms round trip). Blackouts drop everything in both directions,
/// including datagrams already in flight.
///
/// Commands on standard input, one a line: `blackout on`, `blackout off` (back to the
/// schedule), `rebind` (new hub-facing port: the hub sees the client's address change),
/// `stats`, `quit`. Answers are JSON lines on standard output; the first line is
/// {"event":"ready",...} with the actual listen address; the counters are printed on exit
/// (after --for, `quit`, end of input with --exit-on-eof, Ctrl-C or SIGTERM).
///
/// Example, the scenarios:
///   kerbside-netem --listen 127.0.0.1:7443 --upstream 127.0.0.1:4433 --loss 5 --delay-ms 75
///   kerbside-netem ... --blackout 30s@10s --blackout 120s@60s
///   kerbside-netem ... --flap 2-5s --flap-until 60s
#[derive(Debug, Parser)]
#[command(name = "kerbside-netem", verbatim_doc_comment)]
struct Args {
    /// Address the unit sends to (port 0 picks a free one; see the ready line).
    #[arg(long)]
    listen: SocketAddr,
    /// The hub's UDP (QUIC) address.
    #[arg(long)]
    upstream: SocketAddr,
    /// Seed of every random choice; the same seed gives the same per-datagram fates.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Random loss, percent of datagrams, each direction.
    #[arg(long, default_value_t = 0.0, value_name = "PCT")]
    loss: f64,
    /// One-way delay, each direction.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    delay_ms: u64,
    /// Delay is drawn uniformly from delay ± jitter; the link stays in order.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    jitter_ms: u64,
    /// Percent of datagrams held back --reorder-hold-ms so later ones overtake them.
    #[arg(long, default_value_t = 0.0, value_name = "PCT")]
    reorder: f64,
    /// Extra hold of a reordered datagram.
    #[arg(long, default_value_t = REORDER_HOLD_MS_DEFAULT, value_name = "MS")]
    reorder_hold_ms: u64,
    /// Percent of datagrams sent twice.
    #[arg(long, default_value_t = 0.0, value_name = "PCT")]
    duplicate: f64,
    /// Rate limit, kilobits per second, each direction (unlimited if absent).
    #[arg(long, value_name = "KBPS")]
    rate_kbps: Option<u64>,
    /// Rate limit unit → hub only (overrides --rate-kbps for that direction).
    #[arg(long, value_name = "KBPS")]
    rate_up_kbps: Option<u64>,
    /// Rate limit hub → unit only (overrides --rate-kbps for that direction).
    #[arg(long, value_name = "KBPS")]
    rate_down_kbps: Option<u64>,
    /// Rate-limit queue, as milliseconds of traffic at the rate; beyond it, tail drop.
    #[arg(long, default_value_t = RATE_QUEUE_MS_DEFAULT, value_name = "MS")]
    queue_ms: u64,
    /// A blackout, DURATION@START after start, e.g. 30s@10s (repeatable).
    #[arg(long, value_name = "DUR@START", value_parser = parse_blackout)]
    blackout: Vec<Blackout>,
    /// Flap: up and down phases each lasting MIN-MAX, e.g. 2-5s (seeded by --seed).
    #[arg(long, value_name = "MIN-MAX", value_parser = parse_range)]
    flap: Option<(Duration, Duration)>,
    /// Start flapping this long after start.
    #[arg(long, value_name = "DUR", value_parser = parse_dur, default_value = "0s")]
    flap_from: Duration,
    /// Stop flapping this long after start (the link then stays up).
    #[arg(long, value_name = "DUR", value_parser = parse_dur)]
    flap_until: Option<Duration>,
    /// Run this long, then print the counters and exit (default: until told).
    #[arg(long = "for", value_name = "DUR", value_parser = parse_dur)]
    run_for: Option<Duration>,
    /// Exit when standard input ends (by default end of input only stops reading commands).
    #[arg(long)]
    exit_on_eof: bool,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

fn parse_blackout(s: &str) -> Result<Blackout, String> {
    s.parse::<Blackout>().map_err(|e| e.to_string())
}

fn parse_range(s: &str) -> Result<(Duration, Duration), String> {
    parse_flap_range(s).map_err(|e| e.to_string())
}

impl Args {
    /// The typed plan: everything checked here, once.
    fn config(&self) -> anyhow::Result<ProxyConfig> {
        let imp = |kbps: Option<u64>| Impairment {
            loss_pct: self.loss,
            delay_ms: self.delay_ms,
            jitter_ms: self.jitter_ms,
            reorder_pct: self.reorder,
            reorder_hold_ms: self.reorder_hold_ms,
            duplicate_pct: self.duplicate,
            rate: kbps.map(|k| RateLimit::kbps(k).with_queue_ms(self.queue_ms)),
        };
        let mut cfg = ProxyConfig::new(self.listen, self.upstream).seed(self.seed);
        cfg.up = imp(self.rate_up_kbps.or(self.rate_kbps));
        cfg.down = imp(self.rate_down_kbps.or(self.rate_kbps));
        cfg.up.validate()?;
        cfg.down.validate()?;
        cfg.blackouts = self.blackout.clone();
        cfg.flap = self.flap.map(|(min, max)| Flap {
            min,
            max,
            seed: self.seed,
            from: self.flap_from,
            until: self.flap_until,
        });
        Ok(cfg)
    }
}

/// Flap windows listed on the ready line at most.
const FLAP_WINDOWS_SHOWN_MAX: usize = 500;

fn say(v: serde_json::Value) {
    println!("{v}");
}

enum Stop {
    Quit,
    Continue,
}

fn command(p: &Proxy, line: &str) -> Stop {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => {}
        ["blackout", on @ ("on" | "off")] => {
            p.set_blackout(*on == "on");
            say(json!({"event": "blackout", "manual": *on == "on", "active": p.blackout_active()}));
        }
        ["rebind"] => match p.rebind_upstream_socket() {
            Ok(addr) => say(json!({"event": "rebind", "upstream_local": addr})),
            Err(e) => say(json!({"event": "error", "command": line, "error": e.to_string()})),
        },
        ["stats"] => say(json!({"event": "stats", "stats": p.stats()})),
        ["impairment"] => say(json!({
            "event": "impairment",
            "up": p.impairment(Direction::Up),
            "down": p.impairment(Direction::Down),
        })),
        ["quit" | "exit"] => return Stop::Quit,
        ["help"] => say(json!({
            "event": "help",
            "commands": ["blackout on", "blackout off", "rebind", "stats", "impairment", "quit"],
        })),
        _ => say(json!({"event": "error", "command": line, "error": "unknown command; try help"})),
    }
    Stop::Continue
}

async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let cfg = args.config()?;
    let p = Proxy::start(cfg.clone())
        .await
        .context("cannot start the proxy")?;
    // Tell scripts when the flap will be down: up to --flap-until, --for or ten minutes.
    let horizon = args
        .flap_until
        .or(args.run_for)
        .unwrap_or(Duration::from_secs(600));
    let flap_windows: Vec<Blackout> = cfg
        .flap
        .map(|f| {
            f.windows(horizon)
                .into_iter()
                .take(FLAP_WINDOWS_SHOWN_MAX)
                .collect()
        })
        .unwrap_or_default();
    say(json!({
        "event": "ready",
        "listen": p.listen_addr(),
        "upstream": p.upstream_addr(),
        "upstream_local": p.upstream_local_addr(),
        "seed": cfg.seed,
        "up": cfg.up,
        "down": cfg.down,
        "blackouts": cfg.blackouts,
        "flap": cfg.flap,
        "flap_windows": flap_windows,
    }));
    eprintln!(
        "kerbside-netem: {} -> {} (seed {}); commands: blackout on|off, rebind, stats, quit",
        p.listen_addr(),
        p.upstream_addr(),
        cfg.seed
    );

    let deadline = async {
        match args.run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let term = terminated();
    tokio::pin!(term);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = &mut term => break,
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(l)) => {
                    if let Stop::Quit = command(&p, l.trim()) {
                        break;
                    }
                }
                Ok(None) | Err(_) => {
                    stdin_open = false;
                    if args.exit_on_eof {
                        break;
                    }
                }
            },
        }
    }
    let st = p.stats();
    p.stop();
    for (name, d) in [("up", &st.up), ("down", &st.down)] {
        eprintln!(
            "kerbside-netem: {name:>4}: in {} ({} B), forwarded {} ({} B), dropped loss {} blackout {} rate {} other {}, duplicated {}, reordered {}",
            d.packets_in,
            d.bytes_in,
            d.packets_forwarded,
            d.bytes_forwarded,
            d.dropped_loss,
            d.dropped_blackout,
            d.dropped_rate,
            d.dropped_overflow + d.dropped_no_client + d.send_errors,
            d.duplicated,
            d.reordered
        );
    }
    say(json!({"event": "exit", "stats": st}));
    Ok(())
}
