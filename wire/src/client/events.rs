//! The cluster's event stream ([`Client::subscribe_events`]): every node's event log, polled
//! and merged into one stream in time order.
//!
//! Each round:
//! 1. Every node of the cluster map is asked at once (one task per node), each with its own
//!    deadline of [`poll_timeout`], so a node that does not answer (down, paused, blackholed)
//!    delays the others by at most that much.
//! 2. A node is read up to its newest event in the round (page after page, at most
//!    [`DRAIN_PAGES_MAX`] pages), so no backlog is left for a later round.
//! 3. The watermark is the reader's clock when the round began. An event is stamped under the
//!    node's log lock before it is added, and each poll takes that lock after the round began,
//!    so every event of an answering node stamped before the watermark is in hand once the
//!    round ends. Events stamped before the watermark are sent, sorted by (time, node,
//!    sequence number); later ones wait for the next round. The stream is therefore in time
//!    order, as far as the nodes' clocks agree with the reader's, with these exceptions: events of a
//!    node that did not answer come when it answers again (after newer events of the others);
//!    and an event waits at most [`HELD_ROUNDS_MAX`] rounds (a node whose clock runs ahead).
//!    A node that answered but could not be read to its newest (the round's deadline passed
//!    between its pages, a later page failed, or [`DRAIN_PAGES_MAX`]) keeps the order: it
//!    lowers the watermark to its last event read (to 0 when none was read), and is up, not
//!    `node_down`: only a node that did not answer at all in a round is down.
//! 4. A restart is noticed by the node's boot id (`EventsResult::boot_id`), which changes on
//!    every start, even when the new sequence numbers have already passed the cursor. A boot
//!    id that appears or disappears (0, a build without boot ids, before or after) is a
//!    restart too: a server cannot change its build without restarting. Between two answers
//!    without boot ids, only the newest sequence number going down tells.
//!
//! "From now" (not `from_start`) means the events a node stamped at or after the subscription
//! (so the nodes' clocks again): every node is read from its first event held, and of what its
//! first answer brings, the events stamped before the subscription are skipped; every later
//! event is delivered whatever its stamp (a reader or node whose clock runs ahead loses
//! nothing live). Taking each node's newest at its first poll would lose what happened between
//! the subscription and that poll.
//!
//! The stream's own events (`seq` 0, stamped with the reader's clock when seen): `node_down`,
//! `node_up`, `node_restarted` and `events_missed`.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::{unexpected, Client, ClientError};
use crate::messages::{Op, Outcome};
use crate::{Event, EventsResult};

/// Pages read from one node in one round at most: its whole log (4,096 events, 256 a page)
/// with room for pages the server cut short by bytes.
pub const DRAIN_PAGES_MAX: usize = 32;
/// Rounds an event waits for the watermark at most.
pub const HELD_ROUNDS_MAX: u32 = 4;
/// The shortest deadline of one node's poll: answers on a loaded machine take a while, and a
/// slow answer must not read as `node_down`.
pub const POLL_TIMEOUT_MIN: Duration = Duration::from_secs(1);

/// The deadline of one node's poll in a round polled `every`: the interval, but at least
/// [`POLL_TIMEOUT_MIN`] and at most the client's request timeout.
pub fn poll_timeout(every: Duration, request_timeout: Duration) -> Duration {
    every.max(POLL_TIMEOUT_MIN).min(request_timeout)
}

/// Whether an answer comes from another start of the node than the last one read
/// (`known_boot_id`: the boot id of that answer, None before the node's first answer): its
/// boot id changed, 0 (a build without boot ids) to another or back included, since a server
/// cannot change its build without restarting; or, between two answers without boot ids, its
/// newest sequence number went below the cursor.
pub fn restarted(after: u64, known_boot_id: Option<u64>, r: &EventsResult) -> bool {
    match known_boot_id {
        None => false,
        Some(known) if known != r.boot_id => true,
        Some(0) => r.newest < after,
        Some(_) => false,
    }
}

/// What the stream knows of one node.
struct NodeCursor {
    endpoint: String,
    /// The last sequence number read.
    after: u64,
    /// Events stamped before this are skipped ("from now": the subscription's time).
    since_ms: u64,
    /// The boot id of its last answer (None before the first).
    boot_id: Option<u64>,
    /// None until the first answer or failure.
    up: Option<bool>,
    /// Answered at least once.
    read: bool,
}

/// One node's poll in one round (`answered` and `error` may both be set: a page failed, or
/// the round's deadline passed, after the node's first answer).
struct Drained {
    node: u64,
    after: u64,
    boot_id: Option<u64>,
    events: Vec<Event>,
    /// (first, last) sequence numbers dropped by the node before they were read.
    missed: Vec<(u64, u64)>,
    /// (old boot id, new boot id, events read before the restart was noticed)
    restarted: Option<(u64, u64, usize)>,
    /// Answered at least once.
    answered: bool,
    /// Read up to its newest.
    complete: bool,
    error: Option<ClientError>,
}

async fn drain(
    client: Client,
    node: u64,
    endpoint: String,
    after: u64,
    boot_id: Option<u64>,
    deadline: Instant,
) -> Drained {
    let mut d = Drained {
        node,
        after,
        boot_id,
        events: Vec::new(),
        missed: Vec::new(),
        restarted: None,
        answered: false,
        complete: false,
        error: None,
    };
    for _ in 0..DRAIN_PAGES_MAX {
        let asked = d.after;
        let r = match client
            .call_endpoint(
                &endpoint,
                Op::Events {
                    after: asked,
                    limit: 0,
                },
                deadline,
            )
            .await
        {
            Ok((_, Outcome::Events(r))) => r,
            Ok((_, other)) => {
                d.error = Some(unexpected("Events", &other));
                return d;
            }
            Err(e) => {
                d.error = Some(e);
                return d;
            }
        };
        d.answered = true;
        if restarted(d.after, d.boot_id, &r) {
            // Sequence numbers start again at 1 on a restarted node: read it from there.
            d.restarted = Some((d.boot_id.unwrap_or(0), r.boot_id, d.events.len()));
            d.boot_id = Some(r.boot_id);
            d.after = 0;
            continue;
        }
        d.boot_id = Some(r.boot_id);
        if r.oldest > asked.saturating_add(1) {
            d.missed.push((asked + 1, r.oldest - 1));
        }
        let reached = r.events.last().is_none_or(|last| last.seq >= r.newest);
        if let Some(last) = r.events.last() {
            d.after = last.seq;
        }
        d.events.extend(r.events);
        if reached {
            d.complete = true;
            return d;
        }
    }
    d
}

impl Client {
    /// The body of [`Client::subscribe_events`] (module docs).
    pub(super) async fn events_stream(
        self,
        every: Duration,
        from_start: bool,
        subscribed_ms: u64,
        tx: tokio::sync::mpsc::Sender<Event>,
    ) {
        let timeout = poll_timeout(every, self.inner.config.request_timeout);
        let mut merge = Merge::new(from_start, subscribed_ms);
        for round in 0u32.. {
            for p in &self.cluster_map().partitions {
                for r in &p.replicas {
                    merge.add_node(r.node, &r.endpoint);
                }
            }
            let mut this = Round::new(round, unix_ms());
            let deadline = Instant::now() + timeout;
            let mut polls = tokio::task::JoinSet::new();
            for (&node, n) in &merge.nodes {
                polls.spawn(drain(
                    self.clone(),
                    node,
                    n.endpoint.clone(),
                    n.after,
                    n.boot_id,
                    deadline,
                ));
            }
            while let Some(joined) = polls.join_next().await {
                let Ok(d) = joined else { continue }; // a poll task panicked: poll again next round
                merge.absorb(&mut this, d, unix_ms());
            }
            for e in merge.end(this) {
                if tx.send(e).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = tx.closed() => return,
            }
        }
    }
}

/// The stream's state between rounds, and the merging rules of the module docs (3 and 4):
/// no clock and no socket (times come in as arguments), so the rules are unit-tested.
struct Merge {
    from_start: bool,
    /// "From now": the subscription's time.
    subscribed_ms: u64,
    nodes: BTreeMap<u64, NodeCursor>,
    /// Events read but not sent yet, with the round they were read in.
    held: Vec<(Event, u32)>,
}

/// One round being merged.
struct Round {
    number: u32,
    /// Events stamped before this are sent at the round's end (module docs, rule 3).
    watermark: u64,
    /// What the round's polls brought.
    seen: Vec<Event>,
}

impl Round {
    /// Round `number`, begun at `start_ms` by the reader's clock (its first watermark).
    fn new(number: u32, start_ms: u64) -> Round {
        Round {
            number,
            watermark: start_ms,
            seen: Vec::new(),
        }
    }
}

impl Merge {
    fn new(from_start: bool, subscribed_ms: u64) -> Merge {
        Merge {
            from_start,
            subscribed_ms,
            nodes: BTreeMap::new(),
            held: Vec::new(),
        }
    }

    /// A node of the cluster map; read from the next round on if it is new.
    fn add_node(&mut self, node: u64, endpoint: &str) {
        let since_ms = if self.from_start {
            0
        } else {
            self.subscribed_ms
        };
        self.nodes.entry(node).or_insert_with(|| NodeCursor {
            endpoint: endpoint.to_owned(),
            // Read from its first event; "from now" skips the events stamped before the
            // subscription (by the node's clock). Taking the node's newest at its first poll
            // instead would lose what happened between the subscription and that poll.
            after: 0,
            since_ms,
            boot_id: None,
            up: None,
            read: false,
        });
    }

    /// One node's poll of round `r`, ended at `now_ms` (the reader's clock, which stamps the
    /// stream's own events).
    fn absorb(&mut self, r: &mut Round, d: Drained, now_ms: u64) {
        let Some(n) = self.nodes.get_mut(&d.node) else {
            return;
        };
        let node = d.node;
        let synthetic = |kind: &str, detail: String| Event {
            seq: 0,
            unix_ms: now_ms,
            node,
            shard: 0,
            partition: 0,
            kind: kind.into(),
            detail,
        };
        let seen = &mut r.seen;
        if d.answered {
            if n.up == Some(false) {
                seen.push(synthetic("node_up", n.endpoint.clone()));
            }
            n.up = Some(true);
            if let Some((old, new, before)) = d.restarted {
                let mut e = synthetic(
                    "node_restarted",
                    format!("boot id {old} -> {new}; reading its events from 1"),
                );
                // It restarted before its first event of the new start: sort it there
                // (sequence number 0 goes first among the node's events of that ms).
                if let Some(first) = d.events.get(before) {
                    e.unix_ms = e.unix_ms.min(first.unix_ms);
                }
                seen.push(e);
            }
            // What a node dropped before the first read of a "from now" stream is older than
            // the subscription: not missed.
            let first_read = !std::mem::replace(&mut n.read, true);
            let missed = if first_read && !self.from_start {
                &[][..]
            } else {
                &d.missed[..]
            };
            for (first, last) in missed {
                seen.push(synthetic(
                    "events_missed",
                    format!("events {first}..{last} were dropped before they were read"),
                ));
            }
            n.after = d.after;
            n.boot_id = d.boot_id;
            if !d.complete {
                // Not read to its newest (the round's deadline passed between its pages, a
                // page failed after the first, or DRAIN_PAGES_MAX): its later events are not
                // in hand, and they are stamped no earlier than its last one read, so hold
                // back what is not older than that. Nothing read (its restart was noticed,
                // then the read stopped): nothing is known of their stamps, hold back all.
                let last = d.events.last().map_or(0, |e| e.unix_ms);
                r.watermark = r.watermark.min(last);
            }
            // "From now" skips, by timestamp, only what the node already held at its first
            // answer: after that every event is new, whatever the clocks say (a reader whose
            // clock runs ahead must not drop live events).
            seen.extend(
                d.events
                    .into_iter()
                    .filter(|e| !first_read || e.unix_ms >= n.since_ms),
            );
        }
        // A node that answered in this round is up, even if a later page of it failed: only
        // a node that did not answer at all is down.
        if let (false, Some(e)) = (d.answered, d.error) {
            if n.up != Some(false) {
                seen.push(synthetic("node_down", e.to_string()));
            }
            n.up = Some(false);
        }
    }

    /// Ends round `r`: the events to send now, in order (module docs, rule 3).
    fn end(&mut self, r: Round) -> Vec<Event> {
        let round = r.number;
        self.held.extend(r.seen.into_iter().map(|e| (e, round)));
        self.held.sort_by_key(|(e, _)| (e.unix_ms, e.node, e.seq));
        // Send the longest prefix below the cut-off: the watermark, raised past every event
        // that waited HELD_ROUNDS_MAX rounds (so those go out, with everything stamped before
        // them, in order, however the nodes' clocks disagree).
        let cutoff = release_cutoff(&self.held, round, r.watermark);
        let ready = self
            .held
            .iter()
            .take_while(|(e, _)| e.unix_ms < cutoff)
            .count();
        self.held.drain(..ready).map(|(e, _)| e).collect()
    }
}

/// The stamp below which held events are sent (module docs, rule 3): the watermark, raised
/// past every event that has waited [`HELD_ROUNDS_MAX`] rounds.
fn release_cutoff(held: &[(Event, u32)], round: u32, watermark: u64) -> u64 {
    held.iter()
        .filter(|(_, r)| round - r >= HELD_ROUNDS_MAX)
        .map(|(e, _)| e.unix_ms.saturating_add(1))
        .fold(watermark, u64::max)
}

/// Now, in milliseconds since the Unix epoch (0 before it).
pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(newest: u64, boot_id: u64) -> EventsResult {
        EventsResult {
            events: Vec::new(),
            oldest: 1,
            newest,
            boot_id,
        }
    }

    #[test]
    fn a_restart_is_noticed_by_its_boot_id_even_past_the_cursor() {
        // The review's case: the node restarted and logged more events than the cursor
        // before the next poll. The newest number did not go down; the boot id changed.
        assert!(restarted(5, Some(100), &answer(9, 200)));
        assert!(!restarted(5, Some(100), &answer(9, 100)));
        // First contact: nothing to compare.
        assert!(!restarted(0, None, &answer(9, 200)));
        assert!(!restarted(0, None, &answer(9, 0)));
        // Servers without boot ids: only a newest below the cursor tells.
        assert!(restarted(5, Some(0), &answer(3, 0)));
        assert!(!restarted(5, Some(0), &answer(9, 0)));
    }

    /// Review finding (issue 17, ops nits 3): a node upgraded from a build without boot ids
    /// (0) to one with them, or downgraded, restarted: a server cannot change its build
    /// without restarting. Before, only the newest sequence number going below the cursor told,
    /// and a restart that had logged past the cursor went unnoticed.
    #[test]
    fn a_boot_id_appearing_or_disappearing_is_a_restart() {
        // Answered before with boot id 0, now with one: past the cursor still a restart.
        assert!(restarted(5, Some(0), &answer(9, 200)));
        // And the other way (a downgrade), whatever the sequence numbers.
        assert!(restarted(5, Some(100), &answer(9, 0)));
        assert!(restarted(0, Some(100), &answer(0, 0)));
    }

    /// Review finding (ops-fixes review, 2): an event held HELD_ROUNDS_MAX rounds goes out
    /// even when a younger, unready event sorts before it (a node whose clock runs less far
    /// ahead); before, the prefix stopped at the younger event and held the old one forever.
    #[test]
    fn an_event_held_long_enough_is_released_with_everything_before_it() {
        let ev = |node, unix_ms| event(node, 1, unix_ms);
        // Round 10, watermark 1_000: node 2's event (stamp 3_000, read in round 9) is not ready;
        // node 1's (stamp 10_000, read in round 6) has waited 4 rounds.
        let held = vec![(ev(2, 3_000), 9), (ev(1, 10_000), 6)];
        let cutoff = release_cutoff(&held, 10, 1_000);
        assert_eq!(cutoff, 10_001);
        assert!(held.iter().all(|(e, _)| e.unix_ms < cutoff));
        // Nothing waited long enough: the watermark alone.
        assert_eq!(release_cutoff(&held, 9, 1_000), 1_000);
    }

    fn event(node: u64, seq: u64, unix_ms: u64) -> Event {
        Event {
            seq,
            unix_ms,
            node,
            shard: 0,
            partition: 0,
            kind: "k".into(),
            detail: String::new(),
        }
    }

    /// A poll of `node` that answered with `events` (sequence numbers from `after` + 1).
    fn drained(node: u64, after: u64, events: Vec<Event>, complete: bool) -> Drained {
        Drained {
            node,
            after: events.last().map_or(after, |e| e.seq),
            boot_id: Some(7),
            events,
            missed: Vec::new(),
            restarted: None,
            answered: true,
            complete,
            error: None,
        }
    }

    /// (node, seq, stamp, kind) of what a round sent.
    fn sent(events: &[Event]) -> Vec<(u64, u64, u64, &str)> {
        events
            .iter()
            .map(|e| (e.node, e.seq, e.unix_ms, e.kind.as_str()))
            .collect()
    }

    /// Review finding (issue 17, ops nits 2): a node whose read in a round was cut short by
    /// the round's deadline (it answered, but not up to its newest) was reported node_down,
    /// then node_up, and did not lower the watermark, so its later events came after newer
    /// events of the other nodes. A node that answered is up, and the watermark stops at its
    /// last event read.
    #[test]
    fn a_node_cut_short_by_the_deadline_is_up_and_its_events_stay_in_order() {
        let mut m = Merge::new(true, 0);
        m.add_node(1, "n1");
        m.add_node(2, "n2");
        // Round 0 (watermark 1_000): node 1 gave a page (stamps 100 and 200), then the
        // deadline passed while its next page was asked; node 2 is read to its newest.
        let mut r = Round::new(0, 1_000);
        let mut cut = drained(1, 0, vec![event(1, 1, 100), event(1, 2, 200)], false);
        cut.error = Some(ClientError::Timeout {
            attempts: 1,
            last: "deadline".into(),
        });
        m.absorb(&mut r, cut, 1_000);
        m.absorb(&mut r, drained(2, 0, vec![event(2, 1, 300)], true), 1_000);
        let first = m.end(r);
        // Only what is older than node 1's last event read: node 1's unread events may be
        // older than node 2's.
        assert_eq!(sent(&first), vec![(1, 1, 100, "k")]);
        // Round 1: node 1's rest (stamp 250) comes; everything goes out in time order, and the
        // node was never down.
        let mut r = Round::new(1, 2_000);
        m.absorb(&mut r, drained(1, 2, vec![event(1, 3, 250)], true), 2_000);
        m.absorb(&mut r, drained(2, 1, Vec::new(), true), 2_000);
        let second = m.end(r);
        assert_eq!(
            sent(&second),
            vec![(1, 2, 200, "k"), (1, 3, 250, "k"), (2, 1, 300, "k")]
        );
        assert_eq!(m.nodes[&1].up, Some(true));
    }

    /// A node that did not answer at all is down, once; up again when it answers.
    #[test]
    fn a_node_that_does_not_answer_is_down_once_then_up() {
        let mut m = Merge::new(true, 0);
        m.add_node(1, "n1");
        let silent = || {
            let mut d = drained(1, 0, Vec::new(), false);
            d.answered = false;
            d.error = Some(ClientError::Timeout {
                attempts: 1,
                last: "deadline".into(),
            });
            d
        };
        let mut kinds = Vec::new();
        for round in 0..3 {
            let mut r = Round::new(round, 1_000 * (round as u64 + 1));
            m.absorb(&mut r, silent(), 1_000 * round as u64 + 500);
            kinds.extend(m.end(r).into_iter().map(|e| e.kind));
        }
        let mut r = Round::new(3, 4_000);
        m.absorb(&mut r, drained(1, 0, Vec::new(), true), 3_500);
        kinds.extend(m.end(r).into_iter().map(|e| e.kind));
        assert_eq!(kinds, vec!["node_down", "node_up"]);
    }

    #[test]
    fn one_poll_waits_between_a_second_and_the_request_timeout() {
        let s = Duration::from_secs;
        assert_eq!(poll_timeout(Duration::from_millis(50), s(5)), s(1));
        assert_eq!(poll_timeout(s(2), s(5)), s(2));
        assert_eq!(poll_timeout(s(60), s(5)), s(5));
    }
}
