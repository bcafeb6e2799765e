//! Rollup at ingest: the incremental index and the aggregator states it holds.

pub mod dictionary;
pub mod index;
pub mod state;

pub use index::{MetricColumn, RollupIndex};
