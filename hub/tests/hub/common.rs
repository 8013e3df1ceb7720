//! Shared helpers: a hub on a temporary directory, FHIR bundles of made-up patients, audit
//! chains, a fleet inventory file, and one-request calls into the admin router (as an operator
//! of the route's role, with the admin listener's Host, unless told otherwise).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use edge_hub::server::Hub;
use edge_hub::store::{FeedStore, IngestReport};
use edge_proto::audit::{
    AccessData, AuditAction, AuditEvent, AuditOutcome, ClientInfo, Hash32, Purpose, AUDIT_SCHEMA,
    GENESIS,
};
use edge_proto::ids::{CohortSpec, DeviceId, StaffRole, UnitRole};
use edge_proto::nhs::NhsNumber;
use edge_proto::time::UnixMillis;
use edge_proto::token::{sign_operator, OperatorClaims, OperatorRole};
use edge_runtime::hostport::HostPort;
use edge_runtime::inventory::{CertRecord, Inventory, UnitRecord, INVENTORY_FORMAT};
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt as _;

/// The admin listener of every test hub (`admin` in its hub.toml).
pub const ADMIN_HOST: &str = "127.0.0.1:8443";

/// The test fleet's operator-token key pair (one per test process): (private PEM, public).
fn operator_key() -> &'static (String, [u8; 32]) {
    static KEY: OnceLock<(String, [u8; 32])> = OnceLock::new();
    KEY.get_or_init(|| {
        let k = edge_runtime::keys::generate_ed25519().unwrap();
        (k.private_pem, k.public)
    })
}

/// An operator token of `role` for `operator_id`, valid for an hour from now.
pub fn operator_token(role: OperatorRole, operator_id: &str) -> String {
    let key = edge_runtime::keys::parse_ed25519_signing(operator_key().0.as_bytes()).unwrap();
    let now = edge_hub::server::now();
    sign_operator(
        &OperatorClaims {
            v: 1,
            token_id: format!(
                "{:032x}",
                u128::from(now.0 as u64) << 16 | u128::from(role == OperatorRole::Privacy)
            ),
            operator_id: operator_id.into(),
            operator_name: format!("TEST, {operator_id}"),
            role,
            issued_at: UnixMillis(now.0 - 60_000),
            expires_at: UnixMillis(now.0 + 3_600_000),
        },
        &key,
    )
}

/// The role a route needs (fleet for anything unknown).
pub fn role_for(uri: &str) -> OperatorRole {
    let path = uri.split('?').next().unwrap_or(uri);
    edge_hub::operator::required_role(path).unwrap_or(OperatorRole::Fleet)
}

/// A fixed "now" for store tests (2026-11-27T00:00:00Z).
pub const T0: UnixMillis = UnixMillis(1_795_737_600_000);

/// The `n`-th valid NHS number of the 999 test range (mod-11 check digit).
pub fn nhs(n: u32) -> String {
    let mut found = 0;
    let mut body = 999_000_000u64;
    loop {
        let digits: Vec<u64> = body
            .to_string()
            .bytes()
            .map(|b| u64::from(b - b'0'))
            .collect();
        let sum: u64 = digits.iter().zip((2..=10).rev()).map(|(d, w)| d * w).sum();
        let check = match 11 - sum % 11 {
            11 => Some(0),
            10 => None,
            c => Some(c),
        };
        if let Some(c) = check {
            if found == n {
                let s = format!("{body}{c}");
                assert!(NhsNumber::parse(&s).is_ok(), "{s}");
                return s;
            }
            found += 1;
        }
        body += 1;
    }
}

pub fn nhs_number(n: u32) -> NhsNumber {
    NhsNumber::parse(&nhs(n)).unwrap()
}

/// A patient for [`bundle`].
#[derive(Debug, Clone)]
pub struct Patient<'a> {
    pub nhs: &'a str,
    /// A superseded number the source still lists (`use: old`).
    pub former: Option<&'a str>,
    pub family: &'a str,
    pub postcode: &'a str,
    /// The registered GP practice's ODS code.
    pub gp: Option<&'a str>,
    /// Allergy texts (each a coded item with its own record id).
    pub allergies: &'a [&'a str],
}

impl<'a> Patient<'a> {
    pub fn new(nhs: &'a str, family: &'a str, postcode: &'a str) -> Self {
        Patient {
            nhs,
            former: None,
            family,
            postcode,
            gp: None,
            allergies: &["Peanut allergy"],
        }
    }
}

/// One FHIR R4 collection bundle (one line of JSON): the patient, the recording trust, and
/// one AllergyIntolerance per allergy.
pub fn bundle(p: &Patient<'_>) -> String {
    let mut ids = vec![];
    if let Some(f) = p.former {
        ids.push(json!({"use": "old", "system": "https://fhir.nhs.uk/Id/nhs-number", "value": f}));
    }
    ids.push(
        json!({"use": "official", "system": "https://fhir.nhs.uk/Id/nhs-number", "value": p.nhs}),
    );
    let mut patient = json!({
        "resourceType": "Patient",
        "id": format!("pat-{}", p.nhs),
        "meta": {"lastUpdated": "2026-11-20T10:00:00Z"},
        "identifier": ids,
        "name": [{"use": "official", "family": p.family, "given": ["Test"]}],
        "gender": "female",
        "birthDate": "1970-01-01",
        "address": [{"use": "home", "line": ["1 Test Street"], "city": "London", "postalCode": p.postcode}]
    });
    let mut entries = vec![];
    if let Some(gp) = p.gp {
        patient["generalPractitioner"] = json!([{"reference": "urn:uuid:gp-org"}]);
        entries.push(json!({
            "fullUrl": "urn:uuid:gp-org",
            "resource": {"resourceType": "Organization", "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": gp}], "name": "Test Practice"}
        }));
    }
    entries.insert(
        0,
        json!({"fullUrl": format!("urn:uuid:pat-{}", p.nhs), "resource": patient}),
    );
    entries.push(json!({
        "fullUrl": "urn:uuid:trust-org",
        "resource": {"resourceType": "Organization", "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RQM"}], "name": "Test Trust"}
    }));
    for (i, a) in p.allergies.iter().enumerate() {
        entries.push(json!({
            "fullUrl": format!("urn:uuid:alg-{}-{i}", p.nhs),
            "resource": {
                "resourceType": "AllergyIntolerance",
                "meta": {"lastUpdated": "2026-11-20T10:00:00Z"},
                "identifier": [{"system": "https://trust.example/allergy", "value": format!("A-{}-{i}", p.nhs)}],
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
                "criticality": "high",
                "code": {"text": a},
                "patient": {"reference": format!("urn:uuid:pat-{}", p.nhs)},
                "recorder": {"reference": "urn:uuid:trust-org"}
            }
        }));
    }
    json!({"resourceType": "Bundle", "type": "collection", "entry": entries}).to_string()
}

/// Ingest NDJSON text at `now` with no feed options; the report.
pub fn ingest(store: &dyn FeedStore, text: &str, now: UnixMillis) -> IngestReport {
    let lines = edge_hub::admin::bundles(text);
    store
        .ingest(lines, now, 1, &Default::default(), &mut |_, _| {})
        .unwrap()
}

/// A hub (store, audit repository, keys, config) on a temporary directory: `hub.toml` with
/// one feed `community` (source Y03124), and a fleet inventory file when `units` is given.
pub struct TestHub {
    pub dir: TempDir,
    pub hub: Arc<Hub>,
    pub app: Router,
}

pub fn hub(units: Option<&[(&str, bool)]>) -> TestHub {
    let dir = tempfile::tempdir().unwrap();
    let key = edge_runtime::keys::generate_ed25519().unwrap();
    std::fs::write(dir.path().join("record.key"), &key.private_pem).unwrap();
    std::fs::write(
        dir.path().join("operator.pub"),
        edge_runtime::keys::ed25519_public_pem(&operator_key().1),
    )
    .unwrap();
    let inventory = match units {
        Some(units) => {
            write_inventory(&dir.path().join("inventory.json"), units);
            "inventory = \"inventory.json\"\n"
        }
        None => "",
    };
    let text = format!(
        r#"name = "hub.test"
listen = "127.0.0.1:4433"
admin = "127.0.0.1:8443"
data_dir = "data"
{inventory}
[tls]
ca = "ca.pem"
cert = "hub.pem"
key = "hub.key"
crl = "crl.pem"

[keys]
record_signing = "record.key"
token_signing = "token.key"
token_verify = "token.pub"
operator_verify = "operator.pub"

[[feeds]]
name = "community"
source = "Y03124"
"#
    );
    let file = dir.path().join("hub.toml");
    std::fs::write(&file, &text).unwrap();
    let cfg = edge_runtime::HubConfig::parse(&text, &file).unwrap();
    let hub = Arc::new(Hub::open(cfg).unwrap());
    let app = edge_hub::admin::router(hub.clone());
    TestHub { dir, hub, app }
}

/// Write a fleet inventory listing `units` (device id, revoked).
pub fn write_inventory(path: &Path, units: &[(&str, bool)]) {
    let cert = CertRecord {
        serial: "01".into(),
        not_before: UnixMillis(0),
        not_after: UnixMillis(4_000_000_000_000),
    };
    let inv = Inventory {
        format: INVENTORY_FORMAT,
        fleet_id: "test-fleet".into(),
        created_at: UnixMillis(0),
        crl_number: 1,
        revision: 1,
        hubs: vec![],
        units: units
            .iter()
            .map(|(id, revoked)| UnitRecord {
                device_id: DeviceId::parse(id).unwrap(),
                role: UnitRole::Vehicle,
                callsign: None,
                site: None,
                cohorts: vec![CohortSpec::All],
                hub: HostPort::parse("127.0.0.1:4433").unwrap(),
                hub_name: "hub.test".into(),
                lan: HostPort::parse("127.0.0.1:8080").unwrap(),
                lan_names: vec!["localhost".into()],
                bundle_dir: "unit".into(),
                public_key: String::new(),
                lan_public_key: String::new(),
                cert: cert.clone(),
                lan_cert: cert.clone(),
                certs: vec![cert.clone()],
                enrolled_at: UnixMillis(0),
                renewed_at: None,
                revoked_at: revoked.then_some(UnixMillis(1)),
            })
            .collect(),
        revoked: vec![],
    };
    std::fs::write(path, serde_json::to_vec_pretty(&inv).unwrap()).unwrap();
}

/// Send one request to the admin router: (status, body as JSON, or as a JSON string when it
/// is not JSON).
pub async fn call(app: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let (status, _, text) = call_raw(app, method, uri, body.as_bytes().to_vec()).await;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// Send one request as an operator of the route's role (Host the admin listener, POST bodies
/// as JSON): (status, content type, body text).
pub async fn call_raw(
    app: &Router,
    method: &str,
    uri: &str,
    body: Vec<u8>,
) -> (StatusCode, String, String) {
    let token = operator_token(role_for(uri), "OPS-TEST");
    let auth = format!("Bearer {token}");
    let mut headers = vec![("host", ADMIN_HOST), ("authorization", auth.as_str())];
    if method == "POST" {
        headers.push(("content-type", "application/json"));
    }
    call_with(app, method, uri, body, &headers).await
}

/// Send one request with exactly these headers: (status, content type, body text).
pub async fn call_with(
    app: &Router,
    method: &str,
    uri: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (StatusCode, String, String) {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Body::from(body)).unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, ctype, String::from_utf8_lossy(&bytes).into_owned())
}

/// An audit event of `device` about `patient` by `staff`, recorded at `recorded`, sealed at
/// `seq` after `prev`.
pub fn event(
    device: &str,
    seq: u64,
    prev: Hash32,
    patient: Option<&str>,
    staff: &str,
    recorded: i64,
) -> AuditEvent {
    let mut e = AuditEvent {
        schema: AUDIT_SCHEMA,
        event_id: edge_proto::audit::uuid_from_bytes([seq as u8; 16]),
        device_id: DeviceId::parse(device).unwrap(),
        seq: 0,
        prev_hash: GENESIS,
        hash: Hash32::default(),
        recorded: UnixMillis(recorded),
        clock_offset_ms: 0,
        action: AuditAction::Read,
        outcome: AuditOutcome::Ok,
        outcome_reason: None,
        staff_id: Some(staff.into()),
        staff_name: None,
        role: Some(StaffRole::Clinical),
        org_ods: None,
        auth: None,
        purpose: Purpose::Treat,
        break_glass_reason: None,
        patient: patient.map(|p| NhsNumber::parse(p).unwrap()),
        data: AccessData::default(),
        client: ClientInfo::default(),
        incident_ref: None,
        offline: false,
    };
    e.seal(seq, prev).unwrap();
    e
}

/// A well-formed chain of `n` events (seq 1..=n) of `device`, about `patient` by `staff`.
pub fn chain(device: &str, n: u64, patient: &str, staff: &str) -> Vec<AuditEvent> {
    let mut prev = GENESIS;
    (1..=n)
        .map(|seq| {
            let e = event(
                device,
                seq,
                prev,
                Some(patient),
                staff,
                1_700_000_000_000 + seq as i64,
            );
            prev = e.hash;
            e
        })
        .collect()
}
