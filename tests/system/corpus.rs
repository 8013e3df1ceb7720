//! The real-feed corpus (`tests/corpus/*.json`): hand-written bundles in the shapes London's
//! exchanges send (IPS documents, GP structured records, PDS-style Patients, transactions with
//! DELETE, snapshots, mother and baby, merged and retired records), each with the view a
//! clinician should get. Every case goes through the real hub (`POST /admin/ingest`) and the
//! real unit (QUIC sync, then the LAN API), and every expectation is checked on what the unit
//! answers. The file format is in `tests/corpus/README.md`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kerbside_tests::fleet::{http_with, wait_for, Fleet};
use serde_json::Value;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Every case file, in name order.
pub fn cases() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect()
}

/// The values a dotted path names; `[*]` fans out over an array.
fn select<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut cur = vec![v];
    if path.is_empty() {
        return cur;
    }
    for seg in path.split('.') {
        let (name, rest) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        let mut next = Vec::new();
        for c in cur {
            let base = if name.is_empty() {
                Some(c)
            } else {
                c.get(name)
            };
            let Some(mut at) = base.map(|b| vec![b]) else {
                continue;
            };
            for idx in rest.split('[').filter(|s| !s.is_empty()) {
                let idx = idx.trim_end_matches(']');
                at = at
                    .into_iter()
                    .flat_map(|x| -> Vec<&Value> {
                        match (idx, x.as_array()) {
                            ("*", Some(a)) => a.iter().collect(),
                            (n, Some(a)) => n
                                .parse::<usize>()
                                .ok()
                                .and_then(|n| a.get(n))
                                .into_iter()
                                .collect(),
                            _ => Vec::new(),
                        }
                    })
                    .collect();
            }
            next.extend(at);
        }
        cur = next;
    }
    cur
}

fn any_string_contains(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => s.to_lowercase().contains(needle),
        Value::Array(a) => a.iter().any(|x| any_string_contains(x, needle)),
        Value::Object(m) => m.values().any(|x| any_string_contains(x, needle)),
        _ => false,
    }
}

/// Check one expectation against a JSON answer; `Err` says what failed.
pub fn check(doc: &Value, c: &Value) -> Result<(), String> {
    let path = c["path"].as_str().unwrap_or("");
    let got = select(doc, path);
    let why = c["why"].as_str().unwrap_or("");
    let fail = |what: String| Err(format!("{path}: {what} {why}"));
    if let Some(want) = c.get("equals") {
        if !got.contains(&want) {
            return fail(format!("expected {want}, found {got:?}"));
        }
    }
    if c["absent"].as_bool() == Some(true) && got.iter().any(|g| !g.is_null()) {
        return fail(format!("expected absent, found {got:?}"));
    }
    if let Some(n) = c.get("len").and_then(Value::as_u64) {
        let ok = got
            .iter()
            .any(|g| g.as_array().is_some_and(|a| a.len() as u64 == n))
            || (n == 0 && got.iter().all(|g| g.is_null()));
        if !ok {
            let lens: Vec<Option<usize>> = got.iter().map(|g| g.as_array().map(Vec::len)).collect();
            return fail(format!("expected {n} elements, found {lens:?}"));
        }
    }
    if let Some(s) = c.get("contains").and_then(Value::as_str) {
        let s = s.to_lowercase();
        if !got
            .iter()
            .any(|g| g.as_str().is_some_and(|x| x.to_lowercase().contains(&s)))
        {
            return fail(format!("expected a string containing {s:?}, found {got:?}"));
        }
    }
    if let Some(s) = c.get("none_contains").and_then(Value::as_str) {
        let s = s.to_lowercase();
        if got.iter().any(|g| any_string_contains(g, &s)) {
            return fail(format!("found {s:?} where it must not be"));
        }
    }
    Ok(())
}

fn ingest_query(step: &Value) -> String {
    let mut q = Vec::new();
    if let Some(s) = step["source"].as_str() {
        q.push(format!("source={s}"));
    }
    if step["snapshot"].as_bool() == Some(true) {
        q.push("snapshot=true".into());
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// Ingest every case's steps through the real hub, let the real unit sync, and check every
/// expectation on what the unit answers.
#[test]
fn real_feed_corpus_through_hub_and_unit() {
    let cases = cases();
    assert!(cases.len() >= 19, "the corpus has {} cases", cases.len());
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("CORPUS-1", &[]).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    let mut failures: Vec<String> = Vec::new();
    let mut redirected: Vec<(String, String, String)> = Vec::new();
    let mut head = 0u64;
    for (name, case) in &cases {
        for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let bundles: Vec<&Value> = match &step["ingest"] {
                Value::Array(a) => a.iter().collect(),
                b => vec![b],
            };
            let body: Vec<String> = bundles.iter().map(|b| b.to_string()).collect();
            let (code, text) = f
                .admin(
                    "POST",
                    &format!("/admin/ingest{}", ingest_query(step)),
                    Some(&body.join("\n")),
                )
                .unwrap();
            let report: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let at = format!("{name} step {i}");
            if code != 200 {
                failures.push(format!("{at}: ingest answered {code}: {text}"));
                continue;
            }
            head = head.max(report["head"].as_u64().unwrap_or(0));
            let exp = &step["expect_ingest"];
            if let Some(n) = exp["accepted"].as_u64() {
                if report["accepted"].as_u64() != Some(n) {
                    failures.push(format!(
                        "{at}: accepted {} not {n}: {text}",
                        report["accepted"]
                    ));
                }
            }
            if let Some(n) = exp["rejected"].as_u64() {
                let got = report["rejected"].as_array().map_or(0, Vec::len) as u64;
                if got != n {
                    failures.push(format!("{at}: rejected {got} not {n}: {text}"));
                }
            }
            for (key, list) in [
                ("rejected_contains", "rejected"),
                ("warnings_contains", "warnings"),
            ] {
                for want in exp[key].as_array().into_iter().flatten() {
                    let want = want.as_str().unwrap_or("").to_lowercase();
                    let found = report[list].as_array().into_iter().flatten().any(|r| {
                        let t = r["error"].as_str().or(r["warning"].as_str()).unwrap_or("");
                        t.to_lowercase().contains(&want)
                    });
                    if !found {
                        failures.push(format!("{at}: no {list} entry mentions {want:?}: {text}"));
                    }
                }
            }
        }
    }
    // The unit catches up with everything the corpus wrote.
    wait_for(Duration::from_secs(60), || {
        Ok(f.status(u)?["cursor"].as_u64().unwrap_or(0) >= head)
    })
    .unwrap_or_else(|e| {
        panic!(
            "the unit did not catch up to {head}: {e:#}\n{}",
            f.unit_log(u)
        )
    });
    for (k, (name, case)) in cases.iter().enumerate() {
        // A token per case, so the bulk-browse defence does not slow the run.
        let tok = f
            .clinician_token(0xC0_0000 + k as u128, "555000111222", "PARAMEDIC, Corpus")
            .unwrap();
        let auth = format!("Bearer {tok}");
        for (j, e) in case["expect"].as_array().into_iter().flatten().enumerate() {
            let (path, what) = if let Some(n) = e["lookup"].as_str() {
                (format!("/v1/patients/{n}"), format!("lookup {n}"))
            } else if let Some(q) = e["search"].as_str() {
                (format!("/v1/search?{q}"), format!("search {q}"))
            } else {
                failures.push(format!("{name} expect[{j}]: neither lookup nor search"));
                continue;
            };
            let mut headers = vec![("Authorization", auth.as_str())];
            if e["break_glass"].as_bool() == Some(true) {
                headers.push(("X-Purpose-Of-Use", "ETREAT"));
                headers.push(("X-Break-Glass-Reason", "corpus check"));
            }
            let (code, body) = http_with(
                "GET",
                &format!("http://{}{path}", f.units[u].lan),
                None,
                &headers,
            )
            .unwrap();
            let want = e["status"].as_u64().unwrap_or(200);
            if u64::from(code) != want {
                failures.push(format!(
                    "{name}: {what}: status {code}, expected {want}: {body}"
                ));
                continue;
            }
            let doc: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            for c in e["checks"].as_array().into_iter().flatten() {
                if let Err(why) = check(&doc, c) {
                    failures.push(format!("{name}: {what}: {why}"));
                }
            }
            // A lookup by a former number answered with the current record.
            if let (Some(asked), Some(current)) = (e["lookup"].as_str(), doc["nhs_number"].as_str())
            {
                if code == 200 && asked != current {
                    redirected.push((name.clone(), asked.to_owned(), current.to_owned()));
                }
            }
        }
    }
    // Such a lookup is audited under the current number and says which number was asked.
    assert!(
        !redirected.is_empty(),
        "the corpus has lookups by a former number"
    );
    for (name, asked, current) in &redirected {
        let mut last = String::new();
        let found = wait_for(Duration::from_secs(30), || {
            let (code, body) = f.admin("GET", &format!("/admin/audit?patient={current}"), None)?;
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            let hit = code == 200
                && v["events"].as_array().into_iter().flatten().any(|ev| {
                    ev["patient"].as_str() == Some(current.as_str())
                        && ev["data"]["asked_nhs"].to_string().contains(asked.as_str())
                });
            last = body;
            Ok(hit)
        });
        if found.is_err() {
            failures.push(format!(
                "{name}: the lookup of {asked} is not audited under {current} with asked_nhs: {last}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} corpus expectations failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn paths_select_and_checks_fail_when_they_should() {
    let doc: Value =
        serde_json::json!({"a": {"b": [{"c": "Warfarin 1mg"}, {"c": "x"}]}, "n": null});
    assert_eq!(select(&doc, "a.b[1].c"), vec![&Value::from("x")]);
    assert_eq!(select(&doc, "a.b[*].c").len(), 2);
    assert!(check(
        &doc,
        &serde_json::json!({"path": "a.b[*].c", "equals": "x"})
    )
    .is_ok());
    assert!(check(
        &doc,
        &serde_json::json!({"path": "a.b[0].c", "equals": "x"})
    )
    .is_err());
    assert!(check(&doc, &serde_json::json!({"path": "a.b", "len": 2})).is_ok());
    assert!(check(&doc, &serde_json::json!({"path": "a.b", "len": 3})).is_err());
    assert!(check(&doc, &serde_json::json!({"path": "n", "absent": true})).is_ok());
    assert!(check(&doc, &serde_json::json!({"path": "a", "absent": true})).is_err());
    assert!(check(
        &doc,
        &serde_json::json!({"path": "a.b[*].c", "contains": "WARF"})
    )
    .is_ok());
    assert!(check(
        &doc,
        &serde_json::json!({"path": "", "none_contains": "warfarin"})
    )
    .is_err());
    assert!(check(
        &doc,
        &serde_json::json!({"path": "", "none_contains": "heparin"})
    )
    .is_ok());
}

/// `edge-hub ingest --source`, `--feed` (hub.toml `[[feeds]]`) and `--snapshot` with the real
/// binary: a bundle naming no organisation is refused without a source (exit 3, the error
/// says how to fix it), filed under the source given on the command line or by the feed, and
/// a snapshot feed withdraws what its next bundle no longer holds.
#[test]
fn offline_ingest_takes_the_feed_source_and_snapshot() {
    use kerbside_tests::bin;
    use std::process::Command;
    let mut f = Fleet::new().unwrap();
    let cfg = f.hub_dir.join("hub.toml");
    let mut toml = std::fs::read_to_string(&cfg).unwrap();
    toml.push_str("\n[[feeds]]\nname = \"cnwl-nightly\"\nsource = \"RV3\"\nsnapshot = true\n");
    std::fs::write(&cfg, toml).unwrap();
    let bundle = |conditions: &[(&str, &str)], ts: &str| {
        let mut entries = vec![serde_json::json!({"fullUrl": "urn:uuid:p", "resource": {
            "resourceType": "Patient", "id": "p",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9990000018"}],
            "name": [{"family": "Okafor", "given": ["Ada"]}]}})];
        for (id, text) in conditions {
            entries.push(
                serde_json::json!({"fullUrl": format!("urn:uuid:{id}"), "resource": {
                "resourceType": "Condition", "id": id, "subject": {"reference": "urn:uuid:p"},
                "code": {"text": text}}}),
            );
        }
        serde_json::json!({"resourceType": "Bundle", "type": "collection", "timestamp": ts,
            "entry": entries})
        .to_string()
    };
    let ingest = |file: &str, text: &str, extra: &[&str]| {
        let path = f.path(file);
        std::fs::write(&path, text).unwrap();
        Command::new(bin("edge-hub").unwrap())
            .args(["ingest", "--config"])
            .arg(&cfg)
            .args(extra)
            .arg(&path)
            .output()
            .unwrap()
    };
    let one = bundle(&[("c1", "Asthma")], "2025-01-01T00:00:00Z");
    let out = ingest("a.json", &one, &[]);
    assert_eq!(out.status.code(), Some(3), "refused without a source");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--source"),
        "the error says how to fix it: {err}"
    );
    let out = ingest("a.json", &one, &["--source", "Y03124"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ingest("b.json", &one, &["--source", "not a code"]);
    assert!(!out.status.success(), "a malformed source is refused");
    let out = ingest("c.json", &one, &["--feed", "no-such-feed"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cnwl-nightly"));
    // The snapshot feed: two conditions, then a later snapshot with one.
    let two = bundle(
        &[("m1", "Bipolar disorder"), ("m2", "Hypothyroidism")],
        "2025-02-01T00:00:00Z",
    );
    assert!(ingest("d.json", &two, &["--feed", "cnwl-nightly"])
        .status
        .success());
    let later = bundle(&[("m1", "Bipolar disorder")], "2025-03-01T00:00:00Z");
    assert!(ingest("e.json", &later, &["--feed", "cnwl-nightly"])
        .status
        .success());
    let u = f.enrol("CORPUS-CLI", &[]).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 1, Duration::from_secs(60)).unwrap();
    let tok = f
        .clinician_token(0xC1_0000, "555000111222", "PARAMEDIC, Corpus")
        .unwrap();
    let (code, body) = http_with(
        "GET",
        &format!("http://{}/v1/patients/9990000018", f.units[u].lan),
        None,
        &[("Authorization", &format!("Bearer {tok}"))],
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let sources: Vec<&str> = v["conditions"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["provenance"]["source_ods"].as_str().unwrap())
        .collect();
    assert_eq!(sources.iter().filter(|s| **s == "Y03124").count(), 1);
    assert_eq!(sources.iter().filter(|s| **s == "RV3").count(), 1, "{body}");
    assert!(
        !body.contains("Hypothyroidism"),
        "withdrawn by the later snapshot"
    );
}
