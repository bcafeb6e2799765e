//! `TIME_FLOOR(ts, period [, origin [, timezone]])` as in Druid: rounds a timestamp down to
//! the start of its period, counted from `origin` (default 1970-01-01T00:00 in the time zone),
//! in `timezone` (default UTC). Periods are ISO-8601: fixed (`PT15M`, `PT1H`, `P1D`, `P1W`)
//! or calendar (`P1M`, `P3M`, `P1Y`). In a time zone, buckets follow local wall-clock time,
//! so `P1D` in `Asia/Kolkata` starts at local midnight.

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone};
use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

#[derive(Debug, Clone, Copy, PartialEq)]
enum FloorPeriod {
    FixedMs(i64),
    Months(i64),
}

fn parse_period(text: &str) -> Result<FloorPeriod> {
    let bad = |why: &str| {
        DataFusionError::Plan(format!(
            "TIME_FLOOR: period {text:?} {why}; use ISO-8601 like PT15M, PT1H, P1D, P1M"
        ))
    };
    let upper = text.trim().to_ascii_uppercase();
    let body = upper
        .strip_prefix('P')
        .ok_or_else(|| bad("must start with P"))?;
    let (num, unit) = body.split_at(body.len().saturating_sub(1));
    let calendar = |n: &str, months: i64| -> Result<FloorPeriod> {
        let n: i64 = n.parse().map_err(|_| bad("needs a whole number"))?;
        if n <= 0 {
            return Err(bad("must be longer than zero"));
        }
        Ok(FloorPeriod::Months(n * months))
    };
    if !num.starts_with('T') {
        match unit {
            "M" => return calendar(num, 1),
            "Y" => return calendar(num, 12),
            _ => {}
        }
    }
    tidemark_catalog::Period::parse(text)
        .map(|p| FloorPeriod::FixedMs(p.millis()))
        .map_err(|e| bad(&e.to_string()))
}

/// Floors `t_ms` (UTC epoch ms) to its period start in `tz`, counted from `origin_ms`.
fn floor_ms(
    t_ms: i64,
    period: FloorPeriod,
    origin_ms: Option<i64>,
    tz: Option<&Tz>,
) -> Option<i64> {
    let Some(tz) = tz else {
        return match period {
            FloorPeriod::FixedMs(p) => {
                let origin = origin_ms.unwrap_or(0);
                Some(origin + (t_ms - origin).div_euclid(p) * p)
            }
            FloorPeriod::Months(n) => {
                let utc = chrono::Utc;
                floor_months(&utc, t_ms, n, origin_ms)
            }
        };
    };
    match period {
        FloorPeriod::FixedMs(p) => {
            let offset = offset_ms(tz, t_ms)?;
            let local = t_ms + offset;
            let origin_local =
                origin_ms.map_or(Some(0), |o| offset_ms(tz, o).map(|off| o + off))?;
            let floored_local = origin_local + (local - origin_local).div_euclid(p) * p;
            local_to_utc(tz, floored_local)
        }
        FloorPeriod::Months(n) => floor_months(tz, t_ms, n, origin_ms),
    }
}

fn offset_ms<Z: TimeZone>(tz: &Z, t_ms: i64) -> Option<i64> {
    let utc = DateTime::from_timestamp_millis(t_ms)?.naive_utc();
    Some(i64::from(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc()) * 1000)
}

fn local_to_utc<Z: TimeZone>(tz: &Z, local_ms: i64) -> Option<i64> {
    let naive = DateTime::from_timestamp_millis(local_ms)?.naive_utc();
    match tz.from_local_datetime(&naive).earliest() {
        Some(t) => Some(t.timestamp_millis()),
        // A local time skipped by a DST jump: use the offset just before it.
        None => offset_ms(tz, local_ms).map(|off| local_ms - off),
    }
}

fn floor_months<Z: TimeZone>(tz: &Z, t_ms: i64, n: i64, origin_ms: Option<i64>) -> Option<i64> {
    let local = DateTime::from_timestamp_millis(t_ms + offset_ms(tz, t_ms)?)?.naive_utc();
    let (oy, om) = match origin_ms {
        Some(o) => {
            let ol = DateTime::from_timestamp_millis(o + offset_ms(tz, o)?)?.naive_utc();
            (i64::from(ol.year()), i64::from(ol.month0()))
        }
        None => (1970, 0),
    };
    let months = i64::from(local.year()) * 12 + i64::from(local.month0()) - (oy * 12 + om);
    let start = oy * 12 + om + months.div_euclid(n) * n;
    let date = NaiveDate::from_ymd_opt(
        start.div_euclid(12) as i32,
        start.rem_euclid(12) as u32 + 1,
        1,
    )?;
    let naive: NaiveDateTime = date.and_hms_opt(0, 0, 0)?;
    local_to_utc(tz, naive.and_utc().timestamp_millis())
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TimeFloor {
    signature: Signature,
}

impl TimeFloor {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::from(TimeFloor {
            signature: Signature::user_defined(Volatility::Immutable),
        })
    }
}

fn scalar_string(v: &ColumnarValue, what: &str) -> Result<Option<String>> {
    match v {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s),
        ) => Ok(s.clone()),
        ColumnarValue::Scalar(ScalarValue::Null) => Ok(None),
        _ => Err(DataFusionError::Plan(format!(
            "TIME_FLOOR: the {what} must be a string literal"
        ))),
    }
}

impl ScalarUDFImpl for TimeFloor {
    fn name(&self) -> &str {
        "time_floor"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        if !(2..=4).contains(&arg_types.len()) {
            return Err(DataFusionError::Plan(format!(
                "TIME_FLOOR takes (timestamp, period [, origin [, timezone]]), got {} arguments",
                arg_types.len()
            )));
        }
        let ts = match &arg_types[0] {
            DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
            DataType::Date32 | DataType::Date64 | DataType::Null => {
                DataType::Timestamp(TimeUnit::Millisecond, None)
            }
            other => {
                return Err(DataFusionError::Plan(format!(
                    "TIME_FLOOR: the first argument must be a timestamp, got {other}"
                )));
            }
        };
        let mut out = vec![ts, DataType::Utf8];
        if arg_types.len() > 2 {
            out.push(match &arg_types[2] {
                DataType::Null => DataType::Null,
                _ => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            });
        }
        if arg_types.len() > 3 {
            out.push(DataType::Utf8);
        }
        Ok(out)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match &arg_types[0] {
            DataType::Timestamp(_, tz) => {
                Ok(DataType::Timestamp(TimeUnit::Millisecond, tz.clone()))
            }
            _ => Ok(DataType::Timestamp(TimeUnit::Millisecond, None)),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let period_text = scalar_string(&args.args[1], "period")?
            .ok_or_else(|| DataFusionError::Plan("TIME_FLOOR: period is null".into()))?;
        let period = parse_period(&period_text)?;
        let origin_ms = match args.args.get(2) {
            None | Some(ColumnarValue::Scalar(ScalarValue::Null)) => None,
            Some(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(v, _))) => *v,
            Some(_) => {
                return Err(DataFusionError::Plan(
                    "TIME_FLOOR: the origin must be a timestamp literal".into(),
                ));
            }
        };
        let tz = match args
            .args
            .get(3)
            .map(|v| scalar_string(v, "timezone"))
            .transpose()?
            .flatten()
        {
            None => None,
            Some(name) => Some(Tz::from_str(&name).map_err(|e| {
                DataFusionError::Plan(format!("TIME_FLOOR: unknown time zone {name:?}: {e}"))
            })?),
        };
        let out_type = args.return_type().clone();
        let out_tz = match &out_type {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        match &args.args[0] {
            ColumnarValue::Scalar(s) => {
                let arr = s.to_array()?;
                let ms = cast(&arr, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
                let v = ms.as_primitive::<TimestampMillisecondType>();
                let out = if v.is_null(0) {
                    None
                } else {
                    floor_ms(v.value(0), period, origin_ms, tz.as_ref())
                };
                Ok(ColumnarValue::Scalar(ScalarValue::TimestampMillisecond(
                    out, out_tz,
                )))
            }
            ColumnarValue::Array(arr) => {
                let ms = cast(arr, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
                let v = ms.as_primitive::<TimestampMillisecondType>();
                let out: TimestampMillisecondArray = v
                    .iter()
                    .map(|t| t.and_then(|t| floor_ms(t, period, origin_ms, tz.as_ref())))
                    .collect();
                let out: ArrayRef = Arc::new(out.with_timezone_opt(out_tz));
                Ok(ColumnarValue::Array(out))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .unwrap_or(i64::MIN)
    }

    #[test]
    fn floors_fixed_and_calendar_periods_in_utc() {
        let t = ms("2026-11-26T10:47:13.5Z");
        let p = |s: &str| parse_period(s).ok().unwrap_or(FloorPeriod::FixedMs(1));
        assert_eq!(
            floor_ms(t, p("PT15M"), None, None),
            Some(ms("2026-11-26T10:45:00Z"))
        );
        assert_eq!(
            floor_ms(t, p("P1D"), None, None),
            Some(ms("2026-11-26T00:00:00Z"))
        );
        assert_eq!(
            floor_ms(t, p("P1M"), None, None),
            Some(ms("2026-11-01T00:00:00Z"))
        );
        assert_eq!(
            floor_ms(t, p("P3M"), None, None),
            Some(ms("2026-10-01T00:00:00Z"))
        );
        assert_eq!(
            floor_ms(t, p("P1Y"), None, None),
            Some(ms("2026-01-01T00:00:00Z"))
        );
        assert_eq!(
            floor_ms(t, p("PT1H"), Some(ms("2000-01-01T00:30:00Z")), None),
            Some(ms("2026-11-26T10:30:00Z"))
        );
    }

    #[test]
    fn floors_in_local_time() {
        let kolkata = Tz::from_str("Asia/Kolkata").ok();
        let ny = Tz::from_str("America/New_York").ok();
        let t = ms("2026-11-26T20:10:00Z"); // 01:40 next day in Kolkata, 15:10 in New York
        let p = |s: &str| parse_period(s).ok().unwrap_or(FloorPeriod::FixedMs(1));
        assert_eq!(
            floor_ms(t, p("P1D"), None, kolkata.as_ref()),
            Some(ms("2026-11-27T00:00:00+05:30"))
        );
        assert_eq!(
            floor_ms(t, p("PT1H"), None, kolkata.as_ref()),
            Some(ms("2026-11-27T01:00:00+05:30"))
        );
        assert_eq!(
            floor_ms(t, p("P1D"), None, ny.as_ref()),
            Some(ms("2026-11-26T00:00:00-05:00"))
        );
        assert_eq!(
            floor_ms(t, p("P1M"), None, ny.as_ref()),
            Some(ms("2026-11-01T00:00:00-04:00"))
        );
    }

    #[test]
    fn bad_periods_are_named() {
        let err = parse_period("1H")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("\"1H\""), "{err}");
        assert!(parse_period("P0M").is_err());
    }
}
