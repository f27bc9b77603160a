#!/usr/bin/env python3
"""End-to-end benchmark driver (run by bench/e2e.sh; needs only the standard library and kubectl).

For every contender (a listener process that prints one line per event,
`BENCH <kind> <namespace>/<name> <resourceVersion> <unix-time-ns>`, optionally followed by
` uid=<uid>` and ` initial` for an event from an initial list or relist), on the same API server:

  latency   start the contender on an empty namespace, wait until it is ready (it has seen a
            sentinel object), then create N objects, update each once, delete each, at a fixed
            rate; match every operation to the first event the listener printed for it.
            Latency = time the listener saw the event - time the client received the API
            server's response (the API server has accepted the change by then). Both are
            CLOCK_REALTIME on this machine. The watch event can reach the listener before the
            response reaches the client, so single samples may be slightly negative; we also
            report the latency from the moment the request was sent (an upper bound) and from
            the API server's own ResponseComplete time in its audit log (--audit-log).
  ramp      creates at increasing fixed rates; the listener kept up with a step when every
            create was seen and the lag did not grow (p50 of the last fifth of the step
            <= p50 of the first fifth + 10 ms). Sustained rate = the highest achieved rate it
            kept up with. The ramp stops at the first step it did not keep up with, or when the
            driver + API server reached < 90% of the target (then the number is a lower bound).
  resources CPU seconds (utime+stime from /proc/PID/stat) during latency+ramp and over the whole
            life, peak RSS (VmHWM) and RSS (VmRSS) from /proc/PID/status.
  scale     start-up to ready with K existing objects (spawn -> all K initial events seen) and
            RSS after settling, for each K in --scale.
"""
import argparse
import base64
import concurrent.futures as cf
import glob
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time


GROUP, VERSION, PLURAL, KIND = "bench.kubelisten.dev", "v1", "benchitems", "BenchItem"
# The optional trailing fields (bench-listener only): the object's uid, and ` initial` for an event
# from an initial list or a relist. The native baseline and kopf do not print them.
LINE = re.compile(rb"BENCH (\w+) (\S+)/(\S+) (\d*) (\d+)(?: uid=([0-9A-Za-z-]+))?( initial)?")
CLK_TCK = os.sysconf("SC_CLK_TCK")
USER_AGENT = "kubelisten-bench-driver"


# --- API client ---------------------------------------------------------------------------------


class Kube:
    """A minimal API client for the admin kubeconfig, one keep-alive connection per thread.
    The kubeconfig is read through `kubectl config view` (JSON), so no YAML library is needed."""

    def __init__(self, kubeconfig=None, user_agent=USER_AGENT):
        cmd = ["kubectl", "config", "view", "--raw", "--minify", "-o", "json"]
        if kubeconfig:
            cmd += ["--kubeconfig", kubeconfig]
        cfg = json.loads(subprocess.run(cmd, check=True, capture_output=True).stdout)
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        self.user_agent = user_agent
        server = cluster["server"]
        assert server.startswith("https://"), server
        self.host, port = server[len("https://"):].rstrip("/").rsplit(":", 1)
        self.port = int(port)
        self.tmp = tempfile.mkdtemp(prefix="kl-bench-")

        def dump(name, data_key, file_key, src):
            if data_key in src:
                p = os.path.join(self.tmp, name)
                with open(p, "wb") as f:
                    f.write(base64.b64decode(src[data_key]))
                return p
            return src[file_key]

        ca = dump("ca.crt", "certificate-authority-data", "certificate-authority", cluster)
        cert = dump("client.crt", "client-certificate-data", "client-certificate", user)
        key = dump("client.key", "client-key-data", "client-key", user)
        self.ctx = ssl.create_default_context(cafile=ca)
        self.ctx.load_cert_chain(cert, key)
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=60)
            self.local.c = c
        return c

    def request(self, method, path, body=None, ctype="application/json", ua=None):
        """Returns (status, parsed body, t_sent_ns, t_response_ns); `ua` overrides the client's
        User-Agent for this request."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "User-Agent": ua or self.user_agent}
        if data is not None:
            headers["Content-Type"] = ctype
        for attempt in range(3):
            c = self.conn()
            try:
                t0 = time.time_ns()
                c.request(method, path, body=data, headers=headers)
                r = c.getresponse()
                raw = r.read()
                t1 = time.time_ns()
                return r.status, (json.loads(raw) if raw else None), t0, t1
            except (http.client.HTTPException, OSError):
                c.close()
                self.local.c = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def ok(self, what, expect, *args, **kw):
        """`request`, raising unless the status is in `expect`; returns (body, t_sent, t_response)."""
        st, body, t0, t1 = self.request(*args, **kw)
        if st not in expect:
            raise RuntimeError(f"{what}: HTTP {st}: {body}")
        return body, t0, t1

    def path(self, ns, name=None):
        p = f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}"
        return f"{p}/{name}" if name else p

    def ensure_namespace(self, ns):
        st, body, _, _ = self.request("POST", "/api/v1/namespaces",
                                      {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        if st not in (201, 409):
            raise RuntimeError(f"namespace {ns}: {st} {body}")

    def create(self, ns, name, n=0):
        obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
               "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench"}},
               "spec": {"message": "x" * 64, "count": n}}
        st, body, t0, t1 = self.request("POST", self.path(ns), obj)
        if st != 201:
            raise RuntimeError(f"create {ns}/{name}: {st} {body}")
        return body["metadata"]["resourceVersion"], t0, t1

    def update(self, ns, name, n):
        st, body, t0, t1 = self.request("PATCH", self.path(ns, name), {"spec": {"count": n}},
                                        "application/merge-patch+json")
        if st != 200:
            raise RuntimeError(f"update {ns}/{name}: {st} {body}")
        return body["metadata"]["resourceVersion"], t0, t1

    def delete(self, ns, name):
        st, body, t0, t1 = self.request("DELETE", self.path(ns, name))
        if st not in (200, 202):
            raise RuntimeError(f"delete {ns}/{name}: {st} {body}")
        rv = (body or {}).get("metadata", {}).get("resourceVersion", "0")
        return rv, t0, t1

    def count(self, ns):
        st, body, _, _ = self.request("GET", self.path(ns) + "?limit=1")
        rem = body["metadata"].get("remainingItemCount", 0) or 0
        return len(body["items"]) + rem


# --- running ops at a fixed rate ----------------------------------------------------------------


def run_at_rate(ops, rate, threads=8):
    """ops: list of callables returning (rv, t_sent, t_resp). Op i is due at start + i/rate.
    Returns (results, achieved_rate)."""
    results = [None] * len(ops)
    start = time.monotonic() + 0.05

    def worker(k):
        for i in range(k, len(ops), threads):
            due = start + i / rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            results[i] = ops[i]()

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    first = min(r[2] for r in results)
    last = max(r[2] for r in results)
    achieved = (len(ops) - 1) / ((last - first) / 1e9) if len(ops) > 1 and last > first else float("inf")
    return results, achieved


def bulk(kube, fn, items, threads=8):
    with cf.ThreadPoolExecutor(threads) as ex:
        return list(ex.map(fn, items))


# --- contender process --------------------------------------------------------------------------


class Contender:
    def __init__(self, name, cmd, env, logdir):
        self.name, self.cmd, self.env, self.logdir = name, cmd, env, logdir
        self.scale = True

    def start(self, tag, ns):
        cmd = [a.replace("{NS}", ns) for a in self.cmd]
        self.out_path = os.path.join(self.logdir, f"{self.name}.{tag}.out")
        self.err_path = os.path.join(self.logdir, f"{self.name}.{tag}.err")
        env = dict(os.environ, **self.env)
        self.t_spawn = time.time_ns()
        self.proc = subprocess.Popen(cmd, stdout=open(self.out_path, "wb"), stderr=open(self.err_path, "wb"),
                                     env=env, start_new_session=True)
        self._seen_pos = {}
        self.events = {}  # (ns, name) -> list of (t, kind, rv, initial, uid or "")
        self._offsets = {self.out_path: 0, self.err_path: 0}
        return self

    def poll_lines(self):
        """Read new BENCH lines from both streams into self.events."""
        for p in (self.out_path, self.err_path):
            with open(p, "rb") as f:
                f.seek(self._offsets[p])
                data = f.read()
            cut = data.rfind(b"\n") + 1
            self._offsets[p] += cut
            for m in LINE.finditer(data[:cut]):
                kind, ns, name, rv, t, uid, initial = m.groups()
                self.events.setdefault((ns.decode(), name.decode()), []).append(
                    (int(t), kind.decode(), int(rv or 0), initial is not None, (uid or b"").decode()))

    def alive(self):
        return self.proc.poll() is None

    def wait_for(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll_lines()
            if pred():
                return True
            if not self.alive():
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) while waiting for {what}; see {self.err_path}")
            time.sleep(0.02)
        return False

    def cpu_s(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def mem_kib(self):
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
        return out

    def stop(self):
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- measurements -------------------------------------------------------------------------------


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def match(c, ns, done):
    """done: list of (op, name, rv, t_sent, t_resp). Returns (lat_resp_ms, lat_sent_ms, missing)."""
    lat_r, lat_s, missing = [], [], 0
    for op, name, rv, t0, t1 in done:
        evs = c.events.get((ns, name), [])
        rv = int(rv or 0)
        if op == "delete":
            cand = [e for e in evs if e[1] == "delete"]
        else:
            cand = [e for e in evs if e[1] != "delete" and e[2] >= rv]
        if not cand:
            missing += 1
            continue
        t = min(e[0] for e in cand)
        lat_r.append((t - t1) / 1e6)
        lat_s.append((t - t0) / 1e6)
    return lat_r, lat_s, missing


VERBS = {"create": "create", "update": "patch", "delete": "delete"}


def audit_files(path):
    """The audit log at `path` and the files kube-apiserver rotated it into: for `audit.log`, every
    `audit*.log` beside it (`--audit-log-maxsize` rotates to `audit-<timestamp>.log`)."""
    if not path:
        return []
    d, base = os.path.split(path)
    stem, ext = os.path.splitext(base)
    return sorted(glob.glob(os.path.join(d or ".", glob.escape(stem) + "*" + ext)))


def audit_times(path, ns):
    """(op, name) -> ResponseComplete stageTimestamp (unix ns) of our requests in namespace ns,
    from the kube-apiserver audit log and its rotated files (microsecond resolution). The earliest
    when a request shows more than once."""
    import datetime
    out = {}
    inv = {v: k for k, v in VERBS.items()}
    key = f'"namespace":"{ns}"'.encode()
    for p in audit_files(path):
        with open(p, "rb") as f:
            for line in f:
                if key not in line or b'"ResponseComplete"' not in line or USER_AGENT.encode() not in line:
                    continue
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue  # a line cut by the rotation
                ref = ev.get("objectRef", {})
                if ref.get("resource") != PLURAL or ev.get("verb") not in inv or ref.get("subresource"):
                    continue
                ts = datetime.datetime.strptime(ev["stageTimestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=datetime.timezone.utc)
                t = int(ts.timestamp()) * 10**9 + ts.microsecond * 1000
                k = (inv[ev["verb"]], ref.get("name"))
                out[k] = min(out.get(k, t), t)
    return out


def wait_seen(c, ns, done, timeout):
    def ok():
        _, _, missing = match(c, ns, done)
        return missing == 0
    c.wait_for(ok, timeout, "events")


def ready(c, kube, ns, timeout=180):
    name = "ready-sentinel"
    kube.create(ns, name)
    if not c.wait_for(lambda: (ns, name) in c.events, timeout, "ready"):
        raise RuntimeError(f"{c.name} not ready after {timeout}s; see {c.err_path}")
    kube.delete(ns, name)
    c.wait_for(lambda: any(e[1] == "delete" for e in c.events.get((ns, name), [])), 30, "sentinel delete")


def loadavg():
    return open("/proc/loadavg").read().split()[:3]


def latency_and_ramp(c, kube, args, run_id):
    ns = f"e2e-{run_id}-{c.name}"
    kube.ensure_namespace(ns)
    c.start("e2e", ns)
    res = {"contender": c.name, "load_before": loadavg()}
    try:
        ready(c, kube, ns)
        res["ready_s"] = (time.time_ns() - c.t_spawn) / 1e9
        cpu0 = c.cpu_s()
        names = [f"obj-{i:05d}" for i in range(args.n)]
        ops = []
        for nm in names:
            ops.append(("create", nm, lambda nm=nm: kube.create(ns, nm)))
        for nm in names:
            ops.append(("update", nm, lambda nm=nm: kube.update(ns, nm, 1)))
        for nm in names:
            ops.append(("delete", nm, lambda nm=nm: kube.delete(ns, nm)))
        # Creates, then updates, then deletes, each phase at the fixed rate.
        done = []
        achieved = []
        for phase in ("create", "update", "delete"):
            ph = [o for o in ops if o[0] == phase]
            r, a = run_at_rate([o[2] for o in ph], args.rate)
            achieved.append(a)
            done += [(o[0], o[1], rv, t0, t1) for o, (rv, t0, t1) in zip(ph, r)]
        wait_seen(c, ns, done, 60)
        lat_r, lat_s, missing = match(c, ns, done)
        res.update(
            n=args.n, rate=args.rate, achieved_rate=min(achieved), missing=missing,
            p50=pct(lat_r, 50), p99=pct(lat_r, 99), max=max(lat_r) if lat_r else float("nan"),
            p50_sent=pct(lat_s, 50), p99_sent=pct(lat_s, 99),
        )
        for op in ("create", "update", "delete"):
            lr, _, _ = match(c, ns, [d for d in done if d[0] == op])
            res[f"{op}_p50"], res[f"{op}_p99"] = pct(lr, 50), pct(lr, 99)
        res["cpu_latency_s"] = c.cpu_s() - cpu0
        # Third view of "accepted": the API server's own ResponseComplete time (audit log).
        time.sleep(1.5)  # the audit log is written in batches
        at = audit_times(args.audit_log, ns)
        dd = [(op, nm, rv, at[(op, nm)], at[(op, nm)]) for op, nm, rv, _, _ in done if (op, nm) in at]
        la, _, _ = match(c, ns, dd)
        res["audit_matched"], res["audit_expected"] = len(la), len(done)
        res["p50_audit"], res["p99_audit"] = pct(la, 50), pct(la, 99)

        # Ramp: creates at increasing rates until a step is not sustained.
        steps = []
        step_done = []  # each step's creates, for the server-side latency below
        sustained = 0
        for i, rate in enumerate(args.ramp):
            cnt = max(int(rate * args.ramp_secs), 20)
            nms = [f"ramp{i}-{j:05d}" for j in range(cnt)]
            r, a = run_at_rate([lambda nm=nm: kube.create(ns, nm) for nm in nms], rate, threads=args.threads)
            d = [("create", nm, rv, t0, t1) for nm, (rv, t0, t1) in zip(nms, r)]
            step_done.append(d)
            wait_seen(c, ns, d, 60)
            lr, _, miss = match(c, ns, d)
            fifth = max(len(d) // 5, 1)
            first = match(c, ns, d[:fifth])[0]
            last = match(c, ns, d[-fifth:])[0]
            grow = pct(last, 50) > pct(first, 50) + 10
            kept_up = miss == 0 and not grow
            reached = a >= 0.9 * rate
            steps.append({"rate": rate, "achieved": a, "p50": pct(lr, 50), "p99": pct(lr, 99),
                          "missing": miss, "lag_grows": grow, "ok": kept_up, "reached": reached})
            # Clean the step's objects up (their deletes are not measured) before the next step.
            bulk(kube, lambda nm: kube.delete(ns, nm), nms, threads=args.threads)
            wait_seen(c, ns, [("delete", nm, 0, 0, 0) for nm in nms], 60)
            if not kept_up:
                break
            sustained = max(sustained, a)
            if not reached:
                # The driver + API server cannot go faster on this machine; the listener kept up.
                break
        # Server-side latency of each step (the API server's ResponseComplete time, as for the
        # latency scenario): read once after the ramp, the audit log being written in batches.
        if steps:
            time.sleep(1.5)
            at = audit_times(args.audit_log, ns)
            for s, d in zip(steps, step_done):
                ls, _, _ = match(c, ns, [(op, nm, rv, at[(op, nm)], at[(op, nm)])
                                         for op, nm, rv, _, _ in d if (op, nm) in at])
                s["audit_matched"], s["p50_audit"], s["p99_audit"] = len(ls), pct(ls, 50), pct(ls, 99)
                s["audit_expected"] = len(d)
        res["ramp"] = steps
        res["sustained_eps"] = sustained
        res["driver_bound"] = bool(steps) and all(s["ok"] for s in steps)  # never fell behind
        res["cpu_total_s"] = c.cpu_s()
        res["cpu_scenario_s"] = res["cpu_total_s"] - cpu0
        m = c.mem_kib()
        res["rss_mib"], res["hwm_mib"] = m["VmRSS"] / 1024, m["VmHWM"] / 1024
        res["load_after"] = loadavg()
    finally:
        c.stop()
    return res


def scale(c, kube, ns, k):
    c.start(f"scale{k}", ns)
    res = {"contender": c.name, "objects": k, "load_before": loadavg()}
    try:
        def all_seen():
            return sum(1 for key in c.events if key[0] == ns and key[1].startswith("s-")) >= k
        if not c.wait_for(all_seen, 600, f"{k} initial objects"):
            raise RuntimeError(f"{c.name}: not all {k} objects seen in 600 s")
        t_all = max(min(e[0] for e in evs) for key, evs in c.events.items() if key[1].startswith("s-"))
        res["startup_s"] = (t_all - c.t_spawn) / 1e9
        time.sleep(3)  # settle
        m = c.mem_kib()
        res["rss_mib"], res["hwm_mib"] = m["VmRSS"] / 1024, m["VmHWM"] / 1024
        res["cpu_s"] = c.cpu_s()
    finally:
        c.stop()
    return res


def idle(c, kube, ns):
    kube.ensure_namespace(ns)
    c.start("idle", ns)
    try:
        ready(c, kube, ns)
        time.sleep(3)
        m = c.mem_kib()
        return {"contender": c.name, "rss_mib": m["VmRSS"] / 1024, "hwm_mib": m["VmHWM"] / 1024}
    finally:
        c.stop()


def populate(kube, ns, k, threads):
    kube.ensure_namespace(ns)
    have = kube.count(ns)
    if have >= k:
        return
    t = time.time()
    bulk(kube, lambda i: kube.create(ns, f"s-{i:05d}", i), range(have, k), threads=threads)
    print(f"# populated {ns} with {k} objects in {time.time() - t:.1f} s", file=sys.stderr)


# --- main ---------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    ap.add_argument("--contenders", required=True, help="JSON file: [{name, cmd: [...], env: {}}], {NS} in cmd is replaced")
    ap.add_argument("--only", default="", help="comma-separated contender names to run (default all)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3, help="rounds of the e2e + idle tests (contenders interleaved)")
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--ramp", default="100,200,400,800")
    ap.add_argument("--ramp-secs", type=float, default=4)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--scale", default="1000,10000", help="existing-object counts for the scale test ('' = skip)")
    ap.add_argument("--idle", default="", help="contender name(s) for the idle-RSS test")
    ap.add_argument("--logdir", required=True)
    ap.add_argument("--audit-log", default="", help="kube-apiserver audit log (JSON) for the server-side accept time; "
                    "the files it was rotated into (audit*.log beside it) are read too")
    ap.add_argument("--out", required=True, help="results JSON file")
    args = ap.parse_args()
    args.ramp = [float(x) for x in args.ramp.split(",") if x]
    kube = Kube(args.kubeconfig)
    specs = json.load(open(args.contenders))
    only = [x for x in args.only.split(",") if x]
    contenders = []
    for s in specs:
        if only and s["name"] not in only:
            continue
        c = Contender(s["name"], s["cmd"], s.get("env", {}), args.logdir)
        c.scale = s.get("scale", True)
        contenders.append(c)
    os.makedirs(args.logdir, exist_ok=True)
    run_id = str(int(time.time()))[-6:]
    results = {"e2e": [], "scale": [], "idle": [], "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "args": {k: v for k, v in vars(args).items()}}

    def save():
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    for rnd in range(args.repeat):
        for c in contenders:
            if c.name in args.idle.split(","):
                continue
            print(f"# e2e round {rnd + 1}/{args.repeat}: {c.name} (load {' '.join(loadavg())})", file=sys.stderr)
            try:
                r = latency_and_ramp(c, kube, args, f"{run_id}-{rnd}")
            except Exception as e:  # keep going with the other contenders
                r = {"contender": c.name, "error": str(e)}
            r["round"] = rnd + 1
            print(f"#   {json.dumps(r)}", file=sys.stderr)
            results["e2e"].append(r)
            save()

        for c in contenders:
            if c.name not in args.idle.split(","):
                continue
            print(f"# idle round {rnd + 1}: {c.name}", file=sys.stderr)
            try:
                r = idle(c, kube, f"idle-{run_id}-{rnd}")
            except Exception as e:
                r = {"contender": c.name, "error": str(e)}
            r["round"] = rnd + 1
            print(f"#   {json.dumps(r)}", file=sys.stderr)
            results["idle"].append(r)
            save()

    for k in [int(x) for x in args.scale.split(",") if x]:
        ns = f"scale-{k}"
        populate(kube, ns, k, args.threads)
        for c in contenders:
            if c.name in args.idle.split(",") or not c.scale:
                continue
            print(f"# scale {k}: {c.name} (load {' '.join(loadavg())})", file=sys.stderr)
            try:
                r = scale(c, kube, ns, k)
            except Exception as e:
                r = {"contender": c.name, "objects": k, "error": str(e)}
            print(f"#   {json.dumps(r)}", file=sys.stderr)
            results["scale"].append(r)
            save()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    save()


if __name__ == "__main__":
    main()
