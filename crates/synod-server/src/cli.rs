//! `synod node` and `synod dev`: flags, environment variables and process lifecycle.
//!
//! Flags that mean what an etcd flag means carry etcd's name. Every flag can also be set
//! through the environment as `SYNOD_<FLAG>` (`--data-dir` ↔ `SYNOD_DATA_DIR`).

use crate::config::{resolve_url, Cluster, ServerConfig};
use crate::node::{EtcdNode, Listeners};
use anyhow::{anyhow, bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use synod_storage::SyncMode;
use tokio::net::TcpListener;

/// `synod snapshot`: what to do with a backup that `etcdctl snapshot save` wrote.
#[derive(clap::Args, Clone, Debug)]
pub struct SnapshotArgs {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum SnapshotCommand {
    /// Makes a new data directory start a NEW cluster from a backup: its keys, history
    /// and revisions. Restore every member of the new cluster from the same file, each into
    /// its own data directory, then start them with `synod node --data-dir DIR ...`.
    Restore(RestoreArgs),
    /// Prints a snapshot file's hash, revision, key count and size as `etcdctl snapshot
    /// status` computes them (Synod's snapshots and etcd's alike).
    Status(StatusArgs),
}

#[derive(clap::Args, Clone, Debug)]
pub struct StatusArgs {
    /// The snapshot file (`etcdctl snapshot save FILE`).
    pub file: PathBuf,
    /// `table` (etcdctl's columns) or `json` (etcdctl's `-w json` fields).
    #[arg(long, short = 'w', default_value = "table", value_parser = ["table", "json"])]
    pub write_out: String,
}

#[derive(clap::Args, Clone, Debug)]
pub struct RestoreArgs {
    /// The snapshot (`etcdctl snapshot save FILE` against a Synod member, or against etcd:
    /// its keys, revisions, compaction and leases come over).
    pub file: PathBuf,
    /// The new member's data directory; must not exist or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// Runs `synod snapshot ...`.
pub fn run_snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    match args.command {
        SnapshotCommand::Restore(restore) => {
            let restored = crate::data_dir::restore_backup(&restore.file, &restore.data_dir)?;
            let source = match restored.origin {
                crate::snapshot_file::Origin::Synod => "Synod snapshot",
                crate::snapshot_file::Origin::SynodBackup => "Synod backup",
                crate::snapshot_file::Origin::Etcd => "etcd snapshot",
            };
            println!(
                "restored {} keys at revision {} (compacted at {}) from the {source} {} into {}",
                restored.keys,
                restored.revision,
                restored.compacted_revision,
                restore.file.display(),
                restore.data_dir.display()
            );
            Ok(())
        }
        SnapshotCommand::Status(args) => {
            let file = std::fs::read(&args.file)
                .map_err(|error| anyhow::anyhow!("{}: {error}", args.file.display()))?;
            let status = crate::snapshot_file::status(&file)
                .map_err(|error| anyhow::anyhow!("{}: {error}", args.file.display()))?;
            if args.write_out == "json" {
                println!("{}", serde_json::to_string(&status)?);
            } else {
                println!("hash      {:08x}", status.hash);
                println!("revision  {}", status.revision);
                println!("keys      {}", status.total_keys);
                println!("size      {} bytes", status.total_size);
            }
            Ok(())
        }
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct NodeArgs {
    /// This member's name in --initial-cluster.
    #[arg(long, env = "SYNOD_NAME", default_value = "default")]
    pub name: String,
    /// Where the write-ahead log and snapshots live (default: `<name>.synod`).
    #[arg(long, env = "SYNOD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to serve etcd v3 gRPC clients on.
    #[arg(
        long,
        env = "SYNOD_LISTEN_CLIENT_URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub listen_client_urls: String,
    /// Client URLs announced to the cluster (for `member list`) [default: the listen URLs].
    #[arg(long, env = "SYNOD_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// URL to accept peer connections on.
    #[arg(
        long,
        env = "SYNOD_LISTEN_PEER_URLS",
        default_value = "http://127.0.0.1:2380"
    )]
    pub listen_peer_urls: String,
    /// Every member as name=peer-url, comma-separated (this member's entry is where peers
    /// dial it).
    #[arg(
        long,
        env = "SYNOD_INITIAL_CLUSTER",
        default_value = "default=http://127.0.0.1:2380"
    )]
    pub initial_cluster: String,
    /// Distinguishes clusters with the same member list: nodes with different tokens
    /// refuse each other.
    #[arg(
        long,
        env = "SYNOD_INITIAL_CLUSTER_TOKEN",
        default_value = "synod-cluster"
    )]
    pub initial_cluster_token: String,
    /// URL to serve /metrics, /health and /version on (plain HTTP), beside the client
    /// URLs, which serve them too [default: none].
    #[arg(long, env = "SYNOD_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// Serve GET /debug/timeline on the client and metrics URLs: this member's
    /// request-path events, for `synod bench cluster` (as etcd's --enable-pprof, off by
    /// default).
    #[arg(long, env = "SYNOD_ENABLE_DEBUG_TIMELINE")]
    pub enable_debug_timeline: bool,
    /// Milliseconds between a leader's heartbeats.
    #[arg(long, env = "SYNOD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Milliseconds without a leader before a follower runs for election (also the
    /// acceptors' lease).
    #[arg(long, env = "SYNOD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Applied slots between snapshots (each snapshot compacts the log).
    #[arg(long, env = "SYNOD_SNAPSHOT_COUNT", default_value_t = 10_000)]
    pub snapshot_count: u64,
    /// ... and not before the commands applied since the last snapshot add up to this
    /// percent of the store's size, so a large store is not rewritten after every few
    /// thousand small writes (0: the count alone decides, as in etcd).
    #[arg(long, env = "SYNOD_SNAPSHOT_LOG_GROWTH_PERCENT", default_value_t = 100)]
    pub snapshot_log_growth_percent: u64,
    /// Milliseconds a client request may wait, through failovers, before it fails.
    #[arg(long, env = "SYNOD_REQUEST_TIMEOUT", default_value_t = 10_000)]
    pub request_timeout: u64,
    /// How much node clocks may differ in rate, in percent; shortens the read lease.
    #[arg(long, env = "SYNOD_MAX_CLOCK_DRIFT_PERCENT", default_value_t = 10)]
    pub max_clock_drift_percent: u64,
    /// Largest client request in bytes (etcd's flag and default, 1.5 MiB); larger ones
    /// are refused with "etcdserver: request is too large".
    #[arg(long, env = "SYNOD_MAX_REQUEST_BYTES", default_value_t = crate::config::DEFAULT_MAX_REQUEST_BYTES)]
    pub max_request_bytes: usize,
    /// How linearizable reads are confirmed: `lease` (the leader answers alone while
    /// a quorum's leases hold; assumes clock rates within --max-clock-drift-percent) or
    /// `read-index` (a heartbeat round every time; no clock assumption). docs/server.md.
    #[arg(long, env = "SYNOD_READ_MODE", default_value = "lease", value_parser = parse_read_mode)]
    pub read_mode: synod_core::ReadMode,
    /// Skip fdatasync: a machine crash loses acknowledged writes. For tests only.
    #[arg(long, env = "SYNOD_UNSAFE_NO_FSYNC")]
    pub unsafe_no_fsync: bool,
    /// Threads running the replica's async work (gRPC, peers, protocol). 1 (the
    /// default) keeps every hand-off on one thread, which measured fastest with three
    /// replicas and their clients sharing two CPUs (docs/server.md); raise it when one
    /// replica has many cores to itself. A leader's write-ahead log syncs on its own
    /// thread under load, on this one when a lone command is in flight; a follower's on
    /// this one when its log is idle (docs/latency.md).
    #[arg(long, env = "SYNOD_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: u16,
    /// etcd's: `periodic` (keep --auto-compaction-retention of time) or `revision` (keep
    /// that many revisions). The leader proposes the compactions through the log.
    #[arg(long, env = "SYNOD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// For `periodic` a duration (`1h`, `30m`, `10s`; a bare number is hours), for
    /// `revision` a count; 0 (the default) disables auto-compaction.
    #[arg(long, env = "SYNOD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// The history quota in bytes (etcd's flag and default, 2 GiB; 0 means the default):
    /// writes over it fail with "mvcc: database space exceeded" and raise the NOSPACE alarm.
    /// Every member must use the same value.
    #[arg(long, env = "SYNOD_QUOTA_BACKEND_BYTES", default_value_t = synod_kv::DEFAULT_QUOTA_BYTES)]
    pub quota_backend_bytes: u64,
    /// How often a watch created with `progress_notify` that saw no events gets a progress
    /// response (etcd's flag and default, 10m).
    #[arg(long, env = "SYNOD_WATCH_PROGRESS_NOTIFY_INTERVAL", default_value = "10m", value_parser = parse_interval)]
    pub experimental_watch_progress_notify_interval: Duration,
    /// error, warn, info, debug, trace or off (RUST_LOG, when set, wins).
    #[arg(long, env = "SYNOD_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
    /// `text` (human-readable lines) or `json` (one JSON object per line, for log
    /// collectors; etcd's `--log-format` default is json, ours is text).
    #[arg(long, env = "SYNOD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(clap::Args, Clone, Debug)]
pub struct DevArgs {
    /// Directory for the three members' data (and their logs).
    #[arg(long, env = "SYNOD_DEV_DATA_DIR", default_value = "synod-data")]
    pub data_dir: PathBuf,
    /// Client port of the first member; the others use +20000 and +30000 (etcd's local
    /// convention: 2379, 22379, 32379). Peers listen on 12380, 22380 and 32380 (client
    /// port + 10001, +1, +1), metrics on client port + 2.
    #[arg(long, env = "SYNOD_DEV_CLIENT_PORT", default_value_t = 2379)]
    pub client_port: u16,
    /// Skip fdatasync in the members (faster, unsafe).
    #[arg(long, env = "SYNOD_UNSAFE_NO_FSYNC")]
    pub unsafe_no_fsync: bool,
    /// Passed to the members: error, warn, info, debug, trace or off.
    #[arg(long, env = "SYNOD_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
    /// Passed to the members: `text` or `json`.
    #[arg(long, env = "SYNOD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written (`--log-format`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

fn split_urls(urls: &str) -> Vec<String> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect()
}

/// Installs a tracing subscriber writing to stderr (RUST_LOG wins over `level`); a
/// no-op when the program already installed one.
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

impl NodeArgs {
    /// The replica configuration these flags describe.
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let cluster = Cluster::parse(&self.initial_cluster, &self.initial_cluster_token)
            .context("--initial-cluster")?;
        let member = cluster.member_named(&self.name).ok_or_else(|| {
            anyhow!(
                "--name {:?} is not in --initial-cluster (members: {})",
                self.name,
                cluster
                    .members
                    .iter()
                    .map(|member| member.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.synod", self.name)));
        let mut config = ServerConfig::new(member.id, cluster.clone(), data_dir);
        config.client_urls = split_urls(
            self.advertise_client_urls
                .as_deref()
                .unwrap_or(&self.listen_client_urls),
        );
        config.heartbeat_interval = Duration::from_millis(self.heartbeat_interval);
        config.election_timeout = Duration::from_millis(self.election_timeout);
        config.snapshot_interval_slots = self.snapshot_count;
        config.snapshot_log_growth_percent = self.snapshot_log_growth_percent;
        config.request_timeout = Duration::from_millis(self.request_timeout);
        config.max_clock_drift_percent = self.max_clock_drift_percent;
        config.max_request_bytes = self.max_request_bytes;
        config.read_mode = self.read_mode;
        config.debug_timeline = self.enable_debug_timeline;
        config.auto_compaction = crate::compactor::CompactionPolicy::parse(
            &self.auto_compaction_mode,
            &self.auto_compaction_retention,
        )
        .map_err(|error| anyhow!(error))?;
        config.watch_progress_notify_interval = self.experimental_watch_progress_notify_interval;
        config.quota_backend_bytes = match self.quota_backend_bytes {
            0 => synod_kv::DEFAULT_QUOTA_BYTES,
            bytes => bytes,
        };
        if self.unsafe_no_fsync {
            config.wal_sync = SyncMode::None;
        }
        config.replica_config().context("timing and size flags")?;
        Ok(config)
    }
}

/// The levels `--log-level` takes. Anything else is refused: the log filter would read
/// an unknown word (`verbose`) as a module name and silence every log.
fn parse_interval(text: &str) -> Result<Duration, String> {
    crate::compactor::duration_with_unit(text)
        .filter(|interval| !interval.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive duration (500ms, 10s, 10m, 1h)"))
}

fn parse_log_level(level: &str) -> Result<String, String> {
    let level = level.trim().to_ascii_lowercase();
    match level.as_str() {
        "error" | "warn" | "info" | "debug" | "trace" | "off" => Ok(level),
        _ => Err(format!(
            "unknown log level {level:?}: use error, warn, info, debug, trace or off"
        )),
    }
}

/// Why peers would not reach this node where it listens: they dial its
/// `--initial-cluster` URL. Listening on every interface (`0.0.0.0`, `[::]`) at that
/// URL's port is fine.
pub fn peer_url_mismatch(listen: SocketAddr, member: &crate::config::Member) -> Option<String> {
    let same_port = listen.port() == member.peer_addr.port();
    if listen == member.peer_addr || (same_port && listen.ip().is_unspecified()) {
        return None;
    }
    Some(format!(
        "--listen-peer-urls is {listen}, but --initial-cluster tells the peers to dial {} \
         at {} ({}): they will not reach this member there",
        member.name, member.peer_url, member.peer_addr
    ))
}

fn parse_read_mode(mode: &str) -> Result<synod_core::ReadMode, String> {
    match mode {
        "lease" => Ok(synod_core::ReadMode::Lease),
        "read-index" => Ok(synod_core::ReadMode::ReadIndex),
        other => Err(format!(
            "unknown read mode {other:?}: use lease or read-index"
        )),
    }
}

async fn bind(url: &str, what: &str) -> anyhow::Result<TcpListener> {
    let addr = resolve_url(url).with_context(|| what.to_string())?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what}: cannot listen on {addr}"))
}

/// Runs one replica until SIGTERM or SIGINT (graceful stop), or until storage fails.
pub fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level, args.log_format);
    let config = args.server_config()?;
    if let (Ok(listen), Ok(member)) = (resolve_url(&args.listen_peer_urls), config.member()) {
        if let Some(warning) = peer_url_mismatch(listen, member) {
            tracing::warn!("{warning}");
        }
    }
    let mut builder = if args.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(usize::from(args.worker_threads));
        builder
    };
    let runtime = builder
        .enable_all()
        .thread_name("synod-node")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut clients = Vec::new();
        for url in split_urls(&args.listen_client_urls) {
            clients.push(bind(&url, "--listen-client-urls").await?);
        }
        if clients.is_empty() {
            bail!("--listen-client-urls names no URL");
        }
        let peer = bind(&args.listen_peer_urls, "--listen-peer-urls").await?;
        let metrics = match &args.listen_metrics_urls {
            Some(url) => Some(bind(url, "--listen-metrics-urls").await?),
            None => None,
        };
        let mut node = EtcdNode::start(
            config.clone(),
            Listeners {
                peer: Some(peer),
                clients,
                metrics,
            },
        )
        .await
        .context("starting the replica")?;
        tracing::info!(
            name = %args.name,
            node = config.node_id,
            cluster_id = %format!("{:016x}", config.cluster.cluster_id),
            data_dir = %config.data_dir.display(),
            "synod node is up"
        );
        let reason = wait_for_stop(&mut node).await?;
        tracing::info!(%reason, "stopping gracefully");
        node.stop().await.context("stopping the replica")?;
        Ok(())
    })
}

/// Resolves on SIGTERM, SIGINT or SIGHUP (with the signal's name); fails if the
/// replica died. SIGHUP (the terminal went away) stops gracefully too, rather than the
/// default of dying on the spot.
async fn wait_for_stop(node: &mut EtcdNode) -> anyhow::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate =
            signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        tokio::select! {
            _ = terminate.recv() => Ok("SIGTERM"),
            _ = interrupt.recv() => Ok("SIGINT"),
            _ = hangup.recv() => Ok("SIGHUP"),
            result = node.server_mut().stopped() => match result {
                Ok(()) => Ok("the replica stopped"),
                Err(error) => Err(anyhow!("the replica failed: {error}")),
            },
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Ok("Ctrl-C"),
            result = node.server_mut().stopped() => match result {
                Ok(()) => Ok("the replica stopped"),
                Err(error) => Err(anyhow!("the replica failed: {error}")),
            },
        }
    }
}

/// The `synod node` arguments of member `index` (0-based) of the dev cluster.
pub fn dev_member_args(args: &DevArgs, index: usize) -> anyhow::Result<Vec<String>> {
    let ports = dev_ports(args.client_port)?;
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(member, (_, peer, _))| format!("n{}=http://127.0.0.1:{peer}", member + 1))
        .collect::<Vec<_>>()
        .join(",");
    let (client, peer, metrics) = ports[index];
    let mut member = vec![
        "node".to_string(),
        format!("--name=n{}", index + 1),
        format!(
            "--data-dir={}",
            args.data_dir.join(format!("n{}", index + 1)).display()
        ),
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"),
        format!("--initial-cluster={initial_cluster}"),
        "--initial-cluster-token=synod-dev".to_string(),
        format!("--log-level={}", args.log_level),
        format!("--log-format={}", args.log_format.as_str()),
    ];
    if args.unsafe_no_fsync {
        member.push("--unsafe-no-fsync".to_string());
    }
    Ok(member)
}

/// (client, peer, metrics) ports of the three dev members.
fn dev_ports(client_port: u16) -> anyhow::Result<[(u16, u16, u16); 3]> {
    let mut ports = [(0, 0, 0); 3];
    let base = u32::from(client_port);
    // etcd's Procfile: clients 2379, 22379, 32379; peers 12380, 22380, 32380.
    let layout = [
        (base, base + 10_001, base + 2),
        (base + 20_000, base + 20_001, base + 20_002),
        (base + 30_000, base + 30_001, base + 30_002),
    ];
    if base + 30_002 > u32::from(u16::MAX) {
        bail!("--client-port {client_port} leaves no room for the members' ports (it must be at most 35533)");
    }
    for (index, (client, peer, metrics)) in layout.into_iter().enumerate() {
        ports[index] = (client as u16, peer as u16, metrics as u16);
    }
    Ok(ports)
}

struct DevMember {
    name: String,
    child: Child,
    /// The shell command that starts this member again, as `synod dev` started it.
    restart: String,
}

/// How long `synod dev` waits for every member to serve before it gives up.
const DEV_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts a local three-member cluster, each member its own `synod node` child process
/// (this executable), prints the endpoints once every member serves, and stops them all
/// on Ctrl-C, SIGTERM or SIGHUP. The members die with `synod dev` even when it is
/// killed with SIGKILL (their parent-death signal).
pub fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    let executable = std::env::current_exe().context("locating the synod executable")?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let ports = dev_ports(args.client_port)?;
    let interrupted = install_interrupt_flag()?;
    let mut members: Vec<DevMember> = Vec::new();
    let mut group = None;
    for index in 0..3 {
        match spawn_dev_member(&args, index, &executable, group) {
            Ok(member) => {
                group.get_or_insert(member.child.id());
                members.push(member);
            }
            Err(error) => {
                stop_members(&mut members);
                return Err(error);
            }
        }
    }
    let metrics_ports: Vec<u16> = ports.iter().map(|(_, _, metrics)| *metrics).collect();
    if let Err(error) = wait_until_serving(&mut members, &metrics_ports, &interrupted, &args) {
        stop_members(&mut members);
        return Err(error);
    }
    print_dev_banner(&args, &ports, &members);
    // A member that exits (say, killed to watch a failover) is reported; the others keep
    // serving until Ctrl-C, or until none is left.
    let mut reported = vec![false; members.len()];
    let outcome = loop {
        if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            break Ok(());
        }
        for (index, member) in members.iter_mut().enumerate() {
            if reported[index] {
                continue;
            }
            if let Ok(Some(status)) = member.child.try_wait() {
                reported[index] = true;
                eprintln!(
                    "synod dev: member {} exited ({status}); see {}; restart it with:\n  {}",
                    member.name,
                    args.data_dir.join(format!("{}.log", member.name)).display(),
                    member.restart
                );
            }
        }
        if reported.iter().all(|exited| *exited) {
            break Err(anyhow!("every member exited"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("synod dev: stopping the members");
    stop_members(&mut members);
    outcome
}

/// Starts member `index` with its log appended to `<data-dir>/n<i>.log`, in the
/// members' process group (`group`: the first member's pid; `None` makes a new one).
fn spawn_dev_member(
    args: &DevArgs,
    index: usize,
    executable: &Path,
    group: Option<u32>,
) -> anyhow::Result<DevMember> {
    let name = format!("n{}", index + 1);
    let log_path = args.data_dir.join(format!("{name}.log"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let member_args = dev_member_args(args, index)?;
    let mut command = Command::new(executable);
    command
        .args(&member_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    die_with_parent(&mut command, group);
    let child = command
        .spawn()
        .with_context(|| format!("starting member {name} ({})", executable.display()))?;
    let mut words = vec![executable.display().to_string()];
    words.extend(member_args);
    let restart = format!(
        "{} 2>>{}",
        shell_words(&words),
        shell_words(&[log_path.display().to_string()])
    );
    Ok(DevMember {
        name,
        child,
        restart,
    })
}

/// `words` as one shell command line (quoted by `shlex`; a word holding a NUL byte,
/// which no shell can pass, is shown as it is).
fn shell_words(words: &[String]) -> String {
    shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| words.join(" "))
}

/// The members share one process group (`kill -- -PGID` stops them all, and a
/// terminal's Ctrl-C reaches only `synod dev`, which stops them in order), and on Linux
/// each gets SIGTERM when `synod dev` dies, however it dies.
///
/// The signal comes when the *thread* that spawned the child exits (prctl(2)): spawn from
/// a thread that lives as long as the children should (the main thread, a runtime's
/// worker), never from a blocking pool's.
#[cfg(unix)]
pub fn die_with_parent(command: &mut Command, group: Option<u32>) {
    use std::os::unix::process::CommandExt;
    command.process_group(group.map_or(0, |pgid| pgid as i32));
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec, and calls only
        // prctl(2) and getppid(2), which are async-signal-safe; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before prctl: then no signal will come.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
}

#[cfg(not(unix))]
pub fn die_with_parent(_command: &mut Command, _group: Option<u32>) {}

/// Waits until every member answers HTTP on its metrics port, which it serves only once
/// its replica has recovered and its client endpoints are up.
fn wait_until_serving(
    members: &mut [DevMember],
    metrics_ports: &[u16],
    interrupted: &std::sync::atomic::AtomicBool,
    args: &DevArgs,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEV_START_TIMEOUT;
    let mut serving = vec![false; members.len()];
    while !serving.iter().all(|up| *up) {
        if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            bail!("interrupted while the members were starting");
        }
        for (index, member) in members.iter_mut().enumerate() {
            if let Ok(Some(status)) = member.child.try_wait() {
                bail!(
                    "member {} exited while starting ({status}); see {}",
                    member.name,
                    args.data_dir.join(format!("{}.log", member.name)).display()
                );
            }
            serving[index] = serving[index] || answers_http(metrics_ports[index]);
        }
        if Instant::now() > deadline {
            bail!(
                "the members did not all serve within {DEV_START_TIMEOUT:?}; see the logs in {}",
                args.data_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// True when an HTTP server answers `GET /version` on this loopback port.
fn answers_http(port: u16) -> bool {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
    else {
        return false;
    };
    let timeout = Some(Duration::from_millis(500));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    if stream
        .write_all(b"GET /version HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 8];
    matches!(stream.read_exact(&mut head), Ok(()) if head.starts_with(b"HTTP/1."))
}

fn print_dev_banner(args: &DevArgs, ports: &[(u16, u16, u16); 3], members: &[DevMember]) {
    println!(
        "synod dev: 3-member cluster, data and logs in {}",
        args.data_dir.display()
    );
    for (member, (client, peer, metrics)) in members.iter().zip(ports.iter()) {
        println!(
            "  {}  pid {}  client http://127.0.0.1:{client}  peer http://127.0.0.1:{peer}  metrics http://127.0.0.1:{metrics}/metrics",
            member.name,
            member.child.id()
        );
    }
    println!("restart a member that was stopped with its command:");
    for member in members {
        println!("  {}: {}", member.name, member.restart);
    }
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(client, _, _)| format!("127.0.0.1:{client}"))
        .collect();
    println!(
        "try:  ETCDCTL_API=3 etcdctl --endpoints={} put hello world",
        endpoints.join(",")
    );
    if let Some(first) = members.first() {
        println!(
            "Ctrl-C stops the cluster (the members are process group {}; they also stop if synod dev dies).",
            first.child.id()
        );
    }
}

/// A flag set by SIGINT, SIGTERM or SIGHUP.
fn install_interrupt_flag() -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = std::sync::Arc::clone(&flag);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal handler")?;
    std::thread::Builder::new()
        .name("synod-dev-signals".to_string())
        .spawn(move || {
            runtime.block_on(async {
                stop_requested().await;
                set.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        })
        .context("starting the signal thread")?;
    Ok(flag)
}

/// Returns once the process is asked to stop: SIGTERM, SIGINT or SIGHUP (Ctrl-C where
/// there are no Unix signals). Never returns if the handlers cannot be installed.
pub async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut terminate), Ok(mut interrupt), Ok(mut hangup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
            _ = hangup.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGTERM to every member (a graceful stop), then SIGKILL to any still running after
/// ten seconds.
fn stop_members(members: &mut [DevMember]) {
    for member in members.iter_mut() {
        terminate(&mut member.child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for member in members.iter_mut() {
        loop {
            match member.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    eprintln!("synod dev: member {} did not stop; killing it", member.name);
                    let _ = member.child.kill();
                    let _ = member.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

#[cfg(unix)]
fn terminate(child: &mut Child) {
    let Ok(pid) = i32::try_from(child.id()) else {
        let _ = child.kill();
        return;
    };
    // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is shared.
    let result = unsafe { libc::kill(pid, libc::SIGTERM) };
    if result != 0 {
        let _ = child.kill();
    }
}

#[cfg(not(unix))]
fn terminate(child: &mut Child) {
    let _ = child.kill();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct NodeCli {
        #[command(flatten)]
        args: NodeArgs,
    }

    #[derive(Parser)]
    struct DevCli {
        #[command(flatten)]
        args: DevArgs,
    }

    #[test]
    fn node_flags_use_etcd_names_and_defaults() {
        let cli = NodeCli::try_parse_from([
            "synod",
            "--name=n2",
            "--initial-cluster=n1=http://127.0.0.1:12380,n2=http://127.0.0.1:22380",
            "--listen-client-urls=http://127.0.0.1:22379",
            "--heartbeat-interval=50",
            "--election-timeout=500",
        ])
        .unwrap();
        let config = cli.args.server_config().unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.data_dir, PathBuf::from("n2.synod"));
        assert_eq!(config.client_urls, ["http://127.0.0.1:22379"]);
        assert_eq!(config.election_timeout, Duration::from_millis(500));
        assert_eq!(config.wal_sync, SyncMode::Fsync);
    }

    #[test]
    fn a_name_missing_from_the_cluster_and_bad_timings_are_explained() {
        let cli = NodeCli::try_parse_from(["synod", "--name=n9"]).unwrap();
        let error = cli.args.server_config().unwrap_err().to_string();
        assert!(error.contains("not in --initial-cluster"), "{error}");
        let cli = NodeCli::try_parse_from([
            "synod",
            "--heartbeat-interval=2000",
            "--election-timeout=1000",
        ])
        .unwrap();
        let error = format!("{:#}", cli.args.server_config().unwrap_err());
        assert!(error.contains("heartbeat"), "{error}");
    }

    #[test]
    fn an_unknown_log_level_is_refused() {
        // Before, `verbose` was taken as a module name and silenced every log.
        let error = NodeCli::try_parse_from(["synod", "--log-level=verbose"])
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("unknown log level"), "{error}");
        let cli = NodeCli::try_parse_from(["synod", "--log-level=DEBUG"]).unwrap();
        assert_eq!(cli.args.log_level, "debug");
        assert!(DevCli::try_parse_from(["synod", "--log-level=loud"]).is_err());
    }

    #[test]
    fn a_listen_peer_url_other_than_the_members_own_is_flagged() {
        let cluster = Cluster::parse("n1=http://127.0.0.1:12380", "t").unwrap();
        let member = cluster.member_named("n1").unwrap();
        let at = |addr: &str| addr.parse::<SocketAddr>().unwrap();
        assert_eq!(peer_url_mismatch(at("127.0.0.1:12380"), member), None);
        assert_eq!(peer_url_mismatch(at("0.0.0.0:12380"), member), None);
        let warning = peer_url_mismatch(at("127.0.0.1:2380"), member).expect("flagged");
        assert!(
            warning.contains("dial n1 at http://127.0.0.1:12380"),
            "{warning}"
        );
        assert!(peer_url_mismatch(at("0.0.0.0:2380"), member).is_some());
    }

    #[test]
    fn https_urls_and_a_zero_heartbeat_are_refused() {
        let cli =
            NodeCli::try_parse_from(["synod", "--initial-cluster=default=https://127.0.0.1:2380"])
                .unwrap();
        let error = format!("{:#}", cli.args.server_config().unwrap_err());
        assert!(error.contains("https:// is not supported"), "{error}");
        let cli = NodeCli::try_parse_from(["synod", "--heartbeat-interval=0"]).unwrap();
        let error = format!("{:#}", cli.args.server_config().unwrap_err());
        assert!(
            error.contains("heartbeat interval must be positive"),
            "{error}"
        );
    }

    #[test]
    fn dev_members_follow_the_local_cluster_convention() {
        let cli = DevCli::try_parse_from(["synod"]).unwrap();
        let second = dev_member_args(&cli.args, 1).unwrap();
        assert_eq!(second[0], "node");
        assert!(second.contains(&"--listen-client-urls=http://127.0.0.1:22379".to_string()));
        assert!(second.contains(&"--listen-peer-urls=http://127.0.0.1:22380".to_string()));
        let cluster = second
            .iter()
            .find(|arg| arg.starts_with("--initial-cluster="))
            .unwrap();
        assert_eq!(
            cluster,
            "--initial-cluster=n1=http://127.0.0.1:12380,n2=http://127.0.0.1:22380,n3=http://127.0.0.1:32380"
        );
        let cli = DevCli::try_parse_from(["synod", "--client-port=40000"]).unwrap();
        assert!(dev_member_args(&cli.args, 0).is_err());
    }
}
