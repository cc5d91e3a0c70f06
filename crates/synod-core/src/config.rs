//! Node configuration. All durations are in ticks of the core's logical clock.

use crate::ballot::NodeId;
use serde::{Deserialize, Serialize};

/// Which protocol the node runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Mode {
    /// A stable leader runs Phase 1 once, then one Accept round per slot.
    MultiPaxos,
    /// The seeds' design: every slot runs full Phase 1 + Phase 2; any node proposes.
    PerSlot,
}

/// How the leader confirms a linearizable read (see `read.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum ReadMode {
    /// Under its read lease the leader answers alone; without one it runs a quorum round.
    /// Safe only while the nodes' clock rates differ by at most `max_clock_drift_percent`.
    Lease,
    /// Every read costs one quorum round (a heartbeat every acceptor answers): no clock
    /// assumption at all. What etcd's servers do.
    ReadIndex,
}

/// What a node does after it is preempted (or its election times out).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Backoff {
    /// Wait a random number of ticks before trying again: dueling proposers do not livelock.
    Randomized,
    /// Retry at once with a higher ballot, and use fixed election timeouts. Only for
    /// demonstrating the livelock that randomized backoff prevents.
    Disabled,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Config {
    pub id: NodeId,
    /// Every member, this node included.
    pub nodes: Vec<NodeId>,
    pub mode: Mode,
    /// A follower that hears no leader for a random time in
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)` starts Phase 1.
    pub election_timeout_ticks: u64,
    /// A leader with nothing to send to a peer sends a heartbeat this often.
    pub heartbeat_interval_ticks: u64,
    /// Unanswered Prepare, Accept and CatchUp messages are resent after this long.
    pub retransmit_ticks: u64,
    /// An acceptor that heard the leader within this many ticks refuses to promise a
    /// higher ballot to anyone else. Must not exceed `election_timeout_ticks`.
    pub lease_ticks: u64,
    /// How far two nodes' tick rates may differ, in percent. The leader's read lease is
    /// `lease_ticks` shortened by this margin (see `read_lease_ticks`).
    pub max_clock_drift_percent: u64,
    pub backoff: Backoff,
    /// Most commands in one slot (1 = no batching).
    pub max_batch_commands: usize,
    /// Most slots proposed and not yet chosen at once (the pipeline window).
    pub max_inflight_slots: usize,
    /// Most commands queued at this node before `propose` answers `Busy`.
    pub max_pending_commands: usize,
    /// Most entries in one Chosen (catch-up) reply.
    pub max_catchup_entries: usize,
    /// Most bytes of values (see [`crate::Value::size_bytes`]) in one message. A message
    /// always carries at least one slot, so one command larger than this still travels,
    /// alone; the runtime bounds single commands (`--max-request-bytes`).
    pub max_message_bytes: usize,
    /// Most bytes of commands cut into one slot (a single larger command gets a slot of
    /// its own).
    pub max_batch_bytes: usize,
    /// Most bytes of values proposed and not yet chosen at once.
    pub max_inflight_bytes: usize,
    /// Most bytes of commands queued at this node before `propose` answers `Busy`.
    pub max_pending_bytes: usize,
    /// How linearizable reads are confirmed.
    pub read_mode: ReadMode,
    /// Ask a quorum before a Phase 1 (Multi-Paxos): a node that cannot reach one never
    /// raises its ballot. Off only to show what it prevents.
    pub pre_vote: bool,
    /// Differs in every life of the node (the runtime draws it at start-up): replies to
    /// requests of an earlier life (read-index) are told apart from this life's.
    pub incarnation: u64,
    /// Seeds the node's own random number generator (timeouts, backoff).
    pub seed: u64,
}

impl Config {
    /// Sensible defaults for a node `id` of the cluster `nodes`.
    pub fn new(id: NodeId, nodes: Vec<NodeId>) -> Config {
        Config {
            id,
            nodes,
            mode: Mode::MultiPaxos,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            retransmit_ticks: 4,
            lease_ticks: 10,
            max_clock_drift_percent: 10,
            backoff: Backoff::Randomized,
            max_batch_commands: 64,
            max_inflight_slots: 64,
            max_pending_commands: 4096,
            max_catchup_entries: 256,
            max_message_bytes: 1 << 20,
            max_batch_bytes: 1 << 20,
            max_inflight_bytes: 64 << 20,
            max_pending_bytes: 64 << 20,
            read_mode: ReadMode::Lease,
            pre_vote: true,
            incarnation: id,
            seed: id,
        }
    }

    /// How long after a quorum acknowledged it the leader may answer reads alone:
    /// `lease_ticks · (1 − ρ)/(1 + ρ)` for a drift ρ, rounded down, minus one tick for the
    /// tick boundaries.
    pub fn read_lease_ticks(&self) -> u64 {
        let drift = self.max_clock_drift_percent.min(99);
        (self.lease_ticks * (100 - drift) / (100 + drift)).saturating_sub(1)
    }

    pub fn quorum(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.nodes.contains(&self.id) {
            return Err(format!(
                "node {} is not in the member list {:?}",
                self.id, self.nodes
            ));
        }
        if self.nodes.contains(&0) {
            return Err("node id 0 is reserved".into());
        }
        let mut sorted = self.nodes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.nodes.len() {
            return Err(format!("duplicate node ids in {:?}", self.nodes));
        }
        if self.election_timeout_ticks == 0 || self.heartbeat_interval_ticks == 0 {
            return Err("election timeout and heartbeat interval must be at least one tick".into());
        }
        if self.heartbeat_interval_ticks >= self.election_timeout_ticks {
            return Err("the heartbeat interval must be shorter than the election timeout".into());
        }
        if self.max_clock_drift_percent >= 100 {
            return Err("max_clock_drift_percent must be below 100".into());
        }
        if self.lease_ticks > self.election_timeout_ticks {
            return Err("lease_ticks must not exceed election_timeout_ticks".into());
        }
        if self.max_batch_commands == 0
            || self.max_inflight_slots == 0
            || self.max_pending_commands == 0
            || self.max_catchup_entries == 0
            || self.retransmit_ticks == 0
        {
            return Err(
                "batch, window, queue, catch-up and retransmit limits must be positive".into(),
            );
        }
        if self.max_message_bytes == 0
            || self.max_batch_bytes == 0
            || self.max_inflight_bytes == 0
            || self.max_pending_bytes == 0
        {
            return Err("message, batch, window and queue byte limits must be positive".into());
        }
        if self.max_batch_bytes > self.max_message_bytes {
            return Err("max_batch_bytes must not exceed max_message_bytes".into());
        }
        Ok(())
    }
}
