//! Foundation benchmark: FHIR → summary throughput, CBOR encode/decode per summary, and bytes
//! per summary as CBOR vs FHIR JSON (raw and gzip).
//!
//! `cargo bench -p kerbside-tests --bench proto [-- PATIENTS]` (default 20,000 synthetic
//! Londoners from `edge-hub synth --seed 7 --sources 3`). Prints a Markdown table for
//! BENCHMARKS.md. Timings are medians of 5 passes.

use std::io::Write;
use std::time::Instant;

use edge_proto::assemble::from_contribution;
use edge_proto::cbor;
use edge_proto::fhir::export::summary_document;
use edge_proto::fhir::ingest::parse_bundle_json;
use edge_proto::model::Summary;
use edge_proto::time::UnixMillis;
use flate2::write::GzEncoder;
use flate2::Compression;

fn gz(bytes: &[u8]) -> usize {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    // Writing to a Vec cannot fail.
    let _ = e.write_all(bytes);
    e.finish().map(|v| v.len()).unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args()
        .skip(1)
        .find(|a| a.parse::<u32>().is_ok())
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let path = kerbside_tests::synth(dir.path(), n, 7, 3)?;
    let text = std::fs::read_to_string(&path)?;
    let lines: Vec<&str> = text.lines().collect();
    anyhow::ensure!(
        lines.len() == n as usize,
        "synth wrote {} lines",
        lines.len()
    );

    // FHIR → summary (parse + map + assemble).
    let mut ingest_s = Vec::new();
    let mut summaries: Vec<Summary> = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out: Vec<Summary> = lines
            .iter()
            .map(|l| parse_bundle_json(l).map(|c| from_contribution(&c, UnixMillis(1))))
            .collect::<Result<_, _>>()?;
        ingest_s.push(t.elapsed().as_secs_f64());
        summaries = out;
    }
    let ingest_rate = f64::from(n) / median(ingest_s);

    // CBOR encode / decode.
    let mut enc_s = Vec::new();
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out: Vec<Vec<u8>> = summaries
            .iter()
            .map(cbor::encode_summary)
            .collect::<Result<_, _>>()?;
        enc_s.push(t.elapsed().as_secs_f64());
        encoded = out;
    }
    let mut dec_s = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for b in &encoded {
            std::hint::black_box(cbor::decode_summary(b)?);
        }
        dec_s.push(t.elapsed().as_secs_f64());
    }
    let enc_us = median(enc_s) * 1e6 / f64::from(n);
    let dec_us = median(dec_s) * 1e6 / f64::from(n);

    // Sizes per summary.
    let nf = f64::from(n);
    let fhir_raw: usize = lines.iter().map(|l| l.len()).sum();
    let fhir_gz_each: usize = lines.iter().map(|l| gz(l.as_bytes())).sum();
    let fhir_gz_file = gz(text.as_bytes());
    let cbor_raw: usize = encoded.iter().map(Vec::len).sum();
    let cbor_gz_each: usize = encoded.iter().map(|b| gz(b)).sum();
    let cbor_gz_file = gz(&encoded.concat());
    let doc_raw: usize = summaries
        .iter()
        .map(|s| {
            serde_json::to_vec(&summary_document(s))
                .map(|v| v.len())
                .unwrap_or(0)
        })
        .sum();

    println!(
        "Foundation benchmark: {n} synthetic patients (edge-hub synth --seed 7 --sources 3)\n"
    );
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| FHIR R4 bundle → summary (parse, map, assemble) | {ingest_rate:.0} summaries/s |");
    println!("| CBOR encode per summary | {enc_us:.2} µs |");
    println!("| CBOR decode per summary | {dec_us:.2} µs |");
    println!(
        "| FHIR JSON input bundle per patient, raw | {:.0} B |",
        fhir_raw as f64 / nf
    );
    println!(
        "| FHIR JSON input bundle per patient, gzip each | {:.0} B |",
        fhir_gz_each as f64 / nf
    );
    println!(
        "| FHIR JSON input bundle per patient, gzip whole file | {:.0} B |",
        fhir_gz_file as f64 / nf
    );
    println!(
        "| `$summary` document (FHIR JSON) per patient, raw | {:.0} B |",
        doc_raw as f64 / nf
    );
    println!(
        "| CBOR summary per patient, raw | {:.0} B ({:.2} × FHIR raw) |",
        cbor_raw as f64 / nf,
        cbor_raw as f64 / fhir_raw as f64
    );
    println!(
        "| CBOR summary per patient, gzip each | {:.0} B ({:.2} × FHIR gzip each) |",
        cbor_gz_each as f64 / nf,
        cbor_gz_each as f64 / fhir_gz_each as f64
    );
    println!(
        "| CBOR summaries, gzip as a stream, per patient | {:.0} B ({:.2} × FHIR raw) |",
        cbor_gz_file as f64 / nf,
        cbor_gz_file as f64 / fhir_raw as f64
    );
    Ok(())
}
