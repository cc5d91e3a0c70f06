//! Peer connections over TCP.
//!
//! Each node dials every peer and sends its messages over that connection; it receives
//! on the connections its peers dial to it. So a pair of nodes shares two connections,
//! each carrying traffic one way (plus ping/pong for round-trip times). A dialer
//! reconnects with exponential backoff; messages queued while a peer is unreachable are
//! dropped when the queue is full, which Paxos tolerates (everything is retransmitted).
//!
//! The acceptor checks the first frame, a `Hello`: same cluster id, a member's node id,
//! not its own. Anything else — a foreign cluster, a malformed or oversized frame, a
//! message claiming another sender — is refused with a logged reason and that connection
//! closed; the node keeps serving everyone else.

use crate::config::{Cluster, Member};
use crate::metrics::Metrics;
use crate::wire::{
    encode_frame, encode_frame_into, read_frame, write_frame, Frame, FrameError, Hello,
};
use bytes::Bytes;
use prometheus::IntCounter;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use synod_core::{Envelope, NodeId, Slot};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Frames queued for one peer before new messages are dropped.
pub const PEER_QUEUE_FRAMES: usize = 4096;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const PING_INTERVAL: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Read buffer of an inbound peer connection.
const READ_BUFFER_BYTES: usize = 64 << 10;

/// What the peer connections hand to the node's driver.
#[derive(Debug)]
pub enum PeerInput {
    Message(Envelope),
    SnapshotChunk {
        from: NodeId,
        slot: Slot,
        offset: u64,
        total_bytes: u64,
        data: Bytes,
    },
}

/// What this node knows of a peer from its handshake.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PeerInfo {
    pub name: String,
    pub client_urls: Vec<String>,
}

/// Peers' self-descriptions, shared with the client API (for `MemberList`).
pub type Directory = Arc<Mutex<BTreeMap<NodeId, PeerInfo>>>;

pub struct TransportContext {
    pub me: Hello,
    pub cluster: Cluster,
    pub max_frame_bytes: usize,
    pub metrics: Arc<Metrics>,
    pub directory: Directory,
}

impl TransportContext {
    fn learn(&self, hello: &Hello) {
        let mut directory = self
            .directory
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        directory.insert(
            hello.node_id,
            PeerInfo {
                name: hello.name.clone(),
                client_urls: hello.client_urls.clone(),
            },
        );
    }

    /// Why a peer's `Hello` is refused, if it is.
    pub fn check_hello(&self, hello: &Hello) -> Result<(), (&'static str, String)> {
        if hello.cluster_id != self.cluster.cluster_id {
            return Err((
                "cluster_id",
                format!(
                    "cluster id mismatch: the peer belongs to cluster {:016x}, this node to {:016x} \
                     (check --initial-cluster and --initial-cluster-token)",
                    hello.cluster_id, self.cluster.cluster_id
                ),
            ));
        }
        if hello.node_id == self.me.node_id {
            return Err((
                "own_id",
                format!("the peer claims this node's own id {}", hello.node_id),
            ));
        }
        if self.cluster.member(hello.node_id).is_none() {
            return Err((
                "not_member",
                format!(
                    "node id {} is not a member of this cluster (members: {:?})",
                    hello.node_id,
                    self.cluster.ids()
                ),
            ));
        }
        Ok(())
    }

    fn refuse(&self, reason: &str) {
        self.metrics
            .peer_refusals
            .with_label_values(&[reason])
            .inc();
    }
}

/// Accepts peer connections until the task is dropped.
pub async fn accept_peers(
    listener: TcpListener,
    context: Arc<TransportContext>,
    inputs: mpsc::Sender<PeerInput>,
) {
    // Connections live in this set: dropping the task (on stop) closes them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let context = Arc::clone(&context);
                    let inputs = inputs.clone();
                    connections.spawn(async move { serve_inbound(stream, remote, context, inputs).await });
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn frame_error_reason(error: &FrameError) -> &'static str {
    match error {
        FrameError::Oversized { .. } => "oversized_frame",
        FrameError::Malformed(_) => "malformed_frame",
        FrameError::Closed | FrameError::Io(_) => "connection_lost",
    }
}

async fn serve_inbound(
    stream: TcpStream,
    remote: SocketAddr,
    context: Arc<TransportContext>,
    inputs: mpsc::Sender<PeerInput>,
) {
    let _ = stream.set_nodelay(true);
    let (reader, mut writer) = stream.into_split();
    let reader = CountingReader {
        inner: reader,
        counter: None,
    };
    // Buffered: a batch of frames arriving together costs one read, not two per frame.
    let mut reader = tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let me = context.me.node_id;
    let first = timeout(
        HANDSHAKE_TIMEOUT,
        read_frame(&mut reader, context.max_frame_bytes),
    )
    .await;
    let hello = match first {
        Ok(Ok(Frame::Hello(hello))) => hello,
        Ok(Ok(other)) => {
            let reason = format!("expected a hello frame first, got {}", other.kind());
            tracing::warn!(node = me, %remote, %reason, "refused peer connection");
            context.refuse("no_hello");
            let _ = write_frame(&mut writer, &Frame::Refused { reason }).await;
            return;
        }
        Ok(Err(FrameError::Closed)) => return,
        Ok(Err(error)) => {
            tracing::warn!(node = me, %remote, %error, "refused peer connection: bad first frame");
            context.refuse(frame_error_reason(&error));
            let reason = format!("bad first frame: {error}");
            let _ = write_frame(&mut writer, &Frame::Refused { reason }).await;
            return;
        }
        Err(_) => {
            tracing::warn!(node = me, %remote, "refused peer connection: no hello within {HANDSHAKE_TIMEOUT:?}");
            context.refuse("handshake_timeout");
            return;
        }
    };
    if let Err((label, reason)) = context.check_hello(&hello) {
        tracing::warn!(node = me, %remote, peer = hello.node_id, %reason, "refused peer connection");
        context.refuse(label);
        let _ = write_frame(&mut writer, &Frame::Refused { reason }).await;
        let _ = writer.shutdown().await;
        return;
    }
    if write_frame(&mut writer, &Frame::Welcome(context.me.clone()))
        .await
        .is_err()
    {
        return;
    }
    context.learn(&hello);
    let peer = hello.node_id;
    let peer_label = peer.to_string();
    reader.get_mut().counter = Some(
        context
            .metrics
            .peer_received_bytes
            .with_label_values(&[&peer_label]),
    );
    let sent = context
        .metrics
        .peer_sent_bytes
        .with_label_values(&[&peer_label]);
    tracing::debug!(node = me, peer, %remote, "accepted peer connection");
    loop {
        let frame = match read_frame(&mut reader, context.max_frame_bytes).await {
            Ok(frame) => frame,
            Err(FrameError::Closed) => {
                tracing::debug!(node = me, peer, "peer closed its connection");
                return;
            }
            Err(FrameError::Io(error)) => {
                tracing::debug!(node = me, peer, %error, "peer connection lost");
                return;
            }
            Err(error) => {
                tracing::warn!(node = me, peer, %remote, %error, "refused frame from peer; closing its connection");
                context.refuse(frame_error_reason(&error));
                return;
            }
        };
        let input = match frame {
            Frame::Message(envelope) => {
                if envelope.from != peer || envelope.to != me {
                    tracing::warn!(
                        node = me,
                        peer,
                        from = envelope.from,
                        to = envelope.to,
                        "refused message with a sender or recipient other than the connection's; closing it"
                    );
                    context.refuse("misaddressed");
                    return;
                }
                PeerInput::Message(envelope)
            }
            Frame::SnapshotChunk {
                slot,
                offset,
                total_bytes,
                data,
            } => PeerInput::SnapshotChunk {
                from: peer,
                slot,
                offset,
                total_bytes,
                data,
            },
            Frame::Ping { nonce } => {
                let pong = encode_frame(&Frame::Pong { nonce });
                if writer.write_all(&pong).await.is_err() {
                    return;
                }
                sent.inc_by(pong.len() as u64);
                continue;
            }
            other => {
                tracing::warn!(
                    node = me,
                    peer,
                    kind = other.kind(),
                    "refused unexpected frame from peer; closing its connection"
                );
                context.refuse("unexpected_frame");
                return;
            }
        };
        if inputs.send(input).await.is_err() {
            return;
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Keeps a connection to `peer` open and writes `outgoing` frames to it, until the task
/// is dropped or every sender is gone.
pub async fn dial_peer(
    context: Arc<TransportContext>,
    peer: Member,
    mut outgoing: mpsc::Receiver<Frame>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut last_failure = String::new();
    loop {
        match connect(&context, &peer).await {
            Ok(stream) => {
                backoff = BACKOFF_MIN;
                last_failure.clear();
                tracing::info!(node = context.me.node_id, peer = peer.id, addr = %peer.peer_addr, "connected to peer");
                if serve_outbound(&context, &peer, stream, &mut outgoing).await {
                    return;
                }
                tracing::info!(
                    node = context.me.node_id,
                    peer = peer.id,
                    "connection to peer lost; reconnecting"
                );
            }
            Err(failure) => {
                // Log a failure once, not on every retry of an unreachable peer.
                if failure != last_failure {
                    tracing::debug!(node = context.me.node_id, peer = peer.id, addr = %peer.peer_addr, %failure, "cannot connect to peer");
                    last_failure = failure;
                }
            }
        }
        // Frames for an unreachable peer would be stale by the time it comes back: drop
        // them while waiting (Paxos retransmits what still matters).
        let retry = tokio::time::sleep(backoff);
        tokio::pin!(retry);
        let mut dropped = 0;
        loop {
            tokio::select! {
                _ = &mut retry => break,
                frame = outgoing.recv() => match frame {
                    Some(_) => dropped += 1,
                    None => return,
                },
            }
        }
        context.metrics.peer_messages_dropped.inc_by(dropped);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(context: &TransportContext, peer: &Member) -> Result<TcpStream, String> {
    let mut stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(peer.peer_addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|error| error.to_string())?;
    let _ = stream.set_nodelay(true);
    write_frame(&mut stream, &Frame::Hello(context.me.clone()))
        .await
        .map_err(|error| error.to_string())?;
    let reply = timeout(
        HANDSHAKE_TIMEOUT,
        read_frame(&mut stream, context.max_frame_bytes),
    )
    .await
    .map_err(|_| "no handshake reply".to_string())?
    .map_err(|error| error.to_string())?;
    match reply {
        Frame::Welcome(hello) => {
            if hello.node_id != peer.id || hello.cluster_id != context.cluster.cluster_id {
                let failure = format!(
                    "the peer at {} answered as node {} of cluster {:016x}, expected node {} of {:016x}",
                    peer.peer_addr,
                    hello.node_id,
                    hello.cluster_id,
                    peer.id,
                    context.cluster.cluster_id
                );
                tracing::warn!(node = context.me.node_id, peer = peer.id, %failure, "refusing peer");
                context.refuse("wrong_peer");
                return Err(failure);
            }
            context.learn(&hello);
            Ok(stream)
        }
        Frame::Refused { reason } => {
            tracing::warn!(node = context.me.node_id, peer = peer.id, addr = %peer.peer_addr, %reason, "peer refused our connection");
            Err(format!("refused: {reason}"))
        }
        other => Err(format!("unexpected handshake reply {}", other.kind())),
    }
}

/// Encodes `frame` onto `buffer` unless it is larger than the peer would accept: such a
/// frame is dropped here with an error, never sent (the peer would close the connection
/// and the same frame, retransmitted, would close it again and again). The core bounds
/// its messages well below the limit, so this is a last guard.
fn append_within_limit(
    context: &TransportContext,
    peer: NodeId,
    frame: &Frame,
    buffer: &mut Vec<u8>,
) {
    let start = buffer.len();
    encode_frame_into(frame, buffer);
    let bytes = buffer.len() - start - 4;
    if bytes > context.max_frame_bytes {
        buffer.truncate(start);
        tracing::error!(
            node = context.me.node_id,
            peer,
            kind = frame.kind(),
            bytes,
            limit = context.max_frame_bytes,
            "dropped a frame larger than the peer accepts"
        );
        context.metrics.peer_messages_dropped.inc();
    }
}

/// Returns true when the node is shutting down (no more frames will come).
async fn serve_outbound(
    context: &TransportContext,
    peer: &Member,
    stream: TcpStream,
    outgoing: &mut mpsc::Receiver<Frame>,
) -> bool {
    let (reader, mut writer) = stream.into_split();
    let max_frame_bytes = context.max_frame_bytes;
    let peer_label = peer.id.to_string();
    let metrics = &context.metrics;
    let round_trip = metrics
        .peer_round_trip_seconds
        .with_label_values(&[&peer_label]);
    let sent = metrics.peer_sent_bytes.with_label_values(&[&peer_label]);
    let mut reader = CountingReader {
        inner: reader,
        counter: Some(
            metrics
                .peer_received_bytes
                .with_label_values(&[&peer_label]),
        ),
    };
    let pongs = async move {
        loop {
            match read_frame(&mut reader, max_frame_bytes).await {
                Ok(Frame::Pong { nonce }) => {
                    let now = epoch().elapsed().as_micros() as u64;
                    round_trip.observe(now.saturating_sub(nonce) as f64 / 1e6);
                }
                Ok(_) | Err(_) => return,
            }
        }
    };
    let writes = async move {
        let mut ping = tokio::time::interval(PING_INTERVAL);
        let mut buffer = Vec::new();
        loop {
            tokio::select! {
                frame = outgoing.recv() => {
                    let Some(frame) = frame else { return true };
                    buffer.clear();
                    append_within_limit(context, peer.id, &frame, &mut buffer);
                    // Coalesce what else is queued into one write.
                    while buffer.len() < (256 << 10) {
                        match outgoing.try_recv() {
                            Ok(frame) => append_within_limit(context, peer.id, &frame, &mut buffer),
                            Err(_) => break,
                        }
                    }
                    if buffer.is_empty() {
                        continue;
                    }
                    if writer.write_all(&buffer).await.is_err() {
                        return false;
                    }
                    sent.inc_by(buffer.len() as u64);
                }
                _ = ping.tick() => {
                    let nonce = epoch().elapsed().as_micros() as u64;
                    let ping = encode_frame(&Frame::Ping { nonce });
                    if writer.write_all(&ping).await.is_err() {
                        return false;
                    }
                    sent.inc_by(ping.len() as u64);
                }
            }
        }
    };
    tokio::select! {
        _ = pongs => false,
        stopping = writes => stopping,
    }
}

/// Counts the bytes read through it (`etcd_network_peer_received_bytes_total`), once the
/// peer it reads from is known.
struct CountingReader<R> {
    inner: R,
    counter: Option<IntCounter>,
}

impl<R: AsyncRead + Unpin> AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buffer.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(context, buffer);
        if let (Poll::Ready(Ok(())), Some(counter)) = (&polled, &self.counter) {
            counter.inc_by((buffer.filled().len() - before) as u64);
        }
        polled
    }
}
