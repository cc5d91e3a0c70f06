//! The load generator: closed-loop clients over etcd's v3 gRPC API, the same code for
//! every system measured. Each client issues its workload's operation back to back; a
//! cell's throughput is the operations completed in the measured window divided by its
//! length, and latencies go into an HDR histogram (microseconds, 3 significant digits).
//!
//! Clients are spread over the endpoints round-robin (client `i` talks to endpoint
//! `i mod n`; `synod bench cluster` puts the leader's endpoint first, so a single client
//! talks to the leader), so followers forward to the leader in both systems. Clients of one
//! endpoint share at most `connections_per_endpoint` HTTP/2 connections.

use crate::error::BenchError;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::{Duration, Instant};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use synod_server::timeline::monotonic_ns;
use tonic::transport::{Channel, Endpoint};

/// The operation every client of a cell repeats.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
pub enum Workload {
    /// `Put` of a random key of the keyspace.
    #[serde(rename = "put")]
    Put,
    /// `Range` of one random key, linearizable (etcd's default).
    #[serde(rename = "get-linearizable")]
    GetLinearizable,
    /// `Range` of one random key with `serializable: true` (served locally).
    #[serde(rename = "get-serializable")]
    GetSerializable,
    /// `Txn`: if the key's value equals one of the two bench values, put the other one.
    /// Succeeded and failed comparisons both count as completed operations.
    #[serde(rename = "cas")]
    CompareAndSet,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Put,
        Workload::GetLinearizable,
        Workload::GetSerializable,
        Workload::CompareAndSet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::GetLinearizable => "get-linearizable",
            Workload::GetSerializable => "get-serializable",
            Workload::CompareAndSet => "cas",
        }
    }
}

/// One cell of load: a workload at a number of clients for a fixed time.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub workload: Workload,
    pub clients: usize,
    /// Operations run but not recorded, so connections and caches are warm.
    pub warmup: Duration,
    pub duration: Duration,
    /// Keys are `bench/0000 ..` up to this many.
    pub keyspace: usize,
    pub value_bytes: usize,
    pub connections_per_endpoint: usize,
    /// A request still unanswered after this long counts as an error.
    pub request_timeout: Duration,
    /// Seeds the clients' key choices (client `i` uses `seed + i`).
    pub seed: u64,
    /// Keep the completion instant of every successful operation (for failover gaps).
    pub record_completions: bool,
    /// Keep every measured successful operation's send and receipt on the host's
    /// monotonic clock (to line up with the members' timelines).
    pub record_windows: bool,
}

impl LoadSpec {
    pub fn new(workload: Workload, clients: usize, duration: Duration) -> LoadSpec {
        LoadSpec {
            workload,
            clients,
            warmup: Duration::from_millis(500),
            duration,
            keyspace: 1000,
            value_bytes: 256,
            connections_per_endpoint: 4,
            request_timeout: Duration::from_secs(10),
            seed: 1,
            record_completions: false,
            record_windows: false,
        }
    }

    fn validate(&self, endpoints: &[String]) -> Result<(), BenchError> {
        if endpoints.is_empty() {
            return Err(BenchError::new("the load generator was given no endpoint"));
        }
        if self.clients == 0 {
            return Err(BenchError::new("a cell needs at least one client"));
        }
        if self.keyspace == 0 || self.value_bytes == 0 {
            return Err(BenchError::new(
                "the keyspace and the value size must be positive",
            ));
        }
        if self.connections_per_endpoint == 0 {
            return Err(BenchError::new(
                "each endpoint needs at least one connection",
            ));
        }
        Ok(())
    }
}

/// Latency summary of one cell, in microseconds.
#[derive(Clone, Copy, Default, PartialEq, Debug, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            p50_us: histogram.value_at_quantile(0.50),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
            mean_us: histogram.mean(),
        }
    }
}

/// What one cell of load measured.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// Successful operations in the measured window.
    pub ops: u64,
    /// Failed operations in the measured window.
    pub errors: u64,
    /// Length of the measured window.
    pub seconds: f64,
    pub latency: Latency,
    /// The first error's text, to say what went wrong.
    pub first_error: Option<String>,
    /// When the measured window started.
    pub started: Instant,
    /// Completion instants of successful operations, sorted (only when asked for).
    pub completions: Vec<Instant>,
    /// Send and receipt of each measured successful operation, `CLOCK_MONOTONIC` ns,
    /// sorted (only when asked for).
    pub windows: Vec<(u64, u64)>,
}

impl LoadResult {
    pub fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 {
            self.ops as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The longest time without a successful operation between `from` and `until`,
    /// counting the edges of that interval (a system that never recovers stalls until
    /// `until`).
    pub fn longest_gap(&self, from: Instant, until: Instant) -> Duration {
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for &done in &self.completions {
            if done <= from {
                continue;
            }
            if done > until {
                break;
            }
            longest = longest.max(done - previous);
            previous = done;
        }
        longest.max(until.saturating_duration_since(previous))
    }
}

/// The two values puts and compare-and-sets write (each `value_bytes` long).
fn bench_values(value_bytes: usize) -> [Vec<u8>; 2] {
    [vec![b'a'; value_bytes], vec![b'b'; value_bytes]]
}

pub fn bench_key(index: usize) -> Vec<u8> {
    format!("bench/{index:04}").into_bytes()
}

/// Opens `per_endpoint` HTTP/2 connections to each endpoint (`http://host:port`).
pub async fn connect(
    endpoints: &[String],
    per_endpoint: usize,
    request_timeout: Duration,
) -> Result<Vec<Vec<Channel>>, BenchError> {
    let mut all = Vec::with_capacity(endpoints.len());
    for url in endpoints {
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|error| BenchError::new(format!("bad endpoint {url:?}: {error}")))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(request_timeout);
        let mut channels = Vec::with_capacity(per_endpoint);
        for _ in 0..per_endpoint {
            let channel = endpoint
                .connect()
                .await
                .map_err(|error| BenchError::new(format!("cannot connect to {url}: {error}")))?;
            channels.push(channel);
        }
        all.push(channels);
    }
    Ok(all)
}

/// Builds the request of one operation.
struct Operations {
    workload: Workload,
    keyspace: usize,
    values: [Vec<u8>; 2],
    rng: StdRng,
}

impl Operations {
    async fn issue(&mut self, kv: &mut KvClient<Channel>) -> Result<(), tonic::Status> {
        let key = bench_key(self.rng.gen_range(0..self.keyspace));
        let pick = usize::from(self.rng.gen_bool(0.5));
        match self.workload {
            Workload::Put => {
                kv.put(pb::PutRequest {
                    key,
                    value: self.values[pick].clone(),
                    ..Default::default()
                })
                .await?;
            }
            Workload::GetLinearizable | Workload::GetSerializable => {
                kv.range(pb::RangeRequest {
                    key,
                    serializable: self.workload == Workload::GetSerializable,
                    ..Default::default()
                })
                .await?;
            }
            Workload::CompareAndSet => {
                let compare = pb::Compare {
                    result: pb::compare::CompareResult::Equal as i32,
                    target: pb::compare::CompareTarget::Value as i32,
                    key: key.clone(),
                    range_end: Vec::new(),
                    target_union: Some(pb::compare::TargetUnion::Value(self.values[pick].clone())),
                };
                let swap = pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key,
                        value: self.values[1 - pick].clone(),
                        ..Default::default()
                    })),
                };
                kv.txn(pb::TxnRequest {
                    compare: vec![compare],
                    success: vec![swap],
                    failure: Vec::new(),
                })
                .await?;
            }
        }
        Ok(())
    }
}

struct ClientTally {
    histogram: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    completions: Vec<Instant>,
    windows: Vec<(u64, u64)>,
}

fn new_histogram() -> Result<Histogram<u64>, BenchError> {
    Histogram::new_with_bounds(1, 120_000_000, 3)
        .map_err(|error| BenchError::new(format!("latency histogram: {error}")))
}

/// One closed-loop client: issue, wait, record, repeat until `stop_at`.
async fn client_loop(
    mut kv: KvClient<Channel>,
    mut operations: Operations,
    measure_from: Instant,
    stop_at: Instant,
    record: (bool, bool),
    mut tally: ClientTally,
) -> ClientTally {
    let (record_completions, record_windows) = record;
    loop {
        let start = Instant::now();
        if start >= stop_at {
            return tally;
        }
        let sent_ns = if record_windows { monotonic_ns() } else { 0 };
        let outcome = operations.issue(&mut kv).await;
        let received_ns = if record_windows { monotonic_ns() } else { 0 };
        let done = Instant::now();
        let measured = start >= measure_from;
        match outcome {
            Ok(()) => {
                // A success counts inside the window; an error counts whenever the
                // request was issued in it (a failover error may come late).
                if measured && done <= stop_at {
                    let micros = (done - start).as_micros().max(1) as u64;
                    tally.histogram.saturating_record(micros);
                    if record_completions {
                        tally.completions.push(done);
                    }
                    if record_windows {
                        tally.windows.push((sent_ns, received_ns));
                    }
                }
            }
            Err(status) => {
                if measured {
                    tally.errors += 1;
                    if tally.first_error.is_none() {
                        tally.first_error =
                            Some(format!("{:?}: {}", status.code(), status.message()));
                    }
                }
                // A refused connection fails at once: do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Runs one cell of load against `endpoints` (`http://host:port`) and summarises it.
pub async fn run_load(endpoints: &[String], spec: &LoadSpec) -> Result<LoadResult, BenchError> {
    spec.validate(endpoints)?;
    let per_endpoint = spec
        .connections_per_endpoint
        .min(spec.clients.div_ceil(endpoints.len()))
        .max(1);
    let channels = connect(endpoints, per_endpoint, spec.request_timeout).await?;
    let values = bench_values(spec.value_bytes);
    let measure_from = Instant::now() + spec.warmup;
    let stop_at = measure_from + spec.duration;
    let mut tasks = Vec::with_capacity(spec.clients);
    for client in 0..spec.clients {
        let endpoint = client % endpoints.len();
        let connection = (client / endpoints.len()) % channels[endpoint].len();
        let kv = KvClient::new(channels[endpoint][connection].clone())
            .max_decoding_message_size(64 << 20);
        let operations = Operations {
            workload: spec.workload,
            keyspace: spec.keyspace,
            values: values.clone(),
            rng: StdRng::seed_from_u64(spec.seed.wrapping_add(client as u64)),
        };
        let tally = ClientTally {
            histogram: new_histogram()?,
            errors: 0,
            first_error: None,
            completions: Vec::new(),
            windows: Vec::new(),
        };
        tasks.push(tokio::spawn(client_loop(
            kv,
            operations,
            measure_from,
            stop_at,
            (spec.record_completions, spec.record_windows),
            tally,
        )));
    }
    let mut histogram = new_histogram()?;
    let mut errors = 0;
    let mut first_error = None;
    let mut completions = Vec::new();
    let mut windows = Vec::new();
    for task in tasks {
        let tally = task
            .await
            .map_err(|error| BenchError::new(format!("a load client failed: {error}")))?;
        histogram
            .add(&tally.histogram)
            .map_err(|error| BenchError::new(format!("merging latencies: {error}")))?;
        errors += tally.errors;
        if first_error.is_none() {
            first_error = tally.first_error;
        }
        completions.extend(tally.completions);
        windows.extend(tally.windows);
    }
    completions.sort_unstable();
    windows.sort_unstable();
    Ok(LoadResult {
        ops: histogram.len(),
        errors,
        seconds: spec.duration.as_secs_f64(),
        latency: Latency::of(&histogram),
        first_error,
        started: measure_from,
        completions,
        windows,
    })
}

/// Writes every key of the keyspace once, so reads find values and compare-and-sets
/// have something to compare.
pub async fn preload(
    endpoints: &[String],
    keyspace: usize,
    value_bytes: usize,
) -> Result<(), BenchError> {
    let channels = connect(
        &endpoints[..1.min(endpoints.len())],
        1,
        Duration::from_secs(10),
    )
    .await?;
    let channel = channels
        .first()
        .and_then(|channels| channels.first())
        .ok_or_else(|| BenchError::new("the load generator was given no endpoint"))?;
    let values = bench_values(value_bytes);
    let mut writers = Vec::new();
    let writer_count = 16.min(keyspace);
    for writer in 0..writer_count {
        let mut kv = KvClient::new(channel.clone());
        let value = values[0].clone();
        writers.push(tokio::spawn(async move {
            for index in (writer..keyspace).step_by(writer_count) {
                kv.put(pb::PutRequest {
                    key: bench_key(index),
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|status| {
                    BenchError::new(format!("preloading key {index}: {}", status.message()))
                })?;
            }
            Ok::<(), BenchError>(())
        }));
    }
    for writer in writers {
        writer
            .await
            .map_err(|error| BenchError::new(format!("a preload writer failed: {error}")))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result_with(completions: Vec<Instant>) -> LoadResult {
        LoadResult {
            ops: completions.len() as u64,
            errors: 0,
            seconds: 1.0,
            latency: Latency::default(),
            first_error: None,
            started: Instant::now(),
            completions,
            windows: Vec::new(),
        }
    }

    #[test]
    fn the_longest_gap_counts_the_edges_of_the_window() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let result = result_with(vec![t0 + ms(10), t0 + ms(20), t0 + ms(300), t0 + ms(310)]);
        assert_eq!(result.longest_gap(t0, t0 + ms(320)), ms(280));
        // Nothing after 310 ms: a window ending at 1 s stalled for 690 ms at its end.
        assert_eq!(result.longest_gap(t0, t0 + ms(1000)), ms(690));
        // No success at all: the whole window is one stall.
        assert_eq!(result_with(Vec::new()).longest_gap(t0, t0 + ms(50)), ms(50));
    }

    #[test]
    fn a_cell_without_endpoints_or_clients_is_refused() {
        let spec = LoadSpec::new(Workload::Put, 0, Duration::from_secs(1));
        assert!(spec.validate(&["http://127.0.0.1:1".into()]).is_err());
        let spec = LoadSpec::new(Workload::Put, 1, Duration::from_secs(1));
        assert!(spec
            .validate(&[])
            .unwrap_err()
            .to_string()
            .contains("no endpoint"));
    }

    #[test]
    fn workload_names_are_stable() {
        let names: Vec<&str> = Workload::ALL
            .iter()
            .map(|workload| workload.name())
            .collect();
        assert_eq!(
            names,
            ["put", "get-linearizable", "get-serializable", "cas"]
        );
        assert_eq!(
            serde_json::to_string(&Workload::CompareAndSet).unwrap(),
            "\"cas\""
        );
    }
}
