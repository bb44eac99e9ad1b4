#!/usr/bin/env bash
# Backup and restore of a loaded 3-node `corum local` cluster (64 partitions, 1 shard per
# node): time and size of `corum ctl backup`, `backup verify`, and `corum local --restore-from`
# until ready, plus a key count check. Usage: CORUM=path LOADGEN=path KEYS=N bash this.sh
set -euo pipefail
CORUM=${CORUM:-target/release/corum}
LOADGEN=${LOADGEN:-target/release/loadgen}
KEYS=${KEYS:-400000}
W=$(mktemp -d /tmp/corum-backup-bench.XXXX)
trap 'pkill -f "corum local --nodes 3 --dir $W" || true; rm -rf "$W"' EXIT
"$CORUM" local --nodes 3 --dir "$W/a" --partitions 64 --base-port 7400 >"$W/a.log" 2>&1 &
for _ in $(seq 100); do grep -q '"ready": true' "$W/a/cluster.json" 2>/dev/null && break; sleep 0.2; done
E=$(python3 -c "import json;print(json.load(open('$W/a/cluster.json'))['endpoints'])")
# Fill: every key of 0..KEYS once (sequential), 16-byte keys, 256-byte values.
"$LOADGEN" run --target corum --endpoints "$E" --workload put --distribution sequential \
  --keys "$KEYS" --value-bytes 256 --concurrency 64 --duration 15s >"$W/load.out" 2>"$W/load.err" || true
now() { date +%s.%N; }
t0=$(now); "$CORUM" ctl --endpoints "$E" --json --timeout-ms 30000 backup --out "$W/backup" >"$W/backup.json"; t1=$(now)
"$CORUM" ctl --json backup verify "$W/backup" >"$W/verify.json"; t2=$(now)
pkill -f "corum local --nodes 3 --dir $W/a"; sleep 2
"$CORUM" local --nodes 3 --dir "$W/b" --partitions 64 --base-port 7500 --restore-from "$W/backup" >"$W/b.log" 2>&1 &
for _ in $(seq 600); do grep -q '"ready": true' "$W/b/cluster.json" 2>/dev/null && break; sleep 0.1; done; t3=$(now)
E2=$(python3 -c "import json;print(json.load(open('$W/b/cluster.json'))['endpoints'])")
restored=$("$CORUM" ctl --endpoints "$E2" --json --timeout-ms 30000 range "" --keys-only | python3 -c "import json,sys; print(len(json.load(sys.stdin)))")
python3 - "$W" "$t0" "$t1" "$t2" "$t3" "$restored" <<'PY'
import json, sys
w, t0, t1, t2, t3, restored = sys.argv[1], *map(float, sys.argv[2:6]), int(sys.argv[6])
b = json.load(open(f"{w}/backup.json")); v = json.load(open(f"{w}/verify.json"))
print(json.dumps({
    "keys_backed_up": b["keys"], "bytes": b["bytes"], "partitions": b["partitions"],
    "backup_seconds": round(t1 - t0, 3), "verify_seconds": round(t2 - t1, 3),
    "restore_to_ready_seconds": round(t3 - t2, 3),
    "backup_mb_per_s": round(b["bytes"] / 1e6 / (t1 - t0), 1),
    "verify_mb_per_s": round(v["bytes"] / 1e6 / (t2 - t1), 1),
    "keys_after_restore": restored,
}))
PY
