//! The tag registry: which tags a governance domain (a set of datasources) knows, what each
//! is (kind, type, owner, status), the aliases publishers may send for it, and the forms it
//! is required in. Catalog state, changed only by [`GovernanceCommand`]s applied at log
//! positions.
//!
//! Invariants:
//! - History is kept per tag and per domain settings, by log position, so the rules in force
//!   at any position can be rebuilt ([`DomainEntry::tags_at`]): standardisation at apply and
//!   reprocessing both read the rules of the entry's position, never "now".
//! - Within a domain a key (a tag's name or alias) means one tag: no alias equals another
//!   tag's name or alias, so standardising is a lookup, never a choice.
//! - A datasource belongs to at most one domain.
//! - Applying is deterministic and idempotent by position, like the datasource specs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::LogPosition;
use crate::error::{Error, Result, SpecProblem};
use crate::spec::check_identifier;

pub const ALIAS_LEN_MAX: usize = 128;
pub const TEXT_LEN_MAX: usize = 1024;

/// What a tag is used as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagKind {
    /// A string tag to group and filter by.
    Dimension,
    /// A value a metric reads.
    Field,
    /// The event time.
    Timestamp,
}

/// The JSON values a tag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagType {
    String,
    Long,
    Double,
    Boolean,
    /// Epoch milliseconds or RFC 3339.
    Timestamp,
    /// Any scalar (a distinct count reads strings and numbers alike).
    Any,
}

impl TagType {
    pub fn name(self) -> &'static str {
        match self {
            TagType::String => "string",
            TagType::Long => "long",
            TagType::Double => "double",
            TagType::Boolean => "boolean",
            TagType::Timestamp => "timestamp",
            TagType::Any => "any",
        }
    }

    /// What a value of this type looks like, for messages.
    pub fn expected(self) -> &'static str {
        match self {
            TagType::String => "a string",
            TagType::Long => "a whole number within 64 bits",
            TagType::Double => "a finite number",
            TagType::Boolean => "true or false",
            TagType::Timestamp => "epoch milliseconds or an RFC 3339 time",
            TagType::Any => "a string, number or boolean",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagStatus {
    /// Suggested, not yet in use: beacons carrying it are treated as carrying an unknown tag.
    #[default]
    Proposed,
    Approved,
    /// Still accepted, no longer suggested.
    Deprecated,
}

impl TagStatus {
    pub fn name(self) -> &'static str {
        match self {
            TagStatus::Proposed => "proposed",
            TagStatus::Approved => "approved",
            TagStatus::Deprecated => "deprecated",
        }
    }
}

/// A form a tag must be kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// A rollup dimension of every datasource of the domain.
    Rollup,
    /// Full-text searchable (used once search lands).
    Search,
    /// Kept for batch processing (used once batch jobs land).
    Batch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub name: String,
    pub kind: TagKind,
    #[serde(rename = "type")]
    pub ty: TagType,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub owner_team: String,
    #[serde(default)]
    pub status: TagStatus,
    /// Keys publishers send for this tag, renamed to it at apply (`acct_num` →
    /// `account_number`).
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub required_in: Vec<Form>,
}

impl Tag {
    /// Checks the tag on its own and puts aliases and forms in a canonical order.
    pub fn normalised(mut self) -> Result<Tag> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(SpecProblem {
                field: field.into(),
                message,
            })
        };
        if let Some(msg) = check_identifier(&self.name) {
            problem("name", msg);
        }
        match (self.kind, self.ty) {
            (TagKind::Timestamp, TagType::Timestamp) => {}
            (TagKind::Timestamp, ty) => problem(
                "type",
                format!("a timestamp tag has type timestamp, not {}", ty.name()),
            ),
            (_, TagType::Timestamp) => problem(
                "type",
                "type timestamp is for tags of kind timestamp (the event time)".into(),
            ),
            _ => {}
        }
        if self.required_in.contains(&Form::Rollup) && self.kind != TagKind::Dimension {
            problem(
                "required_in",
                "only a dimension can be required as a rollup dimension".into(),
            );
        }
        for (i, alias) in self.aliases.iter().enumerate() {
            let field = format!("aliases[{i}]");
            if alias.is_empty() || alias.len() > ALIAS_LEN_MAX {
                problem(&field, format!("must be 1 to {ALIAS_LEN_MAX} bytes long"));
            } else if alias.chars().any(char::is_control) {
                problem(&field, format!("{alias:?} holds a control character"));
            } else if alias == &self.name {
                problem(&field, format!("{alias:?} is the tag's own name"));
            } else if self.aliases[..i].contains(alias) {
                problem(&field, format!("{alias:?} appears twice"));
            }
        }
        if self.description.len() > TEXT_LEN_MAX {
            problem(
                "description",
                format!(
                    "is {} bytes long; the limit is {TEXT_LEN_MAX}",
                    self.description.len()
                ),
            );
        }
        if self.owner_team.len() > TEXT_LEN_MAX {
            problem(
                "owner_team",
                format!(
                    "is {} bytes long; the limit is {TEXT_LEN_MAX}",
                    self.owner_team.len()
                ),
            );
        }
        if !problems.is_empty() {
            return Err(Error::InvalidTag(problems));
        }
        self.aliases.sort();
        self.required_in.sort();
        self.required_in.dedup();
        Ok(self)
    }

    /// Every key that means this tag: its name, then its aliases.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// A domain's own settings: which datasources its tags govern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSettings {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub datasources: Vec<String>,
}

impl DomainSettings {
    pub fn normalised(mut self) -> Result<DomainSettings> {
        let mut problems = Vec::new();
        if let Some(msg) = check_identifier(&self.name) {
            problems.push(SpecProblem {
                field: "name".into(),
                message: msg,
            });
        }
        for (i, ds) in self.datasources.iter().enumerate() {
            if let Some(msg) = check_identifier(ds) {
                problems.push(SpecProblem {
                    field: format!("datasources[{i}]"),
                    message: msg,
                });
            }
        }
        if self.description.len() > TEXT_LEN_MAX {
            problems.push(SpecProblem {
                field: "description".into(),
                message: format!(
                    "is {} bytes long; the limit is {TEXT_LEN_MAX}",
                    self.description.len()
                ),
            });
        }
        if !problems.is_empty() {
            return Err(Error::InvalidTag(problems));
        }
        self.datasources.sort();
        self.datasources.dedup();
        Ok(self)
    }
}

/// Parses a tag or domain from JSON, naming the path of a malformed field.
pub fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        Error::InvalidTag(vec![SpecProblem {
            field: if path == "." {
                "(body)".to_string()
            } else {
                path
            },
            message: e.into_inner().to_string(),
        }])
    })
}

/// A value and the log position it took effect at.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versioned<T> {
    pub position: LogPosition,
    pub value: T,
}

fn at<T>(history: &[Versioned<T>], position: LogPosition) -> Option<&T> {
    history
        .iter()
        .rev()
        .find(|v| v.position <= position)
        .map(|v| &v.value)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEntry {
    pub name: String,
    /// Oldest first; never empty.
    pub settings: Vec<Versioned<DomainSettings>>,
    /// Per tag, oldest first; `None` once removed.
    pub tags: BTreeMap<String, Vec<Versioned<Option<Tag>>>>,
}

impl DomainEntry {
    pub fn created_at(&self) -> LogPosition {
        self.settings.first().map_or(0, |v| v.position)
    }

    pub fn current(&self) -> &DomainSettings {
        // `settings` is never empty (created with one version).
        &self.settings[self.settings.len() - 1].value
    }

    pub fn settings_at(&self, position: LogPosition) -> Option<&DomainSettings> {
        at(&self.settings, position)
    }

    /// The tags in force at `position`, by name.
    pub fn tags_at(&self, position: LogPosition) -> impl Iterator<Item = &Tag> {
        self.tags
            .values()
            .filter_map(move |h| at(h, position).and_then(Option::as_ref))
    }

    pub fn tag(&self, name: &str) -> Option<&Tag> {
        self.tags
            .get(name)
            .and_then(|h| h.last())
            .and_then(|v| v.value.as_ref())
    }

    /// Where `name` was last changed (for `versions` in answers and the rules cache).
    pub fn tag_history(&self, name: &str) -> &[Versioned<Option<Tag>>] {
        self.tags.get(name).map_or(&[], Vec::as_slice)
    }

    /// The last position at or before `position` at which this domain changed at all.
    pub fn changed_at_or_before(&self, position: LogPosition) -> LogPosition {
        let settings = self.settings.iter().map(|v| v.position);
        let tags = self.tags.values().flatten().map(|v| v.position);
        settings
            .chain(tags)
            .filter(|p| *p <= position)
            .max()
            .unwrap_or(0)
    }
}

/// A change to the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GovernanceCommand {
    CreateDomain {
        domain: DomainSettings,
    },
    UpdateDomain {
        domain: DomainSettings,
    },
    /// Creates or replaces a tag.
    PutTag {
        domain: String,
        tag: Tag,
    },
    /// Removes a proposed tag (an approved one is deprecated instead, so old data stays
    /// explained).
    RemoveTag {
        domain: String,
        tag: String,
    },
}

/// What applying a governance command changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GovernanceEffect {
    DomainCreated(String),
    DomainUpdated(String),
    TagCreated {
        domain: String,
        tag: String,
    },
    TagUpdated {
        domain: String,
        tag: String,
    },
    TagRemoved {
        domain: String,
        tag: String,
    },
    /// The command asked for what already was.
    Unchanged,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Governance {
    domains: BTreeMap<String, DomainEntry>,
}

impl Governance {
    pub fn domain(&self, name: &str) -> Option<&DomainEntry> {
        self.domains.get(name)
    }

    pub fn domains(&self) -> impl Iterator<Item = &DomainEntry> {
        self.domains.values()
    }

    /// The domain whose settings at `position` list `datasource`.
    pub fn domain_of(&self, datasource: &str, position: LogPosition) -> Option<&DomainEntry> {
        self.domains.values().find(|d| {
            d.settings_at(position)
                .is_some_and(|s| s.datasources.iter().any(|n| n == datasource))
        })
    }

    /// Checks `cmd` against the registry as it is (the catalog adds the checks against
    /// datasource specs). Reports every problem of a tag at once.
    pub fn check(&self, cmd: &GovernanceCommand) -> Result<()> {
        match cmd {
            GovernanceCommand::CreateDomain { domain } => {
                let domain = domain.clone().normalised()?;
                if self.domains.contains_key(&domain.name) {
                    return Err(Error::DomainExists { name: domain.name });
                }
                self.check_membership(&domain)
            }
            GovernanceCommand::UpdateDomain { domain } => {
                let domain = domain.clone().normalised()?;
                if !self.domains.contains_key(&domain.name) {
                    return Err(Error::UnknownDomain { name: domain.name });
                }
                self.check_membership(&domain)
            }
            GovernanceCommand::PutTag { domain, tag } => {
                let entry = self
                    .domains
                    .get(domain)
                    .ok_or_else(|| Error::UnknownDomain {
                        name: domain.clone(),
                    })?;
                let tag = tag.clone().normalised()?;
                let mut problems = Vec::new();
                for other in entry
                    .tags_at(LogPosition::MAX)
                    .filter(|t| t.name != tag.name)
                {
                    for (i, key) in tag.keys().enumerate() {
                        if other.keys().any(|k| k == key) {
                            let field = if i == 0 {
                                "name".to_string()
                            } else {
                                format!("aliases[{}]", i - 1)
                            };
                            let what = if key == other.name {
                                format!(
                                    "{key:?} is already the tag {:?} in domain {domain:?}",
                                    other.name
                                )
                            } else {
                                format!(
                                    "{key:?} is already an alias of tag {:?} in domain {domain:?}",
                                    other.name
                                )
                            };
                            problems.push(SpecProblem {
                                field,
                                message: what,
                            });
                        }
                    }
                }
                if problems.is_empty() {
                    Ok(())
                } else {
                    Err(Error::GovernanceConflict(problems))
                }
            }
            GovernanceCommand::RemoveTag { domain, tag } => {
                let entry = self
                    .domains
                    .get(domain)
                    .ok_or_else(|| Error::UnknownDomain {
                        name: domain.clone(),
                    })?;
                let current = entry.tag(tag).ok_or_else(|| Error::UnknownTag {
                    domain: domain.clone(),
                    name: tag.clone(),
                })?;
                if current.status != TagStatus::Proposed {
                    return Err(Error::GovernanceConflict(vec![SpecProblem {
                        field: "status".into(),
                        message: format!(
                            "tag {tag:?} is {}; only a proposed tag can be removed (deprecate it instead)",
                            current.status.name()
                        ),
                    }]));
                }
                Ok(())
            }
        }
    }

    fn check_membership(&self, domain: &DomainSettings) -> Result<()> {
        let mut problems = Vec::new();
        for (i, ds) in domain.datasources.iter().enumerate() {
            if let Some(other) = self
                .domain_of(ds, LogPosition::MAX)
                .filter(|d| d.name != domain.name)
            {
                problems.push(SpecProblem {
                    field: format!("datasources[{i}]"),
                    message: format!(
                        "datasource {ds:?} is already in domain {:?}; a datasource belongs to one domain",
                        other.name
                    ),
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::GovernanceConflict(problems))
        }
    }

    /// Applies a checked command at `position`.
    pub fn apply(
        &mut self,
        position: LogPosition,
        cmd: &GovernanceCommand,
    ) -> Result<GovernanceEffect> {
        self.check(cmd)?;
        Ok(match cmd {
            GovernanceCommand::CreateDomain { domain } => {
                let domain = domain.clone().normalised()?;
                let name = domain.name.clone();
                self.domains.insert(
                    name.clone(),
                    DomainEntry {
                        name: name.clone(),
                        settings: vec![Versioned {
                            position,
                            value: domain,
                        }],
                        tags: BTreeMap::new(),
                    },
                );
                GovernanceEffect::DomainCreated(name)
            }
            GovernanceCommand::UpdateDomain { domain } => {
                let domain = domain.clone().normalised()?;
                let name = domain.name.clone();
                let entry = self
                    .domains
                    .get_mut(&name)
                    .ok_or_else(|| Error::UnknownDomain { name: name.clone() })?;
                if entry.current() == &domain {
                    return Ok(GovernanceEffect::Unchanged);
                }
                entry.settings.push(Versioned {
                    position,
                    value: domain,
                });
                GovernanceEffect::DomainUpdated(name)
            }
            GovernanceCommand::PutTag { domain, tag } => {
                let tag = tag.clone().normalised()?;
                let entry = self
                    .domains
                    .get_mut(domain)
                    .ok_or_else(|| Error::UnknownDomain {
                        name: domain.clone(),
                    })?;
                let history = entry.tags.entry(tag.name.clone()).or_default();
                let existed = history.last().is_some_and(|v| v.value.is_some());
                if history.last().and_then(|v| v.value.as_ref()) == Some(&tag) {
                    return Ok(GovernanceEffect::Unchanged);
                }
                let name = tag.name.clone();
                history.push(Versioned {
                    position,
                    value: Some(tag),
                });
                if existed {
                    GovernanceEffect::TagUpdated {
                        domain: domain.clone(),
                        tag: name,
                    }
                } else {
                    GovernanceEffect::TagCreated {
                        domain: domain.clone(),
                        tag: name,
                    }
                }
            }
            GovernanceCommand::RemoveTag { domain, tag } => {
                let entry = self
                    .domains
                    .get_mut(domain)
                    .ok_or_else(|| Error::UnknownDomain {
                        name: domain.clone(),
                    })?;
                entry.tags.entry(tag.clone()).or_default().push(Versioned {
                    position,
                    value: None,
                });
                GovernanceEffect::TagRemoved {
                    domain: domain.clone(),
                    tag: tag.clone(),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tag(json: &str) -> Tag {
        serde_json::from_str(json).expect("tag JSON")
    }

    fn domain(name: &str, datasources: &[&str]) -> DomainSettings {
        DomainSettings {
            name: name.into(),
            description: String::new(),
            datasources: datasources.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn tags_are_checked_on_their_own() {
        let bad = tag(
            r#"{"name":"1x","kind":"dimension","type":"timestamp","aliases":["", "1x", "a", "a"],
                "required_in":["rollup"]}"#,
        );
        let Err(Error::InvalidTag(problems)) = bad.normalised() else {
            panic!("refused")
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec!["name", "type", "aliases[0]", "aliases[1]", "aliases[3]"]
        );
        let bad =
            tag(r#"{"name":"amount","kind":"field","type":"double","required_in":["rollup"]}"#);
        let Err(Error::InvalidTag(problems)) = bad.normalised() else {
            panic!("refused")
        };
        assert_eq!(
            problems[0].to_string(),
            "required_in: only a dimension can be required as a rollup dimension"
        );
        let ok = tag(
            r#"{"name":"account_number","kind":"dimension","type":"string","aliases":["b","a"]}"#,
        );
        assert_eq!(ok.normalised().expect("valid").aliases, vec!["a", "b"]);
    }

    #[test]
    fn history_answers_for_any_position() {
        let mut g = Governance::default();
        let put = |t: &str| GovernanceCommand::PutTag {
            domain: "payments".into(),
            tag: tag(t),
        };
        let acct =
            r#"{"name":"account_number","kind":"dimension","type":"string","status":"approved"}"#;
        let acct_alias = r#"{"name":"account_number","kind":"dimension","type":"string","status":"approved",
                              "aliases":["acct_num"]}"#;
        assert_eq!(
            g.apply(
                10,
                &GovernanceCommand::CreateDomain {
                    domain: domain("payments", &["payments"])
                }
            )
            .expect("create"),
            GovernanceEffect::DomainCreated("payments".into())
        );
        assert!(matches!(
            g.apply(20, &put(acct)).expect("put"),
            GovernanceEffect::TagCreated { .. }
        ));
        assert_eq!(
            g.apply(25, &put(acct)).expect("same again"),
            GovernanceEffect::Unchanged
        );
        assert!(matches!(
            g.apply(30, &put(acct_alias)).expect("alias"),
            GovernanceEffect::TagUpdated { .. }
        ));
        let d = g.domain("payments").expect("domain");
        let aliases = |p: LogPosition| {
            d.tags_at(p)
                .flat_map(|t| t.aliases.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(d.tags_at(15).count(), 0);
        assert_eq!(aliases(29), Vec::<String>::new());
        assert_eq!(aliases(30), vec!["acct_num".to_string()]);
        assert_eq!(
            (d.changed_at_or_before(29), d.changed_at_or_before(1000)),
            (20, 30)
        );
        assert_eq!(g.domain_of("payments", 9).map(|d| d.name.as_str()), None);
        assert_eq!(
            g.domain_of("payments", 10).map(|d| d.name.as_str()),
            Some("payments")
        );
    }

    #[test]
    fn conflicts_name_the_other_tag() {
        let mut g = Governance::default();
        g.apply(
            1,
            &GovernanceCommand::CreateDomain {
                domain: domain("payments", &["payments"]),
            },
        )
        .expect("create");
        let put = |t: &str| GovernanceCommand::PutTag {
            domain: "payments".into(),
            tag: tag(t),
        };
        g.apply(
            2,
            &put(r#"{"name":"amount","kind":"field","type":"double","status":"approved"}"#),
        )
        .expect("amount");
        let err = g.apply(
            3,
            &put(r#"{"name":"amt","kind":"field","type":"double","aliases":["amount"]}"#),
        );
        assert_eq!(
            err.map_err(|e| e.to_string()).err().as_deref(),
            Some(
                "governance change conflicts: aliases[0]: \"amount\" is already the tag \"amount\" in domain \"payments\""
            )
        );
        let err = g.check(&GovernanceCommand::RemoveTag {
            domain: "payments".into(),
            tag: "amount".into(),
        });
        assert!(err.map_err(|e| e.to_string()).err().is_some_and(|e| {
            e.contains("tag \"amount\" is approved; only a proposed tag can be removed (deprecate it instead)")
        }));
        let err = g.check(&GovernanceCommand::CreateDomain {
            domain: domain("sales", &["payments"]),
        });
        assert!(err.map_err(|e| e.to_string()).err().is_some_and(|e| e.contains(
            "datasource \"payments\" is already in domain \"payments\"; a datasource belongs to one domain"
        )));
        assert!(matches!(
            g.check(&GovernanceCommand::PutTag {
                domain: "nope".into(),
                tag: tag(r#"{"name":"a","kind":"field","type":"any"}"#)
            }),
            Err(Error::UnknownDomain { .. })
        ));
    }
}
