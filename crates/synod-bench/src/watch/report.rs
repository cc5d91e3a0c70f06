//! The renderings of a watch run: the markdown table, JSON, the README section, and the
//! files `synod bench watch` writes.

use super::{chart, WatchReport};
use crate::error::BenchError;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

impl WatchReport {
    /// The markdown table of every cell.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| watchers | streams | events received / expected | event p50 / p99 / max µs | before ack | put p50 / p99 / max µs | puts late | drain ms | member RSS before → after watches → after writes MiB | create ms | member / bench CPU ms |\n\
             | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |\n",
        );
        for cell in &self.cells {
            let _ = writeln!(
                out,
                "| {} | {} | {} / {}{} | {} / {} / {} | {} | {} / {} / {} | {} | {:.1} | {} → {} → {} | {:.0} | {:.0} / {:.0} |",
                cell.watchers,
                cell.streams,
                cell.events_received,
                cell.events_expected,
                if cell.errors.is_empty() { "" } else { " ⚠" },
                cell.event_p50_us,
                cell.event_p99_us,
                cell.event_max_us,
                cell.events_before_ack,
                cell.put.p50_us,
                cell.put.p99_us,
                cell.put.max_us,
                cell.puts_late,
                cell.drain_ms,
                mib(cell.rss_before_watchers_bytes),
                mib(cell.rss_after_watchers_bytes),
                mib(cell.rss_after_writes_bytes),
                cell.create_ms,
                cell.member_cpu_ms,
                cell.bench_cpu_ms,
            );
        }
        out
    }

    /// Every cell's errors, one line each (empty when the run was clean).
    pub fn errors(&self) -> Vec<String> {
        self.cells
            .iter()
            .flat_map(|cell| {
                cell.errors
                    .iter()
                    .map(move |error| format!("{} watchers: {error}", cell.watchers))
            })
            .collect()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The section `docs/bench/README.md` carries between its watch markers.
    pub fn readme_section(&self) -> String {
        let settings = &self.settings;
        let mut out =
            String::from("## Watch latency: from a write's acknowledgement to its watchers\n\n");
        let _ = write!(
            out,
            "Measured {} on {} (1-minute load average {:.1} at the start) with `synod bench watch`, \
             in {:.0} s. Per watcher count, a fresh Synod ×3 cluster (heartbeat {} ms, election \
             timeout {} ms); all watches on the key `{}`, on the {}, spread round-robin over the \
             streams shown on {} HTTP/2 connection(s); then {} puts of {}-byte values at the leader, \
             one at a time, started {} ms apart. An event's latency is its arrival at the bench's \
             stream reader minus its put's acknowledgement at the writer (one clock; negative when \
             the watcher heard first, counted under *before ack*); quantiles over every \
             watcher × put. Put latency is the writer's round trip.\n\n",
            self.date,
            self.machine.summary(),
            self.machine.load_average_1m,
            self.run_seconds,
            settings.heartbeat_interval_ms,
            settings.election_timeout_ms,
            settings.key,
            settings.member.name(),
            settings.connections,
            settings.writes,
            settings.value_bytes,
            settings.write_interval_ms,
        );
        out.push_str("![event and put latency by watchers](watch.svg)\n\n");
        out.push_str(&self.table());
        let errors = self.errors();
        if !errors.is_empty() {
            out.push_str("\nErrors:\n\n");
            for error in errors {
                let _ = writeln!(out, "- {error}");
            }
        }
        out.push_str(
            "\nRun it: `cargo build --release -p synod && target/release/synod bench watch` \
             (`--help` for `--watchers`, `--writes`, `--write-interval-ms`, `--streams`, \
             `--member leader|follower`); it writes `watch.json`, `watch.svg` and this section.\n",
        );
        out
    }

    /// A log-scale chart: event and put latency p50/p99 against the watcher count.
    pub fn svg(&self) -> String {
        chart::svg(self)
    }
}

pub const README_BEGIN: &str =
    "<!-- synod bench watch: begin (generated; edits inside are overwritten) -->";
pub const README_END: &str = "<!-- synod bench watch: end -->";

/// Writes `watch.json`, `watch.svg` and the watch section of `README.md` into `dir`.
pub fn write_outputs(report: &WatchReport, dir: &Path) -> Result<Vec<PathBuf>, BenchError> {
    std::fs::create_dir_all(dir)
        .map_err(|error| BenchError::new(format!("creating {}: {error}", dir.display())))?;
    let write = |name: &str, text: &str| -> Result<PathBuf, BenchError> {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|error| BenchError::new(format!("writing {}: {error}", path.display())))?;
        Ok(path)
    };
    let json = write("watch.json", &(report.to_json() + "\n"))?;
    let svg = write("watch.svg", &report.svg())?;
    let readme_path = dir.join("README.md");
    let existing = std::fs::read_to_string(&readme_path).ok();
    let readme = write(
        "README.md",
        &crate::report::splice_section(
            existing.as_deref(),
            README_BEGIN,
            README_END,
            &report.readme_section(),
        ),
    )?;
    Ok(vec![json, svg, readme])
}
