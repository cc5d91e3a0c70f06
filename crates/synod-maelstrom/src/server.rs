//! The Maelstrom node, without I/O: lines in ([`Server::handle_line`]), clock ticks in
//! ([`Server::tick`]), lines out ([`Server::take_output`]). The binary wraps it in a
//! stdin reader thread and a real clock; tests drive it directly.
//!
//! The node runs a `synod_core::Node` in Multi-Paxos mode. Persistence is in memory (a
//! `DurableState` updated before `on_persisted`, as the core's contract asks). Peers
//! talk through Maelstrom envelopes whose body is `{"type": "paxos", "msg": <Message>}`.
//! Client requests never enter the core before a leader is known, so a request refused
//! with code 11 ("no leader") has certainly not been applied.

use crate::errors::{MALFORMED_REQUEST, NOT_SUPPORTED, TEMPORARILY_UNAVAILABLE, TIMEOUT};
use crate::json::Json;
use crate::kv::{Command, KvOp, KvResult, KvStore};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use synod_core::{
    Config, DurableState, Envelope, Event, Message, Node, NodeId, ProposalId, ProposeError, Slot,
    Value,
};

/// Timing of the node, in ticks of its clock (the binary ticks every 10 ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Election timeout of a multi-node cluster (a follower waits a random time in
    /// `[t, 2t)` without a leader before running Phase 1).
    pub election_timeout_ticks: u64,
    /// Election timeout of a single-node cluster: it only elects itself.
    pub single_node_election_timeout_ticks: u64,
    /// A leader with nothing to send heartbeats this often.
    pub heartbeat_interval_ticks: u64,
    /// A request waits this long for a leader to be known before it is refused with
    /// code 11 (it never entered the log).
    pub leader_wait_ticks: u64,
    /// A request that entered the log (or went to the leader) and has no outcome after
    /// this long is answered with code 0: indefinite.
    pub request_timeout_ticks: u64,
    /// How many times a `multi_paxos_propose` may be passed on between nodes.
    pub max_forward_hops: u64,
    /// Mixed into each node's random seed (election timeouts).
    pub seed: u64,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            election_timeout_ticks: 20,
            single_node_election_timeout_ticks: 2,
            heartbeat_interval_ticks: 2,
            leader_wait_ticks: 100,
            request_timeout_ticks: 200,
            max_forward_hops: 3,
            seed: 0x5eed,
        }
    }
}

/// Where the answer to a request goes.
#[derive(Clone, PartialEq, Eq, Debug)]
enum ReplyTo {
    /// A client request: answer with `in_reply_to: msg_id`.
    Client { client: String, msg_id: u64 },
    /// A proposal another node passed on: answer with a `forward_reply` to it.
    Peer { node: String, request: u64 },
}

#[derive(Clone, PartialEq, Debug)]
enum Request {
    Kv {
        client: String,
        msg_id: u64,
        op: KvOp,
    },
    ProposeAt {
        slot: Slot,
        value: Json,
        reply_to: ReplyTo,
        hops: u64,
    },
}

/// A request held until a leader is known.
#[derive(Clone, PartialEq, Debug)]
struct Waiting {
    request: Request,
    deadline: u64,
}

/// A `multi_paxos_propose` waiting for its slot to be chosen.
#[derive(Clone, PartialEq, Debug)]
struct SlotWaiter {
    slot: Slot,
    reply_to: ReplyTo,
    /// The core's id for our proposal (None: the slot was already taken; we only wait).
    proposal: Option<ProposalId>,
    phase1_skipped: Option<bool>,
    deadline: u64,
}

/// Output lines, with the node's message-id counter.
#[derive(Default, Debug)]
struct Out {
    next_msg_id: u64,
    lines: Vec<String>,
}

impl Out {
    /// Sends `body` (an object) from `src` to `dest`, appending the next `msg_id`.
    fn send(&mut self, src: &str, dest: &str, mut body: Json) {
        body.push("msg_id", Json::UInt(self.next_msg_id));
        self.next_msg_id += 1;
        let envelope = Json::object([
            ("src", Json::str(src)),
            ("dest", Json::str(dest)),
            ("body", body),
        ]);
        self.lines.push(envelope.to_python_string());
    }

    /// `{"type": kind, "in_reply_to": ..., fields..., "msg_id": ...}`.
    fn reply(
        &mut self,
        src: &str,
        dest: &str,
        in_reply_to: Option<u64>,
        kind: &str,
        fields: Vec<(String, Json)>,
    ) {
        let mut pairs = vec![("type".to_string(), Json::str(kind))];
        if let Some(id) = in_reply_to {
            pairs.push(("in_reply_to".to_string(), Json::UInt(id)));
        }
        pairs.extend(fields);
        self.send(src, dest, Json::Object(pairs));
    }

    fn error(&mut self, src: &str, dest: &str, in_reply_to: Option<u64>, code: u64, text: &str) {
        self.reply(src, dest, in_reply_to, "error", error_fields(code, text));
    }
}

fn error_fields(code: u64, text: &str) -> Vec<(String, Json)> {
    vec![
        ("code".to_string(), Json::UInt(code)),
        ("text".to_string(), Json::str(text)),
    ]
}

/// One Maelstrom node. See the module documentation.
pub struct Server {
    options: ServerOptions,
    out: Out,
    /// Ticks since start.
    now: u64,
    replica: Option<Replica>,
}

/// The node's state once `init` arrived.
struct Replica {
    me: String,
    /// Maelstrom ids in `init` order; `ids[i]` is core node `i + 1`.
    ids: Vec<String>,
    node: Node,
    durable: DurableState,
    store: KvStore,
    waiting: VecDeque<Waiting>,
    /// lin-kv requests this node put into the log: (client, msg_id) → deadline.
    kv_inflight: BTreeMap<(String, u64), u64>,
    slot_waiters: Vec<SlotWaiter>,
    /// `multi_paxos_propose` passed on to the leader: request id → (answer to, deadline).
    forwarded: BTreeMap<u64, (ReplyTo, u64)>,
    next_forward_id: u64,
}

impl Default for Server {
    fn default() -> Server {
        Server::new(ServerOptions::default())
    }
}

impl Server {
    pub fn new(options: ServerOptions) -> Server {
        Server {
            options,
            out: Out::default(),
            now: 0,
            replica: None,
        }
    }

    /// Lines to write to stdout, in order.
    pub fn take_output(&mut self) -> Vec<String> {
        std::mem::take(&mut self.out.lines)
    }

    /// The Maelstrom id of this node, once initialized.
    pub fn node_id(&self) -> Option<&str> {
        self.replica.as_ref().map(|replica| replica.me.as_str())
    }

    /// The node this one believes leads (its Maelstrom id), if any.
    pub fn leader(&self) -> Option<String> {
        let replica = self.replica.as_ref()?;
        let leader = replica.node.status().leader?;
        replica.name_of(leader).map(str::to_string)
    }

    /// True while some request has not been answered yet.
    pub fn has_pending_requests(&self) -> bool {
        self.replica.as_ref().is_some_and(|replica| {
            !replica.waiting.is_empty()
                || !replica.kv_inflight.is_empty()
                || !replica.slot_waiters.is_empty()
                || !replica.forwarded.is_empty()
        })
    }

    /// One tick of the clock: the core's timers, then request deadlines.
    pub fn tick(&mut self) {
        self.now += 1;
        let now = self.now;
        let Some(replica) = self.replica.as_mut() else {
            return;
        };
        replica.node.tick();
        replica.expire(now, &mut self.out);
        replica.drive(now, &self.options, &mut self.out);
    }

    /// One input line (a JSON envelope). Bad input gets an error reply when there is
    /// someone to reply to, and is logged on stderr; the node goes on either way.
    pub fn handle_line(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let envelope = match Json::parse(line) {
            Ok(envelope) => envelope,
            Err(error) => {
                eprintln!("malformed JSON ({error}): {line}");
                self.reply_to_unparsable(line, &error.to_string());
                return;
            }
        };
        let Some(src) = envelope
            .get("src")
            .and_then(Json::as_str)
            .map(str::to_string)
        else {
            eprintln!("envelope without a `src` string, dropped: {line}");
            return;
        };
        let me = self.reply_source(envelope.get("dest").and_then(Json::as_str));
        let Some(body) = envelope
            .get("body")
            .filter(|b| matches!(b, Json::Object(_)))
        else {
            self.out.error(
                &me,
                &src,
                None,
                MALFORMED_REQUEST,
                "envelope without a `body` object",
            );
            return;
        };
        let msg_id = body.get("msg_id").and_then(Json::as_u64);
        let Some(kind) = body.get("type").and_then(Json::as_str) else {
            if !is_reply_from_node(body) {
                self.out.error(
                    &me,
                    &src,
                    msg_id,
                    MALFORMED_REQUEST,
                    "body without a `type` string",
                );
            }
            return;
        };
        if let Some(replica) = &self.replica {
            if let Some(dest) = envelope.get("dest").and_then(Json::as_str) {
                if dest != replica.me {
                    eprintln!("message for {dest} arrived at {}, dropped", replica.me);
                    return;
                }
            }
        }
        self.handle_body(&src, &me, kind, msg_id, body);
    }

    fn handle_body(&mut self, src: &str, me: &str, kind: &str, msg_id: Option<u64>, body: &Json) {
        // Answers and errors are never answered (two nodes must not ping-pong errors).
        if kind == "error" || kind.ends_with("_ok") {
            eprintln!("{me}: unexpected {kind} from {src}, ignored");
            return;
        }
        let is_request = matches!(
            kind,
            "init" | "multi_paxos_propose" | "multi_paxos_log" | "read" | "write" | "cas"
        );
        let internal = matches!(kind, "paxos" | "forward_propose" | "forward_reply");
        if !is_request && !internal {
            self.out.error(
                me,
                src,
                msg_id,
                NOT_SUPPORTED,
                &format!("message type {kind:?} is not supported"),
            );
            return;
        }
        if is_request && msg_id.is_none() {
            self.out.error(
                me,
                src,
                None,
                MALFORMED_REQUEST,
                "request without a numeric `msg_id`",
            );
            return;
        }
        if kind == "init" {
            self.handle_init(src, me, msg_id.unwrap_or_default(), body);
            return;
        }
        let now = self.now;
        let Some(replica) = self.replica.as_mut() else {
            if is_request {
                self.out.error(
                    me,
                    src,
                    msg_id,
                    TEMPORARILY_UNAVAILABLE,
                    "node not initialized yet",
                );
            }
            return;
        };
        let msg_id_or_zero = msg_id.unwrap_or_default();
        match kind {
            "paxos" => replica.on_paxos(src, body),
            "forward_propose" => {
                replica.on_forward_propose(src, body, now, &self.options, &mut self.out)
            }
            "forward_reply" => replica.on_forward_reply(body, &mut self.out),
            "multi_paxos_propose" => {
                let slot = body.get("slot").and_then(Json::as_u64).filter(|s| *s >= 1);
                let (Some(slot), Some(value)) = (slot, body.get("value")) else {
                    self.out.error(
                        me,
                        src,
                        msg_id,
                        MALFORMED_REQUEST,
                        "multi_paxos_propose needs a `slot` (an integer >= 1) and a `value`",
                    );
                    return;
                };
                let reply_to = ReplyTo::Client {
                    client: src.to_string(),
                    msg_id: msg_id_or_zero,
                };
                replica.request(
                    Request::ProposeAt {
                        slot,
                        value: value.clone(),
                        reply_to,
                        hops: 0,
                    },
                    now,
                    &self.options,
                    &mut self.out,
                );
            }
            "multi_paxos_log" => {
                let log = replica.log_json();
                self.out.reply(
                    me,
                    src,
                    msg_id,
                    "multi_paxos_log_ok",
                    vec![("log".to_string(), log)],
                );
            }
            _ => match crate::kv::parse_request(body) {
                Ok(op) => replica.request(
                    Request::Kv {
                        client: src.to_string(),
                        msg_id: msg_id_or_zero,
                        op,
                    },
                    now,
                    &self.options,
                    &mut self.out,
                ),
                Err((code, text)) => self.out.error(me, src, msg_id, code, &text),
            },
        }
        if let Some(replica) = self.replica.as_mut() {
            replica.drive(now, &self.options, &mut self.out);
        }
    }

    fn handle_init(&mut self, src: &str, me: &str, msg_id: u64, body: &Json) {
        let node_id = body.get("node_id").and_then(Json::as_str);
        let node_ids: Option<Vec<String>> =
            body.get("node_ids")
                .and_then(Json::as_array)
                .and_then(|ids| {
                    ids.iter()
                        .map(|id| id.as_str().map(str::to_string))
                        .collect()
                });
        let (Some(node_id), Some(node_ids)) = (node_id, node_ids) else {
            self.out.error(
                me,
                src,
                Some(msg_id),
                MALFORMED_REQUEST,
                "init needs `node_id` (a string) and `node_ids` (a list of strings)",
            );
            return;
        };
        if let Some(replica) = &self.replica {
            if replica.me == node_id && replica.ids == node_ids {
                self.out
                    .reply(node_id, src, Some(msg_id), "init_ok", vec![]);
            } else {
                self.out.error(
                    me,
                    src,
                    Some(msg_id),
                    MALFORMED_REQUEST,
                    &format!("already initialized as {} of {:?}", replica.me, replica.ids),
                );
            }
            return;
        }
        match Replica::new(node_id, node_ids, &self.options) {
            Ok(replica) => {
                eprintln!("{node_id}: initialized, cluster {:?}", replica.ids);
                self.replica = Some(replica);
                self.out
                    .reply(node_id, src, Some(msg_id), "init_ok", vec![]);
            }
            Err(text) => self
                .out
                .error(me, src, Some(msg_id), MALFORMED_REQUEST, &text),
        }
    }

    /// Our id for the `src` of a reply: the node id once known, else the `dest` the
    /// sender used.
    fn reply_source(&self, dest: Option<&str>) -> String {
        match (&self.replica, dest) {
            (Some(replica), _) => replica.me.clone(),
            (None, Some(dest)) => dest.to_string(),
            (None, None) => "unknown".to_string(),
        }
    }

    /// A line that is not JSON: if its `src` (and `msg_id`) can still be read off the
    /// text, answer with code 12; otherwise there is no one to answer.
    fn reply_to_unparsable(&mut self, line: &str, error: &str) {
        let Some(src) = salvage_string_field(line, "src") else {
            return;
        };
        let me = self.reply_source(salvage_string_field(line, "dest").as_deref());
        let msg_id = salvage_u64_field(line, "msg_id");
        self.out.error(
            &me,
            &src,
            msg_id,
            MALFORMED_REQUEST,
            &format!("malformed JSON: {error}"),
        );
    }
}

/// A body without a type that looks like an answer (has `in_reply_to`): ignore it.
fn is_reply_from_node(body: &Json) -> bool {
    body.get("in_reply_to").is_some()
}

/// `"key": "value"` read off raw text (no escapes in the value).
fn salvage_string_field(text: &str, key: &str) -> Option<String> {
    let rest = after_key(text, key)?;
    let rest = rest.strip_prefix('"')?;
    let end = rest.find(['"', '\\'])?;
    Some(rest[..end].to_string())
}

/// `"key": 123` read off raw text.
fn salvage_u64_field(text: &str, key: &str) -> Option<u64> {
    let rest = after_key(text, key)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn after_key<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let quoted = format!("\"{key}\"");
    let start = text.find(&quoted)? + quoted.len();
    let rest = text[start..].trim_start();
    Some(rest.strip_prefix(':')?.trim_start())
}

impl Replica {
    fn new(me: &str, ids: Vec<String>, options: &ServerOptions) -> Result<Replica, String> {
        let position = ids
            .iter()
            .position(|id| id == me)
            .ok_or_else(|| format!("node_id {me} is not in node_ids {ids:?}"))?;
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != ids.len() {
            return Err(format!("duplicate ids in node_ids {ids:?}"));
        }
        let id = position as NodeId + 1;
        let mut config = Config::new(id, (1..=ids.len() as NodeId).collect());
        let election = if ids.len() == 1 {
            options.single_node_election_timeout_ticks
        } else {
            options.election_timeout_ticks
        };
        config.election_timeout_ticks = election.max(2);
        config.heartbeat_interval_ticks = options
            .heartbeat_interval_ticks
            .clamp(1, config.election_timeout_ticks - 1);
        config.lease_ticks = config.election_timeout_ticks;
        config.retransmit_ticks = (config.election_timeout_ticks / 4).max(1);
        config.seed = options.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let node = Node::new(config)?;
        Ok(Replica {
            me: me.to_string(),
            ids,
            node,
            durable: DurableState::default(),
            store: KvStore::default(),
            waiting: VecDeque::new(),
            kv_inflight: BTreeMap::new(),
            slot_waiters: Vec::new(),
            forwarded: BTreeMap::new(),
            next_forward_id: 1,
        })
    }

    fn core_id(&self, name: &str) -> Option<NodeId> {
        self.ids
            .iter()
            .position(|id| id == name)
            .map(|i| i as NodeId + 1)
    }

    fn name_of(&self, id: NodeId) -> Option<&str> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        self.ids.get(index).map(String::as_str)
    }

    fn my_core_id(&self) -> NodeId {
        self.node.id()
    }

    fn answer(&self, out: &mut Out, reply_to: &ReplyTo, kind: &str, fields: Vec<(String, Json)>) {
        match reply_to {
            ReplyTo::Client { client, msg_id } => {
                out.reply(&self.me, client, Some(*msg_id), kind, fields)
            }
            ReplyTo::Peer { node, request } => {
                let mut reply = vec![("type".to_string(), Json::str(kind))];
                reply.extend(fields);
                out.send(
                    &self.me,
                    node,
                    Json::object([
                        ("type", Json::str("forward_reply")),
                        ("request", Json::UInt(*request)),
                        ("reply", Json::Object(reply)),
                    ]),
                );
            }
        }
    }

    fn answer_error(&self, out: &mut Out, reply_to: &ReplyTo, code: u64, text: &str) {
        self.answer(out, reply_to, "error", error_fields(code, text));
    }

    /// A new client (or forwarded) request.
    fn request(&mut self, request: Request, now: u64, options: &ServerOptions, out: &mut Out) {
        if let Request::ProposeAt { slot, reply_to, .. } = &request {
            // Already chosen here: answer at once, no proposal (so no Phase 1 either).
            if let Some((value, true)) = self.node.slot_value(*slot) {
                let fields = propose_ok_fields(*slot, true, render_value(&value));
                self.answer(out, reply_to, "multi_paxos_propose_ok", fields);
                return;
            }
        }
        self.waiting.push_back(Waiting {
            request,
            deadline: now + options.leader_wait_ticks,
        });
    }

    /// Hands waiting requests to the core (or the leader) once a leader is known.
    /// Returns true after a `propose_at`, so that the caller drains the core before the
    /// next one: each proposal then sees whether the leader's first batch already ran.
    fn dispatch(&mut self, now: u64, options: &ServerOptions, out: &mut Out) -> bool {
        while let Some(leader) = self.node.status().leader {
            let Some(waiting) = self.waiting.pop_front() else {
                return false;
            };
            match waiting.request {
                Request::Kv { client, msg_id, op } => {
                    let command = Command::Kv {
                        origin: self.me.clone(),
                        client: client.clone(),
                        msg_id,
                        op,
                    };
                    match self.node.propose(command.encode()) {
                        Ok(_) => {
                            self.kv_inflight
                                .insert((client, msg_id), now + options.request_timeout_ticks);
                        }
                        Err(error) => out.error(
                            &self.me,
                            &client,
                            Some(msg_id),
                            TEMPORARILY_UNAVAILABLE,
                            &error.to_string(),
                        ),
                    }
                }
                Request::ProposeAt {
                    slot,
                    value,
                    reply_to,
                    hops,
                } => {
                    if leader == self.my_core_id() {
                        if self.propose_here(slot, value, reply_to, hops, now, options, out) {
                            return true;
                        }
                    } else {
                        self.forward_propose(
                            leader, slot, value, reply_to, hops, now, options, out,
                        );
                    }
                }
            }
        }
        false
    }

    /// The leader serves a `multi_paxos_propose`. Returns true if it proposed.
    #[allow(clippy::too_many_arguments)]
    fn propose_here(
        &mut self,
        slot: Slot,
        value: Json,
        reply_to: ReplyTo,
        hops: u64,
        now: u64,
        options: &ServerOptions,
        out: &mut Out,
    ) -> bool {
        let deadline = now + options.request_timeout_ticks;
        match self.node.slot_value(slot) {
            Some((value, true)) => {
                let fields = propose_ok_fields(slot, true, render_value(&value));
                self.answer(out, &reply_to, "multi_paxos_propose_ok", fields);
                return false;
            }
            Some((_, false)) => {
                // Taken by an earlier proposal: wait for what it chooses.
                self.slot_waiters.push(SlotWaiter {
                    slot,
                    reply_to,
                    proposal: None,
                    phase1_skipped: Some(true),
                    deadline,
                });
                return false;
            }
            None => {}
        }
        let command = Command::Propose {
            value: value.clone(),
        };
        match self.node.propose_at(slot, command.encode()) {
            Ok(id) => {
                self.slot_waiters.push(SlotWaiter {
                    slot,
                    reply_to,
                    proposal: Some(id),
                    phase1_skipped: None,
                    deadline,
                });
                true
            }
            Err(ProposeError::NotLeader { .. }) => {
                // Leadership moved between status() and now: wait for the next leader.
                self.waiting.push_front(Waiting {
                    request: Request::ProposeAt {
                        slot,
                        value,
                        reply_to,
                        hops,
                    },
                    deadline: now + options.leader_wait_ticks,
                });
                false
            }
            Err(error) => {
                self.answer_error(out, &reply_to, TEMPORARILY_UNAVAILABLE, &error.to_string());
                false
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_propose(
        &mut self,
        leader: NodeId,
        slot: Slot,
        value: Json,
        reply_to: ReplyTo,
        hops: u64,
        now: u64,
        options: &ServerOptions,
        out: &mut Out,
    ) {
        let Some(leader_name) = self.name_of(leader).map(str::to_string) else {
            self.answer_error(out, &reply_to, TEMPORARILY_UNAVAILABLE, "leader unknown");
            return;
        };
        if hops >= options.max_forward_hops {
            self.answer_error(
                out,
                &reply_to,
                TEMPORARILY_UNAVAILABLE,
                "proposal passed on too many times: leadership is changing",
            );
            return;
        }
        let request = self.next_forward_id;
        self.next_forward_id += 1;
        self.forwarded
            .insert(request, (reply_to, now + options.request_timeout_ticks));
        out.send(
            &self.me,
            &leader_name,
            Json::object([
                ("type", Json::str("forward_propose")),
                ("request", Json::UInt(request)),
                ("slot", Json::UInt(slot)),
                ("value", value),
                ("hops", Json::UInt(hops + 1)),
            ]),
        );
    }

    fn on_forward_propose(
        &mut self,
        src: &str,
        body: &Json,
        now: u64,
        options: &ServerOptions,
        out: &mut Out,
    ) {
        let request = body.get("request").and_then(Json::as_u64);
        let slot = body.get("slot").and_then(Json::as_u64).filter(|s| *s >= 1);
        let hops = body.get("hops").and_then(Json::as_u64).unwrap_or(1);
        let (Some(request), Some(slot), Some(value)) = (request, slot, body.get("value")) else {
            eprintln!("{}: malformed forward_propose from {src}, dropped", self.me);
            return;
        };
        let reply_to = ReplyTo::Peer {
            node: src.to_string(),
            request,
        };
        self.request(
            Request::ProposeAt {
                slot,
                value: value.clone(),
                reply_to,
                hops,
            },
            now,
            options,
            out,
        );
    }

    fn on_forward_reply(&mut self, body: &Json, out: &mut Out) {
        let request = body.get("request").and_then(Json::as_u64);
        let reply = body.get("reply");
        let (Some(request), Some(Json::Object(reply))) = (request, reply) else {
            eprintln!("{}: malformed forward_reply, dropped", self.me);
            return;
        };
        let Some((reply_to, _)) = self.forwarded.remove(&request) else {
            return; // Already answered (timed out).
        };
        let mut fields = reply.clone();
        let kind = match fields.first() {
            Some((key, Json::Str(kind))) if key == "type" => kind.clone(),
            _ => {
                eprintln!("{}: forward_reply without a type, dropped", self.me);
                return;
            }
        };
        fields.remove(0);
        self.answer(out, &reply_to, &kind, fields);
    }

    fn on_paxos(&mut self, src: &str, body: &Json) {
        let Some(from) = self.core_id(src) else {
            eprintln!("{}: paxos message from non-member {src}, dropped", self.me);
            return;
        };
        let message = body
            .get("msg")
            .map(|msg| serde_json::from_value::<Message>(msg.to_serde()));
        match message {
            Some(Ok(message)) => {
                let envelope = Envelope {
                    from,
                    to: self.my_core_id(),
                    message,
                };
                if let Err(error) = self.node.step(envelope) {
                    eprintln!("{}: refused a message from {src}: {error}", self.me);
                }
            }
            Some(Err(error)) => {
                eprintln!("{}: undecodable paxos message from {src}: {error}", self.me)
            }
            None => eprintln!("{}: paxos message without `msg` from {src}", self.me),
        }
    }

    /// Runs the core until it has nothing more to hand out: persist, then send, then
    /// apply what was chosen, then answer whoever waited for it.
    fn drive(&mut self, now: u64, options: &ServerOptions, out: &mut Out) {
        loop {
            let proposed = self.dispatch(now, options, out);
            if !self.node.has_ready() {
                if proposed {
                    continue;
                }
                break;
            }
            let ready = self.node.take_ready();
            if let Some(persist) = ready.persist {
                self.durable.apply_all(&persist.ops);
                self.node.on_persisted(persist.id);
            }
            let me = self.my_core_id();
            let mut loopback = Vec::new();
            for envelope in ready.messages {
                if envelope.to == me {
                    loopback.push(envelope);
                } else {
                    self.send_paxos(envelope, out);
                }
            }
            for envelope in loopback {
                if let Err(error) = self.node.step(envelope) {
                    eprintln!("{}: refused own message: {error}", self.me);
                }
            }
            for event in ready.events {
                self.on_event(event);
            }
            for committed in ready.committed {
                self.apply(&committed.value, out);
            }
            self.answer_chosen_slots(out);
        }
    }

    fn send_paxos(&self, envelope: Envelope, out: &mut Out) {
        let Some(dest) = self.name_of(envelope.to) else {
            eprintln!("{}: message for unknown node {}", self.me, envelope.to);
            return;
        };
        let message = match serde_json::to_value(&envelope.message) {
            Ok(message) => Json::from_serde(&message),
            Err(error) => {
                eprintln!("{}: cannot encode a paxos message: {error}", self.me);
                return;
            }
        };
        out.send(
            &self.me,
            dest,
            Json::object([("type", Json::str("paxos")), ("msg", message)]),
        );
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::ProposalAssigned {
                id,
                slot,
                phase1_skipped,
            } => {
                if let Some(waiter) = self
                    .slot_waiters
                    .iter_mut()
                    .find(|waiter| waiter.proposal == Some(id))
                {
                    if waiter.slot != slot {
                        eprintln!(
                            "{}: slot {} was taken; the value went to slot {slot}",
                            self.me, waiter.slot
                        );
                    }
                    waiter.phase1_skipped = Some(phase1_skipped);
                }
            }
            Event::BecameLeader { ballot, .. } => eprintln!("{}: leading at {ballot}", self.me),
            Event::LeaderChanged { leader } => {
                let name = leader.and_then(|id| self.name_of(id)).unwrap_or("none");
                eprintln!("{}: leader is now {name}", self.me);
            }
            Event::SteppedDown { ballot } => eprintln!("{}: stepped down from {ballot}", self.me),
            _ => {}
        }
    }

    /// Applies one chosen slot to the lin-kv store; answers the requests this node
    /// received.
    fn apply(&mut self, value: &Value, out: &mut Out) {
        for bytes in value.commands() {
            let command = match Command::decode(bytes) {
                Ok(command) => command,
                Err(error) => {
                    eprintln!("{}: skipping an undecodable log command: {error}", self.me);
                    continue;
                }
            };
            let Command::Kv {
                origin,
                client,
                msg_id,
                op,
            } = command
            else {
                continue;
            };
            let result = self.store.execute(&op);
            if origin != self.me || self.kv_inflight.remove(&(client.clone(), msg_id)).is_none() {
                continue;
            }
            let (kind, fields) = match result {
                KvResult::ReadOk(value) => ("read_ok", vec![("value".to_string(), value)]),
                KvResult::WriteOk => ("write_ok", vec![]),
                KvResult::CasOk => ("cas_ok", vec![]),
                KvResult::Error { code, text } => ("error", error_fields(code, &text)),
            };
            out.reply(&self.me, &client, Some(msg_id), kind, fields);
        }
    }

    fn answer_chosen_slots(&mut self, out: &mut Out) {
        let mut index = 0;
        while index < self.slot_waiters.len() {
            let slot = self.slot_waiters[index].slot;
            match self.node.slot_value(slot) {
                Some((value, true)) => {
                    let waiter = self.slot_waiters.remove(index);
                    // Unknown only if the proposal left this node during a leader
                    // change, in which case a Phase 1 did run.
                    let skipped = waiter.phase1_skipped.unwrap_or(false);
                    let fields = propose_ok_fields(slot, skipped, render_value(&value));
                    self.answer(out, &waiter.reply_to, "multi_paxos_propose_ok", fields);
                }
                _ => index += 1,
            }
        }
    }

    /// Answers the requests whose deadline passed: code 11 for those that never
    /// entered the log, code 0 (indefinite) for those that did.
    fn expire(&mut self, now: u64, out: &mut Out) {
        let (expired, kept): (VecDeque<Waiting>, VecDeque<Waiting>) =
            std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|waiting| waiting.deadline <= now);
        self.waiting = kept;
        for waiting in expired {
            let text = "no leader known: the request was not applied";
            match waiting.request {
                Request::Kv { client, msg_id, .. } => out.error(
                    &self.me,
                    &client,
                    Some(msg_id),
                    TEMPORARILY_UNAVAILABLE,
                    text,
                ),
                Request::ProposeAt { reply_to, .. } => {
                    self.answer_error(out, &reply_to, TEMPORARILY_UNAVAILABLE, text)
                }
            }
        }
        let text = "timed out: the request may or may not have been applied";
        let expired: Vec<(String, u64)> = self
            .kv_inflight
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(key, _)| key.clone())
            .collect();
        for (client, msg_id) in expired {
            self.kv_inflight.remove(&(client.clone(), msg_id));
            out.error(&self.me, &client, Some(msg_id), TIMEOUT, text);
        }
        let (expired, kept): (Vec<SlotWaiter>, Vec<SlotWaiter>) =
            std::mem::take(&mut self.slot_waiters)
                .into_iter()
                .partition(|waiter| waiter.deadline <= now);
        self.slot_waiters = kept;
        for waiter in expired {
            self.answer_error(out, &waiter.reply_to, TIMEOUT, text);
        }
        let expired: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(request, _)| *request)
            .collect();
        for request in expired {
            if let Some((reply_to, _)) = self.forwarded.remove(&request) {
                self.answer_error(out, &reply_to, TIMEOUT, text);
            }
        }
    }

    /// `multi_paxos_log_ok`'s log: every slot this node holds, in slot order.
    fn log_json(&self) -> Json {
        let last = self.node.status().last_slot;
        let mut entries = Vec::new();
        for slot in self.node.first_log_slot()..=last {
            if let Some((value, chosen)) = self.node.slot_value(slot) {
                entries.push(Json::object([
                    ("slot", Json::UInt(slot)),
                    ("value", render_value(&value)),
                    (
                        "status",
                        Json::str(if chosen { "chosen" } else { "accepted" }),
                    ),
                ]));
            }
        }
        Json::Array(entries)
    }
}

fn propose_ok_fields(slot: Slot, phase1_skipped: bool, value: Json) -> Vec<(String, Json)> {
    vec![
        ("slot".to_string(), Json::UInt(slot)),
        ("phase1_skipped".to_string(), Json::Bool(phase1_skipped)),
        ("chosen".to_string(), Json::Bool(true)),
        ("value".to_string(), value),
    ]
}

/// How a slot's value is shown: a no-op as `null`, one command as its value, a batch
/// of lin-kv commands as a list.
pub fn render_value(value: &Value) -> Json {
    let render = |bytes: &Bytes| match Command::decode(bytes) {
        Ok(command) => command.display_value(),
        Err(_) => Json::Str(String::from_utf8_lossy(bytes).into_owned()),
    };
    match value {
        Value::Noop => Json::Null,
        Value::Commands(commands) if commands.len() == 1 => render(&commands[0]),
        Value::Commands(commands) => Json::Array(commands.iter().map(render).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_until_quiet(server: &mut Server, ticks: u64) -> Vec<String> {
        let mut lines = server.take_output();
        for _ in 0..ticks {
            server.tick();
            lines.extend(server.take_output());
            if !server.has_pending_requests() {
                break;
            }
        }
        lines
    }

    #[test]
    fn seed_sample_subsequent_slots_skip_phase1() {
        let mut server = Server::default();
        for line in [
            r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#,
            r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":2,"slot":1,"value":"cmd1"}}"#,
            r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":3,"slot":2,"value":"cmd2"}}"#,
        ] {
            server.handle_line(line);
        }
        let lines = run_until_quiet(&mut server, 100);
        assert_eq!(
            lines,
            vec![
                r#"{"src": "n1", "dest": "c0", "body": {"type": "init_ok", "in_reply_to": 1, "msg_id": 0}}"#,
                r#"{"src": "n1", "dest": "c1", "body": {"type": "multi_paxos_propose_ok", "in_reply_to": 2, "slot": 1, "phase1_skipped": false, "chosen": true, "value": "cmd1", "msg_id": 1}}"#,
                r#"{"src": "n1", "dest": "c1", "body": {"type": "multi_paxos_propose_ok", "in_reply_to": 3, "slot": 2, "phase1_skipped": true, "chosen": true, "value": "cmd2", "msg_id": 2}}"#,
            ]
        );
    }

    #[test]
    fn seed_task_log_lists_slots_in_order_with_their_status() {
        let mut server = Server::default();
        for line in [
            r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#,
            r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":1,"slot":1,"value":"set x=1"}}"#,
            r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":2,"slot":2,"value":"set y=2"}}"#,
        ] {
            server.handle_line(line);
        }
        let lines = run_until_quiet(&mut server, 100);
        assert_eq!(lines.len(), 3);
        server.handle_line(
            r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_log","msg_id":3}}"#,
        );
        assert_eq!(
            server.take_output(),
            vec![
                r#"{"src": "n1", "dest": "c1", "body": {"type": "multi_paxos_log_ok", "in_reply_to": 3, "log": [{"slot": 1, "value": "set x=1", "status": "chosen"}, {"slot": 2, "value": "set y=2", "status": "chosen"}], "msg_id": 3}}"#
            ]
        );
    }

    #[test]
    fn far_slots_are_filled_with_noops_and_too_far_ones_refused() {
        let mut server = Server::default();
        server.handle_line(r#"{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}"#);
        server.handle_line(r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":2,"slot":3,"value":[1,{"z":2,"a":1}]}}"#);
        let lines = run_until_quiet(&mut server, 100);
        assert!(lines[1].contains(r#""slot": 3, "phase1_skipped": false, "chosen": true, "value": [1, {"z": 2, "a": 1}]"#), "{}", lines[1]);
        server.handle_line(r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":3,"slot":1,"value":"late"}}"#);
        server.handle_line(r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_propose","msg_id":4,"slot":1000,"value":"far"}}"#);
        server.handle_line(
            r#"{"src":"c1","dest":"n1","body":{"type":"multi_paxos_log","msg_id":5}}"#,
        );
        let lines = run_until_quiet(&mut server, 100);
        assert!(lines[0].contains(r#""in_reply_to": 3, "slot": 1, "phase1_skipped": true, "chosen": true, "value": null"#), "{}", lines[0]);
        assert!(
            lines[1]
                .contains(r#""in_reply_to": 4, "code": 11, "text": "slot 1000 is too far ahead"#),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains(r#""log": [{"slot": 1, "value": null, "status": "chosen"}, {"slot": 2, "value": null, "status": "chosen"}, {"slot": 3, "value": [1, {"z": 2, "a": 1}], "status": "chosen"}]"#), "{}", lines[2]);
    }

    #[test]
    fn salvages_the_sender_of_a_line_that_is_not_json() {
        assert_eq!(
            salvage_string_field(r#"{"src": "c3", "body": {"msg_id": 17,"#, "src"),
            Some("c3".to_string())
        );
        assert_eq!(
            salvage_u64_field(r#"{"src": "c3", "body": {"msg_id": 17,"#, "msg_id"),
            Some(17)
        );
        assert_eq!(salvage_string_field("garbage", "src"), None);
    }
}
