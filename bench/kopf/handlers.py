"""kopf contender of bench/e2e.sh: the same trivial listener as guests/bench-listener.

For every event it prints
    BENCH <create|update|delete> <namespace>/<name> <resourceVersion> <unix-time-ns>
to stdout, one write per line, like the kubelisten guest and the native baseline.

BENCH_KOPF_MODE selects the handler style:
  event     (default) one @kopf.on.event handler: the raw watch stream, no finalizers, no
            annotations, no Kubernetes Events posted -- kopf's cheapest path, and the closest to
            what kubelisten and the native baseline do (they too write nothing to the object).
  handlers  @kopf.on.create/update/delete: kopf's idiomatic, state-keeping handlers (finalizers,
            last-handled-configuration annotation, progress patches, Events) -- what most kopf
            operators use, and much more API traffic per change.
kopf runs with its default settings. (kopf 1.45 has no time-based batching any more: its worker takes
each event as soon as it arrives, and `settings.batching.batch_window` is deprecated and affects
nothing, so there is no knob for it here.)
"""
import os
import sys
import time

import kopf

GROUP, VERSION, PLURAL = "bench.kubelisten.dev", "v1", "benchitems"
MODE = os.environ.get("BENCH_KOPF_MODE", "event")
_out = sys.stdout


def _seen(kind, body):
    t = time.time_ns()
    meta = body.get("metadata", {})
    _out.write(
        f"BENCH {kind} {meta.get('namespace', '-')}/{meta.get('name')} {meta.get('resourceVersion', '')} {t}\n"
    )
    _out.flush()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    # Keep kopf's own per-handler log lines from dominating the cost of the trivial handler.
    settings.posting.enabled = MODE == "handlers"


if MODE == "event":

    @kopf.on.event(GROUP, VERSION, PLURAL)
    def on_event(type, body, **_):  # noqa: A002 -- kopf's keyword
        if type is None:  # initial listing
            _seen("create", body)
        elif type == "ADDED":
            _seen("create", body)
        elif type == "MODIFIED":
            _seen("update", body)
        elif type == "DELETED":
            _seen("delete", body)

else:

    @kopf.on.create(GROUP, VERSION, PLURAL)
    def on_create(body, **_):
        _seen("create", body)

    @kopf.on.update(GROUP, VERSION, PLURAL)
    def on_update(body, **_):
        _seen("update", body)

    @kopf.on.delete(GROUP, VERSION, PLURAL)
    def on_delete(body, **_):
        _seen("delete", body)
