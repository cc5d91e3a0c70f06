//! The real crash test: a child process (this very test binary, re-executed) appends
//! under group commit and prints every acknowledged slot; the parent SIGKILLs it at a
//! random moment, reopens the log and checks that no acknowledged write is missing.
//! Repeated many times, with compactions in the child so some kills land mid-compaction.

mod common;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;
use synod_core::{Ballot, DurableState, Entry, PersistOp, PersistRequest, Value};
use synod_storage::{GroupCommit, SyncMode, Wal, WalOptions};

const CHILD_DIR_VAR: &str = "SYNOD_STORAGE_CRASH_CHILD_DIR";
const SEED_VAR: &str = "SYNOD_STORAGE_CRASH_SEED";
const RUNS: usize = 20;
const WRITERS: u64 = 4;

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 16 << 10,
        sync: SyncMode::Fsync,
        ..WalOptions::default()
    }
}

fn command_for(slot: u64) -> Bytes {
    Bytes::from(format!("slot {slot} {}", "x".repeat((slot % 97) as usize)))
}

fn request_for(id: u64, slot: u64) -> PersistRequest {
    PersistRequest {
        id,
        ops: vec![
            PersistOp::Promise(Ballot::new(1, 1)),
            PersistOp::Accept(Entry {
                slot,
                ballot: Ballot::new(1, 1),
                value: Value::Commands(vec![command_for(slot)]),
            }),
        ],
    }
}

/// The first slot a child run may use: beyond anything any earlier run wrote.
fn first_free_slot(state: &DurableState) -> u64 {
    let highest_entry = state.entries.keys().next_back().copied().unwrap_or(0);
    highest_entry
        .max(state.snapshot_slot)
        .max(state.commit_index)
        + 1
}

/// Child side: the test binary re-executed by the parent with `CHILD_DIR_VAR` set.
/// Appends until it is killed.
fn run_child(dir: &std::ffi::OsStr) {
    let (wal, state) = Wal::open(Path::new(dir), options()).expect("child opens the log");
    let first_slot = first_free_slot(&state);
    let group = Arc::new(GroupCommit::start(wal));
    let next_slot = Arc::new(AtomicU64::new(first_slot));
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (group, next_slot, stdout) = (
                Arc::clone(&group),
                Arc::clone(&next_slot),
                Arc::clone(&stdout),
            );
            thread::spawn(move || loop {
                let slot = next_slot.fetch_add(1, Ordering::SeqCst);
                let (sender, receiver) = mpsc::channel();
                let stdout = Arc::clone(&stdout);
                group.submit(
                    request_for(slot, slot),
                    Box::new(move |result| {
                        if result.is_ok() {
                            // Printed only after the completion: this slot is acknowledged.
                            let mut out = stdout.lock().expect("stdout lock");
                            let _ = writeln!(out, "ack {slot}");
                            let _ = out.flush();
                        }
                        let _ = sender.send(result.is_ok());
                    }),
                );
                if receiver.recv() != Ok(true) {
                    return;
                }
            })
        })
        .collect();
    // Compact now and then, so kills also land inside a compaction.
    loop {
        thread::sleep(Duration::from_millis(3));
        let through = next_slot.load(Ordering::SeqCst).saturating_sub(200);
        if through > first_slot && group.compact(through).is_err() {
            break;
        }
        if writers.iter().all(|writer| writer.is_finished()) {
            break;
        }
    }
}

/// Reopens the log after a kill and checks it; returns the state and whether a torn tail was cut.
fn check_recovered(
    dir: &Path,
    acknowledged: &[u64],
    run: usize,
    seed: u64,
) -> (DurableState, bool) {
    let (wal, state) = Wal::open(dir, options()).unwrap_or_else(|error| {
        panic!("run {run} (seed {seed}): the log does not verify: {error}")
    });
    for slot in acknowledged {
        if *slot <= state.snapshot_slot {
            continue;
        }
        match state.entries.get(slot) {
            Some((_, Value::Commands(commands))) if commands == &vec![command_for(*slot)] => {}
            other => {
                panic!("run {run} (seed {seed}): acknowledged slot {slot} lost or wrong: {other:?}")
            }
        }
    }
    // Every entry present is intact, whether or not its acknowledgement got out.
    for (slot, (_, value)) in &state.entries {
        assert_eq!(
            value,
            &Value::Commands(vec![command_for(*slot)]),
            "run {run} (seed {seed})"
        );
    }
    assert_eq!(wal.state(), &state);
    (state, wal.recovery_report().truncated.is_some())
}

#[test]
fn killed_writer_never_loses_an_acknowledged_write() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_VAR) {
        run_child(&dir);
        return;
    }
    let seed = std::env::var(SEED_VAR)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("crash test seed {seed} (rerun with {SEED_VAR}={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current test binary");
    let mut total_acknowledged = 0;
    let mut runs_with_torn_tail = 0;
    let mut final_snapshot_slot = 0;
    for run in 0..RUNS {
        let mut child = Command::new(&exe)
            .args([
                "killed_writer_never_loses_an_acknowledged_write",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let mut stdout = child.stdout.take().expect("child stdout");
        let reader = thread::spawn(move || {
            let mut output = String::new();
            let _ = stdout.read_to_string(&mut output);
            output
        });
        let delay_ms = rng.gen_range(20..250);
        thread::sleep(Duration::from_millis(delay_ms));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap child");
        assert!(
            !status.success(),
            "run {run} (seed {seed}): the child must die by the signal"
        );
        let output = reader.join().expect("reader thread");
        // Only whole lines count: a line cut by the kill was never fully acknowledged.
        let acknowledged: Vec<u64> = output
            .split_inclusive('\n')
            .filter(|line| line.ends_with('\n'))
            .filter_map(|line| line.trim_end().strip_prefix("ack "))
            .map(|slot| slot.parse().expect("slot number"))
            .collect();
        total_acknowledged += acknowledged.len();
        let (state, torn) = check_recovered(dir.path(), &acknowledged, run, seed);
        runs_with_torn_tail += usize::from(torn);
        final_snapshot_slot = state.snapshot_slot;
    }
    println!(
        "crash test: {total_acknowledged} acknowledged writes over {RUNS} kills, \
         {runs_with_torn_tail} torn tails cut, log compacted through slot {final_snapshot_slot}"
    );
    assert!(
        total_acknowledged > 0,
        "seed {seed}: no child ever acknowledged a write"
    );
}
