//! `synod bench mvcc`: the memory the KV store's history takes. Each layout of writes runs in
//! a child process of its own (so one run's freed memory does not hide the next one's), which
//! applies the puts through `StateMachine::apply` as the log would, then reports its resident
//! set, the quota's estimate of the history, the snapshot's size, and the same after a
//! compaction at the latest revision. A measurement, not a test.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::Args;
use serde::{Deserialize, Serialize};
use synod_kv::{CompactRequest, KvStore, Op, PutRequest, StateMachine, DEFAULT_MAX_SESSIONS};

#[derive(Args, Clone)]
pub struct MvccArgs {
    /// Revisions to write (one put each).
    #[arg(long, default_value_t = 1_000_000)]
    revisions: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run one layout (how many distinct keys) in this process and print its row as JSON.
    #[arg(long, hide = true)]
    only_keys: Option<u64>,
}

/// One layout's measurements.
#[derive(Serialize, Deserialize)]
struct Row {
    keys: u64,
    revisions: u64,
    value_bytes: usize,
    rss_before_bytes: u64,
    rss_history_bytes: u64,
    history_estimate_bytes: u64,
    snapshot_bytes: u64,
    snapshot_freeze_us: u64,
    /// Encoding the frozen store into the snapshot's bytes (what a member's blocking
    /// thread does every `--snapshot-count` slots).
    #[serde(default)]
    snapshot_encode_ms: f64,
    rss_after_compaction_bytes: u64,
    estimate_after_compaction_bytes: u64,
    apply_seconds: f64,
}

/// The resident set of this process (Linux `/proc/self/statm`); 0 elsewhere.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn put(store: &mut KvStore, slot: u64, key: u64, value: &[u8]) {
    let command = synod_kv::Command::unsessioned(Op::Put(PutRequest {
        key: format!("key/{key:08}").into_bytes().into(),
        value: value.to_vec().into(),
        ..PutRequest::default()
    }));
    store.apply(slot, &command.encode());
}

fn measure(keys: u64, revisions: u64, value_bytes: usize) -> Row {
    let value = vec![b'v'; value_bytes];
    let rss_before_bytes = rss_bytes();
    let mut store = KvStore::with_max_sessions(DEFAULT_MAX_SESSIONS).with_quota_bytes(u64::MAX);
    let started = Instant::now();
    for slot in 1..=revisions {
        put(&mut store, slot, slot % keys, &value);
    }
    let apply_seconds = started.elapsed().as_secs_f64();
    let rss_history_bytes = rss_bytes().saturating_sub(rss_before_bytes);
    let history_estimate_bytes = store.history_bytes();
    let frozen = Instant::now();
    let job = store.snapshot_job();
    let snapshot_freeze_us = frozen.elapsed().as_micros() as u64;
    let encoding = Instant::now();
    let snapshot_bytes = job().len() as u64;
    let snapshot_encode_ms = encoding.elapsed().as_secs_f64() * 1000.0;
    let compact = synod_kv::Command::unsessioned(Op::Compact(CompactRequest {
        revision: store.revision(),
        physical: true,
    }));
    store.apply(revisions + 1, &compact.encode());
    Row {
        keys,
        revisions,
        value_bytes,
        rss_before_bytes,
        rss_history_bytes,
        history_estimate_bytes,
        snapshot_bytes,
        snapshot_freeze_us,
        snapshot_encode_ms,
        rss_after_compaction_bytes: rss_bytes().saturating_sub(rss_before_bytes),
        estimate_after_compaction_bytes: store.history_bytes(),
        apply_seconds,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| keys | revisions | value B | RSS MiB | RSS B/revision | quota estimate MiB | snapshot MiB | freeze µs | encode ms | RSS after compaction MiB | estimate after MiB | apply s |\n\
         | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.2} |\n",
            row.keys,
            row.revisions,
            row.value_bytes,
            mib(row.rss_history_bytes),
            row.rss_history_bytes / row.revisions.max(1),
            mib(row.history_estimate_bytes),
            mib(row.snapshot_bytes),
            row.snapshot_freeze_us,
            row.snapshot_encode_ms,
            mib(row.rss_after_compaction_bytes),
            mib(row.estimate_after_compaction_bytes),
            row.apply_seconds,
        ));
    }
    out
}

pub fn run(args: MvccArgs) -> ExitCode {
    if let Some(keys) = args.only_keys {
        let row = measure(keys.max(1), args.revisions, args.value_bytes);
        match serde_json::to_string(&row) {
            Ok(json) => println!("{json}"),
            Err(error) => {
                eprintln!("{error}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("cannot find this executable to run the layouts in");
        return ExitCode::FAILURE;
    };
    let mut rows = Vec::new();
    for keys in [1, 10_000, args.revisions] {
        eprintln!(
            "[bench mvcc] {} revisions over {keys} keys …",
            args.revisions
        );
        let output = Command::new(&exe)
            .args(["bench", "mvcc", "--revisions", &args.revisions.to_string()])
            .args(["--value-bytes", &args.value_bytes.to_string()])
            .args(["--only-keys", &keys.to_string()])
            .output();
        let row = output
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| serde_json::from_slice::<Row>(&output.stdout).ok());
        match row {
            Some(row) => rows.push(row),
            None => {
                eprintln!("the layout with {keys} keys failed");
                return ExitCode::FAILURE;
            }
        }
    }
    print!("{}", table(&rows));
    let json = serde_json::to_string_pretty(&rows).unwrap_or_default();
    println!("{json}");
    if let Some(path) = args.out {
        if let Err(error) = std::fs::write(&path, json + "\n") {
            eprintln!("cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
