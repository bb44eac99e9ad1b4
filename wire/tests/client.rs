//! The client against scripted fake servers: real TCP listeners that speak the real framing
//! and answer each request as the test's script says.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wire::client::{Client, ClientConfig, ClientError, RangeOptions};
use wire::*;

/// What a fake node does with one request.
enum Action {
    Reply(Result<Outcome, ServerError>),
    /// Close the connection without answering anything else in this frame.
    Drop,
    /// Refuse the whole frame with a frame-level error (as a server does for a body that
    /// fails to decode).
    RefuseFrame(ServerError),
}

/// One request as a fake node saw it.
#[derive(Debug, Clone)]
struct Seen {
    node: u64,
    conn: usize,
    frame_requests: usize,
    req: Request,
}

type Script = dyn FnMut(u64, &Request) -> Action + Send;

struct Fake {
    endpoints: Vec<String>,
    seen: Arc<Mutex<Vec<Seen>>>,
    conns: Arc<AtomicUsize>,
}

impl Fake {
    /// Starts `nodes` listeners (node ids 1..=nodes), all answering through `script`.
    async fn start(nodes: u64, script: Box<Script>) -> Fake {
        let script = Arc::new(Mutex::new(script));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let mut endpoints = Vec::new();
        for node in 1..=nodes {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            endpoints.push(listener.local_addr().unwrap().to_string());
            let (script, seen, conns) = (script.clone(), seen.clone(), conns.clone());
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let conn = conns.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(serve(node, conn, stream, script.clone(), seen.clone()));
                }
            });
        }
        Fake {
            endpoints,
            seen,
            conns,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Requests other than map fetches.
    fn data_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| !matches!(s.req.op, Op::ClusterMap))
            .collect()
    }
}

async fn serve(
    node: u64,
    conn: usize,
    mut stream: tokio::net::TcpStream,
    script: Arc<Mutex<Box<Script>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let limits = Limits::default();
    let decoder = FrameDecoder::new(limits);
    let mut enc = BodyEncoder::new();
    let mut buf = BytesMut::new();
    loop {
        while let Some(frame) = decoder.decode(&mut buf).expect("client sent a bad frame") {
            assert_eq!(frame.kind, FrameKind::ClientRequests);
            let reqs = decode_requests(&frame.body, &limits).expect("client sent a bad body");
            let mut batch = ResponseBatch::default();
            for req in &reqs {
                seen.lock().unwrap().push(Seen {
                    node,
                    conn,
                    frame_requests: reqs.len(),
                    req: req.clone(),
                });
                let action = (script.lock().unwrap())(node, req);
                match action {
                    Action::Reply(outcome) => batch.responses.push(Response {
                        id: req.id,
                        header: ResponseHeader {
                            partition: 1,
                            term: 1,
                            applied_index: 1,
                        },
                        outcome,
                    }),
                    Action::Drop => return,
                    Action::RefuseFrame(e) => {
                        batch.frame_error = Some(e);
                        batch.responses.clear();
                        break;
                    }
                }
            }
            let mut out = BytesMut::new();
            enc.response_frame(&mut out, frame.request_id, &batch, &limits)
                .unwrap();
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A map of `parts` partitions over nodes 1..=nodes, each on every node, leader hints given.
fn map_of(epoch: u64, endpoints: &[String], leaders: &[u64]) -> ClusterMap {
    let partitions = leaders
        .iter()
        .enumerate()
        .map(|(i, &leader)| PartitionInfo {
            id: i as u64 + 1,
            replicas: endpoints
                .iter()
                .enumerate()
                .map(|(n, e)| Replica {
                    node: n as u64 + 1,
                    shard: 0,
                    endpoint: e.clone(),
                })
                .collect(),
            leader_node: leader,
        })
        .collect();
    ClusterMap::uniform(epoch, partitions)
}

fn put_ok() -> Action {
    Action::Reply(Ok(Outcome::Put(PutResult {
        written: true,
        previous: None,
        revision: 7,
    })))
}

fn config(fake: &Fake) -> ClientConfig {
    let mut c = ClientConfig::new(vec![fake.endpoints[0].clone()]);
    c.request_timeout = Duration::from_secs(5);
    c
}

/// The fake's endpoints are only known after binding, so scripts read the map from here.
type SharedMap = Arc<Mutex<ClusterMap>>;

fn shared_map() -> SharedMap {
    Arc::new(Mutex::new(ClusterMap::default()))
}

#[tokio::test]
async fn routes_each_key_to_its_partition_leader() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        3,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Put(_) => put_ok(),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1, 2, 3]);
    let client = Client::connect(config(&fake)).await.unwrap();
    for i in 0..60 {
        let r = client.put(format!("key-{i}"), "v").await.unwrap();
        assert!(r.written);
    }
    let expected = map.lock().unwrap().clone();
    let seen = fake.data_requests();
    assert_eq!(seen.len(), 60);
    let mut nodes_used = std::collections::BTreeSet::new();
    for (i, s) in seen.iter().enumerate() {
        let Op::Put(p) = &s.req.op else {
            panic!("not a put")
        };
        let (part, leader) = expected.route(&p.key).unwrap();
        assert_eq!(
            s.node, leader.node,
            "key {:?} of partition {}",
            p.key, part.id
        );
        assert_eq!(s.req.session, client.session());
        assert_ne!(s.req.session, 0);
        assert_eq!(
            s.req.seq,
            i as u64 + 1,
            "each write takes the next sequence number"
        );
        assert_eq!(s.req.map_epoch, 1);
        nodes_used.insert(s.node);
    }
    assert_eq!(
        nodes_used.len(),
        3,
        "60 keys should touch all three partitions"
    );
}

#[tokio::test]
async fn not_leader_then_ok_retries_with_the_same_seq() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        2,
        Box::new(move |node, req| match (&req.op, node) {
            (Op::ClusterMap, _) => {
                Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone())))
            }
            (Op::Put(_), 1) => Action::Reply(Err(ServerError::NotLeader {
                leader_node: 2,
                leader_endpoint: None,
            })),
            (Op::Put(_), _) => put_ok(),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    assert!(client.put("a", "1").await.unwrap().written);
    assert!(client.put("b", "2").await.unwrap().written);

    let seen = fake.data_requests();
    let summary: Vec<(u64, u64)> = seen.iter().map(|s| (s.node, s.req.seq)).collect();
    // First put: node 1 refuses, the retry goes to node 2 with the same seq. Second put goes
    // straight to node 2: the hint was remembered.
    assert_eq!(summary, vec![(1, 1), (2, 1), (2, 2)]);
    assert_eq!(client.cluster_map().partition(1).unwrap().leader_node, 2);
}

#[tokio::test]
async fn stale_map_refreshes_the_map_and_retries_with_the_same_seq() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        2,
        Box::new(move |node, req| match (&req.op, node) {
            (Op::ClusterMap, _) => {
                Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone())))
            }
            (Op::Put(_), 1) => Action::Reply(Err(ServerError::StaleMap { epoch: 2 })),
            (Op::Put(_), _) if req.map_epoch == 2 => put_ok(),
            (Op::Put(_), _) => Action::Reply(Err(ServerError::StaleMap { epoch: 2 })),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    assert_eq!(client.cluster_map().epoch, 1);
    // The cluster moves on: epoch 2, node 2 leads.
    *map.lock().unwrap() = map_of(2, &fake.endpoints, &[2]);
    assert!(client.put("k", "v").await.unwrap().written);

    assert_eq!(client.cluster_map().epoch, 2);
    let seen = fake.data_requests();
    let summary: Vec<(u64, u64, u64)> = seen
        .iter()
        .map(|s| (s.node, s.req.map_epoch, s.req.seq))
        .collect();
    assert_eq!(summary, vec![(1, 1, 1), (2, 2, 1)]);
    let fetches = fake
        .seen()
        .iter()
        .filter(|s| matches!(s.req.op, Op::ClusterMap))
        .count();
    assert_eq!(fetches, 2, "one fetch at connect, one after StaleMap");
}

#[tokio::test]
async fn dropped_connection_is_retried_on_a_new_connection_with_the_same_seq() {
    let map = shared_map();
    let m = map.clone();
    let mut puts = 0;
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Put(_) => {
                puts += 1;
                if puts == 1 {
                    Action::Drop
                } else {
                    put_ok()
                }
            }
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    assert!(client.put("k", "v").await.unwrap().written);
    let seen = fake.data_requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].req.seq, seen[1].req.seq);
    assert_eq!(seen[0].req.session, seen[1].req.session);
    assert_ne!(
        seen[0].conn, seen[1].conn,
        "the retry must use a new connection"
    );
    assert_eq!(fake.conns.load(Ordering::SeqCst), 2);
}

/// On a current-thread runtime the 2000 callers all queue their requests before the
/// connection's writer runs again, so batching is deterministic: full frames.
#[tokio::test]
async fn pipelines_thousands_of_requests_on_one_connection() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            // Echo: the value of a key is the key reversed.
            Op::Get { key, .. } => Action::Reply(Ok(Outcome::Get(Some(KeyValue {
                key: key.clone(),
                value: Bytes::from(key.iter().rev().copied().collect::<Vec<u8>>()),
                create_revision: 1,
                mod_revision: 2,
                version: 1,
            })))),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("k{i}");
            let kv = c.get(key.clone()).await.unwrap().unwrap();
            assert_eq!(
                kv.value,
                Bytes::from(key.bytes().rev().collect::<Vec<u8>>())
            );
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = fake.data_requests();
    assert_eq!(seen.len(), 2000);
    assert_eq!(
        fake.conns.load(Ordering::SeqCst),
        1,
        "one connection per endpoint"
    );
    let biggest = seen.iter().map(|s| s.frame_requests).max().unwrap();
    let frames: f64 = seen.iter().map(|s| 1.0 / s.frame_requests as f64).sum();
    assert!(
        biggest >= 100,
        "concurrent requests should share frames (largest frame had {biggest})"
    );
    assert!(frames < 100.0, "2000 requests took {frames:.0} frames");
    assert!(
        seen.iter().all(|s| s.req.seq == 0),
        "reads carry no sequence number"
    );
}

#[tokio::test]
async fn deadline_bounds_retries_of_an_unavailable_partition() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            _ => Action::Reply(Err(ServerError::Unavailable {
                reason: "no quorum".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let mut cfg = config(&fake);
    cfg.request_timeout = Duration::from_millis(300);
    cfg.backoff_min = Duration::from_millis(5);
    cfg.backoff_max = Duration::from_millis(40);
    let client = Client::connect(cfg).await.unwrap();
    let start = std::time::Instant::now();
    let err = client.put("k", "v").await.unwrap_err();
    let ClientError::Timeout { attempts, last } = err else {
        panic!("expected a timeout, got {err:?}")
    };
    assert!(attempts >= 4, "only {attempts} attempts");
    assert!(last.contains("no quorum"), "{last}");
    assert!(start.elapsed() < Duration::from_secs(2));
    let seqs: Vec<u64> = fake.data_requests().iter().map(|s| s.req.seq).collect();
    assert_eq!(seqs.len() as u32, attempts);
    assert!(
        seqs.iter().all(|&s| s == 1),
        "every retry carries seq 1: {seqs:?}"
    );
}

#[tokio::test]
async fn non_retryable_errors_are_returned_at_once() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            _ => Action::Reply(Err(ServerError::InvalidArgument {
                reason: "empty key".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    let err = client.delete("").await.unwrap_err();
    assert_eq!(
        err,
        ClientError::Server(ServerError::InvalidArgument {
            reason: "empty key".into()
        })
    );
    assert_eq!(fake.data_requests().len(), 1);

    // Over the local key limit: refused before sending.
    let big = vec![b'x'; Limits::default().key_bytes_max + 1];
    let err = client.get(big).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Invalid(DecodeError::KeyTooLarge { .. })),
        "{err:?}"
    );
    assert_eq!(fake.data_requests().len(), 1);
}

#[tokio::test]
async fn range_pages_merge_partitions_in_key_order() {
    let map = shared_map();
    let m = map.clone();
    // Each partition's keys, as the fake's "state machine".
    let store: Arc<Mutex<BTreeMap<u64, Vec<Bytes>>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let s = store.clone();
    let fake = Fake::start(
        2,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Range(r) => {
                let store = s.lock().unwrap();
                let keys = store.get(&r.partition).cloned().unwrap_or_default();
                let mut matching: Vec<Bytes> = keys
                    .into_iter()
                    .filter(|k| *k >= r.start && (r.end.is_empty() || *k < r.end))
                    .filter(|k| r.after.is_empty() || *k > r.after)
                    .collect();
                matching.sort();
                let more = matching.len() > r.limit as usize;
                matching.truncate(r.limit as usize);
                let kvs = matching
                    .into_iter()
                    .map(|k| KeyValue {
                        key: k,
                        ..KeyValue::default()
                    })
                    .collect();
                Action::Reply(Ok(Outcome::Range(RangeResult { kvs, more })))
            }
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1, 2]);
    let all: Vec<Bytes> = (0..23)
        .map(|i| Bytes::from(format!("key-{i:02}")))
        .collect();
    {
        let m = map.lock().unwrap();
        let mut st = store.lock().unwrap();
        for k in &all {
            st.entry(m.partition_of_key(k).unwrap().id)
                .or_default()
                .push(k.clone());
        }
        assert_eq!(st.len(), 2, "keys should fall in both partitions");
    }
    let client = Client::connect(config(&fake)).await.unwrap();
    let mut got = Vec::new();
    let mut after = Bytes::new();
    let mut pages = 0;
    loop {
        let page = client
            .range(RangeOptions {
                start: "key-03".into(),
                end: "key-20".into(),
                limit: 4,
                after,
                ..Default::default()
            })
            .await
            .unwrap();
        pages += 1;
        assert!(page.kvs.len() <= 4);
        got.extend(page.kvs.into_iter().map(|kv| kv.key));
        match page.next {
            Some(n) => after = n,
            None => break,
        }
        assert!(pages < 20, "range does not terminate");
    }
    let want: Vec<Bytes> = all
        .into_iter()
        .filter(|k| k[..] >= b"key-03"[..] && k[..] < b"key-20"[..])
        .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn txn_and_cas_stay_in_one_partition() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        2,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Txn(t) => Action::Reply(Ok(Outcome::Txn(TxnResult {
                succeeded: t.compares.len() == 2,
                results: vec![TxnOpResult::Put {
                    written: true,
                    previous: None,
                }],
                revision: 9,
            }))),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1, 2]);
    let client = Client::connect(config(&fake)).await.unwrap();
    assert!(client
        .cas("{user}.a", Some(Bytes::from("old")), "new")
        .await
        .unwrap());
    assert!(!client.cas("{user}.a", None, "new").await.unwrap());
    let seen = fake.data_requests();
    let Op::Txn(t) = &seen[0].req.op else {
        panic!("not a txn")
    };
    assert_eq!(t.compares[0].target, CompareTarget::Exists(true));
    assert_eq!(t.compares[1].target, CompareTarget::Value("old".into()));
    assert_ne!(
        seen[0].req.seq, 0,
        "a transaction that writes takes a sequence number"
    );

    // Keys in two partitions: refused locally.
    let m = client.cluster_map();
    let (a, b) = (0..100)
        .map(|i| format!("k{i}"))
        .find_map(|k| {
            let p = m.partition_of_key(k.as_bytes()).unwrap().id;
            (p != m.partition_of_key(b"k0").unwrap().id).then(|| ("k0".to_string(), k))
        })
        .unwrap();
    let txn = Txn {
        compares: vec![],
        success: vec![TxnOp::Get { key: a.into() }, TxnOp::Get { key: b.into() }],
        failure: vec![],
    };
    assert!(matches!(
        client.txn(txn).await,
        Err(ClientError::CrossPartition(_, _))
    ));
    assert_eq!(fake.data_requests().len(), 2);
}

#[tokio::test]
async fn a_refused_frame_fails_its_requests_with_the_typed_error() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Put(p) if p.key == "bad" => {
                Action::RefuseFrame(ServerError::TooLarge { limit: 99 })
            }
            Op::Put(_) => put_ok(),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    let err = client.put("bad", "v").await.unwrap_err();
    assert_eq!(
        err,
        ClientError::Server(ServerError::TooLarge { limit: 99 })
    );
    // The connection stays usable: the frame boundary was never lost.
    assert!(client.put("good", "v").await.unwrap().written);
    assert_eq!(fake.conns.load(Ordering::SeqCst), 1);
}
