//! Writes a rollup index as an immutable segment file.
//!
//! The file is streamed to a temporary name (each column's checksum computed as its bytes
//! go out, so no second copy of the segment is held in memory), fsync'd, renamed into place
//! and the directory fsync'd, so a segment file either exists whole or not at all.
//!
//! Invariant: the bytes written are a pure function of the index contents and the segment
//! id: rows in clustering order, dictionaries sorted byte-wise, no timestamps or random bits.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use roaring::RoaringBitmap;
use tidemark_catalog::DatasourceSpec;

use crate::error::{Error, Result};
use crate::rollup::dictionary::NULL_ID;
use crate::rollup::{MetricColumn, RollupIndex};
use crate::segment::format::*;

/// The outcome of writing a segment: its footer and the file's size.
#[derive(Debug, Clone)]
pub struct WrittenSegment {
    pub meta: SegmentMeta,
    pub file_bytes: u64,
}

/// Streams a segment file: where it is, and the checksum of the column being written.
struct Builder {
    out: BufWriter<File>,
    path: PathBuf,
    pos: u64,
    /// CRC32C of the current column's bytes so far (from its aligned start).
    column_crc: u32,
}

const ZEROS: [u8; ALIGN] = [0; ALIGN];

impl Builder {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).map_err(Error::io(&self.path))?;
        self.column_crc = crc32c::crc32c_append(self.column_crc, bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let rem = self.pos as usize % ALIGN;
        if rem != 0 {
            self.write(&ZEROS[..ALIGN - rem])
        } else {
            Ok(())
        }
    }

    fn buffer(&mut self, role: BufferRole, bytes: &[u8]) -> Result<BufferRef> {
        self.pad()?;
        let offset = self.pos;
        self.write(bytes)?;
        Ok(BufferRef {
            role,
            offset,
            len: bytes.len() as u64,
        })
    }

    /// Closes a column that started at `start`: pads, and takes the checksum of its bytes.
    fn column(
        &mut self,
        name: &str,
        kind: ColumnKind,
        start: u64,
        buffers: Vec<BufferRef>,
    ) -> Result<ColumnEntry> {
        self.pad()?;
        Ok(ColumnEntry {
            name: name.to_string(),
            kind,
            metric_type: None,
            start,
            end: self.pos,
            crc32c: self.column_crc,
            buffers,
            cardinality: None,
            null_count: 0,
        })
    }

    /// Starts a column at the next aligned position.
    fn start(&mut self) -> Result<u64> {
        self.pad()?;
        self.column_crc = 0;
        Ok(self.pos)
    }
}

fn le_bytes<T: Copy, const N: usize>(vals: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() * N);
    for v in vals {
        out.extend_from_slice(&f(*v));
    }
    out
}

/// Arrow validity bitmap for `valid`, or `None` when every value is valid.
fn validity(valid: impl Iterator<Item = bool>, rows: usize) -> (Option<Vec<u8>>, u64) {
    let mut bits = vec![0u8; rows.div_ceil(8)];
    let mut nulls = 0u64;
    for (i, v) in valid.enumerate() {
        if v {
            bits[i / 8] |= 1 << (i % 8);
        } else {
            nulls += 1;
        }
    }
    (if nulls == 0 { None } else { Some(bits) }, nulls)
}

/// Writes `index` (rolled up under `spec`) as segment `id` at `path`.
pub fn write_segment(
    path: &Path,
    id: SegmentId,
    spec: &DatasourceSpec,
    index: &RollupIndex,
) -> Result<WrittenSegment> {
    if index.dimension_count() != spec.dimensions.len()
        || index.metric_count() != spec.metrics.len()
    {
        return Err(Error::Internal(format!(
            "index shape ({} dims, {} metrics) does not match the spec of {}",
            index.dimension_count(),
            index.metric_count(),
            spec.name
        )));
    }
    let clustering: Vec<usize> = spec
        .clustering
        .iter()
        .filter_map(|c| spec.dimension_index(c))
        .collect();
    let order = index.sorted_rows(&clustering);
    let rows = order.len();
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(Error::io(&tmp))?;
    let mut b = Builder {
        out: BufWriter::with_capacity(1 << 20, file),
        path: tmp.clone(),
        pos: 0,
        column_crc: 0,
    };
    match write_body(&mut b, id, spec, index, &order, rows) {
        Ok(meta) => {
            let file = b
                .out
                .into_inner()
                .map_err(|e| Error::io(&tmp)(e.into_error()))?;
            file.sync_all().map_err(Error::fsync(&tmp))?;
            fs::rename(&tmp, path).map_err(Error::io(path))?;
            File::open(dir)
                .map_err(Error::io(dir))?
                .sync_all()
                .map_err(Error::fsync(dir))?;
            Ok(WrittenSegment {
                meta,
                file_bytes: b.pos,
            })
        }
        Err(e) => {
            drop(b);
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_body(
    b: &mut Builder,
    id: SegmentId,
    spec: &DatasourceSpec,
    index: &RollupIndex,
    order: &[u32],
    rows: usize,
) -> Result<SegmentMeta> {
    b.write(MAGIC)?;
    b.write(&FORMAT_VERSION.to_le_bytes())?;
    b.write(&0u32.to_le_bytes())?;
    debug_assert_eq!(b.pos as usize, HEADER_LEN);
    let mut columns = Vec::new();

    // __time
    let times: Vec<i64> = order.iter().map(|&r| index.bucket(r as usize)).collect();
    let start = b.start()?;
    let values = b.buffer(BufferRole::Values, &le_bytes(&times, i64::to_le_bytes))?;
    columns.push(b.column(
        tidemark_catalog::spec::TIME_COLUMN,
        ColumnKind::Time,
        start,
        vec![values],
    )?);

    // Dimension ids in row order, gathered in one pass (a row's ids share a cache line).
    let mut ids: Vec<Vec<u32>> = (0..spec.dimensions.len())
        .map(|_| Vec::with_capacity(rows))
        .collect();
    for &r in order {
        for (col, &id) in ids.iter_mut().zip(index.row_dim_ids(r as usize)) {
            col.push(id);
        }
    }

    // dimensions
    for (d, name) in spec.dimensions.iter().enumerate() {
        let dict = index.dictionary(d);
        let ranks = dict.sorted_ranks();
        let mut sorted_ids: Vec<u32> = (1..=dict.len() as u32).collect();
        sorted_ids.sort_unstable_by_key(|&id| ranks[id as usize]);
        let mut dict_offsets = Vec::with_capacity(sorted_ids.len() + 1);
        let mut dict_data = Vec::new();
        dict_offsets.push(0i32);
        for &id in &sorted_ids {
            dict_data.extend_from_slice(dict.value(id).unwrap_or_default().as_bytes());
            dict_offsets.push(
                i32::try_from(dict_data.len())
                    .map_err(|_| Error::Internal(format!("dictionary of {name} exceeds 2 GiB")))?,
            );
        }
        let slots_n = sorted_ids.len() + 1;
        let mut keys = Vec::with_capacity(rows);
        let mut slots: Vec<u32> = Vec::with_capacity(rows);
        let mut starts = vec![0usize; slots_n + 1];
        for &id in &ids[d] {
            let (key, slot) = if id == NULL_ID {
                (0i32, sorted_ids.len())
            } else {
                let k = ranks[id as usize] as usize - 1;
                (k as i32, k)
            };
            keys.push(key);
            slots.push(slot as u32);
            starts[slot + 1] += 1;
        }
        // Each value's row positions, grouped by a counting sort (ascending within a value),
        // then one bitmap per value built in bulk: far cheaper than a push per row into
        // thousands of growing bitmaps.
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut positions = vec![0u32; rows];
        let mut next = starts.clone();
        for (pos, &slot) in slots.iter().enumerate() {
            positions[next[slot as usize]] = pos as u32;
            next[slot as usize] += 1;
        }
        let bitmaps = (0..slots_n)
            .map(|v| {
                RoaringBitmap::from_sorted_iter(positions[starts[v]..starts[v + 1]].iter().copied())
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(format!("roaring build: {e}")))?;
        let (valid, nulls) = validity(ids[d].iter().map(|&id| id != NULL_ID), rows);
        let mut bitmap_offsets = Vec::with_capacity(bitmaps.len() + 1);
        let mut bitmap_data = Vec::new();
        bitmap_offsets.push(0u64);
        for bm in &bitmaps {
            bm.serialize_into(&mut bitmap_data)
                .map_err(|e| Error::Internal(format!("roaring serialize: {e}")))?;
            bitmap_offsets.push(bitmap_data.len() as u64);
        }
        let start = b.start()?;
        let mut bufs = vec![
            b.buffer(BufferRole::Values, &le_bytes(&keys, i32::to_le_bytes))?,
            b.buffer(
                BufferRole::DictOffsets,
                &le_bytes(&dict_offsets, i32::to_le_bytes),
            )?,
            b.buffer(BufferRole::DictData, &dict_data)?,
            b.buffer(
                BufferRole::BitmapOffsets,
                &le_bytes(&bitmap_offsets, u64::to_le_bytes),
            )?,
            b.buffer(BufferRole::Bitmaps, &bitmap_data)?,
        ];
        if let Some(v) = valid {
            bufs.push(b.buffer(BufferRole::Validity, &v)?);
        }
        let mut col = b.column(name, ColumnKind::Dimension, start, bufs)?;
        col.cardinality = Some(sorted_ids.len() as u64);
        col.null_count = nulls;
        columns.push(col);
    }

    // metrics
    for (m, metric) in spec.metrics.iter().enumerate() {
        let start = b.start()?;
        let (kind, bufs, nulls) = match index.metric(m) {
            MetricColumn::Count(v) => {
                let vals: Vec<i64> = order.iter().map(|&r| v[r as usize] as i64).collect();
                (
                    ColumnKind::Metric,
                    vec![b.buffer(BufferRole::Values, &le_bytes(&vals, i64::to_le_bytes))?],
                    0,
                )
            }
            MetricColumn::LongSum(v) => {
                let vals: Vec<i64> = order.iter().map(|&r| v[r as usize]).collect();
                (
                    ColumnKind::Metric,
                    vec![b.buffer(BufferRole::Values, &le_bytes(&vals, i64::to_le_bytes))?],
                    0,
                )
            }
            MetricColumn::DoubleSum(v) | MetricColumn::Min(v) | MetricColumn::Max(v) => {
                let vals: Vec<f64> = order.iter().map(|&r| v[r as usize]).collect();
                let (valid, nulls) = validity(vals.iter().map(|x| !x.is_nan()), rows);
                // Null slots hold 0 so a scan that ignores validity stays finite.
                let vals: Vec<f64> = vals
                    .into_iter()
                    .map(|x| if x.is_nan() { 0.0 } else { x })
                    .collect();
                let mut bufs =
                    vec![b.buffer(BufferRole::Values, &le_bytes(&vals, f64::to_le_bytes))?];
                if let Some(v) = valid {
                    bufs.push(b.buffer(BufferRole::Validity, &v)?);
                }
                (ColumnKind::Metric, bufs, nulls)
            }
            MetricColumn::Distinct { states, .. } => sketch_buffers(
                b,
                rows,
                order,
                |r, out| states[r].encode(out),
                |r| states[r].is_empty(),
            )?,
            MetricColumn::Quantile { states, .. } => sketch_buffers(
                b,
                rows,
                order,
                |r, out| states[r].encode(out),
                |r| states[r].is_empty(),
            )?,
        };
        let mut col = b.column(&metric.name, kind, start, bufs)?;
        col.metric_type = Some(metric.kind.type_name().to_string());
        col.null_count = nulls;
        columns.push(col);
    }

    let meta = SegmentMeta {
        format_version: FORMAT_VERSION,
        id,
        query_granularity: index.query_granularity().to_string(),
        rows: rows as u64,
        events: index.events(),
        min_time_ms: times.iter().copied().min().unwrap_or(0),
        max_time_ms: times.iter().copied().max().unwrap_or(0),
        dimensions: spec.dimensions.clone(),
        metrics: spec.metrics.clone(),
        clustering: spec.clustering.clone(),
        columns,
    };
    let footer =
        serde_json::to_vec(&meta).map_err(|e| Error::Internal(format!("footer encode: {e}")))?;
    b.write(&footer)?;
    b.write(&(footer.len() as u32).to_le_bytes())?;
    b.write(&crc32c::crc32c(&footer).to_le_bytes())?;
    b.write(FOOTER_MAGIC)?;
    Ok(meta)
}

type SketchColumn = (ColumnKind, Vec<BufferRef>, u64);

fn sketch_buffers(
    b: &mut Builder,
    rows: usize,
    order: &[u32],
    encode: impl Fn(usize, &mut Vec<u8>),
    is_empty: impl Fn(usize) -> bool,
) -> Result<SketchColumn> {
    let mut offsets = Vec::with_capacity(rows + 1);
    let mut data = Vec::with_capacity(rows * 32);
    offsets.push(0i32);
    for &r in order {
        encode(r as usize, &mut data);
        offsets.push(
            i32::try_from(data.len())
                .map_err(|_| Error::Internal("sketch column exceeds 2 GiB".into()))?,
        );
    }
    let (valid, nulls) = validity(order.iter().map(|&r| !is_empty(r as usize)), rows);
    let mut bufs = vec![
        b.buffer(BufferRole::Offsets, &le_bytes(&offsets, i32::to_le_bytes))?,
        b.buffer(BufferRole::Data, &data)?,
    ];
    if let Some(v) = valid {
        bufs.push(b.buffer(BufferRole::Validity, &v)?);
    }
    Ok((ColumnKind::Sketch, bufs, nulls))
}
