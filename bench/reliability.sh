#!/usr/bin/env bash
# Fault-injection reliability runs (issue 11): see bench/reliability.py for what is measured.
# Brings up its own control plane in its own run dir, prints the table and writes
# target/bench-reliability/<stamp>/. Exits non-zero when a check fails: objects lost, events
# duplicated or out of their object's sequence, accepted versions never delivered, a scenario
# errored, a host died, a bad module was not rejected, guest faults not contained as their
# classes with the expected retries, the soak's RSS slope above its bound or its host keeping
# objects that no longer exist.
#
#   bench/reliability.sh                 every scenario, 30 s stream each, 60 s soak
#   REL_SOAK=600 bench/reliability.sh    the documented 10-minute soak
#   REL_ONLY=leader-kill,leader-kill-configmap,soak bench/reliability.sh
#   make reliability-ci                  the short CI mode, against the debug binary:
#     BENCH_SKIP_BUILD=1 REL_KL=target/debug/kubelisten REL_DURATION=10 REL_SOAK=60 bench/reliability.sh
#
# Environment: REL_RATE [40] changes/s, REL_POOL [100] objects, REL_DURATION [30] s per scenario,
# REL_OUTAGE [3] s of outage, REL_SOAK [60] s, REL_SOAK_SLOPE_MAX [from the soak's length] MiB/min
# of RSS slope the soak may show, REL_UNSEEN_SLACK [1.0] s before a leader's kill that
# an unseen delete's DELETE may be answered (earlier: lost), REL_ONLY (scenarios: none, apiserver-restart,
# etcd-restart, leader-kill, leader-kill-configmap, bad-hot-swap, guest-faults-1-in-10,
# guest-crash-loop, soak),
# REL_KL [target/release/kubelisten] the binary, REL_GUESTS [target/guests] the directory with
# bench-listener.wasm and faulty.wasm, BENCH_SKIP_BUILD=1 (use built binaries and guests),
# KUBELISTEN_RUN_DIR [~/.cache/kubelisten/run-reliability].
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export KUBELISTEN_RUN_DIR="${KUBELISTEN_RUN_DIR:-$HOME/.cache/kubelisten/run-reliability}"
KL="$(realpath -m "${REL_KL:-target/release/kubelisten}")"
GUESTS="$(realpath -m "${REL_GUESTS:-target/guests}")"
OUT="$ROOT/target/bench-reliability/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$OUT"
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  cargo build --release -p kubelisten
  rustup target add wasm32-wasip2 >/dev/null
  (cd guests && CARGO_TARGET_DIR="$ROOT/target/guests-build" cargo build --release --target wasm32-wasip2 -p bench-listener -p faulty)
  mkdir -p target/guests
  for g in bench-listener faulty; do cp "target/guests-build/wasm32-wasip2/release/${g//-/_}.wasm" "target/guests/$g.wasm"; done
fi
[[ -x "$KL" ]] || { echo "reliability.sh: no kubelisten binary at $KL (cargo build -p kubelisten, or set REL_KL)" >&2; exit 2; }
for g in bench-listener faulty; do
  [[ -f "$GUESTS/$g.wasm" ]] || { echo "reliability.sh: $GUESTS/$g.wasm is missing: run \`make guests\` (or set REL_GUESTS)" >&2; exit 2; }
done
# The checks need the uid and ` initial` fields of bench-listener's BENCH line.
grep -q ' initial' "$GUESTS/bench-listener.wasm" && grep -q 'uid=' "$GUESTS/bench-listener.wasm" || {
  echo "reliability.sh: $GUESTS/bench-listener.wasm predates the uid and initial fields of its BENCH line: run \`make guests\`" >&2; exit 2; }
# The suite needs only the standard library and kubectl.
PY=python3
rc=0
deploy/local/with-cluster.sh bash -c '
  set -euo pipefail
  kubectl apply -f "$0/bench/crd.yaml" >&2
  kubectl wait --for=condition=Established --timeout=60s crd/benchitems.bench.kubelisten.dev >&2
  "$1" "$0/bench/reliability.py" --root "$0" --kl "$3" --guests "$4" \
    --crd "$0/bench/crd.yaml" --cache "$HOME/.cache/kubelisten/bench-compiled" --run-dir "$KUBELISTEN_RUN_DIR" \
    --logdir "$2/logs" --out "$2/results.json" --rate "${REL_RATE:-40}" --pool "${REL_POOL:-100}" \
    --duration "${REL_DURATION:-30}" --outage "${REL_OUTAGE:-3}" --soak "${REL_SOAK:-60}" --only "${REL_ONLY:-}" \
    --unseen-slack "${REL_UNSEEN_SLACK:-1.0}" ${REL_SOAK_SLOPE_MAX:+--soak-slope-max "$REL_SOAK_SLOPE_MAX"}
' "$ROOT" "$PY" "$OUT" "$KL" "$GUESTS" | tee "$OUT/report.md" || rc=$?
echo "reliability.sh: results in $OUT (exit $rc)" >&2
exit "$rc"
