//! The cluster map: slot ranges -> partition -> replicas, with leader hints and an epoch.
//!
//! Invariants (checked by [`ClusterMap::validate`], which every decoded map passes):
//! 1. `ranges` are sorted, non-empty, contiguous and cover `0..SLOT_COUNT` exactly.
//! 2. Every range names a partition listed in `partitions`; partition ids are unique.
//! 3. Every partition has at least one replica, on distinct nodes.
//! 4. A partition's `leader_node` is 0 (unknown) or one of its replicas' nodes.

use crate::slot::{slot_of, SLOT_COUNT};

/// Slots `start..end` belong to `partition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotRange {
    /// First slot.
    pub start: u16,
    /// One past the last slot (at most [`SLOT_COUNT`]).
    pub end: u16,
    /// The partition (Raft group) owning these slots.
    pub partition: u64,
}

/// One replica of a partition: a shard (core) of a node, reachable at `endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Replica {
    /// Node id (never 0).
    pub node: u64,
    /// Shard (core index) on that node hosting this replica.
    pub shard: u32,
    /// That shard's client endpoint, `host:port`.
    pub endpoint: String,
}

/// One partition: its replicas and who is believed to lead it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionInfo {
    /// Partition id.
    pub id: u64,
    /// Its replicas, on distinct nodes.
    pub replicas: Vec<Replica>,
    /// Leader hint: a replica's node id, or 0 when unknown.
    pub leader_node: u64,
}

impl PartitionInfo {
    /// The replica believed to lead, if the hint names one.
    pub fn leader(&self) -> Option<&Replica> {
        if self.leader_node == 0 {
            return None;
        }
        self.replicas.iter().find(|r| r.node == self.leader_node)
    }
}

/// The cluster map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ClusterMap {
    /// Epoch: grows with every change of placement. A request routed with an older epoch may
    /// be refused with `StaleMap`.
    pub epoch: u64,
    /// Slot ranges, sorted by `start`.
    pub ranges: Vec<SlotRange>,
    /// Partitions, in any order.
    pub partitions: Vec<PartitionInfo>,
}

/// Why a cluster map is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cluster map: {0}")]
pub struct MapError(pub String);

impl ClusterMap {
    /// A map that splits the slots as evenly as possible among `partitions`, in order.
    pub fn uniform(epoch: u64, partitions: Vec<PartitionInfo>) -> Self {
        let n = partitions.len().max(1) as u32;
        let slots = u32::from(SLOT_COUNT);
        let ranges = partitions
            .iter()
            .enumerate()
            .map(|(i, p)| SlotRange {
                start: (i as u32 * slots / n) as u16,
                end: ((i as u32 + 1) * slots / n) as u16,
                partition: p.id,
            })
            .collect();
        Self {
            epoch,
            ranges,
            partitions,
        }
    }

    /// Checks the invariants listed in the module docs.
    pub fn validate(&self) -> Result<(), MapError> {
        let mut next = 0u16;
        for r in &self.ranges {
            if r.start != next || r.end <= r.start || r.end > SLOT_COUNT {
                return Err(MapError(format!(
                    "slot range {}..{} does not continue at {next}",
                    r.start, r.end
                )));
            }
            if self.partition(r.partition).is_none() {
                return Err(MapError(format!(
                    "slot range names unknown partition {}",
                    r.partition
                )));
            }
            next = r.end;
        }
        if next != SLOT_COUNT {
            return Err(MapError(format!(
                "slot ranges end at {next}, not {SLOT_COUNT}"
            )));
        }
        for (i, p) in self.partitions.iter().enumerate() {
            if self.partitions[..i].iter().any(|q| q.id == p.id) {
                return Err(MapError(format!("partition {} listed twice", p.id)));
            }
            if p.replicas.is_empty() {
                return Err(MapError(format!("partition {} has no replica", p.id)));
            }
            for (j, r) in p.replicas.iter().enumerate() {
                if r.node == 0 || p.replicas[..j].iter().any(|s| s.node == r.node) {
                    return Err(MapError(format!(
                        "partition {}: bad or repeated node {}",
                        p.id, r.node
                    )));
                }
            }
            if p.leader_node != 0 && p.leader().is_none() {
                return Err(MapError(format!(
                    "partition {}: leader hint {} is not a replica",
                    p.id, p.leader_node
                )));
            }
        }
        Ok(())
    }

    /// The partition with id `id`.
    pub fn partition(&self, id: u64) -> Option<&PartitionInfo> {
        self.partitions.iter().find(|p| p.id == id)
    }

    /// The partition owning `slot`.
    pub fn partition_of_slot(&self, slot: u16) -> Option<&PartitionInfo> {
        let i = self.ranges.partition_point(|r| r.end <= slot);
        let r = self.ranges.get(i)?;
        if r.start <= slot && slot < r.end {
            self.partition(r.partition)
        } else {
            None
        }
    }

    /// The partition owning `key` (hash tags honoured, see [`crate::slot`]).
    pub fn partition_of_key(&self, key: &[u8]) -> Option<&PartitionInfo> {
        self.partition_of_slot(slot_of(key))
    }

    /// Where to send a request for `key`: the leader hint, else the first replica.
    pub fn route(&self, key: &[u8]) -> Option<(&PartitionInfo, &Replica)> {
        let p = self.partition_of_key(key)?;
        let r = p.leader().or_else(|| p.replicas.first())?;
        Some((p, r))
    }

    /// Records a new leader hint; ignored if `node` is not a replica of `partition`.
    pub fn set_leader(&mut self, partition: u64, node: u64) {
        if let Some(p) = self.partitions.iter_mut().find(|p| p.id == partition) {
            if node == 0 || p.replicas.iter().any(|r| r.node == node) {
                p.leader_node = node;
            }
        }
    }

    /// Every distinct client endpoint in the map, in first-seen order.
    pub fn endpoints(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in self.partitions.iter().flat_map(|p| &p.replicas) {
            if !out.contains(&r.endpoint.as_str()) {
                out.push(&r.endpoint);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(id: u64, nodes: &[u64]) -> PartitionInfo {
        PartitionInfo {
            id,
            replicas: nodes
                .iter()
                .map(|&n| Replica {
                    node: n,
                    shard: (id % 2) as u32,
                    endpoint: format!("10.0.0.{n}:7000"),
                })
                .collect(),
            leader_node: nodes[0],
        }
    }

    #[test]
    fn uniform_map_is_valid_and_routes_every_slot() {
        let map = ClusterMap::uniform(3, (1..=7).map(|i| part(i, &[1, 2, 3])).collect());
        map.validate().unwrap();
        for slot in 0..SLOT_COUNT {
            let p = map.partition_of_slot(slot).unwrap();
            let r = map.ranges.iter().find(|r| r.partition == p.id).unwrap();
            assert!(r.start <= slot && slot < r.end);
        }
        let (p, r) = map.route(b"{tag}a").unwrap();
        assert_eq!(p.id, map.route(b"{tag}b").unwrap().0.id);
        assert_eq!(r.node, 1);
        assert_eq!(
            map.endpoints(),
            vec!["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"]
        );
    }

    #[test]
    fn validate_rejects_bad_maps() {
        let good = ClusterMap::uniform(1, vec![part(1, &[1, 2]), part(2, &[2, 3])]);
        let mut m = good.clone();
        m.ranges[1].start += 1;
        assert!(m.validate().is_err());
        let mut m = good.clone();
        m.ranges.pop();
        assert!(m.validate().is_err());
        let mut m = good.clone();
        m.ranges[0].partition = 9;
        assert!(m.validate().is_err());
        let mut m = good.clone();
        m.partitions[0].leader_node = 3;
        assert!(m.validate().is_err());
        let mut m = good.clone();
        m.partitions[1].replicas[1].node = 2;
        assert!(m.validate().is_err());
        let mut m = good;
        m.set_leader(2, 3);
        assert_eq!(m.partition(2).unwrap().leader().unwrap().node, 3);
        m.set_leader(2, 1); // not a replica: ignored
        assert_eq!(m.partition(2).unwrap().leader_node, 3);
        m.validate().unwrap();
    }
}
