//! openraft's own storage test suite, run against the RocksDB log store and the engine state
//! machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use tempfile::TempDir;
use tidemark_engine::{Engine, EngineConfig, SharedEngine};
use tidemark_raft::TypeConfig;
use tidemark_raft::log_store::LogStore;
use tidemark_raft::state_machine::EngineStateMachine;

struct Builder;

fn store_error(e: std::io::Error) -> StorageError<TypeConfig> {
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, e)
}

impl StoreBuilder<TypeConfig, LogStore, EngineStateMachine, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, EngineStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(store_error)?;
        let log = LogStore::open(&dir.path().join("raft")).map_err(store_error)?;
        let config = EngineConfig::new(dir.path().join("data"));
        let (engine, _) =
            Engine::open(config.clone()).map_err(|e| store_error(std::io::Error::other(e)))?;
        let engine = SharedEngine::new(engine);
        let snapshots = tidemark_raft::snapshot::SnapshotTransfer::new(1, &config.data_dir);
        let sm = EngineStateMachine::new(engine, config, snapshots).map_err(store_error)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() {
    Suite::test_all(Builder)
        .await
        .expect("openraft storage suite");
}
