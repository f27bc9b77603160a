#!/usr/bin/env bash
# A real, minimal Kubernetes control plane on loopback: etcd + kube-apiserver,
# no kube-controller-manager, no scheduler, no kubelet. See README.md here.
#
# Usage: cluster.sh up|down|status|stop-apiserver|start-apiserver|env
#
#   up               build the binaries if missing, generate certificates, start
#                    etcd and kube-apiserver on free 127.0.0.1 ports, wait for
#                    /readyz, write the admin kubeconfig. Safe to run twice.
#   down             stop both processes (by recorded PID; TERM, then KILL) and
#                    remove the run directory.
#   status           print state and endpoints; exit 0 only if etcd and the
#                    apiserver are running and /readyz answers ok.
#   stop-apiserver   stop only kube-apiserver (etcd and all state stay).
#   start-apiserver  start kube-apiserver again with the same port, certificates
#                    and flags (KUBELISTEN_APISERVER_EXTRA_ARGS, if set now,
#                    replaces the recorded extra flags), and wait for /readyz.
#   env              print the path of the sourceable env file.
#
# Environment:
#   KUBELISTEN_RUN_DIR               run directory (default ~/.cache/kubelisten/run);
#                                    the admin kubeconfig is always $KUBELISTEN_RUN_DIR/kubeconfig
#   KUBELISTEN_CONTROL_PLANE_CACHE             binary cache root (default ~/.cache/kubelisten)
#   KUBELISTEN_READY_TIMEOUT         seconds to wait for /readyz (default 120)
#   KUBELISTEN_ETCD_COMPACTION       e.g. "1m": etcd --auto-compaction-retention (default: none)
#   KUBELISTEN_APISERVER_EXTRA_ARGS  extra kube-apiserver flags, whitespace separated
#                                    (e.g. "--watch-cache=false")
#   KUBELISTEN_APISERVER_PORT        fixed secure port instead of a free one (default: pick free)
#   KUBELISTEN_STOP_TIMEOUT          seconds between TERM and KILL on stop (default 20)
#   KUBELISTEN_ETCD_FSYNC=1          keep etcd's fsync (default: --unsafe-no-fsync, a throwaway store)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RUN_DIR="${KUBELISTEN_RUN_DIR:-$HOME/.cache/kubelisten/run}"
READY_TIMEOUT="${KUBELISTEN_READY_TIMEOUT:-120}"
STOP_TIMEOUT="${KUBELISTEN_STOP_TIMEOUT:-20}"

PKI="$RUN_DIR/pki"
LOGS="$RUN_DIR/logs"
ENV_FILE="$RUN_DIR/env"
KUBECONFIG_FILE="$RUN_DIR/kubeconfig"
MARKER="$RUN_DIR/.kubelisten-run"
ETCD_LOG="$LOGS/etcd.log"
APISERVER_LOG="$LOGS/kube-apiserver.log"
AUDIT_POLICY="$RUN_DIR/audit-policy.yaml"

SERVICE_CIDR="10.0.0.0/24"
SERVICE_IP="10.0.0.1"   # first address of SERVICE_CIDR: the `kubernetes` Service
SA_ISSUER="https://kubernetes.default.svc.cluster.local"

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed ($2)"
}

show_log() { # file [lines]
  local f="$1" n="${2:-30}"
  if [[ -s "$f" ]]; then
    echo "----- last $n lines of $f -----" >&2
    tail -n "$n" "$f" >&2
    echo "-----" >&2
  else
    echo "(log $f is empty or missing)" >&2
  fi
}

# --- process helpers ------------------------------------------------------------

# alive PID NAME: the PID exists and is the binary we started (guards PID reuse).
alive() {
  local pid="${1:-}" name="$2"
  [[ -n "$pid" && "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1 | grep -q -- "$name" || return 1
  fi
  return 0
}

# wait_exec PID NAME: right after `setsid BIN &` the child is briefly still a
# copy of this shell (then setsid); wait until it has exec'd into BIN, or exited.
wait_exec() {
  local pid="$1" name="$2" i
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    alive "$pid" "$name" && return 0
    sleep 0.05
  done
}

# stop_pid PID NAME: TERM, wait up to STOP_TIMEOUT, then KILL.
stop_pid() {
  local pid="$1" name="$2" i
  alive "$pid" "$name" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    alive "$pid" "$name" || { log "stopped $name (pid $pid)"; return 0; }
    sleep 0.1
  done
  log "$name (pid $pid) did not exit within ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "$pid" "$name" || return 0
    sleep 0.1
  done
  die "$name (pid $pid) survived SIGKILL"
}

# free_ports N: N distinct currently-free TCP ports on 127.0.0.1 (bind to port 0).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

# port_in_use PORT: something accepts connections (or holds a bind) on 127.0.0.1:PORT.
port_in_use() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
# Like Go's listeners (etcd, kube-apiserver): connections in TIME-WAIT do not block a bind.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
finally:
    s.close()
sys.exit(1)
PY
}

# --- state ------------------------------------------------------------------------

load_env() {
  [[ -f "$ENV_FILE" ]] || return 1
  # shellcheck disable=SC1090
  source "$ENV_FILE"
}

write_env() {
  local tmp="$ENV_FILE.tmp"
  {
    echo "# kubelisten local control plane; sourceable. Written by deploy/local/cluster.sh."
    printf 'KUBELISTEN_RUN_DIR=%q\n' "$RUN_DIR"
    printf 'KUBECONFIG=%q\n' "$KUBECONFIG_FILE"
    printf 'APISERVER_PORT=%q\n' "$APISERVER_PORT"
    printf 'APISERVER_URL=%q\n' "https://127.0.0.1:$APISERVER_PORT"
    printf 'APISERVER_PID=%q\n' "${APISERVER_PID:-}"
    printf 'APISERVER_BIN=%q\n' "$APISERVER_BIN"
    printf 'APISERVER_EXTRA_ARGS=%q\n' "${APISERVER_EXTRA_ARGS:-}"
    printf 'ETCD_PORT=%q\n' "$ETCD_PORT"
    printf 'ETCD_PEER_PORT=%q\n' "$ETCD_PEER_PORT"
    printf 'ETCD_URL=%q\n' "http://127.0.0.1:$ETCD_PORT"
    printf 'ETCD_PID=%q\n' "${ETCD_PID:-}"
    printf 'ETCD_BIN=%q\n' "$ETCD_BIN"
    printf 'ETCD_COMPACTION=%q\n' "${ETCD_COMPACTION:-}"
  } >"$tmp"
  mv -f "$tmp" "$ENV_FILE"
}

# remove_run_dir: only ever delete a directory this script created.
remove_run_dir() {
  [[ -d "$RUN_DIR" ]] || return 0
  if [[ -f "$MARKER" ]]; then
    rm -rf -- "$RUN_DIR"
  elif [[ -z "$(ls -A "$RUN_DIR")" ]]; then
    rmdir -- "$RUN_DIR"
  else
    die "refusing to delete $RUN_DIR: it was not created by cluster.sh (no $(basename "$MARKER"))"
  fi
}

# --- certificates -----------------------------------------------------------------

gen_pki() {
  need openssl "used to generate the CA and certificates"
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  (
    cd "$PKI"
    umask 077
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out ca.key 2>/dev/null
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=kubelisten-local-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out ca.crt

    # kube-apiserver serving certificate.
    cat >apiserver.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:::1,IP:$SERVICE_IP
EOF
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out apiserver.key 2>/dev/null
    openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null

    # Admin client certificate: O=system:masters is bound to cluster-admin.
    cat >admin.ext <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EOF
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out admin.key 2>/dev/null
    openssl req -new -key admin.key -subj "/O=system:masters/CN=kubelisten-admin" -out admin.csr
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 \
      -extfile admin.ext -out admin.crt 2>/dev/null

    # ServiceAccount token signing key pair (TokenRequest API).
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub
    rm -f ./*.csr ./*.ext
  )
}

write_kubeconfig() {
  local tmp="$KUBECONFIG_FILE.tmp"
  (
    umask 077
    cat >"$tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kubelisten-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 <"$PKI/ca.crt" | tr -d '\n')
users:
- name: kubelisten-admin
  user:
    client-certificate-data: $(base64 <"$PKI/admin.crt" | tr -d '\n')
    client-key-data: $(base64 <"$PKI/admin.key" | tr -d '\n')
contexts:
- name: kubelisten-local
  context:
    cluster: kubelisten-local
    user: kubelisten-admin
    namespace: default
current-context: kubelisten-local
EOF
  )
  mv -f "$tmp" "$KUBECONFIG_FILE"
}

# --- etcd -------------------------------------------------------------------------

etcd_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}

# start_etcd: returns 0 when healthy, 2 on a port conflict, dies on other failures.
start_etcd() {
  local args=(
    --name=kubelisten
    --data-dir="$RUN_DIR/etcd-data"
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT"
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT"
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT"
    --initial-cluster="kubelisten=http://127.0.0.1:$ETCD_PEER_PORT"
    --initial-cluster-state=new
    --log-level=warn
  )
  if [[ "${KUBELISTEN_ETCD_FSYNC:-0}" != 1 ]]; then
    # Throwaway test store: skip fsync, which dominates write latency on CI disks.
    args+=(--unsafe-no-fsync=true)
  fi
  if [[ -n "${ETCD_COMPACTION:-}" ]]; then
    args+=(--auto-compaction-mode=periodic --auto-compaction-retention="$ETCD_COMPACTION")
  fi
  : >"$ETCD_LOG"
  setsid "$ETCD_BIN" "${args[@]}" </dev/null >>"$ETCD_LOG" 2>&1 8>&- &
  ETCD_PID=$!
  wait_exec "$ETCD_PID" etcd
  write_env
  local i
  for ((i = 0; i < 300; i++)); do # 30 s
    if ! alive "$ETCD_PID" etcd; then
      if grep -qi 'address already in use' "$ETCD_LOG"; then
        log "etcd could not bind 127.0.0.1:$ETCD_PORT or :$ETCD_PEER_PORT (port conflict: address already in use)"
        ETCD_PID=""
        return 2
      fi
      show_log "$ETCD_LOG"
      die "etcd failed to start (it exited; see the log above, full log: $ETCD_LOG)"
    fi
    etcd_healthy && return 0
    sleep 0.1
  done
  show_log "$ETCD_LOG"
  stop_pid "$ETCD_PID" etcd
  die "etcd did not become healthy on http://127.0.0.1:$ETCD_PORT within 30s (log: $ETCD_LOG)"
}

# --- kube-apiserver ---------------------------------------------------------------

readyz() {
  curl -fsS --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz" >/dev/null 2>&1
}

# write_audit_policy: log the metadata of every request.
write_audit_policy() {
  cat >"$AUDIT_POLICY" <<'YAML'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
YAML
}

apiserver_args() {
  # shellcheck disable=SC2054 # commas are inside flag values
  local args=(
    --etcd-servers="http://127.0.0.1:$ETCD_PORT"
    --bind-address=127.0.0.1
    --advertise-address=127.0.0.1
    --secure-port="$APISERVER_PORT"
    --cert-dir="$PKI/apiserver-generated"
    --tls-cert-file="$PKI/apiserver.crt"
    --tls-private-key-file="$PKI/apiserver.key"
    --client-ca-file="$PKI/ca.crt"
    --authorization-mode=Node,RBAC
    --service-account-issuer="$SA_ISSUER"
    --service-account-key-file="$PKI/sa.pub"
    --service-account-signing-key-file="$PKI/sa.key"
    --api-audiences="$SA_ISSUER"
    --service-cluster-ip-range="$SERVICE_CIDR"
    --enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,DefaultStorageClass,ResourceQuota,PodSecurity,NodeRestriction
    --allow-privileged=true
    --profiling=false
    # The lease reconciler would keep failing to publish 127.0.0.1 as the
    # endpoint of the `kubernetes` Service (loopback IPs are invalid there).
    --endpoint-reconciler-type=none
    # No watch cache for the test resource gaps.relist.kubelisten.dev: a watch from an
    # expired (compacted) resourceVersion then gets 410 Expired, as after a long disconnection
    # from a busy cluster (host/tests/watch_relist.rs). Every other resource keeps the cache.
    --watch-cache-sizes=gaps.relist.kubelisten.dev#0
    # Every request is audited (metadata level) so tests can prove which requests reached the
    # server, e.g. that a call denied by a listener's policy never left kubelisten.
    --audit-policy-file="$AUDIT_POLICY"
    --audit-log-path="$LOGS/audit.log"
    --audit-log-format=json
    --audit-log-maxsize=200
  )
  printf '%s\n' "${args[@]}"
  if [[ -n "${APISERVER_EXTRA_ARGS:-}" ]]; then
    local extra
    read -r -a extra <<<"$APISERVER_EXTRA_ARGS"
    printf '%s\n' "${extra[@]}"
  fi
}

# start_apiserver: returns 0 when /readyz is ok, 2 on a port conflict, dies otherwise.
start_apiserver() {
  if port_in_use "$APISERVER_PORT"; then
    log "port conflict: 127.0.0.1:$APISERVER_PORT (kube-apiserver secure port) is already in use"
    return 2
  fi
  write_audit_policy
  local args=()
  mapfile -t args < <(apiserver_args)
  {
    echo "===== $(date -u +%Y-%m-%dT%H:%M:%SZ) starting: $APISERVER_BIN ${args[*]}"
  } >>"$APISERVER_LOG"
  setsid "$APISERVER_BIN" "${args[@]}" </dev/null >>"$APISERVER_LOG" 2>&1 8>&- &
  APISERVER_PID=$!
  wait_exec "$APISERVER_PID" kube-apiserver
  write_env
  local deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! alive "$APISERVER_PID" kube-apiserver; then
      if tail -n 50 "$APISERVER_LOG" | grep -qi 'address already in use'; then
        log "port conflict: kube-apiserver could not bind 127.0.0.1:$APISERVER_PORT (address already in use)"
        APISERVER_PID=""
        write_env
        return 2
      fi
      show_log "$APISERVER_LOG"
      alive "${ETCD_PID:-}" etcd || show_log "$ETCD_LOG"
      APISERVER_PID=""
      write_env
      die "kube-apiserver exited during startup (see the log above, full log: $APISERVER_LOG)"
    fi
    readyz && return 0
    sleep 0.5
  done
  show_log "$APISERVER_LOG"
  show_log "$ETCD_LOG"
  curl -sS --max-time 3 --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:$APISERVER_PORT/readyz?verbose" 2>&1 | grep -v '^\[+\]' >&2 || true
  stop_pid "$APISERVER_PID" kube-apiserver
  APISERVER_PID=""
  write_env
  die "kube-apiserver was not ready within ${READY_TIMEOUT}s (KUBELISTEN_READY_TIMEOUT); logs above, full logs in $LOGS; etcd is left running: '$0 down' cleans up"
}

# --- commands ---------------------------------------------------------------------

print_status() {
  [[ -n "${ETCD_PORT:-}" ]] && ETCD_URL="http://127.0.0.1:$ETCD_PORT"
  [[ -n "${APISERVER_PORT:-}" ]] && APISERVER_URL="https://127.0.0.1:$APISERVER_PORT"
  echo "run dir:        $RUN_DIR"
  echo "etcd:           ${ETCD_URL:-?} (pid ${ETCD_PID:-none}, peer port ${ETCD_PEER_PORT:-?})"
  echo "kube-apiserver: ${APISERVER_URL:-?} (pid ${APISERVER_PID:-none})"
  echo "logs:           $LOGS"
  echo "kubeconfig:     $KUBECONFIG_FILE"
}

cmd_status() {
  if ! load_env; then
    echo "not running (no $ENV_FILE)"
    return 1
  fi
  local ok=0 e a r
  if alive "${ETCD_PID:-}" etcd; then e=running; else e="NOT running"; ok=1; fi
  if alive "${APISERVER_PID:-}" kube-apiserver; then a=running; else a="NOT running"; ok=1; fi
  if [[ "$a" == running ]] && readyz; then r=ok; else r="not ready"; ok=1; fi
  if ((ok == 0)); then echo "running"; else echo "not running (etcd: $e, kube-apiserver: $a, /readyz: $r)"; fi
  print_status
  return $ok
}

cmd_up() {
  need curl "used for health checks"
  need python3 "used to pick free ports"
  if load_env; then
    if alive "${ETCD_PID:-}" etcd; then
      if alive "${APISERVER_PID:-}" kube-apiserver; then
        if readyz; then
          log "already running"
          print_status
          print_usage_hint
          return 0
        fi
        log "kube-apiserver (pid $APISERVER_PID) is running but not ready; waiting up to ${READY_TIMEOUT}s"
        local deadline=$((SECONDS + READY_TIMEOUT))
        while ((SECONDS < deadline)); do
          if readyz; then print_status; print_usage_hint; return 0; fi
          alive "$APISERVER_PID" kube-apiserver || break
          sleep 0.5
        done
        readyz && { print_status; print_usage_hint; return 0; }
        show_log "$APISERVER_LOG"
        die "existing kube-apiserver (pid $APISERVER_PID) did not become ready; run '$0 down' and retry"
      fi
      log "etcd is running but kube-apiserver is not; starting kube-apiserver"
      cmd_start_apiserver
      [[ -f "$KUBECONFIG_FILE" ]] || write_kubeconfig
      print_status
      print_usage_hint
      return 0
    fi
    log "found a stale run directory (etcd not running); cleaning it up"
    stop_pid "${APISERVER_PID:-}" kube-apiserver
    remove_run_dir
  elif [[ -d "$RUN_DIR" && -n "$(ls -A "$RUN_DIR" 2>/dev/null)" ]]; then
    [[ -f "$MARKER" ]] || die "$RUN_DIR exists, is not empty and was not created by cluster.sh; set KUBELISTEN_RUN_DIR elsewhere"
    remove_run_dir
  fi

  local start=$SECONDS
  "$HERE/build.sh" all
  ETCD_BIN="$("$HERE/build.sh" etcd --print-path)"
  APISERVER_BIN="$("$HERE/build.sh" kube-apiserver --print-path)"

  mkdir -p "$RUN_DIR" "$LOGS"
  touch "$MARKER"
  gen_pki
  ETCD_COMPACTION="${KUBELISTEN_ETCD_COMPACTION:-}"
  APISERVER_EXTRA_ARGS="${KUBELISTEN_APISERVER_EXTRA_ARGS:-}"

  local attempt rc
  for attempt in 1 2 3; do
    read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT <<<"$(free_ports 3)"
    [[ -n "${KUBELISTEN_APISERVER_PORT:-}" ]] && APISERVER_PORT="$KUBELISTEN_APISERVER_PORT"
    APISERVER_PID=""
    ETCD_PID=""
    write_env
    write_kubeconfig
    log "starting etcd on 127.0.0.1:$ETCD_PORT (peer 127.0.0.1:$ETCD_PEER_PORT)"
    rm -rf "$RUN_DIR/etcd-data"
    rc=0; start_etcd || rc=$?
    if ((rc == 2)); then log "retrying with other ports (attempt $attempt)"; continue; fi
    log "starting kube-apiserver on https://127.0.0.1:$APISERVER_PORT"
    rc=0; start_apiserver || rc=$?
    if ((rc == 2)); then
      stop_pid "$ETCD_PID" etcd
      [[ -n "${KUBELISTEN_APISERVER_PORT:-}" ]] && die "port conflict on KUBELISTEN_APISERVER_PORT=$KUBELISTEN_APISERVER_PORT; free it or unset the variable"
      log "retrying with other ports (attempt $attempt)"
      continue
    fi
    break
  done
  ((rc == 0)) || die "could not find free ports for etcd and kube-apiserver after 3 attempts (port conflicts)"
  log "control plane ready in $((SECONDS - start))s"
  print_status
  print_usage_hint
}

print_usage_hint() {
  echo
  echo "export KUBECONFIG=$KUBECONFIG_FILE"
}

cmd_down() {
  if load_env; then
    stop_pid "${APISERVER_PID:-}" kube-apiserver
    stop_pid "${ETCD_PID:-}" etcd
  fi
  remove_run_dir
  log "down (removed $RUN_DIR)"
}

cmd_stop_apiserver() {
  load_env || die "not running (no $ENV_FILE); run '$0 up' first"
  if alive "${APISERVER_PID:-}" kube-apiserver; then
    stop_pid "$APISERVER_PID" kube-apiserver
  else
    log "kube-apiserver is not running"
  fi
  APISERVER_PID=""
  write_env
}

cmd_start_apiserver() {
  need curl "used for health checks"
  need python3 "used to check the port"
  load_env || die "not running (no $ENV_FILE); run '$0 up' first"
  alive "${ETCD_PID:-}" etcd || die "etcd (pid ${ETCD_PID:-none}) is not running; run '$0 down' and '$0 up'"
  if alive "${APISERVER_PID:-}" kube-apiserver; then
    log "kube-apiserver is already running (pid $APISERVER_PID)"
    return 0
  fi
  if [[ -n "${KUBELISTEN_APISERVER_EXTRA_ARGS+set}" ]]; then
    APISERVER_EXTRA_ARGS="$KUBELISTEN_APISERVER_EXTRA_ARGS"
  fi
  local start=$SECONDS rc=0
  start_apiserver || rc=$?
  ((rc == 0)) || die "port conflict: 127.0.0.1:$APISERVER_PORT is taken by another process; kube-apiserver must come back on the same port"
  log "kube-apiserver ready again in $((SECONDS - start))s (pid $APISERVER_PID)"
}

# Serialize commands that change state: two concurrent `up`s on one run dir
# would otherwise generate the PKI twice over each other. The lock file lives
# next to the run dir (which `down` deletes); fd 8 is closed for etcd and
# kube-apiserver so the daemons do not keep holding it.
lock_run_dir() {
  command -v flock >/dev/null 2>&1 || return 0
  local lock="${RUN_DIR%/}.lock"
  mkdir -p "$(dirname "$lock")"
  exec 8>"$lock"
  if ! flock -n 8; then
    log "waiting for another cluster.sh on $RUN_DIR (lock $lock)"
    flock -w 900 8 || die "timed out waiting for the lock $lock held by another cluster.sh"
  fi
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    up|down|stop-apiserver|start-apiserver) lock_run_dir ;;
  esac
  case "$cmd" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    stop-apiserver) cmd_stop_apiserver ;;
    start-apiserver) cmd_start_apiserver ;;
    env) echo "$ENV_FILE" ;;
    -h|--help|help) sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
    *) sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
