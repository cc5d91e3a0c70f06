//! `synod bench …`: measurements that print a table and write JSON.

use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Write-ahead log appends with fdatasync (1 writer, N writers through group commit)
    /// next to the raw fdatasync rate of the same disk, measured in the same run.
    Storage {
        /// Directory on the disk to measure (created; the files are removed afterwards).
        #[arg(long, default_value = "synod-data/bench-storage")]
        dir: PathBuf,
        /// Concurrent writers submitting through group commit.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Bytes of client command per appended entry.
        #[arg(long, default_value_t = 128)]
        payload: usize,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Synod ×3 vs etcd ×3 (where `etcd` is installed) vs one unreplicated Synod node
    /// without fsync, driven by the same etcd v3 load generator in one run; plus the
    /// disk's fdatasync latency, the loopback round trip, and a leader kill -9 under load.
    /// Prints a table; writes cluster.json, cluster.svg and a README section.
    Cluster(ClusterArgs),
    /// Memory of the KV store's history: 1 M revisions of 100-byte values over 1, 10,000
    /// and 1 M keys, before and after a compaction (docs/mvcc.md).
    Mvcc(crate::bench_mvcc::MvccArgs),
    /// etcd Watch event latency, from a put's acknowledgement at the leader to each
    /// watcher's stream, at 1, 100 and 10,000 watchers on one member, beside the puts' own
    /// latency. A fresh Synod ×3 cluster per watcher count. Prints a table; writes
    /// watch.json, watch.svg and a README section.
    Watch(WatchArgs),
    /// Leases: keep-alives per second with 10,000 leases kept alive by one client over one
    /// stream, and expiry lateness (delete event − keep-alive ack − TTL) of 1,000 leases
    /// after the leader is killed. One fresh Synod ×3 cluster. Prints a table; writes
    /// leases.json.
    Leases(LeasesArgs),
}

#[derive(Args)]
struct LeasesArgs {
    /// Leases kept alive by the one client.
    #[arg(long, default_value_t = 10_000)]
    leases: usize,
    /// Seconds of keep-alives.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Keep-alives in flight on the stream.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Leases left to expire after the leader kill (one key each).
    #[arg(long, default_value_t = 1_000)]
    expiry_leases: usize,
    /// Their TTL in seconds.
    #[arg(long, default_value_t = 5)]
    ttl: i64,
    /// Data directory of the cluster (removed afterwards).
    #[arg(long, default_value = "synod-data/bench-leases")]
    dir: PathBuf,
    /// Where leases.json is written.
    #[arg(long, default_value = "docs/bench")]
    out_dir: PathBuf,
    /// The synod executable to run the members [default: this one].
    #[arg(long)]
    synod_bin: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn run_leases(args: LeasesArgs) -> ExitCode {
    let synod_executable = match args.synod_bin.map_or_else(std::env::current_exe, Ok) {
        Ok(path) => path,
        Err(error) => {
            eprintln!("cannot locate the synod executable: {error}");
            return ExitCode::FAILURE;
        }
    };
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        eprintln!("--seconds must be a positive number");
        return ExitCode::FAILURE;
    }
    let mut options = synod_bench::leases::LeaseOptions::new(synod_executable);
    options.leases = args.leases;
    options.keep_alive_time = std::time::Duration::from_secs_f64(args.seconds);
    options.window = args.window;
    options.expiry_leases = args.expiry_leases;
    options.expiry_ttl_seconds = args.ttl;
    options.data_dir = args.dir;
    let outcome = if args.quiet {
        synod_bench::leases::run(&options, &synod_bench::Plain)
    } else {
        synod_bench::leases::run(&options, &synod_bench::Bar::new())
    };
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("leases bench failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    eprintln!("run took {:.0} s", report.run_seconds);
    match synod_bench::leases::write_outputs(&report, &args.out_dir) {
        Ok(paths) => {
            for path in paths {
                eprintln!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Args)]
struct WatchArgs {
    /// Watcher counts, comma-separated: one cell, and one fresh cluster, each.
    #[arg(long, value_delimiter = ',', default_value = "1,100,10000")]
    watchers: Vec<usize>,
    /// Puts per cell, one at a time, at the leader.
    #[arg(long, default_value_t = 200)]
    writes: usize,
    /// Puts start this many milliseconds apart (a modest pace: latency, not throughput).
    #[arg(long, default_value_t = 50.0)]
    write_interval_ms: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// gRPC watch streams carrying the watchers [default: min(watchers, 100)].
    #[arg(long)]
    streams: Option<usize>,
    /// HTTP/2 connections carrying the streams (etcd's client uses one).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// The member the watches attach to (writes always go to the leader).
    #[arg(long, default_value = "follower", value_parser = parse_watch_member)]
    member: synod_bench::watch::WatchMember,
    /// Where the members keep their data (removed afterwards).
    #[arg(long, default_value = "synod-data/bench-watch")]
    dir: PathBuf,
    /// Where watch.json, watch.svg and README.md (generated section) are written.
    #[arg(long, default_value = "docs/bench")]
    out_dir: PathBuf,
    /// The synod executable whose `node` subcommand runs the members [default: this one].
    #[arg(long)]
    synod_bin: Option<PathBuf>,
    /// A line per cell instead of a progress bar (for logs).
    #[arg(long)]
    quiet: bool,
}

fn parse_watch_member(name: &str) -> Result<synod_bench::watch::WatchMember, String> {
    synod_bench::watch::WatchMember::parse(name)
        .ok_or_else(|| format!("unknown member {name:?} (choose leader or follower)"))
}

fn run_watch(args: WatchArgs) -> ExitCode {
    let synod_executable = match args.synod_bin.map_or_else(std::env::current_exe, Ok) {
        Ok(path) => path,
        Err(error) => {
            eprintln!("cannot locate the synod executable: {error}");
            return ExitCode::FAILURE;
        }
    };
    if !(args.write_interval_ms.is_finite() && args.write_interval_ms >= 0.0) {
        eprintln!("--write-interval-ms must be a number ≥ 0");
        return ExitCode::FAILURE;
    }
    let mut options = synod_bench::watch::WatchOptions::new(synod_executable);
    options.watchers = args.watchers;
    options.writes = args.writes;
    options.write_interval = std::time::Duration::from_secs_f64(args.write_interval_ms / 1000.0);
    options.value_bytes = args.value_bytes;
    options.streams = args.streams;
    options.connections = args.connections;
    options.member = args.member;
    options.data_dir = args.dir;
    let outcome = if args.quiet {
        synod_bench::watch::run(&options, &synod_bench::Plain)
    } else {
        synod_bench::watch::run(&options, &synod_bench::Bar::new())
    };
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("watch bench failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.table());
    let errors = report.errors();
    for error in &errors {
        println!("error: {error}");
    }
    eprintln!("run took {:.0} s", report.run_seconds);
    match synod_bench::watch::write_outputs(&report, &args.out_dir) {
        Ok(paths) => {
            for path in paths {
                eprintln!("wrote {}", path.display());
            }
        }
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::FAILURE;
        }
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[derive(Args)]
struct ClusterArgs {
    /// Where the members keep their data: on the disk to measure (removed afterwards).
    #[arg(long, default_value = "synod-data/bench-cluster")]
    dir: PathBuf,
    /// Keep the data directories and the members' logs after the run. (A cluster whose
    /// failover trial stalled more than two election timeouts keeps its members' logs
    /// anyway, until the next run.)
    #[arg(long)]
    keep_data: bool,
    /// Where cluster.json, cluster.svg and README.md (generated section) are written.
    #[arg(long, default_value = "docs/bench")]
    out_dir: PathBuf,
    /// The etcd executable [default: `etcd` on PATH].
    #[arg(long)]
    etcd: Option<PathBuf>,
    /// Measure Synod alone even where etcd is installed.
    #[arg(long)]
    skip_etcd: bool,
    /// Leave out the unreplicated ceiling node.
    #[arg(long)]
    skip_ceiling: bool,
    /// Leave out the leader kill.
    #[arg(long)]
    skip_failover: bool,
    /// Leave the members' request timelines off in the single-client put cells: no
    /// step-by-step path of one put, and its p50 measured without the recording.
    #[arg(long)]
    skip_timeline: bool,
    /// Concurrent clients, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Workloads, comma-separated: put, get-linearizable, get-serializable, cas.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "put,get-linearizable,get-serializable,cas"
    )]
    workloads: Vec<String>,
    /// Synod's read modes to measure linearizable gets in: lease, read-index or both
    /// (both starts a second Synod cluster with `--read-mode read-index`; it adds one
    /// cell per client count).
    #[arg(long, default_value = "both", value_parser = parse_read_modes)]
    read_mode: synod_bench::report::ReadModes,
    /// Where the replicated systems' clients are, comma-separated, each its own cell:
    /// balanced (round-robin over every member, leader first, as etcd clients do),
    /// leader, follower (all pinned to that one member).
    #[arg(long, value_delimiter = ',', default_value = "balanced,leader,follower", value_parser = parse_placement)]
    placements: Vec<synod_bench::report::Placement>,
    /// HTTP/2 connections the load generator opens to each endpoint a cell uses (shared
    /// by that endpoint's clients; etcd's client libraries open one).
    #[arg(long, default_value_t = 4)]
    connections_per_endpoint: usize,
    /// Measured seconds per cell (after a 0.5 s warm-up).
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Leader heartbeat interval of both clusters, in milliseconds.
    #[arg(long, default_value_t = 100)]
    heartbeat_interval: u64,
    /// Election timeout of both clusters, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    election_timeout: u64,
    /// A line per measurement instead of a progress bar (for logs).
    #[arg(long)]
    quiet: bool,
}

fn parse_workload(name: &str) -> Option<synod_bench::load::Workload> {
    synod_bench::load::Workload::ALL
        .into_iter()
        .find(|workload| workload.name() == name.trim())
}

fn parse_placement(name: &str) -> Result<synod_bench::report::Placement, String> {
    synod_bench::report::Placement::parse(name)
        .ok_or_else(|| format!("unknown placement {name:?} (choose balanced, leader or follower)"))
}

fn parse_read_modes(name: &str) -> Result<synod_bench::report::ReadModes, String> {
    synod_bench::report::ReadModes::parse(name)
        .ok_or_else(|| format!("unknown read mode {name:?} (choose lease, read-index or both)"))
}

fn run_cluster(args: ClusterArgs) -> ExitCode {
    let synod_executable = match std::env::current_exe() {
        Ok(path) => path,
        Err(error) => {
            eprintln!("cannot locate the synod executable: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut workloads = Vec::new();
    for name in &args.workloads {
        match parse_workload(name) {
            Some(workload) => workloads.push(workload),
            None => {
                eprintln!(
                    "unknown workload {name:?} (choose from put, get-linearizable, get-serializable, cas)"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        eprintln!("--seconds must be a positive number");
        return ExitCode::FAILURE;
    }
    let mut options = synod_bench::ClusterOptions::new(synod_executable);
    options.data_dir = args.dir;
    options.keep_data = args.keep_data;
    options.etcd_executable = args.etcd;
    options.skip_etcd = args.skip_etcd;
    options.skip_ceiling = args.skip_ceiling;
    options.skip_failover = args.skip_failover;
    options.skip_timeline = args.skip_timeline;
    options.clients = args.clients;
    options.placements = args.placements;
    options.connections_per_endpoint = args.connections_per_endpoint.max(1);
    options.workloads = workloads;
    options.read_modes = args.read_mode;
    options.cell_duration = std::time::Duration::from_secs_f64(args.seconds);
    options.timing.heartbeat_interval_ms = args.heartbeat_interval;
    options.timing.election_timeout_ms = args.election_timeout;
    let outcome = if args.quiet {
        synod_bench::run(&options, &synod_bench::Plain)
    } else {
        synod_bench::run(&options, &synod_bench::Bar::new())
    };
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            eprintln!("cluster bench failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    for note in &report.notes {
        println!("note: {note}");
    }
    println!(
        "{}
",
        report.ceilings_line()
    );
    print!("{}", report.table());
    let read_modes = report.read_mode_table();
    if !read_modes.is_empty() {
        println!();
        print!("{read_modes}");
    }
    for table in [
        report.placement_table(),
        report.floor_table(),
        synod_bench::breakdown::table(&report.breakdowns),
    ] {
        if !table.is_empty() {
            println!();
            print!("{table}");
        }
    }
    if !report.failovers.is_empty() {
        println!();
        print!("{}", report.failover_table());
    }
    println!();
    print!("{}", report.targets_table());
    match synod_bench::write_outputs(&report, &args.out_dir) {
        Ok(paths) => {
            for path in paths {
                eprintln!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

pub fn run(args: BenchArgs) -> ExitCode {
    match args.command {
        BenchCommand::Cluster(args) => run_cluster(args),
        BenchCommand::Mvcc(args) => crate::bench_mvcc::run(args),
        BenchCommand::Watch(args) => run_watch(args),
        BenchCommand::Leases(args) => run_leases(args),
        BenchCommand::Storage {
            dir,
            writers,
            payload,
            out,
        } => {
            let options = synod_storage::BenchOptions {
                concurrent_writers: writers,
                payload_bytes: payload,
                ..Default::default()
            };
            eprintln!("[bench storage] measuring in {} …", dir.display());
            let result = synod_storage::bench(&dir, options);
            let _ = std::fs::remove_dir_all(&dir);
            match result {
                Ok(report) => {
                    print!("{}", report.table());
                    let json = report.to_json();
                    println!("{json}");
                    if let Some(path) = out {
                        if let Err(error) = std::fs::write(&path, &json) {
                            eprintln!("cannot write {}: {error}", path.display());
                            return ExitCode::FAILURE;
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("storage bench failed: {error}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
