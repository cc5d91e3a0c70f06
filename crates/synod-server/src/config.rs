//! Cluster membership and the settings of one replica.
//!
//! Membership is static: it comes from etcd's `--initial-cluster` syntax
//! (`name=url,name=url,...`). Node ids are 1..=n in the order of the names, so every node
//! derives the same ids whatever order its flag lists them in; the cluster id is a hash of
//! the sorted list and the `--initial-cluster-token`, like etcd's, so nodes configured
//! for different clusters refuse each other.

use crate::wire::DEFAULT_MAX_FRAME_BYTES;

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 3 << 19;

/// What a peer frame adds to the messages it carries (envelope, length, version).
const FRAME_OVERHEAD_BYTES: usize = 64 << 10;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;
use synod_core::NodeId;
use synod_storage::SyncMode;

/// One member of the cluster.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    /// As given (e.g. `http://127.0.0.1:2380`).
    pub peer_url: String,
    /// Where the member accepts peer connections.
    pub peer_addr: SocketAddr,
}

/// The static membership of a cluster.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Cluster {
    pub cluster_id: u64,
    /// Sorted by id.
    pub members: Vec<Member>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Cluster {
    /// Parses etcd's `--initial-cluster` value, e.g.
    /// `n1=http://127.0.0.1:2380,n2=http://127.0.0.1:22380`.
    pub fn parse(initial_cluster: &str, token: &str) -> Result<Cluster, ConfigError> {
        let mut named = Vec::new();
        for item in initial_cluster.split(',').map(str::trim) {
            if item.is_empty() {
                continue;
            }
            let (name, url) = item.split_once('=').ok_or_else(|| {
                ConfigError(format!(
                    "initial cluster entry {item:?} is not of the form name=url"
                ))
            })?;
            let (name, url) = (name.trim(), url.trim());
            if name.is_empty() {
                return Err(ConfigError(format!(
                    "initial cluster entry {item:?} has an empty name"
                )));
            }
            let peer_addr = resolve_url(url)?;
            named.push((name.to_string(), url.to_string(), peer_addr));
        }
        if named.is_empty() {
            return Err(ConfigError("the initial cluster lists no member".into()));
        }
        named.sort();
        for pair in named.windows(2) {
            if pair[0].0 == pair[1].0 {
                return Err(ConfigError(format!(
                    "member name {:?} appears twice in the initial cluster",
                    pair[0].0
                )));
            }
        }
        // Any two members, not only neighbours in name order.
        let mut by_addr: std::collections::HashMap<SocketAddr, &str> =
            std::collections::HashMap::new();
        for (name, _, addr) in &named {
            if let Some(other) = by_addr.insert(*addr, name) {
                return Err(ConfigError(format!(
                    "members {other:?} and {name:?} share the peer address {addr}"
                )));
            }
        }
        let mut identity = format!("token={token};");
        for (name, url, _) in &named {
            identity.push_str(&format!("{name}={url};"));
        }
        let members = named
            .into_iter()
            .enumerate()
            .map(|(index, (name, peer_url, peer_addr))| Member {
                id: index as NodeId + 1,
                name,
                peer_url,
                peer_addr,
            })
            .collect();
        Ok(Cluster {
            cluster_id: fnv1a64(identity.as_bytes()),
            members,
        })
    }

    /// A cluster of the given peer addresses, named `n1..`, with a cluster id from `token`.
    pub fn from_addrs(addrs: &[SocketAddr], token: &str) -> Cluster {
        let spec: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(index, addr)| format!("n{}=http://{addr}", index + 1))
            .collect();
        Cluster::parse(&spec.join(","), token)
            .unwrap_or_else(|error| panic!("addresses form a valid cluster: {error}"))
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|member| member.id == id)
    }

    pub fn member_named(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|member| member.name == name)
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|member| member.id).collect()
    }
}

/// `http://host:port` or `host:port` → a socket address. `https://` is refused: Synod
/// has no TLS yet, and serving such a URL in plain text would mislead.
pub fn resolve_url(url: &str) -> Result<SocketAddr, ConfigError> {
    if url.starts_with("https://") {
        return Err(ConfigError(format!(
            "{url:?}: https:// is not supported yet (Synod has no TLS, so the traffic would \
             be plain text); use http://"
        )));
    }
    if let Some((scheme, _)) = url
        .split_once("://")
        .filter(|(scheme, _)| *scheme != "http")
    {
        return Err(ConfigError(format!(
            "{url:?}: unsupported scheme {scheme:?}; use http://host:port"
        )));
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host_port = rest.trim_end_matches('/');
    host_port
        .to_socket_addrs()
        .map_err(|error| ConfigError(format!("cannot resolve {url:?}: {error}")))?
        .next()
        .ok_or_else(|| ConfigError(format!("{url:?} resolves to no address")))
}

/// FNV-1a: a stable 64-bit hash (the standard library's hasher may change between
/// releases, and cluster ids must not).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Everything one replica needs to run. [`ServerConfig::new`] fills in defaults.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub node_id: NodeId,
    pub cluster: Cluster,
    /// Holds `wal/`, `snap/` and the `member` identity file.
    pub data_dir: PathBuf,
    /// Advertised to peers for `MemberList`.
    pub client_urls: Vec<String>,
    /// Length of one tick of the core's logical clock.
    pub tick_interval: Duration,
    /// How often a leader with nothing to send heartbeats (etcd: `--heartbeat-interval`).
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in [timeout, 2·timeout) starts
    /// Phase 1 (etcd: `--election-timeout`). Also the acceptors' lease length.
    pub election_timeout: Duration,
    /// How much two nodes' clocks may differ in rate, in percent: the leader's read lease
    /// is shortened by this margin.
    pub max_clock_drift_percent: u64,
    /// How long a client request may wait (through failovers) before it fails.
    pub request_timeout: Duration,
    /// Take a snapshot and compact the log every this many applied slots.
    pub snapshot_interval_slots: u64,
    /// ... once the log since the last snapshot has grown by this share (percent) of the
    /// state's size; 0: the slot count alone decides (see
    /// `synod_replica::ReplicaConfig::snapshot_log_growth_percent`).
    pub snapshot_log_growth_percent: u64,
    /// Size of the chunks a snapshot is streamed to a lagging peer in.
    pub snapshot_chunk_bytes: usize,
    pub max_frame_bytes: usize,
    /// A client request larger than this is refused with etcd's "request is too large"
    /// (etcd's `--max-request-bytes`, default 1.5 MiB).
    pub max_request_bytes: usize,
    /// How linearizable reads are confirmed (lease, or a quorum round every time).
    pub read_mode: synod_core::ReadMode,
    pub wal_sync: SyncMode,
    pub wal_segment_bytes: u64,
    /// The KV store's history quota (etcd's `--quota-backend-bytes`); the same on every
    /// member, since writes over it fail while the log is applied.
    pub quota_backend_bytes: u64,
    /// etcd's `--auto-compaction-mode/-retention`; `None` disables it.
    pub auto_compaction: Option<crate::compactor::CompactionPolicy>,
    /// How often quiet watches that asked for progress get one (etcd's default 10 min).
    pub watch_progress_notify_interval: Duration,
    /// Serve `GET /debug/timeline` (`crate::timeline`); off by default, as etcd's
    /// `--enable-pprof`: whoever reaches the client port could otherwise switch the
    /// recording on.
    pub debug_timeline: bool,
}

impl ServerConfig {
    pub fn new(node_id: NodeId, cluster: Cluster, data_dir: impl Into<PathBuf>) -> ServerConfig {
        ServerConfig {
            node_id,
            cluster,
            data_dir: data_dir.into(),
            client_urls: Vec::new(),
            tick_interval: Duration::from_millis(10),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            max_clock_drift_percent: 10,
            request_timeout: Duration::from_secs(10),
            snapshot_interval_slots: 10_000,
            snapshot_log_growth_percent: 100,
            snapshot_chunk_bytes: 1 << 20,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            read_mode: synod_core::ReadMode::Lease,
            wal_sync: SyncMode::Fsync,
            wal_segment_bytes: 64 << 20,
            quota_backend_bytes: synod_kv::DEFAULT_QUOTA_BYTES,
            auto_compaction: None,
            watch_progress_notify_interval: Duration::from_secs(600),
            debug_timeline: false,
        }
    }

    pub fn member(&self) -> Result<&Member, ConfigError> {
        self.cluster.member(self.node_id).ok_or_else(|| {
            ConfigError(format!(
                "node id {} is not a member of the cluster",
                self.node_id
            ))
        })
    }

    fn ticks(&self, duration: Duration) -> u64 {
        let tick = self.tick_interval.as_micros().max(1);
        (duration.as_micros() / tick).max(1) as u64
    }

    /// The replica's configuration: the core's, the request timeout, the snapshot
    /// interval and the request size limit.
    pub fn replica_config(&self) -> Result<synod_replica::ReplicaConfig, ConfigError> {
        let core = self.core_config()?;
        let tick_nanos = self.tick_interval.as_nanos() as u64;
        let mut config = synod_replica::ReplicaConfig::new(core, rand::random());
        config.tick_nanos = tick_nanos;
        config.request_timeout_nanos = self.request_timeout.as_nanos() as u64;
        config.retry_after_nanos = self.election_timeout.as_nanos() as u64;
        config.snapshot_resend_after_nanos = 2 * config.retry_after_nanos;
        config.snapshot_interval_slots = self.snapshot_interval_slots;
        config.snapshot_log_growth_percent = self.snapshot_log_growth_percent;
        config.max_request_bytes = self.max_request_bytes;
        config.validate().map_err(ConfigError)?;
        Ok(config)
    }

    /// The protocol core's configuration: durations converted to ticks.
    pub fn core_config(&self) -> Result<synod_core::Config, ConfigError> {
        if self.tick_interval.is_zero() {
            return Err(ConfigError("the tick interval must be positive".into()));
        }
        // Rounded up to one tick these would run; refuse them instead of guessing.
        if self.heartbeat_interval.is_zero() {
            return Err(ConfigError(
                "the heartbeat interval must be positive (--heartbeat-interval)".into(),
            ));
        }
        if self.election_timeout.is_zero() {
            return Err(ConfigError(
                "the election timeout must be positive (--election-timeout)".into(),
            ));
        }
        let mut config = synod_core::Config::new(self.node_id, self.cluster.ids());
        config.election_timeout_ticks = self.ticks(self.election_timeout);
        config.heartbeat_interval_ticks = self.ticks(self.heartbeat_interval);
        config.retransmit_ticks = (config.heartbeat_interval_ticks * 2)
            .min(config.election_timeout_ticks)
            .max(1);
        config.lease_ticks = config.election_timeout_ticks;
        config.max_clock_drift_percent = self.max_clock_drift_percent;
        config.read_mode = self.read_mode;
        config.seed = rand::random();
        config.incarnation = rand::random();
        config.validate().map_err(|reason| {
            ConfigError(format!(
                "invalid timing (heartbeat {:?}, election timeout {:?}, tick {:?}): {reason}",
                self.heartbeat_interval, self.election_timeout, self.tick_interval
            ))
        })?;
        if self.snapshot_interval_slots == 0 {
            return Err(ConfigError(
                "the snapshot interval must be at least one slot".into(),
            ));
        }
        let largest_message =
            config.max_message_bytes + self.max_request_bytes + FRAME_OVERHEAD_BYTES;
        if largest_message > self.max_frame_bytes {
            return Err(ConfigError(format!(
                "messages of up to {largest_message} bytes (--max-request-bytes {} plus a batch) \
                 do not fit frames of at most {} bytes",
                self.max_request_bytes, self.max_frame_bytes
            )));
        }
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunk_bytes + 1024 > self.max_frame_bytes
        {
            return Err(ConfigError(format!(
                "snapshot chunks of {} bytes do not fit frames of at most {} bytes",
                self.snapshot_chunk_bytes, self.max_frame_bytes
            )));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_and_cluster_id_do_not_depend_on_flag_order() {
        let a = Cluster::parse(
            "n2=http://127.0.0.1:22380,n1=http://127.0.0.1:12380,n3=http://127.0.0.1:32380",
            "t",
        )
        .unwrap();
        let b = Cluster::parse(
            "n1=http://127.0.0.1:12380,n3=http://127.0.0.1:32380,n2=http://127.0.0.1:22380",
            "t",
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.member_named("n1").unwrap().id, 1);
        assert_eq!(a.member_named("n3").unwrap().peer_addr.port(), 32380);
    }

    #[test]
    fn the_token_and_the_member_list_change_the_cluster_id() {
        let base = Cluster::parse("n1=http://127.0.0.1:1", "t").unwrap();
        let other_token = Cluster::parse("n1=http://127.0.0.1:1", "u").unwrap();
        let other_url = Cluster::parse("n1=http://127.0.0.1:2", "t").unwrap();
        assert_ne!(base.cluster_id, other_token.cluster_id);
        assert_ne!(base.cluster_id, other_url.cluster_id);
    }

    #[test]
    fn bad_initial_clusters_are_explained() {
        let cases = [
            ("", "no member"),
            ("n1", "name=url"),
            ("=http://127.0.0.1:1", "empty name"),
            (
                "n1=http://127.0.0.1:1,n1=http://127.0.0.1:2",
                "appears twice",
            ),
            (
                "n1=http://127.0.0.1:1,n2=http://127.0.0.1:1",
                "share the peer address",
            ),
            // Not neighbours in name order: n1 and n3 share an address.
            (
                "n1=http://127.0.0.1:1,n2=http://127.0.0.1:2,n3=http://127.0.0.1:1",
                "share the peer address",
            ),
            ("n1=https://127.0.0.1:1", "https:// is not supported"),
            ("n1=unix://127.0.0.1:1", "unsupported scheme"),
            ("n1=http://no-port", "cannot resolve"),
        ];
        for (spec, expected) in cases {
            let error = Cluster::parse(spec, "t").unwrap_err();
            assert!(error.0.contains(expected), "{spec:?}: {error}");
        }
    }

    #[test]
    fn durations_become_ticks_and_bad_timings_are_refused() {
        let cluster = Cluster::parse("n1=http://127.0.0.1:1", "t").unwrap();
        let config = ServerConfig::new(1, cluster.clone(), "/tmp/x");
        let core = config.core_config().unwrap();
        assert_eq!(core.election_timeout_ticks, 100);
        assert_eq!(core.heartbeat_interval_ticks, 10);
        let mut bad = ServerConfig::new(1, cluster, "/tmp/x");
        bad.heartbeat_interval = Duration::from_secs(2);
        assert!(bad.core_config().unwrap_err().0.contains("heartbeat"));
        bad.heartbeat_interval = Duration::ZERO;
        assert!(bad.core_config().unwrap_err().0.contains("heartbeat"));
        bad.heartbeat_interval = Duration::from_millis(100);
        bad.election_timeout = Duration::ZERO;
        assert!(bad.core_config().unwrap_err().0.contains("election"));
    }
}
