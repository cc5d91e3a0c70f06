//! Why a request failed, and why a replica could not start.

use synod_core::Slot;

/// Why a proposal or a read failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The proposal is larger than `max_request_bytes`; it was not proposed.
    #[error("request is too large: {bytes} bytes, the limit is {limit}")]
    TooLarge {
        /// The payload's size.
        bytes: usize,
        /// `ReplicaConfig::max_request_bytes`.
        limit: usize,
    },
    /// No outcome within the request timeout. A proposal may still take effect.
    #[error("request timed out after {after_ms} ms without a leader able to serve it")]
    Timeout {
        /// The request timeout, in milliseconds.
        after_ms: u64,
    },
    /// The replica stopped (or its storage failed) before the request completed.
    #[error("the replica is stopped")]
    Stopped,
}

/// Why a replica could not be recovered from what storage holds.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoverError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The log says entries were compacted into a snapshot that is not there.
    #[error(
        "the log is compacted through slot {log_snapshot_slot} but the newest snapshot covers slot {snapshot_slot} only"
    )]
    MissingSnapshot {
        /// Where the log says its compacted prefix ends.
        log_snapshot_slot: Slot,
        /// What the newest snapshot covers (0: none).
        snapshot_slot: Slot,
    },
}
