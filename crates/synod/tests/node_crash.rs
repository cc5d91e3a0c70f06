//! Three `synod node` processes under a stream of `etcdctl put`s are all killed with
//! SIGKILL mid-stream, restarted from their data directories, and must still hold every
//! write that was acknowledged.

mod common;

use common::{etcdctl, etcdctl_present};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

struct Cluster {
    dir: std::path::PathBuf,
    clients: Vec<u16>,
    peers: Vec<u16>,
    children: Vec<Child>,
}

impl Cluster {
    fn endpoints(&self) -> String {
        self.clients
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start(&mut self) {
        let initial: Vec<String> = self
            .peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("n{}=http://127.0.0.1:{p}", i + 1))
            .collect();
        for i in 0..3 {
            let log =
                std::fs::File::create(self.dir.join(format!("n{}.log", i + 1))).expect("log file");
            let child = Command::new(env!("CARGO_BIN_EXE_synod"))
                .arg("node")
                .arg(format!("--name=n{}", i + 1))
                .arg(format!(
                    "--data-dir={}",
                    self.dir.join(format!("n{}", i + 1)).display()
                ))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{}",
                    self.clients[i]
                ))
                .arg(format!(
                    "--listen-peer-urls=http://127.0.0.1:{}",
                    self.peers[i]
                ))
                .arg(format!("--initial-cluster={}", initial.join(",")))
                .arg("--log-level=warn")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("synod node starts");
            self.children.push(child);
        }
        let start = Instant::now();
        while !etcdctl(&self.endpoints(), &["endpoint", "health"])
            .status
            .success()
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "cluster not healthy; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill_all(&mut self) {
        for child in &mut self.children {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn every_acknowledged_write_survives_sigkill_of_the_whole_cluster() {
    if !etcdctl_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("synod-node-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("test dir");
    let ports = free_ports(6);
    let mut cluster = Cluster {
        dir,
        clients: ports[..3].to_vec(),
        peers: ports[3..].to_vec(),
        children: Vec::new(),
    };
    cluster.start();

    // Three writers put keys back to back and record what was acknowledged.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let endpoints = cluster.endpoints();
            let acknowledged = Arc::clone(&acknowledged);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("key-{w}-{n:04}");
                    let out = etcdctl(&endpoints, &["put", &key, &format!("value-{n}")]);
                    if out.status.success() {
                        acknowledged.lock().unwrap().push(key);
                    }
                    n += 1;
                }
            })
        })
        .collect();
    // Let writes flow, then kill every node at once, mid-stream.
    let start = Instant::now();
    while acknowledged.lock().unwrap().len() < 30 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "writes do not go through"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.kill_all();
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.join().expect("writer thread");
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    cluster.start();
    let out = etcdctl(
        &cluster.endpoints(),
        &["get", "--prefix", "key-", "--keys-only"],
    );
    assert!(out.status.success(), "get after restart: {out:?}");
    let present: std::collections::BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !present.contains(*k))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost after SIGKILL: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    // And the restarted cluster takes new writes.
    let out = etcdctl(&cluster.endpoints(), &["put", "after-restart", "ok"]);
    assert!(out.status.success(), "put after restart: {out:?}");
}
