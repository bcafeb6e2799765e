//! The ingest error type: its status class, and the one map from a class to an HTTP status
//! for the HTTP doors this crate serves.

use axum::http::StatusCode;
use tidemark_catalog::StatusClass;

/// The HTTP status of a status class (the table is [`StatusClass::http_status`]).
pub fn http_status(class: StatusClass) -> StatusCode {
    StatusCode::from_u16(class.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

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
    /// What kind of failure this is, for every door that answers with it.
    pub fn status_class(&self) -> StatusClass {
        match self {
            Error::Engine(e) => e.status_class(),
            Error::Catalog(e) => e.status_class(),
            Error::Replication(e) => e.status_class(),
            Error::Stopped { .. } | Error::Overloaded { .. } | Error::Unavailable(_) => {
                StatusClass::Unavailable
            }
            Error::BadRequest(_) => StatusClass::Invalid,
            Error::NotFound(_) => StatusClass::NotFound,
            Error::Forbidden(_) => StatusClass::PermissionDenied,
            Error::Conflict(_) => StatusClass::Conflict,
            Error::Unprocessable(_) => StatusClass::Unprocessable,
            Error::TooLarge { .. } => StatusClass::TooLarge,
        }
    }

    /// The HTTP status this error is answered with: the one map from a class to HTTP.
    pub fn status(&self) -> StatusCode {
        http_status(self.status_class())
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
