//! Tidy checks that keep parts of ARCHITECTURE.md true as the code changes: every source file
//! says what it is (`//!`), the unit daemon holds no process-global mutable state, and the
//! ambulance binary does not link the hub or the certificate authority.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if !matches!(
                name.as_str(),
                "target" | "node_modules" | ".git" | "corpus" | "artifacts"
            ) {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

const CRATES: &[&str] = &[
    "proto",
    "runtime",
    "edge-daemon",
    "hub",
    "provisioning",
    "synth",
    "kerbside",
    "firmware",
    "hw",
    "tests",
    "fuzz",
];

#[test]
fn every_source_file_opens_with_a_module_doc_comment() {
    let mut files = Vec::new();
    for c in CRATES {
        rust_files(&root().join(c), &mut files);
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    let missing: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty() && !l.starts_with("#!"))
                .unwrap_or("");
            !first.starts_with("//!")
        })
        .map(|f| f.strip_prefix(root()).unwrap_or(f).display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "these files do not open with a `//!` comment saying what they hold: {missing:#?}"
    );
}

#[test]
fn the_daemon_has_no_process_global_mutable_state() {
    let mut files = Vec::new();
    rust_files(&root().join("edge-daemon/src"), &mut files);
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (i, line) in text.lines().enumerate() {
            let l = line.trim_start();
            if l.starts_with("static ") || l.starts_with("pub static ") {
                let decl: String = text.lines().skip(i).take(3).collect::<Vec<_>>().join(" ");
                // Immutable tables built once (`OnceLock<Table>`) are constants, not state.
                if ["Mutex", "RwLock", "RefCell", "Cell<", "Atomic"]
                    .iter()
                    .any(|k| decl.contains(k))
                {
                    found.push(format!("{}:{}", f.display(), i + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "process-global mutable state in the daemon (own it in a driver instead): {found:?}"
    );
}

#[test]
fn the_unit_daemon_links_neither_the_hub_nor_the_ca() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root())
        .args([
            "tree",
            "-p",
            "edge-daemon",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("edge-runtime"), "{tree}");
    for banned in [
        "edge-hub ",
        "edge-provision ",
        "kerbside-synth ",
        "sled-hub",
    ] {
        assert!(
            !tree.lines().any(|l| l.starts_with(banned)),
            "edge-daemon's normal dependencies include {banned}"
        );
    }
}
