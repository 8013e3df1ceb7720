//! The LAN listener: HTTPS with the unit's LAN certificate from its bundle (rustls, ring), or
//! plain HTTP only when `edge.toml` says `tls = false` and the address is loopback.

use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use edge_runtime::config::UnitConfig;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// Bind the LAN listener (so the caller knows at once if the address is taken).
pub async fn bind(config: &UnitConfig) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = config
        .lan
        .listen
        .socket_addr()
        .context("the LAN address must be an IP:PORT")?;
    if !config.lan.tls && !addr.ip().is_loopback() {
        anyhow::bail!(
            "edge.toml: lan: tls = false is only allowed on a loopback address ({addr} is not): tablets must use HTTPS"
        );
    }
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for tablets on {addr}"))
}

/// Serve the API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Router, config: &UnitConfig) -> anyhow::Result<()> {
    if !config.lan.tls {
        axum::serve(listener, app).await.context("LAN API")?;
        return Ok(());
    }
    let tls = edge_runtime::tls::lan_server_config(config)
        .context("cannot build the LAN TLS config from the unit's bundle")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "LAN accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "LAN TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = TowerToHyperService::new(app);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                debug!(%peer, error = %e, "LAN connection ended");
            }
        });
    }
}
