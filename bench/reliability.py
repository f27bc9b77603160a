#!/usr/bin/env python3
"""Fault-injection reliability runs (issue 11; run by bench/reliability.sh).

Each scenario starts `kubelisten run` with the bench-listener guest (it logs one BENCH line per
event it sees, with ` initial` appended for events from an initial list or relist), drives a
steady stream of creates/updates/deletes over a pool of objects, injects one fault a third of the
way in (leader-kill: two kills, from a quarter of the way in), stops the stream, and checks what
the listener saw against every write the stream made and the API server's final state (read back
with GETs after the stream). The events of every kubelisten process of a scenario are merged per
object in the order the listener saw them (its wall-clock timestamp). Processes are numbered in the order they led: in leader-kill
[A, B, A restarted], and process k > 0 took over from process k - 1.

  sent        changes the API server accepted (2xx answers)
An object is a uid: a re-created object of the same name is another object (the host orders
events per namespace/name, which orders them per uid too, as kopf does). The stream records the
uid and resourceVersion of every create and update it wrote (from the answer) and the uid of
every object it deleted.

  delivered   distinct (uid, resourceVersion, is a delete) events the listener saw, without replays
  replayed    initial `create` events of a process that took over from another (leader-kill,
              every process k > 0): a new leader lists every object and delivers it as an initial
              create, by design. They are counted here and not as duplicates.
  out of sequence
              events that break their object's life, in merged order: a resourceVersion lower than
              one delivered before; a process's first event for the object that is not a create,
              or a second create; anything but a repeat of its delete after a delete; a delete of
              an object that still exists.
  lost        names of objects whose final state did not reach the listener: the object that
              exists must have been seen, with its final resourceVersion as its last event; every
              object that is gone, and every object the stream created or deleted, must have been
              seen and have a delete as its last event. Exceptions (counted on their own):
              - leader-kill's "unseen deletes", per takeover: an object whose last event came
                from process k - 1, that no process k or later saw, and whose DELETE came before
                (in the stream's order of writes) the write of process k's first live event, was
                deleted before k listed, so no process could deliver its delete (a new leader
                knows only what it lists). Its DELETE must also have been answered no earlier
                than UNSEEN_SLACK s (REL_UNSEEN_SLACK) before process k - 1 was killed: one
                answered earlier was dropped by a live leader, and is lost. With no process k, no
                live event of k, or no known kill or answer time, the object is lost;
              - objects that lived only in a gap, never seen: created no earlier than the slack
                before a kill and deleted before the next leader's first live event; or created
                and deleted between the last live event before a relist and the relist's list.
  duplicated  an event whose (uid, resourceVersion, is a delete) was delivered before, by the same
              process or an earlier one, other than a replay. In the guest-fault scenarios the
              retries of the versions written with a fault (and of the deletes of objects whose
              last version had one) are expected: at most --retry-attempts - 1 repeats each.
  versions missing
              accepted creates/updates that never arrived, in the scenarios where the host must
              deliver every one: every single-process scenario, and the last leader of leader-kill
              after its list. Exempt: the versions a relist folds (written between the last live
              event before it and its list, and not the object's state at the list), and the
              versions merged into a later one of the same object (more than 8 of its events
              waiting), as many as the host's kubelisten_merged_events_total. The list versions
              come from the watcher's `listed` debug lines.
After the listener has caught up, the suite reads on until no event came for QUIET s (at most
QUIET_MAX s) and checks again, so a late duplicate or a spurious delete is seen too.

Faults: none; kube-apiserver stopped and restarted; etcd killed and restarted; the leader of two
replicas SIGKILLed, the killed replica restarted as a standby, and the new leader SIGKILLed too
(Lease lock, and ConfigMap lock in leader-kill-configmap); the module hot-swapped to bad
versions (not wasm, a core module) and back, then to a different good build; guest faults (the
`faulty` guest after bench-listener in the chain, 1 in 10 changes annotated with a fault class:
panic, unreachable, oob, stack-overflow, loop, memory, sleep, error); a guest crash loop (the
same chain, and a burst of 40 consecutive changes with a trapping fault drives `faulty` into
crash-loop backoff, `--crash-loop-threshold 3`; every other event waits the backoff out). Then
a bounded soak with RSS sampled every 5 s: its least-squares slope after a warm-up must stay
below an absolute bound (trend()), and the objects the host keeps (kubelisten_watch_objects) must
be the objects that exist once the stream stops.

Exits 1 when any check fails (a scenario lost objects, had duplicates, events out of sequence or
missing versions, errored, its host died, a bad module was not rejected, a leader-kill run had
fewer than two takeovers, the guest faults were not contained as their classes with the expected
retries, the soak's RSS slope is above its bound or the host keeps objects that no longer exist);
the table's last line says why.
"""
import argparse
import base64
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402

FAULTS = ["panic", "unreachable", "oob", "stack-overflow", "loop", "memory", "sleep", "error"]
# The classes that trap (an `error` return does not): a burst of them drives a crash loop.
TRAPS = [f for f in FAULTS if f != "error"]
# guest-crash-loop: changes in the burst, each with a trapping fault, and the crash-loop limits
# that make them engage the backoff within the stream.
CRASH_BURST = 40
# leader-kill: short lease timings (host/tests/leader_election.rs uses 3/2/0.5 s), so the
# takeover happens within the stream.
LEASE, RENEW, RETRY = 4, 3, 0.5
# leader-kill: an unseen delete's DELETE must have been answered no earlier than this many
# seconds before the kill of the leader that last saw the object (check()); one answered earlier
# was dropped by a leader that was still alive, and is lost. A live leader gets a delete from its
# watch and delivers it within milliseconds (no delay in the bench-listener chain), and every
# unseen delete observed so far was answered 0.02 to 4.4 s *after* its kill. 1 s is far above
# that delivery time, so scheduling jitter on a loaded 2-core machine (CI runs the debug binary)
# does not turn an event that was in flight at the kill into a false loss, and still far below
# the seconds a leader that dropped deletes while it led would show. The kill time is taken
# right after the killed process was reaped, a few milliseconds after the signal, which only
# makes the bound stricter by that much. REL_UNSEEN_SLACK (--unseen-slack) overrides it.
UNSEEN_SLACK = 1.0


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def kl_env():
    """kubelisten's environment: its health/metrics server on a free loopback port, so runs never
    collide with another kubelisten on the default port 8080, and no /status listener (its
    default, 127.0.0.1:8081, would be taken by the first replica); info logs, and the watcher's
    debug line for each list. Returns (env, port)."""
    port = free_port()
    # The watcher's `listed` debug lines give the resourceVersion of every list (lists_of()).
    return {"RUST_LOG": "info,kubelisten::watch::watcher=debug", "KUBELISTEN_HEALTH_BIND": "127.0.0.1",
            "KUBELISTEN_HEALTH_PORT": str(port), "KUBELISTEN_STATUS_BIND": "off"}, port


def health(port, path):
    """(HTTP status, body) of the health server (or the status listener), or (None, error) when
    it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


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
    while True:
        try:
            if open(f"/proc/{pid}/stat").read().split()[2] == "Z":
                break
        except FileNotFoundError:
            break  # reaped
        time.sleep(0.05)
    time.sleep(args.outage)
    log = open(os.path.join(args.run_dir, "logs", "etcd.log"), "ab")
    p = subprocess.Popen(cmd, env=proc_env, stdout=log, stderr=log, start_new_session=True)
    path = os.path.join(args.run_dir, "env")
    text = open(path).read().replace(f"ETCD_PID={pid}", f"ETCD_PID={p.pid}")
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
    # Back only once etcd answers its health check (the scenario's checks read through it).
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{env['ETCD_URL']}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if p.poll() is not None:
            raise RuntimeError(f"etcd exited {p.returncode} after its restart (see logs/etcd.log)")
        if time.monotonic() > deadline:
            raise RuntimeError("etcd not healthy 60 s after its restart")
        time.sleep(0.2)


class Stream:
    """A steady stream of changes over a pool of objects, at a fixed rate, in one thread."""

    def __init__(self, kube, ns, rate, pool, fault_every=0):
        self.kube, self.ns, self.rate, self.pool, self.fault_every = kube, ns, rate, pool, fault_every
        self.sent = 0
        self.failed = 0
        self.noop = 0
        self.names = set()  # names with an accepted write
        self.tried = set()  # names of every request, accepted or not: what final_state() reads
        self.faulted = set()  # objects that were given a fault annotation at least once
        # (name, resourceVersion) of the versions written with a fault annotation -> the fault
        self.fault_versions = {}
        # The place of each accepted write in the stream: its index among the accepted writes. The
        # stream is the only writer of its objects and waits for each answer before the next
        # request, so this order is the order of the writes' resourceVersions.
        self.write_order = {}  # resourceVersion of a create/update -> its place
        self.versions = {}  # resourceVersion of a create/update -> (name, uid, "create" or "update")
        self.created = {}  # (name, uid) of a created object -> the resourceVersion of its create
        self.created_at = {}  # (name, uid) -> time.monotonic() when the create was answered
        self.delete_order = {}  # (name, uid) of a deleted object -> the place of its DELETE
        self.deleted_at = {}  # (name, uid) -> time.monotonic() when the DELETE was answered
        self.stop = threading.Event()
        self.rng = random.Random(7)
        self.i = 0
        self.burst_left = 0  # changes still to write with a trapping fault (guest-crash-loop)

    def burst(self, n):
        """Gives each of the next `n` creates/updates a trapping fault."""
        self.burst_left = n

    def _annot(self):
        self.i += 1
        if self.burst_left > 0:
            self.burst_left -= 1
            return {"kubelisten.dev/fault": TRAPS[self.burst_left % len(TRAPS)]}
        if self.fault_every and self.i % self.fault_every == 0:
            return {"kubelisten.dev/fault": FAULTS[(self.i // self.fault_every) % len(FAULTS)]}
        return {}

    def one(self):
        name = f"o-{self.rng.randrange(self.pool):04d}"
        op = self.rng.random()
        k = self.kube
        # Read back at the end even when its request fails: a write whose answer was lost in an
        # outage may still have been applied.
        self.tried.add(name)
        try:
            if op < 0.15:
                st, resp, _, _ = k.request("DELETE", k.path(self.ns, name))
                if st == 404:  # already gone: nothing changed
                    self.noop += 1
                    return
                if st >= 300:
                    raise RuntimeError(st)
                # A custom resource's DELETE answers a Status whose details carry the uid.
                resp = resp or {}
                uid = (resp.get("details") or {}).get("uid") or (resp.get("metadata") or {}).get("uid")
                self.delete_order[(name, uid)] = self.sent
                self.deleted_at[(name, uid)] = time.monotonic()
            else:
                ann = self._annot()
                if ann:
                    self.faulted.add(name)
                body = {"metadata": {"annotations": ann or {"kubelisten.dev/fault": None}},
                        "spec": {"count": self.i}}
                st, resp, _, _ = k.request("PATCH", k.path(self.ns, name), body, "application/merge-patch+json")
                kind = "update"
                if st == 404:
                    obj = {"apiVersion": f"{driver.GROUP}/{driver.VERSION}", "kind": driver.KIND,
                           "metadata": {"name": name, "namespace": self.ns, "annotations": ann},
                           "spec": {"message": "r", "count": self.i}}
                    st, resp, _, _ = k.request("POST", k.path(self.ns), obj)
                    kind = "create"
                if st >= 300:
                    raise RuntimeError(st)
                rv = int(resp["metadata"]["resourceVersion"])
                uid = resp["metadata"]["uid"]
                if ann:
                    self.fault_versions[(name, rv)] = ann["kubelisten.dev/fault"]
                self.write_order[rv] = self.sent
                self.versions[rv] = (name, uid, kind)
                if kind == "create":
                    self.created[(name, uid)] = rv
                    self.created_at[(name, uid)] = time.monotonic()
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
    """name -> (uid, resourceVersion as int), or None when no object of that name exists."""
    out = {}
    for nm in names:
        # Only a 200 or a 404 says what exists: anything else (the API server reconnecting to
        # etcd after a fault, say) is retried, for up to 60 s.
        deadline = time.monotonic() + 60
        st = body = None
        while True:
            try:
                st, body, _, _ = kube.request("GET", kube.path(ns, nm))
            except Exception:
                st = body = None
            if st in (200, 404):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"reading {ns}/{nm}: no answer but {st} for 60 s")
            time.sleep(0.2)
        out[nm] = (body["metadata"]["uid"], int(body["metadata"]["resourceVersion"])) if st == 200 else None
    return out


def merged(contenders, ns):
    """name -> [(t, kind, rv, initial, process, uid)], in the order the listener saw them (wall
    clock). `process` is the index in `contenders`, which is in the order the processes led."""
    out = {}
    for i, c in enumerate(contenders):
        c.poll_lines()
        for (ens, nm), evs in c.events.items():
            if ens != ns or nm == "ready-sentinel":
                continue
            out.setdefault(nm, []).extend((t, k, rv, init, i, uid) for t, k, rv, init, uid in evs)
    for evs in out.values():
        evs.sort(key=lambda e: e[0])  # stable: one process's events of one object keep their order
    return out


def relist_gaps(seen, lists):
    """[(process, lo, L)]: one per list of a process after its first (a relist, after a 410).
    `lists` is lists_of()'s, per process: the resourceVersion L of each list in the order they
    were made. A relist delivers each object's state at L; the versions written between `lo`,
    the highest resourceVersion the process delivered live before it (or its previous list's),
    and L may be folded into that state (intermediate versions skipped, an object created and
    deleted in between never seen). Everything else must arrive."""
    live = {}  # process -> resourceVersions of its live (not listed) events
    for evs in seen.values():
        for _, _, rv, initial, proc, _ in evs:
            if not initial:
                live.setdefault(proc, []).append(rv)
    gaps = []
    for proc, ls in sorted((lists or {}).items()):
        for prev, rv_list in zip(ls, ls[1:]):
            lo = max([prev] + [rv for rv in live.get(proc, []) if rv <= rv_list])
            gaps.append((proc, lo, rv_list))
    return gaps


def check(seen, final, fault_versions=(), stream=None, failed_attempts=(), kill_times=(),
          unseen_slack=UNSEEN_SLACK, retry_attempts=1, lists=None, every_version=None, merged_events=None):
    """Checks every object's events against the stream, per the module docstring. An object is
    a uid (a re-created object of the same name is another object).

    `seen` is merged()'s: the process index of an event is its place in the order the processes
    led, so process k > 0 took over from process k - 1 (leader-kill: [A, B, A restarted]).

    The sequence of each uid, in merged order (`sequence_errors`):
      - its resourceVersions never decrease (a repeat of one version is judged as a duplicate or
        a retry below);
      - the first event of each process for it is a `create` (process k > 0 lists it, or sees it
        created), and no process creates it again;
      - nothing but a repeat of its delete follows a delete, and an object that still exists
        gets no delete.
    Duplicates, per (uid, resourceVersion, is a delete):
      - the `initial` events of a process k > 0 are replays (it lists every object when it takes
        over); the same process delivering one twice is still a duplicate;
      - any other event is a duplicate when any process (itself or an earlier one) delivered
        the same key before; except the retries of a version written with a fault
        (`fault_versions`, or of a delete whose last state carried one): at most
        `retry_attempts` - 1 repeats per process; and (guest-crash-loop) one repeat per failed
        attempt in which the chain ran (`failed_attempts`: (name, kind, resourceVersion) ->
        attempts, from the host's log), counted as `reruns`.
    Loss, per uid: the object that exists must have been seen, with its final version as its
    last event; every object that is gone, every object the stream deleted (`stream.delete_order`)
    and every object it created (`stream.created`) must have been seen and have a delete as its
    last event. Exceptions:
      - an unseen delete at a takeover: the object is gone, its last event is not a delete, the
        last process that saw it is k - 1 (no event of process k or later), and its DELETE comes
        before the write of process k's first live event (its lowest resourceVersion) in the
        stream's order of accepted writes (`stream.delete_order` and `write_order`); and it was
        answered (`stream.deleted_at`) no earlier than `kill_times[k - 1] - unseen_slack` (a
        DELETE answered earlier came while k - 1 still led: it dropped it). Without process k,
        a live event of k, the kill time or the answer time, the object is lost;
      - an object never seen because it lived only in a gap (`unseen_objects`): created (its
        create answered, `stream.created_at`) no earlier than `kill_times[k - 1] -
        unseen_slack` and deleted before process k's first live event (a takeover), or created
        at a resourceVersion inside a relist's gap and deleted before the first write after it
        (relist_gaps()).
    Versions (`missing_versions`), for each process p in `every_version` (p -> rv): every
    create/update the stream wrote (`stream.versions`) with a resourceVersion above rv must be
    delivered, except the versions a relist of p folded (inside one of its gaps, not the
    object's latest version at the list, or of an object deleted in the gap: `versions_folded`),
    and the versions merged into a later version of the same object, waiting in its queue, at
    most `merged_events[p]` of them (the host's kubelisten_merged_events_total: each merge drops
    one version; `versions_merged`).

    Before the two-kill change the unseen-delete rule compared resourceVersions with the
    stream's next create/update after the DELETE, which made a false loss when that DELETE was
    followed directly by the DELETE that was k's first live event."""
    dup = delivered = replayed = replay_repeats = retried = reruns = late = 0
    reruns_left = dict(failed_attempts or {})
    replayed_by, replay_repeats_by = {}, {}  # process -> count
    repeats = {}  # (key, process) -> fault retries allowed so far
    sequence = []  # (what, where, detail)
    faulted_keys = {}  # key of a faulted event delivered -> its fault (None when unknown)
    by_key = {}  # (name, uid) -> its events, in merged order
    state = {}  # (name, uid) -> what the sequence check keeps
    got = {}  # uid -> the highest create/update resourceVersion delivered
    got_versions = set()  # create/update resourceVersions delivered
    fault_of = fault_versions.get if isinstance(fault_versions, dict) else (lambda k: None)
    for nm, evs in seen.items():
        earlier = {}  # (uid, rv, is a delete) -> processes that delivered it
        # Objects of one name in creation order: all versions of an object precede its successor's.
        gen = {uid: i for i, uid in enumerate(sorted({e[5] for e in evs}, key=lambda u: min(e[2] for e in evs if e[5] == u)))}
        newest = -1
        for e in evs:
            _, k, rv, initial, proc, uid = e
            by_key.setdefault((nm, uid), []).append(e)
            st = state.setdefault((nm, uid), {"max": -1, "procs": set(), "deleted": None, "prev": None, "last": None})
            is_del = k == "delete"
            key = (uid, rv, is_del)
            where = f"{nm}@{uid[:8]}"
            repeat = st["last"] == (k, rv)  # the same event again: judged as a duplicate or a retry
            if rv < st["max"]:
                sequence.append(("reordered", where, f"{k} {rv} after {st['max']}"))
            elif st["deleted"] is not None and not repeat:
                sequence.append(("after-delete", where, f"{k} {rv} after its delete {st['deleted']}"))
            elif proc not in st["procs"] and k != "create":
                sequence.append(("no-create", where, f"process {proc}'s first event is {k} {rv}"))
            elif proc in st["procs"] and k == "create" and not repeat:
                sequence.append(("created-again", where, f"create {rv} by process {proc} after its {st['last'][0]} "
                                                         f"{st['last'][1]}"))
            # The version a delete carries the fault of: its last state's (the delete event's
            # annotations are that state's).
            fv = (nm, st["prev"] if is_del else rv)
            faulted = fv in fault_versions
            procs = earlier.setdefault(key, set())
            allowance = repeats.get((key, proc), 0) < retry_attempts - 1
            if initial and proc > 0:
                # A process that took over lists every object: a replay by design.
                replayed += 1
                replayed_by[proc] = replayed_by.get(proc, 0) + 1
                if procs - {proc}:
                    replay_repeats += 1
                    replay_repeats_by[proc] = replay_repeats_by.get(proc, 0) + 1
                if proc in procs:
                    if faulted and allowance:
                        retried += 1
                        repeats[(key, proc)] = repeats.get((key, proc), 0) + 1
                    else:
                        dup += 1
            else:
                if not procs:
                    delivered += 1
                elif faulted and proc in procs and allowance:
                    retried += 1
                    repeats[(key, proc)] = repeats.get((key, proc), 0) + 1
                elif reruns_left.get((nm, k, rv), 0) > 0:
                    reruns_left[(nm, k, rv)] -= 1
                    reruns += 1
                else:
                    dup += 1
            if faulted:
                faulted_keys.setdefault(key, fault_of(fv))
            procs.add(proc)
            st["procs"].add(proc)
            st["max"] = max(st["max"], rv)
            st["last"] = (k, rv)
            if is_del:
                if st["deleted"] is None:
                    st["deleted"] = rv
            else:
                st["prev"] = rv
                got[uid] = max(got.get(uid, -1), rv)
                got_versions.add(rv)
            # An event of an object after an event of its same-named successor.
            late += gen[uid] < newest
            newest = max(newest, gen[uid])
    # Per process k > 0 (it took over from k - 1): the first live (not listed) event it
    # delivered, the one of the lowest resourceVersion, and its place in the stream. Its list was
    # older.
    first_live, first_live_at = {}, {}
    for nm, evs in seen.items():
        for e in evs:
            if e[4] > 0 and not e[3] and e[2] < first_live.get(e[4], (float("inf"),))[0]:
                first_live[e[4]] = (e[2], nm, e[1], e[5])
    for proc, (rv, nm, k, uid) in first_live.items():
        at = (stream.delete_order.get((nm, uid)) if k == "delete" else stream.write_order.get(rv)) if stream else None
        if at is not None:
            first_live_at[proc] = at
    write_order = stream.write_order if stream else {}
    delete_order = stream.delete_order if stream else {}
    deleted_at = stream.deleted_at if stream else {}
    created = getattr(stream, "created", {}) if stream else {}
    created_at = getattr(stream, "created_at", {}) if stream else {}
    gaps = relist_gaps(seen, lists)

    def place_after(rv_list):
        """The place in the stream of the first create/update written after resourceVersion
        rv_list (a DELETE before it was answered before that write)."""
        return min((p for v, p in write_order.items() if v > rv_list), default=float("inf"))

    def lived_in_a_gap(nm, uid):
        """Why an object no process saw may not have been seen (a takeover k, or "relist"), or
        None: see the docstring."""
        d = delete_order.get((nm, uid))
        if d is None:
            return None
        crv, t_created = created.get((nm, uid)), created_at.get((nm, uid))
        for _, lo, rv_list in gaps:
            if crv is not None and lo < crv <= rv_list and d < place_after(rv_list):
                return "relist"
        for k, at in sorted(first_live_at.items()):
            killed = kill_times[k - 1] if k - 1 < len(kill_times) else None
            if d < at and t_created is not None and killed is not None and t_created >= killed - unseen_slack:
                return k
        return None

    lost, unseen_deletes, unseen_by_takeover, unseen_detail, early_detail = set(), set(), {}, [], []
    never_seen, unseen_objects, unseen_objects_by = [], [], {}
    keys = set(by_key) | set(created) | set(delete_order) | {(nm, fin[0]) for nm, fin in final.items() if fin}
    for nm, uid in sorted(keys, key=lambda x: (x[0], x[1] or "")):
        evs = by_key.get((nm, uid), [])
        fin = final.get(nm)
        where = f"{nm}@{(uid or '?')[:8]}"
        if fin and uid == fin[0]:
            if not evs or evs[-1][1] == "delete" or evs[-1][2] != fin[1]:
                lost.add(nm)
            if any(e[1] == "delete" for e in evs):
                sequence.append(("delete-of-live", where, "a delete of an object that exists"))
        elif not evs:
            why = lived_in_a_gap(nm, uid)
            if why is None:
                lost.add(nm)  # created or deleted by the stream, gone, and never seen
                never_seen.append(where)
            else:
                unseen_objects.append((nm, uid, why))
                unseen_objects_by[why] = unseen_objects_by.get(why, 0) + 1
        elif evs[-1][1] != "delete":
            # This object is gone, but its delete never arrived.
            deleted = delete_order.get((nm, uid))
            answered = deleted_at.get((nm, uid))
            # The takeover after the last process that saw the object, and when the process
            # it took over from was killed.
            k = max(e[4] for e in evs) + 1
            killed = kill_times[k - 1] if k - 1 < len(kill_times) else None
            if k in first_live_at and deleted is not None and deleted < first_live_at[k]:
                # Deleted after the previous leader's last event for it, the next leader never
                # saw it, and the deletion is older than the next leader's first live event:
                # it was not in the next leader's list, so no process could deliver that
                # delete, provided the previous leader was no longer alive to deliver it.
                if answered is not None and killed is not None and answered >= killed - unseen_slack:
                    unseen_deletes.add(f"{nm}@{uid[:8]}")
                    unseen_detail.append((nm, uid, k))
                    unseen_by_takeover[k] = unseen_by_takeover.get(k, 0) + 1
                else:
                    # Answered while the previous leader still led (or not known to be
                    # later): that leader dropped the delete.
                    lost.add(nm)
                    if answered is not None and killed is not None:
                        early_detail.append((nm, uid, k, round(killed - answered, 2)))
            else:
                lost.add(nm)
    # Every accepted version, for the processes that must deliver them all.
    missing, folded, merge_candidates, merges = [], 0, [], 0
    versions = getattr(stream, "versions", None) if stream else None
    if every_version and versions:
        by_uid = {}  # uid -> the resourceVersions written
        for rv, (_, uid, _) in versions.items():
            by_uid.setdefault(uid, []).append(rv)
        for proc, frm in sorted(every_version.items()):
            pgaps = [(lo, rv_list) for p, lo, rv_list in gaps if p == proc]
            merges += (merged_events or {}).get(proc) or 0
            for rv in sorted(versions):
                if rv <= frm or rv in got_versions:
                    continue
                nm, uid, _ = versions[rv]
                gap = next(((lo, rv_list) for lo, rv_list in pgaps if lo < rv <= rv_list), None)
                if gap:
                    latest = max(v for v in by_uid[uid] if v <= gap[1])
                    d = delete_order.get((nm, uid))
                    if rv != latest or (d is not None and d < place_after(gap[1])):
                        folded += 1
                        continue
                if got.get(uid, -1) > rv:
                    merge_candidates.append((rv, nm))
                else:
                    missing.append((rv, nm))
    merged_ok = min(len(merge_candidates), merges)
    missing = sorted(missing + merge_candidates[merged_ok:])
    kinds = {}
    for what, _, _ in sequence:
        kinds[what] = kinds.get(what, 0) + 1
    faulted_by = {}
    for fault in faulted_keys.values():
        faulted_by[fault] = faulted_by.get(fault, 0) + 1
    return {"delivered": delivered, "lost": sorted(lost), "duplicated": dup, "replayed": replayed,
            "retried": retried, "reruns": reruns, "replay_repeats": replay_repeats, "unseen_deletes": sorted(unseen_deletes),
            "late_after_successor": late, "replayed_by_process": replayed_by,
            "replay_repeats_by_process": replay_repeats_by, "unseen_deletes_by_takeover": unseen_by_takeover,
            "first_live_by_process": {p: v[0] for p, v in first_live.items()}, "unseen_deletes_detail": unseen_detail,
            "early_deletes_detail": early_detail,
            "sequence_errors": [f"{what} {where}: {detail}" for what, where, detail in sequence],
            "sequence_by_kind": kinds, "never_seen": never_seen, "unseen_objects": unseen_objects,
            "unseen_objects_by": unseen_objects_by, "missing_versions": missing, "versions_folded": folded,
            "versions_merged": merged_ok, "merges_counted": merges, "relists": [(p, lo, rv_list) for p, lo, rv_list in gaps],
            "faulted_events": len(faulted_keys), "faulted_by_fault": faulted_by}


# settle(): after the listener has caught up, read on until no event came for QUIET s (at most
# QUIET_MAX s more), then check again, so that a late duplicate or a spurious delete is seen. The
# longest wait an event can have in the scenarios is a crash-loop backoff (1 s at most) and the
# retry backoffs (10 ms doubling), far below QUIET.
QUIET, QUIET_MAX = 3.0, 20.0


def settle(contenders, ns, final, stream, timeout=120, quiet=QUIET, quiet_max=QUIET_MAX, **kw):
    """Waits until the listener has caught up (nothing lost, no version missing) or `timeout`;
    then reads on for a quiet period and returns check() of everything seen. `kw` are check()'s
    keyword arguments; a callable one is called at each check (what it reads, the host's log or
    /metrics, grows)."""
    def run():
        return check(merged(contenders, ns), final, stream=stream,
                     **{k: (v() if callable(v) else v) for k, v in kw.items()})

    def lines():
        for c in contenders:
            c.poll_lines()
        return sum(len(v) for c in contenders for v in c.events.values())

    deadline = time.monotonic() + timeout
    while True:
        r = run()
        if not (r["lost"] or r["missing_versions"]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    t0 = last = time.monotonic()
    n = lines()
    while time.monotonic() - last < quiet and time.monotonic() - t0 < quiet_max:
        time.sleep(0.25)
        m = lines()
        if m != n:
            n, last = m, time.monotonic()
    r = run()
    r["quiet_s"] = round(time.monotonic() - t0, 1)
    return r


def lists_of(c):
    """The resourceVersion of each list a kubelisten process made, in order, from its `listed`
    debug lines (kl_env() turns them on): its first list, then each relist."""
    out = []
    for v in log_lines(c.err_path):
        f = v.get("fields", {})
        if f.get("message") == "listed":
            try:
                out.append(int(f.get("resource_version")))
            except (TypeError, ValueError):
                continue
    return out


def metric_sum(text, name):
    """The sum of every series of metric `name` in a Prometheus text exposition, or None when it
    has none."""
    total, found = 0.0, False
    for line in (text or "").splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] == name:
            try:
                total += float(value)
                found = True
            except ValueError:
                continue
    return total if found else None


def metrics(port):
    """The host's /metrics text, or None when it does not answer."""
    st, body = health(port, "/metrics")
    return body if st == 200 else None


def merged_events(port):
    """kubelisten_merged_events_total of the host on `port` (0 without a series; None when the
    host does not answer)."""
    text = metrics(port)
    if text is None:
        return None
    return int(metric_sum(text, "kubelisten_merged_events_total") or 0)


def base_cmd(args, listeners=True):
    cmd = [args.kl, "run", "--log-format", "json", "--cache-dir", args.cache, "--crd", args.crd, "-n", "{NS}"]
    if listeners:
        cmd += ["-l", f"{args.guests}/bench-listener.wasm:classname"]
    return cmd


def run_stream(args, kube, ns, fault_every, inject, stream=None, at=1 / 3, tail=0.0):
    """Streams for args.duration (with `stream`, or a new Stream); calls inject() at `at` of the
    duration (a third by default; the stream goes on). If the injection takes longer than the
    rest of the duration, the stream runs until it is done, and then `tail` seconds more (0 by
    default; leader-kill needs live events after its last takeover). Returns (stream, seconds
    the injection took, final state)."""
    s = stream or Stream(kube, ns, args.rate, args.pool, fault_every)
    th = threading.Thread(target=s.run)
    th.start()
    try:
        t0 = time.monotonic()
        time.sleep(args.duration * at)
        t_fault = time.monotonic()
        inject()
        fault_s = round(time.monotonic() - t_fault, 2)
        time.sleep(max(tail, args.duration - (time.monotonic() - t0)))
    finally:
        s.stop.set()
        th.join()
    return s, fault_s, final_state(kube, ns, sorted(s.tried))


def log_lines(path):
    """The JSON log lines of a kubelisten process."""
    for line in open(path, errors="replace"):
        try:
            yield json.loads(line)
        except ValueError:
            continue


def failed_attempts(c):
    """(name, kind, resourceVersion) -> number of failed attempts of that event in which the chain
    ran (a trap, an error, or a listener skipped after the ones before it ran), from the host's
    `listener call failed` log lines (one per failed attempt, rollbacks aside); and how many
    attempts were skipped in crash-loop backoff: those (`chain paused`, nobody ran) and the
    skipped calls among the failed ones."""
    out, skipped = {}, 0
    for v in log_lines(c.err_path):
        f = v.get("fields", {})
        msg = f.get("message")
        if msg and str(msg).startswith("chain paused"):
            skipped += 1
            continue
        if msg != "listener call failed" or f.get("export") == "rollback":
            continue
        skipped += f.get("outcome") == "skipped"
        name = str(f.get("object", "")).rsplit("/", 1)[-1]
        try:
            key = (name, f.get("event.kind"), int(f.get("resource_version") or 0))
        except ValueError:
            continue
        out[key] = out.get(key, 0) + 1
    return out, skipped


def flag(flags, name, default):
    """The value after `name` in a command line's flags, or `default`."""
    flags = list(flags)
    return flags[flags.index(name) + 1] if name in flags else default


# The trap class each fault of the `faulty` guest must be contained as (`error` returns an error,
# not a trap).
TRAP_OF = {"panic": "panic", "unreachable": "unreachable", "oob": "oob", "stack-overflow": "stack-overflow",
           "loop": "deadline", "sleep": "deadline", "memory": "memory"}


def fault_outcomes(c):
    """From the host's log: traps per class, `error` outcomes of listener calls and crash-loop
    backoffs."""
    traps, errors, backoffs = {}, 0, 0
    for v in log_lines(c.err_path):
        f = v.get("fields", {})
        msg = f.get("message")
        if msg == "listener trapped":
            traps[f.get("trap", "?")] = traps.get(f.get("trap", "?"), 0) + 1
        elif str(msg or "").startswith("listener in crash loop"):
            backoffs += 1
        elif msg == "listener call failed" and f.get("outcome") == "error" and f.get("export") != "rollback":
            errors += 1
    return traps, errors, backoffs


def delivery(r, s):
    """The delivery fields of a scenario's result, from check()'s `r`."""
    return dict(sent=s.sent, failed_requests=s.failed, noop_deletes=s.noop, delivered=r["delivered"],
                replayed=r["replayed"], lost=len(r["lost"]), lost_names=r["lost"][:10],
                never_seen=r["never_seen"][:10], late_after_successor=r["late_after_successor"],
                duplicated=r["duplicated"], objects=len(s.names),
                sequence_errors=len(r["sequence_errors"]), sequence_by_kind=r["sequence_by_kind"],
                sequence_examples=r["sequence_errors"][:5], missing_versions=len(r["missing_versions"]),
                missing_examples=r["missing_versions"][:10], versions_folded=r["versions_folded"],
                versions_merged=r["versions_merged"], merges_counted=r["merges_counted"], relists=r["relists"],
                unseen_objects=len(r["unseen_objects"]), quiet_s=r["quiet_s"],
                created=len(s.created), deletes=len(s.delete_order), versions_written=len(s.versions))


def scenario(name, args, kube, fault=None, chain_extra=(), fault_every=0, extra_flags=(), burst=0):
    """One host, a stream, `fault(args)` a third of the way in. `burst` (guest-crash-loop): the
    fault is instead that many consecutive changes with a trapping fault. The host must deliver
    every version the stream wrote (besides what a relist folds and the merges it counts)."""
    ns = f"rel-{name}-{int(time.time()) % 100000}"
    kube.ensure_namespace(ns)
    env, port = kl_env()
    cmd = base_cmd(args) + [*chain_extra, *extra_flags]
    c = driver.Contender(name, cmd, env, args.logdir).start("rel", ns)
    res = {"fault": name}
    attempts = int(flag(extra_flags, "--retry-attempts", 5))
    try:
        driver.ready(c, kube, ns)
        stream = Stream(kube, ns, args.rate, args.pool, fault_every)
        inject = (lambda: stream.burst(burst)) if burst else (lambda: fault and fault(args))
        s, res["fault_s"], final = run_stream(args, kube, ns, fault_every, inject, stream)
        kw = {}
        if burst:
            kw["failed_attempts"] = lambda: failed_attempts(c)[0]
        r = settle([c], ns, final, s, fault_versions=s.fault_versions, retry_attempts=attempts,
                   lists=lambda: {0: lists_of(c)}, every_version={0: 0},
                   merged_events=lambda: {0: merged_events(port)}, **kw)
        if burst:
            res["skipped_calls"] = failed_attempts(c)[1]
            res["reruns"] = r["reruns"]
        res.update(delivery(r, s), host_alive=c.alive())
        if fault_every or burst:
            res["retry_attempts"] = attempts
            res["objects_with_retried_faults"] = len(s.faulted)
            res["fault_versions"] = len(s.fault_versions)
            res["retried_deliveries"] = r["retried"]
            # Each faulted event (a version written with a fault, or the delete of an object
            # whose last version had one) fails every attempt: bench-listener, first in the
            # chain, sees it once per attempt.
            res["faulted_events"] = r["faulted_events"]
            res["faulted_by_fault"] = r["faulted_by_fault"]
            res["expected_retries"] = r["faulted_events"] * (attempts - 1)
            traps, errors, backoffs = fault_outcomes(c)
            res["traps_logged"] = sum(traps.values())
            res["traps_by_class"] = traps
            res["errors_logged"] = errors
            res["crash_loop_backoffs"] = backoffs
    finally:
        c.stop()
    return res


# --- leader-kill ---------------------------------------------------------------------------------


# The ConfigMap lock's record: client-go's legacy annotation, holding the LeaderElectionRecord
# as JSON (`holderIdentity`, ...), as host/src/watch/leader.rs writes it.
LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"
LOCK_NAME = "rel-leader"
KILLS = 2  # leader-kill kills the leader twice: A, then B (A restarted meanwhile)
MARGIN = 3.0  # s of stream after a takeover before the next kill, and after the last takeover


def lock_holder(kube, ns, lock):
    """The lock record's holderIdentity: the Lease's spec.holderIdentity, or (lock "configmap")
    the holderIdentity of the JSON record in the ConfigMap's LEADER_ANNOTATION."""
    path = (f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{LOCK_NAME}" if lock == "lease"
            else f"/api/v1/namespaces/{ns}/configmaps/{LOCK_NAME}")
    try:
        st, body, _, _ = kube.request("GET", path)
    except Exception:
        return None
    if st != 200:
        return None
    if lock == "lease":
        return (body or {}).get("spec", {}).get("holderIdentity")
    text = ((body or {}).get("metadata", {}).get("annotations") or {}).get(LEADER_ANNOTATION)
    try:
        return json.loads(text).get("holderIdentity") if text else None
    except ValueError:
        return None


def find_leader(kube, ns, replicas, lock, timeout, exclude=()):
    """The replica that leads: the lock record's holderIdentity, confirmed by that replica's
    /readyz (`ok: leader`, so it has listed and is watching) while every other live replica says
    standby. Returns its index."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = lock_holder(kube, ns, lock)
        says = {i: health(r["port"], "/readyz")[1] for i, r in enumerate(replicas)
                if i not in exclude and r["c"].alive()}
        leaders = [i for i, b in says.items() if "leader" in b and "standby" not in b]
        if len(leaders) == 1 and replicas[leaders[0]]["id"] == holder:
            return leaders[0]
        time.sleep(0.1)
    raise RuntimeError(f"no single leader within {timeout} s (lock holder {lock_holder(kube, ns, lock)!r})")


def wait_standby(kube, ns, replicas, i, leader, lock, timeout):
    """Waits until replica i is up and says standby while the lock's holder is still `leader`'s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not replicas[i]["c"].alive():
            c = replicas[i]["c"]
            raise RuntimeError(f"{c.name} exited while starting as a standby; see {c.err_path}")
        if ("standby" in (health(replicas[i]["port"], "/readyz")[1] or "")
                and lock_holder(kube, ns, lock) == replicas[leader]["id"]):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{replicas[i]['c'].name} did not stand by within {timeout} s "
                       f"(lock holder {lock_holder(kube, ns, lock)!r})")


def leader_kill(args, kube, lock="lease"):
    """Two replicas, A and B; the leader (A, say) is SIGKILLed at a quarter of the stream and B
    takes over; A is restarted as a fresh process with the same identity (as a container restarted
    in its Pod keeps its HOSTNAME) once B leads, and stands by; B is SIGKILLed at half the stream,
    or MARGIN s after its takeover if that is later, and the restarted A takes over. The stream
    runs at least MARGIN s past the second takeover. The processes in the order they led,
    [A, B, A'], are what check() merges."""
    name = "leader-kill" if lock == "lease" else f"leader-kill-{lock}"
    ns = f"rel-{name}-{int(time.time()) % 100000}"
    kube.ensure_namespace(ns)
    replicas = []  # every process started, in start order: {"id", "c", "port"}
    res = {"fault": name, "lock": lock}

    def start(rid, label):
        env, port = kl_env()
        cmd = base_cmd(args) + [
            "--leader-election-namespace", ns, "--leader-election-name", LOCK_NAME,
            "--leader-election-lock", lock,
            "--leader-election-identity", rid, "--lease-duration", str(LEASE),
            "--renew-deadline", str(RENEW), "--retry-period", str(RETRY), "--shutdown-grace", "5"]
        c = driver.Contender(f"{name}-{label}", cmd, env, args.logdir).start("rel", ns)
        replicas.append({"id": rid, "c": c, "port": port})
        return len(replicas) - 1

    try:
        for rid in ("replica-a", "replica-b"):
            start(rid, rid)
        first = find_leader(kube, ns, replicas, lock, 180)
        driver.ready(replicas[first]["c"], kube, ns)
        led = [first]  # indices into replicas, in the order they led
        takeovers = []
        kill_times = []  # time.monotonic() of each SIGKILL: kill_times[k - 1] is the kill of process k - 1

        def kill(i):
            """SIGKILLs replica i (the leader) and waits for the next leader; returns when it leads."""
            c = replicas[i]["c"]
            os.killpg(c.proc.pid, signal.SIGKILL)
            c.proc.wait()
            t_kill = time.monotonic()
            kill_times.append(t_kill)
            j = find_leader(kube, ns, replicas, lock, 120, exclude={i})
            takeovers.append({"killed": c.name, "new_leader": replicas[j]["c"].name,
                              "takeover_s": round(time.monotonic() - t_kill, 2)})
            led.append(j)

        def kill_twice():
            t1 = time.monotonic()
            a = find_leader(kube, ns, replicas, lock, 30)
            kill(a)
            t_took_over = time.monotonic()
            # The killed replica again, as a fresh process with the same identity: a standby.
            a2 = start(replicas[a]["id"], f"{replicas[a]['id']}-restarted")
            wait_standby(kube, ns, replicas, a2, led[-1], lock, 60)
            res["restart_standby_s"] = round(time.monotonic() - t_took_over, 2)
            time.sleep(max(0.0, max(t1 + args.duration / 4, t_took_over + MARGIN) - time.monotonic()))
            b = find_leader(kube, ns, replicas, lock, 30)
            if b != led[-1]:
                raise RuntimeError(f"{replicas[b]['c'].name} leads, not {replicas[led[-1]]['c'].name}")
            kill(b)

        s, res["fault_s"], final = run_stream(args, kube, ns, 0, kill_twice, at=1 / 4, tail=MARGIN)
        order = [replicas[i]["c"] for i in led]
        last, survivor_port = len(order) - 1, replicas[led[-1]]["port"]

        def survivor_versions():
            # The last leader is never killed: it must deliver every version written after its
            # list (besides what a relist of its own folds).
            ls = lists_of(order[last])
            return {last: ls[0]} if ls else None
        r = settle(order, ns, final, s, kill_times=kill_times, unseen_slack=args.unseen_slack,
                   lists=lambda: {i: lists_of(x) for i, x in enumerate(order)}, every_version=survivor_versions,
                   merged_events=lambda: {last: merged_events(survivor_port)})
        survivor = order[-1]
        # For the report: how long before the kill of the leader it followed each unseen delete's
        # DELETE was answered (negative: after the kill). check() allows at most unseen_slack s
        # before the kill (a live leader delivers a delete within milliseconds); the deletes
        # answered earlier that no process delivered are lost, and listed apart.
        for nm, uid, k in r["unseen_deletes_detail"]:
            t = s.deleted_at.get((nm, uid))
            if t is not None:
                tk = takeovers[k - 1]
                tk.setdefault("unseen_deleted_s_before_kill", []).append(round(kill_times[k - 1] - t, 2))
        for nm, uid, k, before in r["early_deletes_detail"]:
            takeovers[k - 1].setdefault("lost_deleted_s_before_kill", []).append(before)
        for tk in takeovers:
            tk.get("unseen_deleted_s_before_kill", []).sort()
            tk.get("lost_deleted_s_before_kill", []).sort()
        res["unseen_slack_s"] = args.unseen_slack
        for nm, uid, k in r["unseen_objects"]:
            if k != "relist":
                takeovers[k - 1]["unseen_objects"] = takeovers[k - 1].get("unseen_objects", 0) + 1
        res.update(delivery(r, s), replay_repeats=r["replay_repeats"],
                   unseen_deletes=len(r["unseen_deletes"]), unseen_delete_names=r["unseen_deletes"][:10],
                   every_version_from=survivor_versions(),
                   host_alive=survivor.alive(), first_leader=order[0].name, takeovers=takeovers,
                   led=[c.name for c in order],
                   replayed_by={order[k].name: v for k, v in sorted(r["replayed_by_process"].items())},
                   replay_repeats_by={order[k].name: v for k, v in sorted(r["replay_repeats_by_process"].items())},
                   unseen_deletes_by_takeover={order[k].name: v
                                               for k, v in sorted(r["unseen_deletes_by_takeover"].items())},
                   first_live_rv={order[k].name: v for k, v in sorted(r["first_live_by_process"].items())},
                   events_by_process={x.name: sum(len(v) for k, v in x.events.items() if k[0] == ns) for x in order})
    finally:
        for x in replicas:
            x["c"].stop()
    return res


# --- bad-hot-swap --------------------------------------------------------------------------------

LISTENERS_YAML = "listeners:\n  - name: bench\n    module: bench.wasm\n    mode: classname\n"
NOT_WASM = b"this is not a wasm module\n"
CORE_MODULE = b"\0asm\x01\0\0\0"  # a valid, empty core module: not a component of the listener world


def with_custom_section(component, name, payload):
    """The component with a custom section appended: same code, another digest."""
    def leb(n):
        out = bytearray()
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)
    body = leb(len(name)) + name + payload
    return component + b"\0" + leb(len(body)) + body


def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def bad_hot_swap(args, kube):
    name = "bad-hot-swap"
    ns = f"rel-{name}-{int(time.time()) % 100000}"
    kube.ensure_namespace(ns)
    good = open(f"{args.guests}/bench-listener.wasm", "rb").read()
    other = with_custom_section(good, b"kubelisten-reliability", b"another build of bench-listener")
    cm_path = f"/api/v1/namespaces/{ns}/configmaps"
    st, body, _, _ = kube.request("POST", cm_path, {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "modules", "namespace": ns},
        "data": {"listeners.yaml": LISTENERS_YAML}, "binaryData": {"bench.wasm": base64.b64encode(good).decode()}})
    if st != 201:
        raise RuntimeError(f"ConfigMap: {st} {body}")
    env, port = kl_env()
    status_port = free_port()
    env["KUBELISTEN_STATUS_BIND"] = f"127.0.0.1:{status_port}"
    cmd = base_cmd(args, listeners=False) + ["--modules-configmap", f"{ns}/modules"]
    c = driver.Contender(name, cmd, env, args.logdir).start("rel", ns)
    res = {"fault": name}
    steps = []

    def listener_status():
        st, body = health(status_port, "/status")
        try:
            return json.loads(body)["watches"][0]["listeners"][0] if st == 200 else {}
        except (ValueError, LookupError):
            return {}

    def push(module):
        st, body, _, _ = kube.request("PATCH", f"{cm_path}/modules",
                                      {"binaryData": {"bench.wasm": base64.b64encode(module).decode()}},
                                      "application/merge-patch+json")
        if st != 200:
            raise RuntimeError(f"ConfigMap patch: {st} {body}")

    def wait_status(pred, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ls = listener_status()
            if ls.get("digest") and pred(ls):
                return ls
            time.sleep(0.2)
        return listener_status()

    def swaps():
        # Bad updates: each must be rejected, with the running digest unchanged.
        for what, module in (("not wasm", NOT_WASM), ("core module", CORE_MODULE)):
            t = time.monotonic()
            push(module)
            ls = wait_status(lambda x: (x.get("rejected") or {}).get("digest") == digest(module))
            rejected = (ls.get("rejected") or {}).get("digest") == digest(module)
            steps.append({"push": what, "digest": digest(module), "rejected": rejected,
                          "error": (ls.get("rejected") or {}).get("error"), "running": ls.get("digest"),
                          "running_unchanged": ls.get("digest") == digest(good), "s": round(time.monotonic() - t, 2)})
        # The good module again: the same digest as the running one, so nothing to swap.
        t = time.monotonic()
        push(good)
        time.sleep(2)
        ls = listener_status()
        steps.append({"push": "good again (same digest)", "digest": digest(good), "running": ls.get("digest"),
                      "running_unchanged": ls.get("digest") == digest(good), "s": round(time.monotonic() - t, 2)})
        # A different good build (a custom section added): a real swap.
        t = time.monotonic()
        push(other)
        ls = wait_status(lambda x: x["digest"] == digest(other))
        steps.append({"push": "other good build", "digest": digest(other), "running": ls.get("digest"),
                      "swapped": ls.get("digest") == digest(other), "s": round(time.monotonic() - t, 2)})

    try:
        driver.ready(c, kube, ns)
        ls = listener_status()
        if ls.get("digest") != digest(good):
            raise RuntimeError(f"the good module is not running: {ls}")
        s, res["fault_s"], final = run_stream(args, kube, ns, 0, swaps)
        r = settle([c], ns, final, s, lists=lambda: {0: lists_of(c)}, every_version={0: 0},
                   merged_events=lambda: {0: merged_events(port)})
        # The host publishes rejection Events after the swap (bounded to 10 s): wait for them.
        bad = [x for x in steps if "rejected" in x]
        deadline = time.monotonic() + 30
        while True:
            st, evs, _, _ = kube.request("GET", f"/apis/events.k8s.io/v1/namespaces/{ns}/events")
            rejected_events = [e for e in (evs or {}).get("items", []) if e.get("reason") == "ModuleRejected"
                               and e.get("regarding", {}).get("name") == "modules"]
            count = sum((e.get("series") or {}).get("count", 1) for e in rejected_events)
            if count >= len(bad) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        res.update(delivery(r, s), host_alive=c.alive(), steps=steps,
                   rejection_events=len(rejected_events),
                   # The Event recorder folds repeats of one reason on one object into a series.
                   rejection_event_count=count,
                   rejection_event_notes=[e.get("note") for e in rejected_events][:3],
                   rejected=bool(bad) and all(x["rejected"] and x["running_unchanged"] for x in bad)
                   and bool(rejected_events),
                   good_again_noop=steps[2]["running_unchanged"], swapped_to_other=steps[3]["swapped"])
    finally:
        c.stop()
    return res


# --- soak ----------------------------------------------------------------------------------------


# The soak's RSS trend: the least-squares slope of the samples after a warm-up (SOAK_WARMUP s,
# or a third of a shorter soak), which must stay below an absolute bound. The bound is the larger
# of SOAK_SLOPE_FLOOR and the slope that a one-off step of SOAK_STEP_MIB in the middle of the
# fitted window gives (1.5 x step / window). The recorded runs: after the warm-up the 10-minute
# release soaks fit 0.010 to 0.025 MiB/min and their largest step between two samples is 0.08
# MiB; the 60 s soaks (20 s warm-up) fit up to 0.045 MiB/min, the debug binary in CI included.
# A soak of 600 s is thus held to 0.05 MiB/min (3 MiB/h), a 60 s one to 0.45 MiB/min.
SOAK_WARMUP, SOAK_SLOPE_FLOOR, SOAK_STEP_MIB = 60.0, 0.05, 0.2


def slope_bound(window_s):
    """The largest RSS slope (MiB/min) a soak whose fitted window lasts window_s may show."""
    return max(SOAK_SLOPE_FLOOR, 1.5 * SOAK_STEP_MIB / (window_s / 60)) if window_s > 0 else float("inf")


def trend(samples, seconds, bound=None):
    """The soak's RSS trend from `samples` [(s since the start, RSS MiB)] of a soak of `seconds`:
    the least-squares slope in MiB/min of the samples after the warm-up, and whether it is above
    `bound` (slope_bound() of the fitted window when None). Fewer than 3 samples after the
    warm-up is a trend too (nothing was measured)."""
    warmup = min(SOAK_WARMUP, seconds / 3)
    pts = [(t, x) for t, x in samples if t > warmup]
    out = {"warmup_s": warmup, "fitted_samples": len(pts)}
    if len(pts) < 3:
        return dict(out, slope_mib_per_min=None, slope_bound=bound, window_s=0, trend_up=True)
    n = len(pts)
    mt, mx = sum(t for t, _ in pts) / n, sum(x for _, x in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    slope = sum((t - mt) * (x - mx) for t, x in pts) / var * 60 if var else 0.0
    window = pts[-1][0] - pts[0][0]
    bound = slope_bound(window) if bound is None else bound
    return dict(out, slope_mib_per_min=round(slope, 4), slope_bound=round(bound, 4), window_s=window,
                trend_up=slope > bound)


def soak(args, kube):
    """One host, the stream for args.soak s, RSS sampled every 5 s; then the trend (trend()) and
    the exact check: the objects the host keeps (kubelisten_watch_objects, summed over the watch's
    series) must be the objects that still exist, once it has caught up (within 30 s)."""
    ns = f"rel-soak-{int(time.time()) % 100000}"
    kube.ensure_namespace(ns)
    env, port = kl_env()
    c = driver.Contender("soak", base_cmd(args), env, args.logdir).start("soak", ns)
    try:
        driver.ready(c, kube, ns)
        s = Stream(kube, ns, args.rate, args.pool)
        th = threading.Thread(target=s.run)
        th.start()
        samples = []
        object_bytes = []  # (s, kubelisten_watch_object_bytes): reported, not checked
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < args.soak:
                time.sleep(5)
                if not c.alive():
                    break
                t = round(time.monotonic() - t0)
                samples.append((t, c.mem_kib()["VmRSS"] / 1024))
                if len(samples) % 12 == 0:
                    object_bytes.append((t, metric_sum(metrics(port), "kubelisten_watch_object_bytes")))
        finally:
            s.stop.set()
            th.join()
        final = final_state(kube, ns, sorted(s.tried))
        existing = sum(1 for v in final.values() if v)
        held = None
        deadline = time.monotonic() + 30
        while c.alive():
            held = metric_sum(metrics(port), "kubelisten_watch_objects")
            if held == existing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        rss = [x for _, x in samples]
        alive = c.alive()
        out = {"seconds": args.soak, "sent": s.sent, "samples": samples, "first": rss[0] if rss else None,
               "last": rss[-1] if rss else None, "max": max(rss) if rss else None,
               "cpu_s": c.cpu_s() if alive else None, "host_alive": alive, "objects_existing": existing,
               "watch_objects": None if held is None else int(held), "object_bytes": object_bytes}
        out.update(trend(samples, args.soak, args.soak_slope_max))
        return out
    finally:
        c.stop()


# --- verdict and table ---------------------------------------------------------------------------


def fault_failures(r):
    """guest-faults-1-in-10: why its faults did not do what they must. Every fault class that
    reached the listener must show as its trap class (TRAP_OF; `error` as `error` outcomes), once
    per attempt of each faulted event, and no other trap class may show; each faulted event (a
    version written with a fault, or the delete of an object whose last version had one) is
    delivered to bench-listener once per attempt: `retry_attempts` - 1 repeats each."""
    f, out = r["fault"], []
    attempts = r.get("retry_attempts", 1)
    by_fault = r.get("faulted_by_fault") or {}
    if not r.get("faulted_events"):
        return [f"{f}: no event with a fault reached the listener"]
    for fault in FAULTS:
        if not by_fault.get(fault):
            out.append(f"{f}: no event with the fault {fault} reached the listener")
    expected = {}  # trap class -> traps it must log
    for fault, n in by_fault.items():
        if fault in TRAP_OF:
            expected[TRAP_OF[fault]] = expected.get(TRAP_OF[fault], 0) + n * attempts
    traps = r.get("traps_by_class") or {}
    for cls, n in sorted(expected.items()):
        if traps.get(cls, 0) != n:
            out.append(f"{f}: {traps.get(cls, 0)} {cls} traps logged, expected {n}")
    for cls in sorted(set(traps) - set(expected)):
        out.append(f"{f}: {traps[cls]} traps of class {cls}, which no injected fault causes")
    want_errors = by_fault.get("error", 0) * attempts
    if r.get("errors_logged", 0) != want_errors:
        out.append(f"{f}: {r.get('errors_logged', 0)} `error` outcomes logged, expected {want_errors}")
    if r.get("retried_deliveries") != r.get("expected_retries"):
        out.append(f"{f}: {r.get('retried_deliveries')} retried deliveries, expected {r.get('expected_retries')} "
                   f"({r['faulted_events']} faulted events x {attempts - 1} retries)")
    return out


def failures(results):
    """Why the run failed (empty: it passed)."""
    out = []
    for r in results["scenarios"]:
        f = r["fault"]
        if "error" in r:
            out.append(f"{f}: error {r['error']}")
            continue
        if r["lost"]:
            out.append(f"{f}: {r['lost']} objects lost")
        if r["duplicated"]:
            out.append(f"{f}: {r['duplicated']} duplicated events")
        if r.get("sequence_errors"):
            out.append(f"{f}: {r['sequence_errors']} events against their object's sequence "
                       f"({', '.join(r['sequence_examples'][:2])})")
        if r.get("missing_versions"):
            out.append(f"{f}: {r['missing_versions']} accepted versions never delivered "
                       f"({', '.join(f'{n} rv {v}' for v, n in r['missing_examples'][:3])})")
        if not r["host_alive"]:
            out.append(f"{f}: the host died")
        if f == "bad-hot-swap":
            if not r["rejected"]:
                out.append(f"{f}: a bad module was not rejected (or the running module changed)")
            if not r["swapped_to_other"]:
                out.append(f"{f}: the swap to another good build did not happen")
        if r.get("late_after_successor"):
            # The host orders events per namespace/name, across relists too.
            out.append(f"{f}: {r['late_after_successor']} events of an object came after its re-created successor's")
        if f == "guest-faults-1-in-10":
            out += fault_failures(r)
        if f == "guest-crash-loop":
            if not r.get("crash_loop_backoffs"):
                out.append(f"{f}: the burst of traps engaged no crash-loop backoff")
            if not r.get("skipped_calls"):
                out.append(f"{f}: no call was skipped in crash-loop backoff (nothing waited one out)")
            if r.get("reruns"):
                # A chain admits all of its listeners before running any: an event without a fault
                # never runs bench-listener (and rolls it back) in an attempt that fails.
                out.append(f"{f}: {r['reruns']} unfaulted versions ran the chain again after an attempt that "
                           f"ran bench-listener and then skipped faulty")
        if f.startswith("leader-kill"):
            tk = r.get("takeovers", [])
            if len(tk) != KILLS or any(t["new_leader"] == t["killed"] for t in tk):
                out.append(f"{f}: {len(tk)} of {KILLS} takeovers")
    s = results.get("soak")
    if s:
        if "error" in s:
            out.append(f"soak: error {s['error']}")
        else:
            if s["trend_up"]:
                out.append(f"soak: RSS trends up: {s.get('slope_mib_per_min')} MiB/min over "
                           f"{s.get('fitted_samples')} samples after the warm-up, above {s.get('slope_bound')}")
            if s.get("watch_objects") != s.get("objects_existing"):
                out.append(f"soak: the host keeps {s.get('watch_objects')} objects (kubelisten_watch_objects), "
                           f"{s.get('objects_existing')} exist")
            if not s["host_alive"]:
                out.append("soak: the host died")
    return out


def notes_of(r):
    notes = [] if r["fault"] in ("none", "guest-faults-1-in-10", "guest-crash-loop") else [f"fault took {r['fault_s']} s"]
    if "versions_written" in r:
        what = ("every version written after the last leader's list" if r["fault"].startswith("leader-kill")
                else "every version written")
        notes.append(f"{what} checked: {r['missing_versions']} missing"
                     + (f", {r['versions_folded']} folded by {len(r['relists'])} relist(s)" if r["relists"] else "")
                     + (f", {r['versions_merged']} merged into a later version (the host counted "
                        f"{r['merges_counted']} merges)" if r["versions_merged"] else "")
                     + f"; {r['created']} creates and {r['deletes']} deletes all checked"
                     + (f" ({r['unseen_objects']} objects created and deleted in a gap, never seen)"
                        if r["unseen_objects"] else ""))
    if "objects_with_retried_faults" in r:
        classes = ", ".join(f"{k} {v}" for k, v in sorted(r["traps_by_class"].items()))
        notes.append(f"{r['fault_versions']} versions of {r['objects_with_retried_faults']} objects carried a fault; "
                     f"{r['faulted_events']} faulted events reached the listener; their {r['retried_deliveries']} "
                     f"repeated deliveries are the retries (expected {r['expected_retries']} with "
                     f"--retry-attempts {r['retry_attempts']}; not counted as duplicates); {r['traps_logged']} traps "
                     f"logged ({classes}), {r['errors_logged']} `error` outcomes; "
                     f"{r['crash_loop_backoffs']} crash-loop backoffs")
    if r["fault"] == "guest-crash-loop":
        notes.append(f"{r['skipped_calls']} calls skipped in crash-loop backoff, each event waiting the backoff "
                     f"out; {r['reruns']} repeats of other versions after a failed attempt (a chain run again, "
                     f"not counted as duplicates)")
    if r["fault"].startswith("leader-kill"):
        def short(name):
            return name.removeprefix(r["fault"] + "-")
        for n, t in enumerate(r["takeovers"]):
            new = t["new_leader"]
            u = t.get("unseen_deleted_s_before_kill")
            early = t.get("lost_deleted_s_before_kill")
            notes.append(f"{short(t['killed'])} (leader) SIGKILLed, {short(new)} led {t['takeover_s']} s later "
                         f"({r['replayed_by'].get(new, 0)} replays, {r['replay_repeats_by'].get(new, 0)} of them "
                         f"repeating a delivered version; {r['unseen_deletes_by_takeover'].get(new, 0)} unseen deletes"
                         + (f", {t['unseen_objects']} objects never seen" if t.get("unseen_objects") else "")
                         + (f", DELETEs answered {-max(u) + 0.0} to {-min(u) + 0.0} s after the kill" if u else "")
                         + (f"; LOST {len(early)} deletes answered {min(early)} to {max(early)} s before the kill, "
                            f"while it led" if early else "")
                         + ")")
            if n == 0 and "restart_standby_s" in r:
                notes.append(f"{short(t['killed'])} restarted with the same identity stood by "
                             f"{r['restart_standby_s']} s after that takeover")
        notes.append("unseen deletes: objects deleted after the previous leader's last event for them (and no "
                     f"earlier than {r.get('unseen_slack_s', UNSEEN_SLACK)} s before its kill) and before "
                     "the next leader's list get no delete event (by design)")
    if r["fault"] == "bad-hot-swap":
        st = r["steps"]
        notes.append(f"rejected={'yes' if r['rejected'] else 'NO'} (not wasm, core module; running digest unchanged; "
                     f"{r['rejection_events']} ModuleRejected Event(s), "
                     f"count {r['rejection_event_count']}); good module again: "
                     f"{'no-op (same digest)' if r['good_again_noop'] else 'CHANGED'}; other good build: "
                     f"{'swapped in ' + str(st[3]['s']) + ' s' if r['swapped_to_other'] else 'NOT swapped'}")
    if r.get("late_after_successor"):
        notes.append(f"{r['late_after_successor']} events of an object came after the first event of its re-created "
                     f"same-named successor (a failure: the host orders events per namespace/name)")
    if r["lost"]:
        notes.append(f"lost: {', '.join(r['lost_names'])}"
                     + (f" (never seen: {', '.join(r['never_seen'])})" if r.get("never_seen") else ""))
    if r.get("sequence_errors"):
        notes.append(f"SEQUENCE: {'; '.join(r['sequence_examples'])}")
    if r.get("missing_versions"):
        notes.append(f"MISSING versions: {', '.join(f'{n} rv {v}' for v, n in r['missing_examples'])}")
    return "; ".join(notes)


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
    ap.add_argument("--soak-slope-max", type=float, default=None,
                    help="soak: the largest RSS slope in MiB/min (default: slope_bound() of the fitted window)")
    ap.add_argument("--unseen-slack", type=float, default=UNSEEN_SLACK,
                    help="leader-kill: s before a kill that an unseen delete's DELETE may be answered")
    args = ap.parse_args()
    os.makedirs(args.logdir, exist_ok=True)
    kube = driver.Kube(os.environ["KUBECONFIG"])
    guest_faults = dict(chain_extra=("-l", f"{args.guests}/faulty.wasm:classname"), fault_every=10,
                        extra_flags=("--retry-attempts", "2", "--retry-base-ms", "10",
                                     "--call-timeout-ms", "200", "--memory-mib", "64"))
    # Three consecutive traps back the listener off (0.1 s, doubling up to 1 s): the burst of
    # CRASH_BURST trapping changes (and their retries) keeps it crash-looping for a while, and
    # every other event must wait that out without being lost, skipped or run twice.
    crash_loop = dict(chain_extra=guest_faults["chain_extra"], burst=CRASH_BURST,
                      extra_flags=("--retry-attempts", "3", "--retry-base-ms", "10", "--call-timeout-ms", "200",
                                   "--memory-mib", "64", "--crash-loop-threshold", "3",
                                   "--crash-loop-backoff-ms", "100", "--crash-loop-backoff-max-ms", "1000"))
    plan = [
        ("none", lambda: scenario("none", args, kube)),
        ("apiserver-restart", lambda: scenario("apiserver-restart", args, kube, fault=restart_apiserver)),
        ("etcd-restart", lambda: scenario("etcd-restart", args, kube, fault=restart_etcd)),
        ("leader-kill", lambda: leader_kill(args, kube)),
        ("leader-kill-configmap", lambda: leader_kill(args, kube, lock="configmap")),
        ("bad-hot-swap", lambda: bad_hot_swap(args, kube)),
        ("guest-faults-1-in-10", lambda: scenario("guest-faults-1-in-10", args, kube, **guest_faults)),
        ("guest-crash-loop", lambda: scenario("guest-crash-loop", args, kube, **crash_loop)),
    ]
    only = [x for x in args.only.split(",") if x]
    results = {"scenarios": [], "args": vars(args), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "load_before": driver.loadavg()}
    for name, run in plan:
        if only and name not in only:
            continue
        print(f"# reliability: {name} (load {' '.join(driver.loadavg())})", file=sys.stderr)
        try:
            r = run()
        except Exception as e:
            r = {"fault": name, "error": repr(e)}
        r["load_after"] = driver.loadavg()
        print(f"#   {json.dumps(r)}", file=sys.stderr)
        results["scenarios"].append(r)
        json.dump(results, open(args.out, "w"), indent=1)
    if args.soak > 0 and (not only or "soak" in only):
        print(f"# soak {args.soak:.0f} s (load {' '.join(driver.loadavg())})", file=sys.stderr)
        try:
            results["soak"] = soak(args, kube)
        except Exception as e:
            results["soak"] = {"error": repr(e)}
        print(f"#   {json.dumps(results['soak'])}", file=sys.stderr)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["load_after"] = driver.loadavg()
    results["failures"] = failures(results)
    json.dump(results, open(args.out, "w"), indent=1)

    print(f"Run {results['started']} to {results['finished']}; load average before "
          f"{' '.join(results['load_before'])}, after {' '.join(results['load_after'])}\n")
    print("| fault | changes accepted | requests failed (outage) | deletes of absent objects | objects | events delivered "
          "| replayed at takeover | lost | duplicated | out of sequence | versions missing | host alive | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["scenarios"]:
        if "error" in r:
            print(f"| {r['fault']} | error: {r['error']} |")
            continue
        print(f"| {r['fault']} | {r['sent']} | {r['failed_requests']} | {r['noop_deletes']} | {r['objects']} "
              f"| {r['delivered']} | {r['replayed']} | {r['lost']} | {r['duplicated']} | {r['sequence_errors']} "
              f"| {r['missing_versions']} | {'yes' if r['host_alive'] else 'NO'} | {notes_of(r)} |")
    s = results.get("soak")
    if s and "error" not in s:
        slope = s["slope_mib_per_min"]
        print(f"\nSoak: {s['seconds']:.0f} s, {s['sent']} changes; RSS MiB first {s['first']:.1f}, last {s['last']:.1f}, "
              f"max {s['max']:.1f}; slope after the {s['warmup_s']:.0f} s warm-up "
              f"{'n/a' if slope is None else f'{slope:+.3f}'} MiB/min over {s['fitted_samples']} samples "
              f"(bound {s['slope_bound']} MiB/min): {'TREND' if s['trend_up'] else 'no trend'}; objects kept "
              f"(kubelisten_watch_objects) {s['watch_objects']}, existing {s['objects_existing']}; "
              f"host alive: {s['host_alive']}")
    elif s:
        print(f"\nSoak: error {s['error']}")
    if results["failures"]:
        print(f"\nFAIL: {'; '.join(results['failures'])}")
        sys.exit(1)
    print("\nPASS: every object's events in sequence, nothing lost or duplicated, every accepted version delivered "
          "(or folded by a relist, merged or unseen at a takeover, as counted), every host alive"
          + (", guest faults contained as their classes with the expected retries"
             if any(r["fault"] == "guest-faults-1-in-10" for r in results["scenarios"]) else "")
          + (f", no RSS trend (slope {s['slope_mib_per_min']:+.3f} <= {s['slope_bound']} MiB/min), the objects kept "
             f"are the objects that exist" if s else ""))


if __name__ == "__main__":
    main()
