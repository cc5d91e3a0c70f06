//! The task that owns one replica's protocol core and state machine.
//!
//! Inputs arrive on channels (peer messages, client requests, storage completions) and
//! the logical clock follows the monotonic clock. After each batch of inputs the driver
//! drains the core's `Ready`: (1) the persist request goes to group commit — the core
//! itself holds back the replies that vouch for it until `on_persisted`; (2) messages go
//! to the peers' send queues, self-addressed ones straight back into `step`; (3) chosen
//! slots are applied in order and their proposers answered; (4) events drive reads,
//! snapshots and metrics.

use crate::metrics::Metrics;
use crate::sessions::{Outcome, Proposal, RuntimeImage, Sessions};
use crate::transport::PeerInput;
use crate::wire::Frame;
use crate::{Consistency, NodeStatus, ServerError};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use synod_core::{Committed, Event, Node, NodeId, PersistId, PersistRequest, ProposeError, Slot};
use synod_kv::StateMachine;
use synod_storage::{GroupCommit, SnapshotStore, SnapshotWriter, StorageError};
use tokio::sync::{mpsc, oneshot, watch};

/// A read to run against the state machine once it is safe to (or the error why not).
pub type ReadFn<S> = Box<dyn FnOnce(Result<&S, ServerError>) + Send>;

pub enum Request<S> {
    Propose {
        payload: Bytes,
        reply: oneshot::Sender<Result<Bytes, ServerError>>,
    },
    Read {
        consistency: Consistency,
        read: ReadFn<S>,
    },
    Status {
        reply: oneshot::Sender<NodeStatus>,
    },
}

/// Completions of work done off the driver task.
pub enum Control {
    Persisted {
        id: PersistId,
        result: Result<(), StorageError>,
        submitted: Instant,
    },
    SnapshotSaved {
        slot: Slot,
        result: Result<(), StorageError>,
    },
    WalCompacted {
        slot: Slot,
        result: Result<(), StorageError>,
    },
    SnapshotSent {
        peer: NodeId,
        result: Result<Slot, String>,
    },
}

struct ProposalWaiter {
    payload: Bytes,
    reply: oneshot::Sender<Result<Bytes, ServerError>>,
    deadline: Instant,
    /// When it last went to the core; None: (re)propose at the next chance.
    proposed_at: Option<Instant>,
}

struct ReadWaiter<S> {
    read: ReadFn<S>,
    deadline: Instant,
}

struct IncomingSnapshot {
    from: NodeId,
    slot: Slot,
    next_offset: u64,
    writer: SnapshotWriter,
}

/// Timing and sizing the driver needs (from `ServerConfig`).
pub struct DriverSettings {
    pub tick_interval: Duration,
    pub request_timeout: Duration,
    /// A proposal not applied within this long is proposed again (deduplicated).
    pub retry_after: Duration,
    pub snapshot_interval_slots: u64,
    pub snapshot_chunk_bytes: usize,
}

pub struct Channels<S> {
    pub requests: mpsc::Receiver<Request<S>>,
    pub peer_inputs: mpsc::Receiver<PeerInput>,
    pub control_tx: mpsc::UnboundedSender<Control>,
    pub control_rx: mpsc::UnboundedReceiver<Control>,
    pub stop: watch::Receiver<bool>,
    pub peers: HashMap<NodeId, mpsc::Sender<Frame>>,
}

/// How often deadlines and retries are checked.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(20);
/// Wait before asking again for a read index no leader could give.
const READ_RETRY_DELAY: Duration = Duration::from_millis(20);
/// Most inputs handled before the core's outputs are drained (commands arriving together
/// share a slot).
const INPUT_BATCH: usize = 256;

pub struct Driver<S: StateMachine> {
    id: NodeId,
    node: Node,
    state_machine: S,
    sessions: Sessions,
    applied_slot: Slot,
    settings: DriverSettings,
    metrics: Arc<Metrics>,
    group_commit: Arc<GroupCommit>,
    snapshots: Arc<SnapshotStore>,
    channels: Channels<S>,

    client_id: u64,
    next_seq: u64,
    proposals: BTreeMap<u64, ProposalWaiter>,
    next_read_id: u64,
    reads_awaiting_index: HashMap<u64, ReadWaiter<S>>,
    reads_awaiting_apply: Vec<(Slot, ReadWaiter<S>)>,
    reads_to_retry: Vec<(Instant, ReadWaiter<S>)>,

    clock_start: Instant,
    ticks_done: u64,
    last_maintenance: Instant,

    last_snapshot_slot: Slot,
    snapshot_in_progress: bool,
    wal_compaction_due: Option<Slot>,
    sending_snapshots: HashSet<NodeId>,
    incoming_snapshot: Option<IncomingSnapshot>,
    fatal: Option<String>,
}

impl<S: StateMachine> Driver<S> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: Node,
        state_machine: S,
        sessions: Sessions,
        applied_slot: Slot,
        settings: DriverSettings,
        metrics: Arc<Metrics>,
        group_commit: Arc<GroupCommit>,
        snapshots: Arc<SnapshotStore>,
        channels: Channels<S>,
    ) -> Driver<S> {
        let now = Instant::now();
        Driver {
            id: node.id(),
            node,
            state_machine,
            sessions,
            applied_slot,
            settings,
            metrics,
            group_commit,
            snapshots,
            channels,
            // A fresh random client id per process: sequence numbers restart at 1.
            client_id: rand::random::<u64>() | 1,
            next_seq: 1,
            proposals: BTreeMap::new(),
            next_read_id: 1,
            reads_awaiting_index: HashMap::new(),
            reads_awaiting_apply: Vec::new(),
            reads_to_retry: Vec::new(),
            clock_start: now,
            ticks_done: 0,
            last_maintenance: now,
            last_snapshot_slot: applied_slot,
            snapshot_in_progress: false,
            wal_compaction_due: None,
            sending_snapshots: HashSet::new(),
            incoming_snapshot: None,
            fatal: None,
        }
    }

    pub async fn run(mut self) -> Result<(), ServerError> {
        let mut ticker = tokio::time::interval(self.settings.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            node = self.id,
            applied_slot = self.applied_slot,
            "replica started"
        );
        loop {
            tokio::select! {
                biased;
                _ = self.channels.stop.changed() => break,
                Some(control) = self.channels.control_rx.recv() => self.on_control(control),
                Some(input) = self.channels.peer_inputs.recv() => self.on_peer_input(input),
                Some(request) = self.channels.requests.recv() => self.on_request(request),
                _ = ticker.tick() => {}
            }
            for _ in 0..INPUT_BATCH {
                match self.channels.peer_inputs.try_recv() {
                    Ok(input) => self.on_peer_input(input),
                    Err(_) => break,
                }
            }
            for _ in 0..INPUT_BATCH {
                match self.channels.requests.try_recv() {
                    Ok(request) => self.on_request(request),
                    Err(_) => break,
                }
            }
            self.catch_up_clock();
            self.maintenance(false);
            self.process_ready();
            if let Some(slot) = self.wal_compaction_due.take() {
                self.compact_wal(slot);
            }
            if let Some(reason) = self.fatal.take() {
                tracing::error!(node = self.id, %reason, "stopping the replica");
                self.shutdown(ServerError::Storage(reason.clone()));
                self.close().await;
                return Err(ServerError::Storage(reason));
            }
        }
        self.shutdown(ServerError::Stopped);
        self.close().await;
        Ok(())
    }

    fn shutdown(&mut self, error: ServerError) {
        for (_, waiter) in std::mem::take(&mut self.proposals) {
            let _ = waiter.reply.send(Err(error.clone()));
        }
        let reads = self
            .reads_awaiting_index
            .drain()
            .map(|(_, waiter)| waiter)
            .chain(
                self.reads_awaiting_apply
                    .drain(..)
                    .map(|(_, waiter)| waiter),
            )
            .chain(self.reads_to_retry.drain(..).map(|(_, waiter)| waiter))
            .collect::<Vec<_>>();
        for waiter in reads {
            (waiter.read)(Err(error.clone()));
        }
        self.channels.peers.clear();
    }

    /// Stops group commit (completing what is queued) off the async threads.
    async fn close(self) {
        let id = self.id;
        let group_commit = Arc::clone(&self.group_commit);
        drop(self);
        let _ = tokio::task::spawn_blocking(move || drop(group_commit)).await;
        tracing::info!(node = id, "replica stopped");
    }

    /// Ticks the core until its logical clock matches the monotonic clock, so a stalled
    /// task does not stretch its leases in real time.
    fn catch_up_clock(&mut self) {
        let tick_micros = self.settings.tick_interval.as_micros().max(1);
        let target = (self.clock_start.elapsed().as_micros() / tick_micros) as u64;
        let mut budget = 1000;
        while self.ticks_done < target && budget > 0 {
            self.node.tick();
            self.ticks_done += 1;
            budget -= 1;
        }
    }

    fn on_request(&mut self, request: Request<S>) {
        match request {
            Request::Propose { payload, reply } => {
                self.metrics.proposals.inc();
                let seq = self.next_seq;
                self.next_seq += 1;
                self.proposals.insert(
                    seq,
                    ProposalWaiter {
                        payload,
                        reply,
                        deadline: Instant::now() + self.settings.request_timeout,
                        proposed_at: None,
                    },
                );
                self.propose(seq);
            }
            Request::Read { consistency, read } => match consistency {
                Consistency::Serializable => {
                    self.metrics
                        .reads
                        .with_label_values(&["serializable"])
                        .inc();
                    read(Ok(&self.state_machine));
                }
                Consistency::Linearizable => {
                    let waiter = ReadWaiter {
                        read,
                        deadline: Instant::now() + self.settings.request_timeout,
                    };
                    self.ask_read_index(waiter);
                }
            },
            Request::Status { reply } => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let status = self.node.status();
        NodeStatus {
            node_id: self.id,
            role: status.role,
            leader: status.leader,
            promised: status.promised,
            commit_index: status.commit_index,
            applied_slot: self.applied_slot,
            last_slot: status.last_slot,
            snapshot_slot: self.last_snapshot_slot,
            phase1_runs: status.phase1_runs,
            wal_disk_bytes: self.group_commit.stats().disk_bytes,
            pending_proposals: self.proposals.len(),
        }
    }

    /// Hands proposal `seq` to the core (again, after a retry).
    fn propose(&mut self, seq: u64) {
        let completed_below = self.proposals.keys().next().copied().unwrap_or(seq);
        let Some(waiter) = self.proposals.get_mut(&seq) else {
            return;
        };
        let proposal = Proposal {
            client: self.client_id,
            seq,
            completed_below,
            payload: waiter.payload.clone(),
        };
        match self.node.propose(proposal.encode()) {
            Ok(_) => waiter.proposed_at = Some(Instant::now()),
            // Queue full: try again at the next maintenance pass.
            Err(ProposeError::Busy { .. }) => waiter.proposed_at = None,
            Err(error) => {
                tracing::debug!(node = self.id, %error, "proposal refused; will retry");
                waiter.proposed_at = None;
            }
        }
    }

    fn ask_read_index(&mut self, waiter: ReadWaiter<S>) {
        let request = self.next_read_id;
        self.next_read_id += 1;
        self.reads_awaiting_index.insert(request, waiter);
        self.node.read_index(request);
    }

    /// Deadlines and retries: proposals whose outcome is unknown are proposed again;
    /// failed read-index requests are asked again. `now` forces a pass.
    fn maintenance(&mut self, force: bool) {
        let now = Instant::now();
        if !force && now.duration_since(self.last_maintenance) < MAINTENANCE_INTERVAL {
            return;
        }
        self.last_maintenance = now;
        let timeout = ServerError::Timeout {
            after: self.settings.request_timeout,
        };
        let expired: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, waiter)| now >= waiter.deadline || waiter.reply.is_closed())
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            if let Some(waiter) = self.proposals.remove(&seq) {
                self.metrics.proposals_failed.inc();
                let _ = waiter.reply.send(Err(timeout.clone()));
            }
        }
        let due: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, waiter)| match waiter.proposed_at {
                None => true,
                Some(at) => now.duration_since(at) >= self.settings.retry_after,
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in due {
            if self
                .proposals
                .get(&seq)
                .is_some_and(|waiter| waiter.proposed_at.is_some())
            {
                self.metrics.proposal_retries.inc();
            }
            self.propose(seq);
        }

        let expired: Vec<u64> = self
            .reads_awaiting_index
            .iter()
            .filter(|(_, waiter)| now >= waiter.deadline)
            .map(|(request, _)| *request)
            .collect();
        for request in expired {
            if let Some(waiter) = self.reads_awaiting_index.remove(&request) {
                (waiter.read)(Err(timeout.clone()));
            }
        }
        let (expired, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_awaiting_apply)
            .into_iter()
            .partition(|(_, waiter)| now >= waiter.deadline);
        self.reads_awaiting_apply = waiting;
        for (_, waiter) in expired {
            (waiter.read)(Err(timeout.clone()));
        }
        let retries = std::mem::take(&mut self.reads_to_retry);
        for (retry_at, waiter) in retries {
            if now >= waiter.deadline {
                (waiter.read)(Err(timeout.clone()));
            } else if now >= retry_at {
                self.ask_read_index(waiter);
            } else {
                self.reads_to_retry.push((retry_at, waiter));
            }
        }
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Persisted {
                id,
                result,
                submitted,
            } => match result {
                Ok(()) => {
                    self.metrics
                        .fsync_seconds
                        .observe(submitted.elapsed().as_secs_f64());
                    self.node.on_persisted(id);
                }
                Err(error) => {
                    self.fatal = Some(format!(
                        "the write-ahead log failed to persist request {id}: {error}"
                    ));
                }
            },
            Control::SnapshotSaved { slot, result } => {
                self.snapshot_in_progress = false;
                match result {
                    Ok(()) => {
                        self.metrics.snapshots_taken.inc();
                        self.last_snapshot_slot = self.last_snapshot_slot.max(slot);
                        tracing::info!(node = self.id, slot, "snapshot saved; compacting the log");
                        self.node.compact(slot);
                        self.wal_compaction_due = Some(slot);
                    }
                    Err(error) => {
                        // Not fatal: the log keeps growing until a later snapshot works.
                        tracing::error!(node = self.id, slot, %error, "saving a snapshot failed");
                        self.last_snapshot_slot = self.last_snapshot_slot.max(slot);
                    }
                }
            }
            Control::WalCompacted { slot, result } => match result {
                Ok(()) => tracing::debug!(node = self.id, slot, "write-ahead log compacted"),
                Err(error) => {
                    tracing::error!(node = self.id, slot, %error, "compacting the write-ahead log failed")
                }
            },
            Control::SnapshotSent { peer, result } => {
                self.sending_snapshots.remove(&peer);
                match result {
                    Ok(slot) => {
                        self.metrics.snapshots_sent.inc();
                        tracing::info!(node = self.id, peer, slot, "snapshot sent to peer");
                    }
                    Err(error) => {
                        tracing::warn!(node = self.id, peer, %error, "sending a snapshot failed")
                    }
                }
            }
        }
    }

    fn on_peer_input(&mut self, input: PeerInput) {
        match input {
            PeerInput::Message(envelope) => {
                tracing::trace!(
                    node = self.id,
                    from = envelope.from,
                    kind = envelope.message.kind(),
                    "message"
                );
                if let Err(error) = self.node.step(envelope) {
                    tracing::warn!(node = self.id, %error, "refused peer message");
                }
            }
            PeerInput::SnapshotChunk {
                from,
                slot,
                offset,
                total_bytes,
                data,
            } => self.on_snapshot_chunk(from, slot, offset, total_bytes, data),
        }
    }

    fn on_snapshot_chunk(
        &mut self,
        from: NodeId,
        slot: Slot,
        offset: u64,
        total_bytes: u64,
        data: Bytes,
    ) {
        if offset == 0 {
            self.incoming_snapshot = None;
            if slot <= self.applied_slot || slot <= self.node.status().commit_index {
                return;
            }
            match self.snapshots.writer(slot) {
                Ok(writer) => {
                    tracing::info!(
                        node = self.id,
                        peer = from,
                        slot,
                        total_bytes,
                        "receiving a snapshot"
                    );
                    self.incoming_snapshot = Some(IncomingSnapshot {
                        from,
                        slot,
                        next_offset: 0,
                        writer,
                    });
                }
                Err(error) => {
                    tracing::error!(node = self.id, slot, %error, "cannot store an incoming snapshot");
                    return;
                }
            }
        }
        let Some(incoming) = self.incoming_snapshot.as_mut() else {
            return;
        };
        if incoming.from != from || incoming.slot != slot || incoming.next_offset != offset {
            tracing::warn!(
                node = self.id,
                peer = from,
                slot,
                offset,
                "snapshot chunk out of sequence; dropping the transfer"
            );
            self.incoming_snapshot = None;
            return;
        }
        if let Err(error) = incoming.writer.write_chunk(&data) {
            tracing::error!(node = self.id, slot, %error, "writing a snapshot chunk failed");
            self.incoming_snapshot = None;
            return;
        }
        incoming.next_offset += data.len() as u64;
        if incoming.next_offset < total_bytes {
            return;
        }
        let Some(incoming) = self.incoming_snapshot.take() else {
            return;
        };
        if let Err(error) = incoming.writer.finish() {
            tracing::error!(node = self.id, slot, %error, "a received snapshot failed verification");
            return;
        }
        if let Err(error) = self.install_received_snapshot(slot) {
            tracing::error!(node = self.id, slot, %error, "installing a received snapshot failed");
        }
    }

    fn install_received_snapshot(&mut self, slot: Slot) -> Result<(), String> {
        if slot <= self.applied_slot || slot <= self.node.status().commit_index {
            return Ok(());
        }
        let (stored_slot, data) = self
            .snapshots
            .latest()
            .map_err(|error| error.to_string())?
            .ok_or("the snapshot vanished after it was written")?;
        if stored_slot != slot {
            return Err(format!(
                "expected the newest snapshot to be slot {slot}, found slot {stored_slot}"
            ));
        }
        let image = RuntimeImage::decode(&data)?;
        if image.applied_slot != slot {
            return Err(format!(
                "snapshot file for slot {slot} holds an image of slot {}",
                image.applied_slot
            ));
        }
        self.state_machine
            .restore(&image.state_machine)
            .map_err(|error| error.to_string())?;
        self.sessions = image.sessions();
        self.applied_slot = slot;
        self.last_snapshot_slot = self.last_snapshot_slot.max(slot);
        self.node.install_snapshot(slot);
        self.wal_compaction_due = Some(slot);
        self.metrics.snapshots_installed.inc();
        tracing::info!(node = self.id, slot, "installed a snapshot from a peer");
        self.serve_applied_reads();
        Ok(())
    }

    fn process_ready(&mut self) {
        // Bounded: each round consumes what the previous one produced.
        for _ in 0..64 {
            if !self.node.has_ready() {
                break;
            }
            let ready = self.node.take_ready();
            if let Some(request) = ready.persist {
                self.submit_persist(request);
            }
            let mut loopback = Vec::new();
            for envelope in ready.messages {
                if envelope.to == self.id {
                    loopback.push(envelope);
                    continue;
                }
                let Some(queue) = self.channels.peers.get(&envelope.to) else {
                    continue;
                };
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    queue.try_send(Frame::Message(envelope))
                {
                    self.metrics.peer_messages_dropped.inc();
                }
            }
            self.apply(ready.committed);
            for event in ready.events {
                self.on_event(event);
            }
            for envelope in loopback {
                if let Err(error) = self.node.step(envelope) {
                    tracing::error!(node = self.id, %error, "own message refused");
                }
            }
        }
        let status = self.node.status();
        self.metrics
            .current_ballot
            .set(status.promised.round as i64);
        self.metrics.commit_index.set(status.commit_index as i64);
        self.metrics.applied_slot.set(self.applied_slot as i64);
        self.metrics
            .is_leader
            .set(i64::from(status.role == synod_core::Role::Leader));
        self.maybe_snapshot();
    }

    fn submit_persist(&mut self, request: PersistRequest) {
        let control = self.channels.control_tx.clone();
        let id = request.id;
        let submitted = Instant::now();
        self.group_commit.submit(
            request,
            Box::new(move |result| {
                let _ = control.send(Control::Persisted {
                    id,
                    result,
                    submitted,
                });
            }),
        );
    }

    fn apply(&mut self, committed: Vec<Committed>) {
        if committed.is_empty() {
            return;
        }
        for Committed { slot, value } in committed {
            if slot <= self.applied_slot {
                continue;
            }
            for command in value.commands() {
                let proposal = match Proposal::decode(command) {
                    Ok(proposal) => proposal,
                    Err(error) => {
                        tracing::error!(node = self.id, slot, %error, "skipping a log command that is not a runtime proposal");
                        continue;
                    }
                };
                let response = match self.sessions.check(&proposal, slot) {
                    Outcome::Apply => {
                        let response = self.state_machine.apply(slot, &proposal.payload);
                        self.sessions
                            .record(proposal.client, proposal.seq, response.clone());
                        self.metrics.commands_applied.inc();
                        Some(response)
                    }
                    Outcome::Duplicate(response) => Some(response),
                    Outcome::Stale => None,
                };
                if proposal.client == self.client_id {
                    if let (Some(response), Some(waiter)) =
                        (response, self.proposals.remove(&proposal.seq))
                    {
                        let _ = waiter.reply.send(Ok(response));
                    }
                }
            }
            self.applied_slot = slot;
            self.metrics.commits.inc();
        }
        self.serve_applied_reads();
    }

    fn serve_applied_reads(&mut self) {
        if self.reads_awaiting_apply.is_empty() {
            return;
        }
        let applied = self.applied_slot;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads_awaiting_apply)
            .into_iter()
            .partition(|(read_index, _)| *read_index <= applied);
        self.reads_awaiting_apply = waiting;
        for (_, waiter) in ready {
            self.metrics
                .reads
                .with_label_values(&["linearizable"])
                .inc();
            (waiter.read)(Ok(&self.state_machine));
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::ProposalAssigned { .. } => {}
            Event::Phase1Started { ballot } => {
                self.metrics.phase1_runs.inc();
                tracing::debug!(node = self.id, %ballot, "phase 1 started");
            }
            Event::BecameLeader {
                ballot,
                reproposed_slots,
            } => {
                tracing::info!(node = self.id, %ballot, reproposed_slots, "became leader");
            }
            Event::SteppedDown { ballot } => {
                tracing::info!(node = self.id, %ballot, "stepped down");
            }
            Event::LeaderChanged { leader } => {
                self.metrics.leader_changes.inc();
                tracing::info!(node = self.id, leader = ?leader, "leader changed");
                if leader.is_some() {
                    // Commands forwarded to a leader that is gone may be lost: propose
                    // every unanswered one again (sessions make copies harmless).
                    for waiter in self.proposals.values_mut() {
                        waiter.proposed_at = None;
                    }
                    self.maintenance(true);
                }
            }
            Event::SnapshotNeeded { peer, slot } => self.send_snapshot(peer, slot),
            Event::ReadReady {
                request,
                read_index,
                ..
            } => {
                if let Some(waiter) = self.reads_awaiting_index.remove(&request) {
                    self.reads_awaiting_apply.push((read_index, waiter));
                    self.serve_applied_reads();
                }
            }
            Event::ReadFailed { request } => {
                if let Some(waiter) = self.reads_awaiting_index.remove(&request) {
                    self.reads_to_retry
                        .push((Instant::now() + READ_RETRY_DELAY, waiter));
                }
            }
        }
    }

    fn maybe_snapshot(&mut self) {
        if self.snapshot_in_progress
            || self.applied_slot < self.last_snapshot_slot + self.settings.snapshot_interval_slots
        {
            return;
        }
        let slot = self.applied_slot;
        let image = RuntimeImage::new(slot, &self.sessions, self.state_machine.snapshot()).encode();
        self.snapshot_in_progress = true;
        let store = Arc::clone(&self.snapshots);
        let control = self.channels.control_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = store.save(slot, &image);
            let _ = control.send(Control::SnapshotSaved { slot, result });
        });
    }

    fn compact_wal(&mut self, slot: Slot) {
        let group_commit = Arc::clone(&self.group_commit);
        let control = self.channels.control_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = group_commit.compact(slot);
            let _ = control.send(Control::WalCompacted { slot, result });
        });
    }

    fn send_snapshot(&mut self, peer: NodeId, needed: Slot) {
        if self.sending_snapshots.contains(&peer) {
            return;
        }
        let Some(queue) = self.channels.peers.get(&peer).cloned() else {
            return;
        };
        let slot = self.last_snapshot_slot;
        if slot < needed || slot == 0 {
            tracing::warn!(
                node = self.id,
                peer,
                needed,
                have = slot,
                "peer needs a snapshot newer than ours"
            );
            return;
        }
        self.sending_snapshots.insert(peer);
        tracing::info!(
            node = self.id,
            peer,
            slot,
            "streaming a snapshot to a lagging peer"
        );
        let store = Arc::clone(&self.snapshots);
        let chunk_bytes = self.settings.snapshot_chunk_bytes;
        let control = self.channels.control_tx.clone();
        tokio::spawn(async move {
            let result = stream_snapshot(store, slot, chunk_bytes, queue).await;
            let _ = control.send(Control::SnapshotSent { peer, result });
        });
    }
}

/// Reads the snapshot file chunk by chunk (off the async threads) into the peer's queue.
async fn stream_snapshot(
    store: Arc<SnapshotStore>,
    slot: Slot,
    chunk_bytes: usize,
    queue: mpsc::Sender<Frame>,
) -> Result<Slot, String> {
    let reader = tokio::task::spawn_blocking(move || store.reader(slot, chunk_bytes))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
    let total_bytes = reader.total_bytes();
    let mut reader = Some(reader);
    let mut offset = 0u64;
    loop {
        let mut current = reader.take().ok_or("snapshot reader lost")?;
        let (current, chunk) = tokio::task::spawn_blocking(move || {
            let chunk = current.next();
            (current, chunk)
        })
        .await
        .map_err(|error| error.to_string())?;
        reader = Some(current);
        let data = match chunk {
            None => break,
            Some(Ok(data)) => Bytes::from(data),
            Some(Err(error)) => return Err(error.to_string()),
        };
        let length = data.len() as u64;
        let frame = Frame::SnapshotChunk {
            slot,
            offset,
            total_bytes,
            data,
        };
        queue
            .send_timeout(frame, Duration::from_secs(10))
            .await
            .map_err(|_| "the peer's queue stayed full or closed".to_string())?;
        offset += length;
    }
    if offset != total_bytes {
        return Err(format!(
            "snapshot reader yielded {offset} of {total_bytes} bytes"
        ));
    }
    Ok(slot)
}
