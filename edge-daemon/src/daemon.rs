//! The unit daemon put together: cache, audit journal, sync client and LAN API, from a
//! validated `edge.toml`. `edge-daemon run` and `kerbside demo` both use [`run`].

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use edge_runtime::config::UnitConfig;

use crate::cache::Cache;
use crate::journal::{Journal, JournalConfig};
use crate::lan::{self, AccessPolicy, AppState, Auditor, Metrics};
use crate::seal::{FileKeyStore, Sealer};
use crate::status::Status;
use crate::supervisor::{
    self, Health, HostFaults, LinkState, SupervisorActions, SupervisorStatusCell,
};
use crate::sync::SyncClient;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the supervisor board may ask of the unit.
struct UnitActions {
    cache: Arc<Cache>,
    status: Arc<Status>,
    keys_dir: std::path::PathBuf,
    writes_stopped: Arc<AtomicBool>,
}

impl SupervisorActions for UnitActions {
    fn flush(&self) -> bool {
        // Journal appends are fsync'd before each answer; the cache is flushed here.
        self.cache.flush().is_ok()
    }
    fn stop_writes(&self) {
        self.writes_stopped.store(true, Ordering::SeqCst);
    }
    fn resume_writes(&self) {
        self.writes_stopped.store(false, Ordering::SeqCst);
    }
    fn shred(&self) -> bool {
        let ok = crate::seal::shred(&self.keys_dir).is_ok();
        self.cache.shredded();
        ok
    }
    fn health(&self) -> Health {
        if self.status.live().last_error.is_some() {
            Health::Degraded
        } else {
            Health::Ok
        }
    }
    fn led_state(&self) -> (LinkState, HostFaults) {
        let l = self.status.live();
        let link = match l.link {
            crate::status::Link::Down => LinkState::None,
            crate::status::Link::Up if l.rebaselining || !l.caught_up => LinkState::Syncing,
            crate::status::Link::Up => LinkState::Cellular,
        };
        (link, HostFaults::empty())
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = ctrl_c => {},
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {},
    }
}

/// Run the unit until `stop` resolves; everything is flushed before returning.
pub async fn run(cfg: UnitConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data_dir {}", cfg.data_dir.display()))?;
    let keys_dir = cfg.data_dir.join("keys");
    let keystore = FileKeyStore::new(keys_dir.join("kek"));
    let (sealer, key_state) =
        Sealer::open_or_create(&keys_dir, &keystore).context("cannot open the unit's data key")?;
    let (cache, opened) = Cache::open(&cfg.data_dir, Arc::new(sealer), key_state)?;
    let cache = Arc::new(cache);
    if cfg.data_dir.join(crate::cache::TAMPER_MARKER).exists() {
        tracing::error!("this unit's cache was shredded (tamper or wipe): it serves no records until it is re-provisioned in the workshop");
        cache.shredded();
    }
    let status = Arc::new(Status::new(cfg.device_id.clone(), cfg.role));
    let jcfg = JournalConfig::for_unit(&cfg.data_dir, &cfg.audit);
    // The journal has its own data key, so shredding the cache's key keeps pending audit
    // events readable for upload.
    let jkeys = keys_dir.join("journal");
    let (jsealer, _) = Sealer::open_or_create(&jkeys, &FileKeyStore::new(jkeys.join("kek")))
        .context("cannot open the audit journal's key")?;
    let (journal, recovery) =
        Journal::open_with_cipher(jcfg, Arc::new(crate::seal::JournalSealer(jsealer)))
            .context("cannot open the audit journal")?;
    if !recovery.is_clean() {
        tracing::error!(
            problems = recovery.problems.len(),
            "the audit journal has problems (kept on disk, reported to the hub)"
        );
    }
    let problems: Vec<String> = recovery.problems.iter().map(|p| p.to_string()).collect();
    status.update(|l| {
        l.audit_pending = journal.pending();
        l.audit_uploaded_seq = journal.uploaded_seq();
        l.audit_problems = problems;
    });
    let token_key = edge_runtime::keys::load_ed25519_public(&cfg.keys.token_verify)
        .context("cannot load the shift-token verification key")?;
    let state = cache.state()?;
    status.update(|l| l.cursor = state.cursor);
    tracing::info!(
        device = %cfg.device_id,
        records = cache.len(),
        cursor = state.cursor,
        opened = ?opened,
        "edge-daemon starting"
    );
    let writes_stopped = Arc::new(AtomicBool::new(false));
    let supervisor_status = SupervisorStatusCell::default();
    let (client, fetcher) = SyncClient::new(cfg.clone(), cache.clone(), status.clone())?;
    // An access appended to the journal wakes the uploader at once (no polling).
    let audit_wake = Arc::new(tokio::sync::Notify::new());
    let clock = edge_runtime::clock::SystemClock::shared();
    let policy = Arc::new(AccessPolicy::new(
        clock.clone(),
        token_key,
        cfg.device_id.clone(),
        lan::policy::Limits::from(&cfg.lan),
    ));
    let client = client
        .with_journal(journal.clone())
        .with_audit_wake(audit_wake.clone())
        .with_clock(clock.clone())
        .with_denylist(crate::sync::DenyListSink {
            token_key,
            policy: policy.clone(),
        })
        .with_health(
            {
                let (sup, journal, cache, status) = (
                    supervisor_status.clone(),
                    journal.clone(),
                    cache.clone(),
                    status.clone(),
                );
                Arc::new(move || unit_health(&sup, &journal, &cache, &status))
            },
            {
                let sup = supervisor_status.clone();
                let none = cfg.supervisor.mode == edge_runtime::config::SupervisorMode::None;
                Arc::new(move || none || sup.get().mcu.is_some())
            },
        );
    let listener = lan::bind(&cfg).await?;
    tracing::info!(lan = %listener.local_addr()?, tls = cfg.lan.tls, "LAN API listening");
    let sync_task = tokio::spawn(client.run());
    // Hourly housekeeping. On-demand copies expire (edge.toml cache.on_demand_ttl_s): removed
    // from disk hourly, and never served past their expiry in between. Uploaded audit segments
    // past their retention are pruned (the uploader also prunes after every acknowledgement;
    // this covers a unit that stays out of coverage while its uploaded events age out).
    {
        let cache = cache.clone();
        let journal = journal.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
            loop {
                tick.tick().await;
                let j = journal.clone();
                let pruned =
                    tokio::task::spawn_blocking(move || j.prune(edge_runtime::clock::wall_now()))
                        .await;
                if let Ok(Err(e)) = pruned {
                    tracing::warn!(error = %e, "cannot prune uploaded audit segments");
                }
                let c = cache.clone();
                match tokio::task::spawn_blocking(move || c.expire_fetched(crate::sync::now()))
                    .await
                {
                    Ok(Ok(n)) if n > 0 => {
                        tracing::info!(removed = n, "expired on-demand records removed")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot remove expired on-demand records")
                    }
                    _ => {}
                }
            }
        });
    }
    let metrics = Arc::new(Metrics::new(
        status.clone(),
        Some(cache.clone()),
        Some(journal.clone()),
    ));
    let state = AppState::new(lan::Shared {
        cache: cache.clone(),
        status: status.clone(),
        fetcher,
        config: Arc::new(cfg.clone()),
        clock: clock.clone(),
        policy,
        audit: Auditor::new(
            Some(journal.clone()),
            cfg.device_id.clone(),
            status.clone(),
            clock,
            metrics.clone(),
        )
        .with_wake(audit_wake),
        metrics,
        supervisor: supervisor_status.clone(),
        writes_stopped: writes_stopped.clone(),
    });
    tokio::spawn(lan::flush_preauth(state.clone()));
    let app = lan::router(state);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let actions: Arc<dyn SupervisorActions> = Arc::new(UnitActions {
        cache: cache.clone(),
        status: status.clone(),
        keys_dir: keys_dir.clone(),
        writes_stopped: writes_stopped.clone(),
    });
    let supervisor_task = tokio::spawn({
        let (sc, st, tx) = (
            cfg.supervisor.clone(),
            supervisor_status.clone(),
            stop_tx.clone(),
        );
        async move { supervisor::run_supervisor(&sc, actions, st, tx).await }
    });
    let serve = lan::serve(listener, app, &cfg);
    tokio::select! {
        r = serve => r?,
        _ = stop => tracing::info!("edge-daemon stopping"),
        _ = stop_rx.wait_for(|s| *s) => tracing::info!("edge-daemon stopping: the supervisor asked for a shutdown"),
    }
    stop_tx.send_replace(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), supervisor_task).await;
    sync_task.abort();
    cache.flush()?;
    journal.close().await;
    Ok(())
}

/// What the unit reports about itself in its sync hello (`UnitHealth`), for the fleet view.
fn unit_health(
    sup: &SupervisorStatusCell,
    journal: &Journal,
    cache: &Cache,
    status: &Status,
) -> edge_proto::sync::UnitHealth {
    let s = sup.get();
    edge_proto::sync::UnitHealth {
        software: env!("CARGO_PKG_VERSION").to_owned(),
        firmware: s.mcu.as_ref().map(|m| m.firmware.clone()),
        board_rev: s.mcu.as_ref().map(|m| m.board_rev),
        supervisor_mode: s.mode,
        supervisor_connected: s.connected,
        supervisor_fault: s.fault,
        supervisor_faults: s.mcu_status.as_ref().map(|m| m.faults),
        last_shutdown: s.mcu_status.and_then(|m| m.last_shutdown),
        records: cache.len() as u64,
        audit_backlog: journal.pending(),
        audit_last_seq: Some(journal.last_seq()),
        disk_full: status.update(|l| l.disk_full),
    }
}
