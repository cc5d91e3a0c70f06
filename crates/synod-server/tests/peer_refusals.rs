//! Peers that do not belong, or speak garbage, are refused with a reason while the node
//! keeps serving the rest of the cluster.

mod common;

use common::{delta, value_of, Counter, TestCluster};
use synod_core::{Ballot, Envelope, Message};
use synod_server::wire::{encode_frame, read_frame, Frame, Hello};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn hello(cluster_id: u64, node_id: u64) -> Frame {
    Frame::Hello(Hello {
        cluster_id,
        node_id,
        name: "intruder".to_string(),
        client_urls: Vec::new(),
    })
}

/// Reads until the node closes the connection (it must, after a refusal).
async fn assert_closed_by_node(stream: &mut TcpStream) {
    let mut buffer = [0u8; 256];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

fn refusals(cluster: &TestCluster<Counter>, reason: &str) -> u64 {
    cluster
        .server(0)
        .metrics()
        .peer_refusals
        .with_label_values(&[reason])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_cluster_is_refused_and_the_cluster_keeps_working() {
    let mut cluster = TestCluster::start(3, |_| {}, Counter::default).await;
    let target = cluster.server(0).peer_addr();
    let mut stream = TcpStream::connect(target).await.unwrap();
    let foreign = cluster.cluster.cluster_id ^ 1;
    stream
        .write_all(&encode_frame(&hello(foreign, 2)))
        .await
        .unwrap();
    match read_frame(&mut stream, 1 << 20).await {
        Ok(Frame::Refused { reason }) => {
            assert!(reason.contains("cluster id mismatch"), "reason: {reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_closed_by_node(&mut stream).await;
    assert_eq!(refusals(&cluster, "cluster_id"), 1);

    let mut stranger = TcpStream::connect(target).await.unwrap();
    stranger
        .write_all(&encode_frame(&hello(cluster.cluster.cluster_id, 99)))
        .await
        .unwrap();
    match read_frame(&mut stranger, 1 << 20).await {
        Ok(Frame::Refused { reason }) => assert!(reason.contains("not a member"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    let response = cluster
        .server(0)
        .handle()
        .propose(delta(3))
        .await
        .expect("still serving");
    assert_eq!(value_of(&response), 3);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_frames_close_only_their_connection() {
    let mut cluster = TestCluster::start(3, |_| {}, Counter::default).await;
    let target = cluster.server(0).peer_addr();

    // An oversized length prefix as the very first frame.
    let mut oversized = TcpStream::connect(target).await.unwrap();
    oversized.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    match read_frame(&mut oversized, 1 << 20).await {
        Ok(Frame::Refused { reason }) => assert!(reason.contains("exceeds"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_closed_by_node(&mut oversized).await;
    assert_eq!(refusals(&cluster, "oversized_frame"), 1);

    // A proper handshake, then garbage.
    let mut garbage = TcpStream::connect(target).await.unwrap();
    garbage
        .write_all(&encode_frame(&hello(cluster.cluster.cluster_id, 2)))
        .await
        .unwrap();
    assert!(matches!(
        read_frame(&mut garbage, 1 << 20).await,
        Ok(Frame::Welcome(_))
    ));
    let mut frame = 6u32.to_be_bytes().to_vec();
    frame.extend([1, 0xee, 0xee, 0xee, 0xee, 0xee]);
    garbage.write_all(&frame).await.unwrap();
    assert_closed_by_node(&mut garbage).await;
    assert_eq!(refusals(&cluster, "malformed_frame"), 1);

    // A message whose sender is not the connection's peer.
    let mut forger = TcpStream::connect(target).await.unwrap();
    forger
        .write_all(&encode_frame(&hello(cluster.cluster.cluster_id, 2)))
        .await
        .unwrap();
    assert!(matches!(
        read_frame(&mut forger, 1 << 20).await,
        Ok(Frame::Welcome(_))
    ));
    let forged = Frame::Message(Envelope {
        from: 3,
        to: 1,
        message: Message::Prepare {
            ballot: Ballot::new(1000, 3),
            from_slot: 1,
            transfer_from: None,
        },
    });
    forger.write_all(&encode_frame(&forged)).await.unwrap();
    assert_closed_by_node(&mut forger).await;
    assert_eq!(refusals(&cluster, "misaddressed"), 1);

    for index in 0..3 {
        let response = cluster
            .server(index)
            .handle()
            .propose(delta(1))
            .await
            .expect("every node still serves");
        assert!(value_of(&response) >= 1);
    }
    cluster.stop_all().await;
}
