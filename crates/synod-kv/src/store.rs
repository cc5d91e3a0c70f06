//! The KV store: etcd v3's data model and revision rules over the latest state only.
//!
//! Every command runs against a [`WriteBatch`] that carries the revision its writes will get
//! (`revision + 1`) and an undo log. If the command fails part-way (say the third op of a txn),
//! the undo log restores the keys it touched, so a failed command changes nothing; if it
//! succeeds and wrote anything, the store's revision moves up by exactly one.

use std::collections::BTreeSet;
use std::ops::Bound;

use imbl::OrdMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::sessions::{Lookup, Session, Sessions, DEFAULT_MAX_SESSIONS};
use crate::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, DeleteRangeResponse,
    KeyValue, KvError, Op, OpResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    Response, Slot, SnapshotError, StateMachine, TxnRequest, TxnResponse, MAX_TXN_DEPTH,
    MAX_TXN_OPS,
};

/// The revision of an empty store, as in etcd; the first write gets revision 2.
pub const INITIAL_REVISION: i64 = 1;

/// A key's state without the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    value: Bytes,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
}

impl Entry {
    fn to_key_value(&self, key: &Bytes) -> KeyValue {
        KeyValue {
            key: key.clone(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// The replicated KV store (see the crate docs for its semantics).
///
/// Keys live in a persistent (structurally shared) ordered map: cloning the store is
/// O(1), so a snapshot is taken on the replica's thread at once and serialized on
/// another ([`StateMachine::snapshot_job`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvStore {
    keys: OrdMap<Bytes, Entry>,
    revision: i64,
    applied: Slot,
    sessions: Sessions,
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
    wrote: bool,
    /// Each touched key with its state before the touch, in touch order.
    undo: Vec<(Bytes, Option<Entry>)>,
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
            revision: INITIAL_REVISION,
            applied: 0,
            sessions: Sessions::new(max_sessions),
        }
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// One key's current state.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.keys
            .get_key_value(key)
            .map(|(key, entry)| entry.to_key_value(key))
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

    /// A local read of the latest state (for lease or serializable reads): changes nothing.
    pub fn read(&self, request: &RangeRequest) -> Response {
        Response {
            revision: self.revision,
            result: self.range(request, self.revision).map(OpResponse::Range),
        }
    }

    fn failure(&self, error: KvError) -> Response {
        Response {
            revision: self.revision,
            result: Err(error),
        }
    }

    /// Runs one operation atomically: all of it, or (on error) none of it.
    fn run_command(&mut self, op: &Op) -> Response {
        if let Op::Txn(txn) = op {
            if let Err(error) = check_txn(txn, 1) {
                return self.failure(error);
            }
        }
        let mut batch = WriteBatch {
            revision: self.revision + 1,
            wrote: false,
            undo: Vec::new(),
        };
        match self.run(op, &mut batch) {
            Ok(response) => {
                if batch.wrote {
                    self.revision = batch.revision;
                }
                Response {
                    revision: self.revision,
                    result: Ok(response),
                }
            }
            Err(error) => {
                for (key, before) in batch.undo.into_iter().rev() {
                    match before {
                        Some(entry) => self.keys.insert(key, entry),
                        None => self.keys.remove(&key),
                    };
                }
                self.failure(error)
            }
        }
    }

    fn run(&mut self, op: &Op, batch: &mut WriteBatch) -> Result<OpResponse, KvError> {
        match op {
            Op::Range(request) => {
                // Reads inside a txn see its earlier writes, which carry the batch revision.
                let visible = if batch.wrote {
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
        }
    }

    fn range(&self, request: &RangeRequest, visible: i64) -> Result<RangeResponse, KvError> {
        if request.key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        // etcd: revision <= 0 means "latest"; history is not kept, so only that one is readable.
        if request.revision > 0 && request.revision != visible {
            return Err(if request.revision < visible {
                KvError::RevisionCompacted {
                    requested: request.revision,
                    current: visible,
                }
            } else {
                KvError::FutureRevision {
                    requested: request.revision,
                    current: visible,
                }
            });
        }
        let mut response = RangeResponse::default();
        for (key, entry) in self.keys_in(&request.key, &request.range_end) {
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

    fn put(
        &mut self,
        request: &PutRequest,
        batch: &mut WriteBatch,
    ) -> Result<PutResponse, KvError> {
        check_put(request)?;
        let before = self.keys.get(&request.key).cloned();
        if before.is_none() && (request.ignore_value || request.ignore_lease) {
            return Err(KvError::KeyNotFound(request.key.clone()));
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
        self.keys.insert(request.key.clone(), entry);
        batch.undo.push((request.key.clone(), before));
        batch.wrote = true;
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
        let doomed: Vec<Bytes> = self
            .keys_in(&request.key, &request.range_end)
            .map(|(key, _)| key.clone())
            .collect();
        let mut response = DeleteRangeResponse::default();
        for key in doomed {
            if let Some(entry) = self.keys.remove(&key) {
                if request.prev_kv {
                    response.prev_kvs.push(entry.to_key_value(&key));
                }
                batch.undo.push((key, Some(entry)));
                response.deleted += 1;
            }
        }
        // A delete that finds nothing is not a write: the revision stays (as in etcd).
        batch.wrote |= response.deleted > 0;
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
        for (_, entry) in self.keys_in(&compare.key, &compare.range_end) {
            matched = true;
            if !compare_entry(compare, Some(entry)) {
                return false;
            }
        }
        matched || compare_entry(compare, None)
    }

    /// The keys selected by etcd's `key`/`range_end` convention, in key order.
    fn keys_in<'a>(
        &'a self,
        key: &'a [u8],
        range_end: &'a [u8],
    ) -> impl Iterator<Item = (&'a Bytes, &'a Entry)> + 'a {
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

/// The snapshot layout (behind the format-version byte).
#[derive(Serialize, Deserialize)]
struct StoreImage {
    applied: Slot,
    revision: i64,
    /// In key order.
    keys: Vec<KeyValue>,
    /// In client order.
    sessions: Vec<Session>,
}

impl StoreImage {
    fn check(&self) -> Result<(), String> {
        if self.revision < INITIAL_REVISION {
            return Err(format!(
                "revision {} is below {INITIAL_REVISION}",
                self.revision
            ));
        }
        for pair in self.keys.windows(2) {
            if pair[0].key >= pair[1].key {
                return Err(format!("keys out of order at {:?}", pair[1].key));
            }
        }
        for kv in &self.keys {
            let ordered = INITIAL_REVISION < kv.create_revision
                && kv.create_revision <= kv.mod_revision
                && kv.mod_revision <= self.revision;
            if kv.key.is_empty() || !ordered || kv.version < 1 {
                return Err(format!(
                    "impossible key state {kv:?} at revision {}",
                    self.revision
                ));
            }
        }
        for pair in self.sessions.windows(2) {
            if pair[0].client >= pair[1].client {
                return Err(format!(
                    "sessions out of order at client {}",
                    pair[1].client
                ));
            }
        }
        for session in &self.sessions {
            if session.client == 0 || session.slot > self.applied {
                return Err(format!(
                    "impossible session for client {} at slot {} (applied {})",
                    session.client, session.slot, self.applied
                ));
            }
        }
        Ok(())
    }
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
        self.encode_snapshot()
    }

    fn snapshot_job(&self) -> crate::SnapshotJob {
        let frozen = self.clone();
        Box::new(move || frozen.encode_snapshot())
    }

    fn empty_like(&self) -> Self {
        KvStore::with_max_sessions(self.sessions.max_sessions())
    }

    /// Replaces the state with the snapshot's; this store's session bound is kept (a snapshot
    /// with more sessions loses its oldest ones).
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        self.restore_snapshot(snapshot)
    }
}

impl KvStore {
    fn encode_snapshot(&self) -> Bytes {
        let image = StoreImage {
            applied: self.applied,
            revision: self.revision,
            keys: self
                .keys
                .iter()
                .map(|(key, entry)| entry.to_key_value(key))
                .collect(),
            sessions: self.sessions.iter().cloned().collect(),
        };
        Bytes::from(codec::encode(&image))
    }

    fn restore_snapshot(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        let image: StoreImage = codec::decode(snapshot)?;
        image.check().map_err(SnapshotError::Inconsistent)?;
        let keys = image
            .keys
            .into_iter()
            .map(|kv| {
                let entry = Entry {
                    value: kv.value,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                    lease: kv.lease,
                };
                (kv.key, entry)
            })
            .collect();
        *self = KvStore {
            keys,
            revision: image.revision,
            applied: image.applied,
            sessions: Sessions::from_sessions(self.sessions.max_sessions(), image.sessions),
        };
        Ok(())
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
