//! Rollup at ingest: the incremental index and the aggregator states it holds.

pub mod dictionary;
pub mod index;
pub mod state;
mod to_arrow;

pub use index::{MetricColumn, RollupIndex, RowMetric};
