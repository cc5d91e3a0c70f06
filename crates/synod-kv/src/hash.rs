//! Hashes of the store for corruption checks (etcd's `Maintenance.Hash` and `HashKV`).
//!
//! etcd's `HashKV` feeds crc32c (Castagnoli) every key revision at or below the requested
//! revision that its compaction kept. This does the same over the retained history: every
//! event of every key, in key order then revision order, up to the revision. Members that
//! applied the same log hold the same history, so they answer the same hash; a member whose
//! history differs (a lost or altered write) answers another. As in etcd, the hash depends
//! on the compacted revision: compare hashes only where `compact_revision` matches.

use crate::history::KeyEvent;
use crate::store::KvStore;
use crate::KvError;

/// What `HashKV` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// crc32c over the retained key revisions up to `revision`.
    pub hash: u32,
    /// The revision hashed up to (etcd's `hash_revision`).
    pub revision: i64,
    /// The compacted revision when hashed (etcd's `compact_revision`).
    pub compact_revision: i64,
}

fn append_i64(crc: u32, value: i64) -> u32 {
    crc32c::crc32c_append(crc, &value.to_le_bytes())
}

fn append_bytes(crc: u32, bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c_append(crc, &(bytes.len() as u64).to_le_bytes());
    crc32c::crc32c_append(crc, bytes)
}

/// One event, with every field and length-prefixed bytes, so no two histories feed the
/// same byte stream.
fn append_event(crc: u32, event: &KeyEvent) -> u32 {
    match event {
        KeyEvent::Put(entry) => {
            let mut crc = crc32c::crc32c_append(crc, &[1]);
            for field in [
                entry.mod_revision,
                entry.create_revision,
                entry.version,
                entry.lease,
            ] {
                crc = append_i64(crc, field);
            }
            append_bytes(crc, &entry.value)
        }
        KeyEvent::Delete { revision } => append_i64(crc32c::crc32c_append(crc, &[0]), *revision),
    }
}

impl KvStore {
    /// etcd's `HashKV`: the hash of every retained key revision at or below `revision` (0 or
    /// negative: the current one). Above the current revision is
    /// [`KvError::FutureRevision`]; below the compacted one [`KvError::RevisionCompacted`].
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, KvError> {
        let at = if revision <= 0 {
            self.revision
        } else {
            revision
        };
        if at > self.revision {
            return Err(KvError::FutureRevision {
                requested: at,
                current: self.revision,
            });
        }
        if at < self.compacted {
            return Err(KvError::RevisionCompacted {
                requested: at,
                compacted: self.compacted,
            });
        }
        let mut crc = 0;
        for (key, history) in self.keys.iter() {
            let mut events = history.iter().filter(|event| event.revision() <= at);
            let Some(first) = events.next() else {
                continue;
            };
            crc = append_event(append_bytes(crc, key), first);
            for event in events {
                crc = append_event(crc, event);
            }
        }
        Ok(KvHash {
            hash: crc,
            revision: at,
            compact_revision: self.compacted,
        })
    }

    /// etcd's `Hash`: the whole replicated state — the history at the current revision, the
    /// revision and compacted revision, and the alarms.
    pub fn hash(&self) -> u32 {
        let history = match self.hash_kv(0) {
            Ok(hashed) => hashed.hash,
            // hash_kv(0) reads at the current revision, which is never compacted away.
            Err(_) => 0,
        };
        let mut crc = append_i64(history, self.revision);
        crc = append_i64(crc, self.compacted);
        crc = crc32c::crc32c_append(crc, &[u8::from(self.nospace)]);
        for (member, kind) in &self.alarms {
            crc = crc32c::crc32c_append(crc, &member.to_le_bytes());
            crc = crc32c::crc32c_append(crc, &[*kind as u8]);
        }
        crc
    }
}

/// One retained event of the history as etcd's backend keys it: revision `(main, sub)`,
/// with `sub` the event's place among the keys its revision wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedEvent {
    pub main: i64,
    pub sub: i64,
    pub key: bytes::Bytes,
    /// The key's state after a put; `None` for a delete (etcd's tombstone).
    pub kv: Option<crate::KeyValue>,
}

impl KvStore {
    /// Every retained event of every key, in revision order: what etcd's `key` bucket
    /// holds for the same history. Above the compacted revision each event's `sub` is its
    /// key's place in its revision's writes, as etcd numbers them; at or below it (the
    /// states a compaction kept, whose write order is forgotten) the keys of one revision
    /// are numbered in key order.
    pub fn retained_events(&self) -> Vec<RetainedEvent> {
        let mut events = Vec::new();
        for (key, history) in self.keys.iter() {
            for event in history.iter() {
                events.push(RetainedEvent {
                    main: event.revision(),
                    sub: 0,
                    key: key.clone(),
                    kv: event.live().map(|entry| entry.to_key_value(key)),
                });
            }
        }
        // Stable: the keys of one revision stay in key order.
        events.sort_by_key(|event| event.main);
        let mut index = 0;
        while index < events.len() {
            let main = events[index].main;
            let end = index + events[index..].partition_point(|event| event.main == main);
            let written = self.changes.keys_at(main);
            let mut next_unlisted = written.len() as i64;
            for event in &mut events[index..end] {
                event.sub = match written.iter().position(|key| *key == event.key) {
                    Some(place) => place as i64,
                    None => {
                        next_unlisted += 1;
                        next_unlisted - 1
                    }
                };
            }
            events[index..end].sort_by_key(|event| event.sub);
            index = end;
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::{compact, delete, put, run};
    use crate::*;

    fn history(ops: &[Op]) -> KvStore {
        let mut store = KvStore::new();
        for op in ops {
            run(&mut store, op.clone());
        }
        store
    }

    fn writes() -> Vec<Op> {
        vec![put("a", "1"), put("b", "1"), put("a", "2"), delete("b")]
    }

    #[test]
    fn the_same_history_hashes_the_same_and_a_different_value_differently() {
        let one = history(&writes());
        let two = history(&writes());
        assert_eq!(one.hash_kv(0), two.hash_kv(0));
        assert_eq!(one.hash(), two.hash());
        let mut changed = writes();
        changed[2] = put("a", "3");
        let other = history(&changed);
        assert_ne!(one.hash_kv(0).unwrap().hash, other.hash_kv(0).unwrap().hash);
        assert_ne!(one.hash(), other.hash());
        // Before the differing write the histories agree.
        assert_eq!(one.hash_kv(3), other.hash_kv(3));
    }

    #[test]
    fn a_hash_at_a_revision_ignores_later_writes() {
        let mut store = history(&writes());
        let at_four = store.hash_kv(4).unwrap();
        assert_eq!(at_four.revision, 4);
        run(&mut store, put("c", "1"));
        assert_eq!(store.hash_kv(4), Ok(at_four));
        assert_ne!(store.hash_kv(0).unwrap().hash, at_four.hash);
        assert_eq!(store.hash_kv(0).unwrap().revision, 6);
    }

    #[test]
    fn a_future_or_compacted_revision_is_refused_as_etcd_refuses_it() {
        let mut store = history(&writes());
        assert_eq!(
            store.hash_kv(6),
            Err(KvError::FutureRevision {
                requested: 6,
                current: 5
            })
        );
        run(&mut store, compact(4));
        assert_eq!(
            store.hash_kv(3),
            Err(KvError::RevisionCompacted {
                requested: 3,
                compacted: 4
            })
        );
        let hashed = store.hash_kv(4).unwrap();
        assert_eq!(hashed.compact_revision, 4);
    }

    #[test]
    fn the_hash_depends_on_the_compaction_as_in_etcd() {
        // The same writes, compacted at 4 or not: the compaction dropped a's first put, so
        // the hashes at 5 differ; compacted alike, they agree.
        let whole = history(&writes());
        let mut compacted = history(&writes());
        run(&mut compacted, compact(4));
        assert_ne!(
            whole.hash_kv(5).unwrap().hash,
            compacted.hash_kv(5).unwrap().hash
        );
        let mut also = history(&writes());
        run(&mut also, compact(4));
        assert_eq!(compacted.hash_kv(5), also.hash_kv(5));
        // A compaction that drops nothing changes no hash.
        let mut nothing_dropped = history(&[put("a", "1"), put("b", "1")]);
        let before = nothing_dropped.hash_kv(0).unwrap().hash;
        run(&mut nothing_dropped, compact(3));
        assert_eq!(nothing_dropped.hash_kv(0).unwrap().hash, before);
    }

    #[test]
    fn a_restored_snapshot_hashes_as_the_store_that_took_it() {
        let mut store = history(&writes());
        run(&mut store, compact(3));
        let mut restored = KvStore::new();
        restored.restore(&store.snapshot()).unwrap();
        assert_eq!(restored.hash_kv(0), store.hash_kv(0));
        assert_eq!(restored.hash(), store.hash());
    }

    #[test]
    fn the_whole_state_hash_covers_the_alarms() {
        let quiet = history(&writes());
        let mut alarmed = history(&writes());
        run(
            &mut alarmed,
            Op::MemberAlarm(AlarmRequest {
                action: AlarmAction::Activate,
                member_id: 7,
                alarm: AlarmKind::Corrupt,
            }),
        );
        assert_eq!(quiet.hash_kv(0), alarmed.hash_kv(0));
        assert_ne!(quiet.hash(), alarmed.hash());
    }

    #[test]
    fn retained_events_number_a_revisions_writes_as_etcds_sub_revisions() {
        let txn = Op::Txn(TxnRequest {
            compare: Vec::new(),
            success: vec![put("b", "1"), put("a", "1")],
            failure: Vec::new(),
        });
        let mut store = history(&[put("x", "0"), put("y", "0"), txn, delete("x")]);
        let listed = |store: &KvStore| -> Vec<(i64, i64, String, bool)> {
            store
                .retained_events()
                .into_iter()
                .map(|e| {
                    let key = String::from_utf8_lossy(&e.key).into_owned();
                    (e.main, e.sub, key, e.kv.is_some())
                })
                .collect()
        };
        let expected = |rows: &[(i64, i64, &str, bool)]| -> Vec<(i64, i64, String, bool)> {
            rows.iter()
                .map(|&(main, sub, key, live)| (main, sub, key.to_string(), live))
                .collect()
        };
        // Writes in the txn's order: b is sub 0, a is sub 1; the delete is a tombstone.
        assert_eq!(
            listed(&store),
            expected(&[
                (2, 0, "x", true),
                (3, 0, "y", true),
                (4, 0, "b", true),
                (4, 1, "a", true),
                (5, 0, "x", false),
            ])
        );
        let a = store.retained_events()[3].kv.clone().expect("a is live");
        assert_eq!((a.create_revision, a.mod_revision, a.version), (4, 4, 1));
        // Compacted at 4: every key keeps its state as of 4 (x was live then) and its
        // later tombstone; the compacted revision's keys are numbered in key order.
        run(&mut store, compact(4));
        assert_eq!(
            listed(&store),
            expected(&[
                (2, 0, "x", true),
                (3, 0, "y", true),
                (4, 0, "a", true),
                (4, 1, "b", true),
                (5, 0, "x", false),
            ])
        );
    }

    /// etcd's data in, the same store out: what `synod snapshot restore` of an etcd
    /// snapshot relies on.
    #[test]
    fn a_store_rebuilt_from_its_etcd_revisions_has_the_same_history() {
        let txn = Op::Txn(TxnRequest {
            compare: Vec::new(),
            success: vec![put("b", "1"), put("a", "1")],
            failure: Vec::new(),
        });
        let grant = Op::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 60 });
        let leased = Op::Put(PutRequest {
            lease: 7,
            ..match put("l", "x") {
                Op::Put(request) => request,
                _ => unreachable!(),
            }
        });
        let mut store = history(&[
            put("x", "0"),
            put("y", "0"),
            txn,
            delete("x"),
            put("x", "again"),
            grant,
            leased,
            put("y", "1"),
        ]);
        run(&mut store, compact(4));
        run(&mut store, put("a", "2"));
        let leases: Vec<(i64, i64)> = store.leases().iter().map(|(&id, &ttl)| (id, ttl)).collect();
        let mut events = store.retained_events();
        events.reverse();
        let rebuilt =
            KvStore::from_etcd(events, store.compacted_revision(), leases, &KvStore::new())
                .expect("a consistent history");
        assert_eq!(rebuilt.retained_events(), store.retained_events());
        assert_eq!(rebuilt.revision(), store.revision());
        assert_eq!(rebuilt.compacted_revision(), 4);
        assert_eq!(rebuilt.lease_keys(7), vec![bytes::Bytes::from("l")]);
        for revision in 4..=store.revision() {
            let at = |store: &KvStore| {
                store.read(&RangeRequest {
                    key: bytes::Bytes::from_static(&[0]),
                    range_end: bytes::Bytes::from_static(&[0]),
                    revision,
                    ..RangeRequest::default()
                })
            };
            assert_eq!(at(&rebuilt), at(&store), "at revision {revision}");
        }
        assert_eq!(rebuilt.changes_at(6), store.changes_at(6));

        // A key naming a lease that is not there is refused, not half restored.
        let events = store.retained_events();
        let error = KvStore::from_etcd(events, 4, Vec::new(), &KvStore::new()).unwrap_err();
        assert!(error.to_string().contains("lease"), "{error}");
    }
}
