//! The decoders never panic: arbitrary bytes and mutated valid frames give a typed error or a
//! valid decode.

mod common;

use bytes::BytesMut;
use common::*;
use proptest::prelude::*;
use wire::*;

/// Feeds `bytes` to the frame decoder in chunks and decodes every frame it yields.
/// Returns how many frames decoded fully.
fn feed(bytes: &[u8], chunk: usize) -> usize {
    let limits = Limits::default();
    let dec = FrameDecoder::new(limits);
    let mut buf = BytesMut::new();
    let mut ok = 0;
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if decode_body(&frame, &limits).is_ok() {
                        ok += 1;
                    }
                }
                Ok(None) => break,
                Err(_) => return ok, // the connection would be closed here
            }
        }
    }
    ok
}

/// Encodes one frame of each kind.
fn valid_frames(reqs: &[Request], resp: &ResponseBatch, peer: &PeerBatch) -> Vec<BytesMut> {
    let limits = Limits::default();
    let mut enc = BodyEncoder::new();
    let mut a = BytesMut::new();
    enc.request_frame(&mut a, 1, reqs, &limits).unwrap();
    let mut b = BytesMut::new();
    enc.response_frame(&mut b, 2, resp, &limits).unwrap();
    let mut c = BytesMut::new();
    enc.peer_frame(&mut c, 3, peer, &limits).unwrap();
    vec![a, b, c]
}

/// Rewrites both checksums so that a mutated body reaches the flatbuffers verifier.
fn fix_checksums(frame: &mut [u8]) {
    if frame.len() < HEADER_BYTES {
        return;
    }
    let crc = crc32c::crc32c(&frame[HEADER_BYTES..]);
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
    let body_len = (frame.len() - HEADER_BYTES) as u32;
    frame[8..12].copy_from_slice(&body_len.to_le_bytes());
    let hcrc = crc32c::crc32c(&frame[..24]);
    frame[24..28].copy_from_slice(&hcrc.to_le_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..64) {
        feed(&bytes, chunk);
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        kind in 1u8..4,
    ) {
        let limits = Limits::default();
        let mut out = BytesMut::new();
        encode_frame(&mut out, FrameKind::from_u8(kind).unwrap(), 5, &body, &limits).unwrap();
        let frame = FrameDecoder::new(limits).decode(&mut out).unwrap().unwrap();
        let _ = decode_body(&frame, &limits);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        reqs in proptest::collection::vec(request(), 1..4),
        resp in response_batch(),
        peer in peer_batch(),
        which in 0usize..3,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        fix in any::<bool>(),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut frame = valid_frames(&reqs, &resp, &peer).swap_remove(which);
        let whole = frame.len();
        let decoded_clean = feed(&frame, whole);
        prop_assert_eq!(decoded_clean, 1);
        for (at, x) in &flips {
            let i = at.index(frame.len());
            frame[i] ^= x | 1;
        }
        if truncate {
            frame.truncate(cut.index(whole));
        }
        if fix {
            fix_checksums(&mut frame);
        }
        feed(&frame, 7);
    }
}

#[test]
fn flipped_body_byte_without_fixing_crc_is_bad_checksum() {
    let limits = Limits::default();
    let mut enc = BodyEncoder::new();
    let mut out = BytesMut::new();
    enc.request_frame(
        &mut out,
        1,
        &[Request {
            id: 1,
            session: 0,
            seq: 0,
            map_epoch: 0,
            op: Op::Status,
        }],
        &limits,
    )
    .unwrap();
    let last = out.len() - 1;
    out[last] ^= 0x40;
    assert!(matches!(
        FrameDecoder::new(limits).decode(&mut out),
        Err(FrameError::BadChecksum { request_id: 1, .. })
    ));
}
