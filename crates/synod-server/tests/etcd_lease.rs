//! etcd's Lease service through gRPC against in-process three-member clusters: grant,
//! attach, time-to-live and keep-alive at a follower (forwarded to the leader), revoke
//! deleting every attached key at one revision (seen by a watcher), expiry, keep-alives
//! that hold a lease past its TTL, and expiry after the leader is killed.

mod common;

use std::time::{Duration, Instant};

use common::{kv, EtcdCluster};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use synod_server::proto::etcdserverpb::lease_client::LeaseClient;
use tonic::transport::Channel;

async fn leases(cluster: &EtcdCluster, index: usize) -> LeaseClient<Channel> {
    LeaseClient::connect(cluster.endpoint(index))
        .await
        .expect("connect")
}

async fn grant(client: &mut LeaseClient<Channel>, id: i64, ttl: i64) -> pb::LeaseGrantResponse {
    client
        .lease_grant(pb::LeaseGrantRequest { ttl, id })
        .await
        .expect("grant")
        .into_inner()
}

async fn put_with_lease(
    client: &mut KvClient<Channel>,
    key: &str,
    lease: i64,
) -> Result<i64, tonic::Status> {
    let response = client
        .put(pb::PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            lease,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(response.header.unwrap().revision)
}

async fn count(client: &mut KvClient<Channel>, prefix: &str) -> i64 {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    client
        .range(pb::RangeRequest {
            key: prefix.into(),
            range_end: end,
            count_only: true,
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
        .count
}

async fn keep_alive_once(client: &mut LeaseClient<Channel>, id: i64) -> i64 {
    let mut responses = client
        .lease_keep_alive(tokio_stream::once(pb::LeaseKeepAliveRequest { id }))
        .await
        .expect("keep-alive stream")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("keep-alive")
        .expect("one response");
    assert_eq!(response.id, id);
    response.ttl
}

async fn time_to_live(client: &mut LeaseClient<Channel>, id: i64) -> pb::LeaseTimeToLiveResponse {
    client
        .lease_time_to_live(pb::LeaseTimeToLiveRequest { id, keys: true })
        .await
        .expect("time to live")
        .into_inner()
}

/// A member that is not the leader.
async fn follower(cluster: &EtcdCluster) -> usize {
    let leader = cluster.wait_for_leader().await;
    (leader + 1) % 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_granted_kept_alive_and_revoked_at_a_follower_as_at_the_leader() {
    let mut cluster = EtcdCluster::start(3).await;
    let at = follower(&cluster).await;
    let mut lease = leases(&cluster, at).await;
    let mut store = kv(&cluster, at).await;

    // etcd's minimum TTL (1.5 election timeouts of 400 ms, rounded up to 1 s) and a
    // client-chosen id.
    let granted = grant(&mut lease, 0, 0).await;
    assert!(granted.id > 0 && granted.ttl == 1, "{granted:?}");
    let chosen = grant(&mut lease, 4242, 60).await;
    assert_eq!((chosen.id, chosen.ttl), (4242, 60));
    let again = lease
        .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 4242 })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert_eq!(again.message(), "etcdserver: lease already exists");

    let missing = put_with_lease(&mut store, "x", 999).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    assert_eq!(missing.message(), "etcdserver: requested lease not found");

    put_with_lease(&mut store, "held/a", 4242).await.unwrap();
    let before = put_with_lease(&mut store, "held/b", 4242).await.unwrap();
    // Time-to-live and keep-alive are the leader's: forwarded from this follower.
    let ttl = time_to_live(&mut lease, 4242).await;
    assert_eq!(ttl.granted_ttl, 60);
    assert!(ttl.ttl > 50 && ttl.ttl <= 60, "{ttl:?}");
    assert_eq!(ttl.keys, vec![b"held/a".to_vec(), b"held/b".to_vec()]);
    assert_eq!(keep_alive_once(&mut lease, 4242).await, 60);
    assert_eq!(time_to_live(&mut lease, 31337).await.ttl, -1);
    assert_eq!(keep_alive_once(&mut lease, 31337).await, 0);
    let listed = lease
        .lease_leases(pb::LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut ids: Vec<i64> = listed.leases.iter().map(|lease| lease.id).collect();
    ids.sort_unstable();
    let mut expected = vec![granted.id, 4242];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    // Revoke: both keys go, at one revision.
    let revoked = lease
        .lease_revoke(pb::LeaseRevokeRequest { id: 4242 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.header.unwrap().revision, before + 1);
    assert_eq!(count(&mut store, "held/").await, 0);
    let gone = lease
        .lease_revoke(pb::LeaseRevokeRequest { id: 4242 })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    cluster.stop_all().await;
}

/// Polls until `prefix` holds no key, up to `limit`; the time it took.
async fn until_gone(store: &mut KvClient<Channel>, prefix: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while count(store, prefix).await > 0 {
        assert!(
            start.elapsed() < limit,
            "{prefix} still has keys after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_expires_unless_kept_alive_and_takes_its_keys_along() {
    let mut cluster = EtcdCluster::start(3).await;
    let at = cluster.wait_for_leader().await;
    let mut lease = leases(&cluster, at).await;
    let mut store = kv(&cluster, at).await;
    let kept = grant(&mut lease, 1, 2).await.id;
    let dropped = grant(&mut lease, 2, 2).await.id;
    put_with_lease(&mut store, "kept/a", kept).await.unwrap();
    put_with_lease(&mut store, "dropped/a", dropped)
        .await
        .unwrap();
    put_with_lease(&mut store, "dropped/b", dropped)
        .await
        .unwrap();
    let start = Instant::now();
    // Keep one alive for three TTLs; the other one expires meanwhile.
    while start.elapsed() < Duration::from_secs(6) {
        assert_eq!(keep_alive_once(&mut lease, kept).await, 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(count(&mut store, "dropped/").await, 0, "expired");
    assert_eq!(count(&mut store, "kept/").await, 1, "kept alive");
    assert_eq!(time_to_live(&mut lease, dropped).await.ttl, -1);
    assert_eq!(keep_alive_once(&mut lease, dropped).await, 0);
    // Left alone, the kept one expires too: not before its TTL, and soon after it.
    let waited = until_gone(&mut store, "kept/", Duration::from_secs(10)).await;
    assert!(
        waited >= Duration::from_millis(1500),
        "expired early: {waited:?}"
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_outlives_the_leader_that_granted_it_and_expires_at_the_next() {
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let survivor = (leader + 1) % 3;
    let mut lease = leases(&cluster, survivor).await;
    let mut store = kv(&cluster, survivor).await;
    let id = grant(&mut lease, 7, 3).await.id;
    put_with_lease(&mut store, "failover/a", id).await.unwrap();
    assert_eq!(keep_alive_once(&mut lease, id).await, 3);
    let kept_alive_at = Instant::now();
    cluster.stop(leader).await;
    // The new leader promotes with a full TTL (plus an election timeout): the key is still
    // there well into the TTL, and then goes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(&mut store, "failover/").await, 1);
    until_gone(&mut store, "failover/", Duration::from_secs(15)).await;
    assert!(kept_alive_at.elapsed() >= Duration::from_secs(3));
    cluster.stop_all().await;
}

/// v3lock: a second locker waits until the first unlocks — or until the first holder's
/// lease expires; v3election: the lowest campaigner leads, a proclaim by a non-leader is
/// refused, observers see every new leader, resigning hands leadership on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_elections_wait_their_turn_and_follow_their_leases() {
    use synod_server::proto::v3electionpb as election;
    use synod_server::proto::v3electionpb::election_client::ElectionClient;
    use synod_server::proto::v3lockpb as lock;
    use synod_server::proto::v3lockpb::lock_client::LockClient;

    let mut cluster = EtcdCluster::start(3).await;
    let at = follower(&cluster).await;
    let mut lease = leases(&cluster, at).await;
    let first = grant(&mut lease, 11, 60).await.id;
    let second = grant(&mut lease, 12, 60).await.id;
    let short = grant(&mut lease, 13, 1).await.id;

    let mut locks = LockClient::connect(cluster.endpoint(at)).await.unwrap();
    // Without a lease, as etcd: the lock gets a fresh 60 s session lease of its own.
    let solo = locks
        .lock(lock::LockRequest {
            name: b"solo".to_vec(),
            lease: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(solo.key.starts_with(b"solo/"), "{:?}", solo.key);
    locks
        .unlock(lock::UnlockRequest { key: solo.key })
        .await
        .unwrap();
    let held = locks
        .lock(lock::LockRequest {
            name: b"job".to_vec(),
            lease: first,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.key, b"job/b".to_vec());
    let mut waiting_locks = locks.clone();
    let waiter = tokio::spawn(async move {
        waiting_locks
            .lock(lock::LockRequest {
                name: b"job".to_vec(),
                lease: second,
            })
            .await
            .map(|response| response.into_inner().key)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the second locker must wait");
    locks
        .unlock(lock::UnlockRequest { key: held.key })
        .await
        .unwrap();
    let key = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter gets the lock")
        .unwrap()
        .unwrap();
    assert_eq!(key, b"job/c".to_vec());
    // A holder whose lease goes (revoked here; an expiry deletes the same way) loses the
    // lock to the next in line.
    let mut other = locks.clone();
    let behind_expiring = tokio::spawn(async move {
        other
            .lock(lock::LockRequest {
                name: b"job".to_vec(),
                lease: short,
            })
            .await
            .map(|response| response.into_inner().key)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    lease
        .lease_revoke(pb::LeaseRevokeRequest { id: second })
        .await
        .unwrap();
    let key = tokio::time::timeout(Duration::from_secs(10), behind_expiring)
        .await
        .expect("revoking the holder's lease releases the lock")
        .unwrap()
        .unwrap();
    assert_eq!(key, b"job/d".to_vec());

    let mut elections = ElectionClient::connect(cluster.endpoint(at)).await.unwrap();
    let mut observer = elections
        .observe(election::LeaderRequest {
            name: b"mayor".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let alice = elections
        .campaign(election::CampaignRequest {
            name: b"mayor".to_vec(),
            lease: first,
            value: b"alice".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    let seen = observer.message().await.unwrap().unwrap().kv.unwrap();
    assert_eq!(seen.value, b"alice".to_vec());
    let fresh = grant(&mut lease, 14, 60).await.id;
    let mut candidate = elections.clone();
    let bob = tokio::spawn(async move {
        candidate
            .campaign(election::CampaignRequest {
                name: b"mayor".to_vec(),
                lease: fresh,
                value: b"bob".to_vec(),
            })
            .await
            .map(|response| response.into_inner().leader.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!bob.is_finished(), "bob waits behind alice");
    let leader = elections
        .leader(election::LeaderRequest {
            name: b"mayor".to_vec(),
        })
        .await
        .unwrap()
        .into_inner()
        .kv
        .unwrap();
    assert_eq!(leader.value, b"alice".to_vec());
    elections
        .proclaim(election::ProclaimRequest {
            leader: Some(alice.clone()),
            value: b"alice again".to_vec(),
        })
        .await
        .unwrap();
    let seen = observer.message().await.unwrap().unwrap().kv.unwrap();
    assert_eq!(seen.value, b"alice again".to_vec());
    elections
        .resign(election::ResignRequest {
            leader: Some(alice.clone()),
        })
        .await
        .unwrap();
    let bob = tokio::time::timeout(Duration::from_secs(10), bob)
        .await
        .expect("bob leads once alice resigns")
        .unwrap()
        .unwrap();
    let seen = observer.message().await.unwrap().unwrap().kv.unwrap();
    assert_eq!((seen.key, seen.value), (bob.key.clone(), b"bob".to_vec()));
    // Alice no longer leads: her proclaim is refused.
    let refused = elections
        .proclaim(election::ProclaimRequest {
            leader: Some(alice),
            value: b"usurp".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    cluster.stop_all().await;
}
