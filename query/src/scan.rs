//! The scan node: batches from the segments a query could not prune plus the realtime rows,
//! spread over partitions, with what was pruned shown by `EXPLAIN`.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions,
};

/// Counts of what a scan kept and skipped, for `EXPLAIN`.
#[derive(Debug, Clone, Default)]
pub struct ScanReport {
    pub datasource: String,
    pub log_position: u64,
    pub segments_total: usize,
    pub segments_pruned_by_time: usize,
    pub segments_pruned_by_bitmap: usize,
    pub segment_rows_total: u64,
    pub segment_rows_read: u64,
    pub realtime_rows: u64,
    pub pruning: String,
    pub columns: Vec<String>,
}

#[derive(Debug)]
pub struct TidemarkScanExec {
    report: ScanReport,
    partitions: Vec<Vec<RecordBatch>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl TidemarkScanExec {
    pub fn new(schema: SchemaRef, partitions: Vec<Vec<RecordBatch>>, report: ScanReport) -> Self {
        let n = partitions.len().max(1);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(n),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        let mut partitions = partitions;
        if partitions.is_empty() {
            partitions.push(Vec::new());
        }
        TidemarkScanExec {
            report,
            partitions,
            schema,
            properties: Arc::new(properties),
        }
    }

    pub fn report(&self) -> &ScanReport {
        &self.report
    }
}

impl DisplayAs for TidemarkScanExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.report;
        let kept = r.segments_total - r.segments_pruned_by_time - r.segments_pruned_by_bitmap;
        match t {
            DisplayFormatType::TreeRender => {
                write!(
                    f,
                    "datasource={}\nsegments={kept}/{}",
                    r.datasource, r.segments_total
                )
            }
            _ => write!(
                f,
                "TidemarkScanExec: datasource={}, log_position={}, segments={kept}/{} (pruned by time: {}, by bitmap: {}), \
                 segment_rows={}/{}, realtime_rows={}, pruning=[{}], columns=[{}]",
                r.datasource,
                r.log_position,
                r.segments_total,
                r.segments_pruned_by_time,
                r.segments_pruned_by_bitmap,
                r.segment_rows_read,
                r.segment_rows_total,
                r.realtime_rows,
                r.pruning,
                r.columns.join(", ")
            ),
        }
    }
}

impl ExecutionPlan for TidemarkScanExec {
    fn name(&self) -> &'static str {
        "TidemarkScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batches = self.partitions.get(partition).cloned().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal(format!(
                "TidemarkScanExec has {} partitions, asked for {partition}",
                self.partitions.len()
            ))
        })?;
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            self.schema.clone(),
            None,
        )?))
    }
}
