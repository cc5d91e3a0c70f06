//! Randomized schedules against the core alone: messages delivered in random order,
//! lost and duplicated; persists completing late; nodes crashing (losing what was not
//! yet durable) and recovering. After every step, agreement and the prefix property
//! are checked; after healing, the cluster must converge and commit a fresh command.
//! The whole-cluster simulator with clients and linearizability lives in `synod-sim`.

use crate::*;
use bytes::Bytes;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

struct World {
    rng: ChaCha8Rng,
    configs: BTreeMap<NodeId, Config>,
    nodes: BTreeMap<NodeId, Node>,
    durable: BTreeMap<NodeId, DurableState>,
    unsynced: BTreeMap<NodeId, Vec<PersistRequest>>,
    network: Vec<Envelope>,
    chosen: BTreeMap<Slot, Value>,
    delivered: BTreeMap<NodeId, Vec<(Slot, Value)>>,
    seed: u64,
}

impl World {
    fn new(seed: u64, n: u64, mode: Mode) -> World {
        let configs: BTreeMap<NodeId, Config> = (1..=n)
            .map(|id| {
                let mut config = Config::new(id, (1..=n).collect());
                config.mode = mode;
                config.seed = seed * 31 + id;
                config.max_batch_commands = 4;
                config.max_inflight_slots = 8;
                (id, config)
            })
            .collect();
        World {
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: configs
                .iter()
                .map(|(id, c)| (*id, Node::new(c.clone()).unwrap()))
                .collect(),
            durable: configs
                .keys()
                .map(|id| (*id, DurableState::default()))
                .collect(),
            unsynced: configs.keys().map(|id| (*id, Vec::new())).collect(),
            configs,
            network: Vec::new(),
            chosen: BTreeMap::new(),
            delivered: BTreeMap::new(),
            seed,
        }
    }

    fn drain(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        while node.has_ready() {
            let ready = node.take_ready();
            if let Some(persist) = ready.persist {
                self.unsynced.get_mut(&id).unwrap().push(persist);
            }
            self.network.extend(ready.messages);
            for committed in ready.committed {
                match self.chosen.get(&committed.slot) {
                    Some(value) => assert_eq!(
                        value, &committed.value,
                        "seed {}: agreement violated at slot {}",
                        self.seed, committed.slot
                    ),
                    None => {
                        self.chosen.insert(committed.slot, committed.value.clone());
                    }
                }
                let log = self.delivered.entry(id).or_default();
                let expected = log
                    .last()
                    .map(|(slot, _)| slot + 1)
                    .unwrap_or(committed.slot);
                assert_eq!(
                    committed.slot, expected,
                    "seed {}: node {id} skipped a slot",
                    self.seed
                );
                log.push((committed.slot, committed.value));
            }
            for event in ready.events {
                if let Event::SnapshotNeeded { .. } = event {
                    panic!("no compaction in this test");
                }
            }
        }
    }

    fn sync_one(&mut self, id: NodeId) {
        let unsynced = self.unsynced.get_mut(&id).unwrap();
        if unsynced.is_empty() {
            return;
        }
        let persist = unsynced.remove(0);
        self.durable.get_mut(&id).unwrap().apply_all(&persist.ops);
        self.nodes.get_mut(&id).unwrap().on_persisted(persist.id);
        self.drain(id);
    }

    fn deliver(&mut self, index: usize, drop: bool, duplicate: bool) {
        let envelope = if duplicate {
            self.network[index].clone()
        } else {
            self.network.swap_remove(index)
        };
        if drop {
            return;
        }
        let to = envelope.to;
        self.nodes.get_mut(&to).unwrap().step(envelope).unwrap();
        self.drain(to);
    }

    fn crash_and_recover(&mut self, id: NodeId) {
        self.unsynced.get_mut(&id).unwrap().clear();
        self.network.retain(|e| e.to != id);
        let node = Node::recover(self.configs[&id].clone(), self.durable[&id].clone()).unwrap();
        self.nodes.insert(id, node);
        // The recovered node re-delivers from slot 1: its state machine starts empty.
        self.delivered.remove(&id);
        self.drain(id);
    }

    fn step(&mut self, faults: bool, proposals: &mut u64) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=49 if !self.network.is_empty() => {
                let index = self.rng.gen_range(0..self.network.len());
                let drop = faults && self.rng.gen_bool(0.05);
                let duplicate = faults && self.rng.gen_bool(0.03);
                self.deliver(index, drop, duplicate);
            }
            50..=69 => {
                let id = ids[self.rng.gen_range(0..ids.len())];
                self.sync_one(id);
            }
            70..=89 => {
                for id in ids {
                    self.nodes.get_mut(&id).unwrap().tick();
                    self.drain(id);
                }
            }
            90..=97 => {
                let id = ids[self.rng.gen_range(0..ids.len())];
                let command = Bytes::from(format!("cmd-{}", *proposals));
                if self.nodes.get_mut(&id).unwrap().propose(command).is_ok() {
                    *proposals += 1;
                }
                self.drain(id);
            }
            98..=99 if faults && self.rng.gen_bool(0.1) => {
                let id = ids[self.rng.gen_range(0..ids.len())];
                self.crash_and_recover(id);
            }
            _ => {}
        }
    }

    /// Every message delivered, every persist synced, every node ticked: until quiet.
    fn heal_round(&mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            while !self.unsynced[&id].is_empty() {
                self.sync_one(id);
            }
        }
        let mut delivered = 0;
        while !self.network.is_empty() {
            delivered += 1;
            assert!(
                delivered < 200_000,
                "seed {}: the network never went quiet: {:?}",
                self.seed,
                self.network.iter().take(6).collect::<Vec<_>>()
            );
            let index = self.rng.gen_range(0..self.network.len());
            self.deliver(index, false, false);
            for id in self.nodes.keys().copied().collect::<Vec<_>>() {
                while !self.unsynced[&id].is_empty() {
                    self.sync_one(id);
                }
            }
        }
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.nodes.get_mut(&id).unwrap().tick();
            self.drain(id);
        }
    }

    fn check_prefixes(&self) {
        for (id, log) in &self.delivered {
            for (slot, value) in log {
                assert_eq!(
                    self.chosen.get(slot),
                    Some(value),
                    "seed {}: node {id} delivered something else at slot {slot}",
                    self.seed
                );
            }
        }
    }
}

fn run(seed: u64, n: u64, mode: Mode) {
    let mut world = World::new(seed, n, mode);
    let mut proposals = 0;
    for _ in 0..3_000 {
        world.step(true, &mut proposals);
    }
    world.check_prefixes();
    // Heal: no more faults; the cluster must converge and take a new command.
    for _ in 0..300 {
        world.heal_round();
    }
    let commits: Vec<Slot> = world
        .nodes
        .values()
        .map(|n| n.status().commit_index)
        .collect();
    assert!(
        commits.windows(2).all(|w| w[0] == w[1]),
        "seed {seed} ({mode:?}): replicas did not converge after healing: {commits:?}"
    );
    let before = commits[0];
    let proposer = match mode {
        Mode::MultiPaxos => world
            .nodes
            .values()
            .find(|n| n.status().role == Role::Leader)
            .map(|n| n.id())
            .unwrap_or_else(|| panic!("seed {seed}: no leader after healing")),
        Mode::PerSlot => 1,
    };
    world
        .nodes
        .get_mut(&proposer)
        .unwrap()
        .propose(Bytes::from_static(b"final"))
        .unwrap();
    world.drain(proposer);
    for _ in 0..100 {
        world.heal_round();
    }
    for node in world.nodes.values() {
        assert!(
            node.status().commit_index > before,
            "seed {seed} ({mode:?}): node {} did not commit a command after healing",
            node.id()
        );
    }
    world.check_prefixes();
}

#[test]
fn random_schedules_multi_paxos_three_nodes() {
    for seed in 0..60 {
        run(seed, 3, Mode::MultiPaxos);
    }
}

#[test]
fn random_schedules_multi_paxos_five_nodes() {
    for seed in 100..130 {
        run(seed, 5, Mode::MultiPaxos);
    }
}

#[test]
fn random_schedules_per_slot_three_nodes() {
    for seed in 200..240 {
        run(seed, 3, Mode::PerSlot);
    }
}
