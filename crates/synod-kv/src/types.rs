//! The typed requests and responses of the KV store, shaped after etcd's v3 API.

use bytes::Bytes;
use serde::{de::Error as _, Deserialize, Deserializer, Serialize};

use crate::codec::{self, NestingGuard};

/// One key as stored: its value and etcd's revision bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    /// The revision of the put that created the key (since its last deletion).
    pub create_revision: i64,
    /// The revision of the last put to the key.
    pub mod_revision: i64,
    /// Puts since creation: 1 after the creating put.
    pub version: i64,
    /// The lease id attached to the key; 0 means none. The key is deleted with its lease.
    pub lease: i64,
}

/// Reads the keys in a range.
///
/// `range_end` empty: just `key`. `range_end == b"\0"`: every key `>= key`.
/// Otherwise the half-open interval `[key, range_end)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    pub key: Bytes,
    pub range_end: Bytes,
    /// At most this many keys are returned when > 0 (`more` tells whether some were cut off).
    pub limit: i64,
    /// Only `count` is returned.
    pub count_only: bool,
    /// Values are left empty.
    pub keys_only: bool,
    /// 0 (or negative, as in etcd) reads the latest revision; any other the state as of that
    /// revision, which must be at or above the compacted revision and at or below the current.
    pub revision: i64,
}

/// Writes one key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    pub key: Bytes,
    pub value: Bytes,
    /// Return the key's previous state.
    pub prev_kv: bool,
    pub lease: i64,
    /// Keep the current value (the key must exist and `value` must be empty).
    pub ignore_value: bool,
    /// Keep the current lease (the key must exist and `lease` must be 0).
    pub ignore_lease: bool,
}

/// Deletes every key in a range (same range rules as [`RangeRequest`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeRequest {
    pub key: Bytes,
    pub range_end: Bytes,
    /// Return the deleted keys' last states.
    pub prev_kv: bool,
}

/// What a [`Compare`] looks at, with the operand to compare against.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    Value(Bytes),
    Lease(i64),
}

/// How the key's field must relate to the operand: `Greater` means `field > operand`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// One guard of a transaction. With a non-empty `range_end` every key in the range must
/// satisfy it. On a missing key the revision fields and the lease compare as 0; every
/// `Value` compare fails, `NotEqual` included (as in etcd).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Bytes,
    pub range_end: Bytes,
    pub target: CompareTarget,
    pub result: CompareResult,
}

/// If every compare holds run `success`, else `failure`; all writes share one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// Drops the history below `revision` (etcd's `Compact`): afterwards the store answers reads at
/// `revision` and later, and keeps of every key only its state as of `revision` (if it was
/// live then) and its later changes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactRequest {
    pub revision: i64,
    /// etcd waits for the compaction to reach its disk; here it is done when applied, so the
    /// flag changes nothing.
    pub physical: bool,
}

/// Raises or clears an alarm (etcd's `Maintenance.Alarm` ACTIVATE/DEACTIVATE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlarmAction {
    Activate,
    Deactivate,
}

/// The alarms etcd knows (its `AlarmType` without NONE, which is not an alarm).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlarmKind {
    /// Out of space: puts are refused (deletes and compactions still run).
    Nospace,
    /// Members disagree on their data: every write is refused (reads still run).
    Corrupt,
}

/// Raises or clears one member's alarm, as etcd records them: by the member id the request
/// names (0 included, which etcd records as is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlarmRequest {
    pub action: AlarmAction,
    pub member_id: u64,
    pub alarm: AlarmKind,
}

/// Creates a lease (etcd's `LeaseGrant`). The TTL is taken as given: the proposer applies
/// etcd's minimum-TTL rule before proposing, since it depends on its election timeout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrantRequest {
    /// 0: the store picks an unused id (deterministically, from the log).
    pub id: i64,
    /// Seconds.
    pub ttl: i64,
}

/// The leader that decides lease expiries: the ballot of its leadership (see
/// [`Op::LeasePromote`]). Ordered as ballots are.
pub type LeaseEpoch = synod_core::Ballot;

/// One operation of the store. `Compact`, `Alarm`, `MemberAlarm` and the lease operations are
/// commands of their own: a txn cannot hold them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    DeleteRange(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactRequest),
    /// Raises or clears the store's own NOSPACE alarm, the one the quota raises (logs
    /// written before [`Op::MemberAlarm`] existed carry it).
    Alarm(AlarmAction),
    LeaseGrant(LeaseGrantRequest),
    /// Revokes a lease: deletes it and every key attached to it, at one revision.
    LeaseRevoke(i64),
    /// A leader's lessor starts deciding expiries: applied only if `epoch` is above the
    /// store's lease epoch (a stale leader's promotion changes nothing). See `lessor.rs`.
    LeasePromote(LeaseEpoch),
    /// The lessor of `epoch` found the lease expired: revoked as by [`Op::LeaseRevoke`] only
    /// if `epoch` is still the store's lease epoch, so a deposed leader's late decision
    /// never deletes a lease its successor kept alive.
    LeaseExpire {
        id: i64,
        epoch: LeaseEpoch,
    },
    /// Raises or clears one member's alarm of any kind (what `Maintenance.Alarm` proposes).
    MemberAlarm(AlarmRequest),
}

impl Op {
    /// True when the operation can never write (a range, or a txn whose branches only read).
    pub fn is_read_only(&self) -> bool {
        match self {
            Op::Range(_) => true,
            Op::Put(_)
            | Op::DeleteRange(_)
            | Op::Compact(_)
            | Op::Alarm(_)
            | Op::LeaseGrant(_)
            | Op::LeaseRevoke(_)
            | Op::LeasePromote(_)
            | Op::LeaseExpire { .. }
            | Op::MemberAlarm(_) => false,
            Op::Txn(txn) => txn.success.iter().chain(&txn.failure).all(Op::is_read_only),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The matching keys in key order (none with `count_only`).
    pub kvs: Vec<KeyValue>,
    /// `limit` cut off some matching keys.
    pub more: bool,
    /// How many keys match, regardless of `limit`.
    pub count: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The key's state before the put, when asked for and the key existed.
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRangeResponse {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TxnResponse {
    /// Whether the compares held (and so `success` ran).
    pub succeeded: bool,
    /// One response per op of the branch that ran, in order.
    pub responses: Vec<OpResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    Range(RangeResponse),
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    /// The history below the requested revision is gone.
    Compact,
    /// The alarm state after the command (whether a NOSPACE alarm is raised) and whether
    /// the command changed the alarms.
    Alarm {
        nospace: bool,
        changed: bool,
    },
    /// The lease granted: its id and TTL in seconds.
    LeaseGrant {
        id: i64,
        ttl: i64,
    },
    /// The lease is gone; `deleted` keys went with it.
    LeaseRevoke {
        deleted: i64,
    },
    /// Whether the promotion took effect (its epoch was above the store's).
    LeasePromote {
        promoted: bool,
    },
    /// Whether the expiry took effect (its epoch was current and the lease existed), and
    /// how many keys went with the lease.
    LeaseExpire {
        expired: bool,
        deleted: i64,
    },
}

/// Why a command failed. A failed command changes nothing (except that the session records it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvError {
    /// The bytes are not a command/response of this format version.
    Malformed(String),
    /// The client already moved past `seq`: its reply was `last`'s and is no longer kept.
    StaleSequence { client: u64, seq: u64, last: u64 },
    /// A transaction branch writes the same key twice (or puts a key it also deletes).
    DuplicateKeyInTxn(Bytes),
    /// A read below the compacted revision, or a compaction at or below it.
    RevisionCompacted { requested: i64, compacted: i64 },
    /// A read at a revision the store has not reached.
    FutureRevision { requested: i64, current: i64 },
    /// A request with an empty key.
    EmptyKey,
    /// `ignore_value` or `ignore_lease` on a key that does not exist.
    KeyNotFound(Bytes),
    /// `ignore_value` together with a non-empty value.
    ValueProvided,
    /// `ignore_lease` together with a non-zero lease.
    LeaseProvided,
    /// A transaction branch with more than [`crate::MAX_TXN_OPS`] operations.
    TooManyOps { count: usize, max: usize },
    /// Transactions nested deeper than [`crate::MAX_TXN_DEPTH`].
    TxnTooDeep { max: usize },
    /// A command for a slot before the last applied one (the log must be applied in order).
    SlotRegression { slot: u64, applied: u64 },
    /// A write while the NOSPACE alarm is raised, or one that would take the history past the
    /// store's quota (which raises the alarm).
    NoSpace {
        history_bytes: u64,
        quota_bytes: u64,
    },
    /// A compaction, an alarm or a lease operation inside a txn.
    NotInTxn,
    /// A put with, or a revoke of, a lease that does not exist (etcd `ErrLeaseNotFound`).
    LeaseNotFound(i64),
    /// A grant of an id already in use (etcd `ErrLeaseExist`).
    LeaseExists(i64),
    /// A grant with a TTL above [`crate::MAX_LEASE_TTL_SECONDS`] (etcd `ErrLeaseTTLTooLarge`)
    /// or a negative id.
    LeaseInvalid(String),
    /// A write while the CORRUPT alarm is raised.
    Corrupt,
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Malformed(message) => write!(f, "malformed input: {message}"),
            KvError::StaleSequence { client, seq, last } => write!(
                f,
                "client {client}: sequence {seq} is older than the last applied sequence {last}"
            ),
            KvError::DuplicateKeyInTxn(key) => {
                write!(f, "duplicate key given in txn request: {key:?}")
            }
            KvError::RevisionCompacted {
                requested,
                compacted,
            } => write!(
                f,
                "required revision {requested} has been compacted (compacted revision {compacted})"
            ),
            KvError::FutureRevision { requested, current } => write!(
                f,
                "required revision {requested} is a future revision (current is {current})"
            ),
            KvError::EmptyKey => write!(f, "key is not provided"),
            KvError::KeyNotFound(key) => write!(f, "key not found: {key:?}"),
            KvError::ValueProvided => write!(f, "value is provided together with ignore_value"),
            KvError::LeaseProvided => write!(f, "lease is provided together with ignore_lease"),
            KvError::TooManyOps { count, max } => {
                write!(f, "too many operations in txn request: {count} > {max}")
            }
            KvError::TxnTooDeep { max } => write!(f, "transactions nested deeper than {max}"),
            KvError::SlotRegression { slot, applied } => write!(
                f,
                "command for slot {slot} arrived after slot {applied} was applied"
            ),
            KvError::NoSpace {
                history_bytes,
                quota_bytes,
            } => write!(
                f,
                "database space exceeded (history ~{history_bytes} bytes, quota {quota_bytes})"
            ),
            KvError::NotInTxn => write!(
                f,
                "a txn cannot hold a compaction, an alarm or a lease operation"
            ),
            KvError::LeaseNotFound(_) => write!(f, "requested lease not found"),
            KvError::LeaseExists(_) => write!(f, "lease already exists"),
            KvError::LeaseInvalid(why) => write!(f, "{why}"),
            KvError::Corrupt => write!(f, "corrupt cluster: the CORRUPT alarm refuses writes"),
        }
    }
}

impl std::error::Error for KvError {}

/// The outcome of one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The store's revision after the command (unchanged by reads and failures).
    pub revision: i64,
    pub result: Result<OpResponse, KvError>,
}

/// A client command: `(client, seq)` deduplicates retries; client 0 means "no session".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub client: u64,
    pub seq: u64,
    pub op: Op,
}

impl Command {
    /// A command outside any session: never deduplicated.
    pub fn unsessioned(op: Op) -> Command {
        Command {
            client: 0,
            seq: 0,
            op,
        }
    }

    /// The format-version byte followed by bincode.
    pub fn encode(&self) -> Bytes {
        Bytes::from(codec::encode(self))
    }

    /// Decodes bytes from [`Command::encode`]; any other input is `KvError::Malformed`.
    pub fn decode(bytes: &[u8]) -> Result<Command, KvError> {
        codec::decode(bytes).map_err(|error| KvError::Malformed(format!("command: {error}")))
    }
}

impl Response {
    /// The format-version byte followed by bincode.
    pub fn encode(&self) -> Bytes {
        Bytes::from(codec::encode(self))
    }

    /// Decodes bytes from [`Response::encode`]; any other input is `KvError::Malformed`.
    pub fn decode(bytes: &[u8]) -> Result<Response, KvError> {
        codec::decode(bytes).map_err(|error| KvError::Malformed(format!("response: {error}")))
    }
}

// Transactions nest, so their decoding counts the depth (see `codec::NestingGuard`); the
// mirrors below carry the derived field decoding and keep the field layout identical.

#[derive(Deserialize)]
#[serde(rename = "TxnRequest")]
struct TxnRequestFields {
    compare: Vec<Compare>,
    success: Vec<Op>,
    failure: Vec<Op>,
}

impl<'de> Deserialize<'de> for TxnRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let _level = NestingGuard::enter().map_err(D::Error::custom)?;
        let fields = TxnRequestFields::deserialize(deserializer)?;
        Ok(TxnRequest {
            compare: fields.compare,
            success: fields.success,
            failure: fields.failure,
        })
    }
}

#[derive(Deserialize)]
#[serde(rename = "TxnResponse")]
struct TxnResponseFields {
    succeeded: bool,
    responses: Vec<OpResponse>,
}

impl<'de> Deserialize<'de> for TxnResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let _level = NestingGuard::enter().map_err(D::Error::custom)?;
        let fields = TxnResponseFields::deserialize(deserializer)?;
        Ok(TxnResponse {
            succeeded: fields.succeeded,
            responses: fields.responses,
        })
    }
}
