//! Aggregator states for distinct counts and quantiles: exact while small, sketches beyond.
//!
//! This is the sketch column layout decision (ARCHITECTURE.md): most rollup rows hold one or
//! two events, so a heap-allocated sketch per row is the wrong default. A state keeps up to
//! two values inside the row (no allocation), up to [`EXACT_MAX`] in a small vector, and only
//! then becomes an Apache DataSketches sketch (HLL or t-digest). Small groups therefore give
//! exact answers and merge in a few nanoseconds.
//!
//! Distinct values are identified by [`distinct_hash`] (XXH3-64 of the value's UTF-8 text);
//! the HLL sketch is fed those hashes, so exact and sketch states merge consistently.
//!
//! Encoded state (one value of a sketch column, see `segment/README.md`):
//! ```text
//! 0x01 | n u8 | n x 8-byte LE value (u64 hash ascending / f64 ascending)   exact
//! 0x02 | DataSketches serialization (HLL or t-digest)                       sketch
//! ```
//! Invariant: encoding is a pure function of the values added, in the order added, so
//! replicas that applied the same log write the same bytes.

use datasketches::hll::{HllSketch, HllType, HllUnion};
use datasketches::tdigest::TDigestMut;

use crate::error::{Error, Result};

/// Values held exactly before a state becomes a sketch.
pub const EXACT_MAX: usize = 16;
const TAG_EXACT: u8 = 1;
const TAG_SKETCH: u8 = 2;
/// A merger's exact list, longer than a row state's: `0x03 | n u32 | n x 8 bytes`. Only
/// partial aggregates carry it; segments never do.
const TAG_LONG_EXACT: u8 = 3;

/// The identity of a value for distinct counting.
#[inline]
pub fn distinct_hash(text: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}

/// Distinct-count state of one row.
#[derive(Debug, Clone, Default)]
pub enum DistinctState {
    #[default]
    Empty,
    One(u64),
    Two(u64, u64),
    /// 3..=EXACT_MAX distinct hashes, ascending.
    Exact(Vec<u64>),
    Sketch(Box<HllSketch>),
}

impl DistinctState {
    #[inline]
    pub fn add(&mut self, hash: u64, lg_k: u8) {
        *self = match std::mem::take(self) {
            DistinctState::Empty => DistinctState::One(hash),
            DistinctState::One(a) if a == hash => DistinctState::One(a),
            DistinctState::One(a) => DistinctState::Two(a.min(hash), a.max(hash)),
            DistinctState::Two(a, b) if a == hash || b == hash => DistinctState::Two(a, b),
            DistinctState::Two(a, b) => {
                let mut v = vec![a, b, hash];
                v.sort_unstable();
                DistinctState::Exact(v)
            }
            DistinctState::Exact(mut v) => match v.binary_search(&hash) {
                Ok(_) => DistinctState::Exact(v),
                Err(at) if v.len() < EXACT_MAX => {
                    v.insert(at, hash);
                    DistinctState::Exact(v)
                }
                Err(_) => {
                    let mut s = new_hll(lg_k);
                    for h in v {
                        s.update(h);
                    }
                    s.update(hash);
                    DistinctState::Sketch(Box::new(s))
                }
            },
            DistinctState::Sketch(mut s) => {
                s.update(hash);
                DistinctState::Sketch(s)
            }
        };
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, DistinctState::Empty)
    }

    pub fn estimate(&self) -> f64 {
        match self {
            DistinctState::Empty => 0.0,
            DistinctState::One(_) => 1.0,
            DistinctState::Two(..) => 2.0,
            DistinctState::Exact(v) => v.len() as f64,
            DistinctState::Sketch(s) => s.estimate(),
        }
    }

    /// Bytes this state holds on the heap, for the index's memory bound.
    pub fn heap_bytes(&self) -> usize {
        match self {
            DistinctState::Exact(v) => v.capacity() * 8,
            DistinctState::Sketch(s) => s.estimated_size(),
            _ => 0,
        }
    }

    /// Appends the encoded state; nothing for an empty state (it is null in the column).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let exact = |out: &mut Vec<u8>, vals: &[u64]| {
            out.push(TAG_EXACT);
            out.push(vals.len() as u8);
            for v in vals {
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
        match self {
            DistinctState::Empty => {}
            DistinctState::One(a) => exact(out, &[*a]),
            DistinctState::Two(a, b) => exact(out, &[*a, *b]),
            DistinctState::Exact(v) => exact(out, v),
            DistinctState::Sketch(s) => {
                out.push(TAG_SKETCH);
                out.extend_from_slice(&s.serialize());
            }
        }
    }
}

impl DistinctState {
    /// Folds in a state encoded by [`Self::encode`] (a segment's column value): exact hashes
    /// one by one, a sketch by HLL union. Compaction merges sketches this way, never
    /// recomputing them; the result depends only on the states and their order.
    pub fn merge_encoded(&mut self, bytes: &[u8], lg_k: u8) -> Result<()> {
        match bytes.first() {
            None => Ok(()),
            Some(&TAG_EXACT) => {
                for v in exact(bytes, "exact distinct state")? {
                    self.add(u64::from_le_bytes(v), lg_k);
                }
                Ok(())
            }
            Some(&TAG_SKETCH) => {
                let other = HllSketch::deserialize(&bytes[1..])
                    .map_err(|e| Error::Sketch(e.to_string()))?;
                let mut union = HllUnion::new(lg_k).map_err(|e| Error::Sketch(e.to_string()))?;
                match std::mem::take(self) {
                    DistinctState::Empty => {}
                    DistinctState::One(a) => union.update_value(a),
                    DistinctState::Two(a, b) => {
                        union.update_value(a);
                        union.update_value(b);
                    }
                    DistinctState::Exact(v) => v.into_iter().for_each(|h| union.update_value(h)),
                    DistinctState::Sketch(s) => union.update(&s),
                }
                union.update(&other);
                *self = DistinctState::Sketch(Box::new(union.to_sketch(HllType::Hll8)));
                Ok(())
            }
            Some(t) => Err(corrupt(&format!("distinct state tag {t}"))),
        }
    }
}

impl QuantileState {
    /// Folds in a state encoded by [`Self::encode`]: exact values one by one, a t-digest by
    /// t-digest merge (never recomputed from values it no longer has).
    pub fn merge_encoded(&mut self, bytes: &[u8], compression: u16) -> Result<()> {
        match bytes.first() {
            None => Ok(()),
            Some(&TAG_EXACT) => {
                for v in exact(bytes, "exact quantile state")? {
                    self.add(f64::from_le_bytes(v), compression);
                }
                Ok(())
            }
            Some(&TAG_SKETCH) => {
                let other = TDigestMut::deserialize(&bytes[1..])
                    .map_err(|e| Error::Sketch(e.to_string()))?;
                let mut t = match std::mem::take(self) {
                    QuantileState::Sketch(t) => *t,
                    small => {
                        let mut t = new_tdigest(compression);
                        match small {
                            QuantileState::One(a) => t.update(a),
                            QuantileState::Two(a, b) => {
                                t.update(a);
                                t.update(b);
                            }
                            QuantileState::Exact(v) => v.into_iter().for_each(|x| t.update(x)),
                            QuantileState::Empty | QuantileState::Sketch(_) => {}
                        }
                        t
                    }
                };
                t.merge(&other);
                *self = QuantileState::Sketch(Box::new(t));
                Ok(())
            }
            Some(t) => Err(corrupt(&format!("quantile state tag {t}"))),
        }
    }
}

pub fn new_hll(lg_k: u8) -> HllSketch {
    // lg_k is validated by the spec (4..=21), which is the range DataSketches accepts.
    HllSketch::new(lg_k, HllType::Hll8)
        .unwrap_or_else(|e| panic!("lg_k {lg_k} passed spec validation but HLL refused it: {e}"))
}

/// Merges encoded distinct states: exact while the union stays small, an HLL union beyond.
/// The query side's aggregate uses this; it must cost nanoseconds per small state.
#[derive(Debug)]
pub struct DistinctMerger {
    lg_k: u8,
    exact: Vec<u64>,
    exact_limit: usize,
    union: Option<HllUnion>,
}

impl DistinctMerger {
    pub fn new(lg_k: u8) -> Self {
        DistinctMerger {
            lg_k,
            exact: Vec::new(),
            exact_limit: 4096,
            union: None,
        }
    }

    /// Merges one encoded state (as written by [`DistinctState::encode`]).
    #[inline]
    pub fn merge_encoded(&mut self, bytes: &[u8]) -> Result<()> {
        match bytes.first() {
            None => Ok(()),
            Some(&TAG_EXACT) => {
                for v in exact(bytes, "exact distinct state")? {
                    self.add_hash(u64::from_le_bytes(v));
                }
                Ok(())
            }
            Some(&TAG_LONG_EXACT) => {
                for v in long_exact(bytes)? {
                    self.add_hash(u64::from_le_bytes(v));
                }
                Ok(())
            }
            Some(&TAG_SKETCH) => {
                let s = HllSketch::deserialize(&bytes[1..])
                    .map_err(|e| Error::Sketch(e.to_string()))?;
                self.union_mut().update(&s);
                Ok(())
            }
            Some(t) => Err(corrupt(&format!("distinct state tag {t}"))),
        }
    }

    #[inline]
    pub fn add_hash(&mut self, h: u64) {
        match &mut self.union {
            Some(u) => u.update_value(h),
            None => {
                self.exact.push(h);
                if self.exact.len() > self.exact_limit {
                    self.exact.sort_unstable();
                    self.exact.dedup();
                    if self.exact.len() > self.exact_limit / 2 {
                        let mut u = HllUnion::new(self.lg_k)
                            .unwrap_or_else(|e| panic!("lg_k {}: {e}", self.lg_k));
                        for h in self.exact.drain(..) {
                            u.update_value(h);
                        }
                        self.union = Some(u);
                    }
                }
            }
        }
    }

    /// The merged state as bytes that [`Self::merge_encoded`] accepts (a partial aggregate).
    pub fn to_state_bytes(&mut self) -> Vec<u8> {
        match &mut self.union {
            None => {
                self.exact.sort_unstable();
                self.exact.dedup();
                let mut out = Vec::with_capacity(5 + self.exact.len() * 8);
                out.push(TAG_LONG_EXACT);
                out.extend_from_slice(&(self.exact.len() as u32).to_le_bytes());
                for h in &self.exact {
                    out.extend_from_slice(&h.to_le_bytes());
                }
                out
            }
            Some(u) => {
                for h in self.exact.drain(..) {
                    u.update_value(h);
                }
                let mut out = vec![TAG_SKETCH];
                out.extend_from_slice(&u.to_sketch(HllType::Hll8).serialize());
                out
            }
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.exact.capacity() * 8 + self.union.as_ref().map_or(0, HllUnion::estimated_size)
    }

    fn union_mut(&mut self) -> &mut HllUnion {
        if self.union.is_none() {
            let mut u =
                HllUnion::new(self.lg_k).unwrap_or_else(|e| panic!("lg_k {}: {e}", self.lg_k));
            for h in self.exact.drain(..) {
                u.update_value(h);
            }
            self.union = Some(u);
        }
        self.union
            .as_mut()
            .unwrap_or_else(|| unreachable!("set above"))
    }

    pub fn estimate(&mut self) -> f64 {
        match &self.union {
            Some(u) => {
                let mut est = u.estimate();
                if !self.exact.is_empty() {
                    // Exact values gathered before a sketch arrived are folded in now.
                    let mut u2 = HllUnion::new(self.lg_k)
                        .unwrap_or_else(|e| panic!("lg_k {}: {e}", self.lg_k));
                    u2.update(&u.to_sketch(HllType::Hll8));
                    for h in &self.exact {
                        u2.update_value(*h);
                    }
                    est = u2.estimate();
                }
                est
            }
            None => {
                self.exact.sort_unstable();
                self.exact.dedup();
                self.exact.len() as f64
            }
        }
    }
}

/// The 8-byte values of a `TAG_EXACT` state (a one-byte count after the tag).
fn exact<'b>(bytes: &'b [u8], what: &str) -> Result<impl Iterator<Item = [u8; 8]> + 'b> {
    let n = *bytes.get(1).ok_or_else(|| corrupt(what))? as usize;
    let vals = bytes.get(2..2 + n * 8).ok_or_else(|| corrupt(what))?;
    Ok(vals.chunks_exact(8).map(|c| {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        a
    }))
}

fn long_exact(bytes: &[u8]) -> Result<impl Iterator<Item = [u8; 8]> + '_> {
    let n = bytes.get(1..5).ok_or_else(|| corrupt("long exact state"))?;
    let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
    let vals = bytes
        .get(5..5 + n * 8)
        .ok_or_else(|| corrupt("long exact state"))?;
    Ok(vals.chunks_exact(8).map(|c| {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        a
    }))
}

fn corrupt(what: &str) -> Error {
    Error::Sketch(format!("malformed {what}"))
}

/// Quantile state of one row: raw values while few, a t-digest beyond.
#[derive(Debug, Clone, Default)]
pub enum QuantileState {
    #[default]
    Empty,
    One(f64),
    Two(f64, f64),
    /// 3..=EXACT_MAX values in arrival order.
    Exact(Vec<f64>),
    Sketch(Box<TDigestMut>),
}

impl QuantileState {
    #[inline]
    pub fn add(&mut self, v: f64, compression: u16) {
        *self = match std::mem::take(self) {
            QuantileState::Empty => QuantileState::One(v),
            QuantileState::One(a) => QuantileState::Two(a, v),
            QuantileState::Two(a, b) => QuantileState::Exact(vec![a, b, v]),
            QuantileState::Exact(mut vals) if vals.len() < EXACT_MAX => {
                vals.push(v);
                QuantileState::Exact(vals)
            }
            QuantileState::Exact(vals) => {
                let mut t = new_tdigest(compression);
                for x in vals {
                    t.update(x);
                }
                t.update(v);
                QuantileState::Sketch(Box::new(t))
            }
            QuantileState::Sketch(mut t) => {
                t.update(v);
                QuantileState::Sketch(t)
            }
        };
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, QuantileState::Empty)
    }

    pub fn heap_bytes(&self) -> usize {
        match self {
            QuantileState::Exact(v) => v.capacity() * 8,
            QuantileState::Sketch(t) => t.estimated_size(),
            _ => 0,
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let exact = |out: &mut Vec<u8>, vals: &[f64]| {
            let mut sorted = vals.to_vec();
            sorted.sort_unstable_by(f64::total_cmp);
            out.push(TAG_EXACT);
            out.push(sorted.len() as u8);
            for v in sorted {
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
        match self {
            QuantileState::Empty => {}
            QuantileState::One(a) => exact(out, &[*a]),
            QuantileState::Two(a, b) => exact(out, &[*a, *b]),
            QuantileState::Exact(v) => exact(out, v),
            QuantileState::Sketch(t) => {
                out.push(TAG_SKETCH);
                // serialize() compresses in place; a clone keeps the live state untouched so
                // encoding (for a query snapshot or a persist) never changes later answers.
                out.extend_from_slice(&t.as_ref().clone().serialize());
            }
        }
    }
}

pub fn new_tdigest(compression: u16) -> TDigestMut {
    TDigestMut::new(compression).unwrap_or_else(|e| {
        panic!("compression {compression} passed spec validation but t-digest refused it: {e}")
    })
}

/// Merges encoded quantile states: exact values while few, a t-digest beyond.
#[derive(Debug)]
pub struct QuantileMerger {
    compression: u16,
    exact: Vec<f64>,
    exact_limit: usize,
    digests: Vec<TDigestMut>,
}

impl QuantileMerger {
    pub fn new(compression: u16) -> Self {
        QuantileMerger {
            compression,
            exact: Vec::new(),
            exact_limit: 8192,
            digests: Vec::new(),
        }
    }

    #[inline]
    pub fn merge_encoded(&mut self, bytes: &[u8]) -> Result<()> {
        match bytes.first() {
            None => Ok(()),
            Some(&TAG_EXACT) => {
                for v in exact(bytes, "exact quantile state")? {
                    self.add(f64::from_le_bytes(v));
                }
                Ok(())
            }
            Some(&TAG_LONG_EXACT) => {
                for v in long_exact(bytes)? {
                    self.add(f64::from_le_bytes(v));
                }
                Ok(())
            }
            Some(&TAG_SKETCH) => {
                let t = TDigestMut::deserialize(&bytes[1..])
                    .map_err(|e| Error::Sketch(e.to_string()))?;
                self.digests.push(t);
                if self.digests.len() >= 64 {
                    self.collapse();
                }
                Ok(())
            }
            Some(t) => Err(corrupt(&format!("quantile state tag {t}"))),
        }
    }

    #[inline]
    pub fn add(&mut self, v: f64) {
        self.exact.push(v);
        if self.exact.len() >= self.exact_limit {
            let mut t = new_tdigest(self.compression);
            for x in self.exact.drain(..) {
                t.update(x);
            }
            self.digests.push(t);
        }
    }

    /// The merged state as bytes that [`Self::merge_encoded`] accepts (a partial aggregate).
    pub fn to_state_bytes(&mut self) -> Vec<u8> {
        if self.digests.is_empty() {
            let mut out = Vec::with_capacity(5 + self.exact.len() * 8);
            out.push(TAG_LONG_EXACT);
            out.extend_from_slice(&(self.exact.len() as u32).to_le_bytes());
            for v in &self.exact {
                out.extend_from_slice(&v.to_le_bytes());
            }
            return out;
        }
        self.collapse();
        let mut t = self
            .digests
            .pop()
            .unwrap_or_else(|| new_tdigest(self.compression));
        for x in self.exact.drain(..) {
            t.update(x);
        }
        let mut out = vec![TAG_SKETCH];
        out.extend_from_slice(&t.serialize());
        self.digests.push(t);
        out
    }

    pub fn heap_bytes(&self) -> usize {
        self.exact.capacity() * 8
            + self
                .digests
                .iter()
                .map(TDigestMut::estimated_size)
                .sum::<usize>()
    }

    fn collapse(&mut self) {
        // One compression pass for many digests (TDigestMut::merge recompresses every call).
        let merged: TDigestMut = std::mem::take(&mut self.digests).into_iter().collect();
        self.digests.push(merged);
    }

    /// The value at rank `q` in [0, 1]; exact (linear interpolation between closest ranks)
    /// while every merged state was exact and few, the t-digest estimate otherwise.
    pub fn quantile(&mut self, q: f64) -> Option<f64> {
        if self.digests.is_empty() {
            return exact_quantile(&mut self.exact, q);
        }
        let mut t = if self.digests.len() == 1 {
            self.digests[0].clone()
        } else {
            self.digests.iter().cloned().collect::<TDigestMut>()
        };
        for x in &self.exact {
            t.update(*x);
        }
        t.quantile(q).ok().flatten()
    }
}

/// PERCENTILE_CONT over `values`: sorts them, then interpolates between the closest ranks.
pub fn exact_quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let pos = q * (values.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Some(values[lo] + (values[hi] - values[lo]) * frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded_distinct(values: impl IntoIterator<Item = u64>) -> Vec<u8> {
        let mut s = DistinctState::default();
        for v in values {
            s.add(distinct_hash(&v.to_string()), 12);
        }
        let mut out = Vec::new();
        s.encode(&mut out);
        out
    }

    #[test]
    fn small_distinct_states_stay_exact_and_inline() {
        let mut s = DistinctState::default();
        for v in [5u64, 5, 9] {
            s.add(v, 12);
        }
        assert!(matches!(s, DistinctState::Two(5, 9)));
        assert_eq!(s.heap_bytes(), 0);
        for v in 0..(EXACT_MAX as u64 - 2) {
            s.add(100 + v, 12);
        }
        assert!(matches!(s, DistinctState::Exact(ref v) if v.len() == EXACT_MAX));
        assert_eq!(s.estimate(), EXACT_MAX as f64);
        s.add(7, 12);
        assert!(matches!(s, DistinctState::Sketch(_)));
        assert!((s.estimate() - (EXACT_MAX + 1) as f64).abs() < 0.5);
    }

    #[test]
    fn merging_exact_states_is_exact() {
        let mut m = DistinctMerger::new(12);
        // Overlapping groups: {0..10}, {5..15}, {14..20} -> 20 distinct.
        for range in [0..10u64, 5..15, 14..20] {
            m.merge_encoded(&encoded_distinct(range)).expect("merge");
        }
        assert_eq!(m.estimate(), 20.0);
    }

    #[test]
    fn merging_sketches_stays_within_hll_error() {
        let mut m = DistinctMerger::new(12);
        // 2,000 groups of 50 users each, half overlapping the next group: 50,025 distinct.
        for g in 0..2000u64 {
            m.merge_encoded(&encoded_distinct(g * 25..g * 25 + 50))
                .expect("merge");
        }
        let exact = 1999.0 * 25.0 + 50.0;
        let est = m.estimate();
        // lg_k 12: RSE about 1.6%; 3 standard errors is under 5%.
        assert!(
            (est - exact).abs() / exact < 0.05,
            "estimate {est} vs exact {exact}"
        );
    }

    #[test]
    fn quantiles_are_exact_for_small_groups() {
        let mut s = QuantileState::default();
        for v in [4.0, 1.0, 3.0, 2.0] {
            s.add(v, 100);
        }
        let mut out = Vec::new();
        s.encode(&mut out);
        let mut m = QuantileMerger::new(100);
        m.merge_encoded(&out).expect("merge");
        // PERCENTILE_CONT(0.5) of 1,2,3,4 = 2.5; (0.9) = 3.7
        assert_eq!(m.quantile(0.5), Some(2.5));
        assert!((m.quantile(0.9).unwrap_or(0.0) - 3.7).abs() < 1e-12);
    }

    #[test]
    fn tdigest_p99_within_bounds_on_long_tail() {
        let mut m = QuantileMerger::new(100);
        let mut all = Vec::new();
        // Groups of 40 values from a long-tailed (Pareto-like) series, deterministic.
        let mut x: u64 = 12345;
        for _ in 0..1000 {
            let mut s = QuantileState::default();
            for _ in 0..40 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((x >> 11) as f64 / (1u64 << 53) as f64).max(1e-12);
                let v = 10.0 / u.powf(0.7);
                all.push(v);
                s.add(v, 100);
            }
            let mut out = Vec::new();
            s.encode(&mut out);
            m.merge_encoded(&out).expect("merge");
        }
        let est = m.quantile(0.99).expect("some");
        let exact = exact_quantile(&mut all, 0.99).expect("some");
        assert!(
            (est - exact).abs() / exact < 0.02,
            "p99 {est} vs exact {exact}"
        );
    }

    #[test]
    fn partial_states_round_trip_through_bytes() {
        let mut a = DistinctMerger::new(12);
        for g in 0..30u64 {
            a.merge_encoded(&encoded_distinct(g * 10..g * 10 + 10))
                .expect("merge");
        }
        let mut b = DistinctMerger::new(12);
        b.merge_encoded(&a.to_state_bytes()).expect("merge partial");
        b.merge_encoded(&encoded_distinct(295..305)).expect("merge");
        assert_eq!(b.estimate(), 305.0);

        let mut q = QuantileMerger::new(100);
        for v in [3.0, 1.0, 2.0] {
            q.add(v);
        }
        let mut r = QuantileMerger::new(100);
        r.merge_encoded(&q.to_state_bytes()).expect("merge partial");
        r.add(4.0);
        assert_eq!(r.quantile(0.5), Some(2.5));
    }

    #[test]
    fn encoding_does_not_change_state() {
        let mut s = QuantileState::default();
        for i in 0..100 {
            s.add(f64::from(i), 100);
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        s.encode(&mut a);
        s.encode(&mut b);
        assert_eq!(a, b);
    }
}
