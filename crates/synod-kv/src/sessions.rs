//! Client sessions: the last sequence number and reply of each client, for exactly-once writes.
//!
//! A client retries a command with the same `(client, seq)` until it sees the reply; the log may
//! therefore hold several copies. The first copy applies and its reply is kept; later copies get
//! the kept reply. The table is bounded: a new client evicts the session whose last command was
//! applied longest ago (lowest slot, ties broken by the lower client id), which every replica
//! picks alike because it depends only on the log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Response, Slot};

/// How many sessions a store keeps unless told otherwise.
pub const DEFAULT_MAX_SESSIONS: usize = 65_536;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub client: u64,
    /// The last sequence number applied for this client.
    pub seq: u64,
    /// The slot that applied it; orders evictions.
    pub slot: Slot,
    pub response: Response,
}

/// What to do with a sessioned command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    /// A retry of the last applied command: answer with its kept reply.
    Replay(&'a Response),
    /// Older than the last applied command: its reply is gone.
    Stale { last: u64 },
    /// Not seen yet: apply it.
    Fresh,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sessions {
    max_sessions: usize,
    by_client: BTreeMap<u64, Session>,
    /// `(slot, client)` of every session, oldest first.
    by_age: BTreeSet<(Slot, u64)>,
}

impl Sessions {
    pub fn new(max_sessions: usize) -> Sessions {
        Sessions {
            max_sessions,
            by_client: BTreeMap::new(),
            by_age: BTreeSet::new(),
        }
    }

    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn get(&self, client: u64) -> Option<&Session> {
        self.by_client.get(&client)
    }

    pub fn lookup(&self, client: u64, seq: u64) -> Lookup<'_> {
        match self.by_client.get(&client) {
            Some(session) if seq == session.seq => Lookup::Replay(&session.response),
            Some(session) if seq < session.seq => Lookup::Stale { last: session.seq },
            _ => Lookup::Fresh,
        }
    }

    /// Keeps `response` as the reply to `client`'s command `seq`, applied at `slot`.
    pub fn record(&mut self, client: u64, seq: u64, slot: Slot, response: Response) {
        if let Some(previous) = self.by_client.remove(&client) {
            self.by_age.remove(&(previous.slot, client));
        } else {
            self.evict_down_to(self.max_sessions.saturating_sub(1));
            if self.max_sessions == 0 {
                return;
            }
        }
        self.by_age.insert((slot, client));
        self.by_client.insert(
            client,
            Session {
                client,
                seq,
                slot,
                response,
            },
        );
    }

    /// Evicts the oldest sessions until at most `keep` remain.
    fn evict_down_to(&mut self, keep: usize) {
        while self.by_client.len() > keep {
            let Some((_, client)) = self.by_age.pop_first() else {
                break;
            };
            self.by_client.remove(&client);
        }
    }

    /// Every session in client order (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = &Session> {
        self.by_client.values()
    }

    /// Rebuilds the table from snapshot sessions (already checked for unique clients), trimming
    /// to this store's bound.
    pub fn from_sessions(max_sessions: usize, sessions: Vec<Session>) -> Sessions {
        let mut table = Sessions::new(max_sessions);
        for session in sessions {
            table.by_age.insert((session.slot, session.client));
            table.by_client.insert(session.client, session);
        }
        table.evict_down_to(max_sessions);
        table
    }
}
