//! Reprocessing: an interval's segments rebuilt from the raw log, published as a new version
//! (ARCHITECTURE.md, invariant 5). The timeline logic is ours because it is the product's core: a
//! reindex must never hide an event or count one twice.
//!
//! A job is two log entries. `Start` at position P freezes the interval's realtime indexes
//! (their events are all before P: they stay queryable, take no new events, and are dropped
//! when the new version is published) and hands a builder thread the raw batches applied
//! before P, the spec and the tag rules in force at P. Events arriving after P go to fresh
//! indexes as usual and become shards that the new version carries unchanged. `Publish` at Q
//! replaces, in one step, every shard of the interval published at or before P by the new
//! segments (version P), and drops the frozen indexes. So a query sees either the old shards
//! plus the frozen indexes, or the new version, each plus what arrived after P: never both,
//! never neither.
//!
//! Invariants:
//! - The build is a pure function of the raw log before P and the catalog at P, reading
//!   batches in (log position, partition) order as apply did (sketch states depend on order),
//!   so every replica writes byte-identical segments.
//! - Binding edge verdicts in the raw frames are honoured (refused records stay refused);
//!   everything else is decided again under the rules at P, so a corrected alias renames old
//!   beacons.
//! - Shard numbers of the new version are above every shard of the interval at P, so no file
//!   name is ever reused while an older checkpoint may still refer to it.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tidemark_catalog::standardise::{TagRules, standardise_json};
use tidemark_catalog::{DatasourceId, DatasourceSpec};

use crate::checkpoint::SegmentRecord;
use crate::{Error, Result};
use tidemark_storage::raw::partition_log::{IndexEntry, read_stored_into};
use tidemark_storage::raw::record_batch;
use tidemark_storage::rollup::RollupIndex;
use tidemark_storage::segment::{Segment, SegmentId, write_segment};

/// One raw batch to read.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) position: u64,
    pub(crate) partition: u32,
    pub(crate) path: PathBuf,
    /// Opened under the engine lock: the bytes read are the ones the index entry describes,
    /// whatever a later deletion puts at `path`.
    pub(crate) file: Arc<File>,
    pub(crate) entry: IndexEntry,
}

/// Everything a build needs, fixed at the `Start` position.
#[derive(Debug, Clone)]
pub(crate) struct BuildInput {
    pub(crate) job: u64,
    pub(crate) datasource: DatasourceId,
    pub(crate) name: String,
    pub(crate) data_dir: PathBuf,
    pub(crate) spec: DatasourceSpec,
    pub(crate) rules: Option<Arc<TagRules>>,
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
    /// The shard number each rebuilt interval gets (above every existing shard).
    pub(crate) shards: BTreeMap<i64, u32>,
    /// Sorted by (position, partition).
    pub(crate) sources: Vec<Source>,
    /// Rebuild only these intervals of the range (a deletion's), not all of it.
    pub(crate) only: Option<std::collections::BTreeSet<i64>>,
}

/// A rebuilt segment, written and opened (checksums checked), not yet published.
#[derive(Debug)]
pub(crate) struct Built {
    pub(crate) record: SegmentRecord,
    pub(crate) segment: Segment,
}

/// A build's progress, read by `sys.jobs` while it runs.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Set by jobs that learn their size as they go (a deletion's rebuild); 0: the job's own.
    pub(crate) batches_total: AtomicU64,
    pub(crate) batches_done: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) rejected: AtomicU64,
    /// A copy's bytes (a backup's files; an export's raw batches read).
    pub(crate) bytes_total: AtomicU64,
    pub(crate) bytes_done: AtomicU64,
}

/// What a finished job built: segments, and for a deletion its raw log rewrites.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub(crate) segments: Vec<Built>,
    pub(crate) deletion: Option<crate::delete::Deleted>,
}

impl From<Vec<Built>> for Output {
    fn from(segments: Vec<Built>) -> Output {
        Output {
            segments,
            deletion: None,
        }
    }
}

impl Output {
    /// Removes what the job wrote, for a job that will not publish.
    pub(crate) fn discard(self, data_dir: &std::path::Path) {
        for b in self.segments {
            let path = data_dir.join(&b.record.file);
            drop(b.segment);
            let _ = std::fs::remove_file(path);
        }
        for r in self.deletion.into_iter().flat_map(|d| d.rewrites) {
            let _ = std::fs::remove_file(r.path);
        }
    }
}

/// What a finished build left: its output or why it failed.
pub(crate) type Outcome = std::result::Result<Output, String>;

/// A build running (or finished, not yet published) on its own thread.
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) datasource: DatasourceId,
    pub(crate) start_ms: i64,
    pub(crate) end_ms: i64,
    pub(crate) progress: Arc<Progress>,
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) outcome: Arc<Mutex<Option<Outcome>>>,
    pub(crate) thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub(crate) fn spawn(input: BuildInput) -> Result<Running> {
        let (job, datasource, start_ms, end_ms, name) = (
            input.job,
            input.datasource,
            input.start_ms,
            input.end_ms,
            input.name.clone(),
        );
        Running::spawn_with(
            job,
            datasource,
            start_ms,
            end_ms,
            name,
            move |progress, cancel| build(&input, progress, cancel).map(Output::from),
        )
    }

    /// Runs `work` (a build from raw, or a compaction) on its own thread.
    pub(crate) fn spawn_with(
        job: u64,
        datasource: DatasourceId,
        start_ms: i64,
        end_ms: i64,
        name: String,
        work: impl FnOnce(&Progress, &AtomicBool) -> Result<Output> + Send + 'static,
    ) -> Result<Running> {
        let progress = Arc::new(Progress::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let outcome = Arc::new(Mutex::new(None));
        let thread = {
            let (progress, cancel, outcome) = (progress.clone(), cancel.clone(), outcome.clone());
            std::thread::Builder::new()
                .name(format!("job-{job}"))
                .spawn(move || {
                    let started = std::time::Instant::now();
                    let result = work(&progress, &cancel).map_err(|e| e.to_string());
                    match &result {
                        Ok(built) => tracing::info!(job, datasource = %name, segments = built.segments.len(),
                            events = progress.events.load(Ordering::Relaxed), seconds = started.elapsed().as_secs_f64(),
                            "job built"),
                        Err(e) => tracing::error!(job, datasource = %name, error = %e, "job failed"),
                    }
                    *outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                })
                .map_err(|e| Error::Internal(format!("cannot start a job thread: {e}")))?
        };
        Ok(Running {
            datasource,
            start_ms,
            end_ms,
            progress,
            cancel,
            outcome,
            thread: Some(thread),
        })
    }

    /// The outcome, if the build is over.
    pub(crate) fn peek(&self) -> Option<std::result::Result<(), String>> {
        let o = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        o.as_ref()
            .map(|r| r.as_ref().map(|_| ()).map_err(Clone::clone))
    }

    /// Waits for the build and takes its outcome.
    pub(crate) fn finish(mut self) -> Outcome {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| Err("the reindex thread ended without an outcome".into()))
    }
}

/// The most rows a build reserves for one interval's index up front (about 1 GB of columns).
const ROWS_RESERVED_MAX: usize = 4 << 20;

/// Writes `index` as shard `shard` of `interval` in job `job`'s version and opens it (which
/// checks its checksums): a job's segment, not yet published.
pub(crate) fn write_built(
    data_dir: &std::path::Path,
    datasource: DatasourceId,
    spec: &DatasourceSpec,
    interval: i64,
    job: u64,
    shard: u32,
    index: &RollupIndex,
) -> Result<Built> {
    let version = job.to_string();
    let id = SegmentId {
        datasource: spec.name.clone(),
        interval_start_ms: interval,
        interval_end_ms: interval + spec.granularity.segment.millis(),
        version: version.clone(),
        shard,
    };
    let file = crate::datasource::segment_file(datasource, interval, &version, shard);
    let path = data_dir.join(&file);
    let written = write_segment(&path, id.clone(), spec, index)?;
    let segment = Segment::open(&path)?;
    let record = SegmentRecord {
        id,
        file,
        file_bytes: written.file_bytes,
        rows: written.meta.rows,
        events: written.meta.events,
        published_at: 0,
    };
    Ok(Built { record, segment })
}

pub(crate) fn build(
    input: &BuildInput,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<Vec<Built>> {
    let spec = &input.spec;
    let rules = input.rules.as_deref();
    let mut indexes: BTreeMap<i64, RollupIndex> = BTreeMap::new();
    // An interval's rows are at most its events, at most the records read: reserve that
    // many (bounded) so the columns do not grow by doubling. Capacity never written costs
    // address space, not memory.
    let records: usize = input
        .sources
        .iter()
        .map(|s| (s.entry.last_offset - s.entry.base_offset + 1) as usize)
        .sum();
    let reserve = records.min(ROWS_RESERVED_MAX);
    let mut buf = Vec::new();
    for source in &input.sources {
        if cancel.load(Ordering::Relaxed) {
            return Err(Error::Internal("cancelled".into()));
        }
        let (frame, at) = read_stored_into(&source.file, &source.path, &source.entry, &mut buf)?;
        let (_, records) = record_batch::decode_records(&buf[at..])?;
        for (i, (_, record)) in records.iter().enumerate() {
            if frame.verdicts.iter().any(|v| v.record_index == i as u32) {
                continue;
            }
            let Ok(standardised) =
                standardise_json(spec, rules, record.value.as_deref().unwrap_or_default())
            else {
                progress.rejected.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let event = standardised.event;
            if event.time_ms < input.start_ms || event.time_ms >= input.end_ms {
                continue;
            }
            let interval = spec.granularity.segment.bucket_start(event.time_ms);
            if input
                .only
                .as_ref()
                .is_some_and(|only| !only.contains(&interval))
            {
                continue;
            }
            indexes
                .entry(interval)
                .or_insert_with(|| {
                    let mut index = RollupIndex::new(spec);
                    index.reserve(reserve);
                    index
                })
                .add(&event);
            progress.events.fetch_add(1, Ordering::Relaxed);
        }
        progress.batches_done.fetch_add(1, Ordering::Relaxed);
    }
    let mut built = Vec::with_capacity(indexes.len());
    for (interval, index) in indexes.iter().filter(|(_, i)| !i.is_empty()) {
        let shard = input.shards.get(interval).copied().unwrap_or(0);
        built.push(write_built(
            &input.data_dir,
            input.datasource,
            spec,
            *interval,
            input.job,
            shard,
            index,
        )?);
    }
    Ok(built)
}
