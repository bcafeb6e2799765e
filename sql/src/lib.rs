//! tidemark-sql: the read doors. Arrow Flight SQL (`flight.rs`) and `POST /v1/sql`
//! (`http.rs`) both plan with `tidemark_query` over a `SnapshotSource` the binary injects;
//! this crate never scans data itself.
//!
//! ```text
//!  Flight SQL client ─► flight::TidemarkFlightSql ─┐
//!  HTTP client ───────► http::router (/v1/sql) ────┴─► tidemark_query::sql ─► DataFusion
//! ```

use std::sync::Arc;

use tidemark_catalog::access::{Principal, Role};
use tidemark_query::scope::Scope;
use tidemark_storage::snapshot::SnapshotSource;

pub mod answer;
pub mod flight;
pub mod flight_auth;
pub mod http;
pub mod limits;
mod status;
pub mod wire;

/// What both doors need: where data comes from, and how to wait for read-your-writes.
#[derive(Debug, Clone)]
pub struct SqlState {
    pub source: Arc<dyn SnapshotSource>,
    pub barrier: Option<Arc<dyn ReadBarrier>>,
    /// Checks Flight SQL callers' API keys (HTTP callers are checked by the ingest router's
    /// layer); `None` serves everyone.
    pub auth: Option<Arc<dyn flight_auth::Authenticator>>,
    /// Per-query limits and each key's running queries.
    pub gate: Arc<limits::QueryGate>,
}

/// The request header (HTTP) or gRPC metadata key (Flight SQL) that asks for a consistency
/// level; its one value besides the default `applied` is `read-your-writes`.
pub const CONSISTENCY_HEADER: &str = "tidemark-consistency";

/// Read-your-writes: before a read that asks for it, wait until this node has applied every
/// write acknowledged before the read began (a Raft read index, which the leader confirms
/// with a heartbeat round). The binary injects the replication layer's implementation, so
/// the SQL doors name no Raft crate.
pub trait ReadBarrier: Send + Sync + std::fmt::Debug {
    fn wait(&self) -> futures::future::BoxFuture<'static, std::result::Result<(), String>>;
}

/// Applies the consistency a request asked for (`None`: read what this node applied).
pub async fn consistency(state: &SqlState, asked: Option<&str>) -> Result<()> {
    match asked.map(str::trim) {
        None | Some("") | Some("applied") => Ok(()),
        Some("read-your-writes") => match &state.barrier {
            Some(b) => b.wait().await.map_err(Error::Consistency),
            None => Ok(()),
        },
        Some(other) => Err(Error::BadRequest(format!(
            "{CONSISTENCY_HEADER}: {other:?} is not a consistency level; use \"applied\" (default) or \"read-your-writes\""
        ))),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Query(#[from] tidemark_query::Error),

    #[error("cannot encode the result: {0}")]
    Encode(String),

    #[error("bad request: {0}")]
    BadRequest(String),

    #[error("{0}")]
    Unsupported(String),

    #[error("read-your-writes is not available right now: {0}")]
    Consistency(String),

    #[error("{message}")]
    Limit {
        limit: limits::Limit,
        message: String,
    },
}

impl Error {
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Query(e) => e.is_user_error(),
            Error::BadRequest(_) | Error::Unsupported(_) | Error::Limit { .. } => true,
            Error::Encode(_) | Error::Consistency(_) => false,
        }
    }

    /// What kind of failure this is; the doors answer with its wire status.
    pub fn status_class(&self) -> StatusClass {
        match self {
            Error::Limit { limit, .. } => limit.status_class(),
            Error::Consistency(_) => StatusClass::Unavailable,
            e if e.is_user_error() => StatusClass::Invalid,
            _ => StatusClass::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

use tidemark_catalog::StatusClass;

/// What `caller` may read: a merchant reader its tenants' rows, everyone else who may query
/// everything.
pub fn scope_of(caller: &Principal) -> Scope {
    match caller {
        Principal::Key {
            role: Role::MerchantReader,
            scope,
            ..
        } => Scope::tenants(scope.tenants.iter().cloned()),
        Principal::Key { .. } | Principal::Anonymous | Principal::Node => Scope::All,
    }
}

/// Plans one read-only statement for `caller`, within the node's query limits and the
/// caller's scope. Placeholders are refused here, at planning, because nothing could bind
/// them later and DataFusion would only fail at execution with a less helpful message.
pub async fn plan(
    state: &SqlState,
    text: &str,
    caller: &Principal,
) -> Result<datafusion::dataframe::DataFrame> {
    let limits = state.gate.limits;
    limits.check_text(text)?;
    let ctx = tidemark_query::new_session_with(
        state.source.clone(),
        state.gate.session(),
        scope_of(caller),
    );
    let df = tidemark_query::sql(&ctx, text)
        .await
        .map_err(|e| limits.name_limit(e.into()))?;
    let params = df
        .logical_plan()
        .get_parameter_types()
        .map_err(tidemark_query::Error::from)?;
    if !params.is_empty() {
        let mut names: Vec<&str> = params.keys().map(String::as_str).collect();
        names.sort_unstable();
        return Err(Error::Unsupported(format!(
            "query parameters ({}) are not supported yet: write the values into the SQL text",
            names.join(", ")
        )));
    }
    Ok(df)
}
