//! `tidemark segments list|verify` against the real binary: the listing matches what was
//! ingested, verification passes on healthy files and names a segment damaged on disk.

use std::time::{Duration, Instant};

use crate::harness::TestNode;
use crate::{ndjson, now_ms, traffic};

#[test]
fn segments_are_listed_and_verified_and_a_damaged_one_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let spec = tidemark_catalog::spec::DEMO_BEACONS_SPEC
        .replace("\"beacons\"", "\"dba\"")
        .replace("\"segment\": \"PT1H\"", "\"segment\": \"PT1M\"")
        .replace("\"PT10M\"", "\"PT1M\"");
    let r = node.post(
        "/v1/datasources",
        spec.as_bytes(),
        &[("Content-Type", "application/json")],
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    // Events 5 to 30 minutes old: their minutes are closed, so segments are written.
    let batch = traffic(77, 12, now_ms() - 30 * 60_000, 25 * 60_000, 300);
    assert_eq!(
        node.post("/v1/beacons/dba", &ndjson(&batch), &[]).status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    // Every event in a segment (none left in realtime indexes).
    while node.sql_i64("SELECT COALESCE(SUM(events), 0) FROM sys.segments WHERE datasource = 'dba'")
        < 300
    {
        assert!(Instant::now() < deadline, "segments were never written");
        std::thread::sleep(Duration::from_millis(200));
    }

    let (code, out, err) = node.cli(&["segments", "list", "--datasource", "dba", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    let count = node.sql_i64("SELECT COUNT(*) FROM sys.segments WHERE datasource = 'dba'");
    assert_eq!(listed.len() as i64, count);
    assert!(listed.len() >= 3, "{listed:?}");
    assert_eq!(
        listed
            .iter()
            .map(|s| s["events"].as_i64().unwrap_or(0))
            .sum::<i64>(),
        300
    );
    assert!(listed.iter().all(|s| s["datasource"] == "dba"));
    let over_http = node.get("/v1/segments?datasource=dba").json();
    let over_http = over_http.as_array().cloned().unwrap_or_default();
    assert_eq!(over_http.len(), listed.len(), "{over_http:?}");
    assert_eq!(
        over_http
            .iter()
            .map(|s| s["events"].as_i64().unwrap_or(0))
            .sum::<i64>(),
        300
    );
    assert_eq!(node.get("/v1/segments?datasource=nope").status, 404);

    // One segment in detail: every column of the spec, with its encoding, size and checksum.
    let first = listed[0]["segment_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, out, err) = node.cli(&["segments", "show", "--datasource", "dba", &first, "--json"]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["segment"], first.as_str());
    assert_eq!(shown["rows"], listed[0]["rows"]);
    let columns: Vec<&str> = shown["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for c in [
        "__time",
        "merchant_id",
        "page",
        "count",
        "users_hll",
        "latency_td",
    ] {
        assert!(columns.contains(&c), "{c} missing from {columns:?}");
    }
    let column = |name: &str| {
        shown["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert!(
        column("merchant_id")["encoding"]
            .as_str()
            .is_some_and(|e| e.contains("roaring")),
        "{shown}"
    );
    assert!(
        column("merchant_id")["cardinality"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{shown}"
    );
    assert_eq!(column("count")["encoding"], "plain i64");
    assert!(
        shown["columns"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|c| c["crc32c"].as_str().is_some_and(|h| h.len() == 8))
    );
    let (code, _, err) = node.cli(&["segments", "show", "--datasource", "dba", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("has no segment \"nope\""), "{err}");

    let (code, out, err) = node.cli(&["segments", "verify", "--datasource", "dba"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        listed.len(),
        "{out}"
    );

    // One byte of one column flips on disk: verification names that segment and fails.
    let mut files: Vec<std::path::PathBuf> = crate::crash::walk(&dir.path().join("datasources"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    let damaged = files.first().expect("a segment file").clone();
    let mut bytes = std::fs::read(&damaged).expect("read segment");
    bytes[64] ^= 0xff;
    std::fs::write(&damaged, &bytes).expect("damage segment");
    let (code, out, err) = node.cli(&["segments", "verify", "--datasource", "dba"]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("DAMAGED ")).count(),
        1,
        "{out}"
    );
    assert!(
        err.contains(&format!(
            "1 of {} segments of \"dba\" are damaged on this node",
            listed.len()
        )),
        "{err}"
    );

    let (code, _, err) = node.cli(&["segments", "verify", "--datasource", "nope"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("HTTP 404: datasource \"nope\" does not exist"),
        "{err}"
    );
}

#[test]
fn an_interval_is_dropped_on_demand_and_by_retention_and_stays_dropped() {
    const HOUR_MS: i64 = 3_600_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::start(dir.path());
    let spec = serde_json::json!({
        "name": "aged",
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": ["merchant_id"],
        "metrics": [{"name": "count", "type": "count"}],
        "late_window": "PT1M",
    });
    let r = node.post("/v1/datasources", spec.to_string().as_bytes(), &[]);
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    // 100 events in each of the hours 5, 4, 3 and 2 before this one, 50 in this one.
    let hour = now_ms() / HOUR_MS * HOUR_MS;
    let mut lines = Vec::new();
    for k in 2..=5 {
        for i in 0..100 {
            lines.push(
                serde_json::json!({"ts": hour - k * HOUR_MS + i * 1000, "merchant_id": "m1"})
                    .to_string(),
            );
        }
    }
    for i in 0..50 {
        lines.push(serde_json::json!({"ts": now_ms() - i * 10, "merchant_id": "m1"}).to_string());
    }
    assert_eq!(
        node.post("/v1/beacons/aged", lines.join("\n").as_bytes(), &[])
            .status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while node
        .sql_i64("SELECT COALESCE(SUM(events), 0) FROM sys.segments WHERE datasource = 'aged'")
        < 400
    {
        assert!(
            Instant::now() < deadline,
            "the closed hours were never persisted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let total = "SELECT SUM(\"count\") FROM aged";
    assert_eq!(node.sql_i64(total), 450);

    // A drop takes whole segment intervals only: hour 5 (the half hour after it stays).
    let interval = format!(
        "{}/{}",
        hour - 5 * HOUR_MS,
        hour - 4 * HOUR_MS + HOUR_MS / 2
    );
    let (code, out, err) = node.cli(&[
        "segments",
        "drop",
        "--datasource",
        "aged",
        "--interval",
        &interval,
    ]);
    assert_eq!(code, 0, "{err}");
    let job: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (job["kind"].as_str(), job["events"].as_u64()),
        (Some("drop"), Some(100)),
        "{job}"
    );
    assert_eq!(job["end_ms"].as_i64(), Some(hour - 4 * HOUR_MS), "{job}");
    assert_eq!(node.sql_i64(total), 350);
    let (code, _, err) = node.cli(&[
        "segments",
        "drop",
        "--datasource",
        "aged",
        "--interval",
        &format!("{}/{}", hour - 10, hour - 5),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("holds no whole PT1H segment interval"),
        "{err}"
    );

    // A dry run says what keeping three hours would remove now (hour 4: one interval, 100
    // events) and changes nothing.
    let r = node.put(
        "/v1/governance/retention/aged?dry_run=true",
        br#"{"segments": "PT3H"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let dry = r.json();
    let seg = &dry["would_remove"]["segments"];
    assert_eq!(
        (
            dry["dry_run"].as_bool(),
            seg["intervals"].as_u64(),
            seg["events"].as_u64()
        ),
        (Some(true), Some(1), Some(100)),
        "{dry}"
    );
    assert_eq!(seg["before_ms"].as_i64(), Some(hour - 3 * HOUR_MS), "{dry}");
    assert!(seg["bytes"].as_u64().is_some_and(|b| b > 0), "{dry}");
    assert!(
        dry["would_remove"].get("raw").is_none(),
        "raw is kept forever: {dry}"
    );
    let (code, out, err) = node.cli(&[
        "governance",
        "retention",
        "set",
        "aged",
        "--segments",
        "PT3H",
        "--raw",
        "P30D",
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{err}");
    let cli: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        cli["would_remove"]["segments"]["events"].as_u64(),
        Some(100),
        "{cli}"
    );
    assert_eq!(
        cli["would_remove"]["raw"]["files"].as_u64(),
        Some(0),
        "nothing sealed is that old: {cli}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(node.sql_i64(total), 350, "a dry run removes nothing");
    assert_eq!(
        node.get("/v1/governance/retention/aged").json()["position"],
        serde_json::Value::Null
    );

    // Retention keeps three hours of segments: hour 4 goes too, by the leader's own decision.
    // The answer and the audit row say what the rule removes.
    let r = node.put("/v1/governance/retention/aged", br#"{"segments": "PT3H"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["would_remove"]["segments"]["events"].as_u64(),
        Some(100),
        "{}",
        r.body
    );
    let audit = node.sql("SELECT after FROM sys.audit WHERE op = 'put_retention'");
    let after: serde_json::Value =
        serde_json::from_str(audit[0]["after"].as_str().unwrap_or("null")).expect("json");
    assert_eq!(
        after["would_remove"]["segments"]["intervals"].as_u64(),
        Some(1),
        "{after}"
    );
    assert_eq!(after["segments"].as_str(), Some("PT3H"), "{after}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.sql_i64(total) != 250 {
        assert!(
            Instant::now() < deadline,
            "retention never dropped hour 4: {}",
            node.sql_i64(total)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let jobs = node.sql("SELECT kind, actor, events FROM sys.jobs ORDER BY id");
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(
        jobs[1]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("system:retention")),
        "{jobs:?}"
    );
    assert_eq!(jobs[1]["events"], 100, "{jobs:?}");

    // Dropped stays dropped across a restart (the raw log keeps the batches, replay skips them).
    node.stop();
    let node = TestNode::start(dir.path());
    assert_eq!(node.sql_i64(total), 250);
}

#[test]
fn raw_and_rejects_retention_remove_old_files_and_rows_and_guard_reindexing() {
    const HOUR_MS: i64 = 3_600_000;
    let dir = tempfile::tempdir().expect("tempdir");
    // Small raw files, so a few hundred beacons fill several.
    let config = dir.path().join("tidemark.toml");
    std::fs::write(&config, "[storage]\nraw_file_bytes_max = 4096\n").expect("config");
    let data = dir.path().join("data");
    let node = TestNode::start_with(&data, &["--config", &config.to_string_lossy()]);
    let spec = serde_json::json!({
        "name": "kept",
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": ["merchant_id"],
        "metrics": [{"name": "count", "type": "count"}],
        "late_window": "PT1M",
    });
    let r = node.post("/v1/datasources", spec.to_string().as_bytes(), &[]);
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    let hour = now_ms() / HOUR_MS * HOUR_MS;
    for k in (2..=5).rev() {
        let lines: Vec<String> = (0..100)
            .map(|i| {
                serde_json::json!({"ts": hour - k * HOUR_MS + i * 1000, "merchant_id": "m1"})
                    .to_string()
            })
            .collect();
        assert_eq!(
            node.post("/v1/beacons/kept", lines.join("\n").as_bytes(), &[])
                .status,
            200
        );
    }
    // Three beacons without a timestamp: rejected, kept in sys.rejects.
    let r = node.post(
        "/v1/beacons/kept",
        b"{\"merchant_id\": \"m1\"}\n{\"merchant_id\": \"m2\"}\n{\"x\": 1}",
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    while node
        .sql_i64("SELECT COALESCE(SUM(events), 0) FROM sys.segments WHERE datasource = 'kept'")
        < 400
    {
        assert!(Instant::now() < deadline, "the hours were never persisted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let raw_files = || {
        crate::crash::walk(&data.join("datasources"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "raw"))
            .count()
    };
    let files_before = raw_files();
    assert!(files_before > 3, "{files_before} raw files");
    assert_eq!(
        node.sql_i64("SELECT COUNT(*) FROM sys.rejects WHERE datasource = 'kept'"),
        3
    );
    std::thread::sleep(Duration::from_millis(1500));

    // Keep three hours of raw events and one second of rejects. A dry run first: the rule
    // would remove the sealed raw files whose beacons are all older than three hours (each
    // hour's 100 beacons went in as one batch, so whole hours of them: 5, 4 and, once three
    // hours have passed since its last beacon, 3) and all three rejects, and removes nothing.
    let r = node.put(
        "/v1/governance/retention/kept?dry_run=true",
        br#"{"raw": "PT3H", "rejects": "PT1S"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let dry = r.json()["would_remove"].clone();
    assert!(
        dry["raw"]["files"].as_u64().is_some_and(|n| n >= 1),
        "{dry}"
    );
    let raw_events = dry["raw"]["events"].as_u64().unwrap_or(0);
    assert!(
        [200, 300].contains(&raw_events),
        "whole hours of beacons, at least 5 and 4: {dry}"
    );
    assert!(dry["raw"]["bytes"].as_u64().is_some_and(|b| b > 0), "{dry}");
    assert_eq!(dry["rejects"]["events"].as_u64(), Some(3), "{dry}");
    assert_eq!(raw_files(), files_before, "a dry run removes nothing");
    let r = node.put(
        "/v1/governance/retention/kept",
        br#"{"raw": "PT3H", "rejects": "PT1S"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.sql_i64("SELECT COUNT(*) FROM sys.jobs WHERE kind = 'retain'") < 1 {
        assert!(
            Instant::now() < deadline,
            "raw retention never ran: {:?}",
            node.sql("SELECT * FROM sys.jobs")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let job = node.get("/v1/jobs").json()[0].clone();
    assert_eq!(job["kind"], "retain", "{job}");
    assert!(
        job["files_removed"].as_u64().is_some_and(|n| n >= 1),
        "{job}"
    );
    assert_eq!(job["rejected"], 3, "{job}");
    assert_eq!(
        node.sql_i64("SELECT COUNT(*) FROM sys.rejects WHERE datasource = 'kept'"),
        0
    );
    // Segments are another form: every event is still queryable.
    assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM kept"), 400);
    // A reindex would rebuild hour 5 from part of its events: refused, naming the way out.
    let interval = format!("{}/{}", hour - 5 * HOUR_MS, hour - 4 * HOUR_MS);
    let (code, _, err) = node.cli(&["reindex", "--datasource", "kept", "--interval", &interval]);
    assert_ne!(code, 0);
    assert!(err.contains("raw retention has removed"), "{err}");
    // The files leave the disk once a checkpoint no longer names them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while raw_files() >= files_before {
        assert!(Instant::now() < deadline, "raw files were never deleted");
        std::thread::sleep(Duration::from_millis(200));
    }
}
