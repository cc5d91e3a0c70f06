//! What a replica needs to know beside the protocol core's own configuration.

use crate::replica::Nanos;

/// Timing and limits of one replica. Durations are nanoseconds of the runtime's
/// monotonic clock; the core counts in ticks of `tick_nanos`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// The protocol core's configuration (its `incarnation` must differ in every life).
    pub core: synod_core::Config,
    /// Length of one tick of the core's logical clock.
    pub tick_nanos: Nanos,
    /// A proposal or linearizable read without an outcome after this long fails with
    /// [`crate::RequestError::Timeout`] (a proposal may still take effect).
    pub request_timeout_nanos: Nanos,
    /// A proposal not applied within this long is proposed again (sessions make the
    /// copies harmless).
    pub retry_after_nanos: Nanos,
    /// Wait before asking again for a read index no leader could give.
    pub read_retry_nanos: Nanos,
    /// Proposals, reads and deadlines are looked over at most this often.
    pub maintenance_interval_nanos: Nanos,
    /// Take a snapshot (and compact the log) every this many applied slots; 0 never.
    pub snapshot_interval_slots: u64,
    /// And not before the slots applied since the last snapshot add up to this share
    /// (percent) of the state's size when that snapshot was taken
    /// ([`synod_kv::StateMachine::size_hint`]); 0: the slot count alone decides.
    /// Writing a large state out again after every few thousand small commands costs
    /// far more disk than the commands themselves. This is the Raft dissertation's
    /// expansion factor (§5.1.3): the log kept on disk and in memory stays within this
    /// share of the last snapshot (or `snapshot_interval_slots`, if that is more), and
    /// a state that grows with the log (an uncompacted MVCC history) is written out at
    /// sizes growing geometrically, so the snapshots written add up to a bounded
    /// multiple of the log rather than growing with the square of it.
    pub snapshot_log_growth_percent: u64,
    /// A snapshot stream the runtime has not reported on after this long is given up,
    /// so the peer can be sent one again.
    pub snapshot_send_timeout_nanos: Nanos,
    /// A snapshot delivered whole to a peer is not sent to it again for this long (the
    /// peer is likely still syncing, verifying and installing it); a stream that failed
    /// may be sent again at once.
    pub snapshot_resend_after_nanos: Nanos,
    /// A proposal's payload larger than this is refused with
    /// [`crate::RequestError::TooLarge`] (etcd's `--max-request-bytes`).
    pub max_request_bytes: usize,
    /// This life's client id in the session table: random per life, never 0 (a restarted
    /// replica's sequence numbers start again at 1). Two lives, or two members, must never
    /// share one.
    pub client_id: u64,
    /// Hand every applied slot out in `ReplicaReady::applied` (for checkers; costs a
    /// copy of each value).
    pub observe_applied: bool,
}

impl ReplicaConfig {
    /// Defaults around a core configuration: 10 ms ticks, 5 s request timeout, retries
    /// after an election timeout, snapshots every 10,000 slots once the log has grown by
    /// the state's size (a delivered one sent again after two election timeouts at the
    /// soonest), 1.5 MiB requests.
    pub fn new(core: synod_core::Config, client_id: u64) -> ReplicaConfig {
        let tick_nanos = 10_000_000;
        let retry_after_nanos = core.election_timeout_ticks * tick_nanos;
        ReplicaConfig {
            core,
            tick_nanos,
            request_timeout_nanos: 5_000_000_000,
            retry_after_nanos,
            read_retry_nanos: 20_000_000,
            maintenance_interval_nanos: 20_000_000,
            snapshot_interval_slots: 10_000,
            snapshot_log_growth_percent: 100,
            snapshot_send_timeout_nanos: 120_000_000_000,
            snapshot_resend_after_nanos: 2 * retry_after_nanos,
            max_request_bytes: 3 << 19,
            client_id: client_id.max(1),
            observe_applied: false,
        }
    }

    /// Checks the limits against each other and the core's.
    pub fn validate(&self) -> Result<(), String> {
        self.core.validate()?;
        if self.tick_nanos == 0 {
            return Err("the tick must be longer than zero".into());
        }
        if self.client_id == 0 {
            return Err("client id 0 is reserved".into());
        }
        if self.max_request_bytes == 0 {
            return Err("max_request_bytes must be positive".into());
        }
        Ok(())
    }
}
