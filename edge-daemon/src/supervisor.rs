//! The daemon's side of the supervisor board: heartbeats, LEDs, and obeying the supervisor's
//! power-fail, shutdown and tamper demands (`docs/supervisor.md`, "The daemon side").
//!
//! The daemon implements [`SupervisorActions`] (flush, stop writes, crypto-shred, health, LED
//! state) and runs [`run_supervisor`] (or [`Supervisor::run`]) as a task on its own runtime. The
//! link driver ([`hw::SerialLink`]) is blocking and thread-based; its events are bridged into
//! tokio by a small forwarding thread, and every call into [`SupervisorActions`] that may block
//! (flush, stop writes, shred, prepare for shutdown) runs on tokio's blocking pool, so the loop
//! that heartbeats and reads events never waits on the disk. Heartbeats are sent from that loop,
//! on the daemon's runtime: a wedged runtime stops heartbeating and the supervisor's watchdog
//! notices, which is the point of a watchdog.
//!
//! The supervisor being unreachable is never fatal: the link is reopened with back-off forever
//! and the reason is shown in [`SupervisorStatus::fault`] (`/v1/status`).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edge_proto::time::UnixMillis;
use edge_runtime::config::{SupervisorConfig, SupervisorMode};
pub use firmware::proto::{Health, HostFaults, LinkState, ShutdownReason};
use firmware::proto::{HostToMcu, McuToHost};
use hw::sim::runner::{RunOptions, SimHandle};
pub use hw::sim::script::Command as SimCommand;
use hw::{Event, LinkError, LinkOptions, SerialLink, SimBoard};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the daemon does when the supervisor demands it. Implemented by the daemon (cache,
/// journal, LAN API, key store) and by fakes in tests.
///
/// `flush`, `stop_writes`, `resume_writes`, `shred` and `prepare_shutdown` are called on a
/// blocking thread and may take their time (within the budgets described on each); `health`
/// and `led_state` are called from the async loop every tick and must return at once.
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

/// Timings of the daemon side. The defaults match the firmware's defaults
/// (`docs/supervisor.md`); tests shorten them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SupervisorOptions {
    /// Heartbeat period. The supervisor's watchdog fires after 30 s without one; 5 s leaves
    /// room for five lost heartbeats.
    pub heartbeat: Duration,
    /// Housekeeping period: LED changes, device checks, retries, deadlines.
    pub tick: Duration,
    /// Baud rate for a serial device (`None` leaves it alone, e.g. for a pty).
    pub baud: Option<u32>,
    /// First reconnect delay after the link fails; doubled up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Delay before retrying a failed crypto-shred.
    pub shred_retry: Duration,
    /// How long the link stays open after a shutdown acknowledgement (so the driver can
    /// retransmit it once if the first frame was lost) before [`Supervisor::run`] returns.
    pub ack_linger: Duration,
    /// After a power-fail acknowledgement the supervisor cuts power at once; a daemon still
    /// running this long afterwards was not cut (simulated board, or power back) and resumes.
    pub power_cut_grace: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            heartbeat: Duration::from_secs(5),
            tick: Duration::from_millis(250),
            baud: Some(115_200),
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(5),
            shred_retry: Duration::from_secs(5),
            ack_linger: Duration::from_millis(600),
            power_cut_grace: Duration::from_secs(2),
        }
    }
}

/// How long the daemon waits for the power-fail flush before acknowledging anyway (with
/// `flushed: false`, so the cut is orderly): three quarters of the announced budget, counted
/// from the moment the `PowerFail` arrived. A healthy flush acks far sooner.
pub fn power_fail_ack_window(budget_ms: u32) -> Duration {
    Duration::from_millis(u64::from(budget_ms) * 3 / 4)
}

/// How a shutdown request's deadline is shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShutdownPlan {
    /// Time given to [`SupervisorActions::prepare_shutdown`] (uploading the audit backlog).
    pub prepare: Duration,
    /// Latest moment (from receipt) to acknowledge; after it the daemon acks `flushed: false`.
    pub ack_by: Duration,
}

/// Share out a shutdown deadline: the acknowledgement goes out a safety margin before the hard
/// cut (a tenth of the deadline, 200 ms to 5 s), and a reserve before that (a quarter of the
/// deadline, 2 s to 20 s) is kept for stopping writes and flushing. With the default 120 s:
/// 100 s to prepare, ack by 115 s.
pub fn shutdown_plan(deadline_ms: u32) -> ShutdownPlan {
    let deadline = Duration::from_millis(u64::from(deadline_ms));
    let margin = (deadline / 10).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let reserve = (deadline / 4).clamp(Duration::from_secs(2), Duration::from_secs(20));
    ShutdownPlan {
        prepare: deadline.saturating_sub(reserve),
        ack_by: deadline.saturating_sub(margin),
    }
}

/// Reconnect delays: `min`, doubling, capped at `max`; reset once the supervisor answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A back-off starting at `min` (at least 1 ms) and never above `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay to wait now; the one after is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Start again from the shortest delay.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The supervisor's identity, from its `Hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct McuInfo {
    /// Link protocol version.
    pub protocol_version: u8,
    /// Board revision code (`hw::pins`).
    pub board_rev: u8,
    /// Firmware version, `major.minor.patch`.
    pub firmware: String,
}

/// The supervisor's own status (its answer to `GetStatus`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct McuStatusView {
    /// Coarse state (`Running`, `OffDelay`, `ShutdownPending`, ...).
    pub state: String,
    /// Debounced ignition.
    pub ignition_on: bool,
    /// Supply voltage in millivolts.
    pub supply_mv: u16,
    /// Fault bits (0x01 watchdog, 0x02 low battery, 0x04 tamper, 0x08 certificate expired,
    /// 0x10 watchdog limit).
    pub faults: u8,
    /// Watchdog power cycles in the last hour.
    pub power_cycles_last_hour: u8,
    /// Why the supervisor last cut host power, if it has since it started.
    pub last_shutdown: Option<String>,
}

/// What the daemon knows about the supervisor, for `/v1/status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SupervisorStatus {
    /// `none`, `serial` or `sim`.
    pub mode: String,
    /// The serial device, if any.
    pub device: Option<String>,
    /// The device is open.
    pub link_up: bool,
    /// The supervisor answered our hello on the open link.
    pub connected: bool,
    /// Why the link is down or what last went wrong (`None` while connected and healthy).
    pub fault: Option<String>,
    /// Times the link was opened.
    pub link_opens: u64,
    /// Failed opens and lost links.
    pub link_failures: u64,
    /// The supervisor's hello.
    pub mcu: Option<McuInfo>,
    /// The supervisor's last status report.
    pub mcu_status: Option<McuStatusView>,
    /// The last message from the supervisor.
    pub last_event: Option<String>,
    /// When it arrived (RFC 3339).
    pub last_event_at: Option<String>,
    /// Ignition, as last reported.
    pub ignition_on: Option<bool>,
    /// A power failure is being handled: writes are stopped.
    pub power_fail: bool,
    /// Power failures announced.
    pub power_fails: u64,
    /// Power restorations announced.
    pub power_restores: u64,
    /// Milliseconds from the last `PowerFail` to our acknowledgement.
    pub last_power_fail_ack_ms: Option<u64>,
    /// Why a shutdown was requested, once it has been.
    pub shutdown_requested: Option<String>,
    /// The `flushed` flag of the shutdown acknowledgement, once sent.
    pub shutdown_acked: Option<bool>,
    /// The last low-battery reading the supervisor reported.
    pub low_battery_mv: Option<u16>,
    /// The enclosure was opened (the supervisor said `Tamper`).
    pub tamper_seen: bool,
    /// The data key was destroyed and the supervisor told `Zeroized`.
    pub zeroized: bool,
    /// Failed crypto-shred attempts.
    pub shred_failures: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Frames from the supervisor that failed to decode.
    pub bad_frames: u64,
    /// Messages the supervisor never acknowledged.
    pub undelivered: u64,
}

/// Shared, cheap-to-clone view of [`SupervisorStatus`].
#[derive(Clone, Debug, Default)]
pub struct SupervisorStatusCell(Arc<Mutex<SupervisorStatus>>);

impl SupervisorStatusCell {
    /// A snapshot.
    pub fn get(&self) -> SupervisorStatus {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update<R>(&self, f: impl FnOnce(&mut SupervisorStatus) -> R) -> R {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }
}

/// Why [`Supervisor::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SupervisorExit {
    /// `mode = "none"`: nothing to do.
    Disabled,
    /// The daemon is stopping (the shutdown channel was set by someone else).
    Stopped,
    /// The supervisor asked for a shutdown; it was acknowledged and the daemon told to stop.
    /// The OS should halt within the supervisor's halt grace (3 s).
    ShutdownRequested {
        /// Why the supervisor asked.
        reason: ShutdownReason,
        /// Whether everything was flushed before the acknowledgement.
        flushed: bool,
    },
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

    /// A supervisor task for `source`. For [`LinkSource::Sim`] the simulated board starts now
    /// (on its own thread) and runs until the `Supervisor` is dropped.
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
        })
    }

    /// The live status, for `/v1/status` (share it before calling [`run`](Self::run)).
    pub fn status(&self) -> SupervisorStatusCell {
        self.status.clone()
    }

    /// Use `cell` for the status (e.g. one created before the supervisor).
    pub fn with_status(mut self, cell: SupervisorStatusCell) -> Self {
        let current = self.status.get();
        cell.update(|s| *s = current);
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
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel();
        let Supervisor {
            source,
            options,
            status,
        } = self;
        let now = Instant::now();
        let mut driver = Driver {
            actions,
            status,
            opts: options,
            shutdown,
            source,
            conn: None,
            closing: None,
            reconnect_at: now,
            backoff: Backoff::new(options.reconnect_min, options.reconnect_max),
            permanent_fault: false,
            jobs_tx,
            jobs_rx,
            next_job: 0,
            power_fail: None,
            shutdown_req: None,
            shred: Shred::Idle,
            exit: None,
            linger_until: None,
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
    events: mpsc::Receiver<Event>,
    /// For a serial device: its path and device number when opened, to notice it vanishing or
    /// being replaced (USB replug, `hw-sim` restarted behind a symlink).
    device: Option<(PathBuf, u64)>,
    hello_seen: bool,
    leds_sent: Option<(LinkState, HostFaults)>,
    next_heartbeat: Instant,
}

enum OpenError {
    /// Try again later.
    Transient(String),
    /// Retrying cannot help (the in-process simulated board has gone).
    Permanent(String),
}

struct PowerFail {
    id: u64,
    received: Instant,
    ack_by: Instant,
    /// `None` while the flush job runs.
    flushed: Option<bool>,
    acked_at: Option<Instant>,
    /// `PowerRestored` arrived.
    restored: bool,
}

struct ShutdownReq {
    id: u64,
    reason: ShutdownReason,
    ack_by: Instant,
    flushed: Option<bool>,
    acked: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shred {
    Idle,
    Running,
    RetryAt(Instant),
    /// Shredded; `Zeroized` still to be sent (link down when the shred finished).
    ZeroizePending,
    Done,
}

enum JobDone {
    PowerFail { id: u64, flushed: bool },
    Shutdown { id: u64, flushed: bool },
    Shred { ok: bool },
    Resumed,
}

struct Driver {
    actions: Arc<dyn SupervisorActions>,
    status: SupervisorStatusCell,
    opts: SupervisorOptions,
    shutdown: watch::Sender<bool>,
    source: Source,
    conn: Option<Conn>,
    /// A link being closed (its threads joined) on the blocking pool.
    closing: Option<tokio::task::JoinHandle<()>>,
    reconnect_at: Instant,
    backoff: Backoff,
    permanent_fault: bool,
    jobs_tx: mpsc::UnboundedSender<JobDone>,
    jobs_rx: mpsc::UnboundedReceiver<JobDone>,
    next_job: u64,
    power_fail: Option<PowerFail>,
    shutdown_req: Option<ShutdownReq>,
    shred: Shred,
    exit: Option<SupervisorExit>,
    linger_until: Option<Instant>,
}

fn now_rfc3339() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    UnixMillis(ms).to_rfc3339()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn device_number(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.rdev())
}

async fn next_event(conn: &mut Option<Conn>) -> Option<Event> {
    match conn {
        Some(c) => c.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Forward the driver's blocking event channel into tokio.
fn bridge(rx: std::sync::mpsc::Receiver<Event>) -> Result<mpsc::Receiver<Event>, std::io::Error> {
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

impl Driver {
    async fn run(&mut self) -> SupervisorExit {
        let mut stop_rx = self.shutdown.subscribe();
        loop {
            if let Some(exit) = self.exit {
                if self.linger_until.is_none() {
                    self.close_link().await;
                    return exit;
                }
            } else if *stop_rx.borrow_and_update() {
                tracing::debug!("supervisor task stopping with the daemon");
                self.close_link().await;
                return SupervisorExit::Stopped;
            }
            let wake = self.next_wake();
            tokio::select! {
                changed = stop_rx.changed() => {
                    if changed.is_err() && self.exit.is_none() {
                        // Nobody can ask us to stop any more; only our own exit remains.
                        self.close_link().await;
                        return SupervisorExit::Stopped;
                    }
                }
                Some(done) = self.jobs_rx.recv() => self.on_job(done),
                ev = next_event(&mut self.conn) => match ev {
                    Some(ev) => self.on_event(ev),
                    None => self.link_lost("supervisor link event stream ended".into()),
                },
                () = tokio::time::sleep_until(wake) => self.on_tick().await,
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + self.opts.tick;
        let mut consider = |t: Instant| {
            if t < wake {
                wake = t;
            }
        };
        if self.conn.is_none() && !self.permanent_fault {
            consider(self.reconnect_at);
        }
        if let Some(c) = &self.conn {
            consider(c.next_heartbeat);
        }
        if let Some(pf) = &self.power_fail {
            if pf.acked_at.is_none() && !pf.restored {
                consider(pf.ack_by);
            }
        }
        if let Some(sr) = &self.shutdown_req {
            if sr.acked.is_none() {
                consider(sr.ack_by);
            }
        }
        if let Shred::RetryAt(t) = self.shred {
            consider(t);
        }
        if let Some(t) = self.linger_until {
            consider(t);
        }
        wake.max(now)
    }

    // --- link ------------------------------------------------------------------------------

    async fn close_link(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Dropping a tty link joins its threads (≤ 100 ms): keep it off the async loop.
            self.closing = Some(tokio::task::spawn_blocking(move || drop(conn)));
        }
        if let Some(closing) = self.closing.take() {
            let _ = closing.await;
        }
    }

    fn link_lost(&mut self, why: String) {
        if self.conn.is_none() {
            return;
        }
        tracing::warn!(reason = %why, "supervisor link lost; reconnecting");
        if let Some(conn) = self.conn.take() {
            self.closing = Some(tokio::task::spawn_blocking(move || drop(conn)));
        }
        let delay = self.backoff.next_delay();
        self.reconnect_at = Instant::now() + delay;
        self.status.update(|s| {
            s.link_up = false;
            s.connected = false;
            s.link_failures += 1;
            s.fault = Some(why);
        });
    }

    async fn open(&mut self) -> Result<Conn, OpenError> {
        if let Some(closing) = self.closing.take() {
            let _ = closing.await;
        }
        let baud = self.opts.baud;
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
            hello_seen: false,
            leds_sent: None,
            next_heartbeat: Instant::now(),
        })
    }

    async fn try_connect(&mut self) {
        match self.open().await {
            Ok(conn) => {
                tracing::info!(device = ?conn.device.as_ref().map(|d| &d.0), "supervisor link open");
                self.conn = Some(conn);
                self.status.update(|s| {
                    s.link_up = true;
                    s.link_opens += 1;
                });
                // Hello first (the supervisor answers and repeats any pending demand), then the
                // first heartbeat and the LEDs: all due at once.
                self.housekeeping();
            }
            Err(OpenError::Transient(why)) => {
                let delay = self.backoff.next_delay();
                self.reconnect_at = Instant::now() + delay;
                let first = self.status.update(|s| {
                    let first = s.fault.as_deref() != Some(why.as_str());
                    s.link_up = false;
                    s.connected = false;
                    s.link_failures += 1;
                    s.fault = Some(why.clone());
                    first
                });
                if first {
                    tracing::warn!(reason = %why, retry_in_ms = millis(delay), "supervisor link unavailable");
                } else {
                    tracing::debug!(reason = %why, retry_in_ms = millis(delay), "supervisor link still unavailable");
                }
            }
            Err(OpenError::Permanent(why)) => {
                tracing::error!(reason = %why, "supervisor link cannot be reopened");
                self.permanent_fault = true;
                self.status.update(|s| {
                    s.link_up = false;
                    s.connected = false;
                    s.fault = Some(why);
                });
            }
        }
    }

    /// Send on the link if there is one; a write failure drops the link. Returns whether the
    /// message was handed to the driver.
    fn send(&mut self, f: impl FnOnce(&SerialLink) -> Result<u16, LinkError>) -> bool {
        let Some(conn) = &self.conn else {
            return false;
        };
        match f(&conn.link) {
            Ok(_) => true,
            Err(LinkError::QueueFull) => {
                tracing::warn!("supervisor link send queue full; will retry");
                false
            }
            Err(e) => {
                let why = match &e {
                    LinkError::Write(io) => format!("{e}: {io}"),
                    _ => e.to_string(),
                };
                self.link_lost(why);
                false
            }
        }
    }

    // --- periodic work ------------------------------------------------------------------------

    async fn on_tick(&mut self) {
        let now = Instant::now();
        if self.conn.is_none() && !self.permanent_fault && now >= self.reconnect_at {
            self.try_connect().await;
        }
        self.check_device();
        self.housekeeping();
        self.check_deadlines(now);
        if let Some(t) = self.linger_until {
            if now >= t {
                self.linger_until = None;
            }
        }
    }

    /// A serial device that vanished or was replaced (its device number changed) is reopened:
    /// a hung-up tty may never report an error on reads.
    fn check_device(&mut self) {
        let Some(conn) = &self.conn else { return };
        let Some((path, dev)) = &conn.device else {
            return;
        };
        match device_number(path) {
            Some(now) if now == *dev => {}
            Some(_) => self.link_lost(format!("{} was replaced", path.display())),
            None => self.link_lost(format!("{} vanished", path.display())),
        }
    }

    /// Heartbeat when due (with a hello until the supervisor has answered one), LEDs when they
    /// changed, and any acknowledgement or `Zeroized` that could not be sent earlier.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        let Some(conn) = &self.conn else { return };
        if now >= conn.next_heartbeat {
            let hello_seen = conn.hello_seen;
            if !hello_seen && !self.send(SerialLink::hello) {
                return;
            }
            let health = self.actions.health();
            if !self.send(|l| l.heartbeat(health)) {
                return;
            }
            self.status.update(|s| s.heartbeats_sent += 1);
            if let Some(c) = &mut self.conn {
                c.next_heartbeat = now + self.opts.heartbeat;
            }
        }
        // LEDs once the supervisor has answered (its hello resets what we last sent).
        let leds = self.actions.led_state();
        if self
            .conn
            .as_ref()
            .is_some_and(|c| c.hello_seen && c.leds_sent != Some(leds))
            && self.send(|l| l.set_leds(leds.0, leds.1))
        {
            if let Some(c) = &mut self.conn {
                c.leds_sent = Some(leds);
            }
        }
        if self.shred == Shred::ZeroizePending {
            self.send_zeroized();
        }
    }

    fn check_deadlines(&mut self, now: Instant) {
        if let Some(pf) = &self.power_fail {
            if pf.acked_at.is_none() && !pf.restored && now >= pf.ack_by {
                tracing::error!(
                    waited_ms = millis(now - pf.received),
                    "power-fail flush not finished within the budget; acknowledging unflushed"
                );
                self.ack_power_fail(false);
            }
        }
        if let Some(pf) = &self.power_fail {
            if let Some(acked) = pf.acked_at {
                if now >= acked + self.opts.power_cut_grace {
                    // Still running: power was not cut (simulated board, or it came back).
                    tracing::warn!("power not cut after the power-fail acknowledgement; resuming");
                    self.power_fail = None;
                    self.status.update(|s| s.power_fail = false);
                    if let Some(c) = &mut self.conn {
                        c.hello_seen = false;
                    }
                    self.resume_writes();
                }
            }
        }
        if let Some(sr) = &self.shutdown_req {
            if sr.acked.is_none() && now >= sr.ack_by {
                tracing::error!("shutdown preparation not finished before the deadline; acknowledging unflushed");
                self.ack_shutdown(false);
            }
        }
        if let Shred::RetryAt(t) = self.shred {
            if now >= t {
                self.start_shred();
            }
        }
    }

    // --- events ---------------------------------------------------------------------------

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Message(msg) => {
                self.status.update(|s| {
                    s.last_event = Some(format!("{msg:?}"));
                    s.last_event_at = Some(now_rfc3339());
                });
                self.on_message(msg);
            }
            Event::BadFrame(e) => {
                tracing::debug!(error = %e, "bad frame from the supervisor");
                self.status.update(|s| s.bad_frames += 1);
            }
            Event::Undelivered(msg) => {
                let was_connected = self.status.update(|s| {
                    s.undelivered += 1;
                    let was = s.connected;
                    if matches!(msg, HostToMcu::Hello { .. } | HostToMcu::Heartbeat { .. }) {
                        // Nobody is listening (board unpowered, wrong device, MCU hung).
                        s.connected = false;
                        s.fault =
                            Some(format!("supervisor not answering ({msg:?} unacknowledged)"));
                    }
                    was
                });
                if was_connected {
                    tracing::warn!(message = ?msg, "supervisor did not acknowledge a message");
                } else {
                    tracing::debug!(message = ?msg, "supervisor did not acknowledge a message");
                }
                let Some(conn) = &mut self.conn else { return };
                match msg {
                    // The supervisor repeats pending demands at every hello: saying hello
                    // again recovers a lost hello, heartbeat, acknowledgement or `Zeroized`.
                    HostToMcu::Hello { .. }
                    | HostToMcu::Heartbeat { .. }
                    | HostToMcu::ShutdownAck { .. }
                    | HostToMcu::Zeroized => {
                        conn.hello_seen = false;
                    }
                    HostToMcu::SetLeds { .. } => conn.leds_sent = None,
                    _ => {}
                }
            }
            Event::Closed => self.link_lost("supervisor link closed".into()),
        }
    }

    fn on_message(&mut self, msg: McuToHost) {
        match msg {
            McuToHost::Hello {
                version,
                board_rev,
                fw_version,
            } => {
                tracing::info!(version, board_rev, fw = ?fw_version, "supervisor hello");
                self.backoff.reset();
                if let Some(c) = &mut self.conn {
                    c.hello_seen = true;
                    // It may have restarted: LEDs again, and ask for its status.
                    c.leds_sent = None;
                }
                self.status.update(|s| {
                    s.connected = true;
                    s.fault = None;
                    s.mcu = Some(McuInfo {
                        protocol_version: version,
                        board_rev,
                        firmware: format!(
                            "{}.{}.{}",
                            fw_version.major, fw_version.minor, fw_version.patch
                        ),
                    });
                });
                self.send(SerialLink::get_status);
                self.housekeeping();
            }
            McuToHost::Status(st) => self.status.update(|s| {
                s.ignition_on = Some(st.ignition_on);
                s.mcu_status = Some(McuStatusView {
                    state: format!("{:?}", st.state),
                    ignition_on: st.ignition_on,
                    supply_mv: st.supply_mv,
                    faults: st.faults.bits(),
                    power_cycles_last_hour: st.power_cycles_last_hour,
                    last_shutdown: st.last_shutdown.map(|r| format!("{r:?}")),
                });
            }),
            McuToHost::IgnitionChanged { on } => {
                tracing::info!(on, "ignition changed");
                self.status.update(|s| s.ignition_on = Some(on));
            }
            McuToHost::LowBattery { millivolts } => {
                tracing::warn!(millivolts, "supervisor reports low battery");
                self.status.update(|s| s.low_battery_mv = Some(millivolts));
            }
            McuToHost::PowerFail { budget_ms } => self.on_power_fail(budget_ms),
            McuToHost::PowerRestored => self.on_power_restored(),
            McuToHost::ShutdownRequest {
                reason,
                deadline_ms,
            } => self.on_shutdown_request(reason, deadline_ms),
            McuToHost::Tamper => {
                tracing::error!("supervisor reports TAMPER: destroying the cache data key");
                self.status.update(|s| s.tamper_seen = true);
                if self.shred != Shred::Running {
                    self.start_shred();
                }
            }
            McuToHost::Ack { .. } => {}
        }
    }

    fn job_id(&mut self) -> u64 {
        self.next_job += 1;
        self.next_job
    }

    fn on_power_fail(&mut self, budget_ms: u32) {
        let now = Instant::now();
        let ack_by = now + power_fail_ack_window(budget_ms);
        if let Some(pf) = &mut self.power_fail {
            if !pf.restored {
                // Repeated (after our hello): answer with what we have.
                pf.ack_by = pf.ack_by.min(ack_by);
                if let Some(flushed) = pf.flushed {
                    self.ack_power_fail(flushed);
                }
                return;
            }
        }
        tracing::warn!(budget_ms, "POWER FAIL: stopping writes and flushing");
        let id = self.job_id();
        self.power_fail = Some(PowerFail {
            id,
            received: now,
            ack_by,
            flushed: None,
            acked_at: None,
            restored: false,
        });
        self.status.update(|s| {
            s.power_fail = true;
            s.power_fails += 1;
        });
        let actions = Arc::clone(&self.actions);
        let done = self.jobs_tx.clone();
        tokio::task::spawn_blocking(move || {
            actions.stop_writes();
            let flushed = actions.flush();
            let _ = done.send(JobDone::PowerFail { id, flushed });
        });
    }

    fn on_power_restored(&mut self) {
        tracing::info!("power restored");
        self.status.update(|s| {
            s.power_restores += 1;
            s.power_fail = false;
        });
        let Some(pf) = &mut self.power_fail else {
            return;
        };
        pf.restored = true;
        if pf.flushed.is_some() {
            self.power_fail = None;
            self.resume_writes();
        }
        // Otherwise the flush job is still running: resume when it ends (so `resume_writes`
        // never overtakes its `stop_writes`).
    }

    fn ack_power_fail(&mut self, flushed: bool) {
        if self.send(|l| l.shutdown_ack(flushed)) {
            if let Some(pf) = &mut self.power_fail {
                if pf.acked_at.is_none() {
                    let now = Instant::now();
                    let took = millis(now - pf.received);
                    pf.acked_at = Some(now);
                    tracing::warn!(flushed, took_ms = took, "power-fail acknowledged");
                    self.status
                        .update(|s| s.last_power_fail_ack_ms = Some(took));
                }
            }
        }
    }

    fn resume_writes(&mut self) {
        if self.shutdown_req.is_some() {
            return; // shutting down anyway
        }
        let actions = Arc::clone(&self.actions);
        let done = self.jobs_tx.clone();
        tokio::task::spawn_blocking(move || {
            actions.resume_writes();
            let _ = done.send(JobDone::Resumed);
        });
    }

    fn on_shutdown_request(&mut self, reason: ShutdownReason, deadline_ms: u32) {
        let now = Instant::now();
        let plan = shutdown_plan(deadline_ms);
        if let Some(sr) = &mut self.shutdown_req {
            // Repeated (after our hello).
            sr.ack_by = sr.ack_by.min(now + plan.ack_by);
            if let Some(flushed) = sr.acked.or(sr.flushed) {
                self.ack_shutdown(flushed);
            }
            return;
        }
        tracing::warn!(?reason, deadline_ms, "shutdown requested by the supervisor");
        let id = self.job_id();
        self.shutdown_req = Some(ShutdownReq {
            id,
            reason,
            ack_by: now + plan.ack_by,
            flushed: None,
            acked: None,
        });
        self.status
            .update(|s| s.shutdown_requested = Some(format!("{reason:?}")));
        let actions = Arc::clone(&self.actions);
        let done = self.jobs_tx.clone();
        tokio::task::spawn_blocking(move || {
            actions.prepare_shutdown(reason, plan.prepare);
            actions.stop_writes();
            let flushed = actions.flush();
            let _ = done.send(JobDone::Shutdown { id, flushed });
        });
    }

    fn ack_shutdown(&mut self, flushed: bool) {
        if !self.send(|l| l.shutdown_ack(flushed)) {
            // Link down: the supervisor repeats the request at our next hello; the deadline
            // still bounds everything.
            return;
        }
        let Some(sr) = &mut self.shutdown_req else {
            return;
        };
        if sr.acked.is_some() {
            return; // a repeat
        }
        sr.acked = Some(flushed);
        let reason = sr.reason;
        tracing::warn!(
            ?reason,
            flushed,
            "shutdown acknowledged; stopping the daemon"
        );
        self.status.update(|s| s.shutdown_acked = Some(flushed));
        self.exit = Some(SupervisorExit::ShutdownRequested { reason, flushed });
        self.linger_until = Some(Instant::now() + self.opts.ack_linger);
        self.shutdown.send_replace(true);
    }

    fn start_shred(&mut self) {
        self.shred = Shred::Running;
        let actions = Arc::clone(&self.actions);
        let done = self.jobs_tx.clone();
        tokio::task::spawn_blocking(move || {
            let ok = actions.shred();
            let _ = done.send(JobDone::Shred { ok });
        });
    }

    fn send_zeroized(&mut self) {
        if self.send(SerialLink::zeroized) {
            self.shred = Shred::Done;
            tracing::warn!("cache data key destroyed; supervisor told Zeroized");
            self.status.update(|s| s.zeroized = true);
        } else {
            self.shred = Shred::ZeroizePending;
        }
    }

    fn on_job(&mut self, done: JobDone) {
        match done {
            JobDone::PowerFail { id, flushed } => {
                let Some(pf) = &mut self.power_fail else {
                    return;
                };
                if pf.id != id {
                    return;
                }
                pf.flushed = Some(flushed);
                if pf.restored {
                    self.power_fail = None;
                    self.resume_writes();
                } else if pf.acked_at.is_none() {
                    self.ack_power_fail(flushed);
                }
            }
            JobDone::Shutdown { id, flushed } => {
                let Some(sr) = &mut self.shutdown_req else {
                    return;
                };
                if sr.id != id {
                    return;
                }
                sr.flushed = Some(flushed);
                if sr.acked.is_none() {
                    self.ack_shutdown(flushed);
                }
            }
            JobDone::Shred { ok: true } => self.send_zeroized(),
            JobDone::Shred { ok: false } => {
                tracing::error!(
                    retry_in_ms = millis(self.opts.shred_retry),
                    "crypto-shred failed; retrying"
                );
                self.shred = Shred::RetryAt(Instant::now() + self.opts.shred_retry);
                self.status.update(|s| {
                    s.shred_failures += 1;
                    s.fault = Some("crypto-shred after tamper failed; retrying".into());
                });
            }
            JobDone::Resumed => tracing::info!("writes resumed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_fail_window_is_three_quarters_of_the_budget() {
        assert_eq!(power_fail_ack_window(8_000), Duration::from_millis(6_000));
        assert_eq!(power_fail_ack_window(0), Duration::ZERO);
        assert_eq!(
            power_fail_ack_window(u32::MAX),
            Duration::from_millis(u64::from(u32::MAX) * 3 / 4)
        );
    }

    #[test]
    fn shutdown_plan_shares_the_deadline() {
        let p = shutdown_plan(120_000);
        assert_eq!(p.prepare, Duration::from_secs(100));
        assert_eq!(p.ack_by, Duration::from_secs(115));
        let p = shutdown_plan(5_000);
        assert_eq!(p.prepare, Duration::from_secs(3));
        assert_eq!(p.ack_by, Duration::from_millis(4_500));
        let p = shutdown_plan(1_000);
        assert_eq!(p.prepare, Duration::ZERO);
        assert_eq!(p.ack_by, Duration::from_millis(800));
        let p = shutdown_plan(0);
        assert_eq!((p.prepare, p.ack_by), (Duration::ZERO, Duration::ZERO));
        for ms in [
            0,
            1,
            100,
            999,
            2_000,
            10_000,
            60_000,
            120_000,
            600_000,
            u32::MAX,
        ] {
            let p = shutdown_plan(ms);
            assert!(p.prepare <= p.ack_by, "{ms}: {p:?}");
            assert!(
                p.ack_by <= Duration::from_millis(u64::from(ms)),
                "{ms}: {p:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        let got: Vec<u64> = (0..8).map(|_| millis(b.next_delay())).collect();
        assert_eq!(got, [250, 500, 1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
        let mut z = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(z.next_delay(), Duration::from_millis(1));
        assert_eq!(z.next_delay(), Duration::from_millis(1));
    }

    #[test]
    fn defaults_heartbeat_well_within_the_watchdog() {
        let o = SupervisorOptions::default();
        let watchdog = Duration::from_millis(u64::from(
            firmware::Settings::DEFAULT_12V.watchdog_timeout_ms,
        ));
        assert!(o.heartbeat * 2 <= watchdog);
        assert!(o.reconnect_max * 2 <= watchdog);
    }

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

    #[test]
    fn status_serialises_for_v1_status() {
        let s = SupervisorStatus {
            mode: "serial".into(),
            connected: true,
            tamper_seen: true,
            ..SupervisorStatus::default()
        };
        let v = serde_json::to_value(&s).ok();
        let v = v.as_ref();
        assert_eq!(v.and_then(|v| v["mode"].as_str()), Some("serial"));
        assert_eq!(v.and_then(|v| v["connected"].as_bool()), Some(true));
        assert_eq!(v.and_then(|v| v["tamper_seen"].as_bool()), Some(true));
        assert!(v.is_some_and(|v| v["fault"].is_null()));
    }
}
