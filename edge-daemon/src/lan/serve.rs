//! The LAN listener: HTTPS with the unit's LAN certificate from its bundle (rustls, ring), or
//! plain HTTP only when `edge.toml` says `tls = false` and the address is loopback. One accept
//! loop for both, with the `[lan]` limits: at most `max_connections` open (further connections
//! wait in the kernel's backlog), the TLS handshake and each request's headers within
//! `header_read_timeout_s` (slow-loris), and a connection with no bytes either way for
//! `idle_timeout_s` closed. Each request carries its client address (`ConnectInfo`) for the
//! per-client limits.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::ConnectInfo;
use axum::Router;
use edge_runtime::config::UnitConfig;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
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

/// An I/O stream that notes when bytes last moved (for the idle timeout).
struct Watched<S> {
    inner: S,
    origin: Instant,
    last: Arc<AtomicU64>,
}

impl<S> Watched<S> {
    fn touch(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    /// Forwarded, so that hyper hands an answer's head and body to TLS in one call (its
    /// queued write strategy) and they leave as one `writev`; without it, each answer went out
    /// in two TLS records and two system calls.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serve one connection until it ends, goes idle, or is too slow with its headers.
async fn connection<S>(
    io: S,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    idle: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let origin = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Watched {
        inner: io,
        origin,
        last: last.clone(),
    };
    let app = app.layer(axum::Extension(ConnectInfo(peer)));
    let svc = TowerToHyperService::new(app);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    let watchdog = async {
        loop {
            let quiet = u64::try_from(origin.elapsed().as_millis())
                .unwrap_or(u64::MAX)
                .saturating_sub(last.load(Ordering::Relaxed));
            let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
            if quiet >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
        }
    };
    tokio::select! {
        r = conn => if let Err(e) = r {
            debug!(%peer, error = %e, "LAN connection ended");
        },
        () = watchdog => debug!(%peer, "LAN connection idle: closed"),
    }
}

/// Serve the API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Router, config: &UnitConfig) -> anyhow::Result<()> {
    let acceptor = if config.lan.tls {
        let tls = edge_runtime::tls::lan_server_config(config)
            .context("cannot build the LAN TLS config from the unit's bundle")?;
        Some(tokio_rustls::TlsAcceptor::from(tls))
    } else {
        None
    };
    let l = &config.lan;
    let header_timeout = Duration::from_secs(l.header_read_timeout_s);
    let idle = Duration::from_secs(l.idle_timeout_s);
    let slots = Arc::new(Semaphore::new(
        usize::try_from(l.max_connections).unwrap_or(256),
    ));
    loop {
        // Wait for a free slot before accepting: past the cap, connections queue in the backlog.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            anyhow::bail!("the LAN connection limiter closed");
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "LAN accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                None => connection(tcp, peer, app, header_timeout, idle).await,
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "LAN TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "LAN TLS handshake too slow: closed");
                            return;
                        }
                    };
                    connection(tls, peer, app, header_timeout, idle).await;
                }
            }
        });
    }
}
