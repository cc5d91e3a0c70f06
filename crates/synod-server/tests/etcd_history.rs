//! The KV history through etcd's gRPC API: reads at old revisions, `Compact` and its errors,
//! auto-compaction, and the quota with its NOSPACE alarm, against in-process clusters.

mod common;

use std::time::{Duration, Instant};

use common::{kv, put, EtcdCluster};
use synod_server::compactor::CompactionPolicy;
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::maintenance_client::MaintenanceClient;

fn get_at(key: &str, revision: i64) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.into(),
        revision,
        ..Default::default()
    }
}

fn compact(revision: i64) -> pb::CompactionRequest {
    pb::CompactionRequest {
        revision,
        physical: true,
    }
}

fn assert_status(error: &tonic::Status, code: tonic::Code, message: &str) {
    assert_eq!(error.code(), code, "{error:?}");
    assert_eq!(error.message(), message);
}

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_revisions_read_until_compacted_with_etcds_errors() {
    let mut cluster = EtcdCluster::start(3).await;
    let mut client = kv(&cluster, 0).await;
    for value in ["v1", "v2", "v3"] {
        client.put(put("k", value)).await.unwrap(); // revisions 2, 3, 4
    }
    let at_three = client.range(get_at("k", 3)).await.unwrap().into_inner();
    let old = &at_three.kvs[0];
    assert_eq!(
        (
            old.value.as_slice(),
            old.create_revision,
            old.mod_revision,
            old.version
        ),
        (&b"v2"[..], 2, 3, 2)
    );
    assert_eq!(
        at_three.header.unwrap().revision,
        4,
        "the header says the current revision"
    );
    // A serializable read at a follower sees the same history once it applied revision 4.
    let mut follower = kv(&cluster, 1).await;
    follower.range(get_at("k", 0)).await.unwrap();
    let serializable = pb::RangeRequest {
        serializable: true,
        ..get_at("k", 2)
    };
    let old = follower.range(serializable).await.unwrap().into_inner();
    assert_eq!(old.kvs[0].value, b"v1");

    let future = client.range(get_at("k", 5)).await.unwrap_err();
    assert_status(&future, tonic::Code::OutOfRange, FUTURE);

    let compacted = client.compact(compact(3)).await.unwrap().into_inner();
    assert_eq!(compacted.header.unwrap().revision, 4);
    let below = client.range(get_at("k", 2)).await.unwrap_err();
    assert_status(&below, tonic::Code::OutOfRange, COMPACTED);
    // The compacted revision itself still reads, at every member.
    for index in 0..3 {
        let at = kv(&cluster, index)
            .await
            .range(get_at("k", 3))
            .await
            .unwrap();
        assert_eq!(at.into_inner().kvs[0].value, b"v2");
    }
    let again = client.compact(compact(3)).await.unwrap_err();
    assert_status(&again, tonic::Code::OutOfRange, COMPACTED);
    let ahead = client.compact(compact(9)).await.unwrap_err();
    assert_status(&ahead, tonic::Code::OutOfRange, FUTURE);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_is_proposed_by_the_leader() {
    let mut cluster = EtcdCluster::start_with(3, |config| {
        config.auto_compaction = Some(CompactionPolicy::Periodic(Duration::from_millis(500)));
    })
    .await;
    let mut client = kv(&cluster, 0).await;
    client.put(put("k", "v1")).await.unwrap();
    client.put(put("k", "v2")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        client.put(put("k", "again")).await.unwrap();
        match client.range(get_at("k", 2)).await {
            Err(error) => {
                assert_status(&error, tonic::Code::OutOfRange, COMPACTED);
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline, "no auto-compaction within 20 s"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_quota_writes_fail_until_compaction_and_disarm() {
    let mut cluster = EtcdCluster::start_with(3, |config| {
        config.quota_backend_bytes = 4096;
    })
    .await;
    let mut client = kv(&cluster, 0).await;
    let value = "x".repeat(500);
    let mut revision = 1;
    let refused = loop {
        match client.put(put("big", &value)).await {
            Ok(response) => revision = response.into_inner().header.unwrap().revision,
            Err(error) => break error,
        }
        assert!(revision < 100, "the quota never refused a write");
    };
    assert_status(
        &refused,
        tonic::Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    let mut maintenance = MaintenanceClient::connect(cluster.endpoint(1))
        .await
        .unwrap();
    let get = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Get as i32,
        member_id: 0,
        alarm: pb::AlarmType::None as i32,
    };
    // The follower may apply the refused put a moment after the leader answered.
    let deadline = Instant::now() + Duration::from_secs(10);
    let alarms = loop {
        let alarms = maintenance.alarm(get).await.unwrap().into_inner().alarms;
        if !alarms.is_empty() || Instant::now() > deadline {
            break alarms;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(alarms.len(), 3, "every member holds NOSPACE: {alarms:?}");
    assert!(alarms
        .iter()
        .all(|alarm| alarm.alarm == pb::AlarmType::Nospace as i32));
    // A small write is refused too while the alarm is raised; compaction is not.
    let small = client.put(put("small", "")).await.unwrap_err();
    assert_eq!(small.code(), tonic::Code::ResourceExhausted);
    client.compact(compact(revision)).await.unwrap();
    let disarm = pb::AlarmRequest {
        action: pb::alarm_request::AlarmAction::Deactivate as i32,
        member_id: alarms[0].member_id,
        alarm: pb::AlarmType::Nospace as i32,
    };
    let cleared = maintenance.alarm(disarm).await.unwrap().into_inner().alarms;
    assert_eq!(cleared.len(), 1);
    client.put(put("small", "fits")).await.unwrap();
    cluster.stop_all().await;
}

/// Maintenance.Status reports the quota's estimate of the retained history as the database
/// size (etcd reports its backend's): it grows with every revision and shrinks when a
/// compaction drops them, on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_the_history_estimate_as_the_database_size() {
    use synod_kv::{EVENT_OVERHEAD_BYTES, KEY_OVERHEAD_BYTES};
    let mut cluster = EtcdCluster::start(3).await;
    let mut client = kv(&cluster, 0).await;
    let value = "x".repeat(500);
    let mut revision = 0;
    for _ in 0..3 {
        let response = client.put(put("k", &value)).await.unwrap().into_inner();
        revision = response.header.unwrap().revision;
    }
    let key_bytes = KEY_OVERHEAD_BYTES + 1;
    let event_bytes = EVENT_OVERHEAD_BYTES + 500;
    assert_database_sizes(&cluster, key_bytes + 3 * event_bytes).await;
    client.compact(compact(revision)).await.unwrap();
    assert_database_sizes(&cluster, key_bytes + event_bytes).await;
    cluster.stop_all().await;
}

/// Every member's Status shows `expected` as `db_size` and `db_size_in_use`.
async fn assert_database_sizes(cluster: &EtcdCluster, expected: u64) {
    for index in 0..3 {
        // A linearizable read makes this member apply what came before.
        kv(cluster, index)
            .await
            .range(get_at("k", 0))
            .await
            .unwrap();
        let status = MaintenanceClient::connect(cluster.endpoint(index))
            .await
            .unwrap()
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (status.db_size, status.db_size_in_use),
            (expected as i64, expected as i64),
            "member {index}"
        );
    }
}
