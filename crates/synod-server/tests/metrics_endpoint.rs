//! The Prometheus endpoint reports what the replicas did, under etcd's names, and every
//! query of etcd's official Grafana dashboard finds its series.

mod common;

use common::EtcdCluster;
use std::net::SocketAddr;
use std::time::Duration;
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::cluster_client::ClusterClient;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 GET, the whole response (status line, headers, body).
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to metrics");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// A sample line `name{labels} value` of the text exposition.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (label, value) = pair.split_once("=\"")?;
                    Some((label.to_string(), value.trim_end_matches('"').to_string()))
                })
                .collect();
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

/// The samples a PromQL selector picks: `name{label="v",label!="v",label=~"a|b"}` (the
/// regular expressions in etcd's dashboard are plain alternatives).
fn select<'a>(samples: &'a [Sample], selector: &str) -> Vec<&'a Sample> {
    let (name, matchers) = match selector.split_once('{') {
        Some((name, matchers)) => (name, matchers.trim_end_matches('}')),
        None => (selector, ""),
    };
    let matchers: Vec<(&str, &str, &str)> = matchers
        .split(',')
        .filter(|matcher| !matcher.is_empty())
        .map(|matcher| {
            for operator in ["=~", "!=", "="] {
                if let Some((label, value)) = matcher.split_once(operator) {
                    return (label, operator, value.trim_matches('"'));
                }
            }
            panic!("unsupported matcher {matcher}");
        })
        .collect();
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            matchers.iter().all(|(label, operator, wanted)| {
                let value = sample
                    .labels
                    .iter()
                    .find(|(name, _)| name == label)
                    .map_or("", |(_, value)| value.as_str());
                match *operator {
                    "=" => value == *wanted,
                    "!=" => value != *wanted,
                    _ => wanted.split('|').any(|alternative| alternative == value),
                }
            })
        })
        .collect()
}

fn sum(samples: &[Sample], selector: &str) -> f64 {
    select(samples, selector)
        .iter()
        .map(|sample| sample.value)
        .sum()
}

/// The series etcd's official Grafana dashboard queries: the panels of
/// `contrib/mixin/dashboards/targets.libsonnet` and of the older
/// `Documentation/op-guide/grafana.json`, each reduced to its selector (the `job`,
/// `cluster` and `instance` labels come from Prometheus, not from the member).
const DASHBOARD_SELECTORS: &[&str] = &[
    "etcd_server_has_leader",
    "grpc_server_started_total{grpc_type=\"unary\"}",
    "grpc_server_handled_total{grpc_type=\"unary\",grpc_code=~\"Unknown|FailedPrecondition|ResourceExhausted|Internal|Unavailable|DataLoss|DeadlineExceeded\"}",
    "grpc_server_handled_total{grpc_type=\"unary\",grpc_code!=\"OK\"}",
    "grpc_server_started_total{grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"}",
    "grpc_server_handled_total{grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"}",
    "grpc_server_started_total{grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"}",
    "grpc_server_handled_total{grpc_service=\"etcdserverpb.Lease\",grpc_type=\"bidi_stream\"}",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_disk_wal_fsync_duration_seconds_bucket",
    "etcd_disk_backend_commit_duration_seconds_bucket",
    "process_resident_memory_bytes",
    "etcd_network_client_grpc_received_bytes_total",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_network_peer_received_bytes_total",
    "etcd_network_peer_sent_bytes_total",
    "etcd_server_leader_changes_seen_total",
    "etcd_network_peer_round_trip_time_seconds_bucket",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_failed_total",
];

/// Puts `count` keys through node 0's client port and reads one back.
async fn traffic(cluster: &EtcdCluster, count: usize) {
    let mut client = KvClient::connect(cluster.endpoint(0)).await.unwrap();
    for index in 0..count {
        client
            .put(pb::PutRequest {
                key: format!("m/{index}").into(),
                value: "v".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    client
        .range(pb::RangeRequest {
            key: "m/0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Scrapes node 0's metrics port until `ready` holds (round trips are measured once a
/// second per peer, snapshots are saved off the replica's task).
async fn scrape_until(cluster: &EtcdCluster, ready: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let addr = cluster.node(0).metrics_addr().expect("metrics endpoint");
    let mut text = String::new();
    for _ in 0..1500 {
        text = http_get(addr, "/metrics").await;
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        if ready(&samples(&text)) {
            return samples(&text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the metrics never got ready:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_proposals_commits_elections_fsyncs_and_round_trips() {
    let mut cluster = EtcdCluster::start(3).await;
    traffic(&cluster, 3).await;
    let leader = cluster.wait_for_leader().await;
    let metrics = scrape_until(&cluster, |metrics| {
        sum(
            metrics,
            "etcd_network_peer_round_trip_time_seconds_count{To=\"2\"}",
        ) >= 1.0
            && sum(
                metrics,
                "etcd_network_peer_round_trip_time_seconds_count{To=\"3\"}",
            ) >= 1.0
            && sum(metrics, "etcd_server_proposals_applied_total") >= 3.0
    })
    .await;
    assert!(sum(&metrics, "synod_proposals_total") >= 3.0);
    assert!(sum(&metrics, "synod_commands_applied_total") >= 3.0);
    assert!(sum(&metrics, "etcd_server_proposals_committed_total") >= 3.0);
    assert!(sum(&metrics, "etcd_server_leader_changes_seen_total") >= 1.0);
    assert_eq!(sum(&metrics, "etcd_server_has_leader"), 1.0);
    assert_eq!(
        sum(&metrics, "etcd_server_is_leader"),
        if leader == 0 { 1.0 } else { 0.0 }
    );
    assert!(sum(&metrics, "synod_current_ballot") >= 1.0);
    assert!(sum(&metrics, "etcd_disk_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(sum(&metrics, "synod_wal_persist_duration_seconds_count") >= 1.0);
    assert!(sum(&metrics, "etcd_network_peer_sent_bytes_total{To=\"2\"}") > 0.0);
    assert!(
        sum(
            &metrics,
            "etcd_network_peer_received_bytes_total{From=\"2\"}"
        ) > 0.0
    );
    // The database is the log on disk (nothing is snapshotted yet at this interval).
    assert_eq!(
        sum(&metrics, "etcd_mvcc_db_total_size_in_bytes"),
        sum(&metrics, "synod_wal_disk_bytes") + sum(&metrics, "synod_snapshot_disk_bytes")
    );
    assert!(sum(&metrics, "synod_wal_disk_bytes") > 0.0);
    // Three Puts and one Range answered OK through node 0's client port.
    let handled = |method: &str, code: &str| {
        sum(
            &metrics,
            &format!(
                "grpc_server_handled_total{{grpc_service=\"etcdserverpb.KV\",grpc_method=\"{method}\",grpc_code=\"{code}\",grpc_type=\"unary\"}}"
            ),
        )
    };
    assert_eq!(handled("Put", "OK"), 3.0);
    assert_eq!(handled("Range", "OK"), 1.0);
    assert_eq!(
        sum(
            &metrics,
            "grpc_server_handling_seconds_count{grpc_method=\"Put\"}"
        ),
        3.0
    );
    assert!(sum(&metrics, "etcd_network_client_grpc_received_bytes_total") > 0.0);
    assert!(sum(&metrics, "etcd_network_client_grpc_sent_bytes_total") > 0.0);

    let leader_metrics = cluster.node(leader).server().metrics();
    assert!(
        leader_metrics.phase1_runs.get() >= 1,
        "the leader ran Phase 1"
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unserved_method_is_counted_unimplemented() {
    let mut cluster = EtcdCluster::start(1).await;
    let mut client = ClusterClient::connect(cluster.endpoint(0)).await.unwrap();
    let error = client
        .member_add(pb::Unserved::default())
        .await
        .expect_err("MemberAdd is not served");
    assert_eq!(error.code(), tonic::Code::Unimplemented);
    let metrics = scrape_until(&cluster, |_| true).await;
    assert_eq!(
        sum(
            &metrics,
            "grpc_server_handled_total{grpc_method=\"MemberAdd\",grpc_code=\"Unimplemented\"}"
        ),
        1.0
    );
    assert_eq!(
        sum(
            &metrics,
            "grpc_server_started_total{grpc_method=\"MemberAdd\"}"
        ),
        1.0
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_of_etcds_grafana_dashboard_finds_data() {
    // Snapshots every 4 slots, so the "backend commit" panel has observations too.
    let mut cluster = EtcdCluster::start_with(3, |config| config.snapshot_interval_slots = 4).await;
    traffic(&cluster, 10).await;
    cluster.wait_for_leader().await;
    let metrics = scrape_until(&cluster, |metrics| {
        sum(metrics, "etcd_network_peer_round_trip_time_seconds_count") >= 1.0
            && sum(metrics, "etcd_disk_backend_commit_duration_seconds_count") >= 1.0
    })
    .await;
    for selector in DASHBOARD_SELECTORS {
        assert!(
            !select(&metrics, selector).is_empty(),
            "the dashboard's query on {selector} finds no series"
        );
    }
    // After traffic the panels show it, not just zeros.
    for selector in [
        "etcd_server_has_leader",
        "grpc_server_started_total{grpc_type=\"unary\"}",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}",
        "etcd_disk_backend_commit_duration_seconds_bucket{le=\"+Inf\"}",
        "process_resident_memory_bytes",
        "etcd_network_client_grpc_received_bytes_total",
        "etcd_network_client_grpc_sent_bytes_total",
        "etcd_network_peer_received_bytes_total",
        "etcd_network_peer_sent_bytes_total",
        "etcd_server_leader_changes_seen_total",
        "etcd_network_peer_round_trip_time_seconds_bucket{le=\"+Inf\"}",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
    ] {
        assert!(
            sum(&metrics, selector) > 0.0,
            "{selector} is still 0 after traffic"
        );
    }
    assert!(sum(&metrics, "synod_snapshots_taken_total") >= 1.0);
    assert!(sum(&metrics, "synod_snapshot_disk_bytes") > 0.0);
    cluster.stop_all().await;
}
