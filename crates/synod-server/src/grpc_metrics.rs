//! The gRPC server metrics etcd exports through go-grpc-prometheus —
//! `grpc_server_started_total`, `grpc_server_handled_total` and
//! `grpc_server_handling_seconds`, labelled `grpc_type`, `grpc_service`, `grpc_method`
//! (and `grpc_code` once handled) — and etcd's `etcd_network_client_grpc_{sent,received}
//! _bytes_total`, counted by one middleware in front of every gRPC route.
//!
//! The code of a call is read where gRPC puts it: in the response headers of a
//! trailers-only answer (an error before any message), otherwise in the trailers at the
//! end of the response body. A call whose response is dropped unfinished (the client went
//! away) is `Canceled`, as a cancelled context is in Go.

use crate::metrics::{counter, counter_vec, histogram_vec};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::Frame;
use prometheus::{HistogramVec, IntCounter, IntCounterVec, Registry};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// gRPC's status codes by number, spelled as Go's `codes.Code.String()` (the label values
/// etcd's dashboards and alerts match on).
pub const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

const UNARY: &str = "unary";
const SERVER_STREAM: &str = "server_stream";
const BIDI_STREAM: &str = "bidi_stream";

/// etcd 3.4's v3 API (etcd's `api/etcdserverpb/rpc.proto`): service, method, gRPC type.
/// Synod answers every one of them (UNIMPLEMENTED for those it does not serve), so each is
/// counted from 0 at start, as go-grpc-prometheus does for a registered service: the
/// dashboards' rates then read 0 rather than "no data".
const ETCD_METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", UNARY),
    ("etcdserverpb.KV", "Put", UNARY),
    ("etcdserverpb.KV", "DeleteRange", UNARY),
    ("etcdserverpb.KV", "Txn", UNARY),
    ("etcdserverpb.KV", "Compact", UNARY),
    ("etcdserverpb.Watch", "Watch", BIDI_STREAM),
    ("etcdserverpb.Lease", "LeaseGrant", UNARY),
    ("etcdserverpb.Lease", "LeaseRevoke", UNARY),
    ("etcdserverpb.Lease", "LeaseKeepAlive", BIDI_STREAM),
    ("etcdserverpb.Lease", "LeaseTimeToLive", UNARY),
    ("etcdserverpb.Lease", "LeaseLeases", UNARY),
    ("etcdserverpb.Cluster", "MemberAdd", UNARY),
    ("etcdserverpb.Cluster", "MemberRemove", UNARY),
    ("etcdserverpb.Cluster", "MemberUpdate", UNARY),
    ("etcdserverpb.Cluster", "MemberList", UNARY),
    ("etcdserverpb.Cluster", "MemberPromote", UNARY),
    ("etcdserverpb.Maintenance", "Alarm", UNARY),
    ("etcdserverpb.Maintenance", "Status", UNARY),
    ("etcdserverpb.Maintenance", "Defragment", UNARY),
    ("etcdserverpb.Maintenance", "Hash", UNARY),
    ("etcdserverpb.Maintenance", "HashKV", UNARY),
    ("etcdserverpb.Maintenance", "Snapshot", SERVER_STREAM),
    ("etcdserverpb.Maintenance", "MoveLeader", UNARY),
    ("etcdserverpb.Auth", "AuthEnable", UNARY),
    ("etcdserverpb.Auth", "AuthDisable", UNARY),
    ("etcdserverpb.Auth", "Authenticate", UNARY),
    ("etcdserverpb.Auth", "UserAdd", UNARY),
    ("etcdserverpb.Auth", "UserGet", UNARY),
    ("etcdserverpb.Auth", "UserList", UNARY),
    ("etcdserverpb.Auth", "UserDelete", UNARY),
    ("etcdserverpb.Auth", "UserChangePassword", UNARY),
    ("etcdserverpb.Auth", "UserGrantRole", UNARY),
    ("etcdserverpb.Auth", "UserRevokeRole", UNARY),
    ("etcdserverpb.Auth", "RoleAdd", UNARY),
    ("etcdserverpb.Auth", "RoleGet", UNARY),
    ("etcdserverpb.Auth", "RoleList", UNARY),
    ("etcdserverpb.Auth", "RoleDelete", UNARY),
    ("etcdserverpb.Auth", "RoleGrantPermission", UNARY),
    ("etcdserverpb.Auth", "RoleRevokePermission", UNARY),
];

/// The labels of a path outside etcd's API: one series for all of them, so a client
/// cannot grow the registry by inventing paths.
const UNKNOWN: (&str, &str, &str) = ("unknown", "unknown", UNARY);

/// The (service, method, type) labels of a request path `/service/method`.
fn labels_of(path: &str) -> (&'static str, &'static str, &'static str) {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return UNKNOWN;
    };
    ETCD_METHODS
        .iter()
        .find(|(known_service, known_method, _)| {
            *known_service == service && *known_method == method
        })
        .copied()
        .unwrap_or(UNKNOWN)
}

/// The `grpc-status` of a header or trailer map, as a code name.
fn code_in(headers: &HeaderMap) -> Option<&'static str> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    let number: usize = value.trim().parse().ok()?;
    Some(CODES.get(number).copied().unwrap_or("Unknown"))
}

/// True for a gRPC request (by its content type).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

#[derive(Clone)]
pub struct GrpcMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    handling_seconds: HistogramVec,
    received_bytes: IntCounter,
    sent_bytes: IntCounter,
}

impl GrpcMetrics {
    pub fn new(registry: &Registry) -> GrpcMetrics {
        let method_labels = ["grpc_type", "grpc_service", "grpc_method"];
        let started = counter_vec(
            registry,
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            &method_labels,
        );
        let handled = counter_vec(
            registry,
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        );
        // go-grpc-prometheus's default layout (Prometheus' DefBuckets), which etcd keeps.
        let buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let handling_seconds = histogram_vec(
            registry,
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
            buckets,
            &method_labels,
        );
        for (service, method, kind) in ETCD_METHODS {
            started.with_label_values(&[kind, service, method]);
            for code in CODES {
                handled.with_label_values(&[kind, service, method, code]);
            }
        }
        GrpcMetrics {
            started,
            handled,
            handling_seconds,
            received_bytes: counter(
                registry,
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            ),
            sent_bytes: counter(
                registry,
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
            ),
        }
    }

    fn start(&self, path: &str) -> Call {
        let labels = labels_of(path);
        let (service, method, kind) = labels;
        self.started
            .with_label_values(&[kind, service, method])
            .inc();
        Call {
            metrics: self.clone(),
            labels,
            started: Instant::now(),
            finished: false,
        }
    }
}

/// One gRPC call being served; counted as handled exactly once.
struct Call {
    metrics: GrpcMetrics,
    labels: (&'static str, &'static str, &'static str),
    started: Instant,
    finished: bool,
}

impl Call {
    fn finish(&mut self, code: &str) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let (service, method, kind) = self.labels;
        self.metrics
            .handled
            .with_label_values(&[kind, service, method, code])
            .inc();
        self.metrics
            .handling_seconds
            .with_label_values(&[kind, service, method])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish("Canceled");
    }
}

/// A body that counts its data bytes and, for a response, finishes the call at its
/// trailers.
struct MeteredBody {
    inner: Body,
    bytes: IntCounter,
    call: Option<Call>,
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.inc_by(data.len() as u64);
                }
                if let (Some(trailers), Some(call)) = (frame.trailers_ref(), this.call.as_mut()) {
                    call.finish(code_in(trailers).unwrap_or("Unknown"));
                }
            }
            // The body ended or failed without a status: gRPC calls that Unknown.
            Poll::Ready(_) => {
                if let Some(call) = this.call.as_mut() {
                    call.finish("Unknown");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The middleware: counts gRPC requests (by content type) and passes everything else
/// through untouched.
pub async fn count_grpc(
    State(metrics): State<Arc<crate::metrics::Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    if !is_grpc(request.headers()) {
        return next.run(request).await;
    }
    metrics.timeline.record("grpc_in", "", 0, 0);
    let grpc = &metrics.grpc;
    let mut call = grpc.start(request.uri().path());
    let received = grpc.received_bytes.clone();
    let request = request.map(|inner| {
        Body::new(MeteredBody {
            inner,
            bytes: received,
            call: None,
        })
    });
    let response = next.run(request).await;
    metrics.timeline.record("grpc_out", "", 0, 0);
    let call = match code_in(response.headers()) {
        Some(code) => {
            call.finish(code);
            None
        }
        None => Some(call),
    };
    let sent = grpc.sent_bytes.clone();
    response.map(|inner| {
        Body::new(MeteredBody {
            inner,
            bytes: sent,
            call,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_etcds_labels_and_strangers_share_one_series() {
        assert_eq!(
            labels_of("/etcdserverpb.KV/Range"),
            ("etcdserverpb.KV", "Range", "unary")
        );
        assert_eq!(
            labels_of("/etcdserverpb.Watch/Watch"),
            ("etcdserverpb.Watch", "Watch", "bidi_stream")
        );
        assert_eq!(
            labels_of("/etcdserverpb.Maintenance/Snapshot"),
            ("etcdserverpb.Maintenance", "Snapshot", "server_stream")
        );
        assert_eq!(labels_of("/made.Up/Path"), UNKNOWN);
        assert_eq!(labels_of("/noslash"), UNKNOWN);
    }

    #[test]
    fn status_codes_are_named_as_go_names_them() {
        let mut headers = HeaderMap::new();
        assert_eq!(code_in(&headers), None);
        headers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(code_in(&headers), Some("OK"));
        headers.insert("grpc-status", "12".parse().unwrap());
        assert_eq!(code_in(&headers), Some("Unimplemented"));
        headers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(code_in(&headers), Some("Unavailable"));
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(code_in(&headers), Some("Unknown"));
    }

    #[test]
    fn a_call_is_handled_once_and_a_dropped_one_is_canceled() {
        let registry = Registry::new();
        let metrics = GrpcMetrics::new(&registry);
        let handled = |code: &str| {
            metrics
                .handled
                .with_label_values(&["unary", "etcdserverpb.KV", "Put", code])
                .get()
        };
        let mut call = metrics.start("/etcdserverpb.KV/Put");
        call.finish("OK");
        call.finish("Internal");
        drop(call);
        drop(metrics.start("/etcdserverpb.KV/Put"));
        assert_eq!(handled("OK"), 1);
        assert_eq!(handled("Internal"), 0);
        assert_eq!(handled("Canceled"), 1);
        assert_eq!(
            metrics
                .started
                .with_label_values(&["unary", "etcdserverpb.KV", "Put"])
                .get(),
            2
        );
    }
}
