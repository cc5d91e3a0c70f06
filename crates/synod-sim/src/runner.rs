//! Many seeds: what `synod sim --seeds N` and the test suite run.

use crate::checks::Violation;
use crate::cluster::{SimOptions, SimReport, Simulation};
use serde::Serialize;
use synod_core::Mode;

/// The run a seed stands for. Seeds cycle through the shapes of cluster under test, so
/// any range of seeds covers all of them.
pub fn options_for_seed(seed: u64) -> SimOptions {
    let mut options = SimOptions::chaos(seed);
    match seed % 4 {
        0 | 1 => {}
        2 => {
            options.nodes = 5;
            options.clients = 5;
        }
        _ => {
            options.mode = Mode::PerSlot;
            options.max_batch_commands = 8;
        }
    }
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
    pub failing_seeds: Vec<u64>,
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
        if !report.violations.is_empty() {
            self.failing_seeds.push(report.seed);
        }
    }
}

/// Runs one seed. A panic — the core asserting one of its invariants — is a violation
/// of that seed, not the end of the whole batch.
pub fn run_seed(seed: u64) -> SimReport {
    let options = options_for_seed(seed);
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

/// Runs `count` seeds from `first`, calling `each` after every run.
pub fn run_seeds(first: u64, count: u64, mut each: impl FnMut(&SimReport)) -> Summary {
    let mut summary = Summary::default();
    for seed in first..first + count {
        let report = run_seed(seed);
        each(&report);
        summary.add(&report);
    }
    summary
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
