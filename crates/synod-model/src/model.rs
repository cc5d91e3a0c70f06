//! The stateright `Model`: initial state, enabled actions, transitions, bounds.
//!
//! A core assertion (a chosen slot changing, the promise moving back, …) panics inside
//! `synod-core`. The transition catches it, silently, and records it as a failure of
//! "core invariants hold": the path to it is a counterexample like any other.

use crate::cluster::{Action, Cluster};
use crate::mutant::Mutant;
use crate::options::ModelOptions;
use crate::properties;
use stateright::{Model, Property};
use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use synod_core::{Config, DurableState, Node, NodeId};

/// Exhaustive exploration of a small Synod cluster.
pub struct SynodModel {
    /// The bounds.
    pub options: ModelOptions,
    configs: Vec<Config>,
}

impl SynodModel {
    /// A model for `options` (call [`ModelOptions::validate`] first).
    pub fn new(options: ModelOptions) -> SynodModel {
        let configs = options
            .node_ids()
            .into_iter()
            .map(|id| options.config(id))
            .collect();
        SynodModel { options, configs }
    }

    /// Node `id` started (or restarted) from `durable`, running the selected mutant.
    pub fn boot(&self, id: NodeId, durable: DurableState) -> Node {
        let config = self.configs[id as usize - 1].clone();
        #[allow(unused_mut)]
        let mut node = Node::recover(config, durable).expect("the options were validated");
        #[cfg(feature = "mutants")]
        node.set_mutant(self.options.mutant.and_then(Mutant::core));
        node
    }

    /// Whether the harness runs the runtime bug `stale-lease-clock`.
    pub fn stale_clock(&self) -> bool {
        self.options.mutant == Some(Mutant::StaleLeaseClock)
    }
}

impl Model for SynodModel {
    type State = Cluster;
    type Action = Action;

    fn init_states(&self) -> Vec<Cluster> {
        Cluster::initial(self)
    }

    fn actions(&self, state: &Cluster, actions: &mut Vec<Action>) {
        state.actions(self, actions);
    }

    fn next_state(&self, last: &Cluster, action: Action) -> Option<Cluster> {
        let mut next = last.clone();
        match quietly(|| next.apply(self, &action)) {
            Ok(()) => Some(next),
            Err(message) => {
                let mut failed = last.clone();
                failed.happened = 0;
                failed.set_violation(properties::CORE_INVARIANTS, message);
                Some(failed)
            }
        }
    }

    fn format_action(&self, action: &Action) -> String {
        format!("{action:?}")
    }

    fn format_step(&self, last: &Cluster, action: Action) -> Option<String> {
        Some(crate::trace::describe_action(last, &action))
    }

    fn properties(&self) -> Vec<Property<Self>> {
        properties::all()
    }

    fn within_boundary(&self, state: &Cluster) -> bool {
        state.within_bounds(self)
    }
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work`, turning a panic into its message without printing it: a mutant makes the
/// core panic thousands of times.
fn quietly(work: impl FnOnce()) -> Result<(), String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|quiet| quiet.set(true));
    let result = panic::catch_unwind(AssertUnwindSafe(work));
    QUIET.with(|quiet| quiet.set(false));
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".to_string())
    })
}
