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
//! can see (`until <= C`), oldest first, in O(1) each: a queue holds every old version's
//! `(until, key)` in ascending order, which is also apply order. The point moves
//! deterministically, from the log alone: after every command that writes at revision `r`
//! it becomes `max(C, r - history_revisions)` ([`Config::history_revisions`], a cluster
//! constant like the session bounds), so the current revision and the `history_revisions`
//! before it are readable; and then, while the superseded versions hold more than
//! [`Config::history_bytes_max`] bytes of keys and values, it moves on to the end of the
//! oldest one. Memory is bounded by bytes, whatever the values' sizes: a client rewriting a
//! 1 MiB value cannot make every replica keep a thousand copies of it. The history copies a
//! key when it enters the history (never a slice of a log entry, which would pin the entry).
//!
//! Revisions are still the partition's own (a partition-local counter); the cluster-wide
//! revision (`crate::revision`, increment 3) replaces the counter, and an explicit
//! `compact R` and compaction by age (increment 2's remaining part, at the cluster level)
//! replace the count bound. The default ([`HISTORY_REVISIONS_DEFAULT`]) is 0, no history:
//! measured in a 3-node cluster, keeping 1,000 revisions per partition raised server CPU per
//! replicated write by about a third, nearly all of it cold tree searches of `by_key` (two on
//! every overwrite, two on every compaction) interleaved across 64 partitions; in a hot loop
//! over one partition the same work costs 0.6 µs. Before it is on by default the per-key
//! history should live in the key's own entry of the main map (tombstones for deleted keys,
//! as etcd's key index keeps generations), so an overwrite does one search, not three.
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

use std::collections::{BTreeMap, VecDeque};
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

/// The superseded versions of keys newer than the compaction point (module docs, "History").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct History {
    /// Per key, its superseded versions, ascending by `mod_revision` (so also by `until`).
    /// Keys without one are absent.
    by_key: BTreeMap<Bytes, VecDeque<OldVersion>>,
    /// `(until, key)` of every superseded version, ascending by `(until, key)`: the order in
    /// which compaction drops them. Canonical (no apply-order tie), so equal states compare
    /// equal whether built by applying or by decoding a snapshot.
    queue: VecDeque<(u64, Bytes)>,
    /// The compaction point: reads at revisions below it are refused.
    compacted: u64,
    /// Sum of key and value lengths over every superseded version.
    bytes: u64,
}

impl History {
    /// Reassembles a history from a snapshot's versions (checked by the decoder: keys
    /// ascending, versions ascending, `compacted < until`).
    pub(crate) fn from_parts(
        by_key: BTreeMap<Bytes, VecDeque<OldVersion>>,
        compacted: u64,
    ) -> History {
        let mut queue: Vec<(u64, Bytes)> = Vec::new();
        let mut bytes = 0u64;
        for (k, olds) in &by_key {
            for o in olds {
                queue.push((o.until, k.clone()));
                bytes += (k.len() + o.kv.value.len()) as u64;
            }
        }
        queue.sort();
        History {
            by_key,
            queue: queue.into(),
            compacted,
            bytes,
        }
    }

    /// Per key, its superseded versions (ascending by key, then by revision).
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &VecDeque<OldVersion>)> {
        self.by_key.iter()
    }

    /// Number of superseded versions held.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// The compaction point.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Remembers that `kv` was overwritten or deleted at `until`. `key` may be a slice of a
    /// log entry: the history keeps its own copy of a key (made when the key enters the
    /// history, shared by its versions and the queue), so it never pins an entry. A version written and
    /// replaced within one revision (a transaction writing a key twice) was never visible at
    /// any revision and is not kept.
    fn supersede(&mut self, key: &Bytes, kv: KeyValue, until: u64) {
        if kv.mod_revision >= until {
            return;
        }
        self.bytes += (key.len() + kv.value.len()) as u64;
        // A key already in the history is shared (a reference count); a new one is copied:
        // a slice of the command would pin its whole entry (other keys' values included) for
        // as long as the key has history. (Asking `kvs` for its stored key instead costs a
        // second tree search on every overwrite, more than the copy.)
        let key = match self.by_key.get_key_value(key.as_ref()) {
            Some((k, _)) => k.clone(),
            None => Bytes::copy_from_slice(key),
        };
        self.by_key
            .entry(key.clone())
            .or_default()
            .push_back(OldVersion { kv, until });
        self.queue.push_back((until, key));
    }

    /// Keeps the queue's `(until, key)` order canonical after one revision superseded several
    /// keys (a transaction): its entries are the tail, all with `until == rev`, distinct keys.
    fn sort_tail(&mut self, rev: u64) {
        let tail = self
            .queue
            .iter()
            .rev()
            .take_while(|(u, _)| *u == rev)
            .count();
        if tail > 1 {
            let start = self.queue.len() - tail;
            self.queue.make_contiguous()[start..].sort();
        }
    }

    /// Moves the compaction point up to `to` (never down) and drops every version no revision
    /// `>= to` can see (those with `until <= to`).
    fn compact(&mut self, to: u64) {
        if to <= self.compacted {
            return;
        }
        self.compacted = to;
        while let Some((until, _)) = self.queue.front() {
            if *until > to {
                break;
            }
            let (until, key) = self.queue.pop_front().expect("front exists");
            let olds = self
                .by_key
                .get_mut(key.as_ref())
                .expect("history invariant: every queued version is in its key's list");
            let old = olds
                .pop_front()
                .expect("history invariant: every queued version is in its key's list");
            assert_eq!(
                old.until, until,
                "history invariant: a key's oldest version is the first queued"
            );
            self.bytes -= (key.len() + old.kv.value.len()) as u64;
            if olds.is_empty() {
                self.by_key.remove(key.as_ref());
            }
        }
    }

    /// Moves the compaction point up, oldest version first, until the history holds at most
    /// `bytes_max` bytes: to the `until` of the last version dropped, so every version that
    /// revision cannot see goes with it.
    fn compact_to_bytes(&mut self, bytes_max: u64) {
        while self.bytes > bytes_max {
            let Some(&(until, _)) = self.queue.front() else {
                break;
            };
            self.compact(until);
        }
    }

    /// The version of a key visible at `rev`, given its current version.
    fn visible<'a>(
        &'a self,
        key: &[u8],
        current: Option<&'a KeyValue>,
        rev: u64,
    ) -> Option<&'a KeyValue> {
        if let Some(kv) = current {
            if kv.mod_revision <= rev {
                return Some(kv);
            }
        }
        let olds = self.by_key.get(key)?;
        let i = olds.partition_point(|o| o.kv.mod_revision <= rev);
        let o = olds.get(i.checked_sub(1)?)?;
        (rev < o.until).then_some(&o.kv)
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

/// The default of [`Config::history_revisions`]: no history (module docs, "History": the
/// history's write cost is measured and its redesign planned before it is on by default).
pub const HISTORY_REVISIONS_DEFAULT: u64 = 0;
/// The default of [`Config::history_bytes_max`]: 4 MiB per partition.
pub const HISTORY_BYTES_MAX_DEFAULT: u64 = 4 << 20;

/// One partition's replicated state (module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateMachine {
    config: Config,
    kvs: BTreeMap<Bytes, KeyValue>,
    revision: u64,
    applied_index: u64,
    applied_term: u64,
    sessions: SessionTable,
    /// Sum of key and value lengths over `kvs`.
    data_bytes: u64,
    /// Superseded versions newer than the compaction point.
    history: History,
}

impl StateMachine {
    /// An empty partition (revision 0, nothing applied).
    pub fn new(config: Config) -> StateMachine {
        StateMachine {
            config,
            kvs: BTreeMap::new(),
            revision: 0,
            applied_index: 0,
            applied_term: 0,
            sessions: SessionTable::default(),
            data_bytes: 0,
            history: History::default(),
        }
    }

    /// Reassembles a state machine from parts (used by the snapshot decoder, which has
    /// checked them).
    pub(crate) fn from_parts(
        config: Config,
        kvs: BTreeMap<Bytes, KeyValue>,
        revision: u64,
        applied_index: u64,
        applied_term: u64,
        sessions: SessionTable,
        history: History,
    ) -> StateMachine {
        let data_bytes = kvs
            .iter()
            .map(|(k, kv)| (k.len() + kv.value.len()) as u64)
            .sum();
        StateMachine {
            config,
            kvs,
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
        self.kvs.len()
    }

    /// Whether the partition holds no key.
    pub fn is_empty(&self) -> bool {
        self.kvs.is_empty()
    }

    /// Every key-value, ascending by key.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &KeyValue)> {
        self.kvs.iter()
    }

    /// The key-value at `key`.
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.kvs.get(key)
    }

    /// Superseded versions and the compaction point (module docs, "History").
    pub(crate) fn history(&self) -> &History {
        &self.history
    }

    /// The compaction point: the oldest revision [`StateMachine::get_at`] and
    /// [`StateMachine::range_at`] serve.
    pub fn compacted(&self) -> u64 {
        self.history.compacted
    }

    /// Number of superseded versions held (module docs, "History").
    pub fn history_len(&self) -> usize {
        self.history.len()
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
        Ok(self.history.visible(key, self.kvs.get(key), revision))
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
                self.kvs.range::<[u8], _>(bounds),
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
        if revision == self.revision {
            return Ok(self.range(start, end, limit, keys_only, bytes_max));
        }
        let Some(bounds) = range_bounds(start, end) else {
            return Ok(RangeResult::default());
        };
        // Merge the current keys with the keys that have superseded versions (a deleted key
        // is only in the history), ascending; keep the version visible at `revision`.
        let mut current = self.kvs.range::<[u8], _>(bounds).peekable();
        let mut old = self.history.by_key.range::<[u8], _>(bounds).peekable();
        let history = &self.history;
        let visible = std::iter::from_fn(move || loop {
            let take_current = match (current.peek(), old.peek()) {
                (None, None) => return None,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ck, _)), Some((ok, _))) => match ck.cmp(ok) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Greater => false,
                    std::cmp::Ordering::Equal => {
                        old.next();
                        true
                    }
                },
            };
            let (k, kv) = if take_current {
                let (k, kv) = current.next()?;
                (k, Some(kv))
            } else {
                (old.next()?.0, None)
            };
            if let Some(kv) = history.visible(k, kv, revision) {
                return Some((k, kv));
            }
        });
        Ok(page(visible, limit, keys_only, bytes_max))
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
    /// 6. `data_bytes` is the sum of key and value lengths;
    /// 7. the history (module docs, "History"): `compacted <= revision`; every listed key has
    ///    at least one version; a key's versions have `mod_revision < until <= revision`,
    ///    `until > compacted`, and each ends at or before the next one (or the current
    ///    version) was written; the compaction queue holds exactly their `(until, key)`, in
    ///    ascending order; the history's byte count is their key and value lengths.
    ///
    /// The table bounds (`sessions_max`, `session_results_max`) are not checked: a table
    /// restored from a snapshot taken under larger bounds may exceed them until it next
    /// changes.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let mut data_bytes = 0u64;
        for (k, kv) in &self.kvs {
            data_bytes += (k.len() + kv.value.len()) as u64;
            if k.is_empty() {
                return Err("empty key");
            }
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
        let mut expected_queue = Vec::with_capacity(h.queue.len());
        let mut bytes = 0u64;
        for (k, olds) in &h.by_key {
            if olds.is_empty() {
                return Err("history key with no version");
            }
            let mut next_start = self.kvs.get(k).map_or(u64::MAX, |kv| kv.mod_revision);
            for o in olds.iter().rev() {
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
                next_start = o.kv.mod_revision;
                expected_queue.push((o.until, k.clone()));
                bytes += (k.len() + o.kv.value.len()) as u64;
            }
        }
        expected_queue.sort();
        if !h.queue.iter().eq(expected_queue.iter()) {
            return Err("compaction queue differs from the history's versions");
        }
        if bytes != h.bytes {
            return Err("history bytes differ from the sum of key and value lengths");
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
                    if let Some(existing) = self.kvs.get(&p.key) {
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
                            kv: self.kvs.get(key).cloned(),
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
            self.history.sort_tail(rev);
            self.history
                .compact(rev.saturating_sub(self.config.history_revisions));
            self.history.compact_to_bytes(self.config.history_bytes_max);
        }
        Response {
            revision: self.revision,
            op,
        }
    }

    /// Writes `key = value` at revision `rev`; returns the previous key-value if asked.
    fn put_at(
        &mut self,
        key: &Bytes,
        value: &Bytes,
        rev: u64,
        return_prev: bool,
    ) -> Option<KeyValue> {
        match self.kvs.get_mut(key) {
            Some(kv) => {
                let new = KeyValue {
                    value: value.clone(),
                    create_revision: kv.create_revision,
                    mod_revision: rev,
                    version: kv.version + 1,
                };
                let old = std::mem::replace(kv, new);
                self.data_bytes = self.data_bytes - old.value.len() as u64 + value.len() as u64;
                let prev = return_prev.then(|| old.clone());
                if self.config.history_revisions > 0 {
                    self.history.supersede(key, old, rev);
                }
                prev
            }
            None => {
                self.data_bytes += (key.len() + value.len()) as u64;
                // The key is copied once, when it is created: a key slice would pin its whole
                // first entry (perhaps a large value, long overwritten) for the key's lifetime.
                self.kvs.insert(
                    Bytes::copy_from_slice(key),
                    KeyValue {
                        value: value.clone(),
                        create_revision: rev,
                        mod_revision: rev,
                        version: 1,
                    },
                );
                None
            }
        }
    }

    /// Deletes `key` at revision `rev` (the caller bumps the revision iff a key was
    /// removed); returns whether it existed, and the removed key-value if asked.
    fn remove(&mut self, key: &Bytes, rev: u64, return_prev: bool) -> (bool, Option<KeyValue>) {
        let Some((key, old)) = self.kvs.remove_entry(key.as_ref()) else {
            return (false, None);
        };
        self.data_bytes -= (key.len() + old.value.len()) as u64;
        let prev = return_prev.then(|| old.clone());
        if self.config.history_revisions > 0 {
            self.history.supersede(&key, old, rev);
        }
        (true, prev)
    }

    fn compare(&self, c: &Compare) -> bool {
        let kv = self.kvs.get(&c.key);
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(sm.history.len(), 2);
        for (k, _) in sm.history.iter() {
            for e in [&e1, &e2, &e3, &del] {
                assert!(!inside(k, e), "a history key points into a log entry");
            }
        }
        for (_, k) in &sm.history.queue {
            for e in [&e1, &e2, &e3, &del] {
                assert!(!inside(k, e), "a queued key points into a log entry");
            }
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
        // 2 old versions of 1 MiB + 3 bytes of key each fit under 3 MiB; the third would not.
        assert_eq!(sm.history_len(), 2);
        assert_eq!(sm.compacted(), 18);
        assert_eq!(sm.get_at(b"big", 18).unwrap().unwrap().value[0], 18);
        assert!(sm.get_at(b"big", 17).is_err());
        assert_eq!(sm.check_invariants(), Ok(()));
    }
}
