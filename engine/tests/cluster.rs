//! Real 3-node clusters in one process: real sockets, real WAL files with fdatasync, the real
//! wire client. Each node is started with `engine::server::start` and stopped with
//! `ServerHandle::stop`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use engine::cli::local::free_port_block;
use engine::config::{NodeConfig, Tuning};
use engine::server::{self, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::client::{Client, ClientConfig, RangeOptions};
use wire::{
    BodyEncoder, Consistency, FrameDecoder, FrameKind, Limits, Op, Outcome, Request, Response,
    ServerError,
};

const SHARDS: usize = 2;
const PARTITIONS: u32 = 8;

struct Cluster {
    configs: Vec<NodeConfig>,
    handles: BTreeMap<u64, ServerHandle>,
}

impl Cluster {
    fn new(name: &str, tuning: Tuning) -> Cluster {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("cluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let bases: Vec<(u16, u16)> = (0..3)
            .map(|_| {
                (
                    free_port_block(SHARDS as u16),
                    free_port_block(SHARDS as u16),
                )
            })
            .collect();
        let peers: BTreeMap<u64, SocketAddr> = bases
            .iter()
            .enumerate()
            .map(|(i, (_, p))| (i as u64 + 1, SocketAddr::from(([127, 0, 0, 1], *p))))
            .collect();
        let configs = bases
            .iter()
            .enumerate()
            .map(|(i, (c, p))| NodeConfig {
                id: i as u64 + 1,
                data_dir: root.join(format!("node-{}", i + 1)),
                client_addr: SocketAddr::from(([127, 0, 0, 1], *c)),
                peer_addr: SocketAddr::from(([127, 0, 0, 1], *p)),
                peers: peers.clone(),
                shards: SHARDS,
                partitions: PARTITIONS,
                replicas: 3,
                pin: false,
                metrics_addr: None,
                tuning: tuning.clone(),
                tls: None,
            })
            .collect();
        let mut c = Cluster {
            configs,
            handles: BTreeMap::new(),
        };
        for id in 1..=3 {
            c.start(id);
        }
        c.wait_for_map();
        c
    }

    /// Waits until every running node has applied the cluster map from the meta group (a
    /// fresh cluster commits it once the meta group has a leader).
    fn wait_for_map(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.handles.values().any(|h| h.shared().map_epoch() == 0) {
            assert!(Instant::now() < deadline, "no cluster map after 20 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn start(&mut self, id: u64) {
        let cfg = self.configs[id as usize - 1].clone();
        let h = server::start(cfg).expect("node starts");
        self.handles.insert(id, h);
    }

    fn stop(&mut self, id: u64) {
        if let Some(h) = self.handles.remove(&id) {
            h.stop().expect("node stops cleanly");
        }
    }

    fn seeds(&self) -> Vec<String> {
        self.configs
            .iter()
            .map(|c| c.client_addr.to_string())
            .collect()
    }

    fn endpoint(&self, node: u64, partition: u64) -> String {
        let c = &self.configs[node as usize - 1];
        c.shard_client_addr(engine::meta::shard_of_partition(c, partition))
            .to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 1..=3 {
            self.stop(id);
        }
    }
}

fn tuning() -> Tuning {
    Tuning {
        tick_ms: 10,
        heartbeat_ticks: 3,
        election_ticks_min: 15,
        wal_segment_bytes: 4 << 20,
        ..Tuning::default()
    }
}

async fn client(c: &Cluster) -> Client {
    let mut cfg = ClientConfig::new(c.seeds());
    cfg.request_timeout = Duration::from_secs(10);
    Client::connect(cfg).await.expect("client connects")
}

/// A request without session or map epoch.
fn request(id: u64, op: Op) -> Request {
    Request {
        id,
        session: 0,
        seq: 0,
        map_epoch: 0,
        op,
        first_unacked: 0,
    }
}

/// A raw client connection to one shard: request frames out, every response in (lets a test
/// pick the replica and see each answer, pipelined ones included).
struct RawConn {
    stream: tokio::net::TcpStream,
    limits: Limits,
    dec: FrameDecoder,
    buf: BytesMut,
}

impl RawConn {
    async fn connect(endpoint: impl tokio::net::ToSocketAddrs) -> RawConn {
        let limits = Limits::default();
        RawConn {
            stream: tokio::net::TcpStream::connect(endpoint).await.unwrap(),
            limits,
            dec: FrameDecoder::new(limits),
            buf: BytesMut::new(),
        }
    }

    /// Sends `requests` in one frame.
    async fn send(&mut self, requests: &[Request]) {
        let mut out = BytesMut::new();
        BodyEncoder::new()
            .request_frame(&mut out, 1, requests, &self.limits)
            .unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next `n` responses, in arrival order (each frame must be a response frame without
    /// a frame-level error).
    async fn recv(&mut self, n: usize) -> Vec<Response> {
        let mut got = Vec::new();
        while got.len() < n {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                assert_eq!(f.kind, FrameKind::ClientResponses);
                let b = wire::decode_responses(&f.body, &self.limits).unwrap();
                assert!(b.frame_error.is_none(), "{:?}", b.frame_error);
                got.extend(b.responses);
                continue;
            }
            let read = self.stream.read_buf(&mut self.buf).await.unwrap();
            assert!(read > 0, "server closed");
        }
        got
    }
}

/// One request on a fresh connection to `endpoint` (lets a test talk to a chosen replica).
async fn call(endpoint: &str, op: Op) -> Response {
    let mut conn = RawConn::connect(endpoint).await;
    conn.send(&[request(7, op)]).await;
    conn.recv(1).await.pop().unwrap()
}

fn get_op(key: &str, consistency: Consistency) -> Op {
    Op::Get {
        key: Bytes::copy_from_slice(key.as_bytes()),
        consistency,
    }
}

/// A follower read at `node` (retrying while the replica has no leader yet).
async fn follower_get(
    c: &Cluster,
    node: u64,
    key: &str,
    consistency: Consistency,
) -> Option<Bytes> {
    let map_partition = {
        let cl = client(c).await;
        cl.cluster_map()
            .partition_of_key(key.as_bytes())
            .unwrap()
            .id
    };
    let endpoint = c.endpoint(node, map_partition);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(&endpoint, get_op(key, consistency)).await;
        match r.outcome {
            Ok(Outcome::Get(kv)) => return kv.map(|kv| kv.value),
            Err(ServerError::Unavailable { .. } | ServerError::Timeout)
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("follower read at node {node}: {other:?}"),
        }
    }
}

/// Replicas of `key`'s partition that do not lead it (per the leader's status).
async fn followers_of(c: &Cluster, cl: &Client, key: &str) -> Vec<u64> {
    let (p, leader) = leader_of(cl, key).await;
    let cfg = &c.configs[0];
    engine::meta::initial_replicas(cfg, p)
        .into_iter()
        .filter(|&n| n != leader)
        .collect()
}

/// `key`'s partition and the node that leads it (per the leader's status; waits for one).
async fn leader_of(cl: &Client, key: &str) -> (u64, u64) {
    let p = cl
        .cluster_map()
        .partition_of_key(key.as_bytes())
        .unwrap()
        .id;
    loop {
        let st = cl.status().await.unwrap();
        if let Some(ps) = st
            .iter()
            .flat_map(|(_, s)| &s.partitions)
            .find(|ps| ps.partition == p && ps.is_leader)
        {
            return (p, ps.leader_node);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn key(tag: u32, k: u32) -> String {
    format!("{{t{tag}}}key-{k:04}")
}

#[test]
fn three_nodes_replicate_serve_all_read_modes_and_survive_restart() {
    init_logs();
    let mut cluster = Cluster::new("basic", tuning());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // One client (one session) for everything: its sequence numbers are global, so every
        // partition sees gaps, and pipelined writes arrive out of order.
        let mut written = BTreeMap::new();
        let cl = client(&cluster).await;
        let pipelined = (0..300u32).map(|k| {
            let cl = cl.clone();
            tokio::spawn(async move { cl.put(format!("p-{k}"), format!("pv-{k}")).await })
        });
        for (k, task) in pipelined.collect::<Vec<_>>().into_iter().enumerate() {
            let r = task.await.unwrap().expect("pipelined put");
            assert!(r.written);
            written.insert(format!("p-{k}"), format!("pv-{k}"));
        }
        for tag in 0..6u32 {
            for k in 0..20u32 {
                let v = format!("v-{tag}-{k}");
                let r = cl.put(key(tag, k), v.clone()).await.unwrap();
                assert!(r.written);
                assert!(r.revision > 0);
                written.insert(key(tag, k), v);
            }
            // Overwrite, delete, put-if-absent, cas, txn.
            let r = cl.put(key(tag, 0), "again").await.unwrap();
            assert!(r.written);
            written.insert(key(tag, 0), "again".into());
            let d = cl.delete(key(tag, 1)).await.unwrap();
            assert!(d.deleted);
            written.remove(&key(tag, 1));
            let pia = cl.put_if_absent(key(tag, 2), "nope").await.unwrap();
            assert!(!pia.written);
            let ok = cl
                .cas(key(tag, 3), Some(Bytes::from(format!("v-{tag}-3"))), "swapped")
                .await
                .unwrap();
            assert!(ok);
            written.insert(key(tag, 3), "swapped".into());
            let bad = cl
                .cas(key(tag, 4), Some(Bytes::from_static(b"wrong")), "x")
                .await
                .unwrap();
            assert!(!bad);
        }
        let cl = client(&cluster).await;
        for (k, v) in &written {
            let got = cl.get(k.clone()).await.unwrap().expect("key present");
            assert_eq!(got.value, v.as_bytes(), "{k}");
        }
        assert!(cl.get(key(0, 1)).await.unwrap().is_none());

        // Follower reads (ReadIndex from the leader, served by the follower) and stale reads
        // at both followers of a partition.
        let k = key(2, 5);
        let followers = followers_of(&cluster, &cl, &k).await;
        assert_eq!(followers.len(), 2);
        for &f in &followers {
            let v = follower_get(&cluster, f, &k, Consistency::Follower).await;
            assert_eq!(v.as_deref(), Some(written[&k].as_bytes()));
            // Linearizable reads at a follower are refused with a leader hint.
            let r = call(
                &cluster.endpoint(f, cl.cluster_map().partition_of_key(k.as_bytes()).unwrap().id),
                get_op(&k, Consistency::Linearizable),
            )
            .await;
            assert!(
                matches!(r.outcome, Err(ServerError::NotLeader { leader_node, .. }) if leader_node != 0),
                "{r:?}"
            );
        }
        // Stale reads: the follower has applied the write once it answered the follower read
        // above, so the stale read sees it too.
        for &f in &followers {
            let v = follower_get(&cluster, f, &k, Consistency::Stale).await;
            assert_eq!(v.as_deref(), Some(written[&k].as_bytes()));
        }

        // Range across partitions, paged.
        let mut seen = Vec::new();
        let mut after = Bytes::new();
        loop {
            let page = cl
                .range(RangeOptions {
                    limit: 37,
                    after: after.clone(),
                    ..RangeOptions::default()
                })
                .await
                .unwrap();
            seen.extend(page.kvs.iter().map(|kv| {
                (
                    String::from_utf8(kv.key.to_vec()).unwrap(),
                    String::from_utf8(kv.value.to_vec()).unwrap(),
                )
            }));
            match page.next {
                Some(n) => after = n,
                None => break,
            }
        }
        let expect: Vec<(String, String)> =
            written.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(seen, expect);

        // Status: every shard answers for its whole node; per partition at most one leader
        // per term (Election Safety, Raft paper §5.2), and some leader is known.
        let st = cl.status().await.unwrap();
        assert_eq!(st.len(), 3 * SHARDS);
        let mut per_node = BTreeMap::new();
        for (_, s) in &st {
            per_node.insert(s.node, s.clone());
        }
        assert_eq!(per_node.len(), 3);
        for p in 1..=u64::from(PARTITIONS) {
            let rows: Vec<_> = per_node
                .values()
                .flat_map(|s| &s.partitions)
                .filter(|ps| ps.partition == p)
                .collect();
            assert_eq!(rows.len(), 3, "partition {p} has 3 replicas");
            let mut leaders: Vec<(u64, u64)> = rows
                .iter()
                .filter(|ps| ps.is_leader)
                .map(|ps| (ps.term, ps.leader_node))
                .collect();
            let n = leaders.len();
            leaders.dedup_by_key(|l| l.0);
            assert_eq!(leaders.len(), n, "partition {p}: two leaders in one term");
            assert!(rows.iter().any(|ps| ps.leader_node != 0), "partition {p}: no leader known");
            assert!(rows.iter().all(|ps| ps.applied_index <= ps.commit_index));
        }
    });

    // Restart the whole cluster: every acknowledged write is still there.
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        cluster.start(id);
    }
    rt.block_on(async {
        let cl = client(&cluster).await;
        for tag in 0..6u32 {
            let v = cl.get(key(tag, 0)).await.unwrap().expect("present");
            assert_eq!(v.value, "again");
            assert!(cl.get(key(tag, 1)).await.unwrap().is_none());
            let v = cl.get(key(tag, 3)).await.unwrap().expect("present");
            assert_eq!(v.value, "swapped");
            for k in 5..20u32 {
                let v = cl.get(key(tag, k)).await.unwrap().expect("present");
                assert_eq!(v.value, format!("v-{tag}-{k}").as_bytes());
            }
        }
        // Writes resume after the restart.
        let cl2 = client(&cluster).await;
        cl2.put(key(9, 0), "after restart").await.unwrap();
        assert_eq!(
            cl2.get(key(9, 0)).await.unwrap().unwrap().value,
            "after restart"
        );
    });
}

/// Snapshot files of `partition` in a node's shard directory: their indexes.
fn snapshot_indexes(c: &Cluster, node: u64, partition: u64) -> Vec<u64> {
    let cfg = &c.configs[node as usize - 1];
    let dir =
        server::shard_dir(cfg, engine::meta::shard_of_partition(cfg, partition)).join("snapshots");
    let mut out: Vec<u64> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    engine::snapshot::parse_file_name(e.file_name().to_str()?)
                        .filter(|(p, _, _)| *p == partition)
                        .map(|(_, i, _)| i)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

#[test]
fn lagging_follower_catches_up_by_snapshot_and_cluster_recovers_from_snapshots() {
    init_logs();
    let mut cluster = Cluster::new(
        "snap",
        Tuning {
            snapshot_log_bytes: 16 << 10,
            ..tuning()
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let value = |k: u32| format!("{k:06}-{}", "x".repeat(200));
    let (partition, lagging, applied_before) = rt.block_on(async {
        let cl = client(&cluster).await;
        cl.put(key(1, 0), value(0)).await.unwrap();
        let followers = followers_of(&cluster, &cl, &key(1, 0)).await;
        let p = cl
            .cluster_map()
            .partition_of_key(key(1, 0).as_bytes())
            .unwrap()
            .id;
        let f = followers[0];
        // The follower has the first write applied (follower read), then goes down.
        assert_eq!(
            follower_get(&cluster, f, &key(1, 0), Consistency::Follower)
                .await
                .as_deref(),
            Some(value(0).as_bytes())
        );
        let st = cl.status().await.unwrap();
        let applied = st
            .iter()
            .filter(|(_, s)| s.node == f)
            .flat_map(|(_, s)| &s.partitions)
            .find(|ps| ps.partition == p)
            .unwrap()
            .applied_index;
        (p, f, applied)
    });
    cluster.stop(lagging);
    rt.block_on(async {
        let cl = client(&cluster).await;
        for k in 1..400u32 {
            cl.put(key(1, k), value(k)).await.unwrap();
        }
    });
    // The leader snapshotted and compacted its log past what the stopped follower has.
    let leader_snaps: Vec<u64> = (1..=3u64)
        .filter(|&n| n != lagging)
        .flat_map(|n| snapshot_indexes(&cluster, n, partition))
        .collect();
    assert!(
        leader_snaps.iter().any(|&i| i > applied_before + 1),
        "no snapshot past {applied_before}: {leader_snaps:?}"
    );
    cluster.start(lagging);
    rt.block_on(async {
        // The restarted follower serves follower reads with the latest data: the entries it
        // lacked are compacted away on the others, so it got them through a snapshot.
        let v = follower_get(&cluster, lagging, &key(1, 399), Consistency::Follower).await;
        assert_eq!(v.as_deref(), Some(value(399).as_bytes()));
        let v = follower_get(&cluster, lagging, &key(1, 17), Consistency::Stale).await;
        assert_eq!(v.as_deref(), Some(value(17).as_bytes()));
    });
    let installed = snapshot_indexes(&cluster, lagging, partition);
    assert!(
        installed.iter().any(|&i| i > applied_before + 1),
        "follower has no snapshot past {applied_before}: {installed:?}"
    );
    // Whole-cluster restart: recovery from snapshot files plus the WAL after them.
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        cluster.start(id);
    }
    rt.block_on(async {
        let cl = client(&cluster).await;
        for k in 0..400u32 {
            let v = cl.get(key(1, k)).await.unwrap().expect("present");
            assert_eq!(v.value, value(k).as_bytes(), "key {k}");
        }
    });
}

#[test]
fn bad_input_on_client_and_peer_ports_gets_errors_and_the_cluster_keeps_serving() {
    init_logs();
    let cluster = Cluster::new("garbage", tuning());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cl = client(&cluster).await;
        cl.put(key(3, 0), "before").await.unwrap();
        let cfg = &cluster.configs[0];
        let limits = Limits::default();

        // 1. A well-framed body that is not a valid request batch: typed frame error, and
        //    the connection stays usable.
        let mut s = tokio::net::TcpStream::connect(cfg.client_addr)
            .await
            .unwrap();
        let mut out = BytesMut::new();
        wire::encode_frame(
            &mut out,
            FrameKind::ClientRequests,
            99,
            b"definitely not flatbuffers",
            &limits,
        )
        .unwrap();
        s.write_all(&out).await.unwrap();
        let dec = FrameDecoder::new(limits);
        let mut buf = BytesMut::new();
        let frame = loop {
            if let Some(f) = dec.decode(&mut buf).unwrap() {
                break f;
            }
            assert!(s.read_buf(&mut buf).await.unwrap() > 0);
        };
        assert_eq!(frame.request_id, 99);
        let b = wire::decode_responses(&frame.body, &limits).unwrap();
        assert!(matches!(
            b.frame_error,
            Some(ServerError::InvalidArgument { .. })
        ));
        // Same connection, a valid status request still works.
        out.clear();
        let req = Request {
            id: 5,
            session: 0,
            seq: 0,
            map_epoch: 0,
            op: Op::Status,
            first_unacked: 0,
        };
        BodyEncoder::new()
            .request_frame(&mut out, 100, &[req], &limits)
            .unwrap();
        s.write_all(&out).await.unwrap();
        let frame = loop {
            if let Some(f) = dec.decode(&mut buf).unwrap() {
                break f;
            }
            assert!(s.read_buf(&mut buf).await.unwrap() > 0);
        };
        let b = wire::decode_responses(&frame.body, &limits).unwrap();
        assert!(matches!(b.responses[0].outcome, Ok(Outcome::Status(_))));

        // 2. An oversized frame header: TooLarge under its id, then the server closes.
        let mut s = tokio::net::TcpStream::connect(cfg.client_addr)
            .await
            .unwrap();
        let mut big = BytesMut::new();
        let body = vec![0u8; 16];
        wire::encode_frame(&mut big, FrameKind::ClientRequests, 7, &body, &limits).unwrap();
        // Rewrite body_len to 64 MiB and fix the header checksum.
        big[8..12].copy_from_slice(&(64u32 << 20).to_le_bytes());
        let crc = crc32c_of(&big[..24]);
        big[24..28].copy_from_slice(&crc.to_le_bytes());
        s.write_all(&big[..32]).await.unwrap();
        let mut buf = BytesMut::new();
        let mut got = None;
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => got = Some(f),
                Ok(None) => {}
                Err(e) => panic!("{e}"),
            }
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                break;
            }
        }
        let f = got.expect("an error reply before the close");
        let b = wire::decode_responses(&f.body, &limits).unwrap();
        assert!(matches!(b.frame_error, Some(ServerError::TooLarge { .. })));

        // 3. Garbage on the client and peer ports: the server closes those connections.
        for addr in [cfg.client_addr, cfg.peer_addr] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(&[0xAB; 4096]).await.unwrap();
            let mut sink = Vec::new();
            // Ok(_) (orderly close) or Err (reset) both mean closed; only the timeout fails.
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink))
                .await
                .expect("server closes the connection");
        }
        // 4. A peer that announces another shard count is refused (closed).
        let mut s = tokio::net::TcpStream::connect(cfg.peer_addr).await.unwrap();
        let mut m = wire::RaftMessage::new(wire::MessageKind::Heartbeat);
        m.from = 2;
        m.to = 1;
        m.term = 7; // shards
        m.index = 0;
        m.context = u64::from_le_bytes(*b"CORUMHI1");
        m.entries.push(wire::Entry {
            data: Bytes::from_static(b"127.0.0.1:1"),
            ..Default::default()
        });
        let hello = wire::PeerBatch {
            from_node: 2,
            to_node: 1,
            messages: vec![(u64::MAX, m)],
        };
        let mut out = BytesMut::new();
        BodyEncoder::new()
            .peer_frame(&mut out, 0, &hello, &limits)
            .unwrap();
        s.write_all(&out).await.unwrap();
        let mut sink = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink))
            .await
            .expect("server closes a peer with another shard count")
            .ok();

        // The cluster still serves everyone else.
        cl.put(key(3, 1), "after").await.unwrap();
        assert_eq!(cl.get(key(3, 0)).await.unwrap().unwrap().value, "before");
        assert_eq!(cl.get(key(3, 1)).await.unwrap().unwrap().value, "after");
    });
}

fn crc32c_of(b: &[u8]) -> u32 {
    // The same Castagnoli CRC the frame header uses.
    let mut crc = !0u32;
    for &byte in b {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn big_key(w: u32, k: u32) -> String {
    format!("{{big}}w{w}-k{k}")
}

#[test]
fn large_values_overflowing_a_wal_batch_and_small_segments_are_durable() {
    init_logs();
    let t = Tuning {
        wal_segment_bytes: 1 << 20,
        value_bytes_max: 256 << 10,
        frame_bytes_max: 2 << 20,
        ..tuning()
    };
    let mut cluster = Cluster::new("large", t.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let value = |w: u32, k: u32| Bytes::from(vec![b'a' + (w * 7 + k) as u8 % 26; 150 << 10]);
    let connect = |seeds: Vec<String>| async move {
        let mut cfg = ClientConfig::new(seeds);
        cfg.request_timeout = Duration::from_secs(20);
        cfg.limits.frame_bytes_max = 2 << 20;
        cfg.limits.value_bytes_max = 256 << 10;
        Client::connect(cfg).await.unwrap()
    };
    rt.block_on(async {
        // 12 writers at once on one partition (one hash tag), 150 KiB each: one turn's
        // entries exceed the 1 MiB WAL batch, so the shard syncs in the middle of the turn and
        // splits the append.
        let mut tasks = Vec::new();
        for w in 0..12u32 {
            let cl = connect(cluster.seeds()).await;
            tasks.push(tokio::spawn(async move {
                for k in 0..4u32 {
                    cl.put(big_key(w, k), value(w, k)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    for id in 1..=3 {
        cluster.stop(id);
    }
    for id in 1..=3 {
        cluster.start(id);
    }
    rt.block_on(async {
        let cl = connect(cluster.seeds()).await;
        for w in 0..12u32 {
            for k in 0..4u32 {
                let got = cl.get(big_key(w, k)).await.unwrap().expect("present");
                assert_eq!(got.value, value(w, k), "writer {w} key {k}");
            }
        }
    });
}

#[test]
fn requests_over_the_connection_limit_get_busy_and_every_request_is_answered() {
    init_logs();
    let cluster = Cluster::new(
        "busy",
        Tuning {
            connection_requests_max: 4,
            ..tuning()
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = RawConn::connect(cluster.configs[0].client_addr).await;
        // One frame with 50 requests: the connection may have 4 in flight, so the server
        // accepts the first 4 and answers the other 46 with Busy at once.
        let reqs: Vec<Request> = (1..=50).map(|id| request(id, Op::Status)).collect();
        conn.send(&reqs).await;
        let mut answers = BTreeMap::new();
        for r in conn.recv(50).await {
            assert!(answers.insert(r.id, r.outcome).is_none(), "answered twice");
        }
        let busy = answers
            .values()
            .filter(|o| matches!(o, Err(ServerError::Busy)))
            .count();
        let ok = answers
            .values()
            .filter(|o| matches!(o, Ok(Outcome::Status(_))))
            .count();
        assert_eq!((ok, busy), (4, 46));
        for id in 1..=4 {
            assert!(matches!(answers[&id], Ok(Outcome::Status(_))));
        }
    });
}

/// The cluster map lives in the meta group (partition 0, a replica on every node): every node
/// serves the same map at epoch 1, Status shows the meta group with a leader, a restarted node
/// knows the map as soon as it starts (recovered from its own log), and a node restarted with
/// a different partition count is refused with the difference named.
#[test]
fn the_cluster_map_is_replicated_in_the_meta_group() {
    init_logs();
    let mut cluster = Cluster::new("meta", tuning());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut maps = Vec::new();
        for node in 1..=3u64 {
            let endpoint = cluster.configs[node as usize - 1].client_addr.to_string();
            let r = call(&endpoint, Op::ClusterMap).await;
            let Ok(Outcome::ClusterMap(map)) = r.outcome else {
                panic!("map from node {node}: {r:?}");
            };
            map.validate().unwrap();
            assert_eq!(map.epoch, 1);
            assert_eq!(map.partitions.len(), PARTITIONS as usize);
            assert!(map.partitions.iter().all(|p| p.id != 0));
            let mut placement: Vec<(u64, Vec<(u64, u32)>)> = map
                .partitions
                .iter()
                .map(|p| (p.id, p.replicas.iter().map(|r| (r.node, r.shard)).collect()))
                .collect();
            placement.sort();
            maps.push((map.ranges.clone(), placement));
        }
        assert!(
            maps.windows(2).all(|w| w[0] == w[1]),
            "nodes serve different maps"
        );

        // Status: partition 0 is hosted by every node and has exactly one leader.
        let cl = client(&cluster).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = cl.status().await.unwrap();
            let meta: Vec<_> = st
                .iter()
                .flat_map(|(_, s)| &s.partitions)
                .filter(|p| p.partition == 0)
                .collect();
            assert!(st.iter().all(|(_, s)| s.map_epoch == 1));
            let leaders = meta.iter().filter(|p| p.is_leader).count();
            // Every node's shard 0 reports partition 0 (other shards report it too).
            let nodes: std::collections::BTreeSet<u64> = st
                .iter()
                .filter(|(_, s)| s.partitions.iter().any(|p| p.partition == 0))
                .map(|(_, s)| s.node)
                .collect();
            assert_eq!(nodes.len(), 3, "{st:?}");
            if leaders >= 1 {
                break;
            }
            assert!(Instant::now() < deadline, "meta group without a leader");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A request routed with a newer epoch than the node has: Unavailable (retry later).
        let mut conn = RawConn::connect(cluster.configs[0].client_addr).await;
        let unset = request(9, get_op("k", Consistency::Stale)); // epoch 0: no map yet; served
        let mut newer = request(10, get_op("k", Consistency::Stale));
        newer.map_epoch = 2;
        conn.send(&[unset, newer]).await;
        let mut got = conn.recv(2).await;
        got.sort_by_key(|r| r.id);
        assert!(
            matches!(
                got[0].outcome,
                Ok(Outcome::Get(_)) | Err(ServerError::WrongShard { .. })
            ),
            "{:?}",
            got[0]
        );
        assert!(
            matches!(got[1].outcome, Err(ServerError::Unavailable { .. })),
            "{:?}",
            got[1]
        );
    });

    // Restart: the map comes back from the node's own meta log before it serves.
    cluster.stop(2);
    cluster.start(2);
    assert_eq!(cluster.handles[&2].shared().map_epoch(), 1);

    // A node restarted with a different partition count is refused, naming the setting.
    cluster.stop(3);
    let mut bad = cluster.configs[2].clone();
    bad.partitions = PARTITIONS * 2;
    let err = server::start(bad).expect_err("a node that disagrees with the map");
    assert!(err.to_string().contains("--partitions"), "{err}");
    cluster.start(3);
    assert_eq!(cluster.handles[&3].shared().map_epoch(), 1);
}

/// Writes a leader accepted but could not commit before it lost its followers are answered
/// with a definite outcome once the new leader's first entry commits, instead of waiting for
/// the server's 10 s request timeout; and each answer is true: a write answered `NotLeader`
/// is absent afterwards, a write answered OK is present. A linearizable read caught the same
/// way is answered `Unavailable` once the leader steps down.
#[test]
fn writes_orphaned_by_a_leader_change_get_a_definite_answer() {
    init_logs();
    let mut cluster = Cluster::new("orphans", tuning());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let key = |i: u32| format!("{{orphan}}k{i}");
    let (partition, leader) = rt.block_on(async {
        let cl = client(&cluster).await;
        cl.put(key(100), "warm-up").await.unwrap();
        leader_of(&cl, &key(0)).await
    });
    let followers: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
    // Stop both followers, then write at once (before CheckQuorum makes the leader step down,
    // about one election timeout later): the writes are appended but cannot commit.
    cluster.stop(followers[0]);
    cluster.stop(followers[1]);
    const WRITES: u32 = 6;
    let endpoint = cluster.endpoint(leader, partition);
    let mut conn = rt.block_on(RawConn::connect(endpoint.as_str()));
    let mut requests: Vec<Request> = (0..WRITES)
        .map(|i| {
            request(
                u64::from(i) + 1,
                Op::Put(wire::Put {
                    key: Bytes::from(key(i)),
                    value: Bytes::from_static(b"v"),
                    if_absent: false,
                    return_previous: false,
                }),
            )
        })
        .collect();
    // And a linearizable read, whose heartbeat round cannot complete either.
    const READ_ID: u64 = 1000;
    requests.push(request(READ_ID, get_op(&key(0), Consistency::Linearizable)));
    rt.block_on(conn.send(&requests));
    // CheckQuorum (thesis §6.2): about one election timeout later the leader steps down in
    // the same term, and raftcore drops the read. With the followers still down, nothing but
    // that step-down can answer it before the 10 s request timeout (`Timeout`).
    let read = rt.block_on(conn.recv(1)).pop().unwrap();
    assert_eq!(
        read.id, READ_ID,
        "a write answered before any leader change: {read:?}"
    );
    assert!(
        matches!(read.outcome, Err(ServerError::Unavailable { .. })),
        "{read:?}"
    );
    // Restart the followers with a short election timeout, so one of them (whose log lacks
    // the writes) most likely wins and the writes are overwritten; if the old leader wins
    // instead, they commit. Either way every answer must be definite.
    for &f in &followers {
        cluster.configs[f as usize - 1].tuning.election_ticks_min = 5;
        cluster.start(f);
    }
    let mut answers = rt.block_on(conn.recv(WRITES as usize));
    answers.sort_by_key(|r| r.id);
    let mut committed = 0;
    let mut lost = 0;
    rt.block_on(async {
        let cl = client(&cluster).await;
        for r in answers {
            let k = key(r.id as u32 - 1);
            let present = cl.get(k.clone()).await.unwrap().is_some();
            match &r.outcome {
                Ok(Outcome::Put(p)) if p.written => {
                    assert!(present, "{k} acknowledged but missing");
                    committed += 1;
                }
                Err(ServerError::NotLeader { .. }) => {
                    assert!(!present, "{k} answered NotLeader but applied");
                    lost += 1;
                }
                other => panic!("{k}: not a definite answer: {other:?}"),
            }
        }
    });
    println!("orphaned writes: {committed} committed, {lost} answered NotLeader");
}

// ---- review issue 10 -------------------------------------------------------------------------

/// A put request with a session (number `seq`, `first_unacked` 1: the client still waits for
/// every earlier write), routed without a map epoch.
fn session_put(id: u64, session: u64, seq: u64, key: &str, value: Bytes, prev: bool) -> Request {
    Request {
        id,
        session,
        seq,
        map_epoch: 0,
        op: Op::Put(wire::Put {
            key: Bytes::from(key.to_owned()),
            value,
            if_absent: false,
            return_previous: prev,
        }),
        first_unacked: 1,
    }
}

/// Finding 1a: a late retry whose cached result the session dropped (`session_results_max`)
/// may or may not have been applied: it is answered `OutcomeUnknown`, never a definite error
/// (it was `InvalidArgument`, which the client returned as final, so an application re-issuing
/// the write would apply it twice).
#[test]
fn a_retry_whose_cached_result_was_dropped_is_answered_outcome_unknown() {
    init_logs();
    let cluster = Cluster::new(
        "stale-seq",
        Tuning {
            session_results_max: 2,
            connection_requests_max: 2,
            ..tuning()
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cl = client(&cluster).await;
        let key = |i: u32| format!("{{stale}}k{i}");
        cl.put(key(100), "warm-up").await.unwrap();
        let (partition, leader) = leader_of(&cl, &key(0)).await;
        let mut conn = RawConn::connect(cluster.endpoint(leader, partition)).await;
        let session = 0x5e55_1047;
        let v = || Bytes::from_static(b"v");
        // Three writes while the client still waits for the first: the cache holds two, so
        // the result of seq 1 is dropped once seq 3 is applied.
        for seq in 1..=3u64 {
            conn.send(&[session_put(seq, session, seq, &key(seq as u32), v(), false)])
                .await;
            let r = conn.recv(1).await.pop().unwrap();
            assert!(matches!(r.outcome, Ok(Outcome::Put(_))), "seq {seq}: {r:?}");
        }
        // The lost answer of seq 1 is retried: applied once, but the server cannot tell.
        conn.send(&[session_put(4, session, 1, &key(1), v(), false)])
            .await;
        let r = conn.recv(1).await.pop().unwrap();
        assert!(
            matches!(&r.outcome, Err(ServerError::OutcomeUnknown { reason }) if reason.contains("sequence 1")),
            "{r:?}"
        );
    });
}

/// Finding 3: the Rust client's read-only transactions go through (they carry a sequence
/// number); a read-only transaction sent with a session and sequence 0 (older clients) is run
/// without a session; a writing one is still refused (its retries could apply twice).
#[test]
fn read_only_transactions_succeed() {
    init_logs();
    let cluster = Cluster::new("ro-txn", tuning());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cl = client(&cluster).await;
        cl.put("{ro}a", "1").await.unwrap();
        let get = |k: &str| wire::TxnOp::Get {
            key: Bytes::from(k.to_owned()),
        };
        let txn = wire::Txn {
            compares: vec![wire::Compare {
                key: Bytes::from_static(b"{ro}a"),
                op: wire::CompareOp::Equal,
                target: wire::CompareTarget::Exists(true),
            }],
            success: vec![get("{ro}a"), get("{ro}b")],
            failure: vec![],
        };
        let r = cl.txn(txn.clone()).await.unwrap();
        assert!(r.succeeded);
        let wire::TxnOpResult::Get(Some(kv)) = &r.results[0] else {
            panic!("{r:?}");
        };
        assert_eq!(kv.value, "1");
        assert_eq!(r.results[1], wire::TxnOpResult::Get(None));
        assert_eq!(r.revision, 0);

        // Raw: session with sequence 0.
        let (partition, leader) = leader_of(&cl, "{ro}a").await;
        let mut conn = RawConn::connect(cluster.endpoint(leader, partition)).await;
        let mut read_only = request(1, Op::Txn(txn.clone()));
        read_only.session = 77;
        let mut writing = txn;
        writing.success.push(wire::TxnOp::Put(wire::Put {
            key: Bytes::from_static(b"{ro}c"),
            value: Bytes::from_static(b"x"),
            if_absent: false,
            return_previous: false,
        }));
        let mut writing = request(2, Op::Txn(writing));
        writing.session = 77;
        conn.send(&[read_only, writing]).await;
        let mut got = conn.recv(2).await;
        got.sort_by_key(|r| r.id);
        assert!(
            matches!(&got[0].outcome, Ok(Outcome::Txn(t)) if t.succeeded),
            "{:?}",
            got[0]
        );
        assert!(
            matches!(got[1].outcome, Err(ServerError::InvalidArgument { .. })),
            "{:?}",
            got[1]
        );
    });
}

/// Findings 2 and 1b: replies are bounded by the frame limit before they are built. A range
/// over values larger in total than a frame comes back in pages (`more`), each within the
/// limit, and the client's paging returns every key; an applied write whose reply (here, the
/// previous values of a transaction) cannot fit is answered `OutcomeUnknown` naming its
/// revision, never the definite `TooLarge` of a request refused before it was proposed.
#[test]
fn large_replies_are_paged_or_answered_outcome_unknown_never_too_large() {
    init_logs();
    let cluster = Cluster::new("large-replies", tuning());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cl = client(&cluster).await;
        let value_max = Tuning::default().value_bytes_max;
        let key = |i: u32| format!("{{huge}}k{i:02}");
        const KEYS: u32 = 10;
        for i in 0..KEYS {
            cl.put(key(i), vec![b'a' + i as u8; value_max]).await.unwrap();
        }
        let (partition, leader) = leader_of(&cl, &key(0)).await;
        let mut conn = RawConn::connect(cluster.endpoint(leader, partition)).await;
        // A transaction overwriting five 1 MiB values and asking for them back: applied, but
        // its 5 MiB reply cannot fit a 4 MiB frame.
        let txn = wire::Txn {
            compares: vec![],
            success: (0..5)
                .map(|i| {
                    wire::TxnOp::Put(wire::Put {
                        key: Bytes::from(key(i)),
                        value: Bytes::from_static(b"small"),
                        if_absent: false,
                        return_previous: true,
                    })
                })
                .collect(),
            failure: vec![],
        };
        conn.send(&[request(2, Op::Txn(txn))]).await;
        let r = conn.recv(1).await.pop().unwrap();
        assert!(
            matches!(&r.outcome, Err(ServerError::OutcomeUnknown { reason }) if reason.contains("applied at revision")),
            "{:?}",
            r.outcome.as_ref().map(|_| ())
        );
        for i in 0..5 {
            assert_eq!(cl.get(key(i)).await.unwrap().unwrap().value, "small");
        }
        // One range of 5 MiB and five small values: one page that fits a frame, `more` set.
        conn.send(&[request(
            3,
            Op::Range(wire::Range {
                partition,
                start: Bytes::from_static(b"{huge}"),
                end: Bytes::from_static(b"{huge}~"),
                ..Default::default()
            }),
        )])
        .await;
        let r = conn.recv(1).await.pop().unwrap();
        let Ok(Outcome::Range(page)) = &r.outcome else {
            panic!("{:?}", r.outcome.map(|_| ()));
        };
        assert!(page.more);
        assert!(!page.kvs.is_empty() && page.kvs.len() < KEYS as usize);
        assert_eq!(page.kvs[0].key, key(0));
        // The client pages through all of it.
        let mut seen = Vec::new();
        let mut after = Bytes::new();
        loop {
            let p = cl
                .range(RangeOptions {
                    start: Bytes::from_static(b"{huge}"),
                    end: Bytes::from_static(b"{huge}~"),
                    after: after.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            seen.extend(p.kvs.iter().map(|kv| (kv.key.clone(), kv.value.len())));
            match p.next {
                Some(n) => after = n,
                None => break,
            }
        }
        let want: Vec<(Bytes, usize)> = (0..KEYS)
            .map(|i| (Bytes::from(key(i)), if i < 5 { 5 } else { value_max }))
            .collect();
        assert_eq!(seen, want);

    });
}
