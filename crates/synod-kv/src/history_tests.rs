//! The MVCC history held to etcd's documented behaviour: revisions and versions through
//! delete and re-create, one revision per txn, reads at old revisions, compaction and its
//! errors, the quota and its alarm, snapshots that keep the history; then a reference model
//! (the whole state copied at every revision) against random command sequences.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use crate::*;

use crate::test_support::{b, compact, delete, put, run};

/// Every key of the store as of `revision`.
fn all_at(store: &KvStore, revision: i64) -> Result<Vec<KeyValue>, KvError> {
    let response = store.read(&RangeRequest {
        key: b("\0"),
        range_end: b("\0"),
        revision,
        ..RangeRequest::default()
    });
    match response.result? {
        OpResponse::Range(range) => Ok(range.kvs),
        other => panic!("expected a range, got {other:?}"),
    }
}

fn one_at(store: &KvStore, key: &str, revision: i64) -> Option<(i64, i64, i64, Bytes)> {
    all_at(store, revision)
        .unwrap()
        .into_iter()
        .find(|kv| kv.key == b(key))
        .map(|kv| (kv.create_revision, kv.mod_revision, kv.version, kv.value))
}

#[test]
fn a_delete_ends_the_generation_and_a_recreate_starts_at_version_one() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "1")); // 2
    run(&mut store, put("a", "2")); // 3
    run(&mut store, delete("a")); // 4
    run(&mut store, put("a", "3")); // 5
    assert_eq!(store.revision(), 5);
    assert_eq!(one_at(&store, "a", 1), None);
    assert_eq!(one_at(&store, "a", 2), Some((2, 2, 1, b("1"))));
    assert_eq!(one_at(&store, "a", 3), Some((2, 3, 2, b("2"))));
    assert_eq!(one_at(&store, "a", 4), None);
    assert_eq!(one_at(&store, "a", 5), Some((5, 5, 1, b("3"))));
    assert_eq!(store.len(), 1);
}

#[test]
fn a_txn_is_one_revision_and_its_changes_keep_their_write_order() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "0")); // 2
    let txn = Op::Txn(TxnRequest {
        compare: Vec::new(),
        success: vec![put("z", "1"), delete("a"), put("m", "1")],
        failure: Vec::new(),
    });
    assert_eq!(run(&mut store, txn).revision, 3);
    assert_eq!(all_at(&store, 2).unwrap().len(), 1);
    let after: Vec<Bytes> = all_at(&store, 3)
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(after, [b("m"), b("z")]);
    let changes = store.changes_at(3);
    let order: Vec<&Bytes> = changes.iter().map(|(key, _, _)| key).collect();
    assert_eq!(order, [&b("z"), &b("a"), &b("m")]);
    // The delete's event: no state after, the put at revision 2 before.
    assert!(changes[1].1.is_none());
    assert_eq!(changes[1].2.as_ref().map(|kv| kv.mod_revision), Some(2));
}

#[test]
fn a_failed_txn_leaves_no_trace_in_the_history() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "0"));
    let before = store.clone();
    let failing = Op::Txn(TxnRequest {
        compare: Vec::new(),
        success: vec![put("b", "1"), put("", "empty key fails")],
        failure: Vec::new(),
    });
    assert_eq!(run(&mut store, failing).result, Err(KvError::EmptyKey));
    assert_eq!(
        (store.keys.clone(), store.changes.clone()),
        (before.keys, before.changes)
    );
    assert_eq!(store.revision(), 2);
}

/// A key's history changes form as it grows (one event inline, a few in a shared slice, many
/// in a persistent vector) and shrinks (a failed txn's undo, a compaction): whatever the form,
/// every retained revision reads the same.
#[test]
fn a_history_reads_alike_in_every_form_it_grows_and_shrinks_through() {
    let reference = |upto: i64| -> Vec<Option<(i64, i64, i64, Bytes)>> {
        let mut store = KvStore::new();
        for value in 1..=upto {
            run(&mut store, put("k", &value.to_string()));
        }
        (2..=store.revision())
            .map(|r| one_at(&store, "k", r))
            .collect()
    };
    for versions in [1, 2, 31, 32, 33, 64, 65, 130] {
        let mut store = KvStore::new();
        for value in 1..=versions {
            run(&mut store, put("k", &value.to_string()));
            // A txn that appends to "k" and then fails: its event is popped again.
            let failing = Op::Txn(TxnRequest {
                compare: Vec::new(),
                success: vec![put("k", "undone"), put("", "empty key fails")],
                failure: Vec::new(),
            });
            assert_eq!(run(&mut store, failing).result, Err(KvError::EmptyKey));
        }
        assert_eq!(store.keys[b"k".as_ref()].len(), versions as usize);
        let reads: Vec<_> = (2..=store.revision())
            .map(|r| one_at(&store, "k", r))
            .collect();
        assert_eq!(reads, reference(versions), "{versions} versions");
        // Compacting from each form keeps the state as of the compaction and what follows.
        for keep in [versions, versions / 2, 1]
            .into_iter()
            .filter(|&keep| keep > 0)
        {
            let mut compacted = store.clone();
            let at = store.revision() - keep + 1;
            assert_eq!(
                run(&mut compacted, compact(at)).result,
                Ok(OpResponse::Compact)
            );
            assert_eq!(compacted.keys[b"k".as_ref()].len(), keep as usize);
            for revision in at..=store.revision() {
                assert_eq!(
                    one_at(&compacted, "k", revision),
                    one_at(&store, "k", revision)
                );
            }
            let mut restored = KvStore::new();
            restored.restore(&compacted.snapshot()).unwrap();
            assert_eq!(restored, compacted, "{versions} versions, {keep} kept");
            assert_eq!(restored.history_bytes(), compacted.history_bytes());
        }
    }
}

#[test]
fn compaction_refuses_older_reads_and_keeps_the_state_at_its_revision() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "1")); // 2
    run(&mut store, put("b", "1")); // 3
    run(&mut store, put("a", "2")); // 4
    run(&mut store, delete("b")); // 5
    run(&mut store, put("c", "1")); // 6
    let at_five = all_at(&store, 5).unwrap();
    let bytes_before = store.history_bytes();
    assert_eq!(run(&mut store, compact(5)).result, Ok(OpResponse::Compact));
    assert_eq!(store.compacted_revision(), 5);
    assert_eq!(store.revision(), 6, "a compaction is not a write");
    assert_eq!(all_at(&store, 5).unwrap(), at_five);
    assert_eq!(
        all_at(&store, 4),
        Err(KvError::RevisionCompacted {
            requested: 4,
            compacted: 5
        })
    );
    // "b" was deleted at 5: gone entirely. "a" keeps only its version as of 5.
    assert!(!store.keys.contains_key(b"b".as_ref()));
    assert_eq!(store.keys[b"a".as_ref()].len(), 1);
    assert!(store.history_bytes() < bytes_before);
    // etcd's errors for compacting again at or below, or beyond the current revision.
    for revision in [5, 3] {
        assert_eq!(
            run(&mut store, compact(revision)).result,
            Err(KvError::RevisionCompacted {
                requested: revision,
                compacted: 5
            })
        );
    }
    assert_eq!(
        run(&mut store, compact(7)).result,
        Err(KvError::FutureRevision {
            requested: 7,
            current: 6
        })
    );
    assert_eq!(run(&mut store, compact(6)).result, Ok(OpResponse::Compact));
    assert_eq!(one_at(&store, "a", 0), Some((2, 4, 2, b("2"))));
}

#[test]
fn compaction_and_alarms_are_refused_inside_a_txn() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "1"));
    for op in [compact(2), Op::Alarm(AlarmAction::Deactivate)] {
        let txn = Op::Txn(TxnRequest {
            compare: Vec::new(),
            success: vec![op],
            failure: Vec::new(),
        });
        assert_eq!(run(&mut store, txn).result, Err(KvError::NotInTxn));
    }
    assert_eq!(store.compacted_revision(), 0);
}

#[test]
fn over_the_quota_writes_fail_raise_nospace_and_resume_after_compaction_and_deactivation() {
    // The key once, and three events of a 10-byte value.
    let quota = KEY_OVERHEAD_BYTES + 1 + 3 * (EVENT_OVERHEAD_BYTES + 10);
    let mut store = KvStore::new().with_quota_bytes(quota);
    for value in ["0123456789", "0123456789", "0123456789"] {
        assert!(run(&mut store, put("k", value)).result.is_ok());
    }
    let refused = run(&mut store, put("k", "0123456789"));
    assert!(matches!(refused.result, Err(KvError::NoSpace { .. })));
    assert!(store.nospace_alarm());
    assert_eq!(store.revision(), 4, "the refused put wrote nothing");
    // Even a small put is refused while the alarm is raised; compaction is not.
    assert!(matches!(
        run(&mut store, put("x", "")).result,
        Err(KvError::NoSpace { .. })
    ));
    assert_eq!(run(&mut store, compact(4)).result, Ok(OpResponse::Compact));
    assert!(store.nospace_alarm());
    let cleared = run(&mut store, Op::Alarm(AlarmAction::Deactivate));
    assert_eq!(
        cleared.result,
        Ok(OpResponse::Alarm {
            nospace: false,
            changed: true
        })
    );
    assert!(run(&mut store, put("k", "0123456789")).result.is_ok());
}

/// A store with history on both sides of a compaction, and sessions.
fn store_with_history() -> KvStore {
    let mut store = KvStore::with_max_sessions(8);
    let ops = [
        put("a", "1"),
        put("b", "1"),
        put("a", "2"),
        delete("b"),
        put("b", "2"),
        compact(4),
        put("c", "1"),
        delete("a"),
        put("c", "2"),
    ];
    for (seq, op) in (1..).zip(ops) {
        let slot = store.applied() + 1;
        store.execute(
            slot,
            &Command {
                client: 1 + seq % 3,
                seq,
                op,
            },
        );
    }
    store
}

#[test]
fn a_restored_snapshot_answers_every_retained_revision_alike() {
    let original = store_with_history();
    let mut restored = KvStore::with_max_sessions(8);
    restored.restore(&original.snapshot()).unwrap();
    assert_eq!(restored, original);
    for revision in 0..=original.revision() + 1 {
        assert_eq!(all_at(&restored, revision), all_at(&original, revision));
        assert_eq!(restored.changes_at(revision), original.changes_at(revision));
    }
    assert_eq!(restored.snapshot(), original.snapshot());
}

#[test]
fn a_snapshot_without_history_restores_as_compacted_at_its_revision() {
    #[derive(serde::Serialize)]
    struct LatestImage {
        applied: u64,
        revision: i64,
        keys: Vec<KeyValue>,
        sessions: Vec<u8>,
    }
    let kv = KeyValue {
        key: b("a"),
        value: b("1"),
        create_revision: 2,
        mod_revision: 3,
        version: 2,
        lease: 0,
    };
    let image = LatestImage {
        applied: 3,
        revision: 3,
        keys: vec![kv.clone()],
        sessions: Vec::new(),
    };
    let mut store = KvStore::new();
    store.restore(&crate::codec::encode(&image)).unwrap();
    assert_eq!((store.revision(), store.compacted_revision()), (3, 3));
    assert_eq!(all_at(&store, 3), Ok(vec![kv]));
    assert!(matches!(
        all_at(&store, 2),
        Err(KvError::RevisionCompacted { .. })
    ));
}

// ---- the reference model -------------------------------------------------------------------

/// The state copied whole at every revision: what "the store as of revision r" means, written
/// out longhand.
struct Reference {
    /// `states[r]` for every revision r from 1 (index 0 unused).
    states: Vec<BTreeMap<Bytes, KeyValue>>,
    compacted: i64,
}

impl Reference {
    fn new() -> Reference {
        Reference {
            states: vec![BTreeMap::new(), BTreeMap::new()],
            compacted: 0,
        }
    }

    fn revision(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    /// Applies the writes of one command (all at one revision); nothing if none wrote.
    fn write(&mut self, puts: &[(Bytes, Bytes)], deletes: &[Bytes]) {
        let revision = self.revision() + 1;
        let mut state = self.states.last().cloned().unwrap_or_default();
        let mut wrote = false;
        for key in deletes {
            wrote |= state.remove(key).is_some();
        }
        for (key, value) in puts {
            let kv = match state.get(key) {
                Some(previous) => KeyValue {
                    value: value.clone(),
                    mod_revision: revision,
                    version: previous.version + 1,
                    ..previous.clone()
                },
                None => KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: revision,
                    mod_revision: revision,
                    version: 1,
                    lease: 0,
                },
            };
            state.insert(key.clone(), kv);
            wrote = true;
        }
        if wrote {
            self.states.push(state);
        }
    }

    fn read(&self, revision: i64) -> Result<Vec<KeyValue>, KvError> {
        let current = self.revision();
        let at = if revision <= 0 { current } else { revision };
        if at > current {
            return Err(KvError::FutureRevision {
                requested: revision,
                current,
            });
        }
        if at < self.compacted {
            return Err(KvError::RevisionCompacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        Ok(self.states[at as usize].values().cloned().collect())
    }
}

#[derive(Clone, Debug)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    /// One txn: puts of the first keys, deletes of the second (disjoint).
    Txn(Vec<u8>, Vec<u8>),
    /// Compact at `current - back`.
    Compact(u8),
    Snapshot,
}

fn key(index: u8) -> Bytes {
    Bytes::from(format!("k{}", index % 5))
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..5, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..5).prop_map(Step::Delete),
        2 => (prop::collection::vec(0u8..3, 0..3), prop::collection::vec(3u8..5, 0..2))
            .prop_map(|(puts, deletes)| Step::Txn(puts, deletes)),
        1 => (0u8..6).prop_map(Step::Compact),
        1 => Just(Step::Snapshot),
    ]
}

fn run_step(store: &mut KvStore, reference: &mut Reference, step: &Step) {
    match step {
        Step::Put(k, v) => {
            let value = Bytes::from(vec![*v]);
            run(
                store,
                Op::Put(PutRequest {
                    key: key(*k),
                    value: value.clone(),
                    ..Default::default()
                }),
            );
            reference.write(&[(key(*k), value)], &[]);
        }
        Step::Delete(k) => {
            run(
                store,
                Op::DeleteRange(DeleteRangeRequest {
                    key: key(*k),
                    ..Default::default()
                }),
            );
            reference.write(&[], &[key(*k)]);
        }
        Step::Txn(puts, deletes) => {
            let mut puts: Vec<(Bytes, Bytes)> = puts.iter().map(|k| (key(*k), key(*k))).collect();
            puts.sort();
            puts.dedup();
            let deletes: Vec<Bytes> = deletes.iter().map(|k| key(*k)).collect();
            let mut success: Vec<Op> = deletes
                .iter()
                .map(|key| {
                    Op::DeleteRange(DeleteRangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    })
                })
                .collect();
            success.extend(puts.iter().map(|(key, value)| {
                Op::Put(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ..Default::default()
                })
            }));
            let txn = TxnRequest {
                compare: Vec::new(),
                success,
                failure: Vec::new(),
            };
            assert!(run(store, Op::Txn(txn)).result.is_ok());
            reference.write(&puts, &deletes);
        }
        Step::Compact(back) => {
            let revision = reference.revision() - i64::from(*back);
            let result = run(store, compact(revision)).result;
            if revision > reference.compacted {
                assert_eq!(result, Ok(OpResponse::Compact));
                reference.compacted = revision;
            } else {
                assert!(matches!(result, Err(KvError::RevisionCompacted { .. })));
            }
        }
        Step::Snapshot => {
            let mut restored = store.empty_like();
            restored.restore(&store.snapshot()).unwrap();
            assert_eq!(&restored, store);
            *store = restored;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn every_retained_revision_reads_as_the_reference_state(steps in prop::collection::vec(step(), 1..40)) {
        let mut store = KvStore::new();
        let mut reference = Reference::new();
        for step in &steps {
            run_step(&mut store, &mut reference, step);
            prop_assert_eq!(store.revision(), reference.revision());
            for revision in 0..=reference.revision() + 1 {
                prop_assert_eq!(all_at(&store, revision), reference.read(revision), "revision {}", revision);
            }
            let live = reference.read(0).unwrap();
            prop_assert_eq!(store.len(), live.len());
        }
    }
}
