//! Key -> slot hashing, shared by the client and the server.
//!
//! `slot_of(key) = crc32c(hashed part of key) mod 16384`. Like Redis Cluster, when the key
//! contains a `{`, a later `}`, and at least one byte between them, only the bytes between the
//! first `{` and the first `}` after it are hashed (a "hash tag"), so `{user42}.name` and
//! `{user42}.mail` land in the same slot, hence the same partition, and can share a transaction.

/// Number of slots in the key space. Fixed: changing it moves every key.
pub const SLOT_COUNT: u16 = 16384;

/// The part of `key` that is hashed: the hash tag when there is a non-empty one, else the key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        let rest = &key[open + 1..];
        if let Some(close) = rest.iter().position(|&b| b == b'}') {
            if close > 0 {
                return &rest[..close];
            }
        }
    }
    key
}

/// The slot of `key`, in `0..SLOT_COUNT`.
pub fn slot_of(key: &[u8]) -> u16 {
    (crc32c::crc32c(hash_tag(key)) % u32::from(SLOT_COUNT)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags() {
        assert_eq!(hash_tag(b"{user42}.name"), b"user42");
        assert_eq!(hash_tag(b"a{b}c{d}"), b"b");
        assert_eq!(hash_tag(b"{}x"), b"{}x");
        assert_eq!(hash_tag(b"{x"), b"{x");
        assert_eq!(hash_tag(b"x}{y}"), b"y");
        assert_eq!(hash_tag(b"plain"), b"plain");
        assert_eq!(slot_of(b"{user42}.name"), slot_of(b"{user42}.mail"));
        assert_eq!(slot_of(b"{user42}.name"), slot_of(b"user42"));
        // Pinned values: the slot function is part of the protocol.
        assert_eq!(slot_of(b""), 0);
        assert_eq!(u32::from(slot_of(b"123456789")), 0xE306_9283 % 16384);
    }

    #[test]
    fn spreads_keys() {
        let mut seen = vec![0u32; usize::from(SLOT_COUNT)];
        for i in 0..100_000u32 {
            seen[usize::from(slot_of(format!("key-{i}").as_bytes()))] += 1;
        }
        let used = seen.iter().filter(|&&n| n > 0).count();
        assert!(used > 16000, "only {used} slots used");
        assert!(seen.iter().all(|&n| n < 40));
    }
}
