//! Compaction: the shards of an interval (late events and restarts make several) merged into
//! one segment, optionally rolled up to a coarser query granularity, from the segments
//! themselves. Rows are merged, never recomputed: counts and sums add, min and max compare,
//! HLL sketches union and t-digests merge, so compaction works after raw retention has
//! removed the raw log. Like a reindex it publishes as a new version in one log entry (see
//! `reindex.rs`); unlike a reindex it freezes nothing, since realtime rows are not its input.
//!
//! Invariant: the result depends only on the input segments (identical on every replica) and
//! their order (interval, version, shard, then row), so every replica writes the same bytes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, ArrayRef};
use tidemark_catalog::{DatasourceId, DatasourceSpec, MetricKind, Period};

use crate::checkpoint::SegmentRecord;
use crate::reindex::{Built, Progress, write_built};
use crate::{Error, Result};
use tidemark_storage::rollup::{RollupIndex, RowMetric};
use tidemark_storage::segment::Segment;

/// Everything a compaction needs, fixed at its start.
#[derive(Debug)]
pub(crate) struct CompactInput {
    pub(crate) job: u64,
    pub(crate) datasource: DatasourceId,
    pub(crate) data_dir: std::path::PathBuf,
    pub(crate) spec: DatasourceSpec,
    /// The query granularity of the result (the spec's, or a coarser one).
    pub(crate) granularity: Period,
    /// Interval start → its shards, in (version, shard) order.
    pub(crate) inputs: BTreeMap<i64, Vec<(SegmentRecord, Arc<Segment>)>>,
    /// Interval start → the new shard's number.
    pub(crate) shards: BTreeMap<i64, u32>,
}

/// A segment column as compaction reads it.
enum Column<'a> {
    Missing,
    Time(&'a arrow_array::PrimitiveArray<TimestampMillisecondType>),
    Dim(
        &'a arrow_array::DictionaryArray<Int32Type>,
        &'a arrow_array::StringArray,
    ),
    Int(&'a arrow_array::PrimitiveArray<Int64Type>),
    Float(&'a arrow_array::PrimitiveArray<Float64Type>),
    Bytes(&'a arrow_array::BinaryArray),
}

fn column<'a>(array: Option<&'a ArrayRef>, name: &str) -> Result<Column<'a>> {
    let Some(a) = array else {
        return Ok(Column::Missing);
    };
    let wrong = || Error::Internal(format!("segment column {name} has type {}", a.data_type()));
    Ok(match a.data_type() {
        arrow_schema::DataType::Timestamp(..) => {
            Column::Time(a.as_primitive_opt().ok_or_else(wrong)?)
        }
        arrow_schema::DataType::Dictionary(..) => {
            let d = a.as_dictionary_opt::<Int32Type>().ok_or_else(wrong)?;
            Column::Dim(d, d.values().as_string_opt::<i32>().ok_or_else(wrong)?)
        }
        arrow_schema::DataType::Int64 => Column::Int(a.as_primitive_opt().ok_or_else(wrong)?),
        arrow_schema::DataType::Float64 => Column::Float(a.as_primitive_opt().ok_or_else(wrong)?),
        arrow_schema::DataType::Binary => Column::Bytes(a.as_binary_opt().ok_or_else(wrong)?),
        _ => return Err(wrong()),
    })
}

pub(crate) fn build(
    input: &CompactInput,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<Vec<Built>> {
    let spec = &input.spec;
    let mut built = Vec::new();
    for (interval, shards) in &input.inputs {
        let mut index = RollupIndex::with_granularity(spec, input.granularity.clone());
        for (_, seg) in shards {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Internal("cancelled".into()));
            }
            merge_segment(&mut index, spec, seg, None)?;
            progress.batches_done.fetch_add(1, Ordering::Relaxed);
            progress
                .events
                .fetch_add(seg.meta().events, Ordering::Relaxed);
        }
        if index.is_empty() {
            continue;
        }
        let shard = input.shards.get(interval).copied().unwrap_or(0);
        built.push(write_built(
            &input.data_dir,
            input.datasource,
            spec,
            *interval,
            input.job,
            shard,
            &index,
        )?);
    }
    Ok(built)
}

/// Rows a deletion takes out of rolled-up segments: those `filter` matches by their
/// dimension values; `count` is the spec's count metric, which says how many events a row
/// stands for.
pub(crate) struct RowDrop<'a> {
    pub(crate) filter: &'a tidemark_catalog::record_filter::CompiledFilter,
    pub(crate) count: usize,
}

/// The intervals' shards rewritten without the rows `drop` matches, one segment per interval
/// that lost a row (at the coarsest granularity among its shards), with the events removed.
/// What a deletion does where raw retention has removed the beacons.
pub(crate) fn build_without(
    input: &CompactInput,
    drop: &RowDrop<'_>,
    cancel: &AtomicBool,
) -> Result<(Vec<Built>, std::collections::BTreeSet<i64>, u64)> {
    let spec = &input.spec;
    let (mut built, mut intervals, mut removed) =
        (Vec::new(), std::collections::BTreeSet::new(), 0);
    for (interval, shards) in &input.inputs {
        let granularity = shards
            .iter()
            .filter_map(|(_, s)| Period::parse(&s.meta().query_granularity).ok())
            .max_by_key(Period::millis)
            .unwrap_or_else(|| spec.granularity.query.clone());
        let mut index = RollupIndex::with_granularity(spec, granularity);
        let mut here = 0;
        for (_, seg) in shards {
            if cancel.load(Ordering::Relaxed) {
                return Err(Error::Internal("cancelled".into()));
            }
            here += merge_segment(&mut index, spec, seg, Some(drop))?;
        }
        if here == 0 {
            continue;
        }
        removed += here;
        intervals.insert(*interval);
        if index.is_empty() {
            continue;
        }
        let shard = input.shards.get(interval).copied().unwrap_or(0);
        built.push(write_built(
            &input.data_dir,
            input.datasource,
            spec,
            *interval,
            input.job,
            shard,
            &index,
        )?);
    }
    Ok((built, intervals, removed))
}

/// Folds every row of `seg` into `index` (but those `drop` matches); answers the events of
/// the rows dropped. Columns the segment predates read as null.
fn merge_segment(
    index: &mut RollupIndex,
    spec: &DatasourceSpec,
    seg: &Segment,
    drop: Option<&RowDrop<'_>>,
) -> Result<u64> {
    let rows = seg.rows();
    let read = |name: &str| -> Result<Option<ArrayRef>> {
        if seg.meta().column(name).is_none() {
            return Ok(None);
        }
        Ok(seg.column(name).map(Some)?)
    };
    let time = read(tidemark_catalog::spec::TIME_COLUMN)?;
    let Column::Time(time) = column(time.as_ref(), tidemark_catalog::spec::TIME_COLUMN)? else {
        return Err(Error::Internal("a segment without its time column".into()));
    };
    let dim_arrays: Vec<Option<ArrayRef>> = spec
        .dimensions
        .iter()
        .map(|d| read(d))
        .collect::<Result<_>>()?;
    let dims: Vec<Column<'_>> = dim_arrays
        .iter()
        .zip(&spec.dimensions)
        .map(|(a, n)| column(a.as_ref(), n))
        .collect::<Result<_>>()?;
    let metric_arrays: Vec<Option<ArrayRef>> = spec
        .metrics
        .iter()
        .map(|m| read(&m.name))
        .collect::<Result<_>>()?;
    let metrics: Vec<Column<'_>> = metric_arrays
        .iter()
        .zip(&spec.metrics)
        .map(|(a, m)| column(a.as_ref(), &m.name))
        .collect::<Result<_>>()?;
    let mut dropped = 0u64;
    let mut dim_values: Vec<Option<&str>> = Vec::with_capacity(dims.len());
    let mut metric_values: Vec<RowMetric<'_>> = Vec::with_capacity(metrics.len());
    for row in 0..rows {
        dim_values.clear();
        for d in &dims {
            dim_values.push(match d {
                Column::Dim(keys, values) if keys.is_valid(row) => {
                    let k = keys.keys().value(row);
                    usize::try_from(k)
                        .ok()
                        .filter(|k| *k < values.len())
                        .map(|k| values.value(k))
                }
                _ => None,
            });
        }
        metric_values.clear();
        for (m, def) in metrics.iter().zip(&spec.metrics) {
            metric_values.push(match m {
                Column::Int(a) if a.is_valid(row) => match def.kind {
                    MetricKind::Count => RowMetric::Count(a.value(row).max(0) as u64),
                    _ => RowMetric::Long(a.value(row)),
                },
                Column::Float(a) if a.is_valid(row) => RowMetric::Double(a.value(row)),
                Column::Bytes(a) if a.is_valid(row) => RowMetric::State(a.value(row)),
                _ => RowMetric::Null,
            });
        }
        if let Some(drop) = drop {
            let value = |tag: &str| {
                let i = spec.dimensions.iter().position(|d| d == tag)?;
                dim_values.get(i).copied().flatten().map(str::to_string)
            };
            if drop.filter.matches_row(&value) {
                if let Some(RowMetric::Count(n)) = metric_values.get(drop.count) {
                    dropped += n;
                }
                continue;
            }
            index.merge_row(time.value(row), &dim_values, &metric_values, 0)?;
            continue;
        }
        // The segment's event total goes with its first row, so the compacted segment counts
        // exactly the events of its inputs whatever metrics the spec has.
        let events = if row == 0 { seg.meta().events } else { 0 };
        index.merge_row(time.value(row), &dim_values, &metric_values, events)?;
    }
    if drop.is_some() {
        index.add_events(seg.meta().events.saturating_sub(dropped));
    }
    Ok(dropped)
}
