//! The MVCC history of the KV store: every retained revision of every key, and which keys each
//! revision changed.
//!
//! A key's history is a [`KeyHistory`] of [`KeyEvent`]s in revision order, like etcd's
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

/// The bytes the quota counts for each retained event beyond its value: its slot in its key's
/// history and in the change log, and the allocator's rounding of the value (measured by
/// `synod bench mvcc` and `tests/history_memory.rs`, see `docs/mvcc.md`).
pub const EVENT_OVERHEAD_BYTES: u64 = 192;

/// The bytes the quota counts for each key with a retained event beyond the key itself: its
/// slot in the ordered map (whose nodes are half full when keys arrive in order), the key's
/// allocation and its shared reference count (measured as [`EVENT_OVERHEAD_BYTES`]).
pub const KEY_OVERHEAD_BYTES: u64 = 150;

/// The bytes the quota counts for one event (its value and [`EVENT_OVERHEAD_BYTES`]).
pub(crate) fn event_bytes(event: &KeyEvent) -> u64 {
    let value = match event {
        KeyEvent::Put(entry) => entry.value.len(),
        KeyEvent::Delete { .. } => 0,
    };
    value as u64 + EVENT_OVERHEAD_BYTES
}

/// The bytes the quota counts for a key itself, once whatever its number of events.
pub(crate) fn key_bytes(key: &[u8]) -> u64 {
    key.len() as u64 + KEY_OVERHEAD_BYTES
}

/// Histories up to this many events live in one shared slice, copied on append; longer ones
/// in a persistent vector. imbl's vector allocates a whole chunk of 64 events as soon as it
/// holds more than its inline buffer (none, for events this size), which cost 4.5 KB for a
/// key written once; the slice costs what it holds, and copying 32 events is cheap.
const FEW_EVENTS_MAX: usize = 32;

/// A key's retained events, oldest first; never empty, revisions strictly increasing.
///
/// Most keys have one event between compactions, so it is held inline; a few events share
/// one allocation; long histories are a persistent vector. Every form clones in O(1) or
/// O([`FEW_EVENTS_MAX`]), so cloning the store (a snapshot) stays cheap.
/// A key's events behind one shared pointer. The store's map is cloned for every
/// published snapshot, and the next write then copies the map's node that holds the key:
/// with the history inline that copied every neighbour's history too (an RRB vector's five
/// pointers, or an event and its value); behind an `Arc` it is one count each, and only the
/// written key's own history is copied (`Arc::make_mut`). Measured in docs/latency.md.
#[derive(Clone, Debug)]
pub(crate) struct KeyHistory(Arc<Held>);

#[derive(Clone, Debug)]
enum Held {
    One(KeyEvent),
    Few(Arc<[KeyEvent]>),
    Many(Vector<KeyEvent>),
}

impl PartialEq for KeyHistory {
    /// The same events, whatever the form holding them.
    fn eq(&self, other: &KeyHistory) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for KeyHistory {}

impl From<Vec<KeyEvent>> for KeyHistory {
    /// The compact form for these events; `events` must not be empty.
    fn from(events: Vec<KeyEvent>) -> KeyHistory {
        KeyHistory(Arc::new(Held::from(events)))
    }
}

impl From<Vec<KeyEvent>> for Held {
    fn from(mut events: Vec<KeyEvent>) -> Held {
        match events.len() {
            1 => Held::One(events.remove(0)),
            n if n <= FEW_EVENTS_MAX => Held::Few(events.into()),
            _ => Held::Many(Vector::from(events)),
        }
    }
}

/// The events of a history, oldest first.
pub(crate) enum Events<'a> {
    Slice(std::slice::Iter<'a, KeyEvent>),
    Vector(imbl::vector::Iter<'a, KeyEvent, imbl::shared_ptr::DefaultSharedPtr>),
}

impl<'a> Iterator for Events<'a> {
    type Item = &'a KeyEvent;
    fn next(&mut self) -> Option<&'a KeyEvent> {
        match self {
            Events::Slice(events) => events.next(),
            Events::Vector(events) => events.next(),
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Events::Slice(events) => events.size_hint(),
            Events::Vector(events) => events.size_hint(),
        }
    }
}

impl ExactSizeIterator for Events<'_> {}

impl KeyHistory {
    pub fn len(&self) -> usize {
        match &*self.0 {
            Held::One(_) => 1,
            Held::Few(events) => events.len(),
            Held::Many(events) => events.len(),
        }
    }

    pub fn iter(&self) -> Events<'_> {
        match &*self.0 {
            Held::One(event) => Events::Slice(std::slice::from_ref(event).iter()),
            Held::Few(events) => Events::Slice(events.iter()),
            Held::Many(events) => Events::Vector(events.iter()),
        }
    }

    fn get(&self, index: usize) -> Option<&KeyEvent> {
        match &*self.0 {
            Held::One(event) => (index == 0).then_some(event),
            Held::Few(events) => events.get(index),
            Held::Many(events) => events.get(index),
        }
    }

    /// The newest event.
    pub fn last(&self) -> &KeyEvent {
        match &*self.0 {
            Held::One(event) => event,
            // Never empty: built from at least two events.
            Held::Few(events) => &events[events.len() - 1],
            Held::Many(events) => &events[events.len() - 1],
        }
    }

    /// The index of the last event at or before `revision`, if any.
    fn index_at(&self, revision: i64) -> Option<usize> {
        let found = match &*self.0 {
            Held::One(event) => match event.revision().cmp(&revision) {
                std::cmp::Ordering::Greater => Err(0),
                std::cmp::Ordering::Equal => Ok(0),
                std::cmp::Ordering::Less => Err(1),
            },
            Held::Few(events) => events.binary_search_by(|e| e.revision().cmp(&revision)),
            Held::Many(events) => events.binary_search_by(|e| e.revision().cmp(&revision)),
        };
        match found {
            Ok(index) => Some(index),
            Err(0) => None,
            Err(after) => Some(after - 1),
        }
    }

    /// The key's state as of `revision`: its last event at or before it, if that was a put.
    /// O(1) for the latest, a binary search otherwise.
    pub fn state_at(&self, revision: i64) -> Option<&Entry> {
        let last = self.last();
        if last.revision() <= revision {
            return last.live();
        }
        self.get(self.index_at(revision)?).and_then(KeyEvent::live)
    }

    /// Appends a newer event.
    pub fn push(&mut self, event: KeyEvent) {
        let longer = match &*self.0 {
            Held::One(first) => Held::Few(Arc::from([first.clone(), event])),
            Held::Few(events) if events.len() < FEW_EVENTS_MAX => Held::Few(
                events
                    .iter()
                    .cloned()
                    .chain(std::iter::once(event))
                    .collect::<Vec<KeyEvent>>()
                    .into(),
            ),
            Held::Few(events) => {
                let mut longer: Vector<KeyEvent> = events.iter().cloned().collect();
                longer.push_back(event);
                Held::Many(longer)
            }
            Held::Many(_) => {
                if let Held::Many(events) = Arc::make_mut(&mut self.0) {
                    events.push_back(event);
                }
                return;
            }
        };
        self.0 = Arc::new(longer);
    }

    /// Drops the newest event (undoing a [`push`](Self::push) onto a history that was not
    /// empty). Returns false, changing nothing, when only one event is left.
    pub fn pop(&mut self) -> bool {
        match &*self.0 {
            Held::One(_) => return false,
            Held::Few(events) => {
                *self = KeyHistory::from(events[..events.len() - 1].to_vec());
            }
            Held::Many(_) => {
                if let Held::Many(events) = Arc::make_mut(&mut self.0) {
                    events.pop_back();
                }
            }
        }
        true
    }

    /// Drops the events a compaction at `revision` makes unreachable, as etcd's
    /// `keyIndex.compact`: everything before the last event at or before `revision`, and that
    /// one too if it is a tombstone. Returns the quota bytes of the events dropped and the
    /// history left (`None`: the key is gone).
    pub fn compact(&self, revision: i64) -> (u64, Option<KeyHistory>) {
        let Some(index) = self.index_at(revision) else {
            return (0, Some(self.clone()));
        };
        let keep_from = match self.get(index) {
            Some(KeyEvent::Delete { .. }) => index + 1,
            _ => index,
        };
        let dropped = self.iter().take(keep_from).map(event_bytes).sum();
        let left = if keep_from == 0 {
            Some(self.clone())
        } else if keep_from == self.len() {
            None
        } else if let Held::Many(events) = &*self.0 {
            Some(match events.len() - keep_from {
                n if n <= FEW_EVENTS_MAX => {
                    KeyHistory::from(self.iter().skip(keep_from).cloned().collect::<Vec<_>>())
                }
                _ => KeyHistory(Arc::new(Held::Many(events.skip(keep_from)))),
            })
        } else {
            Some(KeyHistory::from(
                self.iter().skip(keep_from).cloned().collect::<Vec<_>>(),
            ))
        };
        (dropped, left)
    }

    /// The quota bytes of the whole history and its key.
    pub fn bytes(&self, key: &[u8]) -> u64 {
        key_bytes(key) + self.iter().map(event_bytes).sum::<u64>()
    }
}

/// The keys one revision changed, in write order: most revisions change one key, held inline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Changed {
    One(Bytes),
    Many(Arc<[Bytes]>),
}

impl Changed {
    pub fn keys(&self) -> &[Bytes] {
        match self {
            Changed::One(key) => std::slice::from_ref(key),
            Changed::Many(keys) => keys,
        }
    }
}

/// The keys each revision above `base` changed: entry `i` is revision `base + 1 + i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ChangeLog {
    base: i64,
    revisions: Vector<Changed>,
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
    pub fn push(&mut self, mut keys: Vec<Bytes>) {
        let changed = match keys.len() {
            1 => Changed::One(keys.remove(0)),
            _ => Changed::Many(keys.into()),
        };
        self.revisions.push_back(changed);
    }

    /// The keys `revision` changed (empty outside the log).
    pub fn keys_at(&self, revision: i64) -> &[Bytes] {
        let index = revision - self.base - 1;
        if index < 0 {
            return &[];
        }
        self.revisions
            .get(index as usize)
            .map_or(&[], Changed::keys)
    }

    /// Forgets the revisions at or below `revision`, returning the keys they changed.
    pub fn drop_through(&mut self, revision: i64) -> Vector<Changed> {
        let count = (revision - self.base).clamp(0, self.revisions.len() as i64) as usize;
        let rest = self.revisions.split_off(count);
        let dropped = std::mem::replace(&mut self.revisions, rest);
        self.base = self.base.max(revision);
        dropped
    }

    /// The keys of each revision in the log, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &[Bytes]> {
        self.revisions.iter().map(Changed::keys)
    }
}
