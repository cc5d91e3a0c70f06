//! `synod model-check`: exhaustive model checking of synod-core (crates/synod-model).

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;
use synod_model::{trace, ModelOptions, Mutant, SynodModel};

#[derive(Args)]
pub struct ModelCheckArgs {
    /// Cluster size.
    #[arg(long, default_value_t = ModelOptions::default().nodes)]
    nodes: u64,
    /// Do not explore states where a log reaches past this slot.
    #[arg(long, default_value_t = ModelOptions::default().slots)]
    slots: u64,
    /// Ballots (Phase 1 runs) started in all, by every node together.
    #[arg(long, default_value_t = ModelOptions::default().max_ballot)]
    max_ballot: u64,
    /// Explore paths of at most this many actions (default: no bound but the others).
    #[arg(long)]
    depth: Option<usize>,
    /// Run a deliberate bug (`list` names them); the checker must find a counterexample.
    /// The synod-core ones need a build with `--features mutants`.
    #[arg(long)]
    mutant: Option<String>,
    /// Real-time ticks per node.
    #[arg(long, default_value_t = ModelOptions::default().ticks)]
    ticks: u8,
    /// How far apart two nodes' clocks may be, in ticks.
    #[arg(long, default_value_t = ModelOptions::default().max_skew)]
    max_skew: u8,
    /// Distinct client values proposed.
    #[arg(long, default_value_t = ModelOptions::default().values)]
    values: u8,
    /// Linearizable reads asked for.
    #[arg(long, default_value_t = ModelOptions::default().reads)]
    reads: u8,
    /// Crashes in all.
    #[arg(long, default_value_t = ModelOptions::default().crashes)]
    crashes: u8,
    /// Log compactions in all.
    #[arg(long, default_value_t = ModelOptions::default().compactions)]
    compactions: u8,
    /// Duplicated deliveries in all.
    #[arg(long, default_value_t = ModelOptions::default().duplicates)]
    duplicates: u8,
    /// Slow-disk episodes in all (outside them a persist is durable at once).
    #[arg(long, default_value_t = ModelOptions::default().slow_disks)]
    slow_disks: u8,
    /// A message not delivered within this many ticks is lost (default 0: delivered
    /// within the tick it was sent in, or never).
    #[arg(long, default_value = "0")]
    max_delay: Option<u8>,
    /// Checker threads.
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
    let options = ModelOptions {
        nodes: args.nodes,
        slots: args.slots,
        max_ballot: args.max_ballot,
        depth: args.depth,
        ticks: args.ticks,
        max_skew: args.max_skew,
        values: args.values,
        reads: args.reads,
        crashes: args.crashes,
        compactions: args.compactions,
        duplicates: args.duplicates,
        slow_disks: args.slow_disks,
        max_delay: args.max_delay,
        threads: args.threads,
        mutant,
        ..ModelOptions::default()
    };
    if let Err(error) = options.validate() {
        eprintln!("synod model-check: {error}");
        return ExitCode::from(2);
    }
    eprintln!(
        "[model-check] {} nodes, {} slots, {} ballots, {} ticks (skew {}, max delay {:?}), {} values, {} read(s), {} crash(es), {} compaction(s), {} duplicate(s), {} slow disk(s){}",
        options.nodes,
        options.slots,
        options.max_ballot,
        options.ticks,
        options.max_skew,
        options.max_delay,
        options.values,
        options.reads,
        options.crashes,
        options.compactions,
        options.duplicates,
        options.slow_disks,
        mutant.map(|m| format!(", mutant {m}")).unwrap_or_default()
    );
    let bar = spinner();
    let hidden = bar.is_hidden();
    let interval = if hidden {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(250)
    };
    let (report, found) = synod_model::check(&options, interval, |progress| {
        let line = format!(
            "{} states, {} unique, depth {}, {:.0} s",
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
    let model = SynodModel::new(options);
    for discovery in found.iter().filter(|d| d.failure) {
        println!(
            "counterexample to \"{}\" ({} actions; the search found {}):",
            discovery.property,
            discovery.actions.len(),
            discovery.found_length
        );
        print!("{}", trace::render(&model, &discovery.actions));
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
