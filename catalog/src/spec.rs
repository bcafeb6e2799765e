//! Datasource specs: what a datasource rolls up, how it buckets time, and how it partitions.
//!
//! A spec is parsed from JSON with the path of any bad field named (`metrics[2].type`), then
//! checked as a whole by [`DatasourceSpec::validate`], which reports every problem at once.
//! [`DatasourceSpec::check_update`] decides which changes an existing datasource may take:
//! dimensions and metrics may be added (older segments read them as null), granularities,
//! clustering and the late window may change (segments describe their own granularity);
//! nothing may be removed or retyped, and partitions may only grow, as in Kafka.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, SpecProblem};
use crate::period::Period;

/// The SQL name of the event-time column, reserved in every datasource.
pub const TIME_COLUMN: &str = "__time";

pub const PARTITIONS_MAX: u32 = 1024;
pub const NAME_LEN_MAX: usize = 128;
pub const HLL_LG_K_DEFAULT: u8 = 12;
pub const TDIGEST_COMPRESSION_DEFAULT: u16 = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasourceSpec {
    pub name: String,
    pub timestamp: TimestampSpec,
    pub granularity: GranularitySpec,
    #[serde(default)]
    pub dimensions: Vec<String>,
    #[serde(default)]
    pub metrics: Vec<MetricSpec>,
    /// The dimension that names a merchant: HTTP beacons partition by it and merchant-scoped
    /// keys filter by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Dimensions that segment rows are sorted by, before time.
    #[serde(default)]
    pub clustering: Vec<String>,
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// How long after an interval's end events are still expected; the interval persists
    /// when the writer's clock passes its end plus this window.
    #[serde(default = "default_late_window")]
    pub late_window: Period,
    #[serde(default)]
    pub invalid_records: InvalidRecordPolicy,
    /// What a beacon key that is not an approved tag of the datasource's governance domain
    /// does to the beacon (datasources in no domain are not governed).
    #[serde(default, skip_serializing_if = "UnknownTagPolicy::is_default")]
    pub unknown_tags: UnknownTagPolicy,
    /// Older data rolled up to coarser query granularities by the background compaction,
    /// e.g. `[{"after": "P30D", "granularity": "PT15M"}]`: an interval that ended more than
    /// `after` ago is compacted to `granularity` (sketches merged, never recomputed). PT15M
    /// keeps every time zone's day boundaries exact where PT1H would not (+05:30, +05:45).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollup_rules: Vec<RollupRule>,
}

/// One age-based rollup rule (see [`DatasourceSpec::rollup_rules`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupRule {
    pub after: Period,
    pub granularity: Period,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampSpec {
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GranularitySpec {
    /// The rollup bucket: events in one bucket with equal dimensions become one row.
    pub query: Period,
    /// The span of time one segment covers.
    pub segment: Period,
}

// Unknown keys are refused by `MetricKind` (serde's deny_unknown_fields does not combine with
// flatten on the outer struct).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: MetricKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
pub enum MetricKind {
    /// Number of events rolled into the row.
    Count,
    LongSum {
        field: String,
    },
    DoubleSum {
        field: String,
    },
    Min {
        field: String,
    },
    Max {
        field: String,
    },
    /// Distinct count of any scalar field, exact for small groups, HLL beyond.
    Hll {
        field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lg_k: Option<u8>,
    },
    /// Quantiles of a numeric field, exact for small groups, t-digest beyond.
    Tdigest {
        field: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compression: Option<u16>,
    },
}

impl MetricKind {
    /// The input field this metric reads, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            MetricKind::Count => None,
            MetricKind::LongSum { field }
            | MetricKind::DoubleSum { field }
            | MetricKind::Min { field }
            | MetricKind::Max { field }
            | MetricKind::Hll { field, .. }
            | MetricKind::Tdigest { field, .. } => Some(field),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            MetricKind::Count => "count",
            MetricKind::LongSum { .. } => "longSum",
            MetricKind::DoubleSum { .. } => "doubleSum",
            MetricKind::Min { .. } => "min",
            MetricKind::Max { .. } => "max",
            MetricKind::Hll { .. } => "hll",
            MetricKind::Tdigest { .. } => "tdigest",
        }
    }

    pub fn hll_lg_k(&self) -> u8 {
        match self {
            MetricKind::Hll { lg_k, .. } => lg_k.unwrap_or(HLL_LG_K_DEFAULT),
            _ => HLL_LG_K_DEFAULT,
        }
    }

    pub fn tdigest_compression(&self) -> u16 {
        match self {
            MetricKind::Tdigest { compression, .. } => {
                compression.unwrap_or(TDIGEST_COMPRESSION_DEFAULT)
            }
            _ => TDIGEST_COMPRESSION_DEFAULT,
        }
    }
}

/// What happens to an event that fails validation at apply time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidRecordPolicy {
    /// Keep it in the raw log, leave it out of the rollup, record it in `sys.rejects`.
    #[default]
    DeadLetter,
    /// Refuse the whole batch at the edge when any record fails the read-only check.
    RejectBatch,
}

/// What happens to a beacon carrying a key that is not an approved tag of its domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownTagPolicy {
    /// The key is left out; the answer names it (with a suggestion) and counts it.
    #[default]
    Drop,
    /// The beacon is rejected, its reason naming the keys and the closest approved tags.
    Reject,
}

impl UnknownTagPolicy {
    pub fn is_default(&self) -> bool {
        *self == UnknownTagPolicy::Drop
    }
}

fn default_partitions() -> u32 {
    1
}

fn default_late_window() -> Period {
    // Infallible: a constant, checked by the unit test below.
    Period::parse("PT10M").unwrap_or_else(|_| unreachable!("PT10M is a valid period"))
}

impl DatasourceSpec {
    /// Parses and validates a spec from JSON, naming the path of a malformed field.
    pub fn from_json(text: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let spec: DatasourceSpec = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            Error::InvalidSpec(vec![SpecProblem {
                field: if path == "." {
                    "(spec)".to_string()
                } else {
                    path
                },
                message: inner.to_string(),
            }])
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the spec as a whole and reports every problem found.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let mut problem = |field: String, message: String| {
            problems.push(SpecProblem { field, message });
        };

        if let Some(msg) = check_identifier(&self.name) {
            problem("name".into(), msg);
        }
        if self.timestamp.field.is_empty() {
            problem(
                "timestamp.field".into(),
                "must name the input field holding event time".into(),
            );
        }
        if !self
            .granularity
            .segment
            .is_multiple_of(&self.granularity.query)
        {
            problem(
                "granularity.segment".into(),
                format!(
                    "{} is not a whole multiple of the query granularity {}",
                    self.granularity.segment, self.granularity.query
                ),
            );
        }

        let mut columns: Vec<(&str, String)> = Vec::new();
        for (i, dim) in self.dimensions.iter().enumerate() {
            let path = format!("dimensions[{i}]");
            if let Some(msg) = check_identifier(dim) {
                problem(path.clone(), msg);
            }
            if dim == &self.timestamp.field {
                problem(
                    path.clone(),
                    format!("{dim:?} is the timestamp field and cannot also be a dimension"),
                );
            }
            columns.push((dim, path));
        }
        for (i, metric) in self.metrics.iter().enumerate() {
            let path = format!("metrics[{i}]");
            if let Some(msg) = check_identifier(&metric.name) {
                problem(format!("{path}.name"), msg);
            }
            columns.push((&metric.name, format!("{path}.name")));
            if let Some(field) = metric.kind.field()
                && field.is_empty()
            {
                problem(
                    format!("{path}.field"),
                    "must name the input field this metric reads".into(),
                );
            }
            if let MetricKind::Hll { lg_k: Some(k), .. } = metric.kind
                && !(4..=21).contains(&k)
            {
                problem(
                    format!("{path}.lg_k"),
                    format!("{k} is out of range; use 4 to 21 (default 12)"),
                );
            }
            if let MetricKind::Tdigest {
                compression: Some(c),
                ..
            } = metric.kind
                && c < 10
            {
                problem(
                    format!("{path}.compression"),
                    format!("{c} is too small; use at least 10 (default 100)"),
                );
            }
        }
        for (i, (name, path)) in columns.iter().enumerate() {
            if *name == TIME_COLUMN {
                problem(
                    path.clone(),
                    format!("{TIME_COLUMN:?} is reserved for event time"),
                );
            }
            if let Some((_, first)) = columns[..i].iter().find(|(other, _)| other == name) {
                problem(
                    path.clone(),
                    format!("column {name:?} is already defined at {first}"),
                );
            }
        }

        if let Some(tenant) = &self.tenant
            && !self.dimensions.contains(tenant)
        {
            problem(
                "tenant".into(),
                format!("{tenant:?} is not one of the dimensions"),
            );
        }
        for (i, key) in self.clustering.iter().enumerate() {
            if !self.dimensions.contains(key) {
                problem(
                    format!("clustering[{i}]"),
                    format!("{key:?} is not one of the dimensions"),
                );
            }
            if self.clustering[..i].contains(key) {
                problem(format!("clustering[{i}]"), format!("{key:?} appears twice"));
            }
        }
        let mut previous: Option<&RollupRule> = None;
        for (i, rule) in self.rollup_rules.iter().enumerate() {
            let path = format!("rollup_rules[{i}]");
            let g = &rule.granularity;
            if !g.is_multiple_of(&self.granularity.query)
                || !self.granularity.segment.is_multiple_of(g)
            {
                problem(
                    format!("{path}.granularity"),
                    format!(
                        "{g} must be a multiple of the query granularity {} that divides the segment granularity {}",
                        self.granularity.query, self.granularity.segment
                    ),
                );
            }
            if let Some(p) = previous
                && (rule.after.millis() <= p.after.millis()
                    || !g.is_multiple_of(&p.granularity)
                    || g == &p.granularity)
            {
                problem(
                    path.clone(),
                    format!(
                        "rules must go from younger to older data with coarser granularities: after {} ({}) \
                         comes after {} ({})",
                        rule.after, g, p.after, p.granularity
                    ),
                );
            }
            previous = Some(rule);
        }
        if self.partitions == 0 || self.partitions > PARTITIONS_MAX {
            problem(
                "partitions".into(),
                format!(
                    "{} is out of range; use 1 to {PARTITIONS_MAX}",
                    self.partitions
                ),
            );
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidSpec(problems))
        }
    }

    /// Decides whether `new` may replace `self` for an existing datasource.
    pub fn check_update(&self, new: &DatasourceSpec) -> Result<()> {
        let refuse = |reason: String| {
            Err(Error::IncompatibleUpdate {
                name: self.name.clone(),
                reason,
            })
        };
        if new.name != self.name {
            return refuse(format!(
                "the name cannot change (to {:?}); create a new datasource",
                new.name
            ));
        }
        if new.timestamp != self.timestamp {
            return refuse("the timestamp field cannot change".into());
        }
        for dim in &self.dimensions {
            if !new.dimensions.contains(dim) {
                return refuse(format!(
                    "dimension {dim:?} cannot be removed; dimensions may only be added"
                ));
            }
        }
        for old in &self.metrics {
            match new.metrics.iter().find(|m| m.name == old.name) {
                None => {
                    return refuse(format!(
                        "metric {:?} cannot be removed; metrics may only be added",
                        old.name
                    ));
                }
                Some(m) if m.kind != old.kind => {
                    return refuse(format!(
                        "metric {:?} cannot change its type or field; add a new metric instead",
                        old.name
                    ));
                }
                Some(_) => {}
            }
        }
        if new.tenant != self.tenant {
            return refuse("the tenant dimension cannot change".into());
        }
        if new.partitions < self.partitions {
            return refuse(format!(
                "partitions can only grow (from {} to {} asked)",
                self.partitions, new.partitions
            ));
        }
        new.validate()
    }

    pub fn dimension_index(&self, name: &str) -> Option<usize> {
        self.dimensions.iter().position(|d| d == name)
    }
}

/// The demo's `beacons` datasource.
pub const DEMO_BEACONS_SPEC: &str = r#"{"name": "beacons",
     "timestamp": {"field": "ts"},
     "granularity": {"query": "PT1M", "segment": "PT1H"},
     "dimensions": ["merchant_id", "app", "event", "page", "country", "device"],
     "metrics": [{"name": "count", "type": "count"},
                 {"name": "amount_sum", "type": "doubleSum", "field": "amount"},
                 {"name": "latency_sum", "type": "doubleSum", "field": "latency_ms"},
                 {"name": "latency_min", "type": "min", "field": "latency_ms"},
                 {"name": "latency_max", "type": "max", "field": "latency_ms"},
                 {"name": "users_hll", "type": "hll", "field": "user_id"},
                 {"name": "latency_td", "type": "tdigest", "field": "latency_ms"}],
     "tenant": "merchant_id",
     "clustering": ["merchant_id"],
     "partitions": 3,
     "late_window": "PT10M"}"#;

/// Names are SQL identifiers and Kafka topic names at once, so they keep to the common subset.
pub(crate) fn check_identifier(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > NAME_LEN_MAX {
        return Some(format!(
            "is {} bytes long; the limit is {NAME_LEN_MAX}",
            name.len()
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Some(format!(
            "{name:?} must start with a letter or _ and hold only letters, digits and _"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::DEMO_BEACONS_SPEC as BEACONS;

    fn beacons() -> DatasourceSpec {
        DatasourceSpec::from_json(BEACONS).expect("the demo spec is valid")
    }

    fn err_text(r: Result<impl std::fmt::Debug>) -> String {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn rollup_rules_go_from_younger_to_older_data_and_coarser_granularities() {
        let with = |rules: &str| {
            let mut v: serde_json::Value = serde_json::from_str(BEACONS).expect("json");
            v["rollup_rules"] = serde_json::from_str(rules).expect("rules json");
            DatasourceSpec::from_json(&v.to_string())
        };
        let ok = with(r#"[{"after": "P7D", "granularity": "PT5M"}, {"after": "P30D", "granularity": "PT15M"}]"#)
            .expect("valid rules");
        assert_eq!(ok.rollup_rules[1].granularity.millis(), 900_000);
        let e = err_text(with(
            r#"[{"after": "P30D", "granularity": "PT15M"}, {"after": "P7D", "granularity": "PT30M"}]"#,
        ));
        assert!(
            e.contains("rollup_rules[1]: rules must go from younger to older data"),
            "{e}"
        );
        let e = err_text(with(
            r#"[{"after": "P7D", "granularity": "PT15M"}, {"after": "P30D", "granularity": "PT20M"}]"#,
        ));
        assert!(e.contains("rollup_rules[1]: rules must go"), "{e}");
        let e = err_text(with(
            r#"[{"after": "P7D", "granularity": "PT15M", "keep": 1}]"#,
        ));
        assert!(e.contains("keep"), "{e}");
    }

    #[test]
    fn demo_spec_parses_with_defaults() {
        let spec = beacons();
        assert_eq!(spec.metrics.len(), 7);
        assert_eq!(spec.metrics[5].kind.hll_lg_k(), 12);
        assert_eq!(spec.metrics[6].kind.tdigest_compression(), 100);
        assert_eq!(spec.granularity.query.millis(), 60_000);
        assert_eq!(spec.late_window.millis(), 600_000);
        assert_eq!(spec.invalid_records, InvalidRecordPolicy::DeadLetter);
        assert_eq!(default_late_window().millis(), 600_000);
        // Round trip through JSON keeps the spec identical.
        let json = serde_json::to_string(&spec).expect("serializes");
        assert_eq!(DatasourceSpec::from_json(&json).expect("reparses"), spec);
    }

    #[test]
    fn malformed_field_is_named_by_path() {
        let text = BEACONS.replace(r#""type": "min""#, r#""type": "minimum""#);
        let err = err_text(DatasourceSpec::from_json(&text));
        assert!(err.contains("metrics[3]"), "{err}");
        assert!(err.contains("minimum"), "{err}");

        let text = BEACONS.replace(r#""PT1H""#, r#""1 hour""#);
        let err = err_text(DatasourceSpec::from_json(&text));
        assert!(err.contains("granularity.segment"), "{err}");

        let text = BEACONS.replace(r#""partitions": 3"#, r#""partitions": 3, "colour": "red""#);
        let err = err_text(DatasourceSpec::from_json(&text));
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn reports_every_semantic_problem_at_once() {
        let text = BEACONS
            .replace(r#""tenant": "merchant_id""#, r#""tenant": "shop""#)
            .replace(r#"["merchant_id", "app""#, r#"["merchant_id", "count""#)
            .replace(r#""partitions": 3"#, r#""partitions": 0"#)
            .replace(r#""segment": "PT1H""#, r#""segment": "PT90S""#);
        let err = err_text(DatasourceSpec::from_json(&text));
        for needle in [
            "tenant",
            "\"count\" is already defined",
            "partitions",
            "granularity.segment",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
    }

    #[test]
    fn updates_may_add_but_not_remove_or_retype() {
        let old = beacons();
        let mut added = old.clone();
        added.dimensions.push("campaign".into());
        added.metrics.push(MetricSpec {
            name: "qty".into(),
            kind: MetricKind::LongSum {
                field: "qty".into(),
            },
        });
        added.granularity.query = Period::parse("PT5M").expect("valid");
        assert!(old.check_update(&added).is_ok());

        let mut removed = old.clone();
        removed.dimensions.retain(|d| d != "page");
        assert!(err_text(old.check_update(&removed)).contains("\"page\" cannot be removed"));

        let mut retyped = old.clone();
        retyped.metrics[1].kind = MetricKind::LongSum {
            field: "amount".into(),
        };
        assert!(err_text(old.check_update(&retyped)).contains("amount_sum"));

        let mut fewer = old.clone();
        fewer.partitions = 2;
        assert!(err_text(old.check_update(&fewer)).contains("only grow"));
    }
}
