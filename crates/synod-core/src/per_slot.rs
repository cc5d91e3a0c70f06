//! Per-slot Paxos: the seeds' total-order broadcast. Every slot is its own
//! single-decree Paxos instance — its own promised ballot, full Phase 1 and Phase 2 —
//! and any node proposes. Kept beside Multi-Paxos so the two are measured side by side.
//!
//! A node proposes its queued commands in the lowest slot it does not know decided. If
//! Phase 1 reveals a value accepted at a higher ballot it must adopt it, and its own
//! commands go back to the queue for a later slot. Decisions ride on the next message to
//! each peer (`decided` marks), or on a `SlotDecided` when nothing else is going out.

use crate::ballot::{Ballot, NodeId, Slot, Tick};
use crate::config::Backoff;
use crate::log::Change;
use crate::message::{Decided, Message, Value};
use crate::node::{Node, Pending};
use crate::persist::PersistOp;
use crate::ready::Event;
use std::collections::BTreeMap;

/// The backoff window of a repeatedly rejected proposal stops doubling here.
const MAX_BACKOFF_DOUBLINGS: u32 = 4;

/// Silent links hear our commit point every this many election timeouts.
const ANTI_ENTROPY_TIMEOUTS: u64 = 5;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Phase {
    Preparing {
        promises: BTreeMap<NodeId, Option<(Ballot, Value)>>,
    },
    Accepting {
        value: Value,
        votes: Vec<NodeId>,
    },
    /// Turned down by a higher ballot; try again at `retry_at`.
    BackingOff {
        retry_at: Tick,
    },
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct SlotProposal {
    ballot: Ballot,
    phase: Phase,
    /// This node's commands riding in the proposal (empty for a hole-filling no-op).
    own: Vec<Pending>,
    sent_at: Tick,
    /// Times this proposal was turned down: the backoff window doubles with each.
    rejections: u32,
}

impl SlotProposal {
    fn own_value(&self) -> Value {
        if self.own.is_empty() {
            Value::Noop
        } else {
            Value::Commands(
                self.own
                    .iter()
                    .map(|pending| pending.command.clone())
                    .collect(),
            )
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub(crate) struct PerSlot {
    /// The acceptor's promise, per slot.
    promised: BTreeMap<Slot, Ballot>,
    proposals: BTreeMap<Slot, SlotProposal>,
    /// Decisions not yet told to each peer, and since when.
    decided_out: BTreeMap<NodeId, (Tick, Vec<Decided>)>,
    /// Since when the slot after the commit point has been a known gap.
    gap_since: Option<Tick>,
    /// Who last told us of a decision (where to catch up from).
    decided_source: Option<NodeId>,
    /// When a message last went to each peer: silent links get an anti-entropy mark.
    last_sent: BTreeMap<NodeId, Tick>,
}

impl PerSlot {
    pub(crate) fn recover(promised: BTreeMap<Slot, Ballot>) -> PerSlot {
        PerSlot {
            promised,
            ..PerSlot::default()
        }
    }

    pub(crate) fn inflight(&self) -> usize {
        self.proposals.len()
    }
}

impl Node {
    fn slot_promised(&self, slot: Slot) -> Ballot {
        self.per_slot
            .promised
            .get(&slot)
            .copied()
            .unwrap_or_default()
    }

    fn take_decided(&mut self, peer: NodeId) -> Vec<Decided> {
        if peer == self.config.id {
            return Vec::new();
        }
        self.per_slot
            .decided_out
            .remove(&peer)
            .map(|(_, decided)| decided)
            .unwrap_or_default()
    }

    fn send_slot(
        &mut self,
        to: NodeId,
        message: impl FnOnce(Vec<Decided>) -> Message,
        after_persist: bool,
    ) {
        let decided = self.take_decided(to);
        let message = message(decided);
        self.per_slot.last_sent.insert(to, self.now);
        if after_persist {
            self.send_after_persist(to, message);
        } else {
            self.send(to, message);
        }
    }

    /// The lowest slot above the commit point that is neither known chosen nor already
    /// being proposed by this node.
    fn next_free_slot(&self) -> Slot {
        let mut slot = self.log.commit_index() + 1;
        while self.log.is_chosen(slot) || self.per_slot.proposals.contains_key(&slot) {
            slot += 1;
        }
        slot
    }

    /// Cuts queued commands into per-slot proposals (called from `take_ready`).
    pub(crate) fn flush_per_slot(&mut self) {
        while !self.pending.is_empty()
            && self.per_slot.proposals.len() < self.config.max_inflight_slots
        {
            let mut own: Vec<Pending> = Vec::new();
            let mut bytes = 0;
            while let Some(front) = self.pending.front() {
                let fits = own.is_empty()
                    || (own.len() < self.config.max_batch_commands
                        && bytes + front.command.len() <= self.config.max_batch_bytes);
                if !fits {
                    break;
                }
                bytes += front.command.len();
                own.extend(self.pop_pending());
            }
            let slot = self.next_free_slot();
            self.start_slot_proposal(slot, own);
        }
    }

    /// Makes `ballot` this node's own promise for `slot`, durably, before any Prepare
    /// for it leaves (see `send_prepares`): a proposer that crashed with the ballot
    /// unsynced would pick it again after restarting and could get two values chosen in
    /// one ballot.
    fn promise_own_ballot(&mut self, slot: Slot, ballot: Ballot) {
        if ballot > self.slot_promised(slot) {
            self.per_slot.promised.insert(slot, ballot);
            self.highest_seen = self.highest_seen.max(ballot);
            self.persist(PersistOp::SlotPromise { slot, ballot });
        }
    }

    /// Phase 1a for `slot` to every acceptor, once our own promise of `ballot` is durable.
    fn send_prepares(&mut self, slot: Slot, ballot: Ballot) {
        self.promise_own_ballot(slot, ballot);
        for node in self.config.nodes.clone() {
            self.send_slot(
                node,
                |decided| Message::SlotPrepare {
                    slot,
                    ballot,
                    decided,
                },
                true,
            );
        }
    }

    /// A slot compacted into our snapshot is chosen and its value gone: neither a
    /// promise nor a vote for it, only word that it is decided (the proposer fetches it).
    fn answer_compacted_slot(&mut self, from: NodeId, slot: Slot) {
        self.send_slot(
            from,
            |mut decided| {
                decided.push(Decided {
                    slot,
                    ballot: Ballot::ZERO,
                });
                Message::SlotDecided { decided }
            },
            false,
        );
    }

    fn start_slot_proposal(&mut self, slot: Slot, own: Vec<Pending>) {
        let ballot = self
            .slot_promised(slot)
            .max(self.highest_seen_round_floor())
            .next_for(self.config.id);
        self.per_slot.proposals.insert(
            slot,
            SlotProposal {
                ballot,
                phase: Phase::Preparing {
                    promises: BTreeMap::new(),
                },
                own,
                sent_at: self.now,
                rejections: 0,
            },
        );
        self.phase1_runs += 1;
        self.send_prepares(slot, ballot);
    }

    /// Per-slot ballots start at round 1 (the seeds start every slot at round 0).
    fn highest_seen_round_floor(&self) -> Ballot {
        Ballot::ZERO
    }

    pub(crate) fn on_slot_prepare(&mut self, from: NodeId, slot: Slot, ballot: Ballot) {
        if slot <= self.log.compacted_through() {
            self.answer_compacted_slot(from, slot);
            return;
        }
        let promised = self.slot_promised(slot);
        if ballot <= promised && !(ballot == promised && from == ballot.node) {
            self.send_slot(
                from,
                |decided| Message::SlotRejected {
                    slot,
                    ballot,
                    promised,
                    decided,
                },
                false,
            );
            return;
        }
        if ballot > promised {
            self.per_slot.promised.insert(slot, ballot);
            self.persist(PersistOp::SlotPromise { slot, ballot });
        }
        let accepted = self
            .log
            .get(slot)
            .map(|entry| (entry.ballot, entry.value.clone()));
        // If we know the slot is decided, say so: the proposer can stop early.
        if let Some(entry) = self.log.get(slot).filter(|entry| entry.chosen) {
            if from != self.config.id {
                let mark = Decided {
                    slot,
                    ballot: entry.ballot,
                };
                self.queue_decided_for(from, mark);
            }
        }
        self.send_slot(
            from,
            |decided| Message::SlotPromise {
                slot,
                ballot,
                accepted,
                decided,
            },
            true,
        );
    }

    pub(crate) fn on_slot_promise(
        &mut self,
        from: NodeId,
        slot: Slot,
        ballot: Ballot,
        accepted: Option<(Ballot, Value)>,
    ) {
        let quorum = self.config.quorum();
        let Some(proposal) = self.per_slot.proposals.get_mut(&slot) else {
            return;
        };
        if proposal.ballot != ballot {
            return;
        }
        let Phase::Preparing { promises } = &mut proposal.phase else {
            return;
        };
        promises.insert(from, accepted);
        if promises.len() < quorum {
            return;
        }
        // The Paxos rule: adopt the value accepted at the highest ballot, if any.
        let adopted = promises
            .values()
            .flatten()
            .max_by_key(|(ballot, _)| *ballot)
            .map(|(_, value)| value.clone());
        let own_value = proposal.own_value();
        let value = match adopted {
            Some(value) if value != own_value => {
                // Our commands lost this slot: back to the front of the queue.
                let own = std::mem::take(&mut proposal.own);
                for pending in own.into_iter().rev() {
                    self.push_pending_front(pending);
                }
                value
            }
            _ => own_value,
        };
        let proposal = self.per_slot.proposals.get_mut(&slot).expect("present");
        proposal.phase = Phase::Accepting {
            value: value.clone(),
            votes: Vec::new(),
        };
        proposal.sent_at = self.now;
        let ids: Vec<u64> = proposal
            .own
            .iter()
            .filter_map(|pending| pending.id)
            .collect();
        for id in ids {
            self.event(Event::ProposalAssigned {
                id,
                slot,
                phase1_skipped: false,
            });
        }
        for node in self.config.nodes.clone() {
            let value = value.clone();
            self.send_slot(
                node,
                |decided| Message::SlotAccept {
                    slot,
                    ballot,
                    value,
                    decided,
                },
                false,
            );
        }
    }

    pub(crate) fn on_slot_accept(
        &mut self,
        from: NodeId,
        slot: Slot,
        ballot: Ballot,
        value: Value,
    ) {
        if slot <= self.log.compacted_through() {
            self.answer_compacted_slot(from, slot);
            return;
        }
        let promised = self.slot_promised(slot);
        if ballot < promised {
            self.send_slot(
                from,
                |decided| Message::SlotRejected {
                    slot,
                    ballot,
                    promised,
                    decided,
                },
                false,
            );
            return;
        }
        if ballot > promised {
            self.per_slot.promised.insert(slot, ballot);
            self.persist(PersistOp::SlotPromise { slot, ballot });
        }
        let change = self.log.accept(slot, ballot, value);
        if let Change::AlreadyChosen { chosen_ballot } = change {
            // A stale proposer: no vote; tell it the slot is decided (it fetches the value).
            self.send_slot(
                from,
                |mut decided| {
                    decided.push(Decided {
                        slot,
                        ballot: chosen_ballot,
                    });
                    Message::SlotDecided { decided }
                },
                false,
            );
            return;
        }
        self.persist_change(change);
        self.send_slot(
            from,
            |decided| Message::SlotAccepted {
                slot,
                ballot,
                decided,
            },
            true,
        );
    }

    pub(crate) fn on_slot_accepted(&mut self, from: NodeId, slot: Slot, ballot: Ballot) {
        let quorum = self.config.quorum();
        let Some(proposal) = self.per_slot.proposals.get_mut(&slot) else {
            return;
        };
        if proposal.ballot != ballot {
            return;
        }
        let Phase::Accepting { value, votes } = &mut proposal.phase else {
            return;
        };
        if !votes.contains(&from) {
            votes.push(from);
        }
        if votes.len() < quorum {
            return;
        }
        let value = value.clone();
        let change = self.log.choose(slot, ballot, value);
        self.persist_change(change);
        self.log.advance_commit();
        for peer in self.peers().collect::<Vec<_>>() {
            self.queue_decided_for(peer, Decided { slot, ballot });
        }
        self.resolve_decided_proposals();
    }

    pub(crate) fn on_slot_rejected(&mut self, slot: Slot, ballot: Ballot, promised: Ballot) {
        self.highest_seen = self.highest_seen.max(promised);
        let now = self.now;
        let Some(proposal) = self.per_slot.proposals.get(&slot) else {
            return;
        };
        if proposal.ballot != ballot || matches!(proposal.phase, Phase::BackingOff { .. }) {
            return;
        }
        // Exponential backoff: a window of an election timeout, doubling with every
        // rejection (up to 2^MAX_BACKOFF_DOUBLINGS), so any number of dueling proposers
        // end up far enough apart for one to finish both phases.
        let window =
            self.config.election_timeout_ticks << proposal.rejections.min(MAX_BACKOFF_DOUBLINGS);
        let backoff = match self.config.backoff {
            Backoff::Randomized => self.rng.between(1, window + 1),
            Backoff::Disabled => 0,
        };
        let proposal = self.per_slot.proposals.get_mut(&slot).expect("present");
        proposal.rejections += 1;
        // Remember the higher ballot so the retry goes above it.
        proposal.ballot = Ballot::new(promised.round, proposal.ballot.node);
        proposal.phase = Phase::BackingOff {
            retry_at: now + backoff,
        };
        if backoff == 0 {
            self.retry_slot(slot);
        }
    }

    fn retry_slot(&mut self, slot: Slot) {
        let me = self.config.id;
        let floor = self.slot_promised(slot);
        let Some(proposal) = self.per_slot.proposals.get_mut(&slot) else {
            return;
        };
        let ballot = proposal.ballot.max(floor).next_for(me);
        proposal.ballot = ballot;
        proposal.phase = Phase::Preparing {
            promises: BTreeMap::new(),
        };
        proposal.sent_at = self.now;
        self.phase1_runs += 1;
        self.send_prepares(slot, ballot);
    }

    fn queue_decided_for(&mut self, peer: NodeId, mark: Decided) {
        let now = self.now;
        let (_, marks) = self
            .per_slot
            .decided_out
            .entry(peer)
            .or_insert((now, Vec::new()));
        if !marks.contains(&mark) {
            marks.push(mark);
        }
    }

    /// Decision marks from a peer: what we accepted at that very ballot is the chosen
    /// value; anything else we fetch.
    pub(crate) fn on_decided(&mut self, from: NodeId, decided: &[Decided]) {
        if decided.is_empty() {
            return;
        }
        for mark in decided {
            match self.log.get(mark.slot) {
                Some(entry) if entry.ballot == mark.ballot => {
                    let value = entry.value.clone();
                    let change = self.log.choose(mark.slot, mark.ballot, value);
                    self.persist_change(change);
                }
                _ => self.log.note_chosen_elsewhere(mark.slot),
            }
        }
        self.log.advance_commit();
        self.per_slot.decided_source = Some(from);
        self.resolve_decided_proposals();
        self.maybe_catch_up(from);
    }

    /// Proposals whose slot is now known chosen end: our commands are done if the chosen
    /// value is ours, and go back to the queue otherwise.
    pub(crate) fn resolve_decided_proposals(&mut self) {
        let decided: Vec<Slot> = self
            .per_slot
            .proposals
            .keys()
            .copied()
            .filter(|slot| {
                self.log.get(*slot).is_some_and(|entry| entry.chosen)
                    || *slot <= self.log.commit_index()
            })
            .collect();
        for slot in decided {
            let proposal = self.per_slot.proposals.remove(&slot).expect("present");
            let chosen = self.log.get(slot).map(|entry| entry.value.clone());
            if chosen.as_ref() != Some(&proposal.own_value()) {
                for pending in proposal.own.into_iter().rev() {
                    if self.pending.len() < self.config.max_pending_commands {
                        self.push_pending_front(pending);
                    }
                }
            }
        }
    }

    pub(crate) fn tick_per_slot(&mut self) {
        let now = self.now;
        // Late decisions: flush marks that found nothing to ride on.
        let due: Vec<NodeId> = self
            .per_slot
            .decided_out
            .iter()
            .filter(|(_, (since, _))| now >= since + self.config.heartbeat_interval_ticks)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            let decided = self.take_decided(peer);
            self.per_slot.last_sent.insert(peer, now);
            self.send(peer, Message::SlotDecided { decided });
        }
        // Anti-entropy: a decision mark is sent once and may be lost. A peer we have not
        // sent anything to for a while (ANTI_ENTROPY_TIMEOUTS election timeouts) hears our
        // commit point again, so a replica that missed the last decisions of a quiet
        // cluster still catches up. Rare, so it costs little next to the protocol's own
        // 4(N−1) messages per slot.
        let commit = self.log.commit_index();
        if commit > 0 {
            // A commit point compacted into the snapshot has no ballot to tell: the
            // mark says "decided" all the same, and the peer fetches what it lacks.
            let mark = Decided {
                slot: commit,
                ballot: self
                    .log
                    .get(commit)
                    .map_or(Ballot::ZERO, |entry| entry.ballot),
            };
            let silent: Vec<NodeId> = self
                .peers()
                .filter(|peer| {
                    let last = self.per_slot.last_sent.get(peer).copied().unwrap_or(0);
                    now >= last + ANTI_ENTROPY_TIMEOUTS * self.config.election_timeout_ticks
                })
                .collect();
            for peer in silent {
                self.per_slot.last_sent.insert(peer, now);
                self.send(
                    peer,
                    Message::SlotDecided {
                        decided: vec![mark],
                    },
                );
            }
        }
        // Retries after backoff, and retransmission of unanswered phases.
        let retransmit = self.config.retransmit_ticks;
        let mut retries = Vec::new();
        let mut resends = Vec::new();
        for (slot, proposal) in &mut self.per_slot.proposals {
            match &proposal.phase {
                Phase::BackingOff { retry_at } if now >= *retry_at => retries.push(*slot),
                Phase::BackingOff { .. } => {}
                Phase::Preparing { promises } if now >= proposal.sent_at + retransmit => {
                    proposal.sent_at = now;
                    let missing: Vec<NodeId> = self
                        .config
                        .nodes
                        .iter()
                        .copied()
                        .filter(|node| !promises.contains_key(node))
                        .collect();
                    resends.push((*slot, proposal.ballot, None, missing));
                }
                Phase::Accepting { value, votes } if now >= proposal.sent_at + retransmit => {
                    proposal.sent_at = now;
                    let missing: Vec<NodeId> = self
                        .config
                        .nodes
                        .iter()
                        .copied()
                        .filter(|node| !votes.contains(node))
                        .collect();
                    resends.push((*slot, proposal.ballot, Some(value.clone()), missing));
                }
                _ => {}
            }
        }
        for slot in retries {
            self.retry_slot(slot);
        }
        for (slot, ballot, value, missing) in resends {
            for node in missing {
                match &value {
                    // After persist: the first send may still wait for our own promise.
                    None => self.send_slot(
                        node,
                        |decided| Message::SlotPrepare {
                            slot,
                            ballot,
                            decided,
                        },
                        true,
                    ),
                    Some(value) => {
                        let value = value.clone();
                        self.send_slot(
                            node,
                            |decided| Message::SlotAccept {
                                slot,
                                ballot,
                                value,
                                decided,
                            },
                            false,
                        )
                    }
                }
            }
        }
        // A known gap below decided slots that nobody fills, or a value accepted here
        // whose fate nobody settles (its decision marks were lost with the node that
        // knew it, and nothing new is proposed after it): fetch, and after an election
        // timeout propose a no-op there — Phase 1 adopts any accepted value, so the slot
        // ends up decided either way.
        let gap = self.log.highest_known_chosen() > self.log.commit_index()
            || self.log.last_slot() > self.log.commit_index();
        if !gap {
            self.per_slot.gap_since = None;
            return;
        }
        if let Some(source) = self.per_slot.decided_source {
            self.maybe_catch_up(source);
        }
        let since = *self.per_slot.gap_since.get_or_insert(now);
        let hole = self.log.commit_index() + 1;
        if now >= since + self.config.election_timeout_ticks
            && !self.per_slot.proposals.contains_key(&hole)
        {
            self.per_slot.gap_since = Some(now);
            self.start_slot_proposal(hole, Vec::new());
        }
    }
}
