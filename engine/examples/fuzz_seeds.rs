//! Writes seed corpora for the fuzz targets of `engine/fuzz`, in each target's input format
//! (`engine::fuzzing`): snapshots of a state machine with key-values, sessions with cached
//! results of every kind and a history; meta maps of versions 1 to 4; commands of every kind.
//!
//! Usage: `cargo run -p engine --example fuzz_seeds -- engine/fuzz/corpus` (writes
//! `snapshot/`, `meta_map/` and `command/` under it)

use engine::command::{Command, CommandOp, Compare, CompareOp, CompareTarget, Txn, TxnOp};
use engine::config::NodeConfig;
use engine::meta::MetaMap;
use engine::snapshot;
use engine::state_machine::{Config, StateMachine};

fn commands() -> Vec<Command> {
    let txn = |compares, success, failure| Command {
        session: None,
        op: CommandOp::Txn(Txn {
            compares,
            success,
            failure,
        }),
    };
    let mut put_if_absent = Command::put("k1", "first");
    if let CommandOp::Put(p) = &mut put_if_absent.op {
        p.if_absent = true;
        p.return_prev = true;
    }
    vec![
        Command::put("k1", "v1").with_session(7, 1, 1),
        Command::put("k2", "v2").with_session(7, 2, 1),
        Command::put("k1", "v1b").with_session(8, 1, 1),
        put_if_absent.with_session(8, 2, 2),
        Command::delete("k2").with_session(7, 3, 2),
        txn(
            vec![
                Compare {
                    key: "k1".into(),
                    cmp: CompareOp::Equal,
                    target: CompareTarget::Value("v1b".into()),
                },
                Compare {
                    key: "k1".into(),
                    cmp: CompareOp::Greater,
                    target: CompareTarget::Version(1),
                },
                Compare {
                    key: "k2".into(),
                    cmp: CompareOp::NotEqual,
                    target: CompareTarget::Exists(true),
                },
            ],
            vec![
                TxnOp::Put {
                    key: "k3".into(),
                    value: "v3".into(),
                    return_prev: true,
                },
                TxnOp::Get { key: "k1".into() },
                TxnOp::Delete {
                    key: "k1".into(),
                    return_prev: true,
                },
            ],
            vec![TxnOp::Get { key: "k2".into() }],
        )
        .with_session(9, 1, 1),
        txn(
            vec![
                Compare {
                    key: "k3".into(),
                    cmp: CompareOp::Less,
                    target: CompareTarget::CreateRevision(2),
                },
                Compare {
                    key: "k3".into(),
                    cmp: CompareOp::Less,
                    target: CompareTarget::ModRevision(100),
                },
            ],
            vec![],
            vec![TxnOp::Put {
                key: "k4".into(),
                value: "v4".into(),
                return_prev: false,
            }],
        )
        .with_session(9, 2, 1),
        Command::put("k3", "v3b"),
        Command::put("k3", "v3c"),
    ]
}

fn node_config(shards: usize, partitions: u32) -> NodeConfig {
    NodeConfig::for_tests(3, shards, partitions)
}

fn main() -> std::io::Result<()> {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "engine/fuzz/corpus".into());
    let write = |target: &str, name: &str, mode: u8, bytes: &[u8]| {
        let dir = format!("{root}/{target}");
        std::fs::create_dir_all(&dir)?;
        let mut v = vec![mode];
        v.extend_from_slice(bytes);
        std::fs::write(format!("{dir}/{name}"), v)
    };

    // command: bit 0 clear = format limits, set = default limits.
    for (i, cmd) in commands().iter().enumerate() {
        write("command", &format!("cmd-{i}"), (i % 2) as u8, &cmd.encode())?;
    }

    // snapshot: bit 0 set = fix lengths and checksums (valid files need no fixing: both kinds).
    for history in [0, 100] {
        let mut sm = StateMachine::new(Config {
            history_revisions: history,
            ..Config::new(3)
        });
        let empty = snapshot::encode(&sm, b"");
        write("snapshot", &format!("empty-h{history}"), 0, &empty)?;
        for (i, cmd) in commands().iter().enumerate() {
            let _ = sm.apply(i as u64 + 1, 2, cmd);
        }
        sm.advance_applied(20, 3).expect("after the commands");
        let full = snapshot::encode(&sm, b"membership: voters 1 2 3");
        write("snapshot", &format!("full-h{history}"), 0, &full)?;
        write("snapshot", &format!("full-h{history}-fixed"), 1, &full)?;
    }

    // meta_map: bit 0 set = fix the checksum.
    let mut map = MetaMap::initial(&node_config(2, 8));
    map.backup_id = Some(0x4d70_1bc9_88eb_8b96);
    write("meta_map", "v4", 0, &map.encode())?;
    write("meta_map", "v4-fixed", 1, &map.encode())?;
    map.backup_id = None;
    write("meta_map", "v3", 0, &map.encode())?;
    write("meta_map", "v3-fixed", 1, &map.encode())?;
    map.history_revisions = None;
    map.history_bytes_max = 0;
    write("meta_map", "v2", 0, &map.encode())?;
    // Version 1: version 2 without the session settings.
    let v2 = map.encode();
    let mut v1 = v2[..v2.len() - 4 - 16].to_vec();
    v1[4] = 1;
    v1.extend_from_slice(&crc32c::crc32c(&v1).to_le_bytes());
    assert!(MetaMap::decode(&v1).is_ok(), "the version-1 seed decodes");
    write("meta_map", "v1", 0, &v1)?;
    let small = MetaMap::initial(&node_config(1, 1));
    write("meta_map", "v4-one-partition", 1, &small.encode())?;
    println!("wrote seeds under {root}");
    Ok(())
}
