#!/bin/bash
# 100k-seed soak of one node-sim binary in 5000-seed chunks, one log line per chunk; chunks
# already logged as passed are skipped, so a later session can resume it.
# usage: run.sh BIN LOG
cd /work/soak
BIN=$1; LOG=$2
for start in $(seq 0 5000 95000); do
  end=$((start+5000))
  grep -q " $start..$end .*5000 seeds passed" "$LOG" 2>/dev/null && continue
  s=$(date +%s)
  out=$(nice -n 19 "$BIN" --seeds $start..$end 2>&1 | tail -3 | tr '\n' ' ')
  echo "$(date -u +%H:%M:%S) $start..$end $(( $(date +%s)-s ))s $out" >> "$LOG"
done
echo DONE >> "$LOG"
