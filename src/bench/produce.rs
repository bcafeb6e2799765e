//! `tidemark bench produce`: Kafka-protocol load. Each connection is an idempotent producer
//! that keeps up to `--in-flight` produce requests outstanding (as Kafka clients do, five by
//! default), each one lz4 batch of `--batch` beacons for one partition, acks=all.
//!
//! Batches are generated and compressed before the clock starts and resent under fresh
//! sequence numbers (only the header and CRC change), so the tool spends its CPU on the
//! network, not on making data. The pool is large enough that the rollup sees many distinct
//! rows, but repeats raise the rollup ratio over a long run; the node still parses, validates
//! and merges every event.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use tidemark_catalog::partitioner::partition_for_key;
use tidemark_loadgen::kafka::KafkaConn;
use tidemark_loadgen::{Traffic, TrafficConfig};
use tidemark_storage::raw::compression;
use tidemark_storage::raw::record_batch::{Record, encode_compressed, restamp_producer};

use crate::bench::{cpu_seconds, percentile};

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ProduceArgs {
    /// The node's Kafka listener.
    #[arg(long, env = "TIDEMARK_KAFKA_ADDR", default_value = "127.0.0.1:9092")]
    kafka: String,
    #[arg(long, default_value = "beacons")]
    topic: String,
    /// The topic's partition count (the demo datasource has 3).
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Connections, each an idempotent producer.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Produce requests outstanding per connection.
    #[arg(long, default_value_t = 5)]
    in_flight: usize,
    /// Beacons per batch (one batch per request).
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// Target events/s over all connections; 0 sends as fast as the node acknowledges.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Distinct prepared batches per partition.
    #[arg(long, default_value_t = 24)]
    pool: usize,
    #[arg(long, default_value_t = 100_000)]
    merchants: usize,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "lz4")]
    codec: String,
    /// Process ids of the nodes (repeat for each replica of a cluster), to report each one's
    /// CPU time per event (Linux /proc).
    #[arg(long)]
    pid: Vec<u32>,
}

fn codec(name: &str) -> Result<u8> {
    Ok(match name {
        "none" => compression::NONE,
        "gzip" => compression::GZIP,
        "snappy" => compression::SNAPPY,
        "lz4" => compression::LZ4,
        "zstd" => compression::ZSTD,
        other => bail!("--codec {other:?}: use none, gzip, snappy, lz4 or zstd"),
    })
}

/// Prepared batches per partition: beacons keyed by merchant, placed by murmur2 as a Kafka
/// client's default partitioner would.
fn prepare(args: &ProduceArgs, codec: u8) -> Result<(Vec<Vec<Vec<u8>>>, u64)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let parts = args.partitions as usize;
    let mut pending: Vec<Vec<Record>> = vec![Vec::new(); parts];
    let mut pool: Vec<Vec<Vec<u8>>> = vec![Vec::new(); parts];
    let mut raw_bytes = 0u64;
    let mut traffic = Traffic::new(&TrafficConfig {
        seed: 11,
        merchants: args.merchants,
        skew: 1.1,
    });
    while pool.iter().any(|p| p.len() < args.pool) {
        for b in traffic.batch(now - 3_600_000, 3_600_000, 10_000) {
            let p = partition_for_key(b.merchant_id.as_bytes(), args.partitions) as usize;
            if pool[p].len() >= args.pool {
                continue;
            }
            let value = b.to_json().to_string().into_bytes();
            raw_bytes += value.len() as u64;
            pending[p].push(Record {
                timestamp_ms: b.ts_ms,
                key: Some(b.merchant_id.into_bytes()),
                value: Some(value),
                headers: vec![],
            });
            if pending[p].len() == args.batch {
                pool[p].push(encode_compressed(&pending[p], codec, 0, 0, 0)?);
                pending[p].clear();
            }
        }
    }
    Ok((pool, raw_bytes))
}

#[derive(Debug, Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    events: u64,
    failed: u64,
    errors: Vec<String>,
}

fn producer(
    args: &ProduceArgs,
    pool: &[Vec<Vec<u8>>],
    stop: &AtomicBool,
    tally: &Mutex<Tally>,
) -> Result<()> {
    let mut conn = KafkaConn::connect(&args.kafka)?;
    let (pid, epoch) = conn.init_producer_id()?;
    let per_thread_rate = args.rate as f64 / args.connections as f64;
    let started = Instant::now();
    let mut next_seq = vec![0i32; pool.len()];
    let mut in_flight: VecDeque<(i32, Instant)> = VecDeque::new();
    let mut mine = Tally::default();
    let mut sent_events = 0u64;
    let mut i = 0usize;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while !stopping && in_flight.len() < args.in_flight {
            if per_thread_rate > 0.0 {
                let due = Duration::from_secs_f64(sent_events as f64 / per_thread_rate);
                if started.elapsed() < due {
                    break;
                }
            }
            let p = i % pool.len();
            let template = &pool[p][(i / pool.len()) % pool[p].len()];
            i += 1;
            let mut batch = template.clone();
            restamp_producer(&mut batch, pid, epoch, next_seq[p]);
            next_seq[p] = next_seq[p].wrapping_add(args.batch as i32);
            let c = conn.send_produce(&args.topic, &[(p as i32, Bytes::from(batch))], -1)?;
            in_flight.push_back((c, Instant::now()));
            sent_events += args.batch as u64;
        }
        let Some((c, t)) = in_flight.pop_front() else {
            if stopping {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        for ack in conn.read_produce(c)? {
            if ack.error_code == 0 {
                mine.events += args.batch as u64;
                mine.latencies_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            } else {
                mine.failed += 1;
                if mine.errors.len() < 3 {
                    mine.errors.push(format!(
                        "partition {} error {}",
                        ack.partition, ack.error_code
                    ));
                }
            }
        }
    }
    let mut all = tally.lock().unwrap_or_else(|p| p.into_inner());
    all.latencies_ms.extend(mine.latencies_ms);
    all.events += mine.events;
    all.failed += mine.failed;
    all.errors.extend(mine.errors);
    Ok(())
}

pub(crate) fn run(args: &ProduceArgs) -> Result<()> {
    if args.connections == 0
        || args.batch == 0
        || args.in_flight == 0
        || args.partitions == 0
        || args.pool == 0
    {
        bail!("--connections, --in-flight, --batch, --partitions and --pool must be positive");
    }
    let codec = codec(&args.codec)?;
    let (pool, raw_bytes) = prepare(args, codec)?;
    let batches: usize = pool.iter().map(Vec::len).sum();
    let packed: usize = pool.iter().flatten().map(Vec::len).sum();
    println!(
        "prepared {batches} {} batches of {} beacons: {:.0} bytes/event on the wire ({:.0} as JSON)",
        args.codec,
        args.batch,
        packed as f64 / (batches * args.batch) as f64,
        raw_bytes as f64 / (batches * args.batch) as f64
    );
    let pool = Arc::new(pool);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let cpu0 = args
        .pid
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<Vec<f64>>>()?;
    let started = Instant::now();
    let threads: Vec<_> = (0..args.connections)
        .map(|_| {
            let (args, pool, stop, tally) =
                (args.clone(), pool.clone(), stop.clone(), tally.clone());
            std::thread::spawn(move || producer(&args, &pool, &stop, &tally))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(e.to_string()),
            Err(_) => failures.push("a producer thread panicked".into()),
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let mut cpu = Vec::new();
    for (pid, c0) in args.pid.iter().zip(&cpu0) {
        cpu.push((*pid, cpu_seconds(*pid)? - c0));
    }
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    t.latencies_ms.sort_by(f64::total_cmp);
    let events = t.events as f64;
    println!(
        "{} batches ({:.0} events) acknowledged from {} connections in {wall:.1} s: {:.0} events/s ({} refused batches{})",
        t.latencies_ms.len(),
        events,
        args.connections,
        events / wall,
        t.failed,
        if t.errors.is_empty() {
            String::new()
        } else {
            format!(": {}", t.errors.join(", "))
        }
    );
    println!(
        "ack latency per batch: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&t.latencies_ms, 0.5),
        percentile(&t.latencies_ms, 0.99),
        t.latencies_ms.last().copied().unwrap_or(f64::NAN)
    );
    for (pid, cpu) in cpu {
        println!(
            "server {pid} CPU {cpu:.1} s: {:.0} events/s per server core, {:.2} CPU-s per million events",
            events / cpu.max(1e-9),
            cpu / (events / 1e6).max(1e-9)
        );
    }
    if !failures.is_empty() {
        bail!("producers failed: {}", failures.join("; "));
    }
    Ok(())
}
