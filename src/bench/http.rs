//! `tidemark bench http`: concurrent clients POST batches of generated beacons for a fixed
//! time; reports events/s, acknowledgement latency percentiles (an ack means durable and
//! queryable), and, given the node's pid, the server's CPU-seconds per million events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use tidemark_loadgen::{Traffic, TrafficConfig};

use crate::bench::{cpu_seconds, percentile};
use crate::client::Client;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    #[arg(long, env = "TIDEMARK_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, default_value = "beacons")]
    datasource: String,
    /// Concurrent clients, each sending one request at a time.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Beacons per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 100_000)]
    merchants: usize,
    /// The node's process id, to report its CPU time (Linux /proc).
    #[arg(long)]
    pid: Option<u32>,
}

pub(crate) fn run(args: &BenchArgs) -> Result<()> {
    if args.clients == 0 || args.batch == 0 {
        bail!("--clients and --batch must be positive");
    }
    // Bodies are made before the clock starts, so the tool measures the node, not itself.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let bodies: Vec<Vec<u8>> = (0..args.clients * 8)
        .map(|i| {
            let mut t = Traffic::new(&TrafficConfig {
                seed: 7 + i as u64,
                merchants: args.merchants,
                skew: 1.1,
            });
            let mut body = Vec::with_capacity(args.batch * 220);
            for b in t.batch(now - 600_000, 600_000, args.batch) {
                body.extend_from_slice(b.to_json().to_string().as_bytes());
                body.push(b'\n');
            }
            body
        })
        .collect();
    let bodies = Arc::new(bodies);
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let failures = Arc::new(Mutex::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = args.pid.map(cpu_seconds).transpose()?;
    let started = Instant::now();
    let mut threads = Vec::new();
    for c in 0..args.clients {
        let (bodies, latencies, failures, stop) = (
            bodies.clone(),
            latencies.clone(),
            failures.clone(),
            stop.clone(),
        );
        let client = Client::new(&args.url);
        let path = format!("/v1/beacons/{}", args.datasource);
        threads.push(std::thread::spawn(move || {
            let mut i = c;
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = client.send(
                    "POST",
                    &path,
                    "application/x-ndjson",
                    &[],
                    &bodies[i % bodies.len()],
                );
                match r {
                    Ok(reply) if reply.status == 200 => {
                        mine.push(t.elapsed().as_secs_f64() * 1000.0)
                    }
                    _ => *failures.lock().unwrap_or_else(|p| p.into_inner()) += 1,
                }
                i += 1;
            }
            latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(mine);
        }));
    }
    std::thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = match (args.pid, cpu0) {
        (Some(pid), Some(c0)) => Some(cpu_seconds(pid)? - c0),
        _ => None,
    };
    let mut lat = latencies.lock().unwrap_or_else(|p| p.into_inner()).clone();
    lat.sort_by(f64::total_cmp);
    let events = lat.len() as f64 * args.batch as f64;
    println!(
        "{} requests of {} beacons from {} clients in {wall:.1} s: {:.0} events/s acknowledged ({} failed requests)",
        lat.len(),
        args.batch,
        args.clients,
        events / wall,
        failures.lock().unwrap_or_else(|p| p.into_inner())
    );
    println!(
        "ack latency per request: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    if let Some(cpu) = cpu {
        println!(
            "server CPU {cpu:.1} s: {:.0} events/s per server core, {:.2} CPU-s per million events",
            events / cpu.max(1e-9),
            cpu / (events / 1e6).max(1e-9)
        );
    }
    Ok(())
}
