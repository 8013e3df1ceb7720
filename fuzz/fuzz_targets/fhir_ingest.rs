//! Fuzz target `fhir_ingest`: the FHIR R4 Bundle mapper (what the hub ingests from regional
//! feeds), with and without a feed's default source and snapshot setting. Checks: never panics;
//! every contribution names a different patient and carries only items of that patient's own
//! numbers; whatever maps also assembles into a summary that encodes to CBOR and decodes back,
//! and applying the same contribution again changes nothing.
//! `cd fuzz && cargo +nightly fuzz run fhir_ingest -- -max_total_time=60`
#![no_main]

use edge_proto::assemble::{apply, from_contribution};
use edge_proto::cbor;
use edge_proto::fhir::ingest::{ingest_bundle_json, IngestOptions};
use edge_proto::ids::SourceId;
use edge_proto::time::UnixMillis;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let opts = IngestOptions {
        default_source: (flags & 1 == 1).then(|| SourceId::parse("Y03124").expect("valid")),
        snapshot: flags & 2 == 2,
        now: (flags & 4 == 4).then_some(UnixMillis(1_780_000_000_000)),
    };
    if let Ok(ing) = ingest_bundle_json(text, &opts) {
        let mut seen = Vec::new();
        for c in &ing.contributions {
            assert!(!seen.contains(&c.nhs_number), "one contribution per patient");
            seen.push(c.nhs_number);
            assert!(!c.patient.former_nhs_numbers.contains(&c.nhs_number));
            let mut s = from_contribution(c, UnixMillis(0));
            let bytes = cbor::encode_summary(&s).expect("a mapped summary encodes");
            let back = cbor::decode_summary(&bytes).expect("and decodes");
            assert!(back.same_content(&s));
            assert_eq!(apply(&mut s, c), Ok(false), "re-applying changes nothing");
        }
    }
});
