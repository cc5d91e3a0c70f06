//! Snapshot store: atomic saves, verification, chunked transfer with bounded memory.

use std::fs;
use synod_storage::{SnapshotStore, StorageError};

fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn saved_snapshot_is_the_latest_and_only_the_newest_two_are_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    assert_eq!(store.latest().expect("empty store"), None);
    store.save(10, &image(1000, 1)).expect("save 10");
    store.save(20, &image(2000, 2)).expect("save 20");
    store.save(30, &image(3000, 3)).expect("save 30");
    assert_eq!(store.slots().expect("slots"), vec![20, 30]);
    assert_eq!(store.latest().expect("latest"), Some((30, image(3000, 3))));
    let reopened = SnapshotStore::open(dir.path()).expect("reopen");
    assert_eq!(
        reopened.latest().expect("latest"),
        Some((30, image(3000, 3)))
    );
}

#[test]
fn empty_snapshot_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    store.save(1, &[]).expect("save");
    assert_eq!(store.latest().expect("latest"), Some((1, Vec::new())));
}

#[test]
fn corrupt_snapshot_is_detected_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    store.save(7, &image(5000, 9)).expect("save");
    let path = store.path_of(7);
    let mut bytes = fs::read(&path).expect("read");
    bytes[2500] ^= 0x01;
    fs::write(&path, &bytes).expect("write");
    match store.latest() {
        Err(StorageError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, path);
            assert_eq!(offset, 32, "data starts after the 32-byte header");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        store.reader(7, 100),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn truncated_snapshot_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    store.save(7, &image(5000, 9)).expect("save");
    let path = store.path_of(7);
    let bytes = fs::read(&path).expect("read");
    fs::write(&path, &bytes[..bytes.len() - 100]).expect("write");
    assert!(matches!(store.latest(), Err(StorageError::Corrupt { .. })));
}

/// A leader's snapshot store and a follower's, each in a directory of its own.
struct LeaderAndFollower {
    leader: SnapshotStore,
    follower: SnapshotStore,
    _leader_dir: tempfile::TempDir,
    follower_dir: tempfile::TempDir,
}

impl LeaderAndFollower {
    fn open() -> LeaderAndFollower {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let follower_dir = tempfile::tempdir().expect("tempdir");
        LeaderAndFollower {
            leader: SnapshotStore::open(leader_dir.path()).expect("open"),
            follower: SnapshotStore::open(follower_dir.path()).expect("open"),
            _leader_dir: leader_dir,
            follower_dir,
        }
    }
}

#[test]
fn lagging_replica_receives_a_snapshot_in_small_chunks() {
    let stores = LeaderAndFollower::open();
    let (leader, follower) = (&stores.leader, &stores.follower);
    let data = image(200_000, 5);
    leader.save(4242, &data).expect("save");

    let reader = leader.reader(4242, 1000).expect("reader");
    assert_eq!(reader.total_bytes(), 200_000 + 48);
    let mut writer = follower.writer(4242).expect("writer");
    let mut chunks = 0;
    for chunk in reader {
        let chunk = chunk.expect("chunk");
        assert!(chunk.len() <= 1000, "chunks stay bounded");
        writer.write_chunk(&chunk).expect("write chunk");
        chunks += 1;
    }
    assert_eq!(chunks, 201);
    writer.finish().expect("verified and installed");
    assert_eq!(follower.latest().expect("latest"), Some((4242, data)));
}

#[test]
fn damaged_transfer_is_rejected_and_leaves_nothing_behind() {
    let stores = LeaderAndFollower::open();
    let (leader, follower) = (&stores.leader, &stores.follower);
    leader.save(9, &image(10_000, 1)).expect("save");
    let mut writer = follower.writer(9).expect("writer");
    for (index, chunk) in leader.reader(9, 333).expect("reader").enumerate() {
        let mut chunk = chunk.expect("chunk");
        if index == 5 {
            chunk[10] ^= 0xFF;
        }
        writer.write_chunk(&chunk).expect("write chunk");
    }
    assert!(matches!(writer.finish(), Err(StorageError::Corrupt { .. })));
    assert_eq!(follower.slots().expect("slots"), Vec::<u64>::new());
    assert_eq!(
        fs::read_dir(stores.follower_dir.path())
            .expect("list")
            .count(),
        0
    );
}

#[test]
fn transfer_of_another_slot_is_rejected() {
    let stores = LeaderAndFollower::open();
    let (leader, follower) = (&stores.leader, &stores.follower);
    leader.save(9, &image(100, 1)).expect("save");
    let mut writer = follower.writer(10).expect("writer");
    for chunk in leader.reader(9, 64).expect("reader") {
        writer.write_chunk(&chunk.expect("chunk")).expect("write");
    }
    assert!(writer.finish().is_err());
    assert_eq!(follower.latest().expect("latest"), None);
}

#[test]
fn unfinished_transfer_is_discarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    store.save(1, &image(100, 1)).expect("save");
    {
        let mut writer = store.writer(2).expect("writer");
        writer.write_chunk(&image(50, 2)).expect("write");
    }
    assert_eq!(store.slots().expect("slots"), vec![1]);
    assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1);
}

#[test]
fn reader_refuses_a_missing_slot_and_a_zero_chunk_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path()).expect("open");
    store.save(3, b"state").expect("save");
    assert!(matches!(
        store.reader(4, 10),
        Err(StorageError::SnapshotMissing { slot: 4, .. })
    ));
    assert!(matches!(
        store.reader(3, 0),
        Err(StorageError::Invalid { .. })
    ));
}

#[test]
fn temporary_files_from_a_crash_are_removed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("00000000000000000005.snap.tmp"), b"half").expect("write");
    fs::write(
        dir.path().join("00000000000000000006.snap.partial"),
        b"half",
    )
    .expect("write");
    fs::write(
        dir.path().join("00000000000000000007.snap.partial.12"),
        b"half",
    )
    .expect("write");
    let store = SnapshotStore::open(dir.path()).expect("open");
    assert_eq!(store.latest().expect("latest"), None);
    assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0);
}

/// A leader that resends its snapshot while the follower is still writing or verifying
/// the first copy: each transfer has its own file, so neither damages the other. (Both
/// once shared `<slot>.snap.partial`: the second truncated the first's file under it —
/// "snapshot data checksum mismatch" — and the first, failing, removed the second's.)
#[test]
fn two_transfers_of_one_slot_at_once_do_not_damage_each_other() {
    let stores = LeaderAndFollower::open();
    let (leader, follower) = (&stores.leader, &stores.follower);
    let data = image(50_000, 7);
    leader.save(20_000, &data).expect("save");
    let chunks: Vec<Vec<u8>> = leader
        .reader(20_000, 4096)
        .expect("reader")
        .map(|chunk| chunk.expect("chunk"))
        .collect();

    // The first copy arrives but for its last chunk; the resend starts meanwhile.
    let mut first = follower.writer(20_000).expect("first writer");
    for chunk in &chunks[..chunks.len() - 1] {
        first.write_chunk(chunk).expect("write");
    }
    let mut second = follower.writer(20_000).expect("second writer");
    for chunk in &chunks[..3] {
        second.write_chunk(chunk).expect("write");
    }
    first
        .write_chunk(chunks.last().expect("chunks"))
        .expect("write");
    first
        .finish()
        .expect("the first copy verifies and installs");
    for chunk in &chunks[3..] {
        second.write_chunk(chunk).expect("write");
    }
    second.finish().expect("so does the second");
    assert_eq!(
        follower.latest().expect("latest"),
        Some((20_000, data.clone()))
    );

    // A copy abandoned half-way removes only its own file.
    let mut abandoned = follower.writer(20_000).expect("writer");
    abandoned.write_chunk(&chunks[0]).expect("write");
    let mut kept = follower.writer(20_000).expect("writer");
    for chunk in &chunks {
        kept.write_chunk(chunk).expect("write");
    }
    drop(abandoned);
    kept.finish().expect("the kept copy installs");
    assert_eq!(follower.latest().expect("latest"), Some((20_000, data)));
    assert_eq!(
        fs::read_dir(stores.follower_dir.path())
            .expect("list")
            .count(),
        1,
        "no partial file is left behind"
    );
}
