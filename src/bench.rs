//! `tidemark bench`: load tools for a running node, one per front door. Each reports
//! events/s, acknowledgement latency percentiles and, given the node's pid, the server's
//! CPU-seconds per million events (read from /proc, so the tool's own CPU is not counted).

pub(crate) mod http;
pub(crate) mod produce;

use anyhow::{Context, Result};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BenchCmd {
    /// POST batches of beacons to the HTTP beacon endpoint.
    Http(http::BenchArgs),
    /// Produce lz4 batches over the Kafka protocol (acks=all, idempotent).
    Produce(produce::ProduceArgs),
}

pub(crate) fn run(cmd: &BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Http(args) => http::run(args),
        BenchCmd::Produce(args) => produce::run(args),
    }
}

/// User + system CPU seconds of a process, from /proc/PID/stat.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no process {pid}"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    // The kernel reports them in USER_HZ ticks, which is 100 on Linux.
    Ok((ticks(11) + ticks(12)) / 100.0)
}

pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
