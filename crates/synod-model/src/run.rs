//! Runs the checker and summarises what it found.

use crate::cluster::Action;
use crate::model::SynodModel;
use crate::options::ModelOptions;
use serde::Serialize;
use stateright::{Checker, Expectation, HasDiscoveries, Model, Property};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Counts while the checker runs.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// States generated (with repeats).
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// The deepest path explored.
    pub depth: usize,
    /// Since the start.
    pub elapsed: Duration,
}

/// The outcome of one run: the JSON line `synod model-check` prints last.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// States generated (with repeats).
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// The deepest path explored.
    pub depth: usize,
    /// `always` properties with a counterexample.
    pub violations: usize,
    /// name → "holds" | "counterexample" | "reached" | "unreached" (and "unchecked" for
    /// the `always` properties a mutant run stopped before exploring everything for).
    pub properties: BTreeMap<&'static str, &'static str>,
    /// name → actions in the counterexample (or in the path that reached the property),
    /// after shortening (see [`shorten`]).
    pub path_lengths: BTreeMap<&'static str, usize>,
    /// Whether every state within the bounds was explored.
    pub complete: bool,
    /// Wall time.
    pub seconds: f64,
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
    /// The actions from the initial state, shortened (see [`shorten`]).
    pub actions: Vec<Action>,
    /// How many actions the search's own path had.
    pub found_length: usize,
}

/// Explores the model for `options`; `progress` is called about every `interval`. A run
/// with a mutant stops at its first counterexample (that is all it has to show).
pub fn check(
    options: &ModelOptions,
    interval: Duration,
    mut progress: impl FnMut(&Progress),
) -> (Report, Vec<Discovery>) {
    let started = Instant::now();
    let model = SynodModel::new(options.clone());
    let properties = model.properties();
    let mut builder = SynodModel::new(options.clone())
        .checker()
        .threads(options.threads);
    if let Some(depth) = options.depth {
        builder = builder.target_max_depth(depth);
    }
    if options.mutant.is_some() {
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
    }
    // Depth-first: the memory it needs grows with the depth, not with the state space
    // (breadth-first keeps a frontier of whole states, gigabytes at these sizes). Its
    // paths are long; `shorten` makes them readable.
    let checker = builder.spawn_dfs();
    let snapshot = |checker: &dyn CountingChecker| Progress {
        states: checker.states(),
        unique_states: checker.unique(),
        depth: checker.depth(),
        elapsed: started.elapsed(),
    };
    let mut last = Instant::now();
    while !checker.is_done() {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= interval {
            last = Instant::now();
            progress(&snapshot(&checker));
        }
    }
    let checker = checker.join();
    let discoveries = checker.discoveries();
    let done = snapshot(&checker);
    let mut verdicts = BTreeMap::new();
    let mut path_lengths = BTreeMap::new();
    let mut found = Vec::new();
    let stopped_early = options.mutant.is_some();
    for property in &properties {
        let failure = property.expectation.discovery_is_failure();
        let path = discoveries.get(property.name);
        let verdict = match (&property.expectation, path.is_some()) {
            (Expectation::Sometimes, true) => "reached",
            (Expectation::Sometimes, false) => "unreached",
            (_, true) => "counterexample",
            (_, false) if stopped_early => "unchecked",
            (_, false) => "holds",
        };
        verdicts.insert(property.name, verdict);
        if let Some(path) = path {
            let found_length = path.clone().into_actions().len();
            let actions = shorten(&model, property, path.clone().into_actions());
            path_lengths.insert(property.name, actions.len());
            found.push(Discovery {
                property: property.name,
                failure,
                actions,
                found_length,
            });
        }
    }
    let violations = found.iter().filter(|d| d.failure).count();
    let report = Report {
        states: done.states,
        unique_states: done.unique_states,
        depth: done.depth,
        violations,
        properties: verdicts,
        path_lengths,
        complete: !(stopped_early && violations > 0),
        seconds: started.elapsed().as_secs_f64(),
        options: options.clone(),
    };
    (report, found)
}

/// The counters of a running checker, behind one object-safe trait.
trait CountingChecker {
    fn states(&self) -> usize;
    fn unique(&self) -> usize;
    fn depth(&self) -> usize;
}

impl<C: Checker<SynodModel>> CountingChecker for C {
    fn states(&self) -> usize {
        self.state_count()
    }
    fn unique(&self) -> usize {
        self.unique_state_count()
    }
    fn depth(&self) -> usize {
        self.max_depth()
    }
}

/// Shortens a path to `property`'s discovery: drops one action at a time, from the end,
/// keeping the drop whenever the remaining actions (those still enabled when their turn
/// comes) still reach the discovery, until no single action can go. Depth-first search
/// finds long paths; what is left is a trace a person can follow.
pub fn shorten(
    model: &SynodModel,
    property: &Property<SynodModel>,
    actions: Vec<Action>,
) -> Vec<Action> {
    let mut best = replay(model, property, &actions).unwrap_or(actions);
    loop {
        let mut shorter = false;
        let mut at = best.len();
        while at > 0 {
            at -= 1;
            let mut candidate = best.clone();
            candidate.remove(at);
            if let Some(taken) = replay(model, property, &candidate) {
                if taken.len() < best.len() {
                    best = taken;
                    shorter = true;
                    at = at.min(best.len());
                }
            }
        }
        if !shorter {
            return best;
        }
    }
}

/// Replays `actions` from the initial state, skipping those not enabled when their turn
/// comes; returns the actions taken up to the first state that shows `property`'s
/// discovery (a violation, or the sometimes-condition), if one does.
fn replay(
    model: &SynodModel,
    property: &Property<SynodModel>,
    actions: &[Action],
) -> Option<Vec<Action>> {
    let discovered = |state: &crate::cluster::Cluster| {
        let condition = (property.condition)(model, state);
        match property.expectation {
            Expectation::Sometimes => condition,
            _ => !condition,
        }
    };
    let mut state = model.init_states().remove(0);
    let mut taken = Vec::new();
    let mut enabled = Vec::new();
    for action in actions {
        enabled.clear();
        model.actions(&state, &mut enabled);
        if !enabled.contains(action) {
            continue;
        }
        let next = model.next_state(&state, action.clone())?;
        if !model.within_boundary(&next) {
            continue;
        }
        state = next;
        taken.push(action.clone());
        if discovered(&state) {
            return Some(taken);
        }
    }
    None
}
