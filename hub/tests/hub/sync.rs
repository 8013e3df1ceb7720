//! The sync server over real QUIC on loopback (a fleet CA, a hub bundle and an enrolled unit
//! made by `edge-provision`): a unit syncs, fetches and uploads audit events through the
//! bounded queues, an operator's cohort change reaches it, and a unit that stops reading is
//! held back by flow control instead of making the hub queue without limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_hub::server::{make_endpoint, serve_sync, Hub, INPUT_QUEUE, OUTPUT_QUEUE};
use edge_proto::audit::{AuditAction, AuditOutcome, Purpose};
use edge_proto::ids::StaffRole;
use edge_proto::ids::{CohortSpec, DeviceId, UnitRole};
use edge_proto::sync::frame::FrameDecoder;
use edge_proto::sync::{
    encode_frame, BearerToken, FetchOutcome, FetchRefusal, Hello, InflateDeframer, PullCompression,
    ToHub, ToUnit, PROTOCOL_VERSION,
};
use edge_provision::fleet::{EnrolPlan, Fleet, HubPlan, InitOptions, TokenRequest};
use edge_runtime::HostPort;
use quinn::crypto::rustls::QuicClientConfig;
use tempfile::TempDir;

use crate::common::{bundle, chain, nhs, nhs_number, Patient};

const UNIT: &str = "LAS-AMB-0001";

struct Fixture {
    _dir: TempDir,
    hub: Arc<Hub>,
    server: quinn::Endpoint,
    client: quinn::Endpoint,
    addr: SocketAddr,
    hub_name: String,
    /// A clinical shift token bound to [`UNIT`].
    token: BearerToken,
}

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fleet, a hub serving `patients` made-up patients, and a unit's QUIC client whose
/// per-stream receive window is `unit_window` bytes.
async fn fixture(patients: u32, unit_window: u32) -> Fixture {
    fixture_with(patients, unit_window, |_| {}).await
}

/// [`fixture`], with the hub's config adjusted first.
async fn fixture_with(
    patients: u32,
    unit_window: u32,
    adjust: impl FnOnce(&mut edge_runtime::HubConfig),
) -> Fixture {
    edge_runtime::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let now = edge_hub::server::now();
    let fleet_dir = dir.path().join("fleet");
    Fleet::init(
        &fleet_dir,
        &InitOptions {
            org: "Kerbside hub tests".into(),
            force: false,
        },
        now,
    )
    .unwrap();
    let mut fleet = Fleet::open(&fleet_dir).unwrap();
    let listen = HostPort::parse(&format!("127.0.0.1:{}", free_udp())).unwrap();
    let mut hub_cfg = fleet
        .make_hub_bundle(
            &HubPlan {
                name: "127.0.0.1".into(),
                listen: listen.clone(),
                admin: HostPort::parse("127.0.0.1:9").unwrap(),
                out: dir.path().join("hub"),
                force: true,
                store: Default::default(),
            },
            now,
        )
        .unwrap();
    fleet
        .enrol(
            &EnrolPlan {
                device_id: DeviceId::parse(UNIT).unwrap(),
                role: UnitRole::Vehicle,
                hub: listen.clone(),
                hub_name: "127.0.0.1".into(),
                more_hubs: Vec::new(),
                lan: HostPort::parse("127.0.0.1:9").unwrap(),
                lan_names: vec!["127.0.0.1".into()],
                callsign: None,
                site: None,
                cohorts: vec![CohortSpec::All],
                supervisor: Default::default(),
                replace: true,
                force: true,
                out: dir.path().join("unit"),
            },
            now,
        )
        .unwrap();
    let (token, _) = fleet
        .mint_token(
            &TokenRequest {
                staff_id: "555000111222".into(),
                staff_name: "PARAMEDIC, Test".into(),
                role: StaffRole::Clinical,
                device: Some(DeviceId::parse(UNIT).unwrap()),
                hours: 8,
                org: None,
            },
            now,
        )
        .unwrap();
    drop(fleet);
    adjust(&mut hub_cfg);
    let unit_cfg =
        edge_runtime::UnitConfig::load(&dir.path().join("unit").join("edge.toml")).unwrap();

    let hub = Arc::new(Hub::open(hub_cfg).unwrap());
    let text: Vec<String> = (0..patients)
        .map(|i| {
            let n = nhs(i);
            bundle(&Patient::new(&n, "Tester", "SE15 4JU"))
        })
        .collect();
    crate::common::ingest(&*hub.store, &text.join("\n"), now);
    let (server, _reloader) = make_endpoint(&hub.config).unwrap();
    tokio::spawn(serve_sync(hub.clone(), server.clone()));

    let tls = edge_runtime::tls::unit_client_config(&unit_cfg).unwrap();
    let mut client_cfg =
        quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(unit_window.into());
    client_cfg.transport_config(Arc::new(transport));
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(client_cfg);
    Fixture {
        _dir: dir,
        hub,
        server,
        client,
        addr: listen.socket_addr().unwrap(),
        hub_name: unit_cfg.hub.name.clone(),
        token: BearerToken(token),
    }
}

impl Fixture {
    async fn connect(&self) -> quinn::Connection {
        self.client
            .connect(self.addr, &self.hub_name)
            .unwrap()
            .await
            .unwrap()
    }
}

/// Read the next compressed message of the pull stream.
async fn next_pull(recv: &mut quinn::RecvStream, inflate: &mut InflateDeframer) -> ToUnit {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(m) = inflate.next_message::<ToUnit>().unwrap() {
            return m;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), recv.read(&mut buf))
            .await
            .expect("the hub answers within 20 s")
            .unwrap()
            .expect("the pull stream stays open");
        inflate.push(&buf[..n]).unwrap();
    }
}

/// Read the next plain message of a fetch or audit stream.
async fn next_plain(recv: &mut quinn::RecvStream, dec: &mut FrameDecoder) -> ToUnit {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(m) = dec.next_message::<ToUnit>().unwrap() {
            return m;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), recv.read(&mut buf))
            .await
            .expect("the hub answers within 20 s")
            .unwrap()
            .expect("the stream stays open");
        dec.push(&buf[..n]).unwrap();
    }
}

fn hello() -> ToHub {
    ToHub::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        device_id: DeviceId::parse(UNIT).unwrap(),
        cursor: 0,
        epoch: 0,
        cohort: vec![],
        baseline: None,
        held: vec![],
        health: None,
        compression: Vec::new(),
    })
}

/// Pull until the hub says the unit is live, acknowledging every batch: the records received.
async fn pull_until_live(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    inflate: &mut InflateDeframer,
) -> usize {
    let mut records = 0;
    loop {
        match next_pull(recv, inflate).await {
            ToUnit::Welcome(_) => {}
            ToUnit::Batch(b) => {
                records += b
                    .changes
                    .iter()
                    .filter(|c| format!("{c:?}").starts_with("Upsert"))
                    .count();
                let ack = encode_frame(&ToHub::Ack {
                    upto_batch: b.batch_no,
                })
                .unwrap();
                send.write_all(&ack).await.unwrap();
            }
            ToUnit::Live { .. } => return records,
            ToUnit::DenyList { .. } => {}
            other => panic!("unexpected on the pull stream: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_syncs_fetches_and_uploads_audit_through_the_bounded_queues() {
    let f = fixture(40, 1_250_000).await;
    let conn = f.connect().await;

    // Pull: baseline to live, every batch acknowledged (more batches than the queues hold).
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_frame(&hello()).unwrap())
        .await
        .unwrap();
    let mut inflate = InflateDeframer::new();
    let records = pull_until_live(&mut send, &mut recv, &mut inflate).await;
    assert_eq!(records, 40);
    assert_eq!(f.hub.units_connected(), 1);
    // This hello offers no codec, as a unit from before zstd: the hub sent deflate.
    assert_eq!(inflate.codec(), Some(PullCompression::Deflate));

    // Fetch: one found, one not.
    let (mut fsend, mut frecv) = conn.open_bi().await.unwrap();
    for (id, n) in [(1u64, nhs_number(3)), (2, nhs_number(500))] {
        let m = ToHub::Fetch {
            request_id: id,
            nhs: n,
            token: f.token.clone(),
            purpose: Purpose::Treat,
        };
        fsend.write_all(&encode_frame(&m).unwrap()).await.unwrap();
    }
    let mut dec = FrameDecoder::new();
    let mut outcomes = vec![];
    for _ in 0..2 {
        match next_plain(&mut frecv, &mut dec).await {
            ToUnit::Fetched {
                request_id,
                outcome,
            } => outcomes.push((request_id, matches!(outcome, FetchOutcome::Found { .. }))),
            other => panic!("unexpected on the fetch stream: {other:?}"),
        }
    }
    assert_eq!(outcomes, [(1, true), (2, false)]);

    // Audit: stored, acknowledged.
    let (mut asend, mut arecv) = conn.open_bi().await.unwrap();
    let events = chain(UNIT, 3, &nhs(3), "555000111222");
    asend
        .write_all(&encode_frame(&ToHub::Audit { events }).unwrap())
        .await
        .unwrap();
    let mut adec = FrameDecoder::new();
    match next_plain(&mut arecv, &mut adec).await {
        ToUnit::AuditAck { upto_seq, problems } => {
            assert_eq!(upto_seq, 3);
            assert!(problems.is_empty(), "{problems:?}");
        }
        other => panic!("unexpected on the audit stream: {other:?}"),
    }
    assert_eq!(f.hub.audit.device(UNIT).unwrap().last_seq, 3);

    // An operator's cohort change re-baselines the connected unit.
    f.hub
        .set_cohort(
            &DeviceId::parse(UNIT).unwrap(),
            vec![CohortSpec::parse("postcode:N1").unwrap()],
        )
        .unwrap();
    let mut rebaseline = false;
    loop {
        match next_pull(&mut recv, &mut inflate).await {
            ToUnit::Welcome(w) => {
                rebaseline = format!("{:?}", w.mode).contains("CohortChanged");
            }
            ToUnit::Batch(b) => {
                let ack = encode_frame(&ToHub::Ack {
                    upto_batch: b.batch_no,
                })
                .unwrap();
                send.write_all(&ack).await.unwrap();
            }
            ToUnit::Live { .. } => break,
            other => panic!("unexpected on the pull stream: {other:?}"),
        }
    }
    assert!(rebaseline, "the cohort change reached the session");

    // Live push: an ingest wakes the session.
    let n = nhs(41);
    let text = bundle(&Patient::new(&n, "Late", "N1 9GU"));
    crate::common::ingest(&*f.hub.store, &text, edge_hub::server::now());
    f.hub.notify_head();
    match next_pull(&mut recv, &mut inflate).await {
        ToUnit::Batch(b) => assert!(!b.changes.is_empty()),
        other => panic!("expected the new record pushed: {other:?}"),
    }

    let text = f
        .hub
        .metrics
        .encode(f.hub.units_connected(), f.hub.store.head().unwrap(), false);
    assert!(text.contains("kerbside_hub_units_connected 1"), "{text}");
    assert!(text.contains("kerbside_hub_fetches_total{outcome=\"found\"} 1"));
    assert!(text.contains("kerbside_hub_fetches_total{outcome=\"not_found\"} 1"));
    assert!(text.contains("kerbside_hub_audit_events_stored_total 3"));

    conn.close(0u32.into(), b"done");
    let t0 = Instant::now();
    while f.hub.units_connected() > 0 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.hub.units_connected(), 0);
    f.server.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_that_offers_zstd_is_sent_zstd_and_one_that_offers_an_unknown_codec_deflate() {
    let f = fixture(40, 1_250_000).await;
    for (offered, want) in [
        (vec!["zstd".to_owned()], PullCompression::Zstd),
        (vec!["codec-from-2030".to_owned()], PullCompression::Deflate),
    ] {
        let conn = f.connect().await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let ToHub::Hello(mut h) = hello() else {
            unreachable!()
        };
        h.compression = offered;
        send.write_all(&encode_frame(&ToHub::Hello(h)).unwrap())
            .await
            .unwrap();
        let mut inflate = InflateDeframer::new();
        let records = pull_until_live(&mut send, &mut recv, &mut inflate).await;
        assert_eq!(records, 40);
        assert_eq!(inflate.codec(), Some(want));
        conn.close(0u32.into(), b"done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_that_stops_reading_is_held_back_by_flow_control() {
    // The unit reads nothing on its fetch stream and grants the hub only 8 KiB on it.
    let f = fixture(1, 8 * 1024).await;
    let conn = f.connect().await;
    let (mut fsend, mut frecv) = conn.open_bi().await.unwrap();
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let token = f.token.clone();
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for id in 1u64.. {
                let m = ToHub::Fetch {
                    request_id: id,
                    nhs: nhs_number(100),
                    token: token.clone(),
                    purpose: Purpose::Treat,
                };
                if fsend.write_all(&encode_frame(&m).unwrap()).await.is_err() {
                    return;
                }
                sent.store(id, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    // The unit's writes must stall: the hub stops reading once its queues are full, and QUIC
    // flow control stops the unit. (With unbounded queues the hub read and queued answers for
    // ever, and these writes never stalled.)
    let started = Instant::now();
    let mut last = 0;
    let mut still_since = Instant::now();
    let stalled_at = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sent.load(std::sync::atomic::Ordering::SeqCst);
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if now > 0 && still_since.elapsed() > Duration::from_millis(1_500) {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60) && now < 200_000,
            "the unit was never held back: {now} fetches sent and the hub kept reading"
        );
    };
    // What the hub holds for it is bounded: its queues, plus what fits in the QUIC windows
    // (the hub's receive window for requests, the unit's 8 KiB for answers).
    let queued = (INPUT_QUEUE + 2 * OUTPUT_QUEUE) as u64;
    assert!(stalled_at > queued, "{stalled_at}");

    // The unit reads again: every request is answered, in order, and the flow resumes.
    let mut dec = FrameDecoder::new();
    let mut expect = 1u64;
    while expect <= stalled_at {
        match next_plain(&mut frecv, &mut dec).await {
            ToUnit::Fetched {
                request_id,
                outcome,
            } => {
                assert_eq!(request_id, expect);
                assert!(matches!(outcome, FetchOutcome::NotFound));
                expect += 1;
            }
            other => panic!("unexpected: {other:?}"),
        }
    }
    let resumed = Instant::now();
    while sent.load(std::sync::atomic::Ordering::SeqCst) <= stalled_at
        && resumed.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        sent.load(std::sync::atomic::Ordering::SeqCst) > stalled_at,
        "the unit's writes resume once it reads"
    );
    writer.abort();
    conn.close(0u32.into(), b"done");
    f.server.close(0u32.into(), b"");
}

/// Send fetches on a new fetch stream and read their answers, in order.
async fn fetch_all(
    conn: &quinn::Connection,
    asks: &[(u64, edge_proto::nhs::NhsNumber, BearerToken)],
) -> Vec<FetchOutcome> {
    let (mut fsend, mut frecv) = conn.open_bi().await.unwrap();
    for (id, n, token) in asks {
        let m = ToHub::Fetch {
            request_id: *id,
            nhs: *n,
            token: token.clone(),
            purpose: Purpose::Treat,
        };
        fsend.write_all(&encode_frame(&m).unwrap()).await.unwrap();
    }
    let mut dec = FrameDecoder::new();
    let mut out = vec![];
    for _ in asks {
        match next_plain(&mut frecv, &mut dec).await {
            ToUnit::Fetched { outcome, .. } => out.push(outcome),
            other => panic!("unexpected on the fetch stream: {other:?}"),
        }
    }
    out
}

/// Open the pull stream and sync to live.
async fn sync_live(conn: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_frame(&hello()).unwrap())
        .await
        .unwrap();
    let mut inflate = InflateDeframer::new();
    pull_until_live(&mut send, &mut recv, &mut inflate).await;
    (send, recv)
}

fn hub_device() -> &'static str {
    "hub-127.0.0.1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_without_a_valid_token_fetches_nothing_and_every_fetch_is_audited_at_the_hub() {
    let f = fixture(10, 1_250_000).await;
    let conn = f.connect().await;
    let _pull = sync_live(&conn).await;
    let forged = BearerToken(format!("{}x", f.token.as_str()));
    let out = fetch_all(
        &conn,
        &[
            (1, nhs_number(3), BearerToken::default()),
            (2, nhs_number(3), forged),
            (3, nhs_number(3), BearerToken("not.a.token".into())),
            (4, nhs_number(3), f.token.clone()),
        ],
    )
    .await;
    assert_eq!(
        out[0],
        FetchOutcome::Refused {
            reason: FetchRefusal::NoToken
        }
    );
    assert_eq!(
        out[1],
        FetchOutcome::Refused {
            reason: FetchRefusal::BadToken
        }
    );
    assert_eq!(
        out[2],
        FetchOutcome::Refused {
            reason: FetchRefusal::BadToken
        }
    );
    assert!(matches!(out[3], FetchOutcome::Found { .. }), "{:?}", out[3]);
    // The hub's own trail: three refusals (nothing served) and one read, a valid chain.
    let d = f.hub.audit.device(hub_device()).unwrap();
    assert_eq!(d.last_seq, 4, "{d:?}");
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    let evs = f
        .hub
        .audit
        .since(edge_proto::time::UnixMillis(0), 100)
        .unwrap();
    let hub_evs: Vec<_> = evs
        .iter()
        .filter(|e| e.device_id.as_str() == hub_device())
        .collect();
    assert_eq!(hub_evs.len(), 4);
    let served: Vec<_> = hub_evs
        .iter()
        .filter(|e| e.outcome == AuditOutcome::Ok)
        .collect();
    assert_eq!(served.len(), 1);
    assert_eq!(served[0].staff_id.as_deref(), Some("555000111222"));
    assert_eq!(served[0].client.identity.as_deref(), Some(UNIT));
    assert_eq!(served[0].patient, Some(nhs_number(3)));
    let v = f.hub.audit.verify(hub_device()).unwrap();
    assert_eq!(v["chain_ok"], true, "{v}");
    assert_eq!(v["gaps"].as_array().map(Vec::len), Some(0), "{v}");
    f.server.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_budget_fetches_are_served_and_alerted_past_the_ceiling_refused() {
    let f = fixture_with(10, 1_250_000, |c| {
        c.sync.fetch_unit_per_hour = 2;
        c.sync.fetch_staff_per_hour = 100;
        c.sync.fetch_ceiling_factor = 2;
    })
    .await;
    let conn = f.connect().await;
    let _pull = sync_live(&conn).await;
    let asks: Vec<_> = (0..6u64)
        .map(|i| (i + 1, nhs_number(i as u32), f.token.clone()))
        .collect();
    let out = fetch_all(&conn, &asks).await;
    let found = out
        .iter()
        .filter(|o| matches!(o, FetchOutcome::Found { .. }))
        .count();
    assert_eq!(found, 4, "{out:?}");
    for o in &out[4..] {
        assert_eq!(
            *o,
            FetchOutcome::Refused {
                reason: FetchRefusal::OverCeiling
            }
        );
    }
    let alerts = f.hub.audit.alerts_page(None, 100).unwrap().unwrap().events;
    let reasons: Vec<_> = alerts
        .iter()
        .filter(|e| e.action == AuditAction::Alert)
        .filter_map(|e| e.outcome_reason.clone())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "fetch_over_budget"),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "fetch_ceiling"), "{reasons:?}");
    f.server.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_unit_is_disconnected_with_a_reason() {
    let f = fixture(3, 1_250_000).await;
    let conn = f.connect().await;
    let _pull = sync_live(&conn).await;
    assert_eq!(f.hub.units_connected(), 1);
    let started = Instant::now();
    {
        let mut fleet = Fleet::open(&f._dir.path().join("fleet")).unwrap();
        fleet
            .revoke(
                &DeviceId::parse(UNIT).unwrap(),
                edge_runtime::inventory::RevokeReason::Stolen,
                edge_hub::server::now(),
            )
            .unwrap();
    }
    let e = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("closed within 10 s");
    let took = started.elapsed();
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                u64::from(c.error_code),
                u64::from(edge_hub::server::close_code::REVOKED)
            );
            assert!(
                String::from_utf8_lossy(&c.reason).contains("revoked"),
                "{c:?}"
            );
        }
        other => panic!("closed otherwise: {other:?}"),
    }
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(f.hub.units_connected(), 0);
    f.server.close(0u32.into(), b"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_on_one_certificate_closes_the_older() {
    let f = fixture(3, 1_250_000).await;
    let first = f.connect().await;
    let _p1 = sync_live(&first).await;
    let second = f.connect().await;
    let _p2 = sync_live(&second).await;
    let e = tokio::time::timeout(Duration::from_secs(5), first.closed())
        .await
        .expect("the older closed");
    match e {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(
            u64::from(c.error_code),
            u64::from(edge_hub::server::close_code::SUPERSEDED)
        ),
        other => panic!("closed otherwise: {other:?}"),
    }
    assert_eq!(f.hub.units_connected(), 1);
    // A third session soon after: the two holders are fighting, an alert is recorded.
    let third = f.connect().await;
    let _p3 = sync_live(&third).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), second.closed()).await;
    let alerts = f.hub.audit.alerts_page(None, 100).unwrap().unwrap().events;
    assert!(
        alerts
            .iter()
            .any(|e| e.outcome_reason.as_deref() == Some("duplicate_session")),
        "{alerts:?}"
    );
    f.server.close(0u32.into(), b"");
}
