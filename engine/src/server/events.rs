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
//! | `snapshot_sent` | a leader sending a follower a snapshot (once per snapshot and follower, not per resend: [`SnapshotSentEvents`]) | follower, index, bytes |
//! | `snapshot_installed` | a follower that installed one | index |
//! | `slow_fsync` | a shard whose WAL fdatasync took longer than [`SLOW_FSYNC`] (at most one event per [`SLOW_FSYNC_WINDOW`]; those left out are counted by the next one, at the latest when the window ends: [`SlowFsyncEvents`]) | duration, and the count and slowest of those left out (or only these, at the window's end) |
//! | `busy` | a shard that answered `Busy` in the last [`BUSY_WINDOW`] (at most one event per window) | count |
//!
//! In memory only, the newest [`CAPACITY`] events; sequence numbers start at 1 when the node
//! starts, and every answer carries the node's boot id ([`EventLog::boot_id`], its start time
//! in nanoseconds), so a reader that sees it change knows the node restarted even when the new
//! sequence numbers have already passed its cursor. Recording
//! takes a mutex held for a push: events are rare (elections, snapshots, slow disks), never per
//! request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wire::{Event, EventsResult};

/// Events kept per node.
pub const CAPACITY: usize = 4096;
/// Events returned by one `Op::Events` at most.
pub const PAGE_MAX: usize = 256;
/// An fdatasync slower than this is an event (etcd's guidance: p99 under 10 ms).
pub const SLOW_FSYNC: Duration = Duration::from_millis(50);
/// `slow_fsync` events are at most one per window per shard: a disk that is always slow
/// would otherwise push every other event out of the log within minutes.
pub const SLOW_FSYNC_WINDOW: Duration = Duration::from_secs(10);
/// `busy` events are at most one per window per shard.
pub const BUSY_WINDOW: Duration = Duration::from_secs(10);

/// The node's events (module docs).
#[derive(Debug)]
pub struct EventLog {
    node: u64,
    boot_id: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    events: VecDeque<Event>,
    next_seq: u64,
}

/// One shard's `slow_fsync` events: at most one per [`SLOW_FSYNC_WINDOW`]; the slow syncs in
/// between are counted, and the next event names their count and the slowest: the next slow
/// sync's after the window ([`SlowFsyncEvents::observe`]), or, when none comes, an event of its
/// own once the window has ended ([`SlowFsyncEvents::window_ended`], checked on the shard's
/// tick), so a stall followed by a healthy disk is reported whole.
#[derive(Debug, Default)]
pub struct SlowFsyncEvents {
    last: Option<Instant>,
    suppressed: u64,
    suppressed_max: Duration,
}

impl SlowFsyncEvents {
    /// A slow fdatasync that took `took` (with `bytes` written) at `now`: the detail of the
    /// event to record, or None when one was recorded less than a window ago.
    pub fn observe(&mut self, now: Instant, took: Duration, bytes: u64) -> Option<String> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < SLOW_FSYNC_WINDOW)
        {
            self.suppressed += 1;
            self.suppressed_max = self.suppressed_max.max(took);
            return None;
        }
        let mut detail = format!(
            "WAL fdatasync took {:.1} ms ({bytes} bytes written)",
            took.as_secs_f64() * 1e3
        );
        if self.suppressed > 0 {
            detail += &format!(
                "; {} more slow fdatasyncs since the last slow_fsync event, the slowest {:.1} ms",
                self.suppressed,
                self.suppressed_max.as_secs_f64() * 1e3
            );
        }
        self.last = Some(now);
        self.suppressed = 0;
        self.suppressed_max = Duration::ZERO;
        Some(detail)
    }

    /// Checked on the shard's tick: the detail of an event for the slow syncs left out, once
    /// the window of the last event has ended with no slow sync since (a stall, then a healthy
    /// disk); None when there is nothing to report or the window is still running.
    pub fn window_ended(&mut self, now: Instant) -> Option<String> {
        let last = self.last?;
        if self.suppressed == 0 || now.saturating_duration_since(last) < SLOW_FSYNC_WINDOW {
            return None;
        }
        let detail = format!(
            "{} slow fdatasync{} left out since the last slow_fsync event, the slowest {:.1} ms",
            self.suppressed,
            if self.suppressed == 1 { "" } else { "s" },
            self.suppressed_max.as_secs_f64() * 1e3
        );
        // This event is its window's one: the window starts again here.
        self.last = Some(now);
        self.suppressed = 0;
        self.suppressed_max = Duration::ZERO;
        Some(detail)
    }
}

/// One shard's `snapshot_sent` events: one per (partition, follower, snapshot index). Raft
/// starts a snapshot transfer again from its first chunk after a rejection or a timeout;
/// those resends are counted in the metrics, not recorded again as events. Only the newest
/// index per (partition, follower) is kept, so the memory is bounded by the shard's replica
/// pairs (fixed while placement is static), not by the snapshots sent over the node's life.
#[derive(Debug, Default)]
pub struct SnapshotSentEvents {
    /// (partition, follower) -> index of the last snapshot recorded as sent. At most one
    /// entry per replica pair of the shard.
    last: std::collections::BTreeMap<(u64, u64), u64>,
}

impl SnapshotSentEvents {
    /// The first chunk of snapshot `index` of `partition` goes to `to`: whether to record it.
    pub fn first_send(&mut self, partition: u64, to: u64, index: u64) -> bool {
        self.last.insert((partition, to), index) != Some(index)
    }
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
        // Strictly increasing within a process too (tests build several logs), never 0, which
        // means "no boot id" on the wire (a server from before the field).
        static LAST: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let prev = LAST
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or_else(|last| last);
        EventLog {
            node,
            boot_id: now.max(prev + 1),
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                next_seq: 1,
            }),
        }
    }

    /// This start's id: the time the log was created, in nanoseconds since the Unix epoch
    /// (never 0). A restarted node has another one.
    pub fn boot_id(&self) -> u64 {
        self.boot_id
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
            boot_id: self.boot_id,
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
        assert_ne!(log.after(0, 0, 1 << 20).boot_id, 0);
        assert_ne!(
            EventLog::new(7).boot_id(),
            log.boot_id(),
            "another start, another boot id"
        );
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

    #[test]
    fn slow_fsync_events_are_one_per_window_and_count_the_rest() {
        let mut slow = SlowFsyncEvents::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let first = slow
            .observe(t0, ms(80), 4096)
            .expect("the first is an event");
        assert!(first.starts_with("WAL fdatasync took 80.0 ms"), "{first}");
        assert!(!first.contains("more"), "{first}");
        // A disk that stays slow: one event per window, not one per sync.
        for (i, took) in [60, 200, 70].into_iter().enumerate() {
            assert_eq!(
                slow.observe(t0 + ms(100 * (i as u64 + 1)), ms(took), 4096),
                None
            );
        }
        let next = slow
            .observe(t0 + SLOW_FSYNC_WINDOW, ms(55), 8192)
            .expect("a window later, an event");
        assert!(
            next.contains("55.0 ms (8192 bytes written); 3 more slow fdatasyncs")
                && next.ends_with("the slowest 200.0 ms"),
            "{next}"
        );
        // The count starts again.
        assert_eq!(
            slow.observe(t0 + SLOW_FSYNC_WINDOW + ms(1), ms(90), 1),
            None
        );
        let again = slow.observe(t0 + SLOW_FSYNC_WINDOW * 2, ms(51), 1).unwrap();
        assert!(
            again.contains("1 more") && again.ends_with("90.0 ms"),
            "{again}"
        );
    }

    /// Review finding (issue 17, ops nits 4): a 3 s stall, then a healthy disk. The slow
    /// syncs left out after the first event were reported only with the next slow one, so
    /// never; they are reported once the window ends.
    #[test]
    fn slow_fsyncs_left_out_are_reported_when_the_window_ends() {
        let mut slow = SlowFsyncEvents::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(slow.window_ended(t0), None, "nothing yet");
        assert!(slow.observe(t0, ms(400), 4096).is_some());
        assert_eq!(slow.window_ended(t0 + ms(1)), None, "nothing left out");
        // The rest of the stall, within the window: left out.
        for (i, took) in [3_000, 900].into_iter().enumerate() {
            assert_eq!(
                slow.observe(t0 + ms(500 * (i as u64 + 1)), ms(took), 1),
                None
            );
        }
        // Healthy from here on: nothing until the window ends, then one event.
        assert_eq!(slow.window_ended(t0 + SLOW_FSYNC_WINDOW - ms(1)), None);
        let end = t0 + SLOW_FSYNC_WINDOW;
        let detail = slow
            .window_ended(end)
            .expect("the window ended with slow syncs left out");
        assert!(
            detail.starts_with("2 slow fdatasyncs left out")
                && detail.ends_with("the slowest 3000.0 ms"),
            "{detail}"
        );
        assert_eq!(slow.window_ended(end + SLOW_FSYNC_WINDOW), None, "once");
        // That event counts as its window's one: a slow sync right after it is left out, and
        // reported when its own window ends.
        assert_eq!(slow.observe(end + ms(1), ms(70), 1), None);
        assert_eq!(slow.window_ended(end + SLOW_FSYNC_WINDOW - ms(1)), None);
        let next = slow.window_ended(end + SLOW_FSYNC_WINDOW).unwrap();
        assert!(
            next.starts_with("1 slow fdatasync left out") && next.ends_with("70.0 ms"),
            "{next}"
        );
    }

    #[test]
    fn a_resent_snapshot_is_one_event() {
        let mut sent = SnapshotSentEvents::default();
        assert!(sent.first_send(3, 2, 100));
        assert!(!sent.first_send(3, 2, 100), "the same snapshot again");
        assert!(sent.first_send(3, 1, 100), "another follower");
        assert!(sent.first_send(4, 2, 100), "another partition");
        assert!(sent.first_send(3, 2, 250), "a newer snapshot");
        assert!(!sent.first_send(3, 2, 250));
    }

    /// Review finding (issue 17, ops nits 5), already so: the memory is one entry per
    /// (partition, follower), however many snapshots a long life sends.
    #[test]
    fn snapshot_sent_keeps_one_entry_per_partition_and_follower() {
        let mut sent = SnapshotSentEvents::default();
        for index in 1..=10_000 {
            for (p, to) in [(1, 2), (1, 3), (2, 2)] {
                assert!(sent.first_send(p, to, index * 100));
            }
        }
        assert_eq!(sent.last.len(), 3);
    }
}
