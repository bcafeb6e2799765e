//! One client connection: reads size-prefixed request frames, checks and decodes them, and
//! writes the answers back in request order.
//!
//! A reader loop does each request's immediate part (for produce: the edge checks and the
//! log append, so entries keep the connection's order) and queues the rest as a future; a
//! writer awaits those futures one by one and writes their answers. A malformed or over-size
//! frame, an unknown API or an unsupported version closes the connection with a logged reason,
//! as Kafka's broker does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreatePartitionsRequest, CreateTopicsRequest, DeleteGroupsRequest,
    DeleteTopicsRequest, DescribeConfigsRequest, DescribeGroupsRequest, FetchRequest,
    FindCoordinatorRequest, HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest,
    LeaveGroupRequest, ListGroupsRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
    OffsetDeleteRequest, OffsetFetchRequest, ProduceRequest, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
    SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};
use tidemark_catalog::access::{Action, Principal};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::kafka::sasl::Sasl;
use crate::kafka::{Broker, bounds, code, fetch, groups, metadata, produce, topics};

/// Who is on the other end of a connection.
#[derive(Debug)]
pub(crate) struct Session {
    pub sasl: Sasl,
    /// PLAIN sends keys in the clear unless the connection is TLS: offered only on TLS
    /// connections and to loopback peers.
    pub plain_allowed: bool,
}

/// A request after its header: what the handlers see.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub api: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub client_id: String,
}

/// The rest of a request's handling; resolves to the encoded answer, or none (acks=0).
pub(crate) type Reply = Pin<Box<dyn Future<Output = Option<Bytes>> + Send>>;

pub(crate) fn ready(answer: Option<Bytes>) -> Reply {
    Box::pin(std::future::ready(answer))
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Close {
    #[error("client closed the connection")]
    Eof,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("no request for {} ms (kafka.idle_timeout_ms)", .0.as_millis())]
    Idle(std::time::Duration),
}

/// Serves one connection (its two halves: a TCP socket's, or a TLS stream's) until it closes.
pub(crate) async fn run(
    mut rd: impl AsyncRead + Unpin + Send,
    wr: impl AsyncWrite + Unpin + Send + 'static,
    plain_allowed: bool,
    broker: Arc<Broker>,
) -> Result<(), Close> {
    let mut session = Session {
        sasl: Sasl::default(),
        plain_allowed,
    };
    let (tx, rx) = mpsc::channel::<Reply>(broker.config.in_flight_per_connection.max(1));
    let writer = tokio::spawn(write_loop(wr, rx));
    let result = loop {
        let max = if session.sasl.principal().is_none()
            && broker.node.engine().read().catalog().access().required()
        {
            broker
                .config
                .unauthenticated_request_bytes_max
                .min(broker.config.request_bytes_max)
        } else {
            broker.config.request_bytes_max
        };
        let frame = match read_frame(&mut rd, max, &broker.config).await {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        let reply = match dispatch(&broker, frame, &mut session) {
            Ok(r) => r,
            Err(e) => break Err(e),
        };
        if tx.send(reply).await.is_err() {
            break Ok(());
        }
    };
    drop(tx);
    // Answers already promised still go out before the socket closes.
    let written = writer.await.unwrap_or(Ok(()));
    match (result, written) {
        (Err(Close::Eof), Ok(())) => Ok(()),
        (Err(e), _) => Err(e),
        (Ok(()), w) => w,
    }
}

async fn write_loop(
    mut wr: impl AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<Reply>,
) -> Result<(), Close> {
    while let Some(reply) = rx.recv().await {
        if let Some(bytes) = reply.await {
            wr.write_all(&bytes).await?;
            // A TLS stream may hold the answer in its buffer until told to send it.
            wr.flush().await?;
        }
    }
    wr.shutdown().await.ok();
    Ok(())
}

/// Reads one frame. The body grows as bytes arrive, so a client that declares a large frame
/// and sends nothing holds no memory. The first byte may take up to the idle timeout; the
/// rest of the frame must follow within the request read timeout.
async fn read_frame(
    rd: &mut (impl AsyncReadExt + Unpin),
    max: usize,
    config: &crate::kafka::KafkaConfig,
) -> Result<Bytes, Close> {
    let mut size = [0u8; 4];
    // One byte: a read cancelled by the timeout has consumed nothing.
    match tokio::time::timeout(config.idle_timeout, rd.read_exact(&mut size[..1])).await {
        Err(_) => return Err(Close::Idle(config.idle_timeout)),
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Close::Eof),
        Ok(Err(e)) => return Err(e.into()),
    }
    let rest = async {
        rd.read_exact(&mut size[1..]).await?;
        let size = i32::from_be_bytes(size);
        if size < 8 {
            return Err(Close::Protocol(format!(
                "frame size {size} is too small for a request header"
            )));
        }
        if size as usize > max {
            let why = if max < config.request_bytes_max {
                "limit before logging in (kafka.unauthenticated_request_bytes_max, Kafka's sasl.server.max.receive.size)"
            } else {
                "limit (kafka.request_bytes_max, Kafka's socket.request.max.bytes)"
            };
            return Err(Close::Protocol(format!(
                "request of {size} bytes is larger than the {max}-byte {why}"
            )));
        }
        let mut body = Vec::with_capacity((size as usize).min(64 * 1024));
        let n = rd.take(size as u64).read_to_end(&mut body).await?;
        if n < size as usize {
            return Err(Close::Protocol(format!(
                "connection closed after {n} of a {size}-byte request"
            )));
        }
        Ok(Bytes::from(body))
    };
    match tokio::time::timeout(config.request_read_timeout, rest).await {
        Ok(frame) => frame,
        Err(_) => Err(Close::Protocol(format!(
            "the request did not arrive within {} ms of its first byte (kafka.request_read_timeout_ms)",
            config.request_read_timeout.as_millis()
        ))),
    }
}

/// A frame after its header, version and bounds checks.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A request this door serves, at a version it serves, with every length in bounds.
    Request(Request, Bytes),
    /// ApiVersions at a version we do not serve: answered in v0 (KIP-511).
    UnsupportedApiVersions(Request),
}

/// Reads the request header and checks the API, its version and the body's lengths.
pub(crate) fn parse_frame(mut frame: Bytes) -> Result<Parsed, Close> {
    if frame.len() < 4 {
        return Err(Close::Protocol(format!(
            "a {}-byte frame is too small for a request header",
            frame.len()
        )));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api =
        ApiKey::try_from(key).map_err(|_| Close::Protocol(format!("unknown API key {key}")))?;
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(|e| Close::Protocol(format!("bad {api:?} request header: {e}")))?;
    let req = Request {
        api,
        version,
        correlation_id: header.correlation_id,
        client_id: header.client_id.map(|c| c.to_string()).unwrap_or_default(),
    };
    let Some((min, max, schema)) = bounds::schema(api) else {
        return Err(Close::Protocol(format!(
            "{api:?} requests are not supported by tidemark"
        )));
    };
    if !(min..=max).contains(&version) {
        if api == ApiKey::ApiVersions {
            return Ok(Parsed::UnsupportedApiVersions(req));
        }
        return Err(Close::Protocol(format!(
            "{api:?} v{version} is not supported; this broker serves v{min}-v{max}"
        )));
    }
    bounds::check(&schema, version, &frame).map_err(|e| {
        Close::Protocol(format!(
            "{api:?} v{version} request refused before decoding: {e}"
        ))
    })?;
    Ok(Parsed::Request(req, frame))
}

/// A decoded request body.
#[derive(Debug)]
pub(crate) enum Decoded {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    DescribeConfigs(DescribeConfigsRequest),
    Produce(ProduceRequest),
    InitProducerId(InitProducerIdRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    CreatePartitions(CreatePartitionsRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups(ListGroupsRequest),
    DescribeGroups(DescribeGroupsRequest),
    DeleteGroups(DeleteGroupsRequest),
    OffsetDelete(OffsetDeleteRequest),
    SaslHandshake(SaslHandshakeRequest),
    SaslAuthenticate(SaslAuthenticateRequest),
}

/// Decodes a body that passed [`parse_frame`].
pub(crate) fn decode_request(req: &Request, body: &mut Bytes) -> Result<Decoded, Close> {
    Ok(match req.api {
        ApiKey::ApiVersions => Decoded::ApiVersions(decode(req, body)?),
        ApiKey::Metadata => Decoded::Metadata(decode(req, body)?),
        ApiKey::DescribeConfigs => Decoded::DescribeConfigs(decode(req, body)?),
        ApiKey::Produce => Decoded::Produce(decode(req, body)?),
        ApiKey::InitProducerId => Decoded::InitProducerId(decode(req, body)?),
        ApiKey::Fetch => Decoded::Fetch(decode(req, body)?),
        ApiKey::ListOffsets => Decoded::ListOffsets(decode(req, body)?),
        ApiKey::CreateTopics => Decoded::CreateTopics(decode(req, body)?),
        ApiKey::DeleteTopics => Decoded::DeleteTopics(decode(req, body)?),
        ApiKey::CreatePartitions => Decoded::CreatePartitions(decode(req, body)?),
        ApiKey::FindCoordinator => Decoded::FindCoordinator(decode(req, body)?),
        ApiKey::JoinGroup => Decoded::JoinGroup(decode(req, body)?),
        ApiKey::SyncGroup => Decoded::SyncGroup(decode(req, body)?),
        ApiKey::Heartbeat => Decoded::Heartbeat(decode(req, body)?),
        ApiKey::LeaveGroup => Decoded::LeaveGroup(decode(req, body)?),
        ApiKey::OffsetCommit => Decoded::OffsetCommit(decode(req, body)?),
        ApiKey::OffsetFetch => Decoded::OffsetFetch(decode(req, body)?),
        ApiKey::ListGroups => Decoded::ListGroups(decode(req, body)?),
        ApiKey::DescribeGroups => Decoded::DescribeGroups(decode(req, body)?),
        ApiKey::DeleteGroups => Decoded::DeleteGroups(decode(req, body)?),
        ApiKey::OffsetDelete => Decoded::OffsetDelete(decode(req, body)?),
        ApiKey::SaslHandshake => Decoded::SaslHandshake(decode(req, body)?),
        ApiKey::SaslAuthenticate => Decoded::SaslAuthenticate(decode(req, body)?),
        other => {
            return Err(Close::Protocol(format!(
                "{other:?} requests are not supported by tidemark"
            )));
        }
    })
}

/// Whether `api` is part of logging in (allowed before it).
fn logs_in(api: ApiKey) -> bool {
    matches!(
        api,
        ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
    )
}

/// The actions a request needs beyond being logged in, any one of them; none: the request
/// answers per topic (Produce, topic changes).
///
/// Metadata and DescribeConfigs name every datasource and its spec, so they are for the keys
/// that use Kafka (publishers, raw readers, datasource managers): a merchant reader's key,
/// which sees only its tenant's rows over SQL, learns nothing here. InitProducerId logs a
/// command, so it needs the right to publish.
fn actions_for(api: ApiKey) -> &'static [Action] {
    match api {
        ApiKey::Fetch
        | ApiKey::ListOffsets
        | ApiKey::FindCoordinator
        | ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::ListGroups
        | ApiKey::DescribeGroups
        | ApiKey::DeleteGroups
        | ApiKey::OffsetDelete => &[Action::ReadRaw],
        ApiKey::Metadata | ApiKey::DescribeConfigs => {
            &[Action::Publish, Action::ReadRaw, Action::ManageDatasources]
        }
        ApiKey::InitProducerId => &[Action::Publish],
        _ => &[],
    }
}

fn dispatch(broker: &Arc<Broker>, frame: Bytes, session: &mut Session) -> Result<Reply, Close> {
    let (req, mut body) = match parse_frame(frame)? {
        Parsed::UnsupportedApiVersions(req) => {
            return Ok(ready(metadata::api_versions_unsupported(&req)));
        }
        Parsed::Request(req, body) => (req, body),
    };
    let b = broker.clone();
    b.node.metrics().count_kafka_request(api_name(req.api));
    let caller = match session.sasl.principal() {
        Some(p) => p.clone(),
        None if logs_in(req.api) => Principal::Anonymous,
        None if b.node.engine().read().catalog().access().required() => {
            return Err(Close::Protocol(format!(
                "{:?} before logging in: this node has API keys, so Kafka clients log in with SASL \
                 (security.protocol=SASL_PLAINTEXT, sasl.mechanism=SCRAM-SHA-256, username = the key id, \
                 password = the key; PLAIN over TLS (SASL_SSL) or on loopback)",
                req.api
            )));
        }
        None => Principal::Anonymous,
    };
    let needs = actions_for(req.api);
    if let Some(first) = needs.first()
        && !needs.iter().any(|a| caller.allows(*a))
    {
        let others = if needs.len() > 1 {
            " (or a key that reads the raw stream or manages datasources)"
        } else {
            ""
        };
        return Err(Close::Protocol(format!(
            "{:?} refused: {}{others}",
            req.api,
            caller.forbidden(*first)
        )));
    }
    Ok(match decode_request(&req, &mut body)? {
        Decoded::ApiVersions(r) => ready(metadata::api_versions(&req, &r)),
        Decoded::SaslHandshake(r) => ready(sasl_handshake(&req, &r, session)),
        Decoded::SaslAuthenticate(r) => sasl_authenticate(&b, &req, &r, session),
        Decoded::Metadata(r) => ready(metadata::metadata(&b, &req, r)),
        Decoded::DescribeConfigs(r) => ready(metadata::describe_configs(&b, &req, r)),
        Decoded::Produce(r) => produce::produce(&b, &req, r, &caller),
        Decoded::InitProducerId(r) => produce::init_producer_id(&b, &req, r),
        Decoded::Fetch(r) => fetch::fetch(b, req, r),
        Decoded::ListOffsets(r) => ready(fetch::list_offsets(&b, &req, r)),
        Decoded::CreateTopics(r) => topics::create_topics(b, req, r, caller),
        Decoded::DeleteTopics(r) => topics::delete_topics(b, req, r, caller),
        Decoded::CreatePartitions(r) => topics::create_partitions(b, req, r, caller),
        Decoded::FindCoordinator(r) => ready(groups::find_coordinator(&b, &req, r)),
        Decoded::JoinGroup(r) => groups::join_group(b, req, r),
        Decoded::SyncGroup(r) => groups::sync_group(b, req, r),
        Decoded::Heartbeat(r) => ready(groups::heartbeat(&b, &req, r)),
        Decoded::LeaveGroup(r) => ready(groups::leave_group(&b, &req, r)),
        Decoded::OffsetCommit(r) => groups::offset_commit(b, req, r),
        Decoded::OffsetFetch(r) => ready(groups::offset_fetch(&b, &req, r)),
        Decoded::ListGroups(r) => ready(groups::list_groups(&b, &req, r)),
        Decoded::DescribeGroups(r) => ready(groups::describe_groups(&b, &req, r)),
        Decoded::DeleteGroups(r) => groups::delete_groups(b, req, r),
        Decoded::OffsetDelete(r) => groups::offset_delete(b, req, r),
    })
}

fn sasl_handshake(req: &Request, r: &SaslHandshakeRequest, session: &mut Session) -> Option<Bytes> {
    let mut resp = SaslHandshakeResponse::default();
    resp.mechanisms = Sasl::mechanisms(session.plain_allowed)
        .into_iter()
        .map(StrBytes::from_static_str)
        .collect();
    if let Err(reason) = session
        .sasl
        .handshake(r.mechanism.as_str(), session.plain_allowed)
    {
        tracing::info!(%reason, "kafka SASL handshake refused");
        resp.error_code = code::UNSUPPORTED_SASL_MECHANISM;
    }
    encode(req, &resp)
}

/// One login message. A refusal waits the failed-login delay before it is answered (the
/// connection answers in order, so nothing else of this client's goes out meanwhile).
fn sasl_authenticate(
    b: &Arc<Broker>,
    req: &Request,
    r: &SaslAuthenticateRequest,
    session: &mut Session,
) -> Reply {
    let mut resp = SaslAuthenticateResponse::default();
    let nonce = {
        let mut bytes = [0u8; 18];
        match getrandom::fill(&mut bytes) {
            Ok(()) => tidemark_catalog::access::hex(&bytes),
            Err(e) => {
                resp.error_code = code::SASL_AUTHENTICATION_FAILED;
                resp.error_message = Some(StrBytes::from_string(format!(
                    "no random bits from the OS: {e}"
                )));
                return ready(encode(req, &resp));
            }
        }
    };
    let step = {
        let engine = b.node.engine();
        let e = engine.read();
        session
            .sasl
            .authenticate(e.catalog().access(), &r.auth_bytes, &nonce)
    };
    match step {
        Ok(answer) => {
            resp.auth_bytes = Bytes::from(answer);
            ready(encode(req, &resp))
        }
        Err(reason) => {
            b.node
                .metrics()
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(%reason, "kafka SASL login refused");
            resp.error_code = code::SASL_AUTHENTICATION_FAILED;
            resp.error_message = Some(StrBytes::from_string(reason));
            let answer = encode(req, &resp);
            let delay = b.config.failed_login_delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                answer
            })
        }
    }
}

fn decode<T: Decodable>(req: &Request, body: &mut Bytes) -> Result<T, Close> {
    T::decode(body, req.version).map_err(|e| {
        Close::Protocol(format!(
            "malformed {:?} v{} request: {e}",
            req.api, req.version
        ))
    })
}

fn api_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::Metadata => "Metadata",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::Produce => "Produce",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        _ => "other",
    }
}

/// Encodes an answer with its size prefix and response header. An answer the crate cannot
/// encode at this version is a bug on our side: it is logged and the client gets no answer
/// (it times out and retries), rather than a malformed frame.
pub(crate) fn encode<R: Encodable + HeaderVersion>(req: &Request, resp: &R) -> Option<Bytes> {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(req.correlation_id);
    let encoded = header
        .encode(&mut buf, R::header_version(req.version))
        .and_then(|()| resp.encode(&mut buf, req.version));
    if let Err(e) = encoded {
        tracing::error!(api = ?req.api, version = req.version, error = %e, "cannot encode a Kafka response");
        return None;
    }
    let size = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&size.to_be_bytes());
    Some(buf.freeze())
}

#[cfg(test)]
mod tests {
    use tidemark_catalog::access::Role;

    use super::*;

    /// A merchant reader's key may log in, but names no topic and logs nothing through Kafka.
    #[test]
    fn a_merchant_reader_gets_no_kafka_request_past_login() {
        let may = |role: Role, api: ApiKey| {
            let needs = actions_for(api);
            needs.is_empty() || needs.iter().any(|a| role.allows(*a))
        };
        for api in [
            ApiKey::Metadata,
            ApiKey::DescribeConfigs,
            ApiKey::InitProducerId,
            ApiKey::ListOffsets,
            ApiKey::Fetch,
        ] {
            assert!(!may(Role::MerchantReader, api), "{api:?}");
        }
        assert!(
            may(Role::Publisher, ApiKey::Metadata) && may(Role::Publisher, ApiKey::InitProducerId)
        );
        assert!(
            may(Role::Analyst, ApiKey::Metadata) && !may(Role::Analyst, ApiKey::InitProducerId)
        );
        assert!(
            logs_in(ApiKey::SaslAuthenticate) && actions_for(ApiKey::SaslAuthenticate).is_empty()
        );
    }
}
