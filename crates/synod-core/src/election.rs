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
use crate::mutant::mutant;
use crate::node::{Node, RoleState};
use crate::persist::PersistOp;
use crate::ready::Event;
use std::collections::BTreeMap;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Candidate {
    pub ballot: Ballot,
    pub from_slot: Slot,
    /// Promise chunks received, per promiser.
    pub promises: BTreeMap<NodeId, Vec<PromiseChunk>>,
    pub last_sent: u64,
    /// The leadership that handed this candidacy over (`Message::TimeoutNow`), carried
    /// by every Prepare of it; None for an ordinary election.
    pub transfer_from: Option<Ballot>,
    /// Reads a leader held, or was asked for, while it runs Phase 1 again to rise above
    /// a stray ballot ([`Node::refresh_leadership`]): the new ballot confirms them.
    pub reads: Vec<crate::read::PendingRead>,
}

/// One chunk of a promise: the entries the acceptor held in `first_slot..=last_slot`
/// and its commit point when it sent them.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct PromiseChunk {
    pub first_slot: Slot,
    pub last_slot: Slot,
    pub entries: Vec<Entry>,
    pub commit_index: Slot,
}

/// A pre-vote under way: the ballot it would prepare, and who said they would promise
/// it, with the tick of the question they answered.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct PreVoting {
    pub ballot: Ballot,
    pub grants: BTreeMap<NodeId, u64>,
    pub last_sent: u64,
}

impl PreVoting {
    /// Grants to questions asked within the last `window` ticks, our own included.
    fn fresh_grants(&self, now: u64, window: u64) -> usize {
        1 + self
            .grants
            .values()
            .filter(|asked| **asked + window >= now)
            .count()
    }
}

impl Candidate {
    /// True once `promiser`'s chunks cover every slot from `from_slot` on.
    fn has_whole_promise(&self, promiser: NodeId) -> bool {
        let Some(chunks) = self.promises.get(&promiser) else {
            return false;
        };
        let mut cursor = self.from_slot.max(1);
        loop {
            let reach = chunks
                .iter()
                .filter(|chunk| chunk.first_slot <= cursor && chunk.last_slot >= cursor)
                .map(|chunk| chunk.last_slot)
                .max();
            match reach {
                None => return false,
                Some(Slot::MAX) => return true,
                Some(last) => cursor = last + 1,
            }
        }
    }

    fn whole_promises(&self) -> usize {
        self.promises
            .keys()
            .filter(|promiser| self.has_whole_promise(**promiser))
            .count()
    }
}

impl Node {
    /// Multi-Paxos clock work: election timeout for followers and candidates, heartbeats,
    /// retransmissions and the quorum check for the leader.
    pub(crate) fn tick_multi(&mut self) {
        self.expire_forwarded_reads();
        self.tick_transfer();
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
            if self.config.pre_vote && self.config.nodes.len() > 1 {
                self.start_pre_vote();
            } else {
                self.start_phase1();
            }
            return;
        }
        self.resend_pre_votes();
        let resend_to: Vec<NodeId> = match &self.role {
            RoleState::Candidate(candidate)
                if self.now >= candidate.last_sent + self.config.retransmit_ticks =>
            {
                self.peers()
                    .filter(|peer| !candidate.has_whole_promise(*peer))
                    .collect()
            }
            _ => Vec::new(),
        };
        if let RoleState::Candidate(candidate) = &mut self.role {
            if !resend_to.is_empty() {
                candidate.last_sent = self.now;
                let (ballot, from_slot, transfer_from) = (
                    candidate.ballot,
                    candidate.from_slot,
                    candidate.transfer_from,
                );
                for peer in resend_to {
                    let prepare = Message::Prepare {
                        ballot,
                        from_slot,
                        transfer_from,
                    };
                    self.send_after_persist(peer, prepare);
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

    /// The election timer ran out: ask every peer whether it would promise a ballot above
    /// all we have seen, before raising anyone's promise (our own included). Phase 1 runs
    /// only once a quorum says yes; until then the question is repeated at the
    /// retransmit interval to those that have not, so a failover is not held up a whole
    /// timeout by a peer whose lease had a moment left.
    pub(crate) fn start_pre_vote(&mut self) {
        let ballot = self
            .highest_seen
            .max(self.promised)
            .next_for(self.config.id);
        let round = self.now;
        self.pre_vote = Some(PreVoting {
            ballot,
            grants: BTreeMap::new(),
            last_sent: self.now,
        });
        self.reset_election_timer();
        for peer in self.peers().collect::<Vec<_>>() {
            self.send(peer, Message::PreVote { ballot, round });
        }
    }

    fn resend_pre_votes(&mut self) {
        let retransmit = self.config.retransmit_ticks;
        let now = self.now;
        let Some(pre_vote) = self.pre_vote.as_mut() else {
            return;
        };
        if now < pre_vote.last_sent + retransmit {
            return;
        }
        pre_vote.last_sent = now;
        let ballot = pre_vote.ballot;
        let window = self.pre_vote_window();
        let stale: Vec<NodeId> = self
            .peers()
            .filter(|peer| {
                self.pre_vote
                    .as_ref()
                    .and_then(|p| p.grants.get(peer))
                    .is_none_or(|asked| asked + window < now + retransmit)
            })
            .collect();
        for peer in stale {
            self.send(peer, Message::PreVote { ballot, round: now });
        }
    }

    /// How old a pre-vote grant may be, in ticks of the question it answered: two
    /// retransmit intervals (a question is repeated every one).
    fn pre_vote_window(&self) -> u64 {
        2 * self.config.retransmit_ticks
    }

    /// Would we promise `ballot` to `from` now? Changes nothing either way.
    pub(crate) fn on_pre_vote(&mut self, from: NodeId, ballot: Ballot, round: u64) {
        // A candidate this node just promised is given its chance: no encouragement to
        // a rival until it won, or had an election timeout to.
        let backing_another = self
            .backing
            .is_some_and(|(candidate, until)| candidate != from && self.now < until);
        let granted = ballot > self.promised && !self.lease_blocks(from) && !backing_another;
        self.send(
            from,
            Message::PreVoteReply {
                ballot,
                round,
                granted,
            },
        );
    }

    pub(crate) fn on_pre_vote_reply(
        &mut self,
        from: NodeId,
        ballot: Ballot,
        round: u64,
        granted: bool,
    ) {
        let quorum = self.config.quorum();
        let (now, window) = (self.now, self.pre_vote_window());
        let Some(pre_vote) = self.pre_vote.as_mut() else {
            return;
        };
        if pre_vote.ballot != ballot || !granted || round + window < now {
            return;
        }
        let asked = pre_vote.grants.entry(from).or_default();
        *asked = (*asked).max(round);
        if pre_vote.fresh_grants(now, window) >= quorum && matches!(self.role, RoleState::Follower)
        {
            self.start_phase1();
        }
    }

    /// Becomes a candidate: Phase 1a to every acceptor, this node's own included.
    pub(crate) fn start_phase1(&mut self) {
        self.start_phase1_handed_over_by(None);
    }

    /// Phase 1 as [`Node::start_phase1`]; `transfer_from` names the leadership that
    /// handed this candidacy over (its Prepares say so, see `transfer.rs`).
    pub(crate) fn start_phase1_handed_over_by(&mut self, transfer_from: Option<Ballot>) {
        // A leader runs Phase 1 only to refresh its ballot, and stays the leader.
        let refreshing = matches!(self.role, RoleState::Leader(_));
        // A candidacy given up for a higher one fails the reads it carried.
        if let RoleState::Candidate(candidate) = &mut self.role {
            let reads = std::mem::take(&mut candidate.reads);
            self.fail_reads(reads);
        }
        let ballot = self
            .highest_seen
            .max(self.promised)
            .next_for(self.config.id);
        let from_slot = self.log.commit_index() + 1;
        self.phase1_runs += 1;
        self.pre_vote = None;
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
            transfer_from,
            reads: Vec::new(),
        });
        if !refreshing {
            self.set_leader(None);
        }
        self.reset_election_timer();
        self.event(Event::Phase1Started { ballot });
        // The Prepare leaves only once the ballot is durable here: a candidate that
        // crashed with its promise unsynced could otherwise win, get a value chosen, come
        // back without the ballot and run it again, choosing another value in it.
        for node in self.config.nodes.clone() {
            let prepare = Message::Prepare {
                ballot,
                from_slot,
                transfer_from,
            };
            if mutant!(self, PrepareBeforeDurable) {
                self.send(node, prepare);
            } else {
                self.send_after_persist(node, prepare);
            }
        }
    }

    /// Phase 1b (one chunk of it) arrives at the candidate.
    pub(crate) fn on_promise(&mut self, from: NodeId, ballot: Ballot, chunk: PromiseChunk) {
        let quorum = self.config.quorum();
        self.note_peer_commit(from, chunk.commit_index);
        let RoleState::Candidate(candidate) = &mut self.role else {
            return;
        };
        if candidate.ballot != ballot || chunk.first_slot > chunk.last_slot {
            return;
        }
        let chunks = candidate.promises.entry(from).or_default();
        // A resent Prepare brings the promise again, maybe cut differently: keep the
        // newest chunk of each start.
        chunks.retain(|old| old.first_slot != chunk.first_slot);
        chunks.push(chunk);
        if candidate.whole_promises() >= quorum {
            self.become_leader();
        }
    }

    /// A quorum promised: adopt, for every open slot, the value accepted at the highest
    /// ballot (a no-op where there is none), propose them all at our ballot, and only
    /// then serve new commands. A slot some promiser reports chosen is recorded as
    /// chosen; one at or below a promiser's commit point whose chosen value no promise
    /// carries (it was compacted into a snapshot) is fetched, never re-proposed: the
    /// highest-ballot value among the promises need not be the chosen one when the
    /// acceptor that voted for the chosen value no longer holds it.
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
        for (promiser, chunks) in candidate.promises {
            for chunk in chunks {
                max_slot = max_slot.max(chunk.commit_index);
                if chunk.commit_index > max_commit.0 {
                    max_commit = (chunk.commit_index, promiser);
                }
                for entry in chunk.entries {
                    max_slot = max_slot.max(entry.slot);
                    let chosen = entry.slot <= chunk.commit_index;
                    let better = match adopted.get(&entry.slot) {
                        None => true,
                        Some((was_chosen, was_ballot, _)) if mutant!(self, AdoptLowestBallot) => {
                            !was_chosen && (chosen || entry.ballot < *was_ballot)
                        }
                        Some((was_chosen, was_ballot, _)) => {
                            !was_chosen && (chosen || entry.ballot > *was_ballot)
                        }
                    };
                    if better {
                        adopted.insert(entry.slot, (chosen, entry.ballot, entry.value));
                    }
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
        self.log.note_chosen_elsewhere(max_commit.0);
        self.log.advance_commit();
        let first_open = candidate.from_slot.min(self.log.commit_index() + 1);
        let mut slots: Vec<(Slot, Value)> = Vec::new();
        let mut missing_chosen = false;
        for slot in first_open..=max_slot {
            if self.log.is_chosen(slot) {
                continue;
            }
            let reverted =
                mutant!(self, NoVoteForCompactedSlotCheck) && adopted.contains_key(&slot);
            if slot <= max_commit.0 && !reverted {
                missing_chosen = true;
                continue;
            }
            let value = adopted
                .remove(&slot)
                .map_or(Value::Noop, |(_, _, value)| value);
            slots.push((slot, value));
        }
        let reproposed_slots = slots.len() as u64;
        let mut leader = Leader::new(ballot, max_slot + 1, self.now, self.peers());
        // Reads carried through a refresh wait for this ballot's first round.
        for mut read in candidate.reads {
            read.round = leader.read_round + 1;
            leader.read_round_wanted = true;
            leader.reads.push(read);
        }
        self.role = RoleState::Leader(leader);
        self.lease = None;
        self.set_leader(Some(self.config.id));
        self.event(Event::BecameLeader {
            ballot,
            reproposed_slots,
        });
        self.propose_slots(slots);
        if missing_chosen {
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
        // While this leader holds its lease nobody else can have been elected, whatever
        // the answer names: a leader cut off as it re-ran Phase 1 keeping its leadership
        // still names itself, at a ballot above ours.
        let followed_by_none_else =
            leader_hint.is_none_or(|leader| leader == self.config.id) || self.holds_leader_lease();
        // A leader handing over does not compete with the target it told to campaign:
        // that higher ballot is most likely the target's (nobody leads at it yet).
        let refresh = was_leader && followed_by_none_else && !self.handing_over();
        if refresh && self.config.mode == Mode::MultiPaxos {
            // A node that raised its ballot unable to reach a quorum (a pre-vote grant
            // reached it just before a partition did) came back: nobody leads at its
            // ballot, and the followers still hold leases for us, so only we can win.
            self.refresh_leadership(promised);
            return;
        }
        self.step_down(mine);
        if let Some(leader) = leader_hint.filter(|leader| *leader != self.config.id) {
            // Someone holds a lease for a live leader: follow it instead of competing.
            self.set_leader(Some(leader));
        }
    }

    /// Runs Phase 1 again above a stray ballot without giving up the leadership: the
    /// node stays everyone's leader (no `SteppedDown`, no `LeaderChanged`), commands
    /// queue and reads wait (none fails) until the new ballot's quorum promised, one
    /// round trip. What a returning node costs a leader a quorum still follows.
    pub(crate) fn refresh_leadership(&mut self, stray: Ballot) {
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let ballot = leader.ballot;
        self.refreshes += 1;
        self.event(Event::RefreshingLeadership { ballot, stray });
        self.rerun_phase1_keeping_leadership();
    }

    /// Phase 1 at a higher ballot while staying everyone's leader: the reads it holds
    /// wait for the new ballot's first round. Used to rise above a stray ballot, and by
    /// a leader whose transfer failed after it told the target to campaign: the ballot
    /// that gave its lease away never serves a lease read again (`transfer.rs`).
    pub(crate) fn rerun_phase1_keeping_leadership(&mut self) {
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let reads = std::mem::take(&mut leader.reads);
        self.start_phase1();
        if let RoleState::Candidate(candidate) = &mut self.role {
            candidate.reads = reads;
        }
    }

    /// Leaves candidacy or leadership after a higher ballot appeared. With randomized
    /// backoff the next attempt waits a random election timeout; with backoff disabled a
    /// candidate retries at once (the dueling-proposers livelock).
    pub(crate) fn step_down(&mut self, ballot: Ballot) {
        let was_candidate = matches!(self.role, RoleState::Candidate(_));
        let reads = match &mut self.role {
            RoleState::Leader(leader) => std::mem::take(&mut leader.reads),
            RoleState::Candidate(candidate) => std::mem::take(&mut candidate.reads),
            RoleState::Follower => Vec::new(),
        };
        self.fail_reads(reads);
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
