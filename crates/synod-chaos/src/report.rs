//! What a run found: printed as text, and as one JSON line last (for CI and docs/).

use crate::history::{KeyVerdict, LostWrite, Overall, Tally};
use crate::nemesis::{Episode, Exit};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Clone, Debug, Serialize)]
pub struct Unavailability {
    /// Longest interval without a successful operation, in milliseconds.
    pub longest_ms: f64,
    /// When it began, in seconds since the run began.
    pub from_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub duration_s: f64,
    pub read_mode: String,
    pub clients: u32,
    pub keys: u32,
    pub max_clock_drift_percent: u64,
    pub faults_enabled: Vec<String>,
    /// `(fault, why)` for each fault whose prerequisite is missing.
    pub faults_skipped: Vec<(String, String)>,
    /// Some clock episode ran its members' clocks beyond `--max-clock-drift-percent`.
    pub clock_beyond_bound: bool,
    pub ops: BTreeMap<String, Tally>,
    pub fault_counts: BTreeMap<String, u64>,
    pub episodes: Vec<Episode>,
    pub verdict: Overall,
    pub key_verdicts: Vec<KeyVerdict>,
    pub lost_writes: Vec<LostWrite>,
    /// Keys whose final read never succeeded (their writes are not checked for loss).
    pub keys_without_final_read: Vec<u32>,
    pub unavailability: Unavailability,
    pub unavailability_per_member: BTreeMap<String, Unavailability>,
    pub member_exits: Vec<Exit>,
    pub check_seconds: f64,
    pub notes: Vec<String>,
}

impl ChaosReport {
    /// 0: linearizable, nothing lost. 1: a violation or a lost write. 2: undecided.
    pub fn exit_code(&self) -> u8 {
        if self.verdict == Overall::NotLinearizable || !self.lost_writes.is_empty() {
            1
        } else if self.verdict == Overall::Unknown || !self.keys_without_final_read.is_empty() {
            2
        } else {
            0
        }
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
    }

    pub fn text(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "synod chaos: seed {}, {:.0} s, read mode {}, {} clients on {} keys",
            self.seed, self.duration_s, self.read_mode, self.clients, self.keys
        );
        for (fault, why) in &self.faults_skipped {
            let _ = writeln!(text, "SKIPPED fault {fault}: {why}");
        }
        let _ = writeln!(text, "\noperations       ok   failed  indeterminate");
        for (kind, tally) in &self.ops {
            let _ = writeln!(
                text,
                "  {kind:<8} {:>9} {:>8} {:>14}",
                tally.ok, tally.failed, tally.indeterminate
            );
        }
        let _ = writeln!(text, "\nfaults injected ({}):", self.episodes.len());
        for episode in &self.episodes {
            let _ = writeln!(
                text,
                "  {:>6.1}–{:<6.1} s  {:<9} {}",
                episode.start_s,
                episode.healed_s,
                episode.kind.name(),
                episode.detail
            );
        }
        self.write_findings(&mut text);
        text
    }

    fn write_findings(&self, text: &mut String) {
        for exit in &self.member_exits {
            let _ = writeln!(
                text,
                "member {} exited on its own at {:.1} s ({}){}; its log ends:\n{}",
                exit.member,
                exit.at_s,
                exit.status,
                if exit.expected {
                    ", on a full disk"
                } else {
                    " — UNEXPECTED"
                },
                exit.log_tail
            );
        }
        let _ = writeln!(text, "\nlinearizability per key:");
        for key in &self.key_verdicts {
            let _ = writeln!(
                text,
                "  key {:>3}: {:>6} ops  {}{}",
                key.key,
                key.operations,
                key.verdict,
                if key.detail.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", key.detail)
                }
            );
        }
        let _ = writeln!(
            text,
            "overall: {} (checked in {:.1} s)",
            self.verdict.name(),
            self.check_seconds
        );
        if self.clock_beyond_bound {
            let _ = writeln!(
                text,
                "clocks ran beyond the {} % drift bound: in lease mode stale reads are possible \
                 by design (docs/server.md); read-index mode must stay linearizable",
                self.max_clock_drift_percent
            );
        }
        let _ = writeln!(text, "lost acknowledged writes: {}", self.lost_writes.len());
        for lost in &self.lost_writes {
            let _ = writeln!(
                text,
                "  key {} value {} (client {}, acknowledged at {:.3} s); final value {:?}",
                lost.key,
                lost.value,
                lost.client,
                lost.return_ns as f64 / 1e9,
                lost.final_value
            );
        }
        if !self.keys_without_final_read.is_empty() {
            let _ = writeln!(
                text,
                "keys without a final read: {:?}",
                self.keys_without_final_read
            );
        }
        let _ = writeln!(
            text,
            "longest unavailability: {:.0} ms from {:.1} s (cluster-wide)",
            self.unavailability.longest_ms, self.unavailability.from_s
        );
        for (member, gap) in &self.unavailability_per_member {
            let _ = writeln!(
                text,
                "  {member}'s clients: {:.0} ms from {:.1} s",
                gap.longest_ms, gap.from_s
            );
        }
        for note in &self.notes {
            let _ = writeln!(text, "note: {note}");
        }
    }
}
