//! The seeded cluster simulator: replicas running `synod-core` with the KV state
//! machine, clients with retries, and a network and disks that misbehave on purpose.
//!
//! Everything happens in one thread in a discrete-event loop: an event queue ordered by
//! (time, sequence number), and one ChaCha RNG seeded from [`SimOptions::seed`]. The same
//! options replay the same run exactly, so a failing seed is a complete bug report.
//!
//! Time is counted in *units*; one message delay in the fault-free benchmark is
//! [`DELAY_UNIT`] units, and a node's clock ticks every [`TICK_UNITS`] units.
//!
//! What can go wrong (while [`SimOptions::faults`] is on):
//! * messages are delayed (so reordered), lost and duplicated;
//! * the network splits: full partitions, one node isolated, or **partial** ones where
//!   A sees B and C but B and C do not see each other;
//! * nodes crash and restart with only what their disk had synced: a crash cuts the
//!   queue of unsynced persist requests at a random point (the writes before the cut made
//!   it to disk although the node never learned so; the rest — a torn tail — are lost).
//!   Requests of commit marks only are reported durable once written, unsynced, as the
//!   write-ahead log does; the cut may still take them.
//!
//! Then the faults stop, every node restarts, the network heals, and the run must make
//! progress within a bound. The checkers live in [`crate::checks`].

use crate::checks::{Checker, Violation};
use crate::linearizability::{KeyedOp, Operation, RegisterOp, RegisterRet};
use bytes::Bytes;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use synod_core::{
    Backoff, Config, DurableState, Envelope, Mode, Node, NodeId, PersistRequest, Slot, Value,
};
use synod_kv::{
    Broadcast, Command, Compare, CompareResult, CompareTarget, KvStore, Op, OpResponse, PutRequest,
    RangeRequest, Response, StateMachine, TxnRequest,
};

/// Units of simulated time per one-way message delay in the fault-free benchmark.
pub const DELAY_UNIT: u64 = 100;
/// Units of simulated time per clock tick of a node.
pub const TICK_UNITS: u64 = 1_000;

/// What goes wrong during the fault phase.
#[derive(Clone, Debug, PartialEq)]
pub struct Faults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Message delay is uniform in `min_delay..=max_delay` units.
    pub min_delay: u64,
    pub max_delay: u64,
    /// A persist request takes up to this many units to sync.
    pub max_disk_delay: u64,
    pub partitions: bool,
    pub crashes: bool,
    /// A disk that lies about fsync: a crash loses *everything* (test of the checkers).
    pub amnesia: bool,
    /// Mean units between two fault events (partition change, crash, restart).
    pub mean_fault_interval: u64,
}

impl Faults {
    /// No loss, no partitions, no crashes; fixed delays of one [`DELAY_UNIT`].
    pub fn none() -> Faults {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            min_delay: DELAY_UNIT,
            max_delay: DELAY_UNIT,
            max_disk_delay: 0,
            partitions: false,
            crashes: false,
            amnesia: false,
            mean_fault_interval: u64::MAX,
        }
    }

    /// The default chaos of `synod sim` and the test suite.
    pub fn chaos() -> Faults {
        Faults {
            loss: 0.05,
            duplicate: 0.02,
            min_delay: 20,
            max_delay: 600,
            max_disk_delay: 300,
            partitions: true,
            crashes: true,
            amnesia: false,
            mean_fault_interval: 15 * TICK_UNITS,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: u64,
    pub mode: Mode,
    pub backoff: Backoff,
    pub clients: usize,
    /// Keys the clients read, write and compare-and-set.
    pub keys: u64,
    /// Operations each client issues in all.
    pub ops_per_client: usize,
    /// Ticks of faults before the cluster heals.
    pub fault_ticks: u64,
    /// After healing, every pending command must commit within this many ticks.
    pub liveness_ticks: u64,
    pub faults: Faults,
    /// Commands per slot (1 = no batching).
    pub max_batch_commands: usize,
    /// A client gives up on one attempt and retries (same sequence number) after this
    /// many ticks; during the fault phase it abandons the operation (outcome unknown)
    /// after `give_up_ticks`.
    pub retry_ticks: u64,
    pub give_up_ticks: u64,
    /// Clients send only to these nodes (default: any).
    pub client_nodes: Option<Vec<NodeId>>,
    /// Per-link delay override (from, to) → units, used by the livelock scenario.
    pub link_delays: BTreeMap<(NodeId, NodeId), u64>,
    /// Check the client history for linearizability (costly for huge runs).
    pub check_linearizability: bool,
    /// Clients send to the node that leads, when there is one (the benchmark's steady
    /// state); otherwise to a random node.
    pub clients_prefer_leader: bool,
    /// A client waits up to this many units between two operations.
    pub max_think_units: u64,
    /// Clients start at a random instant up to this many units in.
    pub max_start_units: u64,
    /// Messages and latencies are counted only once this many commands were applied
    /// (the benchmark skips the election).
    pub measure_after_commands: u64,
}

impl SimOptions {
    /// A chaotic run of a 3-node Multi-Paxos cluster.
    pub fn chaos(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            nodes: 3,
            mode: Mode::MultiPaxos,
            backoff: Backoff::Randomized,
            clients: 4,
            keys: 3,
            ops_per_client: 40,
            fault_ticks: 300,
            liveness_ticks: 400,
            faults: Faults::chaos(),
            max_batch_commands: 64,
            retry_ticks: 12,
            give_up_ticks: 60,
            link_delays: BTreeMap::new(),
            client_nodes: None,
            check_linearizability: true,
            clients_prefer_leader: false,
            max_think_units: TICK_UNITS,
            max_start_units: TICK_UNITS,
            measure_after_commands: 0,
        }
    }
}

/// What one run did and what it found.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SimReport {
    pub seed: u64,
    /// Slots chosen (the longest committed log).
    pub committed: u64,
    /// Client commands applied (once each).
    pub commands: u64,
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub ops_indefinite: u64,
    /// Protocol messages sent between distinct nodes.
    pub messages: u64,
    pub phase1_runs: u64,
    /// Client commands applied inside the measurement window.
    pub measured_commands: u64,
    pub crashes: u64,
    pub partitions: u64,
    /// Simulated time at the end, in ticks.
    pub ticks: u64,
    pub violations: Vec<Violation>,
}

#[derive(Clone, Debug)]
enum Event {
    Tick(NodeId),
    Deliver(Envelope),
    PersistDone {
        node: NodeId,
        epoch: u64,
    },
    /// A client request arrives at a node.
    Request {
        node: NodeId,
        client: usize,
        command: Command,
    },
    /// A node's reply arrives at a client.
    Reply {
        client: usize,
        seq: u64,
        response: Response,
    },
    ClientNext(usize),
    ClientRetry {
        client: usize,
        seq: u64,
        attempt: u32,
    },
    Fault,
    Heal,
}

struct Scheduled {
    time: u64,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.order) == (other.time, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest first.
        (other.time, other.order).cmp(&(self.time, self.order))
    }
}

/// One replica as its runtime would hold it: the core, its disk and its state machine.
struct Replica {
    config: Config,
    node: Option<Node>,
    /// Bumped on every crash, so events of an earlier life are ignored.
    epoch: u64,
    /// What the disk holds for sure.
    durable: DurableState,
    /// Persist requests handed to the disk, not yet synced.
    unsynced: VecDeque<PersistRequest>,
    /// Requests of commit marks only, reported durable once written but not synced (as
    /// the write-ahead log does, see `PersistRequest::needs_sync`): the next synced
    /// request makes them durable; a crash before it may lose them.
    written: VecDeque<PersistRequest>,
    /// When the last queued persist completes (they complete in order).
    disk_busy_until: u64,
    kv: KvStore,
    /// The same commands through the total-order broadcast machine: every replica must
    /// deliver the same sequence.
    broadcast: Broadcast,
    /// The last slot handed to the state machine (no-ops included).
    applied: Slot,
    /// Client requests received here, answered when their command is applied here.
    waiting: BTreeMap<(u64, u64), usize>,
    /// When this node first saw each command it proposed: for commit latency.
    proposed_at: BTreeMap<(u64, u64), u64>,
}

/// One client operation in the workload.
#[derive(Clone, Debug)]
struct ClientOp {
    key: u64,
    op: RegisterOp<u64>,
}

struct Client {
    /// Sequence number of the operation in flight (sessions start at 1).
    seq: u64,
    in_flight: Option<InFlight>,
    done: usize,
    /// A value this client saw recently (a plausible CAS `from`).
    last_seen: BTreeMap<u64, u64>,
}

struct InFlight {
    op: ClientOp,
    history_index: usize,
    started: u64,
}

/// A seeded simulation of one cluster.
pub struct Simulation {
    options: SimOptions,
    rng: ChaCha8Rng,
    now: u64,
    order: u64,
    queue: BinaryHeap<Scheduled>,
    replicas: BTreeMap<NodeId, Replica>,
    clients: Vec<Client>,
    /// Directed links that drop everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    faulty: bool,
    /// Nodes with new inputs since their last `take_ready`. A runtime hands a node every
    /// input that is ready and only then takes its outputs; the simulator does the same
    /// at each instant, which is what lets commands that arrive together share a slot.
    dirty: BTreeSet<NodeId>,
    healed_at: Option<u64>,
    history: Vec<Operation<KeyedOp<u64, u64>, RegisterRet<u64>>>,
    checker: Checker,
    report: SimReport,
    /// Commit latencies at the proposing node, in units.
    latencies: Vec<u64>,
}

impl Simulation {
    pub fn new(options: SimOptions) -> Simulation {
        let ids: Vec<NodeId> = (1..=options.nodes).collect();
        let replicas = ids
            .iter()
            .map(|id| {
                let mut config = Config::new(*id, ids.clone());
                config.mode = options.mode;
                config.backoff = options.backoff;
                config.seed = options.seed.wrapping_mul(1_000_003).wrapping_add(*id);
                config.max_batch_commands = options.max_batch_commands;
                let replica = Replica {
                    node: Some(Node::new(config.clone()).expect("valid config")),
                    config,
                    epoch: 0,
                    durable: DurableState::default(),
                    unsynced: VecDeque::new(),
                    written: VecDeque::new(),
                    disk_busy_until: 0,
                    kv: KvStore::new(),
                    broadcast: Broadcast::new(),
                    applied: 0,
                    waiting: BTreeMap::new(),
                    proposed_at: BTreeMap::new(),
                };
                (*id, replica)
            })
            .collect();
        let clients = (0..options.clients)
            .map(|_| Client {
                seq: 0,
                in_flight: None,
                done: 0,
                last_seen: BTreeMap::new(),
            })
            .collect();
        let mut sim = Simulation {
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            now: 0,
            order: 0,
            queue: BinaryHeap::new(),
            replicas,
            clients,
            blocked: BTreeSet::new(),
            faulty: options.fault_ticks > 0,
            dirty: BTreeSet::new(),
            healed_at: None,
            history: Vec::new(),
            checker: Checker::default(),
            report: SimReport {
                seed: options.seed,
                ..SimReport::default()
            },
            latencies: Vec::new(),
            options,
        };
        for id in ids {
            // Nodes tick out of phase with each other.
            let phase = sim.rng.gen_range(0..TICK_UNITS);
            sim.schedule(phase, Event::Tick(id));
        }
        for client in 0..sim.clients.len() {
            let start = sim.rng.gen_range(0..=sim.options.max_start_units);
            sim.schedule(start, Event::ClientNext(client));
        }
        if sim.faulty {
            let first = sim.fault_gap();
            sim.schedule(first, Event::Fault);
            sim.schedule(sim.options.fault_ticks * TICK_UNITS, Event::Heal);
        } else {
            sim.healed_at = Some(0);
        }
        sim
    }

    fn schedule(&mut self, after: u64, event: Event) {
        self.order += 1;
        self.queue.push(Scheduled {
            time: self.now + after,
            order: self.order,
            event,
        });
    }

    fn fault_gap(&mut self) -> u64 {
        let mean = self.options.faults.mean_fault_interval.max(1);
        self.rng.gen_range(mean / 4..=mean + mean / 2).max(1)
    }

    /// Runs to the end and returns what happened.
    pub fn run(self) -> SimReport {
        self.run_with_latencies().0
    }

    /// Runs to the end; also returns the commit latency of every client command at the
    /// node that proposed it, in units (for the benchmark).
    pub fn run_with_latencies(mut self) -> (SimReport, Vec<u64>) {
        let deadline = (self.options.fault_ticks + self.options.liveness_ticks) * TICK_UNITS;
        loop {
            let next_time = self.queue.peek().map(|s| s.time);
            if !self.dirty.is_empty() && next_time.is_none_or(|t| t > self.now) {
                for id in std::mem::take(&mut self.dirty) {
                    self.drain(id);
                }
                continue;
            }
            let Some(next) = self.queue.pop() else { break };
            self.now = next.time;
            if self.now > deadline {
                break;
            }
            self.handle(next.event);
            if self.healed_at.is_some() && self.all_clients_done() && self.converged() {
                break;
            }
        }
        let latencies = std::mem::take(&mut self.latencies);
        (self.finish(), latencies)
    }

    fn all_clients_done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.done >= self.options.ops_per_client && c.in_flight.is_none())
    }

    /// Every replica is up and has applied the same, full log.
    fn converged(&self) -> bool {
        let mut commits = self.replicas.values().map(|r| {
            r.node
                .as_ref()
                .map(|n| (n.status().commit_index, r.applied))
        });
        let first = match commits.next() {
            Some(Some(first)) => first,
            _ => return false,
        };
        first.0 == first.1 && commits.all(|c| c == Some(first))
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Tick(id) => {
                let replica = self.replicas.get_mut(&id).expect("known node");
                if let Some(node) = replica.node.as_mut() {
                    node.tick();
                    self.dirty.insert(id);
                }
                self.schedule(TICK_UNITS, Event::Tick(id));
            }
            Event::Deliver(envelope) => {
                let to = envelope.to;
                let replica = self.replicas.get_mut(&to).expect("known node");
                if let Some(node) = replica.node.as_mut() {
                    if let Err(error) = node.step(envelope) {
                        self.report.violations.push(Violation::Refused {
                            node: to,
                            error: format!("{error:?}"),
                        });
                    }
                    self.dirty.insert(to);
                }
            }
            Event::PersistDone { node: id, epoch } => {
                let replica = self.replicas.get_mut(&id).expect("known node");
                if replica.epoch != epoch || replica.node.is_none() {
                    return;
                }
                let request = replica.unsynced.pop_front().expect("a queued persist");
                let persist_id = request.id;
                if request.needs_sync() {
                    for written in replica.written.drain(..) {
                        replica.durable.apply_all(&written.ops);
                    }
                    replica.durable.apply_all(&request.ops);
                } else {
                    replica.written.push_back(request);
                }
                replica
                    .node
                    .as_mut()
                    .expect("node is up")
                    .on_persisted(persist_id);
                self.dirty.insert(id);
            }
            Event::Request {
                node: id,
                client,
                command,
            } => self.on_request(id, client, command),
            Event::Reply {
                client,
                seq,
                response,
            } => self.on_reply(client, seq, response),
            Event::ClientNext(client) => self.client_next(client),
            Event::ClientRetry {
                client,
                seq,
                attempt,
            } => self.client_retry(client, seq, attempt),
            Event::Fault => {
                if self.faulty {
                    self.inject_fault();
                    let gap = self.fault_gap();
                    self.schedule(gap, Event::Fault);
                }
            }
            Event::Heal => self.heal(),
        }
    }

    /// Hands a node's outputs to the network, the disk and the state machine.
    fn drain(&mut self, id: NodeId) {
        loop {
            let replica = self.replicas.get_mut(&id).expect("known node");
            let node = match replica.node.as_mut() {
                Some(node) if node.has_ready() => node,
                _ => return,
            };
            let ready = node.take_ready();
            if let Some(request) = ready.persist {
                let disk_delay = self.rng.gen_range(0..=self.options.faults.max_disk_delay);
                let replica = self.replicas.get_mut(&id).expect("known node");
                replica.unsynced.push_back(request);
                let done = (self.now + disk_delay).max(replica.disk_busy_until);
                replica.disk_busy_until = done;
                let epoch = replica.epoch;
                self.schedule(done - self.now, Event::PersistDone { node: id, epoch });
            }
            for envelope in ready.messages {
                self.send(envelope);
            }
            for committed in ready.committed {
                self.apply(id, committed.slot, committed.value);
            }
        }
    }

    fn measuring(&self) -> bool {
        self.checker.applied_commands() >= self.options.measure_after_commands
    }

    fn send(&mut self, envelope: Envelope) {
        if envelope.from == envelope.to {
            self.schedule(0, Event::Deliver(envelope));
            return;
        }
        if self.measuring() {
            self.report.messages += 1;
        }
        if self.blocked.contains(&(envelope.from, envelope.to)) {
            return;
        }
        if self.faulty && self.rng.gen_bool(self.options.faults.loss) {
            return;
        }
        let copies = if self.faulty && self.rng.gen_bool(self.options.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.link_delay(envelope.from, envelope.to);
            self.schedule(delay, Event::Deliver(envelope.clone()));
        }
    }

    fn link_delay(&mut self, from: NodeId, to: NodeId) -> u64 {
        match self.options.link_delays.get(&(from, to)) {
            Some(delay) => *delay,
            None => self.random_delay(),
        }
    }

    fn random_delay(&mut self) -> u64 {
        let faults = &self.options.faults;
        self.rng.gen_range(faults.min_delay..=faults.max_delay)
    }

    /// A chosen slot reaches a replica's state machine.
    fn apply(&mut self, id: NodeId, slot: Slot, value: Value) {
        if let Some(violation) = self.checker.on_commit(id, slot, &value) {
            self.report.violations.push(violation);
        }
        self.replicas.get_mut(&id).expect("known node").applied = slot;
        let commands = match value {
            Value::Noop => return,
            Value::Commands(commands) => commands,
        };
        for bytes in commands {
            let replica = self.replicas.get_mut(&id).expect("known node");
            replica.broadcast.apply(slot, &bytes);
            let command = match Command::decode(&bytes) {
                Ok(command) => command,
                Err(error) => {
                    self.report.violations.push(Violation::Refused {
                        node: id,
                        error: format!("undecodable command in slot {slot}: {error}"),
                    });
                    continue;
                }
            };
            let replica = self.replicas.get_mut(&id).expect("known node");
            let response = replica.kv.execute(slot, &command);
            let key = (command.client, command.seq);
            let proposed_at = replica.proposed_at.remove(&key);
            let waiting = replica.waiting.remove(&key);
            let fresh = !self.checker.was_applied(command.client, command.seq);
            if fresh && self.measuring() {
                self.report.measured_commands += 1;
                if let Some(at) = proposed_at {
                    self.latencies.push(self.now - at);
                }
            }
            self.checker.on_apply(id, slot, &command);
            if let Some(client) = waiting {
                let delay = self.random_delay();
                self.schedule(
                    delay,
                    Event::Reply {
                        client,
                        seq: command.seq,
                        response,
                    },
                );
            }
        }
    }

    fn on_request(&mut self, id: NodeId, client: usize, command: Command) {
        let now = self.now;
        let replica = self.replicas.get_mut(&id).expect("known node");
        let Some(node) = replica.node.as_mut() else {
            return; // a crashed node hears nothing; the client retries
        };
        let key = (command.client, command.seq);
        if node.propose(command.encode()).is_ok() {
            replica.waiting.insert(key, client);
            replica.proposed_at.entry(key).or_insert(now);
        }
        self.dirty.insert(id);
    }

    // ---- clients ----

    fn client_next(&mut self, client: usize) {
        if self.clients[client].done >= self.options.ops_per_client {
            return;
        }
        let key = self.rng.gen_range(0..self.options.keys);
        let seq = self.clients[client].seq + 1;
        let value = (client as u64 + 1) * 1_000_000 + seq;
        let op = match self.rng.gen_range(0..10) {
            0..=3 => RegisterOp::Read,
            4..=6 => RegisterOp::Write(value),
            _ => {
                let from = match self.clients[client].last_seen.get(&key) {
                    Some(v) if self.rng.gen_bool(0.8) => *v,
                    _ => self.rng.gen_range(0..3),
                };
                RegisterOp::Cas { from, to: value }
            }
        };
        let history_index = self.history.len();
        self.history.push(Operation {
            client: client as u64,
            op: KeyedOp {
                key,
                op: op.clone(),
            },
            call: self.now,
            ret: None,
        });
        let state = &mut self.clients[client];
        state.seq = seq;
        state.in_flight = Some(InFlight {
            op: ClientOp { key, op },
            history_index,
            started: self.now,
        });
        self.client_send(client, 0);
    }

    fn client_send(&mut self, client: usize, attempt: u32) {
        let Some(in_flight) = &self.clients[client].in_flight else {
            return;
        };
        let seq = self.clients[client].seq;
        let command = Command {
            client: client as u64 + 1,
            seq,
            op: to_kv_op(&in_flight.op),
        };
        let leader = self
            .replicas
            .iter()
            .find(|(_, r)| {
                r.node
                    .as_ref()
                    .is_some_and(|n| n.status().role == synod_core::Role::Leader)
            })
            .map(|(id, _)| *id);
        let node = match (&self.options.client_nodes, leader) {
            (Some(nodes), _) => nodes[self.rng.gen_range(0..nodes.len())],
            (None, Some(leader)) if self.options.clients_prefer_leader => leader,
            _ => self.rng.gen_range(1..=self.options.nodes),
        };
        let lost = self.faulty && self.rng.gen_bool(self.options.faults.loss);
        if !lost {
            let delay = self.random_delay();
            self.schedule(
                delay,
                Event::Request {
                    node,
                    client,
                    command,
                },
            );
        }
        self.schedule(
            self.options.retry_ticks * TICK_UNITS,
            Event::ClientRetry {
                client,
                seq,
                attempt: attempt + 1,
            },
        );
    }

    fn client_retry(&mut self, client: usize, seq: u64, attempt: u32) {
        let state = &self.clients[client];
        let Some(in_flight) = &state.in_flight else {
            return;
        };
        if state.seq != seq {
            return;
        }
        // During the faults an operation may be abandoned: its outcome stays unknown.
        let waited = self.now - in_flight.started;
        if self.healed_at.is_none() && waited >= self.options.give_up_ticks * TICK_UNITS {
            self.report.ops_indefinite += 1;
            self.finish_op(client);
            return;
        }
        self.client_send(client, attempt);
    }

    fn on_reply(&mut self, client: usize, seq: u64, response: Response) {
        let state = &self.clients[client];
        if state.seq != seq {
            return; // a late duplicate reply
        }
        let Some(in_flight) = &state.in_flight else {
            return;
        };
        let ret = match register_ret(&in_flight.op, &response) {
            Ok(ret) => ret,
            Err(error) => {
                self.report.violations.push(Violation::BadResponse {
                    client: client as u64,
                    seq,
                    error,
                });
                return;
            }
        };
        let key = in_flight.op.key;
        let index = in_flight.history_index;
        match &ret {
            RegisterRet::ReadOk(Some(v)) => {
                self.clients[client].last_seen.insert(key, *v);
            }
            RegisterRet::WriteOk | RegisterRet::CasOk => {
                let written = match &self.history[index].op.op {
                    RegisterOp::Write(v) | RegisterOp::Cas { to: v, .. } => *v,
                    RegisterOp::Read => unreachable!("reads return ReadOk"),
                };
                self.clients[client].last_seen.insert(key, written);
                self.checker
                    .on_acknowledged(client as u64 + 1, seq, self.now / TICK_UNITS);
            }
            _ => {}
        }
        match &ret {
            RegisterRet::CasNotFound | RegisterRet::CasMismatch => self.report.ops_failed += 1,
            _ => self.report.ops_ok += 1,
        }
        self.history[index].ret = Some((self.now, ret));
        self.finish_op(client);
    }

    fn finish_op(&mut self, client: usize) {
        let state = &mut self.clients[client];
        state.in_flight = None;
        state.done += 1;
        let think = self.rng.gen_range(0..=self.options.max_think_units);
        self.schedule(think, Event::ClientNext(client));
    }

    // ---- faults ----

    fn inject_fault(&mut self) {
        let ids: Vec<NodeId> = self.replicas.keys().copied().collect();
        let f = (self.options.nodes - 1) / 2;
        let roll = self.rng.gen_range(0..10);
        let faults = self.options.faults.clone();
        match roll {
            0..=3 if faults.partitions => self.new_partition(&ids),
            4 if faults.partitions => self.blocked.clear(),
            5..=6 if faults.crashes => {
                let down = self.replicas.values().filter(|r| r.node.is_none()).count() as u64;
                if down < f {
                    let id = ids[self.rng.gen_range(0..ids.len())];
                    self.crash(id);
                }
            }
            7..=9 if faults.crashes => {
                let down: Vec<NodeId> = self
                    .replicas
                    .iter()
                    .filter(|(_, r)| r.node.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                if !down.is_empty() {
                    let id = down[self.rng.gen_range(0..down.len())];
                    self.restart(id);
                }
            }
            _ => {}
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
                let lone = ids[self.rng.gen_range(0..ids.len())];
                for &other in ids.iter().filter(|&&o| o != lone) {
                    cut(&mut self.blocked, lone, other);
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
    }

    fn crash(&mut self, id: NodeId) {
        self.report.crashes += 1;
        let replica = self.replicas.get_mut(&id).expect("known node");
        if let Some(node) = replica.node.take() {
            self.report.phase1_runs += node.status().phase1_runs;
        }
        replica.epoch += 1;
        // The disk wrote requests in order; the crash cut the queue somewhere. What lies
        // before the cut is durable although the node never heard so; the rest is lost.
        let queued: Vec<PersistRequest> = replica
            .written
            .drain(..)
            .chain(replica.unsynced.drain(..))
            .collect();
        let synced = self.rng.gen_range(0..=queued.len());
        for request in queued.into_iter().take(synced) {
            replica.durable.apply_all(&request.ops);
        }
        if self.options.faults.amnesia {
            replica.durable = DurableState::default();
        }
        replica.disk_busy_until = 0;
        replica.waiting.clear();
        replica.proposed_at.clear();
        self.checker.on_restart(id);
    }

    fn restart(&mut self, id: NodeId) {
        let replica = self.replicas.get_mut(&id).expect("known node");
        if replica.node.is_some() {
            return;
        }
        let node = Node::recover(replica.config.clone(), replica.durable.clone())
            .expect("recovering from durable state");
        replica.node = Some(node);
        // The state machine is rebuilt from the log: the recovered node re-delivers every
        // committed slot from the start.
        replica.kv = KvStore::new();
        replica.broadcast = Broadcast::new();
        replica.applied = 0;
        self.checker.on_restart(id);
        self.dirty.insert(id);
    }

    fn heal(&mut self) {
        self.faulty = false;
        self.blocked.clear();
        let down: Vec<NodeId> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.node.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in down {
            self.restart(id);
        }
        self.healed_at = Some(self.now);
    }

    fn finish(mut self) -> SimReport {
        self.report.ticks = self.now / TICK_UNITS;
        for replica in self.replicas.values() {
            if let Some(node) = &replica.node {
                self.report.phase1_runs += node.status().phase1_runs;
            }
        }
        self.report.committed = self.checker.chosen_slots();
        self.report.commands = self.checker.applied_commands();
        let healed = self.healed_at.is_some();
        let converged = self.converged();
        if healed && !self.all_clients_done() {
            let pending: Vec<usize> = (0..self.clients.len())
                .filter(|c| self.clients[*c].in_flight.is_some())
                .collect();
            self.report.violations.push(Violation::Liveness(format!(
                "{} client operations still pending {} ticks after the faults stopped (clients {pending:?})",
                pending.len(),
                self.options.liveness_ticks
            )));
        } else if healed && !converged {
            let commits: Vec<String> = self
                .replicas
                .iter()
                .map(|(id, r)| {
                    let commit = r.node.as_ref().map(|n| n.status().commit_index);
                    format!("n{id}: commit {commit:?} applied {}", r.applied)
                })
                .collect();
            self.report.violations.push(Violation::Liveness(format!(
                "replicas did not converge after healing: {}",
                commits.join(", ")
            )));
        }
        let live: Vec<NodeId> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.node.is_some())
            .map(|(id, _)| *id)
            .collect();
        let sequences: Vec<(NodeId, &[(Slot, Bytes)])> = self
            .replicas
            .iter()
            .filter(|(_, r)| r.node.is_some())
            .map(|(id, r)| (*id, r.broadcast.delivered()))
            .collect();
        if let Some(violation) = crate::checks::check_broadcast(&sequences, healed && converged) {
            self.report.violations.push(violation);
        }
        if healed && converged {
            let lost = self.checker.lost_acknowledged_writes(&live);
            self.report.violations.extend(lost);
        }
        if self.options.check_linearizability {
            if let Some(violation) = crate::checks::check_history(&self.history) {
                self.report.violations.push(violation);
            }
        }
        self.report
    }
}

/// The KV operation that implements a register operation on one key.
fn to_kv_op(op: &ClientOp) -> Op {
    let key = Bytes::from(format!("k{}", op.key));
    match &op.op {
        RegisterOp::Read => read(key),
        RegisterOp::Write(value) => Op::Put(put(key, *value)),
        RegisterOp::Cas { from, to } => Op::Txn(TxnRequest {
            compare: vec![Compare {
                key: key.clone(),
                range_end: Bytes::new(),
                target: CompareTarget::Value(Bytes::from(from.to_string())),
                result: CompareResult::Equal,
            }],
            success: vec![Op::Put(put(key.clone(), *to))],
            failure: vec![read(key)],
        }),
    }
}

fn read(key: Bytes) -> Op {
    Op::Range(RangeRequest {
        key,
        range_end: Bytes::new(),
        limit: 0,
        count_only: false,
        keys_only: false,
        revision: 0,
    })
}

fn put(key: Bytes, value: u64) -> PutRequest {
    PutRequest {
        key,
        value: Bytes::from(value.to_string()),
        prev_kv: false,
        lease: 0,
        ignore_value: false,
        ignore_lease: false,
    }
}

/// What a KV response means for the register operation that asked.
fn register_ret(op: &ClientOp, response: &Response) -> Result<RegisterRet<u64>, String> {
    let result = response
        .result
        .as_ref()
        .map_err(|error| format!("error response: {error}"))?;
    let parse = |value: &Bytes| -> Result<u64, String> {
        std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("unparsable value {value:?}"))
    };
    match (&op.op, result) {
        (RegisterOp::Read, OpResponse::Range(range)) => match range.kvs.first() {
            Some(kv) => Ok(RegisterRet::ReadOk(Some(parse(&kv.value)?))),
            None => Ok(RegisterRet::ReadOk(None)),
        },
        (RegisterOp::Write(_), OpResponse::Put(_)) => Ok(RegisterRet::WriteOk),
        (RegisterOp::Cas { .. }, OpResponse::Txn(txn)) => {
            if txn.succeeded {
                return Ok(RegisterRet::CasOk);
            }
            match txn.responses.first() {
                Some(OpResponse::Range(range)) if range.kvs.is_empty() => {
                    Ok(RegisterRet::CasNotFound)
                }
                Some(OpResponse::Range(_)) => Ok(RegisterRet::CasMismatch),
                other => Err(format!("unexpected txn failure response {other:?}")),
            }
        }
        (op, result) => Err(format!("response {result:?} does not answer {op:?}")),
    }
}
