//! The fleet inventory as the hub sees it: read once, kept in memory, and read again only when
//! the file changes.
//!
//! Every unit connection, `GET /admin/devices` and `POST /admin/wipe` consult the inventory.
//! Reading and parsing the file each time (up to 16 MiB of JSON) was wasted work on every
//! connection; now each look-up costs one `stat`: the file is parsed again only when its
//! modification time or length differs from the copy in hand.
//!
//! A file that cannot be read or parsed (half-written by an operator's editor, a format this
//! build does not know) never holds up a connection: the last good copy stays in use and a
//! warning is logged, once per changed file. Before any good copy was read the hub has no
//! inventory, as when none is configured, and admits every unit the CA and CRL admit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use edge_runtime::inventory::Inventory;
use tracing::{info, warn};

/// What identifies one version of the file: its modification time and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp {
            modified: m.modified().ok(),
            len: m.len(),
        })
    }
}

#[derive(Debug, Default)]
struct State {
    /// The last copy that parsed.
    good: Option<Arc<Inventory>>,
    /// The version of the file last tried, good or not (`Some(None)`: it was missing): not
    /// tried again until it changes.
    tried: Option<Option<Stamp>>,
    /// How many times the file was parsed (for tests and the log).
    loads: u64,
}

/// The fleet inventory, cached and reloaded when the file changes.
#[derive(Debug)]
pub struct InventoryCache {
    path: Option<PathBuf>,
    /// Set when hubs share a database: the inventory in force is the database's copy
    /// ([`InventoryCache::install`]) and the file is never consulted here.
    shared: Mutex<Option<Option<Arc<Inventory>>>>,
    state: Mutex<State>,
    /// Held while the file is read and parsed (one reader at a time, outside `state`).
    reading: Mutex<()>,
}

impl InventoryCache {
    /// A cache of the inventory at `path` (none configured: `None`). Nothing is read yet.
    pub fn new(path: Option<PathBuf>) -> InventoryCache {
        InventoryCache {
            path,
            shared: Mutex::new(None),
            state: Mutex::new(State::default()),
            reading: Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inventory: the copy in hand, re-read first when the file changed since it was last
    /// tried. `None` when no inventory is configured or none was ever read successfully.
    ///
    /// One caller re-reads a changed file; callers meanwhile answer from the copy in hand
    /// rather than wait for the parse (except before the first read, when there is no copy
    /// to answer from and every caller waits for it).
    pub fn get(&self) -> Option<Arc<Inventory>> {
        if let Some(shared) = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return shared.clone();
        }
        let path = self.path.as_ref()?;
        let stamp = Stamp::of(path);
        let first = {
            let st = self.state();
            if st.tried == Some(stamp) {
                return st.good.clone();
            }
            st.tried.is_none()
        };
        let _reading = if first {
            self.reading.lock().unwrap_or_else(|p| p.into_inner())
        } else {
            match self.reading.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return self.state().good.clone(),
            }
        };
        // Another caller may have read this very version while this one waited.
        if self.state().tried == Some(stamp) {
            return self.state().good.clone();
        }
        // Changed (or never tried, or gone): read it again. A missing file keeps the last copy
        // too, so a unit is not let in or kept out by an operator's `mv` in progress.
        let loaded = Inventory::load(path);
        let mut st = self.state();
        st.tried = Some(stamp);
        st.loads += 1;
        match loaded {
            Ok(inv) => {
                if st.good.is_some() {
                    info!(units = inv.units.len(), "fleet inventory changed: reloaded");
                }
                st.good = Some(Arc::new(inv));
            }
            Err(e) if st.good.is_some() => {
                warn!(error = %e, "cannot read the fleet inventory; keeping the last good copy");
            }
            Err(e) => {
                warn!(error = %e, "cannot read the fleet inventory; no inventory until it can be read");
            }
        }
        st.good.clone()
    }

    /// From now on the inventory in force is the one the hubs' shared database holds: `inv`
    /// (`None`: the database holds none yet, so there is no inventory, as when none is
    /// configured). The file is no longer consulted by [`InventoryCache::get`].
    pub fn install(&self, inv: Option<Arc<Inventory>>) {
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(inv);
    }

    /// The file configured (`inventory` in hub.toml), if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// How many times the file has been read (each change of the file costs one).
    pub fn loads(&self) -> u64 {
        self.state().loads
    }
}
