//! tidemark-ingest: the write doors and the node runtime behind them. HTTP beacons
//! (`beacons.rs`), datasource administration (`datasources.rs`), health and metrics, all as
//! one axum router the binary merges; the Kafka protocol door (`kafka.rs`); `node.rs` turns each
//! write into a Raft log entry and answers after it is applied.
//!
//! ```text
//!  POST /v1/beacons/{ds} ─► edge checks ─► Node::propose ─► Raft log ─► Engine::apply
//!  /v1/datasources ───────► catalog command ─┘
//!  /v1/governance ────────► catalog command (tag registry; suggest reads it)
//!  /v1/keys ──────────────► catalog command (API keys; auth.rs checks every route's caller)
//!  GET /health, /metrics ◄── Node gauges
//! ```

use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tidemark_catalog::access::Principal;

pub mod admin_grpc;
pub mod auth;
pub mod beacon_routing;
pub mod beacons;
pub mod cluster;
pub mod connections;
pub mod copies;
pub mod datasources;
pub mod error;
pub mod forward;
pub mod governance;
pub mod jobs;
pub mod kafka;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod segments;
pub mod spool;

pub use error::{Error, Result};
pub use node::{Node, NodeConfig};

#[derive(Debug, Clone)]
pub struct IngestState {
    pub node: Node,
    pub limits: beacons::BeaconLimits,
    /// The no-quorum spool for beacons; `None` when switched off (then: 503).
    pub spool: Option<std::sync::Arc<spool::Spool>>,
    /// How long a request with a wrong key waits for its 401 (limits.failed_login_delay_ms).
    pub failed_login_delay: std::time::Duration,
    /// Metrics of parts the binary wires in beside ingest (the SQL doors' query gate).
    pub more_metrics: Vec<std::sync::Arc<dyn RenderMetrics>>,
}

/// A part of the node that adds lines to `/metrics` (Prometheus text format).
pub trait RenderMetrics: Send + Sync + std::fmt::Debug {
    fn render_metrics(&self) -> String;
}

/// The ingest and admin HTTP routes, each behind the key check of `auth.rs`. Writes run on
/// the leader: a follower forwards them.
pub fn router(state: IngestState) -> Router {
    let leader = || axum::middleware::from_fn_with_state(state.clone(), forward::leader_only);
    Router::new()
        // Beacons route themselves: forwarded, or spooled when no quorum can take them.
        .route("/v1/beacons/{datasource}", post(post_beacons))
        .route(
            "/v1/datasources",
            get(list_datasources).merge(post(create_datasource).layer(leader())),
        )
        .route(
            "/v1/datasources/{name}",
            get(show_datasource).merge(
                put(update_datasource)
                    .delete(delete_datasource)
                    .layer(leader()),
            ),
        )
        .route(
            "/v1/governance/domains",
            get(list_domains).merge(post(create_domain).layer(leader())),
        )
        .route(
            "/v1/governance/domains/{domain}",
            get(show_domain).merge(put(update_domain).layer(leader())),
        )
        .route("/v1/governance/domains/{domain}/tags", get(list_tags))
        .route(
            "/v1/governance/domains/{domain}/tags/{tag}",
            get(show_tag).merge(put(put_tag).delete(remove_tag).layer(leader())),
        )
        .route("/v1/governance/suggest", get(suggest_tag))
        .route("/v1/governance/retention", get(list_retention))
        .route(
            "/v1/governance/retention/{datasource}",
            get(show_retention).merge(put(put_retention).layer(leader())),
        )
        .route("/v1/segments", get(list_segments))
        .route("/v1/segments/verify", post(verify_segments))
        .route("/v1/segments/drop", post(drop_segments).layer(leader()))
        .route("/v1/segments/{datasource}/{segment}", get(show_segment))
        .route("/v1/reindex", post(start_reindex).layer(leader()))
        .route("/v1/compact", post(start_compact).layer(leader()))
        .route("/v1/delete", post(start_delete).layer(leader()))
        .route("/v1/export", post(export_raw))
        .route("/v1/backup", post(take_backup))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/copies", post(record_copy).layer(leader()))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/v1/jobs/{id}/progress", get(job_progress))
        .route("/v1/jobs/{id}/cancel", post(cancel_job).layer(leader()))
        .route(
            "/v1/keys",
            get(list_keys).merge(post(create_key).layer(leader())),
        )
        .route(
            "/v1/keys/{id}",
            axum::routing::delete(revoke_key).layer(leader()),
        )
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/cluster/join", post(cluster::join).layer(leader()))
        .route(
            "/v1/cluster/learners",
            post(cluster::add_learner).layer(leader()),
        )
        .route(
            "/v1/cluster/promote",
            post(cluster::promote).layer(leader()),
        )
        .route("/v1/cluster/remove", post(cluster::remove).layer(leader()))
        .route(
            "/v1/cluster/transfer-leader",
            post(cluster::transfer_leader).layer(leader()),
        )
        .route(
            "/v1/cluster/read-index",
            get(cluster::read_index).layer(leader()),
        )
        .route(
            "/v1/cluster/init-producer",
            post(cluster::init_producer).layer(leader()),
        )
        .route("/v1/test/faults", post(cluster::set_faults))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state)
}

async fn post_beacons(
    State(s): State<IngestState>,
    caller: Option<Extension<Principal>>,
    Path(ds): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = caller.map_or(Principal::Anonymous, |Extension(p)| p);
    let resp = beacon_routing::route(&s, &caller, &ds, headers, body).await;
    s.node
        .metrics()
        .count_beacon_request(resp.status().as_u16());
    resp
}

async fn list_datasources(State(s): State<IngestState>) -> Response {
    datasources::list(&s.node)
}

async fn create_datasource(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    body: Bytes,
) -> Response {
    datasources::create(&s.node, &c.actor(), &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn show_datasource(State(s): State<IngestState>, Path(name): Path<String>) -> Response {
    datasources::show(&s.node, &name).unwrap_or_else(IntoResponse::into_response)
}

async fn update_datasource(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    datasources::update(&s.node, &c.actor(), &name, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, serde::Deserialize)]
struct DeleteParams {
    grace: Option<String>,
}

async fn delete_datasource(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    Path(name): Path<String>,
    Query(p): Query<DeleteParams>,
) -> Response {
    datasources::delete(&s.node, &c.actor(), &name, p.grace.as_deref())
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn list_domains(State(s): State<IngestState>) -> Response {
    governance::list_domains(&s.node)
}

async fn create_domain(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    body: Bytes,
) -> Response {
    governance::create_domain(&s.node, &c.actor(), &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn show_domain(State(s): State<IngestState>, Path(domain): Path<String>) -> Response {
    governance::show_domain(&s.node, &domain).unwrap_or_else(IntoResponse::into_response)
}

async fn update_domain(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    Path(domain): Path<String>,
    body: Bytes,
) -> Response {
    governance::update_domain(&s.node, &c.actor(), &domain, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn list_tags(State(s): State<IngestState>, Path(domain): Path<String>) -> Response {
    governance::list_tags(&s.node, &domain).unwrap_or_else(IntoResponse::into_response)
}

async fn show_tag(
    State(s): State<IngestState>,
    Path((domain, tag)): Path<(String, String)>,
) -> Response {
    governance::show_tag(&s.node, &domain, &tag).unwrap_or_else(IntoResponse::into_response)
}

async fn put_tag(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    Path((domain, tag)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    governance::put_tag(&s.node, &c.actor(), &domain, &tag, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn remove_tag(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    Path((domain, tag)): Path<(String, String)>,
) -> Response {
    governance::remove_tag(&s.node, &c.actor(), &domain, &tag)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn suggest_tag(
    State(s): State<IngestState>,
    Query(p): Query<governance::SuggestParams>,
) -> Response {
    governance::suggest(&s.node, &p).unwrap_or_else(IntoResponse::into_response)
}

async fn list_retention(State(s): State<IngestState>) -> Response {
    governance::list_retention(&s.node)
}

async fn show_retention(State(s): State<IngestState>, Path(ds): Path<String>) -> Response {
    governance::show_retention(&s.node, &ds).unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, serde::Deserialize)]
struct DryRun {
    #[serde(default)]
    dry_run: bool,
}

async fn put_retention(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    Path(ds): Path<String>,
    Query(q): Query<DryRun>,
    body: Bytes,
) -> Response {
    governance::put_retention(&s.node, &c, &ds, &body, q.dry_run)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, serde::Deserialize)]
struct SegmentsQuery {
    datasource: String,
}

async fn list_segments(State(s): State<IngestState>, Query(q): Query<SegmentsQuery>) -> Response {
    segments::list(&s.node, &q.datasource).unwrap_or_else(IntoResponse::into_response)
}

async fn verify_segments(
    State(s): State<IngestState>,
    Query(p): Query<segments::VerifyParams>,
) -> Response {
    segments::verify(&s.node, &p)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn start_reindex(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    body: Bytes,
) -> Response {
    jobs::reindex(&s.node, &c.actor(), &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn show_segment(
    State(s): State<IngestState>,
    Path((ds, segment)): Path<(String, String)>,
) -> Response {
    segments::show(&s.node, &ds, &segment).unwrap_or_else(IntoResponse::into_response)
}

async fn take_backup(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    body: Bytes,
) -> Response {
    copies::backup(&s.node, &c.actor(), &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn export_raw(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    body: Bytes,
) -> Response {
    copies::export(&s.node, &c.actor(), &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// A copy's entry carries the user its node authenticated as the audit actor: only a node
/// (holding the cluster secret) vouches for that, never an API key, an admin's included.
async fn record_copy(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    body: Bytes,
) -> Response {
    if matches!(c, Principal::Key { .. }) {
        let error = "POST /v1/jobs/copies is a node-to-node route (it names the user a node authenticated): \
                     only cluster members call it; start a copy with POST /v1/export or /v1/backup";
        return (StatusCode::FORBIDDEN, Json(json!({ "error": error }))).into_response();
    }
    copies::copied(&s.node, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn start_delete(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    body: Bytes,
) -> Response {
    jobs::delete(&s.node, &c.actor(), &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn start_compact(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    body: Bytes,
) -> Response {
    jobs::compact(&s.node, &c.actor(), &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn drop_segments(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    body: Bytes,
) -> Response {
    jobs::drop_interval(&s.node, &c.actor(), &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn list_jobs(State(s): State<IngestState>) -> Response {
    jobs::list(&s.node)
}

async fn job_progress(State(s): State<IngestState>, Path(id): Path<u64>) -> Response {
    jobs::progress(&s.node, id).unwrap_or_else(IntoResponse::into_response)
}

async fn show_job(State(s): State<IngestState>, Path(id): Path<u64>) -> Response {
    jobs::show(&s.node, id)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn cancel_job(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    Path(id): Path<u64>,
) -> Response {
    jobs::cancel(&s.node, &c.actor(), id)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn list_keys(State(s): State<IngestState>) -> Response {
    keys::list(&s.node)
}

async fn create_key(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    body: Bytes,
) -> Response {
    keys::create(&s.node, &c.actor(), &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn revoke_key(
    State(s): State<IngestState>,
    Extension(c): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    keys::revoke(&s.node, &c.actor(), &id)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, serde::Deserialize)]
struct HealthParams {
    /// `writes` (default) or `reads`: what the load balancer needs this node for.
    require: Option<String>,
}

/// For a load balancer: can this node take writes (it leads, or knows the leader to forward
/// to), serve reads (it applied a committed state and is not stopped), or neither. The status
/// is 200 when the `require`d capability (writes by default) is there, 503 otherwise.
async fn health(State(s): State<IngestState>, Query(p): Query<HealthParams>) -> Response {
    let fatal = s.node.fatal();
    let engine = s.node.engine();
    let (overloaded, applied) = {
        let e = engine.read();
        (e.is_overloaded(), e.applied_position())
    };
    let cluster = s.node.replica().status();
    let leader_known = cluster.leader.is_some();
    let writes = fatal.is_none() && !overloaded && leader_known;
    let reads = fatal.is_none() && cluster.applied_index.is_some();
    let trouble = s.node.trouble();
    let kafka_failing = s
        .node
        .metrics()
        .kafka_accept_failing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let reason = fatal
        .clone()
        .or_else(|| {
            (!leader_known)
                .then(|| "no leader is known: election in progress, or no quorum".to_string())
        })
        .or_else(|| overloaded.then(|| "realtime index at its memory bound".to_string()))
        .or_else(|| {
            kafka_failing
                .as_ref()
                .map(|e| format!("the Kafka port cannot accept connections: {e}"))
        })
        .or_else(|| trouble.clone());
    let body = json!({
        "status": if writes && reads && kafka_failing.is_none() && trouble.is_none() { "ok" } else { "degraded" },
        "listeners": { "kafka": kafka_failing.as_ref().map_or("ok".to_string(), |e| format!("failing: {e}")) },
        "writes": writes,
        "reads": reads,
        "role": cluster.state,
        "node_id": cluster.node_id,
        "leader": cluster.leader,
        "term": cluster.term,
        "applied_position": applied,
        "reason": reason,
        "spool": s.spool.as_ref().map(|sp| {
            let (batches, bytes) = sp.depth();
            json!({ "batches": batches, "bytes": bytes })
        }),
    });
    let ok = match p.require.as_deref() {
        Some("reads") => reads,
        _ => writes,
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(s): State<IngestState>) -> Response {
    let mut text = s.node.metrics().render(s.node.gauges());
    if let Some(sp) = &s.spool {
        text.push_str(&sp.render_metrics());
    }
    for part in &s.more_metrics {
        text.push_str(&part.render_metrics());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
