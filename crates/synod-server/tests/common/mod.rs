//! An in-process cluster on loopback for the integration tests.

#![allow(dead_code)]

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use synod_kv::{SnapshotError, StateMachine};
use synod_server::{Cluster, Server, ServerConfig};
use synod_storage::SyncMode;
use tokio::net::TcpListener;

/// A replicated counter: commands are little-endian i64 deltas, responses the new value.
#[derive(Default)]
pub struct Counter {
    pub value: i64,
    pub applied: u64,
}

impl StateMachine for Counter {
    fn apply(&mut self, slot: u64, command: &[u8]) -> Bytes {
        self.applied = slot;
        match <[u8; 8]>::try_from(command) {
            Ok(delta) => {
                self.value += i64::from_le_bytes(delta);
                Bytes::copy_from_slice(&self.value.to_le_bytes())
            }
            Err(_) => Bytes::from_static(b"error: a command is 8 bytes"),
        }
    }

    fn applied(&self) -> u64 {
        self.applied
    }

    fn snapshot(&self) -> Bytes {
        let mut image = self.value.to_le_bytes().to_vec();
        image.extend(self.applied.to_le_bytes());
        Bytes::from(image)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), SnapshotError> {
        if snapshot.len() != 16 {
            return Err(SnapshotError::Malformed(format!(
                "{} bytes",
                snapshot.len()
            )));
        }
        self.value = i64::from_le_bytes(snapshot[..8].try_into().unwrap());
        self.applied = u64::from_le_bytes(snapshot[8..].try_into().unwrap());
        Ok(())
    }
    fn empty_like(&self) -> Self {
        Counter::default()
    }
}

pub fn delta(value: i64) -> Bytes {
    Bytes::copy_from_slice(&value.to_le_bytes())
}

pub fn value_of(response: &Bytes) -> i64 {
    i64::from_le_bytes(response[..].try_into().expect("an 8-byte counter response"))
}

/// Logs to the test output when RUST_LOG is set.
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Test timings: short, but loose enough for a loaded 2-core machine.
pub fn test_config(node_id: u64, cluster: &Cluster, dir: &std::path::Path) -> ServerConfig {
    let mut config = ServerConfig::new(node_id, cluster.clone(), dir.join(format!("n{node_id}")));
    config.tick_interval = Duration::from_millis(10);
    config.heartbeat_interval = Duration::from_millis(50);
    config.election_timeout = Duration::from_millis(400);
    config.request_timeout = Duration::from_secs(20);
    config.wal_sync = SyncMode::Fsync;
    config
}

/// Binds `count` loopback listeners on free ports.
pub async fn bind_listeners(count: usize) -> (Vec<TcpListener>, Vec<SocketAddr>) {
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..count {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        addrs.push(listener.local_addr().unwrap());
        listeners.push(listener);
    }
    (listeners, addrs)
}

pub struct TestCluster<S: StateMachine> {
    pub cluster: Cluster,
    pub configs: Vec<ServerConfig>,
    pub servers: Vec<Option<Server<S>>>,
    pub dir: tempfile::TempDir,
}

impl<S: StateMachine> TestCluster<S> {
    pub async fn start(
        size: usize,
        tweak: impl Fn(&mut ServerConfig),
        make: impl Fn() -> S,
    ) -> Self {
        init_logging();
        let dir = tempfile::tempdir().expect("temporary directory");
        let (listeners, addrs) = bind_listeners(size).await;
        let cluster = Cluster::from_addrs(&addrs, "test");
        let mut configs = Vec::new();
        let mut servers = Vec::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            let mut config = test_config(index as u64 + 1, &cluster, dir.path());
            tweak(&mut config);
            let server = Server::start_with_listener(config.clone(), make(), listener)
                .await
                .expect("server starts");
            configs.push(config);
            servers.push(Some(server));
        }
        TestCluster {
            cluster,
            configs,
            servers,
            dir,
        }
    }

    pub fn server(&self, index: usize) -> &Server<S> {
        self.servers[index].as_ref().expect("server is running")
    }

    /// Stops replica `index` (its data directory stays).
    pub async fn stop(&mut self, index: usize) {
        if let Some(server) = self.servers[index].take() {
            server.stop().await.expect("clean stop");
        }
    }

    /// Starts replica `index` again from its data directory, on its old address.
    pub async fn restart(&mut self, index: usize, state_machine: S) {
        let config = self.configs[index].clone();
        let server = Server::start(config, state_machine)
            .await
            .expect("server restarts");
        self.servers[index] = Some(server);
    }

    /// The index of the replica every running replica agrees leads.
    pub async fn wait_for_leader(&self) -> usize {
        for _ in 0..3000 {
            let mut leaders = Vec::new();
            for server in self.servers.iter().flatten() {
                leaders.push(server.handle().status().await.expect("status").leader);
            }
            if let Some(Some(leader)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*leader)) {
                    let index = (*leader - 1) as usize;
                    if self.servers[index].is_some() {
                        return index;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no leader emerged");
    }

    pub async fn stop_all(&mut self) {
        for index in 0..self.servers.len() {
            self.stop(index).await;
        }
    }
}

/// Three KV replicas with their etcd gRPC and metrics endpoints, in-process.
pub struct EtcdCluster {
    pub cluster: Cluster,
    pub configs: Vec<ServerConfig>,
    pub nodes: Vec<Option<synod_server::EtcdNode>>,
    pub client_addrs: Vec<SocketAddr>,
    pub dir: tempfile::TempDir,
}

impl EtcdCluster {
    pub async fn start(size: usize) -> EtcdCluster {
        EtcdCluster::start_with(size, |_| {}).await
    }

    /// Like `start`, with each member's configuration adjusted first.
    pub async fn start_with(size: usize, tweak: impl Fn(&mut ServerConfig)) -> EtcdCluster {
        init_logging();
        let dir = tempfile::tempdir().expect("temporary directory");
        let (peers, peer_addrs) = bind_listeners(size).await;
        let (clients, client_addrs) = bind_listeners(size).await;
        let cluster = Cluster::from_addrs(&peer_addrs, "etcd-test");
        let mut configs = Vec::new();
        let mut nodes = Vec::new();
        for (index, (peer, client)) in peers.into_iter().zip(clients).enumerate() {
            let mut config = test_config(index as u64 + 1, &cluster, dir.path());
            config.client_urls = vec![format!("http://{}", client_addrs[index])];
            tweak(&mut config);
            let node = synod_server::EtcdNode::start(
                config.clone(),
                synod_server::Listeners {
                    peer: Some(peer),
                    clients: vec![client],
                    metrics: Some(TcpListener::bind("127.0.0.1:0").await.unwrap()),
                },
            )
            .await
            .expect("node starts");
            configs.push(config);
            nodes.push(Some(node));
        }
        EtcdCluster {
            cluster,
            configs,
            nodes,
            client_addrs,
            dir,
        }
    }

    pub fn endpoint(&self, index: usize) -> String {
        format!("http://{}", self.client_addrs[index])
    }

    pub fn node(&self, index: usize) -> &synod_server::EtcdNode {
        self.nodes[index].as_ref().expect("node is running")
    }

    pub async fn stop(&mut self, index: usize) {
        if let Some(node) = self.nodes[index].take() {
            node.stop().await.expect("clean stop");
        }
    }

    /// Starts node `index` again on its old addresses and data directory.
    pub async fn restart(&mut self, index: usize) {
        let config = self.configs[index].clone();
        let client = TcpListener::bind(self.client_addrs[index])
            .await
            .expect("rebind client port");
        let node = synod_server::EtcdNode::start(
            config,
            synod_server::Listeners {
                peer: None,
                clients: vec![client],
                metrics: None,
            },
        )
        .await
        .expect("node restarts");
        self.nodes[index] = Some(node);
    }

    /// Index of the node every running node agrees leads.
    pub async fn wait_for_leader(&self) -> usize {
        for _ in 0..3000 {
            let mut leaders = Vec::new();
            for node in self.nodes.iter().flatten() {
                leaders.push(
                    node.server()
                        .handle()
                        .status()
                        .await
                        .expect("status")
                        .leader,
                );
            }
            if let Some(Some(leader)) = leaders.first() {
                let index = (*leader - 1) as usize;
                if leaders.iter().all(|l| *l == Some(*leader)) && self.nodes[index].is_some() {
                    return index;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no leader emerged");
    }

    pub async fn stop_all(&mut self) {
        for index in 0..self.nodes.len() {
            self.stop(index).await;
        }
    }
}

/// True when `program` runs here (`program args` succeeds); otherwise says loudly that
/// `test` skips, and fails under CI=true, which installs the Debian `package`.
fn tool_available(program: &str, args: &[&str], package: &str, test: &str) -> bool {
    let found = std::process::Command::new(program)
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "{program} is not installed, but CI=true requires it (apt-get install {package})"
            );
        }
        eprintln!(
            "\n*** SKIPPED {test}: {program} is not installed (apt-get install {package}) ***\n"
        );
    }
    found
}

/// True when etcdctl can run; otherwise explains (and fails under CI).
pub fn etcdctl_available(test: &str) -> bool {
    tool_available("etcdctl", &["version"], "etcd-client", test)
}

/// True when a real etcd server can run here; otherwise explains (and fails under CI).
pub fn etcd_available(test: &str) -> bool {
    tool_available("etcd", &["--version"], "etcd-server", test)
}

/// A KV client of member `index`'s etcd endpoint.
pub async fn kv(
    cluster: &EtcdCluster,
    index: usize,
) -> synod_server::proto::etcdserverpb::kv_client::KvClient<tonic::transport::Channel> {
    synod_server::proto::etcdserverpb::kv_client::KvClient::connect(cluster.endpoint(index))
        .await
        .expect("connect")
}

/// A plain put of `key` = `value`.
pub fn put(key: &str, value: &str) -> synod_server::proto::etcdserverpb::PutRequest {
    synod_server::proto::etcdserverpb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    }
}

/// A read of the one key `key`.
pub fn get(key: &str) -> synod_server::proto::etcdserverpb::RangeRequest {
    synod_server::proto::etcdserverpb::RangeRequest {
        key: key.into(),
        ..Default::default()
    }
}
