//! The Kafka door: a broker that Kafka clients use unchanged. A datasource is a topic; its raw
//! log partitions are the topic's partitions; produced batches take the same log entry and
//! apply path as HTTP beacons. The wire format is the `kafka-protocol` crate's; the broker
//! logic (what each request does to the node) is here.
//!
//! ```text
//!  socket ─► connection: size-prefixed frame (≤ request_bytes_max) ─► header ─► bounds check
//!         ─► kafka-protocol decode ─► handler ─► response, in request order
//!  produce ─► edge checks (one batch, CRC, capped decompression, policy) ─► Node::submit
//!  fetch   ─► raw log batches as stored (long poll on the applied position)
//!  groups  ─► coordinator (membership in memory; offsets are logged commands)
//! ```
//!
//! Invariants:
//! - Nothing a client sends is allocated by its declared size before the bytes are there:
//!   frames are read as they arrive up to the limit, and every length in a body is checked
//!   against the body ([`bounds`]) before the crate decodes it.
//! - A connection's requests are answered in order, and produce requests are logged in the
//!   order they arrived, so an idempotent producer's in-flight batches keep their sequence.
//! - Acknowledged means durable and applied, as for HTTP beacons.

pub mod bounds;
mod connection;
mod fetch;
mod groups;
mod metadata;
mod produce;
pub mod sasl;
mod topics;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::node::Node;

pub use groups::Coordinator;

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// The address clients are told to connect to (Metadata, FindCoordinator).
    pub advertised: SocketAddr,
    /// This node's broker id.
    pub node_id: i32,
    /// Larger requests close the connection (Kafka's `socket.request.max.bytes`).
    pub request_bytes_max: usize,
    /// Before a client logged in (on a node with keys), larger requests close the connection
    /// (Kafka's `sasl.server.max.receive.size`): no one unknown makes the node buffer 100 MiB.
    pub unauthenticated_request_bytes_max: usize,
    /// How long a connection may wait before sending its next request (Kafka's
    /// `connections.max.idle.ms`).
    pub idle_timeout: std::time::Duration,
    /// How long a request may take to arrive once its first byte did (a client trickling a
    /// request a byte at a time holds a connection and a buffer).
    pub request_read_timeout: std::time::Duration,
    /// Connections in all and per address.
    pub connections: Arc<crate::connections::ConnectionGate>,
    /// A produced batch may decompress to at most this many bytes.
    pub decompressed_batch_bytes_max: usize,
    /// Events stamped further ahead of the writer's clock are rejected at apply.
    pub future_ms_max: i64,
    /// Requests answered concurrently per connection (answers still go out in order).
    pub in_flight_per_connection: usize,
    /// How long a failed SASL login waits for its answer (limits.failed_login_delay_ms).
    pub failed_login_delay: std::time::Duration,
    /// TLS (SSL / SASL_SSL) for every connection, when set.
    pub tls: Option<KafkaTls>,
}

/// The Kafka listener's TLS acceptor.
#[derive(Clone)]
pub struct KafkaTls(pub tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for KafkaTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KafkaTls")
    }
}

impl KafkaConfig {
    pub fn new(advertised: SocketAddr) -> Self {
        KafkaConfig {
            advertised,
            node_id: 1,
            request_bytes_max: 100 * 1024 * 1024,
            unauthenticated_request_bytes_max: 512 * 1024,
            idle_timeout: std::time::Duration::from_secs(600),
            request_read_timeout: std::time::Duration::from_secs(30),
            connections: crate::connections::ConnectionGate::new("kafka", 10_000, 1_000),
            decompressed_batch_bytes_max: 64 * 1024 * 1024,
            future_ms_max: 24 * 3_600_000,
            in_flight_per_connection: 16,
            failed_login_delay: std::time::Duration::from_millis(200),
            tls: None,
        }
    }
}

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Broker {
    pub node: Node,
    pub config: KafkaConfig,
    pub coordinator: Coordinator,
}

/// One broker as Metadata describes it.
#[derive(Debug, Clone)]
pub(crate) struct BrokerAddr {
    pub id: i32,
    pub host: String,
    pub port: i32,
}

impl Broker {
    /// Every cluster member's Kafka address (this node's own advertised one even before it
    /// joined a cluster), and the leader: it leads every partition and coordinates groups.
    pub(crate) fn cluster(&self) -> (Vec<BrokerAddr>, Option<i32>) {
        let replica = self.node.replica();
        let me = i64::from(self.config.node_id);
        let mut brokers: Vec<BrokerAddr> = replica
            .members()
            .iter()
            // This node's own address is the one it was started with, even before the
            // membership records a move.
            .filter(|(id, _)| **id as i64 != me)
            .filter_map(|(id, m)| {
                let addr: SocketAddr = m.kafka.parse().ok()?;
                Some(BrokerAddr {
                    id: *id as i32,
                    host: addr.ip().to_string(),
                    port: i32::from(addr.port()),
                })
            })
            .collect();
        brokers.push(BrokerAddr {
            id: self.config.node_id,
            host: self.config.advertised.ip().to_string(),
            port: i32::from(self.config.advertised.port()),
        });
        brokers.sort_by_key(|b| b.id);
        let leader = replica
            .leader()
            .map(|(id, _)| id as i32)
            .filter(|id| brokers.iter().any(|b| b.id == *id));
        (brokers, leader)
    }

    /// Group membership lives on the leader, which logs the offsets.
    pub(crate) fn coordinates(&self) -> bool {
        self.node.replica().is_leader()
    }
}

/// The Kafka error for a write the node did not take: clients refresh metadata and retry on
/// NOT_LEADER_OR_FOLLOWER (the idempotent producer's sequence makes the retry safe).
pub(crate) fn write_error_code(e: &crate::Error) -> i16 {
    match e {
        crate::Error::Replication(
            tidemark_raft::Error::NotLeader { .. } | tidemark_raft::Error::OutcomeUnknown,
        ) => code::NOT_LEADER_OR_FOLLOWER,
        crate::Error::Replication(tidemark_raft::Error::Overloaded { .. }) => {
            code::NOT_ENOUGH_REPLICAS
        }
        _ => code::KAFKA_STORAGE_ERROR,
    }
}

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// After an `accept` error the listener waits this long, doubling up to the second bound, so
/// a node out of file descriptors neither spins nor gives up its port.
const ACCEPT_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const ACCEPT_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Accepts Kafka connections for as long as the node runs. An `accept` error (out of file
/// descriptors, say) is counted, reported by `/health` and retried with backoff, as axum does
/// (and `src/flight_incoming.rs` for Flight SQL): it once ended the listener for good while
/// `/health` said ok.
pub async fn serve(listener: TcpListener, node: Node, config: KafkaConfig) -> std::io::Result<()> {
    let coordinator = Coordinator::default();
    let broker = Arc::new(Broker {
        node,
        config,
        coordinator,
    });
    groups::spawn_expiry(broker.clone());
    let mut retry = ACCEPT_RETRY_MIN;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                let metrics = broker.node.metrics();
                metrics
                    .kafka_accept_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let first = metrics
                    .kafka_accept_failing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replace(e.to_string())
                    .is_none();
                if first {
                    tracing::warn!(error = %e, "the Kafka port cannot accept connections; retrying");
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(ACCEPT_RETRY_MAX);
                continue;
            }
        };
        if retry != ACCEPT_RETRY_MIN {
            retry = ACCEPT_RETRY_MIN;
            broker
                .node
                .metrics()
                .kafka_accept_failing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            tracing::info!("the Kafka port accepts connections again");
        }
        let place = match broker.config.connections.admit(peer.ip()) {
            Ok(place) => place,
            // Closed at once, before a byte is read: the refusal is counted and logged.
            Err(_) => continue,
        };
        let _ = stream.set_nodelay(true);
        let broker = broker.clone();
        tokio::spawn(async move {
            let _place = place;
            let metrics = broker.node.metrics();
            metrics
                .kafka_connections_open
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let loopback = peer.ip().is_loopback();
            let closed = match broker.config.tls.clone() {
                None => {
                    let (rd, wr) = stream.into_split();
                    connection::run(rd, wr, loopback, broker).await
                }
                // The handshake runs in the connection's task: the accept loop never waits on it.
                Some(KafkaTls(acceptor)) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            let (rd, wr) = tokio::io::split(tls);
                            connection::run(rd, wr, true, broker).await
                        }
                        Ok(Err(e)) => Err(connection::Close::Protocol(format!(
                            "TLS handshake failed: {e}"
                        ))),
                        Err(_) => Err(connection::Close::Protocol(
                            "TLS handshake timed out".into(),
                        )),
                    }
                }
            };
            metrics
                .kafka_connections_open
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            match closed {
                Ok(()) => {}
                Err(connection::Close::Protocol(reason)) => {
                    metrics
                        .kafka_connections_refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(%peer, %reason, "kafka connection refused");
                }
                Err(reason) => tracing::info!(%peer, %reason, "kafka connection closed"),
            }
        });
    }
}

/// Runs the door's request decoding on one frame (without its size prefix) exactly as a
/// connection does: header, API and version, bounds check, then `kafka-protocol`'s decoder.
/// For the fuzzer (`fuzz/`): any input must give `Ok` or `Err`, never a panic or an abort.
pub fn decode_frame(frame: &[u8]) -> Result<(), String> {
    match connection::parse_frame(bytes::Bytes::copy_from_slice(frame))
        .map_err(|e| e.to_string())?
    {
        connection::Parsed::UnsupportedApiVersions(_) => Ok(()),
        connection::Parsed::Request(req, mut body) => connection::decode_request(&req, &mut body)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}

/// Kafka error codes the door answers with.
pub(crate) mod code {
    pub(crate) const NONE: i16 = 0;
    pub(crate) const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub(crate) const CORRUPT_MESSAGE: i16 = 2;
    pub(crate) const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub(crate) const LEADER_NOT_AVAILABLE: i16 = 5;
    pub(crate) const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub(crate) const REQUEST_TIMED_OUT: i16 = 7;
    pub(crate) const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub(crate) const NOT_COORDINATOR: i16 = 16;
    pub(crate) const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub(crate) const INVALID_REQUIRED_ACKS: i16 = 21;
    pub(crate) const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub(crate) const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    pub(crate) const SASL_AUTHENTICATION_FAILED: i16 = 58;
    pub(crate) const ILLEGAL_GENERATION: i16 = 22;
    pub(crate) const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub(crate) const INVALID_GROUP_ID: i16 = 24;
    pub(crate) const UNKNOWN_MEMBER_ID: i16 = 25;
    pub(crate) const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub(crate) const REBALANCE_IN_PROGRESS: i16 = 27;
    pub(crate) const UNSUPPORTED_VERSION: i16 = 35;
    pub(crate) const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub(crate) const INVALID_PARTITIONS: i16 = 37;
    pub(crate) const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub(crate) const INVALID_CONFIG: i16 = 40;
    pub(crate) const NOT_CONTROLLER: i16 = 41;
    pub(crate) const INVALID_REQUEST: i16 = 42;
    pub(crate) const UNSUPPORTED_FOR_MESSAGE_FORMAT: i16 = 43;
    pub(crate) const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub(crate) const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub(crate) const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub(crate) const KAFKA_STORAGE_ERROR: i16 = 56;
    pub(crate) const GROUP_ID_NOT_FOUND: i16 = 69;
    pub(crate) const NON_EMPTY_GROUP: i16 = 68;
    pub(crate) const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub(crate) const MEMBER_ID_REQUIRED: i16 = 79;
    pub(crate) const INVALID_RECORD: i16 = 87;
    pub(crate) const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
}
