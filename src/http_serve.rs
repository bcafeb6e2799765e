//! Serves the HTTP router with bounds on its connections: how many in all and per address
//! (`tidemark_ingest::connections`), and a deadline for each request's headers, counted from
//! when the connection is ready for its next request, so a client that trickles its headers
//! (slowloris) or holds a keep-alive connection idle gives its place back.
//!
//! `axum::serve` does the same loop without either bound (its hyper builder has no timer,
//! so hyper's header timeout is off); this is that loop with them.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tidemark_ingest::connections::ConnectionGate;
use tower::ServiceExt;

/// How long a shutdown waits for open connections to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The HTTP listener's bounds, from `[http]` in the config.
#[derive(Debug, Clone)]
pub(crate) struct Bounds {
    pub(crate) connections: Arc<ConnectionGate>,
    pub(crate) header_read_timeout: Duration,
}

impl Bounds {
    /// `connections_max` lowered to `max`, `why`, if that is lower.
    pub(crate) fn from_config(http: &crate::config::HttpSection, max: usize, why: &str) -> Bounds {
        Bounds {
            connections: ConnectionGate::lowered(
                "http",
                http.connections_max,
                http.connections_per_address_max,
                max,
                why,
            ),
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
        }
    }
}

/// Serves `app` on `listener` until `stop` resolves, then lets the open connections finish
/// their requests (graceful shutdown) and returns.
pub(crate) async fn serve<L>(
    mut listener: L,
    app: Router,
    bounds: Bounds,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout);
    // HTTP/2 has no header deadline per connection: pings find peers that went away.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(bounds.header_read_timeout))
        .keep_alive_timeout(bounds.header_read_timeout);
    let builder = Arc::new(builder);
    // Every connection's task holds a receiver; the sender learns when all are gone.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (io, peer) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut stop => break,
        };
        let Ok(place) = bounds.connections.admit(peer.ip()) else {
            // Closed at once; the gate counted and logged it.
            continue;
        };
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|r: Request<Incoming>| r.map(Body::new)),
        );
        let builder = builder.clone();
        let mut stopping = stopping_rx.clone();
        tokio::spawn(async move {
            let _place = place;
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "http connection ended with an error");
                    }
                    return;
                }
                _ = stopping.changed() => conn.as_mut().graceful_shutdown(),
            }
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    drop(stopping_rx);
    let _ = stopping_tx.send(true);
    // A client that stopped reading must not hold the node's shutdown: past the grace
    // period the remaining connections are dropped with the runtime.
    if tokio::time::timeout(SHUTDOWN_GRACE, stopping_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            "http connections still open after {SHUTDOWN_GRACE:?} of shutdown; closing them"
        );
    }
    Ok(())
}
