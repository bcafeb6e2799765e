//! Reprocessing from the raw log against the real binary: a reindex with unchanged rules
//! reproduces the aggregates exactly; after a rule change (a dimension added) a reindex fills
//! it from the raw beacons while a query loop runs, and the loop never fails and never sees
//! a mix of old and new; events that arrive during the job are neither lost nor counted twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::TestNode;
use crate::now_ms;

const HOUR_MS: i64 = 3_600_000;
const EVENTS: usize = 3000;

fn spec(dimensions: &[&str]) -> Value {
    json!({
        "name": "shop",
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": dimensions,
        "metrics": [{"name": "count", "type": "count"},
                    {"name": "revenue", "type": "doubleSum", "field": "amount"},
                    {"name": "lo", "type": "min", "field": "amount"},
                    {"name": "hi", "type": "max", "field": "amount"},
                    {"name": "users", "type": "hll", "field": "user_id"}],
        "tenant": "merchant_id",
        "late_window": "PT1M",
    })
}

fn beacon(i: usize, ts: i64) -> Value {
    json!({
        "ts": ts,
        "merchant_id": format!("m{}", i % 7),
        "page": format!("/p{}", i % 5),
        "country": format!("C{}", i % 3),
        "amount": (i % 100) as f64 + 0.25,
        "user_id": format!("u{}", i % 50),
    })
}

/// Per (merchant, hour): count, revenue, min, max, as the node answers them.
fn aggregates(node: &TestNode, from: i64, to: i64) -> Vec<Value> {
    node.sql(&format!(
        "SELECT merchant_id, CAST(date_trunc('hour', __time) AS VARCHAR) AS h, SUM(\"count\") AS n, SUM(revenue) AS r, \
         MIN(lo) AS lo, MAX(hi) AS hi FROM shop WHERE __time >= to_timestamp_millis({from}) \
         AND __time < to_timestamp_millis({to}) GROUP BY 1, 2 ORDER BY 1, 2"
    ))
}

fn reindex(node: &TestNode, from: i64, to: i64, wait: bool) -> Value {
    let interval = format!("{from}/{to}");
    let mut args = vec!["reindex", "--datasource", "shop", "--interval", &interval];
    if !wait {
        args.push("--no-wait");
    }
    let (code, out, err) = node.cli(&args);
    assert_eq!(code, 0, "{out}\n{err}\nnode log:\n{}", node.log_text());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn reindexing_rebuilds_from_raw_and_switches_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let r = node.post(
        "/v1/datasources",
        spec(&["merchant_id", "page"]).to_string().as_bytes(),
        &[],
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.body);

    // Three closed hours of beacons (they persist as segments within seconds).
    let h0 = (now_ms() / HOUR_MS - 4) * HOUR_MS;
    let h3 = h0 + 3 * HOUR_MS;
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| beacon(i, h0 + (i as i64 * 3 * HOUR_MS) / EVENTS as i64))
        .collect();
    for chunk in events.chunks(1000) {
        let body: Vec<String> = chunk.iter().map(Value::to_string).collect();
        let r = node.post("/v1/beacons/shop", body.join("\n").as_bytes(), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while node
        .sql_i64("SELECT COALESCE(SUM(events), 0) FROM sys.segments WHERE datasource = 'shop'")
        < EVENTS as i64
    {
        assert!(Instant::now() < deadline, "the hours were never persisted");
        std::thread::sleep(Duration::from_millis(200));
    }

    // 1. Same rules: the same aggregates, exactly, from one new shard per hour.
    let before = aggregates(&node, h0, h3);
    assert_eq!(
        before
            .iter()
            .map(|r| r["n"].as_i64().unwrap_or(0))
            .sum::<i64>(),
        EVENTS as i64
    );
    let job = reindex(&node, h0, h3, true);
    assert_eq!(job["state"], "published", "{job}");
    assert_eq!(job["events"], EVENTS, "{job}");
    let version = job["id"].as_u64().unwrap_or_default().to_string();
    assert_eq!(
        aggregates(&node, h0, h3),
        before,
        "a reindex under the same rules reproduces the aggregates"
    );
    let segments =
        node.sql("SELECT version, events FROM sys.segments WHERE datasource = 'shop' ORDER BY interval_start");
    assert_eq!(segments.len(), 3, "{segments:?}");
    assert!(
        segments.iter().all(|s| s["version"] == version.as_str()),
        "{segments:?}"
    );
    let distinct = node.sql(
        "SELECT merchant_id, CAST(APPROX_COUNT_DISTINCT_DS_HLL(users) AS BIGINT) AS u FROM shop GROUP BY 1 ORDER BY 1",
    );
    for row in &distinct {
        let m: usize = row["merchant_id"]
            .as_str()
            .and_then(|m| m[1..].parse().ok())
            .unwrap_or(99);
        let exact = (0..EVENTS)
            .filter(|i| i % 7 == m)
            .map(|i| i % 50)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let got = row["u"].as_i64().unwrap_or(0) as f64;
        assert!(
            (got - exact as f64).abs() <= exact as f64 * 0.05,
            "{row} vs {exact}"
        );
    }

    // 2. A rule change: `country` becomes a dimension. Old segments read it as null until a
    // reindex fills it from the raw beacons, while queries run and late events arrive.
    let r = node.put(
        "/v1/datasources/shop",
        spec(&["merchant_id", "page", "country"])
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let query = format!(
        "SELECT SUM(\"count\") AS n, SUM(CASE WHEN country IS NULL THEN \"count\" ELSE 0 END) AS nulls FROM shop \
         WHERE __time >= to_timestamp_millis({h0}) AND __time < to_timestamp_millis({h3})"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, last) = std::thread::scope(|scope| {
        let looped = scope.spawn(|| {
            let mut seen: BTreeMap<(i64, i64), usize> = BTreeMap::new();
            loop {
                // The loop ends with a query that started after the publish (however slow
                // queries are on a loaded machine), so its answer must be the new version.
                let after_publish = stop.load(Ordering::SeqCst);
                let r = node.post("/v1/sql", query.as_bytes(), &[]);
                assert_eq!(r.status, 200, "the query loop failed: {}", r.body);
                let row = &r.json()[0];
                let answer = (
                    row["n"].as_i64().unwrap_or(-1),
                    row["nulls"].as_i64().unwrap_or(-1),
                );
                *seen.entry(answer).or_default() += 1;
                if after_publish {
                    break (seen, answer);
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let job = reindex(&node, h0, h3, false);
        // Late events for the reindexed hours, sent while the job runs: new shards that the
        // new version carries unchanged.
        let late: Vec<String> = (0..10)
            .map(|i| beacon(i, h0 + HOUR_MS + 1000 * i as i64).to_string())
            .collect();
        let r = node.post("/v1/beacons/shop", late.join("\n").as_bytes(), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
        let id = job["id"].as_u64().unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let j = node.get(&format!("/v1/jobs/{id}")).json();
            if j["state"] == "published" {
                break;
            }
            assert_ne!(j["state"], "cancelled", "{j}");
            assert!(Instant::now() < deadline, "the job never published: {j}");
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);
        looped.join().expect("query loop")
    });
    let total = EVENTS as i64;
    for (n, nulls) in seen.keys() {
        assert!(
            *n == total || *n == total + 10,
            "a count that is neither before nor after the late events: {seen:?}"
        );
        assert!(
            *nulls == total || *nulls == 0,
            "a mix of old and new rows: {seen:?}"
        );
    }
    assert!(
        seen.keys().any(|(_, nulls)| *nulls == total),
        "the loop saw the old version: {seen:?}"
    );
    assert_eq!(
        last,
        (total + 10, 0),
        "the loop ended on the new version: {seen:?}"
    );
    assert_eq!(node.sql_i64(&query), total + 10, "late events counted once");

    // The new dimension, filled from raw, matches the beacons exactly.
    let by_country = node.sql(&format!(
        "SELECT country, SUM(\"count\") AS n FROM shop WHERE __time >= to_timestamp_millis({h0}) \
         AND __time < to_timestamp_millis({h3}) GROUP BY 1 ORDER BY 1"
    ));
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in (0..EVENTS).chain(0..10) {
        *expected.entry(format!("C{}", i % 3)).or_default() += 1;
    }
    let expected: Vec<Value> = expected
        .into_iter()
        .map(|(c, n)| json!({"country": c, "n": n}))
        .collect();
    assert_eq!(by_country, expected);
    let jobs =
        node.sql("SELECT state, segments_published, segments_replaced FROM sys.jobs ORDER BY id");
    assert_eq!(
        jobs,
        vec![
            json!({"state": "published", "segments_published": 3, "segments_replaced": 3}),
            json!({"state": "published", "segments_published": 3, "segments_replaced": 3}),
        ]
    );

    // The state survives a restart (the replaced files are gone once a checkpoint no longer
    // names them).
    let mut node = node;
    node.stop();
    let node = TestNode::start(dir.path());
    assert_eq!(node.sql_i64(&query), total + 10);
    assert_eq!(
        node.sql_i64("SELECT COUNT(*) FROM sys.jobs WHERE state = 'published'"),
        2
    );
}

fn compact_spec(late_window: &str) -> Value {
    json!({
        "name": "merged",
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": ["merchant_id", "page"],
        "metrics": [{"name": "count", "type": "count"},
                    {"name": "revenue", "type": "doubleSum", "field": "amount"},
                    {"name": "lo", "type": "min", "field": "amount"},
                    {"name": "hi", "type": "max", "field": "amount"},
                    {"name": "users", "type": "hll", "field": "user_id"},
                    {"name": "lat", "type": "tdigest", "field": "amount"}],
        "tenant": "merchant_id",
        "late_window": late_window,
    })
}

/// Per merchant: count, revenue, min, max (exact) and distinct users, median (sketches).
fn merchant_view(node: &TestNode) -> Vec<(String, i64, f64, f64, f64, f64, f64)> {
    node.sql(
        "SELECT merchant_id, SUM(\"count\") AS n, SUM(revenue) AS r, MIN(lo) AS lo, MAX(hi) AS hi, \
         APPROX_COUNT_DISTINCT_DS_HLL(users) AS u, APPROX_QUANTILE_DS(lat, 0.5) AS p50 FROM merged GROUP BY 1 ORDER BY 1",
    )
    .iter()
    .map(|r| {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        (r["merchant_id"].as_str().unwrap_or_default().to_string(), r["n"].as_i64().unwrap_or(0), f("r"), f("lo"), f("hi"), f("u"), f("p50"))
    })
    .collect()
}

#[test]
fn compaction_merges_shards_from_segments_and_rolls_up_with_sketches_merged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let r = node.post(
        "/v1/datasources",
        compact_spec("PT1M").to_string().as_bytes(),
        &[],
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    // Three shards of the current hour: a spec change persists the open index each time.
    // Events over the hour's first 30 minutes (some may be ahead of the clock, as allowed).
    let hour = now_ms() / HOUR_MS * HOUR_MS;
    for (round, window) in ["PT2M", "PT3M", "PT4M"].iter().enumerate() {
        let lines: Vec<String> = (0..400)
            .map(|i| {
                let k = round * 400 + i;
                beacon(k, hour + (k as i64 * 7919) % (30 * 60_000)).to_string()
            })
            .collect();
        assert_eq!(
            node.post("/v1/beacons/merged", lines.join("\n").as_bytes(), &[])
                .status,
            200
        );
        let r = node.put(
            "/v1/datasources/merged",
            compact_spec(window).to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let shards = "SELECT COUNT(*) FROM sys.segments WHERE datasource = 'merged'";
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.sql_i64(shards) < 3 {
        assert!(Instant::now() < deadline, "three shards were never written");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = merchant_view(&node);
    assert_eq!(before.iter().map(|m| m.1).sum::<i64>(), 1200);

    // Merge the three shards into one: exact metrics unchanged, sketches merged.
    let interval = format!("{hour}/{}", hour + HOUR_MS);
    let (code, out, err) =
        node.cli(&["compact", "--datasource", "merged", "--interval", &interval]);
    assert_eq!(code, 0, "{out}{err}");
    let job: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (
            job["kind"].as_str(),
            job["segments_replaced"].as_u64(),
            job["segments_published"].as_u64()
        ),
        (Some("compact"), Some(3), Some(1)),
        "{job}"
    );
    assert_eq!(node.sql_i64(shards), 1);
    let after = merchant_view(&node);
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(
            (&a.0, a.1, a.3, a.4),
            (&b.0, b.1, b.3, b.4),
            "exact metrics"
        );
        assert!((a.2 - b.2).abs() <= 1e-9 * b.2.abs(), "revenue {a:?} {b:?}");
        assert!(
            (a.5 - b.5).abs() <= 0.02 * b.5,
            "distinct users {a:?} {b:?}"
        );
        assert!(
            (a.6 - b.6).abs() <= 0.05 * b.6.abs().max(1.0),
            "median {a:?} {b:?}"
        );
    }
    let (code, _, err) = node.cli(&["compact", "--datasource", "merged", "--interval", &interval]);
    assert_ne!(code, 0);
    assert!(err.contains("nothing to compact"), "{err}");

    // Roll the hour up to 15 minutes: fewer rows, every count still there.
    let rows_before = node.sql_i64("SELECT COUNT(*) FROM merged");
    let (code, out, err) = node.cli(&[
        "compact",
        "--datasource",
        "merged",
        "--interval",
        &interval,
        "--granularity",
        "PT15M",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let rolled = merchant_view(&node);
    for (a, b) in rolled.iter().zip(&before) {
        assert_eq!(
            (&a.0, a.1, a.3, a.4),
            (&b.0, b.1, b.3, b.4),
            "exact metrics after the rollup"
        );
    }
    let rows_after = node.sql_i64("SELECT COUNT(*) FROM merged");
    assert!(
        rows_after < rows_before,
        "{rows_after} rows, {rows_before} before: {out} {:?}",
        node.sql("SELECT * FROM sys.segments")
    );
    assert_eq!(
        node.sql_i64("SELECT COUNT(*) FROM merged WHERE EXTRACT(MINUTE FROM __time) % 15 <> 0 OR EXTRACT(SECOND FROM __time) <> 0"),
        0,
        "every row starts a 15-minute bucket"
    );
    // Automatic compaction: two shards of a settled hour (three hours ago) become one, by the
    // leader's own decision, with every event kept.
    let old_hour = hour - 3 * HOUR_MS;
    for (round, window) in ["PT5M", "PT6M"].iter().enumerate() {
        let lines: Vec<String> = (0..50)
            .map(|i| beacon(round * 50 + i, old_hour + i as i64 * 60_000).to_string())
            .collect();
        assert_eq!(
            node.post("/v1/beacons/merged", lines.join("\n").as_bytes(), &[])
                .status,
            200
        );
        let r = node.put(
            "/v1/datasources/merged",
            compact_spec(window).to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let old_shards = format!(
        "SELECT COUNT(*) FROM sys.segments WHERE datasource = 'merged' AND interval_start = to_timestamp_millis({old_hour})"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.sql_i64(
        "SELECT COUNT(*) FROM sys.jobs WHERE actor = 'system:compaction' AND state = 'published'",
    ) < 1
    {
        assert!(
            Instant::now() < deadline,
            "no automatic compaction: {:?}",
            node.sql("SELECT * FROM sys.jobs")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(node.sql_i64(&old_shards), 1);
    assert_eq!(
        node.sql_i64(&format!(
            "SELECT SUM(\"count\") FROM merged WHERE __time < to_timestamp_millis({hour})"
        )),
        100
    );

    // An age rule in the spec: intervals that ended more than two hours ago are rolled up to
    // 15 minutes by the leader's own compaction, every event kept.
    let mut ruled = compact_spec("PT6M");
    ruled["rollup_rules"] = json!([{"after": "PT2H", "granularity": "PT15M"}]);
    let r = node.put("/v1/datasources/merged", ruled.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let in_old_hour = format!(
        "__time >= to_timestamp_millis({old_hour}) AND __time < to_timestamp_millis({})",
        old_hour + HOUR_MS
    );
    let fine_rows = format!(
        "SELECT COUNT(*) FROM merged WHERE {in_old_hour} AND (EXTRACT(MINUTE FROM __time) % 15 <> 0 OR EXTRACT(SECOND FROM __time) <> 0)"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.sql_i64(&fine_rows) > 0 {
        assert!(
            Instant::now() < deadline,
            "the age rule never rolled up: {:?}",
            node.sql("SELECT * FROM sys.jobs")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        node.sql_i64(&format!(
            "SELECT SUM(\"count\") FROM merged WHERE {in_old_hour}"
        )),
        100
    );
    assert_eq!(node.sql_i64(&old_shards), 1);
    assert!(
        node.sql_i64("SELECT COUNT(*) FROM sys.jobs WHERE actor = 'system:compaction' AND state = 'published'") >= 2
    );
    let mut bad = compact_spec("PT6M");
    bad["rollup_rules"] = json!([{"after": "P30D", "granularity": "PT7M"}]);
    let r = node.put("/v1/datasources/merged", bad.to_string().as_bytes());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains(
            "rollup_rules[0].granularity: PT7M must be a multiple of the query granularity PT1M that divides the \
             segment granularity PT1H"
        ),
        "{}",
        r.body
    );

    let (code, _, err) = node.cli(&[
        "compact",
        "--datasource",
        "merged",
        "--interval",
        &interval,
        "--granularity",
        "PT7M",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("must be a multiple of"), "{err}");
}

#[test]
fn raw_events_export_as_parquet_partitioned_by_date() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let r = node.post(
        "/v1/datasources",
        spec(&["merchant_id", "page"]).to_string().as_bytes(),
        &[],
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    // 300 events over the last two hours of yesterday and the first hour of today (UTC).
    let day_ms = 24 * HOUR_MS;
    let midnight = now_ms() / day_ms * day_ms;
    let events: Vec<Value> = (0..300)
        .map(|i| beacon(i, midnight - 2 * HOUR_MS + i as i64 * 36_000))
        .collect();
    let body: Vec<String> = events.iter().map(Value::to_string).collect();
    // One refused line: not part of the export.
    let r = node.post(
        "/v1/beacons/shop",
        format!("{}\n{{\"merchant_id\": \"x\"}}", body.join("\n")).as_bytes(),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);

    let out = dir.path().join("export");
    let interval = format!("{}/{}", midnight - 2 * HOUR_MS, midnight + HOUR_MS);
    let (code, stdout, err) = node.cli(&[
        "export",
        "--datasource",
        "shop",
        "--interval",
        &interval,
        "--format",
        "parquet",
        "--to",
        &out.to_string_lossy(),
    ]);
    assert_eq!(code, 0, "{err}");
    // The command follows the export job to its end and prints it.
    let job: Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(job["kind"], "export", "{job}");
    assert_eq!(job["state"], "published", "{job}");
    assert_eq!(job["events"], 300, "rows written: {job}");
    assert_eq!(job["rejected"], 1, "records left out: {job}");
    assert_eq!(job["files_written"], 2, "one file per date: {job}");
    assert!(
        job["bytes_done"].as_u64().is_some_and(|b| b > 0)
            && job["bytes_done"] == job["bytes_total"],
        "{job}"
    );
    let listed = node.sql(&format!(
        "SELECT kind, state, destination FROM sys.jobs WHERE id = {}",
        job["id"]
    ));
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "published", "{listed:?}");
    assert!(
        listed[0]["destination"]
            .as_str()
            .is_some_and(|d| d.contains(&*out.to_string_lossy())),
        "{listed:?}"
    );
    // Nothing temporary is left next to the files.
    let leftovers: Vec<_> = crate::crash::walk(&out)
        .into_iter()
        .filter(|p| p.extension().is_none_or(|e| e != "parquet"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Read back with pyarrow and compare with what was sent, per date.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/parquet_export.py");
    let py = std::process::Command::new(crate::harness::python())
        .arg(script)
        .arg(&out)
        .output()
        .expect("python");
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let got: Value = serde_json::from_slice(&py.stdout).expect("json");
    let mut expected: BTreeMap<String, (i64, f64, std::collections::BTreeSet<String>)> =
        BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        let ts = midnight - 2 * HOUR_MS + i as i64 * 36_000;
        let date = if ts < midnight { "yesterday" } else { "today" };
        let entry = expected.entry(date.into()).or_default();
        entry.0 += 1;
        entry.1 += e["amount"].as_f64().unwrap_or(0.0);
        entry
            .2
            .insert(e["merchant_id"].as_str().unwrap_or_default().to_string());
    }
    let days = got["days"].as_object().cloned().unwrap_or_default();
    assert_eq!(days.len(), 2, "{got}");
    let mut by_order = days.values();
    for label in ["yesterday", "today"] {
        let (rows, amount, merchants) = &expected[label];
        let day = by_order.next().cloned().unwrap_or_default();
        assert_eq!(day["rows"].as_i64(), Some(*rows), "{label}: {got}");
        assert!(
            (day["amount"].as_f64().unwrap_or(0.0) - amount).abs() < 1e-6,
            "{label}: {got}"
        );
        let names: Vec<String> = merchants.iter().cloned().collect();
        assert_eq!(day["merchants"], json!(names), "{label}: {got}");
    }
    for column in [
        "__time",
        "merchant_id",
        "page",
        "_partition",
        "_offset",
        "_log_position",
        "_payload",
    ] {
        assert!(
            got["columns"]
                .as_array()
                .is_some_and(|c| c.iter().any(|n| n == column)),
            "{column}: {got}"
        );
    }
}
