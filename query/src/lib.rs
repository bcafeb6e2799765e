//! tidemark-query: SQL over tidemark's data with DataFusion. Tables read a snapshot (segments
//! plus realtime rows) through `tidemark_storage::snapshot::SnapshotSource`; this crate owns
//! no listener (the `sql` crate serves it).
//!
//! ```text
//!  SQL ─► session (catalog tidemark: public.<datasource>, sys.<table>; Druid functions)
//!            └─► DatasourceTable::scan ─► Pruning (time, dimension bitmaps)
//!                     └─► TidemarkScanExec (segment columns zero-copy + realtime batches)
//! ```

use std::sync::Arc;

use datafusion::arrow::error::ArrowError;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::memory_pool::TrackConsumersPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use tidemark_storage::snapshot::SnapshotSource;

pub mod capped;
pub mod memory;
pub mod pruning;
pub mod scan;
pub mod schemas;
pub mod scope;
pub mod sketch_aggregates;
pub mod table;
pub mod time_floor;

pub const CATALOG: &str = "tidemark";
pub const DATASOURCE_SCHEMA: &str = "public";
pub const SYSTEM_SCHEMA: &str = "sys";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The statement writes or changes schema; tidemark's SQL is read-only.
    #[error("{statement} is not supported: {hint}")]
    ReadOnly {
        statement: String,
        hint: &'static str,
    },

    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
}

impl Error {
    /// Whether the caller sent something wrong (as opposed to a fault in tidemark).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::ReadOnly { .. } => true,
            Error::DataFusion(e) => match e.find_root() {
                DataFusionError::Plan(_)
                | DataFusionError::SQL(..)
                | DataFusionError::SchemaError(..)
                | DataFusionError::NotImplemented(_) => true,
                // Values the statement itself computes wrongly: `1 / 0`, `CAST('FR' AS DATE)`.
                DataFusionError::ArrowError(e, _) => matches!(
                    e.as_ref(),
                    ArrowError::CastError(_)
                        | ArrowError::DivideByZero
                        | ArrowError::ArithmeticOverflow(_)
                        | ArrowError::ParseError(_)
                ),
                _ => false,
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What one session (one query) may use.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// The session's memory pool: operators that would grow past it fail with
    /// `ResourcesExhausted` instead of taking memory other queries need.
    pub memory_bytes_max: Option<usize>,
    /// The node's budget for all running queries, which the session's pool also draws on
    /// (see [`memory`]); `None`: only the session's own limit applies.
    pub node_memory: Option<Arc<memory::NodeMemory>>,
    /// Where sorts and groupings short of memory spill, shared by all of a node's queries
    /// so its size cap is the node's; `None`: DataFusion's default (the OS temp directory).
    pub spill: Option<Arc<datafusion::execution::disk_manager::DiskManager>>,
    /// How deep the SQL parser may recurse (nested expressions and subqueries).
    pub nesting_max: usize,
    /// Bytes one call of a function that sizes its result from an argument may build
    /// (`repeat`, `lpad`, …; see [`capped`]).
    pub function_result_bytes_max: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            memory_bytes_max: None,
            node_memory: None,
            spill: None,
            nesting_max: 50,
            function_result_bytes_max: 64 << 20,
        }
    }
}

/// A session over `source` with tidemark's tables and functions.
pub fn new_session(source: Arc<dyn SnapshotSource>) -> SessionContext {
    new_session_with(source, SessionLimits::default(), scope::Scope::All)
}

/// A session with its own memory pool and parser depth bound, reading what `scope` may see.
pub fn new_session_with(
    source: Arc<dyn SnapshotSource>,
    limits: SessionLimits,
    scope: scope::Scope,
) -> SessionContext {
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG, DATASOURCE_SCHEMA)
        .with_create_default_catalog_and_schema(false)
        .with_information_schema(true);
    if let Ok(depth) = datafusion::config::ConfigNonZeroUsize::try_new(limits.nesting_max) {
        config.options_mut().sql_parser.recursion_limit = depth;
    }
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(bytes) = limits.memory_bytes_max {
        let pool = memory::QueryMemoryPool::new(bytes, limits.node_memory.clone());
        // TrackConsumersPool names the largest consumers in a refusal.
        let top = std::num::NonZeroUsize::MIN.saturating_add(4);
        runtime = runtime.with_memory_pool(Arc::new(TrackConsumersPool::new(pool, top)));
    }
    let ctx = match runtime.build() {
        Ok(mut rt) => {
            if let Some(spill) = &limits.spill {
                rt.disk_manager = spill.clone();
            }
            SessionContext::new_with_config_rt(config, Arc::new(rt))
        }
        // Building a runtime without a disk manager change cannot fail; keep a session anyway.
        Err(_) => SessionContext::new_with_config(config),
    };
    let catalog = MemoryCatalogProvider::new();
    // MemoryCatalogProvider::register_schema only fails for duplicate names, which these are not.
    let sees_system_tables = scope.sees_system_tables();
    let _ = catalog.register_schema(
        DATASOURCE_SCHEMA,
        Arc::new(schemas::DatasourceSchema {
            source: source.clone(),
            scope,
        }),
    );
    if sees_system_tables {
        let _ = catalog.register_schema(SYSTEM_SCHEMA, Arc::new(schemas::SystemSchema { source }));
    }
    ctx.register_catalog(CATALOG, Arc::new(catalog));
    capped::register(&ctx, limits.function_result_bytes_max);
    ctx.register_udf(time_floor::TimeFloor::udf());
    ctx.register_udaf(sketch_aggregates::ApproxCountDistinctHll::udaf());
    ctx.register_udaf(sketch_aggregates::ApproxQuantileDs::udaf());
    ctx
}

/// Plans one read-only statement. Writes get an error that says how data gets in.
pub async fn sql(ctx: &SessionContext, text: &str) -> Result<DataFrame> {
    let depth = ctx
        .state()
        .config()
        .options()
        .sql_parser
        .recursion_limit
        .get();
    let statements = DFParserBuilder::new(text)
        .with_recursion_limit(depth)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(Error::DataFusion)?;
    if statements.len() != 1 {
        return Err(Error::DataFusion(DataFusionError::Plan(format!(
            "expected exactly one SQL statement, got {}",
            statements.len()
        ))));
    }
    if let Some(Statement::Statement(stmt)) = statements.front() {
        let kind = match stmt.as_ref() {
            SqlStatement::Insert(_) => Some("INSERT"),
            SqlStatement::Update(_) => Some("UPDATE"),
            SqlStatement::Delete(_) => Some("DELETE"),
            SqlStatement::Merge(_) => Some("MERGE"),
            SqlStatement::Truncate(_) => Some("TRUNCATE"),
            _ => None,
        };
        if let Some(kind) = kind {
            let hint = if kind == "DELETE" || kind == "TRUNCATE" {
                "tidemark removes data with `tidemark delete --datasource D --where ...` and retention rules, not SQL"
            } else {
                table::READ_ONLY_HINT
            };
            return Err(Error::ReadOnly {
                statement: kind.to_string(),
                hint,
            });
        }
    }
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    Ok(ctx.sql_with_options(text, options).await?)
}
