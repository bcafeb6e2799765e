//! The node-wide command log: every write (an event batch, a catalog command, a persist
//! decision) becomes an entry with a position, fsync'd by group commit before anyone is told
//! it is durable. It stands in for the Raft log until replication lands, with positions
//! becoming Raft indexes; the apply path reading it is the same code.
//!
//! ```text
//!  append(entry, ticket) ─► pending queue (bounded) ─► flusher thread: write all, fdatasync
//!                                                          └─► sink: Durable::Entries (in position order)
//! ```
//!
//! Invariants:
//! - Positions are dense and increasing, assigned at `append`, written in that order.
//! - A ticket reaches the sink only after its entry is fsync'd; after an fsync failure the log
//!   refuses all further work (the kernel may have dropped dirty pages; retrying would lie).
//! - Writer time never goes backwards: each entry gets `max(given, previous)`, so time
//!   windows inside apply (idempotency, interval close) are monotonic.
//! - On open, a torn tail of the newest file is cut; entries are returned for replay.
//! - The log is short-lived: [`CommandLog::trim_below`] drops whole files below a position
//!   that applying has made durable elsewhere.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};

const FILE_MAGIC: &[u8; 8] = b"TMCMDLOG";
const FORMAT_VERSION: u32 = 1;
const FILE_HEADER_LEN: usize = 16;
const ENTRY_HEADER_LEN: usize = 8;
const BODY_FIXED_LEN: usize = 17;
/// Entries larger than this are refused: they would be a bug or an attack, not a batch.
pub const ENTRY_BYTES_MAX: usize = 256 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct CommandLogConfig {
    pub dir: PathBuf,
    /// How long the flusher waits to gather more entries into one fsync.
    pub group_commit_window_ms: u64,
    /// Entries waiting for fsync before `append` answers `Overloaded`.
    pub pending_max: usize,
    /// A new file is started once the current one passes this size.
    pub file_bytes_max: u64,
}

impl CommandLogConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CommandLogConfig {
            dir: dir.into(),
            group_commit_window_ms: 2,
            pending_max: 65_536,
            file_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// One log entry. `kind` tells the applier how to read `payload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub position: u64,
    pub writer_time_ms: i64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// What the flusher hands to the sink.
#[derive(Debug)]
pub enum Durable<T> {
    /// Entries now fsync'd, in position order, with the tickets given at append.
    Entries(Vec<(Entry, T)>),
    /// The fsync failed; these tickets' entries are not durable and never will be.
    Failed { reason: String, tickets: Vec<T> },
}

struct State<T> {
    pending: Vec<(Entry, T)>,
    next_position: u64,
    last_writer_time_ms: i64,
    closed: bool,
    failed: Option<String>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A poisoned lock means a panic in the flusher, which already stops the node.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct CommandLog<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    flusher: Option<JoinHandle<()>>,
    dir: PathBuf,
    config: CommandLogConfig,
}

impl<T: Send + 'static> std::fmt::Debug for CommandLog<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandLog").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// What opening the log found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Every entry still in the log, in position order.
    pub entries: Vec<Entry>,
    pub cut_bytes: u64,
    pub cut_reason: Option<String>,
}

impl<T: Send + 'static> CommandLog<T> {
    /// Opens (or creates) the log, returning the entries to replay. Durable entries are sent
    /// to `sink` from then on.
    pub fn open(config: CommandLogConfig, sink: SyncSender<Durable<T>>) -> Result<(CommandLog<T>, Replay)> {
        let dir = config.dir.clone();
        fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let mut files = list_files(&dir)?;
        let mut replay = Replay::default();
        let count = files.len();
        for (i, (_, path)) in files.iter().enumerate() {
            let scan = scan_file(path)?;
            if let Some(reason) = scan.failure {
                if i + 1 != count {
                    return Err(Error::Corrupt { path: path.clone(), position: scan.good_len, reason });
                }
                let len = fs::metadata(path).map_err(Error::io(path))?.len();
                replay.cut_bytes = len - scan.good_len;
                replay.cut_reason = Some(format!("{} at byte {}: {reason}", path.display(), scan.good_len));
                let f = OpenOptions::new().write(true).open(path).map_err(Error::io(path))?;
                f.set_len(scan.good_len).map_err(Error::io(path))?;
                f.sync_all().map_err(Error::fsync(path))?;
            }
            for e in scan.entries {
                if let Some(prev) = replay.entries.last()
                    && e.position != prev.position + 1
                {
                    return Err(Error::Corrupt {
                        path: path.clone(),
                        position: 0,
                        reason: format!("position {} follows {}; the log has a gap", e.position, prev.position),
                    });
                }
                replay.entries.push(e);
            }
        }
        let next_position = replay.entries.last().map(|e| e.position + 1).unwrap_or_else(|| {
            // An empty log continues after the newest file's first position (files that were
            // trimmed empty still name where the log stood).
            files.last().map(|(first, _)| *first).unwrap_or(1)
        });
        let last_writer_time_ms = replay.entries.last().map(|e| e.writer_time_ms).unwrap_or(i64::MIN);
        let active = match files.pop() {
            Some((_, path)) => path,
            None => create_file(&dir, next_position)?,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Vec::new(),
                next_position,
                last_writer_time_ms,
                closed: false,
                failed: None,
            }),
            wake: Condvar::new(),
        });
        let flusher = {
            let shared = Arc::clone(&shared);
            let config = config.clone();
            std::thread::Builder::new()
                .name("tidemark-cmdlog".into())
                .spawn(move || flush_loop(shared, config, active, sink))
                .map_err(Error::io(&dir))?
        };
        Ok((CommandLog { shared, flusher: Some(flusher), dir, config }, replay))
    }

    /// Queues an entry and returns its position. The ticket reaches the sink once the entry
    /// is durable (or with `Durable::Failed`).
    pub fn append(&self, writer_time_ms: i64, kind: u8, payload: Vec<u8>, ticket: T) -> Result<u64> {
        if payload.len() > ENTRY_BYTES_MAX {
            return Err(Error::Internal(format!("command of {} bytes exceeds the entry bound", payload.len())));
        }
        let mut st = self.shared.lock();
        if let Some(reason) = &st.failed {
            return Err(Error::LogFailed { reason: reason.clone() });
        }
        if st.closed {
            return Err(Error::Closed { what: "command log" });
        }
        if st.pending.len() >= self.config.pending_max {
            return Err(Error::Overloaded { pending: st.pending.len(), bound: self.config.pending_max });
        }
        let position = st.next_position;
        st.next_position += 1;
        let writer_time_ms = writer_time_ms.max(st.last_writer_time_ms);
        st.last_writer_time_ms = writer_time_ms;
        st.pending.push((Entry { position, writer_time_ms, kind, payload }, ticket));
        drop(st);
        self.shared.wake.notify_one();
        Ok(position)
    }

    /// The position the next entry will get.
    pub fn next_position(&self) -> u64 {
        self.shared.lock().next_position
    }

    /// Deletes whole files whose entries are all below `position`. The newest file is kept.
    pub fn trim_below(&self, position: u64) -> Result<usize> {
        let files = list_files(&self.dir)?;
        let mut removed = 0;
        for pair in files.windows(2) {
            // A file's entries end where the next file starts.
            let (_, path) = &pair[0];
            let (next_first, _) = pair[1];
            if next_first <= position {
                fs::remove_file(path).map_err(Error::io(path))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Flushes what is queued and stops the flusher.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
    }
}

impl<T: Send + 'static> Drop for CommandLog<T> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn flush_loop<T: Send>(
    shared: Arc<Shared<T>>,
    config: CommandLogConfig,
    active: PathBuf,
    sink: SyncSender<Durable<T>>,
) {
    let mut writer = match ActiveFile::open(active) {
        Ok(w) => w,
        Err(e) => {
            fail(&shared, &sink, e.to_string());
            return;
        }
    };
    let window = Duration::from_millis(config.group_commit_window_ms);
    let mut buf = Vec::with_capacity(1 << 20);
    loop {
        let batch = {
            let mut st = shared.lock();
            while st.pending.is_empty() && !st.closed {
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.pending.is_empty() && st.closed {
                return;
            }
            if !window.is_zero() && !st.closed {
                // Gather more writers into this fsync; the first one waits at most `window`.
                st = shared.wake.wait_timeout(st, window).unwrap_or_else(|p| p.into_inner()).0;
            }
            std::mem::take(&mut st.pending)
        };
        buf.clear();
        for (e, _) in &batch {
            encode_entry(e, &mut buf);
        }
        let first = batch.first().map(|(e, _)| e.position).unwrap_or(0);
        let result = writer.write_and_sync(&buf, first, &config);
        match result {
            Ok(()) => {
                if sink.send(Durable::Entries(batch)).is_err() {
                    return; // the node is shutting down
                }
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(%reason, "command log fsync failed; refusing further writes");
                let mut tickets: Vec<T> = batch.into_iter().map(|(_, t)| t).collect();
                let mut st = shared.lock();
                st.failed = Some(reason.clone());
                tickets.extend(std::mem::take(&mut st.pending).into_iter().map(|(_, t)| t));
                drop(st);
                let _ = sink.send(Durable::Failed { reason, tickets });
                return;
            }
        }
    }
}

fn fail<T>(shared: &Shared<T>, sink: &SyncSender<Durable<T>>, reason: String) {
    let mut st = shared.lock();
    st.failed = Some(reason.clone());
    let tickets = std::mem::take(&mut st.pending).into_iter().map(|(_, t)| t).collect();
    drop(st);
    let _ = sink.send(Durable::Failed { reason, tickets });
}

struct ActiveFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl ActiveFile {
    fn open(path: PathBuf) -> Result<ActiveFile> {
        let file = OpenOptions::new().append(true).open(&path).map_err(Error::io(&path))?;
        let len = file.metadata().map_err(Error::io(&path))?.len();
        Ok(ActiveFile { path, file, len })
    }

    fn write_and_sync(&mut self, bytes: &[u8], first_position: u64, config: &CommandLogConfig) -> Result<()> {
        if self.len >= config.file_bytes_max {
            let dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
            let path = create_file(&dir, first_position)?;
            *self = ActiveFile::open(path)?;
        }
        self.file.write_all(bytes).map_err(Error::io(&self.path))?;
        // Fault point for tests: an fsync that fails as a dying disk's would.
        fail::fail_point!("cmdlog-fsync", |_| Err(Error::Fsync {
            path: self.path.clone(),
            source: std::io::Error::other("injected fsync failure"),
        }));
        self.file.sync_data().map_err(Error::fsync(&self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    let body_len = BODY_FIXED_LEN + e.payload.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&e.position.to_le_bytes());
    out.extend_from_slice(&e.writer_time_ms.to_le_bytes());
    out.push(e.kind);
    out.extend_from_slice(&e.payload);
    let crc = crc32c::crc32c(&out[start + ENTRY_HEADER_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn file_name(first_position: u64) -> String {
    format!("{first_position:020}.cmdlog")
}

fn create_file(dir: &Path, first_position: u64) -> Result<PathBuf> {
    let path = dir.join(file_name(first_position));
    let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(&path).map_err(Error::io(&path))?;
    let mut header = Vec::with_capacity(FILE_HEADER_LEN);
    header.extend_from_slice(FILE_MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&[0u8; 4]);
    f.write_all(&header).map_err(Error::io(&path))?;
    f.sync_all().map_err(Error::fsync(&path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::fsync(dir))?;
    Ok(path)
}

fn list_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    for item in fs::read_dir(dir).map_err(Error::io(dir))? {
        let item = item.map_err(Error::io(dir))?;
        let name = item.file_name();
        if let Some(first) = name.to_string_lossy().strip_suffix(".cmdlog").and_then(|s| s.parse::<u64>().ok()) {
            files.push((first, item.path()));
        }
    }
    files.sort_unstable();
    Ok(files)
}

struct Scan {
    entries: Vec<Entry>,
    good_len: u64,
    failure: Option<String>,
}

fn scan_file(path: &Path) -> Result<Scan> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(Error::io(path))?;
    let mut scan = Scan { entries: Vec::new(), good_len: 0, failure: None };
    if bytes.len() < FILE_HEADER_LEN || &bytes[..8] != FILE_MAGIC {
        scan.failure = Some("file header is incomplete or not a command log".into());
        return Ok(scan);
    }
    let mut pos = FILE_HEADER_LEN;
    scan.good_len = pos as u64;
    while pos < bytes.len() {
        let Some(head) = bytes.get(pos..pos + ENTRY_HEADER_LEN) else {
            scan.failure = Some("entry header is truncated".into());
            break;
        };
        let body_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(body) = bytes.get(pos + ENTRY_HEADER_LEN..pos + ENTRY_HEADER_LEN + body_len) else {
            scan.failure = Some("entry body is truncated".into());
            break;
        };
        if body_len < BODY_FIXED_LEN || crc32c::crc32c(body) != crc {
            scan.failure = Some("entry checksum mismatch".into());
            break;
        }
        let mut p = [0u8; 8];
        p.copy_from_slice(&body[0..8]);
        let position = u64::from_le_bytes(p);
        p.copy_from_slice(&body[8..16]);
        let writer_time_ms = i64::from_le_bytes(p);
        scan.entries.push(Entry { position, writer_time_ms, kind: body[16], payload: body[BODY_FIXED_LEN..].to_vec() });
        pos += ENTRY_HEADER_LEN + body_len;
        scan.good_len = pos as u64;
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{Receiver, sync_channel};

    fn open(dir: &Path, window_ms: u64) -> (CommandLog<u32>, Replay, Receiver<Durable<u32>>) {
        let (tx, rx) = sync_channel(1024);
        let mut config = CommandLogConfig::new(dir);
        config.group_commit_window_ms = window_ms;
        config.file_bytes_max = 256;
        let (log, replay) = CommandLog::open(config, tx).expect("open");
        (log, replay, rx)
    }

    fn drain(rx: &Receiver<Durable<u32>>, n: usize) -> Vec<(Entry, u32)> {
        let mut out = Vec::new();
        while out.len() < n {
            match rx.recv_timeout(Duration::from_secs(10)).expect("durable in time") {
                Durable::Entries(es) => out.extend(es),
                Durable::Failed { reason, .. } => panic!("fsync failed: {reason}"),
            }
        }
        out
    }

    #[test]
    fn entries_become_durable_in_order_and_replay_after_reopen() {
        // Serialised with the fault-point test, which makes every fsync fail while it runs.
        let _serial = fail::FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (log, replay, rx) = open(dir.path(), 1);
            assert!(replay.entries.is_empty());
            for i in 0..40u32 {
                let pos = log.append(100 - i64::from(i), 7, vec![i as u8; 20], i).expect("append");
                assert_eq!(pos, u64::from(i) + 1);
            }
            let mut got = drain(&rx, 40);
            // One at a time, so each group write sees the size bound and files roll.
            for i in 40..50u32 {
                log.append(0, 7, vec![i as u8; 20], i).expect("append");
                got.extend(drain(&rx, 1));
            }
            let tickets: Vec<u32> = got.iter().map(|(_, t)| *t).collect();
            assert_eq!(tickets, (0..50).collect::<Vec<_>>());
            // Writer time never goes backwards even though callers passed decreasing times.
            assert!(got.iter().all(|(e, _)| e.writer_time_ms == 100));
            log.close();
        }
        let (log, replay, _rx) = open(dir.path(), 1);
        assert_eq!(replay.entries.len(), 50);
        assert_eq!(replay.entries[49].payload, vec![49u8; 20]);
        assert_eq!(log.next_position(), 51);
        let files = list_files(dir.path()).expect("list");
        assert!(files.len() > 2, "small files roll");
        // How entries group into files depends on group commit timing; a file goes only when
        // every entry in it is below the trim position, i.e. the next file starts at or below it.
        let second = files[1].0;
        assert_eq!(log.trim_below(second - 1).expect("trim"), 0);
        assert_eq!(log.trim_below(second).expect("trim"), 1);
        drop(log);
        let (log, replay, _rx) = open(dir.path(), 1);
        assert_eq!(replay.entries.first().map(|e| e.position), Some(second));
        assert_eq!(replay.entries.last().map(|e| e.position), Some(50));
        assert_eq!(log.next_position(), 51);
    }

    #[test]
    fn torn_tail_is_cut() {
        // Serialised with the fault-point test, which makes every fsync fail while it runs.
        let _serial = fail::FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (log, _, rx) = open(dir.path(), 0);
            log.append(1, 1, b"first".to_vec(), 1).expect("append");
            log.append(1, 1, b"second".to_vec(), 2).expect("append");
            drain(&rx, 2);
        }
        let (_, path) = list_files(dir.path()).expect("list").pop().expect("a file");
        let len = fs::metadata(&path).expect("meta").len();
        OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(len - 2)).expect("truncate");
        let (log, replay, rx) = open(dir.path(), 0);
        assert_eq!(replay.entries.len(), 1);
        assert!(replay.cut_bytes > 0);
        assert_eq!(log.append(1, 1, b"again".to_vec(), 3).expect("append"), 2);
        assert_eq!(drain(&rx, 1)[0].0.payload, b"again".to_vec());
    }

    #[test]
    fn an_fsync_failure_fails_the_batch_and_stops_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scenario = fail::FailScenario::setup();
        let (log, _, rx) = open(dir.path(), 0);
        fail::cfg("cmdlog-fsync", "return").expect("failpoint");
        log.append(1, 1, b"lost".to_vec(), 7).expect("queued");
        match rx.recv_timeout(Duration::from_secs(10)).expect("an answer") {
            Durable::Failed { reason, tickets } => {
                assert!(reason.contains("fsync failed") && reason.contains("restart the node"), "{reason}");
                assert_eq!(tickets, vec![7], "the waiting writer learns its entry is not durable");
            }
            Durable::Entries(_) => panic!("an entry was reported durable although its fsync failed"),
        }
        fail::cfg("cmdlog-fsync", "off").expect("failpoint");
        // No retry after an fsync error: the log refuses all further work.
        let err = log.append(1, 1, b"after".to_vec(), 8).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("stopped after an fsync failure"), "{err}");
        scenario.teardown();
    }

    #[test]
    fn bounded_queue_answers_overloaded() {
        // Serialised with the fault-point test, which makes every fsync fail while it runs.
        let _serial = fail::FailScenario::setup();
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, _rx) = sync_channel(1);
        let mut config = CommandLogConfig::new(dir.path());
        config.pending_max = 0;
        let (log, _) = CommandLog::<u32>::open(config, tx).expect("open");
        let err = log.append(0, 0, vec![], 0).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("retry shortly"), "{err}");
    }
}
