//! Exports and backups over HTTP: `POST /v1/export` and `POST /v1/backup` run a copy on this
//! node (it writes to this host's disk) as a job every replica knows (see
//! `tidemark_storage::engine::copies`). The request either waits for the copy and answers
//! what it wrote (the default), or, with `"wait": false`, answers the running job at once
//! (202) for the caller to follow on `/v1/jobs/{id}`. `POST /v1/jobs/{id}/cancel` stops it;
//! it then removes what it wrote. A follower has the leader log the copy's start and end
//! (`POST /v1/jobs/copies`).
//!
//! Invariant: a copy's end is logged only after its files are whole; if its job was ended
//! meanwhile (cancelled), the files are removed instead, so a job marked written always
//! names whole output.

use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tidemark_storage::engine::command::{Command, TimelineCommand};
use tidemark_storage::engine::copies::{CopyFinish, CopyRecord, CopyRun};
use tidemark_storage::engine::{Applied, RefusalStatus};

use crate::error::{Error, Result};
use crate::jobs::{job_json, parse_interval};
use crate::node::Node;

/// How long a node waits to apply its own copy's start (it was just committed).
const APPLY_WAIT: Duration = Duration::from_secs(30);
/// How often a node looks for copies an earlier run of it left marked running.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

fn yes() -> bool {
    true
}

fn parquet() -> String {
    "parquet".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    datasource: String,
    interval: String,
    /// Only "parquet" for now.
    #[serde(default = "parquet")]
    format: String,
    /// An absolute directory on this node's host.
    to: String,
    /// Answer when written (true), or at once with the running job (false).
    #[serde(default = "yes")]
    wait: bool,
    /// Read the raw log at most this fast, so serving keeps its disk bandwidth.
    #[serde(default)]
    max_bytes_per_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupRequest {
    to: String,
    #[serde(default = "yes")]
    wait: bool,
    #[serde(default)]
    max_bytes_per_s: Option<u64>,
}

/// A copy's log entries as a follower sends them to the leader.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyCommand {
    Start(CopyRecord),
    Finish(CopyFinish),
    Abandon { job: u64, reason: String },
}

impl CopyCommand {
    fn timeline(self) -> TimelineCommand {
        match self {
            CopyCommand::Start(r) => TimelineCommand::CopyStarted(r),
            CopyCommand::Finish(f) => TimelineCommand::CopyFinished(f),
            CopyCommand::Abandon { job, reason } => TimelineCommand::Cancel { job, reason },
        }
    }
}

fn absolute(to: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(to);
    if !dir.is_absolute() {
        return Err(Error::BadRequest(format!("to {to:?} must be an absolute directory on the node's host")));
    }
    Ok(dir)
}

/// What a copy wrote: its job's end, the answer to a waiting request, and its files (removed
/// if the job ended before the end could be logged).
struct Written {
    finish: CopyFinish,
    report: Value,
    root: PathBuf,
    files: Vec<PathBuf>,
}

/// `POST /v1/export`: the datasource's raw events of an interval as Parquet files under a
/// directory of this node's host, partitioned by UTC date.
pub async fn export(node: &Node, actor: &str, body: &[u8]) -> Result<Response> {
    let req: ExportRequest = serde_json::from_slice(body).map_err(|e| {
        Error::BadRequest(format!(
            "an export needs {{\"datasource\": \"…\", \"interval\": \"START/END\", \"to\": \"/absolute/dir\"}} \
             (and optionally \"wait\": false, \"max_bytes_per_s\": N): {e}"
        ))
    })?;
    if req.format != "parquet" {
        return Err(Error::BadRequest(format!("format {:?} is not supported; use parquet", req.format)));
    }
    let dir = absolute(&req.to)?;
    let (start_ms, end_ms) = parse_interval(&req.interval)?;
    // Refusals (no such datasource, raw retention) come before a job is logged.
    let plan = node.engine().read().export_plan(&req.datasource, start_ms, end_ms)?;
    let record = CopyRecord {
        kind: "export".into(),
        datasource: Some(req.datasource.clone()),
        start_ms: Some(start_ms),
        end_ms: Some(end_ms),
        to: dir.display().to_string(),
        node: node.replica().node_id(),
        files: 0,
        bytes: 0,
        actor: actor.to_string(),
        job: 0,
        time_ms: 0,
        boot: node.boot(),
    };
    let rate = req.max_bytes_per_s;
    run_copy(node, record, req.wait, move |run| {
        let report = tidemark_storage::engine::export::run_export(&plan, &dir, run, rate)?;
        Ok(Written {
            finish: CopyFinish {
                job: 0,
                files: report.files.len() as u64,
                bytes: report.bytes,
                rows: report.rows,
                skipped: report.skipped,
                position: None,
                batches: report.batches,
                bytes_read: report.bytes_read,
            },
            files: report.files.iter().map(|f| f.path.clone()).collect(),
            report: json!(report),
            root: dir,
        })
    })
    .await
}

/// `POST /v1/backup`: a consistent copy of this node's state into a new directory of its host,
/// taken while it serves.
pub async fn backup(node: &Node, actor: &str, body: &[u8]) -> Result<Response> {
    let req: BackupRequest = serde_json::from_slice(body).map_err(|e| {
        Error::BadRequest(format!(
            "a backup needs {{\"to\": \"/absolute/dir\"}} (and optionally \"wait\": false, \"max_bytes_per_s\": N): {e}"
        ))
    })?;
    let to = absolute(&req.to)?;
    if std::fs::read_dir(&to).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::BadRequest(format!("{} is not empty; back up into a new directory", to.display())));
    }
    let record = CopyRecord {
        kind: "backup".into(),
        datasource: None,
        start_ms: None,
        end_ms: None,
        to: to.display().to_string(),
        node: node.replica().node_id(),
        files: 0,
        bytes: 0,
        actor: actor.to_string(),
        job: 0,
        time_ms: 0,
        boot: node.boot(),
    };
    let engine = node.engine();
    let rate = req.max_bytes_per_s;
    run_copy(node, record, req.wait, move |run| {
        let started = std::time::Instant::now();
        let manifest = tidemark_storage::engine::backup::backup(&engine, &to, run, rate)?;
        let seconds = started.elapsed().as_secs_f64();
        let mut files: Vec<PathBuf> = manifest.files.iter().map(|f| to.join(&f.path)).collect();
        files.push(to.join(&manifest.checkpoint));
        files.push(to.join(tidemark_storage::engine::backup::MANIFEST));
        Ok(Written {
            finish: CopyFinish {
                job: 0,
                files: manifest.files.len() as u64,
                bytes: manifest.bytes,
                rows: 0,
                skipped: 0,
                position: Some(manifest.position),
                batches: 0,
                bytes_read: manifest.bytes,
            },
            report: json!({
                "position": manifest.position,
                "files": manifest.files.len(),
                "bytes": manifest.bytes,
                "seconds": seconds,
                "mb_per_s": manifest.bytes as f64 / 1e6 / seconds.max(1e-9),
            }),
            root: to,
            files,
        })
    })
    .await
}

/// Logs a copy's start, runs `work` on a blocking thread with the copy's progress, and logs
/// its end: written, or cancelled with the reason it failed. Answers what it wrote when the
/// request waits, else the running job at once (202).
async fn run_copy<F>(node: &Node, record: CopyRecord, wait: bool, work: F) -> Result<Response>
where
    F: FnOnce(&CopyRun) -> tidemark_storage::Result<Written> + Send + 'static,
{
    let kind = record.kind.clone();
    let id = log_copy(node, CopyCommand::Start(record)).await?;
    let registered = match node.replica().wait_applied(id, APPLY_WAIT).await {
        Ok(()) => node.engine().write().register_copy(id).map_err(Error::from),
        Err(e) => Err(Error::from(e)),
    };
    let run = match registered {
        Ok(run) => run,
        Err(e) => {
            // Logged but never run: end its job rather than leave it running.
            let reason = format!("the {kind} could not start: {e}");
            let _ = log_copy(node, CopyCommand::Abandon { job: id, reason }).await;
            return Err(e);
        }
    };
    let task = {
        let node = node.clone();
        tokio::spawn(async move {
            let result = copy_and_log(&node, id, &kind, run, work).await;
            node.engine().write().unregister_copy(id);
            result
        })
    };
    if !wait {
        return Ok((StatusCode::ACCEPTED, Json(job_json(node, id)?)).into_response());
    }
    let mut report = task
        .await
        .map_err(|e| Error::Storage(tidemark_storage::Error::Internal(format!("the {id} copy task failed: {e}"))))??;
    report["job"] = json!(id);
    Ok(Json(report).into_response())
}

async fn copy_and_log<F>(node: &Node, id: u64, kind: &str, run: CopyRun, work: F) -> Result<Value>
where
    F: FnOnce(&CopyRun) -> tidemark_storage::Result<Written> + Send + 'static,
{
    let worker = run.clone();
    let outcome = tokio::task::spawn_blocking(move || work(&worker))
        .await
        .map_err(|e| tidemark_storage::Error::Internal(format!("the {kind} task failed: {e}")))
        .and_then(|r| r);
    match outcome {
        Ok(mut written) => {
            written.finish.job = id;
            match log_copy(node, CopyCommand::Finish(written.finish)).await {
                Ok(_) => {
                    tracing::info!(job = id, kind, "copy written");
                    Ok(written.report)
                }
                // Cancelled after its last check: what it wrote is not vouched for.
                Err(Error::Conflict(reason)) => {
                    tidemark_storage::engine::backup::remove_written(&written.root, &written.files, false);
                    Err(Error::Conflict(reason))
                }
                // Written whole, but the end could not be logged (no leader): the job stays
                // running until this node's next start cancels it; the files stand.
                Err(e) => {
                    tracing::warn!(job = id, error = %e, "a copy was written but its end could not be logged");
                    let mut report = written.report;
                    report["not_recorded"] = json!(e.to_string());
                    Ok(report)
                }
            }
        }
        Err(e) => {
            if !run.cancelled() {
                let reason = format!("the {kind} failed: {e}");
                if let Err(logged) = log_copy(node, CopyCommand::Abandon { job: id, reason }).await {
                    tracing::warn!(job = id, error = %logged, "a failed copy's end could not be logged");
                }
            }
            Err(match e {
                tidemark_storage::Error::Cancelled(_) => {
                    let why = job_json(node, id).ok().and_then(|j| j["error"].as_str().map(str::to_string));
                    Error::Conflict(format!("{kind} job {id} was cancelled: {}", why.unwrap_or_default()))
                }
                other => Error::Storage(other),
            })
        }
    }
}

/// Logs one of a copy's entries (on the leader; a follower has the leader log it) and
/// answers the job id. A refusal comes back as the error its status names.
async fn log_copy(node: &Node, cmd: CopyCommand) -> Result<u64> {
    let replica = node.replica();
    match replica.leader() {
        Some((id, leader)) if !replica.is_leader() && id != replica.node_id() => {
            let body = serde_json::to_value(&cmd)
                .map_err(|e| Error::Storage(tidemark_storage::Error::Internal(format!("a copy command: {e}"))))?;
            let answer = crate::forward::call_leader(node, &leader.http, "/v1/jobs/copies", Some(body)).await.map_err(
                |reason| match reason {
                    r if r.contains("409") => Error::Conflict(r),
                    r => Error::Stopped { reason: format!("the leader did not log the copy: {r}") },
                },
            )?;
            answer["id"]
                .as_u64()
                .ok_or_else(|| Error::Stopped { reason: format!("the leader answered {answer} for a copy") })
        }
        _ => match node.propose(&Command::Timeline(cmd.timeline())).await? {
            Applied::Job { id } => Ok(id),
            Applied::Refused { reason, status } => Err(match status {
                RefusalStatus::NotFound => Error::NotFound(reason),
                RefusalStatus::Conflict => Error::Conflict(reason),
                RefusalStatus::Invalid => Error::BadRequest(reason),
            }),
            other => Err(Error::Storage(tidemark_storage::Error::Internal(format!("a copy applied as {other:?}")))),
        },
    }
}

/// `POST /v1/jobs/copies` (leader): logs a copy entry a follower sends.
pub async fn copied(node: &Node, body: &[u8]) -> Result<Response> {
    let cmd: CopyCommand =
        serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("a copy command: {e}")))?;
    let id = log_copy(node, cmd).await?;
    Ok(Json(job_json(node, id)?).into_response())
}

/// Runs for the node's life: copies an earlier run of this node started and never ended
/// (it stopped mid-copy) are cancelled, after removing what is known to be theirs.
pub async fn sweep_stale_copies(node: Node) {
    let me = node.replica().node_id();
    while !node.stopping() {
        tokio::time::sleep(SWEEP_EVERY).await;
        if node.replica().leader().is_none() {
            continue;
        }
        let stale = node.engine().read().stale_copies(me, node.boot());
        for record in stale {
            let reason = tidemark_storage::engine::copies::remove_leftovers(&record);
            match log_copy(&node, CopyCommand::Abandon { job: record.job, reason }).await {
                Ok(_) => {
                    tracing::info!(job = record.job, kind = %record.kind, "cancelled a copy this node left running")
                }
                Err(e) => {
                    tracing::warn!(job = record.job, error = %e, "could not cancel a copy this node left running")
                }
            }
        }
    }
}
