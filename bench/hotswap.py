#!/usr/bin/env python3
"""Hot-swap latency benchmark (issue 7): time from the API server accepting a modules-ConfigMap
update to the first event processed by the new version of the listener.

Run by bench/hotswap.sh (which brings up the local control plane); standard library + kubectl.

  1. A fresh namespace, the bench CRD (bench/crd.yaml) and a modules ConfigMap whose
     `listeners.yaml` names one reference-mode listener `counter` with `counter.wasm` = the
     versioned guest v1 (it logs `versioned v1|v2 <ns>/<name> rv=<rv> count=<n>` per event).
  2. `kubelisten run --crd bench/crd.yaml --modules-configmap NS/modules -n NS --log-format json`
     with a fresh compiled-code cache directory (so the first swap to v2 really compiles).
  3. A background writer PATCHes one object every --interval-ms (10 ms), so an event is always
     close: the time to the next event after the swap adds up to one writer interval.
  4. N times: PATCH the ConfigMap's `binaryData.counter.wasm` to the other version
     (v1 -> v2 -> v1 ...) with a unique User-Agent; wait for the first log line of the new version.
     Between swaps, wait --settle seconds.
  5. Acceptance time = `stageTimestamp` of the `ResponseComplete` audit entry with that
     User-Agent (API server clock, microseconds). New-version time = the `timestamp` of the
     first JSON log line whose `fields.message` starts with `versioned <new> `. Same machine, same
     CLOCK_REALTIME. Latency = difference.

The API server writes stageTimestamp after the response, so under load a watcher can see the
change before it (a sample can be slightly negative); the latency from the audit entry's
requestReceivedTimestamp is reported too, as an upper bound. Also reported: the split at kubelisten's own `swapped; ...` log line (accept -> swapped = watch
delivery + decode + validate + compile + swap; swapped -> first event = waiting for the writer's
next event + its delivery), the client-side view (response received -> first event), the
writer's achieved interval and the machine load.
"""
import argparse
import base64
import datetime
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from driver import Kube  # noqa: E402
GROUP, VERSION, PLURAL, KIND = "bench.kubelisten.dev", "v1", "benchitems", "BenchItem"
UA_PREFIX = "kubelisten-swapbench"
LISTENERS = "listeners:\n  - name: counter\n    module: counter.wasm\n    mode: reference\n"
TS = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def ts_ns(s):
    """RFC 3339 timestamp (any fraction length) -> unix ns."""
    m = TS.match(s)
    if not m:
        raise ValueError(f"bad timestamp {s!r}")
    y, mo, d, h, mi, se, frac, tz = m.groups()
    dt = datetime.datetime(int(y), int(mo), int(d), int(h), int(mi), int(se),
                           tzinfo=datetime.timezone.utc)
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        dt -= sign * datetime.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    ns = int((frac or "0").ljust(9, "0")[:9])
    return int(dt.timestamp()) * 10**9 + ns


def pct(xs, p):
    """Nearest-rank percentile."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, -(-p * len(s) // 100) - 1))
    return s[int(k)]


def leb128(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_custom_section(module, name, payload):
    """The component plus a trailing custom section: same code, a new digest (so the swap really
    decodes, validates and compiles instead of hitting the compiled-code cache)."""
    body = leb128(len(name)) + name.encode() + payload
    return module + b"\x00" + leb128(len(body)) + body


def ms(ns):
    return None if ns is None else round(ns / 1e6, 2)


# --- API client ---------------------------------------------------------------------------------


# --- kubelisten's log ---------------------------------------------------------------------------


class Log:
    """Reads kubelisten's JSON log lines (stdout+stderr) into a list; keeps a raw copy on disk."""

    def __init__(self, proc, path):
        self.lines = []  # (timestamp ns, message, record)
        self.cond = threading.Condition()
        self.raw = open(path, "wb")
        self.t = threading.Thread(target=self.run, args=(proc,), daemon=True)
        self.t.start()

    def run(self, proc):
        for line in proc.stdout:
            self.raw.write(line)
            try:
                rec = json.loads(line)
                t = ts_ns(rec["timestamp"])
                msg = str(rec.get("fields", {}).get("message", ""))
            except (ValueError, KeyError):
                continue
            with self.cond:
                self.lines.append((t, msg, rec))
                self.cond.notify_all()
        self.raw.flush()

    def mark(self):
        with self.cond:
            return len(self.lines)

    def wait(self, start, pred, timeout):
        """First line at index >= start matching pred: (index, (t, msg, rec)); None on timeout."""
        deadline = time.monotonic() + timeout
        i = start
        with self.cond:
            while True:
                while i < len(self.lines):
                    if pred(self.lines[i]):
                        return i, self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


def is_version(v):
    return lambda line: line[1].startswith(f"versioned {v} ")


def is_swapped(line):
    return line[1].startswith("swapped;")


# --- background writer --------------------------------------------------------------------------


class Writer(threading.Thread):
    """PATCHes one object every `interval` seconds (fixed schedule; no catch-up bursts)."""

    def __init__(self, kube, ns, name, interval):
        super().__init__(daemon=True)
        self.kube, self.ns, self.name, self.interval = kube, ns, name, interval
        self.stop = threading.Event()
        self.done = []  # response times (ns)
        self.errors = 0

    def run(self):
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/{PLURAL}/{self.name}"
        n = 0
        nxt = time.monotonic()
        while not self.stop.is_set():
            n += 1
            st, _, _, t1 = self.kube.request("PATCH", path, {"spec": {"count": n}},
                                             "application/merge-patch+json",
                                             ua=f"{UA_PREFIX}-writer")
            if st == 200:
                self.done.append(t1)
            else:
                self.errors += 1
            nxt += self.interval
            now = time.monotonic()
            if nxt > now:
                time.sleep(nxt - now)
            else:
                nxt = now  # fell behind (the request took longer than the interval)


# --- audit log ----------------------------------------------------------------------------------


def audit_accepts(path, ns, prefix):
    """User-Agent -> (stageTimestamp ns, requestReceivedTimestamp ns, HTTP code) of the
    ResponseComplete entries of our ConfigMap patches."""
    out = {}
    key = prefix.encode()
    with open(path, "rb") as f:
        for line in f:
            if key not in line or b'"ResponseComplete"' not in line:
                continue
            ev = json.loads(line)
            ref = ev.get("objectRef", {})
            if (ev.get("stage") != "ResponseComplete" or ev.get("verb") != "patch"
                    or ref.get("resource") != "configmaps" or ref.get("namespace") != ns):
                continue
            out[ev["userAgent"]] = (ts_ns(ev["stageTimestamp"]),
                                    ts_ns(ev["requestReceivedTimestamp"]),
                                    ev.get("responseStatus", {}).get("code"))
    return out


# --- machine load -------------------------------------------------------------------------------


def cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v), idle


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--swaps", type=int, default=20)
    ap.add_argument("--interval-ms", type=float, default=10.0, help="background writer interval")
    ap.add_argument("--settle", type=float, default=1.5, help="seconds between swaps")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a swap")
    ap.add_argument("--kubelisten", default=os.path.join(ROOT, "target/release/kubelisten"))
    ap.add_argument("--v1", default=os.path.join(ROOT, "target/guests/versioned-v1.wasm"))
    ap.add_argument("--v2", default=os.path.join(ROOT, "target/guests/versioned-v2.wasm"))
    ap.add_argument("--crd", default=os.path.join(HERE, "crd.yaml"))
    ap.add_argument("--audit-log", default=os.path.join(
        os.environ.get("KUBELISTEN_RUN_DIR", ""), "logs/audit.log"))
    ap.add_argument("--fresh", action="store_true",
                    help="give every swap's module a never-seen digest (a trailing custom section), "
                         "so every swap compiles; default: alternate v1/v2 (cached after the first "
                         "swap to each)")
    ap.add_argument("--out", default="", help="results directory (default target/bench-hotswap/TIME)")
    args = ap.parse_args()

    run_id = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or os.path.join(ROOT, "target/bench-hotswap", run_id)
    os.makedirs(out, exist_ok=True)
    ns = f"swapbench-{run_id.replace('-', '')[4:]}-{random.randrange(1000):03d}"
    prefix = f"{UA_PREFIX}/{run_id}/"
    modules = {"v1": open(args.v1, "rb").read(), "v2": open(args.v2, "rb").read()}
    b64 = {v: base64.b64encode(b).decode() for v, b in modules.items()}

    kube = Kube(user_agent=UA_PREFIX)
    kube.ok("namespace", (201, 409), "POST", "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    subprocess.run(["kubectl", "apply", "-f", args.crd], check=True, stdout=sys.stderr)
    subprocess.run(["kubectl", "wait", "--for=condition=Established", "--timeout=60s",
                    f"crd/{PLURAL}.{GROUP}"], check=True, stdout=sys.stderr)
    cm_path = f"/api/v1/namespaces/{ns}/configmaps"
    kube.ok("configmap", (201,), "POST", cm_path,
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "modules"},
             "data": {"listeners.yaml": LISTENERS}, "binaryData": {"counter.wasm": b64["v1"]}})
    kube.ok("object", (201,), "POST", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}",
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
             "metadata": {"name": "tick", "namespace": ns}, "spec": {"message": "tick", "count": 0}})

    cache_dir = tempfile.mkdtemp(prefix="kl-swapbench-cache-")
    cmd = [args.kubelisten, "run", "--crd", args.crd, "--modules-configmap", f"{ns}/modules",
           "-n", ns, "--log-format", "json", "--cache-dir", cache_dir, "--health-port", "0"]
    print("+ " + " ".join(cmd), file=sys.stderr)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"),
                                     KUBELISTEN_STATUS_BIND="off"))
    log = Log(proc, os.path.join(out, "kubelisten.log"))
    writer = None
    result = {}
    try:
        if log.wait(0, is_version("v1"), 60) is None:
            raise RuntimeError("kubelisten never ran v1 (see kubelisten.log)")
        writer = Writer(kube, ns, "tick", args.interval_ms / 1000)
        writer.start()
        time.sleep(1.0)
        load_start, cpu0 = loadavg(), cpu_times()

        swaps = []
        current = "v1"
        for i in range(args.swaps):
            target = "v2" if current == "v1" else "v1"
            ua = f"{prefix}swap-{i:02d}-{target}"
            mark = log.mark()
            data = b64[target]
            if args.fresh:
                data = base64.b64encode(with_custom_section(
                    modules[target], "kubelisten-swapbench", f"{run_id}/{i}".encode())).decode()
            _, t0, t1 = kube.ok(f"swap {i}", (200,), "PATCH", f"{cm_path}/modules",
                                {"binaryData": {"counter.wasm": data}},
                                "application/merge-patch+json", ua=ua)
            first = log.wait(mark, is_version(target), args.timeout)
            if first is None:
                raise RuntimeError(f"swap {i} to {target}: no {target} event within {args.timeout}s")
            swapped = log.wait(mark, is_swapped, 2)
            # Old-version lines after the first new-version line (events already in a call
            # may finish on the old version; a later one would be a bug).
            time.sleep(args.settle)
            with log.cond:
                late_old = sum(1 for ln in log.lines[first[0] + 1:] if is_version(current)(ln))
            swaps.append({"i": i, "to": target, "ua": ua, "sent": t0, "response": t1,
                          "first_event": first[1][0], "first_message": first[1][1],
                          "swapped": swapped[1][0] if swapped else None, "late_old": late_old})
            print(f"swap {i:2d} -> {target}: first {target} event {ms(first[1][0] - t1):8.2f} ms "
                  f"after the response", file=sys.stderr)
            current = target

        cpu1, load_end = cpu_times(), loadavg()
        writer.stop.set()
        writer.join()
        time.sleep(2.0)  # let the audit log catch up
        accepts = audit_accepts(args.audit_log, ns, prefix)

        for s in swaps:
            a = accepts.get(s["ua"])
            s["accepted"] = a[0] if a else None
            s["received"] = a[1] if a else None
            s["latency"] = s["first_event"] - a[0] if a else None
            s["received_latency"] = s["first_event"] - a[1] if a else None
            s["accept_to_swapped"] = s["swapped"] - a[0] if a and s["swapped"] else None
            s["swapped_to_event"] = s["first_event"] - s["swapped"] if s["swapped"] else None
            s["client_latency"] = s["first_event"] - s["response"]
        missing = [s["ua"] for s in swaps if s["accepted"] is None]
        if missing:
            print(f"warning: no audit entry for {missing}", file=sys.stderr)

        gaps = [b - a for a, b in zip(writer.done, writer.done[1:])]
        ev_times = [t for t, m, _ in log.lines if m.startswith("versioned ")]
        ev_gaps = [b - a for a, b in zip(ev_times, ev_times[1:])]

        def summary(key, sel=swaps):
            xs = [s[key] for s in sel if s.get(key) is not None]
            return {"n": len(xs), "p50": ms(pct(xs, 50)), "p90": ms(pct(xs, 90)),
                    "max": ms(max(xs)) if xs else None, "min": ms(min(xs)) if xs else None}

        busy = 1 - (cpu1[1] - cpu0[1]) / max(1, cpu1[0] - cpu0[0])
        result = {
            "namespace": ns, "command": cmd, "argv": sys.argv, "fresh": args.fresh,
            "swaps_n": len(swaps),
            "latency_ms": summary("latency"),
            "latency_warm_ms": summary("latency", swaps[1:]),
            "latency_first_swap_ms": ms(swaps[0]["latency"]) if swaps else None,
            "received_to_event_ms": summary("received_latency"),
            "accept_to_swapped_ms": summary("accept_to_swapped"),
            "swapped_to_event_ms": summary("swapped_to_event"),
            "client_response_to_event_ms": summary("client_latency"),
            "writer": {"interval_target_ms": args.interval_ms, "patches": len(writer.done),
                       "errors": writer.errors,
                       "interval_p50_ms": ms(pct(gaps, 50)), "interval_p90_ms": ms(pct(gaps, 90)),
                       "interval_max_ms": ms(max(gaps)) if gaps else None,
                       "event_gap_p50_ms": ms(pct(ev_gaps, 50)),
                       "event_gap_p90_ms": ms(pct(ev_gaps, 90)),
                       "event_gap_max_ms": ms(max(ev_gaps)) if ev_gaps else None},
            "late_old_events": sum(s["late_old"] for s in swaps),
            "load": {"nproc": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": load_end,
                     "cpu_busy_pct": round(100 * busy, 1)},
            "per_swap": [{"i": s["i"], "to": s["to"], "latency_ms": ms(s["latency"]),
                          "received_latency_ms": ms(s["received_latency"]),
                          "accept_to_swapped_ms": ms(s["accept_to_swapped"]),
                          "swapped_to_event_ms": ms(s["swapped_to_event"]),
                          "client_latency_ms": ms(s["client_latency"]),
                          "late_old": s["late_old"]} for s in swaps],
        }
    finally:
        if writer is not None:
            writer.stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.t.join(5)
        kube.request("DELETE", f"/api/v1/namespaces/{ns}")

    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    lat = result["latency_ms"]
    print(f"\nhot-swap latency (audit accept -> first new-version event), n={lat['n']}: "
          f"p50 {lat['p50']} ms, p90 {lat['p90']} ms, max {lat['max']} ms; "
          f"first swap {result['latency_first_swap_ms']} ms; "
          f"{'every swap compiled (--fresh)' if args.fresh else 'alternating v1/v2, cached after the first'}; "
          f"goal <= 500 ms: {'met' if lat['max'] is not None and lat['max'] <= 500 else 'NOT met (max)'}"
          f"; results in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
