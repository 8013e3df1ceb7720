//! Framing of sync messages on a QUIC stream: a 4-byte big-endian length, then one CBOR value.
//!
//! [`encode_frame`] writes one frame; [`FrameDecoder`] takes bytes as they arrive, in any
//! chunking, and yields whole messages. Both are bounded by [`MAX_FRAME_BYTES`]; the decoder
//! refuses an oversized length as soon as it sees the header (it never buffers the body), and
//! returns typed errors — it never panics, whatever the bytes. After an error the stream's
//! framing is lost, so the decoder stays failed; the driver closes the stream.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame body (CBOR) either end accepts.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// The length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Why a frame could not be written or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("frame encoding failed: {0}")]
    Encode(String),
    #[error("the stream's framing was lost after an earlier error")]
    Poisoned,
}

/// Encode one message as a frame (length prefix + CBOR).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    ciborium::into_writer(msg, &mut out).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - FRAME_HEADER_BYTES;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: MAX_FRAME_BYTES,
    })?;
    out[..FRAME_HEADER_BYTES].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// Decode one frame body (without its length prefix). The whole body must be one value.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let (v, trailing) = crate::cbor::from_slice_prefix(body).map_err(|e| match e {
        crate::cbor::CborError::Malformed(m) => FrameError::Malformed(m),
        other => FrameError::Malformed(other.to_string()),
    })?;
    // (`body` is within MAX_FRAME_BYTES, checked above.)
    if trailing > 0 {
        return Err(FrameError::Malformed(format!(
            "{trailing} trailing bytes after the message"
        )));
    }
    Ok(v)
}

/// Reassembles frames from a byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max_frame: usize,
    poisoned: bool,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the protocol's limit ([`MAX_FRAME_BYTES`]).
    pub fn new() -> Self {
        Self::with_max(MAX_FRAME_BYTES)
    }

    /// A decoder with a smaller limit (never larger than [`MAX_FRAME_BYTES`]).
    pub fn with_max(max_frame: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            max_frame: max_frame.min(MAX_FRAME_BYTES),
            poisoned: false,
        }
    }

    /// Bytes held, waiting for the rest of a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Add bytes read from the stream. Fails at once on a header that announces an oversized
    /// frame, so a peer cannot make the decoder buffer more than one frame's worth.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        self.buf.extend_from_slice(bytes);
        self.check_header().map(|_| ())
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        if self.poisoned {
            return Err(FrameError::Poisoned);
        }
        let Some(len) = self.check_header()? else {
            return Ok(None);
        };
        let end = FRAME_HEADER_BYTES + len;
        if self.buf.len() < end {
            return Ok(None);
        }
        let result = decode_body(&self.buf[FRAME_HEADER_BYTES..end]);
        self.buf.drain(..end);
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    fn check_header(&mut self) -> Result<Option<usize>, FrameError> {
        let Some(h) = self.buf.get(..FRAME_HEADER_BYTES) else {
            return Ok(None);
        };
        let mut b = [0u8; FRAME_HEADER_BYTES];
        b.copy_from_slice(h);
        let len = usize::try_from(u32::from_be_bytes(b)).unwrap_or(usize::MAX);
        if len > self.max_frame {
            self.poisoned = true;
            self.buf = Vec::new();
            return Err(FrameError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        Ok(Some(len))
    }
}
