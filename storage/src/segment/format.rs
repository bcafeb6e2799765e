//! The segment file's footer: what a segment holds and where each column's bytes are.
//! See `segment/README.md` for the byte layout.

use serde::{Deserialize, Serialize};
use tidemark_catalog::MetricSpec;

pub const MAGIC: &[u8; 8] = b"TMSEGMNT";
pub const FOOTER_MAGIC: &[u8; 8] = b"TMSEGEND";
pub const FORMAT_VERSION: u32 = 1;
/// Every buffer starts on this boundary so an mmap'd slice can back an Arrow array directly.
pub const ALIGN: usize = 64;
pub const HEADER_LEN: usize = 16;
/// footer_len u32 | footer_crc u32 | magic 8 bytes.
pub const TRAILER_LEN: usize = 16;

/// Which datasource, interval, version and shard a segment is (Druid's segment identity).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SegmentId {
    pub datasource: String,
    pub interval_start_ms: i64,
    pub interval_end_ms: i64,
    pub version: String,
    pub shard: u32,
}

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}_{}_{}_{}_{}",
            self.datasource, self.interval_start_ms, self.interval_end_ms, self.version, self.shard
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnKind {
    /// `__time`: i64 epoch milliseconds, the start of each row's query-granularity bucket.
    Time,
    /// Sorted dictionary + i32 keys + a roaring bitmap per value (and one for null).
    Dimension,
    /// i64 (`count`, `longSum`) or f64 (`doubleSum`, `min`, `max`) values.
    Metric,
    /// Tagged aggregator states (`hll`, `tdigest`) in Arrow Binary layout.
    Sketch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferRole {
    /// Fixed-width values (i64/f64/i32 keys), little-endian.
    Values,
    /// Arrow validity bitmap (LSB first); absent when no value is null.
    Validity,
    /// i32 offsets of the sorted dictionary values (n + 1).
    DictOffsets,
    /// UTF-8 bytes of the sorted dictionary values.
    DictData,
    /// u64 offsets into `Bitmaps` (n + 2: one bitmap per value, then null's).
    BitmapOffsets,
    /// Portable-format roaring bitmaps, one per dictionary value then one for null.
    Bitmaps,
    /// i32 offsets of variable-width values (rows + 1).
    Offsets,
    /// Bytes of variable-width values.
    Data,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferRef {
    pub role: BufferRole,
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnEntry {
    pub name: String,
    pub kind: ColumnKind,
    /// For metrics and sketches, the metric type (`count`, `doubleSum`, `hll`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_type: Option<String>,
    /// Byte range of the column in the file; the checksum covers exactly this range.
    pub start: u64,
    pub end: u64,
    pub crc32c: u32,
    pub buffers: Vec<BufferRef>,
    /// Distinct non-null values, for dimensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cardinality: Option<u64>,
    pub null_count: u64,
}

impl ColumnEntry {
    pub fn buffer(&self, role: BufferRole) -> Option<BufferRef> {
        self.buffers.iter().copied().find(|b| b.role == role)
    }

    pub fn bytes(&self) -> u64 {
        self.end - self.start
    }
}

/// Everything a reader needs to know about a segment; written as JSON at the file's end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub format_version: u32,
    pub id: SegmentId,
    /// The query granularity the rows were rolled up at (segments describe their own).
    pub query_granularity: String,
    pub rows: u64,
    /// Input events rolled into the rows.
    pub events: u64,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    pub dimensions: Vec<String>,
    pub metrics: Vec<MetricSpec>,
    pub clustering: Vec<String>,
    pub columns: Vec<ColumnEntry>,
}

impl SegmentMeta {
    pub fn column(&self, name: &str) -> Option<&ColumnEntry> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// Rewrites a segment file's footer after `edit`, with every checksum (each column's and the
/// footer's) recomputed from the bytes as they are. Tests and the fuzz target craft files
/// with it: checksums are no defence against a crafted file, so what they change must reach
/// the reader's checks behind the checksums. `None` when the bytes have no readable footer;
/// never panics, whatever the bytes.
pub fn reseal(file: &mut Vec<u8>, edit: impl FnOnce(&mut SegmentMeta)) -> Option<()> {
    let trailer_start = file.len().checked_sub(TRAILER_LEN)?;
    let footer_len = u32::from_le_bytes(
        file.get(trailer_start..trailer_start + 4)?
            .try_into()
            .ok()?,
    ) as usize;
    let footer_start = trailer_start.checked_sub(footer_len)?;
    let mut meta: SegmentMeta =
        serde_json::from_slice(file.get(footer_start..trailer_start)?).ok()?;
    edit(&mut meta);
    for col in &mut meta.columns {
        let range = usize::try_from(col.start)
            .ok()
            .zip(usize::try_from(col.end).ok());
        if let Some(bytes) = range.and_then(|(s, e)| file.get(s..e)) {
            col.crc32c = crc32c::crc32c(bytes);
        }
    }
    let footer = serde_json::to_vec(&meta).ok()?;
    file.truncate(footer_start);
    file.extend_from_slice(&footer);
    file.extend_from_slice(&u32::try_from(footer.len()).ok()?.to_le_bytes());
    file.extend_from_slice(&crc32c::crc32c(&footer).to_le_bytes());
    file.extend_from_slice(FOOTER_MAGIC);
    Some(())
}
