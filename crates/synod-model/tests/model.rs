//! The model checker inside `cargo test`: a bounded configuration (seconds) holds every
//! `always` property, and mutants are caught. The full configuration is a command:
//! `cargo run --release -p synod -- model-check` (docs/model-checking.md).

use std::time::Duration;
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
            synod_model::trace::render(&model, &discovery.actions)
        );
    }
    eprintln!(
        "{}",
        serde_json::to_string(&report).expect("report serializes")
    );
    report
}

/// Four ticks and one value, no faults: an election and a slot chosen, every schedule.
fn one_value() -> ModelOptions {
    ModelOptions {
        ticks: 4,
        values: 1,
        reads: 0,
        crashes: 0,
        slow_disks: 0,
        compactions: 0,
        ..ModelOptions::default()
    }
}

/// Four ticks, no value: the first election (pre-vote, then Phase 1) with a slow disk and a crash.
fn crash_in_election() -> ModelOptions {
    ModelOptions {
        ticks: 4,
        values: 0,
        reads: 0,
        compactions: 0,
        ..ModelOptions::default()
    }
}

#[test]
fn every_schedule_of_an_election_and_a_value_holds_every_always_property() {
    let report = run(one_value());
    assert!(report.complete);
    assert_eq!(report.violations, 0, "{:?}", report.properties);
    assert_eq!(report.properties[property::LEADER_ELECTED], "reached");
    assert!(report.unique_states > 4_000, "{}", report.unique_states);
}

#[test]
fn every_crash_during_an_election_holds_every_always_property() {
    let report = run(crash_in_election());
    assert!(report.complete);
    assert_eq!(report.violations, 0, "{:?}", report.properties);
    for name in [property::LEADER_ELECTED, property::CRASH_MID_PERSIST] {
        assert_eq!(report.properties[name], "reached", "{name}");
    }
}

#[test]
fn prepare_before_durable_is_caught() {
    let report = run(ModelOptions {
        mutant: Some(Mutant::PrepareBeforeDurable),
        ..crash_in_election()
    });
    assert_eq!(
        report.properties[property::PROMISE_MONOTONE],
        "counterexample"
    );
}

#[test]
fn every_mutant_has_a_name_that_parses_back() {
    for mutant in Mutant::ALL {
        assert_eq!(mutant.name().parse::<Mutant>(), Ok(mutant));
        assert!(mutant.available(), "the tests build the mutants feature");
    }
    assert!("no-such-bug".parse::<Mutant>().is_err());
}
