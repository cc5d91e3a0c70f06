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

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Inflight {
    pub value: Value,
    /// `value.size_bytes()`, for the in-flight byte window.
    pub size_bytes: usize,
    pub votes: Vec<NodeId>,
    pub sent_at: Tick,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct PeerProgress {
    /// When we last sent this peer anything (heartbeats fill the silences).
    pub last_sent: Tick,
    /// When this peer last answered at our ballot (for the quorum check).
    pub last_heard: Tick,
    /// The highest `sent_at` this peer echoed back (for lease reads).
    pub acked_sent_at: Tick,
    /// The highest read-index round this peer acknowledged.
    pub acked_round: u64,
    /// The highest commit point sent to this peer (in an Accept or a heartbeat).
    pub commit_told: Slot,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Leader {
    pub ballot: Ballot,
    pub next_slot: Slot,
    pub inflight: BTreeMap<Slot, Inflight>,
    /// Bytes of the values in `inflight`.
    pub inflight_bytes: usize,
    pub peers: BTreeMap<NodeId, PeerProgress>,
    /// The seeds' rule: the first batch of a leadership is the one Phase 1 ran for;
    /// every later one skips it.
    pub first_batch_done: bool,
    /// The tick Phase 1 completed; lease acknowledgements count from here.
    pub elected_at: Tick,
    /// The last slot re-proposed at election: reads wait until it is chosen.
    pub established_slot: Slot,
    pub reads: Vec<crate::read::PendingRead>,
    /// The last read-index round sent (heartbeats carry it).
    pub read_round: u64,
    /// Reads wait for a new round: send one at the next `take_ready`.
    pub read_round_wanted: bool,
    /// Followers that forwarded commands, and the last slot holding one: once the
    /// commit point passes it they hear so at once, not at the next Accept or
    /// heartbeat (their clients are waiting on them).
    pub commit_notices: BTreeMap<NodeId, Slot>,
    /// The commit point at the previous tick: one no message carried to a peer since is
    /// a whole tick old, and the next tick sends it (`Node::heartbeat_silent_peers`).
    pub commit_at_last_tick: Slot,
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
            inflight_bytes: 0,
            peers: peers
                .map(|peer| {
                    (
                        peer,
                        PeerProgress {
                            last_sent: now,
                            last_heard: now,
                            acked_sent_at: 0,
                            acked_round: 0,
                            commit_told: 0,
                        },
                    )
                })
                .collect(),
            first_batch_done: false,
            elected_at: now,
            established_slot: next_slot - 1,
            reads: Vec::new(),
            read_round: 0,
            read_round_wanted: false,
            commit_notices: BTreeMap::new(),
            commit_at_last_tick: 0,
        }
    }

    pub(crate) fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    fn remove_inflight(&mut self, slot: Slot) -> Option<Inflight> {
        let inflight = self.inflight.remove(&slot)?;
        self.inflight_bytes -= inflight.size_bytes;
        Some(inflight)
    }

    /// Room in the pipeline window for a slot of `bytes` more (an empty window always
    /// takes one).
    fn has_room(&self, slots: usize, bytes: usize, max_slots: usize, max_bytes: usize) -> bool {
        let slots_in_use = self.inflight.len() + slots;
        let bytes_in_use = self.inflight_bytes + bytes;
        slots_in_use < max_slots && (slots_in_use == 0 || bytes_in_use < max_bytes)
    }
}

/// Cuts `(slot, value)` pairs of consecutive slots into runs of at most `max_bytes` of
/// values (at least one value each): `(first_slot, values)`.
pub(crate) fn cut_runs(slots: Vec<(Slot, Value)>, max_bytes: usize) -> Vec<(Slot, Vec<Value>)> {
    let mut runs: Vec<(Slot, Vec<Value>)> = Vec::new();
    let mut bytes = 0;
    for (slot, value) in slots {
        let size = value.size_bytes();
        let extends = runs.last().is_some_and(|(first, values)| {
            *first + values.len() as u64 == slot && bytes + size <= max_bytes
        });
        if extends {
            bytes += size;
            runs.last_mut().expect("a run").1.push(value);
        } else {
            bytes = size;
            runs.push((slot, vec![value]));
        }
    }
    runs
}

impl Node {
    pub(crate) fn propose_multi(&mut self, id: Option<u64>, command: Bytes) {
        self.queue_command(id, command, None);
    }

    fn queue_command(&mut self, id: Option<u64>, command: Bytes, forwarded_by: Option<NodeId>) {
        let leader_was_established = matches!(self.role, RoleState::Leader(_));
        self.push_pending(Pending {
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
            let full_bytes = !self.pending.is_empty()
                && self.pending_bytes + command.len() > self.config.max_pending_bytes;
            if self.pending.len() >= self.config.max_pending_commands || full_bytes {
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
            RoleState::Leader(_) if self.handing_over() => false,
            RoleState::Leader(leader) => leader.has_room(
                0,
                0,
                self.config.max_inflight_slots,
                self.config.max_inflight_bytes,
            ),
            _ => self.leader.is_some_and(|leader| leader != self.config.id),
        }
    }

    /// Hands every queued command to the leader, in messages of at most
    /// `max_message_bytes` of commands (at least one each).
    fn forward_pending(&mut self, leader: NodeId) {
        let max_bytes = self.config.max_message_bytes;
        let mut batches: Vec<Vec<Bytes>> = Vec::new();
        let mut bytes = 0;
        while let Some(pending) = self.pop_pending() {
            let size = pending.command.len() + crate::message::COMMAND_OVERHEAD_BYTES;
            match batches.last_mut() {
                Some(batch) if bytes + size <= max_bytes => {
                    bytes += size;
                    batch.push(pending.command);
                }
                _ => {
                    bytes = size;
                    batches.push(vec![pending.command]);
                }
            }
        }
        for commands in batches {
            self.send(leader, Message::Forward { commands });
        }
    }

    /// Cuts queued commands into slots (leader) or hands them to the leader (follower).
    /// A slot holds at most `max_batch_commands` commands and `max_batch_bytes` of them
    /// (a single larger command gets a slot of its own); the pipeline window bounds the
    /// slots and bytes in flight.
    pub(crate) fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let RoleState::Leader(_) = &self.role else {
            if let Some(leader) = self.leader.filter(|leader| *leader != self.config.id) {
                self.forward_pending(leader);
            }
            return;
        };
        if self.handing_over() {
            // Commands wait for the new leader (or for the transfer to fail).
            return;
        }
        let mut slots = Vec::new();
        let mut events = Vec::new();
        let mut slots_bytes = 0;
        loop {
            let RoleState::Leader(leader) = &self.role else {
                unreachable!("checked above");
            };
            let Some(front) = self.pending.front() else {
                break;
            };
            let front_bytes = front.command.len();
            if !leader.has_room(
                slots.len(),
                slots_bytes + front_bytes,
                self.config.max_inflight_slots,
                self.config.max_inflight_bytes,
            ) {
                break;
            }
            let (new_slots, new_events) = self.cut_next_batch();
            slots_bytes += new_slots.iter().map(|(_, v)| v.size_bytes()).sum::<usize>();
            slots.extend(new_slots);
            events.extend(new_events);
        }
        if let RoleState::Leader(leader) = &mut self.role {
            if !slots.is_empty() {
                leader.first_batch_done = true;
            }
        }
        for event in events {
            self.event(event);
        }
        self.propose_slots(slots);
    }

    /// Takes the next batch off the queue: a `propose_at` command (no-ops up to its slot,
    /// then it alone) or a run of commands sharing one slot.
    fn cut_next_batch(&mut self) -> (Vec<(Slot, Value)>, Vec<Event>) {
        let max_batch = self.config.max_batch_commands;
        let max_batch_bytes = self.config.max_batch_bytes;
        let mut slots = Vec::new();
        let mut events = Vec::new();
        let target = self.pending.front().and_then(|pending| pending.target_slot);
        let take = if target.is_some() {
            1
        } else {
            let mut bytes = 0;
            self.pending
                .iter()
                .take(max_batch)
                .take_while(|pending| {
                    let fits = bytes == 0 || bytes + pending.command.len() <= max_batch_bytes;
                    bytes += pending.command.len();
                    pending.target_slot.is_none() && fits
                })
                .count()
                .max(1)
        };
        let batch: Vec<Pending> = (0..take).filter_map(|_| self.pop_pending()).collect();
        let RoleState::Leader(leader) = &mut self.role else {
            unreachable!("only a leader cuts batches");
        };
        if let Some(target) = target {
            while leader.next_slot < target {
                slots.push((leader.next_slot, Value::Noop));
                leader.next_slot += 1;
            }
        }
        let slot = leader.next_slot;
        leader.next_slot += 1;
        let mut commands = Vec::with_capacity(batch.len());
        for pending in batch {
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
        (slots, events)
    }

    /// Phase 2a for a run of consecutive slots, to every acceptor including our own, in
    /// Accept messages of at most `max_message_bytes` of values.
    pub(crate) fn propose_slots(&mut self, slots: Vec<(Slot, Value)>) {
        if slots.is_empty() {
            return;
        }
        let commit_index = self.log.commit_index();
        let now = self.now;
        let max_bytes = self.config.max_message_bytes;
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let ballot = leader.ballot;
        for (slot, value) in &slots {
            let size_bytes = value.size_bytes();
            leader.inflight_bytes += size_bytes;
            let replaced = leader.inflight.insert(
                *slot,
                Inflight {
                    value: value.clone(),
                    size_bytes,
                    votes: Vec::new(),
                    sent_at: now,
                },
            );
            assert!(
                replaced.is_none(),
                "slot {slot} proposed twice in one ballot"
            );
        }
        for progress in leader.peers.values_mut() {
            progress.last_sent = now;
            progress.commit_told = progress.commit_told.max(commit_index);
        }
        for (first_slot, values) in cut_runs(slots, max_bytes) {
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
                let inflight = leader.remove_inflight(slot).expect("present");
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
        let round = leader.read_round;
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
                progress.commit_told = progress.commit_told.max(commit_index);
            }
        }
        for follower in due {
            self.send(
                follower,
                Message::Heartbeat {
                    ballot,
                    commit_index,
                    sent_at: now,
                    round,
                },
            );
        }
    }

    /// True when reads wait for a heartbeat round that `take_ready` will send.
    pub(crate) fn wants_read_round(&self) -> bool {
        matches!(&self.role, RoleState::Leader(leader) if leader.read_round_wanted)
    }

    pub(crate) fn on_heartbeat_ack(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        echo: Tick,
        round: u64,
        commit_index: Slot,
    ) {
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
            progress.acked_round = progress.acked_round.max(round);
        }
        // A follower whose log is chosen further than ours (it compacted slots we
        // proposed, or learned them elsewhere): fetch them.
        self.note_peer_commit(from, commit_index);
        if self.leader_is_deposed() {
            self.step_down(ballot);
            return;
        }
        self.maybe_catch_up(from);
        self.serve_reads();
        self.maybe_send_timeout_now();
    }

    /// True when the log shows that another leader with a higher ballot chose slots:
    /// a slot this leader proposed was chosen with another value, or with a value it
    /// cannot see (installed from a snapshot), or a slot it never proposed, at or past
    /// its next slot, is chosen. Such a leader must not advertise its commit point at its
    /// ballot: a follower would mark its own entry of that ballot chosen for a slot where
    /// another value won (followers trust that the leader of a ballot proposed the chosen
    /// value of every slot it vouches for). It steps down instead; safety does not rest
    /// on leases.
    fn leader_is_deposed(&self) -> bool {
        let RoleState::Leader(leader) = &self.role else {
            return false;
        };
        if self.log.highest_known_chosen() >= leader.next_slot {
            return true;
        }
        leader.inflight.iter().any(|(slot, inflight)| {
            self.log.is_chosen(*slot)
                && self
                    .log
                    .get(*slot)
                    .is_none_or(|entry| entry.value != inflight.value)
        })
    }

    /// The leader learned chosen slots some other way (catch-up, a snapshot): stop
    /// proposing them — or step down if another leader chose them (see
    /// [`Node::leader_is_deposed`]).
    pub(crate) fn leader_after_choose(&mut self) {
        let RoleState::Leader(leader) = &self.role else {
            return;
        };
        if self.leader_is_deposed() {
            let ballot = leader.ballot;
            self.step_down(ballot);
            return;
        }
        let chosen: Vec<Slot> = leader
            .inflight
            .keys()
            .copied()
            .filter(|slot| self.log.is_chosen(*slot))
            .collect();
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        for slot in chosen {
            leader.remove_inflight(slot);
        }
        self.serve_reads();
    }

    /// Heartbeats into silences, retransmission of unanswered Accepts, catch-up of
    /// chosen slots it lacks, and the quorum check: a leader that has not heard from a
    /// quorum for an election timeout steps down rather than pretend to lead.
    pub(crate) fn tick_leader(&mut self) {
        let now = self.now;
        let retransmit = self.config.retransmit_ticks;
        let election_timeout = self.config.election_timeout_ticks;
        let quorum = self.config.quorum();
        let commit_index = self.log.commit_index();
        let max_bytes = self.config.max_message_bytes;
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
            let progress = leader.peers.get_mut(&peer).expect("peer");
            progress.last_sent = now;
            progress.commit_told = progress.commit_told.max(commit_index);
            for (first_slot, values) in cut_runs(slots, max_bytes) {
                messages.push((peer, first_slot, values));
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
        // Chosen slots we lack (fetched at election, or reported by a follower): ask
        // again until they are here; the first request or its reply may have been lost.
        if let Some(peer) = self.best_catch_up_peer() {
            self.maybe_catch_up(peer);
        } else if let Some((peer, _)) = self.catch_up_sent {
            self.maybe_catch_up(peer);
        }
        self.heartbeat_silent_peers(false);
        self.serve_reads();
    }

    /// Heartbeats to every peer we sent nothing for a heartbeat interval (or to all).
    /// At a tick (`all` false) also to every peer that was not sent a commit point the
    /// leader already had at the previous tick: a follower learns that a slot is chosen
    /// within two ticks, not a heartbeat interval — its watchers and serializable reads
    /// wait for that. While commands flow their Accepts carry the commit point, and this
    /// adds nothing.
    pub(crate) fn heartbeat_silent_peers(&mut self, all: bool) {
        let now = self.now;
        let heartbeat = self.config.heartbeat_interval_ticks;
        let commit_index = self.log.commit_index();
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let ballot = leader.ballot;
        let round = leader.read_round;
        let overdue = if all { 0 } else { leader.commit_at_last_tick };
        if !all {
            leader.commit_at_last_tick = commit_index;
        }
        let mut heartbeats = Vec::new();
        let mut commit_notices = 0;
        for (peer, progress) in leader.peers.iter_mut() {
            let silent = now >= progress.last_sent + heartbeat;
            let uninformed = progress.commit_told < overdue;
            if all || silent || uninformed {
                if !(all || silent) {
                    commit_notices += 1;
                }
                progress.last_sent = now;
                progress.commit_told = commit_index;
                heartbeats.push(*peer);
            }
        }
        self.tick_commit_notices += commit_notices;
        for peer in heartbeats {
            self.send(
                peer,
                Message::Heartbeat {
                    ballot,
                    commit_index,
                    sent_at: now,
                    round,
                },
            );
        }
    }
}
