//! Synod's testing tools: the seeded simulator that runs the production replica, and the
//! oracles that check what it did.
//!
//! - [`cluster`]: the seeded cluster simulator — `synod_replica::Replica` on every node,
//!   clients, and a network, disks and clocks that misbehave on purpose, in one
//!   deterministic event loop; [`options`]: what a seed draws (swarm testing).
//! - [`checks`]: agreement, prefix, linearizability, lost acknowledged writes, liveness;
//!   [`linearizability`]: a Wing & Gong / Lowe / Porcupine checker for client histories.
//! - [`runner`]: many seeds on many threads (what `synod sim --seeds N` runs);
//!   [`bench`]: messages and delays per command, Multi-Paxos vs per-slot Paxos.

pub mod bench;
pub mod checks;
mod clients;
pub mod cluster;
mod faults;
mod leases;
pub mod linearizability;
pub mod options;
pub mod runner;
mod transfers;
mod watchers;

#[cfg(test)]
mod tests;
