//! `synod bench leases`: how many keep-alives a Synod ×3 cluster acknowledges with 10,000
//! leases kept alive by one client, and how late leases expire after the leader is killed.
//!
//! One fresh cluster. First the bench grants the leases at the leader (64 grants in flight)
//! and keeps them all alive, round-robin, over one `LeaseKeepAlive` stream with a window of
//! requests in flight, for a fixed time: keep-alives acknowledged per second and the
//! latency of each (responses on a stream come in request order). Then it grants a second
//! set of short leases, attaches one key to each, watches those keys from a follower, keeps
//! every lease alive once, and kills the leader with SIGKILL. Each lease's *lateness* is the
//! instant its key's delete event reached the watcher minus (its keep-alive's
//! acknowledgement + TTL): what a failover adds to expiry. Negative would mean a lease
//! expired before its TTL had passed since it was kept alive — which must never happen.

use crate::cluster::Progress;
use crate::error::BenchError;
use crate::load::Latency;
use crate::machine::{self, Machine};
use crate::process::{ClusterProcesses, Launch, Ports, System, Timing};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use synod_server::proto::etcdserverpb::lease_client::LeaseClient;
use synod_server::proto::etcdserverpb::watch_client::WatchClient;
use synod_server::proto::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone, Debug)]
pub struct LeaseOptions {
    pub synod_executable: PathBuf,
    pub data_dir: PathBuf,
    /// Leases kept alive by the one client.
    pub leases: usize,
    /// How long the keep-alive phase lasts.
    pub keep_alive_time: Duration,
    /// Keep-alives in flight on the stream.
    pub window: usize,
    /// Leases (one key each) left to expire after the leader kill.
    pub expiry_leases: usize,
    pub expiry_ttl_seconds: i64,
    pub timing: Timing,
    pub base_port: u16,
}

impl LeaseOptions {
    pub fn new(synod_executable: PathBuf) -> LeaseOptions {
        LeaseOptions {
            synod_executable,
            data_dir: PathBuf::from("synod-data/bench-leases"),
            leases: 10_000,
            keep_alive_time: Duration::from_secs(10),
            window: 256,
            expiry_leases: 1_000,
            expiry_ttl_seconds: 5,
            timing: Timing {
                heartbeat_interval_ms: 100,
                election_timeout_ms: 1000,
            },
            base_port: 23_600,
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        if self.leases == 0 || self.window == 0 || self.expiry_leases == 0 {
            return Err(BenchError::new(
                "leases, the window and the expiry leases must be positive",
            ));
        }
        if self.expiry_ttl_seconds < 2 {
            return Err(BenchError::new(
                "the expiry TTL must be at least 2 s (etcd's minimum with 1 s elections)",
            ));
        }
        if !self.synod_executable.is_file() {
            return Err(BenchError::new(format!(
                "the synod executable {} does not exist",
                self.synod_executable.display()
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct KeepAlives {
    pub leases: usize,
    pub grants_per_sec: f64,
    pub window: usize,
    pub seconds: f64,
    /// Keep-alives acknowledged with the lease's TTL.
    pub acknowledged: u64,
    pub per_sec: f64,
    /// Every lease was kept alive this many times over (on average).
    pub rounds: f64,
    pub latency: Latency,
    /// Answers with TTL 0 (a lease not found): must be 0.
    pub lost: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Expiry {
    pub leases: usize,
    pub ttl_seconds: i64,
    /// Leases whose key's delete event arrived.
    pub expired: usize,
    pub lateness_p50_ms: f64,
    pub lateness_p99_ms: f64,
    pub lateness_max_ms: f64,
    /// The earliest lateness: negative would be a lease expired early.
    pub lateness_min_ms: f64,
    /// From the kill to the first expiry seen.
    pub first_expiry_after_kill_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LeaseReport {
    pub date: String,
    pub machine: Machine,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub keep_alives: KeepAlives,
    pub expiry: Expiry,
    pub run_seconds: f64,
}

impl LeaseReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The markdown table the command prints.
    pub fn table(&self) -> String {
        let k = &self.keep_alives;
        let e = &self.expiry;
        format!(
            "| leases kept alive by one client | grants/s | keep-alives/s (window {}) | keep-alive p50 / p99 µs | rounds | lost |\n\
             |---|---|---|---|---|---|\n\
             | {} | {:.0} | {:.0} | {} / {} | {:.1} | {} |\n\n\
             | expiry after a leader kill: leases (TTL {} s) | expired | lateness p50 / p99 / max ms | earliest ms | first expiry after the kill ms |\n\
             |---|---|---|---|---|\n\
             | {} | {} | {:.0} / {:.0} / {:.0} | {:.0} | {:.0} |\n",
            k.window,
            k.leases,
            k.grants_per_sec,
            k.per_sec,
            k.latency.p50_us,
            k.latency.p99_us,
            k.rounds,
            k.lost,
            e.ttl_seconds,
            e.leases,
            e.expired,
            e.lateness_p50_ms,
            e.lateness_p99_ms,
            e.lateness_max_ms,
            e.lateness_min_ms,
            e.first_expiry_after_kill_ms,
        )
    }
}

/// Writes `leases.json` into `dir`.
pub fn write_outputs(report: &LeaseReport, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    std::fs::create_dir_all(dir)
        .map_err(|error| BenchError::new(format!("creating {}: {error}", dir.display())))?;
    let path = dir.join("leases.json");
    std::fs::write(&path, report.to_json() + "\n")
        .map_err(|error| BenchError::new(format!("writing {}: {error}", path.display())))?;
    Ok(vec![path])
}

pub fn run(options: &LeaseOptions, progress: &dyn Progress) -> Result<LeaseReport, BenchError> {
    options.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("synod-bench-leases")
        .build()
        .map_err(|error| BenchError::new(format!("starting the async runtime: {error}")))?;
    let started = Instant::now();
    let machine = Machine::describe();
    let date = machine::utc_now();
    progress.begin(4);
    let outcome = runtime.block_on(async {
        let mut ports = Ports::from(options.base_port);
        progress.step("starting Synod ×3");
        let mut cluster = ClusterProcesses::start(
            Launch {
                system: System::Synod,
                executable: &options.synod_executable,
                members: 3,
                data_dir: options.data_dir.clone(),
                timing: options.timing,
            },
            &mut ports,
        )?;
        let outcome = match cluster.wait_ready(Duration::from_secs(30)).await {
            Ok(leader) => {
                progress.done();
                measure(options, &mut cluster, leader, progress).await
            }
            Err(error) => Err(error),
        };
        cluster.stop();
        outcome
    });
    progress.finish();
    let _ = std::fs::remove_dir_all(&options.data_dir);
    let (keep_alives, expiry) = outcome?;
    Ok(LeaseReport {
        date,
        machine,
        heartbeat_interval_ms: options.timing.heartbeat_interval_ms,
        election_timeout_ms: options.timing.election_timeout_ms,
        keep_alives,
        expiry,
        run_seconds: started.elapsed().as_secs_f64(),
    })
}

async fn channel(url: &str) -> Result<Channel, BenchError> {
    Endpoint::from_shared(url.to_string())
        .map_err(|error| BenchError::new(format!("endpoint {url}: {error}")))?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|error| BenchError::new(format!("connecting to {url}: {error}")))
}

/// Grants `count` leases of `ttl` at the leader, 64 at a time; their ids and the rate.
async fn grant(channel: &Channel, count: usize, ttl: i64) -> Result<(Vec<i64>, f64), BenchError> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_task = count.div_ceil(64);
    for task in 0..64 {
        let mut client = LeaseClient::new(channel.clone());
        let n = per_task.min(count.saturating_sub(task * per_task));
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                let response = client
                    .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                    .await
                    .map_err(|status| BenchError::new(format!("grant: {status}")))?;
                ids.push(response.into_inner().id);
            }
            Ok::<_, BenchError>(ids)
        }));
    }
    let mut ids = Vec::with_capacity(count);
    for task in tasks {
        ids.extend(
            task.await
                .map_err(|error| BenchError::new(format!("grant task: {error}")))??,
        );
    }
    Ok((ids, count as f64 / started.elapsed().as_secs_f64()))
}

/// Sends keep-alives for `ids` round-robin over one stream, `window` in flight, until
/// `until`; each response's latency, and the count of TTL-0 answers.
async fn keep_alive(
    channel: &Channel,
    ids: &[i64],
    window: usize,
    duration: Duration,
) -> Result<(Histogram<u64>, u64, u64, f64), BenchError> {
    let mut client = LeaseClient::new(channel.clone());
    let (requests, receiver) = mpsc::channel(window);
    let mut responses = client
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .map_err(|status| BenchError::new(format!("keep-alive stream: {status}")))?
        .into_inner();
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(window);
    let (mut next, mut acknowledged, mut lost) = (0usize, 0u64, 0u64);
    let started = Instant::now();
    loop {
        let sending = started.elapsed() < duration;
        while sending && in_flight.len() < window {
            let id = ids[next % ids.len()];
            next += 1;
            in_flight.push_back(Instant::now());
            if requests
                .send(pb::LeaseKeepAliveRequest { id })
                .await
                .is_err()
            {
                return Err(BenchError::new("the keep-alive stream closed"));
            }
        }
        if in_flight.is_empty() {
            break;
        }
        let response = responses
            .message()
            .await
            .map_err(|status| BenchError::new(format!("keep-alive: {status}")))?
            .ok_or_else(|| BenchError::new("the keep-alive stream ended"))?;
        let sent = in_flight.pop_front().expect("a request in flight");
        let _ = histogram.record(sent.elapsed().as_micros() as u64);
        if response.ttl > 0 {
            acknowledged += 1;
        } else {
            lost += 1;
        }
    }
    Ok((
        histogram,
        acknowledged,
        lost,
        started.elapsed().as_secs_f64(),
    ))
}

async fn measure(
    options: &LeaseOptions,
    cluster: &mut ClusterProcesses,
    leader: usize,
    progress: &dyn Progress,
) -> Result<(KeepAlives, Expiry), BenchError> {
    let endpoints = cluster.endpoints();
    let at_leader = channel(&endpoints[leader]).await?;
    progress.step(&format!(
        "granting {} leases, keeping them alive",
        options.leases
    ));
    let (ids, grants_per_sec) = grant(&at_leader, options.leases, 60).await?;
    let (histogram, acknowledged, lost, seconds) =
        keep_alive(&at_leader, &ids, options.window, options.keep_alive_time).await?;
    let keep_alives = KeepAlives {
        leases: options.leases,
        grants_per_sec,
        window: options.window,
        seconds,
        acknowledged,
        per_sec: acknowledged as f64 / seconds,
        rounds: acknowledged as f64 / options.leases as f64,
        latency: Latency {
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
            mean_us: histogram.mean(),
        },
        lost,
    };
    progress.note(&format!(
        "{} leases: {:.0} keep-alives/s, p50 {} µs, p99 {} µs, {} lost",
        options.leases,
        keep_alives.per_sec,
        keep_alives.latency.p50_us,
        keep_alives.latency.p99_us,
        lost
    ));
    progress.done();

    progress.step(&format!(
        "{} leases of {} s, one key each",
        options.expiry_leases, options.expiry_ttl_seconds
    ));
    let ttl = options.expiry_ttl_seconds;
    let (expiring, _) = grant(&at_leader, options.expiry_leases, ttl).await?;
    let mut kv = KvClient::new(at_leader.clone());
    let mut key_of_lease = HashMap::new();
    for (index, id) in expiring.iter().enumerate() {
        let key = format!("expire/{index:06}").into_bytes();
        kv.put(pb::PutRequest {
            key: key.clone(),
            value: b"held".to_vec(),
            lease: *id,
            ..Default::default()
        })
        .await
        .map_err(|status| BenchError::new(format!("put: {status}")))?;
        key_of_lease.insert(key, *id);
    }
    // Watch the keys from a member that survives the kill.
    let survivor = (leader + 1) % endpoints.len();
    let mut watch = WatchClient::new(channel(&endpoints[survivor]).await?);
    let (watch_requests, watch_receiver) = mpsc::channel(4);
    let mut events = watch
        .watch(ReceiverStream::new(watch_receiver))
        .await
        .map_err(|status| BenchError::new(format!("watch: {status}")))?
        .into_inner();
    let create = pb::WatchCreateRequest {
        key: b"expire/".to_vec(),
        range_end: b"expire0".to_vec(),
        ..Default::default()
    };
    watch_requests
        .send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(create)),
        })
        .await
        .map_err(|_| BenchError::new("the watch stream closed"))?;
    // Keep each alive once; remember when each was acknowledged.
    let mut client = LeaseClient::new(at_leader.clone());
    let mut acknowledged_at = HashMap::new();
    for id in &expiring {
        let mut stream = client
            .lease_keep_alive(tokio_stream::once(pb::LeaseKeepAliveRequest { id: *id }))
            .await
            .map_err(|status| BenchError::new(format!("keep-alive: {status}")))?
            .into_inner();
        stream
            .message()
            .await
            .map_err(|status| BenchError::new(format!("keep-alive: {status}")))?;
        acknowledged_at.insert(*id, Instant::now());
    }
    progress.done();

    progress.step("killing the leader, waiting for the expiries");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    cluster.kill(leader)?;
    let deadline = killed_at + Duration::from_secs(ttl as u64 + 60);
    let mut lateness_ms: Vec<f64> = Vec::new();
    let mut first_expiry: Option<Instant> = None;
    while lateness_ms.len() < expiring.len() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let Ok(message) = tokio::time::timeout(remaining, events.message()).await else {
            break;
        };
        let Some(response) =
            message.map_err(|status| BenchError::new(format!("watch: {status}")))?
        else {
            break;
        };
        let arrived = Instant::now();
        for event in response.events {
            if event.r#type != EventType::Delete as i32 {
                continue;
            }
            let Some(kv) = event.kv else { continue };
            let Some(id) = key_of_lease.get(&kv.key) else {
                continue;
            };
            let due = acknowledged_at[id] + Duration::from_secs(ttl as u64);
            let late = if arrived >= due {
                (arrived - due).as_secs_f64() * 1000.0
            } else {
                -((due - arrived).as_secs_f64() * 1000.0)
            };
            lateness_ms.push(late);
            first_expiry.get_or_insert(arrived);
        }
    }
    progress.done();
    lateness_ms.sort_by(f64::total_cmp);
    let quantile = |q: f64| -> f64 {
        if lateness_ms.is_empty() {
            return f64::NAN;
        }
        let index = ((lateness_ms.len() - 1) as f64 * q).round() as usize;
        lateness_ms[index]
    };
    let expiry = Expiry {
        leases: expiring.len(),
        ttl_seconds: ttl,
        expired: lateness_ms.len(),
        lateness_p50_ms: quantile(0.5),
        lateness_p99_ms: quantile(0.99),
        lateness_max_ms: quantile(1.0),
        lateness_min_ms: quantile(0.0),
        first_expiry_after_kill_ms: first_expiry
            .map_or(f64::NAN, |at| (at - killed_at).as_secs_f64() * 1000.0),
    };
    progress.note(&format!(
        "expiry after the kill: {}/{} expired, lateness p50 {:.0} ms, p99 {:.0} ms, earliest {:.0} ms",
        expiry.expired, expiry.leases, expiry.lateness_p50_ms, expiry.lateness_p99_ms, expiry.lateness_min_ms
    ));
    Ok((keep_alives, expiry))
}
