//! The time-series query suite over a generated day: 20 million events from 100,000
//! merchants in 24 hourly segments. Targets: a global distinct count in under a second.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tidemark_storage::snapshot::SnapshotSource;

mod common;

fn events() -> usize {
    std::env::var("TIDEMARK_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000_000)
}

const QUERIES: [(&str, &str); 5] = [
    (
        "global_distinct_users",
        "SELECT APPROX_COUNT_DISTINCT_DS_HLL(users_hll) FROM beacons",
    ),
    (
        "events_per_hour",
        "SELECT TIME_FLOOR(__time, 'PT1H') AS h, SUM(\"count\") FROM beacons GROUP BY 1",
    ),
    (
        "one_merchant_day",
        "SELECT TIME_FLOOR(__time, 'PT1H') AS h, SUM(\"count\"), SUM(amount_sum), APPROX_COUNT_DISTINCT_DS_HLL(users_hll), \
         APPROX_QUANTILE_DS(latency_td, 0.99) FROM beacons WHERE merchant_id = 'm00042' GROUP BY 1",
    ),
    (
        "revenue_by_country",
        "SELECT country, SUM(amount_sum) FROM beacons GROUP BY 1",
    ),
    (
        "p99_latency_by_page_top",
        "SELECT page, APPROX_QUANTILE_DS(latency_td, 0.99) FROM beacons WHERE event = 'purchase' GROUP BY 1",
    ),
];

fn query(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = events();
    let started = std::time::Instant::now();
    // Generate hour by hour to bound memory.
    let mut segments = Vec::new();
    for h in 0..24 {
        let lines = common::lines(
            1000 + h as u64,
            100_000,
            common::DAY_START_MS + h * common::HOUR_MS,
            common::HOUR_MS,
            n / 24,
        );
        segments.extend(common::build_segments(dir.path(), &lines));
    }
    let bytes: u64 = segments
        .iter()
        .map(|s| std::fs::metadata(s.path()).map(|m| m.len()).unwrap_or(0))
        .sum();
    let rows: u64 = segments.iter().map(|s| s.meta().rows).sum();
    eprintln!(
        "query fixture: {n} events, {rows} rows ({:.2} : 1), {bytes} bytes ({:.1} bytes/event), built in {:.1?}",
        n as f64 / rows as f64,
        bytes as f64 / n as f64,
        started.elapsed()
    );
    let source: Arc<dyn SnapshotSource> = Arc::new(common::Segments(segments));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("query_day");
    g.sample_size(10);
    for (name, sql) in QUERIES {
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let ctx = tidemark_query::new_session(source.clone());
                    let df = tidemark_query::sql(&ctx, sql).await.expect("plan");
                    df.collect().await.expect("run")
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, query);
criterion_main!(benches);
