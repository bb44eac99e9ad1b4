//! The checks the fuzz targets (`engine/fuzz`) run on each input, here so that the targets and
//! the replay test (`tests/fuzz_corpus.rs`) run the same code. Not part of the engine's API.
//!
//! Every check: a typed error or a valid decode, never a panic; a value that decodes must
//! encode to bytes that decode to the same value, and where the encoding is canonical (every
//! current format version), to the input itself.

use bytes::Bytes;

use crate::command::{self, Command};
use crate::meta::MetaMap;
use crate::snapshot;
use crate::state_machine::Config;

/// Target `snapshot`: [`snapshot::decode`] and [`snapshot::decode_meta`] on a snapshot file.
///
/// Byte 0 bit 0 set: the checksums and the body length in the rest are fixed up first (the
/// header's body length made to match the input, then both checksums computed), so the fuzzer
/// reaches the body rules instead of stopping at checksums. The snapshot is decoded for the
/// partition its header names (so a valid file is never refused as the wrong partition).
pub fn check_snapshot(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut file = rest.to_vec();
    if mode & 1 != 0 {
        fix_snapshot(&mut file);
    }
    let meta = snapshot::decode_meta(&file);
    let partition = file
        .get(16..24)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let Ok(snap) = snapshot::decode(&file, &Config::new(partition)) else {
        return;
    };
    snap.state
        .check_invariants()
        .expect("a decoded snapshot restores a state machine whose invariants hold");
    let (meta, total) = meta.expect("decode_meta accepts what decode accepts");
    assert_eq!(meta, snap.meta, "decode_meta and decode disagree");
    assert_eq!(
        total,
        file.len() as u64,
        "decode_meta's total is not the length"
    );
    let again = snapshot::encode(&snap.state, &snap.meta.membership);
    let snap2 = snapshot::decode(&again, &Config::new(partition)).expect("re-encoded decodes");
    assert_eq!(
        snap, snap2,
        "decode -> encode -> decode changed the snapshot"
    );
    if file[8..12] == snapshot::FORMAT_VERSION.to_le_bytes() {
        assert_eq!(
            &again[..],
            &file[..],
            "encoding of a current-version snapshot differs"
        );
    }
}

/// Makes the header's body length match `file`'s length (when the membership length fits)
/// and fills in the header and file checksums. Leaves a file shorter than the header alone.
pub fn fix_snapshot(file: &mut [u8]) {
    let (header, trailer) = (snapshot::HEADER_BYTES, snapshot::TRAILER_BYTES);
    if file.len() < header + trailer {
        return;
    }
    let membership = u32::from_le_bytes(file[48..52].try_into().expect("4 bytes")) as usize;
    if let Some(body) = (file.len() - header - trailer).checked_sub(membership) {
        file[52..60].copy_from_slice(&(body as u64).to_le_bytes());
    }
    let crc = crc32c::crc32c(&file[..60]);
    file[60..64].copy_from_slice(&crc.to_le_bytes());
    let end = file.len() - trailer;
    let crc = crc32c::crc32c(&file[..end]);
    file[end..].copy_from_slice(&crc.to_le_bytes());
}

/// Target `meta_map`: [`MetaMap::decode`] on a stored map.
///
/// Byte 0 bit 0 set: the trailing checksum of the rest is computed first.
pub fn check_meta_map(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut value = rest.to_vec();
    if mode & 1 != 0 && value.len() >= 4 {
        let end = value.len() - 4;
        let crc = crc32c::crc32c(&value[..end]);
        value[end..].copy_from_slice(&crc.to_le_bytes());
    }
    let Ok(map) = MetaMap::decode(&value) else {
        return;
    };
    let again = map.encode();
    assert_eq!(
        again.len(),
        map.encoded_len(),
        "encoded_len is not the length"
    );
    let map2 = MetaMap::decode(&again).expect("re-encoded map decodes");
    assert_eq!(map, map2, "decode -> encode -> decode changed the map");
    // Versions 2 and 3 are written back as they are; a version-1 map gains the session fields.
    if value[4] >= 2 {
        assert_eq!(
            &again[..],
            &value[..],
            "encoding of a version 2 or 3 map differs"
        );
    }
}

/// Target `command`: [`Command::decode`] on a log entry's payload.
///
/// Byte 0 bit 0 picks the limits: clear, [`command::Limits::FORMAT`] (what replicas use on
/// committed entries); set, [`command::Limits::default`] (the proposal path's).
pub fn check_command(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let limits = if mode & 1 == 0 {
        command::Limits::FORMAT
    } else {
        command::Limits::default()
    };
    let payload = Bytes::copy_from_slice(rest);
    let Ok(cmd) = Command::decode(&payload, &limits) else {
        return;
    };
    let again = cmd.encode();
    assert_eq!(
        again.len(),
        cmd.encoded_len(),
        "encoded_len is not the length"
    );
    assert_eq!(
        again, payload,
        "the encoding is canonical: it must give the input back"
    );
    let cmd2 = Command::decode(&again, &limits).expect("re-encoded command decodes");
    assert_eq!(cmd, cmd2, "decode -> encode -> decode changed the command");
}
