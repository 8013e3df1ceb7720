//! `/metrics`: scraped through the admin router after some traffic.

use axum::http::StatusCode;
use edge_proto::sync::FetchOutcome;
use serde_json::json;

use crate::common::{bundle, call, call_raw, hub, nhs, Patient};

/// The value of the sample `line_start` (metric name and labels) in an exposition.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn metrics_expose_ingest_feed_audit_fetch_units_and_admin_requests() {
    let t = hub(None);
    let (s, ctype, text) = call_raw(&t.app, "GET", "/metrics", vec![]).await;
    assert_eq!(s, StatusCode::OK);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert_eq!(sample(&text, "kerbside_hub_feed_head"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "kerbside_hub_units_connected"), Some(0.0));
    assert_eq!(
        sample(
            &text,
            "kerbside_hub_ingest_bundles_total{result=\"accepted\"}"
        ),
        Some(0.0),
        "present before any ingest"
    );

    let (a, b) = (nhs(0), nhs(1));
    let body = format!(
        "{}\n{}\nnot json\n",
        bundle(&Patient {
            allergies: &["Peanut allergy", "Latex allergy"],
            ..Patient::new(&a, "Adebayo", "SE15 4JU")
        }),
        bundle(&Patient::new(&b, "Brown", "N1 9GU"))
    );
    let (s, _) = call(&t.app, "POST", "/admin/ingest", &body).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(&t.app, "POST", "/admin/ingest?feed=nosuch", "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(
        &t.app,
        "POST",
        "/admin/wipe",
        &json!({"device_id": "LAS-AMB-0404"}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    call(&t.app, "GET", "/admin/devices", "").await;
    call(&t.app, "GET", "/admin/devices", "").await;
    // What the sync server records (its units need real certificates; counted directly).
    t.hub.metrics.audit(5, 2, 1);
    t.hub.metrics.fetch(&FetchOutcome::NotFound);
    t.hub.metrics.refused();

    let (_, _, text) = call_raw(&t.app, "GET", "/metrics", vec![]).await;
    let want = [
        ("kerbside_hub_feed_head", 2.0),
        ("kerbside_hub_units_connected", 0.0),
        (
            "kerbside_hub_ingest_bundles_total{result=\"accepted\"}",
            2.0,
        ),
        (
            "kerbside_hub_ingest_bundles_total{result=\"rejected\"}",
            1.0,
        ),
        ("kerbside_hub_ingest_items_total{result=\"accepted\"}", 3.0),
        ("kerbside_hub_ingest_items_total{result=\"rejected\"}", 0.0),
        ("kerbside_hub_audit_events_stored_total", 5.0),
        ("kerbside_hub_audit_duplicates_total", 2.0),
        ("kerbside_hub_audit_problems_total", 1.0),
        ("kerbside_hub_fetches_total{outcome=\"not_found\"}", 1.0),
        ("kerbside_hub_fetches_total{outcome=\"found\"}", 0.0),
        ("kerbside_hub_units_refused_total", 1.0),
        (
            "kerbside_hub_admin_requests_total{route=\"/admin/ingest\",status=\"200\"}",
            1.0,
        ),
        (
            "kerbside_hub_admin_requests_total{route=\"/admin/ingest\",status=\"400\"}",
            1.0,
        ),
        (
            "kerbside_hub_admin_requests_total{route=\"/admin/wipe\",status=\"404\"}",
            1.0,
        ),
        (
            "kerbside_hub_admin_requests_total{route=\"/admin/devices\",status=\"200\"}",
            2.0,
        ),
        (
            "kerbside_hub_admin_requests_total{route=\"/metrics\",status=\"200\"}",
            1.0,
        ),
    ];
    for (name, value) in want {
        assert_eq!(sample(&text, name), Some(value), "{name} in:\n{text}");
    }
    assert!(text.contains("# HELP kerbside_hub_audit_problems"));
    assert!(text.contains("# TYPE kerbside_hub_units_connected gauge"));
    assert!(
        !text.contains(&a) && !text.contains("LAS-AMB-0404"),
        "no NHS number or device id in a label"
    );
}
