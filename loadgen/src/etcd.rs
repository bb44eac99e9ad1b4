//! The etcd target: the etcd v3 KV API over gRPC, through the `etcd-client` crate (the same
//! client corum's future etcd gateway must serve unchanged).
//!
//! Each loadgen connection is one `etcd_client::Client` (one HTTP/2 connection) to one endpoint;
//! connection `i` goes to endpoint `i mod endpoints`, like etcd's own `benchmark` tool, so load
//! spreads over the members (followers forward writes and linearizable reads to the leader).
//!
//! Mapping of operations:
//! - put: `Put`;
//! - get: `Range` on one key; [`Consistency::Stale`] sets `serializable` (served by the member
//!   the connection is on), the two linearizable levels use etcd's default linearizable read;
//! - cas: `Txn` with `mod_revision(key) == expected` then `Put` (a missing key has revision 0);
//! - range: `Range [start, end)` with a limit;
//! - delete: `DeleteRange` on one key.

use etcd_client::{Client, Compare, CompareOp, GetOptions, KvClient, Txn, TxnOp};

use crate::target::{Connection, Consistency, OpError, Target, TargetError, Versioned};

/// An etcd cluster reached at the given endpoints (`http://127.0.0.1:2379`, ...).
#[derive(Debug, Clone)]
pub struct EtcdTarget {
    endpoints: Vec<String>,
}

impl EtcdTarget {
    /// A target over these client endpoints. Endpoints without a scheme get `http://`.
    pub fn new(endpoints: Vec<String>) -> Result<Self, TargetError> {
        if endpoints.is_empty() {
            return Err(TargetError::Unavailable(
                "etcd target: no endpoints given".into(),
            ));
        }
        let endpoints = endpoints
            .into_iter()
            .map(|e| {
                if e.contains("://") {
                    e
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        Ok(EtcdTarget { endpoints })
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }
}

/// One gRPC connection to one etcd member.
#[derive(Clone)]
pub struct EtcdConn {
    kv: KvClient,
}

impl std::fmt::Debug for EtcdConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcdConn")
    }
}

fn err(e: etcd_client::Error) -> OpError {
    tracing::debug!(error = %e, "etcd operation failed");
    match e {
        etcd_client::Error::TransportError(t) => OpError::Connection(t.to_string()),
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            tonic::Code::DeadlineExceeded => OpError::Timeout,
            tonic::Code::Unavailable => OpError::Connection(s.message().to_string()),
            _ => OpError::Server(format!("{:?}: {}", s.code(), s.message())),
        },
        other => OpError::Server(other.to_string()),
    }
}

impl Target for EtcdTarget {
    type Conn = EtcdConn;

    fn system(&self) -> &'static str {
        "etcd"
    }

    async fn connect(&self, index: usize) -> Result<EtcdConn, TargetError> {
        let endpoint = self.endpoints[index % self.endpoints.len()].clone();
        let client = Client::connect([endpoint.as_str()], None)
            .await
            .map_err(|e| TargetError::Connect {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            })?;
        Ok(EtcdConn {
            kv: client.kv_client(),
        })
    }
}

impl Connection for EtcdConn {
    async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
        self.kv.clone().put(key, value, None).await.map_err(err)?;
        Ok(())
    }

    async fn get(
        &self,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> Result<Option<Versioned>, OpError> {
        let opts = match consistency {
            Consistency::Stale => Some(GetOptions::new().with_serializable()),
            Consistency::Linearizable | Consistency::Follower => None,
        };
        let resp = self.kv.clone().get(key, opts).await.map_err(err)?;
        match resp.kvs() {
            [] => Ok(None),
            [kv] => Ok(Some(Versioned {
                value: kv.value().to_vec(),
                mod_revision: u64::try_from(kv.mod_revision()).map_err(|_| {
                    OpError::BadResponse(format!("negative mod_revision {}", kv.mod_revision()))
                })?,
            })),
            many => Err(OpError::BadResponse(format!(
                "get of one key returned {} keys",
                many.len()
            ))),
        }
    }

    async fn cas(
        &self,
        key: Vec<u8>,
        expected_revision: u64,
        value: Vec<u8>,
    ) -> Result<bool, OpError> {
        let rev = i64::try_from(expected_revision).map_err(|_| {
            OpError::BadResponse(format!("revision {expected_revision} out of etcd's range"))
        })?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self.kv.clone().txn(txn).await.map_err(err)?;
        Ok(resp.succeeded())
    }

    async fn range(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
        consistency: Consistency,
    ) -> Result<usize, OpError> {
        let mut opts = GetOptions::new().with_range(end).with_limit(limit as i64);
        if consistency == Consistency::Stale {
            opts = opts.with_serializable();
        }
        let resp = self.kv.clone().get(start, Some(opts)).await.map_err(err)?;
        Ok(resp.kvs().len())
    }

    async fn delete(&self, key: Vec<u8>) -> Result<bool, OpError> {
        let resp = self.kv.clone().delete(key, None).await.map_err(err)?;
        Ok(resp.deleted() > 0)
    }
}
