//! The Prometheus endpoint reports what the replicas did.

mod common;

use common::EtcdCluster;
use std::net::SocketAddr;
use std::time::Duration;
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to metrics");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_proposals_commits_elections_fsyncs_and_round_trips() {
    let mut cluster = EtcdCluster::start(3).await;
    let mut client = KvClient::connect(cluster.endpoint(0)).await.unwrap();
    for index in 0..3 {
        client
            .put(pb::PutRequest {
                key: format!("m/{index}").into(),
                value: "v".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let leader = cluster.wait_for_leader().await;
    let addr = cluster.node(0).metrics_addr().expect("metrics endpoint");
    // Round trips are measured once a second per peer: wait for the first ones.
    let mut text = String::new();
    for _ in 0..300 {
        text = http_get(addr, "/metrics").await;
        if text.contains("synod_peer_round_trip_seconds_count{peer=\"2\",node=\"1\"}")
            && text.contains("synod_peer_round_trip_seconds_count{peer=\"3\",node=\"1\"}")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(sample(&text, "synod_proposals_total") >= 3.0);
    assert!(sample(&text, "synod_commits_total") >= 3.0);
    assert!(sample(&text, "synod_commit_index") >= 3.0);
    assert!(sample(&text, "synod_leader_changes_total") >= 1.0);
    assert!(sample(&text, "synod_current_ballot") >= 1.0);
    assert!(sample(&text, "synod_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(
        sample(
            &text,
            "synod_peer_round_trip_seconds_count{peer=\"2\",node=\"1\"}"
        ) >= 1.0
    );
    assert_eq!(
        sample(&text, "synod_is_leader"),
        if leader == 0 { 1.0 } else { 0.0 }
    );

    let leader_metrics = cluster.node(leader).server().metrics();
    assert!(
        leader_metrics.phase1_runs.get() >= 1,
        "the leader ran Phase 1"
    );

    assert!(http_get(addr, "/health").await.ends_with("ok\n"));
    assert!(http_get(addr, "/nothing").await.starts_with("HTTP/1.1 404"));
    cluster.stop_all().await;
}
