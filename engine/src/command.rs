//! The commands carried by log entries, and their bytes. Every payload starts with a format
//! version so a node can refuse, clearly, an entry written by a newer node.
//!
//! ```text
//! kind 1 catalog:  version u8 | JSON CatalogCommand (formats 1, 2)
//!                  version u8 | JSON {"actor": "...", "command": CatalogCommand} (format 3)
//! kind 2 events:   version u8 | header_len u32 LE | JSON EventsHeader | RecordBatch v2 bytes of
//!                  each part, concatenated (lengths in the header)
//! kind 3 persist:  version u8 | JSON PersistCommand
//! kind 4 producer: version u8 | JSON InitProducerCommand
//! kind 5 offsets:  version u8 | JSON OffsetsCommand
//! kind 6 timeline: version u8 | JSON TimelineCommand
//! ```

use serde::{Deserialize, Serialize};
use tidemark_catalog::audit::ACTOR_UNRECORDED;
use tidemark_catalog::{CatalogCommand, DatasourceId};

use crate::{Error, Result};
use tidemark_storage::raw::frame::Verdict;

/// One log entry as the engine applies it: its position in the log (the Raft index), the
/// writer's clock when it was logged (apply's only clock), and a command's kind and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub position: u64,
    pub writer_time_ms: i64,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// The newest command format this node reads. Each command is written in the oldest format
/// that can carry it, so a node not yet upgraded applies what it knows and stops, clearly
/// (`NewerCommand`), at the first entry it cannot apply, instead of skipping it and diverging.
/// Format 2 adds the tag registry's catalog operations; format 3 carries the actor of every
/// catalog command (for the audit log) and adds the API key operations; format 4 adds the
/// timeline's `Delete` and `Copied`; format 5 the running copies' `CopyStarted` and
/// `CopyFinished`; format 6 scopes an events entry's idempotency key by its publisher
/// (`EventsHeader::idempotency_per_publisher`); format 7 lets a raw retention entry spare
/// the files a running job still reads (`TimelineCommand::Retain::spare_running_jobs`).
pub const COMMAND_VERSION: u8 = 7;
pub const KIND_CATALOG: u8 = 1;
pub const KIND_EVENTS: u8 = 2;
pub const KIND_PERSIST: u8 = 3;
pub const KIND_PRODUCER: u8 = 4;
pub const KIND_OFFSETS: u8 = 5;
pub const KIND_TIMELINE: u8 = 6;

/// One request's beacons for a datasource, split by partition, as the edge received them.
/// One request is one entry, so it is applied (and counted, and deduplicated) as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsCommand {
    pub header: EventsHeader,
    /// Per part, a Kafka RecordBatch v2, one record per beacon (value = the beacon's bytes).
    pub batches: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsHeader {
    pub datasource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// The tags the publisher's key may send to this datasource, when its grant names them.
    /// Set by doors that cannot check records at the edge (Kafka): apply rejects a record
    /// with any other tag and keeps that verdict in the frame as binding, as the HTTP edge's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permitted_tags: Option<Vec<String>>,
    /// Makes a retried batch count once (scoped to the datasource, remembered for a window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The key is scoped by `publisher` too, so one publisher's keys never meet another's
    /// (format 6; older entries share one scope per datasource, and replay so).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idempotency_per_publisher: bool,
    /// Hash of the request body, to tell a retry from a different batch under the same key.
    #[serde(default)]
    pub body_hash: u64,
    pub parts: Vec<EventsPart>,
    /// Events stamped further than this ahead of the entry's writer time are rejected at
    /// apply. Set by doors that leave all per-record checks to apply (Kafka); it travels in
    /// the entry so every replica and replay applies the same limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub future_ms_max: Option<i64>,
    /// A part whose records decompress to more than this is refused at apply (as corrupt).
    /// Travels in the entry for the same reason as `future_ms_max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decompressed_bytes_max: Option<u64>,
}

impl EventsHeader {
    /// The scope of the entry's idempotency key within its datasource: the publisher's key
    /// id for a format-6 entry that asks for it, else none (one shared scope).
    pub fn idempotency_scope(&self) -> Option<&str> {
        if self.idempotency_per_publisher {
            self.publisher.as_deref()
        } else {
            None
        }
    }
}

/// The beacons of one request that go to one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsPart {
    pub partition: u32,
    /// The request line of each record, to answer per line; empty means 0, 1, 2, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<u32>,
    /// Binding edge verdicts (shape, future timestamp, rights), by record index in the part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<VerdictRecord>,
    pub batch_len: u32,
}

impl EventsPart {
    pub fn line(&self, record: usize) -> u32 {
        self.lines.get(record).copied().unwrap_or(record as u32)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRecord {
    pub index: u32,
    pub code: u8,
    pub reason: String,
}

impl From<&VerdictRecord> for Verdict {
    fn from(v: &VerdictRecord) -> Verdict {
        Verdict {
            record_index: v.index,
            code: v.code,
            reason: v.reason.clone(),
        }
    }
}

/// Ends a realtime interval (or its late chunk) by writing it as a segment. Decided by the
/// writer and logged, so every replay persists at the same log position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistCommand {
    pub datasource: DatasourceId,
    pub interval_start_ms: i64,
    /// Persist the late chunk of an already persisted interval rather than its main index.
    pub late: bool,
    pub reason: PersistReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistReason {
    /// The writer's clock passed the interval's end plus the late window.
    IntervalClosed,
    /// The realtime index reached its memory bound.
    MemoryBound,
}

/// Allocates an idempotent producer id, or bumps the epoch of an existing one (KIP-360).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitProducerCommand {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing: Option<(i64, i16)>,
}

/// Consumer group offsets: committed, deleted per partition, or dropped with their group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum OffsetsCommand {
    Commit {
        group: String,
        offsets: Vec<CommittedOffset>,
    },
    Delete {
        group: String,
        partitions: Vec<(String, u32)>,
    },
    DeleteGroup {
        group: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
    #[serde(default = "no_epoch")]
    pub leader_epoch: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
}

fn no_epoch() -> i32 {
    -1
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A catalog change and who asked for it (`key:<id>`, `anonymous`, `system`; entries of
    /// formats 1 and 2 decode as `unrecorded`).
    Catalog {
        command: CatalogCommand,
        actor: String,
    },
    Events(EventsCommand),
    Persist(PersistCommand),
    InitProducer(InitProducerCommand),
    Offsets(OffsetsCommand),
    Timeline(TimelineCommand),
}

/// Changes to a datasource's segment timeline. Reprocessing an interval from the raw log
/// (ARCHITECTURE.md, invariant 5): `Start` fixes what is
/// rebuilt: the raw batches applied before it, under the spec and tag rules in force at its
/// position, which is also the job's id and the new segments' version. Every replica builds
/// the same segments off its engine lock; `Publish`, logged by the leader once its own build
/// is done, swaps them in for the shards they replace in one step, so queries see the old
/// version or the new one, never a mix. `Cancel` abandons a job (its build failed, or a DBA
/// asked) and keeps the old version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum TimelineCommand {
    Start {
        datasource: DatasourceId,
        /// Aligned to the datasource's segment granularity at apply.
        start_ms: i64,
        end_ms: i64,
        actor: String,
    },
    Publish {
        job: u64,
    },
    Cancel {
        job: u64,
        reason: String,
    },
    /// Merges the shards of each interval of [`start_ms`, `end_ms`) into one segment from the
    /// segments themselves, rolled up to `granularity` if given (a coarser query granularity),
    /// published like a reindex (`Publish`/`Cancel` with the job's id).
    Compact {
        datasource: DatasourceId,
        start_ms: i64,
        end_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        granularity: Option<tidemark_catalog::Period>,
        actor: String,
    },
    /// Raw log and rejects retention: removes raw log files whose events are all older than
    /// `raw_before_ms` (and that no realtime index needs), and rejects received before
    /// `rejects_before_ms`.
    Retain {
        datasource: DatasourceId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw_before_ms: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rejects_before_ms: Option<i64>,
        actor: String,
        /// Apply keeps the raw files while a job runs over an interval before
        /// `raw_before_ms` (format 7; older entries removed them regardless, and replay so).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        spare_running_jobs: bool,
    },
    /// Takes every whole segment interval of [`start_ms`, `end_ms`) out of the timeline,
    /// segments and realtime rows alike (a DBA's drop, or retention). The raw log keeps its
    /// batches, so a reindex can bring the interval back until raw retention removes them.
    Drop {
        datasource: DatasourceId,
        start_ms: i64,
        end_ms: i64,
        actor: String,
    },
    /// A copy of data taken outside tidemark's reach (an export, a backup) on `node`,
    /// logged once it is written: it shows as a job, and a later deletion names it. (Format
    /// 4; newer nodes log `CopyStarted` and `CopyFinished` around the copy instead.)
    Copied(crate::copies::CopyRecord),
    /// A copy starting on `node`: a running job on every replica (see `copies.rs`); ended by
    /// `CopyFinished` or `Cancel`.
    CopyStarted(crate::copies::CopyRecord),
    /// A running copy written whole, with what it wrote.
    CopyFinished(crate::copies::CopyFinish),
    /// Takes the raw beacons `filter` matches (with event times in [`start_ms`, `end_ms`),
    /// all time if absent) out of the raw log, and rebuilds the segment intervals that
    /// counted them; published like a reindex (see `delete.rs`). `where_text` is what the
    /// DBA typed, for the job's record and the audit log.
    Delete {
        datasource: DatasourceId,
        filter: tidemark_catalog::record_filter::RecordFilter,
        where_text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_ms: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        end_ms: Option<i64>,
        actor: String,
    },
}

/// Format 3's catalog payload.
#[derive(Serialize, Deserialize)]
struct CatalogEnvelope {
    actor: String,
    command: CatalogCommand,
}

impl Command {
    pub fn catalog(command: CatalogCommand, actor: impl Into<String>) -> Command {
        Command::Catalog {
            command,
            actor: actor.into(),
        }
    }

    pub fn kind(&self) -> u8 {
        match self {
            Command::Catalog { .. } => KIND_CATALOG,
            Command::Events(_) => KIND_EVENTS,
            Command::Persist(_) => KIND_PERSIST,
            Command::InitProducer(_) => KIND_PRODUCER,
            Command::Offsets(_) => KIND_OFFSETS,
            Command::Timeline(_) => KIND_TIMELINE,
        }
    }

    /// The oldest format that carries this command.
    pub fn format(&self) -> u8 {
        match self {
            Command::Catalog { .. } => 3,
            Command::Timeline(TimelineCommand::Delete { .. } | TimelineCommand::Copied(_)) => 4,
            Command::Timeline(
                TimelineCommand::CopyStarted(_) | TimelineCommand::CopyFinished(_),
            ) => 5,
            Command::Events(e) if e.header.idempotency_per_publisher => 6,
            Command::Timeline(TimelineCommand::Retain {
                spare_running_jobs: true,
                ..
            }) => 7,
            _ => 1,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.format()];
        match self {
            Command::Catalog { command, actor } => {
                out.extend_from_slice(&to_json(&CatalogEnvelope {
                    actor: actor.clone(),
                    command: command.clone(),
                }))
            }
            Command::Persist(p) => out.extend_from_slice(&to_json(p)),
            Command::InitProducer(p) => out.extend_from_slice(&to_json(p)),
            Command::Offsets(o) => out.extend_from_slice(&to_json(o)),
            Command::Timeline(r) => out.extend_from_slice(&to_json(r)),
            Command::Events(e) => {
                let header = to_json(&e.header);
                out.extend_from_slice(&(header.len() as u32).to_le_bytes());
                out.extend_from_slice(&header);
                for b in &e.batches {
                    out.extend_from_slice(b);
                }
            }
        }
        out
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Command> {
        let bad = |reason: String| Error::BadCommand { kind, reason };
        let (&version, body) = payload
            .split_first()
            .ok_or_else(|| bad("empty payload".into()))?;
        if version > COMMAND_VERSION {
            return Err(Error::NewerCommand { kind, version });
        }
        if version == 0 {
            return Err(bad("command format version 0 does not exist".into()));
        }
        match kind {
            KIND_CATALOG if version < 3 => serde_json::from_slice(body)
                .map(|command| Command::catalog(command, ACTOR_UNRECORDED))
                .map_err(|e| bad(e.to_string())),
            KIND_CATALOG => serde_json::from_slice::<CatalogEnvelope>(body)
                .map(|e| Command::Catalog {
                    command: e.command,
                    actor: e.actor,
                })
                .map_err(|e| bad(e.to_string())),
            KIND_PERSIST => serde_json::from_slice(body)
                .map(Command::Persist)
                .map_err(|e| bad(e.to_string())),
            KIND_PRODUCER => serde_json::from_slice(body)
                .map(Command::InitProducer)
                .map_err(|e| bad(e.to_string())),
            KIND_OFFSETS => serde_json::from_slice(body)
                .map(Command::Offsets)
                .map_err(|e| bad(e.to_string())),
            KIND_TIMELINE => {
                let mut cmd: TimelineCommand =
                    serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
                // Only format 7 may spare running jobs: an older entry applies as it did.
                if let TimelineCommand::Retain {
                    spare_running_jobs, ..
                } = &mut cmd
                {
                    *spare_running_jobs &= version >= 7;
                }
                Ok(Command::Timeline(cmd))
            }
            KIND_EVENTS => {
                let len = body
                    .get(..4)
                    .ok_or_else(|| bad("events header length missing".into()))?;
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                let header = body
                    .get(4..4 + len)
                    .ok_or_else(|| bad("events header truncated".into()))?;
                let mut header: EventsHeader =
                    serde_json::from_slice(header).map_err(|e| bad(e.to_string()))?;
                // Only format 6 may scope keys by publisher: an older entry decides as it did.
                header.idempotency_per_publisher &= version >= 6;
                let mut rest = &body[4 + len..];
                let mut batches = Vec::with_capacity(header.parts.len());
                for part in &header.parts {
                    let n = part.batch_len as usize;
                    if rest.len() < n {
                        return Err(bad(format!(
                            "batch of partition {} is truncated",
                            part.partition
                        )));
                    }
                    batches.push(rest[..n].to_vec());
                    rest = &rest[n..];
                }
                if !rest.is_empty() {
                    return Err(bad("events entry has trailing bytes".into()));
                }
                Ok(Command::Events(EventsCommand { header, batches }))
            }
            other => Err(Error::NewerCommand {
                kind: other,
                version,
            }),
        }
    }
}

/// Command bodies are plain data (strings, numbers, enums), so serialization cannot fail.
fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_else(|e| panic!("command serialization failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidemark_storage::raw::record_batch::{Record, encode};

    #[test]
    fn commands_round_trip_and_newer_versions_are_refused() {
        let batch = encode(&[Record {
            timestamp_ms: 1,
            key: None,
            value: Some(b"{}".to_vec()),
            headers: vec![],
        }]);
        let cmds = [
            Command::catalog(
                CatalogCommand::DeleteDatasource {
                    name: "a".into(),
                    grace_ms: 1,
                },
                "key:abc",
            ),
            Command::Persist(PersistCommand {
                datasource: DatasourceId(3),
                interval_start_ms: 3_600_000,
                late: true,
                reason: PersistReason::IntervalClosed,
            }),
            Command::Events(EventsCommand {
                header: EventsHeader {
                    datasource: "beacons".into(),
                    publisher: Some("key1".into()),
                    permitted_tags: None,
                    idempotency_key: Some("k".into()),
                    idempotency_per_publisher: false,
                    body_hash: 99,
                    parts: vec![
                        EventsPart {
                            partition: 2,
                            lines: vec![3],
                            verdicts: vec![VerdictRecord {
                                index: 0,
                                code: 4,
                                reason: "future".into(),
                            }],
                            batch_len: batch.len() as u32,
                        },
                        EventsPart {
                            partition: 0,
                            lines: vec![],
                            verdicts: vec![],
                            batch_len: batch.len() as u32,
                        },
                    ],
                    future_ms_max: Some(1000),
                    decompressed_bytes_max: Some(1 << 20),
                },
                batches: vec![batch.clone(), batch],
            }),
            Command::InitProducer(InitProducerCommand {
                existing: Some((4, 2)),
            }),
            Command::catalog(
                CatalogCommand::Governance(
                    tidemark_catalog::governance::GovernanceCommand::RemoveTag {
                        domain: "d".into(),
                        tag: "t".into(),
                    },
                ),
                "system",
            ),
            Command::Offsets(OffsetsCommand::Commit {
                group: "g".into(),
                offsets: vec![CommittedOffset {
                    topic: "beacons".into(),
                    partition: 1,
                    offset: 42,
                    leader_epoch: -1,
                    metadata: Some("m".into()),
                }],
            }),
        ];
        for cmd in cmds {
            let bytes = cmd.encode();
            // Only what needs format 3 (catalog commands, with their actor) is written in it.
            assert_eq!(
                bytes[0],
                if matches!(cmd, Command::Catalog { .. }) {
                    3
                } else {
                    1
                }
            );
            assert_eq!(Command::decode(cmd.kind(), &bytes).expect("decodes"), cmd);
            let mut newer = bytes.clone();
            newer[0] = COMMAND_VERSION + 1;
            let err = Command::decode(cmd.kind(), &newer)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("upgrade this node"), "{err}");
        }
        // An events entry that scopes its key by publisher needs format 6; the flag in an
        // older entry is not honoured, so replaying it decides as it did.
        let header = EventsHeader {
            datasource: "beacons".into(),
            publisher: Some("key1".into()),
            permitted_tags: None,
            idempotency_key: Some("k".into()),
            idempotency_per_publisher: true,
            body_hash: 1,
            parts: vec![],
            future_ms_max: None,
            decompressed_bytes_max: None,
        };
        assert_eq!(header.idempotency_scope(), Some("key1"));
        let scoped = Command::Events(EventsCommand {
            header,
            batches: vec![],
        });
        let bytes = scoped.encode();
        assert_eq!(bytes[0], 6);
        assert_eq!(
            Command::decode(KIND_EVENTS, &bytes).expect("format 6"),
            scoped
        );
        let mut older = bytes.clone();
        older[0] = 5;
        match Command::decode(KIND_EVENTS, &older).expect("format 5") {
            Command::Events(read) => assert_eq!(read.header.idempotency_scope(), None),
            other => panic!("decoded as {other:?}"),
        }

        // A raw retention entry that spares running jobs needs format 7; an older one does not.
        let retain = Command::Timeline(TimelineCommand::Retain {
            datasource: DatasourceId(3),
            raw_before_ms: Some(5),
            rejects_before_ms: None,
            actor: "system".into(),
            spare_running_jobs: true,
        });
        let bytes = retain.encode();
        assert_eq!(bytes[0], 7);
        assert_eq!(
            Command::decode(KIND_TIMELINE, &bytes).expect("format 7"),
            retain
        );
        let mut older = bytes.clone();
        older[0] = 6;
        assert!(matches!(
            Command::decode(KIND_TIMELINE, &older).expect("format 6"),
            Command::Timeline(TimelineCommand::Retain {
                spare_running_jobs: false,
                ..
            })
        ));

        // Catalog entries of the formats before the actor decode as unrecorded.
        let mut old = vec![1];
        old.extend_from_slice(br#"{"op":"delete_datasource","name":"a","grace_ms":5}"#);
        assert_eq!(
            Command::decode(KIND_CATALOG, &old).expect("format 1"),
            Command::catalog(
                CatalogCommand::DeleteDatasource {
                    name: "a".into(),
                    grace_ms: 5
                },
                "unrecorded"
            )
        );
    }
}
