//! Write-ahead log scenarios: round trip, torn tails, corruption, rotation, compaction.

mod common;

use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use synod_core::{Ballot, DurableState, PersistOp};
use synod_storage::{StorageError, SyncMode, Wal, WalIdentity, WalOptions};

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
        ..WalOptions::default()
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

/// What a crash during an append leaves: the file keeps its (preallocated) length and
/// only a prefix of the last record's bytes reached it; zeros stand for the rest.
fn tear_after(segment: &std::path::Path, cut: u64, end: u64) {
    let mut file = OpenOptions::new().write(true).open(segment).expect("open");
    file.seek(SeekFrom::Start(cut)).expect("seek");
    file.write_all(&vec![0u8; (end - cut) as usize])
        .expect("zeros");
}

#[test]
fn torn_last_record_is_cut_at_every_byte_offset_and_appends_continue() {
    let original = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(5);
    let offsets = write_log_recording_offsets(original.path(), &history);
    let segment = segment_files(original.path()).remove(0);
    let file_len = fs::metadata(&segment).expect("stat").len();
    let (last_start, end) = (offsets[4], offsets[5]);
    let scratch = tempfile::tempdir().expect("tempdir");
    let copy = scratch.path().join("copy");
    for cut in last_start..end {
        copy_dir(original.path(), &copy);
        let copied_segment = copy.join(segment.file_name().expect("name"));
        tear_after(&copied_segment, cut, end);

        let (mut wal, recovered) = Wal::open(&copy, fast_options(1 << 30)).expect("open torn log");
        assert_eq!(recovered, replay(&history[..4]), "cut at {cut}");
        match wal.recovery_report().truncated.clone() {
            // The torn prefix may itself end in zero bytes: that is the clean end.
            None => assert!(
                fs::read(&copied_segment).expect("read")[last_start as usize..]
                    .iter()
                    .all(|byte| *byte == 0)
            ),
            Some(truncated) => {
                assert_eq!(truncated.offset, last_start);
                assert!(truncated.bytes_cut <= cut - last_start);
                assert_eq!(truncated.file, copied_segment);
            }
        }
        // The torn bytes are zeroed, the preallocated length kept.
        let bytes = fs::read(&copied_segment).expect("read");
        assert_eq!(bytes.len() as u64, file_len);
        assert!(bytes[last_start as usize..].iter().all(|byte| *byte == 0));

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
fn a_log_cut_short_of_its_preallocation_is_refused_not_taken_for_a_torn_tail() {
    // "A WAL cut in half": before format 2 this opened as "a torn tail of 24 bytes",
    // silently losing acknowledged records.
    let original = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(6);
    let offsets = write_log_recording_offsets(original.path(), &history);
    let segment = segment_files(original.path()).remove(0);
    let scratch = tempfile::tempdir().expect("tempdir");
    let copy = scratch.path().join("copy");
    let middle = (offsets[3] + offsets[4]) / 2;
    // Cut inside a record, and cut exactly between two records.
    for cut in [middle, offsets[4], offsets[6]] {
        copy_dir(original.path(), &copy);
        let copied_segment = copy.join(segment.file_name().expect("name"));
        let before = fs::read(&copied_segment).expect("read");
        OpenOptions::new()
            .write(true)
            .open(&copied_segment)
            .and_then(|file| file.set_len(cut))
            .expect("truncate");
        let cut_bytes = fs::read(&copied_segment).expect("read");
        match Wal::open(&copy, fast_options(1 << 30)) {
            Err(error @ StorageError::TailCut { .. }) => {
                let message = error.to_string();
                assert!(
                    message.contains(&copied_segment.display().to_string()),
                    "{message}"
                );
                assert!(message.contains("docs/operations.md"), "{message}");
            }
            Err(other) => panic!("cut at {cut}: expected TailCut, got {other}"),
            Ok(_) => panic!("cut at {cut} of {} bytes opened", before.len()),
        }
        // Nothing was repaired: the evidence stays on disk.
        assert_eq!(fs::read(&copied_segment).expect("read"), cut_bytes);
    }
}

#[test]
fn a_torn_tail_repaired_then_crashed_again_still_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(4);
    let offsets = write_log_recording_offsets(dir.path(), &history);
    let segment = segment_files(dir.path()).remove(0);
    let mut bytes = fs::read(&segment).expect("read");
    bytes[offsets[3] as usize + 1] ^= 0xFF;
    fs::write(&segment, &bytes).expect("tear");
    for _ in 0..2 {
        let (wal, recovered) = Wal::open(dir.path(), fast_options(1 << 30)).expect("open");
        assert_eq!(recovered, replay(&history[..3]));
        drop(wal);
    }
}

#[test]
fn a_log_of_another_member_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mine = WalOptions {
        identity: WalIdentity {
            cluster_id: 0xc1,
            node_id: 1,
        },
        ..fast_options(512)
    };
    let (mut wal, _) = Wal::open(dir.path(), mine.clone()).expect("open");
    for batch in mixed_history(20).chunks(2) {
        wal.append(batch).expect("append");
    }
    drop(wal);
    let before: Vec<Vec<u8>> = segment_files(dir.path())
        .iter()
        .map(|path| fs::read(path).expect("read"))
        .collect();
    for other in [
        WalIdentity {
            cluster_id: 0xc1,
            node_id: 2,
        },
        WalIdentity {
            cluster_id: 0xc2,
            node_id: 1,
        },
    ] {
        let theirs = WalOptions {
            identity: other,
            ..mine.clone()
        };
        match Wal::open(dir.path(), theirs) {
            Err(error @ StorageError::ForeignLog { .. }) => {
                let message = error.to_string();
                assert!(
                    message.contains("node 1 of cluster 00000000000000c1"),
                    "{message}"
                );
                assert!(message.contains(&format!("{other}")), "{message}");
            }
            Err(other) => panic!("expected ForeignLog, got {other}"),
            Ok(_) => panic!("a log of another member opened"),
        }
    }
    let after: Vec<Vec<u8>> = segment_files(dir.path())
        .iter()
        .map(|path| fs::read(path).expect("read"))
        .collect();
    assert_eq!(before, after);
    Wal::open(dir.path(), mine).expect("its own member opens it");
}

#[test]
fn a_log_of_the_first_format_is_refused_with_its_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A version-1 segment: 32-byte header, no identity, one record.
    let mut header = [0u8; 32];
    header[0..8].copy_from_slice(b"SYNODWAL");
    header[8..12].copy_from_slice(&1u32.to_le_bytes());
    header[16..24].copy_from_slice(&1u64.to_le_bytes());
    let crc = crc32c_of(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    let path = dir.path().join("00000000000000000001.wal");
    fs::write(&path, header).expect("write");
    match Wal::open(dir.path(), fast_options(1 << 20)) {
        Err(error @ StorageError::UnsupportedFormat { version: 1, .. }) => {
            let message = error.to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        Err(other) => panic!("expected UnsupportedFormat, got {other}"),
        Ok(_) => panic!("a version-1 log opened"),
    }
    assert_eq!(fs::read(&path).expect("read"), header);
}

/// crc32c (Castagnoli), bitwise: enough for one test header.
fn crc32c_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn a_sealed_segment_whose_preallocation_was_not_yet_cut_is_accepted() {
    // Rotation creates the next segment before it cuts the old one's preallocation;
    // a crash in between leaves zeros at the end of a sealed segment.
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(40);
    let (mut wal, _) = Wal::open(dir.path(), fast_options(512)).expect("open");
    for batch in history.chunks(2) {
        wal.append(batch).expect("append");
    }
    drop(wal);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let sealed = &files[0];
    let len = fs::metadata(sealed).expect("stat").len();
    OpenOptions::new()
        .write(true)
        .open(sealed)
        .and_then(|file| file.set_len(len.div_ceil(4096) * 4096 + 4096))
        .expect("zeros after the last record");
    let (_, recovered) = Wal::open(dir.path(), fast_options(512)).expect("open");
    assert_eq!(recovered, replay(&history));
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

/// The group-commit thread writes the checkpoint and leaves the old segments to another
/// thread: until they are removed, the log keeps appending and a reopen finds the same
/// state (the leftovers are discarded there, as after a crash).
#[test]
fn a_checkpoint_leaves_the_superseded_segments_for_the_caller_to_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(50);
    let (mut wal, _) = Wal::open(dir.path(), fast_options(512)).expect("open");
    for batch in history[..40].chunks(2) {
        wal.append(batch).expect("append");
    }
    let before = segment_files(dir.path()).len();
    assert!(before > 2, "{before} segments");
    let superseded = wal.checkpoint(30).expect("checkpoint");
    // The active segment had records: the checkpoint starts a new one, all older go.
    assert_eq!(superseded.len(), before);
    assert_eq!(
        segment_files(dir.path()).len(),
        before + 1,
        "nothing deleted yet"
    );
    let newest = fs::metadata(&segment_files(dir.path())[before]).expect("stat");
    assert_eq!(
        wal.disk_bytes(),
        newest.len(),
        "only the active segment is on the books"
    );
    wal.append(&history[40..])
        .expect("append after the checkpoint");
    let mut expected = replay(&history[..40]);
    expected.apply(&PersistOp::Snapshot { slot: 30 });
    for request in &history[40..] {
        expected.apply_all(&request.ops);
    }
    assert_eq!(wal.state(), &expected);

    superseded.remove().expect("remove");
    let left = segment_files(dir.path());
    assert!(left.len() < before, "{} left of {before}", left.len());
    drop(wal);
    let (wal, recovered) = Wal::open(dir.path(), fast_options(512)).expect("reopen");
    assert_eq!(recovered, expected);
    assert!(wal.recovery_report().discarded_segments.is_empty());
}

#[test]
fn a_checkpoints_superseded_segments_left_on_disk_are_discarded_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let history = mixed_history(50);
    let (mut wal, _) = Wal::open(dir.path(), fast_options(512)).expect("open");
    wal.append(&history).expect("append");
    let superseded = wal.checkpoint(30).expect("checkpoint");
    assert!(!superseded.is_empty());
    let expected = wal.state().clone();
    // The process dies before anyone removes them.
    drop(superseded);
    drop(wal);
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
            ..WalOptions::default()
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
        let len = u32::from_le_bytes(bytes[48..52].try_into().expect("4 bytes")) as usize;
        20 + len
    };
    let copy = bytes[48..48 + first_record_len].to_vec();
    let spliced_at = bytes.len() as u64;
    bytes.extend_from_slice(&copy);
    fs::write(&segment, &bytes).expect("write");
    match Wal::open(dir.path(), fast_options(1 << 20)) {
        Err(StorageError::Corrupt { offset, .. }) => assert_eq!(offset, spliced_at),
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, state)| state)),
    }
}
