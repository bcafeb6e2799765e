//! TLS on the client-facing listeners against the real binary, with real clients trusting a
//! test CA (made with the `openssl` CLI): HTTPS (ureq, the CLI), Flight SQL over TLS (ADBC's
//! `grpc+tls://`), Kafka over SSL (kcat, confluent-kafka) and SASL_SSL with PLAIN
//! (kafka-python). Plain-text clients get nothing from a TLS port, and a client that does not
//! trust the CA is refused by its own TLS check.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::harness::{TestNode, python};

/// A test CA and a node certificate it signs, valid for 127.0.0.1–3 and localhost.
pub(crate) struct Certs {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn make_certs(dir: &Path) -> Certs {
    std::fs::create_dir_all(dir).expect("certs dir");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tidemark-test-ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-new"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "node.key",
        "-out",
        "node.csr",
        "-subj",
        "/CN=tidemark-node",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("node.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2,IP:127.0.0.3\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .expect("ext file");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "node.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "node.ext",
            "-out",
            "node.pem",
        ],
    );
    Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("node.pem"),
        key: dir.join("node.key"),
    }
}

/// What a plain-text HTTP request to `addr` gets back (nothing that is HTTP, from a TLS port).
fn plain_http_answer(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

fn run_python(code: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const ADBC_TLS: &str = r#"
import sys, adbc_driver_flightsql.dbapi as flight_sql
uri, ca = sys.argv[1], open(sys.argv[2]).read()
with flight_sql.connect(uri, db_kwargs={"adbc.flight.sql.client_option.tls_root_certs": ca}) as conn, conn.cursor() as cur:
    cur.execute('SELECT SUM("count") AS c FROM tls_ds')
    print(cur.fetch_arrow_table().column("c").to_pylist()[0])
"#;

const CONFLUENT_SSL: &str = r#"
import sys, json
from confluent_kafka import Producer, Consumer, TopicPartition
boot, ca, topic = sys.argv[1:4]
common = {"bootstrap.servers": boot, "security.protocol": "SSL", "ssl.ca.location": ca}
p = Producer(dict(common, acks="all"))
for i in range(20):
    p.produce(topic, json.dumps({"ts": int(sys.argv[4]), "merchant_id": "ssl", "n": i}).encode())
assert p.flush(30) == 0
c = Consumer(dict(common, **{"group.id": "tls-probe", "auto.offset.reset": "earliest", "enable.auto.commit": False}))
c.assign([TopicPartition(topic, 0, 0)])
got = 0
import time
deadline = time.time() + 30
while time.time() < deadline:
    for m in c.consume(num_messages=100, timeout=1.0):
        if m.error():
            raise RuntimeError(str(m.error()))
        got += 1
    if got >= 25:
        break
c.close()
print(got)
"#;

const KAFKA_PYTHON_SASL_SSL_PLAIN: &str = r#"
import sys, json, ssl
from kafka import KafkaProducer
boot, ca, token, topic, ts = sys.argv[1:6]
p = KafkaProducer(bootstrap_servers=boot, security_protocol="SASL_SSL", ssl_cafile=ca,
                  sasl_mechanism="PLAIN", sasl_plain_username="ignored", sasl_plain_password=token, acks="all")
for i in range(5):
    p.send(topic, json.dumps({"ts": int(ts), "merchant_id": "sasl", "n": i}).encode()).get(timeout=30)
p.close()
print(5)
"#;

#[test]
fn tls_listeners_serve_https_flight_sql_and_kafka_to_real_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&dir.path().join("certs"));
    let mut node = TestNode::start_tls(
        &dir.path().join("data"),
        &certs.ca,
        &certs.cert,
        &certs.key,
        &[],
    );
    let spec = json!({
        "name": "tls_ds",
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": ["merchant_id"],
        "metrics": [{"name": "count", "type": "count"}],
        "partitions": 1,
    });
    // HTTPS: the API, beacons and SQL.
    let r = node.post("/v1/datasources", spec.to_string().as_bytes(), &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    let now = crate::now_ms();
    let lines: Vec<String> = (0..5)
        .map(|i| json!({"ts": now, "merchant_id": "https", "n": i}).to_string())
        .collect();
    assert_eq!(
        node.post("/v1/beacons/tls_ds", lines.join("\n").as_bytes(), &[])
            .status,
        200
    );
    assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM tls_ds"), 5);
    // The CLI over https, trusting the CA through TIDEMARK_CA_CERT (the harness sets it).
    let (code, out, err) = node.cli(&["datasource", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("tls_ds"), "{out}");
    // A plain-text client gets no HTTP answer from the TLS port.
    let answer = plain_http_answer(&node.http);
    assert!(
        !answer.contains("HTTP/1.1 200"),
        "plain HTTP was served: {answer}"
    );
    // A client that does not trust the CA refuses the node's certificate itself.
    let untrusting = Command::new(crate::harness::tidemark_bin())
        .args(["datasource", "list"])
        .env("TIDEMARK_URL", node.url(""))
        .env_remove("TIDEMARK_CA_CERT")
        .output()
        .expect("run the CLI");
    assert!(!untrusting.status.success());
    let err = String::from_utf8_lossy(&untrusting.stderr);
    assert!(
        err.contains("UnknownIssuer") || err.to_lowercase().contains("certificate"),
        "{err}"
    );

    // Flight SQL over TLS with ADBC.
    let ca = certs.ca.to_string_lossy().into_owned();
    let flight = format!("grpc+tls://{}", node.flight);
    assert_eq!(run_python(ADBC_TLS, &[&flight, &ca]), "5");

    // Kafka over SSL: confluent-kafka produces 20 and reads everything back; kcat reads too.
    let got = run_python(
        CONFLUENT_SSL,
        &[&node.kafka, &ca, "tls_ds", &now.to_string()],
    );
    assert_eq!(got, "25", "5 HTTPS beacons and 20 produced over SSL");
    let kcat = std::env::var("TIDEMARK_KCAT").unwrap_or_else(|_| "kcat".into());
    let out = Command::new(kcat)
        .args([
            "-C",
            "-b",
            &node.kafka,
            "-t",
            "tls_ds",
            "-o",
            "beginning",
            "-e",
            "-q",
        ])
        .args([
            "-X",
            "security.protocol=SSL",
            "-X",
            &format!("ssl.ca.location={ca}"),
        ])
        .output()
        .expect("run kcat");
    assert!(
        out.status.success(),
        "kcat over SSL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 25);
    assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM tls_ds"), 25);

    // With keys: SASL PLAIN over TLS (SASL_SSL) with kafka-python.
    let (code, out, err) = node.cli(&[
        "keys",
        "create",
        "--name",
        "tls-admin",
        "--role",
        "admin",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let key: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let token = key["token"].as_str().unwrap_or_default().to_string();
    let sent = run_python(
        KAFKA_PYTHON_SASL_SSL_PLAIN,
        &[&node.kafka, &ca, &token, "tls_ds", &now.to_string()],
    );
    assert_eq!(sent, "5");
    let total = node.post(
        "/v1/sql",
        b"SELECT SUM(\"count\") AS c FROM tls_ds",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "text/plain"),
        ],
    );
    assert_eq!(total.status, 200, "{}", total.body);
    assert_eq!(total.json()[0]["c"], 30);
    node.stop();
}

const RAFT_CLIENT: &str = r#"
import socket, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
if len(sys.argv) > 5:
    ctx.load_cert_chain(sys.argv[4], sys.argv[5])
ctx.set_alpn_protocols(["h2"])
try:
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=5), server_hostname=host)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    data = s.recv(100)
    print("refused" if not data else "served")
except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
    print("refused")
"#;

#[test]
fn cluster_nodes_speak_mutual_tls_and_forward_over_https() {
    use crate::harness::MemberAddrs;
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = make_certs(&dir.path().join("certs"));
    let (cert, key, ca) = (
        certs.cert.to_string_lossy().into_owned(),
        certs.key.to_string_lossy().into_owned(),
        certs.ca.to_string_lossy().into_owned(),
    );
    let tls = [
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--tls-ca",
        ca.as_str(),
    ];
    let (a1, a2) = (MemberAddrs::new(1), MemberAddrs::new(2));
    let mut n1 = TestNode::start_member(&dir.path().join("n1"), &a1, None, &tls);
    n1.trust(&certs.ca);
    n1.wait_healthy();
    let mut n2 = TestNode::start_member(&dir.path().join("n2"), &a2, Some(&a1.http), &tls);
    n2.trust(&certs.ca);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let voters = n1.get("/v1/cluster").json()["voters"]
            .as_object()
            .map_or(0, |v| v.len());
        if voters == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 never joined over TLS:\n{}",
            n2.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    n2.wait_healthy();
    let spec = json!({
        "name": "mtls",
        "timestamp": {"field": "ts"},
        "granularity": {"query": "PT1M", "segment": "PT1H"},
        "dimensions": ["merchant_id"],
        "metrics": [{"name": "count", "type": "count"}],
    });
    // Writes to the follower are forwarded to the leader over HTTPS, replicated over mutual TLS.
    let r = n2.post("/v1/datasources", spec.to_string().as_bytes(), &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    let now = crate::now_ms();
    let lines: Vec<String> = (0..7)
        .map(|i| json!({"ts": now, "merchant_id": "m", "n": i}).to_string())
        .collect();
    let r = n2.post("/v1/beacons/mtls", lines.join("\n").as_bytes(), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    for n in [&n1, &n2] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while n.sql_i64("SELECT COALESCE(SUM(\"count\"), 0) FROM mtls") != 7 {
            assert!(std::time::Instant::now() < deadline, "not replicated");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // A node's Raft port speaks TLS and wants a client certificate the CA signed: with the
    // node certificate the h2 server answers; trusting the CA without one gets nothing.
    let (host, port) = a1.raft.rsplit_once(':').expect("host:port");
    assert_eq!(
        run_python(RAFT_CLIENT, &[host, port, &ca, &cert, &key]),
        "served"
    );
    assert_eq!(run_python(RAFT_CLIENT, &[host, port, &ca]), "refused");
    n2.stop();
    n1.stop();
}
