//! The corum target: corum's native protocol through the wire crate's Rust client
//! ([`wire::client::Client`]).
//!
//! Each loadgen connection is one `Client`: its own session, its own cluster map, and one TCP
//! connection to every shard endpoint it sends to (a request goes straight to the shard that
//! leads the key's partition). Clones of a connection share the client, so requests of the
//! workers on one connection are pipelined on the same sockets and batched into frames.
//! Connection `i` takes endpoint `i mod endpoints` as its first seed, so map fetches spread
//! over the nodes; the data traffic goes wherever the partition leaders are.
//!
//! Mapping of operations:
//! - put: `Put` (unconditional);
//! - get: `Get` with the consistency level mapped one to one ([`Consistency::Linearizable`]:
//!   ReadIndex on the leader; [`Consistency::Follower`]: a follower read after a read index;
//!   [`Consistency::Stale`]: the replica's local state);
//! - cas: a one-partition `Txn` with `mod_revision(key) == expected` then `Put` (a missing key
//!   has mod revision 0, as in etcd, so `expected = 0` means "only if absent");
//! - range: the client's merged range over every partition, one page of at most `limit` keys;
//! - delete: `Delete`.
//!
//! Every call has the client's own deadline ([`ClientConfig::request_timeout`], set from
//! [`CorumTarget::with_request_timeout`]); the runner's per-operation timeout applies on top.

use std::time::Duration;

use bytes::Bytes;
use wire::client::{Client, ClientConfig, ClientError, RangeOptions};
use wire::messages::{Compare, CompareOp, CompareTarget, Put, Txn, TxnOp};

use crate::target::{Connection, Consistency, OpError, Target, TargetError, Versioned};

/// A corum cluster reached through the given client endpoints (`127.0.0.1:7000`, ...).
#[derive(Debug, Clone)]
pub struct CorumTarget {
    endpoints: Vec<String>,
    request_timeout: Duration,
    tls: Option<wire::client::TlsClientConfig>,
}

impl CorumTarget {
    /// A target over these client endpoints (`host:port`; a leading `corum://` or `tcp://` is
    /// dropped). The client's per-call deadline defaults to 10 s.
    pub fn new(endpoints: Vec<String>) -> Result<Self, TargetError> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| {
                e.split_once("://")
                    .map_or(e.as_str(), |(_, rest)| rest)
                    .trim_end_matches('/')
                    .to_string()
            })
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(TargetError::Unavailable(
                "corum target: no endpoints given".into(),
            ));
        }
        Ok(CorumTarget {
            endpoints,
            request_timeout: Duration::from_secs(10),
            tls: None,
        })
    }

    /// Sets the client's deadline for one call, retries included.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Connects over TLS (`wire::client::tls`).
    pub fn with_tls(mut self, tls: Option<wire::client::TlsClientConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn config(&self, index: usize) -> ClientConfig {
        // Seed order: this connection's endpoint first, then the others.
        let n = self.endpoints.len();
        let seeds = (0..n)
            .map(|k| self.endpoints[(index + k) % n].clone())
            .collect();
        let mut cfg = ClientConfig::new(seeds);
        cfg.request_timeout = self.request_timeout;
        cfg.tls = self.tls.clone();
        cfg
    }
}

/// One corum client (its connections are shared by every clone).
#[derive(Debug, Clone)]
pub struct CorumConn {
    client: Client,
}

impl CorumConn {
    /// The underlying client.
    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn err(e: ClientError) -> OpError {
    tracing::debug!(error = %e, "corum operation failed");
    match e {
        ClientError::Timeout { .. } => OpError::Timeout,
        ClientError::Server(s) => OpError::Server(s.to_string()),
        ClientError::Invalid(d) => OpError::Server(format!("refused by the client: {d}")),
        e @ (ClientError::CrossPartition(..) | ClientError::Protocol(_)) => {
            OpError::BadResponse(e.to_string())
        }
    }
}

fn consistency(c: Consistency) -> wire::messages::Consistency {
    match c {
        Consistency::Linearizable => wire::messages::Consistency::Linearizable,
        Consistency::Follower => wire::messages::Consistency::Follower,
        Consistency::Stale => wire::messages::Consistency::Stale,
    }
}

impl Target for CorumTarget {
    type Conn = CorumConn;

    fn system(&self) -> &'static str {
        "corum"
    }

    async fn connect(&self, index: usize) -> Result<CorumConn, TargetError> {
        let cfg = self.config(index);
        let first = cfg.seeds.first().cloned().unwrap_or_default();
        let client = Client::connect(cfg)
            .await
            .map_err(|e| TargetError::Connect {
                endpoint: first,
                reason: e.to_string(),
            })?;
        Ok(CorumConn { client })
    }
}

impl Connection for CorumConn {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        self.client.put(key, value).await.map_err(err)?;
        Ok(())
    }

    async fn get(&self, key: Vec<u8>, c: Consistency) -> Result<Option<Versioned>, OpError> {
        let kv = self
            .client
            .get_with(key, consistency(c))
            .await
            .map_err(err)?;
        Ok(kv.map(|kv| Versioned {
            value: kv.value.to_vec(),
            mod_revision: kv.mod_revision,
        }))
    }

    async fn cas(
        &self,
        key: Vec<u8>,
        expected_revision: u64,
        value: Vec<u8>,
    ) -> Result<bool, OpError> {
        let key = Bytes::from(key);
        let txn = Txn {
            compares: vec![Compare {
                key: key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(expected_revision),
            }],
            success: vec![TxnOp::Put(Put {
                key,
                value: value.into(),
                if_absent: false,
                return_previous: false,
            })],
            failure: Vec::new(),
        };
        Ok(self.client.txn(txn).await.map_err(err)?.succeeded)
    }

    async fn range(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
        c: Consistency,
    ) -> Result<usize, OpError> {
        if start >= end || limit == 0 {
            return Ok(0);
        }
        let limit = u32::try_from(limit)
            .map_err(|_| OpError::BadResponse(format!("range limit {limit} over u32")))?;
        let page = self
            .client
            .range(RangeOptions {
                start: start.into(),
                end: end.into(),
                limit,
                keys_only: false,
                consistency: consistency(c),
                after: Bytes::new(),
            })
            .await
            .map_err(err)?;
        if page.kvs.len() > limit as usize {
            return Err(OpError::BadResponse(format!(
                "range returned {} keys, limit {limit}",
                page.kvs.len()
            )));
        }
        Ok(page.kvs.len())
    }

    async fn delete(&self, key: Vec<u8>) -> Result<bool, OpError> {
        Ok(self.client.delete(key).await.map_err(err)?.deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised_and_seeds_rotate() {
        let t = CorumTarget::new(vec![
            "corum://127.0.0.1:7000/".into(),
            "127.0.0.1:7002".into(),
            "".into(),
        ])
        .unwrap();
        assert_eq!(t.endpoints(), ["127.0.0.1:7000", "127.0.0.1:7002"]);
        assert_eq!(t.config(1).seeds, ["127.0.0.1:7002", "127.0.0.1:7000"]);
        assert!(CorumTarget::new(vec![]).is_err());
    }
}
