//! `Maintenance.MoveLeader` (leadership transfer, docs/leader-transfer.md) on a
//! three-member cluster: over gRPC with etcd's errors, and with the real `etcdctl
//! move-leader` (skipped loudly without etcdctl, failed under CI=true).

mod common;

use common::{etcdctl_available, EtcdCluster};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use synod_server::proto::etcdserverpb::maintenance_client::MaintenanceClient;

async fn move_leader(
    cluster: &EtcdCluster,
    at: usize,
    target: u64,
) -> Result<pb::MoveLeaderResponse, tonic::Status> {
    MaintenanceClient::connect(cluster.endpoint(at))
        .await
        .unwrap()
        .move_leader(pb::MoveLeaderRequest { target_id: target })
        .await
        .map(|response| response.into_inner())
}

/// Every member agrees that `index` leads (after a transfer, followers hear the new
/// leader with its first heartbeat).
async fn agreed_leader(cluster: &EtcdCluster) -> usize {
    cluster.wait_for_leader().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_hands_over_at_the_leader_and_refuses_as_etcd_does() {
    let mut cluster = EtcdCluster::start(3).await;
    let leader = agreed_leader(&cluster).await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    let not_leader = move_leader(&cluster, follower, other as u64 + 1)
        .await
        .unwrap_err();
    assert_eq!(not_leader.code(), tonic::Code::FailedPrecondition);
    assert_eq!(not_leader.message(), "etcdserver: not leader");
    let bad = move_leader(&cluster, leader, 42).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::FailedPrecondition);
    assert_eq!(bad.message(), "etcdserver: bad leader transferee");
    // To itself: nothing to do, success (as etcd).
    move_leader(&cluster, leader, leader as u64 + 1)
        .await
        .unwrap();
    assert_eq!(agreed_leader(&cluster).await, leader);

    let response = move_leader(&cluster, leader, follower as u64 + 1)
        .await
        .unwrap();
    assert_eq!(response.header.unwrap().member_id, leader as u64 + 1);
    assert_eq!(agreed_leader(&cluster).await, follower);
    let status = cluster.node(follower).server().handle().status().await;
    assert_eq!(status.unwrap().role, synod_core::Role::Leader);
    // Writes go on, at the old leader too.
    let mut kv = KvClient::connect(cluster.endpoint(leader)).await.unwrap();
    kv.put(pb::PutRequest {
        key: b"after".to_vec(),
        value: b"moved".to_vec(),
        ..Default::default()
    })
    .await
    .unwrap();
    cluster.stop_all().await;
}

/// `etcdctl --endpoints=<host:port,…> <args>`: (success, stdout, stderr).
async fn etcdctl(cluster: &EtcdCluster, args: &[&str]) -> (bool, String, String) {
    let endpoints = (0..3)
        .map(|index| {
            cluster
                .endpoint(index)
                .trim_start_matches("http://")
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(",");
    let output = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=30s")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("etcdctl runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_move_leader_hands_over_and_writes_go_on() {
    if !etcdctl_available("etcdctl_move_leader_hands_over_and_writes_go_on") {
        return;
    }
    let mut cluster = EtcdCluster::start(3).await;
    let (put, _, stderr) = etcdctl(&cluster, &["put", "before", "1"]).await;
    assert!(put, "{stderr}");
    let leader = agreed_leader(&cluster).await;
    let target = (leader + 1) % 3;
    let (leader_id, target_id) = (leader as u64 + 1, target as u64 + 1);

    // etcdctl asks every endpoint for its status and sends MoveLeader to the leader.
    let (moved, stdout, stderr) =
        etcdctl(&cluster, &["move-leader", &format!("{target_id:x}")]).await;
    assert!(moved, "move-leader failed:\n{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!("Leadership transferred from {leader_id:x} to {target_id:x}\n")
    );
    assert_eq!(agreed_leader(&cluster).await, target);

    let (ok, status, stderr) = etcdctl(&cluster, &["endpoint", "status"]).await;
    assert!(ok, "{stderr}");
    let leaders: Vec<&str> = status
        .lines()
        .filter(|line| line.contains(", true, false,"))
        .collect();
    assert_eq!(leaders.len(), 1, "{status}");
    let target_endpoint = cluster.endpoint(target);
    assert!(
        leaders[0].starts_with(target_endpoint.trim_start_matches("http://")),
        "the new leader is {target_endpoint}:\n{status}"
    );

    let (put, _, stderr) = etcdctl(&cluster, &["put", "after", "2"]).await;
    assert!(put, "{stderr}");
    let (got, stdout, stderr) = etcdctl(&cluster, &["get", "--prefix", ""]).await;
    assert!(got, "{stderr}");
    assert_eq!(stdout, "after\n2\nbefore\n1\n");

    // An id that is no member: etcd's error.
    let (moved, _, stderr) = etcdctl(&cluster, &["move-leader", "2a"]).await;
    assert!(!moved);
    assert!(stderr.contains("bad leader transferee"), "{stderr}");
    cluster.stop_all().await;
}
