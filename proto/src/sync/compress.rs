//! Compression of the pull stream: one deflate stream per QUIC stream, flushed after every
//! message (`Z_SYNC_FLUSH`), so each message can be decoded as soon as it arrives while the
//! dictionary carries across messages. Summaries share field names, code systems and
//! organisation names, so a stream of them compresses far better than each alone (CBOR
//! summary 2.2 kB → ~0.3 kB per summary in a stream, BENCHMARKS.md).
//!
//! Decompression is bounded: output is produced in small slices and handed to the
//! [`FrameDecoder`], which refuses an oversized frame from its header, so a small hostile input
//! cannot make the receiver buffer more than one frame's worth (no "zip bomb").

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::frame::{encode_frame, FrameDecoder, FrameError};

/// Output produced per decompression step (bounds memory per call).
const INFLATE_SLICE: usize = 64 * 1024;

/// Frames messages and compresses them onto a stream.
#[derive(Debug)]
pub struct DeflateFramer {
    z: Compress,
}

impl Default for DeflateFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl DeflateFramer {
    pub fn new() -> Self {
        DeflateFramer {
            // Level 6: the hub compresses once per unit; on the 2-core hub this costs far less
            // than the bytes it saves on a 4G link.
            z: Compress::new(Compression::new(6), false),
        }
    }

    /// The compressed bytes that carry `msg` (a whole frame, flushed).
    pub fn encode<T: Serialize>(&mut self, msg: &T) -> Result<Vec<u8>, FrameError> {
        let frame = encode_frame(msg)?;
        let mut out = Vec::with_capacity(frame.len() / 3 + 64);
        let mut input = &frame[..];
        loop {
            if out.capacity() - out.len() < 1024 {
                out.reserve(frame.len() / 2 + 1024);
            }
            let before_in = self.z.total_in();
            let status = self
                .z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Malformed(format!("deflate: {e}")))?;
            let used = usize::try_from(self.z.total_in() - before_in).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            // Done when all input is consumed and the flush fit in the spare capacity.
            if input.is_empty() && out.len() < out.capacity() && status != Status::BufError {
                break;
            }
            if status == Status::BufError && input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        Ok(out)
    }
}

/// Decompresses a stream's bytes and reassembles frames, bounded.
#[derive(Debug)]
pub struct InflateDeframer {
    z: Decompress,
    frames: FrameDecoder,
    pending: Vec<u8>,
    /// The last step filled its output slice: the inflater may hold more output.
    more_out: bool,
    /// Inflate output, reused from step to step (one allocation per stream, not per step).
    scratch: Vec<u8>,
}

impl Default for InflateDeframer {
    fn default() -> Self {
        Self::new()
    }
}

impl InflateDeframer {
    pub fn new() -> Self {
        InflateDeframer {
            z: Decompress::new(false),
            frames: FrameDecoder::new(),
            pending: Vec::new(),
            more_out: false,
            scratch: Vec::with_capacity(INFLATE_SLICE),
        }
    }

    /// Add compressed bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        loop {
            if let Some(m) = self.frames.next_message()? {
                return Ok(Some(m));
            }
            if self.pending.is_empty() && !self.more_out {
                return Ok(None);
            }
            let out = &mut self.scratch;
            out.clear();
            let before_in = self.z.total_in();
            self.z
                .decompress_vec(&self.pending, out, FlushDecompress::Sync)
                .map_err(|e| FrameError::Malformed(format!("inflate: {e}")))?;
            let used = usize::try_from(self.z.total_in() - before_in).unwrap_or(0);
            self.pending.drain(..used.min(self.pending.len()));
            self.more_out = out.len() == out.capacity();
            if out.is_empty() && used == 0 {
                // Needs more input to make progress.
                return Ok(None);
            }
            self.frames.push(out)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip_split_anywhere() {
        let msgs: Vec<Vec<String>> = (0..200)
            .map(|i| {
                (0..(i % 17))
                    .map(|j| format!("allergy {i} {j} penicillin"))
                    .collect()
            })
            .collect();
        let mut enc = DeflateFramer::new();
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend(enc.encode(m).unwrap());
        }
        for split in [1usize, 7, 100, 4096, wire.len()] {
            let mut dec = InflateDeframer::new();
            let mut got: Vec<Vec<String>> = Vec::new();
            for chunk in wire.chunks(split) {
                dec.push(chunk).unwrap();
                while let Some(m) = dec.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs, "split {split}");
        }
    }

    #[test]
    fn each_message_decodes_as_soon_as_it_arrives() {
        let mut enc = DeflateFramer::new();
        let mut dec = InflateDeframer::new();
        for i in 0..50u32 {
            let big: Vec<u32> = (0..i * 1000).collect();
            dec.push(&enc.encode(&big).unwrap()).unwrap();
            let m: Vec<u32> = dec.next_message().unwrap().expect("whole message");
            assert_eq!(m, big);
        }
    }

    #[test]
    fn a_bomb_is_refused_without_buffering_it() {
        // A frame header announcing 100 MiB, then zeros: refused at the header.
        let mut raw = (100u32 * 1024 * 1024).to_be_bytes().to_vec();
        raw.extend(vec![0u8; 1 << 20]);
        let mut z = Compress::new(Compression::best(), false);
        let mut out = Vec::with_capacity(1 << 20);
        z.compress_vec(&raw, &mut out, FlushCompress::Sync).unwrap();
        let mut dec = InflateDeframer::new();
        dec.push(&out).unwrap();
        assert!(dec.next_message::<Vec<u8>>().is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let mut dec = InflateDeframer::new();
            let _ = dec.push(&bytes);
            for _ in 0..4 {
                if !matches!(dec.next_message::<Vec<u8>>(), Ok(Some(_))) { break; }
            }
        }
    }
}
