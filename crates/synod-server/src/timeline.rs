//! A per-event timeline of the request path, for measuring where one request's
//! microseconds go across the members of a cluster on one host (`synod bench cluster`'s
//! single-client puts, docs/latency.md).
//!
//! Off by default; while off, a recording point costs one relaxed atomic load. Switched
//! on and read through `GET /debug/timeline?enable=true|false` on the client and metrics
//! ports of a member started with `--enable-debug-timeline` (404 otherwise): each call answers the events recorded since the previous call (and forgets
//! them), then turns recording on or off. Times are `CLOCK_MONOTONIC` in nanoseconds,
//! which every process of one host shares, so a load generator on the same host lines
//! the members' events up with its own requests.
//!
//! Histograms (`synod_proposal_duration_seconds` and the rest) give means per stage; this
//! gives the points between them: a message's time on the wire and in the reader task,
//! the wake-ups from one task, thread or process to the next.

use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use synod_core::Message;

/// At most this many events are kept between two reads; later ones are dropped (and
/// counted), so a forgotten `enable=true` costs a bounded amount of memory (56 bytes an
/// event, 56 MiB at most): about 15 s of one client's puts.
pub const MAX_EVENTS: usize = 1 << 20;

/// One point on the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineEvent {
    /// `CLOCK_MONOTONIC`, nanoseconds.
    pub t_ns: u64,
    /// Where on the path: `grpc_in`, `grpc_out` (the gRPC layer), `propose`, `reply`
    /// (the driver takes a proposal, answers it), `send` (the driver queues a message for
    /// a peer), `wire_out` (the peer's writer task begins writing it to the socket),
    /// `wire_in` (a reader task decoded it), `driver_in` (the driver steps it),
    /// `persist_start`, `persisted` (a write-ahead log write handed over or begun, and
    /// its completion reaching the driver), `fsync_done` (the group-commit thread's
    /// completion, on that thread).
    pub stage: &'static str,
    /// The message's kind (`Message::kind`) for the message stages, else empty.
    pub kind: &'static str,
    /// The slot a message is about (`message_slot`), or 0.
    pub slot: u64,
    /// The peer a message goes to or comes from, or 0.
    pub peer: u64,
}

/// What `GET /debug/timeline` answers.
#[derive(Debug, Serialize)]
pub struct TimelineDump {
    /// The member's node id (what other members' events name as `peer`).
    pub node: u64,
    pub enabled: bool,
    /// Events dropped because `MAX_EVENTS` were already kept.
    pub dropped: u64,
    pub events: Vec<TimelineEvent>,
}

#[derive(Default)]
struct Recorded {
    events: Vec<TimelineEvent>,
    dropped: u64,
}

/// The recorder one member's tasks and threads share (through `Metrics`).
#[derive(Default)]
pub struct Timeline {
    node: u64,
    enabled: AtomicBool,
    recorded: Mutex<Recorded>,
}

impl Timeline {
    pub fn new(node: u64) -> Timeline {
        Timeline {
            node,
            ..Timeline::default()
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Records one event now, if recording is on.
    pub fn record(&self, stage: &'static str, kind: &'static str, slot: u64, peer: u64) {
        if self.enabled() {
            self.record_at(monotonic_ns(), stage, kind, slot, peer);
        }
    }

    /// Records one event that happened at `t_ns` (`monotonic_ns`), if recording is on.
    pub fn record_at(
        &self,
        t_ns: u64,
        stage: &'static str,
        kind: &'static str,
        slot: u64,
        peer: u64,
    ) {
        if !self.enabled() {
            return;
        }
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        if recorded.events.len() < MAX_EVENTS {
            recorded.events.push(TimelineEvent {
                t_ns,
                stage,
                kind,
                slot,
                peer,
            });
        } else {
            recorded.dropped += 1;
        }
    }

    /// Records a message stage.
    pub fn message(&self, stage: &'static str, message: &Message, peer: u64) {
        if self.enabled() {
            self.record(stage, message.kind(), message_slot(message), peer);
        }
    }

    /// Hands over what was recorded since the last call, then turns recording on or off
    /// (`None` leaves it as it is).
    pub fn take(&self, enable: Option<bool>) -> TimelineDump {
        let recorded = {
            let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut *recorded)
        };
        if let Some(enable) = enable {
            self.enabled.store(enable, Ordering::Relaxed);
        }
        TimelineDump {
            node: self.node,
            enabled: self.enabled(),
            dropped: recorded.dropped,
            events: recorded.events,
        }
    }
}

/// The slot a message is about, to tell one request's messages from the next one's: the
/// first slot of an Accept, the last of an Accepted, the commit point of a Heartbeat or
/// its acknowledgement; 0 for the rest.
pub fn message_slot(message: &Message) -> u64 {
    match message {
        Message::Accept { first_slot, .. } => *first_slot,
        Message::Accepted { last_slot, .. } => *last_slot,
        Message::Heartbeat { commit_index, .. } | Message::HeartbeatAck { commit_index, .. } => {
            *commit_index
        }
        _ => 0,
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `std::time::Instant` reads on Linux, as a
/// number another process can compare.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC is always available.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn nothing_is_recorded_until_enabled_and_a_read_hands_over_and_forgets() {
        let timeline = Timeline::default();
        timeline.record("propose", "", 0, 0);
        let first = timeline.take(Some(true));
        assert!(first.events.is_empty(), "recorded while off");
        assert!(first.enabled);
        let forward = Message::Forward {
            commands: vec![Bytes::from_static(b"x")],
        };
        timeline.record("propose", "", 0, 0);
        timeline.message("send", &forward, 2);
        let second = timeline.take(Some(false));
        assert!(!second.enabled);
        let stages: Vec<_> = second
            .events
            .iter()
            .map(|event| (event.stage, event.kind, event.peer))
            .collect();
        assert_eq!(stages, vec![("propose", "", 0), ("send", "forward", 2)]);
        assert!(second.events[0].t_ns <= second.events[1].t_ns);
        timeline.record("reply", "", 0, 0);
        assert!(timeline.take(None).events.is_empty(), "recorded after off");
    }

    #[test]
    fn a_full_timeline_drops_and_counts_what_does_not_fit() {
        let timeline = Timeline::default();
        timeline.take(Some(true));
        for _ in 0..MAX_EVENTS + 3 {
            timeline.record("propose", "", 0, 0);
        }
        let dump = timeline.take(None);
        assert_eq!(dump.events.len(), MAX_EVENTS);
        assert_eq!(dump.dropped, 3);
    }

    #[test]
    fn the_clock_is_the_one_instant_reads() {
        let before = monotonic_ns();
        let instant = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let elapsed = instant.elapsed().as_nanos() as u64;
        let after = monotonic_ns();
        assert!(after - before >= elapsed, "{after} - {before} < {elapsed}");
    }
}
