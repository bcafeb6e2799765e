//! `/v1/governance`: the tag registry over HTTP. Domains (sets of datasources) and their tags
//! are read from the applied catalog; every change is a catalog command in the log, checked
//! first (so a plain mistake is answered without a log entry) and answered after it is
//! applied. `GET /v1/governance/suggest` answers tools the same "did you mean" apply gives.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tidemark_catalog::event::{Hint, RejectReason, UnknownTag};
use tidemark_catalog::governance::{
    self, DomainEntry, DomainSettings, GovernanceCommand, GovernanceEffect, Tag, TagStatus,
};
use tidemark_catalog::standardise::TagRules;
use tidemark_catalog::{CatalogCommand, CatalogEffect};

use tidemark_catalog::access::{Principal, Role};
use tidemark_catalog::retention::{Retention, RetentionCommand};

use crate::datasources::apply;
use crate::error::{Error, Result};
use crate::node::Node;

fn describe_domain(d: &DomainEntry, with_history: bool) -> Value {
    let current = d.current();
    let mut v = json!({
        "name": d.name,
        "description": current.description,
        "datasources": current.datasources,
        "tags": d.tags_at(u64::MAX).map(|t| describe_tag(d, t, false)).collect::<Vec<_>>(),
        "position": d.settings.last().map_or(0, |v| v.position),
    });
    if with_history {
        v["versions"] = d
            .settings
            .iter()
            .map(|s| json!({"position": s.position, "settings": s.value}))
            .collect::<Vec<_>>()
            .into();
    }
    v
}

fn describe_tag(d: &DomainEntry, t: &Tag, with_history: bool) -> Value {
    let history = d.tag_history(&t.name);
    let mut v = json!({ "tag": t, "position": history.last().map_or(0, |v| v.position) });
    if with_history {
        v["versions"] = history
            .iter()
            .map(|h| json!({"position": h.position, "tag": h.value}))
            .collect::<Vec<_>>()
            .into();
    }
    v
}

fn domain<'c>(catalog: &'c tidemark_catalog::Catalog, name: &str) -> Result<&'c DomainEntry> {
    catalog
        .governance()
        .domain(name)
        .ok_or_else(|| Error::NotFound(format!("governance domain {name:?} does not exist")))
}

fn utf8(body: &[u8]) -> Result<&str> {
    std::str::from_utf8(body).map_err(|_| Error::BadRequest("the body is not UTF-8".into()))
}

/// Checks, logs and applies one change.
async fn change(node: &Node, actor: &str, cmd: GovernanceCommand) -> Result<GovernanceEffect> {
    let cmd = CatalogCommand::Governance(cmd);
    node.engine().read().catalog().check(&cmd)?;
    match apply(node, cmd, actor).await? {
        CatalogEffect::Governance(effect) => Ok(effect),
        other => Err(Error::Engine(tidemark_engine::Error::Internal(format!(
            "governance change applied as {other:?}"
        )))),
    }
}

pub fn list_domains(node: &Node) -> Response {
    let engine = node.engine();
    let e = engine.read();
    let all: Vec<Value> = e
        .catalog()
        .governance()
        .domains()
        .map(|d| describe_domain(d, false))
        .collect();
    Json(all).into_response()
}

pub fn show_domain(node: &Node, name: &str) -> Result<Response> {
    let engine = node.engine();
    let e = engine.read();
    Ok(Json(describe_domain(domain(e.catalog(), name)?, true)).into_response())
}

pub async fn create_domain(node: &Node, actor: &str, body: &[u8]) -> Result<Response> {
    let settings: DomainSettings = governance::from_json(utf8(body)?)?;
    let name = settings.name.clone();
    change(
        node,
        actor,
        GovernanceCommand::CreateDomain { domain: settings },
    )
    .await?;
    let engine = node.engine();
    let e = engine.read();
    Ok((
        StatusCode::CREATED,
        Json(describe_domain(domain(e.catalog(), &name)?, false)),
    )
        .into_response())
}

/// The body with the name the URL gives: a body may leave it out, and one that names another
/// object is a mistake, not a rename (`instead` says what to do).
fn named_body(body: &[u8], kind: &str, name: &str, instead: &str) -> Result<String> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("the body is not JSON: {e}")))?;
    match v.get("name").and_then(Value::as_str) {
        Some(n) if n != name => {
            return Err(Error::BadRequest(format!(
                "the body names {kind}{n:?} but the URL names {name:?}; {instead}"
            )));
        }
        _ => v["name"] = Value::String(name.to_string()),
    }
    Ok(v.to_string())
}

pub async fn update_domain(node: &Node, actor: &str, name: &str, body: &[u8]) -> Result<Response> {
    let settings: DomainSettings =
        governance::from_json(&named_body(body, "", name, "renaming is not supported")?)?;
    change(
        node,
        actor,
        GovernanceCommand::UpdateDomain { domain: settings },
    )
    .await?;
    show_domain(node, name)
}

pub fn list_tags(node: &Node, domain_name: &str) -> Result<Response> {
    let engine = node.engine();
    let e = engine.read();
    let d = domain(e.catalog(), domain_name)?;
    Ok(Json(
        d.tags_at(u64::MAX)
            .map(|t| describe_tag(d, t, false))
            .collect::<Vec<_>>(),
    )
    .into_response())
}

pub fn show_tag(node: &Node, domain_name: &str, tag: &str) -> Result<Response> {
    let engine = node.engine();
    let e = engine.read();
    let d = domain(e.catalog(), domain_name)?;
    let t = d.tag(tag).ok_or_else(|| {
        Error::NotFound(format!(
            "tag {tag:?} does not exist in governance domain {domain_name:?}"
        ))
    })?;
    Ok(Json(describe_tag(d, t, true)).into_response())
}

pub async fn put_tag(
    node: &Node,
    actor: &str,
    domain_name: &str,
    tag: &str,
    body: &[u8],
) -> Result<Response> {
    let parsed: Tag = governance::from_json(&named_body(
        body,
        "tag ",
        tag,
        "renaming is not supported (add the old name as an alias)",
    )?)?;
    let effect = change(
        node,
        actor,
        GovernanceCommand::PutTag {
            domain: domain_name.to_string(),
            tag: parsed,
        },
    )
    .await?;
    let status = if matches!(effect, GovernanceEffect::TagCreated { .. }) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let engine = node.engine();
    let e = engine.read();
    let d = domain(e.catalog(), domain_name)?;
    let t = d
        .tag(tag)
        .ok_or_else(|| Error::NotFound(format!("tag {tag:?} vanished")))?;
    let mut answer = describe_tag(d, t, false);
    answer["changed"] = (effect != GovernanceEffect::Unchanged).into();
    Ok((status, Json(answer)).into_response())
}

pub async fn remove_tag(
    node: &Node,
    actor: &str,
    domain_name: &str,
    tag: &str,
) -> Result<Response> {
    change(
        node,
        actor,
        GovernanceCommand::RemoveTag {
            domain: domain_name.to_string(),
            tag: tag.to_string(),
        },
    )
    .await?;
    Ok(Json(json!({ "removed": tag, "domain": domain_name })).into_response())
}

#[derive(Debug, serde::Deserialize)]
pub struct SuggestParams {
    pub tag: Option<String>,
    pub domain: Option<String>,
    pub datasource: Option<String>,
}

/// What a key means in each domain (or the one asked for): a tag, an alias, or unknown with
/// the closest approved tag, in the words apply would use.
pub fn suggest(node: &Node, p: &SuggestParams) -> Result<Response> {
    let Some(key) = p.tag.as_deref().filter(|t| !t.is_empty()) else {
        return Err(Error::BadRequest(
            "the tag parameter is required, e.g. /v1/governance/suggest?tag=acct_num".into(),
        ));
    };
    let engine = node.engine();
    let e = engine.read();
    let catalog = e.catalog();
    let domains: Vec<&DomainEntry> = match (&p.domain, &p.datasource) {
        (Some(d), _) => vec![domain(catalog, d)?],
        (None, Some(ds)) => {
            vec![
                catalog
                    .governance()
                    .domain_of(ds, u64::MAX)
                    .ok_or_else(|| {
                        Error::NotFound(format!("datasource {ds:?} is in no governance domain"))
                    })?,
            ]
        }
        (None, None) => catalog.governance().domains().collect(),
    };
    let answers: Vec<Value> = domains
        .into_iter()
        .map(|d| {
            let rules = TagRules::compile(&d.name, d.tags_at(u64::MAX));
            let quoted = tidemark_catalog::event::quoted(key);
            match rules.lookup(key) {
                Some((t, alias)) if t.status != TagStatus::Proposed => {
                    let (status, message) = if alias {
                        (
                            "alias",
                            format!(
                                "{quoted} is an alias of tag {:?} in domain {:?}; it is renamed at ingest",
                                t.name, d.name
                            ),
                        )
                    } else {
                        (t.status.name(), format!("{quoted} is {} tag of domain {:?}", article(t.status), d.name))
                    };
                    json!({"domain": d.name, "status": status, "tag": t.name, "message": message})
                }
                _ => {
                    let hint = rules.hint(key);
                    let status = if hint == Hint::Proposed { "proposed" } else { "unknown" };
                    let suggestion = match &hint {
                        Hint::Suggest(t) => Some(t.clone()),
                        _ => None,
                    };
                    let message = RejectReason::UnknownTags {
                        domain: d.name.clone(),
                        tags: vec![UnknownTag { key: key.to_string(), hint }],
                    }
                    .to_string();
                    let mut v = json!({"domain": d.name, "status": status, "message": message});
                    if let Some(s) = suggestion {
                        v["suggestion"] = s.into();
                    }
                    v
                }
            }
        })
        .collect();
    Ok(Json(json!({ "tag": key, "answers": answers })).into_response())
}

fn article(status: TagStatus) -> &'static str {
    match status {
        TagStatus::Approved => "an approved",
        TagStatus::Deprecated => "a deprecated",
        TagStatus::Proposed => "a proposed",
    }
}

fn retention_json(
    datasource: &str,
    rule: Option<&tidemark_catalog::governance::Versioned<Retention>>,
) -> Value {
    match rule {
        Some(v) => {
            json!({ "datasource": datasource, "retention": v.value, "position": v.position })
        }
        None => {
            json!({ "datasource": datasource, "retention": Retention::default(), "position": null,
                        "note": "no rule set: every form is kept forever" })
        }
    }
}

/// `GET /v1/governance/retention`: every datasource's rule in force.
pub fn list_retention(node: &Node) -> Response {
    let engine = node.engine();
    let e = engine.read();
    let all: Vec<Value> = e
        .catalog()
        .retention()
        .current()
        .map(|(ds, v)| retention_json(ds, Some(v)))
        .collect();
    Json(all).into_response()
}

pub fn show_retention(node: &Node, datasource: &str) -> Result<Response> {
    let engine = node.engine();
    let e = engine.read();
    if e.catalog().get(datasource).is_none() {
        return Err(Error::NotFound(format!(
            "datasource {datasource:?} does not exist"
        )));
    }
    Ok(Json(retention_json(
        datasource,
        e.catalog().retention().at(datasource, u64::MAX),
    ))
    .into_response())
}

/// `PUT /v1/governance/retention/{datasource}` with `{"raw": "P30D", "segments": …}`.
///
/// A rule removes history nothing can rebuild, so two checks come before it is logged:
/// shortening any form (or limiting one kept forever) is an admin's change, not a
/// governance editor's; and no form of the events (raw, segments, fulltext) may be kept for
/// less than the datasource's late window, inside which events are still being written.
/// The answer (and the audit row) says what the rule would remove now, in intervals, files,
/// events and bytes (`would_remove`); with `dry_run` that is all that happens. Removal of
/// what a running job covers waits for the job (`waiting_for_jobs`).
pub async fn put_retention(
    node: &Node,
    caller: &Principal,
    datasource: &str,
    body: &[u8],
    dry_run: bool,
) -> Result<Response> {
    let retention = Retention::from_json(utf8(body)?)?;
    let would_remove = {
        let engine = node.engine();
        let e = engine.read();
        let spec = e
            .catalog()
            .get(datasource)
            .ok_or_else(|| Error::NotFound(format!("datasource {datasource:?} does not exist")))?;
        let late = &spec.current().late_window;
        // Rejects are records of refused events, not intervals being written: no floor.
        for (form, period) in retention
            .forms()
            .into_iter()
            .filter(|(form, _)| *form != "rejects")
        {
            if let Some(p) = period
                && p.millis() < late.millis()
            {
                return Err(Error::BadRequest(format!(
                    "{form}: {p} is shorter than {datasource}'s late window {late}: it would remove data still \
                     being written; keep every form at least {late}"
                )));
            }
        }
        let current = e
            .catalog()
            .retention()
            .at(datasource, u64::MAX)
            .map(|v| v.value.clone())
            .unwrap_or_default();
        let admin = matches!(
            caller,
            Principal::Anonymous
                | Principal::Node
                | Principal::Key {
                    role: Role::Admin,
                    ..
                }
        );
        if !admin {
            for ((form, was), (_, now)) in current.forms().into_iter().zip(retention.forms()) {
                let shorter = match (was, now) {
                    (None, Some(_)) => true,
                    (Some(a), Some(b)) => b.millis() < a.millis(),
                    (_, None) => false,
                };
                if shorter {
                    let was = was.map_or("forever".to_string(), ToString::to_string);
                    let now = now.map_or("forever".to_string(), ToString::to_string);
                    return Err(Error::Forbidden(format!(
                        "{form}: shortening retention ({was} to {now}) removes history that cannot be rebuilt: \
                         an admin key's change (this key may lengthen rules)"
                    )));
                }
            }
        }
        let preview = e.retention_preview(datasource, &retention, crate::node::now_ms());
        serde_json::to_value(preview).unwrap_or(Value::Null)
    };
    if dry_run {
        let answer = json!({ "datasource": datasource, "retention": retention, "would_remove": would_remove,
                             "dry_run": true });
        return Ok(Json(answer).into_response());
    }
    let actor = caller.actor();
    let actor = actor.as_str();
    let cmd = CatalogCommand::Retention(RetentionCommand::PutRetention {
        datasource: datasource.to_string(),
        retention,
        would_remove: Some(would_remove.clone()),
    });
    node.engine().read().catalog().check(&cmd)?;
    apply(node, cmd, actor).await?;
    let e = node.engine();
    let e = e.read();
    let mut answer = retention_json(datasource, e.catalog().retention().at(datasource, u64::MAX));
    answer["would_remove"] = would_remove;
    Ok(Json(answer).into_response())
}
