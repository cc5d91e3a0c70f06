//! Group commit: one thread owns the `Wal`; callers submit persist requests and get a
//! completion once the request is durable. Every request that is pending when the thread
//! wakes goes into one `append`, so they share one fdatasync. Completions run in
//! submission order, so "request N is durable" implies every earlier one is too.
//!
//! A caller that would only wait for the thread can write on its own thread instead
//! ([`GroupCommit::append_now`]) when nothing is queued or being written: that saves the
//! two thread wake-ups of a hand-off (docs/latency.md), at the price of blocking the
//! caller for one write + fdatasync.

use crate::error::StorageError;
use crate::wal::{Superseded, SyncMode, Wal};
use serde::Serialize;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use synod_core::{PersistRequest, Slot};

/// Called on the group-commit thread once the request is durable (or failed). Keep it
/// short: the next batch waits for it.
pub type Completion = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// Called on the group-commit thread with how long one batch took to write and
/// fdatasync, for a latency histogram. Batches that are not synced (commit marks only,
/// or a log opened with [`SyncMode::None`]) and failed batches are not reported.
pub type SyncObserver = Box<dyn Fn(Duration) + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
pub struct GroupCommitStats {
    /// Requests completed (successfully or not).
    pub requests: u64,
    /// `Wal::append` calls, each ending in one fdatasync when syncing is on (unless every
    /// request in it is commit marks only, see `PersistRequest::needs_sync`).
    pub syncs: u64,
    /// The most requests one sync covered.
    pub largest_batch: u64,
    pub failed_requests: u64,
    pub compactions: u64,
    /// Size of the log on disk after the last batch or compaction.
    pub disk_bytes: u64,
}

enum Command {
    Compact(Slot, mpsc::Sender<Result<Superseded, StorageError>>),
}

#[derive(Default)]
struct Queue {
    requests: Vec<(PersistRequest, Completion)>,
    commands: VecDeque<Command>,
    shutting_down: bool,
    /// The thread has exited: new submissions fail at once.
    closed: bool,
    /// The log is being written (by the thread, or by `append_now`'s caller): the other
    /// must not start, so batches reach the log in submission order.
    writing: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Mutex<GroupCommitStats>,
    /// `None` once the thread has exited and handed it back.
    wal: Mutex<Option<Wal>>,
    observer: Option<SyncObserver>,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic elsewhere must not make the log unusable: the queue stays consistent
        // because every critical section only moves values in or out.
        self.queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn stats(&self) -> MutexGuard<'_, GroupCommitStats> {
        self.stats
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn wal(&self) -> MutexGuard<'_, Option<Wal>> {
        self.wal.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Writes `batch` with one `append` (one fdatasync) and counts it. The caller holds
    /// the `writing` flag, so nobody else is in the log.
    fn append(&self, batch: &[PersistRequest]) -> Result<(), StorageError> {
        let mut wal = self.wal();
        let Some(wal) = wal.as_mut() else {
            return Err(StorageError::Closed);
        };
        let synced =
            wal.options().sync == SyncMode::Fsync && batch.iter().any(PersistRequest::needs_sync);
        let started = Instant::now();
        let result = wal.append(batch);
        if let (Some(observer), true, true) = (&self.observer, synced, result.is_ok()) {
            let took = started.elapsed();
            // Like a completion, a panicking observer must not take the log down.
            let _ = catch_unwind(AssertUnwindSafe(|| observer(took)));
        }
        let mut stats = self.stats();
        stats.requests += batch.len() as u64;
        stats.syncs += 1;
        stats.largest_batch = stats.largest_batch.max(batch.len() as u64);
        if result.is_err() {
            stats.failed_requests += batch.len() as u64;
        }
        stats.disk_bytes = wal.disk_bytes();
        result
    }
}

pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommit {
    pub fn start(wal: Wal) -> GroupCommit {
        GroupCommit::start_observed(wal, None)
    }

    /// Like [`GroupCommit::start`], reporting each synced batch's duration to `observer`.
    pub fn start_with_sync_observer(wal: Wal, observer: SyncObserver) -> GroupCommit {
        GroupCommit::start_observed(wal, Some(observer))
    }

    fn start_observed(wal: Wal, observer: Option<SyncObserver>) -> GroupCommit {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats: Mutex::new(GroupCommitStats {
                disk_bytes: wal.disk_bytes(),
                ..GroupCommitStats::default()
            }),
            wal: Mutex::new(Some(wal)),
            observer,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("synod-group-commit".to_string())
            .spawn(move || run(&thread_shared))
            .ok();
        if thread.is_none() {
            shared.queue().closed = true;
        }
        GroupCommit { shared, thread }
    }

    /// Queues `request`; `done` runs once it is durable. Completion order is submission
    /// order.
    pub fn submit(&self, request: PersistRequest, done: Completion) {
        let mut queue = self.shared.queue();
        if queue.closed {
            drop(queue);
            done(Err(StorageError::Closed));
            return;
        }
        queue.requests.push((request, done));
        drop(queue);
        self.shared.wake.notify_one();
    }

    /// Writes `requests` on the caller's thread with one `append` (one fdatasync) and
    /// returns once they are durable — when nothing is queued or being written. Otherwise
    /// (or when the log is closed or stopping) returns `None` without writing: submit
    /// them instead, behind what is queued. Either way batches reach the log in the order
    /// they were handed over; the caller must itself not rely on completions of earlier
    /// submissions that it has not yet seen (they ran, but their messages may be queued).
    pub fn append_now(&self, requests: &[PersistRequest]) -> Option<Result<(), StorageError>> {
        {
            let mut queue = self.shared.queue();
            if queue.closed
                || queue.shutting_down
                || queue.writing
                || !queue.requests.is_empty()
                || !queue.commands.is_empty()
            {
                return None;
            }
            queue.writing = true;
        }
        let result = catch_unwind(AssertUnwindSafe(|| self.shared.append(requests)))
            .unwrap_or(Err(StorageError::Closed));
        self.shared.queue().writing = false;
        // Whatever was submitted meanwhile waits for the thread.
        self.shared.wake.notify_one();
        Some(result)
    }

    /// Submits and blocks until the request is durable.
    pub fn submit_and_wait(&self, request: PersistRequest) -> Result<(), StorageError> {
        let (sender, receiver) = mpsc::channel();
        self.submit(
            request,
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
        receiver.recv().unwrap_or(Err(StorageError::Closed))
    }

    pub fn stats(&self) -> GroupCommitStats {
        *self.shared.stats()
    }

    /// Runs `Wal::compact(through)`: the checkpoint on the group-commit thread, after
    /// every request submitted before this call; the superseded segments are deleted
    /// on the calling thread afterwards, so the group-commit thread goes back to
    /// writing as soon as the checkpoint is durable (`Wal::checkpoint`).
    pub fn compact(&self, through: Slot) -> Result<(), StorageError> {
        self.checkpoint(through)?.remove()
    }

    /// `Wal::checkpoint(through)` on the group-commit thread, after every request
    /// submitted before this call; the caller removes what it superseded.
    pub fn checkpoint(&self, through: Slot) -> Result<Superseded, StorageError> {
        let (sender, receiver) = mpsc::channel();
        {
            let mut queue = self.shared.queue();
            if queue.closed {
                return Err(StorageError::Closed);
            }
            queue.commands.push_back(Command::Compact(through, sender));
        }
        self.shared.wake.notify_one();
        receiver.recv().unwrap_or(Err(StorageError::Closed))
    }

    /// Completes every pending request, stops the thread and hands the log back.
    pub fn shutdown(mut self) -> Result<Wal, StorageError> {
        self.stop().ok_or(StorageError::Closed)
    }

    fn stop(&mut self) -> Option<Wal> {
        let thread = self.thread.take()?;
        self.shared.queue().shutting_down = true;
        self.shared.wake.notify_one();
        thread.join().ok()?;
        self.shared.wal().take()
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Marks the queue closed when the thread exits, however it exits, and fails whatever
/// is still queued, so no caller waits forever.
struct CloseOnExit<'a>(&'a Shared);

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        let (requests, commands) = {
            let mut queue = self.0.queue();
            queue.closed = true;
            (
                std::mem::take(&mut queue.requests),
                std::mem::take(&mut queue.commands),
            )
        };
        for (_, done) in requests {
            let _ = catch_unwind(AssertUnwindSafe(move || done(Err(StorageError::Closed))));
        }
        for command in commands {
            match command {
                Command::Compact(_, reply) => {
                    let _ = reply.send(Err(StorageError::Closed));
                }
            }
        }
    }
}

fn run(shared: &Shared) {
    let _close_on_exit = CloseOnExit(shared);
    let mut batch: Vec<PersistRequest> = Vec::new();
    loop {
        let (pending, commands, shutting_down) = {
            let mut queue = shared.queue();
            while queue.writing
                || (queue.requests.is_empty() && queue.commands.is_empty() && !queue.shutting_down)
            {
                queue = shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(|poison| poison.into_inner());
            }
            queue.writing = true;
            (
                std::mem::take(&mut queue.requests),
                std::mem::take(&mut queue.commands),
                queue.shutting_down,
            )
        };

        if !pending.is_empty() {
            batch.clear();
            let mut completions = Vec::with_capacity(pending.len());
            for (request, done) in pending {
                batch.push(request);
                completions.push(done);
            }
            let result = shared.append(&batch);
            for done in completions {
                let outcome = match &result {
                    Ok(()) => Ok(()),
                    Err(error) => Err(error.duplicate()),
                };
                // A panicking callback must not take the log down with it.
                let _ = catch_unwind(AssertUnwindSafe(move || done(outcome)));
            }
        }

        for command in commands {
            match command {
                Command::Compact(through, reply) => {
                    let result = match shared.wal().as_mut() {
                        Some(wal) => {
                            let result = wal.checkpoint(through);
                            let mut stats = shared.stats();
                            stats.compactions += 1;
                            stats.disk_bytes = wal.disk_bytes();
                            result
                        }
                        None => Err(StorageError::Closed),
                    };
                    let _ = reply.send(result);
                }
            }
        }

        let mut queue = shared.queue();
        queue.writing = false;
        if shutting_down && queue.requests.is_empty() && queue.commands.is_empty() {
            queue.closed = true;
            return;
        }
    }
}
