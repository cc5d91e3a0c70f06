//! Runs the checker and summarises what it found.

use crate::bfs::{self, Progress, Search};
use crate::cluster::Action;
use crate::model::SynodModel;
use crate::options::ModelOptions;
use serde::Serialize;
use stateright::{Expectation, Model};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The outcome of one run: the JSON line `synod model-check` prints last.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// States generated (with repeats).
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// The deepest level explored: every state within this many actions of the initial
    /// state was explored.
    pub depth: usize,
    /// `always` properties with a counterexample.
    pub violations: usize,
    /// name → "holds" | "counterexample" | "reached" | "unreached" (and "unchecked" for
    /// the `always` properties a mutant run stopped before exploring everything for).
    pub properties: BTreeMap<&'static str, &'static str>,
    /// name → actions in a shortest counterexample (or a shortest path that reached the
    /// property).
    pub path_lengths: BTreeMap<&'static str, usize>,
    /// True when every state within the bounds other than the depth was explored; false
    /// when the depth bound (or, for a mutant, its first counterexample) cut the search.
    pub complete: bool,
    /// Distinct states first reached at each depth.
    pub levels: Vec<usize>,
    /// Wall time.
    pub seconds: f64,
    /// Peak resident memory of the process, MiB (Linux).
    pub peak_memory_mb: Option<u64>,
    /// The search gave up at `--memory-limit-mb`.
    pub out_of_memory: bool,
    /// The bounds and timing this run used.
    pub options: ModelOptions,
}

impl Report {
    /// Every `always` property holds and every `sometimes` one was reached.
    pub fn passed(&self) -> bool {
        self.properties
            .values()
            .all(|verdict| matches!(*verdict, "holds" | "reached"))
    }
}

/// A discovery: a counterexample for an `always` property, an example for a `sometimes` one.
pub struct Discovery {
    /// The property.
    pub property: &'static str,
    /// True for a counterexample.
    pub failure: bool,
    /// The initial state the path starts from (see [`crate::cluster::placements`]).
    pub initial: usize,
    /// The actions of a shortest path from the initial state.
    pub actions: Vec<Action>,
}

/// Explores the model for `options` breadth-first (see [`bfs`]); `progress` is called
/// about every `interval`. A run with a mutant stops after the level of its first
/// counterexample (that is all it has to show).
pub fn check(
    options: &ModelOptions,
    interval: Duration,
    progress: impl FnMut(&Progress),
) -> (Report, Vec<Discovery>) {
    let started = Instant::now();
    let model = SynodModel::new(options.clone());
    let properties = model.properties();
    let search = Search {
        max_depth: options.depth,
        threads: options.threads,
        stop_at_failure: options.mutant.is_some(),
        memory_limit_mb: options.memory_limit_mb,
    };
    let outcome = if options.depth_first {
        crate::dfs::search(&model, search, interval, progress)
    } else {
        bfs::search(&model, search, interval, progress)
    };
    let mut verdicts = BTreeMap::new();
    let mut path_lengths = BTreeMap::new();
    let mut found = Vec::new();
    let stopped_early = options.mutant.is_some();
    for property in &properties {
        let failure = property.expectation.discovery_is_failure();
        let path = outcome.discoveries.get(property.name);
        let verdict = match (&property.expectation, path.is_some()) {
            (Expectation::Sometimes, true) => "reached",
            (Expectation::Sometimes, false) if stopped_early => "unchecked",
            (Expectation::Sometimes, false) => "unreached",
            (_, true) => "counterexample",
            (_, false) if stopped_early && !outcome.complete => "unchecked",
            (_, false) => "holds",
        };
        verdicts.insert(property.name, verdict);
        if let Some((initial, actions)) = path {
            path_lengths.insert(property.name, actions.len());
            found.push(Discovery {
                property: property.name,
                failure,
                initial: *initial,
                actions: actions.clone(),
            });
        }
    }
    let violations = found.iter().filter(|d| d.failure).count();
    let report = Report {
        states: outcome.states,
        unique_states: outcome.unique_states,
        depth: outcome.levels.len().saturating_sub(1),
        violations,
        properties: verdicts,
        path_lengths,
        complete: outcome.complete,
        levels: outcome.levels,
        seconds: started.elapsed().as_secs_f64(),
        peak_memory_mb: bfs::peak_memory_mb(),
        out_of_memory: outcome.out_of_memory,
        options: options.clone(),
    };
    (report, found)
}

/// The outcome of a suite of configurations (the default `synod model-check`): the
/// figures summed, each property's verdict over all of them, and each configuration's
/// own report.
#[derive(Clone, Debug, Serialize)]
pub struct SuiteReport {
    /// States generated, with repeats, in all.
    pub states: usize,
    /// Distinct states, summed over the configurations.
    pub unique_states: usize,
    /// The deepest level any configuration explored.
    pub depth: usize,
    /// `always` properties with a counterexample in some configuration.
    pub violations: usize,
    /// name → "counterexample" if any configuration found one, "reached" if any reached
    /// it; otherwise "holds" / "unreached" (or "unchecked" where a mutant run stopped).
    pub properties: BTreeMap<&'static str, &'static str>,
    /// name → the shortest path any configuration found to it.
    pub path_lengths: BTreeMap<&'static str, usize>,
    /// Every configuration that ran was explored completely.
    pub complete: bool,
    /// Wall time.
    pub seconds: f64,
    /// Peak resident memory of the process, MiB (Linux).
    pub peak_memory_mb: Option<u64>,
    /// The configurations, in the order they ran (a mutant run stops after the first
    /// counterexample).
    pub configurations: Vec<NamedReport>,
}

/// One configuration's report, with its name.
#[derive(Clone, Debug, Serialize)]
pub struct NamedReport {
    /// The configuration's name (see [`crate::options::default_suite`]).
    pub name: &'static str,
    /// Its report.
    #[serde(flatten)]
    pub report: Report,
}

impl SuiteReport {
    /// Every `always` property holds and every `sometimes` one was reached.
    pub fn passed(&self) -> bool {
        self.properties
            .values()
            .all(|verdict| matches!(*verdict, "holds" | "reached"))
    }
}

/// Runs each configuration of `suite` in turn (with `mutant`, if any: then the suite stops
/// at the first configuration that yields a counterexample). Returns the summary and each
/// discovery with the name and options of the configuration that made it.
pub fn check_suite(
    suite: &[(&'static str, ModelOptions)],
    interval: Duration,
    mut progress: impl FnMut(&'static str, &Progress),
) -> (SuiteReport, Vec<(&'static str, ModelOptions, Discovery)>) {
    let started = Instant::now();
    let mut configurations = Vec::new();
    let mut found = Vec::new();
    for (name, options) in suite {
        let (report, discoveries) = check(options, interval, |p| progress(name, p));
        let failed = report.violations > 0;
        found.extend(
            discoveries
                .into_iter()
                .map(|discovery| (*name, options.clone(), discovery)),
        );
        configurations.push(NamedReport { name, report });
        if failed && options.mutant.is_some() {
            break;
        }
    }
    let mut properties: BTreeMap<&'static str, &'static str> = BTreeMap::new();
    let mut path_lengths: BTreeMap<&'static str, usize> = BTreeMap::new();
    let rank = |verdict: &str| match verdict {
        "counterexample" | "reached" => 3,
        "unchecked" => 2,
        _ => 1,
    };
    for named in &configurations {
        for (property, verdict) in &named.report.properties {
            let entry = properties.entry(property).or_insert(verdict);
            if rank(verdict) > rank(entry) {
                *entry = verdict;
            }
        }
        for (property, length) in &named.report.path_lengths {
            let entry = path_lengths.entry(property).or_insert(*length);
            *entry = (*entry).min(*length);
        }
    }
    let sum = |field: fn(&Report) -> usize| configurations.iter().map(|c| field(&c.report)).sum();
    let report = SuiteReport {
        states: sum(|r| r.states),
        unique_states: sum(|r| r.unique_states),
        depth: configurations
            .iter()
            .map(|c| c.report.depth)
            .max()
            .unwrap_or(0),
        violations: properties
            .values()
            .filter(|v| **v == "counterexample")
            .count(),
        properties,
        path_lengths,
        complete: configurations.iter().all(|c| c.report.complete),
        seconds: started.elapsed().as_secs_f64(),
        peak_memory_mb: bfs::peak_memory_mb(),
        configurations,
    };
    (report, found)
}
