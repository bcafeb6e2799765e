//! The node runtime: every write becomes a command log entry; a single applier thread
//! applies durable entries to the engine in position order and answers the waiting caller;
//! a ticker logs the writer's decisions (persist closed intervals, purge deleted datasources)
//! and checkpoints. This is the single-node stand-in for Raft: `propose` is what a leader does.
//!
//! ```text
//!  propose(cmd) ─► CommandLog::append (group commit, fsync) ─► applier thread ─► Engine::apply
//!       ▲                                                                │
//!       └──────────────────── oneshot answer (after apply: queryable) ◄──┘
//!  ticker ─► persist/purge decisions ─► propose;  checkpoint ─► trim the command log
//! ```
//!
//! Invariant: a caller is answered only after its entry is fsync'd and applied, so an
//! acknowledged beacon is durable and already queryable. An fsync or apply I/O error stops
//! the node (`fatal`): nothing is acknowledged after it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tidemark_storage::command_log::{CommandLog, CommandLogConfig, Durable};
use tidemark_storage::engine::command::{Command, KIND_CATALOG};
use tidemark_storage::engine::{Applied, Engine, EngineConfig, SharedEngine};

use crate::error::{Error, Result};
use crate::metrics::{EngineGauges, Metrics};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub engine: EngineConfig,
    pub group_commit_window_ms: u64,
    /// Entries waiting for fsync before writes are refused.
    pub pending_entries_max: usize,
    pub tick_interval_ms: u64,
    /// Checkpoint (and trim the command log) after this many applied entries.
    pub checkpoint_every_entries: u64,
    /// Checkpoint at least this often while entries are being applied.
    pub checkpoint_interval_ms: u64,
}

impl NodeConfig {
    pub fn new(engine: EngineConfig) -> Self {
        NodeConfig {
            engine,
            group_commit_window_ms: 2,
            pending_entries_max: 65_536,
            tick_interval_ms: 1000,
            checkpoint_every_entries: 20_000,
            checkpoint_interval_ms: 10_000,
        }
    }
}

type Answer = std::result::Result<Applied, String>;

/// A submitted entry's answer, once it is durable and applied.
#[derive(Debug)]
pub struct Pending(tokio::sync::oneshot::Receiver<Answer>);

impl Pending {
    pub async fn wait(self) -> Result<Applied> {
        match self.0.await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(reason)) => Err(Error::Stopped { reason }),
            Err(_) => Err(Error::Stopped { reason: "the node is shutting down".into() }),
        }
    }
}
type Ticket = Option<tokio::sync::oneshot::Sender<Answer>>;

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[derive(Debug)]
struct Inner {
    log: CommandLog<Ticket>,
    engine: SharedEngine,
    metrics: Arc<Metrics>,
    fatal: Mutex<Option<String>>,
    stopping: AtomicBool,
    since_checkpoint: AtomicU64,
    last_checkpoint: Mutex<Instant>,
    applied_tx: tokio::sync::watch::Sender<u64>,
    config: NodeConfig,
}

#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<Inner>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// What starting a node found.
#[derive(Debug, Clone, Default)]
pub struct StartReport {
    pub checkpoint_position: u64,
    pub replayed_entries: usize,
    pub raw_batches_replayed: u64,
    pub cut_bytes: u64,
}

impl Node {
    /// Opens the engine and the command log, replays what the checkpoint does not cover, and
    /// starts the applier and ticker threads.
    pub fn start(config: NodeConfig) -> Result<(Node, StartReport)> {
        let (mut engine, recovery) = Engine::open(config.engine.clone())?;
        let (tx, rx) = sync_channel::<Durable<Ticket>>(1024);
        let mut log_config = CommandLogConfig::new(config.engine.data_dir.join("cmdlog"));
        log_config.group_commit_window_ms = config.group_commit_window_ms;
        log_config.pending_max = config.pending_entries_max;
        let (log, replay) = CommandLog::open(log_config, tx)?;
        let mut report = StartReport {
            checkpoint_position: recovery.checkpoint_position,
            raw_batches_replayed: recovery.raw_batches_replayed,
            cut_bytes: recovery.raw_cut_bytes + replay.cut_bytes,
            ..StartReport::default()
        };
        if let Some(first) = replay.entries.first()
            && first.position > engine.applied_position() + 1
        {
            return Err(Error::Storage(tidemark_storage::Error::Corrupt {
                path: config.engine.data_dir.join("cmdlog"),
                position: 0,
                reason: format!(
                    "the command log starts at position {} but the checkpoint ends at {}: entries are missing",
                    first.position,
                    engine.applied_position()
                ),
            }));
        }
        for entry in &replay.entries {
            if entry.position > engine.applied_position() {
                engine.apply(entry)?;
                report.replayed_entries += 1;
            }
        }
        let checkpoint = engine.checkpoint()?;
        log.trim_below(checkpoint + 1)?;
        let (applied_tx, _) = tokio::sync::watch::channel(engine.applied_position());
        let inner = Arc::new(Inner {
            log,
            engine: SharedEngine(Arc::new(RwLock::new(engine))),
            metrics: Arc::new(Metrics::default()),
            fatal: Mutex::new(None),
            stopping: AtomicBool::new(false),
            since_checkpoint: AtomicU64::new(0),
            last_checkpoint: Mutex::new(Instant::now()),
            applied_tx,
            config,
        });
        let applier = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("tidemark-apply".into())
                .spawn(move || apply_loop(&inner, rx))
                .map_err(|e| Error::Storage(tidemark_storage::Error::Internal(format!("cannot start applier: {e}"))))?
        };
        let ticker = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("tidemark-tick".into())
                .spawn(move || tick_loop(&inner))
                .map_err(|e| Error::Storage(tidemark_storage::Error::Internal(format!("cannot start ticker: {e}"))))?
        };
        // The applier lives as long as the process: it must keep applying what is durable.
        drop(applier);
        Ok((Node { inner, threads: Arc::new(Mutex::new(vec![ticker])) }, report))
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
        self.inner.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn gauges(&self) -> EngineGauges {
        let e = self.inner.engine.read();
        let (events_ingested, events_rejected, realtime_rows, segments) = e.totals();
        EngineGauges {
            events_ingested,
            events_rejected,
            realtime_rows,
            realtime_bytes: e.realtime_bytes() as u64,
            segments,
            applied_position: e.applied_position(),
        }
    }

    /// Logs `cmd` and waits until it is durable and applied.
    pub async fn propose(&self, cmd: &Command) -> Result<Applied> {
        self.submit(cmd)?.wait().await
    }

    /// Logs `cmd` now and returns a handle to wait on. Entries submitted one after another
    /// are applied in that order, which a Kafka connection relies on for its pipelined
    /// produce requests (an idempotent producer's sequence numbers).
    pub fn submit(&self, cmd: &Command) -> Result<Pending> {
        if let Some(reason) = self.fatal() {
            return Err(Error::Stopped { reason });
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.log.append(now_ms(), cmd.kind(), cmd.encode(), Some(tx))?;
        Ok(Pending(rx))
    }

    /// Changes whenever entries were applied: Kafka Fetch long-polls on it.
    pub fn applied_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.applied_tx.subscribe()
    }

    /// Stops the ticker and checkpoints, so the next start replays little.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            let _ = t.join();
        }
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

fn set_fatal(inner: &Inner, reason: String) {
    tracing::error!(%reason, "node stopped accepting writes");
    let mut f = inner.fatal.lock().unwrap_or_else(|p| p.into_inner());
    if f.is_none() {
        *f = Some(reason);
    }
}

fn apply_loop(inner: &Inner, rx: Receiver<Durable<Ticket>>) {
    while let Ok(durable) = rx.recv() {
        match durable {
            Durable::Entries(entries) => {
                let mut needs_checkpoint = false;
                {
                    let mut engine = inner.engine.write();
                    for (entry, ticket) in entries {
                        if let Some(reason) = inner.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                            answer(ticket, Err(reason));
                            continue;
                        }
                        let result = engine.apply(&entry);
                        inner.metrics.commands_applied.fetch_add(1, Ordering::Relaxed);
                        match result {
                            Ok(applied) => answer(ticket, Ok(applied)),
                            Err(tidemark_storage::Error::BadCommand { kind, reason }) => {
                                // Refused before touching any state: the entry stays unapplied.
                                answer(ticket, Err(format!("log entry of kind {kind} refused: {reason}")));
                            }
                            Err(e) => {
                                let reason = format!("applying log position {} failed: {e}", entry.position);
                                set_fatal(inner, reason.clone());
                                answer(ticket, Err(reason));
                            }
                        }
                        needs_checkpoint |= entry.kind == KIND_CATALOG;
                    }
                    needs_checkpoint |= publish(inner, &mut engine);
                    inner.applied_tx.send_replace(engine.applied_position());
                }
                let n = inner.since_checkpoint.fetch_add(1, Ordering::Relaxed) + 1;
                if needs_checkpoint || n >= inner.config.checkpoint_every_entries {
                    checkpoint(inner);
                }
            }
            Durable::Failed { reason, tickets } => {
                set_fatal(inner, reason.clone());
                for t in tickets {
                    answer(t, Err(reason.clone()));
                }
            }
        }
    }
}

/// Publishes segments the writer finished; true if any were (the timeline changed).
fn publish(inner: &Inner, engine: &mut Engine) -> bool {
    match engine.publish_persisted(false) {
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

fn answer(ticket: Ticket, a: Answer) {
    if let Some(tx) = ticket {
        // The caller may have gone away (client disconnect); the entry is applied regardless.
        let _ = tx.send(a);
    }
}

fn checkpoint(inner: &Inner) {
    let result = inner.engine.write().checkpoint();
    match result {
        Ok(position) => {
            inner.since_checkpoint.store(0, Ordering::Relaxed);
            *inner.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            if let Err(e) = inner.log.trim_below(position + 1) {
                tracing::warn!(error = %e, "could not trim the command log");
            }
        }
        Err(e) => set_fatal(inner, format!("checkpoint failed: {e}")),
    }
}

fn tick_loop(inner: &Inner) {
    let tick = Duration::from_millis(inner.config.tick_interval_ms.max(10));
    while !inner.stopping.load(Ordering::SeqCst) {
        std::thread::sleep(tick);
        if inner.fatal.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            continue;
        }
        let now = now_ms();
        let commands: Vec<Command> = {
            let e = inner.engine.read();
            let mut c: Vec<Command> = e.persist_decisions(now).into_iter().map(Command::Persist).collect();
            c.extend(e.purge_decisions(now).into_iter().map(Command::Catalog));
            c
        };
        let mut waiting = Vec::new();
        for cmd in &commands {
            let (tx, rx) = tokio::sync::oneshot::channel();
            match inner.log.append(now, cmd.kind(), cmd.encode(), Some(tx)) {
                Ok(_) => waiting.push(rx),
                Err(e) => tracing::warn!(error = %e, "could not log a persist decision; will retry"),
            }
        }
        // Wait for our own decisions to apply, so the next tick does not decide them again.
        for rx in waiting {
            let _ = rx.blocking_recv();
        }
        // Segments finished since the last apply become visible now, and are checkpointed.
        let published = publish(inner, &mut inner.engine.write());
        if published {
            checkpoint(inner);
        }
        let stale = inner.last_checkpoint.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
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
