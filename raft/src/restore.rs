//! Restore: a new data directory from a backup, as a one-node cluster whose state is the
//! backup's. The files are copied; the checkpoint's replication record keeps its last
//! applied log id but names this node as the only voter; the Raft store starts as after a
//! snapshot at that log id (purged up to it, voted for by this node at its term), so the node
//! elects itself and the next entry follows the backup's position. Other nodes then join it
//! and catch up by snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use tidemark_engine::backup;
use tidemark_engine::checkpoint::{self, Checkpoint};
use tidemark_engine::job::JobState;

use crate::error::{Error, Result};
use crate::log_store::LogStore;
use crate::state_machine::ReplicationMeta;
use crate::types::{Member, NodeId};

/// What a restore brought back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub position: u64,
    pub files: usize,
    pub bytes: u64,
    /// Whether every file's checksum was checked (backups in manifest format 2).
    pub checked: bool,
}

fn failed(what: impl std::fmt::Display) -> Error {
    Error::Stopped(format!("restore: {what}"))
}

/// Restores the backup at `from` into `data_dir` for node `node_id` listening at `member`.
/// A restore that fails leaves the data directory as empty as it found it (it must be empty
/// to begin with), so it can be retried.
pub fn restore(from: &Path, data_dir: &Path, node_id: NodeId, member: Member) -> Result<Restored> {
    let manifest = backup::read_manifest(from).map_err(failed)?;
    backup::copy_into(from, &manifest, data_dir).map_err(failed)?;
    let restored = seed(data_dir, node_id, member, &manifest);
    if restored.is_err() {
        // copy_into refused a data directory that was not empty: all that is in it is ours.
        for entry in std::fs::read_dir(data_dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
    restored
}

/// Rewrites a copied checkpoint's replication record for this node and seeds its Raft store.
fn seed(
    data_dir: &Path,
    node_id: NodeId,
    member: Member,
    manifest: &backup::BackupManifest,
) -> Result<Restored> {
    let mut cp: Checkpoint = checkpoint::load(data_dir)
        .map_err(failed)?
        .ok_or_else(|| failed("the backup holds no checkpoint"))?;
    let replication = cp
        .replication
        .clone()
        .ok_or_else(|| failed("the backup's checkpoint has no replication record"))?;
    let mut meta: ReplicationMeta = serde_json::from_value(replication.clone()).map_err(failed)?;
    let last = meta
        .last_applied
        .clone()
        .ok_or_else(|| failed("the backup was taken before anything was applied"))?;
    // The term the backup's last entry was written in: this node's vote continues from it,
    // so its first entry sorts after the backup's last.
    let term = replication["last_applied"]["leader_id"]["term"]
        .as_u64()
        .ok_or_else(|| {
            failed(format!(
                "no term in the backup's last applied log id {replication}"
            ))
        })?;
    let membership = openraft::Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(node_id, member)]),
    )
    .map_err(failed)?;
    meta.membership = openraft::StoredMembership::new(meta.membership.log_id().clone(), membership);
    cp.replication = Some(serde_json::to_value(&meta).map_err(failed)?);
    // Copies running when the backup was taken (the backup itself among them) run nowhere
    // in the restored cluster; their outcome is the original cluster's to record.
    for job in cp
        .jobs
        .iter_mut()
        .filter(|j| j.kind.is_copy() && j.state == JobState::Running)
    {
        job.state = JobState::Cancelled;
        job.error =
            Some("running when the backup this node was restored from was taken; see the original cluster".into());
    }
    checkpoint::store(data_dir, &cp).map_err(failed)?;
    let raft_dir = data_dir.join("raft");
    let store = LogStore::open(&raft_dir).map_err(|source| Error::Store {
        path: raft_dir.clone(),
        source,
    })?;
    store
        .seed(&last, term, node_id)
        .map_err(|source| Error::Store {
            path: raft_dir,
            source,
        })?;
    Ok(Restored {
        position: cp.applied_position,
        files: manifest.files.len(),
        bytes: manifest.bytes,
        checked: manifest.checked(),
    })
}
