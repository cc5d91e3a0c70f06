//! The data directory is owned by one replica and remembers whose it is: a second
//! server on it is refused, a log of another member is refused even without the
//! `member` file, and a member whose log vanished does not start with none.

mod common;

use common::{bind_listeners, delta, test_config, Counter};
use synod_server::{Cluster, Server, ServerError};

async fn start(config: synod_server::ServerConfig) -> Result<Server<Counter>, ServerError> {
    let (mut listeners, _) = bind_listeners(1).await;
    Server::start_with_listener(config, Counter::default(), listeners.remove(0)).await
}

/// A one-member cluster that chose a value, so its log holds state; then stopped.
async fn single_member_with_state() -> (tempfile::TempDir, Cluster, synod_server::ServerConfig) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, addrs) = bind_listeners(1).await;
    let cluster = Cluster::from_addrs(&addrs, "data-dir-test");
    let config = test_config(1, &cluster, dir.path());
    let server = start(config.clone()).await.expect("first start");
    server
        .handle()
        .propose(delta(5))
        .await
        .expect("a write is chosen");
    server.stop().await.expect("clean stop");
    (dir, cluster, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_running_members_data_directory_is_refused() {
    let (_dir, _, config) = single_member_with_state().await;
    let running = start(config.clone()).await.expect("restart");
    match start(config.clone()).await {
        Err(error @ ServerError::DataDirInUse { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains(&config.data_dir.display().to_string()),
                "{message}"
            );
            assert!(
                message.contains(&format!("pid {}", std::process::id())),
                "{message}"
            );
        }
        Err(other) => panic!("expected DataDirInUse, got {other}"),
        Ok(_) => panic!("two servers ran on one data directory"),
    }
    running.stop().await.expect("clean stop");
    start(config)
        .await
        .expect("the directory is free once its server stopped")
        .stop()
        .await
        .expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_log_is_gone_does_not_start_with_an_empty_one() {
    let (_dir, _, config) = single_member_with_state().await;
    let wal_dir = config.data_dir.join("wal");
    std::fs::remove_dir_all(&wal_dir).expect("remove wal/");
    for what in ["missing", "empty"] {
        if what == "empty" {
            std::fs::create_dir_all(&wal_dir).expect("an empty wal/");
        }
        match start(config.clone()).await {
            Err(ServerError::Recovery(reason)) => {
                assert!(reason.contains("missing or empty"), "{reason}");
                assert!(reason.contains(&wal_dir.display().to_string()), "{reason}");
                assert!(reason.contains("docs/operations.md"), "{reason}");
            }
            Err(other) => panic!("log {what}: expected a recovery error, got {other}"),
            Ok(_) => panic!("a member whose log is {what} started"),
        }
        // Refusing created nothing.
        assert_eq!(wal_dir.exists(), what == "empty");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_another_member_is_refused_even_without_the_member_file() {
    let (dir, cluster, config) = single_member_with_state().await;
    // Another member's data directory: the log of node 1, the `member` file lost.
    std::fs::remove_file(config.data_dir.join("member")).expect("remove member");
    let mut other = test_config(1, &cluster, dir.path());
    other.cluster.cluster_id ^= 1;
    match start(other).await {
        Err(ServerError::Recovery(reason)) => {
            assert!(
                reason.contains("was written by node 1 of cluster"),
                "{reason}"
            );
            assert!(reason.contains(".wal"), "{reason}");
        }
        Err(other) => panic!("expected a recovery error, got {other}"),
        Ok(_) => panic!("a log of another cluster was adopted"),
    }
    assert!(!config.data_dir.join("member").exists());
    start(config)
        .await
        .expect("its own member still starts")
        .stop()
        .await
        .expect("clean stop");
}
