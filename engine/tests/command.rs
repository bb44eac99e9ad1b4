//! The command encoding: round trips, limits, typed errors with offsets, no panics.

mod common;

use bytes::Bytes;
use engine::command::{
    Command, CommandOp, Compare, CompareOp, CompareTarget, DecodeError, InvalidCommand, Limited,
    Limits, Put, Txn, TxnOp,
};
use proptest::prelude::*;

fn txn_example() -> Command {
    Command {
        session: Some(engine::command::Session {
            client_id: 0xfeed,
            sequence: 9,
            first_unacked: 4,
        }),
        op: CommandOp::Txn(Txn {
            compares: vec![
                Compare {
                    key: Bytes::from_static(b"k"),
                    cmp: CompareOp::Equal,
                    target: CompareTarget::Value(Bytes::from_static(b"v")),
                },
                Compare {
                    key: Bytes::from_static(b"k"),
                    cmp: CompareOp::Less,
                    target: CompareTarget::ModRevision(7),
                },
                Compare {
                    key: Bytes::from_static(b"z"),
                    cmp: CompareOp::Equal,
                    target: CompareTarget::Exists(false),
                },
            ],
            success: vec![
                TxnOp::Put {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from_static(b"w"),
                    return_prev: true,
                },
                TxnOp::Get {
                    key: Bytes::from_static(b"k"),
                },
            ],
            failure: vec![TxnOp::Delete {
                key: Bytes::from_static(b"k"),
                return_prev: false,
            }],
        }),
    }
}

#[test]
fn put_layout_is_as_documented() {
    let cmd = Command {
        session: Some(engine::command::Session {
            client_id: 0x0102,
            sequence: 3,
            first_unacked: 2,
        }),
        op: CommandOp::Put(Put {
            key: Bytes::from_static(b"ab"),
            value: Bytes::from_static(b"xyz"),
            if_absent: true,
            return_prev: false,
        }),
    };
    let mut want = vec![1u8, 1, 0b011];
    want.extend_from_slice(&0x0102u64.to_le_bytes());
    want.extend_from_slice(&3u64.to_le_bytes());
    want.extend_from_slice(&2u64.to_le_bytes());
    want.extend_from_slice(&2u32.to_le_bytes());
    want.extend_from_slice(b"ab");
    want.extend_from_slice(&3u32.to_le_bytes());
    want.extend_from_slice(b"xyz");
    let enc = cmd.encode();
    assert_eq!(&enc[..], &want[..]);
    assert_eq!(cmd.encoded_len(), want.len());
    assert_eq!(Command::decode(&enc, &Limits::default()).unwrap(), cmd);
}

#[test]
fn decode_is_zero_copy() {
    let enc = Command::put("some-key", "some-value").encode();
    let cmd = Command::decode(&enc, &Limits::default()).unwrap();
    let CommandOp::Put(p) = cmd.op else {
        panic!("not a put")
    };
    let range = enc.as_ptr() as usize..enc.as_ptr() as usize + enc.len();
    assert!(range.contains(&(p.key.as_ptr() as usize)));
    assert!(range.contains(&(p.value.as_ptr() as usize)));
    assert_eq!(&p.value[..], b"some-value");
}

#[test]
fn every_strict_prefix_is_truncated() {
    let enc = txn_example().encode();
    assert_eq!(
        Command::decode(&enc, &Limits::default()).unwrap(),
        txn_example()
    );
    for len in 0..enc.len() {
        match Command::decode(&enc.slice(..len), &Limits::default()) {
            Err(DecodeError::Truncated {
                offset, available, ..
            }) => {
                assert!(offset <= len, "offset {offset} past the input {len}");
                assert_eq!(offset + available, len);
            }
            other => panic!("prefix {len}: expected Truncated, got {other:?}"),
        }
    }
}

#[test]
fn trailing_bytes_are_rejected() {
    let mut v = Command::delete("k").encode().to_vec();
    let len = v.len();
    v.extend_from_slice(b"!!");
    assert_eq!(
        Command::decode(&Bytes::from(v), &Limits::default()),
        Err(DecodeError::TrailingBytes {
            offset: len,
            len: 2
        })
    );
}

#[test]
fn bad_version_kind_flags_sequence_and_key() {
    let good = Command::put("k", "v")
        .with_session(1, 1, 1)
        .encode()
        .to_vec();
    let with = |at: usize, b: u8| {
        let mut v = good.clone();
        v[at] = b;
        Command::decode(&Bytes::from(v), &Limits::default())
    };
    assert_eq!(
        with(0, 2),
        Err(DecodeError::UnsupportedVersion {
            offset: 0,
            version: 2
        })
    );
    assert_eq!(
        with(1, 9),
        Err(DecodeError::UnknownTag {
            offset: 1,
            what: "command kind",
            tag: 9
        })
    );
    assert_eq!(
        with(2, 0b1000_0001),
        Err(DecodeError::UnknownFlags {
            offset: 2,
            what: "command",
            flags: 0b1000_0000
        })
    );
    // Sequence is the u64 at 11..19: make it 0.
    let mut v = good.clone();
    v[11] = 0;
    assert_eq!(
        Command::decode(&Bytes::from(v), &Limits::default()),
        Err(DecodeError::ZeroSequence { offset: 11 })
    );
    // first_unacked is the u64 at 19..27: above the sequence (1) is refused.
    let mut v = good.clone();
    v[19] = 2;
    assert_eq!(
        Command::decode(&Bytes::from(v), &Limits::default()),
        Err(DecodeError::FirstUnackedAboveSequence {
            offset: 19,
            first_unacked: 2,
            sequence: 1
        })
    );
    // 0 acknowledges nothing and is accepted.
    let mut v = good.clone();
    v[19] = 0;
    assert_eq!(
        Command::decode(&Bytes::from(v), &Limits::default())
            .unwrap()
            .session
            .unwrap()
            .first_unacked,
        0
    );
    // IF_ABSENT on a delete is undefined.
    let mut v = Command::delete("k").encode().to_vec();
    v[2] = 0b010;
    assert!(matches!(
        Command::decode(&Bytes::from(v), &Limits::default()),
        Err(DecodeError::UnknownFlags { offset: 2, .. })
    ));
    let empty = Command::put("", "v").encode();
    assert_eq!(
        Command::decode(&empty, &Limits::default()),
        Err(DecodeError::EmptyKey { offset: 3 })
    );
    assert_eq!(
        Command::put("", "v").validate(&Limits::default()),
        Err(InvalidCommand::EmptyKey)
    );
    assert_eq!(
        Command::put("k", "v")
            .with_session(1, 0, 0)
            .validate(&Limits::default()),
        Err(InvalidCommand::ZeroSequence)
    );
    assert_eq!(
        Command::put("k", "v")
            .with_session(1, 5, 6)
            .validate(&Limits::default()),
        Err(InvalidCommand::FirstUnackedAboveSequence {
            first_unacked: 6,
            sequence: 5
        })
    );
}

#[test]
fn limits_give_too_large_with_the_limit() {
    let limits = Limits::default();
    assert_eq!(limits.key_bytes_max, 8 * 1024);
    assert_eq!(limits.value_bytes_max, 1024 * 1024);
    let big_key = Command::put(vec![b'k'; 8 * 1024 + 1], "v");
    assert_eq!(
        big_key.validate(&limits),
        Err(InvalidCommand::TooLarge {
            what: Limited::Key,
            len: 8 * 1024 + 1,
            max: 8 * 1024
        })
    );
    assert_eq!(
        Command::decode(&big_key.encode(), &limits),
        Err(DecodeError::TooLarge {
            offset: 3,
            what: Limited::Key,
            len: 8 * 1024 + 1,
            max: 8 * 1024
        })
    );
    let at_limit = Command::put(vec![b'k'; 8 * 1024], vec![0u8; 1024 * 1024]);
    assert_eq!(at_limit.validate(&limits), Ok(()));
    assert!(Command::decode(&at_limit.encode(), &limits).is_ok());
    let big_value = Command::put("k", vec![0u8; 1024 * 1024 + 1]);
    assert!(matches!(
        Command::decode(&big_value.encode(), &limits),
        Err(DecodeError::TooLarge {
            offset: 8,
            what: Limited::Value,
            ..
        })
    ));
    // The format limits accept it (committed entries are judged only by the format).
    assert!(Command::decode(&big_value.encode(), &Limits::FORMAT).is_ok());

    let small = Limits {
        txn_ops_max: 1,
        txn_compares_max: 2,
        ..Limits::default()
    };
    let t = txn_example();
    assert!(matches!(
        t.validate(&small),
        Err(InvalidCommand::TooLarge {
            what: Limited::TxnCompares,
            len: 3,
            max: 2
        })
    ));
    assert!(matches!(
        Command::decode(&t.encode(), &small),
        Err(DecodeError::TooLarge {
            // 3 header bytes + a 24-byte session.
            offset: 27,
            what: Limited::TxnCompares,
            ..
        })
    ));
}

#[test]
fn huge_counts_do_not_allocate_or_panic() {
    // A txn claiming u32::MAX compares in a 23-byte input.
    let mut v = vec![1u8, 3, 0];
    v.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Command::decode(&Bytes::from(v), &Limits::FORMAT),
        Err(DecodeError::Truncated { offset: 7, .. })
    ));
    // A put claiming a 4 GiB key.
    let mut v = vec![1u8, 1, 0];
    v.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Command::decode(&Bytes::from(v), &Limits::FORMAT),
        Err(DecodeError::Truncated { offset: 7, .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(2048)))]

    #[test]
    fn round_trip(cmd in common::command()) {
        let enc = cmd.encode();
        prop_assert_eq!(enc.len(), cmd.encoded_len());
        prop_assert_eq!(cmd.validate(&Limits::default()), Ok(()));
        prop_assert_eq!(Command::decode(&enc, &Limits::default()), Ok(cmd));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..64)) {
        let _ = Command::decode(&Bytes::from(data.clone()), &Limits::default());
        let _ = Command::decode(&Bytes::from(data), &Limits::FORMAT);
    }

    /// Valid encodings with a few bytes changed, cut or extended: decode returns a value or a
    /// typed error, never panics; an accepted mutation re-encodes to the same bytes.
    #[test]
    fn mutated_encodings_never_panic(
        cmd in common::command(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut v = cmd.encode().to_vec();
        for (at, b) in edits {
            let i = at.index(v.len());
            v[i] = b;
        }
        if do_cut {
            v.truncate(cut.index(v.len() + 1));
        }
        let data = Bytes::from(v);
        if let Ok(decoded) = Command::decode(&data, &Limits::default()) {
            prop_assert_eq!(decoded.encode(), data);
        }
    }
}
