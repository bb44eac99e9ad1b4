//! Fuzz target for frame and body decoding.
//!
//! The first input byte picks a mode:
//! - even: the rest is a byte stream for `FrameDecoder`, fed in chunks of `(byte0 >> 1) + 1`
//!   bytes; every frame it yields has its body decoded;
//! - odd: the rest is a body of kind `1 + (byte0 >> 1) % 3`, decoded directly (this lets the
//!   fuzzer reach the flatbuffers verifier without having to forge checksums).
//!
//! Either way: a typed error or a valid decode, never a panic. A body that decodes must
//! re-encode and decode to the same value.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use wire::{decode_body, Body, BodyEncoder, Frame, FrameDecoder, FrameKind, Limits};

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

fuzz_target!(|data: &[u8]| {
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
});
