//! skafos' 01-basic example as a kubelisten listener: every SuperPod gets a Pod.
//!
//! On create and update the listener makes sure the Pod `<superpod>-pod` exists (created with an
//! owner reference to the SuperPod, image from `spec.image`), records it in the SuperPod's status
//! and records a Kubernetes Event. On delete it deletes the Pod (owner references make the
//! garbage collector do that in a full cluster; the local control plane has no collector).
//! It needs the grants shown in deploy/examples/kubelisten.yaml.

wit_bindgen::generate!({ path: "../../wit", world: "listener" });

use kubelisten::listener::cluster::{self, ApiError, EventType, ObjectRef, PatchType};
use kubelisten::listener::log::{log, Level};
use serde_json::json;

fn pod_ref(ev: &Event) -> ObjectRef {
    ObjectRef {
        api_version: "v1".into(),
        kind: "Pod".into(),
        namespace: ev.meta.namespace.clone(),
        name: format!("{}-pod", ev.meta.name),
    }
}

fn superpod_ref(ev: &Event) -> ObjectRef {
    ObjectRef {
        api_version: ev.meta.api_version.clone(),
        kind: ev.meta.kind.clone(),
        namespace: ev.meta.namespace.clone(),
        name: ev.meta.name.clone(),
    }
}

fn describe(err: &ApiError) -> String {
    match err {
        ApiError::NotFound(m) => format!("not found: {m}"),
        ApiError::Conflict(m) => format!("conflict: {m}"),
        ApiError::ForbiddenByPolicy(m) => format!("forbidden by policy: {m}"),
        ApiError::ForbiddenByRbac(m) => format!("forbidden by RBAC: {m}"),
        ApiError::Invalid(m) => format!("invalid: {m}"),
        ApiError::Timeout(m) => format!("timeout: {m}"),
        ApiError::Other(m) => format!("error: {m}"),
    }
}

fn ensure_pod(ev: &Event) -> Result<(), String> {
    let pod = pod_ref(ev);
    match cluster::get(&pod) {
        Ok(_) => return Ok(()),
        Err(ApiError::NotFound(_)) => {}
        Err(err) => return Err(format!("reading pod {}: {}", pod.name, describe(&err))),
    }
    let superpod: serde_json::Value =
        serde_json::from_str(&ev.object).map_err(|e| format!("superpod is not JSON: {e}"))?;
    let image = superpod
        .pointer("/spec/image")
        .and_then(|v| v.as_str())
        .unwrap_or("registry.k8s.io/pause:3.10");
    let manifest = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": {"kubelisten.dev/superpod": ev.meta.name},
            "ownerReferences": [{
                "apiVersion": ev.meta.api_version,
                "kind": ev.meta.kind,
                "name": ev.meta.name,
                "uid": ev.meta.uid,
                "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {"containers": [{"name": "main", "image": image}]}
    });
    match cluster::create(&manifest.to_string()) {
        Ok(_) | Err(ApiError::Conflict(_)) => {}
        Err(err) => return Err(format!("creating pod {}: {}", pod.name, describe(&err))),
    }
    log(
        Level::Info,
        &format!("created pod {} for superpod {}", pod.name, ev.meta.name),
    );
    let status = json!({"status": {"pod": pod.name, "phase": "PodCreated"}}).to_string();
    if let Err(err) = cluster::patch_status(&superpod_ref(ev), PatchType::Merge, &status) {
        return Err(format!("updating superpod status: {}", describe(&err)));
    }
    if let Err(err) = cluster::record_event(
        &superpod_ref(ev),
        EventType::Normal,
        "PodCreated",
        &format!("created pod {}", pod.name),
    ) {
        log(
            Level::Warn,
            &format!("cannot record event: {}", describe(&err)),
        );
    }
    Ok(())
}

struct SuperPod;

impl Guest for SuperPod {
    fn create(ev: Event) -> Result<(), String> {
        ensure_pod(&ev)
    }

    fn update(ev: Event) -> Result<(), String> {
        ensure_pod(&ev)
    }

    fn delete(ev: Event) -> Result<(), String> {
        let pod = pod_ref(&ev);
        match cluster::delete(&pod) {
            Ok(()) | Err(ApiError::NotFound(_)) => {
                log(
                    Level::Info,
                    &format!("deleted pod {} of superpod {}", pod.name, ev.meta.name),
                );
                Ok(())
            }
            Err(err) => Err(format!("deleting pod {}: {}", pod.name, describe(&err))),
        }
    }

    fn error(err: WatchError) -> Result<(), String> {
        log(
            Level::Warn,
            &format!("watch error {} {}: {}", err.code, err.reason, err.message),
        );
        Ok(())
    }

    fn rollback(ev: Event) {
        log(
            Level::Info,
            &format!("rollback for superpod {}", ev.meta.name),
        );
    }
}

export!(SuperPod);
