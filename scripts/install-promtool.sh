#!/usr/bin/env bash
# Makes `promtool` (Prometheus's checker for metrics scrapes and rule files) available and
# prints its path as the last line. Idempotent.
#
# 1. `promtool` on PATH: used as it is.
# 2. Else DIR/usr/bin/promtool (DIR: $PROMTOOL_DIR, default <repo>/target/tools/prometheus)
#    from an earlier run.
# 3. Else Debian's `prometheus` package (bookworm: 2.42.0, which ships promtool) is downloaded
#    with `apt-get download` and only unpacked into DIR (`dpkg-deb -x`): no Prometheus service is
#    installed or started, and none of the package's web-UI dependencies. promtool is a Go binary
#    that needs only libc. Runs `apt-get update` first when the package lists do not know the
#    package (needs root, as the CI and development machines run).
# .ci/run runs this before the tests; the engine's metrics test (engine/tests/metrics.rs) only
# looks for promtool (PATH, then DIR) and skips its promtool checks, loudly, when it is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${PROMTOOL_DIR:-$ROOT/target/tools/prometheus}"
if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi
if [ -x "$DIR/usr/bin/promtool" ]; then
  echo "$DIR/usr/bin/promtool"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
# apt-get download writes into the current directory; as root it warns that the _apt user cannot
# write there, which is harmless.
(cd "$TMP" && apt-get download -q prometheus) >&2
DEB="$(ls "$TMP"/prometheus_*.deb)"
dpkg-deb -x "$DEB" "$TMP/unpacked"
# Keep only what is needed. Copied beside the target, then renamed into place, so two runs at
# once each install a whole binary.
mkdir -p "$DIR/usr/bin"
cp "$TMP/unpacked/usr/bin/promtool" "$DIR/usr/bin/promtool.$$"
mv -f "$DIR/usr/bin/promtool.$$" "$DIR/usr/bin/promtool"
"$DIR/usr/bin/promtool" --version >&2
echo "$DIR/usr/bin/promtool"
