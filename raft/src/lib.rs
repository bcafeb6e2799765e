//! tidemark-raft: replication of tidemark's log with openraft. It owns the type config, the
//! RocksDB store of the Raft log and vote (`log_store.rs`), and the state machine that applies
//! committed entries to the engine (`state_machine.rs`).
//!
//! ```text
//!  client_write(LogCommand) ─► Raft log (RocksDB, fsync) ─► replicated, committed
//!        ─► EngineStateMachine::apply ─► Engine::apply(position = Raft index) ─► answer
//! ```
//!
//! A Raft index is the engine's log position, and an entry carries a command's bytes. What
//! the Raft layer adds is the record of the last applied log id and membership, kept inside
//! the engine's checkpoint so the two are written atomically. `replica.rs` is what the rest
//! of tidemark uses: one node's replica (submit in order, leader, membership, status).
//!
//! Snapshots carry the engine checkpoint and a manifest of its data files, which the
//! receiving node fetches itself (`snapshot.rs`). Transport faults can be injected in tests
//! (`faults.rs`).
//!
//! Status: the store and the state machine pass openraft's storage suite; three replicas
//! agree byte for byte; the node runtime runs on it (a single node is a one-voter cluster).

pub mod cluster_secret;
pub mod error;
pub mod faults;
pub mod incoming;
pub mod log_store;
pub mod network;
pub mod peer_tls;
pub mod replica;
pub mod restore;
pub mod scrubber;
pub mod snapshot;
pub mod state_machine;
mod types;

pub use cluster_secret::ClusterSecret;
pub use error::{Error, Result};
pub use faults::FaultRules;
pub use replica::{ClusterStatus, Replica, ReplicaConfig, Submitted};
pub use types::{ApplyAnswer, LogCommand, Member, NodeId, TypeConfig};
