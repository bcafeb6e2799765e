//! `POST /v1/segments/verify?datasource=D`: a DBA checks every checksum of every column of a
//! datasource's segments on this node, now, instead of waiting for the scrubber's next pass.
//! Files are read off the engine lock, on a blocking thread.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tidemark_storage::engine::scrub::{FileKind, verify as verify_file};

use crate::error::{Error, Result};
use crate::node::Node;

#[derive(Debug, serde::Deserialize)]
pub struct VerifyParams {
    pub datasource: Option<String>,
}

pub async fn verify(node: &Node, p: &VerifyParams) -> Result<Response> {
    let datasource = p
        .datasource
        .clone()
        .ok_or_else(|| Error::BadRequest("name the datasource: /v1/segments/verify?datasource=NAME".into()))?;
    let (data_dir, files) = {
        let engine = node.engine();
        let e = engine.read();
        let files = e
            .segment_files(&datasource)
            .ok_or_else(|| Error::NotFound(format!("datasource {datasource:?} does not exist")))?;
        (e.data_dir().to_path_buf(), files)
    };
    let results = tokio::task::spawn_blocking(move || {
        files
            .into_iter()
            .map(|(segment, file, len)| match verify_file(&data_dir.join(&file), FileKind::Segment, len) {
                Ok(bytes) => json!({ "segment": segment, "file": file, "ok": true, "bytes": bytes }),
                Err(e) => json!({ "segment": segment, "file": file, "ok": false, "error": e.to_string() }),
            })
            .collect::<Vec<Value>>()
    })
    .await
    .map_err(|e| Error::Storage(tidemark_storage::Error::Internal(format!("verification stopped: {e}"))))?;
    let damaged = results.iter().filter(|r| r["ok"] == false).count();
    let body = json!({
        "datasource": datasource,
        "segments": results.len(),
        "damaged": damaged,
        "results": results,
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}
