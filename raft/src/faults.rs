//! Transport faults for tests: drop, delay or cut Raft messages this node sends. Off unless
//! the node was started with faults enabled (`tidemark serve --test-faults`); tests switch
//! rules on and off over HTTP (`POST /v1/test/faults`) while the cluster runs.
//!
//! A partition is made by giving every node the set of peers it cannot reach: each side
//! drops what it sends to the other, and an RPC is a request with its answer, so nothing
//! crosses in either direction.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// What to do to this node's outgoing Raft messages.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultRules {
    /// Peers this node cannot reach: every message to them fails as unreachable.
    pub unreachable: BTreeSet<NodeId>,
    /// Fraction (0..=1) of the other messages dropped, as a network error.
    pub drop_ratio: f64,
    /// Delay added to every message that is sent.
    pub delay_ms: u64,
}

/// What a message suffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    Unreachable,
    Dropped,
    Delayed(Duration),
    None,
}

/// The rules a node's network consults, shared with whoever changes them.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    rules: Arc<RwLock<FaultRules>>,
    seed: Arc<AtomicU64>,
}

impl Faults {
    pub fn set(&self, rules: FaultRules) -> Result<(), String> {
        if !(0.0..=1.0).contains(&rules.drop_ratio) {
            return Err(format!(
                "drop_ratio must be between 0 and 1, not {}",
                rules.drop_ratio
            ));
        }
        *self.rules.write().unwrap_or_else(|p| p.into_inner()) = rules;
        Ok(())
    }

    pub fn rules(&self) -> FaultRules {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn for_message(&self, target: NodeId) -> Fault {
        let r = self.rules.read().unwrap_or_else(|p| p.into_inner());
        if r.unreachable.contains(&target) {
            return Fault::Unreachable;
        }
        if r.drop_ratio > 0.0 && self.next_unit() < r.drop_ratio {
            return Fault::Dropped;
        }
        if r.delay_ms > 0 {
            return Fault::Delayed(Duration::from_millis(r.delay_ms));
        }
        Fault::None
    }

    /// A uniform number in [0, 1) from a shared xorshift: tests need chance, not secrecy.
    fn next_unit(&self) -> f64 {
        let mut x = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}
