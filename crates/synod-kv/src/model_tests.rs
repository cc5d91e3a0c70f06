//! The store against a naive model: a BTreeMap scanned linearly, with etcd's revision rules
//! written out longhand. Random put/delete/range sequences must give identical responses, and
//! a snapshot taken anywhere must continue identically.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use crate::*;

#[derive(Clone, Debug)]
struct ModelEntry {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
}

#[derive(Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, ModelEntry>,
    revision: i64,
}

/// Whether `candidate` falls in etcd's `[key, range_end)` selection.
fn selects(key: &[u8], range_end: &[u8], candidate: &[u8]) -> bool {
    if range_end.is_empty() {
        candidate == key
    } else if range_end == [0] {
        candidate >= key
    } else {
        candidate >= key && candidate < range_end
    }
}

impl Model {
    fn kv(key: &[u8], entry: &ModelEntry) -> KeyValue {
        KeyValue {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(&entry.value),
            create_revision: entry.create_revision,
            mod_revision: entry.mod_revision,
            version: entry.version,
            lease: 0,
        }
    }

    fn apply(&mut self, op: &Op) -> Response {
        let result = match op {
            Op::Put(put) => {
                self.revision += 1;
                let revision = self.revision;
                let previous = self.keys.get(put.key.as_ref()).cloned();
                let entry = ModelEntry {
                    value: put.value.to_vec(),
                    create_revision: previous.as_ref().map_or(revision, |p| p.create_revision),
                    mod_revision: revision,
                    version: previous.as_ref().map_or(1, |p| p.version + 1),
                };
                self.keys.insert(put.key.to_vec(), entry);
                OpResponse::Put(PutResponse {
                    prev_kv: previous
                        .filter(|_| put.prev_kv)
                        .map(|p| Model::kv(&put.key, &p)),
                })
            }
            Op::DeleteRange(delete) => {
                let doomed: Vec<Vec<u8>> = self
                    .keys
                    .keys()
                    .filter(|k| selects(&delete.key, &delete.range_end, k))
                    .cloned()
                    .collect();
                let mut prev_kvs = Vec::new();
                for key in &doomed {
                    let entry = self.keys.remove(key).unwrap();
                    if delete.prev_kv {
                        prev_kvs.push(Model::kv(key, &entry));
                    }
                }
                if !doomed.is_empty() {
                    self.revision += 1;
                }
                OpResponse::DeleteRange(DeleteRangeResponse {
                    deleted: doomed.len() as i64,
                    prev_kvs,
                })
            }
            Op::Range(range) => {
                let all: Vec<KeyValue> = self
                    .keys
                    .iter()
                    .filter(|(k, _)| selects(&range.key, &range.range_end, k))
                    .map(|(k, e)| Model::kv(k, e))
                    .collect();
                let count = all.len() as i64;
                let mut kvs = if range.count_only { vec![] } else { all };
                let mut more = false;
                if range.limit > 0 && kvs.len() as i64 > range.limit {
                    kvs.truncate(range.limit as usize);
                    more = true;
                }
                if range.keys_only {
                    kvs.iter_mut().for_each(|kv| kv.value = Bytes::new());
                }
                OpResponse::Range(RangeResponse { kvs, more, count })
            }
            Op::Txn(_)
            | Op::Compact(_)
            | Op::Alarm(_)
            | Op::LeaseGrant(_)
            | Op::LeaseRevoke(_)
            | Op::LeasePromote(_)
            | Op::LeaseExpire { .. }
            | Op::MemberAlarm(_) => {
                unreachable!("the model only knows put, delete and range")
            }
        };
        Response {
            revision: self.revision,
            result: Ok(result),
        }
    }
}

fn key() -> impl Strategy<Value = Bytes> {
    // Few, short keys over two letters: ranges overlap and keys come back after deletion.
    proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 1..=3).prop_map(Bytes::from)
}

fn range_end() -> impl Strategy<Value = Bytes> {
    prop_oneof![Just(Bytes::new()), Just(Bytes::from_static(b"\0")), key(),]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), proptest::collection::vec(any::<u8>(), 0..4), any::<bool>()).prop_map(
            |(key, value, prev_kv)| Op::Put(PutRequest {
                key,
                value: Bytes::from(value),
                prev_kv,
                ..PutRequest::default()
            })
        ),
        2 => (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| {
            Op::DeleteRange(DeleteRangeRequest { key, range_end, prev_kv })
        }),
        3 => (key(), range_end(), -1i64..4, any::<bool>(), any::<bool>()).prop_map(
            |(key, range_end, limit, count_only, keys_only)| Op::Range(RangeRequest {
                key,
                range_end,
                limit,
                count_only,
                keys_only,
                revision: 0,
            })
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn store_matches_the_naive_model(ops in proptest::collection::vec(op(), 1..60), snapshot_at in 0usize..60) {
        let mut store = KvStore::new();
        let mut model = Model { revision: INITIAL_REVISION, ..Model::default() };
        for (index, op) in ops.iter().enumerate() {
            if index == snapshot_at {
                let mut restored = KvStore::new();
                restored.restore(&store.snapshot()).unwrap();
                prop_assert_eq!(&restored, &store);
                store = restored;
            }
            let slot = index as u64 + 1;
            let bytes = Command::unsessioned(op.clone()).encode();
            let response = Response::decode(&store.apply(slot, &bytes)).unwrap();
            prop_assert_eq!(&response, &model.apply(op), "op #{} {:?}", index, op);
            prop_assert_eq!(store.revision(), model.revision);
            prop_assert_eq!(store.len(), model.keys.len());
        }
    }
}
