//! Local network changes — interfaces going up or down, addresses and routes added or
//! removed — from route netlink, so the sync client reacts to a returning link at once instead
//! of polling for it: out of coverage it tries the hub only about once a minute (to spare the
//! radio and a metered contract), and a change here ends that wait; while connected, a change
//! moves the QUIC connection to a fresh socket, which sends a PING from the new path at once
//! (the hub's path follows it) instead of at the next keep-alive.
//!
//! Every message in the subscribed groups counts: what changed is not decoded (any change may
//! be the one that brought the hub back). A burst (a modem re-attaching sends several) is one
//! change once it has been quiet for [`SETTLE`]. Where route netlink cannot be opened (not
//! Linux, no permission), the watcher says so once and never fires; the reconnect back-off
//! then bounds how soon a returning link is used.

use std::time::Duration;

use netlink_sys::{protocols::NETLINK_ROUTE, AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use tokio::sync::watch;
use tracing::{debug, warn};

/// `RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR |
/// RTMGRP_IPV6_ROUTE` (linux/rtnetlink.h).
const GROUPS: u32 = 0x1 | 0x10 | 0x40 | 0x100 | 0x400;

/// A burst of messages is one change once none has arrived for this long.
pub const SETTLE: Duration = Duration::from_millis(150);

/// The number of local network changes seen so far (a receiver's `changed()` wakes on each).
pub struct NetWatch {
    pub changes: watch::Receiver<u64>,
    /// Held so the receiver never reports a closed channel when netlink is unavailable.
    _idle: Option<watch::Sender<u64>>,
}

impl NetWatch {
    /// Subscribe to route netlink and count its changes on a task (needs a tokio runtime).
    pub fn spawn() -> NetWatch {
        let (tx, rx) = watch::channel(0u64);
        match open() {
            Ok(sock) => {
                tokio::spawn(run(sock, tx));
                NetWatch {
                    changes: rx,
                    _idle: None,
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot watch local network changes (route netlink): a returning link is found by the reconnect back-off alone");
                NetWatch {
                    changes: rx,
                    _idle: Some(tx),
                }
            }
        }
    }

    /// A watcher that never fires (tests, tools).
    pub fn never() -> NetWatch {
        let (tx, rx) = watch::channel(0u64);
        NetWatch {
            changes: rx,
            _idle: Some(tx),
        }
    }
}

fn open() -> std::io::Result<TokioSocket> {
    let mut sock = TokioSocket::new(NETLINK_ROUTE)?;
    sock.socket_mut().bind(&SocketAddr::new(0, GROUPS))?;
    Ok(sock)
}

async fn run(sock: TokioSocket, tx: watch::Sender<u64>) {
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        buf.clear();
        if let Err(e) = sock.recv(&mut buf).await {
            // ENOBUFS: messages were lost to an overrun — something changed all the same.
            if e.raw_os_error() != Some(105) {
                warn!(error = %e, "route netlink read failed; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        // Let the burst settle, then count it once.
        loop {
            buf.clear();
            match tokio::time::timeout(SETTLE, sock.recv(&mut buf)).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        debug!("local network changed");
        if tx.is_closed() {
            return;
        }
        tx.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Adding and removing an address on the loopback interface (root only, as in CI) is
    /// seen as a change.
    #[tokio::test]
    async fn an_address_change_is_seen() {
        let w = NetWatch::spawn();
        let mut rx = w.changes.clone();
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !ip(&["addr", "add", "127.31.41.59/32", "dev", "lo"]) {
            assert!(
                std::env::var("CI").is_err(),
                "CI runs as root with iproute2: this test must run there"
            );
            eprintln!("skipped: cannot change an address here (needs root and iproute2)");
            return;
        }
        ip(&["addr", "del", "127.31.41.59/32", "dev", "lo"]);
        let seen = tokio::time::timeout(Duration::from_secs(3), rx.changed()).await;
        assert!(matches!(seen, Ok(Ok(()))), "no change seen");
        assert!(*rx.borrow() >= 1);
        // Quiet afterwards: no change is reported without one.
        let more = tokio::time::timeout(Duration::from_millis(600), rx.changed()).await;
        assert!(more.is_err(), "a change reported with nothing changing");
        // The fallback never fires.
        let quiet = NetWatch::never();
        let mut never = quiet.changes.clone();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), never.changed())
                .await
                .is_err()
        );
    }
}
