//! A running query's answer, as both doors stream it.
//!
//! The key's [`Slot`], the time limit and the answer's row cap travel with the batch stream,
//! so a door never collects an answer whole: it sends each batch as it comes. Dropping an
//! [`Answer`] (its client went away: hyper drops the body, tonic the response stream) drops
//! DataFusion's stream, which stops the query's work, and frees the slot and the memory it
//! held.
//!
//! Invariant: an answer yields at most `limits.result_rows_max` rows; when there were more,
//! it ends with the cap's error rather than ending as if complete, so no client mistakes a
//! cut answer for a whole one. After an error it yields nothing more.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use tokio::time::Instant;

use tidemark_catalog::access::Principal;

use crate::limits::{QueryLimits, ResultCap, Slot};
use crate::{Error, Result, SqlState};

/// One statement's answer, batch by batch.
pub struct Answer {
    schema: SchemaRef,
    batches: SendableRecordBatchStream,
    limits: QueryLimits,
    deadline: Instant,
    rows: u64,
    /// The row cap cut the last batch: the cap's error comes next.
    cut: bool,
    ended: bool,
    _slot: Slot,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer").field("rows", &self.rows).field("ended", &self.ended).finish_non_exhaustive()
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
            let batches =
                df.execute_stream().await.map_err(|e| limits.name_limit(tidemark_query::Error::from(e).into()))?;
            Ok::<_, Error>((schema, batches))
        };
        let (schema, batches) = tokio::time::timeout_at(deadline, start).await.map_err(|_| limits.timed_out())??;
        Ok(Answer { schema, batches, limits, deadline, rows: 0, cut: false, ended: false, _slot: slot })
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
            match tokio::time::timeout_at(self.deadline, self.batches.next()).await {
                Err(_) => Some(Err(self.limits.timed_out())),
                Ok(None) => None,
                Ok(Some(Err(e))) => Some(Err(self.limits.name_limit(tidemark_query::Error::from(e).into()))),
                Ok(Some(Ok(batch))) => Some(self.within_row_cap(batch)),
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
