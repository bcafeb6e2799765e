//! Fetch and ListOffsets: the raw log read back as Kafka serves a topic.
//!
//! Fetch returns stored batches exactly as they were produced (offsets patched in at apply),
//! starting with the batch that holds the requested offset, as Kafka does; the client skips
//! records before its offset. The high watermark is the log end: everything applied is
//! durable. A fetch that finds fewer than `min_bytes` waits for new entries to apply, up to
//! `max_wait_ms`. Fetch sessions (KIP-227) are not kept: every answer has session id 0, which
//! tells clients to send full fetches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
};
use tidemark_engine::Engine;

use crate::kafka::connection::{Reply, Request, encode};
use crate::kafka::{Broker, code};

/// The most one Fetch answer carries, whatever the client asks (Kafka's broker caps it with
/// `fetch.max.bytes`, 55 MiB); a connection holds at most a few answers in flight.
const FETCH_BYTES_MAX: usize = 64 << 20;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

pub(crate) fn fetch(b: Arc<Broker>, req: Request, r: FetchRequest) -> Reply {
    Box::pin(async move {
        let deadline =
            Instant::now() + Duration::from_millis(r.max_wait_ms.clamp(0, 60_000) as u64);
        let mut watch = b.node.applied_watch();
        loop {
            watch.mark_unchanged();
            let (resp, bytes, errors) = {
                let engine = b.node.engine();
                let e = engine.read();
                read_all(&e, &req, &r)
            };
            let now = Instant::now();
            if bytes >= r.min_bytes.max(1) as usize || errors || now >= deadline {
                return encode(&req, &resp);
            }
            // Wait for anything new to apply, then look again.
            let _ = tokio::time::timeout(deadline - now, watch.changed()).await;
        }
    })
}

/// One pass over the requested partitions: the response, the record bytes in it, and
/// whether any partition answered with an error (which ends a long poll at once).
fn read_all(e: &Engine, req: &Request, r: &FetchRequest) -> (FetchResponse, usize, bool) {
    let mut resp = FetchResponse::default();
    let mut total = 0usize;
    let mut errors = false;
    let max_bytes = if r.max_bytes <= 0 {
        FETCH_BYTES_MAX
    } else {
        (r.max_bytes as usize).min(FETCH_BYTES_MAX)
    };
    for topic in &r.topics {
        let name = topic.topic.0.to_string();
        let mut t = FetchableTopicResponse::default();
        t.topic = topic.topic.clone();
        for p in &topic.partitions {
            let mut out = PartitionData::default();
            out.partition_index = p.partition;
            out.preferred_read_replica = BrokerId(-1);
            out.aborted_transactions = if req.version >= 4 {
                Some(Vec::new())
            } else {
                None
            };
            let log = u32::try_from(p.partition)
                .ok()
                .and_then(|part| e.partition_log(&name, part));
            let Some(log) = log else {
                out.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                out.high_watermark = -1;
                out.last_stable_offset = -1;
                out.log_start_offset = -1;
                errors = true;
                t.partitions.push(out);
                continue;
            };
            let (start, end) = (log.earliest_offset(), log.next_offset());
            out.high_watermark = end;
            out.last_stable_offset = end;
            out.log_start_offset = start;
            if p.fetch_offset < start || p.fetch_offset > end {
                out.error_code = code::OFFSET_OUT_OF_RANGE;
                errors = true;
            } else if p.fetch_offset < end && total < max_bytes {
                // KIP-74: the first batch goes out even if it is larger than the limits.
                let limit = (p.partition_max_bytes.max(0) as usize).min(max_bytes - total);
                match log.read(p.fetch_offset, limit) {
                    Ok(batches) => {
                        let mut buf =
                            Vec::with_capacity(batches.iter().map(|s| s.batch.len()).sum());
                        for s in &batches {
                            if !buf.is_empty() && total + buf.len() + s.batch.len() > max_bytes {
                                break;
                            }
                            buf.extend_from_slice(&s.batch);
                        }
                        total += buf.len();
                        out.records = Some(Bytes::from(buf));
                    }
                    Err(err) => {
                        tracing::error!(topic = %name, partition = p.partition, error = %err, "raw log read failed");
                        out.error_code = code::KAFKA_STORAGE_ERROR;
                        errors = true;
                    }
                }
            }
            if out.records.is_none() {
                out.records = Some(Bytes::new());
            }
            t.partitions.push(out);
        }
        resp.responses.push(t);
    }
    (resp, total, errors)
}

pub(crate) fn list_offsets(b: &Broker, req: &Request, r: ListOffsetsRequest) -> Option<Bytes> {
    let engine = b.node.engine();
    let e = engine.read();
    let mut resp = ListOffsetsResponse::default();
    for topic in &r.topics {
        let name = topic.name.0.to_string();
        let mut t = ListOffsetsTopicResponse::default();
        t.name = topic.name.clone();
        for p in &topic.partitions {
            let mut out = ListOffsetsPartitionResponse::default();
            out.partition_index = p.partition_index;
            out.timestamp = -1;
            out.offset = -1;
            let log = u32::try_from(p.partition_index)
                .ok()
                .and_then(|part| e.partition_log(&name, part));
            match log {
                None => out.error_code = code::UNKNOWN_TOPIC_OR_PARTITION,
                Some(log) => match p.timestamp {
                    LATEST => out.offset = log.next_offset(),
                    EARLIEST => out.offset = log.earliest_offset(),
                    MAX_TIMESTAMP | 0.. => {
                        let found = if p.timestamp == MAX_TIMESTAMP {
                            log.max_timestamp_offset()
                        } else {
                            log.offset_for_timestamp(p.timestamp)
                        };
                        match found {
                            Ok(Some((offset, ts))) => {
                                out.offset = offset;
                                out.timestamp = ts;
                            }
                            Ok(None) => {}
                            Err(err) => {
                                tracing::error!(topic = %name, error = %err, "raw log read failed");
                                out.error_code = code::KAFKA_STORAGE_ERROR;
                            }
                        }
                    }
                    _ => out.error_code = code::INVALID_REQUEST,
                },
            }
            if req.version >= 4 {
                out.leader_epoch = 0;
            }
            t.partitions.push(out);
        }
        resp.topics.push(t);
    }
    drop(e);
    encode(req, &resp)
}
