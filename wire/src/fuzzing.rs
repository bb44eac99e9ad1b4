//! The checks the fuzz targets (`wire/fuzz`) run on each input, here so that the targets and
//! the replay test (`tests/fuzz_corpus.rs`) run the same code. Not part of the protocol's API.
//!
//! Every check: a typed error or a valid decode, never a panic; a value that decodes must
//! re-encode and decode to the same value.

use bytes::{Bytes, BytesMut};

use crate::{
    decode_body, decode_peer_batch, Body, BodyEncoder, Frame, FrameDecoder, FrameKind, Limits,
};

fn check_body(frame: &Frame, limits: &Limits) {
    let Ok(body) = decode_body(frame, limits) else {
        return;
    };
    let mut enc = BodyEncoder::new();
    let again = Bytes::copy_from_slice(match &body {
        Body::Requests(r) => enc.requests(r),
        Body::Responses(r) => enc.responses(r),
        Body::Peer(p) => enc.peer_batch(p),
    });
    let frame2 = Frame {
        kind: frame.kind,
        request_id: frame.request_id,
        body: again,
    };
    let body2 = decode_body(&frame2, limits).expect("re-encoded body must decode");
    assert_eq!(body, body2, "decode -> encode -> decode changed the value");
}

/// Target `decode`: frame splitting and body decoding of all three frame kinds.
///
/// The first input byte picks a mode:
/// - even: the rest is a byte stream for `FrameDecoder`, fed in chunks of `(byte0 >> 1) + 1`
///   bytes; every frame it yields has its body decoded;
/// - odd: the rest is a body of kind `1 + (byte0 >> 1) % 3`, decoded directly (this lets the
///   fuzzer reach the flatbuffers verifier without having to forge checksums).
pub fn check_decode(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        frame_bytes_max: 1 << 20,
        ..Limits::default()
    };
    if mode & 1 == 0 {
        let chunk = usize::from(mode >> 1) + 1;
        let dec = FrameDecoder::new(limits);
        let mut buf = BytesMut::new();
        for piece in rest.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(frame)) => check_body(&frame, &limits),
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    } else {
        let kind = FrameKind::from_u8(1 + (mode >> 1) % 3).expect("1..=3 are kinds");
        let frame = Frame {
            kind,
            request_id: 0,
            body: Bytes::copy_from_slice(rest),
        };
        check_body(&frame, &limits);
    }
}

/// Target `peer`: [`decode_peer_batch`] alone, the decoder the peer port runs on every frame.
///
/// Byte 0 picks the limits: bit 0 clear, the defaults (what a node with default tuning uses);
/// set, tight ones (few items, short keys and values, shallow verification) so the fuzzer also
/// reaches the limit checks. The rest is the body. A batch that decodes must encode to a body
/// that decodes to the same batch, and to a peer frame that `FrameDecoder` splits back whole.
pub fn check_peer(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limits = if mode & 1 == 0 {
        Limits::default()
    } else {
        Limits {
            frame_bytes_max: 64 << 10,
            key_bytes_max: 16,
            value_bytes_max: 64,
            batch_items_max: 4,
            verify_depth_max: 8,
            verify_tables_max: 64,
        }
    };
    let body = Bytes::copy_from_slice(rest);
    let Ok(batch) = decode_peer_batch(&body, &limits) else {
        return;
    };
    let mut enc = BodyEncoder::new();
    let again = Bytes::copy_from_slice(enc.peer_batch(&batch));
    let batch2 = decode_peer_batch(&again, &limits).expect("re-encoded batch must decode");
    assert_eq!(
        batch, batch2,
        "decode -> encode -> decode changed the batch"
    );
    let mut stream = BytesMut::new();
    if enc.peer_frame(&mut stream, 7, &batch, &limits).is_ok() {
        let frame = FrameDecoder::new(limits)
            .decode(&mut stream)
            .expect("an encoded frame splits")
            .expect("an encoded frame is whole");
        assert!(stream.is_empty(), "bytes left after one encoded frame");
        assert_eq!((frame.kind, frame.request_id), (FrameKind::PeerMessages, 7));
        let batch3 = decode_peer_batch(&frame.body, &limits).expect("framed batch must decode");
        assert_eq!(batch, batch3, "framed batch changed");
    }
}
