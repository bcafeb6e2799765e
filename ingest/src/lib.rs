//! tidemark-ingest: the write doors and the node runtime behind them. HTTP beacons
//! (`beacons.rs`), datasource administration (`datasources.rs`), health and metrics, all as
//! one axum router the binary merges; the Kafka protocol door (`kafka.rs`); `node.rs` turns each
//! write into a command log entry and answers after it is applied.
//!
//! ```text
//!  POST /v1/beacons/{ds} ─► edge checks ─► Node::propose ─► command log ─► Engine::apply
//!  /v1/datasources ───────► catalog command ─┘
//!  GET /health, /metrics ◄── Node gauges
//! ```

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub mod beacons;
pub mod datasources;
pub mod error;
pub mod kafka;
pub mod metrics;
pub mod node;

pub use error::{Error, Result};
pub use node::{Node, NodeConfig};

#[derive(Debug, Clone)]
pub struct IngestState {
    pub node: Node,
    pub limits: beacons::BeaconLimits,
}

/// The ingest and admin HTTP routes.
pub fn router(state: IngestState) -> Router {
    Router::new()
        .route("/v1/beacons/{datasource}", post(post_beacons))
        .route("/v1/datasources", get(list_datasources).post(create_datasource))
        .route("/v1/datasources/{name}", get(show_datasource).put(update_datasource).delete(delete_datasource))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn post_beacons(
    State(s): State<IngestState>,
    Path(ds): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = match beacons::post_beacons(&s.node, &s.limits, &ds, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    s.node.metrics().count_beacon_request(resp.status().as_u16());
    resp
}

async fn list_datasources(State(s): State<IngestState>) -> Response {
    datasources::list(&s.node)
}

async fn create_datasource(State(s): State<IngestState>, body: Bytes) -> Response {
    datasources::create(&s.node, &body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn show_datasource(State(s): State<IngestState>, Path(name): Path<String>) -> Response {
    datasources::show(&s.node, &name).unwrap_or_else(IntoResponse::into_response)
}

async fn update_datasource(State(s): State<IngestState>, Path(name): Path<String>, body: Bytes) -> Response {
    datasources::update(&s.node, &name, &body).await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, serde::Deserialize)]
struct DeleteParams {
    grace: Option<String>,
}

async fn delete_datasource(
    State(s): State<IngestState>,
    Path(name): Path<String>,
    Query(p): Query<DeleteParams>,
) -> Response {
    datasources::delete(&s.node, &name, p.grace.as_deref()).await.unwrap_or_else(IntoResponse::into_response)
}

/// For a load balancer: can this node take writes, reads, or neither.
async fn health(State(s): State<IngestState>) -> Response {
    let fatal = s.node.fatal();
    let engine = s.node.engine();
    let (overloaded, applied) = {
        let e = engine.read();
        (e.is_overloaded(), e.applied_position())
    };
    let writes = fatal.is_none() && !overloaded;
    let body = json!({
        "status": if writes { "ok" } else { "degraded" },
        "writes": writes,
        "reads": true,
        "applied_position": applied,
        "reason": fatal.or_else(|| overloaded.then(|| "realtime index at its memory bound".to_string())),
    });
    let status = if writes { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn metrics(State(s): State<IngestState>) -> Response {
    let text = s.node.metrics().render(s.node.gauges());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
