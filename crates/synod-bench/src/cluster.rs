//! `synod bench cluster`: the whole run. Measures the machine's ceilings, starts the
//! systems (Synod ×3, etcd ×3 where installed, the unreplicated ceiling), drives every
//! cell — workload × clients — with the same load generator, one system after the other
//! for each cell so drift in the machine hits all of them alike, then kills each
//! cluster's leader under load.

use crate::breakdown::{self, Breakdown, CellBreakdown, Scrape};
use crate::error::BenchError;
use crate::load::{preload, run_load, LoadSpec, Workload};
use crate::machine::{self, Machine};
use crate::process::{etcd_version, find_on_path, ClusterProcesses, Launch, Ports, System, Timing};
use crate::report::{
    Ceilings, Cell, ClusterReport, Failover, FailoverTrial, Placement, ReadModes, Settings,
};
use crate::timeline::CellTimeline;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Where the members keep their data (on the disk being measured; removed after).
    pub data_dir: PathBuf,
    /// Leave the data directories and member logs in place after the run.
    pub keep_data: bool,
    /// The `synod` executable whose `node` subcommand runs a replica.
    pub synod_executable: PathBuf,
    /// The `etcd` executable; `None` looks for `etcd` on `PATH`.
    pub etcd_executable: Option<PathBuf>,
    /// Measure Synod alone even where etcd is installed.
    pub skip_etcd: bool,
    /// Leave out the unreplicated ceiling.
    pub skip_ceiling: bool,
    pub skip_failover: bool,
    /// Leave the members' request timelines off in the single-client put cells (the
    /// path of one put is then not printed; the p50 is measured without the recording).
    pub skip_timeline: bool,
    pub workloads: Vec<Workload>,
    /// Synod's read modes to measure linearizable gets in: `ReadIndex` and `Both` add a
    /// second Synod cluster running `--read-mode read-index`.
    pub read_modes: ReadModes,
    pub clients: Vec<usize>,
    /// Where the replicated systems' clients are, each its own cell (the ceiling has one
    /// member and is measured once).
    pub placements: Vec<Placement>,
    pub warmup: Duration,
    pub cell_duration: Duration,
    pub keyspace: usize,
    pub value_bytes: usize,
    pub connections_per_endpoint: usize,
    pub timing: Timing,
    /// Put clients during failover (all on the followers' endpoints).
    pub failover_clients: usize,
    /// Load before the leader is killed.
    pub failover_before: Duration,
    /// Load after the leader is killed.
    pub failover_after: Duration,
    /// Leader kills per replicated system (the killed member restarts in between).
    pub failover_trials: usize,
    pub fdatasync_iterations: usize,
    pub loopback_round_trips: usize,
    /// First loopback port tried for the members.
    pub base_port: u16,
}

impl ClusterOptions {
    pub fn new(synod_executable: PathBuf) -> ClusterOptions {
        ClusterOptions {
            data_dir: PathBuf::from("synod-data/bench-cluster"),
            keep_data: false,
            synod_executable,
            etcd_executable: None,
            skip_etcd: false,
            skip_ceiling: false,
            skip_timeline: false,
            skip_failover: false,
            workloads: Workload::ALL.to_vec(),
            read_modes: ReadModes::Both,
            clients: vec![1, 16, 64, 256],
            placements: Placement::ALL.to_vec(),
            warmup: Duration::from_millis(500),
            cell_duration: Duration::from_secs(3),
            keyspace: 1000,
            value_bytes: 256,
            connections_per_endpoint: 4,
            timing: Timing {
                heartbeat_interval_ms: 100,
                election_timeout_ms: 1000,
            },
            failover_clients: 16,
            failover_before: Duration::from_secs(2),
            failover_after: Duration::from_secs(5),
            failover_trials: 3,
            fdatasync_iterations: 1000,
            loopback_round_trips: 10_000,
            base_port: 23_100,
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        if self.workloads.is_empty() || self.clients.is_empty() || self.placements.is_empty() {
            return Err(BenchError::new(
                "choose at least one workload, one client count and one placement",
            ));
        }
        if self.clients.contains(&0) {
            return Err(BenchError::new("a client count must be at least 1"));
        }
        if self.cell_duration.is_zero() {
            return Err(BenchError::new("the cell duration must be positive"));
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

/// Where the run reports what it is doing (a progress bar, or nothing).
pub trait Progress {
    /// The run has `steps` steps.
    fn begin(&self, steps: u64);
    /// A step starts.
    fn step(&self, what: &str);
    /// The current step is done.
    fn done(&self);
    /// A line worth keeping on screen.
    fn note(&self, line: &str);
    fn finish(&self);
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn begin(&self, _steps: u64) {}
    fn step(&self, _what: &str) {}
    fn done(&self) {}
    fn note(&self, _line: &str) {}
    fn finish(&self) {}
}

/// One line on stderr per finished measurement: for logs, where a bar is noise.
pub struct Plain;

impl Progress for Plain {
    fn begin(&self, _steps: u64) {}
    fn step(&self, _what: &str) {}
    fn done(&self) {}
    fn note(&self, line: &str) {
        eprintln!("{line}");
    }
    fn finish(&self) {}
}

/// An indicatif progress bar on stderr.
pub struct Bar(indicatif::ProgressBar);

impl Bar {
    pub fn new() -> Bar {
        let bar = indicatif::ProgressBar::new(0);
        let style = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
        )
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar(bar)
    }
}

impl Default for Bar {
    fn default() -> Bar {
        Bar::new()
    }
}

impl Progress for Bar {
    fn begin(&self, steps: u64) {
        self.0.set_length(steps);
    }
    fn step(&self, what: &str) {
        self.0.set_message(what.to_string());
    }
    fn done(&self) {
        self.0.inc(1);
    }
    fn note(&self, line: &str) {
        self.0.println(line);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// One system ready to be measured.
struct Running {
    processes: ClusterProcesses,
}

/// Runs the whole benchmark; see the module documentation.
pub fn run(options: &ClusterOptions, progress: &dyn Progress) -> Result<ClusterReport, BenchError> {
    options.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("synod-bench")
        .build()
        .map_err(|error| BenchError::new(format!("starting the async runtime: {error}")))?;
    let result = runtime.block_on(run_async(options, progress));
    progress.finish();
    if !options.keep_data {
        let _ = std::fs::remove_dir_all(&options.data_dir);
    }
    result
}

async fn run_async(
    options: &ClusterOptions,
    progress: &dyn Progress,
) -> Result<ClusterReport, BenchError> {
    let mut notes = Vec::new();
    let host = Machine::describe();
    let etcd_executable = if options.skip_etcd {
        notes.push(
            "etcd was left out of this run (--skip-etcd): Synod is measured alone.".to_string(),
        );
        None
    } else {
        match options
            .etcd_executable
            .clone()
            .or_else(|| find_on_path("etcd"))
        {
            Some(path) if path.is_file() => Some(path),
            _ => {
                notes.push(
                    "etcd is not installed (Debian: apt-get install etcd-server): Synod is measured alone, and the targets against etcd are not measured."
                        .to_string(),
                );
                None
            }
        }
    };
    let etcd_version = match &etcd_executable {
        Some(path) => Some(etcd_version(path)?),
        None => None,
    };
    let mut systems = vec![System::Synod];
    if options.read_modes.read_index() && options.workloads.contains(&Workload::GetLinearizable) {
        systems.push(System::SynodReadIndex);
    }
    if etcd_executable.is_some() {
        systems.push(System::Etcd);
    }
    if !options.skip_ceiling {
        systems.push(System::Ceiling);
    }
    // The leader kill is measured once for Synod: the read mode does not change it.
    let replicated: Vec<System> = systems
        .iter()
        .copied()
        .filter(|system| matches!(system, System::Synod | System::Etcd))
        .collect();
    let cells = options
        .workloads
        .iter()
        .map(|workload| {
            systems
                .iter()
                .filter(|system| measured(**system, *workload, options.read_modes))
                .map(|system| placements_of(*system, &options.placements).len())
                .sum::<usize>()
        })
        .sum::<usize>()
        * options.clients.len();
    let failovers = if options.skip_failover {
        0
    } else {
        replicated.len()
    };
    progress.begin((2 + systems.len() + cells + failovers) as u64);

    progress.step("loopback round-trip time");
    let loopback_message_bytes = 64;
    let loopback_rtt = machine::loopback_rtt(options.loopback_round_trips, loopback_message_bytes)?;
    progress.done();
    progress.step("fdatasync latency");
    let fdatasync_block_bytes = 4096;
    let fdatasync = machine::fdatasync_latency(
        &options.data_dir,
        options.fdatasync_iterations,
        fdatasync_block_bytes,
    )?;
    progress.done();
    let ceilings = Ceilings {
        fdatasync_block_bytes,
        fdatasync,
        loopback_message_bytes,
        loopback_rtt,
    };
    progress.note(&format!(
        "fdatasync p50 {:.0} µs, loopback RTT p50 {:.0} µs",
        ceilings.fdatasync.p50_us, ceilings.loopback_rtt.p50_us
    ));

    let mut ports = Ports::from(options.base_port);
    let mut running: Vec<(System, Running)> = Vec::new();
    for system in &systems {
        progress.step(&format!("starting {}", system.label()));
        let executable = match system {
            System::Etcd => etcd_executable
                .clone()
                .ok_or_else(|| BenchError::new("etcd was chosen without an executable"))?,
            System::Synod | System::SynodReadIndex | System::Ceiling => {
                options.synod_executable.clone()
            }
        };
        let mut processes = ClusterProcesses::start(
            Launch {
                system: *system,
                executable: &executable,
                members: if *system == System::Ceiling { 1 } else { 3 },
                data_dir: options.data_dir.join(system.name()),
                timing: options.timing,
            },
            &mut ports,
        )?;
        processes.wait_ready(Duration::from_secs(30)).await?;
        preload(
            &processes.endpoints(),
            options.keyspace,
            options.value_bytes,
        )
        .await
        .map_err(|error| error.context(format!("preloading {}", system.name())))?;
        running.push((*system, Running { processes }));
        progress.done();
    }

    let mut cells = Vec::new();
    let mut breakdowns = Vec::new();
    let mut timelines = Vec::new();
    for workload in &options.workloads {
        for &clients in &options.clients {
            for (system, run) in &running {
                if !measured(*system, *workload, options.read_modes) {
                    continue;
                }
                for placement in placements_of(*system, &options.placements) {
                    let (cell, breakdown, timeline) = measure_cell(
                        *system, run, *workload, clients, placement, options, progress,
                    )
                    .await?;
                    cells.push(cell);
                    breakdowns.extend(breakdown);
                    timelines.extend(timeline);
                    progress.done();
                }
            }
        }
    }

    let mut failovers = Vec::new();
    let mut keep_logs = Vec::new();
    if !options.skip_failover {
        for (system, run) in &mut running {
            if !replicated.contains(system) {
                continue;
            }
            progress.step(&format!(
                "{}: kill -9 the leader under load ×{}",
                system.name(),
                options.failover_trials
            ));
            let failover = failover(&mut run.processes, options).await?;
            for trial in &failover.trials {
                progress.note(&format!(
                    "{} failover: killed {}, longest stall {} ms, {} errors",
                    system.name(),
                    trial.killed,
                    trial.stall_ms,
                    trial.errors
                ));
            }
            // A stall far beyond an election timeout is worth reading about afterwards:
            // keep that cluster's member logs (two outliers of 3–5 s went unexplained
            // until a run with logs showed a snapshot storm).
            let long = 2 * options.timing.election_timeout_ms;
            if let Some(trial) = failover.trials.iter().find(|trial| trial.stall_ms > long) {
                let note = format!(
                    "{} failover: a trial stalled {} ms (more than two election timeouts); \
                     the members' logs are kept in {}",
                    system.name(),
                    trial.stall_ms,
                    run.processes.data_dir.display()
                );
                progress.note(&note);
                notes.push(note);
                keep_logs.push(*system);
            }
            failovers.push(failover);
            progress.done();
        }
    }
    for (system, run) in running {
        if options.keep_data {
            drop(run.processes);
        } else if keep_logs.contains(&system) {
            run.processes.stop_keeping_logs();
        } else {
            run.processes.stop();
        }
    }

    let mut report = ClusterReport {
        date: machine::utc_now(),
        machine: host,
        etcd_version,
        notes,
        settings: Settings {
            clients: options.clients.clone(),
            workloads: options.workloads.clone(),
            warmup_ms: options.warmup.as_millis() as u64,
            cell_ms: options.cell_duration.as_millis() as u64,
            keyspace: options.keyspace,
            value_bytes: options.value_bytes,
            connections_per_endpoint: options.connections_per_endpoint,
            heartbeat_interval_ms: options.timing.heartbeat_interval_ms,
            election_timeout_ms: options.timing.election_timeout_ms,
            read_modes: options.read_modes,
            placements: options.placements.clone(),
        },
        ceilings,
        cells,
        failovers,
        breakdowns,
        timelines,
        targets: Vec::new(),
    };
    report.evaluate_targets();
    Ok(report)
}

/// `failover_trials` times: puts from clients on the followers' endpoints only, the
/// leader killed with SIGKILL `failover_before` into the load; then the killed member is
/// restarted and the cluster allowed to settle before the next trial.
async fn failover(
    processes: &mut ClusterProcesses,
    options: &ClusterOptions,
) -> Result<Failover, BenchError> {
    let window = options.failover_before + options.failover_after;
    let clients = options.failover_clients.max(1);
    let mut trials = Vec::new();
    let mut first_error = None;
    for trial in 0..options.failover_trials.max(1) {
        let (outcome, killed) = failover_trial(processes, options, trial as u64).await?;
        if first_error.is_none() {
            first_error = outcome.1;
        }
        trials.push(outcome.0);
        processes.restart(killed)?;
        processes
            .wait_ready(Duration::from_secs(30))
            .await
            .map_err(|error| error.context("after restarting the killed leader"))?;
        // Let the restarted member catch up before the next leader is killed.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(Failover::of(
        processes.system,
        clients,
        window.as_millis() as u64,
        trials,
        first_error,
    ))
}

type TrialOutcome = (FailoverTrial, Option<String>);

async fn failover_trial(
    processes: &mut ClusterProcesses,
    options: &ClusterOptions,
    trial: u64,
) -> Result<(TrialOutcome, usize), BenchError> {
    let leader = processes.wait_ready(Duration::from_secs(30)).await?;
    let killed = processes.members[leader].name.clone();
    let followers: Vec<String> = processes
        .members
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != leader)
        .map(|(_, member)| member.client_url.clone())
        .collect();
    let window = options.failover_before + options.failover_after;
    let mut spec = LoadSpec::new(Workload::Put, options.failover_clients.max(1), window);
    spec.warmup = Duration::ZERO;
    spec.keyspace = options.keyspace;
    spec.value_bytes = options.value_bytes;
    spec.connections_per_endpoint = options.connections_per_endpoint;
    spec.record_completions = true;
    spec.seed = 1000 + trial;
    let load = tokio::spawn({
        let spec = spec.clone();
        async move { run_load(&followers, &spec).await }
    });
    tokio::time::sleep(options.failover_before).await;
    processes.kill(leader)?;
    let killed_at = Instant::now();
    let result = load
        .await
        .map_err(|error| BenchError::new(format!("the failover load failed: {error}")))??;
    let stall = result.longest_gap(result.started, result.started + window);
    let new_leader = processes
        .leader_index()
        .await
        .map(|index| processes.members[index].name.clone());
    let outcome = FailoverTrial {
        killed,
        killed_after_ms: killed_at
            .saturating_duration_since(result.started)
            .as_millis() as u64,
        stall_ms: stall.as_millis() as u64,
        errors: result.errors,
        ops: result.ops,
        new_leader,
    };
    Ok(((outcome, result.first_error), leader))
}

/// Whether `system` is measured under `workload`: the read-index cluster only for
/// linearizable gets, and the lease cluster's linearizable gets only when the lease
/// mode was asked for.
fn measured(system: System, workload: Workload, read_modes: ReadModes) -> bool {
    match system {
        System::SynodReadIndex => workload == Workload::GetLinearizable,
        System::Synod => workload != Workload::GetLinearizable || read_modes.lease(),
        System::Etcd | System::Ceiling => true,
    }
}

/// The placements `system` is measured in: the ceiling's single member only once.
fn placements_of(system: System, placements: &[Placement]) -> Vec<Placement> {
    if system == System::Ceiling {
        vec![Placement::Balanced]
    } else {
        placements.to_vec()
    }
}

/// One cell: `clients` closed-loop clients of `workload` at `placement`'s members, with
/// the servers' and the load generator's CPU; for Synod's single-client puts also the
/// per-request breakdown from the members' histograms.
async fn measure_cell(
    system: System,
    run: &Running,
    workload: Workload,
    clients: usize,
    placement: Placement,
    options: &ClusterOptions,
    progress: &dyn Progress,
) -> Result<(Cell, Option<CellBreakdown>, Option<CellTimeline>), BenchError> {
    progress.step(&format!(
        "{} · {} · {clients} clients · {}",
        system.name(),
        workload.name(),
        placement.name()
    ));
    let mut spec = LoadSpec::new(workload, clients, options.cell_duration);
    spec.warmup = options.warmup;
    spec.keyspace = options.keyspace;
    spec.value_bytes = options.value_bytes;
    spec.connections_per_endpoint = options.connections_per_endpoint;
    let leader = run.processes.leader_index().await;
    let endpoints = placement.endpoints(run.processes.endpoints(), leader);
    let entry = leader.map(|leader| match placement {
        Placement::Follower => (leader + 1) % run.processes.members.len(),
        Placement::Balanced | Placement::Leader => leader,
    });
    let breakdown_wanted =
        system == System::Synod && workload == Workload::Put && clients == 1 && entry.is_some();
    let before = if breakdown_wanted {
        Some(scrape_all(run).await?)
    } else {
        None
    };
    // Step by step: Synod's pinned single-client puts (balanced puts its one client at
    // the leader too) and the ceiling's.
    let timeline_wanted = !options.skip_timeline
        && workload == Workload::Put
        && clients == 1
        && match system {
            System::Synod => entry.is_some() && placement != Placement::Balanced,
            System::Ceiling => true,
            System::SynodReadIndex | System::Etcd => false,
        };
    if timeline_wanted {
        // Recording on at every member (what was recorded before is dropped). A member
        // that does not answer costs the cell its timeline, not the run.
        for member in &run.processes.members {
            if let Err(error) = crate::timeline::fetch(&member.metrics_url, true).await {
                progress.note(&format!("no request timeline for this cell: {error}"));
            }
        }
        spec.record_windows = true;
    }
    // The floor's disk and network parts, probed under the load the cell runs in.
    let probes = if workload == Workload::Put && clients == 1 && system != System::Ceiling {
        let fdatasync = machine::fdatasync_latency(&options.data_dir, 300, 4096)?;
        // Every member's log is on this one disk: a put needs two of three members'
        // fdatasyncs, issued together.
        let members = run.processes.members.len();
        let quorum = machine::fdatasync_quorum_latency(
            &options.data_dir,
            300,
            members,
            members / 2 + 1,
            4096,
        )?;
        let loopback = machine::loopback_rtt(2000, 64)?;
        Some((fdatasync.p50_us, loopback.p50_us, quorum.p50_us))
    } else {
        None
    };
    let servers_before = run.processes.cpu_time();
    let client_before = machine::own_cpu_time().unwrap_or_default();
    let started = Instant::now();
    let result = run_load(&endpoints, &spec)
        .await
        .map_err(|error| error.context(format!("{} {}", system.name(), workload.name())))?;
    let wall = started.elapsed().as_secs_f64().max(1e-9);
    let servers = run.processes.cpu_time().saturating_sub(servers_before);
    let client = machine::own_cpu_time()
        .unwrap_or_default()
        .saturating_sub(client_before);
    let mut cell = Cell::of(system, workload, clients, &result);
    cell.placement = placement;
    cell.probe_fdatasync_p50_us = probes.map(|probes| probes.0);
    cell.probe_loopback_rtt_p50_us = probes.map(|probes| probes.1);
    cell.probe_quorum_fdatasync_p50_us = probes.map(|probes| probes.2);
    cell.server_cpu_percent = servers.as_secs_f64() / wall * 100.0;
    cell.client_cpu_percent = client.as_secs_f64() / wall * 100.0;
    progress.note(&format!(
        "{:<8} {:<17} {clients:>4} clients {:<8}: {:>8.0} ops/s  p50 {:>7} ms  p99 {:>7} ms  errors {}",
        system.name(),
        workload.name(),
        placement.name(),
        cell.ops_per_sec,
        crate::report::format_ms(cell.p50_us),
        crate::report::format_ms(cell.p99_us),
        cell.errors
    ));
    let breakdown = match (before, entry, leader) {
        (Some(before), Some(entry), Some(leader)) => {
            let after = scrape_all(run).await?;
            let followers: Vec<(Scrape, Scrape)> = (0..before.len())
                .filter(|index| *index != leader)
                .map(|index| (before[index].clone(), after[index].clone()))
                .collect();
            let breakdown = Breakdown::of(
                result.latency.mean_us,
                (&before[entry], &after[entry]),
                (&before[leader], &after[leader]),
                &followers,
                entry == leader,
            );
            Some(CellBreakdown {
                placement,
                clients,
                breakdown,
            })
        }
        _ => None,
    };
    let timeline = if timeline_wanted {
        let mut timelines = Vec::new();
        for member in &run.processes.members {
            match crate::timeline::fetch(&member.metrics_url, false).await {
                Ok(timeline) => timelines.push(timeline),
                Err(error) => progress.note(&format!("no request timeline for this cell: {error}")),
            }
        }
        let leader = leader.unwrap_or(0);
        let entry = entry.unwrap_or(leader);
        (timelines.len() == run.processes.members.len()).then(|| CellTimeline {
            system: system.name().to_string(),
            placement,
            timeline: crate::timeline::analyse(&result.windows, &timelines, leader, entry),
        })
    } else {
        None
    };
    Ok((cell, breakdown, timeline))
}

/// Every member's histograms, in member order.
async fn scrape_all(run: &Running) -> Result<Vec<Scrape>, BenchError> {
    let mut scrapes = Vec::new();
    for member in &run.processes.members {
        scrapes.push(breakdown::scrape(&member.metrics_url).await?);
    }
    Ok(scrapes)
}

#[cfg(test)]
mod placement_tests {
    use super::*;

    fn members() -> Vec<String> {
        vec!["a".to_string(), "b".to_string(), "c".to_string()]
    }

    #[test]
    fn balanced_starts_at_the_leader_and_keeps_every_member_in_order() {
        let balanced = Placement::Balanced;
        assert_eq!(balanced.endpoints(members(), Some(1)), ["b", "c", "a"]);
        assert_eq!(balanced.endpoints(members(), Some(0)), ["a", "b", "c"]);
        assert_eq!(balanced.endpoints(members(), None), ["a", "b", "c"]);
        assert_eq!(balanced.endpoints(members(), Some(7)), ["a", "b", "c"]);
    }

    #[test]
    fn pinned_placements_use_one_member_the_leader_or_the_one_after_it() {
        assert_eq!(Placement::Leader.endpoints(members(), Some(1)), ["b"]);
        assert_eq!(Placement::Follower.endpoints(members(), Some(1)), ["c"]);
        assert_eq!(Placement::Follower.endpoints(members(), Some(2)), ["a"]);
        // A single member is its own leader: no follower to pin to.
        assert_eq!(
            Placement::Follower.endpoints(vec!["only".to_string()], Some(0)),
            ["only"]
        );
        assert_eq!(
            placements_of(System::Ceiling, &Placement::ALL),
            [Placement::Balanced]
        );
        assert_eq!(placements_of(System::Synod, &Placement::ALL).len(), 3);
        assert_eq!(
            Placement::ALL.map(|placement| Placement::parse(placement.name())),
            Placement::ALL.map(Some)
        );
    }
}
