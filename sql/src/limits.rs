//! Limits on each query, so that one heavy query cannot starve the others: a time limit, a
//! memory pool per query drawing on one budget for the node (`tidemark_query::memory`), a
//! bound on the SQL text and on its nesting, caps on the rows and bytes of an answer, and a
//! cap on the queries one key runs at once. Each refusal names the limit and the setting
//! that changes it (`[limits]` in the node's config).
//!
//! Invariant: a query holds its [`Slot`] from planning until its last batch is sent (or the
//! client goes away), so the per-key count covers streaming Flight results too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::execution::disk_manager::{DiskManager, DiskManagerBuilder, DiskManagerMode};
use tidemark_query::memory::{NODE_FULL, NODE_SETTING, NodeMemory};

use crate::Error;

/// Set from `[limits]` in the node's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// From the start of planning to the last row sent.
    pub query_timeout_ms: u64,
    /// Memory one query's operators may hold (hash tables, sorts).
    pub query_memory_bytes_max: usize,
    /// Memory all running queries' operators may hold together.
    pub node_query_memory_bytes_max: usize,
    /// Rows one answer may carry; the answer ends with an error past it.
    pub result_rows_max: u64,
    /// Bytes one answer may carry on the wire (JSON, CSV or Arrow IPC as sent).
    pub result_bytes_max: u64,
    pub sql_bytes_max: usize,
    /// Depth of nested expressions and subqueries the parser accepts.
    pub sql_nesting_max: usize,
    /// Queries one API key (or all anonymous callers together) may run at once.
    pub concurrent_queries_per_key: usize,
    /// Bytes one call of `repeat`, `lpad`, `rpad`, `array_repeat`, `array_resize`, `range`
    /// or `generate_series` may build (a failed allocation would abort the node).
    pub function_result_bytes_max: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            query_timeout_ms: 60_000,
            query_memory_bytes_max: 1 << 30,
            node_query_memory_bytes_max: 4 << 30,
            result_rows_max: 10_000_000,
            result_bytes_max: 1 << 30,
            sql_bytes_max: 1 << 20,
            sql_nesting_max: 64,
            concurrent_queries_per_key: 8,
            function_result_bytes_max: 64 << 20,
        }
    }
}

/// Which limit refused a query (for the status each door answers with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Timeout,
    /// The query's own memory limit: the query itself is too big.
    Memory,
    /// The node's budget for all queries is taken: retry later.
    NodeMemory,
    /// The answer reached its row or byte cap.
    ResultSize,
    SqlSize,
    Nesting,
    Concurrency,
}

impl Limit {
    /// A query over its own memory or answer bound must ask for less (retrying the same query
    /// fails again); a full node or a full concurrency quota may be retried; a statement too
    /// large or too deeply nested is malformed.
    pub fn status_class(self) -> tidemark_catalog::StatusClass {
        use tidemark_catalog::StatusClass;
        match self {
            Limit::Timeout => StatusClass::DeadlineExceeded,
            Limit::SqlSize => StatusClass::TooLarge,
            Limit::Concurrency | Limit::NodeMemory => StatusClass::ResourceExhausted,
            Limit::Memory | Limit::ResultSize => StatusClass::OverLimit,
            Limit::Nesting => StatusClass::Invalid,
        }
    }
}

impl QueryLimits {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.query_timeout_ms)
    }

    pub fn check_text(&self, text: &str) -> Result<(), Error> {
        if text.len() > self.sql_bytes_max {
            return Err(Error::Limit {
                limit: Limit::SqlSize,
                message: format!(
                    "the SQL text is {} bytes, above the limit of {} (limits.sql_bytes_max)",
                    text.len(),
                    self.sql_bytes_max
                ),
            });
        }
        Ok(())
    }

    pub fn timed_out(&self) -> Error {
        Error::Limit {
            limit: Limit::Timeout,
            message: format!(
                "the query ran longer than its time limit of {} ms (limits.query_timeout_ms) and was cancelled",
                self.query_timeout_ms
            ),
        }
    }

    /// Turns DataFusion's refusals that come from a limit into errors naming it.
    pub fn name_limit(&self, e: Error) -> Error {
        let Error::Query(tidemark_query::Error::DataFusion(df)) = &e else {
            return e;
        };
        // DataFusion reports a full spill directory as an I/O error naming its own setting
        // (matched on the error's kind too: a planning error can quote the user's text).
        let spill_full = |m: &str| m.contains("max_temp_directory_size");
        let full = match df.find_root() {
            DataFusionError::ArrowError(e, _) => {
                matches!(e.as_ref(), ArrowError::IoError(m, _) if spill_full(m))
            }
            DataFusionError::IoError(e) => spill_full(&e.to_string()),
            DataFusionError::ResourcesExhausted(m) | DataFusionError::Execution(m) => spill_full(m),
            _ => false,
        };
        if full {
            return Error::Limit {
                limit: Limit::NodeMemory,
                message: "the running queries' spill files reached their limit (limits.query_spill_bytes_max); \
                          retry when fewer queries run, or narrow the query"
                    .into(),
            };
        }
        match df.find_root() {
            DataFusionError::ResourcesExhausted(detail) if detail.contains(NODE_SETTING) => {
                Error::Limit {
                    limit: Limit::NodeMemory,
                    message: node_full_message(detail),
                }
            }
            // A capped function's refusal already names its setting.
            DataFusionError::ResourcesExhausted(detail)
                if detail.contains(tidemark_query::capped::SETTING) =>
            {
                Error::Limit {
                    limit: Limit::Memory,
                    message: detail.clone(),
                }
            }
            DataFusionError::ResourcesExhausted(detail) => Error::Limit {
                limit: Limit::Memory,
                message: format!(
                    "the query needs more than its memory limit of {} bytes (limits.query_memory_bytes_max); \
                     narrow the time range or group by fewer columns ({detail})",
                    self.query_memory_bytes_max
                ),
            },
            DataFusionError::SQL(inner, _)
                if inner.to_string().contains("recursion limit exceeded") =>
            {
                Error::Limit {
                    limit: Limit::Nesting,
                    message: format!(
                        "the SQL nests deeper than {} levels (limits.sql_nesting_max)",
                        self.sql_nesting_max
                    ),
                }
            }
            _ => e,
        }
    }

    /// The refusal of an answer that reached its row or byte cap.
    pub fn result_capped(&self, what: ResultCap) -> Error {
        let message = match what {
            ResultCap::Rows => format!(
                "the answer reached its cap of {} rows (limits.result_rows_max) and was cut there; \
                 aggregate, filter or add a LIMIT",
                self.result_rows_max
            ),
            ResultCap::Bytes => format!(
                "the answer reached its cap of {} bytes (limits.result_bytes_max) and was cut there; \
                 aggregate, filter, select fewer columns or add a LIMIT",
                self.result_bytes_max
            ),
        };
        Error::Limit {
            limit: Limit::ResultSize,
            message,
        }
    }
}

/// Which cap an answer reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultCap {
    Rows,
    Bytes,
}

/// The node-wide refusal without DataFusion's list of consumers, which names this query's
/// operators, not what fills the node.
fn node_full_message(detail: &str) -> String {
    match detail.find(NODE_FULL) {
        Some(at) => detail[at..].to_string(),
        None => detail.to_string(),
    }
}

/// Counts each key's running queries; holds the node's query memory budget and spill space.
#[derive(Debug)]
pub struct QueryGate {
    pub limits: QueryLimits,
    node_memory: Arc<NodeMemory>,
    spill: Option<Arc<DiskManager>>,
    running: Mutex<HashMap<String, usize>>,
}

/// One running query of a key; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<QueryGate>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.gate.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.key);
            }
        }
    }
}

impl QueryGate {
    pub fn new(limits: QueryLimits) -> Arc<QueryGate> {
        let node_memory = NodeMemory::new(limits.node_query_memory_bytes_max);
        Arc::new(QueryGate {
            limits,
            node_memory,
            spill: None,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// A gate whose queries spill into `dir` (under the node's data directory, created when
    /// first needed), at most `bytes_max` for all of them together; a query that would
    /// spill more fails naming the setting.
    pub fn with_spill(
        limits: QueryLimits,
        dir: std::path::PathBuf,
        bytes_max: u64,
    ) -> Result<Arc<QueryGate>, Error> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::BadRequest(format!(
                "cannot create the spill directory {}: {e}",
                dir.display()
            ))
        })?;
        let spill = DiskManagerBuilder::default()
            .with_mode(DiskManagerMode::Directories(vec![dir]))
            .with_max_temp_directory_size(bytes_max)
            .build()
            .map_err(|e| Error::BadRequest(format!("cannot set up spilling: {e}")))?;
        let node_memory = NodeMemory::new(limits.node_query_memory_bytes_max);
        Ok(Arc::new(QueryGate {
            limits,
            node_memory,
            spill: Some(Arc::new(spill)),
            running: Mutex::new(HashMap::new()),
        }))
    }

    /// What one query's session may use: its own limits and the node's memory budget.
    pub fn session(&self) -> tidemark_query::SessionLimits {
        tidemark_query::SessionLimits {
            memory_bytes_max: Some(self.limits.query_memory_bytes_max),
            node_memory: Some(self.node_memory.clone()),
            spill: self.spill.clone(),
            nesting_max: self.limits.sql_nesting_max,
            function_result_bytes_max: self.limits.function_result_bytes_max,
        }
    }

    /// The gate's gauges in Prometheus text format: running queries, the memory they hold
    /// and the node's budget.
    pub fn render_metrics(&self) -> String {
        let running: usize = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum();
        let mut out = String::new();
        for (name, help, value) in [
            (
                "tidemark_queries_running",
                "SQL queries running (planning or streaming their answer).",
                running,
            ),
            (
                "tidemark_query_memory_bytes",
                "Bytes the running queries' operators hold.",
                self.node_memory.used(),
            ),
            (
                "tidemark_query_memory_limit_bytes",
                "The node's budget for query memory (limits.node_query_memory_bytes_max).",
                self.node_memory.limit(),
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        }
        out
    }

    /// A place for one more query of `key` (an actor such as `key:<id>` or `anonymous`);
    /// refused while the key runs its limit of queries or the node's query memory is taken.
    pub fn enter(self: &Arc<Self>, key: &str) -> Result<Slot, Error> {
        if self.node_memory.is_full() {
            return Err(Error::Limit {
                limit: Limit::NodeMemory,
                message: tidemark_query::memory::node_full(
                    self.node_memory.used(),
                    self.node_memory.limit(),
                ),
            });
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let n = running.entry(key.to_string()).or_insert(0);
        if *n >= self.limits.concurrent_queries_per_key {
            return Err(Error::Limit {
                limit: Limit::Concurrency,
                message: format!(
                    "{key} already runs {n} queries, the limit (limits.concurrent_queries_per_key); retry when one ends"
                ),
            });
        }
        *n += 1;
        Ok(Slot {
            gate: self.clone(),
            key: key.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_runs_at_most_its_limit_and_a_finished_query_frees_its_place() {
        let gate = QueryGate::new(QueryLimits {
            concurrent_queries_per_key: 2,
            ..QueryLimits::default()
        });
        let a = gate.enter("key:a").expect("first");
        let _b = gate.enter("key:a").expect("second");
        let err = gate
            .enter("key:a")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            "key:a already runs 2 queries, the limit (limits.concurrent_queries_per_key); retry when one ends"
        );
        assert!(gate.enter("key:b").is_ok(), "other keys are not affected");
        drop(a);
        assert!(gate.enter("key:a").is_ok());
    }

    #[test]
    fn oversized_sql_is_refused_naming_the_setting() {
        let limits = QueryLimits {
            sql_bytes_max: 10,
            ..QueryLimits::default()
        };
        assert!(limits.check_text("SELECT 1").is_ok());
        let err = limits
            .check_text("SELECT 1 + 1 + 1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            err,
            "the SQL text is 16 bytes, above the limit of 10 (limits.sql_bytes_max)"
        );
    }
}
