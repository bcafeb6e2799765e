//! Connection bounds on the Kafka and HTTP doors, against the real binary:
//! a flood from one address is cut at its limit while other clients carry on, an idle or
//! trickling connection is closed, and before logging in a Kafka client cannot make the node
//! buffer a large frame. Before these bounds the node read a 100 MiB frame before checking
//! the login, and kept any number of connections open forever.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{TestNode, metric_value};

const CONFIG: &str = "[kafka]
unauthenticated_request_bytes_max = 4096
connections_per_address_max = 20
idle_timeout_ms = 3000
request_read_timeout_ms = 1000

[http]
connections_per_address_max = 20
header_read_timeout_ms = 1500
";

fn node(dir: &std::path::Path) -> TestNode {
    let path = dir.join("node.toml");
    std::fs::write(&path, CONFIG).expect("config");
    let path = path.to_string_lossy().to_string();
    TestNode::start_with(&dir.join("data"), &["--config", &path])
}

/// Whether the node closed `conn` within `within` (EOF or reset), rather than keeping it.
fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        conn.set_read_timeout(Some(left)).expect("read timeout");
        match conn.read(&mut buf) {
            Ok(0) => return true,
            // An answer (HTTP 408, say) is not the end; what follows is.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

fn metric(node: &TestNode, name: &str) -> f64 {
    metric_value(&node.get("/metrics").body, name).unwrap_or(-1.0)
}

/// A Kafka ApiVersions v0 request: the node answers it without a login.
fn api_versions_works(addr: &str) -> bool {
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return false;
    };
    let client = b"probe";
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&7i32.to_be_bytes()); // correlation id
    body.extend_from_slice(&(client.len() as i16).to_be_bytes());
    body.extend_from_slice(client);
    let mut frame = (body.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    if conn.write_all(&frame).is_err() {
        return false;
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = [0u8; 8];
    conn.read_exact(&mut head).is_ok()
        && i32::from_be_bytes([head[4], head[5], head[6], head[7]]) == 7
}

/// Opens `n` connections at once and counts those the node closed straight away (all are
/// looked at together, well before any timeout could close the others).
fn flood(addr: &str, n: usize) -> (Vec<TcpStream>, usize) {
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let closed = conns
        .iter()
        .filter(|c| {
            c.set_nonblocking(true).expect("nonblocking");
            let mut buf = [0u8; 16];
            match (&**c).read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count();
    (conns, closed)
}

#[test]
fn kafka_connections_are_bounded_in_number_idleness_and_size_before_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path());

    // A flood of 25 from one address: 20 stay, 5 are closed at accept, and the refusals
    // are counted. Once the flood is gone, a client gets in again.
    let (conns, closed) = flood(&node.kafka, 25);
    assert_eq!(closed, 5, "connections closed at accept");
    assert_eq!(
        metric(
            &node,
            "tidemark_kafka_connections_refused_by_limit_total{limit=\"connections_per_address_max\"}"
        ),
        5.0
    );
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !api_versions_works(&node.kafka) {
        assert!(
            Instant::now() < deadline,
            "no Kafka client got in after the flood left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Idle: a connection that sends nothing is closed after kafka.idle_timeout_ms.
    let mut idle = TcpStream::connect(&node.kafka).expect("connect");
    let t = Instant::now();
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)),
        "an idle connection stayed open"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "closed after {:?}, before the idle timeout",
        t.elapsed()
    );

    // Trickling: a frame whose bytes stop coming is closed after the request read timeout.
    let mut slow = TcpStream::connect(&node.kafka).expect("connect");
    slow.write_all(&100_000i32.to_be_bytes()).expect("size");
    slow.write_all(b"\x00\x12").expect("two bytes");
    let t = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)),
        "a trickling request kept its connection"
    );
    assert!(
        t.elapsed() < Duration::from_millis(2800),
        "closed after {:?}: by the idle timeout, not the read timeout",
        t.elapsed()
    );

    // With keys, a frame larger than the limit before login closes the connection at its
    // size prefix, without the node reading (or buffering) its body.
    let (code, out, err) = node.cli(&["keys", "create", "--name", "root", "--role", "admin"]);
    assert_eq!(code, 0, "{err}");
    let auth = format!("Bearer {}", out.trim());
    let refused = || {
        let text = node.get_with("/metrics", &[("Authorization", &auth)]).body;
        metric_value(&text, "tidemark_kafka_connections_refused_total").unwrap_or(-1.0)
    };
    let refused_before = refused();
    let mut big = TcpStream::connect(&node.kafka).expect("connect");
    big.write_all(&100_000i32.to_be_bytes()).expect("size");
    assert!(
        closed_within(&mut big, Duration::from_millis(800)),
        "a 100000-byte frame before login was read"
    );
    // The connection's task logs and counts as it ends, just after the socket closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while refused() < refused_before + 1.0 {
        assert!(Instant::now() < deadline, "the refusal was not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(node.log_text().contains(
        "request of 100000 bytes is larger than the 4096-byte limit before logging in (kafka.unauthenticated_request_bytes_max"
    ));
    assert!(
        api_versions_works(&node.kafka),
        "small requests before login still work"
    );
    assert_eq!(node.get("/health").status, 200);
}

#[test]
fn http_connections_are_bounded_in_number_and_header_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = node(dir.path());
    assert_eq!(node.get("/health").status, 200);

    // Slowloris: headers that never finish are cut at http.header_read_timeout_ms.
    let mut slow = TcpStream::connect(&node.http).expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .expect("half the headers");
    let t = Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(10)),
        "unfinished headers kept their connection"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(1200),
        "closed after {:?}",
        t.elapsed()
    );

    // A keep-alive connection idle past the same deadline is closed too.
    let mut idle = TcpStream::connect(&node.http).expect("connect");
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    assert!(
        closed_within(&mut idle, Duration::from_secs(10)),
        "an idle keep-alive connection stayed open"
    );

    // A flood of 25 from one address: the ones past 20 (less any the test's own client
    // holds) are closed at accept and counted; other requests carry on meanwhile.
    let before = metric(
        &node,
        "tidemark_http_connections_refused_by_limit_total{limit=\"connections_per_address_max\"}",
    );
    let (conns, closed) = flood(&node.http, 25);
    assert!((5..=7).contains(&closed), "{closed} closed at accept");
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = node.try_get("/metrics") {
            let after = metric_value(
                &r.body,
                "tidemark_http_connections_refused_by_limit_total{limit=\"connections_per_address_max\"}",
            )
            .unwrap_or(-1.0);
            assert_eq!(
                after - before,
                closed as f64,
                "every closed connection was counted"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HTTP did not recover after the flood left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(node.get("/health").status, 200);
}
