//! The harness's command line, shared by `synod maelstrom-test` and
//! `synod-maelstrom-test`.

use crate::harness::{self, HarnessOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `synod maelstrom-test` and `synod-maelstrom-test`.
#[derive(clap::Args, Debug, Clone)]
pub struct HarnessArgs {
    /// The node binary (default: synod-maelstrom next to this program).
    #[arg(long)]
    bin: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    node_count: usize,
    #[arg(long, default_value_t = 5)]
    concurrency: usize,
    #[arg(long, default_value_t = 3)]
    keys: u64,
    /// Workload duration, seconds.
    #[arg(long, default_value_t = 10.0)]
    time_limit: f64,
    /// Partition the network, alternating with healthy periods of this many seconds.
    #[arg(long)]
    partition_interval: Option<f64>,
    /// Message delay, milliseconds: uniform in [latency_min, latency_max].
    #[arg(long, default_value_t = 0)]
    latency_min: u64,
    #[arg(long, default_value_t = 2)]
    latency_max: u64,
    /// Client request timeout, seconds.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write each node's stderr to <dir>/<node>.log.
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// Runs the harness; exit code 1 when the history is not shown linearizable, 2 when
/// the cluster could not be started.
pub fn run(args: HarnessArgs) -> ExitCode {
    let binary = args.bin.unwrap_or_else(|| {
        let me = std::env::current_exe().unwrap_or_default();
        me.with_file_name(format!("synod-maelstrom{}", std::env::consts::EXE_SUFFIX))
    });
    if !binary.exists() {
        eprintln!(
            "maelstrom-test: no node binary at {} — build it with \
             `cargo build --release -p synod-maelstrom`, or pass --bin",
            binary.display()
        );
        return ExitCode::from(2);
    }
    let seconds = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let mut options = HarnessOptions::new(binary);
    options.nodes = args.node_count;
    options.clients = args.concurrency;
    options.keys = args.keys;
    options.duration = seconds(args.time_limit);
    options.partition_interval = args.partition_interval.map(seconds);
    options.latency_ms = (args.latency_min, args.latency_max.max(args.latency_min));
    options.client_timeout = seconds(args.timeout);
    options.seed = args.seed;
    options.node_log_dir = args.log_dir;
    match harness::run(options) {
        Ok(report) => {
            print!("{}", report.summary());
            println!("{}", report.verdict_json());
            ExitCode::from(if report.valid { 0 } else { 1 })
        }
        Err(error) => {
            eprintln!("maelstrom-test: {error}");
            ExitCode::from(2)
        }
    }
}
