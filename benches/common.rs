//! Shared set-up for the benchmarks: generated traffic rolled into indexes and segments.

#![allow(dead_code)]

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use tidemark_catalog::DatasourceSpec;
use tidemark_catalog::event::extract;
use tidemark_catalog::spec::DEMO_BEACONS_SPEC;
use tidemark_loadgen::{Traffic, TrafficConfig};
use tidemark_storage::rollup::RollupIndex;
use tidemark_storage::segment::{Segment, SegmentId, write_segment};
use tidemark_storage::snapshot::{SnapshotSource, TableSnapshot};

pub(crate) const DAY_START_MS: i64 = 1_795_651_200_000;
pub(crate) const HOUR_MS: i64 = 3_600_000;

pub(crate) fn spec() -> DatasourceSpec {
    DatasourceSpec::from_json(DEMO_BEACONS_SPEC).expect("demo spec")
}

/// `n` beacons as NDJSON lines, from `merchants` merchants over `span_ms`.
pub(crate) fn lines(
    seed: u64,
    merchants: usize,
    start_ms: i64,
    span_ms: i64,
    n: usize,
) -> Vec<Vec<u8>> {
    Traffic::new(&TrafficConfig {
        seed,
        merchants,
        skew: 1.1,
    })
    .batch(start_ms, span_ms, n)
    .iter()
    .map(|b| serde_json::to_vec(&b.to_json()).expect("json"))
    .collect()
}

/// Rolls `lines` into one index per hour and writes each as a segment in `dir`.
pub(crate) fn build_segments(dir: &std::path::Path, lines: &[Vec<u8>]) -> Vec<Arc<Segment>> {
    let spec = spec();
    let mut hours: std::collections::BTreeMap<i64, RollupIndex> = std::collections::BTreeMap::new();
    for l in lines {
        let v: serde_json::Value = serde_json::from_slice(l).expect("json");
        let e = extract(&spec, &v).expect("valid");
        let h = spec.granularity.segment.bucket_start(e.time_ms);
        hours
            .entry(h)
            .or_insert_with(|| RollupIndex::new(&spec))
            .add(&e);
    }
    hours
        .into_iter()
        .map(|(h, idx)| {
            let id = SegmentId {
                datasource: "beacons".into(),
                interval_start_ms: h,
                interval_end_ms: h + HOUR_MS,
                version: "1".into(),
                shard: 0,
            };
            let path = dir.join(format!("{h}.seg"));
            write_segment(&path, id, &spec, &idx).expect("write");
            Arc::new(Segment::open(&path).expect("open"))
        })
        .collect()
}

#[derive(Debug)]
pub(crate) struct Segments(pub(crate) Vec<Arc<Segment>>);

impl SnapshotSource for Segments {
    fn table_names(&self) -> Vec<String> {
        vec!["beacons".into()]
    }
    fn snapshot(&self, table: &str) -> Option<TableSnapshot> {
        (table == "beacons").then(|| TableSnapshot {
            spec: spec(),
            log_position: 1,
            segments: self.0.clone(),
            realtime: vec![],
            unreadable: vec![],
        })
    }
    fn system_table_names(&self) -> Vec<String> {
        vec![]
    }
    fn system_table(&self, _name: &str) -> Option<RecordBatch> {
        None
    }
}
