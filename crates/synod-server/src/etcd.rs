//! etcd's v3 gRPC API over a replicated [`KvStore`]: the part etcdctl 3.4 uses.
//!
//! Writes (Put, DeleteRange, Txn) go through the log at whichever node received them;
//! the runtime forwards to the leader and retries through failovers. Ranges are
//! linearizable by default — a read index from the leader (its lease, or one quorum
//! round), then a local read once this replica applied it — or, with `serializable`,
//! answered from this replica's state at once. A range at an older `revision` reads the
//! store's history; `Compact` and alarms' ACTIVATE/DEACTIVATE go through the log. The
//! Maintenance calls Hash, HashKV, Snapshot and Defragment answer from this member's state
//! (docs/maintenance.md). Every other RPC answers UNIMPLEMENTED with a message saying so.

// tonic's `Status` is large, and every gRPC handler returns it; the conversion helpers
// return it too rather than box and unbox it at each boundary.
#![allow(clippy::result_large_err)]

use crate::concurrency::Concurrency;
use crate::config::Cluster;
use crate::lease::LeaseService;
use crate::metrics::Metrics;
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::cluster_server::{Cluster as ClusterService, ClusterServer};
use crate::proto::etcdserverpb::kv_server::{Kv, KvServer};
use crate::proto::etcdserverpb::lease_server::LeaseServer;
use crate::proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use crate::proto::etcdserverpb::watch_server::WatchServer;
use crate::proto::mvccpb;
use crate::transport::Directory;
use crate::watch::WatchService;
use crate::{Consistency, Handle, MoveLeaderError, ServerError};
use std::sync::Arc;
use synod_kv::{
    AlarmAction, AlarmKind, AlarmRequest, Command, CompactRequest, Compare, CompareResult,
    CompareTarget, DeleteRangeRequest, KvError, KvStore, Op, OpResponse, PutRequest, RangeRequest,
    RangeResponse, Response, TxnRequest, MAX_TXN_DEPTH,
};
use tonic::{Request, Status};

/// The version `Maintenance.Status` and `/version` report: the etcd API level served, a
/// plain version clients compare to gate features (docs/maintenance.md says why 3.5.0).
pub const SERVER_VERSION: &str = "3.5.0";

/// The cluster version `/version` reports: the etcd API level every member serves.
pub const CLUSTER_VERSION: &str = "3.5.0";

/// Synod's own version, reported beside the etcd one by `/version` (its `synod` field)
/// and by the `synod_build_info` metric.
pub const SYNOD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The three services, sharing one replica.
#[derive(Clone)]
pub struct EtcdApi {
    handle: Handle<KvStore>,
    cluster: Cluster,
    directory: Directory,
    metrics: Arc<Metrics>,
    watches: WatchServer<WatchService>,
    leases: Option<LeaseServer<LeaseService>>,
    concurrency: Option<Concurrency>,
}

impl EtcdApi {
    pub fn new(
        handle: Handle<KvStore>,
        cluster: Cluster,
        directory: Directory,
        metrics: Arc<Metrics>,
        watches: WatchServer<WatchService>,
    ) -> EtcdApi {
        EtcdApi {
            handle,
            cluster,
            directory,
            metrics,
            watches,
            leases: None,
            concurrency: None,
        }
    }

    /// Serves etcd's v3lock and v3election services too.
    pub fn with_concurrency(mut self, concurrency: Concurrency) -> EtcdApi {
        self.concurrency = Some(concurrency);
        self
    }

    /// Serves etcd's Lease service too.
    pub fn with_leases(mut self, leases: LeaseServer<LeaseService>) -> EtcdApi {
        self.leases = Some(leases);
        self
    }

    /// The gRPC routes: KV, Cluster and Maintenance, and for every other path
    /// UNIMPLEMENTED (with a message) to a gRPC request, 404 to any other.
    pub fn router(self) -> axum::Router {
        let mut routes = tonic::service::Routes::new(KvServer::new(self.clone()))
            .add_service(self.watches.clone())
            .add_service(ClusterServer::new(self.clone()));
        if let Some(leases) = self.leases.clone() {
            routes = routes.add_service(leases);
        }
        if let Some(concurrency) = self.concurrency.clone() {
            routes = routes
                .add_service(concurrency.clone().lock_server())
                .add_service(concurrency.election_server());
        }
        routes
            .add_service(MaintenanceServer::new(self))
            .prepare()
            .into_axum_router()
            .fallback(unserved_path)
    }

    fn header(&self, revision: i64) -> Option<pb::ResponseHeader> {
        Some(pb::ResponseHeader {
            cluster_id: self.cluster.cluster_id,
            member_id: self.handle.node_id(),
            revision,
            raft_term: self.metrics.current_ballot.get().max(0) as u64,
        })
    }

    async fn execute(&self, op: Op) -> Result<Response, Status> {
        execute(&self.handle, op).await
    }
}

/// Proposes `op` through the log (unsessioned) and decodes the store's response: what every
/// write of the etcd services (KV, Lease, v3lock, v3election, Maintenance) does.
pub(crate) async fn execute(handle: &Handle<KvStore>, op: Op) -> Result<Response, Status> {
    let bytes = handle
        .propose(Command::unsessioned(op).encode())
        .await
        .map_err(server_status)?;
    Response::decode(&bytes).map_err(|error| Status::internal(error.to_string()))
}

/// Any path no route claims: to a gRPC request, a method or service of etcd that synod
/// does not serve; to plain HTTP, not found.
async fn unserved_path(
    uri: axum::http::Uri,
    request_headers: axum::http::HeaderMap,
) -> (axum::http::StatusCode, axum::http::HeaderMap) {
    if !crate::grpc_metrics::is_grpc(&request_headers) {
        return (
            axum::http::StatusCode::NOT_FOUND,
            axum::http::HeaderMap::new(),
        );
    }
    let status = Status::unimplemented(format!(
        "{} is not served by synod (it serves KV Range/Put/DeleteRange/Txn/Compact, Watch, \
         Lease, v3lock, v3election, Cluster.MemberList, Maintenance \
         Status/Alarm/Hash/HashKV/Snapshot/Defragment/MoveLeader)",
        uri.path()
    ));
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/grpc"),
    );
    // The message is plain ASCII: encoding it into headers cannot fail.
    let _ = status.add_header(&mut headers);
    (axum::http::StatusCode::OK, headers)
}

fn unserved(method: &str, why: &str) -> Status {
    Status::unimplemented(format!("{method} is not served by synod: {why}"))
}

/// Runtime failures as etcd reports them.
pub(crate) fn server_status(error: ServerError) -> Status {
    match error {
        ServerError::Timeout { .. } => {
            Status::unavailable(format!("etcdserver: request timed out ({error})"))
        }
        ServerError::Stopped => Status::unavailable("etcdserver: server stopped"),
        ServerError::TooLarge { .. } => {
            Status::invalid_argument("etcdserver: request is too large")
        }
        other => Status::internal(other.to_string()),
    }
}

/// KV errors with etcd's messages and codes (clients match on them).
pub(crate) fn kv_status(error: KvError) -> Status {
    match error {
        KvError::EmptyKey => Status::invalid_argument("etcdserver: key is not provided"),
        KvError::DuplicateKeyInTxn(_) => {
            Status::invalid_argument("etcdserver: duplicate key given in txn request")
        }
        KvError::TooManyOps { .. } => {
            Status::invalid_argument("etcdserver: too many operations in txn request")
        }
        KvError::RevisionCompacted { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
        }
        KvError::FutureRevision { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
        }
        KvError::KeyNotFound(_) => Status::invalid_argument("etcdserver: key not found"),
        KvError::ValueProvided => Status::invalid_argument("etcdserver: value is provided"),
        KvError::LeaseProvided => Status::invalid_argument("etcdserver: lease is provided"),
        KvError::TxnTooDeep { .. } | KvError::Malformed(_) => {
            Status::invalid_argument(format!("etcdserver: {error}"))
        }
        KvError::NoSpace { .. } => {
            Status::resource_exhausted("etcdserver: mvcc: database space exceeded")
        }
        KvError::NotInTxn => Status::invalid_argument(format!("etcdserver: {error}")),
        KvError::LeaseNotFound(_) => Status::not_found("etcdserver: requested lease not found"),
        KvError::LeaseExists(_) => Status::failed_precondition("etcdserver: lease already exists"),
        KvError::LeaseInvalid(_) => Status::out_of_range("etcdserver: too large lease TTL"),
        KvError::Corrupt => Status::data_loss("etcdserver: corrupt cluster"),
        KvError::StaleSequence { .. } | KvError::SlotRegression { .. } => {
            Status::internal(format!("etcdserver: {error}"))
        }
    }
}

fn range_from_proto(request: &pb::RangeRequest) -> RangeRequest {
    RangeRequest {
        key: request.key.clone().into(),
        range_end: request.range_end.clone().into(),
        limit: request.limit,
        count_only: request.count_only,
        keys_only: request.keys_only,
        revision: request.revision,
    }
}

fn put_from_proto(request: pb::PutRequest) -> Result<PutRequest, Status> {
    Ok(PutRequest {
        key: request.key.into(),
        value: request.value.into(),
        prev_kv: request.prev_kv,
        lease: request.lease,
        ignore_value: request.ignore_value,
        ignore_lease: request.ignore_lease,
    })
}

fn delete_from_proto(request: pb::DeleteRangeRequest) -> DeleteRangeRequest {
    DeleteRangeRequest {
        key: request.key.into(),
        range_end: request.range_end.into(),
        prev_kv: request.prev_kv,
    }
}

fn compare_from_proto(compare: pb::Compare) -> Result<Compare, Status> {
    use pb::compare::{CompareResult as PbResult, CompareTarget as PbTarget, TargetUnion};
    let result = match PbResult::try_from(compare.result) {
        Ok(PbResult::Equal) => CompareResult::Equal,
        Ok(PbResult::Greater) => CompareResult::Greater,
        Ok(PbResult::Less) => CompareResult::Less,
        Ok(PbResult::NotEqual) => CompareResult::NotEqual,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown compare result {}",
                compare.result
            )))
        }
    };
    let number = |union: &Option<TargetUnion>| match union {
        Some(TargetUnion::Version(value))
        | Some(TargetUnion::CreateRevision(value))
        | Some(TargetUnion::ModRevision(value))
        | Some(TargetUnion::Lease(value)) => *value,
        _ => 0,
    };
    let target = match PbTarget::try_from(compare.target) {
        Ok(PbTarget::Version) => CompareTarget::Version(number(&compare.target_union)),
        Ok(PbTarget::Create) => CompareTarget::CreateRevision(number(&compare.target_union)),
        Ok(PbTarget::Mod) => CompareTarget::ModRevision(number(&compare.target_union)),
        Ok(PbTarget::Lease) => CompareTarget::Lease(number(&compare.target_union)),
        Ok(PbTarget::Value) => CompareTarget::Value(match compare.target_union {
            Some(TargetUnion::Value(value)) => value.into(),
            _ => Default::default(),
        }),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown compare target {}",
                compare.target
            )))
        }
    };
    Ok(Compare {
        key: compare.key.into(),
        range_end: compare.range_end.into(),
        target,
        result,
    })
}

fn op_from_proto(op: pb::RequestOp, depth: usize) -> Result<Op, Status> {
    use pb::request_op::Request as R;
    match op.request {
        Some(R::RequestRange(range)) => Ok(Op::Range(range_from_proto(&range))),
        Some(R::RequestPut(put)) => Ok(Op::Put(put_from_proto(put)?)),
        Some(R::RequestDeleteRange(delete)) => Ok(Op::DeleteRange(delete_from_proto(delete))),
        Some(R::RequestTxn(txn)) => Ok(Op::Txn(txn_from_proto(txn, depth + 1)?)),
        None => Err(Status::invalid_argument(
            "etcdserver: a txn operation carries no request",
        )),
    }
}

fn txn_from_proto(txn: pb::TxnRequest, depth: usize) -> Result<TxnRequest, Status> {
    if depth > MAX_TXN_DEPTH {
        return Err(Status::invalid_argument(format!(
            "etcdserver: transactions nested deeper than {MAX_TXN_DEPTH}"
        )));
    }
    Ok(TxnRequest {
        compare: txn
            .compare
            .into_iter()
            .map(compare_from_proto)
            .collect::<Result<_, _>>()?,
        success: txn
            .success
            .into_iter()
            .map(|op| op_from_proto(op, depth))
            .collect::<Result<_, _>>()?,
        failure: txn
            .failure
            .into_iter()
            .map(|op| op_from_proto(op, depth))
            .collect::<Result<_, _>>()?,
    })
}

impl EtcdApi {
    fn range_to_proto(&self, range: RangeResponse, revision: i64) -> pb::RangeResponse {
        pb::RangeResponse {
            header: self.header(revision),
            kvs: range.kvs.into_iter().map(mvccpb::KeyValue::from).collect(),
            more: range.more,
            count: range.count,
        }
    }

    fn op_response_to_proto(&self, response: OpResponse, revision: i64) -> pb::ResponseOp {
        use pb::response_op::Response as R;
        let response = match response {
            OpResponse::Range(range) => R::ResponseRange(self.range_to_proto(range, revision)),
            OpResponse::Put(put) => R::ResponsePut(pb::PutResponse {
                header: self.header(revision),
                prev_kv: put.prev_kv.map(mvccpb::KeyValue::from),
            }),
            OpResponse::DeleteRange(delete) => R::ResponseDeleteRange(pb::DeleteRangeResponse {
                header: self.header(revision),
                deleted: delete.deleted,
                prev_kvs: delete
                    .prev_kvs
                    .into_iter()
                    .map(mvccpb::KeyValue::from)
                    .collect(),
            }),
            OpResponse::Txn(txn) => R::ResponseTxn(pb::TxnResponse {
                header: self.header(revision),
                succeeded: txn.succeeded,
                responses: txn
                    .responses
                    .into_iter()
                    .map(|response| self.op_response_to_proto(response, revision))
                    .collect(),
            }),
            // The store refuses compactions, alarms and lease operations inside a txn, so
            // none answers here.
            OpResponse::Compact
            | OpResponse::Alarm { .. }
            | OpResponse::LeaseGrant { .. }
            | OpResponse::LeaseRevoke { .. }
            | OpResponse::LeasePromote { .. }
            | OpResponse::LeaseExpire { .. } => return pb::ResponseOp { response: None },
        };
        pb::ResponseOp {
            response: Some(response),
        }
    }
}

/// A range with etcd's options the store does not implement itself: sorting and the
/// min/max revision filters (applied before `limit`; `count` counts the whole range).
pub fn range_with_options(store: &KvStore, request: &pb::RangeRequest) -> Response {
    use pb::range_request::{SortOrder, SortTarget};
    let target = SortTarget::try_from(request.sort_target).unwrap_or(SortTarget::Key);
    let mut order = SortOrder::try_from(request.sort_order).unwrap_or(SortOrder::None);
    if order == SortOrder::None && target != SortTarget::Key {
        order = SortOrder::Ascend;
    }
    let filtered = request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0;
    let natural = matches!(order, SortOrder::None)
        || (target == SortTarget::Key && order == SortOrder::Ascend);
    if natural && !filtered {
        return store.read(&range_from_proto(request));
    }
    let mut everything = range_from_proto(request);
    everything.limit = 0;
    everything.count_only = false;
    let mut response = store.read(&everything);
    if let Ok(OpResponse::Range(range)) = &mut response.result {
        range.kvs.retain(|kv| {
            (request.min_mod_revision == 0 || kv.mod_revision >= request.min_mod_revision)
                && (request.max_mod_revision == 0 || kv.mod_revision <= request.max_mod_revision)
                && (request.min_create_revision == 0
                    || kv.create_revision >= request.min_create_revision)
                && (request.max_create_revision == 0
                    || kv.create_revision <= request.max_create_revision)
        });
        if !natural {
            range.kvs.sort_by(|a, b| match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            });
            if order == SortOrder::Descend {
                range.kvs.reverse();
            }
        }
        if request.count_only {
            range.kvs.clear();
        } else if request.limit > 0 && range.kvs.len() > request.limit as usize {
            range.kvs.truncate(request.limit as usize);
            range.more = true;
        }
    }
    response
}

#[tonic::async_trait]
impl Kv for EtcdApi {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<tonic::Response<pb::RangeResponse>, Status> {
        let request = request.into_inner();
        let consistency = if request.serializable {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        let response = self
            .handle
            .read(consistency, move |store: &KvStore| {
                range_with_options(store, &request)
            })
            .await
            .map_err(server_status)?;
        match response.result.map_err(kv_status)? {
            OpResponse::Range(range) => Ok(tonic::Response::new(
                self.range_to_proto(range, response.revision),
            )),
            other => Err(Status::internal(format!("a range produced {other:?}"))),
        }
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<tonic::Response<pb::PutResponse>, Status> {
        let put = put_from_proto(request.into_inner())?;
        let response = self.execute(Op::Put(put)).await?;
        match response.result.map_err(kv_status)? {
            OpResponse::Put(put) => Ok(tonic::Response::new(pb::PutResponse {
                header: self.header(response.revision),
                prev_kv: put.prev_kv.map(mvccpb::KeyValue::from),
            })),
            other => Err(Status::internal(format!("a put produced {other:?}"))),
        }
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<tonic::Response<pb::DeleteRangeResponse>, Status> {
        let delete = delete_from_proto(request.into_inner());
        let response = self.execute(Op::DeleteRange(delete)).await?;
        match response.result.map_err(kv_status)? {
            OpResponse::DeleteRange(delete) => Ok(tonic::Response::new(pb::DeleteRangeResponse {
                header: self.header(response.revision),
                deleted: delete.deleted,
                prev_kvs: delete
                    .prev_kvs
                    .into_iter()
                    .map(mvccpb::KeyValue::from)
                    .collect(),
            })),
            other => Err(Status::internal(format!("a delete produced {other:?}"))),
        }
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<tonic::Response<pb::TxnResponse>, Status> {
        let txn = txn_from_proto(request.into_inner(), 1)?;
        let response = self.execute(Op::Txn(txn)).await?;
        match response.result.map_err(kv_status)? {
            OpResponse::Txn(txn) => Ok(tonic::Response::new(pb::TxnResponse {
                header: self.header(response.revision),
                succeeded: txn.succeeded,
                responses: txn
                    .responses
                    .into_iter()
                    .map(|op| self.op_response_to_proto(op, response.revision))
                    .collect(),
            })),
            other => Err(Status::internal(format!("a txn produced {other:?}"))),
        }
    }

    /// Through the log, so every member compacts at the same revision. `physical` needs no
    /// wait: the history is dropped when the command applies.
    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<tonic::Response<pb::CompactionResponse>, Status> {
        let request = request.into_inner();
        let compact = Op::Compact(CompactRequest {
            revision: request.revision,
            physical: request.physical,
        });
        let response = self.execute(compact).await?;
        match response.result.map_err(kv_status)? {
            OpResponse::Compact => Ok(tonic::Response::new(pb::CompactionResponse {
                header: self.header(response.revision),
            })),
            other => Err(Status::internal(format!("a compaction produced {other:?}"))),
        }
    }
}

const STATIC_MEMBERSHIP: &str = "membership is static; it is set by --initial-cluster";

#[tonic::async_trait]
impl ClusterService for EtcdApi {
    async fn member_add(
        &self,
        _request: Request<pb::Unserved>,
    ) -> Result<tonic::Response<pb::Unserved>, Status> {
        Err(unserved(
            "etcdserverpb.Cluster/MemberAdd",
            STATIC_MEMBERSHIP,
        ))
    }

    async fn member_remove(
        &self,
        _request: Request<pb::Unserved>,
    ) -> Result<tonic::Response<pb::Unserved>, Status> {
        Err(unserved(
            "etcdserverpb.Cluster/MemberRemove",
            STATIC_MEMBERSHIP,
        ))
    }

    async fn member_update(
        &self,
        _request: Request<pb::Unserved>,
    ) -> Result<tonic::Response<pb::Unserved>, Status> {
        Err(unserved(
            "etcdserverpb.Cluster/MemberUpdate",
            STATIC_MEMBERSHIP,
        ))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<tonic::Response<pb::MemberListResponse>, Status> {
        let directory = self
            .directory
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        let members = self
            .cluster
            .members
            .iter()
            .map(|member| pb::Member {
                id: member.id,
                name: member.name.clone(),
                peer_ur_ls: vec![member.peer_url.clone()],
                client_ur_ls: directory
                    .get(&member.id)
                    .map(|info| info.client_urls.clone())
                    .unwrap_or_default(),
                is_learner: false,
            })
            .collect();
        let revision = self
            .handle
            .read(Consistency::Serializable, |store: &KvStore| {
                store.revision()
            })
            .await
            .map_err(server_status)?;
        Ok(tonic::Response::new(pb::MemberListResponse {
            header: self.header(revision),
            members,
        }))
    }

    async fn member_promote(
        &self,
        _request: Request<pb::Unserved>,
    ) -> Result<tonic::Response<pb::Unserved>, Status> {
        Err(unserved(
            "etcdserverpb.Cluster/MemberPromote",
            "there are no learners; membership is static",
        ))
    }
}

#[tonic::async_trait]
impl Maintenance for EtcdApi {
    /// etcd's alarm store, replicated: ACTIVATE and DEACTIVATE of a (member id, alarm type)
    /// go through the log, so every member lists the same alarms; each answers the alarm
    /// it added or removed. GET lists the alarms of the requested type (NONE: every type),
    /// and the NOSPACE alarm the quota raised, which every member raises at once while
    /// applying the log, once per member.
    async fn alarm(
        &self,
        request: Request<pb::AlarmRequest>,
    ) -> Result<tonic::Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction as PbAction;
        let request = request.into_inner();
        let action = match PbAction::try_from(request.action) {
            Ok(PbAction::Get) => None,
            Ok(PbAction::Activate) => Some(AlarmAction::Activate),
            Ok(PbAction::Deactivate) => Some(AlarmAction::Deactivate),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: unknown alarm action {}",
                    request.action
                )))
            }
        };
        let kind = match pb::AlarmType::try_from(request.alarm) {
            Ok(pb::AlarmType::None) => None,
            Ok(pb::AlarmType::Nospace) => Some(AlarmKind::Nospace),
            Ok(pb::AlarmType::Corrupt) => Some(AlarmKind::Corrupt),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "etcdserver: unknown alarm type {}",
                    request.alarm
                )))
            }
        };
        let (revision, alarms) = match (action, kind) {
            (None, _) => self.list_alarms(kind).await?,
            // etcd records no alarm of type NONE.
            (Some(_), None) => (self.current_revision().await?, Vec::new()),
            (Some(action), Some(alarm)) => {
                let member_id = request.member_id;
                let op = Op::MemberAlarm(AlarmRequest {
                    action,
                    member_id,
                    alarm,
                });
                let response = self.execute(op).await?;
                match response.result.map_err(kv_status)? {
                    OpResponse::Alarm { changed, .. } => {
                        let alarms = if changed {
                            vec![(member_id, alarm)]
                        } else {
                            Vec::new()
                        };
                        (response.revision, alarms)
                    }
                    other => return Err(Status::internal(format!("an alarm produced {other:?}"))),
                }
            }
        };
        Ok(tonic::Response::new(pb::AlarmResponse {
            header: self.header(revision),
            alarms: alarms
                .into_iter()
                .map(|(member_id, alarm)| pb::AlarmMember {
                    member_id,
                    alarm: alarm_type(alarm) as i32,
                })
                .collect(),
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<tonic::Response<pb::StatusResponse>, Status> {
        let status = self.handle.status().await.map_err(server_status)?;
        // etcd reports its backend's size; ours is the quota's estimate of the retained
        // history, the figure `--quota-backend-bytes` is held to.
        let (revision, history_bytes) = self
            .handle
            .read(Consistency::Serializable, |store: &KvStore| {
                (store.revision(), store.history_bytes())
            })
            .await
            .map_err(server_status)?;
        let db_size = i64::try_from(history_bytes).unwrap_or(i64::MAX);
        Ok(tonic::Response::new(pb::StatusResponse {
            header: self.header(revision),
            version: SERVER_VERSION.to_string(),
            db_size,
            leader: status.leader.unwrap_or(0),
            raft_index: status.commit_index,
            raft_term: status.promised.round,
            raft_applied_index: status.applied_slot,
            errors: Vec::new(),
            db_size_in_use: db_size,
            is_learner: false,
        }))
    }

    /// Succeeds having done nothing: there is no file to defragment. The store lives in
    /// memory, and the write-ahead log is cut at every snapshot (`--snapshot-count`), which
    /// frees its segments; a compaction frees the history it drops at once.
    async fn defragment(
        &self,
        _request: Request<pb::DefragmentRequest>,
    ) -> Result<tonic::Response<pb::DefragmentResponse>, Status> {
        // etcd answers an empty response (no header); the Rust client's suite checks it.
        Ok(tonic::Response::new(pb::DefragmentResponse {
            header: None,
        }))
    }

    /// The hash of this member's whole replicated state ([`KvStore::hash`]), as applied here.
    async fn hash(
        &self,
        _request: Request<pb::HashRequest>,
    ) -> Result<tonic::Response<pb::HashResponse>, Status> {
        let (revision, hash) = self
            .handle
            .read(Consistency::Serializable, |store: &KvStore| {
                (store.revision(), store.hash())
            })
            .await
            .map_err(server_status)?;
        Ok(tonic::Response::new(pb::HashResponse {
            header: self.header(revision),
            hash,
        }))
    }

    /// etcd's `HashKV` over this member's history ([`KvStore::hash_kv`]): members that
    /// applied the log up to the revision answer the same hash.
    async fn hash_kv(
        &self,
        request: Request<pb::HashKvRequest>,
    ) -> Result<tonic::Response<pb::HashKvResponse>, Status> {
        let requested = request.into_inner().revision;
        let (revision, hashed) = self
            .handle
            .read(Consistency::Serializable, move |store: &KvStore| {
                (store.revision(), store.hash_kv(requested))
            })
            .await
            .map_err(server_status)?;
        let hashed = hashed.map_err(kv_status)?;
        Ok(tonic::Response::new(pb::HashKvResponse {
            header: self.header(revision),
            hash: hashed.hash,
            compact_revision: hashed.compact_revision,
            hash_revision: hashed.revision,
        }))
    }

    type SnapshotStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>,
    >;

    /// This member's state as applied here, as etcd's snapshot file (crate::snapshot_file:
    /// a bbolt database with etcd's buckets and Synod's backup, then its sha256), in
    /// chunks. The state is frozen at once (an O(1) clone) and written off the replica's
    /// thread.
    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<tonic::Response<Self::SnapshotStream>, Status> {
        let (revision, store) = self
            .handle
            .read(Consistency::Serializable, |store: &KvStore| {
                (store.revision(), store.clone())
            })
            .await
            .map_err(server_status)?;
        let file = tokio::task::spawn_blocking(move || crate::snapshot_file::encode(&store))
            .await
            .map_err(|error| Status::internal(format!("writing the snapshot failed: {error}")))?;
        let file = bytes::Bytes::from(file);
        let header = self.header(revision);
        let total = file.len();
        let chunks = (0..total).step_by(SNAPSHOT_CHUNK_BYTES).map(move |start| {
            let end = (start + SNAPSHOT_CHUNK_BYTES).min(total);
            Ok(pb::SnapshotResponse {
                header,
                remaining_bytes: (total - end) as u64,
                blob: file.slice(start..end).to_vec(),
            })
        });
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    /// Hands the leadership to `targetID` (docs/leader-transfer.md) and answers once the
    /// target leads. As etcd: only the leader takes it (etcdctl finds the leader's
    /// endpoint first); a target that is not a member is a bad transferee; a transfer that
    /// does not finish within an election timeout is reported as taking too long.
    async fn move_leader(
        &self,
        request: Request<pb::MoveLeaderRequest>,
    ) -> Result<tonic::Response<pb::MoveLeaderResponse>, Status> {
        use synod_core::TransferError;
        let target = request.into_inner().target_id;
        match self.handle.move_leader(target).await {
            Ok(()) => {}
            Err(MoveLeaderError::Refused(TransferError::UnknownMember(_))) => {
                return Err(Status::failed_precondition(
                    "etcdserver: bad leader transferee",
                ))
            }
            Err(MoveLeaderError::Refused(TransferError::NotLeader { .. })) => {
                return Err(Status::failed_precondition("etcdserver: not leader"))
            }
            Err(MoveLeaderError::Refused(other)) => {
                return Err(Status::failed_precondition(format!("etcdserver: {other}")))
            }
            Err(MoveLeaderError::TimedOut) => {
                return Err(Status::unavailable(
                    "etcdserver: request timed out, leader transfer took too long",
                ))
            }
            Err(MoveLeaderError::Stopped) => {
                return Err(Status::unavailable("etcdserver: server stopped"))
            }
        }
        Ok(tonic::Response::new(pb::MoveLeaderResponse {
            header: self.header(0),
        }))
    }
}

/// The bytes of backup file each `SnapshotResponse` carries (etcd sends 32 KiB).
const SNAPSHOT_CHUNK_BYTES: usize = 64 * 1024;

fn alarm_type(alarm: AlarmKind) -> pb::AlarmType {
    match alarm {
        AlarmKind::Nospace => pb::AlarmType::Nospace,
        AlarmKind::Corrupt => pb::AlarmType::Corrupt,
    }
}

impl EtcdApi {
    async fn current_revision(&self) -> Result<i64, Status> {
        self.handle
            .read(Consistency::Serializable, |store: &KvStore| {
                store.revision()
            })
            .await
            .map_err(server_status)
    }

    /// The alarms of one kind (None: all), members' and the quota's, by member then kind.
    async fn list_alarms(
        &self,
        kind: Option<AlarmKind>,
    ) -> Result<(i64, Vec<(u64, AlarmKind)>), Status> {
        let (revision, quota, members) = self
            .handle
            .read(Consistency::Serializable, |store: &KvStore| {
                (store.revision(), store.quota_alarm(), store.member_alarms())
            })
            .await
            .map_err(server_status)?;
        let mut alarms: std::collections::BTreeSet<(u64, AlarmKind)> =
            members.into_iter().collect();
        if quota {
            alarms.extend(
                self.cluster
                    .ids()
                    .into_iter()
                    .map(|id| (id, AlarmKind::Nospace)),
            );
        }
        alarms.retain(|(_, alarm)| kind.is_none_or(|kind| kind == *alarm));
        Ok((revision, alarms.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_kv::StateMachine;

    fn store_with(keys: &[(&str, &str)]) -> KvStore {
        let mut store = KvStore::new();
        for (slot, (key, value)) in keys.iter().enumerate() {
            let command = Command::unsessioned(Op::Put(PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                ..Default::default()
            }));
            store.apply(slot as u64 + 1, &command.encode());
        }
        store
    }

    fn keys(response: Response) -> Vec<String> {
        match response.result {
            Ok(OpResponse::Range(range)) => range
                .kvs
                .into_iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect(),
            other => panic!("expected a range, got {other:?}"),
        }
    }

    #[test]
    fn ranges_sort_and_filter_before_the_limit() {
        let store = store_with(&[("a", "3"), ("b", "1"), ("c", "2")]);
        let request = pb::RangeRequest {
            key: b"a".to_vec(),
            range_end: b"z".to_vec(),
            sort_target: pb::range_request::SortTarget::Value as i32,
            limit: 2,
            ..Default::default()
        };
        assert_eq!(keys(range_with_options(&store, &request)), ["b", "c"]);
        let descending = pb::RangeRequest {
            sort_order: pb::range_request::SortOrder::Descend as i32,
            sort_target: pb::range_request::SortTarget::Key as i32,
            ..request.clone()
        };
        assert_eq!(keys(range_with_options(&store, &descending)), ["c", "b"]);
        let filtered = pb::RangeRequest {
            min_mod_revision: 3,
            limit: 0,
            sort_target: 0,
            ..request
        };
        // "b" was written at revision 3, "c" at 4.
        assert_eq!(keys(range_with_options(&store, &filtered)), ["b", "c"]);
    }

    #[test]
    fn compares_map_every_target_and_refuse_unknown_enums() {
        let compare = pb::Compare {
            result: pb::compare::CompareResult::Greater as i32,
            target: pb::compare::CompareTarget::Mod as i32,
            key: b"k".to_vec(),
            target_union: Some(pb::compare::TargetUnion::ModRevision(4)),
            range_end: Vec::new(),
        };
        let mapped = compare_from_proto(compare.clone()).unwrap();
        assert_eq!(mapped.target, CompareTarget::ModRevision(4));
        assert_eq!(mapped.result, CompareResult::Greater);
        let bad = pb::Compare {
            target: 42,
            ..compare
        };
        assert_eq!(
            compare_from_proto(bad).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn lease_errors_carry_etcds_codes_and_messages() {
        let error = kv_status(KvError::LeaseNotFound(7));
        assert_eq!(error.code(), tonic::Code::NotFound);
        assert_eq!(error.message(), "etcdserver: requested lease not found");
        let error = kv_status(KvError::LeaseExists(7));
        assert_eq!(error.code(), tonic::Code::FailedPrecondition);
        assert_eq!(error.message(), "etcdserver: lease already exists");
    }
}
