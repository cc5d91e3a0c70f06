//! Storage errors. Every error names the file it concerns (and, for corruption, the byte
//! offset), so an operator can find the damage without reading code.

use crate::record::WalIdentity;
use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
pub enum StorageError {
    /// A system call on `path` failed.
    Io { path: PathBuf, source: io::Error },
    /// Bytes at `offset` of `file` cannot be verified. The node must not serve them.
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The log was written by another member or cluster (a data directory copied or
    /// mixed up). Starting from it would make this node vouch for another's promises.
    ForeignLog {
        file: PathBuf,
        found: WalIdentity,
        expected: WalIdentity,
    },
    /// The last segment ends at `offset`, inside the `durable_bytes` that every write
    /// to it made durable before acknowledging: records that were acknowledged are gone
    /// (the file was truncated, or newer segments were deleted). Not a torn write.
    TailCut {
        file: PathBuf,
        offset: u64,
        file_bytes: u64,
        durable_bytes: u64,
    },
    /// A segment of a format this build does not read.
    UnsupportedFormat { file: PathBuf, version: u32 },
    /// An earlier write or fdatasync failed: what reached the disk is unknown, so the log
    /// refuses further writes until it is reopened (and re-verified).
    Poisoned { path: PathBuf },
    /// A request cannot be stored (for example it encodes larger than a record may be).
    Invalid { reason: String },
    /// No snapshot with this slot exists.
    SnapshotMissing { dir: PathBuf, slot: u64 },
    /// The group-commit thread is gone.
    Closed,
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> StorageError {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> StorageError {
        StorageError::Corrupt {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// A copy of this error, for handing one failure to every request of a batch
    /// (`io::Error` is not `Clone`; the copy keeps its kind and message).
    pub fn duplicate(&self) -> StorageError {
        match self {
            StorageError::Io { path, source } => StorageError::Io {
                path: path.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            StorageError::Corrupt {
                file,
                offset,
                reason,
            } => StorageError::Corrupt {
                file: file.clone(),
                offset: *offset,
                reason: reason.clone(),
            },
            StorageError::ForeignLog {
                file,
                found,
                expected,
            } => StorageError::ForeignLog {
                file: file.clone(),
                found: *found,
                expected: *expected,
            },
            StorageError::TailCut {
                file,
                offset,
                file_bytes,
                durable_bytes,
            } => StorageError::TailCut {
                file: file.clone(),
                offset: *offset,
                file_bytes: *file_bytes,
                durable_bytes: *durable_bytes,
            },
            StorageError::UnsupportedFormat { file, version } => StorageError::UnsupportedFormat {
                file: file.clone(),
                version: *version,
            },
            StorageError::Poisoned { path } => StorageError::Poisoned { path: path.clone() },
            StorageError::Invalid { reason } => StorageError::Invalid {
                reason: reason.clone(),
            },
            StorageError::SnapshotMissing { dir, slot } => StorageError::SnapshotMissing {
                dir: dir.clone(),
                slot: *slot,
            },
            StorageError::Closed => StorageError::Closed,
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { path, source } => write!(f, "I/O error on {}: {source}", path.display()),
            StorageError::Corrupt {
                file,
                offset,
                reason,
            } => write!(
                f,
                "corrupt data in {} at offset {offset}: {reason}",
                file.display()
            ),
            StorageError::ForeignLog {
                file,
                found,
                expected,
            } => write!(
                f,
                "{} was written by {found}, but this is {expected}: the data directory belongs \
                 to another member or cluster. Nothing was changed; start this member with its own \
                 data directory (docs/operations.md)",
                file.display()
            ),
            StorageError::TailCut {
                file,
                offset,
                file_bytes,
                durable_bytes,
            } => write!(
                f,
                "{} was cut short: it is {file_bytes} bytes and its records end at offset \
                 {offset}, past the {durable_bytes} bytes a file of that length held durably \
                 (the log grows in whole preallocation steps, each synced before a record in \
                 it is acknowledged, so a crash never leaves it shorter than its records). \
                 Acknowledged records may be missing: the file was truncated or newer segments \
                 were deleted. This is not a torn write and nothing was repaired. Do not start \
                 this member from it: restore its data directory from a copy taken after it \
                 last ran (docs/operations.md)",
                file.display()
            ),
            StorageError::UnsupportedFormat { file, version } => write!(
                f,
                "{} has log format version {version}; this build reads version {} and does not \
                 convert older logs. Nothing was changed: run the build that wrote it, or start \
                 the whole cluster afresh from empty data directories (docs/operations.md)",
                file.display(),
                crate::record::FORMAT_VERSION
            ),
            StorageError::Poisoned { path } => write!(
                f,
                "write-ahead log in {} refused a write: an earlier write or fdatasync failed; reopen it",
                path.display()
            ),
            StorageError::Invalid { reason } => write!(f, "invalid request: {reason}"),
            StorageError::SnapshotMissing { dir, slot } => {
                write!(f, "no snapshot of slot {slot} in {}", dir.display())
            }
            StorageError::Closed => write!(f, "the group-commit thread has stopped"),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
