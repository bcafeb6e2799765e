//! The replication error type: what a writer or an operator can be told about the cluster.

use crate::types::{Member, NodeId};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node does not lead; `leader` is where the write should go, when it is known.
    #[error("node {node} is not the leader{}", leader_hint(.leader))]
    NotLeader {
        node: NodeId,
        leader: Option<(NodeId, Member)>,
    },

    /// The entry was appended on this node, which lost leadership before it committed. It may
    /// still commit through the new leader: retry with the same idempotency key (HTTP) or
    /// producer sequence (Kafka), which the engine deduplicates.
    #[error(
        "leadership changed before the write committed; its outcome is unknown: retry it with the same idempotency key"
    )]
    OutcomeUnknown,

    /// No answer in time: usually no quorum (a partition, most voters down). The write may
    /// still commit later.
    #[error(
        "the write was not committed within {waited_ms} ms (is a majority of voters up and reachable?); its outcome is unknown: retry it with the same idempotency key"
    )]
    NotCommitted { waited_ms: u64 },

    #[error("{in_flight} writes are waiting for the Raft log (bound {bound}); retry later")]
    Overloaded { in_flight: usize, bound: usize },

    /// The state machine refused the command, the same way on every replica.
    #[error("{0}")]
    Refused(String),

    /// Raft or the state machine stopped (a storage fault, or shutdown).
    #[error("replication stopped: {0}")]
    Stopped(String),

    #[error("cluster change refused: {0}")]
    Membership(String),

    #[error("cannot listen for Raft RPC on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },

    #[error("cannot open the Raft store in {path}: {source}")]
    Store {
        path: std::path::PathBuf,
        source: std::io::Error,
    },

    #[error(transparent)]
    Engine(#[from] tidemark_engine::Error),
}

impl Error {
    /// What kind of failure this is. A refusal is the state machine's verdict on the command
    /// and a membership refusal a conflict with the cluster as it is; everything else means
    /// no quorum could take the write now, and a retry (with the same idempotency key) may.
    pub fn status_class(&self) -> tidemark_catalog::StatusClass {
        use tidemark_catalog::StatusClass;
        match self {
            Error::Refused(_) => StatusClass::Unprocessable,
            Error::Membership(_) => StatusClass::Conflict,
            _ => StatusClass::Unavailable,
        }
    }
}

fn leader_hint(leader: &Option<(NodeId, Member)>) -> String {
    match leader {
        Some((id, m)) => format!("; node {id} leads (HTTP {}, Kafka {})", m.http, m.kafka),
        None => "; no leader is known yet (election in progress?)".into(),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
