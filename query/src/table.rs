//! A datasource as a DataFusion table: `__time`, the dimensions and the metric columns of the
//! spec in force, read from a snapshot of segments plus the realtime index.
//!
//! The scan prunes segments by time, narrows rows with the dimension bitmaps, and touches only
//! projected columns; segment columns are Arrow arrays on the mapped file (no copy) unless a
//! bitmap selection picks rows out of them. Columns a segment predates (added by a spec
//! update) read as null.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array, new_null_array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use roaring::RoaringBitmap;
use tidemark_storage::segment::{Segment, table_schema};
use tidemark_storage::snapshot::SnapshotSource;

use crate::pruning::Pruning;
use crate::scan::{ScanReport, TidemarkScanExec};
use crate::scope::Scope;

/// Rows per batch handed to DataFusion (slices of segment columns, zero-copy).
pub const BATCH_ROWS: usize = 65_536;

pub const READ_ONLY_HINT: &str = "tidemark tables are written by ingest, not SQL: POST beacons to \
     /v1/beacons/{datasource} (JSON array or NDJSON) or produce to the datasource's Kafka topic";

#[derive(Debug)]
pub struct DatasourceTable {
    name: String,
    source: Arc<dyn SnapshotSource>,
    schema: SchemaRef,
    scope: Scope,
}

impl DatasourceTable {
    /// The table as of now; `None` if the datasource does not exist or `scope` cannot see it.
    pub fn open(name: &str, source: Arc<dyn SnapshotSource>, scope: Scope) -> Option<Self> {
        let snap = source.snapshot(name)?;
        if !scope.sees(&snap.spec) {
            return None;
        }
        let schema = Arc::new(table_schema(&snap.spec));
        Some(DatasourceTable {
            name: name.to_string(),
            source,
            schema,
            scope,
        })
    }
}

#[async_trait]
impl TableProvider for DatasourceTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: pruning keeps a superset; DataFusion re-applies every filter.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let gone = || {
            DataFusionError::Plan(format!(
                "datasource {:?} was deleted while planning",
                self.name
            ))
        };
        let snap = self.source.snapshot(&self.name).ok_or_else(gone)?;
        // Everything below reads the scoped view only: rows, segment and row counts alike.
        let view = self.scope.restrict(snap)?.ok_or_else(gone)?;
        let snap = &view.snapshot;
        let projection: Vec<usize> = projection
            .cloned()
            .unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        let projected = Arc::new(self.schema.project(&projection)?);
        let pruning = Pruning::from_filters(filters, &snap.spec.dimensions);
        // A segment this node cannot read (damaged, being repaired from a replica) fails the
        // query if the query could need it: an answer without its rows would be wrong.
        if let Some(u) = snap
            .unreadable
            .iter()
            .find(|u| pruning.time_overlaps(u.interval_start_ms, u.interval_end_ms - 1))
        {
            return Err(DataFusionError::Execution(format!(
                "datasource {:?}: segment {} is damaged on this node ({}) and is being repaired from a replica; \
                 query another node, or narrow the time range to leave out {}..{} (ms)",
                self.name, u.segment, u.reason, u.interval_start_ms, u.interval_end_ms
            )));
        }
        let mut report = ScanReport {
            datasource: self.name.clone(),
            log_position: snap.log_position,
            segments_total: view.segments.len(),
            pruning: pruning.to_string(),
            columns: projected
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect(),
            ..ScanReport::default()
        };

        let mut batches = Vec::new();
        for scoped in &view.segments {
            let seg = &scoped.segment;
            let meta = seg.meta();
            report.segment_rows_total += scoped.row_count();
            if meta.rows == 0 || !pruning.time_overlaps(meta.min_time_ms, meta.max_time_ms) {
                report.segments_pruned_by_time += 1;
                continue;
            }
            let selection =
                select_rows(seg, &pruning).map_err(|e| DataFusionError::External(Box::new(e)))?;
            let selection = match (selection, &scoped.rows) {
                (Some(s), Some(scope)) => Some(s & scope),
                (s, scope) => s.or_else(|| scope.clone()),
            };
            if selection.as_ref().is_some_and(RoaringBitmap::is_empty) {
                report.segments_pruned_by_bitmap += 1;
                continue;
            }
            let rows_read = selection.as_ref().map_or(meta.rows, RoaringBitmap::len);
            report.segment_rows_read += rows_read;
            let columns = segment_columns(seg, &projected, selection.as_ref())?;
            let total = rows_read as usize;
            let batch = RecordBatch::try_new_with_options(
                projected.clone(),
                columns,
                &RecordBatchOptions::new().with_row_count(Some(total)),
            )?;
            let mut offset = 0;
            while offset < total {
                let len = BATCH_ROWS.min(total - offset);
                batches.push(batch.slice(offset, len));
                offset += len;
            }
        }
        for rt in &view.realtime {
            report.realtime_rows += rt.num_rows() as u64;
            if rt.num_rows() > 0 {
                let projected_batch = rt.project(&projection)?;
                batches.push(projected_batch);
            }
        }
        if !self.scope.is_all() {
            batches = batches
                .into_iter()
                .map(crate::scope::only_used_values)
                .collect::<Result<_>>()?;
        }
        let n = state
            .config()
            .target_partitions()
            .max(1)
            .min(batches.len().max(1));
        let mut partitions: Vec<Vec<RecordBatch>> = vec![Vec::new(); n];
        for (i, b) in batches.into_iter().enumerate() {
            partitions[i % n].push(b);
        }
        Ok(Arc::new(TidemarkScanExec::new(
            projected, partitions, report,
        )))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        _input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::Plan(format!(
            "cannot INSERT into {}: {READ_ONLY_HINT}",
            self.name
        )))
    }
}

/// Rows of `seg` that pass the dimension conditions, or `None` when there are none to apply.
fn select_rows(
    seg: &Segment,
    pruning: &Pruning,
) -> tidemark_storage::Result<Option<RoaringBitmap>> {
    let mut selection: Option<RoaringBitmap> = None;
    for (dim, values) in &pruning.dimension_values {
        let rows = if seg.meta().column(dim).is_some() {
            let wanted: Vec<Option<&str>> = values.iter().map(|v| v.as_deref()).collect();
            seg.rows_matching(dim, &wanted)?
        } else if values.contains(&None) {
            // The segment predates the dimension: every row reads it as null.
            let mut all = RoaringBitmap::new();
            all.insert_range(0..seg.meta().rows as u32);
            all
        } else {
            RoaringBitmap::new()
        };
        selection = Some(match selection {
            Some(s) => s & rows,
            None => rows,
        });
    }
    Ok(selection)
}

fn segment_columns(
    seg: &Segment,
    schema: &Schema,
    selection: Option<&RoaringBitmap>,
) -> Result<Vec<ArrayRef>> {
    let indices = selection.map(|s| UInt32Array::from_iter_values(s.iter()));
    let rows = indices.as_ref().map_or(seg.rows(), |i| i.len());
    let mut out = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let array = if seg.meta().column(field.name()).is_some() {
            let full = seg
                .column(field.name())
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            match &indices {
                Some(idx) => take(full.as_ref(), idx, None)?,
                None => full,
            }
        } else {
            new_null_array(field.data_type(), rows)
        };
        out.push(array);
    }
    Ok(out)
}
