//! Leases in the simulation: every node runs the server's [`Lessor`] over its own replica's
//! store — fed after each batch of outputs as the server's observer feeds it, asked every
//! tick (as the server's lessor pass is every heartbeat) for a promotion or expiries to
//! propose while its replica holds the leader lease — and lease clients grant leases,
//! attach keys, keep them alive at whichever node decides (a follower forwards; here the
//! client tries the nodes in turn), stop, revoke, or let them expire, through crashes,
//! pauses, partitions, clock drift and leader changes.
//!
//! At the end the chosen log is replayed into a lease model independent of the store
//! ([`crate::checks`]): every replica must hold exactly the leases and lease keys the model
//! holds (no key outlives its revoked or expired lease), and no expiry that took effect may
//! have been chosen sooner than `TTL × (1 − drift margin)` after a keep-alive of that lease
//! was acknowledged, or after its grant was sent.
//!
//! Lease clients and lessors draw from an RNG of their own and exist only when the options
//! ask for lease clients, so a run without them is exactly the same seed's run as before.

use std::collections::BTreeMap;

use rand::Rng as _;
use synod_core::NodeId;
use synod_kv::{
    Command, LeaseGrantRequest, Lessor, Op, OpResponse, PutRequest, Response, StateMachine as _,
};
use synod_replica::{Nanos, RequestId};

use crate::cluster::{Event, Simulation, NANOS_PER_UNIT, TICK_UNITS};
use crate::options::{LeaseBug, LEASE_TICKS};

/// One unit of a simulated lease's TTL: ten ticks (a TTL of 2–6 units is 2–6 election
/// timeouts).
pub(crate) const TTL_UNIT_NANOS: Nanos = 10 * TICK_UNITS * NANOS_PER_UNIT;

/// Lease lifecycles per client.
const CYCLES: u32 = 3;

/// What a lease client is doing.
#[derive(Clone, Debug)]
enum Phase {
    /// Between leases.
    Idle,
    /// A grant sent as `request`.
    Granting {
        id: i64,
        ttl: i64,
        request: RequestId,
        since: u64,
    },
    /// Holding lease `id`: keys put so far, keep-alives until `keep_until` (real time),
    /// then revoke or let it expire.
    Holding {
        id: i64,
        ttl: i64,
        keys: u32,
        keep_until: u64,
        revoke: bool,
        last_keep_alive: u64,
    },
    Done,
}

/// One simulated lease client.
pub(crate) struct LeaseClient {
    phase: Phase,
    cycles: u32,
}

/// Each node's lessor and the life it belongs to.
pub(crate) struct NodeLessor {
    lessor: Lessor,
    epoch: u64,
    fed: u64,
}

/// What the lease clients saw, for the checker: per lease, its TTL and the real times that
/// bound its deadline from below (the grant's sending, every acknowledged keep-alive).
#[derive(Default)]
pub(crate) struct LeaseLog {
    pub alive_since: BTreeMap<i64, (i64, u64)>,
    /// The real time each slot was first applied anywhere (a bound above its choosing).
    pub applied_at: BTreeMap<synod_core::Slot, u64>,
}

impl LeaseLog {
    fn note(&mut self, id: i64, ttl: i64, at: u64) {
        let entry = self.alive_since.entry(id).or_insert((ttl, at));
        entry.1 = entry.1.max(at);
    }
}

impl Simulation {
    /// Starts the lease clients the options ask for.
    pub(crate) fn start_lease_clients(&mut self) {
        for index in 0..self.options.lease_clients {
            self.lease_clients.push(LeaseClient {
                phase: Phase::Idle,
                cycles: 0,
            });
            let start = self
                .lease_rng
                .gen_range(0..=self.options.max_start_units * 4);
            self.schedule(start, Event::LeaseStep(index));
        }
    }

    /// Whether every lease client finished (the run may end).
    pub(crate) fn lease_clients_done(&self) -> bool {
        self.lease_clients
            .iter()
            .all(|client| matches!(client.phase, Phase::Done))
    }

    fn lease_nodes_in_random_order(&mut self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.is_up() && node.paused_until.is_none())
            .map(|(id, _)| *id)
            .collect();
        for i in (1..ids.len()).rev() {
            let j = self.lease_rng.gen_range(0..=i);
            ids.swap(i, j);
        }
        ids
    }

    /// Proposes `op` at `node` for a lease client (or the lessor: `client` None).
    fn lease_propose(&mut self, node: NodeId, op: Op, client: Option<usize>) -> Option<RequestId> {
        let request = self.next_request;
        self.next_request += 1;
        let payload = Command::unsessioned(op).encode();
        let taken = self.with_replica(node, |replica, now| replica.propose(now, request, payload));
        if !taken {
            return None;
        }
        self.lease_requests.insert(request, client);
        Some(request)
    }

    /// A lease client's periodic step.
    pub(crate) fn lease_step(&mut self, index: usize) {
        let end = (self.options.fault_ticks + self.options.liveness_ticks / 2) * TICK_UNITS;
        let now = self.now;
        let phase = self.lease_clients[index].phase.clone();
        let next = match phase {
            Phase::Done => return,
            Phase::Idle if self.lease_clients[index].cycles >= CYCLES || now >= end => Phase::Done,
            Phase::Idle => {
                let nodes = self.lease_nodes_in_random_order();
                let id = self.lease_rng.gen_range(1..i64::MAX);
                let ttl = self.lease_rng.gen_range(2..=6);
                self.lease_log.note(id, ttl, now);
                match nodes.first() {
                    Some(&node) => {
                        match self.lease_propose(
                            node,
                            Op::LeaseGrant(LeaseGrantRequest { id, ttl }),
                            Some(index),
                        ) {
                            Some(request) => Phase::Granting {
                                id,
                                ttl,
                                request,
                                since: now,
                            },
                            None => Phase::Idle,
                        }
                    }
                    None => Phase::Idle,
                }
            }
            Phase::Granting { since, .. } if now > since + 4 * LEASE_TICKS * TICK_UNITS => {
                // No answer (its node crashed or the request timed out): start over.
                self.lease_clients[index].cycles += 1;
                Phase::Idle
            }
            granting @ Phase::Granting { .. } => granting,
            Phase::Holding {
                id,
                ttl,
                keys,
                keep_until,
                revoke,
                last_keep_alive,
            } => self.hold(index, id, ttl, keys, keep_until, revoke, last_keep_alive),
        };
        self.lease_clients[index].phase = next;
        let gap = self.lease_rng.gen_range(1..=3) * TICK_UNITS;
        let until = (self.options.fault_ticks + self.options.liveness_ticks) * TICK_UNITS;
        if self.now + gap < until && !matches!(self.lease_clients[index].phase, Phase::Done) {
            self.schedule(gap, Event::LeaseStep(index));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        index: usize,
        id: i64,
        ttl: i64,
        keys: u32,
        keep_until: u64,
        revoke: bool,
        last_keep_alive: u64,
    ) -> Phase {
        let now = self.now;
        let nodes = self.lease_nodes_in_random_order();
        let Some(&node) = nodes.first() else {
            return Phase::Holding {
                id,
                ttl,
                keys,
                keep_until,
                revoke,
                last_keep_alive,
            };
        };
        if keys < 2 && self.lease_rng.gen_bool(0.5) {
            let put = Op::Put(PutRequest {
                key: format!("lease/{index}/{id}/{keys}").into(),
                value: bytes::Bytes::from_static(b"held"),
                lease: id,
                ..PutRequest::default()
            });
            self.lease_propose(node, put, None);
            return Phase::Holding {
                id,
                ttl,
                keys: keys + 1,
                keep_until,
                revoke,
                last_keep_alive,
            };
        }
        if now >= keep_until {
            if revoke {
                self.lease_propose(node, Op::LeaseRevoke(id), None);
                self.report.coverage.lease_revokes += 1;
            }
            self.lease_clients[index].cycles += 1;
            return Phase::Idle;
        }
        // A keep-alive every third of the TTL, at the node whose lessor decides.
        let ttl_units = ttl as u64 * TTL_UNIT_NANOS / NANOS_PER_UNIT;
        if now < last_keep_alive + ttl_units / 3 {
            return Phase::Holding {
                id,
                ttl,
                keys,
                keep_until,
                revoke,
                last_keep_alive,
            };
        }
        for node in nodes {
            match self.keep_alive_at(node, id) {
                Some(Ok(_)) => {
                    self.lease_log.note(id, ttl, now);
                    self.report.coverage.lease_keep_alives += 1;
                    return Phase::Holding {
                        id,
                        ttl,
                        keys,
                        keep_until,
                        revoke,
                        last_keep_alive: now,
                    };
                }
                // Gone (expired while the client could not reach a decider): next lease.
                Some(Err(synod_kv::RenewError::NotFound)) => {
                    self.lease_clients[index].cycles += 1;
                    return Phase::Idle;
                }
                _ => {}
            }
        }
        Phase::Holding {
            id,
            ttl,
            keys,
            keep_until,
            revoke,
            last_keep_alive,
        }
    }

    /// A keep-alive handled by `node` as the server's lease service handles it: renewed by
    /// its lessor, acknowledged only if its replica holds the leader lease at that moment.
    /// None: the node is down.
    fn keep_alive_at(
        &mut self,
        node: NodeId,
        id: i64,
    ) -> Option<Result<i64, synod_kv::RenewError>> {
        let bug = self.options.lease_bug;
        let sim_node = self.nodes.get_mut(&node)?;
        let now = sim_node.clock(self.now);
        let epoch = sim_node.epoch;
        let replica = sim_node.replica.as_mut()?;
        let lease = replica.leader_lease(now);
        self.dirty.insert(node);
        let lessors = self.lessors.get_mut(&node)?;
        if lessors.epoch != epoch {
            return None;
        }
        let store = replica.state_machine();
        Some(match lease {
            None => Err(synod_kv::RenewError::NotPrimary),
            Some(_) if bug == Some(LeaseBug::AckWithoutRenew) => {
                if lessors.lessor.primary() == Some(store.lease_epoch()) {
                    store.lease_ttl(id).ok_or(synod_kv::RenewError::NotFound)
                } else {
                    Err(synod_kv::RenewError::NotPrimary)
                }
            }
            Some(_) => lessors.lessor.renew(now, id, store),
        })
    }

    /// Hands node `id`'s lessor the store's new state (as the server's observer does).
    pub(crate) fn feed_lessor(&mut self, id: NodeId) {
        if self.options.lease_clients == 0 {
            return;
        }
        let node = &self.nodes[&id];
        let now = node.clock(self.now);
        let epoch = node.epoch;
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        let store = replica.state_machine();
        let applied = store.applied();
        let extension = LEASE_TICKS * TICK_UNITS * NANOS_PER_UNIT;
        let lessors = self.lessors.entry(id).or_insert_with(|| NodeLessor {
            lessor: Lessor::with_ttl_unit(id, extension, TTL_UNIT_NANOS),
            epoch,
            fed: u64::MAX,
        });
        if lessors.epoch != epoch {
            // A new life of the node: a new lessor, as the server starts one.
            *lessors = NodeLessor {
                lessor: Lessor::with_ttl_unit(id, extension, TTL_UNIT_NANOS),
                epoch,
                fed: u64::MAX,
            };
        }
        if lessors.fed != applied {
            lessors.fed = applied;
            lessors.lessor.on_applied(now, store);
        }
    }

    /// Node `id`'s lessor pass (the server runs one every heartbeat): while its replica
    /// holds the leader lease, propose a promotion or the expiries due.
    pub(crate) fn lessor_pass(&mut self, id: NodeId) {
        if self.options.lease_clients == 0 {
            return;
        }
        let node = self.nodes.get_mut(&id).expect("known node");
        if node.paused_until.is_some() {
            return;
        }
        let now = node.clock(self.now);
        let epoch = node.epoch;
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        let Some(ballot) = replica.leader_lease(now) else {
            return;
        };
        let Some(lessors) = self.lessors.get_mut(&id).filter(|l| l.epoch == epoch) else {
            return;
        };
        let store = replica.state_machine();
        let decided = match lessors.lessor.promotion(now, store, ballot) {
            Some(promotion) => vec![promotion],
            None => lessors.lessor.expired(now, 100),
        };
        for op in decided {
            if matches!(op, Op::LeasePromote(_)) {
                self.report.coverage.lease_promotions += 1;
            }
            self.lease_propose(id, op, None);
        }
    }

    /// A reply to a lease client's or a lessor's proposal; true if it was one.
    pub(crate) fn on_lease_reply(
        &mut self,
        request: RequestId,
        result: &Result<bytes::Bytes, synod_replica::RequestError>,
    ) -> bool {
        let Some(client) = self.lease_requests.remove(&request) else {
            return false;
        };
        let Some(index) = client else {
            return true;
        };
        let Phase::Granting {
            id,
            ttl,
            request: granting,
            ..
        } = self.lease_clients[index].phase
        else {
            return true;
        };
        if granting != request {
            return true;
        }
        let granted = result
            .as_ref()
            .ok()
            .and_then(|bytes| Response::decode(bytes).ok())
            .is_some_and(|response| matches!(response.result, Ok(OpResponse::LeaseGrant { .. })));
        self.lease_clients[index].phase = if granted {
            self.report.coverage.lease_grants += 1;
            let lifetime =
                self.lease_rng.gen_range(0..=4) * ttl as u64 * TTL_UNIT_NANOS / NANOS_PER_UNIT;
            Phase::Holding {
                id,
                ttl,
                keys: 0,
                keep_until: self.now + lifetime,
                revoke: self.lease_rng.gen_bool(0.3),
                last_keep_alive: self.now,
            }
        } else {
            self.lease_clients[index].cycles += 1;
            Phase::Idle
        };
        true
    }
}
