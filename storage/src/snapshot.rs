//! What a query reads: a consistent view of one datasource (ARCHITECTURE.md, invariant 7), and the
//! trait through which `query` asks for it without knowing how the node keeps its state.

use std::sync::Arc;

use arrow_array::RecordBatch;
use tidemark_catalog::DatasourceSpec;

use crate::segment::Segment;

/// One datasource as of one log position: its published segments plus the realtime rows.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    /// The spec in force at `log_position`; the table's schema follows it.
    pub spec: DatasourceSpec,
    pub log_position: u64,
    pub segments: Vec<Arc<Segment>>,
    /// Realtime (not yet persisted) rows in the table schema.
    pub realtime: Vec<RecordBatch>,
    /// Published segments this node cannot read (damaged on disk, waiting for repair from a
    /// replica): a query whose time range meets one must fail, not answer without it.
    pub unreadable: Vec<UnreadableSegment>,
}

/// A published segment this node holds but cannot read.
#[derive(Debug, Clone, PartialEq)]
pub struct UnreadableSegment {
    pub segment: String,
    /// Relative to the data directory.
    pub file: std::path::PathBuf,
    pub interval_start_ms: i64,
    pub interval_end_ms: i64,
    pub reason: String,
}

/// Implemented by the node; `query` builds its tables on it.
pub trait SnapshotSource: Send + Sync + std::fmt::Debug + 'static {
    /// Names of the live datasources, sorted.
    fn table_names(&self) -> Vec<String>;
    /// A snapshot of one datasource, or `None` if it does not exist.
    fn snapshot(&self, table: &str) -> Option<TableSnapshot>;
    /// Names of the system tables (`sys.<name>`).
    fn system_table_names(&self) -> Vec<String>;
    /// A system table's current rows.
    fn system_table(&self, name: &str) -> Option<RecordBatch>;
}
