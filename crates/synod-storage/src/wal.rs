//! The write-ahead log of an acceptor's durable state.
//!
//! Every `PersistRequest` of the core becomes one checksummed record, appended to the
//! newest segment and made durable with one fdatasync per `append` call (group commit:
//! many requests, one sync). At start-up every record is verified and replayed; a torn
//! tail of the last segment (a write that was never acknowledged) is cut off, while damage
//! anywhere else stops the node. Compaction writes a checkpoint of the remaining state at
//! the start of a fresh segment and deletes the older ones, so disk use stays bounded.

use crate::error::StorageError;
pub use crate::record::WalIdentity;
use crate::record::{
    decode_payload, decode_segment_header, encode_payload, encode_record, encode_segment_header,
    find_valid_record, parse_record, HeaderError, RawRecord, RecordKind, SegmentHeader,
    MAX_RECORD_PAYLOAD_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use synod_core::{DurableState, PersistId, PersistOp, PersistRequest, Slot};

/// Whether appends wait for the disk.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum SyncMode {
    /// fdatasync after every append (and fsync of the directory after creating or
    /// deleting a segment). The only mode that is safe for Paxos.
    Fsync,
    /// No syncs: for tests and benchmarks only. A machine crash loses acknowledged state.
    None,
}

#[derive(Clone, Debug)]
pub struct WalOptions {
    /// A new segment is started once the active one reaches this size.
    pub segment_bytes: u64,
    pub sync: SyncMode,
    /// Written into every segment header; `open` refuses segments of anyone else.
    pub identity: WalIdentity,
}

impl Default for WalOptions {
    fn default() -> WalOptions {
        WalOptions {
            segment_bytes: 64 << 20,
            sync: SyncMode::Fsync,
            identity: WalIdentity::default(),
        }
    }
}

/// The payload of a checkpoint record: replay restarts from it.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    state: DurableState,
    last_persist_id: PersistId,
}

/// What `Wal::open` cut off the end of the log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TruncatedTail {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes_cut: u64,
    pub reason: String,
}

/// What `Wal::open` found and did.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct RecoveryReport {
    /// Segments replayed.
    pub segments: usize,
    /// Records replayed (checkpoints included).
    pub records: u64,
    /// A torn tail that was cut off, if any.
    pub truncated: Option<TruncatedTail>,
    /// Segments older than the newest checkpoint, left behind by an interrupted
    /// compaction and deleted at open.
    pub discarded_segments: Vec<PathBuf>,
}

/// The active segment is extended with real zeros ahead of the write position, in steps
/// of this size (or of the segment size, if smaller), so that most fdatasyncs only flush
/// data: appending past end of file also changes the file size and block map, which makes
/// every fdatasync a journal commit (measured in docs/storage.md).
const PREALLOCATE_STEP_BYTES: u64 = 1 << 20;
static ZEROS: [u8; 64 << 10] = [0u8; 64 << 10];

/// Log segments a checkpoint made obsolete, still on disk (see [`Wal::checkpoint`]).
#[derive(Debug)]
#[must_use = "the segments stay on disk until removed (or until the next open)"]
pub struct Superseded {
    dir: PathBuf,
    paths: Vec<PathBuf>,
    sync: bool,
}

impl Superseded {
    /// How many segment files there are to delete.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Deletes the files, then syncs the directory. Deleting is not atomic, but a crash
    /// or a failed delete midway is harmless: `open` ignores and deletes segments older
    /// than the newest checkpoint. (The log's `disk_bytes` no longer counts them from the
    /// checkpoint on; until 2026-12-02 a failed delete kept the rest on its books.)
    pub fn remove(self) -> Result<(), StorageError> {
        if self.paths.is_empty() {
            return Ok(());
        }
        for path in &self.paths {
            fs::remove_file(path).map_err(|error| StorageError::io(path, error))?;
        }
        if self.sync {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    /// Bytes holding the header and records: where the next record goes.
    used_bytes: u64,
    /// Length of the file: `used_bytes` plus zeroed, preallocated space (active segment
    /// only; sealed segments are cut to `used_bytes`).
    file_bytes: u64,
    records: u64,
    /// From the segment's header: the active segment grows in steps of this size.
    preallocate_step_bytes: u64,
}

pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// Oldest first; the last one is the active segment.
    segments: Vec<Segment>,
    active: File,
    next_seq: u64,
    state: DurableState,
    last_persist_id: PersistId,
    poisoned: bool,
    recovery: RecoveryReport,
    encode_buffer: Vec<u8>,
}

pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// fsync a directory, so that files created, renamed or deleted in it stay so.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|error| StorageError::io(dir, error))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let mut segments = Vec::new();
    let listing = fs::read_dir(dir).map_err(|error| StorageError::io(dir, error))?;
    for item in listing {
        let item = item.map_err(|error| StorageError::io(dir, error))?;
        if let Some(first_seq) = item.file_name().to_str().and_then(parse_segment_file_name) {
            segments.push((first_seq, item.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// True when the segment's first record verifies and is a checkpoint. Reads only that
/// record, so finding the replay start does not read whole segments twice.
fn starts_with_checkpoint(path: &Path) -> Result<bool, StorageError> {
    let mut file = File::open(path).map_err(|error| StorageError::io(path, error))?;
    let mut head = vec![0u8; SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES];
    if read_up_to(&mut file, &mut head).map_err(|error| StorageError::io(path, error))? < head.len()
    {
        return Ok(false);
    }
    if decode_segment_header(&head).is_err() {
        return Ok(false);
    }
    let payload_len = u32::from_le_bytes(
        head[SEGMENT_HEADER_BYTES..SEGMENT_HEADER_BYTES + 4]
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    if payload_len > MAX_RECORD_PAYLOAD_BYTES
        || head[SEGMENT_HEADER_BYTES + 16] != RecordKind::Checkpoint as u8
    {
        return Ok(false);
    }
    let mut record = head[SEGMENT_HEADER_BYTES..].to_vec();
    record.resize(RECORD_HEADER_BYTES + payload_len, 0);
    let read = read_up_to(&mut file, &mut record[RECORD_HEADER_BYTES..])
        .map_err(|error| StorageError::io(path, error))?;
    if read < payload_len {
        return Ok(false);
    }
    Ok(parse_record(&record, 0).is_ok())
}

fn read_up_to(file: &mut File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(filled)
}

/// The active segment grows in steps of this size: its length is the header alone or a
/// multiple of it, which is what lets `open` tell a cut file from a torn write.
fn preallocate_step(segment_bytes: u64) -> u64 {
    PREALLOCATE_STEP_BYTES.min(segment_bytes).max(4096)
}

fn new_segment_header(first_seq: u64, options: &WalOptions) -> SegmentHeader {
    SegmentHeader {
        first_seq,
        identity: options.identity,
        preallocate_step_bytes: preallocate_step(options.segment_bytes),
    }
}

/// Refuses a segment of another member or cluster, or of another format. A damaged
/// header passes here; replay judges it.
fn check_segment_identity(path: &Path, expected: WalIdentity) -> Result<(), StorageError> {
    let mut file = File::open(path).map_err(|error| StorageError::io(path, error))?;
    let mut head = vec![0u8; SEGMENT_HEADER_BYTES];
    let read = read_up_to(&mut file, &mut head).map_err(|error| StorageError::io(path, error))?;
    match decode_segment_header(&head[..read]) {
        Ok(header) if header.identity != expected => Err(StorageError::ForeignLog {
            file: path.to_path_buf(),
            found: header.identity,
            expected,
        }),
        Err(HeaderError::Unsupported { version }) => Err(StorageError::UnsupportedFormat {
            file: path.to_path_buf(),
            version,
        }),
        _ => Ok(()),
    }
}

/// The bytes of the last segment that every acknowledged write had made durable: its
/// length is only ever extended, in whole preallocation steps, and synced before an
/// append is acknowledged. A torn write leaves the file at least this long; records
/// ending beyond it mean the file was cut.
fn durable_length(file_bytes: u64, step: u64) -> u64 {
    let header = SEGMENT_HEADER_BYTES as u64;
    (file_bytes / step * step).max(header)
}

/// The segment's header, checked against its file name. A last segment whose header is
/// torn and which holds no record was being created when the process died: it is
/// started afresh (`bytes` becomes the new header).
fn verified_header(
    path: &Path,
    bytes: &mut Vec<u8>,
    first_seq: u64,
    is_last: bool,
    options: &WalOptions,
    recovery: &mut RecoveryReport,
) -> Result<SegmentHeader, StorageError> {
    match decode_segment_header(bytes) {
        Ok(header) if header.first_seq == first_seq => Ok(header),
        Ok(header) => {
            let reason = format!(
                "segment header says first seq {}, file name says {first_seq}",
                header.first_seq
            );
            Err(StorageError::corrupt(path, 0, reason))
        }
        Err(HeaderError::Unsupported { version }) => Err(StorageError::UnsupportedFormat {
            file: path.to_path_buf(),
            version,
        }),
        Err(HeaderError::Damaged(reason)) => {
            if !is_last || find_valid_record(bytes, 0).is_some() {
                return Err(StorageError::corrupt(path, 0, reason));
            }
            // Nothing in it was ever acknowledged.
            let header = new_segment_header(first_seq, options);
            let encoded = encode_segment_header(&header);
            rewrite_file(path, &encoded, options.sync)?;
            recovery.truncated = Some(TruncatedTail {
                file: path.to_path_buf(),
                offset: 0,
                bytes_cut: bytes.len() as u64,
                reason,
            });
            *bytes = encoded.to_vec();
            Ok(header)
        }
    }
}

/// Replay starts at the newest segment that begins with a checkpoint: anything older is
/// superseded (a compaction was interrupted before deleting it) and is deleted here.
fn discard_superseded(
    dir: &Path,
    found: &mut Vec<(u64, PathBuf)>,
    options: &WalOptions,
    recovery: &mut RecoveryReport,
) -> Result<(), StorageError> {
    let mut start = 0;
    for index in (0..found.len()).rev() {
        if starts_with_checkpoint(&found[index].1)? {
            start = index;
            break;
        }
    }
    if start > 0 {
        for (_, path) in found.drain(..start) {
            fs::remove_file(&path).map_err(|error| StorageError::io(&path, error))?;
            recovery.discarded_segments.push(path);
        }
        if options.sync == SyncMode::Fsync {
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// Where the records of one segment end.
enum SegmentEnd {
    /// At end of file, or where only zeros (unused preallocation) follow.
    Clean(usize),
    /// At a record that does not verify, after which no record starts: a torn write.
    Torn { offset: usize, reason: String },
}

/// What replaying the segments in order has built so far.
#[derive(Default)]
struct Replay {
    state: DurableState,
    last_persist_id: PersistId,
    /// The seq the next segment must start at (`None` before the first segment).
    next_seq: Option<u64>,
    records: u64,
}

impl Replay {
    /// Verifies and replays one segment; repairs a torn tail if it is the last.
    fn segment(
        &mut self,
        first_seq: u64,
        path: PathBuf,
        is_last: bool,
        options: &WalOptions,
        recovery: &mut RecoveryReport,
    ) -> Result<Segment, StorageError> {
        let mut bytes = fs::read(&path).map_err(|error| StorageError::io(&path, error))?;
        let header = verified_header(&path, &mut bytes, first_seq, is_last, options, recovery)?;
        if let Some(expected) = self.next_seq.filter(|expected| *expected != first_seq) {
            return Err(StorageError::corrupt(
                &path,
                0,
                format!(
                    "segment starts at seq {first_seq} but the previous segment ends before seq {expected}: a segment is missing"
                ),
            ));
        }
        let records_before = self.records;
        let end = self.records_of(&path, &bytes, first_seq)?;
        let used = match &end {
            SegmentEnd::Clean(offset) => *offset,
            // Sealed segments were synced whole before the next one was created.
            SegmentEnd::Torn { offset, reason } if !is_last => {
                return Err(StorageError::corrupt(&path, *offset as u64, reason.clone()))
            }
            SegmentEnd::Torn { offset, .. } => *offset,
        };
        let file_bytes = bytes.len() as u64;
        if is_last {
            let durable_bytes = durable_length(file_bytes, header.preallocate_step_bytes);
            if used as u64 > durable_bytes {
                return Err(StorageError::TailCut {
                    file: path,
                    offset: used as u64,
                    file_bytes,
                    durable_bytes,
                });
            }
        }
        if let SegmentEnd::Torn { offset, reason } = end {
            recovery.truncated = Some(cut_torn_tail(&path, &bytes, offset, reason, options.sync)?);
        }
        Ok(Segment {
            first_seq,
            path,
            used_bytes: used as u64,
            file_bytes,
            records: self.records - records_before,
            preallocate_step_bytes: header.preallocate_step_bytes,
        })
    }

    /// Replays the records of one segment; returns where they end.
    fn records_of(
        &mut self,
        path: &Path,
        bytes: &[u8],
        first_seq: u64,
    ) -> Result<SegmentEnd, StorageError> {
        let mut offset = SEGMENT_HEADER_BYTES;
        let mut seq = first_seq;
        let end = loop {
            if offset >= bytes.len() {
                break SegmentEnd::Clean(bytes.len());
            }
            let record = match parse_record(bytes, offset) {
                Ok(record) => record,
                // Preallocated, never written: the clean end of the segment.
                Err(_) if bytes[offset..].iter().all(|byte| *byte == 0) => {
                    break SegmentEnd::Clean(offset)
                }
                // An append that never completed its fdatasync: nothing after `offset`
                // was acknowledged (if the file is as long as it must be; see `segment`).
                Err(reason) if find_valid_record(bytes, offset + 1).is_none() => {
                    break SegmentEnd::Torn { offset, reason }
                }
                Err(reason) => return Err(StorageError::corrupt(path, offset as u64, reason)),
            };
            if record.seq != seq {
                return Err(StorageError::corrupt(
                    path,
                    offset as u64,
                    format!("record has seq {} where {seq} was expected", record.seq),
                ));
            }
            self.apply(path, offset, &record)?;
            // Without a checkpoint the log must begin at its first record.
            if self.next_seq.is_none()
                && seq == first_seq
                && first_seq != 1
                && record.kind_byte != RecordKind::Checkpoint as u8
            {
                return Err(StorageError::corrupt(
                    path,
                    offset as u64,
                    format!("the log begins at seq {first_seq} without a checkpoint: earlier segments are missing"),
                ));
            }
            offset += record.total_bytes;
            seq += 1;
            self.records += 1;
        };
        self.next_seq = Some(seq);
        Ok(end)
    }

    fn apply(
        &mut self,
        path: &Path,
        offset: usize,
        record: &RawRecord,
    ) -> Result<(), StorageError> {
        match RecordKind::from_byte(record.kind_byte) {
            Some(RecordKind::Request) => {
                let request: PersistRequest = decode_payload(record.payload).map_err(|reason| {
                    StorageError::corrupt(
                        path,
                        offset as u64,
                        format!("undecodable persist request: {reason}"),
                    )
                })?;
                self.state.apply_all(&request.ops);
                self.last_persist_id = request.id;
            }
            Some(RecordKind::Checkpoint) => {
                let checkpoint: Checkpoint = decode_payload(record.payload).map_err(|reason| {
                    StorageError::corrupt(
                        path,
                        offset as u64,
                        format!("undecodable checkpoint: {reason}"),
                    )
                })?;
                self.state = checkpoint.state;
                self.last_persist_id = checkpoint.last_persist_id;
            }
            None => {
                return Err(StorageError::corrupt(
                    path,
                    offset as u64,
                    format!("unknown record kind {}", record.kind_byte),
                ))
            }
        }
        Ok(())
    }
}

/// Overwrites a torn tail with zeros (keeping the file's length, so the rule of
/// `durable_length` still holds after a crash right now) and reports what was cut.
fn cut_torn_tail(
    path: &Path,
    bytes: &[u8],
    offset: usize,
    reason: String,
    sync: SyncMode,
) -> Result<TruncatedTail, StorageError> {
    let torn_end = bytes
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(offset, |last| last + 1)
        .max(offset);
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|error| StorageError::io(path, error))?;
    write_zeros(&file, offset as u64, torn_end as u64)
        .map_err(|error| StorageError::io(path, error))?;
    if sync == SyncMode::Fsync {
        file.sync_data()
            .map_err(|error| StorageError::io(path, error))?;
    }
    let cut = TruncatedTail {
        file: path.to_path_buf(),
        offset: offset as u64,
        bytes_cut: (torn_end - offset) as u64,
        reason,
    };
    tracing::warn!(
        file = %cut.file.display(),
        offset = cut.offset,
        bytes = cut.bytes_cut,
        reason = %cut.reason,
        "cut a torn tail of the write-ahead log"
    );
    Ok(cut)
}

impl Wal {
    /// True when `dir` holds a log: at least one segment file that is not empty. A
    /// runtime that knows the node had state refuses to start without one (an acceptor
    /// that lost its log would break the promises it made).
    pub fn holds_log(dir: &Path) -> Result<bool, StorageError> {
        if !dir.exists() {
            return Ok(false);
        }
        for (_, path) in list_segments(dir)? {
            let len = fs::metadata(&path)
                .map_err(|error| StorageError::io(&path, error))?
                .len();
            if len > 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Opens or creates the log in `dir`, verifies every record, repairs a torn tail of
    /// the last segment (reporting what was cut), and returns the recovered state.
    /// Damage anywhere else is `StorageError::Corrupt` naming the file and offset; a log
    /// of another member is `ForeignLog`; a last segment cut short of what was made
    /// durable is `TailCut`. Nothing is changed on disk when open fails that way.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, DurableState), StorageError> {
        let created = !dir.exists();
        fs::create_dir_all(dir).map_err(|error| StorageError::io(dir, error))?;
        if created && options.sync == SyncMode::Fsync {
            // The new directory's own entry must survive a crash too.
            if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let mut found = list_segments(dir)?;
        let mut recovery = RecoveryReport::default();
        if found.is_empty() {
            let (file, segment) = create_segment(dir, 1, &options)?;
            let wal = Wal::assemble(
                dir,
                options,
                vec![segment],
                file,
                1,
                DurableState::default(),
                0,
                recovery,
            );
            return Ok((wal, DurableState::default()));
        }
        // Every segment must be this member's before anything is deleted or repaired.
        for (_, path) in &found {
            check_segment_identity(path, options.identity)?;
        }

        discard_superseded(dir, &mut found, &options, &mut recovery)?;

        let mut replay = Replay::default();
        let mut segments = Vec::with_capacity(found.len());
        let last_index = found.len() - 1;
        for (index, (first_seq, path)) in found.into_iter().enumerate() {
            let segment = replay.segment(
                first_seq,
                path,
                index == last_index,
                &options,
                &mut recovery,
            )?;
            segments.push(segment);
        }
        recovery.segments = segments.len();
        recovery.records = replay.records;

        let active_path = &segments.last().expect("at least one segment").path;
        let active = OpenOptions::new()
            .write(true)
            .open(active_path)
            .map_err(|error| StorageError::io(active_path, error))?;
        let next_seq = replay.next_seq.expect("at least one segment");
        let state = replay.state;
        let wal = Wal::assemble(
            dir,
            options,
            segments,
            active,
            next_seq,
            state.clone(),
            replay.last_persist_id,
            recovery,
        );
        Ok((wal, state))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: &Path,
        options: WalOptions,
        segments: Vec<Segment>,
        active: File,
        next_seq: u64,
        state: DurableState,
        last_persist_id: PersistId,
        recovery: RecoveryReport,
    ) -> Wal {
        Wal {
            dir: dir.to_path_buf(),
            options,
            segments,
            active,
            next_seq,
            state,
            last_persist_id,
            poisoned: false,
            recovery,
            encode_buffer: Vec::new(),
        }
    }

    /// Appends the ops of several persist requests and makes them durable with one
    /// fdatasync. On error nothing may be assumed durable and the log refuses further
    /// writes (an fdatasync that failed once cannot be retried safely).
    pub fn append(&mut self, requests: &[PersistRequest]) -> Result<(), StorageError> {
        self.check_writable()?;
        if requests.is_empty() {
            return Ok(());
        }
        let active = self.segments.last().expect("an active segment");
        if active.records > 0 && active.used_bytes >= self.options.segment_bytes {
            self.rotate()?;
        }
        let mut buffer = std::mem::take(&mut self.encode_buffer);
        buffer.clear();
        for (index, request) in requests.iter().enumerate() {
            let payload = encode_payload(request).map_err(|reason| StorageError::Invalid {
                reason: format!("persist request {} cannot be encoded: {reason}", request.id),
            })?;
            if payload.len() > MAX_RECORD_PAYLOAD_BYTES {
                return Err(StorageError::Invalid {
                    reason: format!(
                        "persist request {} encodes to {} bytes, more than the {MAX_RECORD_PAYLOAD_BYTES} a record may hold",
                        request.id,
                        payload.len()
                    ),
                });
            }
            encode_record(
                self.next_seq + index as u64,
                RecordKind::Request,
                &payload,
                &mut buffer,
            );
        }
        // Commit marks alone are not synced (see `PersistRequest::needs_sync`); the next
        // synced append makes them durable with everything before it.
        let sync = requests.iter().any(PersistRequest::needs_sync);
        let result = self.write_and_sync(&buffer, sync);
        let written = buffer.len() as u64;
        self.encode_buffer = buffer;
        result?;

        let active = self.segments.last_mut().expect("an active segment");
        active.used_bytes += written;
        active.records += requests.len() as u64;
        self.next_seq += requests.len() as u64;
        for request in requests {
            self.state.apply_all(&request.ops);
            self.last_persist_id = request.id;
        }
        Ok(())
    }

    /// After a state-machine snapshot covering slots `..=through` was saved: writes a
    /// checkpoint of the remaining durable state at the start of a fresh segment, makes
    /// it durable, then deletes every older segment.
    pub fn compact(&mut self, through: Slot) -> Result<(), StorageError> {
        let superseded = self.checkpoint(through)?;
        superseded.remove()
    }

    /// [`Wal::compact`] up to the deletes: the checkpoint is durable and the older
    /// segments are off the books, but their files are left for the caller to remove
    /// ([`Superseded::remove`]) on another thread. Deleting a few 64 MiB segments and
    /// syncing the directory took the group-commit thread tens of milliseconds, in which
    /// it wrote nothing. Files not yet removed are harmless: `open` deletes segments older
    /// than the newest checkpoint.
    pub fn checkpoint(&mut self, through: Slot) -> Result<Superseded, StorageError> {
        self.check_writable()?;
        let mut state = self.state.clone();
        state.apply(&PersistOp::Snapshot { slot: through });
        let payload = encode_payload(&Checkpoint {
            state,
            last_persist_id: self.last_persist_id,
        })
        .map_err(|reason| StorageError::Invalid {
            reason: format!("checkpoint cannot be encoded: {reason}"),
        })?;
        if payload.len() > MAX_RECORD_PAYLOAD_BYTES {
            return Err(StorageError::Invalid {
                reason: format!(
                    "checkpoint encodes to {} bytes, more than a record may hold",
                    payload.len()
                ),
            });
        }
        // Replay starts at a segment whose first record is a checkpoint.
        if self.segments.last().expect("an active segment").records > 0 {
            self.rotate()?;
        }
        let mut buffer = Vec::with_capacity(RECORD_HEADER_BYTES + payload.len());
        encode_record(self.next_seq, RecordKind::Checkpoint, &payload, &mut buffer);
        self.write_and_sync(&buffer, true)?;
        let active = self.segments.last_mut().expect("an active segment");
        active.used_bytes += buffer.len() as u64;
        active.records += 1;
        self.next_seq += 1;
        self.state.apply(&PersistOp::Snapshot { slot: through });

        // The checkpoint is durable: older segments are no longer needed.
        let active_index = self.segments.len() - 1;
        let paths = self
            .segments
            .drain(..active_index)
            .map(|segment| segment.path)
            .collect();
        Ok(Superseded {
            dir: self.dir.clone(),
            paths,
            sync: self.options.sync == SyncMode::Fsync,
        })
    }

    fn check_writable(&self) -> Result<(), StorageError> {
        if self.poisoned {
            return Err(StorageError::Poisoned {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Writes `bytes` at the end of the active segment's records, extending its zeroed
    /// preallocation first if needed, then (when `sync`) makes both durable with one
    /// fdatasync.
    fn write_and_sync(&mut self, bytes: &[u8], sync: bool) -> Result<(), StorageError> {
        let segment = self.segments.last_mut().expect("an active segment");
        let step = segment.preallocate_step_bytes;
        let end = segment.used_bytes + bytes.len() as u64;
        let mut result = Ok(());
        if end > segment.file_bytes {
            let new_len = end.div_ceil(step) * step;
            result = write_zeros(&self.active, segment.file_bytes, new_len);
            if result.is_ok() {
                segment.file_bytes = new_len;
            }
        }
        if result.is_ok() {
            result = self.active.write_all_at(bytes, segment.used_bytes);
        }
        if result.is_ok() && sync && self.options.sync == SyncMode::Fsync {
            result = self.active.sync_data();
        }
        result.map_err(|error| {
            self.poisoned = true;
            StorageError::io(&segment.path, error)
        })
    }

    /// Seals the active segment and starts a new one named after the next sequence
    /// number. The old segment is synced first (commit marks may have been written
    /// without a sync, `PersistRequest::needs_sync`, and the next sync goes to the new
    /// segment), and its unused preallocation is cut only once the new segment exists:
    /// the last segment is therefore never a cut one, which is what lets `open` tell a
    /// cut file from a torn write. A crash in between leaves a sealed segment ending in
    /// zeros, which `open` accepts.
    fn rotate(&mut self) -> Result<(), StorageError> {
        let old_index = self.segments.len() - 1;
        if self.options.sync == SyncMode::Fsync {
            if let Err(error) = self.active.sync_all() {
                self.poisoned = true;
                return Err(StorageError::io(&self.segments[old_index].path, error));
            }
        }
        let (file, segment) = match create_segment(&self.dir, self.next_seq, &self.options) {
            Ok(created) => created,
            Err(error) => {
                self.poisoned = true;
                return Err(error);
            }
        };
        let sealed_file = std::mem::replace(&mut self.active, file);
        self.segments.push(segment);
        let sealed = &mut self.segments[old_index];
        if sealed.file_bytes > sealed.used_bytes {
            let mut result = sealed_file.set_len(sealed.used_bytes);
            if result.is_ok() && self.options.sync == SyncMode::Fsync {
                result = sealed_file.sync_all();
            }
            if let Err(error) = result {
                self.poisoned = true;
                return Err(StorageError::io(&sealed.path, error));
            }
            sealed.file_bytes = sealed.used_bytes;
        }
        Ok(())
    }

    /// Bytes of every segment file on disk, preallocated space included.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.file_bytes).sum()
    }

    /// Bytes of headers and records in every segment (`disk_bytes` less preallocation).
    /// In the active segment, this is the offset where the next record will go.
    pub fn log_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.used_bytes).sum()
    }

    /// The durable state, mirrored in memory: what a restart would recover.
    pub fn state(&self) -> &DurableState {
        &self.state
    }

    /// The id of the last persist request made durable (0 if none).
    pub fn last_persist_id(&self) -> PersistId {
        self.last_persist_id
    }

    /// The sequence number the next record will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Paths of the segment files, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments
            .iter()
            .map(|segment| segment.path.clone())
            .collect()
    }

    /// The first sequence number of each segment, oldest first.
    pub fn segment_first_seqs(&self) -> Vec<u64> {
        self.segments
            .iter()
            .map(|segment| segment.first_seq)
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &WalOptions {
        &self.options
    }

    /// What `open` verified and cut.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }
}

fn create_segment(
    dir: &Path,
    first_seq: u64,
    options: &WalOptions,
) -> Result<(File, Segment), StorageError> {
    let sync = options.sync;
    let header = new_segment_header(first_seq, options);
    let path = dir.join(segment_file_name(first_seq));
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(|error| StorageError::io(&path, error))?;
    file.write_all(&encode_segment_header(&header))
        .map_err(|error| StorageError::io(&path, error))?;
    if sync == SyncMode::Fsync {
        file.sync_data()
            .map_err(|error| StorageError::io(&path, error))?;
        sync_dir(dir)?;
    }
    let segment = Segment {
        first_seq,
        path,
        used_bytes: SEGMENT_HEADER_BYTES as u64,
        file_bytes: SEGMENT_HEADER_BYTES as u64,
        records: 0,
        preallocate_step_bytes: header.preallocate_step_bytes,
    };
    Ok((file, segment))
}

/// Fills `from..to` of `file` with real zeros (not a hole: writing into a hole or an
/// unwritten extent later would change the block map and cost a journal commit).
fn write_zeros(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let mut offset = from;
    while offset < to {
        let len = (to - offset).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..len], offset)?;
        offset += len as u64;
    }
    Ok(())
}

fn rewrite_file(path: &Path, contents: &[u8], sync: SyncMode) -> Result<(), StorageError> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|error| StorageError::io(path, error))?;
    file.write_all(contents)
        .map_err(|error| StorageError::io(path, error))?;
    if sync == SyncMode::Fsync {
        file.sync_all()
            .map_err(|error| StorageError::io(path, error))?;
    }
    Ok(())
}
