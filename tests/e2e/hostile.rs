//! The hostile-client run: every attack the limits answer, at once, against one
//! node, while a well-behaved client keeps sending beacons and reading them back. The node
//! must stay healthy, the good client must get every answer right, and the node's memory
//! must stay under its configured query budget plus what a node needs anyway.
//!
//! Attacks: a Kafka connection flood, oversized and trickled Kafka frames, HTTP headers
//! trickled in (slowloris), allocation queries over HTTP and Flight SQL, deeply nested SQL,
//! and answers far past their caps. `TIDEMARK_HOSTILE_SECS` (default 8) sets the length;
//! the same run longer is `TIDEMARK_HOSTILE_SECS=600 cargo test --test e2e hostile`.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::TestNode;
use crate::{ndjson, now_ms, traffic};

const CONFIG: &str = "[limits]
query_memory_bytes_max = 134217728
node_query_memory_bytes_max = 268435456
result_rows_max = 200000
result_bytes_max = 8000000

[kafka]
connections_per_address_max = 100
request_read_timeout_ms = 1500

[http]
connections_per_address_max = 200
header_read_timeout_ms = 1500
";

fn until(stop: &AtomicBool, mut attack: impl FnMut()) {
    while !stop.load(Ordering::Relaxed) {
        attack();
    }
}

fn sql(node: &TestNode, q: &str) -> u16 {
    node.try_post("/v1/sql", q.as_bytes(), &[("Content-Type", "text/plain")])
        .map_or(0, |r| r.status)
}

#[test]
fn a_node_under_every_attack_at_once_keeps_serving_a_good_client() {
    let secs: u64 = std::env::var("TIDEMARK_HOSTILE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, CONFIG).expect("config");
    let config = config.to_string_lossy().to_string();
    let node = TestNode::start_with(&dir.path().join("data"), &["--config", &config]);
    let stop = AtomicBool::new(false);
    let attacks = AtomicU64::new(0);
    let peak_rss_kib = AtomicU64::new(0);

    let count = || {
        attacks.fetch_add(1, Ordering::Relaxed);
    };
    let (sent, read_back) = std::thread::scope(|s| {
        s.spawn(|| {
            until(&stop, || {
                let conns: Vec<TcpStream> = (0..150)
                    .filter_map(|_| TcpStream::connect(&node.kafka).ok())
                    .collect();
                std::thread::sleep(Duration::from_millis(300));
                drop(conns);
                count();
            })
        });
        s.spawn(|| {
            until(&stop, || {
                // A 50 MB frame, trickled: cut by the read timeout, never buffered whole.
                if let Ok(mut c) = TcpStream::connect(&node.kafka) {
                    let _ = c.write_all(&50_000_000i32.to_be_bytes());
                    for _ in 0..10 {
                        if c.write_all(&[0u8; 16]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
                count();
            })
        });
        s.spawn(|| {
            until(&stop, || {
                let mut slow: Vec<TcpStream> = (0..20)
                    .filter_map(|_| TcpStream::connect(&node.http).ok())
                    .collect();
                for c in &mut slow {
                    let _ = c.write_all(b"POST /v1/sql HTTP/1.1\r\nHost: x\r\n");
                }
                std::thread::sleep(Duration::from_millis(500));
                count();
            })
        });
        s.spawn(|| {
            let mut flight = crate::isolation::Flight::connect(&node.flight, None);
            let nested = format!("SELECT {}1{} AS x", "(".repeat(5000), ")".repeat(5000));
            until(&stop, || {
                for q in [
                    "SELECT length(repeat(arrow_cast('x', 'LargeUtf8'), 1000000000000000))",
                    "SELECT cardinality(generate_series(TIMESTAMP '1970-01-01', TIMESTAMP '2200-01-01', INTERVAL '1 second'))",
                    nested.as_str(),
                ] {
                    assert_eq!(sql(&node, q), 400, "{}", &q[..q.len().min(80)]);
                    assert!(flight.query(q).1.is_err());
                }
                count();
            })
        });
        s.spawn(|| {
            until(&stop, || {
                // Answers far past their caps: cut, streamed, never collected.
                let r = node.try_post(
                    "/v1/sql",
                    b"SELECT value, repeat('x', 50) AS pad FROM generate_series(1, 3000000000)",
                    &[("Content-Type", "text/plain"), ("Accept", "text/csv")],
                );
                if let Ok(r) = r {
                    assert!(r.body.ends_with("(limits.result_bytes_max) and was cut there; aggregate, filter, select fewer columns or add a LIMIT\n"));
                }
                count();
            })
        });
        s.spawn(|| {
            until(&stop, || {
                peak_rss_kib.fetch_max(node.rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            })
        });

        // The good client: a batch of beacons every 200 ms, each acknowledged, then read back.
        let start = now_ms() - 60_000;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut sent = 0u64;
        let mut round = 0u64;
        while Instant::now() < deadline {
            let batch = traffic(round, 20, start, 50_000, 50);
            let r = node.post("/v1/beacons/beacons", &ndjson(&batch), &[]);
            assert_eq!(r.status, 200, "round {round}: {}", r.body);
            sent += batch.len() as u64;
            round += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        let read_back = node.sql_i64("SELECT SUM(\"count\") FROM beacons");
        stop.store(true, Ordering::Relaxed);
        (sent, read_back)
    });

    assert_eq!(
        read_back, sent as i64,
        "every acknowledged beacon is counted"
    );
    assert!(attacks.load(Ordering::Relaxed) > 5, "the attacks ran");
    assert_eq!(node.get("/health").status, 200);
    let peak_mib = peak_rss_kib.load(Ordering::Relaxed) / 1024;
    // The query budget is 256 MiB; the rest of a node (debug build, RocksDB, Raft) stays
    // well under a few hundred more.
    assert!(
        peak_mib < 1024,
        "the node's memory peaked at {peak_mib} MiB"
    );
    eprintln!(
        "hostile run: {secs} s, {} attack rounds, {sent} beacons acknowledged and counted, peak RSS {peak_mib} MiB",
        attacks.load(Ordering::Relaxed)
    );
}
