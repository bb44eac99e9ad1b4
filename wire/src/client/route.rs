//! Which replica one attempt of a request goes to.
//!
//! Two kinds of requests, two rules:
//! - **Leader requests** (writes, transactions, `Linearizable` gets and ranges): the partition's
//!   leader hint, else its first replica. Only the leader can serve them; a `NotLeader` answer
//!   moves the hint.
//! - **Spread reads** (`Get` and `Range` with `Follower` or `Stale` consistency): any replica can
//!   serve them (the server runs the follower read of Raft thesis §6.4.1, or a local read), so
//!   they are spread over the replicas as [`ReadPreference`] says. Each call takes the next value
//!   of a per-client counter and rotates the candidate list by it, so consecutive reads, even of
//!   one hot key, go to different replicas (round robin); a key hash would pin a hot key to one
//!   replica, which is the load this routing exists to spread. The call's k-th attempt goes to
//!   candidate `k mod n`: a failed replica hands the read to the next candidate at once, and
//!   the caller backs off only after every candidate failed once.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::map::{ClusterMap, PartitionInfo, Replica};
use crate::messages::{Consistency, Op};

/// Where follower and stale reads go. Writes and linearizable reads always go to the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadPreference {
    /// The partition's non-leader replicas, round robin; the leader only after each of them
    /// failed (or when the map names no other replica). Keeps read load off the leader, which
    /// also carries every write. The default.
    #[default]
    Followers,
    /// Every replica, leader included, round robin.
    AnyReplica,
    /// The leader hint first, then the other replicas (round robin) when it fails; no
    /// spreading while the leader serves. Without a leader hint: like `AnyReplica`.
    Leader,
}

/// Where a request goes, before the map is consulted.
pub(super) enum Target {
    /// The partition owning this key.
    Key(bytes::Bytes),
    /// This partition.
    Partition(u64),
}

/// How one call spreads its attempts over the replicas (spread reads only).
#[derive(Debug, Clone, Copy)]
pub(super) struct Spread {
    /// The preference the call was issued with.
    pub(super) preference: ReadPreference,
    /// This call's value of the client's rotation counter.
    pub(super) rotation: u64,
    /// Replica failures so far in this call: the next attempt uses candidate `attempt mod n`.
    pub(super) attempt: u64,
    /// A replica lost its connection since the call last started over.
    pub(super) lost_conn: bool,
}

impl Spread {
    /// The spread state for `op` if it is a read any replica may serve (taking the next value
    /// of the client's `rotation` counter), else `None`.
    pub(super) fn for_op(
        op: &Op,
        preference: ReadPreference,
        rotation: &AtomicU64,
    ) -> Option<Self> {
        let consistency = match op {
            Op::Get { consistency, .. } => *consistency,
            Op::Range(r) => r.consistency,
            _ => return None,
        };
        (consistency != Consistency::Linearizable).then(|| Spread {
            preference,
            rotation: rotation.fetch_add(1, Ordering::Relaxed),
            attempt: 0,
            lost_conn: false,
        })
    }

    /// Records a failed attempt on a partition of `replicas` replicas. True when a replica this
    /// round has not tried yet remains (the caller retries at once); false when every replica
    /// failed once (the caller backs off; the next round starts from the first candidate).
    pub(super) fn failed(&mut self, replicas: usize, lost_conn: bool) -> bool {
        self.attempt += 1;
        self.lost_conn |= lost_conn;
        replicas > 0 && self.attempt % replicas as u64 != 0
    }
}

/// The replica chosen for one attempt.
pub(super) struct Routed<'m> {
    /// Its partition.
    pub(super) partition: &'m PartitionInfo,
    /// The replica.
    pub(super) replica: &'m Replica,
}

/// Picks the replica for the next attempt: see the module docs. `None` when the map has no
/// partition for the target (the caller refreshes the map).
pub(super) fn pick<'m>(
    map: &'m ClusterMap,
    target: &Target,
    spread: Option<&Spread>,
) -> Option<Routed<'m>> {
    let partition = match target {
        Target::Key(k) => map.partition_of_key(k)?,
        Target::Partition(id) => map.partition(*id)?,
    };
    let replica = match spread {
        None => partition.leader().or_else(|| partition.replicas.first())?,
        Some(s) => {
            let order = read_order(partition, s.preference, s.rotation);
            let n = order.len() as u64;
            if n == 0 {
                return None;
            }
            order[(s.attempt % n) as usize]
        }
    };
    Some(Routed { partition, replica })
}

/// `v` rotated left by `rotation` (mod its length).
fn rotated(mut v: Vec<&Replica>, rotation: u64) -> Vec<&Replica> {
    if !v.is_empty() {
        let k = (rotation % v.len() as u64) as usize;
        v.rotate_left(k);
    }
    v
}

/// The replicas of `p` in the order a spread read with `preference` tries them, rotated by
/// `rotation`. Every replica appears exactly once.
pub(super) fn read_order(
    p: &PartitionInfo,
    preference: ReadPreference,
    rotation: u64,
) -> Vec<&Replica> {
    let leader = p.leader();
    let is_leader = |r: &Replica| leader.is_some_and(|l| l.node == r.node);
    match preference {
        ReadPreference::AnyReplica => rotated(p.replicas.iter().collect(), rotation),
        ReadPreference::Followers => {
            let mut order = rotated(
                p.replicas.iter().filter(|r| !is_leader(r)).collect(),
                rotation,
            );
            order.extend(leader);
            order
        }
        ReadPreference::Leader => {
            let mut order: Vec<&Replica> = leader.into_iter().collect();
            order.extend(rotated(
                p.replicas.iter().filter(|r| !is_leader(r)).collect(),
                rotation,
            ));
            order
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::Range;

    fn part(leader: u64) -> PartitionInfo {
        PartitionInfo {
            id: 1,
            replicas: (1..=3)
                .map(|n| Replica {
                    node: n,
                    shard: 0,
                    endpoint: format!("127.0.0.1:{}", 7000 + n),
                })
                .collect(),
            leader_node: leader,
        }
    }

    fn nodes(v: &[&Replica]) -> Vec<u64> {
        v.iter().map(|r| r.node).collect()
    }

    #[test]
    fn followers_first_rotating_then_the_leader() {
        let p = part(2);
        assert_eq!(
            nodes(&read_order(&p, ReadPreference::Followers, 0)),
            [1, 3, 2]
        );
        assert_eq!(
            nodes(&read_order(&p, ReadPreference::Followers, 1)),
            [3, 1, 2]
        );
        assert_eq!(
            nodes(&read_order(&p, ReadPreference::Followers, 2)),
            [1, 3, 2]
        );
        // No leader known: every replica is a follower candidate.
        let p = part(0);
        assert_eq!(
            nodes(&read_order(&p, ReadPreference::Followers, 1)),
            [2, 3, 1]
        );
    }

    #[test]
    fn any_replica_and_leader_preferences() {
        let p = part(2);
        assert_eq!(
            nodes(&read_order(&p, ReadPreference::AnyReplica, 0)),
            [1, 2, 3]
        );
        assert_eq!(
            nodes(&read_order(&p, ReadPreference::AnyReplica, 4)),
            [2, 3, 1]
        );
        assert_eq!(nodes(&read_order(&p, ReadPreference::Leader, 0)), [2, 1, 3]);
        assert_eq!(nodes(&read_order(&p, ReadPreference::Leader, 1)), [2, 3, 1]);
    }

    #[test]
    fn attempts_walk_the_order_and_wrap() {
        let map = ClusterMap::uniform(1, vec![part(2)]);
        let mut s = Spread {
            preference: ReadPreference::Followers,
            rotation: 1,
            attempt: 0,
            lost_conn: false,
        };
        let mut seen = Vec::new();
        for attempt in 0..4 {
            s.attempt = attempt;
            let r = pick(&map, &Target::Partition(1), Some(&s)).unwrap();
            seen.push(r.replica.node);
        }
        assert_eq!(seen, [3, 1, 2, 3]);
        let r = pick(&map, &Target::Key("k".into()), None).unwrap();
        assert_eq!(r.replica.node, 2, "leader requests go to the leader hint");
        assert!(pick(&map, &Target::Partition(9), Some(&s)).is_none());
    }

    #[test]
    fn only_follower_and_stale_reads_spread() {
        let get = |consistency| Op::Get {
            key: "k".into(),
            consistency,
        };
        let pref = ReadPreference::Followers;
        let counter = AtomicU64::new(0);
        assert!(Spread::for_op(&get(Consistency::Linearizable), pref, &counter).is_none());
        let s = Spread::for_op(&get(Consistency::Follower), pref, &counter).unwrap();
        assert_eq!(s.rotation, 0);
        let s = Spread::for_op(&get(Consistency::Stale), pref, &counter).unwrap();
        assert_eq!(s.rotation, 1, "each spread read takes the next rotation");
        let range = |consistency| {
            Op::Range(Range {
                partition: 1,
                consistency,
                ..Range::default()
            })
        };
        assert!(Spread::for_op(&range(Consistency::Linearizable), pref, &counter).is_none());
        assert!(Spread::for_op(&range(Consistency::Follower), pref, &counter).is_some());
        let delete = Op::Delete {
            key: "k".into(),
            return_previous: false,
        };
        assert!(Spread::for_op(&delete, pref, &counter).is_none());
        assert_eq!(
            counter.load(Ordering::Relaxed),
            3,
            "only spread reads take a rotation"
        );
    }

    #[test]
    fn a_round_ends_after_every_replica_failed_once() {
        let counter = AtomicU64::new(0);
        let op = Op::Get {
            key: "k".into(),
            consistency: Consistency::Stale,
        };
        let mut s = Spread::for_op(&op, ReadPreference::Followers, &counter).unwrap();
        assert!(s.failed(3, false));
        assert!(s.failed(3, true));
        assert!(
            !s.failed(3, false),
            "third failure of three replicas ends the round"
        );
        assert!(s.lost_conn);
        assert!(s.failed(3, false), "the next round starts over");
        assert!(
            !s.failed(1, false),
            "one replica: every failure ends a round"
        );
    }
}
