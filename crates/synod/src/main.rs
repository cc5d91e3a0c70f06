//! `synod`: the one binary. See `synod --help`.

mod bench;
mod sim;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "synod",
    version,
    about = "Multi-Paxos replicated log and linearizable KV store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Seeded cluster simulation with fault injection and the safety/liveness checkers.
    Sim(sim::SimArgs),
    /// Lin-kv workload against local `synod-maelstrom` processes, with partitions and
    /// delays, checked for linearizability (build `-p synod-maelstrom` first).
    MaelstromTest(synod_maelstrom::cli::HarnessArgs),
    /// Benchmarks: `synod bench storage`.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => sim::run(args),
        Command::MaelstromTest(args) => synod_maelstrom::cli::run(args),
        Command::Bench(args) => bench::run(args),
    }
}
