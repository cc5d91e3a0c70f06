//! The node's own seeded random number generator: chance comes from the outside seed,
//! never from the operating system, so a run replays exactly.

use rand::{Rng as _, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rng(ChaCha8Rng);

/// Hashes nothing. The generator's position is the node's chance still to come, not what
/// the node knows: the model checker (crates/synod-model) merges states that differ only
/// in random draws not yet made, exploring one future of draws from each — the same
/// kind of choice a fixed seed makes. Equality still compares the whole generator.
impl std::hash::Hash for Rng {
    fn hash<H: std::hash::Hasher>(&self, _state: &mut H) {}
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// A uniform draw from `low..high` (`low` when the range is empty).
    pub(crate) fn between(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            low
        } else {
            self.0.gen_range(low..high)
        }
    }
}
