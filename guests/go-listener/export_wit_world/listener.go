// kubelisten listener in Go: the polyglot reference behaviour (see guests/README.md).
//
// create/update: log, then record `status.handledBy = "go"` through the cluster import;
// delete: log. Annotation `kubelisten.dev/fault`: `error` returns the error side of the result,
// `trap` panics (a Go panic exits the module: a trap). `kubelisten.dev/require-status: "true"`
// turns a failed status write into an error return.
//
// The bindings (packages kubelisten_listener_*, the //go:wasmexport entry points) are generated
// by wit-bindgen's Go generator at build time; this package holds the functions they call.
package export_wit_world

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"
	"runtime/metrics"

	"wit_component/kubelisten_listener_cluster"
	"wit_component/kubelisten_listener_log"
	"wit_component/kubelisten_listener_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

const lang = "go"

// Garbage collection runs only between events, never inside an allocation. The host writes each
// event into guest memory through `cabi_realloc`, where the component model forbids calls to
// imports; a collection started by that allocation calls WASI imports (clocks, the scheduler)
// and the call traps with "cannot leave component instance" (seen about every 800 events in
// reference mode). So automatic GC is off, and each export ends with collectGarbage, which
// collects when the heap has doubled since the last collection (as GOGC=100 would), with a
// 4 MiB floor.
func init() {
	debug.SetGCPercent(-1)
}

var (
	heapSample = []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
)

const minHeapTarget = 4 << 20

func collectGarbage() {
	metrics.Read(heapSample)
	live, objects := heapSample[0].Value.Uint64(), heapSample[1].Value.Uint64()
	if objects > max(2*live, minHeapTarget) {
		runtime.GC()
	}
}

type event = kubelisten_listener_types.Event
type result = witTypes.Result[witTypes.Unit, string]

func ok() result             { return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{}) }
func fail(msg string) result { return witTypes.Err[witTypes.Unit, string](msg) }

func logf(level kubelisten_listener_log.Level, format string, args ...any) {
	kubelisten_listener_log.Log(level, fmt.Sprintf(format, args...))
}

func annotation(ev event, key string) (string, bool) {
	for _, kv := range ev.Meta.Annotations {
		if kv.F0 == key {
			return kv.F1, true
		}
	}
	return "", false
}

// objectName is `namespace/name`, or `name` for a cluster-scoped object.
func objectName(ev event) string {
	if ev.Meta.Namespace.IsSome() {
		return ev.Meta.Namespace.Some() + "/" + ev.Meta.Name
	}
	return ev.Meta.Name
}

func kindName(kind kubelisten_listener_types.EventKind) string {
	switch kind {
	case kubelisten_listener_types.EventKind_Create:
		return "create"
	case kubelisten_listener_types.EventKind_Update:
		return "update"
	default:
		return "delete"
	}
}

// describeAPIError is `variant: message`, the same text in every language.
func describeAPIError(e kubelisten_listener_cluster.ApiError) string {
	switch e.Tag() {
	case kubelisten_listener_cluster.ApiError_NotFound:
		return "not-found: " + e.NotFound()
	case kubelisten_listener_cluster.ApiError_Conflict:
		return "conflict: " + e.Conflict()
	case kubelisten_listener_cluster.ApiError_ForbiddenByPolicy:
		return "forbidden-by-policy: " + e.ForbiddenByPolicy()
	case kubelisten_listener_cluster.ApiError_ForbiddenByRbac:
		return "forbidden-by-rbac: " + e.ForbiddenByRbac()
	case kubelisten_listener_cluster.ApiError_Invalid:
		return "invalid: " + e.Invalid()
	case kubelisten_listener_cluster.ApiError_Timeout:
		return "timeout: " + e.Timeout()
	default:
		return "other: " + e.Other()
	}
}

// statusUpToDate: our own status write comes back as an update; do not patch again for that
// generation.
func statusUpToDate(ev event) bool {
	if !ev.Meta.Generation.IsSome() {
		return false
	}
	var object struct {
		Status struct {
			HandledBy          string `json:"handledBy"`
			ObservedGeneration *int64 `json:"observedGeneration"`
		} `json:"status"`
	}
	if err := json.Unmarshal([]byte(ev.Object), &object); err != nil {
		return false
	}
	s := object.Status
	return s.HandledBy == lang && s.ObservedGeneration != nil && *s.ObservedGeneration == ev.Meta.Generation.Some()
}

type statusPatch struct {
	Status struct {
		HandledBy               string `json:"handledBy"`
		ObservedResourceVersion string `json:"observedResourceVersion"`
		ObservedGeneration      *int64 `json:"observedGeneration,omitempty"`
	} `json:"status"`
}

func handle(ev event) result {
	if fault, _ := annotation(ev, "kubelisten.dev/fault"); fault == "error" {
		return fail(lang + ": error requested")
	} else if fault == "trap" {
		panic(lang + ": trap requested")
	}

	logf(kubelisten_listener_log.Level_Info, "%s: %s %s %s rv=%s", lang, kindName(ev.Kind), ev.Meta.Kind, objectName(ev), ev.Meta.ResourceVersion)
	if ev.Kind == kubelisten_listener_types.EventKind_Delete {
		return ok()
	}
	if statusUpToDate(ev) {
		logf(kubelisten_listener_log.Level_Debug, "%s: status already up to date", lang)
		return ok()
	}

	ref := kubelisten_listener_cluster.ObjectRef{
		ApiVersion: ev.Meta.ApiVersion,
		Kind:       ev.Meta.Kind,
		Namespace:  ev.Meta.Namespace,
		Name:       ev.Meta.Name,
	}
	var patch statusPatch
	patch.Status.HandledBy = lang
	patch.Status.ObservedResourceVersion = ev.Meta.ResourceVersion
	if ev.Meta.Generation.IsSome() {
		generation := ev.Meta.Generation.Some()
		patch.Status.ObservedGeneration = &generation
	}
	text, err := json.Marshal(patch)
	if err != nil {
		return fail(fmt.Sprintf("%s: encoding the status patch: %v", lang, err))
	}
	res := kubelisten_listener_cluster.PatchStatus(ref, kubelisten_listener_cluster.PatchType_Merge, string(text))
	if res.IsErr() {
		message := fmt.Sprintf("%s: patch-status failed: %s", lang, describeAPIError(res.Err()))
		if required, _ := annotation(ev, "kubelisten.dev/require-status"); required == "true" {
			return fail(message)
		}
		logf(kubelisten_listener_log.Level_Warn, "%s", message)
		return ok()
	}
	logf(kubelisten_listener_log.Level_Info, "%s: status recorded", lang)
	return ok()
}

func Create(ev event) result {
	defer collectGarbage()
	return handle(ev)
}

func Update(ev event) result {
	defer collectGarbage()
	return handle(ev)
}

func Delete(ev event) result {
	defer collectGarbage()
	return handle(ev)
}

func Error(err kubelisten_listener_types.WatchError) result {
	defer collectGarbage()
	logf(kubelisten_listener_log.Level_Warn, "%s: watch error %d %s: %s", lang, err.Code, err.Reason, err.Message)
	return ok()
}

func Rollback(ev event) {
	defer collectGarbage()
	logf(kubelisten_listener_log.Level_Info, "%s: rollback %s %s", lang, ev.Meta.Kind, objectName(ev))
}
