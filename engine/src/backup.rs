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
//!
//! Invariant: a restore writes only inside its data directory. A manifest is input like
//! any other (a backup may come from elsewhere): every path it names must be relative and
//! made of plain names (no root, no `..`), no file it names may be a symbolic link, and
//! each file's CRC-32C (manifest format 2) is checked as it is copied. Format 1 backups,
//! written before the checksums, restore with a warning that their contents are unchecked.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SharedEngine;
use super::copies::{CopyRun, Pace};
use crate::{Error, Result};

/// Name of the manifest at a backup's root.
pub const MANIFEST: &str = "BACKUP.json";
const FORMAT: u32 = 2;
/// Backups written before per-file checksums; they restore, unchecked.
const FORMAT_UNCHECKED: u32 = 1;

/// What a backup holds; written last, so a directory without it is not a backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    /// The log position the backup's state is at.
    pub position: u64,
    /// Relative to the backup (and to a data directory): the checkpoint, then data files.
    pub checkpoint: PathBuf,
    /// The checkpoint's CRC-32C (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_crc32c: Option<u32>,
    pub files: Vec<BackedUpFile>,
    pub bytes: u64,
}

impl BackupManifest {
    /// Whether restore checks every file's contents (format 2); format 1 has no checksums.
    pub fn checked(&self) -> bool {
        self.format >= FORMAT
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackedUpFile {
    pub path: PathBuf,
    pub bytes: u64,
    /// The file's CRC-32C (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32c: Option<u32>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies `len` bytes of `from` to `to` and syncs it, counting and pacing the bytes as they go
/// and stopping if `run` is cancelled; returns the bytes' CRC-32C.
fn copy_prefix(
    from: impl Read,
    to: &Path,
    len: u64,
    run: &CopyRun,
    pace: &mut Pace,
) -> Result<u32> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut out = std::fs::File::create(to).map_err(io(to))?;
    let mut reader = from.take(len);
    let mut buf = vec![0u8; pace.chunk().min(len as usize).max(1)];
    let mut copied = 0u64;
    let mut crc = 0u32;
    loop {
        run.check("backup")?;
        let n = reader.read(&mut buf).map_err(io(to))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        out.write_all(&buf[..n]).map_err(io(to))?;
        copied += n as u64;
        run.add_bytes(n as u64);
        pace.spend(n as u64, run);
    }
    if copied != len {
        return Err(Error::Internal(format!(
            "{} was {copied} bytes, the checkpoint names {len}",
            to.display()
        )));
    }
    out.sync_all().map_err(|source| Error::Fsync {
        path: to.to_path_buf(),
        source,
    })?;
    Ok(crc)
}

/// Takes a backup into `to`, which must not exist or be empty, at most `bytes_per_s` if
/// given. A backup cancelled (or failing) part way removes what it wrote.
pub fn backup(
    engine: &SharedEngine,
    to: &Path,
    run: &CopyRun,
    bytes_per_s: Option<u64>,
) -> Result<BackupManifest> {
    if std::fs::read_dir(to).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Invalid(format!(
            "{} is not empty; back up into a new directory",
            to.display()
        )));
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
    let total =
        written.bytes.len() as u64 + written.files.iter().map(|(_, len, _)| len).sum::<u64>();
    run.progress
        .bytes_total
        .store(total, std::sync::atomic::Ordering::Relaxed);
    let mut pace = Pace::new(bytes_per_s);
    let checkpoint = crate::checkpoint::path(Path::new(""));
    let checkpoint_path = to.join(&checkpoint);
    if let Some(dir) = checkpoint_path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    written_paths.push(checkpoint_path.clone());
    let checkpoint_crc32c = Some(copy_prefix(
        &written.bytes[..],
        &checkpoint_path,
        written.bytes.len() as u64,
        run,
        &mut pace,
    )?);
    let mut files = Vec::with_capacity(written.files.len());
    let mut bytes = written.bytes.len() as u64;
    for (rel, len, file) in &written.files {
        let path = to.join(rel);
        written_paths.push(path.clone());
        let crc32c = Some(copy_prefix(file, &path, *len, run, &mut pace)?);
        files.push(BackedUpFile {
            path: rel.clone(),
            bytes: *len,
            crc32c,
        });
        bytes += len;
    }
    run.check("backup")?;
    let manifest = BackupManifest {
        format: FORMAT,
        position: written.position,
        checkpoint,
        checkpoint_crc32c,
        files,
        bytes,
    };
    let text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Internal(format!("backup manifest: {e}")))?;
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

/// Reads and checks a backup's manifest: its format, every path (relative, plain names
/// only), every file present at its length and not a symbolic link, and (format 2) a
/// checksum for each.
pub fn read_manifest(from: &Path) -> Result<BackupManifest> {
    let path = from.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|_| {
        Error::Invalid(format!(
            "{} has no {MANIFEST}: not a tidemark backup (or an unfinished one)",
            from.display()
        ))
    })?;
    let m: BackupManifest = serde_json::from_slice(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    if m.format != FORMAT && m.format != FORMAT_UNCHECKED {
        return Err(Error::Invalid(format!(
            "backup format {} is not {FORMAT_UNCHECKED} or {FORMAT}; use a matching tidemark",
            m.format
        )));
    }
    let checked = m.checked();
    let named = std::iter::once((&m.checkpoint, None, m.checkpoint_crc32c))
        .chain(m.files.iter().map(|f| (&f.path, Some(f.bytes), f.crc32c)));
    for (rel, bytes, crc) in named {
        inside(rel)?;
        if checked && crc.is_none() {
            return Err(Error::Invalid(format!(
                "{MANIFEST} names {} without its checksum",
                rel.display()
            )));
        }
        let md = std::fs::symlink_metadata(from.join(rel)).ok();
        if md.as_ref().is_some_and(|md| md.file_type().is_symlink()) {
            return Err(Error::Invalid(format!(
                "backup file {} is a symbolic link; a backup holds plain files only",
                rel.display()
            )));
        }
        let len = md.filter(|md| md.is_file()).map_or(u64::MAX, |md| md.len());
        if bytes.is_some_and(|bytes| bytes != len) || len == u64::MAX {
            let size = bytes.map(|b| format!(" {b} bytes")).unwrap_or_default();
            return Err(Error::Invalid(format!(
                "backup file {} is missing or not{size}",
                rel.display()
            )));
        }
    }
    Ok(m)
}

/// Refuses a path that could lead outside the directory it is joined to: absolute, empty,
/// or with `..`, `.` or a root among its components.
fn inside(rel: &Path) -> Result<()> {
    let plain =
        !rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(Error::Invalid(format!(
            "{MANIFEST} names {}: a backup's paths must be relative and made of plain names (no root, no ..)",
            rel.display()
        )));
    }
    Ok(())
}

/// Copies a backup's files into `data_dir` (which must not hold a node yet), checking each
/// file's checksum (format 2) as it goes; the caller then rewrites the checkpoint's
/// replication record. A failed restore removes what it wrote.
pub fn copy_into(from: &Path, m: &BackupManifest, data_dir: &Path) -> Result<()> {
    if std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::Invalid(format!(
            "{} is not empty; restore into a new data directory",
            data_dir.display()
        )));
    }
    let existed = data_dir.exists();
    let mut written = Vec::new();
    let result = copy_files(from, m, data_dir, &mut written);
    if result.is_err() {
        remove_written(data_dir, &written, !existed);
    }
    result
}

fn copy_files(
    from: &Path,
    m: &BackupManifest,
    data_dir: &Path,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let named = m
        .files
        .iter()
        .map(|f| (&f.path, Some(f.bytes), f.crc32c))
        .chain(std::iter::once((&m.checkpoint, None, m.checkpoint_crc32c)));
    for (path, len, crc) in named {
        // Checked by read_manifest too; checked here again because this is where it matters.
        inside(path)?;
        let src = from.join(path);
        let file = std::fs::File::open(&src).map_err(io(&src))?;
        let len = match len {
            Some(len) => len,
            None => file.metadata().map_err(io(&src))?.len(),
        };
        let to = data_dir.join(path);
        written.push(to.clone());
        let copied = copy_prefix(&file, &to, len, &CopyRun::default(), &mut Pace::new(None))?;
        if crc.is_some_and(|crc| crc != copied) {
            return Err(Error::Invalid(format!(
                "backup file {} is damaged: its checksum does not match the manifest's",
                path.display()
            )));
        }
    }
    Ok(())
}
