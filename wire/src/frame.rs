//! Framing: the fixed 32-byte frame header, frame limits, and the streaming decoder.
//!
//! # Frame layout (version 1)
//!
//! Every frame, on both the client and the peer port, is a 32-byte header followed by
//! `body_len` bytes of flatbuffers body. All integers are little-endian.
//!
//! ```text
//! offset size field          meaning
//!  0     4    magic          b"CRUM" (0x43 0x52 0x55 0x4D); anything else: BadMagic
//!  4     1    version        protocol version, currently 1; anything else: UnsupportedVersion
//!  5     1    kind           FrameKind: 1 ClientRequests, 2 ClientResponses, 3 PeerMessages
//!  6     2    flags          reserved, must be 0 (room for compression etc. in a later version)
//!  8     4    body_len       length of the body in bytes, at most Limits::frame_bytes_max - 32
//! 12     4    body_crc32c    crc32c (Castagnoli) of the body bytes
//! 16     8    request_id     sender-chosen frame id; a reply that concerns the whole frame
//!                            (ResponseBatch.frame_error) echoes it. Each request inside the body
//!                            has its own id as well.
//! 24     4    header_crc32c  crc32c of header bytes 0..24, so a corrupt length is caught before
//!                            the decoder waits for (or allocates) a body that will never come
//! 28     4    reserved       must be 0
//! 32          body           RequestBatch | ResponseBatch | PeerBatch, by kind
//! ```
//!
//! A framing error leaves the byte stream without a known frame boundary, so the connection
//! must be closed after it (a typed error reply may be sent first: see
//! [`FrameError::request_id`]).

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The four magic bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"CRUM";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of [`FrameHeader`] in bytes.
pub const HEADER_BYTES: usize = 32;

/// The fixed frame header, exactly as it is on the wire (see the module docs).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct FrameHeader {
    /// Bytes 0..4: [`MAGIC`].
    pub magic: [u8; 4],
    /// Byte 4: [`VERSION`].
    pub version: u8,
    /// Byte 5: a [`FrameKind`] value.
    pub kind: u8,
    /// Bytes 6..8: reserved flags, 0.
    pub flags: U16,
    /// Bytes 8..12: body length in bytes.
    pub body_len: U32,
    /// Bytes 12..16: crc32c of the body.
    pub body_crc32c: U32,
    /// Bytes 16..24: frame (request) id.
    pub request_id: U64,
    /// Bytes 24..28: crc32c of bytes 0..24.
    pub header_crc32c: U32,
    /// Bytes 28..32: reserved, 0.
    pub reserved: U32,
}

const _: () = assert!(core::mem::size_of::<FrameHeader>() == HEADER_BYTES);
const _: () = assert!(core::mem::align_of::<FrameHeader>() == 1);

impl FrameHeader {
    /// Builds the header for `body`, computing both checksums.
    pub fn new(kind: FrameKind, request_id: u64, body: &[u8]) -> Result<Self, FrameError> {
        let body_len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
            len: body.len() as u64,
            limit: u64::from(u32::MAX),
            request_id,
        })?;
        let mut header = FrameHeader {
            magic: MAGIC,
            version: VERSION,
            kind: kind as u8,
            flags: U16::new(0),
            body_len: U32::new(body_len),
            body_crc32c: U32::new(crc32c::crc32c(body)),
            request_id: U64::new(request_id),
            header_crc32c: U32::new(0),
            reserved: U32::new(0),
        };
        header.header_crc32c = U32::new(header.compute_header_crc());
        Ok(header)
    }

    fn compute_header_crc(&self) -> u32 {
        crc32c::crc32c(&self.as_bytes()[..24])
    }
}

/// What a frame's body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// Client -> server: a `RequestBatch`.
    ClientRequests = 1,
    /// Server -> client: a `ResponseBatch`.
    ClientResponses = 2,
    /// Node -> node: a `PeerBatch`.
    PeerMessages = 3,
}

impl FrameKind {
    /// The kind for a header byte, if known.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::ClientRequests),
            2 => Some(Self::ClientResponses),
            3 => Some(Self::PeerMessages),
            _ => None,
        }
    }
}

/// Size limits enforced when encoding and decoding. Every field has a documented default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, header included. Default 4 MiB.
    pub frame_bytes_max: usize,
    /// Largest key. Default 8 KiB.
    pub key_bytes_max: usize,
    /// Largest value. Default 1 MiB.
    pub value_bytes_max: usize,
    /// Most requests (or responses, or peer messages) in one frame. Default 65,536.
    pub batch_items_max: usize,
    /// Flatbuffers verifier: deepest table nesting. Default 16 (the schemas need at most 6).
    pub verify_depth_max: usize,
    /// Flatbuffers verifier: most tables in one body. Default 1,048,576.
    pub verify_tables_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            frame_bytes_max: 4 << 20,
            key_bytes_max: 8 << 10,
            value_bytes_max: 1 << 20,
            batch_items_max: 1 << 16,
            verify_depth_max: 16,
            verify_tables_max: 1 << 20,
        }
    }
}

impl Limits {
    /// The largest body a frame may carry.
    pub fn body_bytes_max(&self) -> usize {
        self.frame_bytes_max.saturating_sub(HEADER_BYTES)
    }

    pub(crate) fn verifier_options(&self) -> flatbuffers::VerifierOptions {
        flatbuffers::VerifierOptions {
            max_depth: self.verify_depth_max,
            max_tables: self.verify_tables_max,
            max_apparent_size: self.frame_bytes_max,
            ignore_missing_null_terminator: false,
        }
    }
}

/// A framing error. After any of these the stream has no known frame boundary: close the
/// connection (after replying, where [`FrameError::request_id`] gives an id to reply to).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The first four bytes are not [`MAGIC`].
    #[error("bad magic {found:02x?}, expected {MAGIC:02x?}")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// The header checksum does not match; the header cannot be trusted.
    #[error("header checksum mismatch: computed {computed:#010x}, stored {stored:#010x}")]
    BadHeaderChecksum {
        /// Checksum of the received header bytes.
        computed: u32,
        /// Checksum stored in the header.
        stored: u32,
    },
    /// A protocol version this crate does not speak.
    #[error("unsupported protocol version {found} (this build speaks {VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u8,
        /// The frame id, to reply to.
        request_id: u64,
    },
    /// A frame kind this crate does not know.
    #[error("unknown frame kind {found}")]
    UnknownKind {
        /// The kind byte found.
        found: u8,
        /// The frame id, to reply to.
        request_id: u64,
    },
    /// Reserved header bits are set.
    #[error("reserved header fields set: flags {flags:#06x}, reserved {reserved:#010x}")]
    ReservedBits {
        /// The flags field.
        flags: u16,
        /// The reserved field.
        reserved: u32,
        /// The frame id, to reply to.
        request_id: u64,
    },
    /// The frame is larger than the configured limit.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Frame length (header + body) in bytes.
        len: u64,
        /// The limit in bytes.
        limit: u64,
        /// The frame id, to reply to.
        request_id: u64,
    },
    /// The body checksum does not match.
    #[error("body checksum mismatch: computed {computed:#010x}, stored {stored:#010x}")]
    BadChecksum {
        /// Checksum of the received body.
        computed: u32,
        /// Checksum stored in the header.
        stored: u32,
        /// The frame id, to reply to.
        request_id: u64,
    },
}

impl FrameError {
    /// The frame id to address an error reply to, when the header could be trusted.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            Self::BadMagic { .. } | Self::BadHeaderChecksum { .. } => None,
            Self::UnsupportedVersion { request_id, .. }
            | Self::UnknownKind { request_id, .. }
            | Self::ReservedBits { request_id, .. }
            | Self::TooLarge { request_id, .. }
            | Self::BadChecksum { request_id, .. } => Some(*request_id),
        }
    }
}

/// One decoded frame: its kind, id and (checksum-verified, not yet schema-verified) body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the body is.
    pub kind: FrameKind,
    /// The frame id from the header.
    pub request_id: u64,
    /// The body bytes; decode with the message types of this crate.
    pub body: Bytes,
}

/// Appends one frame (header + body) to `out`.
///
/// Fails with [`FrameError::TooLarge`] when the frame would exceed `limits.frame_bytes_max`,
/// so a sender never emits a frame its peer must refuse.
pub fn encode_frame(
    out: &mut BytesMut,
    kind: FrameKind,
    request_id: u64,
    body: &[u8],
    limits: &Limits,
) -> Result<(), FrameError> {
    let len = HEADER_BYTES + body.len();
    if len > limits.frame_bytes_max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            limit: limits.frame_bytes_max as u64,
            request_id,
        });
    }
    let header = FrameHeader::new(kind, request_id, body)?;
    out.reserve(len);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// A streaming frame decoder over a byte buffer that a reader keeps appending to.
///
/// Call [`FrameDecoder::decode`] after each read: it returns `Ok(Some(frame))` for each
/// complete frame, `Ok(None)` when more bytes are needed (the buffer is left untouched), or a
/// typed [`FrameError`]. It validates the header as soon as 32 bytes are there, so an oversized
/// or corrupt frame is refused before its body is awaited.
#[derive(Debug, Clone, Default)]
pub struct FrameDecoder {
    limits: Limits,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// The limits this decoder enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Parses and validates a header. Does not need the body.
    pub fn check_header(
        &self,
        bytes: &[u8; HEADER_BYTES],
    ) -> Result<(FrameKind, u64, usize, u32), FrameError> {
        let header = match FrameHeader::read_from_bytes(bytes) {
            Ok(h) => h,
            // Unreachable: the array is exactly HEADER_BYTES long and the header is Unaligned.
            Err(_) => return Err(FrameError::BadMagic { found: [0; 4] }),
        };
        if header.magic != MAGIC {
            return Err(FrameError::BadMagic {
                found: header.magic,
            });
        }
        let computed = header.compute_header_crc();
        if computed != header.header_crc32c.get() {
            return Err(FrameError::BadHeaderChecksum {
                computed,
                stored: header.header_crc32c.get(),
            });
        }
        let request_id = header.request_id.get();
        if header.version != VERSION {
            return Err(FrameError::UnsupportedVersion {
                found: header.version,
                request_id,
            });
        }
        let kind = FrameKind::from_u8(header.kind).ok_or(FrameError::UnknownKind {
            found: header.kind,
            request_id,
        })?;
        if header.flags.get() != 0 || header.reserved.get() != 0 {
            return Err(FrameError::ReservedBits {
                flags: header.flags.get(),
                reserved: header.reserved.get(),
                request_id,
            });
        }
        let body_len = header.body_len.get() as usize;
        let len = HEADER_BYTES as u64 + u64::from(header.body_len.get());
        if len > self.limits.frame_bytes_max as u64 {
            return Err(FrameError::TooLarge {
                len,
                limit: self.limits.frame_bytes_max as u64,
                request_id,
            });
        }
        Ok((kind, request_id, body_len, header.body_crc32c.get()))
    }

    /// Takes the next complete frame off the front of `buf`, if there is one.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some(head) = buf.get(..HEADER_BYTES) else {
            return Ok(None);
        };
        let mut header = [0u8; HEADER_BYTES];
        header.copy_from_slice(head);
        let (kind, request_id, body_len, stored) = match self.check_header(&header) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "refusing frame");
                return Err(e);
            }
        };
        if buf.len() < HEADER_BYTES + body_len {
            buf.reserve(HEADER_BYTES + body_len - buf.len());
            return Ok(None);
        }
        let computed = crc32c::crc32c(&buf[HEADER_BYTES..HEADER_BYTES + body_len]);
        if computed != stored {
            let e = FrameError::BadChecksum {
                computed,
                stored,
                request_id,
            };
            tracing::warn!(error = %e, "refusing frame");
            return Err(e);
        }
        buf.advance(HEADER_BYTES);
        let body = buf.split_to(body_len).freeze();
        Ok(Some(Frame {
            kind,
            request_id,
            body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: FrameKind, id: u64, body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        encode_frame(&mut out, kind, id, body, &Limits::default()).unwrap();
        out
    }

    #[test]
    fn header_layout_is_pinned() {
        let bytes = frame(FrameKind::PeerMessages, 0x0102_0304_0506_0708, b"abc");
        assert_eq!(&bytes[0..4], b"CRUM");
        assert_eq!(bytes[4], 1);
        assert_eq!(bytes[5], 3);
        assert_eq!(&bytes[6..8], &[0, 0]);
        assert_eq!(&bytes[8..12], &3u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &crc32c::crc32c(b"abc").to_le_bytes());
        assert_eq!(&bytes[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[24..28], &crc32c::crc32c(&bytes[..24]).to_le_bytes());
        assert_eq!(&bytes[28..32], &[0, 0, 0, 0]);
        assert_eq!(&bytes[32..], b"abc");
    }

    #[test]
    fn decodes_byte_by_byte_then_several_at_once() {
        let mut all = frame(FrameKind::ClientRequests, 7, b"hello");
        all.extend_from_slice(&frame(FrameKind::ClientResponses, 8, b""));
        let dec = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in all.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].request_id, 7);
        assert_eq!(&got[0].body[..], b"hello");
        assert_eq!(got[1].kind, FrameKind::ClientResponses);
        assert!(buf.is_empty());
    }

    #[test]
    fn typed_errors() {
        let dec = FrameDecoder::default();
        let good = frame(FrameKind::ClientRequests, 9, b"body");

        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(
            dec.decode(&mut b),
            Err(FrameError::BadMagic { .. })
        ));

        let mut b = good.clone();
        b[9] ^= 1; // length changed without fixing the header crc
        assert!(matches!(
            dec.decode(&mut b),
            Err(FrameError::BadHeaderChecksum { .. })
        ));

        let mut b = good.clone();
        b[33] ^= 1;
        assert!(matches!(
            dec.decode(&mut b),
            Err(FrameError::BadChecksum { request_id: 9, .. })
        ));

        let reheader = |edit: &dyn Fn(&mut FrameHeader)| {
            let mut h = FrameHeader::new(FrameKind::ClientRequests, 9, b"body").unwrap();
            edit(&mut h);
            h.header_crc32c = U32::new(h.compute_header_crc());
            let mut b = BytesMut::from(h.as_bytes());
            b.extend_from_slice(b"body");
            b
        };
        let mut b = reheader(&|h| h.version = 2);
        assert_eq!(
            dec.decode(&mut b),
            Err(FrameError::UnsupportedVersion {
                found: 2,
                request_id: 9
            })
        );
        let mut b = reheader(&|h| h.kind = 200);
        assert_eq!(
            dec.decode(&mut b),
            Err(FrameError::UnknownKind {
                found: 200,
                request_id: 9
            })
        );
        let mut b = reheader(&|h| h.flags = U16::new(1));
        assert!(matches!(
            dec.decode(&mut b),
            Err(FrameError::ReservedBits { .. })
        ));
        let mut b = reheader(&|h| h.body_len = U32::new(u32::MAX));
        assert_eq!(
            dec.decode(&mut b),
            Err(FrameError::TooLarge {
                len: u64::from(u32::MAX) + 32,
                limit: 4 << 20,
                request_id: 9
            })
        );
    }

    #[test]
    fn encode_refuses_oversized() {
        let limits = Limits {
            frame_bytes_max: 40,
            ..Limits::default()
        };
        let mut out = BytesMut::new();
        assert!(encode_frame(&mut out, FrameKind::ClientRequests, 1, &[0; 8], &limits).is_ok());
        assert!(matches!(
            encode_frame(&mut out, FrameKind::ClientRequests, 1, &[0; 9], &limits),
            Err(FrameError::TooLarge {
                len: 41,
                limit: 40,
                ..
            })
        ));
    }
}
