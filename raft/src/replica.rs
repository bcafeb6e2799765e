//! One node's replica of the log: openraft over the RocksDB log store, the engine state
//! machine and the gRPC network, with the few operations the rest of tidemark needs: submit
//! a command and wait for it to be applied, ask who leads, change the membership, read the
//! cluster's status.
//!
//! Invariants:
//! - `submit` keeps order: commands submitted one after another reach the Raft log in that
//!   order (a single forwarder task hands them to openraft), which a Kafka connection's
//!   pipelined produce requests rely on.
//! - A writer is answered only after its entry is committed and applied here, so the answer
//!   means "replicated to a majority and queryable on the leader".
//! - A single node is a one-voter cluster and takes exactly this path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResult;
use openraft::type_config::alias::OneshotReceiverOf;
use openraft::{ChangeMembers, Config, Raft, ReadPolicy, ServerState, SnapshotPolicy};
use serde::Serialize;
use tidemark_engine::{Applied, Engine, EngineConfig, SharedEngine};

use crate::error::{Error, Result};
use crate::faults::Faults;
use crate::log_store::LogStore;
use crate::network::{GrpcNetwork, raft_service};
use crate::scrubber::{ScrubConfig, Scrubber};
use crate::snapshot::{SnapshotStats, SnapshotTransfer};
use crate::state_machine::EngineStateMachine;
use crate::types::{LogCommand, Member, NodeId, TypeConfig};

pub type RaftNode = Raft<TypeConfig, EngineStateMachine>;

/// Pending reset streams a Raft RPC connection tolerates before h2 closes it.
const RAFT_PENDING_RESETS_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    pub node_id: NodeId,
    /// This node's addresses, as the membership will carry them.
    pub me: Member,
    pub engine: EngineConfig,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (an engine checkpoint) after this many entries.
    pub snapshot_every_entries: u64,
    /// Raft entries kept below a snapshot, so a briefly lagging follower catches up from the
    /// log rather than by snapshot.
    pub entries_kept_after_snapshot: u64,
    /// Writes waiting for the Raft log before `submit` answers `Overloaded`.
    pub in_flight_max: usize,
    /// Let tests inject transport faults ([`Replica::faults`]).
    pub test_faults: bool,
    /// How often and how fast the data files are checked.
    pub scrub: ScrubConfig,
    /// Mutual TLS for Raft RPC, when the cluster has a CA.
    pub tls: Option<crate::peer_tls::PeerTls>,
    /// Carried by every Raft RPC, and required of every incoming one.
    pub secret: crate::ClusterSecret,
    /// Connections the Raft port holds open at most (peers, and anyone else who connects).
    pub connections_max: usize,
}

impl ReplicaConfig {
    pub fn new(
        node_id: NodeId,
        me: Member,
        engine: EngineConfig,
        secret: crate::ClusterSecret,
    ) -> ReplicaConfig {
        ReplicaConfig {
            node_id,
            me,
            engine,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            snapshot_every_entries: 20_000,
            entries_kept_after_snapshot: 20_000,
            in_flight_max: 65_536,
            test_faults: false,
            scrub: ScrubConfig::default(),
            tls: None,
            secret,
            connections_max: 256,
        }
    }
}

type Responder = ProgressResponder<TypeConfig, ClientWriteResult<TypeConfig>>;
type ResponseRx = OneshotReceiverOf<TypeConfig, ClientWriteResult<TypeConfig>>;

#[derive(Debug)]
struct Inner {
    raft: RaftNode,
    engine: SharedEngine,
    config: ReplicaConfig,
    queue: tokio::sync::mpsc::UnboundedSender<(LogCommand, Responder)>,
    in_flight: Arc<AtomicUsize>,
    applied: tokio::sync::watch::Receiver<u64>,
    faults: Option<Faults>,
    /// The Raft log store, shared with openraft (for compacting what it purged).
    log: LogStore,
    snapshots: Arc<SnapshotTransfer>,
    /// Set when openraft's core task ended on its own (a panic in it, or a storage error it
    /// could not report through metrics): the node can no longer take part and must stop.
    core_stopped: Arc<Mutex<Option<String>>>,
    core_watch: tokio::task::JoinHandle<()>,
    scrubber: Arc<Scrubber>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A handle on this node's replica; cheap to clone.
#[derive(Debug, Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

/// A submitted command's answer, once it is committed and applied.
#[derive(Debug)]
pub struct Submitted {
    rx: ResponseRx,
    node: NodeId,
    _slot: InFlight,
}

#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Submitted {
    pub async fn wait(self) -> Result<Applied> {
        let answer = self
            .rx
            .await
            .map_err(|_| Error::Stopped("Raft stopped before answering".into()))?;
        match answer {
            Ok(resp) => match resp.data.applied {
                Some(Ok(applied)) => Ok(applied),
                Some(Err(reason)) => Err(Error::Refused(reason)),
                None => Err(Error::Stopped(format!(
                    "entry {} was not applied by this node",
                    resp.log_id
                ))),
            },
            Err(ClientWriteError::ForwardToLeader(f)) => {
                let leader = f.leader_id.zip(f.leader_node);
                Err(Error::NotLeader {
                    node: self.node,
                    leader,
                })
            }
            Err(ClientWriteError::LogEntryDiscarded(_)) => Err(Error::OutcomeUnknown),
            Err(e) => Err(Error::Stopped(e.to_string())),
        }
    }
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: BTreeMap<NodeId, Member>,
    pub learners: BTreeMap<NodeId, Member>,
    /// On the leader: the highest index each member is known to hold.
    pub replication: Option<BTreeMap<NodeId, Option<u64>>>,
    /// Why Raft stopped on this node, if it did.
    pub fatal: Option<String>,
    /// Data files the scrubber found damaged and has not repaired yet (relative path → what
    /// is wrong); while any is listed the node does not stand for leader.
    pub damaged_files: BTreeMap<String, String>,
}

impl Replica {
    /// Opens the Raft log (`<data_dir>/raft`) and the engine, starts Raft and serves Raft RPC
    /// on `listener`. A node that was never part of a cluster waits to be initialized
    /// ([`Replica::bootstrap`]) or added by a leader.
    pub async fn open(
        config: ReplicaConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<(Replica, OpenReport)> {
        let raft_dir = config.engine.data_dir.join("raft");
        let log = LogStore::open(&raft_dir).map_err(|source| Error::Store {
            path: raft_dir.clone(),
            source,
        })?;
        let (engine, recovery) = Engine::open(config.engine.clone())?;
        let report = OpenReport {
            checkpoint_position: recovery.checkpoint_position,
            raw_batches_replayed: recovery.raw_batches_replayed,
            cut_bytes: recovery.raw_cut_bytes,
        };
        let engine = SharedEngine::new(engine);
        let snapshots = SnapshotTransfer::new(config.node_id, &config.engine.data_dir);
        if let Some(tls) = &config.tls {
            snapshots.set_peer_tls(tls.client.clone());
        }
        snapshots.set_cluster_secret(config.secret.clone());
        let sm = EngineStateMachine::new(engine.clone(), config.engine.clone(), snapshots.clone())
            .map_err(|source| Error::Store {
                path: config.engine.data_dir.clone(),
                source,
            })?;
        let applied = sm.applied_watch();
        let raft_config = Config {
            cluster_name: "tidemark".into(),
            heartbeat_interval: config.heartbeat_interval_ms,
            election_timeout_min: config.election_timeout_min_ms,
            election_timeout_max: config.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: config.entries_kept_after_snapshot,
            // A follower back from a pause (or a partition) asks before it stands, instead of
            // raising the term and unseating a leader the others still follow.
            enable_pre_vote: Some(true),
            ..Config::default()
        }
        .validate()
        .map_err(|e| Error::Membership(format!("invalid Raft timing: {e}")))?;
        let faults = config.test_faults.then(Faults::default);
        let network = GrpcNetwork {
            faults: faults.clone(),
            tls: config.tls.as_ref().map(|t| t.client.clone()),
            secret: Some(config.secret.clone()),
        };
        let log_handle = log.clone();
        let raft = Raft::new(config.node_id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| Error::Stopped(format!("Raft did not start: {e}")))?;

        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &config.tls {
            builder = builder
                .tls_config(tls.server.clone())
                .map_err(|e| Error::Stopped(format!("the Raft port's TLS: {e}")))?;
        }
        let server = {
            let service = raft_service(
                raft.clone(),
                snapshots.clone(),
                engine.clone(),
                config.node_id,
                &config.secret,
            );
            let connections_max = config.connections_max;
            tokio::spawn(async move {
                // Bounded like the client doors (a connection flood cannot take the node's
                // descriptors), with TCP_NODELAY (see `incoming`).
                let counter = crate::incoming::Counter::new(connections_max);
                let incoming =
                    crate::incoming::incoming(listener, "raft", move |peer| counter.admit(peer));
                // A peer cancels RPCs that outlive their timeout (heartbeats under load, every
                // few hundred ms); h2's rapid-reset guard (20 pending resets by default) then
                // dropped the whole connection, AppendEntries streams included: 1,398 times in
                // a 200-kill run. Peers are cluster members, not the internet, so the guard is
                // set far above what timeouts cause.
                if let Err(e) = builder
                    .http2_max_pending_accept_reset_streams(Some(RAFT_PENDING_RESETS_MAX))
                    .add_service(service)
                    .serve_with_incoming(incoming)
                    .await
                {
                    tracing::error!(error = %e, "the Raft RPC server stopped");
                }
            })
        };
        let (queue, mut rx) = tokio::sync::mpsc::unbounded_channel::<(LogCommand, Responder)>();
        let forwarder = {
            let raft = raft.clone();
            tokio::spawn(async move {
                while let Some((cmd, responder)) = rx.recv().await {
                    // On a fatal error the responder is dropped and the writer told Raft stopped.
                    if let Err(e) = raft.client_write_ff(cmd, Some(responder)).await {
                        tracing::error!(error = %e, "Raft refused a write: it has stopped");
                    }
                }
            })
        };
        let core_stopped = Arc::new(Mutex::new(None::<String>));
        // The core task owns the metrics sender: the channel closes exactly when the core is
        // gone. A panicked core leaves its last metrics behind (leader, running state Ok), so
        // without this the node would go on reporting healthy while it can do nothing.
        let core_watch = {
            let mut rx = raft.metrics();
            let core_stopped = core_stopped.clone();
            tokio::spawn(async move {
                while rx.changed().await.is_ok() {}
                tracing::error!("the Raft core task ended");
                let mut slot = core_stopped.lock().unwrap_or_else(|p| p.into_inner());
                slot.get_or_insert_with(|| {
                    "the Raft core task ended (see the log for a panic)".to_string()
                });
            })
        };
        let scrubber = Scrubber::new(
            config.node_id,
            engine.clone(),
            raft.clone(),
            snapshots.clone(),
            config.scrub.clone(),
        );
        let scrub_task = scrubber.spawn();
        let inner = Inner {
            scrubber,
            raft,
            engine,
            config,
            queue,
            in_flight: Arc::new(AtomicUsize::new(0)),
            applied,
            faults,
            log: log_handle,
            snapshots,
            core_stopped,
            core_watch,
            tasks: vec![server, forwarder, scrub_task],
        };
        Ok((
            Replica {
                inner: Arc::new(inner),
            },
            report,
        ))
    }

    /// Makes this node a one-voter cluster if it was never initialized: the single-node
    /// default, and the first node of a new cluster. A no-op on restart.
    pub async fn bootstrap(&self) -> Result<()> {
        let raft = &self.inner.raft;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| Error::Stopped(e.to_string()))?;
        if !initialized {
            let members =
                BTreeMap::from([(self.inner.config.node_id, self.inner.config.me.clone())]);
            raft.initialize(members)
                .await
                .map_err(|e| Error::Membership(e.to_string()))?;
        }
        Ok(())
    }

    /// Waits until some node leads (for start-up and tests).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId> {
        let m = self
            .inner
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is elected")
            .await
            .map_err(|e| Error::Stopped(format!("no leader within {timeout:?}: {e}")))?;
        m.current_leader
            .ok_or_else(|| Error::Stopped("no leader".into()))
    }

    pub fn engine(&self) -> SharedEngine {
        self.inner.engine.clone()
    }

    /// What this node presents to its peers, and requires of them.
    pub fn cluster_secret(&self) -> &crate::ClusterSecret {
        &self.inner.config.secret
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    pub fn me(&self) -> &Member {
        &self.inner.config.me
    }

    /// The transport fault rules, when the node was started with test faults enabled.
    pub fn faults(&self) -> Option<&Faults> {
        self.inner.faults.as_ref()
    }

    /// Snapshot transfer counters (built, installed, bytes fetched and served).
    pub fn snapshot_stats(&self) -> &SnapshotStats {
        &self.inner.snapshots.stats
    }

    /// The background checker of this node's data files.
    pub fn scrubber(&self) -> &Scrubber {
        &self.inner.scrubber
    }

    /// Changes whenever entries were applied here.
    pub fn applied_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.applied.clone()
    }

    /// Whether this node leads, as far as it knows.
    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// On the leader: whether a quorum acknowledged it within `within`. A leader cut off from
    /// the majority believes it leads until an election elsewhere reaches it; this tells it
    /// sooner that its writes cannot commit. A one-voter cluster always has its quorum.
    pub fn has_recent_quorum(&self, within: Duration) -> bool {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        if m.membership_config.membership().voter_ids().count() <= 1 {
            return true;
        }
        m.last_quorum_acked
            .is_some_and(|t| openraft::Instant::elapsed(&*t) <= within)
    }

    /// The leader this node knows of, with its addresses.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let id = m.current_leader?;
        let member = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, member))
    }

    /// Every member (voters and learners) with its addresses.
    pub fn members(&self) -> BTreeMap<NodeId, Member> {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        m.membership_config
            .nodes()
            .map(|(id, n)| (*id, n.clone()))
            .collect()
    }

    /// Why Raft stopped on this node, if it did.
    pub fn fatal(&self) -> Option<String> {
        if let Some(reason) = self
            .inner
            .core_stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(reason);
        }
        self.inner
            .raft
            .metrics()
            .borrow_watched()
            .running_state
            .as_ref()
            .err()
            .map(|e| e.to_string())
    }

    /// Calls `f(from, to)` on every change of the leader this node knows (for metrics, logs).
    pub fn on_leader_change(&self, f: impl Fn(Option<NodeId>, Option<NodeId>) + Send + 'static) {
        let mut rx = self.inner.raft.metrics();
        tokio::spawn(async move {
            let mut last = rx.borrow_watched().current_leader;
            while rx.changed().await.is_ok() {
                let now = rx.borrow_watched().current_leader;
                if now != last {
                    f(last, now);
                    last = now;
                }
            }
        });
    }

    /// Hands `cmd` to the Raft log now; wait on the answer with [`Submitted::wait`].
    pub fn submit(&self, cmd: LogCommand) -> Result<Submitted> {
        if let Some(reason) = self.fatal() {
            return Err(Error::Stopped(reason));
        }
        let in_flight = self.inner.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = InFlight(self.inner.in_flight.clone());
        if in_flight > self.inner.config.in_flight_max {
            return Err(Error::Overloaded {
                in_flight: in_flight - 1,
                bound: self.inner.config.in_flight_max,
            });
        }
        let (responder, rx) = Responder::complete_only();
        self.inner
            .queue
            .send((cmd, responder))
            .map_err(|_| Error::Stopped("the node is shutting down".into()))?;
        Ok(Submitted {
            rx,
            node: self.node_id(),
            _slot: slot,
        })
    }

    /// Adds a learner and, when `blocking`, waits until it has caught up with the log.
    pub async fn add_learner(&self, id: NodeId, member: Member, blocking: bool) -> Result<()> {
        self.inner
            .raft
            .add_learner(id, member, blocking)
            .await
            .map_err(|e| self.membership_error(e))?;
        Ok(())
    }

    /// Records new addresses for a member that moved (restarted on other ports with its data).
    /// Only for the same node with the same log: pointing an id at another node's data would
    /// let two logs claim one vote.
    pub async fn update_member(&self, id: NodeId, member: Member) -> Result<()> {
        let nodes = BTreeMap::from([(id, member)]);
        self.inner
            .raft
            .change_membership(ChangeMembers::SetNodes(nodes), true)
            .await
            .map_err(|e| self.membership_error(e))?;
        Ok(())
    }

    /// Makes learners voters.
    pub async fn promote(&self, ids: BTreeSet<NodeId>) -> Result<()> {
        self.inner
            .raft
            .change_membership(ChangeMembers::AddVoterIds(ids), false)
            .await
            .map_err(|e| self.membership_error(e))?;
        Ok(())
    }

    /// Removes members (voters or learners) from the cluster.
    pub async fn remove(&self, ids: BTreeSet<NodeId>) -> Result<()> {
        let voters: BTreeSet<NodeId> = self
            .inner
            .raft
            .voter_ids()
            .filter(|v| ids.contains(v))
            .collect();
        if !voters.is_empty() {
            self.inner
                .raft
                .change_membership(ChangeMembers::RemoveVoters(voters), false)
                .await
                .map_err(|e| self.membership_error(e))?;
        }
        let learners: BTreeSet<NodeId> = self
            .inner
            .raft
            .learner_ids()
            .filter(|v| ids.contains(v))
            .collect();
        if !learners.is_empty() {
            self.inner
                .raft
                .change_membership(ChangeMembers::RemoveNodes(learners), false)
                .await
                .map_err(|e| self.membership_error(e))?;
        }
        Ok(())
    }

    /// Asks the leader to hand leadership to `to`; returns once `to` leads, or fails after
    /// `timeout`.
    pub async fn transfer_leader(&self, to: NodeId, timeout: Duration) -> Result<()> {
        if !self.is_leader() {
            return Err(Error::NotLeader {
                node: self.node_id(),
                leader: self.leader(),
            });
        }
        if !self.inner.raft.voter_ids().any(|v| v == to) {
            return Err(Error::Membership(format!("node {to} is not a voter")));
        }
        self.inner
            .raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| Error::Stopped(e.to_string()))?;
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.current_leader == Some(to),
                "the new leader is elected",
            )
            .await
            .map_err(|e| {
                Error::Membership(format!(
                    "node {to} did not take over within {timeout:?}: {e}"
                ))
            })?;
        Ok(())
    }

    /// A read index: on the leader, the log index a read must see applied to reflect every
    /// write acknowledged before it (ReadIndex: a heartbeat round confirms leadership).
    pub async fn read_index(&self) -> Result<u64> {
        let read = self
            .inner
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| match e.forward_to_leader() {
                Some(f) => Error::NotLeader {
                    node: self.node_id(),
                    leader: f.leader_id.zip(f.leader_node.clone()),
                },
                None => Error::Stopped(e.to_string()),
            })?;
        Ok(read.index())
    }

    /// Waits until this node has applied `index` (a read index from the leader).
    /// Starts a snapshot now, outside the usual policy (after a deletion, whose beacons the
    /// log below it still holds).
    pub async fn snapshot_now(&self) -> Result<()> {
        self.inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Stopped(e.to_string()))
    }

    /// Purges this node's log through `index`. openraft never purges past its last snapshot:
    /// call it once [`ClusterStatus::snapshot_index`] covers `index`.
    pub async fn purge_log_through(&self, index: u64) -> Result<()> {
        self.inner
            .raft
            .trigger()
            .purge_log(index)
            .await
            .map_err(|e| Error::Stopped(e.to_string()))
    }

    /// Takes the log entries purged through `through` off the disk now (see
    /// [`LogStore::compact_purged`]); blocking, so call it off the async workers.
    pub fn compact_purged_log(&self, through: u64) -> std::io::Result<()> {
        self.inner.log.compact_purged(through)
    }

    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.applied_watch();
        let wait = rx.wait_for(|applied| *applied >= index);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped("the state machine stopped".into())),
            Err(_) => Err(Error::Stopped(format!(
                "this node did not apply index {index} within {timeout:?}"
            ))),
        }
    }

    pub fn status(&self) -> ClusterStatus {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let mut voter_nodes = BTreeMap::new();
        let mut learner_nodes = BTreeMap::new();
        for (id, n) in membership.nodes() {
            if voters.contains(id) {
                voter_nodes.insert(*id, n.clone());
            } else {
                learner_nodes.insert(*id, n.clone());
            }
        }
        ClusterStatus {
            node_id: m.id,
            state: format!("{:?}", m.state).to_lowercase(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.as_ref().map(|l| l.index),
            applied_index: m.last_applied.as_ref().map(|l| l.index),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index),
            purged_index: m.purged.as_ref().map(|l| l.index),
            voters: voter_nodes,
            learners: learner_nodes,
            replication: m.replication.as_ref().map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.as_ref().map(|l| l.index)))
                    .collect()
            }),
            fatal: self.fatal(),
            damaged_files: self
                .inner
                .scrubber
                .damaged()
                .into_iter()
                .map(|(p, why)| (p.to_string_lossy().into_owned(), why))
                .collect(),
        }
    }

    fn membership_error<E: std::fmt::Display>(
        &self,
        e: openraft::errors::RaftError<TypeConfig, E>,
    ) -> Error
    where
        E: openraft::TryAsRef<openraft::errors::ForwardToLeader<TypeConfig>> + std::error::Error,
    {
        match e.forward_to_leader() {
            Some(f) => Error::NotLeader {
                node: self.node_id(),
                leader: f.leader_id.zip(f.leader_node.clone()),
            },
            None => Error::Membership(e.to_string()),
        }
    }

    /// Stops Raft and the RPC server; the engine is left for the caller to checkpoint.
    pub async fn shutdown(&self) {
        // A core that ends because it was told to is not a fault.
        self.inner.core_watch.abort();
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not stop cleanly");
        }
        for t in &self.inner.tasks {
            t.abort();
        }
    }
}

/// What opening the engine found.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    pub checkpoint_position: u64,
    pub raw_batches_replayed: u64,
    pub cut_bytes: u64,
}
