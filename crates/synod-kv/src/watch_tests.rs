//! Watches held to etcd's guarantees: scenario tests named after the situation, then a
//! property test — random writes, compactions, watch creations and streams that refuse
//! responses at random — checked against every revision's changes recorded as they were
//! applied.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;

use crate::*;

use crate::test_support::{b, compact, delete, put, run};

fn watch(key: &str) -> WatchRequest {
    WatchRequest {
        key: b(key),
        ..WatchRequest::default()
    }
}

fn prefix(key: &str) -> WatchRequest {
    let mut end = key.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    WatchRequest {
        key: b(key),
        range_end: Bytes::from(end),
        ..WatchRequest::default()
    }
}

/// Every output the hub hands out, taking them all.
fn drain(hub: &mut WatchHub) -> Vec<WatchOutput> {
    let mut outputs = Vec::new();
    hub.flush(|output| {
        outputs.push(output.clone());
        true
    });
    outputs
}

/// `(kind, key, value, mod_revision)` of each event of an output list, for one watch id.
fn events_of(outputs: &[WatchOutput], watch_id: i64) -> Vec<(EventKind, String, String, i64)> {
    outputs
        .iter()
        .filter(|output| output.watch_id == watch_id)
        .flat_map(|output| match &output.update {
            WatchUpdate::Events { events, .. } => events.clone(),
            _ => Vec::new(),
        })
        .map(|event| {
            (
                event.kind,
                String::from_utf8_lossy(&event.kv.key).into_owned(),
                String::from_utf8_lossy(&event.kv.value).into_owned(),
                event.revision(),
            )
        })
        .collect()
}

#[test]
fn a_watch_from_an_old_revision_replays_history_then_follows_live_writes() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "1")); // 2
    run(&mut store, put("b", "x")); // 3
    run(&mut store, put("a", "2")); // 4
    let mut hub = WatchHub::new(&store);
    let stream = hub.open_stream();
    hub.create(
        &store,
        stream,
        0,
        WatchRequest {
            start_revision: 2,
            ..watch("a")
        },
    );
    run(&mut store, delete("a")); // 5
    hub.advance(&store);
    let outputs = drain(&mut hub);
    assert_eq!(
        outputs[0].update,
        WatchUpdate::Created { revision: 4 },
        "created first, with the hub's revision"
    );
    assert_eq!(outputs[0].watch_id, 0, "etcd's automatic ids start at 0");
    assert_eq!(
        events_of(&outputs, 0),
        vec![
            (EventKind::Put, "a".into(), "1".into(), 2),
            (EventKind::Put, "a".into(), "2".into(), 4),
            (EventKind::Delete, "a".into(), "".into(), 5),
        ]
    );
    // The replayed batch says it is complete through 4; the live one through 5.
    let revisions: Vec<i64> = outputs
        .iter()
        .filter_map(|output| match output.update {
            WatchUpdate::Events { revision, .. } => Some(revision),
            _ => None,
        })
        .collect();
    assert_eq!(revisions, vec![4, 5]);
}

#[test]
fn a_watch_from_now_sees_only_later_writes() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "old"));
    let mut hub = WatchHub::new(&store);
    let stream = hub.open_stream();
    hub.create(&store, stream, 0, watch("a"));
    run(&mut store, put("a", "new"));
    hub.advance(&store);
    let outputs = drain(&mut hub);
    assert_eq!(
        events_of(&outputs, 0),
        vec![(EventKind::Put, "a".into(), "new".into(), 3)]
    );
}

#[test]
fn events_of_one_txn_arrive_in_one_response_in_write_order() {
    let mut store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let stream = hub.open_stream();
    hub.create(&store, stream, 0, prefix("k/"));
    run(
        &mut store,
        Op::Txn(TxnRequest {
            compare: Vec::new(),
            success: vec![put("k/2", "b"), put("k/1", "a"), put("other", "z")],
            failure: Vec::new(),
        }),
    );
    hub.advance(&store);
    let outputs = drain(&mut hub);
    let responses: Vec<&WatchOutput> = outputs
        .iter()
        .filter(|output| matches!(output.update, WatchUpdate::Events { .. }))
        .collect();
    assert_eq!(responses.len(), 1, "{outputs:?}");
    assert_eq!(
        events_of(&outputs, 0),
        vec![
            (EventKind::Put, "k/2".into(), "b".into(), 2),
            (EventKind::Put, "k/1".into(), "a".into(), 2),
        ]
    );
}

#[test]
fn prev_kv_and_filters_follow_etcd() {
    let mut store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let stream = hub.open_stream();
    hub.create(
        &store,
        stream,
        0,
        WatchRequest {
            prev_kv: true,
            ..watch("a")
        },
    );
    hub.create(
        &store,
        stream,
        0,
        WatchRequest {
            no_put: true,
            ..watch("a")
        },
    );
    hub.create(
        &store,
        stream,
        0,
        WatchRequest {
            no_delete: true,
            ..watch("a")
        },
    );
    run(&mut store, put("a", "1"));
    run(&mut store, put("a", "2"));
    run(&mut store, delete("a"));
    hub.advance(&store);
    let outputs = drain(&mut hub);
    let with_prev: Vec<WatchEvent> = outputs
        .iter()
        .filter(|o| o.watch_id == 0)
        .flat_map(|o| match &o.update {
            WatchUpdate::Events { events, .. } => events.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(with_prev.len(), 3);
    assert_eq!(
        with_prev[0].prev_kv, None,
        "a creation has no previous state"
    );
    assert_eq!(
        with_prev[0].kv.create_revision, with_prev[0].kv.mod_revision,
        "IsCreate"
    );
    assert_eq!(with_prev[1].prev_kv.as_ref().unwrap().value, b("1"));
    assert_eq!(with_prev[2].prev_kv.as_ref().unwrap().value, b("2"));
    assert_eq!(
        events_of(&outputs, 1),
        vec![(EventKind::Delete, "a".into(), "".into(), 4)],
        "NOPUT"
    );
    assert_eq!(events_of(&outputs, 2).len(), 2, "NODELETE");
    assert!(events_of(&outputs, 2)
        .iter()
        .all(|(kind, ..)| *kind == EventKind::Put));
}

#[test]
fn a_watch_whose_start_revision_was_compacted_is_canceled_with_the_compact_revision() {
    let mut store = KvStore::new();
    for value in ["1", "2", "3"] {
        run(&mut store, put("a", value)); // 2, 3, 4
    }
    run(&mut store, compact(3));
    let mut hub = WatchHub::new(&store);
    let stream = hub.open_stream();
    hub.create(
        &store,
        stream,
        7,
        WatchRequest {
            start_revision: 2,
            ..watch("a")
        },
    );
    let outputs = drain(&mut hub);
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    assert_eq!(outputs[0].update, WatchUpdate::Created { revision: 4 });
    assert_eq!(
        outputs[1],
        WatchOutput {
            stream,
            watch_id: 7,
            update: WatchUpdate::Canceled {
                revision: 4,
                compact_revision: 3
            }
        }
    );
    assert_eq!(hub.stats().canceled_by_compaction, 1);
    assert!(hub.is_empty());
}

#[test]
fn a_watch_at_the_compacted_revision_gets_the_puts_the_compaction_kept() {
    let mut store = KvStore::new();
    run(&mut store, put("a", "1")); // 2
    run(
        &mut store,
        Op::Txn(TxnRequest {
            compare: Vec::new(),
            success: vec![put("a", "2"), put("b", "1"), delete("c")],
            failure: Vec::new(),
        }),
    ); // 3
    run(&mut store, put("a", "3")); // 4
    run(&mut store, compact(3));
    let mut hub = WatchHub::new(&store);
    let stream = hub.open_stream();
    hub.create(
        &store,
        stream,
        0,
        WatchRequest {
            start_revision: 3,
            range_end: b("\0"),
            ..watch("a")
        },
    );
    let outputs = drain(&mut hub);
    assert_eq!(
        events_of(&outputs, 0),
        vec![
            (EventKind::Put, "a".into(), "2".into(), 3),
            (EventKind::Put, "b".into(), "1".into(), 3),
            (EventKind::Put, "a".into(), "3".into(), 4),
        ]
    );
}

#[test]
fn a_stuck_reader_falls_behind_without_holding_up_others_then_catches_up_from_history() {
    let mut store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let stuck = hub.open_stream();
    let reading = hub.open_stream();
    hub.create(&store, stuck, 0, watch("a"));
    hub.create(&store, reading, 0, watch("a"));
    drain(&mut hub);
    let mut delivered: Vec<WatchOutput> = Vec::new();
    for round in 0..50 {
        run(&mut store, put("a", &round.to_string()));
        hub.advance(&store);
        hub.catch_up(&store);
        hub.flush(|output| {
            if output.stream == stuck {
                return false;
            }
            delivered.push(output.clone());
            true
        });
    }
    assert_eq!(
        events_of(&delivered, 0).len(),
        50,
        "the reading stream got every write"
    );
    assert_eq!(hub.unsynced(), 1, "the stuck one is behind");
    assert!(hub.stats().stalled >= 1);
    // It reads again: history gives it all 50 revisions, in order, once.
    hub.catch_up(&store);
    let mut resumed = Vec::new();
    hub.flush(|output| {
        if output.stream == stuck {
            resumed.push(output.clone());
        }
        true
    });
    let events = events_of(&resumed, 0);
    assert_eq!(events.len(), 50, "{events:?}");
    assert!(events.windows(2).all(|pair| pair[0].3 < pair[1].3));
    assert_eq!(hub.unsynced(), 0);
}

#[test]
fn a_stuck_reader_whose_history_is_compacted_is_canceled() {
    let mut store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let stuck = hub.open_stream();
    hub.create(&store, stuck, 0, watch("a"));
    drain(&mut hub);
    for round in 0..5 {
        run(&mut store, put("a", &round.to_string()));
    }
    hub.advance(&store);
    hub.flush(|_| false);
    run(&mut store, compact(5));
    hub.catch_up(&store);
    let outputs = drain(&mut hub);
    assert_eq!(
        outputs,
        vec![WatchOutput {
            stream: stuck,
            watch_id: 0,
            update: WatchUpdate::Canceled {
                revision: 6,
                compact_revision: 5
            }
        }]
    );
}

#[test]
fn watch_ids_are_chosen_from_zero_and_a_duplicate_is_refused() {
    let store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let stream = hub.open_stream();
    hub.create(&store, stream, 1, watch("a"));
    hub.create(&store, stream, 0, watch("a"));
    hub.create(&store, stream, 0, watch("a"));
    hub.create(&store, stream, 1, watch("a"));
    hub.create(
        &store,
        stream,
        0,
        WatchRequest {
            range_end: b("a"),
            ..watch("b")
        },
    );
    let outputs = drain(&mut hub);
    let ids: Vec<(i64, bool)> = outputs
        .iter()
        .map(|o| (o.watch_id, matches!(o.update, WatchUpdate::Created { .. })))
        .collect();
    assert_eq!(
        ids,
        vec![(1, true), (0, true), (2, true), (-1, false), (0, false)]
    );
    assert!(
        matches!(&outputs[3].update, WatchUpdate::Refused { reason } if reason.contains("duplicate watch ID"))
    );
    assert!(
        matches!(&outputs[4].update, WatchUpdate::Refused { reason } if reason.contains("range is empty"))
    );
}

#[test]
fn cancel_answers_and_stops_events_even_when_the_id_is_reused() {
    let mut store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let stream = hub.open_stream();
    hub.create(&store, stream, 5, watch("a"));
    run(&mut store, put("a", "1"));
    hub.advance(&store);
    // Canceled and recreated on "b" before the stream read the event of "a".
    hub.cancel(stream, 5);
    hub.create(&store, stream, 5, watch("b"));
    run(&mut store, put("a", "2"));
    hub.advance(&store);
    let outputs = drain(&mut hub);
    let updates: Vec<&WatchUpdate> = outputs.iter().map(|o| &o.update).collect();
    assert_eq!(
        updates,
        vec![
            &WatchUpdate::Created { revision: 1 },
            &WatchUpdate::Canceled {
                revision: 2,
                compact_revision: 0
            },
            &WatchUpdate::Created { revision: 2 },
        ],
        "the old watch's event is not sent under the new one's id"
    );
}

#[test]
fn a_progress_request_waits_until_every_watcher_of_the_stream_is_synced() {
    let mut store = KvStore::new();
    for round in 0..3 {
        run(&mut store, put("a", &round.to_string()));
    }
    let mut hub = WatchHub::new(&store);
    let stream = hub.open_stream();
    hub.create(
        &store,
        stream,
        0,
        WatchRequest {
            start_revision: 2,
            ..watch("a")
        },
    );
    // The replay cannot be sent: the watcher is behind, so no progress yet.
    hub.flush(|output| !matches!(output.update, WatchUpdate::Events { .. }));
    hub.request_progress(stream);
    assert!(drain(&mut hub).is_empty());
    hub.catch_up(&store);
    let outputs = drain(&mut hub);
    assert_eq!(events_of(&outputs, 0).len(), 3);
    assert_eq!(
        outputs.last().unwrap(),
        &WatchOutput {
            stream,
            watch_id: STREAM_PROGRESS_ID,
            update: WatchUpdate::Progress { revision: 4 }
        }
    );
}

#[test]
fn progress_notify_reports_quiet_watchers_at_each_tick() {
    let mut store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let stream = hub.open_stream();
    hub.create(
        &store,
        stream,
        0,
        WatchRequest {
            progress_notify: true,
            ..watch("a")
        },
    );
    hub.create(&store, stream, 0, watch("a"));
    drain(&mut hub);
    run(&mut store, put("b", "elsewhere"));
    hub.advance(&store);
    hub.progress_tick();
    assert_eq!(
        drain(&mut hub),
        vec![WatchOutput {
            stream,
            watch_id: 0,
            update: WatchUpdate::Progress { revision: 2 }
        }]
    );
    run(&mut store, put("a", "1"));
    hub.advance(&store);
    hub.progress_tick();
    let outputs = drain(&mut hub);
    assert!(
        outputs
            .iter()
            .all(|o| !matches!(o.update, WatchUpdate::Progress { .. })),
        "a watcher sent events since the last tick gets no progress: {outputs:?}"
    );
}

#[test]
fn a_snapshot_past_the_hubs_revision_sends_history_or_cancels() {
    let store = KvStore::new();
    let mut hub = WatchHub::new(&store);
    let stream = hub.open_stream();
    hub.create(&store, stream, 0, watch("a"));
    drain(&mut hub);
    // The replica installs a snapshot taken after writes and a compaction it never saw.
    let mut ahead = store.clone();
    run(&mut ahead, put("a", "1")); // 2
    run(&mut ahead, put("a", "2")); // 3
    run(&mut ahead, compact(3));
    run(&mut ahead, put("a", "3")); // 4
    hub.advance(&ahead);
    hub.catch_up(&ahead);
    let outputs = drain(&mut hub);
    assert_eq!(
        outputs.last().unwrap().update,
        WatchUpdate::Canceled {
            revision: 4,
            compact_revision: 3
        },
        "revision 2 is gone: {outputs:?}"
    );
}

/// The events a watch must get from `from` through `through`, from the changes recorded at
/// each revision as it was applied.
fn expected(
    recorded: &BTreeMap<i64, Vec<Change>>,
    request: &WatchRequest,
    from: i64,
    through: i64,
) -> Vec<WatchEvent> {
    if from > through {
        return Vec::new();
    }
    recorded
        .range(from..=through)
        .flat_map(|(revision, changes)| {
            changes.iter().filter_map(move |(key, after, before)| {
                if !key_in_range(&request.key, &request.range_end, key) {
                    return None;
                }
                let event = WatchEvent {
                    kind: if after.is_some() {
                        EventKind::Put
                    } else {
                        EventKind::Delete
                    },
                    kv: after.clone().unwrap_or(KeyValue {
                        key: key.clone(),
                        value: Bytes::new(),
                        create_revision: 0,
                        mod_revision: *revision,
                        version: 0,
                        lease: 0,
                    }),
                    prev_kv: if request.prev_kv {
                        before.clone()
                    } else {
                        None
                    },
                };
                let filtered = match event.kind {
                    EventKind::Put => request.no_put,
                    EventKind::Delete => request.no_delete,
                };
                (!filtered).then_some(event)
            })
        })
        .collect()
}

/// The events outside the compacted revisions; at those, a watcher caught up from exactly
/// there gets the kept puts without `prev_kv` (each checked against the recorded changes).
fn without(events: &[WatchEvent], compactions: &[i64]) -> Vec<WatchEvent> {
    events
        .iter()
        .filter(|e| !compactions.contains(&e.revision()))
        .cloned()
        .collect()
}

#[derive(Clone, Debug)]
enum Step {
    Write(u8, u8),
    Delete(u8),
    Txn(u8, u8),
    Compact(u8),
    Watch {
        key: u8,
        range: bool,
        back: u8,
        prev_kv: bool,
        filter: u8,
    },
    Flush {
        refuse_one_in: u8,
    },
    CatchUp,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..4, any::<u8>()).prop_map(|(k, v)| Step::Write(k, v)),
        1 => (0u8..4).prop_map(Step::Delete),
        1 => (0u8..4, 0u8..4).prop_map(|(a, c)| Step::Txn(a, c)),
        1 => (0u8..20).prop_map(Step::Compact),
        2 => (0u8..4, any::<bool>(), 0u8..12, any::<bool>(), 0u8..3).prop_map(
            |(key, range, back, prev_kv, filter)| Step::Watch { key, range, back, prev_kv, filter }
        ),
        3 => (0u8..4).prop_map(|refuse_one_in| Step::Flush { refuse_one_in }),
        1 => Just(Step::CatchUp),
    ]
}

fn key(k: u8) -> String {
    format!("k{k}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every watch gets exactly the recorded events from its start, in order, each
    /// revision's in one response, whatever the streams refuse — or is canceled with the
    /// compacted revision when what it needs is gone.
    #[test]
    fn watchers_get_exactly_the_history_whatever_the_streams_refuse(
        steps in proptest::collection::vec(step(), 1..120),
        seed in any::<u64>(),
    ) {
        let mut store = KvStore::new();
        let mut hub = WatchHub::new(&store);
        let mut recorded = BTreeMap::new();
        let mut compactions = Vec::new();
        let mut rng = seed;
        let mut watches: Vec<(StreamId, WatchRequest, i64)> = Vec::new();
        let mut received: BTreeMap<StreamId, Vec<WatchOutput>> = BTreeMap::new();
        for step in steps {
            let before = store.revision();
            match step {
                Step::Write(k, v) => { run(&mut store, put(&key(k), &v.to_string())); }
                Step::Delete(k) => { run(&mut store, delete(&key(k))); }
                Step::Txn(a, c) => {
                    run(&mut store, Op::Txn(TxnRequest {
                        compare: Vec::new(),
                        success: vec![put(&key(a), "t"), delete(&key((a + 1 + c % 3) % 4))],
                        failure: Vec::new(),
                    }));
                }
                Step::Compact(back) => {
                    let at = store.revision() - i64::from(back);
                    if at > store.compacted_revision() && at >= 2 {
                        compactions.push(at);
                        run(&mut store, compact(at));
                    }
                }
                Step::Watch { key: k, range, back, prev_kv, filter } => {
                    let stream = hub.open_stream();
                    let request = WatchRequest {
                        key: b(&key(k)),
                        range_end: if range { b("k9") } else { Bytes::new() },
                        start_revision: if back == 0 { 0 } else { (store.revision() + 1 - i64::from(back)).max(1) },
                        prev_kv,
                        no_put: filter == 1,
                        no_delete: filter == 2,
                        progress_notify: false,
                    };
                    let start = if request.start_revision == 0 { hub.revision().max(store.revision()) + 1 } else { request.start_revision };
                    hub.create(&store, stream, 0, request.clone());
                    watches.push((stream, request, start));
                }
                Step::Flush { refuse_one_in } => {
                    hub.advance(&store);
                    hub.flush(|output| {
                        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let refuse = refuse_one_in > 0 && (rng >> 33) % u64::from(refuse_one_in) == 0;
                        if !refuse {
                            received.entry(output.stream).or_default().push(output.clone());
                        }
                        !refuse
                    });
                }
                Step::CatchUp => hub.catch_up(&store),
            }
            for revision in before + 1..=store.revision() {
                recorded.insert(revision, store.changes_at(revision));
            }
        }
        // Everyone reads now: catch up until nothing is behind.
        for _ in 0..200 {
            hub.catch_up(&store);
            hub.flush(|output| {
                received.entry(output.stream).or_default().push(output.clone());
                true
            });
            if hub.unsynced() == 0 && !hub.has_output() {
                break;
            }
        }
        prop_assert_eq!(hub.unsynced(), 0);
        for (stream, request, start) in watches {
            let outputs = received.remove(&stream).unwrap_or_default();
            prop_assert!(matches!(outputs.first().map(|o| &o.update), Some(WatchUpdate::Created { .. })), "{:?}", outputs);
            let mut events = Vec::new();
            let mut through = start - 1;
            let mut canceled = None;
            for output in &outputs[1..] {
                prop_assert!(canceled.is_none(), "nothing after a cancel: {:?}", outputs);
                match &output.update {
                    WatchUpdate::Events { revision, events: batch } => {
                        prop_assert!(!batch.is_empty());
                        // Atomic: a response never ends inside a revision — the next one
                        // starts above the last revision this one covered.
                        prop_assert!(batch[0].revision() > through, "{:?}", outputs);
                        prop_assert!(*revision >= batch.last().unwrap().revision());
                        through = *revision;
                        events.extend(batch.iter().cloned());
                    }
                    WatchUpdate::Canceled { compact_revision, .. } => canceled = Some(*compact_revision),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            for event in events.iter().filter(|e| compactions.contains(&e.revision())) {
                // Sent live before the compaction, or the puts it kept.
                let recorded_there = recorded[&event.revision()].iter().any(|(key, after, _)| {
                    *key == event.kv.key
                        && match event.kind {
                            EventKind::Put => after.as_ref() == Some(&event.kv),
                            EventKind::Delete => after.is_none(),
                        }
                });
                prop_assert!(recorded_there, "{:?}", event);
            }
            match canceled {
                Some(compacted) => {
                    // Canceled only when the revision it needed next was compacted.
                    prop_assert!(through + 1 < compacted, "{:?}", outputs);
                    let want = expected(&recorded, &request, start, through);
                    prop_assert_eq!(without(&events, &compactions), without(&want, &compactions));
                }
                None => {
                    // Caught up from exactly a compacted revision: only that revision's kept
                    // puts, without prev_kv (compared below), then everything.
                    let want = expected(&recorded, &request, start, store.revision());
                    prop_assert_eq!(without(&events, &compactions), without(&want, &compactions));
                }
            }
        }
    }
}
