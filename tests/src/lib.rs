//! Kerbside whole-system test support: finding and running the real release binaries.
//!
//! Whole-system tests and benches start `edge-hub`, `edge-daemon` and `edge-provision` as real
//! processes. [`bin`] builds them once (release) if they are missing and returns their path.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of a release binary of the workspace, building the workspace's binaries once if needed.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("release").join(name);
    let built = BUILT.get_or_init(|| {
        if path.exists() && std::env::var_os("KERBSIDE_REBUILD").is_none() {
            return Ok(());
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "--release", "--workspace", "--bins"])
            .current_dir(workspace_root())
            .status()
            .map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cargo build --release failed: {status}"))
        }
    });
    built.clone().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(path.exists(), "no release binary {}", path.display());
    Ok(path)
}

/// Write `n` synthetic patients with `edge-hub synth` into `dir` and return the file path.
pub fn synth(dir: &std::path::Path, n: u32, seed: u64, sources: u32) -> anyhow::Result<PathBuf> {
    let out = dir.join(format!("synth-{n}-{seed}-{sources}.ndjson"));
    let st = Command::new(bin("edge-hub")?)
        .args([
            "synth",
            "--patients",
            &n.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args(["--sources", &sources.to_string(), "--out"])
        .arg(&out)
        .status()?;
    anyhow::ensure!(st.success(), "edge-hub synth failed: {st}");
    Ok(out)
}
pub mod fleet;
pub mod proxy;
