//! What an operator meets around the replica itself: the data directory lock, the
//! command line's refusals and warnings, and SIGHUP. Every process a test starts it
//! stops, by pid.

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
