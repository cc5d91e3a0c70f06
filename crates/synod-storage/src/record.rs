//! The on-disk framing shared by every log segment: a segment header, then records.
//!
//! ```text
//! segment header (48 bytes): magic "SYNODWAL" | version u32 | flags u32 | first_seq u64
//!                             | cluster_id u64 | node_id u64 | preallocate_step_bytes u32 | crc32c u32
//! record header  (20 bytes): payload_len u32 | crc32c u32 | seq u64 | kind u8 | reserved [u8; 3]
//! record payload (payload_len bytes, bincode)
//! ```
//! All integers are little-endian. A record's crc32c covers its header (all fields but the
//! crc itself) and its payload, so a torn or bit-flipped record never verifies.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const SEGMENT_MAGIC: [u8; 8] = *b"SYNODWAL";
/// 2: the segment header names the cluster and member that wrote the log, and the
/// preallocation step (so a cut tail can be told from a torn one). Version 1 logs are
/// refused with [`HeaderError::Unsupported`].
pub const FORMAT_VERSION: u32 = 2;
pub const SEGMENT_HEADER_BYTES: usize = 48;
pub const RECORD_HEADER_BYTES: usize = 20;
/// Larger records are refused on write and treated as damage on read, so a flipped bit
/// in a length field can never make recovery allocate gigabytes.
pub const MAX_RECORD_PAYLOAD_BYTES: usize = 256 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecordKind {
    /// One `PersistRequest` from the core.
    Request = 1,
    /// A `Checkpoint`: the whole durable state after a compaction. Replay restarts from it.
    Checkpoint = 2,
}

impl RecordKind {
    pub fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::Request),
            2 => Some(RecordKind::Checkpoint),
            _ => None,
        }
    }
}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(MAX_RECORD_PAYLOAD_BYTES as u64)
        .reject_trailing_bytes()
}

pub fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    codec().serialize(value).map_err(|error| error.to_string())
}

/// Decodes with a size limit: a payload can never make the decoder allocate more than a
/// record may hold.
pub fn decode_payload<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    codec()
        .deserialize(bytes)
        .map_err(|error| error.to_string())
}

/// Whose log a segment belongs to: written into every segment header and checked at
/// open, so a log copied from another member or cluster is refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct WalIdentity {
    pub cluster_id: u64,
    pub node_id: u64,
}

impl std::fmt::Display for WalIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} of cluster {:016x}",
            self.node_id, self.cluster_id
        )
    }
}

/// A decoded segment header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SegmentHeader {
    pub first_seq: u64,
    pub identity: WalIdentity,
    /// The active segment's length is always the header alone or a multiple of this.
    pub preallocate_step_bytes: u64,
}

/// Why a segment header does not decode.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum HeaderError {
    /// Torn, bit-flipped or not a Synod segment.
    Damaged(String),
    /// A Synod segment of another format version.
    Unsupported { version: u32 },
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Damaged(reason) => f.write_str(reason),
            HeaderError::Unsupported { version } => write!(
                f,
                "segment format version {version}; this build reads version {FORMAT_VERSION}"
            ),
        }
    }
}

pub fn encode_segment_header(header: &SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut bytes = [0u8; SEGMENT_HEADER_BYTES];
    bytes[0..8].copy_from_slice(&SEGMENT_MAGIC);
    bytes[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes[16..24].copy_from_slice(&header.first_seq.to_le_bytes());
    bytes[24..32].copy_from_slice(&header.identity.cluster_id.to_le_bytes());
    bytes[32..40].copy_from_slice(&header.identity.node_id.to_le_bytes());
    let step = u32::try_from(header.preallocate_step_bytes).unwrap_or(u32::MAX);
    bytes[40..44].copy_from_slice(&step.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[0..44]);
    bytes[44..48].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Decodes a segment header, or says why it is not valid.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    // A segment of another version is named as such, whatever its header's length.
    if bytes.len() >= 12 && bytes[0..8] == SEGMENT_MAGIC {
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if (1..FORMAT_VERSION).contains(&version) {
            return Err(HeaderError::Unsupported { version });
        }
    }
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(HeaderError::Damaged(format!(
            "segment header incomplete: {} of {SEGMENT_HEADER_BYTES} bytes",
            bytes.len()
        )));
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let long = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if crc32c::crc32c(&bytes[0..44]) != word(44) {
        return Err(HeaderError::Damaged(
            "segment header checksum mismatch".to_string(),
        ));
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::Damaged(
            "not a Synod log segment (bad magic)".to_string(),
        ));
    }
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(HeaderError::Unsupported { version });
    }
    Ok(SegmentHeader {
        first_seq: long(16),
        identity: WalIdentity {
            cluster_id: long(24),
            node_id: long(32),
        },
        preallocate_step_bytes: u64::from(word(40)).max(1),
    })
}

fn record_crc(header: &[u8], payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&header[0..4]);
    let crc = crc32c::crc32c_append(crc, &header[8..RECORD_HEADER_BYTES]);
    crc32c::crc32c_append(crc, payload)
}

/// Appends one framed record to `out`.
pub fn encode_record(seq: u64, kind: RecordKind, payload: &[u8], out: &mut Vec<u8>) {
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[8..16].copy_from_slice(&seq.to_le_bytes());
    header[16] = kind as u8;
    let crc = record_crc(&header, payload);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// A record whose framing and checksum verified.
#[derive(Debug)]
pub struct RawRecord<'a> {
    pub seq: u64,
    pub kind_byte: u8,
    pub payload: &'a [u8],
    /// Header plus payload.
    pub total_bytes: usize,
}

/// Parses the record starting at `offset` of `bytes`, or says why there is none.
pub fn parse_record(bytes: &[u8], offset: usize) -> Result<RawRecord<'_>, String> {
    let rest = &bytes[offset.min(bytes.len())..];
    if rest.len() < RECORD_HEADER_BYTES {
        return Err(format!(
            "record header incomplete: {} of {RECORD_HEADER_BYTES} bytes before end of file",
            rest.len()
        ));
    }
    let header = &rest[..RECORD_HEADER_BYTES];
    let payload_len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    if payload_len == 0 || payload_len > MAX_RECORD_PAYLOAD_BYTES {
        return Err(format!("record length {payload_len} out of range"));
    }
    if rest.len() - RECORD_HEADER_BYTES < payload_len {
        return Err(format!(
            "record incomplete: payload of {payload_len} bytes, {} before end of file",
            rest.len() - RECORD_HEADER_BYTES
        ));
    }
    let payload = &rest[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload_len];
    let stored_crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if record_crc(header, payload) != stored_crc {
        return Err("record checksum mismatch".to_string());
    }
    Ok(RawRecord {
        seq: u64::from_le_bytes(header[8..16].try_into().expect("8 bytes")),
        kind_byte: header[16],
        payload,
        total_bytes: RECORD_HEADER_BYTES + payload_len,
    })
}

/// The first offset after `from` at which a complete, checksummed record starts, if any.
/// A bad record followed by such a record is corruption, not a torn tail.
pub fn find_valid_record(bytes: &[u8], from: usize) -> Option<usize> {
    let last_start = bytes.len().checked_sub(RECORD_HEADER_BYTES + 1)?;
    (from..=last_start).find(|&offset| parse_record(bytes, offset).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_any_flipped_bit_fails_its_checksum() {
        let mut bytes = Vec::new();
        encode_record(7, RecordKind::Request, b"hello paxos", &mut bytes);
        let record = parse_record(&bytes, 0).expect("valid record");
        assert_eq!(record.seq, 7);
        assert_eq!(record.kind_byte, RecordKind::Request as u8);
        assert_eq!(record.payload, b"hello paxos");
        assert_eq!(record.total_bytes, bytes.len());
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    parse_record(&damaged, 0).is_err(),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn segment_header_round_trips_and_rejects_damage() {
        let header = SegmentHeader {
            first_seq: 42,
            identity: WalIdentity {
                cluster_id: 0xfeed,
                node_id: 3,
            },
            preallocate_step_bytes: 1 << 20,
        };
        let bytes = encode_segment_header(&header);
        assert_eq!(decode_segment_header(&bytes), Ok(header));
        for byte in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[byte] ^= 0x10;
            assert!(decode_segment_header(&damaged).is_err(), "byte {byte}");
        }
        assert!(decode_segment_header(&bytes[..10]).is_err());
    }

    #[test]
    fn a_segment_of_the_first_format_is_named_as_such() {
        // Version 1: 32-byte header, no identity.
        let mut old = [0u8; 32];
        old[0..8].copy_from_slice(&SEGMENT_MAGIC);
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            decode_segment_header(&old),
            Err(HeaderError::Unsupported { version: 1 })
        );
    }

    #[test]
    fn valid_record_is_found_after_garbage() {
        let mut bytes = vec![0xAB; 13];
        encode_record(1, RecordKind::Checkpoint, b"x", &mut bytes);
        assert_eq!(find_valid_record(&bytes, 0), Some(13));
        assert_eq!(find_valid_record(&bytes, 14), None);
    }

    #[test]
    fn decoding_refuses_trailing_bytes_and_garbage() {
        let mut payload = encode_payload(&vec![1u64, 2, 3]).expect("encodes");
        assert_eq!(decode_payload::<Vec<u64>>(&payload), Ok(vec![1, 2, 3]));
        payload.push(0);
        assert!(decode_payload::<Vec<u64>>(&payload).is_err());
        // A length prefix claiming 2^60 elements must fail, not allocate.
        let huge = [0xFF, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(decode_payload::<Vec<u64>>(&huge).is_err());
    }
}
