//! Produce and InitProducerId: batches in, one log entry per topic (datasource) per request.
//!
//! The edge checks what it can answer from the bytes alone, cheaply: exactly one RecordBatch
//! v2 per partition with a good CRC, a known partition, no transactions. Decoding the records
//! (capped decompression), the idempotent producer's sequence and the per-record validation
//! happen once, at apply, where they bind; the cap and the future-time limit travel in the
//! entry. With the `reject_batch` policy the edge also decodes and validates read-only and
//! refuses a failing batch with INVALID_RECORD and per-record errors.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
};
use kafka_protocol::protocol::StrBytes;
use tidemark_catalog::DatasourceSpec;
use tidemark_catalog::access::{Action, Principal, PublishRight};
use tidemark_catalog::spec::InvalidRecordPolicy;
use tidemark_catalog::standardise::TagRules;
use tidemark_engine::Applied;
use tidemark_engine::command::{
    Command, EventsCommand, EventsHeader, EventsPart, InitProducerCommand,
};
use tidemark_engine::idempotency::PartError;
use tidemark_engine::producers::SequenceError;
use tidemark_engine::verdict::{WriteRules, verdict};
use tidemark_storage::raw::record_batch::{self, BatchHeader};

use crate::beacons::Publisher;
use crate::kafka::connection::{Reply, Request, encode, ready};
use crate::kafka::{Broker, code};
use crate::node::{Pending, now_ms};

/// How long a client is asked to back off while the node is at its realtime memory bound.
const OVERLOAD_THROTTLE_MS: i32 = 1000;

/// One partition's answer, filled in at the edge or after apply.
#[derive(Debug, Default)]
struct PartAnswer {
    index: i32,
    error: i16,
    message: Option<String>,
    base_offset: i64,
    record_errors: Vec<(i32, String)>,
}

impl PartAnswer {
    fn error(index: i32, error: i16, message: impl Into<String>) -> Self {
        PartAnswer {
            index,
            error,
            message: Some(message.into()),
            base_offset: -1,
            record_errors: Vec::new(),
        }
    }
}

/// A topic's share of the request: its answers, and the entry that carries its good parts.
struct TopicWork {
    name: String,
    answers: Vec<PartAnswer>,
    /// For each part in the entry, which answer it fills.
    slots: Vec<usize>,
    pending: Option<Pending>,
}

pub(crate) fn produce(
    b: &Arc<Broker>,
    req: &Request,
    r: ProduceRequest,
    caller: &Principal,
) -> Reply {
    let publisher = Publisher::from_caller(caller);
    let may_publish = caller.allows(Action::Publish);
    let acks = r.acks;
    // The client's own limit (request.timeout.ms), never beyond the node's write timeout: a
    // connection answers in order, so one Produce waiting on a commit that cannot come (a
    // leader cut off, or restored at a stale term) would hold every later answer, Metadata
    // included, and librdkafka would not move the partition to the new leader meanwhile.
    let write_timeout_ms = b.node.config().write_timeout_ms;
    let wait = std::time::Duration::from_millis(match r.timeout_ms {
        t if t > 0 => (t as u64).min(write_timeout_ms),
        _ => write_timeout_ms,
    });
    let mut throttle_ms = 0;
    let refuse_all = if r.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
        Some((
            code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            "transactions are not supported by tidemark; use an idempotent producer without transactional.id",
        ))
    } else if !matches!(acks, -1 | 0 | 1) {
        Some((code::INVALID_REQUIRED_ACKS, "acks must be -1 (all), 0 or 1"))
    } else {
        None
    };
    let leading = b.node.replica().is_leader();
    let mut work = Vec::with_capacity(r.topic_data.len());
    for topic in r.topic_data {
        let name = topic.name.0.to_string();
        let mut w = TopicWork {
            name: name.clone(),
            answers: Vec::new(),
            slots: Vec::new(),
            pending: None,
        };
        if let Some((err, msg)) = refuse_all {
            w.answers = topic
                .partition_data
                .iter()
                .map(|p| PartAnswer::error(p.index, err, msg))
                .collect();
            work.push(w);
            continue;
        }
        let (spec, overloaded, rules) = {
            let engine = b.node.engine();
            let e = engine.read();
            (
                e.catalog().get(&name).map(|entry| entry.current().clone()),
                e.is_overloaded(),
                e.current_rules(&name),
            )
        };
        let Some(spec) = spec else {
            w.answers = topic
                .partition_data
                .iter()
                .map(|p| {
                    PartAnswer::error(
                        p.index,
                        code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("topic {name:?} does not exist; create the datasource first (tidemark datasource create, or CreateTopics with config tidemark.spec)"),
                    )
                })
                .collect();
            work.push(w);
            continue;
        };
        // Publish rights, per topic: none at all refuses every partition of it.
        let right = if may_publish {
            publisher.check_datasource(&name).map_err(|e| e.to_string())
        } else {
            Err(caller.forbidden(Action::Publish))
        };
        let permitted: Option<Vec<String>> = match right {
            Err(message) => {
                w.answers = topic
                    .partition_data
                    .iter()
                    .map(|p| {
                        PartAnswer::error(
                            p.index,
                            code::TOPIC_AUTHORIZATION_FAILED,
                            message.clone(),
                        )
                    })
                    .collect();
                work.push(w);
                continue;
            }
            Ok(PublishRight::Tags(tags)) => Some(tags.to_vec()),
            Ok(PublishRight::Any | PublishRight::Nothing) => None,
        };
        let grant = permitted
            .as_deref()
            .map(|tags| (publisher.key_id.as_deref().unwrap_or_default(), tags));
        let mut parts = Vec::new();
        let mut batches = Vec::new();
        for pd in topic.partition_data {
            let slot = w.answers.len();
            let checked = if !leading {
                Err(PartAnswer::error(
                    pd.index,
                    code::NOT_LEADER_OR_FOLLOWER,
                    "this broker does not lead the partition; refresh metadata",
                ))
            } else if overloaded {
                throttle_ms = OVERLOAD_THROTTLE_MS;
                Err(PartAnswer::error(
                    pd.index,
                    code::NOT_ENOUGH_REPLICAS,
                    "the realtime index is at its memory bound while segments persist; retry shortly",
                ))
            } else if parts
                .iter()
                .any(|p: &EventsPart| p.partition as i32 == pd.index)
            {
                Err(PartAnswer::error(
                    pd.index,
                    code::INVALID_REQUEST,
                    "the partition appears twice in one request",
                ))
            } else {
                check_part(
                    b,
                    &spec,
                    rules.as_deref(),
                    grant,
                    pd.index,
                    pd.records.as_ref(),
                )
            };
            match checked {
                Err(answer) => w.answers.push(answer),
                Ok(batch) => {
                    w.answers.push(PartAnswer {
                        index: pd.index,
                        ..PartAnswer::default()
                    });
                    w.slots.push(slot);
                    parts.push(EventsPart {
                        partition: pd.index as u32,
                        lines: Vec::new(),
                        verdicts: Vec::new(),
                        batch_len: batch.len() as u32,
                    });
                    batches.push(batch.to_vec());
                }
            }
        }
        if !parts.is_empty() {
            let cmd = Command::Events(EventsCommand {
                header: EventsHeader {
                    datasource: name,
                    publisher: publisher.key_id.clone(),
                    permitted_tags: permitted,
                    idempotency_key: None,
                    idempotency_per_publisher: false,
                    body_hash: 0,
                    parts,
                    future_ms_max: Some(b.config.future_ms_max),
                    decompressed_bytes_max: Some(b.config.decompressed_batch_bytes_max as u64),
                },
                batches,
            });
            match b.node.submit(&cmd) {
                Ok(p) => w.pending = Some(p),
                Err(e) => {
                    for &slot in &w.slots {
                        let a = &mut w.answers[slot];
                        *a = PartAnswer::error(a.index, super::write_error_code(&e), e.to_string());
                    }
                }
            }
        }
        work.push(w);
    }
    let req = req.clone();
    let metrics = b.node.metrics();
    let started = std::time::Instant::now();
    Box::pin(async move {
        for w in &mut work {
            let Some(pending) = w.pending.take() else {
                continue;
            };
            let Ok(result) = tokio::time::timeout(wait, pending.wait()).await else {
                // Not committed in time: it may still commit. librdkafka retries a timed-out
                // batch as possibly written, and the producer's sequence check sees the retry.
                for &slot in &w.slots {
                    let a = &mut w.answers[slot];
                    let msg = format!(
                        "not committed within {} ms (no quorum?); retry",
                        wait.as_millis()
                    );
                    *a = PartAnswer::error(a.index, code::REQUEST_TIMED_OUT, msg);
                }
                continue;
            };
            match result {
                Ok(Applied::Events(outcome)) => {
                    for (slot, part) in w.slots.iter().zip(&outcome.parts) {
                        let a = &mut w.answers[*slot];
                        match &part.error {
                            None => a.base_offset = part.base_offset,
                            Some(e) => {
                                let err = match e {
                                    PartError::Sequence(SequenceError::InvalidProducerEpoch {
                                        ..
                                    }) => code::INVALID_PRODUCER_EPOCH,
                                    PartError::Sequence(SequenceError::OutOfOrderSequence {
                                        ..
                                    }) => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
                                    PartError::CorruptBatch { .. } => code::CORRUPT_MESSAGE,
                                };
                                *a = PartAnswer::error(a.index, err, e.to_string());
                            }
                        }
                    }
                }
                Ok(Applied::Refused { reason, .. }) => {
                    for &slot in &w.slots {
                        let a = &mut w.answers[slot];
                        *a = PartAnswer::error(
                            a.index,
                            code::UNKNOWN_TOPIC_OR_PARTITION,
                            reason.clone(),
                        );
                    }
                }
                Ok(other) => {
                    tracing::error!(?other, "a produce entry applied as something else");
                    for &slot in &w.slots {
                        let a = &mut w.answers[slot];
                        *a =
                            PartAnswer::error(a.index, code::KAFKA_STORAGE_ERROR, "internal error");
                    }
                }
                Err(e) => {
                    for &slot in &w.slots {
                        let a = &mut w.answers[slot];
                        *a = PartAnswer::error(a.index, super::write_error_code(&e), e.to_string());
                    }
                }
            }
        }
        for a in work.iter().flat_map(|w| &w.answers) {
            metrics.count_kafka_produce_partition(a.error);
        }
        metrics
            .kafka_produce_seconds
            .observe(started.elapsed().as_secs_f64());
        if acks == 0 {
            return None;
        }
        let mut resp = ProduceResponse::default();
        resp.throttle_time_ms = throttle_ms;
        resp.responses = work
            .into_iter()
            .map(|w| {
                let mut t = TopicProduceResponse::default();
                t.name = kafka_protocol::messages::TopicName(StrBytes::from_string(w.name));
                t.partition_responses = w
                    .answers
                    .into_iter()
                    .map(|a| partition_response(&req, a))
                    .collect();
                t
            })
            .collect();
        encode(&req, &resp)
    })
}

fn partition_response(req: &Request, a: PartAnswer) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default();
    p.index = a.index;
    p.error_code = a.error;
    p.base_offset = a.base_offset;
    p.log_append_time_ms = -1;
    if req.version >= 5 {
        p.log_start_offset = 0;
    }
    if req.version >= 8 {
        p.error_message = a.message.map(StrBytes::from_string);
        p.record_errors = a
            .record_errors
            .into_iter()
            .map(|(i, m)| {
                let mut e = BatchIndexAndErrorMessage::default();
                e.batch_index = i;
                e.batch_index_error_message = Some(StrBytes::from_string(m));
                e
            })
            .collect();
    }
    p
}

/// The edge checks of one partition's records; the batch bytes if they pass.
fn check_part<'a>(
    b: &Broker,
    spec: &DatasourceSpec,
    rules: Option<&TagRules>,
    grant: Option<(&str, &[String])>,
    index: i32,
    records: Option<&'a Bytes>,
) -> Result<&'a Bytes, PartAnswer> {
    let err = |code: i16, msg: String| PartAnswer::error(index, code, msg);
    if index < 0 || index as u32 >= spec.partitions {
        return Err(err(
            code::UNKNOWN_TOPIC_OR_PARTITION,
            format!(
                "partition {index} does not exist; {:?} has {} partitions",
                spec.name, spec.partitions
            ),
        ));
    }
    let Some(bytes) = records.filter(|r| !r.is_empty()) else {
        return Err(err(
            code::CORRUPT_MESSAGE,
            "the partition carries no record batch".into(),
        ));
    };
    let total = record_batch::peek_total_len(bytes)
        .map_err(|e| err(code::CORRUPT_MESSAGE, e.to_string()))?;
    if total != bytes.len() {
        return Err(err(
            code::INVALID_REQUEST,
            format!(
                "a produce request must carry exactly one record batch per partition; this one has {} bytes after the first batch",
                bytes.len().saturating_sub(total)
            ),
        ));
    }
    if bytes.len() > 16 && bytes[16] as i8 != record_batch::MAGIC {
        return Err(err(
            code::UNSUPPORTED_FOR_MESSAGE_FORMAT,
            format!(
                "message format v{} is not supported; use RecordBatch v2 (Kafka 0.11+ clients)",
                bytes[16] as i8
            ),
        ));
    }
    let header: BatchHeader =
        record_batch::parse_header(bytes).map_err(|e| err(code::CORRUPT_MESSAGE, e.to_string()))?;
    if header.is_transactional() || header.is_control() {
        return Err(err(
            code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            "transactional batches are not supported by tidemark; use an idempotent producer without transactional.id"
                .into(),
        ));
    }
    if header.compression() > 4 {
        return Err(err(
            code::UNSUPPORTED_COMPRESSION_TYPE,
            format!(
                "compression codec {} is unknown; use none, gzip, snappy, lz4 or zstd",
                header.compression()
            ),
        ));
    }
    if spec.invalid_records == InvalidRecordPolicy::RejectBatch {
        let (_, decoded) =
            record_batch::decode_records_capped(bytes, b.config.decompressed_batch_bytes_max)
                .map_err(|e| err(code::CORRUPT_MESSAGE, e.to_string()))?;
        // The rules apply judges by, read-only (apply's verdict wins).
        let write_rules = WriteRules {
            spec,
            tag_rules: rules,
            permitted: grant,
            future: Some((now_ms(), b.config.future_ms_max)),
        };
        let mut problems = Vec::new();
        for (i, (_, r)) in decoded.iter().enumerate() {
            let value = r.value.as_deref().unwrap_or_default();
            if let Some(reason) = verdict(&write_rules, value).refusal() {
                problems.push((i as i32, reason.to_string()));
            }
        }
        if !problems.is_empty() {
            let mut a = err(
                code::INVALID_RECORD,
                format!(
                    "{} of {} records fail validation and {:?} refuses whole batches (invalid_records = reject_batch); nothing was stored",
                    problems.len(),
                    decoded.len(),
                    spec.name
                ),
            );
            a.record_errors = problems;
            return Err(a);
        }
    }
    Ok(bytes)
}

pub(crate) fn init_producer_id(b: &Arc<Broker>, req: &Request, r: InitProducerIdRequest) -> Reply {
    let req = req.clone();
    if r.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
        let mut resp = InitProducerIdResponse::default();
        resp.error_code = code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        resp.producer_id = ProducerId(-1);
        resp.producer_epoch = -1;
        return ready(encode(&req, &resp));
    }
    let existing = (r.producer_id.0 >= 0).then_some((r.producer_id.0, r.producer_epoch));
    let b = b.clone();
    Box::pin(async move {
        let mut resp = InitProducerIdResponse::default();
        match allocate_producer(&b, existing).await {
            Ok((id, epoch)) => {
                resp.producer_id = ProducerId(id);
                resp.producer_epoch = epoch;
            }
            Err(reason) => {
                tracing::warn!(%reason, "InitProducerId failed");
                resp.error_code = code::COORDINATOR_NOT_AVAILABLE;
                resp.producer_id = ProducerId(-1);
                resp.producer_epoch = -1;
            }
        }
        encode(&req, &resp)
    })
}

/// Producer ids are logged commands: the leader logs it, and a follower (any broker may get
/// InitProducerId) has the leader do it.
async fn allocate_producer(b: &Broker, existing: Option<(i64, i16)>) -> Result<(i64, i16), String> {
    let replica = b.node.replica();
    if !replica.is_leader()
        && let Some((id, leader)) = replica.leader()
        && id != replica.node_id()
    {
        let body = serde_json::json!({ "existing": existing });
        let v = crate::forward::call_leader(
            &b.node,
            &leader.http,
            "/v1/cluster/init-producer",
            Some(body),
        )
        .await?;
        let pid = v.get("producer_id").and_then(serde_json::Value::as_i64);
        let epoch = v.get("epoch").and_then(serde_json::Value::as_i64);
        return match (pid, epoch) {
            (Some(p), Some(e)) => Ok((p, e as i16)),
            _ => Err(format!("the leader answered {v}")),
        };
    }
    let pending = b
        .node
        .submit(&Command::InitProducer(InitProducerCommand { existing }))
        .map_err(|e| e.to_string())?;
    match pending.wait().await {
        Ok(Applied::Producer { id, epoch }) => Ok((id, epoch)),
        Ok(other) => Err(format!("applied as {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}
