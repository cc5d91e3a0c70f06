//! What the core asks storage to make durable, and the state a node recovers from.
//!
//! Persist requests are issued in order and must become durable in order (a write-ahead
//! log does this naturally). Storage reports the highest durable id back through
//! `Node::on_persisted`; only then do the Promise and Accepted replies that vouch for
//! that state leave the core.

use crate::ballot::{Ballot, Slot};
use crate::message::{Entry, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Issued in increasing order, starting at 1.
pub type PersistId = u64;

#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum PersistOp {
    /// Multi-Paxos: the promised ballot, for the whole log.
    Promise(Ballot),
    /// Per-slot mode: the promised ballot of one slot.
    SlotPromise { slot: Slot, ballot: Ballot },
    /// An accepted entry, or a chosen one learned from a peer (stored at the ballot it was
    /// chosen at).
    Accept(Entry),
    /// Every slot at or below this is chosen, and its entry is already durable.
    Commit(Slot),
    /// A state-machine snapshot covering every slot up to `slot` is durable (the runtime
    /// saved it before telling the core): entries at or below it may be dropped.
    Snapshot { slot: Slot },
}

#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct PersistRequest {
    pub id: PersistId,
    pub ops: Vec<PersistOp>,
}

impl PersistRequest {
    /// False when the request only records commit points: storage may then report it
    /// durable once written, without waiting for a sync. Nothing the node sends vouches
    /// for a commit point (promises and accepted entries travel in requests that do need
    /// a sync, and are held until those are durable), so losing such a request in a crash
    /// only loses knowledge the node re-learns from its peers; and the next synced
    /// request makes it durable along with everything written before it. This saves the
    /// leader a second fdatasync per command: the commit mark that follows each Accept.
    pub fn needs_sync(&self) -> bool {
        self.ops
            .iter()
            .any(|op| !matches!(op, PersistOp::Commit(_)))
    }
}

/// Everything a node keeps across a crash: what its acceptor promised and accepted,
/// and how much of the log it knows is chosen.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub struct DurableState {
    pub promised: Ballot,
    pub slot_promised: BTreeMap<Slot, Ballot>,
    pub entries: BTreeMap<Slot, (Ballot, Value)>,
    pub commit_index: Slot,
    /// Slots at or below this live only in the state-machine snapshot.
    pub snapshot_slot: Slot,
}

impl DurableState {
    /// Applies one op, as storage replays its log at start-up.
    pub fn apply(&mut self, op: &PersistOp) {
        match op {
            PersistOp::Promise(ballot) => self.promised = self.promised.max(*ballot),
            PersistOp::SlotPromise { slot, ballot } => {
                let promised = self.slot_promised.entry(*slot).or_default();
                *promised = (*promised).max(*ballot);
            }
            PersistOp::Accept(entry) => match self.entries.get(&entry.slot) {
                Some((ballot, _)) if *ballot > entry.ballot => {}
                _ => {
                    self.entries
                        .insert(entry.slot, (entry.ballot, entry.value.clone()));
                }
            },
            PersistOp::Commit(slot) => self.commit_index = self.commit_index.max(*slot),
            PersistOp::Snapshot { slot } => {
                if *slot > self.snapshot_slot {
                    self.snapshot_slot = *slot;
                    self.commit_index = self.commit_index.max(*slot);
                    self.entries = self.entries.split_off(&(*slot + 1));
                    self.slot_promised = self.slot_promised.split_off(&(*slot + 1));
                }
            }
        }
    }

    pub fn apply_all<'a>(&mut self, ops: impl IntoIterator<Item = &'a PersistOp>) {
        for op in ops {
            self.apply(op);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_of_commit_marks_alone_skip_the_sync() {
        let request = |ops| PersistRequest { id: 1, ops };
        assert!(!request(vec![PersistOp::Commit(3)]).needs_sync());
        assert!(!request(vec![PersistOp::Commit(3), PersistOp::Commit(4)]).needs_sync());
        assert!(request(vec![PersistOp::Promise(Ballot::new(2, 1))]).needs_sync());
        assert!(request(vec![PersistOp::Commit(3), PersistOp::Snapshot { slot: 3 }]).needs_sync());
        assert!(request(vec![
            PersistOp::Commit(3),
            PersistOp::Accept(Entry {
                slot: 4,
                ballot: Ballot::new(2, 1),
                value: Value::Noop,
            }),
        ])
        .needs_sync());
    }
}
