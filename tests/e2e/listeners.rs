//! No client may take the file descriptors a node needs (issue 20). A node held to 200
//! descriptors keeps half for storage and Raft: a flood of Kafka and Flight SQL connections
//! is closed at accept past the doors' lowered limits, while the node goes on writing
//! segments and checkpoints (each needs new descriptors), answers its existing clients and
//! reports itself healthy; once the flood ends the same ports take new clients.
//!
//! (CI once caught what happened before: the flood took every descriptor, the next
//! checkpoint failed with "Too many open files", and the node stopped taking writes for good.)

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use tidemark_loadgen::kafka::KafkaConn;

use crate::harness::{TestNode, metric_value};
use crate::now_ms;

fn refused(node: &TestNode, door: &str) -> f64 {
    let name = format!("tidemark_{door}_connections_refused_by_limit_total{{limit=\"connections_max\"}}");
    metric_value(&node.get("/metrics").body, &name).unwrap_or(0.0)
}

#[test]
fn a_connection_flood_cannot_take_the_descriptors_storage_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_with_fd_limit(dir.path(), 200);
    // 200 descriptors: 100 for connections, split evenly over the three doors.
    assert!(node.log_text().contains("connection limits lowered"), "{}", node.log_text());
    let mut kafka = KafkaConn::connect(&node.kafka).expect("connect");
    kafka.init_producer_id().expect("the Kafka port answers");

    let mut flood = Vec::new();
    for addr in [&node.kafka, &node.flight] {
        for _ in 0..300 {
            match TcpStream::connect(addr) {
                Ok(c) => flood.push(c),
                Err(_) => break,
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while refused(&node, "kafka") == 0.0 || refused(&node, "flight") == 0.0 {
        assert!(Instant::now() < deadline, "the flood was never refused:\n{}", node.get("/metrics").body);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(node.log_text().contains("kafka.connections_max 10000, lowered to 33"), "{}", node.log_text());

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
    while node.sql_i64("SELECT COALESCE(SUM(events), 0) FROM sys.segments WHERE datasource = 'shop'") < 300 {
        assert!(Instant::now() < deadline, "segments were never written under the flood:\n{}", node.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    kafka.init_producer_id().expect("an admitted Kafka client is still answered under the flood");
    let health = node.get("/health");
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.json()["status"], "ok", "{}", health.body);
    assert!(!node.log_text().contains("Too many open files"), "{}", node.log_text());
    drop(flood);

    // The flood gone, both ports take new clients again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = KafkaConn::connect(&node.kafka).and_then(|mut c| c.init_producer_id().map(|_| ()));
        if answered.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the Kafka port never took a client again: {answered:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut flight = crate::isolation::Flight::connect(&node.flight, None);
    let (_, answer) = flight.query("SELECT SUM(\"count\") AS n FROM shop");
    assert_eq!(answer.map(|rows| rows[0]["n"].clone()), Ok(json!(300)), "Flight SQL answers again");
}
