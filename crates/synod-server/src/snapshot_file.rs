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
//! members' alarms). A bare Synod backup (the format streamed before) is still read, and so
//! is a snapshot of etcd (no `synod` bucket): its keys, revisions, compaction and leases.

use crate::proto::mvccpb;
use sha2::{Digest, Sha256};
use synod_kv::{BackupError, KvStore, StateMachine, BACKUP_MAGIC};
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
                Some(kv) => mvccpb::KeyValue::from(kv),
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
    /// Synod's backup inside the file is not usable.
    Backup(BackupError),
    /// An etcd snapshot whose data is not what etcd writes: what is wrong.
    EtcdData(String),
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
            SnapshotFileError::Backup(error) => write!(f, "{error}"),
            SnapshotFileError::EtcdData(why) => write!(f, "an etcd snapshot Synod cannot read: {why}"),
        }
    }
}

impl std::error::Error for SnapshotFileError {}

/// Where a restored state came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A snapshot Synod streamed (its `synod` bucket).
    Synod,
    /// A bare Synod backup (what Synod streamed before its snapshots were bbolt files).
    SynodBackup,
    /// A snapshot of etcd: its keys, revisions, compaction and leases.
    Etcd,
}

/// The database bytes of a snapshot file, without (and checked against) the sha256 etcd
/// appends; the whole file when there is no trailer, as in a database copied from disk.
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

fn open(file: &[u8]) -> Result<BoltFile<'_>, SnapshotFileError> {
    match BoltFile::open(database(file)?) {
        Ok(bolt) => Ok(bolt),
        Err(BoltError::NotBolt) => Err(SnapshotFileError::Unrecognized),
        Err(error) => Err(SnapshotFileError::Bolt(error)),
    }
}

/// The state a snapshot file holds, with `template`'s settings, as the first state of a new
/// cluster (no slot applied, no sessions): Synod's backup from a Synod snapshot, or etcd's
/// keys, revisions, compaction and leases from an etcd snapshot (a way from etcd to Synod).
pub fn read_store(file: &[u8], template: &KvStore) -> Result<(KvStore, Origin), SnapshotFileError> {
    if file.starts_with(BACKUP_MAGIC) {
        let store = KvStore::from_backup(file, template).map_err(SnapshotFileError::Backup)?;
        return Ok((store, Origin::SynodBackup));
    }
    let bolt = open(file)?;
    if let Some(backup) = bolt
        .get(SYNOD_BUCKET, BACKUP_KEY)
        .map_err(SnapshotFileError::Bolt)?
    {
        let store = KvStore::from_backup(backup, template).map_err(SnapshotFileError::Backup)?;
        return Ok((store, Origin::Synod));
    }
    Ok((etcd_store(&bolt, template)?, Origin::Etcd))
}

/// etcd's revision key: (main, sub, tombstone).
fn parse_revision_key(key: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match key.len() {
        17 => false,
        18 if key[17] == b't' => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(key[..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(key[9..17].try_into().ok()?) as i64;
    Some((main, sub, tombstone))
}

/// The store etcd's buckets describe.
fn etcd_store(bolt: &BoltFile<'_>, template: &KvStore) -> Result<KvStore, SnapshotFileError> {
    use prost::Message;
    let bad = |why: String| SnapshotFileError::EtcdData(why);
    let bucket = |name: &[u8]| {
        bolt.bucket(name)
            .map_err(SnapshotFileError::Bolt)
            .map(Option::unwrap_or_default)
    };
    if bolt
        .bucket(KEY_BUCKET)
        .map_err(SnapshotFileError::Bolt)?
        .is_none()
    {
        return Err(bad(
            "it has no `key` bucket (not an etcd v3 backend database)".to_string(),
        ));
    }
    let mut events = Vec::new();
    for entry in bucket(KEY_BUCKET)? {
        let (main, sub, tombstone) = parse_revision_key(entry.key)
            .ok_or_else(|| bad(format!("{:?} in `key` is not a revision", entry.key)))?;
        let kv = mvccpb::KeyValue::decode(entry.value)
            .map_err(|error| bad(format!("revision {main}.{sub}: {error}")))?;
        let key = bytes::Bytes::from(kv.key.clone());
        events.push(synod_kv::RetainedEvent {
            main,
            sub,
            key: key.clone(),
            kv: (!tombstone).then(|| synod_kv::KeyValue {
                key,
                value: kv.value.into(),
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                lease: kv.lease,
            }),
        });
    }
    let mut leases = Vec::new();
    for entry in bucket(LEASE_BUCKET)? {
        let lease =
            LeaseRecord::decode(entry.value).map_err(|error| bad(format!("a lease: {error}")))?;
        leases.push((lease.id, lease.ttl));
    }
    let mut compacted = 0;
    for entry in bucket(META_BUCKET)? {
        if entry.key == b"finishedCompactRev" || entry.key == b"scheduledCompactRev" {
            let (main, _, _) = parse_revision_key(entry.value).ok_or_else(|| {
                bad(format!(
                    "{} is not a revision",
                    String::from_utf8_lossy(entry.key)
                ))
            })?;
            compacted = compacted.max(main);
        }
    }
    KvStore::from_etcd(events, compacted, leases, template).map_err(|error| bad(error.to_string()))
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
    let bolt = open(file)?;
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
        let (restored, origin) = read_store(&file, &KvStore::new()).expect("restore");
        assert_eq!(origin, Origin::Synod);
        assert_eq!(restored.revision(), store.revision());
        assert_eq!(restored.len(), 100);
        assert_eq!(restored.get(b"k42"), store.get(b"k42"));
        let status = status(&file).expect("status");
        assert_eq!(status.revision, store.revision());
        // 100 revisions, the meta bucket's consistent index, the backup.
        assert_eq!(status.total_keys, 102);
        assert_eq!(status.total_size, (file.len() - SHA256_BYTES) as u64);
        // A bare backup (the format streamed before) still restores.
        let (bare, origin) = read_store(&store.backup(), &KvStore::new()).expect("bare");
        assert_eq!(origin, Origin::SynodBackup);
        assert_eq!(bare.get(b"k42"), store.get(b"k42"));
        // Without the `synod` bucket, as from etcd: the same keys from etcd's buckets.
        let bolt = BoltFile::open(&file[..file.len() - SHA256_BYTES]).expect("bolt");
        let mut etcd = BoltBuilder::new();
        for name in [KEY_BUCKET, LEASE_BUCKET, META_BUCKET] {
            let entries = bolt.bucket(name).expect("read").expect("bucket");
            etcd.bucket(
                name,
                entries
                    .into_iter()
                    .map(|entry| (entry.key.to_vec(), entry.value.to_vec()))
                    .collect(),
            );
        }
        let (from_etcd, origin) = read_store(&etcd.finish(), &KvStore::new()).expect("etcd");
        assert_eq!(origin, Origin::Etcd);
        assert_eq!(from_etcd.retained_events(), store.retained_events());
        assert_eq!(from_etcd.revision(), store.revision());
    }

    #[test]
    fn damaged_and_foreign_snapshot_files_are_refused_by_name() {
        let mut store = KvStore::new();
        put(&mut store, "a", "1");
        let file = encode(&store);
        let mut flipped = file.clone();
        flipped[5 * 512] ^= 1;
        let read = |bytes: &[u8]| read_store(bytes, &KvStore::new()).map(|(_, origin)| origin);
        assert_eq!(
            read(&flipped).unwrap_err(),
            SnapshotFileError::ChecksumMismatch
        );
        assert_eq!(
            read(b"hello, world").unwrap_err(),
            SnapshotFileError::Unrecognized
        );
        // A bbolt file that is no etcd database, and one whose revisions are not etcd's.
        let mut other = BoltBuilder::new();
        other.bucket(b"things", Vec::new());
        let error = read(&other.finish()).unwrap_err();
        assert!(error.to_string().contains("no `key` bucket"), "{error}");
        let mut wrong = BoltBuilder::new();
        wrong.bucket(KEY_BUCKET, vec![(b"k".to_vec(), b"v".to_vec())]);
        let error = read(&wrong.finish()).unwrap_err();
        assert!(error.to_string().contains("is not a revision"), "{error}");
    }
}
