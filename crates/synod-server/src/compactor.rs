//! Auto-compaction as etcd does it (`--auto-compaction-mode`, `--auto-compaction-retention`):
//! a sans-IO policy that, fed the time and the store's revision, says when the leader should
//! propose a `Compact` and at which revision. The compaction itself goes through the log, so
//! every member compacts at the same revision; followers only keep sampling, so a new leader
//! knows what the revision was a retention ago.
//!
//! * `periodic`, retention `T`: keep at least `T` of history. Every `min(T, 1h) / 10` the
//!   revision is sampled; every `min(T, 1h)` the leader compacts at the newest sample at least
//!   `T` old (etcd 3.4's `Periodic` compactor).
//! * `revision`, retention `N`: every 5 minutes the leader compacts at `revision − N` (etcd's
//!   `Revision` compactor).

use std::collections::VecDeque;
use std::time::Duration;

/// etcd's `revision` mode checks this often.
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// What `--auto-compaction-mode` and `--auto-compaction-retention` ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompactionPolicy {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

impl CompactionPolicy {
    /// Parses the two flags as etcd does: `periodic` takes a duration (`1h`, `30m`, `10s`,
    /// `500ms`) or a bare number of hours, `revision` a count. A zero retention disables
    /// auto-compaction (`Ok(None)`).
    pub fn parse(mode: &str, retention: &str) -> Result<Option<CompactionPolicy>, String> {
        let retention = retention.trim();
        match mode {
            "periodic" => {
                let duration = parse_duration(retention)?;
                Ok((!duration.is_zero()).then_some(CompactionPolicy::Periodic(duration)))
            }
            "revision" => {
                let count: i64 = retention.parse().map_err(|_| {
                    format!("--auto-compaction-retention {retention:?} is not a revision count")
                })?;
                if count < 0 {
                    return Err(format!("--auto-compaction-retention {count} is negative"));
                }
                Ok((count > 0).then_some(CompactionPolicy::Revision(count)))
            }
            other => Err(format!(
                "unknown --auto-compaction-mode {other:?}: use periodic or revision"
            )),
        }
    }

    /// How often the policy should be polled (it tolerates being polled more often).
    pub fn poll_interval(&self) -> Duration {
        match self {
            CompactionPolicy::Periodic(retention) => sample_interval(*retention),
            CompactionPolicy::Revision(_) => REVISION_CHECK_INTERVAL,
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(hours) = text.parse::<u64>() {
        return Ok(Duration::from_secs(hours * 3600));
    }
    duration_with_unit(text).ok_or_else(|| {
        format!("--auto-compaction-retention {text:?} is not a duration (1h, 30m, 10s)")
    })
}

/// A duration written as Go's flags take them, with one unit: `500ms`, `10s`, `30m`, `1h`.
pub(crate) fn duration_with_unit(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit_nanos: u64 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return None,
    };
    Some(Duration::from_nanos(number.saturating_mul(unit_nanos)))
}

/// etcd's periodic compactor samples every `min(retention, 1h) / 10`.
fn sample_interval(retention: Duration) -> Duration {
    compaction_interval(retention) / 10
}

/// ... and compacts at most every `min(retention, 1h)`.
fn compaction_interval(retention: Duration) -> Duration {
    retention.min(Duration::from_secs(3600))
}

/// The policy's memory: revision samples and when it last compacted.
#[derive(Clone, Debug)]
pub struct AutoCompactor {
    policy: CompactionPolicy,
    /// `(time, revision)`, oldest first, a retention's worth and one more.
    samples: VecDeque<(Duration, i64)>,
    last_sample: Option<Duration>,
    last_compaction: Option<Duration>,
    /// The revision last proposed, so a slow proposal is not repeated.
    last_proposed: i64,
}

impl AutoCompactor {
    pub fn new(policy: CompactionPolicy) -> AutoCompactor {
        AutoCompactor {
            policy,
            samples: VecDeque::new(),
            last_sample: None,
            last_compaction: None,
            last_proposed: 0,
        }
    }

    /// Called with the monotonic time, the store's revision and compacted revision, and
    /// whether this member leads. Returns the revision to compact at, if it is time.
    pub fn poll(
        &mut self,
        now: Duration,
        revision: i64,
        compacted: i64,
        is_leader: bool,
    ) -> Option<i64> {
        let target = match self.policy {
            CompactionPolicy::Periodic(retention) => self.periodic(now, revision, retention),
            CompactionPolicy::Revision(keep) => self.revisional(now, revision, keep),
        }?;
        if !is_leader || target <= compacted || target <= self.last_proposed {
            return None;
        }
        self.last_proposed = target;
        self.last_compaction = Some(now);
        Some(target)
    }

    fn periodic(&mut self, now: Duration, revision: i64, retention: Duration) -> Option<i64> {
        let due = |last: Option<Duration>, every: Duration| {
            last.is_none_or(|last| now.saturating_sub(last) >= every)
        };
        if due(self.last_sample, sample_interval(retention)) {
            self.samples.push_back((now, revision));
            self.last_sample = Some(now);
        }
        // Keep the newest sample at least a retention old, and everything after it.
        while self.samples.len() > 1 && now.saturating_sub(self.samples[1].0) >= retention {
            self.samples.pop_front();
        }
        let &(taken, target) = self.samples.front()?;
        let old_enough = now.saturating_sub(taken) >= retention;
        (old_enough && due(self.last_compaction, compaction_interval(retention))).then_some(target)
    }

    fn revisional(&mut self, now: Duration, revision: i64, keep: i64) -> Option<i64> {
        let due = self
            .last_sample
            .is_none_or(|last| now.saturating_sub(last) >= REVISION_CHECK_INTERVAL);
        if !due {
            return None;
        }
        self.last_sample = Some(now);
        let target = revision - keep;
        (target > 0).then_some(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn flags_parse_as_etcd_reads_them() {
        let periodic = |text| CompactionPolicy::parse("periodic", text);
        assert_eq!(
            periodic("1"),
            Ok(Some(CompactionPolicy::Periodic(60 * MINUTE)))
        );
        assert_eq!(
            periodic("30m"),
            Ok(Some(CompactionPolicy::Periodic(30 * MINUTE)))
        );
        assert_eq!(
            periodic("500ms"),
            Ok(Some(CompactionPolicy::Periodic(Duration::from_millis(500))))
        );
        assert_eq!(periodic("0"), Ok(None));
        assert!(periodic("soon").is_err());
        assert_eq!(
            CompactionPolicy::parse("revision", "1000"),
            Ok(Some(CompactionPolicy::Revision(1000)))
        );
        assert!(CompactionPolicy::parse("revision", "1h").is_err());
        assert!(CompactionPolicy::parse("hourly", "1").is_err());
    }

    #[test]
    fn periodic_keeps_a_retention_of_history_and_compacts_once_per_interval() {
        let mut compactor = AutoCompactor::new(CompactionPolicy::Periodic(10 * MINUTE));
        let mut proposed = Vec::new();
        // One write per second for 30 minutes, polled every second.
        for second in 0..1800u64 {
            let now = Duration::from_secs(second);
            let revision = 1 + second as i64;
            let compacted = proposed.last().copied().unwrap_or(0);
            if let Some(target) = compactor.poll(now, revision, compacted, true) {
                // The target was the revision at least ten minutes (one sample) ago.
                assert!(revision - target >= 600, "{second}: {target} vs {revision}");
                assert!(revision - target <= 660, "{second}: {target} vs {revision}");
                proposed.push(target);
            }
        }
        // Every 10 minutes from minute 10 on.
        assert_eq!(proposed.len(), 2, "{proposed:?}");
    }

    #[test]
    fn only_the_leader_proposes_but_followers_keep_sampling() {
        let mut compactor = AutoCompactor::new(CompactionPolicy::Periodic(MINUTE));
        for second in 0..120u64 {
            let now = Duration::from_secs(second);
            assert_eq!(compactor.poll(now, second as i64 + 1, 0, false), None);
        }
        let target = compactor.poll(Duration::from_secs(120), 121, 0, true);
        assert!(
            target.is_some_and(|target| (55..=61).contains(&target)),
            "{target:?}"
        );
    }

    #[test]
    fn revision_mode_compacts_retention_behind_every_five_minutes() {
        let mut compactor = AutoCompactor::new(CompactionPolicy::Revision(100));
        assert_eq!(compactor.poll(Duration::ZERO, 50, 0, true), None);
        assert_eq!(compactor.poll(5 * MINUTE, 1000, 0, true), Some(900));
        assert_eq!(compactor.poll(6 * MINUTE, 2000, 900, true), None);
        assert_eq!(compactor.poll(10 * MINUTE, 2000, 900, true), Some(1900));
        // Nothing new: no proposal at a revision already compacted.
        assert_eq!(compactor.poll(15 * MINUTE, 2000, 1900, true), None);
    }
}
