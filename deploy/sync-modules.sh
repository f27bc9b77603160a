#!/usr/bin/env bash
# Copy the listener modules the kustomizations package into their ConfigMaps from the build
# outputs (target/guests/NAME.wasm, made by `make guests`) into the kustomization directories:
#   deploy/modules/                  the modules of deploy/kustomization.yaml
#   deploy/overlays/example/modules/ the modules of the example overlay
# Kustomize only reads files inside a kustomization's own directory, hence the copies (they
# are gitignored). Run it again after rebuilding the guests; `kubectl apply -k` then updates
# the ConfigMap and kubelisten hot-swaps the listeners.
set -euo pipefail
DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GUESTS="${KUBELISTEN_GUESTS_DIR:-$DEPLOY/../target/guests}"

copy() { # dest-dir module...
  local dest="$1"; shift
  mkdir -p "$dest"
  for m in "$@"; do
    [[ -f "$GUESTS/$m.wasm" ]] || { echo "sync-modules.sh: $GUESTS/$m.wasm is missing: run \`make guests\` first" >&2; exit 1; }
    cp "$GUESTS/$m.wasm" "$dest/$m.wasm"
  done
}

copy "$DEPLOY/modules" superpod
copy "$DEPLOY/overlays/example/modules" rust-logger
echo "sync-modules.sh: modules copied from $GUESTS" >&2
