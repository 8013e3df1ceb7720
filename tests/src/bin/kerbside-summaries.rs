//! `kerbside-summaries`: FHIR R4 NDJSON (from `edge-hub synth`) in, one critical-summary JSON
//! document per line out, with `_id` = NHS number — the same summaries the hub syncs, as the
//! documents a CouchDB-style peer replicates (tests/benches/couch.sh).

use std::io::{BufRead, Write};

use clap::Parser;
use edge_proto::assemble::from_contribution;
use edge_proto::fhir::ingest::parse_bundle_json;
use edge_proto::time::UnixMillis;

/// Convert synthetic FHIR bundles to summary JSON documents for the peer benchmark.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// FHIR R4 NDJSON input (one Bundle per line).
    input: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let f = std::io::BufReader::new(std::fs::File::open(&args.input)?);
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    for line in f.lines() {
        let s = from_contribution(&parse_bundle_json(&line?)?, UnixMillis(1));
        let mut v = serde_json::to_value(&s)?;
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("_id".into(), serde_json::json!(s.nhs_number.as_digits()));
        }
        writeln!(out, "{v}")?;
    }
    Ok(())
}
