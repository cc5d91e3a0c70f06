//! # synod-server: the runtime operators run
//!
//! Drives a [`synod_core::Node`] with real I/O: peers over TCP ([`wire`], [`transport`]),
//! a write-ahead log and snapshots from `synod-storage`, client sessions that make
//! retried proposals apply once ([`sessions`]), Prometheus [`metrics`] under etcd's names,
//! and — for the KV store — etcd's v3 gRPC API ([`etcd`]) with its HTTP endpoints
//! ([`http`]: `/health`, `/metrics`, `/version`).
//!
//! The runtime is generic over [`synod_kv::StateMachine`]: [`Server::start`] runs one
//! replica of any state machine inside the caller's tokio runtime, and its [`Handle`]
//! proposes commands and runs reads. `synod node` and `synod dev` are [`run_node`] and
//! [`run_dev`].

pub mod applied;
pub mod cli;
pub mod compactor;
pub mod concurrency;
pub mod config;
pub mod data_dir;
mod driver;
pub mod etcd;
mod grpc_metrics;
pub mod http;
pub mod lease;
pub mod metrics;
mod node;
pub mod proto;
mod server;
pub mod snapshot_file;
pub mod timeline;
pub mod transport;
pub mod watch;
pub mod wire;

/// Client sessions now live in the replica (`synod-replica`).
pub use synod_replica::sessions;

pub use cli::{run_dev, run_node, DevArgs, NodeArgs};
pub use config::{Cluster, ConfigError, Member, ServerConfig};
pub use node::{EtcdNode, Listeners};
pub use server::{Consistency, Handle, MoveLeaderError, NodeStatus, Observer, Server, ServerError};
