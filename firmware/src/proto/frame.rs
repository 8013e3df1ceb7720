//! Framing for the link protocol: header, CRC-16 and COBS, plus a streaming decoder that takes
//! arbitrary partial UART reads.
//!
//! Decoded frame: `version:u8 | seq:u16 LE | kind:u8 | payload | crc:u16 LE`, where the CRC is
//! CRC-16/IBM-3740 (a.k.a. CCITT-FALSE: poly 0x1021, init 0xffff) over everything before it.
//! The decoded frame is COBS-encoded and followed by a single `0x00` delimiter.
//!
//! The COBS codec is hand-written and strict (only canonical encodings are accepted) so that
//! every frame that decodes re-encodes to the same bytes. The streaming [`FrameDecoder`] holds at
//! most [`MAX_ENCODED_LEN`] bytes: a longer run without a delimiter is discarded and reported once
//! as [`DecodeError::Oversized`] when the delimiter finally arrives, after which decoding resumes.

use super::{
    DecodeError, Message, Writer, CRC_LEN, HEADER_LEN, MAX_ENCODED_LEN, MAX_FRAME_LEN,
    MAX_WIRE_LEN, PROTOCOL_VERSION,
};
use core::marker::PhantomData;

/// The frame checksum: CRC-16/IBM-3740.
pub const CRC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);

/// A decoded frame: a sequence number and a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<M> {
    /// Sender's sequence number (wrapping).
    pub seq: u16,
    /// The message.
    pub msg: M,
}

/// An encoded frame ready for the wire, delimiter included.
pub type WireFrame = heapless::Vec<u8, MAX_WIRE_LEN>;

/// Encode `msg` with sequence number `seq` into wire bytes (COBS, trailing `0x00`).
pub fn encode<M: Message>(seq: u16, msg: &M) -> WireFrame {
    let mut raw = [0u8; MAX_FRAME_LEN];
    let mut payload = Writer::new();
    msg.write_payload(&mut payload);
    let payload = payload.as_slice();
    let [s0, s1] = seq.to_le_bytes();
    let header = [PROTOCOL_VERSION, s0, s1, msg.kind()];
    let body_len = HEADER_LEN + payload.len();
    raw[..HEADER_LEN].copy_from_slice(&header);
    raw[HEADER_LEN..body_len].copy_from_slice(payload);
    let crc = CRC.checksum(&raw[..body_len]).to_le_bytes();
    raw[body_len..body_len + CRC_LEN].copy_from_slice(&crc);
    let mut out = WireFrame::new();
    cobs_encode(&raw[..body_len + CRC_LEN], &mut out);
    // Capacity is MAX_WIRE_LEN, one more than the largest COBS encoding: this cannot fail.
    let _ = out.push(0);
    out
}

/// Decode one frame from its COBS bytes (without the delimiter).
pub fn decode<M: Message>(encoded: &[u8]) -> Result<Frame<M>, DecodeError> {
    if encoded.len() > MAX_ENCODED_LEN {
        return Err(DecodeError::Oversized);
    }
    let mut raw = [0u8; MAX_FRAME_LEN];
    let len = cobs_decode(encoded, &mut raw)?;
    let raw = &raw[..len];
    if raw.len() < HEADER_LEN + CRC_LEN {
        return Err(DecodeError::TooShort);
    }
    let (body, crc) = raw.split_at(raw.len() - CRC_LEN);
    let received = u16::from_le_bytes([crc[0], crc[1]]);
    let computed = CRC.checksum(body);
    if computed != received {
        return Err(DecodeError::Crc { computed, received });
    }
    if body[0] != PROTOCOL_VERSION {
        return Err(DecodeError::Version { got: body[0] });
    }
    let seq = u16::from_le_bytes([body[1], body[2]]);
    let msg = M::read_payload(body[3], &body[HEADER_LEN..])?;
    Ok(Frame { seq, msg })
}

/// COBS-encode `src` (at most [`MAX_FRAME_LEN`] bytes) onto `out`.
fn cobs_encode(src: &[u8], out: &mut WireFrame) {
    let mut code_at = out.len();
    let _ = out.push(0);
    let mut code: u8 = 1;
    for &b in src {
        if b == 0 {
            if let Some(slot) = out.get_mut(code_at) {
                *slot = code;
            }
            code_at = out.len();
            let _ = out.push(0);
            code = 1;
        } else {
            let _ = out.push(b);
            code += 1;
            if code == 0xff {
                if let Some(slot) = out.get_mut(code_at) {
                    *slot = code;
                }
                code_at = out.len();
                let _ = out.push(0);
                code = 1;
            }
        }
    }
    if let Some(slot) = out.get_mut(code_at) {
        *slot = code;
    }
}

/// Strict COBS decode into `dst`; returns the decoded length.
fn cobs_decode(src: &[u8], dst: &mut [u8; MAX_FRAME_LEN]) -> Result<usize, DecodeError> {
    let mut i = 0;
    let mut o = 0;
    while i < src.len() {
        let code = src[i];
        if code == 0 {
            return Err(DecodeError::Cobs);
        }
        i += 1;
        let run = usize::from(code - 1);
        let block = src.get(i..i + run).ok_or(DecodeError::Cobs)?;
        if block.contains(&0) {
            return Err(DecodeError::Cobs);
        }
        dst.get_mut(o..o + run)
            .ok_or(DecodeError::Oversized)?
            .copy_from_slice(block);
        o += run;
        i += run;
        if code != 0xff && i < src.len() {
            *dst.get_mut(o).ok_or(DecodeError::Oversized)? = 0;
            o += 1;
        }
    }
    // A 0xff block must be followed by another block; the encoder never ends on one.
    Ok(o)
}

/// Streaming decoder: feed it whatever the UART delivered, get frames (or typed errors) out.
///
/// Holds at most [`MAX_ENCODED_LEN`] bytes. Empty frames (consecutive delimiters) are skipped
/// silently, so a sender may emit a lone `0x00` to resynchronise the receiver.
#[derive(Debug)]
pub struct FrameDecoder<M> {
    buf: heapless::Vec<u8, MAX_ENCODED_LEN>,
    overflowed: bool,
    _msg: PhantomData<M>,
}

impl<M: Message> Default for FrameDecoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Message> FrameDecoder<M> {
    /// An empty decoder.
    pub const fn new() -> Self {
        Self {
            buf: heapless::Vec::new(),
            overflowed: false,
            _msg: PhantomData,
        }
    }

    /// Bytes currently buffered (always at most [`MAX_ENCODED_LEN`]).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Forget any partial frame (e.g. after the UART reported a framing error).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.overflowed = false;
    }

    /// Push one byte; a delimiter completes a frame or an error.
    pub fn push(&mut self, byte: u8) -> Option<Result<Frame<M>, DecodeError>> {
        if byte == 0 {
            if self.overflowed {
                self.reset();
                return Some(Err(DecodeError::Oversized));
            }
            if self.buf.is_empty() {
                return None;
            }
            let result = decode(&self.buf);
            self.buf.clear();
            return Some(result);
        }
        if !self.overflowed && self.buf.push(byte).is_err() {
            self.buf.clear();
            self.overflowed = true;
        }
        None
    }

    /// Iterate over the frames completed by `bytes`.
    pub fn feed<'a>(&'a mut self, bytes: &'a [u8]) -> Feed<'a, M> {
        Feed {
            decoder: self,
            bytes,
        }
    }
}

/// Iterator returned by [`FrameDecoder::feed`].
#[derive(Debug)]
pub struct Feed<'a, M> {
    decoder: &'a mut FrameDecoder<M>,
    bytes: &'a [u8],
}

impl<M: Message> Iterator for Feed<'_, M> {
    type Item = Result<Frame<M>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        while let Some((&b, rest)) = self.bytes.split_first() {
            self.bytes = rest;
            if let Some(result) = self.decoder.push(b) {
                return Some(result);
            }
        }
        None
    }
}
