//! Leases in the store (grant, attach, revoke, expire under an epoch, snapshots) and the
//! lessor's decisions (promotion, keep-alives, expiry, demotion).

use bytes::Bytes;

use crate::test_support::*;
use crate::*;

const SECOND: u64 = 1_000_000_000;

fn grant(id: i64, ttl: i64) -> Op {
    Op::LeaseGrant(LeaseGrantRequest { id, ttl })
}

fn put_with_lease(key: &str, value: &str, lease: i64) -> Op {
    Op::Put(PutRequest {
        key: b(key),
        value: b(value),
        lease,
        ..PutRequest::default()
    })
}

fn epoch(round: u64, node: u64) -> LeaseEpoch {
    LeaseEpoch::new(round, node)
}

fn granted(store: &mut KvStore, id: i64, ttl: i64) -> i64 {
    match run(store, grant(id, ttl)).result {
        Ok(OpResponse::LeaseGrant { id, .. }) => id,
        other => panic!("grant failed: {other:?}"),
    }
}

#[test]
fn a_grant_is_not_a_write_and_a_chosen_id_is_refused_twice() {
    let mut store = KvStore::new();
    let response = run(&mut store, grant(7, 60));
    assert_eq!(response.revision, INITIAL_REVISION);
    assert_eq!(
        response.result,
        Ok(OpResponse::LeaseGrant { id: 7, ttl: 60 })
    );
    assert_eq!(
        run(&mut store, grant(7, 60)).result,
        Err(KvError::LeaseExists(7))
    );
    assert_eq!(
        run(&mut store, grant(8, MAX_LEASE_TTL_SECONDS + 1)).result,
        Err(KvError::LeaseInvalid("too large lease TTL".into()))
    );
    assert_eq!(store.lease_ttl(7), Some(60));
}

#[test]
fn store_chosen_ids_are_positive_unique_and_the_same_on_every_replica() {
    let mut one = KvStore::new();
    let mut two = KvStore::new();
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let a = granted(&mut one, 0, 10);
        let b = granted(&mut two, 0, 10);
        assert_eq!(a, b, "replicas applying the same log pick the same id");
        assert!(a > 0);
        assert!(ids.insert(a), "id {a} picked twice");
    }
}

#[test]
fn a_put_needs_an_existing_lease_and_a_failed_txn_leaves_the_leases_alone() {
    let mut store = KvStore::new();
    assert_eq!(
        run(&mut store, put_with_lease("a", "1", 5)).result,
        Err(KvError::LeaseNotFound(5))
    );
    granted(&mut store, 5, 60);
    run(&mut store, put_with_lease("a", "1", 5)).result.unwrap();
    // The txn's second put names a missing lease: the whole txn is undone, the first put's
    // re-attachment of "a" included.
    let txn = Op::Txn(TxnRequest {
        compare: Vec::new(),
        success: vec![put("a", "2"), put_with_lease("b", "2", 99)],
        failure: Vec::new(),
    });
    assert_eq!(run(&mut store, txn).result, Err(KvError::LeaseNotFound(99)));
    assert_eq!(store.lease_keys(5), vec![b("a")]);
    assert_eq!(store.get(b"a").unwrap().lease, 5);
}

#[test]
fn revoking_a_lease_deletes_its_keys_at_one_revision_and_only_them() {
    let mut store = KvStore::new();
    granted(&mut store, 1, 60);
    granted(&mut store, 2, 60);
    run(&mut store, put_with_lease("a", "1", 1)).result.unwrap();
    run(&mut store, put_with_lease("b", "1", 1)).result.unwrap();
    run(&mut store, put_with_lease("c", "1", 2)).result.unwrap();
    // Moved to no lease, then deleted and put again without one: no longer lease 1's.
    run(&mut store, put_with_lease("d", "1", 1)).result.unwrap();
    run(&mut store, put("d", "2")).result.unwrap();
    let before = store.revision();
    let response = run(&mut store, Op::LeaseRevoke(1));
    assert_eq!(response.result, Ok(OpResponse::LeaseRevoke { deleted: 2 }));
    assert_eq!(response.revision, before + 1);
    assert!(store.get(b"a").is_none() && store.get(b"b").is_none());
    assert!(store.get(b"c").is_some() && store.get(b"d").is_some());
    let changes: Vec<Bytes> = store
        .changes_at(before + 1)
        .into_iter()
        .map(|(key, after, _)| {
            assert!(after.is_none(), "a revoke only deletes");
            key
        })
        .collect();
    assert_eq!(changes, vec![b("a"), b("b")]);
    assert_eq!(store.lease_ttl(1), None);
    assert_eq!(
        run(&mut store, Op::LeaseRevoke(1)).result,
        Err(KvError::LeaseNotFound(1))
    );
    // A lease without keys: revoked without a write.
    let before = store.revision();
    granted(&mut store, 3, 60);
    let response = run(&mut store, Op::LeaseRevoke(3));
    assert_eq!(response.result, Ok(OpResponse::LeaseRevoke { deleted: 0 }));
    assert_eq!(response.revision, before);
}

#[test]
fn deleting_or_reattaching_a_key_detaches_it_from_its_lease() {
    let mut store = KvStore::new();
    granted(&mut store, 1, 60);
    granted(&mut store, 2, 60);
    run(&mut store, put_with_lease("a", "1", 1)).result.unwrap();
    run(&mut store, put_with_lease("b", "1", 1)).result.unwrap();
    run(&mut store, put_with_lease("a", "2", 2)).result.unwrap();
    run(&mut store, delete("b")).result.unwrap();
    assert!(store.lease_keys(1).is_empty());
    assert_eq!(store.lease_keys(2), vec![b("a")]);
    // ignore_lease keeps the key on its lease.
    let keep = Op::Put(PutRequest {
        key: b("a"),
        value: b("3"),
        ignore_lease: true,
        ..PutRequest::default()
    });
    run(&mut store, keep).result.unwrap();
    assert_eq!(store.lease_keys(2), vec![b("a")]);
    run(&mut store, Op::LeaseRevoke(2)).result.unwrap();
    assert!(store.get(b"a").is_none());
}

#[test]
fn an_expiry_counts_only_under_the_current_lease_epoch() {
    let mut store = KvStore::new();
    granted(&mut store, 1, 60);
    run(&mut store, put_with_lease("a", "1", 1)).result.unwrap();
    assert_eq!(
        run(&mut store, Op::LeasePromote(epoch(3, 1))).result,
        Ok(OpResponse::LeasePromote { promoted: true })
    );
    // A stale leader's promotion changes nothing.
    assert_eq!(
        run(&mut store, Op::LeasePromote(epoch(2, 2))).result,
        Ok(OpResponse::LeasePromote { promoted: false })
    );
    assert_eq!(store.lease_epoch(), epoch(3, 1));
    run(&mut store, Op::LeasePromote(epoch(4, 2)))
        .result
        .unwrap();
    // Node 1 decided under epoch 3, but node 2 promoted since: ignored.
    let stale = Op::LeaseExpire {
        id: 1,
        epoch: epoch(3, 1),
    };
    assert_eq!(
        run(&mut store, stale).result,
        Ok(OpResponse::LeaseExpire {
            expired: false,
            deleted: 0
        })
    );
    assert!(store.get(b"a").is_some());
    let current = Op::LeaseExpire {
        id: 1,
        epoch: epoch(4, 2),
    };
    assert_eq!(
        run(&mut store, current).result,
        Ok(OpResponse::LeaseExpire {
            expired: true,
            deleted: 1
        })
    );
    assert!(store.get(b"a").is_none() && store.lease_ttl(1).is_none());
}

#[test]
fn lease_operations_cannot_hide_in_a_txn() {
    let mut store = KvStore::new();
    granted(&mut store, 1, 60);
    for op in [
        grant(2, 60),
        Op::LeaseRevoke(1),
        Op::LeasePromote(epoch(1, 1)),
        Op::LeaseExpire {
            id: 1,
            epoch: LeaseEpoch::ZERO,
        },
    ] {
        let txn = Op::Txn(TxnRequest {
            compare: Vec::new(),
            success: vec![op],
            failure: Vec::new(),
        });
        assert_eq!(run(&mut store, txn).result, Err(KvError::NotInTxn));
    }
    assert_eq!(store.lease_ttl(1), Some(60));
}

#[test]
fn snapshots_carry_leases_their_keys_and_the_epoch() {
    let mut store = KvStore::new();
    granted(&mut store, 1, 60);
    granted(&mut store, 2, 30);
    run(&mut store, put_with_lease("a", "1", 1)).result.unwrap();
    run(&mut store, Op::LeasePromote(epoch(5, 3)))
        .result
        .unwrap();
    let mut restored = KvStore::new();
    restored.restore(&store.snapshot()).unwrap();
    assert_eq!(restored, store);
    assert_eq!(restored.lease_keys(1), vec![b("a")]);
    // Both pick the same next id.
    assert_eq!(granted(&mut restored, 0, 5), granted(&mut store, 0, 5));
}

#[test]
fn a_snapshot_naming_a_missing_lease_is_refused() {
    let mut store = KvStore::new();
    granted(&mut store, 1, 60);
    run(&mut store, put_with_lease("a", "1", 1)).result.unwrap();
    // Remove the lease behind the store's back: the image is inconsistent.
    store.lease_ttls.remove(&1);
    let error = KvStore::new().restore(&store.snapshot()).unwrap_err();
    assert!(
        matches!(&error, SnapshotError::Inconsistent(why) if why.contains("lease 1")),
        "{error}"
    );
}

// ---- the lessor ----

/// A store whose lease epoch is `lessor`'s promotion, applied.
fn promoted(lessor: &mut Lessor, store: &mut KvStore, ballot: LeaseEpoch, now: u64) {
    let promotion = lessor.promotion(now, store, ballot).expect("promotes");
    run(store, promotion).result.unwrap();
    lessor.on_applied(now, store);
    assert_eq!(lessor.primary(), Some(ballot));
}

#[test]
fn a_lessor_decides_only_after_its_promotion_is_applied() {
    let mut store = KvStore::new();
    granted(&mut store, 1, 10);
    let mut lessor = Lessor::new(1, 2 * SECOND);
    lessor.on_applied(0, &store);
    assert_eq!(lessor.primary(), None);
    assert_eq!(lessor.renew(0, 1, &store), Err(RenewError::NotPrimary));
    assert!(lessor.expired(100 * SECOND, 10).is_empty());
    let promotion = lessor
        .promotion(0, &store, epoch(1, 1))
        .expect("a leader promotes");
    assert!(
        lessor.promotion(0, &store, epoch(1, 2)).is_none(),
        "not its ballot"
    );
    assert!(
        lessor.promotion(SECOND, &store, epoch(1, 1)).is_none(),
        "proposed already"
    );
    assert!(lessor
        .promotion(EXPIRY_RETRY_NANOS, &store, epoch(1, 1))
        .is_some());
    run(&mut store, promotion).result.unwrap();
    lessor.on_applied(5 * SECOND, &store);
    assert_eq!(lessor.primary(), Some(epoch(1, 1)));
    assert!(lessor.promotion(6 * SECOND, &store, epoch(1, 1)).is_none());
    // Promoted at 5 s with a 2 s extension: due at 17 s, not before.
    assert_eq!(lessor.remaining_seconds(5 * SECOND, 1), Some(12));
    assert!(lessor.expired(17 * SECOND - 1, 10).is_empty());
    assert_eq!(
        lessor.expired(17 * SECOND, 10),
        vec![Op::LeaseExpire {
            id: 1,
            epoch: epoch(1, 1)
        }]
    );
    // Proposed once, again only after the retry interval.
    assert!(lessor.expired(18 * SECOND, 10).is_empty());
    assert_eq!(
        lessor.expired(17 * SECOND + EXPIRY_RETRY_NANOS, 10).len(),
        1
    );
}

#[test]
fn a_keep_alive_moves_the_deadline_and_an_expired_lease_cannot_be_renewed() {
    let mut store = KvStore::new();
    let mut lessor = Lessor::new(1, 0);
    promoted(&mut lessor, &mut store, epoch(1, 1), 0);
    granted(&mut store, 9, 10);
    lessor.on_applied(SECOND, &store);
    assert_eq!(lessor.next_deadline(), Some(11 * SECOND));
    assert_eq!(lessor.renew(8 * SECOND, 9, &store), Ok(10));
    assert!(lessor.expired(17 * SECOND, 10).is_empty());
    assert_eq!(lessor.expired(18 * SECOND, 10).len(), 1);
    assert_eq!(
        lessor.renew(18 * SECOND, 9, &store),
        Err(RenewError::NotFound)
    );
    assert_eq!(lessor.renew(0, 77, &store), Err(RenewError::NotFound));
    // The revoke applied: forgotten.
    run(&mut store, Op::LeaseRevoke(9)).result.unwrap();
    lessor.on_applied(19 * SECOND, &store);
    assert_eq!(lessor.next_deadline(), None);
}

#[test]
fn another_members_promotion_demotes_a_lessor() {
    let mut store = KvStore::new();
    granted(&mut store, 4, 10);
    let mut lessor = Lessor::new(1, 0);
    promoted(&mut lessor, &mut store, epoch(1, 1), 0);
    run(&mut store, Op::LeasePromote(epoch(2, 2)))
        .result
        .unwrap();
    lessor.on_applied(SECOND, &store);
    assert_eq!(lessor.primary(), None);
    assert!(lessor.expired(100 * SECOND, 10).is_empty());
    assert_eq!(lessor.renew(SECOND, 4, &store), Err(RenewError::NotPrimary));
    // Leader again at a higher ballot: it must promote again before deciding.
    assert_eq!(
        lessor.promotion(SECOND, &store, epoch(3, 1)),
        Some(Op::LeasePromote(epoch(3, 1)))
    );
}

#[test]
fn a_promotion_gives_every_lease_a_full_ttl_from_the_promotion() {
    // The failover rule: whatever the previous leader's deadlines were, the new one counts
    // every TTL afresh from its promotion (plus the extension).
    let mut store = KvStore::new();
    granted(&mut store, 1, 10);
    granted(&mut store, 2, 20);
    let mut lessor = Lessor::new(3, SECOND);
    promoted(&mut lessor, &mut store, epoch(7, 3), 100 * SECOND);
    assert_eq!(lessor.remaining_seconds(100 * SECOND, 1), Some(11));
    assert_eq!(lessor.remaining_seconds(100 * SECOND, 2), Some(21));
    assert!(lessor.expired(110 * SECOND, 10).is_empty());
    assert_eq!(lessor.expired(111 * SECOND, 10).len(), 1);
}

#[test]
fn a_restarted_member_does_not_decide_under_the_epoch_of_its_earlier_life() {
    let mut store = KvStore::new();
    granted(&mut store, 1, 10);
    let mut before_crash = Lessor::new(1, 0);
    promoted(&mut before_crash, &mut store, epoch(1, 1), 0);
    // The earlier life decided an expiry that is still on its way when the member restarts.
    let late = before_crash.expired(11 * SECOND, 10);
    assert_eq!(late.len(), 1);
    let mut after_restart = Lessor::new(1, 0);
    after_restart.on_applied(12 * SECOND, &store);
    assert_eq!(
        after_restart.primary(),
        None,
        "the store's epoch is not this life's"
    );
    assert_eq!(
        after_restart.renew(12 * SECOND, 1, &store),
        Err(RenewError::NotPrimary)
    );
    // It promotes anew; the old decision then changes nothing.
    promoted(&mut after_restart, &mut store, epoch(2, 1), 12 * SECOND);
    assert_eq!(after_restart.renew(13 * SECOND, 1, &store), Ok(10));
    let outcome = run(&mut store, late[0].clone()).result;
    assert_eq!(
        outcome,
        Ok(OpResponse::LeaseExpire {
            expired: false,
            deleted: 0
        })
    );
}
