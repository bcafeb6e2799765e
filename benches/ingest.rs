//! Ingest hot paths: folding pre-parsed events into the rollup index, and JSON parse +
//! validate + rollup end to end in-process. Throughput is events/s on one core.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tidemark_catalog::event::extract;
use tidemark_storage::rollup::RollupIndex;

mod common;

const EVENTS: usize = 200_000;

fn rollup(c: &mut Criterion) {
    let spec = common::spec();
    // A realistic day-like mix: 100,000 merchants, one hour of events.
    let lines = common::lines(7, 100_000, common::DAY_START_MS, common::HOUR_MS, EVENTS);
    let values: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_slice(l).expect("json"))
        .collect();
    let events: Vec<_> = values
        .iter()
        .map(|v| extract(&spec, v).expect("valid"))
        .collect();

    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(20);
    g.bench_function("rollup_index_add_preparsed", |b| {
        b.iter_batched(
            || RollupIndex::new(&spec),
            |mut idx| {
                for e in &events {
                    idx.add(e);
                }
                idx
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("json_parse_validate_rollup", |b| {
        b.iter_batched(
            || RollupIndex::new(&spec),
            |mut idx| {
                for l in &lines {
                    let v: serde_json::Value = serde_json::from_slice(l).expect("json");
                    if let Ok(e) = extract(&spec, &v) {
                        idx.add(&e);
                    }
                }
                idx
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut idx = RollupIndex::new(&spec);
    for e in &events {
        idx.add(e);
    }
    eprintln!(
        "rollup: {EVENTS} events -> {} rows ({:.2} : 1), index memory {:.1} bytes/event",
        idx.rows(),
        EVENTS as f64 / idx.rows() as f64,
        idx.memory_bytes() as f64 / EVENTS as f64
    );
}

criterion_group!(benches, rollup);
criterion_main!(benches);
