//! Peer connections over TCP.
//!
//! Each node dials every peer and sends its messages over that connection; it receives
//! on the connections its peers dial to it. So a pair of nodes shares two connections,
//! each carrying traffic one way, plus the dialer's pings and the acceptor's pongs. A
//! dialer redials with a backoff capped at a few heartbeats; messages queued while a
//! peer is unreachable are dropped, which Paxos tolerates (everything is retransmitted).
//!
//! Dead connections are noticed by silence, not by TCP: after a partition heals, a
//! connection whose segments were lost sits in retransmission backoff for seconds (the
//! retransmission timer doubles from 200 ms). So the dialer pings every heartbeat and
//! closes a connection that brought no pong for [`PeerTiming::silence_limit`], then
//! redials, with a new attempt every backoff step even while earlier ones (a SYN lost
//! in the partition) are still waiting. The acceptor closes an inbound connection that
//! brought nothing for [`PeerTiming::inbound_silence_limit`]. Time this process itself
//! was stalled (SIGSTOP, a starved CPU) is not held against the peer. docs/server.md.
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
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Dial attempts to one peer waiting at once (each for at most CONNECT_TIMEOUT +
/// HANDSHAKE_TIMEOUT); beyond it a new attempt waits for an old one to end.
const DIALS_IN_FLIGHT_MAX: usize = 8;
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
    pub timing: PeerTiming,
}

/// How often peers are pinged, how long a silent connection lives, how fast a lost one
/// is redialed. All follow the heartbeat interval, which operators already size to the
/// network's round trip (etcd's tuning guide: about one round trip).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PeerTiming {
    /// The dialer pings this often, busy or idle.
    pub ping_interval: Duration,
    /// The dialer closes a connection that brought no pong for this long and redials.
    pub silence_limit: Duration,
    /// The acceptor closes an inbound connection that brought nothing for this long. At
    /// least 3 s, so that a dialer of an older version, pinging once a second, is kept.
    pub inbound_silence_limit: Duration,
    /// The longest pause between dial attempts to an unreachable peer.
    pub redial_max: Duration,
}

impl PeerTiming {
    /// Ping every heartbeat, give up on a connection after 4 silent heartbeats, redial
    /// at least every 2 heartbeats: with the default 100 ms heartbeat, a connection cut
    /// by a partition is closed 400 ms into it and redialed every 200 ms, so a member
    /// is reconnected within about 200 ms of the heal.
    pub fn for_heartbeat(heartbeat: Duration) -> PeerTiming {
        let heartbeat = heartbeat.max(Duration::from_millis(1));
        PeerTiming {
            ping_interval: heartbeat,
            silence_limit: heartbeat * 4,
            inbound_silence_limit: (heartbeat * 4).max(Duration::from_secs(3)),
            redial_max: (heartbeat * 2).clamp(BACKOFF_MIN, Duration::from_secs(1)),
        }
    }
}

/// Decides when a connection has been silent too long, measured in checks made every
/// `interval`. A check that comes much later than `interval` after the previous one means
/// this process did not run meanwhile (SIGSTOP, a starved CPU): whatever the peer sent is
/// still unread in the socket, so the silence is counted again from that check.
#[derive(Clone, Copy, Debug)]
struct SilenceWatch {
    interval: Duration,
    limit: Duration,
    last_check: Instant,
    counted_from: Instant,
}

impl SilenceWatch {
    fn new(now: Instant, interval: Duration, limit: Duration) -> SilenceWatch {
        SilenceWatch {
            interval,
            limit,
            last_check: now,
            counted_from: now,
        }
    }

    /// How long the peer has been silent, when that is beyond the limit.
    fn check(&mut self, now: Instant, last_heard: Instant) -> Option<Duration> {
        if now.saturating_duration_since(self.last_check) > self.interval * 2 {
            self.counted_from = now;
        }
        self.last_check = now;
        let silence = now.saturating_duration_since(last_heard.max(self.counted_from));
        (silence > self.limit).then_some(silence)
    }
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
    let mut reader = WatchedReader::new(
        reader,
        context.max_frame_bytes,
        context.timing.ping_interval,
        context.timing.inbound_silence_limit,
    );
    loop {
        let frame = match reader.next().await {
            Watched::Frame(frame) => frame,
            Watched::Silent(silence) => {
                tracing::info!(
                    node = me,
                    peer,
                    ?silence,
                    "inbound peer connection silent; closing it"
                );
                context.metrics.peer_connections_silent.inc();
                return;
            }
            Watched::Failed(FrameError::Closed) => {
                tracing::debug!(node = me, peer, "peer closed its connection");
                return;
            }
            Watched::Failed(FrameError::Io(error)) => {
                tracing::debug!(node = me, peer, %error, "peer connection lost");
                return;
            }
            Watched::Failed(error) => {
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
                context
                    .metrics
                    .timeline
                    .message("wire_in", &envelope.message, peer);
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

/// What reading the next frame of a watched connection gave.
enum Watched {
    Frame(Frame),
    Failed(FrameError),
    /// Nothing arrived for this long, beyond the silence limit.
    Silent(Duration),
}

/// Reads frames and, while waiting for one, checks every `interval` that the peer has
/// not been silent beyond the limit (without abandoning a frame half read).
struct WatchedReader<R> {
    reader: R,
    max_frame_bytes: usize,
    ticker: tokio::time::Interval,
    watch: SilenceWatch,
    last_heard: Instant,
}

impl<R: AsyncRead + Unpin> WatchedReader<R> {
    fn new(reader: R, max_frame_bytes: usize, interval: Duration, limit: Duration) -> Self {
        let now = Instant::now();
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        WatchedReader {
            reader,
            max_frame_bytes,
            ticker,
            watch: SilenceWatch::new(now, interval, limit),
            last_heard: now,
        }
    }

    async fn next(&mut self) -> Watched {
        let read = read_frame(&mut self.reader, self.max_frame_bytes);
        tokio::pin!(read);
        loop {
            tokio::select! {
                frame = &mut read => {
                    self.last_heard = Instant::now();
                    return match frame {
                        Ok(frame) => Watched::Frame(frame),
                        Err(error) => Watched::Failed(error),
                    };
                }
                _ = self.ticker.tick() => {
                    if let Some(silence) = self.watch.check(Instant::now(), self.last_heard) {
                        return Watched::Silent(silence);
                    }
                }
            }
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
    let mut first_delay = Duration::ZERO;
    loop {
        let Some(stream) = redial(&context, &peer, &mut outgoing, first_delay).await else {
            return;
        };
        tracing::info!(node = context.me.node_id, peer = peer.id, addr = %peer.peer_addr, "connected to peer");
        match serve_outbound(&context, &peer, stream, &mut outgoing).await {
            OutboundEnd::Stopping => return,
            OutboundEnd::Lost => tracing::info!(
                node = context.me.node_id,
                peer = peer.id,
                "connection to peer lost; reconnecting"
            ),
            OutboundEnd::Silent(silence) => {
                tracing::warn!(
                    node = context.me.node_id,
                    peer = peer.id,
                    ?silence,
                    "no pong from peer within the silence limit; redialing"
                );
                context.metrics.peer_connections_silent.inc();
            }
        }
        // A peer that accepts and at once drops every connection is redialed at this
        // pace, not in a tight loop.
        first_delay = BACKOFF_MIN;
    }
}

/// Dials `peer` until a connection is up; `None` when the node stops. A new attempt
/// starts every backoff step (doubling up to `redial_max`) even while earlier ones wait:
/// an attempt whose SYN was lost in a partition would otherwise hold the redial for the
/// whole connect timeout after the partition heals.
async fn redial(
    context: &Arc<TransportContext>,
    peer: &Member,
    outgoing: &mut mpsc::Receiver<Frame>,
    first_delay: Duration,
) -> Option<TcpStream> {
    let mut attempts = tokio::task::JoinSet::new();
    let mut backoff = BACKOFF_MIN;
    let mut next_attempt = tokio::time::Instant::now() + first_delay;
    let mut last_failure = String::new();
    let mut dropped = 0;
    let connected = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_attempt), if attempts.len() < DIALS_IN_FLIGHT_MAX => {
                let (dialer, member) = (Arc::clone(context), peer.clone());
                attempts.spawn(async move { connect(&dialer, &member).await });
                next_attempt = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(context.timing.redial_max);
            }
            Some(joined) = attempts.join_next(), if !attempts.is_empty() => {
                let failure = match joined {
                    Ok(Ok(stream)) => break Some(stream),
                    Ok(Err(failure)) => failure,
                    Err(error) => format!("dial task failed: {error}"),
                };
                // Log a failure once, not on every retry of an unreachable peer.
                if failure != last_failure {
                    tracing::debug!(node = context.me.node_id, peer = peer.id, addr = %peer.peer_addr, %failure, "cannot connect to peer");
                    last_failure = failure;
                }
            }
            // Frames for an unreachable peer would be stale by the time it comes back:
            // drop them while waiting (Paxos retransmits what still matters).
            frame = outgoing.recv() => match frame {
                Some(_) => dropped += 1,
                None => break None,
            },
        }
    };
    context.metrics.peer_messages_dropped.inc_by(dropped);
    // Dropping the set aborts the attempts still waiting, closing their sockets.
    connected
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

/// Why an outbound connection ended.
enum OutboundEnd {
    /// The node is shutting down (no more frames will come).
    Stopping,
    /// The connection failed or the peer closed it.
    Lost,
    /// No pong for this long, beyond the silence limit.
    Silent(Duration),
}

async fn serve_outbound(
    context: &TransportContext,
    peer: &Member,
    stream: TcpStream,
    outgoing: &mut mpsc::Receiver<Frame>,
) -> OutboundEnd {
    let (reader, mut writer) = stream.into_split();
    let timing = context.timing;
    let peer_label = peer.id.to_string();
    let metrics = &context.metrics;
    let round_trip = metrics
        .peer_round_trip_seconds
        .with_label_values(&[&peer_label]);
    let sent = metrics.peer_sent_bytes.with_label_values(&[&peer_label]);
    let reader = CountingReader {
        inner: reader,
        counter: Some(
            metrics
                .peer_received_bytes
                .with_label_values(&[&peer_label]),
        ),
    };
    let mut reader = WatchedReader::new(
        reader,
        context.max_frame_bytes,
        timing.ping_interval,
        timing.silence_limit,
    );
    let pongs = async move {
        loop {
            match reader.next().await {
                Watched::Frame(Frame::Pong { nonce }) => {
                    let now = epoch().elapsed().as_micros() as u64;
                    round_trip.observe(now.saturating_sub(nonce) as f64 / 1e6);
                }
                Watched::Silent(silence) => return OutboundEnd::Silent(silence),
                Watched::Frame(_) | Watched::Failed(_) => return OutboundEnd::Lost,
            }
        }
    };
    let writes = async move {
        let mut ping = tokio::time::interval(timing.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buffer = Vec::new();
        let timeline = &metrics.timeline;
        // The messages of one write, for the timeline (only while it records).
        let mut written: Vec<(&'static str, u64)> = Vec::new();
        let note = |frame: &Frame, written: &mut Vec<(&'static str, u64)>| {
            if let (true, Frame::Message(envelope)) = (timeline.enabled(), frame) {
                written.push((
                    envelope.message.kind(),
                    crate::timeline::message_slot(&envelope.message),
                ));
            }
        };
        loop {
            tokio::select! {
                frame = outgoing.recv() => {
                    let Some(frame) = frame else { return OutboundEnd::Stopping };
                    buffer.clear();
                    written.clear();
                    note(&frame, &mut written);
                    append_within_limit(context, peer.id, &frame, &mut buffer);
                    // Coalesce what else is queued into one write.
                    while buffer.len() < (256 << 10) {
                        match outgoing.try_recv() {
                            Ok(frame) => {
                                note(&frame, &mut written);
                                append_within_limit(context, peer.id, &frame, &mut buffer);
                            }
                            Err(_) => break,
                        }
                    }
                    if buffer.is_empty() {
                        continue;
                    }
                    // Recorded as the write begins: the peer may read the message (and
                    // this process be preempted by it) before the write call returns.
                    for (kind, slot) in written.drain(..) {
                        timeline.record("wire_out", kind, slot, peer.id);
                    }
                    if writer.write_all(&buffer).await.is_err() {
                        return OutboundEnd::Lost;
                    }
                    sent.inc_by(buffer.len() as u64);
                }
                _ = ping.tick() => {
                    let nonce = epoch().elapsed().as_micros() as u64;
                    let ping = encode_frame(&Frame::Ping { nonce });
                    if writer.write_all(&ping).await.is_err() {
                        return OutboundEnd::Lost;
                    }
                    sent.inc_by(ping.len() as u64);
                }
            }
        }
    };
    tokio::select! {
        end = pongs => end,
        end = writes => end,
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

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(100);
    const LIMIT: Duration = Duration::from_millis(400);

    #[test]
    fn timing_follows_the_heartbeat() {
        let timing = PeerTiming::for_heartbeat(Duration::from_millis(100));
        assert_eq!(timing.ping_interval, Duration::from_millis(100));
        assert_eq!(timing.silence_limit, Duration::from_millis(400));
        assert_eq!(timing.redial_max, Duration::from_millis(200));
        assert_eq!(timing.inbound_silence_limit, Duration::from_secs(3));
        let slow = PeerTiming::for_heartbeat(Duration::from_secs(2));
        assert_eq!(slow.silence_limit, Duration::from_secs(8));
        assert_eq!(slow.inbound_silence_limit, Duration::from_secs(8));
        assert_eq!(slow.redial_max, Duration::from_secs(1));
    }

    /// Checks every interval from `start` for `checks` intervals, the peer last heard at
    /// `heard`; the first silence reported, with its check number.
    fn first_silence(
        watch: &mut SilenceWatch,
        start: Instant,
        heard: Instant,
        checks: u32,
    ) -> Option<(u32, Duration)> {
        (1..=checks).find_map(|n| {
            watch
                .check(start + INTERVAL * n, heard)
                .map(|silence| (n, silence))
        })
    }

    #[test]
    fn a_peer_silent_beyond_the_limit_is_reported_at_the_first_check_past_it() {
        let start = Instant::now();
        let mut watch = SilenceWatch::new(start, INTERVAL, LIMIT);
        let (check, silence) = first_silence(&mut watch, start, start, 20).expect("reported");
        assert_eq!(check, 5);
        assert_eq!(silence, INTERVAL * 5);
    }

    #[test]
    fn a_peer_heard_within_the_limit_is_never_reported() {
        let start = Instant::now();
        let mut watch = SilenceWatch::new(start, INTERVAL, LIMIT);
        for n in 1..=100u32 {
            // Heard three intervals ago, every time: within the limit of four.
            let now = start + INTERVAL * n;
            let heard = start + INTERVAL * n.saturating_sub(3);
            assert_eq!(watch.check(now, heard), None, "check {n}");
        }
    }

    #[test]
    fn time_this_process_was_stalled_is_not_held_against_the_peer() {
        let start = Instant::now();
        let mut watch = SilenceWatch::new(start, INTERVAL, LIMIT);
        assert_eq!(watch.check(start + INTERVAL, start), None);
        // Stopped for ten seconds: the first check after it counts the silence afresh,
        // since what the peer sent meanwhile is still unread in the socket.
        let resumed = start + INTERVAL + Duration::from_secs(10);
        assert_eq!(watch.check(resumed, start), None);
        assert_eq!(
            first_silence(&mut watch, resumed, start, 20),
            Some((5, INTERVAL * 5)),
            "a peer still silent after the stall is reported one limit later"
        );
    }

    fn context(cluster: &Cluster, heartbeat: Duration) -> Arc<TransportContext> {
        Arc::new(TransportContext {
            me: Hello {
                cluster_id: cluster.cluster_id,
                node_id: 1,
                name: "n1".to_string(),
                client_urls: Vec::new(),
            },
            cluster: cluster.clone(),
            max_frame_bytes: 1 << 20,
            metrics: Metrics::new(1),
            directory: Arc::default(),
            timing: PeerTiming::for_heartbeat(heartbeat),
        })
    }

    /// Plays peer 2 on `listener`: takes one connection through the handshake.
    async fn accept_as_peer_two(
        listener: &TcpListener,
        cluster: &Cluster,
    ) -> tokio::io::BufReader<TcpStream> {
        let (stream, _) = timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("a connection within 10 s")
            .expect("accepted");
        let mut stream = tokio::io::BufReader::new(stream);
        match read_frame(&mut stream, 1 << 20).await {
            Ok(Frame::Hello(hello)) => assert_eq!(hello.node_id, 1),
            other => panic!("expected a hello, got {other:?}"),
        }
        let welcome = Frame::Welcome(Hello {
            cluster_id: cluster.cluster_id,
            node_id: 2,
            name: "n2".to_string(),
            client_urls: Vec::new(),
        });
        write_frame(stream.get_mut(), &welcome)
            .await
            .expect("welcome sent");
        stream
    }

    /// Reads frames until the dialer closes the connection; how many were pings.
    async fn pings_until_closed(stream: &mut tokio::io::BufReader<TcpStream>) -> usize {
        let mut pings = 0;
        while let Ok(frame) = read_frame(stream, 1 << 20).await {
            if matches!(frame, Frame::Ping { .. }) {
                pings += 1;
            }
        }
        pings
    }

    /// A peer whose process or network stopped answering: the connection stays open
    /// but nothing comes back. The dialer closes it and dials again.
    #[tokio::test]
    async fn a_dialer_that_hears_no_pong_closes_the_connection_and_redials() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let cluster = Cluster::from_addrs(
            &[unused.local_addr().unwrap(), listener.local_addr().unwrap()],
            "test",
        );
        let context = context(&cluster, Duration::from_millis(50));
        let (_frames, outgoing) = mpsc::channel(16);
        let member = cluster.member(2).expect("member 2").clone();
        let dialer = tokio::spawn(dial_peer(Arc::clone(&context), member, outgoing));

        let mut silent = accept_as_peer_two(&listener, &cluster).await;
        let pings = timeout(Duration::from_secs(10), pings_until_closed(&mut silent))
            .await
            .expect("the dialer closes a connection that brings no pong");
        assert!(pings >= 1, "the dialer pinged before giving up");
        let _second = accept_as_peer_two(&listener, &cluster).await;
        assert!(context.metrics.peer_connections_silent.get() >= 1);
        dialer.abort();
    }

    /// The acceptor, for its part, closes an inbound connection that brings nothing.
    #[tokio::test]
    async fn an_acceptor_closes_an_inbound_connection_that_brings_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        // This node is 1 and accepts; the connection claims to come from node 2.
        let cluster = Cluster::from_addrs(&[addr, unused.local_addr().unwrap()], "test");
        let context = context(&cluster, Duration::from_millis(50));
        let (inputs, _received) = mpsc::channel(16);
        let acceptor = tokio::spawn(accept_peers(listener, Arc::clone(&context), inputs));
        let mut stream =
            tokio::io::BufReader::new(TcpStream::connect(addr).await.expect("connect"));
        let hello = Frame::Hello(Hello {
            cluster_id: cluster.cluster_id,
            node_id: 2,
            name: "n2".to_string(),
            client_urls: Vec::new(),
        });
        write_frame(stream.get_mut(), &hello)
            .await
            .expect("hello sent");
        assert!(matches!(
            read_frame(&mut stream, 1 << 20).await,
            Ok(Frame::Welcome(_))
        ));
        let limit = context.timing.inbound_silence_limit;
        let ended = timeout(limit * 4, read_frame(&mut stream, 1 << 20))
            .await
            .expect("the acceptor closes a silent connection");
        assert!(
            matches!(ended, Err(FrameError::Closed | FrameError::Io(_))),
            "{ended:?}"
        );
        assert_eq!(context.metrics.peer_connections_silent.get(), 1);
        acceptor.abort();
    }
}
