//! The supervisor task's I/O: it owns the serial link (or the in-process simulated board),
//! feeds the pure [`Policy`] with what happens — frames, link failures, finished jobs, timer
//! ticks — and carries out the actions it returns: frames to send, the link to open or close,
//! blocking jobs on tokio's blocking pool, the daemon's stop signal, log lines and status
//! reports. Time comes from an [`edge_runtime::clock::Clock`] ([`SystemClock`] unless
//! [`Supervisor::with_clock`] says otherwise); nothing here decides anything the policy could.
//!
//! The link driver ([`hw::SerialLink`]) is blocking and thread-based; its events are bridged
//! into tokio by a small forwarding thread, and every call into [`SupervisorActions`] that may
//! block (flush, stop writes, shred, prepare for shutdown) runs on tokio's blocking pool, so the
//! loop that heartbeats and reads events never waits on the disk. Heartbeats are sent from that
//! loop, on the daemon's runtime: a wedged runtime stops heartbeating and the supervisor's
//! watchdog notices, which is the point of a watchdog.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use edge_runtime::clock::{SharedClock, SystemClock};
use edge_runtime::config::{SupervisorConfig, SupervisorMode};
use firmware::proto::{Health, HostFaults, HostToMcu, LinkState, ShutdownReason};
use hw::sim::runner::{RunOptions, SimHandle};
use hw::{Event as LinkEvent, LinkError, LinkOptions, SerialLink, SimBoard};
use tokio::sync::{mpsc, watch};

use super::policy::{
    Action, Event, Inputs, Job, JobDone, Note, Policy, SendOutcome, SupervisorExit,
    SupervisorOptions,
};
use super::status::SupervisorStatusCell;
use super::SimCommand;

/// What the daemon does when the supervisor demands it. Implemented by the daemon (cache,
/// journal, LAN API, key store) and by fakes in tests.
///
/// `flush`, `stop_writes`, `resume_writes`, `shred` and `prepare_shutdown` are called on a
/// blocking thread and may take their time (within the budgets described on each); `health`
/// and `led_state` are called from the async loop at every step and must return at once.
pub trait SupervisorActions: Send + Sync + 'static {
    /// Make the cache and the audit journal durable (sled `flush`, journal fsync). Returns
    /// whether everything was flushed. Called after [`stop_writes`](Self::stop_writes) on a
    /// power failure (budget: the hold-up time, ≈ 8 s, of which the daemon aims to use half) and
    /// before acknowledging a shutdown request.
    fn flush(&self) -> bool;

    /// Power failure or shutdown: stop accepting new work that writes (LAN writes answer 503,
    /// sync stops applying batches), and return once in-flight writes have finished. Must be
    /// quick (well under a second): the flush comes after it inside the same budget.
    fn stop_writes(&self);

    /// Power came back within the hold-up budget (or was never cut): take work again.
    fn resume_writes(&self);

    /// Tamper: destroy the cache's data key (crypto-shredding, `seal::shred`) and drop or wipe
    /// what was sealed under it; record and report the event. Returns success; on failure the
    /// supervisor is not told `Zeroized` and the shred is retried. Must be idempotent: the
    /// supervisor repeats `Tamper` at every hello until `Zeroized` arrives.
    fn shred(&self) -> bool;

    /// The daemon's health, sent with every heartbeat.
    fn health(&self) -> Health;

    /// What the link LED and host fault bits should show (upstream link state; certificate
    /// expired). Sent whenever it changes.
    fn led_state(&self) -> (LinkState, HostFaults);

    /// An orderly shutdown was requested (ignition off after the off-delay, low battery):
    /// finish what can be finished — upload the audit backlog first — within `time_left`, after
    /// which new writes are stopped, everything is flushed and the supervisor is told. The
    /// default does nothing. Runs on a blocking thread (use `Handle::block_on` for async work).
    fn prepare_shutdown(&self, reason: ShutdownReason, time_left: Duration) {
        let _ = (reason, time_left);
    }
}

/// Settings for the in-process simulated board (`mode = "sim"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimOptions {
    /// Firmware settings (defaults: the rev A board).
    pub settings: firmware::Settings,
    /// Start with the ignition on and the supply at its nominal voltage.
    pub ignition: bool,
    /// Virtual milliseconds per real millisecond.
    pub speed: f64,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            settings: hw::sim::board_settings(),
            ignition: true,
            speed: 1.0,
        }
    }
}

/// Where the supervisor link goes.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkSource {
    /// A serial device (`/dev/ttyS1`, a udev symlink, or `hw-sim`'s pty).
    Serial(PathBuf),
    /// The simulated board, in process.
    Sim(SimOptions),
}

/// The supervisor could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// `mode = "serial"` without a device.
    #[error("supervisor mode \"serial\" needs a device")]
    NoDevice,
    /// The simulated board's settings are invalid.
    #[error("invalid simulated supervisor settings: {0}")]
    Sim(String),
}

enum Source {
    Serial(PathBuf),
    Sim {
        handle: SimHandle,
        port: Option<hw::channel::ChannelPort>,
    },
}

/// The daemon's supervisor task: build it, hand [`status`](Supervisor::status) to `/v1/status`,
/// then [`run`](Supervisor::run) it.
pub struct Supervisor {
    source: Source,
    options: SupervisorOptions,
    status: SupervisorStatusCell,
    clock: SharedClock,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("options", &self.options)
            .field("status", &self.status.get())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// The supervisor described by `edge.toml` (`None` for `mode = "none"`), with default
    /// timings.
    pub fn from_config(cfg: &SupervisorConfig) -> Result<Option<Supervisor>, SupervisorError> {
        let source = match cfg.mode {
            SupervisorMode::None => return Ok(None),
            SupervisorMode::Serial => {
                LinkSource::Serial(cfg.device.clone().ok_or(SupervisorError::NoDevice)?)
            }
            SupervisorMode::Sim => LinkSource::Sim(SimOptions::default()),
        };
        Supervisor::new(source, SupervisorOptions::default()).map(Some)
    }

    /// A supervisor task for `source`, on the system clock. For [`LinkSource::Sim`] the
    /// simulated board starts now (on its own thread) and runs until the `Supervisor` is
    /// dropped.
    pub fn new(source: LinkSource, options: SupervisorOptions) -> Result<Self, SupervisorError> {
        let status = SupervisorStatusCell::default();
        let source = match source {
            LinkSource::Serial(path) => {
                status.update(|s| {
                    s.mode = "serial".into();
                    s.device = Some(path.display().to_string());
                });
                Source::Serial(path)
            }
            LinkSource::Sim(sim) => {
                let mut board =
                    SimBoard::new(sim.settings).map_err(|e| SupervisorError::Sim(e.to_string()))?;
                if sim.ignition {
                    board.apply(&SimCommand::Supply(board.vehicle().nominal_mv));
                    board.apply(&SimCommand::Ignition(true));
                }
                let (host, board_port) = hw::channel::duplex();
                let handle = hw::sim::runner::spawn(
                    board,
                    board_port,
                    RunOptions {
                        speed: sim.speed,
                        ..RunOptions::default()
                    },
                );
                status.update(|s| s.mode = "sim".into());
                Source::Sim {
                    handle,
                    port: Some(host),
                }
            }
        };
        Ok(Supervisor {
            source,
            options,
            status,
            clock: SystemClock::shared(),
        })
    }

    /// Take time from `clock` instead of the system clock (tests: a `ManualClock`).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The live status, for `/v1/status` (share it before calling [`run`](Self::run)).
    pub fn status(&self) -> SupervisorStatusCell {
        self.status.clone()
    }

    /// Use `cell` for the status (e.g. one created before the supervisor).
    pub fn with_status(mut self, cell: SupervisorStatusCell) -> Self {
        cell.set(&self.status.get());
        self.status = cell;
        self
    }

    /// Vehicle commands for the simulated board (`ignition off`, `power-fail`, `tamper`, ...);
    /// `None` for a serial device.
    pub fn sim_commands(&self) -> Option<std::sync::mpsc::Sender<SimCommand>> {
        match &self.source {
            Source::Sim { handle, .. } => Some(handle.command_sender()),
            Source::Serial(_) => None,
        }
    }

    /// Talk to the supervisor until the daemon stops (`shutdown` set to `true` by anyone) or the
    /// supervisor's shutdown request has been acknowledged (then this sets `shutdown` itself).
    /// Never fails: an unreachable supervisor is retried forever and shown in the status.
    pub async fn run(
        self,
        actions: Arc<dyn SupervisorActions>,
        shutdown: watch::Sender<bool>,
    ) -> SupervisorExit {
        // Unbounded but bounded by construction: one result per job, and the policy starts a
        // job only on a state change (power fail, power back, shutdown, tamper), at most one
        // of each in flight; a result must never wait, since it comes from a blocking thread
        // doing the flush the hold-up budget is counting.
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let Supervisor {
            source,
            options,
            status,
            clock,
        } = self;
        let policy = Policy::new(&options, status.get());
        let mut driver = Driver {
            actions,
            status,
            clock,
            baud: options.baud,
            shutdown,
            source,
            conn: None,
            closing: None,
            jobs_tx,
            jobs_rx,
            policy,
        };
        driver.run().await
    }
}

/// Run the supervisor described by `cfg` until the daemon stops; returns at once for
/// `mode = "none"`. `status` is updated throughout (show it in `/v1/status`). When the
/// supervisor asks for a shutdown, this flushes, acknowledges and sets `shutdown` to `true`.
pub async fn run_supervisor(
    cfg: &SupervisorConfig,
    actions: Arc<dyn SupervisorActions>,
    status: SupervisorStatusCell,
    shutdown: watch::Sender<bool>,
) -> SupervisorExit {
    match Supervisor::from_config(cfg) {
        Ok(None) => {
            status.update(|s| s.mode = "none".into());
            SupervisorExit::Disabled
        }
        Ok(Some(sup)) => sup.with_status(status).run(actions, shutdown).await,
        Err(e) => {
            tracing::error!(error = %e, "supervisor disabled");
            status.update(|s| s.fault = Some(e.to_string()));
            SupervisorExit::Disabled
        }
    }
}

// ---------------------------------------------------------------------------------------------

struct Conn {
    link: SerialLink,
    events: mpsc::Receiver<LinkEvent>,
    /// For a serial device: its path and device number when opened, to notice it vanishing or
    /// being replaced (USB replug, `hw-sim` restarted behind a symlink).
    device: Option<(PathBuf, u64)>,
}

struct Driver {
    actions: Arc<dyn SupervisorActions>,
    status: SupervisorStatusCell,
    clock: SharedClock,
    baud: Option<u32>,
    shutdown: watch::Sender<bool>,
    source: Source,
    conn: Option<Conn>,
    /// A link being closed (its threads joined) on the blocking pool.
    closing: Option<tokio::task::JoinHandle<()>>,
    jobs_tx: mpsc::UnboundedSender<JobDone>,
    jobs_rx: mpsc::UnboundedReceiver<JobDone>,
    policy: Policy,
}

fn device_number(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.rdev())
}

async fn next_event(conn: &mut Option<Conn>) -> Option<LinkEvent> {
    match conn {
        Some(c) => c.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Forward the driver's blocking event channel into tokio.
fn bridge(
    rx: std::sync::mpsc::Receiver<LinkEvent>,
) -> Result<mpsc::Receiver<LinkEvent>, std::io::Error> {
    let (tx, out) = mpsc::channel(64);
    std::thread::Builder::new()
        .name("supervisor-events".into())
        .spawn(move || {
            for ev in rx {
                if tx.blocking_send(ev).is_err() {
                    break;
                }
            }
        })?;
    Ok(out)
}

/// The `tracing` line for a policy [`Note`] (the same lines, fields and levels as ever: the
/// system tests and operators grep for them).
fn log(note: &Note) {
    match note {
        Note::LinkLost { reason } => {
            tracing::warn!(reason = %reason, "supervisor link lost; reconnecting");
        }
        Note::LinkUnavailable {
            reason,
            retry_in_ms,
            first: true,
        } => tracing::warn!(reason = %reason, retry_in_ms, "supervisor link unavailable"),
        Note::LinkUnavailable {
            reason,
            retry_in_ms,
            first: false,
        } => {
            tracing::debug!(reason = %reason, retry_in_ms, "supervisor link still unavailable");
        }
        Note::LinkGone { reason } => {
            tracing::error!(reason = %reason, "supervisor link cannot be reopened");
        }
        Note::PowerFailAckOverdue { waited_ms } => tracing::error!(
            waited_ms,
            "power-fail flush not finished within the budget; acknowledging unflushed"
        ),
        Note::PowerNotCut => {
            tracing::warn!("power not cut after the power-fail acknowledgement; resuming");
        }
        Note::ShutdownAckOverdue => tracing::error!(
            "shutdown preparation not finished before the deadline; acknowledging unflushed"
        ),
        Note::BadFrame(e) => tracing::debug!(error = %e, "bad frame from the supervisor"),
        Note::Undelivered {
            msg,
            was_connected: true,
        } => tracing::warn!(message = ?msg, "supervisor did not acknowledge a message"),
        Note::Undelivered {
            msg,
            was_connected: false,
        } => tracing::debug!(message = ?msg, "supervisor did not acknowledge a message"),
        Note::Hello {
            version,
            board_rev,
            fw,
        } => tracing::info!(version, board_rev, fw = ?fw, "supervisor hello"),
        Note::Ignition { on } => tracing::info!(on, "ignition changed"),
        Note::LowBattery { millivolts } => {
            tracing::warn!(millivolts, "supervisor reports low battery");
        }
        Note::PowerFail { budget_ms } => {
            tracing::warn!(budget_ms, "POWER FAIL: stopping writes and flushing");
        }
        Note::PowerRestored => tracing::info!("power restored"),
        Note::PowerFailAcked { flushed, took_ms } => {
            tracing::warn!(flushed, took_ms, "power-fail acknowledged");
        }
        Note::ShutdownRequested {
            reason,
            deadline_ms,
        } => tracing::warn!(?reason, deadline_ms, "shutdown requested by the supervisor"),
        Note::ShutdownAcked { reason, flushed } => {
            tracing::warn!(
                ?reason,
                flushed,
                "shutdown acknowledged; stopping the daemon"
            );
        }
        Note::Tamper => {
            tracing::error!("supervisor reports TAMPER: destroying the cache data key");
        }
        Note::Zeroized => tracing::warn!("cache data key destroyed; supervisor told Zeroized"),
        Note::ShredFailed { retry_in_ms } => {
            tracing::error!(retry_in_ms, "crypto-shred failed; retrying");
        }
        Note::WritesResumed => tracing::info!("writes resumed"),
    }
}

enum OpenError {
    /// Try again later.
    Transient(String),
    /// Retrying cannot help (the in-process simulated board has gone).
    Permanent(String),
}

impl Driver {
    async fn run(&mut self) -> SupervisorExit {
        let mut stop_rx = self.shutdown.subscribe();
        loop {
            if let Some(exit) = self.policy.exit() {
                if !self.policy.lingering() {
                    self.close_link().await;
                    return exit;
                }
            } else if *stop_rx.borrow_and_update() {
                tracing::debug!("supervisor task stopping with the daemon");
                self.close_link().await;
                return SupervisorExit::Stopped;
            }
            let now = self.clock.mono_ms();
            let wait = self.policy.next_wake(now).saturating_sub(now);
            tokio::select! {
                changed = stop_rx.changed() => {
                    if changed.is_err() && self.policy.exit().is_none() {
                        // Nobody can ask us to stop any more; only our own exit remains.
                        self.close_link().await;
                        return SupervisorExit::Stopped;
                    }
                }
                Some(done) = self.jobs_rx.recv() => self.feed(Event::JobDone(done)).await,
                ev = next_event(&mut self.conn) => {
                    let event = match ev {
                        Some(LinkEvent::Message(msg)) => Event::Received {
                            msg,
                            at: self.clock.wall(),
                        },
                        Some(LinkEvent::BadFrame(e)) => Event::BadFrame(e),
                        Some(LinkEvent::Undelivered(msg)) => Event::Undelivered(msg),
                        Some(LinkEvent::Closed) => {
                            Event::LinkLost("supervisor link closed".into())
                        }
                        None => Event::LinkLost("supervisor link event stream ended".into()),
                    };
                    self.feed(event).await;
                }
                () = tokio::time::sleep(Duration::from_millis(wait)) => {
                    self.check_device().await;
                    self.feed(Event::Tick).await;
                }
            }
        }
    }

    /// One event into the policy; its actions carried out, feeding back the outcome of each
    /// send and open until the policy is done.
    async fn feed(&mut self, event: Event) {
        let mut event = Some(event);
        while let Some(ev) = event.take() {
            let (health, leds) = (self.actions.health(), self.actions.led_state());
            let now = self.clock.mono_ms();
            let actions = self.policy.step(
                now,
                Inputs {
                    health,
                    leds,
                    event: ev,
                },
            );
            for action in actions {
                match action {
                    Action::Open => event = Some(self.open().await),
                    Action::Send(msg) => event = Some(Event::Sent(self.send(msg))),
                    Action::CloseLink => self.drop_link(),
                    Action::Run(job) => self.spawn(job),
                    Action::StopDaemon => {
                        self.shutdown.send_replace(true);
                    }
                    Action::Report => self.status.set(self.policy.status()),
                    Action::Log(note) => log(&note),
                }
            }
        }
    }

    // --- link ------------------------------------------------------------------------------

    fn drop_link(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Dropping a tty link joins its threads (≤ 100 ms): keep it off the async loop.
            self.closing = Some(tokio::task::spawn_blocking(move || drop(conn)));
        }
    }

    async fn close_link(&mut self) {
        self.drop_link();
        if let Some(closing) = self.closing.take() {
            let _ = closing.await;
        }
    }

    /// A serial device that vanished or was replaced (its device number changed) is reopened:
    /// a hung-up tty may never report an error on reads.
    async fn check_device(&mut self) {
        let Some(conn) = &self.conn else { return };
        let Some((path, dev)) = &conn.device else {
            return;
        };
        let why = match device_number(path) {
            Some(now) if now == *dev => return,
            Some(_) => format!("{} was replaced", path.display()),
            None => format!("{} vanished", path.display()),
        };
        self.feed(Event::LinkLost(why)).await;
    }

    /// Open the link; the policy hears how it went.
    async fn open(&mut self) -> Event {
        match self.try_open().await {
            Ok(conn) => {
                tracing::info!(device = ?conn.device.as_ref().map(|d| &d.0), "supervisor link open");
                self.conn = Some(conn);
                Event::Opened
            }
            Err(OpenError::Transient(why)) => Event::OpenFailed {
                why,
                permanent: false,
            },
            Err(OpenError::Permanent(why)) => Event::OpenFailed {
                why,
                permanent: true,
            },
        }
    }

    async fn try_open(&mut self) -> Result<Conn, OpenError> {
        if let Some(closing) = self.closing.take() {
            let _ = closing.await;
        }
        let baud = self.baud;
        let (link, events, device) = match &mut self.source {
            Source::Serial(path) => {
                let path = path.clone();
                let opened = tokio::task::spawn_blocking(move || {
                    let options = LinkOptions {
                        baud,
                        ..LinkOptions::default()
                    };
                    SerialLink::open(&path, options).map(|(link, rx)| {
                        let dev = device_number(&path).map(|n| (path, n));
                        (link, rx, dev)
                    })
                })
                .await
                .map_err(|e| OpenError::Transient(format!("supervisor open task failed: {e}")))?;
                match opened {
                    Ok(v) => v,
                    Err(e) => {
                        let mut msg = e.to_string();
                        if let LinkError::Open { source, .. } = &e {
                            msg = format!("{msg}: {source}");
                        }
                        return Err(OpenError::Transient(msg));
                    }
                }
            }
            Source::Sim { port, .. } => {
                let Some(port) = port.take() else {
                    return Err(OpenError::Permanent(
                        "simulated supervisor board stopped".into(),
                    ));
                };
                let (reader, writer) = port.split();
                let (link, rx) = SerialLink::new(reader, writer, LinkOptions::default());
                (link, rx, None)
            }
        };
        let events = bridge(events).map_err(|e| {
            OpenError::Transient(format!("cannot start the supervisor event thread: {e}"))
        })?;
        Ok(Conn {
            link,
            events,
            device,
        })
    }

    /// Hand `msg` to the link.
    fn send(&mut self, msg: HostToMcu) -> SendOutcome {
        let Some(conn) = &self.conn else {
            return SendOutcome::Failed("supervisor link closed".into());
        };
        match conn.link.send(msg) {
            Ok(_) => SendOutcome::Sent,
            Err(LinkError::QueueFull) => {
                tracing::warn!("supervisor link send queue full; will retry");
                SendOutcome::QueueFull
            }
            Err(e) => SendOutcome::Failed(match &e {
                LinkError::Write(io) => format!("{e}: {io}"),
                _ => e.to_string(),
            }),
        }
    }

    // --- jobs --------------------------------------------------------------------------------

    fn spawn(&self, job: Job) {
        let actions = Arc::clone(&self.actions);
        let done = self.jobs_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = match job {
                Job::PowerFail { id } => {
                    actions.stop_writes();
                    let flushed = actions.flush();
                    JobDone::PowerFail { id, flushed }
                }
                Job::Shutdown {
                    id,
                    reason,
                    prepare,
                } => {
                    actions.prepare_shutdown(reason, prepare);
                    actions.stop_writes();
                    let flushed = actions.flush();
                    JobDone::Shutdown { id, flushed }
                }
                Job::Shred => JobDone::Shred {
                    ok: actions.shred(),
                },
                Job::Resume => {
                    actions.resume_writes();
                    JobDone::Resumed
                }
            };
            let _ = done.send(result);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_none_disables_and_serial_needs_a_device() {
        let none = SupervisorConfig::default();
        assert!(matches!(Supervisor::from_config(&none), Ok(None)));
        let serial = SupervisorConfig {
            mode: SupervisorMode::Serial,
            device: None,
        };
        assert!(matches!(
            Supervisor::from_config(&serial),
            Err(SupervisorError::NoDevice)
        ));
        let serial = SupervisorConfig {
            mode: SupervisorMode::Serial,
            device: Some("/dev/ttyS1".into()),
        };
        let sup = Supervisor::from_config(&serial)
            .ok()
            .flatten()
            .map(|s| s.status().get());
        assert_eq!(sup.as_ref().map(|s| s.mode.as_str()), Some("serial"));
        assert_eq!(sup.and_then(|s| s.device), Some("/dev/ttyS1".to_string()));
    }
}
