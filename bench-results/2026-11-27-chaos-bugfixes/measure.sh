#!/usr/bin/env bash
# Same-run A/B of the two chaos findings: base ef39652 vs the fixes (24a31e0, which includes 30cad2c).
# base: git archive ef39652 into target/base-src, built with CARGO_TARGET_DIR=target/base-target.
set -u
cd /work/wt-netfix
out=bench-results/2026-11-27-chaos-bugfixes
base=$PWD/target/base-target/release/corum
fixed=$PWD/target/release/corum
stall=$(ls -t target/release/deps/peer_stall-* | grep -v '\.d$' | head -1)
{ date -u; uname -r; nproc; lscpu | grep 'Model name'; free -g | head -2; uptime; } > $out/machine.txt
for round in 1 2; do
  for which in base fixed; do
    bin=$base; [ $which = fixed ] && bin=$fixed
    echo "== $which round $round $(uptime)" >> $out/wal-restarts-$which.txt
    CORUM=$bin chaos/repro/wal-segment-per-restart.sh 8 >> $out/wal-restarts-$which.txt 2>&1
  done
done
for round in 1 2 3; do
  for which in base fixed; do
    bin=$base; [ $which = fixed ] && bin=$fixed
    echo "== $which round $round $(uptime)" >> $out/peer-stall-$which.txt
    CORUM_BIN=$bin $stall --ignored --nocapture > /tmp/peer-stall-$which-$round.txt 2>&1
    grep -E "first acknowledged|test result|panicked at|writes resumed" /tmp/peer-stall-$which-$round.txt >> $out/peer-stall-$which.txt
  done
done
# One full socket dump per build, right after the heal, as evidence.
cp /tmp/peer-stall-base-1.txt $out/peer-stall-base-run1-full.txt
cp /tmp/peer-stall-fixed-1.txt $out/peer-stall-fixed-run1-full.txt
echo done
