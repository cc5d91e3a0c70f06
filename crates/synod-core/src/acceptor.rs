//! The acceptor (Multi-Paxos): one promised ballot for the whole log, an accepted
//! (ballot, value) per slot, and the leader lease. Also the learner's inputs that come
//! from the leader: the commit point riding on Accept and Heartbeat, and catch-up.
//!
//! Promise and Accepted replies go through `send_after_persist`: they leave only once
//! the state they vouch for is durable.

use crate::ballot::{Ballot, NodeId, Slot, Tick};
use crate::log::Change;
use crate::message::{Entry, Message, Value};
use crate::mutant::mutant;
use crate::node::{Node, RoleState};

/// The lease holder a restarted acceptor pretends to have: it may have granted a lease
/// before the crash and must not promise anyone until that lease would have expired.
pub(crate) const RESTART_QUIET: NodeId = 0;

impl Node {
    /// True while this node heard a live leader other than `candidate` recently enough
    /// that it must not promise anyone else (the leader lease).
    pub(crate) fn lease_blocks(&self, candidate: NodeId) -> bool {
        if candidate != self.config.id && self.leading() {
            // A live leader does not vote its own lease away.
            return true;
        }
        match self.lease {
            Some((leader, expiry)) => leader != candidate && self.now < expiry,
            None => false,
        }
    }

    /// This node leads: as the leader, or as a leader refreshing its ballot (a Phase 1
    /// run in the candidate role while it stays the leader its followers know; a second
    /// try, or a higher ballot, ends that).
    fn leading(&self) -> bool {
        matches!(self.role, RoleState::Leader(_)) || self.leader == Some(self.config.id)
    }

    /// Who the lease (or our own leadership) protects, for a `Preempted` hint.
    fn lease_holder(&self) -> Option<NodeId> {
        if self.leading() {
            return Some(self.config.id);
        }
        self.lease
            .map(|(leader, _)| leader)
            .filter(|leader| *leader != RESTART_QUIET)
    }

    /// Phase 1b. `transfer_from`: the leadership that handed the candidacy over (see
    /// [`Node::lease_released_by`]).
    pub(crate) fn on_prepare(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        from_slot: Slot,
        transfer_from: Option<Ballot>,
    ) {
        self.highest_seen = self.highest_seen.max(ballot);
        let lease_blocks = self.lease_blocks(from) && !self.lease_released_by(transfer_from);
        if ballot < self.promised || (ballot > self.promised && lease_blocks) {
            let leader = if lease_blocks {
                self.lease_holder()
            } else {
                self.leader
            };
            self.send(
                from,
                Message::Preempted {
                    ballot,
                    promised: self.promised,
                    leader,
                },
            );
            return;
        }
        if ballot > self.promised {
            self.raise_promise(ballot);
            if from != self.config.id {
                // Give the candidate time to win before competing with it, and do not
                // encourage anyone else to compete with it either (pre-vote). The leader
                // refreshing its ballot stays the leader.
                if self.leader != Some(from) {
                    self.set_leader(None);
                }
                self.pre_vote = None;
                self.backing = Some((from, self.now + self.config.election_timeout_ticks));
                self.reset_election_timer();
            }
        }
        let commit_index = self.log.commit_index();
        // Too many entries for one message: the promise goes out in chunks.
        let chunks = self
            .log
            .entry_chunks(from_slot.max(1), self.config.max_message_bytes);
        for (first_slot, last_slot, entries) in chunks {
            self.send_after_persist(
                from,
                Message::Promise {
                    ballot,
                    from_slot,
                    first_slot,
                    last_slot,
                    entries,
                    commit_index,
                },
            );
        }
    }

    /// A message from the leader of `ballot`: renew its lease and our election timer.
    /// Returns false (after telling the sender) when `ballot` is below our promise.
    fn hear_leader(&mut self, from: NodeId, ballot: Ballot) -> bool {
        self.highest_seen = self.highest_seen.max(ballot);
        if ballot < self.promised {
            self.send(
                from,
                Message::Preempted {
                    ballot,
                    promised: self.promised,
                    leader: self.leader,
                },
            );
            return false;
        }
        // Accepting at a ballot implies promising it.
        self.raise_promise(ballot);
        if from != self.config.id {
            // A live leader: no election to prepare.
            self.pre_vote = None;
            self.set_leader(Some(from));
            self.lease = Some((from, self.now + self.config.lease_ticks));
            self.reset_election_timer_after_leader();
        }
        true
    }

    /// Phase 2b, for a run of consecutive slots.
    pub(crate) fn on_accept(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        values: Vec<Value>,
        commit_index: Slot,
        sent_at: Tick,
    ) {
        let below_promise_accepted = mutant!(self, SkipPromiseCheck) && ballot < self.promised;
        if values.is_empty()
            || first_slot == 0
            || !(below_promise_accepted || self.hear_leader(from, ballot))
        {
            return;
        }
        let last_slot = first_slot + values.len() as u64 - 1;
        let mut stale = None;
        // Slots compacted into our snapshot are chosen and their values gone: no vote
        // for them (compaction is a prefix, so the vote covers the rest of the run).
        let mut vote_from = first_slot;
        for (offset, value) in values.into_iter().enumerate() {
            let slot = first_slot + offset as u64;
            match self.log.accept(slot, ballot, value) {
                Change::AlreadyChosen { chosen_ballot } => {
                    stale = stale.max(Some(chosen_ballot));
                }
                Change::Compacted => vote_from = slot + 1,
                change => self.persist_change(change),
            }
        }
        if let Some(chosen_ballot) = stale {
            // We hold a slot chosen at a higher ballot than this leader's: it is stale.
            // No vote for the run; tell it a higher ballot exists.
            self.send(
                from,
                Message::Preempted {
                    ballot,
                    promised: chosen_ballot.max(self.promised),
                    leader: self.leader,
                },
            );
            return;
        }
        if vote_from > last_slot {
            // Nothing to vote for: say where our log stands, so the leader fetches.
            self.send_after_persist(
                from,
                Message::HeartbeatAck {
                    ballot,
                    echo: sent_at,
                    round: 0,
                    commit_index: self.log.commit_index(),
                },
            );
        } else {
            self.send_after_persist(
                from,
                Message::Accepted {
                    ballot,
                    first_slot: vote_from,
                    last_slot,
                    echo: sent_at,
                },
            );
        }
        self.learn_commit_from(from, ballot, commit_index);
    }

    pub(crate) fn on_heartbeat(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        commit_index: Slot,
        sent_at: Tick,
        round: u64,
    ) {
        if !self.hear_leader(from, ballot) {
            return;
        }
        self.send_after_persist(
            from,
            Message::HeartbeatAck {
                ballot,
                echo: sent_at,
                round,
                commit_index: self.log.commit_index(),
            },
        );
        self.learn_commit_from(from, ballot, commit_index);
    }

    /// The leader's commit point: mark what we accepted at its ballot as chosen, and ask
    /// for what we are missing.
    pub(crate) fn learn_commit_from(&mut self, leader: NodeId, ballot: Ballot, commit_index: Slot) {
        if leader == self.config.id {
            return;
        }
        self.note_peer_commit(leader, commit_index);
        self.log.learn_commit(ballot, commit_index);
        self.maybe_catch_up(leader);
    }

    /// Asks `preferred` for chosen entries when we know of chosen slots past our commit
    /// point that we cannot fill ourselves. At most one request per retransmit interval;
    /// a request that brought nothing is retried at the next peer that knows more (the
    /// first one may be down, or lack the same slots), so a lost request or reply never
    /// leaves the node behind for good.
    pub(crate) fn maybe_catch_up(&mut self, preferred: NodeId) {
        if self.log.highest_known_chosen() <= self.log.commit_index() {
            return;
        }
        let peer = match self.catch_up_sent {
            Some((_, sent_at)) if self.now < sent_at + self.config.retransmit_ticks => return,
            Some((last, _)) if last == preferred || preferred == self.config.id => {
                self.next_catch_up_peer(last)
            }
            _ => preferred,
        };
        if peer == self.config.id {
            return;
        }
        self.catch_up_sent = Some((peer, self.now));
        self.send(
            peer,
            Message::CatchUp {
                from_slot: self.log.commit_index() + 1,
            },
        );
    }

    /// After `last`, in id order and round, the next peer that reported a commit point
    /// above ours (any peer, if none did).
    fn next_catch_up_peer(&self, last: NodeId) -> NodeId {
        let commit = self.log.commit_index();
        let mut ahead: Vec<NodeId> = self
            .peers()
            .filter(|peer| self.peer_commits.get(peer).is_some_and(|c| *c > commit))
            .collect();
        if ahead.is_empty() {
            ahead = self.peers().collect();
        }
        ahead
            .iter()
            .copied()
            .find(|peer| *peer > last)
            .or_else(|| ahead.first().copied())
            .unwrap_or(self.config.id)
    }

    /// The peer that reported the highest commit point above ours, if any.
    pub(crate) fn best_catch_up_peer(&self) -> Option<NodeId> {
        let commit = self.log.commit_index();
        self.peer_commits
            .iter()
            .filter(|(peer, c)| **c > commit && **peer != self.config.id)
            .max_by_key(|(peer, c)| (**c, std::cmp::Reverse(**peer)))
            .map(|(peer, _)| *peer)
    }

    /// Remembers how far a peer's log is chosen (it may be asked for entries later).
    pub(crate) fn note_peer_commit(&mut self, peer: NodeId, commit_index: Slot) {
        if peer == self.config.id {
            return;
        }
        let known = self.peer_commits.entry(peer).or_default();
        *known = (*known).max(commit_index);
        self.log.note_chosen_elsewhere(commit_index);
    }

    pub(crate) fn on_catch_up(&mut self, from: NodeId, from_slot: Slot) {
        if from_slot <= self.log.compacted_through() {
            let slot = self.log.compacted_through();
            self.event(crate::ready::Event::SnapshotNeeded { peer: from, slot });
            return;
        }
        let entries = self.log.chosen_from(
            from_slot.max(1),
            self.config.max_catchup_entries,
            self.config.max_message_bytes,
        );
        if entries.is_empty() && self.log.commit_index() < from_slot {
            return;
        }
        self.send(
            from,
            Message::Chosen {
                entries,
                commit_index: self.log.commit_index(),
            },
        );
    }

    /// Chosen entries from a peer: record them (durably) and move the commit point.
    pub(crate) fn on_chosen(&mut self, from: NodeId, entries: Vec<Entry>, commit_index: Slot) {
        self.note_peer_commit(from, commit_index);
        let before = self.log.commit_index();
        for entry in entries {
            let change = self.log.choose(entry.slot, entry.ballot, entry.value);
            self.persist_change(change);
        }
        self.log.advance_commit();
        if matches!(self.role, RoleState::Leader(_)) {
            self.leader_after_choose();
        }
        // Progress and more to fetch: ask again at once rather than after the retransmit
        // interval. Without progress (the peer lacks the same gap) wait: re-asking at once
        // would ping-pong forever between replicas that all miss one slot.
        if self.log.commit_index() > before {
            self.catch_up_sent = None;
        }
        self.maybe_catch_up(from);
    }
}
