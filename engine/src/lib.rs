//! The engine: each replica's state machine. Applying log entries (Raft entries) in position
//! order is the only way its state changes (ARCHITECTURE.md, invariant 1); `tidemark-raft` wraps
//! the same `apply` in openraft's state machine.
//!
//! ```text
//!  Entry ─► Command::decode ─► catalog command ──► Catalog (specs by position)
//!                          ├─► events ─► raw log append (offsets) ─► extract under spec_at(position)
//!                          │                                         ├─► realtime index of its interval
//!                          │                                         └─► sys.rejects
//!                          └─► persist ─► segment file ─► timeline
//! ```
//!
//! Invariants:
//! - Apply is deterministic: it reads only the entry (position, writer time, payload) and
//!   state built from earlier entries. Decisions that need a clock (closing an interval,
//!   the memory bound) are made by [`Engine::persist_decisions`] and logged as commands.
//! - A client's bytes cannot stop the node: a part whose batch does not decode, or that an
//!   idempotent producer's sequence rules refuse, is refused on its own (the same way on every
//!   replica) and nothing of it is stored.
//! - Apply is idempotent across restarts: a raw batch records its log position, so an entry
//!   already in the raw log is not appended twice, and realtime indexes are rebuilt from the
//!   raw log, never from the Raft log.
//! - A datasource spec change first persists that datasource's realtime indexes, so an index
//!   only ever holds rows of one spec version.

// The facade: what other crates use. Everything else is the engine's own.
pub mod backup; // a consistent copy of the node's state, and its manifest
pub mod checkpoint; // the state a checkpoint or snapshot carries
pub mod command; // the log entry format: what doors submit and apply decodes
pub mod copies; // exports and backups as jobs run by one node
pub mod error;
pub mod export; // raw beacons written out as Parquet
pub mod idempotency; // a batch's outcome, as its sender is answered
pub mod install; // a snapshot's files swapped in crash-safely
pub mod job; // the record of a long job, whatever its kind
pub mod producers; // idempotent Kafka producers' sequence rules
pub mod scrub; // which data files are checked, and their repair
pub mod verdict; // the per-record write rules, for apply and the doors
pub use error::{Error, Result};
pub use jobs::{Removal, RetentionPreview};
pub use persister::{PersistControl, PersistIdle};

mod compact;
mod consumer_offsets;
mod datasource;
mod delete;
mod events;
mod jobs;
mod persister;
mod reindex;
mod rejects;
mod rules;
mod system_tables;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use arrow_array::RecordBatch;
use tidemark_catalog::standardise::TagRules;
use tidemark_catalog::{Catalog, CatalogCommand, CatalogEffect, DatasourceId};

use self::command::Entry;
use crate::checkpoint::{Checkpoint, DatasourceCheckpoint, PendingCheckpoint};
use crate::command::{Command, InitProducerCommand, PersistCommand, PersistReason};
use crate::consumer_offsets::ConsumerOffsets;
use crate::datasource::DatasourceState;
use crate::idempotency::{BatchOutcome, IdempotencyWindow, Seen};
use crate::producers::ProducerStates;
use crate::rejects::RejectsTable;
use tidemark_storage::snapshot::{SnapshotSource, TableSnapshot};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub raw_file_bytes_max: u64,
    /// Realtime memory (all datasources) above which the largest index is persisted.
    pub realtime_bytes_persist: usize,
    /// Realtime memory above which writes are refused (503) until persists catch up.
    pub realtime_bytes_max: usize,
    pub idempotency_window_ms: i64,
    pub idempotency_keys_max: usize,
    pub rejects_max: usize,
    /// Idempotent producers idle this long (writer time) are forgotten, as Kafka's
    /// `producer.id.expiration.ms`.
    pub producer_idle_ms: i64,
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            raw_file_bytes_max: 256 * 1024 * 1024,
            realtime_bytes_persist: 128 * 1024 * 1024,
            realtime_bytes_max: 512 * 1024 * 1024,
            idempotency_window_ms: 24 * 3_600_000,
            idempotency_keys_max: 100_000,
            rejects_max: 100_000,
            producer_idle_ms: 24 * 3_600_000,
        }
    }
}

/// What applying one entry did, for whoever waits on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    Catalog(CatalogEffect),
    Events(BatchOutcome),
    /// A retried batch (same idempotency key and body): nothing applied, original answer.
    Retry(BatchOutcome),
    Persisted {
        segments: usize,
    },
    /// An idempotent producer id and epoch.
    Producer {
        id: i64,
        epoch: i16,
    },
    Offsets,
    /// A reindex job started (its id), published or cancelled.
    Job {
        id: u64,
    },
    /// The command was logged but refused at apply (e.g. its datasource vanished meanwhile).
    Refused {
        reason: String,
        status: RefusalStatus,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalStatus {
    NotFound,
    Conflict,
    Invalid,
}

/// What opening the engine found.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub checkpoint_position: u64,
    pub raw_batches_replayed: u64,
    pub raw_cut_bytes: u64,
}

/// One replica's state machine: the state apply changes, and the node's machinery around it.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    state: Replicated,
    runtime: Runtime,
}

/// What applying the log changes, and nothing else: the same on every replica at the same
/// position, and what a checkpoint holds (apart from `rules`, a cache derived from the
/// catalog). A datasource's state also holds its node-local files and realtime indexes (see
/// `datasource.rs`), which are rebuilt from the raw log, never checkpointed as such.
#[derive(Debug)]
struct Replicated {
    catalog: Catalog,
    datasources: BTreeMap<DatasourceId, DatasourceState>,
    idempotency: IdempotencyWindow,
    rejects: RejectsTable,
    producers: ProducerStates,
    consumer_offsets: ConsumerOffsets,
    /// Raft's own bookkeeping (last applied log id, membership), opaque to the engine.
    replication: Option<serde_json::Value>,
    applied_position: u64,
    writer_time_ms: i64,
    /// The tag rules of the catalog, compiled (derived, never checkpointed).
    rules: rules::RulesCache,
    /// Jobs by id (their start position), finished ones included (the newest kept).
    jobs: BTreeMap<u64, job::JobRecord>,
    /// A deletion published at this position: the replication log still holds the deleted
    /// beacons in its entries below it, and is to be snapshotted and purged through it.
    erase_log_through: Option<u64>,
    /// Exports and backups taken, which a deletion names in its report (oldest first).
    copies: Vec<copies::CopyRecord>,
}

/// The node-local machinery around the replicated state: never checkpointed, different on
/// each node. Apply uses it only to carry out what the replicated state already decided (wait
/// for a running job's build, hand a closed interval to the persister); what an entry does
/// never depends on it.
#[derive(Debug)]
struct Runtime {
    /// The position of the last checkpoint stored on this node.
    checkpoint_position: u64,
    /// Segments were published or the catalog changed since the last checkpoint began: the
    /// node checkpoints soon rather than at its regular interval.
    checkpoint_due: bool,
    /// Purged datasources, with the position of the purge: their files are removed once a
    /// checkpoint at or after it is stored, as no restart can replay into them after that.
    removals: Vec<(u64, DatasourceState)>,
    /// Segment files replaced by a reindex at a position: removed once a checkpoint at or
    /// after it is stored (an older checkpoint still names them).
    obsolete: Vec<(u64, PathBuf)>,
    /// The thread that writes persisted intervals' segment files.
    persister: persister::Persister,
    /// Builds of running jobs.
    running: BTreeMap<u64, reindex::Running>,
    /// Copies this node is running (see `copies.rs`).
    copy_runs: BTreeMap<u64, copies::CopyRun>,
}

impl Engine {
    /// Opens the engine from its checkpoint and raw logs. Entries after
    /// [`Engine::applied_position`] must then be replayed from the Raft log.
    pub fn open(config: EngineConfig) -> Result<(Engine, Recovery)> {
        install::finish_interrupted(&config.data_dir)?;
        let cp = checkpoint::load(&config.data_dir)?;
        let mut recovery = Recovery::default();
        let mut engine = Engine {
            state: Replicated {
                catalog: Catalog::default(),
                datasources: BTreeMap::new(),
                idempotency: IdempotencyWindow::new(
                    config.idempotency_window_ms,
                    config.idempotency_keys_max,
                ),
                rejects: RejectsTable::new(config.rejects_max),
                producers: ProducerStates::default(),
                consumer_offsets: ConsumerOffsets::default(),
                replication: None,
                applied_position: 0,
                writer_time_ms: i64::MIN,
                rules: rules::RulesCache::default(),
                jobs: BTreeMap::new(),
                copies: Vec::new(),
                erase_log_through: None,
            },
            runtime: Runtime {
                checkpoint_position: 0,
                checkpoint_due: false,
                removals: Vec::new(),
                obsolete: Vec::new(),
                persister: persister::Persister::start()?,
                running: BTreeMap::new(),
                copy_runs: BTreeMap::new(),
            },
            config,
        };
        let Some(cp) = cp else {
            return Ok((engine, recovery));
        };
        engine.state.catalog = cp.catalog;
        engine.state.idempotency = cp.idempotency;
        engine.state.idempotency.set_bounds(
            engine.config.idempotency_window_ms,
            engine.config.idempotency_keys_max,
        );
        engine.state.rejects = cp.rejects;
        engine.state.rejects.set_bound(engine.config.rejects_max);
        engine.state.producers = cp.producers;
        engine.state.consumer_offsets = cp.consumer_offsets;
        engine.state.replication = cp.replication;
        engine.state.applied_position = cp.applied_position;
        engine.state.writer_time_ms = cp.writer_time_ms;
        engine.runtime.checkpoint_position = cp.applied_position;
        recovery.checkpoint_position = cp.applied_position;
        engine.state.jobs = cp.jobs.into_iter().map(|j| (j.id, j)).collect();
        engine.state.copies = cp.copies;
        for dcp in cp.datasources {
            let Some(entry) = engine.state.catalog.by_id(dcp.id) else {
                continue;
            };
            let spec = entry.current().clone();
            let mut ds = DatasourceState::open(&engine.config, dcp.id, &spec, &mut recovery)?;
            ds.restore(dcp)?;
            let pending: Vec<(u64, i64, i64)> = engine
                .state
                .jobs
                .values()
                .filter(|j| j.state == job::JobState::Running && j.datasource_id == ds.id)
                .filter(|j| !j.kind.is_copy())
                .map(|j| (j.id, j.start_ms, j.end_ms))
                .collect();
            let replayed = ds.rebuild_realtime(
                &engine.state.catalog,
                &engine.state.rules,
                cp.applied_position,
                &pending,
            )?;
            recovery.raw_batches_replayed += replayed;
            engine.state.datasources.insert(ds.id, ds);
        }
        // Builds that were running when the checkpoint was taken start again from raw.
        // (Copies run on the node that took them, outside the engine: see `copies.rs`.)
        let running: Vec<u64> = engine
            .state
            .jobs
            .values()
            .filter(|j| j.state == job::JobState::Running && !j.kind.is_copy())
            .map(|j| j.id)
            .collect();
        for id in running {
            engine.start_build(id)?;
        }
        Ok((engine, recovery))
    }

    pub fn applied_position(&self) -> u64 {
        self.state.applied_position
    }

    pub fn checkpoint_position(&self) -> u64 {
        self.runtime.checkpoint_position
    }

    pub fn catalog(&self) -> &Catalog {
        &self.state.catalog
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Applies one entry. Entries at or below the applied position are ignored (replay).
    pub fn apply(&mut self, entry: &Entry) -> Result<Applied> {
        if entry.position <= self.state.applied_position {
            return Ok(Applied::Refused {
                reason: "already applied".into(),
                status: RefusalStatus::Conflict,
            });
        }
        let cmd = Command::decode(entry.kind, &entry.payload)?;
        self.state.writer_time_ms = self.state.writer_time_ms.max(entry.writer_time_ms);
        let out = match cmd {
            Command::Catalog { command, actor } => {
                self.apply_catalog(entry.position, entry.writer_time_ms, &command, &actor)
            }
            Command::Events(e) => self.apply_events(entry.position, entry.writer_time_ms, e),
            Command::Persist(p) => self.apply_persist(entry.position, &p),
            Command::InitProducer(p) => Ok(self.apply_init_producer(&p)),
            Command::Offsets(o) => {
                self.state.consumer_offsets.apply(&o, entry.writer_time_ms);
                Ok(Applied::Offsets)
            }
            Command::Timeline(r) => self.apply_reindex(entry.position, entry.writer_time_ms, r),
        };
        self.state.applied_position = entry.position;
        self.state.idempotency.expire(self.state.writer_time_ms);
        self.state
            .producers
            .expire(self.state.writer_time_ms, self.config.producer_idle_ms);
        out
    }

    fn apply_catalog(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        cmd: &CatalogCommand,
        actor: &str,
    ) -> Result<Applied> {
        if let Err(e) = self.state.catalog.check(cmd) {
            let status = match e.status_class() {
                tidemark_catalog::StatusClass::NotFound => RefusalStatus::NotFound,
                tidemark_catalog::StatusClass::AlreadyExists
                | tidemark_catalog::StatusClass::FailedPrecondition => RefusalStatus::Conflict,
                _ => RefusalStatus::Invalid,
            };
            return Ok(Applied::Refused {
                reason: e.to_string(),
                status,
            });
        }
        // A spec change closes the datasource's realtime indexes under the old spec first.
        if let CatalogCommand::UpdateDatasource { spec } = cmd
            && let Some(entry) = self.state.catalog.get(&spec.name)
        {
            let id = entry.id;
            if let Some(ds) = self.state.datasources.get_mut(&id) {
                for job in ds.persist_all(&self.state.catalog, position)? {
                    self.runtime.persister.submit(job)?;
                }
            }
        }
        let effect = self
            .state
            .catalog
            .apply(position, writer_time_ms, cmd, actor)?;
        self.runtime.checkpoint_due = true;
        match &effect {
            CatalogEffect::Created(id) => {
                let spec = self
                    .state
                    .catalog
                    .by_id(*id)
                    .map(|e| e.current().clone())
                    .ok_or_else(|| Error::Internal("created datasource missing".into()))?;
                let mut recovery = Recovery::default();
                let ds = DatasourceState::open(&self.config, *id, &spec, &mut recovery)?;
                self.state.datasources.insert(*id, ds);
            }
            CatalogEffect::Updated(id) => {
                let spec = self
                    .state
                    .catalog
                    .by_id(*id)
                    .map(|e| e.current().clone())
                    .ok_or_else(|| Error::Internal("updated datasource missing".into()))?;
                if let Some(ds) = self.state.datasources.get_mut(id) {
                    ds.grow_partitions(&spec)?;
                }
            }
            CatalogEffect::Deleted(id) => {
                if let Some(ds) = self.state.datasources.get_mut(id) {
                    ds.drop_realtime();
                    let name = ds.name.clone();
                    self.state.idempotency.remove_datasource(&name);
                    self.state.rejects.remove_datasource(&name);
                    self.state.producers.remove_datasource(id.0);
                    self.state.consumer_offsets.remove_topic(&name);
                }
            }
            CatalogEffect::Purged(id) => {
                if let Some(ds) = self.state.datasources.remove(id) {
                    self.runtime.removals.push((position, ds));
                }
            }
            CatalogEffect::Governance(_)
            | CatalogEffect::Access
            | CatalogEffect::Retention
            | CatalogEffect::AlreadyApplied => {}
        }
        Ok(Applied::Catalog(effect))
    }

    /// The tag rules governing `datasource` now (what the edge checks beacons against).
    pub fn current_rules(&self, datasource: &str) -> Option<Arc<TagRules>> {
        self.state
            .rules
            .get(&self.state.catalog, datasource, self.state.applied_position)
    }

    fn apply_init_producer(&mut self, cmd: &InitProducerCommand) -> Applied {
        let (id, epoch) = self.state.producers.init_producer(cmd.existing);
        Applied::Producer { id, epoch }
    }

    fn apply_persist(&mut self, position: u64, cmd: &PersistCommand) -> Result<Applied> {
        let Some(ds) = self.state.datasources.get_mut(&cmd.datasource) else {
            return Ok(Applied::Persisted { segments: 0 });
        };
        match ds.start_persist(
            &self.state.catalog,
            position,
            cmd.interval_start_ms,
            cmd.late,
        )? {
            Some(job) => {
                self.runtime.persister.submit(job)?;
                Ok(Applied::Persisted { segments: 1 })
            }
            None => Ok(Applied::Persisted { segments: 0 }),
        }
    }

    /// Publishes segments the writer has finished (with `wait`, after waiting for all of
    /// them). Returns the seconds each took to write. A failed segment write is an I/O fault
    /// that stops the node, like an fsync error.
    pub fn publish_persisted(&mut self, wait: bool) -> Result<Vec<f64>> {
        let finished = self.runtime.persister.collect(wait);
        let mut seconds = Vec::with_capacity(finished.len());
        for f in finished {
            seconds.push(f.seconds);
            let (written, segment) = f.result?;
            let wanted = match self.state.datasources.get_mut(&f.job.datasource) {
                Some(ds) => ds.finish_persist(&f.job.id, &written, segment)?,
                // Purged while it was being written.
                None => false,
            };
            // Nothing refers to the file of an unwanted shard (its datasource was purged or
            // its interval dropped while it was written).
            if !wanted {
                let _ = std::fs::remove_file(&f.job.path);
            }
        }
        if !seconds.is_empty() {
            self.runtime.checkpoint_due = true;
        }
        Ok(seconds)
    }

    /// A handle to wait for the segment writer to be idle, without holding the engine lock.
    pub fn persist_idle(&self) -> PersistIdle {
        self.runtime.persister.idle()
    }

    /// The segment writer's shortage state (a write waiting to be retried; stopping the
    /// wait), to keep and use without the engine lock.
    pub fn persist_control(&self) -> PersistControl {
        self.runtime.persister.control()
    }

    /// Segments being written right now.
    pub fn persists_in_flight(&self) -> usize {
        self.runtime.persister.in_flight()
    }

    /// Which intervals should persist now, by the writer's clock `now_ms` and the memory
    /// bound. Pure: the caller logs the returned commands.
    pub fn persist_decisions(&self, now_ms: i64) -> Vec<PersistCommand> {
        let mut out = Vec::new();
        for ds in self.state.datasources.values() {
            let Some(entry) = self.state.catalog.by_id(ds.id) else {
                continue;
            };
            if entry.deleted.is_some() {
                continue;
            }
            out.extend(ds.closed_intervals(entry.current(), now_ms));
        }
        if out.is_empty() && self.realtime_bytes() > self.config.realtime_bytes_persist {
            let largest = self
                .state
                .datasources
                .values()
                .flat_map(|ds| {
                    ds.open_indexes()
                        .map(move |(start, late, bytes)| (bytes, ds.id, start, late))
                })
                .max();
            if let Some((_, id, start, late)) = largest {
                out.push(PersistCommand {
                    datasource: id,
                    interval_start_ms: start,
                    late,
                    reason: PersistReason::MemoryBound,
                });
            }
        }
        out
    }

    /// Deleted datasources whose grace period passed at writer time `now_ms`.
    pub fn purge_decisions(&self, now_ms: i64) -> Vec<CatalogCommand> {
        self.state
            .catalog
            .purgeable(now_ms)
            .into_iter()
            .map(|id| CatalogCommand::PurgeDatasource { id })
            .collect()
    }

    pub fn realtime_bytes(&self) -> usize {
        self.state
            .datasources
            .values()
            .map(DatasourceState::realtime_bytes)
            .sum()
    }

    /// Whether writes should be refused until persists catch up (the realtime memory bound).
    pub fn is_overloaded(&self) -> bool {
        self.realtime_bytes() > self.config.realtime_bytes_max
    }

    /// Syncs the raw logs and writes a checkpoint at the applied position, all under the
    /// caller's lock; the Raft log may then be trimmed below the returned position. The
    /// runtime uses [`SharedEngine::checkpoint`], which does the slow part off the lock.
    pub fn checkpoint(&mut self) -> Result<u64> {
        let pending = self
            .begin_checkpoint(true)?
            .ok_or_else(|| Error::Internal("checkpoint not begun".into()))?;
        let position = pending.position();
        pending.write()?;
        self.checkpoint_written(position)?;
        Ok(position)
    }

    /// Captures a checkpoint at the applied position, to be written off the engine lock
    /// ([`PendingCheckpoint::write`]) and then reported with [`Engine::checkpoint_written`].
    ///
    /// It first publishes finished segments; with segments still being written it returns
    /// `None`, unless `wait_for_persists`, which waits for them under the lock. A checkpoint
    /// that named an interval as persisting would come back, after a restart or on a replica
    /// installing it as a snapshot, with that interval's rows in an open index, which the
    /// leader's later persist commands (for its late chunk) never close, so the replica's
    /// segments would diverge.
    pub fn begin_checkpoint(
        &mut self,
        wait_for_persists: bool,
    ) -> Result<Option<PendingCheckpoint>> {
        self.publish_persisted(wait_for_persists)?;
        if self.runtime.persister.in_flight() > 0 {
            return Ok(None);
        }
        let mut unsynced = Vec::new();
        for ds in self.state.datasources.values_mut() {
            if let Err(e) = ds.take_unsynced(&mut unsynced) {
                // The logs taken so far count themselves synced: make it true before the
                // capture is abandoned (an fsync needs no new descriptor).
                checkpoint::sync_taken(&unsynced)?;
                return Err(e);
            }
        }
        let checkpoint = Checkpoint {
            version: checkpoint::CHECKPOINT_VERSION,
            applied_position: self.state.applied_position,
            writer_time_ms: self.state.writer_time_ms,
            catalog: self.state.catalog.clone(),
            datasources: self
                .state
                .datasources
                .values()
                .map(|ds| ds.checkpoint(self.state.applied_position))
                .collect::<Vec<DatasourceCheckpoint>>(),
            idempotency: self.state.idempotency.clone(),
            rejects: self.state.rejects.clone(),
            producers: self.state.producers.clone(),
            consumer_offsets: self.state.consumer_offsets.clone(),
            replication: self.state.replication.clone(),
            // As applied: live progress (a build's, a copy's on this node) is not replicated state.
            jobs: self.state.jobs.values().cloned().collect(),
            copies: self.state.copies.clone(),
        };
        self.runtime.checkpoint_due = false;
        Ok(Some(PendingCheckpoint {
            data_dir: self.config.data_dir.clone(),
            checkpoint,
            unsynced,
        }))
    }

    /// Records that the checkpoint at `position` is stored: files of datasources purged at or
    /// before it are removed now. A file that cannot be removed yet (the node is short of
    /// descriptors, say) is only garbage: it is logged and tried again after the next
    /// checkpoint, never a reason to stop.
    pub fn checkpoint_written(&mut self, position: u64) -> Result<()> {
        self.runtime.checkpoint_position = self.runtime.checkpoint_position.max(position);
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.runtime.removals)
            .into_iter()
            .partition(|(p, _)| *p <= position);
        self.runtime.removals = kept;
        for (at, ds) in gone {
            // Its open files are closed either way; a directory left behind is retried below.
            if let Err(Error::Io { path, source }) = ds.remove_files() {
                tracing::warn!(path = %path.display(), error = %source, "cannot remove a purged datasource's files yet; will retry");
                self.runtime.obsolete.push((at, path));
            }
        }
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.runtime.obsolete)
            .into_iter()
            .partition(|(p, _)| *p <= position);
        self.runtime.obsolete = kept;
        for (at, file) in gone {
            let path = self.config.data_dir.join(&file);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an obsolete file yet; will retry");
                    self.runtime.obsolete.push((at, file));
                }
            }
        }
        Ok(())
    }

    /// Takes the position through which a published deletion wants the replication log
    /// purged (its entries still carry the deleted beacons as they were written).
    pub fn take_erase_due(&mut self) -> Option<u64> {
        self.state.erase_log_through.take()
    }

    /// Whether segments were published or the catalog changed since the last checkpoint
    /// began.
    pub fn checkpoint_due(&self) -> bool {
        self.runtime.checkpoint_due
    }

    /// Opens every data file the engine refers to (relative path, length, handle): with a
    /// checkpoint just begun, what a snapshot of it must carry. Opened under the engine lock,
    /// so a file removed later (a purge) is still readable through its handle.
    pub fn open_data_files(&self) -> Result<Vec<(PathBuf, u64, std::fs::File)>> {
        let dir = &self.config.data_dir;
        self.data_files()
            .into_iter()
            .map(|(rel, len)| {
                let path = dir.join(&rel);
                let file = std::fs::File::open(&path).map_err(Error::io(&path))?;
                Ok((rel, len, file))
            })
            .collect()
    }

    /// The data files the last [`Engine::checkpoint`] refers to, relative to the data
    /// directory, with the length that checkpoint covers: what a snapshot must carry.
    pub fn data_files(&self) -> Vec<(PathBuf, u64)> {
        let dir = &self.config.data_dir;
        self.state
            .datasources
            .values()
            .flat_map(DatasourceState::data_files)
            .map(|(p, len)| (p.strip_prefix(dir).map(Path::to_path_buf).unwrap_or(p), len))
            .collect()
    }

    /// Waits for segment writes in flight and publishes them, so no writer thread touches the
    /// data directory afterwards (before a snapshot replaces it).
    pub fn quiesce(&mut self) -> Result<()> {
        self.publish_persisted(true).map(|_| ())
    }

    /// The idempotency window's view of a keyed batch (read-only, for the edge); `scope`
    /// as [`EventsHeader::idempotency_scope`] gives it.
    pub fn idempotency_check(
        &self,
        datasource: &str,
        scope: Option<&str>,
        key: &str,
        body_hash: u64,
    ) -> Seen {
        self.state
            .idempotency
            .check(datasource, scope, key, body_hash)
    }

    /// A query snapshot of one datasource as of the applied position.
    pub fn table_snapshot(&self, name: &str) -> Option<TableSnapshot> {
        let entry = self.state.catalog.get(name)?;
        let ds = self.state.datasources.get(&entry.id)?;
        let spec = entry.current().clone();
        let schema = Arc::new(tidemark_storage::segment::table_schema(&spec));
        let realtime = ds.realtime_batches(schema);
        Some(TableSnapshot {
            spec,
            log_position: self.state.applied_position,
            segments: ds.segments(),
            realtime,
            unreadable: ds.unreadable(),
        })
    }

    /// Segments found damaged when the engine opened and not repaired since (relative path,
    /// what is wrong): the scrubber repairs these first.
    pub fn unreadable_files(&self) -> Vec<(PathBuf, String)> {
        self.state
            .datasources
            .values()
            .flat_map(DatasourceState::unreadable)
            .map(|u| (u.file, u.reason))
            .collect()
    }

    pub fn rejects(&self) -> &RejectsTable {
        &self.state.rejects
    }

    /// The replication layer's opaque record (see `Checkpoint::replication`), as of the last
    /// checkpoint loaded or the last [`Engine::set_replication`].
    pub fn replication(&self) -> Option<&serde_json::Value> {
        self.state.replication.as_ref()
    }

    /// Sets what the next checkpoint records for the replication layer. The caller keeps it
    /// in step with what it has applied.
    pub fn set_replication(&mut self, meta: serde_json::Value) {
        self.state.replication = Some(meta);
    }

    pub fn producers(&self) -> &ProducerStates {
        &self.state.producers
    }

    pub fn consumer_offsets(&self) -> &ConsumerOffsets {
        &self.state.consumer_offsets
    }

    /// The raw log of one partition of a live datasource, for Kafka Fetch and ListOffsets.
    pub fn partition_log(
        &self,
        datasource: &str,
        partition: u32,
    ) -> Option<&tidemark_storage::raw::partition_log::PartitionLog> {
        let entry = self.state.catalog.get(datasource)?;
        self.state.datasources.get(&entry.id)?.partition(partition)
    }

    /// Totals for metrics: (events ingested, events rejected, realtime rows, segments).
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        self.state
            .datasources
            .values()
            .fold((0, 0, 0, 0), |acc, ds| {
                (
                    acc.0 + ds.events_ingested,
                    acc.1 + ds.events_rejected,
                    acc.2 + ds.realtime_rows(),
                    acc.3 + ds.segment_count() as u64,
                )
            })
    }

    /// Keys left out of events since the datasources were created, because they are not
    /// tags of their domain.
    pub fn tags_dropped(&self) -> u64 {
        self.state
            .datasources
            .values()
            .map(|ds| ds.tags_dropped)
            .sum()
    }
}

/// Counts `dropped` into a batch's answer: one row per key, first met first, bounded.
/// The engine shared between the applier (writes) and queries (reads), and the gate that
/// writes checkpoints one at a time.
#[derive(Debug, Clone)]
pub struct SharedEngine {
    engine: Arc<RwLock<Engine>>,
    checkpoints: Arc<Mutex<()>>,
}

/// A checkpoint [`SharedEngine::checkpoint`] stored.
#[derive(Debug)]
pub struct WrittenCheckpoint {
    pub position: u64,
    /// The file's bytes, as stored.
    pub bytes: Vec<u8>,
    /// The replication layer's record inside it.
    pub replication: Option<serde_json::Value>,
    /// With [`SharedEngine::checkpoint_with_files`]: the data files it names, opened.
    pub files: Vec<(PathBuf, u64, std::fs::File)>,
}

impl SharedEngine {
    pub fn new(engine: Engine) -> SharedEngine {
        SharedEngine {
            engine: Arc::new(RwLock::new(engine)),
            checkpoints: Arc::new(Mutex::new(())),
        }
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Engine> {
        self.engine.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, Engine> {
        self.engine.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Held while a checkpoint is captured and written; whoever replaces the engine's files
    /// (installing a snapshot) holds it too, so an older checkpoint is never stored over them.
    pub fn checkpoint_gate(&self) -> MutexGuard<'_, ()> {
        self.checkpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a checkpoint at the applied position. The engine lock is held only to capture
    /// the state (after waiting, off the lock, for segment writes in flight); the fsyncs and
    /// the encoding happen without it, so applying entries and queries go on meanwhile.
    /// Blocking: call it from a thread that may block.
    pub fn checkpoint(&self) -> Result<WrittenCheckpoint> {
        self.checkpoint_inner(false)
    }

    /// [`SharedEngine::checkpoint`], also opening the data files it names (for a snapshot).
    pub fn checkpoint_with_files(&self) -> Result<WrittenCheckpoint> {
        self.checkpoint_inner(true)
    }

    fn checkpoint_inner(&self, with_files: bool) -> Result<WrittenCheckpoint> {
        let _gate = self.checkpoint_gate();
        let mut attempt = 0;
        let (pending, files) = loop {
            attempt += 1;
            let idle = self.read().persist_idle();
            idle.wait(std::time::Duration::from_secs(60));
            let mut e = self.write();
            // A persist logged between the wait and the lock: wait again off the lock, and
            // only after a few tries under it (a steady stream of persists must not starve
            // checkpoints).
            if let Some(p) = e.begin_checkpoint(attempt >= 4)? {
                let files = if with_files {
                    match e.open_data_files() {
                        Ok(files) => files,
                        Err(err) => {
                            // The capture counted its raw logs synced: keep that true.
                            checkpoint::sync_taken(&p.unsynced)?;
                            return Err(err);
                        }
                    }
                } else {
                    Vec::new()
                };
                break (p, files);
            }
        };
        let position = pending.position();
        let replication = pending.checkpoint().replication.clone();
        let bytes = pending.write()?;
        self.write().checkpoint_written(position)?;
        Ok(WrittenCheckpoint {
            position,
            bytes,
            replication,
            files,
        })
    }
}

impl SnapshotSource for SharedEngine {
    fn table_names(&self) -> Vec<String> {
        self.read()
            .state
            .catalog
            .datasources()
            .map(|e| e.current().name.clone())
            .collect()
    }

    fn snapshot(&self, table: &str) -> Option<TableSnapshot> {
        self.read().table_snapshot(table)
    }

    fn system_table_names(&self) -> Vec<String> {
        system_tables::NAMES.iter().map(|s| s.to_string()).collect()
    }

    fn system_table(&self, name: &str) -> Option<RecordBatch> {
        system_tables::build(&self.read(), name)
    }
}

#[cfg(test)]
mod tests;
