//! Exclusive ownership of a data directory and the identity it records.
//!
//! Two processes acting as one acceptor would each promise and accept on their own and
//! break Paxos's quorum intersection (issue 15: both led at the same ballot and an
//! acknowledged write vanished). So a replica holds an exclusive `flock` on
//! `<data-dir>/lock` for its lifetime, as etcd locks its WAL files; the kernel drops it
//! when the process dies, however it dies. The holder writes its pid into the file so
//! the refusal can name it.

use crate::config::ServerConfig;
use crate::ServerError;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use synod_kv::KvStore;

const LOCK_FILE: &str = "lock";
const MEMBER_FILE: &str = "member";
/// The backup a new cluster starts from (`synod snapshot restore`), kept for the data
/// directory's lifetime: a restart replays the log from it until a snapshot replaces it.
pub const INITIAL_STATE_FILE: &str = "initial-state";

/// Held while a replica runs; dropping it (or the process ending) releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `dir` (created if missing), or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, ServerError> {
        let io = |path: &Path, error: std::io::Error| {
            ServerError::Io(format!("{}: {error}", path.display()))
        };
        std::fs::create_dir_all(dir).map_err(|error| io(dir, error))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|error| io(&path, error))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse::<u32>().ok());
                return Err(ServerError::DataDirInUse {
                    dir: dir.to_path_buf(),
                    pid: holder,
                });
            }
            Err(TryLockError::Error(error)) => return Err(io(&path, error)),
        }
        file.set_len(0)
            .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(|error| io(&path, error))?;
        Ok(DataDirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The `member` file's contents for this configuration.
fn identity_text(config: &ServerConfig) -> String {
    format!(
        "cluster_id={:016x}\nnode_id={}\n",
        config.cluster.cluster_id, config.node_id
    )
}

/// Refuses a data directory that belongs to another member or cluster. Returns whether
/// the directory already belonged to this member (its `member` file exists), which
/// means the node had durable state that must still be there.
pub fn check_member_file(config: &ServerConfig) -> Result<bool, ServerError> {
    let path = config.data_dir.join(MEMBER_FILE);
    match std::fs::read_to_string(&path) {
        Ok(existing) if existing == identity_text(config) => Ok(true),
        Ok(existing) => Err(ServerError::Recovery(format!(
            "{} belongs to another member or cluster ({}), not to node {} of cluster {:016x}",
            config.data_dir.display(),
            existing.trim().replace('\n', ", "),
            config.node_id,
            config.cluster.cluster_id
        ))),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(ServerError::Io(format!("{}: {error}", path.display()))),
    }
}

/// Records the member's identity, durably, once its write-ahead log exists: from then
/// on a missing log means the node forgot what it promised.
pub fn write_member_file(config: &ServerConfig) -> Result<(), ServerError> {
    let path = config.data_dir.join(MEMBER_FILE);
    let io = |error: std::io::Error| ServerError::Io(format!("{}: {error}", path.display()));
    let mut file = File::create(&path).map_err(io)?;
    file.write_all(identity_text(config).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io)?;
    File::open(&config.data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| ServerError::Io(format!("{}: {error}", config.data_dir.display())))
}

/// The refusal for a node whose `member` file says it had state but whose log is gone.
pub fn amnesia_error(config: &ServerConfig, wal_dir: &Path) -> ServerError {
    ServerError::Recovery(format!(
        "{} says this directory belongs to node {} of cluster {:016x}, but its write-ahead \
         log {} is missing or empty. Starting would make this acceptor forget its promises \
         and accepted values (unsafe for Paxos), so it does not start. Restore {} from a \
         copy taken after the node last ran (an older copy is partial amnesia); if there is none, see docs/operations.md \
         (\"a member lost its log\")",
        config.data_dir.join(MEMBER_FILE).display(),
        config.node_id,
        config.cluster.cluster_id,
        wal_dir.display(),
        wal_dir.display()
    ))
}

/// What `synod snapshot restore` put in place.
#[derive(Debug)]
pub struct Restored {
    pub origin: crate::snapshot_file::Origin,
    pub revision: i64,
    pub compacted_revision: i64,
    pub keys: usize,
}

/// Checks the backup at `backup` and makes `data_dir` (which must not exist, or be empty)
/// start a new cluster from it. A file that is not a sound backup writes nothing.
pub fn restore_backup(backup: &Path, data_dir: &Path) -> Result<Restored, ServerError> {
    let io = |path: &Path, error: std::io::Error| {
        ServerError::Io(format!("{}: {error}", path.display()))
    };
    let bytes = std::fs::read(backup).map_err(|error| io(backup, error))?;
    let (store, origin) = crate::snapshot_file::read_store(&bytes, &KvStore::new())
        .map_err(|error| ServerError::Recovery(format!("{}: {error}", backup.display())))?;
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(ServerError::Recovery(format!(
                    "{} is not empty: a restore starts a new member and needs a new data directory",
                    data_dir.display()
                )));
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(data_dir, error)),
    }
    std::fs::create_dir_all(data_dir).map_err(|error| io(data_dir, error))?;
    let path = data_dir.join(INITIAL_STATE_FILE);
    let partial = data_dir.join(format!("{INITIAL_STATE_FILE}.part"));
    let mut file = File::create(&partial).map_err(|error| io(&partial, error))?;
    file.write_all(&store.backup())
        .and_then(|()| file.sync_all())
        .map_err(|error| io(&partial, error))?;
    std::fs::rename(&partial, &path).map_err(|error| io(&path, error))?;
    File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io(data_dir, error))?;
    Ok(Restored {
        origin,
        revision: store.revision(),
        compacted_revision: store.compacted_revision(),
        keys: store.len(),
    })
}

/// The state a data directory's cluster started from: empty (`template`), or the backup
/// `synod snapshot restore` left, with a fingerprint of it that the node mixes into its
/// cluster id, so members restored from different files (or none) refuse each other.
pub fn initial_state(data_dir: &Path, template: KvStore) -> Result<(KvStore, u64), ServerError> {
    let path = data_dir.join(INITIAL_STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((template, 0)),
        Err(error) => return Err(ServerError::Io(format!("{}: {error}", path.display()))),
    };
    let store = KvStore::from_backup(&bytes, &template)
        .map_err(|error| ServerError::Recovery(format!("{}: {error}", path.display())))?;
    Ok((store, crate::config::fnv1a64(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_naming_the_directory_and_the_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = DataDirLock::acquire(dir.path()).expect("first lock");
        let error = DataDirLock::acquire(dir.path()).expect_err("second lock");
        assert_eq!(
            error,
            ServerError::DataDirInUse {
                dir: dir.path().to_path_buf(),
                pid: Some(std::process::id()),
            }
        );
        let message = error.to_string();
        assert!(
            message.contains(&dir.path().display().to_string()),
            "{message}"
        );
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        drop(held);
        DataDirLock::acquire(dir.path()).expect("free again once released");
    }

    #[test]
    fn a_restore_writes_the_initial_state_and_a_bad_file_or_a_used_directory_nothing() {
        use synod_kv::{Command, Op, PutRequest, StateMachine};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = KvStore::new();
        let put = Command::unsessioned(Op::Put(PutRequest {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        }));
        store.apply(1, &put.encode());
        let backup = dir.path().join("backup.db");
        std::fs::write(&backup, crate::snapshot_file::encode(&store)).expect("write backup");
        let foreign = dir.path().join("foreign.db");
        std::fs::write(&foreign, b"not a backup").expect("write foreign");
        let from_etcd = dir.path().join("etcd.db");
        let mut etcd = synod_storage::bolt::BoltBuilder::new();
        etcd.bucket(b"key", vec![(b"k".to_vec(), b"v".to_vec())]);
        std::fs::write(&from_etcd, etcd.finish()).expect("write etcd's");

        let refused = dir.path().join("refused");
        let error = restore_backup(&foreign, &refused).expect_err("a foreign file");
        assert!(error.to_string().contains("not a snapshot"), "{error}");
        let error = restore_backup(&from_etcd, &refused).expect_err("an empty etcd snapshot");
        assert!(error.to_string().contains("etcd snapshot"), "{error}");
        assert!(!refused.exists(), "a refused restore writes nothing");
        // The bare backup Synod streamed before still restores.
        let bare = dir.path().join("bare.db");
        std::fs::write(&bare, store.backup()).expect("write bare backup");
        let restored = restore_backup(&bare, &dir.path().join("from-bare")).expect("restore");
        assert_eq!((restored.revision, restored.keys), (2, 1));

        let data = dir.path().join("data");
        let restored = restore_backup(&backup, &data).expect("restore");
        assert_eq!((restored.revision, restored.keys), (2, 1));
        let (initial, fingerprint) = initial_state(&data, KvStore::new()).expect("initial");
        assert_ne!(fingerprint, 0);
        assert_eq!(initial.get(b"k"), store.get(b"k"));
        assert_eq!(initial.applied(), 0);
        let error = restore_backup(&backup, &data).expect_err("a used directory");
        assert!(error.to_string().contains("not empty"), "{error}");

        let (empty, none) = initial_state(&refused, KvStore::new()).expect("no file");
        assert_eq!((empty.revision(), none), (1, 0));
    }
}
