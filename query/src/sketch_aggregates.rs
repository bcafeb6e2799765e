//! Druid-compatible sketch aggregates over tidemark's sketch columns:
//! `APPROX_COUNT_DISTINCT_DS_HLL(col [, lg_k])` and `APPROX_QUANTILE_DS(col, q)` (alias
//! `TDIGEST_QUANTILE`). On a sketch column they merge the stored states (exact while small,
//! sketches beyond; see `tidemark_storage::rollup::state`); on a plain column they sketch the
//! raw values, so the functions also work over system tables or subqueries.
//!
//! Merging a small state is a loop over a few inline values (hot path: a global distinct over
//! a day touches millions of rows); partial aggregates travel as the same tagged bytes.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;
use datafusion::scalar::ScalarValue;
use tidemark_catalog::spec::{HLL_LG_K_DEFAULT, TDIGEST_COMPRESSION_DEFAULT};
use tidemark_storage::rollup::state::{DistinctMerger, QuantileMerger, distinct_hash};

fn storage_err(e: tidemark_storage::Error) -> DataFusionError {
    DataFusionError::Execution(format!("cannot read a stored sketch: {e}"))
}

fn literal_arg(args: &AccumulatorArgs<'_>, i: usize) -> Option<ScalarValue> {
    args.exprs
        .get(i)?
        .downcast_ref::<Literal>()
        .map(|l| l.value().clone())
}

fn is_state_column(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    )
}

/// Calls `merge` with every non-null encoded state in `array` (stored states or partials).
fn for_each_state(
    array: &ArrayRef,
    mut merge: impl FnMut(&[u8]) -> tidemark_storage::Result<()>,
) -> Result<()> {
    let states = if matches!(array.data_type(), DataType::Binary) {
        array.clone()
    } else {
        cast(array, &DataType::Binary)?
    };
    for state in states.as_binary::<i32>().iter().flatten() {
        merge(state).map_err(storage_err)?;
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ApproxCountDistinctHll {
    signature: Signature,
}

impl ApproxCountDistinctHll {
    pub fn udaf() -> AggregateUDF {
        AggregateUDF::from(ApproxCountDistinctHll {
            signature: Signature::one_of(
                vec![TypeSignature::Any(1), TypeSignature::Any(2)],
                Volatility::Immutable,
            ),
        })
    }
}

impl AggregateUDFImpl for ApproxCountDistinctHll {
    fn name(&self) -> &str {
        "approx_count_distinct_ds_hll"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        let lg_k = match literal_arg(&args, 1) {
            None => HLL_LG_K_DEFAULT,
            Some(v) => match v {
                ScalarValue::Int64(Some(k)) if (4..=21).contains(&k) => k as u8,
                other => {
                    return Err(DataFusionError::Plan(format!(
                        "APPROX_COUNT_DISTINCT_DS_HLL: lg_k must be an integer literal from 4 to 21, got {other}"
                    )));
                }
            },
        };
        let raw = !is_state_column(args.expr_fields[0].data_type());
        Ok(Box::new(DistinctAccumulator {
            merger: DistinctMerger::new(lg_k),
            raw,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "hll"),
            DataType::Binary,
            true,
        ))])
    }
}

#[derive(Debug)]
struct DistinctAccumulator {
    merger: DistinctMerger,
    /// The input is plain values to hash, not stored states.
    raw: bool,
}

impl Accumulator for DistinctAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let input = &values[0];
        if self.raw {
            let text = cast(input, &DataType::Utf8)?;
            for s in text.as_string::<i32>().iter().flatten() {
                self.merger.add_hash(distinct_hash(s));
            }
            return Ok(());
        }
        for_each_state(input, |s| self.merger.merge_encoded(s))
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for_each_state(&states[0], |s| self.merger.merge_encoded(s))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(
            self.merger.to_state_bytes(),
        ))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(
            self.merger.estimate().round() as i64
        )))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.merger.heap_bytes()
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ApproxQuantileDs {
    signature: Signature,
    aliases: Vec<String>,
}

impl ApproxQuantileDs {
    pub fn udaf() -> AggregateUDF {
        AggregateUDF::from(ApproxQuantileDs {
            signature: Signature::any(2, Volatility::Immutable),
            aliases: vec!["tdigest_quantile".to_string()],
        })
    }
}

impl AggregateUDFImpl for ApproxQuantileDs {
    fn name(&self) -> &str {
        "approx_quantile_ds"
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        let q = match literal_arg(&args, 1) {
            Some(ScalarValue::Float64(Some(q))) => q,
            Some(ScalarValue::Float32(Some(q))) => f64::from(q),
            Some(ScalarValue::Int64(Some(q))) => q as f64,
            other => {
                return Err(DataFusionError::Plan(format!(
                    "{}: the quantile must be a number literal between 0 and 1, got {}",
                    args.name,
                    other.map_or("an expression".to_string(), |v| v.to_string())
                )));
            }
        };
        if !(0.0..=1.0).contains(&q) {
            return Err(DataFusionError::Plan(format!(
                "{}: quantile {q} is outside [0, 1]",
                args.name
            )));
        }
        let raw = !is_state_column(args.expr_fields[0].data_type());
        Ok(Box::new(QuantileAccumulator {
            merger: QuantileMerger::new(TDIGEST_COMPRESSION_DEFAULT),
            q,
            raw,
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "tdigest"),
            DataType::Binary,
            true,
        ))])
    }
}

#[derive(Debug)]
struct QuantileAccumulator {
    merger: QuantileMerger,
    q: f64,
    raw: bool,
}

impl Accumulator for QuantileAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let input = &values[0];
        if self.raw {
            let nums = cast(input, &DataType::Float64)?;
            for v in nums
                .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                .iter()
                .flatten()
            {
                self.merger.add(v);
            }
            return Ok(());
        }
        for_each_state(input, |s| self.merger.merge_encoded(s))
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for_each_state(&states[0], |s| self.merger.merge_encoded(s))
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(
            self.merger.to_state_bytes(),
        ))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.merger.quantile(self.q)))
    }

    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.merger.heap_bytes()
    }
}
