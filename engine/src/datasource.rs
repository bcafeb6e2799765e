//! One datasource's state inside the engine: its raw log partitions, realtime indexes (one per
//! open segment interval, plus late chunks for intervals already persisted), and its segment
//! timeline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use tidemark_catalog::{Catalog, DatasourceId, DatasourceSpec, Event};

use crate::checkpoint::{DatasourceCheckpoint, SegmentRecord};
use crate::command::{PersistCommand, PersistReason};

use crate::rules::RulesCache;
use crate::{EngineConfig, Recovery};
use crate::{Error, Result};
use tidemark_catalog::standardise::standardise_json;
use tidemark_storage::raw::frame::Frame;
use tidemark_storage::raw::partition_log::{
    IndexEntry, PartitionLog, PartitionLogConfig, SealedFile,
};
use tidemark_storage::raw::record_batch;
use tidemark_storage::rollup::RollupIndex;
use tidemark_storage::segment::{Segment, SegmentId, WrittenSegment, write_segment};
use tidemark_storage::snapshot::UnreadableSegment;

/// The version string of segments written by ingest; reindexing publishes higher versions.
pub(crate) const INGEST_VERSION: &str = "1";

#[derive(Debug)]
pub(crate) struct OpenInterval {
    index: RollupIndex,
    /// The spec the index was built under: its dimensions and metrics, which a later spec
    /// change may extend while the index is still queried (being written, or frozen).
    spec: DatasourceSpec,
    /// Log position of the first event in it: raw batches from here on may be unpersisted.
    first_position: u64,
    first_writer_time_ms: i64,
    /// The last Arrow snapshot and the event count it was taken at.
    cache: Mutex<Option<(u64, RecordBatch)>>,
}

impl OpenInterval {
    fn new(spec: &DatasourceSpec, position: u64, writer_time_ms: i64) -> Self {
        OpenInterval {
            index: RollupIndex::new(spec),
            spec: spec.clone(),
            first_position: position,
            first_writer_time_ms: writer_time_ms,
            cache: Mutex::new(None),
        }
    }

    /// The rows in `schema` (the table's schema now): built under the index's own spec, then
    /// each column taken by name, columns the index predates as nulls.
    fn batch(&self, schema: SchemaRef) -> Option<RecordBatch> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((events, batch)) = cache.as_ref()
            && *events == self.index.events()
            && batch.schema() == schema
        {
            return Some(batch.clone());
        }
        let own = Arc::new(tidemark_storage::segment::table_schema(&self.spec));
        let built = self.index.to_record_batch(&self.spec, own).ok()?;
        let batch = if built.schema() == schema {
            built
        } else {
            let columns: Vec<arrow_array::ArrayRef> = schema
                .fields()
                .iter()
                .map(|f| match built.column_by_name(f.name()) {
                    Some(c) if c.data_type() == f.data_type() => c.clone(),
                    _ => arrow_array::new_null_array(f.data_type(), built.num_rows()),
                })
                .collect();
            let options =
                arrow_array::RecordBatchOptions::new().with_row_count(Some(built.num_rows()));
            RecordBatch::try_new_with_options(schema, columns, &options).ok()?
        };
        *cache = Some((self.index.events(), batch.clone()));
        Some(batch)
    }
}

/// An index being written as a segment.
#[derive(Debug)]
struct Persisting {
    id: SegmentId,
    /// Relative to the data directory.
    file: PathBuf,
    position: u64,
    open: Arc<OpenInterval>,
}

/// Work for the segment writer thread.
#[derive(Debug)]
pub(crate) struct PersistJob {
    pub(crate) datasource: DatasourceId,
    pub(crate) path: PathBuf,
    pub(crate) id: SegmentId,
    pub(crate) spec: DatasourceSpec,
    pub(crate) open: Arc<OpenInterval>,
}

impl PersistJob {
    /// Writes the segment file and opens it (which checks every column's checksum); runs on
    /// the writer thread, so neither holds the engine lock.
    pub(crate) fn run(&self) -> Result<(WrittenSegment, Segment)> {
        let written = write_segment(&self.path, self.id.clone(), &self.spec, &self.open.index)?;
        Ok((written, Segment::open(&self.path)?))
    }
}

#[derive(Debug)]
pub(crate) struct DatasourceState {
    pub(crate) id: DatasourceId,
    pub(crate) name: String,
    data_dir: PathBuf,
    dir: PathBuf,
    partitions: Vec<PartitionLog>,
    raw_config: PartitionLogConfig,
    open: BTreeMap<i64, OpenInterval>,
    late: BTreeMap<i64, OpenInterval>,
    /// Indexes handed to the segment writer: still queried until their segment is published.
    persisting: Vec<Persisting>,
    /// Indexes of intervals being reindexed, frozen at the job's start (job, interval): still
    /// queried, never added to, dropped when the job publishes (see `reindex.rs`).
    frozen: Vec<(u64, i64, Arc<OpenInterval>)>,
    segments: Vec<(SegmentRecord, Arc<Segment>)>,
    /// Published segments whose file failed its checksums when the node started, with why:
    /// still part of the timeline (checkpoints, shard numbers, snapshots name them), not
    /// readable until the scrubber repairs them from a replica. Queries over their intervals
    /// fail rather than answer without them.
    damaged: Vec<(SegmentRecord, String)>,
    /// interval start → position of its last persist.
    persisted: BTreeMap<i64, u64>,
    /// From a checkpoint: raw batches before this position are all covered by segments.
    realtime_from: Option<u64>,
    /// Raw retention has removed raw batches of events before this time: a reindex must not
    /// start before it (it would rebuild an interval from part of its events).
    pub(crate) raw_horizon_ms: Option<i64>,
    pub(crate) events_ingested: u64,
    pub(crate) events_rejected: u64,
    /// Keys left out of events because they are not tags of the datasource's domain.
    pub(crate) tags_dropped: u64,
}

impl DatasourceState {
    pub(crate) fn open(
        config: &EngineConfig,
        id: DatasourceId,
        spec: &DatasourceSpec,
        recovery: &mut Recovery,
    ) -> Result<Self> {
        let dir = config.data_dir.join("datasources").join(id.to_string());
        let raw_config = PartitionLogConfig {
            file_bytes_max: config.raw_file_bytes_max,
        };
        let mut ds = DatasourceState {
            id,
            name: spec.name.clone(),
            data_dir: config.data_dir.clone(),
            dir,
            partitions: Vec::new(),
            raw_config,
            open: BTreeMap::new(),
            late: BTreeMap::new(),
            persisting: Vec::new(),
            frozen: Vec::new(),
            segments: Vec::new(),
            damaged: Vec::new(),
            persisted: BTreeMap::new(),
            realtime_from: None,
            raw_horizon_ms: None,
            events_ingested: 0,
            events_rejected: 0,
            tags_dropped: 0,
        };
        ds.grow_partitions_to(spec.partitions, recovery)?;
        Ok(ds)
    }

    fn grow_partitions_to(&mut self, n: u32, recovery: &mut Recovery) -> Result<()> {
        while self.partitions.len() < n as usize {
            let p = self.partitions.len() as u32;
            let (log, rec) = PartitionLog::open(
                &self.dir.join("raw").join(p.to_string()),
                p,
                self.raw_config.clone(),
            )?;
            recovery.raw_cut_bytes += rec.cut_bytes;
            if let Some(reason) = rec.cut_reason {
                tracing::warn!(datasource = %self.name, partition = p, %reason, bytes = rec.cut_bytes, "cut torn raw log tail");
            }
            self.partitions.push(log);
        }
        Ok(())
    }

    pub(crate) fn grow_partitions(&mut self, spec: &DatasourceSpec) -> Result<()> {
        let mut recovery = Recovery::default();
        self.grow_partitions_to(spec.partitions, &mut recovery)
    }

    pub(crate) fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    pub(crate) fn partition(&self, p: u32) -> Option<&PartitionLog> {
        self.partitions.get(p as usize)
    }

    pub(crate) fn restore(&mut self, cp: DatasourceCheckpoint) -> Result<()> {
        for rec in cp.segments {
            // A damaged file must not keep the node from starting: the node can repair it
            // from a replica only once it runs. Other errors (a missing file) stay fatal.
            match Segment::open(&self.data_dir.join(&rec.file)) {
                Ok(seg) => self.segments.push((rec, Arc::new(seg))),
                Err(e @ tidemark_storage::Error::Corrupt { .. }) => {
                    tracing::error!(datasource = %self.name, file = %rec.file.display(), error = %e,
                        "a segment is damaged; it is unreadable until repaired from a replica");
                    self.damaged.push((rec, e.to_string()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.persisted = cp.persisted.into_iter().collect();
        self.realtime_from = Some(cp.realtime_from);
        self.raw_horizon_ms = cp.raw_horizon_ms;
        self.events_ingested = cp.events_ingested;
        self.events_rejected = cp.events_rejected;
        self.tags_dropped = cp.tags_dropped;
        Ok(())
    }

    /// Re-adds to realtime indexes the events of raw batches applied up to `through` that no
    /// segment covers. Returns the number of raw batches read.
    pub(crate) fn rebuild_realtime(
        &mut self,
        catalog: &Catalog,
        rules_cache: &RulesCache,
        through: u64,
        pending: &[(u64, i64, i64)],
    ) -> Result<u64> {
        let Some(entry) = catalog.by_id(self.id) else {
            return Ok(0);
        };
        if entry.deleted.is_some() {
            return Ok(0);
        }
        let from = self.realtime_from_hint(through);
        // In the order apply met them: by log position, then partition (an entry's parts are
        // applied in partition order). Sketch states (HLL coupon lists, t-digests) depend on
        // the order values arrive in, so a rebuild in any other order writes segments that
        // differ from the other replicas' (found by the 200-kill chaos run). Only the small
        // index entries are collected; batches are read one at a time.
        let mut order: Vec<(u64, usize, IndexEntry)> = Vec::new();
        for (p, log) in self.partitions.iter().enumerate() {
            order.extend(
                log.entries_from_position(from)
                    .into_iter()
                    .take_while(|e| e.log_position <= through)
                    .map(|e| (e.log_position, p, e)),
            );
        }
        order.sort_by_key(|(position, p, _)| (*position, *p));
        let mut replayed = 0;
        let mut frozen: BTreeMap<(u64, i64), OpenInterval> = BTreeMap::new();
        for (_, p, index_entry) in order {
            let stored = self.partitions[p].read_at(&index_entry)?;
            let position = stored.frame.log_position;
            replayed += 1;
            let spec = entry.spec_at(position).clone();
            // The tag rules of the batch's own position, as apply used.
            let rules = rules_cache.get(catalog, &self.name, position);
            let (_, records) = record_batch::decode_records(&stored.batch)?;
            for (i, (_, record)) in records.iter().enumerate() {
                if stored
                    .frame
                    .verdicts
                    .iter()
                    .any(|v| v.record_index == i as u32)
                {
                    continue;
                }
                let Ok(standardised) = standardise_json(
                    &spec,
                    rules.as_deref(),
                    record.value.as_deref().unwrap_or_default(),
                ) else {
                    continue;
                };
                let event = standardised.event;
                let interval = spec.granularity.segment.bucket_start(event.time_ms);
                if self
                    .persisted
                    .get(&interval)
                    .is_some_and(|covered| *covered > position)
                {
                    continue;
                }
                // Counted in the checkpoint already; only the index is rebuilt. An event before
                // a pending reindex of its interval was frozen there at the job's start.
                let job = pending.iter().find(|(job, start, end)| {
                    position < *job && interval >= *start && interval < *end
                });
                if let Some((job, _, _)) = job {
                    let writer_ms = stored.frame.writer_time_ms;
                    let open = frozen
                        .entry((*job, interval))
                        .or_insert_with(|| OpenInterval::new(&spec, position, writer_ms));
                    open.first_position = open.first_position.min(position);
                    open.index.add(&event);
                    continue;
                }
                self.route(&spec, position, stored.frame.writer_time_ms, interval)
                    .index
                    .add(&event);
            }
        }
        self.frozen.extend(
            frozen
                .into_iter()
                .map(|((job, interval), open)| (job, interval, Arc::new(open))),
        );
        Ok(replayed)
    }

    /// Freezes the realtime indexes of [`start`, `end`) for reindex `job` (see `reindex.rs`).
    pub(crate) fn freeze(&mut self, job: u64, start: i64, end: i64) {
        for map in [&mut self.open, &mut self.late] {
            let keys: Vec<i64> = map.range(start..end).map(|(k, _)| *k).collect();
            for k in keys {
                if let Some(open) = map.remove(&k) {
                    self.frozen.push((job, k, Arc::new(open)));
                }
            }
        }
    }

    /// For each interval of [`start`, `end`) that has shards (published or being written),
    /// the number above all of them: a rebuilt shard's number.
    pub(crate) fn next_shards(&self, start: i64, end: i64) -> BTreeMap<i64, u32> {
        let mut out: BTreeMap<i64, u32> = BTreeMap::new();
        let ids = self
            .segment_records()
            .map(|r| &r.id)
            .chain(self.persisting.iter().map(|p| &p.id));
        for id in ids.filter(|id| id.interval_start_ms >= start && id.interval_start_ms < end) {
            let next = out.entry(id.interval_start_ms).or_insert(0);
            *next = (*next).max(id.shard + 1);
        }
        out
    }

    /// The readable segments of [`start`, `end`) published at or before `through`, by interval,
    /// in (version, shard) order; `Err` names a damaged one (compaction needs every shard).
    pub(crate) fn segments_by_interval(
        &self,
        start: i64,
        end: i64,
        through: u64,
    ) -> std::result::Result<BTreeMap<i64, Vec<(SegmentRecord, Arc<Segment>)>>, String> {
        let inside = |r: &SegmentRecord| {
            r.id.interval_start_ms >= start
                && r.id.interval_start_ms < end
                && r.published_at <= through
        };
        if let Some((r, why)) = self.damaged.iter().find(|(r, _)| inside(r)) {
            return Err(format!(
                "segment {} is damaged on this node ({why}); repair it first",
                r.id
            ));
        }
        let mut out: BTreeMap<i64, Vec<(SegmentRecord, Arc<Segment>)>> = BTreeMap::new();
        for (r, seg) in self.segments.iter().filter(|(r, _)| inside(r)) {
            out.entry(r.id.interval_start_ms)
                .or_default()
                .push((r.clone(), seg.clone()));
        }
        for shards in out.values_mut() {
            shards.sort_by(|(a, _), (b, _)| {
                let version = |r: &SegmentRecord| r.id.version.parse::<u64>().unwrap_or(0);
                (version(a), a.id.shard).cmp(&(version(b), b.id.shard))
            });
        }
        Ok(out)
    }

    /// Raw batches applied at or before `through` that may hold events of [`start`, `end`),
    /// in apply order.
    pub(crate) fn reindex_sources(
        &self,
        start: i64,
        end: i64,
        through: u64,
    ) -> Vec<crate::reindex::Source> {
        let mut out: Vec<crate::reindex::Source> = Vec::new();
        for (p, log) in self.partitions.iter().enumerate() {
            out.extend(
                log.sources_overlapping(start, end, through)
                    .into_iter()
                    .map(|(path, file, entry)| crate::reindex::Source {
                        position: entry.log_position,
                        partition: p as u32,
                        path,
                        file,
                        entry,
                    }),
            );
        }
        out.sort_by_key(|s| (s.position, s.partition));
        out
    }

    /// Publishes reindex `job`'s segments (stamped `position`): they replace every shard of
    /// [`start`, `end`) published at or before the job's start, and the job's frozen indexes
    /// go. Returns the replaced files (relative), which the engine removes once a checkpoint
    /// no longer names them, and how many shards were replaced.
    pub(crate) fn publish_reindex(
        &mut self,
        job: u64,
        start: i64,
        end: i64,
        only: Option<&[i64]>,
        position: u64,
        built: Vec<crate::reindex::Built>,
    ) -> (Vec<PathBuf>, u64) {
        let replaced = |r: &SegmentRecord| {
            let interval = r.id.interval_start_ms;
            interval >= start
                && interval < end
                && r.published_at <= job
                && only.is_none_or(|only| only.contains(&interval))
        };
        let mut obsolete = Vec::new();
        let mut kept = Vec::with_capacity(self.segments.len());
        for (r, seg) in std::mem::take(&mut self.segments) {
            if replaced(&r) {
                obsolete.push(r.file)
            } else {
                kept.push((r, seg))
            }
        }
        self.segments = kept;
        let mut damaged = Vec::new();
        for (r, why) in std::mem::take(&mut self.damaged) {
            if replaced(&r) {
                obsolete.push(r.file)
            } else {
                damaged.push((r, why))
            }
        }
        self.damaged = damaged;
        self.frozen.retain(|(j, _, _)| *j != job);
        for b in built {
            let mut record = b.record;
            record.published_at = position;
            let covered = self
                .persisted
                .entry(record.id.interval_start_ms)
                .or_insert(job);
            *covered = (*covered).max(job);
            self.segments.push((record, Arc::new(b.segment)));
        }
        let n = obsolete.len() as u64;
        (obsolete, n)
    }

    /// Takes [`start`, `end`) out of the timeline at `position`: its segments (returned as
    /// files to remove once no checkpoint names them) and its realtime indexes; shards being
    /// written for it are discarded when they finish. Raw batches before `position` are marked
    /// covered so a restart does not bring their events back. Returns the files, the number of
    /// segments and the number of events removed.
    pub(crate) fn drop_range(
        &mut self,
        start: i64,
        end: i64,
        position: u64,
    ) -> (Vec<PathBuf>, u64, u64) {
        let inside = |interval: i64| interval >= start && interval < end;
        let mut touched: Vec<i64> = Vec::new();
        let mut files = Vec::new();
        let mut events = 0;
        let mut kept = Vec::with_capacity(self.segments.len());
        for (r, seg) in std::mem::take(&mut self.segments) {
            if inside(r.id.interval_start_ms) {
                touched.push(r.id.interval_start_ms);
                events += r.events;
                files.push(r.file);
            } else {
                kept.push((r, seg));
            }
        }
        self.segments = kept;
        let mut damaged = Vec::new();
        for (r, why) in std::mem::take(&mut self.damaged) {
            if inside(r.id.interval_start_ms) {
                touched.push(r.id.interval_start_ms);
                events += r.events;
                files.push(r.file);
            } else {
                damaged.push((r, why));
            }
        }
        self.damaged = damaged;
        let segments = files.len() as u64;
        for map in [&mut self.open, &mut self.late] {
            let keys: Vec<i64> = map.range(start..end).map(|(k, _)| *k).collect();
            for k in keys {
                if let Some(o) = map.remove(&k) {
                    events += o.index.events();
                    touched.push(k);
                }
            }
        }
        self.persisting.retain(|p| {
            let drop = inside(p.id.interval_start_ms);
            if drop {
                events += p.open.index.events();
                touched.push(p.id.interval_start_ms);
            }
            !drop
        });
        for interval in touched {
            let covered = self.persisted.entry(interval).or_insert(position);
            *covered = (*covered).max(position);
        }
        (files, segments, events)
    }

    /// The first raw position a realtime index may still need (rebuilt from raw on restart).
    fn realtime_needs_from(&self, applied: u64) -> u64 {
        self.realtime_indexes()
            .map(|o| o.first_position)
            .min()
            .unwrap_or(applied + 1)
    }

    /// Raw retention: takes out of every partition the oldest files whose events are all
    /// older than `cutoff_ms` and no realtime index needs. Returns the files to delete.
    pub(crate) fn drop_raw_before(&mut self, cutoff_ms: i64, applied: u64) -> Vec<PathBuf> {
        let limit = self.realtime_needs_from(applied);
        let mut files = Vec::new();
        for log in &mut self.partitions {
            files.extend(log.drop_files_before(cutoff_ms, limit));
        }
        if !files.is_empty() {
            self.raw_horizon_ms = Some(self.raw_horizon_ms.map_or(cutoff_ms, |h| h.max(cutoff_ms)));
        }
        files
    }

    /// How many raw files [`Self::drop_raw_before`] would take.
    pub(crate) fn raw_files_before(&self, cutoff_ms: i64, applied: u64) -> usize {
        let limit = self.realtime_needs_from(applied);
        self.partitions
            .iter()
            .map(|l| l.files_before(cutoff_ms, limit))
            .sum()
    }

    /// [`Self::raw_files_before`], measured: (files, records, bytes).
    pub(crate) fn raw_removable_before(&self, cutoff_ms: i64, applied: u64) -> (u64, u64, u64) {
        let limit = self.realtime_needs_from(applied);
        self.partitions
            .iter()
            .map(|l| l.removable_before(cutoff_ms, limit))
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    }

    /// The intervals before `end` (segments and realtime indexes), and the events and bytes of
    /// their segments.
    pub(crate) fn intervals_before(&self, end: i64) -> (u64, u64, u64) {
        let mut starts = std::collections::BTreeSet::new();
        let (mut events, mut bytes) = (0, 0);
        for r in self
            .segment_records()
            .filter(|r| r.id.interval_start_ms < end)
        {
            starts.insert(r.id.interval_start_ms);
            events += r.events;
            bytes += r.file_bytes;
        }
        starts.extend(
            self.open
                .keys()
                .chain(self.late.keys())
                .filter(|s| **s < end),
        );
        (starts.len() as u64, events, bytes)
    }

    /// Whether any segment or realtime index of this datasource starts before `end`; the
    /// earliest such interval.
    /// Whether a realtime index (open or late) holds events of an interval before `end`.
    pub(crate) fn realtime_before(&self, end: i64) -> bool {
        self.open.keys().chain(self.late.keys()).any(|s| *s < end)
    }

    pub(crate) fn earliest_interval_before(&self, end: i64) -> Option<i64> {
        self.segment_records()
            .map(|r| r.id.interval_start_ms)
            .chain(self.open.keys().copied())
            .chain(self.late.keys().copied())
            .filter(|s| *s < end)
            .min()
    }

    /// Ends reindex `job` without publishing: its frozen indexes are written as ordinary
    /// shards (their events are in no segment).
    pub(crate) fn unfreeze(
        &mut self,
        catalog: &Catalog,
        job: u64,
        position: u64,
    ) -> Result<Vec<PersistJob>> {
        let frozen: Vec<(u64, i64, Arc<OpenInterval>)> = self
            .frozen
            .iter()
            .filter(|(j, _, _)| *j == job)
            .cloned()
            .collect();
        self.frozen.retain(|(j, _, _)| *j != job);
        let mut jobs = Vec::new();
        for (_, interval, open) in frozen {
            jobs.extend(self.persist_index(catalog, position, interval, open)?);
        }
        Ok(jobs)
    }

    /// Seals every partition's active raw file if it holds batches applied before
    /// `position`, and returns the sealed files holding such batches (a deletion's input).
    pub(crate) fn seal_raw_before(&mut self, position: u64) -> Result<Vec<SealedFile>> {
        for log in &mut self.partitions {
            log.seal_before(position)?;
        }
        Ok(self.sealed_raw_before(position))
    }

    /// The sealed raw files holding batches applied before `position`.
    pub(crate) fn sealed_raw_before(&self, position: u64) -> Vec<SealedFile> {
        self.partitions
            .iter()
            .flat_map(|log| log.sealed_before(position))
            .collect()
    }

    /// Installs a deletion's raw file rewrites; returns how many replaced a file (raw
    /// retention may have removed one meanwhile).
    pub(crate) fn install_rewrites(
        &mut self,
        rewrites: Vec<crate::delete::Rewrite>,
    ) -> Result<u64> {
        let mut installed = 0;
        for r in rewrites {
            let Some(log) = self.partitions.get_mut(r.partition as usize) else {
                let _ = std::fs::remove_file(&r.path);
                continue;
            };
            if log.install_rewrite(r.base_offset, &r.path, r.entries)? {
                installed += 1;
            }
        }
        Ok(installed)
    }

    /// Ends job `job`'s freeze of the intervals outside `keep`: those frozen indexes are
    /// written as ordinary shards (a deletion that found nothing there to rebuild).
    pub(crate) fn unfreeze_except(
        &mut self,
        catalog: &Catalog,
        job: u64,
        position: u64,
        keep: &std::collections::BTreeSet<i64>,
    ) -> Result<Vec<PersistJob>> {
        let thawed: Vec<(u64, i64, Arc<OpenInterval>)> = self
            .frozen
            .iter()
            .filter(|(j, i, _)| *j == job && !keep.contains(i))
            .cloned()
            .collect();
        self.frozen
            .retain(|(j, i, _)| *j != job || keep.contains(i));
        let mut jobs = Vec::new();
        for (_, interval, open) in thawed {
            jobs.extend(self.persist_index(catalog, position, interval, open)?);
        }
        Ok(jobs)
    }

    /// Marks `intervals` covered by segments up to `position`: a restart rebuilds no
    /// realtime rows for them from batches applied before it.
    pub(crate) fn cover(&mut self, intervals: impl IntoIterator<Item = i64>, position: u64) {
        for interval in intervals {
            let covered = self.persisted.entry(interval).or_insert(position);
            *covered = (*covered).max(position);
        }
    }

    /// The earliest raw position that may hold unpersisted events; saved in checkpoints.
    fn realtime_from_hint(&self, through: u64) -> u64 {
        self.realtime_from.unwrap_or(through + 1)
    }

    /// Appends a batch to its partition, or finds it there when replaying.
    pub(crate) fn append_raw(
        &mut self,
        partition: u32,
        frame: &Frame,
        batch: &mut [u8],
    ) -> Result<IndexEntry> {
        let log = &mut self.partitions[partition as usize];
        if log
            .last_log_position()
            .is_some_and(|last| last >= frame.log_position)
        {
            // A replay after a restart: the batch reached the raw log before the crash.
            return log.entry_at_position(frame.log_position).ok_or_else(|| {
                Error::Internal(format!(
                    "raw log of {} partition {partition} is past position {} but lacks its batch",
                    self.name, frame.log_position
                ))
            });
        }
        Ok(log.append(frame, batch)?)
    }

    /// The index an event of `interval` goes to. Once an interval has been persisted and the
    /// writer's clock (stamped on the entry, so replays agree) is past its end plus the late
    /// window, its stragglers collect in one late chunk; an interval persisted early (memory
    /// bound, spec change) simply starts a new open index.
    fn route(
        &mut self,
        spec: &DatasourceSpec,
        position: u64,
        writer_time_ms: i64,
        interval: i64,
    ) -> &mut OpenInterval {
        let closed = writer_time_ms
            >= interval + spec.granularity.segment.millis() + spec.late_window.millis();
        let persisted = self.persisted.contains_key(&interval)
            || self
                .persisting
                .iter()
                .any(|p| p.id.interval_start_ms == interval);
        let late = closed && persisted && !self.open.contains_key(&interval);
        let map = if late { &mut self.late } else { &mut self.open };
        let open = map
            .entry(interval)
            .or_insert_with(|| OpenInterval::new(spec, position, writer_time_ms));
        // A rebuild walks one partition after another, so an index can meet its events out of
        // position order: it must still start where its earliest event is, or the next
        // checkpoint's `realtime_from` passes over that event and a later restart loses it.
        open.first_position = open.first_position.min(position);
        open.first_writer_time_ms = open.first_writer_time_ms.min(writer_time_ms);
        open
    }

    pub(crate) fn add_event(
        &mut self,
        spec: &DatasourceSpec,
        position: u64,
        writer_time_ms: i64,
        event: &Event<'_>,
    ) {
        let interval = spec.granularity.segment.bucket_start(event.time_ms);
        self.route(spec, position, writer_time_ms, interval)
            .index
            .add(event);
        self.events_ingested += 1;
    }

    /// Hands the index of `interval` (or its late chunk) to the segment writer as the
    /// interval's next shard. The index stays queryable until [`Self::finish_persist`].
    pub(crate) fn start_persist(
        &mut self,
        catalog: &Catalog,
        position: u64,
        interval: i64,
        late: bool,
    ) -> Result<Option<PersistJob>> {
        let map = if late { &mut self.late } else { &mut self.open };
        let Some(open) = map.remove(&interval) else {
            return Ok(None);
        };
        self.persist_index(catalog, position, interval, Arc::new(open))
    }

    /// Hands `open` to the segment writer as the next shard of `interval`.
    fn persist_index(
        &mut self,
        catalog: &Catalog,
        position: u64,
        interval: i64,
        open: Arc<OpenInterval>,
    ) -> Result<Option<PersistJob>> {
        if open.index.is_empty() {
            return Ok(None);
        }
        let entry = catalog
            .by_id(self.id)
            .ok_or_else(|| Error::Internal(format!("datasource {} not in catalog", self.id)))?;
        // The index was built under the spec in force at its first event (specs change only
        // after persisting every open index).
        let spec = entry.spec_at(open.first_position).clone();
        // Above every shard of the interval, so a number (and a file name) is never reused,
        // even after a reindex replaced lower ones.
        let shard = self
            .next_shards(interval, interval + 1)
            .get(&interval)
            .copied()
            .unwrap_or(0);
        let id = SegmentId {
            datasource: self.name.clone(),
            interval_start_ms: interval,
            interval_end_ms: interval + spec.granularity.segment.millis(),
            version: INGEST_VERSION.to_string(),
            shard,
        };
        let file = segment_file(self.id, interval, INGEST_VERSION, shard);
        self.persisting.push(Persisting {
            id: id.clone(),
            file: file.clone(),
            position,
            open: open.clone(),
        });
        Ok(Some(PersistJob {
            datasource: self.id,
            path: self.data_dir.join(&file),
            id,
            spec,
            open,
        }))
    }

    /// Publishes a segment the writer finished: it replaces its index in queries at once.
    /// Returns false if the shard is no longer wanted (its interval was dropped meanwhile).
    pub(crate) fn finish_persist(
        &mut self,
        id: &SegmentId,
        written: &WrittenSegment,
        segment: Segment,
    ) -> Result<bool> {
        let Some(i) = self.persisting.iter().position(|p| &p.id == id) else {
            return Ok(false);
        };
        let p = self.persisting.remove(i);
        let record = SegmentRecord {
            id: p.id,
            file: p.file,
            file_bytes: written.file_bytes,
            rows: written.meta.rows,
            events: written.meta.events,
            published_at: p.position,
        };
        let interval = record.id.interval_start_ms;
        self.segments.push((record, Arc::new(segment)));
        let covered = self.persisted.entry(interval).or_insert(p.position);
        *covered = (*covered).max(p.position);
        Ok(true)
    }

    pub(crate) fn persist_all(
        &mut self,
        catalog: &Catalog,
        position: u64,
    ) -> Result<Vec<PersistJob>> {
        let mut jobs = Vec::new();
        let open: Vec<i64> = self.open.keys().copied().collect();
        for interval in open {
            jobs.extend(self.start_persist(catalog, position, interval, false)?);
        }
        let late: Vec<i64> = self.late.keys().copied().collect();
        for interval in late {
            jobs.extend(self.start_persist(catalog, position, interval, true)?);
        }
        Ok(jobs)
    }

    pub(crate) fn closed_intervals(
        &self,
        spec: &DatasourceSpec,
        now_ms: i64,
    ) -> Vec<PersistCommand> {
        let seg = spec.granularity.segment.millis();
        let late_ms = spec.late_window.millis();
        let mut out = Vec::new();
        for (start, _) in self
            .open
            .iter()
            .filter(|(start, _)| now_ms >= **start + seg + late_ms)
        {
            out.push(PersistCommand {
                datasource: self.id,
                interval_start_ms: *start,
                late: false,
                reason: PersistReason::IntervalClosed,
            });
        }
        for start in self
            .late
            .iter()
            .filter(|(_, c)| now_ms >= c.first_writer_time_ms + late_ms)
            .map(|(s, _)| s)
        {
            out.push(PersistCommand {
                datasource: self.id,
                interval_start_ms: *start,
                late: true,
                reason: PersistReason::IntervalClosed,
            });
        }
        out
    }

    /// (interval start, late?, bytes) of every realtime index.
    pub(crate) fn open_indexes(&self) -> impl Iterator<Item = (i64, bool, usize)> + '_ {
        self.open
            .iter()
            .map(|(s, o)| (*s, false, o.index.memory_bytes()))
            .chain(
                self.late
                    .iter()
                    .map(|(s, o)| (*s, true, o.index.memory_bytes())),
            )
    }

    pub(crate) fn realtime_bytes(&self) -> usize {
        self.open_indexes().map(|(_, _, b)| b).sum::<usize>()
            + self
                .persisting
                .iter()
                .map(|p| p.open.index.memory_bytes())
                .sum::<usize>()
            + self
                .frozen
                .iter()
                .map(|(_, _, o)| o.index.memory_bytes())
                .sum::<usize>()
    }

    /// Every realtime index: open, late, being written, frozen for a reindex.
    fn realtime_indexes(&self) -> impl Iterator<Item = &OpenInterval> {
        self.open
            .values()
            .chain(self.late.values())
            .chain(self.persisting.iter().map(|p| p.open.as_ref()))
            .chain(self.frozen.iter().map(|(_, _, o)| o.as_ref()))
    }

    pub(crate) fn realtime_rows(&self) -> u64 {
        self.realtime_indexes().map(|o| o.index.rows() as u64).sum()
    }

    pub(crate) fn segment_count(&self) -> usize {
        self.segments.len() + self.damaged.len()
    }

    /// Every published segment, the damaged ones included.
    pub(crate) fn segment_records(&self) -> impl Iterator<Item = &SegmentRecord> {
        self.segments
            .iter()
            .map(|(r, _)| r)
            .chain(self.damaged.iter().map(|(r, _)| r))
    }

    /// A segment's record and, if readable here, its metadata.
    pub(crate) fn segment_detail(
        &self,
        segment: &str,
    ) -> Option<(
        SegmentRecord,
        Option<tidemark_storage::segment::SegmentMeta>,
    )> {
        if let Some((r, seg)) = self
            .segments
            .iter()
            .find(|(r, _)| r.id.to_string() == segment)
        {
            return Some((r.clone(), Some(seg.meta().clone())));
        }
        self.damaged
            .iter()
            .find(|(r, _)| r.id.to_string() == segment)
            .map(|(r, _)| (r.clone(), None))
    }

    /// Intervals with more than one readable shard (and no damaged one), oldest first.
    /// The oldest interval ending at or before `settled_before` that compaction should
    /// rewrite: several shards, or shards finer than the granularity `due` names for it (an
    /// age rule); with that granularity if it is a rollup. Damaged intervals wait for repair.
    pub(crate) fn compaction_candidate(
        &self,
        seg_ms: i64,
        settled_before: i64,
        due: impl Fn(i64) -> Option<tidemark_catalog::Period>,
    ) -> Option<(i64, Option<tidemark_catalog::Period>)> {
        let mut shards: BTreeMap<i64, (usize, i64)> = BTreeMap::new();
        for (r, seg) in &self.segments {
            let finest = tidemark_catalog::Period::parse(&seg.meta().query_granularity)
                .map_or(0, |p| p.millis());
            let e = shards
                .entry(r.id.interval_start_ms)
                .or_insert((0, i64::MAX));
            *e = (e.0 + 1, e.1.min(finest));
        }
        for (r, _) in &self.damaged {
            shards.remove(&r.id.interval_start_ms);
        }
        shards
            .into_iter()
            .filter(|(i, _)| i + seg_ms <= settled_before)
            .find_map(|(interval, (n, finest))| {
                let rollup = due(interval).filter(|g| finest < g.millis());
                (n > 1 || rollup.is_some()).then_some((interval, rollup))
            })
    }

    /// Segments that cannot be read until repaired (see `damaged`).
    pub(crate) fn unreadable(&self) -> Vec<UnreadableSegment> {
        self.damaged
            .iter()
            .map(|(r, why)| UnreadableSegment {
                segment: r.id.to_string(),
                file: r.file.clone(),
                interval_start_ms: r.id.interval_start_ms,
                interval_end_ms: r.id.interval_end_ms,
                reason: why.clone(),
            })
            .collect()
    }

    pub(crate) fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments.iter().map(|(_, s)| s.clone()).collect()
    }

    pub(crate) fn realtime_batches(&self, schema: SchemaRef) -> Vec<RecordBatch> {
        self.realtime_indexes()
            .filter_map(|o| o.batch(schema.clone()))
            .collect()
    }

    pub(crate) fn drop_realtime(&mut self) {
        self.open.clear();
        self.late.clear();
        self.persisting.clear();
        self.frozen.clear();
    }

    /// Handles on the raw log files appended to since their last fsync (see
    /// [`PartitionLog::take_unsynced`]), added to `into`. On an error the handles taken so
    /// far stay in `into`: the caller must fsync them (their logs count themselves synced).
    pub(crate) fn take_unsynced(&mut self, into: &mut Vec<(PathBuf, std::fs::File)>) -> Result<()> {
        for p in &mut self.partitions {
            into.extend(p.take_unsynced()?);
        }
        Ok(())
    }

    pub(crate) fn checkpoint(&self, applied: u64) -> DatasourceCheckpoint {
        // In-flight persists are not covered yet: a restart rebuilds their rows from raw.
        let realtime_from = self
            .realtime_indexes()
            .map(|o| o.first_position)
            .min()
            .unwrap_or(applied + 1);
        DatasourceCheckpoint {
            id: self.id,
            segments: self.segment_records().cloned().collect(),
            persisted: self.persisted.iter().map(|(k, v)| (*k, *v)).collect(),
            realtime_from,
            raw_horizon_ms: self.raw_horizon_ms,
            events_ingested: self.events_ingested,
            events_rejected: self.events_rejected,
            tags_dropped: self.tags_dropped,
        }
    }

    /// The data files a checkpoint of this datasource refers to, with their lengths: every
    /// raw log file and every published segment (absolute paths).
    pub(crate) fn data_files(&self) -> Vec<(PathBuf, u64)> {
        let mut out: Vec<(PathBuf, u64)> = self
            .partitions
            .iter()
            .flat_map(PartitionLog::file_lengths)
            .collect();
        out.extend(
            self.segment_records()
                .map(|r| (self.data_dir.join(&r.file), r.file_bytes)),
        );
        out
    }

    /// Swaps in the segment at `path` (a repaired copy) for the one recorded as `relative`.
    /// Returns whether this datasource holds that segment.
    pub(crate) fn reopen_segment(&mut self, relative: &Path, path: &Path) -> Result<bool> {
        if let Some(slot) = self.segments.iter_mut().find(|(r, _)| r.file == relative) {
            slot.1 = Arc::new(Segment::open(path)?);
            return Ok(true);
        }
        let Some(i) = self.damaged.iter().position(|(r, _)| r.file == relative) else {
            return Ok(false);
        };
        let segment = Segment::open(path)?;
        let (record, _) = self.damaged.remove(i);
        self.segments.push((record, Arc::new(segment)));
        Ok(true)
    }

    /// Reopens the raw log file at `path` (a repaired copy) in whichever partition holds it.
    pub(crate) fn reopen_raw_file(&mut self, path: &Path) -> Result<bool> {
        for log in &mut self.partitions {
            if log.file_lengths().iter().any(|(p, _)| p == path) {
                log.reopen_file(path)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub(crate) fn remove_files(self) -> Result<()> {
        drop(self.partitions);
        drop(self.segments);
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Io {
                path: self.dir.clone(),
                source: e,
            }),
        }
    }
}

/// Relative path of a segment file of `datasource`.
pub(crate) fn segment_file(
    datasource: DatasourceId,
    interval: i64,
    version: &str,
    shard: u32,
) -> PathBuf {
    PathBuf::from("datasources")
        .join(datasource.to_string())
        .join("segments")
        .join(format!("{interval}_{version}_{shard}.seg"))
}
