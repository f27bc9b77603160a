//! Resolving watch targets against the local API server: a v1beta1-form CRD file is registered
//! and Established, an existing CRD is used as the cluster has it, core kinds are found by
//! discovery, and unknown kinds or misplaced namespaces are clear errors.
//!
//! Run with `make test`, or `deploy/local/with-cluster.sh cargo test -p kubelisten --test target`.

mod common;

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::Client;
use kubelisten::config::{TargetConfig, WatchConfig};
use kubelisten::watch::target::{self, Error};

/// A watch of `target` with no listeners (resolving does not look at them).
fn watch(name: &str, target: TargetConfig, namespaces: &[&str]) -> WatchConfig {
    WatchConfig {
        name: name.to_string(),
        target,
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        label_selector: None,
        field_selector: None,
        listeners: Vec::new(),
    }
}

fn resource(group: &str, version: &str, kind: &str) -> TargetConfig {
    TargetConfig::Resource {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: None,
    }
}

/// A unique CRD group for this test run, so reruns never meet an old CRD.
fn unique_group(test: &str) -> String {
    format!("{test}-{}.kubelisten.dev", common::random_suffix())
}

/// skafos' example CRD (v1beta1 form: `spec.version`, `spec.validation`) in `group`.
fn v1beta1_crd(group: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1beta1
kind: CustomResourceDefinition
metadata:
  name: superpods.{group}
spec:
  group: {group}
  names:
    kind: SuperPod
    listKind: SuperPodList
    plural: superpods
    singular: superpod
  scope: Namespaced
  version: v1
  validation:
    openAPIV3Schema:
      type: object
      properties:
        spec:
          type: object
          properties:
            image: {{type: string}}
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

async fn delete_crd(client: &Client, name: &str) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    if let Err(e) = api.delete(name, &DeleteParams::background()).await {
        eprintln!("warning: deleting CRD {name}: {e}");
    }
}

#[tokio::test]
async fn v1beta1_crd_file_is_registered_established_and_reused() {
    let client = common::client().await;
    let group = unique_group("beta");
    let crd_name = format!("superpods.{group}");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), "crd.yaml", &v1beta1_crd(&group));
    let crd_watch = watch("superpods", TargetConfig::Crd { path }, &[]);

    let target = target::resolve(&client, &crd_watch)
        .await
        .unwrap_or_else(|e| panic!("resolving {crd_name}: {e:#?}"));
    assert_eq!(target.resource.group, group);
    assert_eq!(target.resource.version, "v1");
    assert_eq!(target.resource.api_version, format!("{group}/v1"));
    assert_eq!(target.resource.kind, "SuperPod");
    assert_eq!(target.resource.plural, "superpods");
    assert!(target.namespaced);
    assert_eq!(target.describe(), format!("{group}/v1/SuperPod"));

    // Registered as v1 and Established.
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd = crds.get(&crd_name).await.expect("the CRD exists");
    let established = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Established"))
        .map(|c| c.status.as_str());
    assert_eq!(established, Some("True"));
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("converted schema");
    assert_eq!(schema.x_kubernetes_preserve_unknown_fields, Some(true));

    // The resource is usable right away.
    let api = Api::<DynamicObject>::namespaced_with(client.clone(), "default", &target.resource);
    let mut obj = DynamicObject::new("first", &target.resource);
    obj.data = serde_json::json!({ "spec": { "image": "nginx", "extra": 1 } });
    api.create(&PostParams::default(), &obj)
        .await
        .expect("creating a SuperPod");
    let got = api.get("first").await.expect("reading the SuperPod back");
    assert_eq!(got.data["spec"]["extra"], 1, "unknown fields are kept");

    // Resolving again finds the CRD already there and gives the same resource.
    let again = target::resolve(&client, &crd_watch)
        .await
        .unwrap_or_else(|e| panic!("resolving {crd_name} again: {e:#?}"));
    assert_eq!(again.resource, target.resource);
    assert_eq!(again.namespaced, target.namespaced);

    let _ = api.delete("first", &DeleteParams::default()).await;
    delete_crd(&client, &crd_name).await;
}

#[tokio::test]
async fn an_existing_crd_is_used_as_the_cluster_has_it() {
    let client = common::client().await;
    let group = unique_group("existing");
    let crd_name = format!("superpods.{group}");
    // The cluster's CRD stores v2 and is cluster-scoped; the file says v1, Namespaced.
    let cluster_crd = format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {crd_name}
spec:
  group: {group}
  names: {{kind: SuperPod, plural: superpods}}
  scope: Cluster
  versions:
    - name: v1
      served: true
      storage: false
      schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}
    - name: v2
      served: true
      storage: true
      schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}
"#
    );
    common::apply_crd_yaml(&client, &cluster_crd).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(dir.path(), "crd.yaml", &v1beta1_crd(&group));

    let target = target::resolve(
        &client,
        &watch("superpods", TargetConfig::Crd { path: path.clone() }, &[]),
    )
    .await
    .unwrap_or_else(|e| panic!("resolving {crd_name}: {e:#?}"));
    assert_eq!(target.resource.api_version, format!("{group}/v2"));
    assert!(!target.namespaced);

    // Namespaces make no sense for a cluster-scoped resource.
    let err = target::resolve(
        &client,
        &watch("superpods", TargetConfig::Crd { path }, &["default"]),
    )
    .await
    .expect_err("namespaces on a cluster-scoped CRD");
    assert!(matches!(err, Error::ClusterScoped { .. }), "{err:?}");
    assert!(err.to_string().contains("cluster-scoped"), "{err}");

    delete_crd(&client, &crd_name).await;
}

#[tokio::test]
async fn core_and_group_kinds_are_found_by_discovery() {
    let client = common::client().await;

    let t = target::resolve(
        &client,
        &watch("configmaps", resource("", "v1", "ConfigMap"), &["default"]),
    )
    .await
    .unwrap_or_else(|e| panic!("resolving v1/ConfigMap: {e:#?}"));
    assert_eq!(t.resource.plural, "configmaps");
    assert_eq!(t.resource.api_version, "v1");
    assert_eq!(t.resource.group, "");
    assert!(t.namespaced);
    assert_eq!(t.namespaces, ["default"]);
    assert_eq!(t.describe(), "v1/ConfigMap");

    let t = target::resolve(
        &client,
        &watch("deployments", resource("apps", "v1", "Deployment"), &[]),
    )
    .await
    .unwrap_or_else(|e| panic!("resolving apps/v1/Deployment: {e:#?}"));
    assert_eq!(t.resource.plural, "deployments");
    assert_eq!(t.resource.api_version, "apps/v1");
    assert!(t.namespaced);

    let t = target::resolve(
        &client,
        &watch("namespaces", resource("", "v1", "Namespace"), &[]),
    )
    .await
    .unwrap_or_else(|e| panic!("resolving v1/Namespace: {e:#?}"));
    assert_eq!(t.resource.plural, "namespaces");
    assert!(!t.namespaced);

    let err = target::resolve(
        &client,
        &watch("namespaces", resource("", "v1", "Namespace"), &["default"]),
    )
    .await
    .expect_err("namespaces on a cluster-scoped kind");
    assert!(matches!(err, Error::ClusterScoped { .. }), "{err:?}");
}

#[tokio::test]
async fn unknown_kinds_are_clear_errors() {
    let client = common::client().await;

    let err = target::resolve(
        &client,
        &watch("typo", resource("", "v1", "ConfigMapp"), &[]),
    )
    .await
    .expect_err("a kind that does not exist");
    let message = err.to_string();
    assert!(matches!(err, Error::UnknownKind { .. }), "{err:?}");
    assert!(
        message.starts_with("no resource kind ConfigMapp in v1 (it serves: "),
        "{message}"
    );
    assert!(message.contains("ConfigMap,"), "{message}");

    let err = target::resolve(
        &client,
        &watch(
            "wrong plural",
            TargetConfig::Resource {
                group: "apps".into(),
                version: "v1".into(),
                kind: "Deployment".into(),
                plural: Some("deploys".into()),
            },
            &[],
        ),
    )
    .await
    .expect_err("a plural that does not exist");
    assert!(
        err.to_string()
            .starts_with("no resource kind Deployment with plural deploys in apps/v1"),
        "{err}"
    );

    let err = target::resolve(
        &client,
        &watch(
            "no group",
            resource("nothing.kubelisten.dev", "v1", "Thing"),
            &[],
        ),
    )
    .await
    .expect_err("a group that is not served");
    assert!(
        matches!(err, Error::GroupVersionNotServed { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "the API server does not serve nothing.kubelisten.dev/v1"
    );

    let err = target::resolve(
        &client,
        &watch("no version", resource("apps", "v7", "Deployment"), &[]),
    )
    .await
    .expect_err("a version that is not served");
    assert!(
        matches!(err, Error::GroupVersionNotServed { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_malformed_crd_file_fails_before_touching_the_cluster() {
    let client = common::client().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write(
        dir.path(),
        "crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1beta1\nkind: CustomResourceDefinition\nspec:\n  group: broken.kubelisten.dev\n  names: {kind: Broken}\n  version: v1\n",
    );
    let err = target::resolve(
        &client,
        &watch("broken", TargetConfig::Crd { path: path.clone() }, &[]),
    )
    .await
    .expect_err("a CRD without a plural");
    assert!(matches!(err, Error::InvalidCrd(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "invalid CRD file {}:5:10: spec.names.plural: is missing or empty",
            path.display()
        )
    );
}

/// The config's selector checks agree with the API server: every selector in this corpus is
/// refused by both or accepted by both (a list of ConfigMaps with it, 400 or not).
#[tokio::test]
async fn selector_checks_agree_with_the_api_server() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ListParams;
    use kubelisten::watch::selectors::{check_field_selector, check_label_selector};

    let client = common::client().await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let labels = [
        "app",
        "!app",
        "app=web",
        "app==web",
        "app!=web",
        "app=",
        "app=web,tier!=db",
        " app = web , tier in (a, b) ",
        "env notin (prod)",
        "x in ()",
        "x in (a,,b)",
        "kubelisten.dev/watch=true",
        "replicas>2",
        "replicas<-1",
        "app=web,",
        ",app",
        "app=web tier=db",
        "app in a,b",
        "app in (a",
        "app > two",
        "app=-web",
        "Example.com/app=x",
        "/app=x",
        "-app",
        "!app=x",
        "app=(x)",
        "app ~= x",
        "a=vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv",
    ];
    let fields = [
        "metadata.name=x",
        "metadata.name==x",
        "metadata.name!=x,metadata.namespace=default",
        "metadata.name=",
        "metadata.name=a\\,b\\=c\\\\d",
        "metadata.name=x,",
        "metadata.name",
        "metadata.name=a=b",
        "metadata.name=a\\b",
        "metadata.name=a\\",
        "metadata.name=b!=c",
    ];
    let mut disagreements = Vec::new();
    for (selector, ours, label) in labels
        .iter()
        .map(|s| (*s, check_label_selector(s), true))
        .chain(fields.iter().map(|s| (*s, check_field_selector(s), false)))
    {
        let params = if label {
            ListParams::default().labels(selector)
        } else {
            ListParams::default().fields(selector)
        };
        let server = match api.list(&params.limit(1)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 400 => Err(status.message.clone()),
            Err(other) => panic!("{selector:?}: {other}"),
        };
        if ours.is_ok() != server.is_ok() {
            disagreements.push(format!("{selector:?}: ours {ours:?}, server {server:?}"));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
