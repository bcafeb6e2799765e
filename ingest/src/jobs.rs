//! Reprocessing and long jobs over HTTP: `POST /v1/reindex` starts a reindex (a logged
//! command; every replica builds the same new version from its raw log), `GET /v1/jobs[/{id}]`
//! shows jobs with their progress, `POST /v1/jobs/{id}/cancel` abandons one (the old version
//! stays), `POST /v1/segments/drop` takes an interval out of the timeline. The leader
//! publishes a finished build by itself (see the node's tick). Exports and backups, which run
//! on the node asked rather than on every replica, are in `copies.rs`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tidemark_engine::command::{Command, TimelineCommand};
use tidemark_engine::{Applied, RefusalStatus};

use crate::error::{Error, Result};
use crate::node::Node;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReindexRequest {
    datasource: String,
    /// `START/END`: RFC 3339 times, dates (midnight UTC) or epoch milliseconds.
    interval: String,
}

/// One end of an interval: RFC 3339, a date, or epoch milliseconds.
pub fn parse_instant(s: &str) -> Option<i64> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    tidemark_catalog::event::parse_timestamp("interval", &Value::String(full)).ok()
}

/// `START/END` in milliseconds.
pub fn parse_interval(s: &str) -> Result<(i64, i64)> {
    let bad = || {
        Error::BadRequest(format!(
            "interval {s:?} must be START/END with RFC 3339 times, dates or epoch milliseconds, \
             e.g. 2026-11-26/2026-11-27"
        ))
    };
    let (a, b) = s.split_once('/').ok_or_else(bad)?;
    let (a, b) = (
        parse_instant(a).ok_or_else(bad)?,
        parse_instant(b).ok_or_else(bad)?,
    );
    if b <= a {
        return Err(Error::BadRequest(format!(
            "interval {s:?} ends before it starts"
        )));
    }
    Ok((a, b))
}

fn refusal(reason: String, status: RefusalStatus) -> Error {
    match status {
        RefusalStatus::NotFound => Error::NotFound(reason),
        RefusalStatus::Conflict => Error::Conflict(reason),
        RefusalStatus::Invalid => Error::BadRequest(reason),
    }
}

fn datasource_id(node: &Node, name: &str) -> Result<tidemark_catalog::DatasourceId> {
    let engine = node.engine();
    let e = engine.read();
    e.catalog()
        .get(name)
        .map(|d| d.id)
        .ok_or_else(|| Error::NotFound(format!("datasource {name:?} does not exist")))
}

/// Logs a timeline command and answers with the job it started or ended.
async fn propose_job(node: &Node, cmd: &Command, ok: StatusCode) -> Result<Response> {
    match node.propose(cmd).await? {
        Applied::Job { id } => Ok((ok, Json(job_json(node, id)?)).into_response()),
        Applied::Refused { reason, status } => Err(refusal(reason, status)),
        other => Err(Error::Engine(tidemark_engine::Error::Internal(format!(
            "{cmd:?} applied as {other:?}"
        )))),
    }
}

pub(crate) fn job_json(node: &Node, id: u64) -> Result<Value> {
    let engine = node.engine();
    let e = engine.read();
    let job = e
        .jobs_now()
        .into_iter()
        .find(|j| j.id == id)
        .ok_or_else(|| Error::NotFound(format!("job {id} does not exist")))?;
    serde_json::to_value(job)
        .map_err(|e| Error::Engine(tidemark_engine::Error::Internal(e.to_string())))
}

pub async fn reindex(node: &Node, actor: &str, body: &[u8]) -> Result<Response> {
    let req: ReindexRequest = serde_json::from_slice(body).map_err(|e| {
        Error::BadRequest(format!(
            "a reindex needs {{\"datasource\": \"…\", \"interval\": \"START/END\"}}: {e}"
        ))
    })?;
    let (start_ms, end_ms) = parse_interval(&req.interval)?;
    let datasource = datasource_id(node, &req.datasource)?;
    let cmd = Command::Timeline(TimelineCommand::Start {
        datasource,
        start_ms,
        end_ms,
        actor: actor.to_string(),
    });
    propose_job(node, &cmd, StatusCode::ACCEPTED).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactRequest {
    datasource: String,
    interval: String,
    /// A coarser query granularity to roll the interval up to (e.g. PT15M).
    #[serde(default)]
    granularity: Option<String>,
}

/// `POST /v1/compact`: merges each interval's shards into one from the segments (optionally
/// rolled up to a coarser granularity), published as a new version like a reindex.
pub async fn compact(node: &Node, actor: &str, body: &[u8]) -> Result<Response> {
    let req: CompactRequest = serde_json::from_slice(body).map_err(|e| {
        Error::BadRequest(format!(
            "a compaction needs {{\"datasource\": \"…\", \"interval\": \"START/END\", \"granularity\": \"PT15M\" (optional)}}: {e}"
        ))
    })?;
    let (start_ms, end_ms) = parse_interval(&req.interval)?;
    let granularity = req
        .granularity
        .as_deref()
        .map(tidemark_catalog::Period::parse)
        .transpose()
        .map_err(|e| Error::BadRequest(format!("granularity: {e}")))?;
    let datasource = datasource_id(node, &req.datasource)?;
    let cmd = Command::Timeline(TimelineCommand::Compact {
        datasource,
        start_ms,
        end_ms,
        granularity,
        actor: actor.to_string(),
    });
    propose_job(node, &cmd, StatusCode::ACCEPTED).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteRequest {
    datasource: String,
    /// Which beacons, e.g. `merchant_id = 'm1'` (see `tidemark_catalog::record_filter`).
    #[serde(rename = "where")]
    condition: String,
    /// Only beacons with event times in `START/END`; all of them if absent.
    #[serde(default)]
    interval: Option<String>,
}

/// `POST /v1/delete`: takes the beacons a condition matches out of the raw log, and rebuilds
/// the segment intervals that counted them (a logged job, published like a reindex).
pub async fn delete(node: &Node, actor: &str, body: &[u8]) -> Result<Response> {
    let req: DeleteRequest = serde_json::from_slice(body).map_err(|e| {
        Error::BadRequest(format!(
            "a deletion needs {{\"datasource\": \"…\", \"where\": \"merchant_id = 'm1'\", \"interval\": \"START/END\" (optional)}}: {e}"
        ))
    })?;
    let filter = tidemark_catalog::record_filter::RecordFilter::parse(&req.condition)
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let (start_ms, end_ms) = match req.interval.as_deref() {
        Some(i) => parse_interval(i).map(|(a, b)| (Some(a), Some(b)))?,
        None => (None, None),
    };
    let datasource = datasource_id(node, &req.datasource)?;
    let cmd = Command::Timeline(TimelineCommand::Delete {
        datasource,
        filter,
        where_text: req.condition,
        start_ms,
        end_ms,
        actor: actor.to_string(),
    });
    propose_job(node, &cmd, StatusCode::ACCEPTED).await
}

/// `POST /v1/segments/drop`: takes the whole segment intervals of an interval out of the
/// timeline at one log entry (they stay queryable until it commits).
pub async fn drop_interval(node: &Node, actor: &str, body: &[u8]) -> Result<Response> {
    let req: ReindexRequest = serde_json::from_slice(body).map_err(|e| {
        Error::BadRequest(format!(
            "a drop needs {{\"datasource\": \"…\", \"interval\": \"START/END\"}}: {e}"
        ))
    })?;
    let (start_ms, end_ms) = parse_interval(&req.interval)?;
    let datasource = datasource_id(node, &req.datasource)?;
    let cmd = Command::Timeline(TimelineCommand::Drop {
        datasource,
        start_ms,
        end_ms,
        actor: actor.to_string(),
    });
    propose_job(node, &cmd, StatusCode::OK).await
}

pub fn list(node: &Node) -> Response {
    let engine = node.engine();
    let e = engine.read();
    Json(json!(e.jobs_now())).into_response()
}

/// A job is identified by the log position that started it: a node that has not applied
/// that far yet (a follower just after the leader started the job) first catches up with what
/// the leader has committed (a read barrier) rather than answer that the job does not exist.
pub async fn show(node: &Node, id: u64) -> Result<Response> {
    let applied = node.engine().read().applied_position();
    if id > applied {
        if let Err(e) = node.read_barrier().await {
            tracing::debug!(error = %e, job = id, "no read barrier for a job lookup");
        }
    }
    let mut job = job_json(node, id)?;
    with_remote_progress(node, &mut job).await;
    Ok(Json(job).into_response())
}

/// A copy's progress lives on the node running it: a running copy of another node gets its
/// live figures from there (best effort: if that node does not answer soon, the job is shown
/// as this node knows it).
async fn with_remote_progress(node: &Node, job: &mut Value) {
    let (Some(id), Some(kind)) = (job["id"].as_u64(), job["kind"].as_str()) else {
        return;
    };
    let kind = serde_json::from_value::<tidemark_engine::job::JobKind>(kind.into());
    if job["state"] != "running" || !kind.is_ok_and(tidemark_engine::job::JobKind::is_copy) {
        return;
    }
    let me = node.replica().node_id();
    let Some(owner) = node.engine().read().copy_node(id).filter(|n| *n != me) else {
        return;
    };
    let Some(member) = node.replica().members().get(&owner).cloned() else {
        return;
    };
    let path = format!("/v1/jobs/{id}/progress");
    let asked = crate::forward::ask_node(node, &member.http, &path, None);
    let Ok(Ok(remote)) = tokio::time::timeout(std::time::Duration::from_secs(2), asked).await
    else {
        return;
    };
    if remote["state"] != "running" {
        return;
    }
    for field in [
        "batches_done",
        "batches_total",
        "events",
        "rejected",
        "bytes_done",
        "bytes_total",
    ] {
        job[field] = remote[field].clone();
    }
}

/// `GET /v1/jobs/{id}/progress` (node-internal): the job as this node knows it, live
/// progress included; what another node asks of the node running a copy.
pub fn progress(node: &Node, id: u64) -> Result<Response> {
    Ok(Json(job_json(node, id)?).into_response())
}

pub async fn cancel(node: &Node, actor: &str, id: u64) -> Result<Response> {
    let cmd = Command::Timeline(TimelineCommand::Cancel {
        job: id,
        reason: format!("cancelled by {actor}"),
    });
    propose_job(node, &cmd, StatusCode::OK).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_take_dates_times_and_milliseconds() {
        assert_eq!(
            parse_interval("2026-11-26/2026-11-27").ok(),
            Some((1_795_651_200_000, 1_795_737_600_000))
        );
        assert_eq!(parse_interval("1000/2000").ok(), Some((1000, 2000)));
        assert_eq!(
            parse_interval("2026-11-26T01:00:00Z/2026-11-26T02:00:00+00:00").ok(),
            Some((1_795_654_800_000, 1_795_658_400_000))
        );
        let err = parse_interval("2026-11-27/2026-11-26")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("ends before it starts"), "{err}");
        assert!(parse_interval("yesterday").is_err());
    }
}
