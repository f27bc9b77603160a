#!/usr/bin/env bash
# Run a command against the local control plane:
#
#   deploy/local/with-cluster.sh CMD [ARGS...]
#
# Brings the control plane up (once; reuses an already running one), exports
# KUBECONFIG (and KUBELISTEN_RUN_DIR, so tests can call `cluster.sh
# stop-apiserver` / `start-apiserver`), runs CMD, and brings the control plane
# down afterwards even if CMD fails or is interrupted. Exits with CMD's exit code.
#
# The control plane is left running if KUBELISTEN_KEEP_CLUSTER=1, or if it was
# already running before this script started (it is not ours to stop then).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER="$HERE/cluster.sh"

if (($# == 0)); then
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi

export KUBELISTEN_RUN_DIR="${KUBELISTEN_RUN_DIR:-$HOME/.cache/kubelisten/run}"

was_running=0
if "$CLUSTER" status >/dev/null 2>&1; then
  was_running=1
fi

# shellcheck disable=SC2317 # invoked via trap
teardown() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ "${KUBELISTEN_KEEP_CLUSTER:-0}" == 1 ]]; then
    echo "with-cluster.sh: leaving the control plane running (KUBELISTEN_KEEP_CLUSTER=1); export KUBECONFIG=$KUBELISTEN_RUN_DIR/kubeconfig" >&2
  elif ((was_running)); then
    echo "with-cluster.sh: leaving the control plane running (it was already up before this run)" >&2
  else
    "$CLUSTER" down || echo "with-cluster.sh: warning: '$CLUSTER down' failed" >&2
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$CLUSTER" up >&2
export KUBECONFIG="$KUBELISTEN_RUN_DIR/kubeconfig"
# Tests, demos and benchmarks use kubectl: the machine's, else one built once from the same
# Kubernetes module as the local kube-apiserver.
if ! command -v kubectl >/dev/null 2>&1; then
  "$HERE/build.sh" kubectl >&2
  export PATH="${KUBELISTEN_CONTROL_PLANE_CACHE:-$HOME/.cache/kubelisten}/path:$PATH"
fi

set +e
"$@"
rc=$?
set -e
exit "$rc"
