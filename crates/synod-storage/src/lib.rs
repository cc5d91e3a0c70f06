//! Durable storage for a Synod acceptor.
//!
//! Paxos is only safe if an acceptor never forgets what it promised or accepted. The
//! runtime hands every `PersistRequest` of the core to a [`Wal`] (usually through
//! [`GroupCommit`], which shares one fdatasync among all pending requests) and only calls
//! `Node::on_persisted` once the completion reports success. At start-up [`Wal::open`]
//! verifies the log and returns the `DurableState` for `Node::recover`. State-machine
//! snapshots live in a [`SnapshotStore`]; after saving one, [`Wal::compact`] bounds the log.
//! See docs/storage.md for the file format, the torn-tail rule and the engine choice.

mod bench;
pub mod bolt;
mod error;
mod group_commit;
pub mod record;
mod snapshot;
mod wal;

pub use bench::{bench, bench_request, percentile, BenchOptions, BenchReport, BenchRow};
pub use error::StorageError;
pub use group_commit::{Completion, GroupCommit, GroupCommitStats, SyncObserver};
pub use snapshot::{SnapshotReader, SnapshotStore, SnapshotWriter};
pub use wal::{
    segment_file_name, RecoveryReport, Superseded, SyncMode, TruncatedTail, Wal, WalIdentity,
    WalOptions,
};
