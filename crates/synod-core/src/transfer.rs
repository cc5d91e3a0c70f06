//! Leadership transfer (etcd's `MoveLeader`, raft's MsgTimeoutNow): the leader hands its
//! leadership to a named member without waiting for an election timeout.
//!
//! The leader stops cutting new slots (commands queue) and gives up its read lease, waits
//! until the target's log is chosen as far as its own with nothing in flight, then sends
//! `TimeoutNow`. The target starts Phase 1 at once, without pre-vote, and its Prepares
//! name the leadership that handed over; an acceptor whose lease protects exactly that
//! leadership promises despite the lease. Safety is Phase 1's as always; why lease reads
//! stay linearizable is argued in docs/leader-transfer.md. A transfer not finished
//! within an election timeout is abandoned and the old leader resumes.

use crate::ballot::{Ballot, NodeId, Tick};
use crate::config::Mode;
use crate::message::Message;
use crate::node::{Node, RoleState};
use crate::ready::Event;
use std::fmt;

/// A transfer this node started as leader, until it ends.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Transfer {
    pub target: NodeId,
    /// The leadership handed over: its lease is given up for good once `TimeoutNow`
    /// names it.
    pub ballot: Ballot,
    /// Abandoned at this tick (an election timeout after it started).
    pub deadline: Tick,
    /// When `TimeoutNow` last left (None: the target is still catching up).
    pub timeout_now_sent: Option<Tick>,
}

/// Why [`Node::transfer_leadership`] refused to start a transfer.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum TransferError {
    /// Only the leader hands its leadership over; `leader` is who leads, if known.
    NotLeader { leader: Option<NodeId> },
    /// The target is not a member of the cluster.
    UnknownMember(NodeId),
    /// A transfer to another member is under way.
    InProgress { target: NodeId },
    /// Per-slot Paxos has no leader.
    WrongMode,
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::NotLeader { leader: Some(id) } => {
                write!(f, "not the leader; node {id} leads")
            }
            TransferError::NotLeader { leader: None } => write!(f, "not the leader"),
            TransferError::UnknownMember(id) => write!(f, "node {id} is not a member"),
            TransferError::InProgress { target } => {
                write!(f, "a leadership transfer to node {target} is under way")
            }
            TransferError::WrongMode => write!(f, "per-slot Paxos has no leader to transfer"),
        }
    }
}

impl std::error::Error for TransferError {}

/// How a transfer ended (`Event::TransferEnded`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum TransferOutcome {
    /// This node learned that the target leads (or the target was this node itself).
    Completed,
    /// The target did not take over within an election timeout; if this node still led
    /// the ballot it handed over, it resumed leading (at a higher ballot when it had told
    /// the target to campaign).
    TimedOut,
}

impl Node {
    /// Hands the leadership to `target`: the outcome comes as `Event::TransferEnded`.
    /// `target` being this node is done at once (as etcd answers it); a second request
    /// for the target of the transfer under way joins it.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        let me = self.config.id;
        if self.config.mode != Mode::MultiPaxos {
            return Err(TransferError::WrongMode);
        }
        if !self.config.nodes.contains(&target) {
            return Err(TransferError::UnknownMember(target));
        }
        let RoleState::Leader(leader) = &self.role else {
            let leader = self.leader.filter(|leader| *leader != me);
            return Err(TransferError::NotLeader { leader });
        };
        let ballot = leader.ballot;
        if target == me {
            self.event(Event::TransferEnded {
                target,
                outcome: TransferOutcome::Completed,
            });
            return Ok(());
        }
        if let Some(transfer) = &self.transfer {
            if transfer.ballot == ballot {
                return match transfer.target == target {
                    true => Ok(()),
                    false => Err(TransferError::InProgress {
                        target: transfer.target,
                    }),
                };
            }
            // A transfer of an earlier leadership of ours: it failed.
            self.end_transfer(TransferOutcome::TimedOut);
        }
        // From here on no lease read: the lease must be given up before the target can
        // campaign (see `lease_released_by`), and nothing tells when it will.
        self.transfer = Some(Transfer {
            target,
            ballot,
            deadline: self.now + self.config.election_timeout_ticks,
            timeout_now_sent: None,
        });
        // Its acknowledgement tells how far the target's log is chosen.
        self.heartbeat_peer(target);
        self.maybe_send_timeout_now();
        self.check_invariants_pub();
        Ok(())
    }

    /// True while this node leads the ballot it is handing over: it proposes nothing new
    /// and serves no lease read.
    pub(crate) fn handing_over(&self) -> bool {
        match (&self.role, &self.transfer) {
            (RoleState::Leader(leader), Some(transfer)) => leader.ballot == transfer.ballot,
            _ => false,
        }
    }

    /// The target's log is chosen as far as ours and nothing is in flight: tell it to
    /// campaign (again after a retransmit interval, in case that was lost). Until then
    /// the target is sent a heartbeat every tick: an acknowledgement reports the commit
    /// point from before the heartbeat it answers, and catch-up needs the next one.
    pub(crate) fn maybe_send_timeout_now(&mut self) {
        if !self.handing_over() {
            return;
        }
        let commit_index = self.log.commit_index();
        let (now, retransmit) = (self.now, self.config.retransmit_ticks);
        let nothing_inflight =
            matches!(&self.role, RoleState::Leader(leader) if leader.inflight.is_empty());
        let Some(transfer) = self.transfer.as_mut() else {
            return;
        };
        let caught_up = self
            .peer_commits
            .get(&transfer.target)
            .is_some_and(|commit| *commit >= commit_index);
        let resend_due = transfer
            .timeout_now_sent
            .is_none_or(|sent| now >= sent + retransmit);
        if !caught_up {
            let target = transfer.target;
            let heard_this_tick = matches!(&self.role, RoleState::Leader(leader)
                if leader.peers.get(&target).is_some_and(|p| p.last_sent >= now));
            if !heard_this_tick {
                self.heartbeat_peer(target);
            }
            return;
        }
        if !(nothing_inflight && resend_due) {
            return;
        }
        transfer.timeout_now_sent = Some(now);
        let (target, ballot) = (transfer.target, transfer.ballot);
        self.released_lease = Some(ballot);
        self.send(target, Message::TimeoutNow { ballot });
    }

    /// The clock side of a transfer: give up at the deadline, else keep prodding; after
    /// giving up, move to a new ballot once a quorum is heard.
    pub(crate) fn tick_transfer(&mut self) {
        self.maybe_leave_released_ballot();
        let Some(transfer) = &self.transfer else {
            return;
        };
        if self.now < transfer.deadline {
            self.maybe_send_timeout_now();
            return;
        }
        let told_target = transfer.timeout_now_sent.is_some();
        let still_leading = self.handing_over();
        self.end_transfer(TransferOutcome::TimedOut);
        if still_leading && told_target {
            // The target may still campaign on that TimeoutNow, and acceptors would
            // release this ballot's lease for it: no lease read at this ballot ever again
            // (`released_lease`); lead on at a new ballot as soon as a quorum answers.
            self.abandoned_at = Some(self.now);
            self.maybe_leave_released_ballot();
        }
    }

    /// A leader still at the ballot it gave the lease of away (its transfer was abandoned
    /// after `TimeoutNow`) runs Phase 1 above it while staying the leader — but only once
    /// a quorum acknowledged a message sent since it gave up. Raising a ballot unable to
    /// reach a quorum (cut off meanwhile) would depose the real leader when it returns,
    /// which pre-vote exists to prevent; until then reads are confirmed by quorum rounds.
    fn maybe_leave_released_ballot(&mut self) {
        let Some(since) = self.abandoned_at else {
            return;
        };
        let leader = match &self.role {
            RoleState::Leader(leader) if self.released_lease == Some(leader.ballot) => leader,
            _ => {
                self.abandoned_at = None;
                return;
            }
        };
        let answered = 1 + leader
            .peers
            .values()
            .filter(|progress| progress.acked_sent_at >= since)
            .count();
        if answered >= self.config.quorum() {
            self.abandoned_at = None;
            self.rerun_phase1_keeping_leadership();
        }
    }

    pub(crate) fn end_transfer(&mut self, outcome: TransferOutcome) {
        if let Some(transfer) = self.transfer.take() {
            self.event(Event::TransferEnded {
                target: transfer.target,
                outcome,
            });
        }
    }

    /// The leader of `ballot`, which we follow, hands us the leadership: campaign now,
    /// without pre-vote, naming its ballot. A stale or duplicated one (we promised
    /// another ballot since, or lead or campaign already) changes nothing.
    pub(crate) fn on_timeout_now(&mut self, from: NodeId, ballot: Ballot) {
        let follows = matches!(self.role, RoleState::Follower)
            && self.promised == ballot
            && self.leader == Some(from);
        if self.config.mode != Mode::MultiPaxos || !follows {
            return;
        }
        self.start_phase1_handed_over_by(Some(ballot));
    }

    /// True when a Prepare naming `transfer_from` may pass the lease this acceptor holds:
    /// the lease protects exactly that leadership (we promised its ballot and its leader
    /// holds our lease, or we are that leader, handing over), and that leader gave the
    /// lease up before it sent the `TimeoutNow` the Prepare follows from. A lease for
    /// anyone else, for a later ballot of the same leader, or the quiet period after a
    /// restart is never passed.
    pub(crate) fn lease_released_by(&self, transfer_from: Option<Ballot>) -> bool {
        let Some(ballot) = transfer_from else {
            return false;
        };
        if ballot != self.promised {
            return false;
        }
        match &self.role {
            RoleState::Leader(_) => ballot.node == self.config.id && self.handing_over(),
            _ => self
                .lease
                .is_some_and(|(holder, _)| holder == ballot.node && holder != self.config.id),
        }
    }

    /// One heartbeat to `peer` now (its acknowledgement carries its commit point).
    fn heartbeat_peer(&mut self, peer: NodeId) {
        let (now, commit_index) = (self.now, self.log.commit_index());
        let RoleState::Leader(leader) = &mut self.role else {
            return;
        };
        let (ballot, round) = (leader.ballot, leader.read_round);
        if let Some(progress) = leader.peers.get_mut(&peer) {
            progress.last_sent = now;
        }
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
