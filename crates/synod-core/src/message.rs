//! The protocol's messages: one enum for the whole family, plain data.
//!
//! Multi-Paxos messages carry one ballot for the whole log (Phase 1 once per
//! leadership); the `Slot*` messages are the per-slot Paxos of the seeds, where every
//! slot runs its own Phase 1 and Phase 2.

use crate::ballot::{Ballot, NodeId, Slot, Tick};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// What a slot holds: a no-op (a hole filled by a new leader) or a batch of opaque
/// client commands, applied in order.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Value {
    Noop,
    Commands(Vec<Bytes>),
}

/// What each command costs on the wire beside its bytes (a length prefix), and what a
/// value, an entry or a message costs beside its commands: rounded up, so that sizes
/// computed here bound the encoded sizes from above.
pub const COMMAND_OVERHEAD_BYTES: usize = 10;
pub const ENTRY_OVERHEAD_BYTES: usize = 40;
pub const MESSAGE_OVERHEAD_BYTES: usize = 64;

impl Value {
    pub fn commands(&self) -> &[Bytes] {
        match self {
            Value::Noop => &[],
            Value::Commands(commands) => commands,
        }
    }

    /// An upper bound of the value's encoded size, for the byte limits.
    pub fn size_bytes(&self) -> usize {
        ENTRY_OVERHEAD_BYTES
            + self
                .commands()
                .iter()
                .map(|command| command.len() + COMMAND_OVERHEAD_BYTES)
                .sum::<usize>()
    }
}

impl Entry {
    pub fn size_bytes(&self) -> usize {
        self.value.size_bytes()
    }
}

/// A slot's value with the ballot it was accepted (or chosen) at.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub slot: Slot,
    pub ballot: Ballot,
    pub value: Value,
}

/// Per-slot mode: "slot was chosen at ballot"; a receiver that accepted that very
/// (slot, ballot) knows the value without it being sent again.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct Decided {
    pub slot: Slot,
    pub ballot: Ballot,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub enum Message {
    // ---- Multi-Paxos, Phase 1 (once per leadership) ----
    /// 1a: "promise me `ballot` for every slot from `from_slot` on".
    /// `transfer_from`: the candidate campaigns because the leader of that ballot handed
    /// it the leadership (`TimeoutNow`); that leader gave its lease up first, so an
    /// acceptor whose lease protects that very leadership may promise at once
    /// (docs/leader-transfer.md). None for every ordinary election.
    Prepare {
        ballot: Ballot,
        from_slot: Slot,
        transfer_from: Option<Ballot>,
    },
    /// 1b: the entries the acceptor holds in `first_slot..=last_slot`. A promise too big
    /// for one message comes in chunks that cover `from_slot..` without gaps, the last
    /// with `last_slot == Slot::MAX`; the candidate counts the promise once it has them
    /// all. Entries at or below `commit_index` are chosen, and slots at or below it that
    /// come without an entry are chosen too (compacted into a snapshot): their values
    /// must be fetched, never re-proposed. Leaves only after `ballot` is durable.
    Promise {
        ballot: Ballot,
        from_slot: Slot,
        first_slot: Slot,
        last_slot: Slot,
        entries: Vec<Entry>,
        commit_index: Slot,
    },
    /// The receiver has promised `promised` > `ballot`, or holds a lease for another
    /// leader; `leader` is who it believes leads.
    Preempted {
        ballot: Ballot,
        promised: Ballot,
        leader: Option<NodeId>,
    },

    /// Pre-vote: "would you promise `ballot` if I prepared it?" — asked before a Phase 1
    /// that would raise promises. The receiver changes nothing. A node that cannot reach
    /// a quorum (cut off, or back from a pause) never raises its ballot, so it cannot
    /// depose a live leader when it returns (Raft's pre-vote).
    /// `round` is the asker's tick when it asked: only answers to recent questions
    /// count, so a quorum of grants shows a quorum reachable now, not once.
    PreVote { ballot: Ballot, round: u64 },
    /// `granted`: the sender holds no lease for a live leader and has promised below
    /// `ballot`.
    PreVoteReply {
        ballot: Ballot,
        round: u64,
        granted: bool,
    },

    // ---- Multi-Paxos, Phase 2 (one round per command batch) ----
    /// 2a for the contiguous slots `first_slot..first_slot + values.len()`. Carries the
    /// leader's commit point so followers learn chosen slots without a message of its own.
    Accept {
        ballot: Ballot,
        first_slot: Slot,
        values: Vec<Value>,
        commit_index: Slot,
        sent_at: Tick,
    },
    /// 2b for `first_slot..=last_slot`. Leaves only after those entries are durable.
    Accepted {
        ballot: Ballot,
        first_slot: Slot,
        last_slot: Slot,
        echo: Tick,
    },
    /// The leader's keep-alive when it has no Accept to send: renews the lease and
    /// carries the commit point.
    /// `round` numbers the leader's read-index rounds: an acknowledgement of round r
    /// confirms the reads that arrived before round r was sent.
    Heartbeat {
        ballot: Ballot,
        commit_index: Slot,
        sent_at: Tick,
        round: u64,
    },
    HeartbeatAck {
        ballot: Ballot,
        echo: Tick,
        round: u64,
        commit_index: Slot,
    },
    /// A follower hands client commands to the leader.
    Forward { commands: Vec<Bytes> },
    /// A follower asks the leader for a read index (linearizable read, no log write).
    /// `incarnation` names the follower's life: request numbers restart with the process.
    ReadIndex { request: u64, incarnation: u64 },
    /// The leader's commit index at a moment it was sure it led (None: it could not).
    /// Like a heartbeat it vouches, for `ballot`, that every slot up to the index is
    /// chosen, so the follower marks what it accepted at that ballot chosen at once
    /// instead of waiting for the next heartbeat to serve the read.
    ReadIndexReply {
        request: u64,
        incarnation: u64,
        read_index: Option<Slot>,
        ballot: Ballot,
    },

    // ---- Learning (both modes) ----
    /// "Send me chosen entries from `from_slot` on."
    CatchUp { from_slot: Slot },
    /// Chosen entries, in slot order, and the sender's commit point.
    Chosen {
        entries: Vec<Entry>,
        commit_index: Slot,
    },

    // ---- Per-slot Paxos (the seeds' design; no leader) ----
    SlotPrepare {
        slot: Slot,
        ballot: Ballot,
        decided: Vec<Decided>,
    },
    SlotPromise {
        slot: Slot,
        ballot: Ballot,
        accepted: Option<(Ballot, Value)>,
        decided: Vec<Decided>,
    },
    SlotAccept {
        slot: Slot,
        ballot: Ballot,
        value: Value,
        decided: Vec<Decided>,
    },
    SlotAccepted {
        slot: Slot,
        ballot: Ballot,
        decided: Vec<Decided>,
    },
    SlotRejected {
        slot: Slot,
        ballot: Ballot,
        promised: Ballot,
        decided: Vec<Decided>,
    },
    /// Decisions that found no other message to ride on.
    SlotDecided { decided: Vec<Decided> },

    // ---- Leadership transfer (last: the encodings of the variants above are unchanged) ----
    /// The leader of `ballot`, which has given up its lease and stopped proposing, tells
    /// its caught-up target to start Phase 1 at once, without pre-vote and without
    /// waiting for leases on `ballot` to run out (etcd raft's MsgTimeoutNow).
    TimeoutNow { ballot: Ballot },
}

impl Message {
    /// An upper bound of the encoded size, for the byte limits: what the values carried
    /// cost, plus a fixed overhead.
    pub fn size_bytes(&self) -> usize {
        let entries = |entries: &[Entry]| entries.iter().map(Entry::size_bytes).sum::<usize>();
        let decided = |decided: &[Decided]| decided.len() * ENTRY_OVERHEAD_BYTES;
        MESSAGE_OVERHEAD_BYTES
            + match self {
                Message::Promise { entries: e, .. } | Message::Chosen { entries: e, .. } => {
                    entries(e)
                }
                Message::Accept { values, .. } => values.iter().map(Value::size_bytes).sum(),
                Message::Forward { commands } => commands
                    .iter()
                    .map(|command| command.len() + COMMAND_OVERHEAD_BYTES)
                    .sum(),
                Message::SlotPrepare { decided: d, .. }
                | Message::SlotAccepted { decided: d, .. }
                | Message::SlotRejected { decided: d, .. }
                | Message::SlotDecided { decided: d } => decided(d),
                Message::SlotPromise {
                    accepted,
                    decided: d,
                    ..
                } => decided(d) + accepted.as_ref().map_or(0, |(_, value)| value.size_bytes()),
                Message::SlotAccept {
                    value, decided: d, ..
                } => decided(d) + value.size_bytes(),
                Message::Prepare { .. }
                | Message::PreVote { .. }
                | Message::PreVoteReply { .. }
                | Message::Preempted { .. }
                | Message::Accepted { .. }
                | Message::Heartbeat { .. }
                | Message::HeartbeatAck { .. }
                | Message::ReadIndex { .. }
                | Message::ReadIndexReply { .. }
                | Message::CatchUp { .. }
                | Message::TimeoutNow { .. } => 0,
            }
    }

    /// A short name for metrics and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Preempted { .. } => "preempted",
            Message::PreVote { .. } => "pre_vote",
            Message::PreVoteReply { .. } => "pre_vote_reply",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat_ack",
            Message::Forward { .. } => "forward",
            Message::ReadIndex { .. } => "read_index",
            Message::ReadIndexReply { .. } => "read_index_reply",
            Message::CatchUp { .. } => "catch_up",
            Message::TimeoutNow { .. } => "timeout_now",
            Message::Chosen { .. } => "chosen",
            Message::SlotPrepare { .. } => "slot_prepare",
            Message::SlotPromise { .. } => "slot_promise",
            Message::SlotAccept { .. } => "slot_accept",
            Message::SlotAccepted { .. } => "slot_accepted",
            Message::SlotRejected { .. } => "slot_rejected",
            Message::SlotDecided { .. } => "slot_decided",
        }
    }
}

/// A message with its addresses. `from == to` happens: a node's proposer talks to
/// its own acceptor through the same path, so its own vote also waits for its persist.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub message: Message,
}
