//! Ballots, slots and node ids: the numbers every other module speaks in.
//!
//! A ballot is `(round, node)`, ordered by round then node id, so two nodes never
//! share one. A Multi-Paxos leader uses one ballot for every slot of its leadership.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A replica's id. Unique in the cluster and never reused.
pub type NodeId = u64;

/// A position in the replicated log. The first slot is 1; 0 means "none".
pub type Slot = u64;

/// The core's logical clock: one unit per call to `Node::tick`.
pub type Tick = u64;

/// A Paxos ballot (proposal number). Totally ordered, unique per node.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Ballot {
    pub round: u64,
    pub node: NodeId,
}

impl Ballot {
    /// Lower than every ballot a node can propose with.
    pub const ZERO: Ballot = Ballot { round: 0, node: 0 };

    pub fn new(round: u64, node: NodeId) -> Ballot {
        Ballot { round, node }
    }

    /// The smallest ballot owned by `node` that is higher than `self`.
    pub fn next_for(self, node: NodeId) -> Ballot {
        Ballot {
            round: self.round + 1,
            node,
        }
    }
}

impl fmt::Debug for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}.{}", self.round, self.node)
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node() {
        assert!(Ballot::new(1, 3) < Ballot::new(2, 1));
        assert!(Ballot::new(2, 1) < Ballot::new(2, 2));
        assert!(Ballot::ZERO < Ballot::new(0, 1));
        assert_eq!(Ballot::new(4, 2).next_for(7), Ballot::new(5, 7));
    }
}
