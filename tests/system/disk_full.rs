//! Disk full on the unit (issue 17): the unit's data directory is a small tmpfs. Filled up while
//! the hub has news for the unit, the unit says so in `/v1/status`, keeps answering lookups from
//! what it holds with every answer's audit event durable (the journal's current segment is
//! reserved ahead), applies nothing half-way, and resumes the sync by itself once space returns.
//!
//! Mounting needs root: in CI (`CI=true`) a failed mount fails the test; on a developer's own
//! machine without root it is skipped with a note.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kerbside_tests::fleet::{lookup, nhs_numbers, wait_for, Fleet};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "kerbside-test",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Write `path` until the filesystem refuses another byte; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k as u64,
        }
    }
    // Single bytes into the last partial block.
    while let Ok(1) = f.write(&[0]) {
        n += 1;
    }
    let _ = f.sync_all();
    n
}

#[test]
fn a_full_disk_pauses_the_sync_keeps_lookups_audited_and_resumes_when_space_returns() {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0040", &[]).unwrap();
    let data_dir = f.units[u].dir.join("data");
    let Some(_mount) = Tmpfs::mount(&data_dir, "64m") else {
        assert!(
            !ci,
            "cannot mount a tmpfs for the disk-full test (CI runs as root)"
        );
        eprintln!("NOTE: skipped: mounting a tmpfs needs root");
        return;
    };

    let all = f.synth("all.ndjson", 2600, 23).unwrap();
    let text = std::fs::read_to_string(&all).unwrap();
    let first: String = text.lines().take(2000).map(|l| format!("{l}\n")).collect();
    let rest: String = text.lines().skip(2000).map(|l| format!("{l}\n")).collect();
    let first_file = f.path("first.ndjson");
    std::fs::write(&first_file, &first).unwrap();
    f.ingest_offline(&first_file).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 2000, Duration::from_secs(60)).unwrap();
    let s = f.status(u).unwrap();
    assert_eq!(s["storage"]["disk_full"], false, "{s}");
    assert!(s["storage"]["free_bytes"].as_u64().unwrap() > 0, "{s}");

    // Fill the disk, then send the unit news it cannot store.
    let filler = data_dir.join("filler");
    let filled = fill(&filler);
    assert!(filled > 0);
    let (code, body) = f.admin("POST", "/admin/ingest", Some(&rest)).unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for(Duration::from_secs(30), || {
        Ok(f.status(u)?["storage"]["disk_full"] == true)
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}\n{}", f.status(u), f.unit_log(u)));
    let s = f.status(u).unwrap();
    // Nothing half-applied: the records are those of the last batch that was written.
    let held = s["records"].as_u64().unwrap();
    assert!((2000..2600).contains(&held), "{s}");
    assert_eq!(s["storage"]["free_bytes"], 0, "{s}");

    // Lookups keep answering from what is there, each with a durable audit event.
    let tok = f
        .clinician_token(0x40, "555000111940", "PARAMEDIC, Disk")
        .unwrap();
    let lan = f.units[u].lan.clone();
    let nhs = nhs_numbers(&first_file).unwrap();
    let pending_before = s["audit_pending"].as_u64().unwrap();
    for n in nhs.iter().take(10) {
        let (code, body) = lookup(&lan, &tok, n, &[]).unwrap();
        assert_eq!(code, 200, "lookup on a full disk: {body}");
    }
    // The answers' events are in the journal (uploaded or pending), none lost.
    let s = f.status(u).unwrap();
    assert_eq!(s["storage"]["disk_full"], true, "{s}");
    let uploaded_or_pending =
        s["audit_pending"].as_u64().unwrap() + s["audit_uploaded_seq"].as_u64().unwrap();
    assert!(uploaded_or_pending >= pending_before + 10, "{s}");

    // Space returns: the sync resumes by itself and the status clears.
    std::fs::remove_file(&filler).unwrap();
    f.wait_records(u, 2600, Duration::from_secs(40)).unwrap();
    wait_for(Duration::from_secs(10), || {
        let s = f.status(u)?;
        Ok(s["storage"]["disk_full"] == false && s["audit_pending"] == 0)
    })
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", f.status(u)));
    // Every lookup made on the full disk reached the hub's audit repository.
    let (code, body) = f
        .admin("GET", "/admin/audit?staff=555000111940", None)
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let reads = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["device_id"] == "LAS-AMB-0040" && e["action"] == "read")
        .count();
    assert_eq!(reads, 10, "{body}");
    // And a lookup of a patient that arrived after the disk was full answers.
    let later = nhs_numbers(&all).unwrap()[2599].clone();
    let (code, body) = lookup(&lan, &tok, &later, &[]).unwrap();
    assert_eq!(code, 200, "{body}\n{}", f.unit_log(u));
    f.stop_unit(u, false).unwrap();
}
