//! The faults: partitions, crashes that keep only what the disk synced, pauses that
//! stop a node's process while its clock runs on, and the heal that ends them all.

use crate::cluster::{replica_config, Event, Scripted, Simulation, TICK_UNITS};
use rand::Rng as _;
use std::collections::BTreeSet;
use synod_core::{DurableState, NodeId};
use synod_kv::KvStore;
use synod_replica::{Replica, Restored};

impl Simulation {
    pub(crate) fn inject_fault(&mut self) {
        // Any new fault may legitimately cost the leader its leadership.
        self.heal_watch = None;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let f = (self.options.nodes - 1) / 2;
        let roll = self.rng.gen_range(0..14);
        let faults = self.options.faults.clone();
        match roll {
            0..=3 if faults.partitions => self.new_partition(&ids),
            4 if faults.partitions => self.heal_network(),
            5..=6 if faults.crashes => {
                let down = self.nodes.values().filter(|n| !n.is_up()).count() as u64;
                if down < f {
                    let id = self.fault_victim(&ids);
                    self.crash(id);
                }
            }
            7..=9 if faults.crashes => {
                let down: Vec<NodeId> = self
                    .nodes
                    .iter()
                    .filter(|(_, n)| !n.is_up())
                    .map(|(id, _)| *id)
                    .collect();
                if !down.is_empty() {
                    let id = down[self.rng.gen_range(0..down.len())];
                    self.restart(id);
                }
            }
            12..=13 if faults.clock_drift_percent > 0 && self.options.clock_rates_ppm.is_none() => {
                // Clock rates wander (NTP slewing, a loaded host): a node that led on a
                // fast clock may go on leading on a slow one.
                let id = self.fault_victim(&ids);
                let rate = self.draw_rate();
                let now = self.now;
                self.nodes.get_mut(&id).expect("node").set_rate(now, rate);
                self.note_drift(id);
                self.trace(|| format!("n{id} clock now runs at {rate} ppm"));
            }
            10..=11 if faults.pauses => {
                let id = self.fault_victim(&ids);
                let units = self
                    .rng
                    .gen_range(TICK_UNITS..=faults.max_pause_units.max(TICK_UNITS));
                self.pause(id, units);
            }
            _ => {}
        }
    }

    /// A node that believes it leads (the one with the highest ballot, if several).
    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| {
                let status = n.replica.as_ref()?.status().node;
                (status.role == synod_core::Role::Leader).then_some((status.promised, *id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// A fault placed by the scenario.
    pub(crate) fn run_script(&mut self, fault: Scripted) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let leader = self.leader();
        self.trace(|| format!("scripted {fault:?} (leader {leader:?})"));
        match fault {
            Scripted::IsolateLeader => {
                if let Some(leader) = leader {
                    for other in ids.into_iter().filter(|id| *id != leader) {
                        self.blocked.insert((leader, other));
                        self.blocked.insert((other, leader));
                    }
                }
            }
            Scripted::HealNetwork => self.heal_network(),
            Scripted::SetClockRates {
                leader_ppm,
                others_ppm,
            } => {
                let now = self.now;
                for id in ids {
                    let rate = if Some(id) == leader {
                        leader_ppm
                    } else {
                        others_ppm
                    };
                    self.nodes.get_mut(&id).expect("node").set_rate(now, rate);
                    self.note_drift(id);
                }
            }
        }
    }

    /// Beyond the drift bound the nodes assume (`--clock-drift-percent` above it), a
    /// leader cut off from everyone gets the worst clocks the run allows: its own at the
    /// slowest rate, everyone else's at the fastest, so its lease outlives the
    /// followers' promises — the stale lease reads the checkers must then report. Within
    /// the bound nothing changes (and no random draw is spent).
    fn worst_drift_for(&mut self, leader: NodeId, ids: &[NodeId]) {
        let drift = self.options.faults.clock_drift_percent;
        if drift <= self.options.assumed_drift_percent || self.options.clock_rates_ppm.is_some() {
            return;
        }
        let spread = drift.min(95) * crate::cluster::PPM / 100;
        let now = self.now;
        for &id in ids {
            let rate = if id == leader {
                crate::cluster::PPM - spread
            } else {
                crate::cluster::PPM + spread
            };
            self.nodes.get_mut(&id).expect("node").set_rate(now, rate);
            self.note_drift(id);
        }
        self.trace(|| format!("n{leader} is cut off with the slowest clock, the rest the fastest"));
    }

    /// The node a fault hits: with `target_leader`, the leader half the time.
    fn fault_victim(&mut self, ids: &[NodeId]) -> NodeId {
        let leader = self.leader();
        match leader {
            Some(leader) if self.options.faults.target_leader && self.rng.gen_bool(0.5) => leader,
            _ => ids[self.rng.gen_range(0..ids.len())],
        }
    }

    fn new_partition(&mut self, ids: &[NodeId]) {
        self.blocked.clear();
        self.report.partitions += 1;
        let cut = |blocked: &mut BTreeSet<(NodeId, NodeId)>, a: NodeId, b: NodeId| {
            blocked.insert((a, b));
            blocked.insert((b, a));
        };
        match self.rng.gen_range(0..4) {
            // Isolate one node.
            0 => {
                let lone = self.fault_victim(ids);
                for &other in ids.iter().filter(|&&o| o != lone) {
                    cut(&mut self.blocked, lone, other);
                }
                if Some(lone) == self.leader() {
                    self.worst_drift_for(lone, ids);
                }
            }
            // Partial: a bridge node sees everyone, the others are split in two groups
            // that do not see each other.
            1 => {
                let bridge = ids[self.rng.gen_range(0..ids.len())];
                let rest: Vec<NodeId> = ids.iter().copied().filter(|&o| o != bridge).collect();
                let split = rest.len() / 2;
                for &a in &rest[..split] {
                    for &b in &rest[split..] {
                        cut(&mut self.blocked, a, b);
                    }
                }
            }
            // One-way: a node can send but not receive.
            2 => {
                let deaf = ids[self.rng.gen_range(0..ids.len())];
                for &other in ids.iter().filter(|&&o| o != deaf) {
                    self.blocked.insert((other, deaf));
                }
            }
            // A random majority/minority split.
            _ => {
                let mut shuffled = ids.to_vec();
                for i in (1..shuffled.len()).rev() {
                    let j = self.rng.gen_range(0..=i);
                    shuffled.swap(i, j);
                }
                let minority = (ids.len() - 1) / 2;
                for &a in &shuffled[..minority] {
                    for &b in &shuffled[minority..] {
                        cut(&mut self.blocked, a, b);
                    }
                }
            }
        }
        let blocked = self.blocked.clone();
        self.trace(|| format!("partition: blocked links {blocked:?}"));
    }

    /// The process dies. The disk wrote requests in order and the crash cut the queue
    /// somewhere: what lies before the cut is durable although the node never heard so
    /// (a candidate may lose its first promise here, inside its first fsync); the rest
    /// is lost. A snapshot not yet saved is lost too.
    pub(crate) fn crash(&mut self, id: NodeId) {
        self.report.crashes += 1;
        // A transfer under way dies with the process.
        self.transferring.remove(&id);
        let amnesia = self.options.faults.amnesia;
        let node = self.nodes.get_mut(&id).expect("known node");
        let Some(replica) = node.replica.take() else {
            return;
        };
        let stats = replica.stats();
        let past = &mut node.past_stats;
        past.snapshots_taken += stats.snapshots_taken;
        past.snapshots_installed += stats.snapshots_installed;
        past.snapshot_resends_held += stats.snapshot_resends_held;
        past.snapshots_held_for_log_growth += stats.snapshots_held_for_log_growth;
        past.lease_reads += stats.lease_reads;
        past.read_index_reads += stats.read_index_reads;
        past.follower_reads += stats.follower_reads;
        past.serializable_reads += stats.serializable_reads;
        past.leader_transfers += stats.leader_transfers;
        past.leader_transfer_timeouts += stats.leader_transfer_timeouts;
        self.report.phase1_runs += replica.status().node.phase1_runs;
        self.report.coverage.batched_follower_reads +=
            replica.status().node.batched_forwarded_reads;
        self.report.coverage.tick_commit_notices += replica.status().node.tick_commit_notices;
        node.epoch += 1;
        node.paused_until = None;
        node.inbox.clear();
        let queued: Vec<_> = node
            .written
            .drain(..)
            .chain(node.unsynced.drain(..))
            .collect();
        let synced = self.rng.gen_range(0..=queued.len());
        for request in queued.into_iter().take(synced) {
            node.durable.apply_all(&request.ops);
        }
        if amnesia {
            node.durable = DurableState::default();
            node.snapshot = None;
        }
        node.disk_busy_until = 0;
        self.trace(|| format!("n{id} crashed"));
    }

    /// The process starts again from its disk: the newest snapshot, then the log.
    pub(crate) fn restart(&mut self, id: NodeId) {
        if self.nodes[&id].is_up() {
            return;
        }
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let config = replica_config(&self.options, &ids, id, &mut self.rng);
        let node = self.nodes.get_mut(&id).expect("known node");
        let restored = node.snapshot.as_ref().map(|(_, bytes)| {
            Restored::decode(bytes, KvStore::new()).expect("a snapshot the simulator saved")
        });
        let from_slot = restored.as_ref().map_or(0, |r| r.slot);
        let now = node.clock(self.now);
        let replica = Replica::recover(
            config.clone(),
            node.durable.clone(),
            restored,
            KvStore::new(),
            now,
        )
        .expect("recovering from what the disk holds");
        node.config = config;
        node.replica = Some(replica);
        self.checker.on_restart(id, from_slot);
        self.trace(|| format!("n{id} restarted from its snapshot of slot {from_slot}"));
        self.with_replica(id, |replica, now| replica.tick(now));
    }

    /// The process stops for `units` (a GC pause, SIGSTOP, a VM migration): no input is
    /// handled, no clock read; the clock itself runs on.
    fn pause(&mut self, id: NodeId, units: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if !node.is_up() || node.paused_until.is_some() {
            return;
        }
        node.paused_until = Some(self.now + units);
        self.report.coverage.pauses += 1;
        self.trace(|| format!("n{id} paused for {units} units"));
        self.schedule(units, Event::PauseEnd(id));
    }

    /// The process resumes: its clock has jumped; the inputs queued meanwhile are handled
    /// in order (each one sees the new time first).
    pub(crate) fn resume(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.paused_until.take().is_none() {
            return;
        }
        let inbox = std::mem::take(&mut node.inbox);
        self.trace(|| format!("n{id} resumed with {} queued inputs", inbox.len()));
        for event in inbox {
            self.handle_node_event(event);
        }
        self.with_replica(id, |replica, now| replica.tick(now));
    }

    /// Every partition ends. The leader, if a quorum could reach it through the
    /// partition, is watched: it must keep its leadership (a returning node must not
    /// depose it).
    fn heal_network(&mut self) {
        if let Some(leader) = self.leader() {
            let ballot = self.nodes[&leader]
                .replica
                .as_ref()
                .map(|r| r.status().node.promised);
            let was_cut = !self.blocked.is_empty();
            if let (true, Some(ballot)) = (was_cut && self.reaches_quorum(leader), ballot) {
                let until = self.now + 2 * crate::cluster::LEASE_TICKS * TICK_UNITS;
                self.heal_watch = Some((leader, ballot, until));
            }
        }
        self.blocked.clear();
    }

    /// `id` is running and exchanges messages both ways with a quorum (itself
    /// included) of running nodes.
    pub(crate) fn reaches_quorum(&self, id: NodeId) -> bool {
        let running = |node: NodeId| {
            self.nodes
                .get(&node)
                .is_some_and(|n| n.is_up() && n.paused_until.is_none())
        };
        if !running(id) {
            return false;
        }
        let quorum = self.options.nodes as usize / 2 + 1;
        let reachable = self
            .nodes
            .keys()
            .filter(|other| {
                running(**other)
                    && (**other == id
                        || (!self.blocked.contains(&(id, **other))
                            && !self.blocked.contains(&(**other, id))))
            })
            .count();
        reachable >= quorum
    }

    pub(crate) fn heal(&mut self) {
        self.faulty = false;
        self.heal_network();
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if self.nodes[&id].paused_until.is_some() {
                self.resume(id);
            }
            if !self.nodes[&id].is_up() {
                self.restart(id);
            }
        }
        self.healed_at = Some(self.now);
        self.trace(|| "healed: no more faults".to_string());
    }
}
