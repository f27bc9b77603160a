#!/usr/bin/env python3
"""Fault-injection reliability runs (issue 11, partial; run by bench/reliability.sh).

Each scenario starts `kubelisten run` with the bench-listener guest (it logs one BENCH line per
event it sees), drives a steady stream of creates/updates/deletes over a pool of objects, injects
one fault a third of the way in, stops the stream, and checks what the listener saw against the
API server's final state (read back with GETs after the stream):

  sent        changes the API server accepted (2xx answers)
  delivered   distinct (object, kind, resourceVersion) events the listener saw
  lost        objects whose final state (last resourceVersion, or its deletion) never reached the
              listener as the object's last event
  duplicated  events seen more than once (same object, kind and resourceVersion)

Faults: kube-apiserver killed and restarted; etcd killed and restarted; guest faults (the
`faulty` guest after bench-listener in the chain, 1 in 10 changes annotated with a fault class:
panic, unreachable, oob, stack-overflow, error). Then a bounded soak with RSS sampled every 5 s.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402

FAULTS = ["panic", "unreachable", "oob", "stack-overflow", "error"]


def kl_env():
    """kubelisten's environment: its health/metrics server on a free loopback port, so runs never
    collide with another kubelisten on the default 0.0.0.0:8080."""
    import socket
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    return {"RUST_LOG": "info", "KUBELISTEN_HEALTH_BIND": "127.0.0.1", "KUBELISTEN_HEALTH_PORT": str(port)}


def env_file(run_dir):
    out = {}
    for line in open(os.path.join(run_dir, "env")):
        if "=" in line and not line.startswith("#"):
            k, _, v = line.strip().partition("=")
            out[k] = v.strip("'")
    return out


def restart_apiserver(args):
    sh = os.path.join(args.root, "deploy/local/cluster.sh")
    subprocess.run([sh, "stop-apiserver"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(args.outage)
    subprocess.run([sh, "start-apiserver"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def restart_etcd(args):
    """SIGKILL etcd, wait, start it again with the same command line (same data dir and ports),
    and record the new PID in the run dir's env file so `cluster.sh down` still stops it."""
    env = env_file(args.run_dir)
    pid = int(env["ETCD_PID"])
    cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[:-1]
    proc_env = dict(x.split(b"=", 1) for x in open(f"/proc/{pid}/environ", "rb").read().split(b"\0") if b"=" in x)
    os.kill(pid, signal.SIGKILL)
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        time.sleep(0.05)
    time.sleep(args.outage)
    log = open(os.path.join(args.run_dir, "logs", "etcd.log"), "ab")
    p = subprocess.Popen(cmd, env=proc_env, stdout=log, stderr=log, start_new_session=True)
    path = os.path.join(args.run_dir, "env")
    text = open(path).read().replace(f"ETCD_PID={pid}", f"ETCD_PID={p.pid}")
    open(path, "w").write(text)


class Stream:
    """A steady stream of changes over a pool of objects, at a fixed rate, in one thread."""

    def __init__(self, kube, ns, rate, pool, fault_every=0):
        self.kube, self.ns, self.rate, self.pool, self.fault_every = kube, ns, rate, pool, fault_every
        self.sent = 0
        self.failed = 0
        self.noop = 0
        self.names = set()
        self.faulted = set()  # objects that were given a fault annotation at least once
        self.stop = threading.Event()
        self.rng = random.Random(7)
        self.i = 0

    def _annot(self):
        self.i += 1
        if self.fault_every and self.i % self.fault_every == 0:
            return {"kubelisten.dev/fault": FAULTS[(self.i // self.fault_every) % len(FAULTS)]}
        return {}

    def one(self):
        name = f"o-{self.rng.randrange(self.pool):04d}"
        op = self.rng.random()
        k = self.kube
        try:
            if op < 0.15:
                st, _, _, _ = k.request("DELETE", k.path(self.ns, name))
                if st == 404:  # already gone: nothing changed
                    self.noop += 1
                    return
                if st >= 300:
                    raise RuntimeError(st)
            else:
                ann = self._annot()
                if ann:
                    self.faulted.add(name)
                body = {"metadata": {"annotations": ann or {"kubelisten.dev/fault": None}},
                        "spec": {"count": self.i}}
                st, _, _, _ = k.request("PATCH", k.path(self.ns, name), body, "application/merge-patch+json")
                if st == 404:
                    obj = {"apiVersion": f"{driver.GROUP}/{driver.VERSION}", "kind": driver.KIND,
                           "metadata": {"name": name, "namespace": self.ns, "annotations": ann},
                           "spec": {"message": "r", "count": self.i}}
                    st, _, _, _ = k.request("POST", k.path(self.ns), obj)
                if st >= 300:
                    raise RuntimeError(st)
            self.sent += 1
            self.names.add(name)
        except Exception:
            self.failed += 1
            time.sleep(0.05)

    def run(self):
        t0 = time.monotonic()
        n = 0
        while not self.stop.is_set():
            due = t0 + n / self.rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            self.one()
            n += 1


def final_state(kube, ns, names):
    """name -> resourceVersion (int) or None when the object no longer exists."""
    out = {}
    for nm in names:
        for _ in range(50):
            try:
                st, body, _, _ = kube.request("GET", kube.path(ns, nm))
                break
            except Exception:
                time.sleep(0.2)
        out[nm] = int(body["metadata"]["resourceVersion"]) if st == 200 else None
    return out


def check(c, ns, final, fault_names=()):
    seen = {}
    dup = 0
    delivered = 0
    for (ens, nm), evs in c.events.items():
        if ens != ns or nm == "ready-sentinel":
            continue
        keys = [(k, rv) for _, k, rv in evs]
        delivered += len(set(keys))
        if nm not in fault_names:
            dup += len(keys) - len(set(keys))
        seen[nm] = evs
    lost = []
    for nm, rv in final.items():
        evs = seen.get(nm, [])
        if rv is None:
            if evs and evs[-1][1] != "delete":
                lost.append(nm)
        else:
            if not evs or evs[-1][1] == "delete" or evs[-1][2] != rv:
                lost.append(nm)
    return delivered, lost, dup


def scenario(name, args, kube, fault=None, chain_extra=(), fault_every=0, extra_flags=()):
    ns = f"rel-{name}-{int(time.time()) % 100000}"
    kube.ensure_namespace(ns)
    cmd = [args.kl, "run", "--log-format", "json", "--cache-dir", args.cache, "--crd", args.crd,
           "-l", f"{args.guests}/bench-listener.wasm:classname", *chain_extra, "-n", "{NS}", *extra_flags]
    c = driver.Contender(name, cmd, kl_env(), args.logdir).start("rel", ns)
    res = {"fault": name}
    try:
        driver.ready(c, kube, ns)
        s = Stream(kube, ns, args.rate, args.pool, fault_every)
        th = threading.Thread(target=s.run)
        th.start()
        time.sleep(args.duration / 3)
        t_fault = time.time()
        if fault:
            fault(args)
        res["fault_s"] = round(time.time() - t_fault, 2)
        time.sleep(args.duration * 2 / 3)
        s.stop.set()
        th.join()
        final = final_state(kube, ns, sorted(s.names))
        # Wait until the listener has caught up with the final state (or give up after 120 s).
        faulty = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            c.poll_lines()
            _, lost, _ = check(c, ns, final)
            if not lost:
                break
            time.sleep(0.5)
        c.poll_lines()
        if fault_every:
            # Events of objects annotated with a fault are retried by design: repeats are expected.
            faulty = s.faulted
        delivered, lost, dup = check(c, ns, final, faulty)
        res.update(sent=s.sent, failed_requests=s.failed, noop_deletes=s.noop, delivered=delivered, lost=len(lost),
                   lost_names=lost[:10], duplicated=dup, objects=len(final), host_alive=c.alive())
        if fault_every:
            res["objects_with_retried_faults"] = len(faulty)
            res["traps_logged"] = sum(1 for line in open(c.err_path, errors="replace") if "listener trapped" in line)
    finally:
        c.stop()
    return res


def soak(args, kube):
    ns = f"rel-soak-{int(time.time()) % 100000}"
    kube.ensure_namespace(ns)
    cmd = [args.kl, "run", "--log-format", "json", "--cache-dir", args.cache, "--crd", args.crd,
           "-l", f"{args.guests}/bench-listener.wasm:classname", "-n", "{NS}"]
    c = driver.Contender("soak", cmd, kl_env(), args.logdir).start("soak", ns)
    try:
        driver.ready(c, kube, ns)
        s = Stream(kube, ns, args.rate, args.pool)
        th = threading.Thread(target=s.run)
        th.start()
        samples = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.soak:
            time.sleep(5)
            samples.append((round(time.monotonic() - t0), c.mem_kib()["VmRSS"] / 1024))
        s.stop.set()
        th.join()
        rss = [x for _, x in samples]
        half = len(rss) // 2
        first_half = sum(rss[:half]) / max(half, 1)
        second_half = sum(rss[half:]) / max(len(rss) - half, 1)
        return {"seconds": args.soak, "sent": s.sent, "samples": samples, "first": rss[0], "last": rss[-1],
                "max": max(rss), "mean_first_half": first_half, "mean_second_half": second_half,
                "trend_up": second_half > first_half * 1.10, "cpu_s": c.cpu_s(), "host_alive": c.alive()}
    finally:
        c.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--kl", required=True)
    ap.add_argument("--guests", required=True)
    ap.add_argument("--crd", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--logdir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=float, default=40)
    ap.add_argument("--pool", type=int, default=100)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--outage", type=float, default=3)
    ap.add_argument("--soak", type=float, default=60)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    os.makedirs(args.logdir, exist_ok=True)
    kube = driver.Kube(os.environ["KUBECONFIG"])
    plan = [
        ("none", dict()),
        ("apiserver-restart", dict(fault=restart_apiserver)),
        ("etcd-restart", dict(fault=restart_etcd)),
        ("guest-faults-1-in-10", dict(chain_extra=("-l", f"{args.guests}/faulty.wasm:classname"), fault_every=10,
                                      extra_flags=("--retry-attempts", "2", "--retry-base-ms", "10"))),
    ]
    only = [x for x in args.only.split(",") if x]
    results = {"scenarios": [], "args": vars(args)}
    for name, kw in plan:
        if only and name not in only:
            continue
        print(f"# reliability: {name} (load {' '.join(driver.loadavg())})", file=sys.stderr)
        try:
            r = scenario(name, args, kube, **kw)
        except Exception as e:
            r = {"fault": name, "error": repr(e)}
        print(f"#   {json.dumps(r)}", file=sys.stderr)
        results["scenarios"].append(r)
        json.dump(results, open(args.out, "w"), indent=1)
    if args.soak > 0 and (not only or "soak" in only):
        print(f"# soak {args.soak:.0f} s", file=sys.stderr)
        try:
            results["soak"] = soak(args, kube)
        except Exception as e:
            results["soak"] = {"error": repr(e)}
        print(f"#   {json.dumps(results['soak'])}", file=sys.stderr)
    json.dump(results, open(args.out, "w"), indent=1)

    print("| fault | changes accepted | requests failed (outage) | deletes of absent objects | objects | events delivered | lost | duplicated | host alive | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results["scenarios"]:
        if "error" in r:
            print(f"| {r['fault']} | error: {r['error']} |")
            continue
        notes = f"fault took {r['fault_s']} s"
        if "objects_with_retried_faults" in r:
            notes += (f"; {r['objects_with_retried_faults']} objects hit an injected fault (retried by design, their "
                      f"repeats not counted as duplicates); {r['traps_logged']} traps logged")
        if r["lost"]:
            notes += f"; lost: {', '.join(r['lost_names'])}"
        print(f"| {r['fault']} | {r['sent']} | {r['failed_requests']} | {r.get('noop_deletes', '-')} | {r['objects']} | {r['delivered']} | {r['lost']} "
              f"| {r['duplicated']} | {r['host_alive']} | {notes} |")
    s = results.get("soak")
    if s and "error" not in s:
        print(f"\nSoak: {s['seconds']:.0f} s, {s['sent']} changes; RSS MiB first {s['first']:.1f}, last {s['last']:.1f}, "
              f"max {s['max']:.1f}; mean of first half {s['mean_first_half']:.1f}, second half {s['mean_second_half']:.1f}; "
              f"upward trend (> 10%): {s['trend_up']}; host alive: {s['host_alive']}")
    elif s:
        print(f"\nSoak: error {s['error']}")


if __name__ == "__main__":
    main()
