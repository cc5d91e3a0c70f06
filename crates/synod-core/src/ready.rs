//! What one batch of inputs produced: the core's only way of talking to the world.

use crate::ballot::{Ballot, NodeId, Slot};
use crate::message::{Envelope, Value};
use crate::persist::PersistRequest;

/// Local handle for a command given to `Node::propose`.
pub type ProposalId = u64;

/// A chosen slot, handed out exactly once, in slot order, never past a gap.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Committed {
    pub slot: Slot,
    pub value: Value,
}

/// How a read index was confirmed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ReadPath {
    /// This node leads and holds its read lease: no message at all.
    Lease,
    /// This node leads and a quorum answered a heartbeat round sent after the read came.
    QuorumRound,
    /// This node follows: the leader confirmed the read (either way) and sent its index.
    Forwarded,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Event {
    /// A command proposed at this node got a slot. `phase1_skipped` is true when the
    /// node already led with an established ballot, so the command costs one Accept
    /// round; false when Phase 1 had to run first (or in per-slot mode, always).
    ProposalAssigned {
        id: ProposalId,
        slot: Slot,
        phase1_skipped: bool,
    },
    /// The node started Phase 1 with `ballot`.
    Phase1Started { ballot: Ballot },
    /// A quorum promised `ballot`; `reproposed_slots` open slots were re-proposed
    /// (adopted values and no-ops) before any new command.
    BecameLeader {
        ballot: Ballot,
        reproposed_slots: u64,
    },
    /// The node stopped leading (a higher ballot, or no quorum heard from).
    SteppedDown { ballot: Ballot },
    /// The leader, at `ballot`, heard of `stray`, a higher ballot nobody leads at (a node
    /// that raised it unable to reach a quorum came back), and runs Phase 1 above it
    /// while staying the leader: a `Phase1Started` and a `BecameLeader` follow, but no
    /// `SteppedDown`.
    RefreshingLeadership { ballot: Ballot, stray: Ballot },
    /// The node now believes `leader` leads (None: no leader known).
    LeaderChanged { leader: Option<NodeId> },
    /// `peer` asked for entries this node has compacted away: stream it the state-machine
    /// snapshot (covering up to at least `slot`); it calls `install_snapshot` when done.
    SnapshotNeeded { peer: NodeId, slot: Slot },
    /// The read `request` is linearizable once the state machine has applied
    /// `read_index`; `path` says how the leader confirmed it.
    ReadReady {
        request: u64,
        read_index: Slot,
        path: ReadPath,
    },
    /// No leader could confirm the read; try again.
    ReadFailed { request: u64 },
    /// The leadership transfer to `target` that this node started ended.
    TransferEnded {
        target: NodeId,
        outcome: crate::transfer::TransferOutcome,
    },
}

/// Outputs of the inputs since the last `take_ready`.
///
/// `messages` may leave at once: replies that vouch for durable state (Promise,
/// Accepted) are held inside the core until `on_persisted` covers the persist they
/// depend on, so a runtime cannot send one early by mistake.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Ready {
    pub messages: Vec<Envelope>,
    /// Make durable, in order after every earlier request, then call `on_persisted(id)`.
    pub persist: Option<PersistRequest>,
    pub committed: Vec<Committed>,
    pub events: Vec<Event>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.persist.is_none()
            && self.committed.is_empty()
            && self.events.is_empty()
    }
}
