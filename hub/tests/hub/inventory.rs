//! The fleet inventory cache: read once, re-read only when the file changes, the last good
//! copy kept when the file cannot be read.

use edge_hub::inventory::InventoryCache;
use edge_proto::ids::DeviceId;

use crate::common::{hub, write_inventory};

fn ids(cache: &InventoryCache) -> Option<Vec<String>> {
    cache.get().map(|inv| {
        inv.units
            .iter()
            .map(|u| u.device_id.as_str().to_owned())
            .collect()
    })
}

#[test]
fn the_file_is_read_once_and_again_only_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.json");
    write_inventory(&path, &[("LAS-AMB-0001", false)]);
    let cache = InventoryCache::new(Some(path.clone()));
    assert_eq!(cache.loads(), 0, "nothing read before it is asked for");
    for _ in 0..50 {
        assert_eq!(ids(&cache).unwrap(), ["LAS-AMB-0001"]);
    }
    assert_eq!(cache.loads(), 1, "one read for fifty look-ups");

    write_inventory(&path, &[("LAS-AMB-0001", false), ("LAS-AMB-0002", true)]);
    assert_eq!(ids(&cache).unwrap(), ["LAS-AMB-0001", "LAS-AMB-0002"]);
    assert_eq!(cache.loads(), 2);
    let inv = cache.get().unwrap();
    assert!(inv
        .unit(&DeviceId::parse("LAS-AMB-0002").unwrap())
        .unwrap()
        .revoked());
    assert_eq!(cache.loads(), 2);
}

#[test]
fn a_file_that_cannot_be_parsed_leaves_the_last_good_copy_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.json");
    write_inventory(&path, &[("LAS-AMB-0001", false)]);
    let cache = InventoryCache::new(Some(path.clone()));
    assert_eq!(ids(&cache).unwrap(), ["LAS-AMB-0001"]);

    // Half-written by an editor.
    std::fs::write(&path, b"{\"format\": 1, \"fleet_id\": ").unwrap();
    assert_eq!(ids(&cache).unwrap(), ["LAS-AMB-0001"]);
    assert_eq!(ids(&cache).unwrap(), ["LAS-AMB-0001"]);
    assert_eq!(
        cache.loads(),
        2,
        "the bad version is tried once, not on every look-up"
    );

    // Moved away: still the last good copy.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(ids(&cache).unwrap(), ["LAS-AMB-0001"]);
    assert_eq!(ids(&cache).unwrap(), ["LAS-AMB-0001"]);
    assert_eq!(cache.loads(), 3);

    // Fixed: read again.
    write_inventory(&path, &[("LAS-AMB-0003", false)]);
    assert_eq!(ids(&cache).unwrap(), ["LAS-AMB-0003"]);
}

#[test]
fn no_inventory_until_one_can_be_read() {
    assert!(InventoryCache::new(None).get().is_none());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.json");
    let cache = InventoryCache::new(Some(path.clone()));
    assert!(cache.get().is_none(), "missing");
    std::fs::write(&path, b"not json").unwrap();
    assert!(cache.get().is_none(), "never good");
    // A format this build does not know.
    std::fs::write(
        &path,
        br#"{"format": 99, "fleet_id": "x", "created_at": "2026-01-01T00:00:00Z", "crl_number": 1}"#,
    )
    .unwrap();
    assert!(cache.get().is_none());
    write_inventory(&path, &[("LAS-AMB-0001", false)]);
    assert_eq!(ids(&cache).unwrap(), ["LAS-AMB-0001"]);
}

#[test]
fn the_hub_answers_from_its_cached_inventory() {
    let t = hub(Some(&[("LAS-AMB-0001", false)]));
    for _ in 0..10 {
        assert_eq!(t.hub.inventory().unwrap().units.len(), 1);
    }
    assert_eq!(t.hub.inventory_cache.loads(), 1);
    write_inventory(
        &t.dir.path().join("inventory.json"),
        &[("LAS-AMB-0001", false), ("LAS-AMB-0002", false)],
    );
    assert_eq!(t.hub.inventory().unwrap().units.len(), 2);
    assert_eq!(t.hub.inventory_cache.loads(), 2);
    assert!(hub(None).hub.inventory().is_none());
}

#[test]
fn callers_racing_the_first_read_all_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.json");
    write_inventory(&path, &[("LAS-AMB-0001", false)]);
    let cache = InventoryCache::new(Some(path));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| ids(&cache))).collect();
        for h in handles {
            assert_eq!(
                h.join().unwrap().as_deref(),
                Some(&["LAS-AMB-0001".to_owned()][..]),
                "no caller may see \"no inventory\" (and admit any unit) while it is first read"
            );
        }
    });
    assert_eq!(cache.loads(), 1);
}
