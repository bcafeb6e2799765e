//! The one status class every tidemark error reports, and the one table that turns a class
//! into a wire status: an HTTP status and a gRPC code (a Postgres SQLSTATE later). Each crate's
//! error says which class it is (`status_class()`); only the doors turn classes into wire
//! statuses, through this table, so a class means the same on every door. Kafka's
//! protocol-specific codes (NOT_LEADER_OR_FOLLOWER, OUT_OF_ORDER_SEQUENCE_NUMBER, ...) stay with
//! the Kafka door, which decides them from the request, not from a class.
//!
//! The numbers live here rather than as `http`/`tonic` types so this crate stays free of the
//! network stack (dev/depcheck); the doors convert them with `from_u16` / `Code::from_i32`.

/// What kind of failure an error is, as a caller would act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// The request is malformed or names something impossible: fix the request.
    Invalid,
    /// What the request names does not exist.
    NotFound,
    /// What the request would create exists already.
    AlreadyExists,
    /// The request conflicts with the current state (a job already ended, a duplicate).
    Conflict,
    /// The state does not allow this now (an incompatible spec change, the last admin key).
    FailedPrecondition,
    /// Well-formed, but refused for what it carries (a reused idempotency key with another
    /// body, a command the state machine refused).
    Unprocessable,
    /// No valid credentials.
    Unauthenticated,
    /// Valid credentials without the right.
    PermissionDenied,
    /// A shared bound was reached (the node's query memory, a key's concurrent queries):
    /// retry later.
    ResourceExhausted,
    /// The request is over a limit of its own (a query's memory, its answer's size): the same
    /// request fails again; ask for less.
    OverLimit,
    /// The request body is over its size limit: split it.
    TooLarge,
    /// The request ran out of its time limit.
    DeadlineExceeded,
    /// Out of reach for now (no leader, shutting down, overloaded): retry.
    Unavailable,
    /// A job the request waited for was cancelled.
    Cancelled,
    /// A bug in tidemark, or damaged state.
    Internal,
}

/// gRPC status codes (grpc/status.proto), by number.
mod grpc {
    pub(super) const CANCELLED: i32 = 1;
    pub(super) const INVALID_ARGUMENT: i32 = 3;
    pub(super) const DEADLINE_EXCEEDED: i32 = 4;
    pub(super) const NOT_FOUND: i32 = 5;
    pub(super) const ALREADY_EXISTS: i32 = 6;
    pub(super) const PERMISSION_DENIED: i32 = 7;
    pub(super) const RESOURCE_EXHAUSTED: i32 = 8;
    pub(super) const FAILED_PRECONDITION: i32 = 9;
    pub(super) const INTERNAL: i32 = 13;
    pub(super) const UNAVAILABLE: i32 = 14;
    pub(super) const UNAUTHENTICATED: i32 = 16;
}

impl StatusClass {
    /// The HTTP status a door answers with.
    pub fn http_status(self) -> u16 {
        match self {
            StatusClass::Invalid | StatusClass::OverLimit => 400,
            StatusClass::Unauthenticated => 401,
            StatusClass::PermissionDenied => 403,
            StatusClass::NotFound => 404,
            StatusClass::DeadlineExceeded => 408,
            // A cancelled job and a state that forbids the change are conflicts with the
            // state as far as an HTTP client is concerned.
            StatusClass::AlreadyExists
            | StatusClass::Conflict
            | StatusClass::FailedPrecondition
            | StatusClass::Cancelled => 409,
            StatusClass::TooLarge => 413,
            StatusClass::Unprocessable => 422,
            StatusClass::ResourceExhausted => 429,
            StatusClass::Internal => 500,
            StatusClass::Unavailable => 503,
        }
    }

    /// The gRPC code a door answers with (`tonic::Code::from_i32`).
    pub fn grpc_code(self) -> i32 {
        match self {
            StatusClass::Invalid | StatusClass::TooLarge => grpc::INVALID_ARGUMENT,
            StatusClass::Unauthenticated => grpc::UNAUTHENTICATED,
            StatusClass::PermissionDenied => grpc::PERMISSION_DENIED,
            StatusClass::NotFound => grpc::NOT_FOUND,
            StatusClass::DeadlineExceeded => grpc::DEADLINE_EXCEEDED,
            // gRPC has no plain "conflict"; ALREADY_EXISTS is what a client of a create or a
            // start expects when the thing is there or has moved on.
            StatusClass::AlreadyExists | StatusClass::Conflict => grpc::ALREADY_EXISTS,
            StatusClass::FailedPrecondition | StatusClass::Unprocessable => {
                grpc::FAILED_PRECONDITION
            }
            StatusClass::ResourceExhausted | StatusClass::OverLimit => grpc::RESOURCE_EXHAUSTED,
            StatusClass::Unavailable => grpc::UNAVAILABLE,
            StatusClass::Cancelled => grpc::CANCELLED,
            StatusClass::Internal => grpc::INTERNAL,
        }
    }

    /// The class of an HTTP status, for a door that serves another door's answers (the admin
    /// gRPC service calls the HTTP API in-process). A 409 reads as `Conflict`.
    pub fn from_http_status(status: u16) -> StatusClass {
        match status {
            400 => StatusClass::Invalid,
            401 => StatusClass::Unauthenticated,
            403 => StatusClass::PermissionDenied,
            404 => StatusClass::NotFound,
            408 => StatusClass::DeadlineExceeded,
            409 => StatusClass::Conflict,
            412 => StatusClass::FailedPrecondition,
            413 => StatusClass::TooLarge,
            422 => StatusClass::Unprocessable,
            429 => StatusClass::ResourceExhausted,
            503 => StatusClass::Unavailable,
            _ => StatusClass::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StatusClass::{self, *};

    const ALL: [StatusClass; 15] = [
        Invalid,
        NotFound,
        AlreadyExists,
        Conflict,
        FailedPrecondition,
        Unprocessable,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        OverLimit,
        TooLarge,
        DeadlineExceeded,
        Unavailable,
        Cancelled,
        Internal,
    ];

    #[test]
    fn every_class_has_one_http_status_and_one_grpc_code() {
        let table: Vec<(StatusClass, u16, i32)> = vec![
            (Invalid, 400, 3),
            (NotFound, 404, 5),
            (AlreadyExists, 409, 6),
            (Conflict, 409, 6),
            (FailedPrecondition, 409, 9),
            (Unprocessable, 422, 9),
            (Unauthenticated, 401, 16),
            (PermissionDenied, 403, 7),
            (ResourceExhausted, 429, 8),
            (OverLimit, 400, 8),
            (TooLarge, 413, 3),
            (DeadlineExceeded, 408, 4),
            (Unavailable, 503, 14),
            (Cancelled, 409, 1),
            (Internal, 500, 13),
        ];
        assert_eq!(table.len(), ALL.len());
        for (class, http, grpc) in table {
            assert_eq!(class.http_status(), http, "{class:?}");
            assert_eq!(class.grpc_code(), grpc, "{class:?}");
        }
    }

    #[test]
    fn an_http_status_reads_back_as_a_class_with_the_same_status() {
        for class in ALL {
            let back = StatusClass::from_http_status(class.http_status());
            assert_eq!(back.http_status(), class.http_status(), "{class:?}");
        }
        assert_eq!(StatusClass::from_http_status(418), Internal);
    }
}
