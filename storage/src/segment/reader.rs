//! Opens a segment file with mmap, verifies it, and hands its columns to Arrow without copying.
//!
//! Every column's checksum is verified when the segment is opened, through `pread` before
//! the file is mapped: an I/O error on a mapped page arrives as SIGBUS rather than an error
//! value, so damage must be found up front, and a corrupt segment is refused with the column
//! and byte range named. Lengths and offsets from the file are checked without overflow
//! against the file, their column and the row count, so a crafted file (whose checksums
//! anyone can recompute) gets an error, never a panic or a read outside the mapping.
//!
//! Invariant: arrays returned here borrow the mapping (the `Arc<Mmap>` is their owner), so a
//! segment file is never modified or truncated while open; segments are immutable.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;

use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BinaryArray, DictionaryArray, Float64Array, Int32Array, Int64Array,
    StringArray, TimestampMillisecondArray,
};
use arrow_buffer::{
    ArrowNativeType, BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer,
};
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
        ColumnKind::Dimension => {
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
        }
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
    let mut fields = vec![Field::new(
        tidemark_catalog::spec::TIME_COLUMN,
        column_type(ColumnKind::Time, None),
        false,
    )];
    for d in &spec.dimensions {
        fields.push(Field::new(
            d,
            column_type(ColumnKind::Dimension, None),
            true,
        ));
    }
    for m in &spec.metrics {
        let kind = match m.kind {
            tidemark_catalog::MetricKind::Hll { .. }
            | tidemark_catalog::MetricKind::Tdigest { .. } => ColumnKind::Sketch,
            _ => ColumnKind::Metric,
        };
        fields.push(Field::new(
            &m.name,
            column_type(kind, Some(m.kind.type_name())),
            true,
        ));
    }
    Schema::new(fields)
}

impl Segment {
    /// Opens and verifies a segment file. Everything is checked through `pread` before the
    /// file is mapped: an I/O error on a damaged sector is then an error value, where through
    /// the mapping it would be SIGBUS. Checksums are not a defence against a crafted file
    /// (anyone can recompute them), so every length and offset the footer gives is checked
    /// with overflow-free arithmetic against the file and the column it belongs to.
    pub fn open(path: &Path) -> Result<Segment> {
        let file = File::open(path).map_err(Error::io(path))?;
        let corrupt = |position: u64, reason: String| Error::Corrupt {
            path: path.to_path_buf(),
            position,
            reason,
        };
        let len = file.metadata().map_err(Error::io(path))?.len();
        let too_short = (HEADER_LEN + TRAILER_LEN) as u64;
        if len < too_short {
            return Err(corrupt(0, "not a tidemark segment file".into()));
        }
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(Error::io(path))?;
        if &header[..8] != MAGIC {
            return Err(corrupt(0, "not a tidemark segment file".into()));
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != FORMAT_VERSION {
            return Err(corrupt(
                8,
                format!(
                    "segment format version {version} is not supported (this node reads {FORMAT_VERSION})"
                ),
            ));
        }
        let trailer_start = len - TRAILER_LEN as u64;
        let mut trailer = [0u8; TRAILER_LEN];
        file.read_exact_at(&mut trailer, trailer_start)
            .map_err(Error::io(path))?;
        if &trailer[8..] != FOOTER_MAGIC {
            return Err(corrupt(
                len - 8,
                "footer magic missing: the file is truncated".into(),
            ));
        }
        let footer_len = u64::from(u32::from_le_bytes([
            trailer[0], trailer[1], trailer[2], trailer[3],
        ]));
        let footer_crc = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
        let footer_start = trailer_start
            .checked_sub(footer_len)
            .filter(|s| *s >= HEADER_LEN as u64)
            .ok_or_else(|| {
                corrupt(
                    trailer_start,
                    format!("footer length {footer_len} does not fit the file"),
                )
            })?;
        // At most 4 GiB (a u32 length), and inside a file that exists.
        let mut footer = vec![0u8; footer_len as usize];
        file.read_exact_at(&mut footer, footer_start)
            .map_err(Error::io(path))?;
        if crc32c::crc32c(&footer) != footer_crc {
            return Err(corrupt(footer_start, "footer checksum mismatch".into()));
        }
        let meta: SegmentMeta = serde_json::from_slice(&footer)
            .map_err(|e| corrupt(footer_start, format!("footer is unreadable: {e}")))?;
        if usize::try_from(meta.rows).is_err() {
            return Err(corrupt(
                footer_start,
                format!("row count {} does not fit this machine", meta.rows),
            ));
        }
        for col in &meta.columns {
            let (s, e) = (col.start, col.end);
            if s > e || e > footer_start {
                return Err(corrupt(
                    s,
                    format!("column {} lies outside the data region", col.name),
                ));
            }
            if file_crc(&file, s, e).map_err(Error::io(path))? != col.crc32c {
                return Err(corrupt(
                    s,
                    format!("checksum mismatch in column {} (bytes {s}..{e})", col.name),
                ));
            }
            for b in &col.buffers {
                let inside =
                    b.offset >= s && b.offset.checked_add(b.len).is_some_and(|end| end <= e);
                if !inside || !b.offset.is_multiple_of(ALIGN as u64) {
                    return Err(corrupt(
                        b.offset,
                        format!("buffer {:?} of column {} is misplaced", b.role, col.name),
                    ));
                }
            }
        }
        // SAFETY: segment files are immutable once renamed into place (writer.rs), and the
        // node never truncates or rewrites a file that may be mapped (repairs and installs
        // rename a new file over the name); everything read through the mapping was checked
        // above, and the mapping's length is checked against what was read.
        let mmap = unsafe { Mmap::map(&file) }.map_err(Error::io(path))?;
        if mmap.len() as u64 != len {
            return Err(corrupt(
                0,
                format!(
                    "the file changed while it was opened ({len} then {} bytes)",
                    mmap.len()
                ),
            ));
        }
        let segment = Segment {
            path: path.to_path_buf(),
            mmap: Arc::new(mmap),
            meta,
        };
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
                    Field::new(
                        &c.name,
                        column_type(c.kind, c.metric_type.as_deref()),
                        nullable,
                    )
                })
                .collect::<Vec<_>>(),
        )
    }

    fn entry(&self, name: &str) -> Result<&ColumnEntry> {
        self.meta.column(name).ok_or_else(|| {
            Error::Internal(format!("segment {} has no column {name}", self.meta.id))
        })
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

    fn corrupt(&self, col: &ColumnEntry, reason: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            position: col.start,
            reason,
        }
    }

    fn required(&self, col: &ColumnEntry, role: BufferRole) -> Result<Buffer> {
        col.buffer(role).map(|r| self.buffer(r)).ok_or_else(|| {
            self.corrupt(
                col,
                format!("column {} lacks its {role:?} buffer", col.name),
            )
        })
    }

    /// `n` fixed-width values from a column's buffer, refused when the buffer is shorter
    /// (Arrow would panic).
    fn scalars<T: ArrowNativeType>(
        &self,
        col: &ColumnEntry,
        role: BufferRole,
        n: usize,
    ) -> Result<ScalarBuffer<T>> {
        let buffer = self.required(col, role)?;
        let needed = n.checked_mul(std::mem::size_of::<T>());
        if needed.is_none_or(|needed| needed > buffer.len()) {
            return Err(self.corrupt(
                col,
                format!(
                    "column {}: its {role:?} buffer of {} bytes cannot hold {n} values",
                    col.name,
                    buffer.len()
                ),
            ));
        }
        Ok(ScalarBuffer::new(buffer, 0, n))
    }

    /// `n + 1` offsets, which must not overflow.
    fn offset_count(&self, col: &ColumnEntry, n: usize) -> Result<usize> {
        n.checked_add(1).ok_or_else(|| {
            self.corrupt(col, format!("column {}: {n} values is too many", col.name))
        })
    }

    /// Offsets Arrow accepts (non-negative, never decreasing): `OffsetBuffer::new` panics on
    /// others, so a damaged or crafted file is refused first.
    fn checked_offsets(
        &self,
        col: &ColumnEntry,
        offsets: ScalarBuffer<i32>,
    ) -> Result<OffsetBuffer<i32>> {
        let fine = offsets.first().is_some_and(|first| *first >= 0)
            && offsets.windows(2).all(|w| w[0] <= w[1]);
        if !fine {
            return Err(self.corrupt(
                col,
                format!("column {}: offsets are negative or decreasing", col.name),
            ));
        }
        Ok(OffsetBuffer::new(offsets))
    }

    fn nulls(&self, col: &ColumnEntry) -> Result<Option<NullBuffer>> {
        let Some(r) = col.buffer(BufferRole::Validity) else {
            return Ok(None);
        };
        let rows = self.rows();
        let buffer = self.buffer(r);
        if buffer.len() < rows.div_ceil(8) {
            return Err(self.corrupt(
                col,
                format!(
                    "column {}: its validity bitmap of {} bytes cannot cover {rows} rows",
                    col.name,
                    buffer.len()
                ),
            ));
        }
        Ok(Some(NullBuffer::new(BooleanBuffer::new(buffer, 0, rows))))
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
                let values = self.scalars::<i64>(col, BufferRole::Values, rows)?;
                Arc::new(TimestampMillisecondArray::new(values, None).with_timezone("UTC"))
            }
            ColumnKind::Dimension => {
                let keys = Int32Array::new(
                    self.scalars(col, BufferRole::Values, rows)?,
                    self.nulls(col)?,
                );
                let values = self.dictionary_array(col, validate)?;
                if validate {
                    Arc::new(
                        DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values))
                            .map_err(bad)?,
                    )
                } else {
                    // SAFETY: `open` built this column with `validate`, which checked every
                    // key against the dictionary; the bytes are immutable and checksummed.
                    Arc::new(unsafe {
                        DictionaryArray::<Int32Type>::new_unchecked(keys, Arc::new(values))
                    })
                }
            }
            ColumnKind::Metric => match col.metric_type.as_deref() {
                Some("count") | Some("longSum") => Arc::new(Int64Array::new(
                    self.scalars(col, BufferRole::Values, rows)?,
                    self.nulls(col)?,
                )),
                _ => Arc::new(Float64Array::new(
                    self.scalars(col, BufferRole::Values, rows)?,
                    self.nulls(col)?,
                )),
            },
            ColumnKind::Sketch => {
                let offsets =
                    self.scalars::<i32>(col, BufferRole::Offsets, self.offset_count(col, rows)?)?;
                let data = self.required(col, BufferRole::Data)?;
                if validate {
                    let offsets = self.checked_offsets(col, offsets)?;
                    Arc::new(BinaryArray::try_new(offsets, data, self.nulls(col)?).map_err(bad)?)
                } else {
                    // SAFETY: validated at open (monotonic offsets within `data`).
                    Arc::new(unsafe {
                        BinaryArray::new_unchecked(
                            OffsetBuffer::new_unchecked(offsets),
                            data,
                            self.nulls(col)?,
                        )
                    })
                }
            }
        };
        Ok(array)
    }

    fn dictionary_array(&self, col: &ColumnEntry, validate: bool) -> Result<StringArray> {
        let card = usize::try_from(col.cardinality.unwrap_or(0)).map_err(|_| {
            self.corrupt(
                col,
                format!("column {}: its cardinality does not fit", col.name),
            )
        })?;
        let offsets =
            self.scalars::<i32>(col, BufferRole::DictOffsets, self.offset_count(col, card)?)?;
        let data = self.required(col, BufferRole::DictData)?;
        if validate {
            let offsets = self.checked_offsets(col, offsets)?;
            return StringArray::try_new(offsets, data, None)
                .map_err(|e| self.corrupt(col, format!("dictionary of {}: {e}", col.name)));
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
        // One bitmap per value, then null's: card + 2 offsets.
        let slots = card
            .checked_add(2)
            .ok_or_else(|| self.corrupt(col, format!("column {dim}: too many values")))?;
        let offsets = self.scalars::<u64>(col, BufferRole::BitmapOffsets, slots)?;
        let bitmaps = self.required(col, BufferRole::Bitmaps)?;
        let rows = self.meta.rows;
        let mut out = RoaringBitmap::new();
        for v in values {
            let slot = match v {
                None => Some(card),
                Some(s) => binary_search(&dict, s),
            };
            if let Some(slot) = slot {
                // The bitmap index is not checked at open (it is read only by filters), so
                // each bitmap is checked as it is read: its bytes inside the buffer, its rows
                // inside the segment.
                let bytes = usize::try_from(offsets[slot])
                    .ok()
                    .zip(usize::try_from(offsets[slot + 1]).ok())
                    .and_then(|(a, b)| bitmaps.as_slice().get(a..b))
                    .ok_or_else(|| {
                        self.corrupt(
                            col,
                            format!("bitmap {slot} of {dim} lies outside its buffer"),
                        )
                    })?;
                let bm = RoaringBitmap::deserialize_from(bytes)
                    .map_err(|e| self.corrupt(col, format!("bitmap of {dim}: {e}")))?;
                if bm.max().is_some_and(|max| u64::from(max) >= rows) {
                    return Err(self.corrupt(
                        col,
                        format!("bitmap {slot} of {dim} names rows past the segment's {rows}"),
                    ));
                }
                out |= bm;
            }
        }
        Ok(out)
    }
}

/// CRC32C of bytes `start..end` of `file`, read in pieces (never through a mapping).
fn file_crc(file: &File, start: u64, end: u64) -> std::io::Result<u32> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut at, mut crc) = (start, 0u32);
    while at < end {
        let n = usize::try_from((end - at).min(buf.len() as u64)).unwrap_or(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        at += n as u64;
    }
    Ok(crc)
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
