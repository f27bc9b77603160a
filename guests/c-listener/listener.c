// kubelisten listener in C: the polyglot reference behaviour (see guests/README.md).
//
// create/update: log, then record `status.handledBy = "c"` through the cluster import;
// delete: log. Annotation `kubelisten.dev/fault`: `error` returns the error side of the result,
// `trap` aborts (a wasm trap). `kubelisten.dev/require-status: "true"` turns a failed status
// write into an error return.
//
// Memory ownership (wit-bindgen's C conventions):
// - exported functions own their parameters: every export frees its `ev` / `err_` before
//   returning (listener_event_free / listener_watch_error_free);
// - an export's error string is freed by the generated `cabi_post_*` with free(): it must be
//   malloc'd (listener_string_dup / make_string below), never a literal;
// - arguments passed to imports are borrowed: they may point into `ev` or at literals;
// - results returned by imports (the `ret` string and the `api_error`) are owned by the caller
//   and freed here.

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "listener.h"

#define LANG "c"

typedef listener_string_t str_t;

// A malloc'd string from printf-style arguments (never NULL: aborts on allocation failure).
static char *format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *format(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *buf = malloc((size_t)n + 1);
    if (buf == NULL) abort();
    va_start(ap, fmt);
    vsnprintf(buf, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return buf;
}

// Takes ownership of a malloc'd NUL-terminated text: the string handed to the host.
static str_t take_string(char *text) {
    return (str_t){(uint8_t *)text, strlen(text)};
}

static void log_text(kubelisten_listener_log_level_t level, char *text /* freed */) {
    str_t message;
    listener_string_set(&message, text);  // borrowed for the call
    kubelisten_listener_log_log(level, &message);
    free(text);
}

static bool str_eq(const str_t *s, const char *lit) {
    size_t n = strlen(lit);
    return s->len == n && memcmp(s->ptr, lit, n) == 0;
}

// The value of annotation `key`, or NULL.
static const str_t *annotation(const listener_event_t *ev, const char *key) {
    const listener_list_tuple2_string_string_t *a = &ev->meta.annotations;
    for (size_t i = 0; i < a->len; i++) {
        if (str_eq(&a->ptr[i].f0, key)) return &a->ptr[i].f1;
    }
    return NULL;
}

static const char *kind_name(kubelisten_listener_types_event_kind_t kind) {
    switch (kind) {
        case KUBELISTEN_LISTENER_TYPES_EVENT_KIND_CREATE: return "create";
        case KUBELISTEN_LISTENER_TYPES_EVENT_KIND_UPDATE: return "update";
        default: return "delete";
    }
}

// `namespace/name`, or `name` for a cluster-scoped object (malloc'd).
static char *object_name(const listener_event_t *ev) {
    const kubelisten_listener_types_object_meta_t *m = &ev->meta;
    if (m->namespace_.is_some)
        return format("%.*s/%.*s", (int)m->namespace_.val.len, (const char *)m->namespace_.val.ptr,
                      (int)m->name.len, (const char *)m->name.ptr);
    return format("%.*s", (int)m->name.len, (const char *)m->name.ptr);
}

// `variant: message` for an api-error (malloc'd).
static char *describe_api_error(const kubelisten_listener_cluster_api_error_t *e) {
    static const char *names[] = {"not-found", "conflict", "forbidden-by-policy",
                                  "forbidden-by-rbac", "invalid", "timeout", "other"};
    const char *name = e->tag < sizeof(names) / sizeof(names[0]) ? names[e->tag] : "other";
    // Every case of the variant carries a string, at the same place in the union.
    const str_t *m = &e->val.other;
    return format("%s: %.*s", name, (int)m->len, (const char *)m->ptr);
}

// The first occurrence of `needle` in s[from..], or -1.
static long find(const str_t *s, size_t from, const char *needle) {
    size_t n = strlen(needle);
    for (size_t i = from; i + n <= s->len; i++) {
        if (memcmp(s->ptr + i, needle, n) == 0) return (long)i;
    }
    return -1;
}

// Our own status write comes back as an update: do not patch again for that generation.
// No JSON parser here: the API server writes compact JSON, so look for the two members inside
// the object's `"status":{...}` text.
static bool status_up_to_date(const listener_event_t *ev) {
    if (!ev->meta.generation.is_some) return false;
    long status = find(&ev->object, 0, "\"status\":{");
    if (status < 0) return false;
    if (find(&ev->object, (size_t)status, "\"handledBy\":\"" LANG "\"") < 0) return false;
    char *member = format("\"observedGeneration\":%lld", (long long)ev->meta.generation.val);
    long at = find(&ev->object, (size_t)status, member);
    size_t end = at < 0 ? 0 : (size_t)at + strlen(member);
    free(member);
    return at >= 0 && (end >= ev->object.len || ev->object.ptr[end] < '0' || ev->object.ptr[end] > '9');
}

// `s` as a JSON string literal (malloc'd).
static char *json_string(const str_t *s) {
    char *out = malloc(s->len * 6 + 3);
    if (out == NULL) abort();
    size_t o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < s->len; i++) {
        unsigned char c = s->ptr[i];
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)sprintf(out + o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}

// Handles create/update/delete. Borrows `ev`; on failure sets `*err` to a malloc'd string.
static bool handle(const listener_event_t *ev, str_t *err) {
    const str_t *fault = annotation(ev, "kubelisten.dev/fault");
    if (fault != NULL && str_eq(fault, "error")) {
        listener_string_dup(err, LANG ": error requested");  // malloc'd: cabi_post frees it
        return false;
    }
    if (fault != NULL && str_eq(fault, "trap")) {
        fprintf(stderr, LANG ": trap requested\n");
        abort();
    }

    char *name = object_name(ev);
    log_text(KUBELISTEN_LISTENER_LOG_LEVEL_INFO,
             format(LANG ": %s %.*s %s rv=%.*s", kind_name(ev->kind), (int)ev->meta.kind.len,
                    (const char *)ev->meta.kind.ptr, name, (int)ev->meta.resource_version.len,
                    (const char *)ev->meta.resource_version.ptr));
    free(name);
    if (ev->kind == KUBELISTEN_LISTENER_TYPES_EVENT_KIND_DELETE) return true;
    if (status_up_to_date(ev)) {
        log_text(KUBELISTEN_LISTENER_LOG_LEVEL_DEBUG, format(LANG ": status already up to date"));
        return true;
    }

    // Borrowed views into `ev`: the import does not take ownership of its arguments.
    kubelisten_listener_cluster_object_ref_t ref = {
        .api_version = ev->meta.api_version,
        .kind = ev->meta.kind,
        .namespace_ = ev->meta.namespace_,
        .name = ev->meta.name,
    };
    char *rv = json_string(&ev->meta.resource_version);
    char *patch_text =
        ev->meta.generation.is_some
            ? format("{\"status\":{\"handledBy\":\"" LANG "\",\"observedResourceVersion\":%s,"
                     "\"observedGeneration\":%lld}}",
                     rv, (long long)ev->meta.generation.val)
            : format("{\"status\":{\"handledBy\":\"" LANG "\",\"observedResourceVersion\":%s}}", rv);
    free(rv);
    str_t patch;
    listener_string_set(&patch, patch_text);
    str_t result;
    kubelisten_listener_cluster_api_error_t api_error;
    bool ok = kubelisten_listener_cluster_patch_status(
        &ref, KUBELISTEN_LISTENER_CLUSTER_PATCH_TYPE_MERGE, &patch, &result, &api_error);
    free(patch_text);
    if (ok) {
        listener_string_free(&result);  // the patched object: ours to free
        log_text(KUBELISTEN_LISTENER_LOG_LEVEL_INFO, format(LANG ": status recorded"));
        return true;
    }
    char *why = describe_api_error(&api_error);
    kubelisten_listener_cluster_api_error_free(&api_error);  // ours to free
    char *message = format(LANG ": patch-status failed: %s", why);
    free(why);
    const str_t *required = annotation(ev, "kubelisten.dev/require-status");
    if (required != NULL && str_eq(required, "true")) {
        *err = take_string(message);  // malloc'd: cabi_post frees it
        return false;
    }
    log_text(KUBELISTEN_LISTENER_LOG_LEVEL_WARN, message);
    return true;
}

static bool handle_owned(listener_event_t *ev, str_t *err) {
    bool ok = handle(ev, err);
    listener_event_free(ev);  // exported parameters are owned by the callee
    return ok;
}

bool exports_listener_create(listener_event_t *ev, str_t *err) { return handle_owned(ev, err); }

bool exports_listener_update(listener_event_t *ev, str_t *err) { return handle_owned(ev, err); }

bool exports_listener_delete(listener_event_t *ev, str_t *err) { return handle_owned(ev, err); }

bool exports_listener_error(listener_watch_error_t *watch_error, str_t *err) {
    (void)err;
    log_text(KUBELISTEN_LISTENER_LOG_LEVEL_WARN,
             format(LANG ": watch error %u %.*s: %.*s", (unsigned)watch_error->code,
                    (int)watch_error->reason.len, (const char *)watch_error->reason.ptr,
                    (int)watch_error->message.len, (const char *)watch_error->message.ptr));
    listener_watch_error_free(watch_error);
    return true;
}

void exports_listener_rollback(listener_event_t *ev) {
    char *name = object_name(ev);
    log_text(KUBELISTEN_LISTENER_LOG_LEVEL_INFO,
             format(LANG ": rollback %.*s %s", (int)ev->meta.kind.len, (const char *)ev->meta.kind.ptr, name));
    free(name);
    listener_event_free(ev);
}
