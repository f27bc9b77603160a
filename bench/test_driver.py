"""Unit tests of bench/driver.py's audit-log reading and bench/report.py's audit columns, on
small synthetic inputs (no cluster). Run from the repository root: `make test-bench`."""
import contextlib
import io
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import driver  # noqa: E402
import report  # noqa: E402

NS = "e2e-1-kubelisten-classname"


def audit_line(verb, name, second, ns=NS, ua=driver.USER_AGENT):
    """One ResponseComplete audit event as kube-apiserver writes it (compact JSON)."""
    return json.dumps({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata", "stage": "ResponseComplete",
        "verb": verb, "userAgent": ua,
        "objectRef": {"resource": driver.PLURAL, "namespace": ns, "name": name, "apiGroup": driver.GROUP},
        "stageTimestamp": f"2026-11-23T04:15:{second:02d}.123456Z"}, separators=(",", ":")) + "\n"


class AuditTimes(unittest.TestCase):
    def test_the_rotated_files_are_read_too(self):
        # Half of the requests went to the file the API server rotated away, half to audit.log.
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "audit-2026-11-23T04-15-20.123.log"), "w") as f:
                for i in range(5):
                    f.write(audit_line("create", f"obj-{i}", i))
                f.write('{"kind":"Event","stage":"Respon')  # cut by the rotation
            with open(os.path.join(d, "audit.log"), "w") as f:
                for i in range(5, 10):
                    f.write(audit_line("create", f"obj-{i}", i))
                f.write(audit_line("create", "obj-0", 30))  # a later line for the same request
                f.write(audit_line("create", "other", 31, ns="elsewhere"))
                f.write(audit_line("create", "kopf-own", 32, ua="kopf"))
                f.write(audit_line("patch", "obj-1", 33))
            with open(os.path.join(d, "other.log"), "w") as f:
                f.write(audit_line("create", "not-audit", 34))
            at = driver.audit_times(os.path.join(d, "audit.log"), NS)
        self.assertEqual(sorted(k for k in at if k[0] == "create"), [("create", f"obj-{i}") for i in range(10)])
        self.assertIn(("update", "obj-1"), at)
        # The earliest time of a request seen twice.
        self.assertEqual(at[("create", "obj-0")] % 10**9 // 1000, 123456)
        self.assertEqual(at[("create", "obj-0")] // 10**9 % 60, 0)

    def test_no_log(self):
        self.assertEqual(driver.audit_times("", NS), {})
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(driver.audit_times(os.path.join(d, "audit.log"), NS), {})


def e2e_round(rnd, contender, matched, ramp_matched, p50=0.5):
    """One round of results.json's e2e list (300 objects: 900 requests; ramp 100/s for 4 s)."""
    return {"contender": contender, "round": rnd, "p50": 0.1, "p99": 0.5, "max": 1.0, "p50_audit": p50,
            "p99_audit": 2 * p50, "p50_sent": 1, "p99_sent": 2, "audit_matched": matched, "missing": 0,
            "cpu_latency_s": 1, "cpu_scenario_s": 2, "cpu_total_s": 3, "hwm_mib": 30, "rss_mib": 29,
            "sustained_eps": 100, "driver_bound": True, "load_before": ["0"], "load_after": ["0"],
            "ramp": [{"rate": 100.0, "achieved": 100.0, "p50": 0.1, "p99": 1, "missing": 0, "ok": True,
                      "reached": True, "audit_matched": ramp_matched, "p50_audit": p50, "p99_audit": 2 * p50}]}


class ReportAudit(unittest.TestCase):
    def render(self, rounds):
        r = {"args": {"n": 300, "rate": 50, "repeat": len(rounds), "ramp_secs": 4}, "e2e": rounds}
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            report.report(r)
        return out.getvalue()

    def test_incomplete_rounds_are_marked_and_left_out_of_the_medians(self):
        # Round 2 lost its server-side samples to a rotation: 746 of 900, and 0 of 400 ramp creates.
        text = self.render([e2e_round(1, "kopf", 900, 400, p50=1.0), e2e_round(2, "kopf", 746, 0, p50=9.0),
                            e2e_round(3, "kopf", 900, 400, p50=3.0)])
        self.assertIn("| 746/900 INCOMPLETE |", text)
        self.assertIn("| 900/900 |", text)
        self.assertIn("a 0/400 INCOMPLETE", text)
        self.assertIn("a 400/400", text)
        # The main table's server p50 is the median of rounds 1 and 3 only (2.0, not 3.0).
        row = next(line for line in text.splitlines() if line.startswith("| kopf | 3 |"))
        self.assertIn("| 2.00 | 4.00 | 2/3 (INCOMPLETE audit in the others) |", row)
        # The ramp cell uses two of the three rounds and says so.
        ramp = next(line for line in text.splitlines() if line.startswith("| kopf | ") and "(2/3)" in line)
        self.assertIn("2.00 / 4.0 (2/3)", ramp)

    def test_complete_rounds_are_not_marked(self):
        text = self.render([e2e_round(1, "kopf", 900, 400), e2e_round(2, "kopf", 900, 400)])
        self.assertNotIn("INCOMPLETE", text.split("### Each round")[1].split("\n", 3)[3])
        self.assertIn("| 2/2 |", text)

    def test_results_before_the_count_fields(self):
        # Without audit_expected: 3 x n requests, and max(rate x ramp_secs, 20) creates per step.
        self.assertTrue(report.audit_complete({"audit_matched": 900}, 300))
        self.assertFalse(report.audit_complete({"audit_matched": 899}, 300))
        self.assertIsNone(report.audit_complete({}, 300))
        self.assertEqual(report.step_expected({"rate": 1000.0}, 4), 4000)
        self.assertEqual(report.step_expected({"rate": 1.0}, 4), 20)


if __name__ == "__main__":
    unittest.main()
