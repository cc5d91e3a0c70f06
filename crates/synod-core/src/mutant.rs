//! Deliberate bugs for the model checker (`synod-model`), compiled only with the
//! `mutants` feature. A checker that cannot fail checks nothing: each mutant reverts one
//! safety rule, and the model checker must find a counterexample for it.
//!
//! A node runs a mutant only after an explicit [`crate::Node::set_mutant`]; without the
//! feature the hooks are the constant `false` and vanish from the build. The shipped
//! binaries never enable the feature (see docs/model-checking.md).

/// One reverted safety rule.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Mutant {
    /// Phase 1 adopts, per slot, the value accepted at the *lowest* ballot.
    AdoptLowestBallot,
    /// The acceptor accepts an Accept whose ballot is below its promise.
    SkipPromiseCheck,
    /// A candidate's Prepare leaves before its own promise of the ballot is durable.
    PrepareBeforeDurable,
    /// The compaction fix reverted: an acceptor votes for a slot it compacted, and a new
    /// leader re-proposes a value it holds for a slot a promiser reports chosen.
    NoVoteForCompactedSlotCheck,
}

/// `mutant!(node, Name)`: true when `node` runs the mutant `Name` (always false without
/// the `mutants` feature).
#[cfg(feature = "mutants")]
macro_rules! mutant {
    ($node:expr, $name:ident) => {
        $node.mutant == Some($crate::mutant::Mutant::$name)
    };
}

#[cfg(not(feature = "mutants"))]
macro_rules! mutant {
    ($node:expr, $name:ident) => {
        false
    };
}

pub(crate) use mutant;
