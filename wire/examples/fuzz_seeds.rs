//! Writes seed corpora for the fuzz targets of `wire/fuzz`, in each target's input format
//! (`wire::fuzzing`): for `decode`, one valid frame stream and one bare body of every message
//! kind; for `peer`, peer batches holding every message kind, under both limit modes.
//!
//! Usage: `cargo run -p wire --example fuzz_seeds -- wire/fuzz/corpus` (writes `decode/` and
//! `peer/` under it)

use bytes::BytesMut;
use wire::*;

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "wire/fuzz/corpus".into());
    let dir = format!("{root}/decode");
    let peer_dir = format!("{root}/peer");
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&peer_dir)?;
    let limits = Limits::default();
    let mut enc = BodyEncoder::new();
    let req = |id, op| Request {
        id,
        session: 3,
        seq: id,
        map_epoch: 1,
        op,
        first_unacked: id,
    };
    let requests = vec![
        req(
            1,
            Op::Get {
                key: "k".into(),
                consistency: Consistency::Follower,
            },
        ),
        req(
            2,
            Op::Put(Put {
                key: "{t}a".into(),
                value: "v".into(),
                if_absent: true,
                return_previous: true,
            }),
        ),
        req(
            3,
            Op::Delete {
                key: "k".into(),
                return_previous: true,
            },
        ),
        req(
            4,
            Op::Txn(Txn {
                compares: vec![
                    Compare {
                        key: "k".into(),
                        op: CompareOp::Less,
                        target: CompareTarget::Version(2),
                    },
                    Compare {
                        key: "k".into(),
                        op: CompareOp::Equal,
                        target: CompareTarget::Value("x".into()),
                    },
                ],
                success: vec![TxnOp::Put(Put {
                    key: "k".into(),
                    value: "y".into(),
                    ..Put::default()
                })],
                failure: vec![
                    TxnOp::Get { key: "k".into() },
                    TxnOp::Delete {
                        key: "j".into(),
                        return_previous: true,
                    },
                ],
            }),
        ),
        req(
            5,
            Op::Range(Range {
                partition: 2,
                start: "a".into(),
                end: "z".into(),
                limit: 10,
                after: "c".into(),
                ..Range::default()
            }),
        ),
        req(6, Op::Status),
        req(7, Op::ClusterMap),
    ];
    let kv = KeyValue {
        key: "k".into(),
        value: "v".into(),
        create_revision: 1,
        mod_revision: 2,
        version: 3,
    };
    let map = ClusterMap::uniform(
        4,
        (1..=3)
            .map(|p| PartitionInfo {
                id: p,
                replicas: (1..=3)
                    .map(|n| Replica {
                        node: n,
                        shard: 1,
                        endpoint: format!("127.0.0.1:70{n}0"),
                    })
                    .collect(),
                leader_node: p,
            })
            .collect(),
    );
    let resp = |id, outcome| Response {
        id,
        header: ResponseHeader {
            partition: 1,
            term: 2,
            applied_index: 3,
        },
        outcome,
    };
    let responses = ResponseBatch {
        frame_error: Some(ServerError::NotLeader {
            leader_node: 2,
            leader_endpoint: Some("127.0.0.1:7020".into()),
        }),
        responses: vec![
            resp(1, Ok(Outcome::Get(Some(kv.clone())))),
            resp(
                2,
                Ok(Outcome::Put(PutResult {
                    written: true,
                    previous: Some(kv.clone()),
                    revision: 5,
                })),
            ),
            resp(
                3,
                Ok(Outcome::Delete(DeleteResult {
                    deleted: true,
                    previous: None,
                    revision: 6,
                })),
            ),
            resp(
                4,
                Ok(Outcome::Txn(TxnResult {
                    succeeded: false,
                    results: vec![
                        TxnOpResult::Get(Some(kv.clone())),
                        TxnOpResult::Delete {
                            deleted: false,
                            previous: None,
                        },
                    ],
                    revision: 0,
                })),
            ),
            resp(
                5,
                Ok(Outcome::Range(RangeResult {
                    kvs: vec![kv.clone(), kv],
                    more: true,
                })),
            ),
            resp(
                6,
                Ok(Outcome::Status(NodeStatus {
                    node: 1,
                    shard: 0,
                    map_epoch: 4,
                    partitions: vec![PartitionStatus::default()],
                    slowest_fsync_us: 1234,
                })),
            ),
            resp(7, Ok(Outcome::ClusterMap(map))),
            resp(8, Err(ServerError::StaleMap { epoch: 9 })),
            resp(
                9,
                Err(ServerError::InvalidArgument {
                    reason: "bad".into(),
                }),
            ),
        ],
    };
    let mut append = RaftMessage::new(MessageKind::Append);
    append.entries = vec![Entry {
        index: 5,
        term: 2,
        kind: 0,
        data: "cmd".into(),
    }];
    let mut snap = RaftMessage::new(MessageKind::Snapshot);
    snap.snapshot = Some(SnapshotChunk {
        index: 9,
        term: 2,
        conf: ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..ConfState::default()
        },
        offset: 0,
        total_bytes: 4,
        data: "data".into(),
        done: true,
    });
    let peer = PeerBatch {
        from_node: 1,
        to_node: 2,
        messages: vec![
            (1, append),
            (2, snap),
            (3, RaftMessage::new(MessageKind::Heartbeat)),
        ],
    };

    let write = |name: &str, mode: u8, bytes: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(bytes);
        std::fs::write(format!("{dir}/{name}"), v)
    };
    // Odd modes: bare bodies (kind = 1 + (mode >> 1) % 3).
    write("body-requests", 1, enc.requests(&requests))?;
    write("body-responses", 3, enc.responses(&responses))?;
    write("body-peer", 5, enc.peer_batch(&peer))?;
    // Even modes: frame streams.
    let mut stream = BytesMut::new();
    enc.request_frame(&mut stream, 1, &requests, &limits)
        .expect("fits");
    enc.response_frame(&mut stream, 2, &responses, &limits)
        .expect("fits");
    enc.peer_frame(&mut stream, 3, &peer, &limits)
        .expect("fits");
    write("frames-all", 0, &stream)?;
    write("frames-all-chunked", 14, &stream)?;

    // `peer`: byte 0 bit 0 picks default (0) or tight (1) limits.
    let write_peer = |name: &str, mode: u8, bytes: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(bytes);
        std::fs::write(format!("{peer_dir}/{name}"), v)
    };
    write_peer("batch-mixed", 0, enc.peer_batch(&peer))?;
    write_peer("batch-mixed-tight", 1, enc.peer_batch(&peer))?;
    let every_kind = PeerBatch {
        from_node: 2,
        to_node: 1,
        messages: MessageKind::ALL
            .iter()
            .zip(1u64..)
            .map(|(&kind, n)| {
                let mut m = RaftMessage::new(kind);
                m.from = 2;
                m.to = 1;
                m.term = n;
                m.log_term = n - 1;
                m.index = 10 * n;
                m.commit = 9 * n;
                m.reject = n % 2 == 0;
                m.reject_hint_index = n;
                m.reject_hint_term = n;
                m.context = n << 8;
                (n % 4, m)
            })
            .collect(),
    };
    write_peer("batch-every-kind", 0, enc.peer_batch(&every_kind))?;
    let mut big_append = RaftMessage::new(MessageKind::Append);
    big_append.entries = (1..=6)
        .map(|i| Entry {
            index: i,
            term: 1 + i / 3,
            kind: (i % 3) as u8,
            data: format!("command-{i}").into(),
        })
        .collect();
    let mut joint = RaftMessage::new(MessageKind::Snapshot);
    joint.snapshot = Some(SnapshotChunk {
        index: 40,
        term: 3,
        conf: ConfState {
            voters: vec![1, 2, 3],
            learners: vec![5],
            voters_outgoing: vec![1, 2, 4],
            learners_next: vec![4],
            auto_leave: true,
        },
        offset: 4096,
        total_bytes: 8192,
        data: vec![7u8; 64].into(),
        done: false,
    });
    let entries_and_snapshot = PeerBatch {
        from_node: 1,
        to_node: 3,
        messages: vec![(5, big_append), (6, joint)],
    };
    write_peer(
        "batch-entries-snapshot",
        0,
        enc.peer_batch(&entries_and_snapshot),
    )?;
    write_peer(
        "batch-entries-snapshot-tight",
        1,
        enc.peer_batch(&entries_and_snapshot),
    )?;
    write_peer("batch-empty", 0, enc.peer_batch(&PeerBatch::default()))?;
    println!("wrote seeds to {dir} and {peer_dir}");
    Ok(())
}
