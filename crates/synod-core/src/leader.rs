//! The leader: Phase 2 only, for as long as its ballot stands.
//!
//! Commands queue in `Node::pending`; `take_ready` cuts them into batches (commands that
//! arrived together share a slot) and proposes up to `max_inflight_slots` slots at once
//! (pipelining). One Accept per peer carries a run of slots and the commit point; a slot
//! is chosen when a quorum's Accepted (each sent after its persist) have arrived.

use crate::ballot::{Ballot, NodeId, Slot, Tick};
use crate::config::Mode;
use crate::message::{Message, Value};
use crate::node::{Node, Pending, RoleState};
use crate::ready::Event;
use bytes::Bytes;
use std::collections::BTreeMap;

#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Inflight {
    pub value: Value,
    pub votes: Vec<NodeId>,
    pub sent_at: Tick,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct PeerProgress {
    /// When we last sent this peer anything (heartbeats fill the silences).
    pub last_sent: Tick,
    /// When this peer last answered at our ballot (for the quorum check).
    pub last_heard: Tick,
    /// The highest `sent_at` this peer echoed back (for lease reads).
    pub acked_sent_at: Tick,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Leader {
    pub ballot: Ballot,
    pub next_slot: Slot,
    pub inflight: BTreeMap<Slot, Inflight>,
    pub peers: BTreeMap<NodeId, PeerProgress>,
    /// The seeds' rule: the first batch of a leadership is the one Phase 1 ran for;
    /// every later one skips it.
    pub first_batch_done: bool,
    /// The tick Phase 1 completed; lease acknowledgements count from here.
    pub elected_at: Tick,
    /// The last slot re-proposed at election: reads wait until it is chosen.
    pub established_slot: Slot,
    pub reads: Vec<crate::read::PendingRead>,
    /// Followers that forwarded commands, and the last slot holding one: once the
    /// commit point passes it they hear so at once, not at the next Accept or
    /// heartbeat (their clients are waiting on them).
    pub commit_notices: BTreeMap<NodeId, Slot>,
}

impl Leader {
    pub(crate) fn new(
        ballot: Ballot,
        next_slot: Slot,
        now: Tick,
        peers: impl Iterator<Item = NodeId>,
    ) -> Leader {
        Leader {
            ballot,
            next_slot,
            inflight: BTreeMap::new(),
            peers: peers
                .map(|peer| {
                    (
                        peer,
                        PeerProgress {
                            last_sent: now,
                            last_heard: now,
                            acked_sent_at: 0,
                        },
                    )
                })
                .collect(),
            first_batch_done: false,
            elected_at: now,
            established_slot: next_slot - 1,
            reads: Vec::new(),
            commit_notices: BTreeMap::new(),
        }
    }

    pub(crate) fn inflight_len(&self) -> usize {
        self.inflight.len()
    }
}

impl Node {
    pub(crate) fn propose_multi(&mut self, id: Option<u64>, command: Bytes) {
        self.queue_command(id, command, None);
    }

    fn queue_command(&mut self, id: Option<u64>, command: Bytes, forwarded_by: Option<NodeId>) {
        let leader_was_established = matches!(self.role, RoleState::Leader(_));
        self.pending.push_back(Pending {
            id,
            command,
            leader_was_established,
            target_slot: None,
            forwarded_by,
        });
    }

    /// Commands forwarded by a follower: queue them like local ones (dropping what does
    /// not fit — their clients will retry).
    pub(crate) fn on_forward(&mut self, from: NodeId, commands: Vec<Bytes>) {
        for command in commands {
            if self.pending.len() >= self.config.max_pending_commands {
                break;
            }
            self.queue_command(None, command, Some(from));
        }
    }

    /// Whether `take_ready` would do something with the queued commands.
    pub(crate) fn wants_flush(&self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        if self.config.mode == Mode::PerSlot {
            return self.per_slot.inflight() < self.config.max_inflight_slots;
        }
        match &self.role {
            RoleState::Leader(leader) => leader.inflight.len() < self.config.max_inflight_slots,
            _ => self.leader.is_some_and(|leader| leader != self.config.id),
        }
    }

    /// Cuts queued commands into slots (leader) or hands them to the leader (follower).
    pub(crate) fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let max_batch = self.config.max_batch_commands;
        let max_inflight = self.config.max_inflight_slots;
        let RoleState::Leader(leader) = &mut self.role else {
            if let Some(leader) = self.leader.filter(|leader| *leader != self.config.id) {
                let commands = self
                    .pending
                    .drain(..)
                    .map(|pending| pending.command)
                    .collect();
                self.send(leader, Message::Forward { commands });
            }
            return;
        };
        let mut slots = Vec::new();
        let mut events = Vec::new();
        while !self.pending.is_empty() && leader.inflight.len() + slots.len() < max_inflight {
            // A command for a given slot (propose_at): no-ops up to it, then it alone.
            if let Some(target) = self.pending.front().and_then(|pending| pending.target_slot) {
                while leader.next_slot < target {
                    slots.push((leader.next_slot, Value::Noop));
                    leader.next_slot += 1;
                }
                let pending = self.pending.pop_front().expect("front exists");
                let slot = leader.next_slot;
                leader.next_slot += 1;
                if let Some(id) = pending.id {
                    events.push(Event::ProposalAssigned {
                        id,
                        slot,
                        phase1_skipped: leader.first_batch_done && pending.leader_was_established,
                    });
                }
                slots.push((slot, Value::Commands(vec![pending.command])));
                continue;
            }
            let slot = leader.next_slot;
            leader.next_slot += 1;
            let take = self
                .pending
                .iter()
                .take(max_batch)
                .take_while(|pending| pending.target_slot.is_none())
                .count();
            let mut commands = Vec::with_capacity(take);
            for pending in self.pending.drain(..take) {
                if let Some(follower) = pending.forwarded_by {
                    let until = leader.commit_notices.entry(follower).or_default();
                    *until = (*until).max(slot);
                }
                if let Some(id) = pending.id {
                    events.push(Event::ProposalAssigned {
                        id,
                        slot,
                        phase1_skipped: leader.first_batch_done && pending.leader_was_established,
                    });
                }
                commands.push(pending.command);
            }
            slots.push((slot, Value::Commands(commands)));
        }
        if !slots.is_empty() {
            leader.first_batch_done = true;
        }
        for event in events {
            self.event(event);
        }
        self.propose_slots(slots);
    }

    /// Phase 2a for a run of consecutive slots, to every acceptor including our own.
    pub(crate) fn propose_slots(&mut self, slots: Vec<(Slot, Value)>) {
        let Some((first_slot, _)) = slots.first() else {
            return;
        };
        let first_slot = *first_slot;
        let commit_index = self.log.commit_index();
        let now = self.now;
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let ballot = leader.ballot;
        let mut values = Vec::with_capacity(slots.len());
        for (offset, (slot, value)) in slots.into_iter().enumerate() {
            assert_eq!(
                slot,
                first_slot + offset as u64,
                "proposed slots must be contiguous"
            );
            leader.inflight.insert(
                slot,
                Inflight {
                    value: value.clone(),
                    votes: Vec::new(),
                    sent_at: now,
                },
            );
            values.push(value);
        }
        for progress in leader.peers.values_mut() {
            progress.last_sent = now;
        }
        for node in self.config.nodes.clone() {
            self.send(
                node,
                Message::Accept {
                    ballot,
                    first_slot,
                    values: values.clone(),
                    commit_index,
                    sent_at: now,
                },
            );
        }
    }

    /// Phase 2b arrives at the leader: count votes; a quorum chooses the slot.
    pub(crate) fn on_accepted(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        first_slot: Slot,
        last_slot: Slot,
        echo: Tick,
    ) {
        let quorum = self.config.quorum();
        let now = self.now;
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        if leader.ballot != ballot {
            return;
        }
        if let Some(progress) = leader.peers.get_mut(&from) {
            progress.last_heard = now;
            progress.acked_sent_at = progress.acked_sent_at.max(echo);
        }
        let mut chosen = Vec::new();
        for slot in first_slot..=last_slot {
            let Some(inflight) = leader.inflight.get_mut(&slot) else {
                continue;
            };
            if !inflight.votes.contains(&from) {
                inflight.votes.push(from);
            }
            if inflight.votes.len() >= quorum {
                let inflight = leader.inflight.remove(&slot).expect("present");
                chosen.push((slot, inflight.value));
            }
        }
        for (slot, value) in chosen {
            let change = self.log.choose(slot, ballot, value);
            self.persist_change(change);
        }
        self.log.advance_commit();
        self.send_commit_notices();
        self.serve_reads();
    }

    /// Tells followers whose forwarded commands are now committed (see
    /// `Leader::commit_notices`); a heartbeat carries the commit point.
    fn send_commit_notices(&mut self) {
        let commit_index = self.log.commit_index();
        let now = self.now;
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let ballot = leader.ballot;
        let due: Vec<NodeId> = leader
            .commit_notices
            .iter()
            .filter(|(_, until)| **until <= commit_index)
            .map(|(follower, _)| *follower)
            .collect();
        for follower in &due {
            leader.commit_notices.remove(follower);
            if let Some(progress) = leader.peers.get_mut(follower) {
                progress.last_sent = now;
            }
        }
        for follower in due {
            self.send(
                follower,
                Message::Heartbeat {
                    ballot,
                    commit_index,
                    sent_at: now,
                },
            );
        }
    }

    pub(crate) fn on_heartbeat_ack(&mut self, from: NodeId, ballot: Ballot, echo: Tick) {
        let now = self.now;
        if let RoleState::Leader(leader) = &mut self.role {
            if leader.ballot == ballot {
                if let Some(progress) = leader.peers.get_mut(&from) {
                    progress.last_heard = now;
                    progress.acked_sent_at = progress.acked_sent_at.max(echo);
                }
            }
        }
        self.serve_reads();
    }

    /// The leader learned chosen slots some other way (catch-up): stop proposing them.
    pub(crate) fn leader_after_choose(&mut self) {
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let log = &self.log;
        leader.inflight.retain(|slot, _| !log.is_chosen(*slot));
    }

    /// Heartbeats into silences, retransmission of unanswered Accepts, and the quorum
    /// check: a leader that has not heard from a quorum for an election timeout steps
    /// down rather than pretend to lead.
    pub(crate) fn tick_leader(&mut self) {
        let now = self.now;
        let heartbeat = self.config.heartbeat_interval_ticks;
        let retransmit = self.config.retransmit_ticks;
        let election_timeout = self.config.election_timeout_ticks;
        let quorum = self.config.quorum();
        let commit_index = self.log.commit_index();
        let me = self.config.id;
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let ballot = leader.ballot;
        let heard = leader
            .peers
            .values()
            .filter(|progress| now < progress.last_heard + election_timeout)
            .count();
        if heard + 1 < quorum {
            self.step_down(ballot);
            return;
        }
        // Unanswered Accepts: resend per peer, as runs of consecutive slots.
        let mut resend: BTreeMap<NodeId, Vec<(Slot, Value)>> = BTreeMap::new();
        for (slot, inflight) in leader.inflight.iter_mut() {
            if now < inflight.sent_at + retransmit {
                continue;
            }
            inflight.sent_at = now;
            for peer in leader.peers.keys() {
                if !inflight.votes.contains(peer) {
                    resend
                        .entry(*peer)
                        .or_default()
                        .push((*slot, inflight.value.clone()));
                }
            }
        }
        let mut messages = Vec::new();
        for (peer, slots) in resend {
            leader.peers.get_mut(&peer).expect("peer").last_sent = now;
            let mut run: Vec<Value> = Vec::new();
            let mut run_start = 0;
            for (slot, value) in slots {
                if !run.is_empty() && slot != run_start + run.len() as u64 {
                    messages.push((peer, run_start, std::mem::take(&mut run)));
                }
                if run.is_empty() {
                    run_start = slot;
                }
                run.push(value);
            }
            if !run.is_empty() {
                messages.push((peer, run_start, run));
            }
        }
        for (peer, first_slot, values) in messages {
            self.send(
                peer,
                Message::Accept {
                    ballot,
                    first_slot,
                    values,
                    commit_index,
                    sent_at: now,
                },
            );
        }
        let _ = (me, heartbeat);
        self.heartbeat_silent_peers(false);
        self.serve_reads();
    }

    /// Heartbeats to every peer we sent nothing for a heartbeat interval (or to all).
    pub(crate) fn heartbeat_silent_peers(&mut self, all: bool) {
        let now = self.now;
        let heartbeat = self.config.heartbeat_interval_ticks;
        let commit_index = self.log.commit_index();
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let ballot = leader.ballot;
        let mut heartbeats = Vec::new();
        for (peer, progress) in leader.peers.iter_mut() {
            if all || now >= progress.last_sent + heartbeat {
                progress.last_sent = now;
                heartbeats.push(*peer);
            }
        }
        for peer in heartbeats {
            self.send(
                peer,
                Message::Heartbeat {
                    ballot,
                    commit_index,
                    sent_at: now,
                },
            );
        }
    }
}
