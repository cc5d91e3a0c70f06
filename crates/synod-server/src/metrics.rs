//! Prometheus metrics of one replica, and the plain-HTTP endpoint that serves them
//! (`GET /metrics`; `GET /health` answers `ok`). Each server has its own registry, so
//! several replicas can share a process (as in the tests).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct Metrics {
    pub registry: Registry,
    /// Client proposals received by this node.
    pub proposals: IntCounter,
    /// Client proposals that failed (timeout, shutdown).
    pub proposals_failed: IntCounter,
    /// Proposals sent again after a leader change or a timeout.
    pub proposal_retries: IntCounter,
    /// Slots applied to the state machine.
    pub commits: IntCounter,
    pub commands_applied: IntCounter,
    /// Phase 1 runs started by this node.
    pub phase1_runs: IntCounter,
    /// Times this node saw the leader change.
    pub leader_changes: IntCounter,
    /// Round of the highest ballot this node promised.
    pub current_ballot: IntGauge,
    pub commit_index: IntGauge,
    pub applied_slot: IntGauge,
    pub is_leader: IntGauge,
    /// From submitting a persist request to the write-ahead log until it is durable
    /// (one group-commit batch: write + fdatasync).
    pub fsync_seconds: Histogram,
    pub peer_round_trip_seconds: HistogramVec,
    /// Peer connections or frames refused, by reason.
    pub peer_refusals: IntCounterVec,
    /// Messages dropped because a peer's send queue was full (Paxos retransmits).
    pub peer_messages_dropped: IntCounter,
    /// Peer connections closed because the other side went silent (a partition, a
    /// stopped process): the dialer redials at once instead of waiting on TCP.
    pub peer_connections_silent: IntCounter,
    pub reads: IntCounterVec,
    pub snapshots_taken: IntCounter,
    pub snapshots_sent: IntCounter,
    pub snapshots_installed: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help)
        .unwrap_or_else(|error| panic!("metric {name} is well-formed: {error}"));
    register(registry, Box::new(counter.clone()));
    counter
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help)
        .unwrap_or_else(|error| panic!("metric {name} is well-formed: {error}"));
    register(registry, Box::new(gauge.clone()));
    gauge
}

fn register(registry: &Registry, collector: Box<dyn prometheus::core::Collector>) {
    // Names are fixed and distinct, and the registry is fresh: registering cannot clash.
    registry
        .register(collector)
        .unwrap_or_else(|error| panic!("registering a metric failed: {error}"));
}

/// Latency buckets from 100 µs to ~13 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 18)
        .unwrap_or_else(|error| panic!("bucket parameters are valid: {error}"))
}

impl Metrics {
    pub fn new(node_id: u64) -> Arc<Metrics> {
        let labels = std::iter::once(("node".to_string(), node_id.to_string())).collect();
        let registry = Registry::new_custom(Some("synod".to_string()), Some(labels))
            .unwrap_or_else(|error| panic!("registry parameters are valid: {error}"));
        let fsync_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "wal_fsync_duration_seconds",
                "Time from submitting a persist request until it is durable (write + fdatasync)",
            )
            .buckets(latency_buckets()),
        )
        .unwrap_or_else(|error| panic!("histogram is well-formed: {error}"));
        register(&registry, Box::new(fsync_seconds.clone()));
        let peer_round_trip_seconds = HistogramVec::new(
            HistogramOpts::new(
                "peer_round_trip_seconds",
                "Round-trip time of ping frames to each peer",
            )
            .buckets(latency_buckets()),
            &["peer"],
        )
        .unwrap_or_else(|error| panic!("histogram is well-formed: {error}"));
        register(&registry, Box::new(peer_round_trip_seconds.clone()));
        let peer_refusals = IntCounterVec::new(
            Opts::new(
                "peer_refusals_total",
                "Peer connections or frames refused, by reason",
            ),
            &["reason"],
        )
        .unwrap_or_else(|error| panic!("counter is well-formed: {error}"));
        register(&registry, Box::new(peer_refusals.clone()));
        let reads = IntCounterVec::new(
            Opts::new("reads_total", "Reads served, by consistency"),
            &["consistency"],
        )
        .unwrap_or_else(|error| panic!("counter is well-formed: {error}"));
        register(&registry, Box::new(reads.clone()));
        Arc::new(Metrics {
            proposals: counter(&registry, "proposals_total", "Client proposals received"),
            proposals_failed: counter(
                &registry,
                "proposals_failed_total",
                "Client proposals that failed (deadline or shutdown)",
            ),
            proposal_retries: counter(
                &registry,
                "proposal_retries_total",
                "Proposals re-sent after a leader change or timeout",
            ),
            commits: counter(&registry, "commits_total", "Slots applied"),
            commands_applied: counter(
                &registry,
                "commands_applied_total",
                "Commands applied to the state machine",
            ),
            phase1_runs: counter(&registry, "phase1_runs_total", "Phase 1 runs started"),
            leader_changes: counter(&registry, "leader_changes_total", "Leader changes seen"),
            current_ballot: gauge(
                &registry,
                "current_ballot",
                "Round of the highest promised ballot",
            ),
            commit_index: gauge(&registry, "commit_index", "Highest slot known chosen"),
            applied_slot: gauge(&registry, "applied_slot", "Highest slot applied"),
            is_leader: gauge(&registry, "is_leader", "1 while this node leads"),
            peer_messages_dropped: counter(
                &registry,
                "peer_messages_dropped_total",
                "Messages dropped on a full peer queue",
            ),
            peer_connections_silent: counter(
                &registry,
                "peer_connections_silent_total",
                "Peer connections closed after hearing nothing for the silence limit",
            ),
            snapshots_taken: counter(&registry, "snapshots_taken_total", "Snapshots saved"),
            snapshots_sent: counter(
                &registry,
                "snapshots_sent_total",
                "Snapshots streamed to peers",
            ),
            snapshots_installed: counter(
                &registry,
                "snapshots_installed_total",
                "Snapshots installed from peers",
            ),
            fsync_seconds,
            peer_round_trip_seconds,
            peer_refusals,
            reads,
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let families = self.registry.gather();
        if let Err(error) = TextEncoder::new().encode(&families, &mut buffer) {
            return format!("# encoding metrics failed: {error}\n");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

/// Serves `GET /metrics` and `GET /health` over plain HTTP/1.1 until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "metrics listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buffer = [0u8; 1024];
            // Read the request head (bounded); the body of a GET is empty.
            while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < 8192 {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => head.extend_from_slice(&buffer[..read]),
                }
            }
            let request_line = String::from_utf8_lossy(&head);
            let mut parts = request_line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, content_type, body) = match (method, path) {
                ("GET", "/metrics") => (
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.render(),
                ),
                ("GET", "/health") => ("200 OK", "text/plain", "ok\n".to_string()),
                ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
                _ => (
                    "405 Method Not Allowed",
                    "text/plain",
                    "only GET is served\n".to_string(),
                ),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
