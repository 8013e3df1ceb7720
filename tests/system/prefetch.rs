//! An ED kiosk's pre-fetch is pushed by the hub on the strength of a crew's audited access
//! (issue 16, item 2), with the real binaries: a crew reads a patient on their vehicle's unit
//! and says they are conveying to an emergency department; the hub pushes the record to that
//! department's kiosk (recorded as the hub's own access event on the crew's behalf), so triage
//! has it with the hub gone. A conveyance without the crew's own read pushes nothing, nor does
//! one to another site; the kiosk's certificate alone fetches nothing.

use std::time::Duration;

use kerbside_tests::fleet::{http_with, nhs_numbers, wait_for, Fleet};
use serde_json::Value;

/// A postcode district no synthetic patient lives in: every lookup is an on-demand fetch.
const NOBODY: &str = "postcode:ZZ9";
const SITE: &str = "RJ122";

fn lookup(lan: &str, tok: &str, nhs: &str) -> (u16, String) {
    kerbside_tests::fleet::lookup(lan, tok, nhs, &[]).unwrap()
}

fn convey(lan: &str, tok: &str, nhs: &str, site: &str) -> (u16, String) {
    let auth = format!("Bearer {tok}");
    http_with(
        "POST",
        &format!("http://{lan}/v1/patients/{nhs}/conveying"),
        Some(&format!("{{\"site\":\"{site}\"}}")),
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
    )
    .unwrap()
}

#[test]
fn a_crews_conveyance_puts_the_record_on_the_destinations_kiosk_and_nothing_else_does() {
    let mut f = Fleet::new().unwrap();
    let v = f.enrol("LAS-AMB-0401", &["--cohort", NOBODY]).unwrap();
    let k = f
        .enrol_as(
            "RJ122-ED-01",
            "kiosk",
            &["--cohort", NOBODY, "--site", SITE],
        )
        .unwrap();
    let other = f
        .enrol_as("RJ1-ED-01", "kiosk", &["--cohort", NOBODY, "--site", "RJ1"])
        .unwrap();
    let data = f.synth("p.ndjson", 30, 41).unwrap();
    f.ingest_offline(&data).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    f.start_hub().unwrap();
    for u in [v, k, other] {
        f.start_unit(u).unwrap();
        wait_for(Duration::from_secs(60), || {
            Ok(f.status(u)?["caught_up"] == true)
        })
        .unwrap();
    }
    let crew = f
        .clinician_token(0x4101, "555000777111", "PARAMEDIC, Conveying")
        .unwrap();
    let nurse = f
        .clinician_token(0x4102, "555000777222", "NURSE, Triage")
        .unwrap();

    // The crew reads the patient (fetched on demand through the hub), then conveys.
    let (code, body) = lookup(&f.units[v].lan, &crew, &nhs[3]);
    assert_eq!(code, 200, "{body}");
    let (code, body) = convey(&f.units[v].lan, &crew, &nhs[3], SITE);
    assert_eq!(code, 202, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["site"], SITE);
    // A conveyance of a patient the crew never opened: nothing is pushed for it.
    let (code, body) = convey(&f.units[v].lan, &crew, &nhs[7], SITE);
    assert_eq!(code, 202, "{body}");

    // The hub pushes the first to the RJ122 kiosk.
    wait_for(Duration::from_secs(60), || {
        Ok(f.status(k)?["prefetched"].as_u64() == Some(1))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: not pushed\n--- kiosk\n{}\n--- hub\n{}",
            f.unit_log(k),
            f.hub_log()
        )
    });
    // The hub recorded its push as its own access event, on the crew member's behalf.
    let (code, body) = f
        .admin("GET", &format!("/admin/audit?patient={}", nhs[3]), None)
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let events: Value = serde_json::from_str(&body).unwrap();
    let pushed: Vec<&Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome_reason"] == "prefetch_conveyance")
        .collect();
    assert_eq!(pushed.len(), 1, "{events}");
    assert_eq!(pushed[0]["staff_id"], "555000777111");
    assert_eq!(pushed[0]["client"]["identity"], "RJ122-ED-01");
    // The crew's conveyance itself is in the repository too.
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "convey" && e["data"]["destination"] == SITE),
        "{events}"
    );

    // With the hub gone, triage at RJ122 still opens the record; the other site's kiosk has
    // nothing, and neither kiosk has the patient the crew never opened.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        f.status(k).unwrap()["prefetched"],
        1,
        "only the opened patient"
    );
    assert_eq!(f.status(other).unwrap()["prefetched"], 0);
    f.stop_hub(false).unwrap();
    wait_for(Duration::from_secs(30), || {
        Ok(f.status(k)?["link"] == "down")
    })
    .unwrap();
    let (code, body) = lookup(&f.units[k].lan, &nurse, &nhs[3]);
    assert_eq!(code, 200, "pushed record served offline: {body}");
    let (code, body) = lookup(&f.units[k].lan, &nurse, &nhs[7]);
    assert_eq!(code, 404, "{body}");
    let (code, body) = lookup(&f.units[other].lan, &nurse, &nhs[3]);
    assert_eq!(code, 404, "{body}");
    // A kiosk does not convey.
    let (code, body) = convey(&f.units[k].lan, &nurse, &nhs[3], SITE);
    assert_eq!(code, 409, "{body}");
}
