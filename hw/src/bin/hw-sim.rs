//! `hw-sim`: a simulated supervisor board on a pseudo-terminal, for whole-system tests and demos.
//!
//! Prints `pty /dev/pts/N` as its first line (connect the daemon's supervisor link there), then
//! one line per board event (`t=<ms> host-power on`, `t=<ms> tx PowerFail { budget_ms: 7900 }`,
//! `t=<ms> rx ShutdownAck { flushed: true }`, ...). Commands come from `--scenario FILE` and then
//! from stdin, one per line (`ignition off`, `power-fail`, `tamper`, `wait 5000`, `status`,
//! `quit`; see `hw::sim::script`). End of stdin does not stop the board; `quit`, a signal or
//! `--exit-after-ms` does.

use anyhow::{Context, Result};
use clap::Parser;
use firmware::Settings;
use hw::pins::{pin_map, BoardRev};
use hw::serial::Pty;
use hw::sim::runner::{spawn, RunOptions, RunnerEvent};
use hw::sim::script::{parse_line, parse_script, Command};
use hw::sim::SimBoard;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "hw-sim",
    about = "Simulated Kerbside supervisor board on a pseudo-terminal"
)]
struct Args {
    /// Scenario file: one command per line, run before stdin commands.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Start with ignition on (the host powers up after debounce and power-on delay).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    ignition: bool,
    /// Virtual milliseconds per real millisecond.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Stop after this much virtual time.
    #[arg(long)]
    exit_after_ms: Option<u64>,
    /// Board revision (a or b): sets the hold-up budget and the hello's board byte.
    #[arg(long, default_value = "a")]
    board_rev: String,
    /// 24 V vehicle system thresholds.
    #[arg(long)]
    volts_24: bool,
    /// Ignition debounce.
    #[arg(long)]
    debounce_ms: Option<u32>,
    /// Power-on delay after debounced ignition.
    #[arg(long)]
    power_on_delay_ms: Option<u32>,
    /// Boot timeout for the host hello.
    #[arg(long)]
    boot_timeout_ms: Option<u32>,
    /// Off-delay after ignition off.
    #[arg(long)]
    off_delay_ms: Option<u32>,
    /// Hard deadline after a shutdown request.
    #[arg(long)]
    shutdown_deadline_ms: Option<u32>,
    /// Grace after a shutdown acknowledgement before the cut.
    #[arg(long)]
    halt_grace_ms: Option<u32>,
    /// Hold-up budget announced on power-fail.
    #[arg(long)]
    hold_up_budget_ms: Option<u32>,
    /// Low-battery duration before the shutdown.
    #[arg(long)]
    low_battery_for_ms: Option<u32>,
    /// Host watchdog timeout.
    #[arg(long)]
    watchdog_timeout_ms: Option<u32>,
    /// Power-off time of a watchdog power cycle.
    #[arg(long)]
    power_cycle_off_ms: Option<u32>,
    /// Watchdog power-cycles allowed per hour.
    #[arg(long)]
    max_power_cycles_per_hour: Option<u8>,
}

impl Args {
    /// Turn the flags into validated settings (one place).
    fn settings(&self) -> Result<Settings> {
        let rev = match self.board_rev.to_ascii_lowercase().as_str() {
            "a" | "1" => BoardRev::RevA,
            "b" | "2" => BoardRev::RevB,
            other => anyhow::bail!("unknown board revision {other:?} (a or b)"),
        };
        let base = if self.volts_24 {
            Settings::DEFAULT_24V
        } else {
            Settings::DEFAULT_12V
        };
        let map = pin_map(rev);
        let mut s = Settings {
            board_rev: rev.code(),
            hold_up_budget_ms: map.hold_up.announced_budget_ms,
            converter_min_mv: hw::pins::CONVERTER_MIN_MV,
            ..base
        };
        let set = |slot: &mut u32, v: Option<u32>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut s.ignition_debounce_ms, self.debounce_ms);
        set(&mut s.power_on_delay_ms, self.power_on_delay_ms);
        set(&mut s.boot_timeout_ms, self.boot_timeout_ms);
        set(&mut s.off_delay_ms, self.off_delay_ms);
        set(&mut s.shutdown_deadline_ms, self.shutdown_deadline_ms);
        set(&mut s.halt_grace_ms, self.halt_grace_ms);
        set(&mut s.hold_up_budget_ms, self.hold_up_budget_ms);
        set(&mut s.low_battery_for_ms, self.low_battery_for_ms);
        set(&mut s.watchdog_timeout_ms, self.watchdog_timeout_ms);
        set(&mut s.power_cycle_off_ms, self.power_cycle_off_ms);
        if let Some(n) = self.max_power_cycles_per_hour {
            s.max_power_cycles_per_hour = n;
        }
        firmware::Config::new(s).context("invalid supervisor settings")?;
        Ok(s)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let settings = args.settings()?;
    let script = match &args.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read scenario {}", path.display()))?;
            parse_script(&text).with_context(|| format!("bad scenario {}", path.display()))?
        }
        None => Vec::new(),
    };
    let mut board = SimBoard::new(settings).context("invalid supervisor settings")?;
    if args.ignition {
        board.apply(&Command::Supply(board.vehicle().nominal_mv));
        board.apply(&Command::Ignition(true));
    }
    let pty = Pty::open().context("cannot create a pseudo-terminal")?;
    let path = pty.path().to_path_buf();
    let options = RunOptions {
        speed: args.speed,
        exit_after_ms: args.exit_after_ms,
        poll: Duration::from_millis(5),
    };
    let mut handle = spawn(board, pty.into_port(), options);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "pty {}", path.display())?;
        out.flush()?;
    }
    for cmd in script {
        handle.command(cmd);
    }
    let commands = handle.command_sender();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match parse_line(&line) {
                    Ok(Some(cmd)) => {
                        if commands.send(cmd).is_err() {
                            break;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => eprintln!("hw-sim: {e}"),
                }
            }
        })?;
    let events = handle.take_events().context("event stream already taken")?;
    let mut out = std::io::stdout().lock();
    for event in events {
        writeln!(out, "{event}")?;
        out.flush()?;
        if let RunnerEvent::Stopped { .. } = event {
            break;
        }
    }
    drop(out);
    handle.join();
    Ok(())
}
