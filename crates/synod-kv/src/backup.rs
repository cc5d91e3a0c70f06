//! Backup files: what `Maintenance.Snapshot` streams and `synod snapshot restore` reads.
//!
//! A backup is the store's snapshot image behind a header that names it and checks it:
//!
//! | bytes | contents |
//! |---|---|
//! | 16 | [`BACKUP_MAGIC`] |
//! | 4 | file format version, little endian (1) |
//! | 8 | image length, little endian |
//! | 4 | crc32c of the image, little endian |
//! | n | the image ([`crate::StateMachine::snapshot`]) |
//! | … | zeros, up to a length of 32 more than a multiple of 512 |
//!
//! `Maintenance.Snapshot` streams a backup inside an etcd snapshot file (a bbolt database
//! with etcd's buckets, in its `synod` bucket: synod-server's `snapshot_file`), which etcd's
//! tools read; `synod snapshot restore` takes the backup back out. A bare backup is still
//! restored. The padding made a bare backup pass etcdctl 3.4's `snapshot save` length check
//! (a bolt file in 4 KiB pages, then its sha256: 32 more than a multiple of 512).

use crate::store::KvStore;
use crate::SnapshotError;

/// The first bytes of every backup file.
pub const BACKUP_MAGIC: &[u8; 16] = b"synod-kv-backup\n";

const FILE_FORMAT: u32 = 1;
const HEADER_BYTES: usize = 16 + 4 + 8 + 4;

/// Why a file is not a usable backup.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupError {
    /// The file does not start with [`BACKUP_MAGIC`]: it is no backup of Synod's.
    NotABackup,
    /// A backup file format this build does not read.
    UnknownFormat(u32),
    /// The file is shorter than its header says.
    Truncated {
        expected_bytes: u64,
        found_bytes: u64,
    },
    /// The image does not match its checksum, or the padding is not zeros.
    Corrupt(String),
    /// The image passes its checksum but is not a snapshot this build restores.
    Image(SnapshotError),
}

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupError::NotABackup => write!(
                f,
                "not a Synod backup (it does not start with {:?})",
                String::from_utf8_lossy(BACKUP_MAGIC).trim_end()
            ),
            BackupError::UnknownFormat(format) => write!(
                f,
                "backup file format {format} is not read by this build (it reads {FILE_FORMAT})"
            ),
            BackupError::Truncated {
                expected_bytes,
                found_bytes,
            } => write!(
                f,
                "backup is truncated: its header needs {expected_bytes} bytes, the file has {found_bytes}"
            ),
            BackupError::Corrupt(why) => write!(f, "backup is corrupt: {why}"),
            BackupError::Image(error) => write!(f, "backup holds no usable snapshot: {error}"),
        }
    }
}

impl std::error::Error for BackupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BackupError::Image(error) => Some(error),
            _ => None,
        }
    }
}

/// The backup file of a snapshot image.
pub fn encode_backup(image: &[u8]) -> Vec<u8> {
    let unpadded = HEADER_BYTES + image.len();
    // The smallest length >= unpadded that is 32 more than a multiple of 512.
    let total = unpadded + (512 + 32 - unpadded % 512) % 512;
    let mut file = Vec::with_capacity(total);
    file.extend_from_slice(BACKUP_MAGIC);
    file.extend_from_slice(&FILE_FORMAT.to_le_bytes());
    file.extend_from_slice(&(image.len() as u64).to_le_bytes());
    file.extend_from_slice(&crc32c::crc32c(image).to_le_bytes());
    file.extend_from_slice(image);
    file.resize(total, 0);
    file
}

/// The image inside a backup file, checked against its header.
pub fn backup_image(file: &[u8]) -> Result<&[u8], BackupError> {
    if file.len() < BACKUP_MAGIC.len() || &file[..BACKUP_MAGIC.len()] != BACKUP_MAGIC {
        return Err(BackupError::NotABackup);
    }
    if file.len() < HEADER_BYTES {
        return Err(BackupError::Truncated {
            expected_bytes: HEADER_BYTES as u64,
            found_bytes: file.len() as u64,
        });
    }
    let field = |from: usize, to: usize| &file[from..to];
    let format = u32::from_le_bytes(field(16, 20).try_into().unwrap_or_default());
    if format != FILE_FORMAT {
        return Err(BackupError::UnknownFormat(format));
    }
    let length = u64::from_le_bytes(field(20, 28).try_into().unwrap_or_default());
    let checksum = u32::from_le_bytes(field(28, 32).try_into().unwrap_or_default());
    let body = &file[HEADER_BYTES..];
    if length > body.len() as u64 {
        return Err(BackupError::Truncated {
            expected_bytes: HEADER_BYTES as u64 + length,
            found_bytes: file.len() as u64,
        });
    }
    let (image, padding) = body.split_at(length as usize);
    if crc32c::crc32c(image) != checksum {
        return Err(BackupError::Corrupt(format!(
            "the image's crc32c is {:08x}, the header says {checksum:08x}",
            crc32c::crc32c(image)
        )));
    }
    if padding.len() >= 512 || padding.iter().any(|&byte| byte != 0) {
        return Err(BackupError::Corrupt(
            "bytes after the image are not the zero padding".to_string(),
        ));
    }
    Ok(image)
}

impl KvStore {
    /// The backup file of this store's current state.
    pub fn backup(&self) -> Vec<u8> {
        use crate::StateMachine;
        encode_backup(&self.snapshot())
    }

    /// A store holding etcd's data, as its snapshot's `key` bucket lists it (revisions in
    /// any order), with its compacted revision and its leases (id, TTL): the first state of
    /// a new cluster migrated from etcd, with `template`'s settings. Data that is not a
    /// consistent history (a revision whose key does not change there, versions that do
    /// not count up, a key naming a lease that is missing …) is refused.
    pub fn from_etcd(
        events: Vec<crate::RetainedEvent>,
        compacted: i64,
        leases: Vec<(i64, i64)>,
        template: &KvStore,
    ) -> Result<KvStore, BackupError> {
        crate::image::from_etcd(events, compacted, leases, template).map_err(BackupError::Image)
    }

    /// A store holding a backup's keys, history, revisions and alarms, with `template`'s
    /// settings, as the first state of a new cluster: no slot applied yet and no client
    /// sessions (the log that numbered them and the clients belong to the old cluster).
    pub fn from_backup(file: &[u8], template: &KvStore) -> Result<KvStore, BackupError> {
        let image = backup_image(file)?;
        let mut store = crate::image::decode(image, template).map_err(BackupError::Image)?;
        store.applied = 0;
        store.sessions = crate::sessions::Sessions::new(template.max_sessions());
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{compact, delete, put, run};
    use crate::*;

    fn store() -> KvStore {
        let mut store = KvStore::new();
        for op in [put("a", "1"), put("b", "2"), delete("a"), put("a", "3")] {
            run(&mut store, op);
        }
        run(&mut store, compact(3));
        store.execute(
            store.applied() + 1,
            &Command {
                client: 9,
                seq: 1,
                op: put("c", "4"),
            },
        );
        store
    }

    #[test]
    fn a_backup_restores_the_keys_history_and_revisions_as_a_new_clusters_first_state() {
        let original = store();
        let file = original.backup();
        assert_eq!(file.len() % 512, 32, "etcdctl 3.4 checks this length");
        let restored = KvStore::from_backup(&file, &KvStore::new()).unwrap();
        assert_eq!(restored.revision(), original.revision());
        assert_eq!(restored.compacted_revision(), 3);
        assert_eq!(restored.hash_kv(0), original.hash_kv(0));
        assert_eq!(restored.get(b"a"), original.get(b"a"));
        assert_eq!(restored.applied(), 0);
        assert_eq!(restored.session_count(), 0);
    }

    #[test]
    fn every_length_pads_to_what_etcdctl_accepts() {
        for length in [0, 1, 479, 480, 481, 991, 992, 993, 5000] {
            let file = encode_backup(&vec![7; length]);
            assert_eq!(file.len() % 512, 32, "image of {length} bytes");
            assert!(file.len() < HEADER_BYTES + length + 512);
            assert_eq!(backup_image(&file).unwrap(), vec![7; length].as_slice());
        }
    }

    #[test]
    fn foreign_truncated_and_corrupt_files_are_refused_with_the_reason() {
        let file = store().backup();
        let template = KvStore::new();
        let refuse = |bytes: &[u8]| KvStore::from_backup(bytes, &template).unwrap_err();
        assert_eq!(refuse(b"bolt db pages..."), BackupError::NotABackup);
        assert_eq!(refuse(&[]), BackupError::NotABackup);
        assert!(matches!(
            refuse(&file[..HEADER_BYTES + 3]),
            BackupError::Truncated { .. }
        ));
        let mut flipped = file.clone();
        flipped[HEADER_BYTES + 2] ^= 1;
        assert!(matches!(refuse(&flipped), BackupError::Corrupt(_)));
        let mut tail = file.clone();
        *tail.last_mut().unwrap() = 1;
        assert!(matches!(refuse(&tail), BackupError::Corrupt(_)));
        let mut format = file.clone();
        format[16] = 9;
        assert_eq!(refuse(&format), BackupError::UnknownFormat(9));
        // A checksummed image that is no snapshot.
        let junk = encode_backup(&[SNAPSHOT_FORMAT_VERSION, 0xff, 0xff]);
        assert!(matches!(refuse(&junk), BackupError::Image(_)));
        assert!(refuse(&junk).to_string().contains("no usable snapshot"));
    }
}
