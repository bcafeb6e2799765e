//! The node's configuration: one serde tree from TOML, with precedence defaults < file <
//! environment (`TIDEMARK_*`) < flags. `validate` reports every problem at once.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) data_dir: PathBuf,
    pub(crate) http_addr: String,
    pub(crate) flight_addr: String,
    /// The Kafka protocol listener.
    pub(crate) kafka_addr: String,
    /// The address Kafka clients are told to connect to; defaults to `kafka_addr`.
    pub(crate) kafka_advertised_addr: Option<String>,
    /// Create the demo `beacons` datasource on start if it does not exist.
    pub(crate) demo_datasource: bool,
    /// This node's Raft id, unique in its cluster.
    pub(crate) node_id: u64,
    /// Raft RPC listener.
    pub(crate) raft_addr: String,
    /// HTTP address of a cluster member to join; none: start (or restart) on its own.
    pub(crate) join: Option<String>,
    /// What every Raft RPC and node-to-node call carries; every node of a cluster needs the
    /// same (`TIDEMARK_CLUSTER_SECRET` overrides it). None: a single node draws a random one.
    #[serde(skip_serializing)]
    pub(crate) cluster_secret: Option<Secret>,
    pub(crate) raft: RaftSection,
    pub(crate) ingest: IngestConfig,
    pub(crate) kafka: KafkaSection,
    pub(crate) http: HttpSection,
    pub(crate) flight: FlightSection,
    pub(crate) storage: StorageConfig,
    pub(crate) limits: LimitsSection,
    pub(crate) tls: TlsSection,
}

/// TLS for the listeners (see `src/tls.rs`). `cert` and `key` turn it on for the client-facing
/// ones (each can be left plain); `ca` also makes Raft RPC between nodes mutual TLS and is
/// what a node checks its peers' certificates against.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TlsSection {
    /// This node's certificate chain (PEM).
    pub(crate) cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub(crate) key: Option<PathBuf>,
    /// The CA that signs every node's certificate (PEM).
    pub(crate) ca: Option<PathBuf>,
    pub(crate) http: bool,
    pub(crate) flight: bool,
    pub(crate) kafka: bool,
    /// The name checked in peers' certificates (default: the peer's IP address).
    pub(crate) peer_name: Option<String>,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert: None,
            key: None,
            ca: None,
            http: true,
            flight: true,
            kafka: true,
            peer_name: None,
        }
    }
}

/// What one query or one caller may use (see `tidemark_sql::limits`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LimitsSection {
    pub(crate) query_timeout_ms: u64,
    pub(crate) query_memory_bytes_max: usize,
    pub(crate) node_query_memory_bytes_max: usize,
    /// Disk the node's queries may spill to together (in `<data_dir>/spill`).
    pub(crate) query_spill_bytes_max: u64,
    pub(crate) result_rows_max: u64,
    pub(crate) result_bytes_max: u64,
    pub(crate) sql_bytes_max: usize,
    pub(crate) sql_nesting_max: usize,
    pub(crate) concurrent_queries_per_key: usize,
    pub(crate) function_result_bytes_max: usize,
    /// How long an answer to a wrong or missing API key waits (HTTP and Flight SQL).
    pub(crate) failed_login_delay_ms: u64,
    /// File descriptors kept from client connections for storage and Raft (see
    /// `src/descriptors.rs`); none: half the limit, at most 4096.
    pub(crate) descriptors_reserved: Option<u64>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let q = tidemark_sql::limits::QueryLimits::default();
        LimitsSection {
            query_timeout_ms: q.query_timeout_ms,
            query_memory_bytes_max: q.query_memory_bytes_max,
            node_query_memory_bytes_max: q.node_query_memory_bytes_max,
            query_spill_bytes_max: 16 << 30,
            result_rows_max: q.result_rows_max,
            result_bytes_max: q.result_bytes_max,
            sql_bytes_max: q.sql_bytes_max,
            sql_nesting_max: q.sql_nesting_max,
            concurrent_queries_per_key: q.concurrent_queries_per_key,
            function_result_bytes_max: q.function_result_bytes_max,
            failed_login_delay_ms: 250,
            descriptors_reserved: None,
        }
    }
}

impl LimitsSection {
    pub(crate) fn query(&self) -> tidemark_sql::limits::QueryLimits {
        tidemark_sql::limits::QueryLimits {
            query_timeout_ms: self.query_timeout_ms,
            query_memory_bytes_max: self.query_memory_bytes_max,
            node_query_memory_bytes_max: self.node_query_memory_bytes_max,
            result_rows_max: self.result_rows_max,
            result_bytes_max: self.result_bytes_max,
            sql_bytes_max: self.sql_bytes_max,
            sql_nesting_max: self.sql_nesting_max,
            concurrent_queries_per_key: self.concurrent_queries_per_key,
            function_result_bytes_max: self.function_result_bytes_max,
        }
    }
}

/// A secret from the configuration: never shown by `Debug`, never written back out.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct KafkaSection {
    pub(crate) request_bytes_max: usize,
    pub(crate) decompressed_batch_bytes_max: usize,
    pub(crate) unauthenticated_request_bytes_max: usize,
    pub(crate) connections_max: usize,
    pub(crate) connections_per_address_max: usize,
    pub(crate) idle_timeout_ms: u64,
    pub(crate) request_read_timeout_ms: u64,
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            request_bytes_max: 100 * 1024 * 1024,
            decompressed_batch_bytes_max: 64 * 1024 * 1024,
            unauthenticated_request_bytes_max: 512 * 1024,
            connections_max: 10_000,
            connections_per_address_max: 1_000,
            idle_timeout_ms: 600_000,
            request_read_timeout_ms: 30_000,
        }
    }
}

/// The HTTP listener's connection bounds (see `src/http_serve.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HttpSection {
    pub(crate) connections_max: usize,
    pub(crate) connections_per_address_max: usize,
    /// How long a request's headers may take to arrive, counted from when the connection is
    /// ready for its next request: a keep-alive connection idle that long is closed too.
    pub(crate) header_read_timeout_ms: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            connections_max: 10_000,
            connections_per_address_max: 1_000,
            header_read_timeout_ms: 30_000,
        }
    }
}

/// The Flight SQL listener's connection bounds (see `src/flight_incoming.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FlightSection {
    pub(crate) connections_max: usize,
    pub(crate) connections_per_address_max: usize,
}

impl Default for FlightSection {
    fn default() -> Self {
        FlightSection {
            connections_max: 10_000,
            connections_per_address_max: 1_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RaftSection {
    pub(crate) heartbeat_interval_ms: u64,
    pub(crate) election_timeout_min_ms: u64,
    pub(crate) election_timeout_max_ms: u64,
    pub(crate) snapshot_every_entries: u64,
    pub(crate) entries_kept_after_snapshot: u64,
    /// Pause between two scrubber passes over the data files; 0 turns the scrubber off.
    pub(crate) scrub_interval_ms: u64,
    /// The scrubber's read rate bound.
    pub(crate) scrub_bytes_per_s: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_every_entries: 20_000,
            entries_kept_after_snapshot: 20_000,
            scrub_interval_ms: 3_600_000,
            scrub_bytes_per_s: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct IngestConfig {
    pub(crate) body_bytes_max: usize,
    pub(crate) future_ms_max: i64,
    pub(crate) pending_entries_max: usize,
    pub(crate) idempotency_window_ms: i64,
    pub(crate) idempotency_keys_max: usize,
    /// Spool beacons locally (202 "spooled") when no quorum can take them; off: 503.
    pub(crate) spool: bool,
    pub(crate) spool_bytes_max: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StorageConfig {
    pub(crate) raw_file_bytes_max: u64,
    pub(crate) realtime_bytes_persist: usize,
    pub(crate) realtime_bytes_max: usize,
    pub(crate) rejects_max: usize,
    pub(crate) tick_interval_ms: u64,
    pub(crate) checkpoint_interval_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".tidemark-data"),
            http_addr: "127.0.0.1:8080".into(),
            flight_addr: "127.0.0.1:50051".into(),
            kafka_addr: "127.0.0.1:9092".into(),
            kafka_advertised_addr: None,
            demo_datasource: true,
            node_id: 1,
            raft_addr: "127.0.0.1:9093".into(),
            join: None,
            cluster_secret: None,
            raft: RaftSection::default(),
            ingest: IngestConfig::default(),
            kafka: KafkaSection::default(),
            http: HttpSection::default(),
            flight: FlightSection::default(),
            storage: StorageConfig::default(),
            limits: LimitsSection::default(),
            tls: TlsSection::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            body_bytes_max: 16 * 1024 * 1024,
            future_ms_max: 24 * 3_600_000,
            pending_entries_max: 65_536,
            idempotency_window_ms: 24 * 3_600_000,
            idempotency_keys_max: 100_000,
            spool: true,
            spool_bytes_max: 1 << 30,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            raw_file_bytes_max: 256 * 1024 * 1024,
            realtime_bytes_persist: 128 * 1024 * 1024,
            realtime_bytes_max: 512 * 1024 * 1024,
            rejects_max: 100_000,
            tick_interval_ms: 1000,
            checkpoint_interval_ms: 10_000,
        }
    }
}

impl Config {
    pub(crate) fn from_toml(text: &str, origin: &str) -> anyhow::Result<Config> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))
    }

    /// Every problem, at once.
    pub(crate) fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let advertised = self.kafka_advertised_addr.clone().unwrap_or_default();
        let join = self.join.clone().unwrap_or_default();
        for (name, addr) in [
            ("raft_addr", &self.raft_addr),
            ("join", &join),
            ("http_addr", &self.http_addr),
            ("flight_addr", &self.flight_addr),
            ("kafka_addr", &self.kafka_addr),
            ("kafka_advertised_addr", &advertised),
        ] {
            if matches!(name, "kafka_advertised_addr" | "join") && addr.is_empty() {
                continue;
            }
            if addr.parse::<SocketAddr>().is_err() {
                problems.push(format!(
                    "{name}: {addr:?} is not an address like 127.0.0.1:8080"
                ));
            }
        }
        if self.node_id == 0 {
            problems.push("node_id: must be positive".into());
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            problems.push(format!(
                "raft: election_timeout_min_ms ({}) must exceed heartbeat_interval_ms ({}), which must be positive",
                r.election_timeout_min_ms, r.heartbeat_interval_ms
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            problems.push(format!(
                "raft: election_timeout_max_ms ({}) must exceed election_timeout_min_ms ({})",
                r.election_timeout_max_ms, r.election_timeout_min_ms
            ));
        }
        if r.snapshot_every_entries == 0 {
            problems.push("raft.snapshot_every_entries: must be positive".into());
        }
        let l = &self.limits;
        for (name, value) in [
            ("query_timeout_ms", l.query_timeout_ms as usize),
            ("query_memory_bytes_max", l.query_memory_bytes_max),
            ("node_query_memory_bytes_max", l.node_query_memory_bytes_max),
            (
                "result_rows_max",
                usize::try_from(l.result_rows_max).unwrap_or(usize::MAX),
            ),
            (
                "result_bytes_max",
                usize::try_from(l.result_bytes_max).unwrap_or(usize::MAX),
            ),
            ("sql_bytes_max", l.sql_bytes_max),
            ("sql_nesting_max", l.sql_nesting_max),
            ("concurrent_queries_per_key", l.concurrent_queries_per_key),
            ("function_result_bytes_max", l.function_result_bytes_max),
        ] {
            if value == 0 {
                problems.push(format!("limits.{name}: must be positive"));
            }
        }
        if l.node_query_memory_bytes_max < l.query_memory_bytes_max {
            problems.push(format!(
                "limits.node_query_memory_bytes_max ({}) must not be below limits.query_memory_bytes_max ({}): \
                 no query could use its own limit",
                l.node_query_memory_bytes_max, l.query_memory_bytes_max
            ));
        }
        if self.ingest.body_bytes_max == 0 {
            problems.push("ingest.body_bytes_max: must be positive".into());
        }
        if let Some(secret) = &self.cluster_secret
            && let Err(e) = tidemark_raft::ClusterSecret::new(&secret.0)
        {
            problems.push(format!("cluster_secret: {e}"));
        }
        if self.join.is_some() && self.cluster_secret.is_none() {
            problems.push(
                "join: a node joins a cluster only with its cluster_secret (or TIDEMARK_CLUSTER_SECRET), the same on every node"
                    .into(),
            );
        }
        if self.ingest.future_ms_max < 0 {
            problems.push("ingest.future_ms_max: must not be negative".into());
        }
        if self.storage.realtime_bytes_persist > self.storage.realtime_bytes_max {
            problems.push(format!(
                "storage.realtime_bytes_persist ({}) must not exceed storage.realtime_bytes_max ({})",
                self.storage.realtime_bytes_persist, self.storage.realtime_bytes_max
            ));
        }
        if self.kafka.request_bytes_max < 1024 {
            problems.push("kafka.request_bytes_max: must be at least 1024".into());
        }
        let k = &self.kafka;
        if k.unauthenticated_request_bytes_max < 1024 {
            problems.push("kafka.unauthenticated_request_bytes_max: must be at least 1024".into());
        }
        for (name, value) in [
            ("kafka.connections_max", k.connections_max as u64),
            (
                "kafka.connections_per_address_max",
                k.connections_per_address_max as u64,
            ),
            ("kafka.idle_timeout_ms", k.idle_timeout_ms),
            ("kafka.request_read_timeout_ms", k.request_read_timeout_ms),
            ("http.connections_max", self.http.connections_max as u64),
            (
                "http.connections_per_address_max",
                self.http.connections_per_address_max as u64,
            ),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("flight.connections_max", self.flight.connections_max as u64),
            (
                "flight.connections_per_address_max",
                self.flight.connections_per_address_max as u64,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{name}: must be positive"));
            }
        }
        if self.kafka.decompressed_batch_bytes_max > (1 << 30) {
            problems.push(
                "kafka.decompressed_batch_bytes_max: must be at most 1 GiB (1073741824)".into(),
            );
        }
        if self.storage.tick_interval_ms == 0 {
            problems.push("storage.tick_interval_ms: must be positive".into());
        }
        let t = &self.tls;
        if t.cert.is_some() != t.key.is_some() {
            problems.push(
                "tls: cert and key go together (the certificate chain and its private key)".into(),
            );
        }
        if t.ca.is_some() && t.cert.is_none() {
            problems.push(
                "tls.ca: needs tls.cert and tls.key (this node's own certificate for its peers)"
                    .into(),
            );
        }
        if t.cert.is_some() && self.join.is_some() && t.ca.is_none() {
            problems.push(
                "tls.ca: a node joining a cluster with TLS needs the CA that signs its peers' certificates".into(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_and_validation_lists_every_problem() {
        let example = include_str!("../tidemark.example.toml");
        let cfg = Config::from_toml(example, "tidemark.example.toml").expect("example parses");
        assert!(cfg.validate().is_ok());
        let mut bad = cfg.clone();
        bad.http_addr = "localhost".into();
        bad.storage.realtime_bytes_persist = usize::MAX;
        let problems = bad.validate().err().unwrap_or_default();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            Config::from_toml("colour = 1", "x").is_err(),
            "unknown keys are refused"
        );
    }
}
