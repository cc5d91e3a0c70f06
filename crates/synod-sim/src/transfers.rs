//! Leadership transfers (etcd's `MoveLeader`) asked for at random during the fault phase:
//! the node that leads is told to hand over to a member drawn at random — a caught-up
//! follower, a lagging one, a crashed, paused or cut-off one, or itself. Times and
//! targets come from an RNG of their own, so the swarm's other draws are unchanged. The
//! checkers are the run's usual ones: a transfer must never let a lease read miss a write
//! the new leader chose (linearizability), nor break agreement.

use crate::cluster::{Event, Simulation, TICK_UNITS};
use rand::Rng as _;
use synod_core::{NodeId, Role};

impl Simulation {
    pub(crate) fn start_transfers(&mut self) {
        if self.options.transfer_interval_ticks > 0 && self.faulty {
            let gap = self.transfer_gap();
            self.schedule(gap, Event::TransferRequest);
        }
    }

    fn transfer_gap(&mut self) -> u64 {
        let mean = self.options.transfer_interval_ticks * TICK_UNITS;
        self.transfer_rng
            .gen_range(mean / 2..=mean + mean / 2)
            .max(1)
    }

    /// Asks the node that leads (a running one; several may believe they do) to hand
    /// over to a random member.
    pub(crate) fn request_transfer(&mut self) {
        if !self.faulty {
            return;
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let target = ids[self.transfer_rng.gen_range(0..ids.len())];
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, node)| {
                node.paused_until.is_none()
                    && node
                        .replica
                        .as_ref()
                        .is_some_and(|replica| replica.status().node.role == Role::Leader)
            })
            .map(|(id, _)| *id)
            .collect();
        if !leaders.is_empty() {
            let leader = leaders[self.transfer_rng.gen_range(0..leaders.len())];
            // A deliberate handover is no disruption by a returning node.
            if self
                .heal_watch
                .is_some_and(|(watched, _, _)| watched == leader)
            {
                self.heal_watch = None;
            }
            let mut result = Ok(());
            self.with_replica(leader, |replica, now| {
                result = replica.transfer_leadership(now, target);
            });
            if result.is_ok() && target != leader {
                self.transferring.insert(leader);
            }
            self.trace(|| {
                format!("n{leader} asked to hand its leadership to n{target}: {result:?}")
            });
        }
        let gap = self.transfer_gap();
        self.schedule(gap, Event::TransferRequest);
    }
}
