//! The task that runs one [`Replica`]: I/O glue only.
//!
//! Everything a replica decides — proposals and their retries, sessions, reads, the
//! snapshot policy, catch-up, the clock — lives in `synod-replica`, the code the
//! simulator runs too. This task feeds it inputs stamped with the monotonic clock
//! (client requests, peer messages, storage completions, timer ticks) and carries out
//! its [`ReplicaReady`]: persist requests go to group commit, messages to the peers'
//! send queues, replies and reads back to the clients, snapshot encoding and saving,
//! snapshot streams and log compaction to blocking threads, so none of that work stalls
//! the replica (and with it heartbeats and leases).

use crate::metrics::Metrics;
use crate::transport::PeerInput;
use crate::wire::Frame;
use crate::{Consistency, MoveLeaderError, NodeStatus, ServerError};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use synod_core::{NodeId, PersistId, PersistRequest, Slot};
use synod_kv::StateMachine;
use synod_replica::{
    Nanos, ReadHow, Replica, ReplicaEvent, ReplicaReady, ReplicaStats, RequestError, RequestId,
    Restored,
};
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
    /// Runs with the leadership ballot if the replica is the leader and holds the leader
    /// lease at this moment (`Replica::leader_lease`), and the state machine.
    WithLeaderLease {
        run: LeaderLeaseFn<S>,
    },
    /// Hand the leadership to `target` (see `Replica::transfer_leadership`).
    MoveLeader {
        target: NodeId,
        reply: oneshot::Sender<Result<(), MoveLeaderError>>,
    },
}

/// See [`Request::WithLeaderLease`].
pub type LeaderLeaseFn<S> = Box<dyn FnOnce(Option<synod_core::Ballot>, &S) + Send>;

/// Completions of work done off the driver task.
pub enum Control<S> {
    Persisted {
        id: PersistId,
        result: Result<(), StorageError>,
        submitted: Option<Instant>,
    },
    SnapshotSaved {
        slot: Slot,
        result: Result<(), String>,
    },
    WalCompacted {
        slot: Slot,
        result: Result<(), StorageError>,
        /// How long the group-commit thread spent on the checkpoint (writing nothing else).
        checkpoint: Duration,
        /// How long deleting the superseded segments took (on another thread).
        removal: Duration,
        segments: usize,
    },
    SnapshotSent {
        peer: NodeId,
        result: Result<Slot, String>,
    },
    /// A peer's snapshot was written, verified and decoded off the driver task.
    SnapshotReceived {
        from: NodeId,
        result: Result<Restored<S>, String>,
    },
}

/// Timing the driver needs beside the replica's own (from `ServerConfig`).
pub struct DriverSettings {
    pub tick_interval: Duration,
    pub snapshot_chunk_bytes: usize,
}

pub struct Channels<S> {
    pub requests: mpsc::Receiver<Request<S>>,
    pub peer_inputs: mpsc::Receiver<PeerInput>,
    pub control_tx: mpsc::UnboundedSender<Control<S>>,
    pub control_rx: mpsc::UnboundedReceiver<Control<S>>,
    pub stop: watch::Receiver<bool>,
    pub peers: HashMap<NodeId, mpsc::Sender<Frame>>,
    /// Called after commands were applied (see `Server::start_observed`).
    pub observer: Option<crate::server::Observer<S>>,
}

/// Most inputs handled before the replica's outputs are drained (commands arriving
/// together share a slot).
const INPUT_BATCH: usize = 256;
/// Rounds of held persists (`Driver::persist`) one pass of the loop writes before handing
/// any still held to the group-commit thread.
const HELD_PERSIST_ROUNDS: usize = 4;

/// A snapshot being received from a peer: chunks go to a writer thread in order.
struct IncomingSnapshot {
    from: NodeId,
    slot: Slot,
    next_offset: u64,
    chunks: std::sync::mpsc::Sender<Bytes>,
}

pub struct Driver<S: StateMachine> {
    id: NodeId,
    replica: Replica<S>,
    settings: DriverSettings,
    metrics: Arc<Metrics>,
    group_commit: Arc<GroupCommit>,
    snapshots: Arc<SnapshotStore>,
    channels: Channels<S>,
    /// The origin of the replica's clock.
    clock_origin: Instant,
    next_request: RequestId,
    /// Waiting proposals, with when the driver took each off its queue.
    proposals: HashMap<RequestId, (oneshot::Sender<Result<Bytes, ServerError>>, Instant)>,
    reads: HashMap<RequestId, ReadFn<S>>,
    /// MoveLeader requests waiting for their transfer to end: (target, reply).
    transfers: Vec<(NodeId, oneshot::Sender<Result<(), MoveLeaderError>>)>,
    incoming_snapshot: Option<IncomingSnapshot>,
    stats: ReplicaStats,
    fatal: Option<String>,
    /// The applied slot the observer last saw.
    observed: Option<Slot>,
    /// Persist requests handed to the group-commit thread whose completion this task has
    /// not handled yet. Only at zero may it write on its own thread (`persist`): the
    /// replica takes a completion as "this and every earlier request is durable".
    persists_in_flight: usize,
    /// Persist requests this task writes itself (`write_held_persists`), later, instead
    /// of waking the group-commit thread and being woken by it: a leader's requests while
    /// one command is all it has in flight (`carries_the_only_command`), after one yield
    /// so that the Accepts of this round leave first; or commit marks alone, with the
    /// next write or at the next tick (`persist_now`). Every later request joins them, so
    /// none overtakes another.
    held_persists: Vec<PersistRequest>,
}

impl<S: StateMachine> Driver<S> {
    pub fn new(
        replica: Replica<S>,
        clock_origin: Instant,
        settings: DriverSettings,
        metrics: Arc<Metrics>,
        group_commit: Arc<GroupCommit>,
        snapshots: Arc<SnapshotStore>,
        channels: Channels<S>,
    ) -> Driver<S> {
        Driver {
            id: replica.id(),
            replica,
            settings,
            metrics,
            group_commit,
            snapshots,
            channels,
            clock_origin,
            next_request: 1,
            proposals: HashMap::new(),
            reads: HashMap::new(),
            transfers: Vec::new(),
            incoming_snapshot: None,
            stats: ReplicaStats::default(),
            fatal: None,
            observed: None,
            persists_in_flight: 0,
            held_persists: Vec::new(),
        }
    }

    fn now(&self) -> Nanos {
        self.clock_origin.elapsed().as_nanos() as Nanos
    }

    pub async fn run(mut self) -> Result<(), ServerError> {
        let mut ticker = tokio::time::interval(self.settings.tick_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(
            node = self.id,
            applied_slot = self.replica.status().applied_slot,
            "replica started"
        );
        loop {
            tokio::select! {
                biased;
                _ = self.channels.stop.changed() => break,
                Some(control) = self.channels.control_rx.recv() => self.on_control(control),
                Some(input) = self.channels.peer_inputs.recv() => self.on_peer_input(input),
                Some(request) = self.channels.requests.recv() => self.on_request(request),
                _ = ticker.tick() => {
                    // Commit marks held since the last write go now (`persist_now`).
                    self.write_held_persists();
                    let now = self.now();
                    self.replica.tick(now);
                }
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
            self.process_ready();
            for _ in 0..HELD_PERSIST_ROUNDS {
                if self.held_persists.is_empty() || self.holding_marks_only() {
                    break;
                }
                // The peer writers this round woke run first and put the Accepts on the
                // wire; the followers' fdatasyncs then run beside this one.
                tokio::task::yield_now().await;
                self.write_held_persists();
                self.process_ready();
            }
            if self.holding_marks_only() && self.replica.node().holds_replies() {
                // A reply waits on a held mark (a HeartbeatAck is held on the last
                // request issued before it): the marks go now, and so does the reply.
                self.write_held_persists();
                self.process_ready();
            }
            if !self.held_persists.is_empty() && !self.holding_marks_only() {
                for request in std::mem::take(&mut self.held_persists) {
                    self.submit_persist(request);
                }
            }
            if let Some(reason) = self.fatal.take() {
                tracing::error!(node = self.id, %reason, "stopping the replica");
                self.shutdown();
                self.close().await;
                return Err(ServerError::Storage(reason));
            }
        }
        self.shutdown();
        self.close().await;
        Ok(())
    }

    /// Every waiting request fails with `Stopped`; held commit marks are written.
    fn shutdown(&mut self) {
        if self.fatal.is_none() {
            self.write_held_persists();
        }
        self.replica.shut_down();
        let ready = self.replica.take_ready();
        self.answer(&ready);
        for (_, (reply, _)) in self.proposals.drain() {
            let _ = reply.send(Err(ServerError::Stopped));
        }
        for (_, read) in self.reads.drain() {
            read(Err(ServerError::Stopped));
        }
        for (_, reply) in self.transfers.drain(..) {
            let _ = reply.send(Err(MoveLeaderError::Stopped));
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

    fn on_request(&mut self, request: Request<S>) {
        let now = self.now();
        let id = self.next_request;
        self.next_request += 1;
        match request {
            Request::Propose { payload, reply } => {
                self.metrics.timeline.record("propose", "", 0, 0);
                self.proposals.insert(id, (reply, Instant::now()));
                self.replica.propose(now, id, payload);
            }
            Request::Read { consistency, read } => {
                self.reads.insert(id, read);
                let linearizable = consistency == Consistency::Linearizable;
                self.replica.read(now, id, linearizable);
            }
            Request::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Request::WithLeaderLease { run } => {
                let lease = self.replica.leader_lease(self.now());
                run(lease, self.replica.state_machine());
            }
            Request::MoveLeader { target, reply } => {
                match self.replica.transfer_leadership(now, target) {
                    // Answered when the core reports the transfer's end.
                    Ok(()) => self.transfers.push((target, reply)),
                    Err(error) => {
                        let _ = reply.send(Err(MoveLeaderError::Refused(error)));
                    }
                }
            }
        }
    }

    fn status(&self) -> NodeStatus {
        let status = self.replica.status();
        NodeStatus {
            node_id: self.id,
            role: status.node.role,
            leader: status.node.leader,
            promised: status.node.promised,
            commit_index: status.node.commit_index,
            applied_slot: status.applied_slot,
            last_slot: status.node.last_slot,
            snapshot_slot: status.snapshot_slot,
            phase1_runs: status.node.phase1_runs,
            wal_disk_bytes: self.group_commit.stats().disk_bytes,
            pending_proposals: status.pending_proposals,
        }
    }

    fn on_control(&mut self, control: Control<S>) {
        let now = self.now();
        match control {
            Control::Persisted {
                id,
                result,
                submitted,
            } => {
                self.persists_in_flight -= 1;
                match result {
                    Ok(()) => {
                        if let Some(submitted) = submitted {
                            self.metrics
                                .persist_seconds
                                .observe(submitted.elapsed().as_secs_f64());
                        }
                        self.metrics.timeline.record("persisted", "", id, 0);
                        self.replica.on_persisted(now, id);
                    }
                    Err(error) => {
                        self.fatal = Some(format!(
                            "the write-ahead log failed to persist request {id}: {error}"
                        ));
                    }
                }
            }
            Control::SnapshotSaved { slot, result } => {
                if let Err(error) = &result {
                    tracing::error!(node = self.id, slot, %error, "saving a snapshot failed");
                }
                self.replica.on_snapshot_saved(now, slot, result);
            }
            Control::WalCompacted {
                slot,
                result,
                checkpoint,
                removal,
                segments,
            } => match result {
                // The group-commit thread writes nothing else during the checkpoint.
                Ok(()) => tracing::info!(
                    node = self.id,
                    slot,
                    checkpoint_ms = checkpoint.as_millis() as u64,
                    segments,
                    removal_ms = removal.as_millis() as u64,
                    "write-ahead log compacted"
                ),
                Err(error) => {
                    tracing::error!(node = self.id, slot, %error, "compacting the write-ahead log failed")
                }
            },
            Control::SnapshotSent { peer, result } => {
                let delivered = result.is_ok();
                match result {
                    Ok(slot) => tracing::info!(node = self.id, peer, slot, "snapshot sent to peer"),
                    Err(error) => {
                        tracing::warn!(node = self.id, peer, %error, "sending a snapshot failed")
                    }
                }
                self.replica.on_snapshot_sent(now, peer, delivered);
            }
            Control::SnapshotReceived { from, result } => match result {
                Ok(restored) => {
                    tracing::info!(
                        node = self.id,
                        peer = from,
                        slot = restored.slot,
                        "installing a snapshot from a peer"
                    );
                    self.replica.on_snapshot_received(now, from, restored);
                }
                Err(error) => {
                    tracing::error!(node = self.id, peer = from, %error, "a received snapshot could not be installed")
                }
            },
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
                self.metrics
                    .timeline
                    .message("driver_in", &envelope.message, envelope.from);
                let now = self.now();
                if let Err(error) = self.replica.step(now, envelope) {
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

    /// Sequences a peer's snapshot chunks; a thread writes, verifies and decodes them.
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
            let status = self.replica.status();
            if slot <= status.applied_slot || slot <= status.node.commit_index {
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
                    let chunks = self.spawn_snapshot_receiver(from, writer, total_bytes);
                    self.incoming_snapshot = Some(IncomingSnapshot {
                        from,
                        slot,
                        next_offset: 0,
                        chunks,
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
        incoming.next_offset += data.len() as u64;
        let done = incoming.next_offset >= total_bytes;
        if incoming.chunks.send(data).is_err() || done {
            self.incoming_snapshot = None;
        }
    }

    /// A thread that writes a peer's snapshot chunks, verifies the file and decodes it,
    /// then reports back; the driver task only hands it the chunks.
    fn spawn_snapshot_receiver(
        &self,
        from: NodeId,
        mut writer: SnapshotWriter,
        total_bytes: u64,
    ) -> std::sync::mpsc::Sender<Bytes> {
        let (chunks_tx, chunks_rx) = std::sync::mpsc::channel::<Bytes>();
        let control = self.channels.control_tx.clone();
        let store = Arc::clone(&self.snapshots);
        let empty = self.replica.state_machine().empty_like();
        let metrics = Arc::clone(&self.metrics);
        std::thread::spawn(move || {
            let mut written = 0u64;
            while written < total_bytes {
                let Ok(chunk) = chunks_rx.recv() else {
                    return; // the transfer was dropped
                };
                if let Err(error) = writer.write_chunk(&chunk) {
                    let _ = control.send(Control::SnapshotReceived {
                        from,
                        result: Err(format!("writing a snapshot chunk failed: {error}")),
                    });
                    return;
                }
                written += chunk.len() as u64;
            }
            let result = writer
                .finish()
                .map_err(|error| format!("the snapshot failed verification: {error}"))
                .and_then(|()| decode_newest(&store, empty));
            record_snapshot_bytes(&store, &metrics);
            let _ = control.send(Control::SnapshotReceived { from, result });
        });
        chunks_tx
    }

    /// Drains the replica and carries out what it asks for.
    fn process_ready(&mut self) {
        // Bounded: each round consumes what the previous one produced.
        for _ in 0..64 {
            if !self.replica.has_ready() {
                break;
            }
            let ready = self.replica.take_ready();
            // Messages and replies go before this round's writes: the core holds back
            // every message that vouches for durable state until `on_persisted`, and a
            // reply reports a chosen slot, durable at a quorum. So an Accept or a
            // forwarded proposal does not wait for a follower's fdatasync, nor a reply
            // for the leader's commit-mark write.
            for envelope in &ready.messages {
                let Some(queue) = self.channels.peers.get(&envelope.to) else {
                    continue;
                };
                self.metrics
                    .timeline
                    .message("send", &envelope.message, envelope.to);
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    queue.try_send(Frame::Message(envelope.clone()))
                {
                    self.metrics.peer_messages_dropped.inc();
                }
            }
            // Before answering: whoever sees a reply then finds its effect observed.
            self.observe();
            self.answer(&ready);
            self.persist(&ready.persist);
            self.carry_out_snapshots(ready);
        }
        self.observe();
        self.update_metrics();
    }

    /// Shows the state machine to the observer when something was applied since last time.
    fn observe(&mut self) {
        let applied = self.replica.state_machine().applied();
        if let Some(observer) = self.channels.observer.as_mut() {
            if self.observed != Some(applied) {
                self.observed = Some(applied);
                observer(self.replica.state_machine());
            }
        }
    }

    /// Replies to proposals; runs the reads the replica released against its state.
    fn answer(&mut self, ready: &ReplicaReady) {
        for (request, result) in &ready.replies {
            if let Some((reply, received)) = self.proposals.remove(request) {
                self.metrics.timeline.record("reply", "", 0, 0);
                self.metrics
                    .proposal_seconds
                    .observe(received.elapsed().as_secs_f64());
                let _ = reply.send(result.clone().map_err(server_error));
            }
        }
        for (request, result) in &ready.reads {
            let Some(read) = self.reads.remove(request) else {
                continue;
            };
            match result {
                Ok(how) => {
                    let label = match how {
                        ReadHow::Serializable => "serializable",
                        ReadHow::Linearizable(_) => "linearizable",
                    };
                    self.metrics.reads.with_label_values(&[label]).inc();
                    read(Ok(self.replica.state_machine()));
                }
                Err(error) => read(Err(server_error(error.clone()))),
            }
        }
    }

    fn carry_out_snapshots(&mut self, ready: ReplicaReady) {
        for event in ready.events {
            self.on_event(event);
        }
        if let Some(save) = ready.save_snapshot {
            let store = Arc::clone(&self.snapshots);
            let control = self.channels.control_tx.clone();
            let metrics = Arc::clone(&self.metrics);
            let id = self.id;
            tokio::task::spawn_blocking(move || {
                let slot = save.slot;
                let encoding = Instant::now();
                let image = (save.encode)();
                let started = Instant::now();
                let result = store.save(slot, &image).map_err(|e| e.to_string());
                if result.is_ok() {
                    let saving = started.elapsed();
                    metrics.backend_commit_seconds.observe(saving.as_secs_f64());
                    tracing::info!(
                        node = id,
                        slot,
                        bytes = image.len(),
                        encode_ms = (started - encoding).as_millis() as u64,
                        save_ms = saving.as_millis() as u64,
                        "snapshot written"
                    );
                }
                record_snapshot_bytes(&store, &metrics);
                let _ = control.send(Control::SnapshotSaved { slot, result });
            });
        }
        for (peer, slot) in ready.send_snapshots {
            self.send_snapshot(peer, slot);
        }
        if let Some(slot) = ready.compact_log {
            let group_commit = Arc::clone(&self.group_commit);
            let control = self.channels.control_tx.clone();
            tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let checkpoint = group_commit.checkpoint(slot);
                let checkpointed = Instant::now();
                let (segments, result) = match checkpoint {
                    Ok(superseded) => (superseded.len(), superseded.remove()),
                    Err(error) => (0, Err(error)),
                };
                let _ = control.send(Control::WalCompacted {
                    slot,
                    result,
                    checkpoint: checkpointed - started,
                    removal: checkpointed.elapsed(),
                    segments,
                });
            });
        }
    }

    fn on_event(&mut self, event: ReplicaEvent) {
        use synod_core::Event;
        match event {
            ReplicaEvent::Core(Event::Phase1Started { ballot }) => {
                tracing::debug!(node = self.id, %ballot, "phase 1 started")
            }
            ReplicaEvent::Core(Event::BecameLeader {
                ballot,
                reproposed_slots,
            }) => tracing::info!(node = self.id, %ballot, reproposed_slots, "became leader"),
            ReplicaEvent::Core(Event::RefreshingLeadership { ballot, stray }) => {
                tracing::info!(
                    node = self.id,
                    %ballot,
                    %stray,
                    "a stray higher ballot came back; raising this leadership's ballot above it"
                )
            }
            ReplicaEvent::Core(Event::SteppedDown { ballot }) => {
                tracing::info!(node = self.id, %ballot, "stepped down")
            }
            ReplicaEvent::Core(Event::LeaderChanged { leader }) => {
                tracing::info!(node = self.id, leader = ?leader, "leader changed")
            }
            ReplicaEvent::Core(Event::TransferEnded { target, outcome }) => {
                tracing::info!(
                    node = self.id,
                    target,
                    ?outcome,
                    "leadership transfer ended"
                );
                let result = match outcome {
                    synod_core::TransferOutcome::Completed => Ok(()),
                    synod_core::TransferOutcome::TimedOut => Err(MoveLeaderError::TimedOut),
                };
                let (ended, waiting) = std::mem::take(&mut self.transfers)
                    .into_iter()
                    .partition(|(waiting_for, _)| *waiting_for == target);
                self.transfers = waiting;
                for (_, reply) in ended {
                    let _ = reply.send(result.clone());
                }
            }
            ReplicaEvent::Compacted { slot } => {
                tracing::info!(node = self.id, slot, "snapshot saved; compacting the log")
            }
            ReplicaEvent::SnapshotInstalled { from, slot } => {
                tracing::info!(
                    node = self.id,
                    peer = from,
                    slot,
                    "installed a snapshot from a peer"
                )
            }
            ReplicaEvent::SnapshotUnavailable { peer, needed, have } => tracing::warn!(
                node = self.id,
                peer,
                needed,
                have,
                "peer needs a snapshot newer than ours"
            ),
            ReplicaEvent::UndecodableCommand { slot, error } => tracing::error!(
                node = self.id,
                slot,
                %error,
                "skipping a log command that is not a runtime proposal"
            ),
            other => tracing::debug!(node = self.id, event = ?other, "replica event"),
        }
    }

    /// Counters follow the replica's own, gauges its status.
    fn update_metrics(&mut self) {
        let stats = self.replica.stats();
        let last = std::mem::replace(&mut self.stats, stats);
        let metrics = &self.metrics;
        metrics.proposals.inc_by(stats.proposals - last.proposals);
        metrics
            .proposal_retries
            .inc_by(stats.proposal_retries - last.proposal_retries);
        metrics
            .proposals_failed
            .inc_by(stats.proposals_failed - last.proposals_failed);
        metrics
            .commands_applied
            .inc_by(stats.commands_applied - last.commands_applied);
        metrics
            .snapshots_taken
            .inc_by(stats.snapshots_taken - last.snapshots_taken);
        metrics
            .snapshots_installed
            .inc_by(stats.snapshots_installed - last.snapshots_installed);
        metrics
            .snapshots_sent
            .inc_by(stats.snapshots_sent - last.snapshots_sent);
        metrics
            .leader_changes
            .inc_by(stats.leader_changes - last.leader_changes);
        metrics.phase1_runs.inc_by(
            self.replica
                .status()
                .node
                .phase1_runs
                .saturating_sub(metrics.phase1_runs.get()),
        );
        let status = self.replica.status();
        metrics
            .current_ballot
            .set(status.node.promised.round as i64);
        metrics.commit_index.set(status.node.commit_index as i64);
        metrics.applied_slot.set(status.applied_slot as i64);
        metrics
            .is_leader
            .set(i64::from(status.node.role == synod_core::Role::Leader));
        metrics
            .has_leader
            .set(i64::from(status.node.leader.is_some()));
        metrics
            .proposals_pending
            .set(status.pending_proposals as i64);
        metrics.set_disk_bytes(self.group_commit.stats().disk_bytes, None);
    }

    /// Makes `requests` durable. A replica that is not leading writes its log on this task
    /// when the log is idle: its persists (a follower's accepts and promises) are what its
    /// replies wait for, and the group-commit thread would add two thread wake-ups to
    /// every one. A leader writes its unsynced commit marks here too (a write call). Its
    /// synced requests it hands over under load, so that this task keeps taking requests
    /// while the disk works; with one command in flight and nothing else to do it holds
    /// them until this round's Accepts have left (`run`), then writes them here as well
    /// (docs/latency.md, section 8).
    fn persist(&mut self, requests: &[PersistRequest]) {
        if requests.is_empty() {
            return;
        }
        if self.holding_marks_only() {
            // The held commit marks go with these requests, in the same write.
            let mut all = std::mem::take(&mut self.held_persists);
            all.extend_from_slice(requests);
            self.persist_now(&all);
            return;
        }
        if !self.held_persists.is_empty() {
            self.held_persists.extend_from_slice(requests);
            return;
        }
        self.persist_now(requests);
    }

    /// True when what is held is commit marks alone (see `persist_now`).
    fn holding_marks_only(&self) -> bool {
        !self.held_persists.is_empty() && !self.held_persists.iter().any(PersistRequest::needs_sync)
    }

    /// `persist` with nothing held.
    fn persist_now(&mut self, requests: &[PersistRequest]) {
        if self.persists_in_flight == 0 {
            let leading = self.replica.node().status().role == synod_core::Role::Leader;
            if !requests.iter().any(PersistRequest::needs_sync) {
                // Commit marks alone: nothing waits for them (`needs_sync`), so they are
                // held and go with the next write (a lone client's next Accept), or on
                // this task at the next tick; not on the path of this round's replies.
                self.held_persists.extend_from_slice(requests);
                return;
            }
            if !leading {
                if self.write_inline(requests) {
                    return;
                }
            } else if self.carries_the_only_command(requests) {
                self.held_persists.extend_from_slice(requests);
                return;
            }
        }
        for request in requests {
            self.submit_persist(request.clone());
        }
    }

    /// True when `requests` accept one slot holding at most one command and no other slot
    /// or command waits: one client at a time. Under more load the leader keeps handing
    /// its writes over, so that requests arriving meanwhile are proposed at once.
    fn carries_the_only_command(&self, requests: &[PersistRequest]) -> bool {
        let mut accepts =
            requests
                .iter()
                .flat_map(|request| &request.ops)
                .filter_map(|op| match op {
                    synod_core::PersistOp::Accept(entry) => Some(entry),
                    _ => None,
                });
        let (Some(entry), None) = (accepts.next(), accepts.next()) else {
            return false;
        };
        let status = self.replica.node().status();
        entry.value.commands().len() <= 1
            && status.inflight_slots <= 1
            && status.pending_commands == 0
    }

    /// Writes the held requests on this task, or hands them to the group-commit thread
    /// if it is busy (a compaction) after all.
    fn write_held_persists(&mut self) {
        let held = std::mem::take(&mut self.held_persists);
        if held.is_empty() || self.persists_in_flight > 0 || !self.write_inline(&held) {
            for request in held {
                self.submit_persist(request);
            }
        }
    }

    /// `append_now` on this task; false when the group-commit thread is busy and nothing
    /// was written.
    fn write_inline(&mut self, requests: &[PersistRequest]) -> bool {
        let Some(last) = requests.last().map(|request| request.id) else {
            return true;
        };
        let started = Instant::now();
        let started_ns = self
            .metrics
            .timeline
            .enabled()
            .then(crate::timeline::monotonic_ns);
        let Some(result) = self.group_commit.append_now(requests) else {
            return false;
        };
        if let Some(started_ns) = started_ns {
            self.metrics
                .timeline
                .record_at(started_ns, "persist_start", "", last, 0);
        }
        match result {
            Ok(()) => {
                if requests.iter().any(PersistRequest::needs_sync) {
                    self.metrics
                        .persist_seconds
                        .observe(started.elapsed().as_secs_f64());
                }
                self.metrics.persists_inline.inc();
                self.metrics.timeline.record("persisted", "", last, 0);
                let now = self.now();
                self.replica.on_persisted(now, last);
            }
            Err(error) => {
                self.fatal = Some(format!(
                    "the write-ahead log failed to persist request {last}: {error}"
                ));
            }
        }
        true
    }

    fn submit_persist(&mut self, request: PersistRequest) {
        self.persists_in_flight += 1;
        let control = self.channels.control_tx.clone();
        let id = request.id;
        // Only requests that wait for an fdatasync are timed: commit marks alone are
        // written unsynced and would hide the synced ones' latency in the mean.
        let submitted = request.needs_sync().then(Instant::now);
        self.metrics.timeline.record("persist_start", "", id, 0);
        let metrics = Arc::clone(&self.metrics);
        self.group_commit.submit(
            request,
            Box::new(move |result| {
                metrics.timeline.record("fsync_done", "", id, 0);
                let _ = control.send(Control::Persisted {
                    id,
                    result,
                    submitted,
                });
            }),
        );
    }

    fn send_snapshot(&mut self, peer: NodeId, slot: Slot) {
        let Some(queue) = self.channels.peers.get(&peer).cloned() else {
            let now = self.now();
            self.replica.on_snapshot_sent(now, peer, false);
            return;
        };
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

/// Sets the snapshot-size gauge from the files in `store` (on a blocking thread: it
/// lists the directory). A listing that fails leaves the last size in place.
pub fn record_snapshot_bytes(store: &SnapshotStore, metrics: &Metrics) {
    let Ok(slots) = store.slots() else {
        return;
    };
    let bytes = slots
        .iter()
        .filter_map(|slot| std::fs::metadata(store.path_of(*slot)).ok())
        .map(|metadata| metadata.len())
        .sum();
    metrics.set_disk_bytes(metrics.wal_disk_bytes.get().max(0) as u64, Some(bytes));
}

/// Runtime failures as the server API reports them.
fn server_error(error: RequestError) -> ServerError {
    match error {
        RequestError::TooLarge { bytes, limit } => ServerError::TooLarge { bytes, limit },
        RequestError::Timeout { after_ms } => ServerError::Timeout {
            after: Duration::from_millis(after_ms),
        },
        _ => ServerError::Stopped,
    }
}

/// Decodes the newest snapshot in the store (the one just received) into `empty`.
fn decode_newest<S: StateMachine>(store: &SnapshotStore, empty: S) -> Result<Restored<S>, String> {
    let (slot, data) = store
        .latest()
        .map_err(|error| error.to_string())?
        .ok_or("the snapshot vanished after it was written")?;
    let restored = Restored::decode(&data, empty)?;
    if restored.slot != slot {
        return Err(format!(
            "snapshot file for slot {slot} holds an image of slot {}",
            restored.slot
        ));
    }
    Ok(restored)
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

#[cfg(test)]
mod tests {
    //! The driver over a one-member cluster: real storage, no sockets. Requests in,
    //! answers out, a snapshot taken and saved off the loop, bad snapshot chunks dropped.

    use super::*;
    use synod_kv::{Command, KvStore, Op, PutRequest, RangeRequest, Response};
    use synod_replica::ReplicaConfig;
    use synod_storage::{SyncMode, Wal, WalOptions};

    struct Running {
        requests: mpsc::Sender<Request<KvStore>>,
        peer_inputs: mpsc::Sender<PeerInput>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<Result<(), ServerError>>,
        snapshots: Arc<SnapshotStore>,
        metrics: Arc<Metrics>,
        _dir: tempfile::TempDir,
    }

    fn start(snapshot_interval_slots: u64) -> Running {
        start_member(
            synod_core::Config::new(1, vec![1]),
            snapshot_interval_slots,
            Duration::from_millis(5),
            HashMap::new(),
        )
    }

    /// A driver for `core`'s member; `peers` get the frames it sends them.
    fn start_member(
        mut core: synod_core::Config,
        snapshot_interval_slots: u64,
        tick_interval: Duration,
        peers: HashMap<NodeId, mpsc::Sender<Frame>>,
    ) -> Running {
        let dir = tempfile::tempdir().expect("temporary directory");
        core.election_timeout_ticks = 2;
        core.heartbeat_interval_ticks = 1;
        core.lease_ticks = 2;
        let core_id = core.id;
        let mut config = ReplicaConfig::new(core, 7);
        config.tick_nanos = tick_interval.as_nanos() as u64;
        config.snapshot_interval_slots = snapshot_interval_slots;
        let options = WalOptions {
            segment_bytes: 1 << 20,
            sync: SyncMode::None,
            ..WalOptions::default()
        };
        let (wal, durable) = Wal::open(&dir.path().join("wal"), options).expect("wal");
        let replica = Replica::recover(config, durable, None, KvStore::new(), 0).expect("replica");
        let snapshots =
            Arc::new(SnapshotStore::open(&dir.path().join("snap")).expect("snapshot store"));
        let (requests_tx, requests) = mpsc::channel(64);
        let (peer_tx, peer_inputs) = mpsc::channel(64);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop) = watch::channel(false);
        let metrics = Metrics::new(core_id);
        let driver = Driver::new(
            replica,
            Instant::now(),
            DriverSettings {
                tick_interval,
                snapshot_chunk_bytes: 1 << 10,
            },
            Arc::clone(&metrics),
            Arc::new(GroupCommit::start(wal)),
            Arc::clone(&snapshots),
            Channels {
                requests,
                peer_inputs,
                control_tx,
                control_rx,
                stop,
                peers,
                observer: None,
            },
        );
        Running {
            requests: requests_tx,
            peer_inputs: peer_tx,
            stop: stop_tx,
            task: tokio::spawn(driver.run()),
            snapshots,
            metrics,
            _dir: dir,
        }
    }

    async fn put(running: &Running, key: &str, value: &str) -> Result<Response, ServerError> {
        answered(send_put(running, key, value).await).await
    }

    /// Hands a put to the driver without waiting for its answer.
    async fn send_put(
        running: &Running,
        key: &str,
        value: &str,
    ) -> oneshot::Receiver<Result<Bytes, ServerError>> {
        let command = Command::unsessioned(Op::Put(PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
            ..PutRequest::default()
        }));
        let (reply, answer) = oneshot::channel();
        running
            .requests
            .send(Request::Propose {
                payload: command.encode(),
                reply,
            })
            .await
            .expect("driver runs");
        answer
    }

    async fn answered(
        answer: oneshot::Receiver<Result<Bytes, ServerError>>,
    ) -> Result<Response, ServerError> {
        answer
            .await
            .expect("answered")
            .map(|bytes| Response::decode(&bytes).expect("a KV response"))
    }

    async fn read(running: &Running, key: &str, consistency: Consistency) -> Option<Bytes> {
        let (reply, answer) = oneshot::channel();
        let key = Bytes::copy_from_slice(key.as_bytes());
        let read: ReadFn<KvStore> = Box::new(move |state| {
            let value = state.ok().and_then(|store| {
                let response = store.read(&RangeRequest {
                    key,
                    ..RangeRequest::default()
                });
                match response.result {
                    Ok(synod_kv::OpResponse::Range(range)) => {
                        range.kvs.first().map(|kv| kv.value.clone())
                    }
                    _ => None,
                }
            });
            let _ = reply.send(value);
        });
        running
            .requests
            .send(Request::Read { consistency, read })
            .await
            .expect("driver runs");
        answer.await.expect("answered")
    }

    #[tokio::test]
    async fn proposals_and_reads_of_every_consistency_are_answered() {
        let running = start(0);
        let response = put(&running, "k", "v").await.expect("put");
        assert!(response.result.is_ok());
        assert_eq!(
            read(&running, "k", Consistency::Linearizable).await,
            Some(Bytes::from_static(b"v"))
        );
        assert_eq!(
            read(&running, "k", Consistency::Serializable).await,
            Some(Bytes::from_static(b"v"))
        );
        let (reply, status) = oneshot::channel();
        running
            .requests
            .send(Request::Status { reply })
            .await
            .unwrap();
        let status = status.await.unwrap();
        assert_eq!(status.role, synod_core::Role::Leader);
        assert!(status.applied_slot >= 1);
        let _ = running.stop.send(true);
        running.task.await.unwrap().unwrap();
    }

    /// The persist stages of `events` (and this test's own `answered`), one list per
    /// proposal the driver took; what came before the first proposal is left out.
    fn persist_stages_per_put(events: &[crate::timeline::TimelineEvent]) -> Vec<Vec<&str>> {
        let mut puts: Vec<Vec<&str>> = Vec::new();
        for event in events {
            match event.stage {
                "propose" => puts.push(Vec::new()),
                "persist_start" | "persisted" | "reply" | "answered" | "fsync_done" => {
                    if let Some(put) = puts.last_mut() {
                        put.push(event.stage);
                    }
                }
                _ => {}
            }
        }
        puts
    }

    /// Leadership's first slots and their commit marks go to the group-commit thread,
    /// and a put arriving while one of those is still there is handed over too: puts
    /// until one finds the thread idle (its Accept written on the driver's task).
    async fn warm_up_until_writes_are_inline(running: &Running) {
        for attempt in 0.. {
            assert!(attempt < 100, "no put found the group-commit thread idle");
            running.metrics.timeline.take(Some(true));
            put(running, "warm", "up").await.expect("put");
            let dump = running.metrics.timeline.take(Some(false));
            if persist_stages_per_put(&dump.events) == [["persist_start", "persisted", "reply"]] {
                break;
            }
        }
    }

    #[tokio::test]
    async fn a_leader_writes_a_lone_command_itself_and_hands_a_crowd_to_group_commit() {
        let running = start(0);
        warm_up_until_writes_are_inline(&running).await;
        // One client at a time: each put's Accept is held until the round's messages are
        // out, then written on the driver's task; nothing goes to the group-commit thread.
        running.metrics.timeline.take(Some(true));
        let before = running.metrics.persists_inline.get();
        for i in 0..5 {
            put(&running, &format!("one{i}"), "v").await.expect("put");
        }
        let lone = running.metrics.persists_inline.get() - before;
        let dump = running.metrics.timeline.take(Some(false));
        assert!(lone >= 5, "{lone} inline writes for five lone puts");
        assert!(
            !dump.events.iter().any(|event| event.stage == "fsync_done"),
            "a lone put's write went to the group-commit thread: {:?}",
            dump.events
        );
        // Thirty-two puts queued before the driver runs again share slots, and their
        // Accepts go to the group-commit thread: only a commit mark (held since the lone
        // puts, or flushed at a tick) may be written inline.
        let before = running.metrics.persists_inline.get();
        let mut answers = Vec::new();
        for i in 0..32 {
            answers.push(send_put(&running, &format!("crowd{i}"), "v").await);
        }
        for answer in answers {
            assert!(answered(answer).await.expect("put").result.is_ok());
        }
        let crowd = running.metrics.persists_inline.get() - before;
        assert!(
            crowd <= 1,
            "{crowd} inline writes for a crowd of 32 puts: only the commit mark may be"
        );
        assert_eq!(
            read(&running, "crowd31", Consistency::Linearizable).await,
            Some(Bytes::from_static(b"v"))
        );
        let _ = running.stop.send(true);
        running.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_lone_puts_commit_mark_goes_with_the_next_write_not_before_its_reply() {
        let running = start(0);
        warm_up_until_writes_are_inline(&running).await;
        running.metrics.timeline.take(Some(true));
        for i in 0..10 {
            put(&running, &format!("one{i}"), "v").await.expect("put");
            // Where the client has its answer (this test's task, on the driver's thread).
            running.metrics.timeline.record("answered", "", 0, 0);
        }
        let written = running.metrics.persists_inline.get();
        // The last put's commit mark has no next write to go with: a tick writes it.
        for _ in 0..200 {
            if running.metrics.persists_inline.get() > written {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let dump = running.metrics.timeline.take(Some(false));
        let puts = persist_stages_per_put(&dump.events);
        assert_eq!(puts.len(), 10, "{:?}", dump.events);
        // Each put: one write (its Accept, and the commit mark of the put before unless a
        // tick wrote that), durable, then the reply; the commit mark of a put is never
        // written between its Accept and its reply, and (but at a tick) not after either.
        for put in &puts {
            assert_eq!(
                put[..3],
                ["persist_start", "persisted", "reply"],
                "{:?}",
                dump.events
            );
            let rest: Vec<&str> = put[3..]
                .iter()
                .copied()
                .filter(|s| *s != "answered")
                .collect();
            assert!(
                rest.is_empty() || rest == ["persist_start", "persisted"],
                "{put:?} in {:?}",
                dump.events
            );
        }
        // Ticks come every 5 ms; a lone put takes well under that, so most marks went
        // with the next put's Accept.
        assert!(
            puts[..9].iter().any(|put| put.len() == 4),
            "every commit mark had a write of its own: {:?}",
            dump.events
        );
        assert_eq!(
            puts[9].len(),
            6,
            "the last commit mark was not written at a tick: {:?}",
            dump.events
        );
        let _ = running.stop.send(true);
        running.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_followers_heartbeat_ack_does_not_wait_for_its_held_commit_mark() {
        use synod_core::{Ballot, Envelope, Message, Value};
        let (to_leader, mut from_follower) = mpsc::channel(64);
        // Member 2 of three; its ticks never come after the first, so nothing but the
        // driver's own rule can write a held commit mark.
        let running = start_member(
            synod_core::Config::new(2, vec![1, 2, 3]),
            0,
            Duration::from_secs(3600),
            HashMap::from([(1, to_leader)]),
        );
        // The interval's first tick comes at once: let the idle driver take it first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ballot = Ballot::new(1, 1);
        let from_leader = |message| {
            PeerInput::Message(Envelope {
                from: 1,
                to: 2,
                message,
            })
        };
        let mut next_from_follower = async || loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), from_follower.recv())
                .await
                .expect("the follower answered within 10 s")
                .expect("the driver runs");
            if let Frame::Message(envelope) = frame {
                return envelope.message.kind();
            }
        };
        running
            .peer_inputs
            .send(from_leader(Message::Accept {
                ballot,
                first_slot: 1,
                values: vec![Value::Noop],
                commit_index: 0,
                sent_at: 1,
            }))
            .await
            .unwrap();
        assert_eq!(next_from_follower().await, "accepted");
        // Slot 1 is chosen: the follower acknowledges, then learns the commit point, a
        // commit mark it holds (nothing waits for it, and no other write comes).
        for round in 1..=3 {
            running
                .peer_inputs
                .send(from_leader(Message::Heartbeat {
                    ballot,
                    commit_index: 1,
                    sent_at: 1 + round,
                    round,
                }))
                .await
                .unwrap();
            // From the second on, the core holds the acknowledgement on the last request
            // issued before it: that mark. The driver writes it at once.
            assert_eq!(next_from_follower().await, "heartbeat_ack", "round {round}");
        }
        let _ = running.stop.send(true);
        running.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_request_over_the_limit_gets_too_large_and_nothing_is_proposed() {
        let running = start(0);
        let huge = "x".repeat(2 << 20);
        match put(&running, "k", &huge).await {
            Err(ServerError::TooLarge { limit, .. }) => assert_eq!(limit, 3 << 19),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(read(&running, "k", Consistency::Linearizable).await, None);
        let _ = running.stop.send(true);
        running.task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn snapshots_are_encoded_and_saved_off_the_loop_and_bad_chunks_dropped() {
        let running = start(3);
        for i in 0..8 {
            put(&running, &format!("k{i}"), "v").await.expect("put");
        }
        // The snapshot is saved by a blocking task; wait until the store has it.
        let mut saved = None;
        for _ in 0..200 {
            saved = running.snapshots.latest().expect("store");
            if saved.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (slot, _) = saved.expect("a snapshot was saved");
        assert!(slot >= 3);
        // A chunk that does not start a transfer, from a peer that does not exist: the
        // driver drops it and keeps serving.
        running
            .peer_inputs
            .send(PeerInput::SnapshotChunk {
                from: 9,
                slot: 1_000,
                offset: 77,
                total_bytes: 100,
                data: Bytes::from_static(b"junk"),
            })
            .await
            .unwrap();
        put(&running, "after", "v").await.expect("still serving");
        let _ = running.stop.send(true);
        running.task.await.unwrap().unwrap();
    }
}
