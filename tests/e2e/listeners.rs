//! No client may take the file descriptors a node needs. A node held to 200
//! descriptors keeps half for storage and Raft: a flood of Kafka, Flight SQL and Raft-port
//! connections is closed at accept past the doors' lowered limits, while the node goes on writing
//! segments and checkpoints (each needs new descriptors), answers its existing clients and
//! reports itself healthy; once the flood ends the same ports take new clients.
//!
//! (CI once caught what happened before: the flood took every descriptor, the next
//! checkpoint failed with "Too many open files", and the node stopped taking writes for good.)
//!
//! And when an operator gives connections every descriptor (`descriptors_reserved = 0`), so
//! a flood does exhaust them: the Kafka port reports on `/health` while `accept` fails, a
//! checkpoint that fails for want of a descriptor is retried rather than stopping the node,
//! and once the flood ends the same port takes clients and the node takes writes again.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use tidemark_loadgen::kafka::KafkaConn;

use crate::harness::{TestNode, metric_value};
use crate::now_ms;

/// Waits up to 30 s for the Kafka port to answer a new client.
fn kafka_answers_again(node: &TestNode) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered =
            KafkaConn::connect(&node.kafka).and_then(|mut c| c.init_producer_id().map(|_| ()));
        if answered.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the Kafka port never took a client again: {answered:?}\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn refused(node: &TestNode, door: &str) -> f64 {
    let name =
        format!("tidemark_{door}_connections_refused_by_limit_total{{limit=\"connections_max\"}}");
    metric_value(&node.get("/metrics").body, &name).unwrap_or(0.0)
}

#[test]
fn a_connection_flood_cannot_take_the_descriptors_storage_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_with_fd_limit(dir.path(), 200, &[]);
    // 200 descriptors: at most 100 for connections (less if storage holds many open at
    // start), split evenly over the three doors.
    assert!(
        node.log_text().contains("connection limits lowered"),
        "{}",
        node.log_text()
    );
    let mut kafka = KafkaConn::connect(&node.kafka).expect("connect");
    kafka.init_producer_id().expect("the Kafka port answers");

    let mut flood = Vec::new();
    for addr in [&node.kafka, &node.flight, &node.raft] {
        for _ in 0..300 {
            match TcpStream::connect(addr) {
                Ok(c) => flood.push(c),
                Err(_) => break,
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused(&node, "kafka") == 0.0 || refused(&node, "flight") == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the flood was never refused:\n{}",
            node.get("/metrics").body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        node.log_text()
            .contains("kafka.connections_max 10000, lowered to "),
        "{}",
        node.log_text()
    );
    while !node
        .log_text()
        .contains("the Raft port has its most connections open")
    {
        assert!(
            Instant::now() < deadline,
            "the Raft port never refused the flood:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Under the flood: a new datasource (a catalog change, checkpointed) and closed hours of
    // beacons (segments written, then checkpointed) need descriptors, and get them.
    let spec = json!({
        "name": "shop",
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": ["merchant_id"],
        "metrics": [{"name": "count", "type": "count"}],
        "late_window": "PT1M",
    });
    let r = node.post("/v1/datasources", spec.to_string().as_bytes(), &[]);
    assert!(r.status == 200 || r.status == 201, "{}", r.body);
    let hour = 3_600_000;
    let lines: Vec<String> = (0..300)
        .map(|i| {
            json!({"ts": now_ms() / hour * hour - 3 * hour + i * 20_000, "merchant_id": format!("m{}", i % 3)})
                .to_string()
        })
        .collect();
    let r = node.post("/v1/beacons/shop", lines.join("\n").as_bytes(), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(60);
    while node
        .sql_i64("SELECT COALESCE(SUM(events), 0) FROM sys.segments WHERE datasource = 'shop'")
        < 300
    {
        assert!(
            Instant::now() < deadline,
            "segments were never written under the flood:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    kafka
        .init_producer_id()
        .expect("an admitted Kafka client is still answered under the flood");
    let health = node.get("/health");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["status"], "ok", "{}", health.body);
    assert!(
        !node.log_text().contains("Too many open files"),
        "{}",
        node.log_text()
    );
    drop(flood);

    // The flood gone, both ports take new clients again.
    kafka_answers_again(&node);
    let mut flight = crate::isolation::Flight::connect(&node.flight, None);
    let (_, answer) = flight.query("SELECT SUM(\"count\") AS n FROM shop");
    assert_eq!(
        answer.map(|rows| rows[0]["n"].clone()),
        Ok(json!(300)),
        "Flight SQL answers again"
    );
}

/// `GET /health` over a connection the node accepted before it ran out of descriptors.
fn health_over(conn: &mut TcpStream) -> String {
    let _ = conn.write_all(b"GET /health HTTP/1.1\r\nHost: tidemark\r\n\r\n");
    let mut buf = vec![0u8; 8192];
    let n = conn.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn a_node_out_of_descriptors_keeps_its_kafka_port_and_takes_writes_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tidemark.toml");
    // Every descriptor to connections, nearly all of them to Kafka's door.
    let toml = "[limits]\ndescriptors_reserved = 0\n[http]\nconnections_max = 10\n[flight]\nconnections_max = 1\n";
    std::fs::write(&config, toml).expect("config");
    let data = dir.path().join("data");
    let node = TestNode::start_with_fd_limit(&data, 200, &["--config", &config.to_string_lossy()]);
    let mut kafka = KafkaConn::connect(&node.kafka).expect("connect");
    kafka.init_producer_id().expect("the Kafka port answers");
    let mut http = TcpStream::connect(&node.http).expect("http");
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    assert!(
        health_over(&mut http).contains("\"kafka\":\"ok\""),
        "the Kafka listener starts ok"
    );

    // Connections past the node's descriptors: the kernel queues them, accept fails.
    let mut flood = Vec::new();
    for _ in 0..400 {
        match TcpStream::connect(&node.kafka) {
            Ok(c) => flood.push(c),
            Err(_) => break,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let failing = loop {
        let h = health_over(&mut http);
        if h.contains("\"kafka\":\"failing: ") || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        failing.contains("Too many open files"),
        "/health reports the listener: {failing}"
    );
    drop(flood);

    // Descriptors free again: the same port takes a new client, and the node writes.
    kafka_answers_again(&node);
    // New HTTP connections may still meet the tail of the shortage for a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        match node.try_get("/metrics") {
            Ok(r) if r.status == 200 => break r.body,
            other => assert!(
                Instant::now() < deadline,
                "/metrics never answered: {:?}",
                other.map(|r| r.status)
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        metric_value(&metrics, "tidemark_kafka_accept_errors_total").unwrap_or(0.0) > 0.0,
        "{metrics}"
    );
    loop {
        let health = node.try_get("/health").map(|r| r.body).unwrap_or_default();
        if health.contains("\"status\":\"ok\"") {
            break;
        }
        assert!(Instant::now() < deadline, "/health never cleared: {health}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        node.log_text()
            .contains("the Kafka port accepts connections again")
    );
    // A new HTTP connection may still be refused for a moment (this test leaves the HTTP door
    // ten places); the write itself must be taken.
    let line = json!({"ts": now_ms(), "merchant_id": "m1"}).to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match node.try_post("/v1/beacons/beacons", line.as_bytes(), &[]) {
            Ok(r) => {
                assert_eq!(
                    r.status, 200,
                    "the node takes writes after running out of descriptors: {}",
                    r.body
                );
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "the beacon was never taken: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        node.log_text()
            .lines()
            .all(|l| !l.contains("node stopped accepting writes")),
        "{}",
        node.log_text()
    );
}
