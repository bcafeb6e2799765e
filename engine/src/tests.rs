//! The engine end to end in-process: apply, persist, checkpoint, restart, replay.

use serde_json::json;
use tidemark_catalog::spec::DEMO_BEACONS_SPEC;
use tidemark_catalog::{CatalogCommand, DatasourceSpec};

use super::command::{
    Command, EventsCommand, EventsHeader, EventsPart, PersistCommand, PersistReason,
    TimelineCommand, VerdictRecord,
};
use super::*;
use tidemark_storage::raw::record_batch::{Record, encode};

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_795_651_200_000; // 2026-11-26T00:00Z

struct Log {
    entries: Vec<Entry>,
}

impl Log {
    fn push(&mut self, writer_time_ms: i64, cmd: &Command) -> Entry {
        let e = Entry {
            position: self.entries.len() as u64 + 1,
            writer_time_ms,
            kind: cmd.kind(),
            payload: cmd.encode(),
        };
        self.entries.push(e.clone());
        e
    }
}

fn spec() -> DatasourceSpec {
    DatasourceSpec::from_json(DEMO_BEACONS_SPEC).expect("demo spec")
}

fn events_cmd(partition: u32, beacons: &[serde_json::Value], key: Option<&str>) -> Command {
    let mut cmd = multi_part_cmd(&[(partition, beacons.to_vec())]);
    if let Command::Events(e) = &mut cmd {
        e.header.idempotency_key = key.map(str::to_string);
        e.header.body_hash = beacons.len() as u64;
    }
    cmd
}

/// One entry with a part per (partition, beacons), in the order given (as a Kafka produce
/// request may list partitions).
fn multi_part_cmd(parts: &[(u32, Vec<serde_json::Value>)]) -> Command {
    let mut header_parts = Vec::new();
    let mut batches = Vec::new();
    for (partition, beacons) in parts {
        let records: Vec<Record> = beacons
            .iter()
            .map(|b| Record {
                timestamp_ms: 0,
                key: None,
                value: Some(serde_json::to_vec(b).expect("json")),
                headers: vec![],
            })
            .collect();
        let batch = encode(&records);
        header_parts.push(EventsPart {
            partition: *partition,
            lines: vec![],
            verdicts: vec![],
            batch_len: batch.len() as u32,
        });
        batches.push(batch);
    }
    Command::Events(EventsCommand {
        header: EventsHeader {
            datasource: "beacons".into(),
            publisher: None,
            permitted_tags: None,
            idempotency_key: None,
            idempotency_per_publisher: false,
            body_hash: 0,
            parts: header_parts,
            future_ms_max: None,
            decompressed_bytes_max: None,
        },
        batches,
    })
}

fn beacon(ts: i64, merchant: &str, user: &str) -> serde_json::Value {
    json!({"ts": ts, "merchant_id": merchant, "app": "web", "event": "page_view", "page": "/", "country": "US",
           "device": "mobile", "user_id": user, "latency_ms": 12.5})
}

fn total_count(engine: &Engine) -> i64 {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    let snap = engine.table_snapshot("beacons").expect("snapshot");
    let count_idx = 1 + snap.spec.dimensions.len();
    let mut total = 0;
    for s in &snap.segments {
        let col = s.column("count").expect("count column");
        total += col.as_primitive::<Int64Type>().values().iter().sum::<i64>();
    }
    for b in &snap.realtime {
        total += b
            .column(count_idx)
            .as_primitive::<Int64Type>()
            .values()
            .iter()
            .sum::<i64>();
    }
    total
}

#[test]
fn apply_persist_checkpoint_restart_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig::new(dir.path());
    let mut log = Log { entries: vec![] };
    let (mut engine, _) = Engine::open(config.clone()).expect("open");
    let e = log.push(
        T0,
        &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
    );
    assert!(matches!(
        engine.apply(&e).expect("create"),
        Applied::Catalog(CatalogEffect::Created(_))
    ));

    // 10 events in hour 0, one bad line, on two partitions.
    let mut batch: Vec<_> = (0..5)
        .map(|i| beacon(T0 + i * 60_000, "m1", &format!("u{i}")))
        .collect();
    batch.push(json!({"ts": "not a time"}));
    let e = log.push(T0 + 1000, &events_cmd(0, &batch, Some("k1")));
    let Applied::Events(out) = engine.apply(&e).expect("events") else {
        panic!("events outcome")
    };
    assert_eq!(out.accepted, 5);
    assert_eq!(out.rejected.len(), 1);
    assert!(
        out.rejected[0].reason.contains("\"ts\""),
        "{:?}",
        out.rejected
    );
    assert_eq!((out.parts[0].base_offset, out.parts[0].last_offset), (0, 5));
    let e = log.push(
        T0 + 2000,
        &events_cmd(
            1,
            &(5..10)
                .map(|i| beacon(T0 + i * 60_000, "m2", "u1"))
                .collect::<Vec<_>>(),
            None,
        ),
    );
    engine.apply(&e).expect("events");
    assert_eq!(total_count(&engine), 10);
    assert_eq!(engine.rejects().rows().count(), 1);

    // A retry with the same key counts once and answers the same; a different body conflicts.
    let e = log.push(T0 + 3000, &events_cmd(0, &batch, Some("k1")));
    assert_eq!(
        engine.apply(&e).expect("retry"),
        Applied::Retry(out.clone())
    );
    let e = log.push(T0 + 3000, &events_cmd(0, &batch[..2], Some("k1")));
    assert!(matches!(
        engine.apply(&e).expect("conflict"),
        Applied::Refused {
            status: RefusalStatus::Conflict,
            ..
        }
    ));
    assert_eq!(total_count(&engine), 10);

    // The writer's clock passes hour 0's end plus the late window: a persist is decided.
    let decisions = engine.persist_decisions(T0 + HOUR + 10 * 60_000);
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].interval_start_ms, T0);
    let e = log.push(
        T0 + HOUR + 10 * 60_000,
        &Command::Persist(decisions[0].clone()),
    );
    assert_eq!(
        engine.apply(&e).expect("persist"),
        Applied::Persisted { segments: 1 }
    );
    // While the segment is written, its rows are still answered from the index.
    assert_eq!(total_count(&engine), 10);
    assert_eq!(engine.publish_persisted(true).expect("publish").len(), 1);
    assert_eq!(
        engine.table_snapshot("beacons").map(|s| s.segments.len()),
        Some(1)
    );
    assert_eq!(total_count(&engine), 10);

    // A late event for hour 0 goes to a late chunk; a new one to hour 1.
    let e = log.push(
        T0 + HOUR + 11 * 60_000,
        &events_cmd(
            2,
            &[
                beacon(T0 + 30_000, "m3", "u9"),
                beacon(T0 + HOUR + 5, "m3", "u9"),
            ],
            None,
        ),
    );
    engine.apply(&e).expect("late events");
    assert_eq!(total_count(&engine), 12);
    engine.checkpoint().expect("checkpoint");

    // Entries after the checkpoint: more events in hour 1.
    let e = log.push(
        T0 + HOUR + 12 * 60_000,
        &events_cmd(0, &[beacon(T0 + HOUR + 7, "m1", "u1")], None),
    );
    engine.apply(&e).expect("events after checkpoint");
    let expected_rows = engine
        .table_snapshot("beacons")
        .map(|s| s.realtime.iter().map(|b| b.num_rows()).sum::<usize>());
    drop(engine);

    // Restart: realtime rebuilt from raw up to the checkpoint, the rest replayed from the log.
    let (mut engine, recovery) = Engine::open(config.clone()).expect("reopen");
    assert_eq!(recovery.checkpoint_position, 7);
    for e in &log.entries {
        engine.apply(e).expect("replay");
    }
    assert_eq!(total_count(&engine), 13);
    assert_eq!(
        engine.table_snapshot("beacons").map(|s| s
            .realtime
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>()),
        expected_rows
    );
    assert_eq!(
        engine.rejects().rows().count(),
        1,
        "rejects are not doubled by replay"
    );

    // The late chunk persists as one extra shard of hour 0.
    let decisions = engine.persist_decisions(T0 + HOUR + 30 * 60_000);
    assert!(
        decisions
            .iter()
            .any(|d| d.late && d.interval_start_ms == T0),
        "{decisions:?}"
    );
    for d in decisions {
        let e = log.push(T0 + HOUR + 30 * 60_000, &Command::Persist(d));
        engine.apply(&e).expect("persist");
    }
    engine.publish_persisted(true).expect("publish");
    let snap = engine.table_snapshot("beacons").expect("snapshot");
    let hour0: Vec<u32> = snap
        .segments
        .iter()
        .filter(|s| s.meta().id.interval_start_ms == T0)
        .map(|s| s.meta().id.shard)
        .collect();
    assert_eq!(hour0, vec![0, 1]);
    assert_eq!(total_count(&engine), 13);
}

#[test]
fn binding_verdicts_and_spec_updates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut engine, _) = Engine::open(EngineConfig::new(dir.path())).expect("open");
    let mut log = Log { entries: vec![] };
    let e = log.push(
        T0,
        &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
    );
    engine.apply(&e).expect("create");
    let Command::Events(mut cmd) =
        events_cmd(0, &[beacon(T0, "m1", "u1"), beacon(T0, "m1", "u2")], None)
    else {
        unreachable!()
    };
    cmd.header.parts[0].verdicts = vec![VerdictRecord {
        index: 1,
        code: 4,
        reason: "event time too far ahead".into(),
    }];
    let e = log.push(T0, &Command::Events(cmd));
    let Applied::Events(out) = engine.apply(&e).expect("events") else {
        panic!("events")
    };
    assert_eq!(out.accepted, 1);
    assert_eq!(out.rejected[0].reason, "event time too far ahead");

    // Adding a dimension persists open indexes under the old spec first.
    let mut v2 = spec();
    v2.dimensions.push("campaign".into());
    let e = log.push(
        T0 + 5,
        &Command::catalog(
            CatalogCommand::UpdateDatasource { spec: v2.clone() },
            "system",
        ),
    );
    engine.apply(&e).expect("update");
    // Until its segment is published, the index written under the old spec is still read, in
    // the new schema: the added dimension reads as null (this used to index out of bounds).
    let snap = engine
        .table_snapshot("beacons")
        .expect("snapshot while persisting");
    assert_eq!(snap.realtime.len(), 1);
    let campaign = snap.realtime[0]
        .column_by_name("campaign")
        .expect("campaign column");
    assert_eq!((campaign.len(), campaign.null_count()), (1, 1));
    engine.publish_persisted(true).expect("publish");
    let snap = engine.table_snapshot("beacons").expect("snapshot");
    assert_eq!(snap.segments.len(), 1);
    assert!(snap.realtime.is_empty());
    assert!(
        snap.segments[0].meta().column("campaign").is_none(),
        "older segment predates the dimension"
    );
    let mut b = beacon(T0 + 1, "m1", "u3");
    b["campaign"] = json!("spring");
    let e = log.push(T0 + 6, &events_cmd(0, &[b], None));
    engine.apply(&e).expect("events");
    let snap = engine.table_snapshot("beacons").expect("snapshot");
    assert_eq!(
        snap.realtime[0]
            .schema()
            .field_with_name("campaign")
            .map(|f| f.name().clone())
            .ok(),
        Some("campaign".into())
    );

    // Unknown datasource and a newer command format are refused clearly.
    let Command::Events(mut cmd) = events_cmd(0, &[beacon(T0, "m1", "u1")], None) else {
        unreachable!()
    };
    cmd.header.datasource = "nope".into();
    let e = log.push(T0 + 7, &Command::Events(cmd));
    assert!(matches!(
        engine.apply(&e).expect("refused"),
        Applied::Refused {
            status: RefusalStatus::NotFound,
            ..
        }
    ));
    let mut e = log.push(
        T0 + 8,
        &Command::Persist(PersistCommand {
            datasource: DatasourceId(1),
            interval_start_ms: 0,
            late: false,
            reason: PersistReason::MemoryBound,
        }),
    );
    e.payload[0] = 9;
    let err = engine
        .apply(&e)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("upgrade this node"), "{err}");
}

/// Invariant 1: replicas that applied the same log hold byte-identical segments.
#[test]
fn same_log_builds_byte_identical_segments() {
    let mut log = Log { entries: vec![] };
    log.push(
        T0,
        &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
    );
    for i in 0..30i64 {
        let beacons: Vec<_> = (0..50)
            .map(|j| {
                let mut b = beacon(
                    T0 + (i * 7 + j) * 61_000,
                    &format!("m{}", j % 7),
                    &format!("u{}", (i * j) % 23),
                );
                b["latency_ms"] = json!((i * 31 + j * 17) % 997);
                b
            })
            .collect();
        log.push(
            T0 + i * 600_000,
            &events_cmd((i % 3) as u32, &beacons, None),
        );
    }
    let build = |dir: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        let (mut engine, _) = Engine::open(EngineConfig::new(dir)).expect("open");
        for e in &log.entries {
            engine.apply(e).expect("apply");
        }
        // Persist everything left at one final position.
        let now = T0 + 48 * HOUR;
        let decisions = engine.persist_decisions(now);
        assert!(!decisions.is_empty());
        for d in decisions {
            let e = Entry {
                position: engine.applied_position() + 1,
                writer_time_ms: now,
                kind: command::KIND_PERSIST,
                payload: Command::Persist(d).encode(),
            };
            engine.apply(&e).expect("persist");
        }
        engine.publish_persisted(true).expect("publish");
        let snap = engine.table_snapshot("beacons").expect("snapshot");
        assert!(snap.realtime.is_empty());
        let mut files: Vec<(String, Vec<u8>)> = snap
            .segments
            .iter()
            .map(|s| {
                (
                    s.meta().id.to_string(),
                    std::fs::read(s.path()).expect("read segment"),
                )
            })
            .collect();
        files.sort();
        files
    };
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let left = build(a.path());
    let right = build(b.path());
    assert!(left.len() >= 3, "several hourly segments");
    assert_eq!(left.len(), right.len());
    for ((ln, lb), (rn, rb)) in left.iter().zip(&right) {
        assert_eq!(ln, rn);
        assert!(lb == rb, "segment {ln} differs between replicas");
    }
}

/// A restart rebuilds realtime indexes partition by partition, so an index can meet a later
/// position (partition 0) before its first one (partition 2). Its recorded start must still
/// be the earliest, or the checkpoint after the rebuild starts the next rebuild past that
/// event and the event is lost from the rollup (found by the 60-kill chaos run).
#[test]
fn an_index_rebuilt_partition_by_partition_keeps_its_earliest_event_over_two_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig::new(dir.path());
    let mut log = Log { entries: vec![] };
    let (mut engine, _) = Engine::open(config.clone()).expect("open");
    let e = log.push(
        T0,
        &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
    );
    engine.apply(&e).expect("create");
    // Hour 0 opens first (position 2); hour 1's first event is on partition 2 (position 3),
    // its next on partition 0 (position 4).
    let e = log.push(
        T0 + 1000,
        &events_cmd(0, &[beacon(T0 + 5, "m1", "u1")], None),
    );
    engine.apply(&e).expect("hour 0");
    let e = log.push(
        T0 + HOUR,
        &events_cmd(2, &[beacon(T0 + HOUR + 1, "m2", "u2")], None),
    );
    engine.apply(&e).expect("hour 1 on partition 2");
    let e = log.push(
        T0 + HOUR + 10,
        &events_cmd(0, &[beacon(T0 + HOUR + 2, "m3", "u3")], None),
    );
    engine.apply(&e).expect("hour 1 on partition 0");
    engine.checkpoint().expect("checkpoint with hour 0 open");
    drop(engine);

    // Restart 1 rebuilds from hour 0's start; then hour 0 persists, so only hour 1 is open.
    let (mut engine, _) = Engine::open(config.clone()).expect("restart 1");
    assert_eq!(total_count(&engine), 3);
    let decisions = engine.persist_decisions(T0 + HOUR + 10 * 60_000);
    assert_eq!(
        decisions
            .iter()
            .map(|d| d.interval_start_ms)
            .collect::<Vec<_>>(),
        vec![T0]
    );
    let e = log.push(
        T0 + HOUR + 10 * 60_000,
        &Command::Persist(decisions[0].clone()),
    );
    engine.apply(&e).expect("persist hour 0");
    engine
        .checkpoint()
        .expect("checkpoint with only hour 1 open");
    drop(engine);

    // Restart 2 must rebuild hour 1 from position 3, not 4.
    let (engine, _) = Engine::open(config).expect("restart 2");
    assert_eq!(total_count(&engine), 3, "every event survives two restarts");
}

/// A restart rebuilds realtime indexes from the raw log; it must add events in the order
/// apply did (by position, not partition by partition), or sketch states that depend on
/// arrival order (an HLL's coupon list) make this replica's segment differ byte for byte from
/// one that never restarted (found by the 200-kill chaos run).
#[test]
fn a_restart_rebuilds_sketch_states_in_apply_order() {
    let mut log = Log { entries: vec![] };
    log.push(
        T0,
        &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
    );
    // One rollup row (same minute, same dimensions) fed 160 distinct users from entries on
    // partitions 2, 0, 1, 2, 0, 1: partition order is not position order.
    for (i, p) in [2u32, 0, 1, 2, 0, 1].into_iter().enumerate() {
        let beacons: Vec<_> = (0..20)
            .map(|j| beacon(T0 + 1000, "m1", &format!("u{i}-{j}")))
            .collect();
        log.push(T0 + 2000 + i as i64, &events_cmd(p, &beacons, None));
    }
    // And one entry whose parts list partition 2 before partition 0.
    let users = |tag: &str| {
        (0..20)
            .map(|j| beacon(T0 + 1000, "m1", &format!("{tag}-{j}")))
            .collect::<Vec<_>>()
    };
    log.push(
        T0 + 3000,
        &multi_part_cmd(&[(2, users("x")), (0, users("y"))]),
    );
    let build = |dir: &std::path::Path, restart: bool| -> Vec<u8> {
        let config = EngineConfig::new(dir);
        let (mut engine, _) = Engine::open(config.clone()).expect("open");
        for e in &log.entries {
            let applied = engine.apply(e).expect("apply");
            if let Applied::Events(out) = applied
                && out.parts.len() == 2
            {
                // Answers come back in the request's order, with each partition's offsets.
                let got: Vec<(u32, i64, i64)> = out
                    .parts
                    .iter()
                    .map(|p| (p.partition, p.base_offset, p.last_offset))
                    .collect();
                assert_eq!(got, vec![(2, 40, 59), (0, 40, 59)]);
            }
        }
        if restart {
            // The checkpoint holds the row open, so the restart rebuilds all of it from raw.
            engine.checkpoint().expect("checkpoint");
            drop(engine);
            engine = Engine::open(config).expect("reopen").0;
        }
        let now = T0 + 2 * HOUR;
        let decisions = engine.persist_decisions(now);
        assert_eq!(decisions.len(), 1);
        let e = Entry {
            position: engine.applied_position() + 1,
            writer_time_ms: now,
            kind: command::KIND_PERSIST,
            payload: Command::Persist(decisions[0].clone()).encode(),
        };
        engine.apply(&e).expect("persist");
        engine.publish_persisted(true).expect("publish");
        let snap = engine.table_snapshot("beacons").expect("snapshot");
        std::fs::read(snap.segments[0].path()).expect("segment")
    };
    let (a, b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let straight = build(a.path(), false);
    let restarted = build(b.path(), true);
    assert!(
        straight == restarted,
        "the restarted replica's segment differs from the one that never restarted"
    );
}

#[test]
fn a_checkpoint_captured_then_written_off_the_lock_holds_what_was_captured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig::new(dir.path());
    let mut log = Log { entries: vec![] };
    let (mut engine, _) = Engine::open(config.clone()).expect("open");
    engine
        .apply(&log.push(
            T0,
            &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
        ))
        .expect("create");
    engine
        .apply(&log.push(
            T0 + 1,
            &events_cmd(0, &[beacon(T0, "m1", "u1"), beacon(T0, "m1", "u2")], None),
        ))
        .expect("events");
    assert!(
        engine.checkpoint_due(),
        "a catalog change asks for a checkpoint"
    );
    let pending = engine
        .begin_checkpoint(false)
        .expect("begin")
        .expect("no segment being written");
    assert_eq!(pending.position(), 2);
    assert!(!engine.checkpoint_due());
    // Applying goes on between the capture and the write (the write happens off the lock).
    engine
        .apply(&log.push(T0 + 2, &events_cmd(1, &[beacon(T0, "m2", "u3")], None)))
        .expect("events");
    pending.write().expect("write");
    engine.checkpoint_written(2).expect("written");
    assert_eq!(engine.checkpoint_position(), 2);
    drop(engine);

    // The stored checkpoint is the captured state: position 2. Replaying from there finds
    // entry 3 in the raw log already and counts it once.
    let (mut engine, _) = Engine::open(config).expect("reopen");
    assert_eq!(engine.applied_position(), 2);
    assert_eq!(
        total_count(&engine),
        2,
        "rebuilt from the raw log through the checkpoint"
    );
    engine.apply(&log.entries[2]).expect("replay entry 3");
    assert_eq!(total_count(&engine), 3);
    assert_eq!(
        engine.partition_log("beacons", 1).map(|l| l.next_offset()),
        Some(1),
        "appended once"
    );
}

#[test]
fn a_purged_datasource_keeps_its_files_until_a_checkpoint_covers_the_purge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig::new(dir.path());
    let mut log = Log { entries: vec![] };
    let (mut engine, _) = Engine::open(config.clone()).expect("open");
    let Applied::Catalog(CatalogEffect::Created(id)) = engine
        .apply(&log.push(
            T0,
            &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
        ))
        .expect("create")
    else {
        panic!("created")
    };
    engine
        .apply(&log.push(T0 + 1, &events_cmd(0, &[beacon(T0, "m1", "u1")], None)))
        .expect("events");
    engine.checkpoint().expect("checkpoint before the delete");
    let ds_dir = dir.path().join("datasources").join(id.to_string());
    assert!(ds_dir.exists());
    let delete = CatalogCommand::DeleteDatasource {
        name: "beacons".into(),
        grace_ms: 0,
    };
    engine
        .apply(&log.push(T0 + 2, &Command::catalog(delete, "system")))
        .expect("delete");
    engine
        .apply(&log.push(
            T0 + 3,
            &Command::catalog(CatalogCommand::PurgeDatasource { id }, "system"),
        ))
        .expect("purge");
    // A crash now restarts from the checkpoint at 2, which still names the datasource's files.
    assert!(
        ds_dir.exists(),
        "files stay while the stored checkpoint predates the purge"
    );
    let pending = engine.begin_checkpoint(true).expect("begin").expect("idle");
    assert!(
        ds_dir.exists(),
        "nor does capturing a checkpoint remove them"
    );
    let position = pending.position();
    pending.write().expect("write");
    engine.checkpoint_written(position).expect("written");
    assert!(
        !ds_dir.exists(),
        "removed once the checkpoint after the purge is stored"
    );
}

#[test]
fn a_segment_damaged_while_the_node_was_down_does_not_stop_it_and_is_unreadable_until_replaced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig::new(dir.path());
    let mut log = Log { entries: vec![] };
    let (mut engine, _) = Engine::open(config.clone()).expect("open");
    engine
        .apply(&log.push(
            T0,
            &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
        ))
        .expect("create");
    let beacons: Vec<_> = (0..7)
        .map(|i| beacon(T0 + i * 1000, "m1", &format!("u{i}")))
        .collect();
    engine
        .apply(&log.push(T0 + 1, &events_cmd(0, &beacons, None)))
        .expect("events");
    let decisions = engine.persist_decisions(T0 + 2 * HOUR);
    assert_eq!(decisions.len(), 1);
    engine
        .apply(&log.push(T0 + 2 * HOUR, &Command::Persist(decisions[0].clone())))
        .expect("persist");
    engine.checkpoint().expect("checkpoint");
    let snap = engine.table_snapshot("beacons").expect("snapshot");
    assert_eq!((snap.segments.len(), total_count(&engine)), (1, 7));
    let path = snap.segments[0].path().to_path_buf();
    let relative = path
        .strip_prefix(dir.path())
        .expect("under the data dir")
        .to_path_buf();
    drop(snap);
    drop(engine);
    let whole = std::fs::read(&path).expect("segment");
    let mut damaged = whole.clone();
    damaged[64] ^= 0xff;
    std::fs::write(&path, &damaged).expect("damage");

    let (mut engine, _) =
        Engine::open(config).expect("a damaged segment does not stop the engine from opening");
    let snap = engine.table_snapshot("beacons").expect("snapshot");
    assert!(snap.segments.is_empty());
    assert_eq!(snap.unreadable.len(), 1, "{:?}", snap.unreadable);
    assert_eq!(
        (
            snap.unreadable[0].interval_start_ms,
            snap.unreadable[0].interval_end_ms
        ),
        (T0, T0 + HOUR)
    );
    assert!(
        snap.unreadable[0].reason.contains("checksum mismatch"),
        "{}",
        snap.unreadable[0].reason
    );
    let files = engine.unreadable_files();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0, relative);
    // Still in the timeline: a checkpoint, a snapshot and the scrubber name it.
    assert!(engine.data_files().iter().any(|(p, _)| p == &relative));
    assert_eq!(engine.totals().3, 1);

    let copy = dir.path().join("repaired.tmp");
    std::fs::write(&copy, &whole).expect("copy");
    engine.replace_data_file(&relative, &copy).expect("replace");
    let snap = engine.table_snapshot("beacons").expect("snapshot");
    assert!(snap.unreadable.is_empty());
    assert_eq!(snap.segments.len(), 1);
    assert_eq!(total_count(&engine), 7);
    assert!(engine.unreadable_files().is_empty());
}

#[test]
fn governed_beacons_are_standardised_at_apply_and_rebuilt_under_the_rules_of_their_position() {
    use tidemark_catalog::governance::GovernanceCommand;
    let gov = |json: &str| -> Command {
        let cmd: GovernanceCommand = serde_json::from_str(json).expect("governance command");
        Command::catalog(CatalogCommand::Governance(cmd), "system")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig::new(dir.path());
    let mut log = Log { entries: vec![] };
    let (mut engine, _) = Engine::open(config.clone()).expect("open");
    engine
        .apply(&log.push(
            T0,
            &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
        ))
        .expect("create");
    for cmd in [
        r#"{"op":"create_domain","domain":{"name":"shop","datasources":["beacons"]}}"#,
        r#"{"op":"put_tag","domain":"shop","tag":{"name":"ts","kind":"timestamp","type":"timestamp","status":"approved"}}"#,
        r#"{"op":"put_tag","domain":"shop","tag":{"name":"merchant_id","kind":"dimension","type":"string","status":"approved","aliases":["merchant"]}}"#,
        r#"{"op":"put_tag","domain":"shop","tag":{"name":"country","kind":"dimension","type":"string","status":"approved"}}"#,
    ] {
        let Applied::Catalog(_) = engine.apply(&log.push(T0, &gov(cmd))).expect("governance")
        else {
            panic!("applied")
        };
    }

    let e = log.push(
        T0 + 1,
        &events_cmd(
            0,
            &[json!({"ts": T0, "merchant": "m1", "country": "US", "cc": "FR"})],
            None,
        ),
    );
    let Applied::Events(out) = engine.apply(&e).expect("events") else {
        panic!("events outcome")
    };
    assert_eq!(out.accepted, 1);
    let dropped: Vec<(String, u32, Option<String>)> = out
        .dropped_tags
        .iter()
        .map(|d| (d.tag.clone(), d.count, d.suggestion.clone()))
        .collect();
    assert_eq!(dropped, vec![("cc".to_string(), 1, None)]);
    // An alias added later applies to beacons from its position on, never to earlier ones.
    let alias = r#"{"op":"put_tag","domain":"shop","tag":{"name":"country","kind":"dimension","type":"string","status":"approved","aliases":["cc"]}}"#;
    engine.apply(&log.push(T0 + 2, &gov(alias))).expect("alias");
    let e = log.push(
        T0 + 3,
        &events_cmd(0, &[json!({"ts": T0, "merchant": "m2", "cc": "DE"})], None),
    );
    let Applied::Events(out) = engine.apply(&e).expect("events") else {
        panic!("events outcome")
    };
    assert!(out.dropped_tags.is_empty(), "{:?}", out.dropped_tags);
    // A wrong type is rejected with the tag's type.
    let e = log.push(
        T0 + 4,
        &events_cmd(0, &[json!({"ts": T0, "merchant": 7})], None),
    );
    let Applied::Events(out) = engine.apply(&e).expect("events") else {
        panic!("events outcome")
    };
    assert_eq!(
        out.rejected[0].reason,
        r#"tag "merchant_id" (sent as "merchant") must be a string (type string), got a number"#
    );
    assert_eq!(engine.tags_dropped(), 1);

    let country = |engine: &Engine| -> Vec<(Option<String>, Option<String>)> {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        use arrow_array::types::Int32Type;
        let snap = engine.table_snapshot("beacons").expect("snapshot");
        let mut rows = Vec::new();
        for b in &snap.realtime {
            // Dimensions are dictionary-encoded strings.
            let value = |name: &str, r: usize| -> Option<String> {
                let i = b.schema().index_of(name).expect("column");
                let dict = b.column(i).as_dictionary::<Int32Type>();
                if dict.is_null(r) {
                    return None;
                }
                let key = dict.keys().value(r) as usize;
                Some(dict.values().as_string::<i32>().value(key).to_string())
            };
            for r in 0..b.num_rows() {
                rows.push((value("merchant_id", r), value("country", r)));
            }
        }
        rows.sort();
        rows
    };
    let before = country(&engine);
    assert_eq!(
        before,
        vec![
            (Some("m1".into()), Some("US".into())),
            (Some("m2".into()), Some("DE".into()))
        ],
        "renamed by the rules of each beacon's own position"
    );
    // The checkpoint holds the rows open, so the restart rebuilds them all from the raw log,
    // each beacon under the rules of its own position.
    engine.checkpoint().expect("checkpoint");
    drop(engine);
    let (engine, _) = Engine::open(config).expect("reopen");
    assert_eq!(
        country(&engine),
        before,
        "a restart rebuilds with the same rules"
    );
}

/// (offset, merchant) of every record stored in partition `p`, as Fetch would serve them.
fn stored_merchants(engine: &Engine, p: u32) -> Vec<(i64, String)> {
    let ds = engine
        .state
        .datasources
        .values()
        .next()
        .expect("a datasource");
    let batches = ds
        .partition(p)
        .expect("partition")
        .read(0, 1 << 20)
        .expect("read");
    let mut out = Vec::new();
    for b in batches {
        let (_, records) =
            tidemark_storage::raw::record_batch::decode_records(&b.batch).expect("decode");
        for (offset, r) in records {
            let v: serde_json::Value =
                serde_json::from_slice(r.value.as_deref().unwrap_or_default()).expect("json");
            out.push((
                offset,
                v["merchant_id"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

#[test]
fn a_deletion_replayed_after_a_crash_before_its_checkpoint_stays_whole() {
    use super::command::TimelineCommand;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig::new(dir.path());
    let mut log = Log { entries: vec![] };
    let (mut engine, _) = Engine::open(config.clone()).expect("open");
    let e = log.push(
        T0,
        &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
    );
    let Applied::Catalog(CatalogEffect::Created(datasource)) = engine.apply(&e).expect("create")
    else {
        panic!("created")
    };
    // Hour 0 (persisted to a segment): m1, m2, m1 on partition 0, m2 on partition 1.
    let hour0 = [
        beacon(T0 + 60_000, "m1", "u1"),
        beacon(T0 + 120_000, "m2", "u2"),
        beacon(T0 + 180_000, "m1", "u3"),
    ];
    engine
        .apply(&log.push(T0 + 1000, &events_cmd(0, &hour0, None)))
        .expect("events");
    engine
        .apply(&log.push(
            T0 + 2000,
            &events_cmd(1, &[beacon(T0 + 240_000, "m2", "u4")], None),
        ))
        .expect("events");
    for d in engine.persist_decisions(T0 + HOUR + 10 * 60_000) {
        engine
            .apply(&log.push(T0 + HOUR + 10 * 60_000, &Command::Persist(d)))
            .expect("persist");
    }
    engine.publish_persisted(true).expect("publish");
    // Hour 1 (realtime): m1, m2.
    let hour1 = [
        beacon(T0 + HOUR + 5, "m1", "u5"),
        beacon(T0 + HOUR + 6, "m2", "u6"),
    ];
    engine
        .apply(&log.push(T0 + HOUR + 11 * 60_000, &events_cmd(0, &hour1, None)))
        .expect("events");
    engine.checkpoint().expect("checkpoint");
    assert_eq!(total_count(&engine), 6);

    let filter =
        tidemark_catalog::record_filter::RecordFilter::parse("merchant_id = 'm1'").expect("filter");
    let delete = TimelineCommand::Delete {
        datasource,
        filter,
        where_text: "merchant_id = 'm1'".into(),
        start_ms: None,
        end_ms: None,
        actor: "test".into(),
    };
    let Applied::Job { id } = engine
        .apply(&log.push(T0 + HOUR + 12 * 60_000, &Command::Timeline(delete)))
        .expect("start")
    else {
        panic!("a job")
    };
    while !engine.job_built(id) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let publish = Command::Timeline(TimelineCommand::Publish { job: id });
    engine
        .apply(&log.push(T0 + HOUR + 13 * 60_000, &publish))
        .expect("publish");
    engine.publish_persisted(true).expect("publish shards");
    // A later m1 beacon is kept: a deletion is of what was there.
    engine
        .apply(&log.push(
            T0 + HOUR + 14 * 60_000,
            &events_cmd(1, &[beacon(T0 + HOUR + 7, "m1", "u7")], None),
        ))
        .expect("events");
    let check = |engine: &Engine| {
        assert_eq!(
            total_count(engine),
            4,
            "m2's three events and the later m1 one"
        );
        assert_eq!(
            stored_merchants(engine, 0),
            vec![(1, "m2".to_string()), (4, "m2".to_string())]
        );
        assert_eq!(
            stored_merchants(engine, 1),
            vec![(0, "m2".to_string()), (1, "m1".to_string())]
        );
        let job = engine
            .jobs_now()
            .into_iter()
            .find(|j| j.id == id)
            .expect("the job");
        assert_eq!(
            (job.events, job.state),
            (3, job::JobState::Published),
            "{job:?}"
        );
    };
    check(&engine);
    drop(engine);

    // A crash before any checkpoint covers the deletion: the raw files are already rewritten,
    // the checkpoint still has hour 0's segment with m1 in it. The replay must rebuild it.
    let (mut engine, _) = Engine::open(config).expect("reopen");
    for e in &log.entries {
        engine.apply(e).expect("replay");
    }
    engine.publish_persisted(true).expect("publish shards");
    check(&engine);
}

#[test]
fn a_copy_is_a_running_job_until_finished_or_cancelled_and_a_cancelled_one_never_finishes() {
    use super::command::TimelineCommand;
    use super::copies::{CopyFinish, CopyRecord};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = EngineConfig::new(dir.path());
    let mut log = Log { entries: vec![] };
    let (mut engine, _) = Engine::open(config.clone()).expect("open");
    let e = log.push(
        T0,
        &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
    );
    engine.apply(&e).expect("create");
    let record = |to: &str, boot: u64| CopyRecord {
        kind: crate::job::JobKind::Export,
        datasource: Some("beacons".into()),
        start_ms: Some(T0),
        end_ms: Some(T0 + HOUR),
        to: to.into(),
        node: 1,
        files: 0,
        bytes: 0,
        actor: "dba".into(),
        job: 0,
        time_ms: 0,
        boot,
        run: boot * 100 + to.len() as u64,
    };
    let start = |engine: &mut Engine, log: &mut Log, to: &str, boot: u64| {
        let cmd = Command::Timeline(TimelineCommand::CopyStarted(record(to, boot)));
        match engine.apply(&log.push(T0 + 10, &cmd)).expect("start") {
            Applied::Job { id } => id,
            other => panic!("a job, not {other:?}"),
        }
    };
    let state = |engine: &Engine, id: u64| {
        engine
            .jobs_now()
            .into_iter()
            .find(|j| j.id == id)
            .expect("job")
    };

    // Started, it runs; the node running it sees its progress and a cancel raises its flag.
    let a = start(&mut engine, &mut log, "/x/a", 7);
    let run = engine.register_copy(a).expect("register");
    assert_eq!(state(&engine, a).state, job::JobState::Running);
    run.add_bytes(42);
    assert_eq!(state(&engine, a).bytes_done, 42);
    let cancel = Command::Timeline(TimelineCommand::Cancel {
        job: a,
        reason: "cancelled by dba".into(),
    });
    engine.apply(&log.push(T0 + 20, &cancel)).expect("cancel");
    assert!(run.cancelled());
    assert_eq!(state(&engine, a).state, job::JobState::Cancelled);
    // Its end, logged after the cancel, is refused: the files it names are not vouched for.
    let finish = |job| {
        Command::Timeline(TimelineCommand::CopyFinished(CopyFinish {
            job,
            files: 2,
            bytes: 900,
            rows: 30,
            skipped: 1,
            position: None,
            batches: 3,
            bytes_read: 5000,
        }))
    };
    let refused = engine
        .apply(&log.push(T0 + 30, &finish(a)))
        .expect("finish");
    assert!(
        matches!(
            refused,
            Applied::Refused {
                status: RefusalStatus::Conflict,
                ..
            }
        ),
        "{refused:?}"
    );

    // Another finishes: done with what it wrote, on every replica alike; a deletion names it.
    let b = start(&mut engine, &mut log, "/x/b", 7);
    engine
        .apply(&log.push(T0 + 40, &finish(b)))
        .expect("finish");
    let done = state(&engine, b);
    assert_eq!(
        (done.state, done.events, done.rejected, done.files_written),
        (job::JobState::Published, 30, 1, 2)
    );
    assert_eq!(
        (done.bytes_done, done.bytes_total, done.batches_done),
        (5000, 5000, 3)
    );
    // A deletion's report names both by their state (the cancelled one may have left files).
    let described = engine.copies_holding("beacons", T0, T0 + HOUR, None);
    assert_eq!(described.len(), 2, "{described:?}");
    assert!(
        described[0].contains("/x/a") && described[0].contains("cancelled"),
        "{described:?}"
    );
    assert!(
        described[1].contains("/x/b") && described[1].contains("900 bytes"),
        "{described:?}"
    );
    assert!(
        engine
            .copies_holding("beacons", T0 + HOUR, T0 + 2 * HOUR, None)
            .is_empty(),
        "other hours"
    );
    assert_eq!(
        engine
            .copies_holding("beacons", T0, T0 + HOUR, Some(a))
            .len(),
        1,
        "logged after a"
    );

    // One left running: an orphan for a later boot of node 1; for this boot only once it is
    // neither starting nor registered.
    let c = start(&mut engine, &mut log, "/x/c", 7);
    let starting = |_: u64| true;
    let given_up = |_: u64| false;
    assert!(engine.orphan_copies(1, 7, &starting).is_empty());
    assert!(
        engine.orphan_copies(2, 8, &given_up).is_empty(),
        "another node's"
    );
    assert_eq!(
        engine
            .orphan_copies(1, 8, &starting)
            .iter()
            .map(|r| r.job)
            .collect::<Vec<_>>(),
        vec![c]
    );
    assert_eq!(
        engine
            .orphan_copies(1, 7, &given_up)
            .iter()
            .map(|r| r.job)
            .collect::<Vec<_>>(),
        vec![c]
    );
    let _registered = engine.register_copy(c).expect("register");
    assert!(
        engine.orphan_copies(1, 7, &given_up).is_empty(),
        "registered: it runs"
    );
    engine.unregister_copy(c);

    // After a restart the running copy is not rebuilt as if it were a reindex, and stays known.
    engine.checkpoint().expect("checkpoint");
    drop(engine);
    let (engine, _) = Engine::open(config).expect("reopen");
    assert_eq!(state(&engine, c).state, job::JobState::Running);
    assert_eq!(engine.orphan_copies(1, 8, &starting).len(), 1);
}

#[test]
fn raw_retention_waits_for_a_running_job_over_what_it_would_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = EngineConfig::new(dir.path());
    // Small raw files, so hour 0's batches fill sealed files retention may remove.
    config.raw_file_bytes_max = 1024;
    let mut log = Log { entries: vec![] };
    let (mut engine, _) = Engine::open(config).expect("open");
    let e = log.push(
        T0,
        &Command::catalog(CatalogCommand::CreateDatasource { spec: spec() }, "system"),
    );
    let Applied::Catalog(CatalogEffect::Created(id)) = engine.apply(&e).expect("create") else {
        panic!("created")
    };
    for k in 0..4 {
        let batch: Vec<_> = (0..10)
            .map(|i| beacon(T0 + k * 60_000 + i, "m1", "u1"))
            .collect();
        let e = log.push(T0 + 1000 + k, &events_cmd(0, &batch, None));
        engine.apply(&e).expect("events");
    }
    // Hour 0 closes into a segment, so no realtime index needs its raw files.
    let decisions = engine.persist_decisions(T0 + HOUR + 10 * 60_000);
    let e = log.push(
        T0 + HOUR + 10 * 60_000,
        &Command::Persist(decisions[0].clone()),
    );
    engine.apply(&e).expect("persist");
    engine.publish_persisted(true).expect("publish");
    let rule: tidemark_catalog::retention::Retention =
        tidemark_catalog::retention::Retention::from_json(r#"{"raw": "P1D"}"#).expect("rule");
    let put = tidemark_catalog::retention::RetentionCommand::PutRetention {
        datasource: "beacons".into(),
        retention: rule.clone(),
        would_remove: None,
    };
    let e = log.push(
        T0 + HOUR + 11 * 60_000,
        &Command::catalog(CatalogCommand::Retention(put), "admin"),
    );
    engine.apply(&e).expect("rule");
    let now = T0 + 3 * 24 * HOUR;
    let raw_retains = |engine: &Engine| {
        engine
            .retention_decisions(now)
            .into_iter()
            .filter(|c| {
                matches!(
                    c,
                    TimelineCommand::Retain {
                        raw_before_ms: Some(_),
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(raw_retains(&engine), 1, "hour 0's sealed files are due");
    let preview = engine
        .retention_preview("beacons", &rule, now)
        .expect("preview");
    let raw = preview.raw.clone().expect("raw form");
    assert!(
        raw.files.is_some_and(|n| n >= 1) && raw.events >= 10 && raw.bytes > 0,
        "{preview:?}"
    );
    assert!(preview.waiting_for_jobs.is_empty());

    // A reindex of hour 0 runs (until its publish is logged): removal waits for it.
    let start = TimelineCommand::Start {
        datasource: id,
        start_ms: T0,
        end_ms: T0 + HOUR,
        actor: "dba".into(),
    };
    let e = log.push(now, &Command::Timeline(start));
    let Applied::Job { id: job } = engine.apply(&e).expect("reindex") else {
        panic!("a job")
    };
    assert_eq!(
        raw_retains(&engine),
        0,
        "nothing is removed under a running job"
    );
    let preview = engine
        .retention_preview("beacons", &rule, now)
        .expect("preview");
    assert_eq!(preview.waiting_for_jobs, vec![job]);
    // A removal decided just before the job started spares its files at apply.
    let retain = TimelineCommand::Retain {
        datasource: id,
        raw_before_ms: Some(now - 24 * HOUR),
        rejects_before_ms: None,
        actor: "system:retention".into(),
        spare_running_jobs: true,
    };
    let e = log.push(now, &Command::Timeline(retain));
    engine.apply(&e).expect("retain");
    assert_eq!(
        engine
            .retention_preview("beacons", &rule, now)
            .and_then(|p| p.raw)
            .map(|r| r.events),
        Some(raw.events)
    );
    let e = log.push(
        now + 1,
        &Command::Timeline(TimelineCommand::Cancel {
            job,
            reason: "test".into(),
        }),
    );
    engine.apply(&e).expect("cancel");
    assert_eq!(raw_retains(&engine), 1, "due again once the job ended");
}
