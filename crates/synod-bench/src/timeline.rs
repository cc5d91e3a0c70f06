//! The path of one put, step by step, across the members: the members' own timelines
//! (`/debug/timeline`, `synod_server::timeline`) lined up with the load generator's
//! requests on the host's monotonic clock.
//!
//! The histogram breakdown ([`crate::breakdown`]) says how long each nested stage took
//! on average; this says when each step of a request happened after the client sent it,
//! so the time between two steps shows what the histograms cannot: a message's time
//! between two tasks, threads or processes, wake-ups included. For each request (a
//! window from the client's send to its receipt) each step is the first event of its
//! kind, at its member, after the step it follows; medians over the requests.

use crate::error::BenchError;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One recorded event (`synod_server::timeline::TimelineEvent`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Event {
    pub t_ns: u64,
    pub stage: String,
    pub kind: String,
    #[serde(default)]
    pub slot: u64,
    #[serde(default)]
    pub peer: u64,
}

/// One member's answer.
#[derive(Clone, Debug, Deserialize)]
pub struct MemberTimeline {
    pub node: u64,
    #[serde(default)]
    pub dropped: u64,
    pub events: Vec<Event>,
}

/// Asks a member for its timeline since the last call and turns recording on or off.
pub async fn fetch(url: &str, enable: bool) -> Result<MemberTimeline, BenchError> {
    let address = url.trim_start_matches("http://").trim_end_matches('/');
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let request = format!(
            "GET /debug/timeline?enable={enable} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let response = match tokio::time::timeout(Duration::from_secs(10), get).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            return Err(BenchError::new(format!("{url}/debug/timeline: {error}")));
        }
        Err(_) => return Err(BenchError::new(format!("{url}/debug/timeline timed out"))),
    };
    let text = String::from_utf8_lossy(&response);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or_else(|| BenchError::new(format!("{url}/debug/timeline: no HTTP response")))?;
    serde_json::from_str(body)
        .map_err(|error| BenchError::new(format!("{url}/debug/timeline: {error}")))
}

/// Which member a step happens at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// The member the client talks to.
    Entry,
    Leader,
    /// The follower whose Accepted the leader decoded first in the request (the one that
    /// made the quorum), or failing that the first to decode the Accept.
    Follower,
}

/// Which peer a message step must be to or from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Any,
    Entry,
    Leader,
    Follower,
}

struct Step {
    what: &'static str,
    at: At,
    stage: &'static str,
    kind: &'static str,
    peer: Peer,
    /// The step this one is looked for after (and measured from); None: the one before.
    after: Option<&'static str>,
}

const fn step(what: &'static str, at: At, stage: &'static str, kind: &'static str) -> Step {
    Step {
        what,
        at,
        stage,
        kind,
        peer: Peer::Any,
        after: None,
    }
}

const fn to(mut step: Step, peer: Peer) -> Step {
    step.peer = peer;
    step
}

const fn beside(mut step: Step, after: &'static str) -> Step {
    step.after = Some(after);
    step
}

const CLIENT_RECEIVES: &str = "the client has the response";

/// The steps of a put at a cluster of one (the ceiling: no peers, no fsync).
fn single_node_steps() -> Vec<Step> {
    use At::*;
    vec![
        step("the gRPC layer has the request", Entry, "grpc_in", ""),
        step("the driver takes the proposal", Entry, "propose", ""),
        step("chosen, applied: the driver answers", Entry, "reply", ""),
        step("the gRPC layer has the response", Entry, "grpc_out", ""),
    ]
}

/// The Accept round both paths share: from the leader queueing the Accepts to its driver
/// stepping the first Accepted back.
fn accept_round() -> Vec<Step> {
    use At::*;
    vec![
        step("the leader queues the Accepts", Leader, "send", "accept"),
        step(
            "an Accept goes to its socket (the write begins)",
            Leader,
            "wire_out",
            "accept",
        ),
        step(
            "a follower's reader has decoded it",
            Follower,
            "wire_in",
            "accept",
        ),
        step(
            "that follower's driver steps it",
            Follower,
            "driver_in",
            "accept",
        ),
        step(
            "the follower's log write begins",
            Follower,
            "persist_start",
            "",
        ),
        step(
            "its write + fdatasync is done (on its driver)",
            Follower,
            "persisted",
            "",
        ),
        step("it queues Accepted", Follower, "send", "accepted"),
        step(
            "Accepted goes to its socket (the write begins)",
            Follower,
            "wire_out",
            "accepted",
        ),
        to(
            step(
                "the leader's reader has decoded it",
                Leader,
                "wire_in",
                "accepted",
            ),
            Peer::Follower,
        ),
        step(
            "the leader's driver steps it",
            Leader,
            "driver_in",
            "accepted",
        ),
    ]
}

/// Beside the path: the leader's own write, from the Accepts it overlaps.
fn leaders_own_write() -> [Step; 2] {
    use At::*;
    [
        beside(
            step(
                "(beside) the leader's own log write begins",
                Leader,
                "persist_start",
                "",
            ),
            "the leader queues the Accepts",
        ),
        step(
            "(beside) the leader's write + fdatasync is done",
            Leader,
            "persisted",
            "",
        ),
    ]
}

/// The steps of a put at the leader.
fn leader_steps() -> Vec<Step> {
    use At::*;
    let mut steps = vec![
        step("the gRPC layer has the request", Entry, "grpc_in", ""),
        step("the driver takes the proposal", Entry, "propose", ""),
    ];
    steps.extend(accept_round());
    steps.extend([
        step("chosen, applied: the driver answers", Entry, "reply", ""),
        step("the gRPC layer has the response", Entry, "grpc_out", ""),
    ]);
    steps.extend(leaders_own_write());
    steps
}

/// The steps of a put at a follower: forwarded to the leader, answered after the
/// leader's commit notice.
fn follower_steps() -> Vec<Step> {
    use At::*;
    let mut steps = vec![
        step("the gRPC layer has the request", Entry, "grpc_in", ""),
        step("the driver takes the proposal", Entry, "propose", ""),
        step("it queues the Forward", Entry, "send", "forward"),
        step(
            "the Forward goes to its socket (the write begins)",
            Entry,
            "wire_out",
            "forward",
        ),
        step(
            "the leader's reader has decoded it",
            Leader,
            "wire_in",
            "forward",
        ),
        step(
            "the leader's driver steps it",
            Leader,
            "driver_in",
            "forward",
        ),
    ];
    steps.extend(accept_round());
    steps.extend([
        to(
            step(
                "the leader queues the commit notice",
                Leader,
                "send",
                "heartbeat",
            ),
            Peer::Entry,
        ),
        to(
            step(
                "the notice goes to its socket (the write begins)",
                Leader,
                "wire_out",
                "heartbeat",
            ),
            Peer::Entry,
        ),
        to(
            step(
                "the entry's reader has decoded it",
                Entry,
                "wire_in",
                "heartbeat",
            ),
            Peer::Leader,
        ),
        to(
            step(
                "the entry's driver steps it",
                Entry,
                "driver_in",
                "heartbeat",
            ),
            Peer::Leader,
        ),
        step("applied: the driver answers", Entry, "reply", ""),
        step("the gRPC layer has the response", Entry, "grpc_out", ""),
    ]);
    steps.extend(leaders_own_write());
    steps
}

/// A cell's timeline with what it was measured on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CellTimeline {
    pub system: String,
    pub placement: crate::report::Placement,
    pub timeline: RequestTimeline,
}

impl CellTimeline {
    /// `synod at the leader`, `ceiling`.
    pub fn label(&self) -> String {
        if self.system == "ceiling" {
            "ceiling (one node, no fsync)".to_string()
        } else {
            format!("{} at the {}", self.system, self.placement.name())
        }
    }
}

/// One step's medians over the requests that reached it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub step: String,
    /// `entry`, `leader` or `follower`.
    pub member: String,
    /// Median time from the client's send to this step.
    pub after_send_us: f64,
    /// Median time from the step it follows (the row before, or the one `from` names).
    pub step_us: f64,
    /// The step it is measured from.
    pub from: String,
    /// Requests in which this step was found.
    pub requests: usize,
}

/// The path of one cell's requests.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestTimeline {
    /// Requests the client completed in the measured window.
    pub requests: usize,
    /// Events the members dropped (their buffers were full); 0 in a sound run.
    pub dropped_events: u64,
    pub rows: Vec<Row>,
}

/// The peer of the first Accepted the leader decoded in `[from, until]`.
fn first_accepted_from(leader: &[&Event], from: u64, until: u64) -> Option<u64> {
    let start = leader.partition_point(|event| event.t_ns < from);
    leader[start..]
        .iter()
        .take_while(|event| event.t_ns <= until)
        .find(|event| event.stage == "wire_in" && event.kind == "accepted")
        .map(|event| event.peer)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Lines the members' events up with the client's requests (`windows`: send and
/// receipt, `CLOCK_MONOTONIC` ns). `members[i]` is member i's timeline; `leader` and
/// `entry` are member indexes.
pub fn analyse(
    windows: &[(u64, u64)],
    members: &[MemberTimeline],
    leader: usize,
    entry: usize,
) -> RequestTimeline {
    let steps = if members.len() == 1 {
        single_node_steps()
    } else if entry == leader {
        leader_steps()
    } else {
        follower_steps()
    };
    let mut events: Vec<Vec<&Event>> = members
        .iter()
        .map(|member| member.events.iter().collect())
        .collect();
    for member in &mut events {
        member.sort_by_key(|event| event.t_ns);
    }
    let node_of = |index: usize| members[index].node;
    let mut after_send: Vec<Vec<f64>> = vec![Vec::new(); steps.len() + 1];
    let mut step_us: Vec<Vec<f64>> = vec![Vec::new(); steps.len() + 1];
    for &(send, receive) in windows {
        let mut times: Vec<Option<u64>> = vec![None; steps.len()];
        let mut follower: Option<usize> = first_accepted_from(&events[leader], send, receive)
            .and_then(|node| members.iter().position(|member| member.node == node))
            .filter(|member| *member != leader);
        let mut previous = Some(send);
        for (index, step) in steps.iter().enumerate() {
            let from = match step.after {
                Some(name) => steps
                    .iter()
                    .position(|other| other.what == name)
                    .and_then(|position| times[position]),
                None => previous,
            };
            let Some(from) = from else {
                previous = None;
                continue;
            };
            let candidates: Vec<usize> = match step.at {
                At::Entry => vec![entry],
                At::Leader => vec![leader],
                At::Follower => match follower {
                    Some(chosen) => vec![chosen],
                    None => (0..members.len()).filter(|i| *i != leader).collect(),
                },
            };
            let wanted_peer = match step.peer {
                Peer::Any => None,
                Peer::Entry => Some(node_of(entry)),
                Peer::Leader => Some(node_of(leader)),
                Peer::Follower => follower.map(node_of),
            };
            let mut found: Option<(u64, usize)> = None;
            for member in candidates {
                let list = &events[member];
                let start = list.partition_point(|event| event.t_ns < from);
                let hit = list[start..]
                    .iter()
                    .take_while(|event| event.t_ns <= receive)
                    .find(|event| {
                        event.stage == step.stage
                            && event.kind == step.kind
                            && wanted_peer.is_none_or(|peer| event.peer == peer)
                    });
                if let Some(event) = hit {
                    if found.is_none_or(|(t, _)| event.t_ns < t) {
                        found = Some((event.t_ns, member));
                    }
                }
            }
            match found {
                Some((t, member)) => {
                    if step.at == At::Follower && follower.is_none() {
                        follower = Some(member);
                    }
                    times[index] = Some(t);
                    after_send[index].push((t - send) as f64 / 1e3);
                    step_us[index].push((t - from) as f64 / 1e3);
                    previous = Some(t);
                }
                None => previous = None,
            }
        }
        // The client's receipt follows the last step of the main path.
        let last_main = steps
            .iter()
            .rposition(|step| step.after.is_none() && !step.what.starts_with("(beside)"))
            .and_then(|position| times[position]);
        after_send[steps.len()].push((receive - send) as f64 / 1e3);
        if let Some(last) = last_main {
            step_us[steps.len()].push((receive - last) as f64 / 1e3);
        }
    }
    let mut rows = Vec::with_capacity(steps.len() + 1);
    for (index, step) in steps.iter().enumerate() {
        let from = match step.after {
            Some(name) => name.to_string(),
            None if index == 0 => "the client sends".to_string(),
            None => steps[index - 1].what.to_string(),
        };
        rows.push(Row {
            step: step.what.to_string(),
            member: match step.at {
                At::Entry if entry == leader => "leader",
                At::Entry => "entry",
                At::Leader => "leader",
                At::Follower => "follower",
            }
            .to_string(),
            requests: after_send[index].len(),
            after_send_us: median(&mut after_send[index]),
            step_us: median(&mut step_us[index]),
            from,
        });
    }
    let main_last = steps
        .iter()
        .rposition(|step| step.after.is_none() && !step.what.starts_with("(beside)"))
        .unwrap_or(0);
    rows.push(Row {
        step: CLIENT_RECEIVES.to_string(),
        member: "client".to_string(),
        requests: after_send[steps.len()].len(),
        after_send_us: median(&mut after_send[steps.len()]),
        step_us: median(&mut step_us[steps.len()]),
        from: steps[main_last].what.to_string(),
    });
    // Main-path rows first in path order, the leader's own write after them.
    let beside: Vec<Row> = rows
        .iter()
        .filter(|row| row.step.starts_with("(beside)"))
        .cloned()
        .collect();
    rows.retain(|row| !row.step.starts_with("(beside)"));
    rows.extend(beside);
    RequestTimeline {
        requests: windows.len(),
        dropped_events: members.iter().map(|member| member.dropped).sum(),
        rows,
    }
}

/// Markdown: one table per timed cell.
pub fn table(label: &str, timeline: &RequestTimeline) -> String {
    let mut out = format!(
        "| {label}, 1 client: step | at | µs after the client sent (median) | µs since the step before (median) | requests |\n| --- | --- | --: | --: | --: |\n"
    );
    let _ = writeln!(
        out,
        "| the client sends | client | 0 | — | {} |",
        timeline.requests
    );
    for row in &timeline.rows {
        let since = if row.step.starts_with("(beside)") || row.from != previous_name(timeline, row)
        {
            format!("{:.0} (since: {})", row.step_us, row.from)
        } else {
            format!("{:.0}", row.step_us)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} |",
            row.step, row.member, row.after_send_us, since, row.requests
        );
    }
    if timeline.dropped_events > 0 {
        let _ = writeln!(
            out,
            "\nThe members dropped {} events (their buffers were full): the medians above miss them.",
            timeline.dropped_events
        );
    }
    out
}

const SVG_WIDTH: f64 = 1000.0;
const SVG_LABELS: f64 = 360.0;
const SVG_ROW: f64 = 17.0;

fn member_colour(member: &str) -> &'static str {
    match member {
        "leader" => "#1f6fb4",
        "follower" => "#d1452e",
        "entry" => "#f0a030",
        _ => "#9e9e9e",
    }
}

/// Each timed cell as a Gantt chart: one row per step, a bar from the step it follows
/// to it (medians after the client's send), coloured by the member it happens at.
pub fn svg(cells: &[CellTimeline]) -> String {
    let longest = cells
        .iter()
        .flat_map(|cell| &cell.timeline.rows)
        .map(|row| row.after_send_us)
        .fold(1.0, f64::max);
    let scale = (SVG_WIDTH - SVG_LABELS - 60.0) / longest;
    let rows: usize = cells.iter().map(|cell| cell.timeline.rows.len() + 3).sum();
    let height = 60.0 + SVG_ROW * rows as f64 + 30.0;
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{SVG_WIDTH}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">One put at one client, step by step (median µs after the client sent; Synod ×3)</text>\n"
    );
    let mut legend_x = 10.0;
    for member in ["client", "entry", "leader", "follower"] {
        let _ = writeln!(
            out,
            "<rect x=\"{legend_x}\" y=\"30\" width=\"12\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"39\">at the {member}</text>",
            member_colour(member),
            legend_x + 16.0
        );
        legend_x += 110.0;
    }
    let mut y = 60.0;
    for cell in cells {
        let timeline = &cell.timeline;
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{}\" font-size=\"13\" font-weight=\"bold\">{} ({} requests)</text>",
            y + 12.0,
            cell.label(),
            timeline.requests
        );
        y += SVG_ROW * 1.5;
        for row in &timeline.rows {
            let end = SVG_LABELS + row.after_send_us * scale;
            let start = SVG_LABELS + (row.after_send_us - row.step_us).max(0.0) * scale;
            let _ = writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text><rect x=\"{start:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{}\" fill=\"#444\">{:.0}</text>",
                SVG_LABELS - 6.0,
                y + 11.0,
                escape(&row.step),
                y + 2.0,
                (end - start).max(1.0),
                SVG_ROW - 5.0,
                member_colour(&row.member),
                end + 4.0,
                y + 11.0,
                row.step_us
            );
            y += SVG_ROW;
        }
        y += SVG_ROW * 1.5;
    }
    let _ = write!(
        out,
        "<line x1=\"{SVG_LABELS}\" y1=\"50\" x2=\"{SVG_LABELS}\" y2=\"{:.0}\" stroke=\"#999\"/>\n<text x=\"{SVG_LABELS}\" y=\"{:.0}\" fill=\"#444\">0 µs: the client sends; {:.0} µs at the right end</text>\n</svg>\n",
        y,
        y + 14.0,
        longest
    );
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The name of the row printed before `row` in the main path.
fn previous_name(timeline: &RequestTimeline, row: &Row) -> String {
    let position = timeline
        .rows
        .iter()
        .position(|other| std::ptr::eq(other, row))
        .unwrap_or(0);
    if position == 0 {
        "the client sends".to_string()
    } else {
        timeline.rows[position - 1].step.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t_us: u64, stage: &str, kind: &str, peer: u64) -> Event {
        Event {
            t_ns: t_us * 1000,
            stage: stage.to_string(),
            kind: kind.to_string(),
            slot: 0,
            peer,
        }
    }

    /// Member 0 (node 1) leads; the client talks to it. Node 3 answers first.
    fn one_put_at_the_leader(start_us: u64) -> Vec<Vec<Event>> {
        let t = |offset: u64| start_us + offset;
        vec![
            vec![
                event(t(10), "grpc_in", "", 0),
                event(t(20), "propose", "", 0),
                event(t(25), "send", "accept", 2),
                event(t(26), "send", "accept", 3),
                event(t(30), "wire_out", "accept", 2),
                event(t(31), "wire_out", "accept", 3),
                event(t(40), "persist_start", "", 0),
                event(t(200), "persisted", "", 0),
                // A heartbeat ack from node 2 in between is not the Accepted looked for.
                event(t(250), "wire_in", "heartbeat_ack", 2),
                event(t(300), "wire_in", "accepted", 3),
                event(t(310), "driver_in", "accepted", 3),
                event(t(330), "reply", "", 0),
                event(t(340), "grpc_out", "", 0),
            ],
            vec![
                event(t(60), "wire_in", "accept", 1),
                event(t(70), "driver_in", "accept", 1),
                event(t(80), "persist_start", "", 0),
                event(t(400), "persisted", "", 0),
            ],
            vec![
                event(t(50), "wire_in", "accept", 1),
                event(t(55), "driver_in", "accept", 1),
                event(t(60), "persist_start", "", 0),
                event(t(260), "persisted", "", 0),
                event(t(270), "send", "accepted", 1),
                event(t(280), "wire_out", "accepted", 1),
            ],
        ]
    }

    #[test]
    fn each_step_is_the_first_of_its_kind_after_the_one_before_at_the_first_follower() {
        let mut members: Vec<MemberTimeline> = (1..=3)
            .map(|node| MemberTimeline {
                node,
                dropped: 0,
                events: Vec::new(),
            })
            .collect();
        let mut windows = Vec::new();
        for request in 0..3u64 {
            let start = 10_000 * (request + 1);
            for (member, events) in one_put_at_the_leader(start).into_iter().enumerate() {
                members[member].events.extend(events);
            }
            windows.push((start * 1000, (start + 360) * 1000));
        }
        let timeline = analyse(&windows, &members, 0, 0);
        assert_eq!(timeline.requests, 3);
        let row = |name: &str| {
            timeline
                .rows
                .iter()
                .find(|row| row.step == name)
                .unwrap_or_else(|| panic!("no row {name}: {timeline:?}"))
        };
        assert_eq!(row("the gRPC layer has the request").after_send_us, 10.0);
        // Node 3's Accepted reached the leader first, so the follower steps are node 3's.
        assert_eq!(
            row("a follower's reader has decoded it").after_send_us,
            50.0
        );
        assert_eq!(row("a follower's reader has decoded it").step_us, 20.0);
        assert_eq!(
            row("its write + fdatasync is done (on its driver)").after_send_us,
            260.0
        );
        assert_eq!(row("the leader's reader has decoded it").step_us, 20.0);
        assert_eq!(
            row("chosen, applied: the driver answers").after_send_us,
            330.0
        );
        assert_eq!(row(CLIENT_RECEIVES).after_send_us, 360.0);
        assert_eq!(row(CLIENT_RECEIVES).step_us, 20.0);
        // The leader's own write is measured from its Accepts being queued.
        assert_eq!(
            row("(beside) the leader's own log write begins").step_us,
            15.0
        );
        assert_eq!(
            row("(beside) the leader's write + fdatasync is done").after_send_us,
            200.0
        );
        assert!(
            timeline.rows.iter().all(|row| row.requests == 3),
            "{timeline:?}"
        );
        assert!(timeline.rows.last().unwrap().step.starts_with("(beside)"));
        let chart = svg(&[CellTimeline {
            system: "synod".to_string(),
            placement: crate::report::Placement::Leader,
            timeline: timeline.clone(),
        }]);
        assert!(chart.starts_with("<svg") && chart.contains("that follower's driver steps it"));
        let text = table("leader", &timeline);
        assert!(
            text.contains("| that follower's driver steps it | follower | 55 | 5 | 3 |"),
            "{text}"
        );
    }

    #[test]
    fn a_request_missing_a_step_counts_only_for_the_steps_it_reached() {
        let mut events = one_put_at_the_leader(0);
        // The follower's Accepted never went out in this request.
        events[2].retain(|event| event.stage != "wire_out");
        let members: Vec<MemberTimeline> = events
            .into_iter()
            .enumerate()
            .map(|(index, events)| MemberTimeline {
                node: index as u64 + 1,
                dropped: 0,
                events,
            })
            .collect();
        let timeline = analyse(&[(0, 360_000)], &members, 0, 0);
        let requests = |name: &str| {
            timeline
                .rows
                .iter()
                .find(|row| row.step == name)
                .map(|row| row.requests)
        };
        assert_eq!(requests("it queues Accepted"), Some(1));
        assert_eq!(
            requests("Accepted goes to its socket (the write begins)"),
            Some(0)
        );
        assert_eq!(requests("the leader's driver steps it"), Some(0));
        assert_eq!(requests(CLIENT_RECEIVES), Some(1));
    }
}
