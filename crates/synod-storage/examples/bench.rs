//! Runs the storage benchmark and prints its table, then its JSON.
//!
//! `cargo run --release -p synod-storage --example bench -- [DIR] [WRITERS] [PAYLOAD_BYTES]`
//! (the `synod bench storage` command calls the same `synod_storage::bench`).

use std::path::PathBuf;
use synod_storage::{bench, BenchOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("synod-storage-bench"));
    let mut options = BenchOptions::default();
    if let Some(writers) = args.next().and_then(|value| value.parse().ok()) {
        options.concurrent_writers = writers;
    }
    if let Some(payload_bytes) = args.next().and_then(|value| value.parse().ok()) {
        options.payload_bytes = payload_bytes;
    }
    match bench(&dir, options) {
        Ok(report) => {
            print!("{}", report.table());
            println!("{}", report.to_json());
        }
        Err(error) => {
            eprintln!("storage bench failed: {error}");
            std::process::exit(1);
        }
    }
}
