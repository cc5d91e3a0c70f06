//! The learner's log: accepted and chosen entries per slot, the commit point, and the
//! delivery cursor.
//!
//! `commit_index` is the end of the contiguous chosen prefix; entries are handed to the
//! state machine strictly in slot order up to it, never past a gap. A chosen slot never
//! changes value: `choose` and `accept` assert it, in production code.

use crate::ballot::{Ballot, Slot};
use crate::message::{Entry, Value};
use crate::mutant::mutant;
use crate::ready::Committed;
use std::collections::BTreeMap;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct LogEntry {
    pub ballot: Ballot,
    pub value: Value,
    pub chosen: bool,
}

#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub(crate) struct Log {
    entries: BTreeMap<Slot, LogEntry>,
    commit_index: Slot,
    delivered_index: Slot,
    /// The highest slot this node knows to be chosen somewhere (maybe past a gap).
    highest_known_chosen: Slot,
    /// Entries at or below this were dropped: they live in the state-machine snapshot.
    compacted_through: Slot,
    /// The deliberate bug this log runs (model checking only; see `mutant.rs`).
    #[cfg(feature = "mutants")]
    pub(crate) mutant: Option<crate::mutant::Mutant>,
}

/// What a change to the log requires storage to record.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Unchanged,
    /// The entry for the slot must be persisted (new value or higher ballot).
    Persist(Entry),
    /// The slot is known chosen with another value, at `chosen_ballot`: the Accept is
    /// stale (its ballot is lower). The acceptor must not vote for it.
    AlreadyChosen {
        chosen_ballot: Ballot,
    },
    /// The slot is chosen and compacted into the snapshot: its value is gone, so there is
    /// nothing to compare the proposal with. The acceptor must not vote for it.
    Compacted,
}

impl Log {
    pub(crate) fn commit_index(&self) -> Slot {
        self.commit_index
    }

    pub(crate) fn delivered_index(&self) -> Slot {
        self.delivered_index
    }

    pub(crate) fn compacted_through(&self) -> Slot {
        self.compacted_through
    }

    /// Drops entries up to `through`, which the state machine has applied and
    /// snapshotted.
    pub(crate) fn compact(&mut self, through: Slot) -> bool {
        let through = through.min(self.delivered_index);
        if through <= self.compacted_through {
            return false;
        }
        self.entries = self.entries.split_off(&(through + 1));
        self.compacted_through = through;
        true
    }

    /// A snapshot from a peer replaces everything up to `slot`. Returns false when the
    /// log already has that prefix.
    pub(crate) fn install_snapshot(&mut self, slot: Slot) -> bool {
        if slot <= self.commit_index {
            return false;
        }
        self.entries = self.entries.split_off(&(slot + 1));
        self.commit_index = slot;
        self.delivered_index = slot;
        self.compacted_through = slot;
        self.highest_known_chosen = self.highest_known_chosen.max(slot);
        self.advance_commit();
        true
    }

    pub(crate) fn highest_known_chosen(&self) -> Slot {
        self.highest_known_chosen.max(self.commit_index)
    }

    pub(crate) fn last_slot(&self) -> Slot {
        self.entries
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.commit_index)
    }

    pub(crate) fn get(&self, slot: Slot) -> Option<&LogEntry> {
        self.entries.get(&slot)
    }

    pub(crate) fn is_chosen(&self, slot: Slot) -> bool {
        slot <= self.commit_index || self.entries.get(&slot).is_some_and(|entry| entry.chosen)
    }

    pub(crate) fn note_chosen_elsewhere(&mut self, slot: Slot) {
        self.highest_known_chosen = self.highest_known_chosen.max(slot);
    }

    /// Phase 2b at the acceptor: record `value` accepted at `ballot`. The caller has
    /// checked the ballot against the promise.
    pub(crate) fn accept(&mut self, slot: Slot, ballot: Ballot, value: Value) -> Change {
        if slot <= self.compacted_through && !mutant!(self, NoVoteForCompactedSlotCheck) {
            return Change::Compacted;
        }
        match self.entries.get_mut(&slot) {
            Some(entry) if entry.chosen && entry.value == value => Change::Unchanged,
            Some(entry) if entry.chosen => {
                // Learned chosen (catch-up, decision mark) without promising its ballot:
                // an older proposer's Accept may still arrive. Any ballot above the one
                // the value was chosen at proposes that value, so a different value at a
                // ballot at or above it means Paxos itself was broken.
                assert!(
                    ballot < entry.ballot,
                    "slot {slot} is chosen at {:?}; ballot {ballot:?} tried to accept a different value",
                    entry.ballot
                );
                Change::AlreadyChosen {
                    chosen_ballot: entry.ballot,
                }
            }
            Some(entry) if entry.ballot > ballot => Change::Unchanged,
            Some(entry) if entry.ballot == ballot => {
                assert_eq!(
                    entry.value, value,
                    "two values for slot {slot} in one ballot {ballot:?}"
                );
                Change::Unchanged
            }
            _ => {
                self.entries.insert(
                    slot,
                    LogEntry {
                        ballot,
                        value: value.clone(),
                        chosen: false,
                    },
                );
                Change::Persist(Entry {
                    slot,
                    ballot,
                    value,
                })
            }
        }
    }

    /// Records that `value` was chosen for `slot` at `ballot`.
    pub(crate) fn choose(&mut self, slot: Slot, ballot: Ballot, value: Value) -> Change {
        self.highest_known_chosen = self.highest_known_chosen.max(slot);
        if slot <= self.commit_index && !self.entries.contains_key(&slot) {
            return Change::Unchanged;
        }
        match self.entries.get_mut(&slot) {
            Some(entry) if entry.chosen => {
                assert_eq!(
                    entry.value, value,
                    "agreement violated: slot {slot} was chosen twice with different values"
                );
                Change::Unchanged
            }
            Some(entry) if entry.value == value && entry.ballot >= ballot => {
                entry.chosen = true;
                Change::Unchanged
            }
            _ => {
                self.entries.insert(
                    slot,
                    LogEntry {
                        ballot,
                        value: value.clone(),
                        chosen: true,
                    },
                );
                Change::Persist(Entry {
                    slot,
                    ballot,
                    value,
                })
            }
        }
    }

    /// Marks chosen every slot up to `commit_index` that this node accepted at `ballot`:
    /// the leader of `ballot` proposes one value per slot, so those values are the chosen
    /// ones. Returns true if the commit point moved.
    pub(crate) fn learn_commit(&mut self, ballot: Ballot, commit_index: Slot) -> bool {
        self.highest_known_chosen = self.highest_known_chosen.max(commit_index);
        if commit_index > self.commit_index {
            for (_, entry) in self.entries.range_mut(self.commit_index + 1..=commit_index) {
                if entry.ballot == ballot {
                    entry.chosen = true;
                }
            }
        }
        self.advance_commit()
    }

    /// Moves the commit point over every contiguous chosen slot.
    pub(crate) fn advance_commit(&mut self) -> bool {
        let before = self.commit_index;
        while self
            .entries
            .get(&(self.commit_index + 1))
            .is_some_and(|entry| entry.chosen)
        {
            self.commit_index += 1;
        }
        self.commit_index > before
    }

    /// Newly committed entries, in slot order, each handed out once.
    pub(crate) fn take_committed(&mut self, out: &mut Vec<Committed>) {
        while self.delivered_index < self.commit_index {
            let slot = self.delivered_index + 1;
            let entry = self
                .entries
                .get(&slot)
                .expect("every slot up to the commit point is present");
            out.push(Committed {
                slot,
                value: entry.value.clone(),
            });
            self.delivered_index = slot;
        }
    }

    /// Entries at or above `from` (Phase 1b), in slot order, cut into chunks of at most
    /// `max_bytes` of values (at least one entry each): `(first, last, entries)` where the
    /// chunks cover `from..` without gaps and the last one ends at `Slot::MAX`.
    pub(crate) fn entry_chunks(
        &self,
        from: Slot,
        max_bytes: usize,
    ) -> Vec<(Slot, Slot, Vec<Entry>)> {
        let mut chunks = Vec::new();
        let mut first = from;
        let mut entries = Vec::new();
        let mut bytes = 0;
        for (slot, entry) in self.entries.range(from..) {
            let size = entry.value.size_bytes();
            if !entries.is_empty() && bytes + size > max_bytes {
                chunks.push((first, *slot - 1, std::mem::take(&mut entries)));
                first = *slot;
                bytes = 0;
            }
            bytes += size;
            entries.push(Entry {
                slot: *slot,
                ballot: entry.ballot,
                value: entry.value.clone(),
            });
        }
        chunks.push((first, Slot::MAX, entries));
        chunks
    }

    /// Chosen entries at or above `from`, in slot order (catch-up): at most `max` of
    /// them and at most `max_bytes` of values (at least one).
    pub(crate) fn chosen_from(&self, from: Slot, max: usize, max_bytes: usize) -> Vec<Entry> {
        let mut bytes = 0;
        let mut out = Vec::new();
        for (slot, entry) in self.entries.range(from..).filter(|(_, e)| e.chosen) {
            let size = entry.value.size_bytes();
            if out.len() >= max || (!out.is_empty() && bytes + size > max_bytes) {
                break;
            }
            bytes += size;
            out.push(Entry {
                slot: *slot,
                ballot: entry.ballot,
                value: entry.value.clone(),
            });
        }
        out
    }

    /// Rebuilds the log from durable state after a restart. Delivery restarts after the
    /// snapshot (slot 1 without one), so the state machine is rebuilt from the snapshot
    /// plus the log.
    pub(crate) fn recover(
        entries: &BTreeMap<Slot, (Ballot, Value)>,
        commit_index: Slot,
        snapshot_slot: Slot,
    ) -> Log {
        let mut log = Log {
            commit_index: snapshot_slot,
            delivered_index: snapshot_slot,
            compacted_through: snapshot_slot,
            ..Log::default()
        };
        let commit_index = commit_index.max(snapshot_slot);
        for (slot, (ballot, value)) in entries.range(snapshot_slot + 1..) {
            log.entries.insert(
                *slot,
                LogEntry {
                    ballot: *ballot,
                    value: value.clone(),
                    chosen: *slot <= commit_index,
                },
            );
        }
        log.advance_commit();
        log.highest_known_chosen = log.commit_index;
        log
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn value(text: &'static str) -> Value {
        Value::Commands(vec![Bytes::from_static(text.as_bytes())])
    }

    #[test]
    fn delivery_stops_at_a_gap_and_resumes_when_it_fills() {
        let mut log = Log::default();
        let b = Ballot::new(1, 1);
        let _ = log.choose(1, b, value("a"));
        let _ = log.choose(3, b, value("c"));
        log.advance_commit();
        let mut out = Vec::new();
        log.take_committed(&mut out);
        assert_eq!(out.iter().map(|c| c.slot).collect::<Vec<_>>(), vec![1]);
        let _ = log.choose(2, b, value("b"));
        log.advance_commit();
        out.clear();
        log.take_committed(&mut out);
        assert_eq!(out.iter().map(|c| c.slot).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn commit_point_marks_only_entries_of_the_leaders_ballot() {
        let mut log = Log::default();
        let _ = log.accept(1, Ballot::new(1, 1), value("old"));
        let _ = log.accept(2, Ballot::new(2, 2), value("new"));
        assert!(!log.learn_commit(Ballot::new(2, 2), 2));
        assert_eq!(
            log.commit_index(),
            0,
            "slot 1 was accepted at another ballot"
        );
        assert!(log.get(2).unwrap().chosen);
    }

    #[test]
    #[should_panic(expected = "agreement violated")]
    fn choosing_a_different_value_for_a_chosen_slot_panics() {
        let mut log = Log::default();
        let _ = log.choose(1, Ballot::new(1, 1), value("a"));
        let _ = log.choose(1, Ballot::new(2, 2), value("b"));
    }

    /// A replica that learned slot 1 chosen at ballot 3 (through catch-up, promising
    /// nothing) later receives the Accept of a deposed leader at ballot 2 with another
    /// value. It must refuse to vote: a vote would let the stale leader count a quorum
    /// for a value that was never chosen.
    #[test]
    fn stale_accept_for_a_slot_learned_chosen_gets_no_vote() {
        let mut log = Log::default();
        let _ = log.choose(1, Ballot::new(3, 3), value("chosen"));
        assert_eq!(
            log.accept(1, Ballot::new(2, 1), value("stale")),
            Change::AlreadyChosen {
                chosen_ballot: Ballot::new(3, 3)
            }
        );
        assert_eq!(
            log.accept(1, Ballot::new(2, 1), value("chosen")),
            Change::Unchanged
        );
        assert_eq!(log.get(1).unwrap().value, value("chosen"));
    }

    #[test]
    #[should_panic(expected = "tried to accept a different value")]
    fn a_different_value_above_the_chosen_ballot_is_a_broken_invariant() {
        let mut log = Log::default();
        let _ = log.choose(1, Ballot::new(3, 3), value("chosen"));
        let _ = log.accept(1, Ballot::new(4, 1), value("other"));
    }

    #[test]
    fn an_acceptor_keeps_the_higher_ballot() {
        let mut log = Log::default();
        assert!(matches!(
            log.accept(1, Ballot::new(2, 1), value("x")),
            Change::Persist(_)
        ));
        assert_eq!(
            log.accept(1, Ballot::new(1, 2), value("y")),
            Change::Unchanged
        );
        assert_eq!(log.get(1).unwrap().value, value("x"));
    }
}
