//! Segment hot paths: writing (MB/s), scanning a metric column (GB/s), and merging small
//! sketch states (ns each). Also prints segment bytes per input event.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Float64Type;
use tidemark_catalog::event::extract;
use tidemark_storage::rollup::RollupIndex;
use tidemark_storage::rollup::state::{DistinctMerger, QuantileMerger};
use tidemark_storage::segment::{Segment, SegmentId, write_segment};

mod common;

const EVENTS: usize = 1_000_000;

fn segments(c: &mut Criterion) {
    let spec = common::spec();
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = common::lines(3, 100_000, common::DAY_START_MS, common::HOUR_MS, EVENTS);
    let mut idx = RollupIndex::new(&spec);
    for l in &lines {
        let v: serde_json::Value = serde_json::from_slice(l).expect("json");
        idx.add(&extract(&spec, &v).expect("valid"));
    }
    let id = SegmentId {
        datasource: "beacons".into(),
        interval_start_ms: 0,
        interval_end_ms: 1,
        version: "1".into(),
        shard: 0,
    };
    let path = dir.path().join("bench.seg");
    let written = write_segment(&path, id.clone(), &spec, &idx).expect("write");
    let input_bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    eprintln!(
        "segment: {EVENTS} events, {} rows, {} bytes = {:.1} bytes/event (input NDJSON {:.1} bytes/event)",
        written.meta.rows,
        written.file_bytes,
        written.file_bytes as f64 / EVENTS as f64,
        input_bytes as f64 / EVENTS as f64
    );
    for col in &written.meta.columns {
        eprintln!(
            "  column {:<12} {:>10} bytes {:>6.2} bytes/row",
            col.name,
            col.bytes(),
            col.bytes() as f64 / written.meta.rows as f64
        );
    }

    let mut g = c.benchmark_group("segments");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(written.file_bytes));
    g.bench_function("write", |b| {
        b.iter(|| write_segment(&dir.path().join("w.seg"), id.clone(), &spec, &idx).expect("write"))
    });

    let seg = Segment::open(&path).expect("open");
    let latency = seg.column("latency_sum").expect("column");
    let rows = latency.len();
    g.throughput(Throughput::Bytes((rows * 8) as u64));
    g.bench_function("scan_double_metric_sum", |b| {
        b.iter(|| {
            let a = latency.as_primitive::<Float64Type>();
            black_box(a.values().iter().sum::<f64>())
        })
    });
    g.throughput(Throughput::Bytes(written.file_bytes));
    g.bench_function("open_and_verify_checksums", |b| {
        b.iter(|| Segment::open(&path).expect("open"))
    });

    let users = seg.column("users_hll").expect("users");
    let users = users.as_binary::<i32>();
    let latency_td = seg.column("latency_td").expect("latency_td");
    let latency_td = latency_td.as_binary::<i32>();
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("merge_small_distinct_states", |b| {
        b.iter(|| {
            let mut m = DistinctMerger::new(12);
            for s in users.iter().flatten() {
                m.merge_encoded(s).expect("merge");
            }
            black_box(m.estimate())
        })
    });
    g.bench_function("merge_small_quantile_states", |b| {
        b.iter(|| {
            let mut m = QuantileMerger::new(100);
            for s in latency_td.iter().flatten() {
                m.merge_encoded(s).expect("merge");
            }
            black_box(m.quantile(0.99))
        })
    });
    g.finish();
}

criterion_group!(benches, segments);
criterion_main!(benches);
