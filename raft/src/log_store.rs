//! The Raft log and vote in RocksDB: openraft's `RaftLogStorage`.
//!
//! ```text
//!  column family "logs": index u64 BE ─► MessagePack of the entry (command bytes kept as bytes)
//!  column family "meta": "vote" | "committed" | "last_purged" ─► MessagePack
//! ```
//!
//! Invariants:
//! - Every write is synced (the WAL is fsync'd) before openraft is told it is durable: a vote
//!   before `save_vote` returns, entries before their `IOFlushed` callback fires. The
//!   committed id is the exception (see `save_committed`).
//! - `last_purged` is written before the entries it covers are deleted, so a crash between
//!   the two leaves a log that still says where it starts.
//! - The log is short-lived: openraft purges it below the last snapshot, and the raw logs
//!   hold the data for as long as retention says. After a deletion the purged range is also
//!   compacted (`compact_purged`), so the entries' bytes leave the disk then, not at
//!   RocksDB's leisure.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::TypeConfig;

const LOGS: &str = "logs";
const META: &str = "meta";
const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";
/// Syncs slower than this are logged at debug level (disk contention shows up here first).
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(10);

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

/// The RocksDB-backed Raft log. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    rmp_serde::to_vec_named(v).map_err(io::Error::other)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    rmp_serde::from_slice(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

impl LogStore {
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // RocksDB keeps every table file open by default; the log is purged behind snapshots
        // and holds few, but the node's descriptors are budgeted (client connections get
        // what is left), so the bound is explicit.
        opts.set_max_open_files(256);
        let cfs = [LOGS, META].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(io::Error::other)?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn cf(&self, name: &str) -> io::Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| io::Error::other(format!("column family {name} is missing")))
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self
            .db
            .get_cf(self.cf(META)?, key)
            .map_err(io::Error::other)?
        {
            None => Ok(None),
            Some(b) => decode(&b).map(Some),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], v: &T) -> io::Result<()> {
        self.db
            .put_cf_opt(self.cf(META)?, key, encode(v)?, &synced())
            .map_err(io::Error::other)
    }

    /// Starts an empty store as if it had installed a snapshot at `last` and purged the log up
    /// to it, with a vote for `node_id` at `term` (a restore; see `restore.rs`).
    pub fn seed(&self, last: &LogId, term: u64, node_id: crate::types::NodeId) -> io::Result<()> {
        if self.last_entry()?.is_some() || self.get_meta::<Vote>(VOTE)?.is_some() {
            return Err(io::Error::other("the Raft store is not empty"));
        }
        self.put_meta(LAST_PURGED, last)?;
        self.put_meta(COMMITTED, &Some(last.clone()))?;
        self.put_meta(VOTE, &Vote::new_committed(term, node_id))
    }

    /// Takes purged entries through index `through` off the disk: a purge's range delete only
    /// hides them, so the range is compacted (their bytes leave the table files) and both
    /// column families are flushed (a write-ahead log file is retired only once every
    /// family's writes in it are flushed). A deletion relies on it: the beacons it removed
    /// must not linger in the Raft log's files. Not part of `purge`, which runs in openraft's
    /// core task and must stay short; the manual compaction does not wait for background ones.
    pub fn compact_purged(&self, through: u64) -> io::Result<()> {
        let end = through.saturating_add(1).to_be_bytes();
        let mut opts = rocksdb::CompactOptions::default();
        opts.set_exclusive_manual_compaction(false);
        self.db
            .compact_range_cf_opt(self.cf(LOGS)?, None::<&[u8]>, Some(&end[..]), &opts);
        for cf in [LOGS, META] {
            self.db.flush_cf(self.cf(cf)?).map_err(io::Error::other)?;
        }
        Ok(())
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        let mut it = self.db.iterator_cf(self.cf(LOGS)?, IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(kv) => {
                let (_, v) = kv.map_err(io::Error::other)?;
                decode(&v).map(Some)
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let it = self.db.iterator_cf(
            self.cf(LOGS)?,
            IteratorMode::From(&start.to_be_bytes(), Direction::Forward),
        );
        for kv in it {
            let (k, v) = kv.map_err(io::Error::other)?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(io::Error::other)?);
            if !range.contains(&index) {
                break;
            }
            out.push(decode(&v)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last = self.last_entry()?.map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.put_meta(VOTE, vote)
    }

    /// Not synced: the committed id only lets a restart apply sooner, and the WAL keeps it in
    /// order with the entries, so losing it in a crash is safe (the leader tells the node again).
    /// A synced write here was a second fsync on every commit.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.db
            .put_cf(self.cf(META)?, COMMITTED, encode(&committed)?)
            .map_err(io::Error::other)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let cf = self.cf(LOGS)?;
        for e in entries {
            batch.put_cf(cf, e.log_id.index.to_be_bytes(), encode(&e)?);
        }
        // One synced write: durable when it returns, so the callback can fire at once.
        let t = std::time::Instant::now();
        let result = self
            .db
            .write_opt(batch, &synced())
            .map_err(io::Error::other);
        let took = t.elapsed();
        if took >= SLOW_SYNC {
            tracing::debug!(ms = took.as_millis() as u64, "slow Raft log sync");
        }
        let flushed = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::other(e.to_string()));
        callback.io_completed(flushed);
        result
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index.saturating_add(1));
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(LOGS)?, from.to_be_bytes(), u64::MAX.to_be_bytes());
        // delete_range's end is exclusive: the entry at u64::MAX (never written) stays.
        self.db
            .write_opt(batch, &synced())
            .map_err(io::Error::other)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.put_meta(LAST_PURGED, &log_id)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.cf(LOGS)?,
            0u64.to_be_bytes(),
            log_id.index.saturating_add(1).to_be_bytes(),
        );
        self.db
            .write_opt(batch, &synced())
            .map_err(io::Error::other)
    }
}
