//! What the cluster tests share: a node's stores, the commands they write, and the checks
//! that replicas agree.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{Config, Raft, RaftNetworkFactory};
use tidemark_catalog::spec::DEMO_BEACONS_SPEC;
use tidemark_catalog::{CatalogCommand, DatasourceSpec};
use tidemark_engine::command::{
    Command, EventsCommand, EventsHeader, EventsPart, PersistCommand, PersistReason,
};
use tidemark_engine::{Applied, Engine, EngineConfig, SharedEngine};
use tidemark_raft::log_store::LogStore;
use tidemark_raft::snapshot::SnapshotTransfer;
use tidemark_raft::state_machine::EngineStateMachine;
use tidemark_raft::{LogCommand, Member as Addrs, NodeId, TypeConfig};
use tidemark_storage::raw::record_batch::{Record, encode};

pub(crate) type Node = Raft<TypeConfig, EngineStateMachine>;

pub(crate) struct Member {
    pub(crate) raft: Node,
    pub(crate) engine: SharedEngine,
    #[allow(dead_code)] // only the gRPC cluster test serves snapshot files
    pub(crate) snapshots: Arc<SnapshotTransfer>,
}

/// Opens a node's Raft log and engine in `dir` and starts its Raft with `network`.
pub(crate) async fn start<N>(id: NodeId, dir: &Path, network: N) -> Member
where
    N: RaftNetworkFactory<TypeConfig>,
    N::Network: openraft::network::NetSnapshot<TypeConfig, SnapshotData = Vec<u8>>,
{
    let log = LogStore::open(&dir.join("raft")).expect("log store");
    let config = EngineConfig::new(dir.join("data"));
    let (engine, _) = Engine::open(config.clone()).expect("engine");
    let engine = SharedEngine::new(engine);
    let snapshots = SnapshotTransfer::new(id, dir.join("data"));
    let sm =
        EngineStateMachine::new(engine.clone(), config, snapshots.clone()).expect("state machine");
    // Generous timeouts: the test shares two cores with the rest of the suite.
    let raft_config = Config {
        heartbeat_interval: 200,
        election_timeout_min: 1500,
        election_timeout_max: 3000,
        ..Config::default()
    };
    let raft = Raft::new(
        id,
        Arc::new(raft_config.validate().expect("config")),
        network,
        log,
        sm,
    )
    .await
    .expect("raft");
    Member {
        raft,
        engine,
        snapshots,
    }
}

fn command(cmd: &Command, writer_time_ms: i64) -> LogCommand {
    LogCommand {
        writer_time_ms,
        kind: cmd.kind(),
        payload: cmd.encode(),
    }
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
            permitted_tags: None,
            idempotency_key: Some(format!("cluster-test-{i}")),
            idempotency_per_publisher: false,
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

/// Writes through whichever node leads. A loaded test machine can delay heartbeats past the
/// leader's lease; a write refused with ForwardToLeader was not logged, so it is retried.
async fn write(members: &[Member], cmd: &Command, writer_time_ms: i64) -> (Applied, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let leader = members
            .iter()
            .find_map(|m| m.raft.metrics().borrow_watched().current_leader);
        let node = leader.and_then(|id| members.get((id - 1) as usize));
        if let Some(node) = node {
            match node.raft.client_write(command(cmd, writer_time_ms)).await {
                Ok(resp) => match resp.data.applied {
                    Some(Ok(applied)) => return (applied, resp.log_id.index),
                    other => panic!("{cmd:?} answered {other:?}"),
                },
                Err(e) if e.forward_to_leader().is_some() => {}
                Err(e) => panic!("client_write: {e}"),
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no leader took the write within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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
                let rel = p
                    .strip_prefix(dir)
                    .map(|r| r.display().to_string())
                    .unwrap_or_default();
                out.insert(rel, std::fs::read(&p).expect("segment"));
            }
        }
    }
    out
}

/// Initializes a three-node cluster on node 1, writes a datasource, 2,000 events and a
/// persist through the leader, and checks that every replica applied the same thing.
pub(crate) async fn write_and_compare(
    members: &[Member],
    addrs: &[String],
    dirs: &[tempfile::TempDir],
) {
    let voters: BTreeMap<NodeId, Addrs> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            (
                i as NodeId + 1,
                Addrs {
                    raft: a.clone(),
                    ..Addrs::default()
                },
            )
        })
        .collect();
    members[0]
        .raft
        .initialize(voters)
        .await
        .expect("initialize");
    members[0]
        .raft
        .wait(Some(Duration::from_secs(60)))
        .current_leader(1, "leader")
        .await
        .expect("node 1 leads");

    let hour = 1_790_000_000_000 / 3_600_000 * 3_600_000;
    let spec = DatasourceSpec::from_json(DEMO_BEACONS_SPEC).expect("spec");
    let (created, _) = write(
        members,
        &Command::catalog(CatalogCommand::CreateDatasource { spec }, "system"),
        hour,
    )
    .await;
    assert!(matches!(created, Applied::Catalog(_)), "{created:?}");
    for i in 0..40 {
        assert!(matches!(
            write(members, &events(i, hour), hour + 1000).await.0,
            Applied::Events(_)
        ));
    }
    // The leader decides when an interval ends; every replica persists it at that index.
    let id = members[0]
        .engine
        .read()
        .catalog()
        .get("beacons")
        .map(|e| e.id)
        .expect("datasource id");
    let persist = Command::Persist(PersistCommand {
        datasource: id,
        interval_start_ms: hour,
        late: false,
        reason: PersistReason::IntervalClosed,
    });
    let (_, persist_index) = write(members, &persist, hour + 4_000_000).await;

    for (i, m) in members.iter().enumerate() {
        // A follower learns that the persist is committed from the leader's next message, and
        // the engine's own applied position is what says the persist was applied there.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while m.engine.read().applied_position() < persist_index {
            assert!(
                std::time::Instant::now() < deadline,
                "replica {} stopped at {} before the persist at {persist_index}",
                i + 1,
                m.engine.read().applied_position()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        m.engine
            .write()
            .publish_persisted(true)
            .expect("segments written");
    }
    let totals: Vec<_> = members.iter().map(|m| m.engine.read().totals()).collect();
    assert_eq!(totals[0].0, 2000, "events ingested");
    assert!(
        totals.iter().all(|t| *t == totals[0]),
        "replicas agree on counts: {totals:?}"
    );
    let files: Vec<_> = dirs.iter().map(|d| segment_files(d.path())).collect();
    assert!(!files[0].is_empty(), "a segment was written");
    assert_eq!(
        files[0], files[1],
        "replica 2 holds byte-identical segments"
    );
    assert_eq!(
        files[0], files[2],
        "replica 3 holds byte-identical segments"
    );
    for m in members {
        m.raft.shutdown().await.expect("shutdown");
    }
}
