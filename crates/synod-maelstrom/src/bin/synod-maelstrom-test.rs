//! `synod-maelstrom-test`: the local lin-kv harness from the command line (the same as
//! `synod maelstrom-test`). Prints a Maelstrom-like summary, then one JSON verdict line.

use clap::Parser;
use std::process::ExitCode;
use synod_maelstrom::cli::{run, HarnessArgs};

#[derive(Parser)]
#[command(about = "Run a lin-kv workload against synod-maelstrom nodes and check linearizability")]
struct Cli {
    #[command(flatten)]
    args: HarnessArgs,
}

fn main() -> ExitCode {
    run(Cli::parse().args)
}
