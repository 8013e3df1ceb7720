//! The codecs the cold sync uses, on synthetic summaries: the pull stream (deflate 6 against
//! zstd as the hub configures it, 1,000 summaries per flushed message, as the hub sends
//! batches) and one record at a time before sealing (deflate at its fastest level, as units
//! wrote until LZ4, against the LZ4 block the cache writes now), and decoding a summary's CBOR
//! with `ciborium` against the decoder `edge_proto::cbor` uses. Prints a Markdown table.
//!
//! `cargo bench -p edge-daemon --bench codecs [-- SUMMARIES]` (default 20,000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use edge_proto::fhir::ingest::parse_bundle_json;
use edge_proto::sync::{Bytes, PullCompression, PullFramer};
use edge_proto::time::UnixMillis;
use edge_proto::{assemble, cbor};

fn per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let cfg = kerbside_synth::Config::new(n, 5, 1, None).unwrap();
    let gen = kerbside_synth::Generator::new(&cfg);
    let mut line = String::new();
    let recs: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            line.clear();
            gen.patient(i, &mut line);
            let c = parse_bundle_json(line.trim_end()).unwrap();
            cbor::encode_summary(&assemble::from_contribution(&c, UnixMillis(0))).unwrap()
        })
        .collect();
    let count = recs.len();
    let cbor_avg = recs.iter().map(Vec::len).sum::<usize>() / count;
    println!("Codecs over {count} synthetic summaries ({cbor_avg} B of CBOR each)\n");
    println!("| codec | µs per summary to compress | µs to decompress | B per summary |");
    println!("| --- | --- | --- | --- |");

    for (name, codec) in [
        ("pull stream: deflate 6", PullCompression::Deflate),
        (
            "pull stream: zstd 3, 256 KiB window (the hub's)",
            PullCompression::Zstd,
        ),
    ] {
        let mut framer = PullFramer::new(codec).unwrap();
        let t = Instant::now();
        let wire: Vec<Vec<u8>> = recs
            .chunks(1000)
            .map(|ch| {
                let msg: Vec<Bytes> = ch.iter().map(|r| Bytes::from(r.clone())).collect();
                framer.encode(&msg).unwrap()
            })
            .collect();
        let enc = t.elapsed();
        let bytes: usize = wire.iter().map(Vec::len).sum();
        let mut dec = edge_proto::sync::InflateDeframer::new();
        let t = Instant::now();
        let mut got = 0;
        for w in &wire {
            dec.push(w).unwrap();
            while let Some(m) = dec.next_message::<Vec<Bytes>>().unwrap() {
                got += m.len();
            }
        }
        let de = t.elapsed();
        assert_eq!(got, count);
        println!(
            "| {name} | {:.2} | {:.2} | {} |",
            per(enc, count),
            per(de, count),
            bytes / count
        );
    }

    // One record at a time, as before sealing.
    let mut z = flate2::Compress::new(flate2::Compression::fast(), false);
    let t = Instant::now();
    let deflated: Vec<Vec<u8>> = recs
        .iter()
        .map(|r| {
            z.reset();
            let mut out = Vec::with_capacity(r.len() + 64);
            z.compress_vec(r, &mut out, flate2::FlushCompress::Finish)
                .unwrap();
            out
        })
        .collect();
    let enc = t.elapsed();
    let mut d = flate2::Decompress::new(false);
    let t = Instant::now();
    for (z, r) in deflated.iter().zip(&recs) {
        d.reset(false);
        let mut out = Vec::with_capacity(r.len());
        d.decompress_vec(z, &mut out, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(out.len(), r.len());
    }
    let de = t.elapsed();
    println!(
        "| record: deflate, fastest level (units before LZ4) | {:.2} | {:.2} | {} |",
        per(enc, count),
        per(de, count),
        deflated.iter().map(Vec::len).sum::<usize>() / count
    );

    // Decoding a summary (a LAN lookup; sync frames and audit events go the same way).
    let t = Instant::now();
    for r in &recs {
        let _: edge_proto::model::Summary = ciborium::from_reader(&r[..]).unwrap();
    }
    let slow = t.elapsed();
    let t = Instant::now();
    for r in &recs {
        cbor::decode_summary(r).unwrap();
    }
    let fast = t.elapsed();
    println!(
        "| summary CBOR decode: ciborium / cbor4ii (edge_proto::cbor) | | {:.2} / {:.2} | |",
        per(slow, count),
        per(fast, count)
    );

    let t = Instant::now();
    let blocks: Vec<Vec<u8>> = recs.iter().map(|r| lz4_flex::block::compress(r)).collect();
    let enc = t.elapsed();
    let t = Instant::now();
    for (b, r) in blocks.iter().zip(&recs) {
        assert_eq!(
            lz4_flex::block::decompress(b, r.len()).unwrap().len(),
            r.len()
        );
    }
    let de = t.elapsed();
    println!(
        "| record: LZ4 block (the cache's) | {:.2} | {:.2} | {} |",
        per(enc, count),
        per(de, count),
        blocks.iter().map(Vec::len).sum::<usize>() / count
    );
}
