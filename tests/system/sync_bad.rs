//! Bad input on the sync link: malformed and oversized frames, a wrong protocol version, a
//! batch whose signature fails, a unit the hub does not know. Each is refused with a clear
//! error; the processes stay up; nothing is partially applied.

use std::sync::Arc;
use std::time::Duration;

use edge_proto::ids::DeviceId;
use edge_proto::sync::{encode_frame, Hello, InflateDeframer, RefusalCode, ToHub, ToUnit};
use edge_provision::config::UnitConfig;
use kerbside_tests::fleet::{http, wait_for, Fleet};
use quinn::crypto::rustls::QuicClientConfig;

/// Connect to the hub as the unit whose bundle is in `dir`, with real mutual TLS.
async fn connect(f: &Fleet, dir: &std::path::Path) -> quinn::Connection {
    edge_provision::tls::install_default_provider();
    let cfg = UnitConfig::load(&dir.join("edge.toml")).unwrap();
    let tls = edge_provision::tls::unit_client_config(&cfg).unwrap();
    let quic = QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    ep.connect(f.hub_quic.parse().unwrap(), "127.0.0.1")
        .unwrap()
        .await
        .unwrap()
}

/// Send raw bytes on a fresh stream; return what the hub answered (decoded) or the error.
async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<ToUnit>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    let mut dec = InflateDeframer::new();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    let r = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(n)) => {
                    dec.push(&buf[..n]).map_err(|e| e.to_string())?;
                    while let Some(m) = dec.next_message::<ToUnit>().map_err(|e| e.to_string())? {
                        let refused = matches!(m, ToUnit::Refused { .. });
                        out.push(m);
                        if refused {
                            return Ok::<(), String>(());
                        }
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    match r {
        Ok(Ok(())) => Ok(out),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

fn hello(device: &str, version: u16) -> Vec<u8> {
    encode_frame(&ToHub::Hello(Hello {
        protocol_version: version,
        device_id: DeviceId::parse(device).unwrap(),
        cursor: 0,
        epoch: 0,
        cohort: vec![],
        baseline: None,
        held: vec![],
        health: None,
        compression: Vec::new(),
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_wrong_version_are_refused_and_the_hub_stays_up() {
    let mut f = Fleet::new().unwrap();
    let good = f.enrol("LAS-AMB-0010", &[]).unwrap();
    let rogue = f.enrol("LAS-AMB-0011", &[]).unwrap();
    let data = f.synth("a.ndjson", 500, 3).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    let rogue_dir = f.units[rogue].dir.clone();

    // Oversized frame: a header announcing 100 MiB. Refused from the header alone.
    let conn = connect(&f, &rogue_dir).await;
    let r = exchange(&conn, &(100u32 * 1024 * 1024).to_be_bytes()).await;
    assert!(
        r.is_err() || r.as_ref().is_ok_and(|v| v.is_empty()),
        "{r:?}"
    );
    // Malformed CBOR in a well-sized frame.
    let conn = connect(&f, &rogue_dir).await;
    let mut junk = 16u32.to_be_bytes().to_vec();
    junk.extend([0xffu8; 16]);
    let r = exchange(&conn, &junk).await;
    assert!(
        r.is_err() || r.as_ref().is_ok_and(|v| v.is_empty()),
        "{r:?}"
    );
    // A hello with a protocol version the hub does not speak: refused, with the reason.
    let conn = connect(&f, &rogue_dir).await;
    let r = exchange(&conn, &hello("LAS-AMB-0011", 99)).await.unwrap();
    assert!(
        matches!(
            r.last(),
            Some(ToUnit::Refused {
                code: RefusalCode::UnsupportedVersion,
                ..
            })
        ),
        "{r:?}"
    );
    // A hello naming another device than the certificate: refused.
    let conn = connect(&f, &rogue_dir).await;
    let r = exchange(&conn, &hello("LAS-AMB-0010", 1)).await.unwrap();
    assert!(
        matches!(
            r.last(),
            Some(ToUnit::Refused {
                code: RefusalCode::DeviceMismatch,
                ..
            })
        ),
        "{r:?}"
    );

    // The hub is still up and serves a well-behaved unit.
    let (code, _) = http("GET", &format!("http://{}/healthz", f.admin), None).unwrap();
    assert_eq!(code, 200);
    f.start_unit(good).unwrap();
    tokio::task::block_in_place(|| f.wait_records(good, 500, Duration::from_secs(30))).unwrap();
}

#[test]
fn a_batch_whose_signature_fails_is_refused_whole() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0012", &[]).unwrap();
    let data = f.synth("a.ndjson", 300, 3).unwrap();
    f.ingest_offline(&data).unwrap();
    // The hub signs with a key from another fleet: every batch fails verification at the unit.
    let other = Fleet::new().unwrap();
    std::fs::copy(
        other.fleet.join("record-signing.key"),
        f.hub_dir.join("record-signing.key"),
    )
    .unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    wait_for(Duration::from_secs(20), || {
        let s = f.status(u)?;
        Ok(s["last_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("signature")))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", f.unit_log(u)));
    let s = f.status(u).unwrap();
    assert_eq!(s["records"], 0, "nothing of a refused batch is applied");
    assert_eq!(s["cursor"], 0);
    // The daemon stays up and keeps trying (with back-off).
    std::thread::sleep(Duration::from_secs(1));
    assert!(f.status(u).is_ok());
}

#[test]
fn a_unit_the_hub_does_not_know_is_refused() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0013", &[]).unwrap();
    let data = f.synth("a.ndjson", 100, 3).unwrap();
    f.ingest_offline(&data).unwrap();
    // The hub's fleet registry does not list the unit (e.g. enrolled at another hub).
    let inv_path = f.fleet.join("inventory.json");
    let mut inv: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&inv_path).unwrap()).unwrap();
    inv["units"] = serde_json::json!([]);
    std::fs::write(&inv_path, serde_json::to_string_pretty(&inv).unwrap()).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    wait_for(Duration::from_secs(20), || {
        let s = f.status(u)?;
        Ok(s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not know")))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", f.unit_log(u)));
    assert_eq!(f.status(u).unwrap()["records"], 0);
    let row = f.device_row("LAS-AMB-0013").unwrap();
    assert!(row["last_refusal"].is_string(), "{row}");
}
