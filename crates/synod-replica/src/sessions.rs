//! Exactly-once application of client proposals, for any state machine.
//!
//! Every proposal the runtime puts in the log is wrapped in a [`Proposal`] carrying
//! `(client, seq)`: `client` is random per server process, `seq` counts its requests.
//! When a failover leaves a proposal's fate unknown the runtime proposes it again, so the
//! log may hold several copies. Replicas keep, per client, the responses of the sequence
//! numbers the client has not yet seen answered, and apply only the first copy; later
//! copies get the kept response. A client may have many requests in flight and they may
//! be chosen out of order, so a session is not "last seq" but a window: each proposal
//! also carries `completed_below`, the client's lowest unanswered seq, below which
//! responses are dropped and copies are ignored (RIFL's acknowledgement scheme). The
//! sessions travel inside the runtime's snapshot, so the rule survives compaction.

use bincode::Options;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use synod_core::Slot;

/// The format byte in front of runtime proposals and snapshots.
pub const RUNTIME_FORMAT: u8 = 1;

/// Most client sessions kept; a new client evicts the one idle longest (in slots).
pub const MAX_CLIENT_SESSIONS: usize = 4096;

/// Most unacknowledged responses kept per client. Beyond it the oldest is given up
/// (its copies are then ignored, never applied twice).
pub const MAX_RESPONSES_PER_CLIENT: usize = 65_536;

/// A client command as it travels in the log.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposing replica's life (random per process).
    pub client: u64,
    /// Counts the client's proposals from 1.
    pub seq: u64,
    /// Every seq below this has been answered to (or given up by) the client.
    pub completed_below: u64,
    /// The state machine's command.
    pub payload: Bytes,
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

fn encode<T: Serialize>(value: &T) -> Bytes {
    encode_into(Vec::new(), value)
}

fn encode_into<T: Serialize>(mut out: Vec<u8>, value: &T) -> Bytes {
    out.push(RUNTIME_FORMAT);
    codec()
        .serialize_into(&mut out, value)
        .unwrap_or_else(|error| panic!("encoding runtime data failed: {error}"));
    Bytes::from(out)
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    let (&format, body) = bytes.split_first().ok_or_else(|| format!("empty {what}"))?;
    if format != RUNTIME_FORMAT {
        return Err(format!(
            "{what} has format {format}, this build reads format {RUNTIME_FORMAT}"
        ));
    }
    codec()
        .with_limit(body.len() as u64)
        .deserialize(body)
        .map_err(|error| format!("malformed {what}: {error}"))
}

impl Proposal {
    /// The bytes that go into the log.
    pub fn encode(&self) -> Bytes {
        encode(self)
    }

    /// Reads a proposal taken from the log.
    pub fn decode(bytes: &[u8]) -> Result<Proposal, String> {
        decode(bytes, "proposal")
    }
}

/// What to do with a proposal taken from the log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// First copy: apply it, then `record` the response.
    Apply,
    /// A copy of an applied proposal: answer with the kept response.
    Duplicate(Bytes),
    /// The client has moved past it: ignore it.
    Stale,
}

/// One client's window of responses.
#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ClientSession {
    /// Every seq below this was answered (or given up).
    pub completed_below: u64,
    /// The slot of the client's last proposal, to pick whom to evict.
    pub last_slot: Slot,
    /// Responses of applied proposals not yet acknowledged, by seq.
    pub responses: BTreeMap<u64, Bytes>,
}

/// The session table: every client's window.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Sessions {
    clients: BTreeMap<u64, ClientSession>,
}

impl Sessions {
    /// How many clients have a session.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when no client has a session.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Looks `proposal` (taken from the log at `slot`) up, first moving the client's
    /// window to its `completed_below`.
    pub fn check(&mut self, proposal: &Proposal, slot: Slot) -> Outcome {
        if !self.clients.contains_key(&proposal.client) {
            self.evict_for_new_client();
        }
        let session = self.clients.entry(proposal.client).or_default();
        session.last_slot = slot;
        if proposal.completed_below > session.completed_below {
            session.completed_below = proposal.completed_below;
            session.responses = session.responses.split_off(&proposal.completed_below);
        }
        if proposal.seq < session.completed_below {
            return Outcome::Stale;
        }
        match session.responses.get(&proposal.seq) {
            Some(response) => Outcome::Duplicate(response.clone()),
            None => Outcome::Apply,
        }
    }

    /// The kept response of `(client, seq)`, if it was applied and not yet acknowledged.
    pub fn response(&self, client: u64, seq: u64) -> Option<Bytes> {
        self.clients.get(&client)?.responses.get(&seq).cloned()
    }

    /// Keeps the response of an applied proposal for its copies.
    pub fn record(&mut self, client: u64, seq: u64, response: Bytes) {
        let session = self.clients.entry(client).or_default();
        session.responses.insert(seq, response);
        while session.responses.len() > MAX_RESPONSES_PER_CLIENT {
            if let Some((oldest, _)) = session.responses.pop_first() {
                session.completed_below = session.completed_below.max(oldest + 1);
            }
        }
    }

    fn evict_for_new_client(&mut self) {
        while self.clients.len() >= MAX_CLIENT_SESSIONS {
            let idle = self
                .clients
                .iter()
                .min_by_key(|(client, session)| (session.last_slot, **client))
                .map(|(client, _)| *client);
            match idle {
                Some(client) => self.clients.remove(&client),
                None => break,
            };
        }
    }
}

/// What the runtime saves as a snapshot: the state machine's own image plus the
/// sessions and the slot they cover.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RuntimeImage {
    /// Every slot up to this one is in the image.
    pub applied_slot: Slot,
    /// The session table.
    pub sessions: Vec<(u64, ClientSession)>,
    /// The state machine's own snapshot.
    pub state_machine: Bytes,
}

impl RuntimeImage {
    /// The image of a replica at `applied_slot`.
    pub fn new(applied_slot: Slot, sessions: &Sessions, state_machine: Bytes) -> RuntimeImage {
        RuntimeImage {
            applied_slot,
            sessions: sessions
                .clients
                .iter()
                .map(|(client, session)| (*client, session.clone()))
                .collect(),
            state_machine,
        }
    }

    /// The bytes of a snapshot file. Sized first: it carries the state machine's image
    /// (hundreds of MB for a large store), which a Vec grown by doubling would copy again
    /// at every step.
    pub fn encode(&self) -> Bytes {
        let size = codec().serialized_size(self).unwrap_or(0);
        encode_into(
            Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(1)),
            self,
        )
    }

    /// Reads a snapshot file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<RuntimeImage, String> {
        decode(bytes, "runtime snapshot")
    }

    /// The session table it carries.
    pub fn sessions(&self) -> Sessions {
        Sessions {
            clients: self.sessions.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proposal(client: u64, seq: u64, completed_below: u64) -> Proposal {
        Proposal {
            client,
            seq,
            completed_below,
            payload: Bytes::from_static(b"x"),
        }
    }

    #[test]
    fn a_retried_proposal_applies_once_and_replays_its_response() {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.check(&proposal(7, 1, 1), 1), Outcome::Apply);
        sessions.record(7, 1, Bytes::from_static(b"r1"));
        assert_eq!(
            sessions.check(&proposal(7, 1, 1), 2),
            Outcome::Duplicate(Bytes::from_static(b"r1"))
        );
    }

    #[test]
    fn requests_in_flight_together_may_be_chosen_out_of_order() {
        let mut sessions = Sessions::default();
        // seq 2 is chosen before seq 1 (its first copy was lost in a failover).
        assert_eq!(sessions.check(&proposal(7, 2, 1), 1), Outcome::Apply);
        sessions.record(7, 2, Bytes::from_static(b"r2"));
        assert_eq!(sessions.check(&proposal(7, 1, 1), 2), Outcome::Apply);
        sessions.record(7, 1, Bytes::from_static(b"r1"));
        assert_eq!(
            sessions.check(&proposal(7, 2, 1), 3),
            Outcome::Duplicate(Bytes::from_static(b"r2"))
        );
    }

    #[test]
    fn acknowledged_responses_are_dropped_and_their_copies_ignored() {
        let mut sessions = Sessions::default();
        sessions.check(&proposal(7, 1, 1), 1);
        sessions.record(7, 1, Bytes::from_static(b"r1"));
        // The client saw seq 1 answered: its next proposal says so.
        assert_eq!(sessions.check(&proposal(7, 2, 2), 2), Outcome::Apply);
        assert_eq!(sessions.check(&proposal(7, 1, 1), 3), Outcome::Stale);
        assert!(sessions.clients[&7].responses.is_empty());
    }

    #[test]
    fn the_idlest_client_is_evicted_when_the_table_is_full() {
        let mut sessions = Sessions::default();
        for client in 0..MAX_CLIENT_SESSIONS as u64 {
            sessions.check(&proposal(client + 10, 1, 1), client + 1);
        }
        sessions.check(&proposal(10, 2, 1), 100_000);
        sessions.check(&proposal(1, 1, 1), 100_001);
        assert_eq!(sessions.len(), MAX_CLIENT_SESSIONS);
        assert!(sessions.clients.contains_key(&10), "recently active kept");
        assert!(!sessions.clients.contains_key(&11), "idlest evicted");
    }

    #[test]
    fn images_round_trip_and_refuse_garbage() {
        let mut sessions = Sessions::default();
        sessions.check(&proposal(7, 3, 2), 5);
        sessions.record(7, 3, Bytes::from_static(b"r3"));
        let image = RuntimeImage::new(5, &sessions, Bytes::from_static(b"state"));
        let decoded = RuntimeImage::decode(&image.encode()).unwrap();
        assert_eq!(decoded, image);
        assert_eq!(decoded.sessions(), sessions);
        assert!(RuntimeImage::decode(b"").unwrap_err().contains("empty"));
        assert!(RuntimeImage::decode(&[9, 1, 2])
            .unwrap_err()
            .contains("format 9"));
        assert!(Proposal::decode(&[RUNTIME_FORMAT, 0xff, 0xff, 0xff])
            .unwrap_err()
            .contains("malformed"));
    }
}
