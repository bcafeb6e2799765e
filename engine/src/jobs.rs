//! The engine's side of long jobs: applying reindex commands, the leader's decision to
//! publish or cancel a finished build, and what `sys.jobs` shows. The build itself and the
//! timeline rules are in `reindex.rs`.

use std::sync::atomic::Ordering;

use tidemark_catalog::DatasourceId;

use super::delete;
use super::job::{JobKind, JobRecord, JobState};
use super::reindex::{BuildInput, Running};
use super::{Applied, Engine, RefusalStatus};
use crate::command::TimelineCommand;
use crate::{Error, Result};

/// Who automatic compactions run as; other jobs preempt them.
const AUTO_COMPACTION_ACTOR: &str = "system:compaction";

/// [`start_ms`, `end_ms`) widened to whole segment intervals.
fn widen(seg: &tidemark_catalog::Period, start_ms: i64, end_ms: i64) -> (i64, i64) {
    let end = match seg.bucket_start(end_ms) {
        e if e == end_ms => e,
        e => e + seg.millis(),
    };
    (seg.bucket_start(start_ms), end)
}

/// A job's refusal at apply: nothing changed.
fn refused(reason: String, status: RefusalStatus) -> Result<Applied> {
    Ok(Applied::Refused { reason, status })
}

impl Engine {
    pub(crate) fn apply_reindex(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        cmd: TimelineCommand,
    ) -> Result<Applied> {
        match cmd {
            TimelineCommand::Start {
                datasource,
                start_ms,
                end_ms,
                actor,
            } => self.start_reindex(
                position,
                writer_time_ms,
                datasource,
                start_ms,
                end_ms,
                actor,
            ),
            TimelineCommand::Publish { job } => self.publish_reindex(position, writer_time_ms, job),
            TimelineCommand::Cancel { job, reason } => {
                self.cancel_reindex(position, writer_time_ms, job, reason)
            }
            TimelineCommand::Compact {
                datasource,
                start_ms,
                end_ms,
                granularity,
                actor,
            } => self.start_compact(
                position,
                writer_time_ms,
                datasource,
                start_ms,
                end_ms,
                granularity,
                actor,
            ),
            TimelineCommand::Retain {
                datasource,
                raw_before_ms,
                rejects_before_ms,
                actor,
                spare_running_jobs,
            } => {
                // A job started between the leader's decision and this entry still has its
                // raw files: they go on a later decision, once it has ended.
                let raw_before_ms = raw_before_ms.filter(|cutoff| {
                    !spare_running_jobs || self.jobs_before(datasource, *cutoff).is_empty()
                });
                self.retain(
                    position,
                    writer_time_ms,
                    datasource,
                    raw_before_ms,
                    rejects_before_ms,
                    actor,
                )
            }
            TimelineCommand::Drop {
                datasource,
                start_ms,
                end_ms,
                actor,
            } => self.drop_interval(
                position,
                writer_time_ms,
                datasource,
                start_ms,
                end_ms,
                actor,
            ),
            TimelineCommand::Copied(record) => self.record_copy(position, writer_time_ms, record),
            TimelineCommand::CopyStarted(record) => {
                self.start_copy(position, writer_time_ms, record)
            }
            TimelineCommand::CopyFinished(finish) => self.finish_copy(writer_time_ms, finish),
            TimelineCommand::Delete {
                datasource,
                filter,
                where_text,
                start_ms,
                end_ms,
                actor,
            } => {
                let range = (
                    start_ms.unwrap_or(delete::ALL_TIME.0),
                    end_ms.unwrap_or(delete::ALL_TIME.1),
                );
                self.start_delete(
                    position,
                    writer_time_ms,
                    datasource,
                    (filter, where_text),
                    range,
                    actor,
                )
            }
        }
    }

    fn start_reindex(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        datasource: DatasourceId,
        start_ms: i64,
        end_ms: i64,
        actor: String,
    ) -> Result<Applied> {
        let Some(entry) = self
            .state
            .catalog
            .by_id(datasource)
            .filter(|e| e.deleted.is_none())
        else {
            return refused(
                format!("datasource {datasource} does not exist"),
                RefusalStatus::NotFound,
            );
        };
        let spec = entry.spec_at(position);
        let name = spec.name.clone();
        let seg = spec.granularity.segment.clone();
        let (start, end) = widen(&seg, start_ms, end_ms);
        if end <= start {
            return refused(
                format!("the interval {start_ms}..{end_ms} (ms) is empty"),
                RefusalStatus::Invalid,
            );
        }
        if let Some(refusal) =
            self.make_way(position, writer_time_ms, datasource, &name, start, end)?
        {
            return Ok(refusal);
        }
        let Some(ds) = self.state.datasources.get_mut(&datasource) else {
            return refused(
                format!("datasource {name:?} has no data on this node"),
                RefusalStatus::NotFound,
            );
        };
        if let Some(horizon) = ds.raw_horizon_ms.filter(|h| start < *h) {
            return refused(
                format!(
                    "raw retention has removed {name:?}'s raw events before {horizon} ms, so {start}..{end} cannot be \
                     rebuilt from raw; reindex from {horizon} on, or compact (which works from segments)"
                ),
                RefusalStatus::Invalid,
            );
        }
        ds.freeze(position, start, end);
        let shards = ds.next_shards(start, end);
        let batches_total = ds.reindex_sources(start, end, position).len() as u64;
        let mut info = JobRecord::new(
            position,
            JobKind::Reindex,
            (datasource, name),
            (start, end),
            actor,
            writer_time_ms,
        );
        info.batches_total = batches_total;
        info.shards = shards.into_iter().collect();
        self.state.jobs.insert(position, info);
        self.start_build(position)?;
        self.forget_old_jobs();
        self.runtime.checkpoint_due = true;
        Ok(Applied::Job { id: position })
    }

    /// Starts (or, after a restart, restarts) the build of running job `id` from the raw
    /// batches applied before it, under the spec and rules at its position.
    pub(crate) fn start_build(&mut self, id: u64) -> Result<()> {
        let info = self
            .state
            .jobs
            .get(&id)
            .ok_or_else(|| Error::Internal(format!("no reindex job {id}")))?;
        match info.kind {
            JobKind::Compact => return self.start_compact_build(id),
            JobKind::Delete => return self.start_delete_build(id, None),
            // Copies run on the node that took them, outside the engine.
            JobKind::Export | JobKind::Backup => return Ok(()),
            // Drops and retention passes are done at their own entry, never running.
            JobKind::Reindex | JobKind::Drop | JobKind::Retain => {}
        }
        let mut input = self.build_input(id)?;
        let ds = self
            .state
            .datasources
            .get(&input.datasource)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "reindex job {id}: datasource {} has no state here",
                    input.datasource
                ))
            })?;
        input.sources = ds.reindex_sources(input.start_ms, input.end_ms, id);
        self.runtime.running.insert(id, Running::spawn(input)?);
        Ok(())
    }

    /// Running job `id`'s build input under the spec and tag rules at its position, without
    /// sources (what it reads depends on its kind).
    fn build_input(&self, id: u64) -> Result<BuildInput> {
        let info = self
            .state
            .jobs
            .get(&id)
            .ok_or_else(|| Error::Internal(format!("no job {id}")))?;
        let datasource = info.datasource_id;
        let entry = self.state.catalog.by_id(datasource).ok_or_else(|| {
            Error::Internal(format!(
                "{} job {id}: datasource {datasource} is not in the catalog",
                info.kind
            ))
        })?;
        let spec = entry.spec_at(id).clone();
        Ok(BuildInput {
            job: id,
            datasource,
            name: spec.name.clone(),
            data_dir: self.config.data_dir.clone(),
            rules: self.state.rules.get(&self.state.catalog, &spec.name, id),
            spec,
            start_ms: info.start_ms,
            end_ms: info.end_ms,
            shards: info.shards.iter().copied().collect(),
            sources: Vec::new(),
            only: None,
        })
    }

    fn publish_reindex(&mut self, position: u64, writer_time_ms: i64, job: u64) -> Result<Applied> {
        let Some(run) = self.runtime.running.remove(&job) else {
            return refused(
                format!("reindex job {job} is not running"),
                RefusalStatus::Conflict,
            );
        };
        let progress = run.progress.clone();
        // A follower may still be building: apply waits, so every replica switches here.
        let output = run.finish().map_err(|e| {
            Error::Internal(format!(
                "reindex job {job} failed on this node after the leader built it: {e}"
            ))
        })?;
        let built = output.segments;
        // Shards written for events before the job must be in the timeline to be replaced.
        self.publish_persisted(true)?;
        // Copies started while a deletion ran read the raw log before its rewrite: named too.
        let copies_during = match self.state.jobs.get(&job) {
            Some(j) if j.kind == JobKind::Delete => {
                self.copies_holding(&j.datasource, j.start_ms, j.end_ms, Some(job))
            }
            _ => Vec::new(),
        };
        let Some(info) = self.state.jobs.get_mut(&job) else {
            return Err(Error::Internal(format!("reindex job {job} has no record")));
        };
        let published = built.len() as u64;
        // A compaction replaces only the intervals it merged; a deletion, the ones it
        // rebuilt; a reindex, its whole range.
        let mut only: Option<Vec<i64>> =
            (info.kind == JobKind::Compact).then(|| info.shards.iter().map(|(i, _)| *i).collect());
        if let Some(deleted) = output.deletion {
            let Some(ds) = self.state.datasources.get_mut(&info.datasource_id) else {
                return Err(Error::Internal(format!(
                    "deletion {job}: its datasource has no state here"
                )));
            };
            // Journal first: a crash after the renames must still rebuild these intervals.
            let journal = match deleted.journal.clone() {
                Some(j) => j,
                None => {
                    let j = delete::Journal {
                        intervals: deleted.intervals.iter().copied().collect(),
                        records: deleted.records.len() as u64,
                        files_rewritten: deleted.rewrites.len() as u64,
                        rollup_events: deleted.rollup_events,
                        raw_in_rollups: deleted.raw_in_rollups,
                    };
                    delete::write_journal(&self.config.data_dir, job, &j)?;
                    j
                }
            };
            self.runtime
                .obsolete
                .push((position, delete::journal_file(job)));
            ds.install_rewrites(deleted.rewrites)?;
            info.files_rewritten = journal.files_rewritten;
            for persist in
                ds.unfreeze_except(&self.state.catalog, job, position, &deleted.intervals)?
            {
                self.runtime.persister.submit(persist)?;
            }
            ds.cover(deleted.intervals.iter().copied(), job);
            let filter = info.filter.clone().map(|f| {
                f.compile(
                    self.state
                        .rules
                        .get(&self.state.catalog, &info.datasource, job)
                        .as_deref(),
                )
            });
            let matches = |payload: &str| {
                filter
                    .as_ref()
                    .is_some_and(|f| f.matches(payload.as_bytes()))
            };
            info.rejects_removed =
                self.state
                    .rejects
                    .remove_records(&info.datasource, &deleted.records, matches)
                    as u64;
            info.copies_before.extend(copies_during);
            info.events = journal.events();
            only = Some(deleted.intervals.into_iter().collect());
            self.state.erase_log_through = Some(position);
            let after = serde_json::json!({
                "job": job,
                "records_deleted": journal.records,
                "rolled_up_events_deleted": journal.rollup_events,
                // Raw beacons of intervals before the raw horizon that retention had not yet
                // removed: they leave the raw log, and their events are counted in the rows.
                "records_in_rolled_up_intervals": journal.raw_in_rollups,
                "files_rewritten": info.files_rewritten,
                "intervals_rebuilt": only.as_ref().map_or(0, Vec::len),
                "rejects_removed": info.rejects_removed,
                "copies_before": info.copies_before,
            });
            self.state
                .catalog
                .record_audit(tidemark_catalog::audit::AuditRow {
                    position,
                    time_ms: writer_time_ms,
                    actor: info.actor.clone(),
                    op: "delete".into(),
                    object: format!("datasource:{}", info.datasource),
                    before: Some(serde_json::json!({ "where": info.where_text, "job": job })),
                    after: Some(after),
                });
        }
        let deletion = info.kind == JobKind::Delete;
        match self.state.datasources.get_mut(&info.datasource_id) {
            Some(ds) => {
                let (obsolete, replaced) = ds.publish_reindex(
                    job,
                    info.start_ms,
                    info.end_ms,
                    only.as_deref(),
                    position,
                    built,
                );
                self.runtime
                    .obsolete
                    .extend(obsolete.into_iter().map(|f| (position, f)));
                info.segments_replaced = replaced;
            }
            // Purged meanwhile: nothing refers to the new files.
            None => {
                for b in built {
                    let path = self.config.data_dir.join(&b.record.file);
                    drop(b.segment);
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        info.state = JobState::Published;
        info.published_at = Some(position);
        info.finished_ms = Some(writer_time_ms);
        info.segments_published = published;
        info.batches_total = info
            .batches_total
            .max(progress.batches_total.load(Ordering::Relaxed));
        info.batches_done = progress.batches_done.load(Ordering::Relaxed);
        if !deletion {
            info.events = progress.events.load(Ordering::Relaxed);
        }
        info.rejected = progress.rejected.load(Ordering::Relaxed);
        self.runtime.checkpoint_due = true;
        Ok(Applied::Job { id: job })
    }

    fn cancel_reindex(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        job: u64,
        reason: String,
    ) -> Result<Applied> {
        if self.state.jobs.get(&job).is_some_and(|j| j.kind.is_copy()) {
            return self.cancel_copy(writer_time_ms, job, reason);
        }
        let Some(run) = self.runtime.running.remove(&job) else {
            return refused(
                format!("reindex job {job} is not running"),
                RefusalStatus::Conflict,
            );
        };
        run.cancel.store(true, Ordering::Relaxed);
        if let Ok(output) = run.finish() {
            output.discard(&self.config.data_dir);
        }
        let Some(info) = self.state.jobs.get_mut(&job) else {
            return Err(Error::Internal(format!("reindex job {job} has no record")));
        };
        info.state = JobState::Cancelled;
        info.finished_ms = Some(writer_time_ms);
        info.error = Some(reason);
        let datasource = info.datasource_id;
        // The frozen indexes' events are in no segment: they are written as ordinary shards.
        if let Some(ds) = self.state.datasources.get_mut(&datasource) {
            for persist in ds.unfreeze(&self.state.catalog, job, position)? {
                self.runtime.persister.submit(persist)?;
            }
        }
        self.runtime.checkpoint_due = true;
        Ok(Applied::Job { id: job })
    }

    #[allow(clippy::too_many_arguments)]
    fn start_compact(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        datasource: DatasourceId,
        start_ms: i64,
        end_ms: i64,
        granularity: Option<tidemark_catalog::Period>,
        actor: String,
    ) -> Result<Applied> {
        let Some(entry) = self
            .state
            .catalog
            .by_id(datasource)
            .filter(|e| e.deleted.is_none())
        else {
            return refused(
                format!("datasource {datasource} does not exist"),
                RefusalStatus::NotFound,
            );
        };
        let spec = entry.spec_at(position).clone();
        let name = spec.name.clone();
        let seg = spec.granularity.segment.clone();
        let query = spec.granularity.query.clone();
        let target = granularity.unwrap_or_else(|| query.clone());
        if target.millis() % query.millis() != 0 || seg.millis() % target.millis() != 0 {
            return refused(
                format!(
                    "granularity {target} must be a multiple of {name:?}'s query granularity {query} that divides its \
                     segment granularity {seg}"
                ),
                RefusalStatus::Invalid,
            );
        }
        let (start, end) = widen(&seg, start_ms, end_ms);
        if let Some(refusal) =
            self.make_way(position, writer_time_ms, datasource, &name, start, end)?
        {
            return Ok(refusal);
        }
        // Shards being written belong to the input: let them land first.
        self.publish_persisted(true)?;
        let Some(ds) = self.state.datasources.get(&datasource) else {
            return refused(
                format!("datasource {name:?} has no data on this node"),
                RefusalStatus::NotFound,
            );
        };
        let inputs = match ds.segments_by_interval(start, end, position) {
            Ok(i) => i,
            Err(reason) => return refused(reason, RefusalStatus::Conflict),
        };
        let target_name = target.to_string();
        let chosen: Vec<i64> = inputs
            .iter()
            .filter(|(_, shards)| {
                shards.len() > 1
                    || shards
                        .iter()
                        .any(|(_, s)| s.meta().query_granularity != target_name)
            })
            .map(|(i, _)| *i)
            .collect();
        if chosen.is_empty() {
            return refused(
                format!(
                    "nothing to compact in {name:?} there: every interval is one shard at {target}"
                ),
                RefusalStatus::Invalid,
            );
        }
        let next = ds.next_shards(start, end);
        let shards: Vec<(i64, u32)> = chosen
            .iter()
            .map(|i| (*i, next.get(i).copied().unwrap_or(0)))
            .collect();
        let batches_total = chosen
            .iter()
            .map(|i| inputs.get(i).map_or(0, Vec::len) as u64)
            .sum();
        let mut info = JobRecord::new(
            position,
            JobKind::Compact,
            (datasource, name),
            (start, end),
            actor,
            writer_time_ms,
        );
        info.batches_total = batches_total;
        info.shards = shards;
        info.granularity = (target != query).then_some(target_name);
        self.state.jobs.insert(position, info);
        self.start_compact_build(position)?;
        self.forget_old_jobs();
        self.runtime.checkpoint_due = true;
        Ok(Applied::Job { id: position })
    }

    /// Starts (or restarts) compaction job `id` over the shards it chose at its start.
    fn start_compact_build(&mut self, id: u64) -> Result<()> {
        let info = self
            .state
            .jobs
            .get(&id)
            .ok_or_else(|| Error::Internal(format!("no compaction job {id}")))?;
        let (datasource, start_ms, end_ms) = (info.datasource_id, info.start_ms, info.end_ms);
        let shards: std::collections::BTreeMap<i64, u32> = info.shards.iter().copied().collect();
        let entry = self.state.catalog.by_id(datasource).ok_or_else(|| {
            Error::Internal(format!(
                "compaction job {id}: datasource {datasource} is not in the catalog"
            ))
        })?;
        let spec = entry.spec_at(id).clone();
        let granularity = match &info.granularity {
            Some(g) => tidemark_catalog::Period::parse(g).map_err(|e| {
                Error::Internal(format!("compaction job {id}: granularity {g}: {e}"))
            })?,
            None => spec.granularity.query.clone(),
        };
        let ds = self.state.datasources.get(&datasource).ok_or_else(|| {
            Error::Internal(format!(
                "compaction job {id}: datasource {datasource} has no state here"
            ))
        })?;
        let mut inputs = ds
            .segments_by_interval(start_ms, end_ms, id)
            .map_err(Error::Internal)?;
        inputs.retain(|interval, _| shards.contains_key(interval));
        let input = super::compact::CompactInput {
            job: id,
            datasource,
            data_dir: self.config.data_dir.clone(),
            spec: spec.clone(),
            granularity,
            inputs,
            shards,
        };
        let run = Running::spawn_with(
            id,
            datasource,
            start_ms,
            end_ms,
            spec.name.clone(),
            move |progress, cancel| {
                super::compact::build(&input, progress, cancel).map(super::reindex::Output::from)
            },
        )?;
        self.runtime.running.insert(id, run);
        Ok(())
    }

    /// Starts a deletion (see `delete.rs`): seals the raw files, freezes the range's realtime
    /// indexes and starts the build. Refused while another deletion of the datasource runs
    /// (both would rewrite the same files) or a job covers part of the range.
    fn start_delete(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        datasource: DatasourceId,
        (filter, where_text): (tidemark_catalog::record_filter::RecordFilter, String),
        (start_ms, end_ms): (i64, i64),
        actor: String,
    ) -> Result<Applied> {
        let Some(entry) = self
            .state
            .catalog
            .by_id(datasource)
            .filter(|e| e.deleted.is_none())
        else {
            return refused(
                format!("datasource {datasource} does not exist"),
                RefusalStatus::NotFound,
            );
        };
        let spec = entry.spec_at(position);
        let name = spec.name.clone();
        let (start, end) = widen(&spec.granularity.segment, start_ms, end_ms);
        if end <= start {
            return refused(
                format!("the interval {start_ms}..{end_ms} (ms) is empty"),
                RefusalStatus::Invalid,
            );
        }
        let deleting = self.runtime.running.keys().find(|id| {
            self.state
                .jobs
                .get(id)
                .is_some_and(|j| j.kind == JobKind::Delete && j.datasource_id == datasource)
        });
        if let Some(other) = deleting {
            return refused(
                format!("deletion {other} of {name:?} is running; wait for it or cancel it"),
                RefusalStatus::Conflict,
            );
        }
        let Some(ds) = self.state.datasources.get(&datasource) else {
            return refused(
                format!("datasource {name:?} has no data on this node"),
                RefusalStatus::NotFound,
            );
        };
        // Before the raw horizon the beacons are gone: the rolled-up rows are rewritten
        // instead, which a condition on dimensions (stored in the rows) allows.
        let mut rollups_before = None;
        if let Some(horizon) = ds.raw_horizon_ms.filter(|h| start < *h)
            && ds.earliest_interval_before(horizon).is_some()
        {
            let seg_ms = spec.granularity.segment.millis();
            let cutoff = spec
                .granularity
                .segment
                .bucket_start(horizon.saturating_add(seg_ms - 1));
            let rules = self.state.rules.get(&self.state.catalog, &name, position);
            let tag_of = |t: &str| {
                rules
                    .as_deref()
                    .and_then(|r| r.lookup(t))
                    .map_or(t.to_string(), |(t, _)| t.name.clone())
            };
            let others: Vec<String> = filter
                .tags()
                .into_iter()
                .map(tag_of)
                .filter(|t| !spec.dimensions.contains(t))
                .collect();
            let count = spec
                .metrics
                .iter()
                .any(|m| m.kind == tidemark_catalog::MetricKind::Count);
            let why = if !others.is_empty() {
                Some(format!(
                    "the condition names {} which the rolled-up rows do not keep",
                    others.join(", ")
                ))
            } else if !count {
                Some(format!(
                    "{name:?} has no count metric to tell how many events a rolled-up row stands for"
                ))
            } else if ds.realtime_before(cutoff) {
                Some("an interval before it is still being ingested".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                return refused(
                    format!(
                        "raw retention has removed {name:?}'s raw events before {horizon} ms, so older intervals can \
                         only lose rolled-up rows matching a condition on dimensions, and {why}; delete from \
                         {horizon} on (--interval), or drop the older intervals (tidemark segments drop)"
                    ),
                    RefusalStatus::Invalid,
                );
            }
            rollups_before = Some(cutoff);
        }
        if let Some(refusal) =
            self.make_way(position, writer_time_ms, datasource, &name, start, end)?
        {
            return Ok(refusal);
        }
        let Some(ds) = self.state.datasources.get_mut(&datasource) else {
            return refused(
                format!("datasource {name:?} has no data on this node"),
                RefusalStatus::NotFound,
            );
        };
        let files = ds.seal_raw_before(position)?;
        ds.freeze(position, start, end);
        let shards = ds.next_shards(start, end);
        let mut info = JobRecord::new(
            position,
            JobKind::Delete,
            (datasource, name),
            (start, end),
            actor,
            writer_time_ms,
        );
        info.shards = shards.into_iter().collect();
        info.where_text = Some(where_text);
        info.filter = Some(filter);
        info.rollups_before_ms = rollups_before;
        info.copies_before = self.copies_holding(&info.datasource, start, end, None);
        info.batches_total = files.iter().map(|f| f.entries.len() as u64).sum();
        self.state.jobs.insert(position, info);
        self.start_delete_build(position, Some(files))?;
        self.forget_old_jobs();
        self.runtime.checkpoint_due = true;
        Ok(Applied::Job { id: position })
    }

    /// Starts (or, after a restart, restarts) deletion `id`'s build over the sealed raw files
    /// (`files`, or as the log holds them now).
    fn start_delete_build(
        &mut self,
        id: u64,
        files: Option<Vec<tidemark_storage::raw::partition_log::SealedFile>>,
    ) -> Result<()> {
        let info = self
            .state
            .jobs
            .get(&id)
            .ok_or_else(|| Error::Internal(format!("no deletion {id}")))?;
        let filter = info
            .filter
            .clone()
            .ok_or_else(|| Error::Internal(format!("deletion {id} has no filter")))?;
        let build = self.build_input(id)?;
        let ds = self
            .state
            .datasources
            .get(&build.datasource)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "deletion {id}: datasource {} has no state here",
                    build.datasource
                ))
            })?;
        // Intervals before the raw horizon: their segments as they were at the job's start.
        let rollups = match info.rollups_before_ms {
            Some(cutoff) => {
                let inputs = ds
                    .segments_by_interval(build.start_ms, cutoff, id)
                    .map_err(Error::Internal)?;
                let count = build
                    .spec
                    .metrics
                    .iter()
                    .position(|m| m.kind == tidemark_catalog::MetricKind::Count);
                let count = count
                    .ok_or_else(|| Error::Internal(format!("deletion {id}: no count metric")))?;
                Some(delete::Rollups {
                    cutoff,
                    inputs,
                    count,
                })
            }
            None => None,
        };
        let input = delete::DeleteInput {
            filter: filter.compile(build.rules.as_deref()),
            files: files.unwrap_or_else(|| ds.sealed_raw_before(id)),
            journal: delete::read_journal(&self.config.data_dir, id),
            rollups,
            build,
        };
        let b = &input.build;
        let (datasource, start_ms, end_ms, name) =
            (b.datasource, b.start_ms, b.end_ms, b.name.clone());
        let run = Running::spawn_with(
            id,
            datasource,
            start_ms,
            end_ms,
            name,
            move |progress, cancel| delete::build(&input, progress, cancel),
        )?;
        self.runtime.running.insert(id, run);
        Ok(())
    }

    /// Drops the whole segment intervals inside [`start_ms`, `end_ms`), recorded as a job of
    /// kind `drop` with what it removed.
    fn drop_interval(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        datasource: DatasourceId,
        start_ms: i64,
        end_ms: i64,
        actor: String,
    ) -> Result<Applied> {
        let Some(entry) = self
            .state
            .catalog
            .by_id(datasource)
            .filter(|e| e.deleted.is_none())
        else {
            return refused(
                format!("datasource {datasource} does not exist"),
                RefusalStatus::NotFound,
            );
        };
        let spec = entry.spec_at(position);
        let name = spec.name.clone();
        let seg = spec.granularity.segment.clone();
        // Only whole intervals: a drop never takes more than it was asked for.
        let start = match seg.bucket_start(start_ms) {
            s if s == start_ms => s,
            s => s + seg.millis(),
        };
        let end = seg.bucket_start(end_ms);
        if end <= start {
            return refused(
                format!(
                    "{start_ms}..{end_ms} (ms) holds no whole {} segment interval of {name:?}",
                    seg
                ),
                RefusalStatus::Invalid,
            );
        }
        if let Some(refusal) =
            self.make_way(position, writer_time_ms, datasource, &name, start, end)?
        {
            return Ok(refusal);
        }
        // Shards written for the interval must be in the timeline (or known in flight) first.
        self.publish_persisted(false)?;
        let Some(ds) = self.state.datasources.get_mut(&datasource) else {
            return refused(
                format!("datasource {name:?} has no data on this node"),
                RefusalStatus::NotFound,
            );
        };
        let (files, segments, events) = ds.drop_range(start, end, position);
        self.runtime
            .obsolete
            .extend(files.into_iter().map(|f| (position, f)));
        let mut info = JobRecord::new(
            position,
            JobKind::Drop,
            (datasource, name),
            (start, end),
            actor,
            writer_time_ms,
        );
        info.events = events;
        info.segments_replaced = segments;
        self.state.jobs.insert(position, info.done_at_start());
        self.forget_old_jobs();
        self.runtime.checkpoint_due = true;
        Ok(Applied::Job { id: position })
    }

    /// Raw log and rejects retention for one datasource, recorded as a job of kind `retain`.
    fn retain(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        datasource: DatasourceId,
        raw_before_ms: Option<i64>,
        rejects_before_ms: Option<i64>,
        actor: String,
    ) -> Result<Applied> {
        let Some(entry) = self
            .state
            .catalog
            .by_id(datasource)
            .filter(|e| e.deleted.is_none())
        else {
            return refused(
                format!("datasource {datasource} does not exist"),
                RefusalStatus::NotFound,
            );
        };
        let name = entry.current().name.clone();
        let applied = self.state.applied_position;
        let Some(ds) = self.state.datasources.get_mut(&datasource) else {
            return refused(
                format!("datasource {name:?} has no data on this node"),
                RefusalStatus::NotFound,
            );
        };
        let files = raw_before_ms
            .map(|cutoff| ds.drop_raw_before(cutoff, applied))
            .unwrap_or_default();
        // Data and index files: count the data files.
        let files_removed = files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "raw"))
            .count() as u64;
        let data_dir = self.config.data_dir.clone();
        self.runtime.obsolete.extend(files.into_iter().map(|f| {
            (
                position,
                f.strip_prefix(&data_dir)
                    .map(|r| r.to_path_buf())
                    .unwrap_or(f),
            )
        }));
        let rejects = rejects_before_ms
            .map_or(0, |cutoff| self.state.rejects.remove_before(&name, cutoff))
            as u64;
        let cutoff = raw_before_ms.or(rejects_before_ms).unwrap_or(0);
        let mut info = JobRecord::new(
            position,
            JobKind::Retain,
            (datasource, name),
            (cutoff, cutoff),
            actor,
            writer_time_ms,
        );
        info.rejected = rejects;
        info.files_removed = files_removed;
        self.state.jobs.insert(position, info.done_at_start());
        self.forget_old_jobs();
        self.runtime.checkpoint_due = true;
        Ok(Applied::Job { id: position })
    }

    /// Segment retention, by the writer's clock `now_ms`: for each datasource whose rule
    /// keeps segments for a period, a drop of the whole intervals that ended before it.
    /// Pure: the leader logs them.
    pub fn retention_decisions(&self, now_ms: i64) -> Vec<TimelineCommand> {
        let mut out = Vec::new();
        for (name, rule) in self.state.catalog.retention().current() {
            let Some(entry) = self.state.catalog.get(name).filter(|e| e.deleted.is_none()) else {
                continue;
            };
            let Some(ds) = self.state.datasources.get(&entry.id) else {
                continue;
            };
            let cutoff = |p: &tidemark_catalog::Period| now_ms.saturating_sub(p.millis());
            // Raw files a running job (a reindex reading them) still needs wait for it.
            let raw = rule
                .value
                .raw
                .as_ref()
                .map(cutoff)
                .filter(|c| ds.raw_files_before(*c, self.state.applied_position) > 0)
                .filter(|c| self.jobs_before(entry.id, *c).is_empty());
            let rejects = rule
                .value
                .rejects
                .as_ref()
                .map(cutoff)
                .filter(|c| self.state.rejects.count_before(name, *c) > 0);
            if raw.is_some() || rejects.is_some() {
                out.push(TimelineCommand::Retain {
                    datasource: entry.id,
                    raw_before_ms: raw,
                    rejects_before_ms: rejects,
                    actor: format!("system:retention ({name})"),
                    spare_running_jobs: true,
                });
            }
            let Some(period) = &rule.value.segments else {
                continue;
            };
            let seg = &entry.current().granularity.segment;
            let end = seg.bucket_start(now_ms.saturating_sub(period.millis()));
            let busy = self
                .runtime
                .running
                .values()
                .any(|r| r.datasource == entry.id && r.start_ms < end);
            if let Some(start) = ds.earliest_interval_before(end).filter(|_| !busy) {
                out.push(TimelineCommand::Drop {
                    datasource: entry.id,
                    start_ms: start,
                    end_ms: end,
                    actor: format!("system:retention ({name} keeps segments for {period})"),
                });
            }
        }
        out
    }

    /// Running jobs of `datasource` over an interval that starts before `end`: what a
    /// retention removal before `end` waits for. Read from the applied job records (not the
    /// node's running builds), so apply decides the same on every replica and replay.
    fn jobs_before(&self, datasource: DatasourceId, end: i64) -> Vec<u64> {
        self.state
            .jobs
            .values()
            .filter(|j| {
                j.state == JobState::Running && j.datasource_id == datasource && j.start_ms < end
            })
            .map(|j| j.id)
            .collect()
    }

    /// What `rule` would remove from datasource `name` now, by writer time `now_ms`, as
    /// [`Engine::retention_decisions`] would decide it (the same cut-offs), counted: for a
    /// dry run, the answer of a real change, and its audit row. `None` if there is no such
    /// datasource.
    pub fn retention_preview(
        &self,
        name: &str,
        rule: &tidemark_catalog::retention::Retention,
        now_ms: i64,
    ) -> Option<RetentionPreview> {
        let entry = self
            .state
            .catalog
            .get(name)
            .filter(|e| e.deleted.is_none())?;
        let ds = self.state.datasources.get(&entry.id)?;
        let cutoff = |p: &tidemark_catalog::Period| now_ms.saturating_sub(p.millis());
        let mut preview = RetentionPreview::default();
        if let Some(before) = rule.raw.as_ref().map(cutoff) {
            let (files, events, bytes) =
                ds.raw_removable_before(before, self.state.applied_position);
            preview.raw = Some(Removal {
                before_ms: before,
                intervals: None,
                files: Some(files),
                events,
                bytes,
            });
            preview
                .waiting_for_jobs
                .extend(self.jobs_before(entry.id, before));
        }
        if let Some(period) = &rule.segments {
            let end = entry
                .current()
                .granularity
                .segment
                .bucket_start(cutoff(period));
            let (intervals, events, bytes) = ds.intervals_before(end);
            preview.segments = Some(Removal {
                before_ms: end,
                intervals: Some(intervals),
                files: None,
                events,
                bytes,
            });
            preview
                .waiting_for_jobs
                .extend(self.jobs_before(entry.id, end));
        }
        if let Some(before) = rule.rejects.as_ref().map(cutoff) {
            let (rows, bytes) = self.state.rejects.measure_before(name, before);
            preview.rejects = Some(Removal {
                before_ms: before,
                intervals: None,
                files: None,
                events: rows,
                bytes,
            });
        }
        preview.waiting_for_jobs.sort_unstable();
        preview.waiting_for_jobs.dedup();
        Some(preview)
    }

    /// Automatic compaction, by the writer's clock `now_ms`: the oldest settled interval (closed
    /// past its late window and ten minutes more, so stragglers have landed) that has several
    /// shards is merged into one. One job at a time on the node is the CPU budget: nothing is
    /// decided while any job runs. Pure: the leader logs it.
    pub fn compaction_decisions(&self, now_ms: i64) -> Vec<TimelineCommand> {
        const SETTLE_MS: i64 = 10 * 60_000;
        if !self.runtime.running.is_empty() {
            return Vec::new();
        }
        for ds in self.state.datasources.values() {
            let Some(entry) = self
                .state
                .catalog
                .by_id(ds.id)
                .filter(|e| e.deleted.is_none())
            else {
                continue;
            };
            let spec = entry.current();
            let seg_ms = spec.granularity.segment.millis();
            let settled_before = now_ms - spec.late_window.millis() - SETTLE_MS;
            // The coarsest granularity an age rule asks of the interval, if any.
            let due = |interval: i64| {
                spec.rollup_rules
                    .iter()
                    .rev()
                    .find(|r| interval + seg_ms <= now_ms.saturating_sub(r.after.millis()))
                    .map(|r| r.granularity.clone())
            };
            if let Some((interval, granularity)) =
                ds.compaction_candidate(seg_ms, settled_before, due)
            {
                return vec![TimelineCommand::Compact {
                    datasource: ds.id,
                    start_ms: interval,
                    end_ms: interval + seg_ms,
                    granularity,
                    actor: AUTO_COMPACTION_ACTOR.into(),
                }];
            }
        }
        Vec::new()
    }

    /// Clears [`start`, `end`) of `datasource` for a new job at `position`: automatic
    /// compactions there are preempted (cancelled at this same entry, so every replica agrees);
    /// any other job running there refuses the new one.
    fn make_way(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        datasource: DatasourceId,
        name: &str,
        start: i64,
        end: i64,
    ) -> Result<Option<Applied>> {
        let overlapping: Vec<u64> = self
            .runtime
            .running
            .iter()
            .filter(|(_, r)| r.datasource == datasource && r.start_ms < end && start < r.end_ms)
            .map(|(id, _)| *id)
            .collect();
        let automatic = |id: &u64| {
            self.state
                .jobs
                .get(id)
                .is_some_and(|j| j.actor == AUTO_COMPACTION_ACTOR)
        };
        if let Some(other) = overlapping.iter().find(|id| !automatic(id)) {
            return Ok(Some(Applied::Refused {
                reason: format!(
                    "job {other} of {name:?} covers part of this interval; wait for it or cancel it"
                ),
                status: RefusalStatus::Conflict,
            }));
        }
        for id in overlapping {
            self.cancel_reindex(
                position,
                writer_time_ms,
                id,
                format!("preempted by job {position}"),
            )?;
        }
        Ok(None)
    }

    /// Whether job `id`'s build is over on this node (or it is not running here at all): a
    /// `Publish` applies without waiting under the engine lock.
    pub fn job_built(&self, id: u64) -> bool {
        self.runtime
            .running
            .get(&id)
            .is_none_or(|r| r.peek().is_some())
    }

    /// The leader's decisions for finished builds: publish a good one, cancel a failed one.
    /// Pure: the caller logs them.
    pub fn reindex_decisions(&self) -> Vec<TimelineCommand> {
        self.runtime
            .running
            .iter()
            .filter_map(|(job, run)| match run.peek()? {
                Ok(()) => Some(TimelineCommand::Publish { job: *job }),
                Err(reason) => Some(TimelineCommand::Cancel {
                    job: *job,
                    reason: format!("the build failed: {reason}"),
                }),
            })
            .collect()
    }

    /// Every job the node remembers, with the progress of running builds.
    pub fn jobs_now(&self) -> Vec<JobRecord> {
        self.state
            .jobs
            .values()
            .map(|j| {
                let mut j = j.clone();
                if let Some(run) = self.runtime.running.get(&j.id) {
                    j.batches_total = j
                        .batches_total
                        .max(run.progress.batches_total.load(Ordering::Relaxed));
                    j.batches_done = run.progress.batches_done.load(Ordering::Relaxed);
                    j.events = run.progress.events.load(Ordering::Relaxed);
                    j.rejected = run.progress.rejected.load(Ordering::Relaxed);
                }
                self.with_copy_progress(&mut j);
                j
            })
            .collect()
    }

    /// Keeps the newest [`job::JOBS_KEPT`] jobs; running ones are never forgotten.
    pub(super) fn forget_old_jobs(&mut self) {
        while self.state.jobs.len() > super::job::JOBS_KEPT {
            let Some(oldest) = self
                .state
                .jobs
                .values()
                .find(|j| j.state != JobState::Running)
                .map(|j| j.id)
            else {
                break;
            };
            self.state.jobs.remove(&oldest);
        }
    }
}

/// What a retention rule would remove now, form by form (`None`: the form is kept forever).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetentionPreview {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw: Option<Removal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<Removal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejects: Option<Removal>,
    /// Running jobs over what the rule would remove: the removal waits until they end.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_for_jobs: Vec<u64>,
}

/// One form's share of a [`RetentionPreview`]: what lies before `before_ms` (event time for
/// raw files and segment intervals, arrival time for rejects).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Removal {
    pub before_ms: i64,
    /// Whole intervals (segments and realtime indexes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intervals: Option<u64>,
    /// Raw log files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Events (raw records, events rolled into segments, reject rows).
    pub events: u64,
    pub bytes: u64,
}
