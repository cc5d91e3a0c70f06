//! Linearizability checking of client histories against a sequential specification.
//!
//! The checker is the Wing & Gong search with the improvements of Lowe ("Testing for
//! linearizability", 2017) as implemented in Porcupine:
//!
//! 1. Every operation contributes a *call* event and, if it completed, a *return* event. The
//!    events are sorted by time (calls before returns at equal times, because `A` precedes `B`
//!    only if `A` returned *strictly* before `B` was called) and kept in a doubly linked list.
//! 2. The search walks the list from the front. Every call event met before the first return
//!    event belongs to an operation that may be linearized next; the checker applies it to the
//!    model ([`Model::step`]) and, if the model accepts the recorded result, *lifts* the
//!    operation out of the list (dancing links, so undoing is O(1)) and starts again from the
//!    front. Reaching a return event means the operation it belongs to cannot be postponed any
//!    further and every candidate before it failed: the search backtracks to the most recent
//!    choice, using an explicit stack, so history length never threatens the thread stack.
//! 3. Memoization: a configuration is the pair (set of linearized operations as a bitset, model
//!    state). The future of the search depends only on that pair, so a configuration already
//!    seen is never explored twice. This turns the factorial search into one bounded by the
//!    number of distinct reachable configurations, which for realistic histories (a handful of
//!    concurrent clients) is close to linear in the history length.
//! 4. P-compositionality: a history is linearizable iff its projection on every independent
//!    object is. [`check_partitioned`] (and [`check_kv`] for key-value stores) split the
//!    history by a key and check each part on its own, which shrinks the exponential factor
//!    from the whole store's concurrency to one key's.
//!
//! Indefinite operations (a client timed out or crashed and never learned the outcome) have an
//! infinite return time: they have no return event, so the search is never forced to place
//! them. When met, they may be linearized with any outcome the model allows
//! ([`Model::step_unknown`]) or left out entirely; the search succeeds as soon as every
//! *completed* operation is linearized. Indefinite operations that can never change the state
//! ([`Model::is_read_only`]) constrain nothing and are dropped before the search.
//!
//! Complexity: the problem is NP-complete in general. The worst case is exponential in the
//! number of mutually concurrent operations (every subset of a concurrent window, times every
//! model state, is a distinct configuration); each search step costs one model step plus hashing
//! a bitset of `n / 64` words. The `budget` argument bounds the number of search steps, and the
//! checker answers [`Verdict::Unknown`] rather than run for ever on a pathological history.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Debug};
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

/// A sequential specification.
pub trait Model: Clone + Eq + Hash + Debug {
    type Op: Clone + Debug;
    type Ret: Clone + Debug + PartialEq;

    /// The state after applying `op` if it could have returned `ret`; `None` if `ret` is
    /// impossible in this state.
    fn step(&self, op: &Self::Op, ret: &Self::Ret) -> Option<Self>;

    /// For an operation whose outcome is unknown (indefinite): every state it could lead to (it
    /// may have taken effect with any result). Not taking effect at all is always allowed and
    /// need not be listed.
    fn step_unknown(&self, op: &Self::Op) -> Vec<Self>;

    /// True if `op` never changes the state in any state (a read). Indefinite read-only
    /// operations constrain nothing, so the checker drops them before searching. The default
    /// (`false`) is always correct, only slower.
    fn is_read_only(_op: &Self::Op) -> bool {
        false
    }
}

/// One client operation. `call` and the return time are logical or real timestamps (any
/// monotonically comparable `u64`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation<O, R> {
    pub client: u64,
    pub op: O,
    pub call: u64,
    /// `(return time, result)`; `None` if the operation is indefinite: it may have taken effect
    /// at any time after `call`, or never.
    pub ret: Option<(u64, R)>,
}

impl<O, R> Operation<O, R> {
    /// A completed operation.
    pub fn completed(client: u64, op: O, call: u64, ret_time: u64, ret: R) -> Self {
        Operation {
            client,
            op,
            call,
            ret: Some((ret_time, ret)),
        }
    }

    /// An operation whose outcome the client never learned.
    pub fn indefinite(client: u64, op: O, call: u64) -> Self {
        Operation {
            client,
            op,
            call,
            ret: None,
        }
    }

    fn return_time(&self) -> Option<u64> {
        self.ret.as_ref().map(|(time, _)| *time)
    }
}

/// The outcome of a check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Linearizable,
    NotLinearizable {
        explanation: String,
    },
    /// The search budget was exhausted (or the history was malformed, see `reason`).
    Unknown {
        reason: String,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::NotLinearizable { .. })
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Verdict::Unknown { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { explanation } => {
                write!(f, "NOT linearizable: {explanation}")
            }
            Verdict::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// Checks one history against `init`; `budget` bounds the number of search steps (returns
/// [`Verdict::Unknown`] when exceeded). A malformed history (an operation returning before it
/// was called) also yields `Unknown`, with the offending operation in the reason.
pub fn check<M: Model>(init: &M, history: &[Operation<M::Op, M::Ret>], budget: u64) -> Verdict {
    if let Err(reason) = validate(history) {
        return Verdict::Unknown { reason };
    }
    let members: Vec<usize> = (0..history.len()).collect();
    check_members(init, history, &members, budget)
}

/// Checks each partition independently (e.g. per key): `Linearizable` only if all are;
/// `NotLinearizable` if any is (the explanation names the partition key); otherwise `Unknown`.
/// Sound only if operations on different partitions never affect each other (P-compositionality).
/// `budget` applies to each partition separately; partitions are checked in key order.
pub fn check_partitioned<M: Model, K: Ord + Clone + Debug>(
    init: &M,
    history: &[Operation<M::Op, M::Ret>],
    key: impl Fn(&M::Op) -> K,
    budget: u64,
) -> Verdict {
    if let Err(reason) = validate(history) {
        return Verdict::Unknown { reason };
    }
    let mut partitions: BTreeMap<K, Vec<usize>> = BTreeMap::new();
    for (index, operation) in history.iter().enumerate() {
        partitions
            .entry(key(&operation.op))
            .or_default()
            .push(index);
    }
    let partition_count = partitions.len();
    let mut undecided: Vec<(K, String)> = Vec::new();
    for (partition, members) in partitions {
        match check_members(init, history, &members, budget) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { explanation } => {
                return Verdict::NotLinearizable {
                    explanation: format!("partition {partition:?}: {explanation}"),
                };
            }
            Verdict::Unknown { reason } => undecided.push((partition, reason)),
        }
    }
    match undecided.first() {
        None => Verdict::Linearizable,
        Some((partition, reason)) => Verdict::Unknown {
            reason: format!(
                "{} of {partition_count} partitions undecided, no violation found; \
                 first undecided partition {partition:?}: {reason}",
                undecided.len()
            ),
        },
    }
}

/// A register model (one key of a KV store) with values `V`; `Register(None)` is a missing key.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
pub struct Register<V>(pub Option<V>);

#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum RegisterOp<V> {
    Read,
    Write(V),
    Cas { from: V, to: V },
}

#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum RegisterRet<V> {
    /// The value read; `None` for a missing key.
    ReadOk(Option<V>),
    WriteOk,
    CasOk,
    /// Compare-and-set on a missing key; the state is unchanged.
    CasNotFound,
    /// Compare-and-set whose `from` differed from the current value; the state is unchanged.
    CasMismatch,
}

/// Register semantics shared by [`Register`] and [`Kv`]: the value after `op` returned `ret`
/// on `current`, or `None` if that result is impossible.
fn register_step<V: Clone + Eq>(
    current: &Option<V>,
    op: &RegisterOp<V>,
    ret: &RegisterRet<V>,
) -> Option<Option<V>> {
    match (op, ret) {
        (RegisterOp::Read, RegisterRet::ReadOk(seen)) if seen == current => Some(current.clone()),
        (RegisterOp::Write(value), RegisterRet::WriteOk) => Some(Some(value.clone())),
        (RegisterOp::Cas { from, to }, RegisterRet::CasOk) if current.as_ref() == Some(from) => {
            Some(Some(to.clone()))
        }
        (RegisterOp::Cas { .. }, RegisterRet::CasNotFound) if current.is_none() => Some(None),
        (RegisterOp::Cas { from, .. }, RegisterRet::CasMismatch)
            if current.as_ref().is_some_and(|value| value != from) =>
        {
            Some(current.clone())
        }
        _ => None,
    }
}

/// Every value `op` may leave when its result is unknown (taking no effect is implied).
fn register_step_unknown<V: Clone + Eq>(current: &Option<V>, op: &RegisterOp<V>) -> Option<V> {
    match op {
        RegisterOp::Read => current.clone(),
        RegisterOp::Write(value) => Some(value.clone()),
        RegisterOp::Cas { from, to } if current.as_ref() == Some(from) => Some(to.clone()),
        RegisterOp::Cas { .. } => current.clone(),
    }
}

impl<V: Clone + Eq + Hash + Debug> Model for Register<V> {
    type Op = RegisterOp<V>;
    type Ret = RegisterRet<V>;

    fn step(&self, op: &RegisterOp<V>, ret: &RegisterRet<V>) -> Option<Self> {
        register_step(&self.0, op, ret).map(Register)
    }

    fn step_unknown(&self, op: &RegisterOp<V>) -> Vec<Self> {
        vec![Register(register_step_unknown(&self.0, op))]
    }

    fn is_read_only(op: &RegisterOp<V>) -> bool {
        matches!(op, RegisterOp::Read)
    }
}

/// A register operation on one key of a multi-key KV store. Partition with
/// `|op| op.key.clone()` (or use [`check_kv`]).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct KeyedOp<K, V> {
    pub key: K,
    pub op: RegisterOp<V>,
}

/// The whole KV store as one model: a map from key to value, every key a [`Register`].
/// Checking with it is equivalent to [`check_kv`] but without P-compositionality, so it is
/// exponentially slower on concurrent histories; it exists for cross-checking and for
/// specifications that later grow multi-key operations.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Kv<K: Ord, V>(pub BTreeMap<K, V>);

impl<K: Ord, V> Default for Kv<K, V> {
    fn default() -> Self {
        Kv(BTreeMap::new())
    }
}

impl<K, V> Kv<K, V>
where
    K: Ord + Clone,
    V: Clone,
{
    fn with(&self, key: &K, value: Option<V>) -> Self {
        let mut map = self.0.clone();
        match value {
            Some(value) => map.insert(key.clone(), value),
            None => map.remove(key),
        };
        Kv(map)
    }
}

impl<K, V> Model for Kv<K, V>
where
    K: Ord + Clone + Hash + Debug,
    V: Clone + Eq + Hash + Debug,
{
    type Op = KeyedOp<K, V>;
    type Ret = RegisterRet<V>;

    fn step(&self, op: &KeyedOp<K, V>, ret: &RegisterRet<V>) -> Option<Self> {
        let current = self.0.get(&op.key).cloned();
        register_step(&current, &op.op, ret).map(|value| self.with(&op.key, value))
    }

    fn step_unknown(&self, op: &KeyedOp<K, V>) -> Vec<Self> {
        let current = self.0.get(&op.key).cloned();
        vec![self.with(&op.key, register_step_unknown(&current, &op.op))]
    }

    fn is_read_only(op: &KeyedOp<K, V>) -> bool {
        matches!(op.op, RegisterOp::Read)
    }
}

/// Checks a multi-key KV history per key, each key starting at `Register(None)`; `budget`
/// applies to each key separately. A violation's explanation names the key (as
/// "partition <key>"), and operations are numbered by their position in `history`.
pub fn check_kv<K, V>(history: &[Operation<KeyedOp<K, V>, RegisterRet<V>>], budget: u64) -> Verdict
where
    K: Ord + Clone + Debug,
    V: Clone + Eq + Hash + Debug,
{
    check_partitioned(
        &KeyRegister::<K, V>::new(),
        history,
        |op| op.key.clone(),
        budget,
    )
}

/// One key's [`Register`], operated on through [`KeyedOp`]s (the key is ignored: the history
/// is already partitioned by key). This keeps [`check_kv`] explanations numbered by position
/// in the caller's history, at the cost of a `Register` per state.
struct KeyRegister<K, V> {
    register: Register<V>,
    key: PhantomData<fn() -> K>,
}

impl<K, V> KeyRegister<K, V> {
    fn new() -> Self {
        KeyRegister {
            register: Register(None),
            key: PhantomData,
        }
    }
}

impl<K, V: Clone> Clone for KeyRegister<K, V> {
    fn clone(&self) -> Self {
        KeyRegister {
            register: self.register.clone(),
            key: PhantomData,
        }
    }
}

impl<K, V: PartialEq> PartialEq for KeyRegister<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.register == other.register
    }
}

impl<K, V: Eq> Eq for KeyRegister<K, V> {}

impl<K, V: Hash> Hash for KeyRegister<K, V> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.register.hash(state);
    }
}

impl<K, V: Debug> Debug for KeyRegister<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.register.fmt(f)
    }
}

impl<K: Clone + Debug, V: Clone + Eq + Hash + Debug> Model for KeyRegister<K, V> {
    type Op = KeyedOp<K, V>;
    type Ret = RegisterRet<V>;

    fn step(&self, op: &KeyedOp<K, V>, ret: &RegisterRet<V>) -> Option<Self> {
        self.register.step(&op.op, ret).map(|register| KeyRegister {
            register,
            key: PhantomData,
        })
    }

    fn step_unknown(&self, op: &KeyedOp<K, V>) -> Vec<Self> {
        self.register
            .step_unknown(&op.op)
            .into_iter()
            .map(|register| KeyRegister {
                register,
                key: PhantomData,
            })
            .collect()
    }

    fn is_read_only(op: &KeyedOp<K, V>) -> bool {
        matches!(op.op, RegisterOp::Read)
    }
}

fn validate<O: Debug, R: Debug>(history: &[Operation<O, R>]) -> Result<(), String> {
    for (index, operation) in history.iter().enumerate() {
        if let Some(ret_time) = operation.return_time() {
            if ret_time < operation.call {
                return Err(format!(
                    "malformed history: operation {} returned before it was called",
                    describe(index, operation)
                ));
            }
        }
    }
    Ok(())
}

fn describe<O: Debug, R: Debug>(index: usize, operation: &Operation<O, R>) -> String {
    match &operation.ret {
        Some((ret_time, ret)) => format!(
            "#{index} client {}: {:?} [call {}, ret {ret_time}] -> {ret:?}",
            operation.client, operation.op, operation.call
        ),
        None => format!(
            "#{index} client {}: {:?} [call {}, indefinite]",
            operation.client, operation.op, operation.call
        ),
    }
}

/// How many operations of the prefix and of the blocked candidates an explanation lists.
const EXPLANATION_OPERATIONS_MAX: usize = 12;

/// Checks the operations `members` (indices into `history`, already validated).
fn check_members<M: Model>(
    init: &M,
    history: &[Operation<M::Op, M::Ret>],
    members: &[usize],
    budget: u64,
) -> Verdict {
    let mut search = Search::new(init, history, members);
    match search.run(budget) {
        Outcome::Linearizable => Verdict::Linearizable,
        Outcome::Violation => Verdict::NotLinearizable {
            explanation: search.explain_violation(),
        },
        Outcome::BudgetExhausted => Verdict::Unknown {
            reason: format!(
                "search budget of {budget} steps exhausted; longest linearizable prefix found \
                 covers {} of {} completed operations",
                search.best.completed, search.completed_total
            ),
        },
    }
}

enum Outcome {
    Linearizable,
    Violation,
    BudgetExhausted,
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

/// A choice on the search stack: `op` was linearized from `prev_state`; `untried` holds the
/// other states it could have led to (only indefinite operations have more than one).
struct Frame<M> {
    op: usize,
    prev_state: M,
    untried: Vec<M>,
}

/// The deepest point the search reached, for the violation explanation.
struct Best<M> {
    completed: usize,
    prefix: Vec<usize>,
    state: M,
}

/// An explored configuration: (linearized operations as bitset words, model state).
type Configuration<M> = (Box<[u64]>, M);

/// Fixed-size bitset of linearized operations.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bitset(Vec<u64>);

impl Bitset {
    fn new(bits: usize) -> Self {
        Bitset(vec![0; bits.div_ceil(64)])
    }
    fn set(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }
    fn clear(&mut self, bit: usize) {
        self.0[bit / 64] &= !(1 << (bit % 64));
    }
    fn contains(&self, bit: usize) -> bool {
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }
}

struct Search<'h, M: Model> {
    history: &'h [Operation<M::Op, M::Ret>],
    /// Local operation id -> index in `history`.
    ops: Vec<usize>,
    /// Event list (node 0 is the head sentinel): dancing links over sorted call/return events.
    next: Vec<usize>,
    prev: Vec<usize>,
    event_op: Vec<usize>,
    event_is_call: Vec<bool>,
    call_event: Vec<usize>,
    return_event: Vec<Option<usize>>,
    linearized: Bitset,
    state: M,
    stack: Vec<Frame<M>>,
    /// Memo of explored configurations, bucketed by hash so lookups need no allocation.
    seen: HashMap<u64, Vec<Configuration<M>>>,
    completed_total: usize,
    completed_remaining: usize,
    steps: u64,
    best: Best<M>,
}

impl<'h, M: Model> Search<'h, M> {
    fn new(init: &M, history: &'h [Operation<M::Op, M::Ret>], members: &[usize]) -> Self {
        // Indefinite read-only operations can neither be forced nor change anything.
        let ops: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&index| {
                let operation = &history[index];
                operation.ret.is_some() || !M::is_read_only(&operation.op)
            })
            .collect();
        // (time, is_return, local op): calls sort before returns at equal times, because
        // operations that touch at one instant overlap.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (local, &index) in ops.iter().enumerate() {
            let operation = &history[index];
            events.push((operation.call, false, local));
            if let Some(ret_time) = operation.return_time() {
                events.push((ret_time, true, local));
            }
        }
        events.sort_unstable();
        let nodes = events.len() + 1;
        let mut next = vec![NIL; nodes];
        let mut prev = vec![NIL; nodes];
        let mut event_op = vec![NIL; nodes];
        let mut event_is_call = vec![false; nodes];
        let mut call_event = vec![NIL; ops.len()];
        let mut return_event = vec![None; ops.len()];
        for (position, &(_, is_return, local)) in events.iter().enumerate() {
            let node = position + 1;
            prev[node] = node - 1;
            next[node - 1] = node;
            event_op[node] = local;
            event_is_call[node] = !is_return;
            if is_return {
                return_event[local] = Some(node);
            } else {
                call_event[local] = node;
            }
        }
        let completed_total = return_event.iter().filter(|r| r.is_some()).count();
        Search {
            history,
            linearized: Bitset::new(ops.len()),
            ops,
            next,
            prev,
            event_op,
            event_is_call,
            call_event,
            return_event,
            state: init.clone(),
            stack: Vec::new(),
            seen: HashMap::new(),
            completed_total,
            completed_remaining: completed_total,
            steps: 0,
            best: Best {
                completed: 0,
                prefix: Vec::new(),
                state: init.clone(),
            },
        }
    }

    fn operation(&self, local: usize) -> &'h Operation<M::Op, M::Ret> {
        &self.history[self.ops[local]]
    }

    fn run(&mut self, budget: u64) -> Outcome {
        let mut entry = self.next[HEAD];
        loop {
            if self.completed_remaining == 0 {
                return Outcome::Linearizable;
            }
            if self.steps >= budget {
                return Outcome::BudgetExhausted;
            }
            self.steps += 1;
            if entry != NIL && self.event_is_call[entry] {
                let op = self.event_op[entry];
                let successors = self.successors(op);
                entry = if self.try_linearize(op, successors) {
                    self.next[HEAD]
                } else {
                    self.next[entry]
                };
            } else {
                // The first pending return: its operation cannot move past this point and
                // every candidate before it failed, so undo the latest choice. (`NIL` cannot
                // occur while a completed operation is pending, as its return is in the list.)
                let Some(frame) = self.stack.pop() else {
                    return Outcome::Violation;
                };
                let op = frame.op;
                self.undo(op, frame.prev_state);
                entry = if self.try_linearize(op, frame.untried) {
                    self.next[HEAD]
                } else {
                    self.next[self.call_event[op]]
                };
            }
        }
    }

    /// The states `op` may lead to from the current state.
    fn successors(&self, op: usize) -> Vec<M> {
        let operation = self.operation(op);
        match &operation.ret {
            Some((_, ret)) => self.state.step(&operation.op, ret).into_iter().collect(),
            None => {
                // Taking effect without changing the state is dominated by never taking effect.
                let mut states = self.state.step_unknown(&operation.op);
                states.retain(|state| *state != self.state);
                states
            }
        }
    }

    /// Linearizes `op` next, into the first of `candidates` whose configuration is new.
    fn try_linearize(&mut self, op: usize, mut candidates: Vec<M>) -> bool {
        if candidates.is_empty() {
            return false;
        }
        self.linearized.set(op);
        while let Some(state) = candidates.pop() {
            if self.remember(&state) {
                let prev_state = std::mem::replace(&mut self.state, state);
                self.stack.push(Frame {
                    op,
                    prev_state,
                    untried: candidates,
                });
                self.lift(op);
                if self.return_event[op].is_some() {
                    self.completed_remaining -= 1;
                    self.note_progress();
                }
                return true;
            }
        }
        self.linearized.clear(op);
        false
    }

    fn undo(&mut self, op: usize, prev_state: M) {
        self.state = prev_state;
        self.linearized.clear(op);
        self.unlift(op);
        if self.return_event[op].is_some() {
            self.completed_remaining += 1;
        }
    }

    /// Records the configuration (current linearized set, `state`); false if already explored.
    fn remember(&mut self, state: &M) -> bool {
        let mut hasher = DefaultHasher::new();
        self.linearized.hash(&mut hasher);
        state.hash(&mut hasher);
        let bucket = self.seen.entry(hasher.finish()).or_default();
        if bucket
            .iter()
            .any(|(bits, seen)| **bits == *self.linearized.0 && seen == state)
        {
            return false;
        }
        bucket.push((self.linearized.0.clone().into_boxed_slice(), state.clone()));
        true
    }

    fn note_progress(&mut self) {
        let completed = self.completed_total - self.completed_remaining;
        if completed > self.best.completed {
            self.best = Best {
                completed,
                prefix: self.stack.iter().map(|frame| frame.op).collect(),
                state: self.state.clone(),
            };
        }
    }

    fn remove(&mut self, node: usize) {
        let (before, after) = (self.prev[node], self.next[node]);
        self.next[before] = after;
        if after != NIL {
            self.prev[after] = before;
        }
    }

    /// Undoes `remove(node)`; removals must be undone in reverse order.
    fn reinsert(&mut self, node: usize) {
        let (before, after) = (self.prev[node], self.next[node]);
        self.next[before] = node;
        if after != NIL {
            self.prev[after] = node;
        }
    }

    fn lift(&mut self, op: usize) {
        self.remove(self.call_event[op]);
        if let Some(node) = self.return_event[op] {
            self.remove(node);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(node) = self.return_event[op] {
            self.reinsert(node);
        }
        self.reinsert(self.call_event[op]);
    }

    /// Describes the deepest point reached: the longest linearizable prefix, the state after
    /// it, and the operations none of which could be linearized next.
    fn explain_violation(&self) -> String {
        let best = &self.best;
        let mut in_prefix = Bitset::new(self.ops.len());
        for &op in &best.prefix {
            in_prefix.set(op);
        }
        let pending: Vec<usize> = (0..self.ops.len())
            .filter(|&op| !in_prefix.contains(op))
            .collect();
        // The pending completed operation that returned first bounds what may go next: an
        // operation called after it returned must come after it.
        let deadline = pending
            .iter()
            .filter_map(|&op| self.operation(op).return_time().map(|time| (time, op)))
            .min();
        let mut text = format!(
            "no linearization covers all {} completed operations ({} operations in total). \
             Longest linearizable prefix: {} completed operations",
            self.completed_total,
            self.ops.len(),
            best.completed,
        );
        let shown = best.prefix.len().min(EXPLANATION_OPERATIONS_MAX);
        if shown < best.prefix.len() {
            text.push_str(&format!(", the last {shown} of them:"));
        } else if shown > 0 {
            text.push(':');
        }
        for &op in &best.prefix[best.prefix.len() - shown..] {
            text.push_str(&format!("\n    {}", self.describe_local(op)));
        }
        text.push_str(&format!("\n  state after that prefix: {:?}", best.state));
        let Some((deadline_time, deadline_op)) = deadline else {
            return text;
        };
        text.push_str(&format!(
            "\n  {} must be linearized before anything called after {deadline_time}, but none \
             of these can be linearized next:",
            self.describe_local(deadline_op)
        ));
        let candidates: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|&op| {
                let operation = self.operation(op);
                operation.ret.is_some() && operation.call <= deadline_time
            })
            .collect();
        for &op in candidates.iter().take(EXPLANATION_OPERATIONS_MAX) {
            let operation = self.operation(op);
            let possible = operation
                .ret
                .as_ref()
                .is_some_and(|(_, ret)| best.state.step(&operation.op, ret).is_some());
            let why = if possible {
                "allowed here, but no linearization of the rest follows"
            } else {
                "impossible in this state"
            };
            text.push_str(&format!("\n    {} ({why})", self.describe_local(op)));
        }
        if candidates.len() > EXPLANATION_OPERATIONS_MAX {
            text.push_str(&format!(
                "\n    ... and {} more",
                candidates.len() - EXPLANATION_OPERATIONS_MAX
            ));
        }
        let indefinite = pending
            .iter()
            .filter(|&&op| self.operation(op).ret.is_none())
            .count();
        if indefinite > 0 {
            text.push_str(&format!(
                "\n  ({indefinite} indefinite operations were also available to take effect \
                 at any point after their call)"
            ));
        }
        text
    }

    fn describe_local(&self, op: usize) -> String {
        describe(self.ops[op], self.operation(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type RegisterOperation = Operation<RegisterOp<u32>, RegisterRet<u32>>;

    const BUDGET: u64 = 1_000_000;

    fn write(client: u64, value: u32, call: u64, ret: u64) -> RegisterOperation {
        Operation::completed(
            client,
            RegisterOp::Write(value),
            call,
            ret,
            RegisterRet::WriteOk,
        )
    }

    fn read(client: u64, seen: Option<u32>, call: u64, ret: u64) -> RegisterOperation {
        Operation::completed(
            client,
            RegisterOp::Read,
            call,
            ret,
            RegisterRet::ReadOk(seen),
        )
    }

    fn cas(
        client: u64,
        from: u32,
        to: u32,
        outcome: RegisterRet<u32>,
        call: u64,
        ret: u64,
    ) -> RegisterOperation {
        Operation::completed(client, RegisterOp::Cas { from, to }, call, ret, outcome)
    }

    fn check_register(history: &[RegisterOperation]) -> Verdict {
        check(&Register(None), history, BUDGET)
    }

    fn assert_linearizable(history: &[RegisterOperation]) {
        let verdict = check_register(history);
        assert!(
            verdict.is_linearizable(),
            "{verdict}\nhistory: {history:#?}"
        );
    }

    fn assert_violation(history: &[RegisterOperation]) -> String {
        match check_register(history) {
            Verdict::NotLinearizable { explanation } => explanation,
            verdict => panic!("expected a violation, got {verdict}\nhistory: {history:#?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_write_then_read_is_linearizable() {
        assert_linearizable(&[write(1, 1, 0, 1), read(2, Some(1), 2, 3)]);
    }

    #[test]
    fn stale_read_after_completed_write_is_not_linearizable() {
        let explanation = assert_violation(&[write(1, 1, 0, 1), read(2, None, 2, 3)]);
        assert!(explanation.contains("ReadOk(None)"), "{explanation}");
        assert!(
            explanation.contains("impossible in this state"),
            "{explanation}"
        );
    }

    #[test]
    fn read_concurrent_with_write_may_return_old_or_new_value() {
        assert_linearizable(&[write(1, 1, 0, 10), read(2, None, 2, 3)]);
        assert_linearizable(&[write(1, 1, 0, 10), read(2, Some(1), 2, 3)]);
        // Old value first, then new: fine. New value then old by a later read: not.
        assert_linearizable(&[
            write(1, 1, 0, 10),
            read(2, None, 2, 3),
            read(3, Some(1), 4, 5),
        ]);
        assert_violation(&[
            write(1, 1, 0, 10),
            read(2, Some(1), 2, 3),
            read(3, None, 4, 5),
        ]);
    }

    #[test]
    fn operations_touching_at_one_instant_overlap() {
        // The write returns at 5 and the read is called at 5: they overlap, so the read may
        // be ordered first. One tick later it may not.
        assert_linearizable(&[write(1, 1, 0, 5), read(2, None, 5, 6)]);
        assert_violation(&[write(1, 1, 0, 5), read(2, None, 6, 7)]);
    }

    #[test]
    fn two_sequential_writes_read_in_reverse_order_is_not_linearizable() {
        // W1 precedes W2. The first read (overlapping both) sees 2, so W2 took effect before
        // it returned; the later read then sees 1, which is gone for good.
        let history = [
            write(1, 1, 0, 10),
            write(1, 2, 11, 20),
            read(2, Some(2), 5, 15),
            read(2, Some(1), 16, 25),
        ];
        assert_violation(&history);
        // Reading them in write order is fine.
        let history = [
            write(1, 1, 0, 10),
            write(1, 2, 11, 20),
            read(2, Some(1), 5, 15),
            read(2, Some(2), 16, 25),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn read_of_a_value_never_written_is_not_linearizable() {
        let explanation = assert_violation(&[
            write(1, 1, 0, 10),
            write(2, 2, 0, 10),
            read(3, Some(7), 0, 10),
        ]);
        assert!(explanation.contains("ReadOk(Some(7))"), "{explanation}");
    }

    #[test]
    fn lost_write_is_not_linearizable() {
        // Both writes were acknowledged in sequence; a later read returns the older value.
        let explanation =
            assert_violation(&[write(1, 1, 0, 1), write(2, 2, 2, 3), read(3, Some(1), 4, 5)]);
        assert!(explanation.contains("Register(Some(2))"), "{explanation}");
    }

    #[test]
    fn cas_succeeding_twice_from_the_same_value_is_not_linearizable() {
        assert_violation(&[
            write(1, 1, 0, 1),
            cas(1, 1, 2, RegisterRet::CasOk, 2, 3),
            cas(2, 1, 3, RegisterRet::CasOk, 4, 5),
        ]);
        // Even when the two CASes overlap, only one can win.
        assert_violation(&[
            write(1, 1, 0, 1),
            cas(1, 1, 2, RegisterRet::CasOk, 2, 10),
            cas(2, 1, 3, RegisterRet::CasOk, 2, 10),
        ]);
        // One winner and one loser is fine, in either order of calls.
        assert_linearizable(&[
            write(1, 1, 0, 1),
            cas(1, 1, 2, RegisterRet::CasOk, 2, 10),
            cas(2, 1, 3, RegisterRet::CasMismatch, 2, 10),
            read(3, Some(2), 11, 12),
        ]);
    }

    #[test]
    fn cas_on_missing_key_and_mismatch_leave_the_state_unchanged() {
        assert_linearizable(&[
            cas(1, 1, 2, RegisterRet::CasNotFound, 0, 1),
            read(1, None, 2, 3),
            write(1, 5, 4, 5),
            cas(1, 1, 2, RegisterRet::CasMismatch, 6, 7),
            read(1, Some(5), 8, 9),
        ]);
        // CasNotFound once the key exists, or CasMismatch when the value matched: impossible.
        assert_violation(&[
            write(1, 5, 0, 1),
            cas(1, 1, 2, RegisterRet::CasNotFound, 2, 3),
        ]);
        assert_violation(&[
            write(1, 5, 0, 1),
            cas(1, 5, 2, RegisterRet::CasMismatch, 2, 3),
        ]);
        assert_violation(&[cas(1, 5, 2, RegisterRet::CasMismatch, 0, 1)]);
        // A result of the wrong kind for the operation is impossible too.
        assert_violation(&[Operation::completed(
            1,
            RegisterOp::Read,
            0,
            1,
            RegisterRet::WriteOk,
        )]);
    }

    #[test]
    fn concurrent_writes_are_linearizable_only_in_the_order_the_reads_saw() {
        // Three concurrent writes; reads during them pin the only order to 2, 1, 3.
        let writes = [write(1, 1, 0, 10), write(2, 2, 0, 10), write(3, 3, 0, 10)];
        let mut history = writes.to_vec();
        history.extend([
            read(4, Some(2), 1, 2),
            read(4, Some(1), 3, 4),
            read(4, Some(3), 5, 6),
            read(4, Some(3), 11, 12),
        ]);
        assert_linearizable(&history);
        // Any later read of a value other than the last in that order is a violation.
        for stale in [1, 2] {
            let mut history = writes.to_vec();
            history.extend([
                read(4, Some(2), 1, 2),
                read(4, Some(1), 3, 4),
                read(4, Some(3), 5, 6),
                read(4, Some(stale), 11, 12),
            ]);
            assert_violation(&history);
        }
    }

    #[test]
    fn indefinite_write_whose_effect_is_observed_is_linearizable() {
        assert_linearizable(&[
            Operation::indefinite(1, RegisterOp::Write(1), 0),
            read(2, Some(1), 5, 6),
            read(2, Some(1), 7, 8),
        ]);
        // Or it never took effect.
        assert_linearizable(&[
            Operation::indefinite(1, RegisterOp::Write(1), 0),
            read(2, None, 5, 6),
        ]);
        // Or it took effect late, long after its client gave up.
        assert_linearizable(&[
            Operation::indefinite(1, RegisterOp::Write(1), 0),
            read(2, None, 5, 6),
            read(2, Some(1), 100, 101),
        ]);
    }

    #[test]
    fn indefinite_write_observed_then_unobserved_is_not_linearizable() {
        assert_violation(&[
            Operation::indefinite(1, RegisterOp::Write(1), 0),
            read(2, Some(1), 5, 6),
            read(2, None, 7, 8),
        ]);
    }

    #[test]
    fn indefinite_write_cannot_be_observed_before_it_was_called() {
        assert_violation(&[
            read(2, Some(1), 0, 1),
            Operation::indefinite(1, RegisterOp::Write(1), 5),
        ]);
    }

    #[test]
    fn indefinite_cas_may_or_may_not_have_taken_effect() {
        let prefix = [
            write(1, 1, 0, 1),
            Operation::indefinite(2, RegisterOp::Cas { from: 1, to: 2 }, 2),
        ];
        for seen in [1, 2] {
            let mut history = prefix.to_vec();
            history.push(read(3, Some(seen), 10, 11));
            assert_linearizable(&history);
        }
        let mut history = prefix.to_vec();
        history.extend([read(3, Some(2), 10, 11), read(3, Some(1), 12, 13)]);
        assert_violation(&history);
    }

    #[test]
    fn indefinite_read_constrains_nothing() {
        assert_linearizable(&[
            Operation::indefinite(1, RegisterOp::Read, 0),
            write(2, 1, 1, 2),
        ]);
    }

    #[test]
    fn operation_returning_before_its_call_is_reported_as_malformed() {
        let verdict = check_register(&[write(1, 1, 0, 1), read(2, None, 10, 3)]);
        match verdict {
            Verdict::Unknown { reason } => {
                assert!(reason.contains("malformed"), "{reason}");
                assert!(reason.contains("#1"), "{reason}");
            }
            verdict => panic!("expected Unknown, got {verdict}"),
        }
    }

    #[test]
    fn violation_in_one_key_is_found_and_named() {
        let keyed = |key: &str, operation: RegisterOperation| Operation {
            client: operation.client,
            op: KeyedOp {
                key: key.to_string(),
                op: operation.op,
            },
            call: operation.call,
            ret: operation.ret,
        };
        let history = vec![
            keyed("apple", write(1, 1, 0, 1)),
            keyed("banana", write(2, 1, 0, 1)),
            keyed("apple", read(3, Some(1), 2, 3)),
            keyed("banana", write(2, 2, 2, 3)),
            // Stale read of banana, sequentially after the second write.
            keyed("banana", read(3, Some(1), 4, 5)),
            keyed("cherry", read(3, None, 4, 5)),
        ];
        match check_kv(&history, BUDGET) {
            Verdict::NotLinearizable { explanation } => {
                assert!(explanation.contains("\"banana\""), "{explanation}");
                assert!(!explanation.contains("\"apple\""), "{explanation}");
                // Operations are numbered by their position in the whole history.
                assert!(explanation.contains("#4 client 3"), "{explanation}");
            }
            verdict => panic!("expected a violation, got {verdict}"),
        }
        // Without the stale read, every key is fine.
        let fine: Vec<_> = history[..4].to_vec();
        assert!(check_kv(&fine, BUDGET).is_linearizable());
        // The same via the generic entry point.
        let verdict = check_partitioned(
            &Kv::default(),
            &history,
            |op: &KeyedOp<String, u32>| op.key.clone(),
            BUDGET,
        );
        assert!(verdict.is_violation(), "{verdict}");
    }

    /// Many mutually concurrent writes and a read of a value never written: the search must
    /// try every subset of the writes before giving up.
    fn pathological_history(writes: u32) -> Vec<RegisterOperation> {
        let mut history: Vec<_> = (0..writes)
            .map(|value| write(u64::from(value), value, 0, 100))
            .collect();
        history.push(read(1000, Some(writes + 1), 0, 100));
        history
    }

    #[test]
    fn tiny_budget_on_a_pathological_history_returns_unknown() {
        let history = pathological_history(20);
        let verdict = check(&Register(None), &history, 1_000);
        assert!(verdict.is_unknown(), "{verdict}");
        // The same shape, small enough to search exhaustively, is decided.
        let verdict = check(&Register(None), &pathological_history(8), BUDGET);
        assert!(verdict.is_violation(), "{verdict}");
    }

    #[test]
    fn unknown_in_one_partition_does_not_hide_a_violation_in_another() {
        let mut history: Vec<_> = pathological_history(20)
            .into_iter()
            .map(|operation| Operation {
                client: operation.client,
                op: KeyedOp {
                    key: 0u8,
                    op: operation.op,
                },
                call: operation.call,
                ret: operation.ret,
            })
            .collect();
        let verdict = check_kv(&history, 1_000);
        assert!(verdict.is_unknown(), "{verdict}");
        history.push(Operation::completed(
            7,
            KeyedOp {
                key: 1u8,
                op: RegisterOp::Read,
            },
            0,
            1,
            RegisterRet::ReadOk(Some(3)),
        ));
        let verdict = check_kv(&history, 1_000);
        assert!(verdict.is_violation(), "{verdict}");
    }
}
