//! Linearizable reads without a log write.
//!
//! A read asks the leader for a *read index*: its commit index at a moment it is sure it
//! still leads. The runtime answers the read from its state machine once it has applied
//! that index. The leader is sure when it holds a lease (a quorum acknowledged a message
//! it sent less than `read_lease_ticks` ago, and each of those acceptors refuses to
//! promise anyone else for `lease_ticks` after receiving it) or, without a lease, after
//! one heartbeat round that a quorum answers (read-index). A new leader serves reads only
//! once every slot it re-proposed at election is chosen. A follower forwards the request
//! to the leader and waits for its own log to reach the index.

use crate::ballot::{NodeId, Slot, Tick};
use crate::message::Message;
use crate::node::{Node, RoleState};
use crate::ready::Event;

/// The caller's handle for one read.
pub type ReadId = u64;

#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct PendingRead {
    pub origin: NodeId,
    pub request: ReadId,
    pub registered_at: Tick,
}

impl Node {
    /// Asks for a read index for `request`; the answer comes as `Event::ReadReady` (serve
    /// the read once the state machine applied `read_index`) or `Event::ReadFailed` (no
    /// leader could confirm it; retry later).
    pub fn read_index(&mut self, request: ReadId) {
        let me = self.config.id;
        match (&mut self.role, self.leader) {
            (RoleState::Leader(leader), _) => {
                leader.reads.push(PendingRead {
                    origin: me,
                    request,
                    registered_at: self.now,
                });
                if !self.leader_lease_valid() {
                    self.heartbeat_silent_peers(true);
                }
                self.serve_reads();
            }
            (_, Some(leader)) if leader != me => {
                self.forwarded_reads.insert(request, self.now);
                self.send(leader, Message::ReadIndex { request });
            }
            _ => self.event(Event::ReadFailed { request }),
        }
        self.check_invariants_pub();
    }

    /// The read lease: the time a quorum (this leader included) last acknowledged,
    /// plus `read_lease_ticks`, shortened for clock drift. See docs/protocol.md.
    pub(crate) fn leader_lease_valid(&self) -> bool {
        let RoleState::Leader(leader) = &self.role else {
            return false;
        };
        let mut acked: Vec<Tick> = leader.peers.values().map(|p| p.acked_sent_at).collect();
        acked.push(self.now);
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let lease_start = acked[self.config.quorum() - 1];
        // A lease starts only from messages sent in this leadership.
        lease_start >= leader.elected_at && self.now < lease_start + self.config.read_lease_ticks()
    }

    pub(crate) fn on_read_index(&mut self, from: NodeId, request: ReadId) {
        let now = self.now;
        let lease_valid = self.leader_lease_valid();
        let RoleState::Leader(leader) = &mut self.role else {
            self.send(
                from,
                Message::ReadIndexReply {
                    request,
                    read_index: None,
                },
            );
            return;
        };
        leader.reads.push(PendingRead {
            origin: from,
            request,
            registered_at: now,
        });
        if !lease_valid {
            self.heartbeat_silent_peers(true);
        }
        self.serve_reads();
    }

    pub(crate) fn on_read_index_reply(&mut self, request: ReadId, read_index: Option<Slot>) {
        if self.forwarded_reads.remove(&request).is_none() {
            return;
        }
        match read_index {
            Some(read_index) => self.event(Event::ReadReady {
                request,
                read_index,
            }),
            None => self.event(Event::ReadFailed { request }),
        }
    }

    /// Answers every pending read the leader can now vouch for.
    pub(crate) fn serve_reads(&mut self) {
        let quorum = self.config.quorum();
        let commit_index = self.log.commit_index();
        let lease_valid = self.leader_lease_valid();
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        if leader.reads.is_empty() || commit_index < leader.established_slot {
            return;
        }
        let acked: Vec<Tick> = leader.peers.values().map(|p| p.acked_sent_at).collect();
        let mut ready = Vec::new();
        leader.reads.retain(|read| {
            let confirmed = lease_valid
                || 1 + acked.iter().filter(|at| **at >= read.registered_at).count() >= quorum;
            if confirmed {
                ready.push(read.clone());
            }
            !confirmed
        });
        for read in ready {
            if read.origin == self.config.id {
                self.event(Event::ReadReady {
                    request: read.request,
                    read_index: commit_index,
                });
            } else {
                self.send(
                    read.origin,
                    Message::ReadIndexReply {
                        request: read.request,
                        read_index: Some(commit_index),
                    },
                );
            }
        }
    }

    /// Reads a leader can no longer vouch for (it stepped down) fail.
    pub(crate) fn fail_reads(&mut self, reads: Vec<PendingRead>) {
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
                        read_index: None,
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
            .filter(|(_, sent)| now >= **sent + deadline)
            .map(|(request, _)| *request)
            .collect();
        for request in expired {
            self.forwarded_reads.remove(&request);
            self.event(Event::ReadFailed { request });
        }
    }
}
