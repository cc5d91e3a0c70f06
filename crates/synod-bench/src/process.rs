//! The systems under test as child processes on loopback: a Synod cluster (`synod node`),
//! an etcd cluster (`etcd`), and the unreplicated Synod ceiling. Members are killed with
//! SIGKILL when dropped, so a failed run leaves nothing behind.

use crate::error::BenchError;
use serde::Serialize;
use std::fs::{self, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Endpoint;

/// Which system a measurement is of.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
pub enum System {
    /// Three Synod replicas, fsync on, linearizable reads on the leader's lease (the
    /// default `--read-mode lease`).
    #[serde(rename = "synod")]
    Synod,
    /// The same with `--read-mode read-index`: every linearizable read waits for a
    /// heartbeat round (no clock assumption). Measured on linearizable gets only.
    #[serde(rename = "synod-read-index")]
    SynodReadIndex,
    /// Three etcd members, fsync on (etcd always syncs).
    #[serde(rename = "etcd")]
    Etcd,
    /// One unreplicated Synod node with fsync off: what the client and gRPC alone allow.
    #[serde(rename = "ceiling")]
    Ceiling,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Synod => "synod",
            System::SynodReadIndex => "synod-read-index",
            System::Etcd => "etcd",
            System::Ceiling => "ceiling",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            System::Synod => "Synod ×3",
            System::SynodReadIndex => "Synod ×3, read-index",
            System::Etcd => "etcd ×3",
            System::Ceiling => "ceiling (1 node, no fsync)",
        }
    }
}

/// Hands out loopback ports that nothing listens on, counting up from a base far from
/// etcd's 2379/2380 and from the kernel's ephemeral range.
pub struct Ports {
    next: u16,
}

impl Ports {
    pub fn from(base: u16) -> Ports {
        Ports { next: base }
    }

    pub fn take(&mut self) -> Result<u16, BenchError> {
        while self.next < 32_000 {
            let port = self.next;
            self.next += 1;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
        Err(BenchError::new(
            "no free loopback port left below 32000 for the benchmark clusters",
        ))
    }
}

/// Timing shared by both replicated systems, as etcd's flags spell it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Timing {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
}

pub struct Member {
    pub name: String,
    pub client_url: String,
    /// Where the member serves `/metrics` (Synod's also on `client_url`).
    pub metrics_url: String,
    executable: PathBuf,
    args: Vec<String>,
    log_path: PathBuf,
    child: Child,
    alive: bool,
}

impl Member {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A running cluster of child processes.
pub struct ClusterProcesses {
    pub system: System,
    pub members: Vec<Member>,
    pub data_dir: PathBuf,
}

/// How to start one kind of cluster.
pub struct Launch<'a> {
    pub system: System,
    pub executable: &'a Path,
    pub members: usize,
    pub data_dir: PathBuf,
    pub timing: Timing,
}

/// Starts one member with its stderr appended to `log_path`.
fn spawn_member(
    executable: &Path,
    args: &[String],
    log_path: &Path,
    system: System,
    name: &str,
) -> Result<Child, BenchError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|error| BenchError::new(format!("opening {}: {error}", log_path.display())))?;
    let mut command = Command::new(executable);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // A benchmark killed or interrupted midway must not leave its members running: each
    // gets SIGTERM when the benchmark dies (members are started from the thread running
    // the benchmark, which outlives them). Each member is its own process group, so a
    // terminal's Ctrl-C reaches only the benchmark.
    synod_server::cli::die_with_parent(&mut command, None);
    command.spawn().map_err(|error| {
        BenchError::new(format!(
            "starting {} member {name} ({}): {error}",
            system.name(),
            executable.display()
        ))
    })
}

impl ClusterProcesses {
    /// Starts the members; [`ClusterProcesses::wait_ready`] waits for a leader.
    pub fn start(launch: Launch<'_>, ports: &mut Ports) -> Result<ClusterProcesses, BenchError> {
        let Launch {
            system,
            executable,
            members,
            data_dir,
            timing,
        } = launch;
        if data_dir.exists() {
            fs::remove_dir_all(&data_dir).map_err(|error| {
                BenchError::new(format!("clearing {}: {error}", data_dir.display()))
            })?;
        }
        fs::create_dir_all(&data_dir).map_err(|error| {
            BenchError::new(format!("creating {}: {error}", data_dir.display()))
        })?;
        let mut layout = Vec::new();
        for index in 0..members {
            layout.push((
                format!("n{}", index + 1),
                ports.take()?,
                ports.take()?,
                ports.take()?,
            ));
        }
        let initial_cluster = layout
            .iter()
            .map(|(name, _, peer, _)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = ClusterProcesses {
            system,
            members: Vec::new(),
            data_dir: data_dir.clone(),
        };
        for (name, client, peer, metrics) in &layout {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let metrics_url = format!("http://127.0.0.1:{metrics}");
            let member_dir = data_dir.join(name);
            let mut args = Vec::new();
            match system {
                System::Synod | System::SynodReadIndex | System::Ceiling => {
                    args.extend([
                        "node".to_string(),
                        format!("--name={name}"),
                        format!("--data-dir={}", member_dir.display()),
                        format!("--listen-client-urls={client_url}"),
                        format!("--listen-peer-urls={peer_url}"),
                        format!("--listen-metrics-urls={metrics_url}"),
                        format!("--initial-cluster={initial_cluster}"),
                        format!("--initial-cluster-token=bench-{}", system.name()),
                        format!("--heartbeat-interval={}", timing.heartbeat_interval_ms),
                        format!("--election-timeout={}", timing.election_timeout_ms),
                        // Leader changes, snapshots sent and installed, peers lost: a
                        // few lines a minute, and what a surprising figure is read with.
                        "--log-level=info".to_string(),
                        // The single-client put cells read each member's timeline.
                        "--enable-debug-timeline".to_string(),
                    ]);
                    if system == System::Ceiling {
                        args.push("--unsafe-no-fsync".to_string());
                    }
                    if system == System::SynodReadIndex {
                        args.push("--read-mode=read-index".to_string());
                    }
                }
                System::Etcd => {
                    // On a restart etcd finds its data directory and ignores the
                    // --initial-* flags, as for a member of a running cluster.
                    args.extend([
                        format!("--name={name}"),
                        format!("--data-dir={}", member_dir.display()),
                        format!("--listen-client-urls={client_url}"),
                        format!("--advertise-client-urls={client_url}"),
                        format!("--listen-peer-urls={peer_url}"),
                        format!("--initial-advertise-peer-urls={peer_url}"),
                        format!("--listen-metrics-urls={metrics_url}"),
                        format!("--initial-cluster={initial_cluster}"),
                        "--initial-cluster-state=new".to_string(),
                        "--initial-cluster-token=bench-etcd".to_string(),
                        format!("--heartbeat-interval={}", timing.heartbeat_interval_ms),
                        format!("--election-timeout={}", timing.election_timeout_ms),
                        "--logger=zap".to_string(),
                        "--log-level=warn".to_string(),
                    ]);
                }
            }
            let log_path = data_dir.join(format!("{name}.log"));
            let child = spawn_member(executable, &args, &log_path, system, name)?;
            cluster.members.push(Member {
                name: name.clone(),
                client_url,
                metrics_url,
                executable: executable.to_path_buf(),
                args,
                log_path,
                child,
                alive: true,
            });
        }
        Ok(cluster)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|member| member.alive)
            .map(|member| member.client_url.clone())
            .collect()
    }

    /// Process ids of the members still running.
    pub fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter(|member| member.alive)
            .map(Member::pid)
            .collect()
    }

    /// Total CPU time the running members have used.
    pub fn cpu_time(&self) -> Duration {
        self.pids()
            .into_iter()
            .filter_map(crate::machine::process_cpu_time)
            .sum()
    }

    /// The last lines a member wrote to its log, to explain a failure.
    fn log_tail(&self, name: &str) -> String {
        let text =
            fs::read_to_string(self.data_dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Fails if a member exited on its own.
    fn check_alive(&mut self) -> Result<(), BenchError> {
        for index in 0..self.members.len() {
            let member = &mut self.members[index];
            if !member.alive {
                continue;
            }
            if let Ok(Some(status)) = member.child.try_wait() {
                member.alive = false;
                let name = member.name.clone();
                return Err(BenchError::new(format!(
                    "{} member {name} exited ({status}); its log ends:\n{}",
                    self.system.name(),
                    self.log_tail(&name)
                )));
            }
        }
        Ok(())
    }

    /// Each member's own id and the leader it reports, from `Maintenance.Status`.
    pub async fn statuses(&self) -> Vec<Option<(u64, u64)>> {
        let mut statuses = Vec::new();
        for member in &self.members {
            statuses.push(if member.alive {
                status_of(&member.client_url).await.ok()
            } else {
                None
            });
        }
        statuses
    }

    /// Index of the member that leads, when the running members agree on one.
    pub async fn leader_index(&self) -> Option<usize> {
        let statuses = self.statuses().await;
        let mut leaders = statuses.iter().flatten().map(|(_, leader)| *leader);
        let leader = leaders.next()?;
        if leader == 0 || leaders.any(|other| other != leader) {
            return None;
        }
        statuses
            .iter()
            .position(|status| matches!(status, Some((id, _)) if *id == leader))
    }

    /// Waits until every member answers and they agree on a leader.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<usize, BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let statuses = self.statuses().await;
            if statuses.iter().all(Option::is_some) {
                if let Some(leader) = self.leader_index().await {
                    return Ok(leader);
                }
            }
            if Instant::now() >= deadline {
                return Err(BenchError::new(format!(
                    "{} did not elect a leader within {timeout:?} (statuses: {statuses:?}); logs in {}",
                    self.system.name(),
                    self.data_dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL to one member (as `kill -9`), then reaps it.
    pub fn kill(&mut self, index: usize) -> Result<(), BenchError> {
        let member = self
            .members
            .get_mut(index)
            .ok_or_else(|| BenchError::new(format!("no member {index} to kill")))?;
        member
            .child
            .kill()
            .map_err(|error| BenchError::new(format!("killing {}: {error}", member.name)))?;
        let _ = member.child.wait();
        member.alive = false;
        Ok(())
    }

    /// Starts a killed member again from its data directory, with the same flags.
    pub fn restart(&mut self, index: usize) -> Result<(), BenchError> {
        let system = self.system;
        let member = self
            .members
            .get_mut(index)
            .ok_or_else(|| BenchError::new(format!("no member {index} to restart")))?;
        if member.alive {
            return Err(BenchError::new(format!(
                "member {} is running",
                member.name
            )));
        }
        member.child = spawn_member(
            &member.executable,
            &member.args,
            &member.log_path,
            system,
            &member.name,
        )?;
        member.alive = true;
        Ok(())
    }

    /// Kills every member and removes the data directory.
    pub fn stop(mut self) {
        self.kill_all();
        let _ = fs::remove_dir_all(&self.data_dir);
    }

    /// Kills every member and removes their data, leaving the members' logs (the
    /// `<name>.log` files beside the data directories) until the next run.
    pub fn stop_keeping_logs(mut self) {
        self.kill_all();
        for member in &self.members {
            let _ = fs::remove_dir_all(self.data_dir.join(&member.name));
        }
    }

    fn kill_all(&mut self) {
        for member in &mut self.members {
            if member.alive {
                let _ = member.child.kill();
                let _ = member.child.wait();
                member.alive = false;
            }
        }
    }
}

impl Drop for ClusterProcesses {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// `(member id, leader id)` as one endpoint reports them.
pub async fn status_of(url: &str) -> Result<(u64, u64), BenchError> {
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|error| BenchError::new(format!("bad endpoint {url:?}: {error}")))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|error| BenchError::new(format!("connecting to {url}: {error}")))?;
    let status = MaintenanceClient::new(channel)
        .status(pb::StatusRequest {})
        .await
        .map_err(|status| BenchError::new(format!("status of {url}: {}", status.message())))?
        .into_inner();
    let member_id = status.header.map_or(0, |header| header.member_id);
    Ok((member_id, status.leader))
}

/// Finds an executable on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `3.4.23` from `etcd --version`.
pub fn etcd_version(executable: &Path) -> Result<String, BenchError> {
    let output = Command::new(executable)
        .arg("--version")
        .output()
        .map_err(|error| {
            BenchError::new(format!(
                "running {} --version: {error}",
                executable.display()
            ))
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("etcd Version:"))
        .map(|version| version.trim().to_string())
        .ok_or_else(|| {
            BenchError::new(format!(
                "{} --version printed no version",
                executable.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_skip_one_that_is_taken() {
        let free = Ports::from(24_000).take().unwrap();
        let _held = std::net::TcpListener::bind(("127.0.0.1", free)).unwrap();
        let next = Ports::from(free).take().unwrap();
        assert!(next > free, "{next} is after the held port {free}");
    }

    /// `kill <benchmark>` left every member (Synod and etcd) running: each now gets
    /// SIGTERM when the thread that started it is gone, as the whole benchmark is when
    /// its process dies.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_member_does_not_outlive_the_benchmark_that_started_it() {
        let dir = tempfile::tempdir().unwrap();
        let member = script(dir.path(), "exec sleep 60");
        let log = dir.path().join("member.log");
        let started = std::thread::spawn(move || {
            spawn_member(&member, &[], &log, System::Synod, "n1").unwrap()
        });
        let mut child = started.join().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the member outlived the thread that started it");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    }

    /// A stand-in member: a script that ignores its flags.
    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("member.sh");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn launch(executable: &Path, data_dir: PathBuf) -> Launch<'_> {
        Launch {
            system: System::Etcd,
            executable,
            members: 3,
            data_dir,
            timing: Timing {
                heartbeat_interval_ms: 100,
                election_timeout_ms: 1000,
            },
        }
    }

    #[test]
    fn a_killed_member_leaves_the_endpoints_and_comes_back_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let executable = script(dir.path(), "exec sleep 30");
        let data_dir = dir.path().join("cluster");
        let mut cluster = ClusterProcesses::start(
            launch(&executable, data_dir.clone()),
            &mut Ports::from(24_100),
        )
        .unwrap();
        assert_eq!(cluster.endpoints().len(), 3);
        let killed_pid = cluster.members[1].pid();
        cluster.kill(1).unwrap();
        assert_eq!(cluster.endpoints().len(), 2);
        assert!(!cluster.pids().contains(&killed_pid));
        assert!(
            cluster.restart(0).is_err(),
            "a running member is not restarted"
        );
        cluster.restart(1).unwrap();
        assert_eq!(cluster.pids().len(), 3);
        assert_ne!(cluster.members[1].pid(), killed_pid);
        cluster.stop();
        assert!(!data_dir.exists());
    }

    #[test]
    fn stopping_with_logs_kept_removes_the_members_data_but_not_their_logs() {
        let dir = tempfile::tempdir().unwrap();
        // A member that says something and fills its data directory (named by the flag).
        let executable = script(
            dir.path(),
            "for flag; do case $flag in --data-dir=*) d=${flag#--data-dir=};; esac; done\n\
             mkdir -p \"$d\" && echo state > \"$d/wal\"\n\
             echo 'became leader' >&2\n\
             exec sleep 30",
        );
        let data_dir = dir.path().join("cluster");
        let cluster = ClusterProcesses::start(
            launch(&executable, data_dir.clone()),
            &mut Ports::from(24_300),
        )
        .unwrap();
        let names: Vec<String> = cluster.members.iter().map(|m| m.name.clone()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !names.iter().all(|name| {
            data_dir.join(name).join("wal").exists()
                && fs::read_to_string(data_dir.join(format!("{name}.log")))
                    .is_ok_and(|log| log.contains("became leader"))
        }) {
            assert!(
                Instant::now() < deadline,
                "the stand-in members did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster.stop_keeping_logs();
        for name in &names {
            assert!(!data_dir.join(name).exists(), "{name}'s data is removed");
            let log = fs::read_to_string(data_dir.join(format!("{name}.log"))).unwrap();
            assert!(
                log.contains("became leader"),
                "{name}'s log is kept: {log:?}"
            );
        }
    }

    #[test]
    fn a_member_that_exits_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let executable = script(dir.path(), "echo 'bad flag' >&2; exit 3");
        let mut cluster = ClusterProcesses::start(
            launch(&executable, dir.path().join("c")),
            &mut Ports::from(24_200),
        )
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime
            .block_on(cluster.wait_ready(Duration::from_secs(10)))
            .unwrap_err();
        assert!(error.0.contains("exited"), "{error}");
        assert!(error.0.contains("bad flag"), "{error}");
    }

    #[test]
    fn a_missing_program_is_not_found_on_the_path() {
        assert!(find_on_path("surely-no-such-program-synod").is_none());
        assert!(find_on_path("sh").is_some());
    }
}
