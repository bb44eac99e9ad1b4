//! Round-trip property tests: every message kind survives encode -> frame -> decode unchanged.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use proptest::prelude::*;
use wire::*;

fn through_frame(kind: FrameKind, body: &[u8]) -> Frame {
    let limits = Limits::default();
    let mut out = BytesMut::new();
    encode_frame(&mut out, kind, 42, body, &limits).unwrap();
    let frame = FrameDecoder::new(limits).decode(&mut out).unwrap().unwrap();
    assert!(out.is_empty());
    assert_eq!(frame.request_id, 42);
    frame
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn requests_round_trip(reqs in proptest::collection::vec(request(), 0..8)) {
        let mut enc = BodyEncoder::new();
        let frame = through_frame(FrameKind::ClientRequests, enc.requests(&reqs));
        prop_assert_eq!(decode_body(&frame, &Limits::default()).unwrap(), Body::Requests(reqs));
    }

    #[test]
    fn responses_round_trip(batch in response_batch()) {
        let mut enc = BodyEncoder::new();
        let frame = through_frame(FrameKind::ClientResponses, enc.responses(&batch));
        prop_assert_eq!(decode_body(&frame, &Limits::default()).unwrap(), Body::Responses(batch));
    }

    /// The size bounds senders pack frames by (`wire::size`) are never below the encoding.
    #[test]
    fn encoded_size_bounds_hold(reqs in proptest::collection::vec(request(), 0..8), batch in response_batch()) {
        let mut enc = BodyEncoder::new();
        let n = enc.requests(&reqs).len();
        prop_assert!(n <= requests_encoded_bytes_max(&reqs), "{} > bound", n);
        let n = enc.responses(&batch).len();
        prop_assert!(n <= batch.encoded_bytes_max(), "{} > bound", n);
    }

    #[test]
    fn peer_batches_round_trip(batch in peer_batch()) {
        let mut enc = BodyEncoder::new();
        let frame = through_frame(FrameKind::PeerMessages, enc.peer_batch(&batch));
        prop_assert_eq!(decode_body(&frame, &Limits::default()).unwrap(), Body::Peer(batch));
    }

    #[test]
    fn decoded_values_share_the_frame_buffer(value in bytes(64).prop_filter("non-empty", |b| !b.is_empty())) {
        let req = Request { id: 1, session: 0, seq: 0, map_epoch: 0, first_unacked: 0,
            op: Op::Put(Put { key: Bytes::from_static(b"k"), value, ..Put::default() }) };
        let mut enc = BodyEncoder::new();
        let body = Bytes::copy_from_slice(enc.requests(std::slice::from_ref(&req)));
        let got = decode_requests(&body, &Limits::default()).unwrap();
        let Op::Put(p) = &got[0].op else { panic!("not a put") };
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        prop_assert!(range.contains(&(p.value.as_ptr() as usize)), "value was copied");
    }
}

/// One example of every kind, checked explicitly so a missing arm shows by name.
#[test]
fn every_op_and_peer_kind_round_trips() {
    let ops = vec![
        Op::Get {
            key: "a".into(),
            consistency: Consistency::Follower,
        },
        Op::Put(Put {
            key: "a".into(),
            value: "v".into(),
            if_absent: true,
            return_previous: true,
        }),
        Op::Delete {
            key: "a".into(),
            return_previous: true,
        },
        Op::Txn(Txn {
            compares: vec![Compare {
                key: "a".into(),
                op: CompareOp::Greater,
                target: CompareTarget::ModRevision(3),
            }],
            success: vec![TxnOp::Get { key: "a".into() }],
            failure: vec![TxnOp::Delete {
                key: "a".into(),
                return_previous: false,
            }],
        }),
        Op::Range(Range {
            partition: 3,
            start: "a".into(),
            limit: 10,
            after: "b".into(),
            ..Range::default()
        }),
        Op::Status,
        Op::ClusterMap,
        Op::TransferLeader {
            partition: 4,
            to_node: 2,
        },
        Op::Backup {
            partition: 3,
            index: 77,
            offset: 65536,
        },
        Op::Events {
            after: 12,
            limit: 100,
        },
    ];
    let reqs: Vec<Request> = ops
        .into_iter()
        .enumerate()
        .map(|(i, op)| Request {
            id: i as u64,
            session: 9,
            seq: 1,
            map_epoch: 2,
            op,
            first_unacked: 1,
        })
        .collect();
    let mut enc = BodyEncoder::new();
    let body = Bytes::copy_from_slice(enc.requests(&reqs));
    assert_eq!(decode_requests(&body, &Limits::default()).unwrap(), reqs);

    let resps = ResponseBatch {
        frame_error: None,
        responses: vec![Response {
            id: 7,
            header: ResponseHeader::default(),
            outcome: Ok(Outcome::TransferLeader(TransferLeaderResult {
                partition: 4,
                leader_node: 2,
                term: 9,
            })),
        }],
    };
    let body = Bytes::copy_from_slice(enc.responses(&resps));
    assert_eq!(decode_responses(&body, &Limits::default()).unwrap(), resps);

    let events = ResponseBatch {
        frame_error: None,
        responses: vec![Response {
            id: 9,
            header: ResponseHeader::default(),
            outcome: Ok(Outcome::Events(wire::EventsResult {
                events: vec![wire::Event {
                    seq: 13,
                    unix_ms: 1_795_849_881_806,
                    node: 2,
                    shard: 1,
                    partition: 4,
                    kind: "leader_elected".into(),
                    detail: "term 5".into(),
                }],
                oldest: 1,
                newest: 13,
                boot_id: 1_795_849_880_000_000_123,
            })),
        }],
    };
    let body = Bytes::copy_from_slice(enc.responses(&events));
    assert_eq!(decode_responses(&body, &Limits::default()).unwrap(), events);

    // A backup chunk round-trips; one that claims to end past its copy is refused.
    let chunk = |offset: u64, total_bytes: u64| ResponseBatch {
        frame_error: None,
        responses: vec![Response {
            id: 8,
            header: ResponseHeader::default(),
            outcome: Ok(Outcome::Backup(wire::BackupChunk {
                partition: 3,
                index: 77,
                term: 2,
                revision: 70,
                total_bytes,
                offset,
                data: Bytes::from_static(b"snapshot bytes"),
            })),
        }],
    };
    let ok = chunk(10, 24);
    let body = Bytes::copy_from_slice(enc.responses(&ok));
    assert_eq!(decode_responses(&body, &Limits::default()).unwrap(), ok);
    for bad in [chunk(11, 24), chunk(u64::MAX - 3, u64::MAX)] {
        let body = Bytes::copy_from_slice(enc.responses(&bad));
        assert!(matches!(
            decode_responses(&body, &Limits::default()),
            Err(wire::DecodeError::Invalid(_))
        ));
    }

    for kind in MessageKind::ALL {
        let mut m = RaftMessage::new(kind);
        m.term = 5;
        let batch = PeerBatch {
            from_node: 1,
            to_node: 2,
            messages: vec![(77, m)],
        };
        let body = Bytes::copy_from_slice(enc.peer_batch(&batch));
        assert_eq!(decode_peer_batch(&body, &Limits::default()).unwrap(), batch);
    }
}

#[test]
fn limits_are_enforced_on_decode() {
    let limits = Limits {
        key_bytes_max: 4,
        value_bytes_max: 8,
        batch_items_max: 2,
        ..Limits::default()
    };
    let mut enc = BodyEncoder::new();
    let req = |op| Request {
        id: 1,
        session: 0,
        seq: 0,
        map_epoch: 0,
        op,
        first_unacked: 0,
    };
    let long_key = req(Op::Get {
        key: "12345".into(),
        consistency: Consistency::Stale,
    });
    let body = Bytes::copy_from_slice(enc.requests(&[long_key]));
    assert_eq!(
        decode_requests(&body, &limits),
        Err(DecodeError::KeyTooLarge { len: 5, limit: 4 })
    );

    let long_value = req(Op::Put(Put {
        key: "k".into(),
        value: "123456789".into(),
        ..Put::default()
    }));
    let body = Bytes::copy_from_slice(enc.requests(&[long_value]));
    assert_eq!(
        decode_requests(&body, &limits),
        Err(DecodeError::ValueTooLarge { len: 9, limit: 8 })
    );

    let ok = req(Op::Status);
    let body = Bytes::copy_from_slice(enc.requests(&[ok.clone(), ok.clone(), ok]));
    assert_eq!(
        decode_requests(&body, &limits),
        Err(DecodeError::TooManyItems { len: 3, limit: 2 })
    );

    // Depth limit: a response with a key-value inside a result inside a response is 4 deep.
    let deep = ResponseBatch {
        frame_error: None,
        responses: vec![Response {
            id: 1,
            header: ResponseHeader::default(),
            outcome: Ok(Outcome::Get(Some(KeyValue {
                key: "k".into(),
                ..KeyValue::default()
            }))),
        }],
    };
    let body = Bytes::copy_from_slice(enc.responses(&deep));
    assert!(decode_responses(&body, &Limits::default()).is_ok());
    let shallow = Limits {
        verify_depth_max: 3,
        ..Limits::default()
    };
    assert!(matches!(
        decode_responses(&body, &shallow),
        Err(DecodeError::InvalidBody(_))
    ));
    let few_tables = Limits {
        verify_tables_max: 2,
        ..Limits::default()
    };
    assert!(matches!(
        decode_responses(&body, &few_tables),
        Err(DecodeError::InvalidBody(_))
    ));
}

#[test]
fn bodies_of_the_wrong_kind_are_refused_not_misread() {
    let mut enc = BodyEncoder::new();
    let batch = PeerBatch {
        from_node: 1,
        to_node: 2,
        messages: vec![(1, RaftMessage::new(MessageKind::Heartbeat))],
    };
    let body = Bytes::copy_from_slice(enc.peer_batch(&batch));
    // A peer body read as a request batch: either refused or read as something with no
    // requests, never a panic. Here its first field (from_node = 1) is not a vector offset.
    let r = decode_requests(&body, &Limits::default());
    assert!(r.is_err() || r.as_ref().unwrap().is_empty(), "{r:?}");
}
