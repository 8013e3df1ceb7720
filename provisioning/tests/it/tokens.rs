//! Shift tokens minted by `edge-provision token` and verified as a unit verifies them, with the
//! token-verify key from the unit's bundle; operator tokens (`edge-provision operator`) verified
//! as the hub does, with the operator key from the hub bundle; and the token deny list
//! (`edge-provision token-revoke`) verified with the hub bundle's token-verify key.

use edge_proto::denylist::{DenyList, DenySubject};
use edge_proto::ids::{DeviceId, StaffRole};
use edge_proto::time::UnixMillis;
use edge_proto::token::{verify, verify_operator, OperatorRole, OperatorTokenError, TokenError};
use edge_provision::config::{HubConfig, UnitConfig};
use edge_provision::fleet::Fleet;

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

    // Neither --device-id nor --any-unit: refused, saying what to do.
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
    ]);
    assert!(e.contains("--device-id") && e.contains("--any-unit"), "{e}");
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
        "--any-unit",
        "--device-id",
        "LAS-AMB-0192",
    ]);
    assert!(e.contains("cannot be used with"), "{e}");

    // Valid.
    let t = mint(
        &w,
        "clinical",
        &["--any-unit", "--hours", "12", "--org", "R1F"],
    );
    let c = verify(&t, &pk, now(), &me).unwrap();
    assert_eq!(
        (c.staff_id.as_str(), c.staff_name.as_str(), c.role),
        ("555000111222", "PARAMEDIC, Test", StaffRole::Clinical)
    );
    assert_eq!(c.org_ods.unwrap().as_str(), "R1F");
    assert_eq!(c.expires_at.0 - c.issued_at.0, 12 * UnixMillis::HOUR);
    assert!(
        verify(&t, &pk, now(), &other).is_ok(),
        "an --any-unit token works on any unit"
    );
    assert_eq!(c.device, None);

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
    let forged = mint(&theirs, "clinical", &["--any-unit"]);
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
        "--any-unit",
        "--hours",
        "13",
    ]);
    assert!(e.contains("--hours") && e.contains("1 to 12"), "{e}");
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
        "--any-unit",
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
        "--any-unit",
    ]);
    assert!(e.contains("staff_id"), "{e}");
}

fn operator(w: &Workshop, role: &str, hours: &str) -> String {
    let out = cli_ok(&[
        "operator",
        "--fleet",
        s(&w.fleet),
        "--operator-id",
        "OPS-0001",
        "--name",
        "ENGINEER, Fleet",
        "--role",
        role,
        "--hours",
        hours,
    ]);
    out.lines().last().unwrap().to_owned()
}

#[test]
fn operator_tokens_from_the_cli() {
    let w = Workshop::new();
    let unit = w.enrol("LAS-AMB-0192", &[]);
    let hub = HubConfig::load(&w.hub.join("hub.toml")).unwrap();
    let op_pk =
        edge_provision::load_ed25519_public(hub.keys.operator_verify.as_ref().unwrap()).unwrap();
    let shift_pk = edge_provision::load_ed25519_public(&hub.keys.token_verify).unwrap();
    let me = DeviceId::parse("LAS-AMB-0192").unwrap();

    let fleet = operator(&w, "fleet", "12");
    let c = verify_operator(&fleet, &op_pk, now()).unwrap();
    assert_eq!(
        (c.operator_id.as_str(), c.operator_name.as_str(), c.role),
        ("OPS-0001", "ENGINEER, Fleet", OperatorRole::Fleet)
    );
    assert_eq!(c.expires_at.0 - c.issued_at.0, 12 * UnixMillis::HOUR);
    let privacy = operator(&w, "privacy", "1");
    assert_eq!(
        verify_operator(&privacy, &op_pk, now()).unwrap().role,
        OperatorRole::Privacy
    );
    assert!(matches!(
        verify_operator(&privacy, &op_pk, now().plus_ms(UnixMillis::HOUR + 1)),
        Err(OperatorTokenError::Expired { .. })
    ));

    // Neither kind passes as the other, with the keys the hub and units really hold.
    let shift = mint(&w, "clinical", &["--device-id", "LAS-AMB-0192"]);
    assert!(verify_operator(&shift, &op_pk, now()).is_err());
    assert!(verify_operator(&shift, &shift_pk, now()).is_err());
    let unit_pk = edge_provision::load_ed25519_public(
        &UnitConfig::load(&unit.join("edge.toml"))
            .unwrap()
            .keys
            .token_verify,
    )
    .unwrap();
    assert!(verify(&fleet, &unit_pk, now(), &me).is_err());
    assert!(verify(&fleet, &op_pk, now(), &me).is_err());

    // Another fleet's operator token.
    let theirs = Workshop::new();
    assert_eq!(
        verify_operator(&operator(&theirs, "fleet", "1"), &op_pk, now()),
        Err(OperatorTokenError::BadSignature)
    );

    // Refusals.
    for (args, says) in [
        (vec!["--role", "root"], "unknown operator role"),
        (vec!["--role", "fleet", "--hours", "13"], "--hours"),
        (vec!["--role", "fleet", "--hours", "0"], "--hours"),
    ] {
        let mut a = vec![
            "operator",
            "--fleet",
            s(&w.fleet),
            "--operator-id",
            "OPS-0001",
            "--name",
            "E",
        ];
        a.extend(args);
        let e = cli_err(&a);
        assert!(e.contains(says), "{a:?}: {e}");
    }
    let e = cli_err(&[
        "operator",
        "--fleet",
        s(&w.fleet),
        "--operator-id",
        "a b",
        "--name",
        "E",
        "--role",
        "fleet",
    ]);
    assert!(e.contains("operator_id"), "{e}");
}

fn load_list(w: &Workshop) -> DenyList {
    let hub = HubConfig::load(&w.hub.join("hub.toml")).unwrap();
    let pk = edge_provision::load_ed25519_public(&hub.keys.token_verify).unwrap();
    edge_provision::keys::load_denylist(hub.keys.token_denylist.as_ref().unwrap(), &pk).unwrap()
}

#[test]
fn token_revoke_writes_a_signed_growing_deny_list() {
    let w = Workshop::new();
    w.enrol("LAS-AMB-0192", &[]);
    let unit = UnitConfig::load(&w.path("LAS-AMB-0192").join("edge.toml")).unwrap();
    let pk = edge_provision::load_ed25519_public(&unit.keys.token_verify).unwrap();
    let me = DeviceId::parse("LAS-AMB-0192").unwrap();
    let empty = load_list(&w);
    assert_eq!((empty.version, empty.entries.len()), (1, 0));

    let t1 = mint(&w, "clinical", &["--device-id", "LAS-AMB-0192"]);
    let c1 = verify(&t1, &pk, now(), &me).unwrap();
    assert!(!empty.denies(&c1, now()));

    // By token id (upper case is accepted and normalised).
    let out = cli_ok(&[
        "token-revoke",
        "--fleet",
        s(&w.fleet),
        "--token-id",
        &c1.token_id.to_ascii_uppercase(),
        "--reason",
        "tablet left at the patient’s house",
    ]);
    assert!(out.contains("version 2"), "{out}");
    let l2 = load_list(&w);
    assert_eq!(l2.version, 2);
    assert!(l2.denies(&c1, now()));
    assert_eq!(
        l2.entries[0].reason.as_deref(),
        Some("tablet left at the patient’s house")
    );
    // Every covered token has expired by the entry's `until`.
    assert!(l2.entries[0].until >= c1.expires_at);

    // By staff id: that person's tokens issued until now, not the tokens of others.
    let t2 = mint(&w, "admin", &["--any-unit"]);
    let c2 = verify(&t2, &pk, now(), &me).unwrap();
    assert!(!l2.denies(&c2, now()));
    cli_ok(&[
        "token-revoke",
        "--fleet",
        s(&w.fleet),
        "--staff-id",
        "555000111222",
    ]);
    let l3 = load_list(&w);
    assert_eq!((l3.version, l3.entries.len()), (3, 2));
    assert!(l3.denies(&c2, now()) && l3.denies(&c1, now()));
    let other = edge_proto::token::ShiftClaims {
        staff_id: "999".into(),
        token_id: "0".repeat(32),
        ..c2.clone()
    };
    assert!(!l3.denies(&other, now()));
    // By operator id.
    cli_ok(&[
        "token-revoke",
        "--fleet",
        s(&w.fleet),
        "--operator-id",
        "OPS-0001",
    ]);
    let l4 = load_list(&w);
    assert_eq!(l4.version, 4);
    assert!(l4
        .entries
        .iter()
        .any(|e| e.subject == DenySubject::Operator("OPS-0001".into())));

    // Refusals: none, two, a malformed id, a bad reason; nothing is written.
    let before = std::fs::read(w.fleet.join("token-denylist.cbor")).unwrap();
    let f = s(&w.fleet);
    for (args, says) in [
        (vec!["token-revoke", "--fleet", f], "exactly one of"),
        (
            vec![
                "token-revoke",
                "--fleet",
                f,
                "--staff-id",
                "1",
                "--token-id",
                "a",
            ],
            "cannot be used with",
        ),
        (
            vec!["token-revoke", "--fleet", f, "--token-id", "xyz"],
            "32 lower-case hex",
        ),
        (
            vec!["token-revoke", "--fleet", f, "--staff-id", "a b"],
            "staff",
        ),
        (
            vec![
                "token-revoke",
                "--fleet",
                f,
                "--staff-id",
                "1",
                "--reason",
                "a
b",
            ],
            "reason",
        ),
    ] {
        let e = cli_err(&args);
        assert!(e.contains(says), "{args:?}: {e}");
    }
    assert_eq!(
        std::fs::read(w.fleet.join("token-denylist.cbor")).unwrap(),
        before
    );

    // Rewritten after every covered token has expired: the old entries are pruned and the
    // version still grows.
    let later = now().plus_ms(13 * UnixMillis::HOUR);
    let f = Fleet::open(&w.fleet).unwrap();
    let r = f
        .revoke_tokens(DenySubject::Staff("777".into()), None, later)
        .unwrap();
    assert_eq!((r.version, r.entries, r.pruned), (5, 1, 3));
    drop(f);
    let l5 = load_list(&w);
    assert_eq!(l5.entries.len(), 1);
    assert!(l5.supersedes(&l4));

    // A corrupt or foreign list is refused, never silently reset.
    std::fs::write(w.fleet.join("token-denylist.cbor"), b"junk").unwrap();
    let e = cli_err(&["token-revoke", "--fleet", s(&w.fleet), "--staff-id", "1"]);
    assert!(e.contains("token-denylist.cbor"), "{e}");
}
