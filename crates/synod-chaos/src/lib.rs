//! # synod-chaos: a Jepsen-style suite against real `synod node` processes
//!
//! [`run`] starts three members on loopback ([`cluster`]), runs concurrent read, write and
//! compare-and-set clients against all of them ([`clients`]), and lets a seeded nemesis
//! ([`nemesis`]) inject one fault at a time — `kill -9` and restart, SIGSTOP/SIGCONT,
//! iptables partitions ([`firewall`]), clock rates under libfaketime, a full disk — each
//! for a bounded time. Then it heals everything, reads every key, stops what it started,
//! and checks the whole history ([`history`]): linearizability per key, acknowledged writes
//! the final reads do not account for, and the longest time without a successful
//! operation. The result is a [`report::ChaosReport`].

pub mod clients;
pub mod clock;
pub mod cluster;
pub mod firewall;
pub mod history;
pub mod nemesis;
pub mod report;

use clients::{ClientSpec, Shared};
use cluster::{Cluster, NodeSettings};
use history::{Outcome, Recorded, Value};
use nemesis::{ClockSkew, Nemesis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use report::{ChaosReport, Unavailability};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use synod_sim::linearizability::{RegisterOp, RegisterRet};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChaosError {
    /// The run could not be set up (ports, directories, mounts, a cluster without leader).
    #[error("setting up: {0}")]
    Setup(String),
    /// A fault could not be injected or healed.
    #[error("injecting a fault: {0}")]
    Fault(String),
    /// Interrupted (Ctrl-C, SIGTERM, SIGHUP) before there was a history to check.
    #[error("interrupted")]
    Interrupted,
}

/// The kinds of fault.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    Kill,
    Pause,
    Partition,
    Clock,
    Disk,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Clock,
        FaultKind::Disk,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Clock => "clock",
            FaultKind::Disk => "disk",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name.trim())
    }
}

#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// The `synod` executable the members run (`synod node …`).
    pub executable: PathBuf,
    /// Arguments that make `executable` print its monotonic clock's reading after a
    /// 300 ms sleep (`chaos --clock-probe`), to prove libfaketime works.
    pub clock_probe_args: Vec<String>,
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    pub clients: u32,
    pub keys: u32,
    pub read_mode: String,
    pub max_clock_drift_percent: u64,
    pub clock_skew: ClockSkew,
    /// Keep data, logs and the history here (otherwise a temporary directory is removed).
    pub out: Option<PathBuf>,
    /// Search steps per key for the linearizability check.
    pub check_budget: u64,
    /// Per-request deadline of the clients.
    pub deadline: Duration,
}

/// What the run shows while it runs.
pub trait Progress {
    fn start(&self, seconds: u64);
    fn update(&self, elapsed_s: u64, line: &str);
    fn note(&self, line: &str);
    fn finish(&self);
}

/// Which requested faults can run here, and why the others cannot.
pub fn prerequisites(
    options: &ChaosOptions,
) -> (Vec<FaultKind>, Vec<(String, String)>, Option<PathBuf>) {
    let mut enabled = Vec::new();
    let mut skipped = Vec::new();
    let mut libfaketime = None;
    for &kind in &options.faults {
        let missing = match kind {
            FaultKind::Kill | FaultKind::Pause => None,
            FaultKind::Partition => firewall::unavailable_reason(),
            FaultKind::Disk => disk_unavailable_reason(),
            FaultKind::Clock => match clock::find_libfaketime() {
                None => Some("libfaketime not found (install the Debian package faketime, or set SYNOD_CHAOS_LIBFAKETIME)".to_string()),
                Some(path) => match clock::probe(&options.executable, &options.clock_probe_args, &path) {
                    Ok(()) => {
                        libfaketime = Some(path);
                        None
                    }
                    Err(why) => Some(why),
                },
            },
        };
        match missing {
            None => enabled.push(kind),
            Some(why) => skipped.push((kind.name().to_string(), why)),
        }
    }
    (enabled, skipped, libfaketime)
}

fn disk_unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (each data directory on a tmpfs of its own)".into());
    }
    None
}

/// The run's directory: `--out`, or a new one under the system's temporary directory.
fn run_dir(options: &ChaosOptions) -> Result<PathBuf, ChaosError> {
    let dir = match &options.out {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("synod-chaos-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|error| ChaosError::Setup(format!("creating {}: {error}", dir.display())))?;
    // Members run under their own uids: they must be able to reach their directories.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|error| ChaosError::Setup(format!("chmod {}: {error}", dir.display())))?;
    Ok(dir)
}

/// Sets `flag` on SIGINT, SIGTERM or SIGHUP.
fn watch_signals(runtime: &tokio::runtime::Runtime, flag: Arc<AtomicBool>) {
    runtime.spawn(async move {
        synod_server::cli::stop_requested().await;
        flag.store(true, Ordering::SeqCst);
    });
}

/// Runs the whole thing. Everything started is stopped and every rule removed before it
/// returns, on every path.
pub fn run(options: &ChaosOptions, progress: &dyn Progress) -> Result<ChaosReport, ChaosError> {
    let (enabled, skipped, libfaketime) = prerequisites(options);
    for (fault, why) in &skipped {
        progress.note(&format!("SKIPPED fault {fault}: {why}"));
    }
    let dir = run_dir(options)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|error| ChaosError::Setup(format!("starting the client runtime: {error}")))?;
    let interrupted = Arc::new(AtomicBool::new(false));
    watch_signals(&runtime, Arc::clone(&interrupted));
    let settings = NodeSettings {
        executable: options.executable.clone(),
        read_mode: options.read_mode.clone(),
        max_clock_drift_percent: options.max_clock_drift_percent,
        heartbeat_interval_ms: 100,
        election_timeout_ms: 1000,
        own_uids: enabled.contains(&FaultKind::Partition),
        tmpfs_mib: enabled.contains(&FaultKind::Disk).then_some(256),
    };
    let outcome = Cluster::start(settings, &dir, libfaketime).and_then(|mut cluster| {
        let result = exercise(
            options,
            &enabled,
            &mut cluster,
            &runtime,
            &interrupted,
            progress,
        );
        cluster.stop();
        result
    });
    progress.finish();
    let leftover = firewall::remaining_rules().unwrap_or_default();
    if options.out.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let Exercised {
        history,
        finals,
        episodes,
        exits,
        ended_ns,
        interrupted,
    } = outcome?;
    let mut report = judge(options, &enabled, skipped, &history, &finals, ended_ns);
    if interrupted {
        report
            .notes
            .push("interrupted: the schedule was cut short".into());
    }
    report.clock_beyond_bound = episodes
        .iter()
        .any(|episode| episode.beyond_bound == Some(true));
    for kind in &enabled {
        let count = episodes
            .iter()
            .filter(|episode| episode.kind == *kind)
            .count();
        report
            .fault_counts
            .insert(kind.name().to_string(), count as u64);
    }
    report.episodes = episodes;
    report.member_exits = exits;
    for rule in leftover {
        report
            .notes
            .push(format!("an iptables rule was left behind: {rule}"));
    }
    if let Some(out) = &options.out {
        write_history(out, &history)?;
        report.notes.push(format!(
            "data, logs and history.jsonl kept in {}",
            out.display()
        ));
    }
    Ok(report)
}

/// What the clients and the nemesis did.
struct Exercised {
    history: Vec<Recorded>,
    finals: BTreeMap<u32, Option<Value>>,
    episodes: Vec<nemesis::Episode>,
    exits: Vec<nemesis::Exit>,
    /// When the clients stopped, in nanoseconds since the run began.
    ended_ns: u64,
    /// Ctrl-C (or SIGTERM, SIGHUP) cut the schedule short.
    interrupted: bool,
}

/// Clients and nemesis against a started cluster; heals and reads every key at the end.
fn exercise(
    options: &ChaosOptions,
    enabled: &[FaultKind],
    cluster: &mut Cluster,
    runtime: &tokio::runtime::Runtime,
    interrupted: &AtomicBool,
    progress: &dyn Progress,
) -> Result<Exercised, ChaosError> {
    let urls: Vec<String> = cluster
        .members
        .iter()
        .map(|member| member.client_url())
        .collect();
    learn_member_ids(cluster, runtime, &urls)?;
    let epoch = Instant::now();
    let shared = Arc::new(Shared::new(epoch));
    let tasks: Vec<_> = (0..options.clients)
        .map(|id| {
            let member = id as usize % urls.len();
            let spec = ClientSpec {
                id,
                member,
                url: urls[member].clone(),
                keys: options.keys,
                seed: options
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(u64::from(id)),
                deadline: options.deadline,
            };
            runtime.spawn(clients::run_client(spec, Arc::clone(&shared)))
        })
        .collect();
    let mut nemesis = Nemesis {
        cluster,
        firewall: firewall::Firewall::new(),
        rng: ChaCha8Rng::seed_from_u64(options.seed),
        runtime,
        epoch,
        interrupted,
        clock_skew: options.clock_skew,
        max_clock_drift_percent: options.max_clock_drift_percent,
        episodes: Vec::new(),
        exits: Vec::new(),
    };
    progress.start(options.duration.as_secs());
    let schedule = schedule(&mut nemesis, options, enabled, &shared, progress);
    let healed = nemesis.heal_all();
    // A calm tail: the cluster recovers under load before the clients stop.
    nemesis.sleep(Duration::from_secs(2));
    shared.stop.store(true, Ordering::SeqCst);
    let ended_ns = shared.now_ns();
    let mut history = Vec::new();
    for task in tasks {
        history.extend(runtime.block_on(task).unwrap_or_default());
    }
    let interrupted = matches!(schedule, Err(ChaosError::Interrupted));
    if !interrupted {
        schedule?;
    }
    healed?;
    let finals = final_reads(runtime, &urls, options.keys, &shared, &mut history);
    let Nemesis {
        episodes, exits, ..
    } = nemesis;
    Ok(Exercised {
        history,
        finals,
        episodes,
        exits,
        ended_ns,
        interrupted,
    })
}

/// Waits for a leader, then asks every member its id.
fn learn_member_ids(
    cluster: &mut Cluster,
    runtime: &tokio::runtime::Runtime,
    urls: &[String],
) -> Result<(), ChaosError> {
    if runtime
        .block_on(cluster::wait_for_leader(urls, Duration::from_secs(60)))
        .is_none()
    {
        return Err(ChaosError::Setup(format!(
            "the members elected no leader within 60 s; n1's log ends:\n{}",
            cluster.log_tail(0, 5)
        )));
    }
    for (index, url) in urls.iter().enumerate() {
        let status = runtime.block_on(cluster::status(url, Duration::from_secs(2)));
        cluster.members[index].id = status
            .map(|(id, _)| id)
            .ok_or_else(|| ChaosError::Setup(format!("{url} does not answer Status")))?;
    }
    Ok(())
}

/// The nemesis's rounds until the duration is up (leaving room to heal) or interrupted.
fn schedule(
    nemesis: &mut Nemesis<'_>,
    options: &ChaosOptions,
    enabled: &[FaultKind],
    shared: &Shared,
    progress: &dyn Progress,
) -> Result<(), ChaosError> {
    let end = nemesis.epoch + options.duration;
    let mut round = Vec::new();
    loop {
        let quiet = Duration::from_millis(nemesis.rng.gen_range(1000..2500));
        if !sleep_with_progress(nemesis, quiet, shared, progress, "quiet") {
            return Err(ChaosError::Interrupted);
        }
        if enabled.is_empty() {
            if Instant::now() >= end {
                return Ok(());
            }
            continue;
        }
        if round.is_empty() {
            round = nemesis.round(enabled);
        }
        let kind = round[0];
        let hold = Duration::from_millis(nemesis.rng.gen_range(2000..5000));
        // A clock episode restarts members twice around its hold.
        let needs = hold
            + if kind == FaultKind::Clock {
                Duration::from_secs(6)
            } else {
                Duration::from_secs(1)
            };
        if Instant::now() + needs >= end {
            return Ok(());
        }
        round.remove(0);
        progress.update(
            nemesis.epoch.elapsed().as_secs(),
            &format!("{} | fault: {}", counters(shared), kind.name()),
        );
        nemesis.episode(kind, hold)?;
        if nemesis.interrupted.load(Ordering::SeqCst) {
            return Err(ChaosError::Interrupted);
        }
    }
}

fn counters(shared: &Shared) -> String {
    format!(
        "ok {} failed {} indeterminate {}",
        shared.ok.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        shared.indeterminate.load(Ordering::Relaxed)
    )
}

fn sleep_with_progress(
    nemesis: &mut Nemesis<'_>,
    duration: Duration,
    shared: &Shared,
    progress: &dyn Progress,
    what: &str,
) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        progress.update(
            nemesis.epoch.elapsed().as_secs(),
            &format!("{} | {what}", counters(shared)),
        );
        if !nemesis.sleep(Duration::from_millis(250).min(until - Instant::now())) {
            return false;
        }
        if nemesis.restart_exited(FaultKind::Kill, &[]).is_err() {
            return false;
        }
    }
    true
}

/// Reads every key once more after the heal (added to the history as reads).
fn final_reads(
    runtime: &tokio::runtime::Runtime,
    urls: &[String],
    keys: u32,
    shared: &Shared,
    history: &mut Vec<Recorded>,
) -> BTreeMap<u32, Option<Value>> {
    let mut finals = BTreeMap::new();
    for key in 0..keys {
        let call_ns = shared.now_ns();
        if let Some(value) =
            runtime.block_on(clients::final_read(urls, key, Duration::from_secs(30)))
        {
            finals.insert(key, value);
            history.push(Recorded {
                client: u32::MAX,
                member: usize::MAX,
                key,
                op: RegisterOp::Read,
                call_ns,
                return_ns: shared.now_ns(),
                outcome: Outcome::Ok(RegisterRet::ReadOk(value)),
            });
        }
    }
    finals
}

/// Checks the history and fills in the report (episodes and exits are added by the caller).
fn judge(
    options: &ChaosOptions,
    enabled: &[FaultKind],
    skipped: Vec<(String, String)>,
    history: &[Recorded],
    finals: &BTreeMap<u32, Option<Value>>,
    ended_ns: u64,
) -> ChaosReport {
    // The final reads are checked with the rest but not counted as the clients' operations.
    let workload: Vec<Recorded> = history
        .iter()
        .filter(|op| op.client != u32::MAX)
        .cloned()
        .collect();
    let started = Instant::now();
    let (verdict, key_verdicts) = history::check_keys(history, options.check_budget);
    let check_seconds = started.elapsed().as_secs_f64();
    let gap = |member: Option<usize>| {
        let (length, from) =
            history::longest_gap(&history::completions(history, member), 0, ended_ns);
        Unavailability {
            longest_ms: length as f64 / 1e6,
            from_s: from as f64 / 1e9,
        }
    };
    ChaosReport {
        seed: options.seed,
        duration_s: ended_ns as f64 / 1e9,
        read_mode: options.read_mode.clone(),
        clients: options.clients,
        keys: options.keys,
        max_clock_drift_percent: options.max_clock_drift_percent,
        faults_enabled: enabled.iter().map(|kind| kind.name().to_string()).collect(),
        faults_skipped: skipped,
        clock_beyond_bound: false,
        ops: history::tally(&workload)
            .into_iter()
            .map(|(kind, tally)| (kind.name().to_string(), tally))
            .collect(),
        fault_counts: BTreeMap::new(),
        episodes: Vec::new(),
        verdict,
        key_verdicts,
        lost_writes: history::lost_writes(history, finals),
        keys_without_final_read: (0..options.keys)
            .filter(|key| !finals.contains_key(key))
            .collect(),
        unavailability: gap(None),
        unavailability_per_member: (0..3)
            .map(|member| (format!("n{}", member + 1), gap(Some(member))))
            .collect(),
        member_exits: Vec::new(),
        check_seconds,
        notes: Vec::new(),
    }
}

/// `history.jsonl`: one operation per line.
fn write_history(dir: &Path, history: &[Recorded]) -> Result<(), ChaosError> {
    let mut text = String::new();
    for operation in history {
        let line = serde_json::json!({
            "client": operation.client,
            "member": operation.member,
            "key": operation.key,
            "op": format!("{:?}", operation.op),
            "call_ns": operation.call_ns,
            "return_ns": operation.return_ns,
            "outcome": format!("{:?}", operation.outcome),
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let path = dir.join("history.jsonl");
    std::fs::write(&path, text)
        .map_err(|error| ChaosError::Setup(format!("writing {}: {error}", path.display())))
}
