//! The README's first command: `dev/demo` runs `tidemark serve --demo`. Started the same way
//! (on free ports), the node backfills an hour of merchant traffic, prints a guide whose
//! example queries must answer, over HTTP and Flight SQL, exactly what the backfill sent.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{TestNode, python};
use crate::traffic;

/// What `serve --demo` sends first (src/main.rs): seed 42, 1,000 merchants, 200,000 events
/// spread over the hour before the backfill starts.
const SEED: u64 = 42;
const MERCHANTS: usize = 1000;
const BACKFILL: usize = 200_000;
const HOUR_MS: i64 = 3_600_000;
const BUCKET_MS: i64 = 300_000;

/// The SQL of the guide's `… sql "…"` lines, unescaped as a shell would.
fn guide_queries(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(" sql \"")?;
            Some(rest.strip_suffix('"')?.replace("\\\"", "\""))
        })
        .collect()
}

/// "2026-12-07T19:05:00" (or with a fraction or `Z`) as epoch milliseconds.
fn epoch_ms(text: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| {
        text.get(r)
            .and_then(|s| s.parse::<i64>().ok())
            .expect("a timestamp")
    };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    ((days * 24 + n(11..13)) * 60 + n(14..16)) * 60_000 + n(17..19) * 1000
}

#[test]
fn the_demo_node_answers_its_printed_queries_over_http_and_flight_sql() {
    let dir = tempfile::tempdir().expect("tempdir");
    // dev/demo's command, with free ports and the default tick.
    let node = TestNode::start_with(dir.path(), &["--demo", "--tick-interval-ms", "1000"]);
    let deadline = Instant::now() + Duration::from_secs(600);
    let start_ms = loop {
        let log = node.log_text();
        if let Some(line) = log.lines().find(|l| l.starts_with("demo: backfilled")) {
            assert!(
                line.contains("(200000 accepted;"),
                "every backfilled beacon is accepted: {line}"
            );
            let from = line
                .split("from ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|s| s.parse().ok());
            break from.unwrap_or_else(|| panic!("the backfill line names its start: {line}"));
        }
        assert!(
            !log.contains("demo stopped"),
            "the demo traffic stopped:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "no backfill within 10 minutes:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let log = node.log_text();
    let queries = guide_queries(&log);
    assert_eq!(
        queries.len(),
        2,
        "the guide prints two example queries:\n{log}"
    );
    for what in ["Kafka bootstrap: ", "Data directory: ", "Start fresh: "] {
        assert!(log.contains(what), "the guide says {what:?}:\n{log}");
    }

    // Exact answers from the same generator. Live traffic is stamped after the backfill's
    // hour, so every 5-minute bucket that ends by then holds backfill events only.
    let sent: Vec<_> = traffic(SEED, MERCHANTS, start_ms, HOUR_MS, BACKFILL);
    let cut = start_ms + HOUR_MS;
    let mut expected: BTreeMap<i64, (i64, f64)> = BTreeMap::new();
    for b in sent.iter().filter(|b| b.merchant_id == "m00001") {
        let t = b.ts_ms - b.ts_ms.rem_euclid(BUCKET_MS);
        if t + BUCKET_MS <= cut {
            let e = expected.entry(t).or_default();
            e.0 += 1;
            e.1 += b.amount.unwrap_or(0.0);
        }
    }
    assert!(
        expected.len() >= 10,
        "m00001 has traffic in most buckets: {expected:?}"
    );
    let mut users: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for b in &sent {
        users
            .entry(b.country)
            .or_default()
            .insert(b.user_id.as_str());
    }

    // HTTP (JSON).
    let series = node.sql(&queries[0]);
    let http: BTreeMap<i64, (i64, f64)> = series
        .iter()
        .map(|r| {
            let t = epoch_ms(
                r["t"]
                    .as_str()
                    .unwrap_or_else(|| panic!("t is a timestamp: {r}")),
            );
            (
                t,
                (
                    r["events"].as_i64().unwrap_or(-1),
                    r["revenue"].as_f64().unwrap_or(0.0),
                ),
            )
        })
        .filter(|(t, _)| *t + BUCKET_MS <= cut)
        .collect();
    check_series(&http, &expected, "HTTP");
    let countries = node.sql(&queries[1]);
    assert_eq!(countries.len(), 5, "{countries:?}");
    for r in &countries {
        let country = r["country"].as_str().unwrap_or_default();
        check_sketch(
            country,
            r["users"].as_f64(),
            r["p99_ms"].as_f64(),
            &users,
            "HTTP",
        );
    }

    // Flight SQL (ADBC), the same statements.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/demo_queries.py");
    let out = Command::new(python())
        .arg(script)
        .arg(format!("grpc://{}", node.flight))
        .arg(serde_json::to_string(&queries).expect("json"))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "adbc failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let flight: BTreeMap<i64, (i64, f64)> = v[0]["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r[0].as_i64().unwrap_or(-1),
                (r[1].as_i64().unwrap_or(-1), r[2].as_f64().unwrap_or(0.0)),
            )
        })
        .filter(|(t, _)| *t + BUCKET_MS <= cut)
        .collect();
    check_series(&flight, &expected, "Flight SQL");
    let rows = v[1]["rows"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 5, "{v}");
    for r in &rows {
        check_sketch(
            r[0].as_str().unwrap_or_default(),
            r[1].as_f64(),
            r[2].as_f64(),
            &users,
            "Flight SQL",
        );
    }
}

fn check_series(got: &BTreeMap<i64, (i64, f64)>, expected: &BTreeMap<i64, (i64, f64)>, door: &str) {
    let counts =
        |m: &BTreeMap<i64, (i64, f64)>| m.iter().map(|(t, (n, _))| (*t, *n)).collect::<Vec<_>>();
    assert_eq!(
        counts(got),
        counts(expected),
        "{door}: m00001's events per 5 minutes"
    );
    for (t, (_, revenue)) in expected {
        let g = got.get(t).map_or(f64::NAN, |v| v.1);
        assert!(
            (g - revenue).abs() <= 1e-6 * revenue.abs().max(1.0),
            "{door}: revenue at {t}: {g} vs {revenue}"
        );
    }
}

/// Distinct users over the whole day are at least the backfill's (HLL within 5%), and a p99
/// latency is a positive number of milliseconds.
fn check_sketch(
    country: &str,
    users: Option<f64>,
    p99: Option<f64>,
    exact: &BTreeMap<&str, BTreeSet<&str>>,
    door: &str,
) {
    let sent = exact.get(country).map_or(0, BTreeSet::len) as f64;
    let users = users.unwrap_or(-1.0);
    assert!(
        sent > 0.0 && users >= 0.95 * sent,
        "{door}: {country}: {users} users, the backfill had {sent}"
    );
    assert!(
        p99.is_some_and(|p| p > 0.0),
        "{door}: {country}: p99 {p99:?}"
    );
}
