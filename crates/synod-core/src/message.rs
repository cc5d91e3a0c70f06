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
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Value {
    Noop,
    Commands(Vec<Bytes>),
}

impl Value {
    pub fn commands(&self) -> &[Bytes] {
        match self {
            Value::Noop => &[],
            Value::Commands(commands) => commands,
        }
    }
}

/// A slot's value with the ballot it was accepted (or chosen) at.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Entry {
    pub slot: Slot,
    pub ballot: Ballot,
    pub value: Value,
}

/// Per-slot mode: "slot was chosen at ballot"; a receiver that accepted that very
/// (slot, ballot) knows the value without it being sent again.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Decided {
    pub slot: Slot,
    pub ballot: Ballot,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Message {
    // ---- Multi-Paxos, Phase 1 (once per leadership) ----
    /// 1a: "promise me `ballot` for every slot from `from_slot` on".
    Prepare { ballot: Ballot, from_slot: Slot },
    /// 1b: every entry the acceptor holds at or above `from_slot`. Entries at or below
    /// `commit_index` are chosen. Leaves only after `ballot` is durable.
    Promise {
        ballot: Ballot,
        from_slot: Slot,
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
    Heartbeat {
        ballot: Ballot,
        commit_index: Slot,
        sent_at: Tick,
    },
    HeartbeatAck {
        ballot: Ballot,
        echo: Tick,
        commit_index: Slot,
    },
    /// A follower hands client commands to the leader.
    Forward { commands: Vec<Bytes> },
    /// A follower asks the leader for a read index (linearizable read, no log write).
    ReadIndex { request: u64 },
    /// The leader's commit index at a moment it was sure it led (None: it could not).
    ReadIndexReply {
        request: u64,
        read_index: Option<Slot>,
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
}

impl Message {
    /// A short name for metrics and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Prepare { .. } => "prepare",
            Message::Promise { .. } => "promise",
            Message::Preempted { .. } => "preempted",
            Message::Accept { .. } => "accept",
            Message::Accepted { .. } => "accepted",
            Message::Heartbeat { .. } => "heartbeat",
            Message::HeartbeatAck { .. } => "heartbeat_ack",
            Message::Forward { .. } => "forward",
            Message::ReadIndex { .. } => "read_index",
            Message::ReadIndexReply { .. } => "read_index_reply",
            Message::CatchUp { .. } => "catch_up",
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
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub message: Message,
}
