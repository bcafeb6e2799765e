//! Exports and backups over HTTP: `POST /v1/export` and `POST /v1/backup` run a copy on this
//! node (it writes to this host's disk) as a job every replica knows (see
//! `tidemark_engine::copies`). The request either waits for the copy and answers
//! what it wrote (the default), or, with `"wait": false`, answers the running job at once
//! (202) for the caller to follow on `/v1/jobs/{id}`. `POST /v1/jobs/{id}/cancel` stops it;
//! it then removes what it wrote. A follower has the leader log the copy's start and end
//! (`POST /v1/jobs/copies`).
//!
//! Invariants:
//! - A copy's end is logged only after its files are whole; if its job was ended meanwhile
//!   (cancelled), the files are removed instead, so a job marked written names whole output.
//! - Every copy's job ends: its end is retried until the log takes it, and a job nothing runs
//!   (its node restarted, or its start was given up on and committed after all) is settled by
//!   that node's sweep.

use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tidemark_engine::command::{Command, TimelineCommand};
use tidemark_engine::copies::{self, CopyFinish, CopyRecord, CopyRun};
use tidemark_engine::job::JobKind;
use tidemark_engine::{Applied, RefusalStatus};

use crate::error::{Error, Result};
use crate::forward::LeaderRefusal;
use crate::jobs::{job_json, parse_interval};
use crate::node::Node;

/// How long a node waits to apply its own copy's start (it was just committed).
const APPLY_WAIT: Duration = Duration::from_secs(30);
/// How long a copy's end is retried while the log cannot take it (no leader).
const END_RETRY: Duration = Duration::from_secs(600);
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

/// A copy's bandwidth: none, or a positive number of bytes per second.
fn pace(max_bytes_per_s: Option<u64>) -> Result<Option<u64>> {
    match max_bytes_per_s {
        Some(0) => Err(Error::BadRequest(
            "max_bytes_per_s must be at least 1 (leave it out for no limit)".into(),
        )),
        other => Ok(other),
    }
}

/// A number no other copy of this node draws.
fn draw_run(node: &Node) -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    node.boot().rotate_left(17) ^ NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A copy of `kind` into `to` on this node, to be logged (an export names its datasource and
/// interval).
fn new_record(
    node: &Node,
    actor: &str,
    kind: JobKind,
    to: &std::path::Path,
    export: Option<(String, i64, i64)>,
) -> CopyRecord {
    let (datasource, start_ms, end_ms) = match export {
        Some((d, s, e)) => (Some(d), Some(s), Some(e)),
        None => (None, None, None),
    };
    CopyRecord {
        kind,
        datasource,
        start_ms,
        end_ms,
        to: to.display().to_string(),
        node: node.replica().node_id(),
        files: 0,
        bytes: 0,
        actor: actor.to_string(),
        job: 0,
        time_ms: 0,
        boot: node.boot(),
        run: 0,
    }
}

fn absolute(to: &str) -> Result<PathBuf> {
    let dir = PathBuf::from(to);
    if !dir.is_absolute() {
        return Err(Error::BadRequest(format!(
            "to {to:?} must be an absolute directory on the node's host"
        )));
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
        return Err(Error::BadRequest(format!(
            "format {:?} is not supported; use parquet",
            req.format
        )));
    }
    let dir = absolute(&req.to)?;
    let (start_ms, end_ms) = parse_interval(&req.interval)?;
    let rate = pace(req.max_bytes_per_s)?;
    // Refusals (no such datasource, raw retention) come before a job is logged; the plan read
    // is taken again once the job's start is applied here, so it covers what was applied
    // before the job (a deletion published meanwhile included).
    node.engine()
        .read()
        .export_plan(&req.datasource, start_ms, end_ms)?;
    if let Some(existing) = tidemark_engine::export::existing_output(&dir, start_ms, end_ms) {
        return Err(Error::BadRequest(format!(
            "{} already exists (an earlier export of this interval); export into a new directory or remove it",
            existing.display()
        )));
    }
    let record = new_record(
        node,
        actor,
        JobKind::Export,
        &dir,
        Some((req.datasource.clone(), start_ms, end_ms)),
    );
    let engine = node.engine();
    let datasource = req.datasource;
    run_copy(node, record, req.wait, move |job, run| {
        let plan = engine.read().export_plan(&datasource, start_ms, end_ms)?;
        let report = tidemark_engine::export::run_export(&plan, &dir, job, run, rate)?;
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
    let rate = pace(req.max_bytes_per_s)?;
    if std::fs::read_dir(&to).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::BadRequest(format!(
            "{} is not empty; back up into a new directory",
            to.display()
        )));
    }
    let record = new_record(node, actor, JobKind::Backup, &to, None);
    let engine = node.engine();
    run_copy(node, record, req.wait, move |_, run| {
        let started = std::time::Instant::now();
        let manifest = tidemark_engine::backup::backup(&engine, &to, run, rate)?;
        let seconds = started.elapsed().as_secs_f64();
        let mut files: Vec<PathBuf> = manifest.files.iter().map(|f| to.join(&f.path)).collect();
        files.push(to.join(&manifest.checkpoint));
        files.push(to.join(tidemark_engine::backup::MANIFEST));
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

/// Logs a copy's start, runs `work` (given the job id) on a blocking thread with the copy's
/// progress, and logs its end: written, or cancelled with the reason it failed. Answers what
/// it wrote when the request waits, else the running job at once (202).
async fn run_copy<F>(node: &Node, mut record: CopyRecord, wait: bool, work: F) -> Result<Response>
where
    F: FnOnce(u64, &CopyRun) -> tidemark_engine::Result<Written> + Send + 'static,
{
    let kind = record.kind.clone();
    record.run = draw_run(node);
    let run_id = record.run;
    // Until registered, the sweep must not take this copy for one nothing runs.
    node.copy_starting(run_id, true);
    let started = start_copy(node, record).await;
    node.copy_starting(run_id, false);
    let (id, run) = match started {
        Ok(started) => started,
        Err((Some(id), e)) => {
            // Logged but never run: end its job rather than leave it running.
            let reason = format!("the {kind} could not start: {e}");
            let _ = end_copy(node, id, CopyCommand::Abandon { job: id, reason }).await;
            return Err(e);
        }
        Err((None, e)) => return Err(e),
    };
    let task = {
        let node = node.clone();
        tokio::spawn(async move {
            let result = copy_and_log(&node, id, kind.as_str(), run, work).await;
            node.engine().write().unregister_copy(id);
            result
        })
    };
    if !wait {
        return Ok((StatusCode::ACCEPTED, Json(job_json(node, id)?)).into_response());
    }
    let mut report = task.await.map_err(|e| {
        Error::Engine(tidemark_engine::Error::Internal(format!(
            "copy job {id}'s task failed: {e}"
        )))
    })??;
    report["job"] = json!(id);
    Ok(Json(report).into_response())
}

/// Logs the start and registers the copy here once this node has applied it; on failure, the
/// job id if the start was logged.
async fn start_copy(
    node: &Node,
    record: CopyRecord,
) -> std::result::Result<(u64, CopyRun), (Option<u64>, Error)> {
    let id = log_copy(node, CopyCommand::Start(record))
        .await
        .map_err(|e| (None, e))?;
    node.replica()
        .wait_applied(id, APPLY_WAIT)
        .await
        .map_err(|e| (Some(id), Error::from(e)))?;
    let run = node
        .engine()
        .write()
        .register_copy(id)
        .map_err(|e| (Some(id), Error::from(e)))?;
    Ok((id, run))
}

async fn copy_and_log<F>(node: &Node, id: u64, kind: &str, run: CopyRun, work: F) -> Result<Value>
where
    F: FnOnce(u64, &CopyRun) -> tidemark_engine::Result<Written> + Send + 'static,
{
    let worker = run.clone();
    let outcome = tokio::task::spawn_blocking(move || work(id, &worker))
        .await
        .map_err(|e| tidemark_engine::Error::Internal(format!("the {kind} task failed: {e}")))
        .and_then(|r| r);
    match outcome {
        Ok(mut written) => {
            written.finish.job = id;
            match end_copy(node, id, CopyCommand::Finish(written.finish)).await {
                Ok(()) => {
                    tracing::info!(job = id, kind, "copy written");
                    Ok(written.report)
                }
                // Cancelled after its last check: what it wrote is not vouched for.
                Err(Error::Conflict(reason)) => {
                    let root = written.root.clone();
                    let files = written.files;
                    let _ = tokio::task::spawn_blocking(move || {
                        tidemark_engine::backup::remove_written(&root, &files, false)
                    })
                    .await;
                    Err(Error::Conflict(format!(
                        "{kind} job {id} ended before it was written: {reason}"
                    )))
                }
                // Written whole, its end never logged: the sweep settles it (a backup with its
                // manifest as written).
                Err(e) => {
                    let mut report = written.report;
                    report["not_recorded"] = json!(e.to_string());
                    Ok(report)
                }
            }
        }
        Err(e) => {
            if !run.cancelled() {
                let reason = format!("the {kind} failed: {e}");
                let _ = end_copy(node, id, CopyCommand::Abandon { job: id, reason }).await;
            }
            Err(match e {
                tidemark_engine::Error::Cancelled(_) => {
                    let why = job_json(node, id)
                        .ok()
                        .and_then(|j| j["error"].as_str().map(str::to_string));
                    Error::Conflict(format!(
                        "{kind} job {id} was cancelled: {}",
                        why.unwrap_or_default()
                    ))
                }
                tidemark_engine::Error::Invalid(reason) => Error::BadRequest(reason),
                other => Error::Engine(other),
            })
        }
    }
}

/// Logs a copy's end, retrying for a while when the log cannot take it (no leader): a job
/// must not stay running for want of a leader at the moment the copy ended. A refusal
/// (the job already ended) is returned as is.
async fn end_copy(node: &Node, job: u64, cmd: CopyCommand) -> Result<()> {
    let body = serde_json::to_value(&cmd).map_err(|e| {
        Error::Engine(tidemark_engine::Error::Internal(format!(
            "a copy command: {e}"
        )))
    })?;
    let deadline = tokio::time::Instant::now() + END_RETRY;
    let mut pause = Duration::from_millis(200);
    loop {
        let cmd: CopyCommand = serde_json::from_value(body.clone()).map_err(|e| {
            Error::Engine(tidemark_engine::Error::Internal(format!(
                "a copy command: {e}"
            )))
        })?;
        match log_copy(node, cmd).await {
            Ok(_) => return Ok(()),
            Err(e @ (Error::Conflict(_) | Error::NotFound(_) | Error::BadRequest(_))) => {
                return Err(e);
            }
            Err(e) if tokio::time::Instant::now() >= deadline || node.stopping() => {
                tracing::warn!(job, error = %e, "a copy's end could not be logged; the node's sweep will settle it");
                return Err(e);
            }
            Err(e) => {
                tracing::debug!(job, error = %e, "retrying a copy's end");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Logs one of a copy's entries (on the leader; a follower has the leader log it) and
/// answers the job id. A refusal comes back as the error its status names.
async fn log_copy(node: &Node, cmd: CopyCommand) -> Result<u64> {
    let replica = node.replica();
    match replica.leader() {
        Some((id, leader)) if !replica.is_leader() && id != replica.node_id() => {
            let body = serde_json::to_value(&cmd).map_err(|e| {
                Error::Engine(tidemark_engine::Error::Internal(format!(
                    "a copy command: {e}"
                )))
            })?;
            let answer = crate::forward::ask_leader(node, &leader.http, "/v1/jobs/copies", body)
                .await
                .map_err(|refusal| match refusal {
                    LeaderRefusal::Refused(StatusCode::CONFLICT, m) => Error::Conflict(m),
                    LeaderRefusal::Refused(StatusCode::NOT_FOUND, m) => Error::NotFound(m),
                    LeaderRefusal::Refused(StatusCode::BAD_REQUEST, m) => Error::BadRequest(m),
                    LeaderRefusal::Refused(status, m) => Error::Unavailable(format!(
                        "the leader did not log the copy ({status}): {m}"
                    )),
                    LeaderRefusal::Unreachable(m) => {
                        Error::Unavailable(format!("the leader is out of reach: {m}"))
                    }
                })?;
            answer["id"].as_u64().ok_or_else(|| {
                Error::Unavailable(format!("the leader answered {answer} for a copy"))
            })
        }
        _ => match node.propose(&Command::Timeline(cmd.timeline())).await? {
            Applied::Job { id } => Ok(id),
            Applied::Refused { reason, status } => Err(match status {
                RefusalStatus::NotFound => Error::NotFound(reason),
                RefusalStatus::Conflict => Error::Conflict(reason),
                RefusalStatus::Invalid => Error::BadRequest(reason),
            }),
            other => Err(Error::Engine(tidemark_engine::Error::Internal(format!(
                "a copy applied as {other:?}"
            )))),
        },
    }
}

/// `POST /v1/jobs/copies` (leader): logs a copy entry a follower sends.
pub async fn copied(node: &Node, body: &[u8]) -> Result<Response> {
    let cmd: CopyCommand = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("a copy command: {e}")))?;
    if let CopyCommand::Abandon { job, .. } = &cmd {
        let kind = node
            .engine()
            .read()
            .jobs_now()
            .into_iter()
            .find(|j| j.id == *job)
            .map(|j| j.kind);
        if !kind.is_some_and(JobKind::is_copy) {
            return Err(Error::BadRequest(format!(
                "job {job} is not an export or backup"
            )));
        }
    }
    let id = log_copy(node, cmd).await?;
    Ok(Json(job_json(node, id)?).into_response())
}

/// Runs for the node's life: copies of this node that nothing runs (an earlier run of the
/// node stopped mid-copy, or a start given up on committed after all) are settled: a backup
/// found whole is logged as written, anything else cancelled after its unfinished files are
/// removed.
pub async fn sweep_stale_copies(node: Node) {
    let me = node.replica().node_id();
    while !node.stopping() {
        tokio::time::sleep(SWEEP_EVERY).await;
        if node.replica().leader().is_none() {
            continue;
        }
        let orphans = {
            let starting = |run: u64| node.is_copy_starting(run);
            node.engine()
                .read()
                .orphan_copies(me, node.boot(), &starting)
        };
        for record in orphans {
            let job = record.job;
            let settled =
                tokio::task::spawn_blocking(move || copies::settle_leftover(&record)).await;
            let cmd = match settled {
                Ok(copies::Leftover::Written(finish)) => CopyCommand::Finish(finish),
                Ok(copies::Leftover::Cancel(reason)) => CopyCommand::Abandon { job, reason },
                Err(e) => CopyCommand::Abandon {
                    job,
                    reason: format!("its node could not look at what it left: {e}"),
                },
            };
            match log_copy(&node, cmd).await {
                Ok(_) => tracing::info!(job, "settled a copy nothing runs"),
                Err(e) => tracing::warn!(job, error = %e, "could not settle a copy nothing runs"),
            }
        }
    }
}
