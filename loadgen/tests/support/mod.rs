//! Helpers shared by the end-to-end tests: process liveness from /proc, reading a report's
//! HdrHistogram interval log back, and writing a report and checking every file of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use loadgen::report::{self, CaseSummary, Machine, Report};
use loadgen::runner::RunResult;

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

/// Writes a report of `runs` (a put, a get and an open-loop case of `system` against local
/// servers) under `out`, reads it back and checks it: summary.json holds each run's operation
/// count and CPU per operation, the interval log's counts equal every histogram's, and the
/// markdown page, plots and percentile files exist.
pub fn write_and_check_report(out: &Path, system: &str, data_dir: &Path, runs: &[&RunResult]) {
    let name = format!("{system}-e2e");
    let dir = report::create_report_dir(out, &name).unwrap();
    let rep = Report {
        name,
        created_unix_s: 0.0,
        commit: report::git_commit(),
        machine: Machine::describe(data_dir),
        command: "cargo test".into(),
        notes: vec![],
        cases: runs.iter().map(|r| CaseSummary::from_run(r)).collect(),
        ratios: None,
    };
    report::write_report(&dir, &rep, runs).unwrap();
    let back: Report =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        back.cases.iter().map(|c| c.ops).collect::<Vec<_>>(),
        runs.iter().map(|r| r.ops).collect::<Vec<_>>()
    );
    assert!(back
        .cases
        .iter()
        .all(|c| c.system == system && c.cpu_us_per_op.is_some()));
    let counts = hlog_counts(&dir);
    for r in runs {
        for (kind, h) in &r.per_kind {
            assert_eq!(
                counts[&format!("{system}/{}/{}", r.config.name, kind.name())],
                h.len()
            );
        }
    }
    for f in [
        "README.md".to_string(),
        "histograms.hlog".into(),
        "throughput.svg".into(),
        "latency-put.svg".into(),
        format!("{system}-get.hgrm"),
    ] {
        assert!(dir.join(&f).is_file(), "{f} missing");
    }
}
