//! Encryption at rest, on vs off, in the same run: the unit's lookup path below HTTP — sled
//! read, then (on) AEAD open with its associated data and digest check, then CBOR decode of
//! the summary — over 100,000 synthetic summaries.
//!
//! `cargo bench -p kerbside-tests --bench at_rest [-- PATIENTS]`

use std::time::Instant;

use edge_daemon::seal::Sealer;
use edge_proto::assemble::from_contribution;
use edge_proto::cbor;
use edge_proto::fhir::ingest::parse_bundle_json;
use edge_proto::time::UnixMillis;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p) as usize]
}

fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let path = kerbside_tests::synth(dir.path(), n, 7, 3)?;
    let text = std::fs::read_to_string(&path)?;
    let sealer = Sealer::ephemeral()?;
    let db = sled::Config::new()
        .path(dir.path().join("bench.sled"))
        .cache_capacity(32 * 1024 * 1024)
        .open()?;
    let plain = db.open_tree("plain")?;
    let sealed = db.open_tree("sealed")?;
    let mut keys = Vec::new();
    for line in text.lines() {
        let s = from_contribution(&parse_bundle_json(line)?, UnixMillis(1));
        let bytes = cbor::encode_summary(&s)?;
        let digits = s.nhs_number.as_digits();
        let k = sealer.index_key("r", digits.as_bytes());
        plain.insert(digits.as_bytes(), bytes.clone())?;
        sealed.insert(k, sealer.seal("r", &k, &bytes)?)?;
        keys.push((digits, k));
    }
    db.flush()?;
    let mut on = Vec::new();
    let mut off = Vec::new();
    // Interleave so both see the same machine state.
    for (i, (digits, k)) in keys.iter().enumerate().cycle().take(keys.len() * 2) {
        if i % 2 == 0 {
            let t = Instant::now();
            let v = plain
                .get(digits.as_bytes())?
                .ok_or_else(|| anyhow::anyhow!("missing"))?;
            let s = cbor::decode_summary(&v)?;
            std::hint::black_box(s);
            off.push(t.elapsed().as_secs_f64() * 1e6);
        } else {
            let t = Instant::now();
            let k2 = sealer.index_key("r", digits.as_bytes());
            let v = sealed.get(k2)?.ok_or_else(|| anyhow::anyhow!("missing"))?;
            let bytes = sealer.open("r", k, &v)?;
            let s = cbor::decode_summary(&bytes)?;
            std::hint::black_box(s);
            on.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let (on50, on99) = (pct(&mut on, 0.5), pct(&mut on, 0.99));
    let (off50, off99) = (pct(&mut off, 0.5), pct(&mut off, 0.99));
    println!(
        "Encryption at rest, on vs off: {n} summaries, sled read + (AEAD open) + CBOR decode\n"
    );
    println!("| lookup path | p50 | p99 |");
    println!("| --- | --- | --- |");
    println!("| encryption off (plain value, NHS number as key) | {off50:.1} µs | {off99:.1} µs |");
    println!(
        "| encryption on (keyed-hash key, ChaCha20-Poly1305 open) | {on50:.1} µs | {on99:.1} µs |"
    );
    println!(
        "| cost of encryption | {:+.1} µs | {:+.1} µs |",
        on50 - off50,
        on99 - off99
    );
    Ok(())
}
