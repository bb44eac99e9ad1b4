//! The meta group: the replicated cluster map (DESIGN.md "Data placement").
//!
//! # What it is
//! Partition **0** is the meta group. It is a Raft group like every data partition (same
//! raftcore node, same [`StateMachine`](crate::state_machine::StateMachine), same WAL, snapshots
//! and recovery), with two differences:
//! - it has a voting replica on **every** node of the initial cluster, on shard 0 (so every node
//!   learns the map by applying its own log, and the map survives as long as a majority of nodes
//!   does);
//! - no slot maps to it: clients cannot read or write it; only the server proposes to it.
//!
//! Its key-value state holds the placement under [`MAP_KEY`]: a [`MetaMap`] (slot ranges ->
//! partitions -> replicas on distinct nodes -> a shard on each node, and an epoch that grows
//! with every change of placement).
//!
//! # Bootstrap
//! A fresh cluster has no map. The meta group's first leader, once it has applied an entry of
//! its own term (its no-op, thesis §6.4: its state machine is then current), proposes
//! [`MetaMap::initial`] derived from its configuration, at epoch 1, as a put-if-absent: a second
//! proposal (a later leader, a retry) finds the key and changes nothing, so the first committed
//! map wins and is never overwritten by a bootstrap.
//!
//! Until a node has applied the map it answers data requests and `ClusterMap` requests with
//! `Unavailable` (clients retry); a restarted node has it at once from its recovered snapshot
//! or log.
//!
//! # Which partitions a node opens
//! On a restart with a known map, each shard opens the partitions the map places on it
//! ([`MetaMap::hosted`]): the map, not `--replicas`, decides. On a first start (no map yet),
//! it opens the configuration's initial placement, the same one the map will be built from.
//! When a shard adopts a map it checks, and the node stops with an error naming the difference
//! if any fails ([`MetaMap::check_node`], [`MetaMap::check_voters`]): serving with a placement
//! the rest of the cluster does not share would misroute requests.
//! - the shard count and partition count equal `--shards` and `--partitions`;
//! - every node the map names is in `--peers`;
//! - the shard hosts exactly the partitions the map places on it (a fresh node started with a
//!   different `--replicas` or peer list), and each one's Raft voters are the map's replicas.
//!
//! Changing the placement of a running cluster (moving replicas, splits) is roadmap phase 2; the
//! map format and epoch already carry what it needs.
//!
//! The map also carries the settings every replica must share because they decide replicated
//! state: `tuning.sessions_max` and `tuning.session_results_max` decide which session results
//! each partition's state machine keeps, so two replicas with different values would answer a
//! retry differently (finding 7 of issue 10). `tuning.history_revisions` and
//! `tuning.history_bytes_max` decide where each partition's compaction point moves (`crate::state_machine`, "History"), so it is recorded
//! the same way. The bootstrap map records the first leader's values; a node whose tuning
//! differs stops at adoption with an error naming the setting.
//!
//! # Restored clusters
//! A node built by `corum restore` holds a [`RESTORED`](crate::backup::RESTORED) record naming
//! the backup. The bootstrap map records the first meta leader's backup id (0: it was not
//! restored), and every node checks at adoption that its own id is the map's
//! ([`MetaMap::check_backup`]); a node restored from another backup, or not restored at all,
//! stops with an error naming both. Partitions of nodes restored from different backups hold
//! different histories at the same Raft indexes; a fresh node among restored ones would hold
//! none, and with another empty node could elect a leader that erases the restored data. The
//! map's meta group itself is not restored (every restored cluster bootstraps a new one), so
//! the first node to lead it decides; if that node is the odd one out, the others stop, which
//! is the same refusal seen from the other side.
//!
//! # Encoding of a [`MetaMap`] (version 4, little-endian)
//! ```text
//! offset size  field
//! 0      4     magic "CMAP"
//! 4      1     version = 4 (version 1: no session settings, read as 0 = not recorded;
//!              versions 1-2: no history setting, read as not recorded; versions 1-3: no
//!              backup id, read as not recorded)
//! 5      3     zero
//! 8      8     epoch (>= 1)
//! 16     4     shards per node the placement assumes
//! 20     4     R = number of slot ranges
//! 24     4     P = number of partitions
//! 28     4     zero
//! 32     16*R  ranges: start u16, end u16, zero u32, partition u64
//! ...    per partition: id u64, replica count N u32, zero u32, then N x (node u64, shard u32,
//!              zero u32)
//! ...    16    versions 2-4: sessions_max u64, session_results_max u64
//! ...    16    versions 3-4: history_revisions u64, history_bytes_max u64
//! ...    8     version 4: backup_id u64 (the backup the cluster was restored from; 0: none)
//! end-4  4     crc32c (Castagnoli) of every byte before it
//! ```
//! [`MetaMap::decode`] checks the magic, version, lengths, checksum and then the map's own
//! invariants ([`wire::ClusterMap::validate`]); any failure is a typed [`MetaError`].

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;
use wire::{ClusterMap, PartitionInfo, Replica, SlotRange};

use crate::config::NodeConfig;

/// The meta group's partition id.
pub const META_PARTITION: u64 = 0;
/// The key of the cluster map in the meta group's state machine.
pub const MAP_KEY: &[u8] = b"cluster/map";

const MAGIC: &[u8; 4] = b"CMAP";
const VERSION: u8 = 4;
/// Bytes of the session settings (version 2).
const SESSION_BYTES: usize = 16;
const HEADER_BYTES: usize = 32;
const RANGE_BYTES: usize = 16;
const REPLICA_BYTES: usize = 16;
const PARTITION_HEAD_BYTES: usize = 16;

/// Why a map could not be decoded or does not fit this node.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetaError {
    /// The bytes are not a map of a known version.
    #[error("cluster map encoding: {0}")]
    Encoding(String),
    /// The checksum does not match.
    #[error("cluster map checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The checksum in the value.
        stored: u32,
        /// The checksum of the bytes.
        computed: u32,
    },
    /// The map breaks one of its invariants.
    #[error("{0}")]
    Invalid(#[from] wire::MapError),
    /// The map and this node's configuration disagree.
    #[error("this node's configuration disagrees with the cluster map (epoch {epoch}): {reason}")]
    Mismatch {
        /// The map's epoch.
        epoch: u64,
        /// What differs.
        reason: String,
    },
}

// ---------------------------------------------------------------- placement policy

/// The shard of every node that holds partition `partition` in the initial placement
/// (`partition % shards`: shard i of one node talks only to shard i of the others). The meta
/// group, partition 0, is on shard 0 of every node by this same rule.
pub fn shard_of_partition(config: &NodeConfig, partition: u64) -> usize {
    (partition % config.shards as u64) as usize
}

/// The nodes that hold replicas of `partition` in the initial placement: `replicas`
/// consecutive node ids (in ascending order, wrapping) starting at position
/// `partition % nodes`, so replicas are on distinct nodes and leaders spread evenly.
pub fn initial_replicas(config: &NodeConfig, partition: u64) -> Vec<u64> {
    let ids: Vec<u64> = config.peers.keys().copied().collect();
    let start = (partition % ids.len() as u64) as usize;
    (0..config.replicas)
        .map(|k| ids[(start + k) % ids.len()])
        .collect()
}

/// What shard `shard` of this node opens before any map is committed (a fresh cluster): the
/// partitions the bootstrap map ([`MetaMap::initial`]) will place there, with their voters.
/// Once a map is committed, the map decides ([`MetaMap::hosted`]).
pub fn initial_placement(config: &NodeConfig, shard: usize) -> Vec<(u64, Vec<u64>)> {
    let map = MetaMap::initial(config);
    map.hosted(config.id, shard)
        .into_iter()
        .map(|p| (p, map.voters(p).unwrap_or_default()))
        .collect()
}

/// One partition's replicas: (node, shard on that node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaPartition {
    /// Partition id (>= 1).
    pub id: u64,
    /// (node, shard) of each replica, on distinct nodes.
    pub replicas: Vec<(u64, u32)>,
}

/// The placement stored in the meta group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaMap {
    /// Grows with every change of placement (1 for the bootstrap map).
    pub epoch: u64,
    /// Shards per node the placement assumes (every node runs this many).
    pub shards: u32,
    /// Slot ranges, sorted and covering every slot.
    pub ranges: Vec<SlotRange>,
    /// The data partitions.
    pub partitions: Vec<MetaPartition>,
    /// `tuning.sessions_max` every replica must use (0: not recorded, a version-1 map).
    pub sessions_max: u64,
    /// `tuning.session_results_max` every replica must use (0: not recorded).
    pub session_results_max: u64,
    /// `tuning.history_revisions` every replica must use (`None`: not recorded, a map of
    /// version 1 or 2).
    pub history_revisions: Option<u64>,
    /// `tuning.history_bytes_max` every replica must use (recorded with
    /// `history_revisions`; 0 when that is `None`).
    pub history_bytes_max: u64,
    /// The backup every node was restored from (module docs, "Restored clusters"): 0 for a
    /// cluster bootstrapped empty; `None`: not recorded (a map of version 1 to 3). Recorded
    /// only with the history setting (a version-4 map has both).
    pub backup_id: Option<u64>,
}

impl MetaMap {
    /// The bootstrap map of `config`: epoch 1, slots split evenly over partitions
    /// `1..=partitions`, replicas as [`initial_replicas`], partition `p` on shard
    /// [`shard_of_partition`] of every node.
    pub fn initial(config: &NodeConfig) -> MetaMap {
        let partitions: Vec<MetaPartition> = (1..=u64::from(config.partitions))
            .map(|p| MetaPartition {
                id: p,
                replicas: initial_replicas(config, p)
                    .into_iter()
                    .map(|n| (n, shard_of_partition(config, p) as u32))
                    .collect(),
            })
            .collect();
        let ranges = ClusterMap::uniform(
            1,
            partitions
                .iter()
                .map(|p| PartitionInfo {
                    id: p.id,
                    replicas: Vec::new(),
                    leader_node: 0,
                })
                .collect(),
        )
        .ranges;
        MetaMap {
            epoch: 1,
            shards: config.shards as u32,
            ranges,
            partitions,
            sessions_max: config.tuning.sessions_max as u64,
            session_results_max: config.tuning.session_results_max as u64,
            history_revisions: Some(config.tuning.history_revisions),
            history_bytes_max: config.tuning.history_bytes_max,
            backup_id: Some(0),
        }
    }

    /// Checks that this node, restored from backup `restored` (0: not restored), belongs to
    /// this cluster: the map records the same backup, or records none (module docs,
    /// "Restored clusters").
    pub fn check_backup(&self, restored: u64) -> Result<(), MetaError> {
        let Some(map) = self.backup_id else {
            return Ok(());
        };
        if map == restored {
            return Ok(());
        }
        let cluster = if map == 0 {
            "the cluster map was bootstrapped by a node not restored from a backup".to_owned()
        } else {
            format!(
                "the cluster was restored from backup {}",
                crate::backup::BackupId(map)
            )
        };
        let here = if restored == 0 {
            "this node was not restored from a backup (its data directory has no RESTORED \
             record)"
                .to_owned()
        } else {
            format!(
                "this node was restored from backup {}",
                crate::backup::BackupId(restored)
            )
        };
        Err(MetaError::Mismatch {
            epoch: self.epoch,
            reason: format!(
                "{cluster}, but {here}; restore every node of a cluster from the same backup \
                 (`corum restore --from DIR` into an empty data directory on each node)"
            ),
        })
    }

    /// The data partitions with a replica on shard `shard` of `node`, ascending.
    pub fn hosted(&self, node: u64, shard: usize) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .partitions
            .iter()
            .filter(|p| p.replicas.contains(&(node, shard as u32)))
            .map(|p| p.id)
            .collect();
        v.sort_unstable();
        v
    }

    /// The voters of `partition`, if the map has it.
    pub fn voters(&self, partition: u64) -> Option<Vec<u64>> {
        self.partitions
            .iter()
            .find(|p| p.id == partition)
            .map(|p| p.replicas.iter().map(|r| r.0).collect())
    }

    /// Checks that shard `shard` of this node can serve this map: same shard count, same
    /// partition count, and the data partitions it hosts (`here`, ascending) are exactly those
    /// the map places there.
    pub fn check_node(
        &self,
        config: &NodeConfig,
        shard: usize,
        here: &[u64],
    ) -> Result<(), MetaError> {
        let mismatch = |reason: String| MetaError::Mismatch {
            epoch: self.epoch,
            reason,
        };
        if self.shards as usize != config.shards {
            return Err(mismatch(format!(
                "the map assumes {} shards per node, this node runs {} (--shards)",
                self.shards, config.shards
            )));
        }
        for (name, map, here) in [
            (
                "tuning.sessions_max",
                self.sessions_max,
                config.tuning.sessions_max as u64,
            ),
            (
                "tuning.session_results_max",
                self.session_results_max,
                config.tuning.session_results_max as u64,
            ),
        ] {
            if map != 0 && map != here {
                return Err(mismatch(format!(
                    "the cluster uses {name} = {map}, this node is configured with {here}; \
                     every replica must keep the same session results"
                )));
            }
        }
        if let Some(map_revisions) = self.history_revisions {
            for (name, map, here) in [
                (
                    "tuning.history_revisions",
                    map_revisions,
                    config.tuning.history_revisions,
                ),
                (
                    "tuning.history_bytes_max",
                    self.history_bytes_max,
                    config.tuning.history_bytes_max,
                ),
            ] {
                if map != here {
                    return Err(mismatch(format!(
                        "the cluster uses {name} = {map}, this node is configured with {here}; \
                         every replica must compact its history at the same revisions"
                    )));
                }
            }
        }
        if self.partitions.len() != config.partitions as usize {
            return Err(mismatch(format!(
                "the map has {} partitions, this node is configured with {} (--partitions)",
                self.partitions.len(),
                config.partitions
            )));
        }
        if let Some(n) = self
            .partitions
            .iter()
            .flat_map(|p| &p.replicas)
            .map(|r| r.0)
            .find(|n| !config.peers.contains_key(n))
        {
            return Err(mismatch(format!(
                "the map places replicas on node {n}, which is not in --peers"
            )));
        }
        let want = self.hosted(config.id, shard);
        if want != here {
            return Err(mismatch(format!(
                "shard {shard} hosts partitions {here:?}, the map places {want:?} there \
                 (check --replicas and --peers on every node)"
            )));
        }
        Ok(())
    }

    /// Checks that each hosted partition's Raft voters (`(partition, sorted voters)`) are the
    /// replicas the map lists for it (membership never changes yet, so they must be equal).
    pub fn check_voters(&self, voters: &[(u64, Vec<u64>)]) -> Result<(), MetaError> {
        for (p, have) in voters {
            let mut want = self.voters(*p).unwrap_or_default();
            want.sort_unstable();
            if &want != have {
                return Err(MetaError::Mismatch {
                    epoch: self.epoch,
                    reason: format!(
                        "partition {p} has voters {have:?} here, the map lists {want:?} \
                         (check --replicas and --peers on every node)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The wire form: endpoints from `endpoint(node, shard)`, leader hints from
    /// `leader(partition)` (0 when unknown).
    pub fn to_wire(
        &self,
        endpoint: impl Fn(u64, u32) -> String,
        leader: impl Fn(u64) -> u64,
    ) -> ClusterMap {
        ClusterMap {
            epoch: self.epoch,
            ranges: self.ranges.clone(),
            partitions: self
                .partitions
                .iter()
                .map(|p| {
                    let l = leader(p.id);
                    PartitionInfo {
                        id: p.id,
                        replicas: p
                            .replicas
                            .iter()
                            .map(|&(node, shard)| Replica {
                                node,
                                shard,
                                endpoint: endpoint(node, shard),
                            })
                            .collect(),
                        leader_node: if p.replicas.iter().any(|r| r.0 == l) {
                            l
                        } else {
                            0
                        },
                    }
                })
                .collect(),
        }
    }

    /// Checks the map's invariants (those of [`ClusterMap::validate`], plus epoch >= 1, a
    /// shard count >= 1, partition ids >= 1 and every shard below the shard count).
    pub fn validate(&self) -> Result<(), MetaError> {
        let bad = |s: String| MetaError::Encoding(s);
        if self.backup_id.is_some() && self.history_revisions.is_none() {
            return Err(bad(
                "a map recording a backup id records the history setting too".into(),
            ));
        }
        if self.epoch == 0 {
            return Err(bad("epoch 0".into()));
        }
        if self.shards == 0 {
            return Err(bad("0 shards".into()));
        }
        for p in &self.partitions {
            if p.id == META_PARTITION {
                return Err(bad("partition 0 (the meta group) owns no slots".into()));
            }
            if let Some(&(n, s)) = p.replicas.iter().find(|r| r.1 >= self.shards) {
                return Err(bad(format!(
                    "partition {}: node {n} shard {s} >= {} shards",
                    p.id, self.shards
                )));
            }
        }
        self.to_wire(|_, _| String::new(), |_| 0).validate()?;
        Ok(())
    }

    /// Length of [`Self::encode`]'s result in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES
            + RANGE_BYTES * self.ranges.len()
            + self
                .partitions
                .iter()
                .map(|p| PARTITION_HEAD_BYTES + REPLICA_BYTES * p.replicas.len())
                .sum::<usize>()
            + SESSION_BYTES
            + if self.history_revisions.is_some() {
                16
            } else {
                0
            }
            + if self.backup_id.is_some() { 8 } else { 0 }
            + 4
    }

    /// Encodes the map (layout in the module docs).
    pub fn encode(&self) -> Bytes {
        let len = self.encoded_len();
        let mut b = BytesMut::with_capacity(len);
        b.put_slice(MAGIC);
        // A map decoded from version 2 or 3 (no history setting, no backup id) is written back
        // as that version, so re-encoding never invents a setting.
        b.put_u8(match (self.history_revisions, self.backup_id) {
            (_, Some(_)) => VERSION,
            (Some(_), None) => 3,
            (None, None) => 2,
        });
        b.put_bytes(0, 3);
        b.put_u64_le(self.epoch);
        b.put_u32_le(self.shards);
        b.put_u32_le(self.ranges.len() as u32);
        b.put_u32_le(self.partitions.len() as u32);
        b.put_u32_le(0);
        for r in &self.ranges {
            b.put_u16_le(r.start);
            b.put_u16_le(r.end);
            b.put_u32_le(0);
            b.put_u64_le(r.partition);
        }
        for p in &self.partitions {
            b.put_u64_le(p.id);
            b.put_u32_le(p.replicas.len() as u32);
            b.put_u32_le(0);
            for &(node, shard) in &p.replicas {
                b.put_u64_le(node);
                b.put_u32_le(shard);
                b.put_u32_le(0);
            }
        }
        b.put_u64_le(self.sessions_max);
        b.put_u64_le(self.session_results_max);
        if let Some(h) = self.history_revisions {
            b.put_u64_le(h);
            b.put_u64_le(self.history_bytes_max);
        }
        if let Some(id) = self.backup_id {
            b.put_u64_le(id);
        }
        let crc = crc32c::crc32c(&b);
        b.put_u32_le(crc);
        debug_assert_eq!(b.len(), len);
        b.freeze()
    }

    /// Decodes and validates a map (layout in the module docs).
    pub fn decode(data: &[u8]) -> Result<MetaMap, MetaError> {
        let bad = |s: &str| MetaError::Encoding(s.to_owned());
        if data.len() < HEADER_BYTES + 4 {
            return Err(bad("shorter than the header"));
        }
        let (body, crc) = data.split_at(data.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32c::crc32c(body);
        if stored != computed {
            return Err(MetaError::Checksum { stored, computed });
        }
        if &body[0..4] != MAGIC {
            return Err(bad("bad magic"));
        }
        let version = body[4];
        if !(1..=VERSION).contains(&version) {
            return Err(MetaError::Encoding(format!(
                "unknown version {} (this build reads {VERSION})",
                body[4]
            )));
        }
        if body[5..8] != [0; 3] {
            return Err(bad("nonzero reserved bytes at offset 5"));
        }
        let mut r = Reader { b: body, at: 8 };
        let epoch = r.u64()?;
        let shards = r.u32()?;
        let n_ranges = r.u32()? as usize;
        let n_parts = r.u32()? as usize;
        r.zero_u32()?;
        // Counts are bounded by the bytes present before anything is allocated.
        if n_ranges > body.len() / RANGE_BYTES || n_parts > body.len() / PARTITION_HEAD_BYTES {
            return Err(bad("counts larger than the value"));
        }
        let mut ranges = Vec::with_capacity(n_ranges);
        for _ in 0..n_ranges {
            let start = r.u16()?;
            let end = r.u16()?;
            r.zero_u32()?;
            let partition = r.u64()?;
            ranges.push(SlotRange {
                start,
                end,
                partition,
            });
        }
        let mut partitions = Vec::with_capacity(n_parts);
        for _ in 0..n_parts {
            let id = r.u64()?;
            let n = r.u32()? as usize;
            r.zero_u32()?;
            if n > body.len() / REPLICA_BYTES {
                return Err(bad("replica count larger than the value"));
            }
            let mut replicas = Vec::with_capacity(n);
            for _ in 0..n {
                let node = r.u64()?;
                let shard = r.u32()?;
                r.zero_u32()?;
                replicas.push((node, shard));
            }
            partitions.push(MetaPartition { id, replicas });
        }
        let (sessions_max, session_results_max) = if version >= 2 {
            (r.u64()?, r.u64()?)
        } else {
            (0, 0)
        };
        let (history_revisions, history_bytes_max) = if version >= 3 {
            (Some(r.u64()?), r.u64()?)
        } else {
            (None, 0)
        };
        let backup_id = if version >= 4 { Some(r.u64()?) } else { None };
        if r.at != body.len() {
            return Err(bad("trailing bytes"));
        }
        let map = MetaMap {
            epoch,
            shards,
            ranges,
            partitions,
            sessions_max,
            session_results_max,
            history_revisions,
            history_bytes_max,
            backup_id,
        };
        map.validate()?;
        Ok(map)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], MetaError> {
        let s = self
            .b
            .get(self.at..self.at + N)
            .ok_or_else(|| MetaError::Encoding("truncated".into()))?;
        self.at += N;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, MetaError> {
        self.take::<2>().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, MetaError> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, MetaError> {
        self.take::<8>().map(u64::from_le_bytes)
    }
    /// A reserved field: zero as written, refused otherwise (so a later version can use it).
    fn zero_u32(&mut self) -> Result<(), MetaError> {
        let at = self.at;
        match self.u32()? {
            0 => Ok(()),
            _ => Err(MetaError::Encoding(format!(
                "nonzero reserved bytes at offset {at}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(nodes: u64, partitions: u32, shards: usize) -> NodeConfig {
        NodeConfig::for_tests(nodes, shards, partitions)
    }

    #[test]
    fn initial_map_round_trips_and_places_every_replica_on_its_shard() {
        let c = config(3, 8, 2);
        let m = MetaMap::initial(&c);
        m.validate().unwrap();
        assert_eq!(MetaMap::decode(&m.encode()).unwrap(), m);
        for p in &m.partitions {
            assert_eq!(p.replicas.len(), 3);
            assert!(p.replicas.iter().all(|r| r.1 as u64 == p.id % 2));
        }
        let hosted: Vec<Vec<u64>> = (0..2).map(|s| m.hosted(1, s)).collect();
        assert_eq!(hosted[0], vec![2, 4, 6, 8]);
        assert_eq!(hosted[1], vec![1, 3, 5, 7]);
        m.check_node(&c, 0, &hosted[0]).unwrap();
        m.check_node(&c, 1, &hosted[1]).unwrap();
    }

    fn hosted_of(m: &MetaMap, shard: usize) -> Vec<u64> {
        m.hosted(1, shard)
    }

    /// Found by fuzzing (`engine/fuzz/regressions/meta_map/reserved-bytes`): the reserved
    /// zero fields were read and ignored, so a map that no version writes decoded (and
    /// re-encoded to different bytes). Each reserved field is now checked.
    #[test]
    fn nonzero_reserved_bytes_are_refused() {
        let m = MetaMap::initial(&config(3, 2, 1));
        let good = m.encode();
        assert_eq!(MetaMap::decode(&good).unwrap(), m);
        // Header bytes 5..8 and 28..32; the first range's 4..8; the first partition's 12..16
        // and its first replica's 12..16 (layout in the module docs).
        let ranges_end = HEADER_BYTES + RANGE_BYTES * m.ranges.len();
        for at in [
            5,
            7,
            28,
            HEADER_BYTES + 4,
            ranges_end + 12,
            ranges_end + PARTITION_HEAD_BYTES + 12,
        ] {
            let mut b = good.to_vec();
            b[at] = 1;
            let end = b.len() - 4;
            let crc = crc32c::crc32c(&b[..end]);
            b[end..].copy_from_slice(&crc.to_le_bytes());
            match MetaMap::decode(&b) {
                Err(MetaError::Encoding(e)) => assert!(e.contains("reserved"), "{at}: {e}"),
                other => panic!("byte {at}: expected an encoding error, got {other:?}"),
            }
        }
    }

    #[test]
    fn mismatched_configuration_is_named() {
        let c = config(3, 8, 2);
        let m = MetaMap::initial(&c);
        let other = config(3, 16, 2);
        let e = m.check_node(&other, 0, &[]).unwrap_err();
        assert!(e.to_string().contains("--partitions"), "{e}");
        let other = config(3, 8, 1);
        let e = m.check_node(&other, 0, &[]).unwrap_err();
        assert!(e.to_string().contains("--shards"), "{e}");
        let mut fewer = config(2, 8, 2);
        fewer.id = 1;
        let e = m.check_node(&fewer, 0, &hosted_of(&m, 0)).unwrap_err();
        assert!(
            e.to_string().contains("node 3, which is not in --peers"),
            "{e}"
        );
        let e = m
            .check_voters(&[(1, vec![1, 2]), (2, vec![1, 2, 3])])
            .unwrap_err();
        assert!(
            e.to_string().contains("partition 1 has voters [1, 2]"),
            "{e}"
        );
        m.check_voters(&[(1, vec![1, 2, 3])]).unwrap();
        let e = m.check_node(&c, 0, &[2, 4]).unwrap_err();
        assert!(e.to_string().contains("shard 0"), "{e}");
    }

    /// Finding 7 of issue 10: the session limits decide replicated state, so the map records
    /// them and a node configured otherwise is refused, naming the setting.
    #[test]
    fn session_limits_must_match_the_cluster() {
        let c = config(3, 8, 2);
        let m = MetaMap::initial(&c);
        assert_eq!(m.sessions_max, c.tuning.sessions_max as u64);
        let mut other = c.clone();
        other.tuning.sessions_max += 1;
        let e = m.check_node(&other, 0, &hosted_of(&m, 0)).unwrap_err();
        assert!(e.to_string().contains("tuning.sessions_max"), "{e}");
        let mut other = c.clone();
        other.tuning.session_results_max *= 2;
        let e = m.check_node(&other, 0, &hosted_of(&m, 0)).unwrap_err();
        assert!(e.to_string().contains("tuning.session_results_max"), "{e}");
        // A version-1 map (no session settings) decodes and checks nothing about them.
        let mut v1 = m.encode().to_vec();
        v1[4] = 1;
        let body = v1.len() - 4 - SESSION_BYTES - 16 - 8;
        v1.drain(body..body + SESSION_BYTES + 16 + 8);
        let n = v1.len() - 4;
        let crc = crc32c::crc32c(&v1[..n]);
        v1[n..].copy_from_slice(&crc.to_le_bytes());
        let old = MetaMap::decode(&v1).unwrap();
        assert_eq!((old.sessions_max, old.session_results_max), (0, 0));
        assert_eq!(old.history_revisions, None);
        old.check_node(&other, 0, &hosted_of(&m, 0)).unwrap();
    }

    /// The history bound decides where every replica's compaction point moves, so the map
    /// records it and a node configured otherwise is refused; a version-2 map records none
    /// and is written back as version 2.
    #[test]
    fn history_revisions_must_match_the_cluster() {
        let c = config(3, 8, 2);
        let m = MetaMap::initial(&c);
        assert_eq!(m.history_revisions, Some(c.tuning.history_revisions));
        assert_eq!(MetaMap::decode(&m.encode()).unwrap(), m);
        let mut other = c.clone();
        other.tuning.history_revisions += 1;
        let e = m.check_node(&other, 0, &hosted_of(&m, 0)).unwrap_err();
        assert!(e.to_string().contains("tuning.history_revisions"), "{e}");
        let mut bytes_differ = c.clone();
        bytes_differ.tuning.history_bytes_max /= 2;
        let e = m
            .check_node(&bytes_differ, 0, &hosted_of(&m, 0))
            .unwrap_err();
        assert!(e.to_string().contains("tuning.history_bytes_max"), "{e}");
        let v2 = MetaMap {
            history_revisions: None,
            history_bytes_max: 0,
            backup_id: None,
            ..m.clone()
        };
        let bytes = v2.encode();
        assert_eq!(bytes[4], 2);
        assert_eq!(bytes.len(), m.encode().len() - 16 - 8);
        let back = MetaMap::decode(&bytes).unwrap();
        assert_eq!(back, v2);
        back.check_node(&other, 0, &hosted_of(&m, 0)).unwrap();
    }

    /// A restored cluster's map names its backup; a node restored from another backup, or
    /// not restored, is refused with both named; a version-3 map records none, checks
    /// nothing, and is written back as version 3.
    #[test]
    fn a_restored_cluster_refuses_a_node_from_another_backup() {
        let c = config(3, 8, 2);
        let fresh = MetaMap::initial(&c);
        assert_eq!(fresh.backup_id, Some(0));
        fresh.check_backup(0).unwrap();
        let e = fresh.check_backup(0xabc).unwrap_err().to_string();
        assert!(
            e.contains("bootstrapped by a node not restored")
                && e.contains("restored from backup 0000000000000abc"),
            "{e}"
        );
        let restored = MetaMap {
            backup_id: Some(u64::MAX - 1),
            ..fresh.clone()
        };
        let bytes = restored.encode();
        assert_eq!(bytes[4], VERSION);
        let back = MetaMap::decode(&bytes).unwrap();
        assert_eq!(back, restored);
        back.check_backup(u64::MAX - 1).unwrap();
        let e = back.check_backup(7).unwrap_err().to_string();
        assert!(
            e.contains("restored from backup fffffffffffffffe")
                && e.contains("this node was restored from backup 0000000000000007"),
            "{e}"
        );
        let e = back.check_backup(0).unwrap_err().to_string();
        assert!(e.contains("no RESTORED record"), "{e}");
        // Version 3: no backup id, nothing checked, written back as version 3.
        let v3 = MetaMap {
            backup_id: None,
            ..restored.clone()
        };
        let bytes = v3.encode();
        assert_eq!((bytes[4], bytes.len()), (3, restored.encode().len() - 8));
        let back = MetaMap::decode(&bytes).unwrap();
        assert_eq!(back, v3);
        back.check_backup(7).unwrap();
        back.check_backup(0).unwrap();
        // A backup id without the history setting is no map any version writes.
        let odd = MetaMap {
            history_revisions: None,
            ..restored
        };
        assert!(odd.validate().is_err());
    }

    #[test]
    fn every_truncation_and_bit_flip_is_a_typed_error() {
        let m = MetaMap::initial(&config(3, 4, 1));
        let bytes = m.encode();
        for cut in 0..bytes.len() {
            assert!(MetaMap::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.to_vec();
                b[i] ^= 1 << bit;
                assert!(MetaMap::decode(&b).is_err(), "flip byte {i} bit {bit}");
            }
        }
    }

    #[test]
    fn a_checksummed_but_invalid_map_is_refused() {
        let mut m = MetaMap::initial(&config(3, 4, 1));
        m.ranges.pop();
        let e = MetaMap::decode(&m.encode()).unwrap_err();
        assert!(matches!(e, MetaError::Invalid(_)), "{e}");
        let mut m = MetaMap::initial(&config(3, 4, 1));
        m.partitions[0].replicas[0].1 = 5;
        assert!(MetaMap::decode(&m.encode()).is_err());
        let mut m = MetaMap::initial(&config(3, 4, 1));
        m.epoch = 0;
        assert!(MetaMap::decode(&m.encode()).is_err());
    }
}
