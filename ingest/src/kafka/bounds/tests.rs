//! Bounds schemas checked against the kafka-protocol encoder, and hostile lengths refused.

use super::*;

use std::alloc::{GlobalAlloc, Layout, System};
use std::any::type_name;
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiVersionsRequest, BrokerId, CreatePartitionsRequest, CreateTopicsRequest,
    DeleteGroupsRequest, DeleteTopicsRequest, DescribeConfigsRequest, DescribeGroupsRequest,
    FetchRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest, InitProducerIdRequest,
    JoinGroupRequest, LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest, MetadataRequest,
    OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest, ProduceRequest, ProducerId,
    SaslAuthenticateRequest, SaslHandshakeRequest, SyncGroupRequest, TopicName, TransactionalId,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use proptest::prelude::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Allocation accounting: the hostile-length tests prove refusal costs no more than an error
// message, and the fuzz tests prove a body `check` passes decodes in memory bounded by its size.
// Counted per thread, so tests running in parallel do not disturb each other.

struct CountingAlloc;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: the allocator may run while this thread's locals are being torn down.
    let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(bytes)));
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: as for `alloc`; `ptr` and `layout` came from this allocator, i.e. from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` came from this allocator, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f`, returning its result and how many bytes this thread allocated meanwhile.
fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATED.with(Cell::get);
    let r = f();
    (r, ALLOCATED.with(Cell::get) - before)
}

// ---------------------------------------------------------------------------------------------
// Request builders: one per API, populated with every field the version has, every array with
// two elements, and an unknown tagged field on every struct (the encoder writes those only at
// flexible versions, so they exercise the walker's tagged-field skipping there).

const TAG: i32 = 100;

fn tag() -> Bytes {
    Bytes::from_static(b"tagged")
}

fn s(x: &'static str) -> StrBytes {
    StrBytes::from_static_str(x)
}

fn topic(x: &'static str) -> TopicName {
    TopicName(s(x))
}

fn group(x: &'static str) -> GroupId {
    GroupId(s(x))
}

fn uuid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn produce(v: i16) -> ProduceRequest {
    let partition = |index| {
        PartitionProduceData::default()
            .with_index(index)
            .with_records(Some(Bytes::from_static(b"a record batch")))
            .with_unknown_tagged_field(TAG, tag())
    };
    let topic_data = |name, id| {
        let mut t = TopicProduceData::default()
            .with_partition_data(vec![partition(0), partition(1)])
            .with_unknown_tagged_field(TAG, tag());
        if v <= 12 {
            t.name = topic(name);
        } else {
            t.topic_id = uuid(id);
        }
        t
    };
    ProduceRequest::default()
        .with_transactional_id(Some(TransactionalId(s("txn-1"))))
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![topic_data("orders", 1), topic_data("events", 2)])
        .with_unknown_tagged_field(TAG, tag())
}

fn fetch(v: i16) -> FetchRequest {
    let partition = |p| {
        let mut x = FetchPartition::default()
            .with_partition(p)
            .with_fetch_offset(1_000)
            .with_partition_max_bytes(1 << 20)
            .with_unknown_tagged_field(TAG, tag());
        if v >= 9 {
            x.current_leader_epoch = 4;
        }
        if v >= 12 {
            x.last_fetched_epoch = 3;
        }
        if v >= 5 {
            x.log_start_offset = 7;
        }
        x
    };
    let fetch_topic = |name, id| {
        let mut t = FetchTopic::default()
            .with_partitions(vec![partition(0), partition(1)])
            .with_unknown_tagged_field(TAG, tag());
        if v <= 12 {
            t.topic = topic(name);
        } else {
            t.topic_id = uuid(id);
        }
        t
    };
    let forgotten = |name, id| {
        let mut t = ForgottenTopic::default()
            .with_partitions(vec![5, 6])
            .with_unknown_tagged_field(TAG, tag());
        if v <= 12 {
            t.topic = topic(name);
        } else {
            t.topic_id = uuid(id);
        }
        t
    };
    let mut r = FetchRequest::default()
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_isolation_level(1)
        .with_topics(vec![fetch_topic("orders", 1), fetch_topic("events", 2)])
        .with_unknown_tagged_field(TAG, tag());
    if v <= 14 {
        r.replica_id = BrokerId(-1);
    }
    if v >= 7 {
        r.session_id = 11;
        r.session_epoch = 2;
        r.forgotten_topics_data = vec![forgotten("old", 3), forgotten("older", 4)];
    }
    if v >= 11 {
        r.rack_id = s("rack-a");
    }
    if v >= 12 {
        // A known tagged field (tag 0).
        r.cluster_id = Some(s("cluster"));
    }
    r
}

fn list_offsets(v: i16) -> ListOffsetsRequest {
    let partition = |p| {
        let mut x = ListOffsetsPartition::default()
            .with_partition_index(p)
            .with_timestamp(-1)
            .with_unknown_tagged_field(TAG, tag());
        if v >= 4 {
            x.current_leader_epoch = 9;
        }
        x
    };
    let t = |name| {
        ListOffsetsTopic::default()
            .with_name(topic(name))
            .with_partitions(vec![partition(0), partition(1)])
            .with_unknown_tagged_field(TAG, tag())
    };
    let mut r = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![t("orders"), t("events")])
        .with_unknown_tagged_field(TAG, tag());
    if v >= 2 {
        r.isolation_level = 1;
    }
    if v >= 10 {
        r.timeout_ms = 1_000;
    }
    r
}

fn metadata(v: i16) -> MetadataRequest {
    let t = |name, id| {
        let mut x = MetadataRequestTopic::default()
            .with_name(Some(topic(name)))
            .with_unknown_tagged_field(TAG, tag());
        if v >= 10 {
            x.topic_id = uuid(id);
        }
        x
    };
    let mut r = MetadataRequest::default()
        .with_topics(Some(vec![t("orders", 1), t("events", 2)]))
        .with_unknown_tagged_field(TAG, tag());
    if v >= 4 {
        r.allow_auto_topic_creation = false;
    }
    if (8..=10).contains(&v) {
        r.include_cluster_authorized_operations = true;
    }
    if v >= 8 {
        r.include_topic_authorized_operations = true;
    }
    r
}

fn offset_commit(v: i16) -> OffsetCommitRequest {
    let partition = |p| {
        let mut x = OffsetCommitRequestPartition::default()
            .with_partition_index(p)
            .with_committed_offset(42)
            .with_committed_metadata(Some(s("meta")))
            .with_unknown_tagged_field(TAG, tag());
        if v >= 6 {
            x.committed_leader_epoch = 5;
        }
        x
    };
    let t = |name| {
        OffsetCommitRequestTopic::default()
            .with_name(topic(name))
            .with_partitions(vec![partition(0), partition(1)])
            .with_unknown_tagged_field(TAG, tag())
    };
    let mut r = OffsetCommitRequest::default()
        .with_group_id(group("readers"))
        .with_generation_id_or_member_epoch(3)
        .with_member_id(s("member-1"))
        .with_topics(vec![t("orders"), t("events")])
        .with_unknown_tagged_field(TAG, tag());
    if v >= 7 {
        r.group_instance_id = Some(s("instance-1"));
    }
    if v <= 4 {
        r.retention_time_ms = 60_000;
    }
    r
}

fn offset_fetch(v: i16) -> OffsetFetchRequest {
    let mut r = OffsetFetchRequest::default().with_unknown_tagged_field(TAG, tag());
    if v <= 7 {
        let t = |name| {
            OffsetFetchRequestTopic::default()
                .with_name(topic(name))
                .with_partition_indexes(vec![0, 1])
                .with_unknown_tagged_field(TAG, tag())
        };
        r.group_id = group("readers");
        r.topics = Some(vec![t("orders"), t("events")]);
    } else {
        let t = |name| {
            OffsetFetchRequestTopics::default()
                .with_name(topic(name))
                .with_partition_indexes(vec![0, 1])
                .with_unknown_tagged_field(TAG, tag())
        };
        let g = |id| {
            let mut x = OffsetFetchRequestGroup::default()
                .with_group_id(group(id))
                .with_topics(Some(vec![t("orders"), t("events")]))
                .with_unknown_tagged_field(TAG, tag());
            if v >= 9 {
                x.member_id = Some(s("member-1"));
                x.member_epoch = 6;
            }
            x
        };
        r.groups = vec![g("readers"), g("writers")];
    }
    if v >= 7 {
        r.require_stable = true;
    }
    r
}

fn find_coordinator(v: i16) -> FindCoordinatorRequest {
    let mut r = FindCoordinatorRequest::default().with_unknown_tagged_field(TAG, tag());
    if v <= 3 {
        r.key = s("readers");
    }
    if v >= 1 {
        r.key_type = 1;
    }
    if v >= 4 {
        r.coordinator_keys = vec![s("txn-1"), s("txn-2")];
    }
    r
}

fn join_group(v: i16) -> JoinGroupRequest {
    let protocol = |name| {
        JoinGroupRequestProtocol::default()
            .with_name(s(name))
            .with_metadata(Bytes::from_static(b"subscription"))
            .with_unknown_tagged_field(TAG, tag())
    };
    let mut r = JoinGroupRequest::default()
        .with_group_id(group("readers"))
        .with_session_timeout_ms(10_000)
        .with_member_id(s("member-1"))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![protocol("range"), protocol("roundrobin")])
        .with_unknown_tagged_field(TAG, tag());
    if v >= 1 {
        r.rebalance_timeout_ms = 30_000;
    }
    if v >= 5 {
        r.group_instance_id = Some(s("instance-1"));
    }
    if v >= 8 {
        r.reason = Some(s("joining"));
    }
    r
}

fn heartbeat(v: i16) -> HeartbeatRequest {
    let mut r = HeartbeatRequest::default()
        .with_group_id(group("readers"))
        .with_generation_id(3)
        .with_member_id(s("member-1"))
        .with_unknown_tagged_field(TAG, tag());
    if v >= 3 {
        r.group_instance_id = Some(s("instance-1"));
    }
    r
}

fn leave_group(v: i16) -> LeaveGroupRequest {
    let member = |id| {
        let mut x = MemberIdentity::default()
            .with_member_id(s(id))
            .with_group_instance_id(Some(s("instance-1")))
            .with_unknown_tagged_field(TAG, tag());
        if v >= 5 {
            x.reason = Some(s("leaving"));
        }
        x
    };
    let mut r = LeaveGroupRequest::default()
        .with_group_id(group("readers"))
        .with_unknown_tagged_field(TAG, tag());
    if v <= 2 {
        r.member_id = s("member-1");
    } else {
        r.members = vec![member("member-1"), member("member-2")];
    }
    r
}

fn sync_group(v: i16) -> SyncGroupRequest {
    let assignment = |id| {
        SyncGroupRequestAssignment::default()
            .with_member_id(s(id))
            .with_assignment(Bytes::from_static(b"assignment"))
            .with_unknown_tagged_field(TAG, tag())
    };
    let mut r = SyncGroupRequest::default()
        .with_group_id(group("readers"))
        .with_generation_id(3)
        .with_member_id(s("member-1"))
        .with_assignments(vec![assignment("member-1"), assignment("member-2")])
        .with_unknown_tagged_field(TAG, tag());
    if v >= 3 {
        r.group_instance_id = Some(s("instance-1"));
    }
    if v >= 5 {
        r.protocol_type = Some(s("consumer"));
        r.protocol_name = Some(s("range"));
    }
    r
}

fn describe_groups(v: i16) -> DescribeGroupsRequest {
    let mut r = DescribeGroupsRequest::default()
        .with_groups(vec![group("readers"), group("writers")])
        .with_unknown_tagged_field(TAG, tag());
    if v >= 3 {
        r.include_authorized_operations = true;
    }
    r
}

fn list_groups(v: i16) -> ListGroupsRequest {
    let mut r = ListGroupsRequest::default().with_unknown_tagged_field(TAG, tag());
    if v >= 4 {
        r.states_filter = vec![s("Stable"), s("Empty")];
    }
    if v >= 5 {
        r.types_filter = vec![s("classic"), s("consumer")];
    }
    r
}

fn delete_groups(_v: i16) -> DeleteGroupsRequest {
    DeleteGroupsRequest::default()
        .with_groups_names(vec![group("readers"), group("writers")])
        .with_unknown_tagged_field(TAG, tag())
}

fn offset_delete(_v: i16) -> OffsetDeleteRequest {
    let partition = |p| OffsetDeleteRequestPartition::default().with_partition_index(p);
    let t = |name| {
        OffsetDeleteRequestTopic::default()
            .with_name(topic(name))
            .with_partitions(vec![partition(0), partition(1)])
    };
    OffsetDeleteRequest::default()
        .with_group_id(group("readers"))
        .with_topics(vec![t("orders"), t("events")])
}

fn api_versions(v: i16) -> ApiVersionsRequest {
    let mut r = ApiVersionsRequest::default().with_unknown_tagged_field(TAG, tag());
    if v >= 3 {
        r.client_software_name = s("librdkafka");
        r.client_software_version = s("2.6.0");
    }
    r
}

fn create_topics(_v: i16) -> CreateTopicsRequest {
    let assignment = |p| {
        CreatableReplicaAssignment::default()
            .with_partition_index(p)
            .with_broker_ids(vec![BrokerId(1), BrokerId(2)])
            .with_unknown_tagged_field(TAG, tag())
    };
    let config = |name, value| {
        CreatableTopicConfig::default()
            .with_name(s(name))
            .with_value(Some(s(value)))
            .with_unknown_tagged_field(TAG, tag())
    };
    let t = |name| {
        CreatableTopic::default()
            .with_name(topic(name))
            .with_num_partitions(-1)
            .with_replication_factor(-1)
            .with_assignments(vec![assignment(0), assignment(1)])
            .with_configs(vec![
                config("retention.ms", "1000"),
                config("cleanup.policy", "delete"),
            ])
            .with_unknown_tagged_field(TAG, tag())
    };
    CreateTopicsRequest::default()
        .with_topics(vec![t("orders"), t("events")])
        .with_timeout_ms(5_000)
        .with_validate_only(true)
        .with_unknown_tagged_field(TAG, tag())
}

fn delete_topics(v: i16) -> DeleteTopicsRequest {
    let state = |name, id| {
        DeleteTopicState::default()
            .with_name(Some(topic(name)))
            .with_topic_id(uuid(id))
            .with_unknown_tagged_field(TAG, tag())
    };
    let mut r = DeleteTopicsRequest::default()
        .with_timeout_ms(5_000)
        .with_unknown_tagged_field(TAG, tag());
    if v <= 5 {
        r.topic_names = vec![topic("orders"), topic("events")];
    } else {
        r.topics = vec![state("orders", 1), state("events", 2)];
    }
    r
}

fn create_partitions(_v: i16) -> CreatePartitionsRequest {
    let assignment = |a, b| {
        CreatePartitionsAssignment::default()
            .with_broker_ids(vec![BrokerId(a), BrokerId(b)])
            .with_unknown_tagged_field(TAG, tag())
    };
    let t = |name| {
        CreatePartitionsTopic::default()
            .with_name(topic(name))
            .with_count(4)
            .with_assignments(Some(vec![assignment(1, 2), assignment(2, 3)]))
            .with_unknown_tagged_field(TAG, tag())
    };
    CreatePartitionsRequest::default()
        .with_topics(vec![t("orders"), t("events")])
        .with_timeout_ms(5_000)
        .with_validate_only(true)
        .with_unknown_tagged_field(TAG, tag())
}

fn init_producer_id(v: i16) -> InitProducerIdRequest {
    let mut r = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(s("txn-1"))))
        .with_transaction_timeout_ms(60_000)
        .with_unknown_tagged_field(TAG, tag());
    if v >= 3 {
        r.producer_id = ProducerId(77);
        r.producer_epoch = 2;
    }
    r
}

fn describe_configs(v: i16) -> DescribeConfigsRequest {
    let resource = |name| {
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(s(name))
            .with_configuration_keys(Some(vec![s("retention.ms"), s("cleanup.policy")]))
            .with_unknown_tagged_field(TAG, tag())
    };
    let mut r = DescribeConfigsRequest::default()
        .with_resources(vec![resource("orders"), resource("events")])
        .with_include_synonyms(true)
        .with_unknown_tagged_field(TAG, tag());
    if v >= 3 {
        r.include_documentation = true;
    }
    r
}

fn sasl_handshake(_v: i16) -> SaslHandshakeRequest {
    SaslHandshakeRequest::default().with_mechanism(s("SCRAM-SHA-256"))
}

fn sasl_authenticate(v: i16) -> SaslAuthenticateRequest {
    let r = SaslAuthenticateRequest::default()
        .with_auth_bytes(Bytes::from_static(b"n,,n=user,r=nonce"));
    if v >= 2 {
        r.with_unknown_tagged_field(TAG, tag())
    } else {
        r
    }
}

/// Encodes `req` at `version` and proves the bytes are a valid body: the crate decodes them,
/// consuming every byte, and re-encodes the decoded request to the same bytes.
fn encode_checked<T: Encodable + Decodable>(req: &T, version: i16) -> Vec<u8> {
    let name = type_name::<T>();
    let mut buf = BytesMut::new();
    req.encode(&mut buf, version)
        .unwrap_or_else(|e| panic!("encoding {name} v{version}: {e:#}"));
    let body = buf.freeze();
    let mut rest = body.clone();
    let decoded = T::decode(&mut rest, version)
        .unwrap_or_else(|e| panic!("decoding {name} v{version}: {e:#}"));
    assert!(
        rest.is_empty(),
        "decoding {name} v{version} left {} of {} bytes",
        rest.len(),
        body.len()
    );
    let mut again = BytesMut::new();
    decoded
        .encode(&mut again, version)
        .unwrap_or_else(|e| panic!("re-encoding {name} v{version}: {e:#}"));
    assert_eq!(
        again.freeze(),
        body,
        "{name} v{version} does not survive a decode/encode round trip"
    );
    body.to_vec()
}

/// Whether the crate decodes `body` as request `T` at `version`.
fn decodes<T: Decodable>(version: i16, body: &[u8]) -> bool {
    T::decode(&mut Bytes::copy_from_slice(body), version).is_ok()
}

/// One request type: a valid body at a version, and the crate's decoder for it.
struct Case {
    api: ApiKey,
    body: fn(i16) -> Vec<u8>,
    decodes: fn(i16, &[u8]) -> bool,
}

macro_rules! case {
    ($api:ident, $ty:ty, $build:ident) => {
        Case {
            api: ApiKey::$api,
            body: |v| encode_checked::<$ty>(&$build(v), v),
            decodes: decodes::<$ty>,
        }
    };
}

const CASES: &[Case] = &[
    case!(Produce, ProduceRequest, produce),
    case!(Fetch, FetchRequest, fetch),
    case!(ListOffsets, ListOffsetsRequest, list_offsets),
    case!(Metadata, MetadataRequest, metadata),
    case!(OffsetCommit, OffsetCommitRequest, offset_commit),
    case!(OffsetFetch, OffsetFetchRequest, offset_fetch),
    case!(FindCoordinator, FindCoordinatorRequest, find_coordinator),
    case!(JoinGroup, JoinGroupRequest, join_group),
    case!(Heartbeat, HeartbeatRequest, heartbeat),
    case!(LeaveGroup, LeaveGroupRequest, leave_group),
    case!(SyncGroup, SyncGroupRequest, sync_group),
    case!(DescribeGroups, DescribeGroupsRequest, describe_groups),
    case!(ListGroups, ListGroupsRequest, list_groups),
    case!(DeleteGroups, DeleteGroupsRequest, delete_groups),
    case!(OffsetDelete, OffsetDeleteRequest, offset_delete),
    case!(ApiVersions, ApiVersionsRequest, api_versions),
    case!(CreateTopics, CreateTopicsRequest, create_topics),
    case!(DeleteTopics, DeleteTopicsRequest, delete_topics),
    case!(CreatePartitions, CreatePartitionsRequest, create_partitions),
    case!(InitProducerId, InitProducerIdRequest, init_producer_id),
    case!(DescribeConfigs, DescribeConfigsRequest, describe_configs),
    case!(SaslHandshake, SaslHandshakeRequest, sasl_handshake),
    case!(SaslAuthenticate, SaslAuthenticateRequest, sasl_authenticate),
];

fn case(api: ApiKey) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.api == api)
        .unwrap_or_else(|| panic!("no test builder for {api:?}"))
}

/// Every (api, version) the schema table advertises.
fn advertised() -> Vec<(ApiKey, i16)> {
    ApiKey::iter()
        .filter_map(|api| schema(api).map(|(min, max, _)| (api, min, max)))
        .flat_map(|(api, min, max)| (min..=max).map(move |v| (api, v)))
        .collect()
}

fn schema_of(api: ApiKey) -> Schema {
    schema(api)
        .unwrap_or_else(|| panic!("{api:?} has no schema"))
        .2
}

// ---------------------------------------------------------------------------------------------
// 1. Schemas agree with the encoder.

#[test]
fn the_builders_cover_exactly_the_served_requests() {
    for api in ApiKey::iter() {
        let served = schema(api).is_some();
        let built = CASES.iter().any(|c| c.api == api);
        assert_eq!(
            served, built,
            "{api:?}: served by the door = {served}, has a test builder = {built}"
        );
    }
    for (api, v) in advertised() {
        let (min, max) = (api.valid_versions().min, api.valid_versions().max);
        assert!(
            (min..=max).contains(&v),
            "{api:?} v{v} is advertised but kafka-protocol only knows v{min}..=v{max}"
        );
    }
}

#[test]
fn every_schema_consumes_exactly_what_the_encoder_writes_at_every_version() {
    let mut wrong = Vec::new();
    for (api, v) in advertised() {
        let body = (case(api).body)(v);
        let walked = walk(&schema_of(api), v, &body);
        if walked != Ok(body.len()) {
            wrong.push(format!(
                "{api:?} v{v}: walk = {walked:?}, encoded body is {} bytes",
                body.len()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "schemas disagree with the encoder:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_agreement_check_catches_wrong_schemas() {
    // The agreement test has teeth: schemas with a field missing, a wrong first flexible
    // version, or a wrong field width all disagree with the encoder's bytes.
    const NO_INSTANCE_ID: &[Field] = &[f(Str), f(I32), f(Str)];
    let body = (case(ApiKey::Heartbeat).body)(3);
    let missing = Schema {
        flexible_from: 4,
        fields: NO_INSTANCE_ID,
    };
    assert_ne!(walk(&missing, 3, &body), Ok(body.len()), "a missing field");

    let body = (case(ApiKey::Heartbeat).body)(4);
    let rigid = Schema {
        flexible_from: 5,
        fields: HEARTBEAT,
    };
    assert_ne!(
        walk(&rigid, 4, &body),
        Ok(body.len()),
        "a wrong first flexible version"
    );

    const WIDE_PARTITION: &[Field] = &[f(I64), f(Ty::Bytes)];
    const WIDE_TOPIC: &[Field] = &[f(Str), f(Structs(WIDE_PARTITION))];
    const WIDE: &[Field] = &[f(Str), f(I16), f(I32), f(Structs(WIDE_TOPIC))];
    let body = (case(ApiKey::Produce).body)(8);
    let wide = Schema {
        flexible_from: 9,
        fields: WIDE,
    };
    assert_ne!(walk(&wide, 8, &body), Ok(body.len()), "a wrong field width");
}

#[test]
fn every_truncated_valid_body_is_refused() {
    for (api, v) in advertised() {
        let schema = schema_of(api);
        let body = (case(api).body)(v);
        for n in 0..body.len() {
            assert!(
                check(&schema, v, &body[..n]).is_err(),
                "{api:?} v{v} passes cut to {n} of {} bytes",
                body.len()
            );
        }
    }
}

#[test]
fn the_builders_populate_what_the_walker_checks() {
    // Guards the test itself: a builder that left arrays empty would make the agreement test
    // pass without exercising nested schemas. Each body must carry at least two elements.
    let body = (case(ApiKey::Produce).body)(12);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(
        text.matches("a record batch").count(),
        4,
        "two topics of two partitions each"
    );
    let body = (case(ApiKey::Fetch).body)(12);
    assert!(
        String::from_utf8_lossy(&body).contains("cluster"),
        "the known tagged field is encoded"
    );
    assert_eq!(
        String::from_utf8_lossy(&body).matches("tagged").count(),
        9,
        "request, 2 topics, 4 partitions, 2 forgotten"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Hostile lengths are refused before anything is allocated for them.

/// Checks `body` as `api` at `version`, expecting a refusal naming `expected`, and that the
/// refusal allocated no more than its message.
fn refused(api: ApiKey, version: i16, body: &[u8], expected: &str) -> String {
    let schema = schema_of(api);
    let (result, allocated) = allocated_by(|| check(&schema, version, body));
    let err = result.expect_err("a hostile body must be refused").0;
    assert!(
        err.contains(expected),
        "{api:?} v{version}: error {err:?} does not mention {expected:?}"
    );
    assert!(
        allocated < 1024,
        "refusing {api:?} v{version} allocated {allocated} bytes"
    );
    err
}

fn be32(n: i32) -> [u8; 4] {
    n.to_be_bytes()
}

#[test]
fn metadata_v1_declaring_i32_max_topics_is_refused() {
    let body = [&be32(i32::MAX)[..], &[0, 1, b'a']].concat();
    let err = refused(ApiKey::Metadata, 1, &body, "declares 2147483647 elements");
    assert!(err.contains("only 3 bytes remain"), "{err}");
}

#[test]
fn flexible_metadata_with_a_huge_compact_array_is_refused() {
    // Unsigned varint 0xffff_ffff: a compact array of 2^32 - 2 elements.
    let body = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x02, b'a', 0x00];
    refused(ApiKey::Metadata, 9, &body, "declares 4294967294 elements");
    refused(ApiKey::Metadata, 12, &body, "declares 4294967294 elements");
}

#[test]
fn produce_v7_declaring_a_billion_topics_is_refused() {
    let mut body = vec![0xff, 0xff]; // null transactional id
    body.extend_from_slice(&(-1i16).to_be_bytes()); // acks
    body.extend_from_slice(&be32(30_000)); // timeout
    body.extend_from_slice(&be32(1_000_000_000)); // topic_data count
    body.extend_from_slice(&[0, 1, b't', 0, 0, 0, 1]);
    refused(ApiKey::Produce, 7, &body, "declares 1000000000 elements");
}

#[test]
fn produce_records_longer_than_the_body_are_refused() {
    let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0, 100];
    body.extend_from_slice(&be32(1)); // one topic
    body.extend_from_slice(&[0, 1, b't']);
    body.extend_from_slice(&be32(1)); // one partition
    body.extend_from_slice(&be32(0)); // index
    body.extend_from_slice(&be32(i32::MAX)); // records length
    body.extend_from_slice(b"short");
    refused(
        ApiKey::Produce,
        7,
        &body,
        "bytes of 2147483647 bytes runs past the end",
    );
}

#[test]
fn a_negative_string_length_is_refused() {
    let body = [
        &(-5i16).to_be_bytes()[..],
        b"group",
        &be32(1),
        &[0, 1, b'm'],
    ]
    .concat();
    refused(ApiKey::Heartbeat, 0, &body, "negative length -5");
}

#[test]
fn a_negative_array_count_is_refused() {
    let body = [&be32(-2)[..], &[0, 0, 0, 0]].concat();
    refused(ApiKey::Metadata, 1, &body, "negative length -2");
}

#[test]
fn a_string_longer_than_the_body_is_refused() {
    let body = [&100i16.to_be_bytes()[..], b"abc"].concat();
    refused(
        ApiKey::Heartbeat,
        0,
        &body,
        "string of 100 bytes runs past the end",
    );
    // Flexible: compact string of length 0x7fff_fffe.
    let body = [0xff, 0xff, 0xff, 0xff, 0x07, b'a', b'b'];
    refused(ApiKey::Heartbeat, 4, &body, "runs past the end");
}

#[test]
fn an_int32_array_longer_than_the_body_is_refused() {
    // OffsetFetch v1: group "g", one topic "t" whose partition_indexes declares 3 int32s (12
    // bytes) with only 8 bytes left; a one-byte-per-element bound would have let it through.
    let mut body = vec![0, 1, b'g'];
    body.extend_from_slice(&be32(1));
    body.extend_from_slice(&[0, 1, b't']);
    body.extend_from_slice(&be32(3));
    body.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    refused(
        ApiKey::OffsetFetch,
        1,
        &body,
        "declares 3 elements but only 8 bytes remain",
    );
    // Flexible (v6): compact array of 0x0fff_ffff - 1 int32s.
    let body = [
        0x02, b'g', 0x02, 0x02, b't', 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 1, 0, 0,
    ];
    refused(ApiKey::OffsetFetch, 6, &body, "declares 268435454 elements");
}

/// A flexible Heartbeat v4 body up to, not including, its top-level tagged fields.
fn heartbeat_v4_fields() -> Vec<u8> {
    let mut body = vec![0x02, b'g']; // group_id "g"
    body.extend_from_slice(&be32(1)); // generation_id
    body.extend_from_slice(&[0x02, b'm']); // member_id "m"
    body.push(0x00); // null group_instance_id
    body
}

#[test]
fn the_heartbeat_v4_fixture_is_valid() {
    let mut body = heartbeat_v4_fields();
    body.push(0); // no tagged fields
    assert_eq!(
        walk(&schema_of(ApiKey::Heartbeat), 4, &body),
        Ok(body.len())
    );
    assert!(decodes::<HeartbeatRequest>(4, &body));
}

#[test]
fn a_tagged_field_section_declaring_a_huge_count_is_refused() {
    let body = [
        &heartbeat_v4_fields()[..],
        &[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 0],
    ]
    .concat();
    refused(
        ApiKey::Heartbeat,
        4,
        &body,
        "4294967295 tagged fields cannot fit in 2 bytes",
    );
}

#[test]
fn a_tagged_field_longer_than_the_body_is_refused() {
    let body = [&heartbeat_v4_fields()[..], &[1, 5, 50, b'x', b'y', b'z']].concat();
    refused(
        ApiKey::Heartbeat,
        4,
        &body,
        "tagged field of 50 bytes runs past the end",
    );
}

#[test]
fn truncated_and_overlong_varints_are_refused() {
    refused(ApiKey::Metadata, 9, &[0x80, 0x80], "truncated in a varint");
    refused(
        ApiKey::Metadata,
        9,
        &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
        "varint longer than 5 bytes",
    );
    refused(
        ApiKey::Heartbeat,
        0,
        &[0, 1, b'g', 0, 0],
        "int32 of 4 bytes runs past the end",
    );
    refused(ApiKey::Metadata, 1, &[0, 0], "truncated");
}

// ---------------------------------------------------------------------------------------------
// 3. Arbitrary bytes never panic the walker; whatever it passes the crate decodes without
// panicking and in memory bounded by the body's size.

/// Checks `body`; if it passes, decodes it with the crate and bounds what that allocates.
fn check_then_decode(api: ApiKey, version: i16, body: &[u8]) -> Result<(), TestCaseError> {
    if check(&schema_of(api), version, body).is_ok() {
        let (_, allocated) = allocated_by(|| (case(api).decodes)(version, body));
        let bound = 64 * 1024 + 1024 * body.len();
        prop_assert!(
            allocated <= bound,
            "{:?} v{} body of {} bytes passed check but decoding allocated {} bytes",
            api,
            version,
            body.len(),
            allocated
        );
    }
    Ok(())
}

fn api_version() -> impl Strategy<Value = (ApiKey, i16)> {
    prop::sample::select(advertised())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bodies_never_panic((api, version) in api_version(), body in prop::collection::vec(any::<u8>(), 0..512)) {
        check_then_decode(api, version, &body)?;
    }

    /// Random bytes rarely get past the first length, so also corrupt valid bodies: these pass
    /// `check` often and reach the decoder.
    #[test]
    fn corrupted_valid_bodies_never_panic(
        (api, version) in api_version(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut body = (case(api).body)(version);
        if !body.is_empty() {
            for (at, byte) in edits {
                let i = at.index(body.len());
                body[i] = byte;
            }
            if truncate {
                body.truncate(cut.index(body.len()));
            }
        }
        check_then_decode(api, version, &body)?;
    }
}
