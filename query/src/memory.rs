//! Query memory bounded per node as well as per query.
//!
//! Each query has its own DataFusion memory pool (`limits.query_memory_bytes_max`), but
//! eight keys each running their allowed queries at that size could still take the whole
//! machine. [`NodeMemory`] is the node's one budget for all running queries
//! (`limits.node_query_memory_bytes_max`); a [`QueryMemoryPool`] is one query's pool that
//! reserves every byte from both its own limit and the node's. A query that would grow past
//! the node's budget fails with a refusal naming [`NODE_SETTING`] (the doors answer it with
//! 429 / RESOURCE_EXHAUSTED: retry later), and while the budget is used up, new queries are
//! refused before they plan.
//!
//! Invariant: the node's count is the sum of the running queries' reservations. A query's
//! pool gives back whatever it still holds when it is dropped, so a query cancelled in the
//! middle of an operator (its client went away) cannot leak budget.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool, MemoryReservation};

/// The setting a node-wide refusal names.
pub const NODE_SETTING: &str = "limits.node_query_memory_bytes_max";
/// The setting a per-query refusal names.
pub const QUERY_SETTING: &str = "limits.query_memory_bytes_max";

/// How a node-wide refusal begins.
pub const NODE_FULL: &str = "the node's running queries hold ";

/// The node-wide refusal.
pub fn node_full(used: usize, limit: usize) -> String {
    format!(
        "{NODE_FULL}{used} of their {limit} bytes ({NODE_SETTING}); retry when fewer queries run"
    )
}

/// The node's budget for the memory all running queries' operators hold.
#[derive(Debug)]
pub struct NodeMemory {
    limit: usize,
    used: AtomicUsize,
}

impl NodeMemory {
    pub fn new(limit: usize) -> Arc<NodeMemory> {
        Arc::new(NodeMemory {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes the running queries hold now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether the budget is used up, so that a new query should wait rather than start.
    pub fn is_full(&self) -> bool {
        self.used() >= self.limit
    }

    fn try_take(&self, bytes: usize) -> std::result::Result<(), usize> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .map(|_| ())
    }

    fn take(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    fn give_back(&self, bytes: usize) {
        // Saturating: a give-back larger than the count would be a bug in the accounting,
        // and must not wrap the count into "always full".
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
    }
}

/// One query's pool: at most `limit` bytes, each of them also taken from the node's budget.
#[derive(Debug)]
pub struct QueryMemoryPool {
    limit: usize,
    used: AtomicUsize,
    node: Option<Arc<NodeMemory>>,
}

impl QueryMemoryPool {
    pub fn new(limit: usize, node: Option<Arc<NodeMemory>>) -> QueryMemoryPool {
        QueryMemoryPool {
            limit,
            used: AtomicUsize::new(0),
            node,
        }
    }
}

impl fmt::Display for QueryMemoryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "query pool (used: {}, limit: {})",
            self.used.load(Ordering::Relaxed),
            self.limit
        )
    }
}

impl MemoryPool for QueryMemoryPool {
    fn name(&self) -> &str {
        "tidemark-query"
    }

    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        if let Some(node) = &self.node {
            node.take(additional);
        }
    }

    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        if let Some(node) = &self.node {
            node.give_back(shrink);
        }
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(additional).filter(|&after| after <= self.limit)
            })
            .map_err(|used| {
                DataFusionError::ResourcesExhausted(format!(
                    "{} needs {additional} more bytes, {used} of the query's {} bytes are in use ({QUERY_SETTING})",
                    reservation.consumer().name(),
                    self.limit
                ))
            })?;
        if let Some(node) = &self.node
            && node.try_take(additional).is_err()
        {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(DataFusionError::ResourcesExhausted(node_full(
                node.used(),
                node.limit(),
            )));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

impl Drop for QueryMemoryPool {
    fn drop(&mut self) {
        let left = self.used.swap(0, Ordering::Relaxed);
        if let Some(node) = &self.node
            && left > 0
        {
            node.give_back(left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::MemoryConsumer;

    #[test]
    fn a_query_is_held_to_its_own_limit_and_to_what_the_node_has_left() {
        let node = NodeMemory::new(1000);
        let a: Arc<dyn MemoryPool> = Arc::new(QueryMemoryPool::new(600, Some(node.clone())));
        let b: Arc<dyn MemoryPool> = Arc::new(QueryMemoryPool::new(600, Some(node.clone())));
        let ra = MemoryConsumer::new("sort a").register(&a);
        let rb = MemoryConsumer::new("hash b").register(&b);

        ra.try_grow(600).expect("a within both limits");
        let own = ra
            .try_grow(1)
            .expect_err("a above its own limit")
            .to_string();
        assert!(own.contains(QUERY_SETTING), "{own}");
        assert_eq!(node.used(), 600);

        rb.try_grow(400).expect("b takes what the node has left");
        assert!(node.is_full());
        let full = rb.try_grow(1).expect_err("the node is full").to_string();
        assert!(
            full.contains(NODE_SETTING) && full.contains("1000 of their 1000 bytes"),
            "{full}"
        );
        assert_eq!(
            (b.reserved(), node.used()),
            (400, 1000),
            "a refused growth takes nothing"
        );

        ra.shrink(100);
        rb.try_grow(100).expect("a's freed bytes are b's to take");
        assert_eq!(node.used(), 1000);
    }

    #[test]
    fn a_dropped_query_gives_back_what_it_still_held() {
        let node = NodeMemory::new(1000);
        let elsewhere: Arc<dyn MemoryPool> =
            Arc::new(datafusion::execution::memory_pool::UnboundedMemoryPool::default());
        let named = MemoryConsumer::new("sort").register(&elsewhere);
        let pool = QueryMemoryPool::new(1000, Some(node.clone()));
        pool.try_grow(&named, 700).expect("within limits");
        assert_eq!(node.used(), 700);
        // A query cancelled in the middle of an operator: its pool goes, whatever it held.
        drop(pool);
        assert_eq!(node.used(), 0);
    }
}
