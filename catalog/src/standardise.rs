//! Standardising a beacon against its domain's tag registry, then extracting its event: the
//! one function apply, a restart's rebuild and the edge's read-only check all call, with the
//! rules in force at the entry's log position ([`TagRules`], compiled from
//! [`crate::governance::DomainEntry::tags_at`]).
//!
//! For a governed datasource, in this order (the first failure is the beacon's reason):
//! 1. A tag sent under two keys (its name and an alias) is refused (code 9); a key repeated
//!    keeps JSON's last-wins.
//! 2. Keys that are not tags of the domain, or only proposed ones, follow the datasource's
//!    `unknown_tags` policy: dropped (and named in the answer with a suggestion) or the beacon
//!    is refused naming them (code 7).
//! 3. Each registered tag's value must fit its type (code 8); null always fits. The spec's
//!    timestamp field keeps the timestamp reasons (codes 2 and 3).
//! 4. Aliases are renamed to their tag, and the event is extracted as for an ungoverned
//!    datasource ([`crate::event::extract_json`]).
//!
//! Deterministic: lookups only, never iteration over a hash map, so replicas agree.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use crate::event::{
    Event, Field, Hint, RejectReason, TopLevel, UnknownTag, extract_fields, extract_json,
    timestamp_of,
};
use crate::governance::{Tag, TagStatus, TagType};
use crate::spec::{DatasourceSpec, UnknownTagPolicy};
use crate::suggest::{Candidate, suggest};

/// A domain's tags at one log position, ready for lookups.
#[derive(Debug, Clone)]
pub struct TagRules {
    domain: String,
    tags: Vec<Tag>,
    /// Every name and alias → (index in `tags`, sent as an alias).
    keys: BTreeMap<String, (usize, bool)>,
    /// Approved tags' names and aliases: what suggestions choose from.
    candidates: Vec<Candidate>,
}

impl TagRules {
    pub fn compile<'t>(domain: &str, tags: impl IntoIterator<Item = &'t Tag>) -> TagRules {
        let tags: Vec<Tag> = tags.into_iter().cloned().collect();
        let mut keys = BTreeMap::new();
        let mut candidates = Vec::new();
        for (i, t) in tags.iter().enumerate() {
            keys.insert(t.name.clone(), (i, false));
            for a in &t.aliases {
                keys.insert(a.clone(), (i, true));
            }
            if t.status == TagStatus::Approved {
                candidates.push(Candidate::new(&t.name, &t.name, true));
                candidates.extend(t.aliases.iter().map(|a| Candidate::new(a, &t.name, false)));
            }
        }
        TagRules {
            domain: domain.to_string(),
            tags,
            keys,
            candidates,
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The tag `key` means, if it is a name or alias of a tag that is not merely proposed.
    pub fn resolve(&self, key: &str) -> Option<&Tag> {
        self.keys
            .get(key)
            .map(|(i, _)| &self.tags[*i])
            .filter(|t| t.status != TagStatus::Proposed)
    }

    /// The tag `key` names or aliases, whatever its status.
    pub fn lookup(&self, key: &str) -> Option<(&Tag, bool)> {
        self.keys
            .get(key)
            .map(|(i, alias)| (&self.tags[*i], *alias))
    }

    /// What to tell a publisher who sent `key`, which is not an approved or deprecated tag.
    pub fn hint(&self, key: &str) -> Hint {
        if self
            .lookup(key)
            .is_some_and(|(t, _)| t.status == TagStatus::Proposed)
        {
            return Hint::Proposed;
        }
        suggest(key, &self.candidates).map_or(Hint::None, |t| Hint::Suggest(t.to_string()))
    }
}

/// A key a beacon carried that is not a tag of its domain, left out under the `drop` policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedTag {
    pub key: String,
    pub hint: Hint,
}

impl DroppedTag {
    /// The text a publisher reads in the answer.
    pub fn message(&self, domain: &str) -> String {
        format!(
            "tag {} is not in domain {domain:?} and was dropped{}",
            crate::event::quoted(&self.key),
            self.hint
        )
    }
}

impl fmt::Display for DroppedTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", crate::event::quoted(&self.key), self.hint)
    }
}

/// An event and the keys dropped on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct Standardised<'a> {
    pub event: Event<'a>,
    pub dropped: Vec<DroppedTag>,
}

/// Standardises one beacon's JSON bytes under `rules` (none: the datasource is not governed)
/// and extracts its event under `spec`.
pub fn standardise_json<'a>(
    spec: &DatasourceSpec,
    rules: Option<&TagRules>,
    beacon: &'a [u8],
) -> Result<Standardised<'a>, RejectReason> {
    let Some(rules) = rules else {
        return extract_json(spec, beacon).map(|event| Standardised {
            event,
            dropped: Vec::new(),
        });
    };
    let mut de = serde_json::Deserializer::from_slice(beacon);
    let fields = serde::de::DeserializeSeed::deserialize(TopLevel(None), &mut de)
        .and_then(|f| de.end().map(|()| f))
        .map_err(|e| RejectReason::Other {
            code: 1,
            detail: format!("record value is not valid JSON: {e}"),
        })?;
    let Some(fields) = fields else {
        return Err(RejectReason::NotAnObject);
    };

    // Known tags by name, with the key each came as (the last occurrence of a key wins).
    let mut known: Vec<(&Tag, Cow<'a, str>, bool, Field<'a>)> = Vec::new();
    let mut unknown: Vec<Cow<'a, str>> = Vec::new();
    let mut duplicate: Option<RejectReason> = None;
    for (key, field) in fields {
        match rules
            .lookup(&key)
            .filter(|(tag, _)| tag.status != TagStatus::Proposed)
        {
            Some((tag, alias)) => match known.iter_mut().find(|(t, ..)| t.name == tag.name) {
                Some(slot) if slot.1 == key => slot.3 = field,
                Some(slot) => {
                    if duplicate.is_none() {
                        duplicate = Some(RejectReason::DuplicateTag {
                            tag: tag.name.clone(),
                            first: slot.1.to_string(),
                            second: key.to_string(),
                        });
                    }
                }
                None => known.push((tag, key, alias, field)),
            },
            None => {
                if !unknown.contains(&key) {
                    unknown.push(key);
                }
            }
        }
    }
    if let Some(reason) = duplicate {
        return Err(reason);
    }
    let dropped: Vec<DroppedTag> = unknown
        .iter()
        .map(|k| DroppedTag {
            key: k.to_string(),
            hint: rules.hint(k),
        })
        .collect();
    if !dropped.is_empty() && spec.unknown_tags == UnknownTagPolicy::Reject {
        return Err(RejectReason::UnknownTags {
            domain: rules.domain.clone(),
            tags: dropped
                .into_iter()
                .map(|d| UnknownTag {
                    key: d.key,
                    hint: d.hint,
                })
                .collect(),
        });
    }
    for (tag, key, alias, field) in &known {
        if tag.name == spec.timestamp.field {
            continue;
        }
        if let Some(got) = misfit(tag.ty, field) {
            return Err(RejectReason::WrongTagType {
                tag: tag.name.clone(),
                sent_as: alias.then(|| key.to_string()),
                ty: tag.ty,
                got,
            });
        }
    }
    let event = extract_fields(spec, |name| {
        known
            .iter()
            .find(|(t, ..)| t.name == name)
            .map(|(.., f)| f.clone())
    })?;
    Ok(Standardised { event, dropped })
}

/// Why `field` does not fit `ty` (what was sent), or `None` if it fits.
fn misfit(ty: TagType, field: &Field<'_>) -> Option<String> {
    let fits = match (ty, field) {
        (_, Field::Null) => true,
        (TagType::String, Field::Str(_)) => true,
        (TagType::Long, Field::Number(n)) => {
            return (n.as_i64().is_none()).then(|| n.to_string());
        }
        (TagType::Double, Field::Number(n)) => {
            return (!n.as_f64().is_some_and(f64::is_finite)).then(|| n.to_string());
        }
        (TagType::Boolean, Field::Bool(_)) => true,
        (TagType::Timestamp, f) => timestamp_of("", f).is_ok(),
        (TagType::Any, Field::Str(_) | Field::Number(_) | Field::Bool(_)) => true,
        _ => false,
    };
    (!fits).then(|| field.kind().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DimValue, MetricInput};

    fn spec(policy: &str) -> DatasourceSpec {
        DatasourceSpec::from_json(&format!(
            r#"{{"name":"payments","timestamp":{{"field":"ts"}},"granularity":{{"query":"PT1M","segment":"PT1H"}},
               "dimensions":["merchant_id","account_number","country"],
               "metrics":[{{"name":"count","type":"count"}},{{"name":"amount_sum","type":"doubleSum","field":"amount"}},
                          {{"name":"qty","type":"longSum","field":"qty"}},{{"name":"users","type":"hll","field":"user_id"}}],
               "unknown_tags":"{policy}"}}"#
        ))
        .expect("valid spec")
    }

    fn tags(extra_alias: bool) -> Vec<Tag> {
        let acct_aliases = if extra_alias { r#"["acct_num"]"# } else { "[]" };
        [
            r#"{"name":"ts","kind":"timestamp","type":"timestamp","status":"approved","aliases":["time"]}"#.to_string(),
            r#"{"name":"merchant_id","kind":"dimension","type":"string","status":"approved","required_in":["rollup"]}"#.into(),
            format!(r#"{{"name":"account_number","kind":"dimension","type":"string","status":"approved","aliases":{acct_aliases}}}"#),
            r#"{"name":"country","kind":"dimension","type":"string","status":"approved"}"#.into(),
            r#"{"name":"amount","kind":"field","type":"double","status":"approved"}"#.into(),
            r#"{"name":"qty","kind":"field","type":"long","status":"approved"}"#.into(),
            r#"{"name":"user_id","kind":"field","type":"any","status":"approved"}"#.into(),
            r#"{"name":"coupon","kind":"dimension","type":"string","status":"proposed"}"#.into(),
            r#"{"name":"legacy_sku","kind":"field","type":"string","status":"deprecated"}"#.into(),
        ]
        .iter()
        .map(|j| serde_json::from_str(j).expect("tag"))
        .collect()
    }

    fn rules(extra_alias: bool) -> TagRules {
        TagRules::compile("payments", &tags(extra_alias))
    }

    fn reason(policy: &str, beacon: &str) -> (u8, String) {
        let r = rules(true);
        let err = standardise_json(&spec(policy), Some(&r), beacon.as_bytes()).expect_err(beacon);
        (err.code(), err.to_string())
    }

    #[test]
    fn aliases_are_renamed_to_their_tag() {
        let r = rules(true);
        let b =
            r#"{"time":1000,"merchant_id":"m1","acct_num":"A-1","amount":2.5,"legacy_sku":"x"}"#;
        let s = standardise_json(&spec("reject"), Some(&r), b.as_bytes()).expect("valid");
        assert_eq!(s.event.time_ms, 1000);
        assert_eq!(
            s.event.dims,
            vec![
                Some(DimValue::Borrowed("m1")),
                Some(DimValue::Borrowed("A-1")),
                None
            ]
        );
        assert_eq!(s.event.metrics[1], MetricInput::Double(2.5));
        assert!(s.dropped.is_empty());
    }

    #[test]
    fn unknown_tags_are_dropped_with_a_suggestion() {
        let r = rules(true);
        let b = r#"{"ts":1,"acct_nm":"x","zzz":1,"acct_nm":"y","coupon":"c"}"#;
        let s =
            standardise_json(&spec("drop"), Some(&r), b.as_bytes()).expect("dropped, not rejected");
        assert_eq!(s.event.dims, vec![None, None, None]);
        let dropped: Vec<String> = s.dropped.iter().map(|d| d.message("payments")).collect();
        assert_eq!(
            dropped,
            vec![
                r#"tag "acct_nm" is not in domain "payments" and was dropped (did you mean "account_number"?)"#,
                r#"tag "zzz" is not in domain "payments" and was dropped"#,
                r#"tag "coupon" is not in domain "payments" and was dropped (proposed, not yet approved)"#,
            ]
        );
    }

    #[test]
    fn rejections_have_exact_reasons() {
        let cases = [
            (
                r#"{"ts":1,"acct_nm":"x"}"#,
                7,
                r#"unknown tag "acct_nm" in domain "payments" (did you mean "account_number"?)"#,
            ),
            (
                r#"{"ts":1,"zzz":1}"#,
                7,
                r#"unknown tag "zzz" in domain "payments""#,
            ),
            (
                r#"{"ts":1,"coupon":"c"}"#,
                7,
                r#"unknown tag "coupon" in domain "payments" (proposed, not yet approved)"#,
            ),
            (
                r#"{"ts":1,"zzz":1,"acct_nm":"x"}"#,
                7,
                r#"unknown tags in domain "payments": "zzz", "acct_nm" (did you mean "account_number"?)"#,
            ),
            (
                r#"{"ts":1,"a1":1,"a2":1,"a3":1,"a4":1,"a5":1,"a6":1,"a7":1}"#,
                7,
                r#"unknown tags in domain "payments": "a1", "a2", "a3", "a4", "a5" and 2 more"#,
            ),
            (
                r#"{"ts":1,"amount":"12"}"#,
                8,
                r#"tag "amount" must be a finite number (type double), got a string"#,
            ),
            (
                r#"{"ts":1,"acct_num":12}"#,
                8,
                r#"tag "account_number" (sent as "acct_num") must be a string (type string), got a number"#,
            ),
            (
                r#"{"ts":1,"qty":1.5}"#,
                8,
                r#"tag "qty" must be a whole number within 64 bits (type long), got 1.5"#,
            ),
            (
                r#"{"ts":1,"user_id":[1]}"#,
                8,
                r#"tag "user_id" must be a string, number or boolean (type any), got an array"#,
            ),
            (
                r#"{"ts":1,"acct_num":"a","account_number":"b"}"#,
                9,
                r#"tag "account_number" is sent twice, as "acct_num" and as "account_number"; send it once"#,
            ),
            // Unknown tags come before the missing timestamp; the timestamp keeps its reasons.
            (
                r#"{"zzz":1,"amount":"x"}"#,
                7,
                r#"unknown tag "zzz" in domain "payments""#,
            ),
            (
                r#"{"amount":2}"#,
                2,
                r#"timestamp field "ts" is missing or null"#,
            ),
            (r#"[1]"#, 1, "beacon is not a JSON object"),
        ];
        for (beacon, code, text) in cases {
            assert_eq!(
                reason("reject", beacon),
                (code, text.to_string()),
                "{beacon}"
            );
        }
        // Through its alias too, the timestamp keeps the timestamp reasons.
        let (code, text) = reason("reject", r#"{"time":"yesterday"}"#);
        assert_eq!(code, 3);
        assert!(
            text.starts_with(r#"timestamp field "ts" "yesterday" is not a valid time"#),
            "{text}"
        );
    }

    #[test]
    fn an_alias_added_later_renames_the_same_bytes() {
        let b = br#"{"ts":1,"merchant_id":"m","acct_num":"A"}"#;
        let before = standardise_json(&spec("drop"), Some(&rules(false)), b).expect("v1");
        assert_eq!(before.event.dims[1], None);
        assert_eq!(before.dropped.len(), 1);
        let after = standardise_json(&spec("drop"), Some(&rules(true)), b).expect("v2");
        assert_eq!(after.event.dims[1], Some(DimValue::Borrowed("A")));
        assert!(after.dropped.is_empty());
    }

    #[test]
    fn without_rules_it_is_extract_json() {
        let s = spec("reject");
        for b in [
            r#"{"ts":1,"zzz":1,"merchant_id":"m"}"#,
            r#"{"amount":1}"#,
            r#"[1]"#,
            r#"{"ts":1,"qty":1.5}"#,
        ] {
            let plain = extract_json(&s, b.as_bytes());
            let governed = standardise_json(&s, None, b.as_bytes()).map(|x| x.event);
            assert_eq!(governed, plain, "{b}");
        }
    }
}

/// The keys of a beacon that name tags outside `allowed` (a publisher key's grant for one
/// datasource): each key counts as the tag it names or aliases under `rules`, and the
/// timestamp field is always allowed. Order follows `keys`.
pub fn tags_not_permitted<'k>(
    keys: impl IntoIterator<Item = &'k str>,
    allowed: &[String],
    ts_field: &str,
    rules: Option<&TagRules>,
) -> Vec<String> {
    keys.into_iter()
        .filter(|k| {
            let tag = rules
                .and_then(|r| r.resolve(k))
                .map_or(*k, |t| t.name.as_str());
            tag != ts_field && !allowed.iter().any(|a| a == tag)
        })
        .map(str::to_string)
        .collect()
}
