//! Group commit: many submitters, few fdatasyncs, completions in submission order.

mod common;

use common::*;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use synod_core::{Ballot, DurableState, PersistOp};
use synod_storage::{GroupCommit, StorageError, Wal, WalOptions};

#[test]
fn eight_threads_submitting_all_complete_and_share_fdatasyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    let group = Arc::new(GroupCommit::start(wal));
    let threads: Vec<_> = (0..8u64)
        .map(|thread_index| {
            let group = Arc::clone(&group);
            thread::spawn(move || {
                // Submit all 200 without waiting, then collect: requests queue up while
                // the group-commit thread is inside an fdatasync, and share the next one.
                let (sender, receiver) = mpsc::channel();
                for index in 0..200u64 {
                    let slot = thread_index * 1000 + index + 1;
                    let sender = sender.clone();
                    group.submit(
                        accept_request(slot, slot, Ballot::new(1, 1), 0),
                        Box::new(move |result| {
                            let _ = sender.send((slot, result));
                        }),
                    );
                }
                drop(sender);
                let completed: Vec<(u64, Result<(), StorageError>)> = receiver.iter().collect();
                completed
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    for handle in threads {
        let completed = handle.join().expect("submitter thread");
        assert_eq!(completed.len(), 200);
        for (slot, result) in completed {
            result.expect("request made durable");
            acknowledged.push(slot);
        }
    }
    let stats = group.stats();
    assert_eq!(stats.requests, 1600);
    assert!(stats.syncs > 0);
    assert!(stats.syncs < stats.requests, "{stats:?}");
    assert!(stats.largest_batch > 1, "{stats:?}");

    let group = Arc::into_inner(group).expect("sole owner");
    let wal = group.shutdown().expect("shutdown");
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    for slot in acknowledged {
        assert!(
            recovered.entries.contains_key(&slot),
            "acknowledged slot {slot} missing"
        );
    }
    assert_eq!(recovered.entries.len(), 1600);
}

#[test]
fn completions_run_in_submission_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), fast_options(4096)).expect("open");
    let group = GroupCommit::start(wal);
    let order = Arc::new(Mutex::new(Vec::new()));
    for id in 1..=500u64 {
        let order = Arc::clone(&order);
        group.submit(
            accept_request(id, id, Ballot::new(1, 1), 0),
            Box::new(move |result| {
                result.expect("durable");
                order.lock().expect("order lock").push(id);
            }),
        );
    }
    let wal = group
        .shutdown()
        .expect("shutdown completes pending requests");
    assert_eq!(
        *order.lock().expect("order lock"),
        (1..=500).collect::<Vec<_>>()
    );
    assert_eq!(wal.last_persist_id(), 500);
}

#[test]
fn compaction_through_group_commit_follows_earlier_submissions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), fast_options(1024)).expect("open");
    let group = GroupCommit::start(wal);
    let mut model = DurableState::default();
    for id in 1..=300u64 {
        let request = accept_request(id, id, Ballot::new(2, 1), id - 1);
        model.apply_all(&request.ops);
        group.submit(request, Box::new(|result| result.expect("durable")));
        if id % 50 == 0 {
            group.compact(id - 10).expect("compact");
            model.apply(&PersistOp::Snapshot { slot: id - 10 });
        }
    }
    let stats = group.stats();
    assert_eq!(stats.compactions, 6);
    let wal = group.shutdown().expect("shutdown");
    assert_eq!(wal.state(), &model);
    assert_eq!(stats.disk_bytes, wal.disk_bytes());
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), fast_options(1024)).expect("reopen");
    assert_eq!(recovered, model);
}

#[test]
fn panicking_completion_does_not_stop_group_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), fast_options(4096)).expect("open");
    let group = GroupCommit::start(wal);
    group.submit(
        accept_request(1, 1, Ballot::new(1, 1), 0),
        Box::new(|_| panic!("a careless callback")),
    );
    group
        .submit_and_wait(accept_request(2, 2, Ballot::new(1, 1), 0))
        .expect("later request still durable");
    let wal = group.shutdown().expect("shutdown");
    assert_eq!(wal.last_persist_id(), 2);
}

/// Submits three accepts and one commit mark, one batch each, and returns how many
/// batch durations the observer saw.
fn observed_syncs(options: WalOptions) -> usize {
    use synod_core::PersistRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), options).expect("open");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let observer_seen = Arc::clone(&seen);
    let group = GroupCommit::start_with_sync_observer(
        wal,
        Box::new(move |took| observer_seen.lock().expect("seen lock").push(took)),
    );
    for id in 1..=3u64 {
        group
            .submit_and_wait(accept_request(id, id, Ballot::new(1, 1), 0))
            .expect("durable");
    }
    group
        .submit_and_wait(PersistRequest {
            id: 4,
            ops: vec![PersistOp::Commit(3)],
        })
        .expect("durable");
    group.shutdown().expect("shutdown");
    let count = seen.lock().expect("seen lock").len();
    count
}

#[test]
fn the_sync_observer_sees_each_synced_batch_and_nothing_else() {
    // Each submit_and_wait is its own batch: three accepts are synced, the commit mark
    // alone is not (PersistRequest::needs_sync).
    assert_eq!(observed_syncs(WalOptions::default()), 3);
    // A log that never syncs reports no fsync durations.
    assert_eq!(observed_syncs(fast_options(1 << 20)), 0);
}
