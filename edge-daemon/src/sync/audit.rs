//! The audit uploader: the I/O half of the upload pipeline whose policy is
//! [`AuditUpload`](super::upload::AuditUpload). It opens the audit stream, reads batches from
//! the journal, sends them, reads the hub's acknowledgements and records them in the journal,
//! exactly as the policy says, and tells the connection's watchdog what it sees (bytes heard,
//! whether a batch awaits its acknowledgement, progress). It wakes on the journal owner's
//! [`Notify`] when one was given (`SyncClient::with_audit_wake`), else it polls.
//! Runs until its connection ends (the driver aborts it).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edge_proto::sync::frame::FrameDecoder;
use edge_proto::sync::{encode_frame, ToHub, ToUnit};
use edge_runtime::clock::SharedClock;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, warn};

use super::policy::LinkEvent;
use super::quic::explain;
use super::upload::{AuditUpload, UploadAction, UploadConfig, UploadEvent};
use crate::journal::Journal;
use crate::status::Status;

/// What the watchdog hears from the uploader: (monotonic ms, event). Bounded
/// ([`LINK_SIGNALS`]); the watchdog drains it every tick, and a signal that finds it full is
/// dropped (the ones queued already say the link is alive).
pub(super) type LinkSignals = mpsc::Sender<(u64, LinkEvent)>;

/// Signals queued for the watchdog, at most.
pub(super) const LINK_SIGNALS: usize = 1_024;

/// Everything the uploader needs for one connection.
pub(super) struct Uploader {
    pub conn: quinn::Connection,
    pub journal: Journal,
    pub status: Arc<Status>,
    pub clock: SharedClock,
    pub wake: Option<Arc<Notify>>,
    pub link: LinkSignals,
}

impl Uploader {
    fn signal(&self, ev: LinkEvent) {
        let _ = self.link.try_send((self.clock.mono_ms(), ev));
    }

    /// Sleep until `until_ms` on the uploader's clock.
    async fn sleep_until(&self, until_ms: u64) {
        let ms = until_ms.saturating_sub(self.clock.mono_ms());
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// The journal owner's next append (never, without a wake-up).
    async fn appended(&self) {
        match &self.wake {
            Some(w) => w.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Upload the journal in order, in batches, on its own stream; events are marked uploaded
    /// only on the hub's acknowledgement that they are durably stored.
    pub async fn run(self) {
        let cfg = UploadConfig::new(self.wake.is_some());
        let ack_timeout_s = cfg.ack_timeout_ms / 1_000;
        let mut policy = AuditUpload::new(cfg, self.journal.uploaded_seq());
        let mut stream: Option<(quinn::SendStream, quinn::RecvStream)> = None;
        let mut dec = FrameDecoder::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut waiting = false;
        let mut ev = UploadEvent::Tick;
        loop {
            let action = policy.on_event(self.clock.mono_ms(), ev);
            if policy.awaiting_ack() != waiting {
                waiting = policy.awaiting_ack();
                self.signal(LinkEvent::AuditWaiting(waiting));
            }
            ev = match action {
                UploadAction::Open => match self.conn.open_bi().await {
                    Ok(s) => {
                        stream = Some(s);
                        dec = FrameDecoder::new();
                        UploadEvent::Opened
                    }
                    Err(e) => self.failed(&explain(e)),
                },
                UploadAction::Send {
                    from,
                    max_events,
                    max_bytes,
                } => match self
                    .send(stream.as_mut(), from, max_events, max_bytes, &mut waiting)
                    .await
                {
                    Ok(Some(last)) => UploadEvent::Sent { from, last },
                    Ok(None) => UploadEvent::Drained,
                    Err(e) => self.failed(&e),
                },
                UploadAction::Mark { upto } => match self.mark(upto).await {
                    Ok(()) => UploadEvent::Marked,
                    Err(e) => self.failed(&e),
                },
                UploadAction::AwaitAck { until_ms } => match stream.as_mut() {
                    None => self.failed(&anyhow::anyhow!("no audit stream")),
                    Some((_, recv)) => tokio::select! {
                        m = self.next_message(recv, &mut dec, &mut buf) => match m {
                            Ok(ToUnit::AuditAck { upto_seq, problems }) => {
                                self.signal(LinkEvent::Progressed);
                                if !problems.is_empty() {
                                    warn!(
                                        problems = problems.len(),
                                        "the hub reported problems in this unit's audit trail"
                                    );
                                }
                                UploadEvent::Acked { upto_seq }
                            }
                            Ok(_) => self.failed(&anyhow::anyhow!(
                                "unexpected message on the audit stream"
                            )),
                            Err(e) => self.failed(&e),
                        },
                        () = self.appended() => UploadEvent::Appended,
                        () = self.sleep_until(until_ms) => {
                            if self.clock.mono_ms() >= until_ms {
                                warn!(
                                    "no audit acknowledgement within {ack_timeout_s} s; \
                                     resending after a pause"
                                );
                            }
                            UploadEvent::Tick
                        }
                    },
                },
                UploadAction::Idle { until_ms } => {
                    tokio::select! {
                        () = self.appended() => UploadEvent::Appended,
                        () = self.sleep_until(until_ms) => UploadEvent::Tick,
                    }
                }
                UploadAction::Backoff { until_ms } => {
                    stream = None;
                    self.sleep_until(until_ms).await;
                    UploadEvent::Tick
                }
            };
        }
    }

    fn failed(&self, e: &anyhow::Error) -> UploadEvent {
        let error = format!("{e:#}");
        if self.conn.close_reason().is_some() {
            // The connection is gone: the driver reconnects (and ends this task).
            debug!(error, "audit upload stopped with the connection");
        } else {
            warn!(
                error,
                "audit upload failed; resending from the last acknowledged event after a pause"
            );
        }
        UploadEvent::Failed
    }

    /// Read a batch from `from` and send it; the last seq sent, or `None` if there was nothing.
    /// `waiting`: what the watchdog was last told about an audit batch awaiting its
    /// acknowledgement (it is told before the write, which may wait on flow control).
    async fn send(
        &self,
        stream: Option<&mut (quinn::SendStream, quinn::RecvStream)>,
        from: u64,
        max_events: usize,
        max_bytes: usize,
        waiting: &mut bool,
    ) -> anyhow::Result<Option<u64>> {
        let (send, _) = stream.context("no audit stream")?;
        let j = self.journal.clone();
        let events = tokio::task::spawn_blocking(move || j.read_from(from, max_events, max_bytes))
            .await
            .context("audit read task")?
            .context("cannot read the audit journal")?;
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(None);
        };
        // The first batch into an empty pipeline: its acknowledgement is awaited from now.
        if !*waiting {
            self.signal(LinkEvent::Heard);
            self.signal(LinkEvent::AuditWaiting(true));
            *waiting = true;
        }
        send.write_all(&encode_frame(&ToHub::Audit { events })?)
            .await?;
        Ok(Some(last))
    }

    /// The next message on the audit stream (every chunk heard counts for the watchdog).
    async fn next_message(
        &self,
        recv: &mut quinn::RecvStream,
        dec: &mut FrameDecoder,
        buf: &mut [u8],
    ) -> anyhow::Result<ToUnit> {
        loop {
            if let Some(m) = dec.next_message::<ToUnit>()? {
                return Ok(m);
            }
            match recv.read(buf).await? {
                Some(k) => {
                    self.signal(LinkEvent::Heard);
                    dec.push(&buf[..k])?;
                }
                None => anyhow::bail!("the hub closed the audit stream"),
            }
        }
    }

    /// Record the hub's acknowledgement up to `upto` in the journal and the status, then prune
    /// what the hub now holds and the journal no longer needs (by retention, or early once the
    /// journal is above three quarters of its budget): without this, a busy unit's journal
    /// would fill with events the hub already has and the unit would refuse every access.
    async fn mark(&self, upto: u64) -> anyhow::Result<()> {
        let j = self.journal.clone();
        let now = self.clock.wall();
        let pruned = tokio::task::spawn_blocking(move || {
            j.mark_uploaded(upto)?;
            Ok::<_, crate::journal::JournalError>(j.prune(now))
        })
        .await
        .context("audit mark task")?
        .context("cannot record the upload")?;
        if let Err(e) = pruned {
            // The upload is recorded; a failed prune is retried after the next acknowledgement.
            warn!(error = %e, "cannot prune uploaded audit segments");
        }
        // Read the journal under the status lock (see the auditor's append): the figures shown
        // are never older than the last writer's.
        let pending = self.status.update(|l| {
            l.audit_pending = self.journal.pending();
            l.audit_uploaded_seq = self.journal.uploaded_seq();
            l.audit_pending
        });
        debug!(upto, pending, "audit events uploaded");
        Ok(())
    }
}
