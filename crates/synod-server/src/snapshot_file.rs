//! The snapshot file `Maintenance.Snapshot` streams (and `etcdctl snapshot save` keeps):
//! an etcd backend database, so etcd's tools read it as they read etcd's own.
//!
//! It is a bbolt file ([`synod_storage::bolt`]) holding etcd's buckets, followed by the
//! sha256 of those bytes, as etcd's snapshots are:
//!
//! | bucket | keys → values |
//! |---|---|
//! | `key` | every retained revision, etcd's 17-byte `main_sub` (big endian, `t` appended for a delete) → `mvccpb.KeyValue` |
//! | `lease` | lease id (8 bytes, big endian) → `leasepb.Lease { ID, TTL }` |
//! | `meta` | `consistent_index` (the last slot applied), `finishedCompactRev` and `scheduledCompactRev` (the compacted revision, when there is one) |
//! | `synod` | `backup` → Synod's own backup of the whole state ([`synod_kv::encode_backup`]) |
//!
//! `etcdctl snapshot status` reports its hash, revision and key count; `etcdctl snapshot
//! restore` makes an etcd member of it (keys, revisions, compaction and leases carry over).
//! `synod snapshot restore` reads the `synod` bucket, which holds everything Synod keeps
//! (sessions aside) exactly, including what etcd's buckets cannot say (lease epochs,
//! members' alarms). A bare Synod backup (the format streamed before) is still read.

use crate::proto::mvccpb;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use synod_kv::{KvStore, StateMachine, BACKUP_MAGIC};
use synod_storage::bolt::{BoltBuilder, BoltError, BoltFile};

/// The bucket and key that hold Synod's backup.
pub const SYNOD_BUCKET: &[u8] = b"synod";
pub const BACKUP_KEY: &[u8] = b"backup";

const KEY_BUCKET: &[u8] = b"key";
const LEASE_BUCKET: &[u8] = b"lease";
const META_BUCKET: &[u8] = b"meta";
const SHA256_BYTES: usize = 32;

/// etcd's `leasepb.Lease`, as its `lease` bucket stores it.
#[derive(Clone, PartialEq, prost::Message)]
struct LeaseRecord {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
}

/// etcd's revision key: main and sub revision, big endian, joined by `_`.
fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&(main as u64).to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&(sub as u64).to_be_bytes());
    if tombstone {
        key.push(b't');
    }
    key
}

/// The snapshot file of `store`'s state.
pub fn encode(store: &KvStore) -> Vec<u8> {
    use prost::Message;
    let revisions = store
        .retained_events()
        .into_iter()
        .map(|event| {
            let tombstone = event.kv.is_none();
            let kv = match event.kv {
                Some(kv) => mvccpb::KeyValue {
                    key: kv.key.to_vec(),
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                    value: kv.value.to_vec(),
                    lease: kv.lease,
                },
                None => mvccpb::KeyValue {
                    key: event.key.to_vec(),
                    ..mvccpb::KeyValue::default()
                },
            };
            (
                revision_key(event.main, event.sub, tombstone),
                kv.encode_to_vec(),
            )
        })
        .collect();
    let leases = store
        .leases()
        .iter()
        .map(|(&id, &ttl)| {
            (
                (id as u64).to_be_bytes().to_vec(),
                LeaseRecord { id, ttl }.encode_to_vec(),
            )
        })
        .collect();
    let mut meta = vec![(
        b"consistent_index".to_vec(),
        store.applied().to_be_bytes().to_vec(),
    )];
    if store.compacted_revision() > 0 {
        let compacted = revision_key(store.compacted_revision(), 0, false);
        meta.push((b"finishedCompactRev".to_vec(), compacted.clone()));
        meta.push((b"scheduledCompactRev".to_vec(), compacted));
    }
    let mut builder = BoltBuilder::new();
    builder
        .bucket(KEY_BUCKET, revisions)
        .bucket(LEASE_BUCKET, leases)
        .bucket(META_BUCKET, meta)
        .bucket(SYNOD_BUCKET, vec![(BACKUP_KEY.to_vec(), store.backup())]);
    let mut file = builder.finish();
    let digest = Sha256::digest(&file);
    file.extend_from_slice(&digest);
    file
}

/// Why a file is not a snapshot Synod restores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotFileError {
    /// Neither a bbolt database nor a Synod backup.
    Unrecognized,
    /// The sha256 after the database does not match it.
    ChecksumMismatch,
    /// A bbolt file that cannot be read.
    Bolt(BoltError),
    /// An etcd snapshot (no `synod` bucket): taken from etcd, not from Synod.
    EtcdSnapshot,
}

impl std::fmt::Display for SnapshotFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotFileError::Unrecognized => write!(
                f,
                "not a snapshot: neither an etcd/Synod snapshot (a bbolt database) nor a Synod backup"
            ),
            SnapshotFileError::ChecksumMismatch => write!(
                f,
                "the snapshot's sha256 does not match its contents (damaged or cut short)"
            ),
            SnapshotFileError::Bolt(error) => write!(f, "{error}"),
            SnapshotFileError::EtcdSnapshot => write!(
                f,
                "a snapshot taken from etcd, not from Synod (it has no `synod` bucket): \
                 Synod restores only its own snapshots"
            ),
        }
    }
}

impl std::error::Error for SnapshotFileError {}

/// The database bytes of a snapshot file, without (and checked against) the sha256 etcd
/// appends; `None` when there is no trailer, as in a database file copied from disk.
fn database(file: &[u8]) -> Result<&[u8], SnapshotFileError> {
    // etcd's rule (`snapshot restore`): a length 32 more than a multiple of 512 means a
    // trailer, as a bbolt file is whole pages.
    if file.len() % 512 != SHA256_BYTES {
        return Ok(file);
    }
    let (database, trailer) = file.split_at(file.len() - SHA256_BYTES);
    if Sha256::digest(database).as_slice() != trailer {
        return Err(SnapshotFileError::ChecksumMismatch);
    }
    Ok(database)
}

/// Synod's backup inside a snapshot file (or the file itself, when it is a bare backup),
/// for [`KvStore::from_backup`].
pub fn backup_bytes(file: &[u8]) -> Result<Cow<'_, [u8]>, SnapshotFileError> {
    if file.starts_with(BACKUP_MAGIC) {
        return Ok(Cow::Borrowed(file));
    }
    let database = database(file)?;
    let bolt = match BoltFile::open(database) {
        Ok(bolt) => bolt,
        Err(BoltError::NotBolt) => return Err(SnapshotFileError::Unrecognized),
        Err(error) => return Err(SnapshotFileError::Bolt(error)),
    };
    match bolt
        .get(SYNOD_BUCKET, BACKUP_KEY)
        .map_err(SnapshotFileError::Bolt)?
    {
        Some(backup) => Ok(Cow::Borrowed(backup)),
        None => Err(SnapshotFileError::EtcdSnapshot),
    }
}

/// What `etcdctl snapshot status` reports of a snapshot, computed as it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SnapshotStatus {
    /// crc32c over every bucket's name and then its keys and values, in order.
    pub hash: u32,
    /// The main revision of the last key in the `key` bucket.
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_keys: u64,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// The status of a snapshot file (Synod's or etcd's), as `etcdctl snapshot status` says it.
pub fn status(file: &[u8]) -> Result<SnapshotStatus, SnapshotFileError> {
    let database = database(file)?;
    let bolt = match BoltFile::open(database) {
        Ok(bolt) => bolt,
        Err(BoltError::NotBolt) => return Err(SnapshotFileError::Unrecognized),
        Err(error) => return Err(SnapshotFileError::Bolt(error)),
    };
    let mut hash = 0u32;
    let mut revision = 0;
    let mut total_keys = 0;
    for name in bolt.buckets().map_err(SnapshotFileError::Bolt)? {
        hash = crc32c::crc32c_append(hash, name);
        let entries = bolt
            .bucket(name)
            .map_err(SnapshotFileError::Bolt)?
            .unwrap_or_default();
        for entry in entries {
            hash = crc32c::crc32c_append(hash, entry.key);
            hash = crc32c::crc32c_append(hash, entry.value);
            if name == KEY_BUCKET {
                let main = entry.key.get(..8).ok_or_else(|| {
                    SnapshotFileError::Bolt(BoltError::Corrupt(
                        "a key revision shorter than 8 bytes".into(),
                    ))
                })?;
                revision = u64::from_be_bytes(main.try_into().unwrap_or_default()) as i64;
            }
            total_keys += 1;
        }
    }
    Ok(SnapshotStatus {
        hash,
        revision,
        total_keys,
        total_size: bolt.size(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_kv::{Command, Op, PutRequest};

    fn put(store: &mut KvStore, key: &str, value: &str) {
        let slot = store.applied() + 1;
        store.execute(
            slot,
            &Command::unsessioned(Op::Put(PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                ..PutRequest::default()
            })),
        );
    }

    #[test]
    fn a_snapshot_file_restores_the_store_it_was_taken_of() {
        let mut store = KvStore::new();
        for i in 0..100 {
            put(&mut store, &format!("k{i}"), "v");
        }
        let file = encode(&store);
        assert_eq!(file.len() % 512, SHA256_BYTES);
        let backup = backup_bytes(&file).expect("backup");
        let restored = KvStore::from_backup(&backup, &KvStore::new()).expect("restore");
        assert_eq!(restored.revision(), store.revision());
        assert_eq!(restored.len(), 100);
        assert_eq!(restored.get(b"k42"), store.get(b"k42"));
        let status = status(&file).expect("status");
        assert_eq!(status.revision, store.revision());
        // 100 revisions, the meta bucket's consistent index, the backup.
        assert_eq!(status.total_keys, 102);
        assert_eq!(status.total_size, (file.len() - SHA256_BYTES) as u64);
        // A bare backup (the format streamed before) still restores.
        assert_eq!(
            backup_bytes(&store.backup()).expect("bare"),
            store.backup().as_slice()
        );
    }

    #[test]
    fn damaged_and_foreign_snapshot_files_are_refused_by_name() {
        let mut store = KvStore::new();
        put(&mut store, "a", "1");
        let file = encode(&store);
        let mut flipped = file.clone();
        flipped[5 * 512] ^= 1;
        assert_eq!(
            backup_bytes(&flipped).unwrap_err(),
            SnapshotFileError::ChecksumMismatch
        );
        assert_eq!(
            backup_bytes(b"hello, world").unwrap_err(),
            SnapshotFileError::Unrecognized
        );
        // An etcd snapshot: etcd's buckets and no `synod` bucket.
        let mut builder = BoltBuilder::new();
        builder.bucket(KEY_BUCKET, Vec::new());
        builder.bucket(META_BUCKET, Vec::new());
        assert_eq!(
            backup_bytes(&builder.finish()).unwrap_err(),
            SnapshotFileError::EtcdSnapshot
        );
    }
}
