//! The replica: the core plus everything around it that is not I/O.
//!
//! Every input first advances the clock (the core's logical clock follows `now`), so no
//! decision — a lease read above all — is taken on a clock read before a stall. Then the
//! input is handled, and `take_ready` drains what it produced: the core's outputs are
//! pumped (messages a node sends itself are stepped right here), chosen entries are
//! applied, waiting proposals answered, reads released, snapshots scheduled.

use crate::config::ReplicaConfig;
use crate::error::{RecoverError, RequestError};
use crate::sessions::{Outcome, Proposal, RuntimeImage, Sessions};
use bytes::Bytes;
use std::collections::BTreeMap;
use synod_core::{
    Committed, DurableState, Envelope, Event, Node, NodeId, PersistId, PersistRequest,
    ProposeError, ReadPath, Slot, Status, StepError, TransferError, TransferOutcome,
};
use synod_kv::{SnapshotJob, StateMachine};

/// Nanoseconds of the runtime's monotonic clock (any fixed origin).
pub type Nanos = u64;

/// The runtime's handle for one request (a proposal or a read).
pub type RequestId = u64;

/// How a read that may now be served was made safe.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ReadHow {
    /// This replica's state as it is: possibly stale, no communication.
    Serializable,
    /// Linearizable: the leader confirmed its read index this way, and this replica
    /// applied at least that far.
    Linearizable(ReadPath),
}

/// A state-machine snapshot decoded from storage or a peer, ready to install.
pub struct Restored<S> {
    /// Every slot up to this one is in the image.
    pub slot: Slot,
    /// The client sessions as of `slot`.
    pub sessions: Sessions,
    /// The state machine as of `slot`.
    pub state_machine: S,
}

impl<S: StateMachine> Restored<S> {
    /// Decodes a snapshot file's bytes into `empty` (from `StateMachine::empty_like`).
    /// Heavy for a large state: runtimes call it off their event loop.
    pub fn decode(bytes: &[u8], mut empty: S) -> Result<Restored<S>, String> {
        let image = RuntimeImage::decode(bytes)?;
        empty
            .restore(&image.state_machine)
            .map_err(|error| format!("snapshot of slot {}: {error}", image.applied_slot))?;
        Ok(Restored {
            slot: image.applied_slot,
            sessions: image.sessions(),
            state_machine: empty,
        })
    }
}

/// A snapshot to write: run `encode` off the event loop, store the bytes durably as
/// the snapshot of `slot`, then call [`Replica::on_snapshot_saved`].
pub struct SnapshotToSave {
    /// The last slot the snapshot covers.
    pub slot: Slot,
    /// Serializes the state frozen when the snapshot was taken.
    pub encode: SnapshotJob,
}

impl std::fmt::Debug for SnapshotToSave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotToSave")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

/// What happened inside the replica that a runtime may want to log or count.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ReplicaEvent {
    /// Something the core reported: a Phase 1 started, leadership won or lost, a new
    /// leader known.
    Core(Event),
    /// A snapshot from `from` covering every slot up to `slot` was installed.
    SnapshotInstalled {
        /// Who sent it.
        from: NodeId,
        /// The last slot it covers.
        slot: Slot,
    },
    /// A snapshot of `slot` was saved; the log is compacted through it.
    Compacted {
        /// The last slot the snapshot covers.
        slot: Slot,
    },
    /// Saving a snapshot failed (not fatal: the log keeps growing until one works).
    SnapshotFailed {
        /// The slot it would have covered.
        slot: Slot,
        /// Why.
        error: String,
    },
    /// A peer needs a snapshot newer than any this replica holds.
    SnapshotUnavailable {
        /// The peer.
        peer: NodeId,
        /// The slot it needs.
        needed: Slot,
        /// The newest snapshot here (0: none).
        have: Slot,
    },
    /// A proposal made with [`Replica::propose_at`] got its slot.
    Assigned {
        /// The request.
        request: RequestId,
        /// The slot it went to (the one asked for, or the next free one if that was
        /// taken).
        slot: Slot,
        /// True when the leader was established, so it cost one Accept round.
        phase1_skipped: bool,
    },
    /// A log entry that is not a runtime proposal was skipped.
    UndecodableCommand {
        /// Where it was.
        slot: Slot,
        /// Why it did not decode.
        error: String,
    },
}

/// Outputs of the inputs since the last `take_ready`, in the order a runtime must
/// carry them out: persist requests in order (each then reported with
/// [`Replica::on_persisted`]); messages to peers (any time); replies; reads, served at
/// once against [`Replica::state_machine`]; snapshots to save and stream; log compaction.
#[derive(Default, Debug)]
pub struct ReplicaReady {
    /// Protocol messages for peers (never this node: those are handled inside).
    pub messages: Vec<Envelope>,
    /// Write-ahead-log requests, to be made durable in this order.
    pub persist: Vec<PersistRequest>,
    /// Outcomes of proposals: the state machine's response, or why not.
    pub replies: Vec<(RequestId, Result<Bytes, RequestError>)>,
    /// Reads to serve now against the state machine, or why not.
    pub reads: Vec<(RequestId, Result<ReadHow, RequestError>)>,
    /// A snapshot to encode and save.
    pub save_snapshot: Option<SnapshotToSave>,
    /// Snapshots to stream: (peer, slot of the snapshot to send); report each with
    /// [`Replica::on_snapshot_sent`].
    pub send_snapshots: Vec<(NodeId, Slot)>,
    /// The log (and storage) may drop everything up to this slot: a durable snapshot
    /// covers it.
    pub compact_log: Option<Slot>,
    /// What happened, for logs and metrics.
    pub events: Vec<ReplicaEvent>,
    /// Every slot applied, in order (only with `ReplicaConfig::observe_applied`: the
    /// simulator's checkers watch them).
    pub applied: Vec<Committed>,
}

impl ReplicaReady {
    /// True when there is nothing to carry out.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.persist.is_empty()
            && self.replies.is_empty()
            && self.reads.is_empty()
            && self.save_snapshot.is_none()
            && self.send_snapshots.is_empty()
            && self.compact_log.is_none()
            && self.events.is_empty()
            && self.applied.is_empty()
    }
}

/// Counts since the replica started, for metrics and the simulator's coverage.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ReplicaStats {
    /// Proposals received.
    pub proposals: u64,
    /// Proposals proposed again (no outcome within `retry_after`, or a new leader).
    pub proposal_retries: u64,
    /// Proposals that failed (timeout, too large).
    pub proposals_failed: u64,
    /// Client commands applied (first copies only).
    pub commands_applied: u64,
    /// Slots applied (no-ops included).
    pub slots_applied: u64,
    /// Serializable reads served.
    pub serializable_reads: u64,
    /// Linearizable reads served under the leader's lease.
    pub lease_reads: u64,
    /// Linearizable reads the leader confirmed with a heartbeat round.
    pub read_index_reads: u64,
    /// Linearizable reads served at a follower (read index from the leader).
    pub follower_reads: u64,
    /// Reads that failed.
    pub reads_failed: u64,
    /// Snapshots saved (and the log compacted).
    pub snapshots_taken: u64,
    /// Snapshots installed from peers.
    pub snapshots_installed: u64,
    /// Snapshot streams started to peers.
    pub snapshots_sent: u64,
    /// Times a snapshot was due by its slot count but waited for the log to grow by
    /// `snapshot_log_growth_percent` of the state (counted once per snapshot).
    pub snapshots_held_for_log_growth: u64,
    /// Requests for a snapshot not answered with another stream: one was delivered to
    /// that peer less than `snapshot_resend_after` ago and is likely being installed.
    pub snapshot_resends_held: u64,
    /// Times the known leader changed.
    pub leader_changes: u64,
    /// Leadership transfers this replica started that ended with the target leading.
    pub leader_transfers: u64,
    /// Leadership transfers this replica started that were abandoned.
    pub leader_transfer_timeouts: u64,
}

/// A replica's view of itself.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReplicaStatus {
    /// The protocol core's status.
    pub node: Status,
    /// The last slot the state machine applied.
    pub applied_slot: Slot,
    /// The newest snapshot this replica holds (0: none).
    pub snapshot_slot: Slot,
    /// Proposals waiting for an outcome.
    pub pending_proposals: usize,
    /// Linearizable reads waiting.
    pub pending_reads: usize,
}

/// A proposal with no outcome is proposed again after `retry_after`, then after twice
/// that, … up to `retry_after · 2^MAX_RETRY_DOUBLINGS`. Without the doubling, a leader
/// committing slower than `retry_after` (large values, a slow disk) received a fresh copy
/// of every pending command each interval and fell further behind with every one.
const MAX_RETRY_DOUBLINGS: u32 = 4;

struct ProposalWaiter {
    request: RequestId,
    payload: Bytes,
    deadline: Nanos,
    /// When it last went to the core; None: (re)propose at the next chance.
    proposed_at: Option<Nanos>,
    /// Timed retries so far: each waits twice as long as the one before (up to
    /// `MAX_RETRY_DOUBLINGS` doublings), so a slow commit is not buried under copies.
    retries: u32,
    /// `propose_at`: proposed once, for this slot, never again.
    target_slot: Option<Slot>,
}

#[derive(Clone, Copy)]
struct ReadWaiter {
    request: RequestId,
    deadline: Nanos,
}

/// Most rounds of self-addressed messages `take_ready` steps before it returns (each
/// round consumes what the previous one produced; a handful is the most seen).
const LOOPBACK_ROUNDS: usize = 64;

/// One replica. See the crate documentation.
pub struct Replica<S: StateMachine> {
    config: ReplicaConfig,
    node: Node,
    state_machine: S,
    sessions: Sessions,
    applied_slot: Slot,
    /// The time of the core's tick 0.
    epoch: Nanos,
    now: Nanos,
    last_maintenance: Nanos,

    next_seq: u64,
    proposals: BTreeMap<u64, ProposalWaiter>,
    next_read_id: u64,
    reads_awaiting_index: BTreeMap<u64, ReadWaiter>,
    reads_awaiting_apply: Vec<(Slot, ReadPath, ReadWaiter)>,
    reads_to_retry: Vec<(Nanos, ReadWaiter)>,

    /// `propose_at` proposals by the core's id, until the core assigns their slot.
    assignments: BTreeMap<synod_core::ProposalId, RequestId>,

    last_snapshot_slot: Slot,
    snapshot_in_progress: bool,
    /// The bytes of the slots applied since the last snapshot point: what the log holds
    /// beyond it (see `ReplicaConfig::snapshot_log_growth_percent`).
    log_bytes_since_snapshot: u64,
    /// The state's size (`StateMachine::size_hint`) at the last snapshot point.
    state_bytes_at_snapshot: u64,
    /// The slot count is reached but the log has not grown enough (counted once).
    snapshot_held_for_growth: bool,
    /// This member's snapshot thresholds, in thousandths of the configured ones: 1000 at
    /// the lowest member id, up to 1500 at the highest, so members applying the same log
    /// do not all write their snapshots out at the same moment.
    snapshot_spread_permille: u64,
    sending_snapshots: BTreeMap<NodeId, Nanos>,
    /// When the last stream to each peer was delivered whole (see `snapshot_resend_after`).
    delivered_snapshots: BTreeMap<NodeId, Nanos>,

    stats: ReplicaStats,
    out: ReplicaReady,
}

impl<S: StateMachine> Replica<S> {
    /// A replica restarted from what storage holds: the durable protocol state (the
    /// write-ahead log replayed) and the newest snapshot, if any (else `state_machine`,
    /// empty, is the start). `now` is the time of the core's tick 0.
    pub fn recover(
        config: ReplicaConfig,
        durable: DurableState,
        snapshot: Option<Restored<S>>,
        state_machine: S,
        now: Nanos,
    ) -> Result<Replica<S>, RecoverError> {
        config.validate().map_err(RecoverError::Config)?;
        let snapshot_slot = snapshot.as_ref().map_or(0, |restored| restored.slot);
        if durable.snapshot_slot > snapshot_slot {
            return Err(RecoverError::MissingSnapshot {
                log_snapshot_slot: durable.snapshot_slot,
                snapshot_slot,
            });
        }
        let mut node = Node::recover(config.core.clone(), durable).map_err(RecoverError::Config)?;
        let snapshot_spread_permille = snapshot_spread_permille(&config.core);
        let (state_machine, sessions) = match snapshot {
            Some(restored) => (restored.state_machine, restored.sessions),
            None => (state_machine, Sessions::default()),
        };
        let state_bytes_at_snapshot = state_machine.size_hint();
        if snapshot_slot > 0 {
            // The state machine already holds every slot up to the snapshot.
            node.install_snapshot(snapshot_slot);
        }
        Ok(Replica {
            config,
            node,
            state_machine,
            sessions,
            applied_slot: snapshot_slot,
            epoch: now,
            now,
            last_maintenance: now,
            next_seq: 1,
            proposals: BTreeMap::new(),
            next_read_id: 1,
            reads_awaiting_index: BTreeMap::new(),
            reads_awaiting_apply: Vec::new(),
            reads_to_retry: Vec::new(),
            assignments: BTreeMap::new(),
            last_snapshot_slot: snapshot_slot,
            snapshot_in_progress: false,
            log_bytes_since_snapshot: 0,
            state_bytes_at_snapshot,
            snapshot_held_for_growth: false,
            snapshot_spread_permille,
            sending_snapshots: BTreeMap::new(),
            delivered_snapshots: BTreeMap::new(),
            stats: ReplicaStats::default(),
            out: ReplicaReady::default(),
        })
    }

    /// This replica's node id.
    pub fn id(&self) -> NodeId {
        self.config.core.id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// The state machine, to serve the reads `take_ready` released.
    pub fn state_machine(&self) -> &S {
        &self.state_machine
    }

    /// The protocol core (read-only: for status pages, the Maelstrom log, tests).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Counts since start.
    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    /// Where the replica stands.
    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            node: self.node.status(),
            applied_slot: self.applied_slot,
            snapshot_slot: self.last_snapshot_slot,
            pending_proposals: self.proposals.len(),
            pending_reads: self.reads_awaiting_index.len()
                + self.reads_awaiting_apply.len()
                + self.reads_to_retry.len(),
        }
    }

    /// The ballot of this replica's leadership, if it is the leader and holds the leader
    /// lease at `now` (the clock is advanced first): the moment a lessor may acknowledge a
    /// keep-alive or decide an expiry (`synod_kv::Lessor`).
    pub fn leader_lease(&mut self, now: Nanos) -> Option<synod_core::Ballot> {
        self.advance(now);
        let status = self.node.status();
        (status.role == synod_core::Role::Leader && self.node.holds_leader_lease())
            .then_some(status.promised)
    }

    // ---- inputs ----

    /// Time passes: timeouts, heartbeats, retransmissions, deadlines, retries.
    pub fn tick(&mut self, now: Nanos) {
        self.advance(now);
    }

    /// A protocol message from a peer. Messages from non-members, to other nodes or with
    /// a forged ballot are refused and change nothing.
    pub fn step(&mut self, now: Nanos, envelope: Envelope) -> Result<(), StepError> {
        self.advance(now);
        self.node.step(envelope)
    }

    /// A client proposal: its outcome comes as a reply with `request`, once applied here
    /// (followers forward to the leader; through a failover it is proposed again until
    /// its deadline, and applied once).
    pub fn propose(&mut self, now: Nanos, request: RequestId, payload: Bytes) {
        self.advance(now);
        self.stats.proposals += 1;
        let limit = self.config.max_request_bytes;
        if payload.len() > limit {
            self.stats.proposals_failed += 1;
            let error = RequestError::TooLarge {
                bytes: payload.len(),
                limit,
            };
            self.out.replies.push((request, Err(error)));
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let waiter = ProposalWaiter {
            request,
            payload,
            deadline: now.saturating_add(self.config.request_timeout_nanos),
            proposed_at: None,
            retries: 0,
            target_slot: None,
        };
        self.proposals.insert(seq, waiter);
        self.submit(seq);
    }

    /// A proposal for a given slot (the seeds' `multi_paxos_propose`), served by the
    /// leader or while no leader is known: see `Node::propose_at`. It is proposed once
    /// (a retry could land in another slot); [`ReplicaEvent::Assigned`] tells the slot,
    /// and a reply comes when the command is applied, like any proposal's.
    pub fn propose_at(
        &mut self,
        now: Nanos,
        request: RequestId,
        slot: Slot,
        payload: Bytes,
    ) -> Result<(), ProposeError> {
        self.advance(now);
        let seq = self.next_seq;
        let proposal = Proposal {
            client: self.config.client_id,
            seq,
            completed_below: self.proposals.keys().next().copied().unwrap_or(seq),
            payload: payload.clone(),
        };
        let id = self.node.propose_at(slot, proposal.encode())?;
        self.next_seq += 1;
        self.stats.proposals += 1;
        self.assignments.insert(id, request);
        let waiter = ProposalWaiter {
            request,
            payload,
            deadline: now.saturating_add(self.config.request_timeout_nanos),
            proposed_at: Some(now),
            retries: 0,
            target_slot: Some(slot),
        };
        self.proposals.insert(seq, waiter);
        Ok(())
    }

    /// A read: released in a later `take_ready` once it may be served, or failed.
    pub fn read(&mut self, now: Nanos, request: RequestId, linearizable: bool) {
        self.advance(now);
        if !linearizable {
            self.stats.serializable_reads += 1;
            self.out.reads.push((request, Ok(ReadHow::Serializable)));
            return;
        }
        let waiter = ReadWaiter {
            request,
            deadline: now.saturating_add(self.config.request_timeout_nanos),
        };
        self.ask_read_index(waiter);
    }

    /// Hands the leadership to `target` (etcd's `MoveLeader`; see docs/leader-transfer.md).
    /// Refused at once unless this replica leads and `target` is a member; otherwise the
    /// outcome comes as `ReplicaEvent::Core(Event::TransferEnded { .. })`, within about
    /// an election timeout. `target` being this replica ends at once, completed.
    pub fn transfer_leadership(&mut self, now: Nanos, target: NodeId) -> Result<(), TransferError> {
        self.advance(now);
        self.node.transfer_leadership(target)
    }

    /// Storage made every persist request up to `id` durable.
    pub fn on_persisted(&mut self, now: Nanos, id: PersistId) {
        self.advance(now);
        self.node.on_persisted(id);
    }

    /// The snapshot of `slot` was saved durably (or not): compact the log through it.
    pub fn on_snapshot_saved(&mut self, now: Nanos, slot: Slot, result: Result<(), String>) {
        self.advance(now);
        self.snapshot_in_progress = false;
        // Even after a failure move on: retrying at once would spin.
        self.last_snapshot_slot = self.last_snapshot_slot.max(slot);
        match result {
            Ok(()) => {
                self.stats.snapshots_taken += 1;
                self.node.compact(slot);
                self.out.compact_log = Some(slot);
                self.out.events.push(ReplicaEvent::Compacted { slot });
            }
            Err(error) => self
                .out
                .events
                .push(ReplicaEvent::SnapshotFailed { slot, error }),
        }
    }

    /// A snapshot stream to `peer` ended: `delivered` whole to the transport, or failed.
    /// A delivered one is not sent again for `snapshot_resend_after`: the peer keeps
    /// asking for the slots until it has synced, verified, decoded and installed it, and
    /// answering each ask with a fresh stream made the copies collide.
    pub fn on_snapshot_sent(&mut self, now: Nanos, peer: NodeId, delivered: bool) {
        self.advance(now);
        self.sending_snapshots.remove(&peer);
        if delivered {
            self.delivered_snapshots.insert(peer, now);
        } else {
            self.delivered_snapshots.remove(&peer);
        }
    }

    /// A snapshot from `from` arrived, was saved durably and decoded. Installed if it
    /// is ahead of this replica. If the replica got there first meanwhile, the snapshot
    /// is not installed, but it is on disk now, the newest there: it becomes the one this
    /// replica sends to lagging peers (and compacts its log through).
    pub fn on_snapshot_received(&mut self, now: Nanos, from: NodeId, restored: Restored<S>) {
        self.advance(now);
        let slot = restored.slot;
        if slot <= self.applied_slot || slot <= self.node.status().commit_index {
            if slot > self.last_snapshot_slot {
                self.last_snapshot_slot = slot;
                let through = slot.min(self.applied_slot);
                self.node.compact(through);
                self.out.compact_log = Some(through);
            }
            return;
        }
        self.state_machine = restored.state_machine;
        self.sessions = restored.sessions;
        self.applied_slot = slot;
        self.log_bytes_since_snapshot = 0;
        self.state_bytes_at_snapshot = self.state_machine.size_hint();
        self.last_snapshot_slot = self.last_snapshot_slot.max(slot);
        self.node.install_snapshot(slot);
        self.out.compact_log = Some(slot);
        self.stats.snapshots_installed += 1;
        self.out
            .events
            .push(ReplicaEvent::SnapshotInstalled { from, slot });
        self.answer_from_sessions();
        self.serve_applied_reads();
    }

    /// The runtime is stopping (or its storage failed): every waiting request fails.
    pub fn shut_down(&mut self) {
        for (_, waiter) in std::mem::take(&mut self.proposals) {
            self.out
                .replies
                .push((waiter.request, Err(RequestError::Stopped)));
        }
        let reads: Vec<ReadWaiter> = std::mem::take(&mut self.reads_awaiting_index)
            .into_values()
            .chain(self.reads_awaiting_apply.drain(..).map(|(_, _, w)| w))
            .chain(self.reads_to_retry.drain(..).map(|(_, w)| w))
            .collect();
        for waiter in reads {
            self.out
                .reads
                .push((waiter.request, Err(RequestError::Stopped)));
        }
    }

    /// True when `take_ready` has something to hand out.
    pub fn has_ready(&self) -> bool {
        self.node.has_ready() || !self.out.is_empty()
    }

    /// Drains the outputs of every input since the last call (see [`ReplicaReady`]).
    pub fn take_ready(&mut self) -> ReplicaReady {
        let me = self.id();
        for _ in 0..LOOPBACK_ROUNDS {
            if !self.node.has_ready() {
                break;
            }
            let ready = self.node.take_ready();
            self.out.persist.extend(ready.persist);
            let mut loopback = Vec::new();
            for envelope in ready.messages {
                if envelope.to == me {
                    loopback.push(envelope);
                } else {
                    self.out.messages.push(envelope);
                }
            }
            self.apply(ready.committed);
            for event in ready.events {
                self.on_core_event(event);
            }
            for envelope in loopback {
                // A node's messages to itself: its own acceptor, its own learner.
                let _ = self.node.step(envelope);
            }
        }
        self.maybe_snapshot();
        std::mem::take(&mut self.out)
    }

    // ---- the clock ----

    /// The clock reads `now`: the core's logical clock catches up (in one step however
    /// long the stall), then deadlines and retries are looked at.
    fn advance(&mut self, now: Nanos) {
        if now > self.now {
            self.now = now;
        }
        let ticks = (self.now - self.epoch) / self.config.tick_nanos;
        self.node.advance_to(ticks);
        if self.now >= self.last_maintenance + self.config.maintenance_interval_nanos {
            self.last_maintenance = self.now;
            self.maintenance();
        }
    }

    /// Deadlines and retries: proposals without an outcome are proposed again, failed
    /// read-index requests asked again, and whatever passed its deadline fails.
    fn maintenance(&mut self) {
        let now = self.now;
        let timeout = RequestError::Timeout {
            after_ms: self.config.request_timeout_nanos / 1_000_000,
        };
        let expired: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, waiter)| now >= waiter.deadline)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(waiter) = self.proposals.remove(&seq) {
                self.stats.proposals_failed += 1;
                self.out
                    .replies
                    .push((waiter.request, Err(timeout.clone())));
            }
        }
        // In per-slot mode the core itself retries a proposal until its commands win a
        // slot: only submissions the queue refused are retried here.
        let retry_after = match self.config.core.mode {
            synod_core::Mode::MultiPaxos => self.config.retry_after_nanos,
            synod_core::Mode::PerSlot => Nanos::MAX,
        };
        let due: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, waiter)| {
                let wait = retry_after.saturating_mul(1 << waiter.retries.min(MAX_RETRY_DOUBLINGS));
                waiter.target_slot.is_none()
                    && waiter
                        .proposed_at
                        .is_none_or(|at| now >= at.saturating_add(wait))
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            let waiter = self.proposals.get_mut(&seq).expect("due proposal");
            if waiter.proposed_at.is_some() {
                waiter.retries += 1;
                self.stats.proposal_retries += 1;
            }
            self.submit(seq);
        }
        self.read_maintenance(timeout);
    }

    fn read_maintenance(&mut self, timeout: RequestError) {
        let now = self.now;
        let expired: Vec<u64> = self
            .reads_awaiting_index
            .iter()
            .filter(|(_, waiter)| now >= waiter.deadline)
            .map(|(id, _)| *id)
            .collect();
        let mut failed: Vec<ReadWaiter> = expired
            .into_iter()
            .filter_map(|id| self.reads_awaiting_index.remove(&id))
            .collect();
        let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_awaiting_apply)
            .into_iter()
            .partition(|(_, _, waiter)| now >= waiter.deadline);
        self.reads_awaiting_apply = waiting;
        failed.extend(late.into_iter().map(|(_, _, waiter)| waiter));
        for (retry_at, waiter) in std::mem::take(&mut self.reads_to_retry) {
            if now >= waiter.deadline {
                failed.push(waiter);
            } else if now >= retry_at {
                self.ask_read_index(waiter);
            } else {
                self.reads_to_retry.push((retry_at, waiter));
            }
        }
        for waiter in failed {
            self.stats.reads_failed += 1;
            self.out.reads.push((waiter.request, Err(timeout.clone())));
        }
    }

    // ---- proposals and apply ----

    /// Hands proposal `seq` to the core (again, after a retry).
    fn submit(&mut self, seq: u64) {
        let completed_below = self.proposals.keys().next().copied().unwrap_or(seq);
        let now = self.now;
        let Some(waiter) = self.proposals.get_mut(&seq) else {
            return;
        };
        let proposal = Proposal {
            client: self.config.client_id,
            seq,
            completed_below,
            payload: waiter.payload.clone(),
        };
        // Refused (queue full): try again at the next maintenance pass.
        waiter.proposed_at = self.node.propose(proposal.encode()).ok().map(|_| now);
    }

    fn apply(&mut self, committed: Vec<Committed>) {
        if committed.is_empty() {
            return;
        }
        for Committed { slot, value } in committed {
            if slot <= self.applied_slot {
                continue;
            }
            for command in value.commands() {
                self.apply_command(slot, command);
            }
            self.applied_slot = slot;
            self.log_bytes_since_snapshot += value.size_bytes() as u64;
            self.stats.slots_applied += 1;
            if self.config.observe_applied {
                self.out.applied.push(Committed { slot, value });
            }
        }
        self.serve_applied_reads();
    }

    fn apply_command(&mut self, slot: Slot, command: &Bytes) {
        let proposal = match Proposal::decode(command) {
            Ok(proposal) => proposal,
            Err(error) => {
                self.out
                    .events
                    .push(ReplicaEvent::UndecodableCommand { slot, error });
                return;
            }
        };
        let response = match self.sessions.check(&proposal, slot) {
            Outcome::Apply => {
                let response = self.state_machine.apply(slot, &proposal.payload);
                self.sessions
                    .record(proposal.client, proposal.seq, response.clone());
                self.stats.commands_applied += 1;
                Some(response)
            }
            Outcome::Duplicate(response) => Some(response),
            Outcome::Stale => None,
        };
        if proposal.client == self.config.client_id {
            if let (Some(response), Some(waiter)) = (response, self.proposals.remove(&proposal.seq))
            {
                self.out.replies.push((waiter.request, Ok(response)));
            }
        }
    }

    /// After a snapshot replaced the state: proposals of ours that it applied are
    /// answered from the sessions it carries.
    fn answer_from_sessions(&mut self) {
        let client = self.config.client_id;
        let answered: Vec<(u64, Bytes)> = self
            .proposals
            .keys()
            .filter_map(|seq| {
                self.sessions
                    .response(client, *seq)
                    .map(|response| (*seq, response))
            })
            .collect();
        for (seq, response) in answered {
            if let Some(waiter) = self.proposals.remove(&seq) {
                self.out.replies.push((waiter.request, Ok(response)));
            }
        }
    }

    // ---- reads ----

    fn ask_read_index(&mut self, waiter: ReadWaiter) {
        let id = self.next_read_id;
        self.next_read_id += 1;
        self.reads_awaiting_index.insert(id, waiter);
        self.node.read_index(id);
    }

    fn serve_applied_reads(&mut self) {
        if self.reads_awaiting_apply.is_empty() {
            return;
        }
        let applied = self.applied_slot;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_awaiting_apply)
            .into_iter()
            .partition(|(read_index, _, _)| *read_index <= applied);
        self.reads_awaiting_apply = waiting;
        for (_, path, waiter) in ready {
            match path {
                ReadPath::Lease => self.stats.lease_reads += 1,
                ReadPath::QuorumRound => self.stats.read_index_reads += 1,
                ReadPath::Forwarded => self.stats.follower_reads += 1,
            }
            self.out
                .reads
                .push((waiter.request, Ok(ReadHow::Linearizable(path))));
        }
    }

    // ---- events and snapshots ----

    fn on_core_event(&mut self, event: Event) {
        match event {
            Event::ReadReady {
                request,
                read_index,
                path,
            } => {
                if let Some(waiter) = self.reads_awaiting_index.remove(&request) {
                    self.reads_awaiting_apply.push((read_index, path, waiter));
                    self.serve_applied_reads();
                }
            }
            Event::ReadFailed { request } => {
                if let Some(waiter) = self.reads_awaiting_index.remove(&request) {
                    let retry_at = self.now + self.config.read_retry_nanos;
                    self.reads_to_retry.push((retry_at, waiter));
                }
            }
            Event::SnapshotNeeded { peer, slot } => self.send_snapshot(peer, slot),
            Event::ProposalAssigned {
                id,
                slot,
                phase1_skipped,
            } => {
                if let Some(request) = self.assignments.remove(&id) {
                    self.out.events.push(ReplicaEvent::Assigned {
                        request,
                        slot,
                        phase1_skipped,
                    });
                }
            }
            Event::LeaderChanged { leader } => {
                self.stats.leader_changes += 1;
                if leader.is_some() {
                    // Commands forwarded to a leader that is gone may be lost: propose
                    // every unanswered one again (sessions make copies harmless).
                    let again: Vec<u64> = self
                        .proposals
                        .iter()
                        .filter(|(_, waiter)| waiter.target_slot.is_none())
                        .map(|(seq, _)| *seq)
                        .collect();
                    for seq in again {
                        self.submit(seq);
                    }
                }
                self.out.events.push(ReplicaEvent::Core(event));
            }
            Event::TransferEnded { target, outcome } => {
                match outcome {
                    // Moving to itself is no transfer.
                    TransferOutcome::Completed if target != self.id() => {
                        self.stats.leader_transfers += 1
                    }
                    TransferOutcome::Completed => {}
                    TransferOutcome::TimedOut => self.stats.leader_transfer_timeouts += 1,
                }
                self.out.events.push(ReplicaEvent::Core(event));
            }
            other => self.out.events.push(ReplicaEvent::Core(other)),
        }
    }

    fn send_snapshot(&mut self, peer: NodeId, needed: Slot) {
        let now = self.now;
        let timeout = self.config.snapshot_send_timeout_nanos;
        if self
            .sending_snapshots
            .get(&peer)
            .is_some_and(|since| now < since + timeout)
        {
            return;
        }
        let resend_after = self.config.snapshot_resend_after_nanos;
        if self
            .delivered_snapshots
            .get(&peer)
            .is_some_and(|at| now < at.saturating_add(resend_after))
        {
            self.stats.snapshot_resends_held += 1;
            return;
        }
        let have = self.last_snapshot_slot;
        if have < needed || have == 0 {
            self.out
                .events
                .push(ReplicaEvent::SnapshotUnavailable { peer, needed, have });
            return;
        }
        self.sending_snapshots.insert(peer, now);
        self.stats.snapshots_sent += 1;
        self.out.send_snapshots.push((peer, have));
    }

    /// Every `snapshot_interval_slots` applied slots, once the log since the last
    /// snapshot has also grown by `snapshot_log_growth_percent` of the state's size then
    /// (both scaled by this member's spread): freeze the state now (cheap), have the runtime
    /// encode and save it elsewhere, compact when it reports back.
    fn maybe_snapshot(&mut self) {
        let interval = self.config.snapshot_interval_slots;
        if interval == 0 || self.snapshot_in_progress {
            return;
        }
        let spread = self.snapshot_spread_permille;
        let due = self.last_snapshot_slot + interval.saturating_mul(spread) / 1000;
        if self.applied_slot < due {
            return;
        }
        let growth = self.config.snapshot_log_growth_percent;
        if growth > 0 {
            let needed =
                u128::from(self.state_bytes_at_snapshot) * u128::from(growth) * u128::from(spread)
                    / 100_000;
            if u128::from(self.log_bytes_since_snapshot) < needed {
                if !self.snapshot_held_for_growth {
                    self.snapshot_held_for_growth = true;
                    self.stats.snapshots_held_for_log_growth += 1;
                }
                return;
            }
        }
        self.snapshot_held_for_growth = false;
        self.log_bytes_since_snapshot = 0;
        self.state_bytes_at_snapshot = self.state_machine.size_hint();
        let slot = self.applied_slot;
        let frozen = self.state_machine.snapshot_job();
        let sessions = self.sessions.clone();
        self.snapshot_in_progress = true;
        self.out.save_snapshot = Some(SnapshotToSave {
            slot,
            encode: Box::new(move || RuntimeImage::new(slot, &sessions, frozen()).encode()),
        });
    }
}

/// A member's snapshot thresholds in thousandths of the configured ones, by its place
/// among the member ids: 1000 for the lowest, 1000 + 500 × rank / members above it.
fn snapshot_spread_permille(core: &synod_core::Config) -> u64 {
    let members = core.nodes.len().max(1) as u64;
    let rank = core.nodes.iter().filter(|&&node| node < core.id).count() as u64;
    1000 + 500 * rank / members
}
