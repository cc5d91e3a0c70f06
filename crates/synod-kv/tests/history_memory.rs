//! The heap the KV store's history takes per event, counted by a global allocator that
//! tracks live bytes (so the figures are exact and the same on every run, unlike a resident
//! set). Commands go through `StateMachine::apply`, decoded as the log delivers them.
//!
//! One test function only: the counter is global, and tests of one binary run in parallel.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use synod_kv::{Command, KvStore, Op, PutRequest, StateMachine};

/// Live heap bytes as requested, and as glibc's malloc rounds them (a chunk is the request
/// plus an 8-byte header, rounded up to 16, at least 32 bytes).
struct Counting;

static REQUESTED: AtomicIsize = AtomicIsize::new(0);
static CHUNKS: AtomicIsize = AtomicIsize::new(0);

fn chunk(size: usize) -> isize {
    ((size + 8 + 15) & !15).max(32) as isize
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        REQUESTED.fetch_add(layout.size() as isize, Ordering::Relaxed);
        CHUNKS.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        REQUESTED.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        CHUNKS.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REQUESTED.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        CHUNKS.fetch_add(chunk(new_size) - chunk(layout.size()), Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const VALUE_BYTES: usize = 100;

/// The key `key/00000042`: 12 bytes, as `synod bench mvcc` writes them.
fn key(index: u64) -> Vec<u8> {
    format!("key/{index:08}").into_bytes()
}

/// Heap bytes per revision (requested, malloc chunks) after `revisions` puts spread over
/// `keys` keys in key order, and the quota's estimate per revision.
fn heap_per_revision(keys: u64, revisions: u64) -> (f64, f64, f64) {
    let value = vec![b'v'; VALUE_BYTES];
    let mut store = KvStore::new().with_quota_bytes(u64::MAX);
    let requested = REQUESTED.load(Ordering::Relaxed);
    let chunks = CHUNKS.load(Ordering::Relaxed);
    for slot in 1..=revisions {
        let command = Command::unsessioned(Op::Put(PutRequest {
            key: key(slot % keys).into(),
            value: value.clone().into(),
            ..PutRequest::default()
        }));
        store.apply(slot, &command.encode());
    }
    let requested = (REQUESTED.load(Ordering::Relaxed) - requested) as f64 / revisions as f64;
    let chunks = (CHUNKS.load(Ordering::Relaxed) - chunks) as f64 / revisions as f64;
    let estimate = store.history_bytes() as f64 / revisions as f64;
    drop(store);
    (requested, chunks, estimate)
}

/// Keys written once, twice, 100 times and 20,000 times. A key written once cost 4.6 KB
/// before its single event was held inline (imbl's vector allocated a 64-event chunk for it).
/// The quota's estimate (`--quota-backend-bytes` is held to it) stays within 30 % of the heap.
#[test]
fn a_retained_revision_costs_a_small_multiple_of_its_key_and_value() {
    let key_and_value = (key(0).len() + VALUE_BYTES) as f64;
    for (keys, revisions) in [
        (20_000, 20_000),
        (10_000, 20_000),
        (200, 20_000),
        (1, 20_000),
    ] {
        let (requested, chunks, estimate) = heap_per_revision(keys, revisions);
        eprintln!(
            "{keys} keys, {revisions} revisions: {requested:.0} B requested, \
             {chunks:.0} B in malloc chunks, quota estimate {estimate:.0} B per revision \
             (key + value: {key_and_value} B)"
        );
        let ratio = estimate / chunks;
        assert!(
            (0.7..=1.3).contains(&ratio),
            "{keys} keys: the estimate is {ratio:.2} x the heap"
        );
        assert!(
            chunks <= 3.0 * key_and_value + 192.0,
            "{keys} keys: {chunks:.0} B per revision"
        );
    }
}
