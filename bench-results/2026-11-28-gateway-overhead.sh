#!/usr/bin/env bash
# The gateway's overhead, measured in one run (bench-results/2026-11-28-gateway-overhead.md):
# one `corum local` 3-node cluster and one `corum-gateway` process in front of it, then
# `loadgen run` with the same workload against
#   corum : --target corum --endpoints <the nodes>     (corum's native protocol)
#   etcd  : --target etcd  --endpoints <the gateway>   (etcd's v3 gRPC API through the gateway)
# alternating (corum first in odd rounds, etcd first in even ones), so the ratio
# etcd-through-gateway / corum-direct is taken at one time on one cluster.
# CPU: loadgen measures the server pids over its window (the 3 nodes for corum; the 3 nodes and
# the gateway for etcd). The gateway alone: utime+stime from /proc/<pid>/stat before and after
# each loadgen process, divided by the requests that process sent (preload + warm-up + window +
# drain, from the report's per-second timeline).
#
# Usage: bench-results/2026-11-28-gateway-overhead.sh OUT_DIR
# Env: ROUNDS (3), DURATION (10s), WARMUP (3s), WORKLOADS ("put get"), KEYS (10000),
#      CORUM / GATEWAY / LOADGEN (target/release/{corum,corum-gateway,loadgen}),
#      BASE_PORT (27000: the nodes take 9 ports from here, the gateway BASE_PORT+100),
#      LOADGEN_EXTRA (more loadgen arguments for every run, e.g. "--connections 1 --concurrency 1").
# Writes OUT_DIR/runs.jsonl (one line per loadgen run), OUT_DIR/reports/ (loadgen's reports),
# and prints the summary JSON (medians and ratios) on stdout.
set -euo pipefail
OUT="$1"
ROUNDS="${ROUNDS:-3}"; DURATION="${DURATION:-10s}"; WARMUP="${WARMUP:-3s}"
WORKLOADS="${WORKLOADS:-put get}"; KEYS="${KEYS:-10000}"
CORUM="${CORUM:-target/release/corum}"; GATEWAY="${GATEWAY:-target/release/corum-gateway}"
LOADGEN="${LOADGEN:-target/release/loadgen}"; BASE_PORT="${BASE_PORT:-27000}"
read -r -a EXTRA <<< "${LOADGEN_EXTRA:-}"
GW_ADDR="127.0.0.1:$((BASE_PORT + 100))"
CLK_TCK="$(getconf CLK_TCK)"
rm -rf "$OUT"; mkdir -p "$OUT/reports"
: > "$OUT/runs.jsonl"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$CORUM" local --dir "$OUT/cluster" --base-port "$BASE_PORT" > "$OUT/corum-local.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do
  grep -q '^cluster ready' "$OUT/corum-local.log" 2>/dev/null && break
  kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$OUT/corum-local.log" >&2; exit 1; }
  sleep 0.1
done
grep -q '^cluster ready' "$OUT/corum-local.log" || { echo "corum local not ready in 30 s" >&2; exit 1; }
ENDPOINTS="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["endpoints"])' "$OUT/cluster/cluster.json")"
NODE_PIDS="$(python3 -c 'import json,sys; print(",".join(str(n["pid"]) for n in json.load(open(sys.argv[1]))["nodes"]))' "$OUT/cluster/cluster.json")"

"$GATEWAY" --listen "$GW_ADDR" --endpoints "$ENDPOINTS" > "$OUT/gateway.log" 2>&1 &
GW_PID=$!; PIDS+=("$GW_PID")
for _ in $(seq 1 300); do
  (exec 3<>"/dev/tcp/${GW_ADDR%:*}/${GW_ADDR#*:}") 2>/dev/null && break
  kill -0 "$GW_PID" 2>/dev/null || { cat "$OUT/gateway.log" >&2; exit 1; }
  sleep 0.1
done
echo "cluster $ENDPOINTS (pids $NODE_PIDS), gateway $GW_ADDR (pid $GW_PID)" >&2

cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; } # utime + stime

run() { # round workload target
  local round=$1 workload=$2 target=$3 endpoints pids name
  if [ "$target" = corum ]; then endpoints="$ENDPOINTS"; pids="$NODE_PIDS"
  else endpoints="$GW_ADDR"; pids="$NODE_PIDS,$GW_PID"; fi
  name="gw-overhead-$workload-$target-r$round"
  local load_before before after
  load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
  before="$(cpu_ticks "$GW_PID")"
  "$LOADGEN" run --target "$target" --endpoints "$endpoints" --workload "$workload" \
    --keys "$KEYS" --duration "$DURATION" --warmup "$WARMUP" --server-pids "$pids" \
    --name "$name" --out-dir "$OUT/reports" --quiet \
    --note "gateway overhead: same cluster, $target target, round $round" ${EXTRA[@]+"${EXTRA[@]}"} \
    > "$OUT/$name.out" 2> "$OUT/$name.err"
  after="$(cpu_ticks "$GW_PID")"
  printf '{"round":%s,"workload":"%s","target":"%s","server_pids":"%s","gateway_cpu_ticks":%s,"clk_tck":%s,"loadavg_before":"%s","loadavg_after":"%s","report":"%s","summary":%s}\n' \
    "$round" "$workload" "$target" "$pids" "$((after - before))" "$CLK_TCK" "$load_before" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" "$(ls -d "$OUT"/reports/*-"$name" | tail -1)" \
    "$(tail -1 "$OUT/$name.out")" >> "$OUT/runs.jsonl"
  echo "round $round $workload $target: $(tail -1 "$OUT/$name.out")" >&2
}

for r in $(seq 1 "$ROUNDS"); do
  for w in $WORKLOADS; do
    if [ $((r % 2)) -eq 1 ]; then run "$r" "$w" corum; run "$r" "$w" etcd
    else run "$r" "$w" etcd; run "$r" "$w" corum; fi
  done
done

python3 - "$OUT/runs.jsonl" "$KEYS" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
keys = int(sys.argv[2])
for r in runs:
    rep = json.load(open(r["report"] + "/summary.json"))
    case = rep["cases"][0] if "cases" in rep else rep
    timeline = case["timeline"]
    sent = sum(s["ops_per_s"] * s["len_s"] + s["errors"] for s in timeline)
    preload = keys if case["config"].get("preload") else 0
    r["requests_in_process"] = round(sent + preload)
    cpu_us = r["gateway_cpu_ticks"] * 1e6 / r["clk_tck"]
    r["gateway_cpu_us_per_request"] = round(cpu_us / r["requests_in_process"], 1) if r["target"] == "etcd" else None
med = lambda xs: statistics.median(xs) if xs else None
out = {"runs": runs, "by_workload": {}}
for w in sorted({r["workload"] for r in runs}):
    def col(target, f):
        return [f(r) for r in runs if r["workload"] == w and r["target"] == target]
    def pair(f):  # etcd / corum of the same round
        rounds = sorted({r["round"] for r in runs if r["workload"] == w})
        ratios = []
        for n in rounds:
            e = [f(r) for r in runs if (r["workload"], r["target"], r["round"]) == (w, "etcd", n)]
            c = [f(r) for r in runs if (r["workload"], r["target"], r["round"]) == (w, "corum", n)]
            if e and c and c[0]:
                ratios.append(round(e[0] / c[0], 3))
        return ratios
    s = lambda k: (lambda r: r["summary"][k])
    d = {}
    for k in ["ops_per_s", "p50_us", "p99_us", "cpu_us_per_op"]:
        d[k] = {"corum": med(col("corum", s(k))), "etcd_via_gateway": med(col("etcd", s(k))),
                "ratio_per_round_etcd_over_corum": pair(s(k))}
        d[k]["median_ratio"] = med(d[k]["ratio_per_round_etcd_over_corum"])
    d["gateway_cpu_us_per_request"] = med(col("etcd", lambda r: r["gateway_cpu_us_per_request"]))
    d["gateway_cpu_us_during_corum_runs_health_probe_only"] = med(col("corum", lambda r: r["gateway_cpu_ticks"] * 1e6 / r["clk_tck"]))
    d["errors"] = {"corum": sum(col("corum", s("errors"))), "etcd_via_gateway": sum(col("etcd", s("errors")))}
    out["by_workload"][w] = d
print(json.dumps(out, indent=1))
PY
