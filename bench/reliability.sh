#!/usr/bin/env bash
# Fault-injection reliability runs (issue 11, partial): see bench/reliability.py for what is
# measured. Brings up its own control plane in its own run dir, prints the table and writes
# target/bench-reliability/<stamp>/.
#
#   bench/reliability.sh                 every scenario, 30 s stream each, 60 s soak
#   REL_SOAK=600 bench/reliability.sh    the documented 10-minute soak
#   REL_ONLY=apiserver-restart,soak bench/reliability.sh
#
# Environment: REL_RATE [40] changes/s, REL_POOL [100] objects, REL_DURATION [30] s per scenario,
# REL_OUTAGE [3] s of outage, REL_SOAK [60] s, REL_ONLY, BENCH_SKIP_BUILD=1 (use built binaries),
# KUBELISTEN_RUN_DIR [~/.cache/kubelisten/run-reliability].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export KUBELISTEN_RUN_DIR="${KUBELISTEN_RUN_DIR:-$HOME/.cache/kubelisten/run-reliability}"
VENV="${KUBELISTEN_BENCH_VENV:-$HOME/.cache/kubelisten/bench-venv}"
OUT="$ROOT/target/bench-reliability/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -p kubelisten
  rustup target add wasm32-wasip2 >/dev/null
  (cd guests && CARGO_TARGET_DIR="$ROOT/target/guests-build" cargo build --release --target wasm32-wasip2 -p bench-listener -p faulty)
  mkdir -p target/guests
  for g in bench-listener faulty; do cp "target/guests-build/wasm32-wasip2/release/${g//-/_}.wasm" "target/guests/$g.wasm"; done
fi
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r bench/kopf/requirements.txt
fi
deploy/local/with-cluster.sh bash -c '
  set -euo pipefail
  kubectl apply -f "$0/bench/crd.yaml" >&2
  kubectl wait --for=condition=Established --timeout=60s crd/benchitems.bench.kubelisten.dev >&2
  "$1/bin/python" "$0/bench/reliability.py" --root "$0" --kl "$0/target/release/kubelisten" --guests "$0/target/guests" \
    --crd "$0/bench/crd.yaml" --cache "$HOME/.cache/kubelisten/bench-compiled" --run-dir "$KUBELISTEN_RUN_DIR" \
    --logdir "$2/logs" --out "$2/results.json" --rate "${REL_RATE:-40}" --pool "${REL_POOL:-100}" \
    --duration "${REL_DURATION:-30}" --outage "${REL_OUTAGE:-3}" --soak "${REL_SOAK:-60}" --only "${REL_ONLY:-}"
' "$ROOT" "$VENV" "$OUT" | tee "$OUT/report.md"
echo "reliability.sh: results in $OUT" >&2
