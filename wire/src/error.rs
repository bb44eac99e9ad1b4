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
    /// A message whose encoded body (estimated before encoding, an upper bound) would not fit a
    /// frame: e.g. a transaction of many values, each under the value limit.
    #[error("encoded body of up to {len} bytes exceeds the limit of {limit} bytes")]
    BodyTooLarge {
        /// Upper bound of the encoded body in bytes.
        len: usize,
        /// The largest body a frame may carry ([`Limits::body_bytes_max`](crate::Limits::body_bytes_max)).
        limit: usize,
    },
    /// A field breaks a rule of its message (the rule is named).
    #[error("invalid message: {0}")]
    Invalid(&'static str),
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
    /// At debug level: every caller reports the error with who sent the body (the server's
    /// log lines are rate-limited per call site; anyone can send garbage at will).
    pub(crate) fn logged(self, what: &'static str) -> Self {
        tracing::debug!(error = %self, body = what, "refusing frame body");
        self
    }
}

impl DecodeError {
    /// The typed error a server sends back (as `ResponseBatch.frame_error`) for a frame whose
    /// body failed to decode: `TooLarge` for key/value/batch limits, else `InvalidArgument`.
    pub fn to_server_error(&self) -> crate::messages::ServerError {
        use crate::messages::ServerError;
        match self {
            DecodeError::KeyTooLarge { limit, .. }
            | DecodeError::ValueTooLarge { limit, .. }
            | DecodeError::TooManyItems { limit, .. }
            | DecodeError::BodyTooLarge { limit, .. } => ServerError::TooLarge {
                limit: *limit as u64,
            },
            other => ServerError::InvalidArgument {
                reason: other.to_string(),
            },
        }
    }
}

impl crate::frame::FrameError {
    /// The typed error a server sends back for a refused frame, when
    /// [`request_id`](crate::frame::FrameError::request_id) gives an id to address it to (the
    /// connection is closed afterwards): `TooLarge` for oversized frames, else
    /// `InvalidArgument`.
    pub fn to_server_error(&self) -> crate::messages::ServerError {
        use crate::messages::ServerError;
        match self {
            crate::frame::FrameError::TooLarge { limit, .. } => {
                ServerError::TooLarge { limit: *limit }
            }
            other => ServerError::InvalidArgument {
                reason: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameError;
    use crate::messages::ServerError;

    #[test]
    fn errors_map_to_typed_replies() {
        let e = DecodeError::ValueTooLarge { len: 9, limit: 8 };
        assert_eq!(e.to_server_error(), ServerError::TooLarge { limit: 8 });
        let e = DecodeError::MissingField("Request.op");
        assert_eq!(
            e.to_server_error(),
            ServerError::InvalidArgument {
                reason: "missing field Request.op".into()
            }
        );
        let e = FrameError::TooLarge {
            len: 10,
            limit: 5,
            request_id: 3,
        };
        assert_eq!(e.request_id(), Some(3));
        assert_eq!(e.to_server_error(), ServerError::TooLarge { limit: 5 });
        let e = FrameError::UnknownKind {
            found: 9,
            request_id: 4,
        };
        assert!(matches!(
            e.to_server_error(),
            ServerError::InvalidArgument { .. }
        ));
        assert_eq!(FrameError::BadMagic { found: *b"HTTP" }.request_id(), None);
    }
}
