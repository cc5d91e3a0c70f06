//! The peer wire format: a frame is a big-endian `u32` length, then that many bytes of
//! payload; a payload is one version byte ([`WIRE_VERSION`]) followed by the bincode of a
//! [`Frame`].
//!
//! The length is checked against the limit before anything is allocated, and decoding
//! never reads past the payload, so a hostile or broken peer costs at most one frame of
//! memory. A connection starts with [`Frame::Hello`]; the acceptor answers
//! [`Frame::Welcome`] or [`Frame::Refused`] (with the reason) and closes on refusal.

use bincode::Options;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use synod_core::{Envelope, NodeId, Slot};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The version byte in front of every payload. A peer speaking another version is
/// refused at its first frame.
pub const WIRE_VERSION: u8 = 1;

/// Frames larger than this are refused before they are read (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 << 20;

/// The first frame of every peer connection.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// Derived from the initial cluster and its token: nodes of different clusters
    /// never talk to each other.
    pub cluster_id: u64,
    pub node_id: NodeId,
    pub name: String,
    /// Where the sender serves clients, for `MemberList`.
    pub client_urls: Vec<String>,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Frame {
    Hello(Hello),
    /// The acceptor took the connection; it introduces itself the same way.
    Welcome(Hello),
    /// The acceptor refuses the connection and closes it.
    Refused {
        reason: String,
    },
    /// A protocol message of the core.
    Message(Envelope),
    /// Part of a state-machine snapshot image (see `SnapshotStore::reader`): bytes
    /// `offset..offset + data.len()` of an image of `total_bytes` covering `..=slot`.
    SnapshotChunk {
        slot: Slot,
        offset: u64,
        total_bytes: u64,
        data: Bytes,
    },
    /// Round-trip probe from the dialing side; the acceptor echoes the nonce in a `Pong`.
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
}

impl Frame {
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Welcome(_) => "welcome",
            Frame::Refused { .. } => "refused",
            Frame::Message(_) => "message",
            Frame::SnapshotChunk { .. } => "snapshot_chunk",
            Frame::Ping { .. } => "ping",
            Frame::Pong { .. } => "pong",
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    Closed,
    Io(io::Error),
    /// The length prefix announced more than the limit; nothing was read past it.
    Oversized {
        length: usize,
        max: usize,
    },
    /// The payload is not a frame of this version.
    Malformed(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Closed => write!(f, "connection closed"),
            FrameError::Io(error) => write!(f, "i/o error: {error}"),
            FrameError::Oversized { length, max } => {
                write!(f, "frame of {length} bytes exceeds the {max}-byte limit")
            }
            FrameError::Malformed(reason) => write!(f, "malformed frame: {reason}"),
        }
    }
}

impl std::error::Error for FrameError {}

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .with_little_endian()
        .reject_trailing_bytes()
}

/// The payload of `frame` (version byte + bincode), without the length prefix.
pub fn encode_payload(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    append_payload(frame, &mut out);
    out
}

fn append_payload(frame: &Frame, out: &mut Vec<u8>) {
    out.push(WIRE_VERSION);
    // Serializing plain data into a Vec cannot fail: no maps with complex keys, no
    // custom Serialize implementations that error.
    codec()
        .serialize_into(&mut *out, frame)
        .unwrap_or_else(|error| panic!("encoding a peer frame failed: {error}"));
}

/// Decodes a payload from [`encode_payload`]; never reads past `payload`.
pub fn decode_payload(payload: &[u8]) -> Result<Frame, FrameError> {
    let (&version, body) = payload
        .split_first()
        .ok_or_else(|| FrameError::Malformed("empty payload".to_string()))?;
    if version != WIRE_VERSION {
        return Err(FrameError::Malformed(format!(
            "wire version {version}, this node speaks version {WIRE_VERSION}"
        )));
    }
    codec()
        .with_limit(body.len() as u64)
        .deserialize(body)
        .map_err(|error| FrameError::Malformed(error.to_string()))
}

/// The whole frame: length prefix and payload.
pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame_into(frame, &mut out);
    out
}

/// Appends the whole frame to `out`, serializing straight into it (no intermediate
/// buffer: the peer writer batches many frames into one buffer and one `write`).
pub fn encode_frame_into(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    append_payload(frame, out);
    let length = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&length.to_be_bytes());
}

pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, frame: &Frame) -> io::Result<()> {
    writer.write_all(&encode_frame(frame)).await
}

/// Reads one frame, refusing lengths above `max_frame_bytes` before allocating.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_frame_bytes: usize,
) -> Result<Frame, FrameError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(FrameError::Closed)
        }
        Err(error) => return Err(FrameError::Io(error)),
    }
    let length = u32::from_be_bytes(prefix) as usize;
    if length > max_frame_bytes {
        return Err(FrameError::Oversized {
            length,
            max: max_frame_bytes,
        });
    }
    if length == 0 {
        return Err(FrameError::Malformed("zero-length frame".to_string()));
    }
    let mut payload = vec![0u8; length];
    reader
        .read_exact(&mut payload)
        .await
        .map_err(FrameError::Io)?;
    decode_payload(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_core::{Ballot, Message};

    fn hello() -> Frame {
        Frame::Hello(Hello {
            cluster_id: 7,
            node_id: 2,
            name: "n2".to_string(),
            client_urls: vec!["http://127.0.0.1:2379".to_string()],
        })
    }

    #[tokio::test]
    async fn frames_round_trip_through_a_byte_stream() {
        let frames = vec![
            hello(),
            Frame::Message(Envelope {
                from: 1,
                to: 2,
                message: Message::Prepare {
                    ballot: Ballot::new(3, 1),
                    from_slot: 4,
                    transfer_from: None,
                },
            }),
            Frame::SnapshotChunk {
                slot: 9,
                offset: 0,
                total_bytes: 3,
                data: Bytes::from_static(b"abc"),
            },
            Frame::Ping { nonce: 5 },
        ];
        let mut bytes = Vec::new();
        for frame in &frames {
            bytes.extend(encode_frame(frame));
        }
        let mut reader = &bytes[..];
        for frame in &frames {
            assert_eq!(&read_frame(&mut reader, 1 << 20).await.unwrap(), frame);
        }
        assert!(matches!(
            read_frame(&mut reader, 1 << 20).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_reading_the_payload() {
        let bytes = (u32::MAX).to_be_bytes();
        let mut reader = &bytes[..];
        match read_frame(&mut reader, 1024).await {
            Err(FrameError::Oversized { length, max }) => {
                assert_eq!(length, u32::MAX as usize);
                assert_eq!(max, 1024);
            }
            other => panic!("expected an oversized-frame error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_and_foreign_versions_are_malformed() {
        let mut garbage = 5u32.to_be_bytes().to_vec();
        garbage.extend([WIRE_VERSION, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            read_frame(&mut &garbage[..], 1024).await,
            Err(FrameError::Malformed(_))
        ));
        let mut payload = encode_payload(&hello());
        payload[0] = WIRE_VERSION + 1;
        match decode_payload(&payload) {
            Err(FrameError::Malformed(reason)) => assert!(reason.contains("wire version")),
            other => panic!("expected a version error, got {other:?}"),
        }
        let mut trailing = encode_payload(&hello());
        trailing.push(0);
        assert!(matches!(
            decode_payload(&trailing),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn a_length_prefix_claiming_a_huge_vector_does_not_allocate_it() {
        // A Message frame whose envelope claims billions of entries: bincode's byte limit
        // stops it at the payload's end.
        let mut payload = vec![WIRE_VERSION, 3];
        payload.extend([0xfd, 0xff, 0xff, 0xff, 0x7f]);
        assert!(matches!(
            decode_payload(&payload),
            Err(FrameError::Malformed(_))
        ));
    }
}
