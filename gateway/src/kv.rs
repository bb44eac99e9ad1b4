//! The KV service: Range, Put, DeleteRange, Txn, Compact (see the crate docs for what each
//! becomes in corum).

use std::collections::{BTreeMap, HashSet};

use bytes::Bytes;
use tokio::task::JoinSet;
use tonic::{Request, Response, Status};
use wire::client::RangeOptions;
use wire::messages::{
    Compare, CompareOp, CompareTarget, Consistency, KeyValue, Op, Outcome, Put, ResponseHeader,
    Txn, TxnOp, TxnOpResult, TxnResult,
};

use crate::epb::{self, compare, range_request, request_op, response_op};
use crate::errors::{self, empty_key, from_client, unimplemented};
use crate::pb::mvccpb;
use crate::Gateway;

/// Keys per page when the gateway pages through a range.
const RANGE_PAGE_KEYS: u32 = 1000;

/// Most bytes one Range may collect before it is refused with `ResourceExhausted` (the
/// response would be larger than any etcd client accepts by default anyway): each kept entry
/// counts its key, its value and [`RANGE_ENTRY_OVERHEAD_BYTES`].
pub const RANGE_BYTES_MAX: usize = 64 << 20;

/// What one kept key-value costs beyond its key and value bytes (the `KeyValue` struct, its
/// two `Bytes` handles, the protobuf fields): so a range of many empty values is bounded too.
const RANGE_ENTRY_OVERHEAD_BYTES: usize = 128;

/// Deletes in flight at once during a range delete.
const DELETES_IN_FLIGHT_MAX: usize = 64;

/// Attempts of the read-then-compare-and-put behind `put --ignore-value`.
const IGNORE_VALUE_ATTEMPTS_MAX: usize = 16;

/// etcd's default limit on operations per transaction branch (`--max-txn-ops`).
const TXN_OPS_MAX: usize = 128;

/// The consistency of an etcd read: serializable reads are corum's stale reads (served by a
/// replica from its local state, no consensus round: they may lag, as etcd's do).
fn consistency(serializable: bool) -> Consistency {
    if serializable {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

fn to_etcd(kv: KeyValue) -> mvccpb::KeyValue {
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: i(kv.create_revision),
        mod_revision: i(kv.mod_revision),
        version: i(kv.version),
        value: kv.value,
        lease: 0,
    }
}

/// Whether `end` is `key` followed by one zero byte: the range `[key, end)` holds `key` only.
fn is_single_key_range(key: &[u8], end: &[u8]) -> bool {
    end.len() == key.len() + 1 && end.starts_with(key) && end[key.len()] == 0
}

fn lease_refused() -> Status {
    unimplemented(
        "leases are not supported yet (corum has no leases; issue 16): write without a lease",
    )
}

fn revision_refused() -> Status {
    unimplemented(
        "reads at a past revision are not supported yet: corum keeps only the newest version \
         of each key (multi-version reads come with issue 16); read without a revision",
    )
}

/// How a branch operation's result is reported back.
#[derive(Debug, Clone, Copy)]
enum OpShape {
    Range { keys_only: bool, count_only: bool },
    Put,
    Delete,
}

impl Gateway {
    /// A header for a call served by `partition`'s leader.
    fn leader_header(&self, partition: u64, revision: u64, term: u64) -> epb::ResponseHeader {
        self.header(self.leader_of(partition), revision, term)
    }

    /// Runs one corum transaction; the answering replica's header and the result (the
    /// client's `txn` drops the header, which the etcd response header needs).
    async fn run_txn(&self, txn: Txn) -> Result<(ResponseHeader, TxnResult), Status> {
        let (h, out) = self
            .client
            .execute(Op::Txn(txn))
            .await
            .map_err(from_client)?;
        match out {
            Outcome::Txn(t) => Ok((h, t)),
            other => Err(Status::internal(format!(
                "corum answered a transaction with {other:?}"
            ))),
        }
    }

    pub(crate) async fn range(&self, r: epb::RangeRequest) -> Result<epb::RangeResponse, Status> {
        if r.key.is_empty() {
            return Err(empty_key());
        }
        if r.revision > 0 {
            return Err(revision_refused());
        }
        let consistency = consistency(r.serializable);
        let target = r.sort_target();
        let filtering = r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        // As etcd's server (`v3_server.go`, `txn.go` rangeKeys): the whole range is read only
        // when the REQUEST asks for an order or sets a filter; otherwise `limit` + 1 keys are
        // read in key order and then sorted (so `--sort-by=MODIFY --limit N` without an order
        // sorts the first N + 1 keys by key, not the whole range).
        let fetch_all = r.sort_order() != range_request::SortOrder::None || filtering;
        let mut order = r.sort_order();
        if target != range_request::SortTarget::Key && order == range_request::SortOrder::None {
            // etcd: results come in ascending key order, so only another target needs sorting
            // by default.
            order = range_request::SortOrder::Ascend;
        }
        let sorting = order != range_request::SortOrder::None;
        let limit = usize::try_from(r.limit.max(0)).unwrap_or(usize::MAX);
        let values = !r.count_only
            && (!r.keys_only || (sorting && target == range_request::SortTarget::Value));

        let mut header = self.header(0, 0, 0);
        let mut count: u64 = 0;
        let mut kvs: Vec<KeyValue> = Vec::new();
        if r.range_end.is_empty() {
            let (h, out) = self
                .client
                .execute(Op::Get {
                    key: r.key.clone(),
                    consistency,
                })
                .await
                .map_err(from_client)?;
            let member = if consistency == Consistency::Linearizable {
                self.leader_of(h.partition)
            } else {
                0
            };
            header = self.header(member, 0, h.term);
            match out {
                Outcome::Get(Some(kv)) => {
                    count = 1;
                    kvs.push(kv);
                }
                Outcome::Get(None) => {}
                other => {
                    return Err(Status::internal(format!(
                        "corum answered a get with {other:?}"
                    )))
                }
            }
        } else {
            // `range_end = "\0"`: every key from `key` on (an empty end is "no end" in corum).
            let end = if r.range_end.as_ref() == [0] {
                Bytes::new()
            } else {
                r.range_end.clone()
            };
            if end.is_empty() || end > r.key {
                // Without a requested order or filters only the first `limit` + 1
                // key-values are kept (one more than asked, so `more` is exact); the rest of
                // the range is only counted, and read without values.
                // count_only keeps none: the count is all it needs.
                let keep = if r.count_only {
                    0
                } else if limit > 0 && !fetch_all {
                    limit.saturating_add(1)
                } else {
                    usize::MAX
                };
                let mut bytes = 0usize;
                let mut after = Bytes::new();
                loop {
                    let page = self
                        .client
                        .range(RangeOptions {
                            start: r.key.clone(),
                            end: end.clone(),
                            limit: RANGE_PAGE_KEYS,
                            keys_only: !(values && kvs.len() < keep),
                            consistency,
                            after: after.clone(),
                        })
                        .await
                        .map_err(from_client)?;
                    for kv in page.kvs {
                        count += 1;
                        if kvs.len() < keep {
                            bytes += kv.key.len() + kv.value.len() + RANGE_ENTRY_OVERHEAD_BYTES;
                            kvs.push(kv);
                        }
                    }
                    if bytes > RANGE_BYTES_MAX {
                        return Err(Status::resource_exhausted(format!(
                            "corum-gateway: the range holds more than {RANGE_BYTES_MAX} bytes \
                             of keys and values (counting {RANGE_ENTRY_OVERHEAD_BYTES} bytes \
                             per key-value); use a limit (or keys-only / count-only) and \
                             page through it"
                        )));
                    }
                    match page.next {
                        Some(next) => after = next,
                        None => break,
                    }
                }
            }
        }

        if filtering {
            let within = |v: u64, min: i64, max: i64| {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                (min == 0 || v >= min) && (max == 0 || v <= max)
            };
            kvs.retain(|kv| {
                within(kv.mod_revision, r.min_mod_revision, r.max_mod_revision)
                    && within(
                        kv.create_revision,
                        r.min_create_revision,
                        r.max_create_revision,
                    )
            });
        }
        if sorting {
            use range_request::SortTarget as T;
            match target {
                T::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
                T::Version => kvs.sort_by_key(|kv| kv.version),
                T::Create => kvs.sort_by_key(|kv| kv.create_revision),
                T::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
                T::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
            }
            if order == range_request::SortOrder::Descend {
                kvs.reverse();
            }
        }
        let mut more = false;
        if limit > 0 && kvs.len() > limit {
            kvs.truncate(limit);
            more = true;
        }
        if r.count_only {
            kvs.clear();
            more = false;
        }
        if r.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        Ok(epb::RangeResponse {
            header: Some(header),
            kvs: kvs.into_iter().map(to_etcd).collect(),
            more,
            count: i64::try_from(count).unwrap_or(i64::MAX),
        })
    }

    pub(crate) async fn put(&self, p: epb::PutRequest) -> Result<epb::PutResponse, Status> {
        if p.key.is_empty() {
            return Err(empty_key());
        }
        if p.lease != 0 {
            return Err(lease_refused());
        }
        if p.ignore_value && !p.value.is_empty() {
            return Err(Status::invalid_argument(errors::VALUE_PROVIDED));
        }
        if p.ignore_value || p.ignore_lease {
            return self.put_existing(p).await;
        }
        let (h, out) = self
            .client
            .execute(Op::Put(Put {
                key: p.key,
                value: p.value,
                if_absent: false,
                return_previous: p.prev_kv,
            }))
            .await
            .map_err(from_client)?;
        match out {
            Outcome::Put(r) => Ok(epb::PutResponse {
                header: Some(self.leader_header(h.partition, r.revision, h.term)),
                prev_kv: r.previous.map(to_etcd),
            }),
            other => Err(Status::internal(format!(
                "corum answered a put with {other:?}"
            ))),
        }
    }

    /// `put` with `ignore_value` and/or `ignore_lease`: the key must exist. With
    /// `ignore_value` the current value is read, then written back by a transaction that
    /// compares the mod revision read (so a write in between makes it retry, never lose that
    /// write); with `ignore_lease` only (no leases exist, so the lease is unchanged anyway) a
    /// transaction compares existence.
    async fn put_existing(&self, p: epb::PutRequest) -> Result<epb::PutResponse, Status> {
        let attempts = if p.ignore_value {
            IGNORE_VALUE_ATTEMPTS_MAX
        } else {
            1
        };
        for _ in 0..attempts {
            let (compare, value) = if p.ignore_value {
                let current = self
                    .client
                    .get_with(p.key.clone(), Consistency::Linearizable)
                    .await
                    .map_err(from_client)?
                    .ok_or_else(|| Status::invalid_argument(errors::KEY_NOT_FOUND))?;
                (
                    Compare {
                        key: p.key.clone(),
                        op: CompareOp::Equal,
                        target: CompareTarget::ModRevision(current.mod_revision),
                    },
                    current.value,
                )
            } else {
                (
                    Compare {
                        key: p.key.clone(),
                        op: CompareOp::Equal,
                        target: CompareTarget::Exists(true),
                    },
                    p.value.clone(),
                )
            };
            let txn = Txn {
                compares: vec![compare],
                success: vec![TxnOp::Put(Put {
                    key: p.key.clone(),
                    value,
                    if_absent: false,
                    return_previous: p.prev_kv,
                })],
                failure: Vec::new(),
            };
            let (h, t) = self.run_txn(txn).await?;
            if !t.succeeded {
                if p.ignore_value {
                    continue;
                }
                return Err(Status::invalid_argument(errors::KEY_NOT_FOUND));
            }
            let prev_kv = match t.results.into_iter().next() {
                Some(TxnOpResult::Put { previous, .. }) => previous.map(to_etcd),
                _ => None,
            };
            return Ok(epb::PutResponse {
                header: Some(self.leader_header(h.partition, t.revision, h.term)),
                prev_kv,
            });
        }
        Err(Status::aborted(format!(
            "corum-gateway: the key changed during each of {IGNORE_VALUE_ATTEMPTS_MAX} attempts \
             of put with ignore_value; retry"
        )))
    }

    pub(crate) async fn delete_range(
        &self,
        d: epb::DeleteRangeRequest,
    ) -> Result<epb::DeleteRangeResponse, Status> {
        if d.key.is_empty() {
            return Err(empty_key());
        }
        if d.range_end.is_empty() || is_single_key_range(&d.key, &d.range_end) {
            let (h, out) = self
                .client
                .execute(Op::Delete {
                    key: d.key,
                    return_previous: d.prev_kv,
                })
                .await
                .map_err(from_client)?;
            let Outcome::Delete(r) = out else {
                return Err(Status::internal(format!(
                    "corum answered a delete with {out:?}"
                )));
            };
            return Ok(epb::DeleteRangeResponse {
                header: Some(self.leader_header(h.partition, r.revision, h.term)),
                deleted: i64::from(r.deleted),
                prev_kvs: r
                    .previous
                    .filter(|_| d.prev_kv)
                    .into_iter()
                    .map(to_etcd)
                    .collect(),
            });
        }
        let end = if d.range_end.as_ref() == [0] {
            Bytes::new()
        } else {
            d.range_end.clone()
        };
        // Not atomic: each key is its own corum delete (see the crate docs). Page by page:
        // list at most RANGE_PAGE_KEYS keys, delete them DELETES_IN_FLIGHT_MAX at a time,
        // then continue after the page's last key, so memory is bounded by one page whatever
        // the range holds.
        let mut deleted = 0i64;
        let mut revision = 0u64;
        let mut prev = Vec::new();
        let mut after = Bytes::new();
        let outcome: Result<(), Status> = async {
            if !(end.is_empty() || end > d.key) {
                return Ok(());
            }
            loop {
                let page = self
                    .client
                    .range(RangeOptions {
                        start: d.key.clone(),
                        end: end.clone(),
                        limit: RANGE_PAGE_KEYS,
                        keys_only: true,
                        consistency: Consistency::Linearizable,
                        after: after.clone(),
                    })
                    .await
                    .map_err(from_client)?;
                let mut failure: Option<Status> = None;
                let mut set = JoinSet::new();
                let mut pending = page.kvs.into_iter().map(|kv| kv.key);
                loop {
                    while failure.is_none() && set.len() < DELETES_IN_FLIGHT_MAX {
                        let Some(key) = pending.next() else { break };
                        let client = self.client.clone();
                        let return_previous = d.prev_kv;
                        set.spawn(async move {
                            client
                                .execute(Op::Delete {
                                    key,
                                    return_previous,
                                })
                                .await
                        });
                    }
                    let Some(joined) = set.join_next().await else {
                        break;
                    };
                    match joined {
                        Ok(Ok((_, Outcome::Delete(r)))) => {
                            if r.deleted {
                                deleted += 1;
                                revision = revision.max(r.revision);
                                prev.extend(r.previous.filter(|_| d.prev_kv));
                            }
                        }
                        Ok(Ok((_, other))) => {
                            failure.get_or_insert(Status::internal(format!(
                                "corum answered a delete with {other:?}"
                            )));
                        }
                        Ok(Err(e)) => {
                            failure.get_or_insert(from_client(e));
                        }
                        Err(join) => {
                            failure.get_or_insert(Status::internal(format!(
                                "a delete task failed: {join}"
                            )));
                        }
                    }
                }
                if let Some(s) = failure {
                    return Err(s);
                }
                match page.next {
                    Some(next) => after = next,
                    None => return Ok(()),
                }
            }
        }
        .await;
        if let Err(s) = outcome {
            return Err(partial_delete_error(s, deleted));
        }
        prev.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(epb::DeleteRangeResponse {
            header: Some(self.header(0, revision, 0)),
            deleted,
            prev_kvs: prev.into_iter().map(to_etcd).collect(),
        })
    }

    pub(crate) async fn txn(&self, t: epb::TxnRequest) -> Result<epb::TxnResponse, Status> {
        if t.compare.len() > TXN_OPS_MAX
            || t.success.len() > TXN_OPS_MAX
            || t.failure.len() > TXN_OPS_MAX
        {
            return Err(Status::invalid_argument(errors::TOO_MANY_OPS));
        }
        let mut compares = Vec::with_capacity(t.compare.len());
        for c in &t.compare {
            compares.push(compare_of(c)?);
        }
        let (success, success_shape) = branch_of(&t.success)?;
        let (failure, failure_shape) = branch_of(&t.failure)?;
        let txn = Txn {
            compares,
            success,
            failure,
        };
        if txn.keys().next().is_none() {
            // Nothing to compare or touch: etcd answers success with no responses.
            return Ok(epb::TxnResponse {
                header: Some(self.header(0, 0, 0)),
                succeeded: true,
                responses: Vec::new(),
            });
        }
        self.check_one_partition(&txn)?;
        let (h, r) = self.run_txn(txn).await?;
        let shapes = if r.succeeded {
            &success_shape
        } else {
            &failure_shape
        };
        let header = self.leader_header(h.partition, r.revision, h.term);
        let mut responses = Vec::with_capacity(r.results.len());
        for (result, shape) in r.results.into_iter().zip(shapes) {
            let op_header = Some(header);
            let response = match (result, *shape) {
                (
                    TxnOpResult::Get(kv),
                    OpShape::Range {
                        keys_only,
                        count_only,
                    },
                ) => {
                    let count = i64::from(kv.is_some());
                    let kvs = if count_only {
                        Vec::new()
                    } else {
                        kv.map(|mut kv| {
                            if keys_only {
                                kv.value = Bytes::new();
                            }
                            to_etcd(kv)
                        })
                        .into_iter()
                        .collect()
                    };
                    response_op::Response::ResponseRange(epb::RangeResponse {
                        header: op_header,
                        kvs,
                        more: false,
                        count,
                    })
                }
                (TxnOpResult::Put { previous, .. }, OpShape::Put) => {
                    response_op::Response::ResponsePut(epb::PutResponse {
                        header: op_header,
                        prev_kv: previous.map(to_etcd),
                    })
                }
                (TxnOpResult::Delete { deleted, previous }, OpShape::Delete) => {
                    response_op::Response::ResponseDeleteRange(epb::DeleteRangeResponse {
                        header: op_header,
                        deleted: i64::from(deleted),
                        prev_kvs: previous.map(to_etcd).into_iter().collect(),
                    })
                }
                (result, shape) => {
                    return Err(Status::internal(format!(
                        "corum answered {result:?} for a {shape:?} operation"
                    )))
                }
            };
            responses.push(epb::ResponseOp {
                response: Some(response),
            });
        }
        Ok(epb::TxnResponse {
            header: Some(header),
            succeeded: r.succeeded,
            responses,
        })
    }

    /// Refuses a transaction whose keys are in more than one partition, naming the keys.
    fn check_one_partition(&self, txn: &Txn) -> Result<(), Status> {
        let map = self.client.cluster_map();
        let mut by_partition: BTreeMap<u64, Vec<&Bytes>> = BTreeMap::new();
        for key in txn.keys() {
            if let Some(p) = map.partition_of_key(key) {
                let keys = by_partition.entry(p.id).or_default();
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        if by_partition.len() <= 1 {
            return Ok(());
        }
        let named: Vec<String> = by_partition
            .iter()
            .map(|(p, keys)| {
                let ks: Vec<String> = keys
                    .iter()
                    .take(4)
                    .map(|k| format!("{:?}", String::from_utf8_lossy(k)))
                    .collect();
                format!("partition {p}: {}", ks.join(", "))
            })
            .collect();
        Err(Status::failed_precondition(format!(
            "corum-gateway: the transaction's keys are in {} partitions ({}); corum runs a \
             transaction atomically only within one partition: give the keys a common \
             {{hash tag}} (e.g. {{user1}}name and {{user1}}email hash only \"user1\") so they \
             share a partition",
            by_partition.len(),
            named.join("; ")
        )))
    }

    pub(crate) async fn compact(
        &self,
        c: epb::CompactionRequest,
    ) -> Result<epb::CompactionResponse, Status> {
        // corum keeps only the newest version of each key: there is no history to compact, so
        // every compaction is already done. Succeeding keeps tools that compact periodically
        // (etcdctl compaction, auto-compactors) working.
        tracing::debug!(revision = c.revision, "compaction: nothing to do");
        Ok(epb::CompactionResponse {
            header: Some(self.header(0, 0, 0)),
        })
    }
}

/// A corum compare from an etcd one. A target whose operand is missing compares with zero
/// (or the empty value), as etcd's getters do.
fn compare_of(c: &epb::Compare) -> Result<Compare, Status> {
    use compare::TargetUnion as U;
    if c.key.is_empty() {
        return Err(empty_key());
    }
    if !c.range_end.is_empty() {
        return Err(unimplemented(
            "compares over a key range (range_end) are not supported: compare single keys",
        ));
    }
    let result = compare::CompareResult::try_from(c.result).map_err(|_| {
        Status::invalid_argument(format!(
            "corum-gateway: unknown compare result {} (etcd 3.4 knows EQUAL, GREATER, LESS, \
             NOT_EQUAL)",
            c.result
        ))
    })?;
    let kind = compare::CompareTarget::try_from(c.target).map_err(|_| {
        Status::invalid_argument(format!(
            "corum-gateway: unknown compare target {} (etcd 3.4 knows VERSION, CREATE, MOD, \
             VALUE, LEASE)",
            c.target
        ))
    })?;
    let op = match result {
        compare::CompareResult::Equal => CompareOp::Equal,
        compare::CompareResult::NotEqual => CompareOp::NotEqual,
        compare::CompareResult::Less => CompareOp::Less,
        compare::CompareResult::Greater => CompareOp::Greater,
    };
    let operand = |v: Option<i64>| v.unwrap_or(0);
    let number = |v: i64, make: fn(u64) -> CompareTarget| -> (CompareOp, CompareTarget) {
        match u64::try_from(v) {
            Ok(n) => (op, make(n)),
            // etcd compares int64s: every stored number is >= 0 > v, so `> v` and `!= v` are
            // always true, `= v` and `< v` always false. corum compares u64s: always true is
            // `!= u64::MAX` (no version or revision reaches it), always false is `< 0`.
            Err(_) => match op {
                CompareOp::Greater | CompareOp::NotEqual => (CompareOp::NotEqual, make(u64::MAX)),
                CompareOp::Equal | CompareOp::Less => (CompareOp::Less, make(0)),
            },
        }
    };
    let (op, target) = match kind {
        compare::CompareTarget::Version => number(
            operand(match c.target_union {
                Some(U::Version(v)) => Some(v),
                _ => None,
            }),
            CompareTarget::Version,
        ),
        compare::CompareTarget::Create => number(
            operand(match c.target_union {
                Some(U::CreateRevision(v)) => Some(v),
                _ => None,
            }),
            CompareTarget::CreateRevision,
        ),
        compare::CompareTarget::Mod => number(
            operand(match c.target_union {
                Some(U::ModRevision(v)) => Some(v),
                _ => None,
            }),
            CompareTarget::ModRevision,
        ),
        compare::CompareTarget::Value => (
            op,
            CompareTarget::Value(match &c.target_union {
                Some(U::Value(v)) => v.clone(),
                _ => Bytes::new(),
            }),
        ),
        compare::CompareTarget::Lease => {
            return Err(unimplemented(
                "lease compares are not supported yet (corum has no leases; issue 16)",
            ))
        }
    };
    Ok(Compare {
        key: c.key.clone(),
        op,
        target,
    })
}

/// A corum transaction branch from an etcd one, with how to report each result.
fn branch_of(ops: &[epb::RequestOp]) -> Result<(Vec<TxnOp>, Vec<OpShape>), Status> {
    let mut out = Vec::with_capacity(ops.len());
    let mut shapes = Vec::with_capacity(ops.len());
    // As etcd 3.4 (`checkRequestPut` / `checkRequestDelete` in `v3_server.go`): a key put
    // twice, or put and deleted, is refused; deleting a key twice is allowed.
    let mut put_keys: HashSet<Bytes> = HashSet::new();
    let mut deleted_keys: HashSet<Bytes> = HashSet::new();
    for op in ops {
        match &op.request {
            None => {
                return Err(Status::invalid_argument(
                    "corum-gateway: a transaction operation names no request",
                ))
            }
            Some(request_op::Request::RequestRange(r)) => {
                if r.key.is_empty() {
                    return Err(empty_key());
                }
                if !r.range_end.is_empty() && !is_single_key_range(&r.key, &r.range_end) {
                    return Err(unimplemented(
                        "a range over more than one key inside a transaction is not supported \
                         yet (corum transactions read single keys): get the keys one by one",
                    ));
                }
                if r.revision > 0 {
                    return Err(revision_refused());
                }
                if r.min_mod_revision != 0
                    || r.max_mod_revision != 0
                    || r.min_create_revision != 0
                    || r.max_create_revision != 0
                {
                    return Err(unimplemented(
                        "min/max mod/create revision filters on a range inside a transaction \
                         are not supported: read the key and check its revisions, or compare \
                         them in the transaction",
                    ));
                }
                out.push(TxnOp::Get { key: r.key.clone() });
                shapes.push(OpShape::Range {
                    keys_only: r.keys_only,
                    count_only: r.count_only,
                });
            }
            Some(request_op::Request::RequestPut(p)) => {
                if p.key.is_empty() {
                    return Err(empty_key());
                }
                if p.lease != 0 {
                    return Err(lease_refused());
                }
                if p.ignore_value || p.ignore_lease {
                    return Err(unimplemented(
                        "put with ignore_value or ignore_lease inside a transaction is not \
                         supported: put the value explicitly",
                    ));
                }
                if deleted_keys.contains(&p.key) || !put_keys.insert(p.key.clone()) {
                    return Err(Status::invalid_argument(errors::DUPLICATE_KEY));
                }
                out.push(TxnOp::Put(Put {
                    key: p.key.clone(),
                    value: p.value.clone(),
                    if_absent: false,
                    return_previous: p.prev_kv,
                }));
                shapes.push(OpShape::Put);
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                if d.key.is_empty() {
                    return Err(empty_key());
                }
                if !d.range_end.is_empty() && !is_single_key_range(&d.key, &d.range_end) {
                    return Err(unimplemented(
                        "deleting a range of keys inside a transaction is not supported \
                         (corum deletes single keys atomically): delete the keys one by one",
                    ));
                }
                if put_keys.contains(&d.key) {
                    return Err(Status::invalid_argument(errors::DUPLICATE_KEY));
                }
                deleted_keys.insert(d.key.clone());
                out.push(TxnOp::Delete {
                    key: d.key.clone(),
                    return_previous: d.prev_kv,
                });
                shapes.push(OpShape::Delete);
            }
            Some(request_op::Request::RequestTxn(_)) => {
                return Err(unimplemented(
                    "nested transactions are not supported yet: flatten the transaction",
                ))
            }
        }
    }
    Ok((out, shapes))
}

/// The error of a range delete that failed part-way. With nothing deleted it is the failure
/// itself (etcd's code and exact message, which etcd clients match on). With keys deleted, a
/// code that implies "nothing happened" (InvalidArgument, Unavailable, ...) would be a lie:
/// `Unknown`, with how many keys were deleted and the original error.
fn partial_delete_error(s: Status, deleted: i64) -> Status {
    if deleted == 0 {
        return s;
    }
    Status::unknown(format!(
        "corum-gateway: range delete failed part-way: {deleted} keys were deleted before this \
         error (range delete is not atomic in corum): {:?}: {}",
        s.code(),
        s.message()
    ))
}

/// `Request` -> the gateway call -> `Response`, for the generated service traits.
/// Holds one of the gateway's [`crate::REQUESTS_IN_FLIGHT_MAX`] permits while the call runs
/// (a call waits for one when all are taken), so the corum calls and the memory behind them
/// stay bounded however many connections there are.
pub(crate) async fn unary<T, R, F>(
    gateway: &Gateway,
    req: Request<T>,
    f: impl FnOnce(T) -> F,
) -> Result<Response<R>, Status>
where
    F: std::future::Future<Output = Result<R, Status>>,
{
    let _permit = gateway
        .in_flight
        .acquire()
        .await
        .map_err(|_| Status::unavailable("corum-gateway: shutting down"))?;
    f(req.into_inner()).await.map(Response::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_key_ranges() {
        assert!(is_single_key_range(b"a", b"a\0"));
        assert!(!is_single_key_range(b"a", b"b"));
        assert!(!is_single_key_range(b"a", b"a\0\0"));
        assert!(!is_single_key_range(b"a", b"\0"));
    }

    #[test]
    fn compares_map_to_corum() {
        let c = epb::Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Version as i32,
            key: Bytes::from_static(b"k"),
            target_union: Some(compare::TargetUnion::Version(3)),
            range_end: Bytes::new(),
        };
        let got = compare_of(&c).unwrap();
        assert_eq!(got.op, CompareOp::Greater);
        assert_eq!(got.target, CompareTarget::Version(3));
        let lease = epb::Compare {
            target: compare::CompareTarget::Lease as i32,
            ..c
        };
        assert_eq!(
            compare_of(&lease).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
    }

    #[test]
    fn duplicate_writes_in_a_branch_are_refused() {
        let put = |k: &'static [u8]| epb::RequestOp {
            request: Some(request_op::Request::RequestPut(epb::PutRequest {
                key: Bytes::from_static(k),
                ..Default::default()
            })),
        };
        let del = |k: &'static [u8]| epb::RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                epb::DeleteRangeRequest {
                    key: Bytes::from_static(k),
                    ..Default::default()
                },
            )),
        };
        let err = branch_of(&[put(b"a"), put(b"a")]).unwrap_err();
        assert_eq!(err.message(), errors::DUPLICATE_KEY);
        assert!(branch_of(&[put(b"a"), put(b"b")]).is_ok());
        // etcd 3.4: overlapping deletes are fine; a put inside a delete is not.
        assert!(branch_of(&[del(b"a"), del(b"a")]).is_ok());
        for ops in [[put(b"a"), del(b"a")], [del(b"a"), put(b"a")]] {
            let err = branch_of(&ops).unwrap_err();
            assert_eq!(err.message(), errors::DUPLICATE_KEY);
        }
    }

    #[test]
    fn unknown_compare_enums_are_refused() {
        let c = epb::Compare {
            result: 9,
            target: compare::CompareTarget::Version as i32,
            key: Bytes::from_static(b"k"),
            target_union: Some(compare::TargetUnion::Version(3)),
            range_end: Bytes::new(),
        };
        assert_eq!(
            compare_of(&c).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let c = epb::Compare {
            result: compare::CompareResult::Equal as i32,
            target: 9,
            ..c
        };
        assert_eq!(
            compare_of(&c).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn negative_operands_compare_like_etcds_int64s() {
        use compare::CompareResult as R;
        // (result, always true?) for a stored version/revision >= 0 against -1.
        for (result, always) in [
            (R::Greater, true),
            (R::NotEqual, true),
            (R::Equal, false),
            (R::Less, false),
        ] {
            let c = epb::Compare {
                result: result as i32,
                target: compare::CompareTarget::Mod as i32,
                key: Bytes::from_static(b"k"),
                target_union: Some(compare::TargetUnion::ModRevision(-1)),
                range_end: Bytes::new(),
            };
            let got = compare_of(&c).unwrap();
            let want = if always {
                (CompareOp::NotEqual, CompareTarget::ModRevision(u64::MAX))
            } else {
                (CompareOp::Less, CompareTarget::ModRevision(0))
            };
            assert_eq!((got.op, got.target), want, "{result:?} -1");
        }
    }

    #[test]
    fn txn_range_revision_filters_are_refused() {
        let op = epb::RequestOp {
            request: Some(request_op::Request::RequestRange(epb::RangeRequest {
                key: Bytes::from_static(b"k"),
                min_mod_revision: 2,
                ..Default::default()
            })),
        };
        assert_eq!(
            branch_of(&[op]).unwrap_err().code(),
            tonic::Code::Unimplemented
        );
    }

    #[test]
    fn partial_range_delete_errors_say_what_happened() {
        let s = partial_delete_error(Status::invalid_argument(errors::TOO_LARGE), 0);
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::InvalidArgument, errors::TOO_LARGE)
        );
        let s = partial_delete_error(Status::unavailable(errors::TIMEOUT), 1500);
        assert_eq!(s.code(), tonic::Code::Unknown);
        assert!(
            s.message().contains("1500 keys were deleted"),
            "{}",
            s.message()
        );
    }
}
