//! Routing client requests: answered at once, queued as a proposal, or asked as a read.

use std::sync::atomic::Ordering;

use raftcore::Role;
use wire::{
    ClusterMap, Consistency, NodeStatus, Op, Outcome, PartitionStatus, Request, ResponseHeader,
    ServerError as WireError,
};

use super::partition::{self, PendingRead, Waiter};
use super::{ShardCore, SnapshotStore};
use crate::command;
use crate::meta::{MetaMap, META_PARTITION};
use crate::server::requests::{
    error_response, no_map, not_leader, ok_response, serve_read, to_command,
};
use wal::LogStore;

impl<L: LogStore, S: SnapshotStore, C: Clone> ShardCore<L, S, C> {
    fn node_status(&self) -> NodeStatus {
        let shared = &self.shared;
        let partitions = shared
            .hosted()
            .map(|(p, s)| {
                let leader = s.leader.load(Ordering::Relaxed);
                PartitionStatus {
                    partition: p,
                    term: s.term.load(Ordering::Relaxed),
                    leader_node: leader,
                    commit_index: s.commit.load(Ordering::Relaxed),
                    applied_index: s.applied.load(Ordering::Relaxed),
                    is_leader: leader == self.config.id,
                }
            })
            .collect();
        NodeStatus {
            node: self.config.id,
            shard: self.i as u32,
            map_epoch: shared.map_epoch(),
            partitions,
            slowest_fsync_us: shared
                .metrics
                .shard(self.i)
                .slowest_fsync
                .get(shared.metrics.start.elapsed().as_millis() as u64),
        }
    }

    /// The map as served to clients: endpoints, and leader hints for partitions hosted here.
    fn wire_map(&self, map: &MetaMap) -> ClusterMap {
        let shared = &self.shared;
        map.to_wire(
            |node, shard| shared.client_endpoint(&self.config, node, shard as usize),
            |p| {
                shared
                    .stat(p)
                    .filter(|s| s.hosted.load(Ordering::Relaxed))
                    .map_or(0, |s| s.leader.load(Ordering::Relaxed))
            },
        )
    }

    /// The partition a data request belongs to, or the answer that ends it here.
    fn route(&self, req: &Request) -> Result<u64, WireError> {
        if self.map.is_none() {
            return Err(no_map());
        }
        if req.map_epoch != 0 && req.map_epoch != self.route_map.epoch {
            // A request routed with another placement than ours may belong elsewhere. Older:
            // the client refreshes. Newer: this node has not applied the map yet; the client
            // backs off and retries.
            return Err(if req.map_epoch < self.route_map.epoch {
                WireError::StaleMap {
                    epoch: self.route_map.epoch,
                }
            } else {
                WireError::Unavailable {
                    reason: format!(
                        "this node has map epoch {}, the request was routed with {}",
                        self.route_map.epoch, req.map_epoch
                    ),
                }
            });
        }
        match &req.op {
            Op::Range(r) if r.partition == META_PARTITION => Err(WireError::InvalidArgument {
                reason: "partition 0 is the meta group; it holds no keys".into(),
            }),
            Op::Range(r) => Ok(r.partition),
            Op::Backup { partition, .. } if *partition == META_PARTITION => {
                Err(WireError::InvalidArgument {
                    reason: "partition 0 is the meta group; it is not backed up (a restored \
                             cluster bootstraps its own)"
                        .into(),
                })
            }
            Op::Backup { partition, .. } => Ok(*partition),
            Op::TransferLeader { partition, .. } => Ok(*partition),
            Op::Txn(t) => {
                let mut ps = t
                    .keys()
                    .filter_map(|k| self.route_map.partition_of_key(k).map(|p| p.id));
                let first = ps.next().ok_or_else(|| WireError::InvalidArgument {
                    reason: "transaction without keys".into(),
                })?;
                match ps.find(|&p| p != first) {
                    Some(other) => Err(WireError::CrossPartition {
                        reason: format!("keys in partitions {first} and {other}"),
                    }),
                    None => Ok(first),
                }
            }
            op => op
                .routing_key()
                .and_then(|k| self.route_map.partition_of_key(k))
                .map(|p| p.id)
                .ok_or_else(|| WireError::InvalidArgument {
                    reason: "request without a routable key".into(),
                }),
        }
    }

    /// Routes one request (module docs of `server`): answers it at once, or queues a proposal
    /// or a read. Every path answers or queues: nothing returns with the request unanswered.
    pub(super) fn handle_request(&mut self, conn: C, req: Request) {
        let id = req.id;
        match &req.op {
            Op::Status => {
                let r = ok_response(
                    id,
                    ResponseHeader::default(),
                    Outcome::Status(self.node_status()),
                );
                return self.reply(conn, r);
            }
            &Op::Events { after, limit } => {
                let r = ok_response(
                    id,
                    ResponseHeader::default(),
                    Outcome::Events(self.shared.events.after(after, limit, self.range_bytes_max)),
                );
                return self.reply(conn, r);
            }
            Op::ClusterMap => {
                let r = match &self.map {
                    Some(map) => ok_response(
                        id,
                        ResponseHeader::default(),
                        Outcome::ClusterMap(self.wire_map(map)),
                    ),
                    None => error_response(id, no_map()),
                };
                return self.reply(conn, r);
            }
            _ => {}
        }
        let partition = match self.route(&req) {
            Ok(p) => p,
            Err(e) => return self.reply(conn, error_response(id, e)),
        };
        let Some(part) = self.parts.get(&partition) else {
            let e = WireError::WrongShard {
                epoch: self.route_map.epoch,
            };
            return self.reply(conn, error_response(id, e));
        };
        match &req.op {
            Op::Get { consistency, .. } => {
                let c = *consistency;
                self.read(conn, id, partition, req.op, c)
            }
            Op::Range(r) => {
                let c = r.consistency;
                self.read(conn, id, partition, req.op, c)
            }
            Op::Put(_) | Op::Delete { .. } | Op::Txn(_) => {
                if part.raft.role() != Role::Leader {
                    let e = self.not_leader(part);
                    return self.reply(conn, error_response(id, e));
                }
                let cmd = match to_command(&req) {
                    Ok(c) => c,
                    Err(e) => return self.reply(conn, error_response(id, e)),
                };
                if let Err(e) = cmd.validate(&self.cmd_limits) {
                    let err = match e {
                        command::InvalidCommand::TooLarge { max, .. } => {
                            WireError::TooLarge { limit: max as u64 }
                        }
                        other => WireError::InvalidArgument {
                            reason: other.to_string(),
                        },
                    };
                    return self.reply(conn, error_response(id, err));
                }
                let data = cmd.encode();
                let limit = self.config.tuning.proposal_queue_bytes_max;
                let deadline = self.ticks + self.request_timeout_ticks;
                let part = self.parts.get_mut(&partition).expect("looked up above");
                if part.queued_bytes + data.len() > limit && !part.queued.is_empty() {
                    return self.reply(conn, error_response(id, WireError::Busy));
                }
                part.queued_bytes += data.len();
                part.queued.push((
                    data,
                    Waiter {
                        conn,
                        id,
                        term: 0,
                        op: req.op,
                        deadline,
                    },
                ));
            }
            Op::TransferLeader { to_node, .. } => {
                let to = *to_node;
                self.transfer_leader(conn, id, partition, to)
            }
            // A new copy is taken at a linearizable point; chunks of a copy are served by
            // whichever replica holds it (`backup` module docs).
            Op::Backup { index: 0, .. } => {
                self.read(conn, id, partition, req.op, Consistency::Linearizable)
            }
            &Op::Backup { index, offset, .. } => {
                let bounds = self.backup_bounds();
                let part = self.parts.get_mut(&partition).expect("looked up above");
                let held = &mut self.backup_bytes_held;
                let r = super::backup::serve(part, id, index, offset, &bounds, held);
                self.reply(conn, r)
            }
            Op::Status | Op::ClusterMap | Op::Events { .. } => unreachable!("answered above"),
        }
    }

    /// Starts a leadership transfer of `partition` to node `to` (Raft thesis §3.10), answered
    /// when it ends (`partition::resolve_transfers`) or at the request's deadline.
    fn transfer_leader(&mut self, conn: C, id: u64, partition: u64, to: u64) {
        let deadline = self.ticks + self.request_timeout_ticks;
        let me = self.config.id;
        let part = self
            .parts
            .get_mut(&partition)
            .expect("routed to a hosted partition");
        if part.raft.role() != Role::Leader {
            let e = not_leader(part.raft.leader(), None);
            return self.reply(conn, error_response(id, e));
        }
        let header = part.header();
        if to == me {
            let r = ok_response(
                id,
                header,
                Outcome::TransferLeader(wire::TransferLeaderResult {
                    partition,
                    leader_node: me,
                    term: part.raft.term(),
                }),
            );
            return self.reply(conn, r);
        }
        let started = match part.raft.transfer_leader(to) {
            Ok(()) => Ok(()),
            // A transfer to the same node is under way: wait for it too.
            Err(raftcore::Error::TransferInProgress) if part.raft.transferee() == to => Ok(()),
            Err(raftcore::Error::TransferInProgress) => Err(WireError::Unavailable {
                reason: format!(
                    "a leadership transfer of partition {partition} to node {} is under way",
                    part.raft.transferee()
                ),
            }),
            Err(raftcore::Error::InvalidTransferTarget(n)) => Err(WireError::InvalidArgument {
                reason: format!("node {n} is not a voter of partition {partition}"),
            }),
            Err(raftcore::Error::NotLeader { leader_hint }) => Err(not_leader(leader_hint, None)),
            Err(e) => Err(WireError::Unavailable {
                reason: e.to_string(),
            }),
        };
        match started {
            Ok(()) => part.transfers.push(partition::TransferWaiter {
                conn,
                id,
                to,
                term: part.raft.term(),
                deadline,
            }),
            Err(e) => self.reply(conn, error_response(id, e)),
        }
    }

    fn read(&mut self, conn: C, id: u64, partition: u64, op: Op, c: Consistency) {
        let part = self
            .parts
            .get(&partition)
            .expect("routed to a hosted partition");
        if c == Consistency::Stale {
            let r = serve_read(&part.sm, part.header(), id, &op, self.range_bytes_max);
            return self.reply(conn, r);
        }
        if c == Consistency::Linearizable && part.raft.role() != Role::Leader {
            let e = self.not_leader(part);
            return self.reply(conn, error_response(id, e));
        }
        // Thesis §6.4: confirm leadership with a heartbeat round (all reads of this turn share
        // one), or, on a follower (§6.4.1), ask the leader for its commit index; then serve
        // once the local applied index reaches the read index.
        let rid = self.next_read_id;
        self.next_read_id += 1;
        let deadline = self.ticks + self.request_timeout_ticks;
        let part = self
            .parts
            .get_mut(&partition)
            .expect("routed to a hosted partition");
        match part.raft.read_index(rid) {
            Ok(()) => {
                self.reads.insert(
                    rid,
                    PendingRead {
                        partition,
                        conn,
                        id,
                        op,
                        deadline,
                        index: None,
                    },
                );
            }
            Err(raftcore::Error::ReadQueueFull { .. }) => {
                self.reply(conn, error_response(id, WireError::Busy))
            }
            Err(e) => self.reply(
                conn,
                error_response(
                    id,
                    WireError::Unavailable {
                        reason: e.to_string(),
                    },
                ),
            ),
        }
    }

    /// Proposes every partition's queued commands as one batch.
    pub(super) fn flush_proposals(&mut self) {
        for part in self.parts.values_mut() {
            if part.queued.is_empty() {
                continue;
            }
            let queued = std::mem::take(&mut part.queued);
            part.queued_bytes = 0;
            let datas: Vec<bytes::Bytes> = queued.iter().map(|(d, _)| d.clone()).collect();
            match part.raft.propose(&datas) {
                Ok(p) => {
                    let m = self.shared.metrics.shard(self.i);
                    m.proposals.add(datas.len() as u64);
                    m.proposal_batch.observe(datas.len() as u64);
                    for (k, (_, mut w)) in queued.into_iter().enumerate() {
                        w.term = p.term;
                        let key = (p.first_index + k as u64, p.term);
                        // (index, term) is unique: one leader per term (Election Safety,
                        // Raft paper §5.2) proposes each index once.
                        if let Some(old) = part.pending.insert(key, w) {
                            panic!(
                                "shard {}, partition {}: two proposals at index {} in term {} \
                                 (request {} and {}): Election Safety violated",
                                self.i, part.id, key.0, key.1, old.id, part.pending[&key].id
                            );
                        }
                    }
                }
                Err(e) => {
                    let err = match e {
                        raftcore::Error::NotLeader { leader_hint } => not_leader(leader_hint, None),
                        raftcore::Error::UncommittedBytesLimit { .. }
                        | raftcore::Error::ProposalTooLarge { .. } => WireError::Busy,
                        other => WireError::Unavailable {
                            reason: other.to_string(),
                        },
                    };
                    for (_, w) in queued {
                        self.out
                            .replies
                            .push((w.conn, error_response(w.id, err.clone())));
                    }
                }
            }
        }
    }
}
