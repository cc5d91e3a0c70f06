//! # synod-model: exhaustive model checking of the shipped `synod-core`
//!
//! The simulator draws one schedule per seed; this crate explores *every* schedule of a
//! small cluster, up to bounds, with [stateright]. Its state is the real
//! [`synod_core::Node`] of each replica (not a separate specification), plus what a
//! runtime would hold around it — the disk (durable state and the queue of persist
//! requests not yet durable), the state machine's applied log and saved snapshot, a
//! real-time clock — and the network, a set of every message ever sent: any message can
//! be delivered at any time, any number of times, or never, so loss, duplication and
//! reordering come for free.
//!
//! Actions: deliver a message, tick a clock, complete a persist, crash (keeping a prefix
//! of the unsynced persist requests) and restart from durable state, propose a value,
//! ask for a read, compact a log, install a peer's snapshot. Properties are in
//! [`properties`]; what is abstracted and why that is sound is in
//! `docs/model-checking.md`.
//!
//! `synod model-check` drives [`run::check`]; mutants ([`Mutant`]) prove the checker
//! bites.

#![warn(missing_docs)]

pub mod bfs;
pub mod cluster;
pub mod dfs;
pub mod hashed;
pub mod model;
pub mod mutant;
pub mod options;
pub mod properties;
pub mod run;
pub mod trace;

pub use model::SynodModel;
pub use mutant::Mutant;
pub use options::ModelOptions;
pub use run::{check, check_suite, Report, SuiteReport};
