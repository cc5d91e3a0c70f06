//! What an operator meets around the replica itself: the data directory lock, the
//! command line's refusals and warnings, SIGHUP, and `synod dev` members that die with
//! their parent. Every process a test starts it stops, by pid.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn synod() -> Command {
    Command::new(env!("CARGO_BIN_EXE_synod"))
}

/// `n` distinct free ports (all held open until every one is picked).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

/// True once `pid` no longer runs (gone, or a zombie nobody reaped yet).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits for `child` to exit within `timeout`; kills it (and fails) otherwise.
fn wait_with_timeout(mut child: Child, timeout: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait works").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "process did not exit within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A one-member `synod node` on free ports; stderr is captured.
struct Node {
    child: Option<Child>,
}

impl Node {
    fn start(data_dir: &Path, extra: &[String]) -> Node {
        let [client, peer] = free_ports(2)[..] else {
            unreachable!()
        };
        let child = synod()
            .arg("node")
            .arg("--name=n1")
            .arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!("--initial-cluster=n1=http://127.0.0.1:{peer}"))
            .arg("--unsafe-no-fsync")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("synod node starts");
        Node { child: Some(child) }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits until the replica recovered (its `member` file is written after the log).
    fn wait_until_up(&mut self, data_dir: &Path) {
        let start = Instant::now();
        while !data_dir.join("member").exists() {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().unwrap() {
                panic!("synod node exited early: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "node did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // The gRPC endpoints start right after; give them a moment.
        std::thread::sleep(Duration::from_millis(300));
    }

    fn stop_with(mut self, signal_name: &str) -> Output {
        let child = self.child.take().expect("running");
        signal(child.id(), signal_name);
        wait_with_timeout(child, Duration::from_secs(20))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_second_node_on_the_same_data_directory_refuses_to_start_naming_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("n1");
    let mut first = Node::start(&data_dir, &[]);
    first.wait_until_up(&data_dir);
    let mut second = Node::start(&data_dir, &[]);
    let output = wait_with_timeout(
        second.child.take().expect("started"),
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the second node ran: {stderr}");
    assert!(
        stderr.contains(&format!("data directory {} is in use", data_dir.display())),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");
    let stopped = first.stop_with("TERM");
    assert!(stopped.status.success(), "{stopped:?}");
}

#[test]
fn sighup_stops_a_node_gracefully() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("n1");
    let mut node = Node::start(&data_dir, &[]);
    node.wait_until_up(&data_dir);
    let output = node.stop_with("HUP");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(stderr.contains("SIGHUP"), "{stderr}");
    assert!(stderr.contains("stopping gracefully"), "{stderr}");
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("n1");
    let mut node = Node::start(&data_dir, &["--log-format=json".to_string()]);
    node.wait_until_up(&data_dir);
    let output = node.stop_with("TERM");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "too few log lines: {stderr}");
    for line in &lines {
        let object: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {line}\n{stderr}"));
        assert!(object["level"].is_string(), "{line}");
        assert!(object["message"].is_string(), "{line}");
        assert!(object["timestamp"].is_string(), "{line}");
    }
    assert!(stderr.contains("stopping gracefully"), "{stderr}");
}

#[test]
fn a_listen_peer_url_other_than_the_members_own_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("n1");
    let [client, listen, advertised] = free_ports(3)[..] else {
        unreachable!()
    };
    let mut node = Node {
        child: Some(
            synod()
                .arg("node")
                .arg("--name=n1")
                .arg(format!("--data-dir={}", data_dir.display()))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{listen}"))
                .arg(format!(
                    "--initial-cluster=n1=http://127.0.0.1:{advertised}"
                ))
                .arg("--unsafe-no-fsync")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("synod node starts"),
        ),
    };
    node.wait_until_up(&data_dir);
    let output = node.stop_with("TERM");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "--listen-peer-urls is 127.0.0.1:{listen}, but --initial-cluster tells the peers to dial n1"
        )),
        "{stderr}"
    );
}

#[test]
fn bad_command_lines_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("n1");
    let cases: [(&[&str], &str); 5] = [
        (&["--log-level=verbose"], "unknown log level"),
        (
            &["--listen-client-urls=https://127.0.0.1:2379"],
            "https:// is not supported",
        ),
        (
            &[
                "--name=n1",
                "--initial-cluster=n1=https://127.0.0.1:2380",
                "--listen-peer-urls=http://127.0.0.1:2380",
            ],
            "https:// is not supported",
        ),
        (
            &[
                "--name=n1",
                "--initial-cluster=n1=http://127.0.0.1:2380,n2=http://127.0.0.1:2381,n3=http://127.0.0.1:2380",
            ],
            "share the peer address",
        ),
        (&["--heartbeat-interval=0"], "heartbeat interval must be positive"),
    ];
    for (flags, expected) in cases {
        let child = synod()
            .arg("node")
            .arg(format!("--data-dir={}", data_dir.display()))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("synod runs");
        let output = wait_with_timeout(child, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flags:?} was accepted: {stderr}");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
    // Nothing was created for a refused command line.
    assert!(!data_dir.join("wal").exists());
}

/// A base client port whose whole dev layout (client, peer and metrics ports of three
/// members) is free right now.
fn free_dev_base_port() -> u16 {
    let seed = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 3000 + (seed.wrapping_add(attempt.wrapping_mul(151))) % 30_000;
        let ports = [
            base,
            base + 10_001,
            base + 2,
            base + 20_000,
            base + 20_001,
            base + 20_002,
            base + 30_000,
            base + 30_001,
            base + 30_002,
        ];
        if ports
            .iter()
            .all(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port layout found");
}

/// Kills `synod dev` and the member pids it printed if the test ends early.
struct DevGuard {
    dev: Child,
    members: Vec<u32>,
}

impl Drop for DevGuard {
    fn drop(&mut self) {
        let _ = self.dev.kill();
        let _ = self.dev.wait();
        for pid in &self.members {
            if !gone(*pid) {
                signal(*pid, "KILL");
            }
        }
    }
}

#[test]
fn killing_synod_dev_with_sigkill_takes_its_members_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_dev_base_port();
    let dev = synod()
        .args(["dev", "--unsafe-no-fsync", "--log-level=warn"])
        .arg(format!("--client-port={base}"))
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("synod dev starts");
    let mut guard = DevGuard {
        dev,
        members: Vec::new(),
    };
    // Read the banner on a thread, so a silent `synod dev` cannot hang the test.
    let stdout = guard.dev.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !banner
        .iter()
        .any(|line: &String| line.starts_with("Ctrl-C"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => banner.push(line),
            Err(_) => panic!("no banner from synod dev: {banner:?}"),
        }
    }
    // "  n1  pid 1234  client ..." for each member, printed once it serves.
    let pids: Vec<u32> = banner
        .iter()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            (name.starts_with('n') && words.next() == Some("pid"))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
        .collect();
    guard.members = pids.clone();
    assert_eq!(pids.len(), 3, "{banner:?}");
    for (index, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let restart = banner
            .iter()
            .find(|line| line.trim_start().starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no restart command for {name}: {banner:?}"));
        assert!(restart.contains(" node "), "{restart}");
        assert!(restart.contains(&format!("--name={name}")), "{restart}");
        assert!(!gone(pids[index]), "{name} is not running");
    }

    signal(guard.dev.id(), "KILL");
    let _ = guard.dev.wait();
    let start = Instant::now();
    while !pids.iter().all(|pid| gone(*pid)) && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let survivors: Vec<u32> = pids.iter().copied().filter(|pid| !gone(*pid)).collect();
    for pid in &survivors {
        signal(*pid, "KILL");
    }
    assert!(
        survivors.is_empty(),
        "members {survivors:?} still ran 20 s after synod dev was killed"
    );
}
