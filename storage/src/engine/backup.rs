//! Backups: a consistent copy of a node's state (checkpoint: catalog, timeline, keys, jobs;
//! and the data files it names: raw log and segments) taken while the node serves. The
//! checkpoint and the list of files are captured together under the engine lock and every file
//! is opened then, so a file the node removes afterwards (a replaced segment) is still read
//! whole; raw log files are copied up to the length the checkpoint covers (later appends are
//! past its position). `raft::restore` brings a node up from a backup.
//!
//! A backup is a copy job (`copies.rs`): it counts its bytes as it goes, can be paced to a
//! bandwidth so serving does not starve, stops when cancelled, and then removes what it
//! wrote; the manifest is written last, so a directory without it is never taken for a
//! backup.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SharedEngine;
use super::copies::{CopyRun, Pace};
use crate::error::{Error, Result};

/// Name of the manifest at a backup's root.
pub const MANIFEST: &str = "BACKUP.json";
const FORMAT: u32 = 1;

/// What a backup holds; written last, so a directory without it is not a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    /// The log position the backup's state is at.
    pub position: u64,
    /// Relative to the backup (and to a data directory): the checkpoint, then data files.
    pub checkpoint: PathBuf,
    pub files: Vec<BackedUpFile>,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackedUpFile {
    pub path: PathBuf,
    pub bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Copies `len` bytes of `from` to `to` and syncs it, counting and pacing the bytes as they go
/// and stopping if `run` is cancelled.
fn copy_prefix(from: impl Read, to: &Path, len: u64, run: &CopyRun, pace: &mut Pace) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut out = std::fs::File::create(to).map_err(io(to))?;
    let mut reader = from.take(len);
    let mut buf = vec![0u8; pace.chunk().min(len as usize).max(1)];
    let mut copied = 0u64;
    loop {
        run.check("backup")?;
        let n = reader.read(&mut buf).map_err(io(to))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(io(to))?;
        copied += n as u64;
        run.add_bytes(n as u64);
        pace.spend(n as u64, run);
    }
    if copied != len {
        return Err(Error::Internal(format!("{} was {copied} bytes, the checkpoint names {len}", to.display())));
    }
    out.sync_all().map_err(|source| Error::Fsync { path: to.to_path_buf(), source })
}

/// Takes a backup into `to`, which must not exist or be empty, at most `bytes_per_s` if
/// given. A backup cancelled (or failing) part way removes what it wrote.
pub fn backup(engine: &SharedEngine, to: &Path, run: &CopyRun, bytes_per_s: Option<u64>) -> Result<BackupManifest> {
    if std::fs::read_dir(to).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Invalid(format!("{} is not empty; back up into a new directory", to.display())));
    }
    let existed = to.exists();
    let mut written_paths = Vec::new();
    let result = write_backup(engine, to, run, bytes_per_s, &mut written_paths);
    if result.is_err() {
        remove_written(to, &written_paths, !existed);
    }
    result
}

fn write_backup(
    engine: &SharedEngine,
    to: &Path,
    run: &CopyRun,
    bytes_per_s: Option<u64>,
    written_paths: &mut Vec<PathBuf>,
) -> Result<BackupManifest> {
    let written = engine.checkpoint_with_files()?;
    let total = written.bytes.len() as u64 + written.files.iter().map(|(_, len, _)| len).sum::<u64>();
    run.progress.bytes_total.store(total, std::sync::atomic::Ordering::Relaxed);
    let mut pace = Pace::new(bytes_per_s);
    let checkpoint = crate::engine::checkpoint::path(Path::new(""));
    let checkpoint_path = to.join(&checkpoint);
    if let Some(dir) = checkpoint_path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    written_paths.push(checkpoint_path.clone());
    copy_prefix(&written.bytes[..], &checkpoint_path, written.bytes.len() as u64, run, &mut pace)?;
    let mut files = Vec::with_capacity(written.files.len());
    let mut bytes = written.bytes.len() as u64;
    for (rel, len, file) in &written.files {
        let path = to.join(rel);
        written_paths.push(path.clone());
        copy_prefix(file, &path, *len, run, &mut pace)?;
        files.push(BackedUpFile { path: rel.clone(), bytes: *len });
        bytes += len;
    }
    run.check("backup")?;
    let manifest = BackupManifest { format: FORMAT, position: written.position, checkpoint, files, bytes };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(format!("backup manifest: {e}")))?;
    let path = to.join(MANIFEST);
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(manifest)
}

/// Removes the files a copy wrote under `root` and the directories that leaves empty
/// (`root` itself too if the copy created it); never anything else.
pub fn remove_written(root: &Path, paths: &[PathBuf], root_too: bool) {
    let mut dirs = std::collections::BTreeSet::new();
    for p in paths {
        let _ = std::fs::remove_file(p);
        let mut dir = p.parent();
        while let Some(d) = dir.filter(|d| d.starts_with(root) && *d != root) {
            dirs.insert(d.to_path_buf());
            dir = d.parent();
        }
    }
    // Deepest first; remove_dir refuses a directory someone else put files in.
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    if root_too {
        let _ = std::fs::remove_dir(root);
    }
}

/// Reads and checks a backup's manifest (every file present at its length).
pub fn read_manifest(from: &Path) -> Result<BackupManifest> {
    let path = from.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|_| {
        Error::Invalid(format!("{} has no {MANIFEST}: not a tidemark backup (or an unfinished one)", from.display()))
    })?;
    let m: BackupManifest =
        serde_json::from_slice(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    if m.format != FORMAT {
        return Err(Error::Invalid(format!("backup format {} is not {FORMAT}; use a matching tidemark", m.format)));
    }
    for f in &m.files {
        let len = std::fs::metadata(from.join(&f.path)).map(|md| md.len()).unwrap_or(u64::MAX);
        if len != f.bytes {
            return Err(Error::Invalid(format!(
                "backup file {} is missing or not {} bytes",
                f.path.display(),
                f.bytes
            )));
        }
    }
    Ok(m)
}

/// Copies a backup's files into `data_dir` (which must not hold a node yet); the caller then
/// rewrites the checkpoint's replication record.
pub fn copy_into(from: &Path, m: &BackupManifest, data_dir: &Path) -> Result<()> {
    if std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Invalid(format!("{} is not empty; restore into a new data directory", data_dir.display())));
    }
    for rel in m.files.iter().map(|f| (&f.path, f.bytes)).chain(std::iter::once((&m.checkpoint, u64::MAX))) {
        let (path, len) = rel;
        let src = from.join(path);
        let file = std::fs::File::open(&src).map_err(io(&src))?;
        let len = if len == u64::MAX { file.metadata().map_err(io(&src))?.len() } else { len };
        copy_prefix(&file, &data_dir.join(path), len, &CopyRun::default(), &mut Pace::new(None))?;
    }
    Ok(())
}
