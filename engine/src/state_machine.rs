//! One partition's replicated state machine and its exactly-once session table.
//!
//! # State
//!
//! - An ordered map `key -> KeyValue` with etcd-like metadata per key: `create_revision` (the
//!   revision that created the key), `mod_revision` (the revision that last wrote it) and
//!   `version` (puts since creation; starts at 1, and a key deleted then created again starts
//!   over at 1 with a new `create_revision`).
//! - The partition's `revision`: incremented once for every applied command that changes at
//!   least one key. A transaction is one revision however many keys it writes (as in etcd); a
//!   put-if-absent that finds the key, a delete of a missing key, and a transaction whose chosen
//!   branch writes nothing leave it unchanged.
//! - The applied index and term of the last log entry consumed.
//! - The session table (below).
//!
//! # History (multi-version reads; issue 16, increment 2)
//!
//! Every overwrite or delete keeps the version it replaced as an [`OldVersion`] `{ kv, until }`:
//! the key held `kv` at every revision in `kv.mod_revision .. until`. [`StateMachine::get_at`]
//! and [`StateMachine::range_at`] read the store as it was at a revision `R`: per key, the
//! current version if its `mod_revision <= R`, else the old version whose interval holds `R`,
//! else nothing (the key did not exist at `R`). A version replaced within the revision that
//! wrote it (a transaction writing one key twice) was never visible and is not kept.
//!
//! The **compaction point** `C`: revisions `>= C` are readable, lower ones are refused with
//! [`RevisionError::Compacted`] (and revisions above the current one with
//! [`RevisionError::Future`]). Compacting to `C` drops the old versions no readable revision
//! can see (`until <= C`), oldest first, in O(1) each (the queue, under "Layout"). The point moves
//! deterministically, from the log alone: after every command that writes at revision `r`
//! it becomes `max(C, r - history_revisions)` ([`Config::history_revisions`], a cluster
//! constant like the session bounds), so the current revision and the `history_revisions`
//! before it are readable; and then, while the superseded versions hold more than
//! [`Config::history_bytes_max`] bytes (keys, values and [`HISTORY_VERSION_OVERHEAD_BYTES`]
//! per version), it moves on to the end of the oldest one. Memory is bounded by bytes, whatever
//! the values' sizes: a client rewriting a 1 MiB value cannot make every replica keep a
//! thousand copies of it, nor can transactions of many tiny keys pile up versions.
//!
//! **Layout.** Every old version held is one element of the compaction queue, which is in
//! `(until, key)` order; each has a sequence number (its position plus the count of versions
//! ever dropped), and a *link* is a sequence number plus one. A key's slot in the main map
//! (`KeyEntry`) holds its current version and a link to its newest old version, and each old
//! version links to the key's next older one, so a read at a revision walks the key's chain
//! from the newest version back (a read at `R` costs one step per version of the key written
//! after `R`: cheap near the current revision, up to the window's length for a hot key read
//! far back). Overwriting a key costs the one tree search it costs without
//! history, plus an append to the queue; dropping a version is a pop from the front of the
//! queue with no search at all (a link to a dropped version reads as no link, so no chain
//! needs fixing). A deleted key whose old versions a readable revision can still see stays
//! as a *tombstone* (no current version), as etcd's key index keeps a key's generations; its
//! newest old version carries a mark, and dropping that version removes the tombstone (the
//! one search compaction ever does), so deleted keys do not accumulate. A transaction that
//! supersedes several keys in one revision sorts its tail of the queue by key and relinks
//! those keys' slots, keeping the order canonical. The queue's keys share the map's own keys
//! (a reference count; the map copied the key when it was created, never a slice of a log
//! entry, which would pin the entry).
//!
//! Revisions are still the partition's own (a partition-local counter); the cluster-wide
//! revision (`crate::revision`, increment 3) replaces the counter, and an explicit
//! `compact R` and compaction by age (increment 2's remaining part, at the cluster level)
//! replace the count bound. The first design kept the old versions in a second map keyed by
//! key, which cost three tree searches per overwrite and two per compaction step; measured
//! in a 3-node cluster it raised server CPU per replicated write by 29%
//! (`bench-results/2026-11-28-history-ab.md`). The layout above replaced it
//! (`bench-results/2026-11-28-history-layout-ab.md`).
//!
//! # Determinism
//!
//! [`StateMachine::apply`] depends only on the state and its arguments: every replica that
//! applies the same committed entries in log order reaches the same state and returns the same
//! results. Raft guarantees every replica applies the same commands in the same order (State
//! Machine Safety, Raft paper §5.4.3, thesis §3.6.3); the copies agree only if applying is
//! deterministic (replicated state machines, paper §2, thesis §2.1). Nothing here reads a
//! clock, a random number or the configuration of the local node, except `sessions_max` and
//! `session_results_max`, which must be the same on every replica of a partition (they are
//! cluster constants; change them only with a coordinated restart).
//!
//! Applying is atomic: every check that can reject a command's operation (index order,
//! session) runs before the key-value state is changed, and the put / delete / get ops
//! themselves cannot fail, so a command's operation either takes full effect or none. (A
//! command refused as stale still updates its session's bookkeeping, rules 1-2 below.)
//!
//! # Exactly-once sessions (Raft thesis §6.3, extended to pipelining)
//!
//! The thesis (§6.3) gives each client a session and each of its commands a sequence number;
//! the state machine remembers, per client, the results of the commands it applied, and answers
//! a retried command from that cache instead of applying it twice. For a client with several
//! requests outstanding, §6.3 keeps a set of (sequence, response) pairs per session, and each
//! request carries the lowest sequence number the client has no response for, below which the
//! state machine discards responses. corum's client pipelines thousands of writes over one
//! session across every partition, so corum uses that generalization, per partition:
//!
//! A command may carry a [`Session`] `{ client_id, sequence, first_unacked }`. `sequence` is
//! unique per write within the client's session and counts across *all* partitions (so one
//! partition sees gaps); every retry of a write carries the same `sequence`. `first_unacked` is
//! the lowest sequence number for which the client does not yet have a response: every lower
//! sequence has been answered, so its cached result is no longer needed. (`first_unacked <=
//! sequence` always, since the command itself is unanswered; [`Command::decode`] enforces it.)
//!
//! Per partition and client, the session remembers `first_unacked` and the cached results of
//! the applied sequences `>= first_unacked`. A command with a session, at log index `i`:
//!
//! 1. **unknown client**: a session is opened (evicting one if the table is full, below).
//! 2. the session's `first_unacked` is raised to `max(stored, command's)`, and cached results
//!    below it are dropped.
//! 3. `sequence < first_unacked`: the client already has this command's answer, so this is a
//!    stray duplicate (e.g. a retry delayed in the network): [`ApplyError::SessionSequenceStale`],
//!    nothing applied.
//! 4. `sequence` is cached: a retry of an applied command. The cached result is returned and
//!    nothing is applied again (no revision bump), whatever the retried command contains: the
//!    client must not reuse a sequence number for a different command.
//! 5. otherwise the command is applied and its result cached under `sequence`. Sequences may
//!    arrive in any order: with 5 applied, a first arrival of 3 is applied (3 was never
//!    applied: every applied sequence `>= first_unacked` is cached), and a retry of 5 is then
//!    answered from the cache.
//! 6. at most `session_results_max` results are cached per session. When a new result would
//!    exceed it, the lowest cached sequence `s` is dropped *and* `first_unacked` is raised to
//!    `s + 1`, so a late retry of `s` is refused as stale (rule 3) rather than applied twice.
//!    Refusing is always safe; the server answers the client `OutcomeUnknown` for a write
//!    whose outcome it never learned (applied once, or never), which the client reports like
//!    a timeout and does not retry. The default bound equals the
//!    client's in-flight limit per connection (4096), and a partition's writes go over one
//!    connection, so the dropped result is normally one the client already has. It may not
//!    be: `first_unacked` is global, so one write stuck on another partition holds it back
//!    while this partition's answered results pile up above it, and a lost response retried
//!    late can then be among the lowest cached.
//!
//! Every command with a session (applied, answered from the cache, or refused as stale) moves
//! the session's `last_index` to `i`. Steps 1 and 2 happen even when step 3 refuses the
//! command: they are deterministic from the log, so every replica does the same.
//!
//! The table holds at most `sessions_max` sessions. When a new session must be opened and the
//! table is full, the session whose `last_index` is lowest (least recently used in log order)
//! is evicted, with all its cached results. That rule uses only log contents, so every replica
//! evicts the same session at the same entry.
//!
//! **Residual risk.** A new client cannot be told from one whose session was evicted: both are
//! unknown. If a client's session is evicted while one of its applied writes is still
//! unanswered (the response was lost), a retry of that write opens a fresh session and is
//! applied a second time. For that to happen, `sessions_max` *other* clients must write to this
//! partition between the client's last command here and the retry (LRU by log index); size
//! `sessions_max` so that cannot happen within a client's retry deadline. (Closing it fully
//! needs the thesis's RegisterClient entry, whose log index becomes the client id, and an
//! explicit "session expired" answer for unknown ids; a possible later extension.)
//!
//! **Memory.** At most `sessions_max * session_results_max` cached results per partition.
//! A live client's `first_unacked` keeps its session near its in-flight count; a client that
//! died with writes outstanding keeps them cached until its session is evicted.
//!
//! # Ranges
//!
//! [`StateMachine::range`] follows etcd: `end` empty reads the single key `start`; `end == [0]`
//! (one zero byte) reads every key `>= start` (so `start = []`, `end = [0]` is the whole
//! partition); any other `end` reads `[start, end)`, which is empty when `end <= start`.
//! `limit == 0` means no limit. A range also stops before the key-value that would bring the
//! bytes it returns over `bytes_max`, counting each key-value as its key and value lengths
//! plus [`RANGE_ENTRY_OVERHEAD_BYTES`] (the server derives `bytes_max` from its frame limit, so
//! a page always fits one reply frame, as etcd bounds a response by its size limit). Either
//! cut sets `more` and `next_key`. The first key-value is returned whatever its size, so every
//! page makes progress (one key-value always fits a frame: the configuration requires
//! `frame_bytes_max >= key_bytes_max + value_bytes_max + 4096`).
//!
//! # Memory
//!
//! Values are stored as the [`Bytes`] the command carries, with no copy: a value keeps the
//! buffer it was decoded from alive until it is overwritten or deleted. Hand
//! [`StateMachine::apply_entry`] a buffer that holds just that entry (one allocation per entry),
//! never a slice of a large shared read buffer, or one small value can pin a whole batch. (A
//! transaction's values pin their one entry until all of them are gone: bounded by the entry
//! size.) A key is copied once, when it is created (a small allocation per *new* key; an
//! overwrite allocates nothing): a key is long-lived, and as a slice it would pin its first
//! entry, value included, for as long as the key exists.

use std::collections::{btree_map, BTreeMap, VecDeque};
use std::ops::Bound;

use bytes::Bytes;
use thiserror::Error;

use crate::command::{
    Command, CommandOp, Compare, CompareTarget, DecodeError, Limits, Session, TxnOp,
};

/// A key's value and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The value.
    pub value: Bytes,
    /// The revision that created the key (since it last did not exist).
    pub create_revision: u64,
    /// The revision that last wrote the key.
    pub mod_revision: u64,
    /// Puts since the key was created, starting at 1.
    pub version: u64,
}

/// The result of an applied command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The partition's revision after the command.
    pub revision: u64,
    /// What the operation did.
    pub op: ResponseOp,
}

/// The operation-specific part of a [`Response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseOp {
    /// Result of a put.
    Put {
        /// False only for a put-if-absent that found the key.
        written: bool,
        /// The previous key-value, if asked for and the key existed (for a put-if-absent that
        /// did not write: the existing key-value).
        prev: Option<KeyValue>,
    },
    /// Result of a delete.
    Delete {
        /// Whether the key existed.
        deleted: bool,
        /// The deleted key-value, if asked for and the key existed.
        prev: Option<KeyValue>,
    },
    /// Result of a transaction.
    Txn {
        /// Whether every compare held (the success branch ran).
        succeeded: bool,
        /// One result per op of the branch that ran, in order.
        results: Vec<OpResult>,
    },
}

/// The result of one op of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    /// A put.
    Put {
        /// The previous key-value, if asked for and the key existed.
        prev: Option<KeyValue>,
    },
    /// A delete.
    Delete {
        /// Whether the key existed.
        deleted: bool,
        /// The deleted key-value, if asked for and the key existed.
        prev: Option<KeyValue>,
    },
    /// A get.
    Get {
        /// The key-value, if the key exists.
        kv: Option<KeyValue>,
    },
}

/// Why a log entry was not applied as a command. Every variant except the two caller-bug ones
/// (`IndexNotAfterApplied`, `TermRegressed`) still consumes the entry: the applied index moves
/// to it, identically on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApplyError {
    /// The command's sequence number is below the session's `first_unacked`: either the
    /// client already has its answer (a stray duplicate), or its cached result was dropped to
    /// respect `session_results_max`. Nothing was applied now; if the client is still waiting
    /// for this write, its outcome is unknown (the server answers `OutcomeUnknown`, never a
    /// definite error). Module docs, rules 3 and 6.
    #[error(
        "session {client_id}: sequence {sequence} is below the first unacknowledged {first_unacked}"
    )]
    SessionSequenceStale {
        /// The client.
        client_id: u64,
        /// The command's sequence number.
        sequence: u64,
        /// The session's first unacknowledged sequence number.
        first_unacked: u64,
    },
    /// The entry's data is not a valid command (applied as a no-op on every replica).
    #[error("malformed command entry: {0}")]
    Malformed(#[from] DecodeError),
    /// Caller bug: entries must be applied in increasing index order. Nothing changed.
    #[error("entry index {index} is not after the applied index {applied_index}")]
    IndexNotAfterApplied {
        /// The entry's index.
        index: u64,
        /// The applied index.
        applied_index: u64,
    },
    /// Caller bug: terms never decrease along the log (Raft §5.3). Nothing changed.
    #[error("entry term {term} is lower than the applied term {applied_term}")]
    TermRegressed {
        /// The entry's term.
        term: u64,
        /// The applied term.
        applied_term: u64,
    },
}

/// What [`StateMachine::apply`] returns.
pub type CommandResult = Result<Response, ApplyError>;

/// What the session table remembers about one client (module docs, "Exactly-once sessions").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Every sequence number below this one is answered (or refused): a command with a lower
    /// sequence is refused as stale.
    pub first_unacked: u64,
    /// The log index of the client's last command (applied, answered from the cache, or
    /// refused); the eviction order.
    pub last_index: u64,
    /// The results of the applied commands with sequence `>= first_unacked`, ascending by
    /// sequence. A deque rather than a map: sequences mostly arrive in order and leave from the
    /// front, so the common case is a push at the back and a pop at the front in one
    /// contiguous buffer, with no B-tree node rebalancing or allocation.
    results: VecDeque<(u64, Response)>,
}

impl SessionRecord {
    /// A record as the snapshot decoder restores it; `results` must be ascending by sequence,
    /// each `>= first_unacked` (the decoder checks).
    pub(crate) fn restored(
        first_unacked: u64,
        last_index: u64,
        results: VecDeque<(u64, Response)>,
    ) -> SessionRecord {
        SessionRecord {
            first_unacked,
            last_index,
            results,
        }
    }

    /// The cached results, ascending by sequence.
    pub fn results(&self) -> impl ExactSizeIterator<Item = (u64, &Response)> {
        self.results.iter().map(|(s, r)| (*s, r))
    }

    /// The cached result of `sequence`.
    pub fn result(&self, sequence: u64) -> Option<&Response> {
        self.position(sequence).ok().map(|i| &self.results[i].1)
    }

    /// Where `sequence` is (`Ok`) or would be inserted (`Err`).
    fn position(&self, sequence: u64) -> Result<usize, usize> {
        // Fast path: a new sequence above every cached one (the common, in-order case).
        match self.results.back() {
            None => Err(0),
            Some((last, _)) if *last < sequence => Err(self.results.len()),
            _ => self.results.binary_search_by_key(&sequence, |(s, _)| *s),
        }
    }

    /// Drops cached results below `first_unacked`, giving memory back once the deque is
    /// mostly empty (amortised: only when it is under a quarter full).
    fn drop_below(&mut self, first_unacked: u64) {
        while self
            .results
            .front()
            .is_some_and(|(s, _)| *s < first_unacked)
        {
            self.results.pop_front();
        }
        if self.results.capacity() > 64 && self.results.len() * 4 < self.results.capacity() {
            self.results.shrink_to(self.results.len() * 2);
        }
    }
}

/// The bounded exactly-once session table (module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionTable {
    clients: BTreeMap<u64, SessionRecord>,
    /// `last_index -> client_id`; one command per index, so the keys are unique.
    by_last_index: BTreeMap<u64, u64>,
}

impl SessionTable {
    /// The record of `client_id`.
    pub fn get(&self, client_id: u64) -> Option<&SessionRecord> {
        self.clients.get(&client_id)
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Every session, by client id.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &SessionRecord)> {
        self.clients.iter().map(|(id, r)| (*id, r))
    }

    /// Inserts a record (used by the snapshot decoder, which has checked it), without
    /// evicting: the restored table equals the snapshotted one.
    pub(crate) fn insert_restored(&mut self, client_id: u64, rec: SessionRecord) {
        if let Some(old) = self.clients.remove(&client_id) {
            self.by_last_index.remove(&old.last_index);
        }
        self.by_last_index.insert(rec.last_index, client_id);
        self.clients.insert(client_id, rec);
    }

    /// The record of `client_id`, touched at `index` (moved to the most recently used end),
    /// opened empty if the client is unknown. Opening evicts the least recently used sessions
    /// while the table is full (at least one session is always kept).
    fn open_or_touch(
        &mut self,
        client_id: u64,
        index: u64,
        sessions_max: usize,
    ) -> &mut SessionRecord {
        if let Some(old_index) = self.clients.get(&client_id).map(|r| r.last_index) {
            self.by_last_index.remove(&old_index);
        } else {
            // A new client: make room by evicting the sessions whose last command is lowest in
            // the log (the rule depends only on log contents, so every replica evicts the same).
            while self.clients.len() >= sessions_max.max(1) {
                let Some((_, evicted)) = self.by_last_index.pop_first() else {
                    break;
                };
                self.clients.remove(&evicted);
                tracing::debug!(client_id = evicted, "session evicted");
            }
            self.clients.insert(
                client_id,
                SessionRecord {
                    first_unacked: 0,
                    last_index: index,
                    results: VecDeque::new(),
                },
            );
        }
        self.by_last_index.insert(index, client_id);
        let rec = self
            .clients
            .get_mut(&client_id)
            .expect("the session was just found or inserted");
        rec.last_index = index;
        rec
    }
}

/// What [`StateMachine::range`] counts for one key-value on top of its key and value bytes:
/// an upper bound of what it costs in an encoded reply (metadata, framing, padding). The
/// server checks at compile time that the wire encoding needs no more
/// (`wire::KV_ENCODED_OVERHEAD_BYTES`).
pub const RANGE_ENTRY_OVERHEAD_BYTES: usize = 128;

/// Result of [`StateMachine::range`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    /// The keys found, ascending, with their key-values (empty values when keys-only).
    pub kvs: Vec<(Bytes, KeyValue)>,
    /// Whether the key limit or the byte limit cut the result short.
    pub more: bool,
    /// When `more`: the first key not returned, where the next page starts.
    pub next_key: Option<Bytes>,
}

/// A version of a key that a later revision replaced or deleted: the key held `kv` at every
/// revision in `kv.mod_revision .. until` (module docs, "History").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldVersion {
    /// The key-value as it was.
    pub kv: KeyValue,
    /// The revision that overwrote or deleted it (`> kv.mod_revision`).
    pub until: u64,
}

/// A read named a revision the partition cannot serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RevisionError {
    /// The revision is below the compaction point: its versions are gone.
    #[error("revision {requested} is compacted (the oldest readable revision is {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The compaction point: the oldest readable revision.
        compacted: u64,
    },
    /// The revision is above the partition's current revision.
    #[error("revision {requested} is in the future (the current revision is {current})")]
    Future {
        /// The revision asked for.
        requested: u64,
        /// The partition's current revision.
        current: u64,
    },
}

/// A key's slot in the main map (module docs, "History"): its current version, and a link to
/// its newest superseded version still held. A deleted key whose old versions a readable
/// revision can still see stays as a tombstone (`current: None`) until compaction drops its
/// last one; a slot never has neither.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyEntry {
    /// The key's version at the current revision; `None`: deleted.
    current: Option<KeyValue>,
    /// Link (module docs, "History") to the key's newest old version.
    newest_old: u64,
}

impl KeyEntry {
    fn live(kv: KeyValue) -> KeyEntry {
        KeyEntry {
            current: Some(kv),
            newest_old: NO_LINK,
        }
    }
}

/// What one old version counts against [`Config::history_bytes_max`] besides its key and value:
/// its queue element and metadata (a little over 120 bytes), so versions of tiny keys with
/// empty values are bounded too.
pub const HISTORY_VERSION_OVERHEAD_BYTES: u64 = 128;

/// The bytes an old version of `key` counts against the history's byte bound.
fn held_bytes(key: &[u8], kv: &KeyValue) -> u64 {
    (key.len() + kv.value.len()) as u64 + HISTORY_VERSION_OVERHEAD_BYTES
}

/// A link to no old version. A link is an old version's sequence number plus one.
const NO_LINK: u64 = 0;

/// An old version as the history holds it: one element of the compaction queue, chained to
/// the key's next older one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    /// The key, shared with the main map.
    key: Bytes,
    old: OldVersion,
    /// Link to the key's next older old version ([`NO_LINK`] or a dropped one: none).
    older: u64,
    /// The key was deleted at `old.until` and not created again since, and this is its newest
    /// old version: the slot is a tombstone, and goes when this version goes.
    ends_tombstone: bool,
}

/// Every old version a readable revision can see (module docs, "History").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct History {
    /// Ascending by `(until, key)`: the order in which compaction drops them. Canonical (no
    /// apply-order tie), so equal states compare equal whether built by applying or by
    /// decoding a snapshot.
    queue: VecDeque<Held>,
    /// The sequence number of `queue[0]`: every old version ever held got the next number,
    /// so `queue[i]` has `base + i`, and a link below `base + 1` names a dropped version.
    base: u64,
    /// The compaction point: reads at revisions below it are refused.
    compacted: u64,
    /// Bytes counted against the bound over the old versions held (`held_bytes`).
    bytes: u64,
}

impl History {
    /// The old version a link names, if it is still held.
    /// The queue position `link` names (None: no version, or one already dropped).
    fn index(&self, link: u64) -> Option<usize> {
        let seq = link.checked_sub(1)?;
        usize::try_from(seq.checked_sub(self.base)?).ok()
    }

    fn get(&self, link: u64) -> Option<&Held> {
        self.queue.get(self.index(link)?)
    }

    fn get_mut(&mut self, link: u64) -> Option<&mut Held> {
        let i = self.index(link)?;
        self.queue.get_mut(i)
    }

    /// The link the next old version pushed gets.
    fn next_link(&self) -> u64 {
        self.base + self.queue.len() as u64 + 1
    }

    /// A key's old versions still held, newest first.
    fn chain(&self, newest: u64) -> impl Iterator<Item = &Held> {
        let mut link = newest;
        std::iter::from_fn(move || {
            let h = self.get(link)?;
            link = h.older;
            Some(h)
        })
    }

    /// The version of a key visible at `rev` (which the caller has checked is readable).
    fn visible<'a>(&'a self, slot: &'a KeyEntry, rev: u64) -> Option<&'a KeyValue> {
        if let Some(kv) = &slot.current {
            if kv.mod_revision <= rev {
                return Some(kv);
            }
        }
        let h = self
            .chain(slot.newest_old)
            .find(|h| h.old.kv.mod_revision <= rev)?;
        (rev < h.old.until).then_some(&h.old.kv)
    }

    /// Remembers in `slot` (whose key, as the map stores it, is `key`) that `kv` was
    /// overwritten (`deleted` false) or deleted at `until`. A version written and replaced
    /// within one revision (a transaction writing a key twice) was never visible at any
    /// revision and is not kept.
    fn supersede(
        &mut self,
        slot: &mut KeyEntry,
        key: &Bytes,
        kv: KeyValue,
        until: u64,
        deleted: bool,
    ) {
        if kv.mod_revision >= until {
            if deleted {
                // Created and deleted within this revision: a tombstone again, if the key
                // still has old versions (the slot's owner removes it otherwise).
                self.mark_tombstone(slot, true);
            }
            return;
        }
        self.bytes += held_bytes(key, &kv);
        let link = self.next_link();
        self.queue.push_back(Held {
            key: key.clone(),
            old: OldVersion { kv, until },
            older: slot.newest_old,
            ends_tombstone: deleted,
        });
        slot.newest_old = link;
    }

    /// Marks (a delete) or unmarks (the key created again) the slot's newest old version as
    /// ending a tombstone. Returns whether the slot has an old version.
    fn mark_tombstone(&mut self, slot: &KeyEntry, tombstone: bool) -> bool {
        match self.get_mut(slot.newest_old) {
            Some(h) => {
                h.ends_tombstone = tombstone;
                true
            }
            None => false,
        }
    }
}

/// Configuration of a partition's state machine. Must be the same on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The partition this state machine belongs to.
    pub partition_id: u64,
    /// Most sessions remembered (at least 1; default 65,536).
    pub sessions_max: usize,
    /// Most results cached per session (at least 1; default 4096, the client's in-flight
    /// request limit per connection). Module docs, rule 6.
    pub session_results_max: usize,
    /// How many of the partition's most recent revisions stay readable by revision (module
    /// docs, "History"). 0 keeps no history: only the current revision is readable.
    pub history_revisions: u64,
    /// At most this many bytes (keys and values) of superseded versions are kept: past it,
    /// the compaction point moves further up (module docs, "History").
    pub history_bytes_max: u64,
}

impl Config {
    /// The defaults for `partition_id`.
    pub fn new(partition_id: u64) -> Config {
        Config {
            partition_id,
            sessions_max: 65_536,
            session_results_max: 4096,
            history_revisions: HISTORY_REVISIONS_DEFAULT,
            history_bytes_max: HISTORY_BYTES_MAX_DEFAULT,
        }
    }
}

/// The default of [`Config::history_revisions`]: each partition's last 1,000 revisions stay
/// readable (module docs, "History"; its write cost is measured in
/// `bench-results/2026-11-28-history-layout-ab.md`).
pub const HISTORY_REVISIONS_DEFAULT: u64 = 1000;
/// The default of [`Config::history_bytes_max`]: 4 MiB per partition.
pub const HISTORY_BYTES_MAX_DEFAULT: u64 = 4 << 20;

/// One partition's replicated state (module docs). Two states are equal when they hold the
/// same data (current and old versions, compaction point, sessions, position): the history's
/// internal links differ between a state built by applying and one decoded from a snapshot.
#[derive(Debug, Clone)]
pub struct StateMachine {
    config: Config,
    /// Every key with a current version or a readable old one (module docs, "History").
    kvs: BTreeMap<Bytes, KeyEntry>,
    /// Keys with a current version (`kvs` less its tombstones).
    live: usize,
    revision: u64,
    applied_index: u64,
    applied_term: u64,
    sessions: SessionTable,
    /// Sum of key and value lengths over the current versions.
    data_bytes: u64,
    /// The compaction queue and point.
    history: History,
}

impl PartialEq for StateMachine {
    fn eq(&self, other: &StateMachine) -> bool {
        let queue_order = |sm: &'_ StateMachine| {
            sm.history
                .queue
                .iter()
                .map(|h| (h.old.until, h.key.clone()))
                .collect::<Vec<_>>()
        };
        self.config == other.config
            && self.revision == other.revision
            && self.applied_index == other.applied_index
            && self.applied_term == other.applied_term
            && self.sessions == other.sessions
            && self.data_bytes == other.data_bytes
            && self.live == other.live
            && self.history.compacted == other.history.compacted
            && self.history.bytes == other.history.bytes
            && self.iter().eq(other.iter())
            && self.history_iter().eq(other.history_iter())
            && queue_order(self) == queue_order(other)
    }
}

impl Eq for StateMachine {}

impl StateMachine {
    /// An empty partition (revision 0, nothing applied).
    pub fn new(config: Config) -> StateMachine {
        StateMachine {
            config,
            kvs: BTreeMap::new(),
            live: 0,
            revision: 0,
            applied_index: 0,
            applied_term: 0,
            sessions: SessionTable::default(),
            data_bytes: 0,
            history: History::default(),
        }
    }

    /// Reassembles a state machine from parts (used by the snapshot decoder, which has
    /// checked them): the current versions, and per key its old versions (ascending, every
    /// one with `compacted < until`, none overlapping the key's current version).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        config: Config,
        kvs: BTreeMap<Bytes, KeyValue>,
        revision: u64,
        applied_index: u64,
        applied_term: u64,
        sessions: SessionTable,
        olds_by_key: BTreeMap<Bytes, VecDeque<OldVersion>>,
        compacted: u64,
    ) -> StateMachine {
        let data_bytes = kvs
            .iter()
            .map(|(k, kv)| (k.len() + kv.value.len()) as u64)
            .sum();
        let live = kvs.len();
        let mut map: BTreeMap<Bytes, KeyEntry> = kvs
            .into_iter()
            .map(|(k, kv)| (k, KeyEntry::live(kv)))
            .collect();
        // Every old version in compaction order, chained per key as it is queued (a key's
        // versions come oldest first); each takes the map's own key.
        let mut all: Vec<(u64, Bytes, OldVersion)> = Vec::new();
        for (k, olds) in olds_by_key {
            if olds.is_empty() {
                continue;
            }
            let stored = match map.get_key_value(&k) {
                Some((stored, _)) => stored.clone(),
                None => {
                    map.insert(
                        k.clone(),
                        KeyEntry {
                            current: None,
                            newest_old: NO_LINK,
                        },
                    );
                    k
                }
            };
            all.extend(olds.into_iter().map(|o| (o.until, stored.clone(), o)));
        }
        all.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut history = History {
            compacted,
            ..History::default()
        };
        for (_, key, old) in all {
            let slot = map.get_mut(&key).expect("every history key has a slot");
            history.bytes += held_bytes(&key, &old.kv);
            let link = history.next_link();
            history.queue.push_back(Held {
                key,
                old,
                older: slot.newest_old,
                ends_tombstone: false,
            });
            slot.newest_old = link;
        }
        for slot in map.values() {
            if slot.current.is_none() {
                history.mark_tombstone(slot, true);
            }
        }
        StateMachine {
            config,
            kvs: map,
            live,
            revision,
            applied_index,
            applied_term,
            sessions,
            data_bytes,
            history,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The partition's revision.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Index of the last entry consumed.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Term of the last entry consumed.
    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    /// The session table.
    pub fn sessions(&self) -> &SessionTable {
        &self.sessions
    }

    /// Bytes of keys and values held (without per-key overhead): for status and memory quotas.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether the partition holds no key.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Every key-value, ascending by key.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &KeyValue)> {
        self.kvs
            .iter()
            .filter_map(|(k, slot)| slot.current.as_ref().map(|kv| (k, kv)))
    }

    /// The key-value at `key`.
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.kvs.get(key)?.current.as_ref()
    }

    /// Per key with superseded versions, those versions (ascending by key, then by revision;
    /// module docs, "History").
    pub fn history_iter(&self) -> impl Iterator<Item = (&Bytes, Vec<&OldVersion>)> {
        self.kvs
            .iter()
            .filter(|(_, slot)| slot.newest_old != NO_LINK)
            .filter_map(|(k, slot)| {
                let mut olds: Vec<&OldVersion> = self
                    .history
                    .chain(slot.newest_old)
                    .map(|h| &h.old)
                    .collect();
                olds.reverse();
                (!olds.is_empty()).then_some((k, olds))
            })
    }

    /// The compaction point: the oldest revision [`StateMachine::get_at`] and
    /// [`StateMachine::range_at`] serve.
    pub fn compacted(&self) -> u64 {
        self.history.compacted
    }

    /// Number of superseded versions held (module docs, "History").
    pub fn history_len(&self) -> usize {
        self.history.queue.len()
    }

    /// Bytes of keys and values held in superseded versions.
    pub fn history_bytes(&self) -> u64 {
        self.history.bytes
    }

    fn check_revision(&self, revision: u64) -> Result<(), RevisionError> {
        if revision > self.revision {
            return Err(RevisionError::Future {
                requested: revision,
                current: self.revision,
            });
        }
        if revision < self.history.compacted {
            return Err(RevisionError::Compacted {
                requested: revision,
                compacted: self.history.compacted,
            });
        }
        Ok(())
    }

    /// The key-value at `key` as it was at `revision` (module docs, "History"): `None` if the
    /// key did not exist then.
    pub fn get_at(&self, key: &[u8], revision: u64) -> Result<Option<&KeyValue>, RevisionError> {
        self.check_revision(revision)?;
        Ok(self
            .kvs
            .get(key)
            .and_then(|slot| self.history.visible(slot, revision)))
    }

    /// Reads keys per the range rules in the module docs: at most `limit` key-values (0: no
    /// limit) and at most `bytes_max` bytes counted as the module docs say (at least one
    /// key-value, if any is in the range).
    pub fn range(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        keys_only: bool,
        bytes_max: usize,
    ) -> RangeResult {
        match range_bounds(start, end) {
            Some(bounds) => page(
                self.kvs
                    .range::<[u8], _>(bounds)
                    .filter_map(|(k, slot)| slot.current.as_ref().map(|kv| (k, kv))),
                limit,
                keys_only,
                bytes_max,
            ),
            None => RangeResult::default(),
        }
    }

    /// [`StateMachine::range`] as the store was at `revision` (module docs, "History").
    pub fn range_at(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        keys_only: bool,
        bytes_max: usize,
        revision: u64,
    ) -> Result<RangeResult, RevisionError> {
        self.check_revision(revision)?;
        let Some(bounds) = range_bounds(start, end) else {
            return Ok(RangeResult::default());
        };
        Ok(page(
            self.kvs
                .range::<[u8], _>(bounds)
                .filter_map(|(k, slot)| self.history.visible(slot, revision).map(|kv| (k, kv))),
            limit,
            keys_only,
            bytes_max,
        ))
    }

    /// Checks the state's invariants; returns the first one broken. O(keys + sessions): for
    /// tests, and for the engine after restoring state if it wants to.
    ///
    /// 1. every key is non-empty;
    /// 2. every key has `1 <= create_revision <= mod_revision <= revision` and `version >= 1`;
    /// 3. every session has `last_index <= applied_index`;
    /// 4. the eviction index holds exactly one entry per session, at its `last_index`;
    /// 5. every session's cached results are strictly ascending by sequence, each sequence is
    ///    `>= 1` and `>= first_unacked` of its session, and each revision is `<= revision`;
    /// 6. `data_bytes` is the sum of key and value lengths, and `len` counts the keys with
    ///    a current version;
    /// 7. the history (module docs, "History"): `compacted <= revision`; every key without a
    ///    current version has at least one old version; a key's old versions have
    ///    `mod_revision < until <= revision`, `until > compacted`, and each ends at or before
    ///    the next one (or the current version) was written; the compaction queue holds
    ///    exactly their `(until, key)`, in ascending order; the history's byte count is their
    ///    key and value lengths plus the per-version overhead.
    ///
    /// The table bounds (`sessions_max`, `session_results_max`) are not checked: a table
    /// restored from a snapshot taken under larger bounds may exceed them until it next
    /// changes.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let mut data_bytes = 0u64;
        let mut live = 0usize;
        for (k, slot) in &self.kvs {
            if k.is_empty() {
                return Err("empty key");
            }
            let Some(kv) = &slot.current else {
                if self.history.get(slot.newest_old).is_none() {
                    return Err("deleted key kept with no old version");
                }
                continue;
            };
            live += 1;
            data_bytes += (k.len() + kv.value.len()) as u64;
            if kv.create_revision == 0
                || kv.create_revision > kv.mod_revision
                || kv.mod_revision > self.revision
            {
                return Err("key revisions not 1 <= create <= mod <= revision");
            }
            if kv.version == 0 {
                return Err("key version 0");
            }
        }
        if data_bytes != self.data_bytes {
            return Err("data_bytes differs from the sum of key and value lengths");
        }
        if live != self.live {
            return Err("key count differs from the keys with a current version");
        }
        self.check_history()?;
        let t = &self.sessions;
        if t.by_last_index.len() != t.clients.len() {
            return Err("eviction index and session table differ in size");
        }
        for (id, rec) in &t.clients {
            if rec.last_index > self.applied_index {
                return Err("session last index above the applied index");
            }
            if t.by_last_index.get(&rec.last_index) != Some(id) {
                return Err("eviction index does not point at the session");
            }
            let mut prev = None;
            for &(sequence, ref result) in &rec.results {
                if prev.is_some_and(|p| p >= sequence) {
                    return Err("cached results not strictly ascending by sequence");
                }
                prev = Some(sequence);
                if sequence == 0 {
                    return Err("cached result under sequence 0");
                }
                if sequence < rec.first_unacked {
                    return Err("cached result below the session's first_unacked");
                }
                if result.revision > self.revision {
                    return Err("cached result revision above the revision");
                }
            }
        }
        Ok(())
    }

    fn check_history(&self) -> Result<(), &'static str> {
        let h = &self.history;
        if h.compacted > self.revision {
            return Err("compaction point above the revision");
        }
        let mut reached = 0usize;
        let mut bytes = 0u64;
        for (k, slot) in &self.kvs {
            let mut next_start = slot.current.as_ref().map_or(u64::MAX, |kv| kv.mod_revision);
            if slot.newest_old != NO_LINK && h.get(slot.newest_old).is_none() {
                // A dropped version: only allowed if nothing newer is held either.
                if slot.newest_old > h.base + h.queue.len() as u64 {
                    return Err("link to an old version never held");
                }
            }
            let mut newest = true;
            // The version after each old one (the current, then each old one in turn).
            let mut newer: Option<&KeyValue> = slot.current.as_ref();
            for held in h.chain(slot.newest_old) {
                let o = &held.old;
                if newer.is_some_and(|n| !follows(o, n)) {
                    return Err(
                        "a version neither continues the one before it nor starts a new life",
                    );
                }
                newer = Some(&o.kv);
                if held.key != *k {
                    return Err("old version chained under another key");
                }
                if o.kv.mod_revision >= o.until || o.until > self.revision {
                    return Err("old version not mod_revision < until <= revision");
                }
                if o.until <= h.compacted {
                    return Err("old version at or below the compaction point");
                }
                if o.until > next_start {
                    return Err("old version overlaps the version after it");
                }
                if o.kv.create_revision == 0
                    || o.kv.create_revision > o.kv.mod_revision
                    || o.kv.version == 0
                {
                    return Err("old version's revisions not 1 <= create <= mod, version >= 1");
                }
                if held.ends_tombstone != (newest && slot.current.is_none()) {
                    return Err("tombstone mark not exactly on a deleted key's newest version");
                }
                if held.older != NO_LINK && held.older >= h.next_link() {
                    return Err("link to an old version never held");
                }
                newest = false;
                next_start = o.kv.mod_revision;
                reached += 1;
                bytes += held_bytes(k, &o.kv);
                if reached > h.queue.len() {
                    return Err("old version chains loop");
                }
            }
        }
        if reached != h.queue.len() {
            return Err("compaction queue holds versions no key reaches");
        }
        let ordered = h
            .queue
            .iter()
            .zip(h.queue.iter().skip(1))
            .all(|(a, b)| (a.old.until, &a.key) < (b.old.until, &b.key));
        if !ordered {
            return Err("compaction queue not ascending by (until, key)");
        }
        if bytes != h.bytes {
            return Err("history bytes differ from the versions' key, value and overhead bytes");
        }
        Ok(())
    }

    fn check_order(&self, index: u64, term: u64) -> Result<(), ApplyError> {
        if index <= self.applied_index {
            return Err(ApplyError::IndexNotAfterApplied {
                index,
                applied_index: self.applied_index,
            });
        }
        if term < self.applied_term {
            return Err(ApplyError::TermRegressed {
                term,
                applied_term: self.applied_term,
            });
        }
        Ok(())
    }

    /// Consumes a log entry that carries no command (the leader's no-op of a new term, a
    /// configuration change): only the applied index and term move.
    pub fn advance_applied(&mut self, index: u64, term: u64) -> Result<(), ApplyError> {
        self.check_order(index, term)?;
        self.applied_index = index;
        self.applied_term = term;
        Ok(())
    }

    /// Decodes a committed entry's data and applies it. Decoding uses [`Limits::FORMAT`], not
    /// the configured limits: a committed entry must be applied the same way on every replica
    /// whatever each node's configuration (the configured limits are checked when proposing).
    /// An entry that does not decode is consumed as a no-op and reported as
    /// [`ApplyError::Malformed`] (identically on every replica).
    ///
    /// `data` should be a buffer holding just this entry (module docs, "Memory").
    pub fn apply_entry(&mut self, index: u64, term: u64, data: &Bytes) -> CommandResult {
        self.check_order(index, term)?;
        match Command::decode(data, &Limits::FORMAT) {
            Ok(cmd) => self.apply(index, term, &cmd),
            Err(e) => {
                tracing::error!(partition = self.config.partition_id, index, term, error = %e,
                    "committed entry is not a valid command; consumed as a no-op");
                self.applied_index = index;
                self.applied_term = term;
                Err(ApplyError::Malformed(e))
            }
        }
    }

    /// Applies one committed command at log position (`index`, `term`); see the module docs
    /// for the rules. Entries must come in increasing index order; a violation is reported as
    /// an error and changes nothing.
    pub fn apply(&mut self, index: u64, term: u64, cmd: &Command) -> CommandResult {
        self.check_order(index, term)?;
        let result = self.apply_checked(index, cmd);
        self.applied_index = index;
        self.applied_term = term;
        result
    }

    fn apply_checked(&mut self, index: u64, cmd: &Command) -> CommandResult {
        let Some(Session {
            client_id,
            sequence,
            first_unacked,
        }) = cmd.session
        else {
            return Ok(self.execute(&cmd.op));
        };
        // Module docs, "Exactly-once sessions" (Raft thesis §6.3): rules 1 and 2.
        let rec = self
            .sessions
            .open_or_touch(client_id, index, self.config.sessions_max);
        if first_unacked > rec.first_unacked {
            rec.first_unacked = first_unacked;
            rec.drop_below(first_unacked);
        }
        // Rule 3: the client already has this answer.
        if sequence < rec.first_unacked {
            tracing::debug!(
                client_id,
                sequence,
                first_unacked = rec.first_unacked,
                "stale session sequence"
            );
            return Err(ApplyError::SessionSequenceStale {
                client_id,
                sequence,
                first_unacked: rec.first_unacked,
            });
        }
        // Rule 4: a retry of an applied command; answer from the cache, apply nothing.
        let insert_at = match rec.position(sequence) {
            Ok(i) => return Ok(rec.results[i].1.clone()),
            Err(i) => i,
        };
        // Rule 5: never applied (every applied sequence >= first_unacked is cached).
        let response = self.execute(&cmd.op);
        let results_max = self.config.session_results_max.max(1);
        let rec = self
            .sessions
            .clients
            .get_mut(&client_id)
            .expect("the session was opened above and execute does not touch sessions");
        rec.results.insert(insert_at, (sequence, response.clone()));
        // Rule 6: bound the cache; a dropped sequence is refused from now on, never re-applied.
        while rec.results.len() > results_max {
            let Some((dropped, _)) = rec.results.pop_front() else {
                break;
            };
            rec.first_unacked = dropped + 1;
            tracing::debug!(
                client_id,
                dropped,
                "session result cache full; oldest dropped"
            );
        }
        Ok(response)
    }

    /// Runs an operation. Cannot fail: every rejection happened before.
    fn execute(&mut self, op: &CommandOp) -> Response {
        let rev = self.revision + 1;
        let op = match op {
            CommandOp::Put(p) => {
                if p.if_absent {
                    if let Some(existing) = self.get(&p.key) {
                        let prev = p.return_prev.then(|| existing.clone());
                        return Response {
                            revision: self.revision,
                            op: ResponseOp::Put {
                                written: false,
                                prev,
                            },
                        };
                    }
                }
                let prev = self.put_at(&p.key, &p.value, rev, p.return_prev);
                self.revision = rev;
                ResponseOp::Put {
                    written: true,
                    prev,
                }
            }
            CommandOp::Delete(d) => {
                let (deleted, prev) = self.remove(&d.key, rev, d.return_prev);
                if deleted {
                    self.revision = rev;
                }
                ResponseOp::Delete { deleted, prev }
            }
            CommandOp::Txn(t) => {
                let succeeded = t.compares.iter().all(|c| self.compare(c));
                let ops = if succeeded { &t.success } else { &t.failure };
                let mut wrote = false;
                let mut results = Vec::with_capacity(ops.len());
                for op in ops {
                    results.push(match op {
                        TxnOp::Put {
                            key,
                            value,
                            return_prev,
                        } => {
                            wrote = true;
                            OpResult::Put {
                                prev: self.put_at(key, value, rev, *return_prev),
                            }
                        }
                        TxnOp::Delete { key, return_prev } => {
                            let (deleted, prev) = self.remove(key, rev, *return_prev);
                            wrote |= deleted;
                            OpResult::Delete { deleted, prev }
                        }
                        TxnOp::Get { key } => OpResult::Get {
                            kv: self.get(key).cloned(),
                        },
                    });
                }
                if wrote {
                    self.revision = rev;
                }
                ResponseOp::Txn { succeeded, results }
            }
        };
        if self.revision == rev {
            // This command wrote: keep the history canonical and within its bound.
            self.sort_tail(rev);
            self.compact(rev.saturating_sub(self.config.history_revisions));
            self.compact_to_bytes(self.config.history_bytes_max);
        }
        Response {
            revision: self.revision,
            op,
        }
    }

    /// Writes `key = value` at revision `rev`; returns the previous key-value if asked.
    ///
    /// One tree search for an existing key (module docs, "History"): with history kept, the
    /// entry API also yields the map's own key, which the compaction queue shares.
    fn put_at(
        &mut self,
        key: &Bytes,
        value: &Bytes,
        rev: u64,
        return_prev: bool,
    ) -> Option<KeyValue> {
        if self.config.history_revisions == 0 {
            if let Some(slot) = self.kvs.get_mut(key) {
                let old = Self::write(
                    &mut self.live,
                    &mut self.data_bytes,
                    &mut self.history,
                    key,
                    slot,
                    value,
                    rev,
                );
                return old.filter(|_| return_prev);
            }
        } else if let btree_map::Entry::Occupied(mut o) = self.kvs.entry(key.clone()) {
            let old = Self::write(
                &mut self.live,
                &mut self.data_bytes,
                &mut self.history,
                key,
                o.get_mut(),
                value,
                rev,
            )?;
            let prev = return_prev.then(|| old.clone());
            let stored = o.key().clone();
            self.history
                .supersede(o.get_mut(), &stored, old, rev, false);
            return prev;
        }
        // A new key. It is copied once, when it is created: a key slice would pin its whole
        // first entry (perhaps a large value, long overwritten) for the key's lifetime.
        self.live += 1;
        self.data_bytes += (key.len() + value.len()) as u64;
        self.kvs.insert(
            Bytes::copy_from_slice(key),
            KeyEntry::live(KeyValue {
                value: value.clone(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
            }),
        );
        None
    }

    /// Writes a new current version into an existing slot (a live key or a tombstone);
    /// returns the version it replaced.
    fn write(
        live: &mut usize,
        data_bytes: &mut u64,
        history: &mut History,
        key: &Bytes,
        slot: &mut KeyEntry,
        value: &Bytes,
        rev: u64,
    ) -> Option<KeyValue> {
        let (create_revision, version) = match &slot.current {
            Some(kv) => {
                *data_bytes -= kv.value.len() as u64;
                (kv.create_revision, kv.version + 1)
            }
            None => {
                // A tombstone: the key is created again, with a new generation.
                history.mark_tombstone(slot, false);
                *live += 1;
                *data_bytes += key.len() as u64;
                (rev, 1)
            }
        };
        *data_bytes += value.len() as u64;
        slot.current.replace(KeyValue {
            value: value.clone(),
            create_revision,
            mod_revision: rev,
            version,
        })
    }

    /// Deletes `key` at revision `rev` (the caller bumps the revision iff a key was
    /// removed); returns whether it existed, and the removed key-value if asked. With history
    /// kept, the key stays as a tombstone while its old versions are readable.
    fn remove(&mut self, key: &Bytes, rev: u64, return_prev: bool) -> (bool, Option<KeyValue>) {
        let old = if self.config.history_revisions == 0 {
            let Some((stored, mut slot)) = self.kvs.remove_entry(key.as_ref()) else {
                return (false, None);
            };
            let old = slot.current.take();
            if self.history.mark_tombstone(&slot, true) {
                // History restored from a snapshot and not yet compacted away.
                self.kvs.insert(stored, slot);
            }
            old
        } else {
            let btree_map::Entry::Occupied(mut o) = self.kvs.entry(key.clone()) else {
                return (false, None);
            };
            let Some(old) = o.get_mut().current.take() else {
                return (false, None);
            };
            let prev = old.clone();
            let stored = o.key().clone();
            self.history.supersede(o.get_mut(), &stored, old, rev, true);
            if self.history.get(o.get().newest_old).is_none() {
                // Created within this revision and no older version held: no readable
                // revision sees the key.
                o.remove();
            }
            Some(prev)
        };
        let Some(old) = old else {
            return (false, None);
        };
        self.live -= 1;
        self.data_bytes -= (key.len() + old.value.len()) as u64;
        (true, return_prev.then_some(old))
    }

    /// Moves the compaction point up to `to` (never down) and drops every old version no
    /// revision `>= to` can see (those with `until <= to`), oldest first, in O(1) each: a
    /// key's chain needs no fixing (a link to a dropped version means none), and only a
    /// tombstone's last version costs a search of the map, to remove the tombstone.
    fn compact(&mut self, to: u64) {
        let h = &mut self.history;
        if to <= h.compacted {
            return;
        }
        h.compacted = to;
        while h.queue.front().is_some_and(|f| f.old.until <= to) {
            let held = h.queue.pop_front().expect("front exists");
            h.base += 1;
            h.bytes -= held_bytes(&held.key, &held.old.kv);
            if held.ends_tombstone {
                let slot = self.kvs.remove(held.key.as_ref());
                assert!(
                    slot.is_some_and(|s| s.current.is_none() && s.newest_old == h.base),
                    "history invariant: a tombstone mark is on a deleted key's newest version"
                );
            }
        }
    }

    /// Keeps the queue's `(until, key)` order canonical after one revision superseded several
    /// keys (a transaction): they are the tail, all with `until == rev`, distinct keys, and
    /// nothing links to them but their keys' slots, which are relinked.
    fn sort_tail(&mut self, rev: u64) {
        let h = &mut self.history;
        let tail = h
            .queue
            .iter()
            .rev()
            .take_while(|held| held.old.until == rev)
            .count();
        if tail < 2 {
            return;
        }
        let start = h.queue.len() - tail;
        // Checked in place first: making a wrapped ring contiguous moves the whole queue.
        let sorted = h
            .queue
            .range(start..)
            .zip(h.queue.range(start + 1..))
            .all(|(a, b)| a.key < b.key);
        if sorted {
            return;
        }
        let mut moved: Vec<Held> = h.queue.drain(start..).collect();
        moved.sort_by(|a, b| a.key.cmp(&b.key));
        h.queue.extend(moved);
        let slice = h.queue.range(start..);
        let first = h.base + start as u64 + 1;
        for (i, held) in slice.enumerate() {
            let slot = self
                .kvs
                .get_mut(held.key.as_ref())
                .expect("history invariant: a held version's key has a slot");
            slot.newest_old = first + i as u64;
        }
    }

    /// Moves the compaction point up, oldest version first, until the history holds at most
    /// `bytes_max` bytes: to the `until` of the last version dropped, so every version that
    /// revision cannot see goes with it.
    fn compact_to_bytes(&mut self, bytes_max: u64) {
        while self.history.bytes > bytes_max {
            let Some(until) = self.history.queue.front().map(|h| h.old.until) else {
                break;
            };
            self.compact(until);
        }
    }

    fn compare(&self, c: &Compare) -> bool {
        let kv = self.get(&c.key);
        let ord = match (&c.target, kv) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_ref().cmp(v.as_ref()),
            (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
            (CompareTarget::CreateRevision(v), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(v),
            (CompareTarget::ModRevision(v), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(v),
            (CompareTarget::Exists(b), kv) => kv.is_some().cmp(b),
        };
        c.cmp.holds(ord)
    }
}

/// The map bounds of a range per the module docs' rules; `None` when the range is empty
/// (`end <= start`, `end` neither empty nor `[0]`).
/// A key range as map bounds.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

fn range_bounds<'a>(start: &'a [u8], end: &'a [u8]) -> Option<KeyBounds<'a>> {
    let upper: Bound<&[u8]> = if end.is_empty() {
        Bound::Included(start)
    } else if end == [0] {
        Bound::Unbounded
    } else if end <= start {
        return None;
    } else {
        Bound::Excluded(end)
    };
    Some((Bound::Included(start), upper))
}

/// One page of key-values from an ascending iterator, cut by `limit` (0: none) and by
/// `bytes_max` (module docs, "Ranges").
fn page<'a>(
    kvs: impl Iterator<Item = (&'a Bytes, &'a KeyValue)>,
    limit: usize,
    keys_only: bool,
    bytes_max: usize,
) -> RangeResult {
    let limit = if limit == 0 { usize::MAX } else { limit };
    let mut out = RangeResult::default();
    let mut bytes = 0usize;
    for (k, kv) in kvs {
        let value_len = if keys_only { 0 } else { kv.value.len() };
        bytes = bytes.saturating_add(k.len() + value_len + RANGE_ENTRY_OVERHEAD_BYTES);
        // Counted before cloning anything: the page stops at the budget, not after it.
        if out.kvs.len() == limit || (bytes > bytes_max && !out.kvs.is_empty()) {
            out.more = true;
            out.next_key = Some(k.clone());
            break;
        }
        let kv = if keys_only {
            KeyValue {
                value: Bytes::new(),
                ..kv.clone()
            }
        } else {
            kv.clone()
        };
        out.kvs.push((k.clone(), kv));
    }
    out
}

/// Whether `newer` can be the version of the same key that came after `older`: it either
/// continues `older`'s life (same creation, a later version, written when `older` ended; more
/// than one version later when a transaction put the key several times) or starts a new life
/// (created in the revision that wrote it, at or after `older`'s end, the key deleted
/// between; its version counts that revision's puts).
pub(crate) fn follows(older: &OldVersion, newer: &KeyValue) -> bool {
    let continues = newer.create_revision == older.kv.create_revision
        && newer.version > older.kv.version
        && newer.mod_revision == older.until;
    let recreated =
        newer.create_revision == newer.mod_revision && newer.create_revision >= older.until;
    continues || recreated
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `follows`: the continuity rule `check_history` and the snapshot decoder apply between a
    /// key's versions (a fuzz corpus input broke it and decoded before the rule).
    #[test]
    fn a_version_continues_the_one_before_or_starts_a_new_life() {
        let kv = |create, rev, version| KeyValue {
            value: Bytes::new(),
            create_revision: create,
            mod_revision: rev,
            version,
        };
        let old = OldVersion {
            kv: kv(2, 4, 3),
            until: 7,
        };
        assert!(follows(&old, &kv(2, 7, 4)), "the next put");
        assert!(follows(&old, &kv(2, 7, 6)), "three puts in one transaction");
        assert!(
            follows(&old, &kv(9, 9, 1)),
            "deleted at 7, created again at 9"
        );
        assert!(follows(&old, &kv(7, 7, 2)), "deleted and put twice at 7");
        assert!(!follows(&old, &kv(2, 7, 3)), "same version again");
        assert!(!follows(&old, &kv(2, 8, 4)), "a gap without a deletion");
        assert!(!follows(&old, &kv(3, 7, 4)), "another creation revision");
        assert!(
            !follows(&old, &kv(6, 6, 1)),
            "created before the old one ended"
        );
    }

    /// Review finding (issue 16, increment 2): the history shares the key the state stores,
    /// never the command's key, which is a slice of its log entry and would pin the entry
    /// (values included) for as long as the key has history.
    #[test]
    fn history_keys_do_not_pin_log_entries() {
        let mut sm = StateMachine::new(Config {
            history_revisions: 10,
            ..Config::new(1)
        });
        let entry = |v: &str| Command::put("k", v.to_owned()).encode();
        let (e1, e2, e3) = (entry("1"), entry("2"), entry("3"));
        sm.apply_entry(1, 1, &e1).unwrap();
        sm.apply_entry(2, 1, &e2).unwrap();
        let del = Command::delete("k").encode();
        sm.apply_entry(3, 1, &del).unwrap();
        sm.apply_entry(4, 1, &e3).unwrap();
        let inside = |b: &Bytes, e: &Bytes| {
            let (p, s) = (b.as_ptr() as usize, e.as_ptr() as usize);
            p >= s && p < s + e.len()
        };
        assert_eq!(sm.history_len(), 2);
        for k in sm.kvs.keys() {
            for e in [&e1, &e2, &e3, &del] {
                assert!(!inside(k, e), "a stored key points into a log entry");
            }
        }
        for held in &sm.history.queue {
            for e in [&e1, &e2, &e3, &del] {
                assert!(
                    !inside(&held.key, e),
                    "a queued key points into a log entry"
                );
            }
        }
        assert_eq!(sm.check_invariants(), Ok(()));
    }

    /// A deleted key stays in the map as a tombstone only while a readable revision can see
    /// one of its old versions; compaction removes it with its last one, so deleting keys
    /// does not grow the map. A key created and deleted within one revision leaves nothing.
    #[test]
    fn tombstones_go_with_their_last_old_version() {
        let mut sm = StateMachine::new(Config {
            history_revisions: 3,
            ..Config::new(1)
        });
        let mut index = 0;
        let mut apply = |sm: &mut StateMachine, cmd: Command| {
            index += 1;
            sm.apply(index, 1, &cmd).unwrap()
        };
        for i in 0..50 {
            let k = format!("k{i:02}");
            apply(&mut sm, Command::put(k.clone(), "v"));
            apply(&mut sm, Command::delete(k));
            assert_eq!(sm.check_invariants(), Ok(()));
        }
        // k48 lived at 97..98 and k49 at 99..100; revisions 97..=100 stay readable, and they
        // see both: two tombstones, nothing live.
        assert_eq!((sm.len(), sm.revision(), sm.compacted()), (0, 100, 97));
        assert_eq!(sm.kvs.len(), 2);
        assert_eq!(sm.get_at(b"k48", 97).unwrap().unwrap().create_revision, 97);
        assert_eq!(sm.get_at(b"k48", 99).unwrap(), None);
        // Created again from its tombstone: a new generation.
        apply(&mut sm, Command::put("k49", "w"));
        let kv = sm.get(b"k49").unwrap().clone();
        assert_eq!((kv.create_revision, kv.version), (101, 1));
        assert_eq!(sm.get_at(b"k49", 99).unwrap().unwrap().value, "v");
        assert_eq!(sm.get_at(b"k49", 100).unwrap(), None);
        assert_eq!(sm.check_invariants(), Ok(()));
        // A transaction creating and deleting a key in one revision keeps no trace of it.
        let txn = Command {
            session: None,
            op: CommandOp::Txn(crate::command::Txn {
                compares: vec![],
                success: vec![
                    TxnOp::Put {
                        key: Bytes::from_static(b"tmp"),
                        value: Bytes::from_static(b"x"),
                        return_prev: false,
                    },
                    TxnOp::Delete {
                        key: Bytes::from_static(b"tmp"),
                        return_prev: false,
                    },
                ],
                failure: vec![],
            }),
        };
        apply(&mut sm, txn);
        assert!(!sm.kvs.contains_key(b"tmp".as_slice()));
        assert_eq!(sm.check_invariants(), Ok(()));
        for _ in 0..4 {
            apply(&mut sm, Command::put("k49", "z"));
        }
        assert_eq!(sm.kvs.len(), 1, "every tombstone is compacted away");
        assert_eq!(sm.check_invariants(), Ok(()));
    }

    /// Review finding: the byte bound counts each version's overhead, so transactions of
    /// tiny keys with empty values cannot make the history hold `history_revisions` times
    /// their op count in memory.
    #[test]
    fn the_byte_cap_counts_each_versions_overhead() {
        let mut sm = StateMachine::new(Config {
            history_revisions: 1000,
            history_bytes_max: 64 * HISTORY_VERSION_OVERHEAD_BYTES,
            ..Config::new(1)
        });
        let ops = |n: u8| {
            (0..n)
                .map(|i| TxnOp::Put {
                    key: Bytes::from(vec![b'a' + i % 26, i / 26]),
                    value: Bytes::new(),
                    return_prev: false,
                })
                .collect::<Vec<_>>()
        };
        for index in 1..=50 {
            let txn = Command {
                session: None,
                op: CommandOp::Txn(crate::command::Txn {
                    compares: vec![],
                    success: ops(100),
                    failure: vec![],
                }),
            };
            sm.apply(index, 1, &txn).unwrap();
            assert!(sm.history_bytes() <= 64 * HISTORY_VERSION_OVERHEAD_BYTES);
            assert!(sm.history_len() <= 64, "{} versions held", sm.history_len());
        }
        assert_eq!(sm.check_invariants(), Ok(()));
    }

    /// A client rewriting one large value cannot make the history hold more than
    /// `history_bytes_max`, whatever `history_revisions` allows; the newest versions stay.
    #[test]
    fn the_byte_cap_bounds_history_of_large_values() {
        let mut sm = StateMachine::new(Config {
            history_revisions: 1000,
            history_bytes_max: 3 << 20,
            ..Config::new(1)
        });
        for i in 1..=20u64 {
            let cmd = Command::put("big", vec![i as u8; 1 << 20]);
            sm.apply(i, 1, &cmd).unwrap();
            assert!(sm.history_bytes() <= 3 << 20, "{}", sm.history_bytes());
        }
        // 2 old versions of 1 MiB + 3 bytes of key + the overhead each fit under 3 MiB; the
        // third would not.
        assert_eq!(sm.history_len(), 2);
        assert_eq!(sm.compacted(), 18);
        assert_eq!(sm.get_at(b"big", 18).unwrap().unwrap().value[0], 18);
        assert!(sm.get_at(b"big", 17).is_err());
        assert_eq!(sm.check_invariants(), Ok(()));
    }
}
