//! The SQL doors' one map from an error's status class to a wire status: an HTTP status for
//! `POST /v1/sql`, a gRPC status for Flight SQL. The table itself is
//! [`tidemark_catalog::StatusClass`], shared with every other door.

use axum::http::StatusCode;
use tidemark_catalog::StatusClass;
use tonic::{Code, Status};

pub(crate) fn http_status(class: StatusClass) -> StatusCode {
    StatusCode::from_u16(class.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

pub(crate) fn grpc_status(class: StatusClass, message: impl Into<String>) -> Status {
    Status::new(Code::from_i32(class.grpc_code()), message)
}
