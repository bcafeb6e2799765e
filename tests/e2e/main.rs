//! End-to-end tests against the real `tidemark` binary: one test binary, modules per area.

mod access;
mod admin_grpc;
mod answers;
mod backup;
mod beacons;
mod cluster;
mod cluster_secret;
mod compat;
mod connections;
mod copies;
mod crash;
mod datasources;
mod delete;
mod demo;
mod flight_adbc;
mod governance;
mod harness;
mod hostile;
mod isolation;
mod isolation_gen;
mod kafka;
mod limits;
mod listeners;
mod merchant_scope;
mod publishers;
mod reindex;
mod segments;
mod tls;
mod wire_capture;

use tidemark_loadgen::{Beacon, Traffic, TrafficConfig};

/// Generated beacons around `now_ms`, deterministic for a seed.
pub(crate) fn traffic(
    seed: u64,
    merchants: usize,
    start_ms: i64,
    span_ms: i64,
    n: usize,
) -> Vec<Beacon> {
    Traffic::new(&TrafficConfig {
        seed,
        merchants,
        skew: 1.1,
    })
    .batch(start_ms, span_ms, n)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn ndjson(beacons: &[Beacon]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in beacons {
        out.extend_from_slice(b.to_json().to_string().as_bytes());
        out.push(b'\n');
    }
    out
}
