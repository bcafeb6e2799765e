//! tidemark-raft: replication of tidemark's log with openraft. It owns the type config, the
//! RocksDB store of the Raft log and vote (`log_store.rs`), and the state machine that applies
//! committed entries to the engine (`state_machine.rs`).
//!
//! ```text
//!  client_write(LogCommand) ─► Raft log (RocksDB, fsync) ─► replicated, committed
//!        ─► EngineStateMachine::apply ─► Engine::apply(position = Raft index) ─► answer
//! ```
//!
//! The engine's apply path is the one the single-node command log feeds: a Raft index is a
//! log position, and a command's bytes are the same. What the Raft layer adds is the record
//! of the last applied log id and membership, kept inside the engine's checkpoint so the two
//! are written atomically.
//!
//! Status: the store and the state machine pass openraft's storage suite; three nodes, in one
//! process over an in-memory network and over the tonic network (`network.rs`), replicate
//! commands to engines that agree byte for byte. The node runtime on Raft, snapshots with
//! data files and the cluster CLI are the next slices (issue 4).

pub mod log_store;
pub mod network;
pub mod state_machine;
mod types;

pub use types::{ApplyAnswer, LogCommand, NodeId, TypeConfig};
