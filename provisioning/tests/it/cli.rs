//! The `edge-provision` binary: the workshop flow, refusals and bad input. Every refusal must
//! exit non-zero with a clear message and leave nothing half-written.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use edge_provision::config::{HubConfig, UnitConfig};

use crate::common::{cli, cli_err, cli_ok, s, Workshop};

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn enrol_args<'a>(fleet: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "enrol",
        "--fleet",
        fleet,
        "--device-id",
        "LAS-AMB-0500",
        "--role",
        "vehicle",
        "--hub",
        "127.0.0.1:4433",
        "--hub-name",
        "127.0.0.1",
        "--lan",
        "127.0.0.1:8443",
        "--out",
        out,
    ]
}

/// Run a command that must fail: check its message and that the fleet and `out` are untouched.
fn refused(w: &Workshop, args: &[&str], out: &Path, says: &str) {
    let before = snapshot(&w.fleet);
    let e = cli_err(args);
    assert!(
        e.contains(says),
        "{args:?}: error {e:?} should mention {says:?}"
    );
    assert!(
        e.starts_with("edge-provision: error:") || e.starts_with("error:"),
        "{e}"
    );
    assert_eq!(snapshot(&w.fleet), before, "{args:?} changed the fleet");
    assert!(!out.exists(), "{args:?} wrote {}", out.display());
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("staging") || n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn workshop_flow_and_file_modes() {
    let w = Workshop::new();
    let unit = w.enrol(
        "LAS-AMB-0192",
        &[
            "--callsign",
            "K192",
            "--site",
            "rru",
            "--cohort",
            "practice:F84001",
        ],
    );
    for dir in [&w.fleet, &w.hub, &unit] {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            if name.ends_with(".key") {
                assert_eq!(mode, 0o600, "{}", e.path().display());
            } else {
                assert_eq!(mode & 0o077, 0o044, "{} is {mode:o}", e.path().display());
            }
        }
    }
    // The configs load as the hub and daemon will load them.
    let hub = HubConfig::load(&w.hub.join("hub.toml")).unwrap();
    assert_eq!(
        hub.tls.crl,
        std::fs::canonicalize(w.fleet.join("crl.pem")).unwrap()
    );
    assert_eq!(hub.data_dir, w.hub.join("data"));
    let u = UnitConfig::load(&unit.join("edge.toml")).unwrap();
    assert_eq!(u.callsign.as_deref(), Some("K192"));
    assert_eq!(u.site.as_ref().unwrap().as_str(), "RRU");
    assert_eq!(u.cohorts[0].to_string(), "practice:F84001");
    assert_eq!(u.tls.cert, unit.join("unit.crt"));
    // Keys load with the documented loaders.
    edge_provision::load_ed25519_signing(&hub.keys.record_signing).unwrap();
    edge_provision::load_ed25519_signing(&hub.keys.token_signing).unwrap();
    assert_eq!(
        edge_provision::load_ed25519_public(&u.keys.token_verify).unwrap(),
        edge_provision::load_ed25519_public(&hub.keys.token_verify).unwrap()
    );
    edge_provision::load_ed25519_public(&u.keys.record_verify).unwrap();

    // list --json: a list of objects with the documented keys.
    let v: serde_json::Value =
        serde_json::from_str(&cli_ok(&["list", "--fleet", s(&w.fleet), "--json"])).unwrap();
    let u0 = &v.as_array().unwrap()[0];
    for k in ["device_id", "role", "serial", "expiry", "revoked"] {
        assert!(u0.get(k).is_some(), "list --json lacks {k}: {u0}");
    }
    assert_eq!(u0["revoked"], false);
    let table = cli_ok(&["list", "--fleet", s(&w.fleet)]);
    assert!(
        table.contains("LAS-AMB-0192") && table.contains(" ok"),
        "{table}"
    );

    // Duplicate refused; revoke shows in list; revoke is idempotent.
    let dup = w.path("dup");
    refused(
        &w,
        &enrol_args(s(&w.fleet), s(&dup))
            .iter()
            .map(|a| {
                if *a == "LAS-AMB-0500" {
                    "LAS-AMB-0192"
                } else {
                    a
                }
            })
            .collect::<Vec<_>>(),
        &dup,
        "already enrolled",
    );
    cli_ok(&[
        "revoke",
        "--fleet",
        s(&w.fleet),
        "--device-id",
        "LAS-AMB-0192",
    ]);
    let out = cli_ok(&[
        "revoke",
        "--fleet",
        s(&w.fleet),
        "--device-id",
        "LAS-AMB-0192",
    ]);
    assert!(out.contains("already revoked"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&cli_ok(&["list", "--fleet", s(&w.fleet), "--json"])).unwrap();
    assert_eq!(v[0]["revoked"], true);
    let inv = edge_provision::inventory::Inventory::load(&hub.inventory.clone().unwrap()).unwrap();
    let rec = inv.unit(&"LAS-AMB-0192".parse().unwrap()).unwrap();
    assert!(rec.revoked() && inv.revoked.len() == 1 && inv.revoked[0].serial == rec.cert.serial);
    let crl = std::fs::read_to_string(w.fleet.join("crl.pem")).unwrap();
    assert!(crl.starts_with("-----BEGIN X509 CRL-----"));
}

#[test]
fn ca_init_refuses_to_overwrite() {
    let w = Workshop::new();
    let before = snapshot(&w.fleet);
    let e = cli_err(&["ca", "init", "--fleet", s(&w.fleet)]);
    assert!(
        e.contains("already holds a fleet") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(snapshot(&w.fleet), before);
    // A non-empty directory that is not a fleet is refused too.
    let junk = w.path("junk");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("notes.txt"), "x").unwrap();
    assert!(cli_err(&["ca", "init", "--fleet", s(&junk)]).contains("not empty"));
    // --force keeps the old fleet aside.
    let out = cli_ok(&["ca", "init", "--fleet", s(&w.fleet), "--force"]);
    assert!(out.contains("previous fleet moved to"), "{out}");
    assert_ne!(snapshot(&w.fleet), before);
    let aside: Vec<_> = std::fs::read_dir(w.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("fleet.replaced-"))
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(snapshot(&w.tmp.path().join(&aside[0])), before);
}

#[test]
fn bundles_never_overwrite_keys_without_force() {
    let w = Workshop::new();
    let e = cli_err(&[
        "hub",
        "--fleet",
        s(&w.fleet),
        "--name",
        "127.0.0.1",
        "--listen",
        "127.0.0.1:4433",
        "--admin",
        "127.0.0.1:9443",
        "--out",
        s(&w.hub),
    ]);
    assert!(e.contains("hub.key") && e.contains("--force"), "{e}");
    let unit = w.enrol("LAS-AMB-0001", &[]);
    let key = std::fs::read(unit.join("unit.key")).unwrap();
    let mut args = enrol_args(s(&w.fleet), s(&unit));
    let e = cli_err(&args);
    assert!(e.contains("unit.key") && e.contains("--force"), "{e}");
    args.push("--force");
    cli_ok(&args);
    assert_ne!(
        std::fs::read(unit.join("unit.key")).unwrap(),
        key,
        "--force replaced the key"
    );
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let w = Workshop::new();
    let out = w.path("u");
    let (f, o) = (s(&w.fleet).to_owned(), s(&out).to_owned());
    let with = |from: &str, to: &str| -> Vec<String> {
        enrol_args(&f, &o)
            .iter()
            .map(|a| {
                if *a == from {
                    to.to_owned()
                } else {
                    (*a).to_owned()
                }
            })
            .collect()
    };
    let run = |args: Vec<String>, says: &str| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&w, &a, &out, says);
    };
    run(with("vehicle", "submarine"), "unknown unit role");
    run(with("LAS-AMB-0500", "bad id!"), "invalid device id");
    run(with("127.0.0.1:4433", "127.0.0.1"), "invalid HOST:PORT");
    run(
        with("127.0.0.1:8443", "lan.example:99999"),
        "invalid HOST:PORT",
    );
    run(
        with("127.0.0.1", "not a name"),
        "neither a DNS name nor an IP address",
    );
    let mut site = enrol_args(&f, &o)
        .iter()
        .map(|a| (*a).to_owned())
        .collect::<Vec<_>>();
    site.extend(["--site".into(), "X".into()]);
    run(site, "invalid ODS organisation code");
    let mut cohort = enrol_args(&f, &o)
        .iter()
        .map(|a| (*a).to_owned())
        .collect::<Vec<_>>();
    cohort.extend(["--cohort".into(), "postcode:12".into()]);
    run(cohort, "invalid cohort");
    let mut cohort = enrol_args(&f, &o)
        .iter()
        .map(|a| (*a).to_owned())
        .collect::<Vec<_>>();
    cohort.extend(["--cohort".into(), "everyone".into()]);
    run(cohort, "unknown kind");

    // A missing fleet directory.
    let missing = w.path("no-such-fleet");
    let e = cli_err(&enrol_args(s(&missing), &o));
    assert!(
        e.contains("not a fleet directory") && e.contains("ca init"),
        "{e}"
    );
    assert!(!out.exists() && !missing.exists());
    let e = cli_err(&["list", "--fleet", s(&missing)]);
    assert!(e.contains("not a fleet directory"), "{e}");

    // A corrupt issuing key.
    let key = w.fleet.join("issuing-ca.key");
    let good_key = std::fs::read(&key).unwrap();
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    run(
        enrol_args(&f, &o).iter().map(|a| (*a).to_owned()).collect(),
        "issuing-ca.key",
    );
    std::fs::write(&key, &good_key).unwrap();

    // A corrupt token key: the token command names it.
    let tk = w.fleet.join("token-signing.key");
    let good_tk = std::fs::read(&tk).unwrap();
    std::fs::write(&tk, "garbage").unwrap();
    let e = cli_err(&[
        "token",
        "--fleet",
        &f,
        "--staff-id",
        "1",
        "--name",
        "A",
        "--role",
        "clinical",
    ]);
    assert!(e.contains("token-signing.key"), "{e}");
    std::fs::write(&tk, &good_tk).unwrap();

    // A corrupt CRL: refused with the way out, which works.
    let crl = w.fleet.join("crl.pem");
    std::fs::write(&crl, "not a crl").unwrap();
    run(
        enrol_args(&f, &o).iter().map(|a| (*a).to_owned()).collect(),
        "crl.pem",
    );
    let e = cli_err(&enrol_args(&f, &o));
    assert!(e.contains("edge-provision crl"), "{e}");
    let hub_cfg = HubConfig::load(&w.hub.join("hub.toml")).unwrap();
    let e = edge_provision::tls::hub_server_config(&hub_cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("crl.pem"), "{e}");
    cli_ok(&["crl", "--fleet", &f]);
    edge_provision::tls::hub_server_config(&hub_cfg).unwrap();
    cli_ok(&enrol_args(&f, &o));

    // Operations on units that do not exist.
    let e = cli_err(&["revoke", "--fleet", &f, "--device-id", "LAS-NOPE"]);
    assert!(e.contains("not enrolled"), "{e}");
    let e = cli_err(&["renew", "--fleet", &f, "--device-id", "LAS-NOPE"]);
    assert!(e.contains("not enrolled"), "{e}");
}

#[test]
fn renew_writes_into_the_recorded_bundle_or_out() {
    let w = Workshop::new();
    let unit = w.enrol("LAS-AMB-0007", &[]);
    let old = std::fs::read(unit.join("unit.crt")).unwrap();
    let key = std::fs::read(unit.join("unit.key")).unwrap();
    cli_ok(&[
        "renew",
        "--fleet",
        s(&w.fleet),
        "--device-id",
        "LAS-AMB-0007",
    ]);
    assert_ne!(std::fs::read(unit.join("unit.crt")).unwrap(), old);
    assert_eq!(
        std::fs::read(unit.join("unit.key")).unwrap(),
        key,
        "renew keeps the key"
    );
    // The unit has shipped: its bundle directory is gone from the workshop.
    let shipped = w.path("shipped");
    std::fs::rename(&unit, &shipped).unwrap();
    let e = cli_err(&[
        "renew",
        "--fleet",
        s(&w.fleet),
        "--device-id",
        "LAS-AMB-0007",
    ]);
    assert!(e.contains("--out"), "{e}");
    let out = w.path("renewal");
    cli_ok(&[
        "renew",
        "--fleet",
        s(&w.fleet),
        "--device-id",
        "LAS-AMB-0007",
        "--out",
        s(&out),
    ]);
    assert!(out.join("unit.crt").is_file() && out.join("lan.crt").is_file());
    assert!(!out.join("unit.key").exists());
    // Renewing into a bundle that holds another key is refused.
    let other = w.enrol("LAS-AMB-0008", &[]);
    let e = cli_err(&[
        "renew",
        "--fleet",
        s(&w.fleet),
        "--device-id",
        "LAS-AMB-0007",
        "--out",
        s(&other),
    ]);
    assert!(e.contains("not this unit's key"), "{e}");
}

#[test]
fn help_explains_the_workshop_flow() {
    let top = cli_ok(&["--help"]);
    assert!(
        top.contains("Workshop flow") && top.contains("enrol") && top.contains("revoke"),
        "{top}"
    );
    for sub in [
        vec!["ca", "init"],
        vec!["hub"],
        vec!["enrol"],
        vec!["revoke"],
        vec!["renew"],
        vec!["list"],
        vec!["token"],
        vec!["crl"],
    ] {
        let mut args = sub.clone();
        args.push("--help");
        let h = cli_ok(&args);
        assert!(h.contains("--fleet"), "{sub:?}: {h}");
    }
    assert!(cli_ok(&["enrol", "--help"]).contains("--replace"));
    assert!(cli_ok(&["renew", "--help"]).contains("30 days"));
    assert!(!cli(&["frobnicate"]).status.success());
}
