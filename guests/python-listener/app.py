"""kubelisten listener in Python: the polyglot reference behaviour (see guests/README.md).

create/update: log, then record `status.handledBy = "python"` through the cluster import;
delete: log. Annotation `kubelisten.dev/fault`: `error` returns the error side of the result,
`trap` raises an uncaught exception (a trap). `kubelisten.dev/require-status: "true"` turns a
failed status write into an error return.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import cluster, types
from wit_world.imports.log import Level, log

LANG = "python"

# The WIT variant `api-error`, case by case: (class, name in messages).
_API_ERRORS = [
    (cluster.ApiError_NotFound, "not-found"),
    (cluster.ApiError_Conflict, "conflict"),
    (cluster.ApiError_ForbiddenByPolicy, "forbidden-by-policy"),
    (cluster.ApiError_ForbiddenByRbac, "forbidden-by-rbac"),
    (cluster.ApiError_Invalid, "invalid"),
    (cluster.ApiError_Timeout, "timeout"),
    (cluster.ApiError_Other, "other"),
]


def describe_api_error(err) -> str:
    for cls, name in _API_ERRORS:
        if isinstance(err, cls):
            return f"{name}: {err.value}"
    return f"other: {err!r}"


def annotation(ev: types.Event, key: str):
    for k, v in ev.meta.annotations:
        if k == key:
            return v
    return None


def object_name(ev: types.Event) -> str:
    if ev.meta.namespace is not None:
        return f"{ev.meta.namespace}/{ev.meta.name}"
    return ev.meta.name


def status_up_to_date(ev: types.Event) -> bool:
    """Our own status write comes back as an update: do not patch again for that generation."""
    if ev.meta.generation is None:
        return False
    try:
        status = json.loads(ev.object).get("status") or {}
    except (ValueError, AttributeError):
        return False
    return status.get("handledBy") == LANG and status.get("observedGeneration") == ev.meta.generation


def handle(ev: types.Event) -> None:
    fault = annotation(ev, "kubelisten.dev/fault")
    if fault == "error":
        raise Err(f"{LANG}: error requested")
    if fault == "trap":
        raise RuntimeError(f"{LANG}: trap requested")

    kind = ev.kind.name.lower()
    log(Level.INFO, f"{LANG}: {kind} {ev.meta.kind} {object_name(ev)} rv={ev.meta.resource_version}")
    if ev.kind == types.EventKind.DELETE:
        return
    if status_up_to_date(ev):
        log(Level.DEBUG, f"{LANG}: status already up to date")
        return

    ref = cluster.ObjectRef(
        api_version=ev.meta.api_version,
        kind=ev.meta.kind,
        namespace=ev.meta.namespace,
        name=ev.meta.name,
    )
    status = {"handledBy": LANG, "observedResourceVersion": ev.meta.resource_version}
    if ev.meta.generation is not None:
        status["observedGeneration"] = ev.meta.generation
    patch = json.dumps({"status": status}, separators=(",", ":"))
    try:
        cluster.patch_status(ref, cluster.PatchType.MERGE, patch)
    except Err as e:
        message = f"{LANG}: patch-status failed: {describe_api_error(e.value)}"
        if annotation(ev, "kubelisten.dev/require-status") == "true":
            raise Err(message)
        log(Level.WARN, message)
        return
    log(Level.INFO, f"{LANG}: status recorded")


class WitWorld(wit_world.WitWorld):
    def create(self, ev: types.Event) -> None:
        handle(ev)

    def update(self, ev: types.Event) -> None:
        handle(ev)

    def delete(self, ev: types.Event) -> None:
        handle(ev)

    def error(self, err: types.WatchError) -> None:
        log(Level.WARN, f"{LANG}: watch error {err.code} {err.reason}: {err.message}")

    def rollback(self, ev: types.Event) -> None:
        log(Level.INFO, f"{LANG}: rollback {ev.meta.kind} {object_name(ev)}")
