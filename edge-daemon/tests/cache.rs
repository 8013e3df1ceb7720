//! The unit's cache: on-demand copies expire and are removed from disk; a shredded cache
//! serves and stores nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use edge_daemon::cache::Cache;
use edge_daemon::seal::{KeyState, Sealer};
use edge_proto::nhs::NhsNumber;
use edge_proto::sync::Bytes;
use edge_proto::time::UnixMillis;

#[test]
fn on_demand_copies_expire_and_leave_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = Arc::new(Sealer::ephemeral().unwrap());
    let (cache, _) = Cache::open(dir.path(), sealer, KeyState::Fresh).unwrap();
    let nhs = NhsNumber::parse("9434765919").unwrap();
    let t0 = UnixMillis(1_000_000);
    let record = Bytes::from(b"a summary's bytes".to_vec());
    cache
        .put_fetched(&nhs, 3, record.clone(), t0, t0.plus_ms(72 * 3_600_000))
        .unwrap();
    let got = cache.get_fetched(&nhs, t0.plus_ms(1_000)).unwrap().unwrap();
    assert_eq!(got.record, record);
    assert_eq!(got.version, 3);
    // Past its lifetime it is never served, and the sweep removes it from disk.
    let later = t0.plus_ms(72 * 3_600_000 + 1);
    assert!(cache.get_fetched(&nhs, later).unwrap().is_none());
    cache
        .put_fetched(&nhs, 4, record.clone(), t0, t0.plus_ms(10))
        .unwrap();
    assert_eq!(cache.expire_fetched(t0.plus_ms(11)).unwrap(), 1);
    assert_eq!(cache.expire_fetched(t0.plus_ms(12)).unwrap(), 0);
    cache.flush().unwrap();
    let mut bytes = Vec::new();
    for e in walk(dir.path()) {
        bytes.extend(std::fs::read(e).unwrap());
    }
    assert!(
        !bytes.windows(17).any(|w| w == b"a summary's bytes"),
        "never in plaintext on disk"
    );
}

#[test]
fn a_shredded_cache_serves_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sealer = Arc::new(Sealer::ephemeral().unwrap());
    let (cache, _) = Cache::open(dir.path(), sealer, KeyState::Fresh).unwrap();
    let nhs = NhsNumber::parse("9434765919").unwrap();
    let t0 = UnixMillis(1_000_000);
    let record = Bytes::from(b"x".to_vec());
    cache
        .put_fetched(&nhs, 1, record.clone(), t0, t0.plus_ms(1_000_000))
        .unwrap();
    cache.shredded();
    assert!(cache.is_shredded());
    assert!(cache.get_fetched(&nhs, t0).unwrap().is_none());
    assert!(cache
        .put_fetched(&nhs, 2, record, t0, t0.plus_ms(1))
        .is_err());
    assert!(dir.path().join(edge_daemon::cache::TAMPER_MARKER).exists());
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
