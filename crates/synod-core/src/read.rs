//! Linearizable reads without a log write.
//!
//! A read asks the leader for a *read index*: its commit index at a moment it is sure it
//! still leads. The runtime answers the read from its state machine once it has applied
//! that index. The leader is sure when it holds a lease (a quorum acknowledged a message
//! it sent less than `read_lease_ticks` ago, and each of those acceptors refuses to
//! promise anyone else for `lease_ticks` after receiving it) or, without a lease (or in
//! [`ReadMode::ReadIndex`], always), after a heartbeat round that a quorum answers: the
//! round is numbered, and only acknowledgements of a round sent after the read arrived
//! count. A new leader serves reads only once every slot it re-proposed at election is
//! chosen. A follower forwards the request to the leader and waits for its own log to
//! reach the index; the request carries the follower's incarnation, so a reply meant for
//! an earlier life of the follower (whose request numbers started at 1 too) is ignored.
//! The reads a follower is asked for between two `take_ready`s go in one `ReadIndex`
//! message, numbered by the first of them: the leader's answer is taken after every one
//! of them was asked for, so one read index serves them all (docs/latency.md).

use crate::ballot::{Ballot, NodeId, Slot, Tick};
use crate::config::ReadMode;
use crate::message::Message;
use crate::node::{Node, RoleState};
use crate::ready::{Event, ReadPath};

/// The caller's handle for one read.
pub type ReadId = u64;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct PendingRead {
    pub origin: NodeId,
    /// The origin's incarnation (its own, for local reads).
    pub incarnation: u64,
    pub request: ReadId,
    /// Acknowledgements of this heartbeat round, or a later one, confirm the read.
    pub round: u64,
}

impl Node {
    /// Asks for a read index for `request`; the answer comes as `Event::ReadReady` (serve
    /// the read once the state machine applied `read_index`) or `Event::ReadFailed` (no
    /// leader could confirm it; retry later).
    pub fn read_index(&mut self, request: ReadId) {
        let me = self.config.id;
        match (&self.role, self.leader) {
            (RoleState::Leader(_), _) | (RoleState::Candidate(_), Some(_)) if self.leads() => {
                self.register_read(me, self.config.incarnation, request);
                self.serve_reads();
            }
            // Sent with the others asked for before the next `take_ready`.
            (_, Some(leader)) if leader != me => self.unsent_reads.push(request),
            _ => self.event(Event::ReadFailed { request }),
        }
        self.check_invariants_pub();
    }

    /// Sends the reads asked for since the last call to the leader in one `ReadIndex`
    /// message. A read whose node has meanwhile become the leader, or lost it, is routed as
    /// `read_index` would route it now.
    pub(crate) fn flush_forwarded_reads(&mut self) {
        if self.unsent_reads.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.unsent_reads);
        let me = self.config.id;
        match self.leader {
            Some(leader) if leader != me && !self.leads() => {
                let batch = reads[0];
                if reads.len() > 1 {
                    self.batched_forwarded_reads += reads.len() as u64;
                }
                self.forwarded_reads.insert(batch, (self.now, reads));
                self.send(
                    leader,
                    Message::ReadIndex {
                        request: batch,
                        incarnation: self.config.incarnation,
                    },
                );
            }
            _ => {
                for request in reads {
                    self.read_index(request);
                }
                // Routed again: none is left unsent unless a leader elsewhere takes it.
                if !self.unsent_reads.is_empty() {
                    self.flush_forwarded_reads();
                }
            }
        }
    }

    /// Queues a read at the leader; without a lease it waits for the next heartbeat
    /// round (sent when `take_ready` drains, so reads arriving together share one).
    fn register_read(&mut self, origin: NodeId, incarnation: u64, request: ReadId) {
        let lease_valid = self.leader_lease_valid();
        let leader = match &mut self.role {
            RoleState::Leader(leader) => leader,
            // Refreshing its ballot: the new one confirms the read.
            RoleState::Candidate(candidate) => {
                candidate.reads.push(PendingRead {
                    origin,
                    incarnation,
                    request,
                    round: 0,
                });
                return;
            }
            RoleState::Follower => return,
        };
        if !lease_valid {
            leader.read_round_wanted = true;
        }
        let round = leader.read_round + 1;
        leader.reads.push(PendingRead {
            origin,
            incarnation,
            request,
            round,
        });
    }

    /// The node leads, or is refreshing its leadership's ballot
    /// ([`Node::refresh_leadership`]): it takes reads.
    pub(crate) fn leads(&self) -> bool {
        match &self.role {
            RoleState::Leader(_) => true,
            RoleState::Candidate(_) => self.leader == Some(self.config.id),
            RoleState::Follower => false,
        }
    }

    /// Sends the heartbeat round that reads registered since the last one wait for.
    pub(crate) fn flush_read_round(&mut self) {
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        if !leader.read_round_wanted {
            return;
        }
        leader.read_round_wanted = false;
        leader.read_round += 1;
        self.heartbeat_silent_peers(true);
    }

    /// The read lease: the time a quorum (this leader included) last acknowledged,
    /// plus `read_lease_ticks`, shortened for clock drift. See docs/protocol.md. Never
    /// valid in [`ReadMode::ReadIndex`].
    pub(crate) fn leader_lease_valid(&self) -> bool {
        self.config.read_mode != ReadMode::ReadIndex && self.holds_leader_lease()
    }

    /// Whether this node is the leader and holds the leader lease now (whatever the read
    /// mode): no other node can have been elected since the lease began, nor until it ends.
    /// What a lessor needs before it acknowledges a keep-alive or decides an expiry.
    pub fn holds_leader_lease(&self) -> bool {
        let RoleState::Leader(leader) = &self.role else {
            return false;
        };
        // A leader handing over gave its lease up (docs/leader-transfer.md): it serves no
        // lease read, and its lessor acknowledges no keep-alive, from then on.
        if self.handing_over() || self.released_lease == Some(leader.ballot) {
            return false;
        }
        let mut acked: Vec<Tick> = leader.peers.values().map(|p| p.acked_sent_at).collect();
        acked.push(self.now);
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let lease_start = acked[self.config.quorum() - 1];
        // A lease starts only from messages sent in this leadership.
        lease_start >= leader.elected_at && self.now < lease_start + self.config.read_lease_ticks()
    }

    pub(crate) fn on_read_index(&mut self, from: NodeId, request: ReadId, incarnation: u64) {
        if !self.leads() {
            self.send(
                from,
                Message::ReadIndexReply {
                    request,
                    incarnation,
                    read_index: None,
                    ballot: Ballot::ZERO,
                },
            );
            return;
        }
        self.register_read(from, incarnation, request);
        self.serve_reads();
    }

    pub(crate) fn on_read_index_reply(
        &mut self,
        from: NodeId,
        request: ReadId,
        incarnation: u64,
        read_index: Option<Slot>,
        ballot: Ballot,
    ) {
        if incarnation != self.config.incarnation {
            return;
        }
        let Some((_, reads)) = self.forwarded_reads.remove(&request) else {
            return;
        };
        if let Some(read_index) = read_index {
            self.learn_commit_from(from, ballot, read_index);
        }
        for request in reads {
            self.event(match read_index {
                Some(read_index) => Event::ReadReady {
                    request,
                    read_index,
                    path: ReadPath::Forwarded,
                },
                None => Event::ReadFailed { request },
            });
        }
    }

    /// Answers every pending read the leader can now vouch for.
    pub(crate) fn serve_reads(&mut self) {
        let quorum = self.config.quorum();
        let commit_index = self.log.commit_index();
        let lease_valid = self.leader_lease_valid();
        let me = self.config.id;
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let ballot = leader.ballot;
        if leader.reads.is_empty() || commit_index < leader.established_slot {
            return;
        }
        let acked_rounds: Vec<u64> = leader.peers.values().map(|p| p.acked_round).collect();
        let mut ready = Vec::new();
        leader.reads.retain(|read| {
            let round_confirmed =
                1 + acked_rounds.iter().filter(|r| **r >= read.round).count() >= quorum;
            let path = if lease_valid {
                ReadPath::Lease
            } else {
                ReadPath::QuorumRound
            };
            if lease_valid || round_confirmed {
                ready.push((read.clone(), path));
                return false;
            }
            true
        });
        for (read, path) in ready {
            if read.origin == me {
                self.event(Event::ReadReady {
                    request: read.request,
                    read_index: commit_index,
                    path,
                });
            } else {
                self.send(
                    read.origin,
                    Message::ReadIndexReply {
                        request: read.request,
                        incarnation: read.incarnation,
                        read_index: Some(commit_index),
                        ballot,
                    },
                );
            }
        }
    }

    /// Reads a leader can no longer vouch for (it stepped down) fail.
    pub(crate) fn fail_reads(&mut self, reads: Vec<PendingRead>) {
        let ballot = self.promised;
        for read in reads {
            if read.origin == self.config.id {
                self.event(Event::ReadFailed {
                    request: read.request,
                });
            } else {
                self.send(
                    read.origin,
                    Message::ReadIndexReply {
                        request: read.request,
                        incarnation: read.incarnation,
                        read_index: None,
                        ballot,
                    },
                );
            }
        }
    }

    /// Forwarded reads whose leader never answered fail after an election timeout.
    pub(crate) fn expire_forwarded_reads(&mut self) {
        let deadline = self.config.election_timeout_ticks;
        let now = self.now;
        let expired: Vec<ReadId> = self
            .forwarded_reads
            .iter()
            .filter(|(_, (sent, _))| now >= *sent + deadline)
            .map(|(batch, _)| *batch)
            .collect();
        for batch in expired {
            let Some((_, reads)) = self.forwarded_reads.remove(&batch) else {
                continue;
            };
            for request in reads {
                self.event(Event::ReadFailed { request });
            }
        }
    }
}
