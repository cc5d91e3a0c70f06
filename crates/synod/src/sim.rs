//! `synod sim`: many seeds with faults, one seed in detail, or the protocol benchmark.

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use synod_sim::{bench, runner};

#[derive(Args)]
pub struct SimArgs {
    #[command(subcommand)]
    command: Option<SimCommand>,
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run this one seed and print its full report (replays a failure exactly).
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    seed: Option<u64>,
    /// Threads running seeds (default: every core).
    #[arg(long)]
    jobs: Option<usize>,
    /// With --seed: print the event trace of the run (stderr).
    #[arg(long, requires = "seed")]
    trace: bool,
    /// Let the simulated clocks drift up to this many percent while the nodes still
    /// assume their configured bound (10 %): far above it, lease reads go stale and the
    /// checkers must say so.
    #[arg(long)]
    clock_drift_percent: Option<u64>,
    /// Every seed's linearizable reads in this mode (default: the swarm draws lease or
    /// read-index per seed). With `read-index`, no clock drift makes a read stale.
    #[arg(long, value_enum)]
    read_mode: Option<ReadModeArg>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReadModeArg {
    Lease,
    ReadIndex,
}

impl From<ReadModeArg> for synod_core::ReadMode {
    fn from(mode: ReadModeArg) -> synod_core::ReadMode {
        match mode {
            ReadModeArg::Lease => synod_core::ReadMode::Lease,
            ReadModeArg::ReadIndex => synod_core::ReadMode::ReadIndex,
        }
    }
}

#[derive(Subcommand)]
enum SimCommand {
    /// Messages and message delays per committed command: Multi-Paxos vs per-slot Paxos.
    Bench {
        /// Also write the rows as a JSON array to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(args: SimArgs) -> ExitCode {
    match args.command {
        Some(SimCommand::Bench { out }) => return run_bench(out),
        None => {}
    }
    let settings = runner::RunSettings {
        clock_drift_percent: args.clock_drift_percent,
        read_mode: args.read_mode.map(Into::into),
        trace: args.trace,
    };
    if let Some(seed) = args.seed {
        let options = runner::options_for_seed(seed, &settings);
        eprintln!("seed {seed}: {options:?}");
        let mut report = runner::run_seed(seed, &settings);
        for line in std::mem::take(&mut report.trace) {
            eprintln!("{line}");
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
        return if report.violations.is_empty() {
            ExitCode::SUCCESS
        } else {
            eprint!("{}", runner::describe(&report));
            ExitCode::FAILURE
        };
    }
    let bar = progress_bar(args.seeds);
    let mut violations = 0;
    let mut done = 0u64;
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let summary = runner::run_seeds(args.first_seed, args.seeds, jobs, &settings, |report| {
        done += 1;
        if !report.violations.is_empty() {
            violations += report.violations.len();
            bar.suspend(|| eprint!("{}", runner::describe(report)));
        }
        bar.set_message(format!("violations {violations}"));
        bar.inc(1);
        if bar.is_hidden() && (done.is_multiple_of(25) || done == args.seeds) {
            eprintln!("[sim] {done}/{} seeds, violations {violations}", args.seeds);
        }
    });
    bar.finish_and_clear();
    println!(
        "{}",
        serde_json::to_string(&summary).expect("summary serializes")
    );
    if summary.violations > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("[sim] {bar:30} {pos}/{len} seeds {msg} ({eta})")
                .expect("valid template"),
        );
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}

fn run_bench(out: Option<PathBuf>) -> ExitCode {
    let rows = bench::run_all(|i, total, what| eprintln!("[sim bench] {}/{total} {what}", i + 1));
    print!("{}", bench::table(&rows));
    for row in &rows {
        println!("{}", serde_json::to_string(row).expect("row serializes"));
    }
    if let Some(path) = out {
        let json = serde_json::to_string_pretty(&rows).expect("rows serialize");
        if let Err(error) = std::fs::write(&path, json) {
            eprintln!("cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
