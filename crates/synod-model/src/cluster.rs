//! The state the checker explores, and the harness: how each action drives the real
//! `synod_core::Node` and what a runtime does with its outputs.
//!
//! A replica is what a runtime holds: the core, its disk (durable state plus the queue of
//! persist requests not yet durable), the state machine's applied log and saved snapshot,
//! and a real-time clock. The network is the set of messages in flight. The ghost
//! records what no node knows but the properties need: which values a quorum durably
//! accepted (chosen, in the Paxos sense), which ballots each node vouched for, which
//! writes were acknowledged before each read was asked for.

use crate::hashed::Hashed;
use crate::model::SynodModel;
use crate::options::ModelOptions;
use crate::properties as property;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use synod_core::{
    Ballot, Committed, DurableState, Entry, Envelope, Event, Message, Node, NodeId, PersistOp,
    PersistRequest, ReadPath, Slot, Value,
};

/// One replica and what its runtime holds around it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Replica {
    /// Node id.
    pub id: NodeId,
    /// The core; None while crashed.
    pub node: Option<Node>,
    /// What the disk holds for sure.
    pub durable: DurableState,
    /// Persist requests issued and not yet durable, in order.
    pub disk: Vec<PersistRequest>,
    /// How many leading requests of `disk` were reported durable although unsynced
    /// (commit marks only, see `PersistRequest::needs_sync`): a crash may still lose them.
    pub written: usize,
    /// The state machine: the value of slot `i + 1` at index `i`.
    pub applied: Vec<Value>,
    /// The state-machine snapshot saved on disk (by `compact` or a peer's snapshot).
    pub snapshot: Vec<Value>,
    /// Real time, in ticks, since the start (crashes do not stop it).
    pub clock: u8,
    /// Ticks of real time the core has not been given yet (`stale-lease-clock` only).
    pub lag: u8,
    /// The disk is slow: persist requests queue (in order) until `Persist` actions
    /// complete them. A disk that is not slow completes a request at once, unless
    /// earlier ones are still queued.
    pub disk_slow: bool,
}

/// Something in flight: a protocol message, or a state-machine snapshot a runtime
/// streams to a peer that asked for compacted entries.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Packet {
    /// A message of the protocol.
    Message(Envelope),
    /// The sender's saved snapshot, for `to` to install.
    Snapshot {
        /// Who streams it.
        from: NodeId,
        /// Who installs it.
        to: NodeId,
        /// The state machine through slot `values.len()`.
        values: Vec<Value>,
    },
}

impl Packet {
    /// The node that sent the packet.
    pub fn from(&self) -> NodeId {
        match self {
            Packet::Message(envelope) => envelope.from,
            Packet::Snapshot { from, .. } => *from,
        }
    }

    /// The node the packet is for.
    pub fn to(&self) -> NodeId {
        match self {
            Packet::Message(envelope) => envelope.to,
            Packet::Snapshot { to, .. } => *to,
        }
    }
}

/// A property that failed, and how.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Violation {
    /// The property's name (see `properties`).
    pub property: &'static str,
    /// What happened, for the trace.
    pub detail: String,
}

/// What the checker knows and no node does.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Ghost {
    /// Durable accepts: (slot, ballot) → (value, bit set of the nodes that hold it).
    pub votes: BTreeMap<(Slot, Ballot), (Value, u64)>,
    /// Slots a quorum durably accepted at one ballot, and the value.
    pub chosen: BTreeMap<Slot, Value>,
    /// Every (slot, ballot) at which a quorum durably accepted.
    pub chosen_at: BTreeSet<(Slot, Ballot)>,
    /// Every value proposed in an Accept: (slot, ballot) → value.
    pub proposals: BTreeMap<(Slot, Ballot), Value>,
    /// Per node (index id − 1): the highest ballot it vouched for in a message.
    pub vouched: Vec<Ballot>,
    /// The highest slot any state machine applied (an acknowledged write at most).
    pub delivered_high: Slot,
    /// Reads asked for and not answered: request → (node, `delivered_high` then).
    pub reads: BTreeMap<u64, (NodeId, Slot)>,
    /// The first property that failed.
    pub violation: Option<Violation>,
}

/// How much of each bounded action has been used.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct Budget {
    /// Values proposed so far (value `k` is the `k`-th letter).
    pub proposed: u8,
    /// Reads asked for.
    pub reads: u8,
    /// Crashes.
    pub crashes: u8,
    /// Compactions.
    pub compactions: u8,
    /// Slow-disk episodes.
    pub slow_disks: u8,
    /// Ballots started (Phase 1 runs), by all nodes.
    pub ballots: u8,
    /// Ticks a runtime stalled through.
    pub stalls: u8,
    /// Duplicated deliveries.
    pub duplicates: u8,
    /// Early election timeouts.
    pub timeouts: u8,
}

/// Bits of [`Cluster::happened`]: what the last action did, for `sometimes` properties.
pub mod happened {
    /// A leader answered a read at once, under its lease, without a message.
    pub const LEASE_READ: u8 = 1;
    /// A node that compacted slots a Prepare covers received it.
    pub const COMPACTED_IN_PHASE1: u8 = 2;
    /// A node installed a peer's snapshot.
    pub const SNAPSHOT_INSTALLED: u8 = 4;
    /// A node crashed before some persist request it issued was durable.
    pub const CRASH_LOST_UNSYNCED: u8 = 8;
}

/// The whole state: replicas, network, ghost.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Cluster {
    /// Replica of node `i + 1` at index `i`.
    pub replicas: Vec<Hashed<Replica>>,
    /// The packets in flight, sorted, each once. With `max_delay` 0 (the default) a
    /// delivery takes a packet out (a duplicating one leaves it in) and the cluster's
    /// tick loses what is left; with no `max_delay` every packet ever sent stays in: any
    /// packet can be delivered at any later time, any number of times, or never
    /// (docs/model-checking.md).
    pub network: Arc<Vec<Hashed<Packet>>>,
    /// See [`Ghost`].
    pub ghost: Hashed<Ghost>,
    /// See [`Budget`].
    pub budget: Budget,
    /// See [`happened`].
    pub happened: u8,
    /// Nothing but node-local faults (crash, restart, compaction, a slow disk) happened
    /// since the cluster's last tick: with `faults_at_ticks`, those happen only then.
    pub at_tick_start: bool,
}

/// One step of the checker.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Action {
    /// Deliver the packet. With `max_delay` it leaves the network; without, it stays in
    /// (it may be delivered again).
    Deliver(Hashed<Packet>),
    /// Deliver the packet and leave it in the network: the network duplicated it (with
    /// `max_delay` only, bounded by `duplicates`).
    Duplicate(Hashed<Packet>),
    /// Real time advances one tick at the node, and the core ticks.
    Tick(NodeId),
    /// Real time advances one tick everywhere (clocks in lockstep, `max_skew` 0): every
    /// node's core ticks, in id order.
    TickAll,
    /// Real time advances at the node (in lockstep: everywhere) but the node's runtime
    /// stalls: its core does not hear of it until the runtime's next input, before which
    /// a correct runtime advances the core's clock (`Node::advance_to`), as
    /// `synod-replica` does. The `stale-lease-clock` runtime does not: the core handles
    /// inputs on its stale clock until the next tick.
    Stall(NodeId),
    /// The node's election timer runs out at the next tick, whatever its random draw
    /// (`Node::expire_election_timer`): an early timeout, at a tick's start.
    Timeout(NodeId),
    /// The node's disk turns slow: its next persist requests stay pending until
    /// `Persist` completes them (or a crash loses them).
    SlowDisk(NodeId),
    /// The disk makes the node's oldest pending persist request durable.
    Persist(NodeId),
    /// The node crashes; the first `surviving` pending persist requests reached the disk.
    Crash {
        /// Who.
        node: NodeId,
        /// How many pending persist requests survive.
        surviving: usize,
    },
    /// The node restarts from its durable state.
    Restart(NodeId),
    /// A client proposes the next value at the node.
    Propose(NodeId),
    /// A client asks the node for a linearizable read.
    Read(NodeId),
    /// The node's state machine snapshots what it applied; the log is compacted.
    Compact(NodeId),
}

/// Where clients proposed before the first tick, in each initial state (see
/// [`Cluster::initial`]): the node of the first value, of the second, … With
/// `propose_until` other than 0 there is one initial state, and proposals are actions.
pub fn placements(options: &ModelOptions) -> Vec<Vec<NodeId>> {
    let mut all = vec![Vec::new()];
    if options.propose_until != Some(0) {
        return all;
    }
    if let Some(placement) = &options.placement {
        return vec![placement.clone()];
    }
    let mut last = all.clone();
    for _ in 0..options.values {
        let mut longer = Vec::new();
        for placement in &last {
            for id in options.node_ids() {
                let mut placement = placement.clone();
                placement.push(id);
                longer.push(placement);
            }
        }
        all.extend(longer.iter().cloned());
        last = longer;
    }
    all
}

/// The value a client proposes `k`-th: "a", "b", …
pub fn client_value(k: u8) -> Bytes {
    Bytes::from(vec![b'a' + k])
}

fn index(id: NodeId) -> usize {
    id as usize - 1
}

impl Cluster {
    /// The initial states: every node fresh, its clock at the last tick before any
    /// election timer can fire (nothing can happen earlier but client requests, which
    /// queue), nothing sent. With `propose_until` 0, clients have proposed the first `k`
    /// values (for every `k` up to `values`) at any nodes: one initial state per
    /// placement, in a fixed order.
    pub fn initial(model: &SynodModel) -> Vec<Cluster> {
        let options = &model.options;
        let quiet = options.quiet_ticks();
        let replicas: Vec<Hashed<Replica>> = options
            .node_ids()
            .into_iter()
            .map(|id| {
                let mut node = model.boot(id, DurableState::default());
                node.advance_to(u64::from(quiet));
                assert!(
                    !node.has_ready(),
                    "no timer fires in the first {quiet} ticks"
                );
                Hashed::new(Replica {
                    id,
                    node: Some(node),
                    durable: DurableState::default(),
                    disk: Vec::new(),
                    written: 0,
                    applied: Vec::new(),
                    snapshot: Vec::new(),
                    clock: quiet,
                    lag: 0,
                    disk_slow: false,
                })
            })
            .collect();
        let fresh = Cluster {
            replicas,
            network: Arc::new(Vec::new()),
            ghost: Hashed::new(Ghost {
                vouched: vec![Ballot::ZERO; options.nodes as usize],
                ..Ghost::default()
            }),
            budget: Budget::default(),
            happened: 0,
            at_tick_start: true,
        };
        placements(options)
            .into_iter()
            .map(|placement| {
                let mut state = fresh.clone();
                for id in placement {
                    state.apply(model, &Action::Propose(id));
                }
                state.happened = 0;
                state.at_tick_start = true;
                state
            })
            .collect()
    }

    /// The replica of node `id`.
    pub fn replica(&self, id: NodeId) -> &Replica {
        &self.replicas[index(id)]
    }

    /// True once a property failed: nothing is explored past it.
    pub fn violated(&self) -> Option<&Violation> {
        self.ghost.violation.as_ref()
    }

    /// Records a failed property (the first one wins).
    pub fn set_violation(&mut self, property: &'static str, detail: String) {
        self.ghost.update(|ghost| {
            if ghost.violation.is_none() {
                ghost.violation = Some(Violation { property, detail });
            }
        });
    }

    /// Every action enabled in this state, in a fixed order.
    pub fn actions(&self, model: &SynodModel, actions: &mut Vec<Action>) {
        if self.violated().is_some() {
            return;
        }
        let options = &model.options;
        let can_duplicate =
            options.max_delay.is_some() && self.budget.duplicates < options.duplicates;
        for packet in self.network.iter() {
            if self.replica(packet.to()).node.is_some() {
                actions.push(Action::Deliver(packet.clone()));
                if can_duplicate {
                    actions.push(Action::Duplicate(packet.clone()));
                }
            }
        }
        let slowest = self.replicas.iter().map(|r| r.clock).min().unwrap_or(0);
        let can_stall = self.budget.stalls < options.stalls;
        let lockstep = options.max_skew == 0;
        if lockstep && slowest < options.ticks {
            actions.push(Action::TickAll);
            if can_stall {
                let stalls = |r: &&Hashed<Replica>| {
                    r.node.is_some() && ModelOptions::allows(&options.stall_nodes, r.id)
                };
                for replica in self.replicas.iter().filter(stalls) {
                    actions.push(Action::Stall(replica.id));
                }
            }
        }
        let faults_now = !options.faults_at_ticks || self.at_tick_start;
        for replica in &self.replicas {
            let id = replica.id;
            if !lockstep
                && replica.clock < options.ticks
                && replica.clock < slowest + options.max_skew
            {
                actions.push(Action::Tick(id));
                if can_stall
                    && replica.node.is_some()
                    && ModelOptions::allows(&options.stall_nodes, id)
                {
                    actions.push(Action::Stall(id));
                }
            }
            let Some(node) = &replica.node else {
                if faults_now {
                    actions.push(Action::Restart(id));
                }
                continue;
            };
            if replica.disk.len() > replica.written {
                actions.push(Action::Persist(id));
            }
            if faults_now
                && self.budget.timeouts < options.timeouts
                && node.status().role != synod_core::Role::Leader
                && ModelOptions::allows(&options.timeout_nodes, id)
            {
                actions.push(Action::Timeout(id));
            }
            if faults_now && !replica.disk_slow && self.budget.slow_disks < options.slow_disks {
                actions.push(Action::SlowDisk(id));
            }
            if faults_now && self.budget.crashes < options.crashes {
                for surviving in 0..=replica.disk.len() {
                    actions.push(Action::Crash {
                        node: id,
                        surviving,
                    });
                }
            }
            if self.budget.proposed < options.values
                && options
                    .propose_until
                    .is_none_or(|until| until > 0 && self.time() <= until)
            {
                actions.push(Action::Propose(id));
            }
            if self.budget.reads < options.reads
                && node.status().leader.is_some()
                && ModelOptions::allows(&options.read_nodes, id)
            {
                actions.push(Action::Read(id));
            }
            if faults_now
                && self.budget.compactions < options.compactions
                && replica.applied.len() as Slot >= node.first_log_slot()
            {
                actions.push(Action::Compact(id));
            }
        }
    }

    /// Whether the state is inside the bounds (ballot rounds and slots).
    pub fn within_bounds(&self, model: &SynodModel) -> bool {
        u64::from(self.budget.ballots) <= model.options.max_ballot
            && self.replicas.iter().all(|replica| {
                replica.node.as_ref().is_none_or(|node| {
                    let status = node.status();
                    status.last_slot <= model.options.slots
                })
            })
    }

    /// Applies `action`. The core may panic on a broken invariant; the caller turns that
    /// into a violation.
    pub fn apply(&mut self, model: &SynodModel, action: &Action) {
        self.happened = 0;
        self.at_tick_start = matches!(
            action,
            Action::TickAll
                | Action::Stall(_)
                | Action::Crash { .. }
                | Action::Restart(_)
                | Action::Compact(_)
                | Action::SlowDisk(_)
                | Action::Timeout(_)
        ) && (self.at_tick_start
            || matches!(action, Action::TickAll | Action::Stall(_)));
        let touched = match action {
            Action::Deliver(packet) | Action::Duplicate(packet) => {
                if model.options.max_delay.is_some() {
                    if matches!(action, Action::Duplicate(_)) {
                        self.budget.duplicates += 1;
                    } else {
                        let Ok(at) = self.network.binary_search(packet) else {
                            panic!("the packet is not in flight: {packet:?}");
                        };
                        Arc::make_mut(&mut self.network).remove(at);
                    }
                }
                let to = packet.to();
                self.on_replica(model, to, |step| step.deliver(packet));
                to
            }
            &Action::Tick(id) => {
                self.on_replica(model, id, |step| step.tick());
                id
            }
            Action::TickAll => {
                self.expire_packets(model);
                for id in model.options.node_ids() {
                    self.on_replica(model, id, |step| step.tick());
                    self.check_promise(id);
                }
                1
            }
            &Action::Stall(id) => {
                self.budget.stalls += 1;
                if model.options.max_skew == 0 {
                    self.expire_packets(model);
                    // The cluster's tick, with this node's runtime stalled.
                    for other in model.options.node_ids().into_iter().filter(|o| *o != id) {
                        self.on_replica(model, other, |step| step.tick());
                        self.check_promise(other);
                    }
                }
                self.replicas[index(id)].update(|replica| {
                    replica.clock += 1;
                    replica.lag += 1;
                });
                id
            }
            &Action::Timeout(id) => {
                self.budget.timeouts += 1;
                self.replicas[index(id)].update(|replica| {
                    if let Some(node) = replica.node.as_mut() {
                        node.expire_election_timer();
                    }
                });
                id
            }
            &Action::SlowDisk(id) => {
                self.budget.slow_disks += 1;
                self.replicas[index(id)].update(|replica| replica.disk_slow = true);
                id
            }
            &Action::Persist(id) => {
                self.on_replica(model, id, |step| step.complete_persist());
                id
            }
            &Action::Crash { node, surviving } => {
                self.budget.crashes += 1;
                self.on_replica(model, node, |step| step.crash(surviving));
                node
            }
            &Action::Restart(id) => {
                self.on_replica(model, id, |step| step.restart());
                id
            }
            &Action::Propose(id) => {
                let value = client_value(self.budget.proposed);
                self.budget.proposed += 1;
                self.on_replica(model, id, |step| step.propose(value));
                id
            }
            &Action::Read(id) => {
                self.budget.reads += 1;
                let request = u64::from(self.budget.reads);
                self.on_replica(model, id, |step| step.read(request));
                id
            }
            &Action::Compact(id) => {
                self.budget.compactions += 1;
                self.on_replica(model, id, |step| step.compact());
                id
            }
        };
        self.check_promise(touched);
        self.check_chosen_durable(model);
    }

    /// Runs `change` on replica `id` with the network and the ghost at hand.
    fn on_replica(&mut self, model: &SynodModel, id: NodeId, change: impl FnOnce(&mut Step)) {
        let mut replica = Replica::clone(&self.replicas[index(id)]);
        let mut ghost = Ghost::clone(&self.ghost);
        let mut step = Step {
            model,
            replica: &mut replica,
            ghost: &mut ghost,
            sent: Vec::new(),
            happened: 0,
            ballots_started: 0,
        };
        change(&mut step);
        let Step {
            sent,
            happened,
            ballots_started,
            ..
        } = step;
        self.happened |= happened;
        self.budget.ballots = self.budget.ballots.saturating_add(ballots_started);
        // Packets across a cut link are lost as they leave.
        let sent: Vec<Packet> = sent
            .into_iter()
            .filter(|packet| !model.options.loses(packet))
            .collect();
        if !sent.is_empty() {
            let network = Arc::make_mut(&mut self.network);
            for packet in sent {
                let packet = Hashed::new(packet);
                if let Err(at) = network.binary_search(&packet) {
                    network.insert(at, packet);
                }
            }
        }
        self.replicas[index(id)] = Hashed::new(replica);
        self.ghost = Hashed::new(ghost);
    }

    /// With `max_delay` 0, a packet not delivered by the end of the tick it was sent in is
    /// lost: the cluster's tick starts with an empty network.
    fn expire_packets(&mut self, model: &SynodModel) {
        if model.options.max_delay == Some(0) && !self.network.is_empty() {
            self.network = Arc::new(Vec::new());
        }
    }

    /// Real time: the fastest node's clock (every node's, in lockstep; during the
    /// cluster's tick, the new time).
    pub fn time(&self) -> u8 {
        self.replicas.iter().map(|r| r.clock).max().unwrap_or(0)
    }

    /// "Promised ballot monotone": a node's promise never falls below a ballot it has
    /// vouched for in a message — a Prepare, Accept or Heartbeat of its own ballot, or a
    /// Promise, Accepted or HeartbeatAck — not even across a crash.
    fn check_promise(&mut self, id: NodeId) {
        let Some(node) = &self.replica(id).node else {
            return;
        };
        let promised = node.status().promised;
        let vouched = self.ghost.vouched[index(id)];
        if promised < vouched {
            self.set_violation(
                property::PROMISE_MONOTONE,
                format!(
                    "n{id} promises {promised:?} but has sent messages vouching for {vouched:?}"
                ),
            );
        }
    }

    /// "Chosen values survive crashes": a value a quorum durably accepted stays on the
    /// disks of a quorum (as an entry, or inside a saved snapshot).
    fn check_chosen_durable(&mut self, model: &SynodModel) {
        let quorum = model.options.quorum();
        let mut lost = None;
        for (slot, value) in &self.ghost.chosen {
            let holders = self
                .replicas
                .iter()
                .filter(|replica| holds_durably(replica, *slot, value))
                .count();
            if holders < quorum {
                lost = Some(format!(
                    "slot {slot} was chosen with {} but only {holders} disk(s) still hold it",
                    crate::trace::value(value)
                ));
                break;
            }
        }
        if let Some(detail) = lost {
            self.set_violation(property::CHOSEN_SURVIVES, detail);
        }
    }
}

fn holds_durably(replica: &Replica, slot: Slot, value: &Value) -> bool {
    let durable = &replica.durable;
    if durable.snapshot_slot >= slot {
        return replica.snapshot.get(slot as usize - 1) == Some(value);
    }
    durable
        .entries
        .get(&slot)
        .is_some_and(|(_, held)| held == value)
}

/// One action at one replica: the runtime's work around the core.
struct Step<'a> {
    model: &'a SynodModel,
    replica: &'a mut Replica,
    ghost: &'a mut Ghost,
    /// Packets to add to the network.
    sent: Vec<Packet>,
    happened: u8,
    ballots_started: u8,
}

impl Step<'_> {
    fn node(&mut self) -> &mut Node {
        self.replica
            .node
            .as_mut()
            .expect("the action needs a live node")
    }

    fn violation(&mut self, property: &'static str, detail: String) {
        if self.ghost.violation.is_none() {
            self.ghost.violation = Some(Violation { property, detail });
        }
    }

    fn tick(&mut self) {
        self.replica.clock += 1;
        let ticks = 1 + std::mem::take(&mut self.replica.lag);
        if self.replica.node.is_none() {
            return;
        }
        let now = self.node().now() + u64::from(ticks);
        self.node().advance_to(now);
        self.drain();
    }

    /// Before any input, a runtime brings its core's clock up to real time (what
    /// `synod-replica` does); the `stale-lease-clock` runtime forgets to.
    fn catch_up(&mut self) {
        if self.replica.lag == 0 || self.model.stale_clock() {
            return;
        }
        let ticks = std::mem::take(&mut self.replica.lag);
        let now = self.node().now() + u64::from(ticks);
        self.node().advance_to(now);
        self.drain();
    }

    fn deliver(&mut self, packet: &Packet) {
        self.catch_up();
        match packet {
            Packet::Message(envelope) => {
                if let Message::Prepare { from_slot, .. } = envelope.message {
                    if self.node().first_log_slot() > from_slot {
                        self.happened |= happened::COMPACTED_IN_PHASE1;
                    }
                }
                let _ = self.node().step(envelope.clone());
            }
            Packet::Snapshot { values, .. } => self.install_snapshot(values),
        }
        self.drain();
    }

    fn install_snapshot(&mut self, values: &[Value]) {
        if !self.node().install_snapshot(values.len() as Slot) {
            return;
        }
        self.happened |= happened::SNAPSHOT_INSTALLED;
        let applied = &self.replica.applied;
        if values.get(..applied.len()) != Some(&applied[..]) {
            let detail = format!(
                "n{} installed a snapshot that does not extend what it applied",
                self.replica.id
            );
            self.violation(property::IN_ORDER, detail);
        }
        for (at, value) in values.iter().enumerate() {
            self.check_chosen(at as Slot + 1, value);
        }
        self.replica.applied = values.to_vec();
        self.replica.snapshot = values.to_vec();
        self.ghost.delivered_high = self.ghost.delivered_high.max(values.len() as Slot);
    }

    fn propose(&mut self, value: Bytes) {
        self.catch_up();
        let _ = self.node().propose(value);
        self.drain();
    }

    fn read(&mut self, request: u64) {
        self.catch_up();
        let id = self.replica.id;
        self.ghost
            .reads
            .insert(request, (id, self.ghost.delivered_high));
        self.node().read_index(request);
        self.drain();
    }

    fn compact(&mut self) {
        self.catch_up();
        let through = self.replica.applied.len() as Slot;
        self.replica.snapshot = self.replica.applied.clone();
        self.node().compact(through);
        self.drain();
    }

    fn complete_persist(&mut self) {
        self.catch_up();
        let at = self.replica.written;
        let request = self.replica.disk[at].clone();
        if request.needs_sync() {
            // A synced request makes everything written before it durable too.
            let durable: Vec<PersistRequest> = self.replica.disk.drain(..=at).collect();
            self.replica.written = 0;
            for request in &durable {
                self.make_durable(request);
            }
        } else {
            self.replica.written += 1;
        }
        if self.replica.written == self.replica.disk.len() {
            // The queue drained: the slow episode is over.
            self.replica.disk_slow = false;
        }
        self.node().on_persisted(request.id);
        self.drain();
    }

    fn crash(&mut self, surviving: usize) {
        let pending = std::mem::take(&mut self.replica.disk);
        if surviving < pending.len() {
            self.happened |= happened::CRASH_LOST_UNSYNCED;
        }
        for request in pending.iter().take(surviving) {
            self.make_durable(request);
        }
        let id = self.replica.id;
        self.replica.node = None;
        self.replica.written = 0;
        self.replica.applied.clear();
        self.replica.lag = 0;
        self.replica.disk_slow = false;
        self.ghost.reads.retain(|_, (node, _)| *node != id);
    }

    fn restart(&mut self) {
        let snapshot_slot = self.replica.durable.snapshot_slot as usize;
        let Some(applied) = self.replica.snapshot.get(..snapshot_slot) else {
            let detail = format!(
                "n{}: the durable snapshot mark {snapshot_slot} is past the saved snapshot",
                self.replica.id
            );
            self.violation(property::CHOSEN_SURVIVES, detail);
            return;
        };
        self.replica.applied = applied.to_vec();
        let node = self
            .model
            .boot(self.replica.id, self.replica.durable.clone());
        self.replica.node = Some(node);
        self.drain();
    }

    /// A persist request reached the disk: its accepted entries are votes.
    fn make_durable(&mut self, request: &PersistRequest) {
        for op in &request.ops {
            self.replica.durable.apply(op);
            if let PersistOp::Accept(entry) = op {
                self.vote(entry);
            }
        }
    }

    fn vote(&mut self, entry: &Entry) {
        let id = self.replica.id;
        let quorum = self.model.options.quorum();
        let key = (entry.slot, entry.ballot);
        let (value, voters) = self
            .ghost
            .votes
            .entry(key)
            .or_insert_with(|| (entry.value.clone(), 0));
        if *value != entry.value {
            let detail = format!(
                "slot {} at {:?}: n{id} accepted {} where others accepted {}",
                entry.slot,
                entry.ballot,
                crate::trace::value(&entry.value),
                crate::trace::value(value)
            );
            self.violation(property::ONE_VALUE_PER_BALLOT, detail);
            return;
        }
        *voters |= 1 << id;
        if (voters.count_ones() as usize) < quorum {
            return;
        }
        self.ghost.chosen_at.insert(key);
        match self.ghost.chosen.get(&entry.slot) {
            Some(chosen) if *chosen != entry.value => {
                let detail = format!(
                    "slot {} chosen twice: {} and then {} at {:?}",
                    entry.slot,
                    crate::trace::value(chosen),
                    crate::trace::value(&entry.value),
                    entry.ballot
                );
                self.violation(property::AGREEMENT, detail);
            }
            Some(_) => {}
            None => {
                self.ghost.chosen.insert(entry.slot, entry.value.clone());
            }
        }
    }

    /// Hands the node's outputs to the network, the disk and the state machine, until it
    /// has nothing more. Messages a node sends itself are delivered at once, as the
    /// runtime loops them back.
    fn drain(&mut self) {
        let mut loopback = std::collections::VecDeque::new();
        loop {
            let Some(node) = self.replica.node.as_mut() else {
                return;
            };
            if !node.has_ready() {
                match loopback.pop_front() {
                    Some(envelope) => {
                        let _ = node.step(envelope);
                        continue;
                    }
                    None => return,
                }
            }
            let ready = node.take_ready();
            if let Some(request) = ready.persist {
                if self.replica.disk_slow || !self.replica.disk.is_empty() {
                    self.replica.disk.push(request);
                } else {
                    // A fast disk: durable before anything else happens.
                    self.make_durable(&request);
                    self.node().on_persisted(request.id);
                }
            }
            for envelope in ready.messages {
                self.note_sent(&envelope);
                if envelope.to == envelope.from {
                    loopback.push_back(envelope);
                } else {
                    self.sent.push(Packet::Message(envelope));
                }
            }
            for committed in ready.committed {
                self.apply_committed(committed);
            }
            for event in ready.events {
                self.on_event(event);
            }
        }
    }

    /// Ghost bookkeeping for a message leaving the node.
    fn note_sent(&mut self, envelope: &Envelope) {
        let from = envelope.from;
        let vouched = match &envelope.message {
            Message::Accept {
                ballot,
                first_slot,
                values,
                ..
            } => {
                for (offset, value) in values.iter().enumerate() {
                    let slot = first_slot + offset as Slot;
                    let known = self
                        .ghost
                        .proposals
                        .entry((slot, *ballot))
                        .or_insert_with(|| value.clone());
                    if known != value {
                        let detail = format!(
                            "n{from} proposed {} for slot {slot} at {ballot:?}, which already carried {}",
                            crate::trace::value(value),
                            crate::trace::value(known)
                        );
                        self.violation(property::ONE_VALUE_PER_BALLOT, detail);
                    }
                    self.check_proposal(from, slot, *ballot, value);
                }
                Some(*ballot)
            }
            Message::Heartbeat { ballot, .. }
            | Message::Prepare { ballot, .. }
            | Message::Promise { ballot, .. }
            | Message::Accepted { ballot, .. }
            | Message::HeartbeatAck { ballot, .. } => Some(*ballot),
            _ => None,
        };
        if let Some(ballot) = vouched {
            let high = &mut self.ghost.vouched[index(from)];
            *high = (*high).max(ballot);
        }
    }

    /// Paxos's P2b: once a value is chosen at a ballot, every proposal at a higher ballot
    /// for that slot carries it.
    fn check_proposal(&mut self, from: NodeId, slot: Slot, ballot: Ballot, value: &Value) {
        let chosen_below = self
            .ghost
            .chosen_at
            .range((slot, Ballot::ZERO)..(slot, ballot))
            .find_map(|key| {
                let (chosen, _) = &self.ghost.votes[key];
                (chosen != value).then(|| (key.1, chosen.clone()))
            });
        if let Some((chosen_ballot, chosen)) = chosen_below {
            let detail = format!(
                "n{from} proposed {} for slot {slot} at {ballot:?}, but {} was chosen at {chosen_ballot:?}",
                crate::trace::value(value),
                crate::trace::value(&chosen)
            );
            self.violation(property::PROPOSALS_KEEP_CHOSEN, detail);
        }
    }

    /// The state machine applies a chosen slot.
    fn apply_committed(&mut self, committed: Committed) {
        let id = self.replica.id;
        let expected = self.replica.applied.len() as Slot + 1;
        if committed.slot != expected {
            let detail = format!(
                "n{id} delivered slot {} when slot {expected} was next",
                committed.slot
            );
            self.violation(property::IN_ORDER, detail);
            return;
        }
        self.check_chosen(committed.slot, &committed.value);
        self.replica.applied.push(committed.value);
        self.ghost.delivered_high = self.ghost.delivered_high.max(committed.slot);
    }

    /// Agreement: what a node learned for `slot` is what a quorum accepted.
    fn check_chosen(&mut self, slot: Slot, value: &Value) {
        let id = self.replica.id;
        match self.ghost.chosen.get(&slot) {
            Some(chosen) if chosen == value => {}
            Some(chosen) => {
                let detail = format!(
                    "n{id} delivered {} for slot {slot}, but {} was chosen",
                    crate::trace::value(value),
                    crate::trace::value(chosen)
                );
                self.violation(property::AGREEMENT, detail);
            }
            None => {
                let detail = format!(
                    "n{id} delivered {} for slot {slot}, which no quorum accepted",
                    crate::trace::value(value)
                );
                self.violation(property::AGREEMENT, detail);
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        let id = self.replica.id;
        match event {
            Event::ReadReady {
                request,
                read_index,
                path,
            } => {
                if path == ReadPath::Lease {
                    self.happened |= happened::LEASE_READ;
                }
                if let Some((_, acknowledged)) = self.ghost.reads.remove(&request) {
                    if read_index < acknowledged {
                        let detail = format!(
                            "n{id} answered read #{request} at slot {read_index}, but slot {acknowledged} was applied before the read was asked for"
                        );
                        self.violation(property::READS, detail);
                    }
                }
            }
            Event::Phase1Started { .. } => self.ballots_started += 1,
            Event::ReadFailed { request } => {
                self.ghost.reads.remove(&request);
            }
            Event::SnapshotNeeded { peer, slot } => {
                let values = self.replica.snapshot.clone();
                if (values.len() as Slot) < slot {
                    let detail = format!("n{id} compacted through {slot} without a snapshot");
                    self.violation(property::CHOSEN_SURVIVES, detail);
                    return;
                }
                self.sent.push(Packet::Snapshot {
                    from: id,
                    to: peer,
                    values,
                });
            }
            _ => {}
        }
    }
}
