//! `synod bench …`: measurements that print a table and write JSON.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Write-ahead log appends with fdatasync (1 writer, N writers through group commit)
    /// next to the raw fdatasync rate of the same disk, measured in the same run.
    Storage {
        /// Directory on the disk to measure (created; the files are removed afterwards).
        #[arg(long, default_value = "synod-data/bench-storage")]
        dir: PathBuf,
        /// Concurrent writers submitting through group commit.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Bytes of client command per appended entry.
        #[arg(long, default_value_t = 128)]
        payload: usize,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(args: BenchArgs) -> ExitCode {
    match args.command {
        BenchCommand::Storage {
            dir,
            writers,
            payload,
            out,
        } => {
            let options = synod_storage::BenchOptions {
                concurrent_writers: writers,
                payload_bytes: payload,
                ..Default::default()
            };
            eprintln!("[bench storage] measuring in {} …", dir.display());
            let result = synod_storage::bench(&dir, options);
            let _ = std::fs::remove_dir_all(&dir);
            match result {
                Ok(report) => {
                    print!("{}", report.table());
                    let json = report.to_json();
                    println!("{json}");
                    if let Some(path) = out {
                        if let Err(error) = std::fs::write(&path, &json) {
                            eprintln!("cannot write {}: {error}", path.display());
                            return ExitCode::FAILURE;
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("storage bench failed: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
