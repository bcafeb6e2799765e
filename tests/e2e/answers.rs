//! Answers stream, are capped, and die with their client, against
//! the real binary: a huge answer is cut at its row or byte cap with a record saying so (the
//! node's memory staying flat), a client that goes away frees its query's place and memory,
//! and the node's query memory budget refuses a second heavy query with 429 naming it.
//!
//! Before answers streamed, `SELECT value FROM generate_series(1, 3000000000)` was collected
//! whole (23.7 GiB in 60 s on a release build) and ran on after its client left.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::ipc::reader::StreamReader;

use crate::harness::{TestNode, metric_value};

const HUGE: &str = "SELECT value FROM generate_series(1, 3000000000)";
const ROW_CAP: &str = "the answer reached its cap of 100000 rows (limits.result_rows_max) and was cut there; \
                       aggregate, filter or add a LIMIT";
const BYTE_CAP: &str = "the answer reached its cap of 4000000 bytes (limits.result_bytes_max) and was cut there; \
                        aggregate, filter, select fewer columns or add a LIMIT";

fn node_with(dir: &std::path::Path, config: &str) -> TestNode {
    let path = dir.join("node.toml");
    std::fs::write(&path, config).expect("config");
    let path = path.to_string_lossy().to_string();
    TestNode::start_with(&dir.join("data"), &["--config", &path])
}

fn text(node: &TestNode, sql: &str, accept: &str) -> crate::harness::Reply {
    node.post(
        "/v1/sql",
        sql.as_bytes(),
        &[("Content-Type", "text/plain"), ("Accept", accept)],
    )
}

#[test]
fn a_huge_answer_streams_to_its_cap_and_says_it_was_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node_with(
        dir.path(),
        "[limits]\nresult_rows_max = 100000\nresult_bytes_max = 4000000\n",
    );
    let rss_before = node.rss_kib();

    // JSON: the first 100000 values, then the record that says the answer was cut.
    let r = text(&node, HUGE, "application/json");
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(300)]);
    let rows = r.json().as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 100_001);
    for (i, row) in rows[..100_000].iter().enumerate() {
        assert_eq!(row["value"], i as i64 + 1, "row {i}");
    }
    assert_eq!(
        rows[100_000],
        serde_json::json!({ "error": ROW_CAP, "truncated": true })
    );

    // An answer exactly at the cap is whole: no record.
    let rows = node.sql("SELECT value FROM generate_series(1, 100000)");
    assert_eq!(
        (rows.len(), rows.last().map(|r| r["value"].clone())),
        (100_000, Some(serde_json::json!(100_000)))
    );

    // CSV: the byte cap (about 37000 rows of 107 bytes) cuts first; the last line says so.
    let r = text(
        &node,
        "SELECT value, repeat('x', 100) AS pad FROM generate_series(1, 3000000000)",
        "text/csv",
    );
    assert_eq!(r.status, 200);
    let lines: Vec<&str> = r.body.lines().collect();
    assert_eq!(lines.first().copied(), Some("value,pad"));
    assert_eq!(
        lines.last().copied(),
        Some(format!("#error (truncated): {BYTE_CAP}").as_str())
    );
    let data = &lines[1..lines.len() - 1];
    assert!(data.len() > 30_000, "{} rows before the cap", data.len());
    let pad = "x".repeat(100);
    for (i, line) in data.iter().enumerate() {
        assert_eq!(*line, format!("{},{pad}", i + 1), "row {i}");
    }
    let sent = r.body.len() - lines.last().map_or(0, |l| l.len() + 1);
    assert!(sent <= 4_000_000, "{sent} bytes sent before the record");

    // Arrow IPC: a whole answer reads back; a cut one ends in an error, not a clean end.
    let arrow = [
        ("Content-Type", "text/plain"),
        ("Accept", "application/vnd.apache.arrow.stream"),
    ];
    let (status, body) = node.try_post_raw(
        "/v1/sql",
        b"SELECT value FROM generate_series(1, 5000)",
        &arrow,
    );
    assert_eq!(status, 200);
    let batches: Vec<RecordBatch> =
        StreamReader::try_new(std::io::Cursor::new(body.expect("whole body")), None)
            .expect("an Arrow IPC stream")
            .collect::<Result<_, _>>()
            .expect("batches");
    let values: Vec<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(values, (1..=5000).collect::<Vec<i64>>());
    let (status, body) = node.try_post_raw("/v1/sql", HUGE.as_bytes(), &arrow);
    assert_eq!(status, 200);
    match body {
        Err(_) => {}
        Ok(bytes) => {
            let read: Result<Vec<RecordBatch>, _> =
                StreamReader::try_new(std::io::Cursor::new(bytes), None)
                    .map(|r| r.collect())
                    .and_then(|r| r);
            assert!(
                read.is_err(),
                "a cut Arrow answer must not read as complete"
            );
        }
    }

    // Flight SQL: the stream ends with RESOURCE_EXHAUSTED naming the cap.
    let mut flight = crate::isolation::Flight::connect(&node.flight, None);
    let (_, answer) = flight.query(HUGE);
    let e = answer.err().unwrap_or_default();
    assert!(e.contains("(limits.result_rows_max)"), "Flight SQL: {e}");

    // Nothing was collected whole: the node is as big as it was, give or take.
    let grown_mib = node.rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 300, "the node grew by {grown_mib} MiB");
    assert_eq!(node.get("/health").status, 200);
}

/// Sends a query over a raw connection and leaves its answer unread.
fn start_query(node: &TestNode, sql: &str) -> TcpStream {
    let mut conn = TcpStream::connect(&node.http).expect("connect");
    let request = format!(
        "POST /v1/sql HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{sql}",
        node.http,
        sql.len()
    );
    conn.write_all(request.as_bytes()).expect("send the query");
    conn
}

fn gauges(node: &TestNode) -> (f64, f64) {
    let text = node.get("/metrics").body;
    (
        metric_value(&text, "tidemark_queries_running").unwrap_or(-1.0),
        metric_value(&text, "tidemark_query_memory_bytes").unwrap_or(-1.0),
    )
}

/// The memory the running queries hold once it settles (within a batch's worth).
fn settled_memory(node: &TestNode) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = -1.0;
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let (_, now) = gauges(node);
        if now > 0.0 && (now - last).abs() < now / 20.0 {
            return now.max(last);
        }
        assert!(
            Instant::now() < deadline,
            "the query's memory never settled (last {now})"
        );
        last = now;
    }
}

fn wait_until_idle(node: &TestNode, within: Duration) {
    let deadline = Instant::now() + within;
    while gauges(node) != (0.0, 0.0) {
        assert!(
            Instant::now() < deadline,
            "the query still runs after its client left: {:?}",
            gauges(node)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A join that holds its build side (300000 rows) for as long as it probes (200 billion rows:
/// longer than any test), so its memory can be read while it runs. A join's build side
/// cannot spill to disk, so a query short of memory fails rather than spilling.
const HOLDS_MEMORY: &str = "SELECT COUNT(*) AS n FROM generate_series(1, 300000) a \
                            JOIN generate_series(1, 200000000000) b ON a.value = b.value";

#[test]
fn a_client_that_goes_away_stops_its_query_and_the_node_budget_refuses_a_second() {
    // How much the grouping holds, measured on a node with room to spare; its client then
    // leaves, and the query must stop (before, it ran on to its time limit).
    let dir = tempfile::tempdir().expect("tempdir");
    let held = {
        let node = node_with(dir.path(), "[limits]\nquery_timeout_ms = 600000\n");
        let conn = start_query(&node, HOLDS_MEMORY);
        let held = settled_memory(&node);
        assert_eq!(gauges(&node).0, 1.0);
        drop(conn);
        wait_until_idle(&node, Duration::from_secs(10));
        held
    };

    // A node whose budget holds one such query but not two; each query's own limit is above
    // what one needs.
    let dir = tempfile::tempdir().expect("tempdir");
    let budget = (held * 1.5) as u64;
    let node = node_with(
        dir.path(),
        &format!(
            "[limits]\nquery_timeout_ms = 600000\nquery_memory_bytes_max = {budget}\nnode_query_memory_bytes_max = {budget}\n"
        ),
    );
    // The same over Flight SQL: a client that drops its DoGet stream stops the query.
    let mut flight = crate::isolation::Flight::connect(&node.flight, None);
    flight.abandon(HOLDS_MEMORY, || {
        settled_memory(&node);
        assert_eq!(gauges(&node).0, 1.0);
    });
    wait_until_idle(&node, Duration::from_secs(10));

    let first = start_query(&node, HOLDS_MEMORY);
    settled_memory(&node);
    let r = node.post(
        "/v1/sql",
        HOLDS_MEMORY.as_bytes(),
        &[("Content-Type", "text/plain")],
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    let e = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(
        e.starts_with("the node's running queries hold ")
            && e.ends_with(&format!(
                " of their {budget} bytes (limits.node_query_memory_bytes_max); retry when fewer queries run"
            )),
        "{e}"
    );
    // Small queries still run beside the big one.
    assert_eq!(
        node.sql_i64("SELECT COUNT(*) FROM generate_series(1, 1000)"),
        1000
    );

    drop(first);
    wait_until_idle(&node, Duration::from_secs(10));
    let r = node.post(
        "/v1/sql",
        b"SELECT COUNT(*) AS n FROM generate_series(1, 300000) a JOIN generate_series(1, 1000000) b ON a.value = b.value",
        &[("Content-Type", "text/plain")],
    );
    assert_eq!(r.json()[0]["n"], 300_000, "{}", r.body);
    assert_eq!(node.get("/health").status, 200);
}

/// A sort short of memory spills under the node's data directory, within the node's spill
/// cap (`limits.query_spill_bytes_max`); past the cap the query is refused naming it.
#[test]
fn a_sort_short_of_memory_spills_within_the_nodes_spill_cap() {
    let sorted = "SELECT MAX(rn) AS n FROM (SELECT ROW_NUMBER() OVER (ORDER BY value DESC) AS rn \
                  FROM generate_series(1, 6000000))";
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node_with(dir.path(), "[limits]\nquery_memory_bytes_max = 32000000\n");
    let r = node.post(
        "/v1/sql",
        sorted.as_bytes(),
        &[("Content-Type", "text/plain")],
    );
    assert_eq!(
        (r.status, r.json()[0]["n"].clone()),
        (200, serde_json::json!(6_000_000)),
        "{}",
        r.body
    );
    assert!(
        dir.path().join("data/spill").is_dir(),
        "spills go under the data directory"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let node = node_with(
        dir.path(),
        "[limits]\nquery_memory_bytes_max = 32000000\nquery_spill_bytes_max = 100000\n",
    );
    let r = node.post(
        "/v1/sql",
        sorted.as_bytes(),
        &[("Content-Type", "text/plain")],
    );
    assert_eq!(r.status, 429, "{}", r.body);
    let e = r.json()["error"].as_str().unwrap_or_default().to_string();
    assert!(e.contains("(limits.query_spill_bytes_max)"), "{e}");
    assert_eq!(node.get("/health").status, 200);
}
