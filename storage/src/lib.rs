//! tidemark-storage: everything tidemark keeps on disk or in memory for a node, and nothing
//! about the network, Raft or SQL.
//!
//! ```text
//!  command log (group commit) ──apply──► raw log per partition (Kafka RecordBatch v2 + frame)
//!                                   └──► rollup index (inline exact states ─► sketches)
//! ```
//!
//! Key types: [`command_log::CommandLog`], [`raw::partition_log::PartitionLog`],
//! [`rollup::RollupIndex`].

pub mod command_log;
pub mod engine;
pub mod error;
pub mod raw;
pub mod rollup;
pub mod segment;
pub mod snapshot;

pub use error::{Error, Result};
