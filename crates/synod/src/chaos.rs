//! `synod chaos`: real members, real faults, the history checked (docs/chaos.md).

use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use synod_chaos::nemesis::ClockSkew;
use synod_chaos::{ChaosOptions, FaultKind, Progress};

#[derive(Args)]
pub struct ChaosArgs {
    /// Seconds of faults under load (then a heal, a calm tail and the final reads).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seeds the nemesis and the clients; a run reproduces its schedule from it.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Faults to inject, comma-separated: kill, pause, partition, clock, disk. One whose
    /// prerequisite is missing (root, iptables, libfaketime) is skipped with its reason.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kill,pause,partition,clock,disk"
    )]
    faults: Vec<String>,
    /// Concurrent clients, spread over the three members.
    #[arg(long, default_value_t = 6)]
    clients: u32,
    /// The members' --read-mode: lease or read-index.
    #[arg(long, default_value = "lease")]
    read_mode: String,
    /// Keys the clients share (fewer: more contention, harder checks).
    #[arg(long, default_value_t = 8)]
    keys: u32,
    /// The members' --max-clock-drift-percent.
    #[arg(long, default_value_t = 10)]
    max_clock_drift_percent: u64,
    /// Clock-rate ratios of clock faults: within the drift bound, beyond it, or mixed
    /// [default: within in lease mode, mixed in read-index mode].
    #[arg(long, value_enum)]
    clock_skew: Option<Skew>,
    /// Keep data, logs and history.jsonl here [default: a temporary directory, removed].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Linearizability search steps per key before the verdict is "unknown".
    #[arg(long, default_value_t = 20_000_000)]
    check_budget: u64,
    /// Per-request deadline of the clients, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    deadline_ms: u64,
    /// A line per fault instead of a progress bar (for logs).
    #[arg(long)]
    quiet: bool,
    /// (internal) Print this process's monotonic-clock reading after a 300 ms sleep.
    #[arg(long, hide = true)]
    clock_probe: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Skew {
    Within,
    Beyond,
    Mixed,
}

struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn start(&self, seconds: u64) {
        self.0.set_length(seconds);
    }
    fn update(&self, elapsed_s: u64, line: &str) {
        self.0.set_position(elapsed_s);
        self.0.set_message(line.to_string());
    }
    fn note(&self, line: &str) {
        self.0.println(line);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// `--quiet`: a line whenever the nemesis starts something new.
struct Lines(std::sync::Mutex<String>);

impl Progress for Lines {
    fn start(&self, seconds: u64) {
        eprintln!("synod chaos: {seconds} s of faults");
    }
    fn update(&self, elapsed_s: u64, line: &str) {
        let fault = line.rsplit(" | ").next().unwrap_or_default().to_string();
        if let Ok(mut last) = self.0.lock() {
            if *last != fault {
                eprintln!("[{elapsed_s:>4} s] {line}");
                *last = fault;
            }
        }
    }
    fn note(&self, line: &str) {
        eprintln!("{line}");
    }
    fn finish(&self) {}
}

fn bar() -> Bar {
    let bar = indicatif::ProgressBar::new(0);
    let style =
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} s {msg}")
            .map(|style| style.progress_chars("=> "))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Bar(bar)
}

fn options(args: &ChaosArgs) -> Result<ChaosOptions, String> {
    let executable = std::env::current_exe()
        .map_err(|error| format!("cannot locate the synod executable: {error}"))?;
    let mut faults = Vec::new();
    for name in args.faults.iter().filter(|name| !name.trim().is_empty()) {
        let kind = FaultKind::parse(name).ok_or_else(|| {
            format!("unknown fault {name:?} (choose from kill, pause, partition, clock, disk)")
        })?;
        faults.push(kind);
    }
    if !matches!(args.read_mode.as_str(), "lease" | "read-index") {
        return Err(format!(
            "--read-mode {:?}: choose lease or read-index",
            args.read_mode
        ));
    }
    if args.clients == 0 || args.keys == 0 {
        return Err("--clients and --keys must be positive".into());
    }
    let clock_skew = match (args.clock_skew, args.read_mode.as_str()) {
        (Some(Skew::Within), _) | (None, "lease") => ClockSkew::Within,
        (Some(Skew::Beyond), _) => ClockSkew::Beyond,
        (Some(Skew::Mixed), _) | (None, _) => ClockSkew::Mixed,
    };
    Ok(ChaosOptions {
        executable,
        clock_probe_args: vec!["chaos".into(), "--clock-probe".into()],
        duration: Duration::from_secs(args.duration),
        seed: args.seed,
        faults,
        clients: args.clients,
        keys: args.keys,
        read_mode: args.read_mode.clone(),
        max_clock_drift_percent: args.max_clock_drift_percent,
        clock_skew,
        out: args.out.clone(),
        check_budget: args.check_budget,
        deadline: Duration::from_millis(args.deadline_ms),
    })
}

pub fn run(args: ChaosArgs) -> ExitCode {
    if args.clock_probe {
        println!("{}", synod_chaos::clock::probe_body());
        return ExitCode::SUCCESS;
    }
    let options = match options(&args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("synod chaos: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = if args.quiet {
        synod_chaos::run(&options, &Lines(std::sync::Mutex::new(String::new())))
    } else {
        synod_chaos::run(&options, &bar())
    };
    match outcome {
        Ok(report) => {
            print!("{}", report.text());
            println!("{}", report.json());
            ExitCode::from(report.exit_code())
        }
        Err(error) => {
            eprintln!("synod chaos: {error}");
            ExitCode::from(2)
        }
    }
}
