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
    let r = node.post("/v1/datasources", spec.as_bytes(), &[("Content-Type", "application/json")]);
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    // Events 5 to 30 minutes old: their minutes are closed, so segments are written.
    let batch = traffic(77, 12, now_ms() - 30 * 60_000, 25 * 60_000, 300);
    assert_eq!(node.post("/v1/beacons/dba", &ndjson(&batch), &[]).status, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Every event in a segment (none left in realtime indexes).
    while node.sql_i64("SELECT COALESCE(SUM(events), 0) FROM sys.segments WHERE datasource = 'dba'") < 300 {
        assert!(Instant::now() < deadline, "segments were never written");
        std::thread::sleep(Duration::from_millis(200));
    }

    let (code, out, err) = node.cli(&["segments", "list", "--datasource", "dba", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    let count = node.sql_i64("SELECT COUNT(*) FROM sys.segments WHERE datasource = 'dba'");
    assert_eq!(listed.len() as i64, count);
    assert!(listed.len() >= 3, "{listed:?}");
    assert_eq!(listed.iter().map(|s| s["events"].as_i64().unwrap_or(0)).sum::<i64>(), 300);
    assert!(listed.iter().all(|s| s["datasource"] == "dba"));

    let (code, out, err) = node.cli(&["segments", "verify", "--datasource", "dba"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok ")).count(), listed.len(), "{out}");

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
    assert_eq!(out.lines().filter(|l| l.starts_with("DAMAGED ")).count(), 1, "{out}");
    assert!(err.contains(&format!("1 of {} segments of \"dba\" are damaged on this node", listed.len())), "{err}");

    let (code, _, err) = node.cli(&["segments", "verify", "--datasource", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("HTTP 404: datasource \"nope\" does not exist"), "{err}");
}
