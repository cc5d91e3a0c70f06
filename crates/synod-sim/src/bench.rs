//! `synod sim bench`: what Multi-Paxos buys, counted in the simulator.
//!
//! Fault-free runs with every message taking exactly one delay ([`DELAY_UNIT`]) and
//! instant disks, so the figures are properties of the protocols, not of a machine:
//! protocol messages per committed command (between distinct nodes, heartbeats and
//! catch-up included) and the commit latency of a command at the node that proposed it,
//! in one-way message delays. The election at the start is left out of the window.

use crate::cluster::{Faults, ReadMix, SimOptions, Simulation, DELAY_UNIT};
use serde::Serialize;
use synod_core::{Backoff, Mode};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchRow {
    pub mode: &'static str,
    pub nodes: u64,
    pub clients: usize,
    pub batched: bool,
    /// Client commands committed inside the measurement window.
    pub commands: u64,
    pub msgs_per_cmd: f64,
    /// Mean commit latency at the proposer, in one-way message delays.
    pub delays_per_cmd: f64,
    pub p50_delays: f64,
    pub p99_delays: f64,
    /// Phase 1 runs over the whole run (election included).
    pub phase1_runs: u64,
}

/// One benchmark configuration.
pub fn bench_options(mode: Mode, nodes: u64, clients: usize, batched: bool) -> SimOptions {
    SimOptions {
        seed: 7,
        nodes,
        mode,
        backoff: Backoff::Randomized,
        clients,
        keys: 16,
        ops_per_client: (4_000 / clients).max(40),
        fault_ticks: 0,
        liveness_ticks: 20_000,
        faults: Faults::none(),
        max_batch_commands: if batched { 64 } else { 1 },
        retry_ticks: 1_000,
        give_up_ticks: 1_000,
        // Per-slot mode has no leader: one node proposes everything, the steady state
        // the expected figures describe (clients spread over nodes also contend).
        client_nodes: (mode == Mode::PerSlot).then(|| vec![1]),
        check_linearizability: false,
        clients_prefer_leader: true,
        // Closed loop: clients start together and send their next command the moment
        // the previous one returns.
        max_think_units: 0,
        max_start_units: 0,
        measure_after_commands: 20,
        // Reads go through the log, as every command: the figures count commands.
        read_mix: ReadMix {
            linearizable: 0,
            log: 100,
        },
        ..SimOptions::chaos(7)
    }
}

pub fn run_row(mode: Mode, nodes: u64, clients: usize, batched: bool) -> BenchRow {
    let options = bench_options(mode, nodes, clients, batched);
    let (report, mut latencies) = Simulation::new(options).run_with_latencies();
    assert!(
        report.violations.is_empty(),
        "benchmark run had violations: {:?}",
        report.violations
    );
    latencies.sort_unstable();
    let delays = |units: u64| units as f64 / DELAY_UNIT as f64;
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map(|l| delays(*l))
            .unwrap_or(0.0)
    };
    let commands = report.measured_commands.max(1);
    BenchRow {
        mode: match mode {
            Mode::MultiPaxos => "multi",
            Mode::PerSlot => "per-slot",
        },
        nodes,
        clients,
        batched,
        commands: report.measured_commands,
        msgs_per_cmd: report.messages as f64 / commands as f64,
        delays_per_cmd: latencies.iter().map(|l| delays(*l)).sum::<f64>()
            / latencies.len().max(1) as f64,
        p50_delays: percentile(0.5),
        p99_delays: percentile(0.99),
        phase1_runs: report.phase1_runs,
    }
}

/// Every row of the benchmark: both modes, 3 and 5 nodes, 1 and 64 clients, with and
/// without batching. `progress` is called before each row.
pub fn run_all(mut progress: impl FnMut(usize, usize, &str)) -> Vec<BenchRow> {
    let mut plan = Vec::new();
    for mode in [Mode::MultiPaxos, Mode::PerSlot] {
        for nodes in [3, 5] {
            for clients in [1, 64] {
                for batched in [false, true] {
                    plan.push((mode, nodes, clients, batched));
                }
            }
        }
    }
    let total = plan.len();
    plan.into_iter()
        .enumerate()
        .map(|(i, (mode, nodes, clients, batched))| {
            progress(
                i,
                total,
                &format!("{mode:?} nodes={nodes} clients={clients} batched={batched}"),
            );
            run_row(mode, nodes, clients, batched)
        })
        .collect()
}

/// The rows as a Markdown table.
pub fn table(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "| mode | nodes | clients | batching | msgs/cmd | delays/cmd (mean) | p50 | p99 | commands |\n\
         |---|---:|---:|---|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {} |\n",
            row.mode,
            row.nodes,
            row.clients,
            if row.batched { "on" } else { "off" },
            row.msgs_per_cmd,
            row.delays_per_cmd,
            row.p50_delays,
            row.p99_delays,
            row.commands
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The steady state the protocol walk-through promises, unbatched with one client:
    /// Multi-Paxos costs one Accept round, 2(N−1) messages and 2 delays; per-slot Paxos
    /// two rounds, 4(N−1) messages and 4 delays.
    #[test]
    fn one_client_costs_one_round_in_multi_paxos_and_two_in_per_slot_mode() {
        for nodes in [3u64, 5] {
            let multi = run_row(Mode::MultiPaxos, nodes, 1, false);
            let expected = 2.0 * (nodes - 1) as f64;
            assert!(
                (multi.msgs_per_cmd - expected).abs() < 0.25,
                "multi-paxos {nodes} nodes: {multi:?}"
            );
            assert_eq!(multi.p50_delays, 2.0, "{multi:?}");
            let per_slot = run_row(Mode::PerSlot, nodes, 1, false);
            let expected = 4.0 * (nodes - 1) as f64;
            assert!(
                (per_slot.msgs_per_cmd - expected).abs() < 0.5,
                "per-slot {nodes} nodes: {per_slot:?}"
            );
            assert_eq!(per_slot.p50_delays, 4.0, "{per_slot:?}");
        }
    }

    #[test]
    fn batching_under_64_clients_costs_far_less_than_one_message_per_command() {
        for mode in [Mode::MultiPaxos, Mode::PerSlot] {
            let row = run_row(mode, 3, 64, true);
            assert!(row.msgs_per_cmd < 0.5, "{row:?}");
        }
        // Without batching, per-slot Paxos pays its four messages per peer per command.
        let row = run_row(Mode::PerSlot, 3, 64, false);
        assert!(row.msgs_per_cmd > 7.0, "{row:?}");
    }
}
