//! The simulator against the real protocol: hundreds of seeded chaotic runs, the
//! livelock scenario, and proof that the checkers can fail.

use crate::checks::{Checker, Violation};
use crate::cluster::{Faults, SimOptions, Simulation, TICK_UNITS};
use crate::runner::{describe, options_for_seed, run_seed};
use bytes::Bytes;
use std::collections::BTreeMap;
use synod_core::{Backoff, Mode, Value};

fn assert_seeds_pass(seeds: std::ops::Range<u64>) {
    let mut failures = Vec::new();
    for seed in seeds {
        let report = run_seed(seed);
        assert!(
            report.ops_ok > 0,
            "seed {seed}: no operation succeeded: {report:?}"
        );
        if !report.violations.is_empty() {
            failures.push(describe(&report));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// Seeds cycle through 3-node Multi-Paxos (twice), 5-node Multi-Paxos and 3-node per-slot
// Paxos; see `options_for_seed`. Four tests so the harness runs them in parallel.
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
    let first = run_seed(11);
    let second = run_seed(11);
    assert_eq!(first, second);
    assert!(first.crashes + first.partitions > 0, "{first:?}");
}

#[test]
fn fault_free_runs_commit_everything_with_no_indefinite_outcome() {
    for mode in [Mode::MultiPaxos, Mode::PerSlot] {
        let mut options = options_for_seed(1);
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
    assert_eq!(checker.on_commit(1, 1, &a), None);
    assert!(matches!(
        checker.on_commit(2, 1, &b),
        Some(Violation::Agreement {
            slot: 1,
            node: 2,
            ..
        })
    ));
}

#[test]
fn prefix_checker_flags_delivery_past_a_gap() {
    let mut checker = Checker::default();
    assert_eq!(checker.on_commit(1, 1, &Value::Noop), None);
    assert_eq!(
        checker.on_commit(1, 3, &Value::Noop),
        Some(Violation::Prefix {
            node: 1,
            slot: 3,
            expected: 2
        })
    );
}

#[test]
fn lost_write_checker_flags_an_acknowledged_write_a_replica_lacks() {
    let mut checker = Checker::default();
    checker.on_acknowledged(7, 1, 10);
    assert_eq!(
        checker.lost_acknowledged_writes(&[1]),
        vec![Violation::LostWrite {
            client: 7,
            seq: 1,
            node: 1
        }]
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
    Simulation::new(options).run()
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

#[test]
fn broadcast_checker_flags_diverging_deliveries() {
    use crate::checks::check_broadcast;
    let a = [(1, Bytes::from_static(b"x")), (2, Bytes::from_static(b"y"))];
    let b = [(1, Bytes::from_static(b"x"))];
    let c = [(1, Bytes::from_static(b"z"))];
    assert_eq!(check_broadcast(&[(1, &a), (2, &b)], false), None);
    assert!(check_broadcast(&[(1, &a), (2, &b)], true).is_some());
    assert_eq!(
        check_broadcast(&[(1, &a), (3, &c)], false),
        Some(Violation::BroadcastDiverged {
            first: 1,
            second: 3,
            index: 0
        })
    );
}
