//! Writes a rollup index as an immutable segment file.
//!
//! The file is assembled in memory (the index it comes from is in memory too), written to a
//! temporary name, fsync'd, renamed into place and the directory fsync'd, so a segment file
//! either exists whole or not at all.
//!
//! Invariant: the bytes written are a pure function of the index contents and the segment
//! id: rows in clustering order, dictionaries sorted byte-wise, no timestamps or random bits.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

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

struct Builder {
    buf: Vec<u8>,
}

impl Builder {
    fn pad(&mut self) {
        let rem = self.buf.len() % ALIGN;
        if rem != 0 {
            self.buf.resize(self.buf.len() + ALIGN - rem, 0);
        }
    }

    fn buffer(&mut self, role: BufferRole, bytes: &[u8]) -> BufferRef {
        self.pad();
        let offset = self.buf.len() as u64;
        self.buf.extend_from_slice(bytes);
        BufferRef { role, offset, len: bytes.len() as u64 }
    }

    /// Closes a column that started at `start`: pads, then checksums its byte range.
    fn column(&mut self, name: &str, kind: ColumnKind, start: u64, buffers: Vec<BufferRef>) -> ColumnEntry {
        self.pad();
        let end = self.buf.len() as u64;
        ColumnEntry {
            name: name.to_string(),
            kind,
            metric_type: None,
            start,
            end,
            crc32c: crc32c::crc32c(&self.buf[start as usize..end as usize]),
            buffers,
            cardinality: None,
            null_count: 0,
        }
    }

    fn start(&mut self) -> u64 {
        self.pad();
        self.buf.len() as u64
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
pub fn write_segment(path: &Path, id: SegmentId, spec: &DatasourceSpec, index: &RollupIndex) -> Result<WrittenSegment> {
    if index.dimension_count() != spec.dimensions.len() || index.metric_count() != spec.metrics.len() {
        return Err(Error::Internal(format!(
            "index shape ({} dims, {} metrics) does not match the spec of {}",
            index.dimension_count(),
            index.metric_count(),
            spec.name
        )));
    }
    let clustering: Vec<usize> = spec.clustering.iter().filter_map(|c| spec.dimension_index(c)).collect();
    let order = index.sorted_rows(&clustering);
    let rows = order.len();
    let mut b = Builder { buf: Vec::with_capacity(HEADER_LEN + rows * 64) };
    b.buf.extend_from_slice(MAGIC);
    b.buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.buf.extend_from_slice(&0u32.to_le_bytes());
    let mut columns = Vec::new();

    // __time
    let times: Vec<i64> = order.iter().map(|&r| index.bucket(r as usize)).collect();
    let start = b.start();
    let values = b.buffer(BufferRole::Values, &le_bytes(&times, i64::to_le_bytes));
    columns.push(b.column(tidemark_catalog::spec::TIME_COLUMN, ColumnKind::Time, start, vec![values]));

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
        let mut keys = Vec::with_capacity(rows);
        let mut bitmaps = vec![RoaringBitmap::new(); sorted_ids.len() + 1];
        for (pos, &r) in order.iter().enumerate() {
            let id = index.dim_id(r as usize, d);
            let (key, slot) = if id == NULL_ID {
                (0i32, sorted_ids.len())
            } else {
                let k = ranks[id as usize] as usize - 1;
                (k as i32, k)
            };
            keys.push(key);
            // Rows arrive in ascending position, so push is the fast append path.
            let appended = bitmaps[slot].try_push(pos as u32);
            debug_assert!(appended.is_ok(), "positions ascend");
        }
        let (valid, nulls) = validity(order.iter().map(|&r| index.dim_id(r as usize, d) != NULL_ID), rows);
        let mut bitmap_offsets = Vec::with_capacity(bitmaps.len() + 1);
        let mut bitmap_data = Vec::new();
        bitmap_offsets.push(0u64);
        for bm in &bitmaps {
            bm.serialize_into(&mut bitmap_data).map_err(|e| Error::Internal(format!("roaring serialize: {e}")))?;
            bitmap_offsets.push(bitmap_data.len() as u64);
        }
        let start = b.start();
        let mut bufs = vec![
            b.buffer(BufferRole::Values, &le_bytes(&keys, i32::to_le_bytes)),
            b.buffer(BufferRole::DictOffsets, &le_bytes(&dict_offsets, i32::to_le_bytes)),
            b.buffer(BufferRole::DictData, &dict_data),
            b.buffer(BufferRole::BitmapOffsets, &le_bytes(&bitmap_offsets, u64::to_le_bytes)),
            b.buffer(BufferRole::Bitmaps, &bitmap_data),
        ];
        if let Some(v) = valid {
            bufs.push(b.buffer(BufferRole::Validity, &v));
        }
        let mut col = b.column(name, ColumnKind::Dimension, start, bufs);
        col.cardinality = Some(sorted_ids.len() as u64);
        col.null_count = nulls;
        columns.push(col);
    }

    // metrics
    for (m, metric) in spec.metrics.iter().enumerate() {
        let start = b.start();
        let (kind, bufs, nulls) = match index.metric(m) {
            MetricColumn::Count(v) => {
                let vals: Vec<i64> = order.iter().map(|&r| v[r as usize] as i64).collect();
                (ColumnKind::Metric, vec![b.buffer(BufferRole::Values, &le_bytes(&vals, i64::to_le_bytes))], 0)
            }
            MetricColumn::LongSum(v) => {
                let vals: Vec<i64> = order.iter().map(|&r| v[r as usize]).collect();
                (ColumnKind::Metric, vec![b.buffer(BufferRole::Values, &le_bytes(&vals, i64::to_le_bytes))], 0)
            }
            MetricColumn::DoubleSum(v) | MetricColumn::Min(v) | MetricColumn::Max(v) => {
                let vals: Vec<f64> = order.iter().map(|&r| v[r as usize]).collect();
                let (valid, nulls) = validity(vals.iter().map(|x| !x.is_nan()), rows);
                // Null slots hold 0 so a scan that ignores validity stays finite.
                let vals: Vec<f64> = vals.into_iter().map(|x| if x.is_nan() { 0.0 } else { x }).collect();
                let mut bufs = vec![b.buffer(BufferRole::Values, &le_bytes(&vals, f64::to_le_bytes))];
                if let Some(v) = valid {
                    bufs.push(b.buffer(BufferRole::Validity, &v));
                }
                (ColumnKind::Metric, bufs, nulls)
            }
            MetricColumn::Distinct { states, .. } => {
                sketch_buffers(&mut b, rows, &order, |r, out| states[r].encode(out), |r| states[r].is_empty())?
            }
            MetricColumn::Quantile { states, .. } => {
                sketch_buffers(&mut b, rows, &order, |r, out| states[r].encode(out), |r| states[r].is_empty())?
            }
        };
        let mut col = b.column(&metric.name, kind, start, bufs);
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
    let footer = serde_json::to_vec(&meta).map_err(|e| Error::Internal(format!("footer encode: {e}")))?;
    b.buf.extend_from_slice(&footer);
    b.buf.extend_from_slice(&(footer.len() as u32).to_le_bytes());
    b.buf.extend_from_slice(&crc32c::crc32c(&footer).to_le_bytes());
    b.buf.extend_from_slice(FOOTER_MAGIC);

    write_atomically(path, &b.buf)?;
    Ok(WrittenSegment { meta, file_bytes: b.buf.len() as u64 })
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
    let mut data = Vec::new();
    offsets.push(0i32);
    for &r in order {
        encode(r as usize, &mut data);
        offsets.push(i32::try_from(data.len()).map_err(|_| Error::Internal("sketch column exceeds 2 GiB".into()))?);
    }
    let (valid, nulls) = validity(order.iter().map(|&r| !is_empty(r as usize)), rows);
    let mut bufs =
        vec![b.buffer(BufferRole::Offsets, &le_bytes(&offsets, i32::to_le_bytes)), b.buffer(BufferRole::Data, &data)];
    if let Some(v) = valid {
        bufs.push(b.buffer(BufferRole::Validity, &v));
    }
    Ok((ColumnKind::Sketch, bufs, nulls))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(bytes).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::fsync(&tmp))?;
    fs::rename(&tmp, path).map_err(Error::io(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(Error::fsync(dir))
}
