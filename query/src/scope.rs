//! Tenant scope: which rows a session may read (ARCHITECTURE.md, invariant 8).
//!
//! A merchant-scoped session sees, of every datasource that has a tenant dimension, only the
//! rows whose tenant value is one of its own, and nothing else: no system tables, no
//! datasource without a tenant dimension. The scope is applied where a scan takes its
//! snapshot, before pruning and before anything the SQL text can express (subqueries, joins,
//! UNION, CTEs, `information_schema`), so every plan reads the scoped rows only. The counts a
//! scan reports to `EXPLAIN` are counts of the scoped rows and of the segments that hold any of
//! them, so not even the size of another merchant's data shows.
//!
//! Invariant: a scoped view never holds a row outside the scope; an empty tenant list sees
//! nothing (fail closed).
//!
//! Invariant: a scoped scan hands DataFusion no value outside the scope's rows. Selecting rows
//! of a dictionary column keeps its whole dictionary (a segment's and the realtime index's
//! dictionaries hold every merchant, page and country of the interval), and Arrow evaluates
//! some expressions on dictionary values before rows are taken: a failing cast quoted another
//! merchant's id, and an Arrow IPC answer carried every dictionary whole. So every batch of a
//! scoped scan goes through [`only_used_values`], which rebuilds each dictionary from the
//! values its rows use.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_select::dictionary::garbage_collect_any_dictionary;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use roaring::RoaringBitmap;
use tidemark_catalog::DatasourceSpec;
use tidemark_storage::segment::Segment;
use tidemark_storage::snapshot::{SnapshotSource, TableSnapshot};

/// Which rows a session may read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every row of every table (analysts, admins, nodes without keys).
    #[default]
    All,
    /// Rows whose tenant dimension is one of these values.
    Tenants(Arc<BTreeSet<String>>),
}

/// A segment as a scoped session sees it.
#[derive(Debug, Clone)]
pub struct ScopedSegment {
    pub segment: Arc<Segment>,
    /// The rows inside the scope, or `None` for all of them.
    pub rows: Option<RoaringBitmap>,
}

impl ScopedSegment {
    pub fn row_count(&self) -> u64 {
        self.rows
            .as_ref()
            .map_or(self.segment.meta().rows, RoaringBitmap::len)
    }
}

impl Scope {
    pub fn tenants(values: impl IntoIterator<Item = String>) -> Self {
        Scope::Tenants(Arc::new(values.into_iter().collect()))
    }

    pub fn is_all(&self) -> bool {
        matches!(self, Scope::All)
    }

    /// Whether `sys.*` exists for this session: system tables describe every tenant's data.
    pub fn sees_system_tables(&self) -> bool {
        self.is_all()
    }

    /// Whether a datasource exists for this session: a scoped session needs a tenant
    /// dimension to filter on.
    pub fn sees(&self, spec: &DatasourceSpec) -> bool {
        self.is_all() || spec.tenant.is_some()
    }

    /// The datasources this session can name.
    pub fn table_names(&self, source: &dyn SnapshotSource) -> Vec<String> {
        if self.is_all() {
            return source.table_names();
        }
        source
            .table_names()
            .into_iter()
            .filter(|name| source.snapshot(name).is_some_and(|s| self.sees(&s.spec)))
            .collect()
    }

    /// A snapshot as this session may read it, or `None` if the datasource is not visible.
    pub fn restrict(&self, snap: TableSnapshot) -> Result<Option<ScopedSnapshot>> {
        let Scope::Tenants(tenants) = self else {
            let segments = snap
                .segments
                .iter()
                .map(|s| ScopedSegment {
                    segment: s.clone(),
                    rows: None,
                })
                .collect();
            return Ok(Some(ScopedSnapshot {
                segments,
                realtime: snap.realtime.clone(),
                snapshot: snap,
            }));
        };
        let Some(dim) = snap.spec.tenant.clone() else {
            return Ok(None);
        };
        let wanted: Vec<Option<&str>> = tenants.iter().map(|t| Some(t.as_str())).collect();
        let mut segments = Vec::new();
        for seg in &snap.segments {
            // A segment older than the tenant dimension reads it as null: no row is in scope.
            if seg.meta().column(&dim).is_none() {
                continue;
            }
            let rows = seg
                .rows_matching(&dim, &wanted)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            if !rows.is_empty() {
                segments.push(ScopedSegment {
                    segment: seg.clone(),
                    rows: Some(rows),
                });
            }
        }
        let mut realtime = Vec::new();
        for batch in &snap.realtime {
            let kept = keep_tenants(batch, &dim, tenants)?;
            if kept.num_rows() > 0 {
                realtime.push(kept);
            }
        }
        Ok(Some(ScopedSnapshot {
            segments,
            realtime,
            snapshot: snap,
        }))
    }
}

/// One datasource as a session may read it.
#[derive(Debug, Clone)]
pub struct ScopedSnapshot {
    pub segments: Vec<ScopedSegment>,
    pub realtime: Vec<RecordBatch>,
    /// The whole snapshot, for its spec, log position and unreadable segments.
    pub snapshot: TableSnapshot,
}

/// `batch` with each dictionary column rebuilt to hold only the values its rows use (the
/// second invariant above). Cost: one pass over the keys and a gather of the used values,
/// per dictionary column of each batch a scoped scan returns.
pub fn only_used_values(batch: RecordBatch) -> Result<RecordBatch> {
    if !batch
        .columns()
        .iter()
        .any(|c| matches!(c.data_type(), DataType::Dictionary(..)))
    {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.as_any_dictionary_opt() {
            Some(dictionary) => garbage_collect_any_dictionary(dictionary),
            None => Ok(c.clone()),
        })
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        batch.schema(),
        columns,
        &options,
    )?)
}

/// The rows of `batch` whose `dim` column holds one of `tenants`.
fn keep_tenants(batch: &RecordBatch, dim: &str, tenants: &BTreeSet<String>) -> Result<RecordBatch> {
    let Some(column) = batch.column_by_name(dim) else {
        return Ok(batch.slice(0, 0));
    };
    let mask = membership(column, tenants)?;
    Ok(filter_record_batch(batch, &mask)?)
}

fn membership(column: &ArrayRef, tenants: &BTreeSet<String>) -> Result<BooleanArray> {
    let keep = |v: Option<&str>| Some(v.is_some_and(|v| tenants.contains(v)));
    match column.data_type() {
        DataType::Utf8 => Ok(column.as_string::<i32>().iter().map(keep).collect()),
        DataType::LargeUtf8 => Ok(column.as_string::<i64>().iter().map(keep).collect()),
        DataType::Utf8View => Ok(column.as_string_view().iter().map(keep).collect()),
        DataType::Dictionary(_, value) if value.as_ref() == &DataType::Utf8 => {
            let cast = datafusion::arrow::compute::cast(column, &DataType::Utf8)?;
            Ok(cast.as_string::<i32>().iter().map(keep).collect())
        }
        other => Err(DataFusionError::Internal(format!(
            "the tenant column is {other}, not text; cannot apply a tenant scope (length {})",
            column.len()
        ))),
    }
}
