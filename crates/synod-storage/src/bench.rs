//! `synod bench storage`: append throughput and latency of the log with fdatasync, for one
//! writer and for concurrent writers through group commit, next to the raw fdatasync
//! rate of the same directory measured in the same run.

use crate::error::StorageError;
use crate::group_commit::GroupCommit;
use crate::wal::{SyncMode, Wal, WalOptions};
use bytes::Bytes;
use serde::Serialize;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Instant;
use synod_core::{Ballot, Entry, PersistOp, PersistRequest, Value};

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Appends by the single writer (one request per append, one fdatasync each).
    pub single_writer_appends: usize,
    /// Concurrent writers submitting through `GroupCommit`.
    pub concurrent_writers: usize,
    pub appends_per_writer: usize,
    /// Size of the client command in each accepted entry.
    pub payload_bytes: usize,
    /// Iterations of each raw write + fdatasync loop.
    pub raw_syncs: usize,
    pub sync: SyncMode,
    /// The measurements run interleaved, each count split over this many rounds.
    pub rounds: usize,
}

impl Default for BenchOptions {
    fn default() -> BenchOptions {
        BenchOptions {
            single_writer_appends: 1000,
            concurrent_writers: 8,
            appends_per_writer: 500,
            payload_bytes: 128,
            raw_syncs: 1000,
            sync: SyncMode::Fsync,
            rounds: 4,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub name: String,
    pub writers: usize,
    pub appends: u64,
    /// fdatasync calls (or write calls, for the raw row).
    pub syncs: u64,
    pub seconds: f64,
    pub appends_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub dir: String,
    pub payload_bytes: usize,
    pub sync: SyncMode,
    /// Write + fdatasync of one record's bytes into a preallocated file: the disk's ceiling.
    pub raw_fdatasync_per_sec: f64,
    pub rows: Vec<BenchRow>,
}

impl BenchReport {
    pub fn table(&self) -> String {
        let mut out = format!(
            "storage bench in {} (payload {} B, sync {:?}): raw fdatasync {:.0}/s\n",
            self.dir, self.payload_bytes, self.sync, self.raw_fdatasync_per_sec
        );
        out.push_str(&format!(
            "{:<28} {:>7} {:>8} {:>8} {:>12} {:>9} {:>9} {:>9}\n",
            "measurement", "writers", "appends", "syncs", "appends/s", "p50 µs", "p99 µs", "max µs"
        ));
        for row in &self.rows {
            out.push_str(&format!(
                "{:<28} {:>7} {:>8} {:>8} {:>12.0} {:>9} {:>9} {:>9}\n",
                row.name,
                row.writers,
                row.appends,
                row.syncs,
                row.appends_per_sec,
                row.p50_us,
                row.p99_us,
                row.max_us
            ));
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
    }
}

/// The request the benchmark appends: what a leader's Accept of one command persists.
pub fn bench_request(id: u64, payload: &Bytes) -> PersistRequest {
    PersistRequest {
        id,
        ops: vec![PersistOp::Accept(Entry {
            slot: id,
            ballot: Ballot::new(1, 1),
            value: Value::Commands(vec![payload.clone()]),
        })],
    }
}

/// Nearest-rank percentile of sorted latencies.
pub fn percentile(sorted_us: &[u64], fraction: f64) -> u64 {
    if sorted_us.is_empty() {
        return 0;
    }
    let rank = ((fraction * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1]
}

fn row(name: &str, writers: usize, sample: Sample) -> BenchRow {
    let mut latencies_us = sample.latencies_us;
    latencies_us.sort_unstable();
    let appends = latencies_us.len() as u64;
    let seconds = sample.seconds;
    BenchRow {
        name: name.to_string(),
        writers,
        appends,
        syncs: sample.syncs,
        seconds,
        appends_per_sec: if seconds > 0.0 {
            appends as f64 / seconds
        } else {
            0.0
        },
        p50_us: percentile(&latencies_us, 0.50),
        p99_us: percentile(&latencies_us, 0.99),
        max_us: latencies_us.last().copied().unwrap_or(0),
    }
}

fn fresh_dir(path: &Path) -> Result<(), StorageError> {
    if path.exists() {
        fs::remove_dir_all(path).map_err(|error| StorageError::io(path, error))?;
    }
    fs::create_dir_all(path).map_err(|error| StorageError::io(path, error))
}

/// Latencies (µs) and elapsed seconds of one measurement, plus the syncs it made.
struct Sample {
    latencies_us: Vec<u64>,
    seconds: f64,
    syncs: u64,
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.latencies_us.extend(other.latencies_us);
        self.seconds += other.seconds;
        self.syncs += other.syncs;
    }
}

/// Write one record's bytes and fdatasync, `count` times: into a preallocated file (data
/// only, what the log does) or appending to a growing file (every sync also commits the
/// file size and block map).
fn raw_syncs(
    dir: &Path,
    record: &[u8],
    count: usize,
    preallocated: bool,
    sync: SyncMode,
) -> Result<Sample, StorageError> {
    let path = dir.join("bench-raw-fdatasync");
    let _ = fs::remove_file(&path);
    let io = |error| StorageError::io(&path, error);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    if preallocated {
        file.write_all(&vec![0u8; record.len() * count])
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
    }
    let mut latencies_us = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        let begin = Instant::now();
        file.write_all(record).map_err(io)?;
        if sync == SyncMode::Fsync {
            file.sync_data().map_err(io)?;
        }
        latencies_us.push(begin.elapsed().as_micros() as u64);
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(file);
    let _ = fs::remove_file(&path);
    Ok(Sample {
        latencies_us,
        seconds,
        syncs: count as u64,
    })
}

/// One writer, one request per append: one fdatasync per request.
fn single_writer(
    dir: &Path,
    payload: &Bytes,
    count: usize,
    options: &WalOptions,
) -> Result<Sample, StorageError> {
    let wal_dir = dir.join("bench-wal-single");
    fresh_dir(&wal_dir)?;
    let (mut wal, _) = Wal::open(&wal_dir, options.clone())?;
    let mut latencies_us = Vec::with_capacity(count);
    let started = Instant::now();
    for id in 1..=count as u64 {
        let request = bench_request(id, payload);
        let begin = Instant::now();
        wal.append(std::slice::from_ref(&request))?;
        latencies_us.push(begin.elapsed().as_micros() as u64);
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(wal);
    let _ = fs::remove_dir_all(&wal_dir);
    Ok(Sample {
        latencies_us,
        seconds,
        syncs: count as u64,
    })
}

/// `writers` threads, each waiting for its own request, through group commit.
fn group_commit(
    dir: &Path,
    payload: &Bytes,
    writers: usize,
    per_writer: usize,
    options: &WalOptions,
) -> Result<Sample, StorageError> {
    let wal_dir = dir.join("bench-wal-group");
    fresh_dir(&wal_dir)?;
    let (wal, _) = Wal::open(&wal_dir, options.clone())?;
    let group = Arc::new(GroupCommit::start(wal));
    let started = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|writer| {
            let group = Arc::clone(&group);
            let payload = payload.clone();
            let count = per_writer as u64;
            thread::spawn(move || -> Result<Vec<u64>, StorageError> {
                let mut latencies = Vec::with_capacity(count as usize);
                for index in 0..count {
                    let id = writer as u64 * count + index + 1;
                    let begin = Instant::now();
                    group.submit_and_wait(bench_request(id, &payload))?;
                    latencies.push(begin.elapsed().as_micros() as u64);
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies_us = Vec::new();
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(mut own)) => latencies_us.append(&mut own),
            Ok(Err(error)) => failure = Some(error),
            Err(_) => failure = Some(StorageError::Closed),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(error) = failure {
        return Err(error);
    }
    let syncs = group.stats().syncs;
    drop(group);
    let _ = fs::remove_dir_all(&wal_dir);
    Ok(Sample {
        latencies_us,
        seconds,
        syncs,
    })
}

/// Runs the measurements in `dir` (created if needed; its `bench-*` entries are replaced
/// and removed afterwards). The disk is shared with whatever else runs on the machine, so
/// the measurements are interleaved in `rounds` and each row aggregates all its rounds:
/// a burst of background writeback then hits every row alike.
pub fn bench(dir: &Path, options: BenchOptions) -> Result<BenchReport, StorageError> {
    fs::create_dir_all(dir).map_err(|error| StorageError::io(dir, error))?;
    let payload = Bytes::from(vec![0x5Au8; options.payload_bytes]);
    let record = {
        let mut buffer = Vec::new();
        let encoded = crate::record::encode_payload(&bench_request(1, &payload))
            .map_err(|reason| StorageError::Invalid { reason })?;
        crate::record::encode_record(1, crate::record::RecordKind::Request, &encoded, &mut buffer);
        buffer
    };
    let wal_options = WalOptions {
        segment_bytes: 64 << 20,
        sync: options.sync,
        ..WalOptions::default()
    };
    let rounds = options.rounds.max(1);
    let writers = options.concurrent_writers.max(1);
    let share = |total: usize| total.div_ceil(rounds).max(1);
    let empty = || Sample {
        latencies_us: Vec::new(),
        seconds: 0.0,
        syncs: 0,
    };
    let (mut raw_preallocated, mut raw_growing, mut single, mut group) =
        (empty(), empty(), empty(), empty());
    for _ in 0..rounds {
        raw_preallocated.merge(raw_syncs(
            dir,
            &record,
            share(options.raw_syncs),
            true,
            options.sync,
        )?);
        raw_growing.merge(raw_syncs(
            dir,
            &record,
            share(options.raw_syncs),
            false,
            options.sync,
        )?);
        single.merge(single_writer(
            dir,
            &payload,
            share(options.single_writer_appends),
            &wal_options,
        )?);
        group.merge(group_commit(
            dir,
            &payload,
            writers,
            share(options.appends_per_writer),
            &wal_options,
        )?);
    }
    let rows = vec![
        row("raw fdatasync, preallocated", 1, raw_preallocated),
        row("raw fdatasync, growing file", 1, raw_growing),
        row("wal append, 1 writer", 1, single),
        row(&format!("group commit, {writers} writers"), writers, group),
    ];
    Ok(BenchReport {
        dir: dir.display().to_string(),
        payload_bytes: options.payload_bytes,
        sync: options.sync,
        raw_fdatasync_per_sec: rows[0].appends_per_sec,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_reports_every_measurement_and_cleans_up() {
        let dir =
            std::env::temp_dir().join(format!("synod-storage-bench-test-{}", std::process::id()));
        let options = BenchOptions {
            single_writer_appends: 50,
            concurrent_writers: 4,
            appends_per_writer: 25,
            payload_bytes: 64,
            raw_syncs: 20,
            sync: SyncMode::None,
            rounds: 2,
        };
        let report = bench(&dir, options).expect("bench runs");
        let names: Vec<&str> = report.rows.iter().map(|row| row.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "raw fdatasync, preallocated",
                "raw fdatasync, growing file",
                "wal append, 1 writer",
                "group commit, 4 writers"
            ]
        );
        assert_eq!(report.rows[2].appends, 50);
        assert_eq!(
            report.rows[3].appends, 104,
            "4 writers x 13 per round x 2 rounds"
        );
        assert!(report.rows[3].syncs >= 2 && report.rows[3].syncs <= 104);
        assert!(report
            .rows
            .iter()
            .all(|row| row.p50_us <= row.p99_us && row.p99_us <= row.max_us));
        assert!(report.table().contains("group commit, 4 writers"));
        assert!(report.to_json().contains("\"raw_fdatasync_per_sec\""));
        assert_eq!(std::fs::read_dir(&dir).expect("bench dir").count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn percentile_uses_nearest_rank() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.5), 50);
        assert_eq!(percentile(&sorted, 0.99), 99);
        assert_eq!(percentile(&[], 0.5), 0);
        assert_eq!(percentile(&[7], 0.99), 7);
    }
}
