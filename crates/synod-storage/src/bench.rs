//! `synod bench storage`: append throughput and latency of the log with fdatasync, for one
//! writer and for concurrent writers through group commit, next to the raw fdatasync
//! rate of the same directory measured in the same run.

use crate::error::StorageError;
use crate::group_commit::GroupCommit;
use crate::wal::{SyncMode, Wal, WalOptions};
use bytes::Bytes;
use serde::Serialize;
use std::fs::{self, OpenOptions};
use std::io::Write;
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
    /// Iterations of the raw write + fdatasync loop.
    pub raw_syncs: usize,
    pub sync: SyncMode,
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

fn row(
    name: &str,
    writers: usize,
    syncs: u64,
    seconds: f64,
    mut latencies_us: Vec<u64>,
) -> BenchRow {
    latencies_us.sort_unstable();
    let appends = latencies_us.len() as u64;
    BenchRow {
        name: name.to_string(),
        writers,
        appends,
        syncs,
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

/// Runs the three measurements in `dir` (created if needed; its `bench-*` entries are
/// replaced and removed afterwards).
pub fn bench(dir: &Path, options: BenchOptions) -> Result<BenchReport, StorageError> {
    fs::create_dir_all(dir).map_err(|error| StorageError::io(dir, error))?;
    let payload = Bytes::from(vec![0x5Au8; options.payload_bytes]);
    let mut rows = Vec::new();

    // 1. Raw: append a record-sized write and fdatasync it, the floor under every engine.
    let raw_path = dir.join("bench-raw-fdatasync");
    let _ = fs::remove_file(&raw_path);
    let record_bytes = {
        let mut buffer = Vec::new();
        let encoded = crate::record::encode_payload(&bench_request(1, &payload))
            .map_err(|reason| StorageError::Invalid { reason })?;
        crate::record::encode_record(1, crate::record::RecordKind::Request, &encoded, &mut buffer);
        buffer
    };
    {
        let io = |error| StorageError::io(&raw_path, error);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&raw_path)
            .map_err(io)?;
        let mut latencies = Vec::with_capacity(options.raw_syncs);
        let started = Instant::now();
        for _ in 0..options.raw_syncs {
            let begin = Instant::now();
            file.write_all(&record_bytes).map_err(io)?;
            if options.sync == SyncMode::Fsync {
                file.sync_data().map_err(io)?;
            }
            latencies.push(begin.elapsed().as_micros() as u64);
        }
        let seconds = started.elapsed().as_secs_f64();
        rows.push(row(
            "raw write+fdatasync",
            1,
            options.raw_syncs as u64,
            seconds,
            latencies,
        ));
    }
    let _ = fs::remove_file(&raw_path);
    let raw_fdatasync_per_sec = rows[0].appends_per_sec;

    let wal_options = WalOptions {
        segment_bytes: 64 << 20,
        sync: options.sync,
    };

    // 2. One writer, one request per append: one fdatasync per request.
    let single_dir = dir.join("bench-wal-single");
    fresh_dir(&single_dir)?;
    {
        let (mut wal, _) = Wal::open(&single_dir, wal_options.clone())?;
        let mut latencies = Vec::with_capacity(options.single_writer_appends);
        let started = Instant::now();
        for id in 1..=options.single_writer_appends as u64 {
            let request = bench_request(id, &payload);
            let begin = Instant::now();
            wal.append(std::slice::from_ref(&request))?;
            latencies.push(begin.elapsed().as_micros() as u64);
        }
        let seconds = started.elapsed().as_secs_f64();
        rows.push(row(
            "wal append, 1 writer",
            1,
            options.single_writer_appends as u64,
            seconds,
            latencies,
        ));
    }
    let _ = fs::remove_dir_all(&single_dir);

    // 3. N writers, each waiting for its own request, through group commit.
    let group_dir = dir.join("bench-wal-group");
    fresh_dir(&group_dir)?;
    {
        let (wal, _) = Wal::open(&group_dir, wal_options)?;
        let group = Arc::new(GroupCommit::start(wal));
        let writers = options.concurrent_writers.max(1);
        let started = Instant::now();
        let handles: Vec<_> = (0..writers)
            .map(|writer| {
                let group = Arc::clone(&group);
                let payload = payload.clone();
                let count = options.appends_per_writer as u64;
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
        let mut latencies = Vec::new();
        let mut failure = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok(mut own)) => latencies.append(&mut own),
                Ok(Err(error)) => failure = Some(error),
                Err(_) => failure = Some(StorageError::Closed),
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        if let Some(error) = failure {
            return Err(error);
        }
        let stats = group.stats();
        rows.push(row(
            &format!("group commit, {writers} writers"),
            writers,
            stats.syncs,
            seconds,
            latencies,
        ));
    }
    let _ = fs::remove_dir_all(&group_dir);

    Ok(BenchReport {
        dir: dir.display().to_string(),
        payload_bytes: options.payload_bytes,
        sync: options.sync,
        raw_fdatasync_per_sec,
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
        };
        let report = bench(&dir, options).expect("bench runs");
        let names: Vec<&str> = report.rows.iter().map(|row| row.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "raw write+fdatasync",
                "wal append, 1 writer",
                "group commit, 4 writers"
            ]
        );
        assert_eq!(report.rows[1].appends, 50);
        assert_eq!(report.rows[2].appends, 100);
        assert!(report.rows[2].syncs >= 1 && report.rows[2].syncs <= 100);
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
