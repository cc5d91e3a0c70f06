//! The checkers a simulated run must pass:
//!
//! * (a) **agreement** — no two replicas ever apply different values for one slot;
//! * (b) **prefix** — every replica applies slots in order, never past a gap, from where
//!   its snapshot left off: each replica's sequence is a part of the one chosen sequence
//!   (total-order broadcast);
//! * (c) **linearizability** of the client history, per key, with
//!   [`crate::linearizability`] — writes, compare-and-sets, linearizable reads by every
//!   path (lease, read-index round, follower) and reads through the log; serializable
//!   reads must return a value somebody wrote;
//! * (d) **no lost acknowledged write** — every write or successful compare-and-set a
//!   client saw acknowledged is in the chosen log (and, the replicas having converged to
//!   equal states, in every replica's state);
//! * (e) **liveness** — after the faults stop, every client operation completes and
//!   every replica applies every slot ever chosen, with equal state machines, within a
//!   bound (checked in [`crate::cluster`]).

use crate::linearizability::{check_kv, KeyedOp, Operation, RegisterRet, Verdict};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use synod_core::{NodeId, Slot, Value};
use synod_kv::{Command, Op};
use synod_replica::Proposal;

use crate::watchers::WatchRecord;

/// Search budget of the linearizability checker per run.
const LINEARIZABILITY_BUDGET: u64 = 2_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Violation {
    /// Two different values applied for one slot.
    Agreement {
        slot: Slot,
        node: NodeId,
        first: String,
        now: String,
    },
    /// A replica applied `slot` when `expected` was next.
    Prefix {
        node: NodeId,
        slot: Slot,
        expected: Slot,
    },
    NotLinearizable(String),
    /// A watch broke one of etcd's guarantees (ordered, unique, reliable, atomic,
    /// resumable, bookmarkable) or got a wrong `prev_kv`.
    Watch(String),
    /// A lease expired too early, or a key outlived its lease.
    Lease(String),
    /// An acknowledged write missing from the chosen log at the end.
    LostWrite {
        client: u64,
        seq: u64,
    },
    Liveness(String),
    /// The replica refused something the simulation handed it.
    Refused {
        node: NodeId,
        error: String,
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

/// Watches every slot every replica applies.
#[derive(Default)]
pub struct Checker {
    chosen: BTreeMap<Slot, Value>,
    /// Per replica: the last slot applied (or installed from a snapshot) in its current
    /// life.
    delivered: BTreeMap<NodeId, Slot>,
    /// Client commands in the chosen log, by (client, seq); and which of them write.
    applied: BTreeSet<(u64, u64)>,
    applied_writes: BTreeSet<(u64, u64)>,
    acknowledged: BTreeSet<(u64, u64)>,
}

impl Checker {
    /// Replica `node` applied `value` at `slot`. Returns how many client commands in it
    /// were seen for the first time.
    pub fn on_commit(&mut self, node: NodeId, slot: Slot, value: &Value) -> Result<u64, Violation> {
        let last = self.delivered.entry(node).or_insert(0);
        if slot != *last + 1 {
            return Err(Violation::Prefix {
                node,
                slot,
                expected: *last + 1,
            });
        }
        *last = slot;
        match self.chosen.get(&slot) {
            Some(first) if first != value => Err(Violation::Agreement {
                slot,
                node,
                first: summarize(first),
                now: summarize(value),
            }),
            Some(_) => Ok(0),
            None => {
                self.chosen.insert(slot, value.clone());
                Ok(self.record_commands(value))
            }
        }
    }

    fn record_commands(&mut self, value: &Value) -> u64 {
        let mut fresh = 0;
        for bytes in value.commands() {
            let Ok(proposal) = Proposal::decode(bytes) else {
                continue;
            };
            let Ok(command) = Command::decode(&proposal.payload) else {
                continue;
            };
            let id = (command.client, command.seq);
            if self.applied.insert(id) {
                fresh += 1;
            }
            if is_write(&command.op) {
                self.applied_writes.insert(id);
            }
        }
        fresh
    }

    /// Replica `node` installed a snapshot covering every slot up to `slot`.
    pub fn on_snapshot(&mut self, node: NodeId, slot: Slot) {
        let last = self.delivered.entry(node).or_insert(0);
        *last = (*last).max(slot);
    }

    /// A client saw its write acknowledged.
    pub fn on_acknowledged(&mut self, client: u64, seq: u64) {
        self.acknowledged.insert((client, seq));
    }

    /// Replica `node` starts a new life from its snapshot of `from_slot` (0: none): it
    /// applies again from the slot after it.
    pub fn on_restart(&mut self, node: NodeId, from_slot: Slot) {
        self.delivered.insert(node, from_slot);
    }

    /// The highest slot any replica applied.
    pub fn max_slot(&self) -> Slot {
        self.chosen.keys().next_back().copied().unwrap_or(0)
    }

    pub fn applied_commands(&self) -> u64 {
        self.applied.len() as u64
    }

    /// (d): every acknowledged write is in the chosen log. Call at the end, once the
    /// replicas converged (equal states that applied the whole log).
    pub fn lost_acknowledged_writes(&self) -> Vec<Violation> {
        self.acknowledged
            .iter()
            .filter(|id| !self.applied_writes.contains(id))
            .map(|&(client, seq)| Violation::LostWrite { client, seq })
            .collect()
    }
}

/// A value for a report: its command count and first bytes.
fn summarize(value: &Value) -> String {
    match value {
        Value::Noop => "no-op".to_string(),
        Value::Commands(commands) => format!(
            "{} commands, first {:?}",
            commands.len(),
            commands
                .first()
                .map(|c| c.iter().take(24).copied().collect::<Vec<u8>>())
        ),
    }
}

/// A write as far as (d) is concerned: anything that may change the state.
fn is_write(op: &Op) -> bool {
    !op.is_read_only()
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

/// The committed history of the KV store, rebuilt from the chosen log with etcd's revision
/// rules written out longhand for the commands the clients send (puts, value
/// compare-and-sets, reads, compactions): the oracle for reads at older revisions.
#[derive(Default)]
struct CommittedHistory {
    revision: i64,
    /// Per key: (revision, value) for every write, oldest first.
    writes: BTreeMap<bytes::Bytes, Vec<(i64, bytes::Bytes)>>,
    compacted: i64,
    /// Each compaction that took effect: (its revision, the store's revision then).
    compactions: Vec<(i64, i64)>,
    /// Every revision's puts in write order: (key, value).
    puts_at: BTreeMap<i64, Vec<(bytes::Bytes, bytes::Bytes)>>,
    /// Leases as the log decides them: id → (TTL, the keys attached).
    leases: BTreeMap<i64, (i64, std::collections::BTreeSet<bytes::Bytes>)>,
    lease_epoch: synod_kv::LeaseEpoch,
    /// Expiries that took effect: (lease, slot).
    expiries: Vec<(i64, Slot)>,
}

impl CommittedHistory {
    /// The key's state as of `revision` (the clients never delete: a key lives from its
    /// first put, and its version counts its puts).
    fn key_value_at(&self, key: &bytes::Bytes, revision: i64) -> Option<synod_kv::KeyValue> {
        let writes = self.writes.get(key)?;
        let upto: Vec<&(i64, bytes::Bytes)> = writes
            .iter()
            .take_while(|(at, _)| *at <= revision)
            .collect();
        let (mod_revision, value) = upto.last()?;
        Some(synod_kv::KeyValue {
            key: key.clone(),
            value: value.clone(),
            create_revision: writes[0].0,
            mod_revision: *mod_revision,
            version: upto.len() as i64,
            lease: 0,
        })
    }

    /// The events a watch must be sent from `start` through `through`.
    fn watch_events(&self, record: &WatchRecord) -> Vec<synod_kv::WatchEvent> {
        let request = &record.request;
        if request.no_put || record.start > record.through {
            return Vec::new();
        }
        self.puts_at
            .range(record.start..=record.through)
            .flat_map(|(revision, puts)| {
                puts.iter()
                    .filter(|(key, _)| {
                        synod_kv::key_in_range(&request.key, &request.range_end, key)
                    })
                    .map(move |(key, _)| synod_kv::WatchEvent {
                        kind: synod_kv::EventKind::Put,
                        kv: self.key_value_at(key, *revision).expect("written"),
                        prev_kv: if request.prev_kv {
                            self.key_value_at(key, revision - 1)
                        } else {
                            None
                        },
                    })
            })
            .collect()
    }

    fn value_at(&self, key: &[u8], revision: i64) -> Option<&bytes::Bytes> {
        let writes = self.writes.get(key)?;
        writes
            .iter()
            .take_while(|(at, _)| *at <= revision)
            .last()
            .map(|(_, value)| value)
    }

    /// Deletes a lease and its keys (one revision if it had keys).
    fn end_lease(&mut self, id: i64) {
        if let Some((_, keys)) = self.leases.remove(&id) {
            if !keys.is_empty() {
                self.revision += 1;
            }
        }
    }

    fn apply(&mut self, op: &Op, slot: Slot) {
        match op {
            Op::LeaseGrant(grant) => {
                if grant.id > 0 && !self.leases.contains_key(&grant.id) {
                    self.leases
                        .insert(grant.id, (grant.ttl, Default::default()));
                }
            }
            Op::LeaseRevoke(id) => self.end_lease(*id),
            Op::LeasePromote(epoch) => {
                if *epoch > self.lease_epoch {
                    self.lease_epoch = *epoch;
                }
            }
            Op::LeaseExpire { id, epoch } => {
                if *epoch == self.lease_epoch && self.leases.contains_key(id) {
                    self.expiries.push((*id, slot));
                    self.end_lease(*id);
                }
            }
            Op::Put(put) if put.lease != 0 => {
                // Lease clients put each key once, attached to their lease.
                let Some((_, keys)) = self.leases.get_mut(&put.lease) else {
                    return;
                };
                keys.insert(put.key.clone());
                self.revision += 1;
                self.writes
                    .entry(put.key.clone())
                    .or_default()
                    .push((self.revision, put.value.clone()));
                self.puts_at
                    .entry(self.revision)
                    .or_default()
                    .push((put.key.clone(), put.value.clone()));
            }
            Op::Put(put) => {
                self.revision += 1;
                let entry = self.writes.entry(put.key.clone()).or_default();
                entry.push((self.revision, put.value.clone()));
                self.puts_at
                    .entry(self.revision)
                    .or_default()
                    .push((put.key.clone(), put.value.clone()));
            }
            Op::Txn(txn) => {
                let holds = txn.compare.iter().all(|compare| match &compare.target {
                    synod_kv::CompareTarget::Value(expected) => {
                        self.value_at(&compare.key, self.revision) == Some(expected)
                    }
                    _ => false,
                });
                let branch = if holds { &txn.success } else { &txn.failure };
                let puts: Vec<_> = branch
                    .iter()
                    .filter_map(|op| match op {
                        Op::Put(put) => Some(put),
                        _ => None,
                    })
                    .collect();
                if !puts.is_empty() {
                    self.revision += 1;
                    for put in puts {
                        let entry = self.writes.entry(put.key.clone()).or_default();
                        entry.push((self.revision, put.value.clone()));
                        self.puts_at
                            .entry(self.revision)
                            .or_default()
                            .push((put.key.clone(), put.value.clone()));
                    }
                }
            }
            Op::Compact(request) => {
                if request.revision > self.compacted && request.revision <= self.revision {
                    self.compacted = request.revision;
                    self.compactions.push((request.revision, self.revision));
                }
            }
            Op::Range(_) | Op::DeleteRange(_) | Op::Alarm(_) | Op::MemberAlarm(_) => {}
        }
    }
}

impl Checker {
    /// Replays the chosen log, applying each client command once: the replica's proposal
    /// sessions drop copies and proposals given up on (the replica's own table decides,
    /// as it does when applying), then the store's sessions drop a sequence number at or
    /// below the client's last one.
    fn committed_history(&self) -> CommittedHistory {
        let mut history = CommittedHistory {
            revision: synod_kv::INITIAL_REVISION,
            ..CommittedHistory::default()
        };
        let mut proposals = synod_replica::sessions::Sessions::default();
        let mut last_seq: BTreeMap<u64, u64> = BTreeMap::new();
        for (slot, value) in &self.chosen {
            for bytes in value.commands() {
                let Ok(proposal) = Proposal::decode(bytes) else {
                    continue;
                };
                match proposals.check(&proposal, *slot) {
                    synod_replica::sessions::Outcome::Apply => {
                        proposals.record(proposal.client, proposal.seq, bytes::Bytes::new());
                    }
                    _ => continue,
                }
                let Ok(command) = Command::decode(&proposal.payload) else {
                    continue;
                };
                if command.client != 0 {
                    let last = last_seq.entry(command.client).or_insert(0);
                    if command.seq <= *last {
                        continue;
                    }
                    *last = command.seq;
                }
                history.apply(&command.op, *slot);
            }
        }
        history
    }

    /// Leases: every converged replica holds exactly the leases and lease keys the chosen
    /// log gives (no key outlives its revoked or expired lease), and no expiry that took
    /// effect was chosen before `TTL × (100 − margin_percent)%` had passed since the
    /// lease's grant was sent or a keep-alive of it was acknowledged.
    pub(crate) fn check_leases(
        &self,
        log: &crate::leases::LeaseLog,
        stores: &[&synod_kv::KvStore],
        ttl_unit_units: u64,
        margin_percent: u64,
    ) -> (Option<Violation>, u64) {
        let history = self.committed_history();
        let expiries = history.expiries.len() as u64;
        for &(id, slot) in &history.expiries {
            let Some(&(ttl, since)) = log.alive_since.get(&id) else {
                return (
                    Some(Violation::Lease(format!(
                        "lease {id} expired at slot {slot}, but no client ever granted it"
                    ))),
                    expiries,
                );
            };
            let chosen_by = log.applied_at.get(&slot).copied().unwrap_or(u64::MAX);
            let bound = ttl as u64 * ttl_unit_units * (100 - margin_percent) / 100;
            if chosen_by < since + bound {
                return (
                    Some(Violation::Lease(format!(
                        "lease {id} (TTL {ttl} × {ttl_unit_units} units) expired at slot {slot}, applied by {chosen_by}, \
                         only {} units after it was last kept alive at {since}",
                        chosen_by - since
                    ))),
                    expiries,
                );
            }
        }
        for store in stores {
            let held: Vec<i64> = store.leases().keys().copied().collect();
            let expected: Vec<i64> = history.leases.keys().copied().collect();
            if held != expected {
                return (
                    Some(Violation::Lease(format!(
                        "a replica holds leases {held:?}, the log gives {expected:?}"
                    ))),
                    expiries,
                );
            }
            let live = store.read(&synod_kv::RangeRequest {
                key: bytes::Bytes::from_static(b"lease/"),
                range_end: bytes::Bytes::from_static(b"lease0"),
                keys_only: true,
                ..Default::default()
            });
            let Ok(synod_kv::OpResponse::Range(range)) = live.result else {
                continue;
            };
            for kv in range.kvs {
                let attached = history
                    .leases
                    .get(&kv.lease)
                    .is_some_and(|(_, keys)| keys.contains(&kv.key));
                if !attached {
                    return (
                        Some(Violation::Lease(format!(
                            "{:?} outlived lease {}, which the log revoked or never granted",
                            kv.key, kv.lease
                        ))),
                        expiries,
                    );
                }
            }
            let expected_keys: usize = history.leases.values().map(|(_, keys)| keys.len()).sum();
            if range.count as usize != expected_keys {
                return (
                    Some(Violation::Lease(format!(
                        "a replica holds {} lease keys, the log gives {expected_keys}",
                        range.count
                    ))),
                    expiries,
                );
            }
        }
        (None, expiries)
    }

    /// Every watch was sent exactly the committed history's events for its range and
    /// filters, from its start through the revision it was told it had everything
    /// through: ordered, unique, reliable (nothing missing), with correct `prev_kv`
    /// (absent only at a compacted revision the watch resumed at, as etcd) — and was
    /// canceled by compaction only when the revision it needed next was compacted.
    pub(crate) fn check_watches(&self, records: &[WatchRecord]) -> Option<Violation> {
        if records.is_empty() {
            return None;
        }
        let history = self.committed_history();
        for record in records {
            if record.through > history.revision {
                return Some(Violation::Watch(format!(
                    "a watch was told it had everything through revision {}, beyond the committed {}",
                    record.through, history.revision
                )));
            }
            if let Some(compacted) = record.canceled_at {
                let real = history.compactions.iter().any(|&(at, _)| at == compacted);
                if !real || compacted <= record.through + 1 {
                    return Some(Violation::Watch(format!(
                        "a watch needing revision {} was canceled by a compaction at {compacted} (a compaction there: {real})",
                        record.through + 1
                    )));
                }
            }
            let expected = history.watch_events(record);
            let compacted_at =
                |revision: i64| history.compactions.iter().any(|&(at, _)| at == revision);
            let matches = |got: &synod_kv::WatchEvent, want: &synod_kv::WatchEvent| {
                got.kind == want.kind
                    && got.kv == want.kv
                    && (got.prev_kv == want.prev_kv
                        || (got.prev_kv.is_none() && compacted_at(got.revision())))
            };
            let first_difference =
                (0..expected.len().max(record.events.len())).find(|&index| {
                    match (record.events.get(index), expected.get(index)) {
                        (Some(got), Some(want)) => !matches(got, want),
                        _ => true,
                    }
                });
            if let Some(index) = first_difference {
                return Some(Violation::Watch(format!(
                    "a watch of {:?}..{:?} (prev_kv {}, noput {}) from revision {} through {} \
                     was sent {} events, the committed history has {}; event {index} was {:?}, \
                     the history has {:?}",
                    record.request.key,
                    record.request.range_end,
                    record.request.prev_kv,
                    record.request.no_put,
                    record.start,
                    record.through,
                    record.events.len(),
                    expected.len(),
                    record.events.get(index),
                    expected.get(index)
                )));
            }
        }
        None
    }

    /// Every read at an older revision returned exactly the committed state of its key at
    /// that revision — or, when it failed, it was below a compaction the serving replica had
    /// applied, or beyond the revision that replica had reached.
    pub(crate) fn check_revision_reads(
        &self,
        reads: &[crate::clients::RevisionRead],
    ) -> Option<Violation> {
        if reads.is_empty() {
            return None;
        }
        let history = self.committed_history();
        let key_of = |key: u64| bytes::Bytes::from(format!("k{key}"));
        for read in reads {
            let fine = match &read.result {
                Ok(value) => {
                    read.revision <= read.served_at
                        && value.as_ref() == history.value_at(&key_of(read.key), read.revision)
                }
                Err(synod_kv::KvError::FutureRevision { .. }) => read.revision > read.served_at,
                Err(synod_kv::KvError::RevisionCompacted { .. }) => history
                    .compactions
                    .iter()
                    .any(|&(at, then)| at > read.revision && then <= read.served_at),
                Err(_) => false,
            };
            if !fine {
                return Some(Violation::NotLinearizable(format!(
                    "a read of k{} at revision {} (served at revision {}) returned {:?}; the \
                     committed history has {:?} there",
                    read.key,
                    read.revision,
                    read.served_at,
                    read.result,
                    history.value_at(&key_of(read.key), read.revision)
                )));
            }
        }
        None
    }
}
