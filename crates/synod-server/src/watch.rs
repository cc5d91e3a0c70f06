//! etcd's `Watch` service: a bidirectional gRPC stream per client call, many watches per
//! stream, served at any member from its own apply stream.
//!
//! While the member has watchers, the replica's task hands each new state of the store to
//! [`WatchTask`] (an O(1) clone through [`crate::applied`]: only the latest matters, since
//! the store's history holds every revision in between); with none, it hands over nothing
//! and a new watch starts from the state read at its creation. The task owns the member's
//! [`WatchHub`](synod_kv::WatchHub) and is its only driver: it feeds it store states,
//! the streams' create, cancel and progress requests, a catch-up round every
//! [`CATCH_UP_INTERVAL`] (etcd's 100 ms) and the progress ticks, then hands the responses to
//! the streams.
//!
//! Each stream's outgoing queue is bounded in bytes ([`STREAM_BUFFER_BYTES`]). A response
//! that does not fit is not queued: the hub marks its watcher behind and re-reads its
//! events from history once the client reads again — so a client that stops reading costs
//! a bounded queue and one small record per watch, never holds up writes or other
//! watchers, and is canceled with `compact_revision` if the history it needs is compacted
//! meanwhile (etcd's victim watchers).

#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use synod_kv::{
    EventKind, KvStore, StreamId, WatchEvent, WatchHub, WatchOutput, WatchRequest, WatchUpdate,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::applied::{AppliedFeed, Following};
use crate::metrics::Metrics;
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::watch_create_request::FilterType;
use crate::proto::mvccpb;
use crate::{Handle, ServerError};

/// How often watchers that fell behind are caught up from history (etcd's 100 ms).
pub const CATCH_UP_INTERVAL: Duration = Duration::from_millis(100);

/// The bytes of responses one stream may have queued for its client; a response that
/// would pass it waits in history instead (one response is always let through to an
/// empty queue, whatever its size).
pub const STREAM_BUFFER_BYTES: usize = 4 << 20;

/// What the watch task needs to know beside the store.
#[derive(Clone, Debug)]
pub struct WatchSettings {
    pub cluster_id: u64,
    pub member_id: u64,
    /// Quiet watches that asked for progress get one this often (etcd's
    /// `--experimental-watch-progress-notify-interval`, 10 minutes by default).
    pub progress_interval: Duration,
    /// A watch created with `fragment` gets responses larger than this split in parts.
    pub max_response_bytes: usize,
    /// A stream that requires a leader (`hasleader` metadata) is closed once the member
    /// has known no leader for three of these in a row, as etcd's `monitorLeader`.
    pub election_timeout: Duration,
}

/// The metadata key etcd clients set (`clientv3.WithRequireLeader`) on streams that must
/// end when their member loses its leader.
const REQUIRE_LEADER_KEY: &str = "hasleader";

/// etcd's error for a stream that requires a leader at a member without one.
fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

enum Input {
    Open {
        sink: Sink,
        reply: oneshot::Sender<StreamId>,
    },
    Create {
        stream: StreamId,
        watch_id: i64,
        request: WatchRequest,
        fragment: bool,
    },
    Cancel {
        stream: StreamId,
        watch_id: i64,
    },
    Progress {
        stream: StreamId,
    },
    Close {
        stream: StreamId,
    },
}

/// One stream's way to its client, and the bytes queued on it.
struct Sink {
    responses: mpsc::UnboundedSender<Result<pb::WatchResponse, Status>>,
    queued_bytes: Arc<AtomicUsize>,
    /// Watch ids created with `fragment`.
    fragmenting: BTreeMap<i64, bool>,
    /// The `fragment` flags of creates not answered yet, in order (the hub answers each
    /// create once, in order, with the id it chose).
    creating: std::collections::VecDeque<bool>,
}

impl Sink {
    /// Queues the responses (the parts of one) if they fit; false if they do not, or the
    /// client is gone.
    fn offer(&mut self, responses: Vec<pb::WatchResponse>) -> bool {
        let bytes: usize = responses.iter().map(Message::encoded_len).sum();
        let queued = self.queued_bytes.load(Ordering::Acquire);
        if queued > 0 && queued + bytes > STREAM_BUFFER_BYTES {
            return false;
        }
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        responses
            .into_iter()
            .all(|response| self.responses.send(Ok(response)).is_ok())
    }
}

/// The member's watch hub on a task of its own (see the module docs).
#[derive(Clone)]
pub struct WatchTask {
    inputs: mpsc::UnboundedSender<Input>,
}

impl WatchTask {
    /// Starts the task; it stops when `stop` changes or the replica stops.
    pub fn spawn(
        feed: AppliedFeed<KvStore>,
        handle: Handle<KvStore>,
        settings: WatchSettings,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> (WatchTask, tokio::task::JoinHandle<()>) {
        let (inputs, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(feed, handle, receiver, settings, metrics, stop));
        (WatchTask { inputs }, task)
    }

    /// The gRPC service for this member's clients.
    pub fn service(
        &self,
        settings: &WatchSettings,
        metrics: Arc<Metrics>,
    ) -> pb::watch_server::WatchServer<WatchService> {
        pb::watch_server::WatchServer::new(WatchService {
            task: self.clone(),
            metrics,
            election_timeout: settings.election_timeout,
        })
    }
}

/// The store states the hub needs, followed only while it has watchers (see
/// [`crate::applied`]): with none, the replica's task publishes nothing.
struct Store {
    feed: AppliedFeed<KvStore>,
    handle: Handle<KvStore>,
    following: Option<Following<KvStore>>,
}

impl Store {
    /// The store as applied now, following the feed from here on. A client that saw its
    /// write acknowledged and then creates a watch finds the write here: the replica
    /// publishes a state before it answers, and a new follower reads the state first.
    async fn now(&mut self, hub: &mut WatchHub) -> Result<&KvStore, ServerError> {
        match &mut self.following {
            Some(following) => {
                if following.refresh() {
                    hub.advance(following.state());
                }
            }
            None => {
                let following = self.feed.follow(&self.handle).await?;
                hub.advance(following.state());
                self.following = Some(following);
            }
        }
        Ok(self.following.as_ref().expect("followed above").state())
    }

    /// Waits for the next applied state while following (forever while not).
    async fn changed(&mut self) -> Result<(), ServerError> {
        match &mut self.following {
            Some(following) => following.changed().await,
            None => std::future::pending().await,
        }
    }

    fn current(&self) -> Option<&KvStore> {
        self.following.as_ref().map(Following::state)
    }
}

async fn run(
    feed: AppliedFeed<KvStore>,
    handle: Handle<KvStore>,
    mut inputs: mpsc::UnboundedReceiver<Input>,
    settings: WatchSettings,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut store = Store {
        feed,
        handle,
        following: None,
    };
    // The hub starts at the store as applied now; it follows the store once it has a
    // watcher.
    let mut hub = match store.feed.follow(&store.handle).await {
        Ok(following) => WatchHub::new(following.state()),
        Err(_) => return,
    };
    let mut sinks: BTreeMap<StreamId, Sink> = BTreeMap::new();
    let mut catch_up = tokio::time::interval(CATCH_UP_INTERVAL);
    catch_up.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = tokio::time::interval_at(
        tokio::time::Instant::now() + settings.progress_interval,
        settings.progress_interval,
    );
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            changed = store.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = store.current().expect("a change comes only while following");
                hub.advance(current);
            }
            input = inputs.recv() => {
                let Some(input) = input else { break };
                // This one and whatever else is waiting, before flushing.
                let mut next = Some(input);
                let mut stopped = false;
                while let (Some(input), false) = (next.take(), stopped) {
                    stopped = on_input(&mut hub, &mut sinks, &mut store, input).await.is_err();
                    next = inputs.try_recv().ok();
                }
                if stopped {
                    break;
                }
            }
            _ = catch_up.tick() => {
                if let (true, Some(current)) = (hub.unsynced() > 0, store.current()) {
                    hub.catch_up(current);
                }
            }
            _ = progress.tick() => hub.progress_tick(),
        }
        let before = hub.stats();
        let mut closed = Vec::new();
        let all_taken = hub.flush(|output| {
            let Some(sink) = sinks.get_mut(&output.stream) else {
                return false;
            };
            let fragment = sink
                .fragmenting
                .get(&output.watch_id)
                .copied()
                .unwrap_or(false);
            if sink.responses.is_closed() {
                closed.push(output.stream);
                return false;
            }
            let responses = to_responses(&settings, &metrics, output, fragment);
            let taken = sink.offer(responses);
            if taken {
                match output.update {
                    WatchUpdate::Created { .. } if sink.creating.pop_front() == Some(true) => {
                        sink.fragmenting.insert(output.watch_id, true);
                    }
                    WatchUpdate::Refused { .. } => {
                        sink.creating.pop_front();
                    }
                    WatchUpdate::Canceled { .. } => {
                        sink.fragmenting.remove(&output.watch_id);
                    }
                    _ => {}
                }
            }
            taken
        });
        for stream in closed {
            sinks.remove(&stream);
            hub.close_stream(stream);
        }
        record(&metrics, &hub, before);
        // Caught-up responses were all taken: the next batch need not wait for the timer.
        if let (true, true, Some(current)) = (all_taken, hub.unsynced() > 0, store.current()) {
            hub.catch_up(current);
            tokio::task::yield_now().await;
        }
        if hub.is_empty() {
            // Nobody to tell: stop following, so the replica stops publishing.
            store.following = None;
        }
    }
    for (_, sink) in sinks {
        let _ = sink
            .responses
            .send(Err(Status::unavailable("etcdserver: server stopped")));
    }
}

/// Hands one stream request to the hub; fails only once the replica stopped.
async fn on_input(
    hub: &mut WatchHub,
    sinks: &mut BTreeMap<StreamId, Sink>,
    store: &mut Store,
    input: Input,
) -> Result<(), ServerError> {
    match input {
        Input::Open { sink, reply } => {
            let stream = hub.open_stream();
            sinks.insert(stream, sink);
            if reply.send(stream).is_err() {
                sinks.remove(&stream);
                hub.close_stream(stream);
            }
        }
        Input::Create {
            stream,
            watch_id,
            request,
            fragment,
        } => {
            if let Some(sink) = sinks.get_mut(&stream) {
                sink.creating.push_back(fragment);
            }
            let current = store.now(hub).await?;
            hub.create(current, stream, watch_id, request);
        }
        Input::Cancel { stream, watch_id } => hub.cancel(stream, watch_id),
        Input::Progress { stream } => {
            // Answered with the revision as applied now.
            store.now(hub).await?;
            hub.request_progress(stream);
        }
        Input::Close { stream } => {
            sinks.remove(&stream);
            hub.close_stream(stream);
        }
    }
    Ok(())
}

fn record(metrics: &Metrics, hub: &WatchHub, before: synod_kv::WatchStats) {
    let after = hub.stats();
    metrics.watchers.set(hub.len() as i64);
    metrics.slow_watchers.set(hub.unsynced() as i64);
    metrics
        .watch_events_sent
        .inc_by(after.events_sent - before.events_sent);
    metrics.watch_stalls.inc_by(after.stalled - before.stalled);
    metrics
        .watch_compaction_cancels
        .inc_by(after.canceled_by_compaction - before.canceled_by_compaction);
}

fn header(settings: &WatchSettings, metrics: &Metrics, revision: i64) -> pb::ResponseHeader {
    pb::ResponseHeader {
        cluster_id: settings.cluster_id,
        member_id: settings.member_id,
        revision,
        raft_term: metrics.current_ballot.get().max(0) as u64,
    }
}

/// The gRPC responses for one hub output: one, or several fragments of a large one.
fn to_responses(
    settings: &WatchSettings,
    metrics: &Metrics,
    output: &WatchOutput,
    fragment: bool,
) -> Vec<pb::WatchResponse> {
    let mut response = pb::WatchResponse {
        watch_id: output.watch_id,
        ..pb::WatchResponse::default()
    };
    let revision = match &output.update {
        WatchUpdate::Created { revision } => {
            response.created = true;
            *revision
        }
        WatchUpdate::Refused { reason } => {
            response.created = true;
            response.canceled = true;
            response.cancel_reason = reason.clone();
            0
        }
        WatchUpdate::Events { revision, events } => {
            response.events = events.iter().map(event_to_proto).collect();
            *revision
        }
        WatchUpdate::Progress { revision } => *revision,
        WatchUpdate::Canceled {
            revision,
            compact_revision,
        } => {
            // As etcd: a watch canceled by compaction says so with `compact_revision`
            // alone, no reason.
            response.canceled = true;
            response.compact_revision = *compact_revision;
            *revision
        }
    };
    response.header = Some(header(settings, metrics, revision));
    if !fragment || response.encoded_len() <= settings.max_response_bytes {
        return vec![response];
    }
    // etcd's fragments: the events split in order, `fragment` set on all parts but the
    // last; the client joins them before handing the response on.
    let events = std::mem::take(&mut response.events);
    let mut parts = Vec::new();
    let mut part = response.clone();
    for event in events {
        if !part.events.is_empty()
            && part.encoded_len() + event.encoded_len() + 8 > settings.max_response_bytes
        {
            let mut full = std::mem::replace(&mut part, response.clone());
            full.fragment = true;
            parts.push(full);
        }
        part.events.push(event);
    }
    parts.push(part);
    parts
}

fn event_to_proto(event: &WatchEvent) -> mvccpb::Event {
    let kv = |kv: &synod_kv::KeyValue| mvccpb::KeyValue::from(kv);
    mvccpb::Event {
        r#type: match event.kind {
            EventKind::Put => mvccpb::event::EventType::Put,
            EventKind::Delete => mvccpb::event::EventType::Delete,
        } as i32,
        kv: Some(kv(&event.kv)),
        prev_kv: event.prev_kv.as_ref().map(kv),
    }
}

fn request_from_proto(create: &pb::WatchCreateRequest) -> WatchRequest {
    let filtered = |filter: FilterType| create.filters.contains(&(filter as i32));
    WatchRequest {
        key: create.key.clone().into(),
        range_end: create.range_end.clone().into(),
        start_revision: create.start_revision,
        prev_kv: create.prev_kv,
        no_put: filtered(FilterType::Noput),
        no_delete: filtered(FilterType::Nodelete),
        progress_notify: create.progress_notify,
    }
}

/// The `etcdserverpb.Watch` service of one member.
#[derive(Clone)]
pub struct WatchService {
    task: WatchTask,
    metrics: Arc<Metrics>,
    election_timeout: Duration,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = ResponseStream;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let require_leader = request
            .metadata()
            .get(REQUIRE_LEADER_KEY)
            .is_some_and(|value| value == "true");
        if require_leader && self.metrics.has_leader.get() == 0 {
            return Err(no_leader());
        }
        let mut requests = request.into_inner();
        let (responses, outgoing) = mpsc::unbounded_channel();
        let errors = responses.clone();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let (reply, opened) = oneshot::channel();
        self.task
            .inputs
            .send(Input::Open {
                sink: Sink {
                    responses,
                    queued_bytes: Arc::clone(&queued_bytes),
                    fragmenting: BTreeMap::new(),
                    creating: Default::default(),
                },
                reply,
            })
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        let stream = opened
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        if require_leader {
            tokio::spawn(monitor_leader(
                Arc::clone(&self.metrics),
                self.election_timeout,
                errors,
                self.task.inputs.clone(),
                stream,
            ));
        }
        let inputs = self.task.inputs.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                use pb::watch_request::RequestUnion;
                let input = match request.request_union {
                    Some(RequestUnion::CreateRequest(create)) => Input::Create {
                        stream,
                        watch_id: create.watch_id,
                        request: request_from_proto(&create),
                        fragment: create.fragment,
                    },
                    Some(RequestUnion::CancelRequest(cancel)) => Input::Cancel {
                        stream,
                        watch_id: cancel.watch_id,
                    },
                    Some(RequestUnion::ProgressRequest(_)) => Input::Progress { stream },
                    None => continue,
                };
                if inputs.send(input).is_err() {
                    return;
                }
            }
            let _ = inputs.send(Input::Close { stream });
        });
        let outgoing =
            tokio_stream::wrappers::UnboundedReceiverStream::new(outgoing).map(move |response| {
                if let Ok(response) = &response {
                    queued_bytes.fetch_sub(response.encoded_len(), Ordering::AcqRel);
                }
                response
            });
        Ok(Response::new(Box::pin(outgoing)))
    }
}

/// Ends a stream that requires a leader once its member has known none for three election
/// timeouts in a row (etcd's `monitorLeader`), so the client moves to a member that has.
async fn monitor_leader(
    metrics: Arc<Metrics>,
    election_timeout: Duration,
    responses: mpsc::UnboundedSender<Result<pb::WatchResponse, Status>>,
    inputs: mpsc::UnboundedSender<Input>,
    stream: StreamId,
) {
    let mut every = tokio::time::interval(election_timeout);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut without_leader = 0;
    loop {
        every.tick().await;
        if responses.is_closed() {
            return;
        }
        if metrics.has_leader.get() == 0 {
            without_leader += 1;
        } else {
            without_leader = 0;
        }
        if without_leader >= 3 {
            let _ = responses.send(Err(no_leader()));
            let _ = inputs.send(Input::Close { stream });
            return;
        }
    }
}
