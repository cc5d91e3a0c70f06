//! Breadth-first search of a stateright [`Model`], level by level: every state within
//! `max_depth` actions of an initial state, each once, on several threads.
//!
//! stateright's own breadth-first checker shares work between threads without keeping
//! levels apart, so with a depth bound it may meet a state first on a long path, cut it
//! off there and never explore it from a shorter one; depth-first search with a visited
//! set has the same flaw. Here a level is finished before the next one starts, so a depth
//! bound explores exactly the states at distance `max_depth` or less. Results do not
//! depend on the thread count or schedule: among the states of a level with one
//! fingerprint the one kept is the first in (parent's position, action's position) order,
//! and so is each property's discovery. Paths are shortest paths, rebuilt from a
//! parent fingerprint per state.
//!
//! Memory: a parent link per state seen (about 40 bytes with the table's slack), plus the
//! states of the level being expanded and of the next one. States of the last level
//! (at `max_depth`) are checked and counted but not kept.

use crate::hashed::hash_of;
use stateright::{Expectation, Model, Property};
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts while the search runs.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// States generated (with repeats).
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// The level being generated.
    pub depth: usize,
    /// Since the start.
    pub elapsed: Duration,
}

/// What one search found.
pub struct Outcome<A> {
    /// States generated, with repeats (each transition inside the bounds counts one).
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// Distinct states first reached at each depth (index 0: the initial states).
    pub levels: Vec<usize>,
    /// True when no state is left unexplored: the last level had no new successor. False
    /// when the depth bound (or a failure, with `stop_at_failure`) cut the search.
    pub complete: bool,
    /// The search gave up when it passed the memory limit.
    pub out_of_memory: bool,
    /// Property name → a shortest path to its discovery (a counterexample for `always`,
    /// an example for `sometimes`): the initial state's position among
    /// `Model::init_states`, and the actions from there.
    pub discoveries: BTreeMap<&'static str, (usize, Vec<A>)>,
}

/// How to search.
#[derive(Clone, Copy, Debug)]
pub struct Search {
    /// Explore paths of at most this many actions.
    pub max_depth: Option<usize>,
    /// Worker threads.
    pub threads: usize,
    /// Stop after the level where some `always` property first failed.
    pub stop_at_failure: bool,
    /// Give up (the outcome says `out_of_memory`) when the process's resident memory
    /// passes this many MiB.
    pub memory_limit_mb: Option<u64>,
}

/// A fingerprint is already a hash: the tables use it as it is.
#[derive(Default)]
pub(crate) struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

pub(crate) type Table<V> = HashMap<u64, V, BuildHasherDefault<Identity>>;

/// How a state was first reached: its parent's fingerprint and the position of the action
/// among the parent's actions (`ROOT` for an initial state: the position among those).
#[derive(Clone, Copy)]
pub(crate) struct Link {
    pub(crate) parent: u64,
    pub(crate) action: u32,
    pub(crate) root: bool,
}

/// Where a state of the next level came from, to order the candidates of one fingerprint.
type Tag = (usize, u32);

struct Candidate<S> {
    tag: Tag,
    parent: u64,
    /// Properties whose discovery this state is (bit per property).
    found: u64,
    /// Kept only if the state will be expanded.
    state: Option<S>,
}

const SHARDS: usize = 64;

/// Runs the search; `progress` is called about every `interval`.
pub fn search<M>(
    model: &M,
    options: Search,
    interval: Duration,
    mut progress: impl FnMut(&Progress),
) -> Outcome<M::Action>
where
    M: Model + Sync,
    M::State: Hash + Clone + Send + Sync,
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
    let found_in = |state: &M::State| -> u64 { found_in(model, &properties, state) };
    let mut visited: Table<Link> = Table::default();
    let mut discovered: BTreeMap<usize, u64> = BTreeMap::new();
    let mut frontier: Vec<(u64, M::State)> = Vec::new();
    for (at, state) in model.init_states().into_iter().enumerate() {
        if !model.within_boundary(&state) {
            continue;
        }
        let fingerprint = hash_of(&state);
        if visited.contains_key(&fingerprint) {
            continue;
        }
        visited.insert(
            fingerprint,
            Link {
                parent: 0,
                action: at as u32,
                root: true,
            },
        );
        let bits = found_in(&state);
        note_discoveries(&mut discovered, bits, fingerprint);
        frontier.push((fingerprint, state));
    }
    let mut levels = vec![frontier.len()];
    let generated = AtomicUsize::new(0);
    let mut complete = true;
    let mut out_of_memory = false;
    let mut depth = 0;
    let mut last_report = Instant::now();
    let failed = |discovered: &BTreeMap<usize, u64>| {
        discovered
            .keys()
            .any(|at| properties[*at].expectation == Expectation::Always)
    };
    while !frontier.is_empty() {
        if options.max_depth.is_some_and(|max| depth >= max)
            || (options.stop_at_failure && failed(&discovered))
        {
            complete = false;
            break;
        }
        let keep_states = options.max_depth.is_none_or(|max| depth + 1 < max);
        let shards: Vec<Mutex<Table<Candidate<M::State>>>> =
            (0..SHARDS).map(|_| Mutex::new(Table::default())).collect();
        let cursor = AtomicUsize::new(0);
        let new_states = AtomicUsize::new(0);
        let working = AtomicUsize::new(options.threads);
        let abort = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..options.threads {
                scope.spawn(|| {
                    expand(
                        model,
                        &frontier,
                        &visited,
                        &shards,
                        &cursor,
                        &generated,
                        &new_states,
                        keep_states,
                        &found_in,
                        &abort,
                    );
                    working.fetch_sub(1, Ordering::Release);
                });
            }
            while working.load(Ordering::Acquire) > 0 {
                std::thread::sleep(Duration::from_millis(20));
                if let (Some(limit), Some(resident)) =
                    (options.memory_limit_mb, resident_memory_mb())
                {
                    if resident > limit {
                        abort.store(true, Ordering::Relaxed);
                    }
                }
                if last_report.elapsed() >= interval {
                    last_report = Instant::now();
                    progress(&Progress {
                        states: generated.load(Ordering::Relaxed),
                        unique_states: visited.len() + new_states.load(Ordering::Relaxed),
                        depth: depth + 1,
                        elapsed: started.elapsed(),
                    });
                }
            }
        });
        if abort.load(Ordering::Relaxed) {
            out_of_memory = true;
            complete = false;
            break;
        }
        // The next level, in (parent, action) order: the same whatever the threads did.
        let mut next: Vec<(Tag, u64, Option<M::State>)> = Vec::new();
        let mut level_found: BTreeMap<usize, (Tag, u64)> = BTreeMap::new();
        for shard in shards {
            let shard = shard.into_inner().expect("no worker panicked");
            for (fingerprint, candidate) in shard {
                visited.insert(
                    fingerprint,
                    Link {
                        parent: candidate.parent,
                        action: candidate.tag.1,
                        root: false,
                    },
                );
                let mut bits = candidate.found;
                while bits != 0 {
                    let at = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let best = level_found
                        .entry(at)
                        .or_insert((candidate.tag, fingerprint));
                    if candidate.tag < best.0 {
                        *best = (candidate.tag, fingerprint);
                    }
                }
                next.push((candidate.tag, fingerprint, candidate.state));
            }
        }
        for (at, (_, fingerprint)) in level_found {
            discovered.entry(at).or_insert(fingerprint);
        }
        next.sort_unstable_by_key(|(tag, _, _)| *tag);
        levels.push(next.len());
        frontier = next
            .into_iter()
            .filter_map(|(_, fingerprint, state)| state.map(|state| (fingerprint, state)))
            .collect();
        depth += 1;
        if !keep_states && levels.last().is_some_and(|n| *n > 0) {
            complete = false;
        }
    }
    if levels.last() == Some(&0) {
        levels.pop();
    }
    let discoveries = discovered
        .into_iter()
        .map(|(at, fingerprint)| {
            let path = path_to(model, |at| visited[&at], fingerprint);
            (properties[at].name, path)
        })
        .collect();
    Outcome {
        states: generated.load(Ordering::Relaxed),
        unique_states: visited.len(),
        levels,
        complete,
        out_of_memory,
        discoveries,
    }
}

/// The properties `state` is a discovery for, a bit each: a counterexample of an
/// `always` property, an example of a `sometimes` one.
pub(crate) fn found_in<M: Model>(model: &M, properties: &[Property<M>], state: &M::State) -> u64 {
    let mut bits = 0;
    for (at, property) in properties.iter().enumerate() {
        let holds = (property.condition)(model, state);
        let discovery = match property.expectation {
            Expectation::Sometimes => holds,
            _ => !holds,
        };
        if discovery {
            bits |= 1 << at;
        }
    }
    bits
}

/// The process's resident memory (Linux `VmRSS`), in MiB.
pub fn resident_memory_mb() -> Option<u64> {
    proc_status_mb("VmRSS:")
}

/// The process's peak resident memory (Linux `VmHWM`), in MiB.
pub fn peak_memory_mb() -> Option<u64> {
    proc_status_mb("VmHWM:")
}

fn proc_status_mb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn note_discoveries(discovered: &mut BTreeMap<usize, u64>, mut bits: u64, fingerprint: u64) {
    while bits != 0 {
        let at = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        discovered.entry(at).or_insert(fingerprint);
    }
}

/// One worker: takes chunks of the frontier and generates their successors.
#[allow(clippy::too_many_arguments)]
fn expand<M>(
    model: &M,
    frontier: &[(u64, M::State)],
    visited: &Table<Link>,
    shards: &[Mutex<Table<Candidate<M::State>>>],
    cursor: &AtomicUsize,
    generated: &AtomicUsize,
    new_states: &AtomicUsize,
    keep_states: bool,
    found_in: &(impl Fn(&M::State) -> u64 + Sync),
    abort: &AtomicBool,
) where
    M: Model,
    M::State: Hash,
{
    const CHUNK: usize = 64;
    let mut actions = Vec::new();
    loop {
        let first = cursor.fetch_add(CHUNK, Ordering::Relaxed);
        if first >= frontier.len() || abort.load(Ordering::Relaxed) {
            return;
        }
        let mut count = 0;
        for (position, (parent, state)) in frontier.iter().enumerate().skip(first).take(CHUNK) {
            model.actions(state, &mut actions);
            for (action_at, action) in actions.drain(..).enumerate() {
                let Some(next) = model.next_state(state, action) else {
                    continue;
                };
                if !model.within_boundary(&next) {
                    continue;
                }
                count += 1;
                let fingerprint = hash_of(&next);
                if visited.contains_key(&fingerprint) {
                    continue;
                }
                let tag = (position, action_at as u32);
                let mut shard = shards[(fingerprint % SHARDS as u64) as usize]
                    .lock()
                    .expect("no worker panicked");
                match shard.get_mut(&fingerprint) {
                    Some(candidate) => {
                        if tag < candidate.tag {
                            candidate.tag = tag;
                            candidate.parent = *parent;
                            if keep_states {
                                candidate.state = Some(next);
                            }
                        }
                    }
                    None => {
                        drop(shard);
                        let found = found_in(&next);
                        new_states.fetch_add(1, Ordering::Relaxed);
                        let candidate = Candidate {
                            tag,
                            parent: *parent,
                            found,
                            state: keep_states.then_some(next),
                        };
                        let mut shard = shards[(fingerprint % SHARDS as u64) as usize]
                            .lock()
                            .expect("no worker panicked");
                        match shard.get_mut(&fingerprint) {
                            Some(other) if other.tag < candidate.tag => {}
                            _ => {
                                shard.insert(fingerprint, candidate);
                            }
                        }
                    }
                }
            }
        }
        generated.fetch_add(count, Ordering::Relaxed);
    }
}

/// The initial state and the actions from it to the state with `fingerprint`, replayed
/// through the parent links.
pub(crate) fn path_to<M>(
    model: &M,
    link_of: impl Fn(u64) -> Link,
    fingerprint: u64,
) -> (usize, Vec<M::Action>)
where
    M: Model,
    M::State: Hash,
    M::Action: Clone,
{
    let mut chain = Vec::new();
    let mut at = fingerprint;
    let root = loop {
        let link = link_of(at);
        if link.root {
            break link.action as usize;
        }
        chain.push(link.action as usize);
        at = link.parent;
    };
    chain.reverse();
    let mut state = model.init_states().swap_remove(root);
    let mut path = Vec::with_capacity(chain.len());
    let mut actions = Vec::new();
    for action_at in chain {
        actions.clear();
        model.actions(&state, &mut actions);
        let action = actions[action_at].clone();
        state = model
            .next_state(&state, action.clone())
            .expect("the path was explored");
        path.push(action);
    }
    debug_assert_eq!(hash_of(&state), fingerprint);
    (root, path)
}
