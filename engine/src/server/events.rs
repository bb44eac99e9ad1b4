//! The node's event log: what happened on this node, for `corum ctl events` and the client's
//! `subscribe_events` (which merges every node's into one stream and adds `node_down`/`node_up`
//! from its own view).
//!
//! Kinds (`Event::kind`):
//! | kind | recorded by | detail |
//! |---|---|---|
//! | `node_started` | the node, once serving | shards, partitions |
//! | `node_stopping` | the node, on SIGTERM/SIGINT | |
//! | `leader_elected` | the replica that became leader | term |
//! | `leader_lost` | a replica that led and no longer does | new term, new leader if known |
//! | `snapshot_sent` | a leader sending a follower a snapshot | follower, index, bytes |
//! | `snapshot_installed` | a follower that installed one | index |
//! | `slow_fsync` | a shard whose WAL fdatasync took longer than [`SLOW_FSYNC`] | duration |
//! | `busy` | a shard that answered `Busy` in the last [`BUSY_WINDOW`] (at most one event per window) | count |
//!
//! In memory only, the newest [`CAPACITY`] events; sequence numbers start at 1 when the node
//! starts (a reader that sees the newest number go down knows the node restarted). Recording
//! takes a mutex held for a push: events are rare (elections, snapshots, slow disks), never per
//! request.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wire::{Event, EventsResult};

/// Events kept per node.
pub const CAPACITY: usize = 4096;
/// Events returned by one `Op::Events` at most.
pub const PAGE_MAX: usize = 256;
/// An fdatasync slower than this is an event (etcd's guidance: p99 under 10 ms).
pub const SLOW_FSYNC: Duration = Duration::from_millis(50);
/// `busy` events are at most one per window per shard.
pub const BUSY_WINDOW: Duration = Duration::from_secs(10);

/// The node's events (module docs).
#[derive(Debug)]
pub struct EventLog {
    node: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    events: VecDeque<Event>,
    next_seq: u64,
}

/// Now, in milliseconds since the Unix epoch (0 before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventLog {
    /// An empty log of `node`.
    pub fn new(node: u64) -> EventLog {
        EventLog {
            node,
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                next_seq: 1,
            }),
        }
    }

    /// Records an event now.
    pub fn record(&self, shard: usize, partition: u64, kind: &str, detail: String) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let seq = g.next_seq;
        g.next_seq += 1;
        if g.events.len() == CAPACITY {
            g.events.pop_front();
        }
        g.events.push_back(Event {
            seq,
            unix_ms: unix_ms(),
            node: self.node,
            shard: shard as u32,
            partition,
            kind: kind.into(),
            detail,
        });
    }

    /// Events after `after`, oldest first: at most `limit` (0: [`PAGE_MAX`]) and at most
    /// `bytes_max` of encoded strings and fields, so the answer fits a frame.
    pub fn after(&self, after: u64, limit: u32, bytes_max: usize) -> EventsResult {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let limit = if limit == 0 {
            PAGE_MAX
        } else {
            (limit as usize).min(PAGE_MAX)
        };
        let oldest = g.events.front().map_or(g.next_seq, |e| e.seq);
        let skip = after.saturating_sub(oldest.saturating_sub(1)) as usize;
        let mut bytes = 0usize;
        let mut events = Vec::new();
        for e in g.events.iter().skip(skip).take(limit) {
            // Fields, two strings with their headers, offsets: generously.
            bytes += 160 + e.kind.len() + e.detail.len();
            if bytes > bytes_max && !events.is_empty() {
                break;
            }
            events.push(e.clone());
        }
        EventsResult {
            events,
            oldest,
            newest: g.next_seq - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_sequence_numbers_and_the_oldest_are_dropped() {
        let log = EventLog::new(7);
        assert_eq!(log.after(0, 0, 1 << 20).newest, 0);
        for i in 0..(CAPACITY + 10) {
            log.record(1, i as u64, "leader_elected", format!("term {i}"));
        }
        let r = log.after(0, 0, 1 << 20);
        assert_eq!(r.oldest, 11, "the first 10 were dropped");
        assert_eq!(r.newest, (CAPACITY + 10) as u64);
        assert_eq!(r.events.len(), PAGE_MAX);
        assert_eq!(r.events[0].seq, 11);
        assert_eq!(r.events[0].node, 7);
        let r = log.after(100, 5, 1 << 20);
        let seqs: Vec<u64> = r.events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![101, 102, 103, 104, 105]);
        assert!(log.after(r.newest, 0, 1 << 20).events.is_empty());
        // A small byte budget still returns one event, never zero while some are left.
        assert_eq!(log.after(100, 0, 10).events.len(), 1);
    }
}
