//! Real mutual-TLS handshakes over real QUIC on loopback.
//!
//! One hub endpoint (built from the hub bundle with `tls::hub_server_config`) serves every case
//! in a test, and is never restarted: revocation takes effect through `CrlReloader::reload`.
//! For each connection the server reports either the unit identity it read with
//! `tls::peer_identity`, or its handshake error; the client reports the server's greeting or
//! its own error, explained with `tls::explain_quic_close`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edge_proto::ids::{CohortSpec, DeviceId, UnitRole};
use edge_proto::time::UnixMillis;
use edge_provision::config::{HubConfig, UnitConfig};
use edge_provision::fleet::Fleet;
use edge_provision::tls::{self, CrlReloader, UnitIdentity};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

use crate::common::{cli_err, cli_ok, now, s, Workshop};

/// What the hub saw of one connection.
#[derive(Debug)]
enum Seen {
    Unit(UnitIdentity),
    Refused(String),
}

struct Hub {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    reloader: CrlReloader,
}

/// What the hub reports, one entry per connection attempt.
struct Events(mpsc::UnboundedReceiver<Seen>);

impl Events {
    async fn next(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(10), self.0.recv())
            .await
            .expect("the hub saw nothing within 10 s")
            .expect("hub task ended")
    }
}

impl Hub {
    fn start(cfg: &HubConfig) -> (Hub, Events) {
        let (tls_cfg, reloader) = tls::hub_server_config(cfg).expect("hub tls config");
        let quic = QuicServerConfig::try_from(tls_cfg).expect("quic server config");
        let server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (tx, seen) = mpsc::unbounded_channel();
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => {
                            let certs = conn
                                .peer_identity()
                                .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())
                                .expect("a verified peer has certificates");
                            let id = tls::peer_identity(certs[0].as_ref()).expect("identity");
                            let mut s = conn.open_uni().await.unwrap();
                            s.write_all(format!("welcome {}", id.device_id).as_bytes())
                                .await
                                .unwrap();
                            s.finish().unwrap();
                            let _ = tx.send(Seen::Unit(id));
                            // Keep the connection until the client has read and closed it.
                            let _ = conn.closed().await;
                        }
                        Err(e) => {
                            let _ = tx.send(Seen::Refused(e.to_string()));
                        }
                    }
                });
            }
        });
        (
            Hub {
                endpoint,
                addr,
                reloader,
            },
            Events(seen),
        )
    }
}

/// Connect with a rustls client config; return the greeting or a clear error.
async fn connect(hub: &Hub, client: Arc<rustls::ClientConfig>) -> Result<String, String> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let quic = QuicClientConfig::try_from(client).expect("quic client config");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let explain = |e: quinn::ConnectionError| -> String {
        match &e {
            quinn::ConnectionError::ConnectionClosed(c) => {
                let code = u64::from(c.error_code);
                format!(
                    "{e} ({})",
                    tls::explain_quic_close(code).unwrap_or("not a TLS alert")
                )
            }
            _ => e.to_string(),
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(10), async {
        let conn = ep
            .connect(hub.addr, "127.0.0.1")
            .map_err(|e| e.to_string())?
            .await
            .map_err(explain)?;
        // TLS 1.3: the client finishes its handshake before the hub has judged its certificate;
        // a refusal arrives as the connection closing.
        let mut r = conn.accept_uni().await.map_err(explain)?;
        let msg = r.read_to_end(1024).await.map_err(|e| e.to_string())?;
        conn.close(0u32.into(), b"bye");
        Ok(String::from_utf8_lossy(&msg).into_owned())
    })
    .await
    .unwrap_or_else(|_| Err("client timed out".to_owned()));
    ep.wait_idle().await;
    result
}

async fn connect_unit(hub: &Hub, unit_dir: &std::path::Path) -> Result<String, String> {
    let cfg = UnitConfig::load(&unit_dir.join("edge.toml")).expect("edge.toml");
    connect(hub, tls::unit_client_config(&cfg).expect("unit tls config")).await
}

/// Expect the hub to refuse the next connection: both sides must say why.
async fn expect_refused(
    hub: &mut Events,
    client: Result<String, String>,
    server_says: &str,
    client_says: &str,
) {
    let client = client.expect_err("the client should have been refused");
    eprintln!("client: {client}");
    assert!(
        client.contains(client_says),
        "client error {client:?} should mention {client_says:?}"
    );
    match hub.next().await {
        Seen::Refused(e) => {
            eprintln!("hub:    {e}");
            assert!(
                e.contains(server_says),
                "hub error {e:?} should mention {server_says:?}"
            )
        }
        Seen::Unit(id) => panic!("the hub accepted {id:?}"),
    }
}

async fn expect_accepted(
    hub: &mut Events,
    client: Result<String, String>,
    device: &str,
) -> UnitIdentity {
    assert_eq!(
        client.expect("the unit should connect"),
        format!("welcome {device}")
    );
    match hub.next().await {
        Seen::Unit(id) => {
            assert_eq!(id.device_id.as_str(), device);
            id
        }
        Seen::Refused(e) => panic!("the hub refused {device}: {e}"),
    }
}

/// Replace a unit's operational certificate with one of explicit validity (same key).
fn reissue_with_validity(
    w: &Workshop,
    unit_dir: &std::path::Path,
    device: &str,
    nb: UnixMillis,
    na: UnixMillis,
) {
    let fleet = Fleet::open(&w.fleet).unwrap();
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(unit_dir.join("unit.key")).unwrap())
            .unwrap();
    let cert = fleet
        .issue_unit_cert(
            &key,
            &DeviceId::parse(device).unwrap(),
            UnitRole::Vehicle,
            &[CohortSpec::All],
            nb,
            na,
        )
        .unwrap();
    std::fs::write(unit_dir.join("unit.crt"), fleet.chain_pem(&cert)).unwrap();
}

#[tokio::test]
async fn fleet_certificates_over_quic() {
    tls::install_default_provider();
    let w = Workshop::new();
    let hub_cfg = HubConfig::load(&w.hub.join("hub.toml")).unwrap();
    let (hub, mut events) = Hub::start(&hub_cfg);

    // A valid unit connects, and the hub reads its identity and cohorts from the certificate.
    let good = w.enrol(
        "LAS-AMB-0192",
        &["--cohort", "postcode:SE5,SE1", "--cohort", "flagged"],
    );
    let id = expect_accepted(&mut events, connect_unit(&hub, &good).await, "LAS-AMB-0192").await;
    assert_eq!(id.role, UnitRole::Vehicle);
    assert_eq!(
        id.cohorts,
        vec![
            CohortSpec::parse("postcode:SE1,SE5").unwrap(),
            CohortSpec::Flagged
        ]
    );
    let listed = cli_ok(&["list", "--fleet", s(&w.fleet), "--json"]);
    assert!(
        listed.contains(&id.serial),
        "list shows the serial the hub saw"
    );

    // Expired.
    let expired = w.enrol("LAS-AMB-0002", &[]);
    let t = now();
    reissue_with_validity(
        &w,
        &expired,
        "LAS-AMB-0002",
        t.plus_ms(-10 * UnixMillis::DAY),
        t.plus_ms(-UnixMillis::DAY),
    );
    let c = connect_unit(&hub, &expired).await;
    expect_refused(&mut events, c, "expired", "expired").await;

    // Not yet valid.
    let early = w.enrol("LAS-AMB-0003", &[]);
    reissue_with_validity(
        &w,
        &early,
        "LAS-AMB-0003",
        t.plus_ms(UnixMillis::DAY),
        t.plus_ms(8 * UnixMillis::DAY),
    );
    let c = connect_unit(&hub, &early).await;
    expect_refused(&mut events, c, "not valid yet", "not yet valid").await;

    // Another fleet's unit (it trusts our hub, but its certificate is not from our CA).
    let other_fleet = w.path("other-fleet");
    cli_ok(&["ca", "init", "--fleet", s(&other_fleet)]);
    let stranger = w.path("stranger");
    cli_ok(&[
        "enrol",
        "--fleet",
        s(&other_fleet),
        "--device-id",
        "LAS-AMB-0192",
        "--role",
        "vehicle",
        "--hub",
        "127.0.0.1:4433",
        "--hub-name",
        "127.0.0.1",
        "--lan",
        "127.0.0.1:8443",
        "--out",
        s(&stranger),
    ]);
    std::fs::copy(w.hub.join("fleet-ca.crt"), stranger.join("fleet-ca.crt")).unwrap();
    let c = connect_unit(&hub, &stranger).await;
    expect_refused(&mut events, c, "UnknownIssuer", "unknown CA").await;

    // No certificate at all.
    let good_cfg = UnitConfig::load(&good.join("edge.toml")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let ca = edge_provision::keys::load_certs(&good_cfg.tls.ca).unwrap();
    roots.add(ca[0].clone()).unwrap();
    let mut anon = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    anon.alpn_protocols = vec![tls::ALPN_SYNC.to_vec()];
    let c = connect(&hub, Arc::new(anon)).await;
    expect_refused(&mut events, c, "no certificates", "no client certificate").await;

    // Revoked: `revoke`, then reload the CRL on the running hub (same endpoint, no restart).
    let spare = w.enrol("LAS-AMB-0004", &[]);
    expect_accepted(
        &mut events,
        connect_unit(&hub, &spare).await,
        "LAS-AMB-0004",
    )
    .await;
    cli_ok(&[
        "revoke",
        "--fleet",
        s(&w.fleet),
        "--device-id",
        "LAS-AMB-0192",
        "--reason",
        "stolen",
    ]);
    // Before the reload the hub still uses the old list.
    expect_accepted(&mut events, connect_unit(&hub, &good).await, "LAS-AMB-0192").await;
    let summary = hub.reloader.reload().expect("reload");
    assert_eq!(summary.revoked_serials, 1);
    let c = connect_unit(&hub, &good).await;
    expect_refused(&mut events, c, "Revoked", "revoked").await;
    // Other units are unaffected.
    expect_accepted(
        &mut events,
        connect_unit(&hub, &spare).await,
        "LAS-AMB-0004",
    )
    .await;

    // A corrupt CRL is refused by reload, and the hub keeps the list it has.
    let crl = w.fleet.join("crl.pem");
    let saved = std::fs::read(&crl).unwrap();
    std::fs::write(
        &crl,
        b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let e = hub.reloader.reload().expect_err("corrupt CRL");
    assert!(e.to_string().contains("crl.pem"), "{e}");
    let c = connect_unit(&hub, &good).await;
    expect_refused(&mut events, c, "Revoked", "revoked").await;
    // A CRL signed by another fleet is refused too.
    std::fs::copy(other_fleet.join("crl.pem"), &crl).unwrap();
    let e = hub.reloader.reload().expect_err("foreign CRL");
    assert!(e.to_string().contains("not signed by a CA"), "{e}");
    std::fs::write(&crl, saved).unwrap();
    hub.reloader.reload().unwrap();

    // A revoked unit cannot renew.
    let e = cli_err(&[
        "renew",
        "--fleet",
        s(&w.fleet),
        "--device-id",
        "LAS-AMB-0192",
    ]);
    assert!(e.contains("revoked"), "{e}");

    // Renewal: the expired unit renews (same key) and connects again with a new serial.
    let before = edge_provision::tls::peer_identity(
        edge_provision::keys::load_certs(&expired.join("unit.crt")).unwrap()[0].as_ref(),
    )
    .unwrap();
    cli_ok(&[
        "renew",
        "--fleet",
        s(&w.fleet),
        "--device-id",
        "LAS-AMB-0002",
    ]);
    let after = expect_accepted(
        &mut events,
        connect_unit(&hub, &expired).await,
        "LAS-AMB-0002",
    )
    .await;
    assert_ne!(after.serial, before.serial);
    assert!(after.not_after > now().plus_ms(6 * UnixMillis::DAY));

    // Replace: re-enrolling the revoked device id gives a working unit; the old bundle stays out.
    let replacement = w.path("replacement");
    cli_ok(&[
        "enrol",
        "--fleet",
        s(&w.fleet),
        "--device-id",
        "LAS-AMB-0192",
        "--role",
        "vehicle",
        "--hub",
        "127.0.0.1:4433",
        "--hub-name",
        "127.0.0.1",
        "--lan",
        "127.0.0.1:8443",
        "--replace",
        "--out",
        s(&replacement),
    ]);
    hub.reloader.reload().unwrap();
    expect_accepted(
        &mut events,
        connect_unit(&hub, &replacement).await,
        "LAS-AMB-0192",
    )
    .await;
    let c = connect_unit(&hub, &good).await;
    expect_refused(&mut events, c, "Revoked", "revoked").await;

    hub.endpoint.close(0u32.into(), b"done");
}

#[tokio::test]
async fn unit_refuses_a_hub_from_another_fleet() {
    tls::install_default_provider();
    let ours = Workshop::new();
    let theirs = Workshop::new();
    let hub_cfg = HubConfig::load(&theirs.hub.join("hub.toml")).unwrap();
    let (hub, mut events) = Hub::start(&hub_cfg);
    let unit = ours.enrol("LAS-AMB-0100", &[]);
    let c = connect_unit(&hub, &unit)
        .await
        .expect_err("unit must refuse a foreign hub");
    assert!(c.contains("UnknownIssuer") || c.contains("unknown"), "{c}");
    match events.next().await {
        Seen::Refused(e) => assert!(e.contains("error 48") && e.contains("UnknownIssuer"), "{e}"),
        Seen::Unit(id) => panic!("accepted {id:?}"),
    }
}

#[test]
fn lan_server_config_from_a_bundle() {
    let w = Workshop::new();
    let unit = w.enrol("LAS-KSK-0001", &["--lan-name", "kiosk-1.lan"]);
    let cfg = UnitConfig::load(&unit.join("edge.toml")).unwrap();
    let lan = tls::lan_server_config(&cfg).unwrap();
    assert_eq!(
        lan.alpn_protocols,
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    );
    let text = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage",
            "-in",
            s(&unit.join("lan.crt")),
        ])
        .output();
    if let Ok(o) = text {
        if o.status.success() {
            let t = String::from_utf8_lossy(&o.stdout);
            assert!(
                t.contains("IP Address:127.0.0.1") && t.contains("DNS:kiosk-1.lan"),
                "{t}"
            );
            assert!(
                t.contains("Server Authentication") && !t.contains("Client"),
                "{t}"
            );
        }
    }
    let unit_cfg = tls::unit_client_config(&cfg).unwrap();
    assert_eq!(unit_cfg.alpn_protocols, vec![tls::ALPN_SYNC.to_vec()]);
}

/// A whole TLS handshake in memory between `client` (for server name `name`) and `server`.
/// Returns the first side's error, prefixed `client:` or `server:`.
fn handshake_in_memory(
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    name: &str,
) -> Result<(), String> {
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut c = rustls::ClientConnection::new(client, name).unwrap();
    let mut s = rustls::ServerConnection::new(server).unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets()
                .map_err(|e| format!("server: {e}"))?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    Err("the handshake made no progress".into())
}

/// The same server config with the hub link's ALPN, so a refusal is about the certificate and
/// not the application protocol (a thief with a unit's `lan.key` would set it too).
fn speaking_sync(server: Arc<rustls::ServerConfig>) -> Arc<rustls::ServerConfig> {
    let mut s = (*server).clone();
    s.alpn_protocols = vec![tls::ALPN_SYNC.to_vec()];
    Arc::new(s)
}

#[test]
fn hub_and_lan_certificates_cannot_stand_in_for_each_other() {
    tls::install_default_provider();
    let w = Workshop::new();
    let hub_cfg = HubConfig::load(&w.hub.join("hub.toml")).unwrap();
    // Two vehicles on the same LAN address (every ambulance uses 192.168.50.1 in the field;
    // here both use 127.0.0.1, also the hub's name).
    let a_dir = w.enrol("LAS-AMB-0192", &[]);
    let b_dir = w.enrol("LAS-AMB-0001", &[]);
    let a = UnitConfig::load(&a_dir.join("edge.toml")).unwrap();
    let b = UnitConfig::load(&b_dir.join("edge.toml")).unwrap();
    let a_name = a.lan.name.clone().unwrap();
    assert_eq!(a_name, "las-amb-0192.units.kerbside.invalid");
    let a_id = DeviceId::parse("LAS-AMB-0192").unwrap();
    let (hub_sync, _reloader) = tls::hub_server_config(&hub_cfg).unwrap();
    let hub_admin = tls::hub_admin_server_config(&hub_cfg).unwrap();
    let lan_a = tls::lan_server_config(&a).unwrap();
    let lan_b = tls::lan_server_config(&b).unwrap();

    // The markers are in the certificates.
    let role = |p: &std::path::Path| {
        edge_provision::identity::server_role(
            edge_provision::keys::load_certs(p).unwrap()[0].as_ref(),
        )
        .unwrap()
    };
    assert_eq!(
        role(&hub_cfg.tls.cert),
        edge_provision::identity::ServerRole::Hub("127.0.0.1".into())
    );
    assert_eq!(
        role(a.lan.cert.as_ref().unwrap()),
        edge_provision::identity::ServerRole::Lan(a_id.clone())
    );

    // The unit's hub link: the real hub passes (name and marker) ...
    let to_hub = tls::unit_client_config(&a).unwrap();
    handshake_in_memory(to_hub.clone(), hub_sync.clone(), "127.0.0.1").unwrap();
    // ... a unit's LAN certificate does not, though it is from the fleet CA, serverAuth, and
    // names the same address.
    let e =
        handshake_in_memory(to_hub.clone(), speaking_sync(lan_b.clone()), "127.0.0.1").unwrap_err();
    assert!(
        e.starts_with("client:") && e.contains("not the hub") && e.contains("LAS-AMB-0001"),
        "{e}"
    );
    // The existing server-name check still applies.
    let e = handshake_in_memory(to_hub, hub_sync, "hub.elsewhere.example").unwrap_err();
    assert!(
        e.starts_with("client:") && e.contains("not valid for name"),
        "{e}"
    );

    // A tablet talking to unit A: A's LAN certificate passes by its DNS name (and by its
    // address, the marker still naming A) ...
    let to_a = tls::lan_client_config(&a.tls.ca, &a_id).unwrap();
    handshake_in_memory(to_a.clone(), lan_a.clone(), &a_name).unwrap();
    handshake_in_memory(to_a.clone(), lan_a, "127.0.0.1").unwrap();
    // ... unit B's does not, by name or by address ...
    let e = handshake_in_memory(to_a.clone(), lan_b.clone(), &a_name).unwrap_err();
    assert!(
        e.starts_with("client:") && e.contains("not valid for name"),
        "{e}"
    );
    let e = handshake_in_memory(to_a.clone(), lan_b, "127.0.0.1").unwrap_err();
    assert!(
        e.starts_with("client:")
            && e.contains("not unit LAS-AMB-0192")
            && e.contains("LAS-AMB-0001"),
        "{e}"
    );
    // ... nor does the hub's certificate, even for the address it names.
    let e = handshake_in_memory(to_a.clone(), hub_admin.clone(), "127.0.0.1").unwrap_err();
    assert!(
        e.starts_with("client:") && e.contains("hub's certificate"),
        "{e}"
    );
    let e = handshake_in_memory(to_a, hub_admin, &a_name).unwrap_err();
    assert!(
        e.starts_with("client:") && e.contains("not valid for name"),
        "{e}"
    );

    // A LAN certificate renewed from an inventory record keeps its name and marker.
    cli_ok(&[
        "renew",
        "--fleet",
        s(&w.fleet),
        "--device-id",
        "LAS-AMB-0192",
    ]);
    let a = UnitConfig::load(&a_dir.join("edge.toml")).unwrap();
    let to_a = tls::lan_client_config(&a.tls.ca, &a_id).unwrap();
    handshake_in_memory(to_a, tls::lan_server_config(&a).unwrap(), &a_name).unwrap();
}
