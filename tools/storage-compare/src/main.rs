//! Engine comparison for Synod's acceptor log (docs/storage.md).
//!
//! Every engine gets the same work: `PersistRequest`s holding one accepted entry of
//! `payload` bytes, encoded with bincode, made durable (fdatasync or the engine's
//! equivalent) before the append returns. Two workloads:
//! * fixed batches: one writer appends `batch` requests per durable write;
//! * concurrent writers: `writers` threads each submit one request and wait for it, through
//!   the same group-commit front end (one thread drains all pending requests into one
//!   durable write), as `synod_storage::GroupCommit` does.
//!
//! `cargo run --release -- [DIR] [JSON_OUT]`

use bytes::Bytes;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::Instant;
use synod_core::{Ballot, Entry, PersistOp, PersistRequest, Value};

trait Engine: Send {
    /// Makes every request durable with one sync (or the engine's single commit).
    fn append_batch(&mut self, requests: &[PersistRequest]) -> Result<(), String>;
}

fn encode(request: &PersistRequest) -> Vec<u8> {
    bincode::serialize(request).expect("a persist request always encodes")
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

struct Synod(synod_storage::Wal);

impl Engine for Synod {
    fn append_batch(&mut self, requests: &[PersistRequest]) -> Result<(), String> {
        self.0.append(requests).map_err(|error| error.to_string())
    }
}

#[cfg(feature = "redb")]
mod redb_engine {
    use super::*;
    use redb::{Database, Durability, TableDefinition};

    const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");

    pub struct Redb(pub Database);

    pub fn open(dir: &Path) -> Result<Box<dyn Engine>, String> {
        let db = Database::create(dir.join("log.redb")).map_err(|error| error.to_string())?;
        Ok(Box::new(Redb(db)))
    }

    impl Engine for Redb {
        fn append_batch(&mut self, requests: &[PersistRequest]) -> Result<(), String> {
            let mut txn = self.0.begin_write().map_err(|error| error.to_string())?;
            txn.set_durability(Durability::Immediate)
                .map_err(|error| error.to_string())?;
            {
                let mut table = txn.open_table(LOG).map_err(|error| error.to_string())?;
                for request in requests {
                    table
                        .insert(request.id, encode(request).as_slice())
                        .map_err(|error| error.to_string())?;
                }
            }
            txn.commit().map_err(|error| error.to_string())
        }
    }
}

#[cfg(feature = "fjall")]
mod fjall_engine {
    use super::*;
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

    pub struct Fjall {
        db: Database,
        log: Keyspace,
    }

    pub fn open(dir: &Path) -> Result<Box<dyn Engine>, String> {
        let db = Database::builder(dir)
            .open()
            .map_err(|error| error.to_string())?;
        let log = db
            .keyspace("log", KeyspaceCreateOptions::default)
            .map_err(|error| error.to_string())?;
        Ok(Box::new(Fjall { db, log }))
    }

    impl Engine for Fjall {
        fn append_batch(&mut self, requests: &[PersistRequest]) -> Result<(), String> {
            let mut batch = self.db.batch().durability(Some(PersistMode::SyncData));
            for request in requests {
                batch.insert(&self.log, key(request.id), encode(request));
            }
            batch.commit().map_err(|error| error.to_string())
        }
    }
}

#[cfg(feature = "okaywal")]
mod okaywal_engine {
    use super::*;
    use okaywal::{LogVoid, WriteAheadLog};

    pub struct OkayWal(WriteAheadLog);

    pub fn open(dir: &Path) -> Result<Box<dyn Engine>, String> {
        let wal = WriteAheadLog::recover(dir, LogVoid).map_err(|error| error.to_string())?;
        Ok(Box::new(OkayWal(wal)))
    }

    impl Engine for OkayWal {
        fn append_batch(&mut self, requests: &[PersistRequest]) -> Result<(), String> {
            let mut entry = self.0.begin_entry().map_err(|error| error.to_string())?;
            for request in requests {
                entry
                    .write_chunk(&encode(request))
                    .map_err(|error| error.to_string())?;
            }
            entry
                .commit()
                .map(|_| ())
                .map_err(|error| error.to_string())
        }
    }
}

#[cfg(feature = "raft-engine")]
mod raft_engine_impl {
    use super::*;
    use raft_engine::{Config, Engine as RaftEngine, LogBatch};

    pub struct Raft(RaftEngine);

    pub fn open(dir: &Path) -> Result<Box<dyn Engine>, String> {
        let config = Config {
            dir: dir.display().to_string(),
            ..Config::default()
        };
        let engine = RaftEngine::open(config).map_err(|error| error.to_string())?;
        Ok(Box::new(Raft(engine)))
    }

    impl Engine for Raft {
        fn append_batch(&mut self, requests: &[PersistRequest]) -> Result<(), String> {
            let mut batch = LogBatch::default();
            for request in requests {
                batch
                    .put(1, key(request.id).to_vec(), encode(request))
                    .map_err(|error| error.to_string())?;
            }
            self.0
                .write(&mut batch, true)
                .map(|_| ())
                .map_err(|error| error.to_string())
        }
    }
}

fn engine_names() -> Vec<&'static str> {
    let mut names = vec!["synod-wal"];
    if cfg!(feature = "raft-engine") {
        names.push("raft-engine");
    }
    if cfg!(feature = "okaywal") {
        names.push("okaywal");
    }
    if cfg!(feature = "fjall") {
        names.push("fjall");
    }
    if cfg!(feature = "redb") {
        names.push("redb");
    }
    names
}

fn open_engine(name: &str, dir: &Path) -> Result<Box<dyn Engine>, String> {
    std::fs::create_dir_all(dir).map_err(|error| error.to_string())?;
    match name {
        "synod-wal" => {
            let (wal, _) = synod_storage::Wal::open(dir, synod_storage::WalOptions::default())
                .map_err(|error| error.to_string())?;
            Ok(Box::new(Synod(wal)))
        }
        #[cfg(feature = "redb")]
        "redb" => redb_engine::open(dir),
        #[cfg(feature = "fjall")]
        "fjall" => fjall_engine::open(dir),
        #[cfg(feature = "okaywal")]
        "okaywal" => okaywal_engine::open(dir),
        #[cfg(feature = "raft-engine")]
        "raft-engine" => raft_engine_impl::open(dir),
        other => Err(format!("engine {other} not built")),
    }
}

fn request(id: u64, payload: &Bytes) -> PersistRequest {
    PersistRequest {
        id,
        ops: vec![
            PersistOp::Accept(Entry {
                slot: id,
                ballot: Ballot::new(3, 1),
                value: Value::Commands(vec![payload.clone()]),
            }),
            PersistOp::Commit(id.saturating_sub(1)),
        ],
    }
}

#[derive(Serialize, Clone)]
struct Row {
    engine: String,
    workload: String,
    payload_bytes: usize,
    appends: u64,
    durable_writes: u64,
    seconds: f64,
    appends_per_sec: f64,
    /// Latency of one durable write (fixed batches) or of one request from submission to
    /// acknowledgement (concurrent writers).
    p50_us: u64,
    p99_us: u64,
    disk_bytes: u64,
}

fn percentile(sorted: &[u64], fraction: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return 0;
    };
    listing
        .filter_map(Result::ok)
        .map(|item| {
            let path = item.path();
            if path.is_dir() {
                dir_bytes(&path)
            } else {
                item.metadata().map(|meta| meta.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn fixed_batches(
    name: &str,
    dir: &Path,
    payload: &Bytes,
    batch: usize,
    writes: usize,
) -> Result<Row, String> {
    let mut engine = open_engine(name, dir)?;
    let mut latencies = Vec::with_capacity(writes);
    let mut next_id = 1;
    let started = Instant::now();
    for _ in 0..writes {
        let requests: Vec<PersistRequest> = (0..batch)
            .map(|offset| request(next_id + offset as u64, payload))
            .collect();
        next_id += batch as u64;
        let begin = Instant::now();
        engine.append_batch(&requests)?;
        latencies.push(begin.elapsed().as_micros() as u64);
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(engine);
    latencies.sort_unstable();
    let appends = (batch * writes) as u64;
    Ok(Row {
        engine: name.to_string(),
        workload: format!("batch {batch}"),
        payload_bytes: payload.len(),
        appends,
        durable_writes: writes as u64,
        seconds,
        appends_per_sec: appends as f64 / seconds,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        disk_bytes: dir_bytes(dir),
    })
}

type Pending = Vec<(PersistRequest, mpsc::Sender<Result<(), String>>)>;

#[derive(Default)]
struct Queue {
    pending: Pending,
    done: bool,
}

/// The group-commit front end: the same algorithm as `synod_storage::GroupCommit`.
fn concurrent_writers(
    name: &str,
    dir: &Path,
    payload: &Bytes,
    writers: usize,
    per_writer: usize,
) -> Result<Row, String> {
    let mut engine = open_engine(name, dir)?;
    let shared = Arc::new((Mutex::new(Queue::default()), Condvar::new()));
    let committer_shared = Arc::clone(&shared);
    let committer = thread::spawn(move || -> u64 {
        let (queue, wake) = &*committer_shared;
        let mut syncs = 0;
        loop {
            let pending = {
                let mut queue = queue.lock().expect("queue lock");
                while queue.pending.is_empty() && !queue.done {
                    queue = wake.wait(queue).expect("queue lock");
                }
                if queue.pending.is_empty() {
                    return syncs;
                }
                std::mem::take(&mut queue.pending)
            };
            let (requests, replies): (Vec<_>, Vec<_>) = pending.into_iter().unzip();
            let result = engine.append_batch(&requests);
            syncs += 1;
            for reply in replies {
                let _ = reply.send(result.clone());
            }
        }
    });
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|writer| {
            let shared = Arc::clone(&shared);
            let payload = payload.clone();
            thread::spawn(move || -> Result<Vec<u64>, String> {
                let (queue, wake) = &*shared;
                let mut latencies = Vec::with_capacity(per_writer);
                for index in 0..per_writer {
                    let id = (writer * per_writer + index + 1) as u64;
                    let (sender, receiver) = mpsc::channel();
                    let begin = Instant::now();
                    queue
                        .lock()
                        .expect("queue lock")
                        .pending
                        .push((request(id, &payload), sender));
                    wake.notify_one();
                    receiver.recv().map_err(|error| error.to_string())??;
                    latencies.push(begin.elapsed().as_micros() as u64);
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.join().map_err(|_| "writer panicked".to_string())??);
    }
    let seconds = started.elapsed().as_secs_f64();
    shared.0.lock().expect("queue lock").done = true;
    shared.1.notify_one();
    let syncs = committer
        .join()
        .map_err(|_| "committer panicked".to_string())?;
    latencies.sort_unstable();
    let appends = latencies.len() as u64;
    Ok(Row {
        engine: name.to_string(),
        workload: format!("{writers} writers"),
        payload_bytes: payload.len(),
        appends,
        durable_writes: syncs,
        seconds,
        appends_per_sec: appends as f64 / seconds,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        disk_bytes: dir_bytes(dir),
    })
}

fn raw_fdatasync_per_sec(dir: &Path, payload_bytes: usize, count: usize) -> f64 {
    use std::io::Write;
    let path = dir.join("raw-fdatasync");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("raw file");
    let buffer = vec![7u8; payload_bytes + 64];
    let started = Instant::now();
    for _ in 0..count {
        file.write_all(&buffer).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    rate
}

/// Time to open the engine again over what a workload left (recovery).
fn reopen_ms(name: &str, dir: &Path) -> Result<f64, String> {
    let started = Instant::now();
    let engine = open_engine(name, dir)?;
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    drop(engine);
    Ok(elapsed)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

type Workload = Box<dyn Fn(&str, &Path) -> Result<Row, String>>;

fn main() {
    let mut args = std::env::args().skip(1);
    let root = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("storage-compare"));
    let json_out = args.next().map(PathBuf::from);
    let writes: usize = std::env::var("COMPARE_WRITES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(200);
    let rounds: usize = std::env::var("COMPARE_ROUNDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("bench dir");

    let mut workloads: Vec<(String, usize, Workload)> = Vec::new();
    for payload_bytes in [128usize, 4096] {
        let payload = Bytes::from(vec![0xA5u8; payload_bytes]);
        for batch in [1usize, 16, 128] {
            let payload = payload.clone();
            workloads.push((
                format!("batch {batch}"),
                payload_bytes,
                Box::new(move |name, dir| fixed_batches(name, dir, &payload, batch, writes)),
            ));
        }
        for writers in [8usize, 32] {
            let payload = payload.clone();
            let per_writer = (writes * 4 / writers).max(10);
            workloads.push((
                format!("{writers} writers"),
                payload_bytes,
                Box::new(move |name, dir| {
                    concurrent_writers(name, dir, &payload, writers, per_writer)
                }),
            ));
        }
    }

    // Every round runs every (workload, engine) pair, engines back to back, so background
    // disk activity on this shared machine hits all engines alike; the table shows medians.
    let mut runs: Vec<(Row, f64)> = Vec::new();
    let mut raw_rates: Vec<(usize, f64)> = Vec::new();
    for round in 0..rounds {
        for payload_bytes in [128usize, 4096] {
            raw_rates.push((
                payload_bytes,
                raw_fdatasync_per_sec(&root, payload_bytes, writes),
            ));
        }
        for (label, payload_bytes, workload) in &workloads {
            for name in engine_names() {
                let dir =
                    root.join(format!("{name}-{round}-{payload_bytes}-{label}").replace(' ', "_"));
                let outcome =
                    workload(name, &dir).and_then(|row| Ok((row, reopen_ms(name, &dir)?)));
                match outcome {
                    Ok(run) => runs.push(run),
                    Err(error) => eprintln!("{name} {label} {payload_bytes} B failed: {error}"),
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }

    println!(
        "medians of {rounds} rounds; {writes} durable writes per fixed-batch run, {} requests per concurrent run",
        writes * 4
    );
    println!("| payload B | workload | engine | appends/s | p50 µs | p99 µs | durable writes | disk bytes | reopen ms |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for (label, payload_bytes, _) in &workloads {
        for name in engine_names() {
            let mine: Vec<&(Row, f64)> = runs
                .iter()
                .filter(|(row, _)| {
                    row.engine == name
                        && &row.workload == label
                        && row.payload_bytes == *payload_bytes
                })
                .collect();
            if mine.is_empty() {
                println!("| {payload_bytes} | {label} | {name} | failed | | | | | |");
                continue;
            }
            let pick = |value: &dyn Fn(&(Row, f64)) -> f64| {
                median(mine.iter().map(|run| value(run)).collect())
            };
            let appends_per_sec = pick(&|(row, _)| row.appends_per_sec);
            let p50 = pick(&|(row, _)| row.p50_us as f64);
            let p99 = pick(&|(row, _)| row.p99_us as f64);
            let syncs = pick(&|(row, _)| row.durable_writes as f64);
            let disk = pick(&|(row, _)| row.disk_bytes as f64);
            let reopen = pick(&|(_, reopen)| *reopen);
            println!(
                "| {payload_bytes} | {label} | {name} | {appends_per_sec:.0} | {p50:.0} | {p99:.0} | {syncs:.0} | {disk:.0} | {reopen:.1} |"
            );
            summary.push(serde_json::json!({
                "engine": name, "workload": label, "payload_bytes": payload_bytes,
                "appends_per_sec": appends_per_sec, "p50_us": p50, "p99_us": p99,
                "durable_writes": syncs, "disk_bytes": disk, "reopen_ms": reopen,
            }));
        }
    }
    for payload_bytes in [128usize, 4096] {
        let rates: Vec<f64> = raw_rates
            .iter()
            .filter(|(size, _)| *size == payload_bytes)
            .map(|(_, rate)| *rate)
            .collect();
        println!(
            "raw write({} B)+fdatasync, growing file, in {}: median {:.0}/s over {rounds} rounds",
            payload_bytes + 64,
            root.display(),
            median(rates)
        );
    }
    if let Some(path) = json_out {
        let all: Vec<_> = runs
            .iter()
            .map(|(row, reopen)| serde_json::json!({"row": row, "reopen_ms": reopen}))
            .collect();
        let json = serde_json::json!({ "raw_fdatasync_per_sec": raw_rates, "medians": summary, "runs": all });
        std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json"))
            .expect("write json");
    }
}
