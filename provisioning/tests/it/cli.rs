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
    // Every file the CA writes is 0600 and every folder 0700, public halves included.
    cli_ok(&["crl", "--fleet", s(&w.fleet)]);
    cli_ok(&[
        "token-revoke",
        "--fleet",
        s(&w.fleet),
        "--staff-id",
        "555000111222",
    ]);
    assert_modes(&[&w.fleet, &w.hub, &unit]);
    for name in [
        "fleet.json",
        "operator-signing.key",
        "operator-verify.pub",
        "token-denylist.cbor",
        "renewal-ca.crt",
        "renewal-ca.key",
    ] {
        assert!(w.fleet.join(name).is_file(), "ca init wrote no {name}");
    }
    // The hub bundle holds only the public halves of the token keys (and the renewal CA, which
    // can sign nothing but unit client certificates).
    let mut hub_files: Vec<String> = std::fs::read_dir(&w.hub)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    hub_files.sort();
    assert_eq!(
        hub_files,
        [
            "fleet-ca.crt",
            "hub.crt",
            "hub.key",
            "hub.toml",
            "operator-verify.pub",
            "record-signing.key",
            "renewal-ca.crt",
            "renewal-ca.key",
            "token-verify.pub"
        ]
    );
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
    assert_eq!(hub.keys.token_signing, None);
    assert_eq!(
        edge_provision::load_ed25519_public(&u.keys.token_verify).unwrap(),
        edge_provision::load_ed25519_public(&hub.keys.token_verify).unwrap()
    );
    let op =
        edge_provision::load_ed25519_public(hub.keys.operator_verify.as_ref().unwrap()).unwrap();
    assert_eq!(
        op,
        edge_provision::load_ed25519_public(&w.fleet.join("operator-verify.pub")).unwrap()
    );
    assert_ne!(
        op,
        edge_provision::load_ed25519_public(&hub.keys.token_verify).unwrap(),
        "operator tokens have a key of their own"
    );
    assert_eq!(
        hub.keys.token_denylist.as_deref(),
        Some(
            std::fs::canonicalize(w.fleet.join("token-denylist.cbor"))
                .unwrap()
                .as_path()
        )
    );
    let list = edge_provision::keys::load_denylist(
        hub.keys.token_denylist.as_ref().unwrap(),
        &edge_provision::load_ed25519_public(&hub.keys.token_verify).unwrap(),
    )
    .unwrap();
    assert_eq!(list.entries.len(), 1);
    // The unit's LAN DNS name is in edge.toml.
    assert_eq!(
        u.lan.name.as_deref(),
        Some("las-amb-0192.units.kerbside.invalid")
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

/// Every file 0600 and every folder 0700 in `dirs`, recursively.
fn assert_modes(dirs: &[&Path]) {
    for dir in dirs {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            if e.file_type().unwrap().is_dir() {
                assert_modes(&[&e.path()]);
            } else {
                assert_eq!(mode, 0o600, "{} is {mode:o}", e.path().display());
            }
        }
    }
}

#[test]
fn an_older_fleet_and_hub_bundle_are_brought_up_to_date() {
    // A fleet and hub bundle as an older edge-provision wrote them: no operator key, no deny
    // list, no fleet.json, files 0644, and the staff-token private key in the hub bundle.
    let w = Workshop::new();
    for name in [
        "operator-signing.key",
        "operator-verify.pub",
        "token-denylist.cbor",
        "fleet.json",
    ] {
        std::fs::remove_file(w.fleet.join(name)).unwrap();
    }
    std::fs::copy(
        w.fleet.join("token-signing.key"),
        w.hub.join("token-signing.key"),
    )
    .unwrap();
    std::fs::remove_file(w.hub.join("operator-verify.pub")).unwrap();
    let old_toml = std::fs::read_to_string(w.hub.join("hub.toml"))
        .unwrap()
        .replace(
            "operator_verify = \"operator-verify.pub\"",
            "token_signing = \"token-signing.key\"",
        )
        .lines()
        .filter(|l| !l.starts_with("token_denylist"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(w.hub.join("hub.toml"), &old_toml).unwrap();
    std::fs::set_permissions(&w.hub, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The old hub.toml still loads; the private key it names is ignored.
    let old = HubConfig::load(&w.hub.join("hub.toml")).unwrap();
    assert!(old.keys.token_signing.is_some() && old.keys.operator_verify.is_none());

    // The operator key appears on first use, 0600; the same key signs the next token.
    let t1 = cli_ok(&[
        "operator",
        "--fleet",
        s(&w.fleet),
        "--operator-id",
        "OPS-0001",
        "--name",
        "ENGINEER, Fleet",
        "--role",
        "fleet",
    ]);
    let pk = edge_provision::load_ed25519_public(&w.fleet.join("operator-verify.pub")).unwrap();
    let now = crate::common::now();
    edge_proto::token::verify_operator(t1.lines().last().unwrap(), &pk, now).unwrap();
    // `hub --force` rewrites the bundle: public halves only, the old private key removed.
    cli_ok(&[
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
        "--force",
    ]);
    assert!(!w.hub.join("token-signing.key").exists());
    let new = HubConfig::load(&w.hub.join("hub.toml")).unwrap();
    assert_eq!(
        edge_provision::load_ed25519_public(new.keys.operator_verify.as_ref().unwrap()).unwrap(),
        pk
    );
    assert!(new.keys.token_denylist.as_ref().unwrap().is_file());
    assert_modes(&[&w.fleet, &w.hub]);
    // A missing private half with its public half present is refused, not silently replaced.
    std::fs::remove_file(w.fleet.join("operator-signing.key")).unwrap();
    let e = cli_err(&[
        "operator",
        "--fleet",
        s(&w.fleet),
        "--operator-id",
        "OPS-0001",
        "--name",
        "E",
        "--role",
        "privacy",
    ]);
    assert!(
        e.contains("operator-signing.key") && e.contains("backup"),
        "{e}"
    );
}

#[test]
fn lan_domain_is_a_fleet_setting() {
    let w = Workshop::new();
    let f2 = w.path("fleet2");
    cli_ok(&[
        "ca",
        "init",
        "--fleet",
        s(&f2),
        "--lan-domain",
        "Units.LAS.Example.",
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f2.join("fleet.json")).unwrap()).unwrap();
    assert_eq!(v["lan_domain"], "units.las.example");
    let out = w.path("k1");
    cli_ok(&[
        "enrol",
        "--fleet",
        s(&f2),
        "--device-id",
        "LAS_KSK.01",
        "--role",
        "kiosk",
        "--hub",
        "127.0.0.1:4433",
        "--hub-name",
        "127.0.0.1",
        "--lan",
        "0.0.0.0:8443",
        "--out",
        s(&out),
    ]);
    let u = UnitConfig::load(&out.join("edge.toml")).unwrap();
    assert_eq!(u.lan.name.as_deref(), Some("las-ksk-01.units.las.example"));
    // Another device id with the same LAN name is refused.
    let e = cli_err(&[
        "enrol",
        "--fleet",
        s(&f2),
        "--device-id",
        "LAS-KSK-01",
        "--role",
        "kiosk",
        "--hub",
        "127.0.0.1:4433",
        "--hub-name",
        "127.0.0.1",
        "--lan",
        "0.0.0.0:8443",
        "--out",
        s(&w.path("k2")),
    ]);
    assert!(
        e.contains("las-ksk-01.units.las.example") && e.contains("LAS_KSK.01"),
        "{e}"
    );
    for bad in ["invalid", "a_b.example", "x-.example"] {
        let e = cli_err(&[
            "ca",
            "init",
            "--fleet",
            s(&w.path("f3")),
            "--lan-domain",
            bad,
        ]);
        assert!(e.contains("LAN domain"), "{bad}: {e}");
        assert!(!w.path("f3").exists());
    }
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
        "--any-unit",
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
    assert_modes(&[&out, &shipped]);
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
        vec!["token-revoke"],
        vec!["operator"],
        vec!["crl"],
    ] {
        let mut args = sub.clone();
        args.push("--help");
        let h = cli_ok(&args);
        assert!(h.contains("--fleet"), "{sub:?}: {h}");
    }
    assert!(cli_ok(&["enrol", "--help"]).contains("--replace"));
    assert!(cli_ok(&["renew", "--help"]).contains("30 days"));
    assert!(cli_ok(&["token", "--help"]).contains("--any-unit"));
    assert!(cli_ok(&["ca", "init", "--help"]).contains("--lan-domain"));
    assert!(cli_ok(&["operator", "--help"]).contains("privacy"));
    assert!(!cli(&["frobnicate"]).status.success());
}

/// `--hub` repeated: every hub in edge.toml in order, with one `--hub-name` for all or one per
/// hub; a count that matches neither, or a hub given twice, is refused and writes nothing.
#[test]
fn enrol_with_several_hubs() {
    let w = Workshop::new();
    let out = w.path("two");
    let fleet = s(&w.fleet).to_owned();
    let base = |out: &str| -> Vec<String> {
        enrol_args(&fleet, out)
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    let mut args = base(s(&out));
    args.extend(["--hub", "10.0.2.10:4433"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cli_ok(&refs);
    let u = UnitConfig::load(&out.join("edge.toml")).unwrap();
    let links = u.hub_links();
    assert_eq!(links.len(), 2);
    assert_eq!(links[0], u.hub);
    assert_eq!(
        (links[1].addr.to_string().as_str(), links[1].name.as_str()),
        ("10.0.2.10:4433", "127.0.0.1"),
        "one --hub-name for both"
    );

    // One name per hub.
    let out = w.path("named");
    let mut args = base(s(&out));
    if let Some(i) = args.iter().position(|a| a == "LAS-AMB-0500") {
        args[i] = "LAS-AMB-0501".into();
    }
    args.extend(["--hub", "10.0.2.10:4433", "--hub-name", "hub-b.example"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    cli_ok(&refs);
    let u = UnitConfig::load(&out.join("edge.toml")).unwrap();
    assert_eq!(u.hub_links()[1].name, "hub-b.example");

    // Three hubs and two names; the same hub twice.
    for (extra, says) in [
        (
            vec![
                "--hub",
                "10.0.2.10:4433",
                "--hub",
                "10.0.3.10:4433",
                "--hub-name",
                "b.example",
            ],
            "--hub-name once for every hub",
        ),
        (vec!["--hub", "127.0.0.1:4433"], "given twice"),
    ] {
        let out = w.path("refused");
        let mut args = base(s(&out));
        if let Some(i) = args.iter().position(|a| a == "LAS-AMB-0500") {
            args[i] = "LAS-AMB-0502".into();
        }
        args.extend(extra.into_iter().map(String::from));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&w, &refs, &out, says);
    }
}
