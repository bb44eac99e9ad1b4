#!/usr/bin/env bash
# Same-run A/B of the cost of metrics (bench-results/2026-11-27-metrics-cost.md): write
# throughput of a local 3-node cluster, `loadgen run --local --workload put`, alternating
#   main    : corum built from the branch's base commit (no metrics code at all)
#   off     : this branch, `corum local --no-metrics` (shards count, nothing serves them)
#   scraped : this branch, metrics ports on, every node's /metrics scraped once a second
# Usage: bench-results/2026-11-27-metrics-cost.sh MAIN_CORUM BRANCH_CORUM ROUNDS OUT_DIR
# (loadgen from the branch: target/release/loadgen). Prints one JSON line per run to
# OUT_DIR/runs.jsonl.
set -euo pipefail
MAIN_BIN="$1"; BRANCH_BIN="$2"; ROUNDS="${3:-4}"; OUT="$4"
LOADGEN="${LOADGEN:-target/release/loadgen}"
DURATION="${DURATION:-20s}"; WARMUP="${WARMUP:-5s}"
mkdir -p "$OUT/data" "$OUT/reports"
: > "$OUT/runs.jsonl"

scrape_while() { # pid: scrape every node's /metrics once a second while pid runs
  local pid=$1 json="" n=0
  while kill -0 "$pid" 2>/dev/null && [ $n -lt 300 ]; do
    n=$((n + 1))
    json=$(ls -t "$OUT"/data/*/cluster.json 2>/dev/null | head -1 || true)
    if [ -n "$json" ] && grep -q '"ready": true' "$json"; then
      for a in $(grep -o '"metrics_addr": "[^"]*"' "$json" | cut -d'"' -f4); do
        curl -s -o /dev/null --max-time 2 "http://$a/metrics" && echo 1 >> "$OUT/scrapes-$pid" || true
      done
    fi
    sleep 1
  done
}

run() { # variant bin extra-args...
  local variant=$1 bin=$2; shift 2
  "$LOADGEN" run --local --workload put --duration "$DURATION" --warmup "$WARMUP" \
    --corum-bin "$bin" --data-root "$OUT/data" --out-dir "$OUT/reports" \
    --name "metrics-cost-$variant" --quiet "$@" > "$OUT/$variant.out" 2> "$OUT/$variant.err" &
  local pid=$!
  if [ "$variant" = scraped ]; then scrape_while $pid & fi
  wait $pid
  wait || true
  local scrapes=0
  [ -f "$OUT/scrapes-$pid" ] && scrapes=$(wc -l < "$OUT/scrapes-$pid")
  printf '{"variant":"%s","scrapes":%s,"summary":%s}\n' "$variant" "$scrapes" "$(tail -1 "$OUT/$variant.out")" >> "$OUT/runs.jsonl"
  echo "$variant done ($scrapes scrapes)" >&2
}

# The order reverses every round, so no variant always runs first (or right after another).
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then
    run main "$MAIN_BIN"
    run off "$BRANCH_BIN" --corum-local-arg=--no-metrics
    run scraped "$BRANCH_BIN"
  else
    run scraped "$BRANCH_BIN"
    run off "$BRANCH_BIN" --corum-local-arg=--no-metrics
    run main "$MAIN_BIN"
  fi
done
