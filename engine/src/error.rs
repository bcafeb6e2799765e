//! The engine's error type. Variants carry what a DBA or a caller needs to act: the file and
//! byte of damaged state, the entry that could not be applied, the job that was cancelled.
//! Errors of the formats below (a raw batch that does not decode, a damaged segment) keep
//! their own type inside [`Error::Storage`].

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Storage(#[from] tidemark_storage::Error),

    #[error(transparent)]
    Catalog(#[from] tidemark_catalog::Error),

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// An fsync failed: the node must stop rather than retry, since the kernel may have
    /// dropped the dirty pages (the PostgreSQL fsync lesson).
    #[error(
        "fsync failed on {path}: {source}; stopping: durable state is unknown, restart the node to recover from the log"
    )]
    Fsync {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },

    #[error("the {what} is shut down")]
    Closed { what: &'static str },

    #[error("log entry of kind {kind} cannot be applied: {reason}")]
    BadCommand { kind: u8, reason: String },

    /// Written by a newer node (a new kind or format version). Unlike a bad command, which
    /// every replica refuses alike, only older nodes refuse this one: such a node must stop
    /// rather than skip the entry and diverge.
    #[error(
        "log entry of kind {kind} (format version {version}) was written by a newer tidemark; upgrade this node, it stopped rather than skip the entry"
    )]
    NewerCommand { kind: u8, version: u8 },

    /// A request names something that does not exist (a caller's mistake, 404).
    #[error("{0}")]
    NotFound(String),

    /// A request that cannot be served as asked (a caller's mistake, 400).
    #[error("{0}")]
    Invalid(String),

    /// A job was cancelled (by a DBA, or because its node restarted) while this ran.
    #[error("{0}")]
    Cancelled(String),

    #[error("internal error (this is a bug in tidemark, please report it): {0}")]
    Internal(String),
}

impl Error {
    /// What kind of failure this is. Only what a request can cause is the caller's: a name
    /// that does not exist, a request that cannot be served as asked, a job cancelled under
    /// it. Everything else (damaged or unwritable state, a catalog error raised past the
    /// edge's own checks) is the node's.
    pub fn status_class(&self) -> tidemark_catalog::StatusClass {
        use tidemark_catalog::StatusClass;
        match self {
            Error::NotFound(_) => StatusClass::NotFound,
            Error::Invalid(_) => StatusClass::Invalid,
            Error::Cancelled(_) => StatusClass::Cancelled,
            _ => StatusClass::Internal,
        }
    }

    /// Running short of something the node gets back (file descriptors, disk space, memory):
    /// what failed may be tried again once the shortage passes. Never an fsync failure or
    /// damaged data. See [`tidemark_storage::Error::is_shortage`].
    pub fn is_shortage(&self) -> bool {
        match self {
            Error::Storage(e) => e.is_shortage(),
            Error::Io { source, .. } => tidemark_storage::error::is_shortage(source),
            _ => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn fsync(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Fsync { path, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
