//! Errors from decoding a frame body.

use crate::frame::FrameKind;
use crate::map::MapError;

/// Why a (checksum-verified) frame body could not be decoded. The connection may stay open:
/// the frame boundary is known, so the server replies with a typed error for this frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The flatbuffers verifier refused the body (bad offsets, depth or table limits, ...).
    #[error("body failed verification: {0}")]
    InvalidBody(#[from] flatbuffers::InvalidFlatbuffer),
    /// An enum or union field holds a value this version does not know.
    #[error("unknown value {value} in field {field}")]
    UnknownEnum {
        /// The field.
        field: &'static str,
        /// The value found.
        value: u8,
    },
    /// A required field is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A key longer than `Limits::key_bytes_max`.
    #[error("key of {len} bytes exceeds the limit of {limit} bytes")]
    KeyTooLarge {
        /// Key length in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A value longer than `Limits::value_bytes_max`.
    #[error("value of {len} bytes exceeds the limit of {limit} bytes")]
    ValueTooLarge {
        /// Value length in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// More items in one batch than `Limits::batch_items_max`.
    #[error("{len} items in one batch exceed the limit of {limit}")]
    TooManyItems {
        /// Number of items.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A cluster map that breaks its invariants.
    #[error(transparent)]
    InvalidMap(#[from] MapError),
    /// The frame kind does not carry this body.
    #[error("frame kind {found:?} where {expected:?} was expected")]
    WrongKind {
        /// The kind wanted.
        expected: FrameKind,
        /// The kind found.
        found: FrameKind,
    },
}

impl DecodeError {
    /// Logs this error with its context and returns it (decoders call this on every failure).
    pub(crate) fn logged(self, what: &'static str) -> Self {
        tracing::warn!(error = %self, body = what, "refusing frame body");
        self
    }
}
