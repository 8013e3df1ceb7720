//! Compression of the pull stream: one compressed stream per QUIC stream, flushed after every
//! message, so each message can be decoded as soon as it arrives while the dictionary carries
//! across messages. Summaries share field names, code systems and organisation names, so a
//! stream of them compresses far better than each alone (CBOR summary 2.3 kB → ≈ 0.3 kB per
//! summary in a stream, BENCHMARKS.md).
//!
//! Two codecs, negotiated: a unit lists what it can read in its hello
//! ([`super::Hello::compression`]) and the hub picks ([`PullCompression::choose`]).
//! - **zstd** ([`ZstdFramer`], level 3, a 256 KiB window), when the unit offers it: a third of
//!   deflate's CPU on the hub and ≈ 11 % fewer bytes on the link (278 against 313 B a summary,
//!   `cargo bench -p edge-daemon --bench codecs`). The window and hash tables are capped so a hub
//!   session's compressor stays under ≈ 1 MiB.
//! - **deflate** ([`DeflateFramer`], level 6, `Z_SYNC_FLUSH`), for units from before zstd (they
//!   send no `compression` list) — and every hub from before zstd sends it whatever the unit
//!   offers, so the unit's [`InflateDeframer`] tells the two apart itself: a zstd stream opens
//!   with the zstd frame magic (`28 B5 2F FD`), which a zlib-made deflate stream never does (its
//!   first byte is a block header: a stored block's is `00`/`01`, any other has a block type
//!   bit set, which `0x28` has not).
//!
//! Decompression is bounded: output is produced in small slices and handed to the
//! [`FrameDecoder`], which refuses an oversized frame from its header, so a small hostile input
//! cannot make the receiver buffer more than one frame's worth (no "zip bomb"); zstd's window is
//! capped at 1 MiB ([`ZSTD_WINDOW_LOG_MAX`]), so a hostile frame header cannot make the unit
//! allocate a large window either.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zstd::stream::raw::{Decoder as ZDecoder, Encoder as ZEncoder, InBuffer, Operation, OutBuffer};
use zstd::zstd_safe::{CParameter, DParameter};

use super::frame::{encode_frame, FrameDecoder, FrameError};

/// Output produced per decompression step (bounds memory per call).
const INFLATE_SLICE: usize = 64 * 1024;

/// The name a unit offers in [`super::Hello::compression`] for a zstd pull stream.
pub const ZSTD: &str = "zstd";

/// The zstd frame magic number, as it appears first on the wire.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// The hub's zstd level: 3 is zstd's default, and with the window below costs less than a third
/// of deflate level 6's CPU for fewer bytes.
const ZSTD_LEVEL: i32 = 3;
/// The hub's zstd window (2^18 = 256 KiB: a hundred summaries back, where nearly all of a
/// summary's matches are) and hash and chain tables (2^16 entries each): ≈ 1 MiB a session.
const ZSTD_WINDOW_LOG: u32 = 18;
const ZSTD_TABLE_LOG: u32 = 16;
/// The largest window a unit accepts (2^20 = 1 MiB).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 20;

/// The pull stream's codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullCompression {
    Deflate,
    Zstd,
}

impl PullCompression {
    /// The hub's choice from what a unit offered: zstd when offered, deflate otherwise (a unit
    /// from before zstd offers nothing). Unknown names, from a newer unit, are ignored.
    pub fn choose(offered: &[String]) -> PullCompression {
        if offered.iter().any(|c| c == ZSTD) {
            PullCompression::Zstd
        } else {
            PullCompression::Deflate
        }
    }
}

/// Frames messages and compresses them onto a pull stream with the chosen codec.
#[derive(Debug)]
pub enum PullFramer {
    Deflate(DeflateFramer),
    Zstd(Box<ZstdFramer>),
}

impl PullFramer {
    /// A framer for `codec`. Fails only if zstd cannot allocate its state.
    pub fn new(codec: PullCompression) -> Result<PullFramer, FrameError> {
        Ok(match codec {
            PullCompression::Deflate => PullFramer::Deflate(DeflateFramer::new()),
            PullCompression::Zstd => PullFramer::Zstd(Box::new(ZstdFramer::new()?)),
        })
    }

    /// The compressed bytes that carry `msg` (a whole frame, flushed).
    pub fn encode<T: Serialize>(&mut self, msg: &T) -> Result<Vec<u8>, FrameError> {
        match self {
            PullFramer::Deflate(f) => f.encode(msg),
            PullFramer::Zstd(f) => f.encode(msg),
        }
    }
}

/// Frames messages and compresses them onto a stream (deflate).
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

/// Frames messages and compresses them onto a stream (zstd, one frame for the stream's life,
/// flushed after each message).
pub struct ZstdFramer {
    z: ZEncoder<'static>,
}

impl std::fmt::Debug for ZstdFramer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ZstdFramer")
    }
}

fn zstd_err(what: &str, e: std::io::Error) -> FrameError {
    FrameError::Malformed(format!("{what}: {e}"))
}

impl ZstdFramer {
    pub fn new() -> Result<ZstdFramer, FrameError> {
        let mut z = ZEncoder::new(ZSTD_LEVEL).map_err(|e| zstd_err("zstd", e))?;
        for p in [
            CParameter::WindowLog(ZSTD_WINDOW_LOG),
            CParameter::HashLog(ZSTD_TABLE_LOG),
            CParameter::ChainLog(ZSTD_TABLE_LOG),
        ] {
            z.set_parameter(p).map_err(|e| zstd_err("zstd", e))?;
        }
        Ok(ZstdFramer { z })
    }

    /// The compressed bytes that carry `msg` (a whole frame, flushed).
    pub fn encode<T: Serialize>(&mut self, msg: &T) -> Result<Vec<u8>, FrameError> {
        let frame = encode_frame(msg)?;
        let mut out = Vec::with_capacity(frame.len() / 4 + 1024);
        zstd_flushed(&mut self.z, &frame, &mut out).map_err(|e| zstd_err("zstd", e))?;
        Ok(out)
    }
}

/// Compress all of `input` onto `out` and flush, so that everything written so far decodes.
fn zstd_flushed(z: &mut ZEncoder<'_>, input: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut at = InBuffer::around(input);
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve((input.len() - at.pos()) / 4 + 1024);
        }
        let pos = out.len();
        let mut o = OutBuffer::around_pos(out, pos);
        if at.pos() < input.len() {
            z.run(&mut at, &mut o)?;
        } else if z.flush(&mut o)? == 0 {
            return Ok(());
        }
    }
}

/// The decompressor a stream turned out to need.
enum Codec {
    /// Fewer than four bytes seen, all of them a prefix of the zstd magic.
    Undecided,
    Deflate(Decompress),
    Zstd(Box<ZDecoder<'static>>),
}

/// Decompresses a pull stream's bytes — deflate or zstd, told apart by the stream's first bytes
/// (see the module docs) — and reassembles frames, bounded.
pub struct InflateDeframer {
    codec: Codec,
    frames: FrameDecoder,
    pending: Vec<u8>,
    /// The last step filled its output slice: the decompressor may hold more output.
    more_out: bool,
    /// Decompressed output, reused from step to step (one allocation per stream, not per step).
    scratch: Vec<u8>,
}

impl std::fmt::Debug for InflateDeframer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let codec = match self.codec {
            Codec::Undecided => "undecided",
            Codec::Deflate(_) => "deflate",
            Codec::Zstd(_) => "zstd",
        };
        f.debug_struct("InflateDeframer")
            .field("codec", &codec)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl Default for InflateDeframer {
    fn default() -> Self {
        Self::new()
    }
}

impl InflateDeframer {
    pub fn new() -> Self {
        InflateDeframer {
            codec: Codec::Undecided,
            frames: FrameDecoder::new(),
            pending: Vec::new(),
            more_out: false,
            scratch: Vec::with_capacity(INFLATE_SLICE),
        }
    }

    /// The codec this stream uses, once its first bytes have told (`None` before).
    pub fn codec(&self) -> Option<PullCompression> {
        match self.codec {
            Codec::Undecided => None,
            Codec::Deflate(_) => Some(PullCompression::Deflate),
            Codec::Zstd(_) => Some(PullCompression::Zstd),
        }
    }

    /// Add compressed bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// Pick the codec from the first bytes; `false` while they cannot tell yet.
    fn decide(&mut self) -> Result<bool, FrameError> {
        if !matches!(self.codec, Codec::Undecided) {
            return Ok(true);
        }
        let seen = self.pending.len().min(ZSTD_MAGIC.len());
        if self.pending[..seen] == ZSTD_MAGIC[..seen] {
            if seen < ZSTD_MAGIC.len() {
                return Ok(false);
            }
            let mut d = ZDecoder::new().map_err(|e| zstd_err("zstd", e))?;
            d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                .map_err(|e| zstd_err("zstd", e))?;
            self.codec = Codec::Zstd(Box::new(d));
        } else {
            self.codec = Codec::Deflate(Decompress::new(false));
        }
        Ok(true)
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
            if !self.decide()? {
                return Ok(None);
            }
            let out = &mut self.scratch;
            out.clear();
            let used = match &mut self.codec {
                Codec::Deflate(z) => {
                    let before_in = z.total_in();
                    z.decompress_vec(&self.pending, out, FlushDecompress::Sync)
                        .map_err(|e| FrameError::Malformed(format!("inflate: {e}")))?;
                    usize::try_from(z.total_in() - before_in).unwrap_or(0)
                }
                Codec::Zstd(z) => {
                    let mut input = InBuffer::around(&self.pending);
                    let mut o = OutBuffer::around(out);
                    z.run(&mut input, &mut o)
                        .map_err(|e| FrameError::Malformed(format!("zstd: {e}")))?;
                    input.pos()
                }
                Codec::Undecided => 0,
            };
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
        for codec in [PullCompression::Deflate, PullCompression::Zstd] {
            let mut enc = PullFramer::new(codec).unwrap();
            let mut wire = Vec::new();
            for m in &msgs {
                wire.extend(enc.encode(m).unwrap());
            }
            for split in [1usize, 2, 3, 7, 100, 4096, wire.len()] {
                let mut dec = InflateDeframer::new();
                let mut got: Vec<Vec<String>> = Vec::new();
                for chunk in wire.chunks(split) {
                    dec.push(chunk).unwrap();
                    while let Some(m) = dec.next_message().unwrap() {
                        got.push(m);
                    }
                }
                assert_eq!(got, msgs, "{codec:?}, split {split}");
                // The reader told the codec from the stream itself.
                assert_eq!(dec.codec(), Some(codec));
            }
        }
    }

    #[test]
    fn zstd_is_chosen_only_when_offered_and_is_smaller_than_deflate() {
        assert_eq!(PullCompression::choose(&[]), PullCompression::Deflate);
        assert_eq!(
            PullCompression::choose(&["brotli".into(), ZSTD.into()]),
            PullCompression::Zstd
        );
        // Summaries-like messages: repeated field names and codes across messages.
        let msgs: Vec<Vec<String>> = (0..300)
            .map(|i| {
                (0..20)
                    .map(|j| {
                        format!(
                            "{{\"code\":\"{}\",\"system\":\"http://snomed.info/sct\",\"n\":{i}}}",
                            91936005 + j
                        )
                    })
                    .collect()
            })
            .collect();
        let size = |codec| {
            let mut enc = PullFramer::new(codec).unwrap();
            msgs.iter()
                .map(|m| enc.encode(m).unwrap().len())
                .sum::<usize>()
        };
        let (d, z) = (size(PullCompression::Deflate), size(PullCompression::Zstd));
        assert!(z < d, "zstd {z} B against deflate {d} B");
    }

    #[test]
    fn a_zstd_window_past_the_cap_is_refused() {
        // A frame compressed with a 2^24 window declares it in its header: refused before the
        // unit allocates it.
        let big: Vec<u8> = (0..(3u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut raw = encode_frame(&big).unwrap();
        raw.extend_from_slice(&raw.clone());
        let mut z = ZEncoder::new(3).unwrap();
        z.set_parameter(CParameter::WindowLog(24)).unwrap();
        let mut out = Vec::new();
        zstd_flushed(&mut z, &raw, &mut out).unwrap();
        let mut dec = InflateDeframer::new();
        dec.push(&out).unwrap();
        let err = dec.next_message::<Vec<u8>>().unwrap_err();
        assert!(err.to_string().contains("zstd"), "{err}");
    }

    #[test]
    fn each_message_decodes_as_soon_as_it_arrives() {
        for codec in [PullCompression::Deflate, PullCompression::Zstd] {
            let mut enc = PullFramer::new(codec).unwrap();
            let mut dec = InflateDeframer::new();
            for i in 0..50u32 {
                let big: Vec<u32> = (0..i * 1000).collect();
                dec.push(&enc.encode(&big).unwrap()).unwrap();
                let m: Vec<u32> = dec.next_message().unwrap().expect("whole message");
                assert_eq!(m, big);
            }
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
        // The same through zstd (one frame, the zeros squeezed to nothing).
        let mut z = ZEncoder::new(19).unwrap();
        let mut zout = Vec::new();
        zstd_flushed(&mut z, &raw, &mut zout).unwrap();
        assert!(zout.len() < 4096, "{} B", zout.len());
        let mut dec = InflateDeframer::new();
        dec.push(&zout).unwrap();
        assert!(dec.next_message::<Vec<u8>>().is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096), zstd in any::<bool>()) {
            let mut dec = InflateDeframer::new();
            // Half the cases open with the zstd magic, so the zstd reader meets garbage too.
            if zstd {
                let _ = dec.push(&ZSTD_MAGIC);
            }
            let _ = dec.push(&bytes);
            for _ in 0..4 {
                if !matches!(dec.next_message::<Vec<u8>>(), Ok(Some(_))) { break; }
            }
        }
    }
}
