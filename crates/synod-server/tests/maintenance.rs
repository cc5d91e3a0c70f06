//! etcd's Maintenance API on a three-member cluster: Hash and HashKV agree across members,
//! alarms of every type are replicated, Defragment succeeds, and a Snapshot restores into a
//! new cluster with the same keys and revisions — through gRPC, and through etcdctl 3.4
//! (skipped loudly when it is missing, failed under CI=true).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{etcd_available, etcdctl_available, get, kv, put, EtcdCluster};
use synod_server::proto::etcdserverpb as pb;
use synod_server::proto::etcdserverpb::kv_client::KvClient;
use synod_server::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

async fn maintenance(cluster: &EtcdCluster, index: usize) -> MaintenanceClient<Channel> {
    MaintenanceClient::connect(cluster.endpoint(index))
        .await
        .expect("connect")
}

/// Every member's HashKV at `revision`, once all of them answer the same (members apply
/// the log at their own pace), or what they answered at the deadline.
async fn hashes_once_agreed(cluster: &EtcdCluster, revision: i64) -> Vec<pb::HashKvResponse> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut answers = Vec::new();
        for index in 0..3 {
            let request = pb::HashKvRequest { revision };
            match maintenance(cluster, index).await.hash_kv(request).await {
                Ok(response) => answers.push(response.into_inner()),
                Err(_) if Instant::now() < deadline => break,
                Err(error) => panic!("HashKV failed: {error}"),
            }
        }
        let agreed = answers.len() == 3
            && answers.iter().all(|answer| {
                (answer.hash, answer.hash_revision) == (answers[0].hash, answers[0].hash_revision)
            });
        if agreed || Instant::now() > deadline {
            return answers;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_kv_agrees_on_every_member_and_refuses_future_and_compacted_revisions() {
    let mut cluster = EtcdCluster::start(3).await;
    let mut client = kv(&cluster, 0).await;
    for (key, value) in [("a", "1"), ("b", "2"), ("a", "3")] {
        client.put(put(key, value)).await.unwrap();
    }
    let revision = client
        .range(get("a"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap()
        .revision;
    let answers = hashes_once_agreed(&cluster, 0).await;
    assert_eq!(answers.len(), 3);
    for answer in &answers {
        assert_eq!(answer.hash, answers[0].hash, "{answers:?}");
        assert_eq!(answer.hash_revision, revision);
        assert_eq!(answer.compact_revision, 0);
    }
    // A hash at an older revision does not move with later writes.
    let at_three = hashes_once_agreed(&cluster, 3).await[0].hash;
    client.put(put("c", "4")).await.unwrap();
    assert_ne!(
        hashes_once_agreed(&cluster, 0).await[0].hash,
        answers[0].hash
    );
    assert_eq!(hashes_once_agreed(&cluster, 3).await[0].hash, at_three);

    let mut admin = maintenance(&cluster, 1).await;
    let future = admin
        .hash_kv(pb::HashKvRequest { revision: 1000 })
        .await
        .unwrap_err();
    assert_eq!(future.code(), tonic::Code::OutOfRange);
    assert_eq!(
        future.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    client
        .compact(pb::CompactionRequest {
            revision: 4,
            physical: true,
        })
        .await
        .unwrap();
    let compacted = hashes_once_agreed(&cluster, 0).await;
    assert!(
        compacted.iter().all(|answer| answer.compact_revision == 4),
        "{compacted:?}"
    );
    let below = admin
        .hash_kv(pb::HashKvRequest { revision: 3 })
        .await
        .unwrap_err();
    assert_eq!(below.code(), tonic::Code::OutOfRange);
    assert_eq!(
        below.message(),
        "etcdserver: mvcc: required revision has been compacted"
    );

    let hash = admin.hash(pb::HashRequest {}).await.unwrap().into_inner();
    assert!(hash.header.is_some());
    let defragmented = admin.defragment(pb::DefragmentRequest {}).await.unwrap();
    // etcd answers an empty DefragmentResponse (the Rust client's suite checks it).
    assert!(defragmented.into_inner().header.is_none());
    cluster.stop_all().await;
}

fn alarm(
    action: pb::alarm_request::AlarmAction,
    member_id: u64,
    alarm: pb::AlarmType,
) -> pb::AlarmRequest {
    pb::AlarmRequest {
        action: action as i32,
        member_id,
        alarm: alarm as i32,
    }
}

/// What the Python etcd3 suite's TestAlarms does (member 0 and a member's id, each listed
/// as given), and CORRUPT, which refuses writes as etcd's corrupt applier does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_of_every_type_are_replicated_listed_by_member_and_corrupt_refuses_writes() {
    use pb::alarm_request::AlarmAction::{Activate, Deactivate, Get};
    let mut cluster = EtcdCluster::start(3).await;
    let mut admin = maintenance(&cluster, 0).await;
    let raised = admin
        .alarm(alarm(Activate, 0, pb::AlarmType::Nospace))
        .await
        .unwrap();
    let raised = raised.into_inner().alarms;
    assert_eq!(raised.len(), 1);
    assert_eq!(
        (raised[0].member_id, raised[0].alarm),
        (0, pb::AlarmType::Nospace as i32)
    );
    admin
        .alarm(alarm(Activate, 2, pb::AlarmType::Nospace))
        .await
        .unwrap();
    admin
        .alarm(alarm(Activate, 3, pb::AlarmType::Corrupt))
        .await
        .unwrap();
    let again = admin
        .alarm(alarm(Activate, 3, pb::AlarmType::Corrupt))
        .await
        .unwrap();
    assert!(again.into_inner().alarms.is_empty(), "already raised");
    let expected = vec![
        (0, pb::AlarmType::Nospace as i32),
        (2, pb::AlarmType::Nospace as i32),
        (3, pb::AlarmType::Corrupt as i32),
    ];
    for index in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut member = maintenance(&cluster, index).await;
        loop {
            let listed: Vec<(u64, i32)> = member
                .alarm(alarm(Get, 0, pb::AlarmType::None))
                .await
                .unwrap()
                .into_inner()
                .alarms
                .iter()
                .map(|alarm| (alarm.member_id, alarm.alarm))
                .collect();
            if listed == expected {
                break;
            }
            assert!(Instant::now() < deadline, "member {index} lists {listed:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let corrupt_only = admin
        .alarm(alarm(Get, 0, pb::AlarmType::Corrupt))
        .await
        .unwrap();
    assert_eq!(corrupt_only.into_inner().alarms.len(), 1);

    let mut client = kv(&cluster, 1).await;
    let refused = client.put(put("k", "v")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DataLoss);
    assert_eq!(refused.message(), "etcdserver: corrupt cluster");
    client.range(get("k")).await.expect("reads still run");
    let cleared = admin
        .alarm(alarm(Deactivate, 3, pb::AlarmType::Corrupt))
        .await
        .unwrap();
    assert_eq!(cleared.into_inner().alarms.len(), 1);
    // NOSPACE (members 0 and 2) still refuses puts, not deletes.
    let nospace = client.put(put("k", "v")).await.unwrap_err();
    assert_eq!(nospace.code(), tonic::Code::ResourceExhausted);
    for member in [0, 2] {
        admin
            .alarm(alarm(Deactivate, member, pb::AlarmType::Nospace))
            .await
            .unwrap();
    }
    client.put(put("k", "v")).await.unwrap();
    cluster.stop_all().await;
}

/// The bytes of a Snapshot stream, checking its `remaining_bytes` count down to 0.
async fn snapshot_bytes(cluster: &EtcdCluster, index: usize) -> Vec<u8> {
    let mut stream = maintenance(cluster, index)
        .await
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    let mut remaining = u64::MAX;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        bytes.extend_from_slice(&chunk.blob);
        assert!(chunk.remaining_bytes < remaining);
        remaining = chunk.remaining_bytes;
    }
    assert_eq!(remaining, 0);
    bytes
}

/// Every key's (key, value, create_revision, mod_revision, version) and the revision, read
/// linearizably from member `index`.
async fn everything(
    cluster: &EtcdCluster,
    index: usize,
) -> (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)>) {
    everything_at(&cluster.client_addrs[index].to_string()).await
}

/// [`everything`] from the server at `endpoint` (host:port), Synod or etcd.
async fn everything_at(endpoint: &str) -> (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64)>) {
    let response = KvClient::connect(format!("http://{endpoint}"))
        .await
        .unwrap()
        .range(pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys = response
        .kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect();
    (response.header.unwrap().revision, keys)
}

/// What [`lease_compaction_and_a_later_put`] left, as the server at `endpoint` (Synod or
/// etcd, restored from the other's snapshot) serves it: `a` at revision 4 reads "3",
/// revision 3 is compacted, the lease has its TTL and its key.
async fn assert_compaction_and_lease(endpoint: &str, lease: i64) {
    use synod_server::proto::etcdserverpb::lease_client::LeaseClient;
    let mut client = KvClient::connect(format!("http://{endpoint}"))
        .await
        .unwrap();
    let at = |revision| pb::RangeRequest {
        key: "a".into(),
        revision,
        ..Default::default()
    };
    let old = client.range(at(4)).await.unwrap().into_inner();
    assert_eq!(old.kvs[0].value, b"3");
    assert_eq!(old.kvs[0].mod_revision, 4);
    let compacted = client.range(at(3)).await.unwrap_err();
    assert!(compacted.message().contains("compacted"), "{compacted:?}");
    let leased = client.range(get("leased")).await.unwrap().into_inner();
    assert_eq!(leased.kvs[0].lease, lease);
    let ttl = LeaseClient::connect(format!("http://{endpoint}"))
        .await
        .unwrap()
        .lease_time_to_live(pb::LeaseTimeToLiveRequest {
            id: lease,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 600);
    assert_eq!(ttl.keys, vec![b"leased".to_vec()]);
}

/// Restores `backup` into a data directory per member under `base` and starts a new
/// cluster on them.
async fn restored_cluster(backup: &Path, base: &Path) -> EtcdCluster {
    for node in 1..=3 {
        synod_server::data_dir::restore_backup(backup, &base.join(format!("m{node}")))
            .expect("restore");
    }
    let base = base.to_path_buf();
    EtcdCluster::start_with(3, move |config| {
        config.data_dir = base.join(format!("m{}", config.node_id));
    })
    .await
}

async fn write_history(cluster: &EtcdCluster) {
    let mut client = kv(cluster, 0).await;
    for (key, value) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")] {
        client.put(put(key, value)).await.unwrap();
    }
    client
        .delete_range(pb::DeleteRangeRequest {
            key: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_into_a_new_cluster_with_the_same_keys_and_revisions() {
    let mut original = EtcdCluster::start(3).await;
    write_history(&original).await;
    let before = everything(&original, 1).await;
    let backup = snapshot_bytes(&original, 1).await;
    assert_eq!(backup.len() % 512, 32, "etcdctl 3.4's length check");
    let old_cluster_id = original.cluster.cluster_id;
    original.stop_all().await;

    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("backup.db");
    std::fs::write(&file, &backup).unwrap();
    let mut restored = restored_cluster(&file, &scratch.path().join("new")).await;
    for index in 0..3 {
        assert_eq!(everything(&restored, index).await, before, "member {index}");
    }
    let header = kv(&restored, 2)
        .await
        .put(put("d", "5"))
        .await
        .unwrap()
        .into_inner()
        .header
        .unwrap();
    assert_eq!(
        header.revision,
        before.0 + 1,
        "the new cluster continues the revisions"
    );
    assert_ne!(
        header.cluster_id, old_cluster_id,
        "a restored cluster is a new cluster"
    );
    // A member restarted before any snapshot replays its log over the restored state.
    restored.stop(0).await;
    restored.restart(0).await;
    let (revision, keys) = everything(&restored, 0).await;
    assert_eq!(revision, before.0 + 1);
    assert_eq!(keys.len(), before.1.len() + 1);
    restored.stop_all().await;
}

/// `etcdctl --endpoints=<host:port,...> args` (etcdctl 3.4's `endpoint` commands need
/// host:port, docs/client-suites.md); its stdout, or a panic with its output.
async fn etcdctl(cluster: &EtcdCluster, members: &[usize], args: &[&str]) -> String {
    let endpoints: Vec<String> = members
        .iter()
        .map(|&index| cluster.client_addrs[index].to_string())
        .collect();
    let output = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .env_remove("ETCDCTL_ENDPOINTS")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--command-timeout=30s")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("etcdctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_hashkv_defrag_alarm_and_snapshot_save_work_on_a_synod_cluster() {
    if !etcdctl_available("etcdctl_hashkv_defrag_alarm_and_snapshot_save_work_on_a_synod_cluster") {
        return;
    }
    let mut original = EtcdCluster::start(3).await;
    write_history(&original).await;
    let before = everything(&original, 0).await;
    // Followers apply the last write soon after the leader: wait until every hash agrees.
    hashes_once_agreed(&original, 0).await;
    let hashes = etcdctl(&original, &[0, 1, 2], &["endpoint", "hashkv", "-w", "json"]).await;
    let hashes: serde_json::Value = serde_json::from_str(&hashes).expect("JSON");
    let hashes: Vec<u64> = hashes
        .as_array()
        .expect("one entry per endpoint")
        .iter()
        .map(|entry| entry["HashKV"]["hash"].as_u64().expect("a hash"))
        .collect();
    assert_eq!(hashes.len(), 3);
    assert!(hashes.iter().all(|hash| *hash == hashes[0]), "{hashes:?}");

    let defrag = etcdctl(&original, &[0], &["defrag"]).await;
    assert_eq!(
        defrag,
        format!(
            "Finished defragmenting etcd member[{}]\n",
            original.client_addrs[0]
        )
    );
    etcdctl(&original, &[0], &["alarm", "disarm"]).await;
    assert_eq!(etcdctl(&original, &[1], &["alarm", "list"]).await, "");

    let scratch = tempfile::tempdir().unwrap();
    let file: PathBuf = scratch.path().join("saved.db");
    let saved = etcdctl(
        &original,
        &[2],
        &["snapshot", "save", file.to_str().unwrap()],
    )
    .await;
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    original.stop_all().await;

    // etcdctl reads the file as an etcd database (bbolt's own integrity check included)
    // and finds what Synod's reader finds.
    assert_status_agrees(&file, before.0);

    let mut restored = restored_cluster(&file, &scratch.path().join("new")).await;
    for index in 0..3 {
        assert_eq!(everything(&restored, index).await, before, "member {index}");
    }
    let got = etcdctl(&restored, &[1], &["get", "a", "-w", "json"]).await;
    let got: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert_eq!(got["kvs"][0]["mod_revision"], 4);
    assert_eq!(got["kvs"][0]["create_revision"], 2);
    restored.stop_all().await;
}

/// `etcdctl snapshot status` of `file` (bbolt's own integrity check included) finds the
/// hash, revision, key count and size that `synod snapshot status` finds.
fn assert_status_agrees(file: &Path, revision: i64) {
    let status = etcdctl_offline(&["snapshot", "status", "-w", "json", file.to_str().unwrap()]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let ours = synod_server::snapshot_file::status(&std::fs::read(file).unwrap()).unwrap();
    assert_eq!(status["hash"], u64::from(ours.hash), "{status}");
    assert_eq!(status["revision"], revision, "{status}");
    assert_eq!(ours.revision, revision);
    assert_eq!(status["totalKey"], ours.total_keys, "{status}");
    assert_eq!(status["totalSize"], ours.total_size, "{status}");
}

/// Runs etcdctl without endpoints (the `snapshot` commands work on files); its stdout.
fn etcdctl_offline(args: &[&str]) -> String {
    let output = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("etcdctl runs");
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A Synod snapshot is an etcd snapshot: `etcdctl snapshot restore` makes an etcd member
/// of it that serves the same keys at the same revisions, with the same compaction and
/// leases (a way from Synod to etcd, as `synod snapshot restore` is the way back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restores_a_synod_snapshot_with_its_keys_revisions_compaction_and_leases() {
    let test = "etcd_restores_a_synod_snapshot_with_its_keys_revisions_compaction_and_leases";
    if !etcdctl_available(test) || !etcd_available(test) {
        return;
    }
    let mut original = EtcdCluster::start(3).await;
    write_history(&original).await;
    let lease = lease_compaction_and_a_later_put(&original.client_addrs[0].to_string()).await;
    let before = everything(&original, 0).await;
    let bytes = snapshot_bytes(&original, 0).await;
    original.stop_all().await;

    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("synod.db");
    std::fs::write(&file, &bytes).unwrap();
    let data = scratch.path().join("etcd");
    let (mut etcd, client_addr) = RealEtcd::start(&data, Some(&file)).await;
    assert_eq!(everything_at(&client_addr.to_string()).await, before);
    assert_compaction_and_lease(&client_addr.to_string(), lease).await;
    etcd.kill().await.expect("etcd stops");
}

/// After the history: a key on a 600 s lease, a compaction at revision 4, then a put of
/// `b` (so history above the compaction is there to read), at `endpoint` (host:port).
/// Returns the lease's id.
async fn lease_compaction_and_a_later_put(endpoint: &str) -> i64 {
    use synod_server::proto::etcdserverpb::lease_client::LeaseClient;
    let lease = LeaseClient::connect(format!("http://{endpoint}"))
        .await
        .unwrap()
        .lease_grant(pb::LeaseGrantRequest { ttl: 600, id: 0 })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut client = KvClient::connect(format!("http://{endpoint}"))
        .await
        .unwrap();
    client
        .put(pb::PutRequest {
            key: "leased".into(),
            value: "x".into(),
            lease,
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .compact(pb::CompactionRequest {
            revision: 4,
            physical: true,
        })
        .await
        .unwrap();
    client.put(put("b", "after")).await.unwrap();
    lease
}

/// A one-member etcd on free loopback ports (killed by pid on drop), started on `data`,
/// which `etcdctl snapshot restore` first makes of `snapshot` when given.
struct RealEtcd;

impl RealEtcd {
    async fn start(
        data: &Path,
        snapshot: Option<&Path>,
    ) -> (tokio::process::Child, std::net::SocketAddr) {
        let (_, addrs) = common::bind_listeners(2).await;
        let (client_addr, peer) = (addrs[0], addrs[1]);
        let peer_url = format!("http://{peer}");
        let member = [
            "--name=restored".to_string(),
            format!("--data-dir={}", data.display()),
            format!("--initial-cluster=restored={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
        ];
        if let Some(snapshot) = snapshot {
            let mut args = vec!["snapshot", "restore", snapshot.to_str().unwrap()];
            args.extend(member.iter().map(String::as_str));
            etcdctl_offline(&args);
        }
        let etcd = tokio::process::Command::new("etcd")
            .args(&member)
            .args([
                format!("--listen-client-urls=http://{client_addr}"),
                format!("--advertise-client-urls=http://{client_addr}"),
                format!("--listen-peer-urls={peer_url}"),
                "--log-level=error".to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("etcd starts");
        let started = Instant::now();
        loop {
            if let Ok(mut client) = KvClient::connect(format!("http://{client_addr}")).await {
                if client.range(get("a")).await.is_ok() {
                    return (etcd, client_addr);
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "etcd did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The way from etcd: `synod snapshot restore` of a snapshot `etcdctl snapshot save` took
/// from etcd starts a Synod cluster with etcd's keys, revisions, compaction and leases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synod_restores_an_etcd_snapshot_with_its_keys_revisions_compaction_and_leases() {
    let test = "synod_restores_an_etcd_snapshot_with_its_keys_revisions_compaction_and_leases";
    if !etcdctl_available(test) || !etcd_available(test) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (mut etcd, client_addr) = RealEtcd::start(&scratch.path().join("etcd"), None).await;
    let mut client = KvClient::connect(format!("http://{client_addr}"))
        .await
        .unwrap();
    for (key, value) in [("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")] {
        client.put(put(key, value)).await.unwrap();
    }
    client
        .txn(pb::TxnRequest {
            success: vec![
                pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: "c".into(),
                            ..Default::default()
                        },
                    )),
                },
                pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(put("d", "5"))),
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let lease = lease_compaction_and_a_later_put(&client_addr.to_string()).await;
    let before = everything_at(&client_addr.to_string()).await;
    let file = scratch.path().join("etcd.db");
    etcdctl_offline(&[
        &format!("--endpoints={client_addr}"),
        "snapshot",
        "save",
        file.to_str().unwrap(),
    ]);
    etcd.kill().await.expect("etcd stops");
    // Synod reads etcd's own bbolt file (its inline buckets, its freelist wherever bbolt
    // put it) as etcdctl does.
    assert_status_agrees(&file, before.0);

    let mut restored = restored_cluster(&file, &scratch.path().join("synod")).await;
    for index in 0..3 {
        assert_eq!(everything(&restored, index).await, before, "member {index}");
    }
    // The history above the compaction came over, with the txn's two writes at one
    // revision (6); below it, compacted; the lease with its key.
    let at_six = kv(&restored, 0)
        .await
        .range(pb::RangeRequest {
            key: vec![0],
            range_end: vec![0],
            revision: 6,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = at_six.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec(), b"d".to_vec()]);
    assert_compaction_and_lease(&restored.client_addrs[0].to_string(), lease).await;
    restored.stop_all().await;
}
