//! The harness against real `synod-maelstrom` processes: lin-kv workloads on one and
//! three nodes, with and without network partitions, checked for linearizability.
//! Each run prints its summary (and seed), so a failure shows what happened.

use std::path::PathBuf;
use std::time::Duration;
use synod_maelstrom::harness::{self, HarnessOptions, HarnessReport, Outcome};

fn options(nodes: usize, seconds: f64, seed: u64) -> HarnessOptions {
    let mut options = HarnessOptions::new(PathBuf::from(env!("CARGO_BIN_EXE_synod-maelstrom")));
    options.nodes = nodes;
    options.clients = 4;
    options.keys = 3;
    options.duration = Duration::from_secs_f64(seconds);
    options.seed = seed;
    options
}

fn run(options: HarnessOptions) -> HarnessReport {
    let seed = options.seed;
    let report = harness::run(options).expect("the cluster starts");
    println!("seed {seed}\n{}{}", report.summary(), report.verdict_json());
    report
}

fn ok_count(report: &HarnessReport, kind: &str) -> usize {
    report.by_type.get(kind).map(|(ok, _, _)| *ok).unwrap_or(0)
}

#[test]
fn single_node_lin_kv_is_linearizable() {
    let report = run(options(1, 1.5, 11));
    assert!(report.valid, "{}", report.verdict);
    assert!(ok_count(&report, "write") > 0 && ok_count(&report, "read") > 0);
    assert_eq!(report.ops, report.ok + report.fail + report.info);
}

#[test]
fn three_nodes_without_faults_are_linearizable() {
    let report = run(options(3, 3.0, 21));
    assert!(report.valid, "{}", report.verdict);
    for kind in ["read", "write", "cas"] {
        assert!(ok_count(&report, kind) > 0, "no {kind} succeeded");
    }
    assert_eq!(report.messages_dropped, 0);
    // Every node served requests (clients pick nodes at random).
    for node in ["n1", "n2", "n3"] {
        assert!(
            report
                .history
                .iter()
                .any(|r| r.node == node && r.outcome == Outcome::Ok),
            "{node} answered nothing"
        );
    }
}

#[test]
fn three_nodes_with_partitions_and_delays_are_linearizable() {
    let mut options = options(3, 6.0, 31);
    options.partition_interval = Some(Duration::from_millis(1_500));
    options.latency_ms = (0, 5);
    options.client_timeout = Duration::from_secs(3);
    let report = run(options);
    assert!(report.valid, "{}", report.verdict);
    assert!(
        report
            .nemesis_log
            .iter()
            .any(|(_, what)| what.starts_with("partition")),
        "the nemesis partitioned the network"
    );
    assert!(
        report.messages_dropped > 0,
        "the partition dropped messages"
    );
    for kind in ["read", "write", "cas"] {
        assert!(ok_count(&report, kind) > 0, "no {kind} succeeded");
    }
}

#[test]
fn harness_command_prints_a_summary_and_a_json_verdict_line() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_synod-maelstrom-test"))
        .args(["--bin", env!("CARGO_BIN_EXE_synod-maelstrom")])
        .args([
            "--node-count",
            "1",
            "--concurrency",
            "2",
            "--time-limit",
            "1",
        ])
        .output()
        .expect("run synod-maelstrom-test");
    let stdout = String::from_utf8(output.stdout).unwrap();
    println!("{stdout}");
    assert!(output.status.success(), "exit {}", output.status);
    assert!(stdout.starts_with(":stats"));
    let verdict: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a verdict line")).unwrap();
    assert_eq!(verdict["valid"], true);
    assert!(verdict["ok"].as_u64().unwrap() > 0);
    for field in ["ops", "fail", "info", "p50_ms", "p99_ms", "availability"] {
        assert!(verdict.get(field).is_some(), "verdict without {field}");
    }
}
