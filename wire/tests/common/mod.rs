//! proptest strategies for every message type (shared by the integration tests).
#![allow(dead_code)]

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use wire::*;

pub fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

pub fn consistency() -> impl Strategy<Value = Consistency> {
    prop_oneof![
        Just(Consistency::Linearizable),
        Just(Consistency::Follower),
        Just(Consistency::Stale)
    ]
}

pub fn put() -> impl Strategy<Value = Put> {
    (bytes(24), bytes(64), any::<bool>(), any::<bool>()).prop_map(
        |(key, value, if_absent, return_previous)| Put {
            key,
            value,
            if_absent,
            return_previous,
        },
    )
}

pub fn compare() -> impl Strategy<Value = Compare> {
    let op = prop_oneof![
        Just(CompareOp::Equal),
        Just(CompareOp::NotEqual),
        Just(CompareOp::Less),
        Just(CompareOp::Greater)
    ];
    let target = prop_oneof![
        bytes(16).prop_map(CompareTarget::Value),
        any::<u64>().prop_map(CompareTarget::Version),
        any::<u64>().prop_map(CompareTarget::CreateRevision),
        any::<u64>().prop_map(CompareTarget::ModRevision),
        any::<bool>().prop_map(CompareTarget::Exists),
    ];
    (bytes(16), op, target).prop_map(|(key, op, target)| Compare { key, op, target })
}

pub fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        bytes(16).prop_map(|key| TxnOp::Get { key }),
        put().prop_map(TxnOp::Put),
        (bytes(16), any::<bool>()).prop_map(|(key, return_previous)| TxnOp::Delete {
            key,
            return_previous
        }),
    ]
}

pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (bytes(24), consistency()).prop_map(|(key, consistency)| Op::Get { key, consistency }),
        put().prop_map(Op::Put),
        (bytes(24), any::<bool>()).prop_map(|(key, return_previous)| Op::Delete {
            key,
            return_previous
        }),
        (
            vec(compare(), 0..4),
            vec(txn_op(), 0..4),
            vec(txn_op(), 0..4)
        )
            .prop_map(|(compares, success, failure)| Op::Txn(Txn {
                compares,
                success,
                failure
            })),
        (
            any::<u64>(),
            bytes(8),
            bytes(8),
            any::<u32>(),
            any::<bool>(),
            consistency(),
            (bytes(8), any::<u64>())
        )
            .prop_map(
                |(partition, start, end, limit, keys_only, consistency, (after, revision))| {
                    Op::Range(Range {
                        partition,
                        start,
                        end,
                        limit,
                        keys_only,
                        consistency,
                        revision,
                        after,
                    })
                }
            ),
        Just(Op::Status),
        Just(Op::ClusterMap),
    ]
}

pub fn request() -> impl Strategy<Value = Request> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        op(),
        any::<u64>(),
    )
        .prop_map(|(id, session, seq, map_epoch, op, first_unacked)| Request {
            id,
            session,
            seq,
            map_epoch,
            op,
            first_unacked,
        })
}

pub fn kv() -> impl Strategy<Value = KeyValue> {
    (
        bytes(16),
        bytes(32),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(key, value, create_revision, mod_revision, version)| KeyValue {
                key,
                value,
                create_revision,
                mod_revision,
                version,
            },
        )
}

pub fn server_error() -> impl Strategy<Value = ServerError> {
    let s = "[a-z ]{0,12}";
    prop_oneof![
        (any::<u64>(), option::of(s)).prop_map(|(leader_node, leader_endpoint)| {
            ServerError::NotLeader {
                leader_node,
                leader_endpoint,
            }
        }),
        any::<u64>().prop_map(|epoch| ServerError::WrongShard { epoch }),
        any::<u64>().prop_map(|epoch| ServerError::StaleMap { epoch }),
        s.prop_map(|reason| ServerError::Unavailable { reason }),
        Just(ServerError::Timeout),
        any::<u64>().prop_map(|limit| ServerError::TooLarge { limit }),
        any::<u64>().prop_map(|compacted| ServerError::Compacted { compacted }),
        any::<u64>().prop_map(|current| ServerError::FutureRevision { current }),
        s.prop_map(|reason| ServerError::InvalidArgument { reason }),
        Just(ServerError::Busy),
        s.prop_map(|reason| ServerError::CrossPartition { reason }),
        s.prop_map(|reason| ServerError::Internal { reason }),
        s.prop_map(|reason| ServerError::OutcomeUnknown { reason }),
    ]
}

/// A valid cluster map with 1..6 partitions of 1..4 replicas.
pub fn cluster_map() -> impl Strategy<Value = ClusterMap> {
    (
        any::<u64>(),
        vec((vec(1u64..50, 1..4), any::<u32>(), any::<u8>()), 1..6),
    )
        .prop_map(|(epoch, parts)| {
            let partitions = parts
                .into_iter()
                .enumerate()
                .map(|(i, (mut nodes, shard, pick))| {
                    nodes.sort_unstable();
                    nodes.dedup();
                    let leader_node = if pick % 3 == 0 {
                        0
                    } else {
                        nodes[usize::from(pick) % nodes.len()]
                    };
                    PartitionInfo {
                        id: i as u64 * 7 + 1,
                        replicas: nodes
                            .iter()
                            .map(|&n| Replica {
                                node: n,
                                shard,
                                endpoint: format!("127.0.0.{n}:{}", 7000 + shard % 100),
                            })
                            .collect(),
                        leader_node,
                    }
                })
                .collect();
            ClusterMap::uniform(epoch, partitions)
        })
}

pub fn outcome() -> impl Strategy<Value = Outcome> {
    let txn_res = prop_oneof![
        option::of(kv()).prop_map(TxnOpResult::Get),
        (any::<bool>(), option::of(kv()))
            .prop_map(|(written, previous)| TxnOpResult::Put { written, previous }),
        (any::<bool>(), option::of(kv()))
            .prop_map(|(deleted, previous)| TxnOpResult::Delete { deleted, previous }),
    ];
    let pstatus = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(partition, term, leader_node, commit_index, applied_index, is_leader)| {
                PartitionStatus {
                    partition,
                    term,
                    leader_node,
                    commit_index,
                    applied_index,
                    is_leader,
                }
            },
        );
    prop_oneof![
        option::of(kv()).prop_map(Outcome::Get),
        (any::<bool>(), option::of(kv()), any::<u64>()).prop_map(
            |(written, previous, revision)| Outcome::Put(PutResult {
                written,
                previous,
                revision
            })
        ),
        (any::<bool>(), option::of(kv()), any::<u64>()).prop_map(
            |(deleted, previous, revision)| Outcome::Delete(DeleteResult {
                deleted,
                previous,
                revision
            })
        ),
        (any::<bool>(), vec(txn_res, 0..4), any::<u64>()).prop_map(
            |(succeeded, results, revision)| Outcome::Txn(TxnResult {
                succeeded,
                results,
                revision
            })
        ),
        (vec(kv(), 0..5), any::<bool>())
            .prop_map(|(kvs, more)| Outcome::Range(RangeResult { kvs, more })),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            vec(pstatus, 0..4),
            any::<u64>()
        )
            .prop_map(|(node, shard, map_epoch, partitions, slowest_fsync_us)| {
                Outcome::Status(NodeStatus {
                    node,
                    shard,
                    map_epoch,
                    partitions,
                    slowest_fsync_us,
                })
            }),
        cluster_map().prop_map(Outcome::ClusterMap),
    ]
}

pub fn response() -> impl Strategy<Value = Response> {
    let header =
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(partition, term, applied_index)| {
            ResponseHeader {
                partition,
                term,
                applied_index,
            }
        });
    let outcome = prop_oneof![outcome().prop_map(Ok), server_error().prop_map(Err)];
    (any::<u64>(), header, outcome).prop_map(|(id, header, outcome)| Response {
        id,
        header,
        outcome,
    })
}

pub fn response_batch() -> impl Strategy<Value = ResponseBatch> {
    (option::of(server_error()), vec(response(), 0..6)).prop_map(|(frame_error, responses)| {
        ResponseBatch {
            frame_error,
            responses,
        }
    })
}

pub fn kind() -> impl Strategy<Value = MessageKind> {
    (0usize..MessageKind::ALL.len()).prop_map(|i| MessageKind::ALL[i])
}

pub fn raft_message() -> impl Strategy<Value = RaftMessage> {
    let entry = (any::<u64>(), any::<u64>(), any::<u8>(), bytes(32)).prop_map(
        |(index, term, kind, data)| Entry {
            index,
            term,
            kind,
            data,
        },
    );
    let conf = (
        vec(any::<u64>(), 0..4),
        vec(any::<u64>(), 0..3),
        vec(any::<u64>(), 0..3),
        vec(any::<u64>(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(voters, learners, voters_outgoing, learners_next, auto_leave)| ConfState {
                voters,
                learners,
                voters_outgoing,
                learners_next,
                auto_leave,
            },
        );
    let snap = (
        any::<u64>(),
        any::<u64>(),
        conf,
        any::<u64>(),
        any::<u64>(),
        bytes(48),
        any::<bool>(),
    )
        .prop_map(
            |(index, term, conf, offset, total_bytes, data, done)| SnapshotChunk {
                index,
                term,
                conf,
                offset,
                total_bytes,
                data,
                done,
            },
        );
    (
        kind(),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        vec(entry, 0..4),
        (any::<bool>(), any::<u64>(), any::<u64>(), any::<u64>()),
        option::of(snap),
    )
        .prop_map(
            |(
                kind,
                (from, to, term, log_term, index, commit),
                entries,
                (reject, rhi, rht, context),
                snapshot,
            )| {
                RaftMessage {
                    kind,
                    from,
                    to,
                    term,
                    log_term,
                    index,
                    commit,
                    entries,
                    reject,
                    reject_hint_index: rhi,
                    reject_hint_term: rht,
                    context,
                    snapshot,
                }
            },
        )
}

pub fn peer_batch() -> impl Strategy<Value = PeerBatch> {
    (
        any::<u64>(),
        any::<u64>(),
        vec((any::<u64>(), raft_message()), 0..6),
    )
        .prop_map(|(from_node, to_node, messages)| PeerBatch {
            from_node,
            to_node,
            messages,
        })
}
