#!/usr/bin/env bash
# End-to-end benchmark (issues 4 and 11): kubelisten against a native kube-runtime listener and
# kopf, on one local control plane. Prints the tables and writes target/bench-e2e/<stamp>/ (or $BENCH_OUT;
# recorded runs are copied to bench/results/).
#
#   bench/e2e.sh                      full run (builds what it needs, brings up its own cluster)
#   BENCH_ONLY=native,kopf bench/e2e.sh   run only some contenders
#
# Environment (defaults in brackets):
#   BENCH_REPEAT [3]           rounds of the latency/throughput and idle tests (contenders interleaved)
#   BENCH_N [300]              objects created, updated and deleted in the latency scenario
#   BENCH_RATE [50]            operations per second in the latency scenario
#   BENCH_RAMP [100,200,300,400,600,800]  create rates of the throughput ramp
#   BENCH_RAMP_SECS [4]        seconds per ramp step
#   BENCH_SCALE [1000,10000]   existing-object counts of the scale test ('' skips it)
#   BENCH_ONLY                 comma-separated contender names
#   BENCH_SKIP_BUILD=1         use the binaries already built
#   BENCH_KL_BASELINE          another kubelisten binary (say, a build of the previous commit): adds
#                              the contenders baseline-classname and baseline-reference, run
#                              interleaved with the others, for an A/B of a host change
#   KUBELISTEN_RUN_DIR [~/.cache/kubelisten/run-bench]  control-plane run dir (not the default one)
#   KUBELISTEN_BENCH_VENV [~/.cache/kubelisten/bench-venv]  virtualenv with kopf + PyYAML
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export KUBELISTEN_RUN_DIR="${KUBELISTEN_RUN_DIR:-$HOME/.cache/kubelisten/run-bench}"
VENV="${KUBELISTEN_BENCH_VENV:-$HOME/.cache/kubelisten/bench-venv}"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="${BENCH_OUT:-$ROOT/target/bench-e2e/$STAMP}"
mkdir -p "$OUT"

log() { echo "e2e.sh: $*" >&2; }

# --- build ---------------------------------------------------------------------------------------
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building kubelisten (release)"
  cargo build --release -p kubelisten
  log "building the bench-listener guest"
  rustup target add wasm32-wasip2 >/dev/null
  (cd guests && CARGO_TARGET_DIR="$ROOT/target/guests-build" cargo build --release --target wasm32-wasip2 -p bench-listener -p noop -p rust-metrics)
  mkdir -p target/guests
  for g in bench-listener noop rust-metrics; do
    cp "target/guests-build/wasm32-wasip2/release/${g//-/_}.wasm" "target/guests/$g.wasm"
  done
  log "building the native baseline"
  (cd bench/native-listener && CARGO_TARGET_DIR="$ROOT/target/bench-native" cargo build --release)
fi
if [[ ! -x "$VENV/bin/kopf" ]] || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
  log "installing kopf into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r bench/kopf/requirements.txt
fi

KL="$ROOT/target/release/kubelisten"
NATIVE="$ROOT/target/bench-native/release/native-listener"
G="$ROOT/target/guests"
for f in "$KL" "$NATIVE" "$G/bench-listener.wasm" "$G/noop.wasm" "$G/rust-metrics.wasm"; do
  [[ -e "$f" ]] || { log "missing $f (run without BENCH_SKIP_BUILD=1)"; exit 1; }
done

# --- contenders: each prints `BENCH <kind> <ns>/<name> <rv> <unix-ns>` per event ------------------
CACHE="$HOME/.cache/kubelisten/bench-compiled"
# kubelisten's health/metrics server: loopback and a free port, so a benchmark run never collides
# with another kubelisten on the default port 8080 (the contenders run one at a time); no /status
# listener (its default port 8081 may be taken too).
HEALTH_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
KLENV="\"RUST_LOG\": \"info\", \"KUBELISTEN_HEALTH_BIND\": \"127.0.0.1\", \"KUBELISTEN_HEALTH_PORT\": \"$HEALTH_PORT\", \"KUBELISTEN_STATUS_BIND\": \"off\""
BASELINE=""
if [[ -n "${BENCH_KL_BASELINE:-}" ]]; then
  [[ -x "$BENCH_KL_BASELINE" ]] || { log "BENCH_KL_BASELINE=$BENCH_KL_BASELINE is not an executable"; exit 1; }
  for mode in classname reference; do
    BASELINE+=" {\"name\": \"baseline-$mode\", \"env\": {$KLENV},
  \"cmd\": [\"$BENCH_KL_BASELINE\", \"run\", \"--log-format\", \"json\", \"--cache-dir\", \"$CACHE\", \"--crd\", \"$ROOT/bench/crd.yaml\",
          \"-l\", \"$G/bench-listener.wasm:$mode\", \"-n\", \"{NS}\"]},
"
  done
fi
cat >"$OUT/contenders.json" <<EOF
[
$BASELINE {"name": "kubelisten-classname", "env": {$KLENV},
  "cmd": ["$KL", "run", "--log-format", "json", "--cache-dir", "$CACHE", "--crd", "$ROOT/bench/crd.yaml",
          "-l", "$G/bench-listener.wasm:classname", "-n", "{NS}"]},
 {"name": "kubelisten-reference", "env": {$KLENV},
  "cmd": ["$KL", "run", "--log-format", "json", "--cache-dir", "$CACHE", "--crd", "$ROOT/bench/crd.yaml",
          "-l", "$G/bench-listener.wasm:reference", "-n", "{NS}"]},
 {"name": "native", "env": {},
  "cmd": ["$NATIVE", "bench.kubelisten.dev", "v1", "BenchItem", "benchitems", "{NS}"]},
 {"name": "kopf", "env": {"BENCH_KOPF_MODE": "event"},
  "cmd": ["$VENV/bin/kopf", "run", "--standalone", "--namespace", "{NS}", "$ROOT/bench/kopf/handlers.py"]},
 {"name": "kopf-handlers", "env": {"BENCH_KOPF_MODE": "handlers"}, "scale": false,
  "cmd": ["$VENV/bin/kopf", "run", "--standalone", "--namespace", "{NS}", "$ROOT/bench/kopf/handlers.py"]},
 {"name": "kubelisten-3-listeners", "env": {$KLENV},
  "cmd": ["$KL", "run", "--log-format", "json", "--cache-dir", "$CACHE", "--crd", "$ROOT/bench/crd.yaml",
          "-l", "$G/bench-listener.wasm:classname", "-l", "$G/rust-metrics.wasm:reference",
          "-l", "$G/noop.wasm:classname", "-n", "{NS}"]}
]
EOF

# --- run -----------------------------------------------------------------------------------------
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' (dirty tree)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
  echo "memory: $(free -g | awk '/^Mem:/{print $2}') GiB"
  echo "kernel: $(uname -r)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "kopf: $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("kopf"))')"
  echo "python: $("$VENV/bin/python" --version 2>&1)"
} | tee "$OUT/machine.txt" >&2

# The e2e contenders run one at a time on the same API server; the idle-RSS contender
# (kubelisten with three Rust listeners) only in the idle test.
deploy/local/with-cluster.sh bash -c '
  set -euo pipefail
  kubectl apply -f "$0/bench/crd.yaml" >&2
  kubectl wait --for=condition=Established --timeout=60s crd/benchitems.bench.kubelisten.dev >&2
  "$1/bin/python" "$0/bench/driver.py" --contenders "$2/contenders.json" --logdir "$2/logs" --out "$2/results.json" \
    --only "${BENCH_ONLY:-}" --repeat "${BENCH_REPEAT:-3}" --n "${BENCH_N:-300}" --rate "${BENCH_RATE:-50}" \
    --ramp "${BENCH_RAMP:-100,200,300,400,600,800}" --ramp-secs "${BENCH_RAMP_SECS:-4}" \
    --scale "${BENCH_SCALE-1000,10000}" --idle kubelisten-3-listeners \
    --audit-log "$KUBELISTEN_RUN_DIR/logs/audit.log"
' "$ROOT" "$VENV" "$OUT"

echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt" >&2
"$VENV/bin/python" bench/report.py "$OUT/results.json" | tee "$OUT/report.md"
log "results in $OUT (report.md, results.json, logs/)"
