//! `synod dev` as an operator uses it: three `synod node` child processes, driven with
//! the real `etcdctl`; the leader process is killed with SIGKILL and the cluster goes on;
//! Ctrl-C (SIGINT) stops everything.

mod common;

use common::{etcdctl, etcdctl_present};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// A base client port whose whole dev layout (client, peer, metrics ports of three
/// members) is free right now.
fn free_base_port() -> u16 {
    let seed = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 3000 + (seed.wrapping_add(attempt.wrapping_mul(137))) % 30_000;
        let ports = [0u16, 20_000, 30_000]
            .iter()
            .flat_map(|offset| {
                let client = base + offset;
                let peer = if *offset == 0 {
                    base + 10_001
                } else {
                    client + 1
                };
                [client, peer, client + 2]
            })
            .collect::<Vec<_>>();
        if ports
            .iter()
            .all(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        {
            return base;
        }
    }
    panic!("no free port layout found");
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// PIDs of `synod node` processes whose command line names `data_dir`.
fn node_pid(member_dir: &Path) -> Option<u32> {
    let needle = member_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a == "node") && args.iter().any(|a| a.contains(&needle)) {
            return Some(pid);
        }
    }
    None
}

struct Dev {
    child: Child,
    data_dir: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[test]
fn dev_cluster_serves_etcdctl_survives_a_killed_leader_and_stops_on_ctrl_c() {
    if !etcdctl_present() {
        return;
    }
    let base = free_base_port();
    let data_dir = std::env::temp_dir().join(format!("synod-dev-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let child = Command::new(env!("CARGO_BIN_EXE_synod"))
        .args(["dev", "--client-port", &base.to_string(), "--data-dir"])
        .arg(&data_dir)
        .arg("--log-level=warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("synod dev starts");
    let mut dev = Dev { child, data_dir };
    let endpoints: Vec<String> = [0u16, 20_000, 30_000]
        .iter()
        .map(|offset| format!("127.0.0.1:{}", base + offset))
        .collect();

    wait_until("a healthy cluster", Duration::from_secs(60), || {
        etcdctl(&endpoints.join(","), &["endpoint", "health"])
            .status
            .success()
    });
    let put = etcdctl(&endpoints.join(","), &["put", "greeting", "hello"]);
    assert!(put.status.success(), "put: {put:?}");
    assert_eq!(stdout(&put).trim(), "OK");

    // Every member answers, each through its own endpoint (followers go to the leader).
    for endpoint in &endpoints {
        let get = etcdctl(endpoint, &["get", "greeting"]);
        assert_eq!(
            stdout(&get),
            "greeting\nhello\n",
            "get at {endpoint}: {get:?}"
        );
    }

    // Find the leader and SIGKILL its process.
    let status = etcdctl(&endpoints.join(","), &["endpoint", "status", "-w", "json"]);
    assert!(status.status.success(), "status: {status:?}");
    let statuses: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    let statuses = statuses.as_array().expect("an array of endpoints");
    let leader_index = statuses
        .iter()
        .position(|s| s["Status"]["leader"] == s["Status"]["header"]["member_id"])
        .expect("one endpoint is the leader");
    let leader_name = format!("n{}", leader_index + 1);
    let pid = node_pid(&dev.data_dir.join(&leader_name))
        .unwrap_or_else(|| panic!("no process for {leader_name}"));
    let killed = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());

    // The survivors elect a leader and go on; nothing acknowledged is lost.
    let survivors: Vec<String> = endpoints
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader_index)
        .map(|(_, e)| e.clone())
        .collect();
    let put = etcdctl(&survivors.join(","), &["put", "after", "failover"]);
    assert!(
        put.status.success(),
        "put after killing {leader_name}: {put:?}"
    );
    let get = etcdctl(&survivors.join(","), &["get", "--prefix", ""]);
    assert_eq!(
        stdout(&get),
        "after\nfailover\ngreeting\nhello\n",
        "get after failover: {get:?}"
    );

    // Ctrl-C stops the remaining members and `synod dev` itself.
    let interrupted = Command::new("kill")
        .args(["-INT", &dev.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let start = Instant::now();
    loop {
        if let Some(status) = dev.child.try_wait().expect("wait works") {
            assert!(status.success(), "synod dev exited with {status}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "synod dev did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for name in ["n1", "n2", "n3"] {
        assert_eq!(
            node_pid(&dev.data_dir.join(name)),
            None,
            "{name} still runs after Ctrl-C"
        );
    }
}
