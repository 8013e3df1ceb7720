//! Certificates renew themselves over the sync (issue 16, item 11), with the real binaries: a
//! unit whose certificate is two thirds through its life asks the hub, which re-issues it with
//! the fleet's renewal CA; the unit keeps it and, after the old certificate has expired,
//! reconnects with the new one; revoking the unit then shuts it out although the fleet's CRL
//! knows nothing of the renewed certificate (revocation is by device).

use std::process::Command;
use std::time::{Duration, Instant};

use edge_proto::ids::{DeviceId, UnitRole};
use edge_proto::time::UnixMillis;
use kerbside_tests::bin;
use kerbside_tests::fleet::{now_ms, run_ok, wait_for, Fleet};

const ID: &str = "LAS-AMB-0301";
/// How long the unit's first certificate has left when the test starts.
const LEFT_MS: i64 = 20_000;

#[test]
fn a_unit_renews_its_certificate_over_the_sync_and_a_revoked_one_stays_out() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol(ID, &[]).unwrap();
    let unit_dir = f.units[u].dir.clone();
    let cert_path = unit_dir.join("unit.crt");

    // Give the unit a certificate from the fleet's issuing CA that expires in 20 s (so it is
    // long past two thirds of its 7 days), for its own key.
    let enrolled = edge_runtime::keys::load_certs(&cert_path).unwrap();
    let ident = edge_runtime::identity::peer_identity(enrolled[0].as_ref()).unwrap();
    let old_not_after = UnixMillis(now_ms() + LEFT_MS);
    {
        let fleet = edge_provision::fleet::Fleet::open(&f.fleet).unwrap();
        let key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(unit_dir.join("unit.key")).unwrap())
                .unwrap();
        let issued = fleet
            .issue_unit_cert(
                &key,
                &DeviceId::parse(ID).unwrap(),
                UnitRole::Vehicle,
                &ident.cohorts,
                old_not_after.plus_ms(-7 * UnixMillis::DAY),
                old_not_after,
            )
            .unwrap();
        std::fs::write(&cert_path, fleet.chain_pem(&issued)).unwrap();
    }
    let old_serial = edge_runtime::identity::peer_identity(
        edge_runtime::keys::load_certs(&cert_path).unwrap()[0].as_ref(),
    )
    .unwrap()
    .serial;

    f.start_hub().unwrap();
    f.start_unit(u).unwrap();

    // The unit asks at once (it is due) and keeps what the hub sends.
    let t = Instant::now();
    wait_for(Duration::from_secs(60), || {
        Ok(!f.status(u)?["cert_renewed_at"].is_null())
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: not renewed\n--- unit\n{}\n--- hub\n{}",
            f.unit_log(u),
            f.hub_log()
        )
    });
    eprintln!("link up → certificate renewed: {:?}", t.elapsed());
    let status = f.status(u).unwrap();
    assert!(status["cert_renewal_error"].is_null(), "{status}");
    let expires_ms = UnixMillis::parse_rfc3339(status["cert_expires_at"].as_str().unwrap())
        .unwrap()
        .0;
    assert!(
        expires_ms > now_ms() + 6 * UnixMillis::DAY,
        "renewed for 7 days: {status}"
    );

    // On disk: the new certificate and the renewal CA, for the same key and the same names.
    let chain = edge_runtime::keys::load_certs(&cert_path).unwrap();
    assert_eq!(chain.len(), 2, "leaf and renewal CA");
    let fresh = edge_runtime::identity::peer_identity(chain[0].as_ref()).unwrap();
    assert_eq!(fresh.device_id, ident.device_id);
    assert_eq!(fresh.cohorts, ident.cohorts);
    assert_ne!(fresh.serial, old_serial);
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
    let (_, old) = x509_parser::parse_x509_certificate(enrolled[0].as_ref()).unwrap();
    assert_eq!(leaf.public_key().raw, old.public_key().raw, "same key");
    assert!(
        leaf.issuer().to_string().contains("renewal CA"),
        "{}",
        leaf.issuer()
    );
    // The hub recorded it.
    let row = f.device_row(ID).unwrap();
    assert_eq!(
        row["cert_renewed"]["serial"],
        fresh.serial.as_str(),
        "{row}"
    );

    // Once the old certificate has expired, a new connection can only be made with the new
    // one: restart the hub and the unit is back.
    let wait = (old_not_after.0 + 2_000 - now_ms()).max(0);
    std::thread::sleep(Duration::from_millis(u64::try_from(wait).unwrap()));
    f.stop_hub(false).unwrap();
    f.start_hub().unwrap();
    wait_for(Duration::from_secs(60), || {
        Ok(f.device_row(ID)?["connected"] == true && f.status(u)?["link"] == "up")
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: not reconnected with the renewed certificate\n--- unit\n{}\n--- hub\n{}",
            f.unit_log(u),
            f.hub_log()
        )
    });
    assert!(
        f.unit_log(u).contains("presenting the renewed certificate"),
        "{}",
        f.unit_log(u)
    );

    // Revoked: the fleet's CRL does not list the renewed serial (the renewal CA publishes
    // none), yet the hub closes the unit's connection and refuses it after, by device.
    run_ok(
        Command::new(bin("edge-provision").unwrap())
            .args(["revoke", "--fleet"])
            .arg(&f.fleet)
            .args(["--device-id", ID]),
    )
    .unwrap();
    wait_for(Duration::from_secs(30), || {
        let row = f.device_row(ID)?;
        Ok(row["connected"] == false && row["revoked"] == true)
    })
    .unwrap_or_else(|e| panic!("{e}: still connected: {}", f.hub_log()));
    let refused_before = f.hub_log().matches("refused a unit").count();
    wait_for(Duration::from_secs(30), || {
        Ok(f.hub_log().matches("refused a unit").count() > refused_before)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: the revoked unit was not refused again: {}",
            f.hub_log()
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    let row = f.device_row(ID).unwrap();
    assert_eq!(row["connected"], false, "{row}");
    assert_eq!(f.status(u).unwrap()["link"], "down");
}
