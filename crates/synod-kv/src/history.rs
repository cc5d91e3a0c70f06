//! The MVCC history of the KV store: every retained revision of every key, and which keys each
//! revision changed.
//!
//! A key's history is a persistent vector of [`KeyEvent`]s in revision order, like etcd's
//! `keyIndex`: puts carry the key's state, a delete is a tombstone that ends the key's
//! generation (a later put starts a new one at version 1). The [`ChangeLog`] lists, for every
//! revision above the compacted one, the keys it changed in the order the command wrote them
//! (etcd's sub-revisions), so a reader can walk events from a revision onward and a compaction
//! visits only the keys that changed below its revision. Both are structurally shared, so
//! cloning the store (a snapshot) stays O(1).

use std::sync::Arc;

use bytes::Bytes;
use imbl::Vector;
use serde::{Deserialize, Serialize};

use crate::KeyValue;

/// A key's state at one revision, without the key itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub value: Bytes,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Entry {
    pub fn to_key_value(&self, key: &Bytes) -> KeyValue {
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

/// One change of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum KeyEvent {
    /// The key's state after a put at `entry.mod_revision`.
    Put(Entry),
    /// The key was deleted at `revision`.
    Delete { revision: i64 },
}

impl KeyEvent {
    pub fn revision(&self) -> i64 {
        match self {
            KeyEvent::Put(entry) => entry.mod_revision,
            KeyEvent::Delete { revision } => *revision,
        }
    }

    pub fn live(&self) -> Option<&Entry> {
        match self {
            KeyEvent::Put(entry) => Some(entry),
            KeyEvent::Delete { .. } => None,
        }
    }
}

/// How many bytes of memory one retained event is counted as, beyond its key and value: the
/// event itself, its slot in the key's vector and in the change log (measured by
/// `synod bench mvcc`, see `docs/mvcc.md`).
pub const EVENT_OVERHEAD_BYTES: u64 = 128;

/// The bytes the quota counts for one event of `key`.
pub(crate) fn event_bytes(key: &[u8], event: &KeyEvent) -> u64 {
    let value = match event {
        KeyEvent::Put(entry) => entry.value.len(),
        KeyEvent::Delete { .. } => 0,
    };
    (key.len() + value) as u64 + EVENT_OVERHEAD_BYTES
}

/// A key's retained events, oldest first; never empty, revisions strictly increasing.
pub(crate) type KeyHistory = Vector<KeyEvent>;

/// The key's state as of `revision`: its last event at or before it, if that was a put.
pub(crate) fn state_at(history: &KeyHistory, revision: i64) -> Option<&Entry> {
    let last = history.last()?;
    if last.revision() <= revision {
        return last.live();
    }
    let index = match history.binary_search_by(|event| event.revision().cmp(&revision)) {
        Ok(index) => index,
        Err(0) => return None,
        Err(after) => after - 1,
    };
    history.get(index).and_then(KeyEvent::live)
}

/// Drops the events a compaction at `revision` makes unreachable, as etcd's
/// `keyIndex.compact`: everything before the last event at or before `revision`, and that one
/// too if it is a tombstone. Returns the bytes dropped; an emptied history means the key is gone.
pub(crate) fn compact_history(key: &[u8], history: &mut KeyHistory, revision: i64) -> u64 {
    let keep_from = match history.binary_search_by(|event| event.revision().cmp(&revision)) {
        Ok(index) => index,
        Err(0) => return 0,
        Err(after) => after - 1,
    };
    let keep_from = match history.get(keep_from) {
        Some(KeyEvent::Delete { .. }) => keep_from + 1,
        _ => keep_from,
    };
    let dropped: u64 = history
        .iter()
        .take(keep_from)
        .map(|event| event_bytes(key, event))
        .sum();
    *history = history.skip(keep_from);
    dropped
}

/// The keys each revision above `base` changed: entry `i` is revision `base + 1 + i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChangeLog {
    base: i64,
    revisions: Vector<Arc<[Bytes]>>,
}

impl ChangeLog {
    pub fn new(base: i64) -> ChangeLog {
        ChangeLog {
            base,
            revisions: Vector::new(),
        }
    }

    /// The revision the log starts after.
    pub fn base(&self) -> i64 {
        self.base
    }

    /// The last revision recorded (`base` when empty).
    pub fn last(&self) -> i64 {
        self.base + self.revisions.len() as i64
    }

    /// Records the keys the next revision changed, in write order.
    pub fn push(&mut self, keys: Vec<Bytes>) {
        self.revisions.push_back(keys.into());
    }

    /// The keys `revision` changed (empty outside the log).
    pub fn keys_at(&self, revision: i64) -> &[Bytes] {
        let index = revision - self.base - 1;
        if index < 0 {
            return &[];
        }
        self.revisions
            .get(index as usize)
            .map_or(&[], |keys| keys.as_ref())
    }

    /// Forgets the revisions at or below `revision`, returning the keys they changed.
    pub fn drop_through(&mut self, revision: i64) -> Vec<Arc<[Bytes]>> {
        let count = (revision - self.base).clamp(0, self.revisions.len() as i64) as usize;
        let rest = self.revisions.split_off(count);
        let dropped = std::mem::replace(&mut self.revisions, rest);
        self.base = self.base.max(revision);
        dropped.into_iter().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<[Bytes]>> {
        self.revisions.iter()
    }
}
