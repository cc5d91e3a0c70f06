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

const LOCK_FILE: &str = "lock";
const MEMBER_FILE: &str = "member";

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
}
