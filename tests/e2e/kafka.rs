//! The Kafka door with real clients: kcat (librdkafka), confluent-kafka (librdkafka),
//! kafka-python and aiokafka, installed by `dev/test`. Every client produces with acks=all
//! and idempotence in every codec, reads the records back from offset 0, and they are compared
//! record by record with what was sent; SQL over Flight SQL then returns exact totals computed
//! here. Consumer groups commit, survive a restart and resume.
//!
//! `TIDEMARK_KAFKA_RECORDS` sets records per client and codec (default 20,000; the longer run
//! uses 100,000).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use tidemark_catalog::partitioner::partition_for_key;
use tidemark_catalog::spec::DEMO_BEACONS_SPEC;
use tidemark_loadgen::Beacon;

use crate::harness::{TestNode, python};
use crate::{now_ms, traffic};

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];
const PARTITIONS: u32 = 3;

fn records_per_codec() -> usize {
    std::env::var("TIDEMARK_KAFKA_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/kafka_clients.py")
}

fn kcat() -> PathBuf {
    PathBuf::from(std::env::var("TIDEMARK_KCAT").unwrap_or_else(|_| "kcat".into()))
}

/// Runs the Python client script and returns its JSON answer.
fn py(node: &TestNode, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kafka_clients.py {args:?} failed:\n{stdout}\n{stderr}\nnode log (tail):\n{}",
        tail(&node.log_text())
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

fn create_topic(node: &TestNode, name: &str) {
    let mut spec: serde_json::Value = serde_json::from_str(DEMO_BEACONS_SPEC).expect("demo spec");
    spec["name"] = serde_json::json!(name);
    spec["partitions"] = serde_json::json!(PARTITIONS);
    let r = node.post("/v1/datasources", spec.to_string().as_bytes(), &[]);
    assert_eq!(r.status, 201, "{}", r.body);
}

/// What was sent, per record: key, value, and the seq header.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Sent {
    key: String,
    value: String,
    timestamp: Option<i64>,
}

/// Writes `key TAB value TAB timestamp` lines for the clients.
fn write_records(path: &Path, beacons: &[Beacon]) -> Vec<Sent> {
    let mut text = String::new();
    let mut sent = Vec::with_capacity(beacons.len());
    for b in beacons {
        let value = b.to_json().to_string();
        text.push_str(&format!("{}\t{}\t{}\n", b.merchant_id, value, b.ts_ms));
        sent.push(Sent {
            key: b.merchant_id.clone(),
            value,
            timestamp: Some(b.ts_ms),
        });
    }
    std::fs::write(path, text).expect("write records");
    sent
}

#[derive(Debug, Clone)]
struct Got {
    partition: u32,
    offset: i64,
    sent: Sent,
    headers: Vec<(String, Option<String>)>,
}

fn read_consumed(path: &Path, with_timestamps: bool) -> Vec<Got> {
    let text = std::fs::read_to_string(path).expect("consumed file");
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            Got {
                partition: v["partition"].as_u64().expect("partition") as u32,
                offset: v["offset"].as_i64().expect("offset"),
                sent: Sent {
                    key: v["key"].as_str().unwrap_or_default().to_string(),
                    value: v["value"].as_str().unwrap_or_default().to_string(),
                    timestamp: with_timestamps.then(|| v["timestamp"].as_i64().unwrap_or(-1)),
                },
                headers: v["headers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| {
                        (
                            h[0].as_str().unwrap_or_default().to_string(),
                            h[1].as_str().map(str::to_string),
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

/// kcat -C from offset 0 of every partition, as the same JSON lines the Python script writes.
fn kcat_consume(node: &TestNode, topic: &str, out: &Path) -> usize {
    let output = Command::new(kcat())
        .args([
            "-C",
            "-b",
            &node.kafka,
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%p\t%o\t%k\t%T\t%h\t%s\n",
        ])
        .output()
        .expect("run kcat");
    assert!(
        output.status.success(),
        "kcat -C failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines = String::new();
    let mut n = 0;
    for l in String::from_utf8_lossy(&output.stdout).lines() {
        let f: Vec<&str> = l.splitn(6, '\t').collect();
        assert_eq!(f.len(), 6, "kcat line: {l}");
        let headers: Vec<serde_json::Value> = f[4]
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| {
                let (k, v) = h.split_once('=').unwrap_or((h, ""));
                serde_json::json!([k, v])
            })
            .collect();
        let row = serde_json::json!({
            "partition": f[0].parse::<u32>().expect("partition"),
            "offset": f[1].parse::<i64>().expect("offset"),
            "key": f[2], "timestamp": f[3].parse::<i64>().expect("timestamp"),
            "headers": headers, "value": f[5],
        });
        lines.push_str(&row.to_string());
        lines.push('\n');
        n += 1;
    }
    std::fs::write(out, lines).expect("write consumed");
    n
}

fn kcat_produce(node: &TestNode, topic: &str, codec: &str, file: &Path) {
    // kcat reads `key TAB value` lines; the timestamp column is dropped for it.
    let text = std::fs::read_to_string(file).expect("records");
    let kv: String = text
        .lines()
        .map(|l| l.rsplit_once('\t').map_or(l, |(kv, _)| kv))
        .map(|l| format!("{l}\n"))
        .collect();
    let kv_path = file.with_extension("kv");
    std::fs::write(&kv_path, kv).expect("write kv");
    let out = Command::new(kcat())
        .args([
            "-P",
            "-b",
            &node.kafka,
            "-t",
            topic,
            "-K",
            "\t",
            "-z",
            codec,
            "-H",
            &format!("codec={codec}"),
        ])
        .args([
            "-X",
            "acks=all",
            "-X",
            "enable.idempotence=true",
            "-X",
            "partitioner=murmur2_random",
            "-l",
        ])
        .arg(&kv_path)
        .output()
        .expect("run kcat");
    assert!(
        out.status.success(),
        "kcat -P {codec} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks `got` against `sent` record by record, offsets dense per partition, partitions by
/// murmur2 of the key (all three clients are set to Java's partitioner).
fn compare(client: &str, sent: &[Sent], got: &[Got]) {
    assert_eq!(
        got.len(),
        sent.len(),
        "{client}: consumed {} of {} records",
        got.len(),
        sent.len()
    );
    let mut by_partition: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for g in got {
        by_partition.entry(g.partition).or_default().push(g.offset);
        let expected = partition_for_key(g.sent.key.as_bytes(), PARTITIONS);
        assert_eq!(
            g.partition, expected,
            "{client}: key {} went to partition {}",
            g.sent.key, g.partition
        );
    }
    for (p, mut offsets) in by_partition {
        offsets.sort_unstable();
        let dense: Vec<i64> = (0..offsets.len() as i64).collect();
        assert_eq!(
            offsets, dense,
            "{client}: partition {p} offsets are not 0..n"
        );
    }
    let mut a: Vec<&Sent> = sent.iter().collect();
    let mut b: Vec<&Sent> = got.iter().map(|g| &g.sent).collect();
    a.sort();
    b.sort();
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "{client}: a record came back different");
    }
}

fn sql_totals(node: &TestNode, topic: &str) -> (i64, f64) {
    let v = py(
        node,
        &[
            "sql",
            &format!("grpc://{}", node.flight),
            &format!("SELECT SUM(\"count\") AS c, SUM(amount_sum) AS s FROM {topic}"),
        ],
    );
    (
        v["c"].as_i64().expect("count"),
        v["s"].as_f64().unwrap_or(0.0),
    )
}

fn expected_totals(beacons: &[Beacon]) -> (i64, f64) {
    (
        beacons.len() as i64,
        beacons.iter().filter_map(|b| b.amount).sum(),
    )
}

fn assert_totals(client: &str, got: (i64, f64), want: (i64, f64)) {
    assert_eq!(got.0, want.0, "{client}: SUM(count)");
    assert!(
        (got.1 - want.1).abs() <= 1e-6 * want.1.abs().max(1.0),
        "{client}: SUM(amount) {} vs {}",
        got.1,
        want.1
    );
}

#[test]
fn real_clients_produce_every_codec_and_read_it_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let n = records_per_codec();
    let start = now_ms() - 30 * 60_000;
    for (ci, client) in ["kcat", "confluent", "kafka-python", "aiokafka"]
        .into_iter()
        .enumerate()
    {
        let topic = format!("k_{}", client.replace('-', "_"));
        create_topic(&node, &topic);
        let mut sent = Vec::new();
        let mut all = Vec::new();
        for (k, codec) in CODECS.iter().enumerate() {
            let beacons = traffic(100 + (ci * 10 + k) as u64, 500, start, 20 * 60_000, n);
            let file = dir.path().join(format!("{topic}-{codec}.tsv"));
            let mut s = write_records(&file, &beacons);
            if client == "kcat" {
                kcat_produce(&node, &topic, codec, &file);
                // kcat stamps records with the produce time: compare without timestamps.
                s.iter_mut().for_each(|r| r.timestamp = None);
            } else {
                let v = py(
                    &node,
                    &[
                        "produce",
                        client,
                        codec,
                        &node.kafka,
                        &topic,
                        &file.display().to_string(),
                    ],
                );
                assert_eq!(v["produced"], n, "{client} {codec}: {v}");
            }
            sent.extend(s);
            all.extend(beacons);
        }
        let out = dir.path().join(format!("{topic}.consumed"));
        let consumed = if client == "kcat" {
            kcat_consume(&node, &topic, &out)
        } else {
            let v = py(
                &node,
                &[
                    "consume",
                    client,
                    &node.kafka,
                    &topic,
                    &sent.len().to_string(),
                    &out.display().to_string(),
                ],
            );
            v["consumed"].as_u64().unwrap_or(0) as usize
        };
        assert_eq!(consumed, sent.len(), "{client}");
        let got = read_consumed(&out, client != "kcat");
        compare(client, &sent, &got);
        for g in &got {
            match client {
                "kcat" => assert!(
                    g.headers.iter().any(|(k, _)| k == "codec"),
                    "{client}: headers {:?}",
                    g.headers
                ),
                _ => assert_eq!(g.headers.len(), 1, "{client}: headers {:?}", g.headers),
            }
        }
        assert_totals(client, sql_totals(&node, &topic), expected_totals(&all));
    }
    assert_eq!(node.sql_i64("SELECT COUNT(*) FROM sys.rejects"), 0);
}

#[test]
fn clients_with_their_default_settings_produce_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    create_topic(&node, "k_defaults");
    let beacons = traffic(31, 100, now_ms() - 20 * 60_000, 10 * 60_000, 1_000);
    let file = dir.path().join("defaults.tsv");
    write_records(&file, &beacons);
    for client in ["confluent", "kafka-python", "aiokafka"] {
        let v = py(
            &node,
            &[
                "produce_defaults",
                client,
                &node.kafka,
                "k_defaults",
                &file.display().to_string(),
            ],
        );
        assert_eq!(v["produced"], 1000, "{client}: {v}");
    }
    let kv: String = std::fs::read_to_string(&file)
        .expect("records")
        .lines()
        .map(|l| format!("{}\n", l.rsplit_once('\t').map_or(l, |(kv, _)| kv)))
        .collect();
    std::fs::write(dir.path().join("defaults.kv"), kv).expect("kv");
    let out = Command::new(kcat())
        .args([
            "-P",
            "-b",
            &node.kafka,
            "-t",
            "k_defaults",
            "-K",
            "\t",
            "-l",
        ])
        .arg(dir.path().join("defaults.kv"))
        .output()
        .expect("kcat");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (count, sum) = expected_totals(&beacons);
    assert_totals(
        "defaults",
        sql_totals(&node, "k_defaults"),
        (4 * count, 4.0 * sum),
    );
}

#[test]
fn consumer_groups_commit_survive_a_restart_and_resume() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = TestNode::start(dir.path());
    let topic = "k_groups";
    create_topic(&node, topic);
    let start = now_ms() - 30 * 60_000;
    let first = traffic(7, 200, start, 10 * 60_000, 3_000);
    let file = dir.path().join("first.tsv");
    write_records(&file, &first);
    py(
        &node,
        &[
            "produce",
            "confluent",
            "lz4",
            &node.kafka,
            topic,
            &file.display().to_string(),
        ],
    );

    let groups = [
        ("kafka-python", "g_kafka_python"),
        ("confluent", "g_confluent"),
        ("aiokafka", "g_aiokafka"),
    ];
    for (client, group) in groups {
        let out = dir.path().join(format!("{group}-1"));
        let v = py(
            &node,
            &[
                "consume",
                client,
                &node.kafka,
                topic,
                "3000",
                &out.display().to_string(),
                group,
            ],
        );
        assert_eq!(v["consumed"], 3000, "{client}");
    }
    // kcat's balanced consumer (-G) commits as it goes.
    let out = Command::new(kcat())
        .args([
            "-b",
            &node.kafka,
            "-G",
            "g_kcat",
            "-X",
            "auto.offset.reset=earliest",
            "-e",
            "-q",
            "-f",
            "%o\n",
            topic,
        ])
        .output()
        .expect("kcat -G");
    assert!(
        out.status.success(),
        "kcat -G: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        3000,
        "kcat -G read everything once"
    );

    // Lag tools see every group and its committed offsets.
    let listed = py(&node, &["groups", &node.kafka]);
    for group in ["g_kafka_python", "g_confluent", "g_aiokafka", "g_kcat"] {
        let offsets = listed[group]
            .as_object()
            .unwrap_or_else(|| panic!("{group} not listed: {listed}"));
        let total: i64 = offsets
            .iter()
            .filter(|(k, _)| k.contains('/'))
            .filter_map(|(_, v)| v.as_i64())
            .sum();
        assert_eq!(total, 3000, "{group}: {listed}");
        assert_eq!(
            offsets["__state"], "Empty",
            "{group} has no members left: {listed}"
        );
    }

    node.stop();
    let node = TestNode::start(dir.path());
    let second = traffic(8, 200, start, 10 * 60_000, 2_000);
    let file2 = dir.path().join("second.tsv");
    write_records(&file2, &second);
    py(
        &node,
        &[
            "produce",
            "kafka-python",
            "gzip",
            &node.kafka,
            topic,
            &file2.display().to_string(),
        ],
    );
    let second_values: std::collections::BTreeSet<String> =
        second.iter().map(|b| b.to_json().to_string()).collect();
    for (client, group) in groups {
        let out = dir.path().join(format!("{group}-2"));
        let v = py(
            &node,
            &[
                "consume",
                client,
                &node.kafka,
                topic,
                "2000",
                &out.display().to_string(),
                group,
            ],
        );
        assert_eq!(v["consumed"], 2000, "{client} resumed");
        let got = read_consumed(&out, false);
        assert!(
            got.iter().all(|g| second_values.contains(&g.sent.value)),
            "{client}: after the restart the group re-read records it had committed"
        );
    }
    assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM k_groups"), 5000);

    // Admin: delete one partition's offsets of a group, delete a whole group.
    let v = py(&node, &["groups_admin", &node.kafka, topic]);
    assert_eq!(
        v["g_confluent_partitions_after_offset_delete"],
        serde_json::json!([1, 2]),
        "{v}"
    );
    let left: Vec<&str> = v["groups_after_delete"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str())
        .collect();
    assert!(
        !left.contains(&"g_kafka_python") && left.contains(&"g_confluent"),
        "{v}"
    );
    assert!(
        v["delete_unknown"]
            .as_str()
            .unwrap_or_default()
            .contains("GroupIdNotFound"),
        "{v}"
    );
}

#[test]
fn two_consumers_in_a_group_split_the_partitions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    create_topic(&node, "k_pair");
    let v = py(&node, &["group_pair", &node.kafka, "k_pair", "3000"]);
    assert_eq!(
        v["errors"],
        serde_json::json!([]),
        "no consumer failed: {v}"
    );
    assert_eq!(
        v["split"],
        true,
        "the two members split the partitions: {v}\nnode log (tail):\n{}",
        tail(&node.log_text())
    );
    assert_eq!(v["undelivered"], 0, "every record was acknowledged: {v}");
    let a: Vec<Vec<u64>> = v["assignments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            x.as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_u64)
                .collect()
        })
        .collect();
    assert!(
        a.len() == 2 && !a[0].is_empty() && !a[1].is_empty(),
        "both members own partitions: {v}"
    );
    let mut all: Vec<u64> = a.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        vec![0, 1, 2],
        "the partitions are split without overlap: {v}"
    );
    assert_eq!(
        (v["total"].as_u64(), v["distinct"].as_u64()),
        (Some(3000), Some(3000)),
        "each record once: {v}"
    );
}

#[test]
fn a_transactional_producer_is_refused_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let v = py(&node, &["transactional", &node.kafka]);
    assert_eq!(v["refused"], true, "{v}");
    // Refused, not timed out: the client gives up after 15 s (`init_transactions(15)`).
    assert!(v["seconds"].as_f64().unwrap_or(99.0) < 14.0, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("transaction"),
        "{v}"
    );
}

/// Idempotent batches from the wire-level producer in `tidemark-loadgen`, which can resend
/// the very same batch (same producer id, epoch and sequence) as a client retry does.
mod idempotence {
    use bytes::Bytes;
    use tidemark_loadgen::kafka::KafkaConn;
    use tidemark_storage::raw::compression::LZ4;
    use tidemark_storage::raw::record_batch::{Record, encode_compressed};

    use super::*;

    const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    const INVALID_PRODUCER_EPOCH: i16 = 47;
    const BATCH: usize = 100;

    fn batch(seed: u64, pid: i64, epoch: i16, seq: i32) -> Bytes {
        let records: Vec<Record> = traffic(seed, 50, now_ms() - 20 * 60_000, 10 * 60_000, BATCH)
            .iter()
            .map(|b| Record {
                timestamp_ms: b.ts_ms,
                key: Some(b.merchant_id.clone().into_bytes()),
                value: Some(b.to_json().to_string().into_bytes()),
                headers: vec![],
            })
            .collect();
        Bytes::from(encode_compressed(&records, LZ4, pid, epoch, seq).expect("batch"))
    }

    #[test]
    fn a_retried_batch_is_stored_and_counted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = TestNode::start(dir.path());
        create_topic(&node, "k_idem");
        let mut conn = KafkaConn::connect(&node.kafka).expect("connect");
        let (pid, epoch) = conn.init_producer_id().expect("producer id");
        let b0 = batch(1, pid, epoch, 0);
        let first = conn
            .produce("k_idem", &[(0, b0.clone())], -1)
            .expect("produce");
        assert_eq!((first[0].error_code, first[0].base_offset), (0, 0));
        let again = conn.produce("k_idem", &[(0, b0)], -1).expect("retry");
        assert_eq!(
            (again[0].error_code, again[0].base_offset),
            (0, 0),
            "a retry gets the original offset"
        );

        // Five in flight at once, then all five again: the second round is all duplicates.
        let round: Vec<(i32, Bytes)> = (1..=5)
            .map(|i| (0, batch(10 + i, pid, epoch, i as i32 * BATCH as i32)))
            .collect();
        for _ in 0..2 {
            let ids: Vec<i32> = round
                .iter()
                .map(|b| {
                    conn.send_produce("k_idem", std::slice::from_ref(b), -1)
                        .expect("send")
                })
                .collect();
            for (i, c) in ids.into_iter().enumerate() {
                let ack = conn.read_produce(c).expect("ack");
                assert_eq!(
                    (ack[0].error_code, ack[0].base_offset),
                    (0, (i as i64 + 1) * BATCH as i64)
                );
            }
        }
        let gap = conn
            .produce("k_idem", &[(0, batch(99, pid, epoch, 10_000))], -1)
            .expect("gap");
        assert_eq!(gap[0].error_code, OUT_OF_ORDER_SEQUENCE_NUMBER);
        // A bumped epoch starts at sequence 0 and fences the old one.
        let (same, bumped) = conn.reinit_producer_id(pid, epoch).expect("bump");
        assert_eq!((same, bumped), (pid, epoch + 1));
        let fresh = conn
            .produce("k_idem", &[(0, batch(98, pid, bumped, 0))], -1)
            .expect("new epoch");
        assert_eq!(fresh[0].error_code, 0, "{fresh:?}");
        let stale = conn
            .produce("k_idem", &[(0, batch(97, pid, epoch, 600))], -1)
            .expect("old epoch");
        assert_eq!(stale[0].error_code, INVALID_PRODUCER_EPOCH, "{stale:?}");
        assert_eq!(
            node.sql_i64("SELECT SUM(\"count\") FROM k_idem"),
            7 * BATCH as i64
        );
    }

    #[test]
    fn kill_9_between_produce_and_ack_then_a_retry_counts_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = TestNode::start(dir.path());
        create_topic(&node, "k_crash");
        let (pid, epoch) = KafkaConn::connect(&node.kafka)
            .and_then(|mut c| c.init_producer_id())
            .expect("producer id");
        let batches: Vec<(i32, Bytes)> = (0..10)
            .map(|i| {
                (
                    (i % 2) as i32,
                    batch(200 + i, pid, epoch, (i / 2) as i32 * BATCH as i32),
                )
            })
            .collect();
        // Round one is durable before the kill (its acks are never read); round two is killed
        // the moment it is sent, so some of it may never have reached the log.
        let mut conn = KafkaConn::connect(&node.kafka).expect("connect");
        for b in &batches[..6] {
            conn.send_produce("k_crash", std::slice::from_ref(b), -1)
                .expect("send");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        for b in &batches[6..] {
            conn.send_produce("k_crash", std::slice::from_ref(b), -1)
                .expect("send");
        }
        node.kill9();
        drop(conn);

        let node = TestNode::start(dir.path());
        let mut conn = KafkaConn::connect(&node.kafka).expect("connect");
        for b in &batches {
            let ack = conn
                .produce("k_crash", std::slice::from_ref(b), -1)
                .expect("retry");
            assert_eq!(
                ack[0].error_code, 0,
                "retry of partition {} after the crash: {ack:?}",
                b.0
            );
        }
        assert_eq!(
            node.sql_i64("SELECT SUM(\"count\") FROM k_crash"),
            10 * BATCH as i64,
            "every batch exactly once"
        );
        // The producer's state came back too: the next batch continues, a gap is refused.
        let next = conn
            .produce(
                "k_crash",
                &[(0, batch(300, pid, epoch, 5 * BATCH as i32))],
                -1,
            )
            .expect("next");
        assert_eq!(next[0].error_code, 0);
        let gap = conn
            .produce(
                "k_crash",
                &[(1, batch(301, pid, epoch, 9 * BATCH as i32))],
                -1,
            )
            .expect("gap");
        assert_eq!(gap[0].error_code, OUT_OF_ORDER_SEQUENCE_NUMBER);
    }
}

#[test]
fn topics_are_administered_as_datasources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    let mut spec: serde_json::Value = serde_json::from_str(DEMO_BEACONS_SPEC).expect("demo spec");
    spec["name"] = serde_json::json!("k_admin");
    let v = py(&node, &["admin", &node.kafka, &spec.to_string()]);
    let step = |name: &str| v[name].clone();
    assert_eq!(step("create_without_spec")["ok"], false, "{v}");
    assert!(
        step("create_without_spec")["error"]
            .as_str()
            .unwrap_or_default()
            .contains("tidemark.spec"),
        "{v}"
    );
    assert_eq!(step("create")["ok"], true, "{v}");
    assert!(
        step("create_again")["error"]
            .as_str()
            .unwrap_or_default()
            .contains("TopicAlreadyExists"),
        "{v}"
    );
    // kafka-python shows the topic's own settings; confluent-kafka lists defaults too.
    assert!(
        v["configs"]
            .as_str()
            .unwrap_or_default()
            .contains("tidemark.spec"),
        "{v}"
    );
    let all = &v["confluent_configs"];
    assert_eq!(all["retention.ms"], "-1", "{v}");
    assert!(
        all["tidemark.spec"]
            .as_str()
            .unwrap_or_default()
            .contains("\"partitions\":2"),
        "{v}"
    );
    assert_eq!(step("grow")["ok"], true, "{v}");
    assert_eq!(v["partitions_after_grow"], 4, "{v}");
    assert!(
        step("shrink")["error"]
            .as_str()
            .unwrap_or_default()
            .contains("only grow"),
        "{v}"
    );
    assert_eq!(step("delete")["ok"], true, "{v}");
    let topics: Vec<&str> = v["topics_after_delete"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str())
        .collect();
    assert!(!topics.contains(&"k_admin"), "{v}");
    // The datasource followed the topic: created with 2 partitions, grown to 4, deleted.
    let r = node.get("/v1/datasources/k_admin");
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn list_offsets_by_time_finds_the_first_record_at_or_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = TestNode::start(dir.path());
    create_topic(&node, "k_times");
    let start = now_ms() - 30 * 60_000;
    let mut beacons = traffic(5, 100, start, 10 * 60_000, 3_000);
    beacons.sort_by_key(|b| b.ts_ms);
    let file = dir.path().join("times.tsv");
    write_records(&file, &beacons);
    py(
        &node,
        &[
            "produce",
            "confluent",
            "none",
            &node.kafka,
            "k_times",
            &file.display().to_string(),
        ],
    );
    // One producer, so each partition holds its records in send (= time) order.
    let target = beacons[beacons.len() / 2].ts_ms;
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut next: BTreeMap<u32, i64> = BTreeMap::new();
    for b in &beacons {
        let p = partition_for_key(b.merchant_id.as_bytes(), PARTITIONS);
        let offset = next.entry(p).or_default();
        if b.ts_ms >= target {
            expected.entry(p.to_string()).or_insert(*offset);
        }
        *offset += 1;
    }
    let got = py(
        &node,
        &[
            "offsets_for_times",
            &node.kafka,
            "k_times",
            &target.to_string(),
        ],
    );
    for (p, offset) in &expected {
        assert_eq!(got[p], *offset, "partition {p}: {got}");
    }
}

/// Bad bytes from the network: closed connections with a logged reason, clear error codes,
/// and never a crash or a memory jump.
mod bad_input {
    use std::time::Duration;

    use bytes::Bytes;
    use tidemark_loadgen::kafka::KafkaConn;
    use tidemark_storage::raw::compression::{GZIP, NONE};
    use tidemark_storage::raw::record_batch::{Record, encode_compressed, refresh_crc};

    use super::*;

    const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    const CORRUPT_MESSAGE: i16 = 2;
    const INVALID_RECORD: i16 = 87;
    const NOT_ENOUGH_REPLICAS: i16 = 19;

    fn records(values: &[&str]) -> Bytes {
        let ts = now_ms() - 60_000;
        let recs: Vec<Record> = values
            .iter()
            .map(|v| Record {
                timestamp_ms: ts,
                key: Some(b"m1".to_vec()),
                value: Some(v.replace("TS", &ts.to_string()).into_bytes()),
                headers: vec![],
            })
            .collect();
        Bytes::from(encode_compressed(&recs, NONE, -1, -1, -1).expect("batch"))
    }

    #[test]
    fn hostile_frames_close_the_connection_and_the_node_carries_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = TestNode::start(dir.path());
        let rss_before = node.rss_kib();
        // A frame that declares 200 MiB.
        let mut c = KafkaConn::connect(&node.kafka).expect("connect");
        c.write_raw(&(200i32 << 20).to_be_bytes()).expect("write");
        assert!(
            c.closed_within(Duration::from_secs(5)).expect("read"),
            "over-size frame not refused"
        );
        // A 20-byte Metadata v1 request that declares i32::MAX topics.
        let mut frame = Vec::new();
        frame.extend_from_slice(&3i16.to_be_bytes()); // Metadata
        frame.extend_from_slice(&1i16.to_be_bytes()); // v1
        frame.extend_from_slice(&7i32.to_be_bytes()); // correlation id
        frame.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
        frame.extend_from_slice(&i32::MAX.to_be_bytes()); // topic count
        frame.extend_from_slice(&[0, 1, b'x']);
        let mut c = KafkaConn::connect(&node.kafka).expect("connect");
        c.write_raw(&[&(frame.len() as i32).to_be_bytes()[..], &frame].concat())
            .expect("write");
        assert!(
            c.closed_within(Duration::from_secs(5)).expect("read"),
            "huge array not refused"
        );
        // Garbage, and an unknown API key.
        for junk in [
            &b"\x00\x00\x00\x0cgarbagegarbag"[..],
            b"\x00\x00\x00\x08\x7f\x7f\x00\x00\x00\x00\x00\x01",
        ] {
            let mut c = KafkaConn::connect(&node.kafka).expect("connect");
            c.write_raw(junk).expect("write");
            assert!(
                c.closed_within(Duration::from_secs(5)).expect("read"),
                "{junk:?} not refused"
            );
        }
        assert_eq!(node.get("/health").status, 200);
        let grown = node.rss_kib().saturating_sub(rss_before);
        assert!(
            grown < 100 * 1024,
            "the node grew by {grown} KiB on hostile frames"
        );
        let log = node.log_text();
        assert!(
            log.contains("larger than the") && log.contains("refused before decoding"),
            "reasons are logged"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let metrics = node.get("/metrics").body;
            if metrics.contains("tidemark_kafka_connections_refused_total 4") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "refusals are counted:\n{metrics}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn invalid_records_follow_the_datasource_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = TestNode::start(dir.path());
        create_topic(&node, "k_dead_letter");
        let mut spec: serde_json::Value = serde_json::from_str(DEMO_BEACONS_SPEC).expect("spec");
        spec["name"] = serde_json::json!("k_strict");
        spec["invalid_records"] = serde_json::json!("reject_batch");
        assert_eq!(
            node.post("/v1/datasources", spec.to_string().as_bytes(), &[])
                .status,
            201
        );
        let mut c = KafkaConn::connect(&node.kafka).expect("connect");
        let mixed = records(&[
            r#"{"ts": TS, "merchant_id": "m1"}"#,
            "not json",
            "[1, 2]",
            r#"{"merchant_id": "m1"}"#,
        ]);

        // dead_letter (default): stored raw, the good record rolled up, the rest in sys.rejects.
        let ack = c
            .produce("k_dead_letter", &[(0, mixed.clone())], -1)
            .expect("produce");
        assert_eq!(ack[0].error_code, 0, "{ack:?}");
        assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM k_dead_letter"), 1);
        let rejects =
            node.sql("SELECT record_index, reason FROM sys.rejects WHERE datasource = 'k_dead_letter' ORDER BY 1");
        assert_eq!(rejects.len(), 3, "{rejects:?}");
        assert!(
            rejects[0]["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("not valid JSON"),
            "{rejects:?}"
        );
        assert!(
            rejects[1]["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("not a JSON object"),
            "{rejects:?}"
        );
        assert!(
            rejects[2]["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("\"ts\" is missing"),
            "{rejects:?}"
        );

        // reject_batch: the whole batch is refused with per-record errors, nothing stored.
        let ack = c.produce("k_strict", &[(0, mixed)], -1).expect("produce");
        assert_eq!(ack[0].error_code, INVALID_RECORD, "{ack:?}");
        let indexes: Vec<i32> = ack[0].record_errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, vec![1, 2, 3], "{ack:?}");
        assert!(
            ack[0]
                .error_message
                .as_deref()
                .unwrap_or_default()
                .contains("reject_batch"),
            "{ack:?}"
        );
        let good = records(&[r#"{"ts": TS, "merchant_id": "m2"}"#]);
        assert_eq!(
            c.produce("k_strict", &[(1, good)], -1).expect("produce")[0].error_code,
            0
        );
        assert_eq!(node.sql_i64("SELECT SUM(\"count\") FROM k_strict"), 1);
        let metrics = node.get("/metrics").body;
        assert!(
            metrics.contains("tidemark_kafka_produce_partitions_total{error_code=\"87\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("tidemark_kafka_requests_total{api=\"Produce\"} 3"),
            "{metrics}"
        );

        // An unknown topic, a partition out of range, a batch whose records do not decode.
        let one = records(&[r#"{"ts": TS}"#]);
        assert_eq!(
            c.produce("nope", &[(0, one.clone())], -1).expect("p")[0].error_code,
            UNKNOWN_TOPIC_OR_PARTITION
        );
        assert_eq!(
            c.produce("k_strict", &[(9, one)], -1).expect("p")[0].error_code,
            UNKNOWN_TOPIC_OR_PARTITION
        );
        let mut broken = records(&[r#"{"ts": TS}"#]).to_vec();
        broken[61] = 0x7e; // the first record's length (zigzag 63) now runs past the batch; fix the CRC
        refresh_crc(&mut broken);
        let ack = c
            .produce("k_dead_letter", &[(1, Bytes::from(broken))], -1)
            .expect("produce");
        assert_eq!(ack[0].error_code, CORRUPT_MESSAGE, "{ack:?}");

        // A gzip bomb: 80 MiB of zeros in a few hundred KiB, over the 64 MiB per-batch cap.
        let bomb = vec![Record {
            timestamp_ms: 1,
            key: None,
            value: Some(vec![b'0'; 80 << 20]),
            headers: vec![],
        }];
        let bomb = Bytes::from(encode_compressed(&bomb, GZIP, -1, -1, -1).expect("bomb"));
        assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
        let ack = c
            .produce("k_dead_letter", &[(2, bomb)], -1)
            .expect("produce");
        assert_eq!(ack[0].error_code, CORRUPT_MESSAGE, "{ack:?}");
        assert!(
            ack[0]
                .error_message
                .as_deref()
                .unwrap_or_default()
                .contains("per-batch limit"),
            "{ack:?}"
        );
        assert_eq!(node.get("/health").status, 200);
    }

    #[test]
    fn at_the_memory_bound_produce_is_refused_with_a_throttle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("tiny.toml");
        std::fs::write(
            &config,
            "[storage]\nrealtime_bytes_persist = 100000\nrealtime_bytes_max = 200000\n",
        )
        .expect("config");
        // A ticker that never runs: nothing persists, so the bound holds for the whole test.
        let cfg = config.display().to_string();
        let node = TestNode::start_with(
            &dir.path().join("data"),
            &["--config", &cfg, "--tick-interval-ms", "600000"],
        );
        create_topic(&node, "k_full");
        let big: Vec<String> = (0..3000)
            .map(|i| {
                format!(
                    r#"{{"ts": TS, "merchant_id": "m{i}", "page": "/p{i}", "user_id": "u{i}"}}"#
                )
            })
            .collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        let mut c = KafkaConn::connect(&node.kafka).expect("connect");
        assert_eq!(
            c.produce("k_full", &[(0, records(&big))], -1)
                .expect("produce")[0]
                .error_code,
            0
        );
        let ack = c
            .produce("k_full", &[(0, records(&big))], -1)
            .expect("produce");
        assert_eq!(ack[0].error_code, NOT_ENOUGH_REPLICAS, "{ack:?}");
        assert!(
            ack[0]
                .error_message
                .as_deref()
                .unwrap_or_default()
                .contains("memory bound"),
            "{ack:?}"
        );
        assert!(
            c.last_throttle_ms > 0,
            "throttle_time_ms asks the client to back off"
        );
        assert_eq!(node.get("/health").status, 503);
        assert_eq!(
            node.sql_i64("SELECT SUM(\"count\") FROM k_full"),
            3000,
            "only the first batch was stored"
        );
    }
}
