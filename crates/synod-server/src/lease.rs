//! etcd's Lease service: grants and revokes go through the log; keep-alives, time-to-live
//! and expiry are the leader's [`Lessor`] (synod-kv, sans-IO; the simulator drives the same
//! one). This module is the glue: it feeds the lessor every applied store (the observer),
//! asks it on the replica's task — with the leader lease checked at that very moment —
//! to renew a lease or to list expiries, proposes what it decides, and forwards keep-alives
//! and time-to-live requests that reach a follower to the leader's client endpoint, as an
//! etcd follower forwards them.

// tonic's `Status` is large, and every gRPC handler returns it.
#![allow(clippy::result_large_err)]

use crate::etcd::{kv_status, server_status};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::lease_client::LeaseClient;
use crate::proto::etcdserverpb::lease_server::{Lease, LeaseServer};
use crate::transport::Directory;
use crate::{Consistency, Handle};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use synod_core::NodeId;
use synod_kv::{KvStore, LeaseGrantRequest, Lessor, Op, OpResponse, RenewError, Response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Status};

/// Most expiries proposed per lessor pass: with a pass every heartbeat (100 ms by default)
/// about etcd's `leaseRevokeRate` of 1,000 a second.
const EXPIRIES_PER_PASS: usize = 100;

/// Marks a request one member forwarded to another, so it is never forwarded twice.
const FORWARDED: &str = "synod-forwarded";

/// What the lease service needs from the member's configuration.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub cluster_id: u64,
    pub member_id: NodeId,
    /// etcd's minimum TTL: 1.5 election timeouts, rounded up to whole seconds. A grant
    /// asking for less gets this.
    pub min_ttl_seconds: i64,
    /// How often the lessor looks for expiries and promotion (the heartbeat interval).
    pub pass_interval: Duration,
    /// How long a keep-alive waits for a leader whose lessor decides.
    pub request_timeout: Duration,
    /// Added to every deadline at a promotion (etcd: the election timeout).
    pub promotion_extension: Duration,
}

impl LeaseSettings {
    /// etcd's minimum lease TTL for an election timeout: `ceil(1.5 × election timeout)`.
    pub fn min_ttl_for(election_timeout: Duration) -> i64 {
        (election_timeout.as_secs_f64() * 1.5).ceil().max(1.0) as i64
    }
}

/// The lessor with its clock: nanoseconds since the member started.
#[derive(Clone)]
pub struct SharedLessor {
    lessor: Arc<Mutex<Lessor>>,
    origin: Instant,
}

impl SharedLessor {
    pub fn new(member_id: NodeId, extension: Duration) -> SharedLessor {
        SharedLessor {
            lessor: Arc::new(Mutex::new(Lessor::new(
                member_id,
                extension.as_nanos() as u64,
            ))),
            origin: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn with<R>(&self, run: impl FnOnce(&mut Lessor, u64) -> R) -> R {
        let now = self.now();
        let mut lessor = self
            .lessor
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        run(&mut lessor, now)
    }

    /// The observer's part: the store after a batch was applied.
    pub fn on_applied(&self, store: &KvStore) {
        self.with(|lessor, now| lessor.on_applied(now, store));
    }
}

/// etcd's `Lease` service for one member.
#[derive(Clone)]
pub struct LeaseService {
    handle: Handle<KvStore>,
    lessor: SharedLessor,
    settings: LeaseSettings,
    directory: Directory,
    leaders: Arc<Mutex<HashMap<NodeId, LeaseClient<tonic::transport::Channel>>>>,
}

impl LeaseService {
    pub fn new(
        handle: Handle<KvStore>,
        lessor: SharedLessor,
        settings: LeaseSettings,
        directory: Directory,
    ) -> LeaseService {
        LeaseService {
            handle,
            lessor,
            settings,
            directory,
            leaders: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn server(self) -> LeaseServer<LeaseService> {
        LeaseServer::new(self)
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.settings.cluster_id,
            member_id: self.settings.member_id,
            revision,
            raft_term: 0,
        })
    }

    async fn execute(&self, op: Op) -> Result<Response, Status> {
        crate::etcd::execute(&self.handle, op).await
    }

    /// One keep-alive: the TTL (0: no such lease, or expired), renewed here if this
    /// member's lessor decides, else at the leader.
    async fn keep_alive(&self, id: i64, forwarded: bool) -> Result<(i64, i64), Status> {
        let deadline = Instant::now() + self.settings.request_timeout;
        loop {
            let lessor = self.lessor.clone();
            let outcome = self
                .handle
                .with_leader_lease(move |lease, store: &KvStore| {
                    // Renewed first, then acknowledged only because the leader lease holds
                    // at this same moment (see synod_kv::Lessor).
                    let renewed = match lease {
                        Some(_) => lessor.with(|lessor, now| lessor.renew(now, id, store)),
                        None => Err(RenewError::NotPrimary),
                    };
                    (renewed, store.revision())
                })
                .await
                .map_err(server_status)?;
            match outcome {
                (Ok(ttl), revision) => return Ok((ttl, revision)),
                (Err(RenewError::NotFound), revision) => return Ok((0, revision)),
                (Err(RenewError::NotPrimary), _) => {}
            }
            if !forwarded {
                if let Some(mut leader) = self.leader_client().await? {
                    let mut request =
                        Request::new(tokio_stream::once(pb::LeaseKeepAliveRequest { id }));
                    request
                        .metadata_mut()
                        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
                    let mut responses = leader.lease_keep_alive(request).await?.into_inner();
                    if let Some(response) = responses.message().await? {
                        let revision = response.header.map_or(0, |header| header.revision);
                        return Ok((response.ttl, revision));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable(
                    "etcdserver: request timed out (no leader decides leases)",
                ));
            }
            tokio::time::sleep(self.settings.pass_interval).await;
        }
    }

    /// A client for the leader's endpoint, if the leader is another member whose client
    /// URL is known.
    async fn leader_client(
        &self,
    ) -> Result<Option<LeaseClient<tonic::transport::Channel>>, Status> {
        let status = self.handle.status().await.map_err(server_status)?;
        let Some(leader) = status
            .leader
            .filter(|leader| *leader != self.settings.member_id)
        else {
            return Ok(None);
        };
        let mut leaders = self
            .leaders
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(client) = leaders.get(&leader) {
            return Ok(Some(client.clone()));
        }
        let url = self
            .directory
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(&leader)
            .and_then(|info| info.client_urls.first().cloned());
        let Some(url) = url else {
            return Ok(None);
        };
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|error| Status::internal(format!("leader URL {url}: {error}")))?
            .timeout(self.settings.request_timeout);
        let client = LeaseClient::new(endpoint.connect_lazy());
        leaders.insert(leader, client.clone());
        Ok(Some(client))
    }

    /// Looks for a promotion or expiries to propose (the replica must hold the leader
    /// lease), and proposes them.
    async fn pass(&self) {
        let lessor = self.lessor.clone();
        let decided = self
            .handle
            .with_leader_lease(move |lease, store: &KvStore| {
                let Some(ballot) = lease else {
                    return Vec::new();
                };
                lessor.with(|lessor, now| match lessor.promotion(now, store, ballot) {
                    Some(promotion) => vec![promotion],
                    None => lessor.expired(now, EXPIRIES_PER_PASS),
                })
            })
            .await
            .unwrap_or_default();
        for op in decided {
            let service = self.clone();
            tokio::spawn(async move {
                match service.execute(op.clone()).await {
                    Ok(response) => {
                        if let Ok(OpResponse::LeaseExpire {
                            expired: true,
                            deleted,
                        }) = response.result
                        {
                            tracing::debug!(?op, deleted, "lease expired");
                        }
                    }
                    Err(error) => tracing::debug!(?op, %error, "lessor proposal failed"),
                }
            });
        }
    }

    /// The lessor's loop: a pass every `pass_interval` until `stop`.
    pub async fn run_lessor(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut interval = tokio::time::interval(self.settings.pass_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => self.pass().await,
                _ = stop.changed() => return,
            }
        }
    }
}

type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<tonic::Response<pb::LeaseGrantResponse>, Status> {
        let request = request.into_inner();
        let ttl = request.ttl.max(self.settings.min_ttl_seconds);
        let response = self
            .execute(Op::LeaseGrant(LeaseGrantRequest {
                id: request.id,
                ttl,
            }))
            .await?;
        match response.result.map_err(kv_status)? {
            OpResponse::LeaseGrant { id, ttl } => {
                Ok(tonic::Response::new(pb::LeaseGrantResponse {
                    header: self.header(response.revision),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            other => Err(Status::internal(format!("a grant produced {other:?}"))),
        }
    }

    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<tonic::Response<pb::LeaseRevokeResponse>, Status> {
        let id = request.into_inner().id;
        let response = self.execute(Op::LeaseRevoke(id)).await?;
        response.result.map_err(kv_status)?;
        Ok(tonic::Response::new(pb::LeaseRevokeResponse {
            header: self.header(response.revision),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        request: Request<tonic::Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<tonic::Response<Self::LeaseKeepAliveStream>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED);
        let mut requests = request.into_inner();
        let (responses, receiver) = mpsc::channel(64);
        let service = self.clone();
        tokio::spawn(async move {
            while let Some(next) = requests.next().await {
                let reply =
                    match next {
                        Ok(request) => service.keep_alive(request.id, forwarded).await.map(
                            |(ttl, revision)| pb::LeaseKeepAliveResponse {
                                header: service.header(revision),
                                id: request.id,
                                ttl,
                            },
                        ),
                        Err(_) => return, // the client went away
                    };
                let failed = reply.is_err();
                if responses.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(
            receiver,
        ))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<tonic::Response<pb::LeaseTimeToLiveResponse>, Status> {
        let forwarded = request.metadata().contains_key(FORWARDED);
        let request = request.into_inner();
        let deadline = Instant::now() + self.settings.request_timeout;
        loop {
            let lessor = self.lessor.clone();
            let (id, want_keys) = (request.id, request.keys);
            let answer = self
                .handle
                .with_leader_lease(move |lease, store: &KvStore| {
                    lease?;
                    let remaining = lessor.with(|lessor, now| {
                        (lessor.primary() == Some(store.lease_epoch()))
                            .then(|| lessor.remaining_seconds(now, id))
                    })?;
                    let granted = store.lease_ttl(id);
                    let keys = if want_keys {
                        store
                            .lease_keys(id)
                            .into_iter()
                            .map(|k| k.to_vec())
                            .collect()
                    } else {
                        Vec::new()
                    };
                    Some((remaining, granted, keys, store.revision()))
                })
                .await
                .map_err(server_status)?;
            if let Some((remaining, granted, keys, revision)) = answer {
                let response = match (remaining, granted) {
                    (Some(ttl), Some(granted)) => pb::LeaseTimeToLiveResponse {
                        header: self.header(revision),
                        id,
                        ttl,
                        granted_ttl: granted,
                        keys,
                    },
                    // etcd's answer for a lease that does not exist (or just expired).
                    _ => pb::LeaseTimeToLiveResponse {
                        header: self.header(revision),
                        id,
                        ttl: -1,
                        granted_ttl: 0,
                        keys: Vec::new(),
                    },
                };
                return Ok(tonic::Response::new(response));
            }
            if !forwarded {
                if let Some(mut leader) = self.leader_client().await? {
                    let mut forward = Request::new(request);
                    forward
                        .metadata_mut()
                        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
                    return leader.lease_time_to_live(forward).await;
                }
            }
            if Instant::now() >= deadline {
                return Err(Status::unavailable(
                    "etcdserver: request timed out (no leader decides leases)",
                ));
            }
            tokio::time::sleep(self.settings.pass_interval).await;
        }
    }

    async fn lease_leases(
        &self,
        _request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<tonic::Response<pb::LeaseLeasesResponse>, Status> {
        let (revision, leases) = self
            .handle
            .read(Consistency::Linearizable, |store: &KvStore| {
                let ids: Vec<i64> = store.leases().keys().copied().collect();
                (store.revision(), ids)
            })
            .await
            .map_err(server_status)?;
        Ok(tonic::Response::new(pb::LeaseLeasesResponse {
            header: self.header(revision),
            leases: leases
                .into_iter()
                .map(|id| pb::LeaseStatus { id })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_ttl_is_one_and_a_half_election_timeouts_rounded_up() {
        assert_eq!(LeaseSettings::min_ttl_for(Duration::from_millis(1000)), 2);
        assert_eq!(LeaseSettings::min_ttl_for(Duration::from_millis(2000)), 3);
        assert_eq!(LeaseSettings::min_ttl_for(Duration::from_millis(100)), 1);
    }
}
