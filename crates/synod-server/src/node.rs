//! [`EtcdNode`]: a KV replica with its etcd client endpoints (gRPC, and `/health`,
//! `/metrics`, `/version` on the same port) and its metrics endpoint — what `synod node`
//! runs, and what the tests start in-process.

use crate::applied::AppliedFeed;
use crate::compactor::{AutoCompactor, CompactionPolicy};
use crate::concurrency::Concurrency;
use crate::config::ServerConfig;
use crate::etcd::EtcdApi;
use crate::grpc_metrics::count_grpc;
use crate::http::{serve_http, HttpLimits, HttpState};
use crate::lease::{LeaseService, LeaseSettings, SharedLessor};
use crate::watch::{WatchSettings, WatchTask};
use crate::{Consistency, Server, ServerError};
use std::net::SocketAddr;
use std::time::Duration;
use synod_kv::{Command, CompactRequest, KvStore, Op, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt as _;

/// How long a graceful stop lets in-flight client requests finish.
const GRACEFUL_STOP: Duration = Duration::from_secs(2);

pub struct EtcdNode {
    server: Server<KvStore>,
    client_addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    grpc: Vec<JoinHandle<()>>,
    metrics_task: Option<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
    applied: AppliedFeed<KvStore>,
}

/// Listeners an [`EtcdNode`] serves on; `peer: None` binds the member's peer address.
pub struct Listeners {
    pub peer: Option<TcpListener>,
    pub clients: Vec<TcpListener>,
    pub metrics: Option<TcpListener>,
}

/// How long `/health` waits for its linearizable read: etcd's request timeout (5 s plus
/// two election timeouts), or the node's own request timeout if that is shorter.
fn health_timeout(config: &ServerConfig) -> Duration {
    (Duration::from_secs(5) + 2 * config.election_timeout).min(config.request_timeout)
}

impl EtcdNode {
    pub async fn start(
        mut config: ServerConfig,
        listeners: Listeners,
    ) -> Result<EtcdNode, ServerError> {
        let empty = KvStore::new().with_quota_bytes(config.quota_backend_bytes);
        let (store, restored_from) = crate::data_dir::initial_state(&config.data_dir, empty)?;
        // A cluster started from a backup is another cluster: its members agree on the
        // backup, or their ids differ and they refuse each other.
        config.cluster.cluster_id ^= restored_from;
        let auto_compaction = config.auto_compaction;
        // The lessor sees every state the replica applies (which leases exist, and whose
        // epoch it is); the watch task and lock waiters follow it while they need it.
        let applied = AppliedFeed::new();
        let lessor = SharedLessor::new(config.node_id, config.election_timeout);
        let lease_settings = LeaseSettings {
            cluster_id: config.cluster.cluster_id,
            member_id: config.node_id,
            min_ttl_seconds: LeaseSettings::min_ttl_for(config.election_timeout),
            pass_interval: config.heartbeat_interval,
            request_timeout: config.request_timeout,
            promotion_extension: config.election_timeout,
        };
        let observed_lessor = lessor.clone();
        let feed = applied.clone();
        let observer: crate::Observer<KvStore> = Box::new(move |store: &KvStore| {
            observed_lessor.on_applied(store);
            feed.publish(store);
        });
        let peer = match listeners.peer {
            Some(peer) => peer,
            None => {
                let addr = config.member()?.peer_addr;
                TcpListener::bind(addr).await.map_err(|error| {
                    ServerError::Io(format!("binding peer address {addr}: {error}"))
                })?
            }
        };
        let watch_settings = WatchSettings {
            cluster_id: config.cluster.cluster_id,
            member_id: config.node_id,
            progress_interval: config.watch_progress_notify_interval,
            max_response_bytes: config.max_request_bytes,
            election_timeout: config.election_timeout,
        };
        let server = Server::start_observed(config, store, peer, Some(observer)).await?;
        let mut grpc_tasks = Vec::new();
        let (shutdown, _) = watch::channel(false);
        let watch_service = {
            let (watches, watch_task) = WatchTask::spawn(
                applied.clone(),
                server.handle(),
                watch_settings.clone(),
                server.metrics(),
                shutdown.subscribe(),
            );
            grpc_tasks.push(watch_task);
            watches.service(&watch_settings, server.metrics())
        };
        let leases = LeaseService::new(server.handle(), lessor, lease_settings, server.directory());
        grpc_tasks.push(tokio::spawn(
            leases.clone().run_lessor(shutdown.subscribe()),
        ));
        let api = EtcdApi::new(
            server.handle(),
            server.config().cluster.clone(),
            server.directory(),
            server.metrics(),
            watch_service,
        )
        .with_leases(leases.server())
        .with_concurrency(Concurrency::new(
            server.handle(),
            applied.clone(),
            server.config().cluster.cluster_id,
            server.node_id(),
        ));
        let http = HttpState {
            handle: server.handle(),
            metrics: server.metrics(),
            health_timeout: health_timeout(server.config()),
            debug_timeline: server.config().debug_timeline,
        };
        let mut grpc = grpc_tasks;
        let mut client_addrs = Vec::new();
        for listener in listeners.clients {
            let addr = listener
                .local_addr()
                .map_err(|error| ServerError::Io(error.to_string()))?;
            client_addrs.push(addr);
            // gRPC and the HTTP endpoints on one port, as etcd serves them: the server
            // takes HTTP/1.1 as well as HTTP/2, and the router tells them apart by path
            // (and, for unknown paths, by content type).
            let router = api
                .clone()
                .router()
                .merge(crate::http::routes(http.clone()))
                .layer(axum::middleware::from_fn_with_state(
                    server.metrics(),
                    count_grpc,
                ));
            let routes = tonic::service::Routes::from(router);
            let mut stop = shutdown.subscribe();
            let node = server.node_id();
            grpc.push(tokio::spawn(async move {
                // `tcp_nodelay` on the builder only reaches sockets tonic accepts itself;
                // these come from our listener, so set it here. Without it Nagle's
                // algorithm meets the client's delayed ACK and small replies wait ~40 ms.
                let incoming = TcpListenerStream::new(listener).map(|stream| {
                    if let Ok(stream) = &stream {
                        let _ = stream.set_nodelay(true);
                    }
                    stream
                });
                let result = tonic::transport::Server::builder()
                    .accept_http1(true)
                    .tcp_nodelay(true)
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.changed().await;
                    })
                    .await;
                if let Err(error) = result {
                    tracing::error!(node, %addr, %error, "the client endpoint failed");
                }
            }));
            tracing::info!(
                node = server.node_id(),
                %addr,
                "serving etcd v3 gRPC clients, /health, /metrics and /version"
            );
        }
        if let Some(policy) = auto_compaction {
            grpc.push(tokio::spawn(auto_compact(
                server.handle(),
                policy,
                shutdown.subscribe(),
            )));
        }
        let (metrics_addr, metrics_task) = match listeners.metrics {
            Some(listener) => {
                let addr = listener
                    .local_addr()
                    .map_err(|error| ServerError::Io(error.to_string()))?;
                tracing::info!(node = server.node_id(), %addr, "serving /metrics, /health and /version");
                let serving = serve_http(
                    listener,
                    crate::http::routes(http),
                    HttpLimits::default(),
                    server.metrics(),
                    shutdown.subscribe(),
                );
                (Some(addr), Some(tokio::spawn(serving)))
            }
            None => (None, None),
        };
        Ok(EtcdNode {
            server,
            client_addrs,
            metrics_addr,
            grpc,
            metrics_task,
            shutdown,
            applied,
        })
    }

    /// The applied store as the watch task and lock waiters follow it.
    pub fn applied(&self) -> &AppliedFeed<KvStore> {
        &self.applied
    }

    pub fn server(&self) -> &Server<KvStore> {
        &self.server
    }

    pub fn server_mut(&mut self) -> &mut Server<KvStore> {
        &mut self.server
    }

    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops accepting clients, lets in-flight requests finish for a moment, then stops
    /// the replica (every queued log write completes).
    pub async fn stop(self) -> Result<(), ServerError> {
        let _ = self.shutdown.send(true);
        for task in self.grpc {
            let abort = task.abort_handle();
            if tokio::time::timeout(GRACEFUL_STOP, task).await.is_err() {
                abort.abort();
            }
        }
        if let Some(task) = self.metrics_task {
            task.abort();
        }
        self.server.stop().await
    }
}

/// Feeds the auto-compaction policy the time, the revision and the leadership, and proposes
/// what it asks for. A failed proposal (a failover, or the revision already compacted by
/// someone else) is only logged: the next poll tries again.
async fn auto_compact(
    handle: crate::Handle<KvStore>,
    policy: CompactionPolicy,
    mut stop: watch::Receiver<bool>,
) {
    let mut compactor = AutoCompactor::new(policy);
    let started = tokio::time::Instant::now();
    let mut every = tokio::time::interval(policy.poll_interval().min(Duration::from_secs(1)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let Ok(status) = handle.status().await else {
            return;
        };
        let is_leader = status.leader == Some(status.node_id);
        let read = handle.read(Consistency::Serializable, |store: &KvStore| {
            (store.revision(), store.compacted_revision())
        });
        let Ok((revision, compacted)) = read.await else {
            return;
        };
        let now = started.elapsed();
        let Some(target) = compactor.poll(now, revision, compacted, is_leader) else {
            continue;
        };
        let command = Command::unsessioned(Op::Compact(CompactRequest {
            revision: target,
            physical: false,
        }));
        match handle
            .propose(command.encode())
            .await
            .map(|bytes| Response::decode(&bytes))
        {
            Ok(Ok(Response { result: Ok(_), .. })) => {
                tracing::info!(node = handle.node_id(), revision = target, "auto-compacted");
            }
            other => {
                tracing::warn!(
                    node = handle.node_id(),
                    revision = target,
                    ?other,
                    "auto-compaction failed"
                );
            }
        }
    }
}
