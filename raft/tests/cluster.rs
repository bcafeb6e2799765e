//! Three Raft nodes in one process over an in-memory network: commands written on the leader
//! are replicated and applied to three engines, which agree byte for byte.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use tidemark_raft::Member;
use tidemark_raft::{NodeId, TypeConfig};

use common::Node;

#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Node>>>,
}

struct Conn {
    router: Router,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &Member) -> Conn {
        Conn {
            router: self.clone(),
            target,
        }
    }
}

impl Conn {
    fn node(&self) -> Result<Node, Unreachable<TypeConfig>> {
        let nodes = self.router.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes
            .get(&self.target)
            .cloned()
            .ok_or_else(|| Unreachable::from_string(format!("node {} is down", self.target)))
    }
}

impl RaftNetworkV2<TypeConfig> for Conn {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let node = self.node()?;
        node.append_entries(rpc)
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let node = self.node()?;
        node.vote(rpc)
            .await
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let node = self.node()?;
        node.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_apply_the_same_log_and_agree_byte_for_byte() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let router = Router::default();
    let mut members = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let id = i as NodeId + 1;
        let m = common::start(id, d.path(), router.clone()).await;
        router
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, m.raft.clone());
        members.push(m);
    }
    let addrs: Vec<String> = (1..=3).map(|i| format!("node-{i}")).collect();
    common::write_and_compare(&members, &addrs, &dirs).await;
}
