//! The results of one `synod bench cluster` run, the targets judged against them,
//! and their renderings: a markdown table, JSON, and the README section.

use crate::load::{LoadResult, Workload};
use crate::machine::{Machine, Sampled};
use crate::process::System;
use serde::Serialize;

/// Which members the clients of a cell talk to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Round-robin over every member, leader first (client `i` at member
    /// `(leader + i) mod n`), as etcd's client libraries balance by default.
    #[default]
    Balanced,
    /// Every client at the leader.
    Leader,
    /// Every client at one follower, which forwards writes to the leader.
    Follower,
}

impl Placement {
    pub const ALL: [Placement; 3] = [Placement::Balanced, Placement::Leader, Placement::Follower];

    pub fn name(self) -> &'static str {
        match self {
            Placement::Balanced => "balanced",
            Placement::Leader => "leader",
            Placement::Follower => "follower",
        }
    }

    pub fn parse(name: &str) -> Option<Placement> {
        Placement::ALL
            .into_iter()
            .find(|placement| placement.name() == name.trim())
    }

    /// The endpoints the clients of this placement use, from every member's endpoint
    /// and the leader's index (`None`: unknown, the order is kept).
    pub fn endpoints(self, mut all: Vec<String>, leader: Option<usize>) -> Vec<String> {
        if let Some(leader) = leader.filter(|&leader| leader < all.len()) {
            all.rotate_left(leader);
        }
        match self {
            Placement::Balanced => all,
            Placement::Leader => all.into_iter().take(1).collect(),
            // With one member there is no follower: it is the leader.
            Placement::Follower if all.len() > 1 => vec![all.swap_remove(1)],
            Placement::Follower => all,
        }
    }
}

/// One system under one workload at one number of clients.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub system: System,
    pub workload: Workload,
    pub clients: usize,
    /// Where the clients were (the ceiling's single member counts as `balanced`).
    pub placement: Placement,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// CPU used by the system's processes over the cell (warm-up included), in percent
    /// of one CPU (the machine has `machine.cpus` × 100 %).
    pub server_cpu_percent: f64,
    /// CPU used by the load generator over the same time.
    pub client_cpu_percent: f64,
    pub first_error: Option<String>,
    /// For single-client puts of a replicated system: the disk's fdatasync p50 and the
    /// loopback round trip p50, probed just before the cell (the floor's parts, measured
    /// under the same machine load as the cell).
    pub probe_fdatasync_p50_us: Option<f64>,
    pub probe_loopback_rtt_p50_us: Option<f64>,
    /// Probed beside them: from the start of a majority of the members' fdatasyncs
    /// issued together on this one disk (each in its own file) until they have all
    /// returned, p50 (`machine::fdatasync_quorum_latency`).
    pub probe_quorum_fdatasync_p50_us: Option<f64>,
}

impl Cell {
    pub fn of(system: System, workload: Workload, clients: usize, result: &LoadResult) -> Cell {
        Cell {
            system,
            workload,
            clients,
            placement: Placement::Balanced,
            ops: result.ops,
            errors: result.errors,
            seconds: result.seconds,
            ops_per_sec: result.ops_per_sec(),
            p50_us: result.latency.p50_us,
            p99_us: result.latency.p99_us,
            max_us: result.latency.max_us,
            mean_us: result.latency.mean_us,
            server_cpu_percent: 0.0,
            client_cpu_percent: 0.0,
            first_error: result.first_error.clone(),
            probe_fdatasync_p50_us: None,
            probe_loopback_rtt_p50_us: None,
            probe_quorum_fdatasync_p50_us: None,
        }
    }
}

/// One kill -9 of the leader under load.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverTrial {
    pub killed: String,
    /// When the leader was killed, from the start of the measured window.
    pub killed_after_ms: u64,
    /// Longest time without any successful operation.
    pub stall_ms: u64,
    /// Client-visible errors at the surviving endpoints.
    pub errors: u64,
    pub ops: u64,
    pub new_leader: Option<String>,
}

/// Killing the leader of a replicated system under load, a few times (the killed member
/// is restarted between trials).
#[derive(Clone, Debug, Serialize)]
pub struct Failover {
    pub system: System,
    /// Put clients, all on the endpoints that survive.
    pub clients: usize,
    pub window_ms: u64,
    pub trials: Vec<FailoverTrial>,
    pub median_stall_ms: u64,
    pub max_stall_ms: u64,
    /// Client-visible errors over all trials.
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Failover {
    pub fn of(
        system: System,
        clients: usize,
        window_ms: u64,
        trials: Vec<FailoverTrial>,
        first_error: Option<String>,
    ) -> Failover {
        let mut stalls: Vec<u64> = trials.iter().map(|trial| trial.stall_ms).collect();
        stalls.sort_unstable();
        Failover {
            system,
            clients,
            window_ms,
            median_stall_ms: stalls.get(stalls.len() / 2).copied().unwrap_or(0),
            max_stall_ms: stalls.last().copied().unwrap_or(0),
            errors: trials.iter().map(|trial| trial.errors).sum(),
            trials,
            first_error,
        }
    }
}

/// The machine's limits, measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    pub fdatasync_block_bytes: usize,
    /// Write + fdatasync into a preallocated file in the benchmark's data directory.
    pub fdatasync: Sampled,
    pub loopback_message_bytes: usize,
    /// TCP ping-pong on 127.0.0.1.
    pub loopback_rtt: Sampled,
}

/// How the run was configured (what the README states beside the numbers).
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub clients: Vec<usize>,
    pub workloads: Vec<Workload>,
    pub warmup_ms: u64,
    pub cell_ms: u64,
    pub keyspace: usize,
    pub value_bytes: usize,
    pub connections_per_endpoint: usize,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms: u64,
    /// Synod's read modes the linearizable gets were measured in.
    pub read_modes: ReadModes,
    /// Where the replicated systems' clients were, each a cell of its own.
    pub placements: Vec<Placement>,
}

/// Which of Synod's read modes (`synod node --read-mode`) linearizable gets are
/// measured in; writes and serializable reads do not depend on it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadModes {
    Lease,
    ReadIndex,
    #[default]
    Both,
}

impl ReadModes {
    pub fn parse(name: &str) -> Option<ReadModes> {
        match name.trim() {
            "lease" => Some(ReadModes::Lease),
            "read-index" => Some(ReadModes::ReadIndex),
            "both" => Some(ReadModes::Both),
            _ => None,
        }
    }

    pub fn lease(self) -> bool {
        self != ReadModes::ReadIndex
    }

    pub fn read_index(self) -> bool {
        self != ReadModes::Lease
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Met,
    Missed,
    /// A figure it needs is not in this run (e.g. etcd is not installed).
    NotMeasured,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::NotMeasured => "not measured",
        }
    }
}

/// One of the targets, judged.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub goal: String,
    pub figure: String,
    pub verdict: Verdict,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClusterReport {
    pub date: String,
    pub machine: Machine,
    /// `etcd --version`, when etcd ran.
    pub etcd_version: Option<String>,
    /// Things a reader must know (etcd missing, a system that failed to start…).
    pub notes: Vec<String>,
    pub settings: Settings,
    pub ceilings: Ceilings,
    pub cells: Vec<Cell>,
    pub failovers: Vec<Failover>,
    /// Where a single client's put spends its time, per placement (Synod ×3).
    pub breakdowns: Vec<crate::breakdown::CellBreakdown>,
    /// The single-client put cells step by step (Synod ×3 pinned, and the ceiling).
    pub timelines: Vec<crate::timeline::CellTimeline>,
    pub targets: Vec<Target>,
}

pub fn format_ms(micros: u64) -> String {
    let ms = micros as f64 / 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

fn format_rate(ops_per_sec: f64) -> String {
    format!("{ops_per_sec:.0}")
}

fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| numerator / denominator)
}

impl ClusterReport {
    /// The cell with balanced clients (the ceiling's only one), or else the first
    /// placement measured.
    pub fn cell(&self, system: System, workload: Workload, clients: usize) -> Option<&Cell> {
        self.placed(system, workload, clients, Placement::Balanced)
            .or_else(|| {
                self.cells.iter().find(|cell| {
                    cell.system == system && cell.workload == workload && cell.clients == clients
                })
            })
    }

    /// The floor of `cell` (a durable replicated put at one client), per the issue: the
    /// unreplicated node's own round trip (its put p50 at one client) + one fdatasync
    /// (p50) + one peer round trip (loopback p50); at a follower one more peer round trip
    /// (the forward to the leader and the commit notice back). The disk and loopback
    /// figures are those probed just before the cell, else the run's.
    /// Returns (floor, ceiling p50, fdatasync p50, loopback p50, peer round trips).
    pub fn put_floor_us(&self, cell: &Cell) -> Option<(f64, f64, f64, f64, u32)> {
        let ceiling = self.cell(System::Ceiling, Workload::Put, 1)?.p50_us as f64;
        let fdatasync = cell
            .probe_fdatasync_p50_us
            .unwrap_or(self.ceilings.fdatasync.p50_us);
        let loopback = cell
            .probe_loopback_rtt_p50_us
            .unwrap_or(self.ceilings.loopback_rtt.p50_us);
        let round_trips = if cell.placement == Placement::Follower {
            2
        } else {
            1
        };
        Some((
            ceiling + fdatasync + f64::from(round_trips) * loopback,
            ceiling,
            fdatasync,
            loopback,
            round_trips,
        ))
    }

    /// Single-client put p50 per placement beside its floor.
    pub fn floor_table(&self) -> String {
        let mut out = String::new();
        for system in [System::Synod, System::Etcd] {
            for placement in Placement::ALL {
                let Some(cell) = self.placed(system, Workload::Put, 1, placement) else {
                    continue;
                };
                let Some((floor, ceiling, fdatasync, loopback, round_trips)) =
                    self.put_floor_us(cell)
                else {
                    continue;
                };
                if out.is_empty() {
                    out.push_str("| system | clients at | put p50 at 1 client µs | floor µs = ceiling's put p50 + fdatasync p50 + peer RTT p50 × round trips | above the floor µs | floor on one shared disk µs (a majority's fdatasyncs issued together, p50) | above it µs | floor with the leader log's own mean write + fdatasync in the cell µs | above it µs |\n| --- | --- | --: | --: | --: | --: | --: | --: | --: |\n");
                }
                // The probe runs alone between cells; on a shared disk the log's own
                // syncs during the cell can differ from it by milliseconds.
                let own = self
                    .breakdowns
                    .iter()
                    .find(|breakdown| {
                        system == System::Synod
                            && breakdown.placement == placement
                            && breakdown.clients == 1
                            && breakdown.breakdown.leader_fsync.count > 0
                    })
                    .map(|breakdown| floor - fdatasync + breakdown.breakdown.leader_fsync.mean_us);
                let shared = cell
                    .probe_quorum_fdatasync_p50_us
                    .map(|quorum| floor - fdatasync + quorum);
                out.push_str(&format!(
                    "| {} | {} | {} | {floor:.0} = {ceiling:.0} + {fdatasync:.0} + {loopback:.0} × {round_trips} | {:+.0} | {} | {} | {} | {} |\n",
                    system.name(),
                    placement.name(),
                    cell.p50_us,
                    cell.p50_us as f64 - floor,
                    shared.map_or("—".to_string(), |shared| format!("{shared:.0}")),
                    shared.map_or("—".to_string(), |shared| format!("{:+.0}", cell.p50_us as f64 - shared)),
                    own.map_or("—".to_string(), |own| format!("{own:.0}")),
                    own.map_or("—".to_string(), |own| format!("{:+.0}", cell.p50_us as f64 - own)),
                ));
            }
        }
        out
    }

    /// Throughput per placement of the replicated systems: what spreading clients over
    /// every member costs against pinning them to one.
    pub fn placement_table(&self) -> String {
        let mut out = String::new();
        for system in [System::Synod, System::SynodReadIndex, System::Etcd] {
            for workload in &self.settings.workloads {
                for &clients in &self.settings.clients {
                    let by: Vec<Option<&Cell>> = Placement::ALL
                        .iter()
                        .map(|placement| self.placed(system, *workload, clients, *placement))
                        .collect();
                    if by.iter().filter(|cell| cell.is_some()).count() < 2 {
                        continue;
                    }
                    if out.is_empty() {
                        out.push_str("| system | workload | clients | balanced ops/s | leader ops/s | follower ops/s | balanced ÷ best pinned | balanced ÷ ceiling | balanced / leader / follower p50 ms |\n| --- | --- | --: | --: | --: | --: | --: | --: | --: |\n");
                    }
                    let rate = |cell: &Option<&Cell>| {
                        cell.map_or("—".to_string(), |cell| format_rate(cell.ops_per_sec))
                    };
                    let p50 = |cell: &Option<&Cell>| {
                        cell.map_or("—".to_string(), |cell| format_ms(cell.p50_us))
                    };
                    let best_pinned = by[1..]
                        .iter()
                        .flatten()
                        .map(|cell| cell.ops_per_sec)
                        .fold(0.0, f64::max);
                    let balanced = by[0].map(|cell| cell.ops_per_sec);
                    let ceiling = self
                        .cell(System::Ceiling, *workload, clients)
                        .map(|cell| cell.ops_per_sec);
                    let share = |of: Option<f64>| match (balanced, of) {
                        (Some(balanced), Some(of)) if of > 0.0 => {
                            format!("{:.0} %", balanced / of * 100.0)
                        }
                        _ => "—".to_string(),
                    };
                    out.push_str(&format!(
                        "| {} | {} | {clients} | {} | {} | {} | {} | {} | {} / {} / {} |\n",
                        system.name(),
                        workload.name(),
                        rate(&by[0]),
                        rate(&by[1]),
                        rate(&by[2]),
                        share(Some(best_pinned)),
                        share(ceiling),
                        p50(&by[0]),
                        p50(&by[1]),
                        p50(&by[2]),
                    ));
                }
            }
        }
        out
    }

    pub fn placed(
        &self,
        system: System,
        workload: Workload,
        clients: usize,
        placement: Placement,
    ) -> Option<&Cell> {
        self.cells.iter().find(|cell| {
            cell.system == system
                && cell.workload == workload
                && cell.clients == clients
                && cell.placement == placement
        })
    }

    pub fn systems(&self) -> Vec<System> {
        [
            System::Synod,
            System::SynodReadIndex,
            System::Etcd,
            System::Ceiling,
        ]
        .into_iter()
        .filter(|system| self.cells.iter().any(|cell| cell.system == *system))
        .collect()
    }

    pub fn failover(&self, system: System) -> Option<&Failover> {
        self.failovers
            .iter()
            .find(|failover| failover.system == system)
    }

    /// The markdown table of every cell, systems side by side.
    pub fn table(&self) -> String {
        let systems = self.systems();
        let mut header = vec!["workload".to_string(), "clients".to_string()];
        for system in &systems {
            header.push(format!("{} ops/s", system.name()));
        }
        let side_by_side = systems.contains(&System::Synod) && systems.contains(&System::Etcd);
        if side_by_side {
            header.push("synod ÷ etcd".to_string());
        }
        for system in &systems {
            header.push(format!("{} p50 / p99 / max ms", system.name()));
        }
        let mut out = format!("| {} |\n", header.join(" | "));
        let aligns: Vec<&str> = header
            .iter()
            .enumerate()
            .map(|(index, _)| if index == 0 { "---" } else { "--:" })
            .collect();
        out.push_str(&format!("| {} |\n", aligns.join(" | ")));
        for workload in &self.settings.workloads {
            for &clients in &self.settings.clients {
                let mut row = vec![workload.name().to_string(), clients.to_string()];
                let cells: Vec<Option<&Cell>> = systems
                    .iter()
                    .map(|system| self.cell(*system, *workload, clients))
                    .collect();
                for cell in &cells {
                    row.push(cell.map_or("—".to_string(), |cell| {
                        let errors = if cell.errors > 0 {
                            format!(" ({} err)", cell.errors)
                        } else {
                            String::new()
                        };
                        format!("{}{errors}", format_rate(cell.ops_per_sec))
                    }));
                }
                if side_by_side {
                    let synod = self.cell(System::Synod, *workload, clients);
                    let etcd = self.cell(System::Etcd, *workload, clients);
                    row.push(
                        match (synod, etcd) {
                            (Some(synod), Some(etcd)) => ratio(synod.ops_per_sec, etcd.ops_per_sec),
                            _ => None,
                        }
                        .map_or("—".to_string(), |ratio| format!("{ratio:.2}×")),
                    );
                }
                for cell in &cells {
                    row.push(cell.map_or("—".to_string(), |cell| {
                        format!(
                            "{} / {} / {}",
                            format_ms(cell.p50_us),
                            format_ms(cell.p99_us),
                            format_ms(cell.max_us)
                        )
                    }));
                }
                out.push_str(&format!("| {} |\n", row.join(" | ")));
            }
        }
        out
    }

    /// Linearizable gets in each read mode, side by side: what read-index costs over the
    /// lease. Empty unless both modes were measured.
    pub fn read_mode_table(&self) -> String {
        let workload = Workload::GetLinearizable;
        let rows: Vec<(usize, &Cell, &Cell)> = self
            .settings
            .clients
            .iter()
            .filter_map(|&clients| {
                let lease = self.cell(System::Synod, workload, clients)?;
                let read_index = self.cell(System::SynodReadIndex, workload, clients)?;
                Some((clients, lease, read_index))
            })
            .collect();
        if rows.is_empty() {
            return String::new();
        }
        let mut out = String::from(
            "| linearizable get, clients | lease ops/s | read-index ops/s | read-index ÷ lease | lease p50 / p99 ms | read-index p50 / p99 ms |\n| --: | --: | --: | --: | --: | --: |\n",
        );
        for (clients, lease, read_index) in rows {
            out.push_str(&format!(
                "| {clients} | {} | {} | {} | {} / {} | {} / {} |\n",
                format_rate(lease.ops_per_sec),
                format_rate(read_index.ops_per_sec),
                ratio(read_index.ops_per_sec, lease.ops_per_sec)
                    .map_or("—".to_string(), |ratio| format!("{ratio:.2}×")),
                format_ms(lease.p50_us),
                format_ms(lease.p99_us),
                format_ms(read_index.p50_us),
                format_ms(read_index.p99_us),
            ));
        }
        out
    }

    /// CPU per system at each number of clients (the profile behind the throughput).
    pub fn cpu_table(&self) -> String {
        let systems = self.systems();
        let mut out = String::from("| workload | clients |");
        for system in &systems {
            out.push_str(&format!(" {} servers / client CPU % |", system.name()));
        }
        out.push_str("\n| --- | --: |");
        for _ in &systems {
            out.push_str(" --: |");
        }
        out.push('\n');
        for workload in &self.settings.workloads {
            for &clients in &self.settings.clients {
                out.push_str(&format!("| {} | {clients} |", workload.name()));
                for system in &systems {
                    match self.cell(*system, *workload, clients) {
                        Some(cell) => out.push_str(&format!(
                            " {:.0} / {:.0} |",
                            cell.server_cpu_percent, cell.client_cpu_percent
                        )),
                        None => out.push_str(" — |"),
                    }
                }
                out.push('\n');
            }
        }
        out
    }

    pub fn failover_table(&self) -> String {
        let mut out = String::from(
            "| system | trials | stall per trial ms | median stall ms | max stall ms | client errors | successful puts | first error |\n| --- | --: | --- | --: | --: | --: | --: | --- |\n",
        );
        for failover in &self.failovers {
            let stalls: Vec<String> = failover
                .trials
                .iter()
                .map(|trial| trial.stall_ms.to_string())
                .collect();
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                failover.system.name(),
                failover.trials.len(),
                stalls.join(", "),
                failover.median_stall_ms,
                failover.max_stall_ms,
                failover.errors,
                failover.trials.iter().map(|trial| trial.ops).sum::<u64>(),
                failover
                    .first_error
                    .as_deref()
                    .map_or("—".to_string(), |error| error.replace('|', "/"))
            ));
        }
        out
    }

    pub fn ceilings_line(&self) -> String {
        let disk = &self.ceilings.fdatasync;
        let rtt = &self.ceilings.loopback_rtt;
        format!(
            "Disk: write {} B + fdatasync p50 {} ms, p99 {} ms ({:.0}/s, one at a time). Loopback TCP round trip ({} B): p50 {:.0} µs, p99 {:.0} µs.",
            self.ceilings.fdatasync_block_bytes,
            format_ms(disk.p50_us as u64),
            format_ms(disk.p99_us as u64),
            disk.per_sec,
            self.ceilings.loopback_message_bytes,
            rtt.p50_us,
            rtt.p99_us
        )
    }

    pub fn targets_table(&self) -> String {
        let mut out = String::from("| target | measured | verdict |\n| --- | --- | --- |\n");
        for target in &self.targets {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                target.goal,
                target.figure,
                target.verdict.word()
            ));
        }
        out
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
    }

    /// Judges the targets against the cells and failovers of this run.
    pub fn evaluate_targets(&mut self) {
        let mut targets = Vec::new();
        let throughput_vs_etcd =
            |report: &ClusterReport, workload: Workload, goal: &str, factor: f64| {
                let synod = report.cell(System::Synod, workload, 64);
                let etcd = report.cell(System::Etcd, workload, 64);
                match (synod, etcd) {
                    (Some(synod), Some(etcd)) if etcd.ops_per_sec > 0.0 => {
                        let times = synod.ops_per_sec / etcd.ops_per_sec;
                        Target {
                            goal: goal.to_string(),
                            figure: format!(
                                "{times:.2}× ({:.0} vs {:.0} ops/s)",
                                synod.ops_per_sec, etcd.ops_per_sec
                            ),
                            verdict: if times >= factor {
                                Verdict::Met
                            } else {
                                Verdict::Missed
                            },
                        }
                    }
                    _ => Target {
                        goal: goal.to_string(),
                        figure: "no etcd figure in this run".to_string(),
                        verdict: Verdict::NotMeasured,
                    },
                }
            };
        targets.push(throughput_vs_etcd(
            self,
            Workload::Put,
            "put throughput at 64 clients ≥ 3× etcd",
            3.0,
        ));
        targets.push(
            match (
                self.cell(System::Synod, Workload::Put, 1),
                self.cell(System::Etcd, Workload::Put, 1),
            ) {
                (Some(synod), Some(etcd)) if etcd.p50_us > 0 => {
                    let times = synod.p50_us as f64 / etcd.p50_us as f64;
                    Target {
                        goal: "single-client put p50 ≤ 0.4× etcd".to_string(),
                        figure: format!(
                            "{times:.2}× ({} vs {} ms)",
                            format_ms(synod.p50_us),
                            format_ms(etcd.p50_us)
                        ),
                        verdict: if times <= 0.4 {
                            Verdict::Met
                        } else {
                            Verdict::Missed
                        },
                    }
                }
                _ => Target {
                    goal: "single-client put p50 ≤ 0.4× etcd".to_string(),
                    figure: "no etcd figure in this run".to_string(),
                    verdict: Verdict::NotMeasured,
                },
            },
        );
        targets.push(throughput_vs_etcd(
            self,
            Workload::GetLinearizable,
            "linearizable get at 64 clients ≥ 4× etcd",
            4.0,
        ));
        targets.push(throughput_vs_etcd(
            self,
            Workload::CompareAndSet,
            "CAS at 64 clients ≥ 5× etcd",
            5.0,
        ));
        let goal =
            "failover stall (median of the trials) ≤ etcd's, zero errors at surviving endpoints";
        targets.push(
            match (self.failover(System::Synod), self.failover(System::Etcd)) {
                (Some(synod), Some(etcd)) => Target {
                    goal: goal.to_string(),
                    figure: format!(
                        "median stall {} vs {} ms (max {} vs {}); {} errors (etcd {})",
                        synod.median_stall_ms,
                        etcd.median_stall_ms,
                        synod.max_stall_ms,
                        etcd.max_stall_ms,
                        synod.errors,
                        etcd.errors
                    ),
                    verdict: if synod.median_stall_ms <= etcd.median_stall_ms && synod.errors == 0 {
                        Verdict::Met
                    } else {
                        Verdict::Missed
                    },
                },
                (Some(synod), None) => Target {
                    goal: goal.to_string(),
                    figure: format!(
                        "median stall {} ms, {} errors; no etcd figure",
                        synod.median_stall_ms, synod.errors
                    ),
                    verdict: if synod.errors > 0 {
                        Verdict::Missed
                    } else {
                        Verdict::NotMeasured
                    },
                },
                _ => Target {
                    goal: goal.to_string(),
                    figure: "no failover in this run".to_string(),
                    verdict: Verdict::NotMeasured,
                },
            },
        );
        let goal = "put throughput ≥ 50% of the unreplicated ceiling (best over client counts)";
        let best = |system: System| {
            self.cells
                .iter()
                .filter(|cell| cell.system == system && cell.workload == Workload::Put)
                .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec))
        };
        targets.push(match (best(System::Synod), best(System::Ceiling)) {
            (Some(synod), Some(ceiling)) if ceiling.ops_per_sec > 0.0 => {
                let share = synod.ops_per_sec / ceiling.ops_per_sec;
                Target {
                    goal: goal.to_string(),
                    figure: format!(
                        "{:.0}% ({:.0} ops/s at {} clients vs {:.0} at {})",
                        share * 100.0,
                        synod.ops_per_sec,
                        synod.clients,
                        ceiling.ops_per_sec,
                        ceiling.clients
                    ),
                    verdict: if share >= 0.5 {
                        Verdict::Met
                    } else {
                        Verdict::Missed
                    },
                }
            }
            _ => Target {
                goal: goal.to_string(),
                figure: "no ceiling figure in this run".to_string(),
                verdict: Verdict::NotMeasured,
            },
        });
        self.latency_targets(&mut targets);
        self.targets = targets;
    }

    /// Issue 16's targets: the single-client put near its floor, balanced clients near
    /// pinned ones, linearizable gets near the unreplicated ceiling.
    fn latency_targets(&self, targets: &mut Vec<Target>) {
        for (placement, goal) in [
            (
                Placement::Leader,
                "single-client put p50 at the leader within 50 µs of the floor",
            ),
            (
                Placement::Follower,
                "single-client put p50 at a follower within 50 µs of the floor + one peer RTT",
            ),
        ] {
            let cell = self.placed(System::Synod, Workload::Put, 1, placement);
            targets.push(
                match (cell, cell.and_then(|cell| self.put_floor_us(cell))) {
                    (Some(cell), Some((floor, ..))) => {
                        let above = cell.p50_us as f64 - floor;
                        Target {
                            goal: goal.to_string(),
                            figure: format!(
                                "{} µs vs floor {floor:.0} µs ({above:+.0})",
                                cell.p50_us
                            ),
                            verdict: if above <= 50.0 {
                                Verdict::Met
                            } else {
                                Verdict::Missed
                            },
                        }
                    }
                    _ => Target {
                        goal: goal.to_string(),
                        figure: "placement or ceiling not in this run".to_string(),
                        verdict: Verdict::NotMeasured,
                    },
                },
            );
        }
        let goal = "put at 64 clients, balanced ≥ 80 % of the same clients pinned to one member";
        let balanced = self.placed(System::Synod, Workload::Put, 64, Placement::Balanced);
        let pinned = [Placement::Leader, Placement::Follower]
            .into_iter()
            .filter_map(|placement| self.placed(System::Synod, Workload::Put, 64, placement))
            .max_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
        targets.push(match (balanced, pinned) {
            (Some(balanced), Some(pinned)) if pinned.ops_per_sec > 0.0 => {
                let share = balanced.ops_per_sec / pinned.ops_per_sec;
                Target {
                    goal: goal.to_string(),
                    figure: format!(
                        "{:.0} % ({:.0} vs {:.0} ops/s at the {})",
                        share * 100.0,
                        balanced.ops_per_sec,
                        pinned.ops_per_sec,
                        pinned.placement.name()
                    ),
                    verdict: if share >= 0.8 {
                        Verdict::Met
                    } else {
                        Verdict::Missed
                    },
                }
            }
            _ => Target {
                goal: goal.to_string(),
                figure: "not both placements in this run".to_string(),
                verdict: Verdict::NotMeasured,
            },
        });
        let goal = "linearizable get at 64 clients, balanced ≥ 90 % of the unreplicated ceiling";
        targets.push(
            match (
                self.placed(
                    System::Synod,
                    Workload::GetLinearizable,
                    64,
                    Placement::Balanced,
                ),
                self.cell(System::Ceiling, Workload::GetLinearizable, 64),
            ) {
                (Some(synod), Some(ceiling)) if ceiling.ops_per_sec > 0.0 => {
                    let share = synod.ops_per_sec / ceiling.ops_per_sec;
                    Target {
                        goal: goal.to_string(),
                        figure: format!(
                            "{:.0} % ({:.0} vs {:.0} ops/s)",
                            share * 100.0,
                            synod.ops_per_sec,
                            ceiling.ops_per_sec
                        ),
                        verdict: if share >= 0.9 {
                            Verdict::Met
                        } else {
                            Verdict::Missed
                        },
                    }
                }
                _ => Target {
                    goal: goal.to_string(),
                    figure: "no balanced or ceiling figure in this run".to_string(),
                    verdict: Verdict::NotMeasured,
                },
            },
        );
    }

    /// The section `docs/bench/README.md` carries between its markers.
    pub fn readme_section(&self) -> String {
        let settings = &self.settings;
        let etcd = match &self.etcd_version {
            Some(version) => format!("etcd {version} ×3 (fsync on)"),
            None => "no etcd (not installed: Synod measured alone)".to_string(),
        };
        let mut out = String::new();
        out.push_str("## Cluster benchmark: Synod vs etcd vs the machine\n\n");
        out.push_str(&format!(
            "Measured {} on {} with `synod bench cluster`, in one run: Synod ×3 (fsync on), {}, and \
             a single unreplicated Synod node with fsync off (the ceiling: what the client and gRPC \
             alone allow). Both clusters use heartbeat {} ms and election timeout {} ms; the same \
             closed-loop etcd v3 gRPC client drives every system. Clients are placed {}: \
             *balanced* is client i at member (leader + i) mod n, as etcd's client libraries \
             spread over every member (a single client at the leader, as in etcd's performance \
             guide), followers forwarding; *leader* and *follower* pin every client to that one \
             member; the main table shows balanced cells — at most {} connections per endpoint. Clients and all \
             nodes share the machine's CPUs (1-minute load average {:.1} when the run started). Each \
             cell: {} ms warm-up, {} ms measured; keys drawn from {} keys, {}-byte values.\n\n",
            self.date,
            self.machine.summary(),
            etcd,
            settings.heartbeat_interval_ms,
            settings.election_timeout_ms,
            settings
                .placements
                .iter()
                .map(|placement| placement.name())
                .collect::<Vec<_>>()
                .join(", "),
            settings.connections_per_endpoint,
            self.machine.load_average_1m,
            settings.warmup_ms,
            settings.cell_ms,
            settings.keyspace,
            settings.value_bytes
        ));
        for note in &self.notes {
            out.push_str(&format!("> {note}\n\n"));
        }
        out.push_str(&format!("{}\n\n", self.ceilings_line()));
        out.push_str("![throughput by clients, per workload](cluster.svg)\n\n");
        out.push_str(&self.table());
        let read_modes = self.read_mode_table();
        if !read_modes.is_empty() {
            out.push_str(
                "\n### Linearizable reads: lease vs read-index (`synod node --read-mode`)\n\n",
            );
            out.push_str(&read_modes);
        }
        let placements = self.placement_table();
        if !placements.is_empty() {
            out.push_str("\n### Client placement: balanced over every member vs pinned to one\n\n");
            out.push_str(&placements);
        }
        let floors = self.floor_table();
        if !floors.is_empty() {
            out.push_str("\n### Single-client put against its floor\n\n");
            out.push_str(&floors);
        }
        if !self.breakdowns.is_empty() {
            out.push_str("\n### Where a single client's put spends its time\n\n");
            out.push_str("Means per request from the members' own histograms (`grpc_server_handling_seconds`, `synod_proposal_duration_seconds`, `synod_wal_persist_duration_seconds`, `etcd_disk_wal_fsync_duration_seconds`; their sums and counts before and after the cell, warm-up included) beside the client's mean round trip; each segment is one stage minus the stage nested in it (`crates/synod-bench/src/breakdown.rs`).\n\n");
            out.push_str("![where a put's microseconds go](breakdown.svg)\n\n");
            out.push_str(&crate::breakdown::table(&self.breakdowns));
        }
        if !self.timelines.is_empty() {
            {
                out.push_str("\n### The path of one put, step by step\n\n");
                out.push_str("The single-client put cells from the members' own timelines (`/debug/timeline`, on while these cells run), lined up with the client's requests on the host's monotonic clock: each step is the first event of its kind at its member after the step before, in the same request; medians over the cell's requests (`crates/synod-bench/src/timeline.rs`). The time between two steps is what the histograms above cannot show: a message between tasks, threads and processes, wake-ups included. The ceiling's rows are the floor's first term taken apart.\n\n");
                out.push_str("![one put, step by step](timeline.svg)\n\n");
                for cell in &self.timelines {
                    out.push_str(&crate::timeline::table(&cell.label(), &cell.timeline));
                    out.push('\n');
                }
            }
        }
        out.push_str("\n### Failover (kill -9 of the leader under put load; clients on the other members)\n\n");
        if self.failovers.is_empty() {
            out.push_str("Not run.\n");
        } else {
            out.push_str(&self.failover_table());
        }
        out.push_str("\n### Targets\n\n");
        out.push_str(&self.targets_table());
        out.push_str("\n### CPU per cell (percent of one CPU; the machine has ");
        out.push_str(&format!("{} × 100 %)\n\n", self.machine.cpus));
        out.push_str(&self.cpu_table());
        out
    }
}

pub const README_BEGIN: &str =
    "<!-- synod bench cluster: begin (generated; edits inside are overwritten) -->";
pub const README_END: &str = "<!-- synod bench cluster: end -->";

/// `existing` with the generated section replaced (or appended, or a new document).
pub fn splice_readme(existing: Option<&str>, section: &str) -> String {
    splice_section(existing, README_BEGIN, README_END, section)
}

/// `existing` with the text between `begin_marker` and `end_marker` replaced by `section`
/// (or the marked section appended, or a new document holding it).
pub fn splice_section(
    existing: Option<&str>,
    begin_marker: &str,
    end_marker: &str,
    section: &str,
) -> String {
    let block = format!("{begin_marker}\n{section}{end_marker}\n");
    match existing {
        None => format!("# Benchmarks\n\n{block}"),
        Some(text) => match (text.find(begin_marker), text.find(end_marker)) {
            (Some(begin), Some(end)) if end > begin => {
                let after = &text[end + end_marker.len()..];
                let after = after.strip_prefix('\n').unwrap_or(after);
                format!("{}{block}{after}", &text[..begin])
            }
            _ => format!(
                "{}\n{block}",
                text.trim_end_matches('\n').to_string() + "\n"
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_section_is_replaced_and_the_text_around_it_kept() {
        let first = splice_readme(None, "one\n");
        assert!(first.starts_with("# Benchmarks"));
        let edited = format!("{first}\n## Bottlenecks\nwritten by hand\n");
        let second = splice_readme(Some(&edited), "two\n");
        assert!(second.contains("two\n"));
        assert!(!second.contains("one\n"));
        assert!(second.contains("## Bottlenecks\nwritten by hand"));
        assert_eq!(second.matches(README_BEGIN).count(), 1);
        let appended = splice_readme(Some("# Notes\n"), "three\n");
        assert!(appended.starts_with("# Notes\n"));
        assert!(appended.contains("three\n"));
    }

    #[test]
    fn milliseconds_keep_three_significant_digits() {
        assert_eq!(format_ms(431), "0.43");
        assert_eq!(format_ms(12_345), "12.3");
        assert_eq!(format_ms(1_234_567), "1235");
    }
}
