//! etcd's server-side concurrency API: `v3lockpb.Lock` and `v3electionpb.Election`, with
//! etcd's key layout so that clients of either (etcdctl `lock` and `elect`, the Go and Rust
//! clients' lock and election calls) and of the client-side recipes built on the same keys
//! interoperate.
//!
//! Both are etcd's `concurrency` recipes run in the server: a waiter puts `name/<lease in
//! hex>` attached to its lease (a txn: only if absent, so a retry finds its own key), and
//! holds the lock — or leads the election — once no key under `name/` with a lower create
//! revision is left. Waiting follows this member's applied store ([`crate::applied`]),
//! so it costs nothing while nothing changes. A waiter whose key vanished (its lease
//! expired or was revoked) gets etcd's "session expired" error; a waiter whose client
//! goes away deletes its key, as etcd's `Mutex.Lock` does on failure.
//!
//! A lease-based lock is not mutual exclusion by itself: a holder paused past its TTL keeps
//! believing it holds the lock after the lock moved on. Fence every guarded write with the
//! lock key's create revision (docs/leases.md).

// tonic's `Status` is large, and every gRPC handler returns it.
#![allow(clippy::result_large_err)]

use crate::applied::AppliedFeed;
use crate::etcd::{kv_status, server_status};
use crate::proto::etcdserverpb as pb;
use crate::proto::mvccpb;
use crate::proto::v3electionpb as election;
use crate::proto::v3electionpb::election_server::{Election, ElectionServer};
use crate::proto::v3lockpb as lock;
use crate::proto::v3lockpb::lock_server::{Lock, LockServer};
use crate::{Consistency, Handle};
use bytes::Bytes;
use std::pin::Pin;
use synod_kv::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyValue, KvStore, Op, OpResponse,
    PutRequest, RangeRequest, Response, TxnRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Status};

/// etcd's `concurrency` default session TTL, for a lock or campaign without a lease.
const SESSION_TTL_SECONDS: i64 = 60;

/// The lock and election services of one member.
#[derive(Clone)]
pub struct Concurrency {
    handle: Handle<KvStore>,
    applied: AppliedFeed<KvStore>,
    cluster_id: u64,
    member_id: u64,
}

impl Concurrency {
    pub fn new(
        handle: Handle<KvStore>,
        applied: AppliedFeed<KvStore>,
        cluster_id: u64,
        member_id: u64,
    ) -> Concurrency {
        Concurrency {
            handle,
            applied,
            cluster_id,
            member_id,
        }
    }

    pub fn lock_server(self) -> LockServer<Concurrency> {
        LockServer::new(self)
    }

    pub fn election_server(self) -> ElectionServer<Concurrency> {
        ElectionServer::new(self)
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: 0,
        })
    }

    async fn execute(&self, op: Op) -> Result<Response, Status> {
        crate::etcd::execute(&self.handle, op).await
    }

    /// Puts `key` with `value` on `lease` unless it exists (then reads it): the waiter's
    /// key and its create revision. etcd's `Mutex.tryAcquire` / `Election.Campaign` txn.
    async fn enter(
        &self,
        key: &Bytes,
        lease: i64,
        value: Bytes,
    ) -> Result<(KeyValue, i64), Status> {
        let txn = TxnRequest {
            compare: vec![Compare {
                key: key.clone(),
                range_end: Bytes::new(),
                target: CompareTarget::CreateRevision(0),
                result: CompareResult::Equal,
            }],
            success: vec![
                Op::Put(PutRequest {
                    key: key.clone(),
                    value,
                    lease,
                    ..PutRequest::default()
                }),
                get(key),
            ],
            failure: vec![get(key)],
        };
        let response = self.execute(Op::Txn(txn)).await?;
        let revision = response.revision;
        let Ok(OpResponse::Txn(txn)) = response.result.map_err(kv_status) else {
            return Err(Status::internal("a txn answered something else"));
        };
        let read = txn.responses.into_iter().last();
        match read {
            Some(OpResponse::Range(range)) if !range.kvs.is_empty() => {
                Ok((range.kvs.into_iter().next().expect("one key"), revision))
            }
            _ => Err(Status::internal("the waiter's key vanished at once")),
        }
    }

    /// Waits until no live key under `prefix` was created before `mine` (etcd's
    /// `waitDeletes`), on this member's applied state; fails if `key` itself is gone.
    async fn wait_turn(&self, prefix: &Bytes, key: &Bytes, mine: i64) -> Result<i64, Status> {
        let mut applied = self
            .applied
            .follow(&self.handle)
            .await
            .map_err(server_status)?;
        loop {
            {
                let store = applied.state();
                if store.revision() >= mine {
                    if store.get(key).is_none_or(|kv| kv.create_revision != mine) {
                        return Err(Status::not_found(
                            "etcdserver: session expired (the waiter's lease is gone)",
                        ));
                    }
                    let earlier = keys_under(store, prefix)
                        .into_iter()
                        .any(|kv| kv.create_revision < mine);
                    if !earlier {
                        return Ok(store.revision());
                    }
                }
            }
            applied
                .changed()
                .await
                .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        }
    }

    /// The lease a waiter holds its key on: the request's, or — for lease 0, as etcd's
    /// `concurrency.NewSession` does — a new lease of etcd's default session TTL (60 s),
    /// which nobody keeps alive (etcd orphans that session too).
    async fn session_lease(&self, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let grant = Op::LeaseGrant(synod_kv::LeaseGrantRequest {
            id: 0,
            ttl: SESSION_TTL_SECONDS,
        });
        match self.execute(grant).await?.result.map_err(kv_status)? {
            OpResponse::LeaseGrant { id, .. } => Ok(id),
            other => Err(Status::internal(format!("a grant produced {other:?}"))),
        }
    }

    async fn delete(&self, key: Bytes) -> Result<i64, Status> {
        let response = self
            .execute(Op::DeleteRange(DeleteRangeRequest {
                key,
                range_end: Bytes::new(),
                prev_kv: false,
            }))
            .await?;
        response.result.map_err(kv_status)?;
        Ok(response.revision)
    }

    /// The election's leader: the live key under `name/` with the lowest create revision.
    async fn leader_of(&self, name: &[u8]) -> Result<(Option<KeyValue>, i64), Status> {
        let prefix = prefix_of(name);
        self.handle
            .read(Consistency::Linearizable, move |store: &KvStore| {
                (leader_in(store, &prefix), store.revision())
            })
            .await
            .map_err(server_status)
    }

    /// A txn guarded by the leader key's create revision (etcd's `ErrElectionNotLeader`
    /// when it no longer holds).
    async fn as_leader(&self, leader: &election::LeaderKey, then: Op) -> Result<i64, Status> {
        let txn = TxnRequest {
            compare: vec![Compare {
                key: Bytes::copy_from_slice(&leader.key),
                range_end: Bytes::new(),
                target: CompareTarget::CreateRevision(leader.rev),
                result: CompareResult::Equal,
            }],
            success: vec![then],
            failure: Vec::new(),
        };
        let response = self.execute(Op::Txn(txn)).await?;
        match response.result.map_err(kv_status)? {
            OpResponse::Txn(txn) if txn.succeeded => Ok(response.revision),
            _ => Err(Status::failed_precondition("election: not leader")),
        }
    }
}

fn get(key: &Bytes) -> Op {
    Op::Range(RangeRequest {
        key: key.clone(),
        ..RangeRequest::default()
    })
}

fn prefix_of(name: &[u8]) -> Bytes {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Bytes::from(prefix)
}

/// etcd's key for a waiter: `name/` and the lease id in lowercase hex.
fn waiter_key(name: &[u8], lease: i64) -> Bytes {
    let mut key = prefix_of(name).to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    Bytes::from(key)
}

fn keys_under(store: &KvStore, prefix: &Bytes) -> Vec<KeyValue> {
    let mut end = prefix.to_vec();
    // The prefix ends in '/', so incrementing its last byte never overflows.
    *end.last_mut().expect("non-empty prefix") += 1;
    let response = store.read(&RangeRequest {
        key: prefix.clone(),
        range_end: Bytes::from(end),
        ..RangeRequest::default()
    });
    match response.result {
        Ok(OpResponse::Range(range)) => range.kvs,
        _ => Vec::new(),
    }
}

fn leader_in(store: &KvStore, prefix: &Bytes) -> Option<KeyValue> {
    keys_under(store, prefix)
        .into_iter()
        .min_by_key(|kv| kv.create_revision)
}

/// Deletes a waiter's key if its request is dropped before it is through (the client
/// went away while waiting), as etcd's `Mutex.Lock` unlocks on failure.
struct Abandon {
    service: Option<Concurrency>,
    key: Bytes,
}

impl Abandon {
    fn keep(mut self) {
        self.service = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(service) = self.service.take() {
            let key = self.key.clone();
            tokio::spawn(async move {
                let _ = service.delete(key).await;
            });
        }
    }
}

#[tonic::async_trait]
impl Lock for Concurrency {
    async fn lock(
        &self,
        request: Request<lock::LockRequest>,
    ) -> Result<tonic::Response<lock::LockResponse>, Status> {
        let mut request = request.into_inner();
        request.lease = self.session_lease(request.lease).await?;
        let key = waiter_key(&request.name, request.lease);
        let (kv, _) = self.enter(&key, request.lease, Bytes::new()).await?;
        let abandon = Abandon {
            service: Some(self.clone()),
            key: key.clone(),
        };
        let revision = self
            .wait_turn(&prefix_of(&request.name), &key, kv.create_revision)
            .await;
        let revision = match revision {
            Ok(revision) => revision,
            Err(status) => {
                abandon.keep();
                return Err(status);
            }
        };
        abandon.keep();
        Ok(tonic::Response::new(lock::LockResponse {
            header: self.header(revision),
            key: key.to_vec(),
        }))
    }

    async fn unlock(
        &self,
        request: Request<lock::UnlockRequest>,
    ) -> Result<tonic::Response<lock::UnlockResponse>, Status> {
        let key = Bytes::from(request.into_inner().key);
        let revision = self.delete(key).await?;
        Ok(tonic::Response::new(lock::UnlockResponse {
            header: self.header(revision),
        }))
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<election::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Election for Concurrency {
    async fn campaign(
        &self,
        request: Request<election::CampaignRequest>,
    ) -> Result<tonic::Response<election::CampaignResponse>, Status> {
        let mut request = request.into_inner();
        request.lease = self.session_lease(request.lease).await?;
        let key = waiter_key(&request.name, request.lease);
        let value = Bytes::from(request.value);
        let (kv, _) = self.enter(&key, request.lease, value.clone()).await?;
        let abandon = Abandon {
            service: Some(self.clone()),
            key: key.clone(),
        };
        let leader = election::LeaderKey {
            name: request.name.clone(),
            key: key.to_vec(),
            rev: kv.create_revision,
            lease: request.lease,
        };
        // A campaign found its own key from before: it proclaims the new value.
        if kv.value != value {
            let put = Op::Put(PutRequest {
                key: key.clone(),
                value,
                lease: request.lease,
                ..PutRequest::default()
            });
            if let Err(status) = self.as_leader(&leader, put).await {
                abandon.keep();
                return Err(status);
            }
        }
        let waited = self
            .wait_turn(&prefix_of(&request.name), &key, kv.create_revision)
            .await;
        abandon.keep();
        let revision = waited?;
        Ok(tonic::Response::new(election::CampaignResponse {
            header: self.header(revision),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<election::ProclaimRequest>,
    ) -> Result<tonic::Response<election::ProclaimResponse>, Status> {
        let request = request.into_inner();
        let leader = request
            .leader
            .ok_or_else(|| Status::invalid_argument("election: no leader key given"))?;
        let put = Op::Put(PutRequest {
            key: Bytes::copy_from_slice(&leader.key),
            value: Bytes::from(request.value),
            lease: leader.lease,
            ..PutRequest::default()
        });
        let revision = self.as_leader(&leader, put).await?;
        Ok(tonic::Response::new(election::ProclaimResponse {
            header: self.header(revision),
        }))
    }

    async fn leader(
        &self,
        request: Request<election::LeaderRequest>,
    ) -> Result<tonic::Response<election::LeaderResponse>, Status> {
        let (leader, revision) = self.leader_of(&request.into_inner().name).await?;
        let kv = leader.ok_or_else(|| Status::not_found("election: no leader"))?;
        Ok(tonic::Response::new(election::LeaderResponse {
            header: self.header(revision),
            kv: Some(mvccpb::KeyValue::from(kv)),
        }))
    }

    type ObserveStream = ObserveStream;

    /// Every change of leader or of its value, from the current one on, as this member
    /// applies them (etcd's `Election.Observe`).
    async fn observe(
        &self,
        request: Request<election::LeaderRequest>,
    ) -> Result<tonic::Response<Self::ObserveStream>, Status> {
        let prefix = prefix_of(&request.into_inner().name);
        let (responses, receiver) = mpsc::channel(16);
        let service = self.clone();
        let mut applied = self
            .applied
            .follow(&self.handle)
            .await
            .map_err(server_status)?;
        tokio::spawn(async move {
            let mut last: Option<(Bytes, i64)> = None;
            loop {
                let update = {
                    let store = applied.state();
                    leader_in(store, &prefix).map(|kv| (kv, store.revision()))
                };
                if let Some((kv, revision)) = update {
                    let seen = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&seen) {
                        last = Some(seen);
                        let response = election::LeaderResponse {
                            header: service.header(revision),
                            kv: Some(mvccpb::KeyValue::from(kv)),
                        };
                        if responses.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    changed = applied.changed() => if changed.is_err() { return },
                    _ = responses.closed() => return,
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(
            receiver,
        ))))
    }

    async fn resign(
        &self,
        request: Request<election::ResignRequest>,
    ) -> Result<tonic::Response<election::ResignResponse>, Status> {
        let leader = request
            .into_inner()
            .leader
            .ok_or_else(|| Status::invalid_argument("election: no leader key given"))?;
        let delete = Op::DeleteRange(DeleteRangeRequest {
            key: Bytes::copy_from_slice(&leader.key),
            range_end: Bytes::new(),
            prev_kv: false,
        });
        // Resigning a leadership already lost is not an error (etcd's Resign).
        let revision = match self.as_leader(&leader, delete).await {
            Ok(revision) => revision,
            Err(status) if status.code() == tonic::Code::FailedPrecondition => 0,
            Err(status) => return Err(status),
        };
        Ok(tonic::Response::new(election::ResignResponse {
            header: self.header(revision),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiter_keys_follow_etcds_layout() {
        assert_eq!(waiter_key(b"job", 0x694d_7a1b), Bytes::from("job/694d7a1b"));
        assert_eq!(prefix_of(b"job"), Bytes::from("job/"));
    }
}
