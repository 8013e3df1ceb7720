//! The journal's on-disk format: record framing (`magic | seq | len | crc32c | payload`), the
//! CRC-32C, segment file names, and the upload marker's bytes. Pure byte work, no file I/O.
//!
//! The writer (`writer.rs`) frames records with [`encode_record`]; the scanner (`scan.rs`)
//! parses them back with [`parse_header`] and [`record_crc`]; recovery (`recover.rs`) lists
//! segments by [`parse_segment_file_name`] and reads the upload marker with `decode_uploaded`.
//! This module is public (`journal::format`) so tests and offline tools can build and inspect
//! segment files; the in-memory scan (`scan_bytes`, `ScanItem`) is `journal::scan`'s. The
//! format knows nothing of the scanner or the writer (no import cycle).

use crc::{Crc, CRC_32_ISCSI};
use edge_proto::audit::Hash32;

/// The first four bytes of every record (format version 1).
pub const RECORD_MAGIC: [u8; 4] = *b"KBJ1";
/// Bytes before the payload: magic (4), seq (8), payload length (4), CRC-32C (4).
pub const HEADER_BYTES: usize = 20;
/// The largest payload a record may carry; longer lengths are treated as corruption.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// The largest whole record.
pub const MAX_RECORD_BYTES: usize = HEADER_BYTES + MAX_PAYLOAD_BYTES;
/// Segment file extension.
pub const SEGMENT_SUFFIX: &str = ".seg";

const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// The CRC-32C (Castagnoli) a record carries: over its seq, length and payload.
pub fn record_crc(seq: u64, len: u32, payload: &[u8]) -> u32 {
    let mut d = CRC32C.digest();
    d.update(&seq.to_le_bytes());
    d.update(&len.to_le_bytes());
    d.update(payload);
    d.finalize()
}

/// Frame one record. A payload longer than [`MAX_PAYLOAD_BYTES`] produces a record that
/// readers reject (the journal never writes one).
pub fn encode_record(seq: u64, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&record_crc(seq, len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A record header as read from disk (magic and length already checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub seq: u64,
    pub len: u32,
    pub crc: u32,
}

/// Parse a header: `None` unless the magic matches and the length is within bounds.
pub fn parse_header(h: &[u8; HEADER_BYTES]) -> Option<RecordHeader> {
    if h[0..4] != RECORD_MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(h[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(h[12..16].try_into().ok()?);
    let crc = u32::from_le_bytes(h[16..20].try_into().ok()?);
    if usize::try_from(len).map_or(true, |l| l > MAX_PAYLOAD_BYTES) {
        return None;
    }
    Some(RecordHeader { seq, len, crc })
}

/// A segment's file name: its first seq, zero-padded to 20 digits, so names sort by seq.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The first seq a segment file name stands for, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The upload marker
// ---------------------------------------------------------------------------------------------

/// The upload marker's file name, in the journal directory.
pub(super) const UPLOADED_FILE: &str = "uploaded";
const UPLOADED_MAGIC: [u8; 4] = *b"KBU1";
/// The upload marker's size: magic (4), seq (8), hash flag (1), hash (32), CRC-32C (4).
pub(super) const UPLOADED_BYTES: usize = 4 + 8 + 1 + 32 + 4;

pub(super) fn encode_uploaded(seq: u64, hash: Option<Hash32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(UPLOADED_BYTES);
    out.extend_from_slice(&UPLOADED_MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(u8::from(hash.is_some()));
    out.extend_from_slice(&hash.unwrap_or_default().0);
    let crc = record_crc(seq, 0, &out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The upload marker file: two slots, each a marker of [`UPLOADED_BYTES`] at the start of its
/// own 4 KiB block ([`UPLOADED_SLOT_STRIDE`]), overwritten in place in turn, so moving the
/// cursor is one `pwrite` and one `fdatasync` of a file whose size and blocks never change (no
/// rename, no directory fsync, no filesystem-journal commit beside the audit journal's own
/// appends). The valid slot with the higher seq is the marker. A write torn by power loss
/// spoils at most the block being written — on flash that may lose a whole page, which is why
/// the slots never share one — leaving the previous marker in the other. A file of one marker
/// (the earlier format) is read as that slot.
pub(super) const UPLOADED_SLOT_STRIDE: usize = 4096;
pub(super) const UPLOADED_FILE_BYTES: usize = 2 * UPLOADED_SLOT_STRIDE;

/// The marker in a file of one or two slots; which slot holds it (0 for a one-slot file).
pub(super) fn decode_uploaded_file(b: &[u8]) -> Result<(u64, Option<Hash32>, usize), String> {
    match b.len() {
        UPLOADED_BYTES => decode_uploaded(b).map(|(s, h)| (s, h, 0)),
        UPLOADED_FILE_BYTES => {
            let at = |i: usize| {
                let o = i * UPLOADED_SLOT_STRIDE;
                decode_uploaded(&b[o..o + UPLOADED_BYTES])
            };
            match [at(0), at(1)] {
                [Ok(a), Ok(c)] if c.0 > a.0 => Ok((c.0, c.1, 1)),
                [Ok(a), _] => Ok((a.0, a.1, 0)),
                [Err(_), Ok(c)] => Ok((c.0, c.1, 1)),
                [Err(e0), Err(e1)] => Err(format!("neither slot is valid ({e0}; {e1})")),
            }
        }
        n => Err(format!(
            "{n} bytes, expected {UPLOADED_BYTES} or {UPLOADED_FILE_BYTES}"
        )),
    }
}

pub(super) fn decode_uploaded(b: &[u8]) -> Result<(u64, Option<Hash32>), String> {
    if b.len() != UPLOADED_BYTES {
        return Err(format!("{} bytes, expected {UPLOADED_BYTES}", b.len()));
    }
    let (body, crc) = b.split_at(UPLOADED_BYTES - 4);
    if body[0..4] != UPLOADED_MAGIC {
        return Err("bad magic".into());
    }
    let seq = u64::from_le_bytes(body[4..12].try_into().map_err(|_| "short")?);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "short")?);
    if record_crc(seq, 0, body) != crc {
        return Err("bad CRC".into());
    }
    let hash: [u8; 32] = body[13..45].try_into().map_err(|_| "short")?;
    let hash = match body[12] {
        0 => None,
        1 => Some(Hash32(hash)),
        _ => return Err("bad flag".into()),
    };
    Ok((seq, hash))
}

#[cfg(test)]
mod tests {
    use super::super::scan::{scan_bytes, ScanItem};
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_damage() {
        let rec = encode_record(7, b"hello");
        assert_eq!(rec.len(), HEADER_BYTES + 5);
        assert_eq!(
            scan_bytes(&rec),
            vec![ScanItem::Record {
                offset: 0,
                seq: 7,
                payload: b"hello".to_vec()
            }]
        );
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            assert!(
                !scan_bytes(&bad)
                    .iter()
                    .any(|it| matches!(it, ScanItem::Record { .. })),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_file_name(1), "00000000000000000001.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.tmp"), None);
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
    }

    #[test]
    fn upload_marker_round_trips_and_detects_damage() {
        let h = Hash32([9; 32]);
        let b = encode_uploaded(42, Some(h));
        assert_eq!(decode_uploaded(&b), Ok((42, Some(h))));
        assert_eq!(decode_uploaded(&encode_uploaded(3, None)), Ok((3, None)));
        let mut bad = b.clone();
        bad[5] ^= 1;
        assert!(decode_uploaded(&bad).is_err());
        assert!(decode_uploaded(&b[..10]).is_err());
        assert!(decode_uploaded(&[]).is_err());
    }
}
