//! Node configuration: what `corum serve` takes as flags or as a TOML file.
//!
//! # Addresses and shards
//! A node runs `shards` shards (one glommio executor each). Shard `i` listens for clients on
//! `client_addr.port() + i` and for peers on `peer_addr.port() + i`, on the same host. Shard `i`
//! of one node talks only to shard `i` of the others, so every node of a cluster must run the
//! same number of shards (checked when peers connect).
//!
//! `peers` is the initial cluster: node id -> that node's *base* peer address (its shard 0). It
//! includes this node, whose entry must equal `peer_addr`.
//!
//! # Placement
//! Partitions are numbered `1..=partitions`. Partition `p` has `replicas` replicas on distinct
//! nodes and lives on shard `p % shards` of each of them (DESIGN.md, "Data placement").
//!
//! # TOML
//! The file has the same names as the flags, with `[tuning]` for the rest:
//! ```toml
//! id = 1
//! data_dir = "/var/lib/corum"
//! client_addr = "127.0.0.1:7001"
//! peer_addr = "127.0.0.1:7101"
//! peers = { 1 = "127.0.0.1:7101", 2 = "127.0.0.1:7201", 3 = "127.0.0.1:7301" }
//! shards = 2
//! partitions = 64
//! replicas = 3
//! pin = false
//! metrics_addr = "127.0.0.1:9101"
//! [tuning]
//! tick_ms = 10
//! [tls]            # optional: TLS on the client, peer and operations ports (`server::tls`)
//! cert = "/etc/corum/node-1.pem"
//! key = "/etc/corum/node-1-key.pem"
//! ca = "/etc/corum/ca.pem"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Default number of partitions (Raft groups) in a new cluster.
pub const PARTITIONS_DEFAULT: u32 = 64;
/// Default number of replicas of each partition.
pub const REPLICAS_DEFAULT: usize = 3;

/// A configuration that cannot be used, with the reason.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A `--peers` list item is not `ID=HOST:PORT`.
    #[error("bad peer item {item:?}: expected ID=HOST:PORT ({reason})")]
    BadPeer {
        /// The offending item.
        item: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A node id appears twice in `peers`.
    #[error("node id {0} appears twice in peers")]
    DuplicatePeer(u64),
    /// The node's own id is missing from `peers`.
    #[error("node id {0} is not in peers")]
    SelfNotInPeers(u64),
    /// The node's own entry in `peers` differs from `peer_addr`.
    #[error("peers says node {id} is at {in_peers}, but peer_addr is {peer_addr}")]
    SelfAddressMismatch {
        /// This node's id.
        id: u64,
        /// The address listed in `peers`.
        in_peers: SocketAddr,
        /// The configured `peer_addr`.
        peer_addr: SocketAddr,
    },
    /// A value is out of its allowed range.
    #[error("{name} = {value} is out of range: {reason}")]
    OutOfRange {
        /// The setting.
        name: &'static str,
        /// Its value, printed.
        value: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// The TOML file could not be read or parsed.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Everything one node needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id (non-zero, unique in the cluster).
    pub id: u64,
    /// Directory for the WAL segments and snapshots of every shard.
    pub data_dir: PathBuf,
    /// Base client address: shard `i` listens on port + i.
    pub client_addr: SocketAddr,
    /// Base peer address: shard `i` listens on port + i.
    pub peer_addr: SocketAddr,
    /// The initial cluster: node id -> base peer address, this node included.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Number of shards (executors); every node of the cluster must use the same number.
    pub shards: usize,
    /// Number of partitions (Raft groups), numbered `1..=partitions`.
    #[serde(default = "partitions_default")]
    pub partitions: u32,
    /// Replicas per partition (at most the number of nodes).
    #[serde(default = "replicas_default")]
    pub replicas: usize,
    /// Pin shard `i` to core `i` (off by default, so several nodes can share a machine).
    #[serde(default)]
    pub pin: bool,
    /// Address of the operations HTTP port: Prometheus `/metrics`, `/health`, `/ready`
    /// (served by a thread of its own, not a shard). None: not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<SocketAddr>,
    /// Timing, limits and sizes.
    #[serde(default)]
    pub tuning: Tuning,
    /// TLS on the client, peer and operations ports (`server::tls` docs). None: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,
}

/// The files of a node's TLS settings (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The node's certificate chain (end-entity first); it must name `node-<id>`.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
    /// The cluster CA: signs every node's certificate and the client certificates accepted.
    pub ca: PathBuf,
}

fn partitions_default() -> u32 {
    PARTITIONS_DEFAULT
}

fn replicas_default() -> usize {
    REPLICAS_DEFAULT
}

/// Timing, limits and sizes. Every limit is explicit (STYLE.md item 5); units come last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// Length of one Raft tick in milliseconds.
    pub tick_ms: u64,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: u32,
    /// Minimum election timeout in ticks (the randomized timeout lies in `[min, 2 * min)`).
    pub election_ticks_min: u32,
    /// Serve linearizable reads from the leader's lease instead of a ReadIndex round. Off by
    /// default: it assumes bounded clock drift between nodes.
    pub lease_reads: bool,
    /// Take a snapshot of a partition once its retained log exceeds this many bytes.
    pub snapshot_log_bytes: u64,
    /// Maximum open client connections per shard.
    pub connections_max: usize,
    /// Maximum requests in flight on one client connection.
    pub connection_requests_max: usize,
    /// Maximum bytes of proposals queued for one partition before clients get `Busy`.
    pub proposal_queue_bytes_max: usize,
    /// Maximum key length in bytes.
    pub key_bytes_max: usize,
    /// Maximum value length in bytes.
    pub value_bytes_max: usize,
    /// Maximum frame length in bytes on either port.
    pub frame_bytes_max: usize,
    /// Size of one WAL segment file in bytes.
    pub wal_segment_bytes: u64,
    /// Client sessions remembered per partition for exactly-once retries.
    pub sessions_max: usize,
    /// Cached write results remembered per session and partition (pipelined writes awaiting
    /// their answer); at least `connection_requests_max`.
    pub session_results_max: usize,
    /// How many of each partition's most recent revisions stay readable by revision
    /// (`get --rev`); older superseded versions are compacted away. Default 1,000; 0 keeps no
    /// history. Must be the same on every node (recorded in the cluster map).
    pub history_revisions: u64,
    /// At most this many bytes of superseded versions (keys, values and 128 bytes each) per
    /// partition; past it the oldest are compacted sooner. Must be the same on every node
    /// (cluster map).
    pub history_bytes_max: u64,
    /// How long a request may wait for its commit or its read index before the server answers
    /// `Timeout` (outcome unknown for a write), in milliseconds.
    pub request_timeout_ms: u64,
    /// How long a peer connection may stall before it is dropped and redialed, in
    /// milliseconds: bytes written but not acknowledged by the peer's TCP for this long
    /// (`TCP_USER_TIMEOUT`), a write blocked this long, or an incoming connection on which
    /// nothing arrived for this long. Unset (the default): [`Tuning::peer_timeout`] derives it
    /// from the election timeout. The other peer-connection timings follow from it
    /// (`engine::server` docs, "Stalled peer connections").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_timeout_ms: Option<u64>,
    /// How long a partition's copy taken for `corum ctl backup` is kept when no chunk of it is
    /// asked for, in milliseconds (it is dropped at once after its last chunk).
    pub backup_copy_ttl_ms: u64,
    /// Bytes of backup copies one shard holds at most (counted as the partitions' key and
    /// value bytes); a new copy past it is answered `Busy`.
    pub backup_copy_bytes_max: u64,
}

/// The least derived peer timeout: below about a second, two consecutive losses of one TCP
/// segment (retransmitted after Linux's minimum RTO of 200 ms, then 400 ms) would already close
/// a healthy connection.
pub const PEER_TIMEOUT_MIN_DERIVED_MS: u64 = 1000;
/// The greatest peer timeout, set or derived (10 min).
pub const PEER_TIMEOUT_MAX_MS: u64 = 600_000;

impl Tuning {
    /// The peer-connection stall bound: `peer_timeout_ms` if set, else the longest randomized
    /// election timeout (`2 * election_ticks_min * tick_ms`), at least
    /// [`PEER_TIMEOUT_MIN_DERIVED_MS`]. With the defaults: 2 s. A connection that stalls that
    /// long is useless for Raft anyway (every follower behind it has timed out and campaigned),
    /// and redialing then bounds how long a healed network waits for TCP's backed-off
    /// retransmission timer.
    pub fn peer_timeout(&self) -> std::time::Duration {
        let ms = self.peer_timeout_ms.unwrap_or_else(|| {
            2u64.saturating_mul(u64::from(self.election_ticks_min))
                .saturating_mul(self.tick_ms)
                .clamp(PEER_TIMEOUT_MIN_DERIVED_MS, PEER_TIMEOUT_MAX_MS)
        });
        std::time::Duration::from_millis(ms)
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            tick_ms: 10,
            heartbeat_ticks: 10,
            election_ticks_min: 100,
            lease_reads: false,
            snapshot_log_bytes: 64 << 20,
            connections_max: 10_000,
            connection_requests_max: 4096,
            proposal_queue_bytes_max: 16 << 20,
            key_bytes_max: 8 << 10,
            value_bytes_max: 1 << 20,
            frame_bytes_max: 4 << 20,
            wal_segment_bytes: 64 << 20,
            sessions_max: 65_536,
            session_results_max: 4096,
            history_revisions: crate::state_machine::HISTORY_REVISIONS_DEFAULT,
            history_bytes_max: crate::state_machine::HISTORY_BYTES_MAX_DEFAULT,
            request_timeout_ms: 10_000,
            peer_timeout_ms: None,
            backup_copy_ttl_ms: 60_000,
            backup_copy_bytes_max: 4 << 30,
        }
    }
}

impl NodeConfig {
    /// For tests and examples that never start the node: node 1 of `nodes` on loopback (peer
    /// `n` at 127.0.0.1:(9000 + 100 n), client 127.0.0.1:9001; nothing is bound), `shards`
    /// shards, `partitions` partitions, 3 replicas, default tuning, data in `/tmp/unused`.
    #[doc(hidden)]
    pub fn for_tests(nodes: u64, shards: usize, partitions: u32) -> NodeConfig {
        let peers: BTreeMap<u64, SocketAddr> = (1..=nodes)
            .map(|n| {
                let port = u16::try_from(9000 + n * 100).expect("a port for every test node");
                (n, SocketAddr::from(([127, 0, 0, 1], port)))
            })
            .collect();
        NodeConfig {
            id: 1,
            data_dir: "/tmp/unused".into(),
            client_addr: SocketAddr::from(([127, 0, 0, 1], 9001)),
            peer_addr: peers[&1],
            peers,
            shards,
            partitions,
            replicas: 3,
            pin: false,
            metrics_addr: None,
            tuning: Tuning::default(),
            tls: None,
        }
    }

    /// Reads a TOML file and validates it.
    pub fn from_toml_file(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let config: NodeConfig = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule the rest of the engine relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let range = |name, value: String, reason| ConfigError::OutOfRange {
            name,
            value,
            reason,
        };
        if self.id == 0 {
            return Err(range("id", "0".into(), "node ids start at 1"));
        }
        match self.peers.get(&self.id) {
            None => return Err(ConfigError::SelfNotInPeers(self.id)),
            Some(addr) if *addr != self.peer_addr => {
                return Err(ConfigError::SelfAddressMismatch {
                    id: self.id,
                    in_peers: *addr,
                    peer_addr: self.peer_addr,
                })
            }
            Some(_) => {}
        }
        if self.peers.contains_key(&0) {
            return Err(range("peers", "0=...".into(), "node ids start at 1"));
        }
        if self.shards == 0 || self.shards > 1024 {
            return Err(range("shards", self.shards.to_string(), "must be 1..=1024"));
        }
        let port_span = |addr: SocketAddr| u32::from(addr.port()) + self.shards as u32 - 1;
        for addr in [self.client_addr, self.peer_addr]
            .into_iter()
            .chain(self.peers.values().copied())
        {
            if port_span(addr) > u32::from(u16::MAX) {
                return Err(range(
                    "shards",
                    self.shards.to_string(),
                    "base port + shards - 1 must be a valid port",
                ));
            }
        }
        if self.partitions == 0 || self.partitions > u32::from(wire::SLOT_COUNT) {
            return Err(range(
                "partitions",
                self.partitions.to_string(),
                "must be 1..=16384 (every partition owns at least one slot)",
            ));
        }
        if self.replicas == 0 || self.replicas > self.peers.len() {
            return Err(range(
                "replicas",
                self.replicas.to_string(),
                "must be 1..=number of nodes",
            ));
        }
        if let Some(m) = self.metrics_addr {
            let overlaps = |base: SocketAddr| {
                (base.ip() == m.ip() || base.ip().is_unspecified() || m.ip().is_unspecified())
                    && (base.port()..=port_span(base) as u16).contains(&m.port())
            };
            if overlaps(self.client_addr) || overlaps(self.peer_addr) {
                return Err(range(
                    "metrics_addr",
                    m.to_string(),
                    "must not be one of this node's client or peer ports (base port + shard)",
                ));
            }
        }
        let t = &self.tuning;
        if t.tick_ms == 0 || t.heartbeat_ticks == 0 {
            return Err(range("tuning", format!("{t:?}"), "ticks must be non-zero"));
        }
        if t.election_ticks_min <= t.heartbeat_ticks {
            return Err(range(
                "election_ticks_min",
                t.election_ticks_min.to_string(),
                "must exceed heartbeat_ticks",
            ));
        }
        if let Some(ms) = t.peer_timeout_ms {
            if !(PEER_TIMEOUT_MIN_DERIVED_MS..=PEER_TIMEOUT_MAX_MS).contains(&ms) {
                return Err(range(
                    "peer_timeout_ms",
                    ms.to_string(),
                    "must be 1000..=600000 (1 s to 10 min; below 1 s a healthy connection \
                     that loses two segments in a row would be closed)",
                ));
            }
        }
        if t.wal_segment_bytes < (1 << 20) || t.wal_segment_bytes % 4096 != 0 {
            return Err(range(
                "wal_segment_bytes",
                t.wal_segment_bytes.to_string(),
                "must be a multiple of 4096 and at least 1 MiB",
            ));
        }
        if t.sessions_max == 0 || t.session_results_max < t.connection_requests_max {
            return Err(range(
                "session_results_max",
                t.session_results_max.to_string(),
                "sessions_max must be non-zero and session_results_max at least \
                 connection_requests_max, or pipelined retries are refused",
            ));
        }
        if t.frame_bytes_max < t.key_bytes_max + t.value_bytes_max + 4096 {
            return Err(range(
                "frame_bytes_max",
                t.frame_bytes_max.to_string(),
                "must hold the largest key and value with room for headers",
            ));
        }
        // The cluster map is one meta-group entry, so it must travel in one peer frame (the
        // engine fills frames to half the limit) and sit in one WAL segment with room to spare.
        let map_bytes = crate::meta::MetaMap::initial(self).encoded_len();
        if map_bytes + 4096 > t.frame_bytes_max / 2
            || (map_bytes as u64) + 8192 > t.wal_segment_bytes / 2
        {
            return Err(range(
                "frame_bytes_max",
                t.frame_bytes_max.to_string(),
                "the cluster map (partitions x replicas) must fit in half a frame and half a WAL \
                 segment; raise frame_bytes_max / wal_segment_bytes or use fewer partitions",
            ));
        }
        Ok(())
    }

    /// Client address of shard `shard` of this node.
    pub fn shard_client_addr(&self, shard: usize) -> SocketAddr {
        shard_addr(self.client_addr, shard)
    }

    /// Peer address of shard `shard` of this node.
    pub fn shard_peer_addr(&self, shard: usize) -> SocketAddr {
        shard_addr(self.peer_addr, shard)
    }
}

/// The address of shard `shard` given a node's base address.
pub fn shard_addr(base: SocketAddr, shard: usize) -> SocketAddr {
    let mut addr = base;
    addr.set_port(base.port() + shard as u16);
    addr
}

/// Parses `1=HOST:PORT,2=HOST:PORT,...` (the `--peers` flag). Host names are resolved.
pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, SocketAddr>, ConfigError> {
    use std::net::ToSocketAddrs;
    let mut peers = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |reason: &str| ConfigError::BadPeer {
            item: item.to_owned(),
            reason: reason.to_owned(),
        };
        let (id, addr) = item.split_once('=').ok_or_else(|| bad("no '='"))?;
        let id: u64 = id.trim().parse().map_err(|_| bad("id is not a number"))?;
        let addr = addr
            .trim()
            .to_socket_addrs()
            .map_err(|e| bad(&e.to_string()))?
            .next()
            .ok_or_else(|| bad("address resolves to nothing"))?;
        if peers.insert(id, addr).is_some() {
            return Err(ConfigError::DuplicatePeer(id));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> NodeConfig {
        NodeConfig {
            id: 2,
            data_dir: "/tmp/x".into(),
            client_addr: "127.0.0.1:7201".parse().unwrap(),
            peer_addr: "127.0.0.1:7202".parse().unwrap(),
            peers: parse_peers("1=127.0.0.1:7102, 2=127.0.0.1:7202,3=127.0.0.1:7302").unwrap(),
            shards: 2,
            partitions: PARTITIONS_DEFAULT,
            replicas: REPLICAS_DEFAULT,
            pin: false,
            metrics_addr: None,
            tuning: Tuning::default(),
            tls: None,
        }
    }

    #[test]
    fn metrics_addr_must_not_take_a_shard_port() {
        let mut c = three();
        c.metrics_addr = Some("127.0.0.1:7203".parse().unwrap());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                name: "metrics_addr",
                ..
            })
        ));
        c.metrics_addr = Some("0.0.0.0:7201".parse().unwrap());
        assert!(c.validate().is_err());
        c.metrics_addr = Some("127.0.0.1:9201".parse().unwrap());
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("metrics_addr = \"127.0.0.1:9201\""), "{text}");
        let back: NodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        c.metrics_addr = None;
        assert!(!toml::to_string(&c).unwrap().contains("metrics_addr"));
    }

    #[test]
    fn valid_config_and_shard_addresses() {
        let c = three();
        c.validate().unwrap();
        assert_eq!(c.shard_client_addr(1).port(), 7202);
        assert_eq!(c.shard_peer_addr(1).port(), 7203);
        assert_eq!(crate::meta::shard_of_partition(&c, 5), 1);
    }

    #[test]
    fn placement_is_distinct_and_balanced() {
        let c = three();
        let mut first = [0usize; 4];
        for p in 1..=c.partitions as u64 {
            let r = crate::meta::initial_replicas(&c, p);
            assert_eq!(r.len(), 3);
            let mut d = r.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3, "replicas of {p} not distinct: {r:?}");
            first[r[0] as usize] += 1;
        }
        // 64 partitions over 3 nodes: 21 or 22 each as first replica.
        assert!(first[1..].iter().all(|&n| n == 21 || n == 22), "{first:?}");
    }

    /// The peer stall bound: the longest election timeout by default, 1 s at least, or the
    /// knob; out-of-range knob values are refused.
    #[test]
    fn peer_timeout_is_derived_from_the_election_timeout() {
        use std::time::Duration;
        let mut c = three();
        assert_eq!(c.tuning.peer_timeout(), Duration::from_secs(2));
        c.tuning.election_ticks_min = 300;
        assert_eq!(c.tuning.peer_timeout(), Duration::from_secs(6));
        c.tuning.election_ticks_min = 20;
        assert_eq!(c.tuning.peer_timeout(), Duration::from_secs(1));
        c.tuning.peer_timeout_ms = Some(1500);
        assert_eq!(c.tuning.peer_timeout(), Duration::from_millis(1500));
        c.validate().unwrap();
        for bad in [0, 99, 250, 999, 600_001] {
            c.tuning.peer_timeout_ms = Some(bad);
            assert!(matches!(
                c.validate(),
                Err(ConfigError::OutOfRange {
                    name: "peer_timeout_ms",
                    ..
                })
            ));
        }
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let mut c = three();
        c.peers.remove(&2);
        assert_eq!(c.validate(), Err(ConfigError::SelfNotInPeers(2)));
        let mut c = three();
        c.peer_addr = "127.0.0.1:9".parse().unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::SelfAddressMismatch { .. })
        ));
        let mut c = three();
        c.replicas = 4;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                name: "replicas",
                ..
            })
        ));
        let mut c = three();
        c.client_addr = "127.0.0.1:65535".parse().unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange { name: "shards", .. })
        ));
        let mut c = three();
        c.partitions = 16385;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                name: "partitions",
                ..
            })
        ));
        // 500 partitions x 3 replicas: a 40 KiB map does not fit half of a 32 KiB frame.
        let mut c = three();
        c.partitions = 500;
        c.tuning.value_bytes_max = 16 << 10;
        c.tuning.frame_bytes_max = 32 << 10;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::OutOfRange {
                name: "frame_bytes_max",
                ..
            })
        ));
        c.tuning.frame_bytes_max = 1 << 20;
        assert_eq!(c.validate(), Ok(()));
        let mut c = three();
        c.partitions = 16384;
        assert_eq!(
            c.validate(),
            Ok(()),
            "the largest map fits the default frame"
        );
        assert!(matches!(
            parse_peers("1=127.0.0.1:1,1=127.0.0.1:2"),
            Err(ConfigError::DuplicatePeer(1))
        ));
        assert!(matches!(
            parse_peers("x=127.0.0.1:1"),
            Err(ConfigError::BadPeer { .. })
        ));
        assert!(matches!(
            parse_peers("1:127.0.0.1:1"),
            Err(ConfigError::BadPeer { .. })
        ));
    }

    #[test]
    fn toml_round_trip_with_defaults() {
        let text = r#"
            id = 1
            data_dir = "/var/lib/corum"
            client_addr = "127.0.0.1:7001"
            peer_addr = "127.0.0.1:7101"
            peers = { 1 = "127.0.0.1:7101", 2 = "127.0.0.1:7201", 3 = "127.0.0.1:7301" }
            shards = 2
            [tuning]
            tick_ms = 5
        "#;
        let c: NodeConfig = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.partitions, PARTITIONS_DEFAULT);
        assert_eq!(c.tuning.tick_ms, 5);
        assert_eq!(c.tuning.heartbeat_ticks, Tuning::default().heartbeat_ticks);
        // Derived: two minimal election timeouts (100 ticks of 5 ms), at least 1 s.
        assert_eq!(
            c.tuning.peer_timeout(),
            std::time::Duration::from_millis(1000)
        );
        let back: NodeConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(toml::from_str::<NodeConfig>("id = 1\nbogus = 2").is_err());
    }
}
