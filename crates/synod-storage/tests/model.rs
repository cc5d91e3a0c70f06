//! Property: whatever requests are appended, in whatever batches, with compactions in
//! between, reopening the log yields exactly `DurableState::apply_all` of them.

mod common;

use bytes::Bytes;
use common::fast_options;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use synod_core::{Ballot, DurableState, Entry, PersistOp, PersistRequest, Value};
use synod_storage::Wal;

fn ballot() -> impl Strategy<Value = Ballot> {
    (0u64..6, 0u64..4).prop_map(|(round, node)| Ballot::new(round, node))
}

fn op() -> impl Strategy<Value = PersistOp> {
    prop_oneof![
        ballot().prop_map(PersistOp::Promise),
        (1u64..40, ballot()).prop_map(|(slot, ballot)| PersistOp::SlotPromise { slot, ballot }),
        (
            1u64..40,
            ballot(),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..3)
        )
            .prop_map(|(slot, ballot, commands)| {
                let value = if commands.is_empty() {
                    Value::Noop
                } else {
                    Value::Commands(commands.into_iter().map(Bytes::from).collect())
                };
                PersistOp::Accept(Entry {
                    slot,
                    ballot,
                    value,
                })
            }),
        (0u64..40).prop_map(PersistOp::Commit),
        (0u64..40).prop_map(|slot| PersistOp::Snapshot { slot }),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Append(Vec<Vec<PersistOp>>),
    Compact(u64),
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => proptest::collection::vec(proptest::collection::vec(op(), 0..4), 1..5).prop_map(Step::Append),
        1 => (0u64..40).prop_map(Step::Compact),
        1 => Just(Step::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/model.proptest-regressions"
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn reopened_log_matches_the_in_memory_model(steps in proptest::collection::vec(step(), 1..25)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = fast_options(700);
        let (mut wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
        let mut model = DurableState::default();
        let mut next_id = 1;
        for step in steps {
            match step {
                Step::Append(batch) => {
                    let requests: Vec<PersistRequest> = batch
                        .into_iter()
                        .map(|ops| {
                            next_id += 1;
                            PersistRequest { id: next_id - 1, ops }
                        })
                        .collect();
                    wal.append(&requests).expect("append");
                    for request in &requests {
                        model.apply_all(&request.ops);
                    }
                }
                Step::Compact(through) => {
                    wal.compact(through).expect("compact");
                    model.apply(&PersistOp::Snapshot { slot: through });
                }
                Step::Reopen => {
                    drop(wal);
                    let (reopened, recovered) = Wal::open(dir.path(), options.clone()).expect("reopen");
                    prop_assert_eq!(&recovered, &model);
                    prop_assert!(reopened.recovery_report().truncated.is_none());
                    wal = reopened;
                }
            }
            prop_assert_eq!(wal.state(), &model);
        }
        drop(wal);
        let (_, recovered) = Wal::open(dir.path(), options).expect("final reopen");
        prop_assert_eq!(recovered, model);
    }
}
