//! Three Raft nodes in one process, connected by an in-memory network: commands written on
//! the leader are replicated, applied to three engines, and the replicas agree byte for byte
//! (same catalog, same counts, identical segment files). The tonic network and the real
//! binary's cluster come next; this checks the replicated apply path itself.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::ReplicationClosed;
use openraft::errors::{NetworkError, RPCError, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{BasicNode, Config, Raft};
use tidemark_catalog::spec::DEMO_BEACONS_SPEC;
use tidemark_catalog::{CatalogCommand, DatasourceSpec};
use tidemark_raft::log_store::LogStore;
use tidemark_raft::state_machine::EngineStateMachine;
use tidemark_raft::{LogCommand, NodeId, TypeConfig};
use tidemark_storage::engine::command::{
    Command, EventsCommand, EventsHeader, EventsPart, PersistCommand, PersistReason,
};
use tidemark_storage::engine::{Applied, Engine, EngineConfig, SharedEngine};
use tidemark_storage::raw::record_batch::{Record, encode};

type Node = Raft<TypeConfig, EngineStateMachine>;

#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Node>>>,
}

impl Router {
    fn get(&self, id: NodeId) -> Option<Node> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }
}

struct Conn {
    router: Router,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Conn;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Conn {
        Conn { router: self.clone(), target }
    }
}

impl Conn {
    fn node(&self) -> Result<Node, Unreachable<TypeConfig>> {
        self.router.get(self.target).ok_or_else(|| Unreachable::from_string(format!("node {} is down", self.target)))
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
        node.append_entries(rpc).await.map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let node = self.node()?;
        node.vote(rpc).await.map_err(|e| RPCError::Network(NetworkError::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let node = self.node()?;
        node.install_full_snapshot(vote, snapshot).await.map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}

struct Member {
    raft: Node,
    engine: SharedEngine,
}

async fn start(router: &Router, id: NodeId, dir: &Path) -> Member {
    let log = LogStore::open(&dir.join("raft")).expect("log store");
    let config = EngineConfig::new(dir.join("data"));
    let (engine, _) = Engine::open(config.clone()).expect("engine");
    let engine = SharedEngine(Arc::new(RwLock::new(engine)));
    let sm = EngineStateMachine::new(engine.clone(), config).expect("state machine");
    let raft_config =
        Config { heartbeat_interval: 100, election_timeout_min: 300, election_timeout_max: 600, ..Config::default() };
    let raft =
        Raft::new(id, Arc::new(raft_config.validate().expect("config")), router.clone(), log, sm).await.expect("raft");
    router.nodes.lock().unwrap_or_else(|p| p.into_inner()).insert(id, raft.clone());
    Member { raft, engine }
}

fn command(cmd: &Command, writer_time_ms: i64) -> LogCommand {
    LogCommand { writer_time_ms, kind: cmd.kind(), payload: cmd.encode() }
}

fn events(i: u64, start_ms: i64) -> Command {
    let records: Vec<Record> = (0..50)
        .map(|j| Record {
            timestamp_ms: 0,
            key: None,
            value: Some(
                format!(
                    r#"{{"ts": {}, "merchant_id": "m{}", "user_id": "u{}", "latency_ms": {}, "amount": {}}}"#,
                    start_ms + (i * 50 + j) as i64 * 1000,
                    j % 7,
                    j % 13,
                    j as f64 * 1.5,
                    j
                )
                .into_bytes(),
            ),
            headers: vec![],
        })
        .collect();
    let batch = encode(&records);
    Command::Events(EventsCommand {
        header: EventsHeader {
            datasource: "beacons".into(),
            publisher: None,
            idempotency_key: None,
            body_hash: 0,
            parts: vec![EventsPart {
                partition: (i % 3) as u32,
                lines: vec![],
                verdicts: vec![],
                batch_len: batch.len() as u32,
            }],
            future_ms_max: None,
            decompressed_bytes_max: None,
        },
        batches: vec![batch],
    })
}

async fn write(leader: &Node, cmd: &Command, writer_time_ms: i64) -> Applied {
    let resp = leader.client_write(command(cmd, writer_time_ms)).await.expect("client_write");
    match resp.data.applied {
        Some(Ok(applied)) => applied,
        other => panic!("{cmd:?} answered {other:?}"),
    }
}

fn segment_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.join("data")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains("segments") {
                let rel = p.strip_prefix(dir).map(|r| r.display().to_string()).unwrap_or_default();
                out.insert(rel, std::fs::read(&p).expect("segment"));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_apply_the_same_log_and_agree_byte_for_byte() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("tempdir")).collect();
    let router = Router::default();
    let mut members = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        members.push(start(&router, i as NodeId + 1, d.path()).await);
    }
    let voters: BTreeMap<NodeId, BasicNode> = (1..=3).map(|id| (id, BasicNode::new(format!("node-{id}")))).collect();
    members[0].raft.initialize(voters).await.expect("initialize");
    let leader_id = members[0].raft.wait(Some(Duration::from_secs(10))).current_leader(1, "leader").await.map(|_| 1);
    assert!(leader_id.is_ok(), "node 1 did not become leader");
    let leader = members[0].raft.clone();

    let hour = 1_790_000_000_000 / 3_600_000 * 3_600_000;
    let spec = DatasourceSpec::from_json(DEMO_BEACONS_SPEC).expect("spec");
    assert!(matches!(
        write(&leader, &Command::Catalog(CatalogCommand::CreateDatasource { spec }), hour).await,
        Applied::Catalog(_)
    ));
    for i in 0..40 {
        assert!(matches!(write(&leader, &events(i, hour), hour + 1000).await, Applied::Events(_)));
    }
    // Persist the interval: the leader decides, every replica writes the segment at that index.
    let id = members[0].engine.read().catalog().get("beacons").map(|e| e.id).expect("datasource id");
    let persist = Command::Persist(PersistCommand {
        datasource: id,
        interval_start_ms: hour,
        late: false,
        reason: PersistReason::IntervalClosed,
    });
    write(&leader, &persist, hour + 4_000_000).await;

    // Every replica applies up to the leader's last index.
    let last = leader.metrics().borrow_watched().last_applied.clone();
    for m in &members {
        m.raft
            .wait(Some(Duration::from_secs(10)))
            .applied_index_at_least(last.as_ref().map(|l| l.index), "caught up")
            .await
            .expect("replica caught up");
        m.engine.write().publish_persisted(true).expect("segments written");
    }
    let totals: Vec<_> = members.iter().map(|m| m.engine.read().totals()).collect();
    assert_eq!(totals[0].0, 2000, "events ingested on the leader");
    assert!(totals.iter().all(|t| *t == totals[0]), "replicas agree on counts: {totals:?}");
    let files: Vec<_> = dirs.iter().map(|d| segment_files(d.path())).collect();
    assert!(!files[0].is_empty(), "a segment was written");
    assert_eq!(files[0], files[1], "replica 2 holds byte-identical segments");
    assert_eq!(files[0], files[2], "replica 3 holds byte-identical segments");
    for m in &members {
        m.raft.shutdown().await.expect("shutdown");
    }
}
