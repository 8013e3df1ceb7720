//! Kerbside whole-system test support: finding and running the real release binaries.
//!
//! Whole-system tests and benches start `edge-hub`, `edge-daemon` and `edge-provision` as real
//! processes. [`bin`] builds them once (release) if they are missing and returns their path.
//! [`rng`] is the one seeded random generator of the tests, the benches and the impairment
//! proxy.

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
/// The seeded random generator used throughout the tests: ChaCha8, whose output for a seed is
/// fixed across platforms and crate versions, so a printed seed replays a run.
pub type TestRng = rand::rngs::ChaCha8Rng;

/// The test RNG for `seed`. Draw with [`rand::RngExt`] (`random_range`, `random_bool`, …) or
/// [`unit_f64`]; print the seed so that a failure can be replayed.
pub fn rng(seed: u64) -> TestRng {
    use rand::SeedableRng;
    TestRng::seed_from_u64(seed)
}

/// A draw uniform in [0, 1) from the top 53 bits of one `u64`: computed here rather than by a
/// `rand` distribution so that the value for a seed cannot change with the `rand` version.
pub fn unit_f64(rng: &mut TestRng) -> f64 {
    use rand::Rng;
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

pub mod fleet;
pub mod proxy;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngExt;

    #[test]
    fn rng_replays_for_a_seed_and_differs_across_seeds() {
        let draw = |seed| {
            let mut r = rng(seed);
            (0..64)
                .map(|_| r.random_range(0..1000u32))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let mut r = rng(1);
        assert!((0..10_000)
            .map(|_| unit_f64(&mut r))
            .all(|u| (0.0..1.0).contains(&u)));
    }
}
