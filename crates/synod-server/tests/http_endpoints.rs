//! `/health`, `/metrics` and `/version` as etcd serves them: on the metrics port, and on
//! the client port beside gRPC. `/health` is true only while the member sees a leader and
//! a linearizable read completes.

mod common;

use common::EtcdCluster;
use std::net::SocketAddr;
use std::time::Duration;
use synod_server::http::{Health, Version};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A plain HTTP/1.1 response: status code and body.
struct HttpResponse {
    status: u16,
    head: String,
    body: String,
}

async fn http(addr: SocketAddr, method: &str, path: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response head in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    HttpResponse {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn health_of(response: &HttpResponse) -> Health {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|error| panic!("{error}: /health answered {:?}", response.body))
}

async fn put(cluster: &EtcdCluster, index: usize, key: &str) {
    let mut client = KvClient::connect(cluster.endpoint(index)).await.unwrap();
    client
        .put(pb::PutRequest {
            key: key.into(),
            value: "v".into(),
            ..Default::default()
        })
        .await
        .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_true_with_a_quorum_and_false_at_a_member_that_lost_it() {
    let mut cluster = EtcdCluster::start(3).await;
    put(&cluster, 0, "before").await;
    cluster.wait_for_leader().await;
    for index in 0..3 {
        let node = cluster.node(index);
        for addr in [cluster.client_addrs[index], node.metrics_addr().unwrap()] {
            let response = http(addr, "GET", "/health").await;
            assert_eq!(response.status, 200, "{}{}", response.head, response.body);
            assert_eq!(response.body, r#"{"health":"true","reason":""}"#);
        }
    }

    // Node 0 alone: no quorum can confirm a read, so it is unhealthy — whether it still
    // remembers a leader for a while (the read then times out) or not.
    cluster.stop(1).await;
    cluster.stop(2).await;
    let client_addr = cluster.client_addrs[0];
    let mut unhealthy = None;
    for _ in 0..60 {
        let response = http(client_addr, "GET", "/health").await;
        if response.status == 503 {
            unhealthy = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = unhealthy.expect("node 0 reports itself unhealthy without a quorum");
    let health = health_of(&response);
    assert_eq!(health.health, "false");
    assert!(
        health.reason == "RAFT NO LEADER" || health.reason.starts_with("RANGE ERROR:"),
        "{health:?}"
    );
    // A serializable check reads locally and needs no leader (etcd's ?serializable=true).
    let serializable = http(client_addr, "GET", "/health?serializable=true").await;
    assert_eq!(serializable.status, 200, "{}", serializable.body);
    assert_eq!(health_of(&serializable).health, "true");

    let metrics = http(cluster.node(0).metrics_addr().unwrap(), "GET", "/metrics").await;
    assert!(metrics.body.contains("\netcd_server_health_failures "));
    assert!(!metrics.body.contains("\netcd_server_health_failures 0\n"));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_serves_metrics_and_version_over_http_beside_grpc() {
    let mut cluster = EtcdCluster::start(3).await;
    put(&cluster, 0, "first").await;
    let addr = cluster.client_addrs[0];

    let version = http(addr, "GET", "/version").await;
    assert_eq!(version.status, 200, "{}", version.body);
    let version: Version = serde_json::from_str(&version.body).expect("version JSON");
    assert_eq!(
        version,
        Version {
            etcdserver: "3.5.0".to_string(),
            etcdcluster: "3.5.0".to_string(),
            synod: env!("CARGO_PKG_VERSION").to_string(),
        }
    );

    let metrics = http(addr, "GET", "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .head
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{}",
        metrics.head
    );
    assert!(
        metrics.body.contains("\netcd_server_has_leader 1\n"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains(
        "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"
    ));

    // Plain HTTP elsewhere is HTTP, not gRPC.
    assert_eq!(http(addr, "GET", "/nothing").await.status, 404);
    assert_eq!(http(addr, "POST", "/health").await.status, 405);

    // gRPC on the same port still works, before and after the HTTP requests.
    put(&cluster, 0, "second").await;
    let mut client = KvClient::connect(cluster.endpoint(0)).await.unwrap();
    let range = client
        .range(pb::RangeRequest {
            key: "second".into(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    assert_eq!(range.kvs.len(), 1);
    cluster.stop_all().await;
}

/// One member's `/debug/timeline` answer, as (stage, kind, t_ns) in recorded order.
async fn timeline(cluster: &EtcdCluster, index: usize, enable: bool) -> Vec<(String, String, u64)> {
    let path = format!("/debug/timeline?enable={enable}");
    let response = http(cluster.client_addrs[index], "GET", &path).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let dump: serde_json::Value = serde_json::from_str(&response.body).expect("timeline JSON");
    assert_eq!(dump["enabled"], enable, "{}", response.body);
    dump["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| {
            (
                event["stage"].as_str().unwrap().to_string(),
                event["kind"].as_str().unwrap().to_string(),
                event["t_ns"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// When `stage` (of `kind`) was first recorded at or after `after`, or a panic naming
/// what was recorded (heartbeats and pings come at any time).
fn first_after(events: &[(String, String, u64)], stage: &str, kind: &str, after: u64) -> u64 {
    events
        .iter()
        .find(|(s, k, t)| s == stage && k == kind && *t >= after)
        .map(|(_, _, t)| *t)
        .unwrap_or_else(|| panic!("no {stage}:{kind} in {events:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_at_a_follower_leaves_its_path_on_every_members_timeline_in_order() {
    let mut cluster = EtcdCluster::start_with(3, |config| config.debug_timeline = true).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    put(&cluster, follower, "warm").await;
    for index in 0..3 {
        timeline(&cluster, index, true).await;
    }
    put(&cluster, follower, "traced").await;
    // The other follower's Accepted may still be on its way; it is not looked at.
    let at_follower = timeline(&cluster, follower, false).await;
    let at_leader = timeline(&cluster, leader, false).await;
    timeline(&cluster, (leader + 2) % 3, false).await;

    // The follower: the request, its forward, the slot's Accept. Each step is the first
    // of its kind after the one before, at the member named; the clock is the host's.
    let steps = [
        (&at_follower, "grpc_in", ""),
        (&at_follower, "propose", ""),
        (&at_follower, "send", "forward"),
        (&at_follower, "wire_out", "forward"),
        (&at_leader, "wire_in", "forward"),
        (&at_leader, "driver_in", "forward"),
        (&at_leader, "send", "accept"),
        (&at_leader, "wire_out", "accept"),
        (&at_follower, "wire_in", "accept"),
        (&at_follower, "driver_in", "accept"),
    ];
    let mut at = 0;
    for (events, stage, kind) in steps {
        at = first_after(events, stage, kind, at);
    }
    // The leader hears a peer's Accepted (every quorum has one) before it tells the
    // follower the slot is chosen (a heartbeat at once: the follower forwarded it); the
    // follower then answers.
    let accept_sent = first_after(&at_leader, "send", "accept", 0);
    let accepted = first_after(&at_leader, "driver_in", "accepted", accept_sent);
    let notice_sent = first_after(&at_leader, "send", "heartbeat", accepted);
    let notice = first_after(&at_follower, "driver_in", "heartbeat", notice_sent);
    let reply = first_after(&at_follower, "reply", "", notice);
    first_after(&at_follower, "grpc_out", "", reply);

    // Off again: nothing more is recorded.
    put(&cluster, follower, "untraced").await;
    assert!(timeline(&cluster, follower, false).await.is_empty());
    assert!(timeline(&cluster, leader, false).await.is_empty());
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_is_refused_unless_the_member_was_started_with_it() {
    let mut cluster = EtcdCluster::start(1).await;
    cluster.wait_for_leader().await;
    let response = http(
        cluster.client_addrs[0],
        "GET",
        "/debug/timeline?enable=true",
    )
    .await;
    assert_eq!(response.status, 404, "{}", response.body);
    assert!(
        response.body.contains("--enable-debug-timeline"),
        "{}",
        response.body
    );
    // The refused call switched nothing on: a put leaves no events behind.
    put(&cluster, 0, "untraced").await;
    let metrics = cluster.node(0).server().metrics();
    assert!(metrics.timeline.take(None).events.is_empty());
    cluster.stop_all().await;
}
