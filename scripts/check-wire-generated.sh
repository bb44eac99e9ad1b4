#!/usr/bin/env bash
# Fails when wire/src/generated/ is not what scripts/gen-wire.sh produces from wire/schema/.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
scripts/gen-wire.sh "$tmp/generated"
if ! diff -ru wire/src/generated "$tmp/generated"; then
  echo "wire/src/generated is stale: run scripts/gen-wire.sh and commit the result" >&2
  exit 1
fi
echo "wire/src/generated is up to date"
