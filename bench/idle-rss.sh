#!/usr/bin/env bash
# Idle RSS of the host with three Rust listeners (issue 11's "<= 30 MiB" goal), by how the
# modules got their compiled code:
#
#   bench/idle-rss.sh [STARTS]   (default 3 starts per case)
#
#   worker, --no-cache         every start compiles, in a `kubelisten compile-worker` child
#   in-process, --no-cache     every start compiles, in the host's own process
#   worker, cold cache         an empty cache directory: the first start compiles, later ones load
#
# Each start: `kubelisten run` with the bench CRD and the chain bench-listener (classname),
# rust-metrics (reference), noop (classname) on an empty namespace; VmRSS read 6 s after the
# start and once no compiler process of the host is left (its listeners are loaded), then the
# host is stopped.
# Needs target/release/kubelisten and `make guests`. Runs against its own local control plane
# (KUBELISTEN_RUN_DIR, default ~/.cache/kubelisten/run-bench).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export KUBELISTEN_RUN_DIR="${KUBELISTEN_RUN_DIR:-$HOME/.cache/kubelisten/run-bench}"
STARTS="${1:-3}"
BIN="$ROOT/target/release/kubelisten"

for f in target/release/kubelisten target/guests/bench-listener.wasm \
  target/guests/rust-metrics.wasm target/guests/noop.wasm; do
  if [[ ! -e "$ROOT/$f" ]]; then
    echo "idle-rss.sh: $f is missing (cargo build --release -p kubelisten; make guests)" >&2
    exit 1
  fi
done

if [[ "${1:-}" != "--inside" ]]; then
  if ! [[ "$STARTS" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: bench/idle-rss.sh [STARTS]  (a positive number, default 3)" >&2
    exit 2
  fi
  exec "$ROOT/deploy/local/with-cluster.sh" "$0" --inside "$STARTS"
fi
STARTS="$2"
cd "$ROOT"
kubectl apply -f bench/crd.yaml >/dev/null
kubectl wait --for=condition=Established crd/benchitems.bench.kubelisten.dev --timeout=60s >/dev/null
NS="idle-rss-$$"
kubectl create namespace "$NS" >/dev/null
CACHE="$(mktemp -d)"
HOST_PID=""
cleanup() {
  if [[ -n "$HOST_PID" ]]; then
    kill "$HOST_PID" 2>/dev/null || true
  fi
  rm -rf "$CACHE"
  kubectl delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Sets RSS to the host's VmRSS in MiB, idle, after a start with the given extra flags: 6 s
# after the start and once no compiler process of it is left (its listeners are loaded).
idle_rss() {
  KUBELISTEN_STATUS_BIND=off "$BIN" "$@" run --crd bench/crd.yaml \
    -l target/guests/bench-listener.wasm:classname \
    -l target/guests/rust-metrics.wasm:reference \
    -l target/guests/noop.wasm:classname \
    -n "$NS" --health-port 0 >/dev/null 2>&1 &
  HOST_PID=$!
  sleep 6
  local waited=0
  while pgrep -P "$HOST_PID" >/dev/null && ((waited < 120)); do
    sleep 1
    waited=$((waited + 1))
  done
  RSS="$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$HOST_PID/status" 2>/dev/null || true)"
  if [[ -z "$RSS" ]]; then
    echo "idle-rss.sh: the host exited early (flags: $*)" >&2
    return 1
  fi
  kill "$HOST_PID"
  wait "$HOST_PID" 2>/dev/null || true
  HOST_PID=""
}

echo "| case | idle RSS per start (MiB) |"
echo "|---|---|"
for case in "worker, --no-cache" "in-process, --no-cache" "worker, cold cache"; do
  case "$case" in
    "worker, --no-cache") flags=(--no-cache) ;;
    "in-process, --no-cache") flags=(--no-cache --compile-in-process) ;;
    "worker, cold cache") flags=(--cache-dir "$CACHE") ;;
  esac
  values=()
  for _ in $(seq "$STARTS"); do
    idle_rss "${flags[@]}"
    values+=("$RSS")
  done
  echo "| $case | ${values[*]} |"
done
echo "idle-rss.sh: $(nproc) CPUs, $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC')" >&2
