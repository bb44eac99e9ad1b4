//! The peer protocol: batched Raft messages between nodes, as owned Rust types.
//!
//! A `PeerMessages` frame body is a `PeerBatch` (schema `wire/schema/peer.fbs`): all the
//! messages one node has for another in one event-loop turn, for any number of partitions
//! (Raft groups), as `(partition, message)` pairs. The message fields are the ones agreed with
//! raftcore (`notes/raft-messages.md`); the engine converts to and from `raftcore::Message`.
//! Entry and snapshot payloads decode as [`Bytes`] slices of the frame body (no copy).

use bytes::Bytes;
use flatbuffers::{Vector, WIPOffset};

use crate::error::DecodeError;
use crate::frame::Limits;
use crate::generated::peer as fb;
use crate::messages::BodyEncoder;

/// The kind of a Raft message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageKind {
    /// AppendEntries (Raft paper §5.3).
    Append = 0,
    /// Reply to Append.
    AppendResponse = 1,
    /// RequestVote (§5.2).
    Vote = 2,
    /// Reply to Vote.
    VoteResponse = 3,
    /// Pre-vote (thesis §9.6).
    PreVote = 4,
    /// Reply to PreVote.
    PreVoteResponse = 5,
    /// Leader heartbeat.
    Heartbeat = 6,
    /// Reply to Heartbeat.
    HeartbeatResponse = 7,
    /// Read-index request (thesis §6.4).
    ReadIndex = 8,
    /// Reply to ReadIndex.
    ReadIndexResponse = 9,
    /// Start an election now (leadership transfer, thesis §3.10).
    TimeoutNow = 10,
    /// One snapshot chunk (InstallSnapshot, §7).
    Snapshot = 11,
    /// Reply to a snapshot chunk.
    SnapshotResponse = 12,
}

impl MessageKind {
    /// Every kind, in wire order.
    pub const ALL: [MessageKind; 13] = [
        Self::Append,
        Self::AppendResponse,
        Self::Vote,
        Self::VoteResponse,
        Self::PreVote,
        Self::PreVoteResponse,
        Self::Heartbeat,
        Self::HeartbeatResponse,
        Self::ReadIndex,
        Self::ReadIndexResponse,
        Self::TimeoutNow,
        Self::Snapshot,
        Self::SnapshotResponse,
    ];

    /// The kind for a wire value, if known.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.get(usize::from(v)).copied()
    }
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// Log index.
    pub index: u64,
    /// Term it was created in.
    pub term: u64,
    /// raftcore's entry kind (Normal, ConfChange, Noop, ...) as a number.
    pub kind: u8,
    /// Payload.
    pub data: Bytes,
}

/// Cluster membership as of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfState {
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration (joint consensus).
    pub voters_outgoing: Vec<u64>,
    /// Learners that become voters when leaving the joint configuration.
    pub learners_next: Vec<u64>,
    /// Leave the joint configuration automatically.
    pub auto_leave: bool,
}

/// One chunk of a snapshot stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotChunk {
    /// Index of the snapshot's last included entry.
    pub index: u64,
    /// Term of that entry.
    pub term: u64,
    /// Membership at that entry.
    pub conf: ConfState,
    /// Offset of `data` in the snapshot.
    pub offset: u64,
    /// Size of the whole snapshot.
    pub total_bytes: u64,
    /// This chunk's bytes.
    pub data: Bytes,
    /// Last chunk.
    pub done: bool,
}

/// One Raft message of one group (fields as agreed with raftcore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftMessage {
    /// Kind.
    pub kind: MessageKind,
    /// Sender replica.
    pub from: u64,
    /// Recipient replica.
    pub to: u64,
    /// Sender's term.
    pub term: u64,
    /// Append: prev log term; Vote: last log term.
    pub log_term: u64,
    /// Append: prev log index; Vote: last log index; responses: index acknowledged/rejected.
    pub index: u64,
    /// Leader commit index.
    pub commit: u64,
    /// Entries (Append).
    pub entries: Vec<Entry>,
    /// Rejection.
    pub reject: bool,
    /// Fast backtracking hint: index.
    pub reject_hint_index: u64,
    /// Fast backtracking hint: term.
    pub reject_hint_term: u64,
    /// ReadIndex request id / heartbeat read round / transfer flag.
    pub context: u64,
    /// Snapshot chunk (Snapshot).
    pub snapshot: Option<SnapshotChunk>,
}

impl RaftMessage {
    /// A message of `kind` with every other field zero or empty.
    pub fn new(kind: MessageKind) -> Self {
        Self {
            kind,
            from: 0,
            to: 0,
            term: 0,
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

/// The body of a `PeerMessages` frame: one node's messages for another.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerBatch {
    /// Sending node.
    pub from_node: u64,
    /// Receiving node.
    pub to_node: u64,
    /// `(partition, message)` pairs, in send order.
    pub messages: Vec<(u64, RaftMessage)>,
}

type Fbb = flatbuffers::FlatBufferBuilder<'static>;

fn u64s(fbb: &mut Fbb, v: &[u64]) -> Option<WIPOffset<Vector<'static, u64>>> {
    if v.is_empty() {
        None
    } else {
        Some(fbb.create_vector(v))
    }
}

fn enc_message(fbb: &mut Fbb, partition: u64, m: &RaftMessage) -> WIPOffset<fb::Message<'static>> {
    let entries = if m.entries.is_empty() {
        None
    } else {
        let es: Vec<_> = m
            .entries
            .iter()
            .map(|e| {
                let data = Some(fbb.create_vector(&e.data[..]));
                fb::Entry::create(
                    fbb,
                    &fb::EntryArgs {
                        index: e.index,
                        term: e.term,
                        kind: e.kind,
                        data,
                    },
                )
            })
            .collect();
        Some(fbb.create_vector(&es))
    };
    let snapshot = m.snapshot.as_ref().map(|s| {
        let conf = fb::ConfStateArgs {
            voters: u64s(fbb, &s.conf.voters),
            learners: u64s(fbb, &s.conf.learners),
            voters_outgoing: u64s(fbb, &s.conf.voters_outgoing),
            learners_next: u64s(fbb, &s.conf.learners_next),
            auto_leave: s.conf.auto_leave,
        };
        let conf = Some(fb::ConfState::create(fbb, &conf));
        let data = Some(fbb.create_vector(&s.data[..]));
        fb::SnapshotChunk::create(
            fbb,
            &fb::SnapshotChunkArgs {
                index: s.index,
                term: s.term,
                conf,
                offset: s.offset,
                total_bytes: s.total_bytes,
                data,
                done: s.done,
            },
        )
    });
    fb::Message::create(
        fbb,
        &fb::MessageArgs {
            partition,
            kind: fb::MessageKind(m.kind as u8),
            from: m.from,
            to: m.to,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            commit: m.commit,
            entries,
            reject: m.reject,
            reject_hint_index: m.reject_hint_index,
            reject_hint_term: m.reject_hint_term,
            context: m.context,
            snapshot,
        },
    )
}

impl BodyEncoder {
    /// Encodes a `PeerBatch` body. The slice is valid until the next call.
    pub fn peer_batch(&mut self, batch: &PeerBatch) -> &[u8] {
        let fbb = &mut self.fbb;
        fbb.reset();
        let msgs: Vec<_> = batch
            .messages
            .iter()
            .map(|(p, m)| enc_message(fbb, *p, m))
            .collect();
        let messages = Some(fbb.create_vector(&msgs));
        let root = fb::PeerBatch::create(
            fbb,
            &fb::PeerBatchArgs {
                from_node: batch.from_node,
                to_node: batch.to_node,
                messages,
            },
        );
        fbb.finish_minimal(root);
        fbb.finished_data()
    }
}

fn bytes_of(body: &Bytes, v: Option<Vector<'_, u8>>) -> Bytes {
    match v {
        Some(v) if !v.is_empty() => body.slice_ref(v.bytes()),
        _ => Bytes::new(),
    }
}

fn vec_u64(v: Option<Vector<'_, u64>>, limits: &Limits) -> Result<Vec<u64>, DecodeError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    if v.len() > limits.batch_items_max {
        return Err(DecodeError::TooManyItems {
            len: v.len(),
            limit: limits.batch_items_max,
        });
    }
    Ok(v.iter().collect())
}

fn dec_message(
    body: &Bytes,
    limits: &Limits,
    m: fb::Message<'_>,
) -> Result<RaftMessage, DecodeError> {
    let kind = MessageKind::from_u8(m.kind().0).ok_or(DecodeError::UnknownEnum {
        field: "Message.kind",
        value: m.kind().0,
    })?;
    let mut entries = Vec::new();
    if let Some(es) = m.entries() {
        if es.len() > limits.batch_items_max {
            return Err(DecodeError::TooManyItems {
                len: es.len(),
                limit: limits.batch_items_max,
            });
        }
        entries.reserve(es.len());
        for e in es {
            entries.push(Entry {
                index: e.index(),
                term: e.term(),
                kind: e.kind(),
                // Copied, one buffer per entry: a follower's state machine keeps values as
                // slices of their entry (engine::state_machine, "Memory"), and a slice of the
                // frame body would keep the whole batch (every partition's entries in it)
                // alive for as long as any one value, or any old version in a partition's
                // history, lives.
                data: e
                    .data()
                    .filter(|v| !v.is_empty())
                    .map_or_else(Bytes::new, |v| Bytes::copy_from_slice(v.bytes())),
            });
        }
    }
    let snapshot = match m.snapshot() {
        None => None,
        Some(s) => {
            let conf = match s.conf() {
                None => ConfState::default(),
                Some(c) => ConfState {
                    voters: vec_u64(c.voters(), limits)?,
                    learners: vec_u64(c.learners(), limits)?,
                    voters_outgoing: vec_u64(c.voters_outgoing(), limits)?,
                    learners_next: vec_u64(c.learners_next(), limits)?,
                    auto_leave: c.auto_leave(),
                },
            };
            Some(SnapshotChunk {
                index: s.index(),
                term: s.term(),
                conf,
                offset: s.offset(),
                total_bytes: s.total_bytes(),
                data: bytes_of(body, s.data()),
                done: s.done(),
            })
        }
    };
    Ok(RaftMessage {
        kind,
        from: m.from(),
        to: m.to(),
        term: m.term(),
        log_term: m.log_term(),
        index: m.index(),
        commit: m.commit(),
        entries,
        reject: m.reject(),
        reject_hint_index: m.reject_hint_index(),
        reject_hint_term: m.reject_hint_term(),
        context: m.context(),
        snapshot,
    })
}

/// Decodes a `PeerMessages` frame body: verifies it, then checks every limit.
pub fn decode_peer_batch(body: &Bytes, limits: &Limits) -> Result<PeerBatch, DecodeError> {
    decode_peer_batch_inner(body, limits).map_err(|e| e.logged("PeerBatch"))
}

fn decode_peer_batch_inner(body: &Bytes, limits: &Limits) -> Result<PeerBatch, DecodeError> {
    let b = flatbuffers::root_with_opts::<fb::PeerBatch>(&limits.verifier_options(), body)?;
    let mut messages = Vec::new();
    if let Some(ms) = b.messages() {
        if ms.len() > limits.batch_items_max {
            return Err(DecodeError::TooManyItems {
                len: ms.len(),
                limit: limits.batch_items_max,
            });
        }
        messages.reserve(ms.len());
        for m in ms {
            messages.push((m.partition(), dec_message(body, limits, m)?));
        }
    }
    Ok(PeerBatch {
        from_node: b.from_node(),
        to_node: b.to_node(),
        messages,
    })
}
