//! The LAN API with the real binaries: lookup, `$summary`, tokens and roles, bad input,
//! search, offline answers, on-demand fetch, freshness.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edge_proto::assemble::from_contribution;
use edge_proto::fhir::ingest::parse_bundle_json;
use edge_proto::ids::{DeviceId, StaffRole};
use edge_proto::time::UnixMillis;
use edge_proto::token::{self, ShiftClaims};
use kerbside_tests::fleet::{http_with, nhs_numbers, wait_for, Fleet};
use serde_json::Value;

fn mint(f: &Fleet, role: StaffRole, expires_in_ms: i64, device: Option<&str>) -> String {
    let key =
        edge_provision::keys::load_ed25519_signing(&f.fleet.join("token-signing.key")).unwrap();
    let now = kerbside_tests::fleet::now_ms();
    let claims = ShiftClaims {
        v: 1,
        token_id: format!(
            "{:032x}",
            (now as u128) << 20 ^ (expires_in_ms.unsigned_abs() as u128)
        ),
        staff_id: "555000111222".into(),
        staff_name: "PARAMEDIC, Test".into(),
        role,
        org_ods: None,
        device: device.map(|d| DeviceId::parse(d).unwrap()),
        issued_at: UnixMillis(now - 60_000),
        expires_at: UnixMillis(now + expires_in_ms),
    };
    token::sign(&claims, &key)
}

fn get(
    f: &Fleet,
    u: usize,
    path: &str,
    tok: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, String) {
    let auth = tok.map(|t| format!("Bearer {t}"));
    let mut h: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        h.push(("Authorization", a));
    }
    http_with("GET", &format!("http://{}{path}", f.units[u].lan), None, &h).unwrap()
}

#[test]
fn lookup_summary_tokens_roles_search_offline_and_fetch() {
    let mut f = Fleet::new().unwrap();
    let data = f.synth("a.ndjson", 1500, 31).unwrap();
    // A unit whose cohort is one district, so other patients are fetched on demand.
    let text = std::fs::read_to_string(&data).unwrap();
    let mut by_district: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut patients: BTreeMap<String, Value> = BTreeMap::new();
    for line in text.lines() {
        let b: Value = serde_json::from_str(line).unwrap();
        for e in b["entry"].as_array().unwrap() {
            let r = &e["resource"];
            if r["resourceType"] == "Patient" {
                let nhs = r["identifier"][0]["value"].as_str().unwrap().to_owned();
                let d = r["address"][0]["postalCode"]
                    .as_str()
                    .unwrap_or("")
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_owned();
                by_district.entry(d).or_default().push(nhs.clone());
                patients.insert(nhs, r.clone());
            }
        }
    }
    let (district, members) = by_district.iter().max_by_key(|(_, v)| v.len()).unwrap();
    let u = f
        .enrol(
            "LAS-AMB-0020",
            &["--cohort", &format!("postcode:{district}")],
        )
        .unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, members.len() as u64, Duration::from_secs(60))
        .unwrap();
    wait_for(Duration::from_secs(10), || {
        Ok(f.status(u)?["caught_up"] == true)
    })
    .unwrap();

    let clin = mint(&f, StaffRole::Clinical, 3_600_000, None);
    let admin = mint(&f, StaffRole::Admin, 3_600_000, None);
    let nhs = &members[0];

    // Lookup: every section with its status, freshness.
    let (code, body) = get(&f, u, &format!("/v1/patients/{nhs}"), Some(&clin), &[]);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    for k in [
        "allergies",
        "medications",
        "conditions",
        "resuscitation",
        "care_plans",
        "alerts",
    ] {
        let st = v[k]["status"].as_str().unwrap_or("");
        assert!(
            ["entries", "none_known", "no_information", "withheld"].contains(&st),
            "{k}: {st}"
        );
    }
    assert!(v["as_of"].is_string() && v["synced_at"].is_string());
    assert!(
        v["age_seconds"].as_u64().unwrap() < 60,
        "{}",
        v["age_seconds"]
    );
    assert_eq!(v["stale"], false);
    assert_eq!(v["origin"], "cache");
    // The summary the hub assembled from this patient's bundle (the LAN answer carries the
    // clinical view of its sections, not the stored summary).
    let line = text
        .lines()
        .find(|l| l.contains(&format!("\"{nhs}\"")))
        .unwrap();
    let held = from_contribution(&parse_bundle_json(line).unwrap(), UnixMillis(0));
    assert_eq!(v["version"], 1);

    // $summary: a FHIR document that maps back to the same summary.
    let (code, body) = get(
        &f,
        u,
        &format!("/fhir/Patient/$summary?identifier=https://fhir.nhs.uk/Id/nhs-number%7C{nhs}"),
        Some(&clin),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["resourceType"], "Bundle");
    assert_eq!(doc["type"], "document");
    assert_eq!(doc["entry"][0]["resource"]["resourceType"], "Composition");
    let back = from_contribution(&parse_bundle_json(&body).unwrap(), UnixMillis(0));
    assert!(
        back.same_content(&held),
        "$summary maps back to the same summary"
    );

    // Tokens and roles.
    assert_eq!(get(&f, u, &format!("/v1/patients/{nhs}"), None, &[]).0, 401);
    let expired = mint(&f, StaffRole::Clinical, -1_000, None);
    let (code, body) = get(&f, u, &format!("/v1/patients/{nhs}"), Some(&expired), &[]);
    assert_eq!(code, 401);
    assert!(body.contains("expired"), "{body}");
    let mut forged = clin.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    assert_eq!(
        get(&f, u, &format!("/v1/patients/{nhs}"), Some(&forged), &[]).0,
        401
    );
    let other_unit = mint(&f, StaffRole::Clinical, 3_600_000, Some("LAS-AMB-9999"));
    assert_eq!(
        get(
            &f,
            u,
            &format!("/v1/patients/{nhs}"),
            Some(&other_unit),
            &[]
        )
        .0,
        401
    );
    assert_eq!(
        get(&f, u, &format!("/v1/patients/{nhs}"), Some(&admin), &[]).0,
        403
    );
    // Break-glass needs a reason.
    assert_eq!(
        get(
            &f,
            u,
            &format!("/v1/patients/{nhs}"),
            Some(&clin),
            &[("X-Purpose-Of-Use", "ETREAT")]
        )
        .0,
        400
    );
    assert_eq!(
        get(
            &f,
            u,
            &format!("/v1/patients/{nhs}"),
            Some(&clin),
            &[
                ("X-Purpose-Of-Use", "ETREAT"),
                ("X-Break-Glass-Reason", "unconscious, no ID")
            ]
        )
        .0,
        200
    );

    // Bad NHS numbers.
    for bad in [
        "9434765918",
        "123456789",
        "94347659XX",
        "1111111111",
        "94347659190",
    ] {
        let (code, body) = get(&f, u, &format!("/v1/patients/{bad}"), Some(&clin), &[]);
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(
            !body.contains(bad) || bad.len() != 10,
            "errors do not echo the number"
        );
    }

    // Search: needs two criteria; finds a misspelt, differently accented name.
    assert_eq!(
        get(&f, u, "/v1/search?family=SMITH", Some(&clin), &[]).0,
        400
    );
    let p = &patients[nhs];
    let family = p["name"][0]["family"].as_str().unwrap().to_owned();
    let birth = p["birthDate"].as_str().unwrap().to_owned();
    let accented: String = family
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 1 && c == 'a' {
                'á'
            } else if i == 1 && c == 'e' {
                'é'
            } else {
                c
            }
        })
        .collect::<String>()
        .to_uppercase();
    let q = format!(
        "/v1/search?family={}&birth_date={birth}",
        accented
            .replace(' ', "%20")
            .replace('á', "%C3%81")
            .replace('é', "%C3%89")
    );
    let (code, body) = get(&f, u, &q, Some(&admin), &[]);
    assert_eq!(code, 200, "{q}: {body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    let found: Vec<&str> = r["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["nhs"].as_str().unwrap_or(""))
        .collect();
    assert!(found.contains(&nhs.as_str()), "{q}: {body}");
    assert!(
        r["candidates"][0].get("allergies").is_none(),
        "demographics only"
    );
    // A dropped letter (misspelling) still finds them, with birth date.
    if family.len() > 5 {
        let miss: String = family
            .chars()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, c)| c)
            .collect();
        let (code, body) = get(
            &f,
            u,
            &format!("/v1/search?family={miss}&birth_date={birth}"),
            Some(&clin),
            &[],
        );
        assert_eq!(code, 200);
        assert!(body.contains(nhs.as_str()), "misspelt {miss}: {body}");
    }

    // On demand: a patient outside the cohort, link up → fetched and served.
    let outside = patients
        .keys()
        .find(|n| !members.contains(n))
        .unwrap()
        .clone();
    let t = Instant::now();
    let (code, body) = get(&f, u, &format!("/v1/patients/{outside}"), Some(&clin), &[]);
    eprintln!("on-demand fetch: {:?}", t.elapsed());
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["origin"], "on_demand");
    assert!(t.elapsed() < Duration::from_secs(2));

    // Hub down: cached and fetched answers still come; an uncached one is not_cached, fast.
    f.stop_hub(false).unwrap();
    wait_for(Duration::from_secs(25), || {
        Ok(f.status(u)?["link"] == "down")
    })
    .unwrap();
    let (code, body) = get(&f, u, &format!("/v1/patients/{nhs}"), Some(&clin), &[]);
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["link"], "down");
    assert_eq!(
        get(&f, u, &format!("/v1/patients/{outside}"), Some(&clin), &[]).0,
        200
    );
    let never = nhs_numbers(&data).unwrap();
    let uncached = patients
        .keys()
        .find(|n| !members.contains(n) && **n != outside && never.contains(n))
        .unwrap();
    let t = Instant::now();
    let (code, body) = get(&f, u, &format!("/v1/patients/{uncached}"), Some(&clin), &[]);
    let took = t.elapsed();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("not_cached"), "{body}");
    assert!(
        took < Duration::from_millis(100),
        "not_cached took {took:?}"
    );

    // Every access above was journalled before it was answered (uploaded while the link was
    // up — the uploader wakes on each append — or pending since it went down).
    let s = f.status(u).unwrap();
    let journalled =
        s["audit_pending"].as_u64().unwrap() + s["audit_uploaded_seq"].as_u64().unwrap();
    // 20 accesses, of which the two without a valid token (from one client within a minute)
    // make one aggregate event.
    assert!(journalled >= 19, "{s}");
    assert!(
        s["audit_pending"].as_u64().unwrap() >= 3,
        "the offline accesses wait: {s}"
    );
}
