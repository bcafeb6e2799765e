//! `POST /v1/sql`: a statement in, rows out. The body is JSON `{"query": "..."}` or the SQL
//! text itself; the `Accept` header picks the format: JSON rows (default), Arrow IPC stream
//! (`application/vnd.apache.arrow.stream`) or CSV (`text/csv`).
//!
//! Answers stream: each batch is encoded and sent as it comes ([`Answer`]), so the node
//! never holds a whole answer, and a client that goes away cancels its query. An error
//! before the first row is an error status; an error after the status line was sent (a
//! result cap, the time limit, a failure in a later batch) ends the answer with an error
//! record (JSON, CSV) or cuts the body (Arrow IPC), never with a clean end.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::csv::WriterBuilder;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::json::LineDelimitedWriter;

use tidemark_catalog::access::Principal;

use crate::answer::Answer;
use crate::limits::{Limit, ResultCap};
use crate::wire::{to_wire, wire_schema};
use crate::{Error, SqlState};

pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

pub fn router(state: SqlState) -> Router {
    Router::new()
        .route("/v1/sql", post(sql_handler))
        .with_state(state)
}

#[derive(Debug, serde::Deserialize)]
struct SqlRequest {
    query: String,
}

fn error_response(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": message }).to_string(),
    )
        .into_response()
}

/// The status a refused query gets over HTTP.
fn limit_status(limit: Limit) -> StatusCode {
    crate::status::http_status(limit.status_class())
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
            Err(_) => {
                return error_response(StatusCode::BAD_REQUEST, "the SQL text is not UTF-8".into());
            }
        }
    };
    if text.trim().is_empty() {
        return error_response(StatusCode::BAD_REQUEST, "no SQL statement given".into());
    }
    let asked = headers
        .get(crate::CONSISTENCY_HEADER)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    if let Err(e) = crate::consistency(&state, asked).await {
        return error_response(crate::status::http_status(e.status_class()), e.to_string());
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let format = Format::from_accept(accept);
    let caller = caller.map_or(Principal::Anonymous, |Extension(p)| p);
    let mut answer = match Answer::start(&state, &text, &caller).await {
        Ok(a) => a,
        Err(e) => return refusal(e),
    };
    // The first rows decide the status: an error before any row is an error response.
    // (Empty batches are skipped: they carry nothing, and would commit the status early.)
    let first = loop {
        match answer.next().await {
            Some(Err(e)) => return refusal(e),
            Some(Ok(batch)) if batch.num_rows() == 0 => continue,
            first => break first,
        }
    };
    let (encoder, opening) = match Encoder::new(format, answer.schema()) {
        Ok(e) => e,
        Err(e) => return refusal(e),
    };
    let body = Streamed {
        answer,
        encoder,
        first,
        sent: 0,
        opening: Some(opening),
        done: false,
    };
    let stream = futures::stream::unfold(body, |mut body| async move {
        let chunk = body.next_chunk().await?;
        Some((chunk, body))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, format.content_type())],
        Body::from_stream(stream),
    )
        .into_response()
}

fn refusal(e: Error) -> Response {
    match e {
        Error::Limit {
            limit: limit @ (Limit::NodeMemory | Limit::Concurrency),
            message,
        } => {
            let mut r = error_response(limit_status(limit), message);
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        Error::Limit { limit, message } => error_response(limit_status(limit), message),
        e => error_response(crate::status::http_status(e.status_class()), e.to_string()),
    }
}

/// An answer on its way out: batches encoded one at a time, the byte cap counted on what is
/// sent. Dropping it (hyper does when the client goes away) cancels the query.
struct Streamed {
    answer: Answer,
    encoder: Encoder,
    first: Option<Result<RecordBatch, Error>>,
    sent: u64,
    opening: Option<Vec<u8>>,
    done: bool,
}

impl Streamed {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let mut out = self.opening.take().unwrap_or_default();
        loop {
            let next = match self.first.take() {
                Some(first) => Some(first),
                None => self.answer.next().await,
            };
            let encoded = match next {
                None => {
                    self.done = true;
                    self.encoder.end().map(|end| out.extend_from_slice(&end))
                }
                Some(Ok(batch)) => self.encoder.batch(&batch).and_then(|chunk| {
                    let limits = self.answer.limits();
                    let sent = self.sent.saturating_add(chunk.len() as u64);
                    if sent > limits.result_bytes_max {
                        return Err(limits.result_capped(ResultCap::Bytes));
                    }
                    self.sent = sent;
                    out.extend_from_slice(&chunk);
                    Ok(())
                }),
                Some(Err(e)) => Err(e),
            };
            if let Err(e) = encoded {
                self.done = true;
                tracing::debug!(error = %e, "sql over http: the answer ends with an error");
                return match self.encoder.fail(&e) {
                    Some(record) => {
                        out.extend_from_slice(&record);
                        Some(Ok(Bytes::from(out)))
                    }
                    // Arrow IPC has no error record: the body is cut, which clients report.
                    None => Some(Err(std::io::Error::other(e.to_string()))),
                };
            }
            if self.done || !out.is_empty() {
                return Some(Ok(Bytes::from(out)));
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Arrow,
}

impl Format {
    fn from_accept(accept: &str) -> Format {
        if accept.contains(ARROW_STREAM) {
            Format::Arrow
        } else if accept.contains("text/csv") {
            Format::Csv
        } else {
            Format::Json
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv",
            Format::Arrow => ARROW_STREAM,
        }
    }
}

/// Encodes an answer batch by batch. JSON is one array of row objects (dictionary columns
/// come out as their values); CSV has a header line even when there are no rows; Arrow IPC
/// has the wire types Flight SQL sends (`wire.rs`).
enum Encoder {
    Json {
        rows_written: bool,
    },
    Csv,
    Arrow {
        writer: Box<StreamWriter<Vec<u8>>>,
        schema: SchemaRef,
    },
}

fn encode_error(e: impl std::fmt::Display) -> Error {
    Error::Encode(e.to_string())
}

impl Encoder {
    /// The encoder and the bytes that open the answer.
    fn new(format: Format, schema: &SchemaRef) -> Result<(Encoder, Vec<u8>), Error> {
        Ok(match format {
            Format::Json => (
                Encoder::Json {
                    rows_written: false,
                },
                b"[".to_vec(),
            ),
            Format::Csv => {
                let mut out = Vec::new();
                WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out)
                    .write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(encode_error)?;
                (Encoder::Csv, out)
            }
            Format::Arrow => {
                let schema = wire_schema(schema);
                let mut w = StreamWriter::try_new(Vec::new(), &schema).map_err(encode_error)?;
                let opening = std::mem::take(w.get_mut());
                (
                    Encoder::Arrow {
                        writer: Box::new(w),
                        schema,
                    },
                    opening,
                )
            }
        })
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<Vec<u8>, Error> {
        match self {
            Encoder::Json { rows_written } => {
                if batch.num_rows() == 0 {
                    return Ok(Vec::new());
                }
                let mut lines = Vec::new();
                {
                    let mut w = LineDelimitedWriter::new(&mut lines);
                    w.write(batch).map_err(encode_error)?;
                    w.finish().map_err(encode_error)?;
                }
                // One object a line; a JSON string never holds a raw newline, so the line
                // breaks are exactly the places for the array's commas.
                if lines.last() == Some(&b'\n') {
                    lines.pop();
                }
                for b in lines.iter_mut() {
                    if *b == b'\n' {
                        *b = b',';
                    }
                }
                if *rows_written {
                    lines.insert(0, b',');
                }
                *rows_written = true;
                Ok(lines)
            }
            Encoder::Csv => {
                let mut out = Vec::new();
                WriterBuilder::new()
                    .with_header(false)
                    .build(&mut out)
                    .write(batch)
                    .map_err(encode_error)?;
                Ok(out)
            }
            Encoder::Arrow { writer, schema } => {
                writer
                    .write(&to_wire(batch, schema).map_err(encode_error)?)
                    .map_err(encode_error)?;
                Ok(std::mem::take(writer.get_mut()))
            }
        }
    }

    fn end(&mut self) -> Result<Vec<u8>, Error> {
        match self {
            Encoder::Json { .. } => Ok(b"]".to_vec()),
            Encoder::Csv => Ok(Vec::new()),
            Encoder::Arrow { writer, .. } => {
                writer.finish().map_err(encode_error)?;
                Ok(std::mem::take(writer.get_mut()))
            }
        }
    }

    /// The record that ends an answer cut by `e` after its status line was sent: a last
    /// object `{"error": …, "truncated": true}` in JSON, a last line `#error (truncated): …`
    /// in CSV; `None` for Arrow IPC, whose body is cut instead.
    fn fail(&mut self, e: &Error) -> Option<Vec<u8>> {
        match self {
            Encoder::Json { rows_written } => {
                let record =
                    serde_json::json!({ "error": e.to_string(), "truncated": true }).to_string();
                let comma = if *rows_written { "," } else { "" };
                Some(format!("{comma}{record}]").into_bytes())
            }
            Encoder::Csv => Some(
                format!("#error (truncated): {}\n", e.to_string().replace('\n', " ")).into_bytes(),
            ),
            Encoder::Arrow { .. } => None,
        }
    }
}
