//! Backup and restore against the real binary: a backup taken while the node serves restores
//! into a new one-node cluster that answers exactly what the node answered at the backup's
//! position (not what it took after), and takes new writes.

use serde_json::{Value, json};

use crate::harness::{MemberAddrs, TestNode};
use crate::now_ms;

fn answers(node: &TestNode) -> Vec<Value> {
    node.sql("SELECT merchant_id, SUM(\"count\") AS n, SUM(revenue) AS r FROM shop GROUP BY 1 ORDER BY 1")
}

#[test]
fn a_backup_restores_into_a_new_node_with_exactly_its_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(&dir.path().join("a"));
    let spec = json!({
        "name": "shop",
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": ["merchant_id"],
        "metrics": [{"name": "count", "type": "count"}, {"name": "revenue", "type": "doubleSum", "field": "amount"}],
        "late_window": "PT1M",
    });
    let r = node.post("/v1/datasources", spec.to_string().as_bytes(), &[]);
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    // Closed hours (segments) and the current minute (realtime).
    let hour = 3_600_000;
    let lines: Vec<String> = (0..500)
        .map(|i| {
            let ts = if i < 450 { now_ms() / hour * hour - 3 * hour + i * 20_000 } else { now_ms() - i };
            json!({"ts": ts, "merchant_id": format!("m{}", i % 4), "amount": i as f64 + 0.5}).to_string()
        })
        .collect();
    assert_eq!(node.post("/v1/beacons/shop", lines.join("\n").as_bytes(), &[]).status, 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while node.sql_i64("SELECT COALESCE(SUM(events), 0) FROM sys.segments WHERE datasource = 'shop'") < 450 {
        assert!(std::time::Instant::now() < deadline, "segments were never written");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let before = answers(&node);

    let backup = dir.path().join("backup");
    let (code, out, err) = node.cli(&["backup", "--to", &backup.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    // The command follows the backup job to its end and prints it.
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!((report["kind"].as_str(), report["state"].as_str()), (Some("backup"), Some("published")), "{report}");
    assert!(report["files_written"].as_u64().is_some_and(|n| n >= 2), "{report}");
    assert!(report["bytes_done"].as_u64().is_some_and(|b| b > 0) && report["bytes_done"] == report["bytes_total"]);
    // Written after the backup: not in it.
    let later = json!({"ts": now_ms(), "merchant_id": "m9", "amount": 1.0}).to_string();
    assert_eq!(node.post("/v1/beacons/shop", later.as_bytes(), &[]).status, 200);
    let (code, _, err) = node.cli(&["backup", "--to", &backup.to_string_lossy()]);
    assert_ne!(code, 0);
    assert!(err.contains("is not empty"), "{err}");

    // Restore into a new data directory and start it as a one-node cluster.
    let addrs = MemberAddrs::new(1);
    let restored_dir = dir.path().join("b");
    let out = std::process::Command::new(crate::harness::tidemark_bin())
        .args(["restore", "--from"])
        .arg(&backup)
        .arg("--data-dir")
        .arg(&restored_dir)
        .args(["--http-addr", &addrs.http, "--kafka-addr", &addrs.kafka, "--raft-addr", &addrs.raft])
        .output()
        .expect("restore");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored = TestNode::start_member(&restored_dir, &addrs, None, &[]);
    restored.wait_healthy();
    assert_eq!(answers(&restored), before, "the restored node answers as the node did at the backup");
    // The backup job was running in the state it copied: nothing runs it here.
    assert_eq!(restored.sql_i64("SELECT COUNT(*) FROM sys.jobs WHERE state = 'running'"), 0);
    // It takes writes: the next entry follows the backup's position.
    let more = json!({"ts": now_ms(), "merchant_id": "m0", "amount": 2.0}).to_string();
    let r = restored.post("/v1/beacons/shop", more.as_bytes(), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(restored.sql_i64("SELECT SUM(\"count\") FROM shop"), 501);
    assert!(report["backup_position"].as_u64().is_some_and(|p| p > 0), "{report}");
    assert!(r.json()["log_position"].as_u64() > report["backup_position"].as_u64(), "{} vs {report}", r.body);

    // Another node joins the restored one and catches up with all of it.
    let second = TestNode::start_member(&dir.path().join("c"), &MemberAddrs::new(2), Some(&restored.http), &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = second.try_post("/v1/sql", b"SELECT SUM(\"count\") AS n FROM shop", &[]);
        if r.as_ref().is_ok_and(|r| r.status == 200 && r.json()[0]["n"] == 501) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the joining node never caught up: {:?}", r.map(|r| r.body));
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
