//! A diagnosis tool, not a test of its own: replays the whole Raft log kept in a node's data
//! directory (`TIDEMARK_REPLAY_DIR`) into a fresh engine, in one go with no restart, and
//! prints what each datasource's segments hold. Comparing that with what the node itself
//! holds tells a bug in apply from one in restart and recovery.
//! `TIDEMARK_REPLAY_DIR=/path cargo test --workspace --test replay_dir -- --ignored --nocapture`

use openraft::EntryPayload;
use openraft::storage::RaftLogReader;
use tidemark_engine::command::Entry;
use tidemark_engine::{Engine, EngineConfig};
use tidemark_raft::log_store::LogStore;

#[tokio::test]
#[ignore = "a diagnosis tool: needs TIDEMARK_REPLAY_DIR"]
async fn replay_a_nodes_raft_log_into_a_fresh_engine() {
    let Some(dir) = std::env::var_os("TIDEMARK_REPLAY_DIR").map(std::path::PathBuf::from) else {
        return;
    };
    let mut log = LogStore::open(&dir.join("raft")).expect("raft log");
    let entries = log.try_get_log_entries(0..u64::MAX).await.expect("entries");
    println!(
        "{} entries, first {:?}",
        entries.len(),
        entries.first().map(|e| e.log_id.index)
    );
    let out = tempfile::tempdir().expect("tempdir");
    let (mut engine, _) = Engine::open(EngineConfig::new(out.path())).expect("engine");
    for e in entries {
        if let EntryPayload::Normal(cmd) = e.payload {
            let entry = Entry {
                position: e.log_id.index,
                writer_time_ms: cmd.writer_time_ms,
                kind: cmd.kind,
                payload: cmd.payload,
            };
            if let Err(err) = engine.apply(&entry) {
                println!("entry {}: {err}", e.log_id.index);
            }
            engine.publish_persisted(false).expect("publish");
        }
    }
    engine.checkpoint().expect("checkpoint");
    let cp = std::fs::read_to_string(out.path().join("state").join("checkpoint.json"))
        .expect("checkpoint");
    let cp: serde_json::Value = serde_json::from_str(&cp).expect("json");
    for ds in cp["datasources"].as_array().into_iter().flatten() {
        println!(
            "datasource {} events_ingested {}",
            ds["id"], ds["events_ingested"]
        );
        for s in ds["segments"].as_array().into_iter().flatten() {
            println!(
                "  {} events {} published_at {}",
                s["file"], s["events"], s["published_at"]
            );
        }
    }
    let (ingested, rejected, realtime_rows, segments) = engine.totals();
    println!(
        "totals: ingested {ingested} rejected {rejected} realtime rows {realtime_rows} segments {segments}"
    );
}
