//! tidemark-catalog: the pure domain of tidemark. Datasource specs and their validation,
//! time periods, beacon extraction, the partitioner, and the catalog state machine that keeps
//! every spec version by log position. No I/O, no clocks: everything here is a function of
//! its inputs, so the edge and apply can run the same checks and replicas agree.
//!
//! ```text
//!  JSON spec ──► DatasourceSpec::from_json ──► CatalogCommand ──► Catalog::apply(position)
//!                                                                     │ spec_at(position)
//!  beacon JSON ───────────────────────────► event::extract(spec) ─────┴──► Event | RejectReason
//!
//!  tag registry (governance: domains, tags, aliases, by position) ──► TagRules
//!  beacon JSON ──► standardise::standardise_json(spec, rules) ──► Event + dropped keys | RejectReason
//! ```

pub mod access;
pub mod audit;
pub mod catalog;
pub mod error;
pub mod event;
pub mod governance;
pub mod partitioner;
pub mod period;
pub mod record_filter;
pub mod retention;
pub mod spec;
pub mod standardise;
pub mod status;
pub mod suggest;

pub use catalog::{Catalog, CatalogCommand, CatalogEffect, DatasourceEntry, DatasourceId};
pub use error::{Error, Result};
pub use event::{Event, MetricInput, RejectReason};
pub use period::Period;
pub use spec::{DatasourceSpec, MetricKind, MetricSpec};
pub use status::StatusClass;

/// A position in the node's command log (a Raft index once replication lands).
pub type LogPosition = u64;
