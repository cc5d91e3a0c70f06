//! The model checker inside `cargo test`: bounded configurations (seconds) hold every
//! `always` property, depth-first search counts what breadth-first search does, and
//! mutants are caught. The full suite is a command:
//! `cargo run --release -p synod -- model-check` (docs/model-checking.md); so is every
//! mutant on its targeted configuration, the ignored test below
//! (`cargo test --release -p synod-model -- --ignored`, about two minutes).

use std::time::Duration;
use synod_model::options::default_suite;
use synod_model::properties as property;
use synod_model::{check, ModelOptions, Mutant};

fn run(options: ModelOptions) -> synod_model::Report {
    options.validate().expect("valid options");
    let (report, found) = check(&options, Duration::from_secs(3600), |_| {});
    let model = synod_model::SynodModel::new(options);
    for discovery in found.iter().filter(|d| d.failure) {
        eprintln!(
            "counterexample to {:?}:\n{}",
            discovery.property,
            synod_model::trace::render(&model, discovery.initial, &discovery.actions)
        );
    }
    eprintln!(
        "{}",
        serde_json::to_string(&report).expect("report serializes")
    );
    report
}

/// No fault: an election (pre-vote, Phase 1) and one value, every schedule of up to 10
/// actions.
fn one_value() -> ModelOptions {
    ModelOptions {
        ticks: 4,
        values: 1,
        reads: 0,
        crashes: 0,
        slow_disks: 0,
        compactions: 0,
        depth: Some(10),
        ..ModelOptions::default()
    }
}

/// No value: the first election with a slow disk and a crash, every schedule of up to
/// 12 actions.
fn crash_in_election() -> ModelOptions {
    ModelOptions {
        ticks: 4,
        values: 0,
        reads: 0,
        compactions: 0,
        depth: Some(12),
        ..ModelOptions::default()
    }
}

#[test]
fn every_short_schedule_of_an_election_and_a_value_holds_every_always_property() {
    let report = run(one_value());
    assert_eq!(report.violations, 0, "{:?}", report.properties);
    assert_eq!(report.properties[property::LEADER_ELECTED], "reached");
    assert_eq!(report.depth, 10);
    assert!(report.unique_states > 1_000, "{}", report.unique_states);
}

#[test]
fn every_short_crash_during_an_election_holds_every_always_property() {
    let report = run(crash_in_election());
    assert_eq!(report.violations, 0, "{:?}", report.properties);
    for name in [property::LEADER_ELECTED, property::CRASH_MID_PERSIST] {
        assert_eq!(report.properties[name], "reached", "{name}");
    }
}

#[test]
fn prepare_before_durable_is_caught_with_a_shortest_trace() {
    let report = run(ModelOptions {
        mutant: Some(Mutant::PrepareBeforeDurable),
        ..crash_in_election()
    });
    assert_eq!(
        report.properties[property::PROMISE_MONOTONE],
        "counterexample"
    );
    assert_eq!(report.path_lengths[property::PROMISE_MONOTONE], 7);
}

#[test]
fn depth_first_search_counts_the_states_breadth_first_search_does() {
    let breadth_first = run(ModelOptions {
        threads: 1,
        ..one_value()
    });
    let depth_first = run(ModelOptions {
        depth_first: true,
        ..one_value()
    });
    assert_eq!(depth_first.unique_states, breadth_first.unique_states);
    assert_eq!(depth_first.levels, breadth_first.levels);
    assert_eq!(depth_first.path_lengths, breadth_first.path_lengths);
    assert_eq!(depth_first.properties, breadth_first.properties);
}

/// A configuration of the default suite, by name.
fn suite(name: &str) -> ModelOptions {
    default_suite()
        .into_iter()
        .find(|(named, _)| *named == name)
        .map(|(_, options)| options)
        .expect("the suite has the configuration")
}

/// `mutant` on the suite's configuration `name` (narrowed by `narrow`, which may only
/// remove behaviours): the shortest counterexample to `property` has `length` actions.
fn assert_caught(
    mutant: Mutant,
    name: &str,
    narrow: impl FnOnce(ModelOptions) -> ModelOptions,
    property: &str,
    length: usize,
) {
    let report = run(narrow(ModelOptions {
        mutant: Some(mutant),
        ..suite(name)
    }));
    assert_eq!(report.properties[property], "counterexample", "{mutant}");
    assert_eq!(report.path_lengths[property], length, "{mutant}");
}

#[test]
fn adopt_lowest_ballot_is_caught_when_a_refreshed_leader_adopts_the_older_value() {
    // The counterexample needs no compaction and no Accepted: without them the search
    // takes seconds, and finds the suite's shortest trace.
    assert_caught(
        Mutant::AdoptLowestBallot,
        "refreshed-leader",
        |options| ModelOptions {
            compactions: 0,
            lost_kinds: [options.lost_kinds.clone(), vec!["accepted"]].concat(),
            depth: Some(16),
            ..options
        },
        property::PROPOSALS_KEEP_CHOSEN,
        16,
    );
}

#[test]
#[ignore = "minutes: run with --release (docs/model-checking.md)"]
fn every_mutant_is_caught_by_a_configuration_of_the_default_suite() {
    let same = |options| options;
    let caught = [
        (
            Mutant::PrepareBeforeDurable,
            "election-crash",
            property::PROMISE_MONOTONE,
            7,
        ),
        (
            Mutant::SkipPromiseCheck,
            "rival-candidates",
            property::PROPOSALS_KEEP_CHOSEN,
            11,
        ),
        (
            Mutant::AdoptLowestBallot,
            "refreshed-leader",
            property::PROPOSALS_KEEP_CHOSEN,
            16,
        ),
        (
            Mutant::NoVoteForCompactedSlotCheck,
            "refreshed-leader",
            property::PROPOSALS_KEEP_CHOSEN,
            18,
        ),
        (
            Mutant::StaleLeaseClock,
            "stalled-leader",
            property::READS,
            18,
        ),
    ];
    for mutant in Mutant::ALL {
        assert!(
            caught.iter().any(|(m, ..)| *m == mutant),
            "{mutant} is listed"
        );
    }
    for (mutant, name, property, length) in caught {
        assert_caught(mutant, name, same, property, length);
    }
}

#[test]
fn every_configuration_of_the_default_suite_is_valid_and_named_once() {
    let suite = default_suite();
    let mut names: Vec<_> = suite.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), suite.len());
    for (name, options) in suite {
        assert_eq!(options.validate(), Ok(()), "{name}");
        assert!(options.mutant.is_none(), "{name}");
    }
}

#[test]
fn every_mutant_has_a_name_that_parses_back() {
    for mutant in Mutant::ALL {
        assert_eq!(mutant.name().parse::<Mutant>(), Ok(mutant));
        assert!(mutant.available(), "the tests build the mutants feature");
    }
    assert!("no-such-bug".parse::<Mutant>().is_err());
}
