//! Write-ahead log scenarios: round trip, torn tails, corruption, rotation, compaction.

mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use synod_core::{Ballot, DurableState, PersistOp};
use synod_storage::{StorageError, SyncMode, Wal, WalOptions};

#[test]
fn reopened_log_equals_applying_every_appended_request_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(60);
    {
        let (mut wal, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("open");
        assert_eq!(recovered, DurableState::default());
        for batch in history.chunks(7) {
            wal.append(batch).expect("append");
        }
        assert_eq!(wal.state(), &replay(&history));
        assert_eq!(wal.last_persist_id(), 60);
    }
    let (wal, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(recovered, replay(&history));
    assert_eq!(wal.state(), &recovered);
    assert_eq!(wal.last_persist_id(), 60);
    assert_eq!(wal.recovery_report().truncated, None);
    assert_eq!(wal.recovery_report().records, 60);
}

#[test]
fn commit_marks_appended_alone_are_written_and_recovered() {
    // Requests of commit marks only skip the fdatasync (`PersistRequest::needs_sync`),
    // but they are still written: a clean reopen finds them, in order.
    let dir = tempfile::tempdir().expect("tempdir");
    let accept = accept_request(1, 1, Ballot::new(1, 1), 0);
    let commit_only = synod_core::PersistRequest {
        id: 2,
        ops: vec![PersistOp::Commit(1)],
    };
    assert!(accept.needs_sync());
    assert!(!commit_only.needs_sync());
    {
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
        wal.append(std::slice::from_ref(&accept)).expect("accept");
        wal.append(std::slice::from_ref(&commit_only))
            .expect("commit mark");
    }
    let (wal, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(recovered.commit_index, 1);
    assert!(recovered.entries.contains_key(&1));
    assert_eq!(wal.last_persist_id(), 2);
}

#[test]
fn commit_marks_ending_a_segment_are_sealed_with_it() {
    // With tiny segments every append rotates, so an unsynced commit mark is always the
    // last record of a segment that `rotate` seals (with a sync of its own).
    let dir = tempfile::tempdir().expect("tempdir");
    // Smaller than a segment header and one record: every append rotates first.
    let options = WalOptions {
        segment_bytes: 33,
        sync: SyncMode::Fsync,
    };
    let mut history = Vec::new();
    for slot in 1..=4u64 {
        history.push(accept_request(2 * slot - 1, slot, Ballot::new(1, 1), 0));
        history.push(synod_core::PersistRequest {
            id: 2 * slot,
            ops: vec![PersistOp::Commit(slot)],
        });
    }
    {
        let (mut wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
        for request in &history {
            wal.append(std::slice::from_ref(request)).expect("append");
        }
    }
    let segments = segment_files(dir.path()).len();
    assert!(segments >= 8, "{segments} segments");
    let (wal, recovered) = Wal::open(dir.path(), options).expect("reopen");
    assert_eq!(recovered, replay(&history));
    assert_eq!(recovered.commit_index, 4);
    assert_eq!(wal.recovery_report().truncated, None);
}

#[test]
fn empty_append_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), fast_options(1 << 20)).expect("open");
    let before = wal.disk_bytes();
    wal.append(&[]).expect("empty append");
    assert_eq!(wal.disk_bytes(), before);
    assert_eq!(wal.next_seq(), 1);
}

/// Builds a one-segment log of `history` and returns the byte offset where each record starts.
fn write_log_recording_offsets(
    dir: &std::path::Path,
    history: &[synod_core::PersistRequest],
) -> Vec<u64> {
    let (mut wal, _) = Wal::open(dir, fast_options(1 << 30)).expect("open");
    let mut offsets = Vec::new();
    for request in history {
        offsets.push(wal.log_bytes());
        wal.append(std::slice::from_ref(request)).expect("append");
    }
    offsets.push(wal.log_bytes());
    offsets
}

#[test]
fn torn_last_record_is_cut_at_every_byte_offset_and_appends_continue() {
    let original = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(5);
    let offsets = write_log_recording_offsets(original.path(), &history);
    let segment = segment_files(original.path()).remove(0);
    let (last_start, end) = (offsets[4], offsets[5]);
    let scratch = tempfile::tempdir().expect("tempdir");
    let copy = scratch.path().join("copy");
    for cut in last_start..end {
        copy_dir(original.path(), &copy);
        let copied_segment = copy.join(segment.file_name().expect("name"));
        OpenOptions::new()
            .write(true)
            .open(&copied_segment)
            .and_then(|file| file.set_len(cut))
            .expect("truncate");

        let (mut wal, recovered) = Wal::open(&copy, fast_options(1 << 30)).expect("open torn log");
        assert_eq!(recovered, replay(&history[..4]), "cut at {cut}");
        let truncated = wal.recovery_report().truncated.clone();
        if cut == last_start {
            assert_eq!(truncated, None, "a clean cut between records is no tear");
        } else {
            let truncated = truncated.expect("torn tail reported");
            assert_eq!(truncated.offset, last_start);
            assert_eq!(truncated.bytes_cut, cut - last_start);
            assert_eq!(truncated.file, copied_segment);
        }
        assert_eq!(
            fs::metadata(&copied_segment).expect("stat").len(),
            last_start
        );

        let replacement = accept_request(99, 77, Ballot::new(9, 9), 0);
        wal.append(std::slice::from_ref(&replacement))
            .expect("append after cut");
        drop(wal);
        let (_, reopened) = Wal::open(&copy, fast_options(1 << 30)).expect("reopen");
        let mut expected = history[..4].to_vec();
        expected.push(replacement);
        assert_eq!(reopened, replay(&expected), "cut at {cut}");
    }
}

#[test]
fn zeroed_preallocation_after_the_last_record_is_the_clean_end_of_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(3);
    let offsets = write_log_recording_offsets(dir.path(), &history);
    let segment = segment_files(dir.path()).remove(0);
    let file_len = fs::metadata(&segment).expect("stat").len();
    assert!(file_len > offsets[3], "the active segment is preallocated");
    let (mut wal, recovered) = Wal::open(dir.path(), fast_options(1 << 30)).expect("open");
    assert_eq!(recovered, replay(&history));
    assert_eq!(wal.recovery_report().truncated, None);
    assert_eq!(wal.log_bytes(), offsets[3]);
    assert_eq!(wal.disk_bytes(), file_len);
    // The next record goes right after the last one, not after the zeros.
    let more = accept_request(4, 4, Ballot::new(1, 1), 0);
    wal.append(std::slice::from_ref(&more)).expect("append");
    drop(wal);
    let (_, reopened) = Wal::open(dir.path(), fast_options(1 << 30)).expect("reopen");
    let mut expected = history.clone();
    expected.push(more);
    assert_eq!(reopened, replay(&expected));
}

#[test]
fn torn_record_followed_by_preallocated_zeros_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(4);
    let offsets = write_log_recording_offsets(dir.path(), &history);
    let segment = segment_files(dir.path()).remove(0);
    // The last record's second half never reached the disk: zeros instead.
    let mut file = OpenOptions::new().write(true).open(&segment).expect("open");
    let middle = (offsets[3] + offsets[4]) / 2;
    file.seek(SeekFrom::Start(middle)).expect("seek");
    file.write_all(&vec![0u8; (offsets[4] - middle) as usize])
        .expect("zeros");
    drop(file);
    let (wal, recovered) = Wal::open(dir.path(), fast_options(1 << 30)).expect("open");
    assert_eq!(recovered, replay(&history[..3]));
    assert_eq!(
        wal.recovery_report()
            .truncated
            .as_ref()
            .map(|cut| cut.offset),
        Some(offsets[3])
    );
}

#[test]
fn flipped_byte_in_an_earlier_record_is_corruption_naming_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(6);
    let offsets = write_log_recording_offsets(dir.path(), &history);
    let segment = segment_files(dir.path()).remove(0);
    let (start, end) = (offsets[2], offsets[3]);
    let middle = (start + end) / 2;
    let mut bytes = fs::read(&segment).expect("read");
    bytes[middle as usize] ^= 0x40;
    fs::write(&segment, &bytes).expect("write");

    match Wal::open(dir.path(), fast_options(1 << 30)) {
        Err(StorageError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, segment);
            assert_eq!(offset, start, "offset of the damaged record ({reason})");
            let message = StorageError::Corrupt {
                file,
                offset,
                reason,
            }
            .to_string();
            assert!(
                message.contains(&segment.display().to_string()),
                "{message}"
            );
            assert!(message.contains(&format!("offset {start}")), "{message}");
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
        Ok(_) => panic!("a damaged record before valid ones must not open"),
    }
    // Nothing was truncated: the evidence stays on disk.
    assert_eq!(fs::read(&segment).expect("read"), bytes);
}

#[test]
fn damaged_length_field_before_valid_records_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(4);
    let offsets = write_log_recording_offsets(dir.path(), &history);
    let segment = segment_files(dir.path()).remove(0);
    let mut file = OpenOptions::new().write(true).open(&segment).expect("open");
    file.seek(SeekFrom::Start(offsets[1] + 2)).expect("seek");
    file.write_all(&[0x7F]).expect("damage length");
    drop(file);
    match Wal::open(dir.path(), fast_options(1 << 30)) {
        Err(StorageError::Corrupt { file, offset, .. }) => {
            assert_eq!((file, offset), (segment, offsets[1]));
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, state)| state)),
    }
}

#[test]
fn log_rotates_into_segments_named_by_their_first_sequence_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(300);
    let (mut wal, _) = Wal::open(dir.path(), fast_options(1024)).expect("open");
    for batch in history.chunks(3) {
        wal.append(batch).expect("append");
    }
    assert!(wal.segment_count() > 5, "{} segments", wal.segment_count());
    let files = segment_files(dir.path());
    assert_eq!(files, wal.segment_paths());
    for (path, first_seq) in files.iter().zip(wal.segment_first_seqs()) {
        assert_eq!(
            path.file_name().and_then(|name| name.to_str()),
            Some(format!("{first_seq:020}.wal").as_str())
        );
    }
    assert_eq!(wal.disk_bytes(), dir_bytes(dir.path()));
    drop(wal);
    let (wal, recovered) = Wal::open(dir.path(), fast_options(1024)).expect("reopen");
    assert_eq!(recovered, replay(&history));
    assert_eq!(wal.recovery_report().segments, files.len());
}

#[test]
fn damaged_tail_of_a_sealed_segment_is_corruption_not_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), fast_options(512)).expect("open");
    for batch in mixed_history(40).chunks(2) {
        wal.append(batch).expect("append");
    }
    drop(wal);
    let first = segment_files(dir.path()).remove(0);
    let len = fs::metadata(&first).expect("stat").len();
    OpenOptions::new()
        .write(true)
        .open(&first)
        .and_then(|file| file.set_len(len - 3))
        .expect("truncate");
    match Wal::open(dir.path(), fast_options(512)) {
        Err(StorageError::Corrupt { file, .. }) => assert_eq!(file, first),
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, state)| state)),
    }
}

#[test]
fn missing_middle_segment_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), fast_options(512)).expect("open");
    for batch in mixed_history(40).chunks(2) {
        wal.append(batch).expect("append");
    }
    drop(wal);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    fs::remove_file(&files[1]).expect("remove");
    match Wal::open(dir.path(), fast_options(512)) {
        Err(StorageError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!((file, offset), (files[2].clone(), 0), "{reason}");
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, state)| state)),
    }
}

#[test]
fn segment_torn_while_being_created_is_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(10);
    let (mut wal, _) = Wal::open(dir.path(), fast_options(1 << 20)).expect("open");
    wal.append(&history).expect("append");
    let next_seq = wal.next_seq();
    let used = wal.log_bytes();
    drop(wal);
    // Rotation seals the old segment (cuts its preallocation), then creates the next one;
    // the crash came while the new header was being written.
    let sealed = segment_files(dir.path()).remove(0);
    OpenOptions::new()
        .write(true)
        .open(&sealed)
        .and_then(|file| file.set_len(used))
        .expect("seal");
    let torn = dir.path().join(format!("{next_seq:020}.wal"));
    fs::write(&torn, b"SYNODW").expect("partial header");
    let (mut wal, recovered) = Wal::open(dir.path(), fast_options(1 << 20)).expect("open");
    assert_eq!(recovered, replay(&history));
    assert_eq!(
        wal.recovery_report()
            .truncated
            .as_ref()
            .map(|cut| cut.file.clone()),
        Some(torn)
    );
    let more = accept_request(11, 11, Ballot::new(1, 1), 0);
    wal.append(std::slice::from_ref(&more)).expect("append");
    drop(wal);
    let (_, reopened) = Wal::open(dir.path(), fast_options(1 << 20)).expect("reopen");
    let mut expected = history.clone();
    expected.push(more);
    assert_eq!(reopened, replay(&expected));
}

#[test]
fn compaction_keeps_disk_bounded_under_steady_appends_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = fast_options(4096);
    let (mut wal, _) = Wal::open(dir.path(), options.clone()).expect("open");
    let mut model = DurableState::default();
    let ballot = Ballot::new(3, 1);
    let mut largest_disk_bytes = 0;
    for id in 1..=4000u64 {
        let request = accept_request(id, id, ballot, id.saturating_sub(1));
        model.apply_all(&request.ops);
        wal.append(std::slice::from_ref(&request)).expect("append");
        if id % 100 == 0 {
            let through = id - 20;
            wal.compact(through).expect("compact");
            model.apply(&PersistOp::Snapshot { slot: through });
            assert_eq!(wal.disk_bytes(), dir_bytes(dir.path()));
        }
        largest_disk_bytes = largest_disk_bytes.max(wal.disk_bytes());
    }
    // Without compaction the log would hold ~4000 records (> 300 KiB).
    assert!(
        largest_disk_bytes < 24 * 1024,
        "disk grew to {largest_disk_bytes} bytes"
    );
    assert_eq!(wal.state(), &model);
    assert!(model.entries.len() < 150);
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), options).expect("reopen");
    assert_eq!(recovered, model);
    assert_eq!(recovered.snapshot_slot, 3980);
}

#[test]
fn segments_left_by_an_interrupted_compaction_are_discarded_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(50);
    let (mut wal, _) = Wal::open(dir.path(), fast_options(512)).expect("open");
    wal.append(&history).expect("append");
    let saved = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), saved.path());
    wal.compact(30).expect("compact");
    let expected = wal.state().clone();
    drop(wal);
    // The crash came after the checkpoint was durable but before old segments were gone.
    for old in segment_files(saved.path()) {
        fs::copy(&old, dir.path().join(old.file_name().expect("name"))).expect("restore");
    }
    let (wal, recovered) = Wal::open(dir.path(), fast_options(512)).expect("open");
    assert_eq!(recovered, expected);
    assert!(!wal.recovery_report().discarded_segments.is_empty());
    assert_eq!(segment_files(dir.path()).len(), 1);
}

#[test]
fn compacting_twice_in_a_row_reuses_the_empty_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(20);
    let (mut wal, _) = Wal::open(
        dir.path(),
        WalOptions {
            segment_bytes: 1 << 20,
            sync: SyncMode::Fsync,
        },
    )
    .expect("open");
    wal.append(&history).expect("append");
    wal.compact(5).expect("first compaction");
    wal.compact(9).expect("second compaction");
    let mut expected = replay(&history);
    expected.apply(&PersistOp::Snapshot { slot: 9 });
    assert_eq!(wal.state(), &expected);
    drop(wal);
    let (_, recovered) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
    assert_eq!(recovered, expected);
}

#[test]
fn log_without_its_first_segment_or_a_checkpoint_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), fast_options(512)).expect("open");
    for batch in mixed_history(40).chunks(2) {
        wal.append(batch).expect("append");
    }
    drop(wal);
    let files = segment_files(dir.path());
    assert!(files.len() >= 2);
    fs::remove_file(&files[0]).expect("remove");
    assert!(matches!(
        Wal::open(dir.path(), fast_options(512)),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn record_with_an_unexpected_sequence_number_is_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), fast_options(1 << 20)).expect("open");
    wal.append(&mixed_history(3)).expect("append");
    let used = wal.log_bytes() as usize;
    drop(wal);
    // Splice a valid record (a copy of the first) after the third: its seq is 1, not 4.
    let segment = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&segment).expect("read");
    bytes.truncate(used);
    let first_record_len = {
        let len = u32::from_le_bytes(bytes[32..36].try_into().expect("4 bytes")) as usize;
        20 + len
    };
    let copy = bytes[32..32 + first_record_len].to_vec();
    let spliced_at = bytes.len() as u64;
    bytes.extend_from_slice(&copy);
    fs::write(&segment, &bytes).expect("write");
    match Wal::open(dir.path(), fast_options(1 << 20)) {
        Err(StorageError::Corrupt { offset, .. }) => assert_eq!(offset, spliced_at),
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, state)| state)),
    }
}
