//! Writes that reach a follower: any node accepts them, and a follower hands the request as it
//! came (method, path, headers, body) to the leader's HTTP address and answers with the
//! leader's answer. The client never needs to know who leads.
//!
//! Invariants:
//! - A request is forwarded at most once: the forwarded copy carries `x-tidemark-forwarded-by`,
//!   and a node that receives one without leading answers 503 (leadership moved on the way)
//!   rather than forwarding again, so no request can loop.
//! - With no leader known (an election, or no quorum) the answer is 503 with `Retry-After`.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::HOST;
use axum::http::{HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tidemark_raft::NodeId;

use crate::IngestState;
use crate::error::Error;

pub const FORWARDED_BY: &str = "x-tidemark-forwarded-by";

/// Middleware for write routes: runs the route on the leader, forwards it from a follower.
pub async fn leader_only(State(s): State<IngestState>, req: Request, next: Next) -> Response {
    let replica = s.node.replica();
    if replica.is_leader() {
        return next.run(req).await;
    }
    let me = replica.node_id();
    let no_leader = || {
        Error::Replication(tidemark_raft::Error::NotLeader {
            node: me,
            leader: None,
        })
    };
    match replica.leader() {
        // Raft's view and the metrics can disagree for a moment; let Raft decide.
        Some((id, _)) if id == me => next.run(req).await,
        Some(_) if req.headers().contains_key(FORWARDED_BY) => Error::Stopped {
            reason: "leadership moved while the request was forwarded; retry it".into(),
        }
        .into_response(),
        Some((id, leader)) => match forward(&s.node, &leader.http, req, me).await {
            Ok(resp) => {
                s.node
                    .metrics()
                    .http_forwarded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                resp
            }
            Err(reason) => {
                tracing::warn!(leader = id, %reason, "forwarding a write to the leader failed");
                Error::Replication(tidemark_raft::Error::Stopped(format!(
                    "forwarding to the leader (node {id} at {}) failed: {reason}; retry with the same idempotency key",
                    leader.http
                )))
                .into_response()
            }
        },
        None => no_leader().into_response(),
    }
}

/// Sends a JSON request to the leader's HTTP API and returns its JSON answer (for Kafka
/// requests a follower must have the leader run, such as InitProducerId). It authenticates
/// with the node token once the cluster has keys.
pub(crate) async fn call_leader(
    node: &crate::Node,
    addr: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    ask_node(node, addr, path, body)
        .await
        .map_err(|refusal| match refusal {
            LeaderRefusal::Refused(status, message) => {
                format!("leader answered {status}: {message}")
            }
            LeaderRefusal::Unreachable(e) => e,
        })
}

/// Why the leader did not answer a request with success: its refusal (status and message),
/// or no answer at all.
#[derive(Debug)]
pub(crate) enum LeaderRefusal {
    Refused(axum::http::StatusCode, String),
    Unreachable(String),
}

/// [`call_leader`], telling the leader's refusals (with their status) from failures to reach it.
pub(crate) async fn ask_leader(
    node: &crate::Node,
    addr: &str,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, LeaderRefusal> {
    ask_node(node, addr, path, Some(body)).await
}

/// A JSON request to another node's HTTP API (POST with a body, else GET), with the node
/// token once the cluster has keys.
pub(crate) async fn ask_node(
    node: &crate::Node,
    addr: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, LeaderRefusal> {
    let me = node.replica().node_id();
    let token = node.node_token();
    let method = if body.is_some() {
        axum::http::Method::POST
    } else {
        axum::http::Method::GET
    };
    let mut req = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header(axum::http::header::CONTENT_TYPE, "application/json");
    req = req.header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"));
    let unreachable = |e: String| LeaderRefusal::Unreachable(e);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req
        .body(Body::from(body))
        .map_err(|e| unreachable(e.to_string()))?;
    let resp = forward(node, addr, req, me).await.map_err(unreachable)?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if !status.is_success() {
        // The leader's error body is {"error": "..."}; its message is what a caller shows.
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        return Err(LeaderRefusal::Refused(status, message));
    }
    serde_json::from_slice(&bytes).map_err(|e| unreachable(e.to_string()))
}

/// Why a forward failed: before anything was sent (the leader cannot have the request), or
/// during the exchange (it may have applied it).
#[derive(Debug)]
pub(crate) enum ForwardError {
    Connect(String),
    Exchange(String),
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::Connect(e) => write!(f, "cannot connect: {e}"),
            ForwardError::Exchange(e) => write!(f, "{e}"),
        }
    }
}

async fn forward(
    node: &crate::Node,
    addr: &str,
    req: Request,
    me: NodeId,
) -> Result<Response, String> {
    forward_request(node.peer_https(), addr, req, me)
        .await
        .map_err(|e| e.to_string())
}

/// How a node reaches its peers' HTTP ports when they serve TLS: the cluster's CA, and the
/// name their certificates carry (default: the address's IP).
#[derive(Clone)]
pub struct PeerHttps {
    pub connector: tokio_rustls::TlsConnector,
    pub name: Option<String>,
}

impl std::fmt::Debug for PeerHttps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerHttps")
            .field("name", &self.name)
            .finish()
    }
}

impl PeerHttps {
    /// Trusts the CA certificates in `ca_pem`.
    pub fn new(ca_pem: &[u8], name: Option<String>) -> Result<PeerHttps, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(PeerHttps {
            connector: std::sync::Arc::new(config).into(),
            name,
        })
    }
}

/// An HTTP/1 client connection over `io` (plain TCP or TLS), driven by its own task.
async fn http1<IO>(io: IO) -> Result<hyper::client::conn::http1::SendRequest<Body>, ForwardError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(io))
        .await
        .map_err(|e| ForwardError::Exchange(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "forwarding connection closed");
        }
    });
    Ok(sender)
}

/// Sends `req` to the node at `addr` as forwarded by `me` (over TLS with `tls`).
pub(crate) async fn forward_request(
    tls: Option<&PeerHttps>,
    addr: &str,
    mut req: Request,
    me: NodeId,
) -> Result<Response, ForwardError> {
    let connect = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(addr),
    );
    let stream = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ForwardError::Connect(e.to_string())),
        Err(_) => return Err(ForwardError::Connect("no connection within 2 s".into())),
    };
    let exchange = |e: String| ForwardError::Exchange(e);
    let _ = stream.set_nodelay(true);
    let mut sender = match tls {
        None => http1(stream).await?,
        Some(t) => {
            let host = t.name.clone().unwrap_or_else(|| {
                addr.rsplit_once(':')
                    .map_or(addr, |(h, _)| h)
                    .trim_matches(['[', ']'])
                    .to_string()
            });
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|e| ForwardError::Connect(format!("peer name: {e}")))?;
            let handshake = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                t.connector.connect(name, stream),
            );
            let stream = match handshake.await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(ForwardError::Connect(format!("TLS: {e}"))),
                Err(_) => return Err(ForwardError::Connect("no TLS handshake within 5 s".into())),
            };
            http1(stream).await?
        }
    };
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    *req.uri_mut() = path.parse::<Uri>().map_err(|e| exchange(e.to_string()))?;
    let headers = req.headers_mut();
    headers.insert(
        HOST,
        HeaderValue::from_str(addr).map_err(|e| exchange(e.to_string()))?,
    );
    headers.insert(FORWARDED_BY, HeaderValue::from(me));
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| exchange(e.to_string()))?;
    Ok(resp.map(Body::new))
}
