//! Turning one beacon (a JSON object) into the values a datasource rolls up.
//!
//! This is the validation both the edge (read-only, to answer the caller at once) and apply
//! (authoritative) run, so it is a pure function of the spec and the beacon: no clock, no
//! I/O. A beacon that cannot be used gets a [`RejectReason`] that names the field and what
//! was expected.
//!
//! Conventions, as Druid users expect: a missing or null dimension is null; a number or
//! boolean dimension is kept as its JSON text; a missing metric field contributes nothing
//! (the `count` still counts the event).

use std::fmt;

use chrono::DateTime;
use serde_json::{Map, Value};

use crate::spec::{DatasourceSpec, MetricKind};

/// The values of one event, in the order of the spec's dimensions and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub time_ms: i64,
    pub dims: Vec<Option<DimValue<'a>>>,
    pub metrics: Vec<MetricInput<'a>>,
}

/// A dimension value: borrowed from the beacon when it was a string, rendered otherwise.
pub type DimValue<'a> = std::borrow::Cow<'a, str>;

/// What one metric reads from one event.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricInput<'a> {
    /// The field was missing or null: the metric is not updated.
    Absent,
    /// `count` metrics take no input.
    Count,
    Long(i64),
    Double(f64),
    /// The canonical bytes of a value to count distinctly.
    Distinct(DimValue<'a>),
}

/// Why an event was not rolled up. Codes are stable: they are stored in raw log frames and
/// in `sys.rejects`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    NotAnObject,
    MissingTimestamp {
        field: String,
    },
    BadTimestamp {
        field: String,
        detail: String,
    },
    TooFarInFuture {
        time_ms: i64,
        limit_ms: i64,
    },
    BadDimension {
        name: String,
        got: &'static str,
    },
    BadField {
        metric: String,
        field: String,
        expected: &'static str,
        got: String,
    },
    /// A rejection decided elsewhere (for example a publish right), carried with its text.
    Other {
        code: u8,
        detail: String,
    },
}

impl RejectReason {
    pub fn code(&self) -> u8 {
        match self {
            RejectReason::NotAnObject => 1,
            RejectReason::MissingTimestamp { .. } => 2,
            RejectReason::BadTimestamp { .. } => 3,
            RejectReason::TooFarInFuture { .. } => 4,
            RejectReason::BadDimension { .. } => 5,
            RejectReason::BadField { .. } => 6,
            RejectReason::Other { code, .. } => *code,
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::NotAnObject => write!(f, "beacon is not a JSON object"),
            RejectReason::MissingTimestamp { field } => {
                write!(f, "timestamp field {field:?} is missing or null")
            }
            RejectReason::BadTimestamp { field, detail } => {
                write!(f, "timestamp field {field:?} {detail}; send epoch milliseconds or RFC 3339")
            }
            RejectReason::TooFarInFuture { time_ms, limit_ms } => {
                write!(f, "event time {time_ms} ms is more than {limit_ms} ms ahead of the server clock")
            }
            RejectReason::BadDimension { name, got } => {
                write!(f, "dimension {name:?} must be a string, number or boolean, got {got}")
            }
            RejectReason::BadField { metric, field, expected, got } => {
                write!(f, "field {field:?} (for metric {metric:?}) must be {expected}, got {got}")
            }
            RejectReason::Other { detail, .. } => f.write_str(detail),
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a timestamp value: epoch milliseconds (number or digit string) or RFC 3339.
pub fn parse_timestamp(field: &str, v: &Value) -> Result<i64, RejectReason> {
    let bad = |detail: String| RejectReason::BadTimestamp { field: field.to_string(), detail };
    match v {
        Value::Null => Err(RejectReason::MissingTimestamp { field: field.to_string() }),
        Value::Number(n) => {
            if let Some(ms) = n.as_i64() {
                Ok(ms)
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
                    _ => Err(bad(format!("is {n}, not a whole number of milliseconds"))),
                }
            }
        }
        Value::String(s) => {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return s.parse::<i64>().map_err(|_| bad(format!("{s:?} is too large")));
            }
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| bad(format!("{s:?} is not a valid time ({e})")))
        }
        other => Err(bad(format!("is {}", kind_of(other)))),
    }
}

/// Extracts an event from a parsed beacon under `spec`.
pub fn extract<'a>(spec: &DatasourceSpec, beacon: &'a Value) -> Result<Event<'a>, RejectReason> {
    let obj = beacon.as_object().ok_or(RejectReason::NotAnObject)?;
    extract_object(spec, obj)
}

pub fn extract_object<'a>(spec: &DatasourceSpec, obj: &'a Map<String, Value>) -> Result<Event<'a>, RejectReason> {
    let ts_field = &spec.timestamp.field;
    let time_ms = match obj.get(ts_field) {
        None => {
            return Err(RejectReason::MissingTimestamp { field: ts_field.clone() });
        }
        Some(v) => parse_timestamp(ts_field, v)?,
    };

    let mut dims = Vec::with_capacity(spec.dimensions.len());
    for name in &spec.dimensions {
        dims.push(match obj.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(DimValue::Borrowed(s.as_str())),
            Some(Value::Number(n)) => Some(DimValue::Owned(n.to_string())),
            Some(Value::Bool(b)) => Some(DimValue::Borrowed(if *b { "true" } else { "false" })),
            Some(other) => {
                return Err(RejectReason::BadDimension { name: name.clone(), got: kind_of(other) });
            }
        });
    }

    let mut metrics = Vec::with_capacity(spec.metrics.len());
    for metric in &spec.metrics {
        let input = match (&metric.kind, metric.kind.field().map(|f| (f, obj.get(f)))) {
            (MetricKind::Count, _) => MetricInput::Count,
            (_, None) | (_, Some((_, None))) | (_, Some((_, Some(Value::Null)))) => MetricInput::Absent,
            (kind, Some((field, Some(v)))) => {
                let bad = |expected: &'static str, got: String| RejectReason::BadField {
                    metric: metric.name.clone(),
                    field: field.to_string(),
                    expected,
                    got,
                };
                match kind {
                    MetricKind::LongSum { .. } => match v {
                        Value::Number(n) => match n.as_i64() {
                            Some(i) => MetricInput::Long(i),
                            None => {
                                return Err(bad("a whole number within 64 bits", n.to_string()));
                            }
                        },
                        other => return Err(bad("a whole number", kind_of(other).to_string())),
                    },
                    MetricKind::Hll { .. } => match v {
                        Value::String(s) => MetricInput::Distinct(DimValue::Borrowed(s.as_str())),
                        Value::Number(n) => MetricInput::Distinct(DimValue::Owned(n.to_string())),
                        Value::Bool(b) => MetricInput::Distinct(DimValue::Borrowed(if *b { "true" } else { "false" })),
                        other => {
                            return Err(bad("a string, number or boolean", kind_of(other).to_string()));
                        }
                    },
                    _ => match v {
                        Value::Number(n) => match n.as_f64() {
                            Some(f) if f.is_finite() => MetricInput::Double(f),
                            _ => return Err(bad("a finite number", n.to_string())),
                        },
                        other => return Err(bad("a number", kind_of(other).to_string())),
                    },
                }
            }
        };
        metrics.push(input);
    }
    Ok(Event { time_ms, dims, metrics })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> DatasourceSpec {
        DatasourceSpec::from_json(
            r#"{"name":"t","timestamp":{"field":"ts"},"granularity":{"query":"PT1M","segment":"PT1H"},
               "dimensions":["merchant_id","page"],
               "metrics":[{"name":"count","type":"count"},{"name":"qty","type":"longSum","field":"qty"},
                          {"name":"amount","type":"doubleSum","field":"amount"},
                          {"name":"users","type":"hll","field":"user_id"}]}"#,
        )
        .expect("valid spec")
    }

    #[test]
    fn extracts_values_in_spec_order() {
        let v = json!({"ts": "2026-11-26T10:00:00.250Z", "merchant_id": "m1", "page": 7,
                       "qty": 3, "amount": 9.5, "user_id": 42, "extra": "ignored"});
        let e = extract(&spec(), &v).expect("valid");
        assert_eq!(e.time_ms, 1_795_687_200_250);
        assert_eq!(e.dims, vec![Some("m1".into()), Some("7".into())]);
        assert_eq!(
            e.metrics,
            vec![
                MetricInput::Count,
                MetricInput::Long(3),
                MetricInput::Double(9.5),
                MetricInput::Distinct("42".into())
            ]
        );
    }

    #[test]
    fn missing_values_are_null_or_absent() {
        let v = json!({"ts": 1_700_000_000_000i64});
        let e = extract(&spec(), &v).expect("valid");
        assert_eq!(e.dims, vec![None, None]);
        assert_eq!(e.metrics[1], MetricInput::Absent);
    }

    #[test]
    fn timestamps_accept_millis_digits_and_rfc3339() {
        assert_eq!(parse_timestamp("ts", &json!(1234)), Ok(1234));
        assert_eq!(parse_timestamp("ts", &json!("1234")), Ok(1234));
        assert_eq!(parse_timestamp("ts", &json!(1234.0)), Ok(1234));
        assert_eq!(parse_timestamp("ts", &json!("1970-01-01T00:00:01+01:00")), Ok(-3_599_000));
        assert!(parse_timestamp("ts", &json!(12.5)).is_err());
        assert!(parse_timestamp("ts", &json!("yesterday")).is_err());
    }

    #[test]
    fn rejections_name_the_field() {
        let s = spec();
        let cases = [
            (json!([1]), "not a JSON object"),
            (json!({"page": "x"}), "\"ts\" is missing"),
            (json!({"ts": true}), "is a boolean"),
            (json!({"ts": 1, "page": {"a": 1}}), "dimension \"page\""),
            (json!({"ts": 1, "qty": 1.5}), "field \"qty\" (for metric \"qty\") must be a whole number"),
            (json!({"ts": 1, "amount": "12"}), "must be a number, got a string"),
        ];
        for (beacon, needle) in cases {
            let reason = extract(&s, &beacon).err().map(|r| r.to_string()).unwrap_or_default();
            assert!(reason.contains(needle), "{beacon}: {reason}");
        }
    }
}
