//! `corum ctl`: data commands and cluster status through the Rust client
//! ([`wire::client::Client`]).
//!
//! Output is for people by default; `--json` prints one JSON document on stdout instead.
//! Keys and values are shown as text when they are printable UTF-8, otherwise as `0x` + hex;
//! arguments written `0x...` are taken as hex bytes (see [`super::parse_bytes`]).
//!
//! Exit codes: 0 success; 1 the operation failed (server or connection error, `get` of a missing
//! key, a `cas` whose expected value did not match, a `txn` whose conditions did not hold, an
//! unhealthy `status`); 2 usage error.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};

use crate::meta::META_PARTITION;
use serde_json::{json, Value};
use wire::client::{Client, ClientConfig, ClientError, RangeOptions, TlsClientConfig};
use wire::messages::{
    Compare, CompareOp, CompareTarget, Consistency, KeyValue, NodeStatus, Put, Txn, TxnOp,
    TxnOpResult, TxnResult,
};

use super::txn_syntax::{parse_compare, parse_op};
use super::{display_bytes, parse_bytes, EXIT_FAILED, EXIT_OK, EXIT_USAGE};

/// Flags of `corum ctl`.
#[derive(Debug, Clone, Args)]
pub struct CtlArgs {
    /// Client endpoints to fetch the cluster map from (any node's shard 0 will do).
    #[arg(
        long,
        env = "CORUM_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7000",
        value_name = "HOST:PORT[,...]"
    )]
    pub endpoints: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline of each request, retries included, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Connect with TLS, trusting the CA certificates in FILE (PEM).
    #[arg(long, env = "CORUM_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate to present under TLS (PEM; with --key and --cacert).
    #[arg(long, env = "CORUM_CERT", value_name = "FILE", requires_all = ["key", "cacert"])]
    pub cert: Option<std::path::PathBuf>,
    /// Key of the client certificate (PEM; with --cert).
    #[arg(long, env = "CORUM_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// Read consistency, as a flag value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// ReadIndex confirmed by the leader, read on the leader.
    Linearizable,
    /// ReadIndex asked of the leader, read on a follower once applied (still linearizable).
    Follower,
    /// Read the local state of a replica; may lag.
    Stale,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Follower => Consistency::Follower,
            ConsistencyArg::Stale => Consistency::Stale,
        }
    }
}

/// The `ctl` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Write KEY = VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Write only if the key does not exist (exit 1 if it does).
        #[arg(long)]
        if_absent: bool,
        /// Print the previous value.
        #[arg(long)]
        prev: bool,
    },
    /// Read KEY (exit 1 if it does not exist).
    Get {
        /// The key.
        key: String,
        /// How fresh the read must be.
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
        /// Read KEY as it was at this revision of its partition (a revision a put or get of
        /// this key printed). 0: now. Fails with "compacted" once the partition's history no
        /// longer reaches back that far (tuning.history_revisions / history_bytes_max).
        #[arg(long, default_value_t = 0)]
        rev: u64,
    },
    /// Delete KEY (exit 0 whether or not it existed; the output says which).
    Del {
        /// The key.
        key: String,
        /// Print the deleted value.
        #[arg(long)]
        prev: bool,
    },
    /// Compare-and-set: write NEW if KEY's value is --expect (or KEY is --absent); exit 1 and
    /// show the current value otherwise.
    Cas {
        /// The key.
        key: String,
        /// The value to write.
        new: String,
        /// The value KEY must have.
        #[arg(long, required_unless_present = "absent", conflicts_with = "absent")]
        expect: Option<String>,
        /// KEY must not exist.
        #[arg(long)]
        absent: bool,
    },
    /// A transaction within one partition: if every --if holds run the --then operations,
    /// else the --else operations. Exit 1 when the --else branch ran.
    ///
    /// Conditions: `TARGET(KEY) OP OPERAND` with TARGET value|version|create|mod|exists and
    /// OP = != < >, or `exists(KEY)` / `absent(KEY)`. Operations: `put KEY VALUE`, `del KEY`,
    /// `get KEY`. Quote words with spaces: `put k 'two words'`.
    Txn {
        /// A condition (repeatable; all must hold).
        #[arg(long = "if", value_name = "CONDITION")]
        conditions: Vec<String>,
        /// An operation run when the conditions hold (repeatable, in order).
        #[arg(long = "then", value_name = "OPERATION")]
        then_ops: Vec<String>,
        /// An operation run otherwise (repeatable, in order).
        #[arg(long = "else", value_name = "OPERATION")]
        else_ops: Vec<String>,
    },
    /// List keys in [START, END) in key order, across all partitions.
    Range {
        /// First key (inclusive); "" for the beginning.
        start: String,
        /// End key (exclusive); omit for no end.
        end: Option<String>,
        /// Every key starting with START (END is computed; do not give it).
        #[arg(long, conflicts_with = "end")]
        prefix: bool,
        /// At most this many keys in total (0: all).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// Keys and metadata only.
        #[arg(long)]
        keys_only: bool,
        /// How fresh the read must be.
        #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
        consistency: ConsistencyArg,
    },
    /// Every partition (leader, term, commit and applied index) and every node's shards.
    /// Exit 1 when a shard does not answer or a partition has no leader.
    Status,
    /// The cluster map as the meta group holds it: epoch, and per partition its slot
    /// ranges, replicas (node, shard, endpoint) and leader hint.
    Map,
    /// Partition leadership.
    Leader {
        /// What to do.
        #[command(subcommand)]
        command: LeaderCommand,
    },
    /// Stream what happens in the cluster as it happens, from every node in one time-ordered
    /// stream: leaders elected and lost per partition, snapshots sent and installed, slow
    /// fsyncs, Busy rejections, nodes started, stopping, down and up again. One line per event
    /// (with --json, one JSON object per line). Runs until Ctrl-C, --count events or
    /// --duration-ms.
    Events {
        /// Begin with every event the nodes still hold (each keeps its last 4096), not now.
        #[arg(long)]
        from_start: bool,
        /// How often every node is asked for new events, in milliseconds.
        #[arg(long, default_value_t = 500, value_name = "MS")]
        interval_ms: u64,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this long, in milliseconds.
        #[arg(long, value_name = "MS")]
        duration_ms: Option<u64>,
    },
    /// Cluster nodes.
    Node {
        /// What to do.
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Back up every partition into a new directory: `corum ctl backup --out DIR` (each
    /// partition's copy is taken by its leader at a linearizable point; `manifest.json` is
    /// written last), or check one: `corum ctl backup verify DIR`. Restore with
    /// `corum restore --from DIR` (or `corum local --restore-from DIR`).
    #[command(args_conflicts_with_subcommands = true)]
    Backup {
        /// Directory to write; must not exist or be empty.
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
        /// `verify DIR`.
        #[command(subcommand)]
        command: Option<BackupCommand>,
    },
}

/// `corum ctl node ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// Move the leadership of every partition node N leads, the meta group (0) included, to
    /// another of its replicas (the one that has applied the most, then the one leading the
    /// fewest partitions), one partition after
    /// another: before stopping N for a restart or upgrade, so no partition waits an election
    /// timeout for a new leader. Done when a status read after the moves shows every
    /// partition led by another node (N may win an election back meanwhile: its partitions are
    /// moved again). Exit 1 when that is not so by `--wait-ms` (a partition stays led by N,
    /// has no leader, or a shard of N does not answer status), or N is not in the cluster map.
    /// `--wait-ms` bounds the whole command: a request still unanswered then (a paused node)
    /// is given up, and the partitions not moved are listed.
    DrainLeaders {
        /// The node.
        node: u64,
        /// How long to keep moving and checking, in milliseconds (at most a day); every
        /// request is cut off then.
        #[arg(long, default_value_t = 30_000, value_name = "MS",
              value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
        wait_ms: u64,
    },
}

/// `corum ctl backup ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum BackupCommand {
    /// Check a backup without a cluster: the manifest, every file's length and chunk
    /// checksums (a mismatch names the file and byte offset), and every snapshot's own
    /// checksums and rules. Exit 0 when it is intact, 1 otherwise.
    Verify {
        /// The backup directory.
        dir: std::path::PathBuf,
    },
}

/// `corum ctl leader ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum LeaderCommand {
    /// Move the leadership of partition P to node N (Raft thesis §3.10: the leader brings N
    /// up to date, then N campaigns at once). Returns when N leads; exit 1 when the transfer
    /// was abandoned (N did not win within an election timeout: down or far behind) or N
    /// holds no voting replica of P. Partition 0 is the meta group.
    Transfer {
        /// The partition.
        partition: u64,
        /// The node that should lead it.
        #[arg(long)]
        to: u64,
    },
}

/// The failure of one `ctl` command.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// Bad arguments (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The client failed (exit 1).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The operation failed; the text says why and what to do (exit 1).
    #[error("{0}")]
    Failed(String),
    /// A backup could not be written or does not verify (exit 1).
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}

/// Runs `corum ctl`; returns the exit code.
pub fn run(args: CtlArgs) -> u8 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("corum ctl: cannot start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    match runtime.block_on(execute(&args)) {
        Ok((code, out)) => {
            if !out.is_empty() {
                println!("{out}");
            }
            code
        }
        Err(CtlError::Usage(m)) => {
            eprintln!("corum ctl: {m}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("corum ctl: {e}");
            EXIT_FAILED
        }
    }
}

/// Connects with the given endpoints and per-request deadline.
pub async fn connect(endpoints: &[String], timeout: Duration) -> Result<Client, ClientError> {
    connect_with(endpoints, timeout, None).await
}

/// [`connect`], over TLS when `tls` is given.
pub async fn connect_with(
    endpoints: &[String],
    timeout: Duration,
    tls: Option<TlsClientConfig>,
) -> Result<Client, ClientError> {
    let mut config = ClientConfig::new(endpoints.to_vec());
    config.request_timeout = timeout;
    config.connect_timeout = timeout.min(Duration::from_secs(1));
    config.tls = tls;
    Client::connect(config).await
}

/// The TLS settings the flags ask for (`--cacert`, `--cert`, `--key`); None: plaintext.
pub fn tls_from_flags(
    cacert: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<TlsClientConfig>, String> {
    let Some(ca) = cacert else {
        return match cert.or(key) {
            Some(_) => Err("--cert and --key need --cacert (the CA of the servers)".into()),
            None => Ok(None),
        };
    };
    let cert_key = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--cert and --key go together".into()),
    };
    TlsClientConfig::from_pem_files(ca, cert_key)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Runs one command; returns the exit code and what to print on stdout.
pub async fn execute(args: &CtlArgs) -> Result<(u8, String), CtlError> {
    // Check the syntax before connecting, so usage errors do not wait for a cluster.
    let txn = match &args.command {
        CtlCommand::Txn {
            conditions,
            then_ops,
            else_ops,
        } => Some(build_txn(conditions, then_ops, else_ops)?),
        CtlCommand::Backup {
            command: Some(BackupCommand::Verify { dir }),
            ..
        } => return verify_backup(dir, args.json),
        CtlCommand::Backup {
            out: None,
            command: None,
        } => {
            return Err(CtlError::Usage(
                "backup needs --out DIR (or: backup verify DIR)".into(),
            ))
        }
        _ => None,
    };
    let tls = tls_from_flags(
        args.cacert.as_deref(),
        args.cert.as_deref(),
        args.key.as_deref(),
    )
    .map_err(CtlError::Usage)?;
    let client = connect_with(&args.endpoints, Duration::from_millis(args.timeout_ms), tls).await?;
    let json = args.json;
    let b = |s: &str| Bytes::from(parse_bytes(s));
    match &args.command {
        CtlCommand::Put {
            key,
            value,
            if_absent,
            prev,
        } => {
            let r = client
                .put_with(Put {
                    key: b(key),
                    value: b(value),
                    if_absent: *if_absent,
                    return_previous: *prev,
                })
                .await?;
            let code = if r.written { EXIT_OK } else { EXIT_FAILED };
            let out = if json {
                json!({"written": r.written, "revision": r.revision,
                       "previous": r.previous.as_ref().map(kv_json)})
                .to_string()
            } else {
                let mut s = if r.written {
                    format!("OK (revision {})", r.revision)
                } else {
                    format!("not written: {key} exists")
                };
                if let Some(p) = &r.previous {
                    s.push_str(&format!("\nprevious: {}", display_bytes(&p.value)));
                }
                s
            };
            Ok((code, out))
        }
        CtlCommand::Get {
            key,
            consistency,
            rev,
        } => {
            let kv = if *rev == 0 {
                client.get_with(b(key), (*consistency).into()).await?
            } else {
                client.get_at(b(key), *rev, (*consistency).into()).await?
            };
            let code = if kv.is_some() { EXIT_OK } else { EXIT_FAILED };
            let out = match (&kv, json) {
                (_, true) => json!({"kv": kv.as_ref().map(kv_json)}).to_string(),
                (Some(kv), false) => display_bytes(&kv.value),
                (None, false) => {
                    eprintln!("corum ctl: {key}: not found");
                    String::new()
                }
            };
            Ok((code, out))
        }
        CtlCommand::Del { key, prev } => {
            let r = client
                .execute(wire::messages::Op::Delete {
                    key: b(key),
                    return_previous: *prev,
                })
                .await?
                .1;
            let wire::messages::Outcome::Delete(r) = r else {
                return Err(
                    ClientError::Protocol("Delete answered with another kind".into()).into(),
                );
            };
            let out = if json {
                json!({"deleted": r.deleted, "revision": r.revision,
                       "previous": r.previous.as_ref().map(kv_json)})
                .to_string()
            } else {
                let mut s = if r.deleted {
                    format!("deleted (revision {})", r.revision)
                } else {
                    format!("{key}: not found, nothing deleted")
                };
                if let Some(p) = &r.previous {
                    s.push_str(&format!("\nprevious: {}", display_bytes(&p.value)));
                }
                s
            };
            Ok((EXIT_OK, out))
        }
        CtlCommand::Cas {
            key,
            new,
            expect,
            absent: _,
        } => {
            let k = b(key);
            let mut compares = vec![Compare {
                key: k.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::Exists(expect.is_some()),
            }];
            if let Some(e) = expect {
                compares.push(Compare {
                    key: k.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Value(b(e)),
                });
            }
            let txn = Txn {
                compares,
                success: vec![TxnOp::Put(Put {
                    key: k.clone(),
                    value: b(new),
                    if_absent: false,
                    return_previous: false,
                })],
                failure: vec![TxnOp::Get { key: k }],
            };
            let r = client.txn(txn).await?;
            let current = match r.results.first() {
                Some(TxnOpResult::Get(kv)) if !r.succeeded => kv.clone(),
                _ => None,
            };
            let code = if r.succeeded { EXIT_OK } else { EXIT_FAILED };
            let out = if json {
                json!({"swapped": r.succeeded, "revision": r.revision,
                       "current": current.as_ref().map(kv_json)})
                .to_string()
            } else if r.succeeded {
                format!("OK (revision {})", r.revision)
            } else {
                let now = current.map_or("<absent>".to_owned(), |kv| display_bytes(&kv.value));
                let wanted = expect.as_deref().unwrap_or("<absent>");
                eprintln!("corum ctl: cas failed: {key} is {now}, expected {wanted}");
                String::new()
            };
            Ok((code, out))
        }
        CtlCommand::Txn { .. } => {
            let Some(txn) = txn else {
                return Err(CtlError::Usage("internal: txn not built".into()));
            };
            let (then_ops, else_ops) = (txn.success.clone(), txn.failure.clone());
            let r = client.txn(txn).await?;
            let ops = if r.succeeded { then_ops } else { else_ops };
            let code = if r.succeeded { EXIT_OK } else { EXIT_FAILED };
            Ok((code, txn_output(&r, &ops, json)))
        }
        CtlCommand::Range {
            start,
            end,
            prefix,
            limit,
            keys_only,
            consistency,
        } => {
            let start_b = b(start);
            let end_b = match (end, prefix) {
                (_, true) => prefix_end(&start_b),
                (Some(e), false) => b(e),
                (None, false) => Bytes::new(),
            };
            let mut kvs = Vec::new();
            let mut after = Bytes::new();
            loop {
                let page = client
                    .range(RangeOptions {
                        start: start_b.clone(),
                        end: end_b.clone(),
                        limit: 0,
                        keys_only: *keys_only,
                        consistency: (*consistency).into(),
                        after: after.clone(),
                    })
                    .await?;
                kvs.extend(page.kvs);
                if *limit > 0 && kvs.len() as u64 >= *limit {
                    kvs.truncate(*limit as usize);
                    break;
                }
                match page.next {
                    Some(next) => after = next,
                    None => break,
                }
            }
            let out = if json {
                Value::Array(kvs.iter().map(kv_json).collect()).to_string()
            } else {
                kvs.iter()
                    .map(|kv| {
                        if *keys_only {
                            display_bytes(&kv.key)
                        } else {
                            format!("{} {}", display_bytes(&kv.key), display_bytes(&kv.value))
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Ok((EXIT_OK, out))
        }
        CtlCommand::Map => {
            let map = client.cluster_map();
            let out = if json {
                map_json(&map).to_string()
            } else {
                map_text(&map)
            };
            Ok((EXIT_OK, out))
        }
        CtlCommand::Leader {
            command: LeaderCommand::Transfer { partition, to },
        } => {
            let r = client.transfer_leader(*partition, *to).await?;
            let out = if json {
                serde_json::json!({
                    "partition": r.partition,
                    "leader": r.leader_node,
                    "term": r.term,
                })
                .to_string()
            } else {
                format!(
                    "partition {}: node {} leads (term {})",
                    r.partition, r.leader_node, r.term
                )
            };
            Ok((EXIT_OK, out))
        }
        CtlCommand::Backup { out: Some(dir), .. } => backup(&client, dir, json).await,
        CtlCommand::Node {
            command: NodeCommand::DrainLeaders { node, wait_ms },
        } => drain_leaders(&client, *node, Duration::from_millis(*wait_ms), json).await,
        CtlCommand::Events {
            from_start,
            interval_ms,
            count,
            duration_ms,
        } => {
            let mut rx =
                client.subscribe_events(Duration::from_millis((*interval_ms).max(10)), *from_start);
            let end = duration_ms.map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
            let mut seen = 0u64;
            loop {
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
                let next = match end {
                    Some(end) => match tokio::time::timeout_at(end, rx.recv()).await {
                        Ok(e) => e,
                        Err(_) => break,
                    },
                    None => rx.recv().await,
                };
                let Some(e) = next else { break };
                seen += 1;
                let line = if json {
                    json!({
                        "seq": e.seq, "unix_ms": e.unix_ms, "node": e.node, "shard": e.shard,
                        "partition": e.partition, "kind": e.kind, "detail": e.detail,
                    })
                    .to_string()
                } else {
                    event_text(&e)
                };
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                    break; // stdout closed (e.g. `| head`)
                }
            }
            Ok((EXIT_OK, String::new()))
        }
        CtlCommand::Backup { .. } => unreachable!("checked before connecting"),
        CtlCommand::Status => {
            let status = cluster_status(&client).await;
            let code = if status.healthy() {
                EXIT_OK
            } else {
                EXIT_FAILED
            };
            let out = if json {
                status.to_json().to_string()
            } else {
                status.to_text()
            };
            Ok((code, out))
        }
    }
}

/// `corum ctl node drain-leaders N`: rounds of (status of every shard; move every partition N
/// leads) until a status shows N leading nothing, every partition led and every shard of N
/// answering, or `wait` passes. `wait` bounds the whole command, not only the rounds begun:
/// every request of a round is cut off at the deadline (one round is a status of every shard,
/// then a transfer per partition and candidate, each up to the client's request timeout), the
/// partitions not moved by then are reported, and no status is read after it.
async fn drain_leaders(
    client: &Client,
    node: u64,
    wait: Duration,
    json: bool,
) -> Result<(u8, String), CtlError> {
    let map = client.cluster_map();
    if !map
        .partitions
        .iter()
        .any(|p| p.replicas.iter().any(|r| r.node == node))
    {
        return Err(CtlError::Failed(format!(
            "node {node} is not in the cluster map (epoch {})",
            map.epoch
        )));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let passed = || tokio::time::Instant::now() >= deadline;
    let mut moved = Vec::new();
    // Why the last round was not done: per partition, and for the node as a whole.
    let mut failed: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    loop {
        failed.clear();
        problems.clear();
        let status = cluster_status_until(client, Some(deadline)).await;
        // Without N's status nobody can tell whether N still leads something.
        for s in status.shards.iter().filter(|s| s.node == node) {
            if let Err(e) = &s.status {
                problems.push(format!("no status from node {node} shard {}: {e}", s.shard));
            }
        }
        for &p in &status.partitions {
            if status.leader_of(p).is_none() {
                failed
                    .entry(p)
                    .or_default()
                    .push("no replica says it leads".into());
            }
        }
        let led: Vec<u64> = status
            .partitions
            .iter()
            .copied()
            .filter(|&p| status.leader_of(p) == Some(node))
            .collect();
        if led.is_empty() && failed.is_empty() && problems.is_empty() {
            break;
        }
        if passed() {
            // The status itself ran into the deadline: nothing more may be asked.
            for p in led {
                failed
                    .entry(p)
                    .or_default()
                    .push(format!("still led by node {node}"));
            }
            problems.push(format!("not drained within {wait:?} (--wait-ms)"));
            break;
        }
        // Leaderships per node, so equally caught-up targets share the moved ones.
        let mut leads: BTreeMap<u64, usize> = BTreeMap::new();
        for &p in &status.partitions {
            if let Some(l) = status.leader_of(p) {
                *leads.entry(l).or_default() += 1;
            }
        }
        for p in led {
            if passed() {
                failed.entry(p).or_default().push(format!(
                    "not moved: --wait-ms ({wait:?}) passed before its turn"
                ));
                continue;
            }
            // The other replicas that answered: the most caught-up first, then the one leading
            // the fewest partitions.
            let mut candidates: Vec<(u64, u64)> = status
                .replicas_applied(p)
                .into_iter()
                .filter(|&(n, _)| n != node)
                .collect();
            candidates.sort_by_key(|&(n, applied)| {
                (
                    std::cmp::Reverse(applied),
                    leads.get(&n).copied().unwrap_or(0),
                    n,
                )
            });
            let mut errors = Vec::new();
            let mut done = None;
            for (to, _) in candidates {
                match tokio::time::timeout_at(deadline, client.transfer_leader(p, to)).await {
                    Ok(Ok(r)) => {
                        *leads.entry(r.leader_node).or_default() += 1;
                        done = Some(r);
                        break;
                    }
                    Ok(Err(e)) => errors.push(format!("to node {to}: {e}")),
                    Err(_) => {
                        errors.push(format!(
                            "to node {to}: no answer before --wait-ms ({wait:?}) passed (the \
                             transfer may still complete)"
                        ));
                        break;
                    }
                }
            }
            match done {
                Some(r) => moved.push(r),
                None => {
                    if errors.is_empty() {
                        errors.push("no other replica answered status".into());
                    }
                    failed.entry(p).or_default().extend(errors);
                }
            }
        }
        // The moves are checked by the next round's status, which also catches N winning an
        // election back.
        if passed() {
            problems.push(format!(
                "not drained within {wait:?} (--wait-ms): no status read after the last move \
                 showed it"
            ));
            break;
        }
        // A pause between rounds, unless it would leave the next status no time.
        let pause = Duration::from_millis(100);
        if deadline.saturating_duration_since(tokio::time::Instant::now()) > 2 * pause {
            tokio::time::sleep(pause).await;
        }
    }
    let code = if failed.is_empty() && problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_FAILED
    };
    let out = if json {
        json!({
            "node": node,
            "moved": moved.iter().map(|r| json!({
                "partition": r.partition, "leader": r.leader_node, "term": r.term,
            })).collect::<Vec<_>>(),
            "failed": failed.iter().map(|(p, e)| json!({"partition": p, "errors": e}))
                .collect::<Vec<_>>(),
            "problems": problems,
        })
        .to_string()
    } else {
        let mut lines = vec![format!(
            "node {node}: leadership of {} partitions moved, {} failed",
            moved.len(),
            failed.len()
        )];
        for r in &moved {
            lines.push(format!(
                "partition {}: node {} leads (term {})",
                r.partition, r.leader_node, r.term
            ));
        }
        for (p, e) in &failed {
            lines.push(format!("partition {p}: NOT MOVED: {}", e.join("; ")));
        }
        for e in &problems {
            lines.push(format!("NOT DRAINED: {e}"));
        }
        lines.join("\n")
    };
    Ok((code, out))
}

/// One event as a line: `HH:MM:SS.mmmZ node N shard S partition P kind: detail` (UTC time of
/// day; the partition only when the event names one).
pub fn event_text(e: &wire::Event) -> String {
    let ms = e.unix_ms % 86_400_000;
    let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    // Leader and snapshot events always name a partition; 0 is then the meta group.
    let partition = if e.partition != 0 {
        format!(" partition {}", e.partition)
    } else if e.kind.starts_with("leader_") || e.kind.starts_with("snapshot_") {
        " partition 0 (meta)".to_owned()
    } else {
        String::new()
    };
    format!(
        "{h:02}:{m:02}:{s:02}.{milli:03}Z node {} shard {}{partition} {}: {}",
        e.node, e.shard, e.kind, e.detail
    )
}

/// `corum ctl backup --out DIR` (`crate::backup` module docs).
async fn backup(
    client: &Client,
    dir: &std::path::Path,
    json: bool,
) -> Result<(u8, String), CtlError> {
    use crate::backup::{self, Manifest};
    let started = std::time::Instant::now();
    let started_unix_ms = crate::server::events::unix_ms();
    let map = client.cluster_map();
    backup::create_dir(dir)?;
    let mut partitions = Vec::new();
    for p in &map.partitions {
        let copy = client.backup_partition(p.id).await.map_err(|e| {
            CtlError::Failed(format!(
                "backup of partition {} failed: {e}; {} holds an incomplete backup (no \
                 manifest.json): remove it and run the backup again",
                p.id,
                dir.display()
            ))
        })?;
        let entry = backup::write_partition(
            dir,
            &backup::Copy {
                partition: p.id,
                data: copy.data,
            },
        )?;
        tracing::info!(
            partition = p.id,
            keys = entry.keys,
            bytes = entry.bytes,
            "partition backed up"
        );
        partitions.push(entry);
    }
    // TODO(issue 11): once placement can change, refuse a backup during which the map's
    // epoch changed (the client's cached map only refreshes on errors: fetch it afresh).
    let manifest = Manifest {
        format: backup::FORMAT.into(),
        version: backup::VERSION,
        corum_version: env!("CARGO_PKG_VERSION").into(),
        started_unix_ms,
        finished_unix_ms: crate::server::events::unix_ms(),
        map_epoch: map.epoch,
        ranges: backup::manifest_ranges(&map.ranges),
        partitions,
        backup_id: backup::new_backup_id(),
    };
    backup::write_manifest(dir, &manifest)?;
    // What was written is what verify reads: check it before saying it is done.
    let (_, report) = backup::verify(dir)?;
    let secs = started.elapsed().as_secs_f64();
    let out = if json {
        json!({
            "dir": dir.display().to_string(),
            "partitions": report.partitions,
            "keys": report.keys,
            "bytes": report.bytes,
            "map_epoch": manifest.map_epoch,
            "backup_id": manifest.backup_id,
            "seconds": secs,
        })
        .to_string()
    } else {
        format!(
            "backup {} of {} partitions ({} keys, {} bytes) written to {} in {secs:.1} s (map epoch {}); verified",
            manifest.backup_id,
            report.partitions,
            report.keys,
            report.bytes,
            dir.display(),
            manifest.map_epoch
        )
    };
    Ok((EXIT_OK, out))
}

/// `corum ctl backup verify DIR`.
fn verify_backup(dir: &std::path::Path, json: bool) -> Result<(u8, String), CtlError> {
    let (m, report) = crate::backup::verify(dir)?;
    let out = if json {
        json!({
            "dir": dir.display().to_string(),
            "ok": true,
            "partitions": report.partitions,
            "keys": report.keys,
            "bytes": report.bytes,
            "map_epoch": m.map_epoch,
            "backup_id": m.backup_id,
            "started_unix_ms": m.started_unix_ms,
            "finished_unix_ms": m.finished_unix_ms,
            "corum_version": m.corum_version,
        })
        .to_string()
    } else {
        format!(
            "{}: intact: {} partitions, {} keys, {} bytes (map epoch {}, corum {})",
            dir.display(),
            report.partitions,
            report.keys,
            report.bytes,
            m.map_epoch,
            m.corum_version
        )
    };
    Ok((EXIT_OK, out))
}

/// Slot ranges of each partition, as `a..b` strings.
fn slot_ranges(map: &wire::ClusterMap, partition: u64) -> Vec<String> {
    map.ranges
        .iter()
        .filter(|r| r.partition == partition)
        .map(|r| format!("{}..{}", r.start, r.end))
        .collect()
}

/// The JSON form of `corum ctl map`.
fn map_json(map: &wire::ClusterMap) -> Value {
    let mut parts: Vec<&wire::PartitionInfo> = map.partitions.iter().collect();
    parts.sort_by_key(|p| p.id);
    json!({
        "epoch": map.epoch,
        "partitions": parts.iter().map(|p| json!({
            "partition": p.id,
            "slots": slot_ranges(map, p.id),
            "leader_hint": p.leader_node,
            "replicas": p.replicas.iter().map(|r| json!({
                "node": r.node, "shard": r.shard, "endpoint": r.endpoint,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// The text form of `corum ctl map`.
fn map_text(map: &wire::ClusterMap) -> String {
    let mut parts: Vec<&wire::PartitionInfo> = map.partitions.iter().collect();
    parts.sort_by_key(|p| p.id);
    let mut out = format!(
        "cluster map epoch {}, {} partitions, {} slots\n\nPARTITION SLOTS        LEADER REPLICAS (node/shard endpoint)\n",
        map.epoch,
        parts.len(),
        wire::SLOT_COUNT
    );
    for p in parts {
        let leader = if p.leader_node == 0 {
            "-".to_owned()
        } else {
            p.leader_node.to_string()
        };
        let replicas: Vec<String> = p
            .replicas
            .iter()
            .map(|r| format!("{}/{} {}", r.node, r.shard, r.endpoint))
            .collect();
        out.push_str(&format!(
            "{:<9} {:<12} {leader:<6} {}\n",
            p.id,
            slot_ranges(map, p.id).join(","),
            replicas.join(", ")
        ));
    }
    out.trim_end().to_owned()
}

/// Builds a [`Txn`] from the `--if`, `--then` and `--else` arguments.
pub fn build_txn(
    conditions: &[String],
    then_ops: &[String],
    else_ops: &[String],
) -> Result<Txn, CtlError> {
    let usage = |e: super::txn_syntax::SyntaxError| CtlError::Usage(format!("txn: {e}"));
    if then_ops.is_empty() && else_ops.is_empty() {
        return Err(CtlError::Usage(
            "txn: give at least one --then or --else operation".into(),
        ));
    }
    Ok(Txn {
        compares: conditions
            .iter()
            .map(|c| parse_compare(c))
            .collect::<Result<_, _>>()
            .map_err(usage)?,
        success: then_ops
            .iter()
            .map(|o| parse_op(o))
            .collect::<Result<_, _>>()
            .map_err(usage)?,
        failure: else_ops
            .iter()
            .map(|o| parse_op(o))
            .collect::<Result<_, _>>()
            .map_err(usage)?,
    })
}

/// The first key after every key starting with `prefix` (empty: no end).
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes::from(end);
        }
    }
    Bytes::new()
}

/// A key-value as JSON (`key` and `value` as in [`display_bytes`]).
pub fn kv_json(kv: &KeyValue) -> Value {
    json!({
        "key": display_bytes(&kv.key),
        "value": display_bytes(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    })
}

fn txn_output(r: &TxnResult, ops: &[TxnOp], json: bool) -> String {
    let op_word = |op: &TxnOp| match op {
        TxnOp::Get { key } => format!("get {}", display_bytes(key)),
        TxnOp::Put(p) => format!("put {} {}", display_bytes(&p.key), display_bytes(&p.value)),
        TxnOp::Delete { key, .. } => format!("del {}", display_bytes(key)),
    };
    if json {
        let results: Vec<Value> = r
            .results
            .iter()
            .zip(ops)
            .map(|(res, op)| {
                let mut v = match res {
                    TxnOpResult::Get(kv) => json!({"kv": kv.as_ref().map(kv_json)}),
                    TxnOpResult::Put { written, .. } => json!({"written": written}),
                    TxnOpResult::Delete { deleted, .. } => json!({"deleted": deleted}),
                };
                v["op"] = Value::String(op_word(op));
                v
            })
            .collect();
        return json!({"succeeded": r.succeeded, "revision": r.revision, "results": results})
            .to_string();
    }
    let mut lines = vec![if r.succeeded {
        format!("SUCCEEDED: --then ran (revision {})", r.revision)
    } else {
        format!("FAILED: --else ran (revision {})", r.revision)
    }];
    for (res, op) in r.results.iter().zip(ops) {
        let what = match res {
            TxnOpResult::Get(Some(kv)) => display_bytes(&kv.value),
            TxnOpResult::Get(None) => "<absent>".into(),
            TxnOpResult::Put { written, .. } => {
                if *written { "written" } else { "not written" }.into()
            }
            TxnOpResult::Delete { deleted, .. } => {
                if *deleted { "deleted" } else { "not found" }.into()
            }
        };
        lines.push(format!("{}: {what}", op_word(op)));
    }
    lines.join("\n")
}

/// One shard's answer to Status.
#[derive(Debug, Clone)]
pub struct ShardStatus {
    /// Node id (from the cluster map).
    pub node: u64,
    /// Shard index.
    pub shard: u32,
    /// Its client endpoint.
    pub endpoint: String,
    /// The partitions the cluster map places on this shard.
    pub hosts: Vec<u64>,
    /// Its status, or why it did not answer.
    pub status: Result<NodeStatus, String>,
}

/// The status of a whole cluster, as gathered from every shard in the cluster map.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// The map's epoch.
    pub map_epoch: u64,
    /// Partition ids in the map, and 0 (the meta group).
    pub partitions: Vec<u64>,
    /// Every shard in the map, by (node, shard).
    pub shards: Vec<ShardStatus>,
}

/// Asks every shard in the client's cluster map for its status (refreshing the map first is the
/// caller's business), all at once, each within the client's request timeout. Shards that do
/// not answer are recorded with the error.
pub async fn cluster_status(client: &Client) -> ClusterStatus {
    cluster_status_until(client, None).await
}

/// [`cluster_status`], every answer also by `deadline` (a shard that has not answered by then
/// is recorded as such).
pub async fn cluster_status_until(
    client: &Client,
    deadline: Option<tokio::time::Instant>,
) -> ClusterStatus {
    let map = client.cluster_map();
    let mut seen: BTreeMap<(u64, u32), (String, Vec<u64>)> = BTreeMap::new();
    for p in &map.partitions {
        for r in &p.replicas {
            let entry = seen
                .entry((r.node, r.shard))
                .or_insert_with(|| (r.endpoint.clone(), Vec::new()));
            entry.1.push(p.id);
        }
    }
    // The meta group (partition 0, no slots, not in the client map) has a replica on shard 0 of
    // every node (`engine::meta`).
    // A node whose shard 0 holds no data partition is not in the map under shard 0; its
    // endpoint follows from any other shard's (shard i listens on the base port + i).
    let nodes: Vec<(u64, u32, String)> = seen
        .iter()
        .map(|((n, s), (e, _))| (*n, *s, e.clone()))
        .collect();
    for (node, shard, endpoint) in nodes {
        if seen.contains_key(&(node, 0)) {
            continue;
        }
        if let Ok(mut addr) = endpoint.parse::<std::net::SocketAddr>() {
            if let Some(port) = addr.port().checked_sub(shard as u16) {
                addr.set_port(port);
                seen.insert((node, 0), (addr.to_string(), Vec::new()));
            }
        }
    }
    for ((_, shard), entry) in seen.iter_mut() {
        if *shard == 0 {
            entry.1.push(META_PARTITION);
        }
    }
    // All at once: a shard that does not answer (paused, blackholed) delays the others by
    // nothing, and the whole gathering lasts one request timeout at most.
    let mut asks = tokio::task::JoinSet::new();
    for (i, (_, (endpoint, _))) in seen.iter().enumerate() {
        let (client, endpoint) = (client.clone(), endpoint.clone());
        asks.spawn(async move {
            let ask = client.status_of(&endpoint);
            let status = match deadline {
                None => ask.await.map_err(|e| e.to_string()),
                Some(d) => match tokio::time::timeout_at(d, ask).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("no answer by the deadline".to_owned()),
                },
            };
            (i, status)
        });
    }
    let mut answers: Vec<Option<Result<NodeStatus, String>>> = vec![None; seen.len()];
    while let Some(joined) = asks.join_next().await {
        if let Ok((i, status)) = joined {
            answers[i] = Some(status);
        }
    }
    let mut shards = Vec::new();
    for (((node, shard), (endpoint, mut hosts)), status) in seen.into_iter().zip(answers) {
        hosts.sort_unstable();
        shards.push(ShardStatus {
            node,
            shard,
            endpoint,
            hosts,
            status: status.unwrap_or_else(|| Err("the status task failed".to_owned())),
        });
    }
    let mut partitions: Vec<u64> = map.partitions.iter().map(|p| p.id).collect();
    partitions.push(META_PARTITION);
    partitions.sort_unstable();
    ClusterStatus {
        map_epoch: map.epoch,
        partitions,
        shards,
    }
}

impl ClusterStatus {
    /// Per partition: (node, that node's view) for every answering replica, one per node
    /// (a node's shards may each report every partition of the node: the first answer wins).
    fn views(&self) -> BTreeMap<u64, Vec<(u64, &wire::messages::PartitionStatus)>> {
        let mut out: BTreeMap<u64, Vec<(u64, &wire::messages::PartitionStatus)>> =
            self.partitions.iter().map(|&p| (p, Vec::new())).collect();
        for s in &self.shards {
            if let Ok(st) = &s.status {
                for p in &st.partitions {
                    let views = out.entry(p.partition).or_default();
                    if !views.iter().any(|(n, _)| *n == s.node) {
                        views.push((s.node, p));
                    }
                }
            }
        }
        out
    }

    /// The node that leads `partition` according to the replica that says it leads (with the
    /// highest term), if any.
    pub fn leader_of(&self, partition: u64) -> Option<u64> {
        self.views()
            .get(&partition)?
            .iter()
            .filter(|(_, p)| p.is_leader)
            .max_by_key(|(_, p)| p.term)
            .map(|(n, _)| *n)
    }

    /// (node, applied index) of every replica of `partition` that answered.
    pub fn replicas_applied(&self, partition: u64) -> Vec<(u64, u64)> {
        self.views()
            .get(&partition)
            .map(|v| v.iter().map(|(n, p)| (*n, p.applied_index)).collect())
            .unwrap_or_default()
    }

    /// Every shard answered and every partition has a replica that says it leads.
    pub fn healthy(&self) -> bool {
        self.shards.iter().all(|s| s.status.is_ok())
            && self.partitions.iter().all(|&p| self.leader_of(p).is_some())
    }

    /// The JSON form (`corum ctl status --json`).
    pub fn to_json(&self) -> Value {
        let mut nodes: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
        for s in &self.shards {
            let v = match &s.status {
                Ok(st) => json!({
                    "shard": s.shard, "endpoint": s.endpoint, "reachable": true,
                    "map_epoch": st.map_epoch, "partitions": s.hosts,
                    "slowest_fsync_us": st.slowest_fsync_us,
                }),
                Err(e) => json!({
                    "shard": s.shard, "endpoint": s.endpoint, "reachable": false, "error": e,
                    "partitions": s.hosts,
                }),
            };
            nodes.entry(s.node).or_default().push(v);
        }
        let partitions: Vec<Value> = self
            .views()
            .into_iter()
            .map(|(id, views)| {
                let leader = views
                    .iter()
                    .filter(|(_, p)| p.is_leader)
                    .max_by_key(|(_, p)| p.term);
                json!({
                    "partition": id,
                    "meta": id == META_PARTITION,
                    "leader": leader.map(|(n, _)| *n),
                    "term": leader.map(|(_, p)| p.term),
                    "commit_index": leader.map(|(_, p)| p.commit_index),
                    "applied_index": leader.map(|(_, p)| p.applied_index),
                    "apply_lag": leader.map(|(_, l)| apply_lag(l.commit_index, &views)),
                    "replicas": views.iter().map(|(n, p)| json!({
                        "node": n, "term": p.term, "leader_hint": p.leader_node,
                        "is_leader": p.is_leader, "commit_index": p.commit_index,
                        "applied_index": p.applied_index,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "healthy": self.healthy(),
            "map_epoch": self.map_epoch,
            "nodes": nodes.into_iter().map(|(node, shards)| json!({"node": node, "shards": shards}))
                .collect::<Vec<_>>(),
            "partitions": partitions,
        })
    }

    /// The text form (`corum ctl status`).
    pub fn to_text(&self) -> String {
        let mut out =
            format!(
            "cluster map epoch {}, {} partitions, {}\n\nNODE SHARD ENDPOINT              STATE\n",
            self.map_epoch,
            self.partitions.iter().filter(|&&p| p != META_PARTITION).count(),
            if self.healthy() { "healthy" } else { "NOT HEALTHY" }
        );
        for s in &self.shards {
            let state = match &s.status {
                // 0: no fdatasync in the window, or a server from before the field.
                Ok(st) if st.slowest_fsync_us == 0 => {
                    format!("ok, partitions {:?}, slowest fsync n/a", s.hosts)
                }
                Ok(st) => format!(
                    "ok, partitions {:?}, slowest fsync {:.1} ms",
                    s.hosts,
                    st.slowest_fsync_us as f64 / 1000.0
                ),
                Err(e) => format!("UNREACHABLE: {e}"),
            };
            out.push_str(&format!(
                "{:<4} {:<5} {:<21} {state}\n",
                s.node, s.shard, s.endpoint
            ));
        }
        out.push_str("\nPARTITION LEADER TERM  COMMIT   APPLIED  LAG    REPLICAS (node:applied)\n");
        for (id, views) in self.views() {
            let leader = views
                .iter()
                .filter(|(_, p)| p.is_leader)
                .max_by_key(|(_, p)| p.term);
            let (l, t, c, a, lag) = match leader {
                Some((n, p)) => (
                    n.to_string(),
                    p.term.to_string(),
                    p.commit_index.to_string(),
                    p.applied_index.to_string(),
                    apply_lag(p.commit_index, &views).to_string(),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
            };
            let replicas: Vec<String> = views
                .iter()
                .map(|(n, p)| format!("{n}:{}", p.applied_index))
                .collect();
            let name = if id == META_PARTITION {
                "0 meta".to_owned()
            } else {
                id.to_string()
            };
            out.push_str(&format!(
                "{name:<9} {l:<6} {t:<5} {c:<8} {a:<8} {lag:<6} {}\n",
                replicas.join(" ")
            ));
        }
        out.trim_end().to_owned()
    }
}

/// Apply lag of a partition: the leader's commit index minus the applied index of its slowest
/// replica that answered (entries committed but not yet applied somewhere).
fn apply_lag(leader_commit: u64, views: &[(u64, &wire::messages::PartitionStatus)]) -> u64 {
    views
        .iter()
        .map(|(_, p)| leader_commit.saturating_sub(p.applied_index))
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding (issue 17): `--wait-ms` past the clock's range panicked computing the
    /// deadline; it is now a usage error, and a day still parses.
    #[test]
    fn drain_wait_is_bounded_at_parse_time() {
        use clap::Parser;
        let parse = |ms: &str| {
            crate::cli::Cli::try_parse_from([
                "corum",
                "ctl",
                "node",
                "drain-leaders",
                "1",
                "--wait-ms",
                ms,
            ])
        };
        let err = parse(&u64::MAX.to_string()).expect_err("u64::MAX ms is refused");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(parse("0").is_err());
        assert!(parse("86400000").is_ok());
    }

    #[test]
    fn apply_lag_is_the_slowest_replicas_distance_to_the_leaders_commit() {
        let status = |applied_index| wire::messages::PartitionStatus {
            partition: 1,
            term: 2,
            leader_node: 1,
            commit_index: 10,
            applied_index,
            is_leader: false,
        };
        let (a, b, c) = (status(10), status(7), status(12));
        assert_eq!(apply_lag(10, &[(1, &a), (2, &b), (3, &c)]), 3);
        assert_eq!(apply_lag(10, &[(1, &a)]), 0);
        assert_eq!(apply_lag(10, &[]), 0);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Bytes::from_static(b"ac"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::new());
        assert_eq!(prefix_end(b""), Bytes::new());
    }

    #[test]
    fn txn_arguments() {
        let t = build_txn(
            &["value(k) = v".into()],
            &["put k w".into()],
            &["get k".into()],
        )
        .unwrap();
        assert_eq!(t.compares.len(), 1);
        assert_eq!(t.success.len(), 1);
        assert_eq!(t.failure.len(), 1);
        assert!(matches!(
            build_txn(&["value(k) = v".into()], &[], &[]),
            Err(CtlError::Usage(_))
        ));
        assert!(matches!(
            build_txn(&["nonsense".into()], &["get k".into()], &[]),
            Err(CtlError::Usage(_))
        ));
    }
}
