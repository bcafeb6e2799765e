//! kill -9 during sustained ingest loses no acknowledged beacon, and a retried batch (same
//! Idempotency-Key) counts once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::TestNode;
use crate::{ndjson, now_ms, traffic};

#[test]
fn kill_dash_nine_loses_no_acknowledged_beacon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::start(dir.path());
    let http = node.http.clone();
    let batches: Vec<Vec<u8>> = (0..400)
        .map(|i| {
            ndjson(&traffic(
                100 + i,
                30,
                now_ms() - 3_600_000 * (i as i64 % 3),
                600_000,
                250,
            ))
        })
        .collect();
    let batches = Arc::new(batches);
    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (batches, acked, stop, http) =
            (batches.clone(), acked.clone(), stop.clone(), http.clone());
        writers.push(std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut i = w;
            while i < batches.len() && !stop.load(Ordering::SeqCst) {
                let r = agent
                    .post(&format!("http://{http}/v1/beacons/beacons"))
                    .header("Idempotency-Key", &format!("crash-{i}"))
                    .send(&batches[i][..]);
                match r {
                    Ok(resp) if resp.status() == 200 => {
                        acked.lock().unwrap_or_else(|p| p.into_inner()).push(i)
                    }
                    _ => break,
                }
                i += 2;
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(1500));
    node.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    let acked: Vec<usize> = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert!(
        acked.len() > 5,
        "the writers should have been acked a few times before the kill ({})",
        acked.len()
    );

    let node = TestNode::start(dir.path());
    // Every acknowledged beacon survived (unacked ones may or may not have).
    let after_restart = node.sql_i64("SELECT SUM(\"count\") FROM beacons");
    assert!(
        after_restart >= acked.len() as i64 * 250,
        "{after_restart} < {} acked",
        acked.len() * 250
    );

    // Retrying every batch with its key leaves each counted exactly once.
    for (i, body) in batches.iter().enumerate() {
        let r = node.post(
            "/v1/beacons/beacons",
            body,
            &[("Idempotency-Key", &format!("crash-{i}"))],
        );
        assert_eq!(r.status, 200, "{}", r.body);
        if acked.contains(&i) {
            assert_eq!(
                r.json()["replayed"],
                true,
                "batch {i} was acked, so its retry is a replay"
            );
        }
    }
    assert_eq!(
        node.sql_i64("SELECT SUM(\"count\") FROM beacons"),
        400 * 250
    );
}

#[test]
fn a_segment_damaged_while_the_node_was_down_fails_the_queries_that_need_it_not_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::start(dir.path());
    let spec = tidemark_catalog::spec::DEMO_BEACONS_SPEC
        .replace("\"beacons\"", "\"dmg\"")
        .replace("\"segment\": \"PT1H\"", "\"segment\": \"PT1M\"")
        .replace("\"PT10M\"", "\"PT1M\"");
    let r = node.post(
        "/v1/datasources",
        spec.as_bytes(),
        &[("Content-Type", "application/json")],
    );
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    // Events 5 to 30 minutes old: their minutes are closed, so segments are written.
    let batch = traffic(4242, 12, now_ms() - 30 * 60_000, 25 * 60_000, 200);
    let r = node.post("/v1/beacons/dmg", &ndjson(&batch), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while node.sql_i64("SELECT COUNT(*) FROM sys.segments WHERE datasource = 'dmg'") < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "segments were never written"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM dmg"), 200);
    node.stop();

    // One byte of one segment flips while the node is down (byte 64: the first column).
    let mut segments: Vec<std::path::PathBuf> = walk(&dir.path().join("datasources"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    let damaged = segments.first().expect("a segment file").clone();
    let mut bytes = std::fs::read(&damaged).expect("read segment");
    bytes[64] ^= 0xff;
    std::fs::write(&damaged, &bytes).expect("damage segment");
    let stem = damaged
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("segment name")
        .to_string();
    // <interval start>_<version>_<shard>.seg; the segment is one minute.
    let start_ms: i64 = stem
        .split('_')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("interval start in the file name");
    let end_ms = start_ms + 60_000;

    // The node starts, reports the file, and (alone: no replica to repair from) refuses the
    // queries that need it, naming the segment; a time range without it still answers.
    let node = TestNode::start(dir.path());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = node.get("/v1/cluster").json();
        let listed = status["damaged_files"]
            .as_object()
            .is_some_and(|m| m.keys().any(|k| k.ends_with(&format!("{stem}.seg"))));
        if listed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "damaged_files never listed the segment: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = node.post(
        "/v1/sql",
        b"SELECT SUM(\"count\") FROM dmg",
        &[("Content-Type", "text/plain")],
    );
    assert_ne!(r.status, 200, "{}", r.body);
    assert!(
        r.body
            .contains(&format!("segment dmg_{start_ms}_{end_ms}_"))
            && r.body.contains("is damaged on this node"),
        "{}",
        r.body
    );
    let after = batch.iter().filter(|b| b.ts_ms >= end_ms).count() as i64;
    let q = format!(
        "SELECT COALESCE(SUM(\"count\"), 0) FROM dmg WHERE __time >= to_timestamp_millis({end_ms})"
    );
    assert_eq!(node.sql_i64(&q), after);
}

pub(crate) fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
