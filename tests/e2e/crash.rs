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
    let batches: Vec<Vec<u8>> =
        (0..400).map(|i| ndjson(&traffic(100 + i, 30, now_ms() - 3_600_000 * (i as i64 % 3), 600_000, 250))).collect();
    let batches = Arc::new(batches);
    let acked = Arc::new(Mutex::new(Vec::<usize>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (batches, acked, stop, http) = (batches.clone(), acked.clone(), stop.clone(), http.clone());
        writers.push(std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let mut i = w;
            while i < batches.len() && !stop.load(Ordering::SeqCst) {
                let r = agent
                    .post(&format!("http://{http}/v1/beacons/beacons"))
                    .header("Idempotency-Key", &format!("crash-{i}"))
                    .send(&batches[i][..]);
                match r {
                    Ok(resp) if resp.status() == 200 => acked.lock().unwrap_or_else(|p| p.into_inner()).push(i),
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
    assert!(acked.len() > 5, "the writers should have been acked a few times before the kill ({})", acked.len());

    let node = TestNode::start(dir.path());
    // Every acknowledged beacon survived (unacked ones may or may not have).
    let after_restart = node.sql_i64("SELECT SUM(\"count\") FROM beacons");
    assert!(after_restart >= acked.len() as i64 * 250, "{after_restart} < {} acked", acked.len() * 250);

    // Retrying every batch with its key leaves each counted exactly once.
    for (i, body) in batches.iter().enumerate() {
        let r = node.post("/v1/beacons/beacons", body, &[("Idempotency-Key", &format!("crash-{i}"))]);
        assert_eq!(r.status, 200, "{}", r.body);
        if acked.contains(&i) {
            assert_eq!(r.json()["replayed"], true, "batch {i} was acked, so its retry is a replay");
        }
    }
    assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM beacons"), 400 * 250);
}
