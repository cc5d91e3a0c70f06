//! `synod bench watch`: how long an etcd Watch event takes from the write's acknowledgement
//! to the watcher, at 1, 100 and 10,000 watchers on one member, and whether the watchers
//! slow the writes down (etcd's "victim watcher" design promises they do not).
//!
//! Each watcher count gets a fresh three-member Synod cluster. The watches — all on one
//! key — are spread round-robin over a few gRPC watch streams (etcd clients multiplex many
//! watches over one stream) on one member, a follower by default. Then the bench puts the
//! key at the leader, one put at a time on a fixed schedule, and records each put's
//! acknowledgement instant and revision; each stream's reader records the instant every
//! event arrived. An event's latency is its arrival minus its put's acknowledgement, on the
//! same clock of this process: negative when the watcher heard of the write before the
//! writer did, and kept negative (see [`SignedLatencies`]).

use crate::cluster::Progress;
use crate::error::BenchError;
use crate::load::Latency;
use crate::machine::{self, Machine};
use crate::process::{ClusterProcesses, Launch, Ports, System, Timing};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use synod_server::proto::etcdserverpb::watch_client::WatchClient;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

/// The key every watcher watches and every measured put writes.
pub const WATCHED_KEY: &[u8] = b"watched";

/// Which member serves the watches (writes always go to the leader).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub enum WatchMember {
    #[serde(rename = "leader")]
    Leader,
    #[serde(rename = "follower")]
    Follower,
}

impl WatchMember {
    pub fn parse(name: &str) -> Option<WatchMember> {
        match name.trim() {
            "leader" => Some(WatchMember::Leader),
            "follower" => Some(WatchMember::Follower),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WatchMember::Leader => "leader",
            WatchMember::Follower => "follower",
        }
    }
}

#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// The `synod` executable whose `node` subcommand runs a member.
    pub synod_executable: PathBuf,
    /// Where the members keep their data (removed after each cell and at the end).
    pub data_dir: PathBuf,
    /// Watcher counts, one cell (and one fresh cluster) each.
    pub watchers: Vec<usize>,
    /// Measured puts per cell, one at a time.
    pub writes: usize,
    /// Puts start this far apart (a put that ends late starts the next one at once).
    pub write_interval: Duration,
    pub value_bytes: usize,
    /// gRPC watch streams carrying the watchers; `None`: min(watchers, 100).
    pub streams: Option<usize>,
    /// HTTP/2 connections carrying the streams (etcd's client uses one).
    pub connections: usize,
    pub member: WatchMember,
    pub timing: Timing,
    /// Give up on the missing events this long after the last one arrived.
    pub delivery_timeout: Duration,
    /// First loopback port tried for the members.
    pub base_port: u16,
}

impl WatchOptions {
    pub fn new(synod_executable: PathBuf) -> WatchOptions {
        WatchOptions {
            synod_executable,
            data_dir: PathBuf::from("synod-data/bench-watch"),
            watchers: vec![1, 100, 10_000],
            writes: 200,
            write_interval: Duration::from_millis(50),
            value_bytes: 100,
            streams: None,
            connections: 1,
            member: WatchMember::Follower,
            timing: Timing {
                heartbeat_interval_ms: 100,
                election_timeout_ms: 1000,
            },
            delivery_timeout: Duration::from_secs(10),
            base_port: 23_400,
        }
    }

    fn streams_for(&self, watchers: usize) -> usize {
        self.streams.unwrap_or(100).clamp(1, watchers.max(1))
    }

    fn validate(&self) -> Result<(), BenchError> {
        if self.watchers.is_empty() || self.watchers.contains(&0) {
            return Err(BenchError::new(
                "give at least one watcher count, each at least 1",
            ));
        }
        if self.writes == 0 || self.value_bytes == 0 || self.connections == 0 {
            return Err(BenchError::new(
                "writes, the value size and connections must be positive",
            ));
        }
        if self.streams == Some(0) {
            return Err(BenchError::new("a cell needs at least one watch stream"));
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

/// One watcher count's measurements.
#[derive(Clone, Debug, Serialize)]
pub struct WatchCell {
    pub watchers: usize,
    pub streams: usize,
    pub connections: usize,
    /// The member serving the watches, `leader` or `follower`, and its name.
    pub member: WatchMember,
    pub member_name: String,
    pub writes: usize,
    /// One event per watcher per put.
    pub events_expected: u64,
    /// Events of acknowledged puts, each at most once per watcher.
    pub events_received: u64,
    pub events_missing: u64,
    /// Events that repeat or go back in revision for their watcher, or name a revision
    /// no put of the cell acknowledged.
    pub events_unexpected: u64,
    /// Event latency quantiles (arrival − put acknowledgement), signed, in µs.
    pub event_p50_us: i64,
    pub event_p99_us: i64,
    pub event_max_us: i64,
    pub event_min_us: i64,
    /// Events that arrived before their put's acknowledgement did (negative latency).
    pub events_before_ack: u64,
    /// Put round trips at the leader, in µs.
    pub put: Latency,
    /// Puts that took longer than the write interval (so the schedule slipped).
    pub puts_late: u64,
    /// From the first put's start to the last put's acknowledgement.
    pub write_seconds: f64,
    /// From sending the creates to the last `created` response.
    pub create_ms: f64,
    /// From the last put's acknowledgement to the last event's arrival.
    pub drain_ms: f64,
    /// Resident set of the member serving the watches.
    pub rss_before_watchers_bytes: u64,
    pub rss_after_watchers_bytes: u64,
    pub rss_after_writes_bytes: u64,
    /// CPU time from the first put to the last event (or the delivery timeout): the
    /// member serving the watches, the leader (when another member serves them), and
    /// this bench process (the writer and every stream's reader).
    pub member_cpu_ms: f64,
    pub leader_cpu_ms: f64,
    pub bench_cpu_ms: f64,
    /// What went wrong: missing events, canceled or refused watches, stream errors.
    pub errors: Vec<String>,
    /// Each put in order: when it was acknowledged and when its first and last watcher
    /// heard of it, to show whether delivery keeps pace or falls behind over the cell.
    pub puts: Vec<PutTrace>,
}

/// One put's acknowledgement and the spread of its deliveries.
#[derive(Clone, Debug, Serialize)]
pub struct PutTrace {
    pub revision: i64,
    /// Since the first put was sent.
    pub acked_at_ms: f64,
    pub put_us: u64,
    /// Latency of the first and the last watcher to receive the event (0 when none did).
    pub first_event_us: i64,
    pub last_event_us: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WatchSettings {
    pub writes: usize,
    pub write_interval_ms: f64,
    pub value_bytes: usize,
    pub member: WatchMember,
    pub connections: usize,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    pub key: String,
    /// How the signed latencies are summarised.
    pub latency_method: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct WatchReport {
    pub date: String,
    pub machine: Machine,
    pub settings: WatchSettings,
    pub cells: Vec<WatchCell>,
    /// Wall-clock time of the whole run.
    pub run_seconds: f64,
}

const LATENCY_METHOD: &str = "HDR histograms in ns, 3 significant digits: one of deliveries at or after the ack, one of deliveries before it by magnitude; signed quantiles read across both";

/// Signed event latencies in nanoseconds: deliveries at or after the put's acknowledgement
/// in one HDR histogram, those before it (by magnitude) in another, so a quantile of the
/// signed distribution keeps HDR's relative precision on both sides of zero.
pub struct SignedLatencies {
    late: Histogram<u64>,
    early: Histogram<u64>,
}

impl SignedLatencies {
    pub fn new() -> Result<SignedLatencies, BenchError> {
        let histogram = || {
            Histogram::new_with_bounds(1, 600_000_000_000, 3)
                .map_err(|error| BenchError::new(format!("latency histogram: {error}")))
        };
        Ok(SignedLatencies {
            late: histogram()?,
            early: histogram()?,
        })
    }

    pub fn record(&mut self, nanos: i64) {
        if nanos >= 0 {
            self.late.saturating_record(nanos as u64);
        } else {
            self.early.saturating_record(nanos.unsigned_abs());
        }
    }

    pub fn len(&self) -> u64 {
        self.late.len() + self.early.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values below zero.
    pub fn negatives(&self) -> u64 {
        self.early.len()
    }

    /// The value at `quantile` of the signed distribution (0 when empty).
    pub fn quantile(&self, quantile: f64) -> i64 {
        let early = self.early.len();
        let total = self.len();
        if total == 0 {
            return 0;
        }
        let rank = ((quantile * total as f64).ceil() as u64).clamp(1, total);
        if rank <= early {
            // Ascending signed order runs through the early ones by falling magnitude.
            let magnitude_rank = early - rank + 1;
            -(self
                .early
                .value_at_quantile(magnitude_rank as f64 / early as f64) as i64)
        } else {
            let late = self.late.len();
            self.late
                .value_at_quantile((rank - early) as f64 / late as f64) as i64
        }
    }

    pub fn max(&self) -> i64 {
        if self.late.is_empty() {
            -(self.early.min() as i64)
        } else {
            self.late.max() as i64
        }
    }

    pub fn min(&self) -> i64 {
        if self.early.is_empty() {
            self.late.min() as i64
        } else {
            -(self.early.max() as i64)
        }
    }
}

/// Runs every cell; see the module documentation.
pub fn run(options: &WatchOptions, progress: &dyn Progress) -> Result<WatchReport, BenchError> {
    options.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("synod-bench-watch")
        .build()
        .map_err(|error| BenchError::new(format!("starting the async runtime: {error}")))?;
    let started = Instant::now();
    let machine = Machine::describe();
    let date = machine::utc_now();
    progress.begin(options.watchers.len() as u64 * PHASES);
    let cells = runtime.block_on(run_cells(options, progress));
    progress.finish();
    let _ = std::fs::remove_dir_all(&options.data_dir);
    Ok(WatchReport {
        date,
        machine,
        settings: WatchSettings {
            writes: options.writes,
            write_interval_ms: options.write_interval.as_secs_f64() * 1000.0,
            value_bytes: options.value_bytes,
            member: options.member,
            connections: options.connections,
            heartbeat_interval_ms: options.timing.heartbeat_interval_ms,
            election_timeout_ms: options.timing.election_timeout_ms,
            key: String::from_utf8_lossy(WATCHED_KEY).into_owned(),
            latency_method: LATENCY_METHOD.to_string(),
        },
        cells: cells?,
        run_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Progress steps per cell: start the cluster, create the watches, write, drain.
const PHASES: u64 = 4;

async fn run_cells(
    options: &WatchOptions,
    progress: &dyn Progress,
) -> Result<Vec<WatchCell>, BenchError> {
    let mut ports = Ports::from(options.base_port);
    let mut cells = Vec::new();
    for &watchers in &options.watchers {
        progress.step(&format!("{watchers} watchers: starting the cluster"));
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
            Ok(leader) => measure_cell(options, watchers, &cluster, leader, progress).await,
            Err(error) => Err(error),
        };
        cluster.stop();
        let cell = outcome.map_err(|error| error.context(format!("{watchers} watchers")))?;
        progress.note(&format!(
            "{watchers} watchers: events {}/{}, event p50 {} µs p99 {} µs, put p50 {} µs p99 {} µs{}",
            cell.events_received,
            cell.events_expected,
            cell.event_p50_us,
            cell.event_p99_us,
            cell.put.p50_us,
            cell.put.p99_us,
            if cell.errors.is_empty() { "" } else { " — ERRORS" }
        ));
        cells.push(cell);
    }
    Ok(cells)
}

/// Opens one HTTP/2 connection without a request deadline: a watch stream lives as long
/// as the cell.
async fn open_channel(url: &str) -> Result<Channel, BenchError> {
    Endpoint::from_shared(url.to_string())
        .map_err(|error| BenchError::new(format!("bad endpoint {url:?}: {error}")))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| BenchError::new(format!("cannot connect to {url}: {error}")))
}

fn rss_of(pid: u32) -> u64 {
    machine::process_rss_bytes(pid).unwrap_or(0)
}

/// One cell on a ready cluster.
async fn measure_cell(
    options: &WatchOptions,
    watchers: usize,
    cluster: &ClusterProcesses,
    leader: usize,
    progress: &dyn Progress,
) -> Result<WatchCell, BenchError> {
    progress.done();
    let served = match options.member {
        WatchMember::Leader => leader,
        WatchMember::Follower => (leader + 1) % cluster.members.len(),
    };
    let member = &cluster.members[served];
    let mut kv = KvClient::new(open_channel(&cluster.members[leader].client_url).await?);
    warm_up(&mut kv).await?;
    let streams = options.streams_for(watchers);
    let mut channels = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        channels.push(open_channel(&member.client_url).await?);
    }
    let rss_before_watchers_bytes = rss_of(member.pid());
    progress.step(&format!("{watchers} watchers: creating the watches"));
    let create_started = Instant::now();
    let watches = Watches::open(&channels, watchers, streams).await?;
    watches.wait_created(watchers, progress).await?;
    let create_ms = create_started.elapsed().as_secs_f64() * 1000.0;
    let rss_after_watchers_bytes = rss_of(member.pid());
    progress.done();
    progress.step(&format!(
        "{watchers} watchers: {} puts at the leader",
        options.writes
    ));
    let cpu = CpuClock::start(member.pid(), cluster.members[leader].pid());
    let writes = write_paced(&mut kv, options).await?;
    progress.done();
    progress.step(&format!("{watchers} watchers: waiting for the events"));
    let expected = (watchers * options.writes) as u64;
    watches
        .wait_delivered(expected, options.delivery_timeout)
        .await;
    let (member_cpu_ms, leader_cpu_ms, bench_cpu_ms) = cpu.elapsed_ms();
    let rss_after_writes_bytes = rss_of(member.pid());
    let logs = watches.close().await?;
    progress.done();
    let delivery = Delivery::tally(&writes, &logs, watchers)?;
    Ok(WatchCell {
        watchers,
        streams,
        connections: options.connections,
        member: options.member,
        member_name: member.name.clone(),
        writes: options.writes,
        events_expected: expected,
        events_received: delivery.received,
        events_missing: expected.saturating_sub(delivery.received),
        events_unexpected: delivery.unexpected,
        event_p50_us: delivery.latencies.quantile(0.50) / 1000,
        event_p99_us: delivery.latencies.quantile(0.99) / 1000,
        event_max_us: delivery.latencies.max() / 1000,
        event_min_us: delivery.latencies.min() / 1000,
        events_before_ack: delivery.latencies.negatives(),
        put: Latency::of(&writes.put_latency_us),
        puts_late: writes.late,
        write_seconds: writes.seconds,
        create_ms,
        drain_ms: delivery.drain_ms(&writes),
        rss_before_watchers_bytes,
        rss_after_watchers_bytes,
        rss_after_writes_bytes,
        member_cpu_ms,
        leader_cpu_ms: if served == leader { 0.0 } else { leader_cpu_ms },
        bench_cpu_ms,
        errors: delivery.errors(expected),
        puts: delivery.traces(&writes),
    })
}

/// CPU time used since it started by the serving member, the leader and this process.
struct CpuClock {
    member: u32,
    leader: u32,
    at_start: [Duration; 3],
}

impl CpuClock {
    fn start(member: u32, leader: u32) -> CpuClock {
        let mut clock = CpuClock {
            member,
            leader,
            at_start: [Duration::ZERO; 3],
        };
        clock.at_start = clock.now();
        clock
    }

    fn now(&self) -> [Duration; 3] {
        let of = |pid| machine::process_cpu_time(pid).unwrap_or_default();
        [
            of(self.member),
            of(self.leader),
            machine::own_cpu_time().unwrap_or_default(),
        ]
    }

    fn elapsed_ms(&self) -> (f64, f64, f64) {
        let now = self.now();
        let ms = |index: usize| {
            now[index]
                .saturating_sub(self.at_start[index])
                .as_secs_f64()
                * 1000.0
        };
        (ms(0), ms(1), ms(2))
    }
}

/// A few puts of another key, so connections and the leader are warm before measuring.
async fn warm_up(kv: &mut KvClient<Channel>) -> Result<(), BenchError> {
    for _ in 0..20 {
        kv.put(pb::PutRequest {
            key: b"warm-up".to_vec(),
            value: b"warm-up".to_vec(),
            ..Default::default()
        })
        .await
        .map_err(|status| BenchError::new(format!("warm-up put: {}", status.message())))?;
    }
    Ok(())
}

/// The measured puts: each one's revision and acknowledgement instant.
struct Writes {
    acks: Vec<(i64, Instant)>,
    /// Each put's round trip, in the order of `acks`.
    round_trips: Vec<Duration>,
    /// When the first put was sent.
    first: Instant,
    put_latency_us: Histogram<u64>,
    late: u64,
    seconds: f64,
}

async fn write_paced(
    kv: &mut KvClient<Channel>,
    options: &WatchOptions,
) -> Result<Writes, BenchError> {
    let value = vec![b'v'; options.value_bytes];
    let mut put_latency_us = Histogram::new_with_bounds(1, 120_000_000, 3)
        .map_err(|error| BenchError::new(format!("latency histogram: {error}")))?;
    let mut acks = Vec::with_capacity(options.writes);
    let mut round_trips = Vec::with_capacity(options.writes);
    let mut late = 0;
    let first = Instant::now();
    for index in 0..options.writes {
        tokio::time::sleep_until((first + options.write_interval * index as u32).into()).await;
        let sent = Instant::now();
        let response = kv
            .put(pb::PutRequest {
                key: WATCHED_KEY.to_vec(),
                value: value.clone(),
                ..Default::default()
            })
            .await
            .map_err(|status| {
                BenchError::new(format!(
                    "put {index}: {:?}: {}",
                    status.code(),
                    status.message()
                ))
            })?;
        let acked = Instant::now();
        let revision = response
            .into_inner()
            .header
            .map_or(0, |header| header.revision);
        let round_trip = acked - sent;
        put_latency_us.saturating_record((round_trip.as_micros() as u64).max(1));
        if round_trip > options.write_interval {
            late += 1;
        }
        acks.push((revision, acked));
        round_trips.push(round_trip);
    }
    let seconds = acks
        .last()
        .map_or(0.0, |(_, acked)| (*acked - first).as_secs_f64());
    Ok(Writes {
        acks,
        round_trips,
        first,
        put_latency_us,
        late,
        seconds,
    })
}

/// One event as a stream's reader saw it.
struct Arrival {
    watch_id: i64,
    revision: i64,
    at: Instant,
}

/// What one watch stream's reader saw.
#[derive(Default)]
struct StreamLog {
    created: Vec<i64>,
    arrivals: Vec<Arrival>,
    /// Refusals, cancellations and the stream's end or error.
    problems: Vec<String>,
}

/// Counters the readers share with the cell, to know when to go on.
#[derive(Default)]
struct Tallies {
    created: AtomicU64,
    events: AtomicU64,
    problems: AtomicU64,
}

/// The open watch streams of one cell.
struct Watches {
    /// Dropping a stream's request sender ends its stream.
    requests: Vec<mpsc::Sender<pb::WatchRequest>>,
    readers: Vec<JoinHandle<StreamLog>>,
    tallies: Arc<Tallies>,
    stop: watch::Sender<bool>,
}

impl Watches {
    /// Opens `streams` streams over `channels` and sends the create requests of
    /// `watchers` watches, round-robin over the streams.
    async fn open(
        channels: &[Channel],
        watchers: usize,
        streams: usize,
    ) -> Result<Watches, BenchError> {
        let tallies = Arc::new(Tallies::default());
        let (stop, stopped) = watch::channel(false);
        let mut requests = Vec::with_capacity(streams);
        let mut readers = Vec::with_capacity(streams);
        for stream in 0..streams {
            let watches_here = (stream..watchers).step_by(streams).count();
            let (sender, receiver) = mpsc::channel(watches_here + 1);
            for _ in 0..watches_here {
                sender
                    .try_send(create_request())
                    .map_err(|error| BenchError::new(format!("queueing a create: {error}")))?;
            }
            let mut client = WatchClient::new(channels[stream % channels.len()].clone())
                .max_decoding_message_size(64 << 20);
            let responses = client
                .watch(ReceiverStream::new(receiver))
                .await
                .map_err(|status| {
                    BenchError::new(format!(
                        "opening watch stream {stream}: {:?}: {}",
                        status.code(),
                        status.message()
                    ))
                })?
                .into_inner();
            requests.push(sender);
            readers.push(tokio::spawn(read_stream(
                responses,
                Arc::clone(&tallies),
                stopped.clone(),
            )));
        }
        Ok(Watches {
            requests,
            readers,
            tallies,
            stop,
        })
    }

    /// Waits for every watch's `created` response; fails on a refusal or after a minute.
    async fn wait_created(
        &self,
        watchers: usize,
        progress: &dyn Progress,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut shown = 0;
        loop {
            let created = self.tallies.created.load(Ordering::Acquire) as usize;
            if created >= watchers {
                return Ok(());
            }
            if self.tallies.problems.load(Ordering::Acquire) > 0 {
                return Err(BenchError::new(format!(
                    "{created} of {watchers} watches created, then a stream reported a problem (refused, canceled or closed)"
                )));
            }
            if Instant::now() >= deadline {
                return Err(BenchError::new(format!(
                    "only {created} of {watchers} watches were created within 60 s"
                )));
            }
            if created >= shown + watchers.div_ceil(10) {
                shown = created;
                progress.step(&format!("{watchers} watchers: {created} created"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `expected` events arrived, or none arrived for `timeout`.
    async fn wait_delivered(&self, expected: u64, timeout: Duration) {
        let mut seen = self.tallies.events.load(Ordering::Acquire);
        let mut last_progress = Instant::now();
        while seen < expected && last_progress.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let now_seen = self.tallies.events.load(Ordering::Acquire);
            if now_seen > seen {
                seen = now_seen;
                last_progress = Instant::now();
            }
        }
    }

    /// Stops the readers and closes the streams; returns what each reader saw.
    async fn close(self) -> Result<Vec<StreamLog>, BenchError> {
        let _ = self.stop.send(true);
        let mut logs = Vec::with_capacity(self.readers.len());
        for reader in self.readers {
            logs.push(
                reader
                    .await
                    .map_err(|error| BenchError::new(format!("a watch reader failed: {error}")))?,
            );
        }
        drop(self.requests);
        Ok(logs)
    }
}

/// A watch of [`WATCHED_KEY`] from the next revision on, its id chosen by the server
/// (etcd's `AutoWatchID`, 0).
fn create_request() -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: WATCHED_KEY.to_vec(),
                ..Default::default()
            },
        )),
    }
}

/// Reads one stream until told to stop, noting when each event arrived.
async fn read_stream(
    mut responses: Streaming<pb::WatchResponse>,
    tallies: Arc<Tallies>,
    mut stop: watch::Receiver<bool>,
) -> StreamLog {
    let mut log = StreamLog::default();
    loop {
        let message = tokio::select! {
            _ = stop.changed() => return log,
            message = responses.message() => message,
        };
        let at = Instant::now();
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                log.problems.push("the server ended the stream".to_string());
                tallies.problems.fetch_add(1, Ordering::AcqRel);
                return log;
            }
            Err(status) => {
                log.problems.push(format!(
                    "stream error {:?}: {}",
                    status.code(),
                    status.message()
                ));
                tallies.problems.fetch_add(1, Ordering::AcqRel);
                return log;
            }
        };
        on_response(&mut log, &tallies, response, at);
    }
}

fn on_response(log: &mut StreamLog, tallies: &Tallies, response: pb::WatchResponse, at: Instant) {
    if response.canceled {
        log.problems.push(format!(
            "watch {} {}: {:?} (compact revision {})",
            response.watch_id,
            if response.created {
                "refused"
            } else {
                "canceled"
            },
            response.cancel_reason,
            response.compact_revision
        ));
        tallies.problems.fetch_add(1, Ordering::AcqRel);
        return;
    }
    if response.created {
        log.created.push(response.watch_id);
        tallies.created.fetch_add(1, Ordering::AcqRel);
    }
    let mut events = 0;
    for event in response.events {
        if let Some(kv) = event.kv.filter(|kv| kv.key == WATCHED_KEY) {
            log.arrivals.push(Arrival {
                watch_id: response.watch_id,
                revision: kv.mod_revision,
                at,
            });
            events += 1;
        }
    }
    tallies.events.fetch_add(events, Ordering::AcqRel);
}

/// The cell's events checked against its puts.
struct Delivery {
    latencies: SignedLatencies,
    received: u64,
    unexpected: u64,
    last_arrival: Option<Instant>,
    /// Per revision, the first and the last arrival.
    spread: HashMap<i64, (Instant, Instant)>,
    problems: Vec<String>,
    watches_created: usize,
    watchers: usize,
}

impl Delivery {
    /// Matches every arrival with its put. Per watch, events must come in rising
    /// revision order (etcd's *ordered* and *unique*): one at or below the watch's last
    /// revision, or of a revision no put acknowledged, counts as unexpected.
    fn tally(writes: &Writes, logs: &[StreamLog], watchers: usize) -> Result<Delivery, BenchError> {
        let acked: HashMap<i64, Instant> = writes.acks.iter().copied().collect();
        let mut delivery = Delivery {
            latencies: SignedLatencies::new()?,
            received: 0,
            unexpected: 0,
            last_arrival: None,
            spread: HashMap::new(),
            problems: Vec::new(),
            watches_created: 0,
            watchers,
        };
        for log in logs {
            delivery.watches_created += log.created.len();
            delivery.problems.extend(log.problems.iter().cloned());
            // The last revision each created watch was sent.
            let mut last_revision: HashMap<i64, i64> =
                log.created.iter().map(|watch_id| (*watch_id, 0)).collect();
            for arrival in &log.arrivals {
                let (Some(last), Some(acked_at)) = (
                    last_revision.get_mut(&arrival.watch_id),
                    acked.get(&arrival.revision),
                ) else {
                    delivery.unexpected += 1;
                    continue;
                };
                if arrival.revision <= *last {
                    delivery.unexpected += 1;
                    continue;
                }
                *last = arrival.revision;
                delivery.received += 1;
                delivery
                    .latencies
                    .record(signed_nanos(arrival.at, *acked_at));
                delivery.last_arrival = Some(match delivery.last_arrival {
                    Some(latest) => latest.max(arrival.at),
                    None => arrival.at,
                });
                let spread = delivery
                    .spread
                    .entry(arrival.revision)
                    .or_insert((arrival.at, arrival.at));
                *spread = (spread.0.min(arrival.at), spread.1.max(arrival.at));
            }
        }
        Ok(delivery)
    }

    fn traces(&self, writes: &Writes) -> Vec<PutTrace> {
        writes
            .acks
            .iter()
            .zip(&writes.round_trips)
            .map(|((revision, acked), round_trip)| {
                let (first_event_us, last_event_us) =
                    self.spread.get(revision).map_or((0, 0), |(first, last)| {
                        (
                            signed_nanos(*first, *acked) / 1000,
                            signed_nanos(*last, *acked) / 1000,
                        )
                    });
                PutTrace {
                    revision: *revision,
                    acked_at_ms: signed_nanos(*acked, writes.first) as f64 / 1e6,
                    put_us: round_trip.as_micros() as u64,
                    first_event_us,
                    last_event_us,
                }
            })
            .collect()
    }

    fn drain_ms(&self, writes: &Writes) -> f64 {
        match (self.last_arrival, writes.acks.last()) {
            (Some(arrival), Some((_, acked))) => signed_nanos(arrival, *acked) as f64 / 1e6,
            _ => 0.0,
        }
    }

    fn errors(&self, expected: u64) -> Vec<String> {
        let mut errors = Vec::new();
        if self.received < expected {
            errors.push(format!(
                "{} of {expected} events missing",
                expected - self.received
            ));
        }
        if self.unexpected > 0 {
            errors.push(format!(
                "{} unexpected events (repeated, out of order, or of no acknowledged put)",
                self.unexpected
            ));
        }
        if self.watches_created != self.watchers {
            errors.push(format!(
                "{} of {} watches created",
                self.watches_created, self.watchers
            ));
        }
        errors.extend(self.problems.iter().take(5).cloned());
        errors
    }
}

/// `later - earlier` in nanoseconds, negative when `later` came first.
fn signed_nanos(later: Instant, earlier: Instant) -> i64 {
    match later.checked_duration_since(earlier) {
        Some(after) => after.as_nanos() as i64,
        None => -((earlier - later).as_nanos() as i64),
    }
}

mod chart;
mod report;

pub use report::{write_outputs, README_BEGIN, README_END};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_quantiles_read_across_zero() {
        let mut latencies = SignedLatencies::new().unwrap();
        for nanos in [-3, -1, 2, 5] {
            latencies.record(nanos);
        }
        assert_eq!(latencies.len(), 4);
        assert_eq!(latencies.negatives(), 2);
        assert_eq!(latencies.quantile(0.25), -3);
        assert_eq!(latencies.quantile(0.50), -1);
        assert_eq!(latencies.quantile(0.75), 2);
        assert_eq!(latencies.quantile(1.0), 5);
        assert_eq!((latencies.min(), latencies.max()), (-3, 5));
        let mut all_early = SignedLatencies::new().unwrap();
        all_early.record(-7);
        all_early.record(-4);
        assert_eq!((all_early.min(), all_early.max()), (-7, -4));
        assert_eq!(all_early.quantile(0.99), -4);
        assert_eq!(SignedLatencies::new().unwrap().quantile(0.5), 0);
    }

    #[test]
    fn a_delivery_before_the_ack_is_negative() {
        let ack = Instant::now();
        let later = ack + Duration::from_micros(250);
        assert_eq!(signed_nanos(later, ack), 250_000);
        assert_eq!(signed_nanos(ack, later), -250_000);
    }

    fn writes_at(base: Instant, revisions: &[i64]) -> Writes {
        Writes {
            acks: revisions
                .iter()
                .map(|revision| (*revision, base + Duration::from_millis(*revision as u64)))
                .collect(),
            round_trips: vec![Duration::from_micros(1); revisions.len()],
            first: base,
            put_latency_us: Histogram::new(3).unwrap(),
            late: 0,
            seconds: 0.0,
        }
    }

    #[test]
    fn missing_repeated_and_stray_events_are_told_apart() {
        let base = Instant::now();
        let writes = writes_at(base, &[10, 11, 12]);
        let arrival = |watch_id, revision: i64| Arrival {
            watch_id,
            revision,
            at: base + Duration::from_millis(revision as u64) + Duration::from_micros(100),
        };
        let log = StreamLog {
            created: vec![0, 1],
            arrivals: vec![
                arrival(0, 10),
                arrival(0, 11),
                arrival(0, 12),
                arrival(1, 10),
                arrival(1, 10), // repeated
                arrival(1, 9),  // no such put
                arrival(1, 12), // 11 is missing
            ],
            problems: Vec::new(),
        };
        let delivery = Delivery::tally(&writes, &[log], 2).unwrap();
        assert_eq!(delivery.received, 5);
        assert_eq!(delivery.unexpected, 2);
        // HDR keeps 3 significant digits: 100 µs reads back within 0.1 %.
        let median = delivery.latencies.quantile(0.5);
        assert!((100_000..=100_100).contains(&median), "{median}");
        let errors = delivery.errors(6);
        assert!(errors[0].contains("1 of 6 events missing"), "{errors:?}");
        assert!(errors[1].contains("2 unexpected"), "{errors:?}");
    }

    #[test]
    fn streams_default_to_one_per_watcher_up_to_a_hundred() {
        let mut options = WatchOptions::new(PathBuf::from("synod"));
        assert_eq!(options.streams_for(1), 1);
        assert_eq!(options.streams_for(100), 100);
        assert_eq!(options.streams_for(10_000), 100);
        options.streams = Some(8);
        assert_eq!(options.streams_for(10_000), 8);
        assert_eq!(options.streams_for(3), 3);
    }
}
