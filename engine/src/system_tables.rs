//! `sys.datasources`, `sys.segments`, `sys.rejects`, `sys.tags`, `sys.audit`,
//! `sys.retention` and `sys.jobs` as Arrow batches.

use std::sync::Arc;

use arrow_array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};

use crate::Engine;

pub(crate) const NAMES: [&str; 7] = [
    "datasources",
    "segments",
    "rejects",
    "tags",
    "audit",
    "retention",
    "jobs",
];

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn batch(fields: Vec<Field>, columns: Vec<ArrayRef>) -> Option<RecordBatch> {
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).ok()
}

pub(crate) fn build(engine: &Engine, name: &str) -> Option<RecordBatch> {
    match name {
        "datasources" => datasources(engine),
        "segments" => segments(engine),
        "rejects" => rejects(engine),
        "tags" => tags(engine),
        "audit" => audit(engine),
        "retention" => retention(engine),
        "jobs" => jobs(engine),
        _ => None,
    }
}

fn datasources(engine: &Engine) -> Option<RecordBatch> {
    let entries: Vec<_> = engine.state.catalog.datasources().collect();
    let state = |e: &&tidemark_catalog::DatasourceEntry| engine.state.datasources.get(&e.id);
    let spec_json: Vec<String> = entries
        .iter()
        .map(|e| serde_json::to_string(e.current()).unwrap_or_default())
        .collect();
    batch(
        vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("id", DataType::Utf8, false),
            Field::new("partitions", DataType::UInt32, false),
            Field::new("query_granularity", DataType::Utf8, false),
            Field::new("segment_granularity", DataType::Utf8, false),
            Field::new("dimensions", DataType::Utf8, false),
            Field::new("metrics", DataType::Utf8, false),
            Field::new("spec_versions", DataType::UInt64, false),
            Field::new("spec_position", DataType::UInt64, false),
            Field::new("segments", DataType::UInt64, false),
            Field::new("realtime_rows", DataType::UInt64, false),
            Field::new("events_ingested", DataType::UInt64, false),
            Field::new("events_rejected", DataType::UInt64, false),
            Field::new("spec", DataType::Utf8, false),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                entries.iter().map(|e| e.current().name.clone()),
            )),
            Arc::new(StringArray::from_iter_values(
                entries.iter().map(|e| e.id.to_string()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                entries.iter().map(|e| e.current().partitions),
            )),
            Arc::new(StringArray::from_iter_values(
                entries
                    .iter()
                    .map(|e| e.current().granularity.query.to_string()),
            )),
            Arc::new(StringArray::from_iter_values(
                entries
                    .iter()
                    .map(|e| e.current().granularity.segment.to_string()),
            )),
            Arc::new(StringArray::from_iter_values(
                entries.iter().map(|e| e.current().dimensions.join(",")),
            )),
            Arc::new(StringArray::from_iter_values(entries.iter().map(|e| {
                e.current()
                    .metrics
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            }))),
            Arc::new(UInt64Array::from_iter_values(
                entries.iter().map(|e| e.versions.len() as u64),
            )),
            Arc::new(UInt64Array::from_iter_values(
                entries
                    .iter()
                    .map(|e| e.versions.last().map_or(0, |v| v.position)),
            )),
            Arc::new(UInt64Array::from_iter_values(
                entries
                    .iter()
                    .map(|e| state(e).map_or(0, |d| d.segment_count() as u64)),
            )),
            Arc::new(UInt64Array::from_iter_values(
                entries
                    .iter()
                    .map(|e| state(e).map_or(0, |d| d.realtime_rows())),
            )),
            Arc::new(UInt64Array::from_iter_values(
                entries
                    .iter()
                    .map(|e| state(e).map_or(0, |d| d.events_ingested)),
            )),
            Arc::new(UInt64Array::from_iter_values(
                entries
                    .iter()
                    .map(|e| state(e).map_or(0, |d| d.events_rejected)),
            )),
            Arc::new(StringArray::from_iter_values(spec_json)),
        ],
    )
}

fn segments(engine: &Engine) -> Option<RecordBatch> {
    let live: Vec<_> = engine
        .state
        .catalog
        .datasources()
        .filter_map(|e| engine.state.datasources.get(&e.id))
        .flat_map(|ds| ds.segment_records())
        .collect();
    batch(
        vec![
            Field::new("datasource", DataType::Utf8, false),
            Field::new("segment_id", DataType::Utf8, false),
            Field::new("interval_start", ts_type(), false),
            Field::new("interval_end", ts_type(), false),
            Field::new("version", DataType::Utf8, false),
            Field::new("shard", DataType::UInt32, false),
            Field::new("rows", DataType::UInt64, false),
            Field::new("events", DataType::UInt64, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("published_at", DataType::UInt64, false),
            Field::new("file", DataType::Utf8, false),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                live.iter().map(|r| r.id.datasource.clone()),
            )),
            Arc::new(StringArray::from_iter_values(
                live.iter().map(|r| r.id.to_string()),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    live.iter().map(|r| r.id.interval_start_ms),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    live.iter().map(|r| r.id.interval_end_ms),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                live.iter().map(|r| r.id.version.clone()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                live.iter().map(|r| r.id.shard),
            )),
            Arc::new(UInt64Array::from_iter_values(live.iter().map(|r| r.rows))),
            Arc::new(UInt64Array::from_iter_values(live.iter().map(|r| r.events))),
            Arc::new(UInt64Array::from_iter_values(
                live.iter().map(|r| r.file_bytes),
            )),
            Arc::new(UInt64Array::from_iter_values(
                live.iter().map(|r| r.published_at),
            )),
            Arc::new(StringArray::from_iter_values(
                live.iter().map(|r| r.file.display().to_string()),
            )),
        ],
    )
}

fn rejects(engine: &Engine) -> Option<RecordBatch> {
    let rows: Vec<_> = engine.state.rejects.rows().collect();
    batch(
        vec![
            Field::new("datasource", DataType::Utf8, false),
            Field::new("partition", DataType::UInt32, false),
            Field::new("offset", DataType::Int64, false),
            Field::new("log_position", DataType::UInt64, false),
            Field::new("received_at", ts_type(), false),
            Field::new("record_index", DataType::UInt32, false),
            Field::new("code", DataType::UInt32, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("payload", DataType::Utf8, false),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.datasource.clone()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.partition),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset))),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.log_position),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.writer_time_ms))
                    .with_timezone("UTC"),
            ),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.record_index),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| u32::from(r.code)),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.reason.clone()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.payload.clone()),
            )),
        ],
    )
}

/// The tag registry as it is now: one row per tag of every governance domain.
fn tags(engine: &Engine) -> Option<RecordBatch> {
    let mut rows = Vec::new();
    for d in engine.state.catalog.governance().domains() {
        for t in d.tags_at(u64::MAX) {
            let position = d.tag_history(&t.name).last().map_or(0, |v| v.position);
            rows.push((d, t, position));
        }
    }
    let text = |f: &dyn Fn(&tidemark_catalog::governance::Tag) -> String| {
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|(_, t, _)| f(t)),
        )) as ArrayRef
    };
    let forms = |t: &tidemark_catalog::governance::Tag| {
        t.required_in
            .iter()
            .map(|f| {
                serde_json::to_value(f)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let kind = |t: &tidemark_catalog::governance::Tag| {
        serde_json::to_value(t.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    batch(
        vec![
            Field::new("domain", DataType::Utf8, false),
            Field::new("tag", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("aliases", DataType::Utf8, false),
            Field::new("required_in", DataType::Utf8, false),
            Field::new("owner_team", DataType::Utf8, false),
            Field::new("description", DataType::Utf8, false),
            Field::new("position", DataType::UInt64, false),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(d, _, _)| d.name.clone()),
            )),
            text(&|t| t.name.clone()),
            text(&kind),
            text(&|t| t.ty.name().to_string()),
            text(&|t| t.status.name().to_string()),
            text(&|t| t.aliases.join(",")),
            text(&forms),
            text(&|t| t.owner_team.clone()),
            text(&|t| t.description.clone()),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|(_, _, p)| *p),
            )),
        ],
    )
}

/// Every catalog change still in the audit log, oldest first: who, when, what, before, after
/// (JSON; null when the object did not exist).
fn audit(engine: &Engine) -> Option<RecordBatch> {
    let rows: Vec<_> = engine.state.catalog.audit().rows().collect();
    let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
    batch(
        vec![
            Field::new("log_position", DataType::UInt64, false),
            Field::new("time", ts_type(), false),
            Field::new("actor", DataType::Utf8, false),
            Field::new("op", DataType::Utf8, false),
            Field::new("object", DataType::Utf8, false),
            Field::new("before", DataType::Utf8, true),
            Field::new("after", DataType::Utf8, true),
        ],
        vec![
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.position),
            )),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(rows.iter().map(|r| r.time_ms))
                    .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.actor.clone()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.op.clone()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.object.clone()),
            )),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| json(&r.before)))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| json(&r.after)))),
        ],
    )
}

/// Each datasource's retention rule in force: one row per datasource that has one; a null
/// period keeps that form forever.
fn retention(engine: &Engine) -> Option<RecordBatch> {
    let rows: Vec<_> = engine.state.catalog.retention().current().collect();
    let form = |i: usize| {
        Arc::new(StringArray::from_iter(
            rows.iter()
                .map(|(_, v)| v.value.forms()[i].1.map(|p| p.to_string())),
        )) as ArrayRef
    };
    batch(
        vec![
            Field::new("datasource", DataType::Utf8, false),
            Field::new("raw", DataType::Utf8, true),
            Field::new("segments", DataType::Utf8, true),
            Field::new("rejects", DataType::Utf8, true),
            Field::new("fulltext", DataType::Utf8, true),
            Field::new("position", DataType::UInt64, false),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|(n, _)| n.to_string()),
            )),
            form(0),
            form(1),
            form(2),
            form(3),
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|(_, v)| v.position),
            )),
        ],
    )
}

/// Long jobs (reindexes, compactions, deletions, drops, retention, exports, backups),
/// running and finished, with their progress.
fn jobs(engine: &Engine) -> Option<RecordBatch> {
    let jobs = engine.jobs_now();
    let ts = |f: &dyn Fn(&crate::job::JobRecord) -> Option<i64>| {
        Arc::new(TimestampMillisecondArray::from_iter(jobs.iter().map(f)).with_timezone("UTC"))
            as ArrayRef
    };
    let u64s = |f: &dyn Fn(&crate::job::JobRecord) -> u64| {
        Arc::new(UInt64Array::from_iter_values(jobs.iter().map(f))) as ArrayRef
    };
    batch(
        vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("datasource", DataType::Utf8, false),
            Field::new("interval_start", ts_type(), true),
            Field::new("interval_end", ts_type(), true),
            Field::new("state", DataType::Utf8, false),
            Field::new("actor", DataType::Utf8, false),
            Field::new("started_at", ts_type(), true),
            Field::new("finished_at", ts_type(), true),
            Field::new("published_at", DataType::UInt64, true),
            Field::new("batches_done", DataType::UInt64, false),
            Field::new("batches_total", DataType::UInt64, false),
            Field::new("events", DataType::UInt64, false),
            Field::new("rejected", DataType::UInt64, false),
            Field::new("segments_replaced", DataType::UInt64, false),
            Field::new("segments_published", DataType::UInt64, false),
            Field::new("bytes_done", DataType::UInt64, false),
            Field::new("bytes_total", DataType::UInt64, false),
            Field::new("files_written", DataType::UInt64, false),
            Field::new("destination", DataType::Utf8, true),
            Field::new("error", DataType::Utf8, true),
        ],
        vec![
            u64s(&|j| j.id),
            Arc::new(StringArray::from_iter_values(
                jobs.iter().map(|j| j.kind.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                jobs.iter().map(|j| j.datasource.clone()),
            )),
            ts(&|j| Some(j.start_ms)),
            ts(&|j| Some(j.end_ms)),
            Arc::new(StringArray::from_iter_values(
                jobs.iter().map(|j| j.state.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                jobs.iter().map(|j| j.actor.clone()),
            )),
            ts(&|j| Some(j.started_ms)),
            ts(&|j| j.finished_ms),
            Arc::new(UInt64Array::from_iter(jobs.iter().map(|j| j.published_at))),
            u64s(&|j| j.batches_done),
            u64s(&|j| j.batches_total),
            u64s(&|j| j.events),
            u64s(&|j| j.rejected),
            u64s(&|j| j.segments_replaced),
            u64s(&|j| j.segments_published),
            u64s(&|j| j.bytes_done),
            u64s(&|j| j.bytes_total),
            u64s(&|j| j.files_written),
            Arc::new(StringArray::from_iter(
                jobs.iter().map(|j| j.destination.clone()),
            )),
            Arc::new(StringArray::from_iter(jobs.iter().map(|j| j.error.clone()))),
        ],
    )
}
