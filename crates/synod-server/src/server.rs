//! [`Server`]: one replica running in the caller's tokio runtime, generic over the
//! state machine, and [`Handle`], the client-facing API for embedders.

use crate::config::{ConfigError, ServerConfig};
use crate::data_dir::{amnesia_error, check_member_file, write_member_file, DataDirLock};
use crate::driver::{Channels, Driver, DriverSettings, ReadFn, Request};
use crate::metrics::Metrics;
use crate::transport::PEER_QUEUE_FRAMES;
use crate::transport::{
    accept_peers, dial_peer, Directory, PeerInfo, PeerTiming, TransportContext,
};
use crate::wire::Hello;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use synod_core::{Ballot, NodeId, Role, Slot};
use synod_kv::StateMachine;
use synod_replica::{Replica, Restored};
use synod_storage::{GroupCommit, SnapshotStore, Wal, WalIdentity, WalOptions};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// How a read is served.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read started: the leader confirms
    /// it still leads (by its lease, or one quorum round) and the read waits until this
    /// replica applied the leader's commit index.
    Linearizable,
    /// This replica's current state, possibly stale; no communication.
    Serializable,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ServerError {
    Config(String),
    /// Storage failed; the replica stops rather than risk forgetting a promise.
    Storage(String),
    /// The data directory cannot be recovered as it is.
    Recovery(String),
    /// Another process holds the data directory's lock (`pid` when it could be read).
    DataDirInUse {
        dir: std::path::PathBuf,
        pid: Option<u32>,
    },
    Io(String),
    /// No leader could serve the request in time (it may or may not have taken effect).
    Timeout {
        after: Duration,
    },
    /// The request is larger than `--max-request-bytes`; it was not proposed.
    TooLarge {
        bytes: usize,
        limit: usize,
    },
    /// The replica is shutting down.
    Stopped,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Config(reason) => write!(f, "configuration error: {reason}"),
            ServerError::Storage(reason) => write!(f, "storage error: {reason}"),
            ServerError::Recovery(reason) => {
                write!(f, "cannot recover the data directory: {reason}")
            }
            ServerError::DataDirInUse { dir, pid } => {
                let holder = pid.map_or("another process (pid unknown)".to_string(), |pid| {
                    format!("another process, pid {pid}")
                });
                write!(
                    f,
                    "data directory {} is in use by {holder}, which holds {}: two processes \
                     on one data directory would both act as this member and break Paxos. \
                     Stop that process first, or give this one its own --data-dir",
                    dir.display(),
                    dir.join("lock").display()
                )
            }
            ServerError::Io(reason) => write!(f, "i/o error: {reason}"),
            ServerError::Timeout { after } => write!(
                f,
                "request timed out after {after:?} without a leader able to serve it"
            ),
            ServerError::TooLarge { bytes, limit } => write!(
                f,
                "request is too large: {bytes} bytes, the limit is {limit} (--max-request-bytes)"
            ),
            ServerError::Stopped => write!(f, "the replica is stopped"),
        }
    }
}

impl std::error::Error for ServerError {}

impl From<ConfigError> for ServerError {
    fn from(error: ConfigError) -> Self {
        ServerError::Config(error.0)
    }
}

/// Why a leadership transfer ([`Handle::move_leader`]) did not hand the leadership over.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MoveLeaderError {
    /// Refused at once: this member does not lead, or the target is not a member.
    Refused(synod_core::TransferError),
    /// The target did not take over within an election timeout; this member leads on
    /// (if it still can).
    TimedOut,
    /// The replica is shutting down.
    Stopped,
}

impl fmt::Display for MoveLeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveLeaderError::Refused(error) => write!(f, "leadership transfer refused: {error}"),
            MoveLeaderError::TimedOut => {
                write!(f, "the target did not take the leadership over in time")
            }
            MoveLeaderError::Stopped => write!(f, "the replica is stopped"),
        }
    }
}

impl std::error::Error for MoveLeaderError {}

/// A replica's view of itself.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub promised: Ballot,
    pub commit_index: Slot,
    pub applied_slot: Slot,
    pub last_slot: Slot,
    /// The newest snapshot this replica holds (0: none).
    pub snapshot_slot: Slot,
    pub phase1_runs: u64,
    pub wal_disk_bytes: u64,
    pub pending_proposals: usize,
}

/// Submits proposals and reads to one replica. Cheap to clone.
pub struct Handle<S> {
    requests: mpsc::Sender<Request<S>>,
    node_id: NodeId,
}

impl<S> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Handle {
            requests: self.requests.clone(),
            node_id: self.node_id,
        }
    }
}

impl<S: StateMachine> Handle<S> {
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Replicates `command` and returns the state machine's response once it is applied
    /// at this replica. Works at any replica (followers forward to the leader); through a
    /// failover the runtime proposes again until the request deadline, and each command
    /// is applied exactly once.
    pub async fn propose(&self, command: impl Into<Bytes>) -> Result<Bytes, ServerError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::Propose {
                payload: command.into(),
                reply,
            })
            .await
            .map_err(|_| ServerError::Stopped)?;
        response.await.map_err(|_| ServerError::Stopped)?
    }

    /// Runs `read` against the state machine at the given consistency.
    pub async fn read<R, F>(&self, consistency: Consistency, read: F) -> Result<R, ServerError>
    where
        R: Send + 'static,
        F: FnOnce(&S) -> R + Send + 'static,
    {
        let (reply, response) = oneshot::channel();
        let read: ReadFn<S> = Box::new(move |state: Result<&S, ServerError>| {
            let _ = reply.send(state.map(read));
        });
        self.requests
            .send(Request::Read { consistency, read })
            .await
            .map_err(|_| ServerError::Stopped)?;
        response.await.map_err(|_| ServerError::Stopped)?
    }

    /// Runs `run` on the replica's task with its leadership ballot if it is the leader and
    /// holds the leader lease at this moment (else `None`), and the state machine as applied.
    pub async fn with_leader_lease<R, F>(&self, run: F) -> Result<R, ServerError>
    where
        R: Send + 'static,
        F: FnOnce(Option<synod_core::Ballot>, &S) -> R + Send + 'static,
    {
        let (reply, response) = oneshot::channel();
        let run: crate::driver::LeaderLeaseFn<S> = Box::new(move |lease, state: &S| {
            let _ = reply.send(run(lease, state));
        });
        self.requests
            .send(Request::WithLeaderLease { run })
            .await
            .map_err(|_| ServerError::Stopped)?;
        response.await.map_err(|_| ServerError::Stopped)
    }

    /// Hands the leadership to member `target` (etcd's `MoveLeader`): answered once this
    /// member learned that the target leads, or after an election timeout without it.
    /// Only the leader takes it; `target` being this member is done at once.
    pub async fn move_leader(&self, target: NodeId) -> Result<(), MoveLeaderError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::MoveLeader { target, reply })
            .await
            .map_err(|_| MoveLeaderError::Stopped)?;
        response.await.map_err(|_| MoveLeaderError::Stopped)?
    }

    pub async fn status(&self) -> Result<NodeStatus, ServerError> {
        let (reply, response) = oneshot::channel();
        self.requests
            .send(Request::Status { reply })
            .await
            .map_err(|_| ServerError::Stopped)?;
        response.await.map_err(|_| ServerError::Stopped)
    }
}

/// Sees the state machine after commands were applied (see [`Server::start_observed`]).
pub type Observer<S> = Box<dyn FnMut(&S) + Send>;

/// One running replica: its driver, peer transport and storage.
pub struct Server<S: StateMachine> {
    handle: Handle<S>,
    config: ServerConfig,
    peer_addr: SocketAddr,
    metrics: Arc<Metrics>,
    directory: Directory,
    stop: watch::Sender<bool>,
    driver: Option<JoinHandle<Result<(), ServerError>>>,
    transport: Vec<JoinHandle<()>>,
    /// Released when the server is dropped (after `stop` has drained the log).
    _lock: DataDirLock,
}

/// Loads the newest snapshot, decoded into a machine like `state_machine`.
fn restore_snapshot<S: StateMachine>(
    store: &SnapshotStore,
    state_machine: &S,
) -> Result<Option<Restored<S>>, ServerError> {
    let Some((slot, data)) = store
        .latest()
        .map_err(|error| ServerError::Recovery(error.to_string()))?
    else {
        return Ok(None);
    };
    let restored = Restored::decode(&data, state_machine.empty_like())
        .map_err(|error| ServerError::Recovery(format!("snapshot of slot {slot}: {error}")))?;
    if restored.slot != slot {
        return Err(ServerError::Recovery(format!(
            "the snapshot file of slot {slot} holds an image of slot {}",
            restored.slot
        )));
    }
    Ok(Some(restored))
}

impl<S: StateMachine> Server<S> {
    /// Binds the member's peer address and starts.
    pub async fn start(config: ServerConfig, state_machine: S) -> Result<Server<S>, ServerError> {
        let addr = config.member()?.peer_addr;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| ServerError::Io(format!("binding peer address {addr}: {error}")))?;
        Server::start_with_listener(config, state_machine, listener).await
    }

    /// Starts with an already bound peer listener: recovers from the data directory
    /// (newest snapshot, then the write-ahead log), then joins the cluster.
    pub async fn start_with_listener(
        config: ServerConfig,
        state_machine: S,
        peer_listener: TcpListener,
    ) -> Result<Server<S>, ServerError> {
        Server::start_observed(config, state_machine, peer_listener, None).await
    }

    /// As [`start_with_listener`](Self::start_with_listener), and `observer` sees the state
    /// machine on the replica's task each time commands were applied (and once at start,
    /// after recovery). It must be quick — say, clone a persistent structure and hand it
    /// on — since the replica waits for it.
    pub async fn start_observed(
        config: ServerConfig,
        state_machine: S,
        peer_listener: TcpListener,
        observer: Option<Observer<S>>,
    ) -> Result<Server<S>, ServerError> {
        let replica_config = config.replica_config()?;
        let member = config.member()?.clone();
        let lock = DataDirLock::acquire(&config.data_dir)?;
        let had_state = check_member_file(&config)?;
        let wal_dir = config.data_dir.join("wal");
        if had_state
            && !Wal::holds_log(&wal_dir)
                .map_err(|error| ServerError::Recovery(error.to_string()))?
        {
            return Err(amnesia_error(&config, &wal_dir));
        }
        let snapshots = SnapshotStore::open(&config.data_dir.join("snap"))
            .map_err(|error| ServerError::Storage(error.to_string()))?;
        let snapshot = restore_snapshot(&snapshots, &state_machine)?;
        let (wal, durable) = Wal::open(
            &wal_dir,
            WalOptions {
                segment_bytes: config.wal_segment_bytes,
                sync: config.wal_sync,
                identity: WalIdentity {
                    cluster_id: config.cluster.cluster_id,
                    node_id: config.node_id,
                },
            },
        )
        .map_err(|error| ServerError::Recovery(error.to_string()))?;
        if !had_state {
            write_member_file(&config)?;
        }
        let clock_origin = std::time::Instant::now();
        let replica = Replica::recover(replica_config, durable, snapshot, state_machine, 0)
            .map_err(|error| ServerError::Recovery(error.to_string()))?;
        let metrics = Metrics::new(config.node_id);
        let fsync_seconds = metrics.fsync_seconds.clone();
        let group_commit = Arc::new(GroupCommit::start_with_sync_observer(
            wal,
            Box::new(move |took| fsync_seconds.observe(took.as_secs_f64())),
        ));
        metrics.set_disk_bytes(group_commit.stats().disk_bytes, None);
        crate::driver::record_snapshot_bytes(&snapshots, &metrics);
        let directory: Directory = Arc::new(Mutex::new(BTreeMap::new()));
        directory
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(
                config.node_id,
                PeerInfo {
                    name: member.name.clone(),
                    client_urls: config.client_urls.clone(),
                },
            );
        let context = Arc::new(TransportContext {
            me: Hello {
                cluster_id: config.cluster.cluster_id,
                node_id: config.node_id,
                name: member.name.clone(),
                client_urls: config.client_urls.clone(),
            },
            cluster: config.cluster.clone(),
            max_frame_bytes: config.max_frame_bytes,
            timing: PeerTiming::for_heartbeat(config.heartbeat_interval),
            metrics: Arc::clone(&metrics),
            directory: Arc::clone(&directory),
        });
        let peer_addr = peer_listener
            .local_addr()
            .map_err(|error| ServerError::Io(error.to_string()))?;

        let (requests_tx, requests_rx) = mpsc::channel(8192);
        let (peer_tx, peer_rx) = mpsc::channel(8192);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut transport = Vec::new();
        let mut peers = HashMap::new();
        for peer in &config.cluster.members {
            if peer.id == config.node_id {
                continue;
            }
            let (frames_tx, frames_rx) = mpsc::channel(PEER_QUEUE_FRAMES);
            peers.insert(peer.id, frames_tx);
            transport.push(tokio::spawn(dial_peer(
                Arc::clone(&context),
                peer.clone(),
                frames_rx,
            )));
        }
        transport.push(tokio::spawn(accept_peers(
            peer_listener,
            Arc::clone(&context),
            peer_tx,
        )));
        let driver = Driver::new(
            replica,
            clock_origin,
            DriverSettings {
                tick_interval: config.tick_interval,
                snapshot_chunk_bytes: config.snapshot_chunk_bytes,
            },
            Arc::clone(&metrics),
            group_commit,
            Arc::new(snapshots),
            Channels {
                requests: requests_rx,
                peer_inputs: peer_rx,
                control_tx,
                control_rx,
                stop: stop_rx,
                peers,
                observer,
            },
        );
        let driver = tokio::spawn(driver.run());
        Ok(Server {
            handle: Handle {
                requests: requests_tx,
                node_id: config.node_id,
            },
            config,
            peer_addr,
            metrics,
            directory,
            stop: stop_tx,
            driver: Some(driver),
            transport,
            _lock: lock,
        })
    }

    pub fn handle(&self) -> Handle<S> {
        self.handle.clone()
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Every member with what this node learned of it (name and client URLs from the
    /// peer handshakes).
    pub fn members(&self) -> Vec<(crate::config::Member, PeerInfo)> {
        let directory = self
            .directory
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        self.config
            .cluster
            .members
            .iter()
            .map(|member| {
                let info = directory.get(&member.id).cloned().unwrap_or(PeerInfo {
                    name: member.name.clone(),
                    client_urls: Vec::new(),
                });
                (member.clone(), info)
            })
            .collect()
    }

    /// The shared directory of peers (for services that outlive a borrow of the server).
    pub fn directory(&self) -> Directory {
        Arc::clone(&self.directory)
    }

    /// True once the replica stopped by itself (a storage failure).
    pub fn is_finished(&self) -> bool {
        self.driver
            .as_ref()
            .is_none_or(|driver| driver.is_finished())
    }

    /// Waits until the replica stops by itself (a storage failure), returning why.
    pub async fn stopped(&mut self) -> Result<(), ServerError> {
        let Some(driver) = self.driver.as_mut() else {
            return Err(ServerError::Stopped);
        };
        let result = match driver.await {
            Ok(result) => result,
            Err(error) => Err(ServerError::Io(format!("replica task failed: {error}"))),
        };
        self.driver = None;
        result
    }

    /// Stops the replica: closes peer connections, answers waiting requests with
    /// `Stopped`, and completes every queued write-ahead-log write.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        let transport = std::mem::take(&mut self.transport);
        for task in &transport {
            task.abort();
        }
        let _ = self.stop.send(true);
        let result = match self.driver.take() {
            Some(driver) => match driver.await {
                Ok(result) => result,
                Err(error) => Err(ServerError::Io(format!("replica task failed: {error}"))),
            },
            None => Ok(()),
        };
        for task in transport {
            let _ = task.await;
        }
        result
    }
}

impl<S: StateMachine> Drop for Server<S> {
    fn drop(&mut self) {
        for task in &self.transport {
            task.abort();
        }
        let _ = self.stop.send(true);
    }
}
