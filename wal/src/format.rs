//! The on-disk format, version 1. Byte layouts are documented in the crate docs
//! ("On-disk format") and pinned here with compile-time size asserts.
//!
//! All integers are little-endian. Records are 8-byte aligned inside a segment.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Segment files and records are written in units of this many bytes (O_DIRECT alignment).
pub const BLOCK_BYTES: u64 = 4096;
/// Magic bytes at offset 0 of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"CORUMWAL";
/// The on-disk format version written by this crate.
pub const FORMAT_VERSION: u32 = 1;
/// Records start at this offset in a segment (the first block holds the segment header).
pub const FIRST_RECORD_OFFSET: u64 = BLOCK_BYTES;
/// Size of a record header in bytes.
pub const RECORD_HEADER_BYTES: usize = 48;
/// Size of the per-entry header inside an entries payload.
pub const ENTRY_HEADER_BYTES: usize = 16;
/// Size of the segment header in bytes.
pub const SEGMENT_HEADER_BYTES: usize = 40;

/// Record kinds (byte 4 of a record header). 0 never appears: a zero header is the end of data.
pub mod kind {
    /// A run of entries of one partition with contiguous indexes.
    pub const ENTRIES: u8 = 1;
    /// A partition's hard state (term, vote, commit).
    pub const HARD_STATE: u8 = 2;
    /// The partition was snapshotted/compacted at (index, term): entries <= index are gone.
    pub const SNAPSHOT: u8 = 3;
    /// The partition discarded its entries >= index (a conflicting suffix).
    pub const TRUNCATE: u8 = 4;
    /// The last record of every batch (one write + one fdatasync); its presence makes the batch count.
    pub const BATCH_END: u8 = 5;
}

/// Segment header flag: the segment was created by `Wal::open` after recovery. Since the open
/// continues writing in the last segment (crate docs, "Where writing continues"), it is written
/// only when that is not possible (no segment, or a last file cut short); recovery still honours
/// it in segments written by earlier versions, which started one such segment per open.
pub const SEGMENT_SEALS_EARLIER: u32 = 1;

/// The segment header at offset 0 of every segment file (the rest of block 0 is zero).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
#[repr(C)]
pub struct SegmentHeader {
    /// `b"CORUMWAL"`.
    pub magic: [u8; 8],
    /// Format version ([`FORMAT_VERSION`]).
    pub version: U32,
    /// Size of this header in bytes (40).
    pub header_bytes: U32,
    /// Segment number (also the file name), starting at 1.
    pub segment_no: U64,
    /// Configured segment size in bytes at creation.
    pub segment_bytes: U64,
    /// Bit 0 ([`SEGMENT_SEALS_EARLIER`]): created by `Wal::open` after recovery, so every earlier
    /// segment was complete and cannot hold a torn tail. Other bits zero.
    pub flags: U32,
    /// crc32c of bytes 0..36.
    pub crc: U32,
}
const _: () = assert!(size_of::<SegmentHeader>() == SEGMENT_HEADER_BYTES);

impl SegmentHeader {
    /// A header for segment `segment_no`, checksum filled in.
    pub fn new(segment_no: u64, segment_bytes: u64, flags: u32) -> Self {
        let mut h = SegmentHeader {
            magic: SEGMENT_MAGIC,
            version: FORMAT_VERSION.into(),
            header_bytes: (SEGMENT_HEADER_BYTES as u32).into(),
            segment_no: segment_no.into(),
            segment_bytes: segment_bytes.into(),
            flags: flags.into(),
            crc: 0.into(),
        };
        h.crc = crc32c::crc32c(&h.as_bytes()[..36]).into();
        h
    }

    /// Checks magic, version, checksum and number. Returns a reason on failure.
    pub fn validate(bytes: &[u8], segment_no: u64) -> Result<SegmentHeader, String> {
        let Ok((h, _)) = SegmentHeader::read_from_prefix(bytes) else {
            return Err(format!(
                "segment shorter than its {SEGMENT_HEADER_BYTES}-byte header"
            ));
        };
        if h.magic != SEGMENT_MAGIC {
            return Err("bad segment magic".into());
        }
        if crc32c::crc32c(&h.as_bytes()[..36]) != h.crc.get() {
            return Err("segment header checksum mismatch".into());
        }
        if h.version.get() != FORMAT_VERSION {
            return Err(format!("unsupported format version {}", h.version.get()));
        }
        if h.segment_no.get() != segment_no {
            return Err(format!(
                "header names segment {} but file is segment {segment_no}",
                h.segment_no.get()
            ));
        }
        Ok(h)
    }
}

/// The fixed header of every record. See the crate docs for the meaning per kind.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct RecordHeader {
    /// crc32c over bytes 4..48 of this header followed by the payload.
    pub crc: U32,
    /// One of [`kind`].
    pub kind: u8,
    /// Zero (reserved for flags).
    pub flags: u8,
    /// Zero.
    pub reserved: U16,
    /// Payload length in bytes (excluding the header and padding).
    pub payload_len: U32,
    /// Entries: number of entries. BATCH_END: number of records in the batch before it.
    pub count: U32,
    /// Batch sequence number; every record of one write carries the same one; increases by 1.
    pub batch_seq: U64,
    /// Partition id (0 for BATCH_END).
    pub partition: U64,
    /// Entries: first index. SNAPSHOT: snapshot index. TRUNCATE: first discarded index.
    /// BATCH_END: byte length of the batch before this record.
    pub index: U64,
    /// SNAPSHOT: snapshot term. Otherwise 0.
    pub term: U64,
}
const _: () = assert!(size_of::<RecordHeader>() == RECORD_HEADER_BYTES);

/// The per-entry header inside an ENTRIES payload, followed by `data_len` bytes of data.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Clone, Copy, Debug)]
#[repr(C)]
pub struct EntryHeader {
    /// The entry's term.
    pub term: U64,
    /// Length of the entry's data.
    pub data_len: U32,
    /// Opaque kind byte (the engine stores the Raft entry type here).
    pub kind: u8,
    /// Zero.
    pub reserved: [u8; 3],
}
const _: () = assert!(size_of::<EntryHeader>() == ENTRY_HEADER_BYTES);

/// Rounds `n` up to a multiple of 8.
pub fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

/// Total on-disk bytes of a record with `payload_len` bytes of payload.
pub fn record_bytes(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + pad8(payload_len)
}

/// Appends one record (header, payload, zero padding) to `out`, computing the checksum.
/// `payload` is given as parts to avoid a copy. Returns the record's offset in `out`.
pub fn encode_record(
    out: &mut Vec<u8>,
    mut h: RecordHeader,
    payload_len: usize,
    payload: impl FnOnce(&mut Vec<u8>),
) -> usize {
    let start = out.len();
    h.payload_len = (payload_len as u32).into();
    h.crc = 0.into();
    out.extend_from_slice(h.as_bytes());
    payload(out);
    debug_assert_eq!(out.len() - start - RECORD_HEADER_BYTES, payload_len);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + record_bytes(payload_len), 0);
    start
}

/// Outcome of looking at the bytes at a record position.
#[derive(Debug)]
pub enum Parsed {
    /// Header bytes all zero (or fewer than a header left): end of data.
    End,
    /// A valid record: header and total on-disk length.
    Record(RecordHeader, usize),
    /// Not a valid record; the reason.
    Bad(String),
}

/// Parses and verifies the record at the start of `buf` (which extends to the end of the
/// segment's data). Never panics on arbitrary bytes.
pub fn parse_record(buf: &[u8]) -> Parsed {
    if buf.len() < RECORD_HEADER_BYTES {
        return if buf.iter().all(|&b| b == 0) {
            Parsed::End
        } else {
            Parsed::Bad("truncated record header".into())
        };
    }
    let hb = &buf[..RECORD_HEADER_BYTES];
    if hb.iter().all(|&b| b == 0) {
        return Parsed::End;
    }
    let Ok((h, _)) = RecordHeader::read_from_prefix(hb) else {
        return Parsed::Bad("unreadable header".into());
    };
    if !(kind::ENTRIES..=kind::BATCH_END).contains(&h.kind) {
        return Parsed::Bad(format!("unknown record kind {}", h.kind));
    }
    if h.flags != 0 || h.reserved.get() != 0 {
        return Parsed::Bad("nonzero reserved header bytes".into());
    }
    let payload_len = h.payload_len.get() as usize;
    let total = record_bytes(payload_len);
    if total > buf.len() {
        return Parsed::Bad(format!(
            "record length {total} runs past the end of the segment"
        ));
    }
    let crc = crc32c::crc32c(&buf[4..RECORD_HEADER_BYTES + payload_len]);
    if crc != h.crc.get() {
        return Parsed::Bad("checksum mismatch".into());
    }
    if buf[RECORD_HEADER_BYTES + payload_len..total]
        .iter()
        .any(|&b| b != 0)
    {
        return Parsed::Bad("nonzero padding".into());
    }
    Parsed::Record(h, total)
}

/// One entry decoded from an ENTRIES payload: (term, kind, data offset in payload, data length).
pub type EntrySpan = (u64, u8, usize, usize);

/// Splits an ENTRIES payload into `count` entries. Returns a reason if the payload is malformed.
pub fn split_entries(payload: &[u8], count: u32) -> Result<Vec<EntrySpan>, String> {
    // Bounded by what the payload can hold, not by the (untrusted) count.
    let mut out = Vec::with_capacity((count as usize).min(payload.len() / ENTRY_HEADER_BYTES));
    let mut pos = 0usize;
    for i in 0..count {
        let Some(hb) = payload.get(pos..pos + ENTRY_HEADER_BYTES) else {
            return Err(format!("entry {i}: header past the end of the payload"));
        };
        let Ok((eh, _)) = EntryHeader::read_from_prefix(hb) else {
            return Err(format!("entry {i}: unreadable header"));
        };
        if eh.reserved != [0; 3] {
            // Zero as written; anything else is not this format version's entry.
            return Err(format!("entry {i}: nonzero reserved header bytes"));
        }
        let len = eh.data_len.get() as usize;
        let start = pos + ENTRY_HEADER_BYTES;
        if start + len > payload.len() {
            return Err(format!("entry {i}: data past the end of the payload"));
        }
        out.push((eh.term.get(), eh.kind, start, len));
        pos = start + len;
    }
    if pos != payload.len() {
        return Err(format!(
            "{} trailing payload bytes after {count} entries",
            payload.len() - pos
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte positions documented in the crate docs are the ones the code writes.
    #[test]
    fn record_layout_matches_the_docs() {
        let mut out = Vec::new();
        let h = RecordHeader {
            kind: kind::ENTRIES,
            count: 1.into(),
            batch_seq: 0x1122_3344_5566_7788.into(),
            partition: 0x0102_0304_0506_0708.into(),
            index: 42.into(),
            term: 0.into(),
            ..Default::default()
        };
        let payload_len = ENTRY_HEADER_BYTES + 3;
        encode_record(&mut out, h, payload_len, |o| {
            let eh = EntryHeader {
                term: 9.into(),
                data_len: 3.into(),
                kind: 7,
                reserved: [0; 3],
            };
            o.extend_from_slice(eh.as_bytes());
            o.extend_from_slice(b"abc");
        });
        let u32_at = |i: usize| u32::from_le_bytes(out[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(out[i..i + 8].try_into().unwrap());
        assert_eq!(out.len(), 48 + 24, "header + 19 payload bytes padded to 24");
        assert_eq!(u32_at(0), crc32c::crc32c(&out[4..48 + payload_len]));
        assert_eq!(out[4], kind::ENTRIES);
        assert_eq!((out[5], out[6], out[7]), (0, 0, 0));
        assert_eq!(u32_at(8), payload_len as u32);
        assert_eq!(u32_at(12), 1);
        assert_eq!(u64_at(16), 0x1122_3344_5566_7788);
        assert_eq!(u64_at(24), 0x0102_0304_0506_0708);
        assert_eq!(u64_at(32), 42);
        assert_eq!(u64_at(40), 0);
        // Entry: term u64 | data_len u32 | kind u8 | reserved [u8; 3] | data.
        assert_eq!(u64_at(48), 9);
        assert_eq!(u32_at(56), 3);
        assert_eq!(out[60], 7);
        assert_eq!(&out[64..67], b"abc");
        assert!(out[67..].iter().all(|&b| b == 0));
        match parse_record(&out) {
            Parsed::Record(p, total) => assert_eq!((p.index.get(), total), (42, 72)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            split_entries(&out[48..48 + payload_len], 1).unwrap(),
            vec![(9, 7, 16, 3)]
        );
    }

    /// Found by fuzzing (`wal/fuzz/regressions/recovery/entry-reserved-bytes`): an entry
    /// header with nonzero reserved bytes was accepted (and could never be written back as
    /// read), where the record header's reserved bytes are refused.
    #[test]
    fn entry_headers_with_nonzero_reserved_bytes_are_refused() {
        let mut payload = Vec::new();
        let eh = EntryHeader {
            term: 2.into(),
            data_len: 1.into(),
            kind: 0,
            reserved: [0, 1, 0],
        };
        payload.extend_from_slice(eh.as_bytes());
        payload.push(b'x');
        let e = split_entries(&payload, 1).unwrap_err();
        assert!(e.contains("reserved"), "{e}");
        payload[14] = 0;
        assert_eq!(split_entries(&payload, 1).unwrap(), vec![(2, 0, 16, 1)]);
    }

    /// Found by fuzzing (`wal/fuzz/regressions/recovery/entries-count-allocation`): the entry
    /// count of a record reserved room for that many entries before reading any, so a record
    /// claiming 4 billion entries in an empty payload asked for ~96 GiB and aborted the process.
    #[test]
    fn an_absurd_entry_count_is_an_error_not_an_allocation() {
        let e = split_entries(&[], u32::MAX).unwrap_err();
        assert!(e.contains("entry 0"), "{e}");
        let e = split_entries(&[0; ENTRY_HEADER_BYTES], u32::MAX).unwrap_err();
        assert!(e.contains("entry 1"), "{e}");
    }

    #[test]
    fn segment_header_layout_matches_the_docs() {
        let h = SegmentHeader::new(5, 64 << 20, SEGMENT_SEALS_EARLIER);
        let b = h.as_bytes();
        assert_eq!(&b[0..8], b"CORUMWAL");
        assert_eq!(
            u32::from_le_bytes(b[8..12].try_into().unwrap()),
            FORMAT_VERSION
        );
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 40);
        assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 5);
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 64 << 20);
        assert_eq!(u32::from_le_bytes(b[32..36].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_le_bytes(b[36..40].try_into().unwrap()),
            crc32c::crc32c(&b[..36])
        );
        assert!(SegmentHeader::validate(b, 5).is_ok());
        assert!(SegmentHeader::validate(b, 6).is_err());
        assert!(SegmentHeader::validate(&b[..20], 5).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut x = 1u64;
        for len in [0usize, 1, 47, 48, 49, 100, 4096] {
            for _ in 0..200 {
                let buf: Vec<u8> = (0..len)
                    .map(|_| {
                        x = x
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (x >> 56) as u8
                    })
                    .collect();
                let _ = parse_record(&buf);
                let _ = split_entries(&buf, (x >> 60) as u32);
                let _ = SegmentHeader::validate(&buf, 1);
            }
        }
    }
}
