//! The catalog's error type. Every variant names what the user sent and what to change.

use crate::LogPosition;

/// One problem found in a datasource spec, with the JSON path of the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecProblem {
    /// JSON path of the offending field, e.g. `metrics[2].field`.
    pub field: String,
    /// What is wrong and what would be accepted instead.
    pub message: String,
}

impl std::fmt::Display for SpecProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn join_problems(problems: &[SpecProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid datasource spec: {}", join_problems(.0))]
    InvalidSpec(Vec<SpecProblem>),

    #[error("datasource spec is not valid JSON: {0}")]
    SpecJson(#[from] serde_json::Error),

    #[error("invalid period {text:?}: {reason} (use ISO-8601 like PT1M, PT15M, PT1H, P1D)")]
    InvalidPeriod { text: String, reason: String },

    #[error("datasource {name:?} already exists; use update to change it")]
    DatasourceExists { name: String },

    #[error("datasource {name:?} does not exist")]
    UnknownDatasource { name: String },

    #[error("update of datasource {name:?} refused: {reason}")]
    IncompatibleUpdate { name: String, reason: String },

    #[error(
        "catalog command at log position {position} is older than the catalog (at {applied}); \
         commands must be applied in log order"
    )]
    OutOfOrder {
        position: LogPosition,
        applied: LogPosition,
    },

    #[error("invalid governance object: {}", join_problems(.0))]
    InvalidTag(Vec<SpecProblem>),

    #[error("governance change conflicts: {}", join_problems(.0))]
    GovernanceConflict(Vec<SpecProblem>),

    #[error("--where {text:?}: {problem} at character {at}")]
    InvalidWhere {
        text: String,
        at: usize,
        problem: String,
    },

    #[error("governance domain {name:?} does not exist")]
    UnknownDomain { name: String },

    #[error("governance domain {name:?} already exists; use update to change it")]
    DomainExists { name: String },

    #[error("tag {name:?} does not exist in governance domain {domain:?}")]
    UnknownTag { domain: String, name: String },

    #[error("invalid retention rule: {}", join_problems(.0))]
    InvalidRetention(Vec<SpecProblem>),

    #[error("invalid API key: {}", join_problems(.0))]
    InvalidKey(Vec<SpecProblem>),

    #[error("API key {id} already exists")]
    KeyExists { id: String },

    #[error("API key {id} does not exist")]
    UnknownKey { id: String },

    #[error(
        "API key {id} is the last admin key; create another admin key before revoking it, or nobody could manage this cluster"
    )]
    LastAdminKey { id: String },

    #[error("internal error (this is a bug in tidemark, please report it): {0}")]
    Internal(String),
}

use crate::StatusClass;

impl Error {
    pub fn status_class(&self) -> StatusClass {
        match self {
            Error::InvalidSpec(_)
            | Error::SpecJson(_)
            | Error::InvalidPeriod { .. }
            | Error::InvalidTag(_)
            | Error::InvalidKey(_)
            | Error::InvalidRetention(_)
            | Error::InvalidWhere { .. } => StatusClass::Invalid,
            Error::DatasourceExists { .. }
            | Error::DomainExists { .. }
            | Error::KeyExists { .. } => StatusClass::AlreadyExists,
            Error::UnknownDatasource { .. }
            | Error::UnknownDomain { .. }
            | Error::UnknownTag { .. }
            | Error::UnknownKey { .. } => StatusClass::NotFound,
            Error::IncompatibleUpdate { .. }
            | Error::GovernanceConflict(_)
            | Error::LastAdminKey { .. } => StatusClass::FailedPrecondition,
            Error::OutOfOrder { .. } | Error::Internal(_) => StatusClass::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
