#!/usr/bin/env bash
# Short fuzz runs for CI: every fuzz target of wire, wal and engine for FUZZ_SECONDS (default
# 25) each, starting from its committed corpus and crash reproducers; fails on any crash, panic,
# failed round trip or hang. New inputs go to a scratch directory, never into the committed
# corpus. The long runs and their figures are in each crate's fuzz/README.md.
#
# One build configuration for every crate (-O -a -s none: optimised, debug assertions and
# overflow checks on, no sanitizer) and one target directory (target/fuzz), so the crates share
# their common dependencies and the run fits CI's time budget on 2 cores. The decoders are safe
# Rust, except the flatbuffers accessors in wire, which the long runs fuzz under AddressSanitizer.
#
# Cost, measured 2026-11-28 on the 2-core development machine (another developer's build at load
# 2-3): 495 s in all from an empty target/fuzz, 336 s of it building; cargo-fuzz's install, when
# missing, about 35 s more.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.1
FUZZ_SECONDS=${FUZZ_SECONDS:-25}
TARGETS="wire:decode wire:peer wal:recovery engine:snapshot engine:meta_map engine:command"

# cargo-fuzz into the user's cargo bin, pinned.
if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# cargo-fuzz passes nightly-only flags; this lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
target_dir="$PWD/target/fuzz"
flags=(-O -a -s none --target-dir "$target_dir")

start=$SECONDS
for crate in wire wal engine; do
  (cd "$crate/fuzz" && cargo fuzz build "${flags[@]}")
done
echo "fuzz-short: built every target in $((SECONDS - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for entry in $TARGETS; do
  crate=${entry%%:*}
  target=${entry#*:}
  inputs=("corpus/$target")
  if [ -d "$crate/fuzz/regressions/$target" ]; then
    inputs+=("regressions/$target")
  fi
  mkdir -p "$scratch/$target"
  echo "fuzz-short: $crate/$target for ${FUZZ_SECONDS} s"
  # The first directory receives new inputs; the others are only read.
  log="$scratch/$target.log"
  if ! (cd "$crate/fuzz" && cargo fuzz run "${flags[@]}" "$target" "$scratch/$target" "${inputs[@]}" -- \
      -max_total_time="$FUZZ_SECONDS" -max_len=65536 -timeout=30 -print_final_stats=1 >"$log" 2>&1); then
    tail -n 80 "$log"
    echo "fuzz-short: $crate/$target FAILED (the input that failed is named above, under $crate/fuzz/artifacts)"
    exit 1
  fi
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units)' "$log" || true
done
echo "fuzz-short: every target ran ${FUZZ_SECONDS} s without a crash ($((SECONDS - start)) s in all)"
