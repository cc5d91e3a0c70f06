//! The mutants: deliberate bugs that the checker must catch. A checker that cannot fail
//! checks nothing.
//!
//! Most live in `synod-core` behind its `mutants` feature (a hook of a few lines each,
//! inert unless a node is told to run it). `stale-lease-clock` is a bug of the runtime
//! around the core, so it lives here, in the harness: the runtime hands the core an input
//! without first bringing the core's clock up to real time.

use std::fmt;
use std::str::FromStr;

/// One deliberate bug.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Mutant {
    /// Phase 1 adopts, per slot, the value accepted at the lowest ballot.
    AdoptLowestBallot,
    /// The acceptor accepts an Accept whose ballot is below its promise.
    SkipPromiseCheck,
    /// A candidate's Prepare leaves before its own promise of the ballot is durable.
    PrepareBeforeDurable,
    /// The compaction fix reverted: an acceptor votes for a slot it compacted, and a new
    /// leader re-proposes a value it holds for a slot a promiser reports chosen.
    NoVoteForCompactedSlotCheck,
    /// The runtime hands the core inputs without advancing its clock first: after a
    /// stall the leader's lease looks valid when it has run out.
    StaleLeaseClock,
}

impl Mutant {
    /// Every mutant, in the order `--mutant list` prints them.
    pub const ALL: [Mutant; 5] = [
        Mutant::AdoptLowestBallot,
        Mutant::SkipPromiseCheck,
        Mutant::PrepareBeforeDurable,
        Mutant::NoVoteForCompactedSlotCheck,
        Mutant::StaleLeaseClock,
    ];

    /// The name `--mutant` takes.
    pub fn name(self) -> &'static str {
        match self {
            Mutant::AdoptLowestBallot => "adopt-lowest-ballot",
            Mutant::SkipPromiseCheck => "skip-promise-check",
            Mutant::PrepareBeforeDurable => "prepare-before-durable",
            Mutant::NoVoteForCompactedSlotCheck => "no-vote-for-compacted-slot-check",
            Mutant::StaleLeaseClock => "stale-lease-clock",
        }
    }

    /// What the mutant breaks, in one line.
    pub fn description(self) -> &'static str {
        match self {
            Mutant::AdoptLowestBallot => {
                "Phase 1 adopts the value accepted at the lowest ballot, not the highest"
            }
            Mutant::SkipPromiseCheck => "an acceptor accepts an Accept below its promise",
            Mutant::PrepareBeforeDurable => {
                "a candidate's Prepare leaves before its own promise is durable"
            }
            Mutant::NoVoteForCompactedSlotCheck => {
                "the compaction fix reverted: votes for compacted slots, stale values re-proposed over them"
            }
            Mutant::StaleLeaseClock => {
                "the runtime hands the core inputs without advancing its clock to real time first"
            }
        }
    }

    /// True when the bug is a hook in `synod-core`, which needs the `mutants` feature.
    pub fn in_core(self) -> bool {
        !matches!(self, Mutant::StaleLeaseClock)
    }

    /// Whether this build can run the mutant.
    pub fn available(self) -> bool {
        !self.in_core() || cfg!(feature = "mutants")
    }

    /// The hook in `synod-core` this mutant selects.
    #[cfg(feature = "mutants")]
    pub(crate) fn core(self) -> Option<synod_core::Mutant> {
        match self {
            Mutant::AdoptLowestBallot => Some(synod_core::Mutant::AdoptLowestBallot),
            Mutant::SkipPromiseCheck => Some(synod_core::Mutant::SkipPromiseCheck),
            Mutant::PrepareBeforeDurable => Some(synod_core::Mutant::PrepareBeforeDurable),
            Mutant::NoVoteForCompactedSlotCheck => {
                Some(synod_core::Mutant::NoVoteForCompactedSlotCheck)
            }
            Mutant::StaleLeaseClock => None,
        }
    }
}

impl fmt::Display for Mutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name is not one of [`Mutant::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMutant(pub String);

impl fmt::Display for UnknownMutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Mutant::ALL.iter().map(|mutant| mutant.name()).collect();
        write!(
            f,
            "unknown mutant {:?} (known: {})",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownMutant {}

impl FromStr for Mutant {
    type Err = UnknownMutant;
    fn from_str(name: &str) -> Result<Mutant, UnknownMutant> {
        Mutant::ALL
            .into_iter()
            .find(|mutant| mutant.name() == name)
            .ok_or_else(|| UnknownMutant(name.to_string()))
    }
}
