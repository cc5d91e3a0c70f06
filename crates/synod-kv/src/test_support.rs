//! Helpers shared by the history and watch tests: short constructors for the ops they
//! run and a way to apply one at the next slot.

use bytes::Bytes;

use crate::*;

pub(crate) fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

pub(crate) fn put(key: &str, value: &str) -> Op {
    Op::Put(PutRequest {
        key: b(key),
        value: b(value),
        ..PutRequest::default()
    })
}

pub(crate) fn delete(key: &str) -> Op {
    Op::DeleteRange(DeleteRangeRequest {
        key: b(key),
        ..DeleteRangeRequest::default()
    })
}

pub(crate) fn compact(revision: i64) -> Op {
    Op::Compact(CompactRequest {
        revision,
        physical: false,
    })
}

pub(crate) fn run(store: &mut KvStore, op: Op) -> Response {
    let slot = store.applied() + 1;
    store.execute(slot, &Command::unsessioned(op))
}
