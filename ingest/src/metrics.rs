//! Node metrics in Prometheus text format: counters end in `_total`, durations are in
//! seconds, and no label carries a merchant (cardinality stays bounded).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket upper bounds in seconds, shared by the latency histograms.
const BUCKETS_S: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; 12],
    inf: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        match BUCKETS_S.iter().position(|b| seconds <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.inf.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS_S.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        cumulative += self.inf.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub persist_seconds: Histogram,
    /// A checkpoint from its start (waiting for segment writes included) to stored.
    pub checkpoint_seconds: Histogram,
    pub query_seconds: Histogram,
    pub beacon_requests: Mutex<std::collections::BTreeMap<u16, u64>>,
    pub commands_applied: AtomicU64,
    /// Kafka requests by API name.
    pub kafka_requests: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Kafka produce partition answers by error code (0 = stored).
    pub kafka_produce_partitions: Mutex<std::collections::BTreeMap<i16, u64>>,
    pub kafka_connections_open: AtomicU64,
    /// Connections closed because of what the client sent (over-size, malformed, unsupported).
    pub kafka_connections_refused: AtomicU64,
    /// `accept` errors on the Kafka port (EMFILE, ENFILE, ENOBUFS, ...); each is retried.
    pub kafka_accept_errors: AtomicU64,
    /// The last `accept` error while the Kafka port cannot take connections; cleared by the
    /// next connection it accepts. `/health` reports it.
    pub kafka_accept_failing: Mutex<Option<String>>,
    /// Produce request to answer (durable and applied).
    pub kafka_produce_seconds: Histogram,
    /// HTTP writes this follower handed to the leader.
    pub http_forwarded: AtomicU64,
    /// Requests refused for missing or wrong credentials (HTTP and Flight SQL).
    pub auth_failures: AtomicU64,
    /// Times this node saw the cluster's leader change (including to "none").
    pub leader_changes: AtomicU64,
}

/// Gauges read from the engine at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineGauges {
    pub events_ingested: u64,
    pub events_rejected: u64,
    pub tags_dropped: u64,
    pub realtime_rows: u64,
    pub realtime_bytes: u64,
    pub segments: u64,
    pub applied_position: u64,
    pub raft: RaftGauges,
    pub snapshots: SnapshotGauges,
    pub scrub: ScrubGauges,
}

/// Scrubber counters since start, and the damaged files not yet repaired.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScrubGauges {
    pub passes: u64,
    pub files_checked: u64,
    pub bytes_checked: u64,
    pub damaged_found: u64,
    pub repaired: u64,
    pub repair_failures: u64,
    pub handovers: u64,
    pub damaged_now: u64,
}

/// Snapshot transfer counters since start.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotGauges {
    pub built: u64,
    pub installed: u64,
    pub files_fetched: u64,
    pub bytes_fetched: u64,
    pub files_reused: u64,
    pub bytes_served: u64,
    pub fetch_failures: u64,
}

/// This node's view of Raft at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct RaftGauges {
    pub node_id: u64,
    pub is_leader: bool,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub voters: u64,
}

impl Metrics {
    pub fn count_beacon_request(&self, status: u16) {
        let mut m = self
            .beacon_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *m.entry(status).or_default() += 1;
    }

    pub fn count_kafka_request(&self, api: &'static str) {
        *self
            .kafka_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(api)
            .or_default() += 1;
    }

    pub fn count_kafka_produce_partition(&self, error_code: i16) {
        *self
            .kafka_produce_partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(error_code)
            .or_default() += 1;
    }

    pub fn render(&self, g: EngineGauges) -> String {
        let mut out = String::with_capacity(4096);
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "tidemark_events_ingested_total",
            "counter",
            "Events rolled up into the realtime index.",
            g.events_ingested,
        );
        metric(
            "tidemark_events_rejected_total",
            "counter",
            "Events rejected (see sys.rejects).",
            g.events_rejected,
        );
        metric(
            "tidemark_tags_dropped_total",
            "counter",
            "Beacon keys left out because they are not tags of the datasource's governance domain.",
            g.tags_dropped,
        );
        metric(
            "tidemark_realtime_rows",
            "gauge",
            "Rows in realtime indexes.",
            g.realtime_rows,
        );
        metric(
            "tidemark_realtime_bytes",
            "gauge",
            "Approximate bytes held by realtime indexes.",
            g.realtime_bytes,
        );
        metric(
            "tidemark_segments",
            "gauge",
            "Published segments.",
            g.segments,
        );
        metric(
            "tidemark_applied_log_position",
            "gauge",
            "Position of the last applied log entry.",
            g.applied_position,
        );
        metric(
            "tidemark_commands_applied_total",
            "counter",
            "Log entries applied since start.",
            self.commands_applied.load(Ordering::Relaxed),
        );
        let r = g.raft;
        metric(
            "tidemark_raft_is_leader",
            "gauge",
            "1 if this node leads the Raft group.",
            u64::from(r.is_leader),
        );
        metric("tidemark_raft_term", "gauge", "Current Raft term.", r.term);
        metric(
            "tidemark_raft_voters",
            "gauge",
            "Voters in the membership this node knows.",
            r.voters,
        );
        metric(
            "tidemark_raft_last_log_index",
            "gauge",
            "Last index in this node's Raft log.",
            r.last_log_index,
        );
        metric(
            "tidemark_raft_commit_lag_entries",
            "gauge",
            "Entries in this node's log not yet known committed.",
            r.last_log_index.saturating_sub(r.committed_index),
        );
        metric(
            "tidemark_raft_apply_lag_entries",
            "gauge",
            "Committed entries not yet applied here.",
            r.committed_index.saturating_sub(r.applied_index),
        );
        metric(
            "tidemark_raft_leader_changes_total",
            "counter",
            "Leader changes this node observed.",
            self.leader_changes.load(Ordering::Relaxed),
        );
        let sn = g.snapshots;
        metric(
            "tidemark_raft_snapshots_built_total",
            "counter",
            "Snapshots this node built.",
            sn.built,
        );
        metric(
            "tidemark_raft_snapshots_installed_total",
            "counter",
            "Snapshots installed here from another node.",
            sn.installed,
        );
        metric(
            "tidemark_raft_snapshot_files_fetched_total",
            "counter",
            "Snapshot data files fetched from another node.",
            sn.files_fetched,
        );
        metric(
            "tidemark_raft_snapshot_bytes_fetched_total",
            "counter",
            "Snapshot data bytes fetched from another node.",
            sn.bytes_fetched,
        );
        metric(
            "tidemark_raft_snapshot_files_reused_total",
            "counter",
            "Snapshot data files this node already held (same bytes), not fetched.",
            sn.files_reused,
        );
        metric(
            "tidemark_raft_snapshot_bytes_served_total",
            "counter",
            "Snapshot data bytes served to other nodes.",
            sn.bytes_served,
        );
        metric(
            "tidemark_raft_snapshot_fetch_failures_total",
            "counter",
            "Snapshot stagings that failed (retried when the leader sends the snapshot again).",
            sn.fetch_failures,
        );
        let sc = g.scrub;
        metric(
            "tidemark_scrub_passes_total",
            "counter",
            "Scrubber passes over every data file.",
            sc.passes,
        );
        metric(
            "tidemark_scrub_files_checked_total",
            "counter",
            "Data files the scrubber checked and found whole.",
            sc.files_checked,
        );
        metric(
            "tidemark_scrub_bytes_checked_total",
            "counter",
            "Data bytes the scrubber checked.",
            sc.bytes_checked,
        );
        metric(
            "tidemark_scrub_damaged_found_total",
            "counter",
            "Damaged data files the scrubber found.",
            sc.damaged_found,
        );
        metric(
            "tidemark_scrub_repaired_total",
            "counter",
            "Damaged data files replaced by a checked copy from a replica.",
            sc.repaired,
        );
        metric(
            "tidemark_scrub_repair_failures_total",
            "counter",
            "Repair attempts that failed (tried again next pass).",
            sc.repair_failures,
        );
        metric(
            "tidemark_scrub_leader_handovers_total",
            "counter",
            "Times this node handed leadership over because it held damaged data.",
            sc.handovers,
        );
        metric(
            "tidemark_scrub_damaged_files",
            "gauge",
            "Damaged data files not yet repaired; while above 0 the node does not stand for leader.",
            sc.damaged_now,
        );
        metric(
            "tidemark_http_forwarded_total",
            "counter",
            "HTTP writes forwarded to the leader.",
            self.http_forwarded.load(Ordering::Relaxed),
        );
        metric(
            "tidemark_auth_failures_total",
            "counter",
            "Requests refused for a missing, unknown, revoked or wrong API key.",
            self.auth_failures.load(Ordering::Relaxed),
        );
        metric(
            "tidemark_kafka_connections",
            "gauge",
            "Open Kafka connections.",
            self.kafka_connections_open.load(Ordering::Relaxed),
        );
        metric(
            "tidemark_kafka_accept_errors_total",
            "counter",
            "Errors accepting Kafka connections (such as too many open files); each is retried.",
            self.kafka_accept_errors.load(Ordering::Relaxed),
        );
        metric(
            "tidemark_kafka_connections_refused_total",
            "counter",
            "Kafka connections closed for what the client sent (over-size, malformed, unsupported).",
            self.kafka_connections_refused.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP tidemark_beacon_requests_total Beacon requests by HTTP status.\n# TYPE tidemark_beacon_requests_total counter"
        );
        for (status, n) in self
            .beacon_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "tidemark_beacon_requests_total{{status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP tidemark_kafka_requests_total Kafka requests by API.\n# TYPE tidemark_kafka_requests_total counter"
        );
        for (api, n) in self
            .kafka_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(out, "tidemark_kafka_requests_total{{api=\"{api}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tidemark_kafka_produce_partitions_total Produce partition answers by Kafka error code (0 = stored).\n# TYPE tidemark_kafka_produce_partitions_total counter"
        );
        for (code, n) in self
            .kafka_produce_partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "tidemark_kafka_produce_partitions_total{{error_code=\"{code}\"}} {n}"
            );
        }
        self.kafka_produce_seconds.render(
            "tidemark_kafka_produce_duration_seconds",
            "Kafka produce request to answer (durable and applied).",
            &mut out,
        );
        self.persist_seconds.render(
            "tidemark_persist_duration_seconds",
            "Time to write one segment.",
            &mut out,
        );
        self.checkpoint_seconds.render(
            "tidemark_checkpoint_duration_seconds",
            "Time to write one checkpoint (raw log fsyncs included), mostly off the engine lock.",
            &mut out,
        );
        self.query_seconds.render(
            "tidemark_query_duration_seconds",
            "Time to answer one SQL request.",
            &mut out,
        );
        out
    }
}
