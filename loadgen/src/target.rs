//! The system under test, as loadgen sees it.
//!
//! A [`Target`] knows where a system is and opens [`Connection`]s to it. A connection is a cheap,
//! cloneable handle on which many requests may be in flight at once (the runner clones it into
//! every worker that shares the connection: that is the pipelining depth). Every operation
//! returns its result as a value; failures are [`OpError`]s, counted by [`OpError::kind`] and
//! never a panic.
//!
//! Adding a system means implementing these two traits; nothing else in loadgen changes.
//! The futures must be `Send` because the runner drives them on tokio's multi-threaded runtime.

use std::future::Future;

/// How fresh a read must be.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Linearizable: the read sees every write acknowledged before it started.
    Linearizable,
    /// Linearizable, served by a follower that asked the leader for a read index. Targets that
    /// have no such mode serve it as their linearizable read (etcd does exactly this when the
    /// connection is to a follower).
    Follower,
    /// Served from local state; may lag (etcd: a serializable range).
    Stale,
}

/// A value and the version token compare-and-set needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored value.
    pub value: Vec<u8>,
    /// The revision of the last write to this key (etcd's `mod_revision`; corum keeps the same
    /// per-key metadata). A key that does not exist has revision 0.
    pub mod_revision: u64,
}

/// Why an operation failed. The runner counts failures by [`OpError::kind`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpError {
    /// No response within the run's per-operation timeout.
    #[error("operation timed out")]
    Timeout,
    /// The connection failed or could not be made.
    #[error("connection: {0}")]
    Connection(String),
    /// The server answered with an error.
    #[error("server: {0}")]
    Server(String),
    /// The server's answer did not make sense (e.g. a range returned more keys than its limit).
    #[error("bad response: {0}")]
    BadResponse(String),
}

impl OpError {
    /// A short stable name used as the key of error counts in reports.
    pub fn kind(&self) -> &'static str {
        match self {
            OpError::Timeout => "timeout",
            OpError::Connection(_) => "connection",
            OpError::Server(_) => "server",
            OpError::BadResponse(_) => "bad_response",
        }
    }
}

/// Errors setting up a target (connecting, starting a local cluster).
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The target cannot be used in this build (e.g. the corum target before the engine exists).
    #[error("{0}")]
    Unavailable(String),
    /// Connecting to an endpoint failed.
    #[error("connecting to {endpoint}: {reason}")]
    Connect {
        /// The endpoint that refused.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// Starting or stopping a local cluster failed.
    #[error("local cluster: {0}")]
    Local(String),
    /// An I/O error with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What loadgen was doing.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A system under test: knows its endpoints and opens connections.
pub trait Target: Send + Sync + 'static {
    /// The connection handle type.
    type Conn: Connection;

    /// A short name for reports (`etcd`, `corum`, `mem`).
    fn system(&self) -> &'static str;

    /// Opens connection number `index` (the runner opens `connections` of them, numbered from 0;
    /// a target may use the index to spread connections over endpoints).
    fn connect(&self, index: usize)
        -> impl Future<Output = Result<Self::Conn, TargetError>> + Send;
}

/// One connection to a system under test. Clones share the underlying connection, and may have
/// operations in flight concurrently (pipelining).
pub trait Connection: Clone + Send + Sync + 'static {
    /// Writes `value` under `key` (unconditionally).
    fn put(&self, key: Vec<u8>, value: Vec<u8>)
        -> impl Future<Output = Result<(), OpError>> + Send;

    /// Reads `key` at the given consistency; `None` when absent.
    fn get(
        &self,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Option<Versioned>, OpError>> + Send;

    /// Writes `value` under `key` only if the key's mod revision is still `expected_revision`
    /// (0: only if absent). Returns whether the write happened.
    fn cas(
        &self,
        key: Vec<u8>,
        expected_revision: u64,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<bool, OpError>> + Send;

    /// Reads at most `limit` keys in `[start, end)` at the given consistency; returns how many
    /// keys came back.
    fn range(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: usize,
        consistency: Consistency,
    ) -> impl Future<Output = Result<usize, OpError>> + Send;

    /// Deletes `key`; returns whether it existed.
    fn delete(&self, key: Vec<u8>) -> impl Future<Output = Result<bool, OpError>> + Send;
}

/// An in-process target: a sorted map behind a mutex. It stores nothing durably and sends
/// nothing over a network; it exists to measure loadgen's own overhead (`--target mem`) and to
/// test the runner's accounting.
pub mod mem {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// The in-process target. Cloning shares the map.
    #[derive(Debug, Clone, Default)]
    pub struct MemTarget {
        inner: Arc<Mutex<Inner>>,
    }

    #[derive(Debug, Default)]
    struct Inner {
        map: BTreeMap<Vec<u8>, Versioned>,
        revision: u64,
    }

    impl MemTarget {
        /// An empty store.
        pub fn new() -> Self {
            Self::default()
        }

        /// Number of keys stored.
        pub fn len(&self) -> usize {
            self.lock().map.len()
        }

        /// Whether the store is empty.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
            // A poisoned lock only means another task panicked mid-operation; the map itself
            // is always left consistent (every mutation is a single insert/remove).
            self.inner.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl Target for MemTarget {
        type Conn = MemTarget;

        fn system(&self) -> &'static str {
            "mem"
        }

        async fn connect(&self, _index: usize) -> Result<MemTarget, TargetError> {
            Ok(self.clone())
        }
    }

    impl Connection for MemTarget {
        async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), OpError> {
            let mut g = self.lock();
            g.revision += 1;
            let mod_revision = g.revision;
            g.map.insert(
                key,
                Versioned {
                    value,
                    mod_revision,
                },
            );
            Ok(())
        }

        async fn get(&self, key: Vec<u8>, _c: Consistency) -> Result<Option<Versioned>, OpError> {
            Ok(self.lock().map.get(&key).cloned())
        }

        async fn cas(&self, key: Vec<u8>, expected: u64, value: Vec<u8>) -> Result<bool, OpError> {
            let mut g = self.lock();
            let current = g.map.get(&key).map_or(0, |v| v.mod_revision);
            if current != expected {
                return Ok(false);
            }
            g.revision += 1;
            let mod_revision = g.revision;
            g.map.insert(
                key,
                Versioned {
                    value,
                    mod_revision,
                },
            );
            Ok(true)
        }

        async fn range(
            &self,
            start: Vec<u8>,
            end: Vec<u8>,
            limit: usize,
            _c: Consistency,
        ) -> Result<usize, OpError> {
            if start >= end {
                return Ok(0);
            }
            Ok(self.lock().map.range(start..end).take(limit).count())
        }

        async fn delete(&self, key: Vec<u8>) -> Result<bool, OpError> {
            Ok(self.lock().map.remove(&key).is_some())
        }
    }
}
