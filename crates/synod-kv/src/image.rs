//! The KV store's snapshot: its whole retained history, so a replica restored from it answers
//! every read at or above the compacted revision exactly as the replica that took it.
//!
//! Layout (behind [`SNAPSHOT_FORMAT_VERSION`]): applied slot, revision, compacted revision,
//! the quota's NOSPACE alarm, the members' alarms, every key with its events in key order,
//! the change log (the keys of each revision above its base, in write order), the sessions,
//! the leases (id and TTL; the keys attached to each are rebuilt from the live keys), the
//! lease epoch and the grant count. Histories are written straight from the persistent maps,
//! never copied first. Snapshots of format 1 (the latest state only, before history was
//! kept) are still read: they restore as compacted at their revision; those of format 2
//! (before members' alarms and leases) get a lease of the minimum TTL for every lease id
//! their keys name, so the keys expire unless someone keeps it alive.

use bytes::Bytes;
use imbl::OrdMap;
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::history::{ChangeLog, Entry, KeyEvent, KeyHistory};
use crate::sessions::{Session, Sessions};
use crate::store::{KvStore, INITIAL_REVISION};
use crate::{AlarmKind, KeyValue, Slot, SnapshotError, FORMAT_VERSION};

/// The format-version byte of snapshots with history, members' alarms and leases.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 3;

/// Snapshots with history, before members' alarms and leases.
const HISTORY_FORMAT_VERSION: u8 = 2;

/// The TTL a format-2 snapshot's lease ids get (etcd's minimum with default timings).
const RESTORED_LEASE_TTL_SECONDS: i64 = 2;

/// Serializes a sequence from an iterator without collecting it.
struct Seq<I>(std::cell::Cell<Option<I>>);

impl<I> Seq<I> {
    fn of(iter: I) -> Seq<I> {
        Seq(std::cell::Cell::new(Some(iter)))
    }
}

impl<I, T> Serialize for Seq<I>
where
    I: Iterator<Item = T> + ExactSizeIterator,
    T: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.take() {
            Some(iter) => serializer.collect_seq(iter),
            None => Err(serde::ser::Error::custom("a sequence serialized twice")),
        }
    }
}

/// A key and its events, borrowed for writing.
struct KeyRef<'a>(&'a Bytes, &'a KeyHistory);

impl Serialize for KeyRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut image = serializer.serialize_struct("KeyImage", 2)?;
        image.serialize_field("key", self.0)?;
        image.serialize_field("events", &Seq::of(self.1.iter()))?;
        image.end()
    }
}

struct StoreRef<'a>(&'a KvStore);

impl Serialize for StoreRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let store = self.0;
        let mut image = serializer.serialize_struct("StoreImage", 12)?;
        image.serialize_field("applied", &store.applied)?;
        image.serialize_field("revision", &store.revision)?;
        image.serialize_field("compacted", &store.compacted)?;
        image.serialize_field("nospace", &store.nospace)?;
        let alarms = store.alarms.iter();
        image.serialize_field("alarms", &Seq::of(ExactLen(alarms, store.alarms.len())))?;
        let keys = store.keys.iter().map(|(key, history)| KeyRef(key, history));
        image.serialize_field("keys", &Seq::of(ExactLen(keys, store.keys.len())))?;
        image.serialize_field("changes_base", &store.changes.base())?;
        let changes = store.changes.iter().map(|keys| Seq::of(keys.iter()));
        let count = (store.changes.last() - store.changes.base()) as usize;
        image.serialize_field("changes", &Seq::of(ExactLen(changes, count)))?;
        let sessions = store.sessions.iter();
        image.serialize_field(
            "sessions",
            &Seq::of(ExactLen(sessions, store.sessions.len())),
        )?;
        let leases = store.lease_ttls.iter().map(|(id, ttl)| (*id, *ttl));
        image.serialize_field("leases", &Seq::of(ExactLen(leases, store.lease_ttls.len())))?;
        image.serialize_field("lease_epoch", &store.lease_epoch)?;
        image.serialize_field("leases_granted", &store.leases_granted)?;
        image.end()
    }
}

/// An iterator whose length is known from elsewhere (imbl's iterators do not say).
struct ExactLen<I>(I, usize);

impl<I: Iterator> Iterator for ExactLen<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let item = self.0.next()?;
        self.1 = self.1.saturating_sub(1);
        Some(item)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.1, Some(self.1))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactLen<I> {}

#[derive(Deserialize)]
struct KeyImage {
    key: Bytes,
    events: Vec<KeyEvent>,
}

#[derive(Deserialize)]
struct StoreImage {
    applied: Slot,
    revision: i64,
    compacted: i64,
    nospace: bool,
    alarms: Vec<(u64, AlarmKind)>,
    keys: Vec<KeyImage>,
    changes_base: i64,
    changes: Vec<Vec<Bytes>>,
    sessions: Vec<Session>,
    leases: Vec<(i64, i64)>,
    lease_epoch: crate::LeaseEpoch,
    leases_granted: u64,
}

/// Format 2: [`StoreImage`] without the members' alarms and the leases.
#[derive(Deserialize)]
struct HistoryImage {
    applied: Slot,
    revision: i64,
    compacted: i64,
    nospace: bool,
    keys: Vec<KeyImage>,
    changes_base: i64,
    changes: Vec<Vec<Bytes>>,
    sessions: Vec<Session>,
}

/// Format 1: the latest state only.
#[derive(Deserialize)]
struct LatestImage {
    applied: Slot,
    revision: i64,
    keys: Vec<KeyValue>,
    sessions: Vec<Session>,
}

pub(crate) fn encode(store: &KvStore) -> Bytes {
    Bytes::from(codec::encode_large_as(
        SNAPSHOT_FORMAT_VERSION,
        &StoreRef(store),
    ))
}

/// Decodes a snapshot into a store with `template`'s settings.
pub(crate) fn decode(snapshot: &[u8], template: &KvStore) -> Result<KvStore, SnapshotError> {
    let image = match snapshot.first() {
        Some(&FORMAT_VERSION) => from_latest(codec::decode_as(FORMAT_VERSION, snapshot)?),
        Some(&HISTORY_FORMAT_VERSION) => {
            from_history(codec::decode_as(HISTORY_FORMAT_VERSION, snapshot)?)
        }
        _ => codec::decode_as::<StoreImage>(SNAPSHOT_FORMAT_VERSION, snapshot)?,
    };
    into_store(image, template)
}

/// The store an image describes, once [`check`] finds it consistent.
fn into_store(image: StoreImage, template: &KvStore) -> Result<KvStore, SnapshotError> {
    check(&image).map_err(SnapshotError::Inconsistent)?;
    let mut store = KvStore::with_max_sessions(template.max_sessions())
        .with_quota_bytes(template.quota_bytes());
    let mut keys = OrdMap::new();
    store.lease_ttls = image.leases.iter().copied().collect();
    for KeyImage { key, events } in image.keys {
        if let Some(entry) = events.last().and_then(KeyEvent::live) {
            store.live_keys += 1;
            if entry.lease != 0 {
                store
                    .lease_keys
                    .entry(entry.lease)
                    .or_default()
                    .insert(key.clone());
            }
        }
        let history = KeyHistory::from(events);
        store.history_bytes += history.bytes(&key);
        keys.insert(key, history);
    }
    // The change log shares the map's copies of the keys (`check` found each one there).
    let mut changes = ChangeLog::new(image.changes_base);
    for named in image.changes {
        let shared = named
            .into_iter()
            .map(|key| match keys.get_key_value(&key) {
                Some((stored, _)) => stored.clone(),
                None => key,
            })
            .collect();
        changes.push(shared);
    }
    store.keys = keys;
    store.changes = changes;
    store.revision = image.revision;
    store.compacted = image.compacted;
    store.nospace = image.nospace;
    store.alarms = image.alarms.into_iter().collect();
    store.applied = image.applied;
    store.sessions = Sessions::from_sessions(template.max_sessions(), image.sessions);
    store.lease_epoch = image.lease_epoch;
    store.leases_granted = image.leases_granted;
    Ok(store)
}

/// A store of etcd's data (its `key` bucket's revisions, its compacted revision and its
/// leases), checked as every snapshot image is, with `template`'s settings: the first state
/// of a new cluster, so no slot applied and no sessions or alarms.
pub(crate) fn from_etcd(
    mut events: Vec<crate::RetainedEvent>,
    compacted: i64,
    leases: Vec<(i64, i64)>,
    template: &KvStore,
) -> Result<KvStore, SnapshotError> {
    events.sort_by_key(|event| (event.main, event.sub));
    let revision = events
        .last()
        .map_or(INITIAL_REVISION, |event| event.main)
        .max(compacted)
        .max(INITIAL_REVISION);
    let base = compacted.max(INITIAL_REVISION);
    let mut changes = vec![Vec::new(); (revision - base) as usize];
    let mut keys: std::collections::BTreeMap<Bytes, Vec<KeyEvent>> = Default::default();
    for event in events {
        if event.main > base {
            changes[(event.main - base - 1) as usize].push(event.key.clone());
        }
        let key_event = match event.kv {
            Some(kv) => KeyEvent::Put(Entry {
                value: kv.value,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                lease: kv.lease,
            }),
            None => KeyEvent::Delete {
                revision: event.main,
            },
        };
        keys.entry(event.key).or_default().push(key_event);
    }
    // What a compaction at `compacted` keeps of each key (etcd's `keyIndex.compact`): its
    // last event at or before it if that is a put, and everything after. etcd's data is
    // compacted already unless the snapshot caught a compaction midway (its scheduled
    // revision above the finished one); then this finishes it, as etcd does on start.
    keys.retain(|_, events| {
        if let Some(last_old) = events.iter().rposition(|e| e.revision() <= compacted) {
            let keep_from = match events[last_old] {
                KeyEvent::Put(_) => last_old,
                KeyEvent::Delete { .. } => last_old + 1,
            };
            events.drain(..keep_from);
        }
        !events.is_empty()
    });
    let mut leases = leases;
    leases.sort_unstable();
    let image = StoreImage {
        applied: 0,
        revision,
        compacted,
        nospace: false,
        alarms: Vec::new(),
        keys: keys
            .into_iter()
            .map(|(key, events)| KeyImage { key, events })
            .collect(),
        changes_base: base,
        changes,
        sessions: Vec::new(),
        leases,
        lease_epoch: crate::LeaseEpoch::ZERO,
        leases_granted: 0,
    };
    into_store(image, template)
}

fn from_history(image: HistoryImage) -> StoreImage {
    StoreImage {
        applied: image.applied,
        revision: image.revision,
        compacted: image.compacted,
        nospace: image.nospace,
        alarms: Vec::new(),
        leases: leases_named(&image.keys),
        keys: image.keys,
        changes_base: image.changes_base,
        changes: image.changes,
        sessions: image.sessions,
        lease_epoch: crate::LeaseEpoch::ZERO,
        leases_granted: 0,
    }
}

/// For images from before leases: a lease of the minimum TTL for every lease id a live key
/// names (then the image is consistent, and the keys expire unless kept alive).
fn leases_named(keys: &[KeyImage]) -> Vec<(i64, i64)> {
    let named: std::collections::BTreeSet<i64> = keys
        .iter()
        .filter_map(|key| key.events.last().and_then(KeyEvent::live))
        .map(|entry| entry.lease)
        .filter(|lease| *lease > 0)
        .collect();
    named
        .into_iter()
        .map(|id| (id, RESTORED_LEASE_TTL_SECONDS))
        .collect()
}

fn from_latest(image: LatestImage) -> StoreImage {
    let keys: Vec<KeyImage> = image
        .keys
        .into_iter()
        .map(|kv| KeyImage {
            key: kv.key,
            events: vec![KeyEvent::Put(Entry {
                value: kv.value,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
                lease: kv.lease,
            })],
        })
        .collect();
    StoreImage {
        applied: image.applied,
        revision: image.revision,
        compacted: image.revision,
        nospace: false,
        alarms: Vec::new(),
        leases: leases_named(&keys),
        keys,
        changes_base: image.revision,
        changes: Vec::new(),
        sessions: image.sessions,
        lease_epoch: crate::LeaseEpoch::ZERO,
        leases_granted: 0,
    }
}

fn check(image: &StoreImage) -> Result<(), String> {
    let revision = image.revision;
    if revision < INITIAL_REVISION || image.compacted < 0 || image.compacted > revision {
        return Err(format!(
            "revision {revision}, compacted {} are impossible",
            image.compacted
        ));
    }
    let base = image.compacted.max(INITIAL_REVISION);
    if image.changes_base != base || image.changes.len() as i64 != revision - base {
        return Err(format!(
            "the change log covers {} revisions after {}, not ({base}, {revision}]",
            image.changes.len(),
            image.changes_base
        ));
    }
    for pair in image.keys.windows(2) {
        if pair[0].key >= pair[1].key {
            return Err(format!("keys out of order at {:?}", pair[1].key));
        }
    }
    for key in &image.keys {
        check_events(key, revision)?;
    }
    for (keys, at) in image.changes.iter().zip(base + 1..) {
        for key in keys {
            let found = image
                .keys
                .binary_search_by(|image| image.key.cmp(key))
                .ok()
                .map(|index| &image.keys[index]);
            if !found.is_some_and(|image| image.events.iter().any(|e| e.revision() == at)) {
                return Err(format!(
                    "revision {at} names {key:?}, which has no event there"
                ));
            }
        }
    }
    check_leases(image)?;
    check_sessions(&image.sessions, image.applied)
}

/// Leases in id order, positive ids, TTLs in range, and every live key's lease present.
fn check_leases(image: &StoreImage) -> Result<(), String> {
    for pair in image.leases.windows(2) {
        if pair[0].0 >= pair[1].0 {
            return Err(format!("leases out of order at {}", pair[1].0));
        }
    }
    if let Some((id, ttl)) = image
        .leases
        .iter()
        .find(|(id, ttl)| *id <= 0 || *ttl > crate::MAX_LEASE_TTL_SECONDS)
    {
        return Err(format!("impossible lease {id} with TTL {ttl}"));
    }
    for key in &image.keys {
        let Some(entry) = key.events.last().and_then(KeyEvent::live) else {
            continue;
        };
        if entry.lease != 0
            && image
                .leases
                .binary_search_by(|(id, _)| id.cmp(&entry.lease))
                .is_err()
        {
            return Err(format!(
                "{:?} is attached to lease {}, which does not exist",
                key.key, entry.lease
            ));
        }
    }
    Ok(())
}

/// A key's events: a put first, revisions rising up to the store's, no two deletes in a row,
/// and each put continuing (or, after a delete, restarting) its generation.
fn check_events(image: &KeyImage, revision: i64) -> Result<(), String> {
    let impossible = || format!("impossible history of {:?}: {:?}", image.key, image.events);
    if image.key.is_empty() || !matches!(image.events.first(), Some(KeyEvent::Put(_))) {
        return Err(impossible());
    }
    let mut previous: Option<&KeyEvent> = None;
    for event in &image.events {
        let at = event.revision();
        if at <= INITIAL_REVISION || at > revision {
            return Err(impossible());
        }
        let fits = match (previous, event) {
            (None, KeyEvent::Put(entry)) => {
                entry.create_revision <= at && entry.create_revision > INITIAL_REVISION
            }
            (Some(before), _) if before.revision() >= at => false,
            (Some(KeyEvent::Put(before)), KeyEvent::Put(entry)) => {
                entry.create_revision == before.create_revision
                    && entry.version == before.version + 1
            }
            (Some(KeyEvent::Delete { .. }), KeyEvent::Put(entry)) => {
                entry.create_revision == at && entry.version == 1
            }
            (Some(KeyEvent::Put(_)), KeyEvent::Delete { .. }) => true,
            (_, KeyEvent::Delete { .. }) => false,
        };
        if !fits || event.live().is_some_and(|entry| entry.version < 1) {
            return Err(impossible());
        }
        previous = Some(event);
    }
    Ok(())
}

fn check_sessions(sessions: &[Session], applied: Slot) -> Result<(), String> {
    for pair in sessions.windows(2) {
        if pair[0].client >= pair[1].client {
            return Err(format!(
                "sessions out of order at client {}",
                pair[1].client
            ));
        }
    }
    for session in sessions {
        if session.client == 0 || session.slot > applied {
            return Err(format!(
                "impossible session for client {} at slot {} (applied {applied})",
                session.client, session.slot
            ));
        }
    }
    Ok(())
}
