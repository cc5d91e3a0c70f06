//! The machine's own limits and description: the disk's `fdatasync` latency, the loopback
//! round-trip time, CPU time of processes (from `/proc`), the CPU model and the date.

use crate::error::BenchError;
use serde::Serialize;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What the README says the numbers were measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_mib: u64,
    /// The 1-minute load average when the run started: other work on a shared machine
    /// shows here.
    pub load_average_1m: f64,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| format!("Linux {}", release.trim()))
            .unwrap_or_else(|_| std::env::consts::OS.to_string());
        let memory_mib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|meminfo| {
                let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
                let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kib / 1024)
            })
            .unwrap_or(0);
        let load_average_1m = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|loadavg| loadavg.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |count| count.get()),
            cpu_model,
            kernel,
            memory_mib,
            load_average_1m,
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} CPUs ({}), {} MiB RAM, {}",
            self.cpus, self.cpu_model, self.memory_mib, self.kernel
        )
    }
}

/// A latency sample summarised, in microseconds.
#[derive(Clone, Copy, Default, PartialEq, Debug, Serialize)]
pub struct Sampled {
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub per_sec: f64,
}

fn summarise(mut micros: Vec<f64>, seconds: f64) -> Sampled {
    if micros.is_empty() {
        return Sampled::default();
    }
    micros.sort_by(f64::total_cmp);
    let at = |fraction: f64| {
        let rank = ((fraction * micros.len() as f64).ceil() as usize).clamp(1, micros.len());
        micros[rank - 1]
    };
    Sampled {
        count: micros.len(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: at(1.0),
        per_sec: if seconds > 0.0 {
            micros.len() as f64 / seconds
        } else {
            0.0
        },
    }
}

/// A file preallocated in a directory, rewritten block by block in a ring and synced:
/// only data is flushed, as in the log's preallocated segments. Removed on drop.
struct ProbeFile {
    path: std::path::PathBuf,
    file: fs::File,
    block: Vec<u8>,
    next: usize,
}

impl ProbeFile {
    const RING_BLOCKS: usize = 256;

    fn create(path: std::path::PathBuf, block_bytes: usize) -> std::io::Result<ProbeFile> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)?;
        let block = vec![0x5a_u8; block_bytes.max(1)];
        for _ in 0..ProbeFile::RING_BLOCKS {
            file.write_all(&block)?;
        }
        file.sync_all()?;
        Ok(ProbeFile {
            path,
            file,
            block,
            next: 0,
        })
    }

    /// Writes the next block and fdatasyncs it.
    fn write_and_sync(&mut self) -> std::io::Result<()> {
        let offset = (self.next % ProbeFile::RING_BLOCKS) * self.block.len();
        self.next += 1;
        self.file.seek(SeekFrom::Start(offset as u64))?;
        self.file.write_all(&self.block)?;
        self.file.sync_data()
    }
}

impl Drop for ProbeFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn create_dir(dir: &Path) -> Result<(), BenchError> {
    fs::create_dir_all(dir)
        .map_err(|error| BenchError::new(format!("creating {}: {error}", dir.display())))
}

/// Write `block_bytes` then `fdatasync`, `iterations` times, in a file preallocated in
/// `dir` (overwriting the same blocks in a ring, so only data is flushed, as in the log's
/// preallocated segments). The file is removed afterwards.
pub fn fdatasync_latency(
    dir: &Path,
    iterations: usize,
    block_bytes: usize,
) -> Result<Sampled, BenchError> {
    create_dir(dir)?;
    let result = (|| -> std::io::Result<Sampled> {
        let mut file = ProbeFile::create(dir.join("fdatasync-probe"), block_bytes)?;
        let mut micros = Vec::with_capacity(iterations);
        let started = Instant::now();
        for _ in 0..iterations {
            let begin = Instant::now();
            file.write_and_sync()?;
            micros.push(begin.elapsed().as_secs_f64() * 1e6);
        }
        Ok(summarise(micros, started.elapsed().as_secs_f64()))
    })();
    result
        .map_err(|error| BenchError::new(format!("fdatasync probe in {}: {error}", dir.display())))
}

/// The disk's part of a replicated write when the members share one disk, as the three
/// members of `synod bench cluster` do: `writers` threads, each with its own file in
/// `dir` (each member has its own log), write `block_bytes` and fdatasync at the same
/// moment, `iterations` times. A sample is the time from the first write's start until
/// `quorum` of the writers' fdatasyncs have returned. On a disk that serves flushes one
/// at a time this is near `quorum` fdatasyncs, not one. The files are removed afterwards.
pub fn fdatasync_quorum_latency(
    dir: &Path,
    iterations: usize,
    writers: usize,
    quorum: usize,
    block_bytes: usize,
) -> Result<Sampled, BenchError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Barrier, Mutex};
    create_dir(dir)?;
    let writers = writers.max(1);
    let quorum = quorum.clamp(1, writers);
    let mut files = Vec::with_capacity(writers);
    for index in 0..writers {
        let path = dir.join(format!("fdatasync-quorum-probe-{index}"));
        files.push(ProbeFile::create(path, block_bytes).map_err(|error| {
            BenchError::new(format!("fdatasync probe in {}: {error}", dir.display()))
        })?);
    }
    let go = Barrier::new(writers + 1);
    let done = Barrier::new(writers + 1);
    let stop = AtomicBool::new(false);
    // Each writer's (start, end) of the current round, or the error that stopped it.
    type Round = Option<std::io::Result<(Instant, Instant)>>;
    let rounds: Vec<Mutex<Round>> = (0..writers).map(|_| Mutex::new(None)).collect();
    let mut micros = Vec::with_capacity(iterations);
    let started = Instant::now();
    let failure = std::thread::scope(|scope| {
        for (file, round) in files.iter_mut().zip(&rounds) {
            let (go, done, stop) = (&go, &done, &stop);
            scope.spawn(move || loop {
                go.wait();
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let begin = Instant::now();
                let outcome = file.write_and_sync().map(|()| (begin, Instant::now()));
                *round.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(outcome);
                done.wait();
            });
        }
        let mut failure = None;
        for _ in 0..iterations {
            go.wait();
            done.wait();
            let mut starts = Vec::with_capacity(writers);
            let mut ends = Vec::with_capacity(writers);
            for round in &rounds {
                match round
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .take()
                {
                    Some(Ok((begin, end))) => {
                        starts.push(begin);
                        ends.push(end);
                    }
                    Some(Err(error)) => failure = Some(error),
                    None => {}
                }
            }
            if failure.is_some() || ends.len() < quorum {
                break;
            }
            ends.sort();
            let first = starts.iter().min().copied().unwrap_or(ends[0]);
            micros.push(ends[quorum - 1].duration_since(first).as_secs_f64() * 1e6);
        }
        stop.store(true, Ordering::SeqCst);
        go.wait();
        failure
    });
    if let Some(error) = failure {
        return Err(BenchError::new(format!(
            "fdatasync quorum probe in {}: {error}",
            dir.display()
        )));
    }
    Ok(summarise(micros, started.elapsed().as_secs_f64()))
}

/// Round trips of a `message_bytes` message over a loopback TCP connection (Nagle off),
/// echoed by a thread.
pub fn loopback_rtt(round_trips: usize, message_bytes: usize) -> Result<Sampled, BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let size = message_bytes.max(1);
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buffer = vec![0u8; size];
        loop {
            match stream.read_exact(&mut buffer) {
                Ok(()) => stream.write_all(&buffer)?,
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(error) => return Err(error),
            }
        }
    });
    let measured = (|| -> std::io::Result<Sampled> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let message = vec![0x42u8; size];
        let mut reply = vec![0u8; size];
        let mut micros = Vec::with_capacity(round_trips);
        let started = Instant::now();
        for _ in 0..round_trips {
            let begin = Instant::now();
            stream.write_all(&message)?;
            stream.read_exact(&mut reply)?;
            micros.push(begin.elapsed().as_secs_f64() * 1e6);
        }
        Ok(summarise(micros, started.elapsed().as_secs_f64()))
    })();
    let echoed = echo
        .join()
        .map_err(|_| BenchError::new("the loopback echo thread panicked"))?;
    let sampled =
        measured.map_err(|error| BenchError::new(format!("loopback ping-pong: {error}")))?;
    echoed.map_err(|error| BenchError::new(format!("loopback echo: {error}")))?;
    Ok(sampled)
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_time_of_stat(&stat)
}

/// Resident set of a process (`VmRSS` of `/proc/<pid>/status`), in bytes.
pub fn process_rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    rss_of_status(&status)
}

fn rss_of_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time of this process.
pub fn own_cpu_time() -> Option<Duration> {
    process_cpu_time(std::process::id())
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Parses utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command
/// name (field 2) is in parentheses and may hold spaces, so fields count from its `)`.
fn cpu_time_of_stat(stat: &str) -> Option<Duration> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // after_name starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks_per_second();
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

/// Now as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    utc_of_unix_seconds(seconds)
}

fn utc_of_unix_seconds(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let in_day = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        in_day / 3600,
        (in_day % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_seconds_become_calendar_dates() {
        assert_eq!(utc_of_unix_seconds(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_of_unix_seconds(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_of_unix_seconds(1_767_225_599), "2025-12-31 23:59 UTC");
    }

    #[test]
    fn cpu_time_is_read_past_a_command_name_with_spaces() {
        let stat = "1234 (synod node) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0";
        let ticks = clock_ticks_per_second();
        assert_eq!(
            cpu_time_of_stat(stat),
            Some(Duration::from_micros(300 * 1_000_000 / ticks))
        );
        assert_eq!(cpu_time_of_stat("garbage"), None);
    }

    #[test]
    fn the_resident_set_is_read_from_vmrss() {
        let status = "Name:\tsynod\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t3\n";
        assert_eq!(rss_of_status(status), Some(1234 * 1024));
        assert_eq!(rss_of_status("Name:\tkthread\n"), None);
        assert!(process_rss_bytes(std::process::id()).is_some_and(|bytes| bytes > 0));
    }

    #[test]
    fn this_process_has_a_cpu_time_and_the_machine_a_description() {
        assert!(own_cpu_time().is_some());
        let machine = Machine::describe();
        assert!(machine.cpus >= 1);
        assert!(machine.summary().contains("CPUs"));
    }

    #[test]
    fn the_probes_measure_what_they_are_asked_to() {
        let dir = tempfile::tempdir().unwrap();
        let disk = fdatasync_latency(dir.path(), 5, 4096).unwrap();
        assert_eq!(disk.count, 5);
        assert!(disk.p50_us <= disk.max_us);
        assert!(!dir.path().join("fdatasync-probe").exists());
        let quorum = fdatasync_quorum_latency(dir.path(), 5, 3, 2, 4096).unwrap();
        assert_eq!(quorum.count, 5);
        assert!(quorum.p50_us > 0.0 && quorum.p50_us <= quorum.max_us);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe files left"
        );
        let rtt = loopback_rtt(50, 64).unwrap();
        assert_eq!(rtt.count, 50);
        assert!(rtt.p99_us <= rtt.max_us);
    }
}
