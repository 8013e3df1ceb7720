//! Shared helpers: a temporary fleet, the CLI, the clock.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use edge_proto::time::UnixMillis;

/// The current time, as the CLI reads it.
pub fn now() -> UnixMillis {
    let t = time::OffsetDateTime::now_utc();
    UnixMillis(i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap())
}

/// Run `edge-provision ARGS`.
pub fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-provision"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run edge-provision")
}

/// Run `edge-provision ARGS` and require success; returns stdout.
pub fn cli_ok(args: &[&str]) -> String {
    let o = cli(args);
    assert!(
        o.status.success(),
        "edge-provision {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Run `edge-provision ARGS`, require failure, return stderr.
pub fn cli_err(args: &[&str]) -> String {
    let o = cli(args);
    assert!(
        !o.status.success(),
        "edge-provision {args:?} unexpectedly succeeded"
    );
    String::from_utf8(o.stderr).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A temporary workshop: a fleet and a hub bundle, made through the CLI.
pub struct Workshop {
    pub tmp: tempfile::TempDir,
    pub fleet: PathBuf,
    pub hub: PathBuf,
}

impl Workshop {
    pub fn new() -> Workshop {
        let tmp = tempfile::tempdir().unwrap();
        let fleet = tmp.path().join("fleet");
        let hub = tmp.path().join("hub");
        cli_ok(&["ca", "init", "--fleet", s(&fleet)]);
        cli_ok(&[
            "hub",
            "--fleet",
            s(&fleet),
            "--name",
            "127.0.0.1",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--out",
            s(&hub),
        ]);
        Workshop { tmp, fleet, hub }
    }

    /// Enrol a vehicle unit with extra CLI arguments; returns its bundle directory.
    pub fn enrol(&self, device: &str, extra: &[&str]) -> PathBuf {
        let out = self.tmp.path().join(device);
        let mut args = vec![
            "enrol",
            "--fleet",
            s(&self.fleet),
            "--device-id",
            device,
            "--role",
            "vehicle",
            "--hub",
            "127.0.0.1:4433",
            "--hub-name",
            "127.0.0.1",
            "--lan",
            "127.0.0.1:8443",
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        cli_ok(&args);
        out
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}
