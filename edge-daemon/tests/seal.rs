//! Encryption at rest: `edge_daemon::seal`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use edge_daemon::seal::{
    shred, FileKeyStore, KeyError, KeyState, KeyStore, KeyStoreError, SealError, Sealer, Secret32,
    SplitKeyStore, DEK_FILE, OVERHEAD, VERSION,
};
use proptest::prelude::*;

const T: &str = "summaries";

fn setup() -> (tempfile::TempDir, FileKeyStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileKeyStore::new(dir.path().join("kek"));
    (dir, store)
}

fn keys(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("keys")
}

fn open(dir: &tempfile::TempDir, store: &dyn KeyStore) -> (Sealer, KeyState) {
    Sealer::open_or_create(&keys(dir), store).unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn seal_open_round_trip() {
    let s = Sealer::ephemeral().unwrap();
    for pt in [&b""[..], b"x", &[0xA5; 2048][..], &vec![7u8; 100_000][..]] {
        let sealed = s.seal(T, b"9434765919", pt).unwrap();
        assert_eq!(sealed.len(), pt.len() + OVERHEAD);
        assert_eq!(sealed[0], VERSION);
        assert_eq!(s.open(T, b"9434765919", &sealed).unwrap(), pt);
    }
    // Empty table and key are allowed and still bound.
    let sealed = s.seal("", b"", b"hello").unwrap();
    assert_eq!(s.open("", b"", &sealed).unwrap(), b"hello");
}

#[test]
fn ciphertext_does_not_contain_plaintext() {
    let s = Sealer::ephemeral().unwrap();
    let pt = b"ALLERGY: penicillin (anaphylaxis) -- NHS 9434765919";
    let sealed = s.seal(T, b"k", pt).unwrap();
    assert!(!sealed.windows(8).any(|w| pt.windows(8).any(|p| p == w)));
}

#[test]
fn tampering_with_any_byte_fails() {
    let s = Sealer::ephemeral().unwrap();
    let sealed = s.seal(T, b"key", b"critical summary bytes").unwrap();
    for i in 0..sealed.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = sealed.clone();
            bad[i] ^= bit;
            let err = s.open(T, b"key", &bad).unwrap_err();
            if i == 0 {
                assert!(matches!(err, SealError::UnknownVersion(_)), "{err:?}");
            } else {
                assert_eq!(err, SealError::Forged, "byte {i}");
            }
        }
    }
    // Every truncation and an extension fail too.
    for n in 0..sealed.len() {
        assert!(s.open(T, b"key", &sealed[..n]).is_err(), "prefix {n}");
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert_eq!(s.open(T, b"key", &longer), Err(SealError::Forged));
}

#[test]
fn typed_errors_for_short_and_unknown_inputs() {
    let s = Sealer::ephemeral().unwrap();
    assert_eq!(s.open(T, b"k", &[]), Err(SealError::Truncated { len: 0 }));
    assert_eq!(
        s.open(T, b"k", &[VERSION; 5]),
        Err(SealError::Truncated { len: 5 })
    );
    assert_eq!(
        s.open(T, b"k", &[VERSION; OVERHEAD - 1]),
        Err(SealError::Truncated { len: OVERHEAD - 1 })
    );
    assert_eq!(s.open(T, b"k", &[2; 64]), Err(SealError::UnknownVersion(2)));
    assert_eq!(
        s.open(T, b"k", &[VERSION; OVERHEAD]),
        Err(SealError::Forged)
    );
}

#[test]
fn value_moved_to_another_key_or_table_fails() {
    let s = Sealer::ephemeral().unwrap();
    let sealed = s.seal("summaries", b"9434765919", b"payload").unwrap();
    assert_eq!(
        s.open("summaries", b"9434765920", &sealed),
        Err(SealError::Forged)
    );
    assert_eq!(
        s.open("objections", b"9434765919", &sealed),
        Err(SealError::Forged)
    );
    // Re-splitting the same bytes between table and key does not help.
    let sealed = s.seal("ab", b"c", b"payload").unwrap();
    assert_eq!(s.open("a", b"bc", &sealed), Err(SealError::Forged));
    assert_eq!(s.open("abc", b"", &sealed), Err(SealError::Forged));
}

#[test]
fn nonces_differ_across_seals_of_the_same_plaintext() {
    let s = Sealer::ephemeral().unwrap();
    let mut nonces = std::collections::HashSet::new();
    let mut bodies = std::collections::HashSet::new();
    for _ in 0..1000 {
        let sealed = s.seal(T, b"k", b"same plaintext every time").unwrap();
        assert!(nonces.insert(sealed[1..13].to_vec()));
        assert!(bodies.insert(sealed[13..].to_vec()));
    }
}

#[test]
fn another_dek_cannot_open() {
    let a = Sealer::ephemeral().unwrap();
    let b = Sealer::ephemeral().unwrap();
    let sealed = a.seal(T, b"k", b"v").unwrap();
    assert_eq!(b.open(T, b"k", &sealed), Err(SealError::Forged));
    assert_ne!(a.key_id(), b.key_id());
    assert_ne!(a.index_key(T, b"k"), b.index_key(T, b"k"));
}

#[test]
fn first_start_creates_a_private_wrapped_dek() {
    let (dir, store) = setup();
    let (_, state) = open(&dir, &store);
    assert_eq!(state, KeyState::Fresh);
    let dek_path = keys(&dir).join(DEK_FILE);
    assert_eq!(mode(&dek_path), 0o600);
    assert_eq!(mode(&keys(&dir)), 0o700);
    assert_eq!(mode(store.path()), 0o600);
    // No temporaries left.
    let names: Vec<_> = fs::read_dir(keys(&dir))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(DEK_FILE)]);
    // The wrapped DEK holds no plaintext key material: not the KEK, nor any 8-byte run of it.
    // (The DEK itself is never exposed by the API; the unit test in src/seal.rs checks it.)
    let file = fs::read(&dek_path).unwrap();
    let kek = fs::read(store.path()).unwrap();
    assert_eq!(kek.len(), 32);
    assert!(!kek.windows(8).any(|w| file.windows(8).any(|f| f == w)));
    assert_eq!(&file[..4], b"KBDK");
}

#[test]
fn reopen_with_the_same_kek_reads_old_data() {
    let (dir, store) = setup();
    let (s, _) = open(&dir, &store);
    let sealed = s.seal(T, b"k", b"kept across restarts").unwrap();
    let id = s.key_id();
    let ik = s.index_key(T, b"9434765919");
    let file_before = fs::read(keys(&dir).join(DEK_FILE)).unwrap();
    let (s, state) = open(&dir, &store);
    assert_eq!(state, KeyState::Existing);
    assert_eq!(s.open(T, b"k", &sealed).unwrap(), b"kept across restarts");
    assert_eq!(s.key_id(), id);
    assert_eq!(s.index_key(T, b"9434765919"), ik);
    assert_eq!(fs::read(keys(&dir).join(DEK_FILE)).unwrap(), file_before);
}

#[test]
fn wrong_kek_is_wrong_key_and_never_replaces_the_dek() {
    let (dir, store) = setup();
    let (s, _) = open(&dir, &store);
    let sealed = s.seal(T, b"k", b"v").unwrap();
    let dek_path = keys(&dir).join(DEK_FILE);
    let before = fs::read(&dek_path).unwrap();

    let other = FileKeyStore::new(dir.path().join("other-kek"));
    let err = Sealer::open_or_create(&keys(&dir), &other).unwrap_err();
    assert!(matches!(err, KeyError::WrongKey { .. }), "{err:?}");
    assert!(err.to_string().contains("does not open"));
    assert_eq!(fs::read(&dek_path).unwrap(), before);

    // The right KEK still works.
    let (s, state) = open(&dir, &store);
    assert_eq!(state, KeyState::Existing);
    assert_eq!(s.open(T, b"k", &sealed).unwrap(), b"v");
}

#[test]
fn corrupt_dek_file_is_reported_and_kept() {
    let (dir, store) = setup();
    open(&dir, &store);
    let dek_path = keys(&dir).join(DEK_FILE);
    let mut bytes = fs::read(&dek_path).unwrap();

    // Truncated.
    fs::write(&dek_path, &bytes[..20]).unwrap();
    let err = Sealer::open_or_create(&keys(&dir), &store).unwrap_err();
    assert!(matches!(err, KeyError::CorruptKeyFile { .. }), "{err:?}");
    assert_eq!(fs::read(&dek_path).unwrap().len(), 20);

    // A flipped bit in the wrapped key: indistinguishable from a wrong KEK, and still kept.
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&dek_path, &bytes).unwrap();
    let err = Sealer::open_or_create(&keys(&dir), &store).unwrap_err();
    assert!(matches!(err, KeyError::WrongKey { .. }), "{err:?}");
    assert_eq!(fs::read(&dek_path).unwrap(), bytes);

    // Bad magic.
    bytes[0] = b'X';
    fs::write(&dek_path, &bytes).unwrap();
    let err = Sealer::open_or_create(&keys(&dir), &store).unwrap_err();
    assert!(matches!(err, KeyError::CorruptKeyFile { .. }), "{err:?}");
}

#[test]
fn crash_between_link_and_unlink_keeps_the_dek() {
    // `open_or_create` links its temporary to `dek.sealed` and then unlinks it; a crash in
    // between leaves both names on one inode. The next start must keep the DEK intact.
    let (dir, store) = setup();
    let (s, _) = open(&dir, &store);
    let sealed = s.seal(T, b"k", b"v").unwrap();
    let tmp = keys(&dir).join("dek.sealed.tmp.999");
    fs::hard_link(keys(&dir).join(DEK_FILE), &tmp).unwrap();
    // An unrelated stale temporary (crash before the link) is removed too.
    fs::write(keys(&dir).join("dek.sealed.tmp.998"), [9u8; 65]).unwrap();
    for _ in 0..2 {
        let (s, state) = open(&dir, &store);
        assert_eq!(state, KeyState::Existing);
        assert_eq!(s.open(T, b"k", &sealed).unwrap(), b"v");
    }
    assert!(!tmp.exists());
    assert!(!keys(&dir).join("dek.sealed.tmp.998").exists());
}

#[test]
fn shred_makes_old_data_unreadable_and_reopen_is_fresh() {
    let (dir, store) = setup();
    let (s, _) = open(&dir, &store);
    let sealed = s.seal(T, b"k", b"to be shredded").unwrap();
    let old_id = s.key_id();
    let old_ik = s.index_key(T, b"9434765919");

    // A stale temporary from an interrupted creation is shredded too.
    fs::write(keys(&dir).join("dek.sealed.tmp.123"), b"leftover").unwrap();
    shred(&keys(&dir)).unwrap();
    let left: Vec<_> = fs::read_dir(keys(&dir)).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // Idempotent (a crash mid-shred is handled by shredding again), also with no directory.
    shred(&keys(&dir)).unwrap();
    shred(&dir.path().join("never-existed")).unwrap();

    let (s, state) = open(&dir, &store);
    assert_eq!(state, KeyState::Fresh);
    assert_eq!(s.open(T, b"k", &sealed), Err(SealError::Forged));
    assert_ne!(s.key_id(), old_id);
    assert_ne!(s.index_key(T, b"9434765919"), old_ik);
}

#[test]
fn index_key_is_stable_keyed_and_per_table() {
    let (dir, store) = setup();
    let (s, _) = open(&dir, &store);
    let nhs = b"9434765919";
    let a = s.index_key("summaries", nhs);
    assert_eq!(a, s.index_key("summaries", nhs));
    assert_ne!(a, s.index_key("objections", nhs));
    assert_ne!(a, s.index_key("summaries", b"9434765920"));
    // Table and id are not re-splittable.
    assert_ne!(s.index_key("ab", b"c"), s.index_key("a", b"bc"));
    // Not a plain SHA-256 of the id.
    let plain = ring::digest::digest(&ring::digest::SHA256, nhs);
    assert_ne!(&a[..], plain.as_ref());
    let (s, _) = open(&dir, &store);
    assert_eq!(s.index_key("summaries", nhs), a);
}

fn split_store(dir: &Path, share: [u8; 32], up: Arc<AtomicBool>, host: &str) -> SplitKeyStore {
    SplitKeyStore::new(
        move || {
            if up.load(Ordering::SeqCst) {
                Ok(Secret32::new(share))
            } else {
                Err(KeyStoreError::Unavailable("link down".into()))
            }
        },
        dir.join(host),
    )
}

#[test]
fn split_key_store_needs_both_share_and_host_secret() {
    let dir = tempfile::tempdir().unwrap();
    let up = Arc::new(AtomicBool::new(false));
    let share: [u8; 32] = std::array::from_fn(|i| i as u8 + 1);
    let store = split_store(dir.path(), share, Arc::clone(&up), "host.secret");

    // Supervisor not answering: an error, and nothing is created.
    let err = Sealer::open_or_create(&keys(&dir), &store).unwrap_err();
    assert!(matches!(
        err,
        KeyError::KeyStore(KeyStoreError::Unavailable(_))
    ));
    assert!(!keys(&dir).join(DEK_FILE).exists());

    up.store(true, Ordering::SeqCst);
    let (s, state) = open(&dir, &store);
    assert_eq!(state, KeyState::Fresh);
    let sealed = s.seal(T, b"k", b"v").unwrap();
    assert_eq!(mode(&dir.path().join("host.secret")), 0o600);
    let (s, state) = open(&dir, &store);
    assert_eq!(state, KeyState::Existing);
    assert_eq!(s.open(T, b"k", &sealed).unwrap(), b"v");

    // A new share (the MCU erased its share after tamper) → WrongKey.
    let mut other = share;
    other[0] ^= 1;
    let after_tamper = split_store(dir.path(), other, Arc::clone(&up), "host.secret");
    let err = Sealer::open_or_create(&keys(&dir), &after_tamper).unwrap_err();
    assert!(matches!(err, KeyError::WrongKey { .. }), "{err:?}");
    // Another host secret → WrongKey.
    let other_host = split_store(dir.path(), share, Arc::clone(&up), "other.secret");
    let err = Sealer::open_or_create(&keys(&dir), &other_host).unwrap_err();
    assert!(matches!(err, KeyError::WrongKey { .. }), "{err:?}");
    // An erased (blank) share is refused outright.
    let blank = split_store(dir.path(), [0; 32], up, "host.secret");
    assert!(matches!(blank.kek(), Err(KeyStoreError::BlankShare)));
    // Debug prints no share.
    assert!(!format!("{store:?}").contains(&format!("{:?}", &share[..4])));
}

#[test]
fn key_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek");
    fs::write(&path, [1u8; 32]).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let store = FileKeyStore::new(&path);
    assert!(matches!(
        store.kek(),
        Err(KeyStoreError::InsecurePermissions { mode: 0o644, .. })
    ));
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(store.kek().unwrap().expose(), &[1u8; 32]);
    fs::write(&path, [1u8; 31]).unwrap();
    assert!(matches!(
        store.kek(),
        Err(KeyStoreError::Malformed { len: 31, .. })
    ));
    // The same KEK every time once created.
    let fresh = FileKeyStore::new(dir.path().join("sub/dir/kek"));
    assert_eq!(fresh.kek().unwrap().expose(), fresh.kek().unwrap().expose());
}

#[test]
fn debug_output_holds_no_secret() {
    let secret = Secret32::new([0x42; 32]);
    let d = format!("{secret:?}");
    assert!(!d.contains("66") && !d.contains("42"), "{d}");
    let s = Sealer::ephemeral().unwrap();
    let d = format!("{s:?}");
    assert!(d.starts_with("Sealer"), "{d}");
}

#[test]
fn sealer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Sealer>();
    check::<SplitKeyStore>();
    check::<FileKeyStore>();
}

proptest! {
    #[test]
    fn open_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        table in ".{0,12}",
        key in proptest::collection::vec(any::<u8>(), 0..16),
        versioned in any::<bool>(),
    ) {
        let s = Sealer::ephemeral().unwrap();
        let mut bytes = bytes;
        if versioned && !bytes.is_empty() {
            bytes[0] = VERSION;
        }
        prop_assert!(s.open(&table, &key, &bytes).is_err());
    }

    #[test]
    fn round_trip_and_single_bit_flips(
        pt in proptest::collection::vec(any::<u8>(), 0..512),
        table in "[a-z]{0,10}",
        key in proptest::collection::vec(any::<u8>(), 0..24),
        pos in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let s = Sealer::ephemeral().unwrap();
        let sealed = s.seal(&table, &key, &pt).unwrap();
        prop_assert_eq!(s.open(&table, &key, &sealed).unwrap(), pt);
        let mut bad = sealed.clone();
        bad[pos.index(sealed.len())] ^= 1 << bit;
        prop_assert!(s.open(&table, &key, &bad).is_err());
    }
}

/// Micro-benchmark for BENCHMARKS.md. Run in release:
/// `cargo test --release -p edge-daemon --test seal -- --ignored --nocapture bench_seal_open_2k`
#[test]
#[ignore = "benchmark; run in release with --ignored --nocapture"]
fn bench_seal_open_2k() {
    let s = Sealer::ephemeral().unwrap();
    let pt = vec![0x5Au8; 2048];
    let key = s.index_key(T, b"9434765919");
    for _ in 0..2_000 {
        let sealed = s.seal(T, &key, &pt).unwrap();
        std::hint::black_box(s.open(T, &key, &sealed).unwrap());
    }
    let mut best = f64::MAX;
    let (mut seal_best, mut open_best) = (f64::MAX, f64::MAX);
    const N: u32 = 20_000;
    for _ in 0..5 {
        let t = Instant::now();
        let mut sealed = Vec::new();
        for _ in 0..N {
            sealed = std::hint::black_box(s.seal(T, &key, &pt).unwrap());
        }
        let seal_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        let t = Instant::now();
        for _ in 0..N {
            std::hint::black_box(s.open(T, &key, &sealed).unwrap());
        }
        let open_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        seal_best = seal_best.min(seal_us);
        open_best = open_best.min(open_us);
        best = best.min(seal_us + open_us);
    }
    let t = Instant::now();
    for _ in 0..N {
        std::hint::black_box(s.index_key(T, b"9434765919"));
    }
    let ik_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
    println!(
        "seal 2 KiB: {seal_best:.2} µs, open 2 KiB: {open_best:.2} µs, seal+open: {best:.2} µs, \
         index_key: {ik_us:.2} µs (best of 5 × {N})"
    );
}
