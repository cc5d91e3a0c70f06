//! The three `synod node` processes under test, and the means to hurt them: SIGKILL and a
//! restart from the same data directory, SIGSTOP/SIGCONT, a restart under libfaketime at
//! another clock rate, and a full disk (each data directory its own small tmpfs).
//!
//! Members are started from the thread that owns the [`Cluster`] (the run's main thread:
//! Linux sends the parent-death signal when the *thread* that forked exits), in one process
//! group, with SIGKILL as their parent-death signal, so they die with the chaos process
//! however it dies, even while stopped. `Drop` kills what is left, then unmounts.

use crate::ChaosError;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Endpoint;

/// How every member is started.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub executable: PathBuf,
    pub read_mode: String,
    pub max_clock_drift_percent: u64,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Members run under uids of their own (needed for partitions; root only).
    pub own_uids: bool,
    /// Each data directory is a tmpfs of this many MiB (needed for disk-full; root only).
    pub tmpfs_mib: Option<u64>,
}

/// One member: where it listens and what it runs as.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// The uid its packets carry (0 when members are not given uids of their own).
    pub uid: u32,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// Its Synod member id (learned from `Status`).
    pub id: u64,
    args: Vec<String>,
    child: Option<Child>,
    /// `FAKETIME` rate it runs at, when not 1.
    pub clock_rate: Option<f64>,
    pub stopped: bool,
    mounted: bool,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    settings: NodeSettings,
    /// The members' process group (the first member's pid).
    group: Option<u32>,
    libfaketime: Option<PathBuf>,
}

/// `n` distinct free loopback ports (all held open until every one is picked).
fn free_ports(n: usize) -> Result<Vec<u16>, ChaosError> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ChaosError::Setup(format!("no free loopback port: {error}")))?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<Result<_, _>>()
        .map_err(|error| ChaosError::Setup(format!("no free loopback port: {error}")))
}

/// A uid per member no account uses: high, and distinct per chaos process.
fn member_uid(index: usize) -> u32 {
    2_000_000_000 + (std::process::id() % 100_000) * 4 + index as u32 + 1
}

impl Cluster {
    /// Lays out three members under `dir` and starts them.
    pub fn start(
        settings: NodeSettings,
        dir: &Path,
        libfaketime: Option<PathBuf>,
    ) -> Result<Cluster, ChaosError> {
        let ports = free_ports(6)?;
        let initial_cluster = (0..3)
            .map(|index| format!("n{}=http://127.0.0.1:{}", index + 1, ports[3 + index]))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            members: Vec::new(),
            settings,
            group: None,
            libfaketime,
        };
        for index in 0..3 {
            let member =
                cluster.lay_out(dir, index, ports[index], ports[3 + index], &initial_cluster)?;
            cluster.members.push(member);
        }
        for index in 0..3 {
            cluster.spawn(index)?;
        }
        Ok(cluster)
    }

    fn lay_out(
        &self,
        dir: &Path,
        index: usize,
        client_port: u16,
        peer_port: u16,
        initial_cluster: &str,
    ) -> Result<Member, ChaosError> {
        let name = format!("n{}", index + 1);
        let data_dir = dir.join(&name);
        fs::create_dir_all(&data_dir).map_err(|error| {
            ChaosError::Setup(format!("creating {}: {error}", data_dir.display()))
        })?;
        let uid = if self.settings.own_uids {
            member_uid(index)
        } else {
            0
        };
        let mut member = Member {
            name: name.clone(),
            client_port,
            peer_port,
            uid,
            log_path: dir.join(format!("{name}.log")),
            data_dir,
            id: 0,
            args: Vec::new(),
            child: None,
            clock_rate: None,
            stopped: false,
            mounted: false,
        };
        if let Some(mib) = self.settings.tmpfs_mib {
            mount_tmpfs(&member.data_dir, mib, uid)?;
            member.mounted = true;
        } else if uid != 0 {
            chown(&member.data_dir, uid)?;
        }
        member.args = self.node_args(&member, initial_cluster);
        Ok(member)
    }

    fn node_args(&self, member: &Member, initial_cluster: &str) -> Vec<String> {
        let settings = &self.settings;
        vec![
            "node".to_string(),
            format!("--name={}", member.name),
            format!("--data-dir={}", member.data_dir.join("data").display()),
            format!("--listen-client-urls={}", member.client_url()),
            format!("--listen-peer-urls=http://127.0.0.1:{}", member.peer_port),
            format!("--initial-cluster={initial_cluster}"),
            format!("--initial-cluster-token=synod-chaos-{}", std::process::id()),
            format!("--heartbeat-interval={}", settings.heartbeat_interval_ms),
            format!("--election-timeout={}", settings.election_timeout_ms),
            format!("--read-mode={}", settings.read_mode),
            format!(
                "--max-clock-drift-percent={}",
                settings.max_clock_drift_percent
            ),
            // Short: a request stuck behind a failover comes back as indeterminate soon.
            "--request-timeout=2000".to_string(),
            // Frequent snapshots: restarted members catch up from them, and a full disk
            // is met soon.
            "--snapshot-count=1000".to_string(),
            "--log-level=warn".to_string(),
        ]
    }

    /// Starts member `index` (its clock rate as set in `clock_rate`).
    fn spawn(&mut self, index: usize) -> Result<(), ChaosError> {
        let group = self.group;
        let libfaketime = self.libfaketime.clone();
        let executable = self.settings.executable.clone();
        let member = &mut self.members[index];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .map_err(|error| {
                ChaosError::Setup(format!("opening {}: {error}", member.log_path.display()))
            })?;
        let mut command = Command::new(&executable);
        command
            .args(&member.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(rate) = member.clock_rate {
            let library = libfaketime.ok_or_else(|| {
                ChaosError::Fault("a clock rate was set but libfaketime was not found".into())
            })?;
            command
                .env("LD_PRELOAD", library)
                .env("FAKETIME", format!("+0 x{rate}"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "0");
        }
        die_with_parent(&mut command, group, member.uid);
        let child = command.spawn().map_err(|error| {
            ChaosError::Fault(format!(
                "starting {} ({}): {error}",
                member.name,
                executable.display()
            ))
        })?;
        self.group.get_or_insert(child.id());
        member.child = Some(child);
        member.stopped = false;
        Ok(())
    }

    /// `kill -9`, then reaps it.
    pub fn kill(&mut self, index: usize) {
        let member = &mut self.members[index];
        if let Some(mut child) = member.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        member.stopped = false;
    }

    /// Starts a killed member again from its data directory.
    pub fn restart(&mut self, index: usize) -> Result<(), ChaosError> {
        if self.members[index].running() {
            self.kill(index);
        }
        self.spawn(index)
    }

    /// SIGSTOP (`stop = true`) or SIGCONT to a running member.
    pub fn signal_stop(&mut self, index: usize, stop: bool) -> Result<(), ChaosError> {
        let member = &mut self.members[index];
        let Some(pid) = member.pid() else {
            return Ok(());
        };
        let signal = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on the pid of our own unreaped child; no memory is involved.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            return Err(ChaosError::Fault(format!(
                "signalling {} (pid {pid}): {}",
                member.name,
                std::io::Error::last_os_error()
            )));
        }
        member.stopped = stop;
        Ok(())
    }

    /// Members that exited on their own since the last look: `(index, how)`. They are
    /// reaped and marked as not running.
    pub fn exited(&mut self) -> Vec<(usize, String)> {
        let mut exits = Vec::new();
        for (index, member) in self.members.iter_mut().enumerate() {
            if let Some(child) = member.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    member.child = None;
                    exits.push((index, status.to_string()));
                }
            }
        }
        exits
    }

    /// The last lines of a member's log.
    pub fn log_tail(&self, index: usize, lines: usize) -> String {
        let text = fs::read_to_string(&self.members[index].log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn libfaketime(&self) -> Option<&Path> {
        self.libfaketime.as_deref()
    }

    /// Kills every member and unmounts their tmpfs data directories.
    pub fn stop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
        for member in &mut self.members {
            if member.mounted {
                match unmount(&member.data_dir) {
                    Ok(()) => member.mounted = false,
                    Err(error) => tracing::error!(%error, "unmounting a member's tmpfs failed"),
                }
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One process group for the members, SIGKILL when the chaos process dies (a stopped
/// member would hold SIGTERM until continued), and the member's own uid if it has one.
fn die_with_parent(command: &mut Command, group: Option<u32>, uid: u32) {
    use std::os::unix::process::CommandExt;
    command.process_group(group.map_or(0, |pgid| pgid as i32));
    if uid != 0 {
        command.uid(uid).gid(uid);
    }
    let parent = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec (after the uid change,
    // which would clear the parent-death signal) and calls only prctl(2) and getppid(2),
    // which are async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then no signal will come.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), ChaosError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| ChaosError::Setup(format!("running {program}: {error}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ChaosError::Setup(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

fn chown(path: &Path, uid: u32) -> Result<(), ChaosError> {
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .map_err(|error| ChaosError::Setup(format!("chown {}: {error}", path.display())))
}

fn mount_tmpfs(path: &Path, mib: u64, uid: u32) -> Result<(), ChaosError> {
    let options = format!("size={mib}m,mode=0755,uid={uid},gid={uid}");
    let target = path.display().to_string();
    run(
        "mount",
        &["-t", "tmpfs", "-o", &options, "synod-chaos", &target],
    )
}

fn unmount(path: &Path) -> Result<(), ChaosError> {
    run("umount", &[&path.display().to_string()])
}

/// Fills the file system holding `dir` until a write fails with ENOSPC; returns the file.
pub fn fill_disk(dir: &Path) -> Result<PathBuf, ChaosError> {
    let path = dir.join("chaos-filler");
    let mut file = File::create(&path)
        .map_err(|error| ChaosError::Fault(format!("creating {}: {error}", path.display())))?;
    let chunk = vec![0xAAu8; 1 << 20];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(error) => {
                return Err(ChaosError::Fault(format!(
                    "filling {}: {error}",
                    path.display()
                )))
            }
        }
    }
    // The last partial chunk: byte-sized writes until not one more fits.
    while file.write(&[0xAA; 4096]).is_ok_and(|written| written > 0) {}
    while file.write(&[0xAA]).is_ok_and(|written| written > 0) {}
    Ok(path)
}

/// `(member id, leader id)` as one member reports them; `None` if it does not answer
/// within `timeout`.
pub async fn status(url: &str, timeout: Duration) -> Option<(u64, u64)> {
    let attempt = async {
        let channel = Endpoint::from_shared(url.to_string())
            .ok()?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await
            .ok()?;
        let status = MaintenanceClient::new(channel)
            .status(pb::StatusRequest {})
            .await
            .ok()?
            .into_inner();
        Some((
            status.header.map_or(0, |header| header.member_id),
            status.leader,
        ))
    };
    tokio::time::timeout(timeout, attempt).await.ok().flatten()
}

/// Waits until every member in `indices` answers and they name the same leader; returns
/// the leader's id.
pub async fn wait_for_leader(urls: &[String], deadline: Duration) -> Option<u64> {
    let give_up = Instant::now() + deadline;
    while Instant::now() < give_up {
        let mut leaders = Vec::new();
        for url in urls {
            leaders.push(
                status(url, Duration::from_millis(500))
                    .await
                    .map(|(_, leader)| leader),
            );
        }
        if let Some(Some(first)) = leaders.first() {
            if *first != 0 && leaders.iter().all(|leader| *leader == Some(*first)) {
                return Some(*first);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
