#!/usr/bin/env bash
# Mutation check of the raftcore simulator: every patch in raftcore/mutants/ puts one known
# bug class back into raftcore; the simulator must fail on it.
#
#   scripts/mutants/run.sh                 CI mode: for each mutant, run its named seeds from
#                                          raftcore/mutants/seeds.txt; the mutant is caught if
#                                          any of them fails. If none does (seeds move whenever
#                                          raftcore or the simulator changes behaviour), scan
#                                          seeds 0..FALLBACK (default 300) and print the seeds
#                                          that fail, to update seeds.txt. Exit 1 if any mutant
#                                          survives.
#   scripts/mutants/run.sh --seeds N       measure: run seeds 0..N on each mutant, print the
#                                          fraction that fails (markdown rows) and the first
#                                          failing seeds.
# Environment: MUTANTS_DIR (default raftcore/mutants; raftcore/mutants/not-caught holds a
# mutant no schedule can catch, see its README), MUTANTS_TARGET_DIR, MUTANTS_TREE_DIR,
# MUTANTS_SEED_TIMEOUT (seconds per seed, default 120).
# Options: --only a,b (mutant names), --jobs J (parallel seed runs, default 2), --fallback K,
#          --sim-rev REV (use raftcore/src/sim.rs and src/bin/sim.rs from git revision REV:
#          how the "before" column of raftcore/mutants/README.md was measured).
#
# Each mutant is built in one scratch copy of the tree (raftcore + a one-member workspace) at a
# fixed path, sharing one CARGO_TARGET_DIR, so only raftcore is recompiled per mutant. Every
# seed runs as its own process, so a panic inside raftcore (an assertion) counts as a caught
# seed even with a simulator that does not catch panics itself.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
seeds_n=""
only=""
jobs=2
fallback=300
sim_rev=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) seeds_n=$2; shift ;;
        --only) only=$2; shift ;;
        --jobs) jobs=$2; shift ;;
        --fallback) fallback=$2; shift ;;
        --sim-rev) sim_rev=$2; shift ;;
        *) echo "usage: $0 [--seeds N] [--only a,b] [--jobs J] [--fallback K] [--sim-rev REV]" >&2; exit 2 ;;
    esac
    shift
done

export CARGO_TARGET_DIR=${MUTANTS_TARGET_DIR:-$repo/target/mutants}
tree=${MUTANTS_TREE_DIR:-$repo/target/mutants-tree}
mutants_dir=$(cd "${MUTANTS_DIR:-$repo/raftcore/mutants}" && pwd)
seeds_file=$repo/raftcore/mutants/seeds.txt
per_seed_timeout=${MUTANTS_SEED_TIMEOUT:-120}

prepare_tree() { # $1 = patch file or empty
    rm -rf "$tree"
    mkdir -p "$tree"
    cp -r "$repo/raftcore" "$tree/raftcore"
    rm -rf "$tree/raftcore/mutants"
    cp "$repo/Cargo.lock" "$tree/Cargo.lock"
    sed 's/^members = .*/members = ["raftcore"]/' "$repo/Cargo.toml" > "$tree/Cargo.toml"
    if [ -n "$sim_rev" ]; then
        git -C "$repo" show "$sim_rev:raftcore/src/sim.rs" > "$tree/raftcore/src/sim.rs"
        git -C "$repo" show "$sim_rev:raftcore/src/bin/sim.rs" > "$tree/raftcore/src/bin/sim.rs"
    fi
    if [ -n "$1" ]; then
        (cd "$tree" && patch -s -p1 < "$1")
    fi
}

build() {
    (cd "$tree" && cargo build --release -q -p raftcore --bin sim)
}

# Runs the seeds given on stdin (one per line); prints "seed rc what" lines, where `what` is
# the kind of check that failed (the text before the first ':' of the FAIL line; "panic" for a
# process that died without one, as the simulator before catch_unwind did).
run_seeds() {
    local bin=$CARGO_TARGET_DIR/release/sim
    xargs -P "$jobs" -I{} sh -c "
        out=\$(timeout $per_seed_timeout '$bin' --seeds {}..\$(({} + 1)) 2>/dev/null); rc=\$?
        what=\$(printf '%s\n' \"\$out\" | sed -n 's/^FAIL seed [0-9]* failed at tick [0-9]*: \([^:]*\).*/\1/p' | head -1)
        [ \$rc -ne 0 ] && [ -z \"\$what\" ] && what=panic
        [ \$rc -eq 124 ] && what=timeout
        echo \"{} \$rc \$what\""
}

named_seeds() { # $1 = mutant name
    sed -n "s/^$1:[[:space:]]*//p" "$seeds_file" | tr -s ' ,' '\n' | grep -E '^[0-9]+$' || true
}

mutants=()
for p in "$mutants_dir"/*.patch; do
    name=$(basename "$p" .patch)
    if [ -n "$only" ] && ! printf ',%s,' "$only" | grep -q ",$name,"; then
        continue
    fi
    mutants+=("$name")
done

start=$(date +%s)
survivors=0
if [ -n "$seeds_n" ]; then
    echo "| mutant | failing seeds of 0..$seeds_n | fraction | first failing seeds | caught by (seeds) |"
    echo "|---|---|---|---|---|"
fi
for name in "${mutants[@]}"; do
    prepare_tree "$mutants_dir/$name.patch"
    build
    if [ -n "$seeds_n" ]; then
        res=$(seq 0 $((seeds_n - 1)) | run_seeds | sort -n)
        failed=$(awk '$2 != 0' <<< "$res" | wc -l)
        first=$(awk '$2 != 0 {print $1}' <<< "$res" | head -8 | tr '\n' ' ')
        frac=$(awk -v f="$failed" -v n="$seeds_n" 'BEGIN { printf "%.2f%%", 100 * f / n }')
        kinds=$(awk '$2 != 0 { $1 = ""; $2 = ""; sub(/^  /, ""); print }' <<< "$res" | sort | uniq -c |
            sort -rn | awk '{ n = $1; $1 = ""; sub(/^ /, ""); printf "%s%s (%d)", sep, $0, n; sep = "; " }')
        echo "| $name | $failed | $frac | $first| $kinds |"
        continue
    fi
    named=$(named_seeds "$name")
    if [ -z "$named" ]; then
        echo "mutant $name: no named seeds in $seeds_file" >&2
    fi
    res=$(printf '%s\n' $named | grep . | run_seeds | sort -n || true)
    caught=$(awk '$2 != 0 {print $1}' <<< "$res" | tr '\n' ' ')
    passed=$(awk '$2 == 0 {print $1}' <<< "$res" | tr '\n' ' ')
    if [ -n "$caught" ]; then
        echo "mutant $name: caught by named seeds: $caught"
        if [ -n "$passed" ]; then
            echo "  (named seeds that no longer fail, update seeds.txt: $passed)"
        fi
        continue
    fi
    echo "mutant $name: no named seed fails; scanning 0..$fallback"
    res=$(seq 0 $((fallback - 1)) | run_seeds | sort -n)
    caught=$(awk '$2 != 0 {print $1}' <<< "$res" | head -10 | tr '\n' ' ')
    if [ -n "$caught" ]; then
        echo "mutant $name: caught by seeds $caught(update $name: in seeds.txt)"
    else
        echo "mutant $name: SURVIVED (no failing seed in the named list or in 0..$fallback)"
        survivors=$((survivors + 1))
    fi
done
if [ -n "$seeds_n" ]; then
    echo "measured ${#mutants[@]} mutants over seeds 0..$seeds_n in $(( $(date +%s) - start )) s"
    exit 0
fi
echo "mutants: ${#mutants[@]} run, $survivors survived, $(( $(date +%s) - start )) s"
[ "$survivors" -eq 0 ]
