//! tidemark-storage: the bytes tidemark keeps on disk, in their formats, with their readers
//! and writers; nothing about the network, Raft, SQL or which log entries made them (that is
//! `tidemark-engine`, which drives these formats).
//!
//! ```text
//!  raw log per partition (Kafka RecordBatch v2 + frame)      raw/
//!  rollup index (inline exact states ─► sketches)            rollup/
//!  segment files (mmap, sorted dictionaries, sketch columns) segment/
//!  what a query reads of a datasource                        snapshot.rs
//! ```
//!
//! Key types: [`raw::partition_log::PartitionLog`], [`rollup::RollupIndex`],
//! [`segment::Segment`], [`snapshot::SnapshotSource`].

pub mod error;
pub mod raw;
pub mod rollup;
pub mod segment;
pub mod snapshot;

pub use error::{Error, Result};
