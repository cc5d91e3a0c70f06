//! A member cut off by a network partition serves its own client soon after the heal.
//!
//! Runs `tools/partition-heal`: three `synod node` processes in their own network
//! namespaces on a private bridge, one follower's bridge port taken down for 7 s (its
//! packets vanish, as with `iptables -j DROP`, so its peer connections sit in TCP
//! retransmission backoff), then up again. Before peer connections were watched for
//! silence, the healed member served nothing for about 6.5 s; the target is 0.5 s. The
//! bound here, 3 s, only catches the failure: the machine running the tests may be
//! loaded. `tools/partition-heal --trials 10` prints the figures.

#[allow(dead_code)] // etcdctl() is for the other process tests
mod common;

use std::path::Path;
use std::process::Command;

#[test]
fn a_member_healed_from_a_partition_serves_its_client_within_three_seconds() {
    if !common::etcdctl_present() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/partition-heal");
    let output = Command::new(&script)
        .args(["--synod", env!("CARGO_BIN_EXE_synod")])
        .args([
            "--trials",
            "2",
            "--partition-seconds",
            "7",
            "--max-seconds",
            "3",
        ])
        .output()
        .expect("tools/partition-heal runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(2) {
        // No network namespaces here (not root, or no veth/bridge). `.ci/run` probes
        // for them and says so; where it found them, this test must run.
        assert!(
            std::env::var("SYNOD_NETNS").as_deref() != Ok("ok"),
            ".ci/run created a network namespace, yet tools/partition-heal cannot: {stderr}"
        );
        eprintln!("SKIPPED: tools/partition-heal cannot run here: {stderr}");
        return;
    }
    println!("{stdout}");
    assert!(
        output.status.success(),
        "a healed member took longer than 3 s to serve:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.starts_with("| 1 ") || line.starts_with("| 2 "))
            .count(),
        2,
        "both trials ran and were measured:\n{stdout}"
    );
}
