//! The scrubber: a background task that checks this node's data files
//! against their own checksums, newest first, and repairs a damaged file from a replica.
//!
//! - **Checking** runs in the background from start-up on and never blocks it. One file at a
//!   time, off the engine's lock, paced to `bytes_per_s` so queries and ingest keep the disk.
//!   A pass covers every raw log file (up to the length written) and every segment; the next
//!   pass starts `interval` after the last one ended.
//! - **Standing down**: a node that found damage does not stand for leader until it is
//!   repaired (openraft's `elect(false)`), and a leader hands leadership to another voter.
//!   Its Raft log is not affected, so it goes on voting and replicating. In a one-voter
//!   cluster there is nobody to hand over to, and the node goes on leading.
//! - **Repairing**: replicas hold byte-identical files for the same log prefix (ARCHITECTURE.md
//!   invariant 3), so the damaged file is fetched from a peer over `ReadDataFile`, in chunks,
//!   checked the same way, and swapped in (`Engine::replace_data_file`). A peer that cannot
//!   serve it, or whose copy fails the check, is skipped for the next one. Files whose repair
//!   failed are tried again every few seconds until the next pass.
//! - **At start-up** a segment that fails its checksums does not stop the node (the engine
//!   keeps it in the timeline as unreadable; a query over its interval fails with an error
//!   naming it); the scrubber repairs those first, even with scrubbing switched off.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use serde::{Deserialize, Serialize};
use tidemark_engine::SharedEngine;
use tidemark_engine::scrub::{self, ScrubFile};
use tidemark_proto::raft::RaftMessage;

/// How often a damaged file whose repair failed is tried again between passes.
const REPAIR_RETRY: Duration = Duration::from_secs(5);

use crate::replica::RaftNode;
use crate::snapshot::{SnapshotTransfer, connect, fetch_into};
use crate::types::NodeId;

const INCOMING_DIR: &str = "scrub-incoming";
/// One answer of `ReadDataFile`.
const CHUNK_BYTES: u64 = 4 << 20;
/// Tries at swapping in a copy of a raw log file that grows while it is fetched.
const REPAIR_TRIES: usize = 3;

/// How often and how fast the scrubber reads.
#[derive(Debug, Clone)]
pub struct ScrubConfig {
    /// Pause between the end of one pass and the start of the next; zero turns scrubbing off.
    pub interval: Duration,
    /// Read rate bound.
    pub bytes_per_s: u64,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            interval: Duration::from_secs(3600),
            bytes_per_s: 64 << 20,
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct ScrubStats {
    pub passes: AtomicU64,
    pub files_checked: AtomicU64,
    pub bytes_checked: AtomicU64,
    pub damaged_found: AtomicU64,
    pub repaired: AtomicU64,
    pub repair_failures: AtomicU64,
    /// Times this node handed leadership over because it held damaged data.
    pub handovers: AtomicU64,
}

/// A request for one chunk of a data file the serving node holds now.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadDataFile {
    /// Relative to the data directory, as the engine names it.
    pub path: String,
    pub offset: u64,
    pub max: u64,
}

/// Serves one chunk of a data file to a peer repairing its copy: only files the engine holds,
/// and only the bytes it holds of them.
pub fn serve_chunk(
    engine: &SharedEngine,
    node_id: NodeId,
    req: &ReadDataFile,
) -> Result<Vec<u8>, String> {
    let relative = PathBuf::from(&req.path);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!("{} is not a data file path", req.path));
    }
    let (held, path) = {
        let e = engine.read();
        (e.data_file_len(&relative), e.data_dir().join(&relative))
    };
    let Some(held) = held else {
        return Err(format!("node {node_id} does not hold {}", req.path));
    };
    if req.offset > held {
        return Err(format!(
            "offset {} is past the {held} bytes node {node_id} holds of {}",
            req.offset, req.path
        ));
    }
    let n = (held - req.offset).min(req.max).min(CHUNK_BYTES) as usize;
    let mut buf = vec![0u8; n];
    let file = std::fs::File::open(&path).map_err(|e| format!("opening {}: {e}", req.path))?;
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, req.offset)
        .map_err(|e| format!("reading {}: {e}", req.path))?;
    Ok(buf)
}

/// The scrubber of one node.
#[derive(Debug)]
pub struct Scrubber {
    node_id: NodeId,
    data_dir: PathBuf,
    engine: SharedEngine,
    raft: RaftNode,
    snapshots: Arc<SnapshotTransfer>,
    config: ScrubConfig,
    pub stats: ScrubStats,
    /// Damaged files not yet repaired (relative path → what is wrong).
    damaged: Mutex<BTreeMap<PathBuf, String>>,
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl Scrubber {
    pub fn new(
        node_id: NodeId,
        engine: SharedEngine,
        raft: RaftNode,
        snapshots: Arc<SnapshotTransfer>,
        config: ScrubConfig,
    ) -> Arc<Scrubber> {
        let data_dir = engine.read().data_dir().to_path_buf();
        Arc::new(Scrubber {
            node_id,
            data_dir,
            engine,
            raft,
            snapshots,
            config,
            stats: ScrubStats::default(),
            damaged: Mutex::new(BTreeMap::new()),
        })
    }

    /// Damaged files found and not yet repaired, with what is wrong with each.
    pub fn damaged(&self) -> BTreeMap<PathBuf, String> {
        self.damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs passes until the task is aborted. With scrubbing off (`interval` zero) it only
    /// repairs segments the engine found damaged when it opened.
    pub fn spawn(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            // Segments found damaged when the engine opened: repaired first, even with
            // scrubbing off (the node must not serve without them for long).
            let known = this.engine.read().unreadable_files();
            for (relative, reason) in known {
                let held = this.engine.read().data_file_len(&relative);
                if let Some(f) = held.and_then(|len| ScrubFile::new(relative.clone(), len)) {
                    this.found_damage(&f, reason).await;
                }
            }
            loop {
                if !this.config.interval.is_zero() {
                    this.pass().await;
                }
                // Until the next pass, damaged files are retried every few seconds: a peer
                // that could not serve one (still starting, or behind) may by now.
                let next_pass = (!this.config.interval.is_zero())
                    .then(|| tokio::time::Instant::now() + this.config.interval);
                loop {
                    let wait = match next_pass {
                        None => REPAIR_RETRY,
                        Some(at) => match at.checked_duration_since(tokio::time::Instant::now()) {
                            Some(left) if !left.is_zero() => REPAIR_RETRY.min(left),
                            _ => break,
                        },
                    };
                    tokio::time::sleep(wait).await;
                    if !this.damaged().is_empty() {
                        this.retry_damaged().await;
                    }
                }
            }
        })
    }

    async fn pass(&self) {
        let files = self.engine.read().scrub_files();
        for f in scrub::newest_first(&self.data_dir, files) {
            let path = self.data_dir.join(&f.relative);
            let (kind, len) = (f.kind, f.len);
            let started = std::time::Instant::now();
            let checked =
                tokio::task::spawn_blocking(move || scrub::verify(&path, kind, len)).await;
            match checked {
                Ok(Ok(bytes)) => {
                    self.stats.files_checked.fetch_add(1, Ordering::Relaxed);
                    self.stats.bytes_checked.fetch_add(bytes, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    // Retention, a drop or a snapshot install may have removed it meanwhile.
                    if self.engine.read().data_file_len(&f.relative).is_none() {
                        continue;
                    }
                    self.found_damage(&f, e.to_string()).await;
                }
                Err(e) => tracing::warn!(error = %e, "a scrub check did not finish"),
            }
            self.pace(len, started.elapsed()).await;
        }
        self.retry_damaged().await;
        self.stats.passes.fetch_add(1, Ordering::Relaxed);
    }

    /// Tries again to repair files whose repair failed.
    async fn retry_damaged(&self) {
        // A transfer may have made this node leader meanwhile (the target cannot know it
        // holds damage): stand down again first.
        let left: Vec<PathBuf> = self.damaged().into_keys().collect();
        if !left.is_empty() {
            self.stand_down().await;
        }
        for relative in left {
            let held = self.engine.read().data_file_len(&relative);
            if let Some(f) = held.and_then(|len| ScrubFile::new(relative.clone(), len)) {
                self.try_repair(&f).await;
            } else {
                // No longer held: nothing to repair.
                self.damaged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&relative);
            }
        }
        self.resume_if_whole();
    }

    async fn pace(&self, bytes: u64, took: Duration) {
        if self.config.bytes_per_s == 0 {
            return;
        }
        let budget = Duration::from_secs_f64(bytes as f64 / self.config.bytes_per_s as f64);
        if let Some(rest) = budget.checked_sub(took) {
            tokio::time::sleep(rest).await;
        }
    }

    async fn found_damage(&self, f: &ScrubFile, reason: String) {
        tracing::error!(file = %f.relative.display(), %reason, "the scrubber found a damaged data file");
        self.stats.damaged_found.fetch_add(1, Ordering::Relaxed);
        self.damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(f.relative.clone(), reason);
        self.stand_down().await;
        self.try_repair(f).await;
        self.resume_if_whole();
    }

    async fn try_repair(&self, f: &ScrubFile) {
        match self.repair(f).await {
            Ok(from) => {
                tracing::info!(file = %f.relative.display(), from, "repaired a damaged data file from a replica");
                self.stats.repaired.fetch_add(1, Ordering::Relaxed);
                self.damaged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&f.relative);
            }
            Err(e) => {
                tracing::error!(file = %f.relative.display(), error = %e, "could not repair a damaged data file yet");
                self.stats.repair_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stops standing for leader; a leader hands over to another voter.
    async fn stand_down(&self) {
        let m = self.raft.metrics().borrow_watched().clone();
        let others: Vec<NodeId> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.node_id)
            .collect();
        let Some(&to) = others.first() else { return };
        self.raft.runtime_config().elect(false);
        if m.state == ServerState::Leader {
            tracing::warn!(to, "handing leadership over: this node holds damaged data");
            self.stats.handovers.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.raft.trigger().transfer_leader(to).await {
                tracing::error!(error = %e, "leader transfer failed");
            }
        }
    }

    fn resume_if_whole(&self) {
        if self
            .damaged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            self.raft.runtime_config().elect(true);
        }
    }

    /// Fetches `f` from a peer, checks it, and swaps it in. Returns the peer it came from.
    async fn repair(&self, f: &ScrubFile) -> io::Result<NodeId> {
        let peers: Vec<(NodeId, String)> = {
            let m = self.raft.metrics().borrow_watched().clone();
            m.membership_config
                .nodes()
                .filter(|(id, _)| **id != self.node_id)
                .map(|(id, n)| (*id, n.raft.clone()))
                .collect()
        };
        if peers.is_empty() {
            return Err(io_err("no other member holds a copy"));
        }
        let incoming = self.data_dir.join(INCOMING_DIR);
        std::fs::create_dir_all(&incoming)?;
        // The copy keeps the file's name: a raw log file's name carries its base offset.
        let name = f
            .relative
            .file_name()
            .ok_or_else(|| io_err("a data file without a name"))?;
        let copy = incoming.join(name);
        let mut errors = Vec::new();
        for _ in 0..REPAIR_TRIES {
            // An active raw log file grows: fetch what this node holds now.
            let Some(len) = self.engine.read().data_file_len(&f.relative) else {
                return Err(io_err("the file is no longer held"));
            };
            for (id, addr) in &peers {
                let _ = std::fs::remove_file(&copy);
                match self.fetch_and_check(addr, f, len, &copy).await {
                    Ok(()) => {}
                    Err(e) => {
                        errors.push(format!("node {id}: {e}"));
                        continue;
                    }
                }
                let swapped = self.engine.write().replace_data_file(&f.relative, &copy);
                match swapped {
                    Ok(()) => {
                        self.snapshots.forget_crc(&f.relative);
                        return Ok(*id);
                    }
                    // Grew meanwhile (or went away): start over with the new length.
                    Err(e) => {
                        errors.push(format!("node {id}: {e}"));
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_file(&copy);
        Err(io_err(errors.join("; ")))
    }

    async fn fetch_and_check(
        &self,
        addr: &str,
        f: &ScrubFile,
        len: u64,
        copy: &Path,
    ) -> io::Result<()> {
        let client = connect(
            addr,
            self.snapshots.peer_tls(),
            self.snapshots.cluster_secret(),
        )
        .await?;
        let path = f.relative.to_string_lossy().into_owned();
        let fetched = AtomicU64::new(0);
        fetch_into(copy, len, &fetched, |offset| {
            let mut c = client.clone();
            let req = ReadDataFile {
                path: path.clone(),
                offset,
                max: CHUNK_BYTES,
            };
            async move {
                let body = rmp_serde::to_vec_named(&req).map_err(io::Error::other)?;
                c.read_data_file(RaftMessage { body })
                    .await
                    .map_err(io::Error::other)
            }
        })
        .await?;
        let (copy, kind) = (copy.to_path_buf(), f.kind);
        tokio::task::spawn_blocking(move || scrub::verify(&copy, kind, len))
            .await
            .map_err(io_err)?
            .map_err(|e| io_err(format!("the peer's copy fails the check too: {e}")))?;
        Ok(())
    }
}
