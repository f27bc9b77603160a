#!/usr/bin/env python3
"""Print the markdown tables of a bench/driver.py results file: bench/report.py results.json

With several rounds, the main table shows the median over the rounds of every number, and a
second table shows each round."""
import json
import statistics
import sys

BASE = "kubelisten-classname"


def f(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float) and x != x:
        return "n/a"
    return f"{x:.{nd}f}"


def ratio(x, base, nd=1):
    if x is None or base in (None, 0) or x != x or base != base:
        return "-"
    return f"{x / base:.{nd}f}x"


def med(rows, key):
    xs = [e[key] for e in rows if isinstance(e.get(key), (int, float))]
    return statistics.median(xs) if xs else None


def audit_complete(e, n):
    """Whether the round's latency scenario found every one of its requests in the audit log
    (None when the round has no audit count): `audit_matched` of `audit_expected` (3 x n in
    results written before that field)."""
    if not isinstance(e.get("audit_matched"), int):
        return None
    return e["audit_matched"] >= e.get("audit_expected", 3 * n)


def step_expected(s, ramp_secs):
    """The creates of a ramp step (as driver.py counts them, for results without the field)."""
    return s.get("audit_expected", max(int(s["rate"] * ramp_secs), 20))


def step_complete(s, ramp_secs):
    if not isinstance(s.get("audit_matched"), int):
        return None
    return s["audit_matched"] >= step_expected(s, ramp_secs)


def report(r):
    """Prints the tables of results `r`."""
    ok = [e for e in r["e2e"] if "error" not in e]
    errs = [e for e in r["e2e"] if "error" in e]
    names = list(dict.fromkeys(e["contender"] for e in r["e2e"]))
    KEYS = ["p50", "p99", "max", "p50_audit", "p99_audit", "p50_sent", "p99_sent", "create_p50", "create_p99",
            "update_p50", "update_p99", "delete_p50", "delete_p99", "missing", "sustained_eps", "cpu_latency_s", "cpu_scenario_s",
            "cpu_total_s", "hwm_mib", "rss_mib"]
    a = r["args"]
    agg = {}
    for n in names:
        rows = [e for e in ok if e["contender"] == n]
        if rows:
            agg[n] = {k: med(rows, k) for k in KEYS}
            agg[n]["runs"] = len(rows)
            agg[n]["bound"] = sum(1 for e in rows if e.get("driver_bound"))
            # The server-side latency only of the rounds whose requests were all found in the
            # audit log: a partial match is the part of the scenario after a rotation.
            full = [e for e in rows if audit_complete(e, a["n"]) is not False]
            agg[n]["p50_audit"], agg[n]["p99_audit"] = med(full, "p50_audit"), med(full, "p99_audit")
            agg[n]["audit_full"] = len(full)
    rounds = a.get("repeat", 1)
    print(f"### End to end: {a['n']} objects created, updated, deleted at {a['rate']:g} ops/s per phase "
          f"(median of {rounds} round(s), contenders interleaved)\n")
    print("Latency (ms) = time the listener saw the event minus: 'client' = the time the client received the API server's "
          "response (the definition asked for; can be negative, since the watch event may reach the listener before the "
          "response reaches the client); 'server' = the API server's own ResponseComplete time (audit log, us "
          "resolution; the median of the rounds whose every request was found in the audit log, 'server rounds' "
          "says how many); 'send' = the time the client sent the request (an upper bound).\n")
    print("| contender | runs | client p50 | client p99 | server p50 | server p99 | server rounds | send p50 | send p99 "
          "| max (client) | create p50/p99 | update p50/p99 | delete p50/p99 | missed | sustained creates/s "
          "| CPU s (the 3N changes) | CPU s (+ ramp) | peak RSS MiB (VmHWM) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, g in agg.items():
        sus = ("< lowest step" if not g["sustained_eps"] else f(g["sustained_eps"], 0)) + (f" ({g['bound']}/{g['runs']} rounds never fell behind)" if g["bound"] else "")
        full = f"{g['audit_full']}/{g['runs']}" + ("" if g["audit_full"] == g["runs"] else " (INCOMPLETE audit in the others)")
        print(f"| {n} | {g['runs']} | {f(g['p50'], 2)} | {f(g['p99'], 2)} | {f(g['p50_audit'], 2)} | {f(g['p99_audit'], 2)} | {full} "
              f"| {f(g['p50_sent'], 2)} | {f(g['p99_sent'], 2)} | {f(g['max'], 1)} "
              f"| {f(g['create_p50'], 2)} / {f(g['create_p99'], 1)} | {f(g['update_p50'], 2)} / {f(g['update_p99'], 1)} "
              f"| {f(g['delete_p50'], 2)} / {f(g['delete_p99'], 1)} | {f(g['missing'], 0)} | {sus} "
              f"| {f(g['cpu_latency_s'], 2)} | {f(g['cpu_scenario_s'], 2)} | {f(g['hwm_mib'])} |")
    for e in errs:
        print(f"| {e['contender']} (round {e.get('round')}) | error: {e['error']} |")

    base = agg.get(BASE)
    if base:
        print(f"\n### Ratios to {BASE} (contender / kubelisten, of the medians above; > 1 means kubelisten is better, "
              "except sustained rate). Latency ratios use the server-side latency, which is always positive.\n")
        print("| contender | server p50 | server p99 | sustained creates/s | CPU s (the 3N changes) | peak RSS |")
        print("|---|---|---|---|---|---|")
        for n, g in agg.items():
            print(f"| {n} | {ratio(g['p50_audit'], base['p50_audit'])} | {ratio(g['p99_audit'], base['p99_audit'])} "
                  f"| {ratio(g['sustained_eps'], base['sustained_eps'], 2)} | {ratio(g['cpu_latency_s'], base['cpu_latency_s'])} "
                  f"| {ratio(g['hwm_mib'], base['hwm_mib'])} |")

    # Latency under load: the server-side p50 / p99 of each ramp step, median over the rounds that
    # reached the step (a contender that fell behind at a step has no later ones) and whose creates
    # of that step were all found in the audit log.
    ramp_secs = a.get("ramp_secs", 4)
    rates = sorted({s["rate"] for e in ok for s in e.get("ramp", [])})
    if rates and any("p50_audit" in s for e in ok for s in e.get("ramp", [])):
        def steps_at(n, rate):
            return [s for e in ok if e["contender"] == n for s in e.get("ramp", []) if s["rate"] == rate]

        def step_med(n, rate, key):
            xs = [s[key] for s in steps_at(n, rate) if step_complete(s, ramp_secs) is not False
                  and isinstance(s.get(key), (int, float)) and s[key] == s[key]]
            return statistics.median(xs) if xs else None
        print("\n### Latency under load: the throughput ramp's creates, server-side p50 / p99 ms per create rate "
              "(median of the rounds that reached the step and whose creates of that step were all found in the audit "
              "log; (k/n): only k of the n rounds that reached the step were, the others are left out; F: fell behind "
              "at that step in some round)\n")
        print("| contender | " + " | ".join(f"{r_:g}/s" for r_ in rates) + " |")
        print("|---|" + "---|" * len(rates))
        for n in names:
            cells = []
            for r_ in rates:
                p50, p99 = step_med(n, r_, "p50_audit"), step_med(n, r_, "p99_audit")
                st = steps_at(n, r_)
                full = sum(1 for s in st if step_complete(s, ramp_secs) is not False)
                fell = any(not s["ok"] for s in st)
                cells.append(("-" if p50 is None else f"{f(p50, 2)} / {f(p99, 1)}")
                             + (f" ({full}/{len(st)})" if st and full < len(st) else "") + (" F" if fell else ""))
            print(f"| {n} | " + " | ".join(cells) + " |")
        if BASE in names:
            print(f"\nRatios of the p50 to {BASE}'s at each rate (> 1 means kubelisten is better):\n")
            print("| contender | " + " | ".join(f"{r_:g}/s" for r_ in rates) + " |")
            print("|---|" + "---|" * len(rates))
            for n in names:
                cells = [ratio(step_med(n, r_, "p50_audit"), step_med(BASE, r_, "p50_audit")) for r_ in rates]
                print(f"| {n} | " + " | ".join(cells) + " |")

    print("\n### Each round\n")
    print("Audit: requests found in the API server's audit log / requests made (INCOMPLETE: the server-side latency "
          "of that round or step is left out of the medians above).\n")
    print("| round | contender | client p50/p99 | server p50/p99 | audit | CPU s (3N changes / + ramp) | peak RSS MiB "
          "| ramp: target -> achieved/s, p50/p99 ms, kept up (K) / fell behind (F), audit | load before -> after |")
    print("|---|---|---|---|---|---|---|---|---|")

    def audit_cell(matched, expected, complete):
        if complete is None:
            return "-"
        return f"{matched}/{expected}" + ("" if complete else " INCOMPLETE")

    for e in ok:
        ramp = "; ".join(f"{s['rate']:.0f}->{s['achieved']:.0f} {f(s['p50'], 1)}/{f(s['p99'], 0)} "
                         f"{'K' if s['ok'] else 'F'}{'' if s.get('reached', True) else ' (rate not reached)'}"
                         + ("" if step_complete(s, ramp_secs) is None else
                            " a " + audit_cell(s["audit_matched"], step_expected(s, ramp_secs), step_complete(s, ramp_secs)))
                         for s in e.get("ramp", []))
        audit = audit_cell(e.get("audit_matched"), e.get("audit_expected", 3 * a["n"]), audit_complete(e, a["n"]))
        print(f"| {e.get('round', 1)} | {e['contender']} | {f(e['p50'], 2)} / {f(e['p99'], 2)} "
              f"| {f(e.get('p50_audit'), 2)} / {f(e.get('p99_audit'), 2)} | {audit} "
              f"| {f(e.get('cpu_latency_s'), 2)} / {f(e['cpu_scenario_s'], 2)} | {f(e['hwm_mib'])} "
              f"| {ramp} | {' '.join(e['load_before'])} -> {' '.join(e.get('load_after', []))} |")

    if r.get("scale"):
        print("\n### Scale: start-up with existing objects (spawn -> every existing object seen as an initial create), "
              "RSS 3 s after that\n")
        print("| contender | objects | start-up s | initial events/s | RSS MiB | peak RSS MiB | CPU s | load before |")
        print("|---|---|---|---|---|---|---|---|")
        for s in r["scale"]:
            if "error" in s:
                print(f"| {s['contender']} | {s['objects']} | error: {s['error']} |")
                continue
            print(f"| {s['contender']} | {s['objects']} | {f(s['startup_s'], 2)} | {f(s['objects'] / s['startup_s'], 0)} "
                  f"| {f(s['rss_mib'])} | {f(s['hwm_mib'])} | {f(s['cpu_s'], 2)} | {' '.join(s['load_before'])} |")

    if r.get("idle"):
        print("\n### Idle RSS (ready, no objects, 3 s after the sentinel was seen)\n")
        print("| contender | round | RSS MiB | peak RSS MiB |")
        print("|---|---|---|---|")
        for s in r["idle"]:
            if "error" in s:
                print(f"| {s['contender']} | {s.get('round')} | error: {s['error']} |")
                continue
            print(f"| {s['contender']} | {s.get('round', 1)} | {f(s['rss_mib'])} | {f(s['hwm_mib'])} |")


if __name__ == "__main__":
    report(json.load(open(sys.argv[1])))
