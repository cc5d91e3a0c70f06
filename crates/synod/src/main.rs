//! `synod`: the one binary. See `synod --help`.

mod bench;
mod bench_mvcc;
mod chaos;
mod model_check;
mod sim;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc rather than the system allocator: every request allocates at several layers
/// (gRPC decode, log entry, peer frame, WAL record); see docs/server.md for the figures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run one replica: etcd v3 API for clients, TCP to its peers, a write-ahead log.
    Node(synod_server::cli::NodeArgs),
    /// A local 3-node cluster on 127.0.0.1:2379, :22379 and :32379 (Ctrl-C stops it).
    Dev(synod_server::cli::DevArgs),
    /// Backups: `synod snapshot restore FILE --data-dir DIR` starts a new cluster's member
    /// from what `etcdctl snapshot save` wrote.
    Snapshot(synod_server::cli::SnapshotArgs),
    /// Seeded cluster simulation with fault injection and the safety/liveness checkers.
    Sim(sim::SimArgs),
    /// Lin-kv workload against local `synod-maelstrom` processes, with partitions and
    /// delays, checked for linearizability (build `-p synod-maelstrom` first).
    MaelstromTest(synod_maelstrom::cli::HarnessArgs),
    /// Benchmarks: `synod bench storage`, `synod bench cluster`.
    Bench(bench::BenchArgs),
    /// Exhaustive model checking of synod-core in a small cluster (`--mutant list`
    /// names the deliberate bugs it must catch).
    ModelCheck(model_check::ModelCheckArgs),
    /// Jepsen-style: three real members under kill -9, SIGSTOP, iptables partitions,
    /// libfaketime clock rates and full disks, with concurrent clients; the history is
    /// checked for linearizability and lost writes (docs/chaos.md).
    Chaos(chaos::ChaosArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => report(synod_server::cli::run_node(args)),
        Command::Dev(args) => report(synod_server::cli::run_dev(args)),
        Command::Snapshot(args) => report(synod_server::cli::run_snapshot(args)),
        Command::Sim(args) => sim::run(args),
        Command::MaelstromTest(args) => synod_maelstrom::cli::run(args),
        Command::Bench(args) => bench::run(args),
        Command::ModelCheck(args) => model_check::run(args),
        Command::Chaos(args) => chaos::run(args),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("synod: {error:#}");
            ExitCode::FAILURE
        }
    }
}
