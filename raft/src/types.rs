//! The openraft type config: what a Raft entry carries and what applying it answers.

use std::fmt;

use serde::{Deserialize, Serialize};
use tidemark_engine::Applied;

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// tidemark's Raft types: entries carry [`LogCommand`]s, a node is known by its
    /// [`Member`] addresses.
    pub TypeConfig:
        D = LogCommand,
        R = ApplyAnswer,
        NodeId = NodeId,
        Node = Member,
);

/// Where a cluster member listens. The membership carries it, so every node knows where to
/// forward a write (HTTP), where to send Kafka clients (Kafka) and where Raft talks (Raft).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// Raft RPC `host:port`.
    pub raft: String,
    /// HTTP API `host:port` (beacons, admin, SQL over HTTP).
    pub http: String,
    /// The Kafka address clients are told to use.
    pub kafka: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft {} http {} kafka {}",
            self.raft, self.http, self.kafka
        )
    }
}

/// One command as the engine applies it: the kind and bytes of `engine::command::Command`
/// and the time its writer stamped on it (apply's only clock). The engine sees it as an
/// `engine::command::Entry` whose position is the Raft index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCommand {
    pub writer_time_ms: i64,
    pub kind: u8,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl fmt::Display for LogCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command kind {} ({} bytes) at {}",
            self.kind,
            self.payload.len(),
            self.writer_time_ms
        )
    }
}

/// What applying an entry answered. It only travels from the state machine to the waiting
/// writer on the same node, never over the network, so it is not serialized.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ApplyAnswer {
    #[serde(skip)]
    pub applied: Option<Result<Applied, String>>,
}
