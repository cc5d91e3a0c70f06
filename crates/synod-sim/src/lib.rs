//! Synod's testing tools: oracles and simulation support for checking the replicated log and
//! the KV store built on it.
//!
//! - [`linearizability`]: a Wing & Gong / Lowe / Porcupine linearizability checker for client
//!   histories, with a register model and per-key (P-compositional) checking for KV stores.
//! - [`cluster`]: the seeded cluster simulator — replicas, clients, a faulty network and
//!   faulty disks in one deterministic event loop.
//! - [`checks`]: agreement, prefix, linearizability, lost acknowledged writes, liveness.
//! - [`runner`]: many seeds (what `synod sim --seeds N` runs); [`bench`]: messages and
//!   delays per command, Multi-Paxos vs per-slot Paxos.

pub mod bench;
pub mod checks;
pub mod cluster;
pub mod linearizability;
pub mod runner;

#[cfg(test)]
mod tests;
