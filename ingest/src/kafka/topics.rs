//! CreateTopics, DeleteTopics and CreatePartitions, mapped to datasource catalog commands.
//!
//! A topic is a datasource, and a datasource needs a spec (timestamp field, dimensions,
//! metrics), so CreateTopics takes it as the topic config `tidemark.spec` (JSON); a topic
//! without one is refused with a message that says so. Deleting a topic deletes the datasource
//! with the usual grace period; adding partitions grows the spec's partition count.

use std::sync::Arc;

use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse,
    DeleteTopicsRequest, DeleteTopicsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tidemark_catalog::access::{Action, Principal};
use tidemark_catalog::{CatalogCommand, DatasourceSpec, Period};

use crate::datasources::{DELETE_GRACE_DEFAULT, apply};
use crate::error::Error;
use crate::kafka::connection::{Reply, Request, encode};
use crate::kafka::metadata::{SPEC_CONFIG, topic_id};
use crate::kafka::{Broker, code};
use crate::node::Node;

type Refusal = (i16, String);

fn catalog_error(e: &Error) -> Refusal {
    let code = match e {
        Error::Conflict(_) => code::TOPIC_ALREADY_EXISTS,
        Error::NotFound(_) => code::UNKNOWN_TOPIC_OR_PARTITION,
        Error::Catalog(c) => match c.status_class() {
            tidemark_catalog::StatusClass::AlreadyExists => code::TOPIC_ALREADY_EXISTS,
            tidemark_catalog::StatusClass::NotFound => code::UNKNOWN_TOPIC_OR_PARTITION,
            _ => code::INVALID_CONFIG,
        },
        Error::BadRequest(_) => code::INVALID_CONFIG,
        // Admin clients send topic changes to the controller: the leader.
        Error::Replication(
            tidemark_raft::Error::NotLeader { .. } | tidemark_raft::Error::OutcomeUnknown,
        ) => code::NOT_CONTROLLER,
        _ => code::KAFKA_STORAGE_ERROR,
    };
    (code, e.to_string())
}

/// Checks a catalog command against the current catalog, then (unless only validating) logs it
/// for `caller`, who needs the right to manage datasources.
async fn run(
    node: &Node,
    cmd: CatalogCommand,
    validate_only: bool,
    caller: &Principal,
) -> Result<(), Refusal> {
    if !caller.allows(Action::ManageDatasources) {
        return Err((
            code::TOPIC_AUTHORIZATION_FAILED,
            caller.forbidden(Action::ManageDatasources),
        ));
    }
    let checked = node.engine().read().catalog().check(&cmd);
    checked.map_err(|e| catalog_error(&Error::Catalog(e)))?;
    if validate_only {
        return Ok(());
    }
    apply(node, cmd, &caller.actor())
        .await
        .map(|_| ())
        .map_err(|e| catalog_error(&e))
}

pub(crate) fn create_topics(
    b: Arc<Broker>,
    req: Request,
    r: CreateTopicsRequest,
    caller: Principal,
) -> Reply {
    Box::pin(async move {
        let mut resp = CreateTopicsResponse::default();
        for topic in r.topics {
            let name = topic.name.0.to_string();
            let mut result = CreatableTopicResult::default();
            result.name = topic.name.clone();
            let outcome = create_one(&b, &name, &topic, r.validate_only, &caller).await;
            match outcome {
                Ok(partitions) => {
                    if req.version >= 5 {
                        result.num_partitions = partitions;
                        result.replication_factor = 1;
                    }
                    if req.version >= 7
                        && let Some(entry) = b.node.engine().read().catalog().get(&name)
                    {
                        result.topic_id = topic_id(entry);
                    }
                }
                Err((code, message)) => {
                    result.error_code = code;
                    result.error_message = Some(StrBytes::from_string(message));
                    if req.version >= 5 {
                        result.num_partitions = -1;
                        result.replication_factor = -1;
                    }
                }
            }
            resp.topics.push(result);
        }
        encode(&req, &resp)
    })
}

async fn create_one(
    b: &Broker,
    name: &str,
    topic: &kafka_protocol::messages::create_topics_request::CreatableTopic,
    validate_only: bool,
    caller: &Principal,
) -> Result<i32, Refusal> {
    let Some(spec_text) = topic
        .configs
        .iter()
        .find(|c| c.name.as_str() == SPEC_CONFIG)
        .and_then(|c| c.value.as_ref())
    else {
        return Err((
            code::INVALID_CONFIG,
            format!(
                "a tidemark topic is a datasource and needs its spec: pass the datasource spec JSON as topic config {SPEC_CONFIG:?} \
                 (e.g. kafka-topics --create --topic {name} --config {SPEC_CONFIG}='{{...}}'), or create it with `tidemark datasource create` / POST /v1/datasources"
            ),
        ));
    };
    let mut spec = DatasourceSpec::from_json(spec_text.as_str())
        .map_err(|e| (code::INVALID_CONFIG, e.to_string()))?;
    if spec.name != name {
        return Err((
            code::INVALID_CONFIG,
            format!(
                "the spec in {SPEC_CONFIG} names {:?} but the topic is {name:?}; they must match",
                spec.name
            ),
        ));
    }
    if topic.replication_factor > 1 {
        return Err((
            code::INVALID_REPLICATION_FACTOR,
            format!(
                "replication factor {} needs a cluster; this node runs alone (use -1 or 1)",
                topic.replication_factor
            ),
        ));
    }
    if !topic.assignments.is_empty() {
        return Err((
            code::INVALID_REQUEST,
            "manual replica assignments are not supported; omit them".into(),
        ));
    }
    if topic.num_partitions > 0 {
        spec.partitions = topic.num_partitions as u32;
    } else if topic.num_partitions != -1 {
        return Err((
            code::INVALID_PARTITIONS,
            format!(
                "{} partitions: use -1 or a positive count",
                topic.num_partitions
            ),
        ));
    }
    let partitions = spec.partitions as i32;
    run(
        &b.node,
        CatalogCommand::CreateDatasource { spec },
        validate_only,
        caller,
    )
    .await?;
    Ok(partitions)
}

pub(crate) fn delete_topics(
    b: Arc<Broker>,
    req: Request,
    r: DeleteTopicsRequest,
    caller: Principal,
) -> Reply {
    Box::pin(async move {
        let mut resp = DeleteTopicsResponse::default();
        let mut targets: Vec<(Option<String>, uuid::Uuid)> = r
            .topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect();
        targets.extend(
            r.topics
                .iter()
                .map(|t| (t.name.as_ref().map(|n| n.0.to_string()), t.topic_id)),
        );
        let grace = Period::parse(DELETE_GRACE_DEFAULT)
            .map(|p| p.millis())
            .unwrap_or(3_600_000);
        for (name, id) in targets {
            let name = name.or_else(|| {
                let engine = b.node.engine();
                let e = engine.read();
                e.catalog()
                    .datasources()
                    .find(|d| topic_id(d) == id)
                    .map(|d| d.current().name.clone())
            });
            let mut result = DeletableTopicResult::default();
            if req.version >= 6 {
                result.topic_id = id;
            }
            match name {
                None => {
                    result.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                    if req.version >= 5 {
                        result.error_message =
                            Some(StrBytes::from_string(format!("no topic has id {id}")));
                    }
                }
                Some(name) => {
                    result.name = Some(TopicName(StrBytes::from_string(name.clone())));
                    let cmd = CatalogCommand::DeleteDatasource {
                        name,
                        grace_ms: grace,
                    };
                    if let Err((code, message)) = run(&b.node, cmd, false, &caller).await {
                        result.error_code = code;
                        if req.version >= 5 {
                            result.error_message = Some(StrBytes::from_string(message));
                        }
                    }
                }
            }
            resp.responses.push(result);
        }
        encode(&req, &resp)
    })
}

pub(crate) fn create_partitions(
    b: Arc<Broker>,
    req: Request,
    r: CreatePartitionsRequest,
    caller: Principal,
) -> Reply {
    Box::pin(async move {
        let mut resp = CreatePartitionsResponse::default();
        for topic in r.topics {
            let name = topic.name.0.to_string();
            let mut result = CreatePartitionsTopicResult::default();
            result.name = topic.name.clone();
            let current = b
                .node
                .engine()
                .read()
                .catalog()
                .get(&name)
                .map(|e| e.current().clone());
            let outcome = match current {
                None => Err((
                    code::UNKNOWN_TOPIC_OR_PARTITION,
                    format!("topic {name:?} does not exist"),
                )),
                Some(_) if topic.assignments.as_ref().is_some_and(|a| !a.is_empty()) => Err((
                    code::INVALID_REQUEST,
                    "manual replica assignments are not supported; omit them".into(),
                )),
                Some(spec) if topic.count <= spec.partitions as i32 => Err((
                    code::INVALID_PARTITIONS,
                    format!(
                        "topic {name:?} has {} partitions; partitions can only grow",
                        spec.partitions
                    ),
                )),
                Some(mut spec) => {
                    spec.partitions = topic.count as u32;
                    run(
                        &b.node,
                        CatalogCommand::UpdateDatasource { spec },
                        r.validate_only,
                        &caller,
                    )
                    .await
                }
            };
            if let Err((code, message)) = outcome {
                result.error_code = code;
                result.error_message = Some(StrBytes::from_string(message));
            }
            resp.results.push(result);
        }
        encode(&req, &resp)
    })
}
