//! Faults and their seeded schedule.
//!
//! The schedule is a pure function of (seed, nodes, run length, enabled nemeses): a list of
//! faults, each with a start offset and a duration, one at a time, separated by quiet gaps so
//! the cluster gets a chance to recover in between. Healing a fault undoes exactly it.

use serde::Serialize;

use crate::rng::Rng;

/// Which kinds of fault a run may inject (`--nemesis kill,pause,partition,loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// `kill -9` of a minority of nodes, restarted on heal.
    Kill,
    /// SIGSTOP of a minority of nodes, SIGCONT on heal.
    Pause,
    /// Network partitions: random halves, one node isolated, or a one-way cut.
    Partition,
    /// Random packet loss on every node.
    Loss,
    /// `kill -9` of every node at once, all restarted on heal: acknowledged writes must survive
    /// a whole-cluster crash (they were fdatasynced on a majority).
    KillAll,
    /// One node drops every packet in and out, the clients' included: connections to it hang
    /// instead of being refused or answered, so clients must time out and move on.
    Blackhole,
    /// Peer links slowed down by the harness's proxy: every link, or one node's links.
    /// Enabling it sends all peer traffic through the proxy for the whole run.
    Delay,
}

impl std::str::FromStr for Nemesis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kill" => Ok(Nemesis::Kill),
            "pause" => Ok(Nemesis::Pause),
            "partition" => Ok(Nemesis::Partition),
            "loss" => Ok(Nemesis::Loss),
            "kill-all" => Ok(Nemesis::KillAll),
            "blackhole" => Ok(Nemesis::Blackhole),
            "delay" => Ok(Nemesis::Delay),
            other => Err(format!(
                "unknown nemesis {other:?} (kill, pause, partition, loss, kill-all, blackhole, delay)"
            )),
        }
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// `kill -9` these nodes; restart them on heal.
    Kill {
        /// Node ids.
        nodes: Vec<u64>,
    },
    /// `kill -9` every node; restart them all on heal.
    KillAll {
        /// Node ids (all of them).
        nodes: Vec<u64>,
    },
    /// SIGSTOP these nodes; SIGCONT on heal.
    Pause {
        /// Node ids.
        nodes: Vec<u64>,
    },
    /// The cluster split in two: no packets between `side_a` and `side_b`, both ways.
    Partition {
        /// What kind of split: "halves" or "isolate".
        shape: &'static str,
        /// The minority side.
        side_a: Vec<u64>,
        /// The majority side.
        side_b: Vec<u64>,
    },
    /// `to` stops receiving packets from `from`; `from` still hears `to`.
    OneWay {
        /// The node whose packets are dropped.
        from: u64,
        /// The node that drops them.
        to: u64,
    },
    /// This node drops every packet it sends or receives on the harness network.
    Blackhole {
        /// Node id.
        node: u64,
    },
    /// Every peer link touching `nodes` delays each byte by `ms` (one way).
    Delay {
        /// The slow nodes (all of them: every link is slow).
        nodes: Vec<u64>,
        /// One-way delay, ms.
        ms: u64,
    },
    /// Every node drops `percent`% of the packets it receives, at random.
    Loss {
        /// Drop probability in percent.
        percent: u64,
    },
}

impl Fault {
    /// The nemesis this fault belongs to.
    pub fn nemesis(&self) -> Nemesis {
        match self {
            Fault::KillAll { .. } => Nemesis::KillAll,
            Fault::Blackhole { .. } => Nemesis::Blackhole,
            Fault::Delay { .. } => Nemesis::Delay,
            Fault::Kill { .. } => Nemesis::Kill,
            Fault::Pause { .. } => Nemesis::Pause,
            Fault::Partition { .. } | Fault::OneWay { .. } => Nemesis::Partition,
            Fault::Loss { .. } => Nemesis::Loss,
        }
    }

    /// One line for logs and the report.
    pub fn describe(&self) -> String {
        match self {
            Fault::Kill { nodes } => format!("kill -9 nodes {nodes:?}"),
            Fault::KillAll { nodes } => format!("kill -9 every node {nodes:?}"),
            Fault::Pause { nodes } => format!("SIGSTOP nodes {nodes:?}"),
            Fault::Partition {
                shape,
                side_a,
                side_b,
            } => format!("partition ({shape}) {side_a:?} | {side_b:?}"),
            Fault::OneWay { from, to } => format!("one-way: node {to} drops packets from {from}"),
            Fault::Loss { percent } => format!("{percent}% packet loss on every node"),
            Fault::Blackhole { node } => format!("blackhole node {node} (clients included)"),
            Fault::Delay { nodes, ms } => {
                format!("{ms} ms delay on the peer links of nodes {nodes:?}")
            }
        }
    }
}

/// A fault in the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// Offset from the start of the workload, ms.
    pub at_ms: u64,
    /// How long the fault lasts before it is healed, ms.
    pub duration_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// Schedule bounds, in ms.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Quiet time before the first fault.
    pub warmup_ms: u64,
    /// Quiet gap between faults: `[gap_min_ms, gap_max_ms)`.
    pub gap_min_ms: u64,
    /// See `gap_min_ms`.
    pub gap_max_ms: u64,
    /// Fault duration: `[fault_min_ms, fault_max_ms)`.
    pub fault_min_ms: u64,
    /// See `fault_min_ms`.
    pub fault_max_ms: u64,
    /// Quiet time at the end of the workload: faults end before it.
    pub tail_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            warmup_ms: 3_000,
            gap_min_ms: 2_000,
            gap_max_ms: 5_000,
            fault_min_ms: 3_000,
            fault_max_ms: 8_000,
            tail_ms: 3_000,
        }
    }
}

/// The largest minority of `nodes`: the most nodes a fault may take away while a quorum
/// remains.
fn minority_max(nodes: u64) -> u64 {
    (nodes - 1) / 2
}

/// `count` distinct random nodes out of `1..=nodes`.
fn pick(rng: &mut Rng, nodes: u64, count: u64) -> Vec<u64> {
    let mut all: Vec<u64> = (1..=nodes).collect();
    rng.shuffle(&mut all);
    all.truncate(count as usize);
    all.sort_unstable();
    all
}

/// The schedule for a run of `run_ms` on `nodes` nodes.
pub fn schedule(
    seed: u64,
    nodes: u64,
    run_ms: u64,
    enabled: &[Nemesis],
    timing: Timing,
) -> Vec<Planned> {
    let mut rng = Rng::new(seed, 0x6e656d65);
    let mut out = Vec::new();
    if enabled.is_empty() || nodes < 3 {
        return out;
    }
    let mut t = timing.warmup_ms;
    loop {
        let duration_ms = rng.range(timing.fault_min_ms, timing.fault_max_ms);
        if t + duration_ms + timing.tail_ms > run_ms {
            break;
        }
        let nemesis = enabled[rng.range(0, enabled.len() as u64) as usize];
        let fault = match nemesis {
            Nemesis::Kill => {
                let count = rng_count(&mut rng, nodes);
                Fault::Kill {
                    nodes: pick(&mut rng, nodes, count),
                }
            }
            Nemesis::Pause => {
                let count = rng_count(&mut rng, nodes);
                Fault::Pause {
                    nodes: pick(&mut rng, nodes, count),
                }
            }
            Nemesis::Partition => match rng.range(0, 3) {
                0 => {
                    let mut all: Vec<u64> = (1..=nodes).collect();
                    rng.shuffle(&mut all);
                    let k = rng.range(1, minority_max(nodes) + 1) as usize;
                    let mut side_a = all[..k].to_vec();
                    let mut side_b = all[k..].to_vec();
                    side_a.sort_unstable();
                    side_b.sort_unstable();
                    Fault::Partition {
                        shape: "halves",
                        side_a,
                        side_b,
                    }
                }
                1 => {
                    let lone = rng.range(1, nodes + 1);
                    Fault::Partition {
                        shape: "isolate",
                        side_a: vec![lone],
                        side_b: (1..=nodes).filter(|&n| n != lone).collect(),
                    }
                }
                _ => {
                    let pair = pick(&mut rng, nodes, 2);
                    let (from, to) = if rng.chance(50) {
                        (pair[0], pair[1])
                    } else {
                        (pair[1], pair[0])
                    };
                    Fault::OneWay { from, to }
                }
            },
            Nemesis::Loss => Fault::Loss {
                percent: rng.range(5, 31),
            },
            Nemesis::KillAll => Fault::KillAll {
                nodes: (1..=nodes).collect(),
            },
            Nemesis::Blackhole => Fault::Blackhole {
                node: rng.range(1, nodes + 1),
            },
            Nemesis::Delay => {
                if rng.chance(50) {
                    Fault::Delay {
                        nodes: (1..=nodes).collect(),
                        ms: rng.range(20, 300),
                    }
                } else {
                    Fault::Delay {
                        nodes: vec![rng.range(1, nodes + 1)],
                        ms: rng.range(100, 1000),
                    }
                }
            }
        };
        out.push(Planned {
            at_ms: t,
            duration_ms,
            fault,
        });
        t += duration_ms + rng.range(timing.gap_min_ms, timing.gap_max_ms);
    }
    out
}

/// How many nodes a kill or pause takes: 1, or up to the largest minority.
fn rng_count(rng: &mut Rng, nodes: u64) -> u64 {
    rng.range(1, minority_max(nodes) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Nemesis; 4] = [
        Nemesis::Kill,
        Nemesis::Pause,
        Nemesis::Partition,
        Nemesis::Loss,
    ];

    #[test]
    fn schedule_replays_from_its_seed() {
        let a = schedule(42, 5, 120_000, &ALL, Timing::default());
        let b = schedule(42, 5, 120_000, &ALL, Timing::default());
        assert_eq!(a, b);
        assert_ne!(a, schedule(43, 5, 120_000, &ALL, Timing::default()));
    }

    #[test]
    fn faults_leave_a_quorum_and_do_not_overlap() {
        for seed in 0..200 {
            for nodes in [3, 5] {
                let run_ms = 90_000;
                let s = schedule(seed, nodes, run_ms, &ALL, Timing::default());
                assert!(!s.is_empty());
                let mut end = 0;
                for p in &s {
                    assert!(p.at_ms >= end, "overlap at seed {seed}");
                    end = p.at_ms + p.duration_ms;
                    assert!(end + Timing::default().tail_ms <= run_ms);
                    match &p.fault {
                        Fault::Kill { nodes: n } | Fault::Pause { nodes: n } => {
                            assert!(!n.is_empty() && n.len() as u64 <= minority_max(nodes));
                        }
                        Fault::Partition { side_a, side_b, .. } => {
                            assert_eq!((side_a.len() + side_b.len()) as u64, nodes);
                            assert!(side_a.iter().all(|a| !side_b.contains(a)));
                        }
                        Fault::OneWay { from, to } => assert_ne!(from, to),
                        Fault::Loss { percent } => assert!((5..=30).contains(percent)),
                        Fault::KillAll { .. } | Fault::Blackhole { .. } | Fault::Delay { .. } => {
                            panic!("{:?} is not in ALL", p.fault)
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn kill_all_kills_every_node() {
        let s = schedule(3, 5, 60_000, &[Nemesis::KillAll], Timing::default());
        assert!(!s.is_empty());
        for p in s {
            assert_eq!(
                p.fault,
                Fault::KillAll {
                    nodes: vec![1, 2, 3, 4, 5]
                }
            );
        }
    }

    #[test]
    fn only_enabled_nemeses_appear() {
        let s = schedule(7, 3, 300_000, &[Nemesis::Pause], Timing::default());
        assert!(s.iter().all(|p| p.fault.nemesis() == Nemesis::Pause));
    }
}
