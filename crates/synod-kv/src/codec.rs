//! The wire and snapshot encoding: one format-version byte, then bincode.
//!
//! Every command, response and snapshot starts with [`FORMAT_VERSION`] so that a replica
//! running newer code can refuse bytes it does not understand instead of misreading them.
//! Decoding is bounded: bincode may never read (and so never allocate) more than the input
//! holds, and transaction nesting is capped at [`MAX_TXN_DEPTH`] so hostile input cannot
//! overflow the stack.

use std::cell::Cell;

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// The format version written in front of every encoded command, response and snapshot.
pub const FORMAT_VERSION: u8 = 1;

/// How deep transactions may nest (a `Txn` inside a `Txn` counts as depth 2).
pub const MAX_TXN_DEPTH: usize = 32;

/// Varint integers, little endian, trailing bytes rejected. The same options are used for
/// encoding and decoding; only the byte limit differs.
fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

/// Encodes `value` behind the format-version byte.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    encode_as(FORMAT_VERSION, value)
}

/// Encodes `value` behind another format-version byte (snapshots have their own).
pub(crate) fn encode_as<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    encode_into(vec![version], value)
}

/// [`encode_as`] for values of many MB (a store's snapshot): sized first, because a Vec
/// grown by doubling copies the bytes again at every step and faults in twice their size
/// in fresh pages; the counting pass costs far less (`synod bench mvcc`, "encode ms",
/// docs/mvcc.md). Small values (commands, responses) skip the pass.
pub(crate) fn encode_large_as<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    let size = options().serialized_size(value).unwrap_or(0);
    let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(1));
    out.push(version);
    encode_into(out, value)
}

fn encode_into<T: Serialize>(mut out: Vec<u8>, value: &T) -> Vec<u8> {
    // Serializing into a Vec with no byte limit cannot fail for these types: they contain no
    // maps with non-string keys, no unsized sequences and no custom Serialize that errors.
    if let Err(error) = options().serialize_into(&mut out, value) {
        unreachable_encode_failure(&error);
    }
    out
}

#[cold]
fn unreachable_encode_failure(error: &bincode::Error) -> ! {
    panic!("synod-kv: encoding an in-memory value failed: {error}")
}

/// Why some bytes could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    Empty,
    UnknownVersion(u8),
    Body(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "empty input (expected a format-version byte)"),
            DecodeError::UnknownVersion(version) => write!(
                f,
                "unsupported format version {version} (this build reads version {FORMAT_VERSION})"
            ),
            DecodeError::Body(message) => write!(f, "{message}"),
        }
    }
}

/// Decodes bytes produced by [`encode`]. Never reads past `bytes`, so allocation is bounded by
/// the input size.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_as(FORMAT_VERSION, bytes)
}

/// Decodes bytes produced by [`encode_as`] with `expected` as the version byte.
pub(crate) fn decode_as<T: DeserializeOwned>(expected: u8, bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != expected {
        return Err(DecodeError::UnknownVersion(version));
    }
    NESTING.with(|depth| depth.set(0));
    options()
        .with_limit(body.len() as u64)
        .deserialize(body)
        .map_err(|error| DecodeError::Body(error.to_string()))
}

thread_local! {
    static NESTING: Cell<usize> = const { Cell::new(0) };
}

/// Counts transaction nesting while deserializing; dropping it leaves the level.
pub(crate) struct NestingGuard(());

impl NestingGuard {
    pub(crate) fn enter() -> Result<NestingGuard, String> {
        NESTING.with(|depth| {
            let next = depth.get() + 1;
            if next > MAX_TXN_DEPTH {
                return Err(format!("transactions nested deeper than {MAX_TXN_DEPTH}"));
            }
            depth.set(next);
            Ok(NestingGuard(()))
        })
    }
}

impl Drop for NestingGuard {
    fn drop(&mut self) {
        NESTING.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_value_is_encoded_into_one_allocation_of_its_exact_size() {
        // 50,000 keys' worth of bytes: a Vec grown by doubling would end with spare room.
        let value: Vec<(u64, Vec<u8>)> = (0..50_000u64).map(|i| (i, vec![7; 37])).collect();
        let bytes = encode_large_as(3, &value);
        assert_eq!(bytes.capacity(), bytes.len());
        assert_eq!(
            decode_as::<Vec<(u64, Vec<u8>)>>(3, &bytes).expect("decodes"),
            value
        );
    }
}
