#!/usr/bin/env bash
# Reproduction (found by corum-chaos, kill-all nemesis) of a bug FIXED by commit 3f351a0 ("wal: an
# open continues writing in the last segment instead of starting a new one per start"): every
# start of a node opened a new 64 MiB WAL segment, and recovery reads every segment, so a node
# that restarted often took longer and longer to start even though its log held almost nothing.
#
# One single-node cluster on loopback (ports 27700/27800), in a temporary directory: start,
# write 10 keys, kill -9, repeat. Prints per start the number of segments recovered, the WAL
# size on disk and the time from exec to "corum node serving".
# Expected: a constant start time and a WAL that grows with the data (10 small keys per round).
# Seen on the 2-core dev VM (commit 33e3569 of engine/ and wal/), 8 rounds, 80 keys in all:
#   start 1: segments recovered 1, WAL on disk 65M, serving after 0.23 s
#   start 4: segments recovered 4, WAL on disk 257M, serving after 1.97 s
#   start 8: segments recovered 8, WAL on disk 513M, serving after 2.29 s
# In a 300 s chaos run with kill-all (seed 301) nodes reached 10 segments and 5.5-7 s starts,
# and writes stayed unavailable for up to 7.9 s after a whole-cluster restart.
# Since 3f351a0 every start continues in segment 1: 1 segment and 65M at every start, starts
# no longer growing (bench-results/2026-11-27-chaos-bugfixes.md has both runs side by side).
# The automated check is wal/tests/crash.rs reopen_cycles_keep_the_segment_count_bounded
# (10 open/append/crash cycles: at most 2 segments, bounded recovery reads).
#
# Usage: chaos/repro/wal-segment-per-restart.sh [rounds]   (needs target/release/corum;
#        CORUM=path/to/corum runs another build, e.g. an older commit for a same-run A/B)
set -euo pipefail
cd "$(dirname "$0")/../.."
corum=${CORUM:-target/release/corum}
rounds=${1:-6}
dir=$(mktemp -d /tmp/corum-wal-repro.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for round in $(seq 1 "$rounds"); do
  start=$(date +%s.%N)
  "$corum" serve --id 1 --data-dir "$dir/data" --client-addr 127.0.0.1:27700 \
    --peer-addr 127.0.0.1:27800 --peers 1=127.0.0.1:27800 --shards 1 --partitions 8 \
    --replicas 1 >>"$dir/log" 2>&1 &
  pid=$!
  # Poll (deadline 60 s) until the node says it serves.
  for _ in $(seq 1 600); do
    [ "$(grep -c 'corum node serving' "$dir/log" || true)" -ge "$round" ] && break
    sleep 0.1
  done
  serving=$(date +%s.%N)
  for k in $(seq 1 10); do
    "$corum" ctl --endpoints 127.0.0.1:27700 put "r$round-k$k" v >/dev/null
  done
  segments=$(grep 'WAL recovered' "$dir/log" | tail -1 | sed -n 's/.*segments=\([0-9]*\).*/\1/p')
  printf 'start %d: segments recovered %s, WAL on disk %s, serving after %.2f s\n' \
    "$round" "${segments:-0 (fresh)}" "$(du -sh "$dir/data/shard-0/wal" | cut -f1)" \
    "$(awk -v a="$serving" -v b="$start" 'BEGIN { print a - b }')"
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
