//! `synod chaos`, short and bounded: three real members under every fault whose
//! prerequisite is present must stay linearizable and lose no acknowledged write, every
//! enabled fault must actually have been injected, and nothing may be left behind (no
//! iptables rule, no mount). Outside CI a missing prerequisite (root, iptables, libfaketime)
//! skips that fault loudly. Under `CI=true` a missing libfaketime fails (`.ci/run` installs
//! it), and so do missing privileges where `.ci/run`'s probe found them
//! (`SYNOD_PRIVILEGED=ok`: root, a working iptables, tmpfs mounts).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Says loudly that `what` is skipped, or fails under CI.
fn skip(what: &str, why: &str) {
    assert!(
        !in_ci(),
        "{what} cannot run in CI: {why} (.ci/run installs iptables and faketime, as root)"
    );
    eprintln!("SKIPPED: {what}: {why}");
}

/// Says loudly that a fault needing privileges is skipped; fails under CI where
/// `.ci/run` found the privileges (a CI machine without them skips, and its log says so).
fn skip_privileged(what: &str, why: &str) {
    if in_ci() && std::env::var("SYNOD_PRIVILEGED").as_deref() != Ok("ok") {
        eprintln!("SKIPPED: {what}: {why} (.ci/run found no root, iptables or tmpfs mounts)");
        return;
    }
    skip(what, why);
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

#[test]
fn libfaketime_runs_a_members_monotonic_clock_at_the_set_rate() {
    let Some(library) = synod_chaos::clock::find_libfaketime() else {
        skip(
            "the libfaketime probe",
            "libfaketime not found (Debian package faketime)",
        );
        return;
    };
    let probe_args = ["chaos".to_string(), "--clock-probe".to_string()];
    let executable = std::path::Path::new(env!("CARGO_BIN_EXE_synod"));
    synod_chaos::clock::probe(executable, &probe_args, &library)
        .expect("the monotonic clock runs at x3");
    // Without libfaketime the same probe measures x1, which the check refuses.
    let output = Command::new(executable)
        .args(&probe_args)
        .output()
        .expect("the probe runs");
    let readings: Vec<f64> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|word| word.parse().expect("a number"))
        .collect();
    let rate = readings[0] / readings[1];
    assert!((0.8..1.25).contains(&rate), "unfaked rate {rate}");
}

#[test]
fn a_short_chaos_run_with_every_available_fault_is_linearizable_and_leaves_nothing_behind() {
    let mut faults = vec!["kill", "pause"];
    // In CI, only where `.ci/run`'s probe could mount a tmpfs and list iptables rules.
    let root = is_root() && (!in_ci() || std::env::var("SYNOD_PRIVILEGED").as_deref() == Ok("ok"));
    let iptables = Command::new("iptables")
        .arg("-S")
        .output()
        .is_ok_and(|output| output.status.success());
    match (root, iptables) {
        (true, true) => faults.extend(["partition", "disk"]),
        (false, _) => skip_privileged("partition and disk faults", "not root"),
        (true, false) => {
            skip_privileged("partition faults", "iptables not installed");
            faults.push("disk");
        }
    }
    if synod_chaos::clock::find_libfaketime().is_some() {
        faults.push("clock");
    } else {
        skip(
            "clock faults",
            "libfaketime not found (Debian package faketime)",
        );
    }
    let out = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new(env!("CARGO_BIN_EXE_synod"))
        .args([
            "chaos",
            "--duration=40",
            "--seed=11",
            "--clients=6",
            "--keys=6",
            "--quiet",
        ])
        .arg(format!("--faults={}", faults.join(",")))
        .arg(format!("--out={}", out.path().join("run").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("synod chaos starts");
    let pid = child.id();
    let started = Instant::now();
    while child.try_wait().expect("waiting for synod chaos").is_none() {
        if started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            panic!("synod chaos ran for more than 600 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let output = child.wait_with_output().expect("its output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line last")).expect("JSON");
    assert_eq!(json["verdict"], "linearizable", "{stdout}");
    assert_eq!(
        json["lost_writes"].as_array().map(Vec::len),
        Some(0),
        "{stdout}"
    );
    assert!(output.status.success(), "exit status {:?}", output.status);
    for fault in &faults {
        let count = json["fault_counts"][fault].as_u64().unwrap_or(0);
        assert!(count > 0, "no {fault} fault was injected: {stdout}");
    }
    let writes_ok = json["ops"]["write"]["ok"].as_u64().unwrap_or(0);
    let reads_ok = json["ops"]["read"]["ok"].as_u64().unwrap_or(0);
    assert!(
        writes_ok > 100 && reads_ok > 100,
        "too little load to mean anything: {stdout}"
    );
    if root && iptables {
        let rules = Command::new("iptables")
            .arg("-S")
            .output()
            .expect("iptables -S");
        let tag = format!("synod-chaos-{pid} ");
        assert!(
            !String::from_utf8_lossy(&rules.stdout).contains(&tag),
            "a rule was left behind"
        );
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(
        !mounts.contains(&out.path().display().to_string()),
        "a tmpfs was left mounted"
    );
}
