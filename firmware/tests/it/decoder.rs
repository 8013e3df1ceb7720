//! The streaming decoder against partial reads, garbage, corruption and floods.

use firmware::proto::frame::{decode, encode, FrameDecoder};
use firmware::proto::{DecodeError, Health, HostToMcu, McuToHost, MAX_ENCODED_LEN, MAX_FRAME_LEN};
use firmware::Frame;

type Out = Vec<Result<Frame<HostToMcu>, DecodeError>>;

fn sample_stream() -> (Vec<u8>, Vec<Frame<HostToMcu>>) {
    let frames = vec![
        Frame {
            seq: 1,
            msg: HostToMcu::Hello { version: 1 },
        },
        Frame {
            seq: 2,
            msg: HostToMcu::Heartbeat { health: Health::Ok },
        },
        Frame {
            seq: 3,
            msg: HostToMcu::ShutdownAck { flushed: true },
        },
        Frame {
            seq: 0x100,
            msg: HostToMcu::Ack { seq: 0 },
        },
    ];
    let bytes = frames.iter().flat_map(|f| encode(f.seq, &f.msg)).collect();
    (bytes, frames)
}

fn feed_chunks(bytes: &[u8], chunk: usize) -> Out {
    let mut d = FrameDecoder::<HostToMcu>::new();
    let mut out = Vec::new();
    for c in bytes.chunks(chunk) {
        out.extend(d.feed(c));
        assert!(d.buffered() <= MAX_ENCODED_LEN);
    }
    out
}

#[test]
fn byte_at_a_time_and_any_chunking_give_the_same_frames() {
    let (bytes, frames) = sample_stream();
    let expected: Out = frames.into_iter().map(Ok).collect();
    for chunk in 1..=bytes.len() {
        assert_eq!(feed_chunks(&bytes, chunk), expected, "chunk size {chunk}");
    }
}

#[test]
fn resyncs_after_garbage() {
    let (bytes, frames) = sample_stream();
    let mut stream = vec![0x13, 0x37, 0xff, 0x42];
    stream.push(0);
    stream.extend_from_slice(&bytes);
    let out = feed_chunks(&stream, 3);
    assert!(out[0].is_err(), "the garbage is one rejected frame");
    let good: Vec<_> = out[1..].to_vec();
    assert_eq!(good, frames.into_iter().map(Ok).collect::<Out>());
}

#[test]
fn empty_frames_are_ignored() {
    let mut d = FrameDecoder::<HostToMcu>::new();
    assert_eq!(d.feed(&[0, 0, 0]).count(), 0);
}

#[test]
fn corrupt_crc_is_rejected() {
    let wire = encode(5, &HostToMcu::Zeroized);
    // Flip a bit in the CRC (second-to-last data byte); the COBS structure stays valid.
    let mut bad = wire.to_vec();
    let n = bad.len();
    bad[n - 2] ^= 0x01;
    let out: Out = FrameDecoder::new().feed(&bad).collect();
    assert!(
        matches!(out.as_slice(), [Err(DecodeError::Crc { .. })]),
        "{out:?}"
    );
}

/// Build a frame by hand (bypassing the encoder) so invalid contents get a valid CRC.
fn raw_frame(version: u8, seq: u16, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut raw = vec![version];
    raw.extend_from_slice(&seq.to_le_bytes());
    raw.push(kind);
    raw.extend_from_slice(payload);
    let crc = firmware::proto::frame::CRC.checksum(&raw);
    raw.extend_from_slice(&crc.to_le_bytes());
    cobs(&raw)
}

/// Reference COBS encoder for test frames (short frames only).
fn cobs(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for block in data.split(|&b| b == 0) {
        out.push(u8::try_from(block.len() + 1).expect("short"));
        out.extend_from_slice(block);
    }
    out
}

#[test]
fn wrong_version_unknown_kind_and_bad_payload_are_typed_errors() {
    assert_eq!(
        decode::<HostToMcu>(&raw_frame(2, 1, 0x46, &[])),
        Err(DecodeError::Version { got: 2 })
    );
    assert_eq!(
        decode::<HostToMcu>(&raw_frame(1, 1, 0x7e, &[])),
        Err(DecodeError::UnknownKind { kind: 0x7e })
    );
    // An MCU-to-host kind sent the wrong way is unknown too.
    assert_eq!(
        decode::<HostToMcu>(&raw_frame(1, 1, McuToHost::KIND_TAMPER, &[])),
        Err(DecodeError::UnknownKind {
            kind: McuToHost::KIND_TAMPER
        })
    );
    let hb = HostToMcu::KIND_HEARTBEAT;
    assert_eq!(
        decode::<HostToMcu>(&raw_frame(1, 1, hb, &[9])),
        Err(DecodeError::BadPayload { kind: hb })
    );
    assert_eq!(
        decode::<HostToMcu>(&raw_frame(1, 1, hb, &[])),
        Err(DecodeError::BadPayload { kind: hb })
    );
    assert_eq!(
        decode::<HostToMcu>(&raw_frame(1, 1, hb, &[0, 0])),
        Err(DecodeError::BadPayload { kind: hb })
    );
    let ack = HostToMcu::KIND_SHUTDOWN_ACK;
    assert_eq!(
        decode::<HostToMcu>(&raw_frame(1, 1, ack, &[2])),
        Err(DecodeError::BadPayload { kind: ack })
    );
    let leds = HostToMcu::KIND_SET_LEDS;
    assert_eq!(
        decode::<HostToMcu>(&raw_frame(1, 1, leds, &[0, 0x80])),
        Err(DecodeError::BadPayload { kind: leds })
    );
    assert_eq!(
        decode::<HostToMcu>(&[0x02, 0x01]),
        Err(DecodeError::TooShort)
    );
    assert_eq!(decode::<HostToMcu>(&[0x05, 0x01]), Err(DecodeError::Cobs));
}

#[test]
fn a_flood_without_delimiter_is_bounded_and_reported_once() {
    let mut d = FrameDecoder::<HostToMcu>::new();
    let flood = vec![0x55u8; 100_000];
    assert_eq!(d.feed(&flood).count(), 0);
    assert!(d.buffered() <= MAX_ENCODED_LEN);
    let out: Out = d.feed(&[0]).collect();
    assert_eq!(out, vec![Err(DecodeError::Oversized)]);
    // And the next frame decodes.
    let wire = encode(9, &HostToMcu::GetStatus);
    let out: Out = d.feed(&wire).collect();
    assert_eq!(
        out,
        vec![Ok(Frame {
            seq: 9,
            msg: HostToMcu::GetStatus
        })]
    );
}

#[test]
fn oversized_decoded_frame_is_rejected() {
    let raw = vec![0x11u8; MAX_FRAME_LEN + 1];
    let enc = cobs(&raw);
    assert!(enc.len() <= MAX_ENCODED_LEN + 1);
    assert!(decode::<HostToMcu>(&enc).is_err());
    let mut d = FrameDecoder::<HostToMcu>::new();
    let mut bytes = enc.clone();
    bytes.push(0);
    let out: Out = d.feed(&bytes).collect();
    assert!(
        matches!(out.as_slice(), [Err(DecodeError::Oversized)]),
        "{out:?}"
    );
}

#[test]
fn errors_have_lowercase_messages() {
    assert_eq!(
        DecodeError::UnknownKind { kind: 0x7e }.to_string(),
        "unknown message kind 0x7e"
    );
    assert_eq!(
        DecodeError::Version { got: 2 }.to_string(),
        "unsupported protocol version 2 (expected 1)"
    );
}
