//! Depth-first search with a depth bound, for the configurations whose counterexamples
//! are deep and narrow: every state within `max_depth` actions of an initial state, each
//! counted once, on one thread.
//!
//! Breadth-first search keeps two whole levels of states in memory, a few KB each; at the
//! depths these configurations need (about 20 actions) a level alone passes the memory
//! limit. Here only the states on the current path are kept, and each state seen is a
//! fingerprint with the depth it was reached at and a parent link (about 40 bytes).
//!
//! A depth bound cuts depth-first search wrongly if a state first met on a long path is
//! not explored again when met on a shorter one (see [`crate::bfs`]); here a state met
//! at a smaller depth than recorded is recorded again, with the new parent, and explored
//! again. At the end each state holds its distance from the initial states and a parent
//! one step closer, so the states counted are exactly those of breadth-first search with
//! the same bound, and each discovery's path, rebuilt through the links, is a shortest
//! one. A run that stops at a failure lowers the bound below the failure's depth and
//! finishes: what is left of the search can only find shorter counterexamples.

use crate::bfs::{found_in, path_to, resident_memory_mb, Link, Outcome, Progress, Search, Table};
use crate::hashed::hash_of;
use stateright::{Expectation, Model};
use std::collections::BTreeMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A state seen: its distance from the initial states and how it was reached.
#[derive(Clone, Copy)]
struct Seen {
    depth: u32,
    link: Link,
}

/// A state on the current path and the actions not yet taken from it.
struct Frame<S, A> {
    fingerprint: u64,
    depth: u32,
    state: S,
    actions: Vec<A>,
    next: usize,
}

/// Runs the search on one thread (`options.threads` is ignored); `progress` is called
/// about every `interval`.
pub fn search<M>(
    model: &M,
    options: Search,
    interval: Duration,
    mut progress: impl FnMut(&Progress),
) -> Outcome<M::Action>
where
    M: Model,
    M::State: Hash + Clone,
    M::Action: Clone,
{
    let started = Instant::now();
    let properties = model.properties();
    assert!(properties.len() <= 64, "at most 64 properties");
    assert!(
        properties
            .iter()
            .all(|p| p.expectation != Expectation::Eventually),
        "`eventually` properties are not supported"
    );
    let always: u64 = properties
        .iter()
        .enumerate()
        .filter(|(_, p)| p.expectation == Expectation::Always)
        .fold(0, |bits, (at, _)| bits | 1 << at);
    let mut bound = options.max_depth.map_or(u32::MAX, |d| d as u32);
    let mut seen: Table<Seen> = Table::default();
    // Property → (depth, fingerprint) of the shallowest discovery.
    let mut discovered: BTreeMap<usize, (u32, u64)> = BTreeMap::new();
    let note = |discovered: &mut BTreeMap<usize, (u32, u64)>, mut bits: u64, at: (u32, u64)| {
        while bits != 0 {
            let property = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let best = discovered.entry(property).or_insert(at);
            if at.0 < best.0 {
                *best = at;
            }
        }
    };
    let mut generated = 0usize;
    let mut cut = false;
    let mut out_of_memory = false;
    let mut last_report = Instant::now();
    let mut stack: Vec<Frame<M::State, M::Action>> = Vec::new();
    let mut pending: Vec<(u64, M::State)> = Vec::new();
    for (at, state) in model.init_states().into_iter().enumerate() {
        if !model.within_boundary(&state) {
            continue;
        }
        let fingerprint = hash_of(&state);
        if seen.contains_key(&fingerprint) {
            continue;
        }
        let link = Link {
            parent: 0,
            action: at as u32,
            root: true,
        };
        seen.insert(fingerprint, Seen { depth: 0, link });
        note(
            &mut discovered,
            found_in(model, &properties, &state),
            (0, fingerprint),
        );
        pending.push((fingerprint, state));
    }
    // The initial states are explored in order, each to the bottom.
    pending.reverse();
    'search: loop {
        if stack.is_empty() {
            let Some((fingerprint, state)) = pending.pop() else {
                break;
            };
            push(model, &mut stack, fingerprint, 0, state, bound, &mut cut);
            continue;
        }
        let frame = stack.last_mut().expect("not empty");
        if frame.next == frame.actions.len() || frame.depth >= bound {
            stack.pop();
            continue;
        }
        let action_at = frame.next;
        frame.next += 1;
        let action = frame.actions[action_at].clone();
        let Some(next) = model.next_state(&frame.state, action) else {
            continue;
        };
        if !model.within_boundary(&next) {
            continue;
        }
        generated += 1;
        let (parent, depth) = (frame.fingerprint, frame.depth + 1);
        let fingerprint = hash_of(&next);
        if seen.get(&fingerprint).is_some_and(|s| s.depth <= depth) {
            continue;
        }
        let link = Link {
            parent,
            action: action_at as u32,
            root: false,
        };
        seen.insert(fingerprint, Seen { depth, link });
        let bits = found_in(model, &properties, &next);
        note(&mut discovered, bits, (depth, fingerprint));
        if options.stop_at_failure && bits & always != 0 && depth <= bound {
            // Only a shorter counterexample is left to find.
            bound = depth - 1;
            cut = true;
        }
        push(model, &mut stack, fingerprint, depth, next, bound, &mut cut);
        if generated.is_multiple_of(4096) {
            if let (Some(limit), Some(resident)) = (options.memory_limit_mb, resident_memory_mb()) {
                if resident > limit {
                    out_of_memory = true;
                    break 'search;
                }
            }
            if last_report.elapsed() >= interval {
                last_report = Instant::now();
                progress(&Progress {
                    states: generated,
                    unique_states: seen.len(),
                    depth: stack.len(),
                    elapsed: started.elapsed(),
                });
            }
        }
    }
    let mut levels = Vec::new();
    for entry in seen.values() {
        let depth = entry.depth as usize;
        if levels.len() <= depth {
            levels.resize(depth + 1, 0);
        }
        levels[depth] += 1;
    }
    let discoveries = discovered
        .into_iter()
        .map(|(at, (_, fingerprint))| {
            let path = path_to(model, |at| seen[&at].link, fingerprint);
            (properties[at].name, path)
        })
        .collect();
    Outcome {
        states: generated,
        unique_states: seen.len(),
        levels,
        complete: !cut && !out_of_memory,
        out_of_memory,
        discoveries,
    }
}

/// Pushes a state to explore, unless it lies at the bound (then the search is cut, if
/// it has any action) or a property already failed in it.
fn push<M: Model>(
    model: &M,
    stack: &mut Vec<Frame<M::State, M::Action>>,
    fingerprint: u64,
    depth: u32,
    state: M::State,
    bound: u32,
    cut: &mut bool,
) {
    let mut actions = Vec::new();
    model.actions(&state, &mut actions);
    if actions.is_empty() {
        return;
    }
    if depth >= bound {
        *cut = true;
        return;
    }
    stack.push(Frame {
        fingerprint,
        depth,
        state,
        actions,
        next: 0,
    });
}
