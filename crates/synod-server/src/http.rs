//! The HTTP endpoints etcd serves beside its gRPC API: `/health`, `/metrics` and
//! `/version`. On a client port they share the listener with gRPC (the client server
//! accepts HTTP/1.1 and routes by path); on `--listen-metrics-urls` they are served
//! alone by [`serve_http`], behind a connection limit and timeouts.

use crate::etcd::{CLUSTER_VERSION, SERVER_VERSION, SYNOD_VERSION};
use crate::metrics::Metrics;
use crate::{Consistency, Handle, ServerError};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use synod_kv::KvStore;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower_http::timeout::TimeoutLayer;

/// What the endpoints need of the node.
#[derive(Clone)]
pub struct HttpState {
    pub handle: Handle<KvStore>,
    pub metrics: Arc<Metrics>,
    /// How long `/health` waits for its read (etcd: the request timeout).
    pub health_timeout: Duration,
    /// Whether `/debug/timeline` is served (`ServerConfig::debug_timeline`).
    pub debug_timeline: bool,
}

/// etcd's `/health` answer (`{"health":"true","reason":""}`).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Health {
    pub health: String,
    pub reason: String,
}

/// etcd's `/version` answer, and Synod's own version beside it.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub struct Version {
    pub etcdserver: String,
    pub etcdcluster: String,
    pub synod: String,
}

#[derive(Deserialize)]
struct TimelineQuery {
    enable: Option<bool>,
}

/// The request path's events recorded since the last call, then recording on or off
/// (`?enable=true|false`; `crate::timeline`).
async fn timeline(State(state): State<HttpState>, Query(query): Query<TimelineQuery>) -> Response {
    if !state.debug_timeline {
        return (
            StatusCode::NOT_FOUND,
            "the request timeline is off: start the member with --enable-debug-timeline\n",
        )
            .into_response();
    }
    Json(state.metrics.timeline.take(query.enable)).into_response()
}

#[derive(Deserialize)]
struct HealthQuery {
    serializable: Option<String>,
}

/// `/health`, `/metrics` and `/version`; any other method on them is 405.
pub fn routes(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/version", get(version))
        .route("/debug/timeline", get(timeline))
        .with_state(state)
}

/// As etcd's `/health`: healthy when this member sees a leader and a linearizable read
/// (a quorum round or the leader's lease, then this replica catching up) completes within
/// the timeout. `?serializable=true` skips the leader check and reads locally.
async fn health(State(state): State<HttpState>, Query(query): Query<HealthQuery>) -> Response {
    let serializable = query.serializable.as_deref() == Some("true");
    let (status, reason) = match check_health(&state, serializable).await {
        Ok(()) => {
            state.metrics.health_success.inc();
            (StatusCode::OK, String::new())
        }
        Err(reason) => {
            state.metrics.health_failures.inc();
            tracing::warn!(%reason, "serving /health false");
            (StatusCode::SERVICE_UNAVAILABLE, reason)
        }
    };
    let health = Health {
        health: (status == StatusCode::OK).to_string(),
        reason,
    };
    (status, Json(health)).into_response()
}

async fn check_health(state: &HttpState, serializable: bool) -> Result<(), String> {
    if !serializable {
        let status = state.handle.status().await.map_err(range_error)?;
        if status.leader.is_none() {
            return Err("RAFT NO LEADER".to_string());
        }
    }
    let consistency = if serializable {
        Consistency::Serializable
    } else {
        Consistency::Linearizable
    };
    let read = state.handle.read(consistency, |_| ());
    match tokio::time::timeout(state.health_timeout, read).await {
        Ok(result) => result.map_err(range_error),
        Err(_) => Err(range_error(ServerError::Timeout {
            after: state.health_timeout,
        })),
    }
}

fn range_error(error: ServerError) -> String {
    format!("RANGE ERROR:{error}")
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn version() -> Json<Version> {
    Json(Version {
        etcdserver: SERVER_VERSION.to_string(),
        etcdcluster: CLUSTER_VERSION.to_string(),
        synod: SYNOD_VERSION.to_string(),
    })
}

/// Bounds of the metrics listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections served at once; one more is closed at once.
    pub max_connections: usize,
    /// A connection that sends no complete request head for this long (idle keep-alive
    /// included) is closed.
    pub header_read_timeout: Duration,
    /// A request not answered within this is answered 408.
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `router` over HTTP/1.1 on `listener` until `stop` turns true.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let router = router.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!(%error, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            metrics.http_connections_refused.inc();
            tracing::debug!(%remote, limit = limits.max_connections, "closing a metrics connection over the limit");
            continue;
        };
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            // Stopping drops the connection: a scrape in flight is cut, nothing else is lost.
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%remote, %error, "metrics connection ended");
                    }
                }
                _ = stop.changed() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    //! The metrics listener's bounds, over a router with a fast and a never-ending route.

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Generous bound on waits that should end quickly; a failure, never a measurement.
    const PATIENCE: Duration = Duration::from_secs(30);

    async fn start(limits: HttpLimits) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let router = Router::new()
            .route("/fast", get(|| async { "fast" }))
            .route("/never", get(std::future::pending::<&'static str>));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve_http(
            listener,
            router,
            limits,
            Metrics::new(1),
            stopped,
        ));
        (addr, stop)
    }

    /// Sends a keep-alive GET on `stream` and reads until the response's body arrived.
    async fn get_on(stream: &mut TcpStream, path: &str) -> String {
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let mut response = Vec::new();
        let mut buffer = [0u8; 1024];
        while !String::from_utf8_lossy(&response).contains("\r\n\r\n") {
            let read = tokio::time::timeout(PATIENCE, stream.read(&mut buffer))
                .await
                .expect("a response in time")
                .expect("read");
            assert!(read > 0, "connection closed before a response");
            response.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8_lossy(&response).into_owned()
    }

    /// Reads until the server closes the connection; returns what it sent first.
    async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received))
            .await
            .expect("the server closes the connection in time")
            .unwrap_or_default();
        received
    }

    #[tokio::test]
    async fn a_connection_over_the_limit_is_closed_at_once() {
        let limits = HttpLimits {
            max_connections: 1,
            ..HttpLimits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut first = TcpStream::connect(addr).await.expect("connect");
        // Answered, so the server has accepted it and holds its one permit.
        assert!(get_on(&mut first, "/fast")
            .await
            .starts_with("HTTP/1.1 200"));
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let _ = second
            .write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        assert!(read_until_closed(&mut second).await.is_empty());
        // The first connection still works; once it is closed, a new one is served.
        assert!(get_on(&mut first, "/fast")
            .await
            .starts_with("HTTP/1.1 200"));
        drop(first);
        let mut third = None;
        for _ in 0..300 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let _ = stream
                .write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            let mut buffer = [0u8; 64];
            if let Ok(Ok(read)) = tokio::time::timeout(PATIENCE, stream.read(&mut buffer)).await {
                if read > 0 {
                    third = Some(String::from_utf8_lossy(&buffer[..read]).into_owned());
                    break;
                }
            }
            // The server may not have seen the first one close yet.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(third
            .expect("served after the first closed")
            .starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_after_the_header_timeout() {
        let limits = HttpLimits {
            header_read_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        read_until_closed(&mut silent).await;
        // A kept-alive connection that goes quiet is closed too.
        let mut kept = TcpStream::connect(addr).await.expect("connect");
        assert!(get_on(&mut kept, "/fast").await.starts_with("HTTP/1.1 200"));
        read_until_closed(&mut kept).await;
    }

    #[tokio::test]
    async fn a_request_not_answered_in_time_gets_408() {
        let limits = HttpLimits {
            request_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        };
        let (addr, _stop) = start(limits).await;
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        assert!(get_on(&mut stream, "/never")
            .await
            .starts_with("HTTP/1.1 408"));
    }
}
