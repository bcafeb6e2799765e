//! Snapshots that carry data: what a new or far-behind replica needs to catch up when the
//! leader no longer holds the log from where it stands.
//!
//! A snapshot is small: the engine checkpoint (catalog, segment timeline, idempotency keys…)
//! plus a [`Manifest`] of the data files that checkpoint refers to (raw log files, up to the
//! length the checkpoint covers, and segments), each with its length and CRC-32C. The data
//! files do not travel inside the Raft message. The receiving node fetches them itself, in
//! chunks, from the node that built the snapshot (or any member serving it). That way a
//! transfer can resume where it stopped, and files the node already holds are reused.
//!
//! - **Building** (leader): checkpoint under the engine lock and open every file the
//!   checkpoint names while still holding it. An open handle keeps a file's bytes readable even
//!   if retention or a purge unlinks it while a follower is still fetching. The CRCs are
//!   computed outside the lock. Raw log files only grow, so each file's CRC is extended from
//!   the last prefix computed, not recomputed. The last [`SERVED_MAX`] snapshots stay served.
//! - **Staging** (receiver): each file goes to `snapshot-incoming/<crc>-<len>` (its content
//!   address) in the data directory, written as `.part` and resumed from its length. It is
//!   verified against its CRC before it takes its final name. The staging runs in its own
//!   task, so a snapshot RPC that times out does not lose the work done, and the leader's next
//!   attempt joins the same task.
//! - **Installing**: `tidemark_engine::install` swaps the staged files and the
//!   checkpoint in, crash-safely, and the engine is reopened from them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tidemark_engine::install::StagedFile;
use tidemark_proto::raft::RaftMessage;
use tidemark_proto::raft::raft_service_client::RaftServiceClient;

use crate::types::{Member, NodeId};

/// Snapshots a node keeps serving: the newest, and the one before it for a follower still
/// fetching it when the next is built.
pub const SERVED_MAX: usize = 2;
const MANIFEST_FORMAT: u32 = 1;
/// One fetch request's answer; resuming is at this granularity.
const CHUNK_BYTES: u64 = 4 << 20;
const STAGING_DIR: &str = "snapshot-incoming";

/// What a snapshot's data is: the engine checkpoint and the data files it refers to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Names the snapshot among those its source serves.
    pub id: String,
    /// The node that built it and serves its files.
    pub source: NodeId,
    /// The engine checkpoint (JSON), as `tidemark_engine::checkpoint` writes it.
    #[serde(with = "serde_bytes")]
    pub checkpoint: Vec<u8>,
    pub files: Vec<FileRef>,
}

/// One data file: its path relative to the data directory, the length the snapshot covers
/// (a raw log file may have grown since) and the CRC-32C of those bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub path: String,
    pub len: u64,
    pub crc32c: u32,
}

impl FileRef {
    /// The staged file's name: its content address.
    fn content_name(&self) -> String {
        format!("{:08x}-{}", self.crc32c, self.len)
    }
}

impl Manifest {
    pub fn encode(&self) -> io::Result<Vec<u8>> {
        rmp_serde::to_vec_named(self).map_err(io::Error::other)
    }

    pub fn decode(bytes: &[u8]) -> io::Result<Manifest> {
        let m: Manifest = rmp_serde::from_slice(bytes).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot manifest unreadable: {e}"),
            )
        })?;
        if m.format != MANIFEST_FORMAT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "snapshot manifest format {} is not {MANIFEST_FORMAT}: upgrade this node",
                    m.format
                ),
            ));
        }
        Ok(m)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.len).sum()
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct SnapshotStats {
    pub built: AtomicU64,
    pub installed: AtomicU64,
    pub files_fetched: AtomicU64,
    pub bytes_fetched: AtomicU64,
    pub files_reused: AtomicU64,
    pub bytes_served: AtomicU64,
    pub fetch_failures: AtomicU64,
}

/// A built snapshot's files, held open while it is served.
#[derive(Debug)]
struct Served {
    id: String,
    files: Vec<(FileRef, File)>,
}

/// The outcome of one staging task, shared with every RPC waiting on it.
type StageOutcome = Option<Result<(), String>>;

/// This node's side of snapshot transfer: serving the snapshots it built, staging the ones it
/// receives. One per node, shared by the state machine and the Raft RPC service.
#[derive(Debug)]
pub struct SnapshotTransfer {
    node_id: NodeId,
    data_dir: PathBuf,
    served: Mutex<VecDeque<Arc<Served>>>,
    /// path → (length, CRC of that prefix) of the longest prefix computed so far.
    crcs: Mutex<HashMap<PathBuf, (u64, u32)>>,
    staging: Mutex<HashMap<String, tokio::sync::watch::Receiver<StageOutcome>>>,
    pub stats: SnapshotStats,
    /// The client side of peer TLS, for fetching files from peers.
    peer_tls: std::sync::OnceLock<tonic::transport::ClientTlsConfig>,
    /// Presented to peers when fetching files from them.
    secret: std::sync::OnceLock<crate::ClusterSecret>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SnapshotTransfer {
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Arc<SnapshotTransfer> {
        Arc::new(SnapshotTransfer {
            node_id,
            data_dir: data_dir.into(),
            served: Mutex::new(VecDeque::new()),
            crcs: Mutex::new(HashMap::new()),
            staging: Mutex::new(HashMap::new()),
            stats: SnapshotStats::default(),
            peer_tls: std::sync::OnceLock::new(),
            secret: std::sync::OnceLock::new(),
        })
    }

    /// Fetches from peers over mutual TLS from here on (set once, at start).
    pub fn set_peer_tls(&self, tls: tonic::transport::ClientTlsConfig) {
        let _ = self.peer_tls.set(tls);
    }

    pub(crate) fn peer_tls(&self) -> Option<&tonic::transport::ClientTlsConfig> {
        self.peer_tls.get()
    }

    /// Presents `secret` to peers when fetching files from here on (set once, at start).
    pub fn set_cluster_secret(&self, secret: crate::ClusterSecret) {
        let _ = self.secret.set(secret);
    }

    pub(crate) fn cluster_secret(&self) -> Option<&crate::ClusterSecret> {
        self.secret.get()
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.data_dir.join(STAGING_DIR)
    }

    /// Describes and starts serving a snapshot: `files` are the checkpoint's data files
    /// (relative path, length), opened by the caller while it held the engine lock.
    pub async fn publish(
        self: &Arc<Self>,
        index: u64,
        checkpoint: Vec<u8>,
        files: Vec<(PathBuf, u64, File)>,
    ) -> io::Result<Manifest> {
        let this = self.clone();
        let described = tokio::task::spawn_blocking(move || -> io::Result<Vec<(FileRef, File)>> {
            files
                .into_iter()
                .map(|(path, len, file)| {
                    let crc32c = this.crc_of_prefix(&path, &file, len)?;
                    Ok((
                        FileRef {
                            path: path.to_string_lossy().into_owned(),
                            len,
                            crc32c,
                        },
                        file,
                    ))
                })
                .collect()
        })
        .await
        .map_err(io::Error::other)??;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let id = format!("{}-{index}-{stamp}", self.node_id);
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            id: id.clone(),
            source: self.node_id,
            checkpoint,
            files: described.iter().map(|(f, _)| f.clone()).collect(),
        };
        let mut served = lock(&self.served);
        served.push_back(Arc::new(Served {
            id,
            files: described,
        }));
        while served.len() > SERVED_MAX {
            served.pop_front();
        }
        self.stats.built.fetch_add(1, Ordering::Relaxed);
        Ok(manifest)
    }

    /// Forgets the CRC known for data file `relative` (a scrubber replaced a damaged copy,
    /// whose CRC may be the one remembered).
    pub fn forget_crc(&self, relative: &Path) {
        lock(&self.crcs).remove(relative);
    }

    /// The CRC of `file`'s first `len` bytes, extended from the longest prefix already known.
    fn crc_of_prefix(&self, path: &Path, file: &File, len: u64) -> io::Result<u32> {
        let known = lock(&self.crcs).get(path).copied();
        let (at, crc) = match known {
            Some((l, c)) if l == len => return Ok(c),
            Some((l, c)) if l < len => (l, c),
            _ => (0, 0),
        };
        let crc = extend_crc(file, at, len, crc)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} is shorter than its checkpoint says ({len} bytes)",
                    path.display()
                ),
            )
        })?;
        lock(&self.crcs).insert(path.to_path_buf(), (len, crc));
        Ok(crc)
    }

    /// Up to `max` bytes of file `index` of a served snapshot, from `offset`.
    pub fn read(&self, id: &str, index: usize, offset: u64, max: u64) -> Result<Vec<u8>, String> {
        let served = lock(&self.served).iter().find(|s| s.id == id).cloned();
        let Some(served) = served else {
            return Err(format!(
                "node {} no longer serves snapshot {id}; a newer one will be sent",
                self.node_id
            ));
        };
        let Some((f, file)) = served.files.get(index) else {
            return Err(format!("snapshot {id} has no file {index}"));
        };
        if offset > f.len {
            return Err(format!(
                "offset {offset} is past the end of {} ({} bytes)",
                f.path, f.len
            ));
        }
        let n = (f.len - offset).min(max).min(CHUNK_BYTES) as usize;
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| format!("reading {}: {e}", f.path))?;
        self.stats
            .bytes_served
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(buf)
    }

    /// Makes sure every file of `manifest` is staged, fetching what is missing from `members`
    /// (the snapshot's source first). Concurrent calls for one snapshot share one task, which
    /// goes on if a caller stops waiting.
    pub async fn stage(
        self: &Arc<Self>,
        manifest: Arc<Manifest>,
        members: BTreeMap<NodeId, Member>,
    ) -> Result<(), String> {
        let mut rx = {
            let mut staging = lock(&self.staging);
            match staging.get(&manifest.id) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    staging.insert(manifest.id.clone(), rx.clone());
                    let this = self.clone();
                    tokio::spawn(async move {
                        let result = this
                            .fetch_all(&manifest, &members)
                            .await
                            .map_err(|e| e.to_string());
                        if result.is_err() {
                            this.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
                        }
                        lock(&this.staging).remove(&manifest.id);
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| "the staging task stopped".to_string())?;
        outcome
            .clone()
            .unwrap_or_else(|| Err("the staging task stopped".into()))
    }

    /// The staged files of a fully staged `manifest`, for the install.
    pub fn staged_files(&self, manifest: &Manifest) -> io::Result<Vec<StagedFile>> {
        let dir = self.staging_dir();
        manifest
            .files
            .iter()
            .map(|f| {
                let staged = dir.join(f.content_name());
                let len = fs::metadata(&staged)
                    .map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("snapshot file {} is not staged: {e}", f.path),
                        )
                    })?
                    .len();
                if len != f.len {
                    return Err(io::Error::other(format!(
                        "staged {} has {len} bytes, not {}",
                        f.path, f.len
                    )));
                }
                Ok(StagedFile {
                    relative: PathBuf::from(&f.path),
                    staged,
                })
            })
            .collect()
    }

    /// Removes staged files once installed (their bytes now live under their own names).
    pub fn clear_staging(&self) {
        if let Err(e) = fs::remove_dir_all(self.staging_dir())
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "could not remove the snapshot staging directory");
        }
    }

    async fn fetch_all(
        &self,
        manifest: &Manifest,
        members: &BTreeMap<NodeId, Member>,
    ) -> io::Result<()> {
        let dir = self.staging_dir();
        fs::create_dir_all(&dir)?;
        // The source first, then every other member: after a leader change another node may
        // serve the same snapshot id only if it built it, so this mostly helps a source that
        // moved addresses.
        let mut sources: Vec<(NodeId, String)> = members
            .iter()
            .map(|(id, m)| (*id, m.raft.clone()))
            .collect();
        sources.sort_by_key(|(id, _)| *id != manifest.source);
        sources.retain(|(id, _)| *id != self.node_id);
        let mut clients: HashMap<NodeId, crate::network::PeerClient> = HashMap::new();
        for (index, f) in manifest.files.iter().enumerate() {
            let done = dir.join(f.content_name());
            if fs::metadata(&done)
                .map(|m| m.len() == f.len)
                .unwrap_or(false)
            {
                continue;
            }
            if self.reuse_local(f, &done)? {
                self.stats.files_reused.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut last_error = None;
            for (id, addr) in &sources {
                match self
                    .fetch_file(&mut clients, *id, addr, &manifest.id, index, f, &done)
                    .await
                {
                    Ok(()) => {
                        last_error = None;
                        break;
                    }
                    Err(e) => {
                        clients.remove(id);
                        last_error = Some(format!("node {id} ({addr}): {e}"));
                    }
                }
            }
            if let Some(e) = last_error {
                return Err(io::Error::other(format!(
                    "fetching {} of snapshot {}: {e}",
                    f.path, manifest.id
                )));
            }
            self.stats.files_fetched.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Stages `f` from this node's own copy when it has the same bytes (a lagging node already
    /// holds most segments and sealed raw files).
    fn reuse_local(&self, f: &FileRef, done: &Path) -> io::Result<bool> {
        let local = self.data_dir.join(&f.path);
        let Ok(file) = File::open(&local) else {
            return Ok(false);
        };
        let len = file.metadata()?.len();
        if len < f.len {
            return Ok(false);
        }
        if extend_crc(&file, 0, f.len, 0)? != Some(f.crc32c) {
            return Ok(false);
        }
        let part = done.with_extension("part");
        let mut out = File::create(&part)?;
        io::copy(&mut (&file).take(f.len), &mut out)?;
        out.sync_all()?;
        fs::rename(&part, done)?;
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch_file(
        &self,
        clients: &mut HashMap<NodeId, crate::network::PeerClient>,
        id: NodeId,
        addr: &str,
        snapshot: &str,
        index: usize,
        f: &FileRef,
        done: &Path,
    ) -> io::Result<()> {
        let client = match clients.get(&id) {
            Some(c) => c.clone(),
            None => {
                let c = connect(addr, self.peer_tls(), self.cluster_secret()).await?;
                clients.insert(id, c.clone());
                c
            }
        };
        let part = done.with_extension("part");
        fetch_into(&part, f.len, &self.stats.bytes_fetched, |offset| {
            let mut c = client.clone();
            let req = ReadFile {
                snapshot: snapshot.to_string(),
                index,
                offset,
                max: CHUNK_BYTES,
            };
            async move {
                let body = rmp_serde::to_vec_named(&req).map_err(io::Error::other)?;
                c.read_snapshot_file(RaftMessage { body })
                    .await
                    .map_err(io::Error::other)
            }
        })
        .await?;
        let crc = tokio::task::spawn_blocking({
            let (part, len) = (part.clone(), f.len);
            move || extend_crc(&File::open(&part)?, 0, len, 0)
        })
        .await
        .map_err(io::Error::other)??
        .unwrap_or(!f.crc32c);
        if crc != f.crc32c {
            // Start this file over: the bytes on disk are not the ones the source described.
            let _ = fs::remove_file(&part);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "checksum mismatch: got crc32c {crc:08x}, the manifest says {:08x}",
                    f.crc32c
                ),
            ));
        }
        fs::rename(&part, done)?;
        Ok(())
    }
}

/// Extends `crc` over `file`'s bytes `[from, to)`; `None` if the file ends before `to`.
fn extend_crc(file: &File, from: u64, to: u64, mut crc: u32) -> io::Result<Option<u32>> {
    let mut buf = vec![0u8; CHUNK_BYTES as usize];
    let mut at = from;
    while at < to {
        let want = (to - at).min(CHUNK_BYTES) as usize;
        let n = file.read_at(&mut buf[..want], at)?;
        if n == 0 {
            return Ok(None);
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        at += n as u64;
    }
    Ok(Some(crc))
}

/// A client for a peer's Raft RPC at `addr` that takes one chunk per answer.
pub(crate) async fn connect(
    addr: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
    secret: Option<&crate::ClusterSecret>,
) -> io::Result<crate::network::PeerClient> {
    let channel = crate::peer_tls::endpoint(addr, tls)
        .map_err(io::Error::other)?
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .map_err(io::Error::other)?;
    let present = crate::cluster_secret::Present(secret.cloned());
    Ok(RaftServiceClient::with_interceptor(channel, present)
        .max_decoding_message_size(2 * CHUNK_BYTES as usize))
}

/// Fetches a file of `len` bytes into `part`, one `read(offset)` answer (a chunk, or the
/// peer's reason it cannot serve one) at a time, resuming from what `part` already holds.
/// Verifying the result is the caller's job.
pub(crate) async fn fetch_into<F, Fut>(
    part: &Path,
    len: u64,
    fetched: &AtomicU64,
    mut read: F,
) -> io::Result<()>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = io::Result<tonic::Response<RaftMessage>>>,
{
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(part)?;
    let mut at = out.metadata()?.len();
    if at > len {
        out.set_len(0)?;
        at = 0;
    }
    while at < len {
        let answer = tokio::time::timeout(Duration::from_secs(30), read(at))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no chunk within 30 s"))??
            .into_inner();
        let chunk: Result<serde_bytes::ByteBuf, String> = rmp_serde::from_slice(&answer.body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let chunk = chunk.map_err(io::Error::other)?;
        if chunk.is_empty() || chunk.len() as u64 > len - at {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a chunk of {} bytes at {at} of a {len}-byte file",
                    chunk.len()
                ),
            ));
        }
        out.write_all(&chunk)?;
        at += chunk.len() as u64;
        fetched.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    out.sync_all()
}

/// A request for one chunk of a served snapshot's file.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReadFile {
    pub snapshot: String,
    pub index: usize,
    pub offset: u64,
    pub max: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_prefix_crc_is_extended_not_recomputed_and_matches_a_fresh_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        fs::write(&path, vec![7u8; 10_000]).expect("write");
        let t = SnapshotTransfer::new(1, dir.path());
        let file = File::open(&path).expect("open");
        let first = t.crc_of_prefix(&path, &file, 4_000).expect("crc");
        assert_eq!(first, crc32c::crc32c(&[7u8; 4_000]));
        let longer = t.crc_of_prefix(&path, &file, 10_000).expect("crc");
        assert_eq!(longer, crc32c::crc32c(&[7u8; 10_000]));
        assert!(
            t.crc_of_prefix(&path, &file, 20_000).is_err(),
            "a file shorter than claimed is an error"
        );
    }

    #[tokio::test]
    async fn a_served_file_reads_back_in_chunks_and_unknown_snapshots_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("datasources")).expect("mkdir");
        let rel = PathBuf::from("datasources/x.raw");
        let bytes: Vec<u8> = (0..9_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(dir.path().join(&rel), &bytes).expect("write");
        let t = SnapshotTransfer::new(1, dir.path());
        let file = File::open(dir.path().join(&rel)).expect("open");
        let m = t
            .publish(5, b"{}".to_vec(), vec![(rel, 8_000, file)])
            .await
            .expect("publish");
        assert_eq!(m.files[0].crc32c, crc32c::crc32c(&bytes[..8_000]));
        let mut got = t.read(&m.id, 0, 0, 5_000).expect("read");
        got.extend(t.read(&m.id, 0, 5_000, 5_000).expect("read"));
        assert_eq!(got, bytes[..8_000]);
        let e = t.read("nope", 0, 0, 10).expect_err("unknown");
        assert!(e.contains("no longer serves snapshot nope"), "{e}");
        let back = Manifest::decode(&m.encode().expect("encode")).expect("decode");
        assert_eq!(back.files, m.files);
    }
}
