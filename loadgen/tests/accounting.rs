//! The runner's accounting: open loop without coordinated omission, histogram counts equal to
//! the operations the target served, warm-up excluded, and reports that parse back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

use loadgen::report::{self, CaseSummary, Machine, Report};
use loadgen::runner::{run, RunConfig};
use loadgen::target::mem::MemTarget;
use loadgen::target::{Connection, Consistency, OpError, Target, TargetError, Versioned};
use loadgen::workload::Workload;

/// The in-process store, with one server-wide stall: the `stall_at`-th operation to arrive
/// blocks every operation (itself and all that arrive until the stall ends) for `stall`.
#[derive(Clone)]
struct StallTarget {
    inner: MemTarget,
    arrived: Arc<AtomicU64>,
    served: Arc<AtomicU64>,
    stall_at: u64,
    stall: Duration,
    stall_until: Arc<Mutex<Option<Instant>>>,
}

impl StallTarget {
    fn new(stall_at: u64, stall: Duration) -> Self {
        StallTarget {
            inner: MemTarget::new(),
            arrived: Arc::new(AtomicU64::new(0)),
            served: Arc::new(AtomicU64::new(0)),
            stall_at,
            stall,
            stall_until: Arc::new(Mutex::new(None)),
        }
    }

    async fn gate(&self) {
        let n = self.arrived.fetch_add(1, Ordering::SeqCst);
        let until = {
            let mut g = self.stall_until.lock().unwrap();
            if n == self.stall_at {
                *g = Some(Instant::now() + self.stall);
            }
            *g
        };
        if let Some(u) = until {
            if u > Instant::now() {
                tokio::time::sleep_until(u.into()).await;
            }
        }
    }

    fn served<T>(&self, r: Result<T, OpError>) -> Result<T, OpError> {
        if r.is_ok() {
            self.served.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
}

impl Target for StallTarget {
    type Conn = StallTarget;
    fn system(&self) -> &'static str {
        "stall"
    }
    async fn connect(&self, _index: usize) -> Result<StallTarget, TargetError> {
        Ok(self.clone())
    }
}

impl Connection for StallTarget {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        self.gate().await;
        let r = self.inner.put(key, value).await;
        self.served(r)
    }
    async fn get(&self, key: Vec<u8>, c: Consistency) -> Result<Option<Versioned>, OpError> {
        self.gate().await;
        let r = self.inner.get(key, c).await;
        self.served(r)
    }
    async fn cas(&self, key: Vec<u8>, rev: u64, value: Vec<u8>) -> Result<bool, OpError> {
        self.gate().await;
        let r = self.inner.cas(key, rev, value).await;
        self.served(r)
    }
    async fn range(
        &self,
        s: Vec<u8>,
        e: Vec<u8>,
        l: usize,
        c: Consistency,
    ) -> Result<usize, OpError> {
        self.gate().await;
        let r = self.inner.range(s, e, l, c).await;
        self.served(r)
    }
    async fn delete(&self, key: Vec<u8>) -> Result<bool, OpError> {
        self.gate().await;
        let r = self.inner.delete(key).await;
        self.served(r)
    }
}

fn quick(name: &str) -> RunConfig {
    RunConfig {
        name: name.into(),
        workload: Workload::Put,
        keys: 1000,
        key_bytes: 8,
        value_bytes: 32,
        preload: false,
        connections: 2,
        concurrency: 8,
        duration: Duration::from_secs(2),
        warmup: Duration::ZERO,
        progress: false,
        ..RunConfig::default()
    }
}

/// A 200 ms server stall during an open-loop run at 1,000/s: requests that were due during the
/// stall must carry their lateness. Requests intended in the first 100 ms of the stall have
/// latency >= 100 ms, so about 100 of them; a measurement from the actual send time (coordinated
/// omission) would show only the one request that hit the stall. And the number of requests is
/// exactly the schedule's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_stall_shows_in_the_tail() {
    let rate = 1000.0;
    let t = StallTarget::new(1000, Duration::from_millis(200));
    let cfg = RunConfig {
        rate: Some(rate),
        duration: Duration::from_secs(3),
        concurrency: 1024,
        ..quick("stall")
    };
    let r = run(&t, &cfg).await.unwrap();
    assert_eq!(
        r.scheduled,
        Some(3000),
        "requests scheduled in 3 s at 1000/s"
    );
    assert_eq!(r.ops + r.error_count(), 3000);
    assert_eq!(r.error_count(), 0);
    assert_eq!(
        r.ops,
        t.served.load(Ordering::SeqCst),
        "histogram count = operations served"
    );
    let h = &r.all;
    assert!(
        h.max() >= 195_000,
        "max {} us must include the 200 ms stall",
        h.max()
    );
    let late = h.count_between(100_000, h.max());
    eprintln!(
        "requests >= 100 ms: {late}; max {} us; p99 {} us",
        h.max(),
        h.value_at_quantile(0.99)
    );
    assert!(
        late >= 90,
        "only {late} requests >= 100 ms: the stall is not charged to the requests it delayed"
    );
    // With ~100 of 3000 requests at >= 100 ms, the 99th percentile is inside the stall.
    assert!(
        h.value_at_quantile(0.99) >= 50_000,
        "p99 {} us",
        h.value_at_quantile(0.99)
    );
}

/// Closed loop with no warm-up: every operation the target served is in the histograms, and the
/// interval log lines add up to the same count. With a warm-up, operations before the window
/// are served but not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_counts_match_and_warmup_is_excluded() {
    let t = StallTarget::new(u64::MAX, Duration::ZERO);
    let cfg = RunConfig {
        workload: Workload::YcsbA,
        preload: true,
        ..quick("closed")
    };
    let r = run(&t, &cfg).await.unwrap();
    let served = t.served.load(Ordering::SeqCst) - cfg.keys; // minus the preload
    assert!(r.ops > 1000, "ops {}", r.ops);
    assert_eq!(r.ops, served);
    let kinds: u64 = r.per_kind.values().map(Histogram::len).sum();
    assert_eq!(kinds, r.ops);
    let interval_sum: u64 = r.intervals.iter().map(|i| i.hist.len()).sum();
    assert_eq!(interval_sum, r.ops);
    assert_eq!(r.not_found, 0, "preloaded keys are all found");

    let t = StallTarget::new(u64::MAX, Duration::ZERO);
    let cfg = RunConfig {
        warmup: Duration::from_secs(1),
        duration: Duration::from_secs(1),
        ..quick("warm")
    };
    let r = run(&t, &cfg).await.unwrap();
    let served = t.served.load(Ordering::SeqCst);
    assert!(r.ops > 0 && r.ops < served, "ops {} served {served}", r.ops);
    assert!(r.timeline.first().map(|s| s.warmup).unwrap_or(false));
    assert!(r.timeline.iter().any(|s| !s.warmup));
}

/// Writes a full report and reads every file back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_files_exist_and_parse() {
    let mem = MemTarget::new();
    let a = run(
        &mem,
        &RunConfig {
            workload: Workload::YcsbF,
            preload: true,
            ..quick("f")
        },
    )
    .await
    .unwrap();
    let b = run(
        &mem,
        &RunConfig {
            workload: Workload::Range,
            rate: Some(500.0),
            ..quick("scan")
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = report::create_report_dir(dir.path(), "test run").unwrap();
    let cases = vec![CaseSummary::from_run(&a), CaseSummary::from_run(&b)];
    let rep = Report {
        name: "test".into(),
        created_unix_s: 0.0,
        commit: report::git_commit(),
        machine: Machine::describe(dir.path()),
        command: "test".into(),
        notes: vec![],
        cases,
        ratios: None,
    };
    report::write_report(&out, &rep, &[&a, &b]).unwrap();

    let parsed: Report =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(parsed.cases.len(), 2);
    assert_eq!(parsed.cases[0].ops, a.ops);
    assert!(
        parsed.cases[0].per_kind.contains_key("rmw")
            && parsed.cases[0].per_kind.contains_key("get")
    );
    assert_eq!(parsed.cases[1].mode, "open");

    let md = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(md.contains("| mem | f | closed 8 |"), "{md}");

    // The interval log: per tag, the decoded histograms add up to the run's per-kind counts.
    let log = std::fs::read(out.join("histograms.hlog")).unwrap();
    let mut de = Deserializer::new();
    let mut by_tag: std::collections::BTreeMap<String, u64> = Default::default();
    for entry in IntervalLogIterator::new(&log) {
        if let LogEntry::Interval(iv) = entry.unwrap() {
            let bytes = base64_decode(iv.encoded_histogram());
            let h: Histogram<u64> = de.deserialize(&mut bytes.as_slice()).unwrap();
            *by_tag
                .entry(iv.tag().unwrap().as_str().to_string())
                .or_default() += h.len();
        }
    }
    for (run, case) in [(&a, "f"), (&b, "scan")] {
        for (kind, h) in &run.per_kind {
            assert_eq!(by_tag[&format!("mem/{case}/{}", kind.name())], h.len());
        }
    }
    for f in ["latency-f.svg", "latency-scan.svg", "throughput.svg"] {
        let svg = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{f}"
        );
    }
    let hgrm = std::fs::read_to_string(out.join("mem-f.hgrm")).unwrap();
    assert!(hgrm.contains(&format!("Total count = {}", a.ops)));
    // A second report of the same name gets its own directory.
    assert_ne!(
        report::create_report_dir(dir.path(), "test run").unwrap(),
        out
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
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
