//! A partition's state as a checksummed, versioned snapshot, in memory and in files.
//!
//! Raft compacts its log behind a snapshot and sends snapshots to lagging or new replicas
//! (Raft §7 / thesis chapter 5). A snapshot holds everything [`StateMachine::apply`] depends on:
//! the key-values with their metadata, the revision, the applied index and term, and the
//! session table with every session's `first_unacked` and cached results (thesis §6.3: the
//! sessions must be in the snapshot, or a retry applied after a restore would be applied
//! twice). The Raft membership at the applied index is stored as an
//! opaque blob the caller supplies (the engine encodes its Raft configuration state into it).
//!
//! [`StateMachine::apply`]: crate::state_machine::StateMachine::apply
//!
//! # Format, version 2 (version 1 is still read)
//!
//! Little endian. Fixed 64-byte header, then the membership blob, then the body, then a
//! trailer checksum.
//!
//! ```text
//! offset  size  field
//!      0     8  magic  "CORUMSNP"
//!      8     4  format version (=2; 1 is read too)
//!     12     4  reserved, 0
//!     16     8  partition id
//!     24     8  applied index
//!     32     8  applied term
//!     40     8  revision
//!     48     4  membership blob length  m
//!     52     8  body length             b
//!     60     4  crc32c of bytes 0..60   (header checksum: lengths are trusted only after it)
//!     64     m  membership blob (opaque)
//!   64+m     b  body
//! 64+m+b     4  crc32c of bytes 0..64+m+b (everything before it)
//!
//! body     := kv_count:u64 | kv{kv_count} | session_count:u64 | session{session_count}
//!             | history                              (version 2 only)
//! kv       := key:bytes | value:bytes | create_revision:u64 | mod_revision:u64 | version:u64
//!             keys non-empty and strictly ascending; 1 <= create <= mod <= revision; version >= 1
//! session  := client_id:u64 | first_unacked:u64 | last_index:u64 | result_count:u32
//!             | cached{result_count}
//!             client ids strictly ascending; last_index <= applied index, distinct
//! cached   := sequence:u64 | response
//!             sequences strictly ascending, each >= 1 and >= the session's first_unacked
//! response := revision:u64 | kind:u8 | ...   (revision <= the snapshot's revision)
//!             kind 1 put:    flags:u8 (bit0 written, bit1 has prev) | kvval?
//!             kind 2 delete: flags:u8 (bit0 deleted, bit1 has prev) | kvval?
//!             kind 3 txn:    succeeded:u8 (0|1) | n:u32 | result{n}
//! result   := kind:u8 (1 put, 2 delete, 3 get) | flags:u8 (bit0 deleted, bit1 has kv) | kvval?
//! kvval    := value:bytes | create_revision:u64 | mod_revision:u64 | version:u64
//! bytes    := len:u32 | len bytes
//! history  := compacted:u64 | key_count:u64 | hkey{key_count}
//!             compacted <= revision
//! hkey     := key:bytes | n:u32 | old{n}
//!             keys non-empty and strictly ascending; n >= 1
//! old      := kvval | until:u64
//!             1 <= create <= mod < until <= revision; compacted < until; version >= 1;
//!             each old version's until <= the next one's mod revision (or the current
//!             version's, if the key exists), and the next one either continues it (same
//!             create, a higher version, mod = until) or starts a new life (create = mod
//!             >= until): `state_machine::follows`
//! ```
//!
//! A version-1 snapshot has no history: it is read with the compaction point at its revision
//! (only the current revision is readable).
//!
//! Encoding is deterministic: equal state machines give identical bytes.
//!
//! [`decode`] checks the header checksum, then that the file is exactly as long as the header
//! says, then the whole-file checksum, then every rule of the body; each failure is a typed
//! [`SnapshotError`] naming the byte offset. It never panics and allocates no more than the
//! input's size justifies.
//!
//! # Files
//!
//! [`write_file`] writes to a temporary file in the target directory, fsyncs it, renames it into
//! place and fsyncs the directory, so a crash leaves either the old state or the complete new
//! file, never a partial file under the final name. A failed fsync must be treated as fatal by
//! the caller (retrying it can silently lose data).
//!
//! TODO(engine issue): these use blocking `std::fs`. Called from a glommio shard, writing a
//! large snapshot would stall every partition of that shard; the engine must move it off the
//! shard's hot path (a blocking thread pool such as glommio's `spawn_blocking`, or glommio's
//! streaming DMA writer over the [`encode`]d bytes) and decide which. Encoding itself is a
//! single pass over the map (clone the state machine or encode between applies).

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use thiserror::Error;

use crate::codec::{put_bytes, put_u32, put_u64, put_u8, Reader, Truncated};
use crate::state_machine::{
    Config, KeyValue, OldVersion, OpResult, Response, ResponseOp, SessionRecord, SessionTable,
    StateMachine,
};

/// The file magic.
pub const MAGIC: [u8; 8] = *b"CORUMSNP";
/// The format version this module writes (it reads this one and version 1).
pub const FORMAT_VERSION: u32 = 2;
/// Size of the fixed header, checksum included.
pub const HEADER_BYTES: usize = 64;
/// Size of the trailer checksum.
pub const TRAILER_BYTES: usize = 4;
/// File name suffix of snapshot files.
pub const FILE_SUFFIX: &str = ".corumsnap";

const OFF_VERSION: usize = 8;
const OFF_RESERVED: usize = 12;
const OFF_PARTITION: usize = 16;
const OFF_INDEX: usize = 24;
const OFF_TERM: usize = 32;
const OFF_REVISION: usize = 40;
const OFF_MEMBERSHIP_LEN: usize = 48;
const OFF_BODY_LEN: usize = 52;
const OFF_HEADER_CRC: usize = 60;
// The layout above is the documented one: pinned at compile time.
const _: () = assert!(OFF_VERSION == MAGIC.len());
const _: () = assert!(OFF_MEMBERSHIP_LEN + 4 == OFF_BODY_LEN);
const _: () = assert!(OFF_BODY_LEN + 8 == OFF_HEADER_CRC);
const _: () = assert!(OFF_HEADER_CRC + 4 == HEADER_BYTES);

/// Smallest encodings, to bound pre-allocation by what the input can hold.
const KV_BYTES_MIN: usize = 4 + 4 + 24;
/// Smallest session: client id, first_unacked, last index, result count.
const SESSION_BYTES_MIN: usize = 8 + 8 + 8 + 4;
/// Smallest cached result: sequence, revision, kind, flags.
const CACHED_BYTES_MIN: usize = 8 + 8 + 1 + 1;

/// The header fields of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The partition.
    pub partition_id: u64,
    /// Index of the last entry the state includes.
    pub applied_index: u64,
    /// Term of that entry.
    pub applied_term: u64,
    /// The partition's revision.
    pub revision: u64,
    /// The caller's membership blob (the Raft configuration at `applied_index`).
    pub membership: Bytes,
}

/// A decoded snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The header.
    pub meta: SnapshotMeta,
    /// The restored state machine.
    pub state: StateMachine,
}

/// Why bytes are not a valid snapshot. Every variant names a byte offset.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The input ended inside a field.
    #[error("snapshot truncated at byte {offset}: {field} needs {needed} bytes, {available} left")]
    Truncated {
        /// Offset of the field.
        offset: usize,
        /// Which field.
        field: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes left.
        available: usize,
    },
    /// The magic at offset 0 is wrong: not a snapshot.
    #[error("bad magic {found:02x?} at byte 0 (not a corum snapshot)")]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// The format version is not one this build reads.
    #[error("unsupported snapshot format version {version} at byte {offset} (this build reads 1 to {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// Offset of the field.
        offset: usize,
        /// The version found.
        version: u32,
    },
    /// A checksum does not match.
    #[error("{region} checksum mismatch: crc32c of bytes {covered_start}..{covered_end} is {computed:#010x}, stored at byte {offset} is {stored:#010x}")]
    ChecksumMismatch {
        /// `"header"` or `"file"`.
        region: &'static str,
        /// Offset of the stored checksum.
        offset: usize,
        /// Start of the covered bytes.
        covered_start: usize,
        /// End (exclusive) of the covered bytes.
        covered_end: usize,
        /// The stored checksum.
        stored: u32,
        /// The computed checksum.
        computed: u32,
    },
    /// The input's length is not what the header's lengths add up to.
    #[error("snapshot is {actual} bytes but its header (lengths at bytes {OFF_MEMBERSHIP_LEN} and {OFF_BODY_LEN}) says {declared}")]
    LengthMismatch {
        /// Length the header declares.
        declared: u64,
        /// Actual length.
        actual: u64,
    },
    /// A field breaks a rule of the format.
    #[error("invalid snapshot at byte {offset}: {reason}")]
    Invalid {
        /// Offset of the field.
        offset: usize,
        /// The rule broken.
        reason: &'static str,
    },
    /// A tag byte is unknown.
    #[error("unknown {what} tag {tag} at byte {offset}")]
    UnknownTag {
        /// Offset of the tag.
        offset: usize,
        /// Which tag.
        what: &'static str,
        /// The value found.
        tag: u8,
    },
    /// The snapshot is of another partition than the one it is restored into.
    #[error("snapshot of partition {found} (header byte {OFF_PARTITION}), expected partition {expected}")]
    WrongPartition {
        /// The partition being restored.
        expected: u64,
        /// The partition the header names.
        found: u64,
    },
    /// The body has bytes after its last section.
    #[error("{len} trailing bytes in the snapshot body at byte {offset}")]
    TrailingBytes {
        /// Offset of the first trailing byte.
        offset: usize,
        /// How many.
        len: usize,
    },
}

impl From<Truncated> for SnapshotError {
    fn from(t: Truncated) -> Self {
        SnapshotError::Truncated {
            offset: t.offset,
            field: t.field,
            needed: t.needed,
            available: t.available,
        }
    }
}

/// A snapshot file operation failed.
#[derive(Debug, Error)]
pub enum SnapshotFileError {
    /// An I/O call failed. A failed `fsync` is fatal for the process (do not retry it).
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not a valid snapshot.
    #[error("corrupt snapshot file {path}: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the byte offset.
        #[source]
        source: SnapshotError,
    },
}

// ---------------------------------------------------------------------------------------------
// Encoding

fn put_kvval(out: &mut Vec<u8>, kv: &KeyValue) {
    put_bytes(out, &kv.value);
    put_u64(out, kv.create_revision);
    put_u64(out, kv.mod_revision);
    put_u64(out, kv.version);
}

fn put_flags_kv(out: &mut Vec<u8>, bit0: bool, kv: &Option<KeyValue>) {
    put_u8(out, u8::from(bit0) | (u8::from(kv.is_some()) << 1));
    if let Some(kv) = kv {
        put_kvval(out, kv);
    }
}

fn put_response(out: &mut Vec<u8>, r: &Response) {
    put_u64(out, r.revision);
    match &r.op {
        ResponseOp::Put { written, prev } => {
            put_u8(out, 1);
            put_flags_kv(out, *written, prev);
        }
        ResponseOp::Delete { deleted, prev } => {
            put_u8(out, 2);
            put_flags_kv(out, *deleted, prev);
        }
        ResponseOp::Txn { succeeded, results } => {
            put_u8(out, 3);
            put_u8(out, u8::from(*succeeded));
            put_u32(
                out,
                u32::try_from(results.len()).expect("txn result count fits u32 (ops are limited)"),
            );
            for res in results {
                match res {
                    OpResult::Put { prev } => {
                        put_u8(out, 1);
                        put_flags_kv(out, false, prev);
                    }
                    OpResult::Delete { deleted, prev } => {
                        put_u8(out, 2);
                        put_flags_kv(out, *deleted, prev);
                    }
                    OpResult::Get { kv } => {
                        put_u8(out, 3);
                        put_flags_kv(out, false, kv);
                    }
                }
            }
        }
    }
}

/// Encodes the state machine and the caller's membership blob (format in the module docs).
pub fn encode(sm: &StateMachine, membership: &[u8]) -> Bytes {
    // Size the buffer once: the key-values are nearly all of it.
    let kv_bytes: usize = sm
        .iter()
        .map(|(k, kv)| 8 + k.len() + kv.value.len() + 24)
        .sum();
    let mut out = Vec::with_capacity(HEADER_BYTES + membership.len() + 16 + kv_bytes + 4);
    out.resize(HEADER_BYTES, 0);
    out.extend_from_slice(membership);
    let body_start = out.len();
    put_u64(&mut out, sm.len() as u64);
    for (k, kv) in sm.iter() {
        put_bytes(&mut out, k);
        put_kvval(&mut out, kv);
    }
    put_u64(&mut out, sm.sessions().len() as u64);
    for (client_id, rec) in sm.sessions().iter() {
        put_u64(&mut out, client_id);
        put_u64(&mut out, rec.first_unacked);
        put_u64(&mut out, rec.last_index);
        put_u32(
            &mut out,
            u32::try_from(rec.results().len())
                .expect("cached results per session fit u32 (bounded by session_results_max)"),
        );
        for (sequence, result) in rec.results() {
            put_u64(&mut out, sequence);
            put_response(&mut out, result);
        }
    }
    put_u64(&mut out, sm.compacted());
    put_u64(&mut out, sm.history_iter().count() as u64);
    for (k, olds) in sm.history_iter() {
        put_bytes(&mut out, k);
        put_u32(
            &mut out,
            u32::try_from(olds.len()).expect("old versions per key fit u32"),
        );
        for o in olds {
            put_kvval(&mut out, &o.kv);
            put_u64(&mut out, o.until);
        }
    }
    let body_len = (out.len() - body_start) as u64;
    let membership_len =
        u32::try_from(membership.len()).expect("membership blob larger than 4 GiB");
    let h = &mut out[..HEADER_BYTES];
    h[..OFF_VERSION].copy_from_slice(&MAGIC);
    h[OFF_VERSION..OFF_RESERVED].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[OFF_RESERVED..OFF_PARTITION].copy_from_slice(&0u32.to_le_bytes());
    h[OFF_PARTITION..OFF_INDEX].copy_from_slice(&sm.config().partition_id.to_le_bytes());
    h[OFF_INDEX..OFF_TERM].copy_from_slice(&sm.applied_index().to_le_bytes());
    h[OFF_TERM..OFF_REVISION].copy_from_slice(&sm.applied_term().to_le_bytes());
    h[OFF_REVISION..OFF_MEMBERSHIP_LEN].copy_from_slice(&sm.revision().to_le_bytes());
    h[OFF_MEMBERSHIP_LEN..OFF_BODY_LEN].copy_from_slice(&membership_len.to_le_bytes());
    h[OFF_BODY_LEN..OFF_HEADER_CRC].copy_from_slice(&body_len.to_le_bytes());
    let header_crc = crc32c::crc32c(&h[..OFF_HEADER_CRC]);
    h[OFF_HEADER_CRC..].copy_from_slice(&header_crc.to_le_bytes());
    let file_crc = crc32c::crc32c(&out);
    put_u32(&mut out, file_crc);
    Bytes::from(out)
}

// ---------------------------------------------------------------------------------------------
// Decoding

fn invalid(offset: usize, reason: &'static str) -> SnapshotError {
    SnapshotError::Invalid { offset, reason }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes and verifies the header only (the first [`HEADER_BYTES`] bytes); returns the
/// header fields other than the membership blob, with the membership and body lengths.
fn decode_header(data: &[u8]) -> Result<(SnapshotMeta, usize, u64), SnapshotError> {
    if data.len() < HEADER_BYTES {
        return Err(SnapshotError::Truncated {
            offset: 0,
            field: "header",
            needed: HEADER_BYTES,
            available: data.len(),
        });
    }
    let mut found = [0u8; 8];
    found.copy_from_slice(&data[..OFF_VERSION]);
    if found != MAGIC {
        return Err(SnapshotError::BadMagic { found });
    }
    let stored = le_u32(data, OFF_HEADER_CRC);
    let computed = crc32c::crc32c(&data[..OFF_HEADER_CRC]);
    if stored != computed {
        return Err(SnapshotError::ChecksumMismatch {
            region: "header",
            offset: OFF_HEADER_CRC,
            covered_start: 0,
            covered_end: OFF_HEADER_CRC,
            stored,
            computed,
        });
    }
    let version = le_u32(data, OFF_VERSION);
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(SnapshotError::UnsupportedVersion {
            offset: OFF_VERSION,
            version,
        });
    }
    if le_u32(data, OFF_RESERVED) != 0 {
        return Err(invalid(OFF_RESERVED, "reserved field is not 0"));
    }
    let meta = SnapshotMeta {
        partition_id: le_u64(data, OFF_PARTITION),
        applied_index: le_u64(data, OFF_INDEX),
        applied_term: le_u64(data, OFF_TERM),
        revision: le_u64(data, OFF_REVISION),
        membership: Bytes::new(),
    };
    let membership_len = le_u32(data, OFF_MEMBERSHIP_LEN) as usize;
    let body_len = le_u64(data, OFF_BODY_LEN);
    Ok((meta, membership_len, body_len))
}

/// Reads the header and membership blob from the start of a snapshot (e.g. its first chunk
/// from the leader, or the first bytes of a file) to learn its position before reading the
/// rest. Verifies the header checksum only: the membership and body are verified by [`decode`].
/// Also returns the total length the header declares.
pub fn decode_meta(prefix: &[u8]) -> Result<(SnapshotMeta, u64), SnapshotError> {
    let (mut meta, membership_len, body_len) = decode_header(prefix)?;
    let mut r = Reader::new(prefix);
    r.range(HEADER_BYTES, "header")?;
    let membership = r.slice(membership_len, "membership blob")?;
    meta.membership = Bytes::copy_from_slice(membership);
    let total = (HEADER_BYTES as u64 + membership_len as u64)
        .saturating_add(body_len)
        .saturating_add(TRAILER_BYTES as u64);
    Ok((meta, total))
}

/// Decodes and verifies a snapshot (module docs). Keys and values are copied out of `data`,
/// so the state does not pin the input buffer. The restored state machine gets `config`
/// (whose bounds are cluster constants), and the snapshot must be of `config.partition_id`
/// ([`SnapshotError::WrongPartition`] otherwise).
pub fn decode(data: &[u8], config: &Config) -> Result<Snapshot, SnapshotError> {
    let result = decode_inner(data, config);
    if let Err(e) = &result {
        tracing::warn!(error = %e, len = data.len(), "invalid snapshot");
    }
    result
}

fn decode_inner(data: &[u8], config: &Config) -> Result<Snapshot, SnapshotError> {
    let (mut meta, membership_len, body_len) = decode_header(data)?;
    if meta.partition_id != config.partition_id {
        return Err(SnapshotError::WrongPartition {
            expected: config.partition_id,
            found: meta.partition_id,
        });
    }
    let declared = (HEADER_BYTES as u64)
        .checked_add(membership_len as u64)
        .and_then(|n| n.checked_add(body_len))
        .and_then(|n| n.checked_add(TRAILER_BYTES as u64));
    let actual = data.len() as u64;
    if declared != Some(actual) {
        return Err(SnapshotError::LengthMismatch {
            declared: declared.unwrap_or(u64::MAX),
            actual,
        });
    }
    let crc_at = data.len() - TRAILER_BYTES;
    let stored = le_u32(data, crc_at);
    let computed = crc32c::crc32c(&data[..crc_at]);
    if stored != computed {
        return Err(SnapshotError::ChecksumMismatch {
            region: "file",
            offset: crc_at,
            covered_start: 0,
            covered_end: crc_at,
            stored,
            computed,
        });
    }
    let body_start = HEADER_BYTES + membership_len;
    meta.membership = Bytes::copy_from_slice(&data[HEADER_BYTES..body_start]);

    // The reader spans header + membership + body so offsets are absolute; it starts at the
    // body and must end exactly at the trailer.
    let mut r = Reader::new(&data[..crc_at]);
    r.range(body_start, "header and membership")?;
    let kvs = decode_kvs(&mut r, meta.revision)?;
    let sessions = decode_sessions(&mut r, &meta)?;
    let (olds_by_key, compacted) = if le_u32(data, OFF_VERSION) >= 2 {
        decode_history(&mut r, meta.revision, &kvs)?
    } else {
        // Version 1 kept no history: only the snapshot's own revision is readable.
        (BTreeMap::new(), meta.revision)
    };
    if r.remaining() != 0 {
        return Err(SnapshotError::TrailingBytes {
            offset: r.offset(),
            len: r.remaining(),
        });
    }
    let state = StateMachine::from_parts(
        *config,
        kvs,
        meta.revision,
        meta.applied_index,
        meta.applied_term,
        sessions,
        olds_by_key,
        compacted,
    );
    Ok(Snapshot { meta, state })
}

fn get_bytes(r: &mut Reader<'_>, field: &'static str) -> Result<Bytes, SnapshotError> {
    let len = r.u32(field)? as usize;
    Ok(Bytes::copy_from_slice(r.slice(len, field)?))
}

fn get_kvval(r: &mut Reader<'_>, revision: u64) -> Result<KeyValue, SnapshotError> {
    let value = get_bytes(r, "value")?;
    let off = r.offset();
    let kv = KeyValue {
        value,
        create_revision: r.u64("create revision")?,
        mod_revision: r.u64("mod revision")?,
        version: r.u64("version")?,
    };
    if kv.create_revision == 0 || kv.create_revision > kv.mod_revision || kv.mod_revision > revision
    {
        return Err(invalid(
            off,
            "key revisions not 1 <= create <= mod <= snapshot revision",
        ));
    }
    if kv.version == 0 {
        return Err(invalid(off + 16, "key version is 0"));
    }
    Ok(kv)
}

fn decode_kvs(
    r: &mut Reader<'_>,
    revision: u64,
) -> Result<BTreeMap<Bytes, KeyValue>, SnapshotError> {
    let count = r.u64("key count")?;
    let mut kvs = BTreeMap::new();
    let mut prev: Option<Bytes> = None;
    for _ in 0..count {
        if r.remaining() < KV_BYTES_MIN {
            // Cheap early exit for absurd counts; the exact error comes from the reads.
            r.range(KV_BYTES_MIN, "key-value")?;
        }
        let key_off = r.offset();
        let key = get_bytes(r, "key")?;
        if key.is_empty() {
            return Err(invalid(key_off, "empty key"));
        }
        if prev.as_ref().is_some_and(|p| *p >= key) {
            return Err(invalid(key_off, "keys not strictly ascending"));
        }
        let kv = get_kvval(r, revision)?;
        prev = Some(key.clone());
        kvs.insert(key, kv);
    }
    Ok(kvs)
}

/// Smallest old version: value length, create, mod, version, until.
const OLD_BYTES_MIN: usize = 4 + 24 + 8;

/// Per key its old versions, and the compaction point.
type HistoryParts = (BTreeMap<Bytes, VecDeque<OldVersion>>, u64);

fn decode_history(
    r: &mut Reader<'_>,
    revision: u64,
    kvs: &BTreeMap<Bytes, KeyValue>,
) -> Result<HistoryParts, SnapshotError> {
    let off = r.offset();
    let compacted = r.u64("compaction point")?;
    if compacted > revision {
        return Err(invalid(off, "compaction point above the snapshot revision"));
    }
    let count = r.u64("history key count")?;
    let mut by_key = BTreeMap::new();
    let mut prev: Option<Bytes> = None;
    for _ in 0..count {
        if r.remaining() < 4 + 4 + OLD_BYTES_MIN {
            // Cheap early exit for absurd counts; the exact error comes from the reads.
            r.range(4 + 4 + OLD_BYTES_MIN, "history key")?;
        }
        let key_off = r.offset();
        let key = get_bytes(r, "history key")?;
        if key.is_empty() {
            return Err(invalid(key_off, "empty history key"));
        }
        if prev.as_ref().is_some_and(|p| *p >= key) {
            return Err(invalid(key_off, "history keys not strictly ascending"));
        }
        let n_off = r.offset();
        let n = r.u32("old version count")? as usize;
        if n == 0 {
            return Err(invalid(n_off, "history key with no old version"));
        }
        let mut olds: VecDeque<OldVersion> =
            VecDeque::with_capacity(n.min(r.remaining() / OLD_BYTES_MIN));
        for _ in 0..n {
            let kv_off = r.offset();
            let kv = get_kvval(r, revision)?;
            let until_off = r.offset();
            let until = r.u64("old version end")?;
            if kv.mod_revision >= until || until > revision {
                return Err(invalid(
                    until_off,
                    "old version not mod revision < until <= snapshot revision",
                ));
            }
            if until <= compacted {
                return Err(invalid(
                    until_off,
                    "old version at or below the compaction point",
                ));
            }
            if olds.back().is_some_and(|o| o.until > kv.mod_revision) {
                return Err(invalid(kv_off, "old versions of a key overlap"));
            }
            if olds
                .back()
                .is_some_and(|o| !crate::state_machine::follows(o, &kv))
            {
                return Err(invalid(
                    kv_off,
                    "old version neither continues the one before it nor starts a new life",
                ));
            }
            olds.push_back(OldVersion { kv, until });
        }
        let last = olds.back().expect("n >= 1");
        if kvs
            .get(&key)
            .is_some_and(|cur| last.until > cur.mod_revision)
        {
            return Err(invalid(
                key_off,
                "old version overlaps the key's current version",
            ));
        }
        if kvs
            .get(&key)
            .is_some_and(|cur| !crate::state_machine::follows(last, cur))
        {
            return Err(invalid(
                key_off,
                "the key's current version neither continues its newest old version nor \
                 starts a new life",
            ));
        }
        prev = Some(key.clone());
        by_key.insert(key, olds);
    }
    Ok((by_key, compacted))
}

fn get_opt_kv(
    r: &mut Reader<'_>,
    flags_off: usize,
    flags: u8,
    revision: u64,
) -> Result<(bool, Option<KeyValue>), SnapshotError> {
    if flags & !0b11 != 0 {
        return Err(invalid(flags_off, "undefined flag bits in a cached result"));
    }
    let kv = if flags & 0b10 != 0 {
        Some(get_kvval(r, revision)?)
    } else {
        None
    };
    Ok((flags & 1 != 0, kv))
}

fn get_response(r: &mut Reader<'_>, revision: u64) -> Result<Response, SnapshotError> {
    let rev_off = r.offset();
    let resp_revision = r.u64("result revision")?;
    if resp_revision > revision {
        return Err(invalid(
            rev_off,
            "cached result revision above the snapshot revision",
        ));
    }
    let kind_off = r.offset();
    let op = match r.u8("result kind")? {
        1 => {
            let off = r.offset();
            let flags = r.u8("result flags")?;
            let (written, prev) = get_opt_kv(r, off, flags, revision)?;
            ResponseOp::Put { written, prev }
        }
        2 => {
            let off = r.offset();
            let flags = r.u8("result flags")?;
            let (deleted, prev) = get_opt_kv(r, off, flags, revision)?;
            ResponseOp::Delete { deleted, prev }
        }
        3 => {
            let off = r.offset();
            let succeeded = match r.u8("txn succeeded")? {
                0 => false,
                1 => true,
                _ => return Err(invalid(off, "txn succeeded flag not 0 or 1")),
            };
            let n = r.u32("txn result count")? as usize;
            let mut results = Vec::with_capacity(n.min(r.remaining() / 2));
            for _ in 0..n {
                let kind_off = r.offset();
                let kind = r.u8("op result kind")?;
                let flags_off = r.offset();
                let flags = r.u8("op result flags")?;
                let (bit0, kv) = get_opt_kv(r, flags_off, flags, revision)?;
                results.push(match kind {
                    1 if !bit0 => OpResult::Put { prev: kv },
                    2 => OpResult::Delete {
                        deleted: bit0,
                        prev: kv,
                    },
                    3 if !bit0 => OpResult::Get { kv },
                    1 | 3 => return Err(invalid(flags_off, "deleted flag on a put or get result")),
                    tag => {
                        return Err(SnapshotError::UnknownTag {
                            offset: kind_off,
                            what: "op result kind",
                            tag,
                        })
                    }
                });
            }
            ResponseOp::Txn { succeeded, results }
        }
        tag => {
            return Err(SnapshotError::UnknownTag {
                offset: kind_off,
                what: "result kind",
                tag,
            })
        }
    };
    Ok(Response {
        revision: resp_revision,
        op,
    })
}

fn decode_sessions(r: &mut Reader<'_>, meta: &SnapshotMeta) -> Result<SessionTable, SnapshotError> {
    let count = r.u64("session count")?;
    let mut table = SessionTable::default();
    let mut prev_client: Option<u64> = None;
    let mut seen_index = std::collections::BTreeSet::new();
    for _ in 0..count {
        if r.remaining() < SESSION_BYTES_MIN {
            // Cheap early exit for absurd counts; the exact error comes from the reads.
            r.range(SESSION_BYTES_MIN, "session")?;
        }
        let off = r.offset();
        let client_id = r.u64("session client id")?;
        if prev_client.is_some_and(|p| p >= client_id) {
            return Err(invalid(off, "session client ids not strictly ascending"));
        }
        let first_unacked = r.u64("session first_unacked")?;
        let idx_off = r.offset();
        let last_index = r.u64("session last index")?;
        if last_index > meta.applied_index || !seen_index.insert(last_index) {
            return Err(invalid(
                idx_off,
                "session last index above the applied index or not distinct",
            ));
        }
        let n = r.u32("session result count")?;
        let mut results =
            VecDeque::with_capacity((n as usize).min(r.remaining() / CACHED_BYTES_MIN));
        let mut prev_sequence: Option<u64> = None;
        for _ in 0..n {
            if r.remaining() < CACHED_BYTES_MIN {
                r.range(CACHED_BYTES_MIN, "cached result")?;
            }
            let seq_off = r.offset();
            let sequence = r.u64("cached result sequence")?;
            if sequence == 0 || sequence < first_unacked {
                return Err(invalid(
                    seq_off,
                    "cached result sequence 0 or below the session's first_unacked",
                ));
            }
            if prev_sequence.is_some_and(|p| p >= sequence) {
                return Err(invalid(
                    seq_off,
                    "cached result sequences not strictly ascending",
                ));
            }
            prev_sequence = Some(sequence);
            results.push_back((sequence, get_response(r, meta.revision)?));
        }
        prev_client = Some(client_id);
        // Inserted without evicting, so the restored table equals the snapshotted one; a
        // table over the configured bounds shrinks as it next changes.
        table.insert_restored(
            client_id,
            SessionRecord::restored(first_unacked, last_index, results),
        );
    }
    Ok(table)
}

// ---------------------------------------------------------------------------------------------
// Files

/// The file name of a snapshot: `snap-<partition>-<index>-<term>.corumsnap`, numbers as
/// 16 hex digits so names sort by partition, then index.
pub fn file_name(partition_id: u64, applied_index: u64, applied_term: u64) -> String {
    format!("snap-{partition_id:016x}-{applied_index:016x}-{applied_term:016x}{FILE_SUFFIX}")
}

/// Parses a name made by [`file_name`] into `(partition_id, applied_index, applied_term)`.
pub fn parse_file_name(name: &str) -> Option<(u64, u64, u64)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(FILE_SUFFIX)?;
    let mut parts = rest.split('-');
    let mut next = || {
        parts
            .next()
            .filter(|p| p.len() == 16)
            .and_then(|p| u64::from_str_radix(p, 16).ok())
    };
    let parsed = (next()?, next()?, next()?);
    parts.next().is_none().then_some(parsed)
}

/// Removes temporary files a crash left behind in `dir` (names `.*.tmp` written by
/// [`write_file`]); call once at start-up, before writing new snapshots. Returns how many.
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize, SnapshotFileError> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') && name.ends_with(".tmp") {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            tracing::info!(path = %path.display(), "removed stale snapshot temp file");
            removed += 1;
        }
    }
    Ok(removed)
}

fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotFileError + 'a {
    move |source| SnapshotFileError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` (an [`encode`]d snapshot) durably as `dir/name`: temporary file, fsync,
/// rename, fsync of the directory. Returns the final path. Blocking (module docs, TODO).
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, SnapshotFileError> {
    let final_path = dir.join(name);
    let tmp_path = dir.join(format!(".{name}.tmp"));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp_path)
        .map_err(io_err("create", &tmp_path))
        .and_then(|mut f| {
            f.write_all(bytes).map_err(io_err("write", &tmp_path))?;
            f.sync_all().map_err(io_err("fsync", &tmp_path))
        })
        .and_then(|()| {
            fs::rename(&tmp_path, &final_path).map_err(io_err("rename into place", &final_path))
        });
    if let Err(e) = written {
        // Best effort: the file under the final name is untouched either way.
        let _ = fs::remove_file(&tmp_path);
        tracing::error!(error = %e, "snapshot write failed");
        return Err(e);
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))?;
    tracing::info!(path = %final_path.display(), bytes = bytes.len(), "snapshot written");
    Ok(final_path)
}

/// Encodes `sm` and writes it durably into `dir` under [`file_name`]. Returns the path.
pub fn write_state(
    dir: &Path,
    sm: &StateMachine,
    membership: &[u8],
) -> Result<PathBuf, SnapshotFileError> {
    let bytes = encode(sm, membership);
    let name = file_name(
        sm.config().partition_id,
        sm.applied_index(),
        sm.applied_term(),
    );
    write_file(dir, &name, &bytes)
}

/// Reads and verifies a snapshot file of `config.partition_id` (see [`decode`]); errors name
/// the file and, for corruption, the offset.
pub fn read_file(path: &Path, config: &Config) -> Result<Snapshot, SnapshotFileError> {
    let data = fs::read(path).map_err(io_err("read", path))?;
    decode(&data, config).map_err(|source| {
        tracing::error!(path = %path.display(), error = %source, "corrupt snapshot file");
        SnapshotFileError::Corrupt {
            path: path.to_path_buf(),
            source,
        }
    })
}
