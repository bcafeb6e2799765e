//! What a scrubber checks on this node and how a verified copy replaces a damaged file.
//!
//! Every data file carries its own checksums: a segment a CRC-32C per column and one over its
//! footer (`segment/README.md`), a raw log file one per frame plus each Kafka batch's CRC
//! (`raw/partition_log.rs`). So a file is checked without anything from elsewhere, and a copy
//! fetched from a replica is checked the same way before it replaces anything.
//!
//! Invariants:
//! - Checking reads files off the engine's lock ([`verify`]); only the swap of a repaired file
//!   ([`Engine::replace_data_file`]) takes it, and only for a rename and a reopen.
//! - A replacement is accepted only if it passes the same check and is exactly as long as what
//!   the engine holds, so a raw log's entries and offsets stay where the engine indexed them.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::Engine;
use crate::{Error, Result};
use tidemark_storage::raw::partition_log;
use tidemark_storage::segment::reader::Segment;

/// What kind of data file, which decides how it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Segment,
    RawLog,
}

/// One file to check: relative to the data directory, with the length the engine holds.
#[derive(Debug, Clone)]
pub struct ScrubFile {
    pub relative: PathBuf,
    pub len: u64,
    pub kind: FileKind,
}

impl ScrubFile {
    /// A segment (`.seg`) or raw log file (`.raw`); other files are not checked.
    pub fn new(relative: PathBuf, len: u64) -> Option<ScrubFile> {
        let kind = match relative.extension().and_then(|e| e.to_str()) {
            Some("seg") => FileKind::Segment,
            Some("raw") => FileKind::RawLog,
            _ => return None,
        };
        Some(ScrubFile {
            relative,
            len,
            kind,
        })
    }
}

/// Orders `files` newest first (by modification time under `data_dir`): recent data is what
/// queries and replicas read most, and what a fresh fault most likely hit.
pub fn newest_first(data_dir: &Path, files: Vec<ScrubFile>) -> Vec<ScrubFile> {
    let mut dated: Vec<(Option<SystemTime>, ScrubFile)> = files
        .into_iter()
        .map(|f| {
            (
                std::fs::metadata(data_dir.join(&f.relative))
                    .and_then(|m| m.modified())
                    .ok(),
                f,
            )
        })
        .collect();
    dated.sort_by_key(|f| std::cmp::Reverse(f.0));
    dated.into_iter().map(|(_, f)| f).collect()
}

/// Checks `path` (this file, or a fetched copy of it) as a file of `kind` holding `len` bytes.
/// Returns the number of bytes checked.
pub fn verify(path: &Path, kind: FileKind, len: u64) -> Result<u64> {
    match kind {
        FileKind::Segment => {
            let on_disk = std::fs::metadata(path).map_err(Error::io(path))?.len();
            if on_disk != len {
                return Err(Error::Corrupt {
                    path: path.to_path_buf(),
                    position: on_disk.min(len),
                    reason: format!("the segment holds {on_disk} bytes where {len} were written"),
                });
            }
            // Opening maps the file anew and checks the footer and every column.
            Segment::open(path)?;
        }
        FileKind::RawLog => {
            partition_log::verify_file(path, len)?;
        }
    }
    Ok(len)
}

impl Engine {
    /// Every data file the engine holds that a scrubber checks, in no particular order
    /// ([`newest_first`] orders them without the engine lock).
    pub fn scrub_files(&self) -> Vec<ScrubFile> {
        self.data_files()
            .into_iter()
            .filter_map(|(rel, len)| ScrubFile::new(rel, len))
            .collect()
    }

    /// A live datasource's published segments (id, file relative to the data directory, bytes
    /// written), for a DBA's on-demand check with [`verify`] off the lock; `None` if there is
    /// no such datasource.
    pub fn segment_files(&self, datasource: &str) -> Option<Vec<(String, PathBuf, u64)>> {
        let entry = self.state.catalog.get(datasource)?;
        let ds = self.state.datasources.get(&entry.id)?;
        Some(
            ds.segment_records()
                .map(|r| (r.id.to_string(), r.file.clone(), r.file_bytes))
                .collect(),
        )
    }

    /// The published segments of `datasource` (timeline records), in interval, version,
    /// shard order; `None` if it does not exist.
    pub fn segment_list(&self, datasource: &str) -> Option<Vec<crate::checkpoint::SegmentRecord>> {
        let entry = self
            .state
            .catalog
            .get(datasource)
            .filter(|e| e.deleted.is_none())?;
        let mut out: Vec<_> = self
            .state
            .datasources
            .get(&entry.id)
            .map(|ds| ds.segment_records().cloned().collect())
            .unwrap_or_default();
        out.sort_by(|a: &crate::checkpoint::SegmentRecord, b| {
            let version =
                |r: &crate::checkpoint::SegmentRecord| r.id.version.parse::<u64>().unwrap_or(0);
            (a.id.interval_start_ms, version(a), a.id.shard).cmp(&(
                b.id.interval_start_ms,
                version(b),
                b.id.shard,
            ))
        });
        Some(out)
    }

    /// A published segment of `datasource` by id (as `sys.segments` names it): its timeline
    /// record and, if this node can read it, its metadata (columns, encodings, checksums).
    pub fn segment_detail(
        &self,
        datasource: &str,
        segment: &str,
    ) -> Option<(
        crate::checkpoint::SegmentRecord,
        Option<tidemark_storage::segment::SegmentMeta>,
    )> {
        let entry = self.state.catalog.get(datasource)?;
        let ds = self.state.datasources.get(&entry.id)?;
        ds.segment_detail(segment)
    }

    /// The length this engine holds of data file `relative`, if it holds that file (what a
    /// replica may serve to a peer repairing its copy).
    pub fn data_file_len(&self, relative: &Path) -> Option<u64> {
        self.data_files()
            .into_iter()
            .find(|(rel, _)| rel == relative)
            .map(|(_, len)| len)
    }

    /// Puts `copy` (verified, on the same file system) in place of data file `relative` and
    /// makes the engine read it from now on. The copy must hold exactly the bytes the engine
    /// holds of that file; queries that already hold the old segment finish on it.
    pub fn replace_data_file(&mut self, relative: &Path, copy: &Path) -> Result<()> {
        let file = ScrubFile::new(relative.to_path_buf(), 0).ok_or_else(|| Error::Corrupt {
            path: relative.to_path_buf(),
            position: 0,
            reason: "not a segment or raw log file".into(),
        })?;
        let held = self.data_file_len(relative).ok_or_else(|| Error::Corrupt {
            path: relative.to_path_buf(),
            position: 0,
            reason: "the engine no longer holds this file".into(),
        })?;
        let copy_len = std::fs::metadata(copy).map_err(Error::io(copy))?.len();
        if copy_len != held {
            return Err(Error::Corrupt {
                path: copy.to_path_buf(),
                position: copy_len.min(held),
                reason: format!("the copy holds {copy_len} bytes where the engine holds {held}"),
            });
        }
        let dest = self.data_dir().join(relative);
        std::fs::rename(copy, &dest).map_err(Error::io(&dest))?;
        if let Some(parent) = dest.parent() {
            std::fs::File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(Error::fsync(parent))?;
        }
        for ds in self.state.datasources.values_mut() {
            match file.kind {
                FileKind::Segment => {
                    if ds.reopen_segment(relative, &dest)? {
                        return Ok(());
                    }
                }
                FileKind::RawLog => {
                    if ds.reopen_raw_file(&dest)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}
