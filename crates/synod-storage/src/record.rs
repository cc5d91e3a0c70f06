//! The on-disk framing shared by every log segment: a segment header, then records.
//!
//! ```text
//! segment header (32 bytes): magic "SYNODWAL" | version u32 | flags u32 | first_seq u64 | reserved u32 | crc32c u32
//! record header  (20 bytes): payload_len u32 | crc32c u32 | seq u64 | kind u8 | reserved [u8; 3]
//! record payload (payload_len bytes, bincode)
//! ```
//! All integers are little-endian. A record's crc32c covers its header (all fields but the
//! crc itself) and its payload, so a torn or bit-flipped record never verifies.

use bincode::Options;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub const SEGMENT_MAGIC: [u8; 8] = *b"SYNODWAL";
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: usize = 32;
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

pub fn encode_segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[0..8].copy_from_slice(&SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&header[0..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Returns the segment's first sequence number, or why the header is not valid.
pub fn decode_segment_header(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() < SEGMENT_HEADER_BYTES {
        return Err(format!(
            "segment header incomplete: {} of {SEGMENT_HEADER_BYTES} bytes",
            bytes.len()
        ));
    }
    let stored_crc = u32::from_le_bytes(bytes[28..32].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[0..28]) != stored_crc {
        return Err("segment header checksum mismatch".to_string());
    }
    if bytes[0..8] != SEGMENT_MAGIC {
        return Err("not a Synod log segment (bad magic)".to_string());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(format!(
            "unsupported segment format version {version} (this build reads {FORMAT_VERSION})"
        ));
    }
    Ok(u64::from_le_bytes(
        bytes[16..24].try_into().expect("8 bytes"),
    ))
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
        let header = encode_segment_header(42);
        assert_eq!(decode_segment_header(&header), Ok(42));
        let mut damaged = header;
        damaged[17] ^= 0x10;
        assert!(decode_segment_header(&damaged).is_err());
        assert!(decode_segment_header(&header[..10]).is_err());
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
