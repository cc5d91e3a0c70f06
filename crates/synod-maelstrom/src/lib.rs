//! # synod-maelstrom: Synod as a Maelstrom node, and a local Maelstrom-like harness
//!
//! The `synod-maelstrom` binary speaks the Maelstrom protocol: newline-delimited JSON
//! envelopes `{"src", "dest", "body"}` on stdin and stdout, logs on stderr. It serves
//! the seed task's `multi_paxos_propose` / `multi_paxos_log` and Maelstrom's `lin-kv`
//! workload (read, write, cas) on `synod_replica::Replica` — the one replica the server
//! and the simulator run too. Output lines are rendered exactly as Python's `json.dumps`
//! would render them.
//!
//! * [`server`]: the node without I/O (lines in, clock in, lines out): glue between
//!   Maelstrom messages and the replica.
//! * [`json`]: order-keeping JSON values with Python-style rendering.
//! * [`kv`]: log commands and the lin-kv state machine the replica applies them to.
//! * [`errors`]: Maelstrom's error codes.
//! * [`harness`]: a local lin-kv test — spawns nodes, routes their messages with delays
//!   and partitions, runs clients, checks linearizability.

pub mod cli;
pub mod errors;
pub mod harness;
pub mod json;
pub mod kv;
pub mod server;

pub use harness::{HarnessOptions, HarnessReport};
pub use server::{Server, ServerOptions};
