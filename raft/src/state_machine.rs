//! The replicated state machine: committed Raft entries applied to the engine, in index order.
//!
//! A normal entry's index is its log position for the engine, so the engine's idempotent,
//! deterministic apply path (ARCHITECTURE.md invariant 1) is the one every replica
//! uses. This module adds what openraft needs to know: the last applied log id and the
//! membership, recorded inside the engine's checkpoint (`Engine::set_replication`) so they
//! are written in the same atomic file as the state they describe. After a restart, openraft
//! replays the Raft log from there.
//!
//! Snapshots are the engine's checkpoint plus a manifest of the data files it names
//! (`snapshot.rs`): the receiving node fetches those files before openraft hands the snapshot
//! here, and installing swaps files and checkpoint in (`engine::install`) and reopens the engine.

use std::io;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use openraft::storage::{
    EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta,
};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, StoredMembership};
use serde::{Deserialize, Serialize};
use tidemark_engine::checkpoint::Checkpoint;
use tidemark_engine::command::Entry as LogEntry;
use tidemark_engine::{Engine, EngineConfig, SharedEngine};

use crate::snapshot::{Manifest, SnapshotTransfer};
use crate::types::{ApplyAnswer, TypeConfig};

/// Applies slower than this are logged at debug level (a long apply holds the engine lock).
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(10);

type LogId = LogIdOf<TypeConfig>;
type Membership = StoredMembershipOf<TypeConfig>;

/// What the engine's checkpoint records for Raft.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ReplicationMeta {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: Membership,
}

/// A snapshot this node built: its meta and its encoded [`Manifest`].
type StoredSnapshot = (SnapshotMetaOf<TypeConfig>, Vec<u8>);

#[derive(Debug)]
pub struct EngineStateMachine {
    engine: SharedEngine,
    config: EngineConfig,
    meta: ReplicationMeta,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    transfer: Arc<SnapshotTransfer>,
    /// The engine's applied position after each applied batch: Kafka Fetch long-polls on it.
    applied_tx: tokio::sync::watch::Sender<u64>,
}

fn meta_json(m: &ReplicationMeta) -> io::Result<serde_json::Value> {
    serde_json::to_value(m).map_err(io::Error::other)
}

/// The log index everything through which is applied: the Raft record's, or the engine's
/// position when that is ahead (a checkpoint from before the record existed).
fn raft_applied(meta: &ReplicationMeta, engine: &Engine) -> u64 {
    meta.last_applied
        .as_ref()
        .map_or(0, |l| l.index)
        .max(engine.applied_position())
}

impl EngineStateMachine {
    /// Wraps an opened engine; what it last applied comes from its checkpoint.
    pub fn new(
        engine: SharedEngine,
        config: EngineConfig,
        transfer: Arc<SnapshotTransfer>,
    ) -> io::Result<EngineStateMachine> {
        let meta = match engine.read().replication() {
            None => ReplicationMeta::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
        };
        let (applied_tx, _) = tokio::sync::watch::channel(raft_applied(&meta, &engine.read()));
        Ok(EngineStateMachine {
            engine,
            config,
            meta,
            current: Arc::new(Mutex::new(None)),
            transfer,
            applied_tx,
        })
    }

    /// The Raft log index applied through, whenever entries were applied. It counts every
    /// entry, membership changes and leaders' blank entries too: a read index can be one of
    /// those, and the engine's position (commands only) would never reach it on a quiet
    /// node, so read-your-writes waited for the next write.
    pub fn applied_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    pub fn engine(&self) -> SharedEngine {
        self.engine.clone()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<StoredSnapshot>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The job a `Publish` timeline entry publishes (other entries: `None`).
fn publishing_job(kind: u8, payload: &[u8]) -> Option<u64> {
    use tidemark_engine::command::{Command, KIND_TIMELINE, TimelineCommand};
    if kind != KIND_TIMELINE {
        return None;
    }
    match Command::decode(kind, payload).ok()? {
        Command::Timeline(TimelineCommand::Publish { job }) => Some(job),
        _ => None,
    }
}

impl RaftStateMachine<TypeConfig> for EngineStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = CheckpointBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        Ok((self.meta.last_applied.clone(), self.meta.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let t = std::time::Instant::now();
        let mut n = 0;
        while let Some((entry, responder)) = entries.try_next().await? {
            n += 1;
            let log_id = entry.log_id.clone();
            let answer = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Membership(m) => {
                    self.meta.membership = StoredMembership::new(Some(log_id.clone()), m);
                    None
                }
                EntryPayload::Normal(cmd) => {
                    // A reindex or compaction publishing: wait for this replica's own build
                    // without the engine lock, so queries keep running meanwhile.
                    if let Some(job) = publishing_job(cmd.kind, &cmd.payload) {
                        while !self.engine.read().job_built(job) {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    }
                    let e = LogEntry {
                        position: log_id.index,
                        writer_time_ms: cmd.writer_time_ms,
                        kind: cmd.kind,
                        payload: cmd.payload,
                    };
                    let result = self.engine.write().apply(&e);
                    Some(match result {
                        Ok(applied) => Ok(applied),
                        // Refused before touching state, the same way on every replica.
                        Err(tidemark_engine::Error::BadCommand { kind, reason }) => {
                            Err(format!("log entry of kind {kind} refused: {reason}"))
                        }
                        // An I/O fault, or an entry from a newer version (a rolling upgrade
                        // reached a node not yet upgraded): stop rather than diverge.
                        Err(err) => {
                            return Err(io::Error::other(format!(
                                "applying {log_id} failed: {err}"
                            )));
                        }
                    })
                }
            };
            self.meta.last_applied = Some(log_id);
            if let Some(r) = responder {
                r.send(ApplyAnswer { applied: answer });
            }
        }
        let meta = meta_json(&self.meta)?;
        let mut engine = self.engine.write();
        engine.set_replication(meta);
        // Segments the writer finished become visible; a failure to write one stops the node.
        // Checkpointing them (and catalog changes) is the runtime's ticker's job
        // (`Engine::checkpoint_due`): apply never waits for fsyncs.
        engine
            .publish_persisted(false)
            .map_err(|e| io::Error::other(format!("writing a segment: {e}")))?;
        self.applied_tx
            .send_replace(raft_applied(&self.meta, &engine));
        let took = t.elapsed();
        if took >= SLOW_APPLY {
            tracing::debug!(ms = took.as_millis() as u64, entries = n, "slow apply");
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        CheckpointBuilder {
            engine: self.engine.clone(),
            transfer: self.transfer.clone(),
            current: self.current.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        data: Vec<u8>,
    ) -> Result<(), io::Error> {
        if meta.last_log_id <= self.meta.last_applied {
            // Already there (a snapshot sent twice): nothing to replace.
            return Ok(());
        }
        let manifest = Manifest::decode(&data)?;
        let staged = self.transfer.staged_files(&manifest)?;
        let mut cp: Checkpoint = serde_json::from_slice(&manifest.checkpoint)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let replication = ReplicationMeta {
            last_applied: meta.last_log_id.clone(),
            membership: meta.last_membership.clone(),
        };
        cp.replication = Some(meta_json(&replication)?);
        {
            // Queries wait while the state is swapped; nothing else writes to the engine, and
            // no checkpoint of the old state is written over the new one.
            let _gate = self.engine.checkpoint_gate();
            let mut engine = self.engine.write();
            engine.quiesce().map_err(|e| {
                io::Error::other(format!("finishing segment writes before a snapshot: {e}"))
            })?;
            tidemark_engine::install::install(&self.config.data_dir, &cp, &staged).map_err(
                |e| io::Error::other(format!("installing snapshot {}: {e}", manifest.id)),
            )?;
            let (fresh, recovery) = Engine::open(self.config.clone()).map_err(|e| {
                io::Error::other(format!(
                    "opening the engine from snapshot {}: {e}",
                    manifest.id
                ))
            })?;
            tracing::info!(
                snapshot = %manifest.id,
                position = fresh.applied_position(),
                files = manifest.files.len(),
                bytes = manifest.total_bytes(),
                raw_batches_replayed = recovery.raw_batches_replayed,
                "installed a snapshot"
            );
            let mut fresh = fresh;
            // Copies this node runs go on: their handles move over (a cancel in the snapshot
            // raises their flag).
            fresh.adopt_copy_runs(engine.take_copy_runs());
            *engine = fresh;
        }
        self.transfer.clear_staging();
        self.transfer
            .stats
            .installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.meta = replication;
        self.applied_tx
            .send_replace(raft_applied(&self.meta, &self.engine.read()));
        // Another node's snapshot is not served from here: the next one asked for is built.
        *self.slot() = None;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        if let Some((meta, snapshot)) = self.slot().clone() {
            return Ok(Some(Snapshot { meta, snapshot }));
        }
        // None built since start (or the last was installed from elsewhere): the leader needs
        // one to send, so build it now.
        if self.meta.last_applied.is_none() {
            return Ok(None);
        }
        let mut builder = self.get_snapshot_builder().await;
        builder.build_snapshot().await.map(Some)
    }
}

/// Builds a snapshot: checkpoints the engine and describes the data files the checkpoint
/// names.
#[derive(Debug)]
pub struct CheckpointBuilder {
    engine: SharedEngine,
    transfer: Arc<SnapshotTransfer>,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for CheckpointBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        // openraft builds while entries go on being applied: what the snapshot claims (the
        // replication record) comes from the same capture as the checkpoint. Entries applied
        // after it are sent again to the receiver, which skips what it already holds.
        let engine = self.engine.clone();
        let written = tokio::task::spawn_blocking(move || engine.checkpoint_with_files())
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::other)?;
        let replication: ReplicationMeta = match written.replication {
            Some(v) => serde_json::from_value(v)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            None => ReplicationMeta::default(),
        };
        let (checkpoint, files) = (written.bytes, written.files);
        let index = replication
            .last_applied
            .as_ref()
            .map(|l| l.index)
            .unwrap_or(0);
        let manifest = self.transfer.publish(index, checkpoint, files).await?;
        let data = manifest.encode()?;
        let meta = SnapshotMeta {
            last_log_id: replication.last_applied,
            last_membership: replication.membership,
        };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}
