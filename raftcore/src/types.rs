//! The values Raft exchanges with its caller and with its peers.
//!
//! The message shape follows the agreed peer schema (`notes/raft-messages.md`): the engine
//! converts between [`Message`] and the wire crate's peer table field by field, so every field
//! here has a wire counterpart and no field carries Rust-only meaning.

use bytes::Bytes;

use crate::error::Error;

/// What an [`Entry`] carries. `u8` on the wire; unknown values are a typed decode error
/// ([`EntryKind::from_u8`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryKind {
    /// An application command; `data` is opaque to Raft.
    Normal = 0,
    /// A membership change; `data` is an encoded [`ConfChange`].
    ConfChange = 1,
    /// The empty entry a new leader appends at the start of its term (Raft paper §8 / thesis
    /// §6.4: it lets the leader learn which entries are committed, because only entries of the
    /// current term are committed by counting, §5.4.2). `data` is empty.
    Noop = 2,
}

impl EntryKind {
    /// Decodes the wire byte.
    pub fn from_u8(v: u8) -> Result<Self, Error> {
        match v {
            0 => Ok(EntryKind::Normal),
            1 => Ok(EntryKind::ConfChange),
            2 => Ok(EntryKind::Noop),
            other => Err(Error::UnknownEntryKind(other)),
        }
    }
}

/// One log entry. Cloning is cheap: `data` is a reference-counted [`Bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, starting at 1.
    pub index: u64,
    /// Term of the leader that created the entry.
    pub term: u64,
    /// What `data` means.
    pub kind: EntryKind,
    /// The payload.
    pub data: Bytes,
}

impl Entry {
    /// Bytes this entry counts for against the byte limits (payload plus a fixed 24-byte header
    /// estimate, so empty entries are not free).
    #[inline]
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + 24
    }
}

/// The state a node must make durable before it acts on it (Raft paper Figure 2, "persistent
/// state on all servers"), plus the commit index, which is not required for safety but saves
/// re-learning it after a restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HardState {
    /// Latest term this node has seen.
    pub term: u64,
    /// Candidate this node voted for in `term` (0 = none).
    pub vote: u64,
    /// Highest index known committed.
    pub commit: u64,
}

/// A group's membership. Outside a joint configuration `voters_outgoing` and `learners_next`
/// are empty. During joint consensus (thesis §4.3) decisions need a majority of `voters` AND a
/// majority of `voters_outgoing`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfState {
    /// Voters of the (incoming) configuration, sorted, no duplicates.
    pub voters: Vec<u64>,
    /// Non-voting replicas: they receive the log but do not count toward any quorum.
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration while joint; empty otherwise.
    pub voters_outgoing: Vec<u64>,
    /// Outgoing voters that become learners when the joint configuration is left.
    pub learners_next: Vec<u64>,
    /// Whether the leader leaves the joint configuration on its own once it is applied.
    pub auto_leave: bool,
}

impl ConfState {
    /// A plain configuration of `voters`.
    pub fn with_voters(voters: &[u64]) -> Self {
        let mut v = voters.to_vec();
        v.sort_unstable();
        v.dedup();
        ConfState {
            voters: v,
            ..Default::default()
        }
    }

    /// True while in a joint configuration.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// True if `id` votes in either half of the configuration.
    pub fn is_voter(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// True if `id` is a learner (now or after leaving the joint configuration) and not a voter.
    pub fn is_learner(&self, id: u64) -> bool {
        !self.is_voter(id) && (self.learners.contains(&id) || self.learners_next.contains(&id))
    }

    /// Every replica of the configuration (voters of both halves and learners), sorted.
    pub fn members(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .voters
            .iter()
            .chain(&self.voters_outgoing)
            .chain(&self.learners)
            .chain(&self.learners_next)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfChangeStep {
    /// Make `node` a voter (adds it, or promotes a learner).
    AddVoter(u64),
    /// Make `node` a learner (adds it, or demotes a voter once the joint config is left).
    AddLearner(u64),
    /// Remove `node` entirely (voter or learner). May name the current leader.
    Remove(u64),
}

/// A membership change proposal. Changes that touch the voters go through a joint
/// configuration (thesis §4.3): applying the change enters `C_old,new`; the leader then
/// proposes an empty `ConfChange` (the "leave joint" entry) that moves to `C_new`. Changes that
/// only touch learners apply directly.
///
/// Byte layout of the encoded form (the `data` of an [`EntryKind::ConfChange`] entry), version 1:
/// `{ version: u8 = 1 | count: u8 | count × { kind: u8 (0 voter, 1 learner, 2 remove) | node: u64 LE } }`.
/// An empty change list means "leave the joint configuration".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfChange {
    /// The steps, applied in order.
    pub steps: Vec<ConfChangeStep>,
}

impl ConfChange {
    /// The change that leaves a joint configuration.
    pub fn leave_joint() -> Self {
        ConfChange { steps: Vec::new() }
    }

    /// Encodes the change (layout above).
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(2 + 9 * self.steps.len());
        out.push(1u8);
        out.push(self.steps.len().min(255) as u8);
        for s in self.steps.iter().take(255) {
            let (k, n) = match *s {
                ConfChangeStep::AddVoter(n) => (0u8, n),
                ConfChangeStep::AddLearner(n) => (1u8, n),
                ConfChangeStep::Remove(n) => (2u8, n),
            };
            out.push(k);
            out.extend_from_slice(&n.to_le_bytes());
        }
        Bytes::from(out)
    }

    /// Decodes the layout above; malformed input is a typed error.
    pub fn decode(data: &[u8]) -> Result<Self, Error> {
        if data.len() < 2 || data[0] != 1 {
            return Err(Error::MalformedConfChange("bad header"));
        }
        let count = data[1] as usize;
        if data.len() != 2 + 9 * count {
            return Err(Error::MalformedConfChange("length does not match count"));
        }
        let mut steps = Vec::with_capacity(count);
        for i in 0..count {
            let at = 2 + 9 * i;
            let mut n = [0u8; 8];
            n.copy_from_slice(&data[at + 1..at + 9]);
            let node = u64::from_le_bytes(n);
            if node == 0 {
                return Err(Error::MalformedConfChange("node id 0"));
            }
            steps.push(match data[at] {
                0 => ConfChangeStep::AddVoter(node),
                1 => ConfChangeStep::AddLearner(node),
                2 => ConfChangeStep::Remove(node),
                _ => return Err(Error::MalformedConfChange("unknown step kind")),
            });
        }
        Ok(ConfChange { steps })
    }
}

/// Identity of a snapshot: the last log entry it includes and the membership at that entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    /// Index of the last entry the snapshot includes.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Membership as of `index`.
    pub conf: ConfState,
}

/// A complete snapshot: metadata plus the state machine image the caller produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Which prefix of the log the image replaces.
    pub meta: SnapshotMeta,
    /// The state machine image; opaque to Raft.
    pub data: Bytes,
}

/// One chunk of a snapshot in flight from a leader to a follower (thesis §5.3: the leader sends
/// a snapshot to a follower that needs entries it has already discarded). Chunks are sent in
/// `offset` order; `done` marks the last one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The snapshot's last included index.
    pub index: u64,
    /// The snapshot's last included term.
    pub term: u64,
    /// Membership at `index`.
    pub conf: ConfState,
    /// Byte offset of `data` in the whole image.
    pub offset: u64,
    /// Size of the whole image.
    pub total_bytes: u64,
    /// This chunk's bytes.
    pub data: Bytes,
    /// True for the last chunk.
    pub done: bool,
}

/// Kind of a [`Message`]. `u8` on the wire ([`MessageKind::from_u8`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// AppendEntries (paper §5.3): `log_term`/`index` = previous entry, `entries`, `commit`.
    Append = 0,
    /// Answer to Append: `index` = last index now matching (accept) or the rejected previous
    /// index (reject, with `reject_hint_*`); sent only once the entries are durable (§3.8).
    AppendResponse = 1,
    /// RequestVote (paper §5.2): `log_term`/`index` = candidate's last entry; `context` = 1 when
    /// the election was triggered by a leadership transfer (skips the lease check).
    Vote = 2,
    /// Answer to Vote; `reject` = false means granted. Sent only once the vote is durable.
    VoteResponse = 3,
    /// Pre-Vote (thesis §9.6) for term `term` (the candidate's term + 1, not yet adopted).
    PreVote = 4,
    /// Answer to PreVote.
    PreVoteResponse = 5,
    /// Leader heartbeat: `commit` = min(leader commit, follower match); `context` = read round.
    Heartbeat = 6,
    /// Answer to Heartbeat; echoes `context`.
    HeartbeatResponse = 7,
    /// A follower asks the leader for a read index; `context` = request id.
    ReadIndex = 8,
    /// Leader's answer: `index` = read index, `context` = request id; `reject` if not leader.
    ReadIndexResponse = 9,
    /// Leadership transfer (thesis §3.10): the recipient starts an election at once.
    TimeoutNow = 10,
    /// One snapshot chunk (`snapshot` is set).
    Snapshot = 11,
    /// Answer to a chunk: `index` = snapshot index, `context` = next byte offset expected,
    /// `reject` = the chunk was out of order.
    SnapshotResponse = 12,
}

impl MessageKind {
    /// Decodes the wire byte.
    pub fn from_u8(v: u8) -> Result<Self, Error> {
        use MessageKind::*;
        Ok(match v {
            0 => Append,
            1 => AppendResponse,
            2 => Vote,
            3 => VoteResponse,
            4 => PreVote,
            5 => PreVoteResponse,
            6 => Heartbeat,
            7 => HeartbeatResponse,
            8 => ReadIndex,
            9 => ReadIndexResponse,
            10 => TimeoutNow,
            11 => Snapshot,
            12 => SnapshotResponse,
            other => return Err(Error::UnknownMessageKind(other)),
        })
    }
}

/// One Raft message of one group. Field meanings per kind are listed on [`MessageKind`];
/// fields a kind does not use are zero / empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// What this message is.
    pub kind: MessageKind,
    /// Sender replica id.
    pub from: u64,
    /// Recipient replica id.
    pub to: u64,
    /// Sender's term (for PreVote: the term it would campaign in).
    pub term: u64,
    /// Term of the entry at `index` (Append: previous entry; Vote: last entry).
    pub log_term: u64,
    /// An index whose meaning depends on `kind`.
    pub index: u64,
    /// Leader's commit index.
    pub commit: u64,
    /// Entries carried by an Append.
    pub entries: Vec<Entry>,
    /// A response's refusal.
    pub reject: bool,
    /// Fast backtracking (thesis §5.3 "conflicting term" optimisation): the index of the
    /// follower's last entry with term ≤ the leader's `log_term`...
    pub reject_hint_index: u64,
    /// ...and the term of that entry.
    pub reject_hint_term: u64,
    /// Request id / read round / transfer flag, per kind.
    pub context: u64,
    /// Set on `Snapshot` messages only.
    pub snapshot: Option<Box<SnapshotChunk>>,
}

impl Message {
    /// A message with every optional field empty.
    pub fn new(kind: MessageKind, from: u64, to: u64, term: u64) -> Self {
        Message {
            kind,
            from,
            to,
            term,
            log_term: 0,
            index: 0,
            commit: 0,
            entries: Vec::new(),
            reject: false,
            reject_hint_index: 0,
            reject_hint_term: 0,
            context: 0,
            snapshot: None,
        }
    }
}

/// Role of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Pre-Vote phase of an election (thesis §9.6): asks whether it could win without
    /// changing its term.
    PreCandidate,
    /// Campaigning in its term.
    Candidate,
    /// Leads its term.
    Leader,
}

/// Why a read asked with [`crate::RawNode::read_index`] ended without a [`ReadState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadFailReason {
    /// The node this follower forwarded the read to refused it: it is not the leader (any
    /// more), or its read queue is full.
    Rejected,
    /// No answer within `election_ticks_min` ticks: a forwarded read whose request or answer
    /// was lost (it is not resent), or a read on a leader whose heartbeat rounds reached no
    /// quorum in that time (it may have been deposed without knowing it).
    NoAnswer,
    /// This node's role or term changed while the read was pending (a leader stepped down, a
    /// follower moved to a new term or started an election), or the leader could no longer
    /// queue a read that waited for its first commit. Thesis §6.4 confirms reads only within
    /// one leader's term, so such a read can never be confirmed.
    Abandoned,
}

/// A read that will not be answered with a [`ReadState`]; the request may be retried (a read
/// has no effect, so retrying is always safe).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadFailure {
    /// The id passed to `read_index`.
    pub request_id: u64,
    /// Why it failed.
    pub reason: ReadFailReason,
}

/// A linearizable read point (thesis §6.4): once the caller has applied up to `index`, the
/// read identified by `request_id` may be served from the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The id passed to `read_index`.
    pub request_id: u64,
    /// Apply at least up to here before reading.
    pub index: u64,
}
