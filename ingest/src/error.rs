//! The ingest error type, and its one mapping to HTTP statuses.

use axum::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] tidemark_engine::Error),

    #[error(transparent)]
    Catalog(#[from] tidemark_catalog::Error),

    #[error(transparent)]
    Replication(#[from] tidemark_raft::Error),

    #[error("the node stopped accepting writes: {reason}")]
    Stopped { reason: String },

    #[error("{0}")]
    BadRequest(String),

    #[error("{0}")]
    NotFound(String),

    /// The caller is known but may not do this (a publisher key without the datasource).
    #[error("{0}")]
    Forbidden(String),

    #[error("{0}")]
    Conflict(String),

    #[error("{0}")]
    Unprocessable(String),

    #[error("request body is larger than the {limit_bytes}-byte limit; split the batch")]
    TooLarge { limit_bytes: usize },

    #[error("{reason}; retry after {retry_after_s} s")]
    Overloaded { reason: String, retry_after_s: u64 },

    /// Something this request needs is out of reach for now (the leader); a retry may work.
    #[error("{0}")]
    Unavailable(String),
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Engine(tidemark_engine::Error::NotFound(_)) => StatusCode::NOT_FOUND,
            Error::Engine(tidemark_engine::Error::Invalid(_)) => StatusCode::BAD_REQUEST,
            Error::Engine(tidemark_engine::Error::Cancelled(_)) => StatusCode::CONFLICT,
            Error::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Catalog(e) => match e.status() {
                tidemark_catalog::StatusCode::InvalidArgument => StatusCode::BAD_REQUEST,
                tidemark_catalog::StatusCode::NotFound => StatusCode::NOT_FOUND,
                tidemark_catalog::StatusCode::AlreadyExists => StatusCode::CONFLICT,
                tidemark_catalog::StatusCode::FailedPrecondition => StatusCode::CONFLICT,
                tidemark_catalog::StatusCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Error::Replication(e) => match e {
                tidemark_raft::Error::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
                tidemark_raft::Error::Membership(_) => StatusCode::CONFLICT,
                // No leader to take the write right now (election, no quorum, leadership
                // moved mid-write): the client retries, with its idempotency key.
                _ => StatusCode::SERVICE_UNAVAILABLE,
            },
            Error::Stopped { .. } | Error::Overloaded { .. } | Error::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            Error::Overloaded { retry_after_s, .. } => Some(*retry_after_s),
            Error::Unavailable(_) => Some(1),
            Error::Replication(
                tidemark_raft::Error::Overloaded { .. }
                | tidemark_raft::Error::NotLeader { .. }
                | tidemark_raft::Error::NotCommitted { .. }
                | tidemark_raft::Error::OutcomeUnknown,
            ) => Some(1),
            _ => None,
        }
    }
}

impl axum::response::IntoResponse for Error {
    fn into_response(self) -> axum::response::Response {
        let status = self.status();
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let Error::Catalog(
            tidemark_catalog::Error::InvalidSpec(problems)
            | tidemark_catalog::Error::InvalidTag(problems)
            | tidemark_catalog::Error::GovernanceConflict(problems),
        ) = &self
        {
            body["problems"] = problems
                .iter()
                .map(|p| serde_json::json!({ "field": p.field, "message": p.message }))
                .collect::<Vec<_>>()
                .into();
        }
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_s()
            && let Ok(v) = axum::http::HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
