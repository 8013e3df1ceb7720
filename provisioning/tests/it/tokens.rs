//! Shift tokens minted by `edge-provision token` and verified as a unit verifies them, with the
//! token-verify key from the unit's bundle.

use edge_proto::ids::{DeviceId, StaffRole};
use edge_proto::time::UnixMillis;
use edge_proto::token::{verify, TokenError};
use edge_provision::config::UnitConfig;

use crate::common::{cli_err, cli_ok, now, s, Workshop};

fn mint(w: &Workshop, role: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "token",
        "--fleet",
        s(&w.fleet),
        "--staff-id",
        "555000111222",
        "--name",
        "PARAMEDIC, Test",
        "--role",
        role,
    ];
    args.extend_from_slice(extra);
    let out = cli_ok(&args);
    out.lines().last().unwrap().to_owned()
}

#[test]
fn tokens_from_the_cli() {
    let w = Workshop::new();
    let unit = w.enrol("LAS-AMB-0192", &[]);
    let cfg = UnitConfig::load(&unit.join("edge.toml")).unwrap();
    let pk = edge_provision::load_ed25519_public(&cfg.keys.token_verify).unwrap();
    let me = DeviceId::parse("LAS-AMB-0192").unwrap();
    let other = DeviceId::parse("LAS-AMB-0001").unwrap();

    // Valid.
    let t = mint(&w, "clinical", &["--hours", "12", "--org", "R1F"]);
    let c = verify(&t, &pk, now(), &me).unwrap();
    assert_eq!(
        (c.staff_id.as_str(), c.staff_name.as_str(), c.role),
        ("555000111222", "PARAMEDIC, Test", StaffRole::Clinical)
    );
    assert_eq!(c.org_ods.unwrap().as_str(), "R1F");
    assert_eq!(c.expires_at.0 - c.issued_at.0, 12 * UnixMillis::HOUR);
    assert!(
        verify(&t, &pk, now(), &other).is_ok(),
        "an unbound token works on any unit"
    );

    // Expired (the unit's clock is past its end).
    assert!(matches!(
        verify(&t, &pk, c.expires_at.plus_ms(1), &me),
        Err(TokenError::Expired { .. })
    ));

    // Wrong unit.
    let bound = mint(&w, "admin", &["--device-id", "LAS-AMB-0192"]);
    assert!(verify(&bound, &pk, now(), &me).is_ok());
    assert!(matches!(
        verify(&bound, &pk, now(), &other),
        Err(TokenError::WrongUnit { .. })
    ));

    // Forged: minted by another fleet.
    let theirs = Workshop::new();
    let forged = mint(&theirs, "clinical", &[]);
    assert_eq!(
        verify(&forged, &pk, now(), &me),
        Err(TokenError::BadSignature)
    );

    // Refusals at minting.
    let e = cli_err(&[
        "token",
        "--fleet",
        s(&w.fleet),
        "--staff-id",
        "1",
        "--name",
        "A",
        "--role",
        "clinical",
        "--hours",
        "25",
    ]);
    assert!(e.contains("--hours"), "{e}");
    let e = cli_err(&[
        "token",
        "--fleet",
        s(&w.fleet),
        "--staff-id",
        "1",
        "--name",
        "A",
        "--role",
        "surgeon",
    ]);
    assert!(e.contains("unknown staff role"), "{e}");
    let e = cli_err(&[
        "token",
        "--fleet",
        s(&w.fleet),
        "--staff-id",
        "1",
        "--name",
        "A",
        "--role",
        "admin",
        "--device-id",
        "LAS-NOPE",
    ]);
    assert!(e.contains("not enrolled"), "{e}");
    let e = cli_err(&[
        "token",
        "--fleet",
        s(&w.fleet),
        "--staff-id",
        "a b",
        "--name",
        "A",
        "--role",
        "admin",
    ]);
    assert!(e.contains("staff_id"), "{e}");
}
