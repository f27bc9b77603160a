//! Reading a controller's generated objects through the API, then computing its status with
//! them (the only part of the status module that talks to the API server).

use std::borrow::Cow;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::fields::str_field;
use super::generated::{compute_with_generated, selector_of, Controller};
use super::{ObjectIdentity, ResourceStatus};

/// Why the generated objects of a controller could not be read.
///
/// List failures are usually transient (a dropped connection) or permanent for the caller's
/// credentials (Forbidden); the status of the controller is then Unknown.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// Listing the generated objects failed.
    #[error("cannot list {kind} in namespace {namespace}")]
    ListFailed {
        /// The kind listed (`ReplicaSet` or `Pod`).
        kind: &'static str,
        /// The namespace listed.
        namespace: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// A listed object could not be turned into JSON.
    #[error("cannot encode a listed {kind} as JSON")]
    EncodeFailed {
        /// The kind listed.
        kind: &'static str,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },
}

impl LiveError {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            LiveError::ListFailed { .. } => "list_failed",
            LiveError::EncodeFailed { .. } => "encode_failed",
        }
    }
}

/// Computes the status of `object` with its generated objects read through `client` (see
/// [`compute_with_generated`](super::compute_with_generated) for the rules). An object
/// without a namespace is taken to be in the client's default namespace.
///
/// Never fails: a list error gives Unknown with the error attached.
pub async fn compute_live(client: &kube::Client, object: &Value) -> ResourceStatus {
    let object = with_namespace(object, client.default_namespace());
    match fetch_generated(client, &object).await {
        Ok(candidates) => compute_with_generated(&object, &candidates),
        Err(err) => ResourceStatus::unknown(ObjectIdentity::of(&object), &err),
    }
}

/// Lists the objects `object` may have generated, in its namespace, with its `spec.selector`
/// as the label selector: the ReplicaSets and Pods of a Deployment (its ReplicaSets' Pods
/// carry its labels), the Pods of a ReplicaSet or StatefulSet, nothing for other kinds or
/// when the selector is missing or invalid (the pure computation reports that).
///
/// Objects come back as JSON with `apiVersion` and `kind` set.
///
/// # Errors
/// [`LiveError::ListFailed`] when a list request fails.
pub async fn fetch_generated(
    client: &kube::Client,
    object: &Value,
) -> Result<Vec<Value>, LiveError> {
    let Some(controller) = Controller::of(object) else {
        return Ok(Vec::new());
    };
    let Ok(selector) = selector_of(object) else {
        return Ok(Vec::new());
    };
    let namespace = match str_field(object, &["metadata", "namespace"], "") {
        "" => client.default_namespace(),
        namespace => namespace,
    };
    let params = ListParams::default().labels(&selector.to_query());
    let mut generated = Vec::new();
    if controller == Controller::Deployment {
        generated.extend(list::<ReplicaSet>(client, namespace, &params, "ReplicaSet").await?);
    }
    generated.extend(list::<Pod>(client, namespace, &params, "Pod").await?);
    Ok(generated)
}

async fn list<K>(
    client: &kube::Client,
    namespace: &str,
    params: &ListParams,
    kind: &'static str,
) -> Result<Vec<Value>, LiveError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(params)
        .await
        .map_err(|source| LiveError::ListFailed {
            kind,
            namespace: namespace.to_owned(),
            source: Box::new(source),
        })?;
    to_values(list.items, kind)
}

/// Typed objects as JSON (k8s-openapi writes `apiVersion` and `kind`, which list items lack).
fn to_values<K: Serialize>(items: Vec<K>, kind: &'static str) -> Result<Vec<Value>, LiveError> {
    items
        .into_iter()
        .map(|item| {
            serde_json::to_value(item).map_err(|source| LiveError::EncodeFailed { kind, source })
        })
        .collect()
}

/// `object` with `metadata.namespace` set to `default` when it has none.
fn with_namespace<'a>(object: &'a Value, default: &str) -> Cow<'a, Value> {
    if !str_field(object, &["metadata", "namespace"], "").is_empty() || !object.is_object() {
        return Cow::Borrowed(object);
    }
    let mut owned = object.clone();
    if let Some(root) = owned.as_object_mut() {
        let metadata = root
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if !metadata.is_object() {
            return Cow::Borrowed(object);
        }
        metadata["namespace"] = Value::String(default.to_owned());
    }
    Cow::Owned(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_items_become_json_with_kind() {
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        let values = to_values(vec![pod], "Pod").unwrap();
        assert_eq!(values[0]["apiVersion"], "v1");
        assert_eq!(values[0]["kind"], "Pod");
        assert_eq!(values[0]["metadata"]["name"], "p");
        let values = to_values(vec![ReplicaSet::default()], "ReplicaSet").unwrap();
        assert_eq!(values[0]["apiVersion"], "apps/v1");
        assert_eq!(values[0]["kind"], "ReplicaSet");
    }

    #[test]
    fn namespace_defaults_only_when_missing() {
        let o = json!({"kind": "ReplicaSet", "metadata": {"name": "a", "namespace": "x"}});
        assert!(matches!(with_namespace(&o, "default"), Cow::Borrowed(_)));
        let o = json!({"kind": "ReplicaSet", "metadata": {"name": "a"}});
        assert_eq!(
            with_namespace(&o, "default")["metadata"]["namespace"],
            "default"
        );
        let o = json!({"kind": "ReplicaSet"});
        assert_eq!(with_namespace(&o, "d")["metadata"]["namespace"], "d");
        let o = json!({"kind": "ReplicaSet", "metadata": 3});
        assert_eq!(*with_namespace(&o, "d"), o);
        assert_eq!(*with_namespace(&json!(1), "d"), json!(1));
    }

    #[test]
    fn list_failure_is_reported_with_its_subject() {
        let err = LiveError::ListFailed {
            kind: "Pod",
            namespace: "ns".into(),
            source: Box::new(kube::Error::LinesCodecMaxLineLengthExceeded),
        };
        assert_eq!(err.to_string(), "cannot list Pod in namespace ns");
        assert_eq!(err.metric_label(), "list_failed");
        let status = ResourceStatus::unknown(ObjectIdentity::default(), &err);
        assert!(
            status
                .message
                .starts_with("cannot list Pod in namespace ns: "),
            "{}",
            status.message
        );
    }
}
