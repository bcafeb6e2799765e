//! Files written by an older release still open: a data directory and a backup
//! made by the release before the cluster secret and publisher-scoped idempotency keys
//! (`tests/fixtures/compat-5079f75`, written by `dev/compat-fixture` with that commit's
//! binary). Its Raft log holds a plain-text node token entry, replayed as nothing; its keys,
//! events and idempotency window carry over.

use std::path::Path;

use serde_json::Value;

use crate::backup::copy_dir;
use crate::harness::TestNode;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/compat-5079f75");

fn sql(node: &TestNode, token: &str, query: &str) -> Value {
    let auth = format!("Bearer {token}");
    let r = node.post("/v1/sql", query.as_bytes(), &[("Authorization", &auth)]);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[test]
fn an_older_releases_data_directory_and_backup_open() {
    let fixture = Path::new(FIXTURE);
    let facts: Value =
        serde_json::from_slice(&std::fs::read(fixture.join("facts.json")).expect("facts.json"))
            .expect("json");
    let admin = facts["admin_token"]
        .as_str()
        .expect("admin token")
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    copy_dir(&fixture.join("data"), &data);
    let node = TestNode::start(&data);

    // Keys carry over; the old node token entry replayed as nothing.
    let keys = node.get_with("/v1/keys", &[("Authorization", &format!("Bearer {admin}"))]);
    assert_eq!(keys.status, 200, "{}", keys.body);
    let n = sql(&node, &admin, "SELECT SUM(\"count\") AS n FROM shop");
    assert_eq!(n[0]["n"], facts["events"], "{n}");
    let audit = sql(
        &node,
        &admin,
        "SELECT op FROM sys.audit ORDER BY log_position",
    );
    assert!(
        audit.to_string().contains("set_node_secret"),
        "the old entry is history: {audit}"
    );

    // The keyed batch's retry, sent by the same key after the upgrade, is answered as a
    // retry (the window holds it unscoped) and counts once.
    let keyed = std::fs::read(fixture.join("keyed.ndjson")).expect("keyed batch");
    let auth = format!("Bearer {admin}");
    let r = node.post(
        "/v1/beacons/shop",
        &keyed,
        &[("Authorization", &auth), ("Idempotency-Key", "compat-1")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["replayed"], true, "{}", r.body);
    assert_eq!(
        r.json()["log_position"],
        facts["keyed_answer"]["log_position"],
        "{}",
        r.body
    );
    let n = sql(&node, &admin, "SELECT SUM(\"count\") AS n FROM shop");
    assert_eq!(n[0]["n"], facts["events"], "{n}");
    drop(node);

    // The backup restores into a node that answers what the backup held.
    let restored = dir.path().join("restored");
    let out = std::process::Command::new(crate::harness::tidemark_bin())
        .args(["restore", "--from"])
        .arg(fixture.join("backup"))
        .arg("--data-dir")
        .arg(&restored)
        .output()
        .expect("tidemark restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = TestNode::start(&restored);
    let n = sql(&node, &admin, "SELECT SUM(\"count\") AS n FROM shop");
    assert_eq!(n[0]["n"], facts["events_in_backup"], "{n}");
}
