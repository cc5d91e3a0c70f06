//! A local stand-in for Maelstrom's `lin-kv` test: spawns N `synod-maelstrom`
//! processes, routes every message between them itself (so it can delay messages and
//! cut the network into partitions), runs concurrent clients issuing random read, write
//! and cas requests on a few keys for a while, and checks the recorded history per key
//! for linearizability with `synod_sim::linearizability::check_kv`.
//!
//! Threads: one reader per node's stdout, one router (delays, partitions, the nemesis
//! schedule), one thread per client. Children are ended by closing their stdin (the
//! node drains and exits), then killed by handle if they do not exit in time.

use crate::errors::{self, KEY_DOES_NOT_EXIST, PRECONDITION_FAILED};
use crate::json::Json;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use synod_sim::linearizability::{check_kv, KeyedOp, Operation, RegisterOp, RegisterRet, Verdict};

/// What to run.
#[derive(Clone, Debug)]
pub struct HarnessOptions {
    /// The `synod-maelstrom` binary.
    pub binary: PathBuf,
    pub nodes: usize,
    /// Concurrent clients, each with one request outstanding at a time.
    pub clients: usize,
    /// Keys are `0..keys`.
    pub keys: u64,
    /// Values written are `0..values`.
    pub values: u64,
    /// How long clients issue requests.
    pub duration: Duration,
    /// A client waits this long between a reply and its next request (uniform in the
    /// range, in milliseconds).
    pub think_time_ms: (u64, u64),
    /// A request without a reply after this long is recorded as indefinite.
    pub client_timeout: Duration,
    /// Every message (node to node, client to node, node to client) is delayed by a
    /// uniform random time in this range, in milliseconds.
    pub latency_ms: (u64, u64),
    /// When set, the nemesis alternates: healthy network for this long, then a random
    /// partition (a majority and a minority side, or one node isolated) for this long.
    pub partition_interval: Option<Duration>,
    pub seed: u64,
    /// Search steps the linearizability checker may spend on each key.
    pub check_budget: u64,
    /// When set, each node's stderr goes to `<dir>/<node id>.log`.
    pub node_log_dir: Option<PathBuf>,
}

impl HarnessOptions {
    /// Three nodes, five clients, three keys, ten seconds, no faults.
    pub fn new(binary: PathBuf) -> HarnessOptions {
        HarnessOptions {
            binary,
            nodes: 3,
            clients: 5,
            keys: 3,
            values: 5,
            duration: Duration::from_secs(10),
            think_time_ms: (0, 20),
            client_timeout: Duration::from_secs(5),
            latency_ms: (0, 2),
            partition_interval: None,
            seed: 1,
            check_budget: 20_000_000,
            node_log_dir: None,
        }
    }
}

/// How one request ended, as Maelstrom classifies it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub enum Outcome {
    /// read_ok, write_ok, cas_ok.
    Ok,
    /// A definite error: the operation did not happen (codes 20, 22, 11, ...).
    Fail,
    /// Unknown: a timeout or an indefinite error code.
    Info,
}

/// One client request and its outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    pub client: u64,
    pub node: String,
    pub key: u64,
    pub op: RegisterOp<u64>,
    /// Microseconds since the start of the workload.
    pub call_us: u64,
    pub return_us: u64,
    pub outcome: Outcome,
    /// For the checker: None if the operation is indefinite or definitely not applied.
    #[serde(skip)]
    pub ret: Option<RegisterRet<u64>>,
    pub error_code: Option<u64>,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct HarnessReport {
    pub valid: bool,
    pub verdict: Verdict,
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// Latency of requests that got a reply (ok or definite failure), in milliseconds.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// ok / ops.
    pub availability: f64,
    /// Messages the router carried, and dropped because of a partition.
    pub messages_delivered: u64,
    pub messages_dropped: u64,
    /// (milliseconds since start, what the nemesis did).
    pub nemesis_log: Vec<(u64, String)>,
    pub history: Vec<Record>,
    /// Per request type: (ok, fail, info).
    pub by_type: BTreeMap<String, (usize, usize, usize)>,
}

#[derive(Serialize)]
struct VerdictLine {
    valid: bool,
    ops: usize,
    ok: usize,
    fail: usize,
    info: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    availability: f64,
    checker: &'static str,
}

impl HarnessReport {
    /// The one-line JSON verdict.
    pub fn verdict_json(&self) -> String {
        let line = VerdictLine {
            valid: self.valid,
            ops: self.ops,
            ok: self.ok,
            fail: self.fail,
            info: self.info,
            p50_ms: self.p50_ms,
            p99_ms: self.p99_ms,
            max_ms: self.max_ms,
            availability: self.availability,
            checker: match self.verdict {
                Verdict::Linearizable => "linearizable",
                Verdict::NotLinearizable { .. } => "not-linearizable",
                Verdict::Unknown { .. } => "unknown",
            },
        };
        serde_json::to_string(&line).expect("plain numbers serialize")
    }

    /// A Maelstrom-like summary, several lines.
    pub fn summary(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, ":stats");
        let _ = writeln!(
            text,
            "  all    count {:>6}  ok {:>6}  fail {:>6}  info {:>6}",
            self.ops, self.ok, self.fail, self.info
        );
        for (kind, (ok, fail, info)) in &self.by_type {
            let _ = writeln!(
                text,
                "  {kind:<6} count {:>6}  ok {ok:>6}  fail {fail:>6}  info {info:>6}",
                ok + fail + info
            );
        }
        let _ = writeln!(
            text,
            ":latency  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            self.p50_ms, self.p99_ms, self.max_ms
        );
        let _ = writeln!(text, ":availability {:.3}", self.availability);
        let _ = writeln!(
            text,
            ":net  delivered {}  dropped {}  msgs-per-op {:.1}",
            self.messages_delivered,
            self.messages_dropped,
            self.messages_delivered as f64 / self.ops.max(1) as f64
        );
        for (at_ms, what) in &self.nemesis_log {
            let _ = writeln!(text, ":nemesis {at_ms:>6} ms  {what}");
        }
        let _ = writeln!(text, ":linearizable {}", self.verdict);
        let _ = writeln!(
            text,
            "{}",
            if self.valid {
                "Everything looks good! ヽ(‘ー`)ノ"
            } else {
                "Analysis invalid! (ﾉಥ益ಥ）ﾉ ┻━┻"
            }
        );
        text
    }
}

/// Why a run could not even start.
#[derive(Debug)]
pub enum HarnessError {
    Spawn {
        binary: PathBuf,
        error: std::io::Error,
    },
    Init {
        node: String,
        reason: String,
    },
    BadOptions(String),
}

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HarnessError::Spawn { binary, error } => {
                write!(f, "cannot start {}: {error}", binary.display())
            }
            HarnessError::Init { node, reason } => {
                write!(f, "node {node} did not initialize: {reason}")
            }
            HarnessError::BadOptions(reason) => write!(f, "bad options: {reason}"),
        }
    }
}

impl std::error::Error for HarnessError {}

enum RouterInput {
    /// A line written by node `index` (None: by a client).
    Line {
        from_node: Option<usize>,
        line: String,
    },
    /// Workload over: heal the network and stop the nemesis.
    Heal,
    Stop,
}

/// A message waiting out its delay.
struct Delayed {
    due: Instant,
    sequence: u64,
    dest: Destination,
    line: String,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.sequence) == (other.due, other.sequence)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.sequence).cmp(&(other.due, other.sequence))
    }
}

#[derive(Clone)]
enum Destination {
    Node(usize),
    Client(Sender<Json>),
}

struct RouterStats {
    delivered: u64,
    dropped: u64,
    nemesis_log: Vec<(u64, String)>,
}

/// Runs the whole test. Errors only when the cluster could not be started.
pub fn run(options: HarnessOptions) -> Result<HarnessReport, HarnessError> {
    if options.nodes == 0 || options.clients == 0 || options.keys == 0 || options.values == 0 {
        return Err(HarnessError::BadOptions(
            "nodes, clients, keys and values must be positive".into(),
        ));
    }
    let names: Vec<String> = (1..=options.nodes).map(|i| format!("n{i}")).collect();
    let mut children = Vec::new();
    let mut stdins = Vec::new();
    let (router_tx, router_rx) = mpsc::channel::<RouterInput>();
    let mut readers = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let stderr = match &options.node_log_dir {
            Some(dir) => {
                let _ = std::fs::create_dir_all(dir);
                let path = dir.join(format!("{name}.log"));
                File::create(&path)
                    .map(Stdio::from)
                    .map_err(|error| HarnessError::Spawn {
                        binary: path,
                        error,
                    })?
            }
            None => Stdio::null(),
        };
        let spawned = Command::new(&options.binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(error) => {
                shut_down(children, Vec::new());
                return Err(HarnessError::Spawn {
                    binary: options.binary.clone(),
                    error,
                });
            }
        };
        let stdout = child.stdout.take().expect("piped stdout");
        stdins.push(child.stdin.take().expect("piped stdin"));
        children.push(child);
        let tx = router_tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx
                    .send(RouterInput::Line {
                        from_node: Some(index),
                        line,
                    })
                    .is_err()
                {
                    break;
                }
            }
        }));
    }

    // Clients: c0 is the harness itself (init), c1.. are the workload's.
    let mut client_channels: BTreeMap<String, Sender<Json>> = BTreeMap::new();
    let mut client_inboxes = Vec::new();
    for client in 0..=options.clients {
        let (tx, rx) = mpsc::channel::<Json>();
        client_channels.insert(format!("c{client}"), tx);
        client_inboxes.push(rx);
    }
    let start = Instant::now();
    let router = {
        let names = names.clone();
        let options = options.clone();
        std::thread::spawn(move || {
            route(router_rx, stdins, names, client_channels, &options, start)
        })
    };

    let mut inboxes = client_inboxes.into_iter();
    let init_inbox = inboxes.next().expect("c0");
    if let Err(error) = init_nodes(&names, &router_tx, &init_inbox) {
        let _ = router_tx.send(RouterInput::Stop);
        let _ = router.join();
        shut_down(children, readers);
        return Err(error);
    }

    let workload_start = Instant::now();
    let clients: Vec<JoinHandle<Vec<Record>>> = inboxes
        .enumerate()
        .map(|(index, inbox)| {
            let client = index as u64 + 1;
            let tx = router_tx.clone();
            let names = names.clone();
            let options = options.clone();
            std::thread::spawn(move || {
                run_client(client, &names, &options, &tx, &inbox, workload_start)
            })
        })
        .collect();
    // Heal when the workload time is over, so requests still in flight can finish.
    std::thread::sleep(
        (workload_start + options.duration).saturating_duration_since(Instant::now()),
    );
    let _ = router_tx.send(RouterInput::Heal);
    let mut history: Vec<Record> = Vec::new();
    for client in clients {
        history.extend(client.join().unwrap_or_default());
    }
    let _ = router_tx.send(RouterInput::Stop);
    let stats = router.join().unwrap_or(RouterStats {
        delivered: 0,
        dropped: 0,
        nemesis_log: vec![(0, "router thread panicked".into())],
    });
    shut_down(children, readers);
    history.sort_by_key(|record| (record.call_us, record.client));
    Ok(report(history, stats, options.check_budget))
}

fn init_nodes(
    names: &[String],
    router: &Sender<RouterInput>,
    inbox: &Receiver<Json>,
) -> Result<(), HarnessError> {
    let node_ids = Json::Array(names.iter().map(|name| Json::str(name.clone())).collect());
    for (index, name) in names.iter().enumerate() {
        let msg_id = index as u64 + 1;
        let body = Json::object([
            ("type", Json::str("init")),
            ("msg_id", Json::UInt(msg_id)),
            ("node_id", Json::str(name.clone())),
            ("node_ids", node_ids.clone()),
        ]);
        send_from_client(router, "c0", name, body);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending: BTreeSet<u64> = (1..=names.len() as u64).collect();
    while !pending.is_empty() {
        let wait = deadline.saturating_duration_since(Instant::now());
        let reply = inbox.recv_timeout(wait).map_err(|_| HarnessError::Init {
            node: names[*pending.first().expect("non-empty") as usize - 1].clone(),
            reason: "no init_ok within 10 s".into(),
        })?;
        let body = reply.get("body");
        let in_reply_to = body
            .and_then(|b| b.get("in_reply_to"))
            .and_then(Json::as_u64);
        let kind = body.and_then(|b| b.get("type")).and_then(Json::as_str);
        match (kind, in_reply_to) {
            (Some("init_ok"), Some(id)) => {
                pending.remove(&id);
            }
            _ => {
                return Err(HarnessError::Init {
                    node: reply
                        .get("src")
                        .and_then(Json::as_str)
                        .unwrap_or("?")
                        .to_string(),
                    reason: format!("unexpected reply {reply}"),
                })
            }
        }
    }
    Ok(())
}

fn send_from_client(router: &Sender<RouterInput>, client: &str, node: &str, body: Json) {
    let line = Json::object([
        ("src", Json::str(client)),
        ("dest", Json::str(node)),
        ("body", body),
    ])
    .to_python_string();
    let _ = router.send(RouterInput::Line {
        from_node: None,
        line,
    });
}

/// The router thread: delays, partitions, the nemesis. Returns its counters.
fn route(
    input: Receiver<RouterInput>,
    stdins: Vec<ChildStdin>,
    names: Vec<String>,
    clients: BTreeMap<String, Sender<Json>>,
    options: &HarnessOptions,
    start: Instant,
) -> RouterStats {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ 0x006e_6574_776f_726b);
    let mut stdins: Vec<Option<ChildStdin>> = stdins.into_iter().map(Some).collect();
    let mut queue: BinaryHeap<Reverse<Delayed>> = BinaryHeap::new();
    let mut sequence = 0u64;
    // side[i]: which side of the partition node i is on (all 0 when healed).
    let mut side = vec![0u8; names.len()];
    let mut nemesis_active = options.partition_interval.is_some() && names.len() > 1;
    let mut next_nemesis = options
        .partition_interval
        .map(|interval| Instant::now() + interval);
    let mut stats = RouterStats {
        delivered: 0,
        dropped: 0,
        nemesis_log: Vec::new(),
    };
    let mut stopping = false;
    loop {
        let now = Instant::now();
        // Deliver what is due.
        while queue.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Reverse(delayed) = queue.pop().expect("peeked");
            stats.delivered += 1;
            match delayed.dest {
                Destination::Node(index) => {
                    if let Some(stdin) = stdins[index].as_mut() {
                        let written =
                            writeln!(stdin, "{}", delayed.line).and_then(|()| stdin.flush());
                        if written.is_err() {
                            stdins[index] = None;
                        }
                    }
                }
                Destination::Client(tx) => {
                    if let Ok(json) = Json::parse(&delayed.line) {
                        let _ = tx.send(json);
                    }
                }
            }
        }
        // The nemesis.
        if let (true, Some(at), Some(interval)) =
            (nemesis_active, next_nemesis, options.partition_interval)
        {
            if now >= at {
                let elapsed = start.elapsed().as_millis() as u64;
                if side.iter().all(|s| *s == 0) {
                    side = random_partition(names.len(), &mut rng);
                    stats
                        .nemesis_log
                        .push((elapsed, describe_partition(&names, &side)));
                } else {
                    side.iter_mut().for_each(|s| *s = 0);
                    stats.nemesis_log.push((elapsed, "network healed".into()));
                }
                next_nemesis = Some(now + interval);
            }
        }
        if stopping && queue.is_empty() {
            return stats;
        }
        let mut wait = Duration::from_millis(50);
        if let Some(Reverse(d)) = queue.peek() {
            wait = wait.min(d.due.saturating_duration_since(now));
        }
        if let (true, Some(at)) = (nemesis_active, next_nemesis) {
            wait = wait.min(at.saturating_duration_since(now));
        }
        let message = match input.recv_timeout(wait) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                stopping = true;
                continue;
            }
        };
        match message {
            RouterInput::Heal => {
                if nemesis_active && side.iter().any(|s| *s != 0) {
                    stats.nemesis_log.push((
                        start.elapsed().as_millis() as u64,
                        "network healed (workload over)".into(),
                    ));
                }
                side.iter_mut().for_each(|s| *s = 0);
                nemesis_active = false;
            }
            RouterInput::Stop => stopping = true,
            RouterInput::Line { from_node, line } => {
                let Ok(envelope) = Json::parse(&line) else {
                    stats.dropped += 1;
                    continue;
                };
                let Some(dest) = envelope.get("dest").and_then(Json::as_str) else {
                    stats.dropped += 1;
                    continue;
                };
                let destination = if let Some(index) = names.iter().position(|n| n == dest) {
                    if let Some(from) = from_node {
                        if side[from] != side[index] {
                            stats.dropped += 1;
                            continue;
                        }
                    }
                    Destination::Node(index)
                } else if let Some(tx) = clients.get(dest) {
                    Destination::Client(tx.clone())
                } else {
                    stats.dropped += 1;
                    continue;
                };
                let (low, high) = options.latency_ms;
                let delay_ms = if high > low {
                    rng.gen_range(low..=high)
                } else {
                    low
                };
                sequence += 1;
                queue.push(Reverse(Delayed {
                    due: now + Duration::from_millis(delay_ms),
                    sequence,
                    dest: destination,
                    line,
                }));
            }
        }
    }
}

/// A majority and a minority side (the minority may be a single isolated node).
fn random_partition(nodes: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut order: Vec<usize> = (0..nodes).collect();
    for i in (1..order.len()).rev() {
        let j = rng.gen_range(0..=i);
        order.swap(i, j);
    }
    let largest_minority = if nodes == 2 { 1 } else { (nodes - 1) / 2 };
    let minority = rng.gen_range(1..=largest_minority.max(1));
    let mut side = vec![0u8; nodes];
    for index in order.into_iter().take(minority.max(1)) {
        side[index] = 1;
    }
    side
}

fn describe_partition(names: &[String], side: &[u8]) -> String {
    let group = |s: u8| {
        names
            .iter()
            .zip(side)
            .filter(|(_, side)| **side == s)
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!("partition [{}] | [{}]", group(0), group(1))
}

fn run_client(
    client: u64,
    names: &[String],
    options: &HarnessOptions,
    router: &Sender<RouterInput>,
    inbox: &Receiver<Json>,
    start: Instant,
) -> Vec<Record> {
    let mut rng =
        ChaCha8Rng::seed_from_u64(options.seed.wrapping_mul(0x9e37_79b9).wrapping_add(client));
    let name = format!("c{client}");
    let mut records = Vec::new();
    let mut msg_id = 0u64;
    let micros = |at: Instant| at.duration_since(start).as_micros() as u64;
    while start.elapsed() < options.duration {
        let key = rng.gen_range(0..options.keys);
        let node = &names[rng.gen_range(0..names.len())];
        let op = match rng.gen_range(0..3) {
            0 => RegisterOp::Read,
            1 => RegisterOp::Write(rng.gen_range(0..options.values)),
            _ => RegisterOp::Cas {
                from: rng.gen_range(0..options.values),
                to: rng.gen_range(0..options.values),
            },
        };
        msg_id += 1;
        let mut body = Json::object([
            (
                "type",
                Json::str(match op {
                    RegisterOp::Read => "read",
                    RegisterOp::Write(_) => "write",
                    RegisterOp::Cas { .. } => "cas",
                }),
            ),
            ("msg_id", Json::UInt(msg_id)),
            ("key", Json::UInt(key)),
        ]);
        match &op {
            RegisterOp::Read => {}
            RegisterOp::Write(value) => body.push("value", Json::UInt(*value)),
            RegisterOp::Cas { from, to } => {
                body.push("from", Json::UInt(*from));
                body.push("to", Json::UInt(*to));
            }
        }
        let call = Instant::now();
        send_from_client(router, &name, node, body);
        let reply = await_reply(inbox, msg_id, call + options.client_timeout);
        let returned = Instant::now();
        let (outcome, ret, error_code) = classify(&op, reply.as_ref());
        records.push(Record {
            client,
            node: node.clone(),
            key,
            op,
            call_us: micros(call),
            return_us: micros(returned),
            outcome,
            ret,
            error_code,
        });
        let (low, high) = options.think_time_ms;
        let think = if high > low {
            rng.gen_range(low..=high)
        } else {
            low
        };
        if think > 0 {
            std::thread::sleep(Duration::from_millis(think));
        }
    }
    records
}

/// The body of the reply to `msg_id`, or None at the deadline. Late replies to earlier
/// requests are skipped.
fn await_reply(inbox: &Receiver<Json>, msg_id: u64, deadline: Instant) -> Option<Json> {
    loop {
        let wait = deadline.checked_duration_since(Instant::now())?;
        let envelope = inbox.recv_timeout(wait).ok()?;
        let Some(body) = envelope.get("body") else {
            continue;
        };
        if body.get("in_reply_to").and_then(Json::as_u64) == Some(msg_id) {
            return Some(body.clone());
        }
    }
}

/// Maelstrom's classification of a reply, and what the checker records.
fn classify(
    op: &RegisterOp<u64>,
    reply: Option<&Json>,
) -> (Outcome, Option<RegisterRet<u64>>, Option<u64>) {
    let Some(body) = reply else {
        return (Outcome::Info, None, None);
    };
    match (body.get("type").and_then(Json::as_str), op) {
        (Some("read_ok"), RegisterOp::Read) => match body.get("value") {
            Some(Json::Null) => (Outcome::Ok, Some(RegisterRet::ReadOk(None)), None),
            Some(value) => match value.as_u64() {
                Some(value) => (Outcome::Ok, Some(RegisterRet::ReadOk(Some(value))), None),
                // A value no client wrote: record it so the checker flags it.
                None => (Outcome::Ok, Some(RegisterRet::ReadOk(Some(u64::MAX))), None),
            },
            None => (Outcome::Info, None, None),
        },
        (Some("write_ok"), RegisterOp::Write(_)) => (Outcome::Ok, Some(RegisterRet::WriteOk), None),
        (Some("cas_ok"), RegisterOp::Cas { .. }) => (Outcome::Ok, Some(RegisterRet::CasOk), None),
        (Some("error"), _) => {
            let code = body.get("code").and_then(Json::as_u64);
            match (code, op) {
                (Some(KEY_DOES_NOT_EXIST), RegisterOp::Read) => {
                    (Outcome::Fail, Some(RegisterRet::ReadOk(None)), code)
                }
                (Some(KEY_DOES_NOT_EXIST), RegisterOp::Cas { .. }) => {
                    (Outcome::Fail, Some(RegisterRet::CasNotFound), code)
                }
                (Some(PRECONDITION_FAILED), RegisterOp::Cas { .. }) => {
                    (Outcome::Fail, Some(RegisterRet::CasMismatch), code)
                }
                (Some(code), _) if errors::is_definite(code) => (Outcome::Fail, None, Some(code)),
                _ => (Outcome::Info, None, code),
            }
        }
        // A reply of the wrong kind: the outcome is unknown.
        _ => (Outcome::Info, None, None),
    }
}

/// The router has dropped every node's stdin: a node with nothing pending exits at once.
/// Nodes still draining requests nobody waits for any more are killed (by handle) after
/// a short grace period.
fn shut_down(children: Vec<Child>, readers: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + Duration::from_secs(1);
    for mut child in children {
        drop(child.stdin.take());
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
    for reader in readers {
        let _ = reader.join();
    }
}

fn report(history: Vec<Record>, stats: RouterStats, budget: u64) -> HarnessReport {
    let checked: Vec<Operation<KeyedOp<u64, u64>, RegisterRet<u64>>> = history
        .iter()
        .filter_map(|record| {
            let op = KeyedOp {
                key: record.key,
                op: record.op.clone(),
            };
            match (record.outcome, &record.ret) {
                (_, Some(ret)) => Some(Operation::completed(
                    record.client,
                    op,
                    record.call_us,
                    record.return_us,
                    ret.clone(),
                )),
                (Outcome::Info, None) => {
                    Some(Operation::indefinite(record.client, op, record.call_us))
                }
                // Definitely not applied: leave it out.
                (_, None) => None,
            }
        })
        .collect();
    let verdict = check_kv(&checked, budget);
    let count = |outcome: Outcome| history.iter().filter(|r| r.outcome == outcome).count();
    let (ok, fail, info) = (
        count(Outcome::Ok),
        count(Outcome::Fail),
        count(Outcome::Info),
    );
    let mut latencies: Vec<u64> = history
        .iter()
        .filter(|r| r.outcome != Outcome::Info)
        .map(|r| r.return_us - r.call_us)
        .collect();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        round_ms(latencies[rank.clamp(1, latencies.len()) - 1])
    };
    let mut by_type: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    for record in &history {
        let kind = match record.op {
            RegisterOp::Read => "read",
            RegisterOp::Write(_) => "write",
            RegisterOp::Cas { .. } => "cas",
        };
        let entry = by_type.entry(kind.to_string()).or_default();
        match record.outcome {
            Outcome::Ok => entry.0 += 1,
            Outcome::Fail => entry.1 += 1,
            Outcome::Info => entry.2 += 1,
        }
    }
    let ops = history.len();
    HarnessReport {
        valid: verdict.is_linearizable(),
        verdict,
        ops,
        ok,
        fail,
        info,
        p50_ms: percentile(50.0),
        p99_ms: percentile(99.0),
        max_ms: latencies.last().map(|l| round_ms(*l)).unwrap_or(0.0),
        availability: if ops == 0 {
            0.0
        } else {
            (ok as f64 / ops as f64 * 1000.0).round() / 1000.0
        },
        messages_delivered: stats.delivered,
        messages_dropped: stats.dropped,
        nemesis_log: stats.nemesis_log,
        history,
        by_type,
    }
}

fn round_ms(micros: u64) -> f64 {
    (micros as f64 / 100.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_classified_as_maelstrom_does() {
        let parse = |text: &str| Json::parse(text).unwrap();
        let cas = RegisterOp::Cas { from: 1, to: 2 };
        assert_eq!(
            classify(
                &RegisterOp::Read,
                Some(&parse(r#"{"type":"read_ok","value":3}"#))
            ),
            (Outcome::Ok, Some(RegisterRet::ReadOk(Some(3))), None)
        );
        assert_eq!(
            classify(
                &RegisterOp::Read,
                Some(&parse(r#"{"type":"error","code":20}"#))
            ),
            (Outcome::Fail, Some(RegisterRet::ReadOk(None)), Some(20))
        );
        assert_eq!(
            classify(&cas, Some(&parse(r#"{"type":"error","code":22}"#))),
            (Outcome::Fail, Some(RegisterRet::CasMismatch), Some(22))
        );
        assert_eq!(
            classify(&cas, Some(&parse(r#"{"type":"error","code":20}"#))),
            (Outcome::Fail, Some(RegisterRet::CasNotFound), Some(20))
        );
        // 11: definitely not applied, left out of the checked history.
        assert_eq!(
            classify(&cas, Some(&parse(r#"{"type":"error","code":11}"#))),
            (Outcome::Fail, None, Some(11))
        );
        // 0 and no reply at all: indefinite.
        assert_eq!(
            classify(&cas, Some(&parse(r#"{"type":"error","code":0}"#))),
            (Outcome::Info, None, Some(0))
        );
        assert_eq!(classify(&cas, None), (Outcome::Info, None, None));
    }

    #[test]
    fn partitions_split_a_majority_from_a_minority() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for nodes in [2usize, 3, 5] {
            for _ in 0..50 {
                let side = random_partition(nodes, &mut rng);
                let minority = side.iter().filter(|s| **s == 1).count();
                assert!(minority >= 1 && minority < nodes, "{side:?}");
                if nodes > 2 {
                    assert!(minority <= (nodes - 1) / 2, "{side:?}");
                }
            }
        }
    }

    #[test]
    fn a_history_with_a_stale_read_is_reported_invalid() {
        let record = |client, op, call_us, return_us, ret| Record {
            client,
            node: "n1".into(),
            key: 0,
            op,
            call_us,
            return_us,
            outcome: Outcome::Ok,
            ret: Some(ret),
            error_code: None,
        };
        let history = vec![
            record(1, RegisterOp::Write(1), 0, 10, RegisterRet::WriteOk),
            record(2, RegisterOp::Write(2), 20, 30, RegisterRet::WriteOk),
            record(1, RegisterOp::Read, 40, 50, RegisterRet::ReadOk(Some(1))),
        ];
        let stats = RouterStats {
            delivered: 0,
            dropped: 0,
            nemesis_log: Vec::new(),
        };
        let report = report(history, stats, 1_000_000);
        assert!(!report.valid);
        assert!(report.verdict.is_violation());
        assert!(report
            .verdict_json()
            .starts_with(r#"{"valid":false,"ops":3,"ok":3,"fail":0,"info":0,"#));
    }
}
