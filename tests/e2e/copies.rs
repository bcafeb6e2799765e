//! Exports and backups as jobs, against the real binary: while one runs (paced, so it runs
//! long enough to watch) `/v1/jobs` and `sys.jobs` show its bytes counting up; a cancel stops
//! it and removes what it wrote; a node killed mid-copy cancels the copy's job when it comes
//! back and removes the export's unfinished files; a copy run to its end counts every byte.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::TestNode;
use crate::now_ms;

const HOUR_MS: i64 = 3_600_000;

fn setup(node: &TestNode) {
    let spec = json!({
        "name": "shop",
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": ["merchant_id", "page"],
        "metrics": [{"name": "count", "type": "count"}, {"name": "revenue", "type": "doubleSum", "field": "amount"}],
        "late_window": "PT1M",
    });
    let r = node.post("/v1/datasources", spec.to_string().as_bytes(), &[]);
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    // A few batches over two closed hours: several raw batches to read, some segments.
    let base = now_ms() / HOUR_MS * HOUR_MS - 2 * HOUR_MS;
    for batch in 0..4 {
        let lines: Vec<String> = (0..500)
            .map(|i| {
                let n = batch * 500 + i;
                json!({"ts": base + n * 3_000, "merchant_id": format!("m{}", n % 7), "page": format!("/p/{}", n % 13),
                       "amount": n as f64 * 0.25})
                .to_string()
            })
            .collect();
        let r = node.post("/v1/beacons/shop", lines.join("\n").as_bytes(), &[]);
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// Polls job `id` until `done` holds, failing with `what` after a minute.
fn job_until(node: &TestNode, id: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let j = node.get(&format!("/v1/jobs/{id}")).json();
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "{what}: {j}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Files under `dir` (none if it does not exist).
fn files_under(dir: &Path) -> Vec<String> {
    crate::crash::walk(dir)
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// Starts a copy with the CLI without waiting; answers its job id.
fn start(node: &TestNode, args: &[&str]) -> u64 {
    let (code, out, err) = node.cli(args);
    assert_eq!(code, 0, "{err}");
    let job: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(job["state"], "running", "{job}");
    job["id"].as_u64().expect("job id")
}

#[test]
fn copies_are_jobs_with_progress_that_a_cancel_or_a_restart_ends_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let mut node = TestNode::start(&data);
    setup(&node);
    let interval = format!(
        "{}/{}",
        now_ms() / HOUR_MS * HOUR_MS - 2 * HOUR_MS,
        now_ms() / HOUR_MS * HOUR_MS
    );

    // A backup paced to 20 kB/s: running, its bytes counting up, in /v1/jobs and sys.jobs.
    let paced = dir.path().join("paced-backup");
    let paced_text = paced.to_string_lossy().into_owned();
    let id = start(
        &node,
        &[
            "backup",
            "--to",
            &paced_text,
            "--no-wait",
            "--max-bytes-per-s",
            "20000",
        ],
    );
    let running = job_until(&node, id, "the backup never counted a byte", |j| {
        j["bytes_done"].as_u64() > Some(0)
    });
    assert_eq!(running["state"], "running", "{running}");
    let (done, total) = (
        running["bytes_done"].as_u64().unwrap_or(0),
        running["bytes_total"].as_u64().unwrap_or(0),
    );
    assert!(done < total, "paced: {running}");
    let rows = node.sql(&format!(
        "SELECT kind, state, bytes_total, destination FROM sys.jobs WHERE id = {id}"
    ));
    assert_eq!(
        (rows[0]["kind"].as_str(), rows[0]["state"].as_str()),
        (Some("backup"), Some("running")),
        "{rows:?}"
    );
    assert_eq!(rows[0]["bytes_total"].as_u64(), Some(total), "{rows:?}");
    assert!(
        rows[0]["destination"]
            .as_str()
            .is_some_and(|d| d.contains(&paced_text)),
        "{rows:?}"
    );

    // Cancelled: the job says so, and the copy stops and removes its directory.
    let (code, _, err) = node.cli(&["jobs", "cancel", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    let ended = job_until(&node, id, "the cancel never applied", |j| {
        j["state"] != "running"
    });
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .is_some_and(|e| e.contains("cancelled by")),
        "{ended}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while paced.exists() {
        assert!(
            Instant::now() < deadline,
            "the cancelled backup left {:?}",
            files_under(&paced)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Cancelling it again is a conflict that names why.
    let (code, _, err) = node.cli(&["jobs", "cancel", &id.to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains("not running"), "{err}");

    // An export cancelled the same way leaves no file behind.
    let export = dir.path().join("paced-export");
    let export_text = export.to_string_lossy().into_owned();
    let args = [
        "export",
        "--datasource",
        "shop",
        "--interval",
        &interval,
        "--to",
        &export_text,
    ];
    let id = start(
        &node,
        &[&args[..], &["--no-wait", "--max-bytes-per-s", "2000"]].concat(),
    );
    let running = job_until(&node, id, "the export never read a batch", |j| {
        j["batches_done"].as_u64() > Some(0)
    });
    assert_eq!(running["kind"], "export", "{running}");
    assert!(
        running["batches_done"].as_u64() < running["batches_total"].as_u64(),
        "paced: {running}"
    );
    assert!(
        running["events"].as_u64() > Some(0),
        "rows so far: {running}"
    );
    assert_eq!(
        node.post(&format!("/v1/jobs/{id}/cancel"), b"", &[]).status,
        200
    );
    job_until(&node, id, "the export's cancel never applied", |j| {
        j["state"] == "cancelled"
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !files_under(&export).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the cancelled export left {:?}",
            files_under(&export)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A node killed mid-export: back up, it cancels the job it left running and removes the
    // export's unfinished files.
    let id = start(
        &node,
        &[&args[..], &["--no-wait", "--max-bytes-per-s", "2000"]].concat(),
    );
    job_until(&node, id, "the export never read a batch", |j| {
        j["batches_done"].as_u64() > Some(0)
    });
    let temporary = format!(".parquet.{id}.tmp");
    assert!(
        files_under(&export).iter().any(|f| f.ends_with(&temporary)),
        "{:?}",
        files_under(&export)
    );
    node.kill9();
    node = TestNode::start(&data);
    let ended = job_until(&node, id, "the restarted node never ended its copy", |j| {
        j["state"] != "running"
    });
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert!(
        ended["error"]
            .as_str()
            .is_some_and(|e| e.contains("restarted")),
        "{ended}"
    );
    assert!(
        files_under(&export).is_empty(),
        "{:?}",
        files_under(&export)
    );

    // Run to its end, an export counts every byte it read and every row; a backup too.
    let (code, out, err) = node.cli(&args);
    assert_eq!(code, 0, "{err}");
    let job: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(job["state"], "published", "{job}");
    assert_eq!(job["events"], 2000, "{job}");
    assert_eq!(job["batches_done"], job["batches_total"], "{job}");
    assert!(
        job["bytes_done"].as_u64() > Some(0) && job["bytes_done"] == job["bytes_total"],
        "{job}"
    );
    // The same export again into the same directory would overwrite it: refused, naming the
    // file, and the files stay as they were.
    let before: Vec<(String, u64)> = files_under(&export)
        .into_iter()
        .map(|f| (f.clone(), std::fs::metadata(&f).map_or(0, |m| m.len())))
        .collect();
    let exports = || node.sql_i64("SELECT COUNT(*) FROM sys.jobs WHERE kind = 'export'");
    let logged = exports();
    let (code, _, err) = node.cli(&args);
    assert_ne!(code, 0);
    assert!(
        err.contains("already exists") && err.contains(".parquet"),
        "{err}"
    );
    assert_eq!(exports(), logged, "refused before a job was logged");
    let after: Vec<(String, u64)> = files_under(&export)
        .into_iter()
        .map(|f| (f.clone(), std::fs::metadata(&f).map_or(0, |m| m.len())))
        .collect();
    assert_eq!(after, before, "the earlier export is untouched");
    let (code, _, err) = node.cli(&[
        "backup",
        "--to",
        &dir.path().join("x").to_string_lossy(),
        "--max-bytes-per-s",
        "0",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("max_bytes_per_s must be at least 1"), "{err}");
    let full = dir.path().join("full-backup");
    let (code, out, err) = node.cli(&["backup", "--to", &full.to_string_lossy()]);
    assert_eq!(code, 0, "{err}");
    let job: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(job["state"], "published", "{job}");
    assert!(
        job["bytes_done"].as_u64() > Some(0) && job["bytes_done"] == job["bytes_total"],
        "{job}"
    );
    let on_disk: u64 = files_under(&full)
        .iter()
        .filter(|f| !f.ends_with("BACKUP.json"))
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    assert_eq!(
        job["bytes_done"].as_u64(),
        Some(on_disk),
        "bytes counted vs written: {job}"
    );
}
