//! The Linux-side driver for the supervisor link: [`SerialLink`] speaks the firmware's framing
//! and reliable-delivery rules (the very same `firmware::link::Endpoint`) over a serial device or
//! any `Read + Write` byte stream.
//!
//! Threads, not async: a reader thread decodes frames and acknowledges them, a timer thread
//! retransmits unacknowledged frames, and the caller's thread sends. Events arrive on a bounded
//! `std::sync::mpsc` channel, which a tokio daemon can drain from `spawn_blocking` or a
//! dedicated thread. Heartbeats are deliberately *not* automatic: the daemon sends them from its
//! own runtime, so a wedged runtime stops heartbeating and the supervisor's watchdog sees it.
//!
//! Dropping the last [`SerialLink`] clone stops both threads. For a device opened with
//! [`SerialLink::open`] the drop waits for them (at most one 100 ms read timeout), so a link
//! opened next on the same device gets every byte; over other streams the reader ends at end of
//! stream.

use crate::serial::open_tty;
use firmware::link::{Endpoint, LinkConfig, LinkStats, Received};
use firmware::proto::{
    DecodeError, Health, HostFaults, HostToMcu, LinkState, McuToHost, PROTOCOL_VERSION,
};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Something the supervisor said, or something that happened to the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message from the supervisor (never an `Ack`; duplicates already suppressed).
    Message(McuToHost),
    /// A frame that failed to decode (garbage on the line, wrong version, ...).
    BadFrame(DecodeError),
    /// A message the supervisor never acknowledged, after every retransmission.
    Undelivered(HostToMcu),
    /// The byte stream ended or failed; no more events will come.
    Closed,
}

/// Driver settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkOptions {
    /// Retransmission settings (shared with the firmware).
    pub link: LinkConfig,
    /// Baud rate when opening a serial device (`None` leaves it as is, e.g. for a pty).
    pub baud: Option<u32>,
    /// Retransmission timer period.
    pub tick: Duration,
    /// Events buffered before the reader waits for the consumer.
    pub event_capacity: usize,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            link: LinkConfig::default(),
            baud: Some(115_200),
            tick: Duration::from_millis(20),
            event_capacity: 256,
        }
    }
}

/// Why a link operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Opening or configuring the serial device failed.
    #[error("cannot open supervisor link {path}")]
    Open {
        /// Device path.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Writing to the link failed.
    #[error("supervisor link write failed")]
    Write(#[source] io::Error),
    /// Too many messages awaiting acknowledgement; try again shortly.
    #[error("supervisor link send queue full")]
    QueueFull,
    /// The link was closed.
    #[error("supervisor link closed")]
    Closed,
}

struct Inner {
    endpoint: Endpoint<HostToMcu, McuToHost>,
    writer: Box<dyn Write + Send>,
}

struct Shared {
    inner: Mutex<Inner>,
    stop: AtomicBool,
    closed: AtomicBool,
    started: Instant,
    events: SyncSender<Event>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the endpoint half-updated in a way that
        // matters more than losing the link; carry on with the inner value.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Write everything the endpoint has to send; returns frames given up.
    fn flush(&self, inner: &mut Inner) -> Result<Vec<HostToMcu>, LinkError> {
        let now = self.now_ms();
        while let Some(frame) = inner.endpoint.poll_transmit(now) {
            inner.writer.write_all(&frame).map_err(LinkError::Write)?;
        }
        inner.writer.flush().map_err(LinkError::Write)?;
        let mut expired = Vec::new();
        while let Some(frame) = inner.endpoint.poll_expired() {
            expired.push(frame.msg);
        }
        Ok(expired)
    }

    /// Hand an event to the consumer, waiting while its queue is full (backpressure) unless the
    /// link is stopping; a consumer that is gone gets nothing.
    fn emit(&self, event: Event) {
        let mut event = event;
        loop {
            match self.events.try_send(event) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) => {
                    if self.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    event = back;
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.emit(Event::Closed);
        }
    }
}

/// Stops the threads when the last handle goes. For a tty (reads time out every 100 ms) it also
/// waits for them, so a link opened next on the same device sees every byte.
struct StopGuard {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
    join_on_drop: bool,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if self.join_on_drop {
            for t in self.threads.drain(..) {
                // A thread that panicked has nothing more to clean up.
                let _ = t.join();
            }
        }
    }
}

/// Handle to the supervisor link; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct SerialLink {
    shared: Arc<Shared>,
    _guard: Arc<StopGuard>,
}

impl std::fmt::Debug for SerialLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialLink")
            .field("stats", &self.stats())
            .finish()
    }
}

impl SerialLink {
    /// Open a serial device (or a pty slave such as the one `hw-sim` prints) and start the
    /// driver. Returns the handle and the event receiver.
    pub fn open(
        path: impl AsRef<Path>,
        options: LinkOptions,
    ) -> Result<(SerialLink, Receiver<Event>), LinkError> {
        let path = path.as_ref();
        let open_err = |source| LinkError::Open {
            path: path.display().to_string(),
            source,
        };
        let file = open_tty(path, options.baud).map_err(open_err)?;
        let reader = file.try_clone().map_err(open_err)?;
        Ok(Self::start(reader, file, options, true))
    }

    /// Start the driver over any byte stream (a pipe, an in-process channel, a socket). End of
    /// stream (`read` returning 0) closes the link.
    pub fn new<R, W>(reader: R, writer: W, options: LinkOptions) -> (SerialLink, Receiver<Event>)
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        Self::start(reader, writer, options, false)
    }

    fn start<R, W>(
        reader: R,
        writer: W,
        options: LinkOptions,
        zero_read_is_timeout: bool,
    ) -> (SerialLink, Receiver<Event>)
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let (events_tx, events_rx) = sync_channel(options.event_capacity.max(1));
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                endpoint: Endpoint::new(options.link),
                writer: Box::new(writer),
            }),
            stop: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            started: Instant::now(),
            events: events_tx,
        });
        {
            // A lone delimiter flushes any partial frame in the supervisor's decoder.
            let mut inner = shared.lock();
            if inner
                .writer
                .write_all(&[0])
                .and_then(|()| inner.writer.flush())
                .is_err()
            {
                drop(inner);
                shared.close();
            }
        }
        let mut threads = Vec::new();
        let reader_shared = Arc::clone(&shared);
        match thread::Builder::new()
            .name("supervisor-link-rx".into())
            .spawn(move || read_loop(reader_shared, reader, zero_read_is_timeout))
        {
            Ok(t) => threads.push(t),
            Err(_) => shared.close(),
        }
        let timer_shared = Arc::clone(&shared);
        let tick = options.tick;
        match thread::Builder::new()
            .name("supervisor-link-timer".into())
            .spawn(move || timer_loop(timer_shared, tick))
        {
            Ok(t) => threads.push(t),
            Err(_) => shared.close(),
        }
        let guard = Arc::new(StopGuard {
            shared: Arc::clone(&shared),
            threads,
            join_on_drop: zero_read_is_timeout,
        });
        (
            SerialLink {
                shared,
                _guard: guard,
            },
            events_rx,
        )
    }

    /// Send a message; returns its sequence number. Delivery is confirmed by the supervisor's
    /// acknowledgement; a message never acknowledged comes back as [`Event::Undelivered`].
    pub fn send(&self, msg: HostToMcu) -> Result<u16, LinkError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(LinkError::Closed);
        }
        let (seq, expired) = {
            let mut inner = self.shared.lock();
            let seq = inner.endpoint.send(msg).map_err(|_| LinkError::QueueFull)?;
            let expired = self.shared.flush(&mut inner)?;
            (seq, expired)
        };
        for msg in expired {
            self.shared.emit(Event::Undelivered(msg));
        }
        Ok(seq)
    }

    /// Announce the daemon (at start-up and after reconnecting); the supervisor answers with its
    /// own `Hello` and repeats any pending demand (tamper, shutdown, power-fail).
    pub fn hello(&self) -> Result<u16, LinkError> {
        self.send(HostToMcu::Hello {
            version: PROTOCOL_VERSION,
        })
    }

    /// Feed the supervisor's watchdog (send well within its 30 s timeout, e.g. every 5 s).
    pub fn heartbeat(&self, health: Health) -> Result<u16, LinkError> {
        self.send(HostToMcu::Heartbeat { health })
    }

    /// The shutdown or power-fail work is done; the supervisor may cut power.
    pub fn shutdown_ack(&self, flushed: bool) -> Result<u16, LinkError> {
        self.send(HostToMcu::ShutdownAck { flushed })
    }

    /// The cache data key was destroyed after a tamper event.
    pub fn zeroized(&self) -> Result<u16, LinkError> {
        self.send(HostToMcu::Zeroized)
    }

    /// Set the link LED and host-side faults.
    pub fn set_leds(&self, link: LinkState, faults: HostFaults) -> Result<u16, LinkError> {
        self.send(HostToMcu::SetLeds { link, faults })
    }

    /// Ask for a `Status` (it arrives as [`Event::Message`]).
    pub fn get_status(&self) -> Result<u16, LinkError> {
        self.send(HostToMcu::GetStatus)
    }

    /// Link counters.
    pub fn stats(&self) -> LinkStats {
        self.shared.lock().endpoint.stats()
    }

    /// Whether the stream has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }
}

fn read_loop<R: Read>(shared: Arc<Shared>, mut reader: R, zero_read_is_timeout: bool) {
    let mut buf = [0u8; 256];
    while !shared.stop.load(Ordering::SeqCst) {
        let n = match reader.read(&mut buf) {
            Ok(0) if zero_read_is_timeout => continue,
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        let mut received = Vec::new();
        let flushed = {
            let mut inner = shared.lock();
            let now = shared.now_ms();
            inner.endpoint.receive(now, &buf[..n], |r| received.push(r));
            shared.flush(&mut inner)
        };
        for r in received {
            shared.emit(match r {
                Received::Message(msg) => Event::Message(msg),
                Received::Error(e) => Event::BadFrame(e),
            });
        }
        match flushed {
            Ok(expired) => expired
                .into_iter()
                .for_each(|m| shared.emit(Event::Undelivered(m))),
            Err(_) => break,
        }
    }
    shared.close();
}

fn timer_loop(shared: Arc<Shared>, tick: Duration) {
    while !shared.stop.load(Ordering::SeqCst) && !shared.closed.load(Ordering::SeqCst) {
        thread::sleep(tick);
        let flushed = {
            let mut inner = shared.lock();
            shared.flush(&mut inner)
        };
        match flushed {
            Ok(expired) => expired
                .into_iter()
                .for_each(|m| shared.emit(Event::Undelivered(m))),
            Err(_) => {
                shared.close();
                break;
            }
        }
    }
}
