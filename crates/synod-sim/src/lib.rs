//! Synod's testing tools: oracles and simulation support for checking the replicated log and
//! the KV store built on it.
//!
//! - [`linearizability`]: a Wing & Gong / Lowe / Porcupine linearizability checker for client
//!   histories, with a register model and per-key (P-compositional) checking for KV stores.

pub mod linearizability;
