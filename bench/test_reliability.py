"""Unit tests of reliability.check()'s takeover rules, on small synthetic inputs (no cluster).

Run from the repository root: `make test-bench`, or
`python3 -m unittest discover -s bench -p 'test_*.py'`.

The inputs have the shapes check() gets in a leader-kill run:
  seen    merged()'s: name -> [(t, kind, rv, initial, process, uid)] in the order seen, where
          process k > 0 took over from process k - 1;
  final   final_state()'s: name -> (uid, rv) of the object that exists, or None;
  stream  a Stream's write_order (rv -> place among accepted writes), delete_order
          ((name, uid) -> place of the DELETE) and deleted_at ((name, uid) -> monotonic time
          when the DELETE was answered);
  kill_times[k - 1]  the monotonic time of the SIGKILL of process k - 1.
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reliability  # noqa: E402

KILL0 = 100.0  # the SIGKILL of process 0 (the first takeover, process 1, follows it)
KILL1 = 200.0  # the SIGKILL of process 1 (the second takeover, process 2, follows it)


class FakeStream:
    """The attributes of reliability.Stream that check() reads, filled in write order: each
    accepted write takes the next place, as Stream.one() numbers them."""

    def __init__(self):
        self.write_order, self.delete_order, self.deleted_at = {}, {}, {}
        self.place = 0

    def write(self, rv):
        """A create or update accepted with resourceVersion rv."""
        self.write_order[rv] = self.place
        self.place += 1

    def delete(self, name, uid, answered_at):
        """A DELETE of (name, uid), answered at monotonic time answered_at."""
        self.delete_order[(name, uid)] = self.place
        self.deleted_at[(name, uid)] = answered_at
        self.place += 1


class Seen:
    """merged()'s structure, built event by event; the clock advances by one per event."""

    def __init__(self):
        self.by_name, self.t = {}, 0.0

    def ev(self, name, kind, rv, proc, uid, initial=False):
        self.t += 1.0
        self.by_name.setdefault(name, []).append((self.t, kind, rv, initial, proc, uid))
        return self


def one_takeover(deleted_at):
    """Process 0 leads and sees `gone` (uid-gone) created; process 0 is killed at KILL0; the
    DELETE of `gone` comes next (answered at `deleted_at`, which the test chooses), before process
    1 lists; process 1 lists `kept` (its replay) and then delivers an update of `kept`, its first
    live event. No process saw `gone`'s delete."""
    s, seen = FakeStream(), Seen()
    s.write(10)  # create kept
    seen.ev("kept", "create", 10, 0, "uid-kept")
    s.write(11)  # create gone
    seen.ev("gone", "create", 11, 0, "uid-gone")
    s.delete("gone", "uid-gone", deleted_at)  # place 2: before process 1's first live event
    seen.ev("kept", "create", 10, 1, "uid-kept", initial=True)  # process 1's list
    s.write(13)  # update kept: process 1's first live event, place 3
    seen.ev("kept", "update", 13, 1, "uid-kept")
    final = {"kept": ("uid-kept", 13), "gone": None}
    return seen.by_name, final, s


class TakeoverRules(unittest.TestCase):
    def check(self, seen, final, stream, kill_times=(KILL0, KILL1)):
        return reliability.check(seen, final, (), stream, kill_times=kill_times)

    # (a)
    def test_delete_after_the_kill_before_the_list_is_unseen(self):
        seen, final, s = one_takeover(KILL0 + 0.5)
        r = self.check(seen, final, s)
        self.assertEqual(r["lost"], [])
        self.assertEqual(r["unseen_deletes"], ["gone@uid-gone"])
        self.assertEqual(r["unseen_deletes_by_takeover"], {1: 1})
        self.assertEqual(r["unseen_deletes_detail"], [("gone", "uid-gone", 1)])
        self.assertEqual(r["duplicated"], 0)

    def test_delete_answered_within_the_slack_before_the_kill_is_unseen(self):
        # In flight at the kill: answered less than the slack before it.
        seen, final, s = one_takeover(KILL0 - reliability.UNSEEN_SLACK / 2)
        r = self.check(seen, final, s)
        self.assertEqual(r["lost"], [])
        self.assertEqual(r["unseen_deletes"], ["gone@uid-gone"])

    # (b): fails without the lower bound (the object then passes as unseen).
    def test_delete_answered_well_before_the_kill_is_lost(self):
        seen, final, s = one_takeover(KILL0 - 5.0)
        r = self.check(seen, final, s)
        self.assertEqual(r["lost"], ["gone"])
        self.assertEqual(r["unseen_deletes"], [])
        self.assertEqual(r["unseen_deletes_by_takeover"], {})
        self.assertEqual(r["early_deletes_detail"], [("gone", "uid-gone", 1, 5.0)])

    def test_the_slack_is_a_parameter(self):
        seen, final, s = one_takeover(KILL0 - 5.0)
        r = reliability.check(seen, final, (), s, kill_times=(KILL0,), unseen_slack=6.0)
        self.assertEqual(r["lost"], [])
        self.assertEqual(r["unseen_deletes"], ["gone@uid-gone"])

    def test_without_a_kill_time_an_unseen_delete_is_lost(self):
        seen, final, s = one_takeover(KILL0 + 0.5)
        r = self.check(seen, final, s, kill_times=())
        self.assertEqual(r["lost"], ["gone"])
        self.assertEqual(r["unseen_deletes"], [])

    def test_without_an_answer_time_an_unseen_delete_is_lost(self):
        seen, final, s = one_takeover(KILL0 + 0.5)
        del s.deleted_at[("gone", "uid-gone")]
        r = self.check(seen, final, s)
        self.assertEqual(r["lost"], ["gone"])
        self.assertEqual(r["unseen_deletes"], [])

    def test_the_bound_uses_the_kill_of_the_process_taken_over_from(self):
        # Second takeover: `gone` last seen by process 1, deleted after process 1's kill (KILL1)
        # but long after process 0's: unseen at takeover 2. The same object deleted well before
        # KILL1 (while process 1 led) is lost, although that is after KILL0.
        def run(deleted_at):
            s, seen = FakeStream(), Seen()
            s.write(10)  # create kept, seen live by process 0
            seen.ev("kept", "create", 10, 0, "uid-kept")
            seen.ev("kept", "create", 10, 1, "uid-kept", initial=True)  # process 1's list
            s.write(11)  # update kept: process 1's first live event
            seen.ev("kept", "update", 11, 1, "uid-kept")
            s.write(12)  # create gone, seen live by process 1
            seen.ev("gone", "create", 12, 1, "uid-gone")
            s.delete("gone", "uid-gone", deleted_at)
            seen.ev("kept", "create", 11, 2, "uid-kept", initial=True)  # process 2's list
            s.write(14)  # update kept: process 2's first live event
            seen.ev("kept", "update", 14, 2, "uid-kept")
            return self.check(seen.by_name, {"kept": ("uid-kept", 14), "gone": None}, s)

        r = run(KILL1 + 0.3)
        self.assertEqual(r["lost"], [])
        self.assertEqual(r["unseen_deletes_by_takeover"], {2: 1})
        r = run(KILL1 - 50.0)
        self.assertEqual(r["lost"], ["gone"])
        self.assertEqual(r["early_deletes_detail"], [("gone", "uid-gone", 2, 50.0)])

    # (c)
    def test_delete_after_the_new_leaders_first_live_event_never_delivered_is_lost(self):
        # Process 1 did not list `gone` (synthetic: its list is not what is checked) and the
        # DELETE came after process 1's first live event: process 1 should have delivered it.
        s, seen = FakeStream(), Seen()
        s.write(10)  # create kept
        seen.ev("kept", "create", 10, 0, "uid-kept")
        s.write(11)  # create gone
        seen.ev("gone", "create", 11, 0, "uid-gone")
        seen.ev("kept", "create", 10, 1, "uid-kept", initial=True)  # process 1's list
        s.write(12)  # update kept: process 1's first live event
        seen.ev("kept", "update", 12, 1, "uid-kept")
        s.delete("gone", "uid-gone", KILL0 + 2.0)  # after the kill, so only the order decides
        r = self.check(seen.by_name, {"kept": ("uid-kept", 12), "gone": None}, s)
        self.assertEqual(r["lost"], ["gone"])
        self.assertEqual(r["unseen_deletes"], [])
        self.assertEqual(r["early_deletes_detail"], [])

    def test_without_a_next_leader_an_undelivered_delete_is_lost(self):
        s, seen = FakeStream(), Seen()
        s.write(10)
        seen.ev("gone", "create", 10, 0, "uid-gone")
        s.delete("gone", "uid-gone", KILL0 + 0.5)
        r = self.check(seen.by_name, {"gone": None}, s)
        self.assertEqual(r["lost"], ["gone"])

    # (d)
    def test_a_repeated_live_event_is_a_duplicate(self):
        s, seen = FakeStream(), Seen()
        s.write(10)
        seen.ev("kept", "create", 10, 0, "uid-kept")
        s.write(11)
        seen.ev("kept", "update", 11, 0, "uid-kept")
        seen.ev("kept", "update", 11, 0, "uid-kept")  # the same process again
        r = self.check(seen.by_name, {"kept": ("uid-kept", 11)}, s)
        self.assertEqual(r["duplicated"], 1)
        self.assertEqual(r["delivered"], 2)
        self.assertEqual(r["lost"], [])

    def test_a_live_event_repeating_the_old_leaders_is_a_duplicate(self):
        s, seen = FakeStream(), Seen()
        s.write(10)
        seen.ev("kept", "create", 10, 0, "uid-kept")
        s.write(11)
        seen.ev("kept", "update", 11, 0, "uid-kept")
        seen.ev("kept", "update", 11, 1, "uid-kept")  # the new leader, live, the same version
        r = self.check(seen.by_name, {"kept": ("uid-kept", 11)}, s)
        self.assertEqual(r["duplicated"], 1)
        self.assertEqual(r["replayed"], 0)

    # (e)
    def test_initial_creates_of_a_new_leader_are_replays_not_duplicates(self):
        s, seen = FakeStream(), Seen()
        s.write(10)
        seen.ev("a", "create", 10, 0, "uid-a")
        s.write(11)
        seen.ev("b", "create", 11, 0, "uid-b")
        s.write(12)  # update of b that process 0 did not deliver before its kill
        # Process 1's list: a at the version process 0 delivered, b at the newer one (folded).
        seen.ev("a", "create", 10, 1, "uid-a", initial=True)
        seen.ev("b", "create", 12, 1, "uid-b", initial=True)
        # Process 2's list, the same versions again.
        seen.ev("a", "create", 10, 2, "uid-a", initial=True)
        seen.ev("b", "create", 12, 2, "uid-b", initial=True)
        r = self.check(seen.by_name, {"a": ("uid-a", 10), "b": ("uid-b", 12)}, s)
        self.assertEqual(r["duplicated"], 0)
        self.assertEqual(r["replayed"], 4)
        self.assertEqual(r["replayed_by_process"], {1: 2, 2: 2})
        # Repeats of a version an earlier process delivered are counted apart, not as duplicates.
        self.assertEqual(r["replay_repeats"], 3)
        self.assertEqual(r["replay_repeats_by_process"], {1: 1, 2: 2})
        self.assertEqual(r["delivered"], 2)
        self.assertEqual(r["lost"], [])

    def test_a_new_leader_replaying_the_same_initial_event_twice_is_a_duplicate(self):
        s, seen = FakeStream(), Seen()
        s.write(10)
        seen.ev("a", "create", 10, 0, "uid-a")
        seen.ev("a", "create", 10, 1, "uid-a", initial=True)
        seen.ev("a", "create", 10, 1, "uid-a", initial=True)
        r = self.check(seen.by_name, {"a": ("uid-a", 10)}, s)
        self.assertEqual(r["duplicated"], 1)
        self.assertEqual(r["replayed"], 2)


if __name__ == "__main__":
    unittest.main()
