//! Fuzz target `fhir_ingest`: the FHIR R4 Bundle mapper (what the hub ingests from regional
//! feeds). Checks: never panics; whatever maps also assembles into a summary that encodes to
//! CBOR and decodes back.
//! `cd fuzz && cargo +nightly fuzz run fhir_ingest -- -max_total_time=60`
#![no_main]

use edge_proto::assemble::from_contribution;
use edge_proto::cbor;
use edge_proto::fhir::ingest::parse_bundle_json;
use edge_proto::time::UnixMillis;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = parse_bundle_json(text) {
        let s = from_contribution(&c, UnixMillis(0));
        let bytes = cbor::encode_summary(&s).expect("a mapped summary encodes");
        let back = cbor::decode_summary(&bytes).expect("and decodes");
        assert!(back.same_content(&s));
    }
});
