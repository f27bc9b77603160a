//! A test listener that makes the cluster calls an object asks for and logs what came back.
//!
//! The annotation `kubelisten.dev/probe` holds a JSON list of calls, each
//! `{"op": "get|list|list-all|create|apply|patch|patch-status|json-patch|json-patch-status|delete|event", "ref": {apiVersion,
//! kind, namespace, name}, "body": "...", "repeat": N}`; `ref` defaults to the event's own object.
//! `list-all` pages through a list (`list`, then `list-page` with each continue token) with the
//! call's `limit` and `labelSelector`, and reports `{"items", "pages"}` as the result's `detail`.
//! The calls run on `create` only (a status patch would otherwise trigger them again).
//! After running them it logs one line `probe-result <json>` with, per call, how many succeeded
//! and the kinds of the errors, and returns ok: a policy or API failure never fails the guest.

wit_bindgen::generate!({ path: "../../wit", world: "listener" });

use kubelisten::listener::cluster::{self, ApiError, EventType, ListOptions, ObjectRef, PatchType};
use kubelisten::listener::log::{log, Level};
use serde_json::{json, Value};

fn error_kind(err: &ApiError) -> (&'static str, &str) {
    match err {
        ApiError::NotFound(m) => ("not-found", m),
        ApiError::Conflict(m) => ("conflict", m),
        ApiError::ForbiddenByPolicy(m) => ("forbidden-by-policy", m),
        ApiError::ForbiddenByRbac(m) => ("forbidden-by-rbac", m),
        ApiError::Invalid(m) => ("invalid", m),
        ApiError::Timeout(m) => ("timeout", m),
        ApiError::Other(m) => ("other", m),
    }
}

fn object_ref(call: &Value, ev: &Event) -> ObjectRef {
    let field = |k: &str| {
        call.pointer(&format!("/ref/{k}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    ObjectRef {
        api_version: field("apiVersion").unwrap_or_else(|| ev.meta.api_version.clone()),
        kind: field("kind").unwrap_or_else(|| ev.meta.kind.clone()),
        namespace: field("namespace").or_else(|| ev.meta.namespace.clone()),
        name: field("name").unwrap_or_else(|| ev.meta.name.clone()),
    }
}

/// `list` then `list-page` until the List's `metadata.continue` is empty, with the call's
/// `limit` and `labelSelector`; returns how many items and pages came back.
fn list_all(call: &Value, r: &ObjectRef) -> Result<Option<Value>, ApiError> {
    let options = ListOptions {
        label_selector: call
            .get("labelSelector")
            .and_then(Value::as_str)
            .map(str::to_string),
        field_selector: None,
        limit: call
            .get("limit")
            .and_then(Value::as_u64)
            .and_then(|l| u32::try_from(l).ok()),
    };
    let (mut items, mut pages, mut token) = (0usize, 0usize, None::<String>);
    loop {
        let page = if pages == 0 {
            cluster::list(&r.api_version, &r.kind, r.namespace.as_deref(), &options)?
        } else {
            cluster::list_page(
                &r.api_version,
                &r.kind,
                r.namespace.as_deref(),
                &options,
                token.as_deref(),
            )?
        };
        let page: Value = serde_json::from_str(&page)
            .map_err(|e| ApiError::Other(format!("list is not JSON: {e}")))?;
        pages += 1;
        items += page["items"].as_array().map_or(0, Vec::len);
        token = page
            .pointer("/metadata/continue")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        if token.is_none() {
            return Ok(Some(json!({"items": items, "pages": pages})));
        }
    }
}

fn run(call: &Value, ev: &Event) -> Result<Option<Value>, ApiError> {
    let r = object_ref(call, ev);
    let body = call.get("body").and_then(Value::as_str).unwrap_or("{}");
    let none = |()| None;
    match call.get("op").and_then(Value::as_str).unwrap_or("") {
        "get" => cluster::get(&r).map(drop).map(none),
        "list" => cluster::list(
            &r.api_version,
            &r.kind,
            r.namespace.as_deref(),
            &ListOptions {
                label_selector: None,
                field_selector: None,
                limit: None,
            },
        )
        .map(drop)
        .map(none),
        "list-all" => list_all(call, &r),
        "create" => cluster::create(body).map(drop).map(none),
        "apply" => cluster::apply(body).map(drop).map(none),
        "patch" => cluster::patch(&r, PatchType::Merge, body)
            .map(drop)
            .map(none),
        "patch-status" => cluster::patch_status(&r, PatchType::Merge, body)
            .map(drop)
            .map(none),
        "json-patch" => cluster::patch(&r, PatchType::Json, body)
            .map(drop)
            .map(none),
        "json-patch-status" => cluster::patch_status(&r, PatchType::Json, body)
            .map(drop)
            .map(none),
        "delete" => cluster::delete(&r).map(none),
        "event" => cluster::record_event(&r, EventType::Normal, "Probed", body).map(none),
        other => Err(ApiError::Invalid(format!("unknown probe op {other:?}"))),
    }
}

fn probe(ev: Event) -> Result<(), String> {
    let Some((_, spec)) = ev
        .meta
        .annotations
        .iter()
        .find(|(k, _)| k == "kubelisten.dev/probe")
    else {
        return Ok(());
    };
    let calls: Vec<Value> =
        serde_json::from_str(spec).map_err(|e| format!("bad probe annotation: {e}"))?;
    let mut results = Vec::new();
    for call in &calls {
        let repeat = call.get("repeat").and_then(Value::as_u64).unwrap_or(1);
        let (mut ok, mut errors, mut first) = (0u64, serde_json::Map::new(), None::<String>);
        let mut detail = None;
        for _ in 0..repeat {
            match run(call, &ev) {
                Ok(got) => {
                    ok += 1;
                    detail = got.or(detail);
                }
                Err(err) => {
                    let (kind, message) = error_kind(&err);
                    let n = errors.get(kind).and_then(Value::as_u64).unwrap_or(0);
                    errors.insert(kind.to_string(), json!(n + 1));
                    first.get_or_insert_with(|| message.to_string());
                }
            }
        }
        results.push(json!({"op": call.get("op"), "ok": ok, "errors": errors, "message": first, "detail": detail}));
    }
    log(
        Level::Info,
        &format!(
            "probe-result {}",
            json!({"object": ev.meta.name, "results": results})
        ),
    );
    Ok(())
}

struct Probe;

impl Guest for Probe {
    fn create(ev: Event) -> Result<(), String> {
        probe(ev)
    }

    fn update(_ev: Event) -> Result<(), String> {
        Ok(())
    }

    fn delete(_ev: Event) -> Result<(), String> {
        Ok(())
    }

    fn error(_err: WatchError) -> Result<(), String> {
        Ok(())
    }

    fn rollback(_ev: Event) {}
}

export!(Probe);
