//! The incremental rollup index of one (datasource, segment interval): events fold into rows
//! keyed by (time bucket, dimension values) as they are applied, queryable at once.
//!
//! Hand-written because it is the core of ingest: one hash probe per dimension (interning)
//! plus one for the row, metric states stored column-wise, no allocation for rows that hold
//! one or two events (see `state.rs`).
//!
//! Invariants:
//! - Rows are numbered in arrival (log) order; nothing depends on hash iteration order, so
//!   the same log prefix builds the same index on every replica.
//! - `min`/`max` columns hold NaN until a value arrives (null in SQL).

use hashbrown::HashTable;
use tidemark_catalog::{DatasourceSpec, Event, MetricInput, MetricKind, Period};

use crate::rollup::dictionary::{Dictionary, NULL_ID};
use crate::rollup::state::{DistinctState, QuantileState, distinct_hash};

/// One metric of a pre-aggregated row, as [`RollupIndex::merge_row`] takes it.
#[derive(Debug, Clone, Copy)]
pub enum RowMetric<'a> {
    /// No value (a min/max or sketch of a row that had none).
    Null,
    Count(u64),
    Long(i64),
    /// A double sum, min or max.
    Double(f64),
    /// An encoded distinct or quantile state.
    State(&'a [u8]),
}

/// One metric's values for every row, in row order.
#[derive(Debug, Clone)]
pub enum MetricColumn {
    Count(Vec<u64>),
    LongSum(Vec<i64>),
    DoubleSum(Vec<f64>),
    Min(Vec<f64>),
    Max(Vec<f64>),
    Distinct {
        lg_k: u8,
        states: Vec<DistinctState>,
    },
    Quantile {
        compression: u16,
        states: Vec<QuantileState>,
    },
}

impl MetricColumn {
    fn for_kind(kind: &MetricKind) -> MetricColumn {
        match kind {
            MetricKind::Count => MetricColumn::Count(Vec::new()),
            MetricKind::LongSum { .. } => MetricColumn::LongSum(Vec::new()),
            MetricKind::DoubleSum { .. } => MetricColumn::DoubleSum(Vec::new()),
            MetricKind::Min { .. } => MetricColumn::Min(Vec::new()),
            MetricKind::Max { .. } => MetricColumn::Max(Vec::new()),
            MetricKind::Hll { .. } => MetricColumn::Distinct {
                lg_k: kind.hll_lg_k(),
                states: Vec::new(),
            },
            MetricKind::Tdigest { .. } => MetricColumn::Quantile {
                compression: kind.tdigest_compression(),
                states: Vec::new(),
            },
        }
    }

    fn reserve(&mut self, rows: usize) {
        match self {
            MetricColumn::Count(v) => v.reserve(rows),
            MetricColumn::LongSum(v) => v.reserve(rows),
            MetricColumn::DoubleSum(v) | MetricColumn::Min(v) | MetricColumn::Max(v) => {
                v.reserve(rows)
            }
            MetricColumn::Distinct { states, .. } => states.reserve(rows),
            MetricColumn::Quantile { states, .. } => states.reserve(rows),
        }
    }

    fn push_empty(&mut self) {
        match self {
            MetricColumn::Count(v) => v.push(0),
            MetricColumn::LongSum(v) => v.push(0),
            MetricColumn::DoubleSum(v) => v.push(0.0),
            MetricColumn::Min(v) | MetricColumn::Max(v) => v.push(f64::NAN),
            MetricColumn::Distinct { states, .. } => states.push(DistinctState::Empty),
            MetricColumn::Quantile { states, .. } => states.push(QuantileState::Empty),
        }
    }

    fn row_bytes(&self) -> usize {
        match self {
            MetricColumn::Count(_) | MetricColumn::LongSum(_) | MetricColumn::DoubleSum(_) => 8,
            MetricColumn::Min(_) | MetricColumn::Max(_) => 8,
            MetricColumn::Distinct { .. } => std::mem::size_of::<DistinctState>(),
            MetricColumn::Quantile { .. } => std::mem::size_of::<QuantileState>(),
        }
    }

    /// Folds one input into `row`; returns the change in heap bytes.
    #[inline]
    fn update(&mut self, row: usize, input: &MetricInput<'_>) -> isize {
        match (self, input) {
            (_, MetricInput::Absent) => 0,
            (MetricColumn::Count(v), _) => {
                v[row] += 1;
                0
            }
            (MetricColumn::LongSum(v), MetricInput::Long(x)) => {
                v[row] = v[row].wrapping_add(*x);
                0
            }
            (MetricColumn::DoubleSum(v), MetricInput::Double(x)) => {
                v[row] += x;
                0
            }
            (MetricColumn::Min(v), MetricInput::Double(x)) => {
                // NaN means no value yet; inputs are finite, so the first value wins.
                if v[row].is_nan() || *x < v[row] {
                    v[row] = *x;
                }
                0
            }
            (MetricColumn::Max(v), MetricInput::Double(x)) => {
                if v[row].is_nan() || *x > v[row] {
                    v[row] = *x;
                }
                0
            }
            (MetricColumn::Distinct { lg_k, states }, MetricInput::Distinct(text)) => {
                let s = &mut states[row];
                let before = s.heap_bytes();
                s.add(distinct_hash(text), *lg_k);
                s.heap_bytes() as isize - before as isize
            }
            (
                MetricColumn::Quantile {
                    compression,
                    states,
                },
                MetricInput::Double(x),
            ) => {
                let s = &mut states[row];
                let before = s.heap_bytes();
                s.add(*x, *compression);
                s.heap_bytes() as isize - before as isize
            }
            // Extraction produces inputs matching the spec the column was built from.
            (col, input) => panic!(
                "metric input {input:?} does not fit column {}",
                col.kind_name()
            ),
        }
    }

    fn kind_name(&self) -> &'static str {
        match self {
            MetricColumn::Count(_) => "count",
            MetricColumn::LongSum(_) => "longSum",
            MetricColumn::DoubleSum(_) => "doubleSum",
            MetricColumn::Min(_) => "min",
            MetricColumn::Max(_) => "max",
            MetricColumn::Distinct { .. } => "hll",
            MetricColumn::Quantile { .. } => "tdigest",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RollupIndex {
    query_granularity: Period,
    dims: Vec<Dictionary>,
    /// `buckets[row]`: start of the row's time bucket, epoch ms.
    buckets: Vec<i64>,
    /// `dim_ids[row * ndims + d]`: dictionary id of dimension `d` (0 = null).
    dim_ids: Vec<u32>,
    /// `row_hashes[row]`: kept so growing the table never rehashes keys.
    row_hashes: Vec<u64>,
    table: HashTable<u32>,
    metrics: Vec<MetricColumn>,
    events: u64,
    state_heap_bytes: isize,
    scratch: Vec<u32>,
}

#[inline]
fn row_hash(bucket: i64, ids: &[u32]) -> u64 {
    // FxHash-style fold with a final avalanche: cheap, and hashbrown needs good high bits.
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = (bucket as u64).wrapping_mul(K);
    for &id in ids {
        h = (h.rotate_left(5) ^ u64::from(id)).wrapping_mul(K);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl RollupIndex {
    pub fn new(spec: &DatasourceSpec) -> Self {
        RollupIndex {
            query_granularity: spec.granularity.query.clone(),
            dims: vec![Dictionary::default(); spec.dimensions.len()],
            buckets: Vec::new(),
            dim_ids: Vec::new(),
            row_hashes: Vec::new(),
            table: HashTable::new(),
            metrics: spec
                .metrics
                .iter()
                .map(|m| MetricColumn::for_kind(&m.kind))
                .collect(),
            events: 0,
            state_heap_bytes: 0,
            scratch: Vec::with_capacity(spec.dimensions.len()),
        }
    }

    /// Makes room for `rows` more rows up front. For a builder that knows about how many
    /// events are coming (a reindex): growing by doubling copies every column several times,
    /// and each copy lands on fresh pages the kernel must zero. Untouched capacity costs
    /// address space only.
    pub fn reserve(&mut self, rows: usize) {
        self.buckets.reserve(rows);
        self.dim_ids.reserve(rows * self.dims.len());
        self.row_hashes.reserve(rows);
        let hashes = &self.row_hashes;
        self.table.reserve(rows, |&r| hashes[r as usize]);
        for m in &mut self.metrics {
            m.reserve(rows);
        }
    }

    /// Folds one event in. Hot path.
    #[inline]
    pub fn add(&mut self, event: &Event<'_>) {
        debug_assert_eq!(event.dims.len(), self.dims.len());
        debug_assert_eq!(event.metrics.len(), self.metrics.len());
        let bucket = self.query_granularity.bucket_start(event.time_ms);
        self.scratch.clear();
        for (dict, value) in self.dims.iter_mut().zip(&event.dims) {
            self.scratch.push(match value {
                Some(v) => dict.intern(v),
                None => NULL_ID,
            });
        }
        let row = self.row_of_scratch(bucket);
        for (m, input) in self.metrics.iter_mut().zip(&event.metrics) {
            self.state_heap_bytes += m.update(row, input);
        }
        self.events += 1;
    }

    /// The row of (`bucket`, the dimension ids in `scratch`), created if new.
    #[inline]
    fn row_of_scratch(&mut self, bucket: i64) -> usize {
        let ndims = self.dims.len();
        let h = row_hash(bucket, &self.scratch);
        let (buckets, dim_ids, scratch) = (&self.buckets, &self.dim_ids, &self.scratch);
        let found = self.table.find(h, |&row| {
            let r = row as usize;
            buckets[r] == bucket && &dim_ids[r * ndims..(r + 1) * ndims] == scratch.as_slice()
        });
        match found {
            Some(&row) => row as usize,
            None => {
                let row = self.buckets.len();
                self.buckets.push(bucket);
                self.dim_ids.extend_from_slice(&self.scratch);
                for m in &mut self.metrics {
                    m.push_empty();
                }
                self.row_hashes.push(h);
                let hashes = &self.row_hashes;
                self.table
                    .insert_unique(h, row as u32, |&r| hashes[r as usize]);
                row
            }
        }
    }

    /// An index whose rows are bucketed at `query` instead of the spec's query granularity
    /// (compaction rolling older data up to a coarser one).
    pub fn with_granularity(spec: &DatasourceSpec, query: Period) -> Self {
        let mut index = RollupIndex::new(spec);
        index.query_granularity = query;
        index
    }

    /// Folds in one pre-aggregated row (a segment's, when compacting): its time is bucketed
    /// at this index's granularity, counts and sums add, min and max compare, sketch states
    /// merge. `events` is how many events the row stands for.
    pub fn merge_row(
        &mut self,
        time_ms: i64,
        dims: &[Option<&str>],
        metrics: &[RowMetric<'_>],
        events: u64,
    ) -> crate::error::Result<()> {
        let bucket = self.query_granularity.bucket_start(time_ms);
        self.scratch.clear();
        for (dict, value) in self.dims.iter_mut().zip(dims) {
            self.scratch.push(match value {
                Some(v) => dict.intern(v),
                None => NULL_ID,
            });
        }
        let row = self.row_of_scratch(bucket);
        for (column, value) in self.metrics.iter_mut().zip(metrics) {
            match (column, value) {
                (_, RowMetric::Null) => {}
                (MetricColumn::Count(v), RowMetric::Count(x)) => v[row] += x,
                (MetricColumn::LongSum(v), RowMetric::Long(x)) => v[row] = v[row].wrapping_add(*x),
                (MetricColumn::DoubleSum(v), RowMetric::Double(x)) => v[row] += x,
                (MetricColumn::Min(v), RowMetric::Double(x)) => {
                    if v[row].is_nan() || *x < v[row] {
                        v[row] = *x;
                    }
                }
                (MetricColumn::Max(v), RowMetric::Double(x)) => {
                    if v[row].is_nan() || *x > v[row] {
                        v[row] = *x;
                    }
                }
                (MetricColumn::Distinct { lg_k, states }, RowMetric::State(bytes)) => {
                    let before = states[row].heap_bytes();
                    states[row].merge_encoded(bytes, *lg_k)?;
                    self.state_heap_bytes += states[row].heap_bytes() as isize - before as isize;
                }
                (
                    MetricColumn::Quantile {
                        compression,
                        states,
                    },
                    RowMetric::State(bytes),
                ) => {
                    let before = states[row].heap_bytes();
                    states[row].merge_encoded(bytes, *compression)?;
                    self.state_heap_bytes += states[row].heap_bytes() as isize - before as isize;
                }
                (column, value) => {
                    return Err(crate::error::Error::Internal(format!(
                        "a {value:?} value does not fit a {} column",
                        column.kind_name()
                    )));
                }
            }
        }
        self.events += events;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.buckets.len()
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Counts `n` more events merged without a row of their own (a segment's total, after a
    /// deletion took some of its rows out).
    pub fn add_events(&mut self, n: u64) {
        self.events += n;
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    pub fn query_granularity(&self) -> &Period {
        &self.query_granularity
    }

    /// Approximate bytes held, for the memory bound that triggers a persist.
    pub fn memory_bytes(&self) -> usize {
        let per_row = 8
            + 4 * self.dims.len()
            + 8
            + 4
            + self
                .metrics
                .iter()
                .map(MetricColumn::row_bytes)
                .sum::<usize>();
        let dicts: usize = self.dims.iter().map(Dictionary::heap_bytes).sum();
        self.rows() * per_row + dicts + self.state_heap_bytes.max(0) as usize
    }

    pub fn bucket(&self, row: usize) -> i64 {
        self.buckets[row]
    }

    pub fn buckets(&self) -> &[i64] {
        &self.buckets
    }

    pub fn dim_id(&self, row: usize, dim: usize) -> u32 {
        self.dim_ids[row * self.dims.len() + dim]
    }

    /// Every dimension id of `row`, in dimension order (one cache line for a segment
    /// writer gathering columns in sorted-row order, where `dim_id` per column is one miss
    /// per value).
    pub fn row_dim_ids(&self, row: usize) -> &[u32] {
        let n = self.dims.len();
        &self.dim_ids[row * n..(row + 1) * n]
    }

    /// [`Self::sorted_rows`] when the whole sort key (clustering ranks, bucket index, the
    /// other ranks) packs into 128 bits, as it does for all but extreme cardinalities: one
    /// pass computes each row's key, then a sort of (key, row) pairs touches memory in
    /// order instead of chasing dictionary ranks and row data per comparison. The same
    /// order as the comparator's (keys are unique: a row is its bucket and dimensions).
    fn sorted_rows_packed(
        &self,
        clustering: &[usize],
        rest: &[usize],
        ranks: &[Vec<u32>],
    ) -> Option<Vec<u32>> {
        let bits = |max: u64| 64 - max.leading_zeros();
        let step = self.query_granularity.millis().max(1);
        let first = self.buckets.iter().copied().min().unwrap_or(0);
        let last = self.buckets.iter().copied().max().unwrap_or(0);
        let bucket_bits = bits(((last - first) / step) as u64);
        let dim_bits: Vec<u32> = self.dims.iter().map(|d| bits(d.len() as u64)).collect();
        let total: u32 = dim_bits.iter().sum::<u32>() + bucket_bits;
        if total > 128 {
            return None;
        }
        let n = self.dims.len();
        let mut keyed: Vec<(u128, u32)> = Vec::with_capacity(self.rows());
        for (r, bucket) in self.buckets.iter().enumerate() {
            if (bucket - first) % step != 0 {
                return None;
            }
            let ids = &self.dim_ids[r * n..(r + 1) * n];
            let mut key: u128 = 0;
            for &d in clustering {
                key = (key << dim_bits[d]) | u128::from(ranks[d][ids[d] as usize]);
            }
            key = (key << bucket_bits) | ((bucket - first) / step) as u128;
            for &d in rest {
                key = (key << dim_bits[d]) | u128::from(ranks[d][ids[d] as usize]);
            }
            keyed.push((key, r as u32));
        }
        keyed.sort_unstable();
        Some(keyed.into_iter().map(|(_, r)| r).collect())
    }

    pub fn dictionary(&self, dim: usize) -> &Dictionary {
        &self.dims[dim]
    }

    pub fn dimension_count(&self) -> usize {
        self.dims.len()
    }

    pub fn metric(&self, m: usize) -> &MetricColumn {
        &self.metrics[m]
    }

    pub fn metric_count(&self) -> usize {
        self.metrics.len()
    }

    /// Row numbers in segment order: the clustering dimensions (by value, null first), then
    /// time, then the other dimensions in spec order. Ties cannot happen: rows are unique.
    pub fn sorted_rows(&self, clustering: &[usize]) -> Vec<u32> {
        let ranks: Vec<Vec<u32>> = self.dims.iter().map(Dictionary::sorted_ranks).collect();
        let rest: Vec<usize> = (0..self.dims.len())
            .filter(|d| !clustering.contains(d))
            .collect();
        if let Some(order) = self.sorted_rows_packed(clustering, &rest, &ranks) {
            return order;
        }
        self.sorted_rows_compared(clustering, &rest, &ranks)
    }

    fn sorted_rows_compared(
        &self,
        clustering: &[usize],
        rest: &[usize],
        ranks: &[Vec<u32>],
    ) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.rows() as u32).collect();
        let key = |r: u32, d: usize| ranks[d][self.dim_id(r as usize, d) as usize];
        order.sort_unstable_by(|&a, &b| {
            clustering
                .iter()
                .map(|&d| key(a, d).cmp(&key(b, d)))
                .chain(std::iter::once(
                    self.buckets[a as usize].cmp(&self.buckets[b as usize]),
                ))
                .chain(rest.iter().map(|&d| key(a, d).cmp(&key(b, d))))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollup::state::DistinctMerger;
    use serde_json::json;
    use tidemark_catalog::event::extract;

    fn spec() -> DatasourceSpec {
        DatasourceSpec::from_json(
            r#"{"name":"t","timestamp":{"field":"ts"},"granularity":{"query":"PT1M","segment":"PT1H"},
               "dimensions":["m","page"],
               "metrics":[{"name":"count","type":"count"},{"name":"n","type":"longSum","field":"n"},
                          {"name":"amt","type":"doubleSum","field":"amt"},
                          {"name":"lo","type":"min","field":"amt"},{"name":"hi","type":"max","field":"amt"},
                          {"name":"users","type":"hll","field":"u"},{"name":"lat","type":"tdigest","field":"amt"}],
               "clustering":["m"]}"#,
        )
        .expect("valid")
    }

    #[test]
    fn packed_sort_keys_order_rows_as_the_comparator_does() {
        let spec = spec();
        let mut idx = RollupIndex::new(&spec);
        let mut x: u64 = 7;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let page = if x % 11 == 0 {
                json!(null)
            } else {
                json!(format!("/p{}", x % 37))
            };
            let b = json!({"ts": (x % 90) as i64 * 60_000 + (x % 997) as i64, "m": format!("m{}", x % 13), "page": page});
            idx.add(&extract(&spec, &b).expect("valid"));
        }
        assert!(idx.rows() > 500);
        let ranks: Vec<Vec<u32>> = idx.dims.iter().map(Dictionary::sorted_ranks).collect();
        for clustering in [vec![], vec![0], vec![1], vec![1, 0]] {
            let rest: Vec<usize> = (0..2).filter(|d| !clustering.contains(d)).collect();
            let packed = idx
                .sorted_rows_packed(&clustering, &rest, &ranks)
                .expect("fits in 128 bits");
            assert_eq!(
                packed,
                idx.sorted_rows_compared(&clustering, &rest, &ranks),
                "clustering {clustering:?}"
            );
        }
    }

    #[test]
    fn rolls_up_by_bucket_and_dimensions() {
        let spec = spec();
        let mut idx = RollupIndex::new(&spec);
        let beacons = [
            json!({"ts": 60_000, "m": "b", "page": "/", "n": 1, "amt": 2.0, "u": "x"}),
            json!({"ts": 119_999, "m": "b", "page": "/", "n": 2, "amt": -1.0, "u": "y"}),
            json!({"ts": 120_000, "m": "b", "page": "/", "n": 3, "u": "x"}),
            json!({"ts": 61_000, "m": "a"}),
            json!({"ts": 62_000, "m": "a", "page": null}),
        ];
        for b in &beacons {
            idx.add(&extract(&spec, b).expect("valid"));
        }
        assert_eq!(idx.rows(), 3);
        assert_eq!(idx.events(), 5);
        let MetricColumn::Count(counts) = idx.metric(0) else {
            panic!("count column")
        };
        assert_eq!(counts, &vec![2, 1, 2]);
        let MetricColumn::LongSum(n) = idx.metric(1) else {
            panic!("longSum column")
        };
        assert_eq!(n, &vec![3, 3, 0]);
        let MetricColumn::DoubleSum(amt) = idx.metric(2) else {
            panic!("doubleSum column")
        };
        assert_eq!(amt, &vec![1.0, 0.0, 0.0]);
        let MetricColumn::Min(lo) = idx.metric(3) else {
            panic!("min column")
        };
        assert_eq!(lo[0], -1.0);
        assert!(lo[1].is_nan() && lo[2].is_nan(), "no input is null");
        let MetricColumn::Max(hi) = idx.metric(4) else {
            panic!("max column")
        };
        assert_eq!(hi[0], 2.0);
        let MetricColumn::Distinct { states, .. } = idx.metric(5) else {
            panic!("hll column")
        };
        assert_eq!(states[0].estimate(), 2.0);
        assert!(states[2].is_empty());
        // Sorted: m=a first (row 2), then m=b by time (rows 0, 1).
        assert_eq!(idx.sorted_rows(&[0]), vec![2, 0, 1]);

        assert_eq!(idx.dictionary(1).value(idx.dim_id(2, 1)), None);
    }

    #[test]
    fn same_events_build_the_same_index() {
        let spec = spec();
        let build = || {
            let mut idx = RollupIndex::new(&spec);
            for i in 0..5000u64 {
                let b = json!({"ts": i * 1000, "m": format!("m{}", i % 37), "u": format!("u{}", i % 101), "amt": i as f64});
                idx.add(&extract(&spec, &b).expect("valid"));
            }
            let mut merged = DistinctMerger::new(12);
            let MetricColumn::Distinct { states, .. } = idx.metric(5) else {
                panic!("hll column")
            };
            let mut bytes = Vec::new();
            for s in states {
                let mut one = Vec::new();
                s.encode(&mut one);
                merged.merge_encoded(&one).expect("merge");
                bytes.extend(one);
            }
            (idx.rows(), idx.sorted_rows(&[0]), bytes, merged.estimate())
        };
        let a = build();
        let b = build();
        assert_eq!(a.0, b.0);
        assert_eq!(a.1, b.1);
        assert_eq!(a.2, b.2, "encoded states are byte-identical");
        assert_eq!(a.3, 101.0, "exact distinct users over the whole index");
    }
}
