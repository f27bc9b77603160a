//! The reference listener of the polyglot set (issue 9): the Python, JavaScript, C and Go guests
//! under `guests/*-listener/` implement exactly this behaviour; `guests/README.md` states it.
//!
//! - `create` / `update`: log the event, then record in the object's status, through the
//!   `cluster` import, which language handled it: a JSON merge patch of the status subresource,
//!   `{"status":{"handledBy":"rust","observedResourceVersion":"<rv>","observedGeneration":<gen>}}`
//!   (`observedGeneration` only when the object has a generation). The patch is skipped when the
//!   status already says `handledBy: rust` for the object's current generation: our own status
//!   write comes back as an update, and patching again would loop forever.
//!   A failed cluster call is logged and the event still succeeds, unless the object has the
//!   annotation `kubelisten.dev/require-status: "true"`: then the export returns the error text.
//! - `delete`: log it.
//! - annotation `kubelisten.dev/fault`: `error` returns `err("rust: error requested")` (not a
//!   trap); `trap` panics (a trap the host contains).
//! - `error` and `rollback`: log.

wit_bindgen::generate!({ path: "../../wit", world: "listener" });

use kubelisten::listener::cluster::{self, ApiError, ObjectRef, PatchType};
use kubelisten::listener::log::{log, Level};
use kubelisten::listener::types::EventKind;

/// The language this guest reports in `status.handledBy` and in its messages.
const LANG: &str = "rust";

fn annotation<'a>(ev: &'a Event, key: &str) -> Option<&'a str> {
    ev.meta
        .annotations
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Create => "create",
        EventKind::Update => "update",
        EventKind::Delete => "delete",
    }
}

/// `namespace/name`, or `name` for a cluster-scoped object.
fn object_name(ev: &Event) -> String {
    match &ev.meta.namespace {
        Some(ns) => format!("{ns}/{}", ev.meta.name),
        None => ev.meta.name.clone(),
    }
}

/// `variant: message`, the same text in every language.
fn describe_api_error(err: &ApiError) -> String {
    let (variant, message) = match err {
        ApiError::NotFound(m) => ("not-found", m),
        ApiError::Conflict(m) => ("conflict", m),
        ApiError::ForbiddenByPolicy(m) => ("forbidden-by-policy", m),
        ApiError::ForbiddenByRbac(m) => ("forbidden-by-rbac", m),
        ApiError::Invalid(m) => ("invalid", m),
        ApiError::Timeout(m) => ("timeout", m),
        ApiError::Other(m) => ("other", m),
    };
    format!("{variant}: {message}")
}

/// Whether the object's status already records this language for its current generation.
fn status_up_to_date(ev: &Event) -> bool {
    let Some(generation) = ev.meta.generation else {
        return false;
    };
    let Ok(object) = serde_json::from_str::<serde_json::Value>(&ev.object) else {
        return false;
    };
    let status = &object["status"];
    status["handledBy"].as_str() == Some(LANG)
        && status["observedGeneration"].as_i64() == Some(generation)
}

fn handle(ev: Event) -> Result<(), String> {
    match annotation(&ev, "kubelisten.dev/fault") {
        Some("error") => return Err(format!("{LANG}: error requested")),
        Some("trap") => panic!("{LANG}: trap requested"),
        _ => {}
    }
    log(
        Level::Info,
        &format!(
            "{LANG}: {} {} {} rv={}",
            kind_name(ev.kind),
            ev.meta.kind,
            object_name(&ev),
            ev.meta.resource_version
        ),
    );
    if ev.kind == EventKind::Delete {
        return Ok(());
    }
    if status_up_to_date(&ev) {
        log(Level::Debug, &format!("{LANG}: status already up to date"));
        return Ok(());
    }
    let object = ObjectRef {
        api_version: ev.meta.api_version.clone(),
        kind: ev.meta.kind.clone(),
        namespace: ev.meta.namespace.clone(),
        name: ev.meta.name.clone(),
    };
    let mut status = serde_json::json!({
        "handledBy": LANG,
        "observedResourceVersion": ev.meta.resource_version,
    });
    if let Some(generation) = ev.meta.generation {
        status["observedGeneration"] = generation.into();
    }
    let patch = serde_json::json!({ "status": status }).to_string();
    match cluster::patch_status(&object, PatchType::Merge, &patch) {
        Ok(_) => {
            log(Level::Info, &format!("{LANG}: status recorded"));
            Ok(())
        }
        Err(err) => {
            let message = format!("{LANG}: patch-status failed: {}", describe_api_error(&err));
            if annotation(&ev, "kubelisten.dev/require-status") == Some("true") {
                Err(message)
            } else {
                log(Level::Warn, &message);
                Ok(())
            }
        }
    }
}

struct RustListener;

impl Guest for RustListener {
    fn create(ev: Event) -> Result<(), String> {
        handle(ev)
    }

    fn update(ev: Event) -> Result<(), String> {
        handle(ev)
    }

    fn delete(ev: Event) -> Result<(), String> {
        handle(ev)
    }

    fn error(err: WatchError) -> Result<(), String> {
        log(
            Level::Warn,
            &format!(
                "{LANG}: watch error {} {}: {}",
                err.code, err.reason, err.message
            ),
        );
        Ok(())
    }

    fn rollback(ev: Event) {
        log(
            Level::Info,
            &format!("{LANG}: rollback {} {}", ev.meta.kind, object_name(&ev)),
        );
    }
}

export!(RustListener);
