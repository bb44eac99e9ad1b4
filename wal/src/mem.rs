//! [`MemLog`]: the in-memory, fault-injecting [`LogStore`] for simulators and tests.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::index::PartIndex;
use crate::{
    check_entries, DurableRange, DurableReport, Entry, HardState, LogStore, PartitionId,
    SnapshotPoint, WalError,
};

/// Seeded fault behaviour of a [`MemLog`].
#[derive(Clone, Copy, Debug)]
pub struct FaultConfig {
    /// Seed of the deterministic generator that decides what survives a crash.
    pub seed: u64,
    /// Probability in percent (0..=100) that a batch whose write was issued but whose sync did
    /// not succeed survives a crash (whole: the WAL's recovery never keeps part of a batch).
    pub unsynced_survival_percent: u8,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            seed: 0,
            unsynced_survival_percent: 50,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append(PartitionId, Vec<Entry>),
    HardState(PartitionId, HardState),
    Truncate(PartitionId, u64),
    Compact(PartitionId, SnapshotPoint),
}

type State = BTreeMap<PartitionId, PartIndex<Entry>>;

fn apply(state: &mut State, op: &Op) {
    match op {
        Op::Append(p, es) => {
            let part = state.entry(*p).or_default();
            part.append(es[0].index, es.iter().cloned());
        }
        Op::HardState(p, hs) => state.entry(*p).or_default().hard_state = Some(*hs),
        Op::Truncate(p, from) => {
            state.entry(*p).or_default().truncate(*from);
        }
        Op::Compact(p, point) => {
            state.entry(*p).or_default().compact(*point);
        }
    }
}

#[derive(Default)]
struct Inner {
    cfg: FaultConfig,
    rng: u64,
    /// The current view: durable + buffered.
    state: State,
    /// What a crash right now would certainly keep.
    durable: State,
    /// Ops buffered since the last sync (or seal).
    pending: Vec<Op>,
    /// Ops sealed by [`MemLog::seal`]: the batch the next `sync` makes durable.
    sealed: Option<Vec<Op>>,
    /// A batch whose write happened but whose sync failed: may survive a crash.
    limbo: Option<Vec<Op>>,
    next_seq: u64,
    poisoned: Option<String>,
    fail_next_write: bool,
    fail_next_sync: bool,
    batch_bytes: u64,
    batch_bytes_max: u64,
}

/// An in-memory [`LogStore`] with the same semantics as [`crate::Wal`] and seeded faults:
/// [`MemLog::crash`] loses everything not yet synced (a batch whose write was issued but whose
/// sync failed survives whole or not at all, decided by the seed), [`MemLog::fail_next_write`]
/// and [`MemLog::fail_next_sync`] inject the two I/O failures of `sync`.
pub struct MemLog {
    inner: RefCell<Inner>,
}

impl Default for MemLog {
    fn default() -> Self {
        Self::new(FaultConfig::default())
    }
}

impl MemLog {
    /// A new, empty log. The batch limit is the [`crate::WalConfig`] default (8 MiB).
    pub fn new(cfg: FaultConfig) -> Self {
        MemLog {
            inner: RefCell::new(Inner {
                cfg,
                rng: cfg.seed ^ 0x9e37_79b9_7f4a_7c15,
                next_seq: 1,
                batch_bytes_max: crate::WalConfig::default().batch_bytes_max,
                ..Default::default()
            }),
        }
    }

    /// Sets the batch limit (default: [`crate::WalConfig`]'s `batch_bytes_max`, 8 MiB). Buffering
    /// past it returns [`WalError::BatchFull`], as the [`crate::Wal`] does. The MemLog estimates
    /// record bytes like the Wal's format (48-byte headers, 16 per entry, 72 per hard state), without
    /// padding, so near the limit the two may disagree by a few bytes per record.
    pub fn set_batch_bytes_max(&self, bytes: u64) {
        self.inner.borrow_mut().batch_bytes_max = bytes;
    }

    /// Seals the ops buffered so far as the next `sync`'s batch, as the real [`crate::Wal`] takes
    /// its batch when a sync starts: ops buffered after this wait for the sync after it. A
    /// simulator calls it when it starts a sync whose completion it delivers later, so a crash
    /// in between loses exactly what a real crash could lose. At most one sealed batch: a
    /// second seal before the sync adds to it.
    pub fn seal(&self) {
        let mut g = self.inner.borrow_mut();
        let mut ops = std::mem::take(&mut g.pending);
        match g.sealed.as_mut() {
            Some(sealed) => sealed.append(&mut ops),
            None => g.sealed = Some(ops),
        }
        g.batch_bytes = 0;
    }

    /// The next `sync` fails like a failed write (ENOSPC): an `Io` error; the batch is lost.
    pub fn fail_next_write(&self) {
        self.inner.borrow_mut().fail_next_write = true;
    }

    /// The next `sync` writes but its fdatasync fails: [`WalError::SyncFailed`] (fatal).
    pub fn fail_next_sync(&self) {
        self.inner.borrow_mut().fail_next_sync = true;
    }

    /// Simulates a crash and restart: the view becomes the durable state (plus, seeded, the
    /// batch whose write was issued but whose sync failed); buffered ops are lost; faults and
    /// poisoning are cleared.
    pub fn crash(&self) {
        let mut g = self.inner.borrow_mut();
        let inner = &mut *g;
        inner.state = inner.durable.clone();
        if let Some(batch) = inner.limbo.take() {
            let r = splitmix(&mut inner.rng);
            if r % 100 < u64::from(inner.cfg.unsynced_survival_percent) {
                for op in &batch {
                    apply(&mut inner.state, op);
                }
                inner.durable = inner.state.clone();
            }
        }
        inner.pending.clear();
        inner.sealed = None;
        inner.batch_bytes = 0;
        inner.poisoned = None;
        inner.fail_next_sync = false;
        inner.fail_next_write = false;
    }

    fn buffer(&self, op: Op, bytes: u64) -> Result<(), WalError> {
        let mut g = self.inner.borrow_mut();
        if let Some(p) = &g.poisoned {
            return Err(WalError::Poisoned(p.clone()));
        }
        let total = g.batch_bytes + bytes;
        if total > g.batch_bytes_max {
            return Err(WalError::BatchFull {
                bytes: total,
                bytes_max: g.batch_bytes_max,
            });
        }
        g.batch_bytes = total;
        apply(&mut g.state, &op);
        g.pending.push(op);
        Ok(())
    }

    fn part<R>(&self, p: PartitionId, f: impl FnOnce(&PartIndex<Entry>) -> R) -> R {
        let g = self.inner.borrow();
        match g.state.get(&p) {
            Some(part) => f(part),
            None => f(&PartIndex::default()),
        }
    }
}

fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn report(seq: u64, ops: &[Op]) -> DurableReport {
    let mut r = DurableReport {
        batch_seq: seq,
        ..Default::default()
    };
    for op in ops {
        match op {
            Op::Append(p, es) => r.appended.push(DurableRange {
                partition: *p,
                first: es[0].index,
                last: es[es.len() - 1].index,
            }),
            Op::HardState(p, hs) => r.hard_states.push((*p, *hs)),
            Op::Truncate(p, from) => r.truncations.push((*p, *from)),
            Op::Compact(p, s) => r.snapshots.push((*p, *s)),
        }
    }
    r
}

/// Collects entries `lo..hi` from an index, at least one, then up to `bytes_max` of data.
pub(crate) fn collect_range<T>(
    part: &PartIndex<T>,
    partition: PartitionId,
    lo: u64,
    hi: u64,
    bytes_max: u64,
    len_of: impl Fn(&T) -> u64,
) -> Result<Vec<(u64, &T)>, WalError> {
    if lo >= hi {
        return Ok(Vec::new());
    }
    if lo < part.first_index() {
        return Err(WalError::Compacted {
            partition,
            index: lo,
            first_index: part.first_index(),
        });
    }
    if hi - 1 > part.last_index() {
        return Err(WalError::Unavailable {
            partition,
            index: hi - 1,
            last_index: part.last_index(),
        });
    }
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for idx in lo..hi {
        let Some(item) = part.get(idx) else { break };
        let len = len_of(item);
        if !out.is_empty() && bytes + len > bytes_max {
            break;
        }
        bytes += len;
        out.push((idx, item));
    }
    Ok(out)
}

impl LogStore for MemLog {
    fn append(&self, partition: PartitionId, entries: &[Entry]) -> Result<(), WalError> {
        check_entries(partition, entries)?;
        self.part(partition, |p| p.check_append(partition, entries[0].index))?;
        let bytes = entries
            .iter()
            .map(|e| 16 + e.data.len() as u64)
            .sum::<u64>()
            + 48;
        self.buffer(Op::Append(partition, entries.to_vec()), bytes)
    }

    fn put_hard_state(
        &self,
        partition: PartitionId,
        hard_state: HardState,
    ) -> Result<(), WalError> {
        self.buffer(Op::HardState(partition, hard_state), 72)
    }

    fn truncate(&self, partition: PartitionId, from: u64) -> Result<(), WalError> {
        self.part(partition, |p| p.check_truncate(partition, from))?;
        self.buffer(Op::Truncate(partition, from), 48)
    }

    fn compact(&self, partition: PartitionId, point: SnapshotPoint) -> Result<(), WalError> {
        self.part(partition, |p| p.check_compact(partition, point))?;
        self.buffer(Op::Compact(partition, point), 48)
    }

    async fn sync(&self) -> Result<DurableReport, WalError> {
        let mut g = self.inner.borrow_mut();
        let inner = &mut *g;
        if let Some(p) = &inner.poisoned {
            return Err(WalError::Poisoned(p.clone()));
        }
        let ops = match inner.sealed.take() {
            Some(ops) => ops,
            None => {
                inner.batch_bytes = 0;
                std::mem::take(&mut inner.pending)
            }
        };
        if ops.is_empty() {
            return Ok(DurableReport::default());
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        if inner.fail_next_write {
            inner.fail_next_write = false;
            inner.poisoned = Some("injected write failure".into());
            return Err(WalError::Io {
                op: "write",
                path: "memlog".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
        }
        if inner.fail_next_sync {
            inner.fail_next_sync = false;
            inner.limbo = Some(ops);
            inner.poisoned = Some("injected fdatasync failure".into());
            return Err(WalError::SyncFailed {
                path: "memlog".into(),
                source: std::io::Error::from_raw_os_error(libc::EIO),
            });
        }
        for op in &ops {
            apply(&mut inner.durable, op);
        }
        Ok(report(seq, &ops))
    }

    async fn entries(
        &self,
        partition: PartitionId,
        lo: u64,
        hi: u64,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, WalError> {
        self.part(partition, |p| {
            collect_range(p, partition, lo, hi, bytes_max, |e| e.data.len() as u64)
                .map(|v| v.into_iter().map(|(_, e)| e.clone()).collect())
        })
    }

    fn hard_state(&self, partition: PartitionId) -> Option<HardState> {
        self.part(partition, |p| p.hard_state)
    }

    fn snapshot_point(&self, partition: PartitionId) -> Option<SnapshotPoint> {
        self.part(partition, |p| p.snapshot)
    }

    fn first_index(&self, partition: PartitionId) -> u64 {
        self.part(partition, |p| p.first_index())
    }

    fn last_index(&self, partition: PartitionId) -> u64 {
        self.part(partition, |p| p.last_index())
    }

    fn term(&self, partition: PartitionId, index: u64) -> Option<u64> {
        self.part(partition, |p| match p.snapshot {
            Some(s) if s.index == index => Some(s.term),
            _ => p.get(index).map(|e| e.term),
        })
    }

    fn partitions(&self) -> Vec<PartitionId> {
        self.inner.borrow().state.keys().copied().collect()
    }

    fn buffered_bytes(&self) -> u64 {
        self.inner.borrow().batch_bytes
    }
}
