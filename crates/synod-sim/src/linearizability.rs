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
//! them, and it succeeds as soon as every *completed* operation is linearized. They live in a
//! second list and are tried only when every completed candidate has failed (a read needs a
//! write nobody saw acknowledged), with any outcome the model allows
//! ([`Model::step_unknown`]). Three reductions keep them from multiplying the search space; each
//! skips a configuration only when another one that can do everything it can is explored too:
//!
//! - *Subsumption* in the memo: a configuration is skipped if one with the same completed
//!   operations, the same state and a subset of its indefinite operations was seen (an
//!   indefinite operation never has to be linearized, so having it still pending only helps).
//!   Trying completed operations first makes the search reach each point with the fewest.
//! - *Absorption*: an indefinite operation right after another is skipped if, alone, it leads
//!   to the same state from before the other (a write overwriting a write).
//! - *Twins*: of pending indefinite operations with the same effect ([`Model::same_effect`])
//!   only the earliest-called is tried; once both are called they are interchangeable.
//!
//! Indefinite read-only operations ([`Model::is_read_only`]) constrain nothing and are dropped.
//!
//! Complexity: the problem is NP-complete in general. The worst case is exponential in the
//! number of mutually concurrent operations (every subset of a concurrent window, times every
//! model state, is a distinct configuration), and in the number of pending indefinite
//! operations when refuting a history whose reads could be explained by many of them (small
//! value domains). Each search step costs one model step plus a memo lookup keyed by the
//! linearized set, stored compactly as the length of its solid prefix (in call order) plus the
//! bits of the concurrency window. For histories from a handful of concurrent clients the
//! search takes a few steps per operation to accept and tens to refute (see the tests). The
//! `budget` argument bounds the number of search steps; beyond it the checker answers
//! [`Verdict::Unknown`] rather than run for ever.

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

    /// True if `a` and `b` have the same effect in every state (usually: they are equal).
    /// Once two such indefinite operations have both been called they are interchangeable, so
    /// the checker only tries the earlier one. The default (`false`) is always correct, but a
    /// history with many indefinite copies of one operation may then take exponential time.
    fn same_effect(_a: &Self::Op, _b: &Self::Op) -> bool {
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

    fn same_effect(a: &RegisterOp<V>, b: &RegisterOp<V>) -> bool {
        a == b
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

    fn same_effect(a: &KeyedOp<K, V>, b: &KeyedOp<K, V>) -> bool {
        a == b
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

    fn same_effect(a: &KeyedOp<K, V>, b: &KeyedOp<K, V>) -> bool {
        // Partitions hold a single key.
        a.op == b.op
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

/// Sentinel heads of the two event lists: completed operations' calls and returns, and
/// indefinite operations' calls.
const HEAD: usize = 0;
const INDEFINITE_HEAD: usize = 1;
const NIL: usize = usize::MAX;

/// A choice on the search stack: `op` was linearized from `prev_state`; `untried` holds the
/// other states it could have led to (only indefinite operations have more than one).
struct Frame<M> {
    op: usize,
    prev_state: M,
    untried: Vec<M>,
}

/// A model state and the minimal sets (bitset words) of indefinite operations it was reached
/// with, for one set of linearized completed operations.
type StateSeen<M> = (M, Vec<Box<[u64]>>);

/// Where the search looks for the next operation to linearize.
#[derive(Clone, Copy)]
enum Cursor {
    /// At a node of the completed operations' event list.
    Completed(usize),
    /// At a node of the indefinite operations' list; only those called at or before
    /// `deadline` (the first pending return) may go next.
    Indefinite { node: usize, deadline: u64 },
}

/// The deepest point the search reached, for the violation explanation.
struct Best<M> {
    completed: usize,
    prefix: Vec<usize>,
    state: M,
}

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

    /// The first clear bit below `end`, or `end`.
    fn first_clear(&self, end: usize) -> usize {
        for (index, &word) in self.0.iter().enumerate() {
            if word != u64::MAX {
                return (index * 64 + word.trailing_ones() as usize).min(end);
            }
        }
        end
    }

    /// One past the last set bit below `end`, or 0.
    fn end_of_set(&self, end: usize) -> usize {
        let mut bit = end;
        while bit > 0 {
            let word = self.0[(bit - 1) / 64];
            let live = (bit - 1) % 64 + 1;
            let masked = if live == 64 {
                word
            } else {
                word & ((1 << live) - 1)
            };
            if masked != 0 {
                return (bit - 1) / 64 * 64 + (64 - masked.leading_zeros() as usize);
            }
            bit -= live;
        }
        0
    }

    /// Appends bits `[from, to)` to `out`, shifted down to start at bit 0 of a fresh word.
    fn append_range(&self, from: usize, to: usize, out: &mut Vec<u64>) {
        let mut start = from;
        while start < to {
            let (word, shift) = (start / 64, start % 64);
            let mut bits = self.0[word] >> shift;
            if shift != 0 && word + 1 < self.0.len() {
                bits |= self.0[word + 1] << (64 - shift);
            }
            let width = (to - start).min(64);
            if width < 64 {
                bits &= (1 << width) - 1;
            }
            out.push(bits);
            start += width;
        }
    }
}

struct Search<'h, M: Model> {
    history: &'h [Operation<M::Op, M::Ret>],
    /// Local operation id -> index in `history`. Completed operations come first, in call
    /// order, then indefinite ones, so the linearized set is usually a solid prefix plus a short
    /// window, which keeps memo keys small (see `remember`).
    ops: Vec<usize>,
    /// Two event lists threaded through the same node arrays (dancing links): from `HEAD`, the
    /// sorted calls and returns of completed operations; from `INDEFINITE_HEAD`, the sorted
    /// calls of indefinite operations.
    next: Vec<usize>,
    prev: Vec<usize>,
    event_op: Vec<usize>,
    event_is_call: Vec<bool>,
    event_time: Vec<u64>,
    call_event: Vec<usize>,
    return_event: Vec<Option<usize>>,
    /// For each indefinite operation (indexed by local id minus `completed_total`), the local
    /// ids of the indefinite operations with the same effect ([`Model::same_effect`]), in call
    /// order; shared by the whole class.
    same_effect_class: Vec<usize>,
    same_effect_members: Vec<Vec<usize>>,
    linearized: Bitset,
    state: M,
    stack: Vec<Frame<M>>,
    /// Memo: compact key of the linearized completed operations -> for each model state seen
    /// with it, the minimal sets of linearized indefinite operations it was seen with.
    seen: HashMap<Box<[u64]>, Vec<StateSeen<M>>>,
    /// Scratch buffers for the memo keys.
    completed_key: Vec<u64>,
    indefinite_key: Vec<u64>,
    completed_total: usize,
    completed_remaining: usize,
    steps: u64,
    best: Best<M>,
}

impl<'h, M: Model> Search<'h, M> {
    fn new(init: &M, history: &'h [Operation<M::Op, M::Ret>], members: &[usize]) -> Self {
        // Indefinite read-only operations can neither be forced nor change anything.
        let mut ops: Vec<usize> = members
            .iter()
            .copied()
            .filter(|&index| {
                let operation = &history[index];
                operation.ret.is_some() || !M::is_read_only(&operation.op)
            })
            .collect();
        ops.sort_by_key(|&index| {
            let operation = &history[index];
            (operation.ret.is_none(), operation.call, index)
        });
        // (time, is_return, local op): calls sort before returns at equal times, because
        // operations that touch at one instant overlap.
        let mut completed_events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        let mut indefinite_events: Vec<(u64, bool, usize)> = Vec::new();
        for (local, &index) in ops.iter().enumerate() {
            let operation = &history[index];
            match operation.return_time() {
                Some(ret_time) => {
                    completed_events.push((operation.call, false, local));
                    completed_events.push((ret_time, true, local));
                }
                None => indefinite_events.push((operation.call, false, local)),
            }
        }
        completed_events.sort_unstable();
        indefinite_events.sort_unstable();
        let nodes = 2 + completed_events.len() + indefinite_events.len();
        let mut next = vec![NIL; nodes];
        let mut prev = vec![NIL; nodes];
        let mut event_op = vec![NIL; nodes];
        let mut event_is_call = vec![false; nodes];
        let mut event_time = vec![0; nodes];
        let mut call_event = vec![NIL; ops.len()];
        let mut return_event = vec![None; ops.len()];
        let mut node = 2;
        for (head, events) in [
            (HEAD, &completed_events),
            (INDEFINITE_HEAD, &indefinite_events),
        ] {
            let mut last = head;
            for &(time, is_return, local) in events {
                prev[node] = last;
                next[last] = node;
                event_op[node] = local;
                event_is_call[node] = !is_return;
                event_time[node] = time;
                if is_return {
                    return_event[local] = Some(node);
                } else {
                    call_event[local] = node;
                }
                last = node;
                node += 1;
            }
        }
        let completed_total = completed_events.len() / 2;
        // Indefinite operations are numbered in call order, so classes list them in call order.
        let mut same_effect_class = Vec::new();
        let mut same_effect_members: Vec<Vec<usize>> = Vec::new();
        for local in completed_total..ops.len() {
            let op = &history[ops[local]].op;
            let class = same_effect_members
                .iter()
                .position(|members| M::same_effect(&history[ops[members[0]]].op, op));
            match class {
                Some(class) => {
                    same_effect_class.push(class);
                    same_effect_members[class].push(local);
                }
                None => {
                    same_effect_class.push(same_effect_members.len());
                    same_effect_members.push(vec![local]);
                }
            }
        }
        Search {
            history,
            linearized: Bitset::new(ops.len()),
            ops,
            next,
            prev,
            event_op,
            event_is_call,
            event_time,
            call_event,
            return_event,
            same_effect_class,
            same_effect_members,
            state: init.clone(),
            stack: Vec::new(),
            seen: HashMap::new(),
            completed_key: Vec::new(),
            indefinite_key: Vec::new(),
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

    fn is_completed(&self, local: usize) -> bool {
        local < self.completed_total
    }

    /// The time of the first pending return: nothing called after it may be linearized next.
    fn deadline(&self) -> u64 {
        let mut node = self.next[HEAD];
        while node != NIL && self.event_is_call[node] {
            node = self.next[node];
        }
        // A pending completed operation always has its return in the list.
        if node == NIL {
            u64::MAX
        } else {
            self.event_time[node]
        }
    }

    /// The search loop. Completed candidates are tried before indefinite ones, so the search
    /// reaches each configuration first with as few indefinite operations as possible, and the
    /// memo's subsumption check (see `remember`) then cuts the variants with more.
    fn run(&mut self, budget: u64) -> Outcome {
        let mut cursor = Cursor::Completed(self.next[HEAD]);
        loop {
            if self.completed_remaining == 0 {
                return Outcome::Linearizable;
            }
            if self.steps >= budget {
                return Outcome::BudgetExhausted;
            }
            self.steps += 1;
            cursor = match cursor {
                Cursor::Completed(node) if node != NIL && self.event_is_call[node] => {
                    let op = self.event_op[node];
                    let successors = self.successors(op);
                    if self.try_linearize(op, successors) {
                        Cursor::Completed(self.next[HEAD])
                    } else {
                        Cursor::Completed(self.next[node])
                    }
                }
                // The first pending return: its operation cannot be postponed past this point
                // and every completed candidate before it failed. Try the indefinite ones.
                Cursor::Completed(node) => Cursor::Indefinite {
                    node: self.next[INDEFINITE_HEAD],
                    deadline: if node == NIL {
                        u64::MAX
                    } else {
                        self.event_time[node]
                    },
                },
                Cursor::Indefinite { node, deadline }
                    if node != NIL && self.event_time[node] <= deadline =>
                {
                    let op = self.event_op[node];
                    let successors = if self.has_earlier_twin(op) {
                        Vec::new()
                    } else {
                        self.successors(op)
                    };
                    if self.try_linearize(op, successors) {
                        Cursor::Completed(self.next[HEAD])
                    } else {
                        Cursor::Indefinite {
                            node: self.next[node],
                            deadline,
                        }
                    }
                }
                // Every candidate failed: undo the latest choice and try what comes after it.
                Cursor::Indefinite { .. } => {
                    let Some(frame) = self.stack.pop() else {
                        return Outcome::Violation;
                    };
                    let op = frame.op;
                    self.undo(op, frame.prev_state);
                    if self.try_linearize(op, frame.untried) {
                        Cursor::Completed(self.next[HEAD])
                    } else if self.is_completed(op) {
                        Cursor::Completed(self.next[self.call_event[op]])
                    } else {
                        Cursor::Indefinite {
                            node: self.next[self.call_event[op]],
                            deadline: self.deadline(),
                        }
                    }
                }
            };
        }
    }

    /// True if an indefinite operation with the same effect as `op`, called no later, is still
    /// pending: both may be linearized now, so only the earlier one is tried.
    fn has_earlier_twin(&self, op: usize) -> bool {
        let class = self.same_effect_class[op - self.completed_total];
        let first_pending = self.same_effect_members[class]
            .iter()
            .find(|&&member| !self.linearized.contains(member));
        first_pending.is_some_and(|&member| member != op)
    }

    /// The states `op` may lead to from the current state.
    fn successors(&self, op: usize) -> Vec<M> {
        let operation = self.operation(op);
        match &operation.ret {
            Some((_, ret)) => self.state.step(&operation.op, ret).into_iter().collect(),
            None => {
                // Taking effect without changing the state is subsumed by never taking effect.
                let mut states = self.state.step_unknown(&operation.op);
                states.retain(|state| *state != self.state);
                // Right after another indefinite operation: if `op` alone, from the state
                // before that one, reaches the same state (a write overwriting a write), the
                // pair is subsumed by skipping the earlier one, which the search also tries.
                if let Some(top) = self.stack.last() {
                    if !self.is_completed(top.op) {
                        let direct = top.prev_state.step_unknown(&operation.op);
                        states.retain(|state| *state != top.prev_state && !direct.contains(state));
                    }
                }
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
                if self.is_completed(op) {
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
        if self.is_completed(op) {
            self.completed_remaining += 1;
        }
    }

    /// Records the configuration (current linearized set, `state`); false if it is subsumed by
    /// one already explored or being explored.
    ///
    /// A configuration is subsumed by another with the same completed operations linearized,
    /// the same state and a subset of the indefinite operations linearized: the other can do
    /// everything it can (indefinite operations never have to be linearized), so if the other
    /// finds no linearization, neither would this one. Equal configurations are the special case
    /// of equal sets.
    fn remember(&mut self, state: &M) -> bool {
        let completed = self.completed_total;
        let prefix = self.linearized.first_clear(completed);
        let window_end = self.linearized.end_of_set(completed).max(prefix);
        self.completed_key.clear();
        self.completed_key.push(prefix as u64);
        self.linearized
            .append_range(prefix, window_end, &mut self.completed_key);
        self.indefinite_key.clear();
        self.linearized
            .append_range(completed, self.ops.len(), &mut self.indefinite_key);
        let indefinite = self.indefinite_key.as_slice();
        let Some(states) = self.seen.get_mut(self.completed_key.as_slice()) else {
            self.seen.insert(
                self.completed_key.clone().into_boxed_slice(),
                vec![(state.clone(), vec![indefinite.into()])],
            );
            return true;
        };
        let Some((_, sets)) = states.iter_mut().find(|(seen, _)| seen == state) else {
            states.push((state.clone(), vec![indefinite.into()]));
            return true;
        };
        let is_subset = |small: &[u64], large: &[u64]| {
            small
                .iter()
                .zip(large)
                .all(|(small, large)| small & !large == 0)
        };
        if sets.iter().any(|set| is_subset(set, indefinite)) {
            return false;
        }
        sets.retain(|set| !is_subset(indefinite, set));
        sets.push(indefinite.into());
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
             Longest linearizable prefix found: {} completed operations",
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
    fn explanation_shows_prefix_state_and_blocked_operations() {
        let explanation = assert_violation(&[
            write(1, 1, 0, 1),
            write(2, 2, 2, 3),
            read(3, Some(1), 4, 5),
            write(1, 3, 4, 9),
            read(2, Some(3), 10, 11),
        ]);
        let expected = [
            "no linearization covers all 5 completed operations",
            "Longest linearizable prefix found: 3 completed operations:",
            "\n    #0 client 1: Write(1) [call 0, ret 1] -> WriteOk",
            "\n    #1 client 2: Write(2) [call 2, ret 3] -> WriteOk",
            "\n    #3 client 1: Write(3) [call 4, ret 9] -> WriteOk",
            "state after that prefix: Register(Some(3))",
            "#2 client 3: Read [call 4, ret 5] -> ReadOk(Some(1)) must be linearized before \
             anything called after 5",
            "\n    #2 client 3: Read [call 4, ret 5] -> ReadOk(Some(1)) (impossible in this state)",
        ];
        for fragment in expected {
            assert!(
                explanation.contains(fragment),
                "missing {fragment:?} in:\n{explanation}"
            );
        }
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
    fn each_indefinite_write_takes_effect_at_most_once() {
        // Ten indefinite writes of 1 and ten of 2, then reads alternating 1, 2, 1, 2, ...: each
        // switch consumes one write, so twenty reads are fine and a twenty-first is not. The
        // writes of one value are interchangeable; the search must not try their 10! orders.
        let mut history: Vec<_> = (0..20)
            .map(|client| {
                Operation::indefinite(client, RegisterOp::Write(1 + client as u32 % 2), 0)
            })
            .collect();
        for index in 0..20 {
            let call = 10 + 2 * index;
            history.push(read(100, Some(1 + index as u32 % 2), call, call + 1));
        }
        let verdict = check(&Register(None), &history, 10_000);
        assert!(verdict.is_linearizable(), "{verdict}");
        history.push(read(100, Some(1), 100, 101));
        let verdict = check(&Register(None), &history, 10_000);
        assert!(verdict.is_violation(), "{verdict}");
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

    /// Randomized histories from a real sequential register under simulated concurrency,
    /// and a naive exhaustive checker to compare the search with.
    mod randomized {
        use super::*;
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        use rand_chacha::ChaCha8Rng;
        use std::collections::HashSet;

        /// Values are drawn from `0..SMALL_DOMAIN` unless a test asks for more: small enough
        /// for frequent coincidences, the hard case for the search.
        const SMALL_DOMAIN: u32 = 4;

        /// With a domain this large, values rarely repeat, as in a harness writing unique
        /// values.
        const LARGE_DOMAIN: u32 = 1_000_000;

        fn random_op(rng: &mut ChaCha8Rng, values: u32) -> RegisterOp<u32> {
            match rng.gen_range(0..10) {
                0..=3 => RegisterOp::Read,
                4..=6 => RegisterOp::Write(rng.gen_range(0..values)),
                _ => RegisterOp::Cas {
                    from: rng.gen_range(0..values),
                    to: rng.gen_range(0..values),
                },
            }
        }

        /// The real register: the new value and the result.
        fn apply(value: Option<u32>, op: &RegisterOp<u32>) -> (Option<u32>, RegisterRet<u32>) {
            match op {
                RegisterOp::Read => (value, RegisterRet::ReadOk(value)),
                RegisterOp::Write(new) => (Some(*new), RegisterRet::WriteOk),
                RegisterOp::Cas { from, to } => match value {
                    None => (None, RegisterRet::CasNotFound),
                    Some(current) if current == *from => (Some(*to), RegisterRet::CasOk),
                    Some(_) => (value, RegisterRet::CasMismatch),
                },
            }
        }

        /// Runs `count` random operations (values in `0..values`) on a real register, one
        /// every 10 time units (their linearization points), each with a call up to `spread`
        /// before and a return up to `spread` after its point. An indefinite operation took
        /// effect or not at random. A CAS reads its `from` from the register half of the time,
        /// so it often succeeds.
        fn generate(
            rng: &mut ChaCha8Rng,
            count: usize,
            spread: u64,
            indefinite_percent: u32,
            values: u32,
        ) -> Vec<RegisterOperation> {
            let mut value = None;
            let mut history = Vec::with_capacity(count);
            for index in 0..count {
                let point = 10 * index as u64 + spread;
                let call = point - rng.gen_range(0..=spread);
                let ret_time = point + rng.gen_range(0..=spread);
                let mut op = random_op(rng, values);
                if let (RegisterOp::Cas { from, .. }, Some(current)) = (&mut op, value) {
                    if rng.gen_bool(0.5) {
                        *from = current;
                    }
                }
                let client = rng.gen_range(0..8);
                if rng.gen_range(0..100) < indefinite_percent {
                    if rng.gen_bool(0.5) {
                        value = apply(value, &op).0;
                    }
                    history.push(Operation::indefinite(client, op, call));
                } else {
                    let (next, ret) = apply(value, &op);
                    value = next;
                    history.push(Operation::completed(client, op, call, ret_time, ret));
                }
            }
            // The checker must not depend on the order operations are listed in.
            history.shuffle(rng);
            history
        }

        fn writes(op: &RegisterOp<u32>) -> Option<u32> {
            match op {
                RegisterOp::Read => None,
                RegisterOp::Write(value) | RegisterOp::Cas { to: value, .. } => Some(*value),
            }
        }

        /// Changes one completed read to a value no linearization can give it: one that no
        /// operation called before the read returned could have written (the read must
        /// precede every later-called operation), or `None` once a write completed before the
        /// read was called (nothing deletes). Returns false if the history has no read.
        fn corrupt_one_read(rng: &mut ChaCha8Rng, history: &mut [RegisterOperation]) -> bool {
            let reads: Vec<usize> = (0..history.len())
                .filter(|&index| {
                    history[index].op == RegisterOp::Read && history[index].ret.is_some()
                })
                .collect();
            let Some(&target) = reads.choose(rng) else {
                return false;
            };
            let (read_call, read_ret) = (
                history[target].call,
                history[target].return_time().expect("completed"),
            );
            let possibly_written: HashSet<u32> = history
                .iter()
                .filter(|other| other.call <= read_ret)
                .filter_map(|other| writes(&other.op))
                .collect();
            let mut impossible: Vec<Option<u32>> = (0..SMALL_DOMAIN)
                .chain([u32::MAX])
                .filter(|value| !possibly_written.contains(value))
                .map(Some)
                .collect();
            let written_before = history.iter().any(|other| match &other.ret {
                Some((time, RegisterRet::WriteOk | RegisterRet::CasOk)) => *time < read_call,
                _ => false,
            });
            if written_before {
                impossible.push(None);
            }
            let value = *impossible
                .choose(rng)
                .expect("a fresh value is always impossible");
            let ret = history[target].ret.as_mut().expect("completed");
            assert_ne!(
                ret.1,
                RegisterRet::ReadOk(value),
                "the real result was possible"
            );
            ret.1 = RegisterRet::ReadOk(value);
            true
        }

        #[test]
        fn histories_of_a_real_register_are_linearizable_and_corrupted_reads_are_not() {
            let mut violations = 0;
            for seed in 0..300u64 {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let count = rng.gen_range(1..120);
                let spread = rng.gen_range(0..40);
                let indefinite_percent = rng.gen_range(0..15);
                let values = if rng.gen_bool(0.7) {
                    SMALL_DOMAIN
                } else {
                    LARGE_DOMAIN
                };
                let mut history = generate(&mut rng, count, spread, indefinite_percent, values);
                let verdict = check(&Register(None), &history, BUDGET);
                assert!(
                    verdict.is_linearizable(),
                    "seed {seed}: real register history judged {verdict}\n{history:#?}"
                );
                if corrupt_one_read(&mut rng, &mut history) {
                    let verdict = check(&Register(None), &history, BUDGET);
                    assert!(
                        verdict.is_violation(),
                        "seed {seed}: corrupted history judged {verdict}\n{history:#?}"
                    );
                    violations += 1;
                }
            }
            assert!(violations > 200, "only {violations} histories had a read");
        }

        /// The budget is the claim in these tests: a number of search steps close to linear
        /// in the history length.
        fn assert_decided_within(
            history: &[RegisterOperation],
            steps_per_operation: u64,
            expect_linearizable: bool,
            seed: u64,
        ) {
            let budget = steps_per_operation * history.len() as u64;
            let verdict = check(&Register(None), history, budget);
            assert!(
                verdict.is_linearizable() == expect_linearizable && !verdict.is_unknown(),
                "seed {seed}: expected linearizable = {expect_linearizable} within {budget} \
                 steps, got {verdict}"
            );
        }

        #[test]
        fn thousands_of_operations_on_one_key_are_checked_in_few_steps_per_operation() {
            for seed in 0..3u64 {
                let mut rng = ChaCha8Rng::seed_from_u64(1000 + seed);
                let mut history = generate(&mut rng, 4000, 25, 0, SMALL_DOMAIN);
                assert_decided_within(&history, 5, true, seed);
                // Refuting means exhausting every linearization up to the corrupted read.
                corrupt_one_read(&mut rng, &mut history);
                assert_decided_within(&history, 100, false, seed);
            }
        }

        #[test]
        fn thousands_of_operations_with_some_indefinite_are_checked() {
            for seed in 0..3u64 {
                let mut rng = ChaCha8Rng::seed_from_u64(2000 + seed);
                // Small values: indefinite writes of a value could explain many reads, so
                // refuting is exponential; accepting stays cheap.
                let history = generate(&mut rng, 4000, 25, 2, SMALL_DOMAIN);
                assert_decided_within(&history, 20, true, seed);
                // Unique values: every indefinite write explains few reads; both verdicts stay
                // cheap.
                let mut history = generate(&mut rng, 2000, 15, 2, LARGE_DOMAIN);
                assert_decided_within(&history, 100, true, seed);
                corrupt_one_read(&mut rng, &mut history);
                assert_decided_within(&history, 2000, false, seed);
            }
        }

        /// Exhaustive search over every order allowed by real time, no memo, no pruning.
        fn brute_force<M: Model>(
            state: &M,
            history: &[Operation<M::Op, M::Ret>],
            done: &mut [bool],
        ) -> bool {
            let finished = history
                .iter()
                .zip(done.iter())
                .all(|(operation, done)| *done || operation.ret.is_none());
            if finished {
                return true;
            }
            for next in 0..history.len() {
                if done[next] {
                    continue;
                }
                let must_wait = history.iter().enumerate().any(|(other, operation)| {
                    !done[other]
                        && operation
                            .return_time()
                            .is_some_and(|time| time < history[next].call)
                });
                if must_wait {
                    continue;
                }
                let operation = &history[next];
                let states: Vec<M> = match &operation.ret {
                    Some((_, ret)) => state.step(&operation.op, ret).into_iter().collect(),
                    None => state.step_unknown(&operation.op),
                };
                done[next] = true;
                for state in states {
                    if brute_force(&state, history, done) {
                        done[next] = false;
                        return true;
                    }
                }
                done[next] = false;
            }
            false
        }

        fn random_register_ret(rng: &mut ChaCha8Rng, op: &RegisterOp<u32>) -> RegisterRet<u32> {
            match op {
                RegisterOp::Read => RegisterRet::ReadOk(
                    Some(rng.gen_range(0..SMALL_DOMAIN + 1)).filter(|&value| value < SMALL_DOMAIN),
                ),
                RegisterOp::Write(_) => RegisterRet::WriteOk,
                RegisterOp::Cas { .. } => [
                    RegisterRet::CasOk,
                    RegisterRet::CasNotFound,
                    RegisterRet::CasMismatch,
                ]
                .choose(rng)
                .cloned()
                .expect("non-empty"),
            }
        }

        /// Small histories, half of them with random results, possibly indefinite, in narrow
        /// time ranges so that ties and overlaps are common.
        fn small_history(rng: &mut ChaCha8Rng) -> Vec<RegisterOperation> {
            let count = rng.gen_range(1..=7);
            let spread = rng.gen_range(0..25);
            let indefinite_percent = rng.gen_range(0..60);
            let mut history = generate(rng, count, spread, indefinite_percent, SMALL_DOMAIN);
            if rng.gen_bool(0.5) {
                for _ in 0..rng.gen_range(1..=2) {
                    let victim = rng.gen_range(0..history.len());
                    let op = history[victim].op.clone();
                    if let Some((_, ret)) = history[victim].ret.as_mut() {
                        *ret = random_register_ret(rng, &op);
                    }
                }
            }
            history
        }

        #[test]
        fn search_agrees_with_exhaustive_enumeration_on_small_histories() {
            let (mut linearizable, mut violations) = (0, 0);
            for seed in 0..3000u64 {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let history = small_history(&mut rng);
                let expected =
                    brute_force(&Register(None), &history, &mut vec![false; history.len()]);
                let verdict = check(&Register(None), &history, BUDGET);
                assert!(
                    !verdict.is_unknown() && verdict.is_linearizable() == expected,
                    "seed {seed}: search says {verdict}, exhaustive says {expected}\n{history:#?}"
                );
                if expected {
                    linearizable += 1;
                } else {
                    violations += 1;
                }
            }
            assert!(
                linearizable > 500 && violations > 500,
                "{linearizable} / {violations}"
            );
        }

        #[test]
        fn per_key_checking_agrees_with_the_whole_store_model() {
            let (mut linearizable, mut violations) = (0, 0);
            for seed in 0..1500u64 {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let count = rng.gen_range(1..=9);
                let spread = rng.gen_range(0..30);
                // Keys assigned at random to a real register history give each key a real
                // history of its own, but only if each key has its own register: regenerate
                // per key by replaying in linearization order (the generator's list order
                // before shuffling is lost, so generate per key instead).
                let mut history = Vec::new();
                for key in 0..2u8 {
                    let per_key = generate(&mut rng, count / 2 + 1, spread, 15, SMALL_DOMAIN);
                    history.extend(per_key.into_iter().map(|operation| Operation {
                        client: operation.client,
                        op: KeyedOp {
                            key,
                            op: operation.op,
                        },
                        call: operation.call,
                        ret: operation.ret,
                    }));
                }
                if rng.gen_bool(0.7) {
                    let victim = rng.gen_range(0..history.len());
                    let op = history[victim].op.op.clone();
                    if let Some((_, ret)) = history[victim].ret.as_mut() {
                        *ret = random_register_ret(&mut rng, &op);
                    }
                }
                let whole = check(&Kv::default(), &history, BUDGET);
                let per_key = check_kv(&history, BUDGET);
                assert!(
                    !whole.is_unknown() && whole.is_linearizable() == per_key.is_linearizable(),
                    "seed {seed}: whole store says {whole}, per key says {per_key}\n{history:#?}"
                );
                if whole.is_linearizable() {
                    linearizable += 1;
                } else {
                    violations += 1;
                }
            }
            assert!(
                linearizable > 200 && violations > 200,
                "{linearizable} / {violations}"
            );
        }
    }
}
