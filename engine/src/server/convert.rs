//! Conversions between raftcore's types, the WAL's types, the wire protocol's peer types and
//! the engine's state machine types. Field by field; nothing here has meaning of its own.
//!
//! # Membership blob (stored in snapshot files), version 1
//! Little endian:
//! `{ version: u8 = 1 | auto_leave: u8 | 4 × { count: u32 | count × node: u64 } }`, the four
//! lists being voters, learners, voters_outgoing, learners_next.

use bytes::Bytes;
use raftcore::{ConfState, Entry, EntryKind, Message, MessageKind, SnapshotChunk};

use crate::state_machine as sm;

/// Why a peer message could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// raftcore refused a kind byte.
    #[error("peer message: {0}")]
    Raft(#[from] raftcore::Error),
}

/// raftcore message -> wire peer message.
pub fn to_wire(m: Message) -> wire::RaftMessage {
    // Exhaustive: a kind raftcore gains must be given a wire kind here (never a silent default,
    // finding 9 of issue 10).
    let kind = match m.kind {
        MessageKind::Append => wire::MessageKind::Append,
        MessageKind::AppendResponse => wire::MessageKind::AppendResponse,
        MessageKind::Vote => wire::MessageKind::Vote,
        MessageKind::VoteResponse => wire::MessageKind::VoteResponse,
        MessageKind::PreVote => wire::MessageKind::PreVote,
        MessageKind::PreVoteResponse => wire::MessageKind::PreVoteResponse,
        MessageKind::Heartbeat => wire::MessageKind::Heartbeat,
        MessageKind::HeartbeatResponse => wire::MessageKind::HeartbeatResponse,
        MessageKind::ReadIndex => wire::MessageKind::ReadIndex,
        MessageKind::ReadIndexResponse => wire::MessageKind::ReadIndexResponse,
        MessageKind::TimeoutNow => wire::MessageKind::TimeoutNow,
        MessageKind::Snapshot => wire::MessageKind::Snapshot,
        MessageKind::SnapshotResponse => wire::MessageKind::SnapshotResponse,
    };
    let mut w = wire::RaftMessage::new(kind);
    w.from = m.from;
    w.to = m.to;
    w.term = m.term;
    w.log_term = m.log_term;
    w.index = m.index;
    w.commit = m.commit;
    w.entries = m
        .entries
        .into_iter()
        .map(|e| wire::Entry {
            index: e.index,
            term: e.term,
            kind: e.kind as u8,
            data: e.data,
        })
        .collect();
    w.reject = m.reject;
    w.reject_hint_index = m.reject_hint_index;
    w.reject_hint_term = m.reject_hint_term;
    w.context = m.context;
    w.snapshot = m.snapshot.map(|c| {
        let c = *c;
        wire::SnapshotChunk {
            index: c.index,
            term: c.term,
            conf: conf_to_wire(&c.conf),
            offset: c.offset,
            total_bytes: c.total_bytes,
            data: c.data,
            done: c.done,
        }
    });
    w
}

/// wire peer message -> raftcore message. Unknown kinds are typed errors.
pub fn from_wire(w: wire::RaftMessage) -> Result<Message, ConvertError> {
    let kind = MessageKind::from_u8(w.kind as u8)?;
    let mut m = Message::new(kind, w.from, w.to, w.term);
    m.log_term = w.log_term;
    m.index = w.index;
    m.commit = w.commit;
    let mut entries = Vec::with_capacity(w.entries.len());
    for e in w.entries {
        entries.push(Entry {
            index: e.index,
            term: e.term,
            kind: EntryKind::from_u8(e.kind)?,
            data: e.data,
        });
    }
    m.entries = entries;
    m.reject = w.reject;
    m.reject_hint_index = w.reject_hint_index;
    m.reject_hint_term = w.reject_hint_term;
    m.context = w.context;
    m.snapshot = w.snapshot.map(|c| {
        Box::new(SnapshotChunk {
            index: c.index,
            term: c.term,
            conf: conf_from_wire(&c.conf),
            offset: c.offset,
            total_bytes: c.total_bytes,
            data: c.data,
            done: c.done,
        })
    });
    Ok(m)
}

fn conf_to_wire(c: &ConfState) -> wire::ConfState {
    wire::ConfState {
        voters: c.voters.clone(),
        learners: c.learners.clone(),
        voters_outgoing: c.voters_outgoing.clone(),
        learners_next: c.learners_next.clone(),
        auto_leave: c.auto_leave,
    }
}

fn conf_from_wire(c: &wire::ConfState) -> ConfState {
    ConfState {
        voters: c.voters.clone(),
        learners: c.learners.clone(),
        voters_outgoing: c.voters_outgoing.clone(),
        learners_next: c.learners_next.clone(),
        auto_leave: c.auto_leave,
    }
}

/// raftcore entry -> WAL entry (the kind byte is raftcore's `EntryKind`).
pub fn to_wal(e: &Entry) -> wal::Entry {
    wal::Entry {
        index: e.index,
        term: e.term,
        kind: e.kind as u8,
        data: e.data.clone(),
    }
}

/// WAL entry -> raftcore entry; an unknown kind byte means the WAL holds something this engine
/// never wrote.
pub fn from_wal(e: wal::Entry) -> Result<Entry, raftcore::Error> {
    Ok(Entry {
        index: e.index,
        term: e.term,
        kind: EntryKind::from_u8(e.kind)?,
        data: e.data,
    })
}

/// Encodes a membership for a snapshot file (layout in the module docs).
pub fn encode_conf(c: &ConfState) -> Vec<u8> {
    let mut out = vec![1u8, u8::from(c.auto_leave)];
    for list in [&c.voters, &c.learners, &c.voters_outgoing, &c.learners_next] {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for n in list {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
    out
}

/// Decodes [`encode_conf`]'s layout; `None` if malformed.
pub fn decode_conf(b: &[u8]) -> Option<ConfState> {
    if b.len() < 2 || b[0] != 1 || b[1] > 1 {
        return None;
    }
    let mut at = 2usize;
    let mut lists: [Vec<u64>; 4] = Default::default();
    for list in lists.iter_mut() {
        let n = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
        at += 4;
        if b.len().saturating_sub(at) < n.checked_mul(8)? {
            return None;
        }
        for _ in 0..n {
            list.push(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
            at += 8;
        }
    }
    if at != b.len() {
        return None;
    }
    let [voters, learners, voters_outgoing, learners_next] = lists;
    Some(ConfState {
        voters,
        learners,
        voters_outgoing,
        learners_next,
        auto_leave: b[1] == 1,
    })
}

/// A state-machine key-value -> wire key-value.
pub fn kv_to_wire(key: Bytes, kv: &sm::KeyValue) -> wire::KeyValue {
    wire::KeyValue {
        key,
        value: kv.value.clone(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_blob_round_trip_and_garbage() {
        let c = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            voters_outgoing: vec![],
            learners_next: vec![5],
            auto_leave: true,
        };
        assert_eq!(decode_conf(&encode_conf(&c)), Some(c.clone()));
        let b = encode_conf(&c);
        for cut in 0..b.len() {
            assert_eq!(decode_conf(&b[..cut]), None);
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(decode_conf(&long), None);
        assert_eq!(decode_conf(&[1, 0, 255, 255, 255, 255]), None);
    }

    #[test]
    fn message_round_trip() {
        let mut m = Message::new(MessageKind::Append, 1, 2, 7);
        m.log_term = 6;
        m.index = 10;
        m.commit = 9;
        m.entries = vec![Entry {
            index: 11,
            term: 7,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"x"),
        }];
        m.context = 42;
        m.snapshot = Some(Box::new(SnapshotChunk {
            index: 5,
            term: 3,
            conf: ConfState::with_voters(&[1, 2, 3]),
            offset: 0,
            total_bytes: 1,
            data: Bytes::from_static(b"s"),
            done: true,
        }));
        let back = from_wire(to_wire(m.clone())).unwrap();
        assert_eq!(back, m);
    }

    /// Every raftcore kind crosses the wire as itself (the conversion used to default unknown
    /// kinds to Heartbeat).
    #[test]
    fn every_message_kind_round_trips() {
        for k in 0..=u8::MAX {
            let Ok(kind) = MessageKind::from_u8(k) else {
                continue;
            };
            let m = Message::new(kind, 1, 2, 3);
            assert_eq!(to_wire(m.clone()).kind as u8, k);
            assert_eq!(from_wire(to_wire(m.clone())).unwrap(), m);
        }
    }
}
