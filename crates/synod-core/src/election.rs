//! Election: Phase 1 once per leadership.
//!
//! A follower that hears no leader for a randomized election timeout becomes a
//! candidate: it prepares a ballot above every ballot it has seen, from the first slot
//! it does not know chosen. On a quorum of promises it re-proposes, for every open slot,
//! the value accepted at the highest ballot (or a no-op), and only then takes new
//! commands. A preempted candidate backs off for a random time, so two candidates do not
//! keep preempting each other forever.

use crate::ballot::{Ballot, NodeId, Slot};
use crate::config::{Backoff, Mode};
use crate::leader::Leader;
use crate::message::{Entry, Message, Value};
use crate::node::{Node, RoleState};
use crate::persist::PersistOp;
use crate::ready::Event;
use std::collections::BTreeMap;

#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Candidate {
    pub ballot: Ballot,
    pub from_slot: Slot,
    /// Promises received: node → (entries at or above `from_slot`, its commit point).
    pub promises: BTreeMap<NodeId, (Vec<Entry>, Slot)>,
    pub last_sent: u64,
}

impl Node {
    /// Multi-Paxos clock work: election timeout for followers and candidates, heartbeats,
    /// retransmissions and the quorum check for the leader.
    pub(crate) fn tick_multi(&mut self) {
        self.expire_forwarded_reads();
        if matches!(self.role, RoleState::Leader(_)) {
            self.tick_leader();
            return;
        }
        if let Some((leader, expiry)) = self.lease {
            if self.now >= expiry {
                self.lease = None;
                if self.leader == Some(leader) {
                    self.set_leader(None);
                }
            }
        }
        if self.now >= self.election_deadline {
            self.start_phase1();
            return;
        }
        let resend_to: Vec<NodeId> = match &self.role {
            RoleState::Candidate(candidate)
                if self.now >= candidate.last_sent + self.config.retransmit_ticks =>
            {
                self.peers()
                    .filter(|peer| !candidate.promises.contains_key(peer))
                    .collect()
            }
            _ => Vec::new(),
        };
        if let RoleState::Candidate(candidate) = &mut self.role {
            if !resend_to.is_empty() {
                candidate.last_sent = self.now;
                let (ballot, from_slot) = (candidate.ballot, candidate.from_slot);
                for peer in resend_to {
                    self.send(peer, Message::Prepare { ballot, from_slot });
                }
            }
        }
        // A follower that knows of chosen slots it lacks keeps asking.
        if let Some(leader) = self.leader {
            self.maybe_catch_up(leader);
        } else if let Some((peer, _)) = self.catch_up_sent {
            self.maybe_catch_up(peer);
        }
    }

    /// Becomes a candidate: Phase 1a to every acceptor, this node's own included.
    pub(crate) fn start_phase1(&mut self) {
        let ballot = self
            .highest_seen
            .max(self.promised)
            .next_for(self.config.id);
        let from_slot = self.log.commit_index() + 1;
        self.phase1_runs += 1;
        // A candidate is the first acceptor of its own ballot.
        self.role = RoleState::Follower;
        self.promised = ballot;
        self.highest_seen = ballot;
        self.persist(PersistOp::Promise(ballot));
        self.role = RoleState::Candidate(Candidate {
            ballot,
            from_slot,
            promises: BTreeMap::new(),
            last_sent: self.now,
        });
        self.set_leader(None);
        self.reset_election_timer();
        self.event(Event::Phase1Started { ballot });
        for node in self.config.nodes.clone() {
            self.send(node, Message::Prepare { ballot, from_slot });
        }
    }

    /// Phase 1b arrives at the candidate.
    pub(crate) fn on_promise(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        entries: Vec<Entry>,
        commit_index: Slot,
    ) {
        let quorum = self.config.quorum();
        let RoleState::Candidate(candidate) = &mut self.role else {
            return;
        };
        if candidate.ballot != ballot {
            return;
        }
        candidate.promises.insert(from, (entries, commit_index));
        if candidate.promises.len() >= quorum {
            self.become_leader();
        }
    }

    /// A quorum promised: adopt, for every open slot, the value chosen or accepted at the
    /// highest ballot (a no-op where there is none), re-propose them all at our ballot,
    /// and only then serve new commands.
    fn become_leader(&mut self) {
        let RoleState::Candidate(candidate) =
            std::mem::replace(&mut self.role, RoleState::Follower)
        else {
            unreachable!("become_leader is only called by a candidate");
        };
        let ballot = candidate.ballot;
        let mut adopted: BTreeMap<Slot, (bool, Ballot, Value)> = BTreeMap::new();
        let mut max_slot = self.log.commit_index();
        // The highest commit point any promiser reported, and who reported it.
        let mut max_commit = (self.log.commit_index(), self.config.id);
        for (promiser, (entries, commit_index)) in candidate.promises {
            max_slot = max_slot.max(commit_index);
            if commit_index > max_commit.0 {
                max_commit = (commit_index, promiser);
            }
            for entry in entries {
                max_slot = max_slot.max(entry.slot);
                let chosen = entry.slot <= commit_index;
                let better = match adopted.get(&entry.slot) {
                    None => true,
                    Some((was_chosen, was_ballot, _)) => {
                        !was_chosen && (chosen || entry.ballot > *was_ballot)
                    }
                };
                if better {
                    adopted.insert(entry.slot, (chosen, entry.ballot, entry.value));
                }
            }
        }
        // Values known chosen are recorded as such right away.
        for (slot, (chosen, at, value)) in &adopted {
            if *chosen {
                let change = self.log.choose(*slot, *at, value.clone());
                self.persist_change(change);
            }
        }
        self.log.advance_commit();
        let first_open = candidate.from_slot.min(self.log.commit_index() + 1);
        // Runs of consecutive slots to re-propose. A slot some promiser reports chosen
        // but no longer holds (compacted into its snapshot) is never filled with a
        // no-op: it is fetched from that promiser instead.
        let mut runs: Vec<Vec<(Slot, Value)>> = vec![Vec::new()];
        let mut missing_chosen = false;
        for slot in first_open..=max_slot {
            let value = match self.log.get(slot) {
                Some(entry) if entry.chosen => Some(entry.value.clone()),
                _ => adopted.remove(&slot).map(|(_, _, value)| value),
            };
            match value {
                Some(value) => runs.last_mut().expect("non-empty").push((slot, value)),
                None if slot <= max_commit.0 => {
                    missing_chosen = true;
                    if !runs.last().expect("non-empty").is_empty() {
                        runs.push(Vec::new());
                    }
                }
                None => runs
                    .last_mut()
                    .expect("non-empty")
                    .push((slot, Value::Noop)),
            }
        }
        let reproposed_slots = runs.iter().map(|run| run.len() as u64).sum();
        self.role = RoleState::Leader(Leader::new(ballot, max_slot + 1, self.now, self.peers()));
        self.lease = None;
        self.set_leader(Some(self.config.id));
        self.event(Event::BecameLeader {
            ballot,
            reproposed_slots,
        });
        for run in runs {
            self.propose_slots(run);
        }
        if missing_chosen {
            self.log.note_chosen_elsewhere(max_commit.0);
            self.maybe_catch_up(max_commit.1);
        }
        // Announce the leadership at once: it starts the followers' leases and stops
        // their election timers.
        self.heartbeat_silent_peers(true);
    }

    /// A higher ballot turned us down.
    pub(crate) fn on_preempted(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        promised: Ballot,
        leader_hint: Option<NodeId>,
    ) {
        self.highest_seen = self.highest_seen.max(promised);
        let mine = match &self.role {
            RoleState::Candidate(candidate) => candidate.ballot,
            RoleState::Leader(leader) => leader.ballot,
            RoleState::Follower => return,
        };
        if ballot != mine || promised <= mine {
            return;
        }
        let _ = from;
        let was_leader = matches!(self.role, RoleState::Leader(_));
        self.step_down(mine);
        if let Some(leader) = leader_hint.filter(|leader| *leader != self.config.id) {
            // Someone holds a lease for a live leader: follow it instead of competing.
            self.set_leader(Some(leader));
        } else if was_leader && self.config.mode == Mode::MultiPaxos {
            // A leader preempted by a node that came back with a higher ballot: the
            // followers still hold leases for us, so only we can win quickly.
            self.start_phase1();
        }
    }

    /// Leaves candidacy or leadership after a higher ballot appeared. With randomized
    /// backoff the next attempt waits a random election timeout; with backoff disabled a
    /// candidate retries at once (the dueling-proposers livelock).
    pub(crate) fn step_down(&mut self, ballot: Ballot) {
        let was_candidate = matches!(self.role, RoleState::Candidate(_));
        if let RoleState::Leader(leader) = &mut self.role {
            let reads = std::mem::take(&mut leader.reads);
            self.fail_reads(reads);
        }
        self.role = RoleState::Follower;
        if self.leader == Some(self.config.id) {
            self.set_leader(None);
        }
        self.event(Event::SteppedDown { ballot });
        match self.config.backoff {
            Backoff::Randomized => self.reset_election_timer(),
            Backoff::Disabled if was_candidate && self.config.mode == Mode::MultiPaxos => {
                self.election_deadline = self.now;
                self.start_phase1();
            }
            Backoff::Disabled => self.reset_election_timer(),
        }
    }
}
