//! Replicated state machines for Synod.
//!
//! The log decides an order of commands; a [`StateMachine`] turns that order into state. Every
//! replica feeds the same commands in the same slot order to its own copy, so every copy must
//! be deterministic: no clocks, no randomness, no iteration over hash maps. Two machines live
//! here:
//!
//! * [`Broadcast`], total-order broadcast: it records each message with its slot.
//! * [`KvStore`], a key-value store with etcd v3's API, revision rules and MVCC history,
//!   and [`WatchHub`], etcd's watches over that history.
//!
//! # Revisions
//!
//! The store has one revision counter. An empty store is at revision 1 ([`INITIAL_REVISION`]).
//! A command that writes moves it up by exactly one, and every key it writes gets that
//! revision:
//!
//! * each `Put`;
//! * each `DeleteRange` that deletes at least one key (deleting nothing is not a write);
//! * each `Txn` that performs at least one write; all its writes, nested txns included, share
//!   one revision.
//!
//! Reads, failed commands and deduplicated retries leave it alone. Per key:
//! `create_revision` is the revision of the put that created it (a key deleted and put again
//! starts over, with `version` back at 1), `mod_revision` that of its last put, and `version`
//! counts puts since creation. [`Response::revision`] is the store's revision after the
//! command, like etcd's response header.
//!
//! # History
//!
//! Every revision of every key is kept until compacted, so a range at any `revision` from the
//! compacted one to the current one sees the state as of that revision; below it fails with
//! [`KvError::RevisionCompacted`], above the current one with [`KvError::FutureRevision`].
//! [`Op::Compact`] is a command of the log, so every replica compacts at the same revision: it
//! keeps, of every key, its state at the compaction revision if it was live then, and its later
//! changes (etcd's `keyIndex.compact`). Compacting at or below the compacted revision is
//! `RevisionCompacted`. [`KvStore::changes_at`] lists a revision's changes in write order with
//! their previous states, for watches. Snapshots carry the retained history.
//!
//! The history counts against a quota ([`KvStore::with_quota_bytes`], etcd's 2 GiB default): a
//! write that would take it past the quota fails with [`KvError::NoSpace`] and raises the
//! NOSPACE alarm, which refuses every put until [`Op::Alarm`] deactivates it (etcd's rules:
//! deletes and compactions still run). The alarm is raised while applying the log, so every
//! replica must run with the same quota. [`Op::MemberAlarm`] raises or clears a member's
//! NOSPACE or CORRUPT alarm (etcd's alarm store); CORRUPT refuses every write
//! ([`KvError::Corrupt`]).
//!
//! [`KvStore::hash_kv`] hashes the retained history up to a revision (etcd's `HashKV`), so
//! replicas can be compared; [`KvStore::backup`] and [`KvStore::from_backup`] write and read
//! the backup files a new cluster starts from.
//!
//! # Leases
//!
//! [`Op::LeaseGrant`] creates a lease with a TTL (not a write: the revision stays); a put may
//! attach its key to an existing lease ([`KvError::LeaseNotFound`] otherwise), and a later put
//! or delete detaches it. [`Op::LeaseRevoke`] deletes the lease and every key attached to it
//! at one revision, so watchers see all the deletes together. When a lease *expires* is
//! decided by the leader's [`Lessor`] and applied as [`Op::LeaseExpire`] under the lease epoch
//! of [`Op::LeasePromote`]; see `lessor.rs` for why a deposed leader's decision is ignored.
//!
//! # Transactions
//!
//! A txn evaluates all compares against the current state, then runs `success` (all hold) or
//! `failure` in order; later ops see earlier writes. On a missing key the revision fields,
//! `version` and `lease` compare as 0, and every `Value` compare fails (`NotEqual` too), exactly
//! as etcd's `applyCompare` does. As in etcd, a branch that writes a key twice, or puts a key it also deletes, is
//! refused before running ([`KvError::DuplicateKeyInTxn`]). Branches are bounded by
//! [`MAX_TXN_OPS`] ops and nesting by [`MAX_TXN_DEPTH`]. A command that fails part-way is rolled
//! back: a failed command never changes the keys.
//!
//! # Exactly-once commands
//!
//! A client that times out resends its command, so the log may carry it twice. A
//! [`Command`] carries `(client, seq)`. For every client the store keeps the last `seq` it
//! applied and that command's [`Response`]:
//!
//! * `seq == last`: a retry; the kept response is returned and nothing is applied;
//! * `seq < last`: [`KvError::StaleSequence`];
//! * otherwise (or a client without a session) the command applies and its response is kept.
//!
//! Client 0 has no session and is never deduplicated. At most `max_sessions` sessions are kept
//! ([`DEFAULT_MAX_SESSIONS`] by default). A new client evicts the one whose last command was
//! applied at the lowest slot, ties broken by lower client id, which depends only on the log.
//! An evicted client's late retry would apply again, so the bound should exceed the number of
//! clients active at once. Sessions are part of the snapshot.
//!
//! # Encoding
//!
//! Commands, responses and snapshots are one [`FORMAT_VERSION`] byte followed by bincode
//! (varint integers). Decoding never trusts a length beyond the input. Unknown versions,
//! truncated or trailing bytes and over-deep nesting are errors ([`KvError::Malformed`],
//! [`SnapshotError`]); [`StateMachine::apply`] answers them with an encoded error response.
//!
//! ```
//! use bytes::Bytes;
//! use synod_kv::{Command, KvStore, Op, OpResponse, PutRequest, RangeRequest, Response, StateMachine};
//!
//! let mut store = KvStore::new();
//! let put = Command {
//!     client: 7,
//!     seq: 1,
//!     op: Op::Put(PutRequest {
//!         key: Bytes::from_static(b"greeting"),
//!         value: Bytes::from_static(b"hello"),
//!         ..PutRequest::default()
//!     }),
//! };
//! // The command was chosen twice (a client retry): it applies once.
//! let first = Response::decode(&store.apply(1, &put.encode())).unwrap();
//! let retry = Response::decode(&store.apply(2, &put.encode())).unwrap();
//! assert_eq!((first.revision, retry.revision), (2, 2));
//!
//! let read = store.read(&RangeRequest {
//!     key: Bytes::from_static(b"greeting"),
//!     ..RangeRequest::default()
//! });
//! let Ok(OpResponse::Range(range)) = read.result else { panic!("{read:?}") };
//! assert_eq!((range.kvs[0].version, range.kvs[0].create_revision), (1, 2));
//! ```

mod backup;
mod broadcast;
mod codec;
mod hash;
mod history;
mod image;
mod lessor;
mod sessions;
mod store;
mod types;
mod watch;

pub use backup::{backup_image, encode_backup, BackupError, BACKUP_MAGIC};
pub use broadcast::Broadcast;
pub use codec::{FORMAT_VERSION, MAX_TXN_DEPTH};
pub use hash::{KvHash, RetainedEvent};
pub use history::{EVENT_OVERHEAD_BYTES, KEY_OVERHEAD_BYTES};
pub use image::SNAPSHOT_FORMAT_VERSION;
pub use lessor::{Lessor, RenewError, EXPIRY_RETRY_NANOS};
pub use sessions::DEFAULT_MAX_SESSIONS;
pub use store::{Change, KvStore, DEFAULT_QUOTA_BYTES, INITIAL_REVISION};
pub use synod_core::Slot;
pub use types::{
    AlarmAction, AlarmKind, AlarmRequest, Command, CompactRequest, Compare, CompareResult,
    CompareTarget, DeleteRangeRequest, DeleteRangeResponse, KeyValue, KvError, LeaseEpoch,
    LeaseGrantRequest, Op, OpResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    Response, TxnRequest, TxnResponse,
};
pub use watch::{
    key_in_range, EventKind, StreamId, WatchEvent, WatchHub, WatchOutput, WatchRequest, WatchStats,
    WatchUpdate, CATCH_UP_BYTES, CATCH_UP_REVISIONS, STREAM_PROGRESS_ID,
};

/// The longest lease TTL a grant may ask for, in seconds (etcd's `MaxLeaseTTL`).
pub const MAX_LEASE_TTL_SECONDS: i64 = 9_000_000_000;

/// The most operations one transaction branch may hold (etcd's `--max-txn-ops` default is 128).
pub const MAX_TXN_OPS: usize = 1024;

/// Serializes a snapshot taken earlier: run off the replica's thread (see
/// [`StateMachine::snapshot_job`]).
pub type SnapshotJob = Box<dyn FnOnce() -> bytes::Bytes + Send>;

/// A deterministic replicated state machine fed with the log's commands in slot order.
pub trait StateMachine: Send + 'static {
    /// Applies one command (several commands may share a slot; called in log order). Returns
    /// the encoded response. Must never panic on bad bytes: a malformed command yields an
    /// encoded error response.
    fn apply(&mut self, slot: Slot, command: &[u8]) -> bytes::Bytes;
    /// The last slot applied (0 initially).
    fn applied(&self) -> Slot;
    /// Full serialized state (including `applied` and dedup sessions).
    fn snapshot(&self) -> bytes::Bytes;
    /// The state as of now, serialized later by the returned job on another thread, so a
    /// large state does not stall the replica (and with it leases and heartbeats) while
    /// it is written out. The default serializes at once; a machine whose state can be
    /// frozen cheaply (a persistent map, copy-on-write) should override it.
    fn snapshot_job(&self) -> SnapshotJob {
        let image = self.snapshot();
        Box::new(move || image)
    }
    /// About how many bytes a snapshot of the state would take now (0: unknown). The
    /// replica waits for the log since its last snapshot to grow by a share of this
    /// before it takes the next one (`ReplicaConfig::snapshot_log_growth_percent`), so a
    /// large state is not written out again after every few thousand small commands.
    /// Must be deterministic: every replica of the same log computes the same figure.
    fn size_hint(&self) -> u64 {
        0
    }
    /// Replaces the whole state with a snapshot; on error the state is left untouched.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;
    /// An empty machine with this one's settings: a received snapshot is restored into
    /// it off the replica's thread, then swapped in.
    fn empty_like(&self) -> Self
    where
        Self: Sized;
}

/// Why a snapshot could not be restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotError {
    /// The snapshot has no format-version byte.
    Empty,
    /// The snapshot was written by a format version this build does not read.
    UnknownVersion(u8),
    /// The body does not decode.
    Malformed(String),
    /// The body decodes but breaks an invariant of the state machine.
    Inconsistent(String),
}

impl std::fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotError::Empty => write!(f, "snapshot is empty"),
            SnapshotError::UnknownVersion(version) => write!(
                f,
                "snapshot has unsupported format version {version} (this build reads version {FORMAT_VERSION})"
            ),
            SnapshotError::Malformed(message) => write!(f, "malformed snapshot: {message}"),
            SnapshotError::Inconsistent(message) => write!(f, "inconsistent snapshot: {message}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl From<codec::DecodeError> for SnapshotError {
    fn from(error: codec::DecodeError) -> Self {
        match error {
            codec::DecodeError::Empty => SnapshotError::Empty,
            codec::DecodeError::UnknownVersion(version) => SnapshotError::UnknownVersion(version),
            codec::DecodeError::Body(message) => SnapshotError::Malformed(message),
        }
    }
}

#[cfg(test)]
mod history_tests;
#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod watch_tests;
