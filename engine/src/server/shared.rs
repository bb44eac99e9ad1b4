//! The little state the shards of one node share: status atomics per partition, the client
//! endpoints of other nodes, the cluster map shard 0 applies from the meta group, and each
//! shard's metrics (`super::metrics`, written only by their shard).
//! Written once per loop turn (atomics, no locks), on a peer hello or a map change (a lock,
//! rare); read to answer `Status` and `ClusterMap` and, for the map, by a shard once when its
//! epoch changes. Never on the write path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::Duration;

use super::metrics::NodeMetrics;
use crate::config::{shard_addr, NodeConfig};
use crate::meta::MetaMap;

/// What shard 0 found when it recovered the meta group at startup.
#[derive(Debug, Clone)]
pub enum Boot {
    /// The map recovered from the meta group (None: a fresh cluster, no map committed yet).
    Recovered(Option<Arc<MetaMap>>),
    /// Shard 0 could not start.
    Failed,
}

/// One partition's status as its shard last published it.
///
/// Aligned to a 64-byte cache line: the slots are indexed by partition and neighbouring
/// partitions live on different shards (p % shards), and each shard stores into its slots
/// every turn, so unpadded 48-byte slots shared lines between cores and bounced them.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PartitionStat {
    /// Known leader node (0: none).
    pub leader: AtomicU64,
    /// Current term.
    pub term: AtomicU64,
    /// Commit index.
    pub commit: AtomicU64,
    /// Applied index.
    pub applied: AtomicU64,
    /// Client sessions in the partition's session table.
    pub sessions: AtomicU64,
    /// A shard of this node hosts the partition (set by its first publish).
    pub hosted: AtomicBool,
}

// One slot per cache line (see PartitionStat): no two partitions' slots share one.
const _: () = assert!(std::mem::size_of::<PartitionStat>() == 64);
const _: () = assert!(std::mem::align_of::<PartitionStat>() == 64);

/// What a shard publishes about one partition after a turn.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    /// Known leader node (0: none).
    pub leader: u64,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Client sessions in the partition's session table.
    pub sessions: u64,
}

/// State shared by the shards of one node.
#[derive(Debug)]
pub struct NodeShared {
    /// Indexed by partition id (0: the meta group); only partitions with a replica here are set.
    stats: Vec<PartitionStat>,
    /// Base client address (shard 0) of each node, learnt from peers' hellos (this node's own
    /// from its configuration).
    client_bases: Mutex<BTreeMap<u64, SocketAddr>>,
    /// The newest cluster map this node applied (shard 0 writes it).
    map: RwLock<Option<Arc<MetaMap>>>,
    /// Its epoch (0: none yet), read by every shard each turn.
    map_epoch: AtomicU64,
    /// Shard 0's startup result, awaited by the other shards before they choose partitions.
    boot: Mutex<Option<Boot>>,
    boot_cv: Condvar,
    /// Every shard's metrics (each written only by its shard, read at scrape time).
    pub metrics: NodeMetrics,
    /// The node's recent events (`corum ctl events`).
    pub events: super::events::EventLog,
    /// The TLS contexts (None: plaintext), read when a connection starts; replaced whole.
    tls: RwLock<Option<Arc<super::tls::NodeTls>>>,
    /// The backup this node's data directory was restored from (`crate::backup::RESTORED`;
    /// 0: not restored), set before the shards start.
    restored_backup_id: AtomicU64,
}

impl NodeShared {
    /// Empty status for `config`'s partitions.
    pub fn new(config: &NodeConfig) -> Self {
        let mut bases = BTreeMap::new();
        bases.insert(config.id, config.client_addr);
        NodeShared {
            stats: (0..=config.partitions)
                .map(|_| PartitionStat::default())
                .collect(),
            client_bases: Mutex::new(bases),
            map: RwLock::new(None),
            map_epoch: AtomicU64::new(0),
            boot: Mutex::new(None),
            boot_cv: Condvar::new(),
            metrics: NodeMetrics::new(config.shards),
            events: super::events::EventLog::new(config.id),
            tls: RwLock::new(None),
            restored_backup_id: AtomicU64::new(0),
        }
    }

    /// The backup this node was restored from (0: not restored): the bootstrap map records
    /// it, and a map naming another is refused (`crate::meta`, "Restored clusters").
    pub fn restored_backup_id(&self) -> u64 {
        self.restored_backup_id.load(Ordering::Relaxed)
    }

    /// Sets [`Self::restored_backup_id`] (at start, before the shards run).
    pub fn set_restored_backup_id(&self, id: u64) {
        self.restored_backup_id.store(id, Ordering::Relaxed);
    }

    /// The TLS contexts new connections use (None: plaintext).
    pub fn tls(&self) -> Option<Arc<super::tls::NodeTls>> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the TLS contexts for connections started from now on.
    pub fn set_tls(&self, tls: Arc<super::tls::NodeTls>) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Some(tls);
    }

    /// The status slot of `partition` (0: the meta group).
    pub fn stat(&self, partition: u64) -> Option<&PartitionStat> {
        self.stats.get(partition as usize)
    }

    /// The partitions some shard of this node hosts, ascending (0, the meta group, included).
    pub fn hosted(&self) -> impl Iterator<Item = (u64, &PartitionStat)> {
        self.stats
            .iter()
            .enumerate()
            .filter(|(_, s)| s.hosted.load(Ordering::Relaxed))
            .map(|(p, s)| (p as u64, s))
    }

    /// Publishes a partition's status.
    pub fn publish(&self, partition: u64, status: Published) {
        if let Some(s) = self.stat(partition) {
            s.leader.store(status.leader, Ordering::Relaxed);
            s.term.store(status.term, Ordering::Relaxed);
            s.commit.store(status.commit, Ordering::Relaxed);
            s.applied.store(status.applied, Ordering::Relaxed);
            s.sessions.store(status.sessions, Ordering::Relaxed);
            s.hosted.store(true, Ordering::Relaxed);
        }
    }

    /// The epoch of the newest map this node applied (0: none yet).
    pub fn map_epoch(&self) -> u64 {
        self.map_epoch.load(Ordering::Acquire)
    }

    /// The newest map this node applied.
    pub fn map(&self) -> Option<Arc<MetaMap>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs a map applied from the meta group (ignored unless its epoch is newer).
    pub fn set_map(&self, map: Arc<MetaMap>) {
        let mut g = self.map.write().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_none_or(|m| m.epoch < map.epoch) {
            let epoch = map.epoch;
            *g = Some(map);
            self.map_epoch.store(epoch, Ordering::Release);
        }
    }

    /// Shard 0 reports how its startup went (the other shards wait for it in [`Self::wait_boot`]).
    pub fn set_boot(&self, boot: Boot) {
        if let Boot::Recovered(Some(m)) = &boot {
            self.set_map(m.clone());
        }
        *self.boot.lock().unwrap_or_else(|p| p.into_inner()) = Some(boot);
        self.boot_cv.notify_all();
    }

    /// Reports shard 0's startup as failed, unless it already reported.
    pub fn fail_boot(&self) {
        let mut g = self.boot.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(Boot::Failed);
            self.boot_cv.notify_all();
        }
    }

    /// Waits for shard 0's startup report; None if `stop` was raised meanwhile.
    pub fn wait_boot(&self, stop: &AtomicBool) -> Option<Boot> {
        let mut g = self.boot.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(b) = g.as_ref() {
                return Some(b.clone());
            }
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            g = self
                .boot_cv
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Records the base client address `node` announced in its hello.
    pub fn learn_client_base(&self, node: u64, base: SocketAddr) {
        let mut g = self.client_bases.lock().unwrap_or_else(|p| p.into_inner());
        if g.insert(node, base) != Some(base) {
            tracing::info!(node, client = %base, "learnt a node's client address");
        }
    }

    /// The client endpoint of shard `shard` of `node`: from its hello if heard, else guessed
    /// from its peer address with this node's client-minus-peer port offset (the layout
    /// `corum local` uses), so a map can be served before every peer has connected.
    pub fn client_endpoint(&self, config: &NodeConfig, node: u64, shard: usize) -> String {
        let known = self
            .client_bases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .copied();
        let base = known.or_else(|| {
            let peer = *config.peers.get(&node)?;
            let offset = i32::from(config.client_addr.port()) - i32::from(config.peer_addr.port());
            let port = u16::try_from(i32::from(peer.port()) + offset).ok()?;
            Some(SocketAddr::new(peer.ip(), port))
        });
        match base {
            Some(b) => shard_addr(b, shard).to_string(),
            None => String::new(),
        }
    }
}
