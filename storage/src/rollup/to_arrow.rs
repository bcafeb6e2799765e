//! The realtime index as Arrow arrays, in the same schema a segment serves, so a query sees
//! segments and realtime rows alike. Rows come out in index (arrival) order.
//!
//! This copies: the index keeps changing under apply, and a query needs a snapshot as of one
//! log position (ARCHITECTURE.md, invariant 7).

use std::sync::Arc;

use arrow_array::builder::StringBuilder;
use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, BinaryArray, DictionaryArray, Float64Array, Int32Array, Int64Array, RecordBatch,
    TimestampMillisecondArray,
};
use arrow_schema::SchemaRef;
use tidemark_catalog::DatasourceSpec;

use crate::error::{Error, Result};
use crate::rollup::{MetricColumn, RollupIndex};

impl RollupIndex {
    /// Every row as one batch in `schema` (which must be [`crate::segment::table_schema`] of
    /// `spec`). Dictionary keys are the index's ids minus one; values in arrival order.
    pub fn to_record_batch(&self, spec: &DatasourceSpec, schema: SchemaRef) -> Result<RecordBatch> {
        let rows = self.rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        columns.push(Arc::new(
            TimestampMillisecondArray::from(self.buckets().to_vec()).with_timezone("UTC"),
        ));
        for d in 0..spec.dimensions.len() {
            let dict = self.dictionary(d);
            let mut values = StringBuilder::with_capacity(dict.len(), dict.len() * 8);
            for id in 1..=dict.len() as u32 {
                values.append_value(dict.value(id).unwrap_or_default());
            }
            let keys: Int32Array = (0..rows)
                .map(|r| match self.dim_id(r, d) {
                    0 => None,
                    id => Some(id as i32 - 1),
                })
                .collect();
            let array = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values.finish()))
                .map_err(|e| Error::Internal(format!("realtime dictionary: {e}")))?;
            columns.push(Arc::new(array));
        }
        for m in 0..spec.metrics.len() {
            let array: ArrayRef = match self.metric(m) {
                MetricColumn::Count(v) => {
                    Arc::new(Int64Array::from_iter_values(v.iter().map(|x| *x as i64)))
                }
                MetricColumn::LongSum(v) => Arc::new(Int64Array::from(v.clone())),
                MetricColumn::DoubleSum(v) => Arc::new(Float64Array::from(v.clone())),
                MetricColumn::Min(v) | MetricColumn::Max(v) => Arc::new(
                    v.iter()
                        .map(|x| if x.is_nan() { None } else { Some(*x) })
                        .collect::<Float64Array>(),
                ),
                MetricColumn::Distinct { states, .. } => {
                    Arc::new(encode_states(states.len(), |r, out| {
                        states[r].encode(out);
                        !states[r].is_empty()
                    }))
                }
                MetricColumn::Quantile { states, .. } => {
                    Arc::new(encode_states(states.len(), |r, out| {
                        states[r].encode(out);
                        !states[r].is_empty()
                    }))
                }
            };
            columns.push(array);
        }
        RecordBatch::try_new(schema, columns)
            .map_err(|e| Error::Internal(format!("realtime batch: {e}")))
    }
}

fn encode_states(rows: usize, encode: impl Fn(usize, &mut Vec<u8>) -> bool) -> BinaryArray {
    let mut buf = Vec::new();
    let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(rows);
    for r in 0..rows {
        buf.clear();
        out.push(if encode(r, &mut buf) {
            Some(buf.clone())
        } else {
            None
        });
    }
    BinaryArray::from_iter(out)
}
