//! `POST /v1/beacons/{datasource}`: a JSON array or NDJSON of beacons in, per-line answers out.
//!
//! The edge checks what the request's bytes say (ARCHITECTURE.md, invariant 4): the body
//! size, and that each beacon is a JSON object; those refusals travel in the log entry as
//! binding verdicts. Everything else is judged at apply by the one verdict function
//! (`tidemark_engine::verdict`): the key's publish rights and the future-time limit travel in
//! the entry and their refusals bind; the spec and tag rules in force there decide the rest,
//! which reprocessing with corrected rules can change. With the `reject_batch` policy the edge
//! runs the same function read-only and refuses a failing batch whole. Beacons go to partitions by murmur2 of their
//! tenant value (found under its tag name or an alias), as Kafka's Java client does.
//!
//! Each request is one log entry; the answer comes after it is durable and applied.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use serde_json::value::RawValue;
use tidemark_catalog::access::{KeyScope, Principal, PublishRight};
use tidemark_catalog::event::{RejectReason, parse_timestamp};
use tidemark_catalog::partitioner::partition_for_key;
use tidemark_catalog::spec::InvalidRecordPolicy;
use tidemark_catalog::standardise::TagRules;
use tidemark_engine::command::{Command, EventsCommand, EventsHeader, EventsPart, VerdictRecord};
use tidemark_engine::idempotency::{BatchOutcome, Seen};
use tidemark_engine::verdict::{WriteRules, verdict};
use tidemark_engine::{Applied, RefusalStatus};
use tidemark_storage::raw::record_batch::{Record, encode};

use crate::error::{Error, Result};
use crate::node::{Node, now_ms};

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The key id a spool drain publishes for: the drain authenticates as the node, and the
/// leader applies the rights of the key that sent the beacons (only to node callers).
pub const PUBLISHER_HEADER: &str = "x-tidemark-publisher";
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

#[derive(Debug, Clone)]
pub struct BeaconLimits {
    pub body_bytes_max: usize,
    /// Beacons stamped further ahead of the server clock than this are refused.
    pub future_ms_max: i64,
}

impl Default for BeaconLimits {
    fn default() -> Self {
        BeaconLimits {
            body_bytes_max: 16 * 1024 * 1024,
            future_ms_max: 24 * 3_600_000,
        }
    }
}

/// One beacon as received: its exact bytes and, if it parsed, its value.
struct Line<'a> {
    raw: &'a [u8],
    value: Option<Value>,
    parse_error: Option<String>,
}

/// Splits a body into beacons: a JSON array, or one JSON value per non-blank line.
fn split_body(body: &[u8]) -> Result<Vec<Line<'_>>> {
    let first = body.iter().position(|b| !b.is_ascii_whitespace());
    let Some(first) = first else {
        return Err(Error::BadRequest(
            "the body holds no beacons; send a JSON array or NDJSON".into(),
        ));
    };
    if body[first] == b'[' {
        let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
            Error::BadRequest(format!(
                "the body starts with '[' but is not a JSON array: {e}"
            ))
        })?;
        if items.is_empty() {
            return Err(Error::BadRequest("the JSON array holds no beacons".into()));
        }
        return Ok(items
            .into_iter()
            .map(|raw| {
                let bytes = raw.get().as_bytes();
                let value: Option<Value> = serde_json::from_str(raw.get()).ok();
                Line {
                    raw: bytes,
                    value,
                    parse_error: None,
                }
            })
            .collect());
    }
    let text_ok = std::str::from_utf8(body).is_ok();
    if !text_ok {
        return Err(Error::BadRequest(
            "the body is not UTF-8 text; send a JSON array or NDJSON".into(),
        ));
    }
    Ok(body
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| l.iter().any(|b| !b.is_ascii_whitespace()))
        .map(|raw| match serde_json::from_slice::<Value>(raw) {
            Ok(v) => Line {
                raw,
                value: Some(v),
                parse_error: None,
            },
            Err(e) => Line {
                raw,
                value: None,
                parse_error: Some(format!("line is not valid JSON: {e}")),
            },
        })
        .collect())
}

/// The value of tag `tag` in a beacon: under its name, or else under one of its aliases.
fn tag_value<'v>(
    obj: &'v serde_json::Map<String, Value>,
    tag: &str,
    rules: Option<&TagRules>,
) -> Option<&'v Value> {
    obj.get(tag).or_else(|| {
        let rules = rules?;
        obj.iter()
            .find(|(k, _)| rules.resolve(k).is_some_and(|t| t.name == tag))
            .map(|(_, v)| v)
    })
}

#[derive(Debug, serde::Serialize)]
struct Answer<'a> {
    accepted: u32,
    rejected: &'a [tidemark_engine::idempotency::RejectedLine],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    dropped_tags: &'a [tidemark_engine::idempotency::DroppedTagCount],
    log_position: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    replayed: bool,
}

fn answer(outcome: &BatchOutcome, replayed: bool) -> Response {
    let body = Answer {
        accepted: outcome.accepted,
        rejected: &outcome.rejected,
        dropped_tags: &outcome.dropped_tags,
        log_position: outcome.log_position,
        replayed,
    };
    (StatusCode::OK, Json(body)).into_response()
}

/// The request's `Idempotency-Key`, if it has a valid one.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let k = v
        .to_str()
        .map_err(|_| Error::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    if k.is_empty() || k.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(Error::BadRequest(format!(
            "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes"
        )));
    }
    Ok(Some(k.to_string()))
}

/// The checks a request must pass before it may be spooled (the leader runs the full edge
/// checks when the spool drains): its size, and that it holds beacons. Returns how many.
pub fn precheck(limits: &BeaconLimits, body: &[u8]) -> Result<usize> {
    if body.len() > limits.body_bytes_max {
        return Err(Error::TooLarge {
            limit_bytes: limits.body_bytes_max,
        });
    }
    Ok(split_body(body)?.len())
}

/// Who publishes a batch, and what their key lets them send.
#[derive(Debug, Clone, Default)]
pub struct Publisher {
    /// The API key id, kept in the raw log frame; `None` on a node without keys.
    pub key_id: Option<String>,
    pub scope: KeyScope,
}

impl Publisher {
    /// The publisher of a request from `caller`. A node caller (a spool drain) names the key
    /// that sent the beacons in [`PUBLISHER_HEADER`]; that key's rights apply even if it was
    /// revoked since, because the beacons were accepted while it was valid.
    pub fn of(node: &Node, caller: &Principal, headers: &HeaderMap) -> Result<Publisher> {
        match caller {
            Principal::Key { .. } | Principal::Anonymous => Ok(Publisher::from_caller(caller)),
            Principal::Node => {
                let Some(id) = headers.get(PUBLISHER_HEADER).and_then(|v| v.to_str().ok()) else {
                    return Ok(Publisher::default());
                };
                let engine = node.engine();
                let e = engine.read();
                let key = e.catalog().access().key(id).ok_or_else(|| {
                    Error::Forbidden(format!(
                        "the spooled batch names API key {id}, which does not exist"
                    ))
                })?;
                Ok(Publisher {
                    key_id: Some(id.to_string()),
                    scope: key.scope.clone(),
                })
            }
        }
    }

    /// The publisher a caller is by itself (a key, or nobody on a node without keys).
    pub fn from_caller(caller: &Principal) -> Publisher {
        match caller {
            Principal::Key { id, scope, .. } => Publisher {
                key_id: Some(id.clone()),
                scope: (**scope).clone(),
            },
            Principal::Anonymous | Principal::Node => Publisher::default(),
        }
    }

    /// Refuses a datasource the key has no right to at all (403, nothing stored).
    pub fn check_datasource(&self, datasource: &str) -> Result<PublishRight<'_>> {
        let right = self.scope.publish_right(datasource);
        if right == PublishRight::Nothing {
            let may = self.scope.publishable();
            return Err(Error::Forbidden(format!(
                "API key {} may not publish to datasource {datasource:?}; it may publish to {}",
                self.key_id.as_deref().unwrap_or("?"),
                if may.is_empty() {
                    "no datasource".to_string()
                } else {
                    may.join(", ")
                }
            )));
        }
        Ok(right)
    }
}

/// One partition's share of a request: request line numbers, records, binding verdicts.
type PartBuilder = (Vec<u32>, Vec<Record>, Vec<VerdictRecord>);

pub async fn post_beacons(
    node: &Node,
    limits: &BeaconLimits,
    datasource: &str,
    headers: &HeaderMap,
    body: Bytes,
    publisher: &Publisher,
) -> Result<Response> {
    if body.len() > limits.body_bytes_max {
        return Err(Error::TooLarge {
            limit_bytes: limits.body_bytes_max,
        });
    }
    if let Some(reason) = node.fatal() {
        return Err(Error::Stopped { reason });
    }
    let right = publisher.check_datasource(datasource)?;
    let key = idempotency_key(headers)?;
    let body_hash = xxhash_rust::xxh3::xxh3_64(&body);
    let lines = split_body(&body)?;
    let now = now_ms();

    let (spec, seen, rules) = {
        let engine = node.engine();
        let e = engine.read();
        let entry = e.catalog().get(datasource).ok_or_else(|| {
            Error::NotFound(format!(
                "datasource {datasource:?} does not exist; create it with POST /v1/datasources"
            ))
        })?;
        if e.is_overloaded() {
            return Err(Error::Overloaded {
                reason: "the realtime index is at its memory bound while persists catch up".into(),
                retry_after_s: 5,
            });
        }
        let seen = key
            .as_ref()
            .map(|k| e.idempotency_check(datasource, publisher.key_id.as_deref(), k, body_hash));
        (entry.current().clone(), seen, e.current_rules(datasource))
    };
    match seen {
        Some(Seen::Retry(outcome)) => return Ok(answer(&outcome, true)),
        Some(Seen::Conflict) => {
            return Err(Error::Unprocessable(format!(
                "Idempotency-Key {:?} was already used for a different batch; use a new key for new data",
                key.unwrap_or_default()
            )));
        }
        _ => {}
    }

    // Edge verdicts, per line: only what the body's format decides binds here (bytes that are
    // not a JSON object). Publish rights and the clock are apply's to judge, by the one
    // verdict function (`tidemark_engine::verdict`): the key's permitted tags and the future
    // limit travel in the entry, as from the Kafka door, and apply's refusals for them bind.
    // A datasource that refuses whole batches gets the same verdicts here, read-only.
    let ts_field = &spec.timestamp.field;
    let rules = rules.as_deref();
    let permitted: Option<Vec<String>> = match right {
        PublishRight::Tags(allowed) => Some(allowed.to_vec()),
        PublishRight::Any | PublishRight::Nothing => None,
    };
    let write_rules = WriteRules {
        spec: &spec,
        tag_rules: rules,
        permitted: permitted
            .as_deref()
            .map(|tags| (publisher.key_id.as_deref().unwrap_or_default(), tags)),
        future: Some((now, limits.future_ms_max)),
    };
    let mut parts: BTreeMap<u32, PartBuilder> = BTreeMap::new();
    let mut batch_refusals = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let binding: Option<RejectReason> = match (&line.value, &line.parse_error) {
            (_, Some(err)) => Some(RejectReason::Other {
                code: 1,
                detail: err.clone(),
            }),
            (None, None) => Some(RejectReason::Other {
                code: 1,
                detail: "beacon is not valid JSON".into(),
            }),
            (Some(v), None) => match v.as_object() {
                None => Some(RejectReason::NotAnObject),
                Some(_) => None,
            },
        };
        if spec.invalid_records == InvalidRecordPolicy::RejectBatch {
            let problem = binding.as_ref().map(ToString::to_string).or_else(|| {
                verdict(&write_rules, line.raw)
                    .refusal()
                    .map(ToString::to_string)
            });
            if let Some(p) = problem {
                batch_refusals.push(serde_json::json!({ "index": i, "reason": p }));
            }
        }
        let object = line.value.as_ref().and_then(Value::as_object);
        let tenant = spec
            .tenant
            .as_ref()
            .and_then(|t| tag_value(object?, t, rules))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .unwrap_or_default();
        let partition = partition_for_key(tenant.as_bytes(), spec.partitions);
        let ts = object
            .and_then(|o| tag_value(o, ts_field, rules))
            .and_then(|t| parse_timestamp(ts_field, t).ok());
        let part = parts.entry(partition).or_default();
        if let Some(r) = binding {
            part.2.push(VerdictRecord {
                index: part.1.len() as u32,
                code: r.code(),
                reason: r.to_string(),
            });
        }
        part.0.push(i as u32);
        part.1.push(Record {
            timestamp_ms: ts.unwrap_or(now),
            key: spec.tenant.as_ref().map(|_| tenant.into_bytes()),
            value: Some(line.raw.to_vec()),
            headers: vec![],
        });
    }
    if !batch_refusals.is_empty() {
        let body = serde_json::json!({
            "error": format!("{} of {} beacons fail validation and {datasource:?} refuses whole batches (invalid_records = reject_batch); nothing was stored", batch_refusals.len(), lines.len()),
            "rejected": batch_refusals,
        });
        return Ok((StatusCode::BAD_REQUEST, Json(body)).into_response());
    }

    let mut batches = Vec::with_capacity(parts.len());
    let mut header_parts = Vec::with_capacity(parts.len());
    for (partition, (line_indexes, records, verdicts)) in parts {
        let batch = encode(&records);
        header_parts.push(EventsPart {
            partition,
            lines: line_indexes,
            verdicts,
            batch_len: batch.len() as u32,
        });
        batches.push(batch);
    }
    let cmd = Command::Events(EventsCommand {
        header: EventsHeader {
            datasource: datasource.to_string(),
            publisher: publisher.key_id.clone(),
            permitted_tags: permitted,
            // A publisher's keys are its own (see `IdempotencyWindow`).
            idempotency_per_publisher: key.is_some() && publisher.key_id.is_some(),
            idempotency_key: key,
            body_hash,
            parts: header_parts,
            future_ms_max: Some(limits.future_ms_max),
            decompressed_bytes_max: None,
        },
        batches,
    });
    match node.propose(&cmd).await? {
        Applied::Events(outcome) => Ok(answer(&outcome, false)),
        Applied::Retry(outcome) => Ok(answer(&outcome, true)),
        Applied::Refused { reason, status } => Err(match status {
            RefusalStatus::NotFound => Error::NotFound(reason),
            RefusalStatus::Conflict => Error::Unprocessable(reason),
            RefusalStatus::Invalid => Error::BadRequest(reason),
        }),
        other => Err(Error::Engine(tidemark_engine::Error::Internal(format!(
            "beacon batch applied as {other:?}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_beacons() {
        let arr = split_body(br#" [{"a":1}, {"b":2}, 3]"#)
            .ok()
            .unwrap_or_default();
        assert_eq!(arr.len(), 3);
        assert_eq!(arr[1].raw, br#"{"b":2}"#);
        let nd = split_body(b"{\"a\":1}\r\n\n  \n{oops\n{\"c\":3}")
            .ok()
            .unwrap_or_default();
        assert_eq!(nd.len(), 3);
        assert!(
            nd[1]
                .parse_error
                .as_deref()
                .unwrap_or_default()
                .contains("not valid JSON")
        );
        for bad in [&b"  "[..], b"[1, 2", b"[]"] {
            let err = split_body(bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!err.is_empty(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
