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

    #[error("sketch error: {0}")]
    Sketch(String),

    #[error("internal error (this is a bug in tidemark, please report it): {0}")]
    Internal(String),
}

impl Error {
    /// What kind of failure this is. Everything the formats raise is the node's problem (a
    /// damaged file, a failed write), never the caller's: callers that hand the formats
    /// client bytes (the Kafka door) decide their own answers from the variant.
    pub fn status_class(&self) -> tidemark_catalog::StatusClass {
        tidemark_catalog::StatusClass::Internal
    }

    /// An I/O error from running short of something the node gets back (file descriptors,
    /// disk space, memory): what failed may be tried again once the shortage passes. Never
    /// an fsync failure (see [`Error::Fsync`]) or damaged data.
    pub fn is_shortage(&self) -> bool {
        match self {
            Error::Io { source, .. } => is_shortage(source),
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

    pub(crate) fn bad_batch(reason: impl Into<String>) -> Error {
        Error::BadBatch {
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An I/O error from running short of something the node gets back (file descriptors, disk
/// space, memory).
pub fn is_shortage(source: &std::io::Error) -> bool {
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
