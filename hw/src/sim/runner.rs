//! Runs a [`SimBoard`] against the wall clock on a thread, over any [`Port`]: an in-process
//! [`duplex`](crate::channel::duplex) for tests in one process, or a [`Pty`](crate::serial::Pty)
//! so a separate daemon process can open `/dev/pts/N`.
//!
//! Commands go through one queue in order; `wait MS` holds the queue for that much *virtual*
//! time, so a scenario file replays with the same timings whatever the speed.

use super::script::Command;
use super::{SimBoard, TimedEvent};
use crate::serial::Port;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Events buffered for the consumer before new ones are dropped.
pub const EVENT_CHANNEL: usize = 8_192;
/// Commands queued (including scenario lines) before new ones are refused.
pub const COMMAND_QUEUE: usize = 10_000;

/// How the runner paces the board.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RunOptions {
    /// Virtual milliseconds per real millisecond (1.0 = real time). Budgets announced to the
    /// host are virtual; keep 1.0 when a real daemon must meet them.
    pub speed: f64,
    /// Real time between pacing rounds.
    pub poll: Duration,
    /// Stop after this much virtual time.
    pub exit_after_ms: Option<u64>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            speed: 1.0,
            poll: Duration::from_millis(5),
            exit_after_ms: None,
        }
    }
}

/// What the runner reports besides board events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunnerEvent {
    /// A board event.
    Board(TimedEvent),
    /// Answer to a `status` command.
    Status {
        /// Virtual time.
        at_ms: u64,
        /// One-line status.
        line: String,
    },
    /// The runner stopped (quit, time limit, or the port failed).
    Stopped {
        /// Virtual time.
        at_ms: u64,
    },
}

impl std::fmt::Display for RunnerEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunnerEvent::Board(e) => write!(f, "{e}"),
            RunnerEvent::Status { at_ms, line } => write!(f, "t={at_ms} status {line}"),
            RunnerEvent::Stopped { at_ms } => write!(f, "t={at_ms} stopped"),
        }
    }
}

/// Handle to a running simulated board.
#[derive(Debug)]
pub struct SimHandle {
    commands: Sender<Command>,
    events: Option<Receiver<RunnerEvent>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<SimBoard>>,
}

impl SimHandle {
    /// Queue a command (applied in order; `wait` delays the ones after it).
    pub fn command(&self, cmd: Command) {
        // The runner has stopped: nothing to command.
        let _ = self.commands.send(cmd);
    }

    /// A sender for commands, e.g. for a stdin-reading thread.
    pub fn command_sender(&self) -> Sender<Command> {
        self.commands.clone()
    }

    /// The event stream (the first call takes it).
    pub fn take_events(&mut self) -> Option<Receiver<RunnerEvent>> {
        self.events.take()
    }

    /// Wait for the runner to stop by itself (quit or time limit) and return the board.
    pub fn join(mut self) -> Option<SimBoard> {
        self.thread.take().and_then(|t| t.join().ok())
    }

    /// Stop the runner and return the board.
    pub fn stop(mut self) -> Option<SimBoard> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Start `board` on a thread, talking through `port`.
pub fn spawn<P: Port + 'static>(board: SimBoard, port: P, options: RunOptions) -> SimHandle {
    let (cmd_tx, cmd_rx) = channel();
    let (ev_tx, ev_rx) = sync_channel(EVENT_CHANNEL);
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name("sim-board".into())
        .spawn(move || run(board, port, options, &cmd_rx, &ev_tx, &stop2))
        .ok();
    SimHandle {
        commands: cmd_tx,
        events: Some(ev_rx),
        stop,
        thread,
    }
}

fn send(events: &SyncSender<RunnerEvent>, e: RunnerEvent) {
    // A consumer that does not keep up loses events, never stalls the board.
    let _ = events.try_send(e);
}

fn status_line(board: &SimBoard) -> String {
    let s = board.status();
    format!(
        "state={:?} ignition={} supply_mv={} faults={:#04x} power_cycles_last_hour={} last_shutdown={:?} host_power={}",
        s.state,
        s.ignition_on,
        s.supply_mv,
        s.faults.bits(),
        s.power_cycles_last_hour,
        s.last_shutdown,
        board.host_powered()
    )
}

fn run<P: Port>(
    mut board: SimBoard,
    mut port: P,
    options: RunOptions,
    commands: &Receiver<Command>,
    events: &SyncSender<RunnerEvent>,
    stop: &AtomicBool,
) -> SimBoard {
    let started = Instant::now();
    let start_ms = board.now_ms();
    let speed = if options.speed.is_finite() && options.speed > 0.0 {
        options.speed
    } else {
        1.0
    };
    let mut queue: VecDeque<Command> = VecDeque::new();
    let mut hold_until_ms = 0u64;
    let mut buf = [0u8; 512];
    let mut quit = false;
    while !quit && !stop.load(Ordering::SeqCst) {
        loop {
            match commands.try_recv() {
                Ok(cmd) if queue.len() < COMMAND_QUEUE => queue.push_back(cmd),
                Ok(_) => {}
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        match port.read_timeout(&mut buf, options.poll) {
            Ok(n) => board.receive(&buf[..n]),
            Err(_) => break,
        }
        let elapsed_ms = started.elapsed().as_secs_f64() * 1_000.0 * speed;
        // Float to integer: saturating by definition; virtual time only moves forward.
        let target = start_ms.saturating_add(elapsed_ms as u64);
        // Advance to the target, stopping at each held command's due time.
        loop {
            while board.now_ms() >= hold_until_ms {
                let Some(cmd) = queue.pop_front() else { break };
                match cmd {
                    Command::Wait(ms) => hold_until_ms = board.now_ms().saturating_add(ms),
                    Command::Status => send(
                        events,
                        RunnerEvent::Status {
                            at_ms: board.now_ms(),
                            line: status_line(&board),
                        },
                    ),
                    Command::Quit => quit = true,
                    other => board.apply(&other),
                }
            }
            let now = board.now_ms();
            if now >= target || quit {
                break;
            }
            let next_stop = if !queue.is_empty() && hold_until_ms > now {
                hold_until_ms
            } else {
                target
            };
            board.advance(next_stop.min(target) - now);
        }
        for e in board.drain_events() {
            send(events, RunnerEvent::Board(e));
        }
        let out = board.take_output();
        if !out.is_empty() && port.write_bytes(&out).is_err() {
            break;
        }
        if options
            .exit_after_ms
            .is_some_and(|limit| board.now_ms() >= start_ms + limit)
        {
            break;
        }
    }
    send(
        events,
        RunnerEvent::Stopped {
            at_ms: board.now_ms(),
        },
    );
    board
}
