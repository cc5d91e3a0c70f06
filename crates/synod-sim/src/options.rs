//! What one simulated run does, and what goes wrong in it: every parameter is drawn from
//! the seed (swarm testing, after TigerBeetle's simulator), so a range of seeds explores
//! many corners rather than one fixed fault mix, and the report prints them with the seed.

use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use synod_core::{Backoff, Mode, NodeId, ReadMode};

/// Units of simulated time per one-way message delay in the fault-free benchmark.
pub const DELAY_UNIT: u64 = 100;
/// Units of simulated time per clock tick of a node running at the nominal rate.
pub const TICK_UNITS: u64 = 1_000;
/// The nodes' lease (and election timeout), in ticks.
pub const LEASE_TICKS: u64 = 10;

/// What goes wrong during the fault phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Faults {
    /// Probability that a message (or a snapshot stream) is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Message delay is uniform in `min_delay..=max_delay` units…
    pub min_delay: u64,
    pub max_delay: u64,
    /// …except that with this probability it is uniform up to `max_long_delay`, which
    /// may exceed the lease.
    pub long_delay_probability: f64,
    pub max_long_delay: u64,
    /// A persist request takes up to this many units to sync.
    pub max_disk_delay: u64,
    pub partitions: bool,
    pub crashes: bool,
    /// A node's process stops (clock reading and processing), its inputs queue, and
    /// after up to `max_pause_units` it resumes to find its clock jumped.
    pub pauses: bool,
    pub max_pause_units: u64,
    /// Every node's clock runs at a rate within ±this percent of real time (the nodes
    /// themselves assume `SimOptions::assumed_drift_percent`).
    pub clock_drift_percent: u64,
    /// Crashes, pauses and isolating partitions hit the node that leads half the time
    /// (as Jepsen's nemeses like to): failovers, stale leaders and their leases.
    pub target_leader: bool,
    /// A disk that lies about fsync: a crash loses *everything* (test of the checkers).
    pub amnesia: bool,
    /// Mean units between two fault events (partition change, crash, restart, pause).
    pub mean_fault_interval: u64,
}

impl Faults {
    /// No loss, no partitions, no crashes, no drift; fixed delays of one [`DELAY_UNIT`].
    pub fn none() -> Faults {
        Faults {
            loss: 0.0,
            duplicate: 0.0,
            min_delay: DELAY_UNIT,
            max_delay: DELAY_UNIT,
            long_delay_probability: 0.0,
            max_long_delay: DELAY_UNIT,
            max_disk_delay: 0,
            partitions: false,
            crashes: false,
            pauses: false,
            max_pause_units: 0,
            clock_drift_percent: 0,
            target_leader: false,
            amnesia: false,
            mean_fault_interval: u64::MAX,
        }
    }

    /// The fixed mix of the first simulator (no pauses, no drift): for focused tests.
    pub fn chaos() -> Faults {
        Faults {
            loss: 0.05,
            duplicate: 0.02,
            min_delay: 20,
            max_delay: 600,
            long_delay_probability: 0.0,
            max_long_delay: 600,
            max_disk_delay: 300,
            partitions: true,
            crashes: true,
            pauses: false,
            max_pause_units: 0,
            clock_drift_percent: 0,
            target_leader: false,
            amnesia: false,
            mean_fault_interval: 15 * TICK_UNITS,
        }
    }
}

/// How clients read.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ReadMix {
    /// Percent of reads that are linearizable reads without a log write (lease,
    /// read-index round, or forwarded by a follower — whatever the node can do).
    pub linearizable: u32,
    /// Percent that go through the log (a read-only command).
    pub log: u32,
    // The rest are serializable: this replica's state, checked only for plausibility.
}

#[derive(Clone, Debug, Serialize)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: u64,
    pub mode: Mode,
    pub backoff: Backoff,
    pub read_mode: ReadMode,
    /// The clock drift the nodes assume (their read lease is shortened for it).
    pub assumed_drift_percent: u64,
    pub clients: usize,
    /// Keys the clients read, write and compare-and-set.
    pub keys: u64,
    /// Operations each client issues in all.
    pub ops_per_client: usize,
    pub read_mix: ReadMix,
    /// Ticks of faults before the cluster heals.
    pub fault_ticks: u64,
    /// After healing, every operation must complete and the replicas converge within
    /// this many ticks.
    pub liveness_ticks: u64,
    pub faults: Faults,
    /// Commands per slot (1 = no batching).
    pub max_batch_commands: usize,
    /// The core's per-message byte limit (small values force chunked promises,
    /// catch-up replies and Accept runs).
    pub max_message_bytes: usize,
    /// The replica's request size limit.
    pub max_request_bytes: usize,
    /// Written values are padded up to this many bytes…
    pub max_value_bytes: usize,
    /// …and this percent of writes exceed the request limit (they must be refused).
    pub oversize_percent: u32,
    /// Snapshot and compact every this many applied slots (0: never)…
    pub snapshot_interval_slots: u64,
    /// …once the log has grown by this percent of the state at the last snapshot (0:
    /// the slot count alone decides). The swarm draws 0, 25 or 100.
    pub snapshot_log_growth_percent: u64,
    /// Percent of linearizable and serializable reads made at an older revision of the KV
    /// history, and of writes replaced by a `Compact` through the log (0: neither, and no
    /// random draws for them, so runs without them are unchanged). The swarm draws 0, 10
    /// or 30.
    pub mvcc_percent: u32,
    /// Simulated watch clients (see `watchers.rs`); the swarm draws 0, 1, 2 or 4.
    pub watchers: usize,
    /// Simulated lease clients (see `leases.rs`); with none, no lessor runs either. The
    /// swarm draws 0, 1 or 3.
    pub lease_clients: usize,
    /// A deliberate lessor bug (checker tests only).
    pub lease_bug: Option<LeaseBug>,
    /// During the fault phase, the leader is asked to hand its leadership to a random
    /// member (etcd's `MoveLeader`), on average every this many ticks (0: never). The
    /// swarm draws 0, 20 or 60 from an RNG of its own, and the requests' times and
    /// targets come from another (`transfers.rs`), so the other draws of a seed are
    /// unchanged.
    pub transfer_interval_ticks: u64,
    /// A client gives up on one attempt and retries (same sequence number, maybe at
    /// another node) after this many ticks; during the fault phase it abandons the
    /// operation (outcome unknown) after `give_up_ticks`.
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
    /// Record an event trace (`synod sim --seed K --trace`).
    pub trace: bool,
    /// Fixed clock rates of the nodes in millionths of real time (scenario tests);
    /// otherwise drawn within the drift bound.
    pub clock_rates_ppm: Option<Vec<u64>>,
    /// Faults at given times (in ticks), on top of the random ones: scenario tests.
    pub script: Vec<(u64, Scripted)>,
    /// A deliberate bug, for the test that proves the history checker can fail: replicas
    /// answer a read at an older revision from their latest state.
    #[cfg(test)]
    pub(crate) mutant_reads_ignore_revision: bool,
    /// A deliberate bug in the watch path, for the tests that prove the watch checker can
    /// fail.
    #[cfg(test)]
    pub(crate) mutant_watch: Option<WatchMutant>,
}

/// Bugs the watch checker must catch.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum WatchMutant {
    /// A response the stream could not take is reported taken (and lost), as a hub that
    /// queued nothing and resent nothing would.
    LoseRefusedResponses,
    /// A resumed watch starts one revision too late.
    ResumeSkipsARevision,
}

/// A fault a scenario places at a given time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Scripted {
    /// Cut the node that leads off from every other node.
    IsolateLeader,
    /// Remove every partition.
    HealNetwork,
    /// From now on the leader's clock runs at this rate (millionths of real time) and
    /// every other node's at `others_ppm`.
    SetClockRates { leader_ppm: u64, others_ppm: u64 },
}

impl SimOptions {
    /// A chaotic run of a 3-node Multi-Paxos cluster with the first simulator's fixed
    /// fault mix (no pauses, no drift, no snapshots, small values).
    pub fn chaos(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            nodes: 3,
            mode: Mode::MultiPaxos,
            backoff: Backoff::Randomized,
            read_mode: ReadMode::Lease,
            assumed_drift_percent: 10,
            clients: 4,
            keys: 3,
            ops_per_client: 40,
            read_mix: ReadMix {
                linearizable: 0,
                log: 100,
            },
            fault_ticks: 300,
            liveness_ticks: 400,
            faults: Faults::chaos(),
            max_batch_commands: 64,
            max_message_bytes: 1 << 20,
            max_request_bytes: 1 << 20,
            max_value_bytes: 0,
            oversize_percent: 0,
            snapshot_interval_slots: 0,
            snapshot_log_growth_percent: 0,
            mvcc_percent: 0,
            watchers: 0,
            lease_clients: 0,
            lease_bug: None,
            transfer_interval_ticks: 0,
            retry_ticks: 12,
            give_up_ticks: 60,
            link_delays: BTreeMap::new(),
            client_nodes: None,
            check_linearizability: true,
            clients_prefer_leader: false,
            max_think_units: TICK_UNITS,
            max_start_units: TICK_UNITS,
            measure_after_commands: 0,
            trace: false,
            clock_rates_ppm: None,
            script: Vec::new(),
            #[cfg(test)]
            mutant_reads_ignore_revision: false,
            #[cfg(test)]
            mutant_watch: None,
        }
    }

    /// Everything drawn from the seed: cluster shape, protocol and read modes, fault
    /// kinds and rates, delays (some longer than the lease), pauses, clock drift within
    /// the nodes' assumed bound, snapshot frequency, message and request size limits,
    /// value sizes and read paths. `synod sim` runs these.
    pub fn swarm(seed: u64) -> SimOptions {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_5a4d);
        let mut options = SimOptions::chaos(seed);
        options.nodes = if rng.gen_bool(0.6) { 3 } else { 5 };
        options.clients = rng.gen_range(3..=6);
        options.keys = rng.gen_range(2..=5);
        options.ops_per_client = rng.gen_range(25..=50);
        if rng.gen_bool(0.15) {
            // Every node proposes and every slot costs both phases: with five proposers,
            // slow links and slow disks a run needs far longer to drain its queues.
            options.mode = Mode::PerSlot;
            options.max_batch_commands = rng.gen_range(1..=8);
            options.ops_per_client = rng.gen_range(15..=30);
            options.liveness_ticks = 2_500;
            // A slot costs many round trips when every node contends for it: clients
            // that retried as early as in Multi-Paxos runs would queue copies faster
            // than slots are decided.
            options.retry_ticks = 50;
            options.give_up_ticks = 200;
        } else {
            options.max_batch_commands = *pick(&mut rng, &[1, 4, 64]);
        }
        if rng.gen_bool(0.3) {
            options.read_mode = ReadMode::ReadIndex;
        }
        options.read_mix = match options.mode {
            Mode::PerSlot => ReadMix {
                linearizable: 0,
                log: rng.gen_range(60..=100),
            },
            Mode::MultiPaxos => ReadMix {
                linearizable: rng.gen_range(40..=80),
                log: rng.gen_range(0..=20),
            },
        };
        options.max_message_bytes = *pick(&mut rng, &[1 << 10, 4 << 10, 64 << 10, 1 << 20]);
        options.max_request_bytes = *pick(&mut rng, &[300, 2 << 10, 16 << 10, 64 << 10]);
        // A compare-and-set carries two values: both must fit one request.
        options.max_value_bytes = if rng.gen_bool(0.5) {
            64
        } else {
            (options.max_request_bytes - 100) / 2
        };
        options.oversize_percent = *pick(&mut rng, &[0, 1, 3]);
        options.snapshot_interval_slots = *pick(&mut rng, &[0, 3, 8, 20, 40]);
        options.faults = swarm_faults(&mut rng, options.assumed_drift_percent);
        // Drawn last, so every other draw of a seed is what it was before the history mix.
        options.mvcc_percent = *pick(&mut rng, &[0, 10, 30]);
        // Watchers draw from their own RNG: the run is the same with or without them.
        options.watchers = *pick(&mut rng, &[0, 1, 2, 4]);
        // So do lease clients and lessors.
        options.lease_clients = *pick(&mut rng, &[0, 1, 3]);
        // Leadership transfers: a draw of their own, so the ones above are unchanged.
        let mut transfer_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7a5f_e12d);
        options.transfer_interval_ticks = *pick(&mut transfer_rng, &[0, 20, 60]);
        // Snapshot pacing: its own draw too.
        let mut pacing_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x51a9_c0de);
        options.snapshot_log_growth_percent = *pick(&mut pacing_rng, &[0, 25, 100]);
        options
    }
}

/// A deliberate lessor bug, to show the lease checker catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LeaseBug {
    /// Keep-alives are acknowledged without moving the lease's deadline.
    AckWithoutRenew,
}

fn swarm_faults(rng: &mut ChaCha8Rng, drift_percent: u64) -> Faults {
    let lease_units = LEASE_TICKS * TICK_UNITS;
    let min_delay = rng.gen_range(10..=100);
    Faults {
        loss: *pick(rng, &[0.0, 0.01, 0.05, 0.15]),
        duplicate: *pick(rng, &[0.0, 0.02, 0.1]),
        min_delay,
        max_delay: min_delay + *pick(rng, &[100, 500, 1_500]),
        long_delay_probability: *pick(rng, &[0.0, 0.005, 0.02]),
        max_long_delay: rng.gen_range(lease_units / 2..=3 * lease_units),
        max_disk_delay: *pick(rng, &[0, 300, 2_000]),
        partitions: rng.gen_bool(0.8),
        crashes: rng.gen_bool(0.7),
        pauses: rng.gen_bool(0.6),
        max_pause_units: rng.gen_range(1..=5) * lease_units,
        clock_drift_percent: drift_percent,
        target_leader: rng.gen_bool(0.5),
        amnesia: false,
        mean_fault_interval: rng.gen_range(5..=25) * TICK_UNITS,
    }
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, choices: &'a [T]) -> &'a T {
    &choices[rng.gen_range(0..choices.len())]
}
