//! Foundation: `edge-hub synth` output is deterministic, valid FHIR R4, and every bundle ingests
//! through the `edge-proto` mapper; the `--help` of every binary explains itself.

use std::collections::HashSet;
use std::process::Command;

use edge_proto::assemble::from_contribution;
use edge_proto::fhir::ingest::parse_bundle_json;
use edge_proto::model::SectionStatus;
use edge_proto::time::UnixMillis;

#[test]
fn synth_is_deterministic_and_every_bundle_ingests() {
    let dir = tempfile::tempdir().unwrap();
    let a = kerbside_tests::synth(dir.path(), 2_000, 1, 3).unwrap();
    let text = std::fs::read_to_string(&a).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let again =
        std::fs::read_to_string(kerbside_tests::synth(dir2.path(), 2_000, 1, 3).unwrap()).unwrap();
    assert_eq!(text, again, "same seed, same bytes");
    let other =
        std::fs::read_to_string(kerbside_tests::synth(dir.path(), 2_000, 2, 3).unwrap()).unwrap();
    assert_ne!(text, other, "the seed matters");

    let mut nhs = HashSet::new();
    let (mut none_known, mut no_info, mut narrative, mut flagged, mut high_risk) = (0, 0, 0, 0, 0);
    let mut multi_source = 0;
    for (i, line) in text.lines().enumerate() {
        let c = parse_bundle_json(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
        let s = from_contribution(&c, UnixMillis(1));
        assert!(
            s.nhs_number.as_digits().starts_with("999"),
            "test-range NHS numbers only"
        );
        assert!(nhs.insert(s.nhs_number), "NHS numbers are distinct");
        match s.allergies.status {
            SectionStatus::NoneKnown => none_known += 1,
            SectionStatus::NoInformation => no_info += 1,
            _ => {}
        }
        if s.allergies
            .entries
            .iter()
            .any(|a| a.concept.coding.is_none())
            || s.medications
                .entries
                .iter()
                .any(|m| m.concept.coding.is_none())
        {
            narrative += 1;
        }
        if s.is_flagged() {
            flagged += 1;
        }
        if s.medications.entries.iter().any(|m| m.high_risk.is_some()) {
            high_risk += 1;
        }
        if s.sources.len() > 1 {
            multi_source += 1;
        }
        for a in &s.allergies.entries {
            assert!(!a.provenance.record_id.is_empty());
        }
    }
    assert_eq!(nhs.len(), 2_000);
    for (what, n) in [
        ("none_known", none_known),
        ("no_information", no_info),
        ("narrative", narrative),
        ("flagged", flagged),
        ("high_risk", high_risk),
        ("multi-source", multi_source),
    ] {
        assert!(n > 10, "too few {what} patients in 2,000: {n}");
    }
}

#[test]
fn every_binary_explains_itself() {
    for (bin, words) in [
        ("edge-daemon", "run"),
        ("kerbside", "demo"),
        ("edge-hub", "synth"),
        ("edge-provision", "enrol"),
    ] {
        let out = Command::new(kerbside_tests::bin(bin).unwrap())
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin} --help failed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(words),
            "{bin} --help does not mention {words}: {text}"
        );
    }
}
