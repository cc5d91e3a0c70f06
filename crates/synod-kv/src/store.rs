//! The KV store: etcd v3's data model, revision rules and MVCC history.
//!
//! Every command runs against a [`WriteBatch`] that carries the revision its writes will get
//! (`revision + 1`) and an undo log. If the command fails part-way (say the third op of a txn),
//! the undo log restores the key histories it touched, so a failed command changes nothing; if
//! it succeeds and wrote anything, the store's revision moves up by exactly one and the change
//! log records the keys it wrote. Reads at any revision from the compacted one to the current
//! one see the state as of that revision (`history.rs`).

use std::collections::BTreeSet;
use std::ops::Bound;

use imbl::{OrdMap, OrdSet};

use bytes::Bytes;

use crate::history::{event_bytes, key_bytes, ChangeLog, Entry, KeyEvent, KeyHistory};
use crate::image;
use crate::sessions::{Lookup, Sessions, DEFAULT_MAX_SESSIONS};
use crate::{
    AlarmAction, AlarmKind, AlarmRequest, Command, CompactRequest, Compare, CompareResult,
    CompareTarget, DeleteRangeRequest, DeleteRangeResponse, KeyValue, KvError, LeaseEpoch,
    LeaseGrantRequest, Op, OpResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    Response, Slot, SnapshotError, StateMachine, TxnRequest, TxnResponse, MAX_LEASE_TTL_SECONDS,
    MAX_TXN_DEPTH, MAX_TXN_OPS,
};

/// The revision of an empty store, as in etcd; the first write gets revision 2.
pub const INITIAL_REVISION: i64 = 1;

/// etcd's default `--quota-backend-bytes`: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// One key's change at a revision: the key, its state after (`None`: deleted) and before.
pub type Change = (Bytes, Option<KeyValue>, Option<KeyValue>);

/// The replicated KV store (see the crate docs for its semantics).
///
/// Key histories live in a persistent (structurally shared) ordered map of persistent
/// vectors: cloning the store is O(1), so a snapshot is taken on the replica's thread at once
/// and serialized on another ([`crate::StateMachine::snapshot_job`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStore {
    /// Every key with a retained event, live or deleted.
    pub(crate) keys: OrdMap<Bytes, KeyHistory>,
    /// The keys each revision above the compacted one changed.
    pub(crate) changes: ChangeLog,
    pub(crate) revision: i64,
    /// Reads below this revision answer [`KvError::RevisionCompacted`] (0: nothing compacted).
    pub(crate) compacted: i64,
    /// Keys whose latest event is a put.
    pub(crate) live_keys: usize,
    /// The quota's estimate of the retained history: each key with
    /// [`crate::KEY_OVERHEAD_BYTES`], each event's value with [`crate::EVENT_OVERHEAD_BYTES`].
    pub(crate) history_bytes: u64,
    /// The NOSPACE alarm the quota raised: writes that add data are refused until it is
    /// deactivated. Every member raises it at once, so it belongs to none.
    pub(crate) nospace: bool,
    /// Alarms raised through [`Op::MemberAlarm`], by member id and kind (etcd's alarm store).
    pub(crate) alarms: BTreeSet<(u64, AlarmKind)>,
    pub(crate) applied: Slot,
    pub(crate) sessions: Sessions,
    /// Every lease: its TTL in seconds. Kept apart from the attached keys so a lessor can
    /// diff it cheaply (it changes only on grants and revokes).
    pub(crate) lease_ttls: OrdMap<i64, i64>,
    /// The live keys attached to each lease that has any.
    pub(crate) lease_keys: OrdMap<i64, OrdSet<Bytes>>,
    /// The leadership whose lessor decides expiries (`Op::LeasePromote`).
    pub(crate) lease_epoch: LeaseEpoch,
    /// Grants so far: the seed of the next store-chosen lease id.
    pub(crate) leases_granted: u64,
    /// A setting, not state: the same on every replica, like `max_sessions`.
    pub(crate) quota_bytes: u64,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore::new()
    }
}

/// The writes of one command in progress.
struct WriteBatch {
    /// The revision every write of this command gets.
    revision: i64,
    /// The keys written, in write order (each at most once: txn checks refuse duplicates).
    written: Vec<Bytes>,
    /// Each key an event was appended to, in write order, and whether it had a history
    /// before (undone by dropping that event, or the key).
    undo: Vec<(Bytes, bool)>,
    live_keys: usize,
    history_bytes: u64,
}

impl WriteBatch {
    fn wrote(&self) -> bool {
        !self.written.is_empty()
    }
}

impl KvStore {
    /// An empty store at revision 1 keeping up to 65,536 client sessions.
    pub fn new() -> Self {
        KvStore::with_max_sessions(DEFAULT_MAX_SESSIONS)
    }

    /// An empty store keeping up to `max_sessions` client sessions (0 disables deduplication).
    pub fn with_max_sessions(max_sessions: usize) -> Self {
        KvStore {
            keys: OrdMap::new(),
            changes: ChangeLog::new(INITIAL_REVISION),
            revision: INITIAL_REVISION,
            compacted: 0,
            live_keys: 0,
            history_bytes: 0,
            nospace: false,
            alarms: BTreeSet::new(),
            applied: 0,
            sessions: Sessions::new(max_sessions),
            lease_ttls: OrdMap::new(),
            lease_keys: OrdMap::new(),
            lease_epoch: LeaseEpoch::ZERO,
            leases_granted: 0,
            quota_bytes: DEFAULT_QUOTA_BYTES,
        }
    }

    /// Every lease with its TTL in seconds, by id. Cloning it is O(1) and two clones diff
    /// in time proportional to their differences (`OrdMap::diff`).
    pub fn leases(&self) -> &OrdMap<i64, i64> {
        &self.lease_ttls
    }

    /// A lease's TTL in seconds, if it exists.
    pub fn lease_ttl(&self, id: i64) -> Option<i64> {
        self.lease_ttls.get(&id).copied()
    }

    /// The keys attached to a lease, in key order.
    pub fn lease_keys(&self, id: i64) -> Vec<Bytes> {
        self.lease_keys
            .get(&id)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The leadership whose lessor decides expiries (`Ballot::ZERO` before any).
    pub fn lease_epoch(&self) -> LeaseEpoch {
        self.lease_epoch
    }

    /// The same store with another history quota (etcd's `--quota-backend-bytes`). Every
    /// replica must use the same one: the quota decides which writes fail.
    pub fn with_quota_bytes(mut self, quota_bytes: u64) -> Self {
        self.quota_bytes = quota_bytes;
        self
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The revision of the last compaction (0 before any): reads below it fail.
    pub fn compacted_revision(&self) -> i64 {
        self.compacted
    }

    /// The quota's estimate of the retained history, in bytes.
    pub fn history_bytes(&self) -> u64 {
        self.history_bytes
    }

    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// Whether a NOSPACE alarm is raised (the quota's, or a member's): puts are refused.
    pub fn nospace_alarm(&self) -> bool {
        self.nospace
            || self
                .alarms
                .iter()
                .any(|(_, kind)| *kind == AlarmKind::Nospace)
    }

    /// Whether the quota raised its NOSPACE alarm (which no one member raised).
    pub fn quota_alarm(&self) -> bool {
        self.nospace
    }

    /// Whether a CORRUPT alarm is raised: every write is refused.
    pub fn corrupt_alarm(&self) -> bool {
        self.alarms
            .iter()
            .any(|(_, kind)| *kind == AlarmKind::Corrupt)
    }

    /// The alarms members raised, by member id then kind.
    pub fn member_alarms(&self) -> Vec<(u64, AlarmKind)> {
        self.alarms.iter().copied().collect()
    }

    /// The number of live keys.
    pub fn len(&self) -> usize {
        self.live_keys
    }

    pub fn is_empty(&self) -> bool {
        self.live_keys == 0
    }

    /// One key's current state.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        let (key, history) = self.keys.get_key_value(key)?;
        history
            .state_at(self.revision)
            .map(|entry| entry.to_key_value(key))
    }

    /// The changes of `revision` in write order: each key with its state after the change
    /// (`None`: deleted) and before it, as a watch reports them (`kv`, `prev_kv`). Empty for
    /// revisions outside `(compacted, current]` and for revision 1.
    pub fn changes_at(&self, revision: i64) -> Vec<Change> {
        let mut changes = Vec::new();
        if revision <= self.compacted {
            return changes;
        }
        for key in self.changes.keys_at(revision) {
            let Some(history) = self.keys.get(key) else {
                continue;
            };
            let after = history.state_at(revision).map(|e| e.to_key_value(key));
            let before = history.state_at(revision - 1).map(|e| e.to_key_value(key));
            changes.push((key.clone(), after, before));
        }
        changes
    }

    /// The puts of the compacted revision itself in `[key, range_end)` (etcd's range rules),
    /// in key order, without their previous states: what a compaction at `revision` keeps
    /// of that revision's changes (its deletes are gone). A watch that starts exactly at the
    /// compacted revision gets these, as etcd delivers the revisions its compaction kept.
    pub(crate) fn puts_at_compaction(&self, key: &[u8], range_end: &[u8]) -> Vec<KeyValue> {
        let at = self.compacted;
        if at <= INITIAL_REVISION {
            return Vec::new();
        }
        self.keys_in(key, range_end)
            .filter_map(|(key, history)| {
                let entry = history.state_at(at)?;
                (entry.mod_revision == at).then(|| entry.to_key_value(key))
            })
            .collect()
    }

    pub fn max_sessions(&self) -> usize {
        self.sessions.max_sessions()
    }

    /// How many client sessions are kept.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The last sequence number applied for `client`, if its session is kept.
    pub fn session_seq(&self, client: u64) -> Option<u64> {
        self.sessions.get(client).map(|session| session.seq)
    }

    /// Applies one command taken from the log at `slot` (the typed `apply`).
    pub fn execute(&mut self, slot: Slot, command: &Command) -> Response {
        if slot < self.applied {
            return self.failure(KvError::SlotRegression {
                slot,
                applied: self.applied,
            });
        }
        self.applied = slot;
        if command.client != 0 {
            match self.sessions.lookup(command.client, command.seq) {
                Lookup::Replay(response) => return response.clone(),
                Lookup::Stale { last } => {
                    return self.failure(KvError::StaleSequence {
                        client: command.client,
                        seq: command.seq,
                        last,
                    })
                }
                Lookup::Fresh => {}
            }
        }
        let response = self.run_command(&command.op);
        if command.client != 0 {
            self.sessions
                .record(command.client, command.seq, slot, response.clone());
        }
        response
    }

    /// A local read (for lease or serializable reads) at the request's revision, the latest
    /// when it is 0: changes nothing.
    pub fn read(&self, request: &RangeRequest) -> Response {
        Response {
            revision: self.revision,
            result: self.range(request, self.revision).map(OpResponse::Range),
        }
    }

    pub(crate) fn failure(&self, error: KvError) -> Response {
        Response {
            revision: self.revision,
            result: Err(error),
        }
    }

    fn success(&self, result: OpResponse) -> Response {
        Response {
            revision: self.revision,
            result: Ok(result),
        }
    }

    /// Runs one operation atomically: all of it, or (on error) none of it.
    fn run_command(&mut self, op: &Op) -> Response {
        // etcd's corrupt applier refuses every write; reads (and alarms) still run.
        let alarm = matches!(op, Op::Alarm(_) | Op::MemberAlarm(_));
        if self.corrupt_alarm() && !alarm && !op.is_read_only() {
            return self.failure(KvError::Corrupt);
        }
        let nospace = self.nospace_alarm();
        match op {
            Op::Txn(txn) => {
                if let Err(error) = check_txn(txn, 1) {
                    return self.failure(error);
                }
                if nospace && !txn_is_free_of_puts(txn) {
                    return self.failure(self.no_space());
                }
            }
            Op::Put(_) if nospace => return self.failure(self.no_space()),
            Op::Compact(request) => {
                return match self.compact(request) {
                    Ok(()) => self.success(OpResponse::Compact),
                    Err(error) => self.failure(error),
                }
            }
            Op::Alarm(action) => {
                let before = self.nospace;
                self.nospace = *action == AlarmAction::Activate;
                return self.success(OpResponse::Alarm {
                    nospace: self.nospace_alarm(),
                    changed: before != self.nospace,
                });
            }
            Op::LeaseGrant(request) => {
                return match self.grant(request) {
                    Ok(response) => self.success(response),
                    Err(error) => self.failure(error),
                }
            }
            Op::LeasePromote(epoch) => {
                let promoted = *epoch > self.lease_epoch;
                if promoted {
                    self.lease_epoch = *epoch;
                }
                return self.success(OpResponse::LeasePromote { promoted });
            }
            Op::MemberAlarm(request) => {
                let changed = self.member_alarm(request);
                return self.success(OpResponse::Alarm {
                    nospace: self.nospace_alarm(),
                    changed,
                });
            }
            _ => {}
        }
        // Revokes delete keys and so grow the history by tombstones, but like deletes they
        // free space at the next compaction: etcd never refuses its lessor's revokes.
        let exempt_from_quota = matches!(op, Op::LeaseRevoke(_) | Op::LeaseExpire { .. });
        let (lease_ttls, lease_keys) = (self.lease_ttls.clone(), self.lease_keys.clone());
        let mut batch = WriteBatch {
            revision: self.revision + 1,
            written: Vec::new(),
            undo: Vec::new(),
            live_keys: self.live_keys,
            history_bytes: self.history_bytes,
        };
        let result = self.run(op, &mut batch).and_then(|response| {
            // etcd checks the quota before a request that adds data; a delete may pass it.
            let grew = batch.history_bytes > self.history_bytes;
            if grew && !exempt_from_quota && batch.history_bytes > self.quota_bytes {
                self.nospace = true;
                return Err(KvError::NoSpace {
                    history_bytes: batch.history_bytes,
                    quota_bytes: self.quota_bytes,
                });
            }
            Ok(response)
        });
        match result {
            Ok(response) => {
                if batch.wrote() {
                    self.revision = batch.revision;
                    self.live_keys = batch.live_keys;
                    self.history_bytes = batch.history_bytes;
                    self.changes.push(batch.written);
                }
                self.success(response)
            }
            Err(error) => {
                self.lease_ttls = lease_ttls;
                self.lease_keys = lease_keys;
                for (key, existed) in batch.undo.into_iter().rev() {
                    let popped = existed && self.keys.get_mut(&key).is_some_and(KeyHistory::pop);
                    if !popped {
                        self.keys.remove(&key);
                    }
                }
                self.failure(error)
            }
        }
    }

    fn no_space(&self) -> KvError {
        KvError::NoSpace {
            history_bytes: self.history_bytes,
            quota_bytes: self.quota_bytes,
        }
    }

    fn run(&mut self, op: &Op, batch: &mut WriteBatch) -> Result<OpResponse, KvError> {
        match op {
            Op::Range(request) => {
                // Reads inside a txn see its earlier writes, which carry the batch revision.
                let visible = if batch.wrote() {
                    batch.revision
                } else {
                    self.revision
                };
                self.range(request, visible).map(OpResponse::Range)
            }
            Op::Put(request) => self.put(request, batch).map(OpResponse::Put),
            Op::DeleteRange(request) => self
                .delete_range(request, batch)
                .map(OpResponse::DeleteRange),
            Op::Txn(request) => self.txn(request, batch).map(OpResponse::Txn),
            Op::LeaseRevoke(id) => self
                .revoke(*id, batch)
                .map(|deleted| OpResponse::LeaseRevoke { deleted }),
            Op::LeaseExpire { id, epoch } => {
                if *epoch != self.lease_epoch || !self.lease_ttls.contains_key(id) {
                    return Ok(OpResponse::LeaseExpire {
                        expired: false,
                        deleted: 0,
                    });
                }
                let deleted = self.revoke(*id, batch)?;
                Ok(OpResponse::LeaseExpire {
                    expired: true,
                    deleted,
                })
            }
            Op::Compact(_)
            | Op::Alarm(_)
            | Op::MemberAlarm(_)
            | Op::LeaseGrant(_)
            | Op::LeasePromote(_) => Err(KvError::NotInTxn),
        }
    }

    /// etcd's `LeaseGrant`: id 0 picks an unused id from the log alone (every replica picks
    /// the same). A grant is not a write: the revision stays.
    fn grant(&mut self, request: &LeaseGrantRequest) -> Result<OpResponse, KvError> {
        if request.ttl > MAX_LEASE_TTL_SECONDS {
            return Err(KvError::LeaseInvalid("too large lease TTL".to_string()));
        }
        if request.id < 0 {
            return Err(KvError::LeaseInvalid(format!(
                "lease id {} is negative",
                request.id
            )));
        }
        let id = if request.id != 0 {
            if self.lease_ttls.contains_key(&request.id) {
                return Err(KvError::LeaseExists(request.id));
            }
            request.id
        } else {
            let mut seed = self.applied ^ self.leases_granted.rotate_left(32);
            loop {
                seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let candidate = (mix64(seed) >> 1) as i64;
                if candidate != 0 && !self.lease_ttls.contains_key(&candidate) {
                    break candidate;
                }
            }
        };
        self.leases_granted += 1;
        self.lease_ttls.insert(id, request.ttl);
        Ok(OpResponse::LeaseGrant {
            id,
            ttl: request.ttl,
        })
    }

    /// Deletes a lease and every key attached to it, in key order, at the batch's revision.
    fn revoke(&mut self, id: i64, batch: &mut WriteBatch) -> Result<i64, KvError> {
        if self.lease_ttls.remove(&id).is_none() {
            return Err(KvError::LeaseNotFound(id));
        }
        let keys = self.lease_keys.remove(&id).unwrap_or_default();
        let mut deleted = 0;
        for key in keys {
            let tombstone = KeyEvent::Delete {
                revision: batch.revision,
            };
            self.record(&key, tombstone, batch);
            batch.live_keys -= 1;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Moves `key` from one lease's keys to another's (0: none).
    fn reattach(&mut self, key: &Bytes, from: i64, to: i64) {
        if from == to {
            return;
        }
        if from != 0 {
            if let Some(keys) = self.lease_keys.get_mut(&from) {
                keys.remove(key);
                if keys.is_empty() {
                    self.lease_keys.remove(&from);
                }
            }
        }
        if to != 0 {
            self.lease_keys.entry(to).or_default().insert(key.clone());
        }
    }

    /// etcd's `alarmStore.Activate`/`Deactivate`: whether the alarm set changed. Clearing a
    /// member's NOSPACE clears the quota's too, since `etcdctl alarm disarm` deactivates the
    /// alarms listed, and the quota's is listed under every member.
    fn member_alarm(&mut self, request: &AlarmRequest) -> bool {
        let alarm = (request.member_id, request.alarm);
        match request.action {
            AlarmAction::Activate => self.alarms.insert(alarm),
            AlarmAction::Deactivate => {
                let removed = self.alarms.remove(&alarm);
                let quota = request.alarm == AlarmKind::Nospace && self.nospace;
                if quota {
                    self.nospace = false;
                }
                removed || quota
            }
        }
    }

    /// The revision a range reads at, or why it cannot (etcd `rangeKeys`): 0 or negative is
    /// the latest; below the compacted revision the history is gone; above `visible` it is
    /// not written yet.
    fn read_revision(&self, requested: i64, visible: i64) -> Result<i64, KvError> {
        if requested <= 0 {
            return Ok(visible);
        }
        if requested > visible {
            return Err(KvError::FutureRevision {
                requested,
                current: visible,
            });
        }
        if requested < self.compacted {
            return Err(KvError::RevisionCompacted {
                requested,
                compacted: self.compacted,
            });
        }
        Ok(requested)
    }

    fn range(&self, request: &RangeRequest, visible: i64) -> Result<RangeResponse, KvError> {
        if request.key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        let at = self.read_revision(request.revision, visible)?;
        let mut response = RangeResponse::default();
        for (key, history) in self.keys_in(&request.key, &request.range_end) {
            let Some(entry) = history.state_at(at) else {
                continue;
            };
            response.count += 1;
            if request.count_only
                || (request.limit > 0 && response.kvs.len() as i64 >= request.limit)
            {
                continue;
            }
            let mut kv = entry.to_key_value(key);
            if request.keys_only {
                kv.value = Bytes::new();
            }
            response.kvs.push(kv);
        }
        response.more = !request.count_only && request.limit > 0 && response.count > request.limit;
        Ok(response)
    }

    /// The key's latest live state.
    fn latest(&self, key: &[u8]) -> Option<&Entry> {
        self.keys.get(key).and_then(|history| history.last().live())
    }

    /// Appends `event` to the key's history, noting how to undo it. The change log and the
    /// undo log share the map's copy of a known key rather than the request's.
    fn record(&mut self, key: &Bytes, event: KeyEvent, batch: &mut WriteBatch) {
        batch.history_bytes += event_bytes(&event);
        let stored = self
            .keys
            .get_key_value(key)
            .map(|(stored, _)| stored.clone());
        let existed = stored.is_some();
        match self.keys.get_mut(key) {
            Some(history) => history.push(event),
            None => {
                batch.history_bytes += key_bytes(key);
                self.keys.insert(key.clone(), KeyHistory::from(vec![event]));
            }
        }
        let key = stored.unwrap_or_else(|| key.clone());
        batch.undo.push((key.clone(), existed));
        batch.written.push(key);
    }

    fn put(
        &mut self,
        request: &PutRequest,
        batch: &mut WriteBatch,
    ) -> Result<PutResponse, KvError> {
        check_put(request)?;
        let before = self.latest(&request.key).cloned();
        if before.is_none() && (request.ignore_value || request.ignore_lease) {
            return Err(KvError::KeyNotFound(request.key.clone()));
        }
        if request.lease != 0 && !self.lease_ttls.contains_key(&request.lease) {
            return Err(KvError::LeaseNotFound(request.lease));
        }
        let entry = match &before {
            Some(previous) => Entry {
                value: if request.ignore_value {
                    previous.value.clone()
                } else {
                    request.value.clone()
                },
                create_revision: previous.create_revision,
                mod_revision: batch.revision,
                version: previous.version + 1,
                lease: if request.ignore_lease {
                    previous.lease
                } else {
                    request.lease
                },
            },
            None => Entry {
                value: request.value.clone(),
                create_revision: batch.revision,
                mod_revision: batch.revision,
                version: 1,
                lease: request.lease,
            },
        };
        let prev_kv = match (&before, request.prev_kv) {
            (Some(previous), true) => Some(previous.to_key_value(&request.key)),
            _ => None,
        };
        if before.is_none() {
            batch.live_keys += 1;
        }
        let lease_before = before.as_ref().map_or(0, |previous| previous.lease);
        self.reattach(&request.key, lease_before, entry.lease);
        self.record(&request.key, KeyEvent::Put(entry), batch);
        Ok(PutResponse { prev_kv })
    }

    fn delete_range(
        &mut self,
        request: &DeleteRangeRequest,
        batch: &mut WriteBatch,
    ) -> Result<DeleteRangeResponse, KvError> {
        if request.key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        let doomed: Vec<(Bytes, Entry)> = self
            .keys_in(&request.key, &request.range_end)
            .filter_map(|(key, history)| Some((key.clone(), history.last().live()?.clone())))
            .collect();
        let mut response = DeleteRangeResponse::default();
        for (key, entry) in doomed {
            if request.prev_kv {
                response.prev_kvs.push(entry.to_key_value(&key));
            }
            self.reattach(&key, entry.lease, 0);
            let tombstone = KeyEvent::Delete {
                revision: batch.revision,
            };
            self.record(&key, tombstone, batch);
            batch.live_keys -= 1;
            response.deleted += 1;
        }
        // A delete that finds nothing is not a write: the revision stays (as in etcd).
        Ok(response)
    }

    fn txn(
        &mut self,
        request: &TxnRequest,
        batch: &mut WriteBatch,
    ) -> Result<TxnResponse, KvError> {
        let succeeded = request.compare.iter().all(|compare| self.holds(compare));
        let branch = if succeeded {
            &request.success
        } else {
            &request.failure
        };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(self.run(op, batch)?);
        }
        Ok(TxnResponse {
            succeeded,
            responses,
        })
    }

    /// Whether every key in the compare's range satisfies it (etcd `applyCompare`).
    fn holds(&self, compare: &Compare) -> bool {
        let mut matched = false;
        for (_, history) in self.keys_in(&compare.key, &compare.range_end) {
            let Some(entry) = history.last().live() else {
                continue;
            };
            matched = true;
            if !compare_entry(compare, Some(entry)) {
                return false;
            }
        }
        matched || compare_entry(compare, None)
    }

    /// etcd's `Compact`: at or below the compacted revision is `RevisionCompacted`, above the
    /// current one `FutureRevision`. Only keys changed at or below `revision` since the last
    /// compaction can lose events, so only those are visited (the change log names them).
    fn compact(&mut self, request: &CompactRequest) -> Result<(), KvError> {
        let revision = request.revision;
        if revision <= self.compacted {
            return Err(KvError::RevisionCompacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        if revision > self.revision {
            return Err(KvError::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        let touched: BTreeSet<Bytes> = self
            .changes
            .drop_through(revision)
            .iter()
            .flat_map(|changed| changed.keys().to_vec())
            .collect();
        for key in touched {
            let Some(history) = self.keys.get(&key) else {
                continue;
            };
            let (dropped, left) = history.compact(revision);
            self.history_bytes -= dropped;
            match left {
                Some(left) => {
                    self.keys.insert(key, left);
                }
                None => {
                    self.history_bytes -= key_bytes(&key);
                    self.keys.remove(&key);
                }
            }
        }
        self.compacted = revision;
        Ok(())
    }

    /// The keys selected by etcd's `key`/`range_end` convention, in key order (deleted keys
    /// whose tombstone is retained included).
    fn keys_in<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl Iterator<Item = (&'a Bytes, &'a KeyHistory)> + 'a {
        let bounds: Option<KeyBounds<'a>> = if range_end.is_empty() {
            Some((Bound::Included(key), Bound::Included(key)))
        } else if range_end == [0] {
            Some((Bound::Included(key), Bound::Unbounded))
        } else if range_end > key {
            Some((Bound::Included(key), Bound::Excluded(range_end)))
        } else {
            None // an empty interval: BTreeMap::range would panic on it
        };
        bounds
            .into_iter()
            .flat_map(move |bounds| self.keys.range::<_, [u8]>(bounds))
    }
}

/// Whether a txn could run without a put in either branch (etcd lets such txns through while
/// the NOSPACE alarm is raised).
fn txn_is_free_of_puts(txn: &TxnRequest) -> bool {
    txn.success.iter().chain(&txn.failure).all(|op| match op {
        Op::Put(_) => false,
        Op::Txn(inner) => txn_is_free_of_puts(inner),
        _ => true,
    })
}

/// splitmix64's finalizer: spreads consecutive seeds over the id space.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bounds handed to `BTreeMap::range`.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// Compares one key's state (None: the key is missing) as etcd's `compareKV` does.
fn compare_entry(compare: &Compare, entry: Option<&Entry>) -> bool {
    use std::cmp::Ordering;
    let ordering: Ordering = match (&compare.target, entry) {
        // As etcd: a value compare on a missing key always fails (gRPC cannot tell an
        // empty value from no value), "not equal" included.
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(operand), Some(entry)) => entry.value.as_ref().cmp(operand.as_ref()),
        (CompareTarget::Version(operand), _) => entry.map_or(0, |e| e.version).cmp(operand),
        (CompareTarget::CreateRevision(operand), _) => {
            entry.map_or(0, |e| e.create_revision).cmp(operand)
        }
        (CompareTarget::ModRevision(operand), _) => {
            entry.map_or(0, |e| e.mod_revision).cmp(operand)
        }
        (CompareTarget::Lease(operand), _) => entry.map_or(0, |e| e.lease).cmp(operand),
    };
    match compare.result {
        CompareResult::Equal => ordering == Ordering::Equal,
        CompareResult::NotEqual => ordering != Ordering::Equal,
        CompareResult::Greater => ordering == Ordering::Greater,
        CompareResult::Less => ordering == Ordering::Less,
    }
}

fn check_put(request: &PutRequest) -> Result<(), KvError> {
    if request.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(KvError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(KvError::LeaseProvided);
    }
    Ok(())
}

/// The static checks etcd makes on a txn before running it (`checkTxnRequest`): bounded
/// nesting and size, well-formed ops in both branches, and no key written twice per branch.
fn check_txn(txn: &TxnRequest, depth: usize) -> Result<(), KvError> {
    check_txn_shape(txn, depth)?;
    check_writes(&txn.success)?;
    check_writes(&txn.failure)?;
    Ok(())
}

fn check_txn_shape(txn: &TxnRequest, depth: usize) -> Result<(), KvError> {
    if depth > MAX_TXN_DEPTH {
        return Err(KvError::TxnTooDeep { max: MAX_TXN_DEPTH });
    }
    for branch in [&txn.success, &txn.failure] {
        if branch.len() > MAX_TXN_OPS {
            return Err(KvError::TooManyOps {
                count: branch.len(),
                max: MAX_TXN_OPS,
            });
        }
        for op in branch {
            match op {
                Op::Range(request) if request.key.is_empty() => return Err(KvError::EmptyKey),
                Op::DeleteRange(request) if request.key.is_empty() => {
                    return Err(KvError::EmptyKey)
                }
                Op::Put(request) => check_put(request)?,
                Op::Txn(inner) => check_txn_shape(inner, depth + 1)?,
                Op::Compact(_)
                | Op::Alarm(_)
                | Op::LeaseGrant(_)
                | Op::LeaseRevoke(_)
                | Op::LeasePromote(_)
                | Op::LeaseExpire { .. }
                | Op::MemberAlarm(_) => return Err(KvError::NotInTxn),
                Op::Range(_) | Op::DeleteRange(_) => {}
            }
        }
    }
    Ok(())
}

/// A deleted key interval: `[start, end)`, `end == None` meaning unbounded.
struct Deleted {
    start: Bytes,
    end: Option<Bytes>,
}

impl Deleted {
    fn of(request: &DeleteRangeRequest) -> Deleted {
        let end = if request.range_end.is_empty() {
            let mut successor = request.key.to_vec();
            successor.push(0);
            Some(Bytes::from(successor))
        } else if request.range_end.as_ref() == [0] {
            None
        } else {
            Some(request.range_end.clone())
        };
        Deleted {
            start: request.key.clone(),
            end,
        }
    }

    fn contains(&self, key: &[u8]) -> bool {
        let below_end = match &self.end {
            Some(end) => key < end.as_ref(),
            None => true,
        };
        self.start.as_ref() <= key && below_end
    }
}

fn check_writes(ops: &[Op]) -> Result<(), KvError> {
    intervals(ops).map(|_| ())
}

/// etcd's `checkIntervals`: the keys put and the ranges deleted by `ops` (nested txns
/// included), failing on a key put twice or put and deleted. The two branches of a nested txn
/// may put the same key, since only one of them runs.
fn intervals(ops: &[Op]) -> Result<(BTreeSet<Bytes>, Vec<Deleted>), KvError> {
    let mut deleted: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match op {
            Op::DeleteRange(request) => Some(Deleted::of(request)),
            _ => None,
        })
        .collect();
    let overlaps =
        |deleted: &[Deleted], key: &Bytes| deleted.iter().any(|range| range.contains(key));
    let mut puts: BTreeSet<Bytes> = BTreeSet::new();
    for op in ops {
        let Op::Txn(inner) = op else { continue };
        let (puts_then, deleted_then) = intervals(&inner.success)?;
        let (puts_else, deleted_else) = intervals(&inner.failure)?;
        for key in &puts_then {
            if puts.contains(key) || overlaps(&deleted, key) {
                return Err(KvError::DuplicateKeyInTxn(key.clone()));
            }
        }
        puts.extend(puts_then.iter().cloned());
        for key in puts_else {
            if (puts.contains(&key) && !puts_then.contains(&key)) || overlaps(&deleted, &key) {
                return Err(KvError::DuplicateKeyInTxn(key));
            }
            puts.insert(key);
        }
        deleted.extend(deleted_then);
        deleted.extend(deleted_else);
    }
    for op in ops {
        let Op::Put(request) = op else { continue };
        if puts.contains(&request.key) || overlaps(&deleted, &request.key) {
            return Err(KvError::DuplicateKeyInTxn(request.key.clone()));
        }
        puts.insert(request.key.clone());
    }
    Ok((puts, deleted))
}

impl StateMachine for KvStore {
    fn apply(&mut self, slot: Slot, command: &[u8]) -> Bytes {
        let response = match Command::decode(command) {
            Ok(command) => self.execute(slot, &command),
            Err(error) => {
                // The slot was consumed even though its bytes meant nothing.
                self.applied = self.applied.max(slot);
                self.failure(error)
            }
        };
        response.encode()
    }

    fn applied(&self) -> Slot {
        self.applied
    }

    fn snapshot(&self) -> Bytes {
        image::encode(self)
    }

    /// The quota's estimate of the retained history: what the image mostly holds.
    fn size_hint(&self) -> u64 {
        self.history_bytes
    }

    fn snapshot_job(&self) -> crate::SnapshotJob {
        let frozen = self.clone();
        Box::new(move || image::encode(&frozen))
    }

    fn empty_like(&self) -> Self {
        KvStore::with_max_sessions(self.sessions.max_sessions()).with_quota_bytes(self.quota_bytes)
    }

    /// Replaces the state with the snapshot's; this store's session bound and quota are kept
    /// (a snapshot with more sessions loses its oldest ones).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        *self = image::decode(snapshot, self)?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
