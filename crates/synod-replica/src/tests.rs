//! Scenario tests of the replica, driven step by step with explicit clocks: requests,
//! every read path, snapshots and compaction, and the clock rules (a paused replica's
//! clock catches up before it handles anything).

use crate::*;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use synod_core::{Config, DurableState, Envelope, Message, NodeId, ReadPath, Role, Slot};
use synod_kv::{SnapshotError, StateMachine};

/// A state machine that remembers every command, in order.
#[derive(Default)]
struct Journal {
    applied: Slot,
    entries: Vec<Bytes>,
}

impl StateMachine for Journal {
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Bytes {
        self.applied = slot;
        self.entries.push(Bytes::copy_from_slice(command));
        Bytes::from(self.entries.len().to_string())
    }
    fn applied(&self) -> Slot {
        self.applied
    }
    fn size_hint(&self) -> u64 {
        self.entries.iter().map(|entry| entry.len() as u64).sum()
    }
    fn snapshot(&self) -> Bytes {
        let list: Vec<Vec<u8>> = self.entries.iter().map(|e| e.to_vec()).collect();
        Bytes::from(bincode::serialize(&(self.applied, list)).unwrap())
    }
    fn restore(&mut self, image: &[u8]) -> Result<(), SnapshotError> {
        let (applied, list): (Slot, Vec<Vec<u8>>) =
            bincode::deserialize(image).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        self.applied = applied;
        self.entries = list.into_iter().map(Bytes::from).collect();
        Ok(())
    }
    fn empty_like(&self) -> Self {
        Journal::default()
    }
}

type Reply = (RequestId, Result<Bytes, RequestError>);
type ServedRead = (RequestId, Result<ReadHow, RequestError>, usize);

const MS: Nanos = 1_000_000;
const TICK: Nanos = 10 * MS;

fn config(id: NodeId, n: u64) -> ReplicaConfig {
    let mut core = Config::new(id, (1..=n).collect());
    core.seed = 11 * id + 3;
    core.incarnation = 1000 + id;
    let mut config = ReplicaConfig::new(core, 77 * id);
    config.tick_nanos = TICK;
    config.snapshot_interval_slots = 0;
    config.snapshot_log_growth_percent = 0;
    config
}

/// Replicas on an instant, FIFO network with instant disks; each has its own clock.
struct Cluster {
    configs: BTreeMap<NodeId, ReplicaConfig>,
    replicas: BTreeMap<NodeId, Replica<Journal>>,
    durable: BTreeMap<NodeId, DurableState>,
    snapshots: BTreeMap<NodeId, (Slot, Bytes)>,
    /// Every slot each replica saved a snapshot of, in order.
    saved: BTreeMap<NodeId, Vec<Slot>>,
    clocks: BTreeMap<NodeId, Nanos>,
    network: VecDeque<Envelope>,
    cut: Vec<(NodeId, NodeId)>,
    replies: BTreeMap<NodeId, Vec<Reply>>,
    /// Reads released, with how many entries the state machine held when served.
    reads: BTreeMap<NodeId, Vec<ServedRead>>,
}

impl Cluster {
    fn new(n: u64, adjust: impl Fn(&mut ReplicaConfig)) -> Cluster {
        let configs: BTreeMap<NodeId, ReplicaConfig> = (1..=n)
            .map(|id| {
                let mut config = config(id, n);
                adjust(&mut config);
                (id, config)
            })
            .collect();
        let replicas = configs
            .iter()
            .map(|(id, config)| {
                let replica = Replica::recover(
                    config.clone(),
                    DurableState::default(),
                    None,
                    Journal::default(),
                    0,
                )
                .unwrap();
                (*id, replica)
            })
            .collect();
        Cluster {
            replicas,
            durable: configs
                .keys()
                .map(|id| (*id, DurableState::default()))
                .collect(),
            snapshots: BTreeMap::new(),
            saved: BTreeMap::new(),
            clocks: configs.keys().map(|id| (*id, 0)).collect(),
            configs,
            network: VecDeque::new(),
            cut: Vec::new(),
            replies: BTreeMap::new(),
            reads: BTreeMap::new(),
        }
    }

    fn replica(&mut self, id: NodeId) -> &mut Replica<Journal> {
        self.replicas.get_mut(&id).unwrap()
    }

    fn now(&self, id: NodeId) -> Nanos {
        self.clocks[&id]
    }

    /// Carries out one replica's outputs: persists at once, sends, serves reads.
    fn drain(&mut self, id: NodeId) -> bool {
        let replica = self.replicas.get_mut(&id).unwrap();
        if !replica.has_ready() {
            return false;
        }
        let now = self.clocks[&id];
        let ready = replica.take_ready();
        for request in &ready.persist {
            self.durable.get_mut(&id).unwrap().apply_all(&request.ops);
            replica.on_persisted(now, request.id);
        }
        for (request, result) in ready.reads {
            let seen = replica.state_machine().entries.len();
            self.reads
                .entry(id)
                .or_default()
                .push((request, result, seen));
        }
        self.replies.entry(id).or_default().extend(ready.replies);
        if let Some(save) = ready.save_snapshot {
            let bytes = (save.encode)();
            self.snapshots.insert(id, (save.slot, bytes));
            self.saved.entry(id).or_default().push(save.slot);
            replica.on_snapshot_saved(now, save.slot, Ok(()));
        }
        for (peer, _) in &ready.send_snapshots {
            replica.on_snapshot_sent(now, *peer, !self.cut.contains(&(id, *peer)));
        }
        for (peer, slot) in ready.send_snapshots {
            if self.cut.contains(&(id, peer)) {
                continue;
            }
            let (saved, bytes) = self.snapshots[&id].clone();
            assert_eq!(saved, slot);
            let restored = Restored::decode(&bytes, Journal::default()).unwrap();
            let peer_now = self.clocks[&peer];
            self.replicas
                .get_mut(&peer)
                .unwrap()
                .on_snapshot_received(peer_now, id, restored);
        }
        self.network.extend(ready.messages);
        true
    }

    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut progress = false;
            for id in self.replicas.keys().copied().collect::<Vec<_>>() {
                progress |= self.drain(id);
            }
            if let Some(envelope) = self.network.pop_front() {
                progress = true;
                if !self.cut.contains(&(envelope.from, envelope.to)) {
                    let now = self.clocks[&envelope.to];
                    let _ = self.replica(envelope.to).step(now, envelope);
                }
            }
            if !progress {
                return;
            }
        }
        panic!("the cluster did not settle");
    }

    /// Every clock moves on by `ticks` ticks, one at a time.
    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            for id in self.replicas.keys().copied().collect::<Vec<_>>() {
                *self.clocks.get_mut(&id).unwrap() += TICK;
                let now = self.clocks[&id];
                self.replica(id).tick(now);
            }
            self.settle();
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.replicas
            .iter()
            .find(|(_, r)| r.status().node.role == Role::Leader)
            .map(|(id, _)| *id)
    }

    fn elect(&mut self) -> NodeId {
        for _ in 0..300 {
            self.run(1);
            if let Some(leader) = self.leader() {
                return leader;
            }
        }
        panic!("no leader");
    }

    fn isolate(&mut self, id: NodeId) {
        for other in self.configs.keys().copied().filter(|o| *o != id) {
            self.cut.push((id, other));
            self.cut.push((other, id));
        }
    }

    fn propose(&mut self, id: NodeId, request: RequestId, payload: &str) {
        let now = self.now(id);
        self.replica(id)
            .propose(now, request, Bytes::copy_from_slice(payload.as_bytes()));
    }

    fn read(&mut self, id: NodeId, request: RequestId, linearizable: bool) {
        let now = self.now(id);
        self.replica(id).read(now, request, linearizable);
    }

    fn reply(&self, id: NodeId, request: RequestId) -> Option<Result<Bytes, RequestError>> {
        self.replies
            .get(&id)?
            .iter()
            .find(|(r, _)| *r == request)
            .map(|(_, result)| result.clone())
    }

    fn read_result(
        &self,
        id: NodeId,
        request: RequestId,
    ) -> Option<(Result<ReadHow, RequestError>, usize)> {
        self.reads
            .get(&id)?
            .iter()
            .find(|(r, _, _)| *r == request)
            .map(|(_, result, seen)| (result.clone(), *seen))
    }
}

#[test]
fn proposals_at_the_leader_and_at_a_follower_are_applied_once_and_answered() {
    let mut cluster = Cluster::new(3, |_| {});
    let leader = cluster.elect();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.propose(leader, 1, "a");
    cluster.propose(follower, 2, "b");
    cluster.settle();
    cluster.run(3);
    assert_eq!(cluster.reply(leader, 1), Some(Ok(Bytes::from("1"))));
    assert_eq!(cluster.reply(follower, 2), Some(Ok(Bytes::from("2"))));
    for id in 1..=3 {
        assert_eq!(
            cluster.replica(id).state_machine().entries.len(),
            2,
            "node {id}"
        );
    }
}

#[test]
fn a_request_over_the_size_limit_is_refused_with_a_clear_error() {
    let mut cluster = Cluster::new(3, |config| config.max_request_bytes = 10);
    let leader = cluster.elect();
    cluster.propose(leader, 1, "this is more than ten bytes");
    cluster.settle();
    assert_eq!(
        cluster.reply(leader, 1),
        Some(Err(RequestError::TooLarge {
            bytes: 27,
            limit: 10
        }))
    );
    assert!(cluster.replica(leader).state_machine().entries.is_empty());
    cluster.propose(leader, 2, "small");
    cluster.settle();
    assert_eq!(cluster.reply(leader, 2), Some(Ok(Bytes::from("1"))));
}

#[test]
fn reads_take_every_path_lease_round_follower_and_serializable() {
    let mut cluster = Cluster::new(3, |_| {});
    let leader = cluster.elect();
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    cluster.propose(leader, 1, "a");
    cluster.settle();
    cluster.read(leader, 10, true);
    cluster.read(follower, 11, true);
    cluster.read(follower, 12, false);
    cluster.settle();
    let lease = cluster.read_result(leader, 10).unwrap();
    assert_eq!(lease, (Ok(ReadHow::Linearizable(ReadPath::Lease)), 1));
    let forwarded = cluster.read_result(follower, 11).unwrap();
    assert_eq!(
        forwarded,
        (Ok(ReadHow::Linearizable(ReadPath::Forwarded)), 1),
        "the follower waited until it applied the leader's index"
    );
    assert_eq!(
        cluster.read_result(follower, 12).unwrap().0,
        Ok(ReadHow::Serializable)
    );
    // Read-index mode: the same read at the leader costs a heartbeat round.
    let mut cluster = Cluster::new(3, |config| {
        config.core.read_mode = synod_core::ReadMode::ReadIndex;
    });
    let leader = cluster.elect();
    cluster.read(leader, 20, true);
    cluster.settle();
    assert_eq!(
        cluster.read_result(leader, 20).unwrap().0,
        Ok(ReadHow::Linearizable(ReadPath::QuorumRound))
    );
    let stats = cluster.replica(leader).stats();
    assert_eq!((stats.read_index_reads, stats.lease_reads), (1, 0));
}

/// A leader holding its lease stalls (a GC pause, SIGSTOP). While it stalls the others
/// elect a new leader and commit a write. On resuming, the first thing it handles is a
/// read: its clock must catch up first, so the lease it held before the stall has run
/// out and the read is not answered from its stale state.
#[test]
fn paused_leader_serves_no_lease_read_from_its_pre_pause_clock() {
    let mut cluster = Cluster::new(3, |_| {});
    let old = cluster.elect();
    cluster.propose(old, 1, "before");
    cluster.settle();
    cluster.isolate(old);
    // The others' clocks run on; the old leader's process is stopped (no inputs).
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != old).collect();
    let mut new = None;
    for _ in 0..200 {
        for id in &others {
            *cluster.clocks.get_mut(id).unwrap() += TICK;
            let now = cluster.now(*id);
            cluster.replica(*id).tick(now);
        }
        cluster.settle();
        new = others
            .iter()
            .copied()
            .find(|id| cluster.replicas[id].status().node.role == Role::Leader);
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("the others elected a leader");
    cluster.propose(new, 2, "after");
    cluster.settle();
    assert_eq!(cluster.reply(new, 2), Some(Ok(Bytes::from("2"))));
    // The old leader resumes; its wall clock has moved on as much as the others'.
    let resumed_at = cluster.now(new);
    *cluster.clocks.get_mut(&old).unwrap() = resumed_at;
    cluster.read(old, 9, true);
    cluster.settle();
    if let Some((Ok(_), seen)) = cluster.read_result(old, 9) {
        panic!("the resumed leader answered a linearizable read with {seen} entries");
    }
}

/// An acceptor stalls; a heartbeat reaches its socket during the stall and is handled
/// when it resumes. The lease it grants runs from the resumed clock: measured on the
/// pre-stall clock it would already be over in real time while the leader counts on a
/// whole one, and the acceptor would promise a rival inside the leader's read lease.
#[test]
fn paused_acceptor_measures_the_lease_it_grants_from_its_resumed_clock() {
    // A lease much shorter than the election timeout: the stall outlasts the lease but
    // not the acceptor's election timer.
    let mut cluster = Cluster::new(3, |config| {
        config.core.lease_ticks = 5;
        config.core.election_timeout_ticks = 40;
        config.core.heartbeat_interval_ticks = 2;
    });
    let leader = cluster.elect();
    let acceptor = (1..=3).find(|id| *id != leader).unwrap();
    let rival = (1..=3).find(|id| *id != leader && *id != acceptor).unwrap();
    let lease = cluster.configs[&acceptor].core.lease_ticks * TICK;
    // The acceptor stops at t0; the heartbeat is sent well after.
    let t0 = cluster.now(acceptor);
    let resumed_at = t0 + 2 * lease;
    let ballot = cluster.replicas[&leader].status().node.promised;
    let heartbeat = Envelope {
        from: leader,
        to: acceptor,
        message: Message::Heartbeat {
            ballot,
            commit_index: 0,
            sent_at: resumed_at / TICK - 1,
            round: 0,
        },
    };
    cluster
        .replica(acceptor)
        .step(resumed_at, heartbeat)
        .unwrap();
    let _ = cluster.replica(acceptor).take_ready();
    // Half a lease later a rival asks for a promise: refused, the lease is fresh.
    let prepare = Envelope {
        from: rival,
        to: acceptor,
        message: Message::Prepare {
            ballot: synod_core::Ballot::new(ballot.round + 5, rival),
            from_slot: 1,
            transfer_from: None,
        },
    };
    cluster
        .replica(acceptor)
        .step(resumed_at + lease / 2, prepare)
        .unwrap();
    let ready = cluster.replica(acceptor).take_ready();
    assert!(
        ready
            .messages
            .iter()
            .any(|e| matches!(e.message, Message::Preempted { .. })),
        "the acceptor promised a rival inside the lease it just granted"
    );
    assert_eq!(cluster.replicas[&acceptor].status().node.promised, ballot);
}

/// Three replicas snapshotting every 5 slots; the leader applied and compacted 12
/// commands while one follower (the second id returned) was cut off.
fn leader_past_a_cut_off_follower() -> (Cluster, NodeId, NodeId) {
    let mut cluster = Cluster::new(3, |config| config.snapshot_interval_slots = 5);
    let leader = cluster.elect();
    let lagging = (1..=3).find(|id| *id != leader).unwrap();
    cluster.isolate(lagging);
    for i in 0..12 {
        cluster.propose(leader, i, &format!("c{i}"));
        cluster.settle();
    }
    cluster.run(3);
    (cluster, leader, lagging)
}

#[test]
fn snapshots_compact_the_log_and_bring_a_lagging_replica_back() {
    let (mut cluster, leader, lagging) = leader_past_a_cut_off_follower();
    let status = cluster.replica(leader).status();
    assert!(status.snapshot_slot >= 10, "{status:?}");
    assert!(
        cluster.replica(leader).node().first_log_slot() > 5,
        "the log was compacted"
    );
    cluster.cut.clear();
    cluster.run(30);
    let caught_up = cluster.replica(lagging).status();
    assert_eq!(caught_up.applied_slot, status.applied_slot, "{caught_up:?}");
    assert_eq!(cluster.replica(lagging).stats().snapshots_installed, 1);
    assert_eq!(cluster.replica(lagging).state_machine().entries.len(), 12);
}

/// A lagging follower asks for the slots it lacks at every retransmit while it syncs,
/// verifies and installs the snapshot it was sent; a large one takes a second or more.
/// Answering each ask with a fresh stream sent a 70 MB snapshot four to six times per
/// catch-up in `synod bench cluster`, the copies collided at the follower (both failed),
/// and it decoded the ones that survived one after another. A delivered snapshot is sent
/// again only after `snapshot_resend_after`; one whose stream failed, at once.
#[test]
fn a_snapshot_just_delivered_is_not_streamed_again_while_the_follower_installs_it() {
    let (mut cluster, leader, lagging) = leader_past_a_cut_off_follower();
    let resend_after = cluster.configs[&leader].snapshot_resend_after_nanos;
    assert!(resend_after > 0);
    let asks = |cluster: &mut Cluster| {
        let now = cluster.now(leader);
        let replica = cluster.replica(leader);
        replica
            .step(
                now,
                Envelope {
                    from: lagging,
                    to: leader,
                    message: Message::CatchUp { from_slot: 1 },
                },
            )
            .expect("a catch-up request is valid");
        replica.take_ready().send_snapshots
    };

    let first = asks(&mut cluster);
    assert_eq!(first.len(), 1, "the first ask starts a stream: {first:?}");
    assert_eq!(first[0].0, lagging);
    let now = cluster.now(leader);
    cluster.replica(leader).on_snapshot_sent(now, lagging, true);
    // The follower asks again while it installs: no second stream.
    *cluster.clocks.get_mut(&leader).unwrap() += resend_after - TICK;
    assert_eq!(asks(&mut cluster), vec![]);
    assert_eq!(cluster.replica(leader).stats().snapshot_resends_held, 1);
    assert_eq!(cluster.replica(leader).stats().snapshots_sent, 1);
    // Still asking after the grace: it never got it; send it again.
    *cluster.clocks.get_mut(&leader).unwrap() += TICK;
    assert_eq!(asks(&mut cluster), first);
    // A stream the transport reports failed is sent again at the next ask.
    let now = cluster.now(leader);
    cluster
        .replica(leader)
        .on_snapshot_sent(now, lagging, false);
    assert_eq!(asks(&mut cluster), first);
    assert_eq!(cluster.replica(leader).stats().snapshots_sent, 3);
}

/// Proposes `count` commands of `bytes` bytes at the leader, one slot each.
fn propose_one_per_slot(cluster: &mut Cluster, leader: NodeId, count: u64, bytes: usize) {
    for i in 0..count {
        let payload = format!("{i:0>bytes$}");
        cluster.propose(leader, i, &payload);
        cluster.settle();
    }
}

/// With a state that grows with the log (a journal, an uncompacted MVCC history),
/// snapshotting every few slots writes the whole state out each time: the bytes written
/// grow with the square of the log. Held until the log since the last snapshot has
/// grown by the state's size then, the snapshots come at geometrically growing gaps.
#[test]
fn a_snapshot_due_by_its_slot_count_waits_until_the_log_has_grown_by_the_state() {
    let run = |growth: u64| {
        let mut cluster = Cluster::new(1, |config| {
            config.snapshot_interval_slots = 2;
            config.snapshot_log_growth_percent = growth;
        });
        let leader = cluster.elect();
        propose_one_per_slot(&mut cluster, leader, 200, 100);
        let saved = cluster.saved.get(&leader).cloned().unwrap_or_default();
        let held = cluster
            .replica(leader)
            .stats()
            .snapshots_held_for_log_growth;
        (saved, held)
    };
    let (every_interval, held) = run(0);
    assert!(every_interval.len() >= 95, "{every_interval:?}");
    assert_eq!(held, 0);

    let (paced, held) = run(100);
    assert!(
        (5..=15).contains(&paced.len()),
        "a handful of snapshots, not one every 2 slots: {paced:?}"
    );
    assert!(held >= paced.len() as u64 - 1, "held {held}: {paced:?}");
    let gaps: Vec<Slot> = paced.windows(2).map(|pair| pair[1] - pair[0]).collect();
    assert!(gaps.iter().all(|gap| *gap >= 2), "{gaps:?}");
    assert!(
        gaps.last().unwrap() >= &(4 * gaps[0]),
        "the gaps grow with the state: {gaps:?}"
    );
}

/// Members applying the same log reach the same slot counts together; each scales its
/// thresholds by its place among the member ids, so their snapshots (a burst of CPU and
/// disk each) do not all land at once.
#[test]
fn members_take_their_snapshots_at_different_slots() {
    let mut cluster = Cluster::new(3, |config| config.snapshot_interval_slots = 30);
    let leader = cluster.elect();
    propose_one_per_slot(&mut cluster, leader, 45, 8);
    cluster.run(3);
    let first: Vec<Slot> = (1..=3).map(|id| cluster.saved[&id][0]).collect();
    assert!(
        first[0] < first[1] && first[1] < first[2],
        "the lowest id first, each at its own slot: {first:?}"
    );
    assert!(first[0] >= 30 && first[2] < 45, "{first:?}");
}

#[test]
fn a_restarted_replica_recovers_from_its_snapshot_and_log() {
    let mut cluster = Cluster::new(3, |config| config.snapshot_interval_slots = 4);
    let leader = cluster.elect();
    for i in 0..10 {
        cluster.propose(leader, i, &format!("c{i}"));
        cluster.settle();
    }
    cluster.run(3);
    let id = (1..=3).find(|id| *id != leader).unwrap();
    let (slot, bytes) = cluster.snapshots[&id].clone();
    let restored = Restored::decode(&bytes, Journal::default()).unwrap();
    assert_eq!(restored.slot, slot);
    let mut config = cluster.configs[&id].clone();
    config.client_id += 2;
    config.core.incarnation += 1;
    let replica = Replica::recover(
        config,
        cluster.durable[&id].clone(),
        Some(restored),
        Journal::default(),
        cluster.now(id),
    )
    .unwrap();
    cluster.replicas.insert(id, replica);
    cluster.settle();
    assert_eq!(cluster.replica(id).state_machine().entries.len(), 10);
    // A log compacted past the snapshot it has is refused.
    let mut durable = cluster.durable[&id].clone();
    durable.apply(&synod_core::PersistOp::Snapshot { slot: 100 });
    let refused = Replica::recover(
        cluster.configs[&id].clone(),
        durable,
        None,
        Journal::default(),
        0,
    );
    assert!(matches!(
        refused.err(),
        Some(RecoverError::MissingSnapshot {
            log_snapshot_slot: 100,
            snapshot_slot: 0
        })
    ));
}

#[test]
fn requests_without_a_leader_time_out_and_say_so() {
    let mut cluster = Cluster::new(3, |config| config.request_timeout_nanos = 50 * TICK);
    cluster.isolate(1);
    cluster.propose(1, 1, "lonely");
    cluster.read(1, 2, true);
    for _ in 0..60 {
        *cluster.clocks.get_mut(&1).unwrap() += TICK;
        let now = cluster.now(1);
        cluster.replica(1).tick(now);
        cluster.settle();
    }
    assert!(matches!(
        cluster.reply(1, 1),
        Some(Err(RequestError::Timeout { .. }))
    ));
    assert!(matches!(
        cluster.read_result(1, 2),
        Some((Err(RequestError::Timeout { .. }), _))
    ));
}

/// A snapshot can arrive after the replica already applied past it (it was slow to
/// stream, or decode). It is on disk then — the newest there — so it must become the
/// snapshot the replica sends to lagging peers: asking storage for the older one it
/// remembered would fail, and the lagging peer would never catch up.
#[test]
fn a_snapshot_that_arrives_late_becomes_the_one_sent_to_lagging_peers() {
    let mut cluster = Cluster::new(3, |config| config.snapshot_interval_slots = 4);
    let leader = cluster.elect();
    for i in 0..6 {
        cluster.propose(leader, i, &format!("c{i}"));
        cluster.settle();
    }
    cluster.run(3);
    let id = (1..=3).find(|id| *id != leader).unwrap();
    assert_eq!(cluster.replica(id).status().snapshot_slot, 4);
    // A snapshot of slot 6 made elsewhere arrives after this replica applied slot 6.
    let mut image = Journal::default();
    for slot in 1..=6 {
        image.apply(slot, b"x");
    }
    let bytes = RuntimeImage::new(6, &Sessions::default(), image.snapshot()).encode();
    let restored = Restored::decode(&bytes, Journal::default()).unwrap();
    let now = cluster.now(id);
    cluster
        .replica(id)
        .on_snapshot_received(now, leader, restored);
    assert_eq!(
        cluster.replica(id).state_machine().entries.len(),
        6,
        "not installed"
    );
    assert_eq!(cluster.replica(id).status().snapshot_slot, 6);
    let ready = cluster.replica(id).take_ready();
    assert_eq!(ready.compact_log, Some(6));
    assert_eq!(cluster.replica(id).node().first_log_slot(), 7);
}

/// A leader whose disk has stalled commits nothing for a long time. Its pending
/// proposals are proposed again with doubling waits: were each one copied every
/// `retry_after`, a leader committing slower than that (large values, a slow disk) would
/// drown in copies of its own backlog (40 puts of 1.4 MB did, in a loaded test run).
#[test]
fn a_stalled_commit_is_not_buried_under_copies_of_its_proposals() {
    let mut cluster = Cluster::new(1, |config| config.request_timeout_nanos = 10_000 * TICK);
    let leader = cluster.elect();
    let retry_after = cluster.configs[&leader].retry_after_nanos;
    for request in 0..10 {
        cluster.propose(leader, request, "stuck");
    }
    // The disk never completes another write: drive the clock alone for 100 retry
    // intervals.
    let ticks = 100 * retry_after / TICK;
    for _ in 0..ticks {
        *cluster.clocks.get_mut(&leader).unwrap() += TICK;
        let now = cluster.now(leader);
        let replica = cluster.replica(leader);
        replica.tick(now);
        let _ = replica.take_ready();
    }
    let retries = cluster.replica(leader).stats().proposal_retries;
    // Doubling waits, capped at 16 intervals: 1 + 2 + 4 + 8 + 16 + 16·k ≥ 100 gives at
    // most 9 retries each; without the doubling it was 100 each.
    assert!(retries <= 10 * 9, "{retries} retries of 10 proposals");
    assert!(retries >= 10 * 4, "proposals are still retried: {retries}");
    assert!(cluster.reply(leader, 0).is_none());
}

/// MoveLeader at the replica: the target leads, a proposal made at the old leader while
/// the leadership was handed over is applied once and answered, and the old leader
/// counts the transfer. A transfer to a cut-off member is abandoned and counted too.
#[test]
fn a_transfer_moves_the_leader_and_proposals_made_meanwhile_are_answered() {
    let mut cluster = Cluster::new(3, |_| {});
    let leader = cluster.elect();
    let target = (1..=3).find(|id| *id != leader).unwrap();
    cluster.propose(leader, 1, "before");
    cluster.settle();
    let now = cluster.now(leader);
    cluster
        .replica(leader)
        .transfer_leadership(now, target)
        .unwrap();
    cluster.propose(leader, 2, "during");
    cluster.settle();
    cluster.run(5);
    assert_eq!(cluster.leader(), Some(target));
    assert_eq!(cluster.reply(leader, 2), Some(Ok(Bytes::from("2"))));
    let stats = cluster.replica(leader).stats();
    assert_eq!(
        (stats.leader_transfers, stats.leader_transfer_timeouts),
        (1, 0)
    );
    for id in 1..=3 {
        assert_eq!(cluster.replica(id).state_machine().entries.len(), 2);
    }
    // Refused where etcd refuses: not the leader, not a member.
    let now = cluster.now(leader);
    assert_eq!(
        cluster.replica(leader).transfer_leadership(now, target),
        Err(synod_core::TransferError::NotLeader {
            leader: Some(target)
        })
    );
    let now = cluster.now(target);
    assert_eq!(
        cluster.replica(target).transfer_leadership(now, 7),
        Err(synod_core::TransferError::UnknownMember(7))
    );
    // To a member that is cut off: abandoned after an election timeout.
    cluster.isolate(leader);
    let now = cluster.now(target);
    cluster
        .replica(target)
        .transfer_leadership(now, leader)
        .unwrap();
    cluster.run(cluster.configs[&target].core.election_timeout_ticks + 1);
    assert_eq!(cluster.leader(), Some(target));
    assert_eq!(cluster.replica(target).stats().leader_transfer_timeouts, 1);
}
