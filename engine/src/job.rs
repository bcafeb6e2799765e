//! The record of a long job, whatever its kind: what `sys.jobs` and `/v1/jobs` show and what
//! checkpoints keep. Jobs that rebuild segments (reindex, compaction, deletion) are built in
//! `reindex.rs`, `compact.rs` and `delete.rs`; the commands that start, publish and cancel
//! them are applied in `jobs.rs`; copies (exports, backups) run outside apply (`copies.rs`).
//!
//! Invariant: the serialized names (`kind`, `state` and every field) never change; checkpoints
//! and log entries written by older nodes name them.

use serde::{Deserialize, Serialize};
use tidemark_catalog::DatasourceId;

/// What a job does. Serialized as its lowercase name (`"reindex"`, `"backup"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// An interval's segments rebuilt from the raw log.
    Reindex,
    /// Segments merged to a coarser query granularity.
    Compact,
    /// Beacons matching a condition removed from the raw log and everything built from it.
    Delete,
    /// A datasource purged.
    Drop,
    /// A retention pass: data past its datasource's retention removed.
    Retain,
    /// Raw beacons written out as Parquet files (on the node asked).
    Export,
    /// A consistent copy of the node's state (on the node asked).
    Backup,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Reindex => "reindex",
            JobKind::Compact => "compact",
            JobKind::Delete => "delete",
            JobKind::Drop => "drop",
            JobKind::Retain => "retain",
            JobKind::Export => "export",
            JobKind::Backup => "backup",
        }
    }

    /// A copy of data taken outside tidemark's reach, run by one node rather than by apply.
    pub fn is_copy(self) -> bool {
        matches!(self, JobKind::Export | JobKind::Backup)
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Its segments are being built (on every replica).
    Running,
    /// Published: queries read the new version.
    Published,
    /// Abandoned; the old version stays.
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Published => "published",
            JobState::Cancelled => "cancelled",
        }
    }
}

/// A long job as `sys.jobs` and `/v1/jobs` show it; kept in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The log position of its start, which is also the version it publishes.
    pub id: u64,
    pub kind: JobKind,
    pub datasource: String,
    pub datasource_id: DatasourceId,
    pub start_ms: i64,
    pub end_ms: i64,
    pub state: JobState,
    pub actor: String,
    pub started_ms: i64,
    #[serde(default)]
    pub finished_ms: Option<i64>,
    #[serde(default)]
    pub published_at: Option<u64>,
    pub batches_total: u64,
    #[serde(default)]
    pub batches_done: u64,
    #[serde(default)]
    pub events: u64,
    #[serde(default)]
    pub rejected: u64,
    #[serde(default)]
    pub segments_replaced: u64,
    #[serde(default)]
    pub segments_published: u64,
    #[serde(default)]
    pub error: Option<String>,
    /// The shard number each rebuilt interval gets, fixed at the start so a build restarted
    /// later writes the same files as every other replica.
    #[serde(default)]
    pub shards: Vec<(i64, u32)>,
    /// Raw log files a retention job removed.
    #[serde(default)]
    pub files_removed: u64,
    /// A compaction's target query granularity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<String>,
    /// A deletion's condition, as typed and as parsed (a restarted build needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub where_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<tidemark_catalog::record_filter::RecordFilter>,
    /// Raw log files a deletion rewrote.
    #[serde(default)]
    pub files_rewritten: u64,
    /// `sys.rejects` rows a deletion removed.
    #[serde(default)]
    pub rejects_removed: u64,
    /// Where an export or backup wrote (on the node that took it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Copies taken before a deletion that may still hold what it removed (exports,
    /// backups): tidemark cannot reach them, so the job names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies_before: Vec<String>,
    /// A copy's progress in bytes (a backup's files, an export's raw batches read), and
    /// what it wrote.
    #[serde(default)]
    pub bytes_total: u64,
    #[serde(default)]
    pub bytes_done: u64,
    #[serde(default)]
    pub files_written: u64,
    /// The log position a backup's state is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_position: Option<u64>,
    /// A deletion's intervals before this start (raw retention removed their beacons) are
    /// rewritten from their rolled-up segments instead of the raw log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollups_before_ms: Option<i64>,
}

impl JobRecord {
    /// A job that starts running at `id`, nothing counted yet.
    pub(crate) fn new(
        id: u64,
        kind: JobKind,
        datasource: (DatasourceId, String),
        (start_ms, end_ms): (i64, i64),
        actor: String,
        started_ms: i64,
    ) -> JobRecord {
        JobRecord {
            id,
            kind,
            datasource: datasource.1,
            datasource_id: datasource.0,
            start_ms,
            end_ms,
            state: JobState::Running,
            actor,
            started_ms,
            finished_ms: None,
            published_at: None,
            batches_total: 0,
            batches_done: 0,
            events: 0,
            rejected: 0,
            segments_replaced: 0,
            segments_published: 0,
            error: None,
            shards: Vec::new(),
            files_removed: 0,
            granularity: None,
            where_text: None,
            filter: None,
            files_rewritten: 0,
            rejects_removed: 0,
            copies_before: Vec::new(),
            destination: None,
            bytes_total: 0,
            bytes_done: 0,
            files_written: 0,
            backup_position: None,
            rollups_before_ms: None,
        }
    }

    /// The job done at its own entry (a drop, a retention pass).
    pub(crate) fn done_at_start(mut self) -> JobRecord {
        self.state = JobState::Published;
        self.finished_ms = Some(self.started_ms);
        self.published_at = Some(self.id);
        self
    }
}

/// Copies remembered for deletion reports.
pub(crate) const COPIES_KEPT: usize = 10_000;

/// The newest jobs kept (finished ones beyond this are forgotten, oldest first).
pub(crate) const JOBS_KEPT: usize = 200;
