//! `edge-provision`: the fleet engineer's tool for the fleet PKI and unit enrolment.
//!
//! Thin: arguments are parsed into typed plans here (clap + the `edge-proto` id types) and every
//! operation is a call into `edge_provision::fleet`. Errors print their whole chain and exit
//! non-zero; logs go to stderr; stdout carries only results (the token on its last line).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use edge_proto::denylist::DenySubject;
use edge_proto::ids::{CohortSpec, DeviceId, OdsCode, StaffRole, UnitRole};
use edge_proto::time::UnixMillis;
use edge_proto::token::OperatorRole;
use edge_provision::config::{SupervisorConfig, SupervisorMode};
use edge_provision::fleet::{
    EnrolPlan, Fleet, HubPlan, InitOptions, OperatorRequest, TokenRequest, RENEWAL_AFTER_EXPIRY_MS,
};
use edge_provision::hostport::HostPort;
use edge_provision::inventory::RevokeReason;

const FLOW: &str = "\
Workshop flow:
  1. once per fleet:   edge-provision ca init --fleet FLEET [--lan-domain units.las.example]
                       (then move FLEET/root-ca.key to offline storage)
                       older fleets: edge-provision ca renewal-ca --fleet FLEET   (renewal over the sync)
  2. once per hub:     edge-provision hub --fleet FLEET --name hub.example --listen 0.0.0.0:4433 \\
                           --admin 127.0.0.1:9443 --out HUBDIR
  3. per unit:         edge-provision enrol --fleet FLEET --device-id LAS-AMB-0192 --role vehicle \\
                           --hub hub.example:4433 --hub-name hub.example --lan 192.168.50.1:8443 \\
                           --out UNITDIR
                       copy UNITDIR onto the unit; it runs `edge-daemon run --config UNITDIR/edge.toml`
  4. before expiry:    automatic: the hub renews a unit's 7-day certificate over the sync
                       (by hand, e.g. a unit offline past expiry: edge-provision renew --fleet FLEET --device-id ID)
  5. stolen or lost:   edge-provision revoke --fleet FLEET --device-id ID --reason stolen
  6. broken unit:      edge-provision enrol ... --replace --out NEWDIR      (old certificates revoked)
  anytime:             edge-provision list --fleet FLEET [--json]
                       edge-provision token --fleet FLEET --staff-id ID --name \"SURNAME, Given\" --role clinical \\
                           (--device-id ID | --any-unit)
                       edge-provision token-revoke --fleet FLEET (--token-id ID | --staff-id ID) [--reason TEXT]
                       edge-provision operator --fleet FLEET --operator-id ID --name \"SURNAME, Given\" --role fleet

See docs/provisioning.md for lifetimes, bundle layouts and what to do when a unit has been
offline past its certificate's expiry.";

/// Kerbside fleet PKI: CA, hub and unit bundles, renewal, revocation, shift tokens.
#[derive(Debug, Parser)]
#[command(name = "edge-provision", version, about, long_about = None, after_long_help = FLOW)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Fleet certificate authority (`ca init`).
    #[command(subcommand, after_long_help = FLOW)]
    Ca(CaCmd),
    /// Write a hub bundle: server certificate, keys, CA bundle and hub.toml.
    #[command(after_long_help = FLOW, long_about = "\
Write a hub bundle into --out: the hub's TLS server certificate (SAN = --name, an IP SAN when
--name is an IP address, and the hub marker kerbside://hub/NAME that units require) and key,
the fleet CA bundle, the hub's record-signing key, the *public* shift-token and operator-token
keys (never their private halves), and a complete hub.toml (paths relative to it). Every file is
0600 and the folder 0700. hub.toml points at the fleet's crl.pem, inventory.json and
token-denylist.cbor by absolute path, so the hub sees revocations as they happen; if the hub
runs on another machine, copy them there after every revocation and edit [tls] crl,
inventory and [keys] token_denylist. --force over a bundle written by an older edge-provision
also removes its token-signing.key.

Then start the hub with: edge-hub serve --config HUBDIR/hub.toml")]
    Hub(HubArgs),
    /// Enrol a unit: fresh keys, a 7-day operational certificate, LAN certificate and edge.toml.
    #[command(after_long_help = FLOW, long_about = "\
Enrol a unit (vehicle or ED kiosk) and write its bundle into --out: a fresh key pair and a
7-day operational client certificate naming the unit (kerbside://fleet/ROLE/DEVICE-ID) and its
cohorts, a LAN HTTPS certificate naming the unit (the DNS name DEVICE-ID under the fleet's LAN
domain, e.g. las-amb-0192.units.kerbside.invalid, and kerbside://lan/DEVICE-ID) beside --lan
(and --lan-name), the fleet CA bundle, the hub's record-verification and the fleet's
token-verification public keys, and a complete edge.toml ([lan] name is the unit's LAN DNS
name: tablets must connect with, and verify, that name). Every file is 0600. The unit is
recorded in the fleet inventory.

Copy the bundle onto the unit (it holds the unit's private keys: use the workshop's encrypted
transfer) and run: edge-daemon run --config UNITDIR/edge.toml

A device id already enrolled is refused unless --replace, which revokes every certificate of
the old enrolment (use it when a unit is replaced or re-imaged). Cohorts travel inside the
certificate, so a unit cannot widen its own cohort by editing edge.toml.")]
    Enrol(EnrolArgs),
    /// Revoke every certificate of a unit and re-sign the fleet's revocation list.
    #[command(after_long_help = FLOW, long_about = "\
Revoke every certificate issued to a unit (stolen, lost, decommissioned) and re-sign the
fleet's revocation list (FLEET/crl.pem). Hubs pick the new list up on their next reload
([tls] crl_reload_s, 60 s by default) without a restart; the unit is refused from then on and
can no longer renew. To bring the device id back into service, enrol it again with --replace.")]
    Revoke(RevokeArgs),
    /// Re-issue a unit's operational certificate (same key, 7 days from now).
    #[command(after_long_help = FLOW, long_about = "\
Re-issue a unit's operational certificate for the same key (and its LAN certificate), valid 7
days from now, and write unit.crt and lan.crt into the unit's recorded bundle directory (or
--out). Renew at about two thirds of the lifetime (after ~4.7 days).

A unit that has been offline past its certificate's expiry can still be renewed for 30 days
after that expiry (its clock and key are unchanged); after that it must be re-enrolled in the
workshop with `enrol --replace`. A revoked unit is never renewed.")]
    Renew(RenewArgs),
    /// List every unit: role, certificate serial, expiry, revoked.
    #[command(after_long_help = FLOW, long_about = "\
List every enrolled unit with its role, current operational certificate serial and expiry, and
whether it is revoked or expired. Renew units whose expiry is less than ~2.3 days away; re-enrol
(`enrol --replace`) units that expired more than 30 days ago. --json prints a list of objects
with at least device_id, role, serial, expiry, expired and revoked.")]
    List(ListArgs),
    /// Re-sign the fleet's revocation list from the inventory.
    #[command(after_long_help = FLOW, long_about = "\
Re-sign FLEET/crl.pem from the inventory: refreshes its nextUpdate (30 days) and repairs a
corrupt or missing file. Revocations are never lost: the inventory is their source of truth.")]
    Crl(FleetArg),
    /// Mint a signed staff shift token (printed on the last line of stdout).
    #[command(after_long_help = FLOW, long_about = "\
Mint a staff shift token signed with the fleet's staff-token key and print it on the last line
of stdout. In production the hub issues these at shift start; this is the operator's and the
tests' way to mint one. Tablets send it as `Authorization: Bearer TOKEN`; units verify it
offline. A token is bound to one unit with --device-id (the unit the crew works on); a token
valid on every unit needs an explicit --any-unit. One of the two is required. --hours is its
lifetime (1-12, default 12). Revoke it before its expiry with `edge-provision token-revoke`.")]
    Token(TokenArgs),
    /// Revoke shift or operator tokens: add a signed entry to the fleet's token deny list.
    #[command(name = "token-revoke", after_long_help = FLOW, long_about = "\
Revoke tokens before their expiry: --token-id revokes one token (shift or operator; the id is
printed when it is minted and named in audit events), --staff-id every shift token of that
member of staff issued until now, --operator-id every operator token of that operator issued
until now. Tokens minted afterwards are not affected (stop issuing them instead).

The entry goes into FLEET/token-denylist.cbor: a list signed with the fleet's staff-token key,
whose version only grows. Each entry lasts until every token it covers has expired anyway
(12 hours and 5 minutes); expired entries are dropped whenever the list is rewritten. The hub
reads the file (hub.toml [keys] token_denylist) and passes it to every unit over the sync; a
unit refuses the revoked tokens from its next sync on.")]
    TokenRevoke(TokenRevokeArgs),
    /// Mint an operator token for the hub's admin API (printed on the last line of stdout).
    #[command(after_long_help = FLOW, long_about = "\
Mint an operator token for the hub's admin API, signed with the fleet's operator key (a key of
its own, not the staff-token key: a shift token is never accepted as an operator token, nor the
reverse), and print it on the last line of stdout. Send it as `Authorization: Bearer TOKEN` on
every admin call. --role fleet may ingest, list devices, set cohorts and order wipes; --role
privacy may query and export the audit trail, see alerts, record objections and read the
operator log. --hours is its lifetime (1-12, default 8). A fleet made before operator tokens gets
its operator key (FLEET/operator-signing.key, 0600) on first use; re-run `hub --force` so the
hub bundle carries its public half. Revoke with `token-revoke --token-id` or `--operator-id`.")]
    Operator(OperatorArgs),
}

#[derive(Debug, Subcommand)]
enum CaCmd {
    /// Create a fleet: root CA, issuing CA, signing keys, empty CRL, inventory.
    #[command(after_long_help = FLOW, long_about = "\
Create a fleet directory: an offline-style root CA (ECDSA P-256, 20 years) and an issuing CA
under it (5 years) that signs every hub and unit certificate and the revocation list; the
staff-token signing key and the hub's record-signing key (Ed25519); an empty revocation list;
an operator-token key (Ed25519, for the hub's admin API); an empty signed token deny list; the
fleet settings (fleet.json: --lan-domain); and the fleet inventory. Every file is written 0600,
the directory 0700, and it appears whole or not at all. An existing fleet is never overwritten unless --force (it is then moved aside to
DIR.replaced-TIME, not deleted).

It also makes the renewal CA (2 years, under the root, clientAuth only, path length 0) that
`hub` copies into hub bundles, so hubs renew units' 7-day certificates over the sync.

After init, move FLEET/root-ca.key to offline storage: only `ca renewal-ca` needs it again.")]
    Init(InitArgs),
    /// Create or replace the renewal CA the hubs renew unit certificates with (needs root-ca.key).
    #[command(name = "renewal-ca", after_long_help = FLOW, long_about = "\
Create the fleet's renewal CA: an intermediate under the fleet root (2 years, ECDSA P-256,
extended key usage clientAuth only, path length 0), written as FLEET/renewal-ca.crt and
renewal-ca.key. `hub` copies both into hub bundles; a hub holding them re-issues a unit's
7-day certificate over the sync when two thirds of its lifetime has passed, so no unit falls
off the fleet because nobody ran `renew`. Revoked and wiped units are refused.

Fleets made by `ca init` have one already; run this for an older fleet, or with --force to
replace one before it expires (then rewrite every hub bundle with `hub --force`). The root key
must be back in the fleet directory for this; move it offline again afterwards.")]
    RenewalCa(RenewalCaArgs),
}

#[derive(Debug, Args)]
struct RenewalCaArgs {
    /// The fleet directory.
    #[arg(long, value_name = "DIR")]
    fleet: PathBuf,
    /// Replace an existing renewal CA.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct FleetArg {
    /// The fleet directory (created by `ca init`).
    #[arg(long, value_name = "DIR")]
    fleet: PathBuf,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The fleet directory to create.
    #[arg(long, value_name = "DIR")]
    fleet: PathBuf,
    /// Organisation name in the CA certificates.
    #[arg(long, default_value = "London Ambulance Service")]
    org: String,
    /// Replace an existing fleet (moved aside, not deleted). Every unit must be re-enrolled.
    #[arg(long)]
    force: bool,
    /// DNS domain for unit LAN names: a unit's LAN certificate names DEVICE-ID (lower-case)
    /// under it, e.g. las-amb-0192.units.kerbside.invalid. Tablets must verify that name.
    #[arg(long, value_name = "DOMAIN", default_value = edge_provision::identity::DEFAULT_LAN_DOMAIN)]
    lan_domain: String,
}

#[derive(Debug, Args)]
struct HubArgs {
    /// The fleet directory.
    #[arg(long, value_name = "DIR")]
    fleet: PathBuf,
    /// The hub's name as units reach it (DNS name or IP address); its certificate's SAN.
    #[arg(long)]
    name: String,
    /// QUIC sync listen address (UDP), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    listen: HostPort,
    /// Admin API listen address (TCP), HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    admin: HostPort,
    /// Where to write the hub bundle.
    #[arg(long, value_name = "HUBDIR")]
    out: PathBuf,
    /// Overwrite an existing hub bundle's keys in --out.
    #[arg(long)]
    force: bool,
    /// Run the hub on this PostgreSQL database instead of the embedded store:
    /// postgres://USER@HOST:PORT/DBNAME, without a password (see --database-password-env and
    /// --database-password-file). Several hubs may share one database.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// The environment variable the hub reads the database password from.
    #[arg(
        long,
        value_name = "VAR",
        requires = "database",
        conflicts_with = "database_password_file"
    )]
    database_password_env: Option<String>,
    /// A file whose first line is the database password (keep it 0600).
    #[arg(long, value_name = "FILE", requires = "database")]
    database_password_file: Option<PathBuf>,
    /// PEM root certificates to verify the database server with (TLS is then required).
    #[arg(long, value_name = "FILE", requires = "database")]
    database_ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct EnrolArgs {
    /// The fleet directory.
    #[arg(long, value_name = "DIR")]
    fleet: PathBuf,
    /// The unit's fleet device id, e.g. LAS-AMB-0192 (A-Z a-z 0-9 . _ -, up to 64).
    #[arg(long)]
    device_id: DeviceId,
    /// vehicle or kiosk.
    #[arg(long)]
    role: UnitRole,
    /// The hub's QUIC address, HOST:PORT. Repeat it for several hubs sharing one database
    /// (hubs = [...] in edge.toml): the unit tries them in this order, stays with one while it
    /// answers and fails over to the next, resuming from its cursor.
    #[arg(long, value_name = "HOST:PORT", required = true)]
    hub: Vec<HostPort>,
    /// The name in the hub's certificate (the hub bundle's --name): once for every hub, or
    /// once per --hub, in the same order.
    #[arg(long, value_name = "NAME", required = true)]
    hub_name: Vec<String>,
    /// The unit's LAN API listen address, HOST:PORT; the host goes into its LAN certificate.
    #[arg(long, value_name = "HOST:PORT")]
    lan: HostPort,
    /// Another name (DNS or IP) for the LAN certificate; repeatable.
    #[arg(long, value_name = "NAME")]
    lan_name: Vec<String>,
    /// Radio callsign.
    #[arg(long, value_name = "C")]
    callsign: Option<String>,
    /// ODS code of the unit's site (ED kiosks: the hospital), e.g. RRU.
    #[arg(long, value_name = "ODS")]
    site: Option<OdsCode>,
    /// A cohort: all, flagged, postcode:SE1,SE5 or practice:F84001; repeatable. Default: all.
    #[arg(long, value_name = "SPEC")]
    cohort: Vec<CohortSpec>,
    /// Supervisor link for edge.toml: none, sim or serial.
    #[arg(long, default_value = "none", value_parser = parse_supervisor)]
    supervisor: SupervisorMode,
    /// The supervisor's serial device (with --supervisor serial), e.g. /dev/ttyS1.
    #[arg(long, value_name = "PATH")]
    supervisor_device: Option<PathBuf>,
    /// Re-enrol a device id that is already enrolled, revoking its old certificates.
    #[arg(long)]
    replace: bool,
    /// Overwrite an existing unit bundle's keys in --out.
    #[arg(long)]
    force: bool,
    /// Where to write the unit bundle.
    #[arg(long, value_name = "UNITDIR")]
    out: PathBuf,
}

fn parse_supervisor(s: &str) -> Result<SupervisorMode, String> {
    match s {
        "none" => Ok(SupervisorMode::None),
        "sim" => Ok(SupervisorMode::Sim),
        "serial" => Ok(SupervisorMode::Serial),
        _ => Err(format!(
            "unknown supervisor mode {s:?}: expected none, sim or serial"
        )),
    }
}

#[derive(Debug, Args)]
struct RevokeArgs {
    /// The fleet directory.
    #[arg(long, value_name = "DIR")]
    fleet: PathBuf,
    /// The unit to revoke.
    #[arg(long)]
    device_id: DeviceId,
    /// Why: stolen (or lost), decommissioned, replaced, unspecified.
    #[arg(long, default_value = "unspecified")]
    reason: RevokeReason,
}

#[derive(Debug, Args)]
struct RenewArgs {
    /// The fleet directory.
    #[arg(long, value_name = "DIR")]
    fleet: PathBuf,
    /// The unit to renew.
    #[arg(long)]
    device_id: DeviceId,
    /// Write unit.crt and lan.crt here instead of the unit's recorded bundle directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// The fleet directory.
    #[arg(long, value_name = "DIR")]
    fleet: PathBuf,
    /// Print a JSON list of objects (device_id, role, serial, expiry, revoked, ...).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// The fleet directory.
    #[arg(long, value_name = "DIR")]
    fleet: PathBuf,
    /// The member of staff's id (their SDS user id).
    #[arg(long, value_name = "SDSID")]
    staff_id: String,
    /// Display name, e.g. "PARAMEDIC, Test".
    #[arg(long, value_name = "NAME")]
    name: String,
    /// clinical or admin.
    #[arg(long)]
    role: StaffRole,
    /// Bind the token to one unit (this or --any-unit is required).
    #[arg(long, conflicts_with = "any_unit")]
    device_id: Option<DeviceId>,
    /// Make the token valid on every unit of the fleet (this or --device-id is required).
    #[arg(long)]
    any_unit: bool,
    /// Lifetime in hours (1-12).
    #[arg(long, default_value_t = 12)]
    hours: u32,
    /// ODS code of the employing organisation.
    #[arg(long, value_name = "ODS")]
    org: Option<OdsCode>,
}

#[derive(Debug, Args)]
struct TokenRevokeArgs {
    /// The fleet directory.
    #[arg(long, value_name = "DIR")]
    fleet: PathBuf,
    /// Revoke one token by its id (32 hex digits; shift or operator token).
    #[arg(long, value_name = "ID", group = "subject")]
    token_id: Option<String>,
    /// Revoke every shift token of this member of staff issued until now.
    #[arg(long, value_name = "SDSID", group = "subject")]
    staff_id: Option<String>,
    /// Revoke every operator token of this operator issued until now.
    #[arg(long, value_name = "ID", group = "subject")]
    operator_id: Option<String>,
    /// Why, for the record (up to 200 bytes).
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

#[derive(Debug, Args)]
struct OperatorArgs {
    /// The fleet directory.
    #[arg(long, value_name = "DIR")]
    fleet: PathBuf,
    /// The operator's id, e.g. OPS-0001 (A-Z a-z 0-9 . _ - @, up to 64).
    #[arg(long, value_name = "ID")]
    operator_id: String,
    /// Display name, e.g. "ENGINEER, Fleet".
    #[arg(long, value_name = "NAME")]
    name: String,
    /// fleet (ingest, devices, cohort, wipe) or privacy (audit, verify, export, alerts,
    /// objections, operator log).
    #[arg(long)]
    role: OperatorRole,
    /// Lifetime in hours (1-12).
    #[arg(long, default_value_t = 8)]
    hours: u32,
    /// Back-date the token: issued at this RFC 3339 instant rather than now (for testing a
    /// console's or a script's handling of an expired token; it never extends a lifetime).
    #[arg(long, value_name = "RFC3339", hide = true)]
    issued_at: Option<String>,
}

fn now() -> UnixMillis {
    let t = time::OffsetDateTime::now_utc();
    UnixMillis(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX))
}

fn open(dir: &std::path::Path) -> Result<Fleet> {
    let f = Fleet::open(dir)?;
    f.check_crl()
        .context("the fleet's revocation list is unusable; repair it with `edge-provision crl`")?;
    Ok(f)
}

fn run(cli: Cli) -> Result<()> {
    let now = now();
    match cli.cmd {
        Cmd::Ca(CaCmd::Init(a)) => {
            let r = Fleet::init_with_lan_domain(
                &a.fleet,
                &InitOptions {
                    org: a.org,
                    force: a.force,
                },
                &a.lan_domain,
                now,
            )?;
            if let Some(old) = r.replaced_to {
                println!("previous fleet moved to {}", old.display());
            }
            println!("fleet {} created in {}", r.fleet_id, a.fleet.display());
            println!(
                "move {} to offline storage: nothing else needs it",
                a.fleet.join("root-ca.key").display()
            );
        }
        Cmd::Ca(CaCmd::RenewalCa(a)) => {
            let mut f = open(&a.fleet)?;
            let (serial, not_after) = f.make_renewal_ca(a.force, now)?;
            println!(
                "renewal CA {serial} written to {} (expires {})",
                a.fleet.display(),
                not_after.to_rfc3339()
            );
            println!("rewrite each hub bundle with `edge-provision hub ... --force` so hubs use it; move root-ca.key offline again");
        }
        Cmd::Hub(a) => {
            let mut f = open(&a.fleet)?;
            let plan = HubPlan {
                name: a.name,
                listen: a.listen,
                admin: a.admin,
                out: a.out.clone(),
                force: a.force,
                store: match a.database {
                    None => Default::default(),
                    Some(url) => edge_runtime::config::HubStoreConfig {
                        backend: edge_runtime::config::StoreBackend::Postgres,
                        url: Some(url),
                        password_env: a.database_password_env,
                        password_file: a.database_password_file.map(absolute_path).transpose()?,
                        ca_file: a.database_ca.map(absolute_path).transpose()?,
                        pool_size: None,
                    },
                },
            };
            let cfg = f.make_hub_bundle(&plan, now)?;
            println!("hub bundle for {} written to {}", cfg.name, a.out.display());
            println!(
                "start it with: edge-hub serve --config {}",
                cfg.file.display()
            );
        }
        Cmd::Enrol(a) => {
            if a.supervisor == SupervisorMode::Serial && a.supervisor_device.is_none() {
                anyhow::bail!("--supervisor serial needs --supervisor-device PATH");
            }
            let mut hubs = hub_links(&a.hub, &a.hub_name)?.into_iter();
            let Some(first) = hubs.next() else {
                anyhow::bail!("give the hub with --hub HOST:PORT and --hub-name NAME");
            };
            let mut f = open(&a.fleet)?;
            let plan = EnrolPlan {
                device_id: a.device_id.clone(),
                role: a.role,
                hub: first.addr,
                hub_name: first.name,
                more_hubs: hubs.collect(),
                lan: a.lan,
                lan_names: a.lan_name,
                callsign: a.callsign,
                site: a.site,
                cohorts: a.cohort,
                supervisor: SupervisorConfig {
                    mode: a.supervisor,
                    device: a.supervisor_device,
                },
                replace: a.replace,
                force: a.force,
                out: a.out,
            };
            let r = f.enrol(&plan, now)?;
            if !r.revoked.is_empty() {
                println!(
                    "revoked {} certificate(s) of the previous enrolment",
                    r.revoked.len()
                );
            }
            println!(
                "enrolled {} ({}) serial {} expires {}",
                a.device_id, a.role, r.cert.serial, r.cert.not_after
            );
            println!(
                "bundle: {} (copy it onto the unit; it holds private keys)",
                r.bundle_dir.display()
            );
        }
        Cmd::Revoke(a) => {
            let mut f = open(&a.fleet)?;
            let r = f.revoke(&a.device_id, a.reason, now)?;
            if r.already && r.serials.is_empty() {
                println!(
                    "{} was already revoked; CRL #{} re-signed",
                    a.device_id, r.crl_number
                );
            } else {
                println!(
                    "revoked {} ({} certificate(s)); CRL #{} written",
                    a.device_id,
                    r.serials.len(),
                    r.crl_number
                );
            }
        }
        Cmd::Renew(a) => {
            let mut f = open(&a.fleet)?;
            let r = f.renew(&a.device_id, a.out.as_deref(), now).with_context(|| {
                format!(
                    "renewal is possible up to {} days after expiry; later, re-enrol with --replace",
                    RENEWAL_AFTER_EXPIRY_MS / UnixMillis::DAY
                )
            })?;
            println!(
                "renewed {} serial {} expires {}; written to {}",
                a.device_id,
                r.cert.serial,
                r.cert.not_after,
                r.written_to.display()
            );
        }
        Cmd::List(a) => {
            let f = Fleet::open(&a.fleet)?;
            let units = f.units(now);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&units)?);
            } else {
                println!(
                    "{:<24} {:<8} {:<32} {:<21} STATUS",
                    "DEVICE", "ROLE", "SERIAL", "EXPIRY"
                );
                for u in &units {
                    let status = if u.revoked {
                        "revoked"
                    } else if u.expired {
                        "expired"
                    } else {
                        "ok"
                    };
                    println!(
                        "{:<24} {:<8} {:<32} {:<21} {status}",
                        u.device_id,
                        u.role.as_str(),
                        u.serial,
                        u.expiry
                    );
                }
                println!("{} unit(s)", units.len());
            }
        }
        Cmd::Crl(a) => {
            let mut f = Fleet::open(&a.fleet)?;
            let n = f.refresh_crl(now)?;
            println!("CRL #{n} written to {}", f.crl_path().display());
        }
        Cmd::Token(a) => {
            if a.device_id.is_none() && !a.any_unit {
                anyhow::bail!(
                    "a shift token must say where it may be used: pass --device-id ID to bind it to the unit the crew will work on, or --any-unit for a token every unit of the fleet accepts"
                );
            }
            let f = open(&a.fleet)?;
            let req = TokenRequest {
                staff_id: a.staff_id,
                staff_name: a.name,
                role: a.role,
                device: a.device_id,
                hours: a.hours,
                org: a.org,
            };
            let (token, claims) = f.mint_token(&req, now)?;
            eprintln!(
                "shift token {} for {} ({}), {}, {}, expires {}",
                claims.token_id,
                claims.staff_name,
                claims.staff_id,
                claims.role,
                claims
                    .device
                    .as_ref()
                    .map_or_else(|| "any unit".to_owned(), |d| format!("unit {d} only")),
                claims.expires_at
            );
            println!("{token}");
        }
        Cmd::TokenRevoke(a) => {
            let subject = match (a.token_id, a.staff_id, a.operator_id) {
                (Some(t), None, None) => DenySubject::Token(t),
                (None, Some(s), None) => DenySubject::Staff(s),
                (None, None, Some(o)) => DenySubject::Operator(o),
                _ => anyhow::bail!(
                    "say what to revoke: exactly one of --token-id ID, --staff-id SDSID or --operator-id ID"
                ),
            };
            let f = open(&a.fleet)?;
            let r = f.revoke_tokens(subject, a.reason, now)?;
            println!(
                "revoked {} (until {}); token deny list version {} with {} entr{} written to {}",
                r.entry.subject,
                r.entry.until,
                r.version,
                r.entries,
                if r.entries == 1 { "y" } else { "ies" },
                r.path.display()
            );
            if r.pruned > 0 {
                println!(
                    "{} expired entr{} dropped",
                    r.pruned,
                    if r.pruned == 1 { "y" } else { "ies" }
                );
            }
        }
        Cmd::Operator(a) => {
            let f = open(&a.fleet)?;
            let req = OperatorRequest {
                operator_id: a.operator_id,
                name: a.name,
                role: a.role,
                hours: a.hours,
            };
            let issued = match &a.issued_at {
                None => now,
                Some(t) => {
                    let t = UnixMillis::parse_rfc3339(t)
                        .map_err(|e| anyhow::anyhow!("--issued-at {t}: {e}"))?;
                    anyhow::ensure!(
                        t.0 <= now.0,
                        "--issued-at may only back-date a token, not date it in the future"
                    );
                    t
                }
            };
            let (token, claims) = f.mint_operator_token(&req, issued)?;
            eprintln!(
                "operator token {} for {} ({}), role {}, expires {}",
                claims.token_id,
                claims.operator_name,
                claims.operator_id,
                claims.role,
                claims.expires_at
            );
            println!("{token}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    edge_provision::tls::install_default_provider();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-provision: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A path as given on the command line, made absolute (hub.toml is read from elsewhere).
fn absolute_path(p: PathBuf) -> anyhow::Result<PathBuf> {
    std::path::absolute(&p).with_context(|| format!("cannot resolve {}", p.display()))
}

/// Pair `--hub` addresses with `--hub-name` names: one name for all, or one per hub in order.
fn hub_links(
    addrs: &[HostPort],
    names: &[String],
) -> anyhow::Result<Vec<edge_runtime::config::HubLink>> {
    let name_of = |i: usize| -> anyhow::Result<String> {
        match names {
            [one] => Ok(one.clone()),
            _ if names.len() == addrs.len() => Ok(names[i].clone()),
            _ => anyhow::bail!(
                "{} --hub but {} --hub-name: give --hub-name once for every hub, or once per --hub in the same order",
                addrs.len(),
                names.len()
            ),
        }
    };
    let mut out = Vec::with_capacity(addrs.len());
    for (i, addr) in addrs.iter().enumerate() {
        let link = edge_runtime::config::HubLink {
            addr: addr.clone(),
            name: name_of(i)?,
        };
        if out.contains(&link) {
            anyhow::bail!("--hub {addr} (named {}) is given twice", link.name);
        }
        out.push(link);
    }
    Ok(out)
}
