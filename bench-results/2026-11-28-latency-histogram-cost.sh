#!/usr/bin/env bash
# Same-run A/B of the cost of the request latency histogram (corum_request_duration_seconds,
# issue 17): write throughput and server CPU per write of a local 3-node cluster,
# `loadgen run --local --workload put`, alternating
#   before : corum built from 523a0b5 (no latency histogram)
#   after  : corum built from f0beb5f (one clock read per request frame and per turn with
#            answers, one histogram observation per answer)
# both with their metrics ports on and not scraped.
# Usage: bench-results/2026-11-28-latency-histogram-cost.sh BEFORE_CORUM AFTER_CORUM ROUNDS OUT_DIR
# (loadgen: target/release/loadgen). One JSON line per run in OUT_DIR/runs.jsonl.
set -euo pipefail
BEFORE="$1"; AFTER="$2"; ROUNDS="${3:-4}"; OUT="$4"
LOADGEN="${LOADGEN:-target/release/loadgen}"
DURATION="${DURATION:-20s}"; WARMUP="${WARMUP:-5s}"
mkdir -p "$OUT/data" "$OUT/reports"
: > "$OUT/runs.jsonl"

run() { # variant bin
  local variant=$1 bin=$2
  "$LOADGEN" run --local --workload put --duration "$DURATION" --warmup "$WARMUP" \
    --corum-bin "$bin" --data-root "$OUT/data" --out-dir "$OUT/reports" \
    --name "latency-histogram-$variant" --quiet > "$OUT/$variant.out" 2> "$OUT/$variant.err"
  printf '{"variant":"%s","summary":%s}\n' "$variant" "$(tail -1 "$OUT/$variant.out")" >> "$OUT/runs.jsonl"
  echo "$variant done" >&2
}

# The order alternates every round, so neither variant always runs first.
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then run before "$BEFORE"; run after "$AFTER";
  else run after "$AFTER"; run before "$BEFORE"; fi
done
