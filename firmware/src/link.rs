//! The reliable-delivery layer shared by both ends of the link, sans-IO: sequence numbers,
//! acknowledgements, bounded retransmission and duplicate suppression.
//!
//! The MCU runs an `Endpoint<McuToHost, HostToMcu>`, the host driver (`hw::link`) and `SimBoard`
//! run the same code with the directions swapped. No clock is read and no byte is written here:
//! the caller passes `now_ms` in and pulls wire bytes out with [`Endpoint::poll_transmit`].
//!
//! Rules (also in `docs/supervisor.md`):
//! - every frame except an `Ack` is acknowledged by the receiver with `Ack{seq}`;
//! - an unacknowledged frame is retransmitted every `retransmit_ms`, at most `max_attempts`
//!   transmissions in all, then given up and reported through [`Endpoint::poll_expired`];
//! - a frame whose sequence number equals the previous one received is a retransmission: it is
//!   acknowledged again but not delivered twice. A `Hello` always resets this memory (the peer
//!   restarted and its sequence numbers with it).

use crate::proto::frame::{encode, Frame, FrameDecoder, WireFrame};
use crate::proto::{DecodeError, Message};
use heapless::{Deque, Vec};

/// Frames awaiting acknowledgement, at most.
pub const OUTBOX_LEN: usize = 8;
/// Frames queued for first transmission, at most.
pub const QUEUE_LEN: usize = 8;
/// Acknowledgements waiting to go out, at most (older ones are dropped; the peer retransmits).
pub const ACK_QUEUE_LEN: usize = 8;
/// Given-up frames kept for [`Endpoint::poll_expired`], at most (oldest dropped).
pub const EXPIRED_LEN: usize = 4;

/// Retransmission settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// Time between transmissions of an unacknowledged frame.
    pub retransmit_ms: u32,
    /// Transmissions in all (first one included) before a frame is given up.
    pub max_attempts: u8,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            retransmit_ms: 500,
            max_attempts: 4,
        }
    }
}

/// Counters for diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames received that failed to decode.
    pub bad_frames: u32,
    /// Retransmissions sent.
    pub retransmits: u32,
    /// Frames given up after `max_attempts`.
    pub expired: u32,
    /// Duplicate frames suppressed.
    pub duplicates: u32,
    /// Messages refused because the queue was full.
    pub refused: u32,
    /// Acknowledgements dropped because their queue was full.
    pub acks_dropped: u32,
}

/// The send queue is full; try again after acknowledgements arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull;

impl core::fmt::Display for QueueFull {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("link send queue full")
    }
}

impl core::error::Error for QueueFull {}

/// What arrived on the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received<I> {
    /// A new message (never an `Ack`, never a duplicate).
    Message(I),
    /// A frame that failed to decode.
    Error(DecodeError),
}

#[derive(Debug, Clone)]
struct InFlight<O> {
    frame: Frame<O>,
    sent_at_ms: u64,
    attempts: u8,
}

/// One end of the link: sends `O`, receives `I`.
#[derive(Debug)]
pub struct Endpoint<O: Message, I: Message> {
    config: LinkConfig,
    next_seq: u16,
    acks: Deque<u16, ACK_QUEUE_LEN>,
    queue: Deque<Frame<O>, QUEUE_LEN>,
    outbox: Vec<InFlight<O>, OUTBOX_LEN>,
    expired: Deque<Frame<O>, EXPIRED_LEN>,
    last_rx_seq: Option<u16>,
    decoder: FrameDecoder<I>,
    stats: LinkStats,
}

impl<O: Message, I: Message> Endpoint<O, I> {
    /// A fresh endpoint whose first frame has sequence number 0.
    pub fn new(config: LinkConfig) -> Self {
        Self {
            config,
            next_seq: 0,
            acks: Deque::new(),
            queue: Deque::new(),
            outbox: Vec::new(),
            expired: Deque::new(),
            last_rx_seq: None,
            decoder: FrameDecoder::new(),
            stats: LinkStats::default(),
        }
    }

    /// Diagnostic counters.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Whether nothing is queued, in flight or waiting to be acknowledged.
    pub fn is_idle(&self) -> bool {
        self.acks.is_empty() && self.queue.is_empty() && self.outbox.is_empty()
    }

    /// Forget everything queued and in flight and any partial frame (the peer lost power).
    pub fn reset(&mut self) {
        self.acks.clear();
        self.queue.clear();
        self.outbox.clear();
        self.last_rx_seq = None;
        self.decoder.reset();
    }

    /// Queue a message; returns its sequence number. `Ack`s are sent by the endpoint itself.
    pub fn send(&mut self, msg: O) -> Result<u16, QueueFull> {
        let seq = self.next_seq;
        if self.queue.push_back(Frame { seq, msg }).is_err() {
            self.stats.refused = self.stats.refused.saturating_add(1);
            return Err(QueueFull);
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(seq)
    }

    /// Feed received bytes; `on_rx` gets each new message or decode error.
    pub fn receive(&mut self, now_ms: u64, bytes: &[u8], mut on_rx: impl FnMut(Received<I>)) {
        for byte in bytes {
            match self.decoder.push(*byte) {
                None => {}
                Some(Ok(frame)) => {
                    if let Some(msg) = self.handle_frame(now_ms, frame) {
                        on_rx(Received::Message(msg));
                    }
                }
                Some(Err(e)) => {
                    self.stats.bad_frames = self.stats.bad_frames.saturating_add(1);
                    on_rx(Received::Error(e));
                }
            }
        }
    }

    /// Handle one decoded frame; returns the message if it is new and not an `Ack`.
    pub fn handle_frame(&mut self, _now_ms: u64, frame: Frame<I>) -> Option<I> {
        if let Some(acked) = frame.msg.acked_seq() {
            self.outbox.retain(|f| f.frame.seq != acked);
            return None;
        }
        if self.acks.push_back(frame.seq).is_err() {
            self.acks.pop_front();
            let _ = self.acks.push_back(frame.seq);
            self.stats.acks_dropped = self.stats.acks_dropped.saturating_add(1);
        }
        if !frame.msg.is_hello() && self.last_rx_seq == Some(frame.seq) {
            self.stats.duplicates = self.stats.duplicates.saturating_add(1);
            return None;
        }
        self.last_rx_seq = Some(frame.seq);
        Some(frame.msg)
    }

    /// The next frame to write, if any: acknowledgements first, then new frames, then due
    /// retransmissions. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now_ms: u64) -> Option<WireFrame> {
        if let Some(seq) = self.acks.pop_front() {
            let frame = encode(self.next_seq, &O::ack(seq));
            self.next_seq = self.next_seq.wrapping_add(1);
            return Some(frame);
        }
        if !self.outbox.is_full() {
            if let Some(frame) = self.queue.pop_front() {
                let wire = encode(frame.seq, &frame.msg);
                let _ = self.outbox.push(InFlight {
                    frame,
                    sent_at_ms: now_ms,
                    attempts: 1,
                });
                return Some(wire);
            }
        }
        let retransmit_ms = u64::from(self.config.retransmit_ms);
        let mut i = 0;
        while i < self.outbox.len() {
            let due = now_ms.saturating_sub(self.outbox[i].sent_at_ms) >= retransmit_ms;
            if !due {
                i += 1;
                continue;
            }
            if self.outbox[i].attempts >= self.config.max_attempts {
                let gone = self.outbox.remove(i);
                self.stats.expired = self.stats.expired.saturating_add(1);
                if self.expired.push_back(gone.frame.clone()).is_err() {
                    self.expired.pop_front();
                    let _ = self.expired.push_back(gone.frame);
                }
                continue;
            }
            let entry = &mut self.outbox[i];
            entry.attempts += 1;
            entry.sent_at_ms = now_ms;
            self.stats.retransmits = self.stats.retransmits.saturating_add(1);
            return Some(encode(entry.frame.seq, &entry.frame.msg));
        }
        None
    }

    /// A frame given up after `max_attempts` transmissions without acknowledgement.
    pub fn poll_expired(&mut self) -> Option<Frame<O>> {
        self.expired.pop_front()
    }

    /// Earliest time a retransmission is due, if any frame is in flight.
    pub fn next_timeout_ms(&self) -> Option<u64> {
        let retransmit_ms = u64::from(self.config.retransmit_ms);
        self.outbox
            .iter()
            .map(|f| f.sent_at_ms.saturating_add(retransmit_ms))
            .min()
    }
}
