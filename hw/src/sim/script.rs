//! Scripted vehicle commands for the simulated board, one per line, from stdin or a scenario
//! file. Parsing turns text into typed [`Command`]s in one place; the board never sees text.
//!
//! ```text
//! # comments and blank lines are ignored
//! ignition on            # or: ignition off
//! wait 7000              # virtual milliseconds
//! crank                  # 5.0 V for 40 ms, then 8.5 V for 3 s (optional: crank DIP_MV DIP_MS REDUCED_MV REDUCED_MS)
//! supply 12600           # set the input voltage (mV)
//! power-fail             # input lost (battery pulled): 0 V
//! power-restore          # input back at the nominal voltage
//! low-battery            # 10.8 V (optional: low-battery MV)
//! tamper                 # the enclosure is opened
//! noise                  # two bad frames on the line to the host (see `sim::LINE_NOISE`)
//! status                 # print the supervisor status
//! quit                   # stop the simulator
//! ```

use std::fmt;

/// Most commands one scenario file may hold.
pub const MAX_SCRIPT_LINES: usize = 10_000;

/// A vehicle or driver command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Ignition switch.
    Ignition(bool),
    /// Set the input voltage.
    Supply(u16),
    /// Engine start: a short deep dip, then a reduced level, then back.
    Crank {
        /// Dip level.
        dip_mv: u16,
        /// Dip length.
        dip_ms: u64,
        /// Level while the starter turns.
        reduced_mv: u16,
        /// Length of the reduced level.
        reduced_ms: u64,
    },
    /// Input lost (0 V).
    PowerFail,
    /// Input back at the nominal voltage.
    PowerRestore,
    /// Input at a low-battery level.
    LowBattery(u16),
    /// Enclosure opened.
    Tamper,
    /// Two bad frames on the host link towards the host ([`super::LINE_NOISE`]).
    Noise,
    /// Let virtual time pass before the next command.
    Wait(u64),
    /// Print the status.
    Status,
    /// Stop.
    Quit,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Command::Ignition(on) => write!(f, "ignition {}", if on { "on" } else { "off" }),
            Command::Supply(mv) => write!(f, "supply {mv}"),
            Command::Crank {
                dip_mv,
                dip_ms,
                reduced_mv,
                reduced_ms,
            } => {
                write!(f, "crank {dip_mv} {dip_ms} {reduced_mv} {reduced_ms}")
            }
            Command::PowerFail => write!(f, "power-fail"),
            Command::PowerRestore => write!(f, "power-restore"),
            Command::LowBattery(mv) => write!(f, "low-battery {mv}"),
            Command::Tamper => write!(f, "tamper"),
            Command::Noise => write!(f, "noise"),
            Command::Wait(ms) => write!(f, "wait {ms}"),
            Command::Status => write!(f, "status"),
            Command::Quit => write!(f, "quit"),
        }
    }
}

/// A line that is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number (1 for single lines).
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

fn number<T: std::str::FromStr>(word: Option<&str>, what: &str) -> Result<T, String> {
    let word = word.ok_or_else(|| format!("missing {what}"))?;
    word.parse().map_err(|_| format!("invalid {what} {word:?}"))
}

fn optional<T: std::str::FromStr>(word: Option<&str>, what: &str, default: T) -> Result<T, String> {
    match word {
        None => Ok(default),
        Some(w) => number(Some(w), what),
    }
}

fn parse_words(line: &str) -> Result<Option<Command>, String> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    let cmd = match verb {
        "ignition" => match words.next() {
            Some("on") => Command::Ignition(true),
            Some("off") => Command::Ignition(false),
            other => return Err(format!("ignition needs on or off, got {other:?}")),
        },
        "supply" => Command::Supply(number(words.next(), "millivolts")?),
        "crank" => Command::Crank {
            dip_mv: optional(words.next(), "dip millivolts", 5_000)?,
            dip_ms: optional(words.next(), "dip milliseconds", 40)?,
            reduced_mv: optional(words.next(), "reduced millivolts", 8_500)?,
            reduced_ms: optional(words.next(), "reduced milliseconds", 3_000)?,
        },
        "power-fail" => Command::PowerFail,
        "power-restore" => Command::PowerRestore,
        "low-battery" => Command::LowBattery(optional(words.next(), "millivolts", 10_800)?),
        "tamper" => Command::Tamper,
        "noise" => Command::Noise,
        "wait" => Command::Wait(number(words.next(), "milliseconds")?),
        "status" => Command::Status,
        "quit" | "exit" => Command::Quit,
        other => return Err(format!("unknown command {other:?}")),
    };
    if let Some(extra) = words.next() {
        return Err(format!("unexpected {extra:?} after {verb}"));
    }
    Ok(Some(cmd))
}

/// Parse one line (`None` for blank lines and comments).
pub fn parse_line(line: &str) -> Result<Option<Command>, ParseError> {
    parse_words(line).map_err(|message| ParseError { line: 1, message })
}

/// Parse a scenario file.
pub fn parse_script(text: &str) -> Result<Vec<Command>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(cmd) = parse_words(line).map_err(|message| ParseError {
            line: i + 1,
            message,
        })? {
            if out.len() >= MAX_SCRIPT_LINES {
                return Err(ParseError {
                    line: i + 1,
                    message: "scenario too long".into(),
                });
            }
            out.push(cmd);
        }
    }
    Ok(out)
}
