//! Backup and restore against the real binary: a backup taken while the node serves restores
//! into a new one-node cluster that answers exactly what the node answered at the backup's
//! position (not what it took after), and takes new writes.

use serde_json::{Value, json};

use crate::crash::walk;
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
            let ts = if i < 450 {
                now_ms() / hour * hour - 3 * hour + i * 20_000
            } else {
                now_ms() - i
            };
            json!({"ts": ts, "merchant_id": format!("m{}", i % 4), "amount": i as f64 + 0.5})
                .to_string()
        })
        .collect();
    assert_eq!(
        node.post("/v1/beacons/shop", lines.join("\n").as_bytes(), &[])
            .status,
        200
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while node
        .sql_i64("SELECT COALESCE(SUM(events), 0) FROM sys.segments WHERE datasource = 'shop'")
        < 450
    {
        assert!(
            std::time::Instant::now() < deadline,
            "segments were never written"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let before = answers(&node);

    let backup = dir.path().join("backup");
    let (code, out, err) = node.cli(&["backup", "--to", &backup.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    // The command follows the backup job to its end and prints it.
    let report: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (report["kind"].as_str(), report["state"].as_str()),
        (Some("backup"), Some("published")),
        "{report}"
    );
    assert!(
        report["files_written"].as_u64().is_some_and(|n| n >= 2),
        "{report}"
    );
    assert!(
        report["bytes_done"].as_u64().is_some_and(|b| b > 0)
            && report["bytes_done"] == report["bytes_total"]
    );
    // Written after the backup: not in it.
    let later = json!({"ts": now_ms(), "merchant_id": "m9", "amount": 1.0}).to_string();
    assert_eq!(
        node.post("/v1/beacons/shop", later.as_bytes(), &[]).status,
        200
    );
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
        .args([
            "--http-addr",
            &addrs.http,
            "--kafka-addr",
            &addrs.kafka,
            "--raft-addr",
            &addrs.raft,
        ])
        .output()
        .expect("restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored = TestNode::start_member(&restored_dir, &addrs, None, &[]);
    restored.wait_healthy();
    // Read-your-writes on the quiet restored node. Its read index is the
    // membership change or the new leader's blank entry, which the engine's position (commands
    // only) never reached: every such read answered 503 until the next write.
    let r = restored.post(
        "/v1/sql",
        b"SELECT SUM(\"count\") AS n FROM shop",
        &[
            ("Content-Type", "text/plain"),
            ("tidemark-consistency", "read-your-writes"),
        ],
    );
    assert_eq!(
        (r.status, r.json()[0]["n"].clone()),
        (200, json!(500)),
        "{}",
        r.body
    );
    assert_eq!(
        answers(&restored),
        before,
        "the restored node answers as the node did at the backup"
    );
    // The backup job was running in the state it copied: nothing runs it here.
    assert_eq!(
        restored.sql_i64("SELECT COUNT(*) FROM sys.jobs WHERE state = 'running'"),
        0
    );
    // It takes writes: the next entry follows the backup's position.
    let more = json!({"ts": now_ms(), "merchant_id": "m0", "amount": 2.0}).to_string();
    let r = restored.post("/v1/beacons/shop", more.as_bytes(), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(restored.sql_i64("SELECT SUM(\"count\") FROM shop"), 501);
    assert!(
        report["backup_position"].as_u64().is_some_and(|p| p > 0),
        "{report}"
    );
    assert!(
        r.json()["log_position"].as_u64() > report["backup_position"].as_u64(),
        "{} vs {report}",
        r.body
    );

    // Another node joins the restored one and catches up with all of it.
    let second = TestNode::start_member(
        &dir.path().join("c"),
        &MemberAddrs::new(2),
        Some(&restored.http),
        &[],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = second.try_post("/v1/sql", b"SELECT SUM(\"count\") AS n FROM shop", &[]);
        if r.as_ref()
            .is_ok_and(|r| r.status == 200 && r.json()[0]["n"] == 501)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the joining node never caught up: {:?}",
            r.map(|r| r.body)
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

/// Runs `tidemark restore` from `backup` into `data_dir`: (success, stderr).
fn restore(backup: &std::path::Path, data_dir: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(crate::harness::tidemark_bin())
        .args(["restore", "--from"])
        .arg(backup)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .expect("restore");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copies a directory's files (a backup, a fixture), so each case edits its own.
pub(crate) fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in walk(from) {
        let rel = entry.strip_prefix(from).expect("inside");
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::copy(&entry, &dest).expect("copy");
    }
}

fn edit_manifest(backup: &std::path::Path, edit: impl FnOnce(&mut Value)) {
    let path = backup.join("BACKUP.json");
    let mut m: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("manifest")).expect("json");
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).expect("json")).expect("write");
}

/// A manifest is input like any other. Before, a manifest naming an
/// absolute path as its checkpoint truncated that file, and `..` wrote outside the data
/// directory; a damaged file restored silently.
#[test]
fn a_crafted_or_damaged_backup_is_refused_and_nothing_is_written_outside_its_data_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(&dir.path().join("a"));
    let beacons = crate::traffic(5, 10, now_ms() - 60_000, 50_000, 200);
    assert_eq!(
        node.post("/v1/beacons/beacons", &crate::ndjson(&beacons), &[])
            .status,
        200
    );
    let backup = dir.path().join("backup");
    let (code, _, err) = node.cli(&["backup", "--to", &backup.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup.join("BACKUP.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["format"], 2);
    assert!(manifest["checkpoint_crc32c"].is_u64(), "{manifest}");
    let files = manifest["files"].as_array().cloned().unwrap_or_default();
    assert!(
        !files.is_empty() && files.iter().all(|f| f["crc32c"].is_u64()),
        "{manifest}"
    );
    let a_file = files[0]["path"].as_str().unwrap_or_default().to_string();

    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me").expect("victim");
    let case = |name: &str| {
        let copy = dir.path().join(format!("backup-{name}"));
        copy_dir(&backup, &copy);
        (copy, dir.path().join(format!("restored-{name}")))
    };

    // An absolute path as the checkpoint.
    let (b, d) = case("absolute");
    edit_manifest(&b, |m| m["checkpoint"] = json!(victim.to_string_lossy()));
    let (ok, err) = restore(&b, &d);
    assert!(
        !ok && err.contains("a backup's paths must be relative and made of plain names"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep me");

    // `..` out of the data directory.
    let (b, d) = case("dotdot");
    std::fs::copy(b.join(&a_file), b.join("escaped")).expect("copy");
    edit_manifest(&b, |m| m["files"][0]["path"] = json!("../escaped"));
    let (ok, err) = restore(&b, &d);
    assert!(
        !ok && err.contains("names ../escaped: a backup's paths must be relative"),
        "{err}"
    );
    assert!(
        !dir.path().join("escaped").exists(),
        "a file was written outside the data directory"
    );

    // A symbolic link in place of a data file.
    let (b, d) = case("symlink");
    std::fs::rename(b.join(&a_file), b.join("elsewhere")).expect("move");
    std::os::unix::fs::symlink(b.join("elsewhere"), b.join(&a_file)).expect("symlink");
    let (ok, err) = restore(&b, &d);
    assert!(!ok && err.contains("is a symbolic link"), "{err}");

    // A damaged byte: same length, other contents. Nothing of the restore stays behind.
    let (b, d) = case("damaged");
    let mut bytes = std::fs::read(b.join(&a_file)).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(b.join(&a_file), &bytes).expect("write");
    let (ok, err) = restore(&b, &d);
    assert!(
        !ok && err.contains(&format!("backup file {a_file} is damaged")),
        "{err}"
    );
    assert!(
        !d.exists()
            || std::fs::read_dir(&d)
                .map(|mut e| e.next().is_none())
                .unwrap_or(true),
        "left behind"
    );

    // A backup from before the checksums (format 1) restores, with a warning.
    let (b, d) = case("format1");
    edit_manifest(&b, |m| {
        m["format"] = json!(1);
        m.as_object_mut().map(|o| o.remove("checkpoint_crc32c"));
        for f in m["files"].as_array_mut().into_iter().flatten() {
            f.as_object_mut().map(|o| o.remove("crc32c"));
        }
    });
    let (ok, err) = restore(&b, &d);
    assert!(ok, "{err}");
    assert!(err.contains("predates per-file checksums"), "{err}");

    // The untouched backup restores, checked, without the warning.
    let (ok, err) = restore(&backup, &dir.path().join("restored-intact"));
    assert!(ok && !err.contains("warning"), "{err}");
}

/// Read-your-writes on a quiet node whose last log entries are not
/// commands (a restarted leader's blank entry, a membership change). The read index is one
/// of those; the engine's position counts commands only and never reached it, so every such
/// read answered 503 until the next write.
#[test]
fn read_your_writes_answers_on_a_quiet_restarted_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::start(dir.path());
    assert_eq!(node.sql_i64("SELECT COUNT(*) FROM beacons"), 0);
    node.stop();
    let node = TestNode::start(dir.path());
    node.wait_healthy();
    let r = node.post(
        "/v1/sql",
        b"SELECT COUNT(*) AS n FROM beacons",
        &[
            ("Content-Type", "text/plain"),
            ("tidemark-consistency", "read-your-writes"),
        ],
    );
    assert_eq!(
        (r.status, r.json()[0]["n"].clone()),
        (200, json!(0)),
        "{}",
        r.body
    );
}

/// Whatever the umask the node starts with, its data
/// directory and everything in it, and the backups it writes, are the owner's only.
#[test]
fn data_files_and_backups_are_the_owners_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let node = TestNode::start(&data);
    let beacons = crate::traffic(9, 5, now_ms() - 60_000, 50_000, 50);
    assert_eq!(
        node.post("/v1/beacons/beacons", &crate::ndjson(&beacons), &[])
            .status,
        200
    );
    let backup = dir.path().join("backup");
    let (code, _, err) = node.cli(&["backup", "--to", &backup.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode(&data), 0o700);
    let mut seen = 0;
    for root in [&data, &backup] {
        for f in walk(root) {
            // The log file is the harness's, not the node's.
            if f.extension().is_some_and(|e| e == "log") && f.parent() == Some(data.as_path()) {
                continue;
            }
            assert_eq!(mode(&f) & 0o077, 0, "{} is {:o}", f.display(), mode(&f));
            seen += 1;
        }
    }
    assert!(seen > 5, "{seen} files looked at");
}
