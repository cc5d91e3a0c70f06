//! The seeded cluster simulator: the production replica ([`synod_replica::Replica`] with
//! the KV store) on every node, over a simulated network, disks and clocks, with clients
//! that retry.
//!
//! Everything happens in one thread in a discrete-event loop: an event queue ordered by
//! (time, sequence number), and one ChaCha RNG seeded from [`SimOptions::seed`]. The same
//! options replay the same run exactly, so a failing seed is a complete bug report.
//!
//! Time is counted in *units* of real time; one message delay in the fault-free
//! benchmark is [`DELAY_UNIT`] units. Every node has its own clock, running at a rate
//! drawn within ±[`Faults::clock_drift_percent`] of real time; the replica sees only its
//! own clock, as nanoseconds, with every input. A node ticks every [`TICK_UNITS`] of its
//! own time.
//!
//! What can go wrong (while [`SimOptions::faults`] is on): messages are delayed (some
//! longer than the lease), reordered, lost and duplicated; the network splits (full,
//! one-way, partial with a bridge node); nodes crash and restart with what their disk
//! synced (a crash cuts the queue of unsynced persist requests anywhere, a snapshot not
//! yet saved is lost); nodes pause — the process stops, its inputs queue, and when it
//! resumes its clock has jumped; snapshot streams are lost. Then the faults stop, every
//! node restarts and resumes, the network heals, and the run must complete every client
//! operation and converge within a bound. The checkers live in [`crate::checks`].

use crate::checks::{Checker, Violation};
use crate::clients::{Client, PendingRequest};
use crate::linearizability::{KeyedOp, Operation, RegisterRet};
pub use crate::options::{
    Faults, ReadMix, Scripted, SimOptions, DELAY_UNIT, LEASE_TICKS, TICK_UNITS,
};
use bytes::Bytes;
use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use synod_core::{
    DurableState, Envelope, Event as CoreEvent, Message, NodeId, PersistRequest, Slot,
};
use synod_kv::KvStore;
use synod_replica::{
    Nanos, Replica, ReplicaConfig, ReplicaEvent, ReplicaReady, ReplicaStats, RequestId, Restored,
};

/// One operation of the history the linearizability checker reads.
pub(crate) type ClientOperation = Operation<KeyedOp<u64, u64>, RegisterRet<u64>>;

/// Nanoseconds of a node's clock per unit of real time at the nominal rate.
pub(crate) const NANOS_PER_UNIT: u64 = 1_000;
/// Rates are in millionths: 1,000,000 is real time.
pub(crate) const PPM: u64 = 1_000_000;
/// Snapshot bytes encoded, written, sent or decoded per unit of time.
const SNAPSHOT_BYTES_PER_UNIT: u64 = 2_000;

/// Counts of the interesting things a run did: a class that never occurs over a few
/// hundred seeds means the simulator does not exercise it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Coverage {
    pub compactions: u64,
    pub snapshot_installs: u64,
    /// Requests for a snapshot a leader did not answer with another stream, because it
    /// had delivered one to that peer moments before (`snapshot_resend_after`).
    pub snapshot_resends_held: u64,
    /// Snapshots due by their slot count that waited for the log to grow by
    /// `snapshot_log_growth_percent` of the state.
    pub snapshots_held_for_log_growth: u64,
    pub lease_reads: u64,
    pub read_index_reads: u64,
    pub follower_reads: u64,
    pub serializable_reads: u64,
    pub log_reads: u64,
    pub pauses: u64,
    pub leader_changes: u64,
    pub requests_too_large: u64,
    pub chunked_promises: u64,
    pub long_delays: u64,
    /// Heals after which a leader that a quorum could still reach lost its leadership
    /// within two election timeouts, with no other fault in between, to a ballot raised
    /// by a node that could not reach a quorum: a returning node deposed it. Pre-vote
    /// keeps this at 0.
    pub leader_changes_after_heal: u64,
    /// The same, but every higher ballot was raised by a node that could reach a quorum
    /// (a concurrent election across a bridge partition, which pre-vote cannot and
    /// should not prevent: that node could have won).
    pub contested_leader_changes_after_heal: u64,
    /// Phase 1 started by a node that could not reach a quorum (pre-vote makes this
    /// rare: only a grant collected just before a partition cut the node off).
    pub isolated_phase1: u64,
    /// Reads at an older revision of the KV history answered (checked against the
    /// committed history).
    pub revision_reads: u64,
    /// `Compact` commands that took effect.
    pub mvcc_compactions: u64,
    /// A leader heard of a stray higher ballot (raised by a node unable to reach a
    /// quorum) and ran Phase 1 above it while staying the leader.
    pub leader_refreshes: u64,
    /// Follower reads that went to the leader in one `ReadIndex` message with others.
    pub batched_follower_reads: u64,
    /// Heartbeats a leader sent at a tick only to tell a follower the commit point
    /// (no Accept carried it since it moved).
    pub tick_commit_notices: u64,
    /// Events sent to simulated watchers (checked against the committed history).
    pub watch_events: u64,
    /// Watches resumed at a node (after a crash took their stream, or a reconnect) from
    /// the revision after the last one they had everything through.
    pub watch_resumes: u64,
    /// Times a slow watcher's stream refused a response and it fell behind, to be caught
    /// up from history.
    pub watch_stalls: u64,
    /// Watches canceled because the revision they needed next was compacted.
    pub watch_compaction_cancels: u64,
    /// Progress responses (bookmarks) watchers were sent.
    pub watch_progress: u64,
    /// Leases granted to simulated lease clients.
    pub lease_grants: u64,
    /// Keep-alives acknowledged (by the lessor of the current epoch, its replica holding
    /// the leader lease).
    pub lease_keep_alives: u64,
    /// Revokes lease clients sent.
    pub lease_revokes: u64,
    /// Promotions lessors proposed (a leader starting to decide expiries).
    pub lease_promotions: u64,
    /// Expiries that took effect in the chosen log (checked against the keep-alives).
    pub lease_expiries: u64,
    /// Leadership transfers (`transfers.rs`) that ended with the target leading.
    pub leader_transfers: u64,
    /// Leadership transfers abandoned after an election timeout (target down, cut off,
    /// lagging, or its election lost).
    pub leader_transfer_timeouts: u64,
    pub max_drift_percent: f64,
    pub max_value_bytes: u64,
}

impl Coverage {
    pub fn add(&mut self, other: &Coverage) {
        self.compactions += other.compactions;
        self.snapshot_installs += other.snapshot_installs;
        self.snapshot_resends_held += other.snapshot_resends_held;
        self.snapshots_held_for_log_growth += other.snapshots_held_for_log_growth;
        self.lease_reads += other.lease_reads;
        self.read_index_reads += other.read_index_reads;
        self.follower_reads += other.follower_reads;
        self.serializable_reads += other.serializable_reads;
        self.log_reads += other.log_reads;
        self.pauses += other.pauses;
        self.leader_changes += other.leader_changes;
        self.requests_too_large += other.requests_too_large;
        self.chunked_promises += other.chunked_promises;
        self.long_delays += other.long_delays;
        self.leader_changes_after_heal += other.leader_changes_after_heal;
        self.leader_refreshes += other.leader_refreshes;
        self.batched_follower_reads += other.batched_follower_reads;
        self.tick_commit_notices += other.tick_commit_notices;
        self.contested_leader_changes_after_heal += other.contested_leader_changes_after_heal;
        self.isolated_phase1 += other.isolated_phase1;
        self.revision_reads += other.revision_reads;
        self.mvcc_compactions += other.mvcc_compactions;
        self.watch_events += other.watch_events;
        self.watch_resumes += other.watch_resumes;
        self.watch_stalls += other.watch_stalls;
        self.watch_compaction_cancels += other.watch_compaction_cancels;
        self.watch_progress += other.watch_progress;
        self.lease_grants += other.lease_grants;
        self.lease_keep_alives += other.lease_keep_alives;
        self.lease_revokes += other.lease_revokes;
        self.lease_promotions += other.lease_promotions;
        self.lease_expiries += other.lease_expiries;
        self.leader_transfers += other.leader_transfers;
        self.leader_transfer_timeouts += other.leader_transfer_timeouts;
        self.max_drift_percent = self.max_drift_percent.max(other.max_drift_percent);
        self.max_value_bytes = self.max_value_bytes.max(other.max_value_bytes);
    }

    fn add_stats(&mut self, stats: &ReplicaStats) {
        self.compactions += stats.snapshots_taken;
        self.snapshot_installs += stats.snapshots_installed;
        self.snapshot_resends_held += stats.snapshot_resends_held;
        self.snapshots_held_for_log_growth += stats.snapshots_held_for_log_growth;
        self.lease_reads += stats.lease_reads;
        self.read_index_reads += stats.read_index_reads;
        self.follower_reads += stats.follower_reads;
        self.serializable_reads += stats.serializable_reads;
        self.leader_transfers += stats.leader_transfers;
        self.leader_transfer_timeouts += stats.leader_transfer_timeouts;
    }
}

/// What one run did and what it found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
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
    pub coverage: Coverage,
    pub violations: Vec<Violation>,
    /// The event trace (with `SimOptions::trace`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<String>,
}

#[derive(Clone, Debug)]
pub(crate) enum Event {
    Tick(NodeId),
    Deliver(Envelope),
    PersistDone {
        node: NodeId,
        epoch: u64,
    },
    SnapshotSaved {
        node: NodeId,
        epoch: u64,
        slot: Slot,
        bytes: Bytes,
    },
    SnapshotSendDone {
        node: NodeId,
        epoch: u64,
        peer: NodeId,
        /// Whether the sender's transport reports the stream delivered whole.
        delivered: bool,
    },
    SnapshotArrive {
        from: NodeId,
        to: NodeId,
        slot: Slot,
        bytes: Bytes,
    },
    SnapshotDecoded {
        node: NodeId,
        epoch: u64,
        from: NodeId,
        bytes: Bytes,
    },
    /// A client request arrives at a node.
    Request {
        node: NodeId,
        request: RequestId,
    },
    /// A node's answer arrives at a client.
    Reply {
        client: usize,
        seq: u64,
        answer: crate::clients::Answer,
    },
    ClientNext(usize),
    ClientRetry {
        client: usize,
        seq: u64,
    },
    Fault,
    Script(Scripted),
    PauseEnd(NodeId),
    Heal,
    /// A simulated watcher's periodic step (`watchers.rs`).
    WatchStep(usize),
    /// A simulated lease client's periodic step (`leases.rs`).
    LeaseStep(usize),
    /// The leader is asked to hand its leadership over (`transfers.rs`).
    TransferRequest,
}

impl Event {
    /// The node whose process handles the event (queued while it is paused).
    fn target(&self) -> Option<NodeId> {
        match self {
            Event::Tick(node)
            | Event::PersistDone { node, .. }
            | Event::SnapshotSaved { node, .. }
            | Event::SnapshotSendDone { node, .. }
            | Event::SnapshotDecoded { node, .. }
            | Event::Request { node, .. } => Some(*node),
            Event::Deliver(envelope) => Some(envelope.to),
            Event::SnapshotArrive { to, .. } => Some(*to),
            _ => None,
        }
    }
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

/// One node as its runtime would hold it: the replica, its disk, its clock.
pub(crate) struct SimNode {
    pub config: ReplicaConfig,
    pub replica: Option<Replica<KvStore>>,
    /// Bumped on every crash, so events of an earlier life are ignored.
    pub epoch: u64,
    /// This node's clock runs at `rate_ppm` millionths of real time since real time
    /// `rate_since`, when it read `clock_at_rate_since` (rates change over a run).
    pub rate_ppm: u64,
    pub rate_since: u64,
    pub clock_at_rate_since: Nanos,
    /// While paused: until when, and the inputs queued meanwhile.
    pub paused_until: Option<u64>,
    pub inbox: VecDeque<Event>,
    /// What the disk holds for sure.
    pub durable: DurableState,
    /// Persist requests handed to the disk, not yet synced.
    pub unsynced: VecDeque<PersistRequest>,
    /// Requests of commit marks only, reported durable once written but not synced (as
    /// the write-ahead log does, see `PersistRequest::needs_sync`): the next synced
    /// request makes them durable; a crash before it may lose them.
    pub written: VecDeque<PersistRequest>,
    /// When the last queued persist completes (they complete in order).
    pub disk_busy_until: u64,
    /// The newest snapshot on disk.
    pub snapshot: Option<(Slot, Bytes)>,
    /// Counts of earlier lives.
    pub past_stats: ReplicaStats,
}

impl SimNode {
    /// This node's clock at real time `time`, in nanoseconds.
    pub fn clock(&self, time: u64) -> Nanos {
        let elapsed = time.saturating_sub(self.rate_since) as u128;
        let run = elapsed * NANOS_PER_UNIT as u128 * self.rate_ppm as u128 / PPM as u128;
        self.clock_at_rate_since + run as Nanos
    }

    /// From real time `time` on, the clock runs at `rate_ppm` (it never jumps).
    pub fn set_rate(&mut self, time: u64, rate_ppm: u64) {
        self.clock_at_rate_since = self.clock(time);
        self.rate_since = time;
        self.rate_ppm = rate_ppm;
    }

    pub fn is_up(&self) -> bool {
        self.replica.is_some()
    }
}

/// A seeded simulation of one cluster.
pub struct Simulation {
    pub(crate) options: SimOptions,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) now: u64,
    order: u64,
    queue: BinaryHeap<Scheduled>,
    pub(crate) nodes: BTreeMap<NodeId, SimNode>,
    pub(crate) clients: Vec<Client>,
    pub(crate) requests: BTreeMap<RequestId, PendingRequest>,
    pub(crate) next_request: RequestId,
    /// Directed links that drop everything.
    pub(crate) blocked: BTreeSet<(NodeId, NodeId)>,
    pub(crate) faulty: bool,
    /// Nodes with new inputs since their last `take_ready`. A runtime hands a node every
    /// input that arrives at one instant before draining it, so batching works.
    pub(crate) dirty: BTreeSet<NodeId>,
    pub(crate) healed_at: Option<u64>,
    /// Every client operation, in call order (`None`: refused as too large, so never an
    /// operation at all).
    pub(crate) history: Vec<Option<ClientOperation>>,
    /// Serializable reads: (key, value read), checked for plausibility only.
    pub(crate) serializable_reads: Vec<(u64, Option<u64>)>,
    /// Reads at older revisions, checked against the committed history at the end.
    pub(crate) revision_reads: Vec<crate::clients::RevisionRead>,
    /// Values written, their padded sizes decided by value (see `clients::value_bytes`);
    /// the ones made too large on purpose.
    pub(crate) oversized: BTreeSet<u64>,
    pub(crate) checker: Checker,
    /// After a heal: the leader that a quorum reached, its ballot, and until when a
    /// loss of its leadership counts against the heal.
    pub(crate) heal_watch: Option<(NodeId, synod_core::Ballot, u64)>,
    /// Every ballot a Phase 1 was started at, and whether its node could reach a quorum
    /// then (false: isolated).
    pub(crate) raised_ballots: BTreeMap<synod_core::Ballot, bool>,
    pub(crate) report: SimReport,
    pub(crate) latencies: Vec<u64>,
    /// Watchers and each node's watch hub (`watchers.rs`), with an RNG of their own.
    pub(crate) watch_rng: ChaCha8Rng,
    pub(crate) watchers: Vec<crate::watchers::SimWatcher>,
    pub(crate) watches: BTreeMap<NodeId, crate::watchers::NodeWatches>,
    pub(crate) finished_watches: Vec<crate::watchers::WatchRecord>,
    /// Lease clients and each node's lessor (`leases.rs`), with an RNG of their own.
    pub(crate) lease_rng: ChaCha8Rng,
    pub(crate) lease_clients: Vec<crate::leases::LeaseClient>,
    pub(crate) lessors: BTreeMap<NodeId, crate::leases::NodeLessor>,
    /// Proposals of lease clients (Some(client)) and lessors (None), by request.
    pub(crate) lease_requests: BTreeMap<RequestId, Option<usize>>,
    pub(crate) lease_log: crate::leases::LeaseLog,
    /// The end of the run: watchers read everything.
    pub(crate) draining_watches: bool,
    /// Times and targets of leadership transfer requests (`transfers.rs`).
    pub(crate) transfer_rng: ChaCha8Rng,
    /// Leaders handing over: their stepping down is asked for, no disruption.
    pub(crate) transferring: BTreeSet<NodeId>,
}

impl Simulation {
    pub fn new(options: SimOptions) -> Simulation {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let ids: Vec<NodeId> = (1..=options.nodes).collect();
        let drift = options.faults.clock_drift_percent.min(95) * PPM / 100;
        let nodes = ids
            .iter()
            .map(|id| {
                let drawn = rng.gen_range(PPM - drift..=PPM + drift);
                let rate_ppm = match &options.clock_rates_ppm {
                    Some(rates) => rates[(*id - 1) as usize],
                    None => drawn,
                };
                (*id, new_node(&options, &ids, *id, rate_ppm, &mut rng))
            })
            .collect();
        let clients = (0..options.clients).map(|_| Client::default()).collect();
        let mut sim = Simulation {
            rng,
            now: 0,
            order: 0,
            queue: BinaryHeap::new(),
            nodes,
            clients,
            requests: BTreeMap::new(),
            next_request: 1,
            blocked: BTreeSet::new(),
            faulty: options.fault_ticks > 0,
            dirty: BTreeSet::new(),
            healed_at: None,
            history: Vec::new(),
            serializable_reads: Vec::new(),
            revision_reads: Vec::new(),
            oversized: BTreeSet::new(),
            checker: Checker::default(),
            heal_watch: None,
            raised_ballots: BTreeMap::new(),
            report: SimReport {
                seed: options.seed,
                ..SimReport::default()
            },
            latencies: Vec::new(),
            watch_rng: ChaCha8Rng::seed_from_u64(options.seed ^ 0x3a7c_4e5f),
            lease_rng: ChaCha8Rng::seed_from_u64(options.seed ^ 0x1ea5_e5ed),
            lease_clients: Vec::new(),
            lessors: BTreeMap::new(),
            lease_requests: BTreeMap::new(),
            lease_log: Default::default(),
            watchers: Vec::new(),
            watches: BTreeMap::new(),
            finished_watches: Vec::new(),
            draining_watches: false,
            transfer_rng: ChaCha8Rng::seed_from_u64(options.seed ^ 0x51d3_7b09),
            transferring: BTreeSet::new(),
            options,
        };
        sim.start();
        sim
    }

    fn start(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.note_drift(id);
            // Nodes tick out of phase with each other.
            let phase = self.rng.gen_range(0..TICK_UNITS);
            self.schedule(phase, Event::Tick(id));
        }
        for client in 0..self.clients.len() {
            let start = self.rng.gen_range(0..=self.options.max_start_units);
            self.schedule(start, Event::ClientNext(client));
        }
        self.start_watchers();
        self.start_lease_clients();
        self.start_transfers();
        for (tick, fault) in self.options.script.clone() {
            self.schedule(tick * TICK_UNITS, Event::Script(fault));
        }
        if self.faulty {
            let first = self.fault_gap();
            self.schedule(first, Event::Fault);
            self.schedule(self.options.fault_ticks * TICK_UNITS, Event::Heal);
        } else {
            self.healed_at = Some(0);
        }
    }

    pub(crate) fn note_drift(&mut self, id: NodeId) {
        let rate = self.nodes[&id].rate_ppm as f64;
        let drift = (rate - PPM as f64).abs() * 100.0 / PPM as f64;
        let coverage = &mut self.report.coverage;
        coverage.max_drift_percent = coverage.max_drift_percent.max(drift);
    }

    /// A fresh clock rate within the drift bound.
    pub(crate) fn draw_rate(&mut self) -> u64 {
        let drift = self.options.faults.clock_drift_percent.min(95) * PPM / 100;
        self.rng.gen_range(PPM - drift..=PPM + drift)
    }

    pub(crate) fn schedule(&mut self, after: u64, event: Event) {
        self.order += 1;
        self.queue.push(Scheduled {
            time: self.now + after,
            order: self.order,
            event,
        });
    }

    pub(crate) fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.options.trace {
            let line = format!("{:>9} {}", self.now, line());
            self.report.trace.push(line);
        }
    }

    pub(crate) fn fault_gap(&mut self) -> u64 {
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
            if self.healed_at.is_some()
                && self.all_clients_done()
                && self.lease_clients_done()
                && self.converged()
            {
                break;
            }
        }
        let latencies = std::mem::take(&mut self.latencies);
        (self.finish(), latencies)
    }

    fn handle(&mut self, event: Event) {
        if let Some(id) = event.target() {
            let node = &self.nodes[&id];
            if node.paused_until.is_some() {
                match event {
                    // A stopped process does not tick; its timer chain goes on.
                    Event::Tick(_) => self.schedule_tick(id),
                    event => self
                        .nodes
                        .get_mut(&id)
                        .expect("node")
                        .inbox
                        .push_back(event),
                }
                return;
            }
        }
        match event {
            Event::Request { node, request } => self.on_request(node, request),
            Event::Reply {
                client,
                seq,
                answer,
            } => self.on_reply(client, seq, answer),
            Event::ClientNext(client) => self.client_next(client),
            Event::ClientRetry { client, seq } => self.client_retry(client, seq),
            Event::Fault => {
                if self.faulty {
                    self.inject_fault();
                    let gap = self.fault_gap();
                    self.schedule(gap, Event::Fault);
                }
            }
            Event::Script(fault) => self.run_script(fault),
            Event::PauseEnd(id) => self.resume(id),
            Event::Heal => self.heal(),
            Event::WatchStep(index) => self.watch_step(index),
            Event::LeaseStep(index) => self.lease_step(index),
            Event::TransferRequest => self.request_transfer(),
            node_event => self.handle_node_event(node_event),
        }
    }

    /// An input for a running (not paused) node's process.
    pub(crate) fn handle_node_event(&mut self, event: Event) {
        match event {
            Event::Tick(id) => {
                self.with_replica(id, |replica, now| replica.tick(now));
                self.lessor_pass(id);
                self.schedule_tick(id);
            }
            Event::Deliver(envelope) => self.deliver(envelope),
            Event::PersistDone { node, epoch } => self.persist_done(node, epoch),
            Event::SnapshotSaved {
                node,
                epoch,
                slot,
                bytes,
            } => self.snapshot_saved(node, epoch, slot, bytes),
            Event::SnapshotSendDone {
                node,
                epoch,
                peer,
                delivered,
            } => {
                if self.nodes[&node].epoch == epoch {
                    self.with_replica(node, |replica, now| {
                        replica.on_snapshot_sent(now, peer, delivered)
                    });
                }
            }
            Event::SnapshotArrive {
                from,
                to,
                slot,
                bytes,
            } => self.snapshot_arrived(from, to, slot, bytes),
            Event::SnapshotDecoded {
                node,
                epoch,
                from,
                bytes,
            } => self.snapshot_decoded(node, epoch, from, bytes),
            Event::Request { node, request } => self.on_request(node, request),
            other => unreachable!("not a node input: {other:?}"),
        }
    }

    /// Runs `input` against node `id`'s replica, if it is up, with its clock's time.
    pub(crate) fn with_replica(
        &mut self,
        id: NodeId,
        input: impl FnOnce(&mut Replica<KvStore>, Nanos),
    ) -> bool {
        let node = self.nodes.get_mut(&id).expect("known node");
        let now = node.clock(self.now);
        let Some(replica) = node.replica.as_mut() else {
            return false;
        };
        input(replica, now);
        self.dirty.insert(id);
        true
    }

    fn schedule_tick(&mut self, id: NodeId) {
        // TICK_UNITS of the node's own time.
        let rate = self.nodes[&id].rate_ppm;
        let real = (TICK_UNITS * PPM).div_ceil(rate);
        self.schedule(real, Event::Tick(id));
    }

    fn deliver(&mut self, envelope: Envelope) {
        let to = envelope.to;
        self.trace(|| {
            format!(
                "n{} <- n{} {}",
                to,
                envelope.from,
                describe_message(&envelope.message)
            )
        });
        let mut refused = None;
        self.with_replica(to, |replica, now| {
            if let Err(error) = replica.step(now, envelope) {
                refused = Some(format!("{error:?}"));
            }
        });
        if let Some(error) = refused {
            self.report
                .violations
                .push(Violation::Refused { node: to, error });
        }
    }

    fn persist_done(&mut self, id: NodeId, epoch: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.epoch != epoch || !node.is_up() {
            return;
        }
        let request = node.unsynced.pop_front().expect("a queued persist");
        let persist_id = request.id;
        if request.needs_sync() {
            for written in node.written.drain(..) {
                node.durable.apply_all(&written.ops);
            }
            node.durable.apply_all(&request.ops);
        } else {
            node.written.push_back(request);
        }
        self.with_replica(id, |replica, now| replica.on_persisted(now, persist_id));
    }

    fn snapshot_saved(&mut self, id: NodeId, epoch: u64, slot: Slot, bytes: Bytes) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.epoch != epoch || !node.is_up() {
            return;
        }
        if node
            .snapshot
            .as_ref()
            .is_none_or(|(saved, _)| *saved < slot)
        {
            node.snapshot = Some((slot, bytes));
        }
        self.trace(|| format!("n{id} saved a snapshot of slot {slot}"));
        self.with_replica(id, |replica, now| {
            replica.on_snapshot_saved(now, slot, Ok(()))
        });
    }

    fn snapshot_arrived(&mut self, from: NodeId, to: NodeId, slot: Slot, bytes: Bytes) {
        let decode_units = bytes.len() as u64 / SNAPSHOT_BYTES_PER_UNIT + 1;
        let node = self.nodes.get_mut(&to).expect("known node");
        if !node.is_up() {
            return;
        }
        // Written and synced before it is decoded and installed, as the server does.
        if node
            .snapshot
            .as_ref()
            .is_none_or(|(saved, _)| *saved < slot)
        {
            node.snapshot = Some((slot, bytes.clone()));
        }
        let epoch = node.epoch;
        self.trace(|| format!("n{to} received a snapshot of slot {slot} from n{from}"));
        self.schedule(
            decode_units,
            Event::SnapshotDecoded {
                node: to,
                epoch,
                from,
                bytes,
            },
        );
    }

    fn snapshot_decoded(&mut self, id: NodeId, epoch: u64, from: NodeId, bytes: Bytes) {
        if self.nodes[&id].epoch != epoch {
            return;
        }
        let restored = match Restored::decode(&bytes, KvStore::new()) {
            Ok(restored) => restored,
            Err(error) => {
                self.report.violations.push(Violation::Refused {
                    node: id,
                    error: format!("a snapshot from n{from} did not decode: {error}"),
                });
                return;
            }
        };
        self.with_replica(id, |replica, now| {
            replica.on_snapshot_received(now, from, restored)
        });
    }

    /// Carries out a node's outputs: the disk, the network, the clients, snapshots.
    fn drain(&mut self, id: NodeId) {
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            if node.paused_until.is_some() {
                return;
            }
            let ready = match node.replica.as_mut() {
                Some(replica) if replica.has_ready() => replica.take_ready(),
                _ => break,
            };
            self.carry_out(id, ready);
        }
        self.feed_watches(id);
        self.feed_lessor(id);
    }

    fn carry_out(&mut self, id: NodeId, ready: ReplicaReady) {
        for request in ready.persist {
            self.write_to_disk(id, request);
        }
        for envelope in ready.messages {
            self.send(envelope);
        }
        // A snapshot installed by an input precedes every slot applied in this batch.
        for event in &ready.events {
            if let ReplicaEvent::SnapshotInstalled { slot, .. } = event {
                self.checker.on_snapshot(id, *slot);
            }
        }
        for committed in ready.applied {
            self.observe_applied(id, committed.slot, &committed.value);
        }
        for (request, result) in ready.replies {
            self.on_replica_reply(id, request, result);
        }
        for (request, result) in ready.reads {
            self.on_replica_read(id, request, result);
        }
        if let Some(save) = ready.save_snapshot {
            let bytes = (save.encode)();
            let disk_delay = self.rng.gen_range(0..=self.options.faults.max_disk_delay);
            let units = bytes.len() as u64 / SNAPSHOT_BYTES_PER_UNIT + 1 + disk_delay;
            let epoch = self.nodes[&id].epoch;
            let slot = save.slot;
            self.schedule(
                units,
                Event::SnapshotSaved {
                    node: id,
                    epoch,
                    slot,
                    bytes,
                },
            );
        }
        for (peer, slot) in ready.send_snapshots {
            self.stream_snapshot(id, peer, slot);
        }
        for event in ready.events {
            self.observe_event(id, event);
        }
    }

    fn write_to_disk(&mut self, id: NodeId, request: PersistRequest) {
        let disk_delay = self.rng.gen_range(0..=self.options.faults.max_disk_delay);
        let node = self.nodes.get_mut(&id).expect("known node");
        node.unsynced.push_back(request);
        let done = (self.now + disk_delay).max(node.disk_busy_until);
        node.disk_busy_until = done;
        let epoch = node.epoch;
        self.schedule(done - self.now, Event::PersistDone { node: id, epoch });
    }

    fn stream_snapshot(&mut self, from: NodeId, to: NodeId, slot: Slot) {
        let node = &self.nodes[&from];
        let epoch = node.epoch;
        let Some((saved, bytes)) = node.snapshot.clone().filter(|(saved, _)| *saved == slot) else {
            self.schedule(
                0,
                Event::SnapshotSendDone {
                    node: from,
                    epoch,
                    peer: to,
                    delivered: false,
                },
            );
            return;
        };
        let units = self.random_delay() + bytes.len() as u64 / SNAPSHOT_BYTES_PER_UNIT;
        let lost = self.blocked.contains(&(from, to))
            || (self.faulty && self.rng.gen_bool(self.options.faults.loss));
        self.trace(|| {
            format!("n{from} streams its snapshot of slot {saved} to n{to} (lost: {lost})")
        });
        if !lost {
            self.schedule(
                units,
                Event::SnapshotArrive {
                    from,
                    to,
                    slot: saved,
                    bytes,
                },
            );
        }
        // A lost stream is reported failed by the sender's transport (a reset
        // connection), or it reached the transport whole and was dropped on the way or
        // at the receiver: the sender believes it delivered, and only sends it again
        // after `snapshot_resend_after`.
        let delivered = !lost || self.rng.gen_bool(0.5);
        self.schedule(
            units,
            Event::SnapshotSendDone {
                node: from,
                epoch,
                peer: to,
                delivered,
            },
        );
    }

    fn observe_applied(&mut self, id: NodeId, slot: Slot, value: &synod_core::Value) {
        if self.options.lease_clients > 0 {
            self.lease_log.applied_at.entry(slot).or_insert(self.now);
        }
        let fresh = self.checker.on_commit(id, slot, value);
        match fresh {
            Err(violation) => self.report.violations.push(violation),
            Ok(fresh_commands) => {
                if self.measuring() {
                    self.report.measured_commands += fresh_commands;
                }
            }
        }
    }

    fn observe_event(&mut self, id: NodeId, event: ReplicaEvent) {
        match &event {
            ReplicaEvent::Core(CoreEvent::BecameLeader { .. }) => {
                self.report.coverage.leader_changes += 1;
            }
            ReplicaEvent::Core(CoreEvent::Phase1Started { ballot }) => {
                let isolated = !self.reaches_quorum(id);
                if isolated {
                    self.report.coverage.isolated_phase1 += 1;
                    self.trace(|| format!("n{id} raised {ballot:?} unable to reach a quorum"));
                }
                self.raised_ballots.insert(*ballot, isolated);
            }
            ReplicaEvent::Core(CoreEvent::RefreshingLeadership { .. }) => {
                self.report.coverage.leader_refreshes += 1;
            }
            ReplicaEvent::Core(CoreEvent::TransferEnded { .. }) => {
                self.transferring.remove(&id);
            }
            // Handed over on request: not a leader deposed by a returning node.
            ReplicaEvent::Core(CoreEvent::SteppedDown { .. })
                if self.transferring.contains(&id)
                    && self.heal_watch.is_some_and(|(leader, _, _)| leader == id) =>
            {
                self.heal_watch = None;
            }
            ReplicaEvent::Core(CoreEvent::SteppedDown { ballot }) => {
                if let Some((leader, watched, until)) = self.heal_watch {
                    // At the watched ballot, or at a later one of the same leadership
                    // (a refresh that then lost).
                    if leader == id && *ballot >= watched && self.now <= until {
                        self.heal_watch = None;
                        // Disrupted: another node raised a ballot at or above the
                        // leader's while it could not reach a quorum. The leader's own
                        // ballots do not count (it may have raised the one it leads at
                        // while cut off, then won it once the partition changed).
                        let disrupted = self
                            .raised_ballots
                            .range(watched..)
                            .any(|(raised, isolated)| *isolated && raised.node != id);
                        let coverage = &mut self.report.coverage;
                        if disrupted {
                            coverage.leader_changes_after_heal += 1;
                        } else {
                            coverage.contested_leader_changes_after_heal += 1;
                        }
                        self.trace(|| {
                            format!(
                                "n{id} lost its leadership after a heal (disrupted: {disrupted})"
                            )
                        });
                    }
                }
            }
            ReplicaEvent::UndecodableCommand { slot, error } => {
                self.report.violations.push(Violation::Refused {
                    node: id,
                    error: format!("undecodable command in slot {slot}: {error}"),
                });
            }
            _ => {}
        }
        self.trace(|| format!("n{id} {event:?}"));
    }

    pub(crate) fn measuring(&self) -> bool {
        self.checker.applied_commands() >= self.options.measure_after_commands
    }

    pub(crate) fn send(&mut self, envelope: Envelope) {
        if self.measuring() {
            self.report.messages += 1;
        }
        if let Message::Promise { last_slot, .. } = &envelope.message {
            if *last_slot != Slot::MAX {
                self.report.coverage.chunked_promises += 1;
            }
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

    pub(crate) fn random_delay(&mut self) -> u64 {
        let faults = &self.options.faults;
        if self.faulty && faults.long_delay_probability > 0.0 {
            let (probability, low, high) = (
                faults.long_delay_probability,
                faults.max_delay,
                faults.max_long_delay.max(faults.max_delay),
            );
            if self.rng.gen_bool(probability) {
                self.report.coverage.long_delays += 1;
                return self.rng.gen_range(low..=high);
            }
        }
        let faults = &self.options.faults;
        self.rng.gen_range(faults.min_delay..=faults.max_delay)
    }

    pub(crate) fn all_clients_done(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.done >= self.options.ops_per_client && c.in_flight.is_none())
    }

    /// Every node is up and running and has applied every slot ever chosen, and their
    /// state machines are equal.
    pub(crate) fn converged(&self) -> bool {
        let chosen = self.checker.max_slot();
        let mut replicas = Vec::new();
        for node in self.nodes.values() {
            let Some(replica) = node.replica.as_ref() else {
                return false;
            };
            let status = replica.status();
            if node.paused_until.is_some()
                || status.applied_slot != chosen
                || status.node.commit_index != chosen
            {
                return false;
            }
            replicas.push(replica);
        }
        replicas
            .windows(2)
            .all(|pair| pair[0].state_machine() == pair[1].state_machine())
    }

    fn finish(mut self) -> SimReport {
        self.report.ticks = self.now / TICK_UNITS;
        for node in self.nodes.values() {
            self.report.coverage.add_stats(&node.past_stats);
            if let Some(replica) = &node.replica {
                self.report.coverage.add_stats(&replica.stats());
                self.report.phase1_runs += replica.status().node.phase1_runs;
                self.report.coverage.batched_follower_reads +=
                    replica.status().node.batched_forwarded_reads;
                self.report.coverage.tick_commit_notices +=
                    replica.status().node.tick_commit_notices;
            }
        }
        self.report.committed = self.checker.max_slot();
        self.report.commands = self.checker.applied_commands();
        self.check_liveness();
        let healed = self.healed_at.is_some();
        if healed && self.converged() {
            let lost = self.checker.lost_acknowledged_writes();
            self.report.violations.extend(lost);
        }
        if let Some(violation) = self.check_serializable_reads() {
            self.report.violations.push(violation);
        }
        if let Some(violation) = self.checker.check_revision_reads(&self.revision_reads) {
            self.report.violations.push(violation);
        }
        self.finish_watches();
        self.finish_leases(healed);
        if self.options.check_linearizability {
            let history: Vec<_> = self.history.iter().flatten().cloned().collect();
            if let Some(violation) = crate::checks::check_history(&history) {
                self.report.violations.push(violation);
            }
        }
        self.report
    }

    /// The lease checks (see `leases.rs`): expiries never early; and once converged,
    /// every replica holds exactly the leases and lease keys of the chosen log.
    fn finish_leases(&mut self, healed: bool) {
        if self.options.lease_clients == 0 {
            return;
        }
        let converged = healed && self.converged();
        let stores: Vec<&KvStore> = if converged {
            self.nodes
                .values()
                .filter_map(|node| node.replica.as_ref())
                .map(|replica| replica.state_machine())
                .collect()
        } else {
            Vec::new()
        };
        let unit = crate::leases::TTL_UNIT_NANOS / NANOS_PER_UNIT;
        let margin = self.options.faults.clock_drift_percent + 2;
        let (violation, expiries) =
            self.checker
                .check_leases(&self.lease_log, &stores, unit, margin.min(50));
        self.report.coverage.lease_expiries += expiries;
        self.report.violations.extend(violation);
    }

    fn check_liveness(&mut self) {
        if self.healed_at.is_none() {
            return;
        }
        if !self.all_clients_done() {
            let pending: Vec<usize> = (0..self.clients.len())
                .filter(|c| self.clients[*c].in_flight.is_some())
                .collect();
            self.report.violations.push(Violation::Liveness(format!(
                "{} client operations still pending {} ticks after the faults stopped (clients {pending:?})",
                pending.len(),
                self.options.liveness_ticks
            )));
        } else if !self.converged() {
            let chosen = self.checker.max_slot();
            let states: Vec<String> = self
                .nodes
                .iter()
                .map(|(id, node)| match &node.replica {
                    Some(replica) => {
                        let status = replica.status();
                        format!(
                            "n{id}: commit {} applied {} revision {}",
                            status.node.commit_index,
                            status.applied_slot,
                            replica.state_machine().revision()
                        )
                    }
                    None => format!("n{id}: down"),
                })
                .collect();
            self.report.violations.push(Violation::Liveness(format!(
                "replicas did not converge on the {chosen} chosen slots after healing: {}",
                states.join(", ")
            )));
        }
    }
}

/// A node at the start: empty disk, the replica configured from the options.
fn new_node(
    options: &SimOptions,
    ids: &[NodeId],
    id: NodeId,
    rate_ppm: u64,
    rng: &mut ChaCha8Rng,
) -> SimNode {
    let config = replica_config(options, ids, id, rng);
    let replica = Replica::recover(
        config.clone(),
        DurableState::default(),
        None,
        KvStore::new(),
        0,
    )
    .expect("valid simulated configuration");
    SimNode {
        config,
        replica: Some(replica),
        epoch: 0,
        rate_ppm,
        rate_since: 0,
        clock_at_rate_since: 0,
        paused_until: None,
        inbox: VecDeque::new(),
        durable: DurableState::default(),
        unsynced: VecDeque::new(),
        written: VecDeque::new(),
        disk_busy_until: 0,
        snapshot: None,
        past_stats: ReplicaStats::default(),
    }
}

/// The replica of node `id` as the options describe it; a fresh incarnation and
/// session client id for every life.
pub(crate) fn replica_config(
    options: &SimOptions,
    ids: &[NodeId],
    id: NodeId,
    rng: &mut ChaCha8Rng,
) -> ReplicaConfig {
    let mut core = synod_core::Config::new(id, ids.to_vec());
    core.mode = options.mode;
    core.backoff = options.backoff;
    core.read_mode = options.read_mode;
    core.max_batch_commands = options.max_batch_commands;
    core.max_message_bytes = options.max_message_bytes;
    core.max_batch_bytes = options.max_message_bytes;
    core.max_clock_drift_percent = options.assumed_drift_percent;
    core.election_timeout_ticks = LEASE_TICKS;
    core.lease_ticks = LEASE_TICKS;
    core.seed = options.seed.wrapping_mul(31).wrapping_add(id);
    core.incarnation = rng.gen();
    let tick_nanos = TICK_UNITS * NANOS_PER_UNIT;
    let mut config = ReplicaConfig::new(core, rng.gen());
    config.tick_nanos = tick_nanos;
    config.request_timeout_nanos = options.retry_ticks * tick_nanos;
    config.retry_after_nanos = LEASE_TICKS * tick_nanos;
    config.snapshot_resend_after_nanos = 2 * LEASE_TICKS * tick_nanos;
    config.read_retry_nanos = 2 * tick_nanos;
    config.maintenance_interval_nanos = tick_nanos;
    config.snapshot_interval_slots = options.snapshot_interval_slots;
    config.snapshot_log_growth_percent = options.snapshot_log_growth_percent;
    config.max_request_bytes = options.max_request_bytes;
    config.observe_applied = true;
    config
}

/// One line for a trace.
fn describe_message(message: &Message) -> String {
    match message {
        Message::Accept {
            ballot,
            first_slot,
            values,
            commit_index,
            ..
        } => format!(
            "accept {ballot:?} slots {first_slot}..{} commit {commit_index}",
            first_slot + values.len() as u64 - 1
        ),
        Message::Promise {
            ballot,
            first_slot,
            last_slot,
            entries,
            commit_index,
            ..
        } => format!(
            "promise {ballot:?} [{first_slot}, {}] {} entries commit {commit_index}",
            if *last_slot == Slot::MAX {
                "end".to_string()
            } else {
                last_slot.to_string()
            },
            entries.len()
        ),
        Message::Chosen {
            entries,
            commit_index,
        } => format!("chosen {} entries commit {commit_index}", entries.len()),
        other => {
            let text = format!("{other:?}");
            text.chars().take(160).collect()
        }
    }
}
