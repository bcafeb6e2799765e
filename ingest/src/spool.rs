//! The no-quorum spool: beacon requests this node could not hand to a quorum, kept durably
//! on this node until the cluster has a leader again (what a tracking service did when its
//! Kafka was down).
//!
//! A spooled request gets a weaker answer than the normal acknowledgement: 202 with
//! `"spooled": true`, which means durable on this node only and not yet replicated. A request is
//! spooled only when nothing of it reached Raft: no leader is known, this node leads but no
//! quorum has answered it lately, or the leader could not be reached. So the spooled copy is
//! the only copy. Every spooled batch carries an idempotency key (the client's, or one made
//! here). A drain that kill -9 interrupts after the leader applied the batch but before the
//! file was removed is then answered "already applied" when it runs again, and never counts
//! twice.
//!
//! Layout: one file per request, `<seq>.spool`, holding a magic, a JSON header (datasource,
//! key), the body and a CRC-32C of all of it. It is written to a temporary name, fsync'd and
//! renamed, then the directory is fsync'd, all before the 202. The drain sends files oldest
//! first, one at a time, and removes each once the leader answers 200. A batch the leader
//! refuses for good (a 4xx: the datasource was deleted meanwhile, say) moves to `refused/`
//! and is counted, so it cannot block the queue.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"TMSPOOL1";
const SUFFIX: &str = "spool";

/// Header of a drain request: the leader must answer rather than spool it again.
pub const NO_SPOOL: &str = "x-tidemark-no-spool";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub datasource: String,
    pub idempotency_key: String,
    pub received_ms: i64,
    /// The API key id that sent the beacons (the drain publishes under its rights).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
}

/// One spooled request, as the drain reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub seq: u64,
    pub header: Header,
    pub body: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct SpoolStats {
    pub spooled: AtomicU64,
    pub drained: AtomicU64,
    pub refused: AtomicU64,
}

#[derive(Debug)]
struct Queue {
    /// (seq, file bytes), oldest first.
    files: std::collections::BTreeMap<u64, u64>,
    next_seq: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    bytes_max: u64,
    queue: Mutex<Queue>,
    pub stats: SpoolStats,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Engine(tidemark_engine::Error::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

fn encode(header: &Header, body: &[u8]) -> Result<Vec<u8>> {
    let h =
        serde_json::to_vec(header).map_err(|e| Error::BadRequest(format!("spool header: {e}")))?;
    let mut out = Vec::with_capacity(16 + h.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

fn decode(bytes: &[u8]) -> std::result::Result<(Header, Vec<u8>), String> {
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err("not a spool file".into());
    }
    let (content, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(content).to_le_bytes() != crc {
        return Err("checksum mismatch".into());
    }
    let len = u32::from_le_bytes([content[8], content[9], content[10], content[11]]) as usize;
    let header = content
        .get(12..12 + len)
        .ok_or("header length past the end")?;
    let header: Header = serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    Ok((header, content[12 + len..].to_vec()))
}

impl Spool {
    /// Opens (or creates) the spool in `dir`. Temporary files of an interrupted write are
    /// removed: their request was never answered 202.
    pub fn open(dir: impl Into<PathBuf>, bytes_max: u64) -> Result<Spool> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let mut files = std::collections::BTreeMap::new();
        for item in fs::read_dir(&dir).map_err(|e| io_error(&dir, e))? {
            let item = item.map_err(|e| io_error(&dir, e))?;
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            if let Some(seq) = name
                .strip_suffix(&format!(".{SUFFIX}"))
                .and_then(|s| s.parse::<u64>().ok())
            {
                let len = item.metadata().map_err(|e| io_error(&path, e))?.len();
                files.insert(seq, len);
            }
        }
        let next_seq = files.keys().next_back().map_or(0, |s| s + 1);
        Ok(Spool {
            dir,
            bytes_max,
            queue: Mutex::new(Queue { files, next_seq }),
            stats: SpoolStats::default(),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.{SUFFIX}"))
    }

    /// (batches, bytes) waiting.
    pub fn depth(&self) -> (u64, u64) {
        let q = self.queue();
        (q.files.len() as u64, q.files.values().sum())
    }

    /// The spool's lines for `/metrics`.
    pub fn render_metrics(&self) -> String {
        let (batches, bytes) = self.depth();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "tidemark_spool_batches",
            "gauge",
            "Beacon requests spooled here, waiting for a quorum.",
            batches,
        );
        metric(
            "tidemark_spool_bytes",
            "gauge",
            "Bytes of spooled beacon requests.",
            bytes,
        );
        metric(
            "tidemark_spool_spooled_total",
            "counter",
            "Beacon requests spooled (answered 202).",
            self.stats.spooled.load(Ordering::Relaxed),
        );
        metric(
            "tidemark_spool_drained_total",
            "counter",
            "Spooled requests the leader took.",
            self.stats.drained.load(Ordering::Relaxed),
        );
        metric(
            "tidemark_spool_refused_total",
            "counter",
            "Spooled requests the cluster refused for good (set aside in spool/refused).",
            self.stats.refused.load(Ordering::Relaxed),
        );
        out
    }

    /// Stores a request durably; returns its sequence number once it is fsync'd.
    pub fn put(&self, header: &Header, body: &[u8]) -> Result<u64> {
        let bytes = encode(header, body)?;
        let seq = {
            let mut q = self.queue();
            let held: u64 = q.files.values().sum();
            if held + bytes.len() as u64 > self.bytes_max {
                return Err(Error::Overloaded {
                    reason: format!(
                        "no quorum, and the local spool is full ({held} of {} bytes, ingest.spool_bytes_max)",
                        self.bytes_max
                    ),
                    retry_after_s: 5,
                });
            }
            let seq = q.next_seq;
            q.next_seq += 1;
            seq
        };
        let path = self.path(seq);
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_error(&path, e));
        }
        sync_dir(&self.dir)?;
        self.queue().files.insert(seq, bytes.len() as u64);
        self.stats.spooled.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// The oldest spooled request. A file that no longer reads back whole (a disk fault) is
    /// set aside under `refused/` and the next one is returned.
    pub fn oldest(&self) -> Option<Spooled> {
        loop {
            let seq = *self.queue().files.keys().next()?;
            let path = self.path(seq);
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| decode(&b))
            {
                Ok((header, body)) => return Some(Spooled { seq, header, body }),
                Err(reason) => {
                    tracing::error!(file = %path.display(), %reason, "a spooled batch is unreadable; set aside");
                    if self.refuse(seq, &reason).is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Removes a drained request.
    pub fn remove(&self, seq: u64) -> Result<()> {
        let path = self.path(seq);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path, e)),
        }
        sync_dir(&self.dir)?;
        self.queue().files.remove(&seq);
        self.stats.drained.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Moves a request the cluster refused for good to `refused/`, with the reason beside it.
    pub fn refuse(&self, seq: u64, reason: &str) -> Result<()> {
        let dir = self.dir.join("refused");
        fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let from = self.path(seq);
        let to = dir.join(format!("{seq:020}.{SUFFIX}"));
        fs::rename(&from, &to).map_err(|e| io_error(&from, e))?;
        let _ = fs::write(to.with_extension("reason"), reason);
        sync_dir(&self.dir)?;
        self.queue().files.remove(&seq);
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key: &str) -> Header {
        Header {
            datasource: "beacons".into(),
            idempotency_key: key.into(),
            received_ms: 1,
            publisher: None,
        }
    }

    #[test]
    fn spooled_requests_survive_a_reopen_in_order_and_leave_when_drained() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = Spool::open(dir.path(), 1 << 20).expect("open");
        assert_eq!(spool.put(&header("a"), b"{\"x\":1}").expect("put"), 0);
        assert_eq!(spool.put(&header("b"), b"{\"x\":2}").expect("put"), 1);
        std::fs::write(dir.path().join("00000000000000000002.tmp"), b"torn").expect("write");
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 20).expect("reopen");
        assert!(
            !dir.path().join("00000000000000000002.tmp").exists(),
            "a torn write is dropped"
        );
        assert_eq!(spool.depth().0, 2);
        let first = spool.oldest().expect("oldest");
        assert_eq!(
            (first.header.idempotency_key.as_str(), first.body.as_slice()),
            ("a", &b"{\"x\":1}"[..])
        );
        spool.remove(first.seq).expect("remove");
        assert_eq!(spool.oldest().expect("next").header.idempotency_key, "b");
        assert_eq!(
            spool.put(&header("c"), b"{}").expect("put"),
            2,
            "sequence numbers are not reused"
        );
    }

    #[test]
    fn a_full_spool_refuses_and_a_damaged_file_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A small request takes about 80 bytes with its header.
        let spool = Spool::open(dir.path(), 200).expect("open");
        spool.put(&header("a"), b"{}").expect("put");
        let e = spool.put(&header("b"), &[b' '; 100]).expect_err("full");
        assert!(e.to_string().contains("spool is full"), "{e}");
        spool.put(&header("c"), b"{}").expect("put");
        // Flip a byte of the first file: it is set aside, the next one is served.
        let p = dir.path().join("00000000000000000000.spool");
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[20] ^= 1;
        std::fs::write(&p, bytes).expect("write");
        assert_eq!(spool.oldest().expect("oldest").header.idempotency_key, "c");
        assert!(
            dir.path()
                .join("refused/00000000000000000000.spool")
                .exists()
        );
        assert_eq!(spool.stats.refused.load(Ordering::Relaxed), 1);
    }
}
