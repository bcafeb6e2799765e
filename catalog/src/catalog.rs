//! The catalog state machine: datasources and every version of their specs, changed only by
//! applying [`CatalogCommand`]s in log order.
//!
//! Invariant: rules are versioned by log position (ARCHITECTURE.md, invariant 3). Each datasource
//! keeps every spec version with the position it took effect at, so apply, replay and
//! reindex use [`Catalog::spec_at`] with the entry's own position.
//!
//! A datasource incarnation is identified by [`DatasourceId`], the log position that created
//! it: deleting a datasource and creating one with the same name later gives a new id, so the
//! new topic never sees the old one's data or offsets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::LogPosition;
use crate::access::{Access, AccessCommand};
use crate::audit::{AuditLog, AuditRow};
use crate::error::{Error, Result, SpecProblem};
use crate::governance::{Form, Governance, GovernanceCommand, GovernanceEffect, Tag};
use crate::retention::{RetentionCommand, Retentions};
use crate::spec::DatasourceSpec;
use crate::standardise::TagRules;

fn missing_required(tag: &str, datasource: &str, field: &str) -> SpecProblem {
    SpecProblem {
        field: field.to_string(),
        message: format!(
            "tag {tag:?} is required as a rollup dimension, but datasource {datasource:?} does not list it in \
             dimensions; add it to the spec first"
        ),
    }
}

/// Identifies one incarnation of a datasource: the log position of its creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DatasourceId(pub u64);

impl std::fmt::Display for DatasourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ds{}", self.0)
    }
}

/// A change to the catalog. Serialized into log entries (the storage command's version byte
/// says which operations a node must know to apply it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CatalogCommand {
    CreateDatasource {
        spec: DatasourceSpec,
    },
    UpdateDatasource {
        spec: DatasourceSpec,
    },
    /// Hides the datasource at once; its data is purged after `grace_ms` (writer time).
    DeleteDatasource {
        name: String,
        grace_ms: i64,
    },
    /// Forgets a deleted datasource whose grace period has passed, freeing its name.
    PurgeDatasource {
        id: DatasourceId,
    },
    /// A change to the tag registry (`op` names it: create_domain, update_domain, put_tag,
    /// remove_tag).
    #[serde(untagged)]
    Governance(GovernanceCommand),
    /// A change to the API keys (create_key, revoke_key, set_node_secret).
    #[serde(untagged)]
    Access(AccessCommand),
    /// A datasource's retention rule (put_retention).
    #[serde(untagged)]
    Retention(RetentionCommand),
}

impl CatalogCommand {
    /// The command's `op`, as the log and the audit log name it.
    pub fn op(&self) -> &'static str {
        match self {
            CatalogCommand::CreateDatasource { .. } => "create_datasource",
            CatalogCommand::UpdateDatasource { .. } => "update_datasource",
            CatalogCommand::DeleteDatasource { .. } => "delete_datasource",
            CatalogCommand::PurgeDatasource { .. } => "purge_datasource",
            CatalogCommand::Governance(GovernanceCommand::CreateDomain { .. }) => "create_domain",
            CatalogCommand::Governance(GovernanceCommand::UpdateDomain { .. }) => "update_domain",
            CatalogCommand::Governance(GovernanceCommand::PutTag { .. }) => "put_tag",
            CatalogCommand::Governance(GovernanceCommand::RemoveTag { .. }) => "remove_tag",
            CatalogCommand::Access(AccessCommand::CreateKey { .. }) => "create_key",
            CatalogCommand::Access(AccessCommand::RevokeKey { .. }) => "revoke_key",
            CatalogCommand::Access(AccessCommand::SetNodeSecret { .. }) => "set_node_secret",
            CatalogCommand::Retention(RetentionCommand::PutRetention { .. }) => "put_retention",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecVersion {
    /// The log position this version took effect at.
    pub position: LogPosition,
    pub spec: DatasourceSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasourceEntry {
    pub id: DatasourceId,
    /// Oldest first; never empty.
    pub versions: Vec<SpecVersion>,
    /// Set when deleted: (position of the delete, writer time after which it may be purged).
    pub deleted: Option<Deletion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    pub position: LogPosition,
    pub purge_after_ms: i64,
}

impl DatasourceEntry {
    pub fn current(&self) -> &DatasourceSpec {
        // `versions` is never empty: an entry is created with its first version.
        &self.versions[self.versions.len() - 1].spec
    }

    /// The spec in force at `position`: the newest version that took effect at or before it.
    pub fn spec_at(&self, position: LogPosition) -> &DatasourceSpec {
        let idx = self.versions.partition_point(|v| v.position <= position);
        &self.versions[idx.saturating_sub(1)].spec
    }
}

/// What applying a command changed, for the runtime to act on (purge files, log, audit).
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogEffect {
    Created(DatasourceId),
    Updated(DatasourceId),
    Deleted(DatasourceId),
    Purged(DatasourceId),
    Governance(GovernanceEffect),
    Access,
    Retention,
    /// The command had already been applied (a replay); nothing changed.
    AlreadyApplied,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Live datasources by name.
    datasources: BTreeMap<String, DatasourceEntry>,
    /// Deleted datasources waiting for their purge, by id.
    deleted: BTreeMap<DatasourceId, DatasourceEntry>,
    /// The position of the last applied command.
    applied: LogPosition,
    #[serde(default)]
    governance: Governance,
    #[serde(default)]
    access: Access,
    #[serde(default)]
    audit: AuditLog,
    #[serde(default)]
    retention: Retentions,
}

impl Catalog {
    pub fn applied_position(&self) -> LogPosition {
        self.applied
    }

    pub fn get(&self, name: &str) -> Option<&DatasourceEntry> {
        self.datasources.get(name)
    }

    pub fn by_id(&self, id: DatasourceId) -> Option<&DatasourceEntry> {
        self.datasources
            .values()
            .find(|e| e.id == id)
            .or_else(|| self.deleted.get(&id))
    }

    /// Live datasources in name order.
    pub fn datasources(&self) -> impl Iterator<Item = &DatasourceEntry> {
        self.datasources.values()
    }

    pub fn governance(&self) -> &Governance {
        &self.governance
    }

    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Records an operation that is not a catalog command but changes what tidemark keeps
    /// (a deletion), in log order at apply like every other row.
    pub fn record_audit(&mut self, row: AuditRow) {
        self.audit.push(row);
    }

    pub fn retention(&self) -> &Retentions {
        &self.retention
    }

    /// The tag rules governing `datasource` at `position` (none if it was in no domain then).
    pub fn rules_at(&self, datasource: &str, position: LogPosition) -> Option<TagRules> {
        let domain = self.governance.domain_of(datasource, position)?;
        Some(TagRules::compile(&domain.name, domain.tags_at(position)))
    }

    /// What identifies [`Catalog::rules_at`]'s answer, for a cache: the domain and the
    /// position of its last change at or before `position`.
    pub fn rules_key(
        &self,
        datasource: &str,
        position: LogPosition,
    ) -> Option<(String, LogPosition)> {
        let domain = self.governance.domain_of(datasource, position)?;
        Some((domain.name.clone(), domain.changed_at_or_before(position)))
    }

    /// Deleted datasources whose grace period has passed at writer time `now_ms`.
    pub fn purgeable(&self, now_ms: i64) -> Vec<DatasourceId> {
        self.deleted
            .values()
            .filter(|e| e.deleted.is_some_and(|d| d.purge_after_ms <= now_ms))
            .map(|e| e.id)
            .collect()
    }

    /// Checks a command against the current state without applying it (for the edge).
    pub fn check(&self, cmd: &CatalogCommand) -> Result<()> {
        match cmd {
            CatalogCommand::CreateDatasource { spec } => {
                spec.validate()?;
                if self.datasources.contains_key(&spec.name) {
                    return Err(Error::DatasourceExists {
                        name: spec.name.clone(),
                    });
                }
                if let Some(e) = self
                    .deleted
                    .values()
                    .find(|e| e.current().name == spec.name)
                {
                    return Err(Error::IncompatibleUpdate {
                        name: spec.name.clone(),
                        reason: format!(
                            "a deleted datasource of that name is still being purged \
                             (until {} ms); retry after its grace period",
                            e.deleted.map(|d| d.purge_after_ms).unwrap_or_default()
                        ),
                    });
                }
                self.check_required_dimensions(spec)
            }
            CatalogCommand::UpdateDatasource { spec } => {
                let entry = self.live(&spec.name)?;
                entry.current().check_update(spec)?;
                self.check_required_dimensions(spec)
            }
            CatalogCommand::DeleteDatasource { name, .. } => self.live(name).map(|_| ()),
            CatalogCommand::PurgeDatasource { .. } => Ok(()),
            CatalogCommand::Governance(g) => {
                self.governance.check(g)?;
                self.check_governance_against_specs(g)
            }
            CatalogCommand::Access(a) => self.access.check(a),
            CatalogCommand::Retention(RetentionCommand::PutRetention { datasource, .. }) => {
                self.live(datasource).map(|_| ())
            }
        }
    }

    /// A tag required as a rollup dimension must be a dimension of every datasource of its
    /// domain: checked when a spec changes.
    fn check_required_dimensions(&self, spec: &DatasourceSpec) -> Result<()> {
        let Some(domain) = self.governance.domain_of(&spec.name, LogPosition::MAX) else {
            return Ok(());
        };
        let problems: Vec<SpecProblem> = domain
            .tags_at(LogPosition::MAX)
            .filter(|t| t.required_in.contains(&Form::Rollup) && !spec.dimensions.contains(&t.name))
            .map(|t| missing_required(&t.name, &spec.name, "dimensions"))
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::GovernanceConflict(problems))
        }
    }

    /// ... and when the domain's tags or datasources change.
    fn check_governance_against_specs(&self, cmd: &GovernanceCommand) -> Result<()> {
        let (datasources, required): (Vec<String>, Vec<String>) = match cmd {
            GovernanceCommand::PutTag { domain, tag } => {
                let listed = self
                    .governance
                    .domain(domain)
                    .map(|d| d.current().datasources.clone())
                    .unwrap_or_default();
                let required = if tag.required_in.contains(&Form::Rollup) {
                    vec![tag.name.clone()]
                } else {
                    vec![]
                };
                (listed, required)
            }
            GovernanceCommand::CreateDomain { domain }
            | GovernanceCommand::UpdateDomain { domain } => {
                let required = self
                    .governance
                    .domain(&domain.name)
                    .map(|d| {
                        d.tags_at(LogPosition::MAX)
                            .filter(|t| t.required_in.contains(&Form::Rollup))
                            .map(|t| t.name.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                (domain.datasources.clone(), required)
            }
            GovernanceCommand::RemoveTag { .. } => return Ok(()),
        };
        let mut problems = Vec::new();
        for name in &datasources {
            let Some(entry) = self.datasources.get(name) else {
                continue;
            };
            for tag in required
                .iter()
                .filter(|t| !entry.current().dimensions.contains(t))
            {
                problems.push(missing_required(tag, name, "dimensions"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::GovernanceConflict(problems))
        }
    }

    /// Applies a command at `position`, logged by `actor`, and records it in the audit log.
    /// Applying the same position twice is a no-op, so a replay after a crash is harmless.
    pub fn apply(
        &mut self,
        position: LogPosition,
        writer_time_ms: i64,
        cmd: &CatalogCommand,
        actor: &str,
    ) -> Result<CatalogEffect> {
        if position <= self.applied && self.applied != 0 {
            return Ok(CatalogEffect::AlreadyApplied);
        }
        self.check(cmd)?;
        let before = self.object_json(cmd);
        let object = self.object_name(cmd);
        let effect = self.apply_checked(position, writer_time_ms, cmd)?;
        if effect != CatalogEffect::AlreadyApplied {
            let mut after = self.object_json(cmd);
            // A retention rule's row also says what it would remove when it was set.
            if let CatalogCommand::Retention(RetentionCommand::PutRetention {
                would_remove: Some(w),
                ..
            }) = cmd
                && let Some(rule) = after.as_mut().and_then(serde_json::Value::as_object_mut)
            {
                rule.insert("would_remove".into(), w.clone());
            }
            self.audit.push(AuditRow {
                position,
                time_ms: writer_time_ms,
                actor: actor.to_string(),
                op: cmd.op().to_string(),
                object,
                before,
                after,
            });
        }
        Ok(effect)
    }

    fn apply_checked(
        &mut self,
        position: LogPosition,
        writer_time_ms: i64,
        cmd: &CatalogCommand,
    ) -> Result<CatalogEffect> {
        let effect = match cmd {
            CatalogCommand::CreateDatasource { spec } => {
                let id = DatasourceId(position);
                self.datasources.insert(
                    spec.name.clone(),
                    DatasourceEntry {
                        id,
                        versions: vec![SpecVersion {
                            position,
                            spec: spec.clone(),
                        }],
                        deleted: None,
                    },
                );
                CatalogEffect::Created(id)
            }
            CatalogCommand::UpdateDatasource { spec } => {
                let entry = self
                    .datasources
                    .get_mut(&spec.name)
                    .ok_or_else(|| Error::Internal("checked datasource vanished".into()))?;
                entry.versions.push(SpecVersion {
                    position,
                    spec: spec.clone(),
                });
                CatalogEffect::Updated(entry.id)
            }
            CatalogCommand::DeleteDatasource { name, grace_ms } => {
                let mut entry = self
                    .datasources
                    .remove(name)
                    .ok_or_else(|| Error::Internal("checked datasource vanished".into()))?;
                entry.deleted = Some(Deletion {
                    position,
                    purge_after_ms: writer_time_ms.saturating_add(*grace_ms),
                });
                let id = entry.id;
                self.deleted.insert(id, entry);
                CatalogEffect::Deleted(id)
            }
            CatalogCommand::PurgeDatasource { id } => match self.deleted.remove(id) {
                Some(_) => CatalogEffect::Purged(*id),
                None => CatalogEffect::AlreadyApplied,
            },
            CatalogCommand::Governance(g) => {
                CatalogEffect::Governance(self.governance.apply(position, g)?)
            }
            CatalogCommand::Access(a) => {
                self.access.apply(position, writer_time_ms, a)?;
                CatalogEffect::Access
            }
            CatalogCommand::Retention(r) => {
                self.retention.apply(position, r);
                CatalogEffect::Retention
            }
        };
        self.applied = position;
        Ok(effect)
    }

    /// The JSON of what `cmd` changes, as it is now (`None` if it does not exist): the audit
    /// log's before and after.
    pub fn object_json(&self, cmd: &CatalogCommand) -> Option<serde_json::Value> {
        match cmd {
            CatalogCommand::CreateDatasource { spec }
            | CatalogCommand::UpdateDatasource { spec } => self
                .datasources
                .get(&spec.name)
                .and_then(|e| serde_json::to_value(e.current()).ok()),
            CatalogCommand::DeleteDatasource { name, .. } => self
                .datasources
                .get(name)
                .and_then(|e| serde_json::to_value(e.current()).ok()),
            CatalogCommand::PurgeDatasource { id } => self
                .deleted
                .get(id)
                .and_then(|e| serde_json::to_value(e.current()).ok()),
            CatalogCommand::Governance(
                GovernanceCommand::CreateDomain { domain }
                | GovernanceCommand::UpdateDomain { domain },
            ) => self
                .governance
                .domain(&domain.name)
                .and_then(|d| serde_json::to_value(d.current()).ok()),
            CatalogCommand::Governance(
                GovernanceCommand::PutTag {
                    domain,
                    tag: Tag { name, .. },
                }
                | GovernanceCommand::RemoveTag { domain, tag: name },
            ) => self
                .governance
                .domain(domain)
                .and_then(|d| d.tag(name))
                .and_then(|t| serde_json::to_value(t).ok()),
            CatalogCommand::Access(AccessCommand::CreateKey {
                key: crate::access::NewKey { id, .. },
            })
            | CatalogCommand::Access(AccessCommand::RevokeKey { id }) => {
                self.access.key(id).map(|k| k.public_json())
            }
            CatalogCommand::Access(AccessCommand::SetNodeSecret { .. }) => None,
            CatalogCommand::Retention(RetentionCommand::PutRetention { datasource, .. }) => self
                .retention
                .at(datasource, LogPosition::MAX)
                .and_then(|v| serde_json::to_value(&v.value).ok()),
        }
    }

    /// How the audit log names what `cmd` changes.
    fn object_name(&self, cmd: &CatalogCommand) -> String {
        match cmd {
            CatalogCommand::CreateDatasource { spec }
            | CatalogCommand::UpdateDatasource { spec } => {
                format!("datasource:{}", spec.name)
            }
            CatalogCommand::DeleteDatasource { name, .. } => format!("datasource:{name}"),
            CatalogCommand::PurgeDatasource { id } => match self.by_id(*id) {
                Some(e) => format!("datasource:{}", e.current().name),
                None => format!("datasource:{id}"),
            },
            CatalogCommand::Governance(
                GovernanceCommand::CreateDomain { domain }
                | GovernanceCommand::UpdateDomain { domain },
            ) => format!("domain:{}", domain.name),
            CatalogCommand::Governance(GovernanceCommand::PutTag {
                domain,
                tag: Tag { name, .. },
            })
            | CatalogCommand::Governance(GovernanceCommand::RemoveTag { domain, tag: name }) => {
                format!("tag:{domain}/{name}")
            }
            CatalogCommand::Access(AccessCommand::CreateKey {
                key: crate::access::NewKey { id, .. },
            })
            | CatalogCommand::Access(AccessCommand::RevokeKey { id }) => format!("key:{id}"),
            CatalogCommand::Access(AccessCommand::SetNodeSecret { .. }) => "node_secret".into(),
            CatalogCommand::Retention(RetentionCommand::PutRetention { datasource, .. }) => {
                format!("retention:{datasource}")
            }
        }
    }

    fn live(&self, name: &str) -> Result<&DatasourceEntry> {
        self.datasources
            .get(name)
            .ok_or_else(|| Error::UnknownDatasource {
                name: name.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{MetricKind, MetricSpec};

    fn spec(name: &str) -> DatasourceSpec {
        DatasourceSpec::from_json(&format!(
            r#"{{"name":"{name}","timestamp":{{"field":"ts"}},"granularity":{{"query":"PT1M","segment":"PT1H"}},
               "dimensions":["m"],"metrics":[{{"name":"count","type":"count"}}]}}"#
        ))
        .expect("valid")
    }

    #[test]
    fn spec_versions_follow_log_positions() {
        let mut cat = Catalog::default();
        cat.apply(
            10,
            0,
            &CatalogCommand::CreateDatasource { spec: spec("a") },
            "t",
        )
        .expect("create");
        let mut v2 = spec("a");
        v2.metrics.push(MetricSpec {
            name: "s".into(),
            kind: MetricKind::DoubleSum { field: "x".into() },
        });
        cat.apply(
            20,
            0,
            &CatalogCommand::UpdateDatasource { spec: v2.clone() },
            "t",
        )
        .expect("update");
        let entry = cat.get("a").expect("exists");
        assert_eq!(entry.spec_at(10).metrics.len(), 1);
        assert_eq!(entry.spec_at(19).metrics.len(), 1);
        assert_eq!(entry.spec_at(20), &v2);
        assert_eq!(entry.spec_at(1000), &v2);
        assert_eq!(entry.id, DatasourceId(10));
    }

    #[test]
    fn replay_is_idempotent_and_errors_are_clear() {
        let mut cat = Catalog::default();
        let create = CatalogCommand::CreateDatasource { spec: spec("a") };
        assert_eq!(
            cat.apply(5, 0, &create, "t").ok(),
            Some(CatalogEffect::Created(DatasourceId(5)))
        );
        assert_eq!(
            cat.apply(5, 0, &create, "t").ok(),
            Some(CatalogEffect::AlreadyApplied)
        );
        let err = cat
            .apply(6, 0, &create, "t")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("already exists"), "{err}");
        let err = cat
            .apply(
                7,
                0,
                &CatalogCommand::DeleteDatasource {
                    name: "zz".into(),
                    grace_ms: 0,
                },
                "t",
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("\"zz\" does not exist"), "{err}");
    }

    #[test]
    fn deleted_name_is_reusable_after_purge_as_a_new_incarnation() {
        let mut cat = Catalog::default();
        cat.apply(
            1,
            0,
            &CatalogCommand::CreateDatasource { spec: spec("a") },
            "t",
        )
        .expect("create");
        cat.apply(
            2,
            1_000,
            &CatalogCommand::DeleteDatasource {
                name: "a".into(),
                grace_ms: 500,
            },
            "t",
        )
        .expect("delete");
        assert!(cat.get("a").is_none());
        assert!(
            cat.apply(
                3,
                1_100,
                &CatalogCommand::CreateDatasource { spec: spec("a") },
                "t"
            )
            .is_err()
        );
        assert!(cat.purgeable(1_499).is_empty());
        assert_eq!(cat.purgeable(1_500), vec![DatasourceId(1)]);
        cat.apply(
            4,
            1_500,
            &CatalogCommand::PurgeDatasource {
                id: DatasourceId(1),
            },
            "t",
        )
        .expect("purge");
        cat.apply(
            5,
            1_600,
            &CatalogCommand::CreateDatasource { spec: spec("a") },
            "t",
        )
        .expect("recreate");
        assert_eq!(cat.get("a").map(|e| e.id), Some(DatasourceId(5)));
    }

    #[test]
    fn commands_round_trip_through_json() {
        let cmd = CatalogCommand::DeleteDatasource {
            name: "a".into(),
            grace_ms: 5,
        };
        let text = serde_json::to_string(&cmd).expect("serializes");
        assert_eq!(
            text,
            r#"{"op":"delete_datasource","name":"a","grace_ms":5}"#
        );
        let back: CatalogCommand = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, cmd);
        let cmd = CatalogCommand::Governance(GovernanceCommand::RemoveTag {
            domain: "d".into(),
            tag: "t".into(),
        });
        let text = serde_json::to_string(&cmd).expect("serializes");
        assert_eq!(text, r#"{"op":"remove_tag","domain":"d","tag":"t"}"#);
        let back: CatalogCommand = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, cmd);
        assert!(serde_json::from_str::<CatalogCommand>(r#"{"op":"drop_everything"}"#).is_err());
    }

    fn governance(json: &str) -> CatalogCommand {
        serde_json::from_str(json).expect("governance command")
    }

    #[test]
    fn required_rollup_dimensions_are_checked_whenever_either_side_changes() {
        let mut cat = Catalog::default();
        cat.apply(
            1,
            0,
            &CatalogCommand::CreateDatasource { spec: spec("a") },
            "t",
        )
        .expect("create");
        cat.apply(
            2,
            0,
            &governance(
                r#"{"op":"create_domain","domain":{"name":"shop","datasources":["a","b"]}}"#,
            ),
            "t",
        )
        .expect("domain");
        let required = r#"{"op":"put_tag","domain":"shop","tag":{"name":"store","kind":"dimension","type":"string",
                           "status":"approved","required_in":["rollup"]}}"#;
        let err = cat
            .apply(3, 0, &governance(required), "t")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            "governance change conflicts: dimensions: tag \"store\" is required as a rollup dimension, but \
             datasource \"a\" does not list it in dimensions; add it to the spec first"
        );
        let mut with_store = spec("a");
        with_store.dimensions.push("store".into());
        cat.apply(
            4,
            0,
            &CatalogCommand::UpdateDatasource { spec: with_store },
            "t",
        )
        .expect("add the dimension");
        cat.apply(5, 0, &governance(required), "t")
            .expect("now the tag fits");
        // A new datasource of the domain must carry it too.
        let err = cat
            .check(&CatalogCommand::CreateDatasource { spec: spec("b") })
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("datasource \"b\" does not list it")));
        assert!(
            cat.check(&CatalogCommand::CreateDatasource { spec: spec("c") })
                .is_ok(),
            "c is in no domain"
        );

        // Rules by position: none before the domain, the tag from 5 on.
        assert!(cat.rules_at("a", 1).is_none());
        assert!(
            cat.rules_at("a", 4)
                .is_some_and(|r| r.resolve("store").is_none())
        );
        assert!(
            cat.rules_at("a", 5)
                .is_some_and(|r| r.resolve("store").is_some())
        );
        assert_eq!(cat.rules_key("a", 4), Some(("shop".to_string(), 2)));
        assert_eq!(cat.rules_key("a", 9), Some(("shop".to_string(), 5)));
        let json = serde_json::to_string(&cat).expect("serializes");
        let back: Catalog = serde_json::from_str(&json).expect("round trips");
        assert_eq!(back, cat);
        let old: Catalog = serde_json::from_str(r#"{"datasources":{},"deleted":{},"applied":3}"#)
            .expect("older JSON");
        assert!(old.governance().domains().next().is_none());
    }

    #[test]
    fn every_applied_change_is_audited_with_its_actor_before_and_after() {
        let mut cat = Catalog::default();
        cat.apply(
            1,
            100,
            &CatalogCommand::CreateDatasource { spec: spec("a") },
            "key:aaaaaaaaaaaa",
        )
        .expect("create");
        let mut v2 = spec("a");
        v2.dimensions.push("n".into());
        cat.apply(
            2,
            200,
            &CatalogCommand::UpdateDatasource { spec: v2 },
            "key:bbbbbbbbbbbb",
        )
        .expect("update");
        assert!(
            cat.apply(
                3,
                300,
                &CatalogCommand::CreateDatasource { spec: spec("a") },
                "x"
            )
            .is_err()
        );
        cat.apply(
            4,
            400,
            &CatalogCommand::DeleteDatasource {
                name: "a".into(),
                grace_ms: 0,
            },
            "anonymous",
        )
        .expect("delete");
        cat.apply(
            5,
            500,
            &CatalogCommand::PurgeDatasource {
                id: DatasourceId(1),
            },
            "system",
        )
        .expect("purge");
        cat.apply(
            5,
            500,
            &CatalogCommand::PurgeDatasource {
                id: DatasourceId(1),
            },
            "system",
        )
        .expect("replay");
        let rows: Vec<_> = cat.audit().rows().collect();
        let summary: Vec<(u64, i64, &str, &str, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r.position,
                    r.time_ms,
                    r.actor.as_str(),
                    r.op.as_str(),
                    r.object.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (
                    1,
                    100,
                    "key:aaaaaaaaaaaa",
                    "create_datasource",
                    "datasource:a"
                ),
                (
                    2,
                    200,
                    "key:bbbbbbbbbbbb",
                    "update_datasource",
                    "datasource:a"
                ),
                (4, 400, "anonymous", "delete_datasource", "datasource:a"),
                (5, 500, "system", "purge_datasource", "datasource:a"),
            ],
            "refused commands and replays are not audited"
        );
        assert_eq!(rows[0].before, None);
        assert_eq!(
            rows[1].before.as_ref().map(|b| b["dimensions"].clone()),
            Some(serde_json::json!(["m"]))
        );
        assert_eq!(
            rows[1].after.as_ref().map(|a| a["dimensions"].clone()),
            Some(serde_json::json!(["m", "n"]))
        );
        assert_eq!(
            rows[2].after, None,
            "a deleted datasource is gone from the live catalog"
        );
        let back: Catalog =
            serde_json::from_str(&serde_json::to_string(&cat).expect("json")).expect("round trips");
        assert_eq!(back.audit(), cat.audit());
    }
}
