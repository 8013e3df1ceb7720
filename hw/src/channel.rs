//! In-process byte channels: a duplex "wire" between a host driver and the simulated board in
//! the same process, bounded so a stalled side cannot grow memory without limit.

use crate::serial::Port;
use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

/// Chunks buffered in each direction before writers block.
pub const CHANNEL_CHUNKS: usize = 1_024;

/// One end of an in-process duplex byte channel.
#[derive(Debug)]
pub struct ChannelPort {
    tx: SyncSender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
}

/// A connected pair of ports: bytes written to one are read from the other.
pub fn duplex() -> (ChannelPort, ChannelPort) {
    let (a_tx, b_rx) = sync_channel(CHANNEL_CHUNKS);
    let (b_tx, a_rx) = sync_channel(CHANNEL_CHUNKS);
    (
        ChannelPort {
            tx: a_tx,
            rx: a_rx,
            pending: Vec::new(),
        },
        ChannelPort {
            tx: b_tx,
            rx: b_rx,
            pending: Vec::new(),
        },
    )
}

impl ChannelPort {
    /// Split into a blocking reader (EOF when the peer is gone) and a writer.
    pub fn split(self) -> (ChannelReader, ChannelWriter) {
        (
            ChannelReader {
                rx: self.rx,
                pending: self.pending,
            },
            ChannelWriter { tx: self.tx },
        )
    }

    fn take_pending(&mut self, buf: &mut [u8]) -> usize {
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        n
    }
}

impl Port for ChannelPort {
    fn read_timeout(&mut self, buf: &mut [u8], timeout: Duration) -> io::Result<usize> {
        if self.pending.is_empty() {
            match self.rx.recv_timeout(timeout) {
                Ok(chunk) => self.pending = chunk,
                Err(RecvTimeoutError::Timeout) => return Ok(0),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer gone"))
                }
            }
        }
        Ok(self.take_pending(buf))
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.tx.try_send(bytes.to_vec()) {
            Ok(()) | Err(TrySendError::Full(_)) => Ok(()),
            Err(TrySendError::Disconnected(_)) => {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "peer gone"))
            }
        }
    }
}

/// Reading half of a [`ChannelPort`].
#[derive(Debug)]
pub struct ChannelReader {
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.pending = chunk,
                Err(_) => return Ok(0),
            }
        }
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

/// Writing half of a [`ChannelPort`].
#[derive(Debug)]
pub struct ChannelWriter {
    tx: SyncSender<Vec<u8>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .send(buf.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "peer gone"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
