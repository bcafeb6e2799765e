//! Applying an events entry: one request's beacons for a datasource, split by partition.
//! In steps, each its own function below, in the order apply has always taken them:
//!
//! ```text
//!  admit (datasource exists, idempotency key, partitions exist)
//!    └─ per part, in partition order:
//!         decode ─► sequence (idempotent producers) ─► verdicts ─► append (raw log) ─► roll up
//!  answer (parts back in the request's order; the key remembered with the answer)
//! ```
//!
//! Invariants:
//! - Parts are applied in partition order, the order a restart rebuilds realtime indexes in
//!   (sketch states depend on the order values arrive in); every part gets exactly one answer,
//!   and answers go back in the request's order.
//! - A part that does not decode, or that a producer's sequence rules refuse, is refused on
//!   its own and nothing of it is stored; the rest of the entry applies.
//! - A record is judged once: a binding verdict already in the entry (the edge's) wins;
//!   otherwise [`crate::verdict::verdict`], and its binding refusals go into the raw frame so
//!   every later read of the record honours them.

use std::collections::BTreeMap;

use tidemark_catalog::RejectReason;
use tidemark_catalog::standardise::{DroppedTag, Standardised};
use tidemark_storage::raw::frame::{Frame, Verdict as FrameVerdict};
use tidemark_storage::raw::record_batch::{self, BatchHeader, Record};

use crate::command::{EventsCommand, EventsHeader, EventsPart};
use crate::datasource::DatasourceState;
use crate::idempotency::{self, BatchOutcome, PartError, PartOutcome, RejectedLine, Seen};
use crate::producers::SequenceCheck;
use crate::rejects::{self, RejectsTable};
use crate::verdict::{self, WriteRules};
use crate::{Applied, Engine, Error, RefusalStatus, Result};

/// A record's verdict at apply: taken as standardised, or refused for a reason.
type Judged<'a> = std::result::Result<Standardised<'a>, RejectReason>;

impl Engine {
    pub(crate) fn apply_events(
        &mut self,
        position: u64,
        writer_time_ms: i64,
        cmd: EventsCommand,
    ) -> Result<Applied> {
        let header = &cmd.header;
        let Some(entry) = self.state.catalog.get(&header.datasource) else {
            return Ok(Applied::Refused {
                reason: format!("datasource {:?} does not exist", header.datasource),
                status: RefusalStatus::NotFound,
            });
        };
        let id = entry.id;
        if let Some(key) = &header.idempotency_key {
            match self.state.idempotency.check(
                &header.datasource,
                header.idempotency_scope(),
                key,
                header.body_hash,
            ) {
                Seen::New => {}
                Seen::Retry(outcome) => return Ok(Applied::Retry(outcome)),
                Seen::Conflict => {
                    return Ok(Applied::Refused {
                        reason: format!(
                            "Idempotency-Key {key:?} was already used for a different batch on {:?}; use a new key for new data",
                            header.datasource
                        ),
                        status: RefusalStatus::Conflict,
                    });
                }
            }
        }
        let spec = entry.spec_at(position).clone();
        // The domain's tag rules as of this position (none: not governed).
        let rules = self
            .state
            .rules
            .get(&self.state.catalog, &header.datasource, position);
        let catalog_version = self.state.catalog.applied_position();
        let ds = self
            .state
            .datasources
            .get_mut(&id)
            .ok_or_else(|| Error::Internal(format!("no state for datasource {id}")))?;
        if let Some(part) = header
            .parts
            .iter()
            .find(|p| p.partition as usize >= ds.partition_count())
        {
            return Ok(Applied::Refused {
                reason: format!(
                    "partition {} does not exist; {:?} has {}",
                    part.partition,
                    header.datasource,
                    ds.partition_count()
                ),
                status: RefusalStatus::Invalid,
            });
        }
        let mut outcome = BatchOutcome {
            log_position: position,
            ..BatchOutcome::default()
        };
        let write_rules = WriteRules {
            spec: &spec,
            tag_rules: rules.as_deref(),
            permitted: header
                .permitted_tags
                .as_deref()
                .map(|tags| (header.publisher.as_deref().unwrap_or_default(), tags)),
            future: header.future_ms_max.map(|limit| (writer_time_ms, limit)),
        };
        let mut parts: Vec<(usize, &EventsPart, Vec<u8>)> = header
            .parts
            .iter()
            .zip(cmd.batches)
            .enumerate()
            .map(|(slot, (part, batch))| (slot, part, batch))
            .collect();
        parts.sort_by_key(|(slot, part, _)| (part.partition, *slot));
        let slots: Vec<usize> = parts.iter().map(|(slot, _, _)| *slot).collect();
        for (_, part, mut batch) in parts {
            let (batch_header, records) = match decode(header, part, &batch) {
                Ok(decoded) => decoded,
                Err(refused) => {
                    outcome.parts.push(refused);
                    continue;
                }
            };
            match self
                .state
                .producers
                .check(id.0, part.partition, &batch_header)
            {
                SequenceCheck::Append => {}
                SequenceCheck::Duplicate(meta) => {
                    outcome.parts.push(PartOutcome {
                        partition: part.partition,
                        base_offset: meta.base_offset,
                        last_offset: meta.last_offset,
                        duplicate: true,
                        error: None,
                    });
                    continue;
                }
                SequenceCheck::Refuse(error) => {
                    outcome
                        .parts
                        .push(refused_part(part, PartError::Sequence(error)));
                    continue;
                }
            }
            let (judged, verdicts) = judge(&write_rules, part, &records);
            // Append: the batch as sent, with what apply decided in its frame.
            let (mut min_ms, mut max_ms) = (i64::MAX, i64::MIN);
            for s in judged.iter().flatten() {
                min_ms = min_ms.min(s.event.time_ms);
                max_ms = max_ms.max(s.event.time_ms);
            }
            let frame = Frame {
                log_position: position,
                writer_time_ms,
                catalog_version,
                min_event_ms: min_ms,
                max_event_ms: max_ms,
                publisher: header.publisher.clone(),
                verdicts,
            };
            let stored = ds.append_raw(part.partition, &frame, &mut batch)?;
            self.state.producers.record(
                id.0,
                part.partition,
                &batch_header,
                stored.base_offset,
                stored.last_offset,
                writer_time_ms,
            );
            outcome.parts.push(PartOutcome {
                partition: part.partition,
                base_offset: stored.base_offset,
                last_offset: stored.last_offset,
                duplicate: false,
                error: None,
            });
            let roll = RollUp {
                header,
                part,
                position,
                writer_time_ms,
                base_offset: stored.base_offset,
                domain: rules.as_deref().map(|r| r.domain()),
            };
            roll.apply(
                ds,
                &spec,
                &mut self.state.rejects,
                &mut outcome,
                &records,
                judged,
            );
        }
        // Answer: parts back in the request's order, and the key remembered with the answer.
        let mut answers: Vec<(usize, PartOutcome)> = slots
            .into_iter()
            .zip(std::mem::take(&mut outcome.parts))
            .collect();
        answers.sort_by_key(|(slot, _)| *slot);
        outcome.parts = answers.into_iter().map(|(_, answer)| answer).collect();
        outcome.rejected.sort_by_key(|r| r.index);
        if let Some(key) = &header.idempotency_key {
            let scope = header.idempotency_scope();
            self.state.idempotency.remember(
                &header.datasource,
                scope,
                key,
                header.body_hash,
                writer_time_ms,
                outcome.clone(),
            );
        }
        Ok(Applied::Events(outcome))
    }
}

/// A part that is refused whole: nothing of it is stored.
fn refused_part(part: &EventsPart, error: PartError) -> PartOutcome {
    PartOutcome {
        partition: part.partition,
        base_offset: -1,
        last_offset: -1,
        duplicate: false,
        error: Some(error),
    }
}

/// Decodes a part's batch under the entry's decompression cap (a client's bytes: a batch
/// that does not decode refuses its part, never the node).
fn decode(
    header: &EventsHeader,
    part: &EventsPart,
    batch: &[u8],
) -> std::result::Result<(BatchHeader, Vec<(i64, Record)>), PartOutcome> {
    let cap = header
        .decompressed_bytes_max
        .map_or(record_batch::DECOMPRESSED_BYTES_CEILING, |c| {
            usize::try_from(c)
                .unwrap_or(usize::MAX)
                .min(record_batch::DECOMPRESSED_BYTES_CEILING)
        });
    record_batch::decode_records_capped(batch, cap).map_err(|e| {
        refused_part(
            part,
            PartError::CorruptBatch {
                reason: e.to_string(),
            },
        )
    })
}

/// Each record's verdict, and the binding verdicts the frame keeps (the entry's own, plus
/// the ones apply decided now), by record index.
fn judge<'a>(
    rules: &WriteRules<'_>,
    part: &EventsPart,
    records: &'a [(i64, Record)],
) -> (Vec<Judged<'a>>, Vec<FrameVerdict>) {
    let binding: BTreeMap<u32, &crate::command::VerdictRecord> =
        part.verdicts.iter().map(|v| (v.index, v)).collect();
    let mut verdicts: Vec<FrameVerdict> = part.verdicts.iter().map(Into::into).collect();
    let judged = records
        .iter()
        .enumerate()
        .map(|(i, (_, r))| {
            if let Some(v) = binding.get(&(i as u32)) {
                return Err(RejectReason::Other {
                    code: v.code,
                    detail: v.reason.clone(),
                });
            }
            let value = r.value.as_deref().unwrap_or_default();
            match verdict::verdict(rules, value) {
                verdict::Verdict::Taken(standardised) => Ok(standardised),
                verdict::Verdict::Refused(reason) => Err(reason),
                // A right or a clock decided it: kept in the frame for replays.
                verdict::Verdict::Binding(reason) => {
                    verdicts.push(FrameVerdict {
                        record_index: i as u32,
                        code: reason.code(),
                        reason: reason.to_string(),
                    });
                    Err(reason)
                }
            }
        })
        .collect();
    verdicts.sort_by_key(|v| v.record_index);
    (judged, verdicts)
}

/// Where a part's judged records go once its batch is in the raw log: taken ones into the
/// realtime index, refused ones into `sys.rejects` and the answer.
struct RollUp<'a> {
    header: &'a EventsHeader,
    part: &'a EventsPart,
    position: u64,
    writer_time_ms: i64,
    /// The raw log offset of the part's first record.
    base_offset: i64,
    /// The governing domain, when the datasource is governed (dropped tags are counted).
    domain: Option<&'a str>,
}

impl RollUp<'_> {
    fn apply(
        &self,
        ds: &mut DatasourceState,
        spec: &tidemark_catalog::DatasourceSpec,
        rejects: &mut RejectsTable,
        outcome: &mut BatchOutcome,
        records: &[(i64, Record)],
        judged: Vec<Judged<'_>>,
    ) {
        for (i, r) in judged.into_iter().enumerate() {
            match r {
                Ok(standardised) => {
                    ds.add_event(
                        spec,
                        self.position,
                        self.writer_time_ms,
                        &standardised.event,
                    );
                    outcome.accepted += 1;
                    if let Some(domain) = self.domain {
                        note_dropped(&mut outcome.dropped_tags, domain, &standardised.dropped);
                        ds.tags_dropped += standardised.dropped.len() as u64;
                    }
                }
                Err(reason) => {
                    let text = reason.to_string();
                    rejects.push(rejects::RejectRow {
                        datasource: self.header.datasource.clone(),
                        partition: self.part.partition,
                        offset: self.base_offset + i as i64,
                        log_position: self.position,
                        writer_time_ms: self.writer_time_ms,
                        record_index: self.part.line(i),
                        code: reason.code(),
                        reason: text.clone(),
                        payload: rejects::payload_text(
                            records[i].1.value.as_deref().unwrap_or_default(),
                        ),
                    });
                    ds.events_rejected += 1;
                    outcome.rejected.push(RejectedLine {
                        index: self.part.line(i),
                        reason: text,
                    });
                }
            }
        }
    }
}

fn note_dropped(
    into: &mut Vec<idempotency::DroppedTagCount>,
    domain: &str,
    dropped: &[DroppedTag],
) {
    for d in dropped {
        if let Some(row) = into.iter_mut().find(|r| r.tag == d.key) {
            row.count += 1;
        } else if into.len() < idempotency::DROPPED_TAGS_LISTED {
            let suggestion = match &d.hint {
                tidemark_catalog::event::Hint::Suggest(t) => Some(t.clone()),
                _ => None,
            };
            into.push(idempotency::DroppedTagCount {
                tag: d.key.clone(),
                count: 1,
                suggestion,
                message: d.message(domain),
            });
        }
    }
}
