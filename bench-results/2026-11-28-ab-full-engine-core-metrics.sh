#!/bin/bash
# Same-run A/B/C: corum before the shard-core split (33e3569, "old"), main after the split and
# the peer/WAL fixes without metrics (4ed7b63, "core"), main with metrics (8535811, "head").
# Full-length windows (30 s + 5 s warm-up), write and mixed cases, rotating old/core/head.
set -u
cd /work/main
for i in 1 2 3; do
  for v in old core head; do
    case $v in old) bin=/tmp/corum-old;; core) bin=/tmp/corum-4ed7b63;; head) bin=/tmp/corum-8535811;; esac
    echo "$(date -u +%H:%M:%S) run $i $v" >> /work/ab/progress.log
    target/release/loadgen suite --system corum --corum-bin $bin --cases write,mixed \
      --name ab-full-$v-$i --quiet \
      --note "same-run A/B/C, full-length windows; $v = $bin" > /work/ab/$v-$i.out 2>&1
  done
done
echo "$(date -u +%H:%M:%S) done" >> /work/ab/progress.log
