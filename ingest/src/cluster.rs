//! Cluster administration over HTTP, for `tidemark cluster …` and for a node that joins:
//! status (any node, its own view), and membership changes (run on the leader; a follower
//! forwards them, see `forward.rs`).
//!
//! ```text
//!  GET  /v1/cluster                     this node's view: role, leader, term, indexes, members
//!  POST /v1/cluster/join                {node_id, raft, http, kafka}: learner, caught up, voter
//!  POST /v1/cluster/learners            {node_id, raft, http, kafka}: add as learner only
//!  POST /v1/cluster/promote             {node_id}: learner becomes voter
//!  POST /v1/cluster/remove              {node_id}
//!  POST /v1/cluster/transfer-leader     {node_id}
//!  GET  /v1/cluster/read-index          (leader) the index a linearizable read must see
//! ```

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tidemark_raft::{Member, NodeId};

use tidemark_engine::Applied;
use tidemark_engine::command::{Command, InitProducerCommand};

use crate::IngestState;
use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    node_id: NodeId,
    raft: String,
    http: String,
    kafka: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeBody {
    node_id: NodeId,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("request body: {e}")))
}

fn member(b: MemberBody) -> Result<(NodeId, Member)> {
    if b.node_id == 0 {
        return Err(Error::BadRequest("node_id must be positive".into()));
    }
    for (name, addr) in [("raft", &b.raft), ("http", &b.http), ("kafka", &b.kafka)] {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::BadRequest(format!(
                "{name}: {addr:?} is not an address like 127.0.0.2:9093"
            )));
        }
    }
    Ok((
        b.node_id,
        Member {
            raft: b.raft,
            http: b.http,
            kafka: b.kafka,
        },
    ))
}

fn done(what: String, s: &IngestState) -> Response {
    (
        axum::http::StatusCode::OK,
        Json(json!({ "ok": what, "cluster": s.node.replica().status() })),
    )
        .into_response()
}

pub(crate) async fn status(State(s): State<IngestState>) -> Response {
    Json(s.node.replica().status()).into_response()
}

pub(crate) async fn join(State(s): State<IngestState>, body: Bytes) -> Response {
    let run = async {
        let (id, m) = member(parse(&body)?)?;
        let replica = s.node.replica();
        match replica.status().voters.get(&id) {
            Some(known) if *known == m => {
                return Ok(done(format!("node {id} is already a voter"), &s));
            }
            Some(_) => {
                // The same node restarted on other addresses: record them.
                replica.update_member(id, m).await?;
                return Ok(done(format!("node {id} has new addresses"), &s));
            }
            None => {}
        }
        // Blocking: the node becomes a voter only once it holds the log, so adding it never
        // stalls commits while it catches up.
        replica.add_learner(id, m, true).await?;
        replica.promote(BTreeSet::from([id])).await?;
        Ok::<_, Error>(done(format!("node {id} joined as a voter"), &s))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn add_learner(State(s): State<IngestState>, body: Bytes) -> Response {
    let run = async {
        let (id, m) = member(parse(&body)?)?;
        s.node.replica().add_learner(id, m, false).await?;
        Ok::<_, Error>(done(format!("node {id} added as a learner"), &s))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn promote(State(s): State<IngestState>, body: Bytes) -> Response {
    let run = async {
        let b: NodeBody = parse(&body)?;
        s.node
            .replica()
            .promote(BTreeSet::from([b.node_id]))
            .await?;
        Ok::<_, Error>(done(format!("node {} is a voter", b.node_id), &s))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn remove(State(s): State<IngestState>, body: Bytes) -> Response {
    let run = async {
        let b: NodeBody = parse(&body)?;
        if !s.node.replica().members().contains_key(&b.node_id) {
            return Err(Error::NotFound(format!(
                "node {} is not a member",
                b.node_id
            )));
        }
        s.node.replica().remove(BTreeSet::from([b.node_id])).await?;
        Ok::<_, Error>(done(format!("node {} removed", b.node_id), &s))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn transfer_leader(State(s): State<IngestState>, body: Bytes) -> Response {
    let run = async {
        let b: NodeBody = parse(&body)?;
        s.node
            .replica()
            .transfer_leader(b.node_id, Duration::from_secs(10))
            .await?;
        Ok::<_, Error>(done(format!("node {} leads", b.node_id), &s))
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InitProducerBody {
    /// A producer's current id and epoch, to bump its epoch (KIP-360); none: a new id.
    existing: Option<(i64, i16)>,
}

/// Kafka InitProducerId, run on the leader for a follower that received it.
pub(crate) async fn init_producer(State(s): State<IngestState>, body: Bytes) -> Response {
    let run = async {
        let b: InitProducerBody = parse(&body)?;
        let cmd = Command::InitProducer(InitProducerCommand {
            existing: b.existing,
        });
        match s.node.propose(&cmd).await? {
            Applied::Producer { id, epoch } => {
                Ok(Json(json!({ "producer_id": id, "epoch": epoch })).into_response())
            }
            other => Err(Error::Stopped {
                reason: format!("InitProducerId applied as {other:?}"),
            }),
        }
    };
    run.await.unwrap_or_else(|e: Error| e.into_response())
}

/// Test-only: replaces this node's Raft transport fault rules (404 unless the node was
/// started with `--test-faults`).
pub(crate) async fn set_faults(State(s): State<IngestState>, body: Bytes) -> Response {
    let Some(faults) = s.node.replica().faults() else {
        return Error::NotFound(
            "transport faults are off; start the node with --test-faults".into(),
        )
        .into_response();
    };
    let run = || {
        let rules: tidemark_raft::FaultRules = parse(&body)?;
        faults.set(rules).map_err(Error::BadRequest)?;
        Ok::<_, Error>(Json(json!({ "faults": faults.rules() })).into_response())
    };
    run().unwrap_or_else(IntoResponse::into_response)
}

pub(crate) async fn read_index(State(s): State<IngestState>) -> Response {
    match s.node.replica().read_index().await {
        Ok(index) => Json(json!({ "index": index })).into_response(),
        Err(e) => Error::from(e).into_response(),
    }
}
