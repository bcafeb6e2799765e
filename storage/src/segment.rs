//! Immutable, memory-mapped columnar segments: the writer turns a rollup index into a file,
//! the reader maps it and serves Arrow arrays over the mapping. See `segment/README.md`.
//!
//! Hand-written because it is the core of the product: the layout decides scan speed, bytes
//! per event and how sketches merge.

pub mod format;
pub mod reader;
pub mod writer;

pub use format::{ColumnEntry, ColumnKind, SegmentId, SegmentMeta};
pub use reader::{Segment, table_schema};
pub use writer::{WrittenSegment, write_segment};

#[cfg(test)]
mod tests;
