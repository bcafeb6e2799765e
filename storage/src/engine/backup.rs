//! Backups: a consistent copy of a node's state (checkpoint: catalog, timeline, keys, jobs;
//! and the data files it names: raw log and segments) taken while the node serves. The
//! checkpoint and the list of files are captured together under the engine lock and every file
//! is opened then, so a file the node removes afterwards (a replaced segment) is still read
//! whole; raw log files are copied up to the length the checkpoint covers (later appends are
//! past its position). `raft::restore` brings a node up from a backup.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SharedEngine;
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

/// Copies `len` bytes of `from` to `to` and syncs it.
fn copy_prefix(mut from: &std::fs::File, to: &Path, len: u64) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut out = std::fs::File::create(to).map_err(io(to))?;
    let copied = std::io::copy(&mut (&mut from).take(len), &mut out).map_err(io(to))?;
    if copied != len {
        return Err(Error::Internal(format!("{} was {copied} bytes, the checkpoint names {len}", to.display())));
    }
    out.sync_all().map_err(|source| Error::Fsync { path: to.to_path_buf(), source })
}

/// Takes a backup into `to`, which must not exist or be empty.
pub fn backup(engine: &SharedEngine, to: &Path) -> Result<BackupManifest> {
    if std::fs::read_dir(to).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Invalid(format!("{} is not empty; back up into a new directory", to.display())));
    }
    let written = engine.checkpoint_with_files()?;
    let checkpoint = crate::engine::checkpoint::path(Path::new(""));
    let checkpoint_path = to.join(&checkpoint);
    if let Some(dir) = checkpoint_path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut f = std::fs::File::create(&checkpoint_path).map_err(io(&checkpoint_path))?;
    f.write_all(&written.bytes).map_err(io(&checkpoint_path))?;
    f.sync_all().map_err(|source| Error::Fsync { path: checkpoint_path.clone(), source })?;
    let mut files = Vec::with_capacity(written.files.len());
    let mut bytes = written.bytes.len() as u64;
    for (rel, len, file) in &written.files {
        copy_prefix(file, &to.join(rel), *len)?;
        files.push(BackedUpFile { path: rel.clone(), bytes: *len });
        bytes += len;
    }
    let manifest = BackupManifest { format: FORMAT, position: written.position, checkpoint, files, bytes };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Internal(format!("backup manifest: {e}")))?;
    let path = to.join(MANIFEST);
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(manifest)
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
        copy_prefix(&file, &data_dir.join(path), len)?;
    }
    Ok(())
}
