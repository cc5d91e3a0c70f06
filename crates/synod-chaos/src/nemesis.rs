//! The nemesis: one fault at a time, drawn from a seeded RNG, held for a bounded period and
//! then healed. Every enabled kind comes once per round, in a seeded order, so even a short
//! run injects each. It runs on the thread that started the members (see `cluster`).

use crate::cluster::{fill_disk, status, Cluster};
use crate::firewall::{Block, Firewall};
use crate::{ChaosError, FaultKind};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// One injected fault.
#[derive(Clone, Debug, Serialize)]
pub struct Episode {
    pub kind: FaultKind,
    /// Members it hit.
    pub targets: Vec<String>,
    /// What exactly was done, in words.
    pub detail: String,
    /// Seconds since the run began.
    pub start_s: f64,
    pub healed_s: f64,
    /// For clock faults: the rate ratio exceeds `--max-clock-drift-percent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beyond_bound: Option<bool>,
}

/// A member that exited without being killed.
#[derive(Clone, Debug, Serialize)]
pub struct Exit {
    pub member: String,
    pub at_s: f64,
    pub status: String,
    /// During a disk-full episode on this member: the documented way to fail.
    pub expected: bool,
    pub log_tail: String,
}

/// How clock faults pick their rates.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockSkew {
    /// Rate ratios within the drift bound (0.8 of it).
    Within,
    /// Ratios of 2 or 3, far beyond it.
    Beyond,
    /// Either, drawn per episode.
    Mixed,
}

/// What a fault did: the members it hit, in words, and (clock faults) beyond the bound.
type FaultResult = Result<(Vec<usize>, String, Option<bool>), ChaosError>;

pub struct Nemesis<'a> {
    pub cluster: &'a mut Cluster,
    pub firewall: Firewall,
    pub rng: ChaCha8Rng,
    pub runtime: &'a tokio::runtime::Runtime,
    pub epoch: Instant,
    pub interrupted: &'a AtomicBool,
    pub clock_skew: ClockSkew,
    pub max_clock_drift_percent: u64,
    pub episodes: Vec<Episode>,
    pub exits: Vec<Exit>,
}

impl Nemesis<'_> {
    fn now_s(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// Sleeps `duration` unless interrupted (then returns early with `false`).
    pub fn sleep(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            if self.interrupted.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
        !self.interrupted.load(Ordering::SeqCst)
    }

    /// A seeded order of every enabled kind, for one round.
    pub fn round(&mut self, kinds: &[FaultKind]) -> Vec<FaultKind> {
        let mut order = kinds.to_vec();
        order.shuffle(&mut self.rng);
        order
    }

    /// The index of the member the running ones agree is leader.
    pub fn leader(&self) -> Option<usize> {
        let urls: Vec<(usize, String)> = self
            .cluster
            .members
            .iter()
            .enumerate()
            .filter(|(_, member)| member.running() && !member.stopped)
            .map(|(index, member)| (index, member.client_url()))
            .collect();
        let mut votes = Vec::new();
        for (_, url) in &urls {
            if let Some((_, leader)) = self
                .runtime
                .block_on(status(url, Duration::from_millis(500)))
            {
                votes.push(leader);
            }
        }
        let leader = *votes.first()?;
        if leader == 0 || votes.iter().filter(|vote| **vote == leader).count() * 2 <= votes.len() {
            return None;
        }
        self.cluster
            .members
            .iter()
            .position(|member| member.id == leader)
    }

    /// The leader half the time (when there is one), otherwise any member.
    fn pick_target(&mut self) -> usize {
        if self.rng.gen_bool(0.5) {
            if let Some(leader) = self.leader() {
                return leader;
            }
        }
        self.rng.gen_range(0..self.cluster.members.len())
    }

    fn name(&self, index: usize) -> String {
        self.cluster.members[index].name.clone()
    }

    /// Injects one fault of `kind`, holds it for `hold`, heals it, and records it.
    pub fn episode(&mut self, kind: FaultKind, hold: Duration) -> Result<(), ChaosError> {
        let start_s = self.now_s();
        let (targets, detail, beyond_bound) = match kind {
            FaultKind::Kill => self.kill(hold)?,
            FaultKind::Pause => self.pause(hold)?,
            FaultKind::Partition => self.partition(hold)?,
            FaultKind::Clock => self.clock(hold)?,
            FaultKind::Disk => self.disk(hold)?,
        };
        let episode = Episode {
            kind,
            targets: targets.iter().map(|index| self.name(*index)).collect(),
            detail,
            start_s,
            healed_s: self.now_s(),
            beyond_bound,
        };
        self.episodes.push(episode);
        self.restart_exited(kind, &targets)
    }

    fn kill(&mut self, hold: Duration) -> FaultResult {
        let target = self.pick_target();
        self.cluster.kill(target);
        self.sleep(hold);
        self.cluster.restart(target)?;
        Ok((
            vec![target],
            format!("kill -9 {}, restarted after {hold:.1?}", self.name(target)),
            None,
        ))
    }

    fn pause(&mut self, hold: Duration) -> FaultResult {
        let target = self.pick_target();
        self.cluster.signal_stop(target, true)?;
        self.sleep(hold);
        self.cluster.signal_stop(target, false)?;
        Ok((
            vec![target],
            format!("SIGSTOP {} for {hold:.1?}, then SIGCONT", self.name(target)),
            None,
        ))
    }

    /// Blocks `from → to` for each pair.
    fn block(&mut self, pairs: &[(usize, usize)]) -> Result<(), ChaosError> {
        for &(from, to) in pairs {
            let block = Block {
                from_uid: self.cluster.members[from].uid,
                to_port: self.cluster.members[to].peer_port,
            };
            self.firewall.add(block)?;
        }
        Ok(())
    }

    /// Every pair between `target` and the others: both directions, or only what it sends.
    fn cut_off(&self, target: usize, both_ways: bool) -> Vec<(usize, usize)> {
        let mut pairs = Vec::new();
        for other in (0..self.cluster.members.len()).filter(|other| *other != target) {
            pairs.push((target, other));
            if both_ways {
                pairs.push((other, target));
            }
        }
        pairs
    }

    fn partition(&mut self, hold: Duration) -> FaultResult {
        let target = self.pick_target();
        let both_ways = self.rng.gen_bool(0.75);
        self.block(&self.cut_off(target, both_ways))?;
        self.sleep(hold);
        self.firewall.heal()?;
        let how = if both_ways {
            "isolated (minority of 1 | majority of 2)"
        } else {
            "cannot send to its peers (one-way)"
        };
        Ok((
            vec![target],
            format!("{} {how} for {hold:.1?}", self.name(target)),
            None,
        ))
    }

    /// The rate ratio of this episode, and whether it exceeds the bound.
    fn clock_rate(&mut self) -> (f64, bool) {
        let beyond = match self.clock_skew {
            ClockSkew::Within => false,
            ClockSkew::Beyond => true,
            ClockSkew::Mixed => self.rng.gen_bool(0.5),
        };
        if beyond {
            (*[2.0, 3.0].choose(&mut self.rng).unwrap_or(&2.0), true)
        } else {
            (
                1.0 + 0.8 * self.max_clock_drift_percent as f64 / 100.0,
                false,
            )
        }
    }

    /// The members other than the leader restart with fast clocks (the leader's is then
    /// the slow one: it trusts its lease for longer than they honour it), the leader is cut
    /// off so that they elect another, then all is healed and the clocks restored.
    fn clock(&mut self, hold: Duration) -> FaultResult {
        let (rate, beyond) = self.clock_rate();
        let leader = self.leader().unwrap_or(0);
        let others: Vec<usize> = (0..self.cluster.members.len())
            .filter(|m| *m != leader)
            .collect();
        for &member in &others {
            self.cluster.members[member].clock_rate = Some(rate);
            self.cluster.restart(member)?;
            self.wait_serving(member, Duration::from_secs(10));
        }
        let leader_now = self.leader();
        let isolated = leader_now.unwrap_or(leader);
        self.block(&self.cut_off(isolated, true))?;
        self.sleep(hold);
        self.firewall.heal()?;
        for &member in &others {
            self.cluster.members[member].clock_rate = None;
            self.cluster.restart(member)?;
            self.wait_serving(member, Duration::from_secs(10));
        }
        let names: Vec<String> = others.iter().map(|member| self.name(*member)).collect();
        let detail = format!(
            "{} at clock rate x{rate:.2} vs {} at x1 ({}the {} % bound); then {} (leader: {}) isolated for {hold:.1?}",
            names.join(","),
            self.name(leader),
            if beyond { "beyond " } else { "within " },
            self.max_clock_drift_percent,
            self.name(isolated),
            if leader_now == Some(leader) { "the slow-clocked one" } else { "another" },
        );
        let mut targets = others;
        targets.push(leader);
        Ok((targets, detail, Some(beyond)))
    }

    fn disk(&mut self, hold: Duration) -> FaultResult {
        let target = self.rng.gen_range(0..self.cluster.members.len());
        let filler = fill_disk(&self.cluster.members[target].data_dir)?;
        self.sleep(hold);
        std::fs::remove_file(&filler).map_err(|error| {
            ChaosError::Fault(format!("removing {}: {error}", filler.display()))
        })?;
        Ok((
            vec![target],
            format!(
                "{}'s tmpfs filled to ENOSPC for {hold:.1?}, then freed",
                self.name(target)
            ),
            None,
        ))
    }

    /// Waits until `member` answers `Status` (it has recovered and serves), or gives up.
    fn wait_serving(&self, member: usize, limit: Duration) -> bool {
        let url = self.cluster.members[member].client_url();
        let give_up = Instant::now() + limit;
        while Instant::now() < give_up {
            if self
                .runtime
                .block_on(status(&url, Duration::from_millis(500)))
                .is_some()
            {
                return true;
            }
            if !self.sleep(Duration::from_millis(100)) {
                return false;
            }
        }
        false
    }

    /// Restarts members that exited on their own, recording each exit.
    pub fn restart_exited(&mut self, kind: FaultKind, targets: &[usize]) -> Result<(), ChaosError> {
        for (index, how) in self.cluster.exited() {
            let exit = Exit {
                member: self.name(index),
                at_s: self.now_s(),
                status: how,
                expected: kind == FaultKind::Disk && targets.contains(&index),
                log_tail: self.cluster.log_tail(index, 5),
            };
            tracing::warn!(member = %exit.member, status = %exit.status, "a member exited on its own");
            self.exits.push(exit);
            self.cluster.restart(index)?;
        }
        Ok(())
    }

    /// Undoes whatever may still be in effect: rules, stopped members, skewed clocks, dead
    /// members.
    pub fn heal_all(&mut self) -> Result<(), ChaosError> {
        self.firewall.heal()?;
        self.restart_exited(FaultKind::Kill, &[])?;
        for index in 0..self.cluster.members.len() {
            if self.cluster.members[index].stopped {
                self.cluster.signal_stop(index, false)?;
            }
            let member = &mut self.cluster.members[index];
            if member.clock_rate.take().is_some() || !member.running() {
                self.cluster.restart(index)?;
            }
        }
        Ok(())
    }
}
