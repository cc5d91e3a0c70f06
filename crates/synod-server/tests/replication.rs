//! The runtime over real sockets and disks: an in-process three-replica cluster of a
//! replicated counter.

mod common;

use common::{delta, value_of, Counter, TestCluster};
use std::time::Duration;
use synod_server::Consistency;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_at_any_replica_apply_once_everywhere() {
    let mut cluster = TestCluster::start(3, |_| {}, Counter::default).await;
    let mut expected = 0;
    for round in 0..5 {
        for index in 0..3 {
            let step = (round * 3 + index) as i64 + 1;
            expected += step;
            let response = cluster
                .server(index)
                .handle()
                .propose(delta(step))
                .await
                .expect("proposal succeeds");
            assert!(
                value_of(&response) >= step,
                "the response is a counter value"
            );
        }
    }
    for index in 0..3 {
        let value = cluster
            .server(index)
            .handle()
            .read(Consistency::Linearizable, |counter: &Counter| counter.value)
            .await
            .expect("linearizable read");
        assert_eq!(value, expected, "replica {index} sees every write once");
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_are_each_applied_exactly_once() {
    let mut cluster = TestCluster::start(3, |_| {}, Counter::default).await;
    let mut tasks = Vec::new();
    for index in 0..3 {
        let handle = cluster.server(index).handle();
        tasks.push(tokio::spawn(async move {
            let mut responses = Vec::new();
            for _ in 0..20 {
                responses.push(value_of(&handle.propose(delta(1)).await.expect("proposal")));
            }
            responses
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=60).collect::<Vec<i64>>(),
        "every increment saw a distinct value"
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_at_survivors_succeed_after_the_leader_is_stopped() {
    let mut cluster = TestCluster::start(3, |_| {}, Counter::default).await;
    let first = cluster
        .server(0)
        .handle()
        .propose(delta(5))
        .await
        .expect("first write");
    assert_eq!(value_of(&first), 5);
    let leader = cluster.wait_for_leader().await;
    cluster.stop(leader).await;
    let survivors: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    // Issued right away, during the failover: the runtime waits and retries inside.
    let mut total = 5;
    for (round, index) in survivors.iter().cycle().take(6).enumerate() {
        let response = cluster
            .server(*index)
            .handle()
            .propose(delta(round as i64 + 1))
            .await
            .expect("a write at a survivor succeeds without a client-visible error");
        total += round as i64 + 1;
        assert_eq!(value_of(&response), total);
    }
    for index in survivors {
        let value = cluster
            .server(index)
            .handle()
            .read(Consistency::Linearizable, |counter: &Counter| counter.value)
            .await
            .expect("read after failover");
        assert_eq!(value, total);
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cluster_keeps_every_acknowledged_write() {
    let mut cluster = TestCluster::start(3, |_| {}, Counter::default).await;
    for index in 0..3 {
        cluster
            .server(index)
            .handle()
            .propose(delta(10))
            .await
            .expect("write");
    }
    cluster.stop_all().await;
    for index in 0..3 {
        cluster.restart(index, Counter::default()).await;
    }
    let value = cluster
        .server(1)
        .handle()
        .read(Consistency::Linearizable, |counter: &Counter| counter.value)
        .await
        .expect("read after restart");
    assert_eq!(value, 30);
    let after = cluster
        .server(2)
        .handle()
        .propose(delta(1))
        .await
        .expect("write after restart");
    assert_eq!(value_of(&after), 31);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_missed_compacted_slots_catches_up_from_a_snapshot() {
    let mut cluster = TestCluster::start(
        3,
        |config| config.snapshot_interval_slots = 5,
        Counter::default,
    )
    .await;
    cluster
        .server(0)
        .handle()
        .propose(delta(1))
        .await
        .expect("write");
    let leader = cluster.wait_for_leader().await;
    let lagging = (leader + 1) % 3;
    cluster.stop(lagging).await;
    let writer = (0..3).find(|index| *index != lagging).unwrap();
    for _ in 0..30 {
        cluster
            .server(writer)
            .handle()
            .propose(delta(1))
            .await
            .expect("write");
    }
    // The others compacted their logs past what the lagging replica has.
    let status = cluster.server(writer).handle().status().await.unwrap();
    assert!(status.snapshot_slot > 5, "snapshots were taken: {status:?}");
    cluster.restart(lagging, Counter::default()).await;
    let mut value = 0;
    for _ in 0..2000 {
        value = cluster
            .server(lagging)
            .handle()
            .read(Consistency::Serializable, |counter: &Counter| counter.value)
            .await
            .expect("local read");
        if value == 31 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(value, 31, "the lagging replica caught up");
    let installed = cluster.server(lagging).metrics().snapshots_installed.get();
    assert!(installed >= 1, "it caught up through a snapshot");
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_refuses_to_start_as_another_member() {
    let mut cluster = TestCluster::start(3, |_| {}, Counter::default).await;
    cluster
        .server(0)
        .handle()
        .propose(delta(1))
        .await
        .expect("write");
    cluster.stop(0).await;
    let mut impostor = cluster.configs[1].clone();
    impostor.data_dir = cluster.configs[0].data_dir.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    match synod_server::Server::start_with_listener(impostor, Counter::default(), listener).await {
        Err(synod_server::ServerError::Recovery(reason)) => {
            assert!(reason.contains("belongs to another member"), "{reason}")
        }
        Err(other) => panic!("expected a recovery error, got {other}"),
        Ok(_) => panic!("node 2 started on node 1's data directory"),
    }
    cluster.stop_all().await;
}
