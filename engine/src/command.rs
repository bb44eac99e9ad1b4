//! The command a partition's Raft log entry carries, and its binary encoding.
//!
//! A [`Command`] is what a leader proposes and what every replica's
//! [`StateMachine`](crate::state_machine::StateMachine) applies once the entry is committed:
//! a put, a delete or a transaction, optionally tagged with a client session for exactly-once
//! retries (Raft thesis §6.3).
//!
//! # Encoding, version 1
//!
//! Hand-written, little endian, every byte string length-prefixed. The whole entry data is one
//! command; bytes after it are an error.
//!
//! ```text
//! command  := version:u8 (=1) | kind:u8 | flags:u8 | session? | body
//! session  := client_id:u64 | sequence:u64 | first_unacked:u64
//!             present iff flags & HAS_SESSION; 1 <= sequence; first_unacked <= sequence
//! flags    := bit0 HAS_SESSION | bit1 IF_ABSENT (put only) | bit2 RETURN_PREV (put, delete);
//!             every other bit must be 0
//! kind 1 (put)    body := key:bytes | value:bytes
//! kind 2 (delete) body := key:bytes
//! kind 3 (txn)    body := n:u32 | compare{n} | n:u32 | op{n} (success) | n:u32 | op{n} (failure)
//! compare  := target:u8 | cmp:u8 | key:bytes | operand
//!             target 1 value            operand := bytes
//!             target 2 version          operand := u64
//!             target 3 create_revision  operand := u64
//!             target 4 mod_revision     operand := u64
//!             target 5 exists           operand := u8 (0 = absent, 1 = present)
//!             cmp    1 equal | 2 not_equal | 3 less | 4 greater
//! op       := kind:u8 | flags:u8 | key:bytes | value:bytes (put only)
//!             kind 1 put | 2 delete | 3 get;  flags: bit2 RETURN_PREV (put, delete), others 0
//! bytes    := len:u32 | len bytes
//! ```
//!
//! Rules checked by [`Command::decode`] (each failure is a typed [`DecodeError`] naming the byte
//! offset; decoding never panics): the version is 1; tags and flags are known; keys are
//! non-empty; a session's sequence is at least 1 and its `first_unacked` at most its sequence;
//! key / value lengths and transaction list lengths are within [`Limits`]; no trailing bytes.
//!
//! Decoding is zero-copy: keys and values are [`Bytes::slice`]s of the entry's data.
//!
//! # Transactions
//!
//! Like etcd's `Txn`: every compare is evaluated against the state before the transaction; if
//! all hold, the `success` ops run in order, otherwise the `failure` ops run in order. A `get`
//! reads one key (a range read inside a transaction is not supported yet). The whole
//! transaction is one revision.

use bytes::Bytes;
use thiserror::Error;

use crate::codec::{put_bytes, put_u32, put_u64, put_u8, Reader, Truncated};

/// The encoding version this module writes and reads.
pub const COMMAND_VERSION: u8 = 1;

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_TXN: u8 = 3;

const FLAG_HAS_SESSION: u8 = 1 << 0;
const FLAG_IF_ABSENT: u8 = 1 << 1;
const FLAG_RETURN_PREV: u8 = 1 << 2;

const TARGET_VALUE: u8 = 1;
const TARGET_VERSION: u8 = 2;
const TARGET_CREATE: u8 = 3;
const TARGET_MOD: u8 = 4;
const TARGET_EXISTS: u8 = 5;

const CMP_EQUAL: u8 = 1;
const CMP_NOT_EQUAL: u8 = 2;
const CMP_LESS: u8 = 3;
const CMP_GREATER: u8 = 4;

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_GET: u8 = 3;

/// Smallest encoding of one compare (target, cmp, empty-key length, smallest operand); used to
/// bound pre-allocation by the bytes actually present.
const COMPARE_BYTES_MIN: usize = 1 + 1 + 4 + 1;
/// Smallest encoding of one txn op.
const OP_BYTES_MIN: usize = 1 + 1 + 4;

/// Size limits enforced when a command is validated or decoded.
///
/// The defaults match the wire protocol's documented limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes (default 8 KiB).
    pub key_bytes_max: usize,
    /// Longest value, in bytes (default 1 MiB).
    pub value_bytes_max: usize,
    /// Most compares in one transaction (default 128).
    pub txn_compares_max: usize,
    /// Most ops in one transaction branch (default 128).
    pub txn_ops_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_bytes_max: 8 * 1024,
            value_bytes_max: 1024 * 1024,
            txn_compares_max: 128,
            txn_ops_max: 128,
        }
    }
}

impl Limits {
    /// The limits of the format itself (a `u32` length): use these when decoding entries that
    /// are already committed. A committed entry must be applied identically on every replica, so
    /// it must not be judged against a limit that could differ between nodes or across a
    /// configuration change; the configured limits are enforced on the proposal path instead.
    /// Decoding stays memory-safe: allocation is bounded by the input length.
    pub const FORMAT: Limits = Limits {
        key_bytes_max: u32::MAX as usize,
        value_bytes_max: u32::MAX as usize,
        txn_compares_max: u32::MAX as usize,
        txn_ops_max: u32::MAX as usize,
    };
}

/// What a size limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// A key's length in bytes.
    Key,
    /// A value's length in bytes.
    Value,
    /// The number of compares of a transaction.
    TxnCompares,
    /// The number of ops in one branch of a transaction.
    TxnOps,
}

impl std::fmt::Display for Limited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Limited::Key => "key bytes",
            Limited::Value => "value bytes",
            Limited::TxnCompares => "txn compares",
            Limited::TxnOps => "txn ops per branch",
        })
    }
}

/// A client session tag for exactly-once writes (Raft thesis §6.3; the rules are in
/// [`crate::state_machine`], "Exactly-once sessions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Session {
    /// The client's session id.
    pub client_id: u64,
    /// This write's sequence number: unique per write within the session, counted across all
    /// partitions (so a partition sees gaps), starting at 1. Every retry of the write carries
    /// the same number.
    pub sequence: u64,
    /// The lowest sequence number for which the client does not yet have a response; every
    /// lower one has been answered, so the state machine may drop their cached results.
    /// At most `sequence` (this write is itself unanswered); 0 and 1 both acknowledge nothing.
    pub first_unacked: u64,
}

/// One command of a partition's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The client session, if the client asked for exactly-once retries.
    pub session: Option<Session>,
    /// What to do.
    pub op: CommandOp,
}

/// The operation of a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOp {
    /// Write a key.
    Put(Put),
    /// Delete a key.
    Delete(Delete),
    /// An atomic compare-then-ops transaction.
    Txn(Txn),
}

impl CommandOp {
    /// Whether applying the operation can change no key: a transaction whose branches hold
    /// only gets. The server proposes such a transaction without a session when a client sent
    /// its session with sequence 0 (older clients did, treating it as a read), instead of
    /// refusing it: exactly-once only matters for commands that change state. Applying a
    /// read-only transaction again (a retry) changes nothing and answers with the state at its
    /// new log position, which is still linearizable: the answer reflects every write
    /// committed before the retry was applied. It never touches the session table either, so
    /// it cannot move a session's `first_unacked` or evict a cached result.
    pub fn is_read_only(&self) -> bool {
        match self {
            CommandOp::Put(_) | CommandOp::Delete(_) => false,
            CommandOp::Txn(t) => t
                .success
                .iter()
                .chain(&t.failure)
                .all(|o| matches!(o, TxnOp::Get { .. })),
        }
    }
}

/// Write `value` at `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// The key (non-empty).
    pub key: Bytes,
    /// The value (may be empty).
    pub value: Bytes,
    /// Only write if the key does not exist (put-if-absent).
    pub if_absent: bool,
    /// Return the previous key-value, if any.
    pub return_prev: bool,
}

/// Delete `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The key (non-empty).
    pub key: Bytes,
    /// Return the deleted key-value, if any.
    pub return_prev: bool,
}

/// A transaction: if every compare holds, run `success`, else run `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    /// Conditions, all evaluated against the state before the transaction.
    pub compares: Vec<Compare>,
    /// Ops run in order when every compare holds.
    pub success: Vec<TxnOp>,
    /// Ops run in order otherwise.
    pub failure: Vec<TxnOp>,
}

/// One condition of a transaction: `key.target cmp operand`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    /// The key to look at (non-empty).
    pub key: Bytes,
    /// The comparison.
    pub cmp: CompareOp,
    /// The attribute and the operand to compare it with.
    pub target: CompareTarget,
}

/// The attribute of a key a [`Compare`] tests, with the operand.
///
/// For a missing key, version, create revision and mod revision are 0 (as in etcd), `exists`
/// is false, and every value comparison is false.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value, compared bytewise (lexicographically).
    Value(Bytes),
    /// The key's version (number of puts since it was created).
    Version(u64),
    /// The revision that created the key.
    CreateRevision(u64),
    /// The revision that last modified the key.
    ModRevision(u64),
    /// Whether the key exists (ordered `false < true` for less / greater).
    Exists(bool),
}

/// The comparison operator of a [`Compare`]: `attribute OP operand`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// `<`
    Less,
    /// `>`
    Greater,
}

impl CompareOp {
    /// Whether `ord` (attribute compared with operand) satisfies this operator.
    pub fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            CompareOp::Equal => ord == Equal,
            CompareOp::NotEqual => ord != Equal,
            CompareOp::Less => ord == Less,
            CompareOp::Greater => ord == Greater,
        }
    }
}

/// One operation inside a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Write a key.
    Put {
        /// The key (non-empty).
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Return the previous key-value.
        return_prev: bool,
    },
    /// Delete a key.
    Delete {
        /// The key (non-empty).
        key: Bytes,
        /// Return the deleted key-value.
        return_prev: bool,
    },
    /// Read one key (as it is after the preceding ops of the branch).
    Get {
        /// The key (non-empty).
        key: Bytes,
    },
}

impl TxnOp {
    /// The key this op touches.
    pub fn key(&self) -> &Bytes {
        match self {
            TxnOp::Put { key, .. } | TxnOp::Delete { key, .. } | TxnOp::Get { key } => key,
        }
    }
}

/// A command that breaks a rule before it is even encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidCommand {
    /// A size limit was exceeded.
    #[error("{what} too large: {len} > limit {max}")]
    TooLarge {
        /// What was too large.
        what: Limited,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A key was empty.
    #[error("empty key")]
    EmptyKey,
    /// A session sequence number was 0 (they start at 1).
    #[error("session sequence number 0 (sequences start at 1)")]
    ZeroSequence,
    /// A session's `first_unacked` is above its sequence (the write itself is unanswered).
    #[error("session first_unacked {first_unacked} is above the sequence {sequence}")]
    FirstUnackedAboveSequence {
        /// The first unacknowledged sequence number.
        first_unacked: u64,
        /// The command's sequence number.
        sequence: u64,
    },
}

/// Why bytes are not a valid command. Every variant names the byte offset where decoding
/// stopped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("command truncated at byte {offset}: {field} needs {needed} bytes, {available} left")]
    Truncated {
        /// Offset of the field.
        offset: usize,
        /// Which field.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// The version byte is not one this build reads.
    #[error("unsupported command encoding version {version} at byte {offset} (this build reads {COMMAND_VERSION})")]
    UnsupportedVersion {
        /// Offset of the version byte.
        offset: usize,
        /// The version found.
        version: u8,
    },
    /// A tag byte (command kind, compare target, compare operator, op kind) is unknown.
    #[error("unknown {what} tag {tag} at byte {offset}")]
    UnknownTag {
        /// Offset of the tag.
        offset: usize,
        /// Which tag.
        what: &'static str,
        /// The value found.
        tag: u8,
    },
    /// A flags byte has bits set that are not defined for its command or op kind.
    #[error("undefined flag bits {flags:#04x} in {what} at byte {offset}")]
    UnknownFlags {
        /// Offset of the flags byte.
        offset: usize,
        /// Whose flags.
        what: &'static str,
        /// The undefined bits.
        flags: u8,
    },
    /// A size limit was exceeded.
    #[error("{what} too large at byte {offset}: {len} > limit {max}")]
    TooLarge {
        /// Offset of the length field.
        offset: usize,
        /// What was too large.
        what: Limited,
        /// The length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A key was empty.
    #[error("empty key at byte {offset}")]
    EmptyKey {
        /// Offset of the key's length field.
        offset: usize,
    },
    /// A session sequence number was 0.
    #[error("session sequence number 0 at byte {offset}")]
    ZeroSequence {
        /// Offset of the sequence field.
        offset: usize,
    },
    /// A session's `first_unacked` is above its sequence.
    #[error(
        "session first_unacked {first_unacked} at byte {offset} is above the sequence {sequence}"
    )]
    FirstUnackedAboveSequence {
        /// Offset of the `first_unacked` field.
        offset: usize,
        /// The value found.
        first_unacked: u64,
        /// The command's sequence number.
        sequence: u64,
    },
    /// An `exists` operand was neither 0 nor 1.
    #[error("exists operand {value} at byte {offset} (must be 0 or 1)")]
    BadBool {
        /// Offset of the operand.
        offset: usize,
        /// The value found.
        value: u8,
    },
    /// Bytes follow the command.
    #[error("{len} trailing bytes after the command at byte {offset}")]
    TrailingBytes {
        /// Offset of the first trailing byte.
        offset: usize,
        /// How many.
        len: usize,
    },
}

impl From<Truncated> for DecodeError {
    fn from(t: Truncated) -> Self {
        DecodeError::Truncated {
            offset: t.offset,
            field: t.field,
            needed: t.needed,
            available: t.available,
        }
    }
}

fn check_len(what: Limited, len: usize, max: usize) -> Result<(), InvalidCommand> {
    if len > max {
        Err(InvalidCommand::TooLarge { what, len, max })
    } else {
        Ok(())
    }
}

fn check_key(key: &[u8], limits: &Limits) -> Result<(), InvalidCommand> {
    if key.is_empty() {
        return Err(InvalidCommand::EmptyKey);
    }
    check_len(Limited::Key, key.len(), limits.key_bytes_max)
}

fn check_ops(ops: &[TxnOp], limits: &Limits) -> Result<(), InvalidCommand> {
    check_len(Limited::TxnOps, ops.len(), limits.txn_ops_max)?;
    for op in ops {
        check_key(op.key(), limits)?;
        if let TxnOp::Put { value, .. } = op {
            check_len(Limited::Value, value.len(), limits.value_bytes_max)?;
        }
    }
    Ok(())
}

impl Command {
    /// A put without session.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Command {
        Command {
            session: None,
            op: CommandOp::Put(Put {
                key: key.into(),
                value: value.into(),
                if_absent: false,
                return_prev: false,
            }),
        }
    }

    /// A delete without session.
    pub fn delete(key: impl Into<Bytes>) -> Command {
        Command {
            session: None,
            op: CommandOp::Delete(Delete {
                key: key.into(),
                return_prev: false,
            }),
        }
    }

    /// This command tagged with a session.
    pub fn with_session(mut self, client_id: u64, sequence: u64, first_unacked: u64) -> Command {
        self.session = Some(Session {
            client_id,
            sequence,
            first_unacked,
        });
        self
    }

    /// Checks the rules [`Command::decode`] enforces, before a command is proposed: non-empty
    /// keys, `1 <= sequence`, `first_unacked <= sequence`, and `limits`.
    pub fn validate(&self, limits: &Limits) -> Result<(), InvalidCommand> {
        if let Some(s) = self.session {
            if s.sequence == 0 {
                return Err(InvalidCommand::ZeroSequence);
            }
            if s.first_unacked > s.sequence {
                return Err(InvalidCommand::FirstUnackedAboveSequence {
                    first_unacked: s.first_unacked,
                    sequence: s.sequence,
                });
            }
        }
        match &self.op {
            CommandOp::Put(p) => {
                check_key(&p.key, limits)?;
                check_len(Limited::Value, p.value.len(), limits.value_bytes_max)
            }
            CommandOp::Delete(d) => check_key(&d.key, limits),
            CommandOp::Txn(t) => {
                check_len(
                    Limited::TxnCompares,
                    t.compares.len(),
                    limits.txn_compares_max,
                )?;
                for c in &t.compares {
                    check_key(&c.key, limits)?;
                    if let CompareTarget::Value(v) = &c.target {
                        check_len(Limited::Value, v.len(), limits.value_bytes_max)?;
                    }
                }
                check_ops(&t.success, limits)?;
                check_ops(&t.failure, limits)
            }
        }
    }

    /// The exact length of this command's encoding.
    pub fn encoded_len(&self) -> usize {
        let mut n = 3 + if self.session.is_some() { 24 } else { 0 };
        match &self.op {
            CommandOp::Put(p) => n += 8 + p.key.len() + p.value.len(),
            CommandOp::Delete(d) => n += 4 + d.key.len(),
            CommandOp::Txn(t) => {
                n += 12;
                for c in &t.compares {
                    n += 2 + 4 + c.key.len();
                    n += match &c.target {
                        CompareTarget::Value(v) => 4 + v.len(),
                        CompareTarget::Exists(_) => 1,
                        _ => 8,
                    };
                }
                for op in t.success.iter().chain(&t.failure) {
                    n += 2 + 4 + op.key().len();
                    if let TxnOp::Put { value, .. } = op {
                        n += 4 + value.len();
                    }
                }
            }
        }
        n
    }

    /// Appends the encoding (module docs) to `out`.
    ///
    /// The command should have passed [`Command::validate`]; a key or value longer than
    /// `u32::MAX` bytes cannot be represented and panics (no limit allows it).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        put_u8(out, COMMAND_VERSION);
        let mut flags = if self.session.is_some() {
            FLAG_HAS_SESSION
        } else {
            0
        };
        let kind = match &self.op {
            CommandOp::Put(p) => {
                if p.if_absent {
                    flags |= FLAG_IF_ABSENT;
                }
                if p.return_prev {
                    flags |= FLAG_RETURN_PREV;
                }
                KIND_PUT
            }
            CommandOp::Delete(d) => {
                if d.return_prev {
                    flags |= FLAG_RETURN_PREV;
                }
                KIND_DELETE
            }
            CommandOp::Txn(_) => KIND_TXN,
        };
        put_u8(out, kind);
        put_u8(out, flags);
        if let Some(s) = self.session {
            put_u64(out, s.client_id);
            put_u64(out, s.sequence);
            put_u64(out, s.first_unacked);
        }
        match &self.op {
            CommandOp::Put(p) => {
                put_bytes(out, &p.key);
                put_bytes(out, &p.value);
            }
            CommandOp::Delete(d) => put_bytes(out, &d.key),
            CommandOp::Txn(t) => {
                put_u32(out, t.compares.len() as u32);
                for c in &t.compares {
                    let (target, operand_u64) = match &c.target {
                        CompareTarget::Value(_) => (TARGET_VALUE, 0),
                        CompareTarget::Version(v) => (TARGET_VERSION, *v),
                        CompareTarget::CreateRevision(v) => (TARGET_CREATE, *v),
                        CompareTarget::ModRevision(v) => (TARGET_MOD, *v),
                        CompareTarget::Exists(_) => (TARGET_EXISTS, 0),
                    };
                    put_u8(out, target);
                    put_u8(
                        out,
                        match c.cmp {
                            CompareOp::Equal => CMP_EQUAL,
                            CompareOp::NotEqual => CMP_NOT_EQUAL,
                            CompareOp::Less => CMP_LESS,
                            CompareOp::Greater => CMP_GREATER,
                        },
                    );
                    put_bytes(out, &c.key);
                    match &c.target {
                        CompareTarget::Value(v) => put_bytes(out, v),
                        CompareTarget::Exists(b) => put_u8(out, u8::from(*b)),
                        _ => put_u64(out, operand_u64),
                    }
                }
                for ops in [&t.success, &t.failure] {
                    put_u32(out, ops.len() as u32);
                    for op in ops {
                        match op {
                            TxnOp::Put {
                                key,
                                value,
                                return_prev,
                            } => {
                                put_u8(out, OP_PUT);
                                put_u8(out, if *return_prev { FLAG_RETURN_PREV } else { 0 });
                                put_bytes(out, key);
                                put_bytes(out, value);
                            }
                            TxnOp::Delete { key, return_prev } => {
                                put_u8(out, OP_DELETE);
                                put_u8(out, if *return_prev { FLAG_RETURN_PREV } else { 0 });
                                put_bytes(out, key);
                            }
                            TxnOp::Get { key } => {
                                put_u8(out, OP_GET);
                                put_u8(out, 0);
                                put_bytes(out, key);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The encoding as a [`Bytes`] (the data of a Raft log entry).
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        Bytes::from(out)
    }

    /// Decodes one command from a log entry's data. Keys and values are zero-copy slices of
    /// `data`, so they keep `data`'s buffer alive (see
    /// [`StateMachine::apply_entry`](crate::state_machine::StateMachine::apply_entry) on what
    /// buffer to hand in).
    pub fn decode(data: &Bytes, limits: &Limits) -> Result<Command, DecodeError> {
        let result = Decoder {
            src: data,
            r: Reader::new(data),
            limits,
        }
        .command();
        if let Err(e) = &result {
            tracing::warn!(error = %e, len = data.len(), "malformed command");
        }
        result
    }
}

struct Decoder<'a> {
    src: &'a Bytes,
    r: Reader<'a>,
    limits: &'a Limits,
}

impl Decoder<'_> {
    fn command(mut self) -> Result<Command, DecodeError> {
        let off = self.r.offset();
        let version = self.r.u8("version")?;
        if version != COMMAND_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                offset: off,
                version,
            });
        }
        let kind_off = self.r.offset();
        let kind = self.r.u8("command kind")?;
        let flags_off = self.r.offset();
        let flags = self.r.u8("command flags")?;
        let allowed = FLAG_HAS_SESSION
            | match kind {
                KIND_PUT => FLAG_IF_ABSENT | FLAG_RETURN_PREV,
                KIND_DELETE => FLAG_RETURN_PREV,
                KIND_TXN => 0,
                tag => {
                    return Err(DecodeError::UnknownTag {
                        offset: kind_off,
                        what: "command kind",
                        tag,
                    })
                }
            };
        if flags & !allowed != 0 {
            return Err(DecodeError::UnknownFlags {
                offset: flags_off,
                what: "command",
                flags: flags & !allowed,
            });
        }
        let session = if flags & FLAG_HAS_SESSION != 0 {
            let client_id = self.r.u64("session client id")?;
            let seq_off = self.r.offset();
            let sequence = self.r.u64("session sequence")?;
            if sequence == 0 {
                return Err(DecodeError::ZeroSequence { offset: seq_off });
            }
            let unacked_off = self.r.offset();
            let first_unacked = self.r.u64("session first_unacked")?;
            if first_unacked > sequence {
                return Err(DecodeError::FirstUnackedAboveSequence {
                    offset: unacked_off,
                    first_unacked,
                    sequence,
                });
            }
            Some(Session {
                client_id,
                sequence,
                first_unacked,
            })
        } else {
            None
        };
        let op = match kind {
            KIND_PUT => CommandOp::Put(Put {
                key: self.key()?,
                value: self.value()?,
                if_absent: flags & FLAG_IF_ABSENT != 0,
                return_prev: flags & FLAG_RETURN_PREV != 0,
            }),
            KIND_DELETE => CommandOp::Delete(Delete {
                key: self.key()?,
                return_prev: flags & FLAG_RETURN_PREV != 0,
            }),
            _ => CommandOp::Txn(self.txn()?),
        };
        if self.r.remaining() != 0 {
            return Err(DecodeError::TrailingBytes {
                offset: self.r.offset(),
                len: self.r.remaining(),
            });
        }
        Ok(Command { session, op })
    }

    fn bytes(
        &mut self,
        what: Limited,
        max: usize,
        field: &'static str,
    ) -> Result<Bytes, DecodeError> {
        let off = self.r.offset();
        let len = self.r.u32(field)? as usize;
        if len > max {
            return Err(DecodeError::TooLarge {
                offset: off,
                what,
                len,
                max,
            });
        }
        let range = self.r.range(len, field)?;
        Ok(self.src.slice(range))
    }

    fn key(&mut self) -> Result<Bytes, DecodeError> {
        let off = self.r.offset();
        let key = self.bytes(Limited::Key, self.limits.key_bytes_max, "key")?;
        if key.is_empty() {
            return Err(DecodeError::EmptyKey { offset: off });
        }
        Ok(key)
    }

    fn value(&mut self) -> Result<Bytes, DecodeError> {
        self.bytes(Limited::Value, self.limits.value_bytes_max, "value")
    }

    fn count(
        &mut self,
        what: Limited,
        max: usize,
        item_bytes_min: usize,
        field: &'static str,
    ) -> Result<(usize, usize), DecodeError> {
        let off = self.r.offset();
        let n = self.r.u32(field)? as usize;
        if n > max {
            return Err(DecodeError::TooLarge {
                offset: off,
                what,
                len: n,
                max,
            });
        }
        // Never reserve more than the remaining bytes could hold.
        Ok((n, n.min(self.r.remaining() / item_bytes_min)))
    }

    fn txn(&mut self) -> Result<Txn, DecodeError> {
        let (n, cap) = self.count(
            Limited::TxnCompares,
            self.limits.txn_compares_max,
            COMPARE_BYTES_MIN,
            "compare count",
        )?;
        let mut compares = Vec::with_capacity(cap);
        for _ in 0..n {
            compares.push(self.compare()?);
        }
        let success = self.ops()?;
        let failure = self.ops()?;
        Ok(Txn {
            compares,
            success,
            failure,
        })
    }

    fn compare(&mut self) -> Result<Compare, DecodeError> {
        let target_off = self.r.offset();
        let target = self.r.u8("compare target")?;
        if !(TARGET_VALUE..=TARGET_EXISTS).contains(&target) {
            return Err(DecodeError::UnknownTag {
                offset: target_off,
                what: "compare target",
                tag: target,
            });
        }
        let cmp_off = self.r.offset();
        let cmp = match self.r.u8("compare operator")? {
            CMP_EQUAL => CompareOp::Equal,
            CMP_NOT_EQUAL => CompareOp::NotEqual,
            CMP_LESS => CompareOp::Less,
            CMP_GREATER => CompareOp::Greater,
            tag => {
                return Err(DecodeError::UnknownTag {
                    offset: cmp_off,
                    what: "compare operator",
                    tag,
                })
            }
        };
        let key = self.key()?;
        let target = match target {
            TARGET_VALUE => CompareTarget::Value(self.value()?),
            TARGET_VERSION => CompareTarget::Version(self.r.u64("compare operand")?),
            TARGET_CREATE => CompareTarget::CreateRevision(self.r.u64("compare operand")?),
            TARGET_MOD => CompareTarget::ModRevision(self.r.u64("compare operand")?),
            _ => {
                let off = self.r.offset();
                match self.r.u8("compare operand")? {
                    0 => CompareTarget::Exists(false),
                    1 => CompareTarget::Exists(true),
                    value => return Err(DecodeError::BadBool { offset: off, value }),
                }
            }
        };
        Ok(Compare { key, cmp, target })
    }

    fn ops(&mut self) -> Result<Vec<TxnOp>, DecodeError> {
        let (n, cap) = self.count(
            Limited::TxnOps,
            self.limits.txn_ops_max,
            OP_BYTES_MIN,
            "op count",
        )?;
        let mut ops = Vec::with_capacity(cap);
        for _ in 0..n {
            let kind_off = self.r.offset();
            let kind = self.r.u8("op kind")?;
            let flags_off = self.r.offset();
            let flags = self.r.u8("op flags")?;
            let allowed = match kind {
                OP_PUT | OP_DELETE => FLAG_RETURN_PREV,
                OP_GET => 0,
                tag => {
                    return Err(DecodeError::UnknownTag {
                        offset: kind_off,
                        what: "op kind",
                        tag,
                    })
                }
            };
            if flags & !allowed != 0 {
                return Err(DecodeError::UnknownFlags {
                    offset: flags_off,
                    what: "op",
                    flags: flags & !allowed,
                });
            }
            let return_prev = flags & FLAG_RETURN_PREV != 0;
            let key = self.key()?;
            ops.push(match kind {
                OP_PUT => TxnOp::Put {
                    key,
                    value: self.value()?,
                    return_prev,
                },
                OP_DELETE => TxnOp::Delete { key, return_prev },
                _ => TxnOp::Get { key },
            });
        }
        Ok(ops)
    }
}
