//! Prometheus metrics of one replica. Where Synod measures what an etcd metric means,
//! the metric has etcd's name, type, buckets and labels, so etcd's dashboards and alerts
//! work unchanged; everything else is `synod_`. docs/metrics.md maps each one.
//!
//! Each server has its own registry, so several replicas can share a process (as in the
//! tests); the process metrics then describe that shared process.

use crate::grpc_metrics::GrpcMetrics;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::Arc;
use synod_core::NodeId;

pub struct Metrics {
    pub registry: Registry,
    /// `etcd_server_has_leader`: 1 while this member knows a leader.
    pub has_leader: IntGauge,
    /// `etcd_server_is_leader`: 1 while this member leads.
    pub is_leader: IntGauge,
    /// `etcd_server_leader_changes_seen_total`.
    pub leader_changes: IntCounter,
    /// `etcd_server_proposals_committed_total` (a gauge in etcd too): the highest slot
    /// this member knows chosen.
    pub commit_index: IntGauge,
    /// `etcd_server_proposals_applied_total` (a gauge): the highest slot applied.
    pub applied_slot: IntGauge,
    /// `etcd_server_proposals_pending`: client proposals waiting for their outcome here.
    pub proposals_pending: IntGauge,
    /// `etcd_server_proposals_failed_total`: proposals that failed (deadline, too large).
    pub proposals_failed: IntCounter,
    /// `etcd_server_health_success` / `_failures`: `/health` answers.
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    /// `etcd_disk_wal_fsync_duration_seconds`: one group-commit batch's write and
    /// fdatasync.
    pub fsync_seconds: Histogram,
    /// `etcd_disk_backend_commit_duration_seconds`: saving a snapshot (write + fsync +
    /// rename), the moment applied state becomes durable outside the log.
    pub backend_commit_seconds: Histogram,
    /// `etcd_mvcc_db_total_size_in_bytes`: bytes on disk of the log and the snapshots.
    pub db_total_size_bytes: IntGauge,
    /// `etcd_network_peer_round_trip_time_seconds{To}`: ping round trips.
    pub peer_round_trip_seconds: HistogramVec,
    /// `etcd_network_peer_sent_bytes_total{To}` / `_received_bytes_total{From}`.
    pub peer_sent_bytes: IntCounterVec,
    pub peer_received_bytes: IntCounterVec,
    /// go-grpc-prometheus's `grpc_server_*` and etcd's client byte counters.
    pub grpc: GrpcMetrics,
    /// Per-event timeline of the request path, off unless asked for (`/debug/timeline`).
    pub timeline: crate::timeline::Timeline,
    /// Client proposals received by this node.
    pub proposals: IntCounter,
    /// Proposals sent again after a leader change or a timeout.
    pub proposal_retries: IntCounter,
    /// Client commands applied (each once, however often it was proposed).
    pub commands_applied: IntCounter,
    /// Phase 1 runs started by this node.
    pub phase1_runs: IntCounter,
    /// Round of the highest ballot this node promised.
    pub current_ballot: IntGauge,
    /// From submitting a persist request to the write-ahead log until it is durable
    /// (queueing behind the batch in progress, then its own batch).
    pub persist_seconds: Histogram,
    /// Persist batches a replica that is not leading wrote on its own task because the
    /// log was idle, instead of handing them to the group-commit thread.
    pub persists_inline: IntCounter,
    /// From the driver taking a client proposal off its queue until it answers it
    /// (propose, replicate, choose, apply): the replica's share of a write's latency,
    /// for `synod bench cluster`'s per-request breakdown.
    pub proposal_seconds: Histogram,
    /// Bytes of the write-ahead log on disk, and of the snapshot files.
    pub wal_disk_bytes: IntGauge,
    pub snapshot_disk_bytes: IntGauge,
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
    /// Connections the metrics listener closed at once because it had as many open as
    /// it serves.
    pub http_connections_refused: IntCounter,
    /// `etcd_debugging_mvcc_watcher_total`: watches open at this member.
    pub watchers: IntGauge,
    /// `etcd_debugging_mvcc_slow_watcher_total`: watches behind, catching up from history.
    pub slow_watchers: IntGauge,
    /// `etcd_debugging_mvcc_events_total`: events sent to watchers.
    pub watch_events_sent: IntCounter,
    /// Times a watch's stream could not take a response and the watch fell behind.
    pub watch_stalls: IntCounter,
    /// Watches canceled because the revision they needed next was compacted.
    pub watch_compaction_cancels: IntCounter,
}

/// What every constructor below does with a malformed name or bucket layout: the names
/// and layouts are constants, so this is a programming error caught by any test.
fn well_formed<T>(result: prometheus::Result<T>, name: &str) -> T {
    result.unwrap_or_else(|error| panic!("metric {name} is well-formed: {error}"))
}

fn register(registry: &Registry, collector: Box<dyn prometheus::core::Collector>) {
    // Names are fixed and distinct, and the registry is fresh: registering cannot clash.
    registry
        .register(collector)
        .unwrap_or_else(|error| panic!("registering a metric failed: {error}"));
}

pub(crate) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = well_formed(IntCounter::new(name, help), name);
    register(registry, Box::new(counter.clone()));
    counter
}

pub(crate) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let counter = well_formed(IntCounterVec::new(Opts::new(name, help), labels), name);
    register(registry, Box::new(counter.clone()));
    counter
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = well_formed(IntGauge::new(name, help), name);
    register(registry, Box::new(gauge.clone()));
    gauge
}

/// A gauge that is 1 for the one label set describing this server (etcd's info style).
fn info_gauge(registry: &Registry, name: &str, help: &str, labels: &[(&str, &str)]) {
    let names: Vec<&str> = labels.iter().map(|(name, _)| *name).collect();
    let values: Vec<&str> = labels.iter().map(|(_, value)| *value).collect();
    let gauge = well_formed(IntGaugeVec::new(Opts::new(name, help), &names), name);
    gauge.with_label_values(&values).set(1);
    register(registry, Box::new(gauge));
}

pub(crate) fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    let histogram = well_formed(HistogramVec::new(opts, labels), name);
    register(registry, Box::new(histogram.clone()));
    histogram
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets);
    let histogram = well_formed(Histogram::with_opts(opts), name);
    register(registry, Box::new(histogram.clone()));
    histogram
}

/// `count` buckets from `start`, each twice the last (Prometheus' `ExponentialBuckets`).
fn doubling_buckets(start: f64, count: usize) -> Vec<f64> {
    well_formed(
        prometheus::exponential_buckets(start, 2.0, count),
        "buckets",
    )
}

/// etcd's disk-latency layout: 1 ms to 8.192 s.
fn disk_buckets() -> Vec<f64> {
    doubling_buckets(0.001, 14)
}

impl Metrics {
    pub fn new(node_id: NodeId) -> Arc<Metrics> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        register(
            &registry,
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        );
        info_gauge(
            &registry,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            &[("server_version", crate::etcd::SERVER_VERSION)],
        );
        info_gauge(
            &registry,
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            &[("server_id", &format!("{node_id:x}"))],
        );
        info_gauge(
            &registry,
            "synod_build_info",
            "Synod's build. 1 for the labels of the running binary.",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("etcd_api", crate::etcd::CLUSTER_VERSION),
            ],
        );
        Arc::new(Metrics {
            has_leader: gauge(
                &registry,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                &registry,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            leader_changes: counter(
                &registry,
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            commit_index: gauge(
                &registry,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed (the highest slot known chosen).",
            ),
            applied_slot: gauge(
                &registry,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied (the highest slot applied).",
            ),
            proposals_pending: gauge(
                &registry,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: counter(
                &registry,
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            health_success: counter(
                &registry,
                "etcd_server_health_success",
                "The total number of successful health checks",
            ),
            health_failures: counter(
                &registry,
                "etcd_server_health_failures",
                "The total number of failed health checks",
            ),
            fsync_seconds: histogram(
                &registry,
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL (one group-commit batch: write + fdatasync).",
                disk_buckets(),
            ),
            backend_commit_seconds: histogram(
                &registry,
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend (saving a snapshot).",
                disk_buckets(),
            ),
            db_total_size_bytes: gauge(
                &registry,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes (log and snapshots).",
            ),
            peer_round_trip_seconds: histogram_vec(
                &registry,
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
                doubling_buckets(0.0001, 16),
                &["To"],
            ),
            peer_sent_bytes: counter_vec(
                &registry,
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                &["To"],
            ),
            peer_received_bytes: counter_vec(
                &registry,
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                &["From"],
            ),
            grpc: GrpcMetrics::new(&registry),
            timeline: crate::timeline::Timeline::new(node_id),
            proposals: counter(
                &registry,
                "synod_proposals_total",
                "Client proposals received",
            ),
            proposal_retries: counter(
                &registry,
                "synod_proposal_retries_total",
                "Proposals re-sent after a leader change or timeout",
            ),
            commands_applied: counter(
                &registry,
                "synod_commands_applied_total",
                "Client commands applied to the state machine (once each)",
            ),
            phase1_runs: counter(
                &registry,
                "synod_phase1_runs_total",
                "Phase 1 runs started",
            ),
            current_ballot: gauge(
                &registry,
                "synod_current_ballot",
                "Round of the highest promised ballot",
            ),
            persist_seconds: histogram(
                &registry,
                "synod_wal_persist_duration_seconds",
                "Time from submitting a persist request until it is durable (queueing, write, fdatasync)",
                doubling_buckets(0.0001, 18),
            ),
            persists_inline: counter(
                &registry,
                "synod_wal_persists_inline_total",
                "Persist batches written on the replica's own task (not leading, log idle) instead of the group-commit thread",
            ),
            proposal_seconds: histogram(
                &registry,
                "synod_proposal_duration_seconds",
                "Time from the replica's driver taking a client proposal until it answers it (propose, replicate, choose, apply)",
                doubling_buckets(0.0001, 18),
            ),
            wal_disk_bytes: gauge(
                &registry,
                "synod_wal_disk_bytes",
                "Bytes of the write-ahead log on disk",
            ),
            snapshot_disk_bytes: gauge(
                &registry,
                "synod_snapshot_disk_bytes",
                "Bytes of the snapshot files on disk",
            ),
            peer_refusals: counter_vec(
                &registry,
                "synod_peer_refusals_total",
                "Peer connections or frames refused, by reason",
                &["reason"],
            ),
            peer_messages_dropped: counter(
                &registry,
                "synod_peer_messages_dropped_total",
                "Messages dropped on a full peer queue",
            ),
            watchers: gauge(
                &registry,
                "etcd_debugging_mvcc_watcher_total",
                "Watches open at this member",
            ),
            slow_watchers: gauge(
                &registry,
                "etcd_debugging_mvcc_slow_watcher_total",
                "Watches behind, catching up from history",
            ),
            watch_events_sent: counter(
                &registry,
                "etcd_debugging_mvcc_events_total",
                "Events sent to watchers",
            ),
            watch_stalls: counter(
                &registry,
                "synod_watch_stalls_total",
                "Times a watch stream could not take a response and its watch fell behind",
            ),
            watch_compaction_cancels: counter(
                &registry,
                "synod_watch_compaction_cancels_total",
                "Watches canceled because the revision they needed next was compacted",
            ),
            peer_connections_silent: counter(
                &registry,
                "synod_peer_connections_silent_total",
                "Peer connections closed after hearing nothing for the silence limit",
            ),
            reads: counter_vec(
                &registry,
                "synod_reads_total",
                "Reads served, by consistency",
                &["consistency"],
            ),
            snapshots_taken: counter(
                &registry,
                "synod_snapshots_taken_total",
                "Snapshots saved",
            ),
            snapshots_sent: counter(
                &registry,
                "synod_snapshots_sent_total",
                "Snapshots streamed to peers",
            ),
            snapshots_installed: counter(
                &registry,
                "synod_snapshots_installed_total",
                "Snapshots installed from peers",
            ),
            http_connections_refused: counter(
                &registry,
                "synod_http_connections_refused_total",
                "Connections to the metrics listener closed at once: it had its limit open",
            ),
            registry,
        })
    }

    /// Sets the size gauges from the log's and the snapshots' bytes on disk.
    pub fn set_disk_bytes(&self, wal_bytes: u64, snapshot_bytes: Option<u64>) {
        self.wal_disk_bytes.set(clamp(wal_bytes));
        if let Some(snapshot_bytes) = snapshot_bytes {
            self.snapshot_disk_bytes.set(clamp(snapshot_bytes));
        }
        self.db_total_size_bytes
            .set(self.wal_disk_bytes.get() + self.snapshot_disk_bytes.get());
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

fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_metrics_have_etcds_names_types_and_buckets() {
        let metrics = Metrics::new(0x2a);
        metrics.fsync_seconds.observe(0.003);
        metrics
            .peer_round_trip_seconds
            .with_label_values(&["2"])
            .observe(0.0002);
        let text = metrics.render();
        for (name, kind) in [
            ("etcd_server_has_leader", "gauge"),
            ("etcd_server_is_leader", "gauge"),
            ("etcd_server_leader_changes_seen_total", "counter"),
            ("etcd_server_proposals_committed_total", "gauge"),
            ("etcd_server_proposals_applied_total", "gauge"),
            ("etcd_server_proposals_pending", "gauge"),
            ("etcd_server_proposals_failed_total", "counter"),
            ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
            ("etcd_network_peer_round_trip_time_seconds", "histogram"),
            ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
            ("grpc_server_started_total", "counter"),
            ("grpc_server_handled_total", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} is a {kind} in\n{text}"
            );
        }
        // etcd's layouts: WAL fsync 1 ms .. 8.192 s (14 buckets), RTT 0.1 ms .. 3.2768 s (16).
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.004\"} 1\n"));
        assert!(text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"8.192\"} 1\n"));
        assert!(!text.contains("etcd_disk_wal_fsync_duration_seconds_bucket{le=\"16.384\"}"));
        assert!(text.contains(
            "etcd_network_peer_round_trip_time_seconds_bucket{To=\"2\",le=\"3.2768\"} 1\n"
        ));
        assert!(text.contains("etcd_server_id{server_id=\"2a\"} 1\n"));
        assert!(text.contains(&format!(
            "etcd_server_version{{server_version=\"{}\"}} 1\n",
            crate::etcd::SERVER_VERSION
        )));
        #[cfg(target_os = "linux")]
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name} in\n{text}");
        }
    }

    #[test]
    fn the_database_size_is_the_log_plus_the_snapshots() {
        let metrics = Metrics::new(1);
        metrics.set_disk_bytes(1000, Some(300));
        assert_eq!(metrics.db_total_size_bytes.get(), 1300);
        // A log-only update keeps the snapshots' last known size.
        metrics.set_disk_bytes(700, None);
        assert_eq!(metrics.db_total_size_bytes.get(), 1000);
    }
}
