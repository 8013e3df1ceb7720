//! The daemon's supervisor policy, pure: the host-side mirror of the firmware's
//! `firmware::Supervisor::step(now_ms, inputs)`. No clock is read, no link is touched and no
//! task is spawned: time comes in as `now_ms` (any monotonic clock, in milliseconds), what
//! happened comes in as an [`Event`] (with the daemon's health and LED state sampled alongside,
//! [`Inputs`]), and everything to do comes out as [`Action`]s — frames to send, the link to
//! open or close, blocking jobs to run (stop writes and flush, prepare for shutdown, destroy the
//! data key, resume writes), the daemon to stop, log lines and status reports. The driver
//! (`super::driver`) carries the actions out; the tests below drive the policy in virtual time.
//!
//! **Sends and opens report back.** What the daemon does after a send depends on whether the
//! link took the frame (a heartbeat is counted and rescheduled only once sent; a failed write
//! drops the link). So an [`Action::Send`] or [`Action::Open`] is always the *last* action of a
//! step, and the caller's next step must report its outcome: [`Event::Sent`] for a send,
//! [`Event::Opened`] or [`Event::OpenFailed`] for an open. The policy then carries on with
//! whatever came after the send (the rest of the housekeeping, the other deadlines).
//!
//! Ordering inside one [`Event::Tick`]: reconnect if due, housekeeping (hello until answered,
//! heartbeat when due, LEDs when changed, a `Zeroized` still owed), then the power-fail ack
//! deadline, the power-cut grace, the shutdown ack deadline, the shred retry, and the end of
//! the post-acknowledgement linger. The table of what the daemon does per message is in
//! `docs/supervisor.md` ("The daemon side").

use std::collections::VecDeque;
use std::time::Duration;

use edge_proto::time::UnixMillis;
use firmware::proto::{
    DecodeError, FwVersion, Health, HostFaults, HostToMcu, LinkState, McuToHost, ShutdownReason,
    PROTOCOL_VERSION,
};

use super::status::{McuInfo, McuStatusView, SupervisorStatus};

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
    /// retransmit it once if the first frame was lost) before the supervisor task returns.
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
    /// Time given to `SupervisorActions::prepare_shutdown` (uploading the audit backlog).
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

/// Why the supervisor task returned.
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

/// Milliseconds in `d` (saturating).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// --- the policy's interface ----------------------------------------------------------------

/// What the policy sees in one step: what happened, and the daemon's state sampled with it
/// (`SupervisorActions::health` and `led_state`, both instant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// The daemon's health (sent with a heartbeat due in this step).
    pub health: Health,
    /// What the link LED and host fault bits should show.
    pub leds: (LinkState, HostFaults),
    /// What happened.
    pub event: Event,
}

/// Something that happened to the supervisor task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The timer the policy asked for ([`Policy::next_wake`]) fired; the driver has already
    /// checked the serial device (reporting [`Event::LinkLost`] if it vanished or changed).
    Tick,
    /// The [`Action::Open`] succeeded: the link is up.
    Opened,
    /// The [`Action::Open`] failed.
    OpenFailed {
        /// Why (shown in the status).
        why: String,
        /// Retrying cannot help (the in-process simulated board has gone).
        permanent: bool,
    },
    /// The outcome of the last [`Action::Send`].
    Sent(SendOutcome),
    /// A message from the supervisor (never an `Ack`: the link layer handles those).
    Received {
        /// The message.
        msg: McuToHost,
        /// The wall-clock time it arrived (for the status).
        at: UnixMillis,
    },
    /// A frame from the supervisor that failed to decode.
    BadFrame(DecodeError),
    /// A message the supervisor never acknowledged, after every retransmission.
    Undelivered(HostToMcu),
    /// The link failed (closed, event stream ended, device vanished or replaced).
    LinkLost(String),
    /// A job from [`Action::Run`] finished.
    JobDone(JobDone),
}

/// What became of a frame handed to the link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Queued for delivery.
    Sent,
    /// Too many frames awaiting acknowledgement; not sent (tried again later).
    QueueFull,
    /// Writing failed: the link is lost (the reason is shown in the status).
    Failed(String),
}

/// A job that may block, run off the async loop (the daemon's `SupervisorActions`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Power failure: `stop_writes()`, then `flush()`; report [`JobDone::PowerFail`].
    PowerFail {
        /// Matches the [`JobDone`].
        id: u64,
    },
    /// Shutdown request: `prepare_shutdown(reason, prepare)`, `stop_writes()`, `flush()`;
    /// report [`JobDone::Shutdown`].
    Shutdown {
        /// Matches the [`JobDone`].
        id: u64,
        /// Why the supervisor asked.
        reason: ShutdownReason,
        /// Time given to `prepare_shutdown`.
        prepare: Duration,
    },
    /// Tamper: `shred()` (destroy the data key); report [`JobDone::Shred`].
    Shred,
    /// `resume_writes()`; report [`JobDone::Resumed`].
    Resume,
}

/// A [`Job`] finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobDone {
    /// The power-fail flush ended.
    PowerFail {
        /// The job's id.
        id: u64,
        /// What `flush()` returned.
        flushed: bool,
    },
    /// The shutdown preparation and flush ended.
    Shutdown {
        /// The job's id.
        id: u64,
        /// What `flush()` returned.
        flushed: bool,
    },
    /// The crypto-shred ended.
    Shred {
        /// What `shred()` returned.
        ok: bool,
    },
    /// Writes resumed.
    Resumed,
}

/// Something for the driver to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open the link; report [`Event::Opened`] or [`Event::OpenFailed`] next. Always last.
    Open,
    /// Hand this frame to the link; report [`Event::Sent`] next. Always last.
    Send(HostToMcu),
    /// Drop the link (its threads are joined off the async loop).
    CloseLink,
    /// Run a job on a blocking thread; report [`Event::JobDone`] when it ends.
    Run(Job),
    /// Tell the daemon to stop (the supervisor's shutdown request was acknowledged).
    StopDaemon,
    /// The status changed: publish [`Policy::status`].
    Report,
    /// Log this.
    Log(Note),
}

/// A log line the policy asks for (the driver emits it with `tracing`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// warn: the link was lost; reconnecting.
    LinkLost {
        /// Why.
        reason: String,
    },
    /// warn (first time) or debug (same reason again): the link could not be opened.
    LinkUnavailable {
        /// Why.
        reason: String,
        /// Delay before the next attempt.
        retry_in_ms: u64,
        /// A new reason (logged louder).
        first: bool,
    },
    /// error: the link cannot be reopened, ever.
    LinkGone {
        /// Why.
        reason: String,
    },
    /// error: the power-fail flush did not finish in time; acknowledging unflushed.
    PowerFailAckOverdue {
        /// Since the `PowerFail` arrived.
        waited_ms: u64,
    },
    /// warn: still running after the power-fail acknowledgement; resuming.
    PowerNotCut,
    /// error: the shutdown preparation did not finish in time; acknowledging unflushed.
    ShutdownAckOverdue,
    /// debug: a frame failed to decode.
    BadFrame(DecodeError),
    /// warn (if connected) or debug: a message was never acknowledged.
    Undelivered {
        /// The message.
        msg: HostToMcu,
        /// The supervisor was connected until now.
        was_connected: bool,
    },
    /// info: the supervisor's hello.
    Hello {
        /// Protocol version.
        version: u8,
        /// Board revision.
        board_rev: u8,
        /// Firmware version.
        fw: FwVersion,
    },
    /// info: ignition changed.
    Ignition {
        /// New level.
        on: bool,
    },
    /// warn: low battery.
    LowBattery {
        /// Reading.
        millivolts: u16,
    },
    /// warn: power failed; stopping writes and flushing.
    PowerFail {
        /// Announced hold-up budget.
        budget_ms: u32,
    },
    /// info: power restored.
    PowerRestored,
    /// warn: the power failure was acknowledged.
    PowerFailAcked {
        /// The flag sent.
        flushed: bool,
        /// From the `PowerFail` to the acknowledgement.
        took_ms: u64,
    },
    /// warn: the supervisor asked for a shutdown.
    ShutdownRequested {
        /// Why.
        reason: ShutdownReason,
        /// Until the hard cut.
        deadline_ms: u32,
    },
    /// warn: the shutdown was acknowledged; the daemon stops.
    ShutdownAcked {
        /// Why it was asked.
        reason: ShutdownReason,
        /// The flag sent.
        flushed: bool,
    },
    /// error: tamper; destroying the data key.
    Tamper,
    /// warn: the key is destroyed and the supervisor told `Zeroized`.
    Zeroized,
    /// error: the crypto-shred failed; retrying.
    ShredFailed {
        /// Delay before the retry.
        retry_in_ms: u64,
    },
    /// info: writes resumed.
    WritesResumed,
}

// --- state -----------------------------------------------------------------------------------

/// The open link, as far as the policy is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Conn {
    hello_seen: bool,
    leds_sent: Option<(LinkState, HostFaults)>,
    next_heartbeat: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PowerFail {
    id: u64,
    received: u64,
    ack_by: u64,
    /// `None` while the flush job runs.
    flushed: Option<bool>,
    acked_at: Option<u64>,
    /// `PowerRestored` arrived.
    restored: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ShutdownReq {
    id: u64,
    reason: ShutdownReason,
    ack_by: u64,
    flushed: Option<bool>,
    acked: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shred {
    Idle,
    Running,
    RetryAt(u64),
    /// Shredded; `Zeroized` still to be sent (link down when the shred finished).
    ZeroizePending,
    Done,
}

/// Work still to do in this step, in order (what followed a send in the same routine).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Connect,
    Housekeeping,
    Heartbeat { started: u64 },
    Leds,
    OwedZeroized,
    GetStatus,
    PowerFailDeadline { now: u64 },
    PowerCutGrace { now: u64 },
    ShutdownDeadline { now: u64 },
    ShredRetry { now: u64 },
    Linger { now: u64 },
}

/// What a send was for: what to do once its outcome is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    Hello { started: u64 },
    Heartbeat { started: u64 },
    Leds((LinkState, HostFaults)),
    Zeroized,
    GetStatus,
    PowerFailAck { flushed: bool },
    ShutdownAck { flushed: bool },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    Open,
    Send(Purpose),
}

/// The daemon's side of the supervisor protocol, as a pure state machine. See the module
/// documentation.
#[derive(Clone, Debug)]
pub struct Policy {
    heartbeat_ms: u64,
    tick_ms: u64,
    shred_retry_ms: u64,
    ack_linger_ms: u64,
    power_cut_grace_ms: u64,
    status: SupervisorStatus,
    /// `None` while the link is down.
    conn: Option<Conn>,
    reconnect_at: u64,
    backoff: Backoff,
    permanent_fault: bool,
    next_job: u64,
    power_fail: Option<PowerFail>,
    shutdown_req: Option<ShutdownReq>,
    shred: Shred,
    exit: Option<SupervisorExit>,
    linger_until: Option<u64>,
    // One step's working state.
    now: u64,
    health: Health,
    leds: (LinkState, HostFaults),
    work: VecDeque<Work>,
    awaiting: Option<Awaiting>,
    out: Vec<Action>,
    changed: bool,
}

impl Policy {
    /// A policy with `options`' timings, starting from `status` (mode and device already
    /// filled in). The first [`Event::Tick`] opens the link.
    pub fn new(options: &SupervisorOptions, status: SupervisorStatus) -> Policy {
        Policy {
            heartbeat_ms: millis(options.heartbeat),
            tick_ms: millis(options.tick),
            shred_retry_ms: millis(options.shred_retry),
            ack_linger_ms: millis(options.ack_linger),
            power_cut_grace_ms: millis(options.power_cut_grace),
            status,
            conn: None,
            reconnect_at: 0,
            backoff: Backoff::new(options.reconnect_min, options.reconnect_max),
            permanent_fault: false,
            next_job: 0,
            power_fail: None,
            shutdown_req: None,
            shred: Shred::Idle,
            exit: None,
            linger_until: None,
            now: 0,
            health: Health::Ok,
            leds: (LinkState::None, HostFaults::empty()),
            work: VecDeque::new(),
            awaiting: None,
            out: Vec::new(),
            changed: false,
        }
    }

    /// What the daemon knows about the supervisor.
    pub fn status(&self) -> &SupervisorStatus {
        &self.status
    }

    /// Why the task should return, once it should (after [`lingering`](Self::lingering) ends).
    pub fn exit(&self) -> Option<SupervisorExit> {
        self.exit
    }

    /// The link is kept open a little after a shutdown acknowledgement.
    pub fn lingering(&self) -> bool {
        self.linger_until.is_some()
    }

    /// The link is open (as far as the policy knows).
    pub fn link_up(&self) -> bool {
        self.conn.is_some()
    }

    /// When (on the `now_ms` clock) the driver should next send [`Event::Tick`]: at most one
    /// tick period after `now_ms`, sooner for a reconnect, heartbeat or deadline due earlier;
    /// never before `now_ms`.
    pub fn next_wake(&self, now_ms: u64) -> u64 {
        let mut wake = now_ms.saturating_add(self.tick_ms);
        let mut consider = |t: u64| wake = wake.min(t);
        match &self.conn {
            None if !self.permanent_fault => consider(self.reconnect_at),
            None => {}
            Some(c) => consider(c.next_heartbeat),
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
        wake.max(now_ms)
    }

    /// Advance to `now_ms` (must not go backwards; an earlier time is taken as the latest seen)
    /// with `inputs`; returns what to do, in order. An [`Action::Send`] or [`Action::Open`]
    /// comes last, and its outcome must be the next step's event.
    pub fn step(&mut self, now_ms: u64, inputs: Inputs) -> Vec<Action> {
        self.now = self.now.max(now_ms);
        self.health = inputs.health;
        self.leds = inputs.leds;
        match inputs.event {
            Event::Sent(outcome) => {
                // An outcome nobody asked for has nothing to continue.
                if let Some(Awaiting::Send(purpose)) = self.awaiting {
                    self.awaiting = None;
                    self.sent(purpose, outcome);
                }
            }
            Event::Opened => {
                self.end_open_wait();
                self.opened();
            }
            Event::OpenFailed { why, permanent } => {
                self.end_open_wait();
                self.open_failed(why, permanent);
            }
            other => {
                self.abandon_wait();
                self.event(other);
            }
        }
        self.run();
        let mut out = std::mem::take(&mut self.out);
        if std::mem::take(&mut self.changed) {
            let last = if self.awaiting.is_some() {
                out.pop()
            } else {
                None
            };
            out.push(Action::Report);
            out.extend(last);
        }
        out
    }

    // --- machinery ---------------------------------------------------------------------------

    fn st(&mut self) -> &mut SupervisorStatus {
        self.changed = true;
        &mut self.status
    }

    fn log(&mut self, note: Note) {
        self.out.push(Action::Log(note));
    }

    /// Queue `work` to run next, before anything already queued.
    fn next(&mut self, work: &[Work]) {
        for w in work.iter().rev() {
            self.work.push_front(*w);
        }
    }

    /// Run queued work until it is done or waits for an outcome.
    fn run(&mut self) {
        while self.awaiting.is_none() {
            let Some(w) = self.work.pop_front() else {
                break;
            };
            self.work(w);
        }
    }

    fn end_open_wait(&mut self) {
        if self.awaiting == Some(Awaiting::Open) {
            self.awaiting = None;
        }
    }

    /// An event arrived while an outcome was awaited (a driver not keeping the contract): the
    /// send is taken as not done, the open as not attempted, and the rest of the interrupted
    /// routine is dropped (every part of it is checked again at the next tick).
    fn abandon_wait(&mut self) {
        if let Some(Awaiting::Send(purpose)) = self.awaiting.take() {
            self.not_sent(purpose);
        }
        self.work.clear();
    }

    /// Hand `msg` to the link if it is up (then wait for the outcome); otherwise it failed.
    fn send(&mut self, msg: HostToMcu, purpose: Purpose) {
        if self.conn.is_none() {
            self.not_sent(purpose);
            return;
        }
        self.out.push(Action::Send(msg));
        self.awaiting = Some(Awaiting::Send(purpose));
    }

    fn sent(&mut self, purpose: Purpose, outcome: SendOutcome) {
        match outcome {
            SendOutcome::Sent => self.was_sent(purpose),
            SendOutcome::QueueFull => self.not_sent(purpose),
            SendOutcome::Failed(why) => {
                self.link_lost(why);
                self.not_sent(purpose);
            }
        }
    }

    fn was_sent(&mut self, purpose: Purpose) {
        match purpose {
            Purpose::Hello { started } => self.next(&[Work::Heartbeat { started }]),
            Purpose::Heartbeat { started } => {
                self.st().heartbeats_sent += 1;
                let heartbeat = self.heartbeat_ms;
                if let Some(c) = &mut self.conn {
                    c.next_heartbeat = started.saturating_add(heartbeat);
                }
                self.next(&[Work::Leds]);
            }
            Purpose::Leds(leds) => {
                if let Some(c) = &mut self.conn {
                    c.leds_sent = Some(leds);
                }
                self.next(&[Work::OwedZeroized]);
            }
            Purpose::Zeroized => {
                self.shred = Shred::Done;
                self.log(Note::Zeroized);
                self.st().zeroized = true;
            }
            Purpose::GetStatus => {}
            Purpose::PowerFailAck { flushed } => {
                let now = self.now;
                if let Some(pf) = &mut self.power_fail {
                    if pf.acked_at.is_none() {
                        let took = now.saturating_sub(pf.received);
                        pf.acked_at = Some(now);
                        self.log(Note::PowerFailAcked {
                            flushed,
                            took_ms: took,
                        });
                        self.st().last_power_fail_ack_ms = Some(took);
                    }
                }
            }
            Purpose::ShutdownAck { flushed } => self.shutdown_acked(flushed),
        }
    }

    fn not_sent(&mut self, purpose: Purpose) {
        match purpose {
            // The housekeeping ends here; the heartbeat stays due.
            Purpose::Hello { .. } | Purpose::Heartbeat { .. } => {}
            Purpose::Leds(_) => self.next(&[Work::OwedZeroized]),
            Purpose::Zeroized => self.shred = Shred::ZeroizePending,
            // Sent again when the supervisor repeats its demand, or at the next deadline check.
            Purpose::GetStatus | Purpose::PowerFailAck { .. } | Purpose::ShutdownAck { .. } => {}
        }
    }

    fn work(&mut self, w: Work) {
        let now = self.now;
        match w {
            Work::Connect => {
                if self.conn.is_none() && !self.permanent_fault && now >= self.reconnect_at {
                    self.out.push(Action::Open);
                    self.awaiting = Some(Awaiting::Open);
                }
            }
            Work::Housekeeping => {
                let Some(c) = self.conn else { return };
                if now >= c.next_heartbeat {
                    if c.hello_seen {
                        self.next(&[Work::Heartbeat { started: now }]);
                    } else {
                        let hello = HostToMcu::Hello {
                            version: PROTOCOL_VERSION,
                        };
                        self.send(hello, Purpose::Hello { started: now });
                    }
                } else {
                    self.next(&[Work::Leds]);
                }
            }
            Work::Heartbeat { started } => {
                let health = self.health;
                self.send(
                    HostToMcu::Heartbeat { health },
                    Purpose::Heartbeat { started },
                );
            }
            Work::Leds => {
                // LEDs once the supervisor has answered (its hello resets what we last sent).
                let leds = self.leds;
                if self
                    .conn
                    .is_some_and(|c| c.hello_seen && c.leds_sent != Some(leds))
                {
                    let msg = HostToMcu::SetLeds {
                        link: leds.0,
                        faults: leds.1,
                    };
                    self.send(msg, Purpose::Leds(leds));
                } else {
                    self.next(&[Work::OwedZeroized]);
                }
            }
            Work::OwedZeroized => {
                if self.shred == Shred::ZeroizePending {
                    self.send(HostToMcu::Zeroized, Purpose::Zeroized);
                }
            }
            Work::GetStatus => self.send(HostToMcu::GetStatus, Purpose::GetStatus),
            Work::PowerFailDeadline { now } => {
                if let Some(pf) = self.power_fail {
                    if pf.acked_at.is_none() && !pf.restored && now >= pf.ack_by {
                        self.log(Note::PowerFailAckOverdue {
                            waited_ms: now.saturating_sub(pf.received),
                        });
                        self.ack_power_fail(false);
                    }
                }
            }
            Work::PowerCutGrace { now } => {
                let grace = self.power_cut_grace_ms;
                if let Some(acked) = self.power_fail.and_then(|pf| pf.acked_at) {
                    if now >= acked.saturating_add(grace) {
                        // Still running: power was not cut (simulated board, or it came back).
                        self.log(Note::PowerNotCut);
                        self.power_fail = None;
                        self.st().power_fail = false;
                        if let Some(c) = &mut self.conn {
                            c.hello_seen = false;
                        }
                        self.resume_writes();
                    }
                }
            }
            Work::ShutdownDeadline { now } => {
                if let Some(sr) = self.shutdown_req {
                    if sr.acked.is_none() && now >= sr.ack_by {
                        self.log(Note::ShutdownAckOverdue);
                        self.ack_shutdown(false);
                    }
                }
            }
            Work::ShredRetry { now } => {
                if let Shred::RetryAt(t) = self.shred {
                    if now >= t {
                        self.start_shred();
                    }
                }
            }
            Work::Linger { now } => {
                if self.linger_until.is_some_and(|t| now >= t) {
                    self.linger_until = None;
                }
            }
        }
    }

    // --- link ----------------------------------------------------------------------------------

    fn opened(&mut self) {
        self.conn = Some(Conn {
            hello_seen: false,
            leds_sent: None,
            next_heartbeat: self.now,
        });
        let st = self.st();
        st.link_up = true;
        st.link_opens += 1;
        // Hello first (the supervisor answers and repeats any pending demand), then the first
        // heartbeat and the LEDs: all due at once.
        self.next(&[Work::Housekeeping]);
    }

    fn open_failed(&mut self, why: String, permanent: bool) {
        if permanent {
            self.log(Note::LinkGone {
                reason: why.clone(),
            });
            self.permanent_fault = true;
            let st = self.st();
            st.link_up = false;
            st.connected = false;
            st.fault = Some(why);
            return;
        }
        let delay = self.backoff.next_delay();
        self.reconnect_at = self.now.saturating_add(millis(delay));
        let st = self.st();
        let first = st.fault.as_deref() != Some(why.as_str());
        st.link_up = false;
        st.connected = false;
        st.link_failures += 1;
        st.fault = Some(why.clone());
        self.log(Note::LinkUnavailable {
            reason: why,
            retry_in_ms: millis(delay),
            first,
        });
    }

    fn link_lost(&mut self, why: String) {
        if self.conn.take().is_none() {
            return;
        }
        self.log(Note::LinkLost {
            reason: why.clone(),
        });
        self.out.push(Action::CloseLink);
        let delay = self.backoff.next_delay();
        self.reconnect_at = self.now.saturating_add(millis(delay));
        let st = self.st();
        st.link_up = false;
        st.connected = false;
        st.link_failures += 1;
        st.fault = Some(why);
    }

    // --- events ----------------------------------------------------------------------------------

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Tick => {
                let now = self.now;
                self.next(&[
                    Work::Connect,
                    Work::Housekeeping,
                    Work::PowerFailDeadline { now },
                    Work::PowerCutGrace { now },
                    Work::ShutdownDeadline { now },
                    Work::ShredRetry { now },
                    Work::Linger { now },
                ]);
            }
            Event::Received { msg, at } => {
                let st = self.st();
                st.last_event = Some(format!("{msg:?}"));
                st.last_event_at = Some(at.to_rfc3339());
                self.message(msg);
            }
            Event::BadFrame(e) => {
                self.log(Note::BadFrame(e));
                self.st().bad_frames += 1;
            }
            Event::Undelivered(msg) => self.undelivered(msg),
            Event::LinkLost(why) => self.link_lost(why),
            Event::JobDone(done) => self.job_done(done),
            // Handled in `step`.
            Event::Sent(_) | Event::Opened | Event::OpenFailed { .. } => {}
        }
    }

    fn undelivered(&mut self, msg: HostToMcu) {
        let st = self.st();
        st.undelivered += 1;
        let was_connected = st.connected;
        if matches!(msg, HostToMcu::Hello { .. } | HostToMcu::Heartbeat { .. }) {
            // Nobody is listening (board unpowered, wrong device, MCU hung).
            st.connected = false;
            st.fault = Some(format!("supervisor not answering ({msg:?} unacknowledged)"));
        }
        self.log(Note::Undelivered { msg, was_connected });
        let Some(conn) = &mut self.conn else { return };
        match msg {
            // The supervisor repeats pending demands at every hello: saying hello again
            // recovers a lost hello, heartbeat, acknowledgement or `Zeroized`.
            HostToMcu::Hello { .. }
            | HostToMcu::Heartbeat { .. }
            | HostToMcu::ShutdownAck { .. }
            | HostToMcu::Zeroized => conn.hello_seen = false,
            HostToMcu::SetLeds { .. } => conn.leds_sent = None,
            HostToMcu::GetStatus | HostToMcu::Ack { .. } => {}
        }
    }

    fn message(&mut self, msg: McuToHost) {
        match msg {
            McuToHost::Hello {
                version,
                board_rev,
                fw_version,
            } => {
                self.log(Note::Hello {
                    version,
                    board_rev,
                    fw: fw_version,
                });
                self.backoff.reset();
                if let Some(c) = &mut self.conn {
                    c.hello_seen = true;
                    // It may have restarted: LEDs again, and ask for its status.
                    c.leds_sent = None;
                }
                let st = self.st();
                st.connected = true;
                st.fault = None;
                st.mcu = Some(McuInfo {
                    protocol_version: version,
                    board_rev,
                    firmware: format!(
                        "{}.{}.{}",
                        fw_version.major, fw_version.minor, fw_version.patch
                    ),
                });
                self.next(&[Work::GetStatus, Work::Housekeeping]);
            }
            McuToHost::Status(s) => {
                let st = self.st();
                st.ignition_on = Some(s.ignition_on);
                st.mcu_status = Some(McuStatusView {
                    state: format!("{:?}", s.state),
                    ignition_on: s.ignition_on,
                    supply_mv: s.supply_mv,
                    faults: s.faults.bits(),
                    power_cycles_last_hour: s.power_cycles_last_hour,
                    last_shutdown: s.last_shutdown.map(|r| format!("{r:?}")),
                });
            }
            McuToHost::IgnitionChanged { on } => {
                self.log(Note::Ignition { on });
                self.st().ignition_on = Some(on);
            }
            McuToHost::LowBattery { millivolts } => {
                self.log(Note::LowBattery { millivolts });
                self.st().low_battery_mv = Some(millivolts);
            }
            McuToHost::PowerFail { budget_ms } => self.power_failed(budget_ms),
            McuToHost::PowerRestored => self.power_restored(),
            McuToHost::ShutdownRequest {
                reason,
                deadline_ms,
            } => self.shutdown_requested(reason, deadline_ms),
            McuToHost::Tamper => {
                self.log(Note::Tamper);
                self.st().tamper_seen = true;
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

    fn power_failed(&mut self, budget_ms: u32) {
        let now = self.now;
        let ack_by = now.saturating_add(millis(power_fail_ack_window(budget_ms)));
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
        self.log(Note::PowerFail { budget_ms });
        let id = self.job_id();
        self.power_fail = Some(PowerFail {
            id,
            received: now,
            ack_by,
            flushed: None,
            acked_at: None,
            restored: false,
        });
        let st = self.st();
        st.power_fail = true;
        st.power_fails += 1;
        self.out.push(Action::Run(Job::PowerFail { id }));
    }

    fn power_restored(&mut self) {
        self.log(Note::PowerRestored);
        let st = self.st();
        st.power_restores += 1;
        st.power_fail = false;
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
        self.send(
            HostToMcu::ShutdownAck { flushed },
            Purpose::PowerFailAck { flushed },
        );
    }

    fn resume_writes(&mut self) {
        if self.shutdown_req.is_some() {
            return; // shutting down anyway
        }
        self.out.push(Action::Run(Job::Resume));
    }

    fn shutdown_requested(&mut self, reason: ShutdownReason, deadline_ms: u32) {
        let now = self.now;
        let plan = shutdown_plan(deadline_ms);
        let ack_by = now.saturating_add(millis(plan.ack_by));
        if let Some(sr) = &mut self.shutdown_req {
            // Repeated (after our hello).
            sr.ack_by = sr.ack_by.min(ack_by);
            if let Some(flushed) = sr.acked.or(sr.flushed) {
                self.ack_shutdown(flushed);
            }
            return;
        }
        self.log(Note::ShutdownRequested {
            reason,
            deadline_ms,
        });
        let id = self.job_id();
        self.shutdown_req = Some(ShutdownReq {
            id,
            reason,
            ack_by,
            flushed: None,
            acked: None,
        });
        self.st().shutdown_requested = Some(format!("{reason:?}"));
        self.out.push(Action::Run(Job::Shutdown {
            id,
            reason,
            prepare: plan.prepare,
        }));
    }

    fn ack_shutdown(&mut self, flushed: bool) {
        // Link down: the supervisor repeats the request at our next hello; the deadline still
        // bounds everything.
        self.send(
            HostToMcu::ShutdownAck { flushed },
            Purpose::ShutdownAck { flushed },
        );
    }

    fn shutdown_acked(&mut self, flushed: bool) {
        let Some(sr) = &mut self.shutdown_req else {
            return;
        };
        if sr.acked.is_some() {
            return; // a repeat
        }
        sr.acked = Some(flushed);
        let reason = sr.reason;
        self.log(Note::ShutdownAcked { reason, flushed });
        self.st().shutdown_acked = Some(flushed);
        self.exit = Some(SupervisorExit::ShutdownRequested { reason, flushed });
        self.linger_until = Some(self.now.saturating_add(self.ack_linger_ms));
        self.out.push(Action::StopDaemon);
    }

    fn start_shred(&mut self) {
        self.shred = Shred::Running;
        self.out.push(Action::Run(Job::Shred));
    }

    fn job_done(&mut self, done: JobDone) {
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
            JobDone::Shred { ok: true } => self.send(HostToMcu::Zeroized, Purpose::Zeroized),
            JobDone::Shred { ok: false } => {
                self.log(Note::ShredFailed {
                    retry_in_ms: self.shred_retry_ms,
                });
                self.shred = Shred::RetryAt(self.now.saturating_add(self.shred_retry_ms));
                let st = self.st();
                st.shred_failures += 1;
                st.fault = Some("crypto-shred after tamper failed; retrying".into());
            }
            JobDone::Resumed => self.log(Note::WritesResumed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use firmware::proto::{Faults, StateCode, Status};

    // --- pure helpers (moved from the single-file module) ----------------------------------

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

    // --- a fake driver in virtual time -----------------------------------------------------

    /// Carries out the policy's actions the way the driver does, instantly: sends and opens
    /// succeed unless told otherwise, jobs are recorded (the test says when they end).
    struct Harness {
        p: Policy,
        now: u64,
        wake: u64,
        last_tick: Option<u64>,
        health: Health,
        leds: (LinkState, HostFaults),
        send_results: VecDeque<SendOutcome>,
        open_results: VecDeque<Event>,
        sent: Vec<(u64, HostToMcu)>,
        jobs: Vec<(u64, Job)>,
        notes: Vec<(u64, Note)>,
        opens: Vec<u64>,
        closes: u32,
        stops: u32,
        reports: u32,
    }

    const HELLO: HostToMcu = HostToMcu::Hello {
        version: PROTOCOL_VERSION,
    };
    const BEAT: HostToMcu = HostToMcu::Heartbeat { health: Health::Ok };
    const WALL0: i64 = 1_750_000_000_000;

    fn board_hello() -> McuToHost {
        McuToHost::Hello {
            version: PROTOCOL_VERSION,
            board_rev: 1,
            fw_version: FwVersion {
                major: 1,
                minor: 2,
                patch: 3,
            },
        }
    }

    impl Harness {
        fn new() -> Harness {
            Harness::with(SupervisorOptions::default())
        }

        fn with(options: SupervisorOptions) -> Harness {
            let status = SupervisorStatus {
                mode: "serial".into(),
                ..SupervisorStatus::default()
            };
            Harness {
                p: Policy::new(&options, status),
                now: 0,
                wake: 0,
                last_tick: None,
                health: Health::Ok,
                leds: (LinkState::Cellular, HostFaults::empty()),
                send_results: VecDeque::new(),
                open_results: VecDeque::new(),
                sent: Vec::new(),
                jobs: Vec::new(),
                notes: Vec::new(),
                opens: Vec::new(),
                closes: 0,
                stops: 0,
                reports: 0,
            }
        }

        /// Link open at 0 (hello and first heartbeat sent), the board's hello at 10 (LEDs and
        /// status request sent); everything recorded so far cleared.
        fn connected() -> Harness {
            let mut h = Harness::new();
            h.run_until(10);
            h.recv(board_hello());
            assert!(h.p.status().connected);
            h.clear();
            h
        }

        fn clear(&mut self) {
            self.sent.clear();
            self.jobs.clear();
            self.notes.clear();
            self.opens.clear();
        }

        fn feed(&mut self, event: Event) {
            let mut next = Some(event);
            while let Some(event) = next.take() {
                let inputs = Inputs {
                    health: self.health,
                    leds: self.leds,
                    event,
                };
                let actions = self.p.step(self.now, inputs);
                let n = actions.len();
                for (i, a) in actions.into_iter().enumerate() {
                    match a {
                        Action::Open => {
                            assert_eq!(i + 1, n, "Open comes last");
                            self.opens.push(self.now);
                            next = Some(self.open_results.pop_front().unwrap_or(Event::Opened));
                        }
                        Action::Send(m) => {
                            assert_eq!(i + 1, n, "Send comes last");
                            self.sent.push((self.now, m));
                            let r = self.send_results.pop_front().unwrap_or(SendOutcome::Sent);
                            next = Some(Event::Sent(r));
                        }
                        Action::CloseLink => self.closes += 1,
                        Action::Run(job) => self.jobs.push((self.now, job)),
                        Action::StopDaemon => self.stops += 1,
                        Action::Report => self.reports += 1,
                        Action::Log(note) => self.notes.push((self.now, note)),
                    }
                }
            }
            self.wake = self.p.next_wake(self.now);
            if let Some(last) = self.last_tick {
                self.wake = self.wake.max(last + 1);
            }
        }

        /// Let virtual time pass until `t`, ticking when the policy asked to be woken (asked
        /// after every event, as the driver does; a wake-up "now" again right after a tick is
        /// taken 1 ms later).
        fn run_until(&mut self, t: u64) {
            while self.wake <= t {
                self.now = self.wake;
                self.last_tick = Some(self.wake);
                self.feed(Event::Tick);
            }
            self.now = self.now.max(t);
        }

        fn recv(&mut self, msg: McuToHost) {
            let at = UnixMillis(WALL0 + i64::try_from(self.now).unwrap());
            self.feed(Event::Received { msg, at });
        }

        fn at(&mut self, t: u64, event: Event) {
            self.run_until(t);
            self.feed(event);
        }

        fn recv_at(&mut self, t: u64, msg: McuToHost) {
            self.run_until(t);
            self.recv(msg);
        }

        fn msgs(&self) -> Vec<HostToMcu> {
            self.sent.iter().map(|(_, m)| *m).collect()
        }

        fn times_of(&self, want: HostToMcu) -> Vec<u64> {
            self.sent
                .iter()
                .filter(|(_, m)| *m == want)
                .map(|(t, _)| *t)
                .collect()
        }

        fn job_kinds(&self) -> Vec<Job> {
            self.jobs.iter().map(|(_, j)| *j).collect()
        }

        fn noted(&self, f: impl Fn(&Note) -> bool) -> Vec<u64> {
            self.notes
                .iter()
                .filter(|(_, n)| f(n))
                .map(|(t, _)| *t)
                .collect()
        }
    }

    fn ack(flushed: bool) -> HostToMcu {
        HostToMcu::ShutdownAck { flushed }
    }

    // --- connecting and heartbeats ---------------------------------------------------------

    #[test]
    fn first_tick_opens_the_link_and_says_hello_then_heartbeats() {
        let mut h = Harness::new();
        assert_eq!(h.p.next_wake(0), 0, "connect at once");
        h.run_until(0);
        assert_eq!(h.opens, [0]);
        assert_eq!(h.sent, [(0, HELLO), (0, BEAT)]);
        let s = h.p.status();
        assert!(s.link_up && !s.connected);
        assert_eq!((s.link_opens, s.heartbeats_sent), (1, 1));
        // No LEDs and no status request until the board answers.
        h.run_until(4_999);
        assert_eq!(h.sent.len(), 2);
        h.recv(board_hello());
        let s = h.p.status();
        assert!(s.connected && s.fault.is_none());
        assert_eq!(s.mcu.as_ref().map(|m| m.firmware.as_str()), Some("1.2.3"));
        let at = UnixMillis(WALL0 + 4_999).to_rfc3339();
        assert_eq!(s.last_event_at.as_deref(), Some(at.as_str()));
        assert_eq!(
            h.msgs()[2..],
            [
                HostToMcu::GetStatus,
                HostToMcu::SetLeds {
                    link: LinkState::Cellular,
                    faults: HostFaults::empty()
                }
            ]
        );
        assert!(h.reports > 0);
    }

    #[test]
    fn heartbeats_go_out_every_period_in_virtual_time() {
        let mut h = Harness::connected();
        h.run_until(60_000);
        let beats = h.times_of(BEAT);
        let expected: Vec<u64> = (1..=12).map(|i| i * 5_000).collect();
        assert_eq!(beats, expected);
        assert_eq!(h.msgs().len(), 12, "nothing but heartbeats: {:?}", h.sent);
        assert_eq!(h.p.status().heartbeats_sent, 13);
        // Never more than one tick between wake-ups, and every heartbeat on time.
        assert_eq!(h.p.next_wake(60_000), 60_250);
        let mut h = Harness::with(SupervisorOptions {
            heartbeat: Duration::from_secs(1),
            tick: Duration::from_millis(50),
            ..SupervisorOptions::default()
        });
        h.run_until(10);
        h.recv(board_hello());
        h.clear();
        h.run_until(10_000);
        assert_eq!(
            h.times_of(BEAT),
            (1..=10).map(|i| i * 1_000).collect::<Vec<_>>()
        );
    }

    #[test]
    fn led_changes_go_out_within_a_tick_and_once() {
        let mut h = Harness::connected();
        h.run_until(7_000);
        h.leds = (LinkState::Syncing, HostFaults::CERT_EXPIRED);
        h.run_until(7_250);
        let leds = HostToMcu::SetLeds {
            link: LinkState::Syncing,
            faults: HostFaults::CERT_EXPIRED,
        };
        let at = h.times_of(leds);
        assert_eq!(at.len(), 1, "{:?}", h.sent);
        assert!((7_000..=7_250).contains(&at[0]));
        h.run_until(20_000);
        assert_eq!(h.times_of(leds).len(), 1);
        // Lost: sent again at the next tick.
        h.feed(Event::Undelivered(leds));
        h.run_until(20_250);
        assert_eq!(h.times_of(leds).len(), 2);
    }

    #[test]
    fn a_board_that_never_answers_gets_a_hello_before_every_heartbeat() {
        let mut h = Harness::new();
        h.run_until(15_000);
        assert_eq!(
            h.sent,
            [
                (0, HELLO),
                (0, BEAT),
                (5_000, HELLO),
                (5_000, BEAT),
                (10_000, HELLO),
                (10_000, BEAT),
                (15_000, HELLO),
                (15_000, BEAT)
            ]
        );
        // The link layer gives the hello up: shown, not fatal.
        h.feed(Event::Undelivered(HELLO));
        let s = h.p.status();
        assert!(s.link_up && !s.connected);
        assert_eq!(s.undelivered, 1);
        assert!(
            s.fault.as_deref().unwrap_or("").contains("not answering"),
            "{s:?}"
        );
        assert_eq!(h.closes, 0);
        assert!(
            h.noted(|n| matches!(
                n,
                Note::Undelivered {
                    was_connected: false,
                    ..
                }
            ))
            .len()
                == 1
        );
    }

    #[test]
    fn a_missing_reply_to_a_heartbeat_drops_connected_and_says_hello_again() {
        let mut h = Harness::connected();
        h.run_until(5_000);
        h.at(5_600, Event::Undelivered(BEAT));
        let s = h.p.status();
        assert!(!s.connected && s.link_up);
        assert_eq!(
            s.fault.as_deref(),
            Some("supervisor not answering (Heartbeat { health: Ok } unacknowledged)")
        );
        assert_eq!(
            h.noted(|n| matches!(
                n,
                Note::Undelivered {
                    was_connected: true,
                    ..
                }
            )),
            [5_600]
        );
        h.clear();
        h.run_until(10_000);
        assert_eq!(h.sent, [(10_000, HELLO), (10_000, BEAT)]);
        // The board answers again: connected, LEDs and status again.
        h.recv_at(10_020, board_hello());
        assert!(h.p.status().connected);
        assert!(h.p.status().fault.is_none());
        assert_eq!(h.msgs()[2], HostToMcu::GetStatus);
        assert!(matches!(h.msgs()[3], HostToMcu::SetLeds { .. }));
    }

    #[test]
    fn a_full_send_queue_is_not_counted_and_retried_at_once() {
        let mut h = Harness::connected();
        h.send_results.push_back(SendOutcome::QueueFull);
        h.run_until(5_001);
        assert_eq!(h.sent, [(5_000, BEAT), (5_001, BEAT)]);
        assert_eq!(h.p.status().heartbeats_sent, 2);
        assert!(h.p.link_up());
        // Rescheduled from the send that worked.
        h.run_until(10_000);
        assert_eq!(h.times_of(BEAT), [5_000, 5_001]);
        h.run_until(10_001);
        assert_eq!(h.times_of(BEAT), [5_000, 5_001, 10_001]);
    }

    // --- the link failing --------------------------------------------------------------------

    #[test]
    fn a_failed_write_drops_the_link_and_reconnects_with_backoff() {
        let mut h = Harness::connected();
        h.send_results.push_back(SendOutcome::Failed(
            "supervisor link write failed: EIO".into(),
        ));
        h.run_until(5_000);
        assert_eq!(h.closes, 1);
        let s = h.p.status();
        assert!(!s.link_up && !s.connected);
        assert_eq!(s.link_failures, 1);
        assert_eq!(
            s.fault.as_deref(),
            Some("supervisor link write failed: EIO")
        );
        // The board had answered, so the back-off was reset: 250 ms.
        assert_eq!(h.p.next_wake(5_000), 5_250);
        let unavailable = |why: &str| Event::OpenFailed {
            why: why.into(),
            permanent: false,
        };
        for _ in 0..3 {
            h.open_results.push_back(unavailable("no such device"));
        }
        h.run_until(10_000);
        // 250, then 500, 1000, 2000 after each failed open; the fourth open works.
        assert_eq!(h.opens, [5_250, 5_750, 6_750, 8_750]);
        assert_eq!(
            h.noted(|n| matches!(n, Note::LinkUnavailable { first: true, .. })),
            [5_250]
        );
        assert_eq!(
            h.noted(|n| matches!(n, Note::LinkUnavailable { first: false, .. })),
            [5_750, 6_750]
        );
        assert_eq!(h.times_of(HELLO), [8_750]);
        assert_eq!(h.p.status().link_failures, 4);
        assert_eq!(h.p.status().link_opens, 2);
        // Lost again before the board answered: the back-off carries on (4 s; ticks go on).
        h.at(10_000, Event::LinkLost("supervisor link closed".into()));
        assert_eq!(h.p.next_wake(10_000), 10_250);
        h.run_until(13_999);
        assert_eq!(h.opens.last(), Some(&8_750));
        h.run_until(14_000);
        assert_eq!(h.opens.last(), Some(&14_000));
    }

    #[test]
    fn reconnect_waits_follow_the_backoff() {
        let mut h = Harness::new();
        for _ in 0..6 {
            h.open_results.push_back(Event::OpenFailed {
                why: "cannot open supervisor link /dev/x".into(),
                permanent: false,
            });
        }
        h.run_until(30_000);
        let gaps: Vec<u64> = h.opens.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, [250, 500, 1_000, 2_000, 4_000, 5_000]);
        assert!(!h.p.status().connected && h.p.link_up());
    }

    #[test]
    fn a_permanently_gone_board_is_not_reopened() {
        let mut h = Harness::new();
        h.open_results.push_back(Event::OpenFailed {
            why: "simulated supervisor board stopped".into(),
            permanent: true,
        });
        h.run_until(60_000);
        assert_eq!(h.opens, [0]);
        assert_eq!(h.p.next_wake(60_000), 60_250);
        let s = h.p.status();
        assert_eq!(
            s.fault.as_deref(),
            Some("simulated supervisor board stopped")
        );
        assert_eq!(s.link_failures, 0);
    }

    #[test]
    fn link_loss_while_down_is_ignored() {
        let mut h = Harness::new();
        h.open_results.push_back(Event::OpenFailed {
            why: "x".into(),
            permanent: false,
        });
        h.run_until(0);
        h.feed(Event::LinkLost("again".into()));
        assert_eq!(h.closes, 0);
        assert_eq!(h.p.status().fault.as_deref(), Some("x"));
    }

    // --- frames ------------------------------------------------------------------------------

    #[test]
    fn malformed_frames_are_counted_and_otherwise_ignored() {
        let mut h = Harness::connected();
        let before = h.p.status().clone();
        h.run_until(1_000);
        for e in [
            DecodeError::Crc {
                computed: 1,
                received: 2,
            },
            DecodeError::Cobs,
            DecodeError::UnknownKind { kind: 0x7f },
            DecodeError::Version { got: 9 },
        ] {
            h.feed(Event::BadFrame(e));
        }
        assert!(h.sent.is_empty() && h.jobs.is_empty());
        assert_eq!(h.closes, 0);
        let after = h.p.status().clone();
        assert_eq!(after.bad_frames, 4);
        assert_eq!(
            SupervisorStatus {
                bad_frames: 0,
                ..after
            },
            before
        );
        // An `Ack` reaching the policy does nothing but show as the last event.
        h.recv(McuToHost::Ack { seq: 7 });
        assert!(h.sent.is_empty() && h.jobs.is_empty());
        assert_eq!(h.p.status().last_event.as_deref(), Some("Ack { seq: 7 }"));
        // Heartbeats carry on as before.
        h.run_until(5_000);
        assert_eq!(h.sent, [(5_000, BEAT)]);
    }

    #[test]
    fn status_and_low_battery_are_recorded() {
        let mut h = Harness::connected();
        h.recv(McuToHost::Status(Status {
            state: StateCode::Running,
            ignition_on: true,
            supply_mv: 12_600,
            faults: Faults::empty(),
            power_cycles_last_hour: 1,
            last_shutdown: Some(ShutdownReason::PowerFail),
        }));
        h.recv(McuToHost::LowBattery { millivolts: 10_500 });
        let s = h.p.status();
        let m = s.mcu_status.as_ref().unwrap();
        assert_eq!(m.state, "Running");
        assert_eq!((m.supply_mv, m.power_cycles_last_hour), (12_600, 1));
        assert_eq!(m.last_shutdown.as_deref(), Some("PowerFail"));
        assert_eq!(s.ignition_on, Some(true));
        assert_eq!(s.low_battery_mv, Some(10_500));
        assert!(h.sent.is_empty() && h.jobs.is_empty());
    }

    // --- ignition and shutdown ---------------------------------------------------------------

    #[test]
    fn ignition_off_is_only_recorded_and_the_shutdown_request_does_the_work() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::IgnitionChanged { on: false });
        assert_eq!(h.p.status().ignition_on, Some(false));
        assert!(h.sent.is_empty() && h.jobs.is_empty() && h.stops == 0);
        assert_eq!(h.noted(|n| *n == Note::Ignition { on: false }), [1_000]);
        // The off-delay later, the supervisor asks.
        h.recv_at(
            2_000,
            McuToHost::ShutdownRequest {
                reason: ShutdownReason::IgnitionOff,
                deadline_ms: 10_000,
            },
        );
        assert_eq!(
            h.jobs,
            [(
                2_000,
                Job::Shutdown {
                    id: 1,
                    reason: ShutdownReason::IgnitionOff,
                    prepare: Duration::from_millis(7_500)
                }
            )]
        );
        assert_eq!(
            h.p.status().shutdown_requested.as_deref(),
            Some("IgnitionOff")
        );
        // Nothing is acknowledged before the flush ends.
        h.run_until(2_299);
        assert!(!h.msgs().contains(&ack(true)) && !h.msgs().contains(&ack(false)));
        h.at(
            2_300,
            Event::JobDone(JobDone::Shutdown {
                id: 1,
                flushed: true,
            }),
        );
        assert_eq!(h.times_of(ack(true)), [2_300]);
        assert_eq!(h.stops, 1);
        let exit = SupervisorExit::ShutdownRequested {
            reason: ShutdownReason::IgnitionOff,
            flushed: true,
        };
        assert_eq!(h.p.exit(), Some(exit));
        assert_eq!(h.p.status().shutdown_acked, Some(true));
        // The link stays open 600 ms for a retransmission, then the task may return.
        h.run_until(2_899);
        assert!(h.p.lingering());
        h.run_until(2_900);
        assert!(!h.p.lingering());
        // A repeated request (after a hello) is answered from what was done, once more.
        h.recv(McuToHost::ShutdownRequest {
            reason: ShutdownReason::IgnitionOff,
            deadline_ms: 10_000,
        });
        assert_eq!(h.times_of(ack(true)), [2_300, 2_900]);
        assert_eq!(h.stops, 1);
        assert_eq!(h.jobs.len(), 1);
    }

    #[test]
    fn a_slow_shutdown_is_acknowledged_unflushed_at_its_deadline() {
        let mut h = Harness::connected();
        h.recv_at(
            1_000,
            McuToHost::ShutdownRequest {
                reason: ShutdownReason::LowBattery,
                deadline_ms: 10_000,
            },
        );
        // Ack by deadline − a tenth: 9 s after receipt.
        h.run_until(9_999);
        assert!(h.times_of(ack(false)).is_empty());
        h.run_until(10_000);
        assert_eq!(h.times_of(ack(false)), [10_000]);
        assert_eq!(h.noted(|n| *n == Note::ShutdownAckOverdue), [10_000]);
        assert_eq!(
            h.p.exit(),
            Some(SupervisorExit::ShutdownRequested {
                reason: ShutdownReason::LowBattery,
                flushed: false
            })
        );
        // The flush ending later changes nothing.
        h.feed(Event::JobDone(JobDone::Shutdown {
            id: 1,
            flushed: true,
        }));
        assert!(h.times_of(ack(true)).is_empty());
        assert_eq!(h.stops, 1);
    }

    #[test]
    fn an_ack_that_cannot_be_sent_waits_for_the_repeated_request() {
        let mut h = Harness::connected();
        h.recv_at(
            1_000,
            McuToHost::ShutdownRequest {
                reason: ShutdownReason::IgnitionOff,
                deadline_ms: 120_000,
            },
        );
        h.at(1_100, Event::LinkLost("supervisor link closed".into()));
        h.open_results.push_back(Event::OpenFailed {
            why: "gone".into(),
            permanent: false,
        });
        h.feed(Event::JobDone(JobDone::Shutdown {
            id: 1,
            flushed: true,
        }));
        assert!(h.p.exit().is_none() && h.stops == 0);
        // Reconnected; the board repeats its request after our hello: acked from the flush.
        h.run_until(2_000);
        assert!(h.p.link_up());
        h.recv(McuToHost::ShutdownRequest {
            reason: ShutdownReason::IgnitionOff,
            deadline_ms: 100_000,
        });
        assert_eq!(h.times_of(ack(true)), [2_000]);
        assert_eq!(h.stops, 1);
    }

    // --- power failure -----------------------------------------------------------------------

    #[test]
    fn power_fail_stops_writes_flushes_and_acks_well_within_the_budget() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::PowerFail { budget_ms: 8_000 });
        assert_eq!(h.jobs, [(1_000, Job::PowerFail { id: 1 })]);
        let s = h.p.status();
        assert!(s.power_fail);
        assert_eq!(s.power_fails, 1);
        // Ack deadline woken for: three quarters of the budget.
        assert_eq!(h.p.next_wake(1_000), 1_250);
        h.run_until(1_199);
        assert!(h.sent.is_empty());
        // The flush takes 200 ms: acked as soon as it ends.
        h.at(
            1_200,
            Event::JobDone(JobDone::PowerFail {
                id: 1,
                flushed: true,
            }),
        );
        assert_eq!(h.sent, [(1_200, ack(true))]);
        let took = h.p.status().last_power_fail_ack_ms;
        assert_eq!(took, Some(200));
        assert!(
            took.unwrap() * 2 < 8_000,
            "the daemon aims for half the budget"
        );
        assert_eq!(
            h.noted(|n| *n
                == Note::PowerFailAcked {
                    flushed: true,
                    took_ms: 200
                }),
            [1_200]
        );
        // Not cut two seconds later: resume, and say hello again before the next heartbeat.
        h.run_until(3_199);
        assert!(h.jobs.len() == 1 && h.p.status().power_fail);
        h.run_until(3_250);
        assert_eq!(h.job_kinds(), [Job::PowerFail { id: 1 }, Job::Resume]);
        assert_eq!(h.noted(|n| *n == Note::PowerNotCut).len(), 1);
        assert!(!h.p.status().power_fail);
        h.run_until(5_000);
        assert_eq!(h.msgs()[1..], [HELLO, BEAT]);
        assert_eq!(h.times_of(ack(true)), [1_200], "acknowledged once");
    }

    #[test]
    fn a_flush_slower_than_the_budget_is_acked_unflushed_at_three_quarters() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::PowerFail { budget_ms: 2_000 });
        assert_eq!(h.p.next_wake(1_000), 1_250);
        h.run_until(2_499);
        assert!(h.sent.is_empty());
        h.run_until(2_500);
        assert_eq!(h.sent, [(2_500, ack(false))]);
        assert_eq!(h.p.status().last_power_fail_ack_ms, Some(1_500));
        assert_eq!(
            h.noted(|n| *n == Note::PowerFailAckOverdue { waited_ms: 1_500 }),
            [2_500]
        );
        // The flush finishing afterwards sends nothing more.
        h.at(
            3_500,
            Event::JobDone(JobDone::PowerFail {
                id: 1,
                flushed: true,
            }),
        );
        assert_eq!(h.msgs(), [ack(false)]);
    }

    #[test]
    fn power_restored_during_the_flush_resumes_after_it_without_an_ack() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::PowerFail { budget_ms: 8_000 });
        h.recv_at(1_100, McuToHost::PowerRestored);
        let s = h.p.status();
        assert!(!s.power_fail);
        assert_eq!((s.power_fails, s.power_restores), (1, 1));
        // Never overtakes the flush's own stop_writes.
        assert_eq!(h.job_kinds(), [Job::PowerFail { id: 1 }]);
        h.at(
            2_500,
            Event::JobDone(JobDone::PowerFail {
                id: 1,
                flushed: true,
            }),
        );
        assert_eq!(h.job_kinds(), [Job::PowerFail { id: 1 }, Job::Resume]);
        h.run_until(20_000);
        assert!(!h
            .msgs()
            .iter()
            .any(|m| matches!(m, HostToMcu::ShutdownAck { .. })));
    }

    #[test]
    fn power_restored_after_the_flush_resumes_at_once() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::PowerFail { budget_ms: 8_000 });
        h.at(
            1_050,
            Event::JobDone(JobDone::PowerFail {
                id: 1,
                flushed: true,
            }),
        );
        h.recv_at(1_060, McuToHost::PowerRestored);
        assert_eq!(h.job_kinds(), [Job::PowerFail { id: 1 }, Job::Resume]);
        h.feed(Event::JobDone(JobDone::Resumed));
        assert!(h.noted(|n| *n == Note::WritesResumed).len() == 1);
    }

    #[test]
    fn a_repeated_power_fail_is_answered_from_the_flush_already_done() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::PowerFail { budget_ms: 8_000 });
        h.at(
            1_100,
            Event::JobDone(JobDone::PowerFail {
                id: 1,
                flushed: true,
            }),
        );
        h.recv_at(1_500, McuToHost::PowerFail { budget_ms: 7_000 });
        assert_eq!(h.times_of(ack(true)), [1_100, 1_500]);
        assert_eq!(h.job_kinds(), [Job::PowerFail { id: 1 }], "no second flush");
        let s = h.p.status();
        assert_eq!(s.power_fails, 1);
        assert_eq!(s.last_power_fail_ack_ms, Some(100));
        // Repeated while the flush still runs: no ack yet, the earlier deadline kept.
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::PowerFail { budget_ms: 8_000 });
        h.recv_at(1_500, McuToHost::PowerFail { budget_ms: 8_000 });
        assert!(h.sent.is_empty());
        h.run_until(7_000);
        assert_eq!(h.times_of(ack(false)), [7_000]);
    }

    #[test]
    fn a_stale_flush_result_is_ignored() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::PowerFail { budget_ms: 8_000 });
        h.recv_at(1_100, McuToHost::PowerRestored);
        // A new power failure before the first flush ended: a second job.
        h.recv_at(1_200, McuToHost::PowerFail { budget_ms: 8_000 });
        assert_eq!(
            h.job_kinds(),
            [Job::PowerFail { id: 1 }, Job::PowerFail { id: 2 }]
        );
        h.at(
            1_300,
            Event::JobDone(JobDone::PowerFail {
                id: 1,
                flushed: true,
            }),
        );
        assert!(h.sent.is_empty() && h.jobs.len() == 2);
        h.at(
            1_400,
            Event::JobDone(JobDone::PowerFail {
                id: 2,
                flushed: true,
            }),
        );
        assert_eq!(h.sent, [(1_400, ack(true))]);
        assert_eq!(h.p.status().last_power_fail_ack_ms, Some(200));
    }

    #[test]
    fn writes_are_not_resumed_once_a_shutdown_is_under_way() {
        let mut h = Harness::connected();
        h.recv_at(
            500,
            McuToHost::ShutdownRequest {
                reason: ShutdownReason::IgnitionOff,
                deadline_ms: 120_000,
            },
        );
        h.recv_at(1_000, McuToHost::PowerFail { budget_ms: 8_000 });
        h.recv_at(1_100, McuToHost::PowerRestored);
        h.at(
            1_200,
            Event::JobDone(JobDone::PowerFail {
                id: 2,
                flushed: true,
            }),
        );
        assert!(!h.job_kinds().contains(&Job::Resume));
    }

    // --- tamper ------------------------------------------------------------------------------

    #[test]
    fn tamper_destroys_the_key_once_then_says_zeroized() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::Tamper);
        assert_eq!(h.jobs, [(1_000, Job::Shred)]);
        assert!(h.p.status().tamper_seen);
        // Repeated while the shred runs (the board repeats it at every hello): not again.
        h.recv_at(1_050, McuToHost::Tamper);
        h.recv_at(1_060, McuToHost::Tamper);
        assert_eq!(h.job_kinds(), [Job::Shred]);
        assert!(h.sent.is_empty(), "no Zeroized before the key is gone");
        h.at(1_100, Event::JobDone(JobDone::Shred { ok: true }));
        assert_eq!(h.sent, [(1_100, HostToMcu::Zeroized)]);
        assert!(h.p.status().zeroized);
        assert_eq!(h.noted(|n| *n == Note::Zeroized), [1_100]);
        // The daemon keeps heartbeating; nothing is shredded again unprompted.
        h.run_until(20_000);
        assert_eq!(h.job_kinds(), [Job::Shred]);
        assert_eq!(h.times_of(BEAT), [5_000, 10_000, 15_000, 20_000]);
    }

    #[test]
    fn a_tamper_repeated_after_the_shred_shreds_again_idempotently() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::Tamper);
        h.at(1_100, Event::JobDone(JobDone::Shred { ok: true }));
        h.recv_at(2_000, McuToHost::Tamper);
        assert_eq!(h.job_kinds(), [Job::Shred, Job::Shred]);
        h.at(2_100, Event::JobDone(JobDone::Shred { ok: true }));
        assert_eq!(h.times_of(HostToMcu::Zeroized), [1_100, 2_100]);
    }

    #[test]
    fn a_failed_shred_is_retried_and_zeroized_only_after_success() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::Tamper);
        h.at(1_100, Event::JobDone(JobDone::Shred { ok: false }));
        let s = h.p.status();
        assert_eq!(s.shred_failures, 1);
        assert_eq!(
            s.fault.as_deref(),
            Some("crypto-shred after tamper failed; retrying")
        );
        assert!(!s.zeroized);
        assert_eq!(h.p.next_wake(1_100), 1_350);
        h.run_until(6_099);
        assert_eq!(h.job_kinds(), [Job::Shred]);
        h.run_until(6_100);
        assert_eq!(h.jobs, [(1_000, Job::Shred), (6_100, Job::Shred)]);
        assert!(!h.msgs().contains(&HostToMcu::Zeroized));
        h.at(6_200, Event::JobDone(JobDone::Shred { ok: true }));
        assert_eq!(h.times_of(HostToMcu::Zeroized), [6_200]);
        assert!(h.p.status().zeroized);
    }

    #[test]
    fn zeroized_owed_while_the_link_was_down_goes_out_on_reconnect() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::Tamper);
        h.at(1_100, Event::LinkLost("supervisor link closed".into()));
        h.at(1_200, Event::JobDone(JobDone::Shred { ok: true }));
        assert!(h.sent.is_empty());
        assert!(!h.p.status().zeroized);
        // Back-off 250 ms from the loss: reopened at 1350.
        h.run_until(1_350);
        assert_eq!(
            h.sent,
            [(1_350, HELLO), (1_350, BEAT), (1_350, HostToMcu::Zeroized)]
        );
        assert!(h.p.status().zeroized);
        assert_eq!(h.job_kinds(), [Job::Shred], "not shredded twice");
    }

    #[test]
    fn an_undelivered_zeroized_says_hello_again_so_the_board_repeats_tamper() {
        let mut h = Harness::connected();
        h.recv_at(1_000, McuToHost::Tamper);
        h.at(1_100, Event::JobDone(JobDone::Shred { ok: true }));
        h.at(2_000, Event::Undelivered(HostToMcu::Zeroized));
        h.run_until(5_000);
        assert_eq!(h.msgs()[1..], [HELLO, BEAT]);
    }

    // --- the interface -------------------------------------------------------------------------

    #[test]
    fn the_same_events_give_the_same_actions() {
        fn script() -> Vec<(u64, HostToMcu)> {
            let mut h = Harness::connected();
            h.recv_at(1_000, McuToHost::PowerFail { budget_ms: 8_000 });
            h.at(
                1_200,
                Event::JobDone(JobDone::PowerFail {
                    id: 1,
                    flushed: true,
                }),
            );
            h.recv_at(4_000, McuToHost::Tamper);
            h.at(4_100, Event::JobDone(JobDone::Shred { ok: true }));
            h.run_until(30_000);
            h.sent
        }
        assert_eq!(script(), script());
    }

    #[test]
    fn an_outcome_nobody_asked_for_is_ignored_and_reports_come_before_the_send() {
        let mut h = Harness::connected();
        let a = h.p.step(
            100,
            Inputs {
                health: Health::Ok,
                leds: h.leds,
                event: Event::Sent(SendOutcome::Sent),
            },
        );
        assert!(a.is_empty());
        let a = h.p.step(
            5_000,
            Inputs {
                health: Health::Degraded,
                leds: h.leds,
                event: Event::Tick,
            },
        );
        assert_eq!(
            a,
            [Action::Send(HostToMcu::Heartbeat {
                health: Health::Degraded
            })]
        );
        let a = h.p.step(
            5_000,
            Inputs {
                health: Health::Degraded,
                leds: h.leds,
                event: Event::Sent(SendOutcome::Sent),
            },
        );
        assert_eq!(a, [Action::Report]);
        // An event while a send is outstanding: the send counts as not done.
        let a = h.p.step(
            10_000,
            Inputs {
                health: Health::Ok,
                leds: h.leds,
                event: Event::Tick,
            },
        );
        assert_eq!(a, [Action::Send(BEAT)]);
        let a = h.p.step(
            10_001,
            Inputs {
                health: Health::Ok,
                leds: h.leds,
                event: Event::BadFrame(DecodeError::TooShort),
            },
        );
        assert_eq!(
            a,
            [
                Action::Log(Note::BadFrame(DecodeError::TooShort)),
                Action::Report
            ]
        );
        assert_eq!(h.p.status().heartbeats_sent, 2);
        assert_eq!(h.p.next_wake(10_001), 10_001, "the heartbeat is still due");
    }
}
