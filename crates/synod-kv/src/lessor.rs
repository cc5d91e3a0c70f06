//! The lessor: when leases expire, decided by one member at a time (etcd's `lessor`).
//!
//! Granting and revoking a lease are commands of the log, so every replica holds the same
//! leases ([`KvStore::leases`]). *When* a lease expires is a matter of clocks, which replicas
//! do not share, so one member decides it: the leader. Its lessor keeps a deadline per lease
//! in memory — keep-alives move it, they are not logged — and when one passes it proposes
//! [`Op::LeaseExpire`], which deletes the lease and its keys at one revision on every replica.
//! Nothing here is I/O: the server and the simulator feed it the applied store, the time and
//! whether their replica holds the leader lease, and propose the commands it returns.
//!
//! # Epochs: which leader's decisions count
//!
//! A leader's lessor starts deciding only after its [`Op::LeasePromote`] — carrying the
//! ballot of its leadership — is applied with a ballot above the store's lease epoch; it then
//! gives every lease a fresh deadline, `now + TTL + extension` (etcd's `Promote`, extended by
//! an election timeout as etcd does). Its expiries carry that epoch and take effect only if it
//! is still the store's epoch when they are applied. So:
//!
//! * a keep-alive is acknowledged only by the lessor of the current epoch, while its replica
//!   holds the leader lease (checked *after* the deadline moved: the ack is true from then on);
//! * a leader elected later can only have started after that leader lease ran out, so its own
//!   promotion — and with it every deadline it sets — comes after every acknowledgement of the
//!   earlier epoch, and never sets a deadline earlier than `ack + TTL`;
//! * a deposed leader's expiry that is applied after a newer promotion changes nothing, and
//!   one applied before it is seen by the new leader before it promotes (it applies the log in
//!   order), so the new leader never acknowledges a keep-alive of a lease already expired.
//!
//! The guarantee to clients, as etcd's: a lease kept alive at time `t` (the keep-alive sent
//! at `t` and acknowledged) is not revoked by expiry before `t + TTL` as the leader's clock
//! runs; clock drift between members is the only slack, and the promotion's extension covers
//! a failover. A lease is not a lock: its holder can be paused past its TTL and not know; see
//! docs/leases.md on fencing.

use std::collections::{BTreeMap, BTreeSet};

use imbl::OrdMap;

use crate::{KvStore, LeaseEpoch, Op};

/// Nanoseconds of the runtime's monotonic clock.
pub type Nanos = u64;

/// An expiry proposed is proposed again after this long if the lease is still there (the
/// proposal was lost with a leader, or is still on its way).
pub const EXPIRY_RETRY_NANOS: Nanos = 3_000_000_000;

/// Why a keep-alive was not acknowledged here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewError {
    /// This member does not decide expiries now: ask the leader (etcd `ErrNotPrimary`).
    NotPrimary,
    /// No such lease, or it expired and its revoke is on its way (etcd `ErrLeaseNotFound`).
    NotFound,
}

/// One member's lessor. See the module documentation.
#[derive(Clone, Debug)]
pub struct Lessor {
    me: u64,
    extension_nanos: Nanos,
    /// How long one unit of a lease's TTL lasts: a second in production; the simulator
    /// shrinks it so leases expire within its short runs.
    ttl_unit_nanos: Nanos,
    /// The epoch this lessor decides for (its promotion applied), if any.
    primary: Option<LeaseEpoch>,
    /// Every lease's deadline while primary.
    deadlines: BTreeMap<i64, Nanos>,
    by_deadline: BTreeSet<(Nanos, i64)>,
    /// Expiries proposed and when.
    expiring: BTreeMap<i64, Nanos>,
    /// The store's leases as last seen (diffed against the next).
    seen: OrdMap<i64, i64>,
    /// The promotion last proposed and when.
    promoting: Option<(LeaseEpoch, Nanos)>,
}

impl Lessor {
    /// The lessor of member `me`; a promotion extends every deadline by `extension_nanos`.
    /// TTLs count in seconds.
    pub fn new(me: u64, extension_nanos: Nanos) -> Lessor {
        Lessor::with_ttl_unit(me, extension_nanos, 1_000_000_000)
    }

    /// As [`Lessor::new`], with TTLs counting in units of `ttl_unit_nanos`.
    pub fn with_ttl_unit(me: u64, extension_nanos: Nanos, ttl_unit_nanos: Nanos) -> Lessor {
        Lessor {
            me,
            extension_nanos,
            ttl_unit_nanos: ttl_unit_nanos.max(1),
            primary: None,
            deadlines: BTreeMap::new(),
            by_deadline: BTreeSet::new(),
            expiring: BTreeMap::new(),
            seen: OrdMap::new(),
            promoting: None,
        }
    }

    /// The epoch this lessor decides expiries for, if any.
    pub fn primary(&self) -> Option<LeaseEpoch> {
        self.primary
    }

    /// The store after commands were applied: promotes (the store's epoch is the promotion
    /// this lessor proposed), demotes (any other epoch), and tracks leases granted (deadline
    /// `now + TTL`) and revoked.
    pub fn on_applied(&mut self, now: Nanos, store: &KvStore) {
        let epoch = store.lease_epoch();
        if self.primary == Some(epoch) {
            self.track(now, store);
        } else if self.promoting.is_some_and(|(ballot, _)| ballot == epoch) {
            self.promote(now, epoch, store);
        } else {
            // Another member's epoch — or one of this member's from before a restart: a new
            // life promotes afresh, so an expiry it decided in its earlier life and that
            // is still on its way can never meet a keep-alive it acknowledged in this one.
            self.demote(store);
        }
    }

    /// Whether this member, whose replica holds the leader lease at `ballot`, should propose
    /// a promotion, and the command; proposed again after [`EXPIRY_RETRY_NANOS`] if it has
    /// not taken effect. A leader whose ballot rose (a refreshed leadership) promotes again:
    /// that only moves deadlines later.
    pub fn promotion(&mut self, now: Nanos, store: &KvStore, ballot: LeaseEpoch) -> Option<Op> {
        if ballot.node != self.me || store.lease_epoch() >= ballot {
            return None;
        }
        if let Some((proposed, at)) = self.promoting {
            if proposed == ballot && now < at.saturating_add(EXPIRY_RETRY_NANOS) {
                return None;
            }
        }
        self.promoting = Some((ballot, now));
        Some(Op::LeasePromote(ballot))
    }

    /// A keep-alive: the lease's deadline moves to `now + TTL`; the TTL is returned. The
    /// caller acknowledges it only if its replica holds the leader lease *after* this call.
    pub fn renew(&mut self, now: Nanos, id: i64, store: &KvStore) -> Result<i64, RenewError> {
        if self.primary.is_none() || self.primary != Some(store.lease_epoch()) {
            return Err(RenewError::NotPrimary);
        }
        let ttl = store.lease_ttl(id).ok_or(RenewError::NotFound)?;
        let deadline = self
            .deadlines
            .get(&id)
            .copied()
            .ok_or(RenewError::NotFound)?;
        if deadline <= now {
            // Expired: its revoke is (or will be) on its way; etcd refuses to renew it too.
            return Err(RenewError::NotFound);
        }
        self.set_deadline(id, now.saturating_add(self.duration(ttl)));
        Ok(ttl)
    }

    /// The whole TTL units (seconds) a lease has left, as etcd truncates them, while
    /// primary. After a promotion this can exceed the granted TTL by the extension.
    pub fn remaining_seconds(&self, now: Nanos, id: i64) -> Option<i64> {
        self.primary?;
        let deadline = *self.deadlines.get(&id)?;
        let left = deadline.saturating_sub(now);
        Some((left / self.ttl_unit_nanos) as i64)
    }

    /// Leases whose deadline passed, as commands to propose (at most `max`); each is asked
    /// again after [`EXPIRY_RETRY_NANOS`] if it is still there. Call only while the replica
    /// holds the leader lease.
    pub fn expired(&mut self, now: Nanos, max: usize) -> Vec<Op> {
        let Some(epoch) = self.primary else {
            return Vec::new();
        };
        let mut commands = Vec::new();
        for &(deadline, id) in &self.by_deadline {
            if deadline > now || commands.len() >= max {
                break;
            }
            let due = self
                .expiring
                .get(&id)
                .is_none_or(|at| now >= at.saturating_add(EXPIRY_RETRY_NANOS));
            if due {
                commands.push(Op::LeaseExpire { id, epoch });
            }
        }
        for command in &commands {
            if let Op::LeaseExpire { id, .. } = command {
                self.expiring.insert(*id, now);
            }
        }
        commands
    }

    /// The next deadline, if primary: when `expired` may next have something.
    pub fn next_deadline(&self) -> Option<Nanos> {
        self.primary?;
        self.by_deadline.first().map(|(deadline, _)| *deadline)
    }

    fn promote(&mut self, now: Nanos, epoch: LeaseEpoch, store: &KvStore) {
        self.primary = Some(epoch);
        self.deadlines.clear();
        self.by_deadline.clear();
        self.expiring.clear();
        let base = now.saturating_add(self.extension_nanos);
        for (id, ttl) in store.leases().iter() {
            self.set_deadline(*id, base.saturating_add(self.duration(*ttl)));
        }
        self.seen = store.leases().clone();
    }

    fn demote(&mut self, store: &KvStore) {
        self.primary = None;
        self.deadlines.clear();
        self.by_deadline.clear();
        self.expiring.clear();
        self.seen = store.leases().clone();
    }

    /// Follows grants and revokes since the store was last seen.
    fn track(&mut self, now: Nanos, store: &KvStore) {
        let leases = store.leases();
        if leases.ptr_eq(&self.seen) {
            return;
        }
        let mut granted = Vec::new();
        let mut revoked = Vec::new();
        for change in self.seen.diff(leases) {
            match change {
                imbl::ordmap::DiffItem::Add(id, ttl) => granted.push((*id, *ttl)),
                imbl::ordmap::DiffItem::Update { new: (id, ttl), .. } => granted.push((*id, *ttl)),
                imbl::ordmap::DiffItem::Remove(id, _) => revoked.push(*id),
            }
        }
        for id in revoked {
            if let Some(deadline) = self.deadlines.remove(&id) {
                self.by_deadline.remove(&(deadline, id));
            }
            self.expiring.remove(&id);
        }
        for (id, ttl) in granted {
            self.set_deadline(id, now.saturating_add(self.duration(ttl)));
        }
        self.seen = leases.clone();
    }

    fn duration(&self, ttl: i64) -> Nanos {
        (ttl.max(0) as u64).saturating_mul(self.ttl_unit_nanos)
    }

    fn set_deadline(&mut self, id: i64, deadline: Nanos) {
        if let Some(old) = self.deadlines.insert(id, deadline) {
            self.by_deadline.remove(&(old, id));
        }
        self.by_deadline.insert((deadline, id));
    }
}
