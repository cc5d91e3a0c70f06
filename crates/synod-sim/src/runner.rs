//! Many seeds: what `synod sim --seeds N` and the test suite run, on several threads.

use crate::checks::Violation;
use crate::cluster::{Coverage, SimOptions, SimReport, Simulation};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How a batch of seeds is run.
#[derive(Clone, Debug, Default)]
pub struct RunSettings {
    /// Override every seed's simulated clock drift bound (percent); the nodes still
    /// assume their configured bound, so a value far above it must produce stale reads.
    pub clock_drift_percent: Option<u64>,
    /// Override every seed's read mode (the swarm draws one per seed).
    pub read_mode: Option<synod_core::ReadMode>,
    /// Record the event trace.
    pub trace: bool,
}

/// The run a seed stands for: every parameter drawn from the seed (swarm testing).
pub fn options_for_seed(seed: u64, settings: &RunSettings) -> SimOptions {
    let mut options = SimOptions::swarm(seed);
    if let Some(percent) = settings.clock_drift_percent {
        options.faults.clock_drift_percent = percent;
    }
    if let Some(mode) = settings.read_mode {
        options.read_mode = mode;
    }
    options.trace = settings.trace;
    options
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub seeds: u64,
    pub violations: u64,
    pub committed: u64,
    pub commands: u64,
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub ops_indefinite: u64,
    pub messages: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub phase1_runs: u64,
    pub coverage: Coverage,
    pub failing_seeds: Vec<u64>,
    /// Seeds where a returning node deposed a leader a quorum still followed
    /// (`coverage.leader_changes_after_heal`): replay one with `--seed S --trace`.
    pub disrupted_seeds: Vec<u64>,
}

impl Summary {
    pub fn add(&mut self, report: &SimReport) {
        self.seeds += 1;
        self.violations += report.violations.len() as u64;
        self.committed += report.committed;
        self.commands += report.commands;
        self.ops_ok += report.ops_ok;
        self.ops_failed += report.ops_failed;
        self.ops_indefinite += report.ops_indefinite;
        self.messages += report.messages;
        self.crashes += report.crashes;
        self.partitions += report.partitions;
        self.phase1_runs += report.phase1_runs;
        self.coverage.add(&report.coverage);
        if !report.violations.is_empty() {
            self.failing_seeds.push(report.seed);
            self.failing_seeds.sort_unstable();
        }
        if report.coverage.leader_changes_after_heal > 0 {
            self.disrupted_seeds.push(report.seed);
            self.disrupted_seeds.sort_unstable();
        }
    }
}

/// Runs one seed. A panic — the core asserting one of its invariants — is a violation
/// of that seed, not the end of the whole batch.
pub fn run_seed(seed: u64, settings: &RunSettings) -> SimReport {
    run_options(options_for_seed(seed, settings))
}

/// Runs one configured simulation, catching panics as violations.
pub fn run_options(options: SimOptions) -> SimReport {
    let seed = options.seed;
    match std::panic::catch_unwind(|| Simulation::new(options).run()) {
        Ok(report) => report,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            SimReport {
                seed,
                violations: vec![Violation::Panic(message)],
                ..SimReport::default()
            }
        }
    }
}

/// Runs `count` seeds from `first` on `jobs` threads, calling `each` (from any thread,
/// one call at a time) after every run. The summary does not depend on `jobs`.
pub fn run_seeds(
    first: u64,
    count: u64,
    jobs: usize,
    settings: &RunSettings,
    each: impl FnMut(&SimReport) + Send,
) -> Summary {
    let next = AtomicU64::new(first);
    let shared = Mutex::new((Summary::default(), each));
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count {
                    return;
                }
                let report = run_seed(seed, settings);
                let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
                let (summary, each) = &mut *guard;
                each(&report);
                summary.add(&report);
            });
        }
    });
    shared.into_inner().unwrap_or_else(|p| p.into_inner()).0
}

/// A human-readable account of one failing run.
pub fn describe(report: &SimReport) -> String {
    let mut out = format!(
        "seed {} failed ({} violations; replay: synod sim --seed {}):\n",
        report.seed,
        report.violations.len(),
        report.seed
    );
    for violation in report.violations.iter().take(10) {
        let line = match violation {
            Violation::NotLinearizable(text)
            | Violation::Liveness(text)
            | Violation::Panic(text) => text.clone(),
            other => format!("{other:?}"),
        };
        out.push_str(&format!("  - {line}\n"));
    }
    out
}
