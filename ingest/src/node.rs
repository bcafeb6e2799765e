//! The node runtime: every write becomes a Raft log entry (`tidemark_raft::Replica`); once
//! it is committed and applied to the engine, the waiting caller is answered. A ticker on the
//! leader logs the writer's decisions (persist closed intervals, purge deleted datasources);
//! on every node it publishes finished segments and checkpoints. A single node is a one-voter
//! cluster and runs exactly this code.
//!
//! ```text
//!  propose(cmd) ─► Replica::submit ─► Raft log (RocksDB, fsync; replicated to a majority)
//!       ▲                                   └─► EngineStateMachine ─► Engine::apply
//!       └────────────── answer (after apply: queryable) ◄──────────────────┘
//!  ticker (leader) ─► persist/purge decisions ─► propose;  every node: checkpoint
//! ```
//!
//! Invariant: a caller is answered only after its entry is committed and applied, so an
//! acknowledged beacon is durable on a majority and already queryable. A storage error stops
//! Raft on this node (`fatal`): nothing is acknowledged after it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tidemark_catalog::audit::ACTOR_SYSTEM;
use tidemark_engine::command::Command;
use tidemark_engine::{Applied, EngineConfig, SharedEngine};
use tidemark_raft::{LogCommand, Member, NodeId, Replica, ReplicaConfig};

use crate::error::{Error, Result};
use crate::metrics::{EngineGauges, Metrics, RaftGauges, ScrubGauges, SnapshotGauges};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub engine: EngineConfig,
    pub node_id: NodeId,
    /// This node's addresses as the cluster membership carries them.
    pub me: Member,
    /// Writes waiting for the Raft log before new ones are refused.
    pub pending_entries_max: usize,
    pub tick_interval_ms: u64,
    /// Snapshot (an engine checkpoint; the Raft log is purged below it) after this many entries.
    pub checkpoint_every_entries: u64,
    /// Raft entries kept below a snapshot, so a briefly lagging follower catches up from the
    /// log rather than by snapshot.
    pub entries_kept_after_snapshot: u64,
    /// Checkpoint at least this often while entries are being applied.
    pub checkpoint_interval_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// An HTTP write not committed within this long is answered 503 (its outcome unknown).
    pub write_timeout_ms: u64,
    /// Let tests inject Raft transport faults (`POST /v1/test/faults`).
    pub test_faults: bool,
    /// How often and how fast the scrubber checks the data files.
    pub scrub: tidemark_raft::scrubber::ScrubConfig,
    /// Mutual TLS for Raft RPC between nodes.
    pub peer_tls: Option<tidemark_raft::peer_tls::PeerTls>,
    /// HTTPS to peers' HTTP ports (forwarded writes), when they serve TLS.
    pub peer_https: Option<crate::forward::PeerHttps>,
    /// Carried by Raft RPC and node-to-node HTTP calls; none: a random one (a single node).
    pub cluster_secret: Option<tidemark_raft::ClusterSecret>,
    /// Connections the Raft port holds open at most.
    pub raft_connections_max: usize,
}

impl NodeConfig {
    pub fn new(engine: EngineConfig) -> Self {
        NodeConfig {
            engine,
            node_id: 1,
            me: Member::default(),
            pending_entries_max: 65_536,
            tick_interval_ms: 1000,
            checkpoint_every_entries: 20_000,
            entries_kept_after_snapshot: 20_000,
            checkpoint_interval_ms: 10_000,
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            write_timeout_ms: 10_000,
            test_faults: false,
            scrub: tidemark_raft::scrubber::ScrubConfig::default(),
            peer_tls: None,
            peer_https: None,
            cluster_secret: None,
            raft_connections_max: 256,
        }
    }
}

/// A submitted entry's answer, once it is committed and applied.
#[derive(Debug)]
pub struct Pending(tidemark_raft::Submitted, Arc<Metrics>);

impl Pending {
    pub async fn wait(self) -> Result<Applied> {
        let applied = self.0.wait().await?;
        self.1.commands_applied.fetch_add(1, Ordering::Relaxed);
        Ok(applied)
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug)]
struct Inner {
    replica: Replica,
    engine: SharedEngine,
    metrics: Arc<Metrics>,
    fatal: Mutex<Option<String>>,
    /// A checkpoint that failed for a shortage ([`tidemark_engine::Error::is_shortage`]):
    /// reported until one succeeds, and retried every tick meanwhile.
    checkpoint_trouble: Mutex<Option<String>>,
    /// The segment writer's shortage state, read and stopped without the engine lock.
    persist: tidemark_engine::PersistControl,
    stopping: AtomicBool,
    last_checkpoint: Mutex<Instant>,
    /// A deletion's position whose Raft log entries are still to be purged (see `erase`).
    erase_pending: Mutex<Option<u64>>,
    /// A deletion's purge done or under way: the purged range is to be compacted off the disk.
    erase_compact: Mutex<Option<u64>>,
    /// Drawn at each start: copies this node runs carry it, so a later start knows the ones
    /// an earlier run left unfinished.
    boot: u64,
    /// Copies this node is starting (by their `run`), before they are registered in the engine.
    copies_starting: Mutex<std::collections::BTreeSet<u64>>,
    config: NodeConfig,
}

#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<Inner>,
    ticker: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// What starting a node found.
#[derive(Debug, Clone, Default)]
pub struct StartReport {
    pub checkpoint_position: u64,
    pub raw_batches_replayed: u64,
    pub cut_bytes: u64,
}

impl Node {
    /// Opens the engine and the Raft log, serves Raft RPC on `raft_listener` and starts the
    /// ticker. Raft replays what the engine's checkpoint does not cover. The node is not yet
    /// part of a cluster if it never was: call [`Node::bootstrap`] for a new cluster or a
    /// single node, or have a leader add it.
    pub async fn start(
        config: NodeConfig,
        raft_listener: tokio::net::TcpListener,
    ) -> Result<(Node, StartReport)> {
        let secret = match &config.cluster_secret {
            Some(s) => s.clone(),
            None => tidemark_raft::ClusterSecret::random()
                .map_err(|e| Error::Engine(tidemark_engine::Error::Internal(e)))?,
        };
        let mut rc = ReplicaConfig::new(
            config.node_id,
            config.me.clone(),
            config.engine.clone(),
            secret,
        );
        rc.in_flight_max = config.pending_entries_max;
        rc.snapshot_every_entries = config.checkpoint_every_entries;
        rc.entries_kept_after_snapshot = config.entries_kept_after_snapshot;
        rc.heartbeat_interval_ms = config.heartbeat_interval_ms;
        rc.election_timeout_min_ms = config.election_timeout_min_ms;
        rc.election_timeout_max_ms = config.election_timeout_max_ms;
        rc.test_faults = config.test_faults;
        rc.scrub = config.scrub.clone();
        rc.tls = config.peer_tls.clone();
        rc.connections_max = config.raft_connections_max;
        let (replica, opened) = Replica::open(rc, raft_listener).await?;
        let report = StartReport {
            checkpoint_position: opened.checkpoint_position,
            raw_batches_replayed: opened.raw_batches_replayed,
            cut_bytes: opened.cut_bytes,
        };
        let persist = replica.engine().read().persist_control();
        let inner = Arc::new(Inner {
            engine: replica.engine(),
            replica,
            metrics: Arc::new(Metrics::default()),
            fatal: Mutex::new(None),
            checkpoint_trouble: Mutex::new(None),
            persist,
            stopping: AtomicBool::new(false),
            last_checkpoint: Mutex::new(Instant::now()),
            erase_pending: Mutex::new(None),
            erase_compact: Mutex::new(None),
            boot: boot_id(),
            copies_starting: Mutex::new(std::collections::BTreeSet::new()),
            config,
        });
        let ticker = {
            let inner = inner.clone();
            let runtime = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name("tidemark-tick".into())
                .spawn(move || tick_loop(&inner, &runtime))
                .map_err(|e| {
                    Error::Engine(tidemark_engine::Error::Internal(format!(
                        "cannot start ticker: {e}"
                    )))
                })?
        };
        {
            let metrics = inner.metrics.clone();
            inner.replica.on_leader_change(move |from, to| {
                metrics.leader_changes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(?from, ?to, "leader changed");
            });
        }
        let node = Node {
            inner,
            ticker: Arc::new(Mutex::new(Some(ticker))),
        };
        tokio::spawn(crate::copies::sweep_stale_copies(node.clone()));
        Ok((node, report))
    }

    /// This run of the node (see `copies.rs`).
    pub fn boot(&self) -> u64 {
        self.inner.boot
    }

    /// Marks copy `run` as starting (true) or no longer starting (false); see `copies.rs`.
    pub fn copy_starting(&self, run: u64, starting: bool) {
        let mut set = self
            .inner
            .copies_starting
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if starting {
            set.insert(run);
        } else {
            set.remove(&run);
        }
    }

    pub fn is_copy_starting(&self, run: u64) -> bool {
        self.inner
            .copies_starting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&run)
    }

    /// Whether the node is shutting down.
    pub fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::SeqCst)
    }

    /// Makes this node a one-voter cluster unless it already belongs to one.
    pub async fn bootstrap(&self) -> Result<()> {
        Ok(self.inner.replica.bootstrap().await?)
    }

    pub fn replica(&self) -> &Replica {
        &self.inner.replica
    }

    pub fn engine(&self) -> SharedEngine {
        self.inner.engine.clone()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// Why the node stopped accepting writes, if it did.
    pub fn fatal(&self) -> Option<String> {
        if let Some(f) = self
            .inner
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(f);
        }
        self.inner.replica.fatal()
    }

    /// The cluster secret: what this node presents to its peers, and requires of them.
    pub fn cluster_secret(&self) -> &tidemark_raft::ClusterSecret {
        self.inner.replica.cluster_secret()
    }

    /// The token this node presents to its peers' internal HTTP routes.
    pub fn node_token(&self) -> String {
        format!(
            "{}{}",
            tidemark_catalog::access::NODE_TOKEN_PREFIX,
            self.cluster_secret().expose()
        )
    }

    /// A shortage the node is waiting out (descriptors, disk space, memory) without having
    /// stopped: a checkpoint or a segment write to be retried.
    pub fn trouble(&self) -> Option<String> {
        let checkpoint = self
            .inner
            .checkpoint_trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        checkpoint.or_else(|| self.inner.persist.trouble())
    }

    pub fn gauges(&self) -> EngineGauges {
        let st = self.inner.replica.status();
        let raft = RaftGauges {
            node_id: st.node_id,
            is_leader: st.leader == Some(st.node_id),
            term: st.term,
            last_log_index: st.last_log_index.unwrap_or(0),
            committed_index: st.committed_index.unwrap_or(0),
            applied_index: st.applied_index.unwrap_or(0),
            voters: st.voters.len() as u64,
        };
        let s = self.inner.replica.snapshot_stats();
        let snapshots = SnapshotGauges {
            built: s.built.load(Ordering::Relaxed),
            installed: s.installed.load(Ordering::Relaxed),
            files_fetched: s.files_fetched.load(Ordering::Relaxed),
            bytes_fetched: s.bytes_fetched.load(Ordering::Relaxed),
            files_reused: s.files_reused.load(Ordering::Relaxed),
            bytes_served: s.bytes_served.load(Ordering::Relaxed),
            fetch_failures: s.fetch_failures.load(Ordering::Relaxed),
        };
        let sc = self.inner.replica.scrubber();
        let scrub = ScrubGauges {
            passes: sc.stats.passes.load(Ordering::Relaxed),
            files_checked: sc.stats.files_checked.load(Ordering::Relaxed),
            bytes_checked: sc.stats.bytes_checked.load(Ordering::Relaxed),
            damaged_found: sc.stats.damaged_found.load(Ordering::Relaxed),
            repaired: sc.stats.repaired.load(Ordering::Relaxed),
            repair_failures: sc.stats.repair_failures.load(Ordering::Relaxed),
            handovers: sc.stats.handovers.load(Ordering::Relaxed),
            damaged_now: st.damaged_files.len() as u64,
        };
        let e = self.inner.engine.read();
        let (events_ingested, events_rejected, realtime_rows, segments) = e.totals();
        EngineGauges {
            events_ingested,
            events_rejected,
            tags_dropped: e.tags_dropped(),
            realtime_rows,
            realtime_bytes: e.realtime_bytes() as u64,
            segments,
            applied_position: e.applied_position(),
            raft,
            snapshots,
            scrub,
        }
    }

    /// Logs `cmd` and waits until it is committed and applied, at most `write_timeout_ms`
    /// (without a quorum a write never commits; the caller hears so and may retry).
    /// How to reach peers' HTTP ports over TLS, if they serve it.
    pub fn peer_https(&self) -> Option<&crate::forward::PeerHttps> {
        self.inner.config.peer_https.as_ref()
    }

    pub async fn propose(&self, cmd: &Command) -> Result<Applied> {
        let waited_ms = self.inner.config.write_timeout_ms;
        let pending = self.submit(cmd)?;
        match tokio::time::timeout(Duration::from_millis(waited_ms), pending.wait()).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::Replication(tidemark_raft::Error::NotCommitted {
                waited_ms,
            })),
        }
    }

    /// Logs `cmd` now and returns a handle to wait on. Entries submitted one after another
    /// are applied in that order, which a Kafka connection relies on for its pipelined
    /// produce requests (an idempotent producer's sequence numbers).
    pub fn submit(&self, cmd: &Command) -> Result<Pending> {
        if let Some(reason) = self.fatal() {
            return Err(Error::Stopped { reason });
        }
        let entry = LogCommand {
            writer_time_ms: now_ms(),
            kind: cmd.kind(),
            payload: cmd.encode(),
        };
        let submitted = self.inner.replica.submit(entry)?;
        Ok(Pending(submitted, self.inner.metrics.clone()))
    }

    /// Read-your-writes: waits until this node has applied everything acknowledged before
    /// the call (the leader's read index; a follower asks the leader for it).
    pub async fn read_barrier(&self) -> Result<()> {
        let replica = self.replica();
        let wait = Duration::from_millis(self.inner.config.write_timeout_ms);
        let index = if replica.is_leader() {
            replica.read_index().await?
        } else {
            let me = replica.node_id();
            let Some((_, leader)) = replica.leader().filter(|(id, _)| *id != me) else {
                return Err(Error::Replication(tidemark_raft::Error::NotLeader {
                    node: me,
                    leader: None,
                }));
            };
            let v = crate::forward::call_leader(self, &leader.http, "/v1/cluster/read-index", None)
                .await
                .map_err(|reason| Error::Stopped {
                    reason: format!("asking the leader for a read index: {reason}"),
                })?;
            v.get("index")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| Error::Stopped {
                    reason: format!("the leader answered {v} for a read index"),
                })?
        };
        Ok(replica.wait_applied(index, wait).await?)
    }

    /// Changes whenever entries were applied: Kafka Fetch long-polls on it.
    pub fn applied_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.replica.applied_watch()
    }

    /// Stops the ticker and Raft, then checkpoints, so the next start replays little.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        // First, without the engine lock: a caller holding it may be waiting for the writer.
        self.inner.persist.stop_retrying();
        // Copies running here stop and remove what they wrote; the next start ends their jobs.
        self.inner.engine.read().stop_copies();
        let ticker = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = ticker {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        self.inner.replica.shutdown().await;
        if self.fatal().is_none() {
            // Let segments being written finish, so the next start need not rebuild them.
            let waited = self.inner.engine.write().publish_persisted(true);
            if let Err(e) = waited {
                set_fatal(&self.inner, format!("writing a segment failed: {e}"));
                return;
            }
            checkpoint(&self.inner);
        }
    }
}

/// A number no earlier run of this node drew: the clock's nanoseconds mixed with the
/// process id.
fn boot_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40) | 1
}

fn set_fatal(inner: &Inner, reason: String) {
    tracing::error!(%reason, "node stopped accepting writes");
    let mut f = inner.fatal.lock().unwrap_or_else(|p| p.into_inner());
    if f.is_none() {
        *f = Some(reason);
    }
}

/// Publishes segments the writer finished; true if any were (the timeline changed).
fn publish(inner: &Inner) -> bool {
    let published = inner.engine.write().publish_persisted(false);
    match published {
        Ok(seconds) => {
            for s in &seconds {
                inner.metrics.persist_seconds.observe(*s);
            }
            !seconds.is_empty()
        }
        Err(e) => {
            set_fatal(inner, format!("writing a segment failed: {e}"));
            false
        }
    }
}

fn checkpoint(inner: &Inner) {
    let started = Instant::now();
    let result = inner.engine.checkpoint();
    inner
        .metrics
        .checkpoint_seconds
        .observe(started.elapsed().as_secs_f64());
    let mut trouble = inner
        .checkpoint_trouble
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(_) => {
            *inner
                .last_checkpoint
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Instant::now();
            if trouble.take().is_some() {
                tracing::info!("a checkpoint was written again");
            }
        }
        // The previous checkpoint and the Raft log above it still hold everything: nothing
        // acknowledged is at risk, so a shortage is waited out rather than stopping writes.
        Err(e) if e.is_shortage() => {
            tracing::warn!(error = %e, "a checkpoint failed for a shortage; retrying every tick");
            *trouble = Some(format!("checkpoint failed, retrying: {e}"));
        }
        Err(e) => set_fatal(inner, format!("checkpoint failed: {e}")),
    }
}

/// After a deletion publishes, the Raft log below it still holds the deleted beacons in the
/// entries that brought them: this node snapshots (an engine checkpoint, which holds the
/// rewritten raw log) and purges its log through the deletion, without waiting for the
/// usual snapshot policy. Purging waits for the snapshot to cover the position (openraft
/// never purges past its last snapshot), so it is retried on later ticks; once purged, the
/// range is compacted so the entries' bytes leave RocksDB's files too.
fn erase(inner: &Inner, runtime: &tokio::runtime::Handle) {
    let due = inner.engine.write().take_erase_due();
    let mut pending = inner
        .erase_pending
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(upto) = due {
        *pending = Some(pending.map_or(upto, |p| p.max(upto)));
        if let Err(e) = runtime.block_on(inner.replica.snapshot_now()) {
            tracing::warn!(error = %e, "could not start a snapshot after a deletion");
        }
    }
    // Once the purge is done, its range is compacted off the disk, on a thread of its own
    // (it may take a while, and the ticker has other work).
    let mut compacting = inner
        .erase_compact
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(through) = *compacting {
        if inner.replica.status().purged_index.unwrap_or(0) >= through {
            *compacting = None;
            let replica = inner.replica.clone();
            let spawned = std::thread::Builder::new()
                .name("tidemark-log-compact".into())
                .spawn(move || match replica.compact_purged_log(through) {
                    Ok(()) => {
                        tracing::info!(through, "the purged Raft log entries are off the disk")
                    }
                    Err(e) => {
                        tracing::warn!(through, error = %e, "could not compact the purged Raft log")
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start compacting the purged Raft log");
            }
        }
    }
    let Some(upto) = *pending else { return };
    let snapshot = inner.replica.status().snapshot_index.unwrap_or(0);
    if snapshot < upto {
        return;
    }
    match runtime.block_on(inner.replica.purge_log_through(upto)) {
        Ok(()) => {
            tracing::info!(upto, "purging the Raft log through a deletion");
            *pending = None;
            *compacting = Some(compacting.map_or(upto, |c| c.max(upto)));
        }
        Err(e) => tracing::warn!(error = %e, "could not purge the Raft log after a deletion"),
    }
}

/// Runs on its own thread: the persist decisions read the engine and must not hold up the
/// async workers, and the checkpoints fsync.
fn tick_loop(inner: &Inner, runtime: &tokio::runtime::Handle) {
    let tick = Duration::from_millis(inner.config.tick_interval_ms.max(10));
    while !inner.stopping.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        if inner
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
            || inner.replica.fatal().is_some()
        {
            continue;
        }
        // A member restarted without the cluster secret drew a random one, which its peers
        // refuse: say so and stop, rather than campaign forever.
        if inner.replica.cluster_secret().is_generated() {
            let voters = inner.replica.status().voters.len();
            if voters > 1 {
                set_fatal(
                    inner,
                    format!(
                        "this node is one of {voters} cluster members but has no cluster_secret (or \
                         TIDEMARK_CLUSTER_SECRET): its peers refuse it; restart it with the secret every member has"
                    ),
                );
                continue;
            }
        }
        // Only the leader decides when an interval ends, so every replica persists it at the
        // same log position.
        if inner.replica.is_leader() {
            let now = now_ms();
            let commands: Vec<Command> = {
                let e = inner.engine.read();
                let mut c: Vec<Command> = e
                    .persist_decisions(now)
                    .into_iter()
                    .map(Command::Persist)
                    .collect();
                c.extend(
                    e.purge_decisions(now)
                        .into_iter()
                        .map(|p| Command::catalog(p, ACTOR_SYSTEM)),
                );
                // Reindex builds this node finished: publish (or cancel a failed one).
                c.extend(e.reindex_decisions().into_iter().map(Command::Timeline));
                c.extend(
                    e.retention_decisions(now)
                        .into_iter()
                        .map(Command::Timeline),
                );
                c.extend(
                    e.compaction_decisions(now)
                        .into_iter()
                        .map(Command::Timeline),
                );
                c
            };
            let mut waiting = Vec::new();
            for cmd in &commands {
                let entry = LogCommand {
                    writer_time_ms: now,
                    kind: cmd.kind(),
                    payload: cmd.encode(),
                };
                match inner.replica.submit(entry) {
                    Ok(p) => waiting.push(p),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not log a persist decision; will retry")
                    }
                }
            }
            // Wait for our own decisions to apply, so the next tick does not decide them again.
            for p in waiting {
                if let Err(e) = runtime.block_on(p.wait()) {
                    tracing::warn!(error = %e, "a persist decision was not applied; will retry");
                }
            }
        }
        // Segments finished since the last apply become visible now; they and catalog changes
        // are checkpointed soon (files of a purged datasource go only after that).
        let published = publish(inner);
        let retry = inner
            .checkpoint_trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if published || retry || inner.engine.read().checkpoint_due() {
            checkpoint(inner);
        }
        erase(inner, runtime);
        let stale = inner
            .last_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= Duration::from_millis(inner.config.checkpoint_interval_ms);
        let behind = {
            let e = inner.engine.read();
            e.applied_position() > e.checkpoint_position()
        };
        if stale && behind {
            checkpoint(inner);
        }
    }
}
