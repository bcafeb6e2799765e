//! ApiVersions, Metadata and DescribeConfigs: what the broker tells clients about itself and
//! its topics. Topics are the live datasources; this node leads every partition (the
//! replication issue extends this to a cluster).

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, DescribeConfigsRequest,
    DescribeConfigsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tidemark_catalog::DatasourceEntry;

use crate::kafka::connection::{Request, encode};
use crate::kafka::{Broker, bounds, code};

pub(crate) const CLUSTER_ID: &str = "tidemark";
/// The topic config that carries a datasource spec (CreateTopics, DescribeConfigs).
pub(crate) const SPEC_CONFIG: &str = "tidemark.spec";

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Every API the door serves, with the versions it advertises.
fn api_list() -> Vec<ApiVersion> {
    let mut out = Vec::new();
    for key in 0..=i16::from(u8::MAX) {
        let Ok(api) = ApiKey::try_from(key) else {
            continue;
        };
        if let Some((min, max, _)) = bounds::schema(api) {
            let mut v = ApiVersion::default();
            v.api_key = key;
            v.min_version = min;
            v.max_version = max;
            out.push(v);
        }
    }
    out
}

pub(crate) fn api_versions(req: &Request, _r: &ApiVersionsRequest) -> Option<Bytes> {
    let mut resp = ApiVersionsResponse::default();
    resp.api_keys = api_list();
    encode(req, &resp)
}

/// The answer to an ApiVersions request of a version we do not serve: v0, with our range.
pub(crate) fn api_versions_unsupported(req: &Request) -> Option<Bytes> {
    let mut resp = ApiVersionsResponse::default();
    resp.error_code = code::UNSUPPORTED_VERSION;
    resp.api_keys = api_list();
    let v0 = Request {
        api: req.api,
        version: 0,
        correlation_id: req.correlation_id,
        client_id: String::new(),
    };
    encode(&v0, &resp)
}

/// A stable topic id for a datasource incarnation: its catalog id and a hash of its name.
pub(crate) fn topic_id(entry: &DatasourceEntry) -> uuid::Uuid {
    let name_hash = xxhash_rust::xxh3::xxh3_64(entry.current().name.as_bytes());
    uuid::Uuid::from_u64_pair(name_hash, entry.id.0 | (1 << 63))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

pub(crate) fn metadata(b: &Broker, req: &Request, r: MetadataRequest) -> Option<Bytes> {
    let (brokers, leader) = b.cluster();
    let mut resp = MetadataResponse::default();
    resp.brokers = brokers
        .iter()
        .map(|a| {
            let mut broker = MetadataResponseBroker::default();
            broker.node_id = BrokerId(a.id);
            broker.host = str_bytes(&a.host);
            broker.port = a.port;
            broker
        })
        .collect();
    let replicas: Vec<BrokerId> = brokers.iter().map(|a| BrokerId(a.id)).collect();
    if req.version >= 2 {
        resp.cluster_id = Some(str_bytes(CLUSTER_ID));
    }
    if req.version >= 1 {
        resp.controller_id = BrokerId(leader.unwrap_or(-1));
    }
    // Every partition's raw log lives in the one Raft group, so the Raft leader leads them all
    // and its term is the leader epoch clients compare.
    let epoch = b.node.replica().status().term as i32;
    let engine = b.node.engine();
    let e = engine.read();
    let catalog = e.catalog();
    let describe = |entry: &DatasourceEntry| {
        let spec = entry.current();
        let mut t = MetadataResponseTopic::default();
        t.name = Some(TopicName(str_bytes(&spec.name)));
        if req.version >= 10 {
            t.topic_id = topic_id(entry);
        }
        t.partitions = (0..spec.partitions as i32)
            .map(|p| {
                let mut part = MetadataResponsePartition::default();
                part.partition_index = p;
                match leader {
                    Some(id) => {
                        part.leader_id = BrokerId(id);
                        part.leader_epoch = epoch;
                    }
                    None => {
                        part.error_code = code::LEADER_NOT_AVAILABLE;
                        part.leader_id = BrokerId(-1);
                        part.leader_epoch = -1;
                    }
                }
                part.replica_nodes = replicas.clone();
                part.isr_nodes = replicas.clone();
                part
            })
            .collect();
        t
    };
    resp.topics = match r.topics {
        // Null (or, before v1, empty) means every topic.
        None => catalog.datasources().map(describe).collect(),
        Some(topics) if topics.is_empty() && req.version == 0 => {
            catalog.datasources().map(describe).collect()
        }
        Some(topics) => topics
            .iter()
            .map(|t| {
                let name = t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
                match catalog.get(&name) {
                    Some(entry) => describe(entry),
                    None => {
                        let mut missing = MetadataResponseTopic::default();
                        missing.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                        missing.name = Some(TopicName(str_bytes(&name)));
                        missing
                    }
                }
            })
            .collect(),
    };
    drop(e);
    encode(req, &resp)
}

pub(crate) fn describe_configs(
    b: &Broker,
    req: &Request,
    r: DescribeConfigsRequest,
) -> Option<Bytes> {
    let engine = b.node.engine();
    let e = engine.read();
    let mut resp = DescribeConfigsResponse::default();
    for resource in &r.resources {
        let name = resource.resource_name.to_string();
        let mut result = DescribeConfigsResult::default();
        result.resource_type = resource.resource_type;
        result.resource_name = resource.resource_name.clone();
        let configs: Vec<(&str, String)> = match resource.resource_type {
            RESOURCE_TOPIC => match e.catalog().get(&name) {
                Some(entry) => {
                    let spec = entry.current();
                    vec![
                        // Raw batches are kept until retention is managed (DBA issue); -1 is
                        // Kafka's "forever".
                        ("retention.ms", "-1".into()),
                        ("retention.bytes", "-1".into()),
                        ("cleanup.policy", "delete".into()),
                        ("compression.type", "producer".into()),
                        ("message.timestamp.type", "CreateTime".into()),
                        (
                            "max.message.bytes",
                            b.config.decompressed_batch_bytes_max.to_string(),
                        ),
                        ("min.insync.replicas", "1".into()),
                        (SPEC_CONFIG, serde_json::to_string(spec).unwrap_or_default()),
                    ]
                }
                None => {
                    result.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    result.error_message =
                        Some(str_bytes(&format!("topic {name:?} does not exist")));
                    vec![]
                }
            },
            RESOURCE_BROKER => vec![
                ("broker.id", b.config.node_id.to_string()),
                (
                    "socket.request.max.bytes",
                    b.config.request_bytes_max.to_string(),
                ),
                ("auto.create.topics.enable", "false".into()),
                ("num.partitions", "1".into()),
            ],
            other => {
                result.error_code = code::INVALID_REQUEST;
                result.error_message = Some(str_bytes(&format!(
                    "resource type {other} has no configs here; ask for a topic (2) or broker (4)"
                )));
                vec![]
            }
        };
        let wanted = resource.configuration_keys.as_ref();
        result.configs = configs
            .into_iter()
            .filter(|(k, _)| wanted.is_none_or(|w| w.iter().any(|x| x.as_str() == *k)))
            .map(|(k, v)| {
                let mut c = DescribeConfigsResourceResult::default();
                c.name = str_bytes(k);
                c.value = Some(str_bytes(&v));
                c.read_only = true;
                // 5 = DEFAULT_CONFIG, 1 = DYNAMIC_TOPIC_CONFIG (the spec is set per topic).
                c.config_source = if k == SPEC_CONFIG { 1 } else { 5 };
                c
            })
            .collect();
        resp.results.push(result);
    }
    drop(e);
    encode(req, &resp)
}
