//! Deletion (`tidemark delete --where …`): the beacons a filter matches are taken out of the
//! raw log, and the segment intervals that counted them are rebuilt without them, published
//! in one step like a reindex (see `reindex.rs`). Ours because it is the product's promise
//! that what a merchant asked to forget is gone from every form tidemark keeps.
//!
//! A job is two log entries. `Delete` at position P seals every partition's active raw file
//! (so the batches applied before P sit in files nothing appends to again) and freezes the
//! range's realtime indexes. A builder thread then, on every replica:
//! 1. reads every batch applied before P in the sealed files, tests each record against the
//!    filter (aliases resolved under the rules at P), and writes a file's new version beside
//!    it when any record matched: matching records are taken out of their batch, the rest
//!    keep their offsets (the taken ones become gaps, as after Kafka's compaction; a batch
//!    left empty stays, so the offsets and log positions it covered stay accounted for), and
//!    binding verdicts follow their records;
//! 2. rebuilds, from the rewritten raw log, every segment interval that held a matching
//!    event, as a reindex of just those intervals would;
//! 3. for intervals before the raw horizon (raw retention removed their beacons; the job
//!    start allows it only for a condition on dimensions and a spec with a count metric),
//!    rewrites their segments without the rows the condition matches, from the segments at P
//!    (`compact::build_without`), each row's events taken from its count metric.
//!
//! `Publish` then, under the engine lock, renames the rewrites over the old files, swaps the
//! rebuilt intervals in for their shards published at or before P (and their frozen
//! indexes), writes the other frozen indexes as ordinary shards, and removes the matching
//! rows of `sys.rejects`. Before `Publish`, queries, Fetch and `sys.rejects` still show the
//! matching beacons; after it, nowhere.
//!
//! Invariants:
//! - A record is taken out when it matches and its event time (or, for a beacon whose time
//!   cannot be read, its Kafka timestamp) is in the job's range. Beacons applied after P are
//!   never touched: a deletion is of what was there when it was asked for.
//! - The rewrite is a pure function of the file and the catalog at P, so replicas holding the
//!   same raw bytes write the same bytes (scrub repairs stay possible), and a replay finds
//!   nothing left to take out of a file already rewritten.
//! - Readers off the engine lock (reindex, export) hold file handles, so a rename never
//!   changes what they read.
//! - `Publish` writes a journal (the intervals rebuilt, what was removed) before it renames
//!   anything. A crash after the renames but before the next checkpoint replays the job
//!   against raw files that no longer hold the matches; the journal tells the replayed build
//!   which intervals still need rebuilding (their old segments are back from the checkpoint)
//!   and what the job removed. It is deleted once a checkpoint covers the `Publish`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tidemark_catalog::record_filter::CompiledFilter;
use tidemark_catalog::standardise::standardise_json;

use crate::reindex::{self, BuildInput, Output, Progress, Source};
use crate::{Error, Result};
use tidemark_storage::raw::frame::{Frame, Verdict};
use tidemark_storage::raw::partition_log::{IndexEntry, SealedFile};
use tidemark_storage::raw::record_batch;

/// The widest range a deletion without an interval covers (about ±35,000 years), kept well
/// inside `i64` so widening it to whole segments cannot overflow.
pub(crate) const ALL_TIME: (i64, i64) = (-(1 << 50), 1 << 50);

/// Everything a deletion needs, fixed at its `Delete` position.
#[derive(Debug)]
pub(crate) struct DeleteInput {
    /// The rebuild's input as a reindex of the range would have it, without its sources
    /// (they are the rewritten files, known once they are written).
    pub(crate) build: BuildInput,
    pub(crate) filter: CompiledFilter,
    /// Every sealed raw file holding batches applied before the job.
    pub(crate) files: Vec<SealedFile>,
    /// A replay's journal of the job's first `Publish` (see the module doc).
    pub(crate) journal: Option<Journal>,
    /// Intervals before the raw horizon, rewritten from their segments.
    pub(crate) rollups: Option<Rollups>,
}

/// A deletion's intervals before the raw horizon (its beacons are gone there): their
/// segments at the job's start, rewritten without the rows the condition matches.
#[derive(Debug)]
pub(crate) struct Rollups {
    /// Intervals starting before this go this way; the raw log rebuilds the others.
    pub(crate) cutoff: i64,
    pub(crate) inputs: BTreeMap<
        i64,
        Vec<(
            crate::checkpoint::SegmentRecord,
            Arc<tidemark_storage::segment::Segment>,
        )>,
    >,
    /// The spec's count metric (how many events a row stands for).
    pub(crate) count: usize,
}

/// What a deletion's `Publish` did, kept until a checkpoint covers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub(crate) intervals: Vec<i64>,
    pub(crate) records: u64,
    pub(crate) files_rewritten: u64,
    /// Events taken out of rolled-up rows before the raw horizon.
    #[serde(default)]
    pub(crate) rollup_events: u64,
    /// Of `records`, the raw beacons still held for intervals before the raw horizon: they
    /// leave the raw log too, but their events are counted in `rollup_events`.
    #[serde(default)]
    pub(crate) raw_in_rollups: u64,
}

impl Journal {
    /// The events the deletion took out, each once: the raw beacons of intervals after the
    /// raw horizon, and the rolled-up rows' events before it.
    pub(crate) fn events(&self) -> u64 {
        self.records.saturating_sub(self.raw_in_rollups) + self.rollup_events
    }
}

/// The journal's path, relative to the data directory.
pub(crate) fn journal_file(job: u64) -> PathBuf {
    PathBuf::from("state").join(format!("delete-{job}.json"))
}

pub(crate) fn read_journal(data_dir: &Path, job: u64) -> Option<Journal> {
    serde_json::from_slice(&std::fs::read(data_dir.join(journal_file(job))).ok()?).ok()
}

/// Writes the journal durably (temp file, fsync, rename, directory fsync).
pub(crate) fn write_journal(data_dir: &Path, job: u64, journal: &Journal) -> Result<()> {
    let path = data_dir.join(journal_file(job));
    let dir = path.parent().unwrap_or(data_dir).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(journal)
        .map_err(|e| Error::Internal(format!("deletion journal: {e}")))?;
    let mut f = File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(&bytes).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::fsync(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::fsync(&dir))
}

/// A raw file's new version, written beside it, not yet installed.
#[derive(Debug)]
pub(crate) struct Rewrite {
    pub(crate) partition: u32,
    pub(crate) base_offset: i64,
    pub(crate) path: PathBuf,
    pub(crate) entries: Vec<IndexEntry>,
}

/// What a deletion's build took out.
#[derive(Debug, Default)]
pub(crate) struct Deleted {
    pub(crate) rewrites: Vec<Rewrite>,
    /// (partition, offset) of every record taken out.
    pub(crate) records: BTreeSet<(u32, i64)>,
    /// The segment intervals rebuilt.
    pub(crate) intervals: BTreeSet<i64>,
    /// Set when this build replays a published job (its counts are the journal's).
    pub(crate) journal: Option<Journal>,
    /// Events taken out of rolled-up rows before the raw horizon.
    pub(crate) rollup_events: u64,
    /// Records taken out of the raw log whose intervals the rolled-up rows account for.
    pub(crate) raw_in_rollups: u64,
}

/// A batch with the records at `keep` only, and its frame's verdicts renumbered to match.
fn without(frame: &Frame, batch: &[u8], keep: &[usize]) -> Result<(Frame, Vec<u8>)> {
    let verdicts = frame
        .verdicts
        .iter()
        .filter_map(|v| {
            let at = keep.iter().position(|k| *k == v.record_index as usize)?;
            Some(Verdict {
                record_index: at as u32,
                ..v.clone()
            })
        })
        .collect();
    Ok((
        Frame {
            verdicts,
            ..frame.clone()
        },
        record_batch::retain_records(batch, keep)?,
    ))
}

/// Runs the deletion's build; on failure (or cancel) nothing it wrote is left behind.
pub(crate) fn build(
    input: &DeleteInput,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<Output> {
    let mut deleted = Deleted::default();
    match run(input, progress, cancel, &mut deleted) {
        Ok(segments) => Ok(Output {
            segments,
            deletion: Some(deleted),
        }),
        Err(e) => {
            for r in &deleted.rewrites {
                let _ = std::fs::remove_file(&r.path);
            }
            Err(e)
        }
    }
}

fn run(
    input: &DeleteInput,
    progress: &Progress,
    cancel: &AtomicBool,
    deleted: &mut Deleted,
) -> Result<Vec<reindex::Built>> {
    let spec = &input.build.spec;
    let rules = input.build.rules.as_deref();
    let seg = &spec.granularity.segment;
    let before = |e: &IndexEntry| e.log_position < input.build.job;
    let first_pass: usize = input
        .files
        .iter()
        .map(|f| f.entries.iter().filter(|e| before(e)).count())
        .sum();
    progress
        .batches_total
        .store(first_pass as u64, Ordering::Relaxed);
    // Per file: its entries after the deletion, and the handle and path to read them from.
    let mut after: Vec<(u32, PathBuf, Arc<File>, Vec<IndexEntry>)> =
        Vec::with_capacity(input.files.len());
    for f in &input.files {
        let mut edits: BTreeMap<i64, (Frame, Vec<u8>)> = BTreeMap::new();
        for e in f.entries.iter().filter(|e| before(e)) {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Internal("cancelled".into()));
            }
            let stored = tidemark_storage::raw::partition_log::read_stored(&f.file, &f.path, e)?;
            let (_, records) = record_batch::decode_records(&stored.batch)?;
            let mut keep = Vec::with_capacity(records.len());
            for (i, (offset, record)) in records.iter().enumerate() {
                let value = record.value.as_deref().unwrap_or_default();
                if !input.filter.matches(value) {
                    keep.push(i);
                    continue;
                }
                // The time that placed the event in a segment, under these rules or, for a
                // beacon they refuse, as extracted without them (older rules may have taken
                // it); a beacon with no readable time is placed by its Kafka timestamp.
                let event_time = match standardise_json(spec, rules, value) {
                    Ok(s) => Some(s.event.time_ms),
                    Err(_) => tidemark_catalog::event::extract_json(spec, value)
                        .ok()
                        .map(|e| e.time_ms),
                };
                let time = event_time.unwrap_or(record.timestamp_ms);
                if time < input.build.start_ms || time >= input.build.end_ms {
                    keep.push(i);
                    continue;
                }
                deleted.records.insert((f.partition, *offset));
                if input.rollups.as_ref().is_some_and(|r| time < r.cutoff) {
                    deleted.raw_in_rollups += 1;
                }
                if let Some(t) = event_time {
                    deleted.intervals.insert(seg.bucket_start(t));
                }
            }
            if keep.len() < records.len() {
                edits.insert(e.base_offset, without(&stored.frame, &stored.batch, &keep)?);
            }
            progress.batches_done.fetch_add(1, Ordering::Relaxed);
        }
        if edits.is_empty() {
            after.push((
                f.partition,
                f.path.clone(),
                f.file.clone(),
                f.entries.clone(),
            ));
            continue;
        }
        let path = f.rewrite_path(input.build.job);
        let entries = f.rewrite(&path, |e, _| Ok(edits.remove(&e.base_offset)))?;
        let file = Arc::new(File::open(&path).map_err(Error::io(&path))?);
        after.push((f.partition, path.clone(), file, entries.clone()));
        deleted.rewrites.push(Rewrite {
            partition: f.partition,
            base_offset: f.base_offset,
            path,
            entries,
        });
    }
    if let Some(j) = &input.journal {
        deleted.intervals.extend(j.intervals.iter().copied());
        deleted.journal = Some(j.clone());
    }
    progress
        .events
        .store(deleted.records.len() as u64, Ordering::Relaxed);

    // The touched intervals, rebuilt from the rewritten log as a reindex would.
    let touches = |e: &IndexEntry| {
        deleted.intervals.iter().any(|i| {
            e.min_event_ms <= e.max_event_ms
                && e.min_event_ms < i + seg.millis()
                && e.max_event_ms >= *i
        })
    };
    let mut sources: Vec<Source> = Vec::new();
    for (partition, path, file, entries) in &after {
        sources.extend(
            entries
                .iter()
                .filter(|e| before(e) && touches(e))
                .map(|e| Source {
                    position: e.log_position,
                    partition: *partition,
                    path: path.clone(),
                    file: file.clone(),
                    entry: *e,
                }),
        );
    }
    sources.sort_by_key(|s| (s.position, s.partition));
    progress
        .batches_total
        .fetch_add(sources.len() as u64, Ordering::Relaxed);
    // Intervals before the raw horizon are the rolled-up rows' to rewrite, not the raw log's.
    let cutoff = input.rollups.as_ref().map_or(i64::MIN, |r| r.cutoff);
    let from_raw = deleted
        .intervals
        .iter()
        .copied()
        .filter(|i| *i >= cutoff)
        .collect();
    let rebuild = BuildInput {
        sources,
        only: Some(from_raw),
        ..input.build.clone()
    };
    // The rebuild counts the events it keeps; the job reports the ones it took out.
    let kept = Progress::default();
    let mut segments = reindex::build(&rebuild, &kept, cancel)?;
    progress
        .batches_done
        .fetch_add(kept.batches_done.load(Ordering::Relaxed), Ordering::Relaxed);
    if let Some(rollups) = &input.rollups {
        let b = &input.build;
        let compact = crate::compact::CompactInput {
            job: b.job,
            datasource: b.datasource,
            data_dir: b.data_dir.clone(),
            spec: b.spec.clone(),
            granularity: b.spec.granularity.query.clone(),
            inputs: rollups.inputs.clone(),
            shards: b.shards.clone(),
        };
        let drop = crate::compact::RowDrop {
            filter: &input.filter,
            count: rollups.count,
        };
        let (built, intervals, events) = crate::compact::build_without(&compact, &drop, cancel)?;
        segments.extend(built);
        deleted.intervals.extend(intervals);
        deleted.rollup_events = events;
    }
    Ok(segments)
}
