#!/usr/bin/env bash
# Installs Debian's etcd server and etcdctl (packages `etcd-server`, `etcd-client`) when the
# `etcd` binary is missing. Idempotent; needs root (CI and the development machines run as root).
# loadgen calls this itself before it starts a local etcd cluster.
set -euo pipefail
if command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null
# Debian's postinst may start an etcd service on the default ports; loadgen never uses it, but
# stop it when a service manager is running so it takes no CPU during benchmarks.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi
command -v etcd
