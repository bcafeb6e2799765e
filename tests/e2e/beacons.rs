//! HTTP beacons in, SQL out: per-line answers, errors, idempotency, rejects, restart.

use std::collections::BTreeMap;

use serde_json::json;

use crate::harness::TestNode;
use crate::{ndjson, now_ms, traffic};

#[test]
fn beacons_are_answered_per_line_and_queryable_when_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let start = now_ms() - 30 * 60_000;
    let events = traffic(11, 50, start, 20 * 60_000, 2_000);

    // A JSON array with two bad beacons among good ones.
    let mut array: Vec<serde_json::Value> = events[..1000].iter().map(|b| b.to_json()).collect();
    array.insert(3, json!({"merchant_id": "m1"}));
    array.insert(10, json!(["not", "an", "object"]));
    let r = node.post(
        "/v1/beacons/beacons",
        serde_json::to_vec(&array).expect("json").as_slice(),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json();
    assert_eq!(a["accepted"], 1000);
    let rejected = a["rejected"].as_array().cloned().unwrap_or_default();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 3);
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("\"ts\""),
        "{rejected:?}"
    );
    assert_eq!(rejected[1]["index"], 10);
    assert!(
        rejected[1]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("not a JSON object")
    );

    // NDJSON with a line that is not JSON and one with a wrong metric type.
    let mut body = ndjson(&events[1000..]);
    body.extend_from_slice(b"{not json\n");
    body.extend_from_slice(
        format!(
            "{{\"ts\": {}, \"merchant_id\": \"m1\", \"latency_ms\": \"slow\"}}\n",
            now_ms()
        )
        .as_bytes(),
    );
    let r = node.post(
        "/v1/beacons/beacons",
        &body,
        &[("Content-Type", "application/x-ndjson")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json();
    assert_eq!(a["accepted"], 1000);
    let reasons: Vec<String> = a["rejected"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r["reason"].to_string())
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(reasons[0].contains("not valid JSON"), "{reasons:?}");
    assert!(
        reasons[1].contains("latency_ms") && reasons[1].contains("must be a number"),
        "{reasons:?}"
    );

    // Queryable as soon as acked: counts and sums equal what was sent, computed here.
    assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM beacons"), 2000);
    let mut per_merchant: BTreeMap<String, i64> = BTreeMap::new();
    for b in &events {
        *per_merchant.entry(b.merchant_id.clone()).or_default() += 1;
    }
    let rows =
        node.sql("SELECT merchant_id, SUM(\"count\") AS c FROM beacons GROUP BY merchant_id ORDER BY merchant_id");
    let got: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r["merchant_id"].as_str().unwrap_or_default().to_string(),
                r["c"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(got, per_merchant);
    let revenue: f64 = events.iter().filter_map(|b| b.amount).sum();
    let rows = node.sql("SELECT SUM(amount_sum) AS s FROM beacons");
    let s = rows[0]["s"].as_f64().unwrap_or(f64::NAN);
    assert!(
        (s - revenue).abs() <= 1e-9 * revenue.abs(),
        "{s} vs {revenue}"
    );

    // Every rejected line is in sys.rejects with its reason.
    assert_eq!(
        node.sql_i64("SELECT COUNT(*) FROM sys.rejects WHERE datasource = 'beacons'"),
        4
    );
    let rows = node.sql("SELECT reason FROM sys.rejects ORDER BY log_position, record_index");
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("\"ts\"")
    );

    // Metrics follow Prometheus conventions and count what happened.
    let m = node.get("/metrics").body;
    assert!(m.contains("tidemark_events_ingested_total 2000"), "{m}");
    assert!(m.contains("tidemark_events_rejected_total 4"), "{m}");
    assert!(m.contains("tidemark_query_duration_seconds_bucket"), "{m}");
}

#[test]
fn errors_name_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let one = ndjson(&traffic(1, 5, now_ms(), 1000, 1));

    let r = node.post("/v1/beacons/nope", &one, &[]);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("\"nope\" does not exist"),
        "{}",
        r.body
    );

    let r = node.post("/v1/beacons/beacons", b"[{\"ts\": 1},", &[]);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("not a JSON array"), "{}", r.body);
    let r = node.post("/v1/beacons/beacons", b"   ", &[]);
    assert_eq!(r.status, 400, "{}", r.body);

    let big = vec![b' '; 17 * 1024 * 1024];
    let r = node.try_post("/v1/beacons/beacons", &big, &[]);
    if let Ok(r) = r {
        assert_eq!(r.status, 413, "{}", r.body);
    }

    // A beacon from the far future is refused with a binding verdict.
    let future = format!(
        "{{\"ts\": {}, \"merchant_id\": \"m1\"}}",
        now_ms() + 3 * 86_400_000
    );
    let r = node.post("/v1/beacons/beacons", future.as_bytes(), &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.json()["rejected"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("ahead of the server clock")
    );

    // SQL is read-only, and says how data gets in.
    let r = node.post(
        "/v1/sql",
        b"INSERT INTO beacons (merchant_id) VALUES ('m')",
        &[],
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("/v1/beacons"), "{}", r.body);
    let r = node.post("/v1/sql", b"SELECT * FROM nowhere", &[]);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("nowhere"), "{}", r.body);
}

#[test]
fn idempotency_key_counts_a_retry_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let events = traffic(5, 10, now_ms() - 60_000, 30_000, 300);
    let body = ndjson(&events);
    let first = node.post(
        "/v1/beacons/beacons",
        &body,
        &[("Idempotency-Key", "batch-1")],
    );
    assert_eq!(first.status, 200, "{}", first.body);
    let again = node.post(
        "/v1/beacons/beacons",
        &body,
        &[("Idempotency-Key", "batch-1")],
    );
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["accepted"], first.json()["accepted"]);
    assert_eq!(
        again.json()["log_position"],
        first.json()["log_position"],
        "the original answer"
    );
    assert_eq!(again.json()["replayed"], true);
    assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM beacons"), 300);

    let other = ndjson(&events[..10]);
    let r = node.post(
        "/v1/beacons/beacons",
        &other,
        &[("Idempotency-Key", "batch-1")],
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM beacons"), 300);
}

#[test]
fn closed_intervals_persist_and_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::start(dir.path());
    // Three hours ago: the interval is long closed, so the writer persists it at its next tick.
    let old = traffic(9, 20, now_ms() - 3 * 3_600_000, 30 * 60_000, 1_500);
    let recent = traffic(10, 20, now_ms() - 60_000, 30_000, 500);
    assert_eq!(
        node.post("/v1/beacons/beacons", &ndjson(&old), &[]).status,
        200
    );
    assert_eq!(
        node.post("/v1/beacons/beacons", &ndjson(&recent), &[])
            .status,
        200
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Segments are written off the engine lock and published when done.
    while node.sql_i64("SELECT COALESCE(SUM(events), 0) FROM sys.segments") < 1500 {
        assert!(
            std::time::Instant::now() < deadline,
            "the old interval was not persisted:\n{}",
            node.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(node.sql_i64("SELECT SUM(events) FROM sys.segments"), 1500);
    assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM beacons"), 2000);
    // EXPLAIN shows segments pruned by time.
    let plan = node.post(
        "/v1/sql",
        format!(
            "EXPLAIN SELECT COUNT(*) FROM beacons WHERE __time >= to_timestamp_millis({})",
            now_ms() - 3_600_000
        )
        .as_bytes(),
        &[],
    );
    let segments = node.sql_i64("SELECT COUNT(*) FROM sys.segments");
    assert!(
        plan.body.contains(&format!(
            "segments=0/{segments} (pruned by time: {segments},"
        )),
        "{}",
        plan.body
    );

    assert_eq!(node.stop(), Some(0), "clean shutdown:\n{}", node.log_text());
    let node = TestNode::start(dir.path());
    assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM beacons"), 2000);
    assert_eq!(node.sql_i64("SELECT SUM(events) FROM sys.segments"), 1500);
    let hll = node.sql_i64("SELECT APPROX_COUNT_DISTINCT_DS_HLL(users_hll) FROM beacons");
    let mut users: Vec<&str> = old
        .iter()
        .chain(&recent)
        .map(|b| b.user_id.as_str())
        .collect();
    users.sort_unstable();
    users.dedup();
    let exact = users.len() as i64;
    assert!(
        (hll - exact).abs() as f64 <= 0.05 * exact as f64,
        "{hll} vs {exact}"
    );
}

#[test]
fn overload_answers_503_with_retry_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tidemark.toml");
    std::fs::write(
        &config,
        "[storage]\nrealtime_bytes_persist = 500\nrealtime_bytes_max = 1000\n",
    )
    .expect("config");
    let node = TestNode::start_with(
        &dir.path().join("data"),
        &[
            "--config",
            &config.to_string_lossy(),
            "--tick-interval-ms",
            "600000",
        ],
    );
    let body = ndjson(&traffic(3, 10, now_ms() - 60_000, 30_000, 100));
    assert_eq!(node.post("/v1/beacons/beacons", &body, &[]).status, 200);
    let r = node.post("/v1/beacons/beacons", &body, &[]);
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.header("retry-after").is_some(), "Retry-After missing");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("memory bound"),
        "{}",
        r.body
    );
    let health = node.get("/health");
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["writes"], false);
    assert_eq!(health.json()["reads"], true);
}

#[test]
fn bench_tool_reports_what_the_node_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let (code, out, err) = node.cli(&[
        "bench",
        "http",
        "--clients",
        "2",
        "--batch",
        "50",
        "--seconds",
        "1",
        "--merchants",
        "100",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("(0 failed requests)") && out.contains("ack latency per request: p50"),
        "{out}"
    );
    let requests: i64 = out
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1);
    assert!(requests > 0, "{out}");
    assert_eq!(
        node.sql_i64("SELECT SUM(\"count\") FROM beacons"),
        requests * 50
    );
}
