//! Clock-rate faults need libfaketime to slow or speed the *monotonic* clock of a member
//! (Synod's leases and timers run on it), not only the wall clock. Before a run uses it,
//! [`probe`] proves it: a member-to-be sleeps 300 ms by its own clock at rate x3 and must
//! see its `Instant` advance about three times faster than real time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where Debian, Ubuntu and source installs put it; `SYNOD_CHAOS_LIBFAKETIME` overrides.
const CANDIDATES: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
];

pub fn find_libfaketime() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SYNOD_CHAOS_LIBFAKETIME") {
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// The kernel's monotonic clock in milliseconds, read by a raw system call that
/// libfaketime (which wraps the C library's `clock_gettime`) cannot intercept.
fn kernel_monotonic_ms() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes one timespec into the valid `now`.
    unsafe {
        libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut now);
    }
    now.tv_sec as f64 * 1e3 + now.tv_nsec as f64 / 1e6
}

/// The probe's body (`synod chaos --clock-probe`): sleeps 300 ms by this process's clock
/// and returns `"<ms its Instant moved> <ms the kernel's clock moved>"`.
pub fn probe_body() -> String {
    let kernel_start = kernel_monotonic_ms();
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let faked = start.elapsed().as_secs_f64() * 1e3;
    format!("{faked:.1} {:.1}", kernel_monotonic_ms() - kernel_start)
}

/// Runs `executable probe_args…` under libfaketime at rate x3; `Err(why)` unless its
/// monotonic clock ran at 2–4 times real time.
pub fn probe(executable: &Path, probe_args: &[String], libfaketime: &Path) -> Result<(), String> {
    let output = Command::new(executable)
        .args(probe_args)
        .env("LD_PRELOAD", libfaketime)
        .env("FAKETIME", "+0 x3")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "0")
        .output()
        .map_err(|error| format!("running the clock probe: {error}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let readings: Vec<f64> = text
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let [faked_ms, real_ms] = readings[..] else {
        return Err(format!(
            "the clock probe printed {text:?}, not two readings"
        ));
    };
    let rate = faked_ms / real_ms.max(1e-3);
    if (2.0..=4.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!(
            "libfaketime at {} did not run the monotonic clock at x3 (measured x{rate:.2}: \
             {faked_ms:.0} ms faked in {real_ms:.0} ms real)",
            libfaketime.display()
        ))
    }
}
