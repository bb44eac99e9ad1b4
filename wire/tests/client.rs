//! The client against scripted fake servers: real TCP listeners that speak the real framing
//! and answer each request as the test's script says.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wire::client::{Client, ClientConfig, ClientError, RangeOptions, ReadPreference};
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
        assert_eq!(
            s.req.first_unacked, s.req.seq,
            "one write at a time: every earlier write was answered"
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

/// Writes in flight at once hold `first_unacked` down to the oldest unanswered one; once they
/// are answered, the next write's `first_unacked` is its own number again.
#[tokio::test]
async fn pipelined_writes_carry_the_lowest_unanswered_sequence() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Put(_) => put_ok(),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    // join_all polls every put once before any response can arrive, so all 50 take their
    // sequence numbers (1..=50) while the others are still in flight.
    let puts = (0..50).map(|i| client.put(format!("k{i}"), "v"));
    for r in futures_join_all(puts).await {
        assert!(r.unwrap().written);
    }
    client.put("after", "v").await.unwrap();
    let seen = fake.data_requests();
    assert_eq!(seen.len(), 51);
    for s in &seen[..50] {
        assert!(s.req.seq >= 1 && s.req.seq <= 50, "{:?}", s.req);
        assert_eq!(
            s.req.first_unacked, 1,
            "write 1 was still in flight: {:?}",
            s.req
        );
    }
    assert_eq!((seen[50].req.seq, seen[50].req.first_unacked), (51, 51));
}

/// Polls every future to completion, all concurrently on the calling task.
async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("polled to completion"))
        .collect()
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

// ---- replica choice for follower and stale reads ----------------------------------------------

/// A `host:port` that refuses connections: a socket bound to it but never listening, so no
/// other test can take the port while the returned socket lives.
fn closed_endpoint() -> (tokio::net::TcpSocket, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    (socket, addr)
}

/// A get answered by `node`: the value names the node, so the caller sees who served it.
fn get_from(node: u64, key: &Bytes) -> Action {
    Action::Reply(Ok(Outcome::Get(Some(KeyValue {
        key: key.clone(),
        value: Bytes::from(format!("node-{node}")),
        create_revision: 1,
        mod_revision: 1,
        version: 1,
    }))))
}

fn unavailable(reason: &str) -> Action {
    Action::Reply(Err(ServerError::Unavailable {
        reason: reason.into(),
    }))
}

/// Per node id, how many of `seen` it got.
fn per_node(seen: &[Seen]) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for s in seen {
        *out.entry(s.node).or_insert(0) += 1;
    }
    out
}

#[tokio::test]
async fn follower_and_stale_reads_spread_over_the_followers() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        3,
        Box::new(move |node, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Get { key, .. } => get_from(node, key),
            Op::Range(_) => Action::Reply(Ok(Outcome::Range(RangeResult::default()))),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1, 2, 3]);
    let client = Client::connect(config(&fake)).await.unwrap();
    let expected = client.cluster_map();

    // One hot key, read again and again: both followers of its partition share the reads.
    let hot = "hot-key";
    let hot_leader = expected
        .partition_of_key(hot.as_bytes())
        .unwrap()
        .leader_node;
    for consistency in [Consistency::Follower, Consistency::Stale] {
        let before = fake.data_requests().len();
        for _ in 0..10 {
            let kv = client.get_with(hot, consistency).await.unwrap().unwrap();
            assert_ne!(
                kv.value,
                format!("node-{hot_leader}"),
                "served by the leader"
            );
        }
        let seen = &fake.data_requests()[before..];
        assert!(seen
            .iter()
            .all(|s| matches!(&s.req.op, Op::Get { consistency: c, .. } if *c == consistency)));
        let counts = per_node(seen);
        assert_eq!(counts.get(&hot_leader), None, "{consistency:?}: {counts:?}");
        assert_eq!(
            counts.len(),
            2,
            "{consistency:?}: both followers: {counts:?}"
        );
        assert!(
            counts.values().all(|&n| n == 5),
            "{consistency:?}: round robin over two followers: {counts:?}"
        );
    }

    // Many keys: each read lands on a follower of its own partition.
    let before = fake.data_requests().len();
    for i in 0..30 {
        client
            .get_with(format!("key-{i}"), Consistency::Stale)
            .await
            .unwrap();
    }
    for s in &fake.data_requests()[before..] {
        let Op::Get { key, .. } = &s.req.op else {
            panic!("not a get")
        };
        let p = expected.partition_of_key(key).unwrap();
        assert_ne!(s.node, p.leader_node, "key {key:?} read at its leader");
        assert_eq!(s.req.seq, 0, "reads carry no sequence number");
    }

    // Follower ranges: every partition is scanned at one of its followers.
    let before = fake.data_requests().len();
    for _ in 0..2 {
        let page = client
            .range(RangeOptions {
                consistency: Consistency::Follower,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page, Default::default());
    }
    let seen = &fake.data_requests()[before..];
    assert_eq!(seen.len(), 6, "two scans of three partitions");
    for s in seen {
        let Op::Range(r) = &s.req.op else {
            panic!("not a range")
        };
        assert_eq!(r.consistency, Consistency::Follower);
        assert_ne!(
            s.node,
            expected.partition(r.partition).unwrap().leader_node,
            "partition {} scanned at its leader",
            r.partition
        );
    }
}

#[tokio::test]
async fn any_replica_preference_spreads_reads_over_the_leader_too() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        3,
        Box::new(move |node, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Get { key, .. } => get_from(node, key),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[2]);
    let mut cfg = config(&fake);
    cfg.read_preference = ReadPreference::AnyReplica;
    let client = Client::connect(cfg).await.unwrap();
    for _ in 0..9 {
        client.get_with("k", Consistency::Follower).await.unwrap();
    }
    let counts = per_node(&fake.data_requests());
    assert_eq!(
        counts,
        BTreeMap::from([(1, 3), (2, 3), (3, 3)]),
        "round robin over all three replicas"
    );
}

/// A config under which any backoff fails the call at once: the first backoff already reaches
/// past the deadline. A call that succeeds under it retried without backing off.
fn no_backoff_config(seeds: Vec<String>) -> ClientConfig {
    let mut cfg = ClientConfig::new(seeds);
    cfg.request_timeout = Duration::from_secs(5);
    cfg.backoff_min = Duration::from_secs(10);
    cfg.backoff_max = Duration::from_secs(10);
    cfg
}

#[tokio::test]
async fn a_follower_that_refuses_connections_hands_the_read_to_the_other_follower() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        3,
        Box::new(move |node, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Get { key, .. } => get_from(node, key),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    // Node 2's endpoint is a closed port (a crashed node); node 1 leads.
    let (_closed, closed) = closed_endpoint();
    let endpoints = vec![fake.endpoints[0].clone(), closed, fake.endpoints[2].clone()];
    *map.lock().unwrap() = map_of(1, &endpoints, &[1]);
    let client = Client::connect(no_backoff_config(vec![fake.endpoints[0].clone()]))
        .await
        .unwrap();
    for i in 0..6 {
        let kv = client
            .get_with(format!("k{i}"), Consistency::Follower)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kv.value, "node-3");
    }
    // Half of the reads chose node 2 first, failed to connect and moved on to node 3 at once;
    // the leader saw none of them.
    assert_eq!(per_node(&fake.data_requests()), BTreeMap::from([(3, 6)]));
}

#[tokio::test]
async fn an_unavailable_follower_hands_the_read_to_the_other_follower() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        3,
        Box::new(move |node, req| match (&req.op, node) {
            (Op::ClusterMap, _) => {
                Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone())))
            }
            (Op::Get { .. }, 2) => unavailable("no read index yet"),
            (Op::Get { key, .. }, _) => get_from(node, key),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(no_backoff_config(vec![fake.endpoints[0].clone()]))
        .await
        .unwrap();
    for i in 0..6 {
        let kv = client
            .get_with(format!("k{i}"), Consistency::Stale)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kv.value, "node-3");
    }
    let nodes: Vec<u64> = fake.data_requests().iter().map(|s| s.node).collect();
    // Reads alternate their first choice: node 2 (refuses, then node 3), node 3, ...
    assert_eq!(nodes, [2, 3, 3, 2, 3, 3, 2, 3, 3]);
}

#[tokio::test]
async fn when_every_follower_fails_the_leader_serves_the_read() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        3,
        Box::new(move |node, req| match (&req.op, node) {
            (Op::ClusterMap, _) => {
                Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone())))
            }
            (Op::Get { .. }, 3) => Action::Reply(Err(ServerError::NotLeader {
                leader_node: 0,
                leader_endpoint: None,
            })),
            (Op::Get { key, .. }, _) => get_from(node, key),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    // Node 2 is down (closed port), node 3 knows no leader, node 1 leads.
    let (_closed, closed) = closed_endpoint();
    let endpoints = vec![fake.endpoints[0].clone(), closed, fake.endpoints[2].clone()];
    *map.lock().unwrap() = map_of(1, &endpoints, &[1]);
    let client = Client::connect(no_backoff_config(vec![fake.endpoints[0].clone()]))
        .await
        .unwrap();
    for i in 0..4 {
        let kv = client
            .get_with(format!("k{i}"), Consistency::Follower)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kv.value, "node-1");
    }
    let nodes: Vec<u64> = fake.data_requests().iter().map(|s| s.node).collect();
    // Each read tries node 3 (its other choice, node 2, fails to connect) and then the leader.
    assert_eq!(nodes, [3, 1, 3, 1, 3, 1, 3, 1]);
}

#[tokio::test]
async fn a_follower_read_backs_off_only_after_every_replica_failed() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        3,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            _ => unavailable("no quorum"),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let mut cfg = config(&fake);
    cfg.request_timeout = Duration::from_millis(300);
    cfg.backoff_min = Duration::from_millis(5);
    cfg.backoff_max = Duration::from_millis(40);
    let client = Client::connect(cfg).await.unwrap();
    let err = client
        .get_with("k", Consistency::Follower)
        .await
        .unwrap_err();
    let ClientError::Timeout { attempts, last } = err else {
        panic!("expected a timeout, got {err:?}")
    };
    assert!(last.contains("no quorum"), "{last}");
    let nodes: Vec<u64> = fake.data_requests().iter().map(|s| s.node).collect();
    // The last attempt may still be on its way when the deadline passes (seen on a loaded
    // machine: 28 attempts, 27 received), so the fake saw every attempt or all but the last.
    let seen = nodes.len() as u32;
    assert!(
        seen == attempts || seen + 1 == attempts,
        "{seen} requests seen, {attempts} attempts"
    );
    assert!(
        attempts >= 6,
        "at least two rounds, got {attempts} attempts"
    );
    // Every round: both followers (in the same order), then the leader.
    let round = &nodes[..3];
    assert!(round == [2, 3, 1] || round == [3, 2, 1], "{nodes:?}");
    for chunk in nodes.chunks(3) {
        assert_eq!(chunk, &round[..chunk.len()], "{nodes:?}");
    }
}

#[tokio::test]
async fn linearizable_reads_and_writes_go_to_the_leader() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        3,
        Box::new(move |node, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Get { key, .. } => get_from(node, key),
            Op::Put(_) => put_ok(),
            Op::Delete { .. } => Action::Reply(Ok(Outcome::Delete(DeleteResult::default()))),
            Op::Txn(_) => Action::Reply(Ok(Outcome::Txn(TxnResult::default()))),
            Op::Range(_) => Action::Reply(Ok(Outcome::Range(RangeResult::default()))),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[2]);
    for preference in [ReadPreference::Followers, ReadPreference::AnyReplica] {
        let before = fake.data_requests().len();
        let mut cfg = config(&fake);
        cfg.read_preference = preference;
        let client = Client::connect(cfg).await.unwrap();
        for i in 0..3 {
            let key = format!("k{i}");
            let kv = client.get(key.clone()).await.unwrap().unwrap();
            assert_eq!(kv.value, "node-2");
            client.put(key.clone(), "v").await.unwrap();
            client.delete(key.clone()).await.unwrap();
            client.cas(key.clone(), None, "v").await.unwrap();
            client.range(RangeOptions::default()).await.unwrap();
        }
        let seen = &fake.data_requests()[before..];
        assert_eq!(seen.len(), 15);
        assert_eq!(
            per_node(seen),
            BTreeMap::from([(2, 15)]),
            "{preference:?}: everything at the leader"
        );
    }
}

// ---- map fetch while the cluster starts ---------------------------------------------------------

#[tokio::test]
async fn connect_retries_while_the_map_is_unavailable() {
    let map = shared_map();
    let m = map.clone();
    let fetches = Arc::new(AtomicUsize::new(0));
    let f = fetches.clone();
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap if f.fetch_add(1, Ordering::SeqCst) < 2 => {
                unavailable("meta group has not committed the map")
            }
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Put(_) => put_ok(),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(7, &fake.endpoints, &[1]);
    // The first seed refuses connections (a node not listening yet).
    let mut cfg = config(&fake);
    let (_closed, closed) = closed_endpoint();
    cfg.seeds = vec![closed, fake.endpoints[0].clone()];
    let client = Client::connect(cfg).await.unwrap();
    assert_eq!(client.cluster_map().epoch, 7);
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        3,
        "two refusals, then the map"
    );
    assert!(client.put("k", "v").await.unwrap().written);
}

#[tokio::test]
async fn connect_times_out_while_every_endpoint_stays_unavailable() {
    let fake = Fake::start(2, Box::new(|_, _| unavailable("meta group has no leader"))).await;
    let mut cfg = config(&fake);
    let (_closed, closed) = closed_endpoint();
    cfg.seeds = vec![closed, fake.endpoints[0].clone(), fake.endpoints[1].clone()];
    cfg.request_timeout = Duration::from_millis(300);
    cfg.backoff_min = Duration::from_millis(5);
    cfg.backoff_max = Duration::from_millis(40);
    let start = std::time::Instant::now();
    let err = Client::connect(cfg).await.unwrap_err();
    let elapsed = start.elapsed();
    let ClientError::Timeout { attempts, last } = err else {
        panic!("expected a timeout, got {err:?}")
    };
    assert!(last.contains("meta group has no leader"), "{last}");
    let per = per_node(&fake.seen());
    assert!(
        per.len() == 2 && per.values().all(|&n| n >= 3),
        "every endpoint asked again and again: {per:?}"
    );
    assert_eq!(
        attempts as usize,
        3 * per[&1],
        "whole passes over the three seeds"
    );
    // It kept trying until close to its deadline (it stops when the next backoff, at most
    // 40 ms, would pass it), and not much longer.
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn connect_fails_at_once_on_a_map_error_that_retrying_does_not_fix() {
    let fake = Fake::start(
        1,
        Box::new(|_, _| {
            Action::Reply(Err(ServerError::Internal {
                reason: "map table corrupt".into(),
            }))
        }),
    )
    .await;
    let err = Client::connect(config(&fake)).await.unwrap_err();
    assert_eq!(
        err,
        ClientError::Server(ServerError::Internal {
            reason: "map table corrupt".into()
        })
    );
    assert_eq!(fake.seen().len(), 1, "no retry");
}

#[tokio::test]
async fn a_lagging_server_map_neither_triggers_a_refresh_nor_rolls_the_client_back() {
    // Phase 0: both nodes serve epoch 2 (node 1 leads). Phase 1: node 1 lags at epoch 1, node 2
    // has epoch 3 (node 2 leads). Phase 2: both serve the old epoch 1 map.
    let maps: Arc<Mutex<Vec<ClusterMap>>> = Arc::new(Mutex::new(Vec::new()));
    let phase = Arc::new(AtomicUsize::new(0));
    let (m, ph) = (maps.clone(), phase.clone());
    let mut puts = 0;
    let fake = Fake::start(
        2,
        Box::new(move |node, req| {
            let maps = m.lock().unwrap();
            let phase = ph.load(Ordering::SeqCst);
            match &req.op {
                Op::ClusterMap => {
                    let epoch = match (phase, node) {
                        (0, _) => 2,
                        (1, 2) => 3,
                        _ => 1,
                    };
                    let map = maps.iter().find(|m| m.epoch == epoch).unwrap().clone();
                    Action::Reply(Ok(Outcome::ClusterMap(map)))
                }
                Op::Put(_) => {
                    puts += 1;
                    match puts {
                        // The server is behind the client: no refresh, retry after a backoff.
                        1 => Action::Reply(Err(ServerError::StaleMap { epoch: 1 })),
                        // The server is ahead: refresh, past node 1's lagging map.
                        3 => Action::Reply(Err(ServerError::StaleMap { epoch: 3 })),
                        // Ask for a refresh that only finds older maps.
                        5 => Action::Reply(Err(ServerError::WrongShard { epoch: 3 })),
                        _ => put_ok(),
                    }
                }
                _ => Action::Reply(Err(ServerError::Internal {
                    reason: "unexpected".into(),
                })),
            }
        }),
    )
    .await;
    *maps.lock().unwrap() = vec![
        map_of(1, &fake.endpoints, &[1]),
        map_of(2, &fake.endpoints, &[1]),
        map_of(3, &fake.endpoints, &[2]),
    ];
    let map_fetches = || {
        fake.seen()
            .iter()
            .filter(|s| matches!(s.req.op, Op::ClusterMap))
            .count()
    };
    let client = Client::connect(config(&fake)).await.unwrap();
    assert_eq!(client.cluster_map().epoch, 2);

    client.put("a", "1").await.unwrap();
    assert_eq!(
        map_fetches(),
        1,
        "a server behind the client is no reason to refresh"
    );

    phase.store(1, Ordering::SeqCst);
    client.put("b", "2").await.unwrap();
    assert_eq!(client.cluster_map().epoch, 3);
    assert_eq!(
        map_fetches(),
        3,
        "node 1's epoch 1 map is not enough; node 2's is"
    );

    phase.store(2, Ordering::SeqCst);
    client.put("c", "3").await.unwrap();
    assert_eq!(
        map_fetches(),
        5,
        "a pass over both endpoints found only epoch 1"
    );
    assert_eq!(client.cluster_map().epoch, 3, "the newer map is kept");
    assert_eq!(client.cluster_map().partition(1).unwrap().leader_node, 2);

    let summary: Vec<(u64, u64)> = fake
        .data_requests()
        .iter()
        .map(|s| (s.node, s.req.map_epoch))
        .collect();
    assert_eq!(
        summary,
        [(1, 2), (1, 2), (1, 2), (2, 3), (2, 3), (2, 3)],
        "each put at the leader of the client's map, with its epoch"
    );
}

/// A node that answers `NotLeader` naming itself leads now (e.g. the write it refused was
/// overwritten by a newer leader's entry before this node was elected): the client retries
/// there at once, with the same sequence number, instead of refreshing the map and backing off.
#[tokio::test]
async fn not_leader_naming_the_answering_node_is_retried_there_at_once() {
    let map = shared_map();
    let m = map.clone();
    let mut refused = false;
    let fake = Fake::start(
        2,
        Box::new(move |node, req| match (&req.op, node) {
            (Op::ClusterMap, _) => {
                Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone())))
            }
            (Op::Put(_), 1) if !refused => {
                refused = true;
                Action::Reply(Err(ServerError::NotLeader {
                    leader_node: 1,
                    leader_endpoint: None,
                }))
            }
            (Op::Put(_), 1) => put_ok(),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(no_backoff_config(vec![fake.endpoints[0].clone()]))
        .await
        .unwrap();
    assert!(client.put("a", "1").await.unwrap().written);
    let seen = fake.data_requests();
    let summary: Vec<(u64, u64)> = seen.iter().map(|s| (s.node, s.req.seq)).collect();
    assert_eq!(summary, vec![(1, 1), (1, 1)]);
}

// ---- review issue 10 -------------------------------------------------------------------------

/// A server that cannot tell whether a write took effect answers `OutcomeUnknown`: the client
/// returns its outcome-unknown error (`Timeout`, as for a deadline that passed with the write in
/// flight), at once and without retrying, never a definite server error.
#[tokio::test]
async fn outcome_unknown_is_returned_as_unknown_at_once_and_never_retried() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            _ => Action::Reply(Err(ServerError::OutcomeUnknown {
                reason: "result dropped from the session cache".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    let started = std::time::Instant::now();
    let err = client.put("k", "v").await.unwrap_err();
    let ClientError::Timeout { attempts, last } = &err else {
        panic!("not the outcome-unknown error: {err:?}");
    };
    assert_eq!(*attempts, 1);
    assert!(
        last.contains("outcome unknown: result dropped from the session cache"),
        "{last}"
    );
    assert!(err.to_string().contains("outcome unknown"), "{err}");
    assert_eq!(fake.data_requests().len(), 1, "retried");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "waited for a deadline"
    );
}

/// A transaction goes through the log even when every op is a Get, so it carries a sequence
/// number like a write (the server refuses a session with sequence 0 for log commands).
#[tokio::test]
async fn a_read_only_txn_carries_a_sequence_number() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Txn(_) if req.session != 0 && req.seq == 0 => {
                Action::Reply(Err(ServerError::InvalidArgument {
                    reason: "a write with a session needs a sequence number >= 1".into(),
                }))
            }
            Op::Txn(_) => Action::Reply(Ok(Outcome::Txn(TxnResult {
                succeeded: true,
                results: vec![TxnOpResult::Get(None)],
                revision: 0,
            }))),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    let txn = Txn {
        compares: vec![],
        success: vec![TxnOp::Get { key: "a".into() }],
        failure: vec![],
    };
    let r = client.txn(txn).await.unwrap();
    assert!(r.succeeded);
    let seen = fake.data_requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].req.seq >= 1, "{:?}", seen[0].req);
    assert_eq!(seen[0].req.first_unacked, seen[0].req.seq);
}

/// Requests queued together are packed into frames by size: five concurrent 1 MiB puts (each
/// valid) on one connection all succeed, in frames the server accepts; a request too large
/// for any frame is refused locally with a typed error and never sent.
#[tokio::test]
async fn concurrent_large_puts_are_packed_into_frames_under_the_limit() {
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Put(_) => put_ok(),
            _ => Action::Reply(Err(ServerError::Internal {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    let limits = Limits::default();
    let value = Bytes::from(vec![b'v'; limits.value_bytes_max]);
    let puts = (0..5).map(|i| {
        let client = client.clone();
        let value = value.clone();
        async move { client.put(format!("big-{i}"), value).await }
    });
    for r in futures_join_all(puts).await {
        assert!(r.unwrap().written);
    }
    let seen = fake.data_requests();
    assert_eq!(seen.len(), 5);
    assert!(
        seen.iter().all(|s| s.frame_requests <= 3),
        "a frame holds at most 3 MiB of values: {:?}",
        seen.iter().map(|s| s.frame_requests).collect::<Vec<_>>()
    );
    assert_eq!(fake.conns.load(Ordering::SeqCst), 1, "one connection");

    // Five 1 MiB puts in one transaction: each value is valid, the request is not.
    let txn = Txn {
        compares: vec![],
        success: (0..5)
            .map(|i| {
                TxnOp::Put(Put {
                    key: format!("{{t}}k{i}").into(),
                    value: value.clone(),
                    if_absent: false,
                    return_previous: false,
                })
            })
            .collect(),
        failure: vec![],
    };
    let err = client.txn(txn).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Invalid(DecodeError::BodyTooLarge { .. })),
        "{err:?}"
    );
    assert_eq!(fake.data_requests().len(), 5, "sent anyway");
}

// ---- backups -----------------------------------------------------------------------------------

/// A backup chunk of partition 1: `total` bytes of copy `index` (each byte is the index), the
/// part `offset..offset + len`.
fn chunk_of(index: u64, total: u64, offset: u64, len: u64) -> Action {
    Action::Reply(Ok(Outcome::Backup(BackupChunk {
        partition: 1,
        index,
        term: 3,
        revision: index * 10,
        total_bytes: total,
        offset,
        data: Bytes::from(vec![index as u8; len as usize]),
    })))
}

/// The node that held a copy dropped it between two chunks (`BACKUP_COPY_GONE`): the client
/// takes a new copy and fetches that one from its start; any other `InvalidArgument` ends the
/// backup at once.
#[tokio::test]
async fn a_backup_copy_gone_between_chunks_is_taken_again() {
    let map = shared_map();
    let m = map.clone();
    let copies = Arc::new(AtomicUsize::new(0));
    let c = copies.clone();
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            // The first copy (index 10) is dropped after its first chunk; the second (index 11)
            // is served whole, 4 bytes a chunk.
            Op::Backup {
                index: 0,
                offset: 0,
                ..
            } => {
                let n = c.fetch_add(1, Ordering::SeqCst) as u64;
                chunk_of(10 + n, 10, 0, 4)
            }
            Op::Backup { index: 10, .. } => Action::Reply(Err(ServerError::InvalidArgument {
                reason: format!(
                    "{} partition 1 holds no backup copy at index 10",
                    client::BACKUP_COPY_GONE
                ),
            })),
            Op::Backup {
                index: 11, offset, ..
            } => chunk_of(11, 10, *offset, (10 - offset).min(4)),
            _ => Action::Reply(Err(ServerError::InvalidArgument {
                reason: "unexpected".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    let copy = client.backup_partition(1).await.expect("a whole copy");
    assert_eq!((copy.index, copy.revision), (11, 110));
    assert_eq!(copy.data, Bytes::from(vec![11u8; 10]));
    let asked: Vec<(u64, u64)> = fake
        .data_requests()
        .iter()
        .filter_map(|s| match s.req.op {
            Op::Backup { index, offset, .. } => Some((index, offset)),
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![(0, 0), (10, 4), (0, 0), (11, 4), (11, 8)]);

    // Another refusal is not a gone copy: returned, no new copy taken.
    let map = shared_map();
    let m = map.clone();
    let fake = Fake::start(
        1,
        Box::new(move |_, req| match &req.op {
            Op::ClusterMap => Action::Reply(Ok(Outcome::ClusterMap(m.lock().unwrap().clone()))),
            Op::Backup { index: 0, .. } => chunk_of(10, 10, 0, 4),
            _ => Action::Reply(Err(ServerError::InvalidArgument {
                reason: "offset 4 is past the end".into(),
            })),
        }),
    )
    .await;
    *map.lock().unwrap() = map_of(1, &fake.endpoints, &[1]);
    let client = Client::connect(config(&fake)).await.unwrap();
    let err = client.backup_partition(1).await.expect_err("refused");
    assert!(err.to_string().contains("past the end"), "{err}");
    let backups = fake
        .data_requests()
        .iter()
        .filter(|s| matches!(s.req.op, Op::Backup { .. }))
        .count();
    assert_eq!(backups, 2, "one copy taken, one chunk refused");
}
