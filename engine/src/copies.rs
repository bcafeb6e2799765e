//! Copies of data taken outside tidemark's reach (exports, backups) as jobs. A copy runs on
//! the node that was asked, since it writes to that host's disk, not on every replica; its
//! job is logged around it: `CopyStarted` makes it a running job on every replica (a deletion
//! started meanwhile names it), `CopyFinished` marks it written with what it wrote, and a
//! `Cancel` ends it (a DBA's, the copy's own failure, or its node restarting mid-copy).
//!
//! The node running a copy registers its progress and cancel flag here ([`CopyRun`]); that
//! registry is node-local and never checkpointed.
//!
//! Invariants:
//! - Applying the commands is deterministic; `copy_runs` only feeds progress and the cancel
//!   flag on the node that runs the copy.
//! - A copy cancelled before its `CopyFinished` applies never finishes: `CopyFinished` is
//!   refused and the node removes what it wrote, so a job that says `published` (written)
//!   names whole output.
//! - A running copy whose node has restarted since it started (its boot id differs from the
//!   node's), or of this boot but neither registered nor still starting, runs nowhere: that
//!   node settles it ([`Engine::orphan_copies`], [`settle_leftover`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tidemark_catalog::DatasourceId;

use super::job::{JobKind, JobRecord, JobState};
use super::reindex::Progress;
use super::{Applied, Engine, RefusalStatus};
use crate::{Error, Result};

/// An export or backup, as logged when it started (and completed when it finished).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    /// `Export` or `Backup`.
    pub kind: JobKind,
    /// The datasource exported (a backup holds them all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datasource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_ms: Option<i64>,
    /// The directory written, on `node`'s host.
    pub to: String,
    pub node: u64,
    pub files: u64,
    pub bytes: u64,
    pub actor: String,
    /// Its job id (the log position that recorded it), set at apply.
    #[serde(default)]
    pub job: u64,
    #[serde(default)]
    pub time_ms: i64,
    /// The process of `node` that runs it (drawn at each start): a copy of an older boot is
    /// not running any more.
    #[serde(default)]
    pub boot: u64,
    /// Drawn by the node for this copy before it is logged, so the node can tell its copies
    /// still starting from ones whose start it gave up on (which nothing runs).
    #[serde(default)]
    pub run: u64,
}

impl CopyRecord {
    /// Whether it may hold beacons of `datasource` with event times in [`start`, `end`).
    pub(crate) fn may_hold(&self, datasource: &str, start: i64, end: i64) -> bool {
        match self.kind {
            JobKind::Backup => true,
            _ => {
                self.datasource.as_deref() == Some(datasource)
                    && self.start_ms.is_none_or(|s| s < end)
                    && self.end_ms.is_none_or(|e| e > start)
            }
        }
    }

    /// One line for a deletion's report, by the state of its job.
    pub(crate) fn describe(&self, state: Option<JobState>) -> String {
        let what = match &self.datasource {
            Some(d) => format!("{} of {d:?}", self.kind),
            None => self.kind.to_string(),
        };
        let how = match state {
            Some(JobState::Published) => format!("{} files, {} bytes", self.files, self.bytes),
            Some(JobState::Running) => "being written".to_string(),
            // A cancelled copy removes what it wrote, unless its node stopped mid-copy.
            _ => "cancelled; anything it left there is beyond tidemark's reach".to_string(),
        };
        format!(
            "{what} to {} on node {} (job {}, {how})",
            self.to, self.node, self.job
        )
    }
}

/// What a finished copy wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyFinish {
    pub job: u64,
    pub files: u64,
    pub bytes: u64,
    /// An export's rows, and the records it left out (refused, or failing the rules now).
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub skipped: u64,
    /// The log position a backup's state is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// What it read: raw batches (an export) and bytes (an export's raw batches, a backup's
    /// files), the job's final progress on every replica.
    #[serde(default)]
    pub batches: u64,
    #[serde(default)]
    pub bytes_read: u64,
}

/// This node's handle on a copy it runs: progress for `sys.jobs`, and the flag a `Cancel`
/// raises (the copy checks it between chunks and stops).
#[derive(Debug, Clone, Default)]
pub struct CopyRun {
    pub(crate) progress: Arc<Progress>,
    pub(crate) cancel: Arc<AtomicBool>,
}

impl CopyRun {
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Fails with [`Error::Cancelled`] once the job was cancelled.
    pub(crate) fn check(&self, job_kind: &str) -> Result<()> {
        if self.cancelled() {
            return Err(Error::Cancelled(format!("the {job_kind} was cancelled")));
        }
        Ok(())
    }

    pub(crate) fn add_bytes(&self, n: u64) {
        self.progress.bytes_done.fetch_add(n, Ordering::Relaxed);
    }
}

/// Paces a copy to at most `bytes_per_s` (none: as fast as the disk goes), in short sleeps so
/// a cancel is seen within a fraction of a second.
#[derive(Debug)]
pub struct Pace {
    bytes_per_s: Option<u64>,
    started: std::time::Instant,
    done: u64,
}

impl Pace {
    pub fn new(bytes_per_s: Option<u64>) -> Pace {
        Pace {
            bytes_per_s: bytes_per_s.filter(|b| *b > 0),
            started: std::time::Instant::now(),
            done: 0,
        }
    }

    /// How much to copy between two waits: a tenth of a second's worth, so progress moves
    /// smoothly and a cancel is seen soon.
    pub(crate) fn chunk(&self) -> usize {
        match self.bytes_per_s {
            Some(rate) => (rate / 10).clamp(4096, 1 << 20) as usize,
            None => 1 << 20,
        }
    }

    /// Counts `n` more bytes and waits until they are within the budget (or the copy is
    /// cancelled).
    pub(crate) fn spend(&mut self, n: u64, run: &CopyRun) {
        self.done += n;
        let Some(rate) = self.bytes_per_s else { return };
        let due = std::time::Duration::from_secs_f64(self.done as f64 / rate as f64);
        while !run.cancelled() {
            let elapsed = self.started.elapsed();
            if elapsed >= due {
                break;
            }
            std::thread::sleep((due - elapsed).min(std::time::Duration::from_millis(100)));
        }
    }
}

/// How a copy that nothing runs any more ends, decided by what its node finds on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// A backup whose manifest was written: it is whole, only its end was not logged.
    Written(CopyFinish),
    /// Anything else: cancelled with this reason (an export's unfinished files removed).
    Cancel(String),
}

/// What to log for `record`, a copy of this node that nothing runs (see
/// [`Engine::orphan_copies`]), after removing the files tidemark knows to be its unfinished
/// ones (an export's temporary files). A backup's directory without its manifest stays: no
/// restore takes it, and only the DBA knows whether anything else is in it.
pub fn settle_leftover(record: &CopyRecord) -> Leftover {
    let dir = std::path::Path::new(&record.to);
    match record.kind {
        JobKind::Backup => match super::backup::read_manifest(dir) {
            Ok(m) => Leftover::Written(CopyFinish {
                job: record.job,
                files: m.files.len() as u64,
                bytes: m.bytes,
                rows: 0,
                skipped: 0,
                position: Some(m.position),
                batches: 0,
                bytes_read: m.bytes,
            }),
            Err(_) => Leftover::Cancel(format!(
                "the backup stopped before it was written (its node restarted or gave up logging it); {} holds an \
                 unfinished copy without {}: remove it",
                record.to,
                super::backup::MANIFEST
            )),
        },
        _ => {
            let removed = super::export::remove_temporary(dir, record.job);
            Leftover::Cancel(format!(
                "the export stopped before it was written (its node restarted or gave up logging it); {removed} \
                 unfinished files removed from {} (date files already in place there are whole)",
                record.to
            ))
        }
    }
}

fn refused(reason: String, status: RefusalStatus) -> Result<Applied> {
    Ok(Applied::Refused { reason, status })
}

impl Engine {
    /// A copy starting on some node: a running job on every replica.
    pub(crate) fn start_copy(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        mut record: CopyRecord,
    ) -> Result<Applied> {
        if !record.kind.is_copy() {
            return refused(
                format!("\"{}\" is not a kind of copy (export, backup)", record.kind),
                RefusalStatus::Invalid,
            );
        }
        let info = self.copy_job(position, writer_time_ms, &mut record);
        self.state.jobs.insert(position, info);
        self.remember_copy(record);
        self.forget_old_jobs();
        self.runtime.checkpoint_due = true;
        Ok(Applied::Job { id: position })
    }

    /// A copy written whole: its job is done, with what it wrote. (Also how a node settles a
    /// backup written whole whose end it could not log before it stopped.)
    pub(crate) fn finish_copy(
        &mut self,
        writer_time_ms: i64,
        finish: CopyFinish,
    ) -> Result<Applied> {
        let job = finish.job;
        let Some(info) = self.state.jobs.get_mut(&job).filter(|j| j.kind.is_copy()) else {
            return refused(
                format!("copy job {job} does not exist"),
                RefusalStatus::NotFound,
            );
        };
        if info.state != JobState::Running {
            let why = info
                .error
                .clone()
                .unwrap_or_else(|| info.state.as_str().to_string());
            return refused(
                format!("{} job {job} already ended: {why}", info.kind),
                RefusalStatus::Conflict,
            );
        }
        info.state = JobState::Published;
        info.finished_ms = Some(writer_time_ms);
        info.files_written = finish.files;
        info.bytes_done = finish.bytes_read;
        info.bytes_total = finish.bytes_read;
        info.batches_done = finish.batches;
        info.batches_total = finish.batches;
        info.events = finish.rows;
        info.rejected = finish.skipped;
        info.backup_position = finish.position;
        self.runtime.copy_runs.remove(&job);
        if let Some(record) = self.state.copies.iter_mut().find(|c| c.job == job) {
            record.files = finish.files;
            record.bytes = finish.bytes;
        }
        self.runtime.checkpoint_due = true;
        Ok(Applied::Job { id: job })
    }

    /// Ends a running copy: its node stops it and removes what it wrote.
    pub(crate) fn cancel_copy(
        &mut self,
        writer_time_ms: i64,
        job: u64,
        reason: String,
    ) -> Result<Applied> {
        let Some(info) = self.state.jobs.get_mut(&job) else {
            return refused(format!("job {job} does not exist"), RefusalStatus::NotFound);
        };
        if info.state != JobState::Running {
            return refused(
                format!("{} job {job} is not running", info.kind),
                RefusalStatus::Conflict,
            );
        }
        info.state = JobState::Cancelled;
        info.finished_ms = Some(writer_time_ms);
        info.error = Some(reason);
        if let Some(run) = self.runtime.copy_runs.get(&job) {
            run.cancel.store(true, Ordering::Relaxed);
        }
        // Its record stays: a node that stopped mid-copy may have left files a deletion must
        // name.
        self.runtime.checkpoint_due = true;
        Ok(Applied::Job { id: job })
    }

    /// A copy written and logged at once (log entries of format 4: a finished job).
    pub(crate) fn record_copy(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        mut record: CopyRecord,
    ) -> Result<Applied> {
        let mut info = self.copy_job(position, writer_time_ms, &mut record);
        info.files_written = record.files;
        info.bytes_done = record.bytes;
        info.bytes_total = record.bytes;
        self.state.jobs.insert(position, info.done_at_start());
        self.remember_copy(record);
        self.forget_old_jobs();
        self.runtime.checkpoint_due = true;
        Ok(Applied::Job { id: position })
    }

    /// The running job of copy `record` logged at `position` (which becomes its id).
    fn copy_job(&self, position: u64, writer_time_ms: i64, record: &mut CopyRecord) -> JobRecord {
        record.job = position;
        record.time_ms = writer_time_ms;
        let id = record
            .datasource
            .as_deref()
            .and_then(|d| self.state.catalog.get(d))
            .map_or(DatasourceId(0), |e| e.id);
        let (start, end) = (record.start_ms.unwrap_or(0), record.end_ms.unwrap_or(0));
        let name = record.datasource.clone().unwrap_or_default();
        let mut info = JobRecord::new(
            position,
            record.kind,
            (id, name),
            (start, end),
            record.actor.clone(),
            writer_time_ms,
        );
        info.destination = Some(format!("{} on node {}", record.to, record.node));
        info
    }

    fn remember_copy(&mut self, record: CopyRecord) {
        if self.state.copies.len() >= super::job::COPIES_KEPT {
            self.state.copies.remove(0);
        }
        self.state.copies.push(record);
    }

    /// This node runs copy `job` (whose `CopyStarted` it has applied): its progress and cancel
    /// flag, registered so `sys.jobs` shows the one and a `Cancel` raises the other.
    pub fn register_copy(&mut self, job: u64) -> Result<CopyRun> {
        let info = self
            .state
            .jobs
            .get(&job)
            .filter(|j| j.kind.is_copy())
            .ok_or_else(|| Error::NotFound(format!("copy job {job} does not exist")))?;
        if info.state != JobState::Running {
            let why = info
                .error
                .clone()
                .unwrap_or_else(|| info.state.as_str().to_string());
            return Err(Error::Cancelled(format!(
                "{} job {job} ended before it ran: {why}",
                info.kind
            )));
        }
        let run = CopyRun::default();
        self.runtime.copy_runs.insert(job, run.clone());
        Ok(run)
    }

    /// This node's running copies, taken out (an engine about to be replaced by a snapshot's).
    pub fn take_copy_runs(&mut self) -> BTreeMap<u64, CopyRun> {
        std::mem::take(&mut self.runtime.copy_runs)
    }

    /// Takes over the running copies of the engine this one replaces; a copy whose job is no
    /// longer running here (cancelled in the snapshot) is told to stop.
    pub fn adopt_copy_runs(&mut self, runs: BTreeMap<u64, CopyRun>) {
        for (job, run) in runs {
            if self
                .state
                .jobs
                .get(&job)
                .is_none_or(|j| j.state != JobState::Running)
            {
                run.cancel.store(true, Ordering::Relaxed);
            }
            self.runtime.copy_runs.insert(job, run);
        }
    }

    /// Tells every copy this node runs to stop (the node is shutting down); each removes what
    /// it wrote, and the next start cancels their jobs.
    pub fn stop_copies(&self) {
        for run in self.runtime.copy_runs.values() {
            run.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// The node that runs copy `job`, if it is a copy.
    pub fn copy_node(&self, job: u64) -> Option<u64> {
        self.state
            .copies
            .iter()
            .find(|c| c.job == job)
            .map(|c| c.node)
    }

    /// The copy ended on this node (written, failed or cancelled).
    pub fn unregister_copy(&mut self, job: u64) {
        self.runtime.copy_runs.remove(&job);
    }

    /// Copies of `node` marked running that nothing runs: started by an earlier boot, or by
    /// this one (`boot`) but neither registered here nor still starting (`starting` tells, by
    /// the copy's `run`): their start was given up on and committed after all. That node
    /// settles them (see [`settle_leftover`]).
    pub fn orphan_copies(
        &self,
        node: u64,
        boot: u64,
        starting: &dyn Fn(u64) -> bool,
    ) -> Vec<CopyRecord> {
        self.state
            .copies
            .iter()
            .filter(|c| c.node == node && !self.runtime.copy_runs.contains_key(&c.job))
            .filter(|c| c.boot != boot || !starting(c.run))
            .filter(|c| {
                self.state
                    .jobs
                    .get(&c.job)
                    .is_some_and(|j| j.state == JobState::Running)
            })
            .cloned()
            .collect()
    }

    /// The copies that may hold beacons of `datasource` in [`start`, `end`), described for a
    /// deletion's report; only those logged after position `since` if given.
    pub(crate) fn copies_holding(
        &self,
        datasource: &str,
        start: i64,
        end: i64,
        since: Option<u64>,
    ) -> Vec<String> {
        self.state
            .copies
            .iter()
            .filter(|c| since.is_none_or(|p| c.job > p) && c.may_hold(datasource, start, end))
            .map(|c| c.describe(self.state.jobs.get(&c.job).map(|j| j.state)))
            .collect()
    }

    /// `j` with the progress of its copy if this node runs it.
    pub(crate) fn with_copy_progress(&self, j: &mut JobRecord) {
        if let Some(run) = self.runtime.copy_runs.get(&j.id) {
            let p = &run.progress;
            j.batches_total = p.batches_total.load(Ordering::Relaxed);
            j.batches_done = p.batches_done.load(Ordering::Relaxed);
            j.events = p.events.load(Ordering::Relaxed);
            j.rejected = p.rejected.load(Ordering::Relaxed);
            j.bytes_total = p.bytes_total.load(Ordering::Relaxed);
            j.bytes_done = p.bytes_done.load(Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_copy_stops_waiting_when_cancelled() {
        let run = CopyRun::default();
        let mut pace = Pace::new(Some(1));
        run.cancel.store(true, Ordering::Relaxed);
        let started = std::time::Instant::now();
        // A thousand seconds' worth at 1 byte/s: a cancelled copy does not wait for it.
        pace.spend(1000, &run);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(run.check("export").is_err());
    }

    #[test]
    fn copies_that_may_hold_a_datasource_interval() {
        let export = CopyRecord {
            kind: JobKind::Export,
            datasource: Some("shop".into()),
            start_ms: Some(100),
            end_ms: Some(200),
            to: "/x".into(),
            node: 1,
            files: 0,
            bytes: 0,
            actor: "a".into(),
            job: 7,
            time_ms: 0,
            boot: 0,
            run: 0,
        };
        assert!(export.may_hold("shop", 150, 300));
        assert!(!export.may_hold("shop", 200, 300));
        assert!(!export.may_hold("other", 0, 1000));
        let backup = CopyRecord {
            kind: JobKind::Backup,
            datasource: None,
            start_ms: None,
            end_ms: None,
            ..export
        };
        assert!(backup.may_hold("anything", 0, 1));
    }
}
