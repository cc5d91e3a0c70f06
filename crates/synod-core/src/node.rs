//! The facade: one replica's whole protocol state and the five inputs that drive it.
//!
//! Every input runs a handler (in `acceptor.rs`, `election.rs`, `leader.rs`,
//! `per_slot.rs`), then the invariants are checked. Outputs collect in an outbox that
//! `take_ready` drains. Replies that vouch for durable state are parked until
//! `on_persisted` covers the persist they depend on.

use crate::ballot::{Ballot, NodeId, Slot, Tick};
use crate::config::{Backoff, Config, Mode};
use crate::election::Candidate;
use crate::leader::Leader;
use crate::log::{Change, Log};
use crate::message::{Envelope, Message, Value};
use crate::per_slot::PerSlot;
use crate::persist::{DurableState, PersistId, PersistOp, PersistRequest};
use crate::ready::{Event, ProposalId, Ready};
use crate::rng::Rng;
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub promised: Ballot,
    pub commit_index: Slot,
    pub last_slot: Slot,
    pub pending_commands: usize,
    pub inflight_slots: usize,
    pub phase1_runs: u64,
    /// Phase 1 runs of a leader that stayed the leader: it rose above a stray ballot
    /// (see `Node::refresh_leadership`).
    pub refreshes: u64,
    /// Reads this node forwarded to a leader in a `ReadIndex` message it shared with at
    /// least one other read (`Node::flush_forwarded_reads`).
    pub batched_forwarded_reads: u64,
    /// Heartbeats this leader sent only to tell a follower the commit point, at a tick
    /// after it moved with no Accept to carry it (`Node::heartbeat_silent_peers`).
    pub tick_commit_notices: u64,
    pub now: Tick,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ProposeError {
    /// The node's queue is full; try again later (or at another node).
    Busy { pending: usize },
    /// `propose_at` is only served by the leader (or while no leader is known).
    NotLeader { leader: NodeId },
    /// `propose_at` asked for a slot further ahead than the pipeline window allows.
    SlotTooFar { slot: Slot, next_slot: Slot },
    /// `propose_at` is a Multi-Paxos operation.
    WrongMode,
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::Busy { pending } => {
                write!(f, "node busy: {pending} commands already queued")
            }
            ProposeError::NotLeader { leader } => write!(f, "not the leader; node {leader} leads"),
            ProposeError::SlotTooFar { slot, next_slot } => write!(
                f,
                "slot {slot} is too far ahead: the next free slot is {next_slot}"
            ),
            ProposeError::WrongMode => write!(f, "propose_at needs Multi-Paxos mode"),
        }
    }
}

impl std::error::Error for ProposeError {}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum StepError {
    /// The sender is not a member of this cluster.
    UnknownPeer(NodeId),
    /// The message is addressed to another node.
    WrongRecipient { to: NodeId },
    /// The message claims a ballot its sender does not own.
    ForgedBallot { from: NodeId, ballot: Ballot },
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::UnknownPeer(id) => write!(f, "message from unknown node {id}"),
            StepError::WrongRecipient { to } => write!(f, "message addressed to node {to}"),
            StepError::ForgedBallot { from, ballot } => {
                write!(
                    f,
                    "node {from} sent a message with ballot {ballot} it does not own"
                )
            }
        }
    }
}

impl std::error::Error for StepError {}

/// A command waiting for a slot.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Pending {
    pub id: Option<ProposalId>,
    pub command: Bytes,
    /// False when the command had to wait for (or trigger) Phase 1.
    pub leader_was_established: bool,
    /// `propose_at`: the slot the command asked for.
    pub target_slot: Option<Slot>,
    /// The follower that forwarded the command, told of its commit at once.
    pub forwarded_by: Option<NodeId>,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub(crate) struct Outbox {
    pub messages: Vec<Envelope>,
    pub persist_ops: Vec<PersistOp>,
    /// Replies waiting for a persist: (persist id, message), ids non-decreasing.
    pub held: VecDeque<(PersistId, Envelope)>,
    pub events: Vec<Event>,
    pub committed: Vec<crate::ready::Committed>,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) enum RoleState {
    Follower,
    Candidate(Candidate),
    Leader(Leader),
}

/// One replica. See the crate documentation.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Node {
    pub(crate) config: Config,
    pub(crate) rng: Rng,
    pub(crate) now: Tick,
    /// The acceptor's promise for the whole log (Multi-Paxos).
    pub(crate) promised: Ballot,
    /// The highest ballot seen anywhere; a new candidacy goes above it.
    pub(crate) highest_seen: Ballot,
    /// (leader, lease expiry): while `now < expiry`, promise no one else.
    pub(crate) lease: Option<(NodeId, Tick)>,
    pub(crate) log: Log,
    pub(crate) role: RoleState,
    pub(crate) leader: Option<NodeId>,
    pub(crate) election_deadline: Tick,
    pub(crate) pending: VecDeque<Pending>,
    pub(crate) next_proposal_id: ProposalId,
    /// When the last CatchUp left, and to whom.
    pub(crate) catch_up_sent: Option<(NodeId, Tick)>,
    /// A pre-vote under way (a follower whose election timer ran out).
    pub(crate) pre_vote: Option<crate::election::PreVoting>,
    /// The candidate this acceptor last promised, and until when it refuses to tell
    /// others it would promise them (it gives that candidate time to win).
    pub(crate) backing: Option<(NodeId, Tick)>,
    /// The highest commit point each peer reported (where to catch up from).
    pub(crate) peer_commits: std::collections::BTreeMap<NodeId, Slot>,
    /// Bytes of the commands in `pending`.
    pub(crate) pending_bytes: usize,
    pub(crate) per_slot: PerSlot,
    pub(crate) outbox: Outbox,
    pub(crate) next_persist_id: PersistId,
    pub(crate) durable_persist_id: PersistId,
    pub(crate) phase1_runs: u64,
    pub(crate) refreshes: u64,
    /// See [`Status::batched_forwarded_reads`].
    pub(crate) batched_forwarded_reads: u64,
    /// See [`Status::tick_commit_notices`].
    pub(crate) tick_commit_notices: u64,
    /// A leadership transfer this node started (`transfer.rs`), until it ends.
    pub(crate) transfer: Option<crate::transfer::Transfer>,
    /// The last leadership of ours that told a target to campaign: it never serves a
    /// lease read again.
    pub(crate) released_lease: Option<Ballot>,
    /// When a transfer that had sent `TimeoutNow` was abandoned while this node still
    /// led that ballot: it moves to a new one once a quorum answers (`transfer.rs`).
    pub(crate) abandoned_at: Option<Tick>,
    /// Reads asked for since the last `take_ready`, to go to the leader in one message
    /// (`Node::flush_forwarded_reads`).
    pub(crate) unsent_reads: Vec<crate::read::ReadId>,
    /// Batches of reads forwarded to the leader: the batch's message id (its first read)
    /// → (when it was sent, its reads).
    pub(crate) forwarded_reads:
        std::collections::BTreeMap<crate::read::ReadId, (Tick, Vec<crate::read::ReadId>)>,
    /// The deliberate bug this node runs (model checking only; see `mutant.rs`).
    #[cfg(feature = "mutants")]
    pub(crate) mutant: Option<crate::mutant::Mutant>,
    /// Values at the end of the previous input, for the monotonicity invariants.
    invariant_promised: Ballot,
    invariant_commit_index: Slot,
}

impl Node {
    /// A fresh node with empty state.
    pub fn new(config: Config) -> Result<Node, String> {
        Node::recover(config, DurableState::default())
    }

    /// A node restarted from what it had made durable before a crash.
    pub fn recover(config: Config, state: DurableState) -> Result<Node, String> {
        config.validate()?;
        let restarted = state != DurableState::default();
        let mut rng = Rng::new(config.seed);
        let election_deadline = initial_election_deadline(&config, &mut rng);
        let log = Log::recover(&state.entries, state.commit_index, state.snapshot_slot);
        let highest_slot_promise = state
            .slot_promised
            .values()
            .max()
            .copied()
            .unwrap_or_default();
        let node = Node {
            rng,
            now: 0,
            promised: state.promised,
            highest_seen: state.promised.max(highest_slot_promise),
            lease: None,
            log,
            role: RoleState::Follower,
            leader: None,
            election_deadline,
            pending: VecDeque::new(),
            next_proposal_id: 1,
            catch_up_sent: None,
            pre_vote: None,
            backing: None,
            peer_commits: Default::default(),
            pending_bytes: 0,
            per_slot: PerSlot::recover(state.slot_promised),
            outbox: Outbox::default(),
            next_persist_id: 1,
            durable_persist_id: 0,
            phase1_runs: 0,
            refreshes: 0,
            batched_forwarded_reads: 0,
            tick_commit_notices: 0,
            transfer: None,
            released_lease: None,
            abandoned_at: None,
            unsent_reads: Vec::new(),
            forwarded_reads: Default::default(),
            #[cfg(feature = "mutants")]
            mutant: None,
            invariant_promised: state.promised,
            invariant_commit_index: 0,
            config,
        };
        let mut node = node;
        if restarted {
            // We may have acknowledged a leader just before crashing: honour that lease.
            node.lease = Some((crate::acceptor::RESTART_QUIET, node.config.lease_ticks));
        }
        node.invariant_commit_index = node.log.commit_index();
        node.check_invariants();
        Ok(node)
    }

    /// Runs the deliberate bug `mutant` from now on (model checking only).
    #[cfg(feature = "mutants")]
    pub fn set_mutant(&mut self, mutant: Option<crate::mutant::Mutant>) {
        self.mutant = mutant;
        self.log.mutant = mutant;
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// One tick of the logical clock: timeouts, heartbeats, retransmissions.
    pub fn tick(&mut self) {
        self.advance_to(self.now + 1);
    }

    /// The logical clock reads `now` (ticks since this node started): run what fell due
    /// in between once. A runtime calls this with its clock before it hands the node any
    /// other input, so no decision — a lease above all — is taken on a clock read before
    /// a stall. Earlier times change nothing.
    pub fn advance_to(&mut self, now: Tick) {
        if now <= self.now {
            return;
        }
        self.now = now;
        match self.config.mode {
            Mode::MultiPaxos => self.tick_multi(),
            Mode::PerSlot => self.tick_per_slot(),
        }
        self.check_invariants();
    }

    /// The election timer runs out now, whatever its random draw said: the next tick
    /// campaigns (pre-vote first) exactly as a timeout would. For model checkers, which
    /// explore every timeout this way rather than one random draw per path. A leader has
    /// no election timer; it ignores this.
    pub fn expire_election_timer(&mut self) {
        self.election_deadline = self.election_deadline.min(self.now);
    }

    /// The logical clock: ticks since this node started.
    pub fn now(&self) -> Tick {
        self.now
    }

    /// A message arrived. Messages from unknown nodes, to other nodes, or with a ballot
    /// the sender does not own are refused and change nothing.
    pub fn step(&mut self, envelope: Envelope) -> Result<(), StepError> {
        let Envelope { from, to, message } = envelope;
        if to != self.config.id {
            return Err(StepError::WrongRecipient { to });
        }
        if !self.config.nodes.contains(&from) {
            return Err(StepError::UnknownPeer(from));
        }
        if let Some(ballot) = owned_ballot(&message) {
            if ballot.node != from {
                return Err(StepError::ForgedBallot { from, ballot });
            }
        }
        match message {
            Message::Prepare {
                ballot,
                from_slot,
                transfer_from,
            } => self.on_prepare(from, ballot, from_slot, transfer_from),
            Message::TimeoutNow { ballot } => self.on_timeout_now(from, ballot),
            Message::PreVote { ballot, round } => self.on_pre_vote(from, ballot, round),
            Message::PreVoteReply {
                ballot,
                round,
                granted,
            } => self.on_pre_vote_reply(from, ballot, round, granted),
            Message::Promise {
                ballot,
                from_slot: _,
                first_slot,
                last_slot,
                entries,
                commit_index,
            } => self.on_promise(
                from,
                ballot,
                crate::election::PromiseChunk {
                    first_slot,
                    last_slot,
                    entries,
                    commit_index,
                },
            ),
            Message::Preempted {
                ballot,
                promised,
                leader,
            } => self.on_preempted(from, ballot, promised, leader),
            Message::Accept {
                ballot,
                first_slot,
                values,
                commit_index,
                sent_at,
            } => self.on_accept(from, ballot, first_slot, values, commit_index, sent_at),
            Message::Accepted {
                ballot,
                first_slot,
                last_slot,
                echo,
            } => self.on_accepted(from, ballot, first_slot, last_slot, echo),
            Message::Heartbeat {
                ballot,
                commit_index,
                sent_at,
                round,
            } => self.on_heartbeat(from, ballot, commit_index, sent_at, round),
            Message::HeartbeatAck {
                ballot,
                echo,
                round,
                commit_index,
            } => self.on_heartbeat_ack(from, ballot, echo, round, commit_index),
            Message::Forward { commands } => self.on_forward(from, commands),
            Message::ReadIndex {
                request,
                incarnation,
            } => self.on_read_index(from, request, incarnation),
            Message::ReadIndexReply {
                request,
                incarnation,
                read_index,
                ballot,
            } => self.on_read_index_reply(from, request, incarnation, read_index, ballot),
            Message::CatchUp { from_slot } => self.on_catch_up(from, from_slot),
            Message::Chosen {
                entries,
                commit_index,
            } => self.on_chosen(from, entries, commit_index),
            Message::SlotPrepare {
                slot,
                ballot,
                decided,
            } => {
                self.on_decided(from, &decided);
                self.on_slot_prepare(from, slot, ballot);
            }
            Message::SlotPromise {
                slot,
                ballot,
                accepted,
                decided,
            } => {
                self.on_decided(from, &decided);
                self.on_slot_promise(from, slot, ballot, accepted);
            }
            Message::SlotAccept {
                slot,
                ballot,
                value,
                decided,
            } => {
                self.on_decided(from, &decided);
                self.on_slot_accept(from, slot, ballot, value);
            }
            Message::SlotAccepted {
                slot,
                ballot,
                decided,
            } => {
                self.on_decided(from, &decided);
                self.on_slot_accepted(from, slot, ballot);
            }
            Message::SlotRejected {
                slot,
                ballot,
                promised,
                decided,
            } => {
                self.on_decided(from, &decided);
                self.on_slot_rejected(slot, ballot, promised);
            }
            Message::SlotDecided { decided } => self.on_decided(from, &decided),
        }
        self.after_log_change();
        self.check_invariants();
        Ok(())
    }

    /// Submits a command. The leader proposes it; a follower forwards it to the leader;
    /// with no leader known it waits here (and an election starts if none is under way).
    pub fn propose(&mut self, command: Bytes) -> Result<ProposalId, ProposeError> {
        self.check_room(command.len())?;
        let id = self.next_proposal_id;
        self.next_proposal_id += 1;
        match self.config.mode {
            Mode::MultiPaxos => self.propose_multi(Some(id), command),
            Mode::PerSlot => self.push_pending(Pending {
                id: Some(id),
                command,
                leader_was_established: false,
                target_slot: None,
                forwarded_by: None,
            }),
        }
        self.check_invariants();
        Ok(id)
    }

    /// Proposes `command` for a given slot (the seeds' `multi_paxos_propose`). The leader
    /// fills the slots between its next free slot and `slot` with no-ops. If `slot` is
    /// already taken the command goes to the next free slot instead (the caller learns
    /// the slot from `Event::ProposalAssigned`, and what `slot` holds once it is chosen).
    /// Served by the leader, or queued while no leader is known.
    pub fn propose_at(&mut self, slot: Slot, command: Bytes) -> Result<ProposalId, ProposeError> {
        if self.config.mode != Mode::MultiPaxos {
            return Err(ProposeError::WrongMode);
        }
        self.check_room(command.len())?;
        let next_slot = match &self.role {
            RoleState::Leader(leader) => leader.next_slot,
            _ => match self.leader {
                Some(leader) if leader != self.config.id => {
                    return Err(ProposeError::NotLeader { leader })
                }
                _ => self.log.last_slot() + 1,
            },
        };
        if slot > next_slot + self.config.max_inflight_slots as u64 {
            return Err(ProposeError::SlotTooFar { slot, next_slot });
        }
        let id = self.next_proposal_id;
        self.next_proposal_id += 1;
        self.push_pending(Pending {
            id: Some(id),
            command,
            leader_was_established: matches!(self.role, RoleState::Leader(_)),
            target_slot: Some(slot),
            forwarded_by: None,
        });
        self.check_invariants();
        Ok(id)
    }

    /// Storage reports every persist request up to `id` durable: release the replies
    /// that waited for it.
    pub fn on_persisted(&mut self, id: PersistId) {
        let issued = self.next_persist_id - 1;
        let id = id.min(issued);
        if id <= self.durable_persist_id {
            return;
        }
        self.durable_persist_id = id;
        while let Some((persist_id, _)) = self.outbox.held.front() {
            if *persist_id > id {
                break;
            }
            let (_, envelope) = self.outbox.held.pop_front().expect("front exists");
            self.outbox.messages.push(envelope);
        }
    }

    /// True when a reply (Promise, Accepted, HeartbeatAck) waits for a persist request
    /// to be reported durable (`on_persisted`). A runtime that defers requests nothing
    /// waits for (commit marks alone) writes them now if this is true: such a reply
    /// waits for the last request issued before it, whatever that request holds.
    pub fn holds_replies(&self) -> bool {
        !self.outbox.held.is_empty()
    }

    /// True when `take_ready` has something to hand out.
    pub fn has_ready(&self) -> bool {
        !self.outbox.messages.is_empty()
            || !self.outbox.persist_ops.is_empty()
            || !self.outbox.events.is_empty()
            || self.log.delivered_index() < self.log.commit_index()
            || self.wants_flush()
            || self.wants_read_round()
            || !self.unsent_reads.is_empty()
    }

    /// Drains the outputs of every input since the last call. This is also where queued
    /// commands are cut into batches: commands that arrive together share a slot.
    pub fn take_ready(&mut self) -> Ready {
        self.flush_forwarded_reads();
        match self.config.mode {
            Mode::MultiPaxos => {
                self.flush_pending();
                self.flush_read_round();
            }
            Mode::PerSlot => self.flush_per_slot(),
        }
        self.log.take_committed(&mut self.outbox.committed);
        let persist = if self.outbox.persist_ops.is_empty() {
            None
        } else {
            let id = self.next_persist_id;
            self.next_persist_id += 1;
            Some(PersistRequest {
                id,
                ops: std::mem::take(&mut self.outbox.persist_ops),
            })
        };
        self.check_invariants();
        Ready {
            messages: std::mem::take(&mut self.outbox.messages),
            persist,
            committed: std::mem::take(&mut self.outbox.committed),
            events: std::mem::take(&mut self.outbox.events),
        }
    }

    /// The state machine has applied and durably snapshotted every slot up to
    /// `through`: drop those entries from the log (and, through the persist request,
    /// from storage). Lagging peers will get the snapshot instead (`Event::SnapshotNeeded`).
    pub fn compact(&mut self, through: Slot) {
        if self.log.compact(through) {
            self.persist(PersistOp::Snapshot {
                slot: self.log.compacted_through(),
            });
        }
        self.check_invariants();
    }

    /// The runtime installed a peer's snapshot covering every slot up to `slot` into the
    /// state machine (and saved it durably): the log continues after it. Returns false
    /// (and changes nothing) when the log already reached `slot`.
    pub fn install_snapshot(&mut self, slot: Slot) -> bool {
        if !self.log.install_snapshot(slot) {
            return false;
        }
        self.persist(PersistOp::Snapshot { slot });
        self.after_log_change();
        match self.config.mode {
            Mode::MultiPaxos => self.leader_after_choose(),
            Mode::PerSlot => self.resolve_decided_proposals(),
        }
        self.check_invariants();
        true
    }

    /// The first slot still in the log (earlier ones live in the snapshot).
    pub fn first_log_slot(&self) -> Slot {
        self.log.compacted_through() + 1
    }

    /// What this node knows of `slot`: `Some((value, chosen))` if it holds an entry.
    pub fn slot_value(&self, slot: Slot) -> Option<(Value, bool)> {
        self.log.get(slot).map(|entry| {
            (
                entry.value.clone(),
                entry.chosen || slot <= self.log.commit_index(),
            )
        })
    }

    /// The chosen entries this node holds, in slot order, from `from` on.
    pub fn chosen_entries(&self, from: Slot, max: usize) -> Vec<crate::message::Entry> {
        self.log.chosen_from(from.max(1), max, usize::MAX)
    }

    pub fn status(&self) -> Status {
        let (role, inflight_slots) = match &self.role {
            RoleState::Follower => (Role::Follower, self.per_slot.inflight()),
            RoleState::Candidate(_) => (Role::Candidate, 0),
            RoleState::Leader(leader) => (Role::Leader, leader.inflight_len()),
        };
        Status {
            id: self.config.id,
            role,
            leader: self.leader,
            promised: self.promised,
            commit_index: self.log.commit_index(),
            last_slot: self.log.last_slot(),
            pending_commands: self.pending.len(),
            inflight_slots,
            phase1_runs: self.phase1_runs,
            refreshes: self.refreshes,
            batched_forwarded_reads: self.batched_forwarded_reads,
            tick_commit_notices: self.tick_commit_notices,
            now: self.now,
        }
    }

    // ---- shared plumbing for the role modules ----

    /// `Busy` when the queue has no room for one more command of `bytes` (an empty
    /// queue always takes one).
    fn check_room(&self, bytes: usize) -> Result<(), ProposeError> {
        let full_count = self.pending.len() >= self.config.max_pending_commands;
        let full_bytes =
            !self.pending.is_empty() && self.pending_bytes + bytes > self.config.max_pending_bytes;
        if full_count || full_bytes {
            return Err(ProposeError::Busy {
                pending: self.pending.len(),
            });
        }
        Ok(())
    }

    pub(crate) fn push_pending(&mut self, pending: Pending) {
        self.pending_bytes += pending.command.len();
        self.pending.push_back(pending);
    }

    pub(crate) fn push_pending_front(&mut self, pending: Pending) {
        self.pending_bytes += pending.command.len();
        self.pending.push_front(pending);
    }

    pub(crate) fn pop_pending(&mut self) -> Option<Pending> {
        let pending = self.pending.pop_front()?;
        self.pending_bytes -= pending.command.len();
        Some(pending)
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.config.id;
        self.config
            .nodes
            .iter()
            .copied()
            .filter(move |id| *id != me)
    }

    /// A message that vouches for nothing durable: it may leave at once.
    pub(crate) fn send(&mut self, to: NodeId, message: Message) {
        self.outbox.messages.push(Envelope {
            from: self.config.id,
            to,
            message,
        });
    }

    /// A message that vouches for state (a promise, an accepted entry): it leaves only
    /// once every persist issued so far — and the one being built now — is durable.
    pub(crate) fn send_after_persist(&mut self, to: NodeId, message: Message) {
        let envelope = Envelope {
            from: self.config.id,
            to,
            message,
        };
        let needed = if !self.outbox.persist_ops.is_empty() {
            self.next_persist_id
        } else {
            self.next_persist_id - 1
        };
        if needed <= self.durable_persist_id {
            self.outbox.messages.push(envelope);
        } else {
            self.outbox.held.push_back((needed, envelope));
        }
    }

    pub(crate) fn persist(&mut self, op: PersistOp) {
        self.outbox.persist_ops.push(op);
    }

    pub(crate) fn persist_change(&mut self, change: Change) {
        if let Change::Persist(entry) = change {
            self.persist(PersistOp::Accept(entry));
        }
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.outbox.events.push(event);
    }

    pub(crate) fn set_leader(&mut self, leader: Option<NodeId>) {
        if self.leader != leader {
            self.leader = leader;
            self.event(Event::LeaderChanged { leader });
        }
        let handed_over = self
            .transfer
            .as_ref()
            .is_some_and(|transfer| leader == Some(transfer.target));
        if handed_over {
            self.end_transfer(crate::transfer::TransferOutcome::Completed);
        }
    }

    /// Raises the acceptor's promise (durably) and steps down from any lower candidacy
    /// or leadership.
    pub(crate) fn raise_promise(&mut self, ballot: Ballot) {
        if ballot <= self.promised {
            return;
        }
        self.promised = ballot;
        self.highest_seen = self.highest_seen.max(ballot);
        self.persist(PersistOp::Promise(ballot));
        let my_ballot = match &self.role {
            RoleState::Follower => None,
            RoleState::Candidate(candidate) => Some(candidate.ballot),
            RoleState::Leader(leader) => Some(leader.ballot),
        };
        if let Some(mine) = my_ballot {
            if mine < ballot {
                self.step_down(mine);
            }
        }
    }

    /// After hearing the leader: the election timer runs out just after this node's lease
    /// on the leader does, plus a random jitter of up to a quarter of the timeout (fixed
    /// when backoff is disabled). Nobody can win before the leases run out, so waiting
    /// longer only stretches a failover; the jitter is there so the survivors do not all
    /// prepare in the same instant, and even when they do the highest ballot wins
    /// without a duel (every acceptor it reaches promises it). Contention — a candidate
    /// preempted, or another's Prepare heard — still backs off a whole random timeout
    /// ([`Node::reset_election_timer`]).
    pub(crate) fn reset_election_timer_after_leader(&mut self) {
        // The lease is never longer than the election timeout (`Config::validate`).
        let wait = self.config.election_timeout_ticks;
        let jitter = match self.config.backoff {
            Backoff::Randomized => {
                let spread =
                    (self.config.election_timeout_ticks / LEADER_LOSS_JITTER_DIVISOR).max(1);
                self.rng.between(0, spread)
            }
            Backoff::Disabled => 0,
        };
        self.election_deadline = self.now + wait + jitter;
    }

    /// A random election timeout from now (fixed when backoff is disabled).
    pub(crate) fn reset_election_timer(&mut self) {
        let timeout = self.config.election_timeout_ticks;
        let wait = match self.config.backoff {
            Backoff::Randomized => self.rng.between(timeout, 2 * timeout),
            Backoff::Disabled => timeout,
        };
        self.election_deadline = self.now + wait;
    }

    /// Follow-up after the log may have changed: persist the new commit point.
    pub(crate) fn after_log_change(&mut self) {
        if self.log.commit_index() > self.invariant_commit_index {
            let commit = self.log.commit_index();
            self.outbox
                .persist_ops
                .retain(|op| !matches!(op, PersistOp::Commit(_)));
            self.persist(PersistOp::Commit(commit));
        }
    }

    pub(crate) fn check_invariants_pub(&mut self) {
        self.check_invariants();
    }

    /// The invariants of the paper, checked after every input (TigerBeetle style).
    fn check_invariants(&mut self) {
        assert!(
            self.promised >= self.invariant_promised,
            "node {}: promised ballot moved back from {:?} to {:?}",
            self.config.id,
            self.invariant_promised,
            self.promised
        );
        assert!(
            self.log.commit_index() >= self.invariant_commit_index,
            "node {}: commit point moved back from {} to {}",
            self.config.id,
            self.invariant_commit_index,
            self.log.commit_index()
        );
        assert!(self.log.delivered_index() <= self.log.commit_index());
        match &self.role {
            RoleState::Leader(leader) => assert_eq!(
                leader.ballot, self.promised,
                "node {}: leads with {:?} but promised {:?}",
                self.config.id, leader.ballot, self.promised
            ),
            RoleState::Candidate(candidate) => assert!(candidate.ballot <= self.promised),
            RoleState::Follower => {}
        }
        // Only a leader, or one refreshing its ballot, names itself the leader; only the
        // latter carries reads as a candidate.
        match &self.role {
            RoleState::Follower => assert_ne!(self.leader, Some(self.config.id)),
            RoleState::Candidate(candidate) => assert!(
                candidate.reads.is_empty() || self.leader == Some(self.config.id),
                "node {}: a candidate holds reads without refreshing a leadership",
                self.config.id
            ),
            RoleState::Leader(_) => {}
        }
        // A leadership that told a target to campaign is over, still handing over, or
        // waiting to move to a new ballot: acceptors may release its lease at any moment,
        // and it serves no lease read (docs/leader-transfer.md).
        if let RoleState::Leader(leader) = &self.role {
            assert!(
                self.released_lease != Some(leader.ballot)
                    || self.handing_over()
                    || self.abandoned_at.is_some(),
                "node {}: leads {:?} after giving its lease away",
                self.config.id,
                leader.ballot
            );
        }
        if let Some(transfer) = &self.transfer {
            assert_ne!(transfer.target, self.config.id);
        }
        assert!(self.pending.len() <= self.config.max_pending_commands);
        debug_assert_eq!(
            self.pending_bytes,
            self.pending.iter().map(|p| p.command.len()).sum::<usize>()
        );
        self.invariant_promised = self.promised;
        self.invariant_commit_index = self.log.commit_index();
    }
}

/// After the leader falls silent, followers campaign within `election_timeout / 4` of
/// their leases running out (see `Node::reset_election_timer_after_leader`).
const LEADER_LOSS_JITTER_DIVISOR: u64 = 4;

fn initial_election_deadline(config: &Config, rng: &mut Rng) -> Tick {
    let timeout = config.election_timeout_ticks;
    match config.backoff {
        Backoff::Randomized => rng.between(timeout, 2 * timeout),
        Backoff::Disabled => timeout,
    }
}

/// The ballot a message claims as its sender's own, if any.
fn owned_ballot(message: &Message) -> Option<Ballot> {
    match message {
        Message::Prepare { ballot, .. }
        | Message::PreVote { ballot, .. }
        | Message::TimeoutNow { ballot, .. }
        | Message::Accept { ballot, .. }
        | Message::Heartbeat { ballot, .. }
        | Message::SlotPrepare { ballot, .. }
        | Message::SlotAccept { ballot, .. } => Some(*ballot),
        _ => None,
    }
}
