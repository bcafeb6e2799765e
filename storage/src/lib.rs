//! tidemark-storage: everything tidemark keeps on disk or in memory for a node, and nothing
//! about the network, Raft or SQL.
//!
//! ```text
//!  log entry (Raft index) ──Engine::apply──► raw log per partition (Kafka RecordBatch v2 + frame)
//!                                      └──► rollup index (inline exact states ─► sketches)
//! ```
//!
//! Key types: [`engine::Engine`], [`raw::partition_log::PartitionLog`],
//! [`rollup::RollupIndex`].

pub mod engine;
pub mod error;
pub mod raw;
pub mod rollup;
pub mod segment;
pub mod snapshot;

pub use error::{Error, Result};
