//! Scenario tests named after the protocol situation, driven step by step through a
//! tiny in-memory cluster (FIFO network, instant persists unless told otherwise). The
//! seeded, fault-injecting simulator lives in `synod-sim`.

use crate::*;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

struct Cluster {
    configs: BTreeMap<NodeId, Config>,
    nodes: BTreeMap<NodeId, Node>,
    /// Nodes whose disk never completes a write (until they crash): their persist
    /// requests wait here.
    stalled_disks: BTreeMap<NodeId, Vec<PersistRequest>>,
    durable: BTreeMap<NodeId, DurableState>,
    network: VecDeque<Envelope>,
    cut: BTreeSet<(NodeId, NodeId)>,
    delivered: BTreeMap<NodeId, Vec<Committed>>,
    events: BTreeMap<NodeId, Vec<Event>>,
    sent: Vec<Envelope>,
    snapshots_sent: Vec<(NodeId, NodeId, Slot)>,
    /// (from, to, kind): the next message of that kind on that link is lost ("snapshot"
    /// for a snapshot stream).
    lose: Vec<(NodeId, NodeId, &'static str)>,
}

fn config(id: NodeId, n: u64, mode: Mode) -> Config {
    let mut config = Config::new(id, (1..=n).collect());
    config.mode = mode;
    config.seed = 7 * id + 1;
    config
}

fn cmd(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

impl Cluster {
    fn new(n: u64, mode: Mode) -> Cluster {
        Cluster::with(n, |id| config(id, n, mode))
    }

    fn with(n: u64, make: impl Fn(NodeId) -> Config) -> Cluster {
        let configs: BTreeMap<NodeId, Config> = (1..=n).map(|id| (id, make(id))).collect();
        Cluster {
            nodes: configs
                .iter()
                .map(|(id, config)| (*id, Node::new(config.clone()).unwrap()))
                .collect(),
            configs,
            stalled_disks: BTreeMap::new(),
            durable: (1..=n).map(|id| (id, DurableState::default())).collect(),
            network: VecDeque::new(),
            cut: BTreeSet::new(),
            delivered: BTreeMap::new(),
            events: BTreeMap::new(),
            sent: Vec::new(),
            snapshots_sent: Vec::new(),
            lose: Vec::new(),
        }
    }

    /// Consumes a matching `lose` entry: true if this message is lost.
    fn loses(&mut self, from: NodeId, to: NodeId, kind: &str) -> bool {
        match self
            .lose
            .iter()
            .position(|(f, t, k)| (*f, *t, *k) == (from, to, kind))
        {
            Some(index) => {
                self.lose.remove(index);
                true
            }
            None => false,
        }
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Drains every node's Ready (persisting at once) and delivers messages until quiet.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            for id in self.nodes.keys().copied().collect::<Vec<_>>() {
                let node = self.nodes.get_mut(&id).unwrap();
                if !node.has_ready() {
                    continue;
                }
                let ready = node.take_ready();
                progress = true;
                if let Some(persist) = ready.persist {
                    match self.stalled_disks.get_mut(&id) {
                        Some(queue) => queue.push(persist),
                        None => {
                            self.durable.get_mut(&id).unwrap().apply_all(&persist.ops);
                            node.on_persisted(persist.id);
                        }
                    }
                }
                self.delivered
                    .entry(id)
                    .or_default()
                    .extend(ready.committed);
                for event in &ready.events {
                    // The runtime's part: stream the snapshot, the peer installs it.
                    if let Event::SnapshotNeeded { peer, slot } = event {
                        if !self.cut.contains(&(id, *peer)) && !self.loses(id, *peer, "snapshot") {
                            self.snapshots_sent.push((id, *peer, *slot));
                            self.nodes.get_mut(peer).unwrap().install_snapshot(*slot);
                        }
                    }
                }
                self.events.entry(id).or_default().extend(ready.events);
                for envelope in ready.messages {
                    if envelope.from != envelope.to {
                        self.sent.push(envelope.clone());
                    }
                    self.network.push_back(envelope);
                }
            }
            if let Some(envelope) = self.network.pop_front() {
                progress = true;
                let lost = self.loses(envelope.from, envelope.to, envelope.message.kind());
                if !lost && !self.cut.contains(&(envelope.from, envelope.to)) {
                    if let Some(node) = self.nodes.get_mut(&envelope.to) {
                        node.step(envelope).unwrap();
                    }
                }
            }
            if !progress {
                return;
            }
        }
        panic!("cluster did not settle");
    }

    fn tick(&mut self, ticks: u64) {
        for _ in 0..ticks {
            for node in self.nodes.values_mut() {
                node.tick();
            }
            self.settle();
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .find(|node| node.status().role == Role::Leader)
            .map(|node| node.id())
    }

    fn elect(&mut self) -> NodeId {
        for _ in 0..200 {
            self.tick(1);
            if let Some(leader) = self.leader() {
                return leader;
            }
        }
        panic!("no leader elected");
    }

    /// Cuts `id` off from every other node (it still talks to itself).
    fn isolate(&mut self, id: NodeId) {
        for other in self
            .nodes
            .keys()
            .copied()
            .filter(|other| *other != id)
            .collect::<Vec<_>>()
        {
            self.cut.insert((id, other));
            self.cut.insert((other, id));
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// The node crashes and restarts from what its disk holds: writes still waiting on
    /// a stalled disk are lost, and the disk works again.
    fn crash_and_restart(&mut self, id: NodeId) {
        self.stalled_disks.remove(&id);
        let durable = self.durable[&id].clone();
        let node = Node::recover(self.configs[&id].clone(), durable).unwrap();
        self.nodes.insert(id, node);
        self.delivered.remove(&id);
    }

    /// No two nodes delivered different values for one slot.
    fn assert_agreement(&self) {
        let mut chosen: BTreeMap<Slot, (NodeId, Value)> = BTreeMap::new();
        for (id, delivered) in &self.delivered {
            for committed in delivered {
                match chosen.get(&committed.slot) {
                    Some((first, value)) => assert_eq!(
                        value, &committed.value,
                        "agreement: slot {} is {:?} at node {first} but {:?} at node {id}",
                        committed.slot, value, committed.value
                    ),
                    None => {
                        chosen.insert(committed.slot, (*id, committed.value.clone()));
                    }
                }
            }
        }
    }

    /// Cuts both directions between `a` and `b`.
    fn cut_link(&mut self, a: NodeId, b: NodeId) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    fn value_at(&self, id: NodeId, slot: Slot) -> Option<Value> {
        self.delivered
            .get(&id)?
            .iter()
            .find(|c| c.slot == slot)
            .map(|c| c.value.clone())
    }

    fn delivered_commands(&self, id: NodeId) -> Vec<Bytes> {
        self.delivered
            .get(&id)
            .map(|entries| {
                entries
                    .iter()
                    .flat_map(|c| c.value.commands().to_vec())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn count_sent(&self, kind: &str) -> usize {
        self.sent
            .iter()
            .filter(|e| e.message.kind() == kind)
            .count()
    }
}

#[test]
fn stable_leader_runs_phase1_once_then_phase2_only() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let prepares_before = cluster.count_sent("prepare");
    let accepts_before = cluster.count_sent("accept");
    for i in 0..10 {
        cluster.node(leader).propose(cmd(&format!("c{i}"))).unwrap();
        cluster.settle();
    }
    assert_eq!(
        cluster.count_sent("prepare"),
        prepares_before,
        "no Phase 1 in the steady state"
    );
    // One Accept per peer per command: Phase 2 only.
    assert_eq!(cluster.count_sent("accept") - accepts_before, 10 * 2);
    let skipped: Vec<bool> = cluster.events[&leader]
        .iter()
        .filter_map(|e| match e {
            Event::ProposalAssigned { phase1_skipped, .. } => Some(*phase1_skipped),
            _ => None,
        })
        .collect();
    assert_eq!(skipped.len(), 10);
    assert!(
        !skipped[0],
        "the first proposal of a leadership is the one Phase 1 ran for"
    );
    assert!(
        skipped[1..].iter().all(|s| *s),
        "later proposals skip Phase 1"
    );
    assert_eq!(cluster.delivered_commands(leader).len(), 10);
}

#[test]
fn followers_learn_the_commit_point_without_a_message_per_slot() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    for i in 0..5 {
        cluster.node(leader).propose(cmd(&format!("c{i}"))).unwrap();
        cluster.settle();
    }
    cluster.tick(3); // a heartbeat carries the last commit point
    for id in 1..=3 {
        assert_eq!(cluster.delivered_commands(id).len(), 5, "node {id}");
    }
    assert_eq!(
        cluster.count_sent("chosen"),
        0,
        "no catch-up needed in the steady state"
    );
}

#[test]
fn promise_leaves_only_after_its_persist() {
    let mut node = Node::new(config(1, 3, Mode::MultiPaxos)).unwrap();
    node.step(Envelope {
        from: 2,
        to: 1,
        message: Message::Prepare {
            ballot: Ballot::new(1, 2),
            from_slot: 1,
            transfer_from: None,
        },
    })
    .unwrap();
    let ready = node.take_ready();
    let persist = ready.persist.expect("the promise must be persisted");
    assert_eq!(persist.ops, vec![PersistOp::Promise(Ballot::new(1, 2))]);
    assert!(
        ready.messages.is_empty(),
        "no Promise before the persist completes"
    );
    node.on_persisted(persist.id);
    let ready = node.take_ready();
    assert!(matches!(
        ready.messages[..],
        [Envelope {
            to: 2,
            message: Message::Promise { .. },
            ..
        }]
    ));
}

#[test]
fn accepted_leaves_only_after_its_persist() {
    let mut node = Node::new(config(1, 3, Mode::MultiPaxos)).unwrap();
    node.step(Envelope {
        from: 2,
        to: 1,
        message: Message::Accept {
            ballot: Ballot::new(1, 2),
            first_slot: 1,
            values: vec![Value::Commands(vec![cmd("x")])],
            commit_index: 0,
            sent_at: 0,
        },
    })
    .unwrap();
    let ready = node.take_ready();
    let persist = ready.persist.expect("the accept must be persisted");
    assert!(ready.messages.is_empty());
    // A second input before the persist completes does not release it either.
    node.tick();
    assert!(node
        .take_ready()
        .messages
        .iter()
        .all(|m| m.message.kind() != "accepted"));
    node.on_persisted(persist.id);
    let ready = node.take_ready();
    assert!(ready
        .messages
        .iter()
        .any(|m| m.message.kind() == "accepted"));
}

#[test]
fn new_leader_adopts_highest_ballot_value_and_fills_holes_with_noops() {
    // Slot 1: node 1 accepted "old" at b1.1, node 2 accepted "new" at b2.2.
    // Slot 3: node 2 accepted "late" at b2.2. Slot 2: nobody accepted anything.
    let b1 = Ballot::new(1, 1);
    let b2 = Ballot::new(2, 2);
    let mut state1 = DurableState::default();
    state1.apply(&PersistOp::Promise(b1));
    state1.apply(&PersistOp::Accept(Entry {
        slot: 1,
        ballot: b1,
        value: Value::Commands(vec![cmd("old")]),
    }));
    let mut state2 = DurableState::default();
    state2.apply(&PersistOp::Promise(b2));
    state2.apply(&PersistOp::Accept(Entry {
        slot: 1,
        ballot: b2,
        value: Value::Commands(vec![cmd("new")]),
    }));
    state2.apply(&PersistOp::Accept(Entry {
        slot: 3,
        ballot: b2,
        value: Value::Commands(vec![cmd("late")]),
    }));
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    cluster.nodes.insert(
        1,
        Node::recover(config(1, 3, Mode::MultiPaxos), state1).unwrap(),
    );
    cluster.nodes.insert(
        2,
        Node::recover(config(2, 3, Mode::MultiPaxos), state2).unwrap(),
    );
    // Their restart quiet period (a lease they may have granted) has passed.
    cluster.node(1).lease = None;
    cluster.node(2).lease = None;
    // Node 3 campaigns; it can only win with a quorum that includes node 1 or node 2.
    cluster.node(3).start_phase1();
    cluster.settle();
    if cluster.leader() != Some(3) {
        cluster.node(3).election_deadline = 0;
        cluster.tick(1);
    }
    let leader = cluster.leader().expect("a leader");
    cluster.tick(3);
    let log: Vec<Value> = cluster.delivered[&leader]
        .iter()
        .map(|c| c.value.clone())
        .collect();
    assert!(log.len() >= 3, "log: {log:?}");
    // Whether node 1 or 2 was in the quorum, "new" (the highest ballot) must win when
    // node 2 was heard; with only node 1 heard, "old" is the only value a quorum could
    // have chosen. Node 3 wins with both here (FIFO, all reachable).
    assert_eq!(log[0], Value::Commands(vec![cmd("new")]));
    assert_eq!(log[1], Value::Noop);
    assert_eq!(log[2], Value::Commands(vec![cmd("late")]));
}

#[test]
fn follower_under_lease_refuses_a_competing_prepare() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let rival = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    let promised = cluster.node(follower).status().promised;
    cluster
        .node(follower)
        .step(Envelope {
            from: rival,
            to: follower,
            message: Message::Prepare {
                ballot: Ballot::new(promised.round + 5, rival),
                from_slot: 1,
                transfer_from: None,
            },
        })
        .unwrap();
    let ready = cluster.node(follower).take_ready();
    assert!(ready.persist.is_none(), "nothing promised");
    assert!(matches!(
        ready.messages[..],
        [Envelope { message: Message::Preempted { leader: Some(l), .. }, .. }] if l == leader
    ));
    assert_eq!(cluster.node(follower).status().promised, promised);
}

#[test]
fn isolated_leader_is_replaced_and_rejoins_as_follower() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let old = cluster.elect();
    cluster.node(old).propose(cmd("before")).unwrap();
    cluster.settle();
    cluster.isolate(old);
    let mut new = None;
    for _ in 0..200 {
        cluster.tick(1);
        if let Some(l) = cluster
            .nodes
            .values()
            .find(|n| n.id() != old && n.status().role == Role::Leader)
        {
            new = Some(l.id());
            break;
        }
    }
    let new = new.expect("the majority elects a new leader");
    cluster.node(new).propose(cmd("after")).unwrap();
    cluster.settle();
    cluster.tick(30);
    assert_ne!(
        cluster.node(old).status().role,
        Role::Leader,
        "the isolated leader stepped down"
    );
    cluster.heal();
    cluster.tick(40);
    let expected = cluster.delivered_commands(new);
    assert_eq!(expected, vec![cmd("before"), cmd("after")]);
    assert_eq!(
        cluster.delivered_commands(old),
        expected,
        "the old leader caught up"
    );
}

#[test]
fn lagging_follower_catches_up_after_a_partition() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    cluster.isolate(lagging);
    for i in 0..600 {
        cluster.node(leader).propose(cmd(&format!("c{i}"))).unwrap();
        cluster.settle();
    }
    cluster.heal();
    cluster.tick(40);
    assert_eq!(cluster.delivered_commands(lagging).len(), 600);
    assert!(
        cluster.count_sent("chosen") >= 3,
        "catch-up came in bounded chunks"
    );
}

#[test]
fn restarted_node_recovers_its_promise_and_log() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    for i in 0..5 {
        cluster.node(leader).propose(cmd(&format!("c{i}"))).unwrap();
        cluster.settle();
    }
    cluster.tick(3);
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let before = cluster.node(follower).status();
    let durable = cluster.durable[&follower].clone();
    let restarted = Node::recover(config(follower, 3, Mode::MultiPaxos), durable).unwrap();
    assert_eq!(restarted.status().promised, before.promised);
    assert_eq!(restarted.status().commit_index, before.commit_index);
    cluster.nodes.insert(follower, restarted);
    cluster.delivered.remove(&follower);
    cluster.tick(3);
    assert_eq!(
        cluster.delivered_commands(follower).len(),
        5,
        "state machine rebuilt from the log"
    );
}

#[test]
fn per_slot_mode_runs_both_phases_for_every_slot() {
    let mut cluster = Cluster::new(3, Mode::PerSlot);
    for i in 0..4 {
        let at = 1 + (i % 3);
        cluster.node(at).propose(cmd(&format!("c{i}"))).unwrap();
        cluster.settle();
        cluster.tick(3); // decisions reach every node before the next proposal
    }
    assert_eq!(
        cluster.count_sent("slot_prepare"),
        4 * 2,
        "Phase 1 for every slot"
    );
    assert_eq!(
        cluster.count_sent("slot_accept"),
        4 * 2,
        "Phase 2 for every slot"
    );
    for id in 1..=3 {
        assert_eq!(cluster.delivered_commands(id).len(), 4, "node {id}");
    }
    let first = cluster.delivered_commands(1);
    assert_eq!(cluster.delivered_commands(2), first);
    assert_eq!(cluster.delivered_commands(3), first);
}

#[test]
fn queue_is_bounded() {
    let mut cfg = config(1, 3, Mode::MultiPaxos);
    cfg.max_pending_commands = 2;
    let mut node = Node::new(cfg).unwrap();
    node.propose(cmd("a")).unwrap();
    node.propose(cmd("b")).unwrap();
    assert_eq!(
        node.propose(cmd("c")),
        Err(ProposeError::Busy { pending: 2 })
    );
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut node = Node::new(config(1, 3, Mode::MultiPaxos)).unwrap();
    let before = node.clone();
    let prepare = |from, to, ballot| Envelope {
        from,
        to,
        message: Message::Prepare {
            ballot,
            from_slot: 1,
            transfer_from: None,
        },
    };
    assert_eq!(
        node.step(prepare(9, 1, Ballot::new(1, 9))),
        Err(StepError::UnknownPeer(9))
    );
    assert_eq!(
        node.step(prepare(2, 3, Ballot::new(1, 2))),
        Err(StepError::WrongRecipient { to: 3 })
    );
    assert!(matches!(
        node.step(prepare(2, 1, Ballot::new(1, 3))),
        Err(StepError::ForgedBallot { .. })
    ));
    assert_eq!(node, before);
    assert!(Node::new(Config::new(4, vec![1, 2, 3])).is_err());
}

#[test]
fn propose_at_follows_the_seed_task() {
    // The seeds' multi_paxos_propose on a single node: slot 1 needs Phase 1, slot 2 not.
    let mut cluster = Cluster::new(1, Mode::MultiPaxos);
    let first = cluster.node(1).propose_at(1, cmd("cmd1")).unwrap();
    cluster.elect();
    cluster.settle();
    let second = cluster.node(1).propose_at(2, cmd("cmd2")).unwrap();
    cluster.settle();
    // Far ahead: the gap is filled with no-ops. Taken: the next free slot instead.
    let far = cluster.node(1).propose_at(5, cmd("cmd5")).unwrap();
    cluster.settle();
    let taken = cluster.node(1).propose_at(2, cmd("again")).unwrap();
    cluster.settle();
    let assigned: BTreeMap<ProposalId, (Slot, bool)> = cluster.events[&1]
        .iter()
        .filter_map(|e| match e {
            Event::ProposalAssigned {
                id,
                slot,
                phase1_skipped,
            } => Some((*id, (*slot, *phase1_skipped))),
            _ => None,
        })
        .collect();
    assert_eq!(assigned[&first], (1, false));
    assert_eq!(assigned[&second], (2, true));
    assert_eq!(assigned[&far], (5, true));
    assert_eq!(assigned[&taken].0, 6);
    let node = cluster.node(1);
    assert_eq!(
        node.slot_value(2),
        Some((Value::Commands(vec![cmd("cmd2")]), true))
    );
    assert_eq!(node.slot_value(3), Some((Value::Noop, true)));
    assert_eq!(node.slot_value(4), Some((Value::Noop, true)));
    assert_eq!(
        node.propose_at(1_000, cmd("x")),
        Err(ProposeError::SlotTooFar {
            slot: 1_000,
            next_slot: 7
        })
    );
}

#[test]
fn lagging_follower_gets_a_snapshot_when_the_entries_were_compacted() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != lagging).unwrap();
    cluster.isolate(lagging);
    for i in 0..50 {
        cluster.node(leader).propose(cmd(&format!("c{i}"))).unwrap();
        cluster.settle();
    }
    cluster.tick(3);
    cluster.node(leader).compact(40);
    cluster.node(other).compact(40);
    cluster.settle();
    assert_eq!(cluster.node(leader).first_log_slot(), 41);
    assert!(
        cluster.durable[&leader]
            .entries
            .keys()
            .all(|slot| *slot > 40),
        "storage dropped the prefix"
    );
    cluster.heal();
    cluster.tick(20);
    assert!(cluster
        .snapshots_sent
        .iter()
        .any(|(_, to, slot)| *to == lagging && *slot == 40));
    let status = cluster.node(lagging).status();
    assert_eq!(status.commit_index, 50);
    let delivered: Vec<Slot> = cluster.delivered[&lagging].iter().map(|c| c.slot).collect();
    assert_eq!(
        delivered,
        (41..=50).collect::<Vec<_>>(),
        "the log resumes after the snapshot"
    );
}

#[test]
fn new_leader_never_fills_noops_over_slots_compacted_elsewhere() {
    // Nodes 1 and 2 hold slots 1..=10 only in a snapshot; node 3 knows nothing.
    let mut compacted = DurableState::default();
    compacted.apply(&PersistOp::Promise(Ballot::new(1, 1)));
    compacted.apply(&PersistOp::Snapshot { slot: 10 });
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    for id in [1, 2] {
        cluster.nodes.insert(
            id,
            Node::recover(config(id, 3, Mode::MultiPaxos), compacted.clone()).unwrap(),
        );
        cluster.node(id).lease = None; // the restart quiet period has passed
    }
    cluster.node(3).start_phase1();
    cluster.settle();
    assert_eq!(cluster.leader(), Some(3));
    let noops_below_10 = cluster
        .sent
        .iter()
        .any(|e| matches!(&e.message, Message::Accept { first_slot, .. } if *first_slot <= 10));
    assert!(!noops_below_10, "chosen slots were overwritten with no-ops");
    assert!(cluster
        .snapshots_sent
        .iter()
        .any(|(_, to, slot)| *to == 3 && *slot == 10));
    assert_eq!(cluster.node(3).status().commit_index, 10);
    cluster.node(3).propose(cmd("next")).unwrap();
    cluster.settle();
    assert_eq!(
        cluster.node(3).slot_value(11),
        Some((Value::Commands(vec![cmd("next")]), true))
    );
}

fn reads(cluster: &Cluster, id: NodeId) -> Vec<Event> {
    cluster.events[&id]
        .iter()
        .filter(|e| matches!(e, Event::ReadReady { .. } | Event::ReadFailed { .. }))
        .cloned()
        .collect()
}

#[test]
fn leader_with_a_lease_answers_reads_without_a_round_trip() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    cluster.node(leader).propose(cmd("x")).unwrap();
    cluster.settle();
    let sent_before = cluster.sent.len();
    cluster.node(leader).read_index(7);
    cluster.settle();
    assert_eq!(
        cluster.sent.len(),
        sent_before,
        "a lease read sends nothing"
    );
    assert_eq!(
        reads(&cluster, leader),
        vec![Event::ReadReady {
            request: 7,
            read_index: 1,
            path: ReadPath::Lease,
        }]
    );
}

#[test]
fn leader_without_a_lease_confirms_with_one_quorum_round() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    // Let the lease lapse: the leader's clock runs, nobody answers.
    for _ in 0..cluster.node(leader).config().read_lease_ticks() + 1 {
        cluster.node(leader).tick();
        let _ = cluster.node(leader).take_ready();
    }
    let heartbeats_before = cluster.count_sent("heartbeat");
    cluster.node(leader).read_index(9);
    cluster.settle();
    assert!(
        cluster.count_sent("heartbeat") > heartbeats_before,
        "read-index round"
    );
    assert!(matches!(
        reads(&cluster, leader)[..],
        [Event::ReadReady { request: 9, .. }]
    ));
}

#[test]
fn read_at_a_follower_goes_through_the_leader() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    for i in 0..3 {
        cluster.node(leader).propose(cmd(&format!("c{i}"))).unwrap();
        cluster.settle();
    }
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.node(follower).read_index(1);
    cluster.settle();
    assert_eq!(
        reads(&cluster, follower),
        vec![Event::ReadReady {
            request: 1,
            read_index: 3,
            path: ReadPath::Forwarded,
        }]
    );
}

#[test]
fn isolated_leader_cannot_confirm_a_read() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    cluster.isolate(leader);
    for _ in 0..cluster.node(leader).config().read_lease_ticks() + 1 {
        cluster.node(leader).tick();
        cluster.settle();
    }
    cluster.node(leader).read_index(5);
    cluster.settle();
    assert!(
        reads(&cluster, leader).is_empty(),
        "no quorum: no answer yet"
    );
    cluster.tick(40);
    assert_eq!(
        reads(&cluster, leader),
        vec![Event::ReadFailed { request: 5 }],
        "it failed once the leader stepped down"
    );
}

#[test]
fn restarted_acceptor_waits_out_any_lease_it_granted() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let rival = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    let durable = cluster.durable[&follower].clone();
    let mut restarted = Node::recover(config(follower, 3, Mode::MultiPaxos), durable).unwrap();
    let promised = restarted.status().promised;
    let prepare = Envelope {
        from: rival,
        to: follower,
        message: Message::Prepare {
            ballot: Ballot::new(promised.round + 1, rival),
            from_slot: 1,
            transfer_from: None,
        },
    };
    restarted.step(prepare.clone()).unwrap();
    assert_eq!(
        restarted.status().promised,
        promised,
        "no promise inside the quiet period"
    );
    for _ in 0..restarted.config().lease_ticks {
        restarted.tick();
    }
    restarted.step(prepare).unwrap();
    assert_eq!(
        restarted.status().promised,
        Ballot::new(promised.round + 1, rival)
    );
}

/// A follower's client waits on the follower. The leader tells a follower whose
/// forwarded command it just committed at once, instead of leaving it to learn the
/// commit point from the next Accept or heartbeat (a heartbeat interval away when the
/// cluster is otherwise idle).
#[test]
fn follower_learns_the_commit_of_its_forwarded_command_without_waiting() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    cluster
        .node(follower)
        .propose(cmd("from-follower"))
        .unwrap();
    cluster.settle(); // no tick: only messages move
    assert_eq!(
        cluster.delivered_commands(follower),
        vec![cmd("from-follower")],
        "the forwarding follower applied its command with no heartbeat in between"
    );
    assert!(
        cluster.delivered_commands(other).is_empty(),
        "a follower that forwarded nothing learns at the next Accept or heartbeat"
    );
}

/// With no Accept to carry it, the commit point reaches every follower within two of the
/// leader's ticks rather than a heartbeat interval later (a follower's watchers and
/// serializable reads wait for it); an Accept that leaves anyway carries it, and then no
/// heartbeat is added.
#[test]
fn every_follower_hears_the_commit_point_within_two_leader_ticks() {
    let mut cluster = Cluster::with(3, |id| {
        let mut config = config(id, 3, Mode::MultiPaxos);
        config.heartbeat_interval_ticks = 5;
        config.election_timeout_ticks = 20;
        config
    });
    let leader = cluster.elect();
    let followers: Vec<NodeId> = (1..=3).filter(|id| *id != leader).collect();
    cluster.node(leader).propose(cmd("first")).unwrap();
    cluster.settle();
    cluster.node(leader).propose(cmd("second")).unwrap();
    cluster.settle(); // no tick: only messages move
    for follower in &followers {
        assert_eq!(
            cluster.delivered_commands(*follower),
            vec![cmd("first")],
            "the second Accept carried the first commit point, nothing told the second"
        );
    }
    let heartbeats = cluster.count_sent("heartbeat");
    cluster.tick(1);
    assert_eq!(
        cluster.count_sent("heartbeat"),
        heartbeats,
        "a commit point younger than a tick waits: the next command's Accept may carry it"
    );
    cluster.tick(1);
    for follower in &followers {
        assert_eq!(
            cluster.delivered_commands(*follower),
            vec![cmd("first"), cmd("second")]
        );
    }
    assert_eq!(cluster.count_sent("heartbeat") - heartbeats, 2, "one each");
    assert_eq!(cluster.node(leader).status().tick_commit_notices, 2);
    cluster.tick(1);
    assert_eq!(
        cluster.count_sent("heartbeat") - heartbeats,
        2,
        "told once, a follower is not told again until the point moves or a heartbeat is due"
    );
}

#[test]
fn survivors_campaign_within_a_quarter_timeout_of_their_leases_running_out() {
    // Failover time is lease + jitter: a follower's timer runs out at most
    // election_timeout / 4 after its lease on the silent leader does (it used to be a
    // whole random timeout, [T, 2T)).
    for seed in 0..40u64 {
        let mut cluster = Cluster::with(3, |id| {
            let mut config = config(id, 3, Mode::MultiPaxos);
            config.election_timeout_ticks = 40;
            config.lease_ticks = 40;
            config.heartbeat_interval_ticks = 4;
            config.seed = seed * 10 + id;
            config
        });
        let old = cluster.elect();
        cluster.tick(10);
        cluster.isolate(old);
        let mut waited = 0;
        let new = loop {
            cluster.tick(1);
            waited += 1;
            if let Some(node) = cluster
                .nodes
                .values()
                .find(|node| node.id() != old && node.status().role == Role::Leader)
            {
                break node.id();
            }
            assert!(waited < 200, "seed {seed}: no new leader");
        };
        // Last heartbeat at most 4 ticks before the cut; lease 40; jitter < 10; one
        // tick for Phase 1 to finish in this instant network.
        assert!(
            (36..=40 + 10 + 1).contains(&waited),
            "seed {seed}: node {new} led {waited} ticks after the leader went silent"
        );
    }
}

// ---- Safety scenarios found by review (each failed before its fix) ----

/// Steps `id` through Phase 1 until it leads (a first attempt may be preempted by a
/// ballot it had not heard of).
fn campaign(cluster: &mut Cluster, id: NodeId) {
    for _ in 0..4 {
        cluster.node(id).start_phase1();
        cluster.settle();
        if cluster.node(id).status().role == Role::Leader {
            return;
        }
    }
    panic!("node {id} did not win");
}

/// The old leader, cut off, accepted "stale" in slot 1 alone; the other two chose
/// "fresh" there and one of them compacted it. When the old node wins again with the
/// compactor's promise (which reports only its commit point for slot 1), it must not
/// re-propose its own never-chosen value: the slot is chosen, the value is fetched.
#[test]
fn compacted_promise_never_lets_a_stale_value_replace_a_chosen_one() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    campaign(&mut cluster, 1);
    cluster.isolate(1);
    cluster.node(1).propose(cmd("stale")).unwrap();
    cluster.settle();
    for id in [2, 3] {
        cluster.node(id).lease = None; // their lease on node 1 ran out
    }
    campaign(&mut cluster, 2);
    cluster.node(2).propose(cmd("fresh")).unwrap();
    cluster.settle();
    cluster.node(2).heartbeat_silent_peers(true); // node 3 learns the commit point
    cluster.settle();
    assert_eq!(
        cluster.value_at(3, 1),
        Some(Value::Commands(vec![cmd("fresh")]))
    );
    cluster.node(3).compact(1);
    cluster.settle();
    assert_eq!(cluster.node(3).first_log_slot(), 2);
    // Node 2 dies; node 1 comes back and wins with node 3's promise.
    cluster.heal();
    cluster.isolate(2);
    cluster.node(3).lease = None;
    campaign(&mut cluster, 1);
    cluster.node(1).propose(cmd("next")).unwrap();
    cluster.settle();
    cluster.assert_agreement();
    assert!(
        !cluster.durable[&3]
            .entries
            .values()
            .any(|(_, value)| *value == Value::Commands(vec![cmd("stale")])),
        "node 3 voted for the stale value"
    );
    assert_eq!(cluster.node(1).status().commit_index, 2);
    assert_eq!(
        cluster.value_at(1, 2),
        Some(Value::Commands(vec![cmd("next")]))
    );
}

#[test]
fn acceptor_gives_no_vote_for_a_slot_it_compacted() {
    let mut compacted = DurableState::default();
    compacted.apply(&PersistOp::Snapshot { slot: 5 });
    let mut node = Node::recover(config(1, 3, Mode::MultiPaxos), compacted).unwrap();
    node.lease = None;
    node.step(Envelope {
        from: 2,
        to: 1,
        message: Message::Accept {
            ballot: Ballot::new(3, 2),
            first_slot: 4,
            values: vec![Value::Noop, Value::Noop, Value::Commands(vec![cmd("x")])],
            commit_index: 0,
            sent_at: 0,
        },
    })
    .unwrap();
    let ready = node.take_ready();
    node.on_persisted(ready.persist.expect("slot 6 and the promise").id);
    let ready = node.take_ready();
    assert!(
        matches!(
            ready.messages[..],
            [Envelope {
                message: Message::Accepted {
                    first_slot: 6,
                    last_slot: 6,
                    ..
                },
                ..
            }]
        ),
        "votes only for the slot it still holds: {:?}",
        ready.messages
    );
    assert!(node.slot_value(4).is_none() && node.slot_value(5).is_none());
}

/// A candidate whose own promise never reached its disk must not have sent Prepare:
/// otherwise it wins on its peers' promises, gets "first" accepted by one of them,
/// crashes, comes back without its ballot, runs the very same ballot again and gets
/// "second" chosen in it — and the leader's commit point then makes the peer holding
/// "first" at that ballot deliver it.
#[test]
fn candidate_that_crashed_before_its_ballot_was_durable_never_reuses_it() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    cluster.stalled_disks.insert(1, Vec::new());
    cluster.node(1).start_phase1();
    cluster.settle();
    assert_eq!(
        cluster.count_sent("prepare"),
        0,
        "Prepare left before the candidate's ballot was durable"
    );
    cluster.cut_link(1, 3);
    cluster.node(1).propose(cmd("first")).unwrap();
    cluster.settle();
    cluster.crash_and_restart(1);
    cluster.heal();
    cluster.cut_link(1, 2);
    cluster.node(3).lease = None;
    campaign(&mut cluster, 1);
    cluster.node(1).propose(cmd("second")).unwrap();
    cluster.settle();
    cluster.heal();
    cluster.node(1).heartbeat_silent_peers(true);
    cluster.settle();
    cluster.tick(5);
    cluster.assert_agreement();
    assert_eq!(
        cluster.value_at(2, 1),
        Some(Value::Commands(vec![cmd("second")]))
    );
}

/// Node 1 leads with nodes 1, 2 and 5 and gets "a" accepted in slot 1 by node 2 only;
/// node 3 then leads with 3, 4 and 5 at a higher ballot and chooses "c" there. A late
/// catch-up reply tells node 1 that slot 1 holds "c". Node 1 must step down: if it kept
/// leading, its commit point would make node 2 mark its own "a" (accepted at node 1's
/// ballot) chosen.
#[test]
fn leader_that_learns_another_value_won_its_slot_steps_down() {
    let mut cluster = Cluster::new(5, Mode::MultiPaxos);
    for (a, b) in [(1, 3), (1, 4), (2, 3), (2, 4)] {
        cluster.cut_link(a, b);
    }
    campaign(&mut cluster, 1);
    cluster.cut_link(1, 5);
    cluster.cut_link(2, 5);
    cluster.node(1).propose(cmd("a")).unwrap();
    cluster.settle();
    for id in [3, 4, 5] {
        cluster.node(id).lease = None;
    }
    campaign(&mut cluster, 3);
    cluster.node(3).propose(cmd("c")).unwrap();
    cluster.settle();
    cluster.node(3).heartbeat_silent_peers(true);
    cluster.settle();
    let entries = cluster.node(5).chosen_entries(1, 10);
    assert_eq!(entries.len(), 1);
    cluster
        .node(1)
        .step(Envelope {
            from: 5,
            to: 1,
            message: Message::Chosen {
                entries,
                commit_index: 1,
            },
        })
        .unwrap();
    cluster.settle();
    assert_ne!(cluster.node(1).status().role, Role::Leader);
    cluster.node(1).heartbeat_silent_peers(true);
    cluster.settle();
    cluster.assert_agreement();
    assert_eq!(
        cluster.value_at(1, 1),
        Some(Value::Commands(vec![cmd("c")]))
    );
    assert_ne!(
        cluster.value_at(2, 1),
        Some(Value::Commands(vec![cmd("a")]))
    );
}

/// A new leader lacks chosen slots that only snapshots hold. Its first catch-up request
/// and then the first snapshot stream are lost: it must keep asking, or it leads forever
/// below a gap (no write applied, no read served).
#[test]
fn new_leader_keeps_asking_for_chosen_slots_it_lacks() {
    let mut compacted = DurableState::default();
    compacted.apply(&PersistOp::Promise(Ballot::new(1, 1)));
    compacted.apply(&PersistOp::Snapshot { slot: 10 });
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    for id in [1, 2] {
        cluster.nodes.insert(
            id,
            Node::recover(config(id, 3, Mode::MultiPaxos), compacted.clone()).unwrap(),
        );
        cluster.node(id).lease = None;
    }
    cluster.lose = vec![
        (3, 1, "catch_up"),
        (3, 2, "catch_up"),
        (1, 3, "snapshot"),
        (2, 3, "snapshot"),
    ];
    campaign(&mut cluster, 3);
    cluster.node(3).propose(cmd("next")).unwrap();
    cluster.settle();
    assert_eq!(
        cluster.node(3).status().commit_index,
        0,
        "the first requests were lost"
    );
    cluster.tick(30);
    assert_eq!(cluster.node(3).status().role, Role::Leader);
    assert_eq!(cluster.node(3).status().commit_index, 11);
    assert_eq!(
        cluster.value_at(3, 11),
        Some(Value::Commands(vec![cmd("next")]))
    );
}

/// The request number of the one `ReadIndex` among `messages`, if exactly one is there.
fn lone_read_index(messages: &[Envelope]) -> Option<u64> {
    let asks: Vec<u64> = messages
        .iter()
        .filter_map(|envelope| match envelope.message {
            Message::ReadIndex { request, .. } => Some(request),
            _ => None,
        })
        .collect();
    match asks[..] {
        [request] => Some(request),
        _ => None,
    }
}

/// Delivers `ask` to `leader` and returns the `ReadIndexReply`s it sends.
fn read_index_replies(cluster: &mut Cluster, leader: NodeId, ask: Envelope) -> Vec<Envelope> {
    cluster.node(leader).step(ask).unwrap();
    cluster
        .node(leader)
        .take_ready()
        .messages
        .into_iter()
        .filter(|e| matches!(e.message, Message::ReadIndexReply { .. }))
        .collect()
}

/// Request numbers restart in every life of a node. A follower asked for read index 1,
/// restarted, and asked for read index 1 again after a write committed: the first life's
/// reply, arriving late, must not confirm the second life's read with the older index.
#[test]
fn read_index_reply_meant_for_an_earlier_life_confirms_nothing() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.node(follower).read_index(1);
    let ask = cluster.node(follower).take_ready().messages;
    assert_eq!(lone_read_index(&ask), Some(1));
    let old_reply = read_index_replies(&mut cluster, leader, ask[0].clone());
    assert_eq!(old_reply.len(), 1);
    cluster.configs.get_mut(&follower).unwrap().incarnation += 1;
    cluster.crash_and_restart(follower);
    cluster.node(leader).heartbeat_silent_peers(true);
    cluster.node(leader).propose(cmd("w")).unwrap();
    cluster.settle();
    cluster.node(follower).read_index(1);
    let _ = cluster.node(follower).take_ready(); // the new request is on its way
    cluster.node(follower).step(old_reply[0].clone()).unwrap();
    let events = cluster.node(follower).take_ready().events;
    assert!(
        !events.iter().any(|e| matches!(e, Event::ReadReady { .. })),
        "a reply of the previous life confirmed a read: {events:?}"
    );
}

/// Reads asked at a follower before it next drains go to the leader in one `ReadIndex`
/// message, and the one reply releases every one of them with the same read index: the
/// leader took that index after all of them were asked for. A read asked after the
/// message left waits for a message of its own.
#[test]
fn reads_asked_at_a_follower_together_share_one_read_index_round_trip() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    cluster.node(leader).propose(cmd("w")).unwrap();
    cluster.settle();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    for request in [7, 8, 9] {
        cluster.node(follower).read_index(request);
    }
    let asks = cluster.node(follower).take_ready().messages;
    assert_eq!(asks.len(), 1, "one message for the three reads: {asks:?}");
    assert_eq!(lone_read_index(&asks), Some(7));
    cluster.node(follower).read_index(10);
    let later = cluster.node(follower).take_ready().messages;
    assert_eq!(lone_read_index(&later), Some(10));
    let replies = read_index_replies(&mut cluster, leader, asks[0].clone());
    assert_eq!(replies.len(), 1, "one reply for the batch");
    let commit_index = cluster.node(leader).status().commit_index;
    cluster.node(follower).step(replies[0].clone()).unwrap();
    let events = cluster.node(follower).take_ready().events;
    let mut ready: Vec<(u64, Slot)> = events
        .iter()
        .filter_map(|event| match event {
            Event::ReadReady {
                request,
                read_index,
                ..
            } => Some((*request, *read_index)),
            _ => None,
        })
        .collect();
    ready.sort();
    assert_eq!(
        ready,
        vec![(7, commit_index), (8, commit_index), (9, commit_index)],
        "{events:?}"
    );
    // The same reply again (a duplicate on the wire) releases nothing more.
    cluster.node(follower).step(replies[0].clone()).unwrap();
    let events = cluster.node(follower).take_ready().events;
    assert!(!events.iter().any(|e| matches!(e, Event::ReadReady { .. })));
}

/// A batch whose leader never answers fails whole after an election timeout, and reads a
/// follower was asked for while it knew no leader fail at once when it drains.
#[test]
fn forwarded_read_batch_without_an_answer_fails_every_read_in_it() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.node(follower).read_index(1);
    cluster.node(follower).read_index(2);
    let asks = cluster.node(follower).take_ready().messages;
    assert_eq!(asks.len(), 1);
    // The ask is lost; nothing from the leader reaches the follower either.
    let timeout = cluster.node(follower).config.election_timeout_ticks;
    let mut failed = Vec::new();
    for _ in 0..timeout {
        cluster.node(follower).tick();
        for event in cluster.node(follower).take_ready().events {
            if let Event::ReadFailed { request } = event {
                failed.push(request);
            }
        }
    }
    failed.sort();
    assert_eq!(failed, vec![1, 2]);
}

/// Without a lease (or in read-index mode) a read is confirmed by a heartbeat round a
/// quorum answers. Acknowledgements of heartbeats sent before the read arrived — in the
/// same tick — prove nothing about the time after it, so they must not count.
#[test]
fn read_round_counts_only_acknowledgements_of_heartbeats_sent_after_the_read() {
    let mut cluster = Cluster::with(3, |id| {
        let mut config = config(id, 3, Mode::MultiPaxos);
        config.read_mode = ReadMode::ReadIndex;
        config
    });
    let leader = cluster.elect();
    cluster.node(leader).heartbeat_silent_peers(true);
    let early = cluster.node(leader).take_ready().messages;
    assert!(!early.is_empty());
    cluster.node(leader).read_index(9);
    let round = cluster.node(leader).take_ready().messages;
    for envelope in early {
        let to = envelope.to;
        cluster.node(to).step(envelope).unwrap();
        let acks = cluster.node(to).take_ready();
        if let Some(persist) = acks.persist {
            cluster.node(to).on_persisted(persist.id);
        }
        let mut acks = acks.messages;
        acks.extend(cluster.node(to).take_ready().messages);
        for ack in acks {
            cluster.node(leader).step(ack).unwrap();
        }
    }
    assert!(
        reads(&cluster, leader).is_empty()
            && !cluster
                .node(leader)
                .take_ready()
                .events
                .iter()
                .any(|e| matches!(e, Event::ReadReady { .. })),
        "acknowledgements of an earlier round confirmed the read"
    );
    cluster.network.extend(round);
    cluster.settle();
    assert!(matches!(
        reads(&cluster, leader)[..],
        [Event::ReadReady {
            request: 9,
            path: ReadPath::QuorumRound,
            ..
        }]
    ));
}

/// Per-slot mode: nodes 1 and 2 chose "a" in slot 1 and compacted it; node 3 heard
/// nothing. Its proposal for slot 1 must not win with "b": a compacted slot gets neither
/// a promise nor a vote, and node 3 fetches it (a snapshot) and proposes in slot 2.
#[test]
fn per_slot_compacted_slot_is_never_refilled_with_another_value() {
    let mut cluster = Cluster::new(3, Mode::PerSlot);
    cluster.isolate(3);
    cluster.node(1).propose(cmd("a")).unwrap();
    cluster.settle();
    cluster.tick(3);
    for id in [1, 2] {
        assert_eq!(
            cluster.value_at(id, 1),
            Some(Value::Commands(vec![cmd("a")]))
        );
        cluster.node(id).compact(1);
    }
    cluster.settle();
    cluster.heal();
    cluster.node(3).propose(cmd("b")).unwrap();
    cluster.settle();
    cluster.tick(40);
    cluster.assert_agreement();
    assert_eq!(cluster.node(3).status().commit_index, 2);
    assert_eq!(
        cluster.value_at(3, 2),
        Some(Value::Commands(vec![cmd("b")]))
    );
}

/// Every message fits `max_message_bytes` unless it carries a single value: Accept
/// runs, Forwards, catch-up replies and promises alike. A promise too big for one
/// message comes in chunks, and the candidate leads only once it has them all (here one
/// chunk is lost and the Prepare resent).
#[test]
fn messages_stay_within_the_byte_limit_and_promises_come_in_chunks() {
    let limit = 2_000;
    let mut cluster = Cluster::with(3, |id| {
        let mut config = config(id, 3, Mode::MultiPaxos);
        config.max_message_bytes = limit;
        config.max_batch_bytes = 1_000;
        config
    });
    campaign(&mut cluster, 1);
    cluster.cut_link(1, 3);
    let big = |i: usize| Bytes::from(vec![b'a' + (i % 26) as u8; 450]);
    for i in 0..20 {
        // Forwarded by node 2: Forward messages are cut too.
        cluster.node(2).propose(big(i)).unwrap();
    }
    cluster.settle();
    assert_eq!(
        cluster.node(1).status().commit_index,
        10,
        "two commands a slot"
    );
    // Node 1 vanishes before anyone else learns the commit point; node 3, which has
    // nothing, campaigns and must adopt all ten slots from node 2's chunked promise.
    cluster.heal();
    cluster.isolate(1);
    for id in [2, 3] {
        cluster.node(id).lease = None;
    }
    cluster.lose = vec![(2, 3, "promise")];
    cluster.node(3).start_phase1();
    cluster.settle();
    assert_ne!(
        cluster.node(3).status().role,
        Role::Leader,
        "one chunk is missing"
    );
    cluster.tick(10);
    assert_eq!(cluster.node(3).status().role, Role::Leader);
    for slot in 1..=10u64 {
        assert_eq!(
            cluster
                .node(3)
                .slot_value(slot)
                .map(|(v, _)| v.commands().len()),
            Some(2),
            "slot {slot}"
        );
    }
    let promises = cluster
        .sent
        .iter()
        .filter(|e| e.from == 2 && matches!(e.message, Message::Promise { .. }))
        .count();
    assert!(
        promises > 2,
        "the promise came in chunks ({promises} messages)"
    );
    for envelope in &cluster.sent {
        let single = match &envelope.message {
            Message::Accept { values, .. } => values.len() == 1,
            Message::Promise { entries, .. } | Message::Chosen { entries, .. } => {
                entries.len() == 1
            }
            Message::Forward { commands } => commands.len() == 1,
            _ => true,
        };
        assert!(
            envelope.message.size_bytes() <= limit || single,
            "{} of {} bytes",
            envelope.message.kind(),
            envelope.message.size_bytes()
        );
    }
    cluster.assert_agreement();
}

/// Per-slot mode: node 1 got "x" accepted by itself and node 2 — chosen — and crashed
/// with the decision marks unsent; nobody proposes anything after it. The value must
/// still end up decided everywhere: a node holding an accepted value whose fate nobody
/// settles proposes for that slot after an election timeout (Phase 1 adopts "x").
#[test]
fn per_slot_value_accepted_but_never_announced_is_settled_in_a_quiet_cluster() {
    let mut cluster = Cluster::new(3, Mode::PerSlot);
    cluster.cut_link(1, 3);
    cluster.node(1).propose(cmd("x")).unwrap();
    cluster.settle(); // no tick: the decision marks have not left node 1 yet
    assert_eq!(
        cluster.value_at(1, 1),
        Some(Value::Commands(vec![cmd("x")]))
    );
    // Node 1 is gone for good; nodes 2 and 3 never heard "x" was decided.
    cluster.isolate(1);
    cluster.tick(60);
    for id in [2, 3] {
        assert_eq!(
            cluster.value_at(id, 1),
            Some(Value::Commands(vec![cmd("x")])),
            "node {id}"
        );
    }
}

/// Per-slot mode: nodes 1 and 2 decided slots and compacted them, node 3 missed the
/// last decision, and the cluster went quiet. Anti-entropy must still tell node 3 the
/// commit point, although the entry at it is compacted (no ballot to tell).
#[test]
fn per_slot_anti_entropy_announces_a_compacted_commit_point() {
    let mut cluster = Cluster::new(3, Mode::PerSlot);
    cluster.node(1).propose(cmd("a")).unwrap();
    cluster.settle();
    cluster.tick(3);
    cluster.isolate(3);
    cluster.node(1).propose(cmd("b")).unwrap();
    cluster.settle();
    cluster.tick(3);
    for id in [1, 2] {
        assert_eq!(cluster.node(id).status().commit_index, 2);
        cluster.node(id).compact(2);
    }
    cluster.settle();
    cluster.heal();
    cluster.tick(80);
    assert_eq!(cluster.node(3).status().commit_index, 2);
}

/// A follower cut off from everyone for five election timeouts times out again and
/// again. Without pre-vote it prepared ever higher ballots alone, raising its own
/// promise, and on its return answered the leader's next heartbeat with `Preempted`: the
/// healthy leader stepped down. With pre-vote it never gets a quorum's yes, so it never
/// raises its ballot, and simply follows the leader when it hears it again.
#[test]
fn a_returning_node_does_not_depose_a_healthy_leader() {
    for pre_vote in [true, false] {
        let mut cluster = Cluster::with(3, |id| {
            let mut config = config(id, 3, Mode::MultiPaxos);
            config.pre_vote = pre_vote;
            config
        });
        let leader = cluster.elect();
        let ballot = cluster.node(leader).status().promised;
        let returning = (1..=3).find(|id| *id != leader).unwrap();
        cluster.isolate(returning);
        cluster.tick(50);
        cluster.heal();
        cluster.tick(20);
        let deposed = cluster.node(leader).status().role != Role::Leader
            || cluster.node(leader).status().promised != ballot;
        if pre_vote {
            assert!(!deposed, "the returning node deposed the leader");
            assert_eq!(cluster.node(returning).status().leader, Some(leader));
            assert_eq!(cluster.node(returning).status().phase1_runs, 0);
        } else {
            assert!(
                deposed,
                "without pre-vote the returning node deposes the leader"
            );
        }
    }
}

#[test]
fn an_expired_election_timer_campaigns_at_the_next_tick_with_a_pre_vote() {
    let mut node = Node::new(config(1, 3, Mode::MultiPaxos)).unwrap();
    node.expire_election_timer();
    let _ = node.take_ready();
    node.tick();
    let ready = node.take_ready();
    let pre_votes = ready
        .messages
        .iter()
        .filter(|e| matches!(e.message, Message::PreVote { .. }))
        .count();
    assert_eq!(pre_votes, 2, "{:?}", ready.messages);
}

/// A node raised its ballot though it could not reach a quorum (a pre-vote grant reached
/// it just before a partition did: `synod sim --seed 1855`), then came back. It answers
/// the leader's next heartbeat with `Preempted`. The leader, which a quorum still
/// follows, must not give up its leadership for a ballot nobody leads at: it runs Phase 1
/// above it and stays the leader throughout — no `SteppedDown`, no follower ever sees
/// another leader or none, and a read asked meanwhile is served, not failed. Before the
/// fix it stepped down (failing the read) and campaigned again.
#[test]
fn a_stray_ballot_makes_the_leader_refresh_its_own_not_step_down() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    cluster.node(leader).propose(cmd("before")).unwrap();
    cluster.settle();
    let ballot = cluster.node(leader).status().promised;
    let stray = (1..=3).find(|id| *id != leader).unwrap();
    cluster.isolate(stray);
    // What the grant let it do: Phase 1 alone, its Prepares lost.
    cluster.node(stray).start_phase1();
    cluster.settle();
    let stray_ballot = cluster.node(stray).status().promised;
    assert!(stray_ballot > ballot);
    cluster.heal();
    for events in cluster.events.values_mut() {
        events.clear();
    }
    // The leader's disk holds its new promise back, so the refresh stays in Phase 1
    // while a read and a command arrive.
    cluster.stalled_disks.insert(leader, Vec::new());
    cluster.tick(cluster.configs[&leader].heartbeat_interval_ticks + 1);
    assert_eq!(cluster.node(leader).status().role, Role::Candidate);
    cluster.node(leader).read_index(9);
    cluster.node(leader).propose(cmd("after")).unwrap();
    cluster.settle();
    for persist in cluster.stalled_disks.remove(&leader).unwrap() {
        cluster
            .durable
            .get_mut(&leader)
            .unwrap()
            .apply_all(&persist.ops);
        cluster.node(leader).on_persisted(persist.id);
    }
    cluster.tick(10);

    let status = cluster.node(leader).status();
    assert_eq!(
        status.role,
        Role::Leader,
        "the leader gave up its leadership"
    );
    assert!(status.promised > stray_ballot, "{:?}", status.promised);
    assert_eq!(status.refreshes, 1);
    for id in 1..=3 {
        let events = &cluster.events[&id];
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, Event::SteppedDown { .. }) && id == leader),
            "n{id}: {events:?}"
        );
        let others: Vec<&Event> = events
            .iter()
            .filter(|e| matches!(e, Event::LeaderChanged { leader: l } if *l != Some(leader)))
            .collect();
        assert!(
            others.is_empty() || id == stray,
            "n{id} saw another leader or none: {others:?}"
        );
        assert_eq!(cluster.node(id).status().leader, Some(leader), "n{id}");
    }
    assert!(
        matches!(
            reads(&cluster, leader)[..],
            [Event::ReadReady { request: 9, .. }]
        ),
        "{:?}",
        reads(&cluster, leader)
    );
    assert_eq!(
        cluster.delivered_commands(stray),
        vec![cmd("before"), cmd("after")]
    );
    cluster.assert_agreement();
}

/// A leader refreshing its ballot (a stray higher one came back, as above) is a
/// candidate for that Phase 1 but still the leader a quorum follows. It must not vote its
/// leadership away meanwhile: a rival's pre-vote is refused and its Prepare preempted, as
/// they would be a moment before. Before the fix the refreshing leader granted the
/// pre-vote (its role was no longer `Leader`, and a node holds no lease on itself), the
/// rival won a quorum with it and the leader's Phase 1 was preempted: `synod sim --seed
/// 5086` lost a healthy leader this way after a heal.
#[test]
fn a_leader_refreshing_its_ballot_does_not_vote_its_leadership_away() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    cluster.node(leader).propose(cmd("before")).unwrap();
    cluster.settle();
    let stray = (1..=3).find(|id| *id != leader).unwrap();
    let rival = (1..=3).find(|id| *id != leader && *id != stray).unwrap();
    cluster.isolate(stray);
    cluster.node(stray).start_phase1();
    cluster.settle();
    cluster.heal();
    // The leader's disk holds its new promise back: the refresh stays in Phase 1.
    cluster.stalled_disks.insert(leader, Vec::new());
    cluster.tick(cluster.configs[&leader].heartbeat_interval_ticks + 1);
    assert_eq!(cluster.node(leader).status().role, Role::Candidate);
    assert_eq!(cluster.node(leader).status().leader, Some(leader));
    let refreshing_at = cluster.node(leader).status().promised;

    let rival_ballot = Ballot::new(refreshing_at.round + 1, rival);
    let answers = |cluster: &mut Cluster, message: Message| {
        let node = cluster.node(leader);
        node.step(Envelope {
            from: rival,
            to: leader,
            message,
        })
        .unwrap();
        node.take_ready().messages
    };
    let pre_vote = answers(
        &mut cluster,
        Message::PreVote {
            ballot: rival_ballot,
            round: 1,
        },
    );
    assert!(
        pre_vote
            .iter()
            .any(|e| matches!(e.message, Message::PreVoteReply { granted: false, .. })),
        "{pre_vote:?}"
    );
    let prepare = answers(
        &mut cluster,
        Message::Prepare {
            ballot: rival_ballot,
            from_slot: 1,
            transfer_from: None,
        },
    );
    assert!(
        prepare
            .iter()
            .any(|e| matches!(e.message, Message::Preempted { .. })),
        "{prepare:?}"
    );
    assert_eq!(cluster.node(leader).status().promised, refreshing_at);
}

// ---- Leadership transfer (transfer.rs, docs/leader-transfer.md) ----

fn transfer_outcomes(cluster: &Cluster, id: NodeId) -> Vec<(NodeId, TransferOutcome)> {
    cluster.events[&id]
        .iter()
        .filter_map(|e| match e {
            Event::TransferEnded { target, outcome } => Some((*target, *outcome)),
            _ => None,
        })
        .collect()
}

fn clear_events(cluster: &mut Cluster) {
    for events in cluster.events.values_mut() {
        events.clear();
    }
}

#[test]
fn transfer_hands_leadership_to_a_caught_up_target() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    for i in 0..3 {
        cluster.node(leader).propose(cmd(&format!("c{i}"))).unwrap();
        cluster.settle();
    }
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let old_ballot = cluster.node(leader).status().promised;
    let pre_votes_before = cluster.count_sent("pre_vote");
    clear_events(&mut cluster);

    cluster.node(leader).transfer_leadership(target).unwrap();
    cluster.settle();
    // The target's first acknowledgement predates what that heartbeat told it.
    cluster.tick(1);

    assert_eq!(cluster.leader(), Some(target));
    assert_eq!(cluster.node(leader).status().role, Role::Follower);
    assert_eq!(cluster.node(leader).status().leader, Some(target));
    assert!(cluster.node(target).status().promised > old_ballot);
    assert_eq!(
        transfer_outcomes(&cluster, leader),
        vec![(target, TransferOutcome::Completed)]
    );
    assert_eq!(cluster.count_sent("timeout_now"), 1);
    // No pre-vote and no waiting for leases: the target campaigned at once.
    assert_eq!(cluster.count_sent("pre_vote"), pre_votes_before);
    // It had every chosen slot: nothing to re-propose.
    assert!(cluster.events[&target].contains(&Event::BecameLeader {
        ballot: cluster.nodes[&target].status().promised,
        reproposed_slots: 0,
    }));
    // The log goes on under the new leader, from any node.
    cluster.node(leader).propose(cmd("after")).unwrap();
    cluster.settle();
    cluster.tick(3);
    for id in 1..=3 {
        assert_eq!(
            cluster.delivered_commands(id),
            vec![cmd("c0"), cmd("c1"), cmd("c2"), cmd("after")],
            "n{id}"
        );
    }
    cluster.assert_agreement();
}

#[test]
fn transfer_catches_a_lagging_target_up_before_it_campaigns() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let target = (1..=3).find(|id| *id != leader).unwrap();
    cluster.cut_link(leader, target);
    for i in 0..5 {
        cluster.node(leader).propose(cmd(&format!("c{i}"))).unwrap();
        cluster.settle();
    }
    let chosen = cluster.node(leader).status().commit_index;
    assert!(cluster.node(target).status().commit_index < chosen);
    cluster.node(leader).transfer_leadership(target).unwrap();
    cluster.settle();
    assert_eq!(cluster.count_sent("timeout_now"), 0, "the target lags");
    // Commands wait while the leadership is handed over.
    let accepts_before = cluster.count_sent("accept");
    cluster.node(leader).propose(cmd("during")).unwrap();
    cluster.settle();
    assert_eq!(cluster.count_sent("accept"), accepts_before);

    cluster.heal();
    cluster.tick(4);

    assert_eq!(cluster.leader(), Some(target));
    assert_eq!(cluster.count_sent("timeout_now"), 1);
    assert!(cluster.events[&target].iter().any(|e| matches!(
        e,
        Event::BecameLeader {
            reproposed_slots: 0,
            ..
        }
    )));
    // The queued command went to the new leader and was chosen after the others.
    let mut expected: Vec<Bytes> = (0..5).map(|i| cmd(&format!("c{i}"))).collect();
    expected.push(cmd("during"));
    cluster.tick(3);
    for id in 1..=3 {
        assert_eq!(cluster.delivered_commands(id), expected, "n{id}");
    }
    cluster.assert_agreement();
}

#[test]
fn old_leader_serves_no_lease_read_after_transfer_starts() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    cluster.node(leader).propose(cmd("x")).unwrap();
    cluster.settle();
    cluster.node(leader).read_index(1);
    cluster.settle();
    assert!(matches!(
        reads(&cluster, leader)[..],
        [Event::ReadReady {
            path: ReadPath::Lease,
            ..
        }]
    ));
    // The target cannot be reached: the transfer stays in its first step.
    let target = (1..=3).find(|id| *id != leader).unwrap();
    cluster.cut_link(leader, target);
    clear_events(&mut cluster);
    cluster.node(leader).transfer_leadership(target).unwrap();
    cluster.node(leader).read_index(2);
    cluster.settle();
    // Still a linearizable read, but confirmed by a quorum round, never by the lease.
    assert!(matches!(
        reads(&cluster, leader)[..],
        [Event::ReadReady {
            request: 2,
            path: ReadPath::QuorumRound,
            ..
        }]
    ));
    for _ in 0..3 {
        clear_events(&mut cluster);
        cluster.node(leader).read_index(3);
        cluster.tick(1);
        assert!(
            reads(&cluster, leader).iter().all(|e| !matches!(
                e,
                Event::ReadReady {
                    path: ReadPath::Lease,
                    ..
                }
            )),
            "{:?}",
            reads(&cluster, leader)
        );
    }
}

#[test]
fn transfer_to_a_dead_target_aborts_and_the_old_leader_resumes() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let target = (1..=3).find(|id| *id != leader).unwrap();
    cluster.node(leader).propose(cmd("first")).unwrap();
    cluster.settle();
    // Chosen before it died, but it never heard so: it lags.
    cluster.isolate(target);
    cluster.node(leader).propose(cmd("second")).unwrap();
    cluster.settle();
    let ballot = cluster.node(leader).status().promised;
    clear_events(&mut cluster);
    cluster.node(leader).transfer_leadership(target).unwrap();
    cluster.node(leader).propose(cmd("queued")).unwrap();
    cluster.settle();
    let timeout = cluster.configs[&leader].election_timeout_ticks;
    cluster.tick(timeout - 1);
    assert!(transfer_outcomes(&cluster, leader).is_empty());
    assert_eq!(cluster.delivered_commands(leader).len(), 2);
    cluster.tick(1);

    assert_eq!(
        transfer_outcomes(&cluster, leader),
        vec![(target, TransferOutcome::TimedOut)]
    );
    // The target was never told to campaign: the leader goes on at the same ballot,
    // lease and all.
    assert_eq!(cluster.leader(), Some(leader));
    assert_eq!(cluster.node(leader).status().promised, ballot);
    assert_eq!(cluster.count_sent("timeout_now"), 0);
    cluster.tick(1);
    assert_eq!(
        cluster.delivered_commands(leader),
        vec![cmd("first"), cmd("second"), cmd("queued")]
    );
    clear_events(&mut cluster);
    cluster.node(leader).read_index(4);
    cluster.settle();
    assert!(matches!(
        reads(&cluster, leader)[..],
        [Event::ReadReady {
            path: ReadPath::Lease,
            ..
        }]
    ));
}

#[test]
fn a_transfer_abandoned_after_timeout_now_moves_the_old_leader_to_a_new_ballot() {
    use crate::node::RoleState;
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let third = (1..=3).find(|id| *id != leader && *id != target).unwrap();
    cluster.node(leader).propose(cmd("x")).unwrap();
    cluster.settle();
    let ballot = cluster.node(leader).status().promised;
    // The target hears the leader, but nothing it sends arrives: its handed-over
    // Prepares are lost.
    cluster.cut.insert((target, leader));
    cluster.cut.insert((target, third));
    cluster.tick(cluster.configs[&leader].heartbeat_interval_ticks);
    // Its acknowledgements are lost too: let the leader know its log is caught up.
    let commit = cluster.node(leader).status().commit_index;
    cluster.node(leader).peer_commits.insert(target, commit);
    cluster.node(leader).transfer_leadership(target).unwrap();
    cluster.settle();
    assert!(cluster.count_sent("timeout_now") >= 1);
    let handed_over = match &cluster.nodes[&target].role {
        RoleState::Candidate(candidate) => candidate.ballot,
        other => panic!("the target did not campaign: {other:?}"),
    };
    assert_eq!(cluster.nodes[&target].status().leader, None);
    cluster.tick(cluster.configs[&leader].election_timeout_ticks);
    // Given up; the third node's next acknowledgement shows a quorum is reachable.
    cluster.tick(cluster.configs[&leader].heartbeat_interval_ticks + 1);

    assert!(transfer_outcomes(&cluster, leader).contains(&(target, TransferOutcome::TimedOut)));
    assert_eq!(cluster.leader(), Some(leader));
    let resumed = cluster.node(leader).status().promised;
    assert!(resumed > ballot, "{resumed:?} after {ballot:?}");
    // A handed-over Prepare that arrives late names a ballot whose lease no acceptor
    // still holds: it passes no lease.
    let sent_before = cluster.sent.len();
    cluster
        .node(third)
        .step(Envelope {
            from: target,
            to: third,
            message: Message::Prepare {
                ballot: handed_over.max(resumed).next_for(target),
                from_slot: 1,
                transfer_from: Some(ballot),
            },
        })
        .unwrap();
    cluster.settle();
    assert!(cluster.sent[sent_before..]
        .iter()
        .any(|e| e.from == third && matches!(e.message, Message::Preempted { .. })));
    assert_eq!(cluster.nodes[&third].status().leader, Some(leader));
    // The new ballot's lease serves reads again.
    cluster.heal();
    cluster.tick(2);
    clear_events(&mut cluster);
    let reader = cluster.leader().unwrap();
    cluster.node(reader).read_index(5);
    cluster.settle();
    assert!(matches!(
        reads(&cluster, reader)[..],
        [Event::ReadReady { .. }]
    ));
    cluster.assert_agreement();
}

#[test]
fn transfer_refuses_a_non_leader_an_unknown_member_and_a_second_target() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    assert_eq!(
        cluster.node(follower).transfer_leadership(other),
        Err(TransferError::NotLeader {
            leader: Some(leader)
        })
    );
    assert_eq!(
        cluster.node(leader).transfer_leadership(9),
        Err(TransferError::UnknownMember(9))
    );
    clear_events(&mut cluster);
    // To itself: done at once, as etcd answers it.
    cluster.node(leader).transfer_leadership(leader).unwrap();
    cluster.settle();
    assert_eq!(
        transfer_outcomes(&cluster, leader),
        vec![(leader, TransferOutcome::Completed)]
    );
    assert_eq!(cluster.leader(), Some(leader));
    cluster.cut_link(leader, follower);
    cluster.node(leader).transfer_leadership(follower).unwrap();
    assert_eq!(cluster.node(leader).transfer_leadership(follower), Ok(()));
    assert_eq!(
        cluster.node(leader).transfer_leadership(other),
        Err(TransferError::InProgress { target: follower })
    );
}

#[test]
fn a_cut_off_leader_that_abandons_a_transfer_raises_no_ballot() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    let leader = cluster.elect();
    let target = (1..=3).find(|id| *id != leader).unwrap();
    cluster.node(leader).propose(cmd("x")).unwrap();
    cluster.settle();
    cluster.tick(1);
    let ballot = cluster.node(leader).status().promised;
    // TimeoutNow reaches the target, whose Prepares are lost; then the leader is cut off.
    cluster.cut.insert((target, leader));
    let third = (1..=3).find(|id| *id != leader && *id != target).unwrap();
    cluster.cut.insert((target, third));
    // Its acknowledgements are lost: let the leader know its log is caught up.
    let commit = cluster.node(leader).status().commit_index;
    cluster.node(leader).peer_commits.insert(target, commit);
    cluster.node(leader).transfer_leadership(target).unwrap();
    cluster.settle();
    assert_eq!(cluster.count_sent("timeout_now"), 1);
    cluster.isolate(leader);
    clear_events(&mut cluster);
    cluster.tick(cluster.configs[&leader].election_timeout_ticks + 2);
    assert!(transfer_outcomes(&cluster, leader).contains(&(target, TransferOutcome::TimedOut)));
    // A ballot it raised now would depose the real leader when it comes back.
    assert!(
        !cluster.events[&leader]
            .iter()
            .any(|e| matches!(e, Event::Phase1Started { .. })),
        "{:?}",
        cluster.events[&leader]
    );
    assert_eq!(cluster.node(leader).status().promised, ballot);
}

/// A leader cut off just as it re-ran Phase 1 keeping its leadership (as after a timed-out
/// transfer) still names itself leader when it answers, at a ballot above the one the
/// others elected meanwhile. Once the partition heals, the new leader, which holds its
/// lease, refreshes its own ballot above the stale one instead of stepping down to follow
/// the stale claim (the swarm's seed 13081 and 5960).
#[test]
fn a_cut_off_leader_still_naming_itself_does_not_depose_a_leader_holding_its_lease() {
    let mut cluster = Cluster::new(3, Mode::MultiPaxos);
    campaign(&mut cluster, 3);
    cluster.node(3).propose(cmd("before")).unwrap();
    cluster.settle();
    cluster.isolate(3);
    cluster.node(3).rerun_phase1_keeping_leadership();
    cluster.settle();
    let stale = cluster.node(3).status().promised;
    let leader = cluster.elect();
    assert_ne!(leader, 3);
    let ballot = cluster.node(leader).status().promised;
    assert!(
        ballot < stale,
        "the scenario needs the stale ballot above the new leader's: {ballot:?} {stale:?}"
    );
    assert_eq!(
        cluster.node(3).status().leader,
        Some(3),
        "still names itself"
    );
    cluster.node(leader).propose(cmd("during")).unwrap();
    cluster.settle();
    for events in cluster.events.values_mut() {
        events.clear();
    }
    cluster.heal();
    cluster.tick(10);

    let status = cluster.node(leader).status();
    assert_eq!(status.role, Role::Leader, "the lease holder was deposed");
    assert!(status.promised > stale, "{:?}", status.promised);
    assert!(
        !cluster.events[&leader]
            .iter()
            .any(|e| matches!(e, Event::SteppedDown { .. })),
        "{:?}",
        cluster.events[&leader]
    );
    for id in 1..=3 {
        assert_eq!(cluster.node(id).status().leader, Some(leader), "n{id}");
    }
    cluster.node(leader).propose(cmd("after")).unwrap();
    cluster.tick(3);
    assert_eq!(
        cluster.delivered_commands(3),
        vec![cmd("before"), cmd("during"), cmd("after")]
    );
    cluster.assert_agreement();
}
