//! The checks the fuzz target (`wal/fuzz`, target `recovery`) runs on each input, here so that
//! the target and the replay test (`tests/fuzz_corpus.rs`) run the same code. Not part of the
//! WAL's API.
//!
//! Input: byte 0 is a mode, byte 1 a flags mask, then the segments.
//! - Mode bits 0-1: number of segments minus one (1 to 4). Every segment but the last is
//!   `len: u16 LE | len bytes` (cut short at the end of the input); the last takes the rest.
//! - Mode bit 2: the bytes of each segment are its records (from [`FIRST_RECORD_OFFSET`]): a
//!   valid header block for its number is put before them, with the seals flag if bit `i` of
//!   the flags byte is set. Otherwise the bytes are the whole file.
//! - Mode bit 3: record checksums are fixed: walking from the first record, each record that
//!   fits gets its padding zeroed and its checksum computed, so the fuzzer reaches the batch
//!   and index rules instead of stopping at checksums.
//!
//! Checks: recovery returns a typed error or a recovered state whose index invariants hold
//! (asserted in `recover_for_fuzzing`); every record that parses re-encodes to the same bytes,
//! and every entries payload that splits re-encodes to the same payload.

use zerocopy::{FromBytes, IntoBytes};

use crate::format::{
    encode_record, pad8, parse_record, split_entries, EntryHeader, Parsed, RecordHeader,
    SegmentHeader, BLOCK_BYTES, FIRST_RECORD_OFFSET, RECORD_HEADER_BYTES, SEGMENT_SEALS_EARLIER,
};

/// Splits a fuzz input into segment files (format in the module docs).
pub fn segments_of(input: &[u8]) -> Vec<Vec<u8>> {
    let (mode, flags, mut rest) = match input {
        [m, f, rest @ ..] => (*m, *f, rest),
        _ => return Vec::new(),
    };
    let count = usize::from(mode & 3) + 1;
    let mut raw = Vec::with_capacity(count);
    for _ in 0..count - 1 {
        let len = match rest {
            [a, b, tail @ ..] => {
                rest = tail;
                usize::from(u16::from_le_bytes([*a, *b]))
            }
            _ => 0,
        };
        let (seg, tail) = rest.split_at(len.min(rest.len()));
        raw.push(seg);
        rest = tail;
    }
    raw.push(rest);
    raw.into_iter()
        .zip(1u64..)
        .map(|(bytes, no)| {
            let mut seg = Vec::new();
            if mode & 4 != 0 {
                let seals = if flags >> ((no - 1) % 8) & 1 != 0 {
                    SEGMENT_SEALS_EARLIER
                } else {
                    0
                };
                let size = FIRST_RECORD_OFFSET + (bytes.len() as u64).next_multiple_of(BLOCK_BYTES);
                seg.extend_from_slice(SegmentHeader::new(no, size, seals).as_bytes());
                seg.resize(FIRST_RECORD_OFFSET as usize, 0);
            }
            seg.extend_from_slice(bytes);
            if mode & 8 != 0 {
                fix_checksums(&mut seg);
            }
            seg
        })
        .collect()
}

/// Gives every record that fits, walking from the first, zero padding and a valid checksum.
pub fn fix_checksums(seg: &mut [u8]) {
    let mut pos = FIRST_RECORD_OFFSET as usize;
    while let Some(hb) = seg.get(pos..pos + RECORD_HEADER_BYTES) {
        if hb.iter().all(|&b| b == 0) {
            return;
        }
        let Ok((h, _)) = RecordHeader::read_from_prefix(hb) else {
            return;
        };
        let payload_len = h.payload_len.get() as usize;
        let end = pos + RECORD_HEADER_BYTES + pad8(payload_len);
        if end > seg.len() {
            return;
        }
        seg[pos + RECORD_HEADER_BYTES + payload_len..end].fill(0);
        let crc = crc32c::crc32c(&seg[pos + 4..pos + RECORD_HEADER_BYTES + payload_len]);
        seg[pos..pos + 4].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
}

/// Re-encodes every record that parses (walking from the first) and checks the bytes match.
fn check_records(seg: &[u8]) {
    let mut pos = FIRST_RECORD_OFFSET as usize;
    while pos < seg.len() {
        let Parsed::Record(h, total) = parse_record(&seg[pos..]) else {
            return;
        };
        let payload_len = h.payload_len.get() as usize;
        let payload = &seg[pos + RECORD_HEADER_BYTES..pos + RECORD_HEADER_BYTES + payload_len];
        let mut again = Vec::new();
        encode_record(&mut again, h, payload_len, |out| {
            out.extend_from_slice(payload)
        });
        assert_eq!(
            again,
            seg[pos..pos + total],
            "record at {pos} re-encodes differently"
        );
        if let Ok(spans) = split_entries(payload, h.count.get()) {
            let mut p = Vec::with_capacity(payload.len());
            for (term, kind, start, len) in spans {
                let eh = EntryHeader {
                    term: term.into(),
                    data_len: (len as u32).into(),
                    kind,
                    reserved: [0; 3],
                };
                p.extend_from_slice(eh.as_bytes());
                p.extend_from_slice(&payload[start..start + len]);
            }
            assert_eq!(
                p, payload,
                "entries payload at {pos} re-encodes differently"
            );
        }
        pos += total;
    }
}

/// Runs one fuzz input: never panics unless a check fails (module docs).
pub fn check(input: &[u8]) {
    let segments = segments_of(input);
    if segments.is_empty() {
        return;
    }
    for seg in &segments {
        check_records(seg);
    }
    let _ = crate::wal::recover_for_fuzzing(&segments);
}
