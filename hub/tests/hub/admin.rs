//! The admin API, driven in-process through its axum router: statuses and JSON for ingest,
//! devices, objections, cohorts, wipes, the audit queries, and clear 4xx answers to bad input.

use axum::http::StatusCode;
use edge_proto::ids::DeviceId;
use serde_json::{json, Value};

use crate::common::{bundle, call, call_raw, chain, hub, nhs, Patient};

fn two_patients() -> String {
    let (a, b) = (nhs(0), nhs(1));
    format!(
        "{}\n{}\n",
        bundle(&Patient::new(&a, "Adebayo", "SE15 4JU")),
        bundle(&Patient::new(&b, "Brown", "N1 9GU"))
    )
}

fn assert_error(got: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"], code, "{}", got.1);
    assert!(
        !got.1["message"].as_str().unwrap_or_default().is_empty(),
        "an error says what is wrong: {}",
        got.1
    );
}

#[tokio::test]
async fn healthz_and_unknown_routes() {
    let t = hub(None);
    let (s, body) = call(&t.app, "GET", "/healthz", "").await;
    assert_eq!((s, body), (StatusCode::OK, Value::String("ok".into())));
    let (s, _) = call(&t.app, "GET", "/admin/nothing", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&t.app, "GET", "/admin/ingest", "").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn ingest_reports_accepted_rejected_and_the_new_head() {
    let t = hub(None);
    let mut head_rx = t.hub.head_tx.subscribe();
    let text = format!("{}not a bundle\n", two_patients());
    let (s, v) = call(&t.app, "POST", "/admin/ingest", &text).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["changed"], 2);
    assert_eq!(v["head"], 2);
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["line"], 3);
    assert!(rejected[0].get("entry").is_none());
    assert!(v["warnings"].is_array());
    assert_eq!(t.hub.store.head().unwrap(), 2);
    assert!(head_rx.has_changed().unwrap(), "sessions are woken");
    assert_eq!(*head_rx.borrow_and_update(), 2);

    // The same again: accepted, nothing changed, the head stays.
    let (s, v) = call(&t.app, "POST", "/admin/ingest", &two_patients()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (v["accepted"].as_u64(), v["changed"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(v["head"], 2);
}

#[tokio::test]
async fn ingest_takes_a_feed_or_a_source_and_refuses_bad_queries_and_bodies() {
    let t = hub(None);
    let (s, v) = call(
        &t.app,
        "POST",
        "/admin/ingest?feed=community&snapshot=false",
        &two_patients(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accepted"], 2);
    let (s, _) = call(
        &t.app,
        "POST",
        "/admin/ingest?source=Y03124",
        &two_patients(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    let got = call(&t.app, "POST", "/admin/ingest?feed=nosuch", "").await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        got.1["message"].as_str().unwrap().contains("community"),
        "{}",
        got.1
    );
    let got = call(&t.app, "POST", "/admin/ingest?colour=blue", "").await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    let got = call(&t.app, "POST", "/admin/ingest?snapshot=maybe", "").await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    let got = call(&t.app, "POST", "/admin/ingest?source=not%20an%20ods", "").await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");

    let (s, _, text) = call_raw(&t.app, "POST", "/admin/ingest", vec![0xff, 0xfe, b'{']).await;
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_error(&(s, v), StatusCode::BAD_REQUEST, "not_utf8");
    assert_eq!(
        t.hub.store.head().unwrap(),
        2,
        "nothing written by refused requests"
    );
}

#[tokio::test]
async fn objections_withdraw_and_are_idempotent() {
    let t = hub(None);
    call(&t.app, "POST", "/admin/ingest", &two_patients()).await;
    let body = json!({"nhs_number": nhs(0)}).to_string();
    let (s, v) = call(&t.app, "POST", "/admin/objection", &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"withdrawn": true, "seq": 3, "already": false}));
    let (s, v) = call(&t.app, "POST", "/admin/objection", &body).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!({"withdrawn": true, "seq": null, "already": true}));
    assert_eq!(t.hub.store.patient_count().unwrap(), 1);

    let got = call(
        &t.app,
        "POST",
        "/admin/objection",
        &json!({"nhs_number": nhs(5)}).to_string(),
    )
    .await;
    assert_error(&got, StatusCode::NOT_FOUND, "unknown_patient");
    let got = call(
        &t.app,
        "POST",
        "/admin/objection",
        &json!({"nhs_number": "9990000019"}).to_string(),
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_nhs_number");
    let got = call(&t.app, "POST", "/admin/objection", "{\"nhs\": 1}").await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    let got = call(&t.app, "POST", "/admin/objection", "").await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn a_cohort_set_at_the_hub_is_stored_and_listed() {
    let t = hub(Some(&[("LAS-AMB-0007", false)]));
    // A unit neither the fleet nor the hub knows gets no cohort, and no phantom row.
    let got = call(
        &t.app,
        "POST",
        "/admin/cohort",
        &json!({"device_id": "LAS-AMB-0070", "cohort": ["all"]}).to_string(),
    )
    .await;
    assert_error(&got, StatusCode::NOT_FOUND, "unknown_device");
    let body = json!({"device_id": "LAS-AMB-0007", "cohort": ["postcode:SE1,SE15", "flagged"]})
        .to_string();
    let (s, v) = call(&t.app, "POST", "/admin/cohort", &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["device_id"], "LAS-AMB-0007");
    assert_eq!(v["cohort"], json!(["postcode:SE1,SE15", "flagged"]));
    let specs = t
        .hub
        .store
        .cohort_override(&DeviceId::parse("LAS-AMB-0007").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(specs.len(), 2);

    let (s, rows) = call(&t.app, "GET", "/admin/devices", "").await;
    assert_eq!(s, StatusCode::OK);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["device_id"], "LAS-AMB-0007");
    assert_eq!(rows[0]["connected"], false);
    assert_eq!(rows[0]["role"], "vehicle");
    assert_eq!(rows[0]["cohort_override"].as_array().unwrap().len(), 2);

    let got = call(
        &t.app,
        "POST",
        "/admin/cohort",
        &json!({"device_id": "not a device", "cohort": ["all"]}).to_string(),
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_device_id");
    let got = call(
        &t.app,
        "POST",
        "/admin/cohort",
        &json!({"device_id": "LAS-AMB-0007", "cohort": ["postcode:"]}).to_string(),
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_cohort");
    let got = call(
        &t.app,
        "POST",
        "/admin/cohort",
        &json!({"device_id": "LAS-AMB-0007", "cohort": []}).to_string(),
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_cohort");
    let got = call(
        &t.app,
        "POST",
        "/admin/cohort",
        "{\"device_id\": \"LAS-AMB-0007\"}",
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn devices_lists_the_inventory_and_the_units_the_hub_has_seen() {
    let t = hub(Some(&[("LAS-AMB-0001", false), ("LAS-AMB-0002", true)]));
    t.hub
        .store
        .update_device(&DeviceId::parse("LAS-AMB-0009").unwrap(), |d| {
            d.cursor = Some(7)
        })
        .unwrap();
    call(&t.app, "POST", "/admin/ingest", &two_patients()).await;
    let (s, rows) = call(&t.app, "GET", "/admin/devices", "").await;
    assert_eq!(s, StatusCode::OK);
    let rows = rows.as_array().unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["LAS-AMB-0001", "LAS-AMB-0002", "LAS-AMB-0009"]);
    assert_eq!(rows[0]["role"], "vehicle");
    assert_eq!(rows[0]["revoked"], false);
    assert_eq!(rows[1]["revoked"], true);
    assert_eq!(rows[2]["role"], Value::Null);
    assert_eq!(rows[2]["cursor"], 7);
    assert!(rows
        .iter()
        .all(|r| r["head"] == 2 && r["connected"] == false));
}

#[tokio::test]
async fn a_wipe_needs_a_unit_the_fleet_or_hub_knows() {
    let t = hub(Some(&[("LAS-AMB-0001", false)]));
    let got = call(
        &t.app,
        "POST",
        "/admin/wipe",
        &json!({"device_id": "LAS-AMB-0404"}).to_string(),
    )
    .await;
    assert_error(&got, StatusCode::NOT_FOUND, "unknown_device");
    assert!(
        t.hub.store.devices().unwrap().is_empty(),
        "no phantom device is created"
    );

    // In the inventory, never seen: ordered.
    let (s, v) = call(
        &t.app,
        "POST",
        "/admin/wipe",
        &json!({"device_id": "LAS-AMB-0001"}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"device_id": "LAS-AMB-0001", "wipe_ordered": true})
    );
    let id = DeviceId::parse("LAS-AMB-0001").unwrap();
    assert!(t.hub.store.device(&id).unwrap().wipe_requested.is_some());
    let (_, rows) = call(&t.app, "GET", "/admin/devices", "").await;
    assert!(rows[0]["wipe_requested"].is_string());

    // Cancelled.
    let (s, v) = call(
        &t.app,
        "POST",
        "/admin/wipe",
        &json!({"device_id": "LAS-AMB-0001", "cancel": true}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["wipe_ordered"], false);
    assert!(t.hub.store.device(&id).unwrap().wipe_requested.is_none());

    let got = call(&t.app, "POST", "/admin/wipe", "{}").await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    let got = call(
        &t.app,
        "POST",
        "/admin/wipe",
        &json!({"device_id": "../etc"}).to_string(),
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_device_id");
}

#[tokio::test]
async fn a_wipe_of_a_unit_only_the_hub_has_seen_is_ordered_without_an_inventory() {
    let t = hub(None);
    let got = call(
        &t.app,
        "POST",
        "/admin/wipe",
        &json!({"device_id": "LAS-AMB-0003"}).to_string(),
    )
    .await;
    assert_error(&got, StatusCode::NOT_FOUND, "unknown_device");
    t.hub
        .store
        .update_device(&DeviceId::parse("LAS-AMB-0003").unwrap(), |d| {
            d.cursor = Some(1)
        })
        .unwrap();
    let (s, v) = call(
        &t.app,
        "POST",
        "/admin/wipe",
        &json!({"device_id": "LAS-AMB-0003"}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["wipe_ordered"], true);
}

#[tokio::test]
async fn audit_queries_validate_their_parameters() {
    let t = hub(None);
    for uri in [
        "/admin/audit",
        &format!("/admin/audit?patient={}&staff=555000111222", nhs(0)),
        "/admin/audit?staff=",
        &format!("/admin/audit?staff={}", "9".repeat(65)),
    ] {
        let got = call(&t.app, "GET", uri, "").await;
        assert_error(&got, StatusCode::BAD_REQUEST, "bad_request");
    }
    let got = call(&t.app, "GET", "/admin/audit?patient=9990000019", "").await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid_nhs_number");
    let (s, _) = call(&t.app, "GET", "/admin/audit?staff=x&limit=many", "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let got = call(
        &t.app,
        "GET",
        "/admin/audit/verify?device=not%20a%20device",
        "",
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_device_id");
    let (s, _) = call(&t.app, "GET", "/admin/audit/verify", "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let got = call(&t.app, "GET", "/admin/audit/export?since=yesterday", "").await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_since");
}

#[tokio::test]
async fn audit_queries_answer_from_the_repository() {
    let t = hub(None);
    let dev = DeviceId::parse("LAS-AMB-0001").unwrap();
    t.hub
        .audit
        .store(&dev, &chain("LAS-AMB-0001", 3, &nhs(0), "555000111222"))
        .unwrap();

    let (s, v) = call(
        &t.app,
        "GET",
        &format!("/admin/audit?patient={}", nhs(0)),
        "",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["seq"], 3, "newest first");
    assert_eq!(events[0]["patient"], nhs(0));
    let (_, v) = call(
        &t.app,
        "GET",
        &format!("/admin/audit?patient={}&limit=1", nhs(0)),
        "",
    )
    .await;
    assert_eq!(v["events"].as_array().unwrap().len(), 1);
    let (_, v) = call(&t.app, "GET", "/admin/audit?staff=555000111222", "").await;
    assert_eq!(v["events"].as_array().unwrap().len(), 3);
    let (_, v) = call(
        &t.app,
        "GET",
        &format!("/admin/audit?patient={}", nhs(1)),
        "",
    )
    .await;
    assert_eq!(v["events"], json!([]));

    let (s, v) = call(&t.app, "GET", "/admin/audit/verify?device=LAS-AMB-0001", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["events"], 3);
    assert_eq!(v["chain_ok"], true);
    assert_eq!(v["last_seq"], 3);

    let (s, ctype, text) = call_raw(&t.app, "GET", "/admin/audit/export", vec![]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ctype, "application/fhir+ndjson");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|l| l["resourceType"] == "AuditEvent"));
    let (_, _, text) = call_raw(
        &t.app,
        "GET",
        "/admin/audit/export?since=2030-01-01T00:00:00Z",
        vec![],
    )
    .await;
    assert!(text.is_empty());
    // A date range: [since, until).
    let (s, _, text) = call_raw(
        &t.app,
        "GET",
        "/admin/audit/export?since=2023-11-14T22:13:20.001Z&until=2023-11-14T22:13:20.003Z",
        vec![],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(text.lines().count(), 2, "seq 1 and 2: {text}");
    let got = call(
        &t.app,
        "GET",
        "/admin/audit/export?since=2023-11-14T22:13:20.003Z&until=2023-11-14T22:13:20.001Z",
        "",
    )
    .await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_until");
    // A large export arrives whole, streamed in chunks.
    let dev2 = DeviceId::parse("LAS-AMB-0002").unwrap();
    t.hub
        .audit
        .store(
            &dev2,
            &chain("LAS-AMB-0002", 2_000, &nhs(1), "555000111333"),
        )
        .unwrap();
    let (s, _, text) = call_raw(&t.app, "GET", "/admin/audit/export", vec![]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        text.len() > 2 * 64 * 1024,
        "more than one chunk: {}",
        text.len()
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2_003);

    let (s, v) = call(&t.app, "GET", "/admin/alerts", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["alerts"], json!([]), "reads are not alerts");
}
