//! The audit log: one row per applied catalog change (who, when, what, before, after), kept
//! in the catalog so every replica holds the same rows and `sys.audit` answers the same on
//! every node.
//!
//! Invariants: rows are appended in log order, at apply, from the entry alone (its position,
//! its writer time and the actor it carries), so replicas agree; secrets never appear (keys
//! are shown by [`crate::access::ApiKey::public_json`], the node secret not at all). The log
//! keeps the newest [`AUDIT_ROWS_MAX`] rows: catalog changes are made by people and tools at
//! human rates, and every checkpoint and snapshot carries the rows.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::LogPosition;

pub const AUDIT_ROWS_MAX: usize = 10_000;

/// Who logged a command: `key:<id>`, `anonymous` (a node without keys), `system` (the node
/// itself: purges, the demo datasource), or `unrecorded` (entries written before the actor
/// was logged).
pub const ACTOR_SYSTEM: &str = "system";
pub const ACTOR_ANONYMOUS: &str = "anonymous";
pub const ACTOR_UNRECORDED: &str = "unrecorded";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    pub position: LogPosition,
    pub time_ms: i64,
    pub actor: String,
    /// The command's `op` (create_datasource, put_tag, create_key, …).
    pub op: String,
    /// What it changed: `datasource:<name>`, `domain:<name>`, `tag:<domain>/<name>`, `key:<id>`.
    pub object: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditLog {
    rows: VecDeque<AuditRow>,
}

impl AuditLog {
    pub fn push(&mut self, row: AuditRow) {
        if self.rows.len() == AUDIT_ROWS_MAX {
            self.rows.pop_front();
        }
        self.rows.push_back(row);
    }

    /// Oldest first.
    pub fn rows(&self) -> impl Iterator<Item = &AuditRow> {
        self.rows.iter()
    }
}
