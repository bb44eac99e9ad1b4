#!/usr/bin/env bash
# Bug injection for the whole-node simulator: applies each engine/mutants/*.patch to a scratch
# copy of the tree, builds node-sim and runs the seeds named for it in engine/mutants/seeds.txt
# (NAME: seed seed ...), or the engine unit test named there (NAME: test PATH::TO::TEST) for a
# schedule the random simulator does not reach. Every mutant must be caught (node-sim or the
# test fails); a mutant that survives fails this script. Usage: scripts/mutants-engine.sh [--survey N]  (--survey: run seeds 0..N for
# every mutant and print the fraction that fail, for the table in engine/mutants/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
survey=""
if [[ "${1:-}" == "--survey" ]]; then survey="${2:?--survey N}"; fi
scratch=$(mktemp -d /tmp/corum-mutants.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
# One target dir for every mutant: dependencies are built once.
export CARGO_TARGET_DIR="${MUTANTS_TARGET_DIR:-$root/target/mutants}"
survived=0
for patch in ${MUTANTS:-engine/mutants/*.patch}; do
  name=$(basename "$patch" .patch)
  rm -rf "$scratch/tree"; mkdir -p "$scratch/tree"
  # -m: fresh mtimes, so cargo rebuilds every crate of the copy (with copied mtimes it could
  # take an artifact another mutant left in the shared target dir for fresh).
  git ls-files -z | tar --null -T - -cf - | tar -xmf - -C "$scratch/tree"
  (cd "$scratch/tree" && patch -s -p1 < "$root/$patch")
  (cd "$scratch/tree" && cargo build -q --release -p engine --bin node-sim)
  if [[ -n "$survey" ]]; then
    timeout 600 "$CARGO_TARGET_DIR/release/node-sim" --seeds "0..$survey" > "$scratch/out" 2>&1 || true
    first=$(grep -o '^seed [0-9]* failed' "$scratch/out" | awk '{print $2}' | sort -n | head -3 | tr '\n' ' ')
    echo "$name: $(tail -1 "$scratch/out"); first failing seeds: $first"
    continue
  fi
  seeds=$(grep "^$name:" engine/mutants/seeds.txt | cut -d: -f2-)
  if [[ -z "${seeds// }" ]]; then echo "mutant $name: no seeds in engine/mutants/seeds.txt"; exit 1; fi
  caught=""
  if [[ "$seeds" == " test "* ]]; then
    test_name=${seeds# test }
    if (cd "$scratch/tree" && timeout 600 cargo test -q --release -p engine --lib -- --exact "$test_name") > "$scratch/out" 2>&1; then
      echo "mutant $name SURVIVED test $test_name"
      survived=$((survived + 1))
    else
      echo "mutant $name caught: test $test_name failed: $(grep -m1 -A1 'panicked at' "$scratch/out" | tr '\n' ' ')"
    fi
    continue
  fi
  for seed in $seeds; do
    if ! timeout 300 "$CARGO_TARGET_DIR/release/node-sim" --seeds "$seed" > "$scratch/out" 2>&1; then
      caught="seed $seed: $(grep -m1 'failed at step' "$scratch/out" || tail -1 "$scratch/out")"
      break
    fi
  done
  if [[ -z "$caught" ]]; then
    echo "mutant $name SURVIVED seeds$seeds"
    survived=$((survived + 1))
  else
    echo "mutant $name caught: $caught"
  fi
done
if [[ $survived -gt 0 ]]; then echo "mutants-engine: $survived mutants survived"; exit 1; fi
echo "mutants-engine: every mutant caught"
