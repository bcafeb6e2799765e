//! Where a beacon request goes. It runs here when this node leads and a quorum answers it, is
//! forwarded when another node leads, and goes to the local spool (`spool.rs`) when no node
//! can commit it now. This module also drains the spool once a leader is back.
//!
//! Invariants:
//! - Only a request that reached no Raft log is spooled. Such a request found no leader, or
//!   a leader without a recent quorum, or a leader it could not connect to. So a spooled
//!   batch is the only copy of its beacons.
//! - The spool drains in order, one batch at a time, each with its idempotency key, and a
//!   batch leaves the spool only after the leader answered 200.
//! - A drain request carries `x-tidemark-no-spool`, so no node spools it a second time.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use tidemark_catalog::access::Principal;

use crate::IngestState;
use crate::beacons::{self, IDEMPOTENCY_KEY};
use crate::error::Error;
use crate::forward::{self, FORWARDED_BY, ForwardError};
use crate::node::now_ms;
use crate::spool::{self, NO_SPOOL, Spool};

/// How long a leader may go without a quorum's acknowledgement before it treats itself as
/// cut off: two of its longest election timeouts.
fn quorum_window(s: &IngestState) -> Duration {
    Duration::from_millis(2 * s.node.config().election_timeout_max_ms.max(100))
}

/// Handles `POST /v1/beacons/{datasource}` on any node, for `caller`. A key without the
/// right to the datasource is refused here, where the beacons arrive, before any forwarding
/// or spooling.
pub async fn route(
    s: &IngestState,
    caller: &Principal,
    datasource: &str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let publisher = match beacons::Publisher::of(&s.node, caller, &headers) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = publisher.check_datasource(datasource) {
        return e.into_response();
    }
    let replica = s.node.replica();
    let me = replica.node_id();
    let spool = s.spool.as_ref().filter(|_| !headers.contains_key(NO_SPOOL));
    let leader = replica.leader();
    let leads = replica.is_leader() || leader.as_ref().is_some_and(|(id, _)| *id == me);
    if leads {
        if let Some(spool) = spool
            && !replica.has_recent_quorum(quorum_window(s))
        {
            let why = "this node leads, but no quorum of voters has answered it lately";
            return to_spool(s, spool, datasource, &headers, &body, &publisher, why);
        }
        return beacons::post_beacons(&s.node, &s.limits, datasource, &headers, body, &publisher)
            .await
            .unwrap_or_else(IntoResponse::into_response);
    }
    match leader {
        Some(_) if headers.contains_key(FORWARDED_BY) => Error::Stopped {
            reason: "leadership moved while the request was forwarded; retry it".into(),
        }
        .into_response(),
        Some((id, member)) => {
            let req = request(datasource, &headers, body.clone());
            match forward::forward_request(s.node.peer_https(), &member.http, req, me).await {
                Ok(resp) => {
                    s.node.metrics().http_forwarded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    resp
                }
                Err(ForwardError::Connect(reason)) if let Some(spool) = spool => {
                    tracing::warn!(leader = id, %reason, "the leader is unreachable; spooling a beacon request");
                    let why = format!("the leader (node {id} at {}) is unreachable: {reason}", member.http);
                    to_spool(s, spool, datasource, &headers, &body, &publisher, &why)
                }
                Err(reason) => Error::Replication(tidemark_raft::Error::Stopped(format!(
                    "forwarding to the leader (node {id} at {}) failed: {reason}; retry with the same idempotency key",
                    member.http
                )))
                .into_response(),
            }
        }
        None => match spool {
            Some(spool) => to_spool(
                s,
                spool,
                datasource,
                &headers,
                &body,
                &publisher,
                "no leader is known (no quorum)",
            ),
            None => Error::Replication(tidemark_raft::Error::NotLeader {
                node: me,
                leader: None,
            })
            .into_response(),
        },
    }
}

fn request(datasource: &str, headers: &HeaderMap, body: Bytes) -> axum::extract::Request {
    let mut req = axum::http::Request::new(Body::from(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = format!("/v1/beacons/{datasource}")
        .parse()
        .unwrap_or_default();
    *req.headers_mut() = headers.clone();
    req
}

/// Spools a request and answers 202 `"spooled": true`. The publisher's key id goes with it,
/// so the drain publishes under that key's rights.
fn to_spool(
    s: &IngestState,
    spool: &Spool,
    datasource: &str,
    headers: &HeaderMap,
    body: &[u8],
    publisher: &beacons::Publisher,
    why: &str,
) -> Response {
    let result = (|| {
        if let Some(reason) = s.node.fatal() {
            return Err(Error::Stopped { reason });
        }
        let beacons = beacons::precheck(&s.limits, body)?;
        if s.node.engine().read().catalog().get(datasource).is_none() {
            return Err(Error::NotFound(format!(
                "datasource {datasource:?} does not exist; create it with POST /v1/datasources"
            )));
        }
        let key = beacons::idempotency_key(headers)?
            .unwrap_or_else(|| format!("spool-{}", uuid::Uuid::new_v4()));
        let header = spool::Header {
            datasource: datasource.to_string(),
            idempotency_key: key.clone(),
            received_ms: now_ms(),
            publisher: publisher.key_id.clone(),
        };
        let seq = spool.put(&header, body)?;
        Ok((beacons, key, seq))
    })();
    match result {
        Ok((beacons, key, seq)) => {
            let body = json!({
                "spooled": true,
                "beacons": beacons,
                "idempotency_key": key,
                "spool_seq": seq,
                "reason": why,
                "meaning": "durable on this node only, not yet replicated; it is sent to the leader when the cluster has one",
            });
            (StatusCode::ACCEPTED, Json(body)).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// What became of one drain attempt.
enum Sent {
    Done,
    /// The cluster refused the batch for good (4xx); it is set aside.
    Refused(String),
    /// No leader, no quorum, a transport error: try again later.
    Later(String),
}

/// Sends spooled batches to the leader, oldest first, for as long as the node runs.
pub async fn drain(s: IngestState, spool: Arc<Spool>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Some(item) = spool.oldest() {
            match send(&s, &item).await {
                Sent::Done => {
                    if let Err(e) = spool.remove(item.seq) {
                        tracing::error!(error = %e, "a drained spool file could not be removed");
                        break;
                    }
                }
                Sent::Refused(reason) => {
                    tracing::error!(seq = item.seq, key = %item.header.idempotency_key, %reason, "the cluster refused a spooled batch");
                    if spool.refuse(item.seq, &reason).is_err() {
                        break;
                    }
                }
                Sent::Later(reason) => {
                    tracing::debug!(%reason, "spool drain waits");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

async fn send(s: &IngestState, item: &spool::Spooled) -> Sent {
    let replica = s.node.replica();
    let mut headers = HeaderMap::new();
    let Ok(key) = HeaderValue::from_str(&item.header.idempotency_key) else {
        return Sent::Refused(format!(
            "idempotency key {:?} is not a valid header",
            item.header.idempotency_key
        ));
    };
    headers.insert(IDEMPOTENCY_KEY, key);
    headers.insert(NO_SPOOL, HeaderValue::from_static("1"));
    // The caller was authenticated when the beacons were spooled; a forwarded drain speaks
    // for this node, or a leader with keys would refuse it and the spooled beacons would stay.
    if let Ok(auth) = HeaderValue::from_str(&format!("Bearer {}", s.node.node_token())) {
        headers.insert(axum::http::header::AUTHORIZATION, auth);
    }
    if let Some(id) = item
        .header
        .publisher
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert(beacons::PUBLISHER_HEADER, id);
    }
    let body = Bytes::from(item.body.clone());
    let resp = if replica.is_leader() {
        if !replica.has_recent_quorum(quorum_window(s)) {
            return Sent::Later("no quorum".into());
        }
        match beacons::Publisher::of(&s.node, &Principal::Node, &headers) {
            Ok(publisher) => beacons::post_beacons(
                &s.node,
                &s.limits,
                &item.header.datasource,
                &headers,
                body,
                &publisher,
            )
            .await
            .unwrap_or_else(IntoResponse::into_response),
            Err(e) => e.into_response(),
        }
    } else {
        let Some((_, leader)) = replica.leader() else {
            return Sent::Later("no leader".into());
        };
        let req = request(&item.header.datasource, &headers, body);
        match forward::forward_request(s.node.peer_https(), &leader.http, req, replica.node_id())
            .await
        {
            Ok(r) => r,
            Err(e) => return Sent::Later(e.to_string()),
        }
    };
    let status = resp.status();
    if status == StatusCode::OK {
        return Sent::Done;
    }
    let text = match axum::body::to_bytes(resp.into_body(), 1 << 16).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => e.to_string(),
    };
    // Credentials are the cluster's to sort out, never a reason to give up spooled beacons.
    let retry = [
        StatusCode::REQUEST_TIMEOUT,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::UNAUTHORIZED,
        StatusCode::FORBIDDEN,
    ];
    if status.is_client_error() && !retry.contains(&status) {
        Sent::Refused(format!("{status}: {text}"))
    } else {
        Sent::Later(format!("{status}: {text}"))
    }
}
