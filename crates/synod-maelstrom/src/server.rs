//! The Maelstrom node, without I/O: lines in ([`Server::handle_line`]), the clock in
//! ([`Server::tick`], [`Server::advance_to`]), lines out ([`Server::take_output`]). The
//! binary wraps it in a stdin reader thread and a real clock; tests drive it directly.
//!
//! The node runs `synod_replica::Replica` — the replica the server and the simulator
//! run — over the lin-kv store ([`KvStore`]); what is here is glue: Maelstrom requests
//! become the replica's inputs, its `ReplicaReady` becomes lines. Persistence is in
//! memory (each persist request is applied to a `DurableState`, then reported with
//! `on_persisted`). Peers talk through envelopes whose body is
//! `{"type": "paxos", "msg": <Message>}`. Client requests reach the replica only once a
//! leader is known, so a request refused with code 11 ("no leader") has certainly not
//! been applied.

use crate::errors::{MALFORMED_REQUEST, NOT_SUPPORTED, TEMPORARILY_UNAVAILABLE, TIMEOUT};
use crate::json::Json;
use crate::kv::{Command, KvOp, KvResult, KvStore};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use synod_core::{
    Config, DurableState, Envelope, Event, Message, NodeId, ProposeError, Slot, Value,
};
use synod_replica::{
    Nanos, Proposal, ReadHow, Replica, ReplicaConfig, ReplicaEvent, ReplicaReady, ReplicaStats,
    RequestError, RequestId,
};

/// Length of one tick of the node's clock, in nanoseconds: the binary's clock ticks
/// every 10 ms, and the replica counts time in these.
pub const TICK_NANOS: Nanos = 10_000_000;

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
    /// Differs in every run of the process (the binary draws it at random): the
    /// replica's client-session id and the core's incarnation derive from it, so a
    /// restarted process's requests are never taken for its previous life's.
    pub life: u64,
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
            life: 0,
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

/// A lin-kv request handed to the replica, until it is answered.
#[derive(Clone, PartialEq, Debug)]
enum InFlight {
    /// A `write` or `cas`: answered with the state machine's response when the replica
    /// applied it (or with code 0 when the replica gave up waiting).
    Update { client: String, msg_id: u64 },
    /// A `read`: served from the store once the replica released it (`released`) and
    /// every earlier update of the same client is answered, so a client that pipelines
    /// its requests reads its own writes.
    Read {
        client: String,
        msg_id: u64,
        key: Json,
        released: bool,
    },
}

/// A `multi_paxos_propose` waiting for its slot to be chosen.
#[derive(Clone, PartialEq, Debug)]
struct SlotWaiter {
    slot: Slot,
    reply_to: ReplyTo,
    /// The replica's request id of our proposal (None: the slot was already taken; we
    /// only wait).
    request: Option<RequestId>,
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
    member: Option<Member>,
}

/// The node once `init` arrived: the replica, and the requests it serves for clients.
struct Member {
    me: String,
    /// Maelstrom ids in `init` order; `ids[i]` is core node `i + 1`.
    ids: Vec<String>,
    replica: Replica<KvStore>,
    /// The replica's storage, in memory.
    durable: DurableState,
    waiting: VecDeque<Waiting>,
    /// lin-kv requests handed to the replica, by request id (in arrival order).
    in_flight: BTreeMap<RequestId, InFlight>,
    next_request: RequestId,
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
            member: None,
        }
    }

    /// Lines to write to stdout, in order.
    pub fn take_output(&mut self) -> Vec<String> {
        std::mem::take(&mut self.out.lines)
    }

    /// The Maelstrom id of this node, once initialized.
    pub fn node_id(&self) -> Option<&str> {
        self.member.as_ref().map(|member| member.me.as_str())
    }

    /// The node this one believes leads (its Maelstrom id), if any.
    pub fn leader(&self) -> Option<String> {
        let member = self.member.as_ref()?;
        let leader = member.replica.node().status().leader?;
        member.name_of(leader).map(str::to_string)
    }

    /// True while some request has not been answered yet.
    pub fn has_pending_requests(&self) -> bool {
        self.member.as_ref().is_some_and(|member| {
            !member.waiting.is_empty()
                || !member.in_flight.is_empty()
                || !member.slot_waiters.is_empty()
                || !member.forwarded.is_empty()
        })
    }

    /// The replica's counters (reads by path, retries, leader changes), once initialized.
    pub fn stats(&self) -> Option<ReplicaStats> {
        self.member.as_ref().map(|member| member.replica.stats())
    }

    /// The clock's ticks since start.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// One tick of the clock.
    pub fn tick(&mut self) {
        self.advance_to(self.now + 1);
    }

    /// The clock reads `ticks` since start: the replica's timers and request deadlines
    /// catch up in one step, however long the stall. The binary passes the real time
    /// elapsed, so a process that was descheduled sees its leases run out as they did in
    /// real time (a lease read is never decided on a clock that stood still). Earlier
    /// readings change nothing.
    pub fn advance_to(&mut self, ticks: u64) {
        if ticks <= self.now {
            return;
        }
        self.now = ticks;
        let Some(member) = self.member.as_mut() else {
            return;
        };
        member.replica.tick(nanos(ticks));
        member.expire(ticks, &mut self.out);
        member.drive(ticks, &self.options, &mut self.out);
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
        if let Some(member) = &self.member {
            if let Some(dest) = envelope.get("dest").and_then(Json::as_str) {
                if dest != member.me {
                    eprintln!("message for {dest} arrived at {}, dropped", member.me);
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
        let Some(member) = self.member.as_mut() else {
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
            "paxos" => member.on_paxos(src, body, now),
            "forward_propose" => {
                member.on_forward_propose(src, body, now, &self.options, &mut self.out)
            }
            "forward_reply" => member.on_forward_reply(body, &mut self.out),
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
                member.request(
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
                let log = member.log_json();
                self.out.reply(
                    me,
                    src,
                    msg_id,
                    "multi_paxos_log_ok",
                    vec![("log".to_string(), log)],
                );
            }
            _ => match crate::kv::parse_request(body) {
                Ok(op) => member.request(
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
        if let Some(member) = self.member.as_mut() {
            member.drive(now, &self.options, &mut self.out);
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
        if let Some(member) = &self.member {
            if member.me == node_id && member.ids == node_ids {
                self.out
                    .reply(node_id, src, Some(msg_id), "init_ok", vec![]);
            } else {
                self.out.error(
                    me,
                    src,
                    Some(msg_id),
                    MALFORMED_REQUEST,
                    &format!("already initialized as {} of {:?}", member.me, member.ids),
                );
            }
            return;
        }
        match Member::new(node_id, node_ids, &self.options, self.now) {
            Ok(member) => {
                eprintln!("{node_id}: initialized, cluster {:?}", member.ids);
                self.member = Some(member);
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
        match (&self.member, dest) {
            (Some(member), _) => member.me.clone(),
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

/// The replica's clock reading at `ticks` ticks since start.
fn nanos(ticks: u64) -> Nanos {
    ticks * TICK_NANOS
}

/// Node ids must fit below the life's bits in the client-session id.
const CLIENT_ID_NODE_BITS: u32 = 20;

impl Member {
    fn new(
        me: &str,
        ids: Vec<String>,
        options: &ServerOptions,
        now: u64,
    ) -> Result<Member, String> {
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
        if ids.len() >= 1 << CLIENT_ID_NODE_BITS {
            return Err(format!("too many nodes: {}", ids.len()));
        }
        let id = position as NodeId + 1;
        let mut core = Config::new(id, (1..=ids.len() as NodeId).collect());
        let election = if ids.len() == 1 {
            options.single_node_election_timeout_ticks
        } else {
            options.election_timeout_ticks
        };
        core.election_timeout_ticks = election.max(2);
        core.heartbeat_interval_ticks = options
            .heartbeat_interval_ticks
            .clamp(1, core.election_timeout_ticks - 1);
        core.lease_ticks = core.election_timeout_ticks;
        core.retransmit_ticks = (core.election_timeout_ticks / 4).max(1);
        core.seed = options.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        core.incarnation = options.life;
        let mut config = ReplicaConfig::new(core, 1);
        // Unique per node (sessions are per client id) and per life.
        config.client_id = (options.life << CLIENT_ID_NODE_BITS) | id;
        config.tick_nanos = TICK_NANOS;
        config.request_timeout_nanos = nanos(options.request_timeout_ticks);
        config.retry_after_nanos = nanos(config.core.election_timeout_ticks);
        // Storage is in memory and `multi_paxos_log` lists every slot: no compaction.
        config.snapshot_interval_slots = 0;
        let replica = Replica::recover(
            config,
            DurableState::default(),
            None,
            KvStore::default(),
            nanos(now),
        )
        .map_err(|error| error.to_string())?;
        Ok(Member {
            me: me.to_string(),
            ids,
            replica,
            durable: DurableState::default(),
            waiting: VecDeque::new(),
            in_flight: BTreeMap::new(),
            next_request: 1,
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
        self.replica.id()
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
            if let Some((value, true)) = self.replica.node().slot_value(*slot) {
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

    /// Hands waiting requests to the replica (or the leader) once a leader is known.
    /// Returns true after a `propose_at`, so that the caller drains the replica before
    /// the next one: each proposal then sees whether the leader's first batch already
    /// ran.
    fn dispatch(&mut self, now: u64, options: &ServerOptions, out: &mut Out) -> bool {
        while let Some(leader) = self.replica.node().status().leader {
            let Some(waiting) = self.waiting.pop_front() else {
                return false;
            };
            match waiting.request {
                Request::Kv { client, msg_id, op } => self.submit_kv(client, msg_id, op, now),
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

    /// A lin-kv request goes to the replica: `write` and `cas` are proposed (the
    /// replica forwards them to the leader, and proposes them again through a failover:
    /// its client sessions apply each once); a `read` asks for a linearizable read (a
    /// lease or a read index confirmed by the leader).
    fn submit_kv(&mut self, client: String, msg_id: u64, op: KvOp, now: u64) {
        let request = self.next_request;
        self.next_request += 1;
        if let KvOp::Read { key } = op {
            self.in_flight.insert(
                request,
                InFlight::Read {
                    client,
                    msg_id,
                    key,
                    released: false,
                },
            );
            self.replica.read(nanos(now), request, true);
            return;
        }
        let command = Command::Kv {
            origin: self.me.clone(),
            client: client.clone(),
            msg_id,
            op,
        };
        self.in_flight
            .insert(request, InFlight::Update { client, msg_id });
        self.replica.propose(nanos(now), request, command.encode());
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
        match self.replica.node().slot_value(slot) {
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
                    request: None,
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
        let request = self.next_request;
        self.next_request += 1;
        match self
            .replica
            .propose_at(nanos(now), request, slot, command.encode())
        {
            Ok(()) => {
                self.slot_waiters.push(SlotWaiter {
                    slot,
                    reply_to,
                    request: Some(request),
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

    fn on_paxos(&mut self, src: &str, body: &Json, now: u64) {
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
                if let Err(error) = self.replica.step(nanos(now), envelope) {
                    eprintln!("{}: refused a message from {src}: {error}", self.me);
                }
            }
            Some(Err(error)) => {
                eprintln!("{}: undecodable paxos message from {src}: {error}", self.me)
            }
            None => eprintln!("{}: paxos message without `msg` from {src}", self.me),
        }
    }

    /// Runs the replica until it has nothing more to hand out, dispatching waiting
    /// requests between rounds.
    fn drive(&mut self, now: u64, options: &ServerOptions, out: &mut Out) {
        loop {
            let proposed = self.dispatch(now, options, out);
            if !self.replica.has_ready() {
                if proposed {
                    continue;
                }
                break;
            }
            let ready = self.replica.take_ready();
            self.carry_out(ready, now, out);
        }
    }

    /// One `ReplicaReady`: persist (in memory) and report it, send, then answer.
    fn carry_out(&mut self, ready: ReplicaReady, now: u64, out: &mut Out) {
        for request in &ready.persist {
            self.durable.apply_all(&request.ops);
            self.replica.on_persisted(nanos(now), request.id);
        }
        for envelope in ready.messages {
            self.send_paxos(envelope, out);
        }
        for event in ready.events {
            self.on_event(event);
        }
        for (request, result) in ready.replies {
            self.on_reply(request, result, out);
        }
        for (request, result) in ready.reads {
            self.on_read(request, result, out);
        }
        self.serve_released_reads(out);
        self.answer_chosen_slots(out);
        // Snapshots are off (`snapshot_interval_slots` 0), so the log is never compacted
        // and no peer ever needs one.
        debug_assert!(ready.save_snapshot.is_none() && ready.send_snapshots.is_empty());
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

    fn on_event(&mut self, event: ReplicaEvent) {
        match event {
            ReplicaEvent::Assigned {
                request,
                slot,
                phase1_skipped,
            } => {
                if let Some(waiter) = self
                    .slot_waiters
                    .iter_mut()
                    .find(|waiter| waiter.request == Some(request))
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
            ReplicaEvent::Core(Event::BecameLeader { ballot, .. }) => {
                eprintln!("{}: leading at {ballot}", self.me)
            }
            ReplicaEvent::Core(Event::LeaderChanged { leader }) => {
                let name = leader.and_then(|id| self.name_of(id)).unwrap_or("none");
                eprintln!("{}: leader is now {name}", self.me);
            }
            ReplicaEvent::Core(Event::SteppedDown { ballot }) => {
                eprintln!("{}: stepped down from {ballot}", self.me)
            }
            ReplicaEvent::UndecodableCommand { slot, error } => {
                eprintln!(
                    "{}: skipped an undecodable command in slot {slot}: {error}",
                    self.me
                )
            }
            _ => {}
        }
    }

    /// The outcome of a proposal. A `multi_paxos_propose` is answered by its slot
    /// waiter instead (when the slot it asked for is chosen), so only lin-kv updates
    /// are answered here.
    fn on_reply(&mut self, request: RequestId, result: Result<Bytes, RequestError>, out: &mut Out) {
        let Some(InFlight::Update { client, msg_id }) = self.in_flight.get(&request).cloned()
        else {
            return;
        };
        self.in_flight.remove(&request);
        let (kind, fields) = match result.map(|bytes| KvResult::decode(&bytes)) {
            Ok(Ok(result)) => result.reply(),
            Ok(Err(error)) => (
                "error",
                error_fields(TIMEOUT, &format!("unreadable response: {error}")),
            ),
            Err(error) => ("error", request_error_fields(&error)),
        };
        out.reply(&self.me, &client, Some(msg_id), kind, fields);
    }

    /// A linearizable read may now be served (or failed).
    fn on_read(
        &mut self,
        request: RequestId,
        result: Result<ReadHow, RequestError>,
        out: &mut Out,
    ) {
        match result {
            Ok(_) => {
                if let Some(InFlight::Read { released, .. }) = self.in_flight.get_mut(&request) {
                    *released = true;
                }
            }
            Err(error) => {
                if let Some(InFlight::Read { client, msg_id, .. }) = self.in_flight.remove(&request)
                {
                    out.reply(
                        &self.me,
                        &client,
                        Some(msg_id),
                        "error",
                        request_error_fields(&error),
                    );
                }
            }
        }
    }

    /// Serves released reads from the store, each once no earlier update of its client
    /// is waiting. The store may have applied more than the read index by then, which
    /// is still linearizable: every slot it applied was chosen before the read is served.
    fn serve_released_reads(&mut self, out: &mut Out) {
        let mut writing: BTreeSet<&str> = BTreeSet::new();
        let mut ready = Vec::new();
        for (request, in_flight) in &self.in_flight {
            match in_flight {
                InFlight::Update { client, .. } => {
                    writing.insert(client);
                }
                InFlight::Read {
                    client,
                    released: true,
                    ..
                } if !writing.contains(client.as_str()) => ready.push(*request),
                InFlight::Read { .. } => {}
            }
        }
        for request in ready {
            if let Some(InFlight::Read {
                client,
                msg_id,
                key,
                ..
            }) = self.in_flight.remove(&request)
            {
                let (kind, fields) = self.replica.state_machine().read(&key).reply();
                out.reply(&self.me, &client, Some(msg_id), kind, fields);
            }
        }
    }

    fn answer_chosen_slots(&mut self, out: &mut Out) {
        let mut index = 0;
        while index < self.slot_waiters.len() {
            let slot = self.slot_waiters[index].slot;
            match self.replica.node().slot_value(slot) {
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
    /// reached the replica, code 0 (indefinite) for `multi_paxos_propose` that did.
    /// (The replica times out lin-kv requests itself: see `on_reply` and `on_read`.)
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
        let node = self.replica.node();
        let last = node.status().last_slot;
        let mut entries = Vec::new();
        for slot in node.first_log_slot()..=last {
            if let Some((value, chosen)) = node.slot_value(slot) {
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

/// The error reply of a request the replica gave up on: a request too large was never
/// proposed (12, definite); anything else — a timeout above all — may still take effect
/// (0, indefinite).
fn request_error_fields(error: &RequestError) -> Vec<(String, Json)> {
    match error {
        RequestError::TooLarge { .. } => error_fields(MALFORMED_REQUEST, &error.to_string()),
        _ => error_fields(
            TIMEOUT,
            &format!("{error}: the request may or may not have been applied"),
        ),
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
/// of lin-kv commands as a list. Each command in the log is wrapped in the replica's
/// `Proposal` (its client session); the command is its payload.
pub fn render_value(value: &Value) -> Json {
    let render = |bytes: &Bytes| {
        let payload = Proposal::decode(bytes).map(|proposal| proposal.payload);
        let command = payload.as_ref().map_or(&bytes[..], |payload| &payload[..]);
        match Command::decode(command) {
            Ok(command) => command.display_value(),
            Err(_) => Json::Str(String::from_utf8_lossy(command).into_owned()),
        }
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
