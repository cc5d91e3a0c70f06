//! The real etcdctl 3.4 (Debian's etcd-client) against an in-process three-node cluster.
//!
//! Without `etcdctl` on the PATH the tests print a loud SKIPPED line and pass — except
//! under CI (CI=true), where a missing etcdctl fails them.

mod common;

use common::{etcd_available, etcdctl_available, EtcdCluster};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `etcdctl --endpoints=<endpoints> <args>`, feeding `stdin`.
async fn etcdctl(endpoints: &[String], args: &[&str], stdin: &str) -> Output {
    let endpoints = endpoints
        .iter()
        .map(|endpoint| endpoint.trim_start_matches("http://").to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg("--command-timeout=30s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("etcdctl starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let output = child.wait_with_output().await.expect("etcdctl runs");
    Output {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn ok(endpoints: &[String], args: &[&str]) -> String {
    let output = etcdctl(endpoints, args, "").await;
    assert!(
        output.success,
        "etcdctl {args:?} failed:\nstdout: {}\nstderr: {}",
        output.stdout, output.stderr
    );
    output.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_reads_writes_and_inspects_a_three_node_cluster() {
    if !etcdctl_available("etcdctl_reads_writes_and_inspects_a_three_node_cluster") {
        return;
    }
    let mut cluster = EtcdCluster::start(3).await;
    let all: Vec<String> = (0..3).map(|index| cluster.endpoint(index)).collect();
    let one = |index: usize| vec![cluster.endpoint(index)];

    assert_eq!(ok(&one(0), &["put", "greeting", "hello"]).await, "OK\n");
    assert_eq!(ok(&one(1), &["get", "greeting"]).await, "greeting\nhello\n");
    ok(&one(2), &["put", "dir/a", "1"]).await;
    ok(&one(2), &["put", "dir/b", "2"]).await;
    assert_eq!(
        ok(&one(0), &["get", "dir/", "--prefix"]).await,
        "dir/a\n1\ndir/b\n2\n"
    );
    assert_eq!(
        ok(&one(1), &["get", "dir/", "--prefix", "--keys-only"]).await,
        "dir/a\n\ndir/b\n\n"
    );
    assert_eq!(
        ok(&one(2), &["get", "greeting", "--consistency=s"]).await,
        "greeting\nhello\n"
    );
    assert_eq!(ok(&one(0), &["del", "dir/a"]).await, "1\n");
    ok(&one(1), &["put", "dir/c", "0"]).await;
    assert_eq!(
        ok(
            &one(0),
            &[
                "get",
                "dir/",
                "--prefix",
                "--sort-by=VALUE",
                "--order=DESCEND"
            ]
        )
        .await,
        "dir/b\n2\ndir/c\n0\n"
    );
    let json = ok(
        &one(0),
        &["get", "dir/", "--prefix", "--limit=1", "-w", "json"],
    )
    .await;
    assert!(
        json.contains("\"count\":2") && json.contains("\"more\":true"),
        "{json}"
    );

    let txn = etcdctl(
        &one(1),
        &["txn"],
        "value(\"greeting\") = \"hello\"\nversion(\"greeting\") = \"1\"\n\nput greeting bonjour\n\nput greeting nope\n\n",
    )
    .await;
    assert!(txn.success, "txn failed: {}", txn.stderr);
    assert_eq!(txn.stdout, "SUCCESS\n\nOK\n");
    let failed = etcdctl(
        &one(2),
        &["txn"],
        "mod(\"greeting\") < \"2\"\n\nput greeting never\n\nget greeting\n\n",
    )
    .await;
    assert!(failed.success, "txn failed: {}", failed.stderr);
    assert_eq!(failed.stdout, "FAILURE\n\ngreeting\nbonjour\n");

    let status = ok(&all, &["endpoint", "status"]).await;
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(lines.len(), 3, "one status line per endpoint:\n{status}");
    let leaders = lines
        .iter()
        .filter(|line| line.contains(", true, false,"))
        .count();
    assert_eq!(
        leaders, 1,
        "exactly one endpoint reports itself leader:\n{status}"
    );

    let health = etcdctl(&all, &["endpoint", "health"], "").await;
    assert!(
        health.success,
        "health failed: {}{}",
        health.stdout, health.stderr
    );
    let healthy = format!("{}{}", health.stdout, health.stderr);
    assert_eq!(healthy.matches("is healthy").count(), 3, "{healthy}");

    let members = ok(&one(0), &["member", "list"]).await;
    assert_eq!(members.lines().count(), 3, "{members}");
    for index in 0..3 {
        let endpoint = cluster.endpoint(index);
        assert!(members.contains(&endpoint), "{endpoint} in\n{members}");
        assert!(
            members.contains(&format!("started, n{}", index + 1)),
            "{members}"
        );
    }

    // Auth is not served: etcdctl shows synod's message.
    let unserved = etcdctl(&one(0), &["user", "list"], "").await;
    assert!(!unserved.success);
    assert!(
        unserved.stderr.contains("not served by synod"),
        "{}",
        unserved.stderr
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_keeps_working_after_the_leader_is_killed() {
    if !etcdctl_available("etcdctl_keeps_working_after_the_leader_is_killed") {
        return;
    }
    let mut cluster = EtcdCluster::start(3).await;
    ok(&[cluster.endpoint(0)], &["put", "before", "1"]).await;
    let leader = cluster.wait_for_leader().await;
    cluster.stop(leader).await;
    let survivors: Vec<String> = (0..3)
        .filter(|index| *index != leader)
        .map(|index| cluster.endpoint(index))
        .collect();
    // Straight after the kill, while the survivors elect a new leader.
    assert_eq!(ok(&survivors[..1], &["put", "after", "2"]).await, "OK\n");
    assert_eq!(ok(&survivors[1..], &["get", "after"]).await, "after\n2\n");
    assert_eq!(ok(&survivors, &["get", "before"]).await, "before\n1\n");
    let health = etcdctl(&survivors, &["endpoint", "health"], "").await;
    assert!(health.success, "{}{}", health.stdout, health.stderr);
    let status = ok(&survivors, &["endpoint", "status"]).await;
    assert_eq!(
        status
            .lines()
            .filter(|line| line.contains(", true, false,"))
            .count(),
        1,
        "a new leader among the survivors:\n{status}"
    );
    cluster.stop_all().await;
}

/// `get --rev`, `compaction`, and the quota's alarm as an operator meets them: etcd's output
/// and etcd's errors for the same command sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_reads_history_compacts_and_disarms_nospace() {
    if !etcdctl_available("etcdctl_reads_history_compacts_and_disarms_nospace") {
        return;
    }
    let mut cluster = EtcdCluster::start_with(3, |config| {
        config.quota_backend_bytes = 2048;
    })
    .await;
    let one = |index: usize| vec![cluster.endpoint(index)];
    for value in ["v1", "v2", "v3"] {
        ok(&one(0), &["put", "k", value]).await; // revisions 2, 3, 4
    }
    assert_eq!(ok(&one(1), &["get", "k", "--rev=2"]).await, "k\nv1\n");
    assert_eq!(
        ok(&one(2), &["get", "k", "--rev=3", "--consistency=s"]).await,
        "k\nv2\n"
    );
    assert_eq!(
        ok(&one(0), &["compaction", "3"]).await,
        "compacted revision 3\n"
    );
    let below = etcdctl(&one(1), &["get", "k", "--rev=2"], "").await;
    assert!(!below.success);
    assert!(
        below
            .stderr
            .contains("etcdserver: mvcc: required revision has been compacted"),
        "{}",
        below.stderr
    );
    let again = etcdctl(&one(0), &["compaction", "3"], "").await;
    assert!(
        !again.success
            && again
                .stderr
                .contains("required revision has been compacted"),
        "{}",
        again.stderr
    );
    let future = etcdctl(&one(0), &["compaction", "99"], "").await;
    assert!(
        !future.success
            && future
                .stderr
                .contains("required revision is a future revision"),
        "{}",
        future.stderr
    );

    // Fill the 2 KiB quota: the put that passes it fails and raises NOSPACE.
    let value = "x".repeat(300);
    let refused = loop {
        let output = etcdctl(&one(0), &["put", "big", &value], "").await;
        if !output.success {
            break output;
        }
    };
    assert!(
        refused
            .stderr
            .contains("etcdserver: mvcc: database space exceeded"),
        "{}",
        refused.stderr
    );
    let alarms = ok(&one(0), &["alarm", "list"]).await;
    assert_eq!(alarms.matches("alarm:NOSPACE").count(), 3, "{alarms}");
    let revision = ok(&one(0), &["get", "big", "-w", "json"]).await;
    let current = revision
        .split("\"revision\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .expect("a header revision")
        .to_string();
    ok(&one(0), &["compaction", &current]).await;
    let disarmed = ok(&one(0), &["alarm", "disarm"]).await;
    assert!(disarmed.contains("alarm:NOSPACE"), "{disarmed}");
    assert_eq!(ok(&one(0), &["alarm", "list"]).await, "");
    assert_eq!(ok(&one(0), &["put", "small", "ok"]).await, "OK\n");
    cluster.stop_all().await;
}

/// A single-member etcd on free loopback ports with a temporary data directory; killed
/// (by pid, on drop) at the end.
struct RealEtcd {
    child: tokio::process::Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl RealEtcd {
    async fn start(progress_interval: &str) -> RealEtcd {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (_, addrs) = common::bind_listeners(2).await;
        let (client, peer) = (addrs[0], addrs[1]);
        let child = Command::new("etcd")
            .args([
                "--name=real",
                &format!("--data-dir={}", dir.path().join("data").display()),
                &format!("--listen-client-urls=http://{client}"),
                &format!("--advertise-client-urls=http://{client}"),
                &format!("--listen-peer-urls=http://{peer}"),
                &format!("--initial-advertise-peer-urls=http://{peer}"),
                &format!("--initial-cluster=real=http://{peer}"),
                &format!("--experimental-watch-progress-notify-interval={progress_interval}"),
                "--log-level=error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("etcd starts");
        let endpoint = client.to_string();
        for _ in 0..100 {
            if etcdctl(std::slice::from_ref(&endpoint), &["endpoint", "health"], "")
                .await
                .success
            {
                return RealEtcd {
                    child,
                    endpoint,
                    _dir: dir,
                };
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("etcd did not become healthy at {endpoint}");
    }
}

/// Runs a long-lived `etcdctl watch …` until it prints nothing for `quiet` (or exits),
/// then stops it; returns what it printed, stdout then stderr.
async fn watch_output(endpoints: &[String], args: &[&str], quiet: std::time::Duration) -> String {
    use tokio::io::AsyncReadExt;
    let endpoints = endpoints
        .iter()
        .map(|endpoint| endpoint.trim_start_matches("http://").to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("etcdctl starts");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let mut out = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout(quiet, stdout.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(read)) => out.extend_from_slice(&buffer[..read]),
        }
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
    let mut err = Vec::new();
    let _ = stderr.read_to_end(&mut err).await;
    format!(
        "{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    )
}

/// The same etcdctl session against a Synod cluster and a real etcd: watches from history
/// with `--prefix`, `--rev` and `--prev-kv`, a compaction, and watches and reads at and
/// below the compacted revision print the same. (etcdctl 3.4 has no `--progress-notify`;
/// progress is held to etcd's behaviour by the gRPC tests and the client suites.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_and_compaction_print_what_etcd_prints() {
    let test = "etcdctl_watch_and_compaction_print_what_etcd_prints";
    if !etcdctl_available(test) || !etcd_available(test) {
        return;
    }
    let mut synod = EtcdCluster::start(3).await;
    let leader = synod.wait_for_leader().await;
    let mut etcd = RealEtcd::start("10m").await;
    let targets = [
        ("synod", vec![synod.endpoint(leader)]),
        ("etcd", vec![etcd.endpoint.clone()]),
    ];
    let quiet = std::time::Duration::from_millis(1500);
    let mut transcripts = Vec::new();
    for (name, endpoints) in &targets {
        let mut transcript = String::new();
        for command in [
            vec!["put", "a", "1"],
            vec!["put", "a", "2"],
            vec!["put", "a/b", "x"],
            vec!["del", "a"],
            vec!["put", "b", "y"],
        ] {
            transcript += &ok(endpoints, &command).await;
        }
        for watch in [
            vec!["watch", "a", "--rev=2", "--prev-kv"],
            vec!["watch", "a", "--prefix", "--rev=2"],
            vec!["watch", "", "--prefix", "--rev=1", "--prev-kv"],
        ] {
            transcript += &format!("$ etcdctl {}\n", watch.join(" "));
            transcript += &watch_output(endpoints, &watch, quiet).await;
        }
        transcript += &ok(endpoints, &["compaction", "4"]).await;
        for watch in [
            vec!["watch", "a", "--rev=2"],
            vec!["watch", "a", "--prefix", "--rev=4", "--prev-kv"],
        ] {
            transcript += &format!("$ etcdctl {}\n", watch.join(" "));
            transcript += &watch_output(endpoints, &watch, quiet).await;
        }
        let stale = etcdctl(endpoints, &["get", "a", "--rev=3"], "").await;
        transcript += &format!("get --rev=3:\n{}{}", stale.stdout, stale.stderr);
        // The client library's retry warnings carry timestamps and connection ids.
        let transcript: String = transcript
            .lines()
            .filter(|line| !line.starts_with("{\"level\""))
            .map(|line| format!("{line}\n"))
            .collect();
        transcripts.push((name, transcript));
    }
    let _ = etcd.child.start_kill();
    let _ = etcd.child.wait().await;
    synod.stop_all().await;
    let (synod_name, synod_transcript) = &transcripts[0];
    let (etcd_name, etcd_transcript) = &transcripts[1];
    assert!(
        etcd_transcript.contains("watch was canceled") && etcd_transcript.contains("a/b\nx"),
        "the session exercises history and compaction:\n{etcd_transcript}"
    );
    assert_eq!(
        synod_transcript, etcd_transcript,
        "{synod_name} (left) and {etcd_name} (right) print differently"
    );
}

/// `etcdctl lease grant/keep-alive/timetolive/list/revoke`, `put --lease`, `lock` and `elect`
/// as an operator uses them, printing what etcdctl prints against etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_leases_locks_and_elections_work() {
    if !etcdctl_available("etcdctl_leases_locks_and_elections_work") {
        return;
    }
    let mut cluster = EtcdCluster::start(3).await;
    let endpoints: Vec<String> = (0..3).map(|index| cluster.endpoint(index)).collect();
    let granted = ok(&endpoints, &["lease", "grant", "60"]).await;
    // "lease 694d7a1b2c3d4e5f granted with TTL(60s)"
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("an id")
        .to_string();
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    assert_eq!(
        ok(&endpoints, &["put", "--lease", &id, "held", "v"]).await,
        "OK\n"
    );
    let ttl = ok(&endpoints, &["lease", "timetolive", "--keys", &id]).await;
    assert!(
        ttl.starts_with(&format!("lease {id} granted with TTL(60s), remaining("))
            && ttl.ends_with("s), attached keys([held])\n"),
        "{ttl}"
    );
    assert_eq!(
        ok(&endpoints, &["lease", "keep-alive", "--once", &id]).await,
        format!("lease {id} keepalived with TTL(60)\n")
    );
    assert_eq!(
        ok(&endpoints, &["lease", "list"]).await,
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        ok(&endpoints, &["lease", "revoke", &id]).await,
        format!("lease {id} revoked\n")
    );
    assert_eq!(ok(&endpoints, &["get", "held"]).await, "");
    assert_eq!(
        ok(&endpoints, &["lease", "timetolive", &id]).await,
        format!("lease {id} already expired\n")
    );

    // A lock around a command: etcdctl holds it while the command runs.
    let locked = ok(&endpoints, &["lock", "job", "echo", "held", "the", "lock"]).await;
    assert_eq!(locked, "held the lock\n");
    assert_eq!(ok(&endpoints, &["get", "--prefix", "job/"]).await, "");

    // A campaign wins an empty election and prints its key and value; a second candidate
    // waits; the listener sees the leader.
    let first = watch_output(
        &endpoints,
        &["elect", "mayor", "alice"],
        std::time::Duration::from_secs(3),
    )
    .await;
    assert!(
        first.starts_with("mayor/") && first.contains("\nalice\n"),
        "{first}"
    );
    cluster.stop_all().await;
}
