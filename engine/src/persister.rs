//! The segment writer: a thread that turns persisting indexes into segment files off the
//! engine lock, so ingest and queries keep going while a large interval is written. Apply
//! decides what to persist (deterministically, at a log position); this thread only does the
//! I/O, and the engine publishes each finished segment the next time it runs.
//!
//! A write that fails for want of descriptors, disk space or memory ([`Error::is_shortage`])
//! is tried again every second for up to [`SHORTAGE_WAIT`], with the shortage reported
//! ([`PersistControl`]), rather than stopping the node at once: the interval stays queryable
//! in memory and the Raft log still holds its entries. The wait is bounded because some
//! callers wait for the writer under the engine lock (a checkpoint's last try, a reindex's
//! publish); a shortage that outlasts it fails the job, which stops the node as before.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::datasource::PersistJob;
use crate::{Error, Result};
use tidemark_storage::segment::{Segment, WrittenSegment};

pub(crate) struct Finished {
    pub(crate) job: PersistJob,
    pub(crate) result: Result<(WrittenSegment, Segment)>,
    pub(crate) seconds: f64,
}

#[derive(Debug)]
pub(crate) struct Persister {
    jobs: Option<Sender<PersistJob>>,
    /// Behind a mutex only so the engine stays `Sync` for readers; only the writer side uses it.
    finished: Mutex<Receiver<Finished>>,
    thread: Option<JoinHandle<()>>,
    in_flight: usize,
    idle: PersistIdle,
    control: PersistControl,
}

/// The segment writer's shortage state, shared so the node reads and stops it without the
/// engine lock (a caller may hold that lock while it waits for the writer).
#[derive(Debug, Clone, Default)]
pub struct PersistControl {
    /// Why the job at hand is waiting to be tried again, if it is.
    trouble: Arc<Mutex<Option<String>>>,
    /// Set when the node stops: a shortage is then an error, not a reason to wait.
    stopping: Arc<AtomicBool>,
}

impl PersistControl {
    /// Why a segment write is waiting to be tried again, if one is.
    pub fn trouble(&self) -> Option<String> {
        self.trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The node is stopping: a job held up by a shortage fails now instead of waiting.
    pub fn stop_retrying(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// How long the writer waits before trying a job again after a shortage.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long one job may wait out a shortage before it fails.
const SHORTAGE_WAIT: Duration = Duration::from_secs(60);

/// Waits, without the engine lock, until the segment writer has no job left: checkpoints wait
/// for it (a checkpoint never records a persist in flight), and waiting here first keeps the
/// engine lock short.
#[derive(Debug, Clone, Default)]
pub struct PersistIdle(Arc<(Mutex<usize>, Condvar)>);

impl PersistIdle {
    fn add(&self, n: isize) {
        let (count, cv) = &*self.0;
        let mut c = count.lock().unwrap_or_else(|p| p.into_inner());
        *c = c.saturating_add_signed(n);
        if *c == 0 {
            cv.notify_all();
        }
    }

    /// Returns whether the writer was idle within `timeout`.
    pub fn wait(&self, timeout: Duration) -> bool {
        let (count, cv) = &*self.0;
        let c = count.lock().unwrap_or_else(|p| p.into_inner());
        let (c, _) = cv
            .wait_timeout_while(c, timeout, |c| *c > 0)
            .unwrap_or_else(|p| p.into_inner());
        *c == 0
    }
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished")
            .field("segment", &self.job.id)
            .field("ok", &self.result.is_ok())
            .finish()
    }
}

impl Persister {
    pub(crate) fn start() -> Result<Persister> {
        let (jobs_tx, jobs_rx) = channel::<PersistJob>();
        let (done_tx, done_rx) = channel::<Finished>();
        let idle = PersistIdle::default();
        let outstanding = idle.clone();
        let control = PersistControl::default();
        let shared = control.clone();
        let thread = std::thread::Builder::new()
            .name("tidemark-persist".into())
            .spawn(move || {
                while let Ok(job) = jobs_rx.recv() {
                    let started = std::time::Instant::now();
                    let result = run_until_no_shortage(&job, &shared);
                    let seconds = started.elapsed().as_secs_f64();
                    let sent = done_tx.send(Finished {
                        job,
                        result,
                        seconds,
                    });
                    outstanding.add(-1);
                    if sent.is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start the segment writer: {e}")))?;
        Ok(Persister {
            jobs: Some(jobs_tx),
            finished: Mutex::new(done_rx),
            thread: Some(thread),
            in_flight: 0,
            idle,
            control,
        })
    }

    pub(crate) fn submit(&mut self, job: PersistJob) -> Result<()> {
        let tx = self.jobs.as_ref().ok_or(Error::Closed {
            what: "segment writer",
        })?;
        self.idle.add(1);
        if tx.send(job).is_err() {
            self.idle.add(-1);
            return Err(Error::Closed {
                what: "segment writer",
            });
        }
        self.in_flight += 1;
        Ok(())
    }

    pub(crate) fn control(&self) -> PersistControl {
        self.control.clone()
    }

    pub(crate) fn idle(&self) -> PersistIdle {
        self.idle.clone()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Finished jobs; with `wait`, blocks until every submitted job has finished.
    pub(crate) fn collect(&mut self, wait: bool) -> Vec<Finished> {
        let mut out = Vec::new();
        let finished = self.finished.get_mut().unwrap_or_else(|p| p.into_inner());
        while self.in_flight > 0 {
            let next = if wait {
                finished.recv().ok()
            } else {
                finished.try_recv().ok()
            };
            match next {
                Some(f) => {
                    self.in_flight -= 1;
                    out.push(f);
                }
                None => break,
            }
        }
        out
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        // Closing the job channel ends the thread after the job at hand.
        self.control.stop_retrying();
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_until_no_shortage(
    job: &PersistJob,
    control: &PersistControl,
) -> Result<(WrittenSegment, Segment)> {
    let started = std::time::Instant::now();
    loop {
        let result = job.run();
        match &result {
            Err(e)
                if e.is_shortage()
                    && !control.stopping.load(Ordering::SeqCst)
                    && started.elapsed() < SHORTAGE_WAIT =>
            {
                let why = format!("writing segment {} is waiting to be retried: {e}", job.id);
                tracing::warn!("{why}");
                *control.trouble.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                std::thread::sleep(RETRY_AFTER);
            }
            _ => {
                *control.trouble.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return result;
            }
        }
    }
}
