#!/usr/bin/env bash
# The demo (make demo): kubelisten against the local control plane (real kube-apiserver + etcd).
# It registers the SuperPod CRD, then creates, updates and deletes SuperPods, some of which ask
# the `faulty` listener to panic, loop forever or blow up its memory. The superpod listener
# creates a Pod for each SuperPod through its capability grants; kubelisten contains every
# fault and keeps serving. Ends with /metrics, /status and a graceful stop.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${KUBELISTEN_BIN:-target/release/kubelisten}
export KUBELISTEN_RUN_DIR=${KUBELISTEN_RUN_DIR:-$HOME/.cache/kubelisten/run-demo}

if [[ "${1:-}" != --inside ]]; then
  exec deploy/local/with-cluster.sh "$0" --inside
fi

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
kubectl() { command kubectl --kubeconfig "$KUBECONFIG" "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
status_port=$(free_port)
log=$(mktemp)

kubectl create namespace demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n demo create serviceaccount default --dry-run=client -o yaml | kubectl apply -f - >/dev/null

say "starting kubelisten (log: $log)"
RUST_LOG=${RUST_LOG:-info,cranelift=warn,wasmtime=warn} NO_COLOR=1 "$bin" run \
  --config deploy/demo/kubelisten.yaml --health-port "$port" --health-bind 127.0.0.1 \
  --status-bind "127.0.0.1:$status_port" \
  --retry-attempts 2 --retry-base-ms 100 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
# until CONDITION (a command) holds: polls it every 0.2 s for up to 120 s; on a timeout or if
# kubelisten exits meanwhile, shows the log and fails.
until_() {
  for _ in $(seq 1 600); do
    "$@" && return 0
    kill -0 $pid 2>/dev/null || { cat "$log"; echo "kubelisten exited" >&2; exit 1; }
    sleep 0.2
  done
  cat "$log"; echo "timed out waiting for: $*" >&2; exit 1
}
until_ curl -fsS "http://127.0.0.1:$port/readyz" -o /dev/null 2>/dev/null
curl -sS "http://127.0.0.1:$port/readyz"

superpod() { # name [fault]
  local fault=${2:+"  annotations: {kubelisten.dev/fault: $2}"}
  kubectl apply -f - >/dev/null <<YAML
apiVersion: kubelisten.dev/v1
kind: SuperPod
metadata:
  name: $1
  namespace: demo
$fault
spec: {image: registry.k8s.io/pause:3.10, replicas: 1, message: hello from $1}
YAML
}

say "creating SuperPods: web, api, and three that make the faulty listener misbehave"
superpod web
superpod panicky panic
superpod looper loop
superpod hog memory
superpod api
# Each SuperPod gets its Pod, and each of the three faults is contained (its trap logged).
pods() { [[ $(kubectl -n demo get pods -o name 2>/dev/null | wc -l) -ge $1 ]]; }
trapped() { grep -q "listener trapped.*trap=\"$1\"" "$log"; }
until_ pods 5
for fault in panic deadline memory; do until_ trapped "$fault"; done

say "Pods created by the superpod listener (owner: the SuperPod)"
kubectl -n demo get pods -o custom-columns=NAME:.metadata.name,OWNER:.metadata.ownerReferences[0].name
say "SuperPod status written through the status subresource"
kubectl -n demo get superpods -o custom-columns=NAME:.metadata.name,POD:.status.pod,PHASE:.status.phase

say "update web, delete api"
kubectl -n demo patch superpod web --type merge -p '{"spec":{"replicas":3}}' >/dev/null
kubectl -n demo delete superpod api >/dev/null
# The api Pod goes with its SuperPod (the superpod listener deletes it).
api_pod_gone() { [[ -z $(kubectl -n demo get pods -o name 2>/dev/null | grep '/api') ]]; }
until_ api_pod_gone
kubectl -n demo get pods -o name

say "what the listeners said (guest log lines, tagged by the host)"
{ grep -E 'kubelisten::guest' "$log" || true; } | sed -E 's/^[^ ]+ +//' | cut -c1-180 | tail -n 20
say "contained faults (each followed by normal service)"
{ grep -E 'listener trapped|crash loop' "$log" || true; } | sed -E 's/^[^ ]+ +//' | cut -c1-180 | tail -n 10
say "Warning Events recorded on the failing objects"
kubectl -n demo get events.events.k8s.io -o custom-columns=OBJECT:.regarding.name,TYPE:.type,REASON:.reason --field-selector type=Warning 2>/dev/null | head -n 10 || true

say "/metrics (listener calls and traps)"
curl -sS "http://127.0.0.1:$port/metrics" | { grep -E '^kubelisten_(listener_calls|listener_traps|events)_total' || true; } | head -n 20 || true
say "/status (objects and their computed status; a loopback listener of its own, --status-bind)"
curl -sS "http://127.0.0.1:$status_port/status" | python3 -c 'import json,sys; s=json.load(sys.stdin); [print(k, v["status"], v["message"]) for w in s["watches"] for k,v in w["objects"].items()]' || true

say "graceful stop (SIGTERM)"
kill -TERM $pid
trap - EXIT
if wait $pid; then
  echo "kubelisten exited 0"
else
  code=$?
  cat "$log"
  echo "kubelisten exited $code" >&2
  exit 1
fi
