//! corum-gateway: etcd's v3 gRPC API in front of a corum cluster.
//!
//! A stateless process that speaks etcd 3.4's gRPC API (package `etcdserverpb`, the paths
//! `/etcdserverpb.KV/Range` and so on) and forwards every call to corum through the native Rust
//! client ([`wire::client::Client`]). etcd tools and libraries (etcdctl, the Rust `etcd-client`
//! crate) use it unchanged for what corum can back today; everything else is refused with a
//! gRPC status that says what is missing, never a silent wrong answer.
//!
//! # What each etcd call becomes
//! - **Range** of one key: one corum get. Of a key range (`range_end`, a prefix, or "from key"
//!   with `range_end = "\0"`): pages of the client's `range` scan over every partition until the
//!   end, so `count` is the whole range's count and `more` is exact. Sorting, the min/max
//!   mod/create revision filters, `limit`, `keys_only` and `count_only` are applied here, as
//!   etcd's server applies them (`count` is the number of keys in the range before the
//!   revision filters, as in etcd; the whole range is kept only when the request sets a sort
//!   order or a filter, else the first `limit` + 1 keys in key order are kept, then sorted by
//!   the target, as etcd does). At most [`RANGE_BYTES_MAX`] bytes are kept (key + value + 128
//!   per key-value), else `ResourceExhausted`. A range over several partitions is not one snapshot: each
//!   partition's page is linearizable at its own moment. `serializable` reads become corum
//!   `Stale` reads (served by one replica from its local state without a consensus round, like
//!   etcd's serializable reads: they may lag). `revision != 0` is refused: corum keeps only the
//!   newest version of a key (multi-version reads come with issue 16).
//! - **Put**: one corum put (`prev_kv` -> `return_previous`). `ignore_value` and
//!   `ignore_lease` need the key to exist: they run as a corum transaction (compare the mod
//!   revision read just before, or existence for `ignore_lease`), so they are atomic; a key that
//!   keeps changing under `ignore_value` is retried a few times, then refused with `Aborted`.
//!   `lease != 0` is refused (no leases yet, issue 16).
//! - **DeleteRange** of one key: one corum delete. Of a range: page by page, the page's keys
//!   are listed (at most 1000), then deleted one by one (64 in flight). **This is not
//!   atomic**: another client can see some keys deleted and others not, keys written behind
//!   the listing survive, and a failure part-way leaves the keys deleted so far deleted (then
//!   the error is `Unknown` and says how many; with none deleted it is the original error).
//! - **Txn**: one corum transaction (atomic, one partition). Compares on value, version, create
//!   and mod revision; operations put, delete of one key, range of one key. Keys in different
//!   partitions are refused with `FailedPrecondition` naming the keys (use `{hash tags}`);
//!   lease compares, nested transactions and ranges or deletes over more than one key are
//!   refused with a message that says so.
//! - **Compact**: success without doing anything: corum keeps no old versions, so there is
//!   nothing to compact (and no watch history to cut).
//! - **Maintenance.Status** describes the meta group (partition 0), asking every node of the
//!   map and skipping those that do not answer: `leader` is its leader node (the header's
//!   member is 0: the gateway is no member), `raftIndex`/`raftTerm`/`raftAppliedIndex` the meta group's;
//!   `dbSize` is 0 (corum does not measure it). **Alarm** lists none; **Defragment** succeeds
//!   (nothing to defragment). **Cluster.MemberList**: one member per corum node of the cluster
//!   map, whose client URLs are this gateway's advertised URLs (etcd clients dial client URLs
//!   with gRPC, which corum's native port does not speak).
//! - **Limits**: [`REQUEST_BYTES_MAX`] per gRPC request (refused by tonic, `OutOfRange`),
//!   [`REQUESTS_IN_FLIGHT_MAX`] KV calls at once (more wait), [`REQUESTS_PER_CONNECTION_MAX`]
//!   per connection, 128 operations per transaction branch.
//! - Watch, Lease, Auth, member changes, Hash, Snapshot and MoveLeader: `Unimplemented`, naming
//!   the issue that brings them.
//!
//! # Response headers
//! `cluster_id` is a hash of the cluster's node ids. `member_id` is the node that led the
//! partition that served the call (from the client's map), 0 for follower reads, multi-
//! partition calls, Status and MemberList (the gateway itself is not a member). `revision` is the revision of a write **in its partition**: corum numbers
//! writes per partition today (one cluster-wide revision comes with issue 16), so revisions of
//! different keys are not comparable unless they share a partition; reads carry revision 0.
//! `raft_term` is the serving partition's term when one partition served the call.

#![deny(missing_docs)]

pub mod errors;
mod kv;

pub use kv::RANGE_BYTES_MAX;
mod services;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use wire::client::Client;

/// The etcd v3 API types and services generated from `proto/` by `build.rs`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// `mvccpb`: key-values and events.
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// `authpb`: users and roles.
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    /// `etcdserverpb`: the services and their messages.
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

use pb::etcdserverpb as epb;

/// The version reported by `Maintenance.Status`: the etcd API version the gateway speaks, then
/// corum's version (semver pre-release syntax, so tools that parse etcd versions accept it).
pub const VERSION: &str = concat!("3.4.0-corum-", env!("CARGO_PKG_VERSION"));

/// Interval of the health probe behind the gRPC health service.
pub const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Largest gRPC request the gateway decodes: etcd's default request limit (1.5 MiB) plus its
/// allowance for gRPC overhead (512 KiB).
pub const REQUEST_BYTES_MAX: usize = (3 << 19) + (512 << 10);

/// Most KV calls the gateway runs at once, over all connections; more wait for a slot. A
/// range may hold up to [`RANGE_BYTES_MAX`] while it runs, so the calls' memory is bounded by
/// this times that (and the corum calls in flight by this times 64, a range delete's window).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 256;

/// Most requests one gRPC connection (HTTP/2 streams) may have in flight; more wait.
pub const REQUESTS_PER_CONNECTION_MAX: usize = 64;

/// The gateway's shared state: the corum client and what it tells etcd clients about itself.
#[derive(Debug)]
pub struct Gateway {
    client: Client,
    advertise_client_urls: Vec<String>,
    /// KV calls in flight, at most [`REQUESTS_IN_FLIGHT_MAX`].
    in_flight: tokio::sync::Semaphore,
}

impl Gateway {
    /// A gateway over a connected corum client, advertising `advertise_client_urls` as every
    /// member's client URLs.
    pub fn new(client: Client, advertise_client_urls: Vec<String>) -> Self {
        Self {
            client,
            advertise_client_urls,
            in_flight: tokio::sync::Semaphore::new(REQUESTS_IN_FLIGHT_MAX),
        }
    }

    /// The corum client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The node ids of the cluster map, ascending.
    fn node_ids(&self) -> Vec<u64> {
        let map = self.client.cluster_map();
        let mut ids: Vec<u64> = map
            .partitions
            .iter()
            .flat_map(|p| p.replicas.iter().map(|r| r.node))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// A fixed id for the cluster: FNV-1a over its node ids (the map names no cluster).
    fn cluster_id(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for id in self.node_ids() {
            for b in id.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    /// The node the client's map names as the leader of `partition` (0: unknown).
    fn leader_of(&self, partition: u64) -> u64 {
        self.client
            .cluster_map()
            .partition(partition)
            .map_or(0, |p| p.leader_node)
    }

    /// A response header (see "Response headers" in the crate docs).
    fn header(&self, member_id: u64, revision: u64, raft_term: u64) -> epb::ResponseHeader {
        epb::ResponseHeader {
            cluster_id: self.cluster_id(),
            member_id,
            revision: i64::try_from(revision).unwrap_or(i64::MAX),
            raft_term,
        }
    }
}

/// Serves the gateway's gRPC services (and `grpc.health.v1.Health`) on `listener` until
/// `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    use epb::auth_server::AuthServer;
    use epb::cluster_server::ClusterServer;
    use epb::kv_server::KvServer;
    use epb::lease_server::LeaseServer;
    use epb::maintenance_server::MaintenanceServer;
    use epb::watch_server::WatchServer;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let probe = tokio::spawn(services::health_probe(gateway.clone(), reporter));
    let limit = REQUEST_BYTES_MAX;
    let result = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .add_service(health)
        .add_service(KvServer::from_arc(gateway.clone()).max_decoding_message_size(limit))
        .add_service(WatchServer::from_arc(gateway.clone()).max_decoding_message_size(limit))
        .add_service(LeaseServer::from_arc(gateway.clone()).max_decoding_message_size(limit))
        .add_service(ClusterServer::from_arc(gateway.clone()).max_decoding_message_size(limit))
        .add_service(MaintenanceServer::from_arc(gateway.clone()).max_decoding_message_size(limit))
        .add_service(AuthServer::from_arc(gateway).max_decoding_message_size(limit))
        // TCP_NODELAY on every accepted connection: tonic's `tcp_nodelay` default (on) applies
        // only to the sockets it binds itself, and `TcpIncoming::from` leaves the OS default
        // (Nagle on), under which a small response can wait for the client's delayed ACK
        // (~40 ms on Linux; bench-results/2026-11-28-gateway-overhead.md).
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await;
    probe.abort();
    result
}
