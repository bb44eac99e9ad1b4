//! Little-endian cursor helpers shared by the command, response and snapshot encodings.
//!
//! Every read is bounds-checked and reports the absolute byte offset at which the input ran
//! short, so decoders can turn it into a typed error that names the offset. Nothing here panics
//! on any input.

use std::ops::Range;

/// The input ended before a field could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Truncated {
    /// Absolute offset of the field that could not be read.
    pub offset: usize,
    /// Bytes the field needs.
    pub needed: usize,
    /// Bytes that were left.
    pub available: usize,
    /// Which field.
    pub field: &'static str,
}

/// A bounds-checked little-endian reader over a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Current absolute offset.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Consumes `len` bytes and returns their range in the underlying slice.
    pub(crate) fn range(
        &mut self,
        len: usize,
        field: &'static str,
    ) -> Result<Range<usize>, Truncated> {
        let available = self.remaining();
        if len > available {
            return Err(Truncated {
                offset: self.pos,
                needed: len,
                available,
                field,
            });
        }
        let start = self.pos;
        self.pos += len;
        Ok(start..self.pos)
    }

    /// Consumes `len` bytes and returns them.
    pub(crate) fn slice(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], Truncated> {
        let r = self.range(len, field)?;
        Ok(&self.buf[r])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Truncated> {
        let s = self.slice(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, Truncated> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
}

pub(crate) fn put_u8(out: &mut Vec<u8>, v: u8) {
    out.push(v);
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Writes `u32 length | bytes`. Lengths are bounded by the limits checked before encoding;
/// a slice longer than `u32::MAX` cannot be represented and is a caller bug (checked).
pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("byte string longer than u32::MAX cannot be encoded");
    put_u32(out, len);
    out.extend_from_slice(b);
}
