//! The checkers a simulated run must pass:
//!
//! * (a) **agreement** — no two replicas ever deliver different values for one slot;
//! * (b) **prefix** — every replica delivers slots 1, 2, 3 … in order, never past a gap,
//!   so each replica's sequence is a prefix of the one chosen sequence;
//! * (c) **linearizability** of the client history, per key, with
//!   [`crate::linearizability`];
//! * (d) **no lost acknowledged write** — every write or successful compare-and-set a
//!   client saw acknowledged is in the state machine of every replica at the end, even
//!   of replicas that crashed and rebuilt their state from their disk and their peers;
//! * **total-order broadcast** — the same commands fed to the broadcast machine on every
//!   replica come out as prefixes of one sequence, the whole sequence once converged;
//! * (e) **liveness** — after the faults stop, every client operation completes and
//!   the replicas converge within a bound (checked in [`crate::cluster`]).

use crate::linearizability::{check_kv, KeyedOp, Operation, RegisterRet, Verdict};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use synod_core::{NodeId, Slot, Value};
use synod_kv::{Command, Op};

/// Search budget of the linearizability checker per run.
const LINEARIZABILITY_BUDGET: u64 = 2_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Violation {
    /// Two different values delivered for one slot.
    Agreement {
        slot: Slot,
        node: NodeId,
        first: String,
        now: String,
    },
    /// A replica delivered `slot` when `expected` was next.
    Prefix {
        node: NodeId,
        slot: Slot,
        expected: Slot,
    },
    NotLinearizable(String),
    /// An acknowledged write missing from a replica's state at the end.
    LostWrite {
        client: u64,
        seq: u64,
        node: NodeId,
    },
    Liveness(String),
    /// The core refused a message the simulated network delivered.
    Refused {
        node: NodeId,
        error: String,
    },
    /// Two replicas' total-order broadcast deliveries differ (or, after convergence,
    /// differ in length).
    BroadcastDiverged {
        first: NodeId,
        second: NodeId,
        index: usize,
    },
    /// The run panicked: an invariant assertion inside the core (or the simulator) fired.
    Panic(String),
    /// A reply that does not answer the request.
    BadResponse {
        client: u64,
        seq: u64,
        error: String,
    },
}

/// Watches every delivery of every replica.
#[derive(Default)]
pub struct Checker {
    chosen: BTreeMap<Slot, Value>,
    /// Per replica: the last slot delivered in its current life.
    delivered: BTreeMap<NodeId, Slot>,
    /// Per replica: writes applied in its current life, by (client, seq).
    applied_writes: BTreeMap<NodeId, BTreeSet<(u64, u64)>>,
    all_applied: BTreeSet<(u64, u64)>,
    acknowledged: BTreeMap<(u64, u64), u64>,
}

impl Checker {
    /// Replica `node` delivered `value` at `slot`.
    pub fn on_commit(&mut self, node: NodeId, slot: Slot, value: &Value) -> Option<Violation> {
        let last = self.delivered.entry(node).or_insert(0);
        if slot != *last + 1 {
            return Some(Violation::Prefix {
                node,
                slot,
                expected: *last + 1,
            });
        }
        *last = slot;
        match self.chosen.get(&slot) {
            Some(first) if first != value => Some(Violation::Agreement {
                slot,
                node,
                first: format!("{first:?}"),
                now: format!("{value:?}"),
            }),
            Some(_) => None,
            None => {
                self.chosen.insert(slot, value.clone());
                None
            }
        }
    }

    /// Replica `node` applied a client command.
    pub fn on_apply(&mut self, node: NodeId, _slot: Slot, command: &Command) {
        let id = (command.client, command.seq);
        self.all_applied.insert(id);
        if is_write(&command.op) {
            self.applied_writes.entry(node).or_default().insert(id);
        }
    }

    /// A client saw its write acknowledged at `tick`.
    pub fn on_acknowledged(&mut self, client: u64, seq: u64, tick: u64) {
        self.acknowledged.insert((client, seq), tick);
    }

    /// Replica `node` lost its memory (crash) or starts over (restart): it delivers
    /// again from slot 1.
    pub fn on_restart(&mut self, node: NodeId) {
        self.delivered.remove(&node);
        self.applied_writes.remove(&node);
    }

    /// True once any replica applied command (client, seq).
    pub fn was_applied(&self, client: u64, seq: u64) -> bool {
        self.all_applied.contains(&(client, seq))
    }

    pub fn chosen_slots(&self) -> u64 {
        self.chosen.len() as u64
    }

    pub fn applied_commands(&self) -> u64 {
        self.all_applied.len() as u64
    }

    /// (d): every acknowledged write is in every live replica's state. Call at the end,
    /// once the replicas converged.
    pub fn lost_acknowledged_writes(&self, live: &[NodeId]) -> Vec<Violation> {
        let none = BTreeSet::new();
        let mut lost = Vec::new();
        for node in live {
            let applied = self.applied_writes.get(node).unwrap_or(&none);
            for &(client, seq) in self.acknowledged.keys() {
                if !applied.contains(&(client, seq)) {
                    lost.push(Violation::LostWrite {
                        client,
                        seq,
                        node: *node,
                    });
                }
            }
        }
        lost
    }
}

/// A write as far as (d) is concerned: anything that may change the state.
fn is_write(op: &Op) -> bool {
    !matches!(op, Op::Range(_))
}

/// (c): the client history, per key.
pub fn check_history(
    history: &[Operation<KeyedOp<u64, u64>, RegisterRet<u64>>],
) -> Option<Violation> {
    match check_kv(history, LINEARIZABILITY_BUDGET) {
        Verdict::NotLinearizable { explanation } => Some(Violation::NotLinearizable(explanation)),
        Verdict::Unknown { reason } => Some(Violation::NotLinearizable(format!(
            "could not decide within the search budget: {reason}"
        ))),
        Verdict::Linearizable => None,
    }
}

/// Total-order broadcast: every replica delivered a prefix of one sequence, and once the
/// replicas converged, the same whole sequence.
pub fn check_broadcast(
    sequences: &[(NodeId, &[(Slot, bytes::Bytes)])],
    converged: bool,
) -> Option<Violation> {
    let (first, longest) = sequences.iter().max_by_key(|(_, s)| s.len())?;
    for (node, sequence) in sequences {
        let differs = sequence
            .iter()
            .zip(longest.iter())
            .position(|(a, b)| a != b);
        let short = converged && sequence.len() != longest.len();
        if differs.is_some() || short {
            return Some(Violation::BroadcastDiverged {
                first: *first,
                second: *node,
                index: differs.unwrap_or(sequence.len()),
            });
        }
    }
    None
}
