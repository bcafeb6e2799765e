//! `POST /v1/sql`: a statement in, rows out. The body is JSON `{"query": "..."}` or the SQL
//! text itself; the `Accept` header picks the format: JSON rows (default), Arrow IPC stream
//! (`application/vnd.apache.arrow.stream`) or CSV (`text/csv`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;

use tidemark_catalog::access::Principal;

use crate::limits::Limit;
use crate::{Error, SqlState, run_query};

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

pub fn router(state: SqlState) -> Router {
    Router::new().route("/v1/sql", post(sql_handler)).with_state(state)
}

#[derive(Debug, serde::Deserialize)]
struct SqlRequest {
    query: String,
}

fn error_response(status: StatusCode, message: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], serde_json::json!({ "error": message }).to_string())
        .into_response()
}

/// The status a refused query gets over HTTP.
fn limit_status(limit: Limit) -> StatusCode {
    match limit {
        Limit::Timeout => StatusCode::REQUEST_TIMEOUT,
        Limit::SqlSize => StatusCode::PAYLOAD_TOO_LARGE,
        Limit::Concurrency => StatusCode::TOO_MANY_REQUESTS,
        Limit::Memory | Limit::Nesting => StatusCode::BAD_REQUEST,
    }
}

async fn sql_handler(
    State(state): State<SqlState>,
    caller: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let text = if is_json || body.first() == Some(&b'{') {
        match serde_json::from_slice::<SqlRequest>(&body) {
            Ok(r) => r.query,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("body must be {{\"query\": \"SELECT ...\"}}: {e}"),
                );
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(s) => s,
            Err(_) => return error_response(StatusCode::BAD_REQUEST, "the SQL text is not UTF-8".into()),
        }
    };
    if text.trim().is_empty() {
        return error_response(StatusCode::BAD_REQUEST, "no SQL statement given".into());
    }
    let asked = headers.get(crate::CONSISTENCY_HEADER).map(|v| v.to_str().unwrap_or("(not text)"));
    if let Err(e) = crate::consistency(&state, asked).await {
        let status = if e.is_user_error() { StatusCode::BAD_REQUEST } else { StatusCode::SERVICE_UNAVAILABLE };
        return error_response(status, e.to_string());
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json").to_string();
    let caller = caller.map_or(Principal::Anonymous, |Extension(p)| p);
    let (schema, batches) = match run_query(&state, &text, &caller).await {
        Ok(r) => r,
        Err(Error::Limit { limit, message }) => return error_response(limit_status(limit), message),
        Err(e) => {
            let status = if e.is_user_error() { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR };
            return error_response(status, e.to_string());
        }
    };
    let encoded = if accept.contains(ARROW_STREAM) {
        encode_ipc(&schema, &batches).map(|b| (ARROW_STREAM, b))
    } else if accept.contains("text/csv") {
        encode_csv(&batches).map(|b| ("text/csv", b))
    } else {
        encode_json(&batches).map(|b| ("application/json", b))
    };
    match encoded {
        Ok((content_type, bytes)) => (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn encode_ipc(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)
            .map_err(|e| Error::Encode(e.to_string()))?;
        for b in batches {
            w.write(b).map_err(|e| Error::Encode(e.to_string()))?;
        }
        w.finish().map_err(|e| Error::Encode(e.to_string()))?;
    }
    Ok(out)
}

fn encode_csv(batches: &[RecordBatch]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
        for b in batches {
            w.write(b).map_err(|e| Error::Encode(e.to_string()))?;
        }
    }
    Ok(out)
}

/// JSON array of row objects; dictionary-encoded columns come out as their values.
fn encode_json(batches: &[RecordBatch]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::json::ArrayWriter::new(&mut out);
        for b in batches {
            w.write(b).map_err(|e| Error::Encode(e.to_string()))?;
        }
        w.finish().map_err(|e| Error::Encode(e.to_string()))?;
    }
    if out.is_empty() {
        out.extend_from_slice(b"[]");
    }
    Ok(out)
}
