//! Scenario tests of the KV store: revisions, ranges, transactions, sessions, snapshots and
//! hostile input.

use bytes::Bytes;

use crate::*;

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn put(key: &str, value: &str) -> Op {
    Op::Put(PutRequest {
        key: b(key),
        value: b(value),
        ..PutRequest::default()
    })
}

fn get(key: &str) -> Op {
    Op::Range(RangeRequest {
        key: b(key),
        ..RangeRequest::default()
    })
}

fn delete(key: &str, range_end: &str) -> Op {
    Op::DeleteRange(DeleteRangeRequest {
        key: b(key),
        range_end: b(range_end),
        prev_kv: true,
    })
}

fn txn(compare: Vec<Compare>, success: Vec<Op>, failure: Vec<Op>) -> Op {
    Op::Txn(TxnRequest {
        compare,
        success,
        failure,
    })
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult) -> Compare {
    Compare {
        key: b(key),
        range_end: Bytes::new(),
        target,
        result,
    }
}

/// Runs `op` outside any session at the next slot.
fn run(store: &mut KvStore, op: Op) -> Response {
    let slot = store.applied() + 1;
    store.execute(slot, &Command::unsessioned(op))
}

fn ok(response: Response) -> OpResponse {
    match response.result {
        Ok(op) => op,
        Err(error) => panic!("expected success, got {error}"),
    }
}

fn range_of(store: &KvStore, request: RangeRequest) -> RangeResponse {
    match ok(store.read(&request)) {
        OpResponse::Range(range) => range,
        other => panic!("expected a range response, got {other:?}"),
    }
}

fn keys(range: &RangeResponse) -> Vec<&[u8]> {
    range.kvs.iter().map(|kv| kv.key.as_ref()).collect()
}

fn txn_response(response: Response) -> TxnResponse {
    match ok(response) {
        OpResponse::Txn(txn) => txn,
        other => panic!("expected a txn response, got {other:?}"),
    }
}

// ---- revisions -----------------------------------------------------------------------------

#[test]
fn empty_store_is_at_revision_one_and_first_put_creates_at_two() {
    let mut store = KvStore::new();
    assert_eq!(store.revision(), 1);
    assert!(store.is_empty());
    let response = run(&mut store, put("a", "1"));
    assert_eq!(response.revision, 2);
    let kv = store.get(b"a").unwrap();
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version, kv.lease),
        (2, 2, 1, 0)
    );
}

#[test]
fn every_put_bumps_the_revision_and_the_key_version() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "1"));
    run(&mut store, put("b", "1"));
    let response = run(&mut store, put("a", "2"));
    assert_eq!(response.revision, 4);
    let a = store.get(b"a").unwrap();
    assert_eq!(
        (
            a.value.as_ref(),
            a.create_revision,
            a.mod_revision,
            a.version
        ),
        (&b"2"[..], 2, 4, 2)
    );
    assert_eq!(store.get(b"b").unwrap().mod_revision, 3);
}

#[test]
fn delete_of_nothing_keeps_the_revision_and_delete_of_something_bumps_it_once() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "1"));
    run(&mut store, put("b", "1"));
    let missing = run(&mut store, delete("zzz", ""));
    assert_eq!(missing.revision, 3);
    assert_eq!(
        ok(missing),
        OpResponse::DeleteRange(DeleteRangeResponse::default())
    );
    // Two keys deleted by one request: one revision.
    let both = run(&mut store, delete("a", "c"));
    assert_eq!(both.revision, 4);
    match ok(both) {
        OpResponse::DeleteRange(deleted) => {
            assert_eq!(deleted.deleted, 2);
            assert_eq!(deleted.prev_kvs[0].key, b("a"));
            assert_eq!(deleted.prev_kvs[1].key, b("b"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(store.is_empty());
}

#[test]
fn a_key_recreated_after_delete_gets_a_new_create_revision_and_version_one() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "1"));
    run(&mut store, put("a", "2"));
    run(&mut store, delete("a", ""));
    let response = run(&mut store, put("a", "3"));
    assert_eq!(response.revision, 5);
    let kv = store.get(b"a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
}

#[test]
fn reads_do_not_change_the_revision() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "1"));
    assert_eq!(run(&mut store, get("a")).revision, 2);
    let read_only_txn = txn(vec![], vec![get("a"), get("b")], vec![]);
    assert_eq!(run(&mut store, read_only_txn).revision, 2);
    assert_eq!(store.read(&RangeRequest::default()).revision, 2);
    assert_eq!(store.revision(), 2);
}

#[test]
fn all_writes_of_one_txn_share_one_revision() {
    let mut store = KvStore::new();
    run(&mut store, put("gone", "x"));
    let response = run(
        &mut store,
        txn(
            vec![],
            vec![put("a", "1"), put("b", "1"), delete("gone", "")],
            vec![],
        ),
    );
    assert_eq!(response.revision, 3);
    assert_eq!(store.get(b"a").unwrap().mod_revision, 3);
    assert_eq!(store.get(b"b").unwrap().mod_revision, 3);
    assert!(store.get(b"gone").is_none());
    // A txn whose only write deletes nothing performs no write.
    let idle = run(&mut store, txn(vec![], vec![delete("nothing", "")], vec![]));
    assert_eq!(idle.revision, 3);
}

#[test]
fn ops_later_in_a_txn_see_earlier_writes() {
    let mut store = KvStore::new();
    let response = run(
        &mut store,
        txn(
            vec![],
            vec![
                put("a", "1"),
                get("a"),
                txn(
                    vec![cmp("a", CompareTarget::Value(b("1")), CompareResult::Equal)],
                    vec![put("b", "seen")],
                    vec![],
                ),
            ],
            vec![],
        ),
    );
    let txn = txn_response(response);
    match &txn.responses[1] {
        OpResponse::Range(range) => {
            assert_eq!(range.kvs[0].value, b("1"));
            assert_eq!(range.kvs[0].mod_revision, 2);
        }
        other => panic!("unexpected {other:?}"),
    }
    match &txn.responses[2] {
        OpResponse::Txn(inner) => assert!(inner.succeeded),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(store.get(b"b").unwrap().mod_revision, 2);
}

// ---- ranges --------------------------------------------------------------------------------

fn store_with(keys: &[&str]) -> KvStore {
    let mut store = KvStore::new();
    for key in keys {
        run(&mut store, put(key, &format!("v-{key}")));
    }
    store
}

#[test]
fn range_with_empty_range_end_reads_one_key() {
    let store = store_with(&["a", "ab", "b"]);
    let range = range_of(
        &store,
        RangeRequest {
            key: b("a"),
            ..RangeRequest::default()
        },
    );
    assert_eq!(keys(&range), vec![b"a"]);
    assert_eq!(range.kvs[0].value, b("v-a"));
    assert_eq!((range.count, range.more), (1, false));
    let missing = range_of(
        &store,
        RangeRequest {
            key: b("zz"),
            ..RangeRequest::default()
        },
    );
    assert_eq!((missing.kvs.len(), missing.count), (0, 0));
}

#[test]
fn range_end_gives_a_half_open_interval_such_as_a_prefix() {
    let store = store_with(&["app", "apple", "apq", "b", "ap"]);
    // Prefix "ap": range_end is the prefix with its last byte incremented.
    let prefix = range_of(
        &store,
        RangeRequest {
            key: b("ap"),
            range_end: b("aq"),
            ..RangeRequest::default()
        },
    );
    assert_eq!(keys(&prefix), vec![&b"ap"[..], b"app", b"apple", b"apq"]);
    let half_open = range_of(
        &store,
        RangeRequest {
            key: b("app"),
            range_end: b("apq"),
            ..RangeRequest::default()
        },
    );
    assert_eq!(keys(&half_open), vec![&b"app"[..], b"apple"]);
    // range_end before key selects nothing (and must not panic).
    let backwards = range_of(
        &store,
        RangeRequest {
            key: b("b"),
            range_end: b("a"),
            ..RangeRequest::default()
        },
    );
    assert_eq!(backwards.count, 0);
}

#[test]
fn range_end_nul_reads_every_key_from_key_on() {
    let store = store_with(&["a", "b", "c"]);
    let from_b = range_of(
        &store,
        RangeRequest {
            key: b("b"),
            range_end: Bytes::from_static(b"\0"),
            ..RangeRequest::default()
        },
    );
    assert_eq!(keys(&from_b), vec![&b"b"[..], b"c"]);
    let everything = range_of(
        &store,
        RangeRequest {
            key: Bytes::from_static(b"\0"),
            range_end: Bytes::from_static(b"\0"),
            ..RangeRequest::default()
        },
    );
    assert_eq!(everything.count, 3);
}

#[test]
fn limit_truncates_and_reports_more_while_count_stays_total() {
    let store = store_with(&["a", "b", "c", "d"]);
    let all = |limit| RangeRequest {
        key: b("a"),
        range_end: Bytes::from_static(b"\0"),
        limit,
        ..RangeRequest::default()
    };
    let two = range_of(&store, all(2));
    assert_eq!(keys(&two), vec![&b"a"[..], b"b"]);
    assert_eq!((two.more, two.count), (true, 4));
    let exact = range_of(&store, all(4));
    assert_eq!((exact.kvs.len(), exact.more, exact.count), (4, false, 4));
    let unlimited = range_of(&store, all(0));
    assert_eq!((unlimited.kvs.len(), unlimited.more), (4, false));
}

#[test]
fn keys_only_omits_values_and_count_only_omits_kvs() {
    let store = store_with(&["a", "b"]);
    let keys_only = range_of(
        &store,
        RangeRequest {
            key: b("a"),
            range_end: b("z"),
            keys_only: true,
            ..RangeRequest::default()
        },
    );
    assert_eq!(keys(&keys_only), vec![&b"a"[..], b"b"]);
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
    assert_eq!(keys_only.kvs[0].version, 1);
    let count_only = range_of(
        &store,
        RangeRequest {
            key: b("a"),
            range_end: b("z"),
            count_only: true,
            limit: 1,
            ..RangeRequest::default()
        },
    );
    assert_eq!(
        count_only,
        RangeResponse {
            kvs: vec![],
            more: false,
            count: 2
        }
    );
}

#[test]
fn range_at_an_older_revision_reads_history_and_a_later_one_is_future() {
    let store = store_with(&["a", "b"]);
    let at = |revision| {
        store
            .read(&RangeRequest {
                key: b("a"),
                range_end: b("z"),
                revision,
                ..RangeRequest::default()
            })
            .result
            .map(|result| match result {
                OpResponse::Range(range) => range.count,
                other => panic!("unexpected {other:?}"),
            })
    };
    assert_eq!((at(0), at(3), at(2), at(1)), (Ok(2), Ok(2), Ok(1), Ok(0)));
    assert_eq!(
        at(4),
        Err(KvError::FutureRevision {
            requested: 4,
            current: 3
        })
    );
}

#[test]
fn empty_keys_are_rejected_without_a_revision_change() {
    let mut store = KvStore::new();
    assert_eq!(run(&mut store, put("", "x")).result, Err(KvError::EmptyKey));
    assert_eq!(run(&mut store, get("")).result, Err(KvError::EmptyKey));
    assert_eq!(
        run(&mut store, delete("", "")).result,
        Err(KvError::EmptyKey)
    );
    assert_eq!(store.revision(), 1);
}

// ---- puts ----------------------------------------------------------------------------------

#[test]
fn put_returns_prev_kv_and_ignore_flags_keep_value_and_lease() {
    let mut store = KvStore::new();
    for id in [5, 77] {
        let grant = Op::LeaseGrant(LeaseGrantRequest { id, ttl: 60 });
        run(&mut store, grant).result.unwrap();
    }
    let leased = Op::Put(PutRequest {
        key: b("a"),
        value: b("1"),
        lease: 77,
        ..PutRequest::default()
    });
    run(&mut store, leased);
    let keep_value = Op::Put(PutRequest {
        key: b("a"),
        ignore_value: true,
        lease: 5,
        prev_kv: true,
        ..PutRequest::default()
    });
    match ok(run(&mut store, keep_value)) {
        OpResponse::Put(put) => {
            let prev = put.prev_kv.unwrap();
            assert_eq!(
                (prev.value.as_ref(), prev.lease, prev.version),
                (&b"1"[..], 77, 1)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let a = store.get(b"a").unwrap();
    assert_eq!((a.value.as_ref(), a.lease, a.version), (&b"1"[..], 5, 2));
    let keep_lease = Op::Put(PutRequest {
        key: b("a"),
        value: b("2"),
        ignore_lease: true,
        ..PutRequest::default()
    });
    run(&mut store, keep_lease);
    let a = store.get(b"a").unwrap();
    assert_eq!((a.value.as_ref(), a.lease), (&b"2"[..], 5));
}

#[test]
fn ignore_value_on_a_missing_key_fails_and_writes_nothing() {
    let mut store = KvStore::new();
    let request = Op::Put(PutRequest {
        key: b("a"),
        ignore_value: true,
        ..PutRequest::default()
    });
    let response = run(&mut store, request);
    assert_eq!(response.result, Err(KvError::KeyNotFound(b("a"))));
    assert_eq!((response.revision, store.len()), (1, 0));
    let with_value = Op::Put(PutRequest {
        key: b("a"),
        value: b("v"),
        ignore_value: true,
        ..PutRequest::default()
    });
    assert_eq!(
        run(&mut store, with_value).result,
        Err(KvError::ValueProvided)
    );
}

#[test]
fn a_txn_failing_part_way_rolls_back_its_earlier_writes() {
    let mut store = store_with(&["keep"]);
    let before = store.clone();
    let response = run(
        &mut store,
        txn(
            vec![],
            vec![
                put("new", "1"),
                put("keep", "changed"),
                Op::Put(PutRequest {
                    key: b("missing"),
                    ignore_lease: true,
                    ..PutRequest::default()
                }),
            ],
            vec![],
        ),
    );
    assert_eq!(response.result, Err(KvError::KeyNotFound(b("missing"))));
    assert_eq!(response.revision, 2);
    assert_eq!(store.get(b"keep"), before.get(b"keep"));
    assert!(store.get(b"new").is_none());
}

// ---- transactions --------------------------------------------------------------------------

#[test]
fn compares_on_every_target_of_an_existing_key() {
    let mut store = KvStore::new();
    let grant = Op::LeaseGrant(LeaseGrantRequest { id: 9, ttl: 60 });
    run(&mut store, grant).result.unwrap(); // not a write: still revision 1
    run(&mut store, put("other", "x")); // revision 2
    run(
        &mut store,
        Op::Put(PutRequest {
            key: b("k"),
            value: b("m"),
            lease: 9,
            ..PutRequest::default()
        }),
    ); // k created at 3
    let keep_lease = Op::Put(PutRequest {
        key: b("k"),
        value: b("m"),
        ignore_lease: true,
        ..PutRequest::default()
    });
    run(&mut store, keep_lease); // k modified at 4, version 2
    use CompareResult::*;
    use CompareTarget::*;
    let cases = [
        (Version(2), Equal, true),
        (Version(1), Greater, true),
        (Version(3), Less, true),
        (Version(2), NotEqual, false),
        (CreateRevision(3), Equal, true),
        (CreateRevision(4), Less, true),
        (CreateRevision(3), Greater, false),
        (ModRevision(4), Equal, true),
        (ModRevision(3), Greater, true),
        (ModRevision(5), NotEqual, true),
        (Value(b("m")), Equal, true),
        (Value(b("a")), Greater, true),
        (Value(b("z")), Less, true),
        (Value(b("m")), NotEqual, false),
        (Lease(9), Equal, true),
        (Lease(0), Greater, true),
        (Lease(9), Less, false),
    ];
    for (target, result, expected) in cases {
        let op = txn(vec![cmp("k", target.clone(), result)], vec![], vec![]);
        let outcome = txn_response(run(&mut store, op)).succeeded;
        assert_eq!(outcome, expected, "compare {target:?} {result:?}");
    }
}

#[test]
fn compares_on_a_missing_key_use_zero_and_only_value_not_equal_holds() {
    let mut store = KvStore::new();
    use CompareResult::*;
    use CompareTarget::*;
    let cases = [
        (Version(0), Equal, true),
        (Version(1), Less, true),
        (CreateRevision(0), Equal, true),
        (ModRevision(0), Equal, true),
        (ModRevision(0), Greater, false),
        (Lease(0), Equal, true),
        (Value(Bytes::new()), Equal, false),
        (Value(b("x")), Less, false),
        (Value(b("x")), Greater, false),
        (Value(b("x")), NotEqual, false),
    ];
    for (target, result, expected) in cases {
        let op = txn(vec![cmp("absent", target.clone(), result)], vec![], vec![]);
        let outcome = txn_response(run(&mut store, op)).succeeded;
        assert_eq!(outcome, expected, "compare {target:?} {result:?}");
    }
}

#[test]
fn a_compare_over_a_range_needs_every_key_to_hold() {
    let mut store = store_with(&["p/a", "p/b"]);
    let on_prefix = |version| Compare {
        key: b("p/"),
        range_end: b("p0"),
        target: CompareTarget::Version(version),
        result: CompareResult::Equal,
    };
    assert!(txn_response(run(&mut store, txn(vec![on_prefix(1)], vec![], vec![]))).succeeded);
    run(&mut store, put("p/b", "again"));
    assert!(!txn_response(run(&mut store, txn(vec![on_prefix(1)], vec![], vec![]))).succeeded);
}

#[test]
fn compare_and_swap_succeeds_on_the_expected_value_and_fails_otherwise() {
    let mut store = store_with(&["x"]);
    let cas = |expected: &str, new: &str| {
        txn(
            vec![cmp(
                "x",
                CompareTarget::Value(b(expected)),
                CompareResult::Equal,
            )],
            vec![put("x", new)],
            vec![get("x")],
        )
    };
    let swapped = run(&mut store, cas("v-x", "second"));
    assert_eq!(swapped.revision, 3);
    let swapped = txn_response(swapped);
    assert!(swapped.succeeded);
    assert_eq!(
        swapped.responses,
        vec![OpResponse::Put(PutResponse { prev_kv: None })]
    );
    assert_eq!(store.get(b"x").unwrap().value, b("second"));

    let refused = run(&mut store, cas("v-x", "third"));
    assert_eq!(refused.revision, 3, "a failed CAS writes nothing");
    let refused = txn_response(refused);
    assert!(!refused.succeeded);
    match &refused.responses[0] {
        OpResponse::Range(range) => assert_eq!(range.kvs[0].value, b("second")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(store.get(b"x").unwrap().value, b("second"));
}

#[test]
fn a_txn_writing_the_same_key_twice_is_rejected_before_it_runs() {
    let mut store = store_with(&["a"]);
    let twice = txn(vec![], vec![put("a", "1"), put("a", "2")], vec![]);
    assert_eq!(
        run(&mut store, twice).result,
        Err(KvError::DuplicateKeyInTxn(b("a")))
    );
    let put_and_delete = txn(vec![], vec![], vec![delete("a", "b"), put("a", "1")]);
    assert_eq!(
        run(&mut store, put_and_delete).result,
        Err(KvError::DuplicateKeyInTxn(b("a")))
    );
    let nested = txn(
        vec![],
        vec![put("z", "1"), txn(vec![], vec![put("z", "2")], vec![])],
        vec![],
    );
    assert_eq!(
        run(&mut store, nested).result,
        Err(KvError::DuplicateKeyInTxn(b("z")))
    );
    assert_eq!((store.revision(), store.get(b"a").unwrap().version), (2, 1));
}

#[test]
fn txn_branches_may_each_write_a_key_once() {
    let mut store = KvStore::new();
    // Success and failure never both run, and neither do a nested txn's two branches.
    let either = txn(
        vec![],
        vec![
            put("a", "then"),
            txn(vec![], vec![put("b", "1")], vec![put("b", "2")]),
        ],
        vec![put("a", "else")],
    );
    let response = run(&mut store, either);
    assert!(txn_response(response).succeeded);
    assert_eq!(store.get(b"b").unwrap().value, b("1"));
    // Overlapping deletes are fine too (etcd allows them).
    let deletes = txn(vec![], vec![delete("a", "c"), delete("b", "")], vec![]);
    assert!(run(&mut store, deletes).result.is_ok());
    assert!(store.is_empty());
}

#[test]
fn oversized_and_overdeep_txns_are_rejected() {
    let mut store = KvStore::new();
    let ops = (0..=MAX_TXN_OPS)
        .map(|i| put(&format!("k{i}"), "v"))
        .collect();
    let response = run(&mut store, txn(vec![], ops, vec![]));
    assert_eq!(
        response.result,
        Err(KvError::TooManyOps {
            count: MAX_TXN_OPS + 1,
            max: MAX_TXN_OPS
        })
    );
    let mut deep = put("leaf", "v");
    for _ in 0..=MAX_TXN_DEPTH {
        deep = txn(vec![], vec![deep], vec![]);
    }
    let response = run(&mut store, deep);
    assert_eq!(
        response.result,
        Err(KvError::TxnTooDeep { max: MAX_TXN_DEPTH })
    );
    assert!(store.is_empty());
}

// ---- sessions ------------------------------------------------------------------------------

fn sessioned(client: u64, seq: u64, op: Op) -> Command {
    Command { client, seq, op }
}

#[test]
fn a_retried_write_applies_exactly_once() {
    let mut store = KvStore::new();
    let increment = sessioned(
        7,
        1,
        txn(
            vec![cmp("n", CompareTarget::Version(0), CompareResult::Equal)],
            vec![put("n", "1")],
            vec![put("n", "later")],
        ),
    );
    let first = store.execute(1, &increment);
    // The client timed out and resent; both copies were chosen, in later slots.
    let retry = store.execute(2, &increment);
    let retry_again = StateMachine::apply(&mut store, 3, &increment.encode());
    assert_eq!(first, retry);
    assert_eq!(Response::decode(&retry_again).unwrap(), first);
    assert_eq!(store.revision(), 2);
    let n = store.get(b"n").unwrap();
    assert_eq!((n.value.as_ref(), n.version), (&b"1"[..], 1));
}

#[test]
fn an_older_sequence_is_stale_and_changes_nothing() {
    let mut store = KvStore::new();
    store.execute(1, &sessioned(3, 5, put("a", "5")));
    let before = store.clone();
    let stale = store.execute(2, &sessioned(3, 4, put("a", "4")));
    assert_eq!(
        stale.result,
        Err(KvError::StaleSequence {
            client: 3,
            seq: 4,
            last: 5
        })
    );
    assert_eq!(store.get(b"a"), before.get(b"a"));
    assert_eq!(store.session_seq(3), Some(5));
    // A newer sequence applies and becomes the one kept.
    store.execute(3, &sessioned(3, 9, put("a", "9")));
    assert_eq!(store.session_seq(3), Some(9));
    assert_eq!(store.get(b"a").unwrap().value, b("9"));
}

#[test]
fn client_zero_is_never_deduplicated() {
    let mut store = KvStore::new();
    let command = sessioned(0, 1, put("a", "x"));
    store.execute(1, &command);
    store.execute(2, &command);
    assert_eq!(store.get(b"a").unwrap().version, 2);
    assert_eq!(store.session_count(), 0);
}

#[test]
fn a_full_session_table_evicts_the_longest_idle_client_lowest_id_first() {
    let mut store = KvStore::with_max_sessions(3);
    store.execute(1, &sessioned(30, 1, put("a", "1")));
    store.execute(1, &sessioned(10, 1, put("b", "1"))); // same slot as client 30
    store.execute(2, &sessioned(20, 1, put("c", "1")));
    store.execute(3, &sessioned(30, 2, put("a", "2"))); // client 30 is fresh again
    assert_eq!(store.session_count(), 3);
    // A fourth client evicts client 10 (slot 1), the idlest.
    store.execute(4, &sessioned(40, 1, put("d", "1")));
    assert_eq!(store.session_count(), 3);
    assert_eq!(store.session_seq(10), None);
    assert_eq!(
        (
            store.session_seq(20),
            store.session_seq(30),
            store.session_seq(40)
        ),
        (Some(1), Some(2), Some(1))
    );
    // Next: client 20 (slot 2).
    store.execute(5, &sessioned(50, 1, put("e", "1")));
    assert_eq!(store.session_seq(20), None);
    // Ties on the slot go to the lower client id.
    let mut tied = KvStore::with_max_sessions(2);
    tied.execute(1, &sessioned(9, 1, put("a", "1")));
    tied.execute(1, &sessioned(4, 1, put("b", "1")));
    tied.execute(2, &sessioned(6, 1, put("c", "1")));
    assert_eq!((tied.session_seq(4), tied.session_seq(9)), (None, Some(1)));
    // An evicted client's retry applies again: the documented price of a bounded table.
    let version = store.get(b"b").unwrap().version;
    store.execute(6, &sessioned(10, 1, put("b", "1")));
    assert_eq!(store.get(b"b").unwrap().version, version + 1);
}

#[test]
fn a_store_with_no_session_room_applies_every_copy() {
    let mut store = KvStore::with_max_sessions(0);
    let command = sessioned(5, 1, put("a", "x"));
    store.execute(1, &command);
    store.execute(2, &command);
    assert_eq!(
        (store.session_count(), store.get(b"a").unwrap().version),
        (0, 2)
    );
}

#[test]
fn failed_commands_are_remembered_too() {
    let mut store = KvStore::new();
    let bad = sessioned(1, 1, put("", "x"));
    let first = store.execute(1, &bad);
    assert_eq!(first.result, Err(KvError::EmptyKey));
    assert_eq!(store.execute(2, &bad), first);
    assert_eq!(store.session_seq(1), Some(1));
}

#[test]
fn a_slot_older_than_the_applied_one_is_refused() {
    let mut store = KvStore::new();
    store.execute(5, &sessioned(1, 1, put("a", "1")));
    store.execute(5, &sessioned(1, 2, put("b", "1"))); // several commands per slot are fine
    let before = store.clone();
    let response = store.execute(4, &sessioned(1, 3, put("c", "1")));
    assert_eq!(
        response.result,
        Err(KvError::SlotRegression {
            slot: 4,
            applied: 5
        })
    );
    assert_eq!(store, before);
}

// ---- snapshots -----------------------------------------------------------------------------

/// A store with keys, a deletion and sessions, and the commands to continue it with.
fn busy_store() -> (KvStore, Vec<Command>) {
    let mut store = KvStore::with_max_sessions(4);
    for (slot, client) in (1..=6).zip([1, 2, 3, 1, 5, 6]) {
        let key = format!("k{slot}");
        store.execute(slot, &sessioned(client, slot, put(&key, "v")));
    }
    store.execute(7, &Command::unsessioned(delete("k2", "")));
    let next = vec![
        sessioned(6, 6, put("k6", "retry")), // a retry: must not apply
        sessioned(1, 3, put("k1", "stale")), // stale
        sessioned(2, 9, put("k1", "new")),   // client 2 was evicted: fresh
        sessioned(9, 1, delete("k", "l")),
        Command::unsessioned(txn(
            vec![cmp("k3", CompareTarget::Version(0), CompareResult::Equal)],
            vec![put("empty", "1")],
            vec![put("full", "1")],
        )),
    ];
    (store, next)
}

#[test]
fn a_restored_snapshot_behaves_exactly_like_the_original() {
    let (mut original, next) = busy_store();
    let snapshot = original.snapshot();
    let mut restored = KvStore::with_max_sessions(4);
    restored.restore(&snapshot).unwrap();
    assert_eq!(restored, original);
    assert_eq!(restored.snapshot(), snapshot);
    assert_eq!(restored.applied(), 7);
    for (slot, command) in (8..).zip(&next) {
        let bytes = command.encode();
        assert_eq!(restored.apply(slot, &bytes), original.apply(slot, &bytes));
    }
    assert_eq!(restored, original);
    assert_eq!(restored.snapshot(), original.snapshot());
}

#[test]
fn restoring_into_a_smaller_session_table_keeps_the_newest_sessions() {
    let (original, _) = busy_store();
    let mut small = KvStore::with_max_sessions(2);
    small.restore(&original.snapshot()).unwrap();
    assert_eq!(small.session_count(), 2);
    assert_eq!(
        (small.session_seq(5), small.session_seq(6)),
        (Some(5), Some(6))
    );
    assert_eq!(small.revision(), original.revision());
}

#[test]
fn bad_snapshots_are_refused_and_change_nothing() {
    let (mut store, _) = busy_store();
    let before = store.clone();
    let good = store.snapshot();
    let mut wrong_version = good.to_vec();
    wrong_version[0] = 4;
    assert_eq!(store.restore(&[]), Err(SnapshotError::Empty));
    assert_eq!(
        store.restore(&wrong_version),
        Err(SnapshotError::UnknownVersion(4))
    );
    for cut in 1..good.len() {
        assert!(store.restore(&good[..cut]).is_err(), "truncated at {cut}");
    }
    let mut trailing = good.to_vec();
    trailing.push(0);
    assert!(matches!(
        store.restore(&trailing),
        Err(SnapshotError::Malformed(_))
    ));
    // Decodes, but a key claims a revision beyond the store's.
    let mut broken = KvStore::new();
    run(&mut broken, put("a", "1"));
    let mut image = broken.snapshot().to_vec();
    // Layout: version, applied (varint 1), revision (zigzag varint 2 -> 4).
    assert_eq!(&image[..3], &[SNAPSHOT_FORMAT_VERSION, 1, 4]);
    image[2] = 2; // revision 1
    assert!(matches!(
        store.restore(&image),
        Err(SnapshotError::Inconsistent(_))
    ));
    assert_eq!(store, before);
}

// ---- hostile input -------------------------------------------------------------------------

#[test]
fn commands_and_responses_round_trip_through_their_encoding() {
    let command = sessioned(
        u64::MAX,
        42,
        txn(
            vec![cmp(
                "a",
                CompareTarget::Value(b("v")),
                CompareResult::NotEqual,
            )],
            vec![put("a", "v"), get("a"), delete("b", "\0")],
            vec![txn(vec![], vec![], vec![])],
        ),
    );
    let bytes = command.encode();
    assert_eq!(bytes[0], FORMAT_VERSION);
    assert_eq!(Command::decode(&bytes), Ok(command));
    let mut store = KvStore::new();
    let response = run(&mut store, put("a", "v"));
    assert_eq!(Response::decode(&response.encode()), Ok(response));
    let error = Response {
        revision: 9,
        result: Err(KvError::StaleSequence {
            client: 1,
            seq: 2,
            last: 3,
        }),
    };
    assert_eq!(Response::decode(&error.encode()), Ok(error));
}

#[test]
fn malformed_truncated_or_foreign_version_bytes_are_clear_errors() {
    let bytes = sessioned(1, 1, put("key", "value")).encode();
    for cut in 0..bytes.len() {
        assert!(
            matches!(Command::decode(&bytes[..cut]), Err(KvError::Malformed(_))),
            "truncated at {cut}"
        );
    }
    let mut future = bytes.to_vec();
    future[0] = 7;
    match Command::decode(&future) {
        Err(KvError::Malformed(message)) => {
            assert!(
                message.contains("unsupported format version 7"),
                "{message}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut trailing = bytes.to_vec();
    trailing.push(1);
    assert!(matches!(
        Command::decode(&trailing),
        Err(KvError::Malformed(_))
    ));
    assert!(matches!(
        Response::decode(&[FORMAT_VERSION, 0xff]),
        Err(KvError::Malformed(_))
    ));
}

#[test]
fn a_huge_length_prefix_is_refused_without_allocating_it() {
    // Version, client 1, seq 1, Op::Put, then a key claiming u64::MAX - 1 bytes.
    let mut hostile = vec![FORMAT_VERSION, 1, 1, 1, 0xfd];
    hostile.extend_from_slice(&(u64::MAX - 1).to_le_bytes());
    assert!(matches!(
        Command::decode(&hostile),
        Err(KvError::Malformed(_))
    ));
    // Same for a vector of compares inside a txn.
    let mut hostile = vec![FORMAT_VERSION, 1, 1, 3, 0xfd];
    hostile.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(
        Command::decode(&hostile),
        Err(KvError::Malformed(_))
    ));
}

#[test]
fn deeply_nested_txn_bytes_are_refused_instead_of_overflowing_the_stack() {
    // Op::Txn, no compares, one success op, repeated: each level is 3 bytes.
    let levels = 100_000;
    let mut hostile = vec![FORMAT_VERSION, 0, 0];
    for _ in 0..levels {
        hostile.extend_from_slice(&[3, 0, 1]);
    }
    match Command::decode(&hostile) {
        Err(KvError::Malformed(message)) => assert!(message.contains("nested"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    // The deepest nesting allowed still decodes.
    let mut deepest = put("k", "v");
    for _ in 1..MAX_TXN_DEPTH {
        deepest = txn(vec![], vec![deepest], vec![]);
    }
    let deepest = txn(vec![], vec![deepest], vec![]);
    let bytes = Command::unsessioned(deepest.clone()).encode();
    assert_eq!(
        Command::decode(&bytes).map(|command| command.op),
        Ok(deepest)
    );
}

#[test]
fn apply_answers_bad_bytes_with_an_error_and_changes_no_data() {
    let (mut store, _) = busy_store();
    let before = store.clone();
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![FORMAT_VERSION],
        vec![FORMAT_VERSION, 0xff, 0xff, 0xff],
        b"hello world".to_vec(),
        sessioned(1, 99, put("a", "b")).encode()[..6].to_vec(),
    ];
    for (slot, input) in (8..).zip(&inputs) {
        let response = Response::decode(&store.apply(slot, input)).unwrap();
        assert!(
            matches!(response.result, Err(KvError::Malformed(_))),
            "{input:?}"
        );
        assert_eq!(response.revision, before.revision());
    }
    // Only the applied slot moved: the slots were consumed.
    assert_eq!(store.applied(), 8 + inputs.len() as u64 - 1);
    let mut expected = before.clone();
    expected.execute(store.applied(), &Command::unsessioned(get("x")));
    assert_eq!(store, expected);
}

#[test]
fn snapshots_of_format_two_still_restore_without_members_alarms_or_leases() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "1"));
    run(&mut store, put("b", "2"));
    let image = store.snapshot().to_vec();
    // Layout: version, applied (1 byte), revision (1), compacted (1), nospace (1), then the
    // alarms' count (0), which format 2 does not have; at the end the leases' count (0),
    // the lease epoch (round 0, node 0) and the grant count (0), which it has not either.
    assert_eq!(image[5], 0);
    assert_eq!(image[image.len() - 4..], [0, 0, 0, 0]);
    let mut format_two = image[..5].to_vec();
    format_two[0] = 2;
    format_two.extend_from_slice(&image[6..image.len() - 4]);
    let mut restored = KvStore::new();
    restored.restore(&format_two).unwrap();
    assert_eq!(restored, store);
}

#[test]
fn a_corrupt_alarm_refuses_writes_but_not_reads_until_deactivated() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "1"));
    let corrupt = |action| {
        Op::MemberAlarm(AlarmRequest {
            action,
            member_id: 3,
            alarm: AlarmKind::Corrupt,
        })
    };
    let raised = run(&mut store, corrupt(AlarmAction::Activate));
    assert_eq!(
        raised.result,
        Ok(OpResponse::Alarm {
            nospace: false,
            changed: true
        })
    );
    assert_eq!(store.member_alarms(), [(3, AlarmKind::Corrupt)]);
    let compact = Op::Compact(CompactRequest {
        revision: 2,
        physical: false,
    });
    for write in [put("b", "1"), delete("a", ""), compact] {
        assert_eq!(run(&mut store, write).result, Err(KvError::Corrupt));
    }
    assert!(store.get(b"a").is_some());
    assert!(store
        .read(&RangeRequest {
            key: b("a"),
            ..RangeRequest::default()
        })
        .result
        .is_ok());
    assert_eq!(store.revision(), 2);
    run(&mut store, corrupt(AlarmAction::Deactivate));
    assert!(run(&mut store, put("b", "1")).result.is_ok());
}

#[test]
fn members_alarms_are_kept_per_member_and_nospace_refuses_puts() {
    let mut store = KvStore::new();
    let nospace = |action, member_id| {
        Op::MemberAlarm(AlarmRequest {
            action,
            member_id,
            alarm: AlarmKind::Nospace,
        })
    };
    for member in [0, 5] {
        let raised = run(&mut store, nospace(AlarmAction::Activate, member));
        assert!(matches!(
            raised.result,
            Ok(OpResponse::Alarm { changed: true, .. })
        ));
    }
    let again = run(&mut store, nospace(AlarmAction::Activate, 5));
    assert!(matches!(
        again.result,
        Ok(OpResponse::Alarm { changed: false, .. })
    ));
    assert_eq!(
        store.member_alarms(),
        [(0, AlarmKind::Nospace), (5, AlarmKind::Nospace)]
    );
    assert!(matches!(
        run(&mut store, put("a", "1")).result,
        Err(KvError::NoSpace { .. })
    ));
    run(&mut store, nospace(AlarmAction::Deactivate, 0));
    assert!(store.nospace_alarm(), "member 5's alarm is still raised");
    run(&mut store, nospace(AlarmAction::Deactivate, 5));
    assert!(!store.nospace_alarm());
    assert!(run(&mut store, put("a", "1")).result.is_ok());
    let mut restored = KvStore::new();
    run(&mut store, nospace(AlarmAction::Activate, 5));
    restored.restore(&store.snapshot()).unwrap();
    assert_eq!(restored.member_alarms(), [(5, AlarmKind::Nospace)]);
}
