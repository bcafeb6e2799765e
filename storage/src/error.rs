//! The storage error type. Variants carry the file, offset or position a DBA needs to act.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
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

    #[error("malformed record batch: {reason}")]
    BadBatch { reason: String },

    #[error("record batch uses compression codec {codec}, which this build cannot read yet")]
    UnsupportedCompression { codec: u8 },

    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },

    #[error(
        "offset {offset} is out of range for partition {partition} (available {earliest}..{next})"
    )]
    OffsetOutOfRange {
        partition: u32,
        offset: i64,
        earliest: i64,
        next: i64,
    },

    #[error("the {what} is shut down")]
    Closed { what: &'static str },

    #[error(
        "realtime index for {datasource} is at its memory bound ({bytes} bytes); retry after persists catch up"
    )]
    IndexFull { datasource: String, bytes: usize },

    #[error("log entry of kind {kind} cannot be applied: {reason}")]
    BadCommand { kind: u8, reason: String },

    /// Written by a newer node (a new kind or format version). Unlike a bad command, which
    /// every replica refuses alike, only older nodes refuse this one: such a node must stop
    /// rather than skip the entry and diverge.
    #[error(
        "log entry of kind {kind} (format version {version}) was written by a newer tidemark; upgrade this node, it stopped rather than skip the entry"
    )]
    NewerCommand { kind: u8, version: u8 },

    #[error(transparent)]
    Catalog(#[from] tidemark_catalog::Error),

    #[error("sketch error: {0}")]
    Sketch(String),

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
    /// An I/O error from running short of something the node gets back (file descriptors,
    /// disk space, memory): what failed may be tried again once the shortage passes. Never
    /// an fsync failure (see [`Error::Fsync`]) or damaged data.
    pub fn is_shortage(&self) -> bool {
        let Error::Io { source, .. } = self else {
            return false;
        };
        matches!(
            source.raw_os_error(),
            Some(
                libc::EMFILE
                    | libc::ENFILE
                    | libc::ENOSPC
                    | libc::EDQUOT
                    | libc::ENOMEM
                    | libc::ENOBUFS
            )
        ) || matches!(
            source.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::OutOfMemory
        )
    }

    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub fn fsync(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Fsync { path, source }
    }

    pub fn bad_batch(reason: impl Into<String>) -> Error {
        Error::BadBatch {
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn io(errno: i32) -> Error {
        Error::Io {
            path: "x".into(),
            source: std::io::Error::from_raw_os_error(errno),
        }
    }

    #[test]
    fn shortages_are_the_errors_a_retry_can_outlast() {
        assert!(io(libc::EMFILE).is_shortage());
        assert!(io(libc::ENOSPC).is_shortage());
        assert!(!io(libc::ENOENT).is_shortage());
        assert!(!io(libc::EIO).is_shortage());
        let fsync = Error::Fsync {
            path: "x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(!fsync.is_shortage(), "an fsync failure is never retried");
    }
}
