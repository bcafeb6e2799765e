//! The per-record write rules, in one pure function: whether a beacon is taken, and if not,
//! why and whether that refusal binds. Apply runs it on every record it has not already a
//! binding verdict for; the doors run it read-only before logging, where a datasource
//! refuses whole batches (`invalid_records = reject_batch`), so a batch is refused at the
//! edge for exactly the records apply would refuse.
//!
//! The rules, in the order apply has always taken them (an entry replayed from the log must
//! refuse the same records, so this order never changes):
//! 1. publish rights: a tag the publisher's key may not send refuses the record, and the
//!    refusal binds (rights are judged when the beacon arrives, not when it is reprocessed);
//! 2. the datasource's spec and tag rules (standardisation): a refusal here does not bind,
//!    so a reindex under corrected rules (an alias added later) can take the beacon;
//! 3. the clock: an event time too far ahead of the writer's clock refuses the record, and
//!    binds (a clock decided it).
//!
//! A refusal that binds is written into the raw log frame, and every later read of the
//! record (replay, reindex) honours it before these rules run.

use tidemark_catalog::DatasourceSpec;
use tidemark_catalog::RejectReason;
use tidemark_catalog::standardise::{Standardised, TagRules, standardise_json, tags_not_permitted};

/// What the rules are judged against for one batch.
#[derive(Debug, Clone, Copy)]
pub struct WriteRules<'a> {
    /// The spec in force for the batch.
    pub spec: &'a DatasourceSpec,
    /// The domain's tag rules (`None`: the datasource is not governed).
    pub tag_rules: Option<&'a TagRules>,
    /// The publisher's key id and the tags its grant lets it send here (`None`: any tag).
    pub permitted: Option<(&'a str, &'a [String])>,
    /// The writer's clock and how far ahead of it an event may be stamped (`None`: no limit).
    pub future: Option<(i64, i64)>,
}

/// One record's verdict.
#[derive(Debug)]
pub enum Verdict<'a> {
    /// Taken, as standardised.
    Taken(Standardised<'a>),
    /// Refused, and the refusal binds: kept with the record for every later read.
    Binding(RejectReason),
    /// Refused under the rules as they are now; a reprocess judges it again.
    Refused(RejectReason),
}

impl Verdict<'_> {
    /// The refusal, whether it binds or not.
    pub fn refusal(&self) -> Option<&RejectReason> {
        match self {
            Verdict::Taken(_) => None,
            Verdict::Binding(r) | Verdict::Refused(r) => Some(r),
        }
    }
}

/// Judges one beacon's bytes under `rules`.
pub fn verdict<'a>(rules: &WriteRules<'_>, value: &'a [u8]) -> Verdict<'a> {
    if let Some((key_id, allowed)) = rules.permitted {
        let denied = denied_tags(value, allowed, &rules.spec.timestamp.field, rules.tag_rules);
        if !denied.is_empty() {
            return Verdict::Binding(RejectReason::TagsNotPermitted {
                key_id: key_id.to_string(),
                datasource: rules.spec.name.clone(),
                tags: denied,
            });
        }
    }
    let standardised = match standardise_json(rules.spec, rules.tag_rules, value) {
        Ok(s) => s,
        Err(reason) => return Verdict::Refused(reason),
    };
    if let Some((now_ms, limit_ms)) = rules.future
        && standardised.event.time_ms > now_ms.saturating_add(limit_ms)
    {
        return Verdict::Binding(RejectReason::TooFarInFuture {
            time_ms: standardised.event.time_ms,
            limit_ms,
        });
    }
    Verdict::Taken(standardised)
}

/// The tags of a beacon its publisher may not send (none when it is not a JSON object: the
/// spec's rules refuse it then).
fn denied_tags(
    value: &[u8],
    allowed: &[String],
    ts_field: &str,
    rules: Option<&TagRules>,
) -> Vec<String> {
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(value) {
        Ok(obj) => tags_not_permitted(obj.keys().map(String::as_str), allowed, ts_field, rules),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_catalog::spec::DEMO_BEACONS_SPEC;

    /// What a verdict was, in a form the table can state: taken, or refused (binding or not)
    /// with the reason's kind.
    #[derive(Debug, PartialEq)]
    enum Is {
        Taken,
        Binding(&'static str),
        Refused(&'static str),
    }

    fn kind(r: &RejectReason) -> &'static str {
        match r {
            RejectReason::TagsNotPermitted { .. } => "tags not permitted",
            RejectReason::TooFarInFuture { .. } => "too far in future",
            RejectReason::MissingTimestamp { .. } => "missing timestamp",
            RejectReason::BadField { .. } => "bad field",
            RejectReason::NotAnObject => "not an object",
            RejectReason::Other { .. } => "other",
            _ => "another reason",
        }
    }

    fn is(v: &Verdict<'_>) -> Is {
        match v {
            Verdict::Taken(_) => Is::Taken,
            Verdict::Binding(r) => Is::Binding(kind(r)),
            Verdict::Refused(r) => Is::Refused(kind(r)),
        }
    }

    #[test]
    fn the_rules_in_apply_order() {
        let spec = DatasourceSpec::from_json(DEMO_BEACONS_SPEC).expect("demo spec");
        let allowed = vec!["merchant_id".to_string(), "amount".to_string()];
        let any = WriteRules {
            spec: &spec,
            tag_rules: None,
            permitted: None,
            future: None,
        };
        let granted = WriteRules {
            permitted: Some(("k1", &allowed)),
            ..any
        };
        // Writer clock 1,000,000 ms, events up to 60 s ahead allowed.
        let clocked = WriteRules {
            future: Some((1_000_000, 60_000)),
            ..any
        };
        let both = WriteRules {
            permitted: Some(("k1", &allowed)),
            future: Some((1_000_000, 60_000)),
            ..any
        };
        let table: Vec<(&str, &WriteRules<'_>, &str, Is)> = vec![
            (
                "plain beacon",
                &any,
                r#"{"ts":1000,"merchant_id":"m1","page":"/"}"#,
                Is::Taken,
            ),
            (
                "no timestamp",
                &any,
                r#"{"merchant_id":"m1"}"#,
                Is::Refused("missing timestamp"),
            ),
            ("not JSON", &any, "nope", Is::Refused("other")),
            (
                "granted tags only",
                &granted,
                r#"{"ts":1000,"merchant_id":"m1"}"#,
                Is::Taken,
            ),
            (
                "a tag outside the grant binds",
                &granted,
                r#"{"ts":1000,"merchant_id":"m1","page":"/"}"#,
                Is::Binding("tags not permitted"),
            ),
            (
                "rights come before the spec",
                &granted,
                r#"{"merchant_id":"m1","page":"/"}"#,
                Is::Binding("tags not permitted"),
            ),
            (
                "not JSON under a grant: the spec refuses it, not the right",
                &granted,
                "nope",
                Is::Refused("other"),
            ),
            (
                "at the clock's limit",
                &clocked,
                r#"{"ts":1060000}"#,
                Is::Taken,
            ),
            (
                "past the clock's limit binds",
                &clocked,
                r#"{"ts":1060001}"#,
                Is::Binding("too far in future"),
            ),
            (
                "the spec comes before the clock",
                &clocked,
                r#"{"ts":9000000,"amount":"lots"}"#,
                Is::Refused("bad field"),
            ),
            (
                "rights come before the clock",
                &both,
                r#"{"ts":9000000,"page":"/"}"#,
                Is::Binding("tags not permitted"),
            ),
            (
                "no limit, no clock",
                &any,
                r#"{"ts":9000000000000}"#,
                Is::Taken,
            ),
        ];
        for (case, rules, beacon, expected) in table {
            let v = verdict(rules, beacon.as_bytes());
            assert_eq!(is(&v), expected, "{case}: {beacon}");
        }
    }

    #[test]
    fn a_refusal_names_the_key_the_datasource_and_the_tags() {
        let spec = DatasourceSpec::from_json(DEMO_BEACONS_SPEC).expect("demo spec");
        let allowed = vec!["merchant_id".to_string()];
        let rules = WriteRules {
            spec: &spec,
            tag_rules: None,
            permitted: Some(("k1", &allowed)),
            future: None,
        };
        let v = verdict(
            &rules,
            br#"{"ts":1,"merchant_id":"m","page":"/","app":"a"}"#,
        );
        let Verdict::Binding(RejectReason::TagsNotPermitted {
            key_id,
            datasource,
            mut tags,
        }) = v
        else {
            panic!("{v:?}");
        };
        tags.sort();
        assert_eq!(
            (key_id.as_str(), datasource.as_str(), tags),
            ("k1", "beacons", vec!["app".to_string(), "page".to_string()])
        );
    }
}
