//! Replicated state machines for Synod.
//!
//! placeholder docs (expanded below once the store lands)

mod broadcast;
mod codec;
mod sessions;
mod store;
mod types;

pub use broadcast::Broadcast;
pub use codec::{FORMAT_VERSION, MAX_TXN_DEPTH};
pub use sessions::DEFAULT_MAX_SESSIONS;
pub use store::{KvStore, INITIAL_REVISION};
pub use synod_core::Slot;
pub use types::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse,
    KeyValue, KvError, Op, OpResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    Response, TxnRequest, TxnResponse,
};

/// The most operations one transaction branch may hold (etcd's `--max-txn-ops` default is 128).
pub const MAX_TXN_OPS: usize = 1024;

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
    /// Replaces the whole state with a snapshot; on error the state is left untouched.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError>;
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
