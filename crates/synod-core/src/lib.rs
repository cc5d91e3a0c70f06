//! # synod-core: the Multi-Paxos protocol, sans I/O
//!
//! A [`Node`] is a replica: acceptor, proposer/leader and learner of a replicated log.
//! It takes inputs — messages ([`Node::step`]), clock ticks ([`Node::tick`]),
//! proposals ([`Node::propose`]) and persist completions ([`Node::on_persisted`]) —
//! and returns outputs as plain data in a [`Ready`]: messages that may leave now, one
//! persist request, chosen entries in slot order, and events. There is no socket, file,
//! clock or global random number generator in here: a seeded RNG lives in the node's
//! state, so a whole cluster replays exactly from its seeds.
//!
//! Two protocols share the log and the learner:
//! * [`Mode::MultiPaxos`]: a stable leader runs Phase 1 once per leadership, then each
//!   new slot costs one Accept/Accepted round.
//! * [`Mode::PerSlot`]: the seeds' design — full Phase 1 + Phase 2 for every slot, any
//!   node proposing — kept to measure what Multi-Paxos buys.

mod acceptor;
pub mod ballot;
pub mod config;
mod election;
mod leader;
mod log;
pub mod message;
#[cfg_attr(not(feature = "mutants"), allow(dead_code, unused_macros))]
mod mutant;
mod node;
mod per_slot;
pub mod persist;
mod read;
pub mod ready;
mod rng;
mod transfer;

pub use ballot::{Ballot, NodeId, Slot, Tick};
pub use config::{Backoff, Config, Mode, ReadMode};
pub use message::{
    Decided, Entry, Envelope, Message, Value, COMMAND_OVERHEAD_BYTES, ENTRY_OVERHEAD_BYTES,
    MESSAGE_OVERHEAD_BYTES,
};
#[cfg(feature = "mutants")]
pub use mutant::Mutant;
pub use node::{Node, ProposeError, Role, Status, StepError};
pub use persist::{DurableState, PersistId, PersistOp, PersistRequest};
pub use read::ReadId;
pub use ready::{Committed, Event, ProposalId, ReadPath, Ready};
pub use transfer::{TransferError, TransferOutcome};

#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod schedules;
