//! Idempotent producer state (KIP-98): per partition, each producer id's epoch and its last
//! five batches' sequence ranges and offsets, so a retried batch is recognised and answered
//! with its original offsets instead of being stored twice.
//!
//! It lives in the engine and changes only at apply, from the batch headers of entries in the
//! same log as the batches themselves: a crash can never leave the two out of step. The
//! checkpoint carries it; entries replayed after the checkpoint rebuild the rest.
//!
//! Invariants:
//! - The rules are Kafka's (`ProducerStateManager`): an older epoch is fenced; a known
//!   producer's new epoch must start at sequence 0; within an epoch a batch must continue the
//!   last sequence (wrapping at `i32::MAX`); a batch equal to one of the last five is a
//!   duplicate. A producer the partition has never seen (or has forgotten) may start anywhere.
//! - Expiry and id allocation read only entry writer times and applied state, so replicas
//!   and replays agree.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use tidemark_storage::raw::record_batch::BatchHeader;

/// Batches remembered per producer and partition: Kafka allows five in flight.
pub const BATCHES_REMEMBERED: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchMeta>,
    pub last_writer_time_ms: i64,
}

/// Why a producer's batch was refused; the Kafka door maps these to its error codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SequenceError {
    /// The batch's epoch is older than the partition has seen: another producer took over.
    InvalidProducerEpoch { epoch: i16, current: i16 },
    /// The batch does not continue the producer's sequence.
    OutOfOrderSequence { expected: i32, got: i32 },
}

impl std::fmt::Display for SequenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SequenceError::InvalidProducerEpoch { epoch, current } => {
                write!(
                    f,
                    "producer epoch {epoch} is fenced: the partition has seen epoch {current}"
                )
            }
            SequenceError::OutOfOrderSequence { expected, got } => {
                write!(
                    f,
                    "out of order sequence number: expected {expected}, got {got}"
                )
            }
        }
    }
}

/// What the producer state says about a batch about to be appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not an idempotent batch, or the next one in sequence: append it.
    Append,
    /// Already stored: answer with its original offsets, append nothing.
    Duplicate(BatchMeta),
    Refuse(SequenceError),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerStates {
    next_producer_id: i64,
    /// datasource id → partition → producer id → state. BTreeMaps so iteration (expiry,
    /// serialization) is in a fixed order.
    partitions: BTreeMap<u64, BTreeMap<u32, BTreeMap<i64, ProducerEntry>>>,
    /// Writer time of the last expiry sweep.
    #[serde(default)]
    swept_at_ms: i64,
}

fn last_seq_of(h: &BatchHeader) -> i32 {
    // Sequences wrap at i32::MAX back to 0, as Kafka's DefaultRecordBatch.incrementSequence.
    let last = i64::from(h.base_sequence) + i64::from(h.last_offset_delta);
    if last > i64::from(i32::MAX) {
        (last - i64::from(i32::MAX) - 1) as i32
    } else {
        last as i32
    }
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

impl ProducerStates {
    /// Allocates a producer id, or bumps the epoch of `existing` (KIP-360: a producer that hit
    /// an error re-initialises with its id and epoch). Returns (id, epoch).
    pub fn init_producer(&mut self, existing: Option<(i64, i16)>) -> (i64, i16) {
        if let Some((id, epoch)) = existing
            && id >= 0
            && id < self.next_producer_id
            && epoch < i16::MAX - 1
        {
            return (id, epoch.max(-1) + 1);
        }
        let id = self.next_producer_id;
        self.next_producer_id += 1;
        (id, 0)
    }

    pub fn check(&self, datasource: u64, partition: u32, h: &BatchHeader) -> SequenceCheck {
        if h.producer_id < 0 {
            return SequenceCheck::Append;
        }
        let Some(entry) = self
            .partitions
            .get(&datasource)
            .and_then(|p| p.get(&partition)?.get(&h.producer_id))
        else {
            return SequenceCheck::Append;
        };
        let first = h.base_sequence;
        let last = last_seq_of(h);
        if h.producer_epoch < entry.epoch {
            return SequenceCheck::Refuse(SequenceError::InvalidProducerEpoch {
                epoch: h.producer_epoch,
                current: entry.epoch,
            });
        }
        if h.producer_epoch > entry.epoch {
            return if first == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::Refuse(SequenceError::OutOfOrderSequence {
                    expected: 0,
                    got: first,
                })
            };
        }
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
        {
            return SequenceCheck::Duplicate(*dup);
        }
        match entry.batches.back() {
            Some(b) if first != next_seq(b.last_seq) => {
                SequenceCheck::Refuse(SequenceError::OutOfOrderSequence {
                    expected: next_seq(b.last_seq),
                    got: first,
                })
            }
            _ => SequenceCheck::Append,
        }
    }

    /// Records an appended idempotent batch.
    pub fn record(
        &mut self,
        datasource: u64,
        partition: u32,
        h: &BatchHeader,
        base_offset: i64,
        last_offset: i64,
        writer_time_ms: i64,
    ) {
        if h.producer_id < 0 {
            return;
        }
        // Ids are allocated here, so an id seen in a batch is never handed out again.
        self.next_producer_id = self.next_producer_id.max(h.producer_id.saturating_add(1));
        let entry = self
            .partitions
            .entry(datasource)
            .or_default()
            .entry(partition)
            .or_default()
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_writer_time_ms: 0,
            });
        if h.producer_epoch != entry.epoch {
            entry.epoch = h.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMeta {
            first_seq: h.base_sequence,
            last_seq: last_seq_of(h),
            base_offset,
            last_offset,
        });
        entry.last_writer_time_ms = writer_time_ms;
    }

    /// Forgets producers idle for `idle_ms` of writer time; sweeps at most once a minute.
    pub fn expire(&mut self, writer_time_ms: i64, idle_ms: i64) {
        if writer_time_ms < self.swept_at_ms.saturating_add(60_000) {
            return;
        }
        self.swept_at_ms = writer_time_ms;
        let horizon = writer_time_ms.saturating_sub(idle_ms);
        for parts in self.partitions.values_mut() {
            for producers in parts.values_mut() {
                producers.retain(|_, e| e.last_writer_time_ms >= horizon);
            }
            parts.retain(|_, p| !p.is_empty());
        }
        self.partitions.retain(|_, p| !p.is_empty());
    }

    pub fn remove_datasource(&mut self, datasource: u64) {
        self.partitions.remove(&datasource);
    }

    /// Producers with state on a partition (for tests and `sys` views).
    pub fn producers_on(&self, datasource: u64, partition: u32) -> usize {
        self.partitions
            .get(&datasource)
            .and_then(|p| p.get(&partition))
            .map_or(0, BTreeMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_storage::raw::record_batch::{Record, encode_with_producer, parse_header};

    fn header(pid: i64, epoch: i16, seq: i32, records: usize) -> BatchHeader {
        let recs: Vec<Record> = (0..records)
            .map(|_| Record {
                timestamp_ms: 1,
                key: None,
                value: None,
                headers: vec![],
            })
            .collect();
        parse_header(&encode_with_producer(&recs, pid, epoch, seq)).expect("valid batch")
    }

    #[test]
    fn kafka_sequence_rules() {
        let mut s = ProducerStates::default();
        let (pid, epoch) = s.init_producer(None);
        assert_eq!((pid, epoch), (0, 0));
        let b0 = header(pid, 0, 0, 3);
        assert_eq!(s.check(1, 0, &b0), SequenceCheck::Append);
        s.record(1, 0, &b0, 100, 102, 10);
        // Retry of the same batch: a duplicate with its original offsets.
        assert_eq!(
            s.check(1, 0, &b0),
            SequenceCheck::Duplicate(BatchMeta {
                first_seq: 0,
                last_seq: 2,
                base_offset: 100,
                last_offset: 102
            })
        );
        // A gap is out of order; the next batch is fine; other partitions are independent.
        assert_eq!(
            s.check(1, 0, &header(pid, 0, 5, 1)),
            SequenceCheck::Refuse(SequenceError::OutOfOrderSequence {
                expected: 3,
                got: 5
            })
        );
        assert_eq!(s.check(1, 0, &header(pid, 0, 3, 1)), SequenceCheck::Append);
        assert_eq!(s.check(1, 1, &header(pid, 0, 77, 1)), SequenceCheck::Append);
        // A bumped epoch must restart at 0; the old epoch is then fenced.
        let (_, e1) = s.init_producer(Some((pid, 0)));
        assert_eq!(e1, 1);
        assert!(matches!(
            s.check(1, 0, &header(pid, 1, 3, 1)),
            SequenceCheck::Refuse(_)
        ));
        let b1 = header(pid, 1, 0, 1);
        s.record(1, 0, &b1, 103, 103, 20);
        assert_eq!(
            s.check(1, 0, &header(pid, 0, 3, 1)),
            SequenceCheck::Refuse(SequenceError::InvalidProducerEpoch {
                epoch: 0,
                current: 1
            })
        );
        // Non-idempotent batches are never checked.
        assert_eq!(s.check(1, 0, &header(-1, -1, -1, 1)), SequenceCheck::Append);
    }

    #[test]
    fn only_five_batches_are_remembered_and_sequences_wrap() {
        let mut s = ProducerStates::default();
        for i in 0..7 {
            s.record(1, 0, &header(9, 0, i, 1), i64::from(i), i64::from(i), 0);
        }
        assert!(matches!(
            s.check(1, 0, &header(9, 0, 6, 1)),
            SequenceCheck::Duplicate(_)
        ));
        assert!(matches!(
            s.check(1, 0, &header(9, 0, 2, 1)),
            SequenceCheck::Duplicate(_)
        ));
        assert_eq!(
            s.check(1, 0, &header(9, 0, 1, 1)),
            SequenceCheck::Refuse(SequenceError::OutOfOrderSequence {
                expected: 7,
                got: 1
            }),
            "older than the five remembered"
        );
        let mut w = ProducerStates::default();
        w.record(1, 0, &header(4, 0, i32::MAX - 1, 2), 0, 1, 0);
        assert_eq!(
            w.check(1, 0, &header(4, 0, 0, 1)),
            SequenceCheck::Append,
            "wraps to 0"
        );
        assert_eq!(
            s.init_producer(None).0,
            10,
            "ids seen in batches are never reused"
        );
    }

    #[test]
    fn a_client_chosen_huge_producer_id_does_not_overflow() {
        let mut s = ProducerStates::default();
        s.record(1, 0, &header(i64::MAX, 0, 0, 1), 0, 0, 0);
        assert_eq!(
            s.check(1, 0, &header(i64::MAX, 0, 1, 1)),
            SequenceCheck::Append
        );
    }

    #[test]
    fn idle_producers_expire_by_writer_time() {
        let mut s = ProducerStates::default();
        s.record(1, 0, &header(1, 0, 0, 1), 0, 0, 1_000);
        s.record(1, 0, &header(2, 0, 0, 1), 1, 1, 500_000);
        s.expire(600_000, 200_000);
        assert_eq!(s.producers_on(1, 0), 1);
        // A forgotten producer may continue at any sequence.
        assert_eq!(s.check(1, 0, &header(1, 0, 42, 1)), SequenceCheck::Append);
    }
}
