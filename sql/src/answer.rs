//! A running query's answer, as both doors stream it.
//!
//! The query runs in its own task, which holds the key's [`Slot`] and DataFusion's stream
//! and hands batches over a one-batch channel, so a door never collects an answer whole: it
//! sends each batch as it comes. The task ends at the time limit whether or not the client
//! reads (a client that stops reading cannot hold a slot or query memory past it), and
//! dropping an [`Answer`] (its client went away: hyper drops the body, tonic the response
//! stream) aborts the task, which stops the query's work and frees the slot and memory.
//!
//! Invariant: an answer yields at most `limits.result_rows_max` rows; when there were more,
//! it ends with the cap's error rather than ending as if complete, so no client mistakes a
//! cut answer for a whole one. After an error it yields nothing more.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use tidemark_catalog::access::Principal;

use crate::limits::{QueryLimits, ResultCap, Slot};
use crate::{Error, Result, SqlState};

/// One statement's answer, batch by batch.
pub struct Answer {
    schema: SchemaRef,
    batches: mpsc::Receiver<Result<RecordBatch>>,
    run: Arc<Run>,
    limits: QueryLimits,
    rows: u64,
    /// The row cap cut the last batch: the cap's error comes next.
    cut: bool,
    ended: bool,
    /// Stops the query's task when the answer is dropped (its client went away).
    _abort: AbortOnDrop,
}

/// How the query's task ended, for the answer to tell a complete end from a cut one.
#[derive(Debug, Default)]
struct Run {
    complete: AtomicBool,
    timed_out: AtomicBool,
}

#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the query's stream to its end or its deadline, whichever comes first, handing
/// batches over one at a time. The slot and DataFusion's stream (with the memory its
/// operators hold) live here, not in the answer: a client that stops reading cannot keep
/// them past the time limit, because this task ends at the deadline either way.
async fn drive(
    mut stream: SendableRecordBatchStream,
    tx: mpsc::Sender<Result<RecordBatch>>,
    deadline: Instant,
    limits: QueryLimits,
    run: Arc<Run>,
    slot: Slot,
) {
    let _slot = slot;
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            () = tokio::time::sleep_until(deadline) => {
                run.timed_out.store(true, Ordering::Relaxed);
                return;
            }
        };
        let Some(item) = item else {
            run.complete.store(true, Ordering::Relaxed);
            return;
        };
        let failed = item.is_err();
        let item = item.map_err(|e| limits.name_limit(tidemark_query::Error::from(e).into()));
        tokio::select! {
            sent = tx.send(item) => {
                if sent.is_err() || failed {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                run.timed_out.store(true, Ordering::Relaxed);
                return;
            }
        }
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("rows", &self.rows)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Answer {
    /// Takes a place among `caller`'s running queries, plans `text` and starts executing it,
    /// all within the time limit.
    pub async fn start(state: &SqlState, text: &str, caller: &Principal) -> Result<Answer> {
        let limits = state.gate.limits;
        limits.check_text(text)?;
        let slot = state.gate.enter(&caller.actor())?;
        let deadline = Instant::now() + limits.timeout();
        let start = async {
            let df = crate::plan(state, text, caller).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let batches = df
                .execute_stream()
                .await
                .map_err(|e| limits.name_limit(tidemark_query::Error::from(e).into()))?;
            Ok::<_, Error>((schema, batches))
        };
        let (schema, stream) = tokio::time::timeout_at(deadline, start)
            .await
            .map_err(|_| limits.timed_out())??;
        // One batch in hand and one on its way: the query runs at most that far ahead of
        // its client.
        let (tx, batches) = mpsc::channel(1);
        let run = Arc::new(Run::default());
        let task = tokio::spawn(drive(stream, tx, deadline, limits, run.clone(), slot));
        Ok(Answer {
            schema,
            batches,
            run,
            limits,
            rows: 0,
            cut: false,
            ended: false,
            _abort: AbortOnDrop(task.abort_handle()),
        })
    }

    /// The answer's columns (DataFusion's types: dictionary columns stay dictionaries).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// The next batch; `None` once the answer is complete or after an error.
    pub async fn next(&mut self) -> Option<Result<RecordBatch>> {
        if self.ended {
            return None;
        }
        let item = if self.cut {
            Some(Err(self.limits.result_capped(ResultCap::Rows)))
        } else {
            match self.batches.recv().await {
                Some(Err(e)) => Some(Err(e)),
                Some(Ok(batch)) => Some(self.within_row_cap(batch)),
                None if self.run.complete.load(Ordering::Relaxed) => None,
                None if self.run.timed_out.load(Ordering::Relaxed) => {
                    Some(Err(self.limits.timed_out()))
                }
                // The task ended otherwise (a panic in an operator): never a clean end.
                None => Some(Err(Error::Encode(
                    "the query stopped before its answer was complete".into(),
                ))),
            }
        };
        if !matches!(item, Some(Ok(_))) {
            self.ended = true;
        }
        item
    }

    fn within_row_cap(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let rows = batch.num_rows() as u64;
        let left = self.limits.result_rows_max.saturating_sub(self.rows);
        if rows == 0 {
            return Ok(batch);
        }
        if left == 0 {
            return Err(self.limits.result_capped(ResultCap::Rows));
        }
        if rows > left {
            self.cut = true;
            self.rows += left;
            // `left` < `rows`, which came from a usize.
            return Ok(batch.slice(0, usize::try_from(left).unwrap_or(0)));
        }
        self.rows += rows;
        Ok(batch)
    }
}
