//! The applied store, for the tasks that follow it: the watch task, lock waiters and
//! election observers.
//!
//! The replica's task publishes a clone of the store after every batch it applied — but
//! only while somebody follows. A published clone shares the store's B-tree nodes, so the
//! next write copies the leaf it touches and the path to it; with nobody to read the clone
//! that copy is pure waste (12–15 % of a busy node's CPU under puts, docs/latency.md).
//!
//! A follower starts by asking the replica's task for its state *now* (a serializable read)
//! after it has made itself counted. So it sees every write acknowledged to any client
//! before it started — the replica applies, publishes, then answers — and every state
//! published after: no gap. When the last follower leaves, the channel's clone is dropped
//! too, so an idle feed pins no old version of the store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use synod_kv::StateMachine;
use tokio::sync::watch;

use crate::{Consistency, Handle, ServerError};

/// The replica's side: publishes applied states while anyone follows them.
pub struct AppliedFeed<S> {
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    states: watch::Sender<Option<S>>,
    followers: AtomicUsize,
}

impl<S> Clone for AppliedFeed<S> {
    fn clone(&self) -> Self {
        AppliedFeed {
            shared: self.shared.clone(),
        }
    }
}

impl<S: StateMachine + Clone + Send + Sync + 'static> Default for AppliedFeed<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: StateMachine + Clone + Send + Sync + 'static> AppliedFeed<S> {
    pub fn new() -> AppliedFeed<S> {
        AppliedFeed {
            shared: Arc::new(Shared {
                states: watch::Sender::new(None),
                followers: AtomicUsize::new(0),
            }),
        }
    }

    /// The observer's part: called on the replica's task after a batch was applied.
    pub fn publish(&self, state: &S) {
        if self.shared.followers.load(Ordering::SeqCst) > 0 {
            self.shared.states.send_replace(Some(state.clone()));
        }
    }

    /// How many follow now.
    pub fn followers(&self) -> usize {
        self.shared.followers.load(Ordering::SeqCst)
    }

    /// Whether the feed holds a published state (it holds none while nobody follows).
    pub fn holds_state(&self) -> bool {
        self.shared.states.borrow().is_some()
    }

    /// Starts following: the state as applied now, then each newer one as it is applied.
    pub async fn follow(&self, handle: &Handle<S>) -> Result<Following<S>, ServerError> {
        // Counted before asking: a state applied after the read below is published.
        self.shared.followers.fetch_add(1, Ordering::SeqCst);
        let counted = Counted { feed: self.clone() };
        let states = self.shared.states.subscribe();
        let current = handle.read(Consistency::Serializable, S::clone).await?;
        Ok(Following {
            states,
            current,
            _counted: counted,
        })
    }
}

/// One follower's count, given back when it is dropped (also if `follow` failed).
struct Counted<S> {
    feed: AppliedFeed<S>,
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        let shared = &self.feed.shared;
        if shared.followers.fetch_sub(1, Ordering::SeqCst) == 1 {
            // The last one: drop the published clone, unless a new follower came meanwhile
            // (checked under the channel's lock, which `publish` takes too).
            shared.states.send_if_modified(|state| {
                if shared.followers.load(Ordering::SeqCst) == 0 {
                    state.take();
                }
                false
            });
        }
    }
}

/// A follower of the applied store (see the module docs); stops following when dropped.
pub struct Following<S> {
    states: watch::Receiver<Option<S>>,
    current: S,
    _counted: Counted<S>,
}

impl<S: StateMachine + Clone> Following<S> {
    /// The newest applied state this follower has taken.
    pub fn state(&self) -> &S {
        &self.current
    }

    /// Takes a newer published state if there is one, without waiting; true if it did.
    pub fn refresh(&mut self) -> bool {
        self.states.has_changed().unwrap_or(false) && self.take_newer()
    }

    /// Waits for a newer applied state and takes it. Fails once the replica stopped.
    pub async fn changed(&mut self) -> Result<(), ServerError> {
        loop {
            self.states
                .changed()
                .await
                .map_err(|_| ServerError::Stopped)?;
            if self.take_newer() {
                return Ok(());
            }
        }
    }

    /// Takes the published state if it is newer than the one held.
    fn take_newer(&mut self) -> bool {
        let newer = match &*self.states.borrow_and_update() {
            Some(state) if state.applied() > self.current.applied() => state.clone(),
            _ => return false,
        };
        self.current = newer;
        true
    }
}
