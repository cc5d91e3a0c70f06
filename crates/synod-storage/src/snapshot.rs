//! State-machine snapshots: one file per snapshot, written to a temporary name, fsynced,
//! renamed into place and the directory fsynced, so a crash leaves either the old set
//! or the new one. The newest two are kept.
//!
//! ```text
//! header  (32 bytes): magic "SYNODSNP" | version u32 | flags u32 | slot u64 | reserved u32 | crc32c u32
//! data
//! trailer (16 bytes): data_len u64 | crc32c(data) u32 | magic "SNP." (4 bytes)
//! ```
//! A lagging replica is sent the file image in chunks (`SnapshotReader`) and rebuilds it
//! with `SnapshotWriter`, which verifies the whole image before installing it. Both hold
//! one chunk in memory at a time.

use crate::error::StorageError;
use crate::wal::sync_dir;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use synod_core::Slot;

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"SYNODSNP";
const SNAPSHOT_VERSION: u32 = 1;
const HEADER_BYTES: u64 = 32;
const TRAILER_BYTES: u64 = 16;
const TRAILER_MAGIC: [u8; 4] = *b"SNP.";
const VERIFY_BUFFER_BYTES: usize = 64 << 10;
const KEPT_SNAPSHOTS: usize = 2;
/// A snapshot file is synced every this many bytes as it is written (RocksDB's
/// `bytes_per_sync`), so the page cache never holds much of it unwritten. One fsync of a
/// whole large image makes the filesystem write it out in one burst, and every small
/// fdatasync of the write-ahead logs on the same disk waits behind that burst: writing
/// 180 MiB and then syncing stalled a concurrent 4 KiB write + fdatasync loop for 137
/// and 228 ms; synced every 4 MiB, the same loop's syncs took 6–8 ms each while the
/// file was written and none stalled longer (ext4 on this machine's virtual disk).
const SYNC_EVERY_BYTES: u64 = 4 << 20;

/// A file that syncs its data every [`SYNC_EVERY_BYTES`] written.
struct PacedFile {
    file: File,
    unsynced: u64,
    syncs: u64,
}

impl PacedFile {
    fn new(file: File) -> PacedFile {
        PacedFile {
            file,
            unsynced: 0,
            syncs: 0,
        }
    }
}

impl Write for PacedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.file.write(buf)?;
        self.unsynced += written as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
            self.syncs += 1;
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Numbers the transfers this process receives: each writes its own partial file. A
/// leader may start sending a snapshot again while the first copy is still being
/// written or verified; with one shared name, the second truncated the first's file
/// under it and the first, failing, removed the second's.
static NEXT_TRANSFER: AtomicU64 = AtomicU64::new(1);

fn snapshot_file_name(slot: Slot) -> String {
    format!("{slot:020}.snap")
}

/// A transfer's file: `<slot>.snap.partial` (before 2026-12) or `<slot>.snap.partial.<n>`.
fn is_partial_file_name(name: &str) -> bool {
    name.ends_with(".snap.partial") || name.contains(".snap.partial.")
}

fn parse_snapshot_file_name(name: &str) -> Option<Slot> {
    let digits = name.strip_suffix(".snap")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn encode_header(slot: Slot) -> [u8; HEADER_BYTES as usize] {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    header[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&slot.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

fn decode_header(header: &[u8]) -> Result<Slot, String> {
    if header.len() < HEADER_BYTES as usize {
        return Err("snapshot header incomplete".to_string());
    }
    let crc = u32::from_le_bytes(header[28..32].try_into().expect("4 bytes"));
    if crc32c::crc32c(&header[0..28]) != crc {
        return Err("snapshot header checksum mismatch".to_string());
    }
    if header[0..8] != SNAPSHOT_MAGIC {
        return Err("not a Synod snapshot (bad magic)".to_string());
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != SNAPSHOT_VERSION {
        return Err(format!("unsupported snapshot version {version}"));
    }
    Ok(u64::from_le_bytes(
        header[16..24].try_into().expect("8 bytes"),
    ))
}

fn encode_trailer(data_len: u64, crc: u32) -> [u8; TRAILER_BYTES as usize] {
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    trailer[0..8].copy_from_slice(&data_len.to_le_bytes());
    trailer[8..12].copy_from_slice(&crc.to_le_bytes());
    trailer[12..16].copy_from_slice(&TRAILER_MAGIC);
    trailer
}

/// Reads the snapshot file at `path` once, in bounded memory, and checks its header,
/// length and checksum. Returns the slot and the data length.
fn verify_file(path: &Path) -> Result<(Slot, u64), StorageError> {
    let io = |error| StorageError::io(path, error);
    let mut file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    if file_len < HEADER_BYTES + TRAILER_BYTES {
        return Err(StorageError::corrupt(
            path,
            0,
            format!("snapshot file of {file_len} bytes is shorter than its header and trailer"),
        ));
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    file.read_exact(&mut header).map_err(io)?;
    let slot = decode_header(&header).map_err(|reason| StorageError::corrupt(path, 0, reason))?;
    let data_len = file_len - HEADER_BYTES - TRAILER_BYTES;
    let mut crc = 0u32;
    let mut remaining = data_len;
    let mut buffer = vec![0u8; VERIFY_BUFFER_BYTES];
    while remaining > 0 {
        let take = remaining.min(buffer.len() as u64) as usize;
        file.read_exact(&mut buffer[..take]).map_err(io)?;
        crc = crc32c::crc32c_append(crc, &buffer[..take]);
        remaining -= take as u64;
    }
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    file.read_exact(&mut trailer).map_err(io)?;
    let trailer_offset = HEADER_BYTES + data_len;
    if trailer[12..16] != TRAILER_MAGIC {
        return Err(StorageError::corrupt(
            path,
            trailer_offset,
            "snapshot trailer missing (bad magic)",
        ));
    }
    let stored_len = u64::from_le_bytes(trailer[0..8].try_into().expect("8 bytes"));
    if stored_len != data_len {
        return Err(StorageError::corrupt(
            path,
            trailer_offset,
            format!("snapshot trailer says {stored_len} data bytes, the file holds {data_len}"),
        ));
    }
    let stored_crc = u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes"));
    if stored_crc != crc {
        return Err(StorageError::corrupt(
            path,
            HEADER_BYTES,
            "snapshot data checksum mismatch",
        ));
    }
    Ok((slot, data_len))
}

pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    /// Opens (or creates) the snapshot directory and removes temporary files left by a
    /// crash during a save or a transfer.
    pub fn open(dir: &Path) -> Result<SnapshotStore, StorageError> {
        fs::create_dir_all(dir).map_err(|error| StorageError::io(dir, error))?;
        let listing = fs::read_dir(dir).map_err(|error| StorageError::io(dir, error))?;
        for item in listing {
            let item = item.map_err(|error| StorageError::io(dir, error))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".snap.tmp") || is_partial_file_name(&name) {
                let path = item.path();
                fs::remove_file(&path).map_err(|error| StorageError::io(&path, error))?;
            }
        }
        Ok(SnapshotStore {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Slots of the installed snapshots, oldest first.
    pub fn slots(&self) -> Result<Vec<Slot>, StorageError> {
        let mut slots = Vec::new();
        let listing =
            fs::read_dir(&self.dir).map_err(|error| StorageError::io(&self.dir, error))?;
        for item in listing {
            let item = item.map_err(|error| StorageError::io(&self.dir, error))?;
            if let Some(slot) = item.file_name().to_str().and_then(parse_snapshot_file_name) {
                slots.push(slot);
            }
        }
        slots.sort_unstable();
        Ok(slots)
    }

    pub fn path_of(&self, slot: Slot) -> PathBuf {
        self.dir.join(snapshot_file_name(slot))
    }

    /// Durably saves the state-machine image covering slots `..=slot`, then keeps only
    /// the newest two snapshots.
    pub fn save(&self, slot: Slot, data: &[u8]) -> Result<(), StorageError> {
        let temporary = self.dir.join(format!("{}.tmp", snapshot_file_name(slot)));
        let io = |error| StorageError::io(&temporary, error);
        let file = File::create(&temporary).map_err(io)?;
        let mut writer = BufWriter::new(PacedFile::new(file));
        writer.write_all(&encode_header(slot)).map_err(io)?;
        writer.write_all(data).map_err(io)?;
        writer
            .write_all(&encode_trailer(data.len() as u64, crc32c::crc32c(data)))
            .map_err(io)?;
        let file = writer
            .into_inner()
            .map_err(|error| io(error.into_error()))?
            .file;
        file.sync_all().map_err(io)?;
        drop(file);
        self.install(&temporary, slot)
    }

    fn install(&self, temporary: &Path, slot: Slot) -> Result<(), StorageError> {
        let path = self.path_of(slot);
        fs::rename(temporary, &path).map_err(|error| StorageError::io(&path, error))?;
        sync_dir(&self.dir)?;
        self.prune()
    }

    fn prune(&self) -> Result<(), StorageError> {
        let slots = self.slots()?;
        if slots.len() <= KEPT_SNAPSHOTS {
            return Ok(());
        }
        for slot in &slots[..slots.len() - KEPT_SNAPSHOTS] {
            let path = self.path_of(*slot);
            fs::remove_file(&path).map_err(|error| StorageError::io(&path, error))?;
        }
        sync_dir(&self.dir)
    }

    /// The newest snapshot, verified. A damaged newest snapshot is an error, not a reason
    /// to fall back to an older one: the log may already be compacted past it.
    pub fn latest(&self) -> Result<Option<(Slot, Vec<u8>)>, StorageError> {
        let Some(&slot) = self.slots()?.last() else {
            return Ok(None);
        };
        let path = self.path_of(slot);
        let bytes = fs::read(&path).map_err(|error| StorageError::io(&path, error))?;
        let data = verify_image(&path, &bytes, slot)?;
        Ok(Some((slot, data.to_vec())))
    }

    /// Streams the snapshot of `slot` as chunks of its file image, for sending to a
    /// lagging replica. The file is verified first, so no unverifiable byte is served.
    pub fn reader(&self, slot: Slot, chunk_bytes: usize) -> Result<SnapshotReader, StorageError> {
        if chunk_bytes == 0 {
            return Err(StorageError::Invalid {
                reason: "snapshot chunk size must be at least one byte".to_string(),
            });
        }
        let path = self.path_of(slot);
        if !path.exists() {
            return Err(StorageError::SnapshotMissing {
                dir: self.dir.clone(),
                slot,
            });
        }
        verify_file(&path)?;
        let file = File::open(&path).map_err(|error| StorageError::io(&path, error))?;
        let total_bytes = file
            .metadata()
            .map_err(|error| StorageError::io(&path, error))?
            .len();
        Ok(SnapshotReader {
            path,
            file,
            remaining: total_bytes,
            total_bytes,
            chunk_bytes,
            slot,
        })
    }

    /// Receives a snapshot image streamed by a peer's `SnapshotReader`. `finish` verifies
    /// and installs it; dropping the writer unfinished discards it. Writers of one slot
    /// may run at once: each has its own file until `finish` renames it into place.
    pub fn writer(&self, slot: Slot) -> Result<SnapshotWriter, StorageError> {
        let transfer = NEXT_TRANSFER.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("{}.partial.{transfer}", snapshot_file_name(slot)));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|error| StorageError::io(&path, error))?;
        Ok(SnapshotWriter {
            store: SnapshotStore {
                dir: self.dir.clone(),
            },
            slot,
            path,
            file: Some(BufWriter::new(PacedFile::new(file))),
            bytes_written: 0,
        })
    }
}

/// Checks a whole image held in memory; returns its data.
fn verify_image<'a>(
    path: &Path,
    bytes: &'a [u8],
    expected_slot: Slot,
) -> Result<&'a [u8], StorageError> {
    let minimum = (HEADER_BYTES + TRAILER_BYTES) as usize;
    if bytes.len() < minimum {
        return Err(StorageError::corrupt(
            path,
            0,
            format!(
                "snapshot file of {} bytes is shorter than its header and trailer",
                bytes.len()
            ),
        ));
    }
    let slot = decode_header(bytes).map_err(|reason| StorageError::corrupt(path, 0, reason))?;
    if slot != expected_slot {
        return Err(StorageError::corrupt(
            path,
            16,
            format!("snapshot header says slot {slot}, expected {expected_slot}"),
        ));
    }
    let data = &bytes[HEADER_BYTES as usize..bytes.len() - TRAILER_BYTES as usize];
    let trailer = &bytes[bytes.len() - TRAILER_BYTES as usize..];
    let trailer_offset = (bytes.len() - TRAILER_BYTES as usize) as u64;
    if trailer[12..16] != TRAILER_MAGIC {
        return Err(StorageError::corrupt(
            path,
            trailer_offset,
            "snapshot trailer missing (bad magic)",
        ));
    }
    let stored_len = u64::from_le_bytes(trailer[0..8].try_into().expect("8 bytes"));
    if stored_len != data.len() as u64 {
        return Err(StorageError::corrupt(
            path,
            trailer_offset,
            format!(
                "snapshot trailer says {stored_len} data bytes, the file holds {}",
                data.len()
            ),
        ));
    }
    let stored_crc = u32::from_le_bytes(trailer[8..12].try_into().expect("4 bytes"));
    if crc32c::crc32c(data) != stored_crc {
        return Err(StorageError::corrupt(
            path,
            HEADER_BYTES,
            "snapshot data checksum mismatch",
        ));
    }
    Ok(data)
}

/// Chunks of a verified snapshot file image. Holds one chunk in memory at a time.
pub struct SnapshotReader {
    path: PathBuf,
    file: File,
    remaining: u64,
    total_bytes: u64,
    chunk_bytes: usize,
    slot: Slot,
}

impl SnapshotReader {
    /// Size of the whole image, header and trailer included.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn slot(&self) -> Slot {
        self.slot
    }
}

impl Iterator for SnapshotReader {
    type Item = Result<Vec<u8>, StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let take = self.remaining.min(self.chunk_bytes as u64) as usize;
        let mut chunk = vec![0u8; take];
        if let Err(error) = self.file.read_exact(&mut chunk) {
            self.remaining = 0;
            return Some(Err(StorageError::io(&self.path, error)));
        }
        self.remaining -= take as u64;
        Some(Ok(chunk))
    }
}

/// Rebuilds a snapshot from chunks of its file image. Nothing is visible until `finish`
/// has verified the whole image.
pub struct SnapshotWriter {
    store: SnapshotStore,
    slot: Slot,
    path: PathBuf,
    file: Option<BufWriter<PacedFile>>,
    bytes_written: u64,
}

impl SnapshotWriter {
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        let file = self.file.as_mut().ok_or_else(|| StorageError::Invalid {
            reason: "snapshot writer already failed".to_string(),
        })?;
        if let Err(error) = file.write_all(chunk) {
            self.file = None;
            return Err(StorageError::io(&self.path, error));
        }
        self.bytes_written += chunk.len() as u64;
        Ok(())
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Syncs the received image, verifies header (slot included), length and checksum,
    /// then installs it under its final name. On any failure the partial file is removed.
    pub fn finish(mut self) -> Result<(), StorageError> {
        let file = self.file.take().ok_or_else(|| StorageError::Invalid {
            reason: "snapshot writer already failed".to_string(),
        })?;
        let path = self.path.clone();
        let io = |error| StorageError::io(&path, error);
        let file = file
            .into_inner()
            .map_err(|error| io(error.into_error()))?
            .file;
        file.sync_all().map_err(io)?;
        drop(file);
        let (slot, _) = verify_file(&self.path)?;
        if slot != self.slot {
            return Err(StorageError::corrupt(
                &self.path,
                16,
                format!(
                    "received snapshot is of slot {slot}, expected {}",
                    self.slot
                ),
            ));
        }
        self.store.install(&self.path, self.slot)?;
        // Installed: nothing left for Drop to discard.
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.file = None;
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_image_is_synced_every_few_mebibytes_as_it_is_written() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = File::create(dir.path().join("image")).expect("create");
        let mut writer = BufWriter::new(PacedFile::new(file));
        let chunk = vec![7u8; 100_000];
        let total = 2 * SYNC_EVERY_BYTES + SYNC_EVERY_BYTES / 2;
        let mut written = 0;
        while written < total {
            writer.write_all(&chunk).expect("write");
            written += chunk.len() as u64;
        }
        let paced = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .expect("flush");
        // Two full steps synced on the way; the rest is left for the final sync_all.
        assert_eq!(paced.syncs, 2);
        assert!(paced.unsynced > 0 && paced.unsynced < SYNC_EVERY_BYTES);
        assert_eq!(
            fs::metadata(dir.path().join("image")).expect("stat").len(),
            written
        );
    }
}
