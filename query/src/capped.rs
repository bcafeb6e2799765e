//! Functions whose result size comes from an argument, capped: `repeat`, `lpad`, `rpad`,
//! `array_repeat`, `array_resize`, and `range` and `generate_series` over integers, dates and
//! timestamps.
//!
//! A failed allocation aborts a Rust process; nothing can catch it. `SELECT
//! repeat('x', 1000000000000000)` from any key that may query therefore stopped the node
//! (Raft, ingest, every client). Each of these functions is registered under its own name as
//! a wrapper that computes, from the arguments it is called with and before the function
//! allocates anything, an upper bound of the bytes the call would build, and refuses a call
//! above `limits.function_result_bytes_max` with an error naming that setting. The bound is
//! per call (one batch); functions whose result is bounded by their inputs' size (`concat`,
//! `||`, `upper`, …) need no cap, as their inputs come from capped calls or from the data.
//!
//! Invariant: a wrapped function answers exactly as the function it wraps whenever the bound
//! is within the limit (it only adds the check; it never rewrites the call).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::length::length;
use datafusion::arrow::datatypes::{
    DataType, FieldRef, Int64Type, IntervalMonthDayNano, IntervalMonthDayNanoType, IntervalUnit,
    TimeUnit,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};
use datafusion::prelude::SessionContext;

/// The setting a refusal names.
pub const SETTING: &str = "limits.function_result_bytes_max";

/// How a function's result size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Size {
    /// `repeat(text, n)`: the text's bytes times n, per row.
    Repeat,
    /// `lpad`/`rpad(text, n [, fill])`: n characters of up to 4 bytes, per row.
    Pad,
    /// `array_repeat(element, n)`: n copies of the element, per row.
    ArrayRepeat,
    /// `range`/`generate_series([start,] stop [, step])`: over integers, or over dates and
    /// timestamps stepping by an interval; 8 bytes an element.
    Series,
    /// `array_resize(array, n [, value])`: n elements per row, each the size of the array's.
    Resize,
}

const CAPPED: [(&str, Size); 7] = [
    ("repeat", Size::Repeat),
    ("lpad", Size::Pad),
    ("rpad", Size::Pad),
    ("array_repeat", Size::ArrayRepeat),
    ("range", Size::Series),
    ("generate_series", Size::Series),
    ("array_resize", Size::Resize),
];

/// Replaces each capped function the session has with its capped wrapper.
pub fn register(ctx: &SessionContext, bytes_max: usize) {
    for (name, size) in CAPPED {
        let inner = ctx.state().scalar_functions().get(name).cloned();
        if let Some(inner) = inner {
            ctx.register_udf(ScalarUDF::new_from_impl(Capped {
                inner,
                size,
                bytes_max,
            }));
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Capped {
    inner: Arc<ScalarUDF>,
    size: Size,
    bytes_max: usize,
}

impl ScalarUDFImpl for Capped {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let bytes = bound(self.size, &args.args, args.number_rows)?;
        if bytes > self.bytes_max as u128 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{}() would build {bytes} bytes in one call, above the limit of {} ({SETTING})",
                self.inner.name(),
                self.bytes_max
            )));
        }
        self.inner.invoke_with_args(args)
    }
}

/// An upper bound of the bytes one call builds.
fn bound(size: Size, args: &[ColumnarValue], rows: usize) -> Result<u128> {
    let rows = rows.max(1);
    let arg = |i: usize| args.get(i).map(|a| a.to_array(rows)).transpose();
    let total = match size {
        Size::Repeat => {
            let (Some(text), Some(n)) = (arg(0)?, arg(1)?) else {
                return Ok(0);
            };
            let (lens, n) = (ints(&length(&text)?)?, ints(&n)?);
            lens.iter().zip(&n).map(|(l, n)| pos(*l) * pos(*n)).sum()
        }
        Size::Pad => {
            let Some(n) = arg(1)? else { return Ok(0) };
            ints(&n)?.iter().map(|n| pos(*n) * 4).sum()
        }
        Size::ArrayRepeat => {
            let (Some(element), Some(n)) = (arg(0)?, arg(1)?) else {
                return Ok(0);
            };
            let per_row = (element.get_array_memory_size() / rows).max(8) as u128;
            ints(&n)?.iter().map(|n| pos(*n) * per_row).sum()
        }
        Size::Resize => {
            let (Some(list), Some(n)) = (arg(0)?, arg(1)?) else {
                return Ok(0);
            };
            let elements = match list.data_type() {
                DataType::List(_) => list.as_list::<i32>().values().len(),
                DataType::LargeList(_) => list.as_list::<i64>().values().len(),
                _ => rows,
            };
            // New elements are copies of the fill value (the third argument) when there is one.
            let fill = arg(2)?.map_or(0, |v| v.get_array_memory_size() / rows);
            let per_element = (list.get_array_memory_size() / elements.max(1))
                .max(fill)
                .max(8) as u128;
            ints(&n)?.iter().map(|n| pos(*n) * per_element).sum()
        }
        Size::Series if args.iter().any(|a| !a.data_type().is_integer()) => {
            let (Some(start), Some(stop), Some(step)) = (arg(0)?, arg(1)?, arg(2)?) else {
                return Ok(0);
            };
            let (start, stop) = (millis(&start)?, millis(&stop)?);
            let step = cast(&step, &DataType::Interval(IntervalUnit::MonthDayNano))?;
            let step = step.as_primitive::<IntervalMonthDayNanoType>();
            (0..rows)
                .map(|row| {
                    let (Some(a), Some(b)) = (start[row], stop[row]) else {
                        return 0;
                    };
                    if step.is_null(row) {
                        return 0;
                    }
                    // Milliseconds truncate: up to 1 ms of the span is lost at each end.
                    let span_ns = ((i128::from(b) - i128::from(a)).unsigned_abs() + 2) * 1_000_000;
                    span_ns / shortest_step_ns(step.value(row)) + 1
                })
                .map(|elements| elements * 8)
                .sum()
        }
        Size::Series => {
            let columns = (0..args.len())
                .map(arg)
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .flatten();
            let columns = columns.map(|c| ints(&c)).collect::<Result<Vec<_>>>()?;
            let value =
                |c: usize, row: usize| columns.get(c).and_then(|v| v.get(row).copied().flatten());
            (0..rows)
                .map(|row| {
                    let (start, stop, step) = match columns.len() {
                        1 => (Some(0), value(0, row), Some(1)),
                        2 => (value(0, row), value(1, row), Some(1)),
                        _ => (value(0, row), value(1, row), value(2, row)),
                    };
                    match (start, stop, step) {
                        (Some(a), Some(b), Some(s)) if s != 0 => {
                            let span = i128::from(b) - i128::from(a);
                            (span / i128::from(s)).unsigned_abs() + 1
                        }
                        _ => 0,
                    }
                })
                .map(|elements| elements * 8)
                .sum()
        }
    };
    Ok(total)
}

/// The least time an interval step can span, in nanoseconds (a month at least 28 days, a
/// day at least 23 hours across a clock change). A step whose parts have mixed signs
/// (`1 month - 29 days`) is taken as 1 ns: its length depends on the dates, and a bound must
/// not be too small.
fn shortest_step_ns(step: IntervalMonthDayNano) -> u128 {
    let parts = [
        i128::from(step.months) * 28 * 86_400_000_000_000,
        i128::from(step.days) * 23 * 3_600_000_000_000,
        i128::from(step.nanoseconds),
    ];
    let all_ahead = parts.iter().all(|p| *p >= 0);
    let all_back = parts.iter().all(|p| *p <= 0);
    let total = parts.iter().sum::<i128>().unsigned_abs();
    if (all_ahead || all_back) && total > 0 {
        total
    } else {
        1
    }
}

/// A date or timestamp column as epoch milliseconds.
fn millis(array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let ms = cast(array, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    ints(&cast(&ms, &DataType::Int64)?)
}

fn pos(v: Option<i64>) -> u128 {
    v.map_or(0, |v| v.max(0) as u128)
}

/// An integer column as i64 values (nulls as `None`).
fn ints(array: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let as_i64 = cast(array, &DataType::Int64)?;
    Ok(as_i64.as_primitive::<Int64Type>().iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(
        ctx: &SessionContext,
        sql: &str,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        ctx.sql(sql).await?.collect().await
    }

    #[tokio::test]
    async fn a_call_past_the_limit_is_refused_before_it_allocates_and_others_answer_as_before() {
        let ctx = SessionContext::new();
        register(&ctx, 1 << 20);
        for sql in [
            "SELECT length(repeat(arrow_cast('x', 'LargeUtf8'), 1000000000000000))",
            "SELECT repeat('ab', 600000)",
            "SELECT lpad('x', 1000000000000)",
            "SELECT rpad('x', 300000, 'y')",
            "SELECT array_repeat(1, 10000000000)",
            "SELECT range(1, 100000000000)",
            "SELECT generate_series(-9000000000000000000, 9000000000000000000)",
            "SELECT repeat(s, 100000) FROM (VALUES ('abcdefghij'), ('klm')) t(s)",
            "SELECT array_resize([1, 2], 10000000000)",
            "SELECT array_resize([''], 1000, repeat('x', 60000))",
            "SELECT generate_series(TIMESTAMP '2024-01-01 00:00:00', TIMESTAMP '2024-01-01 00:00:00.000999', INTERVAL '1 nanosecond')",
            "SELECT range(DATE '1970-01-01', DATE '9999-12-31', INTERVAL '1' DAY)",
            "SELECT generate_series(TIMESTAMP '1970-01-01', TIMESTAMP '2200-01-01', INTERVAL '1 second')",
            "SELECT range(DATE '2000-01-01', DATE '2400-01-01', INTERVAL '1 month -27 days')",
        ] {
            let e = run(&ctx, sql)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(SETTING), "{sql}: {e}");
        }
        let ok = run(
            &ctx,
            "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS l, cardinality(range(1, 11)) AS n, \
             cardinality(range(DATE '2024-01-01', DATE '2024-03-01', INTERVAL '1' MONTH)) AS months, \
             cardinality(generate_series(TIMESTAMP '2024-01-01', TIMESTAMP '2024-01-02', INTERVAL '1 hour')) AS hours, \
             cardinality(array_resize([1, 2], 5)) AS resized",
        )
        .await;
        let batches = ok.expect("small calls answer");
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .expect("format")
            .to_string();
        assert!(text.contains("ababab") && text.contains("007"), "{text}");
        // range excludes its stop, generate_series includes it.
        assert!(text.contains("| 10 | 2      | 25    | 5       |"), "{text}");
    }
}
