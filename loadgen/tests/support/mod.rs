//! Helpers shared by the end-to-end tests: process liveness from /proc, and reading a report's
//! HdrHistogram interval log back.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

/// Whether `pid` is a live process (not a zombie, not reaped).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(false)
}

/// Standard base64 (with or without padding) to bytes.
pub fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = A.iter().position(|&x| x == c).expect("base64 character") as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    out
}

/// Total count per tag (`<system>/<case>/<kind>`) of the histograms in a report's
/// `histograms.hlog`, decoding every interval.
pub fn hlog_counts(report_dir: &Path) -> BTreeMap<String, u64> {
    let log = std::fs::read(report_dir.join("histograms.hlog")).unwrap();
    let mut de = Deserializer::new();
    let mut by_tag: BTreeMap<String, u64> = BTreeMap::new();
    for entry in IntervalLogIterator::new(&log) {
        if let LogEntry::Interval(iv) = entry.unwrap() {
            let bytes = base64_decode(iv.encoded_histogram());
            let h: Histogram<u64> = de.deserialize(&mut bytes.as_slice()).unwrap();
            *by_tag
                .entry(iv.tag().unwrap().as_str().to_string())
                .or_default() += h.len();
        }
    }
    by_tag
}
