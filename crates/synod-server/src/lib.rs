//! # synod-server: the runtime operators run
//!
//! Drives a [`synod_core::Node`] with real I/O: peers over TCP, a write-ahead log and
//! snapshots from `synod-storage`, and etcd's v3 gRPC API in front of a [`synod_kv::KvStore`].

pub mod proto;
