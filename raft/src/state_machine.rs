//! The replicated state machine: committed Raft entries applied to the engine, in index order.
//!
//! A normal entry's index is its log position for the engine, so the engine's idempotent,
//! deterministic apply path (DESIGN.md invariant 1) is the one every replica
//! uses. This module adds what openraft needs to know: the last applied log id and the
//! membership, recorded inside the engine's checkpoint (`Engine::set_replication`) so they
//! are written in the same atomic file as the state they describe. After a restart, openraft
//! replays the Raft log from there.
//!
//! Snapshots are the engine's checkpoint. A snapshot installed on a node replaces its catalog
//! and state; the data files it refers to (segments, raw log files) are not carried yet: a
//! manifest of checksummed files that the joining node fetches is the next slice (issue 4,
//! item 6). Until then only a node whose datasources have no data files can be rebuilt from a
//! snapshot.

use std::io;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, StoredMembership};
use serde::{Deserialize, Serialize};
use tidemark_storage::engine::command::Entry as LogEntry;
use tidemark_storage::engine::checkpoint::{self, Checkpoint};
use tidemark_storage::engine::command::KIND_CATALOG;
use tidemark_storage::engine::{Engine, EngineConfig, SharedEngine};

use crate::types::{ApplyAnswer, TypeConfig};

type LogId = LogIdOf<TypeConfig>;
type Membership = StoredMembershipOf<TypeConfig>;

/// What the engine's checkpoint records for Raft.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ReplicationMeta {
    last_applied: Option<LogId>,
    membership: Membership,
}

/// A built or installed snapshot: its meta and the checkpoint bytes.
type StoredSnapshot = (SnapshotMetaOf<TypeConfig>, Vec<u8>);

#[derive(Debug)]
pub struct EngineStateMachine {
    engine: SharedEngine,
    config: EngineConfig,
    meta: ReplicationMeta,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    /// The engine's applied position after each applied batch: Kafka Fetch long-polls on it.
    applied_tx: tokio::sync::watch::Sender<u64>,
}

fn meta_json(m: &ReplicationMeta) -> io::Result<serde_json::Value> {
    serde_json::to_value(m).map_err(io::Error::other)
}

impl EngineStateMachine {
    /// Wraps an opened engine; what it last applied comes from its checkpoint.
    pub fn new(engine: SharedEngine, config: EngineConfig) -> io::Result<EngineStateMachine> {
        let meta = match engine.read().replication() {
            None => ReplicationMeta::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
        };
        let (applied_tx, _) = tokio::sync::watch::channel(engine.read().applied_position());
        Ok(EngineStateMachine { engine, config, meta, current: Arc::new(Mutex::new(None)), applied_tx })
    }

    /// Changes whenever entries were applied.
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

impl RaftStateMachine<TypeConfig> for EngineStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = CheckpointBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), io::Error> {
        Ok((self.meta.last_applied.clone(), self.meta.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut catalog_changed = false;
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id.clone();
            let answer = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Membership(m) => {
                    self.meta.membership = StoredMembership::new(Some(log_id.clone()), m);
                    None
                }
                EntryPayload::Normal(cmd) => {
                    let e = LogEntry {
                        position: log_id.index,
                        writer_time_ms: cmd.writer_time_ms,
                        kind: cmd.kind,
                        payload: cmd.payload,
                    };
                    catalog_changed |= cmd.kind == KIND_CATALOG;
                    let result = self.engine.write().apply(&e);
                    Some(match result {
                        Ok(applied) => Ok(applied),
                        // Refused before touching state, the same way on every replica.
                        Err(tidemark_storage::Error::BadCommand { kind, reason }) => {
                            Err(format!("log entry of kind {kind} refused: {reason}"))
                        }
                        // An I/O fault, or an entry from a newer version (a rolling upgrade
                        // reached a node not yet upgraded): stop rather than diverge.
                        Err(err) => return Err(io::Error::other(format!("applying {log_id} failed: {err}"))),
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
        let published = engine.publish_persisted(false).map_err(|e| io::Error::other(format!("writing a segment: {e}")))?;
        // A catalog change is checkpointed at once, as the single-node runtime did: files a
        // dropped datasource leaves behind are only removed once no replay can need them.
        if catalog_changed || !published.is_empty() {
            engine.checkpoint().map_err(|e| io::Error::other(format!("checkpoint: {e}")))?;
        }
        self.applied_tx.send_replace(engine.applied_position());
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        CheckpointBuilder { engine: self.engine.clone(), meta: self.meta.clone(), current: self.current.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<TypeConfig>, data: Vec<u8>) -> Result<(), io::Error> {
        let mut cp: Checkpoint =
            serde_json::from_slice(&data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        // The snapshot is the leader's checkpoint, which names segments and raw log files this
        // node does not have. Until snapshots carry those files (issue 4, item 6), refusing is
        // the only safe answer: installing it would leave a replica that silently lacks data.
        if let Some(ds) = cp.datasources.iter().find(|d| d.events_ingested + d.events_rejected > 0 || !d.segments.is_empty()) {
            return Err(io::Error::other(format!(
                "cannot catch up by snapshot at {:?}: datasource {} has data files, and snapshots do not carry them yet; \
                 remove this node and add it again while the leader still holds the log from its start \
                 (raise the entries kept after a snapshot), see issue 4",
                meta.last_log_id, ds.id.0
            )));
        }
        let replication =
            ReplicationMeta { last_applied: meta.last_log_id.clone(), membership: meta.last_membership.clone() };
        cp.replication = Some(meta_json(&replication)?);
        checkpoint::store(&self.config.data_dir, &cp).map_err(io::Error::other)?;
        let (engine, _) = Engine::open(self.config.clone()).map_err(io::Error::other)?;
        let position = engine.applied_position();
        *self.engine.write() = engine;
        self.meta = replication;
        self.applied_tx.send_replace(position);
        *self.slot() = Some((meta.clone(), data));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        Ok(self.slot().clone().map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

/// Builds a snapshot by checkpointing the engine.
#[derive(Debug)]
pub struct CheckpointBuilder {
    engine: SharedEngine,
    meta: ReplicationMeta,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for CheckpointBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let data_dir = {
            let mut e = self.engine.write();
            e.set_replication(meta_json(&self.meta)?);
            e.checkpoint().map_err(io::Error::other)?;
            e.data_dir().to_path_buf()
        };
        let data = std::fs::read(checkpoint::path(&data_dir))?;
        let meta =
            SnapshotMeta { last_log_id: self.meta.last_applied.clone(), last_membership: self.meta.membership.clone() };
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), data.clone()));
        Ok(Snapshot { meta, snapshot: data })
    }
}
