#!/usr/bin/env bash
# Build (once) the etcd and kube-apiserver binaries used by the local control
# plane, from the small Go modules next to this script, and cache them outside
# the repo keyed by version (and kubectl, for machines without one):
#
#   ${KUBELISTEN_CONTROL_PLANE_CACHE:-~/.cache/kubelisten}/bin/etcd-<version>
#   ${KUBELISTEN_CONTROL_PLANE_CACHE:-~/.cache/kubelisten}/bin/kube-apiserver-<version>
#   ${KUBELISTEN_CONTROL_PLANE_CACHE:-~/.cache/kubelisten}/bin/kubectl-<version>, linked as
#   ${KUBELISTEN_CONTROL_PLANE_CACHE:-~/.cache/kubelisten}/path/kubectl (put that directory on PATH)
#
# Usage: build.sh [etcd|kube-apiserver|all|kubectl] [--print-path]
#   all            etcd and kube-apiserver (the default)
#   kubectl        kubectl from the same Kubernetes module as kube-apiserver
#   --print-path   only print the cached binary path(s), build nothing
#
# A binary is rebuilt only when missing. Go's module and build caches are left
# at their default locations (GOMODCACHE, GOCACHE) so a rebuild after a version
# bump is incremental. Builds use CGO_ENABLED=0.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_DIR="${KUBELISTEN_CONTROL_PLANE_CACHE:-$HOME/.cache/kubelisten}"
BIN_DIR="$CACHE_DIR/bin"
LOG_DIR="$CACHE_DIR/build-logs"

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

# The version of `mod` required by the go.mod in directory $1.
required_version() {
  local dir="$1" mod="$2" v
  v="$(awk -v m="$mod" '($1 == m && $2 ~ /^v[0-9]/) || ($1 == "require" && $2 == m) { print ($1 == "require" ? $3 : $2); exit }' "$dir/go.mod")"
  [[ -n "$v" ]] || die "cannot find the required version of $mod in $dir/go.mod"
  echo "$v"
}

etcd_version() { required_version "$HERE/etcd" go.etcd.io/etcd/server/v3; }
kube_version() { required_version "$HERE/kube-apiserver" k8s.io/kubernetes; }

bin_path() {
  case "$1" in
    etcd) echo "$BIN_DIR/etcd-$(etcd_version)" ;;
    kube-apiserver) echo "$BIN_DIR/kube-apiserver-$(kube_version)" ;;
    kubectl) echo "$BIN_DIR/kubectl-$(kube_version)" ;;
    *) die "unknown component '$1' (expected etcd, kube-apiserver or kubectl)" ;;
  esac
}

require_go() {
  command -v go >/dev/null 2>&1 || die "Go is not installed (no 'go' on PATH).
  The local control plane builds etcd and kube-apiserver from their Go modules;
  install Go >= 1.26 (etcd v$(etcd_version | sed 's/^v//') needs it), e.g. from https://go.dev/dl/ or your distribution, and retry."
}

build_one() {
  local comp="$1" out src version ldflags logf main_pkg=.
  out="$(bin_path "$comp")"
  if [[ -x "$out" ]]; then
    return 0
  fi
  require_go
  src="$HERE/$comp"
  if [[ "$comp" == kubectl ]]; then
    # The kube-apiserver module's go.sum covers cmd/kubectl too.
    src="$HERE/kube-apiserver"
    main_pkg=k8s.io/kubernetes/cmd/kubectl
  fi
  mkdir -p "$BIN_DIR" "$LOG_DIR"
  case "$comp" in
    etcd)
      version="$(etcd_version)"
      ldflags="-s -w"
      ;;
    kube-apiserver|kubectl)
      version="$(kube_version)"
      local major minor date
      major="$(echo "$version" | sed -E 's/^v([0-9]+)\..*/\1/')"
      minor="$(echo "$version" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')"
      date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
      # Same stamping as kubernetes' hack/lib/version.sh, so /version and
      # `kubectl version` report the real release instead of v0.0.0-master.
      ldflags="-s -w"
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
      done
      ;;
  esac
  logf="$LOG_DIR/$comp-$version.log"
  log "building $comp $version with $(go version | awk '{print $3}') (CGO_ENABLED=0) -> $out"
  log "this takes a few minutes on a cold cache; log: $logf"
  local start=$SECONDS tmp="$out.tmp.$$"
  if ! (cd "$src" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
        go build -trimpath -ldflags "$ldflags" -o "$tmp" "$main_pkg" ) >"$logf" 2>&1; then
    rm -f "$tmp"
    echo "build.sh: error: building $comp $version failed; last lines of $logf:" >&2
    tail -n 30 "$logf" | sed 's/^/  | /' >&2
    exit 1
  fi
  mv -f "$tmp" "$out"
  log "built $comp $version in $((SECONDS - start))s"
}

# kubectl under its own name, in a directory of its own for PATH.
link_kubectl() {
  mkdir -p "$CACHE_DIR/path"
  ln -sfn "$(bin_path kubectl)" "$CACHE_DIR/path/kubectl"
}

main() {
  local what="all" print_only=0 arg
  for arg in "$@"; do
    case "$arg" in
      --print-path) print_only=1 ;;
      etcd|kube-apiserver|all|kubectl) what="$arg" ;;
      -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument '$arg'" ;;
    esac
  done
  local comps=(etcd kube-apiserver)
  [[ "$what" == all ]] || comps=("$what")
  local c
  if (( print_only )); then
    for c in "${comps[@]}"; do bin_path "$c"; done
    return 0
  fi
  mkdir -p "$CACHE_DIR"
  # Serialize concurrent builders (e.g. two `make cluster-up` at once).
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE_DIR/.build.lock"
    flock 9
  fi
  for c in "${comps[@]}"; do build_one "$c"; done
  if [[ "$what" == kubectl ]]; then link_kubectl; fi
}

main "$@"
