//! The admin API's operator identity, driven in-process: tokens (none, a shift token, the wrong
//! role), Host and Origin, body types, the operator log, paging of alerts and audit queries,
//! the ingest size limit and the 404 for unknown units.

use axum::http::StatusCode;
use edge_proto::audit::{AuditAction, AuditEvent, GENESIS};
use edge_proto::ids::DeviceId;
use edge_proto::token::OperatorRole;
use serde_json::{json, Value};

use crate::common::{call, call_with, event, hub, nhs, operator_token, ADMIN_HOST};

async fn send(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let (s, _, text) = call_with(app, method, uri, body.as_bytes().to_vec(), headers).await;
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn bearer(role: OperatorRole, id: &str) -> String {
    format!("Bearer {}", operator_token(role, id))
}

#[tokio::test]
async fn every_admin_call_needs_an_operator_token_of_the_routes_role() {
    let t = hub(Some(&[("LAS-AMB-0001", false)]));
    // No token.
    let (s, v) = send(&t.app, "GET", "/admin/devices", "", &[("host", ADMIN_HOST)]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error"], "no_token");
    assert!(v["message"].as_str().unwrap().contains("operator"));
    // Garbage and a token signed by another key.
    let (s, v) = send(
        &t.app,
        "GET",
        "/admin/devices",
        "",
        &[("host", ADMIN_HOST), ("authorization", "Bearer x.y")],
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );
    // A staff shift token (signed by the same key, even) is the wrong kind.
    let key = edge_runtime::keys::generate_ed25519().unwrap();
    let pair = edge_runtime::keys::parse_ed25519_signing(key.private_pem.as_bytes()).unwrap();
    let now = edge_hub::server::now();
    let shift = edge_proto::token::sign(
        &edge_proto::token::ShiftClaims {
            v: 1,
            token_id: format!("{:032x}", 7),
            staff_id: "555000111222".into(),
            staff_name: "PARAMEDIC, Test".into(),
            role: edge_proto::ids::StaffRole::Clinical,
            org_ods: None,
            device: None,
            issued_at: edge_proto::time::UnixMillis(now.0 - 1000),
            expires_at: edge_proto::time::UnixMillis(now.0 + 3_600_000),
        },
        &pair,
    );
    let auth = format!("Bearer {shift}");
    let (s, _) = send(
        &t.app,
        "GET",
        "/admin/devices",
        "",
        &[("host", ADMIN_HOST), ("authorization", &auth)],
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Roles.
    let fleet = bearer(OperatorRole::Fleet, "OPS-0001");
    let privacy = bearer(OperatorRole::Privacy, "IG-0001");
    let (s, v) = send(
        &t.app,
        "GET",
        &format!("/admin/audit?patient={}", nhs(0)),
        "",
        &[("host", ADMIN_HOST), ("authorization", &fleet)],
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("role"))
    );
    let wipe = json!({"device_id": "LAS-AMB-0001"}).to_string();
    let (s, v) = send(
        &t.app,
        "POST",
        "/admin/wipe",
        &wipe,
        &[
            ("host", ADMIN_HOST),
            ("authorization", &privacy),
            ("content-type", "application/json"),
        ],
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("role"))
    );
    let (s, _) = send(
        &t.app,
        "GET",
        "/admin/devices",
        "",
        &[("host", ADMIN_HOST), ("authorization", &fleet)],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Health and metrics stay open.
    let (s, _) = send(&t.app, "GET", "/healthz", "", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = send(&t.app, "GET", "/metrics", "", &[]).await;
    assert_eq!(s, StatusCode::OK);
    let text = v.as_str().unwrap();
    assert!(text.contains("kerbside_hub_crl_expired 0"), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
}

#[tokio::test]
async fn a_cross_site_or_text_plain_post_orders_no_wipe() {
    let t = hub(Some(&[("LAS-AMB-0001", false)]));
    let fleet = bearer(OperatorRole::Fleet, "OPS-0001");
    let wipe = json!({"device_id": "LAS-AMB-0001"}).to_string();
    type Case<'a> = (&'a [(&'a str, &'a str)], StatusCode, &'a str);
    let cases: [Case; 5] = [
        (
            &[
                ("host", ADMIN_HOST),
                ("origin", "http://evil.example"),
                ("content-type", "text/plain"),
            ],
            StatusCode::FORBIDDEN,
            "cross_site",
        ),
        (
            &[
                ("host", ADMIN_HOST),
                ("origin", "http://evil.example"),
                ("authorization", &fleet),
                ("content-type", "application/json"),
            ],
            StatusCode::FORBIDDEN,
            "cross_site",
        ),
        (
            &[
                ("host", "evil.example:8443"),
                ("authorization", &fleet),
                ("content-type", "application/json"),
            ],
            StatusCode::FORBIDDEN,
            "cross_site",
        ),
        (
            &[
                ("host", ADMIN_HOST),
                ("authorization", &fleet),
                ("content-type", "text/plain"),
            ],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            &[("host", ADMIN_HOST), ("authorization", &fleet)],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for (headers, status, code) in cases {
        let (s, v) = send(&t.app, "POST", "/admin/wipe", &wipe, headers).await;
        assert_eq!(
            (s, v["error"].as_str()),
            (status, Some(code)),
            "{headers:?}"
        );
    }
    let dev = DeviceId::parse("LAS-AMB-0001").unwrap();
    assert_eq!(t.hub.store.device(&dev).unwrap().wipe_requested, None);
    // The operator's own page (same origin) may.
    let (s, v) = send(
        &t.app,
        "POST",
        "/admin/wipe",
        &wipe,
        &[
            ("host", "localhost:8443"),
            ("origin", "http://localhost:8443"),
            ("authorization", &fleet),
            ("content-type", "application/json; charset=utf-8"),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(t.hub.store.device(&dev).unwrap().wipe_requested.is_some());
}

#[tokio::test]
async fn every_call_is_in_the_operator_log_newest_first_and_paged() {
    let t = hub(Some(&[("LAS-AMB-0001", false)]));
    let fleet = bearer(OperatorRole::Fleet, "OPS-0001");
    let privacy = bearer(OperatorRole::Privacy, "IG-0001");
    send(&t.app, "GET", "/admin/devices", "", &[("host", ADMIN_HOST)]).await;
    for _ in 0..3 {
        send(
            &t.app,
            "GET",
            "/admin/devices",
            "",
            &[("host", ADMIN_HOST), ("authorization", &fleet)],
        )
        .await;
    }
    // A wipe of a known unit and of a mistyped one: both say which device.
    for id in ["LAS-AMB-0001", "LAS-AMB-0O01"] {
        let body = format!("{{\"device_id\": \"{id}\"}}");
        send(
            &t.app,
            "POST",
            "/admin/wipe",
            &body,
            &[
                ("host", ADMIN_HOST),
                ("authorization", &fleet),
                ("content-type", "application/json"),
            ],
        )
        .await;
    }
    let q = format!("/admin/audit?patient={}", nhs(3));
    send(
        &t.app,
        "GET",
        &q,
        "",
        &[("host", ADMIN_HOST), ("authorization", &privacy)],
    )
    .await;
    // The fleet role may not read the log.
    let (s, _) = send(
        &t.app,
        "GET",
        "/admin/operator-log",
        "",
        &[("host", ADMIN_HOST), ("authorization", &fleet)],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let mut seen: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let uri = match &cursor {
            Some(c) => format!("/admin/operator-log?limit=2&cursor={c}"),
            None => "/admin/operator-log?limit=2".to_owned(),
        };
        let (s, v) = send(
            &t.app,
            "GET",
            &uri,
            "",
            &[("host", ADMIN_HOST), ("authorization", &privacy)],
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let entries = v["entries"].as_array().unwrap();
        assert!(entries.len() <= 2);
        seen.extend(entries.iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    // No token, 3 × devices, the audit query, the refused log read; the paging calls after
    // the first page started are newer than it and not seen.
    assert!(seen.len() >= 6, "{seen:#?}");
    let last = &seen[seen.len() - 1];
    assert_eq!(last["operator_id"], Value::Null);
    assert_eq!(last["status"], 401);
    assert_eq!(last["refused"], "no_token");
    let audit = seen.iter().find(|e| e["route"] == "/admin/audit").unwrap();
    assert_eq!(audit["operator_id"], "IG-0001");
    assert_eq!(audit["role"], "privacy");
    assert_eq!(audit["query"], format!("patient={}", nhs(3)));
    assert_eq!(audit["method"], "GET");
    let devs: Vec<&Value> = seen
        .iter()
        .filter(|e| e["route"] == "/admin/devices" && e["status"] == 200)
        .collect();
    assert_eq!(devs.len(), 3);
    assert!(devs
        .iter()
        .all(|e| e["operator_id"] == "OPS-0001" && e["operator_name"] == "TEST, OPS-0001"));
    let wipes: Vec<(u64, &str)> = seen
        .iter()
        .filter(|e| e["route"] == "/admin/wipe")
        .map(|e| (e["status"].as_u64().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        wipes,
        [(404, "wipe LAS-AMB-0O01"), (200, "wipe LAS-AMB-0001")],
        "newest first, each naming its device"
    );
    let refused = seen
        .iter()
        .find(|e| e["route"] == "/admin/operator-log")
        .unwrap();
    assert_eq!(
        (refused["status"].as_u64(), refused["refused"].as_str()),
        (Some(403), Some("role"))
    );
    let (s, v) = send(
        &t.app,
        "GET",
        "/admin/operator-log?cursor=zz",
        "",
        &[("host", ADMIN_HOST), ("authorization", &privacy)],
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_cursor"))
    );
}

fn alert_chain(device: &str, n: u64) -> Vec<AuditEvent> {
    let mut prev = GENESIS;
    (1..=n)
        .map(|seq| {
            let mut e = event(
                device,
                seq,
                prev,
                Some(&nhs(0)),
                "555000111222",
                1_700_000_000_100 + (seq as i64 % 4),
            );
            if seq % 2 == 0 {
                e.action = AuditAction::BreakGlass;
                e.break_glass_reason = Some("unconscious".into());
                e.seal(seq, prev).unwrap();
            }
            prev = e.hash;
            e
        })
        .collect()
}

async fn pages(app: &axum::Router, base: &str, list: &str, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let sep = if base.contains('?') { '&' } else { '?' };
        let uri = match &cursor {
            Some(c) => format!("{base}{sep}limit={limit}&cursor={c}"),
            None => format!("{base}{sep}limit={limit}"),
        };
        let (s, v) = call(app, "GET", &uri, "").await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let items = v[list].as_array().unwrap();
        assert!(items.len() <= limit);
        all.extend(items.iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return all,
        }
    }
    panic!("paging never ended");
}

fn ids(v: &[Value]) -> Vec<(String, u64)> {
    v.iter()
        .map(|e| {
            (
                e["device_id"].as_str().unwrap().to_owned(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn alerts_and_audit_queries_page_newest_first_each_event_once() {
    let t = hub(None);
    for d in ["LAS-AMB-0001", "LAS-AMB-0002"] {
        let dev = DeviceId::parse(d).unwrap();
        t.hub.audit.store(&dev, &alert_chain(d, 21)).unwrap();
    }
    // 10 break-glass reads per unit.
    let alerts = pages(&t.app, "/admin/alerts", "alerts", 3).await;
    let mut got = ids(&alerts);
    assert_eq!(got.len(), 20);
    let recorded: Vec<&str> = alerts
        .iter()
        .map(|e| e["recorded"].as_str().unwrap())
        .collect();
    assert!(
        recorded.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {recorded:?}"
    );
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 20, "each once");

    let events = pages(
        &t.app,
        &format!("/admin/audit?patient={}", nhs(0)),
        "events",
        4,
    )
    .await;
    let mut got = ids(&events);
    assert_eq!(got.len(), 42);
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 42, "each once");
    let by_staff = pages(&t.app, "/admin/audit?staff=555000111222", "events", 1000).await;
    assert_eq!(by_staff.len(), 42);

    let (s, v) = call(&t.app, "GET", "/admin/alerts?cursor=00", "").await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_cursor"))
    );
    let (s, v) = call(&t.app, "GET", "/admin/alerts?limit=100000", "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["alerts"].as_array().unwrap().len(),
        20,
        "limit capped, not refused"
    );
    assert_eq!(v["hub_alerts"], json!([]));
}

#[tokio::test]
async fn an_ingest_past_the_limit_is_refused_before_it_is_read() {
    let t = hub(None);
    let fleet = bearer(OperatorRole::Fleet, "OPS-0001");
    let big = (edge_hub::admin::MAX_INGEST_BYTES + 1).to_string();
    let (s, v) = send(
        &t.app,
        "POST",
        "/admin/ingest",
        "",
        &[
            ("host", ADMIN_HOST),
            ("authorization", &fleet),
            ("content-type", "application/x-ndjson"),
            ("content-length", &big),
        ],
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );
}

#[tokio::test]
async fn an_ingest_past_the_json_body_limit_but_under_its_own_is_taken() {
    let t = hub(None);
    let mut body = "\n".repeat(edge_hub::admin::MAX_JSON_BYTES + 500_000);
    body.push_str(&crate::common::bundle(&crate::common::Patient::new(
        &nhs(5),
        "Large",
        "SE1 7EH",
    )));
    body.push('\n');
    let (s, v) = call(&t.app, "POST", "/admin/ingest", &body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["accepted"], 1);
    let big = "x".repeat(edge_hub::admin::MAX_JSON_BYTES + 1);
    let (s, _) = call(&t.app, "POST", "/admin/objection", &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A CRL signed by a throw-away CA whose `nextUpdate` is `next_update_s` from now.
fn crl_pem(next_update_s: i64) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, KeyPair,
        KeyUsagePurpose, SerialNumber,
    };
    let key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = ca.self_signed(&key).unwrap();
    let now = time::OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - time::Duration::days(31),
        next_update: now + time::Duration::seconds(next_update_s),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&cert, &key)
    .unwrap()
    .pem()
    .unwrap()
}

#[tokio::test]
async fn a_crl_past_its_next_update_raises_a_hub_alert_and_the_metric() {
    use edge_hub::admin::{admin_router, AdminState};
    use edge_hub::operator::AdminAuth;
    use std::sync::Arc;
    let t = hub(None);
    let auth = Arc::new(AdminAuth::load(&t.hub.config, t.hub.denylist.clone()).unwrap());
    let app = admin_router(AdminState::open(t.hub.clone(), auth.clone()).unwrap());
    let crl = t.dir.path().join("crl.pem");

    std::fs::write(&crl, crl_pem(86_400)).unwrap();
    let st = auth.check_crl(&crl, edge_hub::server::now());
    assert!(
        !st.expired && st.next_update.is_some() && st.error.is_none(),
        "{st:?}"
    );
    let (_, v) = call(&app, "GET", "/admin/alerts", "").await;
    assert_eq!(v["hub_alerts"], json!([]));

    std::fs::write(&crl, crl_pem(-3_600)).unwrap();
    assert!(auth.check_crl(&crl, edge_hub::server::now()).expired);
    let (s, v) = call(&app, "GET", "/admin/alerts", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["hub_alerts"][0]["kind"], "crl_expired", "{v}");
    assert!(v["hub_alerts"][0]["next_update"].is_string());
    let (_, m) = call(&app, "GET", "/metrics", "").await;
    assert!(
        m.as_str().unwrap().contains("kerbside_hub_crl_expired 1"),
        "{m}"
    );

    std::fs::write(&crl, "not a crl").unwrap();
    let st = auth.check_crl(&crl, edge_hub::server::now());
    assert!(!st.expired && st.error.is_some(), "{st:?}");
}
