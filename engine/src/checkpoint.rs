//! The engine's durable state besides data files: catalog, segment timeline, idempotency keys,
//! rejects, as of one applied log position. Written atomically (temp file, fsync, rename) after
//! the raw logs are synced, so the Raft log can be purged below it. Realtime indexes are
//! not in it: they are rebuilt from the raw log on start.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tidemark_catalog::{Catalog, DatasourceId};

use crate::consumer_offsets::ConsumerOffsets;
use crate::idempotency::IdempotencyWindow;
use crate::producers::ProducerStates;
use crate::rejects::RejectsTable;
use crate::{Error, Result};
use tidemark_storage::segment::SegmentId;

pub const CHECKPOINT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub applied_position: u64,
    pub writer_time_ms: i64,
    pub catalog: Catalog,
    pub datasources: Vec<DatasourceCheckpoint>,
    pub idempotency: IdempotencyWindow,
    pub rejects: RejectsTable,
    #[serde(default)]
    pub producers: ProducerStates,
    #[serde(default)]
    pub consumer_offsets: ConsumerOffsets,
    /// The replication layer's record of what this checkpoint covers (Raft's last applied log
    /// id and membership), opaque here: storage knows no Raft. Written in the same atomic file
    /// as the state it describes, so the two never disagree after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<serde_json::Value>,
    /// Long jobs (reindexes): running ones are restarted from the raw log on open.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<crate::job::JobRecord>,
    /// Exports and backups taken (see `Engine::copies`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<crate::copies::CopyRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasourceCheckpoint {
    pub id: DatasourceId,
    pub segments: Vec<SegmentRecord>,
    /// interval start → log position of its last persist: events applied before it are in
    /// segments, events after it are in a late chunk.
    pub persisted: Vec<(i64, u64)>,
    /// Raw batches at or after this position may hold events not yet in any segment.
    pub realtime_from: u64,
    /// Raw retention removed events before this time (see `DatasourceState`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_horizon_ms: Option<i64>,
    pub events_ingested: u64,
    pub events_rejected: u64,
    #[serde(default)]
    pub tags_dropped: u64,
}

/// A published segment, as the timeline knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRecord {
    pub id: SegmentId,
    /// Relative to the data directory.
    pub file: PathBuf,
    pub file_bytes: u64,
    pub rows: u64,
    pub events: u64,
    pub published_at: u64,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("state").join("checkpoint.json")
}

pub fn load(data_dir: &Path) -> Result<Option<Checkpoint>> {
    let p = path(data_dir);
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::Io { path: p, source: e }),
    };
    let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: p.clone(),
        position: 0,
        reason: format!("checkpoint unreadable: {e}"),
    })?;
    if cp.version != CHECKPOINT_VERSION {
        return Err(Error::Corrupt {
            path: p,
            position: 0,
            reason: format!(
                "checkpoint version {} is not {CHECKPOINT_VERSION}; upgrade the node",
                cp.version
            ),
        });
    }
    Ok(Some(cp))
}

pub fn store(data_dir: &Path, cp: &Checkpoint) -> Result<()> {
    store_bytes(data_dir, &encode(cp)?)
}

pub fn encode(cp: &Checkpoint) -> Result<Vec<u8>> {
    serde_json::to_vec(cp).map_err(|e| Error::Internal(format!("checkpoint encode: {e}")))
}

/// Fsyncs raw log handles a capture took (their logs count themselves synced from then on).
pub(crate) fn sync_taken(unsynced: &[(PathBuf, File)]) -> Result<()> {
    for (path, file) in unsynced {
        file.sync_data().map_err(Error::fsync(path))?;
    }
    Ok(())
}

fn store_bytes(data_dir: &Path, bytes: &[u8]) -> Result<()> {
    let p = path(data_dir);
    let dir = p.parent().unwrap_or(data_dir);
    fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let tmp = p.with_extension("json.tmp");
    let mut f = File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(bytes).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::fsync(&tmp))?;
    fs::rename(&tmp, &p).map_err(Error::io(&p))?;
    // Opening the directory can run short of descriptors (retried); its fsync cannot fail
    // and be retried.
    File::open(dir)
        .map_err(Error::io(dir))?
        .sync_all()
        .map_err(Error::fsync(dir))
}

/// A checkpoint captured under the engine lock ([`crate::Engine::begin_checkpoint`])
/// and written off it, so applying entries does not wait for fsyncs and encoding.
///
/// Invariant: checkpoints are written one at a time, in the order they were captured
/// (`SharedEngine::checkpoint` holds its gate across capture and write). A later capture
/// may have found a raw log file already counted as synced by an earlier one whose fsync is
/// still to come; writing in order means that fsync has happened before the later checkpoint
/// is stored.
#[derive(Debug)]
pub struct PendingCheckpoint {
    pub(crate) data_dir: PathBuf,
    pub(crate) checkpoint: Checkpoint,
    /// Raw log files appended to since their last fsync, by a second handle.
    pub(crate) unsynced: Vec<(PathBuf, File)>,
}

impl PendingCheckpoint {
    pub fn position(&self) -> u64 {
        self.checkpoint.applied_position
    }

    pub fn checkpoint(&self) -> &Checkpoint {
        &self.checkpoint
    }

    /// Makes the raw logs durable up to the captured position, then stores the checkpoint
    /// atomically. Returns the bytes stored (what a snapshot ships).
    pub fn write(self) -> Result<Vec<u8>> {
        sync_taken(&self.unsynced)?;
        let bytes = encode(&self.checkpoint)?;
        store_bytes(&self.data_dir, &bytes)?;
        Ok(bytes)
    }
}
