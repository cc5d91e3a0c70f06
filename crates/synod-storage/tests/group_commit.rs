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

/// `append_now` once the group-commit thread is idle. After a completion runs, the thread
/// clears its writing flag a moment later, so a caller that has just seen its own
/// completion may find it still set; whether it does depends on the scheduler.
fn append_now_when_idle(
    group: &GroupCommit,
    requests: &[synod_core::PersistRequest],
) -> Result<(), StorageError> {
    for _ in 0..5000 {
        if let Some(result) = group.append_now(requests) {
            return result;
        }
        thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("the group-commit thread never went idle in 5 s");
}

#[test]
fn append_now_writes_on_the_callers_thread_when_the_log_is_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    let seen = Arc::new(Mutex::new(0usize));
    let observer_seen = Arc::clone(&seen);
    let group = GroupCommit::start_with_sync_observer(
        wal,
        Box::new(move |_| *observer_seen.lock().expect("seen lock") += 1),
    );
    group
        .submit_and_wait(accept_request(1, 1, Ballot::new(1, 1), 0))
        .expect("durable");
    append_now_when_idle(
        &group,
        &[
            accept_request(2, 2, Ballot::new(1, 1), 1),
            accept_request(3, 3, Ballot::new(1, 1), 2),
        ],
    )
    .expect("an idle log is written at once");
    let stats = group.stats();
    assert_eq!(
        (stats.requests, stats.syncs, stats.largest_batch),
        (3, 2, 2)
    );
    assert_eq!(
        *seen.lock().expect("seen lock"),
        2,
        "both batches were fdatasynced"
    );
    // The thread still takes submissions after an inline write.
    group
        .submit_and_wait(accept_request(4, 4, Ballot::new(1, 1), 3))
        .expect("durable");
    let wal = group.shutdown().expect("shutdown");
    assert_eq!(wal.last_persist_id(), 4);
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(recovered.entries.len(), 4);
}

#[test]
fn append_now_declines_while_a_batch_is_queued_or_being_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), fast_options(1 << 20)).expect("open");
    let group = GroupCommit::start(wal);
    // The first completion blocks the group-commit thread inside its batch until released.
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    group.submit(
        accept_request(1, 1, Ballot::new(1, 1), 0),
        Box::new(move |result| {
            result.expect("durable");
            entered_tx.send(()).expect("test waits");
            let _ = release_rx.recv();
        }),
    );
    entered_rx.recv().expect("the thread is inside its batch");
    assert!(
        group
            .append_now(&[accept_request(2, 2, Ballot::new(1, 1), 1)])
            .is_none(),
        "the thread is writing"
    );
    // Queued behind the batch in progress: an inline write now would overtake it.
    let (done_tx, done_rx) = mpsc::channel();
    group.submit(
        accept_request(2, 2, Ballot::new(1, 1), 1),
        Box::new(move |result| done_tx.send(result).expect("test waits")),
    );
    assert!(group
        .append_now(&[accept_request(3, 3, Ballot::new(1, 1), 2)])
        .is_none());
    release_tx.send(()).expect("thread waits");
    done_rx.recv().expect("completed").expect("durable");
    // Idle again (the thread clears its flag right after the completions run).
    append_now_when_idle(&group, &[accept_request(3, 3, Ballot::new(1, 1), 2)]).expect("durable");
    let wal = group.shutdown().expect("shutdown");
    assert_eq!(wal.last_persist_id(), 3);
}

#[test]
fn an_inline_write_never_overtakes_a_submitted_request() {
    // Four threads hand requests over in id order (under one lock, as the driver does on
    // its one task); two of them try `append_now` first. When it writes, every request
    // handed over before it must already be written: the completions counted them.
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), fast_options(1 << 16)).expect("open");
    let group = Arc::new(GroupCommit::start(wal));
    let next_id = Arc::new(Mutex::new(0u64));
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|thread_index| {
            let group = Arc::clone(&group);
            let next_id = Arc::clone(&next_id);
            let written = Arc::clone(&written);
            thread::spawn(move || {
                let mut inline = 0;
                for round in 0..300 {
                    let mut next = next_id.lock().expect("id lock");
                    *next += 1;
                    let id = *next;
                    let request = accept_request(id, id, Ballot::new(1, 1), 0);
                    if thread_index % 2 == 0 {
                        // Every fiftieth round waits, holding the id lock so nobody hands
                        // anything over, until the log is idle: whether the other rounds
                        // find it idle depends on the machine's scheduling, and the check
                        // below must not rest on luck.
                        let inline_result = if round % 50 == 0 {
                            while written.load(std::sync::atomic::Ordering::SeqCst) < id - 1 {
                                thread::sleep(std::time::Duration::from_micros(100));
                            }
                            Some(append_now_when_idle(&group, std::slice::from_ref(&request)))
                        } else {
                            group.append_now(std::slice::from_ref(&request))
                        };
                        if let Some(result) = inline_result {
                            result.expect("durable");
                            let before = written.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            assert_eq!(
                                before,
                                id - 1,
                                "request {id} was written before an earlier one"
                            );
                            inline += 1;
                            continue;
                        }
                    }
                    let written = Arc::clone(&written);
                    group.submit(
                        request,
                        Box::new(move |result| {
                            result.expect("durable");
                            written.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }),
                    );
                    drop(next);
                }
                inline
            })
        })
        .collect();
    let inline: usize = threads
        .into_iter()
        .map(|handle| handle.join().expect("thread"))
        .sum();
    assert!(inline >= 12, "only {inline} writes went inline");
    let group = Arc::into_inner(group).expect("sole owner");
    let wal = group.shutdown().expect("shutdown");
    assert_eq!(wal.last_persist_id(), 1200);
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), fast_options(1 << 16)).expect("reopen");
    assert_eq!(recovered.entries.len(), 1200);
}
