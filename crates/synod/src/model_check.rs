//! `synod model-check`: exhaustive model checking of synod-core (crates/synod-model).

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;
use synod_model::options::default_suite;
use synod_model::{trace, ModelOptions, Mutant, SynodModel};

#[derive(Args)]
pub struct ModelCheckArgs {
    /// Cluster size.
    #[arg(long)]
    nodes: Option<u64>,
    /// Do not explore states where a log reaches past this slot.
    #[arg(long)]
    slots: Option<u64>,
    /// Ballots (Phase 1 runs) started in all, by every node together.
    #[arg(long)]
    max_ballot: Option<u64>,
    /// Explore paths of at most this many actions (default: no bound but the others).
    #[arg(long)]
    depth: Option<usize>,
    /// Run a deliberate bug (`list` names them); the checker must find a counterexample.
    /// The synod-core ones need a build with `--features mutants`.
    #[arg(long)]
    mutant: Option<String>,
    /// Real-time ticks per node.
    #[arg(long)]
    ticks: Option<u8>,
    /// How far apart two nodes' clocks may be, in ticks.
    #[arg(long)]
    max_skew: Option<u8>,
    /// Distinct client values proposed.
    #[arg(long)]
    values: Option<u8>,
    /// Linearizable reads asked for.
    #[arg(long)]
    reads: Option<u8>,
    /// Crashes in all.
    #[arg(long)]
    crashes: Option<u8>,
    /// Log compactions in all.
    #[arg(long)]
    compactions: Option<u8>,
    /// Ticks some node's runtime stalls through (its core hears of the time only at
    /// its next input), in all.
    #[arg(long)]
    stalls: Option<u8>,
    /// Slow-disk episodes in all (outside them a persist is durable at once).
    #[arg(long)]
    slow_disks: Option<u8>,
    /// Early election timeouts in all (at a tick's start, whatever the random draw).
    #[arg(long)]
    timeouts: Option<u8>,
    /// Search depth-first (one thread, little memory) instead of breadth-first.
    #[arg(long)]
    depth_first: bool,
    /// Checker threads (breadth-first search only).
    #[arg(long, default_value_t = ModelOptions::default().threads)]
    threads: usize,
}

pub fn run(args: ModelCheckArgs) -> ExitCode {
    let mutant = match args.mutant.as_deref() {
        Some("list") => {
            list_mutants();
            return ExitCode::SUCCESS;
        }
        Some(name) => match name.parse::<Mutant>() {
            Ok(mutant) => Some(mutant),
            Err(error) => {
                eprintln!("synod model-check: {error}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let threads = args.threads;
    let suite: Vec<(&'static str, ModelOptions)> = match custom(&args) {
        Some(options) => vec![("custom", options)],
        None => default_suite(),
    };
    let suite: Vec<(&'static str, ModelOptions)> = suite
        .into_iter()
        .map(|(name, options)| {
            (
                name,
                ModelOptions {
                    threads,
                    mutant,
                    ..options
                },
            )
        })
        .collect();
    for (_, options) in &suite {
        if let Err(error) = options.validate() {
            eprintln!("synod model-check: {error}");
            return ExitCode::from(2);
        }
    }
    for (name, options) in &suite {
        eprintln!("[model-check] {name}: {}", describe(options));
    }
    let bar = spinner();
    let hidden = bar.is_hidden();
    let interval = if hidden {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(250)
    };
    let (report, found) = synod_model::check_suite(&suite, interval, |name, progress| {
        let line = format!(
            "{name}: {} states, {} unique, depth {}, {:.0} s",
            progress.states,
            progress.unique_states,
            progress.depth,
            progress.elapsed.as_secs_f64()
        );
        if hidden {
            eprintln!("[model-check] {line}");
        } else {
            bar.set_message(line);
        }
    });
    bar.finish_and_clear();
    for named in &report.configurations {
        eprintln!(
            "[model-check] {}: {} unique states, depth {}, complete {}, {:.1} s",
            named.name,
            named.report.unique_states,
            named.report.depth,
            named.report.complete,
            named.report.seconds
        );
    }
    for (name, options, discovery) in found.iter().filter(|(_, _, d)| d.failure) {
        println!(
            "counterexample to \"{}\" in configuration {name} ({} actions, a shortest one):",
            discovery.property,
            discovery.actions.len(),
        );
        let model = SynodModel::new(options.clone());
        print!(
            "{}",
            trace::render(&model, discovery.initial, &discovery.actions)
        );
        println!();
    }
    println!(
        "{}",
        serde_json::to_string(&report).expect("the report serializes")
    );
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One configuration from the defaults and the bounds given, or None when no bound was
/// given (then the default suite runs).
fn custom(args: &ModelCheckArgs) -> Option<ModelOptions> {
    let mut options = ModelOptions::default();
    let mut any = false;
    macro_rules! bound {
        ($field:ident) => {
            if let Some(value) = args.$field {
                options.$field = value;
                any = true;
            }
        };
    }
    bound!(nodes);
    bound!(slots);
    bound!(max_ballot);
    bound!(ticks);
    bound!(max_skew);
    bound!(values);
    bound!(reads);
    bound!(crashes);
    bound!(compactions);
    bound!(stalls);
    bound!(timeouts);
    bound!(slow_disks);
    if args.depth.is_some() {
        options.depth = args.depth;
        any = true;
    }
    if args.depth_first {
        options.depth_first = true;
        any = true;
    }
    any.then_some(options)
}

fn describe(options: &ModelOptions) -> String {
    format!(
        "{} nodes, {} slots, {} ballots, {} ticks (skew {}), {} values, {} read(s), {} crash(es), {} compaction(s), {} stall(s), {} slow disk(s), depth {}{}{}",
        options.nodes,
        options.slots,
        options.max_ballot,
        options.ticks,
        options.max_skew,
        options.values,
        options.reads,
        options.crashes,
        options.compactions,
        options.stalls,
        options.slow_disks,
        options.depth.map_or("unbounded".to_string(), |d| d.to_string()),
        if options.depth_first {
            " (depth-first)"
        } else {
            ""
        },
        options.mutant.map(|m| format!(", mutant {m}")).unwrap_or_default()
    )
}

fn list_mutants() {
    for mutant in Mutant::ALL {
        let note = if mutant.available() {
            ""
        } else {
            "  (needs a build with --features mutants)"
        };
        println!("{:<34} {}{note}", mutant.name(), mutant.description());
    }
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("[model-check] {spinner} {msg}").expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(250));
    } else {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}
