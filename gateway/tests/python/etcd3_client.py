"""python-etcd3 0.12 (PyPI `etcd3`) against corum-gateway.

Run by gateway/tests/etcd_clients.rs with the venv that scripts/install-python-etcd3.sh makes:

    python etcd3_client.py --endpoint HOST:PORT --version VERSION --cross-keys K1,K2

VERSION is what Maintenance.Status must report; K1 and K2 are two keys that the cluster map
puts in different partitions (the Rust test computes them). Every check runs, each printing
`ok: NAME` or `FAILED: NAME` and its traceback; the last line is
`python-etcd3: N checks, M failed`, and the exit status is 1 if any failed.
Keys live under the prefix py/ or the hash tag {py}, so other parts of the test are not disturbed.
"""

import argparse
import sys
import traceback

import etcd3
import etcd3.exceptions
import grpc

CHECKS = []


def check(f):
    CHECKS.append(f)
    return f


def eq(got, want, what=""):
    if got != want:
        raise AssertionError("%s: got %r, want %r" % (what, got, want))


def rpc_error_of(exc):
    """python-etcd3 turns some gRPC codes into its own exceptions without the server's
    message (`raise PreconditionFailedError` inside `except grpc.RpcError`); the gRPC error
    it came from is the exception's context. Others it re-raises as the grpc.RpcError."""
    if isinstance(exc, grpc.RpcError):
        return exc
    ctx = exc.__context__
    if isinstance(ctx, grpc.RpcError):
        return ctx
    raise AssertionError("no gRPC error behind %r" % (exc,))


def values(pairs):
    return [(m.key.decode(), v.decode()) for v, m in pairs]


@check
def put_get(c, args):
    c.put("py/a", "3")
    value, meta = c.get("py/a")
    eq(value, b"3", "value")
    eq(meta.key, b"py/a", "key")
    eq(meta.version, 1, "version of a new key")
    if meta.create_revision <= 0 or meta.mod_revision != meta.create_revision:
        raise AssertionError("revisions of a new key: create %d mod %d"
                             % (meta.create_revision, meta.mod_revision))
    eq(c.get("py/none"), (None, None), "a missing key")
    # put with prev_kv returns the old pair; the version counts the writes.
    r = c.put("py/a", "4", prev_kv=True)
    eq((r.prev_kv.key, r.prev_kv.value), (b"py/a", b"3"), "prev_kv")
    value, meta2 = c.get("py/a")
    eq((value, meta2.version), (b"4", 2), "after the second put")
    if meta2.mod_revision <= meta.mod_revision:
        raise AssertionError("mod revision did not grow: %d then %d"
                             % (meta.mod_revision, meta2.mod_revision))
    eq(meta2.create_revision, meta.create_revision, "create revision kept")
    # Serializable reads may lag (corum stale reads): only check they answer.
    c.get("py/a", serializable=True)
    # Binary keys and values pass through unchanged.
    c.put(b"py/bin\x00\xff", b"\x00\x01\xfe")
    eq(c.get(b"py/bin\x00\xff")[0], b"\x00\x01\xfe", "binary value")
    eq(c.delete(b"py/bin\x00\xff"), True, "delete binary key")
    c.delete("py/a")


@check
def prefix_and_sort(c, args):
    for k, v in [("py/r/b", "1"), ("py/r/a", "3"), ("py/r/c", "2"), ("py/s", "x")]:
        c.put(k, v)
    eq(values(c.get_prefix("py/r/")),
       [("py/r/a", "3"), ("py/r/b", "1"), ("py/r/c", "2")], "get_prefix")
    eq(values(c.get_prefix("py/r/", sort_order="descend", sort_target="value")),
       [("py/r/a", "3"), ("py/r/c", "2"), ("py/r/b", "1")], "sorted by value, descending")
    eq(values(c.get_prefix("py/r/", sort_order="descend")),
       [("py/r/c", "2"), ("py/r/b", "1"), ("py/r/a", "3")], "sorted by key, descending")
    eq([m.key for _, m in c.get_prefix("py/r/", keys_only=True)],
       [b"py/r/a", b"py/r/b", b"py/r/c"], "keys_only keys")
    eq([v for v, _ in c.get_prefix("py/r/", keys_only=True)], [b"", b"", b""],
       "keys_only values")
    # get_range: the end is exclusive; sorted by value ascending.
    eq(values(c.get_range("py/r/a", "py/r/c", sort_order="ascend", sort_target="value")),
       [("py/r/b", "1"), ("py/r/a", "3")], "get_range sorted by value")
    # get_all (from \0 to the end) sees the keys, among whatever else the test wrote.
    keys = [m.key for _, m in c.get_all(keys_only=True)]
    for k in [b"py/r/a", b"py/r/b", b"py/r/c", b"py/s"]:
        if k not in keys:
            raise AssertionError("get_all misses %r" % k)
    # count is the range's. (python-etcd3 0.12 accepts limit= and count_only= but never puts
    # them in the request, so neither can be checked through it; the Rust tests check both.)
    r = c.get_prefix_response("py/r/")
    eq((r.count, len(r.kvs), r.more), (3, 3, False), "count")


@check
def delete_and_delete_prefix(c, args):
    eq(c.delete("py/s"), True, "delete an existing key")
    eq(c.delete("py/s"), False, "delete a missing key")
    c.put("py/d", "v")
    r = c.delete("py/d", prev_kv=True, return_response=True)
    eq((r.deleted, [(kv.key, kv.value) for kv in r.prev_kvs]), (1, [(b"py/d", b"v")]),
       "delete with prev_kv")
    r = c.delete_prefix("py/r/")
    eq(r.deleted, 3, "delete_prefix deleted")
    eq(list(c.get_prefix("py/r/")), [], "nothing left under py/r/")


@check
def transactions(c, args):
    t = c.transactions
    key, log = "{py}balance", "{py}log"
    c.put(key, "10")
    _, meta = c.get(key)
    # Value compare: the success branch puts twice.
    ok, responses = c.transaction(
        compare=[t.value(key) == "10"],
        success=[t.put(key, "20"), t.put(log, "debit")],
        failure=[etcd3.transactions.Get(key)])
    eq((ok, len(responses)), (True, 2), "value compare holds")
    eq(c.get(key)[0], b"20", "the success branch ran")
    # The same compare fails now; the failure branch's get returns the value.
    ok, responses = c.transaction(
        compare=[t.value(key) == "10"],
        success=[t.put(key, "30")],
        failure=[etcd3.transactions.Get(key)])
    eq(ok, False, "value compare fails")
    eq([(m.key, v) for v, m in responses[0]], [(key.encode(), b"20")], "failure get")
    _, now = c.get(key)
    # Version, create and mod revision compares, each holding...
    ok, _ = c.transaction(
        compare=[t.version(key) == 2,
                 t.create(key) == meta.create_revision,
                 t.mod(key) == now.mod_revision,
                 t.mod(log) > 0,
                 t.value(key) != "10",
                 t.version(key) < 3],
        success=[etcd3.transactions.Delete(log)],
        failure=[])
    eq(ok, True, "version/create/mod compares hold")
    eq(c.get(log), (None, None), "the success branch deleted the log")
    # ... and each failing alone.
    for name, cmp in [("version", t.version(key) == 1),
                      ("create", t.create(key) == meta.create_revision + 1000),
                      ("mod", t.mod(key) < now.mod_revision),
                      ("missing key's create", t.create(log) != 0)]:
        ok, _ = c.transaction(compare=[cmp], success=[t.put(key, "bad")], failure=[])
        eq(ok, False, "a failing %s compare" % name)
    eq(c.get(key)[0], b"20", "no failing compare wrote")
    # replace(): a value compare-and-set.
    eq(c.replace(key, "20", "21"), True, "replace with the right value")
    eq(c.replace(key, "20", "22"), False, "replace with a stale value")
    eq(c.get(key)[0], b"21", "after replace")
    # put_if_not_exists(): create revision == 0.
    eq(c.put_if_not_exists("{py}new", "1"), True, "put_if_not_exists on a new key")
    eq(c.put_if_not_exists("{py}new", "2"), False, "put_if_not_exists on an existing key")
    eq(c.get("{py}new")[0], b"1", "after put_if_not_exists")
    c.delete_prefix("{py}")


@check
def cross_partition_transaction(c, args):
    a, b = args.cross_keys
    t = c.transactions
    try:
        c.transaction(compare=[], success=[t.put(a, "v"), t.put(b, "v")], failure=[])
    except etcd3.exceptions.PreconditionFailedError as e:
        err = rpc_error_of(e)
        eq(err.code(), grpc.StatusCode.FAILED_PRECONDITION, "code")
        for want in ['"%s"' % a, '"%s"' % b, "{hash tag}"]:
            if want not in err.details():
                raise AssertionError("%r not in the message %r" % (want, err.details()))
    else:
        raise AssertionError("a transaction over two partitions succeeded")
    eq((c.get(a), c.get(b)), ((None, None), (None, None)), "nothing was written")
    c.put("py/after", "1")
    eq(c.get("py/after")[0], b"1", "the gateway serves after the refusal")
    c.delete("py/after")


@check
def cluster_and_maintenance(c, args):
    members = list(c.members)
    eq(sorted((m.id, m.name) for m in members),
       [(1, "node-1"), (2, "node-2"), (3, "node-3")], "members")
    for m in members:
        eq(list(m.client_urls), ["http://" + args.endpoint], "client URLs of %s" % m.name)
    s = c.status()
    eq(s.version, args.version, "version")
    # Status's leader is the meta group's leader node, which is one of the members.
    if s.leader is None or s.leader.id not in (1, 2, 3):
        raise AssertionError("status leader %r is no member" % (s.leader,))
    if s.raft_term < 1 or s.raft_index < 1:
        raise AssertionError("raft term %d index %d" % (s.raft_term, s.raft_index))
    eq(list(c.list_alarms()), [], "alarms")
    c.defragment()
    c.compact(1)


@check
def refusals(c, args):
    # Unimplemented is not one of python-etcd3's own exceptions: the grpc.RpcError comes through.
    for name, call, want in [
            ("lease", lambda: c.lease(10), "leases are not supported yet"),
            ("hash", lambda: c.hash(), "corum-gateway"),
            ("remove_member", lambda: c.remove_member(1), "issue 11")]:
        try:
            call()
        except grpc.RpcError as e:
            eq(e.code(), grpc.StatusCode.UNIMPLEMENTED, name)
            if want not in e.details():
                raise AssertionError("%s: %r not in %r" % (name, want, e.details()))
        else:
            raise AssertionError("%s succeeded" % name)
    # An empty key: etcd's exact message (InvalidArgument, passed through as grpc.RpcError).
    try:
        c.put("", "v")
    except grpc.RpcError as e:
        eq((e.code(), e.details()),
           (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided"), "empty key")
    else:
        raise AssertionError("a put of the empty key succeeded")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True, help="gateway HOST:PORT")
    p.add_argument("--version", required=True, help="the version Status must report")
    p.add_argument("--cross-keys", required=True, type=lambda s: s.split(","),
                   help="two keys in different partitions, comma-separated")
    args = p.parse_args()
    host, port = args.endpoint.rsplit(":", 1)
    c = etcd3.client(host=host, port=int(port), timeout=10)
    # Start from nothing under the script's prefixes, so a second run sees what a first does.
    c.delete_prefix("py/")
    c.delete_prefix("{py}")
    failed = 0
    for f in CHECKS:
        try:
            f(c, args)
            print("ok: %s" % f.__name__, flush=True)
        except Exception:  # every failure is reported, then the next check runs
            failed += 1
            print("FAILED: %s\n%s" % (f.__name__, traceback.format_exc()), flush=True)
    print("python-etcd3: %d checks, %d failed" % (len(CHECKS), failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
