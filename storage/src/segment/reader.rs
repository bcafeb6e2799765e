//! Opens a segment file with mmap, verifies it, and hands its columns to Arrow without copying.
//!
//! Every column's checksum is verified when the segment is opened: an I/O error on a mapped
//! page arrives as SIGBUS rather than an error value, so damage must be found up front, and a
//! corrupt segment is refused with the column and byte range named.
//!
//! Invariant: arrays returned here borrow the mapping (the `Arc<Mmap>` is their owner), so a
//! segment file is never modified or truncated while open; segments are immutable.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BinaryArray, DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray,
    TimestampMillisecondArray,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use memmap2::Mmap;
use roaring::RoaringBitmap;

use crate::error::{Error, Result};
use crate::segment::format::*;

#[derive(Debug)]
pub struct Segment {
    path: PathBuf,
    mmap: Arc<Mmap>,
    meta: SegmentMeta,
}

/// The Arrow type each column is served as.
pub fn column_type(kind: ColumnKind, metric_type: Option<&str>) -> DataType {
    match kind {
        ColumnKind::Time => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        ColumnKind::Dimension => DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        ColumnKind::Metric => match metric_type {
            Some("count") | Some("longSum") => DataType::Int64,
            _ => DataType::Float64,
        },
        ColumnKind::Sketch => DataType::Binary,
    }
}

/// The SQL schema of a datasource under `spec`: `__time`, the dimensions, then the metrics.
/// Segments and the realtime index are both served in it.
pub fn table_schema(spec: &tidemark_catalog::DatasourceSpec) -> Schema {
    let mut fields = vec![Field::new(tidemark_catalog::spec::TIME_COLUMN, column_type(ColumnKind::Time, None), false)];
    for d in &spec.dimensions {
        fields.push(Field::new(d, column_type(ColumnKind::Dimension, None), true));
    }
    for m in &spec.metrics {
        let kind = match m.kind {
            tidemark_catalog::MetricKind::Hll { .. } | tidemark_catalog::MetricKind::Tdigest { .. } => {
                ColumnKind::Sketch
            }
            _ => ColumnKind::Metric,
        };
        fields.push(Field::new(&m.name, column_type(kind, Some(m.kind.type_name())), true));
    }
    Schema::new(fields)
}

impl Segment {
    pub fn open(path: &Path) -> Result<Segment> {
        let file = File::open(path).map_err(Error::io(path))?;
        // SAFETY: segment files are immutable once renamed into place (writer.rs), and the
        // node never truncates a file that may still be mapped; checksums are verified below
        // before any column is read.
        let mmap = unsafe { Mmap::map(&file) }.map_err(Error::io(path))?;
        let corrupt = |position: u64, reason: String| Error::Corrupt { path: path.to_path_buf(), position, reason };
        let len = mmap.len();
        if len < HEADER_LEN + TRAILER_LEN || &mmap[..8] != MAGIC {
            return Err(corrupt(0, "not a tidemark segment file".into()));
        }
        let version = u32::from_le_bytes([mmap[8], mmap[9], mmap[10], mmap[11]]);
        if version != FORMAT_VERSION {
            return Err(corrupt(
                8,
                format!("segment format version {version} is not supported (this node reads {FORMAT_VERSION})"),
            ));
        }
        let trailer = &mmap[len - TRAILER_LEN..];
        if &trailer[8..] != FOOTER_MAGIC {
            return Err(corrupt((len - 8) as u64, "footer magic missing: the file is truncated".into()));
        }
        let footer_len = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) as usize;
        let footer_crc = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
        let footer_start =
            (len - TRAILER_LEN).checked_sub(footer_len).filter(|s| *s >= HEADER_LEN).ok_or_else(|| {
                corrupt((len - TRAILER_LEN) as u64, format!("footer length {footer_len} does not fit the file"))
            })?;
        let footer = &mmap[footer_start..len - TRAILER_LEN];
        if crc32c::crc32c(footer) != footer_crc {
            return Err(corrupt(footer_start as u64, "footer checksum mismatch".into()));
        }
        let meta: SegmentMeta = serde_json::from_slice(footer)
            .map_err(|e| corrupt(footer_start as u64, format!("footer is unreadable: {e}")))?;
        for col in &meta.columns {
            let (s, e) = (col.start as usize, col.end as usize);
            if s > e || e > footer_start {
                return Err(corrupt(col.start, format!("column {} lies outside the data region", col.name)));
            }
            if crc32c::crc32c(&mmap[s..e]) != col.crc32c {
                return Err(corrupt(col.start, format!("checksum mismatch in column {} (bytes {s}..{e})", col.name)));
            }
            for b in &col.buffers {
                if b.offset < col.start || b.offset + b.len > col.end || !(b.offset as usize).is_multiple_of(ALIGN) {
                    return Err(corrupt(b.offset, format!("buffer {:?} of column {} is misplaced", b.role, col.name)));
                }
            }
        }
        let segment = Segment { path: path.to_path_buf(), mmap: Arc::new(mmap), meta };
        // Structural checks once, here, so reads can build arrays without re-validating.
        for col in &segment.meta.columns {
            segment.build(col, true)?;
        }
        Ok(segment)
    }

    pub fn meta(&self) -> &SegmentMeta {
        &self.meta
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rows(&self) -> usize {
        self.meta.rows as usize
    }

    /// The Arrow schema of every column, in file order.
    pub fn schema(&self) -> Schema {
        Schema::new(
            self.meta
                .columns
                .iter()
                .map(|c| {
                    let nullable = c.kind != ColumnKind::Time;
                    Field::new(&c.name, column_type(c.kind, c.metric_type.as_deref()), nullable)
                })
                .collect::<Vec<_>>(),
        )
    }

    fn entry(&self, name: &str) -> Result<&ColumnEntry> {
        self.meta.column(name).ok_or_else(|| Error::Internal(format!("segment {} has no column {name}", self.meta.id)))
    }

    /// A zero-copy Arrow buffer over part of the mapping.
    fn buffer(&self, r: BufferRef) -> Buffer {
        let ptr = self.mmap.as_ptr().wrapping_add(r.offset as usize);
        // SAFETY: `open` checked that every buffer lies inside the mapping; the Arc<Mmap>
        // owner keeps the mapping alive as long as the buffer.
        unsafe {
            let ptr = NonNull::new(ptr as *mut u8).unwrap_or(NonNull::dangling());
            Buffer::from_custom_allocation(ptr, r.len as usize, self.mmap.clone())
        }
    }

    fn required(&self, col: &ColumnEntry, role: BufferRole) -> Result<Buffer> {
        col.buffer(role).map(|r| self.buffer(r)).ok_or_else(|| Error::Corrupt {
            path: self.path.clone(),
            position: col.start,
            reason: format!("column {} lacks its {role:?} buffer", col.name),
        })
    }

    fn nulls(&self, col: &ColumnEntry) -> Option<NullBuffer> {
        col.buffer(BufferRole::Validity).map(|r| NullBuffer::new(BooleanBuffer::new(self.buffer(r), 0, self.rows())))
    }

    /// The column as an Arrow array backed by the mapping. Its structure (offsets, keys,
    /// UTF-8) was validated once when the segment was opened, so this is O(1).
    pub fn column(&self, name: &str) -> Result<ArrayRef> {
        self.build(self.entry(name)?, false)
    }

    /// Builds a column's array; with `validate`, Arrow checks every offset, key and string
    /// (O(rows)), which `open` does once so later reads can skip it.
    fn build(&self, col: &ColumnEntry, validate: bool) -> Result<ArrayRef> {
        let rows = self.rows();
        let bad = |e: arrow_schema::ArrowError| Error::Corrupt {
            path: self.path.clone(),
            position: col.start,
            reason: format!("column {}: {e}", col.name),
        };
        let array: ArrayRef = match col.kind {
            ColumnKind::Time => {
                let values = ScalarBuffer::<i64>::new(self.required(col, BufferRole::Values)?, 0, rows);
                Arc::new(TimestampMillisecondArray::new(values, None).with_timezone("UTC"))
            }
            ColumnKind::Dimension => {
                let keys = Int32Array::new(
                    ScalarBuffer::new(self.required(col, BufferRole::Values)?, 0, rows),
                    self.nulls(col),
                );
                let values = self.dictionary_array(col, validate)?;
                if validate {
                    Arc::new(DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values)).map_err(bad)?)
                } else {
                    // SAFETY: `open` built this column with `validate`, which checked every
                    // key against the dictionary; the bytes are immutable and checksummed.
                    Arc::new(unsafe { DictionaryArray::<Int32Type>::new_unchecked(keys, Arc::new(values)) })
                }
            }
            ColumnKind::Metric => match col.metric_type.as_deref() {
                Some("count") | Some("longSum") => Arc::new(Int64Array::new(
                    ScalarBuffer::new(self.required(col, BufferRole::Values)?, 0, rows),
                    self.nulls(col),
                )),
                _ => Arc::new(Float64Array::new(
                    ScalarBuffer::new(self.required(col, BufferRole::Values)?, 0, rows),
                    self.nulls(col),
                )),
            },
            ColumnKind::Sketch => {
                let offsets = ScalarBuffer::<i32>::new(self.required(col, BufferRole::Offsets)?, 0, rows + 1);
                let data = self.required(col, BufferRole::Data)?;
                if validate {
                    Arc::new(BinaryArray::try_new(OffsetBuffer::new(offsets), data, self.nulls(col)).map_err(bad)?)
                } else {
                    // SAFETY: validated at open (monotonic offsets within `data`).
                    Arc::new(unsafe {
                        BinaryArray::new_unchecked(OffsetBuffer::new_unchecked(offsets), data, self.nulls(col))
                    })
                }
            }
        };
        Ok(array)
    }

    fn dictionary_array(&self, col: &ColumnEntry, validate: bool) -> Result<StringArray> {
        let card = col.cardinality.unwrap_or(0) as usize;
        let offsets = ScalarBuffer::<i32>::new(self.required(col, BufferRole::DictOffsets)?, 0, card + 1);
        let data = self.required(col, BufferRole::DictData)?;
        if validate {
            return StringArray::try_new(OffsetBuffer::new(offsets), data, None).map_err(|e| Error::Corrupt {
                path: self.path.clone(),
                position: col.start,
                reason: format!("dictionary of {}: {e}", col.name),
            });
        }
        // SAFETY: validated at open (monotonic offsets, UTF-8).
        Ok(unsafe { StringArray::new_unchecked(OffsetBuffer::new_unchecked(offsets), data, None) })
    }

    /// The sorted dictionary of a dimension.
    pub fn dictionary(&self, dim: &str) -> Result<StringArray> {
        self.dictionary_array(self.entry(dim)?, false)
    }

    /// Rows whose `dim` equals any of `values` (`None` is null), from the bitmap index.
    pub fn rows_matching(&self, dim: &str, values: &[Option<&str>]) -> Result<RoaringBitmap> {
        let col = self.entry(dim)?;
        let dict = self.dictionary(dim)?;
        let card = dict.len();
        let offsets_buf = self.required(col, BufferRole::BitmapOffsets)?;
        let offsets = ScalarBuffer::<u64>::new(offsets_buf, 0, card + 2);
        let bitmaps = self.required(col, BufferRole::Bitmaps)?;
        let mut out = RoaringBitmap::new();
        for v in values {
            let slot = match v {
                None => Some(card),
                Some(s) => binary_search(&dict, s),
            };
            if let Some(slot) = slot {
                let bytes = &bitmaps.as_slice()[offsets[slot] as usize..offsets[slot + 1] as usize];
                let bm = RoaringBitmap::deserialize_from(bytes).map_err(|e| Error::Corrupt {
                    path: self.path.clone(),
                    position: col.start,
                    reason: format!("bitmap of {dim}: {e}"),
                })?;
                out |= bm;
            }
        }
        Ok(out)
    }
}

fn binary_search(dict: &StringArray, needle: &str) -> Option<usize> {
    let (mut lo, mut hi) = (0usize, dict.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        match dict.value(mid).cmp(needle) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Some(mid),
        }
    }
    None
}
