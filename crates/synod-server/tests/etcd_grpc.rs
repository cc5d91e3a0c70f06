//! etcd's v3 gRPC API against an in-process three-node cluster, with a tonic client.

mod common;

use common::{get, kv, put, EtcdCluster};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::cluster_client::ClusterClient;
use synod_server::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;

fn prefix(key: &str) -> pb::RangeRequest {
    let mut end = key.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    pb::RangeRequest {
        key: key.into(),
        range_end: end,
        ..Default::default()
    }
}

fn keys(response: &pb::RangeResponse) -> Vec<String> {
    response
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_gets_and_deletes_follow_etcd_revision_rules() {
    let mut cluster = EtcdCluster::start(3).await;
    let mut client = kv(&cluster, 0).await;
    let first = client
        .put(put("fruit/apple", "red"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        first.header.as_ref().unwrap().revision,
        2,
        "the first write is revision 2"
    );
    client.put(put("fruit/banana", "yellow")).await.unwrap();
    let again = client
        .put(pb::PutRequest {
            prev_kv: true,
            ..put("fruit/apple", "green")
        })
        .await
        .unwrap()
        .into_inner();
    let previous = again.prev_kv.expect("prev_kv asked for");
    assert_eq!(previous.value, b"red");
    assert_eq!(again.header.unwrap().revision, 4);

    let apple = client.range(get("fruit/apple")).await.unwrap().into_inner();
    let kv = &apple.kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 4, 2));
    assert_eq!(kv.value, b"green");
    assert_eq!(apple.header.unwrap().revision, 4);

    let all = client.range(prefix("fruit/")).await.unwrap().into_inner();
    assert_eq!(keys(&all), ["fruit/apple", "fruit/banana"]);
    let limited = client
        .range(pb::RangeRequest {
            limit: 1,
            ..prefix("fruit/")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (keys(&limited).len(), limited.more, limited.count),
        (1, true, 2)
    );
    let counted = client
        .range(pb::RangeRequest {
            count_only: true,
            ..prefix("fruit/")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((counted.kvs.len(), counted.count), (0, 2));
    let keys_only = client
        .range(pb::RangeRequest {
            keys_only: true,
            ..prefix("fruit/")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));

    let deleted = client
        .delete_range(pb::DeleteRangeRequest {
            key: "fruit/banana".into(),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    assert_eq!(deleted.prev_kvs[0].value, b"yellow");
    assert_eq!(deleted.header.unwrap().revision, 5);

    let empty_key = client.put(put("", "x")).await.unwrap_err();
    assert_eq!(empty_key.code(), tonic::Code::InvalidArgument);
    assert!(empty_key.message().contains("key is not provided"));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_compare_value_version_and_revisions() {
    let mut cluster = EtcdCluster::start(3).await;
    let mut client = kv(&cluster, 1).await;
    client.put(put("lock", "free")).await.unwrap();
    let compare =
        |target: pb::compare::CompareTarget, union: pb::compare::TargetUnion| pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: target as i32,
            key: "lock".into(),
            target_union: Some(union),
            range_end: Vec::new(),
        };
    let put_op = |value: &str| pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(put("lock", value))),
    };
    let get_op = pb::RequestOp {
        request: Some(pb::request_op::Request::RequestRange(get("lock"))),
    };
    let taken = client
        .txn(pb::TxnRequest {
            compare: vec![
                compare(
                    pb::compare::CompareTarget::Value,
                    pb::compare::TargetUnion::Value("free".into()),
                ),
                compare(
                    pb::compare::CompareTarget::Version,
                    pb::compare::TargetUnion::Version(1),
                ),
                compare(
                    pb::compare::CompareTarget::Create,
                    pb::compare::TargetUnion::CreateRevision(2),
                ),
                compare(
                    pb::compare::CompareTarget::Mod,
                    pb::compare::TargetUnion::ModRevision(2),
                ),
            ],
            success: vec![put_op("taken"), get_op.clone()],
            failure: vec![get_op.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(taken.succeeded);
    assert_eq!(taken.header.unwrap().revision, 3);
    match &taken.responses[1].response {
        Some(pb::response_op::Response::ResponseRange(range)) => {
            assert_eq!(range.kvs[0].value, b"taken")
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    let refused = client
        .txn(pb::TxnRequest {
            compare: vec![compare(
                pb::compare::CompareTarget::Value,
                pb::compare::TargetUnion::Value("free".into()),
            )],
            success: vec![put_op("stolen")],
            failure: vec![get_op],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.succeeded);
    match &refused.responses[0].response {
        Some(pb::response_op::Response::ResponseRange(range)) => {
            assert_eq!(range.kvs[0].value, b"taken")
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    assert_eq!(
        refused.header.unwrap().revision,
        3,
        "a failed compare writes nothing"
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_serve_writes_and_reads_through_the_leader() {
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    let mut writer = kv(&cluster, followers[0]).await;
    let mut reader = kv(&cluster, followers[1]).await;
    for round in 0..5 {
        let value = format!("v{round}");
        writer.put(put("shared", &value)).await.unwrap();
        // Linearizable: the other follower sees the write that was just acknowledged.
        let seen = reader.range(get("shared")).await.unwrap().into_inner();
        assert_eq!(seen.kvs[0].value, value.as_bytes());
    }
    let serializable = reader
        .range(pb::RangeRequest {
            serializable: true,
            ..get("shared")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serializable.kvs.len(), 1, "a local read finds the key");
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_at_survivors_succeed_while_the_leader_is_gone() {
    let mut cluster = EtcdCluster::start(3).await;
    kv(&cluster, 0).await.put(put("before", "1")).await.unwrap();
    let leader = cluster.wait_for_leader().await;
    let survivors: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
    let mut clients = Vec::new();
    for index in &survivors {
        clients.push(kv(&cluster, *index).await);
    }
    cluster.stop(leader).await;
    for round in 0..6 {
        let client = &mut clients[round % 2];
        let response = client
            .put(put(&format!("after/{round}"), "x"))
            .await
            .expect("no client-visible error during failover");
        assert!(response.into_inner().header.unwrap().revision >= 3);
    }
    let all = clients[0]
        .range(prefix("after/"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.count, 6);
    let before = clients[1].range(get("before")).await.unwrap().into_inner();
    assert_eq!(
        before.kvs[0].value, b"1",
        "acknowledged before the failover, kept"
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_keeps_acknowledged_writes() {
    let mut cluster = EtcdCluster::start(3).await;
    let mut client = kv(&cluster, 2).await;
    for index in 0..5 {
        client
            .put(put(&format!("durable/{index}"), "v"))
            .await
            .unwrap();
    }
    cluster.stop_all().await;
    for index in 0..3 {
        cluster.restart(index).await;
    }
    let mut client = kv(&cluster, 0).await;
    let all = client.range(prefix("durable/")).await.unwrap().into_inner();
    assert_eq!(all.count, 5);
    assert_eq!(all.header.unwrap().revision, 6);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_member_list_and_unserved_methods() {
    let mut cluster = EtcdCluster::start(3).await;
    kv(&cluster, 0).await.put(put("k", "v")).await.unwrap();
    let leader = cluster.wait_for_leader().await;
    for index in 0..3 {
        // A linearizable read makes this node apply the put before its status is asked.
        kv(&cluster, index).await.range(get("k")).await.unwrap();
        let status = MaintenanceClient::connect(cluster.endpoint(index))
            .await
            .unwrap()
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let header = status.header.unwrap();
        assert_eq!(status.leader, leader as u64 + 1);
        assert_eq!(header.member_id == status.leader, index == leader);
        assert!(status.raft_applied_index >= 1);
        assert_eq!(status.version, "3.5.0");
    }
    let members = ClusterClient::connect(cluster.endpoint(1))
        .await
        .unwrap()
        .member_list(pb::MemberListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 3);
    for member in &members {
        assert_eq!(
            member.client_ur_ls,
            [cluster.endpoint(member.id as usize - 1)]
        );
        assert_eq!(member.name, format!("n{}", member.id));
    }

    let member_add = ClusterClient::connect(cluster.endpoint(0))
        .await
        .unwrap()
        .member_add(pb::Unserved {})
        .await
        .unwrap_err();
    assert_eq!(member_add.code(), tonic::Code::Unimplemented);
    assert!(
        member_add.message().contains("not served by synod"),
        "{}",
        member_add.message()
    );

    // A whole service synod does not serve (etcd's Auth), called by raw path.
    let channel = Channel::from_shared(cluster.endpoint(0))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.Auth/Authenticate");
    let error = grpc
        .unary::<pb::Unserved, pb::Unserved, _>(
            tonic::Request::new(pb::Unserved {}),
            path,
            tonic::codec::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unimplemented);
    assert!(
        error.message().contains("/etcdserverpb.Auth/Authenticate"),
        "{}",
        error.message()
    );
    cluster.stop_all().await;
}
