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

use std::borrow::Cow;
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
pub type DimValue<'a> = Cow<'a, str>;

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
    /// Keys that are not approved tags of the datasource's governance domain, under the
    /// datasource's `unknown_tags: reject` policy.
    UnknownTags {
        domain: String,
        tags: Vec<UnknownTag>,
    },
    /// A registered tag with a value its type does not take.
    WrongTagType {
        tag: String,
        /// The alias it was sent as, if not its name.
        sent_as: Option<String>,
        ty: crate::governance::TagType,
        got: String,
    },
    /// One tag sent under two keys (its name and an alias, or two aliases).
    DuplicateTag {
        tag: String,
        first: String,
        second: String,
    },
    /// Tags the publisher's API key may not publish to this datasource (decided at the edge
    /// when the beacon arrives; binding, so revoking or changing keys never re-decides it).
    TagsNotPermitted {
        key_id: String,
        datasource: String,
        tags: Vec<String>,
    },
    /// A rejection decided elsewhere and carried with its text (a binding edge verdict read
    /// back from the log).
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
            RejectReason::UnknownTags { .. } => 7,
            RejectReason::WrongTagType { .. } => 8,
            RejectReason::DuplicateTag { .. } => 9,
            RejectReason::TagsNotPermitted { .. } => 10,
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
                write!(
                    f,
                    "timestamp field {field:?} {detail}; send epoch milliseconds or RFC 3339"
                )
            }
            RejectReason::TooFarInFuture { time_ms, limit_ms } => {
                write!(
                    f,
                    "event time {time_ms} ms is more than {limit_ms} ms ahead of the server clock"
                )
            }
            RejectReason::BadDimension { name, got } => {
                write!(
                    f,
                    "dimension {name:?} must be a string, number or boolean, got {got}"
                )
            }
            RejectReason::BadField {
                metric,
                field,
                expected,
                got,
            } => {
                write!(
                    f,
                    "field {field:?} (for metric {metric:?}) must be {expected}, got {got}"
                )
            }
            RejectReason::UnknownTags { domain, tags } => {
                match tags.as_slice() {
                    [one] => write!(
                        f,
                        "unknown tag {} in domain {domain:?}{}",
                        quoted(&one.key),
                        one.hint
                    )?,
                    many => {
                        write!(f, "unknown tags in domain {domain:?}: ")?;
                        for (i, t) in many.iter().take(UNKNOWN_TAGS_NAMED).enumerate() {
                            let sep = if i == 0 { "" } else { ", " };
                            write!(f, "{sep}{}{}", quoted(&t.key), t.hint)?;
                        }
                        if many.len() > UNKNOWN_TAGS_NAMED {
                            write!(f, " and {} more", many.len() - UNKNOWN_TAGS_NAMED)?;
                        }
                    }
                }
                Ok(())
            }
            RejectReason::WrongTagType {
                tag,
                sent_as,
                ty,
                got,
            } => {
                write!(f, "tag {tag:?}")?;
                if let Some(key) = sent_as {
                    write!(f, " (sent as {})", quoted(key))?;
                }
                write!(
                    f,
                    " must be {} (type {}), got {got}",
                    ty.expected(),
                    ty.name()
                )
            }
            RejectReason::DuplicateTag { tag, first, second } => {
                write!(
                    f,
                    "tag {tag:?} is sent twice, as {} and as {}; send it once",
                    quoted(first),
                    quoted(second)
                )
            }
            RejectReason::TagsNotPermitted {
                key_id,
                datasource,
                tags,
            } => {
                let named: Vec<String> = tags
                    .iter()
                    .take(UNKNOWN_TAGS_NAMED)
                    .map(|t| quoted(t))
                    .collect();
                let more = tags.len().saturating_sub(UNKNOWN_TAGS_NAMED);
                let plural = if tags.len() == 1 { "" } else { "s" };
                write!(
                    f,
                    "API key {key_id} may not publish tag{plural} {} to {datasource:?}",
                    named.join(", ")
                )?;
                if more > 0 {
                    write!(f, " and {more} more")?;
                }
                write!(f, "; ask an admin for a key with that right")
            }
            RejectReason::Other { detail, .. } => f.write_str(detail),
        }
    }
}

/// How many unknown tags a rejection names before "and N more".
pub const UNKNOWN_TAGS_NAMED: usize = 5;

/// A key a publisher sent, quoted for a message and cut at 128 bytes (keys come from
/// anyone).
pub fn quoted(key: &str) -> String {
    const MAX: usize = 128;
    if key.len() <= MAX {
        return format!("{key:?}");
    }
    let mut end = MAX;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}", format!("{}…", &key[..end]))
}

/// A key that is not an approved tag, and what to tell the publisher about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTag {
    pub key: String,
    pub hint: Hint,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// The closest approved tag.
    Suggest(String),
    /// The key is a tag that is proposed, not yet approved.
    Proposed,
    None,
}

impl fmt::Display for Hint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hint::Suggest(tag) => write!(f, " (did you mean {tag:?}?)"),
            Hint::Proposed => f.write_str(" (proposed, not yet approved)"),
            Hint::None => Ok(()),
        }
    }
}

/// Parses a timestamp value: epoch milliseconds (number or digit string) or RFC 3339.
pub fn parse_timestamp(field: &str, v: &Value) -> Result<i64, RejectReason> {
    timestamp_of(field, &Field::of(v))
}

pub(crate) fn timestamp_of(field: &str, v: &Field<'_>) -> Result<i64, RejectReason> {
    let bad = |detail: String| RejectReason::BadTimestamp {
        field: field.to_string(),
        detail,
    };
    match v {
        Field::Null => Err(RejectReason::MissingTimestamp {
            field: field.to_string(),
        }),
        Field::Number(n) => {
            if let Some(ms) = n.as_i64() {
                Ok(ms)
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
                    _ => Err(bad(format!("is {n}, not a whole number of milliseconds"))),
                }
            }
        }
        Field::Str(s) => {
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                return s
                    .parse::<i64>()
                    .map_err(|_| bad(format!("{s:?} is too large")));
            }
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| bad(format!("{s:?} is not a valid time ({e})")))
        }
        other => Err(bad(format!("is {}", other.kind()))),
    }
}

/// One top-level field of a beacon, as extraction needs it: scalars with their value,
/// containers only by kind. Strings borrow from the beacon when they can.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Field<'a> {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl<'a> Field<'a> {
    fn of(v: &'a Value) -> Field<'a> {
        match v {
            Value::Null => Field::Null,
            Value::Bool(b) => Field::Bool(*b),
            Value::Number(n) => Field::Number(n.clone()),
            Value::String(s) => Field::Str(Cow::Borrowed(s.as_str())),
            Value::Array(_) => Field::Array,
            Value::Object(_) => Field::Object,
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Field::Null => "null",
            Field::Bool(_) => "a boolean",
            Field::Number(_) => "a number",
            Field::Str(_) => "a string",
            Field::Array => "an array",
            Field::Object => "an object",
        }
    }
}

/// Extracts an event from a parsed beacon under `spec`.
pub fn extract<'a>(spec: &DatasourceSpec, beacon: &'a Value) -> Result<Event<'a>, RejectReason> {
    let obj = beacon.as_object().ok_or(RejectReason::NotAnObject)?;
    extract_object(spec, obj)
}

pub fn extract_object<'a>(
    spec: &DatasourceSpec,
    obj: &'a Map<String, Value>,
) -> Result<Event<'a>, RejectReason> {
    extract_fields(spec, |name| obj.get(name).map(Field::of))
}

/// Extracts an event straight from a beacon's JSON bytes, as [`extract`] of the parsed value
/// would (same results, same reasons), without building the value: one pass that keeps only
/// the fields the spec reads and borrows their strings. This is apply's hot path.
pub fn extract_json<'a>(
    spec: &DatasourceSpec,
    beacon: &'a [u8],
) -> Result<Event<'a>, RejectReason> {
    let wanted = TopLevel(Some(spec));
    let mut de = serde_json::Deserializer::from_slice(beacon);
    let fields = serde::de::DeserializeSeed::deserialize(wanted, &mut de)
        .and_then(|f| de.end().map(|()| f))
        .map_err(|e| RejectReason::Other {
            code: 1,
            detail: format!("record value is not valid JSON: {e}"),
        })?;
    let Some(fields) = fields else {
        return Err(RejectReason::NotAnObject);
    };
    extract_fields(spec, |name| {
        // The last occurrence of a repeated key wins, as it does in a parsed value.
        fields
            .iter()
            .rev()
            .find(|(k, _)| k.as_ref() == name)
            .map(|(_, f)| f.clone())
    })
}

pub(crate) fn extract_fields<'a>(
    spec: &DatasourceSpec,
    get: impl Fn(&str) -> Option<Field<'a>>,
) -> Result<Event<'a>, RejectReason> {
    let ts_field = &spec.timestamp.field;
    let time_ms = match get(ts_field) {
        None => {
            return Err(RejectReason::MissingTimestamp {
                field: ts_field.clone(),
            });
        }
        Some(v) => timestamp_of(ts_field, &v)?,
    };

    let mut dims = Vec::with_capacity(spec.dimensions.len());
    for name in &spec.dimensions {
        dims.push(match get(name) {
            None | Some(Field::Null) => None,
            Some(Field::Str(s)) => Some(s),
            Some(Field::Number(n)) => Some(DimValue::Owned(n.to_string())),
            Some(Field::Bool(b)) => Some(DimValue::Borrowed(if b { "true" } else { "false" })),
            Some(other) => {
                return Err(RejectReason::BadDimension {
                    name: name.clone(),
                    got: other.kind(),
                });
            }
        });
    }

    let mut metrics = Vec::with_capacity(spec.metrics.len());
    for metric in &spec.metrics {
        let input = match (&metric.kind, metric.kind.field().map(|f| (f, get(f)))) {
            (MetricKind::Count, _) => MetricInput::Count,
            (_, None) | (_, Some((_, None))) | (_, Some((_, Some(Field::Null)))) => {
                MetricInput::Absent
            }
            (kind, Some((field, Some(v)))) => {
                let bad = |expected: &'static str, got: String| RejectReason::BadField {
                    metric: metric.name.clone(),
                    field: field.to_string(),
                    expected,
                    got,
                };
                match kind {
                    MetricKind::LongSum { .. } => match v {
                        Field::Number(n) => match n.as_i64() {
                            Some(i) => MetricInput::Long(i),
                            None => {
                                return Err(bad("a whole number within 64 bits", n.to_string()));
                            }
                        },
                        other => return Err(bad("a whole number", other.kind().to_string())),
                    },
                    MetricKind::Hll { .. } => match v {
                        Field::Str(s) => MetricInput::Distinct(s),
                        Field::Number(n) => MetricInput::Distinct(DimValue::Owned(n.to_string())),
                        Field::Bool(b) => MetricInput::Distinct(DimValue::Borrowed(if b {
                            "true"
                        } else {
                            "false"
                        })),
                        other => {
                            return Err(bad(
                                "a string, number or boolean",
                                other.kind().to_string(),
                            ));
                        }
                    },
                    _ => match v {
                        Field::Number(n) => match n.as_f64() {
                            Some(f) if f.is_finite() => MetricInput::Double(f),
                            _ => return Err(bad("a finite number", n.to_string())),
                        },
                        other => return Err(bad("a number", other.kind().to_string())),
                    },
                }
            }
        };
        metrics.push(input);
    }
    Ok(Event {
        time_ms,
        dims,
        metrics,
    })
}

/// The one-pass reader of a beacon's top-level fields: `deserialize` yields `None` for a
/// beacon that is not an object, else its fields in document order — only those the spec
/// reads, or all of them without a spec (standardisation must see every key).
pub(crate) struct TopLevel<'s>(pub(crate) Option<&'s DatasourceSpec>);

impl TopLevel<'_> {
    fn wants(&self, key: &str) -> bool {
        let Some(s) = self.0 else { return true };
        s.timestamp.field == key
            || s.dimensions.iter().any(|d| d == key)
            || s.metrics.iter().any(|m| m.kind.field() == Some(key))
    }
}

pub(crate) type Fields<'a> = Vec<(Cow<'a, str>, Field<'a>)>;

impl<'de> serde::de::DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Option<Fields<'de>>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TopLevel<'_> {
    type Value = Option<Fields<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(16);
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if self.wants(&key) {
                let field = map.next_value::<FieldOf<'de>>()?.0;
                out.push((key, field));
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(Some(out))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A key, borrowed from the input unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor).map(Key)
    }
}

struct StrVisitor;

impl<'de> serde::de::Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// One wanted field's value.
struct FieldOf<'a>(Field<'a>);

impl<'de> serde::Deserialize<'de> for FieldOf<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldVisitor).map(FieldOf)
    }
}

struct FieldVisitor;

impl<'de> serde::de::Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Field::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Field::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Field::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Field::Number(v.into()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        serde_json::Number::from_f64(v)
            .map(Field::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Field::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Field::Array)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Field::Object)
    }
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
        assert_eq!(
            parse_timestamp("ts", &json!("1970-01-01T00:00:01+01:00")),
            Ok(-3_599_000)
        );
        assert!(parse_timestamp("ts", &json!(12.5)).is_err());
        assert!(parse_timestamp("ts", &json!("yesterday")).is_err());
    }

    #[test]
    fn extract_json_agrees_with_extract_on_every_shape() {
        let s = spec();
        let beacons = [
            r#"{"ts": 1700000000000, "merchant_id": "m1", "page": "/a", "qty": 2, "amount": 1.25, "user_id": "u"}"#,
            r#"{"ts": "2026-11-26T10:00:00Z", "merchant_id": "m\u00e9\n", "page": true, "user_id": 7.5}"#,
            r#"{"ts": 1, "ts": 2, "merchant_id": null, "extra": {"deep": [1, {"x": 2}]}, "amount": -0.0}"#,
            r#"{"ts": 1, "qty": 1.5}"#,
            r#"{"ts": 1, "amount": "12"}"#,
            r#"{"ts": 1, "page": {"a": 1}}"#,
            r#"{"ts": 1, "page": [1]}"#,
            r#"{"ts": true}"#,
            r#"{"ts": 12.5}"#,
            r#"{"ts": "yesterday"}"#,
            r#"{"page": "x"}"#,
            r#"{"ts": 1, "qty": 18446744073709551615}"#,
            r#"{"ts": 1, "user_id": 18446744073709551615, "amount": 1e300}"#,
            r#"[1, 2]"#,
            r#""text""#,
            r#"42"#,
            r#"null"#,
            r#"{}"#,
        ];
        for b in beacons {
            let v: Value = serde_json::from_str(b).expect("valid JSON");
            assert_eq!(extract_json(&s, b.as_bytes()), extract(&s, &v), "{b}");
        }
        for bad in [&b"{\"ts\": 1"[..], b"", b"{\"ts\": 1} trailing", b"\xff"] {
            let reason = extract_json(&s, bad)
                .err()
                .map(|r| (r.code(), r.to_string()));
            assert!(
                reason
                    .as_ref()
                    .is_some_and(|(c, t)| *c == 1 && t.contains("not valid JSON")),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn rejections_name_the_field() {
        let s = spec();
        let cases = [
            (json!([1]), "not a JSON object"),
            (json!({"page": "x"}), "\"ts\" is missing"),
            (json!({"ts": true}), "is a boolean"),
            (json!({"ts": 1, "page": {"a": 1}}), "dimension \"page\""),
            (
                json!({"ts": 1, "qty": 1.5}),
                "field \"qty\" (for metric \"qty\") must be a whole number",
            ),
            (
                json!({"ts": 1, "amount": "12"}),
                "must be a number, got a string",
            ),
        ];
        for (beacon, needle) in cases {
            let reason = extract(&s, &beacon)
                .err()
                .map(|r| r.to_string())
                .unwrap_or_default();
            assert!(reason.contains(needle), "{beacon}: {reason}");
        }
    }
}
