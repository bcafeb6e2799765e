//! `/v1/datasources`: create, list, show, update and delete datasources. Every change is a
//! catalog command in the log, answered after it is applied.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tidemark_catalog::{CatalogCommand, CatalogEffect, DatasourceEntry, DatasourceSpec, Period};
use tidemark_engine::command::Command;
use tidemark_engine::{Applied, RefusalStatus};

use crate::error::{Error, Result};
use crate::node::Node;

/// How long a deleted datasource's data is kept before it is purged, unless asked otherwise.
pub const DELETE_GRACE_DEFAULT: &str = "PT1H";

pub fn describe(entry: &DatasourceEntry, with_versions: bool) -> Value {
    let mut v = json!({
        "name": entry.current().name,
        "id": entry.id.to_string(),
        "spec": entry.current(),
        "spec_position": entry.versions.last().map_or(0, |v| v.position),
    });
    if with_versions {
        v["versions"] = entry
            .versions
            .iter()
            .map(|sv| json!({"position": sv.position, "spec": sv.spec}))
            .collect::<Vec<_>>()
            .into();
    }
    v
}

/// Logs a catalog change by `actor` (for the audit log) and waits for it to be applied.
pub(crate) async fn apply(node: &Node, cmd: CatalogCommand, actor: &str) -> Result<CatalogEffect> {
    match node.propose(&Command::catalog(cmd, actor)).await? {
        Applied::Catalog(effect) => Ok(effect),
        Applied::Refused { reason, status } => Err(match status {
            RefusalStatus::NotFound => Error::NotFound(reason),
            RefusalStatus::Conflict => Error::Conflict(reason),
            RefusalStatus::Invalid => Error::BadRequest(reason),
        }),
        other => Err(Error::Engine(tidemark_engine::Error::Internal(format!(
            "catalog command applied as {other:?}"
        )))),
    }
}

pub fn list(node: &Node) -> Response {
    let engine = node.engine();
    let e = engine.read();
    let all: Vec<Value> = e
        .catalog()
        .datasources()
        .map(|d| describe(d, false))
        .collect();
    Json(all).into_response()
}

pub fn show(node: &Node, name: &str) -> Result<Response> {
    let engine = node.engine();
    let e = engine.read();
    let entry = e
        .catalog()
        .get(name)
        .ok_or_else(|| Error::NotFound(format!("datasource {name:?} does not exist")))?;
    Ok(Json(describe(entry, true)).into_response())
}

pub async fn create(node: &Node, actor: &str, body: &[u8]) -> Result<Response> {
    let text =
        std::str::from_utf8(body).map_err(|_| Error::BadRequest("the spec is not UTF-8".into()))?;
    let spec = DatasourceSpec::from_json(text)?;
    // Checked before logging, so a plain mistake is answered without a log entry.
    node.engine()
        .read()
        .catalog()
        .check(&CatalogCommand::CreateDatasource { spec: spec.clone() })?;
    let name = spec.name.clone();
    apply(node, CatalogCommand::CreateDatasource { spec }, actor).await?;
    let engine = node.engine();
    let e = engine.read();
    let entry = e
        .catalog()
        .get(&name)
        .ok_or_else(|| Error::NotFound(format!("datasource {name:?} vanished")))?;
    Ok((StatusCode::CREATED, Json(describe(entry, false))).into_response())
}

pub async fn update(node: &Node, actor: &str, name: &str, body: &[u8]) -> Result<Response> {
    let text =
        std::str::from_utf8(body).map_err(|_| Error::BadRequest("the spec is not UTF-8".into()))?;
    let spec = DatasourceSpec::from_json(text)?;
    if spec.name != name {
        return Err(Error::BadRequest(format!(
            "the spec names {:?} but the URL names {name:?}; renaming is not supported",
            spec.name
        )));
    }
    node.engine()
        .read()
        .catalog()
        .check(&CatalogCommand::UpdateDatasource { spec: spec.clone() })?;
    apply(node, CatalogCommand::UpdateDatasource { spec }, actor).await?;
    show(node, name)
}

pub async fn delete(node: &Node, actor: &str, name: &str, grace: Option<&str>) -> Result<Response> {
    let grace = Period::parse(grace.unwrap_or(DELETE_GRACE_DEFAULT))?;
    let cmd = CatalogCommand::DeleteDatasource {
        name: name.to_string(),
        grace_ms: grace.millis(),
    };
    node.engine().read().catalog().check(&cmd)?;
    apply(node, cmd, actor).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "deleted": name,
            "purge_after": grace.to_string(),
            "note": "queries no longer see it; its segments, raw log and consumer groups are removed after the grace period, then the name can be reused",
        })),
    )
        .into_response())
}
