//! The fleet documents a hub decides on — the CRL, the signed token deny list and the fleet
//! inventory — when hubs share a PostgreSQL database.
//!
//! On its own a hub reads each from a file in the fleet directory (`[tls] crl`,
//! `[keys] token_denylist`, `inventory` in hub.toml) and re-reads it when it changes. Hubs that
//! share a database must decide alike — a unit revoked at one hub must be refused at every
//! hub — so there the database holds the one copy in force (`fleet_document`, migration 0004)
//! and a hub's own files are only a way in:
//!
//! - when a hub sees its file change (and at start) it checks it as it would before using it
//!   (the CRL signed by the fleet's CA, the deny list by the fleet's token key, the inventory a
//!   format this build reads) and offers it to the database, which keeps it only if its version
//!   is higher than the copy held (the CRL's number, the deny list's version, the inventory's
//!   revision: each only ever increases), so a hub with a stale file can never move the fleet
//!   backwards;
//! - every hub polls the database's versions each second ([`crate::server::REVALIDATE_POLL`];
//!   one small query) and takes a changed copy: the CRL into the TLS verifier, the deny list into
//!   the fetch gate, the admin API and what units are sent, the inventory into every connection
//!   check; then the revocation watch re-checks every live connection.
//!
//! So the operator's routine does not change — `edge-provision revoke` and `token deny` write
//! the fleet directory, and the files reach one hub or all of them — and a revocation that
//! reaches any hub's file reaches every hub within a couple of seconds.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use edge_runtime::inventory::Inventory;
use tracing::{debug, info, warn};

use crate::pg::fleet::Stored;
use crate::pg::PgStore;
use crate::server::{stamp, Hub};

/// One kind of fleet document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Crl,
    DenyList,
    Inventory,
}

impl Kind {
    /// Every kind, in the order a step handles them.
    pub const ALL: [Kind; 3] = [Kind::Crl, Kind::DenyList, Kind::Inventory];

    /// Its name in the database (`fleet_document.kind`) and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Crl => "crl",
            Kind::DenyList => "denylist",
            Kind::Inventory => "inventory",
        }
    }

    fn index(self) -> usize {
        match self {
            Kind::Crl => 0,
            Kind::DenyList => 1,
            Kind::Inventory => 2,
        }
    }

    fn of(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The hub's file for this kind, when it has one.
    fn path(self, hub: &Hub) -> Option<PathBuf> {
        match self {
            Kind::Crl => Some(hub.config.tls.crl.clone()),
            Kind::DenyList => hub.config.keys.token_denylist.clone(),
            Kind::Inventory => hub.config.inventory.clone(),
        }
    }
}

/// What identifies one version of a file: modification time and length.
type Stamp = Option<(Option<SystemTime>, u64)>;

/// The version a valid document carries, or why it is not valid.
fn check(kind: Kind, hub: &Hub, bytes: &[u8]) -> Result<u64, String> {
    match kind {
        Kind::Crl => {
            let r = hub
                .reloader
                .as_ref()
                .ok_or("no TLS verifier to check the CRL against")?;
            let s = r.check_crl(bytes).map_err(|e| e.to_string())?;
            s.crl_number
                .ok_or_else(|| "the CRL has no CRL number, so it cannot be ordered".to_owned())
        }
        Kind::DenyList => hub.denylist.verify(bytes).map(|l| l.version),
        Kind::Inventory => Inventory::from_slice(bytes).map(|i| i.revision),
    }
}

/// What a hub has done with the fleet documents so far.
#[derive(Debug, Default)]
struct State {
    /// The version of each file last offered (`None`: never looked at).
    offered: [Option<Stamp>; 3],
    /// The database copy of each last taken (or tried): version and SHA-256.
    taken: [Option<(u64, Vec<u8>)>; 3],
    /// Whether the database has been read once (before that, the files are in force).
    polled: bool,
    /// The last poll failed (warned once until it works again).
    poll_failing: bool,
}

/// What changed in force in one [`FleetDocs::step`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    pub crl: bool,
    pub denylist: bool,
    pub inventory: bool,
}

impl Changed {
    /// Anything at all.
    pub fn any(self) -> bool {
        self.crl || self.denylist || self.inventory
    }
}

/// The hub's side of the shared fleet documents (see the module docs).
#[derive(Debug, Default)]
pub struct FleetDocs {
    state: Mutex<State>,
}

impl FleetDocs {
    /// Offer changed files to the database, then take what changed there. Blocking (database
    /// round trips): call it on the blocking pool.
    pub fn step(&self, hub: &Hub, db: &PgStore) -> Changed {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for kind in Kind::ALL {
            offer(&mut st, kind, hub, db);
        }
        let held = match db.fleet_documents() {
            Ok(h) => {
                if st.poll_failing {
                    info!("the fleet documents can be read from the database again");
                }
                st.poll_failing = false;
                h
            }
            Err(e) => {
                if !st.poll_failing {
                    warn!(error = %e, "cannot read the fleet documents from the database; keeping the ones in force");
                }
                st.poll_failing = true;
                return Changed::default();
            }
        };
        let mut changed = Changed::default();
        for h in &held {
            let Some(kind) = Kind::of(&h.kind) else {
                debug!(kind = %h.kind, "a fleet document this build does not know");
                continue;
            };
            let now = Some((h.version, h.sha256.clone()));
            if st.taken[kind.index()] == now {
                continue;
            }
            let body = match db.fleet_document(kind.name()) {
                Ok(Some((_, body))) => body,
                Ok(None) => continue,
                Err(e) => {
                    warn!(document = kind.name(), error = %e, "cannot read a fleet document from the database");
                    continue;
                }
            };
            st.taken[kind.index()] = now;
            if take(kind, hub, &body, h.version) {
                match kind {
                    Kind::Crl => changed.crl = true,
                    Kind::DenyList => changed.denylist = true,
                    Kind::Inventory => changed.inventory = true,
                }
            }
        }
        if !st.polled && !held.iter().any(|h| h.kind == Kind::Inventory.name()) {
            // No hub has stored an inventory: there is none, whatever this hub's file says
            // (had it been valid, it was offered above).
            hub.inventory_cache.install(None);
        }
        st.polled = true;
        changed
    }
}

/// Offer the hub's file of `kind` to the database when it changed since the last offer.
fn offer(st: &mut State, kind: Kind, hub: &Hub, db: &PgStore) {
    let Some(path) = kind.path(hub) else { return };
    let s = stamp(&path);
    if st.offered[kind.index()] == Some(s) {
        return;
    }
    if s.is_none() {
        // Missing (or being replaced): nothing to offer; the database's copy stays in force.
        st.offered[kind.index()] = Some(s);
        return;
    }
    let bytes = match edge_runtime::fsutil::read_limited(
        &path,
        edge_runtime::fsutil::MAX_FILE_BYTES,
    ) {
        Ok(b) => b,
        Err(e) => {
            warn!(document = kind.name(), file = %path.display(), error = %e, "cannot read a fleet document's file");
            st.offered[kind.index()] = Some(s);
            return;
        }
    };
    let version = match check(kind, hub, &bytes) {
        Ok(v) => v,
        Err(e) => {
            warn!(document = kind.name(), file = %path.display(), error = %e, "a fleet document's file is not valid; not offering it to the other hubs");
            st.offered[kind.index()] = Some(s);
            return;
        }
    };
    let by = format!("{} ({})", hub.config.name, hub.config.listen);
    match db.store_fleet_document(kind.name(), version, &bytes, &by, crate::server::now()) {
        Ok(Stored::Stored) => {
            info!(
                document = kind.name(),
                version, "a newer fleet document from this hub's file is now every hub's copy"
            )
        }
        Ok(Stored::Same) => debug!(
            document = kind.name(),
            version, "the database already holds this hub's file"
        ),
        Ok(Stored::Older { held }) => info!(
            document = kind.name(),
            file_version = version,
            database_version = held,
            "this hub's file is older than the database's copy; the database's is in force"
        ),
        Ok(Stored::Conflict) => warn!(
            document = kind.name(),
            version,
            file = %path.display(),
            "this hub's file has the same version as the database's copy but different content; the database's stays in force (is there a second fleet directory?)"
        ),
        Err(e) => {
            // Offered again on the next step.
            warn!(document = kind.name(), error = %e, "cannot offer a fleet document to the database");
            return;
        }
    }
    st.offered[kind.index()] = Some(s);
}

/// Put the database's copy of `kind` in force; `true` when that changed anything.
fn take(kind: Kind, hub: &Hub, body: &[u8], version: u64) -> bool {
    let result = match kind {
        Kind::Crl => match &hub.reloader {
            Some(r) => r.use_crl(body).map(|s| {
                info!(
                    version,
                    revoked = s.revoked_serials,
                    "the fleet CRL from the database is in force"
                );
                true
            }),
            None => return false,
        }
        .map_err(|e| e.to_string()),
        Kind::DenyList => hub.denylist.take(body).inspect(|&newer| {
            if newer {
                info!(
                    version,
                    "the token deny list from the database is in force: passing it to every unit"
                );
                hub.denylist_tx.send_replace(hub.denylist.bytes());
            }
        }),
        Kind::Inventory => Inventory::from_slice(body).map(|inv| {
            info!(
                version,
                units = inv.units.len(),
                "the fleet inventory from the database is in force"
            );
            hub.inventory_cache.install(Some(Arc::new(inv)));
            true
        }),
    };
    match result {
        Ok(c) => c,
        Err(e) => {
            warn!(document = kind.name(), version, error = %e, "the database's copy of a fleet document cannot be used; keeping the one in force");
            false
        }
    }
}
