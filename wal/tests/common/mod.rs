//! Shared test helpers: a glommio runner, a reference model of the log, and comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

use bytes::Bytes;
use wal::{Entry, HardState, LogStore, SnapshotPoint};

/// Runs `f` on a fresh glommio executor thread and returns its output.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(2 << 20)
        .spawn(f)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// A fresh directory on the real filesystem under target/ (not tmpfs).
pub fn test_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("wal-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The reference model: one partition's log, written as plainly as possible.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MPart {
    pub entries: BTreeMap<u64, Entry>,
    pub snap: Option<SnapshotPoint>,
    pub hs: Option<HardState>,
}

impl MPart {
    pub fn floor(&self) -> u64 {
        self.snap.map_or(0, |s| s.index)
    }
    pub fn last(&self) -> u64 {
        self.entries
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.floor())
    }
    pub fn first(&self) -> u64 {
        self.entries
            .keys()
            .next()
            .copied()
            .unwrap_or(self.last() + 1)
    }
}

/// The whole log: partitions, plus the durable copy.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub cur: BTreeMap<u64, MPart>,
    pub durable: BTreeMap<u64, MPart>,
}

impl Model {
    pub fn part(&mut self, p: u64) -> &mut MPart {
        self.cur.entry(p).or_default()
    }
    pub fn sync(&mut self) {
        self.durable = self.cur.clone();
    }
    pub fn crash(&mut self) {
        self.cur = self.durable.clone();
    }
}

pub fn entry(index: u64, term: u64, len: usize, salt: u64) -> Entry {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u64 ^ index.wrapping_mul(31) ^ salt) as u8)
        .collect();
    Entry {
        index,
        term,
        kind: (index % 3) as u8,
        data: Bytes::from(data),
    }
}

/// Compares every observable of `log` with `parts` for partitions `0..n`.
pub async fn compare<L: LogStore>(
    log: &L,
    parts: &BTreeMap<u64, MPart>,
    n: u64,
) -> Result<(), String> {
    let empty = MPart::default();
    for p in 0..n {
        let m = parts.get(&p).unwrap_or(&empty);
        let (f, l) = (log.first_index(p), log.last_index(p));
        if (f, l) != (m.first(), m.last()) {
            return Err(format!(
                "p{p}: first/last {f}/{l}, model {}/{}",
                m.first(),
                m.last()
            ));
        }
        if log.hard_state(p) != m.hs {
            return Err(format!(
                "p{p}: hard state {:?}, model {:?}",
                log.hard_state(p),
                m.hs
            ));
        }
        if log.snapshot_point(p) != m.snap {
            return Err(format!(
                "p{p}: snapshot {:?}, model {:?}",
                log.snapshot_point(p),
                m.snap
            ));
        }
        if let Some(s) = m.snap {
            if log.term(p, s.index) != Some(s.term) {
                return Err(format!("p{p}: term at snapshot index"));
            }
        }
        let got = log
            .entries(p, f, l + 1, u64::MAX)
            .await
            .map_err(|e| format!("p{p}: read: {e}"))?;
        let want: Vec<Entry> = m.entries.values().cloned().collect();
        if got != want {
            return Err(format!(
                "p{p}: entries differ: got {} entries {:?}, model {} entries {:?}",
                got.len(),
                got.iter()
                    .map(|e| (e.index, e.term, e.data.len()))
                    .collect::<Vec<_>>(),
                want.len(),
                want.iter()
                    .map(|e| (e.index, e.term, e.data.len()))
                    .collect::<Vec<_>>()
            ));
        }
        for e in &want {
            if log.term(p, e.index) != Some(e.term) {
                return Err(format!("p{p}: term({})", e.index));
            }
        }
        // A bounded read returns at least one entry and stops at the byte limit.
        if l >= f {
            let one = log
                .entries(p, f, l + 1, 0)
                .await
                .map_err(|e| e.to_string())?;
            if one.len() != 1 {
                return Err(format!(
                    "p{p}: bytes_max 0 read returned {} entries",
                    one.len()
                ));
            }
        }
    }
    Ok(())
}

/// Drives a future that never waits on I/O (MemLog's) to completion on this thread.
pub fn block_on<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}
