//! Replacing a replica's whole state with a snapshot taken on another replica: the data files
//! (raw logs, segments) fetched into a staging directory, and the checkpoint that names them.
//!
//! The engine's durable state is `state/checkpoint.json` plus the `datasources/` tree it
//! refers to. Swapping both cannot be one rename, so the swap is a small redo log:
//!
//! 1. link every staged file into `datasources.incoming/` (same layout as `datasources/`),
//!    and fsync it;
//! 2. write the new checkpoint to `state/install.json` (the marker): from here the install
//!    is decided and will be finished, even after a crash;
//! 3. move `datasources/` aside, move `datasources.incoming/` in, write the checkpoint, remove
//!    the marker, delete the old tree.
//!
//! Every step of 3 can be redone, and [`finish_interrupted`] (run by `Engine::open`) does so.
//! A crash before the marker leaves the old state whole, and the leftover incoming tree is
//! removed. The caller must have stopped everything that writes to the data directory
//! (`Engine::quiesce`, and holding the engine's lock) while this runs.

use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::checkpoint::{self, Checkpoint};
use crate::{Error, Result};

const LIVE: &str = "datasources";
const INCOMING: &str = "datasources.incoming";
const REPLACED: &str = "datasources.replaced";

fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join("state").join("install.json")
}

/// A data file of the snapshot: where it goes (relative to the data directory, under
/// `datasources/`) and where it was staged.
#[derive(Debug, Clone)]
pub struct StagedFile {
    pub relative: PathBuf,
    pub staged: PathBuf,
}

/// Makes `checkpoint` and `files` this node's state, replacing all datasource data.
pub fn install(data_dir: &Path, checkpoint: &Checkpoint, files: &[StagedFile]) -> Result<()> {
    let incoming = data_dir.join(INCOMING);
    remove_tree(&incoming)?;
    fs::create_dir_all(&incoming).map_err(Error::io(&incoming))?;
    let mut dirs = vec![incoming.clone()];
    for f in files {
        let rest = under_datasources(&f.relative)?;
        let dest = incoming.join(rest);
        let parent = dest.parent().unwrap_or(&incoming).to_path_buf();
        if !dirs.contains(&parent) {
            fs::create_dir_all(&parent).map_err(Error::io(&parent))?;
            dirs.push(parent);
        }
        // The staged file stays where it is until the install is done: a hard link makes the
        // tree without copying, and both names point at bytes already fsync'd by the fetcher.
        if fs::hard_link(&f.staged, &dest).is_err() {
            fs::copy(&f.staged, &dest).map_err(Error::io(&dest))?;
            fs::File::open(&dest)
                .and_then(|d| d.sync_all())
                .map_err(Error::fsync(&dest))?;
        }
    }
    for d in dirs.iter().rev() {
        sync_dir(d)?;
    }
    let marker = marker_path(data_dir);
    write_atomically(
        &marker,
        &serde_json::to_vec(checkpoint)
            .map_err(|e| Error::Internal(format!("checkpoint encode: {e}")))?,
    )?;
    finish(data_dir)
}

/// Finishes an install that a crash interrupted after it was decided; removes the leftovers of
/// one that was not. Returns whether an install was finished.
pub fn finish_interrupted(data_dir: &Path) -> Result<bool> {
    if marker_path(data_dir).exists() {
        finish(data_dir)?;
        return Ok(true);
    }
    remove_tree(&data_dir.join(INCOMING))?;
    remove_tree(&data_dir.join(REPLACED))?;
    Ok(false)
}

fn finish(data_dir: &Path) -> Result<()> {
    let marker = marker_path(data_dir);
    let bytes = fs::read(&marker).map_err(Error::io(&marker))?;
    let cp: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        path: marker.clone(),
        position: 0,
        reason: format!("snapshot install record unreadable: {e}"),
    })?;
    let (live, incoming, replaced) = (
        data_dir.join(LIVE),
        data_dir.join(INCOMING),
        data_dir.join(REPLACED),
    );
    if incoming.exists() {
        if live.exists() {
            remove_tree(&replaced)?;
            fs::rename(&live, &replaced).map_err(Error::io(&live))?;
        }
        fs::rename(&incoming, &live).map_err(Error::io(&incoming))?;
        sync_dir(data_dir)?;
    }
    checkpoint::store(data_dir, &cp)?;
    fs::remove_file(&marker).map_err(Error::io(&marker))?;
    sync_dir(marker.parent().unwrap_or(data_dir))?;
    remove_tree(&replaced)
}

/// The part of a snapshot file's path below `datasources/`; anything else (an absolute path,
/// `..`) is refused, since the path comes from another node.
fn under_datasources(relative: &Path) -> Result<PathBuf> {
    let mut parts = relative.components();
    let bad = || Error::Corrupt {
        path: relative.to_path_buf(),
        position: 0,
        reason: "a snapshot may only carry files under datasources/".into(),
    };
    if parts.next() != Some(Component::Normal(LIVE.as_ref())) {
        return Err(bad());
    }
    let rest: PathBuf = parts.clone().collect();
    if rest.as_os_str().is_empty() || !parts.all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad());
    }
    Ok(rest)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(Error::io(dir))?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(bytes).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::fsync(&tmp))?;
    fs::rename(&tmp, path).map_err(Error::io(path))?;
    sync_dir(dir)
}

fn remove_tree(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::fsync(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint_at(position: u64) -> Checkpoint {
        Checkpoint {
            version: checkpoint::CHECKPOINT_VERSION,
            applied_position: position,
            writer_time_ms: 0,
            catalog: Default::default(),
            datasources: Vec::new(),
            idempotency: crate::idempotency::IdempotencyWindow::new(1000, 10),
            rejects: crate::rejects::RejectsTable::new(10),
            producers: Default::default(),
            consumer_offsets: Default::default(),
            replication: None,
            jobs: Vec::new(),
            copies: Vec::new(),
        }
    }

    #[test]
    fn install_replaces_the_tree_and_the_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path();
        fs::create_dir_all(data.join("datasources/1/raw/0")).expect("mkdir");
        fs::write(data.join("datasources/1/raw/0/old.raw"), b"old").expect("write");
        checkpoint::store(data, &checkpoint_at(5)).expect("store");
        let staged = data.join("staging-a");
        fs::write(&staged, b"new bytes").expect("write");
        let files = [StagedFile {
            relative: "datasources/2/segments/a.seg".into(),
            staged,
        }];
        install(data, &checkpoint_at(90), &files).expect("install");
        assert!(!data.join("datasources/1").exists());
        assert_eq!(
            fs::read(data.join("datasources/2/segments/a.seg")).expect("read"),
            b"new bytes"
        );
        assert_eq!(
            checkpoint::load(data)
                .expect("load")
                .expect("some")
                .applied_position,
            90
        );
        assert!(
            !marker_path(data).exists()
                && !data.join(REPLACED).exists()
                && !data.join(INCOMING).exists()
        );
    }

    #[test]
    fn a_decided_install_is_finished_after_a_crash_and_an_undecided_one_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path();
        fs::create_dir_all(data.join("datasources/1")).expect("mkdir");
        checkpoint::store(data, &checkpoint_at(5)).expect("store");
        // Crash after the incoming tree was built, before the marker: the old state stays.
        fs::create_dir_all(data.join("datasources.incoming/7")).expect("mkdir");
        assert!(!finish_interrupted(data).expect("finish"));
        assert!(data.join("datasources/1").exists() && !data.join(INCOMING).exists());
        assert_eq!(
            checkpoint::load(data)
                .expect("load")
                .expect("some")
                .applied_position,
            5
        );
        // Crash after the marker and after the live tree was moved aside.
        fs::create_dir_all(data.join("datasources.incoming/7")).expect("mkdir");
        write_atomically(
            &marker_path(data),
            &serde_json::to_vec(&checkpoint_at(40)).expect("json"),
        )
        .expect("marker");
        fs::rename(data.join("datasources"), data.join(REPLACED)).expect("rename");
        assert!(finish_interrupted(data).expect("finish"));
        assert!(data.join("datasources/7").exists() && !data.join(REPLACED).exists());
        assert_eq!(
            checkpoint::load(data)
                .expect("load")
                .expect("some")
                .applied_position,
            40
        );
    }

    #[test]
    fn paths_outside_the_datasources_tree_are_refused() {
        for bad in [
            "state/checkpoint.json",
            "datasources/../raft/x",
            "/etc/passwd",
            "datasources",
        ] {
            assert!(under_datasources(Path::new(bad)).is_err(), "{bad} accepted");
        }
        assert_eq!(
            under_datasources(Path::new("datasources/3/raw/0/x.raw")).expect("ok"),
            PathBuf::from("3/raw/0/x.raw")
        );
    }
}
