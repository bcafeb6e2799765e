//! Raft RPC between nodes over tonic: the client side (openraft's `RaftNetworkV2`) and the
//! server side (`raft_service`, a tonic service that hands requests to the local Raft).
//!
//! Each RPC carries one openraft message as MessagePack with named fields inside a protobuf
//! `RaftMessage` (`proto/raft.proto`); the answer carries the `Result` of handling it, so a
//! remote Raft error arrives as itself. Connections are made lazily and re-made after a
//! failure: a peer that is down is `Unreachable`, and openraft backs off.

use std::io;
use std::time::Duration;

use openraft::Raft;
use openraft::errors::{
    NetworkError, RPCError, RaftError, ReplicationClosed, StreamingError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tidemark_proto::raft::RaftMessage;
use tidemark_proto::raft::raft_service_client::RaftServiceClient;
use tidemark_proto::raft::raft_service_server::{RaftService, RaftServiceServer};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use tidemark_engine::SharedEngine;

use crate::cluster_secret::{Check, ClusterSecret, Present};
use crate::faults::{Fault, Faults};
use crate::scrubber::{self, ReadDataFile};
use crate::snapshot::{Manifest, ReadFile, SnapshotTransfer};
use crate::state_machine::EngineStateMachine;
use crate::types::{Member, NodeId, TypeConfig};

/// Bounds one message; the largest is a snapshot's checkpoint and manifest (data files are
/// fetched apart, in chunks).
const MESSAGE_BYTES_MAX: usize = 256 << 20;

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    rmp_serde::to_vec_named(v).map_err(io::Error::other)
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    rmp_serde::from_slice(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A client of a peer's Raft RPC: every call carries the cluster secret.
pub(crate) type PeerClient = RaftServiceClient<InterceptedService<Channel, Present>>;

/// Makes connections to peers at their `Member::raft` address. With `faults` (tests only),
/// every message first consults the fault rules.
#[derive(Debug, Clone, Default)]
pub struct GrpcNetwork {
    pub faults: Option<Faults>,
    /// Mutual TLS to peers, when the cluster has a CA.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// Presented on every RPC; peers refuse RPCs without it.
    pub secret: Option<ClusterSecret>,
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> GrpcConnection {
        GrpcConnection {
            target,
            addr: node.raft.clone(),
            client: None,
            faults: self.faults.clone(),
            tls: self.tls.clone(),
            secret: self.secret.clone(),
        }
    }
}

#[derive(Debug)]
pub struct GrpcConnection {
    target: NodeId,
    addr: String,
    client: Option<PeerClient>,
    faults: Option<Faults>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    secret: Option<ClusterSecret>,
}

/// The snapshot message: the leader's vote and the snapshot (checkpoint and manifest).
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotMessage {
    vote: VoteOf<TypeConfig>,
    meta: SnapshotMetaOf<TypeConfig>,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

impl GrpcConnection {
    async fn client(&mut self) -> Result<PeerClient, Unreachable<TypeConfig>> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        // A peer that is down, paused or still starting must fail fast, not hang a replication
        // stream: openraft leaves transport timeouts to the network.
        let endpoint = crate::peer_tls::endpoint(&self.addr, self.tls.as_ref())
            .map_err(|e| Unreachable::new(&e))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await.map_err(|e| Unreachable::new(&e))?;
        let client = RaftServiceClient::with_interceptor(channel, Present(self.secret.clone()))
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Sends one message and decodes the peer's `Result`. A transport failure drops the
    /// connection so the next call reconnects.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        method: Method,
        req: &Req,
        ttl: Duration,
    ) -> Result<Result<Resp, RaftError<TypeConfig>>, RPCError<TypeConfig>> {
        match tokio::time::timeout(ttl, self.call_once(method, req)).await {
            Ok(answer) => answer,
            Err(_) => {
                // The connection may be stuck (a paused or half-dead peer): start afresh.
                self.client = None;
                let e = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "raft rpc to node {} at {} timed out after {ttl:?}",
                        self.target, self.addr
                    ),
                );
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
        }
    }

    async fn call_once<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        method: Method,
        req: &Req,
    ) -> Result<Result<Resp, RaftError<TypeConfig>>, RPCError<TypeConfig>> {
        if let Some(faults) = &self.faults {
            let fault = faults.for_message(self.target);
            let injected = |what: &str| {
                io::Error::other(format!("test fault: {what} to node {}", self.target))
            };
            match fault {
                Fault::Unreachable => {
                    return Err(RPCError::Unreachable(Unreachable::new(&injected(
                        "partitioned",
                    ))));
                }
                Fault::Dropped => {
                    return Err(RPCError::Network(NetworkError::new(&injected(
                        "message dropped",
                    ))));
                }
                Fault::Delayed(d) => tokio::time::sleep(d).await,
                Fault::None => {}
            }
        }
        let body = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.client().await?;
        let msg = RaftMessage { body };
        let answer = match method {
            Method::AppendEntries => client.append_entries(msg).await,
            Method::Vote => client.vote(msg).await,
            Method::PreVote => client.pre_vote(msg).await,
            Method::InstallSnapshot => client.install_snapshot(msg).await,
            Method::TransferLeader => client.transfer_leader(msg).await,
        };
        let answer = match answer {
            Ok(a) => a.into_inner(),
            Err(status) => {
                self.client = None;
                let e = io::Error::other(format!(
                    "raft rpc to node {} at {}: {status}",
                    self.target, self.addr
                ));
                return Err(if status.code() == tonic::Code::Unavailable {
                    RPCError::Unreachable(Unreachable::new(&e))
                } else {
                    RPCError::Network(NetworkError::new(&e))
                });
            }
        };
        decode(&answer.body).map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    PreVote,
    InstallSnapshot,
    TransferLeader,
}

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long one RPC may take: openraft's soft limit, never below what a loaded machine needs
/// to answer a heartbeat (its limit is the heartbeat interval).
fn ttl(option: &RPCOption) -> Duration {
    option.soft_ttl().max(Duration::from_millis(1000))
}

fn remote(e: RaftError<TypeConfig>) -> RPCError<TypeConfig> {
    let e = io::Error::other(e.to_string());
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetworkV2<TypeConfig> for GrpcConnection {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Method::AppendEntries, &rpc, ttl(&option))
            .await?
            .map_err(remote)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Method::Vote, &rpc, ttl(&option))
            .await?
            .map_err(remote)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Method::PreVote, &rpc, ttl(&option))
            .await?
            .map_err(remote)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Method::TransferLeader, &req, ttl(&option))
            .await?
            .map_err(remote)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let msg = SnapshotMessage {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        // The receiver stages the data files before it answers (up to STAGE_WAIT, then it
        // asks for the snapshot again while its fetch goes on).
        let ttl = option.soft_ttl().max(STAGE_WAIT + Duration::from_secs(30));
        match self.call(Method::InstallSnapshot, &msg, ttl).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(StreamingError::Network(NetworkError::new(
                &io::Error::other(e.to_string()),
            ))),
            Err(RPCError::Unreachable(u)) => Err(StreamingError::Unreachable(u)),
            Err(e) => Err(StreamingError::Network(NetworkError::new(
                &io::Error::other(e.to_string()),
            ))),
        }
    }
}

/// How long a snapshot RPC waits for the data files to be staged before it answers
/// "not yet" (the fetch goes on, and the leader's next attempt joins it).
const STAGE_WAIT: Duration = Duration::from_secs(40);

/// The server side: hands each RPC to the local Raft and answers with its `Result`.
#[derive(Debug, Clone)]
pub struct RaftRpc {
    raft: Raft<TypeConfig, EngineStateMachine>,
    snapshots: std::sync::Arc<SnapshotTransfer>,
    engine: SharedEngine,
    node_id: NodeId,
}

/// The tonic service for this node's Raft, to add to the node's gRPC server. It refuses every
/// RPC that does not carry `secret`.
pub fn raft_service(
    raft: Raft<TypeConfig, EngineStateMachine>,
    snapshots: std::sync::Arc<SnapshotTransfer>,
    engine: SharedEngine,
    node_id: NodeId,
    secret: &ClusterSecret,
) -> InterceptedService<RaftServiceServer<RaftRpc>, Check> {
    let server = RaftServiceServer::new(RaftRpc {
        raft,
        snapshots,
        engine,
        node_id,
    })
    .max_decoding_message_size(MESSAGE_BYTES_MAX)
    .max_encoding_message_size(MESSAGE_BYTES_MAX);
    InterceptedService::new(server, secret.checker())
}

fn bad_request(e: io::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

fn answer<T: Serialize>(result: &T) -> Result<Response<RaftMessage>, Status> {
    let body = encode(result).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { body }))
}

#[tonic::async_trait]
impl RaftService for RaftRpc {
    async fn read_snapshot_file(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let r: ReadFile = decode(&req.into_inner().body).map_err(bad_request)?;
        let snapshots = self.snapshots.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            snapshots.read(&r.snapshot, r.index, r.offset, r.max)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map(serde_bytes::ByteBuf::from);
        answer(&chunk)
    }

    async fn read_data_file(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let r: ReadDataFile = decode(&req.into_inner().body).map_err(bad_request)?;
        let (engine, node_id) = (self.engine.clone(), self.node_id);
        let chunk =
            tokio::task::spawn_blocking(move || scrubber::serve_chunk(&engine, node_id, &r))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map(serde_bytes::ByteBuf::from);
        answer(&chunk)
    }

    async fn append_entries(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> =
            decode(&req.into_inner().body).map_err(bad_request)?;
        answer(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(&req.into_inner().body).map_err(bad_request)?;
        answer(&self.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(&req.into_inner().body).map_err(bad_request)?;
        answer(&self.raft.pre_vote(rpc).await)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> =
            decode(&req.into_inner().body).map_err(bad_request)?;
        let result = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(RaftError::<TypeConfig>::Fatal);
        answer(&result)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        let msg: SnapshotMessage = decode(&req.into_inner().body).map_err(bad_request)?;
        let manifest = std::sync::Arc::new(Manifest::decode(&msg.data).map_err(bad_request)?);
        let members = msg
            .meta
            .last_membership
            .membership()
            .nodes()
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        let total = manifest.total_bytes();
        match tokio::time::timeout(STAGE_WAIT, self.snapshots.stage(manifest.clone(), members))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Status::unavailable(format!(
                    "snapshot {}: {e}",
                    manifest.id
                )));
            }
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "snapshot {}: still fetching its data files ({total} bytes in all); send it again",
                    manifest.id
                )));
            }
        }
        let snapshot = openraft::storage::Snapshot {
            meta: msg.meta,
            snapshot: msg.data,
        };
        let result = self
            .raft
            .install_full_snapshot(msg.vote, snapshot)
            .await
            .map_err(RaftError::<TypeConfig>::Fatal);
        answer(&result)
    }
}
