//! The load generator against an in-process Synod node (fsync off): every workload
//! completes operations without errors, and the compare-and-sets leave every key holding
//! one of the two bench values.

use std::time::Duration;
use synod_bench::load::{bench_key, preload, run_load, LoadSpec, Workload};
use synod_bench::process::status_of;
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use synod_server::{Cluster, EtcdNode, Listeners, ServerConfig};
use synod_storage::SyncMode;
use tokio::net::TcpListener;

async fn single_node(dir: &std::path::Path) -> (EtcdNode, String) {
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cluster = Cluster::from_addrs(&[peer.local_addr().unwrap()], "bench-test");
    let mut config = ServerConfig::new(1, cluster, dir.join("n1"));
    config.heartbeat_interval = Duration::from_millis(50);
    config.election_timeout = Duration::from_millis(300);
    config.wal_sync = SyncMode::None;
    let endpoint = format!("http://{}", client.local_addr().unwrap());
    let node = EtcdNode::start(
        config,
        Listeners {
            peer: Some(peer),
            clients: vec![client],
            metrics: None,
        },
    )
    .await
    .expect("the node starts");
    (node, endpoint)
}

async fn wait_for_leader(endpoint: &str) {
    for _ in 0..500 {
        if let Ok((member, leader)) = status_of(endpoint).await {
            if leader != 0 && member == leader {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the single node never became leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_completes_operations_against_a_single_node() {
    let dir = tempfile::tempdir().unwrap();
    let (node, endpoint) = single_node(dir.path()).await;
    wait_for_leader(&endpoint).await;
    let endpoints = vec![endpoint.clone()];
    let keyspace = 20;
    preload(&endpoints, keyspace, 32).await.expect("preload");

    for workload in Workload::ALL {
        let mut spec = LoadSpec::new(workload, 4, Duration::from_millis(300));
        spec.warmup = Duration::from_millis(50);
        spec.keyspace = keyspace;
        spec.value_bytes = 32;
        let result = run_load(&endpoints, &spec).await.expect("the cell runs");
        assert!(result.ops > 0, "{workload:?} completed no operation");
        assert_eq!(result.errors, 0, "{workload:?}: {:?}", result.first_error);
        assert!(result.latency.p50_us <= result.latency.p99_us);
        assert!(result.latency.p99_us <= result.latency.max_us);
        assert!(
            result.completions.is_empty(),
            "completions only when asked for"
        );
    }

    let mut kv = KvClient::connect(endpoint.clone()).await.unwrap();
    for index in 0..keyspace {
        let response = kv
            .range(pb::RangeRequest {
                key: bench_key(index),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let value = &response.kvs[0].value;
        assert!(
            *value == vec![b'a'; 32] || *value == vec![b'b'; 32],
            "key {index} holds {value:?}"
        );
    }
    node.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_are_recorded_and_an_unreachable_endpoint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (node, endpoint) = single_node(dir.path()).await;
    wait_for_leader(&endpoint).await;
    let mut spec = LoadSpec::new(Workload::Put, 2, Duration::from_millis(200));
    spec.warmup = Duration::ZERO;
    spec.record_completions = true;
    let result = run_load(std::slice::from_ref(&endpoint), &spec)
        .await
        .unwrap();
    assert_eq!(result.completions.len() as u64, result.ops);
    assert!(result.completions.windows(2).all(|pair| pair[0] <= pair[1]));
    node.stop().await.expect("clean stop");

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let error = run_load(&[url], &spec).await.unwrap_err();
    assert!(error.to_string().contains("cannot connect"), "{error}");
}
