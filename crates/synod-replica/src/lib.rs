//! # synod-replica: one replica, run everywhere
//!
//! A [`Replica`] is everything one Synod member does that is not I/O: the protocol core
//! ([`synod_core::Node`]), the replicated state machine, client sessions that make
//! retried proposals apply once, waiting proposals and their retries and deadlines,
//! linearizable reads (lease, read-index round, forwarded from a follower) and
//! serializable ones, the snapshot and compaction policy, sending and installing
//! snapshots, and the clock. It is sans-IO like the core: every input comes with the
//! time (`now`, in nanoseconds of a monotonic clock), and every effect comes out as data
//! in a [`ReplicaReady`] — messages for peers, write-ahead-log requests, replies, reads
//! that may now be served, snapshots to save or stream, a log to compact.
//!
//! The server (`synod-server`: sockets, WAL, tokio), the seeded simulator
//! (`synod-sim`: simulated network, disks and clocks) and the Maelstrom node drive this
//! same type, so the code under simulation is the code in production. `docs/replica.md`
//! describes the layering.
//!
//! ```text
//!   runtime ──inputs(now)──▶ Replica ──▶ synod_core::Node (Paxos)
//!      ▲                       │  └────▶ StateMachine + Sessions (apply, read)
//!      └──── ReplicaReady ◀────┘
//! ```

#![warn(missing_docs)]

mod config;
mod error;
mod replica;
pub mod sessions;

pub use config::ReplicaConfig;
pub use error::{RecoverError, RequestError};
pub use replica::{
    Nanos, ReadHow, Replica, ReplicaEvent, ReplicaReady, ReplicaStats, ReplicaStatus, RequestId,
    Restored, SnapshotToSave,
};
pub use sessions::{Proposal, RuntimeImage, Sessions};

#[cfg(test)]
mod tests;
