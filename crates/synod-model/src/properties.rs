//! What must always hold, and what must sometimes happen.
//!
//! The `always` properties are checked inside the transitions (see `cluster.rs`), where
//! the facts are at hand, and recorded as the state's violation; here they only read it.
//! The `sometimes` properties prove the checker reached the interesting states: a checker
//! that never saw a lease read proves nothing about lease reads.

use crate::cluster::{happened, Cluster};
use crate::model::SynodModel;
use stateright::Property;
use synod_core::{Role, Value};

/// One value per slot, across nodes and time: no two values are ever chosen (durably
/// accepted by a quorum at one ballot) for a slot, and every value a node delivers (or
/// installs from a snapshot) is the chosen one.
pub const AGREEMENT: &str = "agreement";
/// Paxos's P2b: a proposal (an Accept) at a ballot above one where its slot was chosen
/// carries the chosen value.
pub const PROPOSALS_KEEP_CHOSEN: &str = "proposals above a chosen ballot carry its value";
/// No two Accepts (or durable accepts) carry different values for one slot and ballot.
pub const ONE_VALUE_PER_BALLOT: &str = "one value per ballot";
/// Each node delivers slots in order, each once, never past a gap; a snapshot it
/// installs extends what it applied.
pub const IN_ORDER: &str = "prefix and in-order delivery";
/// A chosen value stays on the disks of a quorum, through crashes and compaction.
pub const CHOSEN_SURVIVES: &str = "no chosen value lost across crashes";
/// A node's promise never falls below a ballot it vouched for, even after a crash.
pub const PROMISE_MONOTONE: &str = "promised ballot monotone";
/// A read never misses a write applied anywhere before the read was asked for.
pub const READS: &str = "lease reads never miss a chosen write";
/// No assertion inside synod-core failed.
pub const CORE_INVARIANTS: &str = "core invariants hold";

/// Some node became leader.
pub const LEADER_ELECTED: &str = "a leader elected";
/// A client value was chosen at a ballot whose leader adopted it from another's.
pub const FAILOVER_ADOPTED: &str = "a slot chosen after a failover that adopted a value";
/// A Prepare reached a node that had compacted slots it covers.
pub const COMPACTED_IN_PHASE1: &str = "a compacted slot during Phase 1";
/// A leader answered a read under its lease, without a message.
pub const LEASE_READ: &str = "a lease read served";
/// A node installed a peer's snapshot.
pub const SNAPSHOT_INSTALLED: &str = "a snapshot installed";
/// A node crashed with persist requests not yet durable.
pub const CRASH_MID_PERSIST: &str = "a crash between a persist request and its completion";

/// Every property, `always` ones first.
pub fn all() -> Vec<Property<SynodModel>> {
    vec![
        Property::always(AGREEMENT, |_, state| holds(state, AGREEMENT)),
        Property::always(PROPOSALS_KEEP_CHOSEN, |_, state| {
            holds(state, PROPOSALS_KEEP_CHOSEN)
        }),
        Property::always(ONE_VALUE_PER_BALLOT, |_, state| {
            holds(state, ONE_VALUE_PER_BALLOT)
        }),
        Property::always(IN_ORDER, |_, state| holds(state, IN_ORDER)),
        Property::always(CHOSEN_SURVIVES, |_, state| holds(state, CHOSEN_SURVIVES)),
        Property::always(PROMISE_MONOTONE, |_, state| holds(state, PROMISE_MONOTONE)),
        Property::always(READS, |_, state| holds(state, READS)),
        Property::always(CORE_INVARIANTS, |_, state| holds(state, CORE_INVARIANTS)),
        Property::sometimes(LEADER_ELECTED, |_, state| leader_elected(state)),
        Property::sometimes(FAILOVER_ADOPTED, |_, state| failover_adopted(state)),
        Property::sometimes(COMPACTED_IN_PHASE1, |_, state: &Cluster| {
            state.happened & happened::COMPACTED_IN_PHASE1 != 0
        }),
        Property::sometimes(LEASE_READ, |_, state: &Cluster| {
            state.happened & happened::LEASE_READ != 0
        }),
        Property::sometimes(SNAPSHOT_INSTALLED, |_, state: &Cluster| {
            state.happened & happened::SNAPSHOT_INSTALLED != 0
        }),
        Property::sometimes(CRASH_MID_PERSIST, |_, state: &Cluster| {
            state.happened & happened::CRASH_LOST_UNSYNCED != 0
        }),
    ]
}

fn holds(state: &Cluster, property: &str) -> bool {
    state
        .violated()
        .is_none_or(|violation| violation.property != property)
}

fn leader_elected(state: &Cluster) -> bool {
    state.replicas.iter().any(|replica| {
        replica
            .node
            .as_ref()
            .is_some_and(|node| node.status().role == Role::Leader)
    })
}

/// A client value chosen at ballot `b` that a leader of another node had proposed for the
/// same slot at a lower ballot: the leader of `b` adopted it in Phase 1.
fn failover_adopted(state: &Cluster) -> bool {
    let ghost = &state.ghost;
    ghost.chosen_at.iter().any(|(slot, ballot)| {
        let Some(value @ Value::Commands(_)) = ghost.proposals.get(&(*slot, *ballot)) else {
            return false;
        };
        ghost
            .proposals
            .range((*slot, synod_core::Ballot::ZERO)..(*slot, *ballot))
            .any(|((_, earlier), proposed)| earlier.node != ballot.node && proposed == value)
    })
}
