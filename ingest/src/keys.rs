//! `/v1/keys`: create, list and revoke API keys. The secret is drawn here, at the edge, from
//! the OS's random source (apply has no random bits), answered once, and logged only as its
//! SHA-256. The first key also logs the node secret nodes use on each other's internal routes.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tidemark_catalog::CatalogCommand;
use tidemark_catalog::access::{
    AccessCommand, KEY_ID_LEN, KeyScope, NewKey, Role, SECRET_LEN, TOKEN_PREFIX, TagGrant, hex,
    sha256_hex,
};

use crate::datasources::apply;
use crate::error::{Error, Result};
use crate::node::Node;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    name: String,
    role: Role,
    /// merchant_reader: the tenant values whose rows the key may read.
    #[serde(default)]
    tenants: Vec<String>,
    /// publisher: datasource → `"*"` or the tags it may send; absent: everything.
    #[serde(default)]
    publish: Option<std::collections::BTreeMap<String, TagGrant>>,
}

fn random_hex(len: usize) -> Result<String> {
    let mut bytes = vec![0u8; len / 2];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::Engine(tidemark_engine::Error::Internal(format!(
            "no random bits from the OS: {e}"
        )))
    })?;
    Ok(hex(&bytes))
}

async fn log(node: &Node, actor: &str, cmd: AccessCommand) -> Result<()> {
    let cmd = CatalogCommand::Access(cmd);
    node.engine().read().catalog().check(&cmd)?;
    apply(node, cmd, actor).await.map(|_| ())
}

pub async fn create(node: &Node, actor: &str, body: &[u8]) -> Result<Response> {
    let req: CreateKey = serde_json::from_slice(body).map_err(|e| {
        Error::BadRequest(format!(
            "a key needs {{\"name\": \"…\", \"role\": \"admin|governance_editor|publisher|analyst|merchant_reader\"}} \
             (with \"tenants\": [\"…\"] for merchant_reader; \"publish\": {{\"datasource\": \"*\" or [\"tag\", …]}} to limit a publisher): {e}"
        ))
    })?;
    let id = random_hex(KEY_ID_LEN)?;
    let secret = random_hex(SECRET_LEN)?;
    let token = format!("{TOKEN_PREFIX}{id}_{secret}");
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| {
        Error::Engine(tidemark_engine::Error::Internal(format!(
            "no random bits from the OS: {e}"
        )))
    })?;
    let key = NewKey {
        id: id.clone(),
        name: req.name,
        role: req.role,
        secret_sha256: sha256_hex(&secret),
        scope: KeyScope {
            tenants: req.tenants,
            publish: req.publish,
        },
        // Kafka clients log in with SCRAM-SHA-256 using the token as the password.
        scram: Some(crate::kafka::sasl::scram_credential(
            &token,
            &salt,
            crate::kafka::sasl::SCRAM_ITERATIONS,
        )),
    };
    log(node, actor, AccessCommand::CreateKey { key }).await?;
    let mut v = shown(node, &id)?;
    v["token"] = Value::String(token);
    v["note"] = "the token is shown only now; tidemark keeps only its SHA-256".into();
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

fn shown(node: &Node, id: &str) -> Result<Value> {
    let engine = node.engine();
    let e = engine.read();
    let key = e
        .catalog()
        .access()
        .key(id)
        .ok_or_else(|| Error::NotFound(format!("API key {id} does not exist")))?;
    Ok(key.public_json())
}

pub fn list(node: &Node) -> Response {
    let engine = node.engine();
    let e = engine.read();
    let keys: Vec<Value> = e
        .catalog()
        .access()
        .keys()
        .map(|k| k.public_json())
        .collect();
    Json(json!(keys)).into_response()
}

pub async fn revoke(node: &Node, actor: &str, id: &str) -> Result<Response> {
    log(node, actor, AccessCommand::RevokeKey { id: id.to_string() }).await?;
    Ok(Json(shown(node, id)?).into_response())
}
