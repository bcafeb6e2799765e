//! `tidemark demo`: realistic merchant traffic (tidemark-loadgen) sent to a node's beacon
//! endpoint: first a backfill spread over the recent past, so SQL has an hour of history at
//! once, then live traffic at a steady rate.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use tidemark_loadgen::{Traffic, TrafficConfig};

use crate::client::Client;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct DemoArgs {
    /// The node's HTTP address.
    #[arg(long, env = "TIDEMARK_URL", default_value = "http://127.0.0.1:8080")]
    pub(crate) url: String,
    #[arg(long, env = "TIDEMARK_DEMO_DATASOURCE", default_value = "beacons")]
    pub(crate) datasource: String,
    /// Live events per second.
    #[arg(long, env = "TIDEMARK_DEMO_RATE", default_value_t = 2000)]
    pub(crate) rate: u64,
    /// Events spread over the past hour before live traffic starts.
    #[arg(long, env = "TIDEMARK_DEMO_BACKFILL", default_value_t = 200_000)]
    pub(crate) backfill: usize,
    /// Stop after this many seconds of live traffic (default: run until interrupted).
    #[arg(long, env = "TIDEMARK_DEMO_SECONDS")]
    pub(crate) seconds: Option<u64>,
    #[arg(long, env = "TIDEMARK_DEMO_MERCHANTS", default_value_t = 1000)]
    pub(crate) merchants: usize,
    #[arg(long, env = "TIDEMARK_DEMO_SEED", default_value_t = 42)]
    pub(crate) seed: u64,
    /// Beacons per request.
    #[arg(long, env = "TIDEMARK_DEMO_BATCH", default_value_t = 500)]
    pub(crate) batch: usize,
    /// The CA to trust for an https:// URL (PEM).
    #[arg(long, env = "TIDEMARK_CA_CERT")]
    pub(crate) ca_cert: Option<std::path::PathBuf>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Sender {
    client: Client,
    path: String,
    seq: u64,
    seed: u64,
    sent: u64,
    accepted: u64,
    rejected: u64,
}

impl Sender {
    fn send(&mut self, beacons: &[tidemark_loadgen::Beacon]) -> Result<()> {
        let mut body = Vec::with_capacity(beacons.len() * 256);
        for b in beacons {
            serde_json::to_writer(&mut body, &b.to_json())?;
            body.push(b'\n');
        }
        self.seq += 1;
        let key = format!("demo-{}-{}", self.seed, self.seq);
        // Retries reuse the key, so a batch whose answer was lost counts once.
        let mut attempt = 0;
        let reply = loop {
            let r = self.client.send(
                "POST",
                &self.path,
                "application/x-ndjson",
                &[("Idempotency-Key", &key)],
                &body,
            );
            match r {
                Ok(reply) if reply.status == 503 && attempt < 10 => {}
                Ok(reply) => break reply.ok()?,
                Err(e) if attempt >= 10 => return Err(e),
                Err(_) => {}
            }
            attempt += 1;
            std::thread::sleep(Duration::from_millis(200 * attempt));
        };
        let v: serde_json::Value = serde_json::from_slice(&reply.body)?;
        self.sent += beacons.len() as u64;
        self.accepted += v.get("accepted").and_then(|a| a.as_u64()).unwrap_or(0);
        self.rejected += v
            .get("rejected")
            .and_then(|r| r.as_array())
            .map_or(0, |r| r.len() as u64);
        Ok(())
    }
}

pub(crate) fn run(args: &DemoArgs) -> Result<()> {
    let mut traffic = Traffic::new(&TrafficConfig {
        seed: args.seed,
        merchants: args.merchants,
        skew: 1.1,
    });
    let mut sender = Sender {
        client: Client::with_ca(&args.url, args.ca_cert.as_deref()),
        path: format!("/v1/beacons/{}", args.datasource),
        seq: 0,
        seed: args.seed ^ (now_ms() as u64),
        sent: 0,
        accepted: 0,
        rejected: 0,
    };
    let batch = args.batch.max(1);
    if args.backfill > 0 {
        let start = now_ms() - 3_600_000;
        let events = traffic.batch(start, 3_600_000, args.backfill);
        for chunk in events.chunks(batch) {
            sender.send(chunk)?;
        }
        // The start is printed so a test can compute the backfill exactly (same seed, same events).
        eprintln!(
            "demo: backfilled {} events over the past hour ({} accepted; from {start} ms)",
            sender.sent, sender.accepted
        );
    }
    let started = Instant::now();
    let tick = Duration::from_millis(100);
    let per_tick = (args.rate / 10).max(1) as usize;
    let mut last_report = Instant::now();
    loop {
        if args
            .seconds
            .is_some_and(|s| started.elapsed() >= Duration::from_secs(s))
        {
            break;
        }
        let t0 = Instant::now();
        let now = now_ms();
        let events: Vec<_> = (0..per_tick).map(|_| traffic.next(now)).collect();
        for chunk in events.chunks(batch) {
            sender.send(chunk)?;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "demo: sent {} events ({} accepted, {} rejected)",
                sender.sent, sender.accepted, sender.rejected
            );
            last_report = Instant::now();
        }
        if let Some(rest) = tick.checked_sub(t0.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    eprintln!(
        "demo: done, sent {} events ({} accepted, {} rejected)",
        sender.sent, sender.accepted, sender.rejected
    );
    Ok(())
}

/// The example queries the demo guide prints: one merchant's time series, and a sketch
/// answer (distinct users and p99 latency) per country. The e2e test runs these lines as
/// printed, so they stay correct.
const GUIDE_QUERIES: [&str; 2] = [
    r#"SELECT TIME_FLOOR(__time, 'PT5M') AS t, SUM("count") AS events, SUM(amount_sum) AS revenue FROM beacons WHERE merchant_id = 'm00001' GROUP BY 1 ORDER BY 1"#,
    r#"SELECT country, APPROX_COUNT_DISTINCT_DS_HLL(users_hll) AS users, APPROX_QUANTILE_DS(latency_td, 0.99) AS p99_ms FROM beacons GROUP BY 1 ORDER BY 2 DESC LIMIT 5"#,
];

/// What a newcomer reads once the demo node is up: queries to try and the command that runs
/// them, where Kafka clients connect, where the data lives and how to start over.
pub(crate) fn guide(
    cfg: &crate::config::Config,
    http_scheme: &str,
    kafka_bootstrap: &str,
) -> String {
    // From a checkout the README's commands go through dev/tidemark (one build for all).
    let cli = if std::path::Path::new("dev/tidemark").exists() {
        "dev/tidemark"
    } else {
        "tidemark"
    };
    let url = format!("{http_scheme}://{}", cfg.http_addr);
    let env = if url == "http://127.0.0.1:8080" {
        String::new()
    } else {
        format!("TIDEMARK_URL={url} ")
    };
    let data_dir = std::fs::canonicalize(&cfg.data_dir).unwrap_or_else(|_| cfg.data_dir.clone());
    let mut out = String::from(
        "\nThe demo sends an hour of merchant traffic (backfill), then 2,000 events/s. Try, in another terminal:\n",
    );
    for q in GUIDE_QUERIES {
        out.push_str(&format!(
            "  {env}{cli} sql \"{}\"\n",
            q.replace('"', "\\\"")
        ));
    }
    out.push_str(&format!(
        "  curl -s {url}/v1/sql -d 'SELECT COUNT(*) AS rows, SUM(\"count\") AS events FROM beacons'\n"
    ));
    out.push_str(&format!(
        "Kafka bootstrap: {kafka_bootstrap} (topic `beacons`; e.g. kcat -b {kafka_bootstrap} -L)\n"
    ));
    out.push_str(&format!("Data directory: {}\n", data_dir.display()));
    out.push_str(&format!(
        "Start fresh: stop the node (Ctrl-C), rm -rf {}, and run the demo again.",
        data_dir.display()
    ));
    out
}
