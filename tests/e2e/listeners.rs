//! A listener never dies silently (issue 20): a node out of file descriptors keeps its Kafka
//! port, reports it on `/health` while `accept` fails, and takes connections again once
//! descriptors are free.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tidemark_loadgen::kafka::KafkaConn;

use crate::harness::{TestNode, metric_value};

/// `GET /health` over a connection the node accepted before it ran out of descriptors.
fn health_over(conn: &mut TcpStream) -> String {
    let _ = conn.write_all(b"GET /health HTTP/1.1\r\nHost: tidemark\r\n\r\n");
    let mut buf = vec![0u8; 8192];
    let n = conn.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn the_kafka_port_survives_running_out_of_file_descriptors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start_with_fd_limit(dir.path(), 200);
    let mut kafka = KafkaConn::connect(&node.kafka).expect("connect");
    kafka.init_producer_id().expect("the Kafka port answers");
    let mut http = TcpStream::connect(&node.http).expect("http");
    http.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    assert!(health_over(&mut http).contains("\"kafka\":\"ok\""), "the Kafka listener starts ok");

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
        if h.contains("failing: ") || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(failing.contains("the Kafka port cannot accept connections"), "/health reports the listener: {failing}");
    drop(flood);

    // Descriptors free again: the same port takes a new client.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = KafkaConn::connect(&node.kafka).and_then(|mut c| c.init_producer_id().map(|_| ()));
        if answered.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Kafka port never took a connection again: {answered:?}\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = node.get("/metrics").body;
    assert!(metric_value(&metrics, "tidemark_kafka_accept_errors_total").unwrap_or(0.0) > 0.0, "{metrics}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health_over(&mut http).contains("\"kafka\":\"ok\"") {
        assert!(Instant::now() < deadline, "/health never cleared the listener's failure");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(node.log_text().contains("the Kafka port accepts connections again"));
}
