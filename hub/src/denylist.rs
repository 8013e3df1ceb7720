//! The fleet's signed token deny list as the hub holds it: one copy, read from
//! `[keys] token_denylist` and verified with `[keys] token_verify`, used by the fetch gate
//! (shift tokens), the admin API (operator tokens) and sent to every unit as the raw signed
//! bytes. The revocation watch in `server.rs` re-reads it; only a newer valid version replaces
//! the one in force.

use std::path::PathBuf;
use std::sync::RwLock;

use edge_proto::denylist::{verify_denylist, DenyList};
use edge_proto::sync::Bytes;
use edge_proto::time::UnixMillis;
use edge_proto::token::{OperatorClaims, ShiftClaims};
use edge_runtime::config::HubConfig;

/// The deny list in force and its raw signed bytes.
#[derive(Debug)]
pub struct TokenDenyList {
    path: Option<PathBuf>,
    key: Option<[u8; 32]>,
    held: RwLock<Option<(DenyList, Bytes)>>,
}

impl TokenDenyList {
    /// The deny list `config` names (none when it names none), read once now. A file that
    /// cannot be read or verified leaves no list in force: see [`TokenDenyList::missing`].
    pub fn open(config: &HubConfig) -> TokenDenyList {
        let list = TokenDenyList {
            path: config.keys.token_denylist.clone(),
            key: edge_runtime::keys::load_ed25519_public(&config.keys.token_verify).ok(),
            held: RwLock::new(None),
        };
        if let Err(e) = list.reload() {
            tracing::warn!(error = %e, "cannot take the token deny list; tokens are checked without it until it can be read");
        }
        list
    }

    /// A deny list is configured but none is in force (unreadable, or not signed by the fleet).
    pub fn missing(&self) -> bool {
        self.path.is_some()
            && self
                .held
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_none()
    }

    /// Re-read the file. `Ok(true)` when a newer valid list was taken; an older, equal or
    /// invalid one leaves the list in force.
    pub fn reload(&self) -> Result<bool, String> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let bytes = edge_runtime::fsutil::read_limited(path, edge_runtime::fsutil::MAX_FILE_BYTES)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.take(&bytes)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The file configured (`[keys] token_denylist`), if any.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// Verify a signed list with the fleet's shift-token key, without taking it.
    pub fn verify(&self, bytes: &[u8]) -> Result<DenyList, String> {
        let Some(key) = &self.key else {
            return Err("no shift-token key ([keys] token_verify) to verify it with".into());
        };
        verify_denylist(bytes, key).map_err(|e| e.to_string())
    }

    /// Take a signed list (a file's bytes, or the copy hubs share in their database):
    /// `Ok(true)` when it is valid and newer than the one in force; an older, equal or invalid
    /// one leaves the list in force.
    pub fn take(&self, bytes: &[u8]) -> Result<bool, String> {
        let list = self.verify(bytes)?;
        let mut cur = self.held.write().unwrap_or_else(|p| p.into_inner());
        let newer = cur.as_ref().is_none_or(|(c, _)| list.supersedes(c));
        if newer {
            *cur = Some((list, Bytes::from(bytes.to_vec())));
        }
        Ok(newer)
    }

    /// The raw signed list in force (what units are sent).
    pub fn bytes(&self) -> Option<Bytes> {
        self.read(|(_, b)| b.clone())
    }

    /// The version in force.
    pub fn version(&self) -> Option<u64> {
        self.read(|(l, _)| l.version)
    }

    /// The list in force denies this shift token.
    pub fn denies(&self, claims: &ShiftClaims, now: UnixMillis) -> bool {
        self.read(|(l, _)| l.denies(claims, now)).unwrap_or(false)
    }

    /// The list in force denies this operator token.
    pub fn denies_operator(&self, claims: &OperatorClaims, now: UnixMillis) -> bool {
        self.read(|(l, _)| l.denies_operator(claims, now))
            .unwrap_or(false)
    }

    fn read<R>(&self, f: impl FnOnce(&(DenyList, Bytes)) -> R) -> Option<R> {
        self.held
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(f)
    }
}
