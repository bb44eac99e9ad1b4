//! Codec throughput: encode and decode of client and peer batches, and slot hashing.
//! Prints one JSON object (figures per item); no pass/fail.
//!
//! Run: `cargo bench -p wire --bench codec`

use std::hint::black_box;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use wire::*;

fn time_per_item(items: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters / 10 + 1 {
        f(); // warm up
    }
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    start.elapsed().as_nanos() as f64 / (iters * items) as f64
}

fn main() {
    let limits = Limits::default();
    let mut enc = BodyEncoder::new();
    let value = Bytes::from(vec![7u8; 128]);
    let reqs: Vec<Request> = (0..256u64)
        .map(|i| Request {
            id: i,
            session: 1,
            seq: i,
            map_epoch: 1,
            op: Op::Put(Put {
                key: Bytes::from(format!("key-{i:012}")),
                value: value.clone(),
                ..Put::default()
            }),
        })
        .collect();
    let mut out = BytesMut::with_capacity(1 << 20);
    let encode_put_ns = time_per_item(reqs.len(), 2000, || {
        out.clear();
        enc.request_frame(&mut out, 1, black_box(&reqs), &limits)
            .unwrap();
    });
    out.clear();
    enc.request_frame(&mut out, 1, &reqs, &limits).unwrap();
    let frame_bytes = out.len();
    let wire_frame = out.clone().freeze();
    let dec = FrameDecoder::new(limits);
    let decode_put_ns = time_per_item(reqs.len(), 2000, || {
        let mut buf = BytesMut::from(&wire_frame[..]);
        let frame = dec.decode(&mut buf).unwrap().unwrap();
        black_box(decode_requests(&frame.body, &limits).unwrap());
    });

    let entry = Entry {
        index: 1,
        term: 1,
        kind: 0,
        data: Bytes::from(vec![1u8; 256]),
    };
    let peer = PeerBatch {
        from_node: 1,
        to_node: 2,
        messages: (0..64u64)
            .map(|p| {
                let mut m = RaftMessage::new(MessageKind::Append);
                m.entries = vec![entry.clone(); 4];
                (p, m)
            })
            .collect(),
    };
    let encode_peer_ns = time_per_item(64, 2000, || {
        out.clear();
        enc.peer_frame(&mut out, 1, black_box(&peer), &limits)
            .unwrap();
    });
    out.clear();
    enc.peer_frame(&mut out, 1, &peer, &limits).unwrap();
    let peer_frame = out.clone().freeze();
    let decode_peer_ns = time_per_item(64, 2000, || {
        let mut buf = BytesMut::from(&peer_frame[..]);
        let frame = dec.decode(&mut buf).unwrap().unwrap();
        black_box(decode_peer_batch(&frame.body, &limits).unwrap());
    });

    let keys: Vec<String> = (0..4096).map(|i| format!("user:{i:08}:profile")).collect();
    let slot_ns = time_per_item(keys.len(), 2000, || {
        for k in &keys {
            black_box(slot_of(black_box(k.as_bytes())));
        }
    });

    println!(
        "{{\"put_batch\":{{\"requests\":256,\"key_bytes\":16,\"value_bytes\":128,\"frame_bytes\":{frame_bytes},\
         \"encode_ns_per_request\":{encode_put_ns:.1},\"frame_and_decode_ns_per_request\":{decode_put_ns:.1}}},\
         \"peer_batch\":{{\"messages\":64,\"entries_per_message\":4,\"entry_bytes\":256,\"frame_bytes\":{},\
         \"encode_ns_per_message\":{encode_peer_ns:.1},\"frame_and_decode_ns_per_message\":{decode_peer_ns:.1}}},\
         \"slot_of\":{{\"key_bytes\":21,\"ns_per_key\":{slot_ns:.1}}}}}",
        peer_frame.len()
    );
}
