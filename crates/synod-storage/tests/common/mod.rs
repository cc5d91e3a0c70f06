//! Helpers shared by the integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use std::path::{Path, PathBuf};
use synod_core::{Ballot, DurableState, Entry, PersistOp, PersistRequest, Value};
use synod_storage::{SyncMode, WalOptions};

/// What a leader at `ballot` persists when it accepts `slot` and learns `commit`.
pub fn accept_request(id: u64, slot: u64, ballot: Ballot, commit: u64) -> PersistRequest {
    PersistRequest {
        id,
        ops: vec![
            PersistOp::Accept(Entry {
                slot,
                ballot,
                value: Value::Commands(vec![Bytes::from(format!("command for slot {slot}"))]),
            }),
            PersistOp::Commit(commit),
        ],
    }
}

/// A varied history: promises, accepts (some superseded), commits, a per-slot promise.
pub fn mixed_history(count: u64) -> Vec<PersistRequest> {
    (1..=count)
        .map(|id| {
            let ops = match id % 4 {
                0 => vec![PersistOp::Promise(Ballot::new(id, 2))],
                1 => vec![PersistOp::Accept(Entry {
                    slot: id,
                    ballot: Ballot::new(id, 1),
                    value: Value::Commands(vec![Bytes::from(vec![id as u8; 40])]),
                })],
                2 => vec![
                    PersistOp::Accept(Entry {
                        slot: id - 1,
                        ballot: Ballot::new(id + 1, 3),
                        value: Value::Noop,
                    }),
                    PersistOp::Commit(id - 1),
                ],
                _ => vec![PersistOp::SlotPromise {
                    slot: id,
                    ballot: Ballot::new(id, 4),
                }],
            };
            PersistRequest { id, ops }
        })
        .collect()
}

pub fn replay(requests: &[PersistRequest]) -> DurableState {
    let mut state = DurableState::default();
    for request in requests {
        state.apply_all(&request.ops);
    }
    state
}

pub fn fast_options(segment_bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes,
        sync: SyncMode::None,
        ..WalOptions::default()
    }
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|item| item.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

pub fn dir_bytes(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|path| std::fs::metadata(path).expect("metadata").len())
        .sum()
}

/// Copies every file of `from` into a fresh `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).expect("create copy dir");
    for item in std::fs::read_dir(from).expect("list dir") {
        let item = item.expect("dir entry");
        std::fs::copy(item.path(), to.join(item.file_name())).expect("copy file");
    }
}
