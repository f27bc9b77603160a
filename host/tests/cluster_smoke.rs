//! Smoke test of the local control plane (deploy/local): a CRD from YAML becomes
//! Established; a custom resource can be created, listed, watched, status-patched
//! and deleted with kube-rs; watch streams carry BOOKMARK events.
//!
//! Run with `make test`, or `deploy/local/with-cluster.sh cargo test -p kubelisten --test cluster_smoke`.

mod common;

use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    api::{
        Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
        PatchParams, PostParams, WatchEvent, WatchParams,
    },
    Client, ResourceExt,
};
use serde_json::json;

const CRD_FILE: &str = "smoke-crd.yaml";

/// Upper bound for any single wait in this file; generous for slow CI machines.
const WAIT: Duration = Duration::from_secs(60);

async fn smoke_crd(client: &Client) -> (CustomResourceDefinition, ApiResource) {
    let path = common::testdata(CRD_FILE);
    let yaml = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let crd = common::apply_crd_yaml(client, &yaml).await;
    let version = crd
        .spec
        .versions
        .iter()
        .find(|v| v.served && v.storage)
        .expect("CRD has a served storage version")
        .name
        .clone();
    let gvk = GroupVersionKind::gvk(&crd.spec.group, &version, &crd.spec.names.kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural);
    (crd, ar)
}

fn smoke_object(ar: &ApiResource, name: &str, message: &str) -> DynamicObject {
    DynamicObject::new(name, ar).data(json!({ "spec": { "message": message, "replicas": 1 } }))
}

#[tokio::test]
async fn crd_established_and_custom_resource_lifecycle() {
    let client = common::client().await;
    let (crd, ar) = smoke_crd(&client).await;
    assert!(
        crd.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")),
        "apply_crd_yaml returned a CRD that is not Established"
    );

    let ns = common::TestNamespace::new(&client).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &ar);

    // Start watching from the (empty) list's resourceVersion before creating anything.
    let initial = api.list(&ListParams::default()).await.expect("list smokes");
    assert!(initial.items.is_empty(), "fresh namespace has no smokes");
    let rv = initial
        .metadata
        .resource_version
        .expect("list has a resourceVersion");
    let mut events = api
        .watch(&WatchParams::default().timeout(50), &rv)
        .await
        .expect("start watch")
        .boxed();

    // Create.
    let created = api
        .create(&PostParams::default(), &smoke_object(&ar, "first", "hello"))
        .await
        .expect("create smoke");
    assert_eq!(created.data["spec"]["message"], "hello");
    assert!(created.uid().is_some());

    // List.
    let listed = api.list(&ListParams::default()).await.expect("list smokes");
    let names: Vec<String> = listed.items.iter().map(|o| o.name_any()).collect();
    assert_eq!(names, vec!["first".to_string()]);

    // Without controllers nothing writes status; tests do it through the subresource.
    let patched = api
        .patch_status(
            "first",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "phase": "Ready" } })),
        )
        .await
        .expect("patch status subresource");
    assert_eq!(patched.data["status"]["phase"], "Ready");

    // Delete.
    api.delete("first", &DeleteParams::default())
        .await
        .expect("delete smoke");

    // Watch saw ADDED, MODIFIED (status) and DELETED for our object, in order
    // (BOOKMARKs may be interleaved and are skipped here).
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(ev) = events.try_next().await.expect("watch stream error") {
            match ev {
                WatchEvent::Added(o) => seen.push(("ADDED", o.name_any())),
                WatchEvent::Modified(o) => seen.push(("MODIFIED", o.name_any())),
                WatchEvent::Deleted(o) => {
                    seen.push(("DELETED", o.name_any()));
                    break;
                }
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(e) => panic!("watch error event: {e:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no DELETED event within {WAIT:?}; saw {seen:?}"));
    let kinds: Vec<&str> = seen.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        vec!["ADDED", "MODIFIED", "DELETED"],
        "events: {seen:?}"
    );
    assert!(seen.iter().all(|(_, n)| n == "first"));

    let after = api.list(&ListParams::default()).await.expect("list smokes");
    assert!(after.items.is_empty(), "smoke was deleted");
    ns.delete().await;
}

/// A plain watch with `allowWatchBookmarks=true` gets a BOOKMARK.
///
/// How kube-apiserver 1.34's watch cache decides (k8s.io/apiserver cacher): every
/// bookmark-enabled watcher is due a bookmark 2 s before its `timeoutSeconds`
/// deadline (or every minute on long watches), dispatched by a ~1 s ticker and
/// carrying the cache's latest resourceVersion for that resource. A plain watch
/// only receives bookmarks *newer* than the resourceVersion it started from, so on
/// an otherwise idle resource no bookmark is ever sent. Hence: start the watch,
/// write once (MODIFIED) so the resource's RV moves past the start, and then the
/// pre-timeout BOOKMARK arrives before the server closes the 20 s watch.
/// We assert that it arrives and carries an RV at least as new as the write, not when.
#[tokio::test]
async fn watch_with_bookmarks_receives_bookmark() {
    let client = common::client().await;
    let (_crd, ar) = smoke_crd(&client).await;
    let ns = common::TestNamespace::new(&client).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &ar);
    api.create(
        &PostParams::default(),
        &smoke_object(&ar, "marked", "bookmark me"),
    )
    .await
    .expect("create smoke");
    let start_rv = api
        .list(&ListParams::default())
        .await
        .expect("list smokes")
        .metadata
        .resource_version
        .expect("list has a resourceVersion");

    // Bookmarks are on by default in kube-rs. The API server sends one about 2 s before the
    // watch's timeout (once, if the watch is past `start_rv` by then): 20 s leaves room for a
    // slow status patch.
    let wp = WatchParams::default().timeout(20);
    assert!(wp.bookmarks);
    let mut events = api
        .watch(&wp, &start_rv)
        .await
        .expect("start watch")
        .boxed();

    let written = api
        .patch_status(
            "marked",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "phase": "Marked" } })),
        )
        .await
        .expect("patch status");
    let written_rv: u64 = written
        .resource_version()
        .expect("rv")
        .parse()
        .expect("numeric rv");

    let mut seen = Vec::new();
    let mut bookmark_rv = None;
    tokio::time::timeout(WAIT, async {
        while let Some(ev) = events.try_next().await.expect("watch stream error") {
            match ev {
                WatchEvent::Bookmark(b) => {
                    bookmark_rv = Some(b.metadata.resource_version);
                    break;
                }
                WatchEvent::Added(o) => seen.push(("ADDED", o.name_any())),
                WatchEvent::Modified(o) => seen.push(("MODIFIED", o.name_any())),
                WatchEvent::Deleted(o) => seen.push(("DELETED", o.name_any())),
                WatchEvent::Error(e) => panic!("watch error event: {e:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("watch did not end within {WAIT:?}"));
    assert_eq!(
        seen,
        vec![("MODIFIED", "marked".to_string())],
        "events before the bookmark"
    );
    let bookmark_rv =
        bookmark_rv.unwrap_or_else(|| panic!("watch ended without a BOOKMARK; events: {seen:?}"));
    let bookmark_rv: u64 = bookmark_rv.parse().expect("numeric bookmark rv");
    assert!(
        bookmark_rv >= written_rv,
        "bookmark rv {bookmark_rv} < written rv {written_rv}"
    );
    ns.delete().await;
}

/// The raw HTTP watch stream (newline-delimited JSON) for `allowWatchBookmarks=true`
/// contains a `"type":"BOOKMARK"` line. This one uses a streaming list
/// (`sendInitialEvents=true`), where the server sends the initial objects as ADDED
/// and then, deterministically, a BOOKMARK annotated `k8s.io/initial-events-end`.
#[tokio::test]
async fn raw_watch_stream_contains_bookmark_line() {
    let client = common::client().await;
    let (_crd, ar) = smoke_crd(&client).await;
    let ns = common::TestNamespace::new(&client).await;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &ar);
    api.create(
        &PostParams::default(),
        &smoke_object(&ar, "raw", "raw stream"),
    )
    .await
    .expect("create smoke");

    let url_path = format!(
        "/apis/{}/namespaces/{}/{}",
        ar.api_version,
        ns.name(),
        ar.plural
    );
    let wp = WatchParams::default().initial_events().timeout(30);
    let request = kube::core::Request::new(url_path)
        .watch(&wp, "")
        .expect("build watch request");
    let query = request.uri().query().unwrap_or_default().to_string();
    assert!(query.contains("allowWatchBookmarks=true"), "query: {query}");
    assert!(query.contains("sendInitialEvents=true"), "query: {query}");

    let reader = client
        .request_stream(request)
        .await
        .expect("raw watch request");
    let mut lines = reader.lines();
    let mut seen = Vec::new();
    let bookmark = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next().await {
            let line = line.expect("read watch stream");
            if line.trim().is_empty() {
                continue;
            }
            let event: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("watch line is not JSON ({e}): {line}"));
            let ty = event["type"].as_str().unwrap_or_default().to_string();
            if ty == "BOOKMARK" {
                return Some(event);
            }
            seen.push((ty, event["object"]["metadata"]["name"].clone()));
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("no BOOKMARK line within {WAIT:?}"))
    .unwrap_or_else(|| panic!("raw watch stream ended without a BOOKMARK line"));

    assert_eq!(
        seen,
        vec![("ADDED".to_string(), json!("raw"))],
        "initial events before the bookmark"
    );
    let meta = &bookmark["object"]["metadata"];
    assert!(
        meta["resourceVersion"]
            .as_str()
            .is_some_and(|rv| !rv.is_empty()),
        "bookmark: {bookmark}"
    );
    assert_eq!(
        meta["annotations"]["k8s.io/initial-events-end"], "true",
        "bookmark: {bookmark}"
    );
    ns.delete().await;
}

/// TokenRequest works (service-account issuer and signing key are configured) and
/// RBAC is enforced for the minted identity.
#[tokio::test]
async fn token_request_and_rbac() {
    let client = common::client().await;
    let ns = common::TestNamespace::new(&client).await;
    let token = common::mint_token(&client, ns.name(), "smoke-reader", &[], 600).await;
    assert_eq!(token.split('.').count(), 3, "a JWT");

    // Same cluster and CA, but authenticated with the minted token.
    let mut config = common::config().await;
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.into()),
        ..Default::default()
    };
    let sa_client = Client::try_from(config).expect("client for the service account");
    let err = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(sa_client, ns.name())
        .list(&ListParams::default())
        .await
        .expect_err("a ServiceAccount without RoleBindings is forbidden");
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403, "{s:?}");
            assert!(
                s.message
                    .contains(&format!("system:serviceaccount:{}:smoke-reader", ns.name())),
                "{s:?}"
            );
        }
        other => panic!("expected 403 Forbidden, got {other}"),
    }
    ns.delete().await;
}
