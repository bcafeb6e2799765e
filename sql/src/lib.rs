//! tidemark-sql: the read doors. Arrow Flight SQL (`flight.rs`) and `POST /v1/sql`
//! (`http.rs`) both plan with `tidemark_query` over a `SnapshotSource` the binary injects;
//! this crate never scans data itself.
//!
//! ```text
//!  Flight SQL client ─► flight::TidemarkFlightSql ─┐
//!  HTTP client ───────► http::router (/v1/sql) ────┴─► tidemark_query::sql ─► DataFusion
//! ```

use std::sync::Arc;

use tidemark_storage::snapshot::SnapshotSource;

pub mod flight;
pub mod http;

/// What both doors need: where data comes from.
#[derive(Debug, Clone)]
pub struct SqlState {
    pub source: Arc<dyn SnapshotSource>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Query(#[from] tidemark_query::Error),

    #[error("cannot encode the result: {0}")]
    Encode(String),

    #[error("bad request: {0}")]
    BadRequest(String),
}

impl Error {
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Query(e) => e.is_user_error(),
            Error::BadRequest(_) => true,
            Error::Encode(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Runs one read-only statement to completion.
pub async fn run_query(
    state: &SqlState,
    text: &str,
) -> Result<(datafusion::arrow::datatypes::SchemaRef, Vec<datafusion::arrow::array::RecordBatch>)> {
    let ctx = tidemark_query::new_session(state.source.clone());
    let df = tidemark_query::sql(&ctx, text).await?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(tidemark_query::Error::from)?;
    Ok((schema, batches))
}
