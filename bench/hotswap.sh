#!/usr/bin/env bash
# Hot-swap latency benchmark (issue 7): ConfigMap update accepted by the API server -> first
# event processed by the new listener version. See bench/hotswap.py for the method.
#
#   bench/hotswap.sh [--swaps N] [--interval-ms MS] [--settle S] ...   (args go to hotswap.py)
#
# Needs target/release/kubelisten (cargo build --release -p kubelisten) and
# target/guests/versioned-v1.wasm, versioned-v2.wasm (make versioned-guests). Runs against its
# own local control plane (KUBELISTEN_RUN_DIR, default ~/.cache/kubelisten/run-swapbench), whose
# audit log gives the API server's acceptance time. Results: target/bench-hotswap/TIME/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KUBELISTEN_RUN_DIR="${KUBELISTEN_RUN_DIR:-$HOME/.cache/kubelisten/run-swapbench}"

for f in target/release/kubelisten target/guests/versioned-v1.wasm target/guests/versioned-v2.wasm; do
  if [[ ! -e "$ROOT/$f" ]]; then
    echo "hotswap.sh: $f is missing (cargo build --release -p kubelisten; make versioned-guests)" >&2
    exit 1
  fi
done
newest_src="$(cd "$ROOT" && git log -1 --format=%ct -- host/src 2>/dev/null || echo 0)"
if (( $(stat -c %Y "$ROOT/target/release/kubelisten") < newest_src )); then
  echo "hotswap.sh: warning: target/release/kubelisten is older than the last commit of host/src" >&2
fi

cd "$ROOT"
echo "hotswap.sh: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run" >&2
exec "$ROOT/deploy/local/with-cluster.sh" python3 "$ROOT/bench/hotswap.py" "$@"
