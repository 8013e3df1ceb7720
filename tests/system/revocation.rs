//! Live revocation and the hub's fetch gate with the real binaries (issue 16, items 1, 2, 8): a
//! unit revoked while connected is disconnected by the hub (measured) and fetches nothing more;
//! a fetch whose shift token the hub does not accept fetches nothing and the hub records no
//! served access; past the hub's hard fetch ceiling fetches are refused and alerted; a shift
//! token revoked with `edge-provision token-revoke` is refused by the unit within one sync.

use std::process::Command;
use std::time::{Duration, Instant};

use kerbside_tests::bin;
use kerbside_tests::fleet::{nhs_numbers, run_ok, wait_for, Fleet};
use serde_json::Value;

/// A postcode district no synthetic patient lives in: every lookup is an on-demand fetch.
const NOBODY: &str = "postcode:ZZ9";

fn lookup(lan: &str, tok: &str, nhs: &str) -> (u16, String) {
    kerbside_tests::fleet::lookup(lan, tok, nhs, &[]).unwrap()
}

/// The hub's own audit events (device `hub-…`) about one patient.
fn hub_events(f: &Fleet, nhs: &str) -> Vec<Value> {
    let (code, body) = f
        .admin("GET", &format!("/admin/audit?patient={nhs}"), None)
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["device_id"]
                .as_str()
                .is_some_and(|d| d.starts_with("hub-"))
        })
        .cloned()
        .collect()
}

fn served(evs: &[Value]) -> usize {
    evs.iter().filter(|e| e["outcome"] == "ok").count()
}

fn caught_up(f: &Fleet, u: usize) {
    wait_for(Duration::from_secs(60), || {
        Ok(f.status(u)?["caught_up"] == true)
    })
    .unwrap();
}

#[test]
fn a_revoked_unit_is_disconnected_and_a_token_the_hub_refuses_fetches_nothing() {
    let mut f = Fleet::new().unwrap();
    let a = f.enrol("LAS-AMB-0061", &["--cohort", NOBODY]).unwrap();
    let b = f.enrol("LAS-AMB-0062", &["--cohort", NOBODY]).unwrap();
    // Unit B trusts a shift-token key that is not the fleet's (a tampered unit): its LAN
    // accepts tokens the fleet never signed, which the hub must not honour.
    let rogue = Fleet::new().unwrap();
    let b_key = f.units[b].dir.join("token-verify.pub");
    assert!(b_key.exists(), "the unit bundle names its token key");
    std::fs::copy(rogue.fleet.join("token-verify.pub"), &b_key).unwrap();
    let data = f.synth("a.ndjson", 40, 23).unwrap();
    f.ingest_offline(&data).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(a).unwrap();
    f.start_unit(b).unwrap();
    caught_up(&f, a);
    caught_up(&f, b);

    // A forged token (accepted by the tampered unit's LAN) fetches nothing at the hub.
    let forged = rogue
        .clinician_token(0x6201, "555000666111", "FORGED, Test")
        .unwrap();
    let (code, body) = lookup(&f.units[b].lan, &forged, &nhs[5]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("not_cached"), "{body}");
    let evs = hub_events(&f, &nhs[5]);
    assert_eq!(served(&evs), 0, "{evs:?}");
    assert!(
        evs.iter().any(|e| e["outcome"] == "denied"
            && e["outcome_reason"] == "bad_token"
            && e["client"]["identity"] == "LAS-AMB-0062"),
        "the hub records the refused fetch: {evs:?}"
    );

    // A good token on unit A: fetched, and recorded at the hub (device, staff, purpose).
    let tok = f
        .clinician_token(0x6101, "555000666222", "REVOKED, Test")
        .unwrap();
    let (code, body) = lookup(&f.units[a].lan, &tok, &nhs[0]);
    assert_eq!(code, 200, "{body}");
    let evs = hub_events(&f, &nhs[0]);
    assert_eq!(served(&evs), 1, "{evs:?}");
    let e = evs.iter().find(|e| e["outcome"] == "ok").unwrap();
    assert_eq!(e["client"]["identity"], "LAS-AMB-0061");
    assert_eq!(e["staff_id"], "555000666222");
    assert_eq!(e["purpose"], "TREAT");
    let row = f.device_row("LAS-AMB-0061").unwrap();
    assert_eq!(row["connected"], true, "{row}");

    // Revoke unit A while it is connected: the hub closes its connection.
    let t = Instant::now();
    run_ok(
        Command::new(bin("edge-provision").unwrap())
            .args(["revoke", "--fleet"])
            .arg(&f.fleet)
            .args(["--device-id", "LAS-AMB-0061"]),
    )
    .unwrap();
    wait_for(Duration::from_secs(30), || {
        let row = f.device_row("LAS-AMB-0061")?;
        Ok(row["connected"] == false && row["revoked"] == true)
    })
    .unwrap_or_else(|e| panic!("{e}: still connected: {}", f.hub_log()));
    let took = t.elapsed();
    eprintln!("revoke → live connection closed: {took:?}");
    assert!(
        took < Duration::from_secs(30),
        "closing the revoked unit took {took:?}"
    );
    assert!(
        f.hub_log().contains("closing a live unit connection"),
        "{}",
        f.hub_log()
    );
    // Nothing more is served to it: a new patient is not fetched, nothing recorded served.
    let (code, body) = lookup(&f.units[a].lan, &tok, &nhs[1]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("not_cached"), "{body}");
    // It stays disconnected (its reconnections fail the CRL).
    std::thread::sleep(Duration::from_secs(3));
    let row = f.device_row("LAS-AMB-0061").unwrap();
    assert_eq!(row["connected"], false, "{row}");
    assert_eq!(served(&hub_events(&f, &nhs[1])), 0);
    // Unit B is untouched.
    assert_eq!(f.device_row("LAS-AMB-0062").unwrap()["connected"], true);
}

#[test]
fn past_the_fetch_ceiling_fetches_are_refused_and_alerted_and_a_revoked_token_is_refused() {
    let mut f = Fleet::new().unwrap();
    // A small budget: 2 patients an hour per unit, ceiling 2 × 2.
    let cfg = f.hub_dir.join("hub.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("fetch_unit_per_hour = 60"), "{text}");
    let text = text
        .replace("fetch_unit_per_hour = 60", "fetch_unit_per_hour = 2")
        .replace("fetch_ceiling_factor = 10", "fetch_ceiling_factor = 2");
    std::fs::write(&cfg, text).unwrap();
    let u = f.enrol("LAS-AMB-0063", &["--cohort", NOBODY]).unwrap();
    let data = f.synth("a.ndjson", 40, 29).unwrap();
    f.ingest_offline(&data).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    caught_up(&f, u);
    let lan = f.units[u].lan.clone();
    let tok = f
        .clinician_token(0x6301, "555000666333", "BUSY, Test")
        .unwrap();

    // Within the budget, past it (served, alerted), then past the ceiling (refused).
    for n in nhs.iter().take(4) {
        let (code, body) = lookup(&lan, &tok, n);
        assert_eq!(code, 200, "{n}: {body}");
    }
    let (code, body) = lookup(&lan, &tok, &nhs[4]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("not_cached"), "{body}");
    assert_eq!(served(&hub_events(&f, &nhs[4])), 0);
    let (code, body) = f.admin("GET", "/admin/alerts", None).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("fetch_over_budget"), "{body}");
    assert!(body.contains("fetch_ceiling"), "{body}");

    // A shift token revoked with `edge-provision token-revoke` is refused by the unit within
    // one sync (the hub re-reads the deny list and passes it on).
    let victim_id = 0x6302u128;
    let victim = f
        .clinician_token(victim_id, "555000666444", "LOST, Test")
        .unwrap();
    assert_eq!(lookup(&lan, &victim, &nhs[0]).0, 200, "cached on demand");
    let t = Instant::now();
    run_ok(
        Command::new(bin("edge-provision").unwrap())
            .args(["token-revoke", "--fleet"])
            .arg(&f.fleet)
            .args(["--token-id", &format!("{victim_id:032x}")]),
    )
    .unwrap();
    wait_for(Duration::from_secs(30), || {
        Ok(lookup(&lan, &victim, &nhs[0]).0 == 401)
    })
    .unwrap_or_else(|e| panic!("{e}: the revoked token is still served: {}", f.unit_log(u)));
    eprintln!("token-revoke → refused by the unit: {:?}", t.elapsed());
    // Other tokens still work (from the on-demand copy).
    assert_eq!(lookup(&lan, &tok, &nhs[0]).0, 200);
}
