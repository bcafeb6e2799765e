//! Retention per datasource and form of data: how long the raw log, the rolled-up segments,
//! the rejects and the full-text index keep what they hold. Stored here, versioned by log
//! position like every rule; the DBA retention job enforces it.
//!
//! Invariant: a datasource's history is ordered by position and never empty once set; a form
//! left out (`null`) is kept forever. A datasource deleted and recreated under its name keeps
//! its retention, like its governance domain.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::LogPosition;
use crate::error::{Error, Result, SpecProblem};
use crate::governance::Versioned;
use crate::period::Period;

/// How long each form is kept (`None`: forever).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    #[serde(default)]
    pub raw: Option<Period>,
    #[serde(default)]
    pub segments: Option<Period>,
    #[serde(default)]
    pub rejects: Option<Period>,
    #[serde(default)]
    pub fulltext: Option<Period>,
}

impl Retention {
    /// Parses the JSON body of a retention rule, naming the field at fault.
    pub fn from_json(text: &str) -> Result<Retention> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let r: Retention = serde_path_to_error::deserialize(de).map_err(|e| {
            Error::InvalidRetention(vec![SpecProblem {
                field: e.path().to_string(),
                message: format!(
                    "{} (a retention rule is {{\"raw\": \"P30D\", \"segments\": \"P400D\", \"rejects\": \"P7D\", \
                     \"fulltext\": null}}; null keeps that form forever)",
                    e.inner()
                ),
            }])
        })?;
        r.validate()?;
        Ok(r)
    }

    fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        for (field, p) in self.forms() {
            if let Some(p) = p
                && p.millis() <= 0
            {
                problems.push(SpecProblem {
                    field: field.into(),
                    message: format!("{p} must be a positive period"),
                });
            }
        }
        // Segments are rolled up from the raw log: keeping the raw log longer is fine (it can
        // rebuild them), keeping segments longer than raw is the usual case; nothing to
        // cross-check except that rejects need their raw records to be reprocessed.
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidRetention(problems))
        }
    }

    /// (form name, period) in a fixed order.
    pub fn forms(&self) -> [(&'static str, Option<&Period>); 4] {
        [
            ("raw", self.raw.as_ref()),
            ("segments", self.segments.as_ref()),
            ("rejects", self.rejects.as_ref()),
            ("fulltext", self.fulltext.as_ref()),
        ]
    }
}

/// Sets a datasource's retention (`op`: put_retention).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RetentionCommand {
    PutRetention {
        datasource: String,
        retention: Retention,
        /// What the rule would remove when it was set, as the node that took the change
        /// counted it: for the audit row only (apply decides nothing by it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        would_remove: Option<serde_json::Value>,
    },
}

/// Every datasource's retention history.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Retentions {
    by_datasource: BTreeMap<String, Vec<Versioned<Retention>>>,
}

impl Retentions {
    /// The rule in force at `position` (`None`: never set then, so everything is kept).
    pub fn at(&self, datasource: &str, position: LogPosition) -> Option<&Versioned<Retention>> {
        let history = self.by_datasource.get(datasource)?;
        let i = history.partition_point(|v| v.position <= position);
        i.checked_sub(1).map(|i| &history[i])
    }

    /// The current rule of every datasource that has one, by name.
    pub fn current(&self) -> impl Iterator<Item = (&str, &Versioned<Retention>)> {
        self.by_datasource
            .iter()
            .filter_map(|(name, h)| h.last().map(|v| (name.as_str(), v)))
    }

    pub fn apply(&mut self, position: LogPosition, cmd: &RetentionCommand) {
        let RetentionCommand::PutRetention {
            datasource,
            retention,
            ..
        } = cmd;
        self.by_datasource
            .entry(datasource.clone())
            .or_default()
            .push(Versioned {
                position,
                value: retention.clone(),
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_with_named_problems_and_follow_log_positions() {
        let r = Retention::from_json(r#"{"raw":"P30D","segments":"P400D","rejects":"P7D"}"#)
            .expect("valid");
        assert_eq!(r.raw.as_ref().map(|p| p.millis()), Some(30 * 86_400_000));
        assert_eq!(r.fulltext, None);
        let err = Retention::from_json(r#"{"raw":"30 days"}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("invalid retention rule: raw: invalid period \"30 days\""),
            "{err}"
        );
        let err = Retention::from_json(r#"{"logs":"P1D"}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown field `logs`"), "{err}");

        let mut all = Retentions::default();
        all.apply(
            10,
            &RetentionCommand::PutRetention {
                datasource: "a".into(),
                retention: r.clone(),
                would_remove: None,
            },
        );
        let shorter = Retention {
            raw: Period::parse("P7D").ok(),
            ..r.clone()
        };
        all.apply(
            20,
            &RetentionCommand::PutRetention {
                datasource: "a".into(),
                retention: shorter.clone(),
                would_remove: None,
            },
        );
        assert!(all.at("a", 9).is_none());
        assert_eq!(all.at("a", 15).map(|v| &v.value), Some(&r));
        assert_eq!(all.at("a", 20).map(|v| &v.value), Some(&shorter));
        assert_eq!(
            all.current()
                .map(|(n, v)| (n, v.position))
                .collect::<Vec<_>>(),
            vec![("a", 20)]
        );
    }
}
