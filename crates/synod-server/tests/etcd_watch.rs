//! etcd's Watch service through gRPC against in-process three-member clusters: history and
//! live events at a follower, one response per txn, prev_kv and filters, cancel, many
//! watches per stream, progress, fragments, compaction, and a client that stops reading.

mod common;

use std::time::Duration;

use common::{kv, EtcdCluster};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use synod_server::proto::etcdserverpb::watch_client::WatchClient;
use synod_server::proto::etcdserverpb::watch_create_request::FilterType;
use synod_server::proto::etcdserverpb::watch_request::RequestUnion;
use synod_server::proto::mvccpb::event::EventType;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Streaming;

async fn put(client: &mut KvClient<Channel>, key: &str, value: &str) -> i64 {
    let response = client
        .put(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
        .expect("put")
        .into_inner();
    response.header.unwrap().revision
}

/// One watch stream: requests in, responses out.
struct Stream {
    requests: mpsc::Sender<pb::WatchRequest>,
    responses: Streaming<pb::WatchResponse>,
}

impl Stream {
    async fn open(cluster: &EtcdCluster, index: usize) -> Stream {
        Stream::open_with(cluster, index, false)
            .await
            .expect("watch")
    }

    /// With `require_leader`, as `clientv3.WithRequireLeader`: the `hasleader` metadata.
    async fn open_with(
        cluster: &EtcdCluster,
        index: usize,
        require_leader: bool,
    ) -> Result<Stream, tonic::Status> {
        let mut client = WatchClient::connect(cluster.endpoint(index))
            .await
            .expect("connect");
        let (requests, receiver) = mpsc::channel(16);
        let mut request = tonic::Request::new(ReceiverStream::new(receiver));
        if require_leader {
            request
                .metadata_mut()
                .insert("hasleader", "true".parse().unwrap());
        }
        let responses = client.watch(request).await?.into_inner();
        Ok(Stream {
            requests,
            responses,
        })
    }

    async fn send(&self, request: RequestUnion) {
        self.requests
            .send(pb::WatchRequest {
                request_union: Some(request),
            })
            .await
            .expect("send");
    }

    async fn create(&self, create: pb::WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(create)).await;
    }

    /// Cancels `watch_id` and returns etcd's answer (`canceled`).
    async fn cancel(&mut self, watch_id: i64) -> pb::WatchResponse {
        self.send(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id,
        }))
        .await;
        self.next().await
    }

    async fn next(&mut self) -> pb::WatchResponse {
        tokio::time::timeout(Duration::from_secs(20), self.responses.message())
            .await
            .expect("a response within 20 s")
            .expect("the stream is healthy")
            .expect("the stream is open")
    }

    /// Responses until `count` events arrived for `watch_id`.
    async fn events(&mut self, watch_id: i64, count: usize) -> Vec<pb::WatchResponse> {
        let mut seen = 0;
        let mut responses = Vec::new();
        while seen < count {
            let response = self.next().await;
            if response.watch_id == watch_id {
                seen += response.events.len();
            }
            responses.push(response);
        }
        responses
    }
}

fn create(key: &str) -> pb::WatchCreateRequest {
    pb::WatchCreateRequest {
        key: key.into(),
        ..Default::default()
    }
}

fn prefix(key: &str) -> pb::WatchCreateRequest {
    let mut end = key.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    pb::WatchCreateRequest {
        key: key.into(),
        range_end: end,
        ..Default::default()
    }
}

fn summary(response: &pb::WatchResponse) -> Vec<(i32, String, String, i64)> {
    response
        .events
        .iter()
        .map(|event| {
            let kv = event.kv.as_ref().unwrap();
            (
                event.r#type,
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

const PUT: i32 = EventType::Put as i32;
const DELETE: i32 = EventType::Delete as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_replays_history_then_streams_live_events_with_prev_kv() {
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut client = kv(&cluster, leader).await;
    let first = put(&mut client, "k", "v1").await;
    put(&mut client, "k", "v2").await;
    let mut stream = Stream::open(&cluster, follower).await;
    stream
        .create(pb::WatchCreateRequest {
            start_revision: first,
            prev_kv: true,
            ..create("k")
        })
        .await;
    let created = stream.next().await;
    assert!(created.created, "{created:?}");
    assert_eq!(created.watch_id, 0);
    client
        .delete_range(pb::DeleteRangeRequest {
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let responses = stream.events(0, 3).await;
    let events: Vec<_> = responses.iter().flat_map(summary).collect();
    assert_eq!(
        events,
        vec![
            (PUT, "k".into(), "v1".into(), first),
            (PUT, "k".into(), "v2".into(), first + 1),
            (DELETE, "k".into(), "".into(), first + 2),
        ]
    );
    let all: Vec<_> = responses.iter().flat_map(|r| r.events.clone()).collect();
    assert!(all[0].prev_kv.is_none(), "a creation has no previous state");
    assert_eq!(all[1].prev_kv.as_ref().unwrap().value, b"v1");
    assert_eq!(all[2].prev_kv.as_ref().unwrap().value, b"v2");
    let header = responses.last().unwrap().header.unwrap();
    assert_eq!(header.member_id, cluster.node(follower).server().node_id());
    assert_eq!(header.revision, first + 2);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txn_arrives_in_one_response_and_filters_cancel_and_ids_follow_etcd() {
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = kv(&cluster, leader).await;
    let mut stream = Stream::open(&cluster, 0).await;
    stream.create(prefix("job/")).await;
    stream
        .create(pb::WatchCreateRequest {
            filters: vec![FilterType::Noput as i32],
            ..prefix("job/")
        })
        .await;
    stream
        .create(pb::WatchCreateRequest {
            watch_id: 7,
            ..create("job/a")
        })
        .await;
    stream
        .create(pb::WatchCreateRequest {
            watch_id: 7,
            ..create("job/b")
        })
        .await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        let response = stream.next().await;
        answers.push((response.watch_id, response.created, response.canceled));
    }
    assert_eq!(
        answers,
        vec![
            (0, true, false),
            (1, true, false),
            (7, true, false),
            (-1, true, true)
        ],
        "automatic ids from 0; a duplicate id is refused"
    );
    let put = |key: &str| pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key: key.into(),
            value: b"x".to_vec(),
            ..Default::default()
        })),
    };
    let txn = client
        .txn(pb::TxnRequest {
            compare: Vec::new(),
            success: vec![put("job/b"), put("job/a"), put("elsewhere")],
            failure: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let revision = txn.header.unwrap().revision;
    let mut by_watch = std::collections::BTreeMap::new();
    while by_watch.len() < 2 {
        let response = stream.next().await;
        by_watch.insert(response.watch_id, summary(&response));
    }
    assert_eq!(
        by_watch[&0],
        vec![
            (PUT, "job/b".into(), "x".into(), revision),
            (PUT, "job/a".into(), "x".into(), revision),
        ],
        "one response, in write order"
    );
    assert_eq!(
        by_watch[&7],
        vec![(PUT, "job/a".into(), "x".into(), revision)]
    );
    // Cancel watch 0: etcd answers with `canceled`, and it sends nothing more.
    let canceled = stream.cancel(0).await;
    assert_eq!((canceled.watch_id, canceled.canceled), (0, true));
    client
        .delete_range(pb::DeleteRangeRequest {
            key: "job/".into(),
            range_end: "job0".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut deletes = Vec::new();
    while deletes.len() < 2 {
        let response = stream.next().await;
        assert_ne!(response.watch_id, 0, "canceled: {response:?}");
        deletes.push((response.watch_id, response.events.len()));
    }
    deletes.sort();
    assert_eq!(deletes, vec![(1, 2), (7, 1)], "NOPUT sees only the deletes");
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_start_is_canceled_with_the_compact_revision_and_progress_is_answered() {
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = kv(&cluster, leader).await;
    let first = put(&mut client, "c", "1").await;
    let last = put(&mut client, "c", "2").await;
    client
        .compact(pb::CompactionRequest {
            revision: last,
            physical: true,
        })
        .await
        .unwrap();
    // At the leader, which applied the compaction before it answered.
    let mut stream = Stream::open(&cluster, leader).await;
    stream
        .create(pb::WatchCreateRequest {
            start_revision: first,
            ..create("c")
        })
        .await;
    assert!(stream.next().await.created);
    let canceled = stream.next().await;
    assert!(canceled.canceled, "{canceled:?}");
    assert_eq!(canceled.compact_revision, last);
    // At the compacted revision itself: the put it kept, then live events.
    stream
        .create(pb::WatchCreateRequest {
            start_revision: last,
            ..create("c")
        })
        .await;
    assert!(stream.next().await.created);
    let kept = stream.next().await;
    assert_eq!(summary(&kept), vec![(PUT, "c".into(), "2".into(), last)]);
    // A progress request: watch id -1 and a revision every watcher has been sent.
    stream
        .send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    let progress = stream.next().await;
    assert_eq!(progress.watch_id, -1);
    assert!(progress.events.is_empty());
    assert!(progress.header.unwrap().revision >= last);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_and_fragments_follow_etcd() {
    let mut cluster = EtcdCluster::start_with(3, |config| {
        config.watch_progress_notify_interval = Duration::from_millis(300);
        config.max_request_bytes = 64 * 1024;
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    let mut client = kv(&cluster, leader).await;
    let mut stream = Stream::open(&cluster, leader).await;
    stream
        .create(pb::WatchCreateRequest {
            progress_notify: true,
            ..create("quiet")
        })
        .await;
    assert!(stream.next().await.created);
    let progress = stream.next().await;
    assert_eq!(progress.watch_id, 0);
    assert!(
        progress.events.is_empty() && !progress.canceled,
        "{progress:?}"
    );
    // Ten 30 KiB values under one prefix, then a fragmenting watch from history.
    let mut first = 0;
    for index in 0..10 {
        let revision = put(&mut client, &format!("big/{index}"), &"x".repeat(30 * 1024)).await;
        if index == 0 {
            first = revision;
        }
    }
    let mut fragments = Stream::open(&cluster, leader).await;
    fragments
        .create(pb::WatchCreateRequest {
            start_revision: first,
            fragment: true,
            ..prefix("big/")
        })
        .await;
    assert!(fragments.next().await.created);
    let responses = fragments.events(0, 10).await;
    assert!(responses.len() > 1, "split in fragments");
    let (last, parts) = responses.split_last().unwrap();
    assert!(parts.iter().all(|part| part.fragment) && !last.fragment);
    assert!(responses.iter().all(|r| r.events.len() < 10));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_up_neither_writes_nor_other_watchers() {
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = kv(&cluster, leader).await;
    let mut stuck = Stream::open(&cluster, leader).await;
    stuck.create(create("hot")).await;
    assert!(stuck.next().await.created);
    let mut reading = Stream::open(&cluster, leader).await;
    reading.create(create("hot")).await;
    assert!(reading.next().await.created);
    // 2,000 writes of 8 KiB: 16 MiB of events, far beyond one stream's buffer.
    let value = "v".repeat(8 * 1024);
    let mut last = 0;
    let mut received = 0;
    for _ in 0..2000 {
        last = put(&mut client, "hot", &value).await;
        // Take what has arrived without waiting (the timeout polls the read once).
        while let Ok(Ok(Some(response))) =
            tokio::time::timeout(Duration::ZERO, reading.responses.message()).await
        {
            received += response.events.len();
        }
    }
    while received < 2000 {
        received += reading.next().await.events.len();
    }
    assert_eq!(received, 2000, "the reading watcher got every event");
    let metrics = cluster.node(leader).server().metrics();
    assert!(
        metrics.watch_stalls.get() > 0,
        "the stuck stream's buffer filled and its watch fell behind"
    );
    // The stuck stream reads again: every revision, in order, once.
    let mut revisions = Vec::new();
    while revisions.last() != Some(&last) {
        let response = stuck.next().await;
        revisions.extend(
            response
                .events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision),
        );
    }
    assert_eq!(revisions.len(), 2000);
    assert!(revisions.windows(2).all(|pair| pair[1] == pair[0] + 1));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_requires_a_leader_ends_when_its_member_has_none() {
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut stream = Stream::open_with(&cluster, follower, true)
        .await
        .expect("a member with a leader serves it");
    stream.create(create("k")).await;
    assert!(stream.next().await.created);
    // Without a quorum the follower soon knows no leader; after three election timeouts
    // without one, etcd's answer: the stream ends with "no leader".
    for index in 0..3 {
        if index != follower {
            cluster.stop(index).await;
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(30), stream.responses.message())
        .await
        .expect("the stream ends within 30 s");
    let status = ended.expect_err("ended with an error");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "etcdserver: no leader");
    // A new stream that requires a leader is refused at once.
    let refused = Stream::open_with(&cluster, follower, true).await;
    assert_eq!(
        refused.err().map(|status| status.message().to_string()),
        Some("etcdserver: no leader".to_string())
    );
    cluster.stop_all().await;
}

/// Waits until the member's watch task stopped following its applied store.
async fn until_unfollowed(cluster: &EtcdCluster, index: usize) {
    let feed = cluster.node(index).applied();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while feed.followers() > 0 || feed.holds_state() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still followed by {} after 10 s",
            feed.followers()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// With no watcher a member publishes no store states (each would cost the next write a
/// copy of what it touches). A watch created after a write was acknowledged still starts
/// after that write, and one that asks for a revision written meanwhile finds it in history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_created_while_nobody_watched_starts_after_the_acknowledged_writes() {
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = kv(&cluster, leader).await;
    // An open stream without a watch follows nothing.
    let mut stream = Stream::open(&cluster, leader).await;
    let mut last = 0;
    for i in 0..20 {
        last = put(&mut client, "q", &i.to_string()).await;
    }
    until_unfollowed(&cluster, leader).await;

    stream.create(create("q")).await;
    let created = stream.next().await;
    assert!(created.created, "{created:?}");
    assert!(created.header.unwrap().revision >= last);
    assert_eq!(cluster.node(leader).applied().followers(), 1);
    let after = put(&mut client, "q", "after").await;
    assert_eq!(after, last + 1);
    let first = stream.next().await;
    assert_eq!(
        summary(&first),
        vec![(PUT, "q".into(), "after".into(), after)],
        "the first event is the first write after the watch, none acknowledged before it"
    );

    // Canceled, the last watch lets go of the store; a revision written meanwhile comes
    // from history to the next watch that asks for it.
    assert!(stream.cancel(first.watch_id).await.canceled);
    until_unfollowed(&cluster, leader).await;
    let unwatched = put(&mut client, "q", "unwatched").await;
    stream
        .create(pb::WatchCreateRequest {
            start_revision: unwatched,
            ..create("q")
        })
        .await;
    assert!(stream.next().await.created);
    let replayed = stream.next().await;
    assert_eq!(
        summary(&replayed),
        vec![(PUT, "q".into(), "unwatched".into(), unwatched)]
    );
    // A progress request with no watch answers the revision as applied now.
    assert!(stream.cancel(replayed.watch_id).await.canceled);
    until_unfollowed(&cluster, leader).await;
    let latest = put(&mut client, "other", "x").await;
    stream
        .send(RequestUnion::ProgressRequest(pb::WatchProgressRequest {}))
        .await;
    let progress = stream.next().await;
    assert_eq!(progress.watch_id, -1);
    assert_eq!(progress.header.unwrap().revision, latest);
    cluster.stop_all().await;
}
