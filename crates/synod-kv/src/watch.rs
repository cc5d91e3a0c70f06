//! Watches over the KV store's history: etcd's `Watch` service, sans-IO.
//!
//! A [`WatchHub`] serves every watch of one replica from that replica's own store, so a
//! watch works at any member, followers included. The driver feeds it each new state of the
//! store ([`WatchHub::advance`]; the store is cloned in O(1)), the streams' requests
//! ([`WatchHub::create`], [`WatchHub::cancel`], [`WatchHub::request_progress`]) and a
//! periodic [`WatchHub::catch_up`] and [`WatchHub::progress_tick`], and hands what the hub
//! produced to the streams with [`WatchHub::flush`], whose `send` says whether a stream
//! could take a response.
//!
//! # Synced and unsynced watchers
//!
//! As in etcd, a watcher is *synced* when it has been sent every event up to the hub's
//! revision (or starts in the future): each new revision's events go to it as they are
//! applied. A watcher that starts in the past, or whose stream could not take a response
//! (a slow or stuck reader), is *unsynced*: it remembers the first revision it lacks, and
//! [`WatchHub::catch_up`] reads its events from the store's history in batches of at most
//! [`CATCH_UP_REVISIONS`] revisions and about [`CATCH_UP_BYTES`] bytes, until it is
//! synced again. A stuck reader therefore costs one small record, never a growing queue,
//! and never holds up writes or other watchers; if the history it needs is compacted
//! before it reads on, it is canceled with `compact_revision` (etcd's "victim" watchers).
//!
//! # Guarantees (etcd's API guarantees)
//!
//! For each watcher, the events it is sent are those of the store's history that match its
//! range and filters, from its start revision on, each once, in revision order and, within
//! a revision, in the order the command wrote them (*ordered*, *unique*, *reliable*); all
//! events of one revision are in one update (*atomic*). Every update says through which
//! revision the watcher has been sent every event (`revision`), so a client resuming at
//! `revision + 1` misses nothing (*resumable*), and progress updates carry the same promise
//! without events (*bookmarkable*). `prev_kv` is the key's state just before the event's
//! revision; a put's `create_revision == mod_revision` marks a creation.
//!
//! A watch starting at or below the compacted revision: below it, the watch is canceled with
//! `compact_revision` (etcd's rule `start < compacted`); exactly at it, the watcher gets the
//! puts the compaction kept of that revision (its deletes and previous states are gone, as
//! in etcd), then everything after it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::{KeyValue, KvStore};

/// Identifies one watch stream at a hub (a gRPC `Watch` call).
pub type StreamId = u64;

/// The most revisions one catch-up batch of one watcher reads (etcd's `watchBatchMaxRevs`).
pub const CATCH_UP_REVISIONS: i64 = 1000;

/// A catch-up batch stops adding revisions once its events hold this many bytes (one
/// revision is never split, so a batch may exceed it by that revision).
pub const CATCH_UP_BYTES: usize = 1 << 20;

/// The watch id a stream-wide progress response carries (etcd's `-1`: it concerns every
/// watcher of the stream).
pub const STREAM_PROGRESS_ID: i64 = -1;

/// What a watch asks for (etcd's `WatchCreateRequest` without the stream-level fields).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchRequest {
    pub key: Bytes,
    /// Empty: `key` alone; `b"\0"`: every key `>= key`; otherwise `[key, range_end)`.
    pub range_end: Bytes,
    /// The first revision to report; 0 (or negative): the revision after the hub's current.
    pub start_revision: i64,
    /// Each event carries the key's previous state.
    pub prev_kv: bool,
    /// Drop put events (etcd's `NOPUT` filter).
    pub no_put: bool,
    /// Drop delete events (etcd's `NODELETE` filter).
    pub no_delete: bool,
    /// Send a progress update on each [`WatchHub::progress_tick`] during which this
    /// watcher was sent nothing.
    pub progress_notify: bool,
}

impl WatchRequest {
    fn matches(&self, key: &[u8]) -> bool {
        key_in_range(&self.key, &self.range_end, key)
    }

    fn single_key(&self) -> bool {
        self.range_end.is_empty()
    }
}

/// Whether `key` is in etcd's range `[start, end)` (`end` empty: `start` alone; `\0`: open).
pub fn key_in_range(start: &[u8], end: &[u8], key: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == [0] {
        key >= start
    } else {
        key >= start && key < end
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change of one key, as etcd's `mvccpb.Event`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// A put's new state; a delete's key with `mod_revision` the deletion's revision.
    pub kv: KeyValue,
    /// The key's state before the event, when the watch asked for it and it is retained.
    pub prev_kv: Option<KeyValue>,
}

impl WatchEvent {
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }

    fn bytes(&self) -> usize {
        let kv = |kv: &KeyValue| kv.key.len() + kv.value.len() + 48;
        kv(&self.kv) + self.prev_kv.as_ref().map_or(0, kv)
    }
}

/// A response for one watch (or, with [`STREAM_PROGRESS_ID`], for the whole stream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchUpdate {
    /// The watch exists from now on; `revision` is the hub's revision.
    Created { revision: i64 },
    /// The watch could not be created (`reason`, etcd's message).
    Refused { reason: String },
    /// Events, never empty, in revision order, each revision's all in this update. The
    /// watcher has been sent every event through `revision`.
    Events {
        revision: i64,
        events: Vec<WatchEvent>,
    },
    /// No events: the watcher has been sent every event through `revision`.
    Progress { revision: i64 },
    /// The watch is gone: canceled by its client (`compact_revision` 0), or because the
    /// revision it needed next was compacted.
    Canceled {
        revision: i64,
        compact_revision: i64,
    },
}

/// A response addressed to one watch of one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchOutput {
    pub stream: StreamId,
    pub watch_id: i64,
    pub update: WatchUpdate,
}

/// How often things happened at a hub (for metrics and the simulator's coverage).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    pub created: u64,
    pub canceled: u64,
    /// Watches canceled because the revision they needed was compacted.
    pub canceled_by_compaction: u64,
    /// Times a watcher's stream could not take a response and it fell behind.
    pub stalled: u64,
    /// Catch-up batches read from history.
    pub catch_up_batches: u64,
    pub events_sent: u64,
    pub progress_sent: u64,
}

#[derive(Debug)]
struct Watcher {
    stream: StreamId,
    watch_id: i64,
    request: WatchRequest,
    /// The first revision this watcher has not been sent. Synced watchers keep it at the
    /// hub's revision + 1 (or their future start) as revisions are delivered.
    next: i64,
    synced: bool,
    /// Something was sent to it since the last progress tick.
    sent_since_tick: bool,
}

#[derive(Debug, Default)]
struct Stream {
    /// Auto-assigned ids count up from 0, skipping ids in use (etcd's rule).
    next_auto_id: i64,
    watchers: BTreeMap<i64, u64>,
    /// Created/refused/canceled responses the stream could not take yet, in order.
    pending: VecDeque<Queued>,
    /// A stream-wide progress request waits until every watcher of the stream is synced.
    progress_requested: bool,
}

/// Every watch of one replica (see the module docs).
#[derive(Debug)]
pub struct WatchHub {
    /// The store revision every synced watcher has been sent.
    revision: i64,
    compacted: i64,
    next_key: u64,
    watchers: BTreeMap<u64, Watcher>,
    streams: BTreeMap<StreamId, Stream>,
    next_stream: StreamId,
    /// Synced single-key watchers by key.
    by_key: BTreeMap<Bytes, BTreeSet<u64>>,
    /// Synced range watchers.
    ranges: BTreeSet<u64>,
    unsynced: BTreeSet<u64>,
    outbox: Vec<Queued>,
    stats: WatchStats,
}

/// The watcher a queued response is for ([`NO_WATCHER`]: the stream, or a refused watch).
const NO_WATCHER: u64 = u64::MAX;

/// A response waiting for [`WatchHub::flush`], with the watcher it concerns (a watch id can
/// be reused on its stream once canceled; the watcher cannot).
#[derive(Debug)]
struct Queued {
    watcher: u64,
    output: WatchOutput,
}

impl Queued {
    fn new(watcher: u64, output: WatchOutput) -> Queued {
        Queued { watcher, output }
    }
}

impl WatchHub {
    /// A hub with no watches, at the store's revision.
    pub fn new(store: &KvStore) -> WatchHub {
        WatchHub {
            revision: store.revision(),
            compacted: store.compacted_revision(),
            next_key: 0,
            watchers: BTreeMap::new(),
            streams: BTreeMap::new(),
            next_stream: 1,
            by_key: BTreeMap::new(),
            ranges: BTreeSet::new(),
            unsynced: BTreeSet::new(),
            outbox: Vec::new(),
            stats: WatchStats::default(),
        }
    }

    /// The store revision every synced watcher has been sent.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn stats(&self) -> WatchStats {
        self.stats
    }

    /// How many watches exist.
    pub fn len(&self) -> usize {
        self.watchers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watchers.is_empty()
    }

    /// How many watchers are behind, waiting for [`catch_up`](Self::catch_up).
    pub fn unsynced(&self) -> usize {
        self.unsynced.len()
    }

    /// Whether there is something for [`flush`](Self::flush) to hand out.
    pub fn has_output(&self) -> bool {
        !self.outbox.is_empty() || self.streams.values().any(|s| !s.pending.is_empty())
    }

    pub fn open_stream(&mut self) -> StreamId {
        let id = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(id, Stream::default());
        id
    }

    /// Removes the stream and its watches (the client went away); nothing more is sent to it.
    pub fn close_stream(&mut self, stream: StreamId) {
        let Some(state) = self.streams.remove(&stream) else {
            return;
        };
        for key in state.watchers.into_values() {
            self.remove_watcher(key);
        }
        self.outbox.retain(|queued| queued.output.stream != stream);
    }

    /// Creates a watch on `stream` with the client's `watch_id` (0: the hub picks the
    /// lowest unused id from 0, as etcd). Answers `Created` — or `Refused` for a duplicate
    /// id or an empty range — then the watcher's events, through [`flush`](Self::flush).
    pub fn create(
        &mut self,
        store: &KvStore,
        stream: StreamId,
        watch_id: i64,
        request: WatchRequest,
    ) {
        self.advance(store);
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        let refuse = |reason: &str, watch_id| Queued {
            watcher: NO_WATCHER,
            output: WatchOutput {
                stream,
                watch_id,
                update: WatchUpdate::Refused {
                    reason: reason.to_string(),
                },
            },
        };
        if !request.range_end.is_empty()
            && request.range_end.as_ref() != [0]
            && request.key >= request.range_end
        {
            self.outbox
                .push(refuse("mvcc: watcher range is empty", watch_id));
            return;
        }
        let watch_id = if watch_id != 0 {
            if state.watchers.contains_key(&watch_id) {
                self.outbox.push(refuse(
                    "mvcc: duplicate watch ID provided on the WatchStream",
                    -1,
                ));
                return;
            }
            watch_id
        } else {
            while state.watchers.contains_key(&state.next_auto_id) {
                state.next_auto_id += 1;
            }
            state.next_auto_id += 1;
            state.next_auto_id - 1
        };
        let key = self.next_key;
        self.next_key += 1;
        state.watchers.insert(watch_id, key);
        let next = if request.start_revision <= 0 {
            self.revision + 1
        } else {
            request.start_revision
        };
        self.watchers.insert(
            key,
            Watcher {
                stream,
                watch_id,
                request,
                next,
                synced: false,
                sent_since_tick: false,
            },
        );
        self.stats.created += 1;
        self.outbox.push(Queued::new(
            key,
            WatchOutput {
                stream,
                watch_id,
                update: WatchUpdate::Created {
                    revision: self.revision,
                },
            },
        ));
        if next > self.revision {
            self.sync(key);
        } else {
            self.unsynced.insert(key);
            self.catch_up_one(store, key);
        }
    }

    /// Cancels a watch at its client's request (etcd answers only for a watch that exists).
    pub fn cancel(&mut self, stream: StreamId, watch_id: i64) {
        let Some(key) = self
            .streams
            .get_mut(&stream)
            .and_then(|state| state.watchers.remove(&watch_id))
        else {
            return;
        };
        self.remove_watcher(key);
        self.stats.canceled += 1;
        self.outbox.push(Queued::new(
            key,
            WatchOutput {
                stream,
                watch_id,
                update: WatchUpdate::Canceled {
                    revision: self.revision,
                    compact_revision: 0,
                },
            },
        ));
    }

    /// A stream-wide progress request: answered with [`STREAM_PROGRESS_ID`] and the hub's
    /// revision as soon as every watcher of the stream is synced (at once if they are).
    pub fn request_progress(&mut self, stream: StreamId) {
        if let Some(state) = self.streams.get_mut(&stream) {
            state.progress_requested = true;
        }
        self.answer_progress_requests();
    }

    /// Sends the store's new revisions to the synced watchers they concern.
    pub fn advance(&mut self, store: &KvStore) {
        let compacted = store.compacted_revision();
        if compacted > self.compacted {
            self.compacted = compacted;
            if self.revision < compacted {
                // Revisions this hub never saw are gone (the store jumped ahead by a
                // snapshot): every synced watcher needs them, from history or not at all.
                let synced: Vec<(u64, i64)> = self
                    .watchers
                    .iter()
                    .filter(|(_, w)| w.synced && w.next <= compacted)
                    .map(|(key, w)| (*key, w.next))
                    .collect();
                for (key, next) in synced {
                    self.unsync(key, next);
                }
                self.revision = self.revision.max(compacted);
            }
        }
        if self.watchers.is_empty() {
            // Nobody to tell: skip reading the changes.
            self.revision = self.revision.max(store.revision());
        }
        while self.revision < store.revision() {
            let revision = self.revision + 1;
            self.deliver(store, revision);
            self.revision = revision;
        }
        self.answer_progress_requests();
    }

    /// One catch-up batch for every unsynced watcher: those that reach the hub's revision
    /// become synced; those whose next revision was compacted are canceled.
    pub fn catch_up(&mut self, store: &KvStore) {
        self.advance(store);
        let behind: Vec<u64> = self.unsynced.iter().copied().collect();
        for key in behind {
            self.catch_up_one(store, key);
        }
        self.answer_progress_requests();
    }

    /// Progress updates for synced watchers that asked for them and were sent nothing since
    /// the last tick (etcd's periodic progress notification).
    pub fn progress_tick(&mut self) {
        for (key, watcher) in self.watchers.iter_mut() {
            if watcher.request.progress_notify && watcher.synced && !watcher.sent_since_tick {
                self.outbox.push(Queued::new(
                    *key,
                    WatchOutput {
                        stream: watcher.stream,
                        watch_id: watcher.watch_id,
                        update: WatchUpdate::Progress {
                            revision: self.revision,
                        },
                    },
                ));
            }
            watcher.sent_since_tick = false;
        }
    }

    /// Hands every response produced so far to `send`, in order. `send` returns false when
    /// its stream cannot take the response now: an events or progress response is then
    /// dropped and its watcher falls behind, to be caught up from history; a created,
    /// refused or canceled response waits, in order, for the next flush. Returns whether
    /// every response was taken.
    pub fn flush(&mut self, mut send: impl FnMut(&WatchOutput) -> bool) -> bool {
        let mut blocked: BTreeSet<StreamId> = BTreeSet::new();
        for (stream, state) in self.streams.iter_mut() {
            while let Some(queued) = state.pending.front() {
                if !send(&queued.output) {
                    blocked.insert(*stream);
                    break;
                }
                state.pending.pop_front();
            }
        }
        for queued in std::mem::take(&mut self.outbox) {
            let stream = queued.output.stream;
            let Some(state) = self.streams.get_mut(&stream) else {
                continue;
            };
            let control = matches!(
                queued.output.update,
                WatchUpdate::Created { .. }
                    | WatchUpdate::Refused { .. }
                    | WatchUpdate::Canceled { .. }
            );
            if control {
                if blocked.contains(&stream) || !send(&queued.output) {
                    blocked.insert(stream);
                    state.pending.push_back(queued);
                }
                continue;
            }
            if queued.watcher == NO_WATCHER {
                // A stream-wide progress response: asked again if the stream is full.
                if !blocked.contains(&stream) && send(&queued.output) {
                    self.stats.progress_sent += 1;
                } else {
                    blocked.insert(stream);
                    state.progress_requested = true;
                }
                continue;
            }
            // Events or progress: only for a watch that still exists, and never after a
            // response of its stream failed (the watcher resends from history, in order).
            let Some(watcher) = self.watchers.get(&queued.watcher) else {
                continue;
            };
            let sent = !blocked.contains(&stream) && send(&queued.output);
            if !sent {
                blocked.insert(stream);
            }
            match (&queued.output.update, sent) {
                (WatchUpdate::Events { events, .. }, true) => {
                    self.stats.events_sent += events.len() as u64;
                }
                (WatchUpdate::Events { events, .. }, false) => {
                    let first = events[0].revision();
                    // Only the first failure of a watcher counts: later responses of the
                    // same flush are for later revisions.
                    if watcher.synced || watcher.next > first {
                        self.stats.stalled += 1;
                        self.unsync(queued.watcher, first);
                    }
                }
                (WatchUpdate::Progress { .. }, true) => self.stats.progress_sent += 1,
                _ => {}
            }
        }
        blocked.is_empty()
    }

    /// The events of `revision` to each synced watcher they concern.
    fn deliver(&mut self, store: &KvStore, revision: i64) {
        let changes = store.changes_at(revision);
        let mut batches: BTreeMap<u64, Vec<WatchEvent>> = BTreeMap::new();
        for (key, after, before) in changes {
            let interested = self
                .by_key
                .get(&key)
                .into_iter()
                .flatten()
                .chain(self.ranges.iter())
                .copied()
                .filter(|id| {
                    let watcher = &self.watchers[id];
                    watcher.next <= revision && watcher.request.matches(&key)
                });
            for id in interested {
                let watcher = &self.watchers[&id];
                if let Some(event) = to_event(&watcher.request, &key, revision, &after, &before) {
                    batches.entry(id).or_default().push(event);
                }
            }
        }
        for (id, events) in batches {
            let watcher = self.watchers.get_mut(&id).expect("indexed watchers exist");
            watcher.sent_since_tick = true;
            self.outbox.push(Queued::new(
                id,
                WatchOutput {
                    stream: watcher.stream,
                    watch_id: watcher.watch_id,
                    update: WatchUpdate::Events { revision, events },
                },
            ));
        }
        // Synced watchers stay one past the hub's revision (future starts keep theirs).
        for id in self.by_key.values().flatten().chain(self.ranges.iter()) {
            let watcher = self.watchers.get_mut(id).expect("indexed watchers exist");
            watcher.next = watcher.next.max(revision + 1);
        }
    }

    /// One batch of history for an unsynced watcher.
    fn catch_up_one(&mut self, store: &KvStore, key: u64) {
        let Some(watcher) = self.watchers.get(&key) else {
            self.unsynced.remove(&key);
            return;
        };
        let compacted = store.compacted_revision();
        if watcher.next < compacted {
            let (stream, watch_id) = (watcher.stream, watcher.watch_id);
            self.remove_watcher(key);
            if let Some(state) = self.streams.get_mut(&stream) {
                state.watchers.remove(&watch_id);
            }
            self.stats.canceled_by_compaction += 1;
            self.outbox.push(Queued::new(
                key,
                WatchOutput {
                    stream,
                    watch_id,
                    update: WatchUpdate::Canceled {
                        revision: self.revision,
                        compact_revision: compacted,
                    },
                },
            ));
            return;
        }
        let first = watcher.next;
        let last_allowed = (first + CATCH_UP_REVISIONS - 1).min(self.revision);
        let mut events = Vec::new();
        let mut bytes = 0;
        let mut through = first - 1;
        for revision in first..=last_allowed {
            if bytes >= CATCH_UP_BYTES {
                break;
            }
            if revision == compacted {
                // What the compaction kept of its own revision: puts only, no prev_kv.
                for kv in store.puts_at_compaction(&watcher.request.key, &watcher.request.range_end)
                {
                    if !watcher.request.no_put {
                        let event = WatchEvent {
                            kind: EventKind::Put,
                            kv,
                            prev_kv: None,
                        };
                        bytes += event.bytes();
                        events.push(event);
                    }
                }
            } else {
                for (changed, after, before) in store.changes_at(revision) {
                    if !watcher.request.matches(&changed) {
                        continue;
                    }
                    if let Some(event) =
                        to_event(&watcher.request, &changed, revision, &after, &before)
                    {
                        bytes += event.bytes();
                        events.push(event);
                    }
                }
            }
            through = revision;
        }
        self.stats.catch_up_batches += 1;
        let watcher = self.watchers.get_mut(&key).expect("checked above");
        watcher.next = through + 1;
        if !events.is_empty() {
            watcher.sent_since_tick = true;
            self.outbox.push(Queued::new(
                key,
                WatchOutput {
                    stream: watcher.stream,
                    watch_id: watcher.watch_id,
                    update: WatchUpdate::Events {
                        revision: through,
                        events,
                    },
                },
            ));
        }
        if through >= self.revision {
            self.unsynced.remove(&key);
            self.sync(key);
        }
    }

    fn sync(&mut self, key: u64) {
        let watcher = self.watchers.get_mut(&key).expect("syncing a watcher");
        watcher.synced = true;
        if watcher.request.single_key() {
            self.by_key
                .entry(watcher.request.key.clone())
                .or_default()
                .insert(key);
        } else {
            self.ranges.insert(key);
        }
    }

    /// Takes a watcher out of the live path: it resends from `next` on, from history.
    fn unsync(&mut self, key: u64, next: i64) {
        self.unindex(key);
        if let Some(watcher) = self.watchers.get_mut(&key) {
            watcher.synced = false;
            watcher.next = next;
            self.unsynced.insert(key);
        }
    }

    fn unindex(&mut self, key: u64) {
        let Some(watcher) = self.watchers.get(&key) else {
            return;
        };
        if watcher.synced {
            if watcher.request.single_key() {
                if let Some(set) = self.by_key.get_mut(&watcher.request.key) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.by_key.remove(&watcher.request.key);
                    }
                }
            } else {
                self.ranges.remove(&key);
            }
        }
    }

    fn remove_watcher(&mut self, key: u64) {
        self.unindex(key);
        self.unsynced.remove(&key);
        self.watchers.remove(&key);
    }

    /// Answers the streams whose progress request can be answered now.
    fn answer_progress_requests(&mut self) {
        for (stream, state) in self.streams.iter_mut() {
            if !state.progress_requested {
                continue;
            }
            let all_synced = state
                .watchers
                .values()
                .all(|key| self.watchers.get(key).is_some_and(|w| w.synced));
            if all_synced {
                state.progress_requested = false;
                self.outbox.push(Queued::new(
                    NO_WATCHER,
                    WatchOutput {
                        stream: *stream,
                        watch_id: STREAM_PROGRESS_ID,
                        update: WatchUpdate::Progress {
                            revision: self.revision,
                        },
                    },
                ));
            }
        }
    }
}

/// The event a watcher gets for one key's change at `revision`, after its filters.
fn to_event(
    request: &WatchRequest,
    key: &Bytes,
    revision: i64,
    after: &Option<KeyValue>,
    before: &Option<KeyValue>,
) -> Option<WatchEvent> {
    let (kind, kv) = match after {
        Some(kv) if !request.no_put => (EventKind::Put, kv.clone()),
        None if !request.no_delete => (
            EventKind::Delete,
            KeyValue {
                key: key.clone(),
                value: Bytes::new(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
                lease: 0,
            },
        ),
        _ => return None,
    };
    Some(WatchEvent {
        kind,
        kv,
        prev_kv: if request.prev_kv {
            before.clone()
        } else {
            None
        },
    })
}
