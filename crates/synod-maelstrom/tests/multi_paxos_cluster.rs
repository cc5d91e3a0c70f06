//! Three `Server`s (the node without I/O) wired together in-process, ticked by hand:
//! `multi_paxos_propose` at a follower, and Phase 1 running again after a leader change.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use synod_maelstrom::Server;

struct Cluster {
    servers: BTreeMap<String, Server>,
    /// Nodes cut off from every other node.
    isolated: BTreeSet<String>,
    /// Lines addressed to clients.
    client_lines: Vec<String>,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let mut cluster = Cluster {
            servers: BTreeMap::new(),
            isolated: BTreeSet::new(),
            client_lines: Vec::new(),
        };
        for name in &names {
            let mut server = Server::default();
            server.handle_line(&format!(
                r#"{{"src":"c0","dest":"{name}","body":{{"type":"init","msg_id":1,"node_id":"{name}","node_ids":{}}}}}"#,
                serde_json::to_string(&names).unwrap()
            ));
            cluster.servers.insert(name.clone(), server);
        }
        cluster.deliver();
        cluster.client_lines.clear();
        cluster
    }

    /// Delivers node-to-node lines until none is left; keeps lines for clients.
    fn deliver(&mut self) {
        loop {
            let mut lines = Vec::new();
            for (name, server) in self.servers.iter_mut() {
                for line in server.take_output() {
                    lines.push((name.clone(), line));
                }
            }
            if lines.is_empty() {
                return;
            }
            for (src, line) in lines {
                let envelope: Value = serde_json::from_str(&line).unwrap();
                let dest = envelope["dest"].as_str().unwrap().to_string();
                match self.servers.get_mut(&dest) {
                    Some(server) => {
                        if !self.isolated.contains(&src) && !self.isolated.contains(&dest) {
                            server.handle_line(&line);
                        }
                    }
                    None => self.client_lines.push(line),
                }
            }
        }
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for server in self.servers.values_mut() {
                server.tick();
            }
            self.deliver();
        }
    }

    /// The leader all connected nodes agree on (itself connected), ticking until there
    /// is one.
    fn stable_leader(&mut self) -> String {
        for _ in 0..2_000 {
            self.tick(1);
            let views: BTreeSet<Option<String>> = self
                .servers
                .iter()
                .filter(|(name, _)| !self.isolated.contains(*name))
                .map(|(_, server)| server.leader())
                .collect();
            if let [Some(leader)] = views.into_iter().collect::<Vec<_>>().as_slice() {
                if !self.isolated.contains(leader) {
                    return leader.clone();
                }
            }
        }
        panic!("no leader emerged");
    }

    /// Sends a client request to `node` and ticks until its answer arrives.
    fn request(&mut self, node: &str, msg_id: u64, body: &str) -> Value {
        let line = format!(r#"{{"src":"c1","dest":"{node}","body":{{"msg_id":{msg_id},{body}}}}}"#);
        self.servers.get_mut(node).unwrap().handle_line(&line);
        for _ in 0..2_000 {
            self.deliver();
            if let Some(index) = self.client_lines.iter().position(|line| {
                let envelope: Value = serde_json::from_str(line).unwrap();
                envelope["body"]["in_reply_to"] == msg_id
            }) {
                let line = self.client_lines.remove(index);
                let envelope: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(envelope["src"], node, "answered by the node asked");
                return envelope["body"].clone();
            }
            self.tick(1);
        }
        panic!("no answer to {msg_id} from {node}");
    }

    fn propose(&mut self, node: &str, msg_id: u64, slot: u64, value: &str) -> Value {
        self.request(
            node,
            msg_id,
            &format!(r#""type":"multi_paxos_propose","slot":{slot},"value":"{value}""#),
        )
    }
}

fn followers(cluster: &Cluster, leader: &str) -> Vec<String> {
    cluster
        .servers
        .keys()
        .filter(|name| *name != leader)
        .cloned()
        .collect()
}

#[test]
fn proposal_at_a_follower_is_served_through_the_leader() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.stable_leader();
    let follower = followers(&cluster, &leader)[0].clone();
    let first = cluster.propose(&follower, 10, 1, "cmd1");
    assert_eq!(first["type"], "multi_paxos_propose_ok");
    assert_eq!(first["slot"], 1);
    assert_eq!(first["value"], "cmd1");
    assert_eq!(first["chosen"], true);
    assert_eq!(
        first["phase1_skipped"], false,
        "the leadership's first proposal"
    );
    let second = cluster.propose(&follower, 11, 2, "cmd2");
    assert_eq!(second["phase1_skipped"], true);
    assert_eq!(second["value"], "cmd2");
    // Slot 1 is chosen and known at the follower: answered there with what it holds.
    let again = cluster.propose(&follower, 12, 1, "other");
    assert_eq!(again["value"], "cmd1");
    // The log is the follower's own view: it learns slot 2 is chosen from the leader's
    // next Accept or heartbeat.
    cluster.tick(5);
    let log = cluster.request(&follower, 13, r#""type":"multi_paxos_log""#);
    assert_eq!(
        log["log"],
        serde_json::json!([
            {"slot": 1, "value": "cmd1", "status": "chosen"},
            {"slot": 2, "value": "cmd2", "status": "chosen"},
        ])
    );
}

#[test]
fn phase1_runs_again_after_a_leader_change() {
    let mut cluster = Cluster::new(3);
    let old_leader = cluster.stable_leader();
    assert_eq!(
        cluster.propose(&old_leader, 1, 1, "a")["phase1_skipped"],
        false
    );
    assert_eq!(
        cluster.propose(&old_leader, 2, 2, "b")["phase1_skipped"],
        true
    );

    cluster.isolated.insert(old_leader.clone());
    let new_leader = cluster.stable_leader();
    assert_ne!(new_leader, old_leader);
    let third = cluster.propose(&new_leader, 3, 3, "c");
    assert_eq!(
        third["phase1_skipped"], false,
        "a new leadership runs Phase 1"
    );
    assert_eq!(third["value"], "c");
    assert_eq!(
        cluster.propose(&new_leader, 4, 4, "d")["phase1_skipped"],
        true
    );

    // The old leader rejoins, learns the new slots, and reports them chosen.
    cluster.isolated.clear();
    cluster.tick(100);
    let log = cluster.request(&old_leader, 5, r#""type":"multi_paxos_log""#);
    let values: Vec<(u64, String, String)> = log["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["slot"].as_u64().unwrap(),
                entry["value"].as_str().unwrap_or("null").to_string(),
                entry["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (slot, value) in [(1, "a"), (2, "b"), (3, "c"), (4, "d")] {
        assert!(
            values.contains(&(slot, value.to_string(), "chosen".to_string())),
            "slot {slot} = {value} missing from {values:?}"
        );
    }
}

#[test]
fn lin_kv_requests_at_followers_see_each_others_writes() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.stable_leader();
    let follower = followers(&cluster, &leader);
    let written = cluster.request(&follower[0], 1, r#""type":"write","key":7,"value":1"#);
    assert_eq!(written["type"], "write_ok");
    let cas = cluster.request(&follower[1], 2, r#""type":"cas","key":7,"from":1,"to":2"#);
    assert_eq!(cas["type"], "cas_ok");
    let read = cluster.request(&leader, 3, r#""type":"read","key":7"#);
    assert_eq!(read["value"], 2);
    let mismatch = cluster.request(&follower[0], 4, r#""type":"cas","key":7,"from":1,"to":3"#);
    assert_eq!(mismatch["code"], 22);
}

#[test]
fn without_a_quorum_requests_are_refused_or_left_indefinite() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.stable_leader();
    let follower = followers(&cluster, &leader)[0].clone();
    // Cut the follower off: it loses its leader and never learns of a new one.
    cluster.isolated.insert(follower.clone());
    cluster.tick(200);
    let refused = cluster.request(&follower, 1, r#""type":"write","key":1,"value":1"#);
    assert_eq!(refused["type"], "error");
    assert_eq!(
        refused["code"], 11,
        "no leader known: definitely not applied"
    );
    // The request was never proposed: the rest of the cluster does not hold it.
    cluster.isolated.clear();
    cluster.tick(100);
    let read = cluster.request(&leader, 2, r#""type":"read","key":1"#);
    assert_eq!(read["code"], 20);
}

#[test]
fn lin_kv_reads_are_served_without_taking_a_slot() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.stable_leader();
    let follower = followers(&cluster, &leader)[0].clone();
    assert_eq!(
        cluster.request(&leader, 1, r#""type":"write","key":1,"value":7"#)["type"],
        "write_ok"
    );
    let slots_before = cluster.request(&leader, 2, r#""type":"multi_paxos_log""#)["log"]
        .as_array()
        .unwrap()
        .len();
    // At the leader under its lease; at a follower with the leader's read index.
    assert_eq!(
        cluster.request(&leader, 3, r#""type":"read","key":1"#)["value"],
        7
    );
    assert_eq!(
        cluster.request(&follower, 4, r#""type":"read","key":1"#)["value"],
        7
    );
    assert_eq!(
        cluster.request(&follower, 5, r#""type":"read","key":2"#)["code"],
        20
    );
    let log = cluster.request(&leader, 6, r#""type":"multi_paxos_log""#);
    assert_eq!(log["log"].as_array().unwrap().len(), slots_before);
}

/// The leader's process stops (SIGSTOP, a long GC pause): the others elect a new leader
/// and overwrite a key. When the old leader resumes, its clock reads the real time
/// elapsed, in one step, before it handles anything: the read lease it held has run
/// out, so a read it receives is not answered from its stale store. (Had its clock
/// caught up only a few ticks, the lease would look fresh and the read return 1.)
#[test]
fn a_leader_resuming_from_a_stall_serves_no_stale_read() {
    let mut cluster = Cluster::new(3);
    let old = cluster.stable_leader();
    let written = cluster.request(&old, 1, r#""type":"write","key":1,"value":1"#);
    assert_eq!(written["type"], "write_ok");
    let mut stalled = cluster.servers.remove(&old).unwrap();
    cluster.isolated.insert(old.clone());
    let new = cluster.stable_leader();
    assert_ne!(new, old);
    let written = cluster.request(&new, 2, r#""type":"write","key":1,"value":2"#);
    assert_eq!(written["type"], "write_ok");
    stalled.advance_to(cluster.servers[&new].now());
    cluster.servers.insert(old.clone(), stalled);
    cluster.isolated.clear();
    cluster.client_lines.clear();
    let read = cluster.request(&old, 3, r#""type":"read","key":1"#);
    assert!(
        read["type"] != "read_ok" || read["value"] == 2,
        "the resumed leader answered a stale read: {read}"
    );
}
