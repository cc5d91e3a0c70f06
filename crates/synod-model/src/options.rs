//! The bounds of one model-checking run and the timing the nodes run with.

use crate::cluster::Packet;
use crate::mutant::Mutant;
use serde::Serialize;
use synod_core::{Backoff, Config, NodeId};

/// What the checker explores. Every bound is a count, so the state space is finite.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelOptions {
    /// Cluster size (node ids 1..=nodes).
    pub nodes: u64,
    /// States where a node's log reaches past this slot are not explored.
    pub slots: u64,
    /// Ballots (Phase 1 runs) started in all, by every node together: states past it
    /// are not explored.
    pub max_ballot: u64,
    /// Explore paths of at most this many actions (None: no bound but the others).
    pub depth: Option<usize>,
    /// Real-time ticks per node.
    pub ticks: u8,
    /// How far apart two nodes' clocks may be, in ticks (bounded clock drift); 0: the
    /// clocks tick in lockstep, one action ticking every node.
    pub max_skew: u8,
    /// Some(0): a packet not delivered within the tick it was sent in is lost (delivery
    /// takes it out of the network). None: every packet sent stays deliverable for ever,
    /// any number of times. Other delays are not supported.
    pub max_delay: Option<u8>,
    /// Pairs of nodes that never hear each other, either way: a partition for the whole
    /// run (every packet between them is lost). A restriction: loss is a behaviour the
    /// network has anyway.
    pub cut_links: Vec<(NodeId, NodeId)>,
    /// Kinds of message (`Message::kind`) the network loses, every one of them. A
    /// restriction, as `cut_links` is.
    pub lost_kinds: Vec<&'static str>,
    /// Deliveries that leave the packet in flight (network duplication), in all (with
    /// `max_delay` only).
    pub duplicates: u8,
    /// Distinct client values proposed, each once (at any node).
    pub values: u8,
    /// Clients propose only until this time (None: at any time).
    pub propose_until: Option<u8>,
    /// With `propose_until` 0: the node each value is proposed at (one initial state),
    /// instead of every placement. A restriction: it keeps one of the initial states.
    pub placement: Option<Vec<NodeId>>,
    /// Linearizable reads asked for.
    pub reads: u8,
    /// Ticks some node's runtime stalls through (its core hears of the time only at its
    /// next input), in all.
    pub stalls: u8,
    /// Early election timeouts in all: at a tick's start a node's election timer runs
    /// out, whatever its random draw (`Node::expire_election_timer`).
    pub timeouts: u8,
    /// The nodes whose election timer may run out early (None: any non-leader).
    pub timeout_nodes: Option<Vec<NodeId>>,
    /// The nodes whose runtime may stall (None: any).
    pub stall_nodes: Option<Vec<NodeId>>,
    /// The nodes clients ask for reads (None: any that knows a leader).
    pub read_nodes: Option<Vec<NodeId>>,
    /// Slow-disk episodes in all: outside them a persist request is durable at once.
    pub slow_disks: u8,
    /// Crashes, restarts, compactions and slow disks happen only at the start of a tick
    /// (before anything else of the tick), not between any two deliveries.
    pub faults_at_ticks: bool,
    /// Crashes in all (each node may restart after its crash).
    pub crashes: u8,
    /// Log compactions in all.
    pub compactions: u8,
    /// Node timing, in ticks (see `synod_core::Config`).
    pub election_timeout_ticks: u64,
    /// A leader heartbeats a peer it sent nothing for this long.
    pub heartbeat_interval_ticks: u64,
    /// Unanswered Prepare, Accept and CatchUp are resent after this long.
    pub retransmit_ticks: u64,
    /// The acceptor's lease on a leader.
    pub lease_ticks: u64,
    /// The clock-drift margin of the leader's read lease.
    pub max_clock_drift_percent: u64,
    /// The random seed of node `i + 1` at index `i` (nodes past the list: their id). It
    /// fixes each node's random election timeouts.
    pub seeds: Vec<u64>,
    /// Search depth-first (`dfs.rs`, one thread, little memory) instead of breadth-first
    /// (`bfs.rs`): for deep, narrow configurations. Both count the same states and find
    /// shortest paths.
    pub depth_first: bool,
    /// Check with this many threads (breadth-first search only).
    pub threads: usize,
    /// Give up when the checker's resident memory passes this many MiB.
    pub memory_limit_mb: Option<u64>,
    /// The deliberate bug to run, if any.
    #[serde(serialize_with = "serialize_mutant")]
    pub mutant: Option<Mutant>,
}

fn serialize_mutant<S: serde::Serializer>(
    mutant: &Option<Mutant>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match mutant {
        Some(mutant) => serializer.serialize_str(mutant.name()),
        None => serializer.serialize_none(),
    }
}

impl Default for ModelOptions {
    /// The default run of `synod model-check` (see docs/model-checking.md for its figures).
    fn default() -> ModelOptions {
        ModelOptions {
            nodes: 3,
            slots: 2,
            max_ballot: 3,
            depth: None,
            ticks: 6,
            max_skew: 0,
            max_delay: Some(0),
            cut_links: Vec::new(),
            lost_kinds: Vec::new(),
            duplicates: 0,
            values: 2,
            propose_until: Some(0),
            placement: None,
            reads: 1,
            stalls: 0,
            timeouts: 0,
            timeout_nodes: None,
            stall_nodes: None,
            read_nodes: None,
            slow_disks: 1,
            faults_at_ticks: true,
            crashes: 1,
            compactions: 1,
            election_timeout_ticks: 3,
            heartbeat_interval_ticks: 2,
            retransmit_ticks: 20,
            lease_ticks: 3,
            max_clock_drift_percent: 10,
            // First election timeouts 3, 4 and 5 ticks: n1 campaigns first, and the next
            // candidate's ballot is higher without it having heard of n1's.
            seeds: vec![3, 1, 2],
            depth_first: false,
            threads: 2,
            memory_limit_mb: Some(6 * 1024),
            mutant: None,
        }
    }
}

impl ModelOptions {
    /// The ids of the nodes.
    pub fn node_ids(&self) -> Vec<NodeId> {
        (1..=self.nodes).collect()
    }

    /// The core configuration of node `id`.
    pub fn config(&self, id: NodeId) -> Config {
        let mut config = Config::new(id, self.node_ids());
        config.election_timeout_ticks = self.election_timeout_ticks;
        config.heartbeat_interval_ticks = self.heartbeat_interval_ticks;
        config.retransmit_ticks = self.retransmit_ticks;
        config.lease_ticks = self.lease_ticks;
        config.max_clock_drift_percent = self.max_clock_drift_percent;
        config.backoff = Backoff::Randomized;
        config.seed = self.seeds.get(id as usize - 1).copied().unwrap_or(id);
        config
    }

    /// Ticks at the start in which no timer can fire (an election timeout is at least
    /// `election_timeout_ticks`): the initial states start after them.
    pub fn quiet_ticks(&self) -> u8 {
        u8::try_from(self.election_timeout_ticks.saturating_sub(1)).unwrap_or(u8::MAX)
    }

    /// Whether the network loses `packet` as it leaves (`cut_links`, `lost_kinds`).
    pub fn loses(&self, packet: &Packet) -> bool {
        let (from, to) = (packet.from(), packet.to());
        let cut = self
            .cut_links
            .iter()
            .any(|link| *link == (from, to) || *link == (to, from));
        cut || matches!(packet, Packet::Message(envelope)
            if self.lost_kinds.contains(&envelope.message.kind()))
    }

    /// Whether `ids` (one of the `*_nodes` restrictions) lets node `id` act.
    pub fn allows(ids: &Option<Vec<NodeId>>, id: NodeId) -> bool {
        ids.as_ref().is_none_or(|ids| ids.contains(&id))
    }

    /// A quorum of the cluster.
    pub fn quorum(&self) -> usize {
        self.nodes as usize / 2 + 1
    }

    /// Checks the bounds and the node configuration.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=7).contains(&self.nodes) {
            return Err(format!("--nodes must be 1 to 7, not {}", self.nodes));
        }
        if self.slots == 0 || self.max_ballot == 0 {
            return Err("--slots and --max-ballot must be positive".into());
        }
        if self.max_delay.is_some_and(|delay| delay != 0) {
            return Err("--max-delay must be 0 (or unbounded)".into());
        }
        if let Some(placement) = &self.placement {
            if self.propose_until != Some(0) || placement.len() != usize::from(self.values) {
                return Err("a placement needs propose_until 0 and one node per value".into());
            }
        }
        let known = |ids: &Option<Vec<NodeId>>| {
            ids.iter().flatten().all(|id| (1..=self.nodes).contains(id))
        };
        let linked: Vec<NodeId> = self.cut_links.iter().flat_map(|(a, b)| [*a, *b]).collect();
        let restricted = [
            &self.placement,
            &self.timeout_nodes,
            &self.stall_nodes,
            &self.read_nodes,
            &Some(linked),
        ];
        if !restricted.into_iter().all(known) {
            return Err(format!("node ids are 1 to {}", self.nodes));
        }
        if self.threads == 0 {
            return Err("--threads must be positive".into());
        }
        if let Some(mutant) = self.mutant {
            if !mutant.available() {
                return Err(format!(
                    "mutant {mutant} lives in synod-core: build with `--features mutants`"
                ));
            }
        }
        self.config(1).validate()
    }
}

/// The default run of `synod model-check`: configurations that each explore every
/// schedule within their bounds, one corner of the faults each (one configuration with
/// every budget at once is their product, and does not finish in 15 minutes; see
/// docs/model-checking.md). Every `sometimes` property is reached in one of them, and
/// every mutant is caught by one of them.
pub fn default_suite() -> Vec<(&'static str, ModelOptions)> {
    let quiet = ModelOptions {
        values: 0,
        reads: 0,
        stalls: 0,
        slow_disks: 0,
        crashes: 0,
        compactions: 0,
        ..ModelOptions::default()
    };
    vec![
        // The first election with a slow disk and a crash that keeps any prefix of the
        // queued persist requests: every schedule of up to 21 actions.
        (
            "election-crash",
            ModelOptions {
                ticks: 4,
                crashes: 1,
                slow_disks: 1,
                depth: Some(21),
                ..quiet.clone()
            },
        ),
        // Elections, heartbeats, leases and one linearizable read: every schedule.
        (
            "lease-read",
            ModelOptions {
                ticks: 5,
                reads: 1,
                ..quiet.clone()
            },
        ),
        // One value chosen and applied, a compaction, a snapshot: up to 16 actions.
        (
            "value-compaction",
            ModelOptions {
                ticks: 6,
                values: 1,
                compactions: 1,
                depth: Some(16),
                ..quiet.clone()
            },
        ),
        // Two values at any nodes and a rival candidate (an early election timeout):
        // up to 12 actions.
        (
            "rival-candidates",
            ModelOptions {
                ticks: 3,
                values: 2,
                timeouts: 1,
                depth: Some(12),
                ..quiet.clone()
            },
        ),
        // Two leaders in one tick, n1 and n3 (both draw the shortest election timeout),
        // "a" proposed at n1 and "b" at n3, for one slot: the first leader, preempted,
        // refreshes its ballot above the second's, whose value may be chosen, applied
        // and compacted meanwhile. Heartbeats and forwarded commands are lost, and
        // compaction may happen between any two deliveries. Every schedule of up to 18
        // actions, depth-first (a breadth-first level at this depth outgrows the memory
        // limit).
        (
            "refreshed-leader",
            ModelOptions {
                ticks: 3,
                slots: 1,
                values: 2,
                placement: Some(vec![1, 3]),
                seeds: vec![3, 1, 3],
                compactions: 1,
                faults_at_ticks: false,
                lost_kinds: vec!["heartbeat", "heartbeat_ack", "forward"],
                depth: Some(18),
                depth_first: true,
                ..quiet.clone()
            },
        ),
        // A leader (n1) whose runtime stalls through three ticks while n1 and n3 cannot
        // talk: n3 (an early timeout) is elected through n2 and gets "a" chosen, then a
        // client asks n1 for a read. Forwarded commands are lost. Every schedule of up to
        // 18 actions, depth-first.
        (
            "stalled-leader",
            ModelOptions {
                ticks: 6,
                slots: 1,
                max_ballot: 2,
                values: 1,
                placement: Some(vec![3]),
                reads: 1,
                read_nodes: Some(vec![1]),
                stalls: 3,
                stall_nodes: Some(vec![1]),
                timeouts: 1,
                timeout_nodes: Some(vec![3]),
                cut_links: vec![(1, 3)],
                lost_kinds: vec!["forward"],
                depth: Some(18),
                depth_first: true,
                ..quiet
            },
        ),
    ]
}
