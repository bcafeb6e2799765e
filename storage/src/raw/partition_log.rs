//! One partition's raw log: a directory of append-only files of framed Kafka batches.
//!
//! Owns offset assignment (dense, increasing, never reused), the per-file append-time index
//! and event-time range, torn-tail recovery, and reads by offset or by event time.
//!
//! Invariants:
//! - Offsets are assigned here, at apply, and patched into the stored batch's base offset.
//! - Only the newest file is ever appended to; older files are sealed and carry a sidecar
//!   index (`.idx`) with their entries and event-time range, so reading one interval's events
//!   touches only the files whose range overlaps it.
//! - On open, a torn or corrupt tail of the newest file is cut at the last whole entry. Damage
//!   in a sealed file is not a torn tail and is reported as an error, never cut.
//! - Appends are not durable until [`PartitionLog::sync`]; the Raft log is purged only
//!   below what every partition has synced, so a crash can be replayed from there.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::raw::frame::Frame;
use crate::raw::record_batch;

const FILE_MAGIC: &[u8; 8] = b"TMRAWLOG";
const INDEX_MAGIC: &[u8; 8] = b"TMRAWIDX";
const FORMAT_VERSION: u32 = 1;
const FILE_HEADER_LEN: u64 = 16;
const ENTRY_PREFIX_LEN: usize = 8;
const INDEX_ENTRY_LEN: usize = 64;
/// A deletion writes a file's new version beside it under this suffix, then renames it over.
const REWRITE_SUFFIX: &str = ".rewrite-";

#[derive(Debug, Clone)]
pub struct PartitionLogConfig {
    /// A file is sealed and a new one started once it passes this size.
    pub file_bytes_max: u64,
}

impl Default for PartitionLogConfig {
    fn default() -> Self {
        PartitionLogConfig {
            file_bytes_max: 256 * 1024 * 1024,
        }
    }
}

/// Where one stored batch is and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Byte position of the entry (its frame length prefix) in its file.
    pub file_pos: u64,
    pub entry_len: u32,
    pub log_position: u64,
    pub writer_time_ms: i64,
    pub min_event_ms: i64,
    pub max_event_ms: i64,
}

impl IndexEntry {
    fn overlaps(&self, start_ms: i64, end_ms: i64) -> bool {
        self.min_event_ms <= self.max_event_ms
            && self.min_event_ms < end_ms
            && self.max_event_ms >= start_ms
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.base_offset.to_le_bytes());
        out.extend_from_slice(&self.last_offset.to_le_bytes());
        out.extend_from_slice(&self.file_pos.to_le_bytes());
        out.extend_from_slice(&self.entry_len.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.log_position.to_le_bytes());
        out.extend_from_slice(&self.writer_time_ms.to_le_bytes());
        out.extend_from_slice(&self.min_event_ms.to_le_bytes());
        out.extend_from_slice(&self.max_event_ms.to_le_bytes());
    }

    fn decode(b: &[u8]) -> IndexEntry {
        let i = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            i64::from_le_bytes(a)
        };
        IndexEntry {
            base_offset: i(0),
            last_offset: i(8),
            file_pos: i(16) as u64,
            entry_len: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
            log_position: i(32) as u64,
            writer_time_ms: i(40),
            min_event_ms: i(48),
            max_event_ms: i(56),
        }
    }
}

/// A stored batch: the tidemark frame and the Kafka batch bytes exactly as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    pub frame: Frame,
    pub batch: Vec<u8>,
}

#[derive(Debug)]
struct LogFile {
    base_offset: i64,
    path: PathBuf,
    /// Shared with readers off the engine lock (reindex, export, deletion), whose reads stay
    /// on these bytes even if a deletion later puts a rewritten file at `path`.
    file: Arc<File>,
    len: u64,
    entries: Vec<IndexEntry>,
    min_event_ms: i64,
    max_event_ms: i64,
}

impl LogFile {
    fn droppable(&self, cutoff_ms: i64, below_position: u64) -> bool {
        self.entries.iter().all(|e| e.log_position < below_position)
            && (self.entries.is_empty() || self.max_event_ms < cutoff_ms)
    }

    fn note(&mut self, e: IndexEntry) {
        if e.min_event_ms <= e.max_event_ms {
            self.min_event_ms = self.min_event_ms.min(e.min_event_ms);
            self.max_event_ms = self.max_event_ms.max(e.max_event_ms);
        }
        self.entries.push(e);
    }

    fn overlaps(&self, start_ms: i64, end_ms: i64) -> bool {
        self.min_event_ms <= self.max_event_ms
            && self.min_event_ms < end_ms
            && self.max_event_ms >= start_ms
    }
}

/// What opening a partition log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub files: usize,
    pub entries: usize,
    /// Bytes cut from a torn or corrupt tail, and why.
    pub cut_bytes: u64,
    pub cut_reason: Option<String>,
}

/// Appends ask the kernel to start writing a file's new bytes to disk every this many bytes.
const WRITEBACK_BYTES: u64 = 1 << 20;

/// Starts writeback of `len` bytes at `offset` without waiting for it (Linux
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`), as RocksDB's `bytes_per_sync` does. Durability
/// still comes from the fsync before a checkpoint counts on the data; this only spreads the
/// disk writes out, so that fsync finds little left to write instead of seconds of appends
/// at once, a burst that stalled the Raft log's fsyncs on the same disk (commit p99).
fn start_writeback(file: &File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor belongs to `file`, open for the whole call; the call only
        // schedules I/O on it and touches no memory of ours.
        let rc = unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc != 0 {
            // Only a hint: the fsync that makes the data durable reports real I/O errors.
            tracing::debug!(error = %std::io::Error::last_os_error(), "sync_file_range failed");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

#[derive(Debug)]
pub struct PartitionLog {
    dir: PathBuf,
    partition: u32,
    config: PartitionLogConfig,
    /// Oldest first; the last is the active file.
    files: Vec<LogFile>,
    next_offset: i64,
    last_log_position: Option<u64>,
    unsynced: bool,
    /// Where in the active file writeback was last requested (see [`start_writeback`]).
    writeback_from: u64,
}

impl PartitionLog {
    pub fn open(
        dir: &Path,
        partition: u32,
        config: PartitionLogConfig,
    ) -> Result<(PartitionLog, Recovery)> {
        fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let mut bases: Vec<i64> = Vec::new();
        for item in fs::read_dir(dir).map_err(Error::io(dir))? {
            let item = item.map_err(Error::io(dir))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".raw")
                && let Ok(base) = stem.parse::<i64>()
            {
                bases.push(base);
            } else if name.contains(REWRITE_SUFFIX) {
                // A deletion's rewrite that was never installed: its job builds it again.
                let path = item.path();
                fs::remove_file(&path).map_err(Error::io(&path))?;
            }
        }
        bases.sort_unstable();
        let mut log = PartitionLog {
            dir: dir.to_path_buf(),
            partition,
            config,
            files: Vec::new(),
            next_offset: 0,
            last_log_position: None,
            unsynced: false,
            writeback_from: 0,
        };
        let mut recovery = Recovery::default();
        let count = bases.len();
        for (i, base) in bases.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let file = log.load_file(base, is_last, &mut recovery)?;
            if let Some(last) = file.entries.last() {
                log.next_offset = last.last_offset + 1;
                log.last_log_position = Some(last.log_position);
            } else {
                log.next_offset = log.next_offset.max(base);
            }
            recovery.entries += file.entries.len();
            log.files.push(file);
        }
        recovery.files = log.files.len();
        if log.files.is_empty() {
            let file = log.create_file(0)?;
            log.files.push(file);
        }
        Ok((log, recovery))
    }

    fn file_path(&self, base: i64) -> PathBuf {
        self.dir.join(format!("{base:020}.raw"))
    }

    fn index_path(&self, base: i64) -> PathBuf {
        self.dir.join(format!("{base:020}.idx"))
    }

    fn create_file(&self, base: i64) -> Result<LogFile> {
        let path = self.file_path(base);
        let mut file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        let mut header = Vec::with_capacity(FILE_HEADER_LEN as usize);
        header.extend_from_slice(FILE_MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&self.partition.to_le_bytes());
        file.write_all(&header).map_err(Error::io(&path))?;
        file.sync_all().map_err(Error::fsync(&path))?;
        sync_dir(&self.dir)?;
        Ok(LogFile {
            base_offset: base,
            path,
            file: Arc::new(file),
            len: FILE_HEADER_LEN,
            entries: Vec::new(),
            min_event_ms: i64::MAX,
            max_event_ms: i64::MIN,
        })
    }

    fn load_file(&self, base: i64, is_last: bool, recovery: &mut Recovery) -> Result<LogFile> {
        let path = self.file_path(base);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        let len = file.metadata().map_err(Error::io(&path))?.len();
        let mut lf = LogFile {
            base_offset: base,
            path: path.clone(),
            file: Arc::new(file),
            len,
            entries: Vec::new(),
            min_event_ms: i64::MAX,
            max_event_ms: i64::MIN,
        };
        let mut header = [0u8; FILE_HEADER_LEN as usize];
        if len < FILE_HEADER_LEN
            || lf.file.read_exact_at(&mut header, 0).is_err()
            || &header[..8] != FILE_MAGIC
        {
            if is_last {
                // A file whose header never became durable holds nothing that was synced.
                recovery.cut_bytes += len;
                recovery.cut_reason = Some(format!("{} has no complete header", path.display()));
                fs::remove_file(&path).map_err(Error::io(&path))?;
                return self.create_file(base);
            }
            return Err(Error::Corrupt {
                path,
                position: 0,
                reason: "not a tidemark raw log file".into(),
            });
        }
        if !is_last && let Some(entries) = self.read_sidecar(base, len) {
            for e in entries {
                lf.note(e);
            }
            return Ok(lf);
        }
        let scan = scan_entries(&lf.file, len, base);
        for e in scan.entries {
            lf.note(e);
        }
        if let Some(reason) = scan.failure {
            if !is_last {
                return Err(Error::Corrupt {
                    path,
                    position: scan.good_len,
                    reason,
                });
            }
            // A torn tail: the entry was never synced, so nothing acknowledged is in it.
            recovery.cut_bytes += len - scan.good_len;
            recovery.cut_reason = Some(format!(
                "{} at byte {}: {reason}",
                path.display(),
                scan.good_len
            ));
            lf.file.set_len(scan.good_len).map_err(Error::io(&path))?;
            lf.file.sync_all().map_err(Error::fsync(&path))?;
            lf.len = scan.good_len;
        }
        if !is_last {
            self.write_sidecar(&lf)?;
        }
        Ok(lf)
    }

    fn read_sidecar(&self, base: i64, file_len: u64) -> Option<Vec<IndexEntry>> {
        let bytes = fs::read(self.index_path(base)).ok()?;
        if bytes.len() < 28 || &bytes[..8] != INDEX_MAGIC {
            return None;
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return None;
        }
        let count = u32::from_le_bytes([body[12], body[13], body[14], body[15]]) as usize;
        let recorded_len = u64::from_le_bytes(body[16..24].try_into().ok()?);
        if recorded_len != file_len || body.len() != 24 + count * INDEX_ENTRY_LEN {
            return None;
        }
        Some(
            body[24..]
                .chunks_exact(INDEX_ENTRY_LEN)
                .map(IndexEntry::decode)
                .collect(),
        )
    }
}

impl PartitionLog {
    fn write_sidecar(&self, lf: &LogFile) -> Result<()> {
        let mut out = Vec::with_capacity(28 + lf.entries.len() * INDEX_ENTRY_LEN);
        out.extend_from_slice(INDEX_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(lf.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&lf.len.to_le_bytes());
        for e in &lf.entries {
            e.encode(&mut out);
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        let path = self.index_path(lf.base_offset);
        let tmp = path.with_extension("idx.tmp");
        fs::write(&tmp, &out).map_err(Error::io(&tmp))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(Error::fsync(&tmp))?;
        fs::rename(&tmp, &path).map_err(Error::io(&path))?;
        sync_dir(&self.dir)
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The offset the next appended record gets (Kafka's log end offset).
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// The first offset still stored.
    pub fn earliest_offset(&self) -> i64 {
        self.files
            .iter()
            .find_map(|f| f.entries.first().map(|e| e.base_offset))
            .unwrap_or(self.next_offset)
    }

    /// The log position (Raft index) of the last batch stored: replay skips entries up to it.
    pub fn last_log_position(&self) -> Option<u64> {
        self.last_log_position
    }

    /// Every file of this log with its length, oldest first: after [`Self::sync`], exactly what
    /// a snapshot carries (the active file's later appends are past the snapshot's position).
    pub fn file_lengths(&self) -> Vec<(PathBuf, u64)> {
        self.files.iter().map(|f| (f.path.clone(), f.len)).collect()
    }

    /// Reopens one of this log's files after it was replaced on disk by a verified copy of the
    /// same bytes (a scrubber's repair): reads and appends go to the new file from here on. The
    /// copy must be exactly as long as what this log holds, so no append is lost between.
    pub fn reopen_file(&mut self, path: &Path) -> Result<()> {
        let lf = self
            .files
            .iter_mut()
            .find(|f| f.path == path)
            .ok_or_else(|| Error::Corrupt {
                path: path.to_path_buf(),
                position: 0,
                reason: "not a file of this log".into(),
            })?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(path)
            .map_err(Error::io(path))?;
        let len = file.metadata().map_err(Error::io(path))?.len();
        if len != lf.len {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                position: len,
                reason: format!(
                    "the replacement holds {len} bytes where the log holds {}",
                    lf.len
                ),
            });
        }
        lf.file = Arc::new(file);
        Ok(())
    }

    /// Takes the oldest files out of this log while every event in them is older than
    /// `cutoff_ms` and every batch was applied before `below_position` (so no realtime index
    /// still needs it after a restart); the active file always stays. Returns their paths
    /// (data and index files) for the caller to delete once no checkpoint names them. Kafka's
    /// log start offset moves up to the first file kept.
    pub fn drop_files_before(&mut self, cutoff_ms: i64, below_position: u64) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        while self.files.len() > 1 && self.files[0].droppable(cutoff_ms, below_position) {
            let f = self.files.remove(0);
            removed.push(self.index_path(f.base_offset));
            removed.push(f.path);
        }
        removed
    }

    /// How many of the oldest files [`Self::drop_files_before`] would take.
    pub fn files_before(&self, cutoff_ms: i64, below_position: u64) -> usize {
        let sealed = &self.files[..self.files.len().saturating_sub(1)];
        sealed
            .iter()
            .take_while(|f| f.droppable(cutoff_ms, below_position))
            .count()
    }

    /// What [`Self::files_before`] counts, measured: (files, records, bytes).
    pub fn removable_before(&self, cutoff_ms: i64, below_position: u64) -> (u64, u64, u64) {
        let sealed = &self.files[..self.files.len().saturating_sub(1)];
        sealed
            .iter()
            .take_while(|f| f.droppable(cutoff_ms, below_position))
            .fold((0, 0, 0), |(n, r, b), f| {
                let records: i64 = f
                    .entries
                    .iter()
                    .map(|e| e.last_offset - e.base_offset + 1)
                    .sum();
                (n + 1, r + records.max(0) as u64, b + f.len)
            })
    }

    /// The event-time range of every file, oldest first: (base offset, min, max) in ms.
    pub fn file_event_ranges(&self) -> Vec<(i64, i64, i64)> {
        self.files
            .iter()
            .map(|f| (f.base_offset, f.min_event_ms, f.max_event_ms))
            .collect()
    }

    /// Appends one batch, assigning its offsets. `batch` must be a whole RecordBatch v2; its
    /// base offset is overwritten with the assigned one. Not durable until [`Self::sync`].
    pub fn append(&mut self, frame: &Frame, batch: &mut [u8]) -> Result<IndexEntry> {
        let header = record_batch::parse_header(batch)?;
        if header.record_count == 0 {
            return Err(Error::bad_batch("a batch must hold at least one record"));
        }
        if let Some(last) = self.last_log_position {
            assert!(
                frame.log_position > last,
                "raw log append at position {} after {last}: apply must skip replayed entries",
                frame.log_position
            );
        }
        let base_offset = self.next_offset;
        record_batch::set_base_offset(batch, base_offset);

        if self.active().len >= self.config.file_bytes_max && !self.active().entries.is_empty() {
            self.roll()?;
        }
        let mut frame_bytes = Vec::with_capacity(64);
        frame.encode(&mut frame_bytes);
        let mut entry = Vec::with_capacity(ENTRY_PREFIX_LEN + frame_bytes.len() + batch.len());
        entry.extend_from_slice(&(frame_bytes.len() as u32).to_le_bytes());
        entry.extend_from_slice(&crc32c::crc32c(&frame_bytes).to_le_bytes());
        entry.extend_from_slice(&frame_bytes);
        entry.extend_from_slice(batch);

        let active = self.active_mut();
        let file_pos = active.len;
        (&*active.file)
            .write_all(&entry)
            .map_err(Error::io(&active.path))?;
        active.len += entry.len() as u64;
        let index = IndexEntry {
            base_offset,
            last_offset: base_offset + i64::from(header.last_offset_delta),
            file_pos,
            entry_len: entry.len() as u32,
            log_position: frame.log_position,
            writer_time_ms: frame.writer_time_ms,
            min_event_ms: frame.min_event_ms,
            max_event_ms: frame.max_event_ms,
        };
        active.note(index);
        self.next_offset = index.last_offset + 1;
        self.last_log_position = Some(frame.log_position);
        self.unsynced = true;
        let end = self.active().len;
        if end.saturating_sub(self.writeback_from) >= WRITEBACK_BYTES {
            start_writeback(
                &self.active().file,
                self.writeback_from,
                end - self.writeback_from,
            );
            self.writeback_from = end;
        }
        Ok(index)
    }

    /// Makes every append so far durable. An fsync failure is fatal for the node.
    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced {
            let active = self.active();
            active
                .file
                .sync_data()
                .map_err(Error::fsync(&active.path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// For a checkpoint written off the engine lock: a second handle on the active file when
    /// it was appended to since its last fsync, which the caller fsyncs (before the checkpoint
    /// that counts on it is stored). The log counts itself synced from here on; an fsync
    /// failure on that handle stops the node, so the count is never wrong for long.
    pub fn take_unsynced(&mut self) -> Result<Option<(PathBuf, File)>> {
        if !self.unsynced {
            return Ok(None);
        }
        let active = self.active();
        let handle = active.file.try_clone().map_err(Error::io(&active.path))?;
        let path = active.path.clone();
        self.unsynced = false;
        Ok(Some((path, handle)))
    }

    fn roll(&mut self) -> Result<()> {
        let active = self.active();
        active.file.sync_all().map_err(Error::fsync(&active.path))?;
        self.write_sidecar(active)?;
        let file = self.create_file(self.next_offset)?;
        self.files.push(file);
        self.writeback_from = 0;
        Ok(())
    }

    fn active(&self) -> &LogFile {
        // `files` always holds at least the active file (see `open`).
        &self.files[self.files.len() - 1]
    }

    fn active_mut(&mut self) -> &mut LogFile {
        let n = self.files.len();
        &mut self.files[n - 1]
    }

    /// Reads whole batches starting with the one holding `offset`, until `max_bytes` of batch
    /// data (at least one batch is returned if any exists, as Kafka Fetch does).
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<StoredBatch>> {
        if offset < self.earliest_offset() || offset > self.next_offset {
            return Err(Error::OffsetOutOfRange {
                partition: self.partition,
                offset,
                earliest: self.earliest_offset(),
                next: self.next_offset,
            });
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let start_file = self
            .files
            .partition_point(|f| f.base_offset <= offset)
            .saturating_sub(1);
        for lf in &self.files[start_file..] {
            let first = lf.entries.partition_point(|e| e.last_offset < offset);
            for e in &lf.entries[first..] {
                if !out.is_empty() && bytes + e.entry_len as usize > max_bytes {
                    return Ok(out);
                }
                let b = read_entry(lf, e)?;
                bytes += b.batch.len();
                out.push(b);
            }
        }
        Ok(out)
    }

    /// Index entries of batches that may hold events with time in `[start_ms, end_ms)`, in
    /// offset order. Only files whose event-time range overlaps are looked at.
    pub fn entries_overlapping(&self, start_ms: i64, end_ms: i64) -> Vec<IndexEntry> {
        self.files
            .iter()
            .filter(|f| f.overlaps(start_ms, end_ms))
            .flat_map(|f| {
                f.entries
                    .iter()
                    .filter(|e| e.overlaps(start_ms, end_ms))
                    .copied()
            })
            .collect()
    }

    /// The stored batch that came from log position (Raft index) `position`, if any. Positions
    /// increase with offsets, so this is a binary search.
    pub fn entry_at_position(&self, position: u64) -> Option<IndexEntry> {
        let file = self.files.partition_point(|f| {
            f.entries
                .first()
                .is_some_and(|e| e.log_position <= position)
        });
        let f = &self.files[file.checked_sub(1)?];
        let i = f.entries.partition_point(|e| e.log_position < position);
        f.entries
            .get(i)
            .filter(|e| e.log_position == position)
            .copied()
    }

    /// Index entries of every batch from log position `position` on, in offset order.
    pub fn entries_from_position(&self, position: u64) -> Vec<IndexEntry> {
        self.files
            .iter()
            .flat_map(|f| {
                f.entries
                    .iter()
                    .filter(|e| e.log_position >= position)
                    .copied()
            })
            .collect()
    }

    /// Kafka ListOffsets by time: the first record whose timestamp is at or after `ts_ms`, as
    /// (offset, timestamp). Scans batch headers from the start: the index does not keep
    /// record timestamps, and lookups by time are rare (a consumer seeking once).
    pub fn offset_for_timestamp(&self, ts_ms: i64) -> Result<Option<(i64, i64)>> {
        for lf in &self.files {
            for e in &lf.entries {
                let stored = read_entry(lf, e)?;
                let header = record_batch::parse_header(&stored.batch)?;
                if header.max_timestamp < ts_ms {
                    continue;
                }
                let (_, records) = record_batch::decode_records(&stored.batch)?;
                if let Some((offset, r)) =
                    records.into_iter().find(|(_, r)| r.timestamp_ms >= ts_ms)
                {
                    return Ok(Some((offset, r.timestamp_ms)));
                }
            }
        }
        Ok(None)
    }

    /// Kafka ListOffsets MAX_TIMESTAMP: the record with the largest timestamp (the first of
    /// equals), as (offset, timestamp).
    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>> {
        let mut best: Option<(i64, IndexEntry, usize)> = None;
        for (fi, lf) in self.files.iter().enumerate() {
            for e in &lf.entries {
                let stored = read_entry(lf, e)?;
                let header = record_batch::parse_header(&stored.batch)?;
                if best
                    .as_ref()
                    .is_none_or(|(ts, _, _)| header.max_timestamp > *ts)
                {
                    best = Some((header.max_timestamp, *e, fi));
                }
            }
        }
        let Some((ts, e, fi)) = best else {
            return Ok(None);
        };
        let stored = read_entry(&self.files[fi], &e)?;
        let (_, records) = record_batch::decode_records(&stored.batch)?;
        Ok(records
            .into_iter()
            .find(|(_, r)| r.timestamp_ms == ts)
            .map(|(o, r)| (o, r.timestamp_ms)))
    }

    /// Reads the batch an index entry points at.
    /// The stored batches applied at or before `through` whose events may fall in
    /// [`start_ms`, `end_ms`), with the file each is in (for readers off the engine lock: the
    /// bytes of an applied entry never change).
    pub fn sources_overlapping(
        &self,
        start_ms: i64,
        end_ms: i64,
        through: u64,
    ) -> Vec<(PathBuf, Arc<File>, IndexEntry)> {
        self.files
            .iter()
            .filter(|f| {
                f.min_event_ms <= f.max_event_ms
                    && f.min_event_ms < end_ms
                    && f.max_event_ms >= start_ms
            })
            .flat_map(|f| {
                f.entries
                    .iter()
                    .filter(|e| e.log_position <= through && e.overlaps(start_ms, end_ms))
                    .map(|e| (f.path.clone(), f.file.clone(), *e))
            })
            .collect()
    }

    /// Seals the active file if it holds a batch applied before `position`, so every such
    /// batch is in a file no append touches again (what a deletion rewrites). A replay of
    /// the same command finds the batches after `position` in the active file and does not
    /// seal again.
    pub fn seal_before(&mut self, position: u64) -> Result<()> {
        if self
            .active()
            .entries
            .last()
            .is_some_and(|e| e.log_position < position)
        {
            self.roll()?;
        }
        Ok(())
    }

    /// The sealed files holding batches applied before `position`, with a handle each and
    /// the entries of those batches.
    pub fn sealed_before(&self, position: u64) -> Vec<SealedFile> {
        let sealed = &self.files[..self.files.len().saturating_sub(1)];
        sealed
            .iter()
            .filter(|f| f.entries.first().is_some_and(|e| e.log_position < position))
            .map(|f| SealedFile {
                partition: self.partition,
                base_offset: f.base_offset,
                path: f.path.clone(),
                file: f.file.clone(),
                entries: f.entries.clone(),
            })
            .collect()
    }

    /// Puts a deletion's rewrite of the sealed file starting at `base_offset` in its place:
    /// renamed over the old file (readers holding the old handle keep its bytes), its index
    /// rewritten. Returns false, leaving nothing behind, if the file is no longer in the log
    /// (raw retention took it meanwhile). The rewrite must hold the same batches (offsets
    /// and log positions), each possibly with fewer records.
    pub fn install_rewrite(
        &mut self,
        base_offset: i64,
        rewritten: &Path,
        entries: Vec<IndexEntry>,
    ) -> Result<bool> {
        let n = self.files.len();
        let Some(i) = self.files[..n.saturating_sub(1)]
            .iter()
            .position(|f| f.base_offset == base_offset)
        else {
            fs::remove_file(rewritten).map_err(Error::io(rewritten))?;
            return Ok(false);
        };
        let same = |a: &IndexEntry, b: &IndexEntry| {
            (a.base_offset, a.last_offset, a.log_position)
                == (b.base_offset, b.last_offset, b.log_position)
        };
        let old = &self.files[i];
        if old.entries.len() != entries.len()
            || !old.entries.iter().zip(&entries).all(|(a, b)| same(a, b))
        {
            return Err(Error::Internal(format!(
                "the rewrite of {} does not hold the same batches as the file",
                old.path.display()
            )));
        }
        let path = old.path.clone();
        fs::rename(rewritten, &path).map_err(Error::io(&path))?;
        sync_dir(&self.dir)?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(Error::io(&path))?;
        let len = file.metadata().map_err(Error::io(&path))?.len();
        let mut lf = LogFile {
            base_offset,
            path,
            file: Arc::new(file),
            len,
            entries: Vec::new(),
            min_event_ms: i64::MAX,
            max_event_ms: i64::MIN,
        };
        for e in entries {
            lf.note(e);
        }
        // A crash before this leaves the old index, whose recorded length no longer
        // matches: the file is scanned on open and the index written again.
        self.write_sidecar(&lf)?;
        self.files[i] = lf;
        Ok(true)
    }

    pub fn read_at(&self, entry: &IndexEntry) -> Result<StoredBatch> {
        let i = self
            .files
            .partition_point(|f| f.base_offset <= entry.base_offset)
            .saturating_sub(1);
        read_entry(&self.files[i], entry)
    }
}

/// A sealed raw log file as a deletion reads it.
#[derive(Debug, Clone)]
pub struct SealedFile {
    pub partition: u32,
    pub base_offset: i64,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub entries: Vec<IndexEntry>,
}

impl SealedFile {
    /// Where this file's rewrite is written before it is installed.
    pub fn rewrite_path(&self, job: u64) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path
            .with_file_name(format!("{name}{REWRITE_SUFFIX}{job}"))
    }

    /// Writes this file anew at `dest` (fsynced): every entry as stored, except those for
    /// which `edit` returns a replacement frame and batch (the same offsets and position,
    /// fewer records). Returns the new file's entries.
    pub fn rewrite(
        &self,
        dest: &Path,
        mut edit: impl FnMut(&IndexEntry, StoredBatch) -> Result<Option<(Frame, Vec<u8>)>>,
    ) -> Result<Vec<IndexEntry>> {
        let mut out = std::io::BufWriter::new(File::create(dest).map_err(Error::io(dest))?);
        let mut header = Vec::with_capacity(FILE_HEADER_LEN as usize);
        header.extend_from_slice(FILE_MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&self.partition.to_le_bytes());
        out.write_all(&header).map_err(Error::io(dest))?;
        let mut pos = FILE_HEADER_LEN;
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let stored = read_stored(&self.file, &self.path, e)?;
            let (frame, batch) = match edit(e, stored.clone())? {
                Some(replacement) => replacement,
                None => (stored.frame, stored.batch),
            };
            let mut frame_bytes = Vec::with_capacity(64);
            frame.encode(&mut frame_bytes);
            let entry_len = ENTRY_PREFIX_LEN + frame_bytes.len() + batch.len();
            out.write_all(&(frame_bytes.len() as u32).to_le_bytes())
                .map_err(Error::io(dest))?;
            out.write_all(&crc32c::crc32c(&frame_bytes).to_le_bytes())
                .map_err(Error::io(dest))?;
            out.write_all(&frame_bytes).map_err(Error::io(dest))?;
            out.write_all(&batch).map_err(Error::io(dest))?;
            entries.push(IndexEntry {
                file_pos: pos,
                entry_len: entry_len as u32,
                ..*e
            });
            pos += entry_len as u64;
        }
        let file = out
            .into_inner()
            .map_err(|e| Error::io(dest)(e.into_error()))?;
        file.sync_all().map_err(Error::fsync(dest))?;
        Ok(entries)
    }
}

fn read_entry(lf: &LogFile, e: &IndexEntry) -> Result<StoredBatch> {
    read_stored(&lf.file, &lf.path, e)
}

/// Reads and checks the entry `e` of `file` into `buf` (reused across calls: a build reads
/// thousands of megabyte-sized batches, and a fresh buffer for each costs the kernel a page
/// zeroing and the process a copy); returns its frame and where its batch starts in `buf`.
pub fn read_stored_into(
    file: &File,
    path: &Path,
    e: &IndexEntry,
    buf: &mut Vec<u8>,
) -> Result<(Frame, usize)> {
    buf.clear();
    buf.resize(e.entry_len as usize, 0);
    file.read_exact_at(buf, e.file_pos)
        .map_err(Error::io(path))?;
    parse_entry(buf).map_err(|reason| Error::Corrupt {
        path: path.to_path_buf(),
        position: e.file_pos,
        reason,
    })
}

/// Reads and checks the entry `e` of the raw log file `file` (at `path`).
pub fn read_stored(file: &File, path: &Path, e: &IndexEntry) -> Result<StoredBatch> {
    let mut buf = vec![0u8; e.entry_len as usize];
    file.read_exact_at(&mut buf, e.file_pos)
        .map_err(Error::io(path))?;
    let corrupt = |reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        position: e.file_pos,
        reason,
    };
    let parsed = parse_entry(&buf).map_err(corrupt)?;
    Ok(StoredBatch {
        frame: parsed.0,
        batch: buf[parsed.1..].to_vec(),
    })
}

/// Checks one whole entry; returns its frame and where its batch starts.
fn parse_entry(buf: &[u8]) -> std::result::Result<(Frame, usize), String> {
    if buf.len() < ENTRY_PREFIX_LEN {
        return Err("entry is truncated".into());
    }
    let frame_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let frame_end = ENTRY_PREFIX_LEN + frame_len;
    let frame_bytes = buf
        .get(ENTRY_PREFIX_LEN..frame_end)
        .ok_or("frame is truncated")?;
    if crc32c::crc32c(frame_bytes) != crc {
        return Err("frame checksum mismatch".into());
    }
    let frame = Frame::decode(frame_bytes).map_err(|e| e.to_string())?;
    record_batch::parse_header(&buf[frame_end..]).map_err(|e| e.to_string())?;
    Ok((frame, frame_end))
}

struct Scan {
    entries: Vec<IndexEntry>,
    good_len: u64,
    failure: Option<String>,
}

/// Walks a file's entries from the header on, stopping at the first one that is incomplete,
/// fails a checksum, or breaks offset continuity.
fn scan_entries(file: &File, len: u64, base: i64) -> Scan {
    let mut scan = Scan {
        entries: Vec::new(),
        good_len: FILE_HEADER_LEN,
        failure: None,
    };
    let mut expected_offset = base;
    let mut pos = FILE_HEADER_LEN;
    while pos < len {
        let result = (|| -> std::result::Result<IndexEntry, String> {
            let mut prefix = [0u8; ENTRY_PREFIX_LEN];
            file.read_exact_at(&mut prefix, pos)
                .map_err(|_| "entry prefix is truncated".to_string())?;
            let frame_len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as u64;
            let batch_at = pos + ENTRY_PREFIX_LEN as u64 + frame_len;
            let mut batch_prefix = [0u8; record_batch::LOG_OVERHEAD];
            if batch_at + record_batch::LOG_OVERHEAD as u64 > len {
                return Err("entry is truncated".into());
            }
            file.read_exact_at(&mut batch_prefix, batch_at)
                .map_err(|e| e.to_string())?;
            let batch_len =
                record_batch::peek_total_len(&batch_prefix).map_err(|e| e.to_string())? as u64;
            let entry_len = batch_at + batch_len - pos;
            if pos + entry_len > len || entry_len > u32::MAX as u64 {
                return Err("entry is truncated".into());
            }
            let mut buf = vec![0u8; entry_len as usize];
            file.read_exact_at(&mut buf, pos)
                .map_err(|e| e.to_string())?;
            let (frame, batch_start) = parse_entry(&buf)?;
            let header =
                record_batch::parse_header(&buf[batch_start..]).map_err(|e| e.to_string())?;
            if header.base_offset != expected_offset {
                return Err(format!(
                    "batch base offset {} where {expected_offset} was expected",
                    header.base_offset
                ));
            }
            Ok(IndexEntry {
                base_offset: header.base_offset,
                last_offset: header.last_offset(),
                file_pos: pos,
                entry_len: entry_len as u32,
                log_position: frame.log_position,
                writer_time_ms: frame.writer_time_ms,
                min_event_ms: frame.min_event_ms,
                max_event_ms: frame.max_event_ms,
            })
        })();
        match result {
            Ok(e) => {
                pos += u64::from(e.entry_len);
                expected_offset = e.last_offset + 1;
                scan.good_len = pos;
                scan.entries.push(e);
            }
            Err(reason) => {
                scan.failure = Some(reason);
                break;
            }
        }
    }
    scan
}

/// Checks the first `len` bytes of a raw log file as a scrubber does: the header, then every
/// entry's frame checksum, batch CRC and offset continuity. `len` is what the node holds as
/// written (a file's length in [`PartitionLog::file_lengths`]); an active file's later
/// appends are not looked at. Returns the number of entries checked.
pub fn verify_file(path: &Path, len: u64) -> Result<usize> {
    let base = path
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| Error::Corrupt {
            path: path.to_path_buf(),
            position: 0,
            reason: "not a raw log file name".into(),
        })?;
    let file = File::open(path).map_err(Error::io(path))?;
    let on_disk = file.metadata().map_err(Error::io(path))?.len();
    let corrupt = |position: u64, reason: String| Error::Corrupt {
        path: path.to_path_buf(),
        position,
        reason,
    };
    if on_disk < len {
        return Err(corrupt(
            on_disk,
            format!("the file holds {on_disk} bytes where {len} were written"),
        ));
    }
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    if len < FILE_HEADER_LEN
        || file.read_exact_at(&mut header, 0).is_err()
        || &header[..8] != FILE_MAGIC
    {
        return Err(corrupt(0, "the raw log file header is damaged".into()));
    }
    let scan = scan_entries(&file, len, base);
    match scan.failure {
        Some(reason) => Err(corrupt(scan.good_len, reason)),
        None => Ok(scan.entries.len()),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::fsync(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::record_batch::{Record, encode};

    fn batch(n: usize, tag: &str) -> Vec<u8> {
        let records: Vec<Record> = (0..n)
            .map(|i| Record {
                timestamp_ms: 1000 + i as i64,
                key: None,
                value: Some(format!("{tag}-{i}").into_bytes()),
                headers: vec![],
            })
            .collect();
        encode(&records)
    }

    fn frame(pos: u64, lo: i64, hi: i64) -> Frame {
        Frame {
            log_position: pos,
            writer_time_ms: 5,
            catalog_version: 1,
            min_event_ms: lo,
            max_event_ms: hi,
            publisher: None,
            verdicts: vec![],
        }
    }

    #[test]
    fn offsets_are_dense_and_survive_reopen_and_roll() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = PartitionLogConfig {
            file_bytes_max: 300,
        };
        {
            let (mut log, rec) = PartitionLog::open(dir.path(), 0, config.clone()).expect("open");
            assert_eq!(rec.entries, 0);
            for i in 0..10u64 {
                let e = log
                    .append(
                        &frame(i + 1, (i * 100) as i64, (i * 100 + 50) as i64),
                        &mut batch(3, "b"),
                    )
                    .expect("append");
                assert_eq!(e.base_offset, (i * 3) as i64);
            }
            log.sync().expect("sync");
            assert!(log.files.len() > 2, "small files roll");
        }
        let (log, rec) = PartitionLog::open(dir.path(), 0, config).expect("reopen");
        assert_eq!(rec.entries, 10);
        assert_eq!(rec.cut_bytes, 0);
        assert_eq!(log.next_offset(), 30);
        assert_eq!(log.last_log_position(), Some(10));
        let all = log.read(0, usize::MAX).expect("read");
        assert_eq!(all.len(), 10);
        let from_mid = log.read(16, 1).expect("read");
        assert_eq!(
            from_mid.len(),
            1,
            "at least one batch even when over max_bytes"
        );
        let (h, recs) = record_batch::decode_records(&from_mid[0].batch).expect("decode");
        assert_eq!(h.base_offset, 15);
        assert_eq!(recs[1].0, 16);
        assert_eq!(from_mid[0].frame.log_position, 6);
    }

    #[test]
    fn event_time_reads_touch_only_overlapping_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) =
            PartitionLog::open(dir.path(), 0, PartitionLogConfig { file_bytes_max: 1 })
                .expect("open");
        log.append(&frame(1, 0, 99), &mut batch(1, "a"))
            .expect("append");
        log.append(&frame(2, 100, 199), &mut batch(1, "b"))
            .expect("append");
        log.append(&frame(3, 1, 0), &mut batch(1, "c"))
            .expect("append"); // no event times
        log.append(&frame(4, 50, 150), &mut batch(1, "d"))
            .expect("append"); // late
        let hits: Vec<u64> = log
            .entries_overlapping(100, 200)
            .iter()
            .map(|e| e.log_position)
            .collect();
        assert_eq!(hits, vec![2, 4]);
        // One entry per file here, so each file's range is its entry's.
        let ranges = log.file_event_ranges();
        assert_eq!(
            ranges,
            vec![
                (0, 0, 99),
                (1, 100, 199),
                (2, i64::MAX, i64::MIN),
                (3, 50, 150)
            ]
        );
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path;
        {
            let (mut log, _) =
                PartitionLog::open(dir.path(), 2, PartitionLogConfig::default()).expect("open");
            log.append(&frame(1, 0, 1), &mut batch(2, "a"))
                .expect("append");
            log.append(&frame(2, 0, 1), &mut batch(2, "b"))
                .expect("append");
            log.sync().expect("sync");
            path = log.active().path.clone();
        }
        let len = fs::metadata(&path).expect("meta").len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(len - 3))
            .expect("truncate");
        let (mut log, rec) =
            PartitionLog::open(dir.path(), 2, PartitionLogConfig::default()).expect("reopen");
        assert_eq!(rec.entries, 1);
        assert!(rec.cut_bytes > 0 && rec.cut_reason.is_some());
        assert_eq!(log.next_offset(), 2);
        assert_eq!(log.last_log_position(), Some(1));
        let e = log
            .append(&frame(2, 0, 1), &mut batch(1, "c"))
            .expect("append after cut");
        assert_eq!(e.base_offset, 2);
    }

    #[test]
    fn corruption_in_a_sealed_file_is_an_error_not_a_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = PartitionLogConfig {
            file_bytes_max: 100,
        };
        let first;
        {
            let (mut log, _) = PartitionLog::open(dir.path(), 0, config.clone()).expect("open");
            for i in 0..4 {
                log.append(&frame(i + 1, 0, 1), &mut batch(1, "x"))
                    .expect("append");
            }
            log.sync().expect("sync");
            first = log.files[0].path.clone();
        }
        fs::remove_file(first.with_extension("idx")).expect("drop sidecar so the file is scanned");
        let mut bytes = fs::read(&first).expect("read");
        let n = bytes.len();
        bytes[n - 2] ^= 0xff;
        fs::write(&first, bytes).expect("write");
        let err = PartitionLog::open(dir.path(), 0, config)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("corrupt data"), "{err}");
    }
}
