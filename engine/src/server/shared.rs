//! The little state the shards of one node share: status atomics per partition and the client
//! endpoints of other nodes. Written once per loop turn (atomics, no locks) or on a peer hello
//! (a mutex, rare); read to answer `Status` and `ClusterMap`, never on the write path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::config::{shard_addr, NodeConfig};

/// One partition's status as its shard last published it.
#[derive(Debug, Default)]
pub struct PartitionStat {
    /// Known leader node (0: none).
    pub leader: AtomicU64,
    /// Current term.
    pub term: AtomicU64,
    /// Commit index.
    pub commit: AtomicU64,
    /// Applied index.
    pub applied: AtomicU64,
}

/// State shared by the shards of one node.
#[derive(Debug)]
pub struct NodeShared {
    /// Indexed by partition id (index 0 unused); only partitions with a replica here are set.
    stats: Vec<PartitionStat>,
    /// Base client address (shard 0) of each node, learnt from peers' hellos (this node's own
    /// from its configuration).
    client_bases: Mutex<BTreeMap<u64, SocketAddr>>,
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
        }
    }

    /// The status slot of `partition`.
    pub fn stat(&self, partition: u64) -> Option<&PartitionStat> {
        self.stats.get(partition as usize).filter(|_| partition > 0)
    }

    /// Publishes a partition's status.
    pub fn publish(&self, partition: u64, leader: u64, term: u64, commit: u64, applied: u64) {
        if let Some(s) = self.stat(partition) {
            s.leader.store(leader, Ordering::Relaxed);
            s.term.store(term, Ordering::Relaxed);
            s.commit.store(commit, Ordering::Relaxed);
            s.applied.store(applied, Ordering::Relaxed);
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
