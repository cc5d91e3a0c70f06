//! Counterexamples as readable message traces: one line per action, then what it caused
//! (messages sent, slots delivered, role changes), and the violation at the end.

use crate::cluster::{Action, Cluster, Packet};
use crate::model::SynodModel;
use stateright::Model;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use synod_core::{Envelope, Message, Role, Value};

/// A value as the trace prints it: `"a"`, `noop`.
pub fn value(value: &Value) -> String {
    match value {
        Value::Noop => "noop".to_string(),
        Value::Commands(commands) => {
            let texts: Vec<String> = commands
                .iter()
                .map(|command| format!("{:?}", String::from_utf8_lossy(command)))
                .collect();
            texts.join("+")
        }
    }
}

fn values(values: &[Value]) -> String {
    let texts: Vec<String> = values.iter().map(value).collect();
    format!("[{}]", texts.join(", "))
}

/// A message in one short line.
pub fn message(message: &Message) -> String {
    match message {
        Message::Prepare {
            ballot, from_slot, ..
        } => {
            format!("Prepare {ballot:?} from slot {from_slot}")
        }
        Message::Promise {
            ballot,
            first_slot,
            last_slot,
            entries,
            commit_index,
            ..
        } => {
            let entries: Vec<String> = entries
                .iter()
                .map(|e| format!("{}@{:?}={}", e.slot, e.ballot, value(&e.value)))
                .collect();
            let last = if *last_slot == u64::MAX {
                "…".to_string()
            } else {
                last_slot.to_string()
            };
            format!(
                "Promise {ballot:?} slots {first_slot}..{last} commit {commit_index} [{}]",
                entries.join(", ")
            )
        }
        Message::Preempted {
            ballot,
            promised,
            leader,
        } => format!("Preempted {ballot:?} promised {promised:?} leader {leader:?}"),
        Message::Accept {
            ballot,
            first_slot,
            values: proposed,
            commit_index,
            sent_at,
        } => format!(
            "Accept {ballot:?} slot {first_slot} {} commit {commit_index} t{sent_at}",
            values(proposed)
        ),
        Message::Accepted {
            ballot,
            first_slot,
            last_slot,
            echo,
        } => format!("Accepted {ballot:?} slots {first_slot}..={last_slot} t{echo}"),
        Message::Heartbeat {
            ballot,
            commit_index,
            sent_at,
            round,
        } => format!("Heartbeat {ballot:?} commit {commit_index} t{sent_at} round {round}"),
        Message::HeartbeatAck {
            ballot,
            echo,
            round,
            commit_index,
        } => format!("HeartbeatAck {ballot:?} t{echo} round {round} commit {commit_index}"),
        Message::Forward { commands } => {
            let commands: Vec<String> = commands
                .iter()
                .map(|c| format!("{:?}", String::from_utf8_lossy(c)))
                .collect();
            format!("Forward [{}]", commands.join(", "))
        }
        Message::ReadIndex { request, .. } => format!("ReadIndex #{request}"),
        Message::ReadIndexReply {
            request,
            read_index,
            ..
        } => format!("ReadIndexReply #{request} {read_index:?}"),
        Message::CatchUp { from_slot } => format!("CatchUp from slot {from_slot}"),
        Message::Chosen {
            entries,
            commit_index,
        } => {
            let entries: Vec<String> = entries
                .iter()
                .map(|e| format!("{}@{:?}={}", e.slot, e.ballot, value(&e.value)))
                .collect();
            format!("Chosen [{}] commit {commit_index}", entries.join(", "))
        }
        other => other.kind().to_string(),
    }
}

fn envelope(envelope: &Envelope) -> String {
    format!(
        "n{} → n{}: {}",
        envelope.from,
        envelope.to,
        message(&envelope.message)
    )
}

fn packet(packet: &Packet) -> String {
    match packet {
        Packet::Message(e) => envelope(e),
        Packet::Snapshot {
            from,
            to,
            values: v,
        } => {
            format!(
                "n{from} → n{to}: snapshot through slot {} {}",
                v.len(),
                values(v)
            )
        }
    }
}

/// What `action` does, seen from the state it is taken in.
pub fn describe_action(state: &Cluster, action: &Action) -> String {
    match action {
        Action::Timeout(id) => format!("n{id}'s election timer runs out early"),
        Action::Deliver(p) => format!("deliver {}", packet(p)),
        Action::Duplicate(p) => format!("deliver a duplicate of {}", packet(p)),
        Action::Tick(id) => {
            let clock = state.replica(*id).clock + 1;
            let lag = state.replica(*id).lag;
            if lag > 0 {
                format!(
                    "n{id} ticks (real time {clock}; the core catches up {lag} stalled tick(s))"
                )
            } else {
                format!("n{id} ticks (real time {clock})")
            }
        }
        Action::TickAll => {
            let clock = state.replicas[0].clock + 1;
            let stalled: Vec<String> = state
                .replicas
                .iter()
                .filter(|r| r.lag > 0 && r.node.is_some())
                .map(|r| format!("n{} catches up {} stalled tick(s)", r.id, r.lag))
                .collect();
            if stalled.is_empty() {
                format!("every node ticks (time {clock})")
            } else {
                format!("every node ticks (time {clock}; {})", stalled.join(", "))
            }
        }
        Action::Stall(id) => format!(
            "n{id}'s runtime stalls: real time {} passes, the core's clock does not move",
            state.replica(*id).clock + 1
        ),
        Action::SlowDisk(id) => format!("n{id}'s disk turns slow: persist requests queue"),
        Action::Persist(id) => {
            let replica = state.replica(*id);
            match replica.disk.get(replica.written) {
                Some(request) => format!(
                    "n{id} disk: persist #{} durable {:?}",
                    request.id, request.ops
                ),
                None => format!("n{id} disk: nothing to persist"),
            }
        }
        Action::Crash { node, surviving } => format!(
            "n{node} CRASHES ({surviving} of its {} pending persist request(s) reached the disk)",
            state.replica(*node).disk.len()
        ),
        Action::Restart(id) => format!("n{id} restarts from its durable state"),
        Action::Propose(id) => format!(
            "client proposes {:?} at n{id}",
            String::from_utf8_lossy(&crate::cluster::client_value(state.budget.proposed))
        ),
        Action::Read(id) => format!("client asks n{id} for read #{}", state.budget.reads + 1),
        Action::Compact(id) => format!(
            "n{id} snapshots its state machine and compacts through slot {}",
            state.replica(*id).applied.len()
        ),
    }
}

/// What changed between two states, one line each.
fn consequences(before: &Cluster, after: &Cluster) -> Vec<String> {
    let mut lines = Vec::new();
    let known: BTreeSet<&Packet> = before.network.iter().map(|p| &**p).collect();
    for p in after.network.iter() {
        if !known.contains(&**p) {
            lines.push(format!("sends {}", packet(p)));
        }
    }
    for (old, new) in before.replicas.iter().zip(after.replicas.iter()) {
        let id = new.id;
        if new.applied.len() > old.applied.len() && new.applied.starts_with(&old.applied) {
            for (at, v) in new.applied.iter().enumerate().skip(old.applied.len()) {
                lines.push(format!("n{id} applies slot {} = {}", at + 1, value(v)));
            }
        }
        let role = |replica: &crate::cluster::Replica| {
            replica.node.as_ref().map(|node| {
                let status = node.status();
                (status.role, status.promised)
            })
        };
        if let (Some(was), Some(now)) = (role(old), role(new)) {
            if was.0 != now.0 {
                let role = match now.0 {
                    Role::Leader => "leader",
                    Role::Candidate => "candidate",
                    Role::Follower => "follower",
                };
                lines.push(format!("n{id} is now {role} (promised {:?})", now.1));
            }
        }
    }
    for (slot, v) in &after.ghost.chosen {
        if !before.ghost.chosen.contains_key(slot) {
            lines.push(format!(
                "slot {slot} is chosen: a quorum durably accepted {}",
                value(v)
            ));
        }
    }
    if let (None, Some(violation)) = (before.violated(), after.violated()) {
        lines.push(format!(
            "VIOLATION of \"{}\": {}",
            violation.property, violation.detail
        ));
    }
    lines
}

/// The path of `actions` from initial state number `initial`, numbered, for a person to
/// read.
pub fn render(model: &SynodModel, initial: usize, actions: &[Action]) -> String {
    let mut state = model.init_states().swap_remove(initial);
    let mut out = String::new();
    let placement = &crate::cluster::placements(&model.options)[initial];
    let _ = writeln!(
        out,
        "  0. time {}: nothing has happened (no timer can fire earlier)",
        state.time()
    );
    for (k, id) in placement.iter().enumerate() {
        let _ = writeln!(
            out,
            "     client proposes {:?} at n{id}",
            String::from_utf8_lossy(&crate::cluster::client_value(k as u8))
        );
    }
    for (number, action) in actions.iter().enumerate() {
        let _ = writeln!(
            out,
            "{:>3}. {}",
            number + 1,
            describe_action(&state, action)
        );
        let Some(next) = model.next_state(&state, action.clone()) else {
            break;
        };
        for line in consequences(&state, &next) {
            let _ = writeln!(out, "       {line}");
        }
        state = next;
    }
    out
}
