//! The clients: each runs one operation at a time on a few keys — writes,
//! compare-and-sets and reads by every path (a linearizable read without a log write, a
//! read through the log, a serializable read) — and retries an unanswered one with the
//! same sequence number, maybe at another node. Written values carry padding up to the
//! run's value size; a few are made larger than the request limit on purpose and must be
//! refused.

use crate::checks::Violation;
use crate::cluster::{Event, Simulation, TICK_UNITS};
use crate::linearizability::{KeyedOp, Operation, RegisterOp, RegisterRet};
use bytes::Bytes;
use rand::Rng as _;
use std::collections::BTreeMap;
use synod_core::{NodeId, Role};
use synod_kv::{
    Command, Compare, CompareResult, CompareTarget, Op, OpResponse, PutRequest, RangeRequest,
    Response, TxnRequest,
};
use synod_replica::{ReadHow, RequestError, RequestId};

/// How an operation reaches the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// A write or compare-and-set, through the log.
    Propose,
    /// A read through the log (a read-only command).
    LogRead,
    /// A linearizable read without a log write.
    LinearizableRead,
    /// This replica's state, no communication.
    SerializableRead,
}

/// What a client asked for.
#[derive(Clone, Debug)]
pub(crate) struct ClientOp {
    pub key: u64,
    pub op: RegisterOp<u64>,
    pub path: Path,
    pub mvcc: Mvcc,
}

/// The KV history's part of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mvcc {
    /// A register operation on the latest state.
    Latest,
    /// A read (linearizable or serializable) at this revision; checked against the
    /// committed history, not by the linearizability checker.
    ReadAt(i64),
    /// A `Compact` at this revision through the log (`op` is a placeholder).
    Compact(i64),
}

/// A read at an older revision and what it returned, for the history checker.
#[derive(Clone, Debug)]
pub(crate) struct RevisionRead {
    pub key: u64,
    pub revision: i64,
    /// The serving replica's revision (the response header's).
    pub served_at: i64,
    pub result: Result<Option<Bytes>, synod_kv::KvError>,
}

#[derive(Default)]
pub(crate) struct Client {
    /// Sequence number of the operation in flight (sessions start at 1).
    pub seq: u64,
    pub in_flight: Option<InFlight>,
    pub done: usize,
    /// A value this client saw recently (a plausible CAS `from`).
    pub last_seen: BTreeMap<u64, u64>,
    /// The highest store revision a response showed this client.
    pub last_revision: i64,
}

pub(crate) struct InFlight {
    pub op: ClientOp,
    pub history_index: usize,
    pub started: u64,
}

/// A request a node is working on: who asked, and when it arrived.
pub(crate) struct PendingRequest {
    pub client: usize,
    pub seq: u64,
    pub key: u64,
    pub path: Path,
    pub arrived: u64,
    /// It arrived inside the benchmark's measurement window.
    pub measured: bool,
    /// The command, for the paths through the log.
    pub payload: Option<Bytes>,
    /// The revision a read is served at (0: the latest).
    pub read_revision: i64,
}

/// What a client hears back.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    Response(Response),
    /// Refused as larger than the request limit: it never took effect.
    TooLarge,
}

impl Simulation {
    pub(crate) fn client_next(&mut self, client: usize) {
        if self.clients[client].done >= self.options.ops_per_client {
            return;
        }
        let key = self.rng.gen_range(0..self.options.keys);
        let seq = self.clients[client].seq + 1;
        let value = (client as u64 + 1) * 1_000_000 + seq;
        let op = self.draw_op(client, key, value);
        let history_index = self.history.len();
        let linearizable = op.path != Path::SerializableRead && op.mvcc == Mvcc::Latest;
        self.history.push(linearizable.then(|| Operation {
            client: client as u64,
            op: KeyedOp {
                key,
                op: op.op.clone(),
            },
            call: self.now,
            ret: None,
        }));
        let state = &mut self.clients[client];
        state.seq = seq;
        state.in_flight = Some(InFlight {
            op,
            history_index,
            started: self.now,
        });
        self.client_send(client);
    }

    fn draw_op(&mut self, client: usize, key: u64, value: u64) -> ClientOp {
        let roll = self.rng.gen_range(0..10);
        if roll < 4 {
            let mix = self.options.read_mix;
            let path_roll = self.rng.gen_range(0..100);
            let path = if path_roll < mix.linearizable {
                Path::LinearizableRead
            } else if path_roll < mix.linearizable + mix.log {
                Path::LogRead
            } else {
                Path::SerializableRead
            };
            let mvcc = if path != Path::LogRead && self.draw_mvcc() {
                Mvcc::ReadAt(self.older_revision(client))
            } else {
                Mvcc::Latest
            };
            return ClientOp {
                key,
                op: RegisterOp::Read,
                path,
                mvcc,
            };
        }
        if roll == 4 && self.draw_mvcc() {
            return ClientOp {
                key,
                op: RegisterOp::Read,
                path: Path::Propose,
                mvcc: Mvcc::Compact(self.older_revision(client)),
            };
        }
        if self.rng.gen_range(0..100) < self.options.oversize_percent {
            self.oversized.insert(value);
        }
        let op = if roll < 7 {
            RegisterOp::Write(value)
        } else {
            let from = match self.clients[client].last_seen.get(&key) {
                Some(v) if self.rng.gen_bool(0.8) => *v,
                _ => self.rng.gen_range(0..3),
            };
            RegisterOp::Cas { from, to: value }
        };
        ClientOp {
            key,
            op,
            path: Path::Propose,
            mvcc: Mvcc::Latest,
        }
    }

    /// Whether to make this operation one on the history (no draw when the run has none).
    fn draw_mvcc(&mut self) -> bool {
        let percent = self.options.mvcc_percent;
        percent > 0 && self.rng.gen_range(0..100) < percent
    }

    /// A revision at most a few behind the newest this client saw.
    fn older_revision(&mut self, client: usize) -> i64 {
        let last = self.clients[client].last_revision.max(1);
        self.rng.gen_range((last - 8).max(1)..=last)
    }

    fn client_send(&mut self, client: usize) {
        let Some(in_flight) = &self.clients[client].in_flight else {
            return;
        };
        let (key, path) = (in_flight.op.key, in_flight.op.path);
        let read_revision = match in_flight.op.mvcc {
            Mvcc::ReadAt(revision) => revision,
            _ => 0,
        };
        let seq = self.clients[client].seq;
        let payload = matches!(path, Path::Propose | Path::LogRead).then(|| {
            Command {
                client: client as u64 + 1,
                seq,
                op: self.kv_op(&in_flight.op),
            }
            .encode()
        });
        let node = self.pick_node();
        let request = self.next_request;
        self.next_request += 1;
        self.requests.insert(
            request,
            PendingRequest {
                client,
                seq,
                key,
                path,
                arrived: 0,
                measured: false,
                payload,
                read_revision,
            },
        );
        let lost = self.faulty && self.rng.gen_bool(self.options.faults.loss);
        if !lost {
            let delay = self.random_delay();
            self.schedule(delay, Event::Request { node, request });
        }
        self.schedule(
            self.options.retry_ticks * TICK_UNITS,
            Event::ClientRetry { client, seq },
        );
    }

    fn pick_node(&mut self) -> NodeId {
        let leader = self
            .nodes
            .iter()
            .find(|(_, n)| {
                n.replica
                    .as_ref()
                    .is_some_and(|r| r.status().node.role == Role::Leader)
            })
            .map(|(id, _)| *id);
        match (&self.options.client_nodes, leader) {
            (Some(nodes), _) => nodes[self.rng.gen_range(0..nodes.len())],
            (None, Some(leader)) if self.options.clients_prefer_leader => leader,
            _ => self.rng.gen_range(1..=self.options.nodes),
        }
    }

    pub(crate) fn client_retry(&mut self, client: usize, seq: u64) {
        let state = &self.clients[client];
        let Some(in_flight) = &state.in_flight else {
            return;
        };
        if state.seq != seq {
            return;
        }
        // During the faults an operation may be abandoned: its outcome stays unknown.
        let waited = self.now - in_flight.started;
        if self.healed_at.is_none() && waited >= self.options.give_up_ticks * TICK_UNITS {
            self.report.ops_indefinite += 1;
            self.finish_op(client);
            return;
        }
        self.client_send(client);
    }

    /// The request reaches a running node: a proposal or a read of its replica.
    pub(crate) fn on_request(&mut self, node: NodeId, request: RequestId) {
        let Some(pending) = self.requests.get_mut(&request) else {
            return;
        };
        pending.arrived = self.now;
        let (path, payload) = (pending.path, pending.payload.clone());
        let measuring = self.measuring();
        if let Some(pending) = self.requests.get_mut(&request) {
            pending.measured = measuring;
        }
        if path == Path::LogRead {
            self.report.coverage.log_reads += 1;
        }
        if let Some(payload) = &payload {
            let bytes = payload.len() as u64;
            let coverage = &mut self.report.coverage;
            coverage.max_value_bytes = coverage.max_value_bytes.max(bytes);
        }
        let taken = self.with_replica(node, |replica, now| match payload {
            Some(payload) => replica.propose(now, request, payload),
            None => replica.read(now, request, path == Path::LinearizableRead),
        });
        if !taken {
            self.requests.remove(&request);
        }
    }

    /// A replica's answer to a proposal.
    pub(crate) fn on_replica_reply(
        &mut self,
        node: NodeId,
        request: RequestId,
        result: Result<Bytes, RequestError>,
    ) {
        if self.on_lease_reply(request, &result) {
            return;
        }
        let Some(pending) = self.requests.remove(&request) else {
            return;
        };
        let answer = match result {
            Ok(bytes) => match Response::decode(&bytes) {
                Ok(response) => Answer::Response(response),
                Err(error) => {
                    self.report.violations.push(Violation::Refused {
                        node,
                        error: format!("undecodable response: {error}"),
                    });
                    return;
                }
            },
            Err(RequestError::TooLarge { .. }) => {
                self.report.coverage.requests_too_large += 1;
                Answer::TooLarge
            }
            // The client's own timer retries.
            Err(_) => return,
        };
        if pending.path == Path::Propose && pending.measured {
            self.latencies.push(self.now - pending.arrived);
        }
        let delay = self.random_delay();
        self.schedule(
            delay,
            Event::Reply {
                client: pending.client,
                seq: pending.seq,
                answer,
            },
        );
    }

    /// A replica released a read: it is served now, against its state.
    pub(crate) fn on_replica_read(
        &mut self,
        node: NodeId,
        request: RequestId,
        result: Result<ReadHow, RequestError>,
    ) {
        let Some(pending) = self.requests.remove(&request) else {
            return;
        };
        if result.is_err() {
            return;
        }
        let replica = self.nodes[&node].replica.as_ref().expect("the node is up");
        #[cfg(test)]
        let pending = PendingRequest {
            read_revision: if self.options.mutant_reads_ignore_revision {
                0
            } else {
                pending.read_revision
            },
            ..pending
        };
        let request = RangeRequest {
            revision: pending.read_revision,
            ..range(key_bytes(pending.key))
        };
        let response = replica.state_machine().read(&request);
        let delay = self.random_delay();
        self.schedule(
            delay,
            Event::Reply {
                client: pending.client,
                seq: pending.seq,
                answer: Answer::Response(response),
            },
        );
    }

    pub(crate) fn on_reply(&mut self, client: usize, seq: u64, answer: Answer) {
        let state = &self.clients[client];
        if state.seq != seq {
            return; // a late duplicate reply
        }
        let Some(in_flight) = &state.in_flight else {
            return;
        };
        let (key, index, path) = (in_flight.op.key, in_flight.history_index, in_flight.op.path);
        let response = match answer {
            Answer::TooLarge => {
                // Definitely not applied: not an operation of the history at all.
                self.history[index] = None;
                self.report.ops_failed += 1;
                self.finish_op(client);
                return;
            }
            Answer::Response(response) => response,
        };
        let client_state = &mut self.clients[client];
        client_state.last_revision = client_state.last_revision.max(response.revision);
        let Some(in_flight) = &self.clients[client].in_flight else {
            return;
        };
        if in_flight.op.mvcc != Mvcc::Latest {
            self.record_mvcc(key, in_flight.op.mvcc, response);
            self.history[index] = None;
            self.finish_op(client);
            return;
        }
        let ret = match self.register_ret(&in_flight.op.op.clone(), &response) {
            Ok(ret) => ret,
            Err(error) => {
                self.report.violations.push(Violation::BadResponse {
                    client: client as u64,
                    seq,
                    error,
                });
                return;
            }
        };
        self.record_return(client, seq, key, index, path, ret);
        self.finish_op(client);
    }

    fn record_return(
        &mut self,
        client: usize,
        seq: u64,
        key: u64,
        index: usize,
        path: Path,
        ret: RegisterRet<u64>,
    ) {
        match &ret {
            RegisterRet::ReadOk(value) => {
                if let Some(v) = value {
                    self.clients[client].last_seen.insert(key, *v);
                }
                if path == Path::SerializableRead {
                    self.serializable_reads.push((key, *value));
                }
            }
            RegisterRet::WriteOk | RegisterRet::CasOk => {
                let written = match self.history[index].as_ref().map(|op| &op.op.op) {
                    Some(RegisterOp::Write(v)) | Some(RegisterOp::Cas { to: v, .. }) => *v,
                    _ => unreachable!("only writes return WriteOk or CasOk"),
                };
                self.clients[client].last_seen.insert(key, written);
                self.checker.on_acknowledged(client as u64 + 1, seq);
            }
            _ => {}
        }
        match &ret {
            RegisterRet::CasNotFound | RegisterRet::CasMismatch => self.report.ops_failed += 1,
            _ => self.report.ops_ok += 1,
        }
        if let Some(op) = self.history[index].as_mut() {
            op.ret = Some((self.now, ret));
        }
    }

    /// A read at an older revision is kept for the history checker; a compaction is
    /// counted when it took effect (an error — already compacted — is a fine answer too).
    fn record_mvcc(&mut self, key: u64, mvcc: Mvcc, response: Response) {
        match mvcc {
            Mvcc::ReadAt(revision) => {
                self.report.coverage.revision_reads += 1;
                let result = response.result.map(|result| match result {
                    OpResponse::Range(range) => range.kvs.first().map(|kv| kv.value.clone()),
                    _ => None,
                });
                self.revision_reads.push(RevisionRead {
                    key,
                    revision,
                    served_at: response.revision,
                    result,
                });
            }
            Mvcc::Compact(_) => {
                if response.result == Ok(OpResponse::Compact) {
                    self.report.coverage.mvcc_compactions += 1;
                }
            }
            Mvcc::Latest => {}
        }
        self.report.ops_ok += 1;
    }

    fn finish_op(&mut self, client: usize) {
        let state = &mut self.clients[client];
        state.in_flight = None;
        state.done += 1;
        let think = self.rng.gen_range(0..=self.options.max_think_units);
        self.schedule(think, Event::ClientNext(client));
    }

    /// The bytes stored for value `n`: its digits, then padding whose length follows from
    /// `n` alone (so a compare-and-set can name any value), unless `n` was made too large.
    pub(crate) fn value_bytes(&self, n: u64) -> Bytes {
        let pad = if self.oversized.contains(&n) {
            self.options.max_request_bytes + (n % 500) as usize
        } else {
            let spread = self.options.max_value_bytes as u64 + 1;
            (n.wrapping_mul(2_654_435_761) % spread) as usize
        };
        let mut bytes = format!("{n}:").into_bytes();
        bytes.resize(bytes.len() + pad, b'.');
        Bytes::from(bytes)
    }

    fn parse_value(value: &Bytes) -> Result<u64, String> {
        let digits = value.split(|b| *b == b':').next().unwrap_or_default();
        std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("unparsable value of {} bytes", value.len()))
    }

    /// The KV operation that implements a register operation on one key.
    fn kv_op(&self, op: &ClientOp) -> Op {
        let key = key_bytes(op.key);
        if let Mvcc::Compact(revision) = op.mvcc {
            return Op::Compact(synod_kv::CompactRequest {
                revision,
                physical: false,
            });
        }
        match &op.op {
            RegisterOp::Read => Op::Range(range(key)),
            RegisterOp::Write(value) => Op::Put(put(key, self.value_bytes(*value))),
            RegisterOp::Cas { from, to } => Op::Txn(TxnRequest {
                compare: vec![Compare {
                    key: key.clone(),
                    range_end: Bytes::new(),
                    target: CompareTarget::Value(self.value_bytes(*from)),
                    result: CompareResult::Equal,
                }],
                success: vec![Op::Put(put(key.clone(), self.value_bytes(*to)))],
                failure: vec![Op::Range(range(key))],
            }),
        }
    }

    /// What a KV response means for the register operation that asked.
    fn register_ret(
        &self,
        op: &RegisterOp<u64>,
        response: &Response,
    ) -> Result<RegisterRet<u64>, String> {
        let result = response
            .result
            .as_ref()
            .map_err(|error| format!("error response: {error}"))?;
        match (op, result) {
            (RegisterOp::Read, OpResponse::Range(range)) => match range.kvs.first() {
                Some(kv) => Ok(RegisterRet::ReadOk(Some(Self::parse_value(&kv.value)?))),
                None => Ok(RegisterRet::ReadOk(None)),
            },
            (RegisterOp::Write(_), OpResponse::Put(_)) => Ok(RegisterRet::WriteOk),
            (RegisterOp::Cas { .. }, OpResponse::Txn(txn)) => {
                if txn.succeeded {
                    return Ok(RegisterRet::CasOk);
                }
                match txn.responses.first() {
                    Some(OpResponse::Range(range)) if range.kvs.is_empty() => {
                        Ok(RegisterRet::CasNotFound)
                    }
                    Some(OpResponse::Range(_)) => Ok(RegisterRet::CasMismatch),
                    other => Err(format!("unexpected txn failure response {other:?}")),
                }
            }
            (op, result) => Err(format!("response {result:?} does not answer {op:?}")),
        }
    }

    /// Serializable reads may be stale, but must return a value some client wrote.
    pub(crate) fn check_serializable_reads(&self) -> Option<Violation> {
        let written: std::collections::BTreeSet<u64> = self
            .history
            .iter()
            .flatten()
            .filter_map(|op| match &op.op.op {
                RegisterOp::Write(v) | RegisterOp::Cas { to: v, .. } => Some(*v),
                RegisterOp::Read => None,
            })
            .collect();
        self.serializable_reads
            .iter()
            .find(|(_, value)| value.is_some_and(|v| !written.contains(&v)))
            .map(|(key, value)| {
                Violation::NotLinearizable(format!(
                    "a serializable read of k{key} returned {value:?}, which nobody wrote"
                ))
            })
    }
}

fn key_bytes(key: u64) -> Bytes {
    Bytes::from(format!("k{key}"))
}

fn range(key: Bytes) -> RangeRequest {
    RangeRequest {
        key,
        range_end: Bytes::new(),
        limit: 0,
        count_only: false,
        keys_only: false,
        revision: 0,
    }
}

fn put(key: Bytes, value: Bytes) -> PutRequest {
    PutRequest {
        key,
        value,
        prev_kv: false,
        lease: 0,
        ignore_value: false,
        ignore_lease: false,
    }
}
