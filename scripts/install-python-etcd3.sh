#!/usr/bin/env bash
# Makes python-etcd3 0.12 (PyPI `etcd3`, the Python etcd v3 client) available in a virtualenv
# and prints the venv's python as the last line. Idempotent.
#
# The venv is DIR (default <repo>/target/tools/python-etcd3, $PYTHON_ETCD3_VENV overrides),
# made with `python3 -m venv` ($PYTHON, default python3 on PATH), and the packages are pinned:
# - etcd3 0.12.0: the last release; its generated *_pb2.py files need protobuf's pure-Python
#   runtime from before 4.21 (with protobuf >= 4.21 `import etcd3` fails with "Descriptors
#   cannot be created directly"), so protobuf is pinned to 3.20.3;
# - grpcio 1.62.3 (wheels for CPython 3.8-3.12), tenacity and six as etcd3 needs them.
# A venv that already imports etcd3 at these versions is left as it is.
# .ci/run runs this before the tests; gateway/tests/etcd_clients.rs only looks for the venv and
# skips its python-etcd3 part, loudly, when it is missing (cargo test never installs anything).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${PYTHON_ETCD3_VENV:-$ROOT/target/tools/python-etcd3}"
PYTHON="${PYTHON:-python3}"
PINS=(etcd3==0.12.0 protobuf==3.20.3 grpcio==1.62.3 tenacity==8.2.3 six==1.16.0)
check() {
  "$DIR/bin/python" - <<'PY' >/dev/null 2>&1
import importlib.metadata as m, etcd3  # noqa: F401
assert m.version("etcd3") == "0.12.0" and m.version("protobuf") == "3.20.3", "wrong versions"
PY
}
if [ -x "$DIR/bin/python" ] && check; then
  echo "$DIR/bin/python"
  exit 0
fi
# An interrupted install leaves a venv that fails the check above, so the next run starts over.
rm -rf "$DIR"
mkdir -p "$(dirname "$DIR")"
"$PYTHON" -m venv "$DIR" >&2
"$DIR/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${PINS[@]}" >&2
check || { echo "python-etcd3 does not import in $DIR" >&2; exit 1; }
"$DIR/bin/python" -c 'import etcd3, google.protobuf, grpc; print("etcd3", etcd3.__version__, "protobuf", google.protobuf.__version__, "grpcio", grpc.__version__)' >&2
echo "$DIR/bin/python"
