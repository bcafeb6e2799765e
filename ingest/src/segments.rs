//! `POST /v1/segments/verify?datasource=D`: a DBA checks every checksum of every column of a
//! datasource's segments on this node, now, instead of waiting for the scrubber's next pass.
//! Files are read off the engine lock, on a blocking thread.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tidemark_engine::scrub::{FileKind, verify as verify_file};

use crate::error::{Error, Result};
use crate::node::Node;

#[derive(Debug, serde::Deserialize)]
pub struct VerifyParams {
    pub datasource: Option<String>,
}

pub async fn verify(node: &Node, p: &VerifyParams) -> Result<Response> {
    let datasource = p.datasource.clone().ok_or_else(|| {
        Error::BadRequest("name the datasource: /v1/segments/verify?datasource=NAME".into())
    })?;
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
    .map_err(|e| Error::Engine(tidemark_engine::Error::Internal(format!("verification stopped: {e}"))))?;
    let damaged = results.iter().filter(|r| r["ok"] == false).count();
    let body = json!({
        "datasource": datasource,
        "segments": results.len(),
        "damaged": damaged,
        "results": results,
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// How a column is laid out on disk, in words (the format is `storage/src/segment/README.md`).
fn encoding(c: &tidemark_storage::segment::ColumnEntry) -> &'static str {
    use tidemark_storage::segment::ColumnKind;
    match c.kind {
        ColumnKind::Time => "plain i64 milliseconds",
        ColumnKind::Dimension => "sorted dictionary + i32 keys + roaring bitmap per value",
        ColumnKind::Metric => match c.metric_type.as_deref() {
            Some("count") | Some("longSum") => "plain i64",
            _ => "plain f64",
        },
        ColumnKind::Sketch => "variable-width binary (encoded sketch states)",
    }
}

/// `GET /v1/segments?datasource=D`: the datasource's published segments as this node holds
/// them (what `sys.segments` shows), in interval, version, shard order.
pub fn list(node: &Node, datasource: &str) -> Result<Response> {
    let engine = node.engine();
    let e = engine.read();
    let records = e
        .segment_list(datasource)
        .ok_or_else(|| Error::NotFound(format!("datasource {datasource:?} does not exist")))?;
    let rows: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "segment": r.id.to_string(),
                "datasource": r.id.datasource,
                "interval_start_ms": r.id.interval_start_ms,
                "interval_end_ms": r.id.interval_end_ms,
                "version": r.id.version,
                "shard": r.id.shard,
                "bytes": r.file_bytes,
                "rows": r.rows,
                "events": r.events,
                "published_at": r.published_at,
            })
        })
        .collect();
    Ok(Json(Value::Array(rows)).into_response())
}

/// `GET /v1/segments/{datasource}/{segment}`: one segment's record, columns, encodings, sizes
/// and checksums, as this node holds it.
pub fn show(node: &Node, datasource: &str, segment: &str) -> Result<Response> {
    let engine = node.engine();
    let e = engine.read();
    let (record, meta) = e.segment_detail(datasource, segment).ok_or_else(|| {
        Error::NotFound(format!(
            "datasource {datasource:?} has no segment {segment:?}; list them with tidemark segments list"
        ))
    })?;
    let mut v = json!({
        "segment": record.id.to_string(),
        "datasource": record.id.datasource,
        "interval_start_ms": record.id.interval_start_ms,
        "interval_end_ms": record.id.interval_end_ms,
        "version": record.id.version,
        "shard": record.id.shard,
        "file": record.file,
        "bytes": record.file_bytes,
        "rows": record.rows,
        "events": record.events,
        "published_at": record.published_at,
        "readable": meta.is_some(),
    });
    if let Some(meta) = meta {
        v["query_granularity"] = json!(meta.query_granularity);
        v["min_time_ms"] = json!(meta.min_time_ms);
        v["max_time_ms"] = json!(meta.max_time_ms);
        v["clustering"] = json!(meta.clustering);
        v["columns"] = meta
            .columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "kind": c.kind,
                    "metric_type": c.metric_type,
                    "encoding": encoding(c),
                    "bytes": c.bytes(),
                    "cardinality": c.cardinality,
                    "null_count": c.null_count,
                    "crc32c": format!("{:08x}", c.crc32c),
                })
            })
            .collect::<Vec<Value>>()
            .into();
    }
    Ok(Json(v).into_response())
}
