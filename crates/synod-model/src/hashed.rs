//! A shared value with its hash computed once.
//!
//! The checker hashes every state it generates. Most actions change one replica and add
//! a message or two, so each replica and each message keeps its own hash and the state's
//! hash combines them: the unchanged parts are neither copied (they are shared through an
//! `Arc`) nor hashed again.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// `value` and a hash of it (fixed keys, so runs are reproducible).
#[derive(Clone)]
pub struct Hashed<T> {
    hash: u64,
    value: Arc<T>,
}

/// A hash with fixed keys: the same state gets the same fingerprint in every run.
pub fn hash_of<T: Hash + ?Sized>(value: &T) -> u64 {
    #[allow(deprecated)]
    let mut hasher = std::hash::SipHasher::new_with_keys(0x05ee_d0f5_700d, 0x0ddb_a110);
    value.hash(&mut hasher);
    hasher.finish()
}

impl<T: Hash + Clone> Hashed<T> {
    /// Wraps and hashes `value`.
    pub fn new(value: T) -> Hashed<T> {
        Hashed {
            hash: hash_of(&value),
            value: Arc::new(value),
        }
    }

    /// Changes the value (copying it first if it is shared) and hashes it again.
    pub fn update<R>(&mut self, change: impl FnOnce(&mut T) -> R) -> R {
        let value = Arc::make_mut(&mut self.value);
        let result = change(value);
        self.hash = hash_of(value);
        result
    }
}

impl<T> std::ops::Deref for Hashed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Hash for Hashed<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl<T: PartialEq> PartialEq for Hashed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash
            && (Arc::ptr_eq(&self.value, &other.value) || self.value == other.value)
    }
}

impl<T: Eq> Eq for Hashed<T> {}

impl<T: Ord> PartialOrd for Hashed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// By hash first (cheap), then by value: a total order, used to keep the network sorted.
impl<T: Ord> Ord for Hashed<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.hash
            .cmp(&other.hash)
            .then_with(|| self.value.as_ref().cmp(other.value.as_ref()))
    }
}

impl<T: fmt::Debug> fmt::Debug for Hashed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}
