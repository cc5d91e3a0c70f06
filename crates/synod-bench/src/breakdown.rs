//! Where a request's microseconds go: per-stage means read from the members' own
//! Prometheus histograms (their `_sum` and `_count`, before and after a cell), beside the
//! client's round trip, so the breakdown costs the servers nothing they do not already
//! do (a few `Instant::now()`s per request).
//!
//! The stages, outermost first, are nested intervals of one request:
//! client round trip ⊃ gRPC handler at the member the client talks to
//! (`grpc_server_handling_seconds`) ⊃ that member's driver, from taking the proposal off
//! its queue to answering it (`synod_proposal_duration_seconds`) ⊃ the leader's own
//! persist, from submitting it to the group-commit thread to the completion back on the
//! driver (`synod_wal_persist_duration_seconds`, synced requests only) ⊃ its write +
//! fdatasync (`etcd_disk_wal_fsync_duration_seconds`). Each segment of the chart is the
//! difference of two consecutive stages.

use crate::chart::escape;
use crate::error::BenchError;
use serde::Serialize;
use std::collections::HashMap;
use std::fmt::Write;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The histograms a breakdown reads, by their exposition name (`_sum`/`_count` added).
const GRPC_PUT: &str = "grpc_server_handling_seconds";
const PROPOSAL: &str = "synod_proposal_duration_seconds";
const PERSIST: &str = "synod_wal_persist_duration_seconds";
const FSYNC: &str = "etcd_disk_wal_fsync_duration_seconds";

/// Sum (seconds) and count of each histogram of one member at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    histograms: HashMap<&'static str, (f64, u64)>,
}

impl Scrape {
    /// Reads the histograms out of a Prometheus text exposition; for the gRPC one only
    /// the `Put` method's series.
    pub fn parse(text: &str) -> Scrape {
        let mut histograms: HashMap<&'static str, (f64, u64)> = HashMap::new();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            for name in [GRPC_PUT, PROPOSAL, PERSIST, FSYNC] {
                let Some(rest) = series.strip_prefix(name) else {
                    continue;
                };
                if name == GRPC_PUT && !rest.contains("grpc_method=\"Put\"") {
                    continue;
                }
                let entry = histograms.entry(name).or_default();
                if rest.starts_with("_sum") {
                    entry.0 += value.parse::<f64>().unwrap_or(0.0);
                } else if rest.starts_with("_count") {
                    entry.1 += value.parse::<u64>().unwrap_or(0);
                }
            }
        }
        Scrape { histograms }
    }

    /// Mean in microseconds and count of `name` between `before` and `self`.
    fn mean_since(&self, before: &Scrape, name: &str) -> Stage {
        let (sum_after, count_after) = self.histograms.get(name).copied().unwrap_or_default();
        let (sum_before, count_before) = before.histograms.get(name).copied().unwrap_or_default();
        let count = count_after.saturating_sub(count_before);
        let mean_us = if count > 0 {
            (sum_after - sum_before).max(0.0) / count as f64 * 1e6
        } else {
            0.0
        };
        Stage { mean_us, count }
    }
}

/// `GET /metrics` from `http://host:port` (a member's metrics or client URL).
pub async fn scrape(url: &str) -> Result<Scrape, BenchError> {
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&body).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(5), fetch).await {
        Ok(Ok(text)) => Ok(Scrape::parse(&text)),
        Ok(Err(error)) => Err(BenchError::new(format!("scraping {url}/metrics: {error}"))),
        Err(_) => Err(BenchError::new(format!("scraping {url}/metrics timed out"))),
    }
}

/// One histogram's mean over a cell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Stage {
    pub mean_us: f64,
    pub count: u64,
}

/// The nested stages of one cell's requests (means; warm-up included on the server side).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Breakdown {
    /// The client's round trip (mean, measured window).
    pub client_us: f64,
    /// gRPC `Put` handler at the member the client talks to.
    pub grpc_handler: Stage,
    /// That member's driver: proposal taken off the queue → answered.
    pub proposal: Stage,
    /// The leader's persist requests that needed a sync: submitted → durable, seen back on
    /// the driver.
    pub leader_persist: Stage,
    /// The leader's write + fdatasync per synced batch.
    pub leader_fsync: Stage,
    /// The followers' write + fdatasync per synced batch.
    pub follower_fsync: Stage,
    /// Whether the client talked to the leader (else a follower, which forwards).
    pub at_leader: bool,
}

/// One segment of the chart: a stage minus the one nested in it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Segment {
    pub what: &'static str,
    pub micros: f64,
}

impl Breakdown {
    /// From scrapes of the member the client talked to (`entry`), the leader and the
    /// followers, before and after the cell.
    pub fn of(
        client_us: f64,
        entry: (&Scrape, &Scrape),
        leader: (&Scrape, &Scrape),
        followers: &[(Scrape, Scrape)],
        at_leader: bool,
    ) -> Breakdown {
        let mut follower_fsync = Stage::default();
        let mut weighted = 0.0;
        for (before, after) in followers {
            let stage = after.mean_since(before, FSYNC);
            weighted += stage.mean_us * stage.count as f64;
            follower_fsync.count += stage.count;
        }
        if follower_fsync.count > 0 {
            follower_fsync.mean_us = weighted / follower_fsync.count as f64;
        }
        Breakdown {
            client_us,
            grpc_handler: entry.1.mean_since(entry.0, GRPC_PUT),
            proposal: entry.1.mean_since(entry.0, PROPOSAL),
            leader_persist: leader.1.mean_since(leader.0, PERSIST),
            leader_fsync: leader.1.mean_since(leader.0, FSYNC),
            follower_fsync,
            at_leader,
        }
    }

    /// The client's round trip cut into segments that add up to it (negative differences,
    /// from means over slightly different windows, count as zero).
    pub fn segments(&self) -> Vec<Segment> {
        let gap = |outer: f64, inner: f64| (outer - inner).max(0.0);
        let mut segments = vec![
            Segment {
                what: "client, HTTP/2 and loopback (outside the handler)",
                micros: gap(self.client_us, self.grpc_handler.mean_us),
            },
            Segment {
                what: "gRPC handler ↔ driver (decode, queue, encode)",
                micros: gap(self.grpc_handler.mean_us, self.proposal.mean_us),
            },
        ];
        if self.at_leader {
            segments.push(Segment {
                what: "replication beyond the leader's own persist (Accept → quorum of Accepted, choose, apply)",
                micros: gap(self.proposal.mean_us, self.leader_persist.mean_us),
            });
            segments.push(Segment {
                what: "leader's group-commit hand-offs (driver → thread → driver)",
                micros: gap(self.leader_persist.mean_us, self.leader_fsync.mean_us),
            });
            segments.push(Segment {
                what: "leader's write + fdatasync",
                micros: self.leader_fsync.mean_us,
            });
        } else {
            segments.push(Segment {
                what: "follower's driver: forward, the leader's round, commit notice, apply",
                micros: self.proposal.mean_us,
            });
        }
        segments
    }

    /// The nested stages as (name, mean µs): each contains the next.
    pub fn nested(&self) -> Vec<(&'static str, f64)> {
        let mut stages = vec![
            ("client round trip", self.client_us),
            ("gRPC Put handler (entry member)", self.grpc_handler.mean_us),
            (
                "driver: proposal → answer (entry member)",
                self.proposal.mean_us,
            ),
        ];
        if self.at_leader {
            stages.push((
                "leader persist: submit → durable, back on the driver",
                self.leader_persist.mean_us,
            ));
            stages.push(("leader write + fdatasync", self.leader_fsync.mean_us));
        }
        stages
    }
}

/// A breakdown with what it was measured on.
#[derive(Clone, Debug, Serialize)]
pub struct CellBreakdown {
    pub placement: crate::report::Placement,
    pub clients: usize,
    pub breakdown: Breakdown,
}

const CHART_WIDTH: f64 = 900.0;
const BAR_HEIGHT: f64 = 28.0;
const ROW_GAP: f64 = 58.0;
const LEFT: f64 = 150.0;
const COLOURS: [&str; 5] = ["#9e9e9e", "#f0a030", "#1f6fb4", "#7fb3e0", "#d1452e"];

/// Stacked horizontal bars, one per placement: where one request's microseconds go.
pub fn svg(breakdowns: &[CellBreakdown]) -> String {
    let longest = breakdowns
        .iter()
        .map(|cell| cell.breakdown.client_us)
        .fold(1.0, f64::max);
    let plot_width = CHART_WIDTH - LEFT - 30.0;
    let scale = plot_width / longest;
    let legend_rows = 5.0;
    let height = 50.0 + ROW_GAP * breakdowns.len() as f64 + 22.0 * legend_rows + 20.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"15\">Where a single client's put spends its time (mean µs per request, Synod ×3)</text>\n"
    );
    let mut legend: Vec<(&'static str, &'static str)> = Vec::new();
    for (row, cell) in breakdowns.iter().enumerate() {
        let y = 45.0 + ROW_GAP * row as f64;
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{:.1}\">{} · {} client{}</text>",
            y + BAR_HEIGHT * 0.65,
            cell.placement.name(),
            cell.clients,
            if cell.clients == 1 { "" } else { "s" }
        );
        let mut x = LEFT;
        for (index, segment) in cell.breakdown.segments().iter().enumerate() {
            let colour = if cell.breakdown.at_leader || index < 2 {
                COLOURS[index % COLOURS.len()]
            } else {
                "#5a8f3c"
            };
            if !legend.iter().any(|(what, _)| *what == segment.what) {
                legend.push((segment.what, colour));
            }
            let width = segment.micros * scale;
            let _ = writeln!(
                out,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{BAR_HEIGHT}\" fill=\"{colour}\"><title>{}: {:.0} µs</title></rect>",
                escape(segment.what),
                segment.micros
            );
            if width > 34.0 {
                let _ = writeln!(
                    out,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"white\" text-anchor=\"middle\">{:.0}</text>",
                    x + width / 2.0,
                    y + BAR_HEIGHT * 0.65,
                    segment.micros
                );
            }
            x += width;
        }
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\">{:.0} µs</text>",
            LEFT,
            y + BAR_HEIGHT + 14.0,
            cell.breakdown.client_us
        );
    }
    let legend_top = 45.0 + ROW_GAP * breakdowns.len() as f64;
    for (index, (what, colour)) in legend.iter().enumerate() {
        let column = (index % 2) as f64;
        let y = legend_top + 22.0 * (index / 2) as f64;
        let x = 10.0 + column * 440.0;
        let _ = writeln!(
            out,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{}</text>",
            x + 17.0,
            y + 10.0,
            escape(what)
        );
    }
    out.push_str("</svg>\n");
    out
}

/// The breakdowns as a markdown table: one row per stage, one column per placement.
pub fn table(breakdowns: &[CellBreakdown]) -> String {
    if breakdowns.is_empty() {
        return String::new();
    }
    let mut out = String::from("| segment (mean µs per request) |");
    for cell in breakdowns {
        let _ = write!(out, " {} · {} |", cell.placement.name(), cell.clients);
    }
    out.push_str("\n| --- |");
    for _ in breakdowns {
        out.push_str(" --: |");
    }
    out.push('\n');
    let mut rows: Vec<&'static str> = Vec::new();
    for cell in breakdowns {
        for segment in cell.breakdown.segments() {
            if !rows.contains(&segment.what) {
                rows.push(segment.what);
            }
        }
    }
    for what in rows {
        let _ = write!(out, "| {what} |");
        for cell in breakdowns {
            match cell
                .breakdown
                .segments()
                .into_iter()
                .find(|segment| segment.what == what)
            {
                Some(segment) => {
                    let _ = write!(out, " {:.0} |", segment.micros);
                }
                None => out.push_str(" — |"),
            }
        }
        out.push('\n');
    }
    let extra = |out: &mut String, label: &str, value: &dyn Fn(&Breakdown) -> f64| {
        let _ = write!(out, "| {label} |");
        for cell in breakdowns {
            let _ = write!(out, " {:.0} |", value(&cell.breakdown));
        }
        out.push('\n');
    };
    extra(&mut out, "**client round trip (sum of the above)**", &|b| {
        b.client_us
    });
    extra(
        &mut out,
        "for reference: leader's write + fdatasync",
        &|b| b.leader_fsync.mean_us,
    );
    extra(
        &mut out,
        "for reference: followers' write + fdatasync",
        &|b| b.follower_fsync.mean_us,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "\
# TYPE grpc_server_handling_seconds histogram
grpc_server_handling_seconds_sum{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1
grpc_server_handling_seconds_count{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 10
grpc_server_handling_seconds_sum{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 50
grpc_server_handling_seconds_count{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 5
synod_proposal_duration_seconds_sum 0.5
synod_proposal_duration_seconds_count 10
synod_wal_persist_duration_seconds_sum 0.2
synod_wal_persist_duration_seconds_count 10
etcd_disk_wal_fsync_duration_seconds_bucket{le=\"0.001\"} 3
etcd_disk_wal_fsync_duration_seconds_sum 0.1
etcd_disk_wal_fsync_duration_seconds_count 10
";

    const AFTER: &str = "\
grpc_server_handling_seconds_sum{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1.9
grpc_server_handling_seconds_count{grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1010
grpc_server_handling_seconds_sum{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 99
grpc_server_handling_seconds_count{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 6
synod_proposal_duration_seconds_sum 1.2
synod_proposal_duration_seconds_count 1010
synod_wal_persist_duration_seconds_sum 0.5
synod_wal_persist_duration_seconds_count 1010
etcd_disk_wal_fsync_duration_seconds_sum 0.35
etcd_disk_wal_fsync_duration_seconds_count 1010
";

    #[test]
    fn stages_are_means_of_the_difference_and_only_puts_count_for_grpc() {
        let (before, after) = (Scrape::parse(BEFORE), Scrape::parse(AFTER));
        let breakdown = Breakdown::of(1000.0, (&before, &after), (&before, &after), &[], true);
        assert_eq!(breakdown.grpc_handler.count, 1000);
        assert!((breakdown.grpc_handler.mean_us - 900.0).abs() < 1e-6);
        assert!((breakdown.proposal.mean_us - 700.0).abs() < 1e-6);
        assert!((breakdown.leader_persist.mean_us - 300.0).abs() < 1e-6);
        assert!((breakdown.leader_fsync.mean_us - 250.0).abs() < 1e-6);
    }

    #[test]
    fn segments_add_up_to_the_client_round_trip_and_stages_nest() {
        let (before, after) = (Scrape::parse(BEFORE), Scrape::parse(AFTER));
        for at_leader in [true, false] {
            let breakdown =
                Breakdown::of(1000.0, (&before, &after), (&before, &after), &[], at_leader);
            let total: f64 = breakdown.segments().iter().map(|s| s.micros).sum();
            assert!((total - 1000.0).abs() < 1e-6, "{at_leader}: {total}");
            let nested = breakdown.nested();
            assert!(
                nested.windows(2).all(|pair| pair[0].1 >= pair[1].1),
                "{nested:?}"
            );
        }
        let chart = svg(&[CellBreakdown {
            placement: crate::report::Placement::Leader,
            clients: 1,
            breakdown: Breakdown::of(1000.0, (&before, &after), (&before, &after), &[], true),
        }]);
        assert!(chart.starts_with("<svg") && chart.contains("fdatasync"));
    }
}
