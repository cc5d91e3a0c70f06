//! The simulator against the real protocol: hundreds of seeded chaotic runs, the
//! livelock scenario, and proof that the checkers can fail.

use crate::checks::{Checker, Violation};
use crate::cluster::{Faults, SimOptions, Simulation, TICK_UNITS};
use crate::runner::{describe, run_options, run_seed, RunSettings};
use bytes::Bytes;
use std::collections::BTreeMap;
use synod_core::{Backoff, Mode, Value};

/// Runs the swarm seeds; every check holds, and every class of interesting event the
/// coverage counts occurs (a class that never does is a blind spot of the simulator).
fn assert_seeds_pass(seeds: std::ops::Range<u64>) {
    let mut failures = Vec::new();
    let mut coverage = crate::cluster::Coverage::default();
    for seed in seeds.clone() {
        let report = run_seed(seed, &RunSettings::default());
        assert!(
            report.ops_ok > 0,
            "seed {seed}: no operation succeeded: {report:?}"
        );
        coverage.add(&report.coverage);
        if !report.violations.is_empty() {
            failures.push(describe(&report));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let never: Vec<&str> = [
        ("compactions", coverage.compactions),
        ("snapshot_installs", coverage.snapshot_installs),
        ("snapshot_resends_held", coverage.snapshot_resends_held),
        (
            "snapshots_held_for_log_growth",
            coverage.snapshots_held_for_log_growth,
        ),
        ("lease_reads", coverage.lease_reads),
        ("read_index_reads", coverage.read_index_reads),
        ("follower_reads", coverage.follower_reads),
        ("serializable_reads", coverage.serializable_reads),
        ("log_reads", coverage.log_reads),
        ("pauses", coverage.pauses),
        ("leader_changes", coverage.leader_changes),
        ("requests_too_large", coverage.requests_too_large),
        ("chunked_promises", coverage.chunked_promises),
        ("long_delays", coverage.long_delays),
        ("revision_reads", coverage.revision_reads),
        ("mvcc_compactions", coverage.mvcc_compactions),
        ("leader_refreshes", coverage.leader_refreshes),
        ("batched_follower_reads", coverage.batched_follower_reads),
        ("tick_commit_notices", coverage.tick_commit_notices),
        ("watch_events", coverage.watch_events),
        ("watch_resumes", coverage.watch_resumes),
        ("watch_stalls", coverage.watch_stalls),
        ("watch_progress", coverage.watch_progress),
        ("leader_transfers", coverage.leader_transfers),
        (
            "leader_transfer_timeouts",
            coverage.leader_transfer_timeouts,
        ),
    ]
    .into_iter()
    .filter(|(_, count)| *count == 0)
    .map(|(name, _)| name)
    .collect();
    assert!(never.is_empty(), "seeds {seeds:?} never saw: {never:?}");
    // A leader a quorum still followed lost its leadership to a ballot raised by a node
    // that could not reach a quorum. Pre-vote keeps such ballots rare (a grant given
    // just before a partition began), and the leader refreshes its own ballot above one
    // instead of stepping down (docs/protocol.md).
    assert_eq!(
        coverage.leader_changes_after_heal, 0,
        "returning nodes deposed healthy leaders"
    );
    assert!(coverage.max_drift_percent > 5.0 && coverage.max_value_bytes > 1_000);
}

/// Swarm seeds with three lease clients each: leases granted, kept alive, revoked and left
/// to expire through the swarm's faults; no expiry comes early, no key outlives its lease,
/// and every kind of lease event happens.
#[test]
fn lease_seeds_never_expire_a_lease_kept_alive() {
    let mut failures = Vec::new();
    let mut coverage = crate::cluster::Coverage::default();
    for seed in 0..150 {
        let mut options = crate::runner::options_for_seed(seed, &RunSettings::default());
        options.lease_clients = 3;
        let report = run_options(options);
        coverage.add(&report.coverage);
        if !report.violations.is_empty() {
            failures.push(describe(&report));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let never: Vec<&str> = [
        ("lease_grants", coverage.lease_grants),
        ("lease_keep_alives", coverage.lease_keep_alives),
        ("lease_revokes", coverage.lease_revokes),
        ("lease_promotions", coverage.lease_promotions),
        ("lease_expiries", coverage.lease_expiries),
    ]
    .into_iter()
    .filter(|(_, count)| *count == 0)
    .map(|(name, _)| name)
    .collect();
    assert!(never.is_empty(), "lease seeds never saw: {never:?}");
}

/// A lessor that acknowledges keep-alives without moving the deadline expires leases their
/// clients kept alive: the lease checker says so.
#[test]
fn the_lease_checker_catches_keep_alives_that_do_not_renew() {
    let caught = (0..100).any(|seed| {
        let mut options = crate::runner::options_for_seed(seed, &RunSettings::default());
        options.lease_clients = 3;
        options.lease_bug = Some(crate::options::LeaseBug::AckWithoutRenew);
        run_options(options)
            .violations
            .iter()
            .any(|violation| matches!(violation, Violation::Lease(_)))
    });
    assert!(caught, "no seed caught keep-alives that do not renew");
}

/// Swarm seeds whose clients also read at older revisions and compact through the log:
/// every check holds (the history checker included) and both happen.
#[test]
fn mvcc_seeds_read_the_committed_history() {
    let mut failures = Vec::new();
    let mut coverage = crate::cluster::Coverage::default();
    for seed in 0..150 {
        let mut options = crate::runner::options_for_seed(seed, &RunSettings::default());
        options.mvcc_percent = 30;
        let report = run_options(options);
        coverage.add(&report.coverage);
        if !report.violations.is_empty() {
            failures.push(describe(&report));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(coverage.revision_reads > 0 && coverage.mvcc_compactions > 0);
}

/// Swarm seeds with four watchers each and compactions through the log: every watch holds
/// etcd's guarantees against the committed history through crashes, snapshots, slow
/// readers and resumes at other nodes, and some are canceled by a compaction.
#[test]
fn watch_seeds_hold_etcds_guarantees_through_faults() {
    let mut failures = Vec::new();
    let mut coverage = crate::cluster::Coverage::default();
    for seed in 0..150 {
        let mut options = crate::runner::options_for_seed(seed, &RunSettings::default());
        options.watchers = 4;
        options.mvcc_percent = 30;
        let report = run_options(options);
        coverage.add(&report.coverage);
        if !report.violations.is_empty() {
            failures.push(describe(&report));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        coverage.watch_events > 0
            && coverage.watch_resumes > 0
            && coverage.watch_stalls > 0
            && coverage.watch_compaction_cancels > 0
            && coverage.watch_progress > 0,
        "{coverage:?}"
    );
}

/// Seeds whose watches saw no write in their range at the end: the closing bookmark must
/// be asked for after every hub has its node's final state, or the watch looks incomplete
/// (the first 20,000-seed run with watchers reported these seven).
#[test]
fn closing_bookmarks_cover_the_final_revision() {
    for seed in [3195, 4491, 6226, 7993, 11692, 18724, 19512] {
        let report = run_seed(seed, &RunSettings::default());
        assert!(report.violations.is_empty(), "{}", describe(&report));
    }
}

/// Deliberate watch bugs: the watch checker must report each on some seeds that pass
/// without it.
#[test]
fn checkers_catch_watches_that_lose_events_or_resume_too_late() {
    use crate::options::WatchMutant;
    for mutant in [
        WatchMutant::LoseRefusedResponses,
        WatchMutant::ResumeSkipsARevision,
    ] {
        let mut caught = 0;
        for seed in 0..40 {
            let mut options = crate::runner::options_for_seed(seed, &RunSettings::default());
            options.watchers = 4;
            options.mutant_watch = Some(mutant);
            let report = run_options(options);
            if report
                .violations
                .iter()
                .any(|v| matches!(v, Violation::Watch(_)))
            {
                caught += 1;
            }
        }
        assert!(
            caught > 0,
            "40 seeds of {mutant:?} and no watch violation seen"
        );
    }
}

/// A replica that answers a read at an older revision from its latest state (a deliberate
/// bug): the history checker must report it on some of the seeds that pass without it.
#[test]
fn checkers_catch_reads_at_an_older_revision_answered_from_the_latest_state() {
    let mut caught = 0;
    for seed in 0..40 {
        let mut options = crate::runner::options_for_seed(seed, &RunSettings::default());
        options.mvcc_percent = 30;
        options.mutant_reads_ignore_revision = true;
        let report = run_options(options);
        if report
            .violations
            .iter()
            .any(|v| matches!(v, Violation::NotLinearizable(why) if why.contains("at revision")))
        {
            caught += 1;
        }
    }
    assert!(
        caught > 0,
        "40 seeds of the bug and no history violation seen"
    );
}

/// The history checker on a log written by hand: a read of the value a key had at the
/// revision passes, the key's later value at that revision is a violation, and so is an
/// error no compaction or future revision explains.
#[test]
fn revision_read_checker_flags_a_value_the_key_did_not_have_then() {
    use crate::clients::RevisionRead;
    use synod_kv::{KvError, PutRequest};
    let mut checker = Checker::default();
    for (slot, value) in [(1, "old"), (2, "new")] {
        let command = synod_kv::Command {
            client: 1,
            seq: slot,
            op: synod_kv::Op::Put(PutRequest {
                key: Bytes::from_static(b"k0"),
                value: Bytes::from_static(value.as_bytes()),
                ..PutRequest::default()
            }),
        };
        let proposal = synod_replica::Proposal {
            client: 9,
            seq: slot,
            completed_below: slot,
            payload: command.encode(),
        };
        let chosen = Value::Commands(vec![proposal.encode()]);
        assert!(checker.on_commit(1, slot, &chosen).is_ok());
    }
    // The puts made revisions 2 ("old") and 3 ("new").
    let read = |revision, result| RevisionRead {
        key: 0,
        revision,
        served_at: 3,
        result,
    };
    let value = |text: &'static str| Ok(Some(Bytes::from_static(text.as_bytes())));
    let right = [
        read(2, value("old")),
        read(3, value("new")),
        read(1, Ok(None)),
    ];
    assert_eq!(checker.check_revision_reads(&right), None);
    let wrong = [
        read(2, value("new")),
        read(3, value("old")),
        read(2, Ok(None)),
        read(
            2,
            Err(KvError::RevisionCompacted {
                requested: 2,
                compacted: 3,
            }),
        ),
        read(4, value("new")),
    ];
    for read in wrong {
        let what = format!("{:?} at {}", read.result, read.revision);
        assert!(
            matches!(
                checker.check_revision_reads(&[read]),
                Some(Violation::NotLinearizable(_))
            ),
            "{what} passed"
        );
    }
}

// Every seed draws its own cluster, faults and workload (`SimOptions::swarm`). Four tests
// so the harness runs them in parallel.
#[test]
fn chaos_seeds_0_to_300_hold_every_check() {
    assert_seeds_pass(0..300);
}

#[test]
fn chaos_seeds_300_to_600_hold_every_check() {
    assert_seeds_pass(300..600);
}

#[test]
fn chaos_seeds_600_to_900_hold_every_check() {
    assert_seeds_pass(600..900);
}

#[test]
fn chaos_seeds_900_to_1200_hold_every_check() {
    assert_seeds_pass(900..1200);
}

#[test]
fn a_seed_replays_exactly() {
    let first = run_seed(11, &RunSettings::default());
    let second = run_seed(11, &RunSettings::default());
    assert_eq!(first, second);
    assert!(first.crashes + first.partitions > 0, "{first:?}");
}

#[test]
fn fault_free_runs_commit_everything_with_no_indefinite_outcome() {
    for mode in [Mode::MultiPaxos, Mode::PerSlot] {
        let mut options = SimOptions::chaos(1);
        options.mode = mode;
        options.fault_ticks = 0;
        options.faults = Faults::none();
        let report = Simulation::new(options.clone()).run();
        assert!(report.violations.is_empty(), "{mode:?}: {report:?}");
        assert_eq!(report.ops_indefinite, 0, "{mode:?}: {report:?}");
        assert_eq!(
            report.ops_ok + report.ops_failed,
            (options.clients * options.ops_per_client) as u64,
            "{mode:?}"
        );
    }
}

/// An acceptor that forgets what it promised and accepted when it crashes (a disk that
/// lies about fsync) breaks Paxos; the checkers must notice on some seeds.
#[test]
fn checkers_catch_an_acceptor_with_amnesia() {
    let mut caught = 0;
    for seed in 0..60 {
        let mut options = SimOptions::chaos(seed);
        options.faults.amnesia = true;
        options.faults.mean_fault_interval = 5 * TICK_UNITS;
        // The core asserts its own invariants too: a chosen slot changing is caught
        // there first on some seeds.
        let outcome = std::panic::catch_unwind(|| Simulation::new(options).run());
        let Ok(report) = outcome else {
            caught += 1;
            continue;
        };
        if report.violations.iter().any(|v| {
            matches!(
                v,
                Violation::Agreement { .. }
                    | Violation::NotLinearizable(_)
                    | Violation::LostWrite { .. }
            )
        }) {
            caught += 1;
        }
    }
    assert!(
        caught > 0,
        "60 seeds of amnesia and not one safety violation seen"
    );
}

#[test]
fn agreement_checker_flags_a_second_value_for_a_slot() {
    let mut checker = Checker::default();
    let a = Value::Commands(vec![Bytes::from_static(b"a")]);
    let b = Value::Commands(vec![Bytes::from_static(b"b")]);
    assert_eq!(checker.on_commit(1, 1, &a), Ok(0));
    assert!(matches!(
        checker.on_commit(2, 1, &b),
        Err(Violation::Agreement {
            slot: 1,
            node: 2,
            ..
        })
    ));
}

#[test]
fn prefix_checker_flags_delivery_past_a_gap_and_follows_snapshots() {
    let mut checker = Checker::default();
    assert_eq!(checker.on_commit(1, 1, &Value::Noop), Ok(0));
    assert_eq!(
        checker.on_commit(1, 3, &Value::Noop),
        Err(Violation::Prefix {
            node: 1,
            slot: 3,
            expected: 2
        })
    );
    checker.on_snapshot(2, 7);
    assert_eq!(checker.on_commit(2, 8, &Value::Noop), Ok(0));
    checker.on_restart(2, 5);
    assert_eq!(checker.on_commit(2, 6, &Value::Noop), Ok(0));
}

#[test]
fn lost_write_checker_flags_an_acknowledged_write_missing_from_the_log() {
    let mut checker = Checker::default();
    checker.on_acknowledged(7, 1);
    assert_eq!(
        checker.lost_acknowledged_writes(),
        vec![Violation::LostWrite { client: 7, seq: 1 }]
    );
}

/// Three nodes where A and C are close and B is far from both:
/// d(A,C) = 1, d(A,B) = d(C,B) = 2 (in units of 100). A and C propose every slot
/// (per-slot mode) and keep preempting each other at B. With the backoff switched off a
/// preempted proposer retries at once, and the duel never ends; with randomized backoff
/// one of them wins and everything commits.
fn dueling_proposers(backoff: Backoff) -> crate::cluster::SimReport {
    let (a, b, c) = (1, 2, 3);
    let mut link_delays = BTreeMap::new();
    for (x, y, d) in [(a, c, 100), (a, b, 200), (c, b, 200)] {
        link_delays.insert((x, y), d);
        link_delays.insert((y, x), d);
    }
    let options = SimOptions {
        mode: Mode::PerSlot,
        backoff,
        clients: 2,
        ops_per_client: 10,
        fault_ticks: 0,
        liveness_ticks: 2_000,
        faults: Faults::none(),
        link_delays,
        client_nodes: Some(vec![a, c]),
        ..SimOptions::chaos(3)
    };
    run_options(options)
}

#[test]
fn dueling_proposers_livelock_without_backoff() {
    let report = dueling_proposers(Backoff::Disabled);
    assert!(
        report
            .violations
            .iter()
            .any(|v| matches!(v, Violation::Liveness(_))),
        "expected a livelock: {report:?}"
    );
    assert!(report.ops_ok + report.ops_failed < 20, "{report:?}");
    assert!(report.phase1_runs > 1_000, "{report:?}");
}

#[test]
fn dueling_proposers_settle_with_randomized_backoff() {
    let report = dueling_proposers(Backoff::Randomized);
    assert!(report.violations.is_empty(), "{report:?}");
    assert_eq!(report.ops_ok + report.ops_failed, 20, "{report:?}");
}

/// A leader whose clock runs slow while its acceptors' run fast is cut off: the others
/// elect a new leader and write while the old one still believes its read lease. With
/// rates within the bound the nodes assume (10 %) the lease math holds and every read is
/// linearizable; far beyond it (here 60 %) the checker must catch the stale reads — or
/// it checks nothing.
fn stale_leader_runs(
    read_mode: synod_core::ReadMode,
    leader_ppm: u64,
    others_ppm: u64,
) -> (usize, usize) {
    let mut script = Vec::new();
    for round in 0..6 {
        let at = 20 + round * 45;
        script.push((
            at,
            crate::cluster::Scripted::SetClockRates {
                leader_ppm,
                others_ppm,
            },
        ));
        script.push((at + 5, crate::cluster::Scripted::IsolateLeader));
        script.push((at + 35, crate::cluster::Scripted::HealNetwork));
    }
    let (mut stale, mut runs) = (0, 0);
    for seed in 0..12 {
        let options = SimOptions {
            read_mode,
            read_mix: crate::cluster::ReadMix {
                linearizable: 100,
                log: 0,
            },
            keys: 1,
            faults: Faults {
                partitions: false,
                crashes: false,
                ..Faults::chaos()
            },
            script: script.clone(),
            ..SimOptions::chaos(seed)
        };
        let report = run_options(options);
        assert!(report.coverage.lease_reads + report.coverage.read_index_reads > 0);
        runs += 1;
        let only_stale_reads = report
            .violations
            .iter()
            .all(|v| matches!(v, Violation::NotLinearizable(_)));
        assert!(only_stale_reads, "seed {seed}: {}", describe(&report));
        if !report.violations.is_empty() {
            stale += 1;
        }
    }
    (stale, runs)
}

#[test]
fn lease_reads_stay_linearizable_with_clock_drift_within_the_bound() {
    let (stale, runs) = stale_leader_runs(synod_core::ReadMode::Lease, 910_000, 1_090_000);
    assert_eq!(
        stale, 0,
        "{stale} of {runs} runs served stale reads within the bound"
    );
}

#[test]
fn checkers_catch_stale_lease_reads_when_clocks_drift_beyond_the_bound() {
    let (stale, runs) = stale_leader_runs(synod_core::ReadMode::Lease, 400_000, 1_600_000);
    assert!(
        stale > 0,
        "no stale read in {runs} runs with 60 % drift: the checker has no teeth"
    );
}

#[test]
fn read_index_mode_reads_stay_linearizable_whatever_the_clocks_do() {
    let (stale, runs) = stale_leader_runs(synod_core::ReadMode::ReadIndex, 150_000, 1_900_000);
    assert_eq!(
        stale, 0,
        "{stale} of {runs} read-index runs served stale reads"
    );
}

/// `synod sim --seeds 2000 --clock-drift-percent 60 --read-mode lease` fails about one
/// seed in 130 with stale reads; `--read-mode read-index` fails none. The first four
/// seeds whose lease reads go stale, replayed in read-index mode: the same schedules,
/// with the reads' mode the only difference. (Found by scanning, so that a change to
/// what the swarm draws does not leave the test replaying seeds that no longer show it.)
#[test]
fn swarm_seeds_with_stale_lease_reads_beyond_the_drift_bound_stay_linearizable_in_read_index_mode()
{
    let settings = |mode| RunSettings {
        clock_drift_percent: Some(60),
        read_mode: Some(mode),
        ..RunSettings::default()
    };
    let lease = settings(synod_core::ReadMode::Lease);
    let stale_seeds: Vec<u64> = (0..2000)
        .filter(|seed| {
            run_seed(*seed, &lease)
                .violations
                .iter()
                .any(|v| matches!(v, Violation::NotLinearizable(_)))
        })
        .take(4)
        .collect();
    assert_eq!(
        stale_seeds.len(),
        4,
        "fewer than 4 of 2,000 seeds went stale in lease mode at 60 % drift: {stale_seeds:?}"
    );
    let read_index = settings(synod_core::ReadMode::ReadIndex);
    for seed in stale_seeds {
        let report = run_seed(seed, &read_index);
        assert!(
            report.violations.is_empty(),
            "seed {seed} in read-index mode: {:?}",
            report.violations
        );
    }
}
