//! A deterministic stand-in for the daemon, wired to a `SimBoard` through the real framing and
//! the firmware's link `Endpoint`, all on the board's virtual clock (no threads, no sleeps).

use firmware::link::{Endpoint, LinkConfig, Received};
use firmware::proto::{Health, HostToMcu, McuToHost};
use firmware::Settings;
use hw::sim::SimBoard;

/// How the stand-in daemon behaves.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    pub boot_ms: u64,
    pub heartbeat_ms: u64,
    /// Stops heartbeating this long after each boot.
    pub hang_after_ms: Option<u64>,
    pub power_fail_ack_ms: Option<u64>,
    pub shutdown_ack_ms: Option<u64>,
}

pub const HEALTHY: Behaviour = Behaviour {
    boot_ms: 15_000,
    heartbeat_ms: 1_000,
    hang_after_ms: None,
    power_fail_ack_ms: Some(500),
    shutdown_ack_ms: Some(2_000),
};

pub struct Bench {
    pub board: SimBoard,
    pub host: Endpoint<HostToMcu, McuToHost>,
    pub behaviour: Behaviour,
    /// Messages the daemon received, with virtual times.
    pub got: Vec<(u64, McuToHost)>,
    pub bad_frames: usize,
    powered_since: Option<u64>,
    hello_sent: bool,
    next_heartbeat: u64,
    pending: Vec<(u64, HostToMcu)>,
}

impl Bench {
    pub fn new(settings: Settings, behaviour: Behaviour) -> Self {
        Self {
            board: SimBoard::new(settings).expect("valid settings"),
            host: Endpoint::new(LinkConfig::default()),
            behaviour,
            got: Vec::new(),
            bad_frames: 0,
            powered_since: None,
            hello_sent: false,
            next_heartbeat: 0,
            pending: Vec::new(),
        }
    }

    fn alive(&self, now: u64) -> bool {
        match (self.powered_since, self.behaviour.hang_after_ms) {
            (Some(t), Some(h)) => now < t + self.behaviour.boot_ms + h,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Advance `ms` of virtual time in 10 ms ticks, exchanging bytes every tick.
    pub fn run(&mut self, ms: u64) {
        let end = self.board.now_ms() + ms;
        while self.board.now_ms() < end {
            self.board.advance(10);
            let now = self.board.now_ms();
            // The daemon's machine follows the power rail (and the reset line).
            let up = self.board.host_powered() && !self.board.host_reset();
            if !up {
                if self.powered_since.is_some() {
                    self.host = Endpoint::new(LinkConfig::default());
                }
                self.powered_since = None;
                self.hello_sent = false;
                self.pending.clear();
            } else if self.powered_since.is_none() {
                self.powered_since = Some(now);
            }
            let bytes = self.board.take_output();
            let mut rx = Vec::new();
            self.host.receive(now, &bytes, |r| rx.push(r));
            for r in rx {
                match r {
                    Received::Message(m) => {
                        self.got.push((now, m));
                        self.react(now, m);
                    }
                    Received::Error(_) => self.bad_frames += 1,
                }
            }
            if let Some(since) = self.powered_since {
                if !self.hello_sent && now >= since + self.behaviour.boot_ms {
                    self.hello_sent = true;
                    let _ = self.host.send(HostToMcu::Hello { version: 1 });
                    self.next_heartbeat = now + self.behaviour.heartbeat_ms;
                }
                if self.hello_sent && self.alive(now) && now >= self.next_heartbeat {
                    self.next_heartbeat = now + self.behaviour.heartbeat_ms;
                    let _ = self.host.send(HostToMcu::Heartbeat { health: Health::Ok });
                }
                let due: Vec<_> = self
                    .pending
                    .iter()
                    .filter(|(t, _)| *t <= now)
                    .map(|p| p.1)
                    .collect();
                self.pending.retain(|(t, _)| *t > now);
                if self.alive(now) {
                    for m in due {
                        let _ = self.host.send(m);
                    }
                }
            }
            while let Some(frame) = self.host.poll_transmit(now) {
                self.board.receive(&frame);
            }
        }
    }

    fn react(&mut self, now: u64, m: McuToHost) {
        let ack = |d: Option<u64>| d.map(|d| (now + d, HostToMcu::ShutdownAck { flushed: true }));
        match m {
            McuToHost::PowerFail { .. } => {
                self.pending.extend(ack(self.behaviour.power_fail_ack_ms))
            }
            McuToHost::ShutdownRequest { .. } => {
                self.pending.extend(ack(self.behaviour.shutdown_ack_ms))
            }
            McuToHost::Tamper => self.pending.push((now + 100, HostToMcu::Zeroized)),
            _ => {}
        }
    }

    pub fn received(&self, pred: impl Fn(&McuToHost) -> bool) -> Vec<u64> {
        self.got
            .iter()
            .filter(|(_, m)| pred(m))
            .map(|(t, _)| *t)
            .collect()
    }
}
