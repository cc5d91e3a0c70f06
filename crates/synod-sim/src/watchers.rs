//! Watch clients in the simulation: every node runs the server's [`WatchHub`] over its own
//! replica's store, fed after each batch of outputs as the server's watch task is; simulated
//! watchers attach to any node (followers included), read slowly or not at all for a
//! while (so their stream refuses responses and they fall behind), lose their stream when
//! their node crashes and resume at another node from the revision after the last one they
//! were sent everything through, and are canceled when the history they need is
//! compacted. At the end every watcher's events are checked against the committed history
//! rebuilt from the chosen log ([`crate::checks`]): etcd's ordered, unique, reliable,
//! atomic, resumable and bookmarkable guarantees, `prev_kv` and filters.
//!
//! Watchers draw from an RNG of their own, so a run with watchers makes every other
//! choice exactly as the same seed without them.

use bytes::Bytes;
use rand::Rng as _;
use synod_core::NodeId;
use synod_kv::{StreamId, WatchEvent, WatchHub, WatchOutput, WatchRequest, WatchUpdate};

use crate::checks::Violation;
use crate::cluster::{Event, Simulation, TICK_UNITS};

/// What one logical watch received (a resumed watch continues the same record; one
/// canceled by compaction ends it).
#[derive(Clone, Debug)]
pub(crate) struct WatchRecord {
    pub request: WatchRequest,
    /// The first revision it asked for.
    pub start: i64,
    /// It was sent every event through this revision (start - 1 before anything).
    pub through: i64,
    pub events: Vec<WatchEvent>,
    /// Canceled because the revision it needed was compacted: that compact revision.
    pub canceled_at: Option<i64>,
}

/// One simulated watch client.
pub(crate) struct SimWatcher {
    pub record: WatchRecord,
    /// Where its stream is: node, the node's life, the stream at its hub.
    stream: Option<(NodeId, u64, StreamId)>,
    /// The stream answered `created`.
    created: bool,
    /// Percent of responses it fails to take (0: a reader that keeps up).
    refuse_percent: u32,
}

/// Each node's hub, with the store state it was last fed.
#[derive(Default)]
pub(crate) struct NodeWatches {
    pub hub: Option<WatchHub>,
    /// The node life the hub belongs to.
    epoch: u64,
    fed: (i64, i64),
}

impl Simulation {
    /// Starts the watchers the options ask for, at random times and nodes.
    pub(crate) fn start_watchers(&mut self) {
        for index in 0..self.options.watchers {
            let request = self.draw_watch_request();
            let refuse_percent = *[0, 0, 20, 60]
                .get(self.watch_rng.gen_range(0..4))
                .expect("in range");
            self.watchers.push(SimWatcher {
                record: WatchRecord {
                    request,
                    start: 0,
                    through: 0,
                    events: Vec::new(),
                    canceled_at: None,
                },
                stream: None,
                created: false,
                refuse_percent,
            });
            let start = self
                .watch_rng
                .gen_range(0..=self.options.max_start_units * 4);
            self.schedule(start, Event::WatchStep(index));
        }
    }

    fn draw_watch_request(&mut self) -> WatchRequest {
        let rng = &mut self.watch_rng;
        let keys = self.options.keys;
        let (key, range_end) = match rng.gen_range(0..3) {
            0 => (format!("k{}", rng.gen_range(0..keys)), String::new()),
            1 => ("k".to_string(), "l".to_string()),
            _ => {
                let low = rng.gen_range(0..keys);
                (
                    format!("k{low}"),
                    format!("k{}", rng.gen_range(low + 1..=keys)),
                )
            }
        };
        WatchRequest {
            key: Bytes::from(key),
            range_end: Bytes::from(range_end),
            start_revision: 0,
            prev_kv: rng.gen_bool(0.5),
            // The clients only put: NODELETE filters nothing, NOPUT everything.
            no_put: rng.gen_bool(0.1),
            no_delete: rng.gen_bool(0.3),
            progress_notify: false,
        }
    }

    /// A watcher's periodic step: (re)attach if it has no stream, catch up, ask for
    /// progress now and then.
    pub(crate) fn watch_step(&mut self, index: usize) {
        let lost = !self.stream_alive(index);
        let reconnect = self.watch_rng.gen_bool(0.03);
        if lost || reconnect {
            self.attach(index);
        }
        if let Some((node, _, stream)) = self.watchers[index].stream {
            if self.watch_rng.gen_bool(0.1) {
                if let Some(hub) = self.watches.get_mut(&node).and_then(|w| w.hub.as_mut()) {
                    hub.request_progress(stream);
                }
            }
            self.catch_up_watches(node);
        }
        let gap = self.watch_rng.gen_range(1..=3) * TICK_UNITS;
        let until = (self.options.fault_ticks + self.options.liveness_ticks) * TICK_UNITS;
        if self.now + gap < until {
            self.schedule(gap, Event::WatchStep(index));
        }
    }

    /// Whether the watcher's stream still exists: its node is up in the same life.
    fn stream_alive(&self, index: usize) -> bool {
        match self.watchers[index].stream {
            Some((node, epoch, _)) => {
                let host = &self.nodes[&node];
                host.is_up()
                    && host.epoch == epoch
                    && self
                        .watches
                        .get(&node)
                        .is_some_and(|w| w.hub.is_some() && w.epoch == epoch)
            }
            None => false,
        }
    }

    /// Opens a stream at a random running node and creates the watch there: from its
    /// start (a new watch: the node's current revision + 1), or from the revision after
    /// the last one it was sent everything through (a resumed one).
    fn attach(&mut self, index: usize) {
        let up: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.is_up() && node.paused_until.is_none())
            .map(|(id, _)| *id)
            .collect();
        if let Some((node, epoch, stream)) = self.watchers[index].stream.take() {
            if let Some(watches) = self.watches.get_mut(&node) {
                if watches.epoch == epoch {
                    if let Some(hub) = watches.hub.as_mut() {
                        hub.close_stream(stream);
                    }
                }
            }
        }
        if up.is_empty() {
            return;
        }
        let node = up[self.watch_rng.gen_range(0..up.len())];
        self.feed_watches(node);
        let epoch = self.nodes[&node].epoch;
        let watcher = &mut self.watchers[index];
        let mut request = watcher.record.request.clone();
        let resumed = watcher.created || watcher.record.start > 0;
        if resumed {
            request.start_revision = watcher.record.through + 1;
            #[cfg(test)]
            if self.options.mutant_watch == Some(crate::options::WatchMutant::ResumeSkipsARevision)
            {
                request.start_revision += 1;
            }
            self.report.coverage.watch_resumes += 1;
        }
        let watches = self.watches.get_mut(&node).expect("fed");
        let hub = watches.hub.as_mut().expect("fed");
        if !resumed {
            // A new watch starts after the revision this node has applied.
            let start = hub.revision() + 1;
            watcher.record.start = start;
            watcher.record.through = start - 1;
        }
        let stream = hub.open_stream();
        watcher.stream = Some((node, epoch, stream));
        watcher.created = false;
        let store = self.nodes[&node]
            .replica
            .as_ref()
            .expect("up")
            .state_machine()
            .clone();
        self.watches
            .get_mut(&node)
            .and_then(|w| w.hub.as_mut())
            .expect("fed")
            .create(&store, stream, 0, request);
        self.flush_watches(node);
    }

    /// Hands node `id`'s hub the store's new state (as the server's observer does after
    /// each batch), then flushes.
    pub(crate) fn feed_watches(&mut self, id: NodeId) {
        if self.watchers.is_empty() {
            return;
        }
        let node = &self.nodes[&id];
        let Some(replica) = node.replica.as_ref() else {
            return;
        };
        let store = replica.state_machine();
        let state = (store.revision(), store.compacted_revision());
        let epoch = node.epoch;
        let watches = self.watches.entry(id).or_default();
        match watches.hub.as_mut() {
            Some(hub) if watches.epoch == epoch => {
                if watches.fed != state {
                    watches.fed = state;
                    hub.advance(store);
                }
            }
            // A new life of the node: a new watch task, as the server starts one.
            _ => {
                watches.hub = Some(WatchHub::new(store));
                watches.epoch = epoch;
                watches.fed = state;
            }
        }
        self.flush_watches(id);
    }

    /// The catch-up round of node `id`'s hub (the server runs one every 100 ms).
    fn catch_up_watches(&mut self, id: NodeId) {
        let Some(replica) = self.nodes[&id].replica.as_ref() else {
            return;
        };
        if self.nodes[&id].paused_until.is_some() {
            return;
        }
        let store = replica.state_machine().clone();
        if let Some(hub) = self.watches.get_mut(&id).and_then(|w| w.hub.as_mut()) {
            hub.catch_up(&store);
        }
        self.flush_watches(id);
    }

    /// Delivers node `id`'s watch responses to the watchers, each of which may refuse
    /// (a slow reader); checks each response as it arrives.
    fn flush_watches(&mut self, id: NodeId) {
        let Some(watches) = self.watches.get_mut(&id) else {
            return;
        };
        let epoch = watches.epoch;
        let Some(hub) = watches.hub.as_mut() else {
            return;
        };
        let before = hub.stats();
        let mut taken: Vec<WatchOutput> = Vec::new();
        let watchers = &self.watchers;
        let rng = &mut self.watch_rng;
        let final_round = self.draining_watches;
        #[cfg(test)]
        let lose_refused =
            self.options.mutant_watch == Some(crate::options::WatchMutant::LoseRefusedResponses);
        #[cfg(not(test))]
        let lose_refused = false;
        hub.flush(|output| {
            let Some(watcher) = watchers
                .iter()
                .find(|w| w.stream == Some((id, epoch, output.stream)))
            else {
                return false;
            };
            let refuse = !final_round
                && watcher.refuse_percent > 0
                && rng.gen_range(0..100) < watcher.refuse_percent;
            if !refuse {
                taken.push(output.clone());
            }
            !refuse || lose_refused
        });
        let stalled = hub.stats().stalled - before.stalled;
        self.report.coverage.watch_stalls += stalled;
        for output in taken {
            self.on_watch_output(id, epoch, output);
        }
    }

    fn on_watch_output(&mut self, node: NodeId, epoch: u64, output: WatchOutput) {
        let Some(index) = self
            .watchers
            .iter()
            .position(|w| w.stream == Some((node, epoch, output.stream)))
        else {
            return;
        };
        let watcher = &mut self.watchers[index];
        let record = &mut watcher.record;
        let mut violation = None;
        match output.update {
            WatchUpdate::Created { .. } => watcher.created = true,
            WatchUpdate::Refused { reason } => {
                violation = Some(format!("a watch was refused: {reason}"));
            }
            WatchUpdate::Events { revision, events } => {
                let first = events.first().map_or(revision, WatchEvent::revision);
                if !watcher.created || first <= record.through || revision < first {
                    violation = Some(format!(
                        "watch response out of order at n{node}: events from revision {first} \
                         through {revision} after everything through {} (created: {})",
                        record.through, watcher.created
                    ));
                }
                self.report.coverage.watch_events += events.len() as u64;
                record.events.extend(events);
                record.through = revision;
            }
            WatchUpdate::Progress { revision } => {
                if revision > record.through {
                    record.through = revision;
                }
                self.report.coverage.watch_progress += 1;
            }
            WatchUpdate::Canceled {
                compact_revision, ..
            } => {
                if compact_revision <= record.through + 1 {
                    violation = Some(format!(
                        "a watch needing revision {} was canceled by a compaction at {compact_revision}",
                        record.through + 1
                    ));
                }
                record.canceled_at = Some(compact_revision);
                self.report.coverage.watch_compaction_cancels += 1;
                // The client starts over from now, as an etcd client re-lists.
                let ended = std::mem::replace(
                    record,
                    WatchRecord {
                        request: record.request.clone(),
                        start: 0,
                        through: 0,
                        events: Vec::new(),
                        canceled_at: None,
                    },
                );
                self.finished_watches.push(ended);
                watcher.stream = None;
                watcher.created = false;
            }
        }
        if let Some(violation) = violation {
            self.report.violations.push(Violation::Watch(violation));
        }
    }

    /// At the end: every watcher still attached reads everything its node has, then all
    /// records go to the checker.
    pub(crate) fn finish_watches(&mut self) {
        if self.watchers.is_empty() {
            return;
        }
        self.draining_watches = true;
        let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        for index in 0..self.watchers.len() {
            if !self.stream_alive(index) {
                self.attach(index);
            }
        }
        // A bookmark for each, once every hub has its node's final state: a watch whose
        // range saw no recent writes learns it is complete through its node's revision.
        for id in &nodes {
            self.feed_watches(*id);
        }
        for watcher in &self.watchers {
            if let Some((node, _, stream)) = watcher.stream {
                if let Some(hub) = self.watches.get_mut(&node).and_then(|w| w.hub.as_mut()) {
                    hub.request_progress(stream);
                }
            }
        }
        for _ in 0..1000 {
            for id in &nodes {
                self.feed_watches(*id);
                self.catch_up_watches(*id);
            }
            let behind = self
                .watches
                .values()
                .filter_map(|w| w.hub.as_ref())
                .any(|hub| hub.unsynced() > 0 || hub.has_output());
            if !behind {
                break;
            }
        }
        let converged = self.healed_at.is_some() && self.converged();
        let mut records: Vec<WatchRecord> = std::mem::take(&mut self.finished_watches);
        for watcher in &self.watchers {
            if converged {
                if let Some((node, _, _)) = watcher.stream {
                    let revision = self.nodes[&node]
                        .replica
                        .as_ref()
                        .map_or(0, |r| r.state_machine().revision());
                    if watcher.record.through < revision {
                        self.report.violations.push(Violation::Watch(format!(
                            "a watch at n{node} was sent everything only through revision {} of {revision} after the cluster converged",
                            watcher.record.through
                        )));
                    }
                }
            }
            records.push(watcher.record.clone());
        }
        if let Some(violation) = self.checker.check_watches(&records) {
            self.report.violations.push(violation);
        }
    }
}
